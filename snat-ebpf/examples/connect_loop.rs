//! A connect/close loop on loopback, for `scripts/bench-trace`: for SECONDS, connect to a
//! local listener, accept the connection, close the client (with SO_LINGER 0, so no
//! TIME_WAIT piles up and the ephemeral ports never run out), close the accepted socket,
//! then print `connections=N seconds=S rate=R`.
//!
//! Each connection is four tracer events: connect, accept, and two closes.
//!
//! One thread does everything: on loopback `connect()` completes inside the call, so the
//! accept never waits. With a second accepting thread the rate depends on where the
//! scheduler puts the two threads and on cross-CPU wakeups: consecutive runs on the
//! benchmark machine differed by 10 % or more, which hides the effect being measured.
//! Pinned to one CPU (`taskset`), this loop varies by about 3 %.
//!
//! Usage: `connect_loop SECONDS`

use std::net::TcpListener;
use std::time::{Duration, Instant};

#[path = "common/conn.rs"]
mod conn;

fn main() -> std::io::Result<()> {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let d = Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut n = 0u64;
    // Per-connection times (ns), for the percentiles: host noise comes in episodes that
    // slow whole stretches of a run, and the low percentiles show the cost without them.
    let mut times: Vec<u32> = Vec::with_capacity((secs * 50_000.0) as usize);
    let mut last = t0;
    while last.duration_since(t0) < d {
        conn::one(&l, addr)?;
        n += 1;
        let now = Instant::now();
        times.push(u32::try_from(now.duration_since(last).as_nanos()).unwrap_or(u32::MAX));
        last = now;
    }
    let el = t0.elapsed().as_secs_f64();
    times.sort_unstable();
    let pct = |p: usize| times.get(times.len() * p / 100).copied().unwrap_or(0);
    println!(
        "connections={n} seconds={el:.3} rate={:.1} p10_ns={} p50_ns={}",
        n as f64 / el,
        pct(10),
        pct(50)
    );
    Ok(())
}

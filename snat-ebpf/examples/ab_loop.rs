//! The tracer's cost on the connect/close loop, interleaved at a fine grain, for
//! `scripts/bench-trace-ab`: one process alternates untraced and traced phases of PHASE_MS
//! milliseconds (attaching a fresh tracer for each traced phase, detaching it after) while
//! one thread, pinned to the last CPU, runs the loop of `connect_loop` without pause.
//!
//! Why: `scripts/bench-trace` runs each configuration for seconds, in its own process, and
//! this host's noise comes in spells that slow whole runs, so its rate ratios swing by
//! several points. Here each traced phase sits next to an untraced one a fraction of a
//! second away. Connections that span an attach or a detach (and the settling time after
//! each) are left out. Pairs alternate their order (untraced first, then traced first), so
//! a drift within a pair favours neither.
//!
//! For each pair it takes the traced phase's rate over the untraced one's, and the
//! untraced phase's 10th and 50th percentile connection times over the traced one's, and
//! prints, over all pairs and over the steady pairs (both phases' p10 within 8 % of the
//! untraced phases' median p10: the host's slow spells make every connection about a
//! quarter slower, traced or not), the median, mean and standard error of the mean:
//!
//! ```text
//! mode=aggregated phase_ms=400 events=N lost=N   (lost: KernelStats::possibly_lost)
//! all: pairs=N untraced_rate=R rate_pooled=R rate_median=R rate_mean=R rate_se=E p10_median=R p10_mean=R p10_se=E p50_median=R
//! steady: (the same)
//! ```
//!
//! The tracer's reader (stream mode) and the attaching run on the first CPU. With
//! `AB_LOOP_PAIRS` set, each pair's figures go to stderr.
//!
//! Usage: `ab_loop SECONDS PHASE_MS [aggregated|stream]` (defaults: 60 s, 400 ms,
//! aggregated). Needs root (or CAP_BPF + CAP_PERFMON) and at least two CPUs.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use snat_ebpf::{Mode, TracerBuilder};

#[path = "common/conn.rs"]
mod conn;

/// Time left out after each attach and detach: the kernel patches the tracepoint's jump
/// on every CPU then, and frees the detached program's maps.
const SETTLE: Duration = Duration::from_millis(40);

/// Bind the calling thread to one CPU.
fn pin(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity get
    // a valid pointer to it and its size; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The loop: until `stop`, one connection after another, each recorded as (phase, ns)
/// when the phase tag was the same, and not 0 (a transition), at its start and its end.
fn run_loop(cpu: usize, tag: &AtomicU32, stop: &AtomicBool) -> std::io::Result<Vec<(u32, u32)>> {
    pin(cpu)?;
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let mut out = Vec::with_capacity(4_000_000);
    let mut last = Instant::now();
    let mut last_tag = tag.load(Ordering::Acquire);
    while !stop.load(Ordering::Relaxed) {
        conn::one(&l, addr)?;
        let now = Instant::now();
        let t = tag.load(Ordering::Acquire);
        if t != 0 && t == last_tag {
            out.push((
                t,
                u32::try_from(now.duration_since(last).as_nanos()).unwrap_or(u32::MAX),
            ));
        }
        last = now;
        last_tag = t;
    }
    Ok(out)
}

/// One phase's connections: count, total time, and percentiles of one connection's time.
#[derive(Clone, Copy)]
struct Phase {
    n: usize,
    ns: u64,
    p10: f64,
    p50: f64,
}

impl Phase {
    fn of(mut times: Vec<u32>) -> Option<Phase> {
        if times.len() < 100 {
            return None;
        }
        times.sort_unstable();
        Some(Phase {
            n: times.len(),
            ns: times.iter().map(|&t| u64::from(t)).sum(),
            p10: f64::from(times[times.len() / 10]),
            p50: f64::from(times[times.len() / 2]),
        })
    }
    fn rate(&self) -> f64 {
        self.n as f64 / (self.ns as f64 / 1e9)
    }
}

/// Median, mean and standard error of the mean.
fn summary(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (median, mean, (var / n).sqrt())
}

/// One line of figures over `pairs` (untraced, traced).
fn report(label: &str, pairs: &[(Phase, Phase)]) -> String {
    if pairs.is_empty() {
        return format!("{label}: pairs=0");
    }
    let pooled = |f: fn(&(Phase, Phase)) -> &Phase| {
        let n: usize = pairs.iter().map(|p| f(p).n).sum();
        let ns: u64 = pairs.iter().map(|p| f(p).ns).sum();
        n as f64 / (ns as f64 / 1e9)
    };
    let (untraced, traced) = (pooled(|p| &p.0), pooled(|p| &p.1));
    let (rm, ra, rs) = summary(pairs.iter().map(|(u, t)| t.rate() / u.rate()).collect());
    let (pm, pa, ps) = summary(pairs.iter().map(|(u, t)| u.p10 / t.p10).collect());
    let (mm, _, _) = summary(pairs.iter().map(|(u, t)| u.p50 / t.p50).collect());
    format!(
        "{label}: pairs={} untraced_rate={untraced:.0} rate_pooled={:.4} rate_median={rm:.4} rate_mean={ra:.4} \
         rate_se={rs:.4} p10_median={pm:.4} p10_mean={pa:.4} p10_se={ps:.4} p50_median={mm:.4}",
        pairs.len(),
        traced / untraced
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(60.0);
    let phase_ms: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(400);
    let mode: Mode = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(Mode::Aggregated);
    let cpus = std::thread::available_parallelism()?.get();
    if cpus < 2 {
        return Err("ab_loop needs two CPUs: one for the loop, one for attaching and reading".into());
    }
    let phase = Duration::from_millis(phase_ms);
    // A pair is two phases, each with its settling time; a traced one also attaches.
    let pairs = ((secs * 1000.0) / (2 * phase_ms + 4 * SETTLE.as_millis() as u64) as f64).max(1.0) as u32;

    pin(0)?;
    let tag = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (tag, stop) = (tag.clone(), stop.clone());
        std::thread::spawn(move || run_loop(cpus - 1, &tag, &stop))
    };
    std::thread::sleep(Duration::from_millis(200));

    let (mut events, mut lost) = (0u64, 0u64);
    let run_phase =
        |t: u32, traced: bool, events: &mut u64, lost: &mut u64| -> Result<(), Box<dyn std::error::Error>> {
            if !traced {
                tag.store(t, Ordering::Release);
                std::thread::sleep(phase);
                tag.store(0, Ordering::Release);
                return Ok(());
            }
            let mut tracer = TracerBuilder::new().mode(mode).duration(SETTLE + phase).attach()?;
            std::thread::sleep(SETTLE);
            tag.store(t, Ordering::Release);
            tracer.run(|_| *events += 1, |_| {})?;
            tag.store(0, Ordering::Release);
            let res = tracer.finish(|_| *events += 1)?;
            if mode == Mode::Aggregated {
                *events += res.flows.iter().map(|f| f.counts().events).sum::<u64>();
            }
            *lost += res.stats.possibly_lost();
            std::thread::sleep(SETTLE);
            Ok(())
        };
    for p in 0..pairs {
        let (a, b) = (2 * p + 1, 2 * p + 2);
        // Even pairs: untraced first; odd pairs: traced first. The traced phase's tag is b.
        let result = if p % 2 == 0 {
            run_phase(a, false, &mut events, &mut lost).and_then(|()| run_phase(b, true, &mut events, &mut lost))
        } else {
            run_phase(b, true, &mut events, &mut lost).and_then(|()| run_phase(a, false, &mut events, &mut lost))
        };
        if let Err(e) = result {
            stop.store(true, Ordering::Relaxed);
            let _ = worker.join();
            return Err(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let records = worker.join().map_err(|_| "the loop thread panicked")??;

    let mut times = vec![Vec::new(); 2 * pairs as usize + 1];
    for (t, ns) in records {
        times[t as usize].push(ns);
    }
    let phases: Vec<Option<Phase>> = times.into_iter().map(Phase::of).collect();
    let all: Vec<(Phase, Phase)> = (0..pairs as usize)
        .filter_map(|p| Some((phases[2 * p + 1]?, phases[2 * p + 2]?)))
        .collect();
    if all.is_empty() {
        return Err("no pair had 100 connections in both phases: longer phases, or a less busy CPU".into());
    }
    if std::env::var_os("AB_LOOP_PAIRS").is_some() {
        for (i, (u, t)) in all.iter().enumerate() {
            eprintln!(
                "pair {i}: untraced {} conns p10 {} p50 {} ns; traced {} conns p10 {} p50 {} ns",
                u.n, u.p10, u.p50, t.n, t.p10, t.p50
            );
        }
    }
    // This host has slow spells (every connection about a quarter slower, for a fraction
    // of a second to seconds, traced or not). Steady pairs: both phases' p10 within 8 % of
    // the untraced phases' median p10, which no tracer cost comes near.
    let (base, _, _) = summary(all.iter().map(|(u, _)| u.p10).collect());
    let steady: Vec<(Phase, Phase)> = all
        .iter()
        .copied()
        .filter(|(u, t)| u.p10 <= base * 1.08 && t.p10 <= base * 1.08)
        .collect();
    let mode_name = if mode == Mode::Stream { "stream" } else { "aggregated" };
    println!("mode={mode_name} phase_ms={phase_ms} events={events} lost={lost}");
    println!("{}", report("all", &all));
    println!("{}", report("steady", &steady));
    Ok(())
}

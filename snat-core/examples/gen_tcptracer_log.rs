//! Writes a deterministic, realistic `tcptracer -t4v` log to stdout, for benchmarks and
//! sample data.
//!
//! Usage: `gen_tcptracer_log SIZE [SEED] [--comm-spaces] [--lost-every N] [--ipv6-every N]`
//!
//! SIZE is a byte count with an optional K, M or G suffix (powers of 1024); the log stops
//! at the first line that reaches it. A few hundred pods (source address and network
//! namespace pairs), one of them hot, talk to a few thousand destinations: documentation
//! and benchmark ranges standing in for the Internet (203.0.113.0/24, 198.51.100.0/24,
//! 192.0.2.0/24, 198.18.0.0/15), private services in 10.0.0.0/8, Azure's 168.63.129.16
//! and 169.254.169.254, and with `--ipv6-every` some IPv6 (2001:db8::/32 and fd00::/8).
//! `--comm-spaces` gives some commands spaces in their names (which breaks the article's
//! awk pipeline, not snat); `--lost-every N` writes a `Possibly lost K samples` line after
//! every N events.

use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use snat_core::model::{Clock, EventKind, Family, TcpEvent};
use snat_core::tcptracer::{BANNER, TypeColumn, format_event, format_header};

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Pod {
    saddr: IpAddr,
    netns: u64,
    comm: &'static str,
    pid: u32,
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gen_tcptracer_log SIZE [SEED] [--comm-spaces] [--lost-every N] [--ipv6-every N]";
    let mut positional = Vec::new();
    let (mut comm_spaces, mut lost_every, mut ipv6_every) = (false, 0u64, 0u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--comm-spaces" => comm_spaces = true,
            "--lost-every" => lost_every = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--ipv6-every" => ipv6_every = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            _ => positional.push(a.clone()),
        }
    }
    let Some(size) = positional.first().and_then(|s| parse_size(s)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let seed: u64 = positional.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);

    const COMMS: [&str; 8] = [
        "curl",
        "java",
        "python3",
        "node",
        "envoy",
        "nginx",
        "dotnet",
        "app-server",
    ];
    const SPACED: [&str; 3] = ["java worker", "Web Content", "my app 2"];
    let n_pods = 300u64;
    let pods: Vec<Pod> = (0..n_pods)
        .map(|i| {
            let host = i == n_pods - 1; // one host-network process: the node's own address and netns
            Pod {
                saddr: if host {
                    IpAddr::V4(Ipv4Addr::new(10, 224, 0, 4))
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 244, (i / 200) as u8, (i % 200 + 2) as u8))
                },
                netns: if host { 4026531840 } else { 4026532200 + i * 7 },
                comm: if comm_spaces && i % 37 == 5 {
                    SPACED[(i / 37) as usize % SPACED.len()]
                } else {
                    COMMS[(i % COMMS.len() as u64) as usize]
                },
                pid: 1000 + (i as u32) * 13,
            }
        })
        .collect();
    let n_dest = 4000u64;
    let dest = |r: &mut Rng, v6: bool| -> IpAddr {
        let d = r.below(n_dest);
        if v6 {
            return IpAddr::V6(if d.is_multiple_of(2) {
                Ipv6Addr::new(0x2001, 0xdb8, 0, (d % 50) as u16, 0, 0, 0, 1 + (d % 7) as u16)
            } else {
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10 + (d % 30) as u16)
            });
        }
        IpAddr::V4(match d % 20 {
            0 => Ipv4Addr::new(168, 63, 129, 16),
            1 => Ipv4Addr::new(169, 254, 169, 254),
            2..=5 => Ipv4Addr::new(10, (d % 3) as u8, ((d / 3) % 256) as u8, (d % 250 + 2) as u8),
            6..=8 => Ipv4Addr::new(203, 0, 113, (d % 254 + 1) as u8),
            9..=10 => Ipv4Addr::new(198, 51, 100, (d % 254 + 1) as u8),
            11 => Ipv4Addr::new(192, 0, 2, (d % 254 + 1) as u8),
            _ => Ipv4Addr::new(198, 18 + (d % 2) as u8, ((d / 2) % 256) as u8, (d % 253 + 1) as u8),
        })
    };
    const PORTS: [u16; 6] = [443, 443, 443, 80, 5432, 6379];

    let out = io::stdout();
    let mut w = BufWriter::with_capacity(1 << 20, out.lock());
    let put = |w: &mut BufWriter<_>, s: &str| -> io::Result<()> {
        w.write_all(s.as_bytes())?;
        w.write_all(b"\n")
    };
    put(&mut w, BANNER)?;
    put(&mut w, &format_header(true, true, TypeColumn::Tcptracer))?;
    let mut t: u64 = 0;
    let mut n: u64 = 0;
    let mut sport: u16 = 32768;
    let mut size_so_far: u64 =
        BANNER.len() as u64 + 1 + format_header(true, true, TypeColumn::Tcptracer).len() as u64 + 1;
    while size_so_far < size {
        // Skewed: the first pod is hot, the rest follow a power law.
        let u = rng.unit();
        let p = if u < 0.3 {
            &pods[0]
        } else {
            &pods[((rng.unit().powi(3)) * n_pods as f64) as usize % n_pods as usize]
        };
        let v6 = ipv6_every > 0 && n % ipv6_every == ipv6_every - 1;
        let kind = match rng.below(20) {
            0..=8 => EventKind::Connect,
            9..=17 => EventKind::Close,
            _ => EventKind::Accept,
        };
        sport = if sport >= 60999 { 32768 } else { sport + 1 };
        let daddr = dest(&mut rng, v6);
        let saddr = if v6 {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                0,
                0,
                0,
                0,
                2 + (p.netns % 200) as u16,
            ))
        } else {
            p.saddr
        };
        let (sp, dp) = if kind == EventKind::Accept {
            (8080, sport)
        } else {
            (sport, PORTS[rng.below(PORTS.len() as u64) as usize])
        };
        t += 1000 + rng.below(200_000);
        let ev = TcpEvent {
            time_ns: Some(t),
            clock: Clock::Relative,
            kind,
            direction: kind.direction(),
            pid: p.pid,
            comm: p.comm.to_string(),
            family: Family::of(&saddr),
            saddr,
            daddr,
            sport: sp,
            dport: dp,
            netns: Some(p.netns),
            cgroup_id: None,
            prev_state: None,
            duration_ns: None,
            error: None,
        };
        let line = format_event(&ev, true, true, TypeColumn::Tcptracer);
        size_so_far += line.len() as u64 + 1;
        put(&mut w, &line)?;
        n += 1;
        if lost_every > 0 && n.is_multiple_of(lost_every) {
            let l = format!("Possibly lost {} samples", 1 + rng.below(40));
            size_so_far += l.len() as u64 + 1;
            put(&mut w, &l)?;
        }
    }
    w.flush()
}

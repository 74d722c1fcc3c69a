//! The tracer on the real kernel, as root, in network namespaces each test creates:
//! connections between two namespaces joined by a veth pair, failed connects (RST and
//! dropped SYNs), loss accounting with a stalled reader, and detaching.
//!
//! Without root these print `skipped: needs root` and pass, unless `CI` is set.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{A4, A6, B4, B6, Netns, Server, Veth, collect, drop_syns, ip, need_root, unique, wait_until_closed};
use snat_core::aggregate::{Field, Metric, TraceSummary, Value};
use snat_core::model::{Direction, EventKind, Family, TcpEvent, TcpState};
use snat_ebpf::{AttachPoint, FlowRow, KernelReads, KernelStats, Mode, TracerBuilder};

fn of_kind(events: &[TcpEvent], kind: EventKind) -> Vec<&TcpEvent> {
    events.iter().filter(|e| e.kind == kind).collect()
}

fn summary_of_events(events: &[TcpEvent], by: Vec<Vec<Field>>) -> TraceSummary {
    let mut s = TraceSummary::new("live", by);
    for e in events {
        s.add(&snat_ebpf::StreamRecord(e)).unwrap();
    }
    s
}

fn summary_of_flows(flows: &[FlowRow], by: Vec<Vec<Field>>) -> TraceSummary {
    let mut s = TraceSummary::new("live", by);
    for f in flows {
        for part in f.split_by_kind() {
            s.add(&part).unwrap();
        }
    }
    s
}

fn unix_now_ns() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(d.as_nanos()).unwrap()
}

fn no_loss(stats: &KernelStats) {
    assert_eq!(stats.lost(), 0, "{stats:?}");
    assert_eq!(stats.events_dropped, 0, "{stats:?}");
    assert_eq!(stats.flows_full, 0, "{stats:?}");
}

/// Whether the running kernel has the kfunc `bpf_rdonly_cast` (Linux 6.2+), which direct
/// reads need.
fn kernel_has_rdonly_cast() -> bool {
    aya::Btf::from_sys_fs()
        .unwrap()
        .id_by_type_name_kind("bpf_rdonly_cast", aya_obj::btf::BtfKind::Func)
        .is_ok()
}

/// N connections from a thread in netns A to a python3 server in netns B, traced at
/// `point`, reading sockets with probe reads when `probe`, else directly where possible.
fn connections(v6: bool, mode: Mode, point: AttachPoint, probe: bool) {
    if !need_root() {
        return;
    }
    const N: usize = 25;
    let a = Netns::new();
    let b = Netns::new();
    let _veth = Veth::join(&a, &b);
    let (caddr, saddr) = if v6 { (ip(A6), ip(B6)) } else { (ip(A4), ip(B4)) };
    let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
    let before = unix_now_ns();
    // Attach before the server listens: the listener's owner is recorded at LISTEN.
    let tracer = TracerBuilder::new()
        .mode(mode)
        .netns([a.inode(), b.inode()])
        .attach_point(point)
        .probe_reads(probe)
        .attach()
        .unwrap();
    let expect_point = if point == AttachPoint::Auto {
        AttachPoint::RawTracepoint
    } else {
        point
    };
    assert_eq!(tracer.attach_point(), expect_point);
    let expect_reads = if probe || point == AttachPoint::Tracepoint || !kernel_has_rdonly_cast() {
        KernelReads::Probe
    } else {
        KernelReads::Direct
    };
    assert_eq!(tracer.kernel_reads(), expect_reads);
    let server = Server::start(&b, saddr);
    let port = server.port;
    let client = unique("cl");
    let locals: Vec<u16> = a
        .in_thread(&client, move || {
            (0..N)
                .map(|_| {
                    let mut s = TcpStream::connect((saddr, port)).unwrap();
                    s.write_all(b"x").unwrap();
                    s.local_addr().unwrap().port()
                })
                .collect()
        })
        .join()
        .unwrap();
    let local_set: BTreeSet<u16> = locals.iter().copied().collect();
    assert_eq!(local_set.len(), N);
    let (events, res) = collect(tracer, 4 * N as u64);
    let after = unix_now_ns();
    no_loss(&res.stats);
    assert_eq!(res.stats.counted, 4 * N as u64, "{:?}", res.stats);
    assert_eq!(res.stats.owner_unknown, 0);
    let me = std::process::id();

    // The kernel's aggregation: one outbound row in A, one inbound row in B.
    assert_eq!(res.flows.len(), 2, "{:#?}", res.flows);
    let out = res.flows.iter().find(|f| f.direction == Direction::Outbound).unwrap();
    assert_eq!(
        (out.netns, out.family, out.saddr, out.daddr, out.port),
        (a.inode(), family, caddr, saddr, port)
    );
    assert_eq!(
        (out.connects, out.closes, out.open, out.failed_connects, out.accepts),
        (N as u64, N as u64, 0, 0, 0)
    );
    let inb = res.flows.iter().find(|f| f.direction == Direction::Inbound).unwrap();
    assert_eq!(
        (inb.netns, inb.family, inb.saddr, inb.daddr, inb.port),
        (b.inode(), family, saddr, caddr, port)
    );
    assert_eq!(
        (inb.accepts, inb.closes, inb.open, inb.connects),
        (N as u64, N as u64, 0, 0)
    );

    if mode == Mode::Aggregated {
        assert!(events.is_empty());
        assert_eq!(res.stats.events_sent, 0);
        return;
    }

    assert_eq!(events.len(), 4 * N);
    assert_eq!(res.stats.events_read, 4 * N as u64);
    let connects = of_kind(&events, EventKind::Connect);
    assert_eq!(connects.len(), N);
    for e in &connects {
        assert_eq!((e.pid, e.comm.as_str()), (me, client.as_str()), "{e:?}");
        assert_eq!(
            (e.netns, e.family, e.saddr, e.daddr, e.dport),
            (Some(a.inode()), family, caddr, saddr, port)
        );
        assert!(e.cgroup_id.is_some_and(|c| c > 0));
        if let Some(id) = common::cgroup_id_of(me) {
            assert_eq!(e.cgroup_id, Some(id), "{e:?}");
        }
    }
    assert_eq!(connects.iter().map(|e| e.sport).collect::<BTreeSet<_>>(), local_set);
    let accepts = of_kind(&events, EventKind::Accept);
    assert_eq!(accepts.len(), N);
    for e in &accepts {
        assert_eq!((e.pid, e.comm.as_str()), (server.pid, server.comm.as_str()), "{e:?}");
        if server.cgroup_id.is_some() {
            assert_eq!(e.cgroup_id, server.cgroup_id, "{e:?}");
        }
        assert_eq!(
            (e.netns, e.family, e.saddr, e.daddr, e.sport),
            (Some(b.inode()), family, saddr, caddr, port)
        );
    }
    assert_eq!(accepts.iter().map(|e| e.dport).collect::<BTreeSet<_>>(), local_set);
    let closes = of_kind(&events, EventKind::Close);
    assert_eq!(closes.len(), 2 * N);
    let (in_a, in_b): (Vec<&&TcpEvent>, Vec<&&TcpEvent>) = closes.iter().partition(|e| e.netns == Some(a.inode()));
    assert_eq!((in_a.len(), in_b.len()), (N, N));
    for e in &in_a {
        assert_eq!((e.pid, e.comm.as_str(), e.dport), (me, client.as_str(), port));
        assert!(local_set.contains(&e.sport));
        assert!(e.duration_ns.is_some() && e.prev_state.is_some(), "{e:?}");
    }
    for e in &in_b {
        assert_eq!((e.pid, e.netns, e.sport), (server.pid, Some(b.inode()), port));
        assert!(e.duration_ns.is_some(), "{e:?}");
        assert_ne!(e.prev_state, Some(TcpState::SynSent));
    }
    assert!(of_kind(&events, EventKind::FailedConnect).is_empty());

    // Every event's time falls within the trace (to the wall-clock conversion's
    // precision), and each close's duration reaches back exactly to the time of its own
    // connect (client side, by local port) or accept (server side, by remote port).
    const SLACK_NS: u64 = 5_000_000;
    for e in &events {
        let t = e.time_ns.unwrap_or(0);
        assert!(
            t + SLACK_NS >= before && t <= after + SLACK_NS,
            "{e:?} outside [{before}, {after}]"
        );
    }
    let local: fn(&TcpEvent) -> u16 = |e| e.sport;
    let remote: fn(&TcpEvent) -> u16 = |e| e.dport;
    for (closes, opens, client_port) in [(&in_a, &connects, local), (&in_b, &accepts, remote)] {
        for c in closes {
            let open = opens
                .iter()
                .find(|o| client_port(o) == client_port(c))
                .unwrap_or_else(|| panic!("no connect or accept for {c:?}"));
            let (t, d) = (c.time_ns.unwrap(), c.duration_ns.unwrap());
            assert_eq!(t.checked_sub(d), open.time_ns, "{open:?} and its close {c:?}");
        }
    }

    // Aggregated counts equal the event stream's, `dport` included: the closes of accepted
    // connections carry the kernel's direction, so their client port is left out as the
    // kernel's inbound row leaves it out.
    let by = vec![
        vec![Field::Netns, Field::Saddr, Field::Daddr],
        vec![Field::Netns, Field::Kind],
        vec![Field::Netns, Field::Daddr, Field::Dport],
        vec![Field::Kind, Field::Netns, Field::Dport],
    ];
    let from_events = summary_of_events(&events, by.clone());
    let from_flows = summary_of_flows(&res.flows, by.clone());
    assert_eq!(from_events.totals.events, from_flows.totals.events);
    for g in &by {
        let e = from_events.rank(g, Metric::Events).unwrap();
        let f = from_flows.rank(g, Metric::Events).unwrap();
        let ek: Vec<_> = e.rows.iter().map(|r| (r.key.clone(), r.counts.events)).collect();
        let fk: Vec<_> = f.rows.iter().map(|r| (r.key.clone(), r.counts.events)).collect();
        assert_eq!(ek, fk, "grouping {g:?}");
    }
}

/// Ranked rows with their counts (`open` aside: stream-mode events do not carry it).
fn ranked(s: &TraceSummary, fields: &[Field]) -> Vec<(Vec<Value>, [u64; 5])> {
    s.rank(fields, Metric::Events)
        .unwrap()
        .rows
        .into_iter()
        .map(|r| {
            let c = r.counts;
            (r.key, [c.events, c.connects, c.accepts, c.closes, c.failed_connects])
        })
        .collect()
}

/// The same traffic, traced once in aggregated mode and once in stream mode, ranks into the
/// same rows with the same counts. The client connects to the server's IPv4 address from
/// IPv4 sockets and from dual-stack IPv6 sockets (to `::ffff:198.18.0.2`); the server
/// listens on `[::]`, so it accepts every connection on an IPv6 socket with IPv4-mapped
/// addresses. Both kinds of client socket count in one row per destination, and the server's
/// accepts (and their closes) have no `dport` in either mode; `sport` is the listening port
/// of the server's rows and missing from the client's (its ephemeral ports) in both.
#[test]
fn both_modes_rank_the_same_traffic_alike() {
    if !need_root() {
        return;
    }
    const N: usize = 8;
    let a = Netns::new();
    let b = Netns::new();
    let _veth = Veth::join(&a, &b);
    let server = Server::start(&b, ip("::"));
    let port = server.port;
    let (Ok(IpAddr::V4(b4)), Ok(IpAddr::V4(a4))) = (B4.parse::<IpAddr>(), A4.parse::<IpAddr>()) else {
        unreachable!("A4 and B4 are IPv4 literals")
    };
    let groupings = vec![
        vec![Field::Netns, Field::Daddr, Field::Dport],
        vec![Field::Saddr, Field::Netns],
        vec![
            Field::Netns,
            Field::Kind,
            Field::Family,
            Field::Saddr,
            Field::Daddr,
            Field::Dport,
        ],
        vec![Field::Netns, Field::Sport, Field::Daddr, Field::Dport],
    ];
    let mut by_mode = Vec::new();
    for mode in [Mode::Aggregated, Mode::Stream] {
        let tracer = TracerBuilder::new()
            .mode(mode)
            .netns([a.inode(), b.inode()])
            .attach()
            .unwrap();
        let client = unique("ds");
        let families: Vec<Family> = a
            .in_thread(&client, move || {
                (0..2 * N)
                    .map(|i| {
                        let to = if i % 2 == 0 {
                            IpAddr::V4(b4)
                        } else {
                            IpAddr::V6(b4.to_ipv6_mapped())
                        };
                        let mut s = TcpStream::connect((to, port)).unwrap();
                        s.write_all(b"x").unwrap();
                        Family::of(&s.local_addr().unwrap().ip())
                    })
                    .collect()
            })
            .join()
            .unwrap();
        // Half the client sockets really were IPv6 (dual-stack) sockets.
        assert_eq!(families.iter().filter(|f| **f == Family::Ipv6).count(), N);
        wait_until_closed(&a, Duration::from_secs(90));
        wait_until_closed(&b, Duration::from_secs(90));
        // Per connection: connect and close in A, accept and close in B.
        let (events, res) = collect(tracer, 8 * N as u64);
        no_loss(&res.stats);
        assert_eq!(res.stats.counted, 8 * N as u64, "{mode:?}: {:?}", res.stats);
        let s = match mode {
            Mode::Aggregated => {
                // The kernel keys the IPv4 and the dual-stack client sockets apart.
                let families: BTreeSet<Family> = res
                    .flows
                    .iter()
                    .filter(|f| f.direction == Direction::Outbound)
                    .map(|f| f.family)
                    .collect();
                assert_eq!(families, [Family::Ipv4, Family::Ipv6].into(), "{:#?}", res.flows);
                // One kernel row per flow: the IPv4 sockets' keys must not carry the
                // address bytes an IPv6 socket left in the CPU's scratch space (the
                // connects alternate between the two families on one thread).
                let keys: BTreeSet<String> = res
                    .flows
                    .iter()
                    .map(|f| format!("{:?}", (f.netns, f.family, f.direction, f.saddr, f.daddr, f.port)))
                    .collect();
                assert_eq!(keys.len(), res.flows.len(), "duplicate flow rows: {:#?}", res.flows);
                summary_of_flows(&res.flows, groupings.clone())
            }
            Mode::Stream => {
                assert_eq!(events.len(), 8 * N);
                // The events themselves keep what the kernel reported: the client's port on
                // accepts, IPv4-mapped addresses on IPv6 sockets.
                let accepts = of_kind(&events, EventKind::Accept);
                assert!(
                    accepts.iter().all(|e| e.dport != port && e.sport == port),
                    "{accepts:?}"
                );
                assert!(
                    accepts.iter().all(|e| e.daddr == IpAddr::V6(a4.to_ipv6_mapped())),
                    "{accepts:?}"
                );
                summary_of_events(&events, groupings.clone())
            }
        };
        by_mode.push(groupings.iter().map(|g| ranked(&s, g)).collect::<Vec<_>>());
    }
    for (g, (agg, stream)) in groupings.iter().zip(by_mode[0].iter().zip(&by_mode[1])) {
        assert_eq!(agg, stream, "grouping {g:?}: aggregated vs stream");
    }
    // One row per destination: the client's connects to 198.18.0.2 (IPv4 and mapped
    // together), and the server's accepts from 198.18.0.1 without a port.
    let n = 2 * N as u64;
    let want = vec![
        (
            vec![
                Value::Int(a.inode()),
                Value::Ip(IpAddr::V4(b4)),
                Value::Int(u64::from(port)),
            ],
            [2 * n, n, 0, n, 0],
        ),
        (
            vec![Value::Int(b.inode()), Value::Ip(IpAddr::V4(a4)), Value::Missing],
            [2 * n, 0, n, n, 0],
        ),
    ];
    let mut got = by_mode[1][0].clone();
    got.sort();
    let mut want = want;
    want.sort();
    assert_eq!(got, want);
    // By sport too: one row per side, the server's under its listening port.
    let with_sport: Vec<(Vec<Value>, [u64; 5])> = want
        .into_iter()
        .map(|(k, c)| {
            let sport = if k[2] == Value::Missing {
                Value::Int(u64::from(port))
            } else {
                Value::Missing
            };
            (vec![k[0].clone(), sport, k[1].clone(), k[2].clone()], c)
        })
        .collect();
    let mut got = by_mode[1][3].clone();
    got.sort();
    let mut want = with_sport;
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn connections_ipv4_stream() {
    connections(false, Mode::Stream, AttachPoint::Auto, false);
}

#[test]
fn connections_ipv6_stream() {
    connections(true, Mode::Stream, AttachPoint::Auto, false);
}

#[test]
fn connections_ipv4_aggregated() {
    connections(false, Mode::Aggregated, AttachPoint::Auto, false);
}

#[test]
fn connections_ipv6_aggregated() {
    connections(true, Mode::Aggregated, AttachPoint::Auto, false);
}

/// The raw tracepoint with probe reads, as on kernels without bpf_rdonly_cast: same
/// events, same counts.
#[test]
fn connections_ipv4_stream_probe_reads() {
    connections(false, Mode::Stream, AttachPoint::RawTracepoint, true);
}

#[test]
fn connections_ipv6_aggregated_probe_reads() {
    connections(true, Mode::Aggregated, AttachPoint::RawTracepoint, true);
}

/// The fallback for kernels that refuse raw tracepoints runs the same code: same events.
#[test]
fn connections_ipv6_stream_classic_tracepoint() {
    connections(true, Mode::Stream, AttachPoint::Tracepoint, false);
}

#[test]
fn connections_ipv4_aggregated_classic_tracepoint() {
    connections(false, Mode::Aggregated, AttachPoint::Tracepoint, false);
}

#[test]
fn failed_connects_refused_and_timed_out() {
    failed_connects(false);
}

/// The socket error of a failed connect, read with probe reads as on older kernels.
#[test]
fn failed_connects_refused_and_timed_out_probe_reads() {
    failed_connects(true);
}

fn failed_connects(probe: bool) {
    if !need_root() {
        return;
    }
    let a = Netns::new();
    let b = Netns::new();
    let _veth = Veth::join(&a, &b);
    // One SYN retry: a dropped SYN times out after about 3 s instead of 2 min.
    a.sysctl("net.ipv4.tcp_syn_retries", "1");
    const CLOSED: u16 = 9; // nothing listens: RST
    const DROPPED: u16 = 10; // SYNs dropped by a rule inside B
    drop_syns(&b, DROPPED);
    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode()])
        .probe_reads(probe)
        .attach()
        .unwrap();
    assert_eq!(
        tracer.kernel_reads() == KernelReads::Probe,
        probe || !kernel_has_rdonly_cast()
    );
    let client = unique("fc");
    let errs = a
        .in_thread(&client, move || {
            [(ip(B4), CLOSED), (ip(B6), CLOSED), (ip(B4), DROPPED)]
                .map(|(addr, port)| TcpStream::connect((addr, port)).unwrap_err().kind())
        })
        .join()
        .unwrap();
    assert_eq!(
        errs,
        [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::TimedOut
        ]
    );
    let (events, res) = collect(tracer, 3);
    no_loss(&res.stats);
    let failed = of_kind(&events, EventKind::FailedConnect);
    assert_eq!(failed.len(), 3, "{events:#?}");
    assert_eq!(events.len(), 3);
    let me = std::process::id();
    for e in &failed {
        assert_eq!(
            (e.pid, e.comm.as_str(), e.netns),
            (me, client.as_str(), Some(a.inode()))
        );
        assert_eq!(e.prev_state, Some(TcpState::SynSent));
    }
    let find = |addr: &str, port: u16| {
        failed
            .iter()
            .find(|e| e.daddr == ip(addr) && e.dport == port)
            .unwrap_or_else(|| panic!("no failed connect to {addr}:{port}"))
    };
    assert_eq!(find(B4, CLOSED).error, Some(libc::ECONNREFUSED));
    assert_eq!(find(B4, CLOSED).saddr, ip(A4));
    assert_eq!(find(B6, CLOSED).error, Some(libc::ECONNREFUSED));
    assert_eq!(find(B6, CLOSED).family, Family::Ipv6);
    assert_eq!(find(B4, DROPPED).error, Some(libc::ETIMEDOUT));
    // Aggregated: one failed connect per destination, nothing else.
    let mut rows: Vec<(IpAddr, u16, u64, u64)> = res
        .flows
        .iter()
        .map(|f| (f.daddr, f.port, f.failed_connects, f.counts().events))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        vec![(ip(B4), CLOSED, 1, 1), (ip(B4), DROPPED, 1, 1), (ip(B6), CLOSED, 1, 1)]
    );
}

/// Pin the calling thread to the first CPU it may run on.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity, CPU_ISSET,
    // CPU_SET and sched_setaffinity get valid pointers and the set's size.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut allowed);
        assert_eq!(rc, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &allowed))
            .expect("some CPU is allowed");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
    }
}

/// A listener replaced by another on the same port: the accepts are the new owner's. Each
/// CPU caches the last listener it looked up; a change to any listener must invalidate it.
/// The client is pinned to one CPU, so that the accepts of both phases run on the CPU whose
/// cache the first phase filled.
#[test]
fn accepts_follow_a_listener_replaced_on_the_same_port() {
    if !need_root() {
        return;
    }
    const N: usize = 6;
    let a = Netns::new();
    let b = Netns::new();
    let _veth = Veth::join(&a, &b);
    let saddr = ip(B4);
    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode(), b.inode()])
        .attach()
        .unwrap();
    let listen = |name: &str, port: u16| {
        b.in_thread(name, move || TcpListener::bind((saddr, port)).unwrap())
            .join()
            .unwrap()
    };
    let connect = |port: u16| {
        a.in_thread(&unique("cl"), move || {
            pin_to_one_cpu();
            for _ in 0..N {
                drop(TcpStream::connect((saddr, port)).unwrap());
            }
        })
        .join()
        .unwrap();
    };
    let (first, second) = (unique("ls"), unique("ls"));
    let l1 = listen(&first, 0);
    let port = l1.local_addr().unwrap().port();
    connect(port);
    // Closing the listener closes the connections waiting in its queue.
    drop(l1);
    let l2 = listen(&second, port);
    connect(port);
    drop(l2);
    let (events, res) = collect(tracer, 8 * N as u64);
    no_loss(&res.stats);
    let accepts: Vec<&str> = of_kind(&events, EventKind::Accept)
        .iter()
        .map(|e| e.comm.as_str())
        .collect();
    let expect: Vec<&str> = [first.as_str(); N].into_iter().chain([second.as_str(); N]).collect();
    assert_eq!(accepts, expect, "{events:#?}");
}

/// A loopback server thread in `ns` that accepts `n` connections and reads each to EOF.
fn loop_server(ns: &Netns, n: usize) -> (u16, std::thread::JoinHandle<()>) {
    server_at(ns, "127.0.0.1", 0, n)
}

/// [`loop_server`] on `addr` and `port` (0: any free port); returns the port.
fn server_at(ns: &Netns, addr: &'static str, port: u16, n: usize) -> (u16, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = ns.in_thread(&unique("sv"), move || {
        let l = TcpListener::bind((addr, port)).unwrap();
        // A deep accept queue, so that a slow (CPU-starved) server never overflows it.
        // SAFETY: listen on a valid, bound socket.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 4096) };
        tx.send(l.local_addr().unwrap().port()).unwrap();
        for _ in 0..n {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 16];
            while c.read(&mut buf).unwrap_or(0) > 0 {}
        }
    });
    (rx.recv().unwrap(), h)
}

fn loop_client(ns: &Netns, port: u16, n: usize) -> std::thread::JoinHandle<()> {
    ns.in_thread(&unique("lc"), move || {
        for _ in 0..n {
            drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
    })
}

/// A new MPTCP socket of family `AF_INET`, or `None` when the kernel has no MPTCP.
fn mptcp_socket() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const IPPROTO_MPTCP: libc::c_int = 262;
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a new, valid socket owned by nobody else.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn loopback(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    }
}

/// MPTCP connections: the tracepoint also reports the state changes of each MPTCP socket
/// itself (protocol 262: SYN_SENT -> ESTABLISHED, ... -> CLOSE), beside those of its TCP
/// subflow. Only the subflows are TCP connections: each connection counts once, in both
/// modes (the program learns which `sk_prot` tables are TCP's and must not take MPTCP's).
#[test]
fn mptcp_connections_count_their_tcp_subflow_once() {
    if !need_root() {
        return;
    }
    if mptcp_socket().is_none() {
        eprintln!("skipped: this kernel has no MPTCP");
        assert!(std::env::var_os("CI").is_none(), "CI's kernel has MPTCP");
        return;
    }
    const N: u64 = 10;
    for mode in [Mode::Stream, Mode::Aggregated] {
        let a = Netns::new();
        let tracer = TracerBuilder::new().mode(mode).netns([a.inode()]).attach().unwrap();
        let port = a
            .in_thread(&unique("mp"), move || {
                use std::os::fd::AsRawFd;
                let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                let l = mptcp_socket().expect("MPTCP socket");
                let mut sa = loopback(0);
                // SAFETY: valid fd, sockaddr and length; getsockname writes at most len bytes.
                let port = unsafe {
                    assert_eq!(libc::bind(l.as_raw_fd(), (&raw const sa).cast(), len), 0);
                    assert_eq!(libc::listen(l.as_raw_fd(), 64), 0);
                    let mut n = len;
                    assert_eq!(libc::getsockname(l.as_raw_fd(), (&raw mut sa).cast(), &mut n), 0);
                    u16::from_be(sa.sin_port)
                };
                for _ in 0..N {
                    let c = mptcp_socket().expect("MPTCP socket");
                    let to = loopback(port);
                    let mut b = [0u8; 1];
                    // SAFETY: valid fds, sockaddr, length and buffer.
                    unsafe {
                        assert_eq!(libc::connect(c.as_raw_fd(), (&raw const to).cast(), len), 0);
                        let s = libc::accept(l.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut());
                        assert!(s >= 0);
                        assert_eq!(libc::write(c.as_raw_fd(), b"x".as_ptr().cast(), 1), 1);
                        assert_eq!(libc::read(s, b.as_mut_ptr().cast(), 1), 1);
                        drop(c);
                        libc::close(s);
                    }
                }
                port
            })
            .join()
            .unwrap();
        // Time for anything counted late (an MPTCP socket's close) to be counted too.
        std::thread::sleep(Duration::from_millis(300));
        let (events, res) = collect(tracer, 4 * N);
        no_loss(&res.stats);
        assert_eq!(res.stats.counted, 4 * N, "{mode:?}: {:?}", res.stats);
        let out = res.flows.iter().find(|f| f.direction == Direction::Outbound).unwrap();
        let inb = res.flows.iter().find(|f| f.direction == Direction::Inbound).unwrap();
        assert_eq!(res.flows.len(), 2, "{mode:?}: {:#?}", res.flows);
        assert_eq!(
            (out.port, out.connects, out.closes, out.open),
            (port, N, N, 0),
            "{mode:?}"
        );
        assert_eq!(
            (inb.port, inb.accepts, inb.closes, inb.open),
            (port, N, N, 0),
            "{mode:?}"
        );
        if mode == Mode::Stream {
            assert_eq!(events.len() as u64, 4 * N);
            assert_eq!(of_kind(&events, EventKind::Connect).len() as u64, N);
        }
    }
}

/// Mark every CPU's `busy` flag (in `cpu_state`) of this tracer's program with `v`, as a
/// run of the program under way on each CPU would.
fn set_cpu_busy(tracer: &snat_ebpf::Tracer, v: u32) {
    use aya::maps::{Array, Map, MapData, MapInfo};
    use snat_ebpf::abi::{self, CpuState};
    let id = tracer.program_id().expect("program id");
    let prog = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .expect("the tracer's program is loaded");
    let map_id = prog
        .map_ids()
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .find(|m| MapInfo::from_id(*m).is_ok_and(|i| i.name_as_str() == Some(abi::MAP_CPU_STATE)))
        .expect("the program uses cpu_state");
    let map = Map::Array(MapData::from_id(map_id).unwrap());
    let mut states: Array<_, CpuState> = Array::try_from(map).unwrap();
    for cpu in 0..states.len() {
        let mut st = states.get(&cpu, 0).unwrap();
        st.busy = v;
        states.set(cpu, st, 0).unwrap();
    }
}

/// A run of the program nested in another on the same CPU (on older kernels an interrupt
/// runs it again while it runs in process context) counts its event, through the flow
/// hash and its own scratch space, but does not write it into the CPU's ring, which the
/// run it interrupted may be writing: the event is counted as dropped. Simulated here
/// (this kernel never nests) by marking every CPU busy.
#[test]
fn nested_runs_count_their_events_as_dropped() {
    nested_runs(Mode::Stream);
}

/// The same in aggregated mode (its own code path): every count exact.
#[test]
fn nested_runs_count_exactly_in_aggregated_mode() {
    nested_runs(Mode::Aggregated);
}

fn nested_runs(mode: Mode) {
    if !need_root() {
        return;
    }
    const N: usize = 20;
    let a = Netns::new();
    let tracer = TracerBuilder::new().mode(mode).netns([a.inode()]).attach().unwrap();
    set_cpu_busy(&tracer, 1);
    let (port, server) = loop_server(&a, N);
    loop_client(&a, port, N).join().unwrap();
    server.join().unwrap();
    let (events, res) = collect(tracer, 4 * N as u64);
    let s = res.stats;
    assert!(events.is_empty(), "{} events written", events.len());
    assert_eq!(s.events_sent, 0, "{s:?}");
    if mode == Mode::Stream {
        assert_eq!(s.events_dropped, s.counted, "{s:?}");
        assert_eq!(s.lost(), s.counted, "{s:?}");
    } else {
        assert_eq!((s.events_dropped, s.lost()), (0, 0), "{s:?}");
    }
    assert!(4 * N as u64 - s.counted <= 2 * s.missed_runs, "{s:?}");
    // The counts are complete: without the last-flow cache, through the flow hash.
    let out = res.flows.iter().find(|f| f.direction == Direction::Outbound).unwrap();
    let inb = res.flows.iter().find(|f| f.direction == Direction::Inbound).unwrap();
    assert_eq!(
        (out.connects, out.closes, out.open),
        (N as u64, N as u64, 0),
        "{:#?}",
        res.flows
    );
    assert_eq!(
        (inb.accepts, inb.closes, inb.open),
        (N as u64, N as u64, 0),
        "{:#?}",
        res.flows
    );
}

/// A socket table too small for the open connections: every connect and accept is still
/// counted; the sockets that found no slot are counted in `socks_full`, and their closes
/// are counted without direction. Nothing is lost or counted twice.
#[test]
fn a_full_socket_table_loses_direction_never_counts() {
    if !need_root() {
        return;
    }
    const N: usize = 10;
    const SLOTS: u32 = 8;
    let a = Netns::new();
    let tracer = TracerBuilder::new()
        .netns([a.inode()])
        .socket_table_entries(SLOTS)
        .attach()
        .unwrap();
    let (port, server) = loop_server(&a, N);
    // All N connections open at once (2N sockets), then all closed.
    let conns: Vec<TcpStream> = a
        .in_thread(&unique("fl"), move || {
            (0..N)
                .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
                .collect()
        })
        .join()
        .unwrap();
    // While they are open: the sockets that have a slot are open in their flows; the
    // others, whose closes cannot be matched, are not.
    let start = Instant::now();
    let open_now = loop {
        let flows = tracer.flows().unwrap();
        let established: u64 = flows.iter().map(|f| f.connects + f.accepts).sum();
        if established == 2 * N as u64 {
            break flows.iter().map(|f| f.open).sum::<u64>();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{flows:#?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(open_now, u64::from(SLOTS));
    drop(conns);
    server.join().unwrap();
    let (_, res) = collect(tracer, 4 * N as u64);
    let s = res.stats;
    assert_eq!(s.counted, 4 * N as u64, "{s:?}");
    assert_eq!(s.socks_full, 2 * N as u64 - u64::from(SLOTS), "{s:?}");
    let sum =
        |d: Direction, f: fn(&FlowRow) -> u64| -> u64 { res.flows.iter().filter(|r| r.direction == d).map(f).sum() };
    assert_eq!(sum(Direction::Outbound, |r| r.connects), N as u64);
    assert_eq!(sum(Direction::Inbound, |r| r.accepts), N as u64);
    let with_slot = sum(Direction::Outbound, |r| r.closes) + sum(Direction::Inbound, |r| r.closes);
    assert_eq!(with_slot, u64::from(SLOTS));
    assert_eq!(sum(Direction::Unknown, |r| r.closes), 2 * N as u64 - u64::from(SLOTS));
    // A socket without a slot was never counted open: nothing stays open.
    let open = sum(Direction::Outbound, |r| r.open) + sum(Direction::Inbound, |r| r.open);
    assert_eq!(open, 0);
}

/// A flow table too small for the flows: the flows that fit are counted exactly, every
/// event of the others is counted in `flows_full`, and nothing is counted twice.
#[test]
fn a_full_flow_table_counts_what_it_drops() {
    if !need_root() {
        return;
    }
    const FLOWS: u32 = 2;
    const PER_PORT: usize = 3;
    let a = Netns::new();
    let tracer = TracerBuilder::new()
        .netns([a.inode()])
        .flow_table_entries(FLOWS)
        .attach()
        .unwrap();
    // One server port after the other: the first two flows (outbound + inbound of the
    // first port) fill the table; the other ports' flows do not fit.
    let mut ports = Vec::new();
    for _ in 0..3 {
        let (port, server) = loop_server(&a, PER_PORT);
        loop_client(&a, port, PER_PORT).join().unwrap();
        server.join().unwrap();
        ports.push(port);
    }
    let (_, res) = collect(tracer, 4 * PER_PORT as u64);
    let s = res.stats;
    assert_eq!(res.flows.len(), FLOWS as usize, "{:#?}", res.flows);
    assert!(res.flows.iter().all(|f| f.port == ports[0]), "{:#?}", res.flows);
    let total: u64 = res.flows.iter().map(|f| f.counts().events).sum();
    assert_eq!(total, 4 * PER_PORT as u64);
    assert_eq!(s.counted, 3 * 4 * PER_PORT as u64, "{s:?}");
    assert_eq!(s.flows_full, 2 * 4 * PER_PORT as u64, "{s:?}");
    assert_eq!(s.lost(), s.flows_full, "{s:?}");
}

/// Reading the flows during a trace, again and again: new flows appear as they are made,
/// known ones keep counting, and the last read equals the finished trace's.
#[test]
fn flows_read_mid_trace_follow_new_flows() {
    if !need_root() {
        return;
    }
    let a = Netns::new();
    let tracer = TracerBuilder::new().netns([a.inode()]).attach().unwrap();
    // (port, direction) -> (connects + accepts, closes)
    let table = |flows: &[FlowRow]| -> Vec<(u16, Direction, u64, u64)> {
        flows
            .iter()
            .map(|f| (f.port, f.direction, f.connects + f.accepts, f.closes))
            .collect()
    };
    let wait_for = |want: &dyn Fn(&[FlowRow]) -> bool| -> Vec<FlowRow> {
        let start = Instant::now();
        loop {
            let flows = tracer.flows().unwrap();
            if want(&flows) {
                return flows;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{:#?}", table(&flows));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (p1, s1) = loop_server(&a, 4);
    loop_client(&a, p1, 3).join().unwrap();
    let mut first = vec![(p1, Direction::Outbound, 3, 3), (p1, Direction::Inbound, 3, 3)];
    first.sort();
    wait_for(&|f| {
        let mut t = table(f);
        t.sort();
        t == first
    });
    let (p2, s2) = loop_server(&a, 2);
    loop_client(&a, p2, 2).join().unwrap();
    s2.join().unwrap();
    loop_client(&a, p1, 1).join().unwrap();
    s1.join().unwrap();
    let mut all = vec![
        (p1, Direction::Outbound, 4, 4),
        (p1, Direction::Inbound, 4, 4),
        (p2, Direction::Outbound, 2, 2),
        (p2, Direction::Inbound, 2, 2),
    ];
    all.sort();
    let last = wait_for(&|f| {
        let mut t = table(f);
        t.sort();
        t == all
    });
    let (_, res) = collect(tracer, 24);
    assert_eq!(res.flows, last);
    no_loss(&res.stats);
}

/// Aggregated mode checks each new connection against the flow its CPU counted last, by
/// the socket's own fields, before it builds a key. Connections made one after the other
/// on one CPU, each differing from the one before in one thing only (network namespace,
/// server address or port), must each count under their own flow: with a netns filter, and
/// without any filter (the default, which `trace-node.rhai` uses).
#[test]
fn connections_differing_in_one_field_count_under_their_own_flows() {
    one_field_apart(true);
}

#[test]
fn connections_differing_in_one_field_count_apart_without_filters() {
    one_field_apart(false);
}

fn one_field_apart(filtered: bool) {
    if !need_root() {
        return;
    }
    const N: usize = 4;
    let a = Netns::new();
    let b = Netns::new();
    let mut builder = TracerBuilder::new();
    if filtered {
        builder = builder.netns([a.inode(), b.inode()]);
    }
    let tracer = builder.attach().unwrap();
    let (p, s1) = server_at(&a, "127.0.0.1", 0, 3 * N);
    let (_, s2) = server_at(&b, "127.0.0.1", p, N);
    let (_, s3) = server_at(&a, "127.0.0.2", p, N);
    let (q, s4) = loop_server(&a, N);
    // Each differs from the one before in one field.
    let order: [(bool, &str, u16); 6] = [
        (false, "127.0.0.1", p),
        (true, "127.0.0.1", p),
        (false, "127.0.0.1", p),
        (false, "127.0.0.2", p),
        (false, "127.0.0.1", p),
        (false, "127.0.0.1", q),
    ];
    let (path_a, path_b) = (a.path(), b.path());
    std::thread::spawn(move || {
        pin_to_one_cpu();
        let fa = std::fs::File::open(path_a).unwrap();
        let fb = std::fs::File::open(path_b).unwrap();
        for _ in 0..N {
            for (in_b, addr, port) in order {
                let f = if in_b { &fb } else { &fa };
                // SAFETY: setns on a valid fd; it only changes this thread's namespace.
                let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(f), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                drop(TcpStream::connect((addr, port)).unwrap());
            }
        }
    })
    .join()
    .unwrap();
    for s in [s1, s2, s3, s4] {
        s.join().unwrap();
    }
    let n = N as u64;
    let (ia, ib) = (a.inode(), b.inode());
    let mut want = Vec::new();
    for (ns, addr, port, count) in [
        (ia, "127.0.0.1", p, 3 * n),
        (ib, "127.0.0.1", p, n),
        (ia, "127.0.0.2", p, n),
        (ia, "127.0.0.1", q, n),
    ] {
        want.push(((ns, Direction::Outbound, ip(addr), port), (count, 0, count)));
        want.push(((ns, Direction::Inbound, ip(addr), port), (0, count, count)));
    }
    want.sort();
    // This test's flows: (netns, direction, server address, port) -> (connects, accepts,
    // closes). Without a filter the trace also counts the host's own traffic, so the wait
    // is for these rows, not for a total.
    let ours = |flows: &[FlowRow]| {
        let mut rows: Vec<_> = flows
            .iter()
            .filter(|f| f.netns == ia || f.netns == ib)
            .map(|f| {
                let server = if f.direction == Direction::Inbound {
                    f.saddr
                } else {
                    f.daddr
                };
                (
                    (f.netns, f.direction, server, f.port),
                    (f.connects, f.accepts, f.closes),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let start = Instant::now();
    while ours(&tracer.flows().unwrap()) != want && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let res = tracer.finish(|_| {}).unwrap();
    no_loss(&res.stats);
    assert_eq!(ours(&res.flows), want);
}

#[test]
fn stalled_reader_drops_are_counted_exactly() {
    if !need_root() {
        return;
    }
    const M: usize = 300;
    let a = Netns::new();
    // One page of event rings (the smallest rings: 16 events per CPU) and a reader that
    // does not read.
    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode()])
        .ring_buffer_bytes(4096)
        .attach()
        .unwrap();
    let (port, server) = loop_server(&a, M);
    loop_client(&a, port, M).join().unwrap();
    server.join().unwrap();
    let attempted = 4 * M as u64;
    let t0 = Instant::now();
    while tracer.stats().unwrap().counted < attempted && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut read = 0u64;
    let res = tracer.finish(|_| read += 1).unwrap();
    let s = res.stats;
    // `counted` is what the program tried to write: 4 per connection unless the kernel
    // skipped runs (counted in missed_runs; see live_reader_loses_nothing_at_moderate_rate).
    assert!(attempted - s.counted <= 2 * s.missed_runs, "{s:?}");
    assert!(
        s.events_dropped > 0,
        "one-page rings cannot hold {attempted} events: {s:?}"
    );
    assert_eq!(
        s.events_sent + s.events_dropped,
        s.counted,
        "produced + dropped == attempted: {s:?}"
    );
    assert_eq!(s.events_read, read);
    assert_eq!(read, s.events_sent, "every event sent is read: {s:?}");
    assert_eq!(s.lost(), s.events_dropped);
    // The kernel's aggregation is not affected by the stalled reader: it holds every event
    // the program counted (all `attempted` unless the kernel skipped runs, bounded above).
    let total: u64 = res.flows.iter().map(|f| f.counts().events).sum();
    assert_eq!(total, s.counted, "{s:?}");
}

#[test]
fn live_reader_loses_nothing_at_moderate_rate() {
    if !need_root() {
        return;
    }
    const M: usize = 3000;
    // Rings that hold less than the run's events (96 bytes each, 1 MiB shared out among
    // the CPUs), so that only a reader that keeps up during the run loses nothing: one
    // that reads nothing until the end loses at least 1,000 events, wherever they land.
    // (The default 4 MiB would hold all 12,000, and the test would not prove the reader.)
    // Wakeups at 64 KiB wake the reader when a CPU's ring is at most half full.
    const RING: u32 = 1 << 20;
    const _: () = assert!(4 * M * 96 > RING as usize + 1000 * 96);
    let a = Netns::new();
    let mut tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode()])
        .ring_buffer_bytes(RING)
        .wakeup_bytes(64 << 10)
        .attach()
        .unwrap();
    let (port, server) = loop_server(&a, M);
    let client = loop_client(&a, port, M);
    let mut read = 0u64;
    while !client.is_finished() {
        tracer.wait(Duration::from_millis(100)).unwrap();
        tracer.drain(&mut |_| read += 1);
    }
    client.join().unwrap();
    server.join().unwrap();
    // Every connection must have reached CLOSE before the count is checked: a client
    // socket closed before its peer can still be in FIN_WAIT2 when the threads end.
    wait_until_closed(&a, Duration::from_secs(90));
    let (events, res) = collect(tracer, 4 * M as u64);
    read += events.len() as u64;
    let s = res.stats;
    no_loss(&s);
    // Every event the program produced was read. The kernel itself may skip a program run
    // (a state change from an interrupt while the program runs on that CPU); those skips
    // are counted, and bound what is missing.
    assert_eq!(s.events_read, read);
    assert_eq!(read, s.counted, "{s:?}");
    let missing = 4 * M as u64 - s.counted;
    assert!(
        missing <= 2 * s.missed_runs,
        "{missing} events missing: {s:?} {:?}",
        res.flows
    );
    let total: u64 = res.flows.iter().map(|f| f.counts().events).sum();
    assert_eq!(total, read);
}

/// Aggregated mode's port filter: connections to another port are neither counted when
/// established nor when closed (their sockets keep a slot marked filtered out), and nothing
/// is counted without a flow.
#[test]
fn aggregated_port_filter_counts_only_its_port() {
    if !need_root() {
        return;
    }
    const N: usize = 5;
    let a = Netns::new();
    let (p1, s1) = loop_server(&a, N);
    let (p2, s2) = loop_server(&a, N);
    let tracer = TracerBuilder::new().netns([a.inode()]).dport(p1).attach().unwrap();
    a.in_thread(&unique("pf"), move || {
        for _ in 0..N {
            drop(TcpStream::connect(("127.0.0.1", p1)).unwrap());
            drop(TcpStream::connect(("127.0.0.1", p2)).unwrap());
        }
    })
    .join()
    .unwrap();
    s1.join().unwrap();
    s2.join().unwrap();
    let n = N as u64;
    let (_, res) = collect(tracer, 4 * n);
    assert_eq!(res.stats.counted, 4 * n, "{:?}", res.stats);
    assert_eq!(res.stats.flows_full, 0, "{:?}", res.stats);
    let mut rows: Vec<_> = res
        .flows
        .iter()
        .map(|f| (f.direction, f.port, f.connects, f.accepts, f.closes, f.open))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            (Direction::Outbound, p1, n, 0, n, 0),
            (Direction::Inbound, p1, 0, n, n, 0),
        ],
        "{:#?}",
        res.flows
    );
}

#[test]
fn filters_apply_in_the_kernel() {
    if !need_root() {
        return;
    }
    let a = Netns::new();
    let b = Netns::new();
    let _veth = Veth::join(&a, &b);
    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode(), b.inode()])
        .family(Family::Ipv4)
        .attach()
        .unwrap();
    let s1 = Server::start(&b, ip(B4));
    let s2 = Server::start(&b, ip(B4));
    let s6 = Server::start(&b, ip(B6));
    drop(tracer);
    // Second tracer: only port s1, IPv4. The listeners were recorded by the first one's
    // program, not this one's, and this one does not seed them from a snapshot, so
    // accepts here have an unknown owner; connects are known.
    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode(), b.inode()])
        .family(Family::Ipv4)
        .dport(s1.port)
        .seed_owners(false)
        .attach()
        .unwrap();
    let ports = (s1.port, s2.port, s6.port);
    a.in_thread(&unique("ft"), move || {
        for _ in 0..3 {
            drop(TcpStream::connect((ip(B4), ports.0)).unwrap());
            drop(TcpStream::connect((ip(B4), ports.1)).unwrap());
            drop(TcpStream::connect((ip(B6), ports.2)).unwrap());
        }
    })
    .join()
    .unwrap();
    let (events, res) = collect(tracer, 12);
    assert_eq!(res.stats.counted, 12, "{:?}", res.stats);
    assert_eq!(events.len(), 12);
    assert!(events.iter().all(|e| e.family == Family::Ipv4));
    assert!(
        events.iter().all(|e| if e.netns == Some(a.inode()) {
            e.dport == s1.port
        } else {
            e.sport == s1.port
        }),
        "{events:#?}"
    );
    assert_eq!(
        of_kind(&events, EventKind::Accept)
            .iter()
            .filter(|e| e.pid == 0)
            .count(),
        3
    );
    assert_eq!(res.stats.owner_unknown, 3);
    // The reader counts them, and the closes of those accepted sockets, which inherit it.
    assert_eq!(res.stats.events_owner_unknown, 6);

    // pid filter: only the connects' owner (this process) passes; accepts (owner
    // unknown to this tracer) and everything of other processes are left out.
    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode()])
        .pid(std::process::id())
        .attach()
        .unwrap();
    a.in_thread(&unique("fp"), move || {
        drop(TcpStream::connect((ip(B4), ports.0)).unwrap());
    })
    .join()
    .unwrap();
    let (events, _) = collect(tracer, 2);
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Connect, EventKind::Close]);
}

fn program_loaded(id: u32) -> bool {
    aya::programs::loaded_programs().any(|p| p.is_ok_and(|p| p.id() == id))
}

fn wait_unloaded(id: u32) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if !program_loaded(id) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn nothing_stays_attached_after_drop_or_panic() {
    if !need_root() {
        return;
    }
    let tracer = TracerBuilder::new().attach().unwrap();
    let id = tracer.program_id().unwrap();
    assert!(program_loaded(id));
    assert!(tracer.missed_runs().is_some(), "recursion_misses must be readable");
    drop(tracer);
    assert!(wait_unloaded(id), "program {id} still loaded after drop");

    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let tracer = TracerBuilder::new().mode(Mode::Stream).attach().unwrap();
        tx.send(tracer.program_id().unwrap()).unwrap();
        panic!("test panic while tracing");
    })
    .join();
    assert!(r.is_err());
    let id = rx.recv().unwrap();
    assert!(wait_unloaded(id), "program {id} still loaded after a panic");

    // Cancel flag: run() returns promptly when it is set.
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tracer = TracerBuilder::new()
        .duration(Duration::from_secs(3600))
        .cancel_flag(flag.clone())
        .attach()
        .unwrap();
    let setter = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let end = tracer.run(|_| {}, |_| {}).unwrap();
    setter.join().unwrap();
    assert_eq!(end, snat_ebpf::RunEnd::Cancelled);
    let id = tracer.program_id().unwrap();
    let _ = tracer.finish(|_| {}).unwrap();
    assert!(wait_unloaded(id));
}

/// Drop this thread's effective capabilities (capabilities are per thread in Linux).
fn drop_effective_caps() {
    common::clear_effective_caps(u64::MAX);
}

#[test]
fn without_capabilities_the_error_says_what_to_do() {
    if !need_root() {
        return;
    }
    let err = std::thread::spawn(|| {
        drop_effective_caps();
        TracerBuilder::new().attach().unwrap_err()
    })
    .join()
    .unwrap();
    assert!(matches!(err, snat_ebpf::Error::NotPermitted { .. }), "{err:?}");
    let msg = err.to_string();
    for needle in ["run as root", "CAP_BPF", "CAP_PERFMON"] {
        assert!(msg.contains(needle), "{msg}");
    }
}

#[test]
fn bad_options_are_refused_before_loading() {
    // No root needed: validation comes first.
    for b in [
        TracerBuilder::new().duration(Duration::ZERO),
        TracerBuilder::new().mode(Mode::Stream).ring_buffer_bytes(5000),
        TracerBuilder::new().netns([1u64 << 40]),
        TracerBuilder::new().pid(0),
        TracerBuilder::new().dport(0),
        TracerBuilder::new().flow_table_entries(0),
    ] {
        let err = b.attach().unwrap_err();
        assert!(matches!(err, snat_ebpf::Error::InvalidOption(_)), "{err:?}");
    }
}

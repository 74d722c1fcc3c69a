//! Owners of sockets older than the trace, on the real kernel, as root, in network
//! namespaces the test creates: a server that listens before the tracer attaches, and a
//! connection opened before it and closed during it.
//!
//! Without root these print `skipped: needs root` and pass, unless `CI` is set.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{B4, Netns, Server, Veth, collect, ip, need_root, unique};
use snat_core::model::{EventKind, TcpEvent};
use snat_ebpf::{Mode, TracerBuilder};

fn connect_n(a: &Netns, port: u16, n: usize) {
    a.in_thread(&unique("sc"), move || {
        for _ in 0..n {
            let mut s = TcpStream::connect((ip(B4), port)).unwrap();
            s.write_all(b"x").unwrap();
        }
    })
    .join()
    .unwrap();
}

#[test]
fn accepts_on_an_older_listener_and_closes_of_older_connections_carry_their_owner() {
    if !need_root() {
        return;
    }
    const N: usize = 20;
    let a = Netns::new();
    let b = Netns::new();
    let _veth = Veth::join(&a, &b);
    // The server listens before any tracer exists.
    let server = Server::start(&b, ip(B4));
    let port = server.port;
    let me = std::process::id();
    let my_comm = std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_string();

    // Control: without seeding, the listener's owner is unknown to the program.
    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode(), b.inode()])
        .seed_owners(false)
        .attach()
        .unwrap();
    assert!(tracer.seed_report().is_none());
    connect_n(&a, port, N);
    let (events, res) = collect(tracer, 4 * N as u64);
    let accepts: Vec<&TcpEvent> = events.iter().filter(|e| e.kind == EventKind::Accept).collect();
    assert_eq!(accepts.len(), N, "{:?}", res.stats);
    assert!(accepts.iter().all(|e| e.pid == 0 && e.comm.is_empty()), "{accepts:#?}");
    assert_eq!(res.stats.owner_unknown, N as u64, "{:?}", res.stats);
    assert!(res.seed.is_none());

    // A connection opened before the next trace, closed during it.
    let mut old = a
        .in_thread(&unique("so"), move || TcpStream::connect((ip(B4), port)).unwrap())
        .join()
        .unwrap();
    old.write_all(b"x").unwrap();
    let old_sport = old.local_addr().unwrap().port();
    // The server has accepted it (its accept queue is drained by its accept loop).
    std::thread::sleep(Duration::from_millis(200));

    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([a.inode(), b.inode()])
        .attach()
        .unwrap();
    let report = tracer.seed_report().unwrap().clone();
    assert_eq!(report.namespaces, 2, "{report:?}");
    assert!(report.listeners_seeded >= 1, "{report:?}");
    assert_eq!(report.listeners_unowned, 0, "{report:?}");
    assert!(
        report.connections_owned >= 2,
        "both ends of the older connection: {report:?}"
    );
    drop(old);
    connect_n(&a, port, N);
    let (events, res) = collect(tracer, 4 * N as u64 + 2);
    let s = res.stats;
    assert_eq!(s.lost(), 0, "{s:?}");
    assert_eq!(s.counted, 4 * N as u64 + 2, "{s:?} {events:#?}");

    let accepts: Vec<&TcpEvent> = events.iter().filter(|e| e.kind == EventKind::Accept).collect();
    assert_eq!(accepts.len(), N);
    for e in &accepts {
        assert_eq!((e.pid, e.comm.as_str()), (server.pid, server.comm.as_str()), "{e:?}");
        assert!(e.cgroup_id.is_some_and(|c| c > 0), "{e:?}");
    }
    // The kernel's counter covers connects, accepts and failures, not closes.
    assert_eq!(s.owner_unknown, 0, "{s:?}");

    // The older connection's two closes: the client end in A (this process holds it),
    // the server end in B (held by the python server).
    let old_closes: Vec<&TcpEvent> = events
        .iter()
        .filter(|e| {
            e.kind == EventKind::Close
                && ((e.netns == Some(a.inode()) && e.sport == old_sport)
                    || (e.netns == Some(b.inode()) && e.dport == old_sport))
        })
        .collect();
    assert_eq!(old_closes.len(), 2, "{events:#?}");
    for e in &old_closes {
        let want = if e.netns == Some(a.inode()) {
            (me, my_comm.as_str())
        } else {
            (server.pid, server.comm.as_str())
        };
        assert_eq!((e.pid, e.comm.as_str()), want, "{e:?}");
        assert!(e.duration_ns.is_none(), "established before the trace: {e:?}");
    }
    assert_eq!(s.events_owner_from_snapshot, 2, "{s:?}");
    assert_eq!(s.events_owner_unknown, 0, "{s:?}");
    assert!(events.iter().all(|e| e.pid != 0), "{events:#?}");
    assert_eq!(res.seed.as_ref(), Some(&report));
}

#[test]
fn pid_filter_matches_accepts_on_an_older_listener() {
    if !need_root() {
        return;
    }
    let a = Netns::new();
    let b = Netns::new();
    let _veth = Veth::join(&a, &b);
    let server = Server::start(&b, ip(B4));
    let tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([b.inode()])
        .pid(server.pid)
        .attach()
        .unwrap();
    connect_n(&a, server.port, 3);
    let (events, res) = collect(tracer, 6);
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == EventKind::Accept).count(),
        3,
        "{events:#?} {:?}",
        res.stats
    );
    assert!(events.iter().all(|e| e.pid == server.pid), "{events:#?}");

    // Aggregated mode seeds listeners only, and the kernel's rows count the accepts.
    let tracer = TracerBuilder::new()
        .netns([b.inode()])
        .pid(server.pid)
        .attach()
        .unwrap();
    let report = tracer.seed_report().unwrap().clone();
    assert!(report.listeners_seeded >= 1 && report.connections == 0, "{report:?}");
    connect_n(&a, server.port, 3);
    let (_, res) = collect(tracer, 6);
    let accepts: u64 = res.flows.iter().map(|f| f.accepts).sum();
    assert_eq!(accepts, 3, "{:?} {:?}", res.flows, res.stats);
    assert_eq!(res.stats.owner_unknown, 0, "{:?}", res.stats);
}

/// Without a namespace filter every namespace is seeded, named ones without a process of
/// their own included.
#[test]
fn without_a_netns_filter_every_namespace_is_seeded() {
    if !need_root() {
        return;
    }
    let a = Netns::new();
    let b = Netns::new();
    let _veth = Veth::join(&a, &b);
    let server = Server::start(&b, ip(B4));
    let tracer = TracerBuilder::new().mode(Mode::Stream).attach().unwrap();
    let report = tracer.seed_report().unwrap().clone();
    println!("seeded without a filter: {report:?}");
    assert!(report.namespaces >= 3, "host, a, b at least: {report:?}");
    connect_n(&a, server.port, 3);
    // Other tests trace in parallel: count only this test's accepts.
    let mine = |events: &[TcpEvent]| {
        events
            .iter()
            .filter(|e| e.kind == EventKind::Accept && e.netns == Some(b.inode()))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut tracer = tracer;
    let mut events = Vec::new();
    let t0 = Instant::now();
    while mine(&events).len() < 3 && t0.elapsed() < Duration::from_secs(10) {
        tracer.wait(Duration::from_millis(50)).unwrap();
        tracer.drain(&mut |e| events.push(e));
    }
    let _ = tracer.finish(|e| events.push(e)).unwrap();
    let accepts = mine(&events);
    assert_eq!(accepts.len(), 3, "{accepts:#?}");
    assert!(
        accepts.iter().all(|e| e.pid == server.pid && e.comm == server.comm),
        "{accepts:#?}"
    );
}

/// Aggregated mode without a pid filter records no owners, so it takes no snapshot (a
/// census and a /proc scan saved at attach); with a pid filter it seeds the listeners.
#[test]
fn aggregated_mode_seeds_only_with_a_pid_filter() {
    if !need_root() {
        return;
    }
    let a = Netns::new();
    let tracer = TracerBuilder::new().netns([a.inode()]).attach().unwrap();
    assert!(tracer.seed_report().is_none());
    drop(tracer);
    let tracer = TracerBuilder::new()
        .netns([a.inode()])
        .pid(std::process::id())
        .attach()
        .unwrap();
    let report = tracer.seed_report().expect("a pid filter uses owners: seeded");
    assert_eq!(report.namespaces, 1, "{report:?}");
}

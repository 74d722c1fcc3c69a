//! `trace::run` and `examples/trace-node.rhai` on the real kernel, through a bare engine
//! (`register_all` + `Ctx::new`). Traffic goes to loopback only. Needs root: without root
//! and without `CI` these print `skipped: needs root` and pass.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, Scope};
use snat_core::audit::Verdict;
use snat_core::model::{EventKind, TcpEvent};
use snat_script::modules::register_all;
use snat_script::modules::types::Trace;
use snat_script::report::SectionBody;
use snat_script::{Ctx, RunOptions};

/// The two tests wait for "a tracer got attached in this process": run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn need_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root, and CI is set: run the test suite as root");
    }
    println!("skipped: needs root");
    false
}

/// eBPF links this process holds (a tracer holds one while attached).
fn bpf_links() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf_link")))
                .count()
        })
        .unwrap_or(0)
}

/// Wait (up to 30 s) until this process holds more eBPF links than `base`: a tracer got
/// attached.
fn wait_attached(base: usize) {
    let t0 = Instant::now();
    while bpf_links() <= base {
        assert!(t0.elapsed() < Duration::from_secs(30), "the tracer never attached");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// In a thread: wait until a tracer is attached, then open `n` connections to a fresh
/// loopback listener (reading each to EOF) and `failed` connects to a closed loopback
/// port. Returns the listener's port.
fn traffic(n: usize, failed: usize) -> std::thread::JoinHandle<(u16, u16)> {
    let base = bpf_links();
    std::thread::spawn(move || {
        wait_attached(base);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for _ in 0..n {
                let (mut c, _) = l.accept().unwrap();
                let mut b = [0u8; 8];
                while c.read(&mut b).unwrap_or(0) > 0 {}
            }
        });
        for _ in 0..n {
            drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        server.join().unwrap();
        // A port nobody listens on: bind then drop to learn a free one.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        for _ in 0..failed {
            assert!(TcpStream::connect(("127.0.0.1", closed)).is_err());
        }
        (port, closed)
    })
}

fn engine(params: &[(&str, &str)]) -> (Engine, Ctx) {
    let params: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let ctx = Ctx::new(RunOptions::default(), params);
    let mut e = Engine::new();
    register_all(&mut e, &ctx);
    (e, ctx)
}

fn own_netns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").unwrap().ino()
}

#[test]
fn stream_stage_writes_text_and_jsonl_and_counts_exactly() {
    if !need_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 7;
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("trace.log");
    let jsonl = dir.path().join("trace.jsonl");
    let (e, ctx) = engine(&[]);
    let mut scope = Scope::new();
    scope.push("text", text.display().to_string());
    scope.push("jsonl", jsonl.display().to_string());
    scope.push("me", i64::from(std::process::id()));
    let t = traffic(N, 0);
    let trace: Trace = e
        .eval_with_scope(
            &mut scope,
            r#"trace::run(#{seconds: 3, mode: "stream", pid: me, family: "ipv4",
                            by: [["pid", "comm"], ["netns", "daddr", "dport"]], text_out: text, jsonl_out: jsonl})"#,
        )
        .unwrap();
    let (port, _) = t.join().unwrap();
    let s = &trace.0;
    // Only this process's sockets: N connects, N accepts, 2N closes (other traffic on the
    // host is filtered out in the kernel by pid).
    assert_eq!(s.totals.connects, N as u64, "{:?}", s.totals);
    assert_eq!(s.totals.accepts, N as u64);
    assert_eq!(s.totals.closes, 2 * N as u64);
    assert_eq!(s.lost_events, 0, "{:?}", s.notes);
    let stage = &ctx.stages()[0];
    assert_eq!(stage.name, "trace::run");
    assert_eq!(stage.items, Some(4 * N as u64));

    let events: Vec<TcpEvent> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4 * N);
    assert!(
        events
            .iter()
            .all(|e| e.pid == std::process::id() && e.netns == Some(own_netns()))
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Connect && e.dport == port)
            .count(),
        N
    );
    let text = std::fs::read_to_string(&text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Tracing TCP established connections. Ctrl-C to end.");
    assert!(lines[1].starts_with("TIME(ns)"));
    assert_eq!(lines.len(), 2 + 4 * N);
    for (l, ev) in lines[2..].iter().zip(&events) {
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cols[1], ev.kind.as_str());
        assert_eq!(cols[2], ev.pid.to_string());
        assert_eq!(cols[cols.len() - 1], own_netns().to_string());
        assert_eq!(cols[cols.len() - 2], ev.dport.to_string());
    }
}

#[test]
fn filters_that_match_nothing_on_the_node_are_noted() {
    if !need_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // A pid that existed and is gone, and an inode no namespace has.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    // Namespaces that exist without a process in them: one a mount keeps (`ip netns add`),
    // and one only a thread of this process is in.
    let mounted = snat_testbed::Netns::new("flt").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: unshare changes only this thread's network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        tx.send(
            std::fs::metadata(format!("/proc/self/task/{tid}/ns/net"))
                .unwrap()
                .ino(),
        )
        .unwrap();
        let _ = stop_rx.recv();
    });
    let threaded = rx.recv().unwrap();
    let (e, _ctx) = engine(&[]);
    let mut scope = Scope::new();
    scope.push("me", own_netns() as i64);
    scope.push("gone", i64::from(gone));
    scope.push("mounted", mounted.inode().unwrap() as i64);
    scope.push("threaded", threaded as i64);
    let trace: Trace = e
        .eval_with_scope(
            &mut scope,
            "trace::run(#{seconds: 1, netns: [me, 1, mounted, threaded], pid: gone})",
        )
        .unwrap();
    drop(stop_tx);
    holder.join().unwrap();
    let notes = &trace.0.notes;
    let has = |p: &str| notes.iter().any(|n| n.starts_with(p));
    assert!(
        has("netns 1: no process, thread or mount on this node holds that network namespace"),
        "{notes:?}"
    );
    for (what, n) in [
        ("this process is in it", own_netns()),
        ("a mount keeps it", mounted.inode().unwrap()),
        ("a thread is in it", threaded),
    ] {
        assert!(!has(&format!("netns {n}:")), "{what}: {notes:?}");
        // The owner snapshot at attach enters it by that thread's or that mount's file.
        assert!(
            !has(&format!("owner snapshot: network namespace {n}:")),
            "{what}: {notes:?}"
        );
    }
    assert!(has(&format!("pid {gone}: there is no such process")), "{notes:?}");
}

#[test]
fn trace_node_playbook_ranks_and_flags_failed_connects() {
    if !need_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 5;
    const FAILED: usize = 4;
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/trace-node.rhai")).unwrap();
    let (e, ctx) = engine(&[("seconds", "3"), ("min_failed", "4"), ("top", "1000")]);
    let t = traffic(N, FAILED);
    let _ = e.eval::<Dynamic>(&script).unwrap();
    let (port, closed) = t.join().unwrap();
    let rep = ctx.report();
    assert_eq!(rep.verdict, Some(Verdict::PressureFound), "{:?}", rep.summary);
    // The host may have other traffic, but the worst failing destination here is ours
    // unless something else failed as often: check our row is present in the table.
    let table = |title: &str| -> Vec<Vec<serde_json::Value>> {
        rep.sections
            .iter()
            .find(|s| s.title.starts_with(title))
            .map(|s| match &s.body {
                SectionBody::Table { rows, .. } => rows.clone(),
                other => panic!("{other:?}"),
            })
            .unwrap_or_else(|| panic!("no section {title}"))
    };
    let netns = serde_json::Value::from(own_netns());
    // A row of the per-destination tables: count, netns, daddr, dport.
    let row = |count: usize, dport: u16| vec![count.into(), netns.clone(), "127.0.0.1".into(), dport.into()];
    let failed = table("Failed connects per destination");
    assert!(failed.contains(&row(FAILED, closed)), "{failed:?}");
    let per_dest = table("Outbound connection attempts per destination");
    // Attempts: N connects to our listener's port, FAILED to the closed one. Inbound rows
    // (our N accepts, whose remote port the kernel does not keep) are not in the table.
    for (attempts, to) in [(N, port), (FAILED, closed)] {
        assert!(per_dest.contains(&row(attempts, to)), "{per_dest:?}");
    }
    assert!(per_dest.iter().all(|r| r[3].is_u64()), "{per_dest:?}");
    let step2 = table("Connections by source address");
    assert!(step2.iter().any(|r| r[1] == "127.0.0.1" && r[2] == netns));
    assert!(rep.findings.iter().any(|f| f.kind == "failed_connects"));
}

/// Run `f` on a thread inside the network namespace at `ns` (setns is per thread).
fn in_netns<T: Send + 'static>(
    ns: std::path::PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        // SAFETY: a valid namespace descriptor; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        f()
    })
}

/// In the namespace: `n` connections to a fresh loopback listener, each accepted and
/// closed, then `failed` connects to a closed loopback port.
fn burst(ns: std::path::PathBuf, n: usize, failed: usize) {
    in_netns(ns, move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let clients: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let servers: Vec<TcpStream> = (0..n).map(|_| l.accept().unwrap().0).collect();
        drop(clients);
        drop(servers);
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        for _ in 0..failed {
            assert!(TcpStream::connect(("127.0.0.1", closed)).is_err());
        }
    })
    .join()
    .unwrap();
}

/// `got` is `want`, but for at most `slack` events in all.
fn assert_counts(what: &str, got: &[u64], want: &[u64], slack: u64, why: &str) {
    let off: u64 = got.iter().zip(want).map(|(g, w)| g.abs_diff(*w)).sum();
    assert!(
        got.len() == want.len() && off <= slack,
        "{what} {got:?}, expected {want:?}: {why}"
    );
}

/// Burst, pause over two buckets, burst: each namespace's connects land in the bucket of
/// their phase, in both modes, and a chart of the per-pod series draws one line per pod.
#[test]
fn timeline_puts_two_phases_in_their_buckets_per_netns() {
    if !need_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let a = snat_testbed::Netns::new("tla").unwrap();
    let b = snat_testbed::Netns::new("tlb").unwrap();
    let (ia, ib) = (a.inode().unwrap(), b.inode().unwrap());
    for mode in ["aggregated", "stream"] {
        let (e, ctx) = engine(&[]);
        let mut scope = Scope::new();
        scope.push("mode", mode.to_string());
        scope.push("na", ia as i64);
        scope.push("nb", ib as i64);
        let base = bpf_links();
        let (pa, pb) = (a.path(), b.path());
        let traffic = std::thread::spawn(move || {
            wait_attached(base);
            let t0 = Instant::now();
            // Phase 1 in bucket 0; phase 2 3.5 s later, in the middle of bucket 3.
            burst(pa.clone(), 5, 0);
            std::thread::sleep(Duration::from_millis(3500).saturating_sub(t0.elapsed()));
            burst(pb, 7, 2);
            burst(pa, 2, 0);
            t0.elapsed()
        });
        let trace: Trace = e
            .eval_with_scope(
                &mut scope,
                r#"let t = trace::run(#{seconds: 6, bucket: 1, mode: mode, netns: [na, nb]});
                   let labels = #{};
                   labels[`${na}`] = "shop/pod-a";
                   labels[`${nb}`] = "shop/pod-b";
                   report::chart("per pod", "seconds into the trace", "attempts",
                                 t.timeline().grouped(labels, 5, "attempts"));
                   t"#,
            )
            .unwrap();
        let took = traffic.join().unwrap();
        assert!(
            took < Duration::from_millis(3900),
            "{mode}: the second burst ended late ({took:?})"
        );
        let tl = trace.1.as_ref().expect("a live trace keeps a timeline");
        assert_eq!(tl.bucket_secs, 1.0);
        assert_eq!(tl.starts, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "{mode}");
        let series = |ns: u64| {
            tl.series
                .iter()
                .find(|s| s.netns == ns)
                .unwrap_or_else(|| panic!("{mode}: no series for netns {ns}: {tl:?}"))
        };
        let (sa, sb) = (series(ia), series(ib));
        assert_eq!(tl.series.len(), 2, "{mode}: only the two namespaces are traced: {tl:?}");
        // Exact, unless the kernel skipped runs of the tracer (an interrupt's TCP work on a
        // CPU where it was running): the trace reports those in lost_events and its notes,
        // and each may have been one of these events.
        let s = &trace.0;
        let slack = s.lost_events;
        let why = format!("{mode}: lost {slack}; notes {:?}; totals {:?}", s.notes, s.totals);
        assert_counts("a connects", &sa.connects, &[5, 0, 0, 2, 0, 0], slack, &why);
        assert_counts("a accepts", &sa.accepts, &[5, 0, 0, 2, 0, 0], slack, &why);
        assert_counts("a failed", &sa.failed_connects, &[0; 6], slack, &why);
        assert_counts("b connects", &sb.connects, &[0, 0, 0, 7, 0, 0], slack, &why);
        assert_counts("b failed", &sb.failed_connects, &[0, 0, 0, 2, 0, 0], slack, &why);
        // Every connection was closed: nothing open at any bucket's end after its phase.
        assert_counts("b open at the end", &sb.open.as_ref().unwrap()[5..], &[0], slack, &why);
        // The buckets add up to the trace's totals.
        assert_eq!(sa.totals().connects + sb.totals().connects, s.totals.connects, "{why}");
        assert_eq!(sa.totals().closes + sb.totals().closes, s.totals.closes, "{why}");
        // The chart: one line per pod, named.
        let rep = ctx.report();
        let html = snat_script::html::render(
            &rep,
            &snat_script::report::RunFacts {
                playbook: "t",
                run_id: "r",
                audit_record: None,
                exit_code: 0,
            },
        );
        assert_eq!(html.matches("<polyline").count(), 2, "{mode}: {html}");
        assert!(html.contains(">shop/pod-a<") && html.contains(">shop/pod-b<"), "{html}");
        match &rep.sections[0].body {
            SectionBody::Chart { series, .. } => {
                assert_eq!(series[0]["name"], "shop/pod-b", "{why}");
                assert_eq!(series[0]["peak_at"], 3.0, "{why}");
                if slack == 0 {
                    assert_eq!(series[0]["total"], 9);
                    assert_eq!(series[1]["values"], serde_json::json!([5, 0, 0, 2, 0, 0]));
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A listener opened before the trace: with `seed_owners` (the default) its accepts carry
/// this process's pid (so the kernel's pid filter keeps them) and the notes say what the
/// snapshot named; with `seed_owners: false` they have no owner and the pid filter drops them.
#[test]
fn accepts_on_a_listener_older_than_the_trace_have_its_owner() {
    if !need_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 5;
    for seed in [true, false] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = bpf_links();
        let t = std::thread::spawn(move || {
            wait_attached(base);
            // The owner snapshot is taken right after the program attaches (tens to hundreds
            // of milliseconds): connect once it is done, well inside the 6 s window.
            std::thread::sleep(Duration::from_millis(2000));
            for _ in 0..N {
                let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (a, _) = listener.accept().unwrap();
                drop((c, a));
            }
        });
        let (e, _ctx) = engine(&[]);
        let mut scope = Scope::new();
        scope.push("me", i64::from(std::process::id()));
        scope.push("seed", seed);
        scope.push("port", i64::from(port));
        let trace: Trace = e
            .eval_with_scope(
                &mut scope,
                r#"trace::run(#{seconds: 6, mode: "stream", pid: me, dport: port, seed_owners: seed,
                                by: [["pid", "comm"]]})"#,
            )
            .unwrap();
        t.join().unwrap();
        let s = &trace.0;
        assert_eq!(s.totals.connects, N as u64, "seed {seed}: {:?}", s.totals);
        if seed {
            assert_eq!(s.totals.accepts, N as u64, "{:?} {:?}", s.totals, s.notes);
            assert!(
                s.notes.iter().any(|n| n.starts_with("owners of older sockets:")),
                "{:?}",
                s.notes
            );
        } else {
            assert_eq!(s.totals.accepts, 0, "{:?} {:?}", s.totals, s.notes);
            assert!(!s.notes.iter().any(|n| n.starts_with("owners of older sockets:")));
        }
    }
}

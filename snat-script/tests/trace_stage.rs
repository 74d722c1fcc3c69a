//! `trace::run` and `examples/trace-node.rhai` on the real kernel, through a bare engine
//! (`register_all` + `Ctx::new`). Traffic goes to loopback only. Needs root: without root
//! and without `CI` these print `skipped: needs root` and pass.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, Scope};
use snat_core::aggregate::{Field, Metric, Value};
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
    // Loopback uses no SNAT: count it as public here, as the playbook's `as_public` allows.
    let (e, ctx) = engine(&[
        ("seconds", "3"),
        ("min_failed", "4"),
        ("top", "1000"),
        ("as_public", "127.0.0.0/8"),
    ]);
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
    // failed, connects, netns, daddr, dport, snat, rule.
    let failed = table("Failed connects per destination");
    assert!(
        failed.iter().any(|r| r[..5]
            == [
                FAILED.into(),
                0.into(),
                netns.clone(),
                "127.0.0.1".into(),
                closed.into()
            ]
            && r[5] == "public"),
        "{failed:?}"
    );
    let per_dest = table("Outbound connection attempts per destination");
    // Attempts: N connects to our listener's port, FAILED to the closed one. Inbound rows
    // (our N accepts, whose remote port the kernel does not keep) are not in the table.
    for (attempts, to) in [(N, port), (FAILED, closed)] {
        assert!(per_dest.contains(&row(attempts, to)), "{per_dest:?}");
    }
    assert!(per_dest.iter().all(|r| r[3].is_u64()), "{per_dest:?}");
    let step2 = table("Events by source address");
    assert!(step2.iter().any(|r| r[1] == "127.0.0.1" && r[2] == netns));
    assert!(rep.findings.iter().any(|f| f.kind == "failed_connects"));
}

/// A child process, killed on drop.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A connect to 127.0.0.1:`port` left in progress (non-blocking): with the SYNs dropped,
/// the socket waits in SYN_SENT until it is closed.
fn connect_in_progress(port: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; the address is a
    // valid sockaddr_in of the size passed.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        assert!(
            r == -1 && err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {err}"
        );
        owned
    }
}

/// trace-node weighs failures by destination: refused connects to loopback (no SNAT) are
/// a warning, not pressure; with loopback counted as public they are pressure. Connects
/// still waiting in SYN_SENT when the trace ends (their SYNs dropped) are counted from the
/// namespace's sockets and make pressure by themselves.
#[test]
fn trace_node_playbook_weighs_failures_by_destination_and_counts_waiting_connects() {
    if !need_root() {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    const REFUSED: usize = 5;
    const WAITING: usize = 6;
    const DROPPED_PORT: u16 = 9;
    let ns = snat_testbed::Netns::new("tnw").unwrap();
    ns.drop_tcp_to(DROPPED_PORT).unwrap();
    let inode = ns.inode().unwrap();
    // A process in the namespace, so that census::namespaces() lists it.
    let _sleeper = Kill(
        std::process::Command::new("ip")
            .args(["netns", "exec", ns.name(), "sleep", "120"])
            .spawn()
            .unwrap(),
    );
    let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/trace-node.rhai")).unwrap();
    for public in [false, true] {
        // `bucket` as a parameter: a number, not the string `param` gives without a default.
        let mut params = vec![
            ("seconds", "2"),
            ("min_failed", "5"),
            ("top", "1000"),
            ("bucket", "0.5"),
        ];
        let inode_text = inode.to_string();
        if public {
            // Also narrowed to the test's namespace, as an SRE narrows a trace to a pod.
            params.push(("as_public", "127.0.0.0/8"));
            params.push(("netns", inode_text.as_str()));
        }
        let (e, ctx) = engine(&params);
        let base = bpf_links();
        let path = ns.path();
        let traffic = std::thread::spawn(move || {
            wait_attached(base);
            // Traffic outside the namespace too, which the netns filter must leave out.
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            for _ in 0..3 {
                drop(TcpStream::connect(l.local_addr().unwrap()).unwrap());
                drop(l.accept().unwrap());
            }
            in_netns(path, || {
                let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                for _ in 0..REFUSED {
                    assert!(TcpStream::connect(("127.0.0.1", closed)).is_err());
                }
                let waiting: Vec<_> = (0..WAITING).map(|_| connect_in_progress(DROPPED_PORT)).collect();
                (closed, waiting)
            })
            .join()
            .unwrap()
        });
        let _ = e.eval::<Dynamic>(&script).unwrap();
        // The waiting sockets are closed only now, after the playbook's census.
        let (closed, waiting) = traffic.join().unwrap();
        drop(waiting);
        let rep = ctx.report();
        let kinds: Vec<&str> = rep.findings.iter().map(|f| f.kind.as_str()).collect();
        let dest = |port: u16| Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let finding = |kind: &str| {
            rep.findings
                .iter()
                .find(|f| f.kind == kind)
                .unwrap_or_else(|| panic!("public={public}: no {kind} finding in {kinds:?}"))
        };
        if public {
            assert_eq!(rep.verdict, Some(Verdict::PressureFound), "{:?}", rep.summary);
            let f = finding("failed_connects");
            assert_eq!(f.destination, dest(closed));
            assert!(
                f.summary
                    .starts_with(&format!("{REFUSED} failed connects from netns {inode}")),
                "{}",
                f.summary
            );
            let w = finding("waiting_connects");
            assert_eq!(w.destination, dest(DROPPED_PORT));
            assert!(
                w.summary.starts_with(&format!("{WAITING} connects from netns {inode}")),
                "{}",
                w.summary
            );
            assert!(!kinds.contains(&"failed_connects_no_snat"), "{kinds:?}");
            // Narrowed to one namespace: every row of the Step 2 table is that namespace's.
            let step2 = rep
                .sections
                .iter()
                .find(|s| s.title.starts_with("Events by source address"))
                .map(|s| serde_json::to_value(&s.body).unwrap())
                .unwrap();
            let rows = step2["rows"].as_array().unwrap();
            assert!(!rows.is_empty() && rows.iter().all(|r| r[2] == inode), "{rows:?}");
            assert!(
                rep.title.as_deref().unwrap().ends_with(&format!("only netns {inode})")),
                "{:?}",
                rep.title
            );
        } else {
            assert_eq!(rep.verdict, Some(Verdict::Clear), "{:?}", rep.summary);
            let f = finding("failed_connects_no_snat");
            assert_eq!(f.severity, snat_core::model::Severity::Warning);
            assert_eq!(f.destination, dest(closed));
            assert_eq!(kinds, ["failed_connects_no_snat"], "loopback is no SNAT pressure");
        }
    }
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
/// Ranked by (netns, sport, daddr, dport), both modes give one row per listener and side
/// and one for the failed connects: a client's ephemeral ports make no rows.
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
                r#"let t = trace::run(#{seconds: 6, bucket: 1, mode: mode, netns: [na, nb],
                                        by: [["netns", "sport", "daddr", "dport"]]});
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
        // Per namespace, a client row (no sport) and a server row (the listening port, no
        // dport) per listener: two listeners in A, one in B, and B's failed connects.
        let by_sport = s
            .rank(
                &[Field::Netns, Field::Sport, Field::Daddr, Field::Dport],
                Metric::Events,
            )
            .unwrap();
        if slack == 0 {
            assert_eq!(by_sport.rows.len(), 7, "{why}: {}", by_sport.to_text());
        }
        assert!(
            by_sport
                .rows
                .iter()
                .all(|r| (r.key[1] == Value::Missing) != (r.key[3] == Value::Missing)),
            "{why}: a row has both ports or neither: {}",
            by_sport.to_text()
        );
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
                host: None,
                exit_code: 0,
            },
            None,
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
            // The missing accepts are explained, not a silent zero.
            let me = std::process::id();
            assert!(
                s.notes
                    .iter()
                    .any(|n| n.starts_with(&format!("pid {me} with seed_owners false: accepts on sockets"))),
                "{:?}",
                s.notes
            );
        }
    }
}

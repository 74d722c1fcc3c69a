//! A simulated node: "pods" made of a network namespace plus a cgroup v2 directory named
//! as kubelet names it, a "world" namespace holding the destinations, and processes
//! holding known numbers of connections. The census and the resolution must give exact
//! counts and the right pod UIDs. Needs root (see `snat_testbed::require_root`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use snat_core::census::{CensusOptions, MethodChoice, StateSet, census_netns};
use snat_core::model::TcpState;
use snat_core::policy::Policy;
use snat_core::procindex::ProcIndex;
use snat_core::resolve::{census_owned, group_by_owner, pod_of_cgroup, resolve, resolve_one};
use snat_testbed::{Holder, Layout, Netns, Plan, PodCgroup, Qos, Veth, require_root, spawn_holder};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The world: destinations 198.18.0.1:443 and 198.18.0.2:80 (benchmark range: public to
/// the policy), 10.99.0.1:5432 (private), [2001:db8::5]:443 (documentation range: public),
/// all listening without accepting. 198.18.9.9 is routed to the world but not assigned:
/// connects to it stay in SYN_SENT.
struct World {
    ns: Netns,
    _listener: Holder,
}

fn world() -> World {
    let ns = Netns::new("w").unwrap();
    for a in ["198.18.0.1/32", "198.18.0.2/32", "10.99.0.1/32", "2001:db8::5/128"] {
        ns.add_lo_addr(a).unwrap();
    }
    let plan: Vec<Plan> = ["198.18.0.1:443", "198.18.0.2:80", "10.99.0.1:5432", "[2001:db8::5]:443"]
        .iter()
        .map(|a| Plan::Listen {
            on: sa(a),
            backlog: 1024,
        })
        .collect();
    let listener = spawn_holder(Some(&ns.path()), None, &plan).unwrap();
    World {
        ns,
        _listener: listener,
    }
}

/// A pod: netns joined to the world by a veth (IPv4 and IPv6), default routes to it, and
/// the pod's container cgroup.
struct Pod {
    ns: Netns,
    _veth: Veth,
    cg: PodCgroup,
}

fn pod(w: &World, layout: Layout, qos: Qos, subnet: u8) -> Pod {
    let ns = Netns::new("p").unwrap();
    let veth = Veth::new(
        &ns,
        &format!("10.201.{subnet}.2/24"),
        &w.ns,
        &format!("10.201.{subnet}.1/24"),
    )
    .unwrap();
    ns.ip(&["route", "add", "default", "via", &format!("10.201.{subnet}.1")])
        .unwrap();
    // IPv6 without duplicate address detection, so the address is usable at once.
    ns.ip(&[
        "addr",
        "add",
        &format!("fd00:{subnet}::2/64"),
        "dev",
        veth.dev_a(),
        "nodad",
    ])
    .unwrap();
    w.ns.ip(&[
        "addr",
        "add",
        &format!("fd00:{subnet}::1/64"),
        "dev",
        veth.dev_b(),
        "nodad",
    ])
    .unwrap();
    ns.ip(&["-6", "route", "add", "default", "via", &format!("fd00:{subnet}::1")])
        .unwrap();
    Pod {
        ns,
        _veth: veth,
        cg: PodCgroup::new(layout, qos).unwrap(),
    }
}

fn is_public(ip: IpAddr) -> bool {
    Policy::new().classify(ip).snat
}

fn simulated_node(layout: Layout) {
    if !require_root() {
        return;
    }
    let w = world();
    let a = pod(&w, layout, Qos::Burstable, 1);
    let b = pod(&w, layout, Qos::BestEffort, 2);
    let a_app = spawn_holder(
        Some(&a.ns.path()),
        Some(&a.cg.cgroup),
        &[
            Plan::Connect {
                to: sa("198.18.0.1:443"),
                count: 5,
            },
            Plan::Connect {
                to: sa("198.18.0.2:80"),
                count: 3,
            },
            Plan::Connect {
                to: sa("10.99.0.1:5432"),
                count: 4,
            },
            Plan::Connect {
                to: sa("[2001:db8::5]:443"),
                count: 2,
            },
            Plan::ConnectNoWait {
                to: sa("198.18.9.9:443"),
                count: 2,
            },
        ],
    )
    .unwrap();
    // A second process of pod A with no connections (like the pause container).
    let a_pause = spawn_holder(Some(&a.ns.path()), Some(&a.cg.cgroup), &[]).unwrap();
    let b_app = spawn_holder(
        Some(&b.ns.path()),
        Some(&b.cg.cgroup),
        &[Plan::Connect {
            to: sa("198.18.0.1:443"),
            count: 7,
        }],
    )
    .unwrap();

    let index = ProcIndex::scan("/proc").unwrap();
    let owners = resolve(&index, &pod_of_cgroup);
    let by_ns: BTreeMap<u64, _> = owners.iter().map(|o| (o.netns, o)).collect();
    let oa = by_ns[&a.ns.inode().unwrap()];
    assert_eq!(oa.pids, {
        let mut v = vec![a_app.pid(), a_pause.pid()];
        v.sort();
        v
    });
    assert_eq!(oa.pods.len(), 1);
    assert_eq!(oa.pods[0].uid, a.cg.uid);
    assert_eq!(oa.pods[0].qos, Some(snat_core::model::Qos::Burstable));
    assert!(!oa.host_netns && !oa.pods[0].host_network);
    let ob = by_ns[&b.ns.inode().unwrap()];
    assert_eq!(ob.pids, vec![b_app.pid()]);
    assert_eq!(ob.pods[0].uid, b.cg.uid);
    assert_eq!(ob.pods[0].qos, Some(snat_core::model::Qos::Besteffort));

    let opts = CensusOptions {
        states: StateSet::of(&[TcpState::Established, TcpState::SynSent]),
        method: MethodChoice::Auto,
        ..CensusOptions::default()
    };
    let ca = census_owned(&index, oa.netns, opts).unwrap();
    assert_eq!(ca.netns, Some(oa.netns));
    assert_eq!(ca.method, snat_core::census::Method::SockDiag);
    let counts = ca.counts();
    assert_eq!((counts.established, counts.syn_sent, counts.total), (14, 2, 16));
    assert!(ca.sockets.iter().all(|s| s.owner_pid == Some(a_app.pid())));
    let d = ca.destinations(is_public);
    let got: Vec<(String, u64, u64)> = d
        .iter()
        .map(|d| {
            (
                SocketAddr::new(d.ip, d.port).to_string(),
                d.counts.established,
                d.counts.syn_sent,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("198.18.0.1:443".to_string(), 5, 0),
            ("198.18.0.2:80".to_string(), 3, 0),
            // Ties (2 active each) go by address, IPv4 first.
            ("198.18.9.9:443".to_string(), 0, 2),
            ("[2001:db8::5]:443".to_string(), 2, 0),
        ]
    );
    let cb = census_owned(&index, ob.netns, opts).unwrap();
    assert_eq!(cb.counts().established, 7);
    assert_eq!(cb.destinations(is_public)[0].counts.established, 7);

    // The world sees the server side: 5 + 7 to :443 and 3 to :80 (accept queue, no owner).
    let cw = census_netns(&w.ns.path(), opts).unwrap();
    let on_443 = cw
        .sockets
        .iter()
        .filter(|s| s.local == sa("198.18.0.1:443") && s.state == TcpState::Established)
        .count();
    assert_eq!(on_443, 12);
    assert!(cw.destinations(|_| true).is_empty(), "accepted connections are inbound");
}

#[test]
fn simulated_node_systemd_layout() {
    simulated_node(Layout::Systemd);
}

#[test]
fn simulated_node_cgroupfs_layout() {
    simulated_node(Layout::Cgroupfs);
}

/// A hostNetwork pod shares the node's namespace; its sockets are still tied to its pod
/// through the owning process's cgroup, apart from a node daemon's.
#[test]
fn host_network_pod_is_named() {
    if !require_root() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = listener.local_addr().unwrap();
    let pod = PodCgroup::new(Layout::Systemd, Qos::Guaranteed).unwrap();
    let agent = spawn_holder(None, Some(&pod.cgroup), &[Plan::Connect { to, count: 3 }]).unwrap();
    let daemon = spawn_holder(None, None, &[Plan::Connect { to, count: 2 }]).unwrap();

    let index = ProcIndex::scan("/proc").unwrap();
    let host = index.host_netns.expect("host netns known");
    assert_eq!(index.get(agent.pid()).unwrap().netns, host);
    let owner = resolve_one(&index, host, &pod_of_cgroup).unwrap();
    assert!(owner.host_netns);
    let p = owner
        .pods
        .iter()
        .find(|p| p.uid == pod.uid)
        .expect("hostNetwork pod listed");
    assert!(p.host_network);

    let opts = CensusOptions {
        states: StateSet::of(&[TcpState::Established]),
        method: MethodChoice::Auto,
        ..CensusOptions::default()
    };
    let census = census_owned(&index, host, opts).unwrap();
    // The test's policy: loopback stands for a public destination.
    let groups = group_by_owner(&census, &index, &pod_of_cgroup, &|ip: IpAddr| ip.is_loopback());
    let g = groups
        .iter()
        .find(|g| g.pod.as_ref().is_some_and(|p| p.uid == pod.uid))
        .expect("a group for the hostNetwork pod");
    assert_eq!(g.pids, vec![agent.pid()]);
    assert!(g.pod.as_ref().unwrap().host_network);
    let to_listener: Vec<_> = g.destinations.iter().filter(|d| d.port == to.port()).collect();
    assert_eq!(to_listener.len(), 1);
    assert_eq!(to_listener[0].counts.established, 3);
    let gd = groups
        .iter()
        .find(|g| g.pids == vec![daemon.pid()])
        .expect("a group for the node daemon");
    assert!(gd.pod.is_none());
    assert_eq!(gd.process.as_ref().unwrap().pid, daemon.pid());
    assert_eq!(gd.destinations.iter().map(|d| d.counts.established).sum::<u64>(), 2);
    drop(listener);
}

/// sock_diag and /proc/net/tcp{,6} list the same sockets.
#[test]
fn sock_diag_and_proc_net_tcp_agree() {
    if !require_root() {
        return;
    }
    let w = world();
    let p = pod(&w, Layout::Systemd, Qos::Burstable, 3);
    let _h = spawn_holder(
        Some(&p.ns.path()),
        None,
        &[
            Plan::Connect {
                to: sa("198.18.0.2:80"),
                count: 6,
            },
            Plan::Connect {
                to: sa("[2001:db8::5]:443"),
                count: 3,
            },
            Plan::Listen {
                on: sa("0.0.0.0:8080"),
                backlog: 8,
            },
        ],
    )
    .unwrap();
    let run = |method| {
        let mut c = census_netns(
            &p.ns.path(),
            CensusOptions {
                states: StateSet::all(),
                method,
                ..CensusOptions::default()
            },
        )
        .unwrap();
        c.sockets.sort_by_key(|s| (s.local, s.remote, s.inode));
        c
    };
    let a = run(MethodChoice::SockDiag);
    let b = run(MethodChoice::ProcNetTcp);
    assert_eq!(a.method, snat_core::census::Method::SockDiag);
    assert_eq!(b.method, snat_core::census::Method::ProcNetTcp);
    assert_eq!(a.sockets.len(), 10);
    assert_eq!(a.sockets, b.sockets);
    assert_eq!(a.listeners, vec![sa("0.0.0.0:8080")]);
    assert_eq!(a.listeners, b.listeners);
}

/// Processes that come and go during scans never fail them.
#[test]
fn processes_exiting_mid_scan_are_skipped() {
    if !require_root() {
        return;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Each holder lives a moment, then is killed and reaped.
                if let Ok(h) = spawn_holder(None, None, &[]) {
                    drop(h);
                    n += 1;
                }
            }
            n
        })
    };
    let mut vanished = 0;
    for _ in 0..30 {
        let idx = ProcIndex::scan("/proc").expect("a scan never fails because processes exit");
        vanished += idx.vanished;
        let owners = resolve(&idx, &pod_of_cgroup);
        assert!(!owners.is_empty());
        let host = idx.host_netns.unwrap();
        snat_core::procindex::socket_owners(Path::new("/proc"), &idx.pids_in(host)).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let spawned = churn.join().unwrap();
    assert!(spawned > 0);
    eprintln!("{spawned} processes came and went; {vanished} vanished mid-scan");
}

#[test]
fn entering_a_non_network_namespace_is_a_clear_error() {
    let err = census_netns(Path::new("/proc/self/ns/uts"), CensusOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot enter network namespace"), "{msg}");
    let err = census_netns(Path::new("/nonexistent/ns"), CensusOptions::default()).unwrap_err();
    assert!(err.to_string().contains("cannot open network namespace file"), "{err}");
}

/// Without root, a scan that meets other users' processes fails and says what is needed.
#[test]
fn scan_without_privilege_says_root_is_needed() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !require_root() {
        return;
    }
    // Re-run this test binary as nobody (from a copy that nobody may execute), asking for
    // the helper below.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.path().join("census_node");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A process forked by a parallel test may hold the copy's write descriptor for a
    // moment (ETXTBSY): retry.
    let mut tries = 0;
    let out = loop {
        let r = std::process::Command::new(&exe)
            .args(["--exact", "unprivileged_scan_helper", "--ignored", "--nocapture"])
            .env("SNAT_UNPRIVILEGED_SCAN", "1")
            .uid(65534)
            .gid(65534)
            .output();
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("scan error: cannot read /proc/"), "{text}");
    assert!(text.contains("needs root (or CAP_SYS_PTRACE)"), "{text}");
}

#[test]
#[ignore = "helper: run as nobody by scan_without_privilege_says_root_is_needed"]
fn unprivileged_scan_helper() {
    assert_eq!(std::env::var("SNAT_UNPRIVILEGED_SCAN").as_deref(), Ok("1"));
    let err = ProcIndex::scan("/proc").expect_err("a scan as nobody must fail");
    println!("scan error: {err}");
}

/// Runs `f` on a new thread that has entered the network namespace at `ns`.
fn on_thread_in<T: Send + 'static>(
    ns: std::path::PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    use std::os::fd::AsRawFd;
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        // SAFETY: setns with a valid network namespace fd changes this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {}: {}", ns.display(), std::io::Error::last_os_error());
        f()
    })
}

/// A TCP connection to `to` from a socket carrying `mark` (SO_MARK), as a mesh proxy makes
/// its upstream connections so that its own redirect rule lets them through.
fn connect_marked(to: std::net::SocketAddrV4, mark: u32) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns until it is handed to
    // the TcpStream; the pointers are to locals of the sizes given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let m = mark as libc::c_int;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&m as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "SO_MARK: {}", std::io::Error::last_os_error());
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect {to}: {}", std::io::Error::last_os_error());
        stream
    }
}

/// A service-mesh sidecar (Istio, Linkerd): an nft rule in the pod's namespace redirects
/// the app's connections to port 443 to a local proxy on :15001, which connects upstream
/// itself with a mark the rule lets through. The app's sockets still show the public
/// destination, but only the proxy's use SNAT ports: the destination counts N, not 2N,
/// and the app's N are counted as redirected locally.
#[test]
fn a_sidecar_redirect_is_counted_once() {
    use std::sync::mpsc;
    if !require_root() {
        return;
    }
    const N: usize = 12;
    const MARK: u32 = 0x539;
    let w = world();
    let p = pod(&w, Layout::Systemd, Qos::Burstable, 77);
    p.ns.exec("nft", &["add table ip snat_mesh"]).unwrap();
    p.ns.exec(
        "nft",
        &["add chain ip snat_mesh out { type nat hook output priority -100 ; }"],
    )
    .unwrap();
    p.ns.exec(
        "nft",
        &[&format!(
            "add rule ip snat_mesh out tcp dport 443 meta mark != {MARK} redirect to :15001"
        )],
    )
    .unwrap();
    let upstream: std::net::SocketAddrV4 = "198.18.0.1:443".parse().unwrap();

    // The proxy: accepts N, connects upstream once per accepted connection, reports, and
    // holds everything until told to stop.
    let (ready_tx, ready_rx) = mpsc::channel::<&'static str>();
    let (stop_proxy, proxy_stop) = mpsc::channel::<()>();
    let (stop_app, app_stop) = mpsc::channel::<()>();
    let (listening_tx, listening_rx) = mpsc::channel::<()>();
    let ready = ready_tx.clone();
    let proxy = on_thread_in(p.ns.path(), move || {
        let l = std::net::TcpListener::bind("0.0.0.0:15001").unwrap();
        listening_tx.send(()).unwrap();
        let mut held = Vec::new();
        for _ in 0..N {
            let (c, _) = l.accept().unwrap();
            held.push((c, connect_marked(upstream, MARK)));
        }
        ready.send("proxy").unwrap();
        let _ = proxy_stop.recv();
    });
    listening_rx.recv().unwrap();
    let app = on_thread_in(p.ns.path(), move || {
        let held: Vec<_> = (0..N)
            .map(|_| std::net::TcpStream::connect(upstream).unwrap())
            .collect();
        ready_tx.send("app").unwrap();
        let _ = app_stop.recv();
        drop(held);
    });
    for _ in 0..2 {
        ready_rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
    }

    let opts = CensusOptions {
        states: StateSet::of(&[TcpState::Established, TcpState::SynSent]),
        method: MethodChoice::Auto,
        ..CensusOptions::default()
    };
    let c = census_netns(&p.ns.path(), opts).unwrap();
    // Both sides really are there: N app sockets to the destination, N accepted by the
    // proxy, N upstream.
    let to_dest = c.sockets.iter().filter(|s| s.remote == sa("198.18.0.1:443")).count();
    assert_eq!(to_dest, 2 * N, "{:#?}", c.sockets);
    let d = c.destinations(is_public);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (SocketAddr::new(d[0].ip, d[0].port), d[0].counts.established),
        (sa("198.18.0.1:443"), N as u64)
    );
    assert_eq!(c.redirected_locally(is_public).established, N as u64);

    stop_proxy.send(()).unwrap();
    stop_app.send(()).unwrap();
    proxy.join().unwrap();
    app.join().unwrap();
}

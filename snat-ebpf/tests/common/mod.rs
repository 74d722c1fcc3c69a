//! Small, self-contained helpers for the privileged tests: the root/CI skip rule, network
//! namespaces joined by veth pairs (each a guard that removes itself on drop, also when a
//! test fails), threads running inside a namespace, a server process in a namespace, and
//! a cgroup for that server.
//!
//! Names are unique per process and call (pid + counter), so tests run in parallel.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use snat_core::model::TcpEvent;
use snat_ebpf::{TraceResult, Tracer};

/// True when the test may run. Not root and no `CI`: prints `skipped: needs root` and
/// returns false. Not root with `CI` set: fails.
pub fn need_root() -> bool {
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

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique name: prefix + pid + counter (fits interface names, 15 bytes).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{n}", std::process::id() % 1_000_000)
}

/// Run a command; panic with its output if it fails.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        let name = unique("snt");
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The namespace's inode, as the kernel program reports it.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(self.path()).expect("stat netns").ino()
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v);
    }

    /// Set a sysctl inside the namespace (net.* sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Run `f` on a new thread named `thread_name` that has entered this namespace; the
    /// thread's comm is its name and its pid (tgid) is this process's.
    pub fn in_thread<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                let file = std::fs::File::open(&path).expect("open netns");
                // SAFETY: setns on a valid fd; it only changes this thread's namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .expect("spawn thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair joining two namespaces, with one address on each end (IPv4 /24 and IPv6
/// /64 on both, `nodad` so IPv6 is usable at once). Deleted with the namespaces; the
/// guard removes it in case a namespace outlives it.
#[derive(Debug)]
pub struct Veth {
    pub a_name: String,
    pub a_ns: String,
}

pub const A4: &str = "198.18.0.1";
pub const B4: &str = "198.18.0.2";
pub const A6: &str = "fd00:5a7::1";
pub const B6: &str = "fd00:5a7::2";

impl Veth {
    pub fn join(a: &Netns, b: &Netns) -> Veth {
        let an = unique("va");
        let bn = unique("vb");
        run(&["ip", "link", "add", &an, "type", "veth", "peer", "name", &bn]);
        let guard = Veth {
            a_name: an.clone(),
            a_ns: a.name.clone(),
        };
        run(&["ip", "link", "set", &an, "netns", &a.name]);
        run(&["ip", "link", "set", &bn, "netns", &b.name]);
        for (ns, dev, v4, v6) in [(a, &an, A4, A6), (b, &bn, B4, B6)] {
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.exec(&["ip", "-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.exec(&["ip", "link", "set", dev, "up"]);
        }
        guard
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.a_ns, "ip", "link", "del", &self.a_name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Where the cgroup v2 hierarchy is mounted (the library's own reading of mountinfo).
pub fn cgroup2_mount() -> Option<PathBuf> {
    snat_ebpf::seed::cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The cgroup id of process `pid` (its cgroup v2 directory's inode, which is what
/// `bpf_get_current_cgroup_id` returns); `None` without a cgroup v2 hierarchy.
pub fn cgroup_id_of(pid: u32) -> Option<u64> {
    let root = cgroup2_mount()?;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cg.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(std::fs::metadata(root.join(path.trim_start_matches('/'))).ok()?.ino())
}

/// A cgroup v2 directory made for one test (unique name), removed on drop once the
/// processes in it are gone.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// Its cgroup id.
    pub id: u64,
}

impl Cgroup {
    /// `None` without a cgroup v2 hierarchy, or when it cannot be written.
    pub fn new() -> Option<Cgroup> {
        let path = cgroup2_mount()?.join(unique("snatcg"));
        std::fs::create_dir(&path).ok()?;
        // Made first, so that a failure below still removes the directory.
        let mut cg = Cgroup { path, id: 0 };
        cg.id = std::fs::metadata(&cg.path).ok()?.ino();
        Some(cg)
    }

    /// Its `cgroup.procs` file: a process that writes its pid there moves in.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A process that just exited may keep the cgroup busy for a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !Path::new(&self.path).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove test cgroup {}", self.path.display());
    }
}

/// A TCP server process (`python3`) in a namespace: accepts connections, reads each to
/// EOF, closes it. It runs in a cgroup of its own when the host has cgroup v2. Killed on
/// drop.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// The server's pid (reported by the process itself).
    pub pid: u32,
    /// The port it listens on.
    pub port: u16,
    /// Its command name.
    pub comm: String,
    /// Its cgroup id, when it runs in a cgroup of its own (see [`Cgroup`]).
    pub cgroup_id: Option<u64>,
    // Dropped after the child is killed and reaped (Drop for Server runs first).
    cgroup: Option<Cgroup>,
}

const SERVER_PY: &str = r#"
import os, socket, sys, threading
# Wait until the test has moved this process into its cgroup (`ip netns exec` mounts a
# /sys of its own, without cgroupfs): the tracer records a listener's owner at listen().
sys.stdin.readline()
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 0))
s.listen(1024)
print("READY", os.getpid(), s.getsockname()[1], flush=True)
def serve(c):
    while c.recv(4096):
        pass
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

impl Server {
    pub fn start(ns: &Netns, addr: IpAddr) -> Server {
        let python = if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let cgroup = Cgroup::new();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, python, "-c", SERVER_PY, &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        // `ip netns exec` execs the server: the child's pid is the server's.
        if let Some(cg) = &cgroup {
            std::fs::write(cg.procs(), child.id().to_string()).expect("move the server into its cgroup");
        }
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"go\n")
            .expect("start the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("server output");
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.first(), Some(&"READY"), "server said {line:?}");
        let pid: u32 = parts[1].parse().unwrap();
        let port: u16 = parts[2].parse().unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim()
            .to_string();
        let cgroup_id = cgroup.as_ref().map(|c| c.id);
        if let Some(id) = cgroup_id {
            assert_eq!(cgroup_id_of(pid), Some(id), "the server is not in its cgroup");
        }
        Server {
            child,
            pid,
            port,
            comm,
            cgroup_id,
            cgroup,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a firewall tool usable inside a namespace is installed: `nft`, else `iptables`.
pub fn firewall_tool() -> Option<&'static str> {
    ["nft", "iptables"].into_iter().find(|t| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Drop incoming TCP SYNs to `port` inside `ns` only.
pub fn drop_syns(ns: &Netns, port: u16) {
    let p = port.to_string();
    match firewall_tool() {
        Some("nft") => {
            ns.exec(&["nft", "add", "table", "inet", "snat_test"]);
            ns.exec(&[
                "nft",
                "add chain inet snat_test input { type filter hook input priority 0 ; }",
            ]);
            ns.exec(&[
                "nft",
                "add",
                "rule",
                "inet",
                "snat_test",
                "input",
                "tcp",
                "dport",
                &p,
                "drop",
            ]);
        }
        Some(_) => {
            ns.exec(&["iptables", "-A", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"]);
            ns.exec(&["ip6tables", "-A", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"]);
        }
        None => panic!("neither nft nor iptables is installed: apt-get install -y nftables"),
    }
}

/// Drain events (in stream mode) until the kernel has counted `expected` events, or its
/// count has not moved for 5 s, then detach and read the rest.
pub fn collect(mut tracer: Tracer, expected: u64) -> (Vec<TcpEvent>, TraceResult) {
    let mut events = Vec::new();
    let mut last = (0, Instant::now());
    loop {
        tracer.wait(Duration::from_millis(50)).unwrap();
        tracer.drain(&mut |e| events.push(e));
        let s = tracer.stats().unwrap();
        if s.counted >= expected || last.1.elapsed() > Duration::from_secs(5) {
            break;
        }
        if s.counted != last.0 {
            last = (s.counted, Instant::now());
        }
    }
    let res = tracer.finish(|e| events.push(e)).unwrap();
    (events, res)
}

/// Wait (up to `max`) until no TCP socket of `ns` is still on its way to CLOSE: every
/// socket is gone, in TIME_WAIT (whose CLOSE the kernel has reported) or listening. A
/// connection's last state change can trail the threads that made it (an orphaned socket
/// in FIN_WAIT waits for its peer's FIN), so a test that expects every close must wait for
/// the sockets, not for the threads. Panics naming the states still seen.
pub fn wait_until_closed(ns: &Netns, max: Duration) {
    use snat_core::census::{CensusOptions, StateSet, census_netns};
    use snat_core::model::TcpState::*;
    let opts = CensusOptions {
        states: StateSet::of(&[
            Established,
            SynSent,
            SynRecv,
            FinWait1,
            FinWait2,
            CloseWait,
            LastAck,
            Closing,
        ]),
        ..CensusOptions::default()
    };
    let t0 = Instant::now();
    loop {
        let c = census_netns(Path::new(&ns.path()), opts).expect("census of the test namespace");
        if c.sockets.is_empty() {
            return;
        }
        if t0.elapsed() > max {
            let mut states: Vec<String> = c.sockets.iter().map(|s| format!("{:?}", s.state)).collect();
            states.sort();
            states.dedup();
            panic!(
                "{} sockets still not closed after {max:?}, in states {states:?}",
                c.sockets.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An address literal.
pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Clear the capabilities in `mask` (bit `n` = capability `n`) from the calling thread's
/// effective set (capabilities are per thread in Linux); the permitted set is kept.
pub fn clear_effective_caps(mask: u64) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a valid v3 header and two data structs, as the ABI wants.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()), 0);
        data[0].effective &= !(mask as u32);
        data[1].effective &= !((mask >> 32) as u32);
        assert_eq!(libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()), 0);
    }
}

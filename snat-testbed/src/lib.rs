//! snat-testbed: a simulated Kubernetes node for snat's privileged tests, demos and
//! benchmarks.
//!
//! A "pod" is a named network namespace ([`Netns`]) joined by a veth pair ([`Veth`]) to a
//! "world" namespace that holds the destinations, plus a cgroup v2 directory named exactly
//! as kubelet names it ([`PodCgroup`], systemd or cgroupfs driver) holding the pod's
//! processes. [`spawn_holder`] forks a process that enters a namespace and a cgroup, opens
//! a known number of connections (or listens) and holds them until it is killed. Every
//! resource is a guard that removes what it created on `Drop`, even when a test fails, and
//! every name includes the pid and a counter, so tests run in parallel. [`require_root`]
//! implements the project's rule for privileged tests: skip with `skipped: needs root`
//! when not root, unless `CI` is set, where a missing privilege is a failure.
//!
//! Traffic only ever goes to addresses inside namespaces the test bed created.
#![deny(missing_docs)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where the cgroup v2 hierarchy is mounted on this machine and CI's (hybrid layout: v1
/// controllers elsewhere under /sys/fs/cgroup).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// Whether a privileged test may run. Root: `true`. Not root: prints `skipped: needs
/// root` and returns `false`, unless the environment variable `CI` is set, in which case
/// it panics (privileged tests must run in CI).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test needs root and CI is set: run the test suite as root");
    }
    println!("skipped: needs root");
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid in base 36><counter in base 36>`.
/// With a prefix of at most 4 characters it fits a network interface name (15 bytes).
pub fn unique(prefix: &str) -> String {
    fn b36(mut n: u64) -> String {
        let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut s = Vec::new();
        loop {
            s.push(digits[(n % 36) as usize]);
            n /= 36;
            if n == 0 {
                break;
            }
        }
        s.reverse();
        String::from_utf8(s).unwrap_or_default()
    }
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}x{}", b36(u64::from(std::process::id())), b36(u64::from(n)))
}

/// Run a command, turning a non-zero exit into an error that shows the command and its
/// stderr.
pub fn run(program: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom")
        && f.read_exact(&mut b).is_ok()
    {
        return b;
    }
    // Fallback: time, pid and counter (unique enough for test names).
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = t ^ (u128::from(std::process::id()) << 64) ^ u128::from(COUNTER.fetch_add(1, Ordering::SeqCst));
    for (i, x) in b.iter_mut().enumerate() {
        *x = (seed >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
    }
    b
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ----- network namespaces -------------------------------------------------------------

/// A named network namespace (`ip netns add`), deleted on drop. Its loopback is up.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `<prefix><unique>` and bring its loopback up.
    pub fn new(prefix: &str) -> io::Result<Netns> {
        Netns::named(&unique(prefix))
    }

    /// Create the namespace `name` exactly (it must not exist) and bring its loopback up.
    pub fn named(name: &str) -> io::Result<Netns> {
        run("ip", &["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// The namespace's inode (what `/proc/PID/ns/net` of its processes names).
    pub fn inode(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(std::fs::metadata(self.path())?.ino())
    }

    /// Run `ip -n NAME <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Run a command inside the namespace (`ip netns exec NAME ...`).
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let mut a = vec!["netns", "exec", self.name.as_str(), program];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    /// Drop incoming TCP packets to `port` inside this namespace only (`nft`, else
    /// `iptables`): connects to it wait in SYN_SENT until they time out.
    pub fn drop_tcp_to(&self, port: u16) -> io::Result<()> {
        let p = port.to_string();
        let table = "add table inet snat_testbed";
        let chain = "add chain inet snat_testbed input { type filter hook input priority 0 ; }";
        let rule = format!("add rule inet snat_testbed input tcp dport {p} drop");
        if self.exec("nft", &[table]).is_ok() {
            self.exec("nft", &[chain])?;
            return self.exec("nft", &[&rule]).map(drop);
        }
        self.exec("iptables", &["-A", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"])?;
        self.exec("ip6tables", &["-A", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP"])
            .map(drop)
    }

    /// Add an address (CIDR) to the loopback device, e.g. a destination in a world. IPv6
    /// addresses skip duplicate address detection, so they can be bound at once.
    pub fn add_lo_addr(&self, cidr: &str) -> io::Result<()> {
        if cidr.contains(':') {
            self.ip(&["addr", "add", cidr, "dev", "lo", "nodad"]).map(drop)
        } else {
            self.ip(&["addr", "add", cidr, "dev", "lo"]).map(drop)
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair between two namespaces, with an address at each end; removed on drop (and
/// in any case when either namespace goes).
#[derive(Debug)]
pub struct Veth {
    ns_a: String,
    dev_a: String,
    dev_b: String,
}

impl Veth {
    /// Join `a` (address `a_cidr`, e.g. `10.200.1.2/24`) and `b` (`b_cidr`), both ends up.
    pub fn new(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) -> io::Result<Veth> {
        let dev_a = unique("va");
        let dev_b = unique("vb");
        run(
            "ip",
            &[
                "link",
                "add",
                "name",
                &dev_a,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                &dev_b,
                "netns",
                b.name(),
            ],
        )?;
        let v = Veth {
            ns_a: a.name().to_string(),
            dev_a: dev_a.clone(),
            dev_b: dev_b.clone(),
        };
        a.ip(&["addr", "add", a_cidr, "dev", &dev_a])?;
        b.ip(&["addr", "add", b_cidr, "dev", &dev_b])?;
        a.ip(&["link", "set", &dev_a, "up"])?;
        b.ip(&["link", "set", &dev_b, "up"])?;
        Ok(v)
    }

    /// The device name in the first namespace.
    pub fn dev_a(&self) -> &str {
        &self.dev_a
    }

    /// The device name in the second namespace.
    pub fn dev_b(&self) -> &str {
        &self.dev_b
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = run("ip", &["-n", &self.ns_a, "link", "del", &self.dev_a]);
    }
}

// ----- cgroups ------------------------------------------------------------------------

/// A cgroup v2 directory under [`CGROUP2_ROOT`]. On drop, its member processes are
/// killed and the directories this guard created are removed, deepest first, then any
/// empty `kubepods*` parents (shared parents still in use by another test stay).
#[derive(Debug)]
pub struct Cgroup {
    rel: String,
    created: Vec<PathBuf>,
}

impl Cgroup {
    /// Create `rel` (e.g. `/kubepods.slice/x.slice/y.scope`) and any missing parents.
    pub fn create(rel: &str) -> io::Result<Cgroup> {
        let rel = format!("/{}", rel.trim_matches('/'));
        let mut created = Vec::new();
        let mut cur = PathBuf::from(CGROUP2_ROOT);
        for part in rel.trim_start_matches('/').split('/') {
            cur.push(part);
            // Another test may remove a shared parent between our mkdirs: retry.
            let mut tries = 0;
            loop {
                match std::fs::create_dir(&cur) {
                    Ok(()) => {
                        created.push(cur.clone());
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 20 => {
                        tries += 1;
                        let parent = cur.parent().map(Path::to_path_buf).unwrap_or_default();
                        let _ = std::fs::create_dir_all(&parent);
                    }
                    Err(e) => {
                        let cg = Cgroup { rel, created };
                        drop(cg);
                        return Err(io::Error::new(e.kind(), format!("mkdir {}: {e}", cur.display())));
                    }
                }
            }
        }
        Ok(Cgroup { rel, created })
    }

    /// The path as `/proc/PID/cgroup` shows it (`0::<this>`).
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// The directory.
    pub fn dir(&self) -> PathBuf {
        Path::new(CGROUP2_ROOT).join(self.rel.trim_start_matches('/'))
    }

    /// The processes in this cgroup (not its children).
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir().join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Move a process into this cgroup.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.dir().join("cgroup.procs"), pid.to_string())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.procs();
            if procs.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in procs {
                // SAFETY: kill(2) on a pid we put there.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for dir in self.created.iter().rev() {
            // Busy (children of another test) or already gone: leave it.
            let _ = std::fs::remove_dir(dir);
        }
        // Shared `kubepods*` parents another guard created but could not remove while we
        // used them: remove them once empty (a parent still in use refuses, harmlessly).
        let mut cur = self.dir();
        let name_of = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(str::to_string);
        while let Some(parent) = cur.parent().map(Path::to_path_buf) {
            // Ours, removed above (the cgroupfs driver's `pod<uid>`): go on up.
            if self.created.contains(&parent) && !parent.exists() {
                cur = parent;
                continue;
            }
            // `kubepods*` (systemd), and the cgroupfs driver's `kubepods/burstable` and
            // `kubepods/besteffort`.
            let is_kubepods = name_of(&parent).is_some_and(|n| {
                n.starts_with("kubepods")
                    || matches!(n.as_str(), "burstable" | "besteffort")
                        && parent
                            .parent()
                            .and_then(&name_of)
                            .is_some_and(|g| g.starts_with("kubepods"))
            });
            if !is_kubepods {
                break;
            }
            match std::fs::remove_dir(&parent) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => break,
                _ => {}
            }
            cur = parent;
        }
    }
}

/// The cgroup driver kubelet uses, which decides the names of pod cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<64hex>.scope`.
    Systemd,
    /// `kubepods/burstable/pod<uid>/<64hex>`.
    Cgroupfs,
}

/// A pod's QoS class, which decides the middle of its cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// No QoS level in the path.
    Guaranteed,
    /// `burstable`.
    Burstable,
    /// `besteffort`.
    BestEffort,
}

/// A pod's container cgroup, named as kubelet and containerd name it, with a fresh random
/// pod UID and container id.
#[derive(Debug)]
pub struct PodCgroup {
    /// Pod UID with dashes (`8-4-4-4-12` hex).
    pub uid: String,
    /// Container id (64 hex digits).
    pub container_id: String,
    /// The container's cgroup (processes go here).
    pub cgroup: Cgroup,
}

impl PodCgroup {
    /// Create the container cgroup of a new pod.
    pub fn new(layout: Layout, qos: Qos) -> io::Result<PodCgroup> {
        let r = random_bytes::<16>();
        let h = hex(&r);
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        let container_id = hex(&random_bytes::<32>());
        let level = match qos {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        };
        let rel = match layout {
            Layout::Systemd => {
                let uid_ = uid.replace('-', "_");
                match level {
                    Some(l) => format!(
                        "/kubepods.slice/kubepods-{l}.slice/kubepods-{l}-pod{uid_}.slice/cri-containerd-{container_id}.scope"
                    ),
                    None => format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{container_id}.scope"),
                }
            }
            Layout::Cgroupfs => match level {
                Some(l) => format!("/kubepods/{l}/pod{uid}/{container_id}"),
                None => format!("/kubepods/pod{uid}/{container_id}"),
            },
        };
        Ok(PodCgroup {
            uid,
            container_id,
            cgroup: Cgroup::create(&rel)?,
        })
    }
}

// ----- demo-node instances and their leftovers -----------------------------------------

/// Where each running `demo-node` (the simulated node of `scripts/demo`) keeps the record of
/// what it created, one file per instance named by its pid ([`DemoRecord`]).
pub const DEMO_RECORD_DIR: &str = "/run/snat-demo";

/// How the names of `demo-node`'s network namespaces start: `snatdemo-<pid>-<what>`.
pub const DEMO_NETNS_PREFIX: &str = "snatdemo-";

/// The process name (`/proc/PID/comm`) of a `demo-node`.
const DEMO_COMM: &str = "demo-node";

/// When process `pid` started (clock ticks after boot, field 22 of `/proc/PID/stat`), if it
/// runs.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What one `demo-node` instance created, recorded as it creates it in
/// `DEMO_RECORD_DIR/<pid>`, so that the next instance can remove it all should this one die
/// without cleaning up (SIGKILL): its network namespaces carry its pid in their names
/// ([`DemoRecord::netns_name`]); its pod cgroups, named as kubelet names them, are listed in
/// the file, with the directories each one created. The file also holds the start time of
/// the process, so that a pid used again by another process is not taken for this
/// instance. Dropped, the record's file is removed (drop it after everything it lists).
#[derive(Debug)]
pub struct DemoRecord {
    pid: u32,
    file: PathBuf,
}

impl DemoRecord {
    /// Start the record of this process (replacing the file of a dead process of the same
    /// pid).
    pub fn create() -> io::Result<DemoRecord> {
        let pid = std::process::id();
        let start = process_start(pid).ok_or_else(|| io::Error::other("cannot read /proc/self/stat"))?;
        std::fs::create_dir_all(DEMO_RECORD_DIR)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {DEMO_RECORD_DIR}: {e}")))?;
        let file = Path::new(DEMO_RECORD_DIR).join(pid.to_string());
        std::fs::write(&file, format!("start {start}\n"))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", file.display())))?;
        Ok(DemoRecord { pid, file })
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The name of this instance's network namespace `what`: `snatdemo-<pid>-<what>`.
    pub fn netns_name(&self, what: &str) -> String {
        format!("{DEMO_NETNS_PREFIX}{}-{what}", self.pid)
    }

    /// Record the cgroup `cg` (just created): its path and the directories it created.
    pub fn add_cgroup(&self, cg: &Cgroup) -> io::Result<()> {
        use std::io::Write as _;
        let mut line = format!("cgroup {}", cg.rel);
        for d in &cg.created {
            line.push(' ');
            line.push_str(&d.to_string_lossy());
        }
        line.push('\n');
        std::fs::OpenOptions::new()
            .append(true)
            .open(&self.file)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", self.file.display())))
    }
}

impl Drop for DemoRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A `demo-node` instance, as its record and namespace names tell.
#[derive(Debug, Default)]
struct DemoInstance {
    /// The start time its record gives, when it has one.
    start: Option<u64>,
    /// Its cgroups, as its record gives them.
    cgroups: Vec<Cgroup>,
    /// Its network namespaces (by name).
    netns: Vec<String>,
    /// Whether it has a record file.
    record: bool,
}

/// Whether the `demo-node` instance `pid` runs: a process `pid` runs, and it is the one that
/// wrote the record (same start time) or, without a record, it is a `demo-node`.
fn demo_alive(pid: u32, recorded_start: Option<u64>) -> bool {
    match (process_start(pid), recorded_start) {
        (None, _) => false,
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == DEMO_COMM),
    }
}

/// Remove what `demo-node` instances that no longer run (killed by SIGKILL, say) left
/// behind: the processes in their network namespaces and cgroups (killed), their network
/// namespaces, their pod cgroups (and `kubepods*` parents left empty) and their records.
/// The instances that still run, this process included, are left alone (see [`DemoRecord`]
/// for how one is told from a dead one). Returns one line per thing removed, to show.
pub fn remove_dead_demo_nodes() -> Vec<String> {
    let me = std::process::id();
    let mut instances: std::collections::BTreeMap<u32, DemoInstance> = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(DEMO_RECORD_DIR).into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let inst = instances.entry(pid).or_default();
        inst.record = true;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("start") => inst.start = words.next().and_then(|w| w.parse().ok()),
                Some("cgroup") => {
                    if let Some(rel) = words.next() {
                        inst.cgroups.push(Cgroup {
                            rel: rel.to_string(),
                            created: words.map(PathBuf::from).collect(),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DEMO_NETNS_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        instances.entry(pid).or_default().netns.push(name);
    }
    let mut removed = Vec::new();
    for (pid, inst) in instances {
        if pid == me || demo_alive(pid, inst.start) {
            // Still running: its cgroup guards must not be dropped (that would kill them).
            std::mem::forget(inst.cgroups);
            continue;
        }
        // Its processes first: a namespace stays while a process is in it.
        for ns in &inst.netns {
            let pids = run("ip", &["netns", "pids", ns]).unwrap_or_default();
            for p in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill(2); the pid is a process inside the dead instance's namespace.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        for cg in inst.cgroups {
            let dir = cg.dir();
            let existed = dir.exists();
            // Its guard kills its processes and removes the directories it created.
            drop(cg);
            if existed && !dir.exists() {
                removed.push(format!("cgroup {} of dead demo-node {pid}", dir.display()));
            }
        }
        for ns in &inst.netns {
            if run("ip", &["netns", "del", ns]).is_ok() {
                removed.push(format!("network namespace {ns} of dead demo-node {pid}"));
            }
        }
        if inst.record {
            let file = Path::new(DEMO_RECORD_DIR).join(pid.to_string());
            if std::fs::remove_file(&file).is_ok() {
                removed.push(format!("record {} of dead demo-node {pid}", file.display()));
            }
        }
    }
    removed
}

// ----- processes holding connections ---------------------------------------------------

/// What a held process does with one address.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// Open `count` connections to the address and wait until each is ESTABLISHED.
    Connect {
        /// Destination.
        to: SocketAddr,
        /// How many connections.
        count: usize,
    },
    /// Start `count` non-blocking connects and do not wait (to an address that never
    /// answers, they stay in SYN_SENT).
    ConnectNoWait {
        /// Destination.
        to: SocketAddr,
        /// How many connections.
        count: usize,
    },
    /// Listen on the address with this backlog, never accepting (connections complete in
    /// the kernel up to the backlog).
    Listen {
        /// Address.
        on: SocketAddr,
        /// Backlog.
        backlog: i32,
    },
}

/// A forked process holding sockets; killed and reaped on drop.
#[derive(Debug)]
pub struct Holder {
    pid: u32,
}

impl Holder {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: our own child; kill then reap it.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
            libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
        }
    }
}

fn sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Child side of [`spawn_holder`]: only async-signal-safe system calls on data prepared
/// before `fork`. Returns the step that failed (as an exit code) or never returns.
///
/// # Safety
/// Must only run in a freshly forked child.
unsafe fn child(
    netns_fd: i32,
    cgroup_fd: i32,
    ready_fd: i32,
    steps: &[(u8, libc::sockaddr_storage, libc::socklen_t, i32, usize)],
) -> i32 {
    // SAFETY (whole body): raw system calls on valid descriptors and buffers.
    unsafe {
        // Report a failure: code, plan step and errno through the pipe, then exit.
        let fail = |code: u8, step: usize| -> i32 {
            let errno = *libc::__errno_location();
            let mut msg = [0u8; 8];
            msg[0] = b'E';
            msg[1] = code;
            msg[2..4].copy_from_slice(&(step as u16).to_ne_bytes());
            msg[4..8].copy_from_slice(&errno.to_ne_bytes());
            libc::write(ready_fd, msg.as_ptr().cast(), msg.len());
            i32::from(code)
        };
        // Hold nothing of the parent's but our three descriptors (other tests' files and
        // sockets must not live on in this process).
        let mut keep = [netns_fd, cgroup_fd, ready_fd];
        keep.sort_unstable();
        let mut lo: u32 = 3;
        for fd in keep {
            if fd >= 3 {
                let fd = fd as u32;
                if fd > lo {
                    libc::syscall(libc::SYS_close_range, lo, fd - 1, 0);
                }
                lo = lo.max(fd + 1);
            }
        }
        libc::syscall(libc::SYS_close_range, lo, u32::MAX, 0);
        if netns_fd >= 0 && libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
            return fail(10, 0);
        }
        if cgroup_fd >= 0 && libc::write(cgroup_fd, b"0".as_ptr().cast(), 1) != 1 {
            return fail(11, 0);
        }
        for (step, (kind, ss, len, family, count)) in steps.iter().enumerate() {
            let addr = (ss as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
            match kind {
                0 | 1 => {
                    for _ in 0..*count {
                        let flags = if *kind == 1 { libc::SOCK_NONBLOCK } else { 0 };
                        let fd = libc::socket(*family, libc::SOCK_STREAM | flags, 0);
                        if fd < 0 {
                            return fail(12, step);
                        }
                        let rc = libc::connect(fd, addr, *len);
                        if rc != 0 && *kind == 0 {
                            return fail(13, step);
                        }
                    }
                }
                _ => {
                    let fd = libc::socket(*family, libc::SOCK_STREAM, 0);
                    if fd < 0 {
                        return fail(14, step);
                    }
                    let one: libc::c_int = 1;
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                    if libc::bind(fd, addr, *len) != 0 {
                        return fail(15, step);
                    }
                    if libc::listen(fd, *count as i32) != 0 {
                        return fail(16, step);
                    }
                }
            }
        }
        libc::write(ready_fd, b"R".as_ptr().cast(), 1);
        loop {
            libc::pause();
        }
    }
}

/// Fork a process that enters `netns` (when given) and the cgroup `cgroup` (when given),
/// then carries out `plan` in order and holds every socket until it is killed. Returns
/// once the plan is done (every waited-for connection is ESTABLISHED, every listener
/// listens), or an error naming the failed step.
pub fn spawn_holder(netns: Option<&Path>, cgroup: Option<&Cgroup>, plan: &[Plan]) -> io::Result<Holder> {
    let netns_file = netns.map(std::fs::File::open).transpose()?;
    let cgroup_file = cgroup
        .map(|c| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.dir().join("cgroup.procs"))
        })
        .transpose()?;
    let steps: Vec<_> = plan
        .iter()
        .map(|p| {
            let (kind, a, n) = match *p {
                Plan::Connect { to, count } => (0u8, to, count),
                Plan::ConnectNoWait { to, count } => (1, to, count),
                Plan::Listen { on, backlog } => (2, on, backlog.max(1) as usize),
            };
            let (ss, len) = sockaddr(&a);
            let family = match a.ip() {
                IpAddr::V4(_) => libc::AF_INET,
                IpAddr::V6(_) => libc::AF_INET6,
            };
            (kind, ss, len, family, n)
        })
        .collect();
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2, owned here.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let nfd = netns_file.as_ref().map_or(-1, |f| f.as_raw_fd());
    let cfd = cgroup_file.as_ref().map_or(-1, |f| f.as_raw_fd());
    // SAFETY: the child only makes async-signal-safe system calls, then _exit or pause.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the forked child.
        unsafe {
            let code = child(nfd, cfd, wr.as_raw_fd(), &steps);
            libc::_exit(code);
        }
    }
    drop(wr);
    let holder = Holder { pid: pid as u32 };
    let mut b = [0u8; 8];
    // SAFETY: reading into a valid buffer. EOF means the child exited.
    let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
    if n == 1 && b[0] == b'R' {
        return Ok(holder);
    }
    let mut status = 0;
    // SAFETY: reap our child to learn why it exited.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    std::mem::forget(holder);
    if n == 8 && b[0] == b'E' {
        let what = match b[1] {
            10 => "setns",
            11 => "joining the cgroup",
            12 | 14 => "socket()",
            13 => "connect()",
            15 => "bind()",
            16 => "listen()",
            _ => "unknown step",
        };
        let step = usize::from(u16::from_ne_bytes([b[2], b[3]]));
        let errno = i32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
        let detail = plan.get(step).map(|p| format!(" for {p:?}")).unwrap_or_default();
        return Err(io::Error::other(format!(
            "holder process failed at {what}{detail}: {}",
            io::Error::from_raw_os_error(errno)
        )));
    }
    Err(io::Error::other(format!(
        "holder process exited early (status {status})"
    )))
}

/// Spawn a command (e.g. `curl`, or `true` for processes that come and go) inside
/// `netns` and `cgroup` (each optional): the child enters both before `exec`, so it never
/// runs outside them. The caller owns the child (kill and wait for it).
pub fn spawn_command(
    netns: Option<&Path>,
    cgroup: Option<&Cgroup>,
    program: &str,
    args: &[&str],
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let netns_file = netns.map(std::fs::File::open).transpose()?;
    let cgroup_file = cgroup
        .map(|c| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.dir().join("cgroup.procs"))
        })
        .transpose()?;
    let nfd = netns_file.as_ref().map_or(-1, |f| f.as_raw_fd());
    let cfd = cgroup_file.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: the closure only makes async-signal-safe system calls on descriptors that
    // stay open until spawn returns (they are close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if nfd >= 0 && libc::setns(nfd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if cfd >= 0 && libc::write(cfd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(netns_file);
    drop(cgroup_file);
    child
}

/// Wait until `f` returns true, checking every 20 ms, for at most `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_fit_interfaces() {
        let a = unique("va");
        let b = unique("va");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
    }

    #[test]
    fn pod_cgroup_names_follow_kubelet() {
        if !require_root() {
            return;
        }
        let p = PodCgroup::new(Layout::Systemd, Qos::Burstable).unwrap();
        let uid_ = p.uid.replace('-', "_");
        assert_eq!(
            p.cgroup.rel(),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{}.scope",
                p.container_id
            )
        );
        let ns = Netns::new("tb").unwrap();
        let h = spawn_holder(Some(&ns.path()), Some(&p.cgroup), &[]).unwrap();
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", h.pid())).unwrap();
        assert!(cg.contains(&format!("0::{}", p.cgroup.rel())), "{cg}");
        let link = std::fs::read_link(format!("/proc/{}/ns/net", h.pid())).unwrap();
        assert_eq!(link.to_string_lossy(), format!("net:[{}]", ns.inode().unwrap()));
        let mut c = spawn_command(Some(&ns.path()), Some(&p.cgroup), "sleep", &["30"]).unwrap();
        let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", c.id())).unwrap();
        assert!(cg.contains(&format!("0::{}", p.cgroup.rel())), "{cg}");
        let link = std::fs::read_link(format!("/proc/{}/ns/net", c.id())).unwrap();
        assert_eq!(link.to_string_lossy(), format!("net:[{}]", ns.inode().unwrap()));
        let dir = p.cgroup.dir();
        drop(p);
        assert!(!dir.exists(), "the guard killed its members and removed the cgroup");
        let _ = c.wait();
        let f = PodCgroup::new(Layout::Cgroupfs, Qos::Guaranteed).unwrap();
        assert_eq!(f.cgroup.rel(), format!("/kubepods/pod{}/{}", f.uid, f.container_id));
        // The cgroupfs driver's QoS level: its `kubepods/burstable` parent goes with the
        // last pod in it, also when another guard created it (the first one out cannot
        // remove it while the second still uses it).
        let b1 = PodCgroup::new(Layout::Cgroupfs, Qos::Burstable).unwrap();
        let b2 = PodCgroup::new(Layout::Cgroupfs, Qos::Burstable).unwrap();
        let qos_dir = b2.cgroup.dir().parent().unwrap().parent().unwrap().to_path_buf();
        assert!(qos_dir.ends_with("kubepods/burstable"), "{}", qos_dir.display());
        let pods_in = |d: &Path| {
            std::fs::read_dir(d)
                .map(|rd| rd.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0)
        };
        let ours_only = pods_in(&qos_dir) == 2;
        drop(b1);
        drop(b2);
        if ours_only {
            assert!(!qos_dir.exists(), "{} left behind", qos_dir.display());
        }
    }
}

//! Owners of sockets older than the trace.
//!
//! The kernel program learns a socket's owner only when it sees `connect()` (SYN_SENT) or
//! `listen()` (LISTEN). Without help, accepts on listeners created before the trace, and
//! closes and failures of connections opened before it, would have no owner (pid 0).
//!
//! At attach time (after the program is attached, so nothing created meanwhile is missed)
//! [`seed`] takes a snapshot of this host's TCP sockets, one census per network namespace
//! ([`snat_core::census::census_netns`]), and finds the process holding each one from
//! `/proc/PID/fd` ([`snat_core::procindex::socket_owners`]):
//!
//! - every listening socket's owner goes into the kernel's `listeners` map, keyed like the
//!   program's own entries by (netns, port), without overwriting an entry the program made
//!   meanwhile; accepts on it then carry that owner, in the kernel's counters and filters
//!   too (a pid filter matches them);
//! - the kernel's socket table is keyed by socket address, which userspace cannot know, so
//!   connections are kept here instead, by (netns, local, remote): [`PreExisting::fill`]
//!   gives a close or failed connect the program reported without owner the owner of the
//!   connection the snapshot found with that tuple (stream mode only: the kernel's
//!   aggregated rows of such closes stay without direction).
//!
//! The owner is the process (lowest pid when several share the socket), with its main
//! thread's command name: the program records the thread that called `connect()` or
//! `listen()`, so a seeded comm can differ from a recorded one for threads that renamed
//! themselves. Pids are those of the `/proc` read ([`TracerBuilder::seed_proc_root`]),
//! which must show the host's pid namespace.
//!
//! [`TracerBuilder::seed_proc_root`]: crate::TracerBuilder::seed_proc_root

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aya::Ebpf;
use aya::maps::HashMap as BpfHashMap;
use snat_core::census::{CensusOptions, MethodChoice, StateSet, census_netns};
use snat_core::model::{EventKind, TcpEvent, TcpState};
use snat_core::procindex::{ProcIndex, mount_lines, netns_without_process, socket_owners};

use crate::abi::{self, ListenInfo, ListenKey, Owner};

/// `BPF_NOEXIST`: insert only when the key is absent.
const BPF_NOEXIST: u64 = 1;

/// What the attach-time snapshot found and seeded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SeedReport {
    /// Network namespaces listed.
    pub namespaces: usize,
    /// Listening sockets found.
    pub listeners: usize,
    /// Listeners whose owner is now in the kernel's listener table (accepts on them carry
    /// it), including those the program had recorded itself meanwhile.
    pub listeners_seeded: usize,
    /// Listeners whose owning process was not found (held only by a process that exited,
    /// or not readable): accepts on them still have no owner.
    pub listeners_unowned: usize,
    /// Connections (sockets in other states, with a file) found.
    pub connections: usize,
    /// Connections whose owner was found: their close or failure gets it (stream mode).
    pub connections_owned: usize,
    /// How long the snapshot took, in milliseconds.
    pub took_ms: u64,
    /// What could not be done (a namespace that could not be listed, a process table that
    /// could not be read); the trace runs regardless.
    pub problems: Vec<String>,
}

/// An owner as the snapshot knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnerInfo {
    comm: String,
    cgroup_id: Option<u64>,
}

type Tuple = (u64, IpAddr, u16, IpAddr, u16);

fn tuple(netns: u64, local: IpAddr, lport: u16, remote: IpAddr, rport: u16) -> Tuple {
    (netns, local.to_canonical(), lport, remote.to_canonical(), rport)
}

/// Connections that existed when the trace started, with their owners: the reader fills
/// in the owner of their close or failed connect.
#[derive(Debug, Default)]
pub struct PreExisting {
    by_tuple: HashMap<Tuple, u32>,
    owners: HashMap<u32, OwnerInfo>,
}

impl PreExisting {
    /// Give `ev` its owner when the program reported none and the snapshot knows the
    /// connection (a close or failed connect only; each connection is used once, since it
    /// closes once). Returns whether the owner was filled in.
    pub fn fill(&mut self, ev: &mut TcpEvent) -> bool {
        if ev.cgroup_id.is_some() || !matches!(ev.kind, EventKind::Close | EventKind::FailedConnect) {
            return false;
        }
        let Some(netns) = ev.netns else { return false };
        let key = tuple(netns, ev.saddr, ev.sport, ev.daddr, ev.dport);
        let Some(pid) = self.by_tuple.remove(&key) else {
            return false;
        };
        let Some(o) = self.owners.get(&pid) else { return false };
        ev.pid = pid;
        ev.comm = o.comm.clone();
        ev.cgroup_id = o.cgroup_id;
        true
    }

    /// Connections still waiting for their close.
    pub fn len(&self) -> usize {
        self.by_tuple.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.by_tuple.is_empty()
    }
}

/// Named network namespaces (`ip netns add`, CNI plugins): path and inode.
fn named_netns_files() -> impl Iterator<Item = (PathBuf, u64)> {
    ["/run/netns", "/var/run/netns"]
        .into_iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.path(), std::fs::metadata(e.path()).ok()?.ino())))
}

fn named_netns() -> impl Iterator<Item = u64> {
    named_netns_files().map(|(_, ino)| ino)
}

/// The file of a named network namespace with inode `ns`: a namespace may have no process
/// of its own (only threads that entered it).
fn named_netns_file(ns: u64) -> Option<PathBuf> {
    named_netns_files().find(|(_, ino)| *ino == ns).map(|(p, _)| p)
}

/// The cgroup v2 mount point, from the content of `/proc/self/mountinfo`.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mount_lines(mountinfo)
        .find(|l| l.fstype == "cgroup2")
        .map(|l| l.mount_point)
}

/// The cgroup v2 path (`0::PATH` line) of `/proc/PID/cgroup` content.
pub fn cgroup_v2_path(content: &str) -> Option<&str> {
    content
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| p.starts_with('/'))
}

/// The cgroup v2 id of a path (the inode of its directory, as `bpf_get_current_cgroup_id`
/// reports it).
fn cgroup_id(mount: &Path, path: &str) -> Option<u64> {
    std::fs::metadata(mount.join(path.trim_start_matches('/')))
        .ok()
        .map(|m| m.ino())
}

fn comm_bytes(comm: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(comm.as_bytes().iter().take(15)) {
        *d = *s;
    }
    b
}

/// Take the snapshot, seed the kernel's listener table from it, and return the
/// connections for [`PreExisting::fill`] with a report. `netns`: only these namespaces
/// (empty: every namespace that has a process). Never fails: what cannot be done is
/// listed in [`SeedReport::problems`]. `connections`: also snapshot connections (only
/// useful in stream mode, where their closes are reported one by one); otherwise only
/// listeners are listed.
pub fn seed(ebpf: &mut Ebpf, proc_root: &Path, netns: &[u64], connections: bool) -> (PreExisting, SeedReport) {
    let t0 = Instant::now();
    let mut report = SeedReport::default();
    let mut pre = PreExisting::default();
    let idx = match ProcIndex::scan(proc_root) {
        Ok(idx) => idx,
        Err(e) => {
            report.problems.push(format!("cannot read the process table: {e}"));
            return (pre, report);
        }
    };
    let namespaces: std::collections::BTreeSet<u64> = if netns.is_empty() {
        idx.namespaces().chain(named_netns()).collect()
    } else {
        netns.iter().copied().collect()
    };
    let opts = CensusOptions {
        states: if connections {
            StateSet::all()
        } else {
            StateSet::of(&[TcpState::Listen])
        },
        method: MethodChoice::Auto,
        ..CensusOptions::default()
    };
    // (netns, socket) of every socket with a file.
    let mut sockets = Vec::new();
    let mut owners: HashMap<u64, u32> = HashMap::new();
    let mut scanned: Vec<u32> = Vec::new();
    // Those without a process: entered by a thread's or a mount's file.
    let others = netns_without_process(
        proc_root,
        &namespaces
            .iter()
            .copied()
            .filter(|ns| idx.in_netns(*ns).next().is_none())
            .collect(),
    );
    for ns in namespaces {
        let Some(file) = idx
            .netns_file(ns)
            .or_else(|| named_netns_file(ns))
            .or_else(|| others.get(&ns).cloned())
        else {
            report.problems.push(format!(
                "network namespace {ns}: no process, thread or mount holds it: it cannot be entered"
            ));
            continue;
        };
        let census = match census_netns(&file, opts) {
            Ok(c) => c,
            Err(e) => {
                report.problems.push(format!("network namespace {ns}: {e}"));
                continue;
            }
        };
        report.namespaces += 1;
        let pids = idx.pids_in(ns);
        match socket_owners(proc_root, &pids) {
            Ok(o) => owners.extend(o),
            Err(e) => report.problems.push(format!("network namespace {ns}: {e}")),
        }
        scanned.extend(pids);
        sockets.extend(census.sockets.into_iter().filter(|s| s.inode != 0).map(|s| (ns, s)));
    }
    // A socket may be held by a process of another namespace (a thread that entered the
    // namespace, a descriptor passed over a Unix socket): look at the other processes once.
    if sockets.iter().any(|(_, s)| !owners.contains_key(&s.inode)) {
        scanned.sort_unstable();
        let rest: Vec<u32> = idx
            .processes
            .iter()
            .map(|p| p.pid)
            .filter(|p| scanned.binary_search(p).is_err())
            .collect();
        match socket_owners(proc_root, &rest) {
            Ok(o) => {
                for (inode, pid) in o {
                    owners.entry(inode).or_insert(pid);
                }
            }
            Err(e) => report.problems.push(format!("socket owners: {e}")),
        }
    }

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cg_mount = cgroup2_mount(&mountinfo);
    let mut owner_of = |pid: u32| -> Option<OwnerInfo> {
        if let Some(o) = pre.owners.get(&pid) {
            return Some(o.clone());
        }
        let p = idx.get(pid)?;
        let comm = p.comm().to_string();
        if comm.is_empty() {
            return None; // exited since
        }
        let cgroup_id = cg_mount
            .as_deref()
            .zip(cgroup_v2_path(p.cgroup()))
            .and_then(|(m, path)| cgroup_id(m, path));
        let o = OwnerInfo { comm, cgroup_id };
        pre.owners.insert(pid, o.clone());
        Some(o)
    };

    let mut listeners: Option<BpfHashMap<_, ListenKey, ListenInfo>> = ebpf
        .map_mut(abi::MAP_LISTENERS)
        .and_then(|m| BpfHashMap::try_from(m).ok());
    if listeners.is_none() {
        report.problems.push(format!(
            "eBPF map {} is missing or unusable: listeners not seeded",
            abi::MAP_LISTENERS
        ));
    }
    let mut by_tuple = HashMap::new();
    for (ns, s) in &sockets {
        let owner = owners.get(&s.inode).and_then(|&pid| Some((pid, owner_of(pid)?)));
        if s.state == TcpState::Listen {
            report.listeners += 1;
            let (Some((pid, o)), Some(map), Ok(ns32)) = (owner, listeners.as_mut(), u32::try_from(*ns)) else {
                report.listeners_unowned += 1;
                continue;
            };
            let key = ListenKey {
                netns: ns32,
                port: s.local.port(),
                pad: 0,
            };
            let value = ListenInfo {
                owner: Owner {
                    cgroup_id: o.cgroup_id.unwrap_or(0),
                    pid,
                    tid: pid,
                    comm: comm_bytes(&o.comm),
                },
                // The socket's kernel address is unknown here; the program never matches
                // 0, so it will not delete this entry when the listener closes (a later
                // listen() on the port replaces it).
                sk: 0,
            };
            match map.insert(key, value, BPF_NOEXIST) {
                Ok(()) => report.listeners_seeded += 1,
                // Already there: recorded by the program since attach, or another
                // listener on the same port (IPv4 and IPv6, SO_REUSEPORT) seeded first.
                Err(_) if map.get(&key, 0).is_ok() => report.listeners_seeded += 1,
                Err(e) => {
                    report.listeners_unowned += 1;
                    report.problems.push(format!("listener {ns}:{}: {e}", s.local.port()));
                }
            }
        } else {
            report.connections += 1;
            if let Some((pid, _)) = owner {
                report.connections_owned += 1;
                by_tuple.insert(
                    tuple(*ns, s.local.ip(), s.local.port(), s.remote.ip(), s.remote.port()),
                    pid,
                );
            }
        }
    }
    pre.by_tuple = by_tuple;
    report.took_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(?report, "seeded owners of sockets older than the trace");
    (pre, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use snat_core::model::{Clock, Family};

    #[rstest]
    #[case(
        "36 25 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n",
        Some("/sys/fs/cgroup/unified")
    )]
    #[case(
        "24 1 0:22 / /sys rw - sysfs sysfs rw\n30 24 0:26 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n",
        Some("/sys/fs/cgroup")
    )]
    #[case("40 25 0:35 / /mnt/my\\040cg rw - cgroup2 none rw\n", Some("/mnt/my cg"))]
    #[case("37 25 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", None)]
    #[case("garbage line\n\n", None)]
    fn cgroup2_mounts(#[case] mountinfo: &str, #[case] want: Option<&str>) {
        assert_eq!(cgroup2_mount(mountinfo), want.map(PathBuf::from));
    }

    #[rstest]
    #[case("0::/kubepods.slice/a.scope\n", Some("/kubepods.slice/a.scope"))]
    #[case("12:memory:/x\n1:name=systemd:/y\n0::/\n", Some("/"))]
    #[case("12:memory:/x\n", None)]
    #[case("0::garbage\n", None)]
    #[case("", None)]
    fn cgroup_v2_paths(#[case] content: &str, #[case] want: Option<&str>) {
        assert_eq!(cgroup_v2_path(content), want);
    }

    #[test]
    fn comm_is_truncated_to_15_bytes_and_nul_terminated() {
        let b = comm_bytes("a-very-long-command-name");
        assert_eq!(&b[..15], b"a-very-long-com");
        assert_eq!(b[15], 0);
        assert_eq!(&comm_bytes("nginx")[..6], b"nginx\0");
    }

    fn close(kind: EventKind, saddr: &str, sport: u16, daddr: &str, dport: u16) -> TcpEvent {
        TcpEvent {
            time_ns: None,
            clock: Clock::Unix,
            kind,
            direction: kind.direction(),
            pid: 0,
            comm: String::new(),
            family: Family::Ipv6,
            saddr: saddr.parse().unwrap(),
            daddr: daddr.parse().unwrap(),
            sport,
            dport,
            netns: Some(7),
            cgroup_id: None,
            prev_state: None,
            duration_ns: None,
            error: None,
        }
    }

    fn table() -> PreExisting {
        let mut p = PreExisting::default();
        p.by_tuple.insert(
            tuple(7, "10.0.0.1".parse().unwrap(), 40000, "10.0.0.2".parse().unwrap(), 443),
            42,
        );
        p.owners.insert(
            42,
            OwnerInfo {
                comm: "curl".into(),
                cgroup_id: Some(99),
            },
        );
        p
    }

    #[test]
    fn a_close_of_a_known_connection_gets_its_owner_once() {
        let mut p = table();
        // An IPv6 socket's IPv4-mapped addresses match the census's IPv4 ones.
        let mut ev = close(EventKind::Close, "::ffff:10.0.0.1", 40000, "::ffff:10.0.0.2", 443);
        assert!(p.fill(&mut ev));
        assert_eq!((ev.pid, ev.comm.as_str(), ev.cgroup_id), (42, "curl", Some(99)));
        assert!(p.is_empty());
        let mut again = close(EventKind::Close, "10.0.0.1", 40000, "10.0.0.2", 443);
        assert!(!p.fill(&mut again), "a tuple is used once: a later socket may reuse it");
        assert_eq!(again.pid, 0);
    }

    #[rstest]
    #[case::other_netns(close(EventKind::Close, "10.0.0.1", 40000, "10.0.0.2", 443), Some(8), None)]
    #[case::owner_already_known(close(EventKind::Close, "10.0.0.1", 40000, "10.0.0.2", 443), Some(7), Some(5))]
    #[case::other_port(close(EventKind::Close, "10.0.0.1", 40001, "10.0.0.2", 443), Some(7), None)]
    #[case::accept_is_the_listener_table_s_job(
        close(EventKind::Accept, "10.0.0.1", 40000, "10.0.0.2", 443),
        Some(7),
        None
    )]
    fn other_events_are_left_alone(#[case] mut ev: TcpEvent, #[case] netns: Option<u64>, #[case] cgroup: Option<u64>) {
        ev.netns = netns;
        ev.cgroup_id = cgroup;
        let before = ev.clone();
        let mut p = table();
        assert!(!p.fill(&mut ev));
        assert_eq!(ev, before);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_failed_connect_of_a_known_socket_gets_its_owner() {
        let mut p = table();
        let mut ev = close(EventKind::FailedConnect, "10.0.0.1", 40000, "10.0.0.2", 443);
        assert!(p.fill(&mut ev));
        assert_eq!(ev.pid, 42);
    }
}

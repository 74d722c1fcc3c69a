//! From a network namespace to its owner: the pod (told by the cgroup of the processes in
//! it) or, with no Kubernetes on the host, the processes and their cgroup paths.
//!
//! [`resolve`] turns a [`ProcIndex`] into one [`NetnsOwner`] per network namespace (on two
//! threads for a host of 512 processes or more). The host's namespace is shared by the
//! node's daemons and by hostNetwork pods, so its sockets are attributed per process
//! instead: [`census_owned`] ties each socket to the process holding it (socket inode ->
//! pid through `/proc/PID/fd`), and [`group_by_owner`] groups a census by pod (through
//! that process's cgroup) or by process, so a hostNetwork pod is still named rather than
//! lumped in with the node.
//!
//! Pod identity comes from a [`PodLookup`]: a function from the raw content of
//! `/proc/PID/cgroup` to a [`PodRef`]. [`pod_of_cgroup`] is the default one and the only
//! place that calls into cgroup parsing.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::census::{Census, CensusOptions, DestinationCount, StateCounts, census_netns};
use crate::error::Error;
use crate::model::{PodRef, ProcessRef};
use crate::procindex::{ProcEntry, ProcIndex, socket_owners};

/// A function from the raw content of `/proc/PID/cgroup` to the pod it names, if any.
pub type PodLookup<'a> = &'a (dyn Fn(&str) -> Option<PodRef> + Sync);

/// The default [`PodLookup`]: the pod named by a process's cgroup, from
/// [`cgroup::parse`](crate::cgroup::parse) (UID and QoS; name, namespace and owner are
/// left for the Kubernetes API). This is the one seam between resolution and cgroup
/// parsing.
///
/// CRI-O's `conmon` (cgroup `crio-conmon-<id>`) names no pod: it sits in the pod's cgroup
/// but in the host's network namespace, and is the runtime's monitor, not the pod's
/// workload, so it must not make its pod a hostNetwork pod.
pub fn pod_of_cgroup(content: &str) -> Option<PodRef> {
    let id = crate::cgroup::parse(content).ok()?;
    if id.conmon {
        return None;
    }
    Some(PodRef {
        uid: id.pod_uid?,
        namespace: None,
        name: None,
        qos: id.qos,
        owner: None,
        host_network: false,
    })
}

/// Who owns one network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsOwner {
    /// Network namespace inode.
    pub netns: u64,
    /// Whether this is the host's (node's) namespace.
    pub host_netns: bool,
    /// Every process in it, ascending.
    pub pids: Vec<u32>,
    /// For a pod's namespace: the pod that owns it (one). For the host namespace: the
    /// hostNetwork pods, with `host_network` set. Empty when no pod is in it.
    pub pods: Vec<PodRef>,
    /// Pods with a process in a pod's namespace they do not own: a helper that entered it
    /// (`nsenter` from a DaemonSet pod, a debugging tool), by UID. Always empty for the
    /// host namespace, whose pods are all in `pods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub visitors: Vec<PodRef>,
    /// The processes that tell the owner: for a pod's namespace the owning pod's first
    /// process, then one per visiting pod and per other cgroup; otherwise one process per
    /// distinct cgroup (see [`resolve_one`]).
    pub processes: Vec<ProcessRef>,
}

impl NetnsOwner {
    /// A short human label: `pod <uid>` (`pod <namespace>/<name>` once the API has named
    /// it, with ` (+N visiting pods)` when other pods' processes entered it), `host`
    /// (`host (+N hostNetwork pods)`), or `<comm>[<pid>] <cgroup>` for the first process
    /// of a namespace no pod owns.
    pub fn label(&self) -> String {
        if self.host_netns {
            return match self.pods.len() {
                0 => "host".to_string(),
                n => format!("host (+{n} hostNetwork pod{})", plural(n)),
            };
        }
        if !self.pods.is_empty() {
            let pods = self.pods.iter().map(pod_label).collect::<Vec<_>>().join(", ");
            return match self.visitors.len() {
                0 => pods,
                n => format!("{pods} (+{n} visiting pod{})", plural(n)),
            };
        }
        match self.processes.first() {
            Some(p) => format!(
                "{}[{}] {}{}",
                p.comm,
                p.pid,
                p.cgroup.as_deref().unwrap_or("?"),
                match self.pids.len() {
                    1 => String::new(),
                    n => format!(" (+{} more processes)", n - 1),
                }
            ),
            None => "no process".to_string(),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn pod_label(p: &PodRef) -> String {
    match (&p.namespace, &p.name) {
        (Some(ns), Some(n)) => format!("pod {ns}/{n}"),
        _ => format!("pod {}", p.uid),
    }
}

/// The command name of a pod's sandbox process (the pause container), as containerd and
/// CRI-O run it.
const SANDBOX_COMM: &str = "pause";

/// Resolve one namespace of the index (`None` when no process is in it).
///
/// Every process's cgroup is read. In the host namespace, every pod found is a
/// hostNetwork pod, and `processes` holds one process per distinct cgroup (its lowest
/// pid), so each service or container is named once.
///
/// Any other namespace with processes in pods is owned by one pod, as a pod has a
/// namespace of its own; yet a process of another pod may have entered it (`nsenter`
/// from a DaemonSet, a debugging tool), possibly with a lower pid after pid wrap. The
/// owner is the pod whose sandbox (`pause`) process is in it when exactly one pod has
/// one, else the pod with the most processes there (the lowest pid breaks ties); the
/// other pods are listed as `visitors`. `processes` then holds the owner's first process,
/// followed by the first process of each visitor and of each other cgroup (as `lsns`
/// shows one process per namespace, plus whoever else is there).
pub fn resolve_one(index: &ProcIndex, netns: u64, lookup: PodLookup<'_>) -> Option<NetnsOwner> {
    let host = index.host_netns == Some(netns);
    let members: Vec<&ProcEntry> = index.in_netns(netns).collect();
    if members.is_empty() {
        return None;
    }
    let pids: Vec<u32> = members.iter().map(|p| p.pid).collect();
    // One entry per distinct cgroup, first seen (lowest pid) first.
    let mut cgroups: Vec<(&ProcEntry, Option<PodRef>)> = Vec::new();
    let mut of_cgroup: HashMap<&str, usize> = HashMap::new();
    // Per member: its entry in `cgroups`.
    let mut cgroup_of: Vec<usize> = Vec::with_capacity(members.len());
    // Per pod UID: processes, whether a sandbox process is among them, first pid.
    let mut per_pod: BTreeMap<String, (usize, bool, u32)> = BTreeMap::new();
    for p in &members {
        let i = *of_cgroup.entry(p.cgroup()).or_insert_with(|| {
            let pod = lookup(p.cgroup()).map(|mut pod| {
                pod.host_network = host;
                pod
            });
            cgroups.push((p, pod));
            cgroups.len() - 1
        });
        cgroup_of.push(i);
        if let Some(pod) = &cgroups[i].1 {
            per_pod.entry(pod.uid.clone()).or_insert((0, false, p.pid)).0 += 1;
        }
    }
    // The sandbox is told by its name, read only where there is a choice to make.
    if !host && per_pod.len() > 1 {
        for (p, &i) in members.iter().zip(&cgroup_of) {
            if let Some(pod) = &cgroups[i].1
                && p.comm() == SANDBOX_COMM
                && let Some(e) = per_pod.get_mut(&pod.uid)
            {
                e.1 = true;
            }
        }
    }
    let pods_in = |cgroups: &[(&ProcEntry, Option<PodRef>)]| {
        let mut pods: BTreeMap<String, PodRef> = BTreeMap::new();
        for (_, pod) in cgroups {
            if let Some(pod) = pod {
                pods.entry(pod.uid.clone()).or_insert_with(|| pod.clone());
            }
        }
        pods
    };
    let mut pods = pods_in(&cgroups);
    if host || pods.is_empty() {
        return Some(NetnsOwner {
            netns,
            host_netns: host,
            pids,
            pods: pods.into_values().collect(),
            visitors: Vec::new(),
            processes: cgroups.iter().map(|(p, _)| p.to_ref()).collect(),
        });
    }
    let with_sandbox: Vec<&String> = per_pod.iter().filter(|(_, e)| e.1).map(|(uid, _)| uid).collect();
    let owner_uid = match with_sandbox.as_slice() {
        [one] => (*one).clone(),
        _ => per_pod
            .iter()
            .min_by_key(|(_, (n, _, first))| (std::cmp::Reverse(*n), *first))
            .map(|(uid, _)| uid.clone())
            .unwrap_or_default(),
    };
    let owner = pods.remove(&owner_uid);
    // The owner's first process, then the first of each visitor and other cgroup.
    let mut processes = Vec::new();
    let mut named: std::collections::HashSet<Option<String>> = std::collections::HashSet::new();
    let owner_first = cgroups
        .iter()
        .find(|(_, pod)| pod.as_ref().is_some_and(|pod| pod.uid == owner_uid));
    if let Some((p, _)) = owner_first {
        processes.push(p.to_ref());
        named.insert(Some(owner_uid.clone()));
    }
    for (p, pod) in &cgroups {
        match pod {
            Some(pod) => {
                if named.insert(Some(pod.uid.clone())) {
                    processes.push(p.to_ref());
                }
            }
            None => processes.push(p.to_ref()),
        }
    }
    Some(NetnsOwner {
        netns,
        host_netns: false,
        pids,
        pods: owner.into_iter().collect(),
        visitors: pods.into_values().collect(),
        processes,
    })
}

/// Below this many processes [`resolve`] works on one thread.
const PARALLEL_MIN_PROCESSES: usize = 512;
/// The most threads [`resolve`] uses: every `/proc/PID/cgroup` read takes the kernel's one
/// `css_set_lock`, so more threads mostly wait for each other.
const MAX_THREADS: usize = 2;

/// Resolve every namespace of the index, host namespace first, then by inode.
///
/// Most of the time goes to reading `/proc/PID/cgroup` (see [`resolve_one`]), so with
/// 512 processes or more the namespaces are shared out among two threads (when the
/// process may use two CPUs); the result is the same.
pub fn resolve(index: &ProcIndex, lookup: PodLookup<'_>) -> Vec<NetnsOwner> {
    // Asked only for a large host: it reads the affinity mask and the cgroup CPU quota.
    let threads = if index.processes.len() >= PARALLEL_MIN_PROCESSES {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(MAX_THREADS)
    } else {
        1
    };
    resolve_on(index, lookup, threads)
}

/// [`resolve`] on `threads` threads, each taking the next namespace not yet taken (in
/// inode order, which usually puts the host's, the largest, first). A thread that cannot
/// be started leaves its share to the others.
fn resolve_on(index: &ProcIndex, lookup: PodLookup<'_>, threads: usize) -> Vec<NetnsOwner> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let namespaces: Vec<u64> = index.namespaces().collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut out = Vec::new();
        while let Some(&ns) = namespaces.get(next.fetch_add(1, Ordering::Relaxed)) {
            out.extend(resolve_one(index, ns, lookup));
        }
        out
    };
    let mut v: Vec<NetnsOwner> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("snat-resolve".into())
                    .spawn_scoped(scope, work)
                    .ok()
            })
            .collect();
        let mut all = work();
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        all
    });
    v.sort_by_key(|o| (!o.host_netns, o.netns));
    v
}

/// Census of one namespace of the index, entered through one of its processes, with
/// every socket tied to the process holding it (from the `/proc/PID/fd` of the
/// namespace's processes only).
///
/// Errors: every process of the namespace has exited since the scan
/// ([`Error::NetnsGone`]: a pod that ended, normal during a run; callers usually skip it),
/// or the census fails (see [`census_netns`]).
pub fn census_owned(index: &ProcIndex, netns: u64, opts: CensusOptions) -> Result<Census, Error> {
    let gone = || Error::NetnsGone { netns };
    let file = index.netns_file(netns).ok_or_else(gone)?;
    let mut census = match census_netns(&file, opts) {
        // The process exited between the check and the open.
        Err(Error::Io { source, .. }) if crate::procindex::is_vanished(&source) => return Err(gone()),
        other => other?,
    };
    // Its pid was reused by a process elsewhere: not the namespace asked for.
    if census.netns.is_some_and(|n| n != netns) {
        return Err(gone());
    }
    let owners = socket_owners(&index.proc_root, &index.pids_in(netns))?;
    census.attach_owners(&owners);
    Ok(census)
}

/// The sockets of one owner (a pod, a process, or nobody known) within a census.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerGroup {
    /// The pod, when the owning process's cgroup names one.
    pub pod: Option<PodRef>,
    /// The owning process, when no pod is known (the first one, for a pod).
    pub process: Option<ProcessRef>,
    /// The owning processes.
    pub pids: Vec<u32>,
    /// All sockets, by state.
    pub counts: StateCounts,
    /// Outgoing sockets to public destinations, by destination, ranked.
    pub destinations: Vec<DestinationCount>,
}

impl OwnerGroup {
    /// ESTABLISHED + SYN_SENT sockets to public destinations.
    pub fn public_active(&self) -> u64 {
        self.destinations.iter().map(|d| d.counts.active()).sum()
    }

    /// A short human label: `pod <uid>`, `<comm>[<pid>]`, or `unknown owner`.
    pub fn label(&self) -> String {
        match (&self.pod, &self.process) {
            (Some(p), _) => match (&p.namespace, &p.name) {
                (Some(ns), Some(n)) => format!("pod {ns}/{n}"),
                _ => format!("pod {}", p.uid),
            },
            (None, Some(p)) => format!("{}[{}]", p.comm, p.pid),
            (None, None) => "unknown owner".to_string(),
        }
    }
}

/// Group a census (with owners attached, see [`census_owned`]) by pod, or by process when
/// the process belongs to no pod. Sockets without a known owner (TIME_WAIT has no file;
/// processes root may not read) form one group with neither pod nor process. Ranked by
/// [`OwnerGroup::public_active`], then total sockets.
pub fn group_by_owner(
    census: &Census,
    index: &ProcIndex,
    lookup: PodLookup<'_>,
    is_public: &dyn Fn(IpAddr) -> bool,
) -> Vec<OwnerGroup> {
    #[derive(PartialEq, Eq, Hash, Clone)]
    enum Key {
        Pod(String),
        Pid(u32),
        Unknown,
    }
    let mut pod_of_pid: HashMap<u32, Option<PodRef>> = HashMap::new();
    type Acc = (Option<PodRef>, Option<ProcessRef>, Vec<u32>, Census);
    let mut groups: HashMap<Key, Acc> = HashMap::new();
    let empty = |c: &Census| Census {
        netns: c.netns,
        method: c.method,
        fallback_reason: None,
        sockets: Vec::new(),
        listeners: c.listeners.clone(),
    };
    for s in &census.sockets {
        let proc_entry = s.owner_pid.and_then(|pid| index.get(pid));
        let (key, pod) = match (s.owner_pid, proc_entry) {
            (Some(pid), Some(p)) => {
                let pod = pod_of_pid
                    .entry(pid)
                    .or_insert_with(|| {
                        lookup(p.cgroup()).map(|mut pod| {
                            pod.host_network = index.host_netns == Some(p.netns);
                            pod
                        })
                    })
                    .clone();
                match &pod {
                    Some(pod) => (Key::Pod(pod.uid.clone()), Some(pod.clone())),
                    None => (Key::Pid(pid), None),
                }
            }
            (Some(pid), None) => (Key::Pid(pid), None),
            _ => (Key::Unknown, None),
        };
        let g = groups
            .entry(key.clone())
            .or_insert_with(|| (pod, proc_entry.map(|p| p.to_ref()), Vec::new(), empty(census)));
        if let Some(pid) = s.owner_pid
            && !g.2.contains(&pid)
        {
            g.2.push(pid);
        }
        g.3.sockets.push(s.clone());
    }
    // A sidecar's REDIRECT pairs sockets of different owners: look across the namespace.
    let remotes = census.remote_endpoints();
    let mut v: Vec<OwnerGroup> = groups
        .into_values()
        .map(|(pod, process, mut pids, c)| {
            pids.sort_unstable();
            OwnerGroup {
                pod,
                process,
                pids,
                counts: c.counts(),
                destinations: c.destinations_in(is_public, &remotes),
            }
        })
        .collect();
    v.sort_by(|a, b| {
        (b.public_active(), b.counts.total)
            .cmp(&(a.public_active(), a.counts.total))
            .then_with(|| a.label().cmp(&b.label()))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::Method;
    use crate::model::{Family, Socket, TcpState};
    use crate::procindex::ProcEntry;
    use std::path::Path;

    fn lookup(cg: &str) -> Option<PodRef> {
        let uid = cg.split('/').find_map(|c| c.strip_prefix("pod"))?;
        Some(PodRef {
            uid: uid.to_string(),
            namespace: None,
            name: None,
            qos: None,
            owner: None,
            host_network: false,
        })
    }

    fn entry(pid: u32, netns: u64, comm: &str, cg: &str) -> ProcEntry {
        ProcEntry::with_details(pid, netns, comm, comm, &format!("0::{cg}\n"))
    }

    fn index() -> ProcIndex {
        ProcIndex::from_entries(
            Path::new("/proc"),
            vec![
                entry(1, 10, "systemd", "/init.scope"),
                entry(50, 10, "kubelet", "/system.slice/kubelet.service"),
                entry(60, 10, "agent", "/kubepods/podhost1/abc"),
                entry(70, 20, "pause", "/kubepods/podaaa/s1"),
                entry(71, 20, "app", "/kubepods/podaaa/c1"),
                entry(80, 30, "qemu", "/machine.slice/vm1"),
                entry(81, 30, "qemu-worker", "/machine.slice/vm1"),
                entry(82, 30, "helper", "/machine.slice/vm2"),
            ],
            0,
        )
    }

    const APP: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    const DAEMON: &str = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";
    const CID: &str = "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";

    /// A systemd-driver container cgroup of pod `uid` (burstable).
    fn pod_cgroup(uid: &str, scope: &str) -> String {
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/{scope}-{CID}.scope",
            uid.replace('-', "_")
        )
    }

    /// A `--host-proc` tree: per process `ns/net`, `comm`, `cmdline` and `cgroup`.
    fn fake_proc(procs: &[(u32, u64, &str, String)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (pid, netns, comm, cg) in procs {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir_all(d.join("ns")).unwrap();
            std::os::unix::fs::symlink(format!("net:[{netns}]"), d.join("ns/net")).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(d.join("cmdline"), format!("{comm}\0")).unwrap();
            std::fs::write(d.join("cgroup"), format!("0::{cg}\n")).unwrap();
        }
        dir
    }

    fn owner_of(dir: &tempfile::TempDir, netns: u64) -> NetnsOwner {
        let idx = ProcIndex::scan(dir.path()).unwrap();
        resolve(&idx, &pod_of_cgroup)
            .into_iter()
            .find(|o| o.netns == netns)
            .unwrap()
    }

    /// A DaemonSet pod's helper that entered an app pod's namespace with a lower pid
    /// (pid wrap, `nsenter`) does not take it over: the app pod, with more processes there,
    /// owns it, and the helper's pod is listed as a visitor.
    #[test]
    fn a_low_pid_visitor_does_not_take_over_a_pod_namespace() {
        let dir = fake_proc(&[
            (1, 100, "systemd", "/init.scope".into()),
            (50, 200, "tcpdump", pod_cgroup(DAEMON, "cri-containerd")),
            (3000, 200, "app", pod_cgroup(APP, "cri-containerd")),
            (3001, 200, "app-worker", pod_cgroup(APP, "cri-containerd")),
        ]);
        let o = owner_of(&dir, 200);
        let uids = |v: &[PodRef]| v.iter().map(|p| p.uid.clone()).collect::<Vec<_>>();
        assert_eq!(uids(&o.pods), vec![APP]);
        assert_eq!(uids(&o.visitors), vec![DAEMON]);
        assert_eq!(o.label(), format!("pod {APP} (+1 visiting pod)"));
        assert_eq!(o.pids, vec![50, 3000, 3001]);
        let named: Vec<u32> = o.processes.iter().map(|p| p.pid).collect();
        assert_eq!(named, vec![3000, 50], "the owner's first process, then the visitor's");
    }

    /// The pod whose sandbox (pause) process is in the namespace owns it, even when a
    /// visiting pod has more processes there.
    #[test]
    fn the_sandbox_tells_the_owner() {
        let dir = fake_proc(&[
            (1, 100, "systemd", "/init.scope".into()),
            (40, 200, "sh", pod_cgroup(DAEMON, "cri-containerd")),
            (41, 200, "tcpdump", pod_cgroup(DAEMON, "cri-containerd")),
            (42, 200, "sleep", pod_cgroup(DAEMON, "cri-containerd")),
            (3000, 200, "pause", pod_cgroup(APP, "cri-containerd")),
            (3001, 200, "app", pod_cgroup(APP, "cri-containerd")),
        ]);
        let o = owner_of(&dir, 200);
        assert_eq!(o.pods.len(), 1);
        assert_eq!(o.pods[0].uid, APP);
        assert_eq!(o.visitors.len(), 1);
        assert_eq!(o.visitors[0].uid, DAEMON);
        assert_eq!(o.processes[0].pid, 3000);
    }

    /// A pod's namespace with one pod and no visitor reads as before: that pod, its first
    /// process, no visitors (and no `visitors` key in JSON).
    #[test]
    fn a_pod_alone_in_its_namespace_is_its_owner() {
        let dir = fake_proc(&[
            (1, 100, "systemd", "/init.scope".into()),
            (3000, 200, "pause", pod_cgroup(APP, "cri-containerd")),
            (3001, 200, "app", pod_cgroup(APP, "cri-containerd")),
        ]);
        let o = owner_of(&dir, 200);
        assert_eq!(o.label(), format!("pod {APP}"));
        assert!(o.visitors.is_empty());
        assert_eq!(o.processes.len(), 1);
        let json = serde_json::to_value(&o).unwrap();
        assert!(json.get("visitors").is_none(), "{json}");
    }

    /// CRI-O's conmon sits in its pod's cgroup but in the host namespace: the pod is not
    /// a hostNetwork pod for it, while the pod's own namespace is still told as the pod's.
    #[test]
    fn crio_conmon_does_not_make_a_host_network_pod() {
        let dir = fake_proc(&[
            (1, 100, "systemd", "/init.scope".into()),
            (500, 100, "conmon", pod_cgroup(APP, "crio-conmon")),
            (510, 200, "pause", pod_cgroup(APP, "crio")),
            (511, 200, "app", pod_cgroup(APP, "crio")),
        ]);
        let host = owner_of(&dir, 100);
        assert!(host.host_netns);
        assert_eq!(host.label(), "host");
        assert!(host.pods.is_empty());
        assert!(host.processes.iter().any(|p| p.pid == 500), "conmon is still listed");
        let pod = owner_of(&dir, 200);
        assert_eq!(pod.label(), format!("pod {APP}"));
    }

    #[test]
    fn census_of_a_namespace_whose_processes_exited_says_so() {
        let idx = ProcIndex::from_entries(Path::new("/nonexistent-proc"), vec![entry(4242, 77, "gone", "/x")], 0);
        let err = census_owned(&idx, 77, CensusOptions::default()).unwrap_err();
        assert!(matches!(err, Error::NetnsGone { netns: 77 }), "{err}");
        let err = census_owned(&idx, 78, CensusOptions::default()).unwrap_err();
        assert!(matches!(err, Error::NetnsGone { netns: 78 }), "{err}");
    }

    #[test]
    fn resolves_pods_host_and_processes() {
        let owners = resolve(&index(), &lookup);
        assert_eq!(owners.iter().map(|o| o.netns).collect::<Vec<_>>(), vec![10, 20, 30]);
        assert!(owners[0].host_netns);
        assert_eq!(owners[0].pods.len(), 1);
        assert!(owners[0].pods[0].host_network);
        assert_eq!(owners[0].label(), "host (+1 hostNetwork pod)");
        assert_eq!(owners[1].pods.len(), 1, "pause and app are one pod");
        assert_eq!(owners[1].label(), "pod aaa");
        assert!(!owners[1].pods[0].host_network);
        assert_eq!(owners[1].pids, vec![70, 71]);
        assert_eq!(owners[1].processes.len(), 1, "a pod's namespace: first process only");
        assert_eq!(owners[0].processes.len(), 3, "the host's: one per cgroup");
        assert_eq!(owners[2].label(), "qemu[80] /machine.slice/vm1 (+2 more processes)");
        let named: Vec<u32> = owners[2].processes.iter().map(|p| p.pid).collect();
        assert_eq!(named, vec![80, 82], "one process per distinct cgroup");
    }

    /// Shared out among threads, the namespaces resolve exactly as on one thread, each
    /// once, whatever the number of threads.
    #[test]
    fn threads_resolve_as_one_does() {
        let mut entries = Vec::new();
        for ns in 0..300u64 {
            for k in 0..(ns % 7) as u32 + 1 {
                let cg = match ns % 3 {
                    0 => format!("/kubepods/pod{ns}/c{k}"),
                    1 => format!("/system.slice/svc{}.service", k % 2),
                    _ => format!("/machine.slice/vm{ns}"),
                };
                entries.push(entry(ns as u32 * 10 + k + 1, 1000 + ns, "p", &cg));
            }
        }
        let idx = ProcIndex::from_entries(Path::new("/proc"), entries, 0);
        let one = resolve_on(&idx, &lookup, 1);
        assert_eq!(one.len(), 300);
        assert!(one[0].host_netns, "pid 1 is in the first namespace");
        for threads in [2, 3, 8] {
            assert_eq!(resolve_on(&idx, &lookup, threads), one, "{threads} threads");
        }
        assert_eq!(resolve(&idx, &lookup), one);
    }

    #[test]
    fn groups_host_sockets_by_pod_and_process() {
        let idx = index();
        let s = |pid: Option<u32>, state, remote: &str| Socket {
            family: Family::Ipv4,
            state,
            local: "10.0.0.4:40000".parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode: if pid.is_some() { 5 } else { 0 },
            uid: 0,
            owner_pid: pid,
        };
        let census = Census {
            netns: Some(10),
            method: Method::SockDiag,
            fallback_reason: None,
            listeners: vec![],
            sockets: vec![
                s(Some(60), TcpState::Established, "198.18.0.1:443"),
                s(Some(60), TcpState::SynSent, "198.18.0.1:443"),
                s(Some(50), TcpState::Established, "198.18.0.2:443"),
                s(Some(50), TcpState::Established, "10.0.0.9:443"),
                s(None, TcpState::TimeWait, "198.18.0.1:443"),
            ],
        };
        let public = |ip: IpAddr| ip.to_string().starts_with("198.18.");
        let g = group_by_owner(&census, &idx, &lookup, &public);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].label(), "pod host1");
        assert_eq!(g[0].public_active(), 2);
        assert!(g[0].pod.as_ref().unwrap().host_network);
        assert_eq!(g[1].label(), "kubelet[50]");
        assert_eq!((g[1].public_active(), g[1].counts.total), (1, 2));
        assert_eq!(g[2].label(), "unknown owner");
        assert_eq!(g[2].counts.time_wait, 1);
    }
}

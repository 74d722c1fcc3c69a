//! Process index: which processes live in which network namespace, read from `/proc`.
//!
//! [`ProcIndex::scan`] walks a `/proc` tree (the host's, or one mounted elsewhere such as
//! `/host/proc` when snat runs in a container) once and records, for every process, its
//! network namespace inode (from the `/proc/PID/ns/net` link, `net:[4026531992]`); its
//! command name and line and the raw content of `/proc/PID/cgroup` (from which the pod is
//! told) are read on first use only. Processes that exit during the scan are skipped and counted, never fatal;
//! a permission error says that root (or CAP_SYS_PTRACE) is needed. [`socket_owners`] maps
//! socket inodes to the processes holding them, from `/proc/PID/fd`, for a chosen set of
//! processes only (one namespace's), which is what names hostNetwork pods.
//! [`netns_without_process`] finds the namespaces a scan cannot see: those only a thread
//! has entered or only a mount keeps.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::error::Error;
use crate::model::ProcessRef;

/// One process found by a scan. The scan only reads the namespace link; the cgroup, and
/// separately the command name and line, are read on first use (and are empty if the
/// process has exited by then), which keeps a scan of thousands of processes cheap.
#[derive(Debug, Clone)]
pub struct ProcEntry {
    /// Process id, in the pid namespace of the /proc that was read.
    pub pid: u32,
    /// Network namespace inode.
    pub netns: u64,
    root: Arc<PathBuf>,
    cgroup: OnceLock<String>,
    names: OnceLock<(String, String)>,
}

impl PartialEq for ProcEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.pid, self.netns, self.comm(), self.cmdline(), self.cgroup())
            == (other.pid, other.netns, other.comm(), other.cmdline(), other.cgroup())
    }
}

impl Eq for ProcEntry {}

impl ProcEntry {
    /// An entry whose details are already known (tests, or another source of processes).
    pub fn with_details(pid: u32, netns: u64, comm: &str, cmdline: &str, cgroup: &str) -> ProcEntry {
        ProcEntry {
            pid,
            netns,
            root: Arc::new(PathBuf::new()),
            cgroup: OnceLock::from(cgroup.to_string()),
            names: OnceLock::from((comm.to_string(), cmdline.to_string())),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        let mut p = (*self.root).clone();
        p.push(self.pid.to_string());
        p.push(name);
        p
    }

    fn names(&self) -> &(String, String) {
        self.names.get_or_init(|| {
            let comm = String::from_utf8_lossy(&read_small(&self.file("comm")))
                .trim_end_matches('\n')
                .to_string();
            let cmdline = String::from_utf8_lossy(&read_small(&self.file("cmdline")))
                .trim_end_matches('\0')
                .replace('\0', " ");
            (comm, cmdline)
        })
    }

    /// Command name (`/proc/PID/comm`, trailing newline removed).
    pub fn comm(&self) -> &str {
        &self.names().0
    }

    /// Command line, arguments joined by spaces (empty for kernel threads).
    pub fn cmdline(&self) -> &str {
        &self.names().1
    }

    /// Raw content of `/proc/PID/cgroup` (one `hierarchy:controllers:path` line per
    /// hierarchy).
    pub fn cgroup(&self) -> &str {
        self.cgroup
            .get_or_init(|| String::from_utf8_lossy(&read_small(&self.file("cgroup"))).into_owned())
    }

    /// The cgroup path most useful to tell the owner: the cgroup v2 path (`0::` line) when
    /// it is more than `/`, else the v1 `name=systemd` path, else the first other
    /// non-root path, else `/` (or `None` when the file was empty).
    pub fn cgroup_path(&self) -> Option<&str> {
        cgroup_path(self.cgroup())
    }

    /// This process as the data model's [`ProcessRef`].
    pub fn to_ref(&self) -> ProcessRef {
        ProcessRef {
            pid: self.pid,
            comm: self.comm().to_string(),
            cmdline: self.cmdline().to_string(),
            netns: Some(self.netns),
            cgroup: self.cgroup_path().map(str::to_string),
        }
    }
}

/// Read a small /proc file with one `open`, as few `read`s as it takes (usually one) and
/// one `close`; empty when the process has gone or the file is unreadable.
fn read_small(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // procfs hands out everything available in one read when it fits.
                if n < buf.len() {
                    break;
                }
            }
        }
    }
    out
}

/// See [`ProcEntry::cgroup_path`]; works on the raw content of `/proc/PID/cgroup`.
pub fn cgroup_path(content: &str) -> Option<&str> {
    let mut v2 = None;
    let mut systemd = None;
    let mut other = None;
    for line in content.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hier), Some(ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if hier == "0" && ctrl.is_empty() {
            v2 = Some(path);
        } else if ctrl == "name=systemd" {
            systemd = Some(path);
        } else if other.is_none() && path != "/" {
            other = Some(path);
        }
    }
    [v2, systemd, other]
        .into_iter()
        .flatten()
        .find(|p| *p != "/")
        .or(v2)
        .or(systemd)
}

/// The result of one walk of `/proc`.
#[derive(Debug, Clone)]
pub struct ProcIndex {
    /// The `/proc` root that was read.
    pub proc_root: PathBuf,
    /// Every process found, by ascending pid.
    pub processes: Vec<ProcEntry>,
    /// Network namespace inode -> indexes into `processes`.
    by_netns: BTreeMap<u64, Vec<usize>>,
    /// The host's network namespace: the one of pid 1 in this /proc, when readable.
    pub host_netns: Option<u64>,
    /// Processes that exited during the scan (skipped).
    pub vanished: usize,
    /// Processes whose files root could not read (skipped): a process with capabilities
    /// the reader lacks (e.g. a supervisor holding CAP_SYS_RESOURCE) refuses ptrace-mode
    /// reads even to root. Without root, the first refusal is an error instead.
    pub denied: Vec<u32>,
}

/// Is this error "the process went away" (the file or the task disappeared)?
pub(crate) fn is_vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Parse a namespace link target such as `net:[4026531992]` into its inode.
pub fn parse_ns_link(target: &str) -> Option<u64> {
    let rest = target.strip_prefix("net:[")?;
    rest.strip_suffix(']')?.parse().ok()
}

/// What happened reading one process's file.
enum Read<T> {
    Ok(T),
    Vanished,
}

fn classify<T>(path: &Path, r: io::Result<T>) -> Result<Read<T>, Error> {
    match r {
        Ok(v) => Ok(Read::Ok(v)),
        Err(e) if is_vanished(&e) => Ok(Read::Vanished),
        Err(e) if is_denied(&e) => Err(Error::ProcPermission {
            path: path.to_path_buf(),
            source: e,
        }),
        Err(e) => Err(Error::Io {
            what: "cannot read process information",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Read the network namespace inode of one process (`PROC/PID/ns/net`). `Ok(None)` when
/// the process has gone (or is a zombie).
pub fn netns_of(proc_root: &Path, pid: u32) -> Result<Option<u64>, Error> {
    let path = proc_root.join(pid.to_string()).join("ns/net");
    match classify(&path, std::fs::read_link(&path))? {
        Read::Vanished => Ok(None),
        Read::Ok(t) => Ok(parse_ns_link(&t.to_string_lossy())),
    }
}

/// The numeric entries (processes) of a /proc directory, ascending.
pub fn list_pids(proc_root: &Path) -> Result<Vec<u32>, Error> {
    let rd = std::fs::read_dir(proc_root).map_err(|source| Error::Io {
        what: "cannot list processes in",
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut pids: Vec<u32> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

impl ProcIndex {
    /// Walk `proc_root` (e.g. `/proc`, or `/host/proc` with the host's /proc mounted there).
    ///
    /// Errors: the directory cannot be listed ([`Error::Io`]), or a process's files are
    /// not readable ([`Error::ProcPermission`]: run as root or with CAP_SYS_PTRACE).
    pub fn scan(proc_root: impl AsRef<Path>) -> Result<ProcIndex, Error> {
        let proc_root = proc_root.as_ref();
        let pids = list_pids(proc_root)?;
        // A real /proc always lists processes (at least the one reading it, or its pid 1):
        // an empty directory is a hostPath mount that failed, or the wrong path.
        if pids.is_empty() {
            return Err(Error::Io {
                what: "no process directory (a number) in",
                path: proc_root.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "it is not a mounted /proc: pass the host's /proc with --host-proc (in a pod, the host's /proc mounted e.g. at /host/proc)",
                ),
            });
        }
        let mut processes = Vec::with_capacity(pids.len());
        let mut vanished = 0;
        let mut denied = Vec::new();
        let mut first_denial = None;
        let root = is_root();
        let root_arc = Arc::new(proc_root.to_path_buf());
        for pid in pids {
            match netns_of(proc_root, pid) {
                Ok(Some(netns)) => processes.push(ProcEntry {
                    pid,
                    netns,
                    root: root_arc.clone(),
                    cgroup: OnceLock::new(),
                    names: OnceLock::new(),
                }),
                Ok(None) => vanished += 1,
                Err(e @ Error::ProcPermission { .. }) if !root => return Err(e),
                Err(e @ Error::ProcPermission { .. }) => {
                    denied.push(pid);
                    first_denial.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if processes.is_empty()
            && let Some(e) = first_denial
        {
            return Err(e);
        }
        let mut idx = ProcIndex::from_entries(proc_root, processes, vanished);
        idx.denied = denied;
        Ok(idx)
    }

    /// Build an index from entries already read (tests, or another source of processes).
    /// `host_netns` is taken from pid 1, else from pid 2 when it is `kthreadd`.
    pub fn from_entries(proc_root: &Path, mut processes: Vec<ProcEntry>, vanished: usize) -> ProcIndex {
        processes.sort_by_key(|p| p.pid);
        let mut by_netns: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, p) in processes.iter().enumerate() {
            by_netns.entry(p.netns).or_default().push(i);
        }
        // pid 1, else kthreadd (kernel threads always live in the initial namespace).
        let host_netns = processes
            .iter()
            .find(|p| p.pid == 1)
            .or_else(|| processes.iter().find(|p| p.pid == 2 && p.comm() == "kthreadd"))
            .map(|p| p.netns);
        ProcIndex {
            proc_root: proc_root.to_path_buf(),
            processes,
            by_netns,
            host_netns,
            vanished,
            denied: Vec::new(),
        }
    }

    /// Every network namespace inode that has at least one process, ascending.
    pub fn namespaces(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_netns.keys().copied()
    }

    /// The processes in one network namespace (empty when none).
    pub fn in_netns(&self, netns: u64) -> impl Iterator<Item = &ProcEntry> + '_ {
        self.by_netns
            .get(&netns)
            .into_iter()
            .flatten()
            .map(move |&i| &self.processes[i])
    }

    /// One process by pid.
    pub fn get(&self, pid: u32) -> Option<&ProcEntry> {
        self.processes
            .binary_search_by_key(&pid, |p| p.pid)
            .ok()
            .map(|i| &self.processes[i])
    }

    /// The pids in one network namespace, ascending.
    pub fn pids_in(&self, netns: u64) -> Vec<u32> {
        self.in_netns(netns).map(|p| p.pid).collect()
    }

    /// A file through which the namespace can be entered: `PROC/PID/ns/net` of its first
    /// process still alive, or `None` when all have exited.
    pub fn netns_file(&self, netns: u64) -> Option<PathBuf> {
        self.in_netns(netns).find_map(|p| {
            let path = self.proc_root.join(p.pid.to_string()).join("ns/net");
            (netns_of(&self.proc_root, p.pid).ok()? == Some(netns)).then_some(path)
        })
    }
}

/// One line of a `mountinfo` file (`/proc/PID/mountinfo`), the fields snat uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountLine<'a> {
    /// The root of the mount within its filesystem (`net:[INODE]` for a namespace file).
    pub root: &'a str,
    /// Where it is mounted, with mountinfo's octal escapes (`\040` for a space) undone.
    pub mount_point: PathBuf,
    /// The filesystem type (`nsfs`, `cgroup2`, ...).
    pub fstype: &'a str,
}

/// The lines of a `mountinfo` file (`ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS`). Lines that do not parse are skipped.
pub fn mount_lines(mountinfo: &str) -> impl Iterator<Item = MountLine<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let mut head = head.split_whitespace().skip(3);
        let root = head.next()?;
        let mount_point = PathBuf::from(unescape_mount(head.next()?));
        let fstype = tail.split_whitespace().next()?;
        Some(MountLine {
            root,
            mount_point,
            fstype,
        })
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b
            .get(i + 1..i + 4)
            .and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok())
        {
            Some(v) if b[i] == b'\\' => {
                out.push(v);
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Of `wanted`, the network namespaces that exist on the node although no process is in
/// them, so [`ProcIndex::scan`] does not see them, each with a file to enter it by: one
/// only a thread has entered (`PROC/PID/task/TID/ns/net`), or one only a mount keeps (`ip
/// netns add` and CNI plugins bind-mount namespaces under `/run/netns`: an `nsfs` mount in
/// `PROC/1/mountinfo`, entered through pid 1's view of the filesystem, its `root` link
/// followed by the mount point, which also works when snat runs in a container with the
/// host's /proc). Best effort: what cannot be read (a
/// process or thread exiting meanwhile, no permission) is skipped. Stops early once every
/// wanted namespace is found.
pub fn netns_without_process(proc_root: &Path, wanted: &BTreeSet<u64>) -> BTreeMap<u64, PathBuf> {
    let mut found = BTreeMap::new();
    if wanted.is_empty() {
        return found;
    }
    if let Ok(m) = std::fs::read_to_string(proc_root.join("1/mountinfo")) {
        for l in mount_lines(&m).filter(|l| l.fstype == "nsfs") {
            if let Some(n) = parse_ns_link(l.root).filter(|n| wanted.contains(n)) {
                let rel = l.mount_point.strip_prefix("/").unwrap_or(&l.mount_point);
                found.entry(n).or_insert_with(|| proc_root.join("1/root").join(rel));
            }
        }
    }
    for pid in list_pids(proc_root).unwrap_or_default() {
        if found.len() == wanted.len() {
            break;
        }
        let pid = pid.to_string();
        let Ok(tasks) = std::fs::read_dir(proc_root.join(&pid).join("task")) else {
            continue;
        };
        for t in tasks.filter_map(Result::ok) {
            // The main thread's namespace is the process's, which the scan has seen.
            if t.file_name().to_str() == Some(pid.as_str()) {
                continue;
            }
            let file = t.path().join("ns/net");
            if let Some(n) = std::fs::read_link(&file)
                .ok()
                .and_then(|l| parse_ns_link(&l.to_string_lossy()))
                .filter(|n| wanted.contains(n))
            {
                found.entry(n).or_insert(file);
            }
        }
    }
    found
}

/// Parse a file-descriptor link target such as `socket:[123456]` into the socket inode.
pub fn parse_socket_link(target: &[u8]) -> Option<u64> {
    let rest = target.strip_prefix(b"socket:[")?;
    let digits = rest.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Map socket inodes to the process holding them, reading `/proc/PID/fd` of the given
/// processes only. When several processes hold one socket (inherited across `fork`), the
/// lowest pid wins. Processes that exit meanwhile are skipped; so are processes root may
/// not read (see [`ProcIndex::denied`]); without root, a permission error says that root
/// or CAP_SYS_PTRACE is needed.
pub fn socket_owners(proc_root: &Path, pids: &[u32]) -> Result<HashMap<u64, u32>, Error> {
    use std::os::unix::ffi::OsStrExt;
    let mut pids = pids.to_vec();
    pids.sort_unstable();
    pids.dedup();
    let mut owners = HashMap::new();
    let root = is_root();
    for pid in pids {
        let fd_dir = proc_root.join(pid.to_string()).join("fd");
        let rd = match classify(&fd_dir, std::fs::read_dir(&fd_dir)) {
            Ok(Read::Ok(rd)) => rd,
            Ok(Read::Vanished) => continue,
            Err(Error::ProcPermission { .. }) if root => continue,
            Err(e) => return Err(e),
        };
        for ent in rd {
            let Ok(ent) = ent else { continue };
            // An fd closed between readdir and readlink is not an error.
            let Ok(target) = std::fs::read_link(ent.path()) else {
                continue;
            };
            if let Some(inode) = parse_socket_link(target.as_os_str().as_bytes()) {
                owners.entry(inode).or_insert(pid);
            }
        }
    }
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("net:[4026531992]", Some(4026531992))]
    #[case("net:[1]", Some(1))]
    #[case("mnt:[4026531992]", None)]
    #[case("net:[]", None)]
    #[case("net:[12x]", None)]
    #[case("net:[4026531992", None)]
    fn ns_links(#[case] s: &str, #[case] want: Option<u64>) {
        assert_eq!(parse_ns_link(s), want);
    }

    #[rstest]
    #[case(b"socket:[98765]", Some(98765))]
    #[case(b"pipe:[98765]", None)]
    #[case(b"/dev/null", None)]
    #[case(b"socket:[-1]", None)]
    #[case(b"socket:[", None)]
    fn socket_links(#[case] s: &[u8], #[case] want: Option<u64>) {
        assert_eq!(parse_socket_link(s), want);
    }

    #[rstest]
    #[case("0::/kubepods.slice/x.scope\n", Some("/kubepods.slice/x.scope"))]
    #[case(
        "9:name=systemd:/kubepods/burstable/podabc/123\n4:memory:/other\n0::/\n",
        Some("/kubepods/burstable/podabc/123")
    )]
    #[case("4:memory:/process_api/1\n0::/\n", Some("/process_api/1"))]
    #[case("0::/\n", Some("/"))]
    #[case("", None)]
    #[case("garbage", None)]
    fn cgroup_paths(#[case] content: &str, #[case] want: Option<&str>) {
        assert_eq!(cgroup_path(content), want);
    }

    /// A fake /proc tree: processes whose files are missing (exited mid-scan) are skipped.
    #[test]
    fn scan_skips_vanished_processes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mk = |pid: u32, ns: u64, comm: &str, cg: &str| {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(d.join("ns")).unwrap();
            std::os::unix::fs::symlink(format!("net:[{ns}]"), d.join("ns/net")).unwrap();
            std::fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(d.join("cmdline"), format!("{comm}\0--flag\0")).unwrap();
            std::fs::write(d.join("cgroup"), cg).unwrap();
        };
        mk(1, 100, "init", "0::/init.scope\n");
        mk(20, 200, "app", "0::/kubepods/pod1/abc\n");
        mk(21, 200, "side car", "0::/kubepods/pod1/def\n");
        // pid 30: exited after readdir (no files at all); pid 31: its namespace link gone
        // (a zombie); pid 32: exits after the scan, before its details are read.
        std::fs::create_dir_all(root.join("30")).unwrap();
        mk(31, 200, "zombie", "");
        std::fs::remove_file(root.join("31/ns/net")).unwrap();
        mk(32, 200, "late", "0::/x\n");
        std::fs::create_dir_all(root.join("self")).unwrap();

        let idx = ProcIndex::scan(root).unwrap();
        assert_eq!(idx.vanished, 2);
        assert_eq!(idx.namespaces().collect::<Vec<_>>(), vec![100, 200]);
        assert_eq!(idx.pids_in(200), vec![20, 21, 32]);
        assert_eq!(idx.host_netns, Some(100));
        let p = idx.get(21).unwrap();
        assert_eq!(p.comm(), "side car");
        assert_eq!(p.cmdline(), "side car --flag");
        assert_eq!(p.to_ref().cgroup.as_deref(), Some("/kubepods/pod1/def"));
        assert_eq!(idx.netns_file(200), Some(root.join("20/ns/net")));
        assert_eq!(idx.netns_file(999), None);
        std::fs::remove_dir_all(root.join("32")).unwrap();
        let late = idx.get(32).unwrap();
        assert_eq!((late.comm(), late.cgroup(), late.cgroup_path()), ("", "", None));
    }

    #[rstest]
    #[case::ip_netns_add(
        "44 43 0:4 net:[4026532177] /run/netns/probe rw shared:2 - nsfs nsfs rw",
        Some(("net:[4026532177]", "/run/netns/probe", "nsfs"))
    )]
    #[case::optional_fields_and_escapes(
        "30 23 0:26 / /sys/fs/cgroup/my\\040cg\\134x rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw",
        Some(("/", "/sys/fs/cgroup/my cg\\x", "cgroup2"))
    )]
    #[case::bad_escape_kept("1 2 0:4 / /a\\09 rw - tmpfs tmpfs rw", Some(("/", "/a\\09", "tmpfs")))]
    #[case::no_separator("44 43 0:4 net:[9] /run/netns/x rw nsfs", None)]
    #[case::separator_only("- nsfs", None)]
    #[case::too_few_fields("44 43 0:4 net:[9] - nsfs nsfs rw", None)]
    #[case::empty("", None)]
    fn mountinfo_lines(#[case] line: &str, #[case] want: Option<(&str, &str, &str)>) {
        let got: Vec<MountLine<'_>> = mount_lines(line).collect();
        let want: Vec<MountLine<'_>> = want
            .into_iter()
            .map(|(root, mp, fstype)| MountLine {
                root,
                mount_point: PathBuf::from(mp),
                fstype,
            })
            .collect();
        assert_eq!(got, want);
    }

    /// A fake /proc tree: a namespace a mount keeps and one a thread (not its process's
    /// main thread) is in are found; one only a main thread is in, which the scan sees,
    /// and one nothing holds are not.
    #[test]
    fn namespaces_without_a_process_are_found_by_threads_and_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let task = |pid: u32, tid: u32, ns: u64| {
            let d = root.join(format!("{pid}/task/{tid}/ns"));
            std::fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::symlink(format!("net:[{ns}]"), d.join("net")).unwrap();
        };
        task(1, 1, 100);
        task(40, 40, 300);
        task(40, 41, 200);
        std::fs::write(
            root.join("1/mountinfo"),
            "44 43 0:4 net:[500] /run/netns/a rw shared:2 - nsfs nsfs rw\n\
             45 43 0:4 mnt:[600] /run/mnt rw shared:2 - nsfs nsfs rw\n\
             46 43 0:21 net:[300] /x rw - tmpfs tmpfs rw\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("77")).unwrap(); // exited: no task directory
        let wanted: BTreeSet<u64> = [200, 300, 500, 600, 999].into();
        assert_eq!(
            netns_without_process(root, &wanted),
            [
                (200, root.join("40/task/41/ns/net")),
                (500, root.join("1").join("root").join("run").join("netns").join("a"))
            ]
            .into()
        );
        assert!(netns_without_process(root, &BTreeSet::new()).is_empty());
        assert!(netns_without_process(&root.join("missing"), &wanted).is_empty());
    }

    #[test]
    fn scan_of_a_directory_without_processes_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("self")).unwrap();
        let err = ProcIndex::scan(dir.path()).unwrap_err().to_string();
        assert!(err.starts_with("no process directory (a number) in "), "{err}");
        assert!(
            err.contains("it is not a mounted /proc: pass the host's /proc with --host-proc"),
            "{err}"
        );
    }

    #[test]
    fn scan_of_missing_root_is_an_error() {
        let err = ProcIndex::scan("/nonexistent-proc-root-for-test").unwrap_err();
        assert!(err.to_string().contains("cannot list processes"), "{err}");
    }

    /// The real /proc: our own process is found, in the namespace its link names.
    #[test]
    fn scan_real_proc_finds_self() {
        let idx = ProcIndex::scan("/proc").unwrap();
        let me = std::process::id();
        let entry = idx.get(me).expect("own process in the index");
        assert_eq!(Some(entry.netns), netns_of(Path::new("/proc"), me).unwrap());
        assert!(!entry.cgroup().is_empty());
    }

    #[test]
    fn socket_owners_finds_own_socket() {
        use std::os::unix::fs::MetadataExt;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino();
        let owners = socket_owners(Path::new("/proc"), &[std::process::id()]).unwrap();
        assert_eq!(owners.get(&ino), Some(&std::process::id()));
    }
}

//! Container and pod identity from `/proc/PID/cgroup`.
//!
//! The kubelet puts every pod in a cgroup named after its UID and QoS class, and the
//! container runtime puts each container in a child cgroup named after the container id,
//! so a process's cgroup path says which pod and container it belongs to without asking
//! any API. The naming depends on the cgroup driver: the systemd driver writes
//! `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`,
//! the cgroupfs driver `/kubepods/burstable/pod<uid>/<id>`, and misconfigured nodes mix the
//! two (`/system.slice/containerd.service/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`).
//! [`parse`] detects the layout from the names instead of assuming one, reads cgroup v1,
//! v2 and hybrid files (choosing the line that names a pod), and returns a
//! [`CgroupIdentity`]. It cannot tell a pod's sandbox (pause) process from its containers:
//! for that, [`sandbox_id_from_shim_cmdline`] reads the sandbox id off the containerd
//! shim's command line, as `pstree -aps` shows it in the support article.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::{ContainerRef, Qos, Runtime};

/// How the pod's (or process's) cgroups are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupLayout {
    /// systemd driver: `.slice` and `.scope` units, `-` in UIDs escaped as `_`.
    Systemd,
    /// cgroupfs driver: plain directories (`kubepods/burstable/pod<uid>/<id>`).
    Cgroupfs,
    /// Both namings in one path, e.g. a systemd pod slice under `containerd.service` with
    /// a `slice:prefix:id` leaf (the runtime and the kubelet disagree on the driver).
    Mixed,
}

/// What a process's cgroup says about it.
///
/// JSON: `path`, `hierarchy`, `controllers`, `deleted`, `pod_uid` (with dashes; null for
/// processes outside pods), `static_pod_uid`, `qos`, `container` (`{runtime, id}`),
/// `conmon`, `layout` (`systemd`, `cgroupfs`, `mixed` or null).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CgroupIdentity {
    /// The cgroup path chosen: the v2 path if it names a pod, else the most specific v1
    /// path that does, else the v2 path (or the most specific v1 path).
    pub path: String,
    /// Hierarchy id of the chosen line (0 for cgroup v2).
    pub hierarchy: u32,
    /// Controllers of the chosen line (empty for cgroup v2, e.g. `pids` or
    /// `name=systemd` for v1).
    pub controllers: String,
    /// Whether the kernel marked the cgroup ` (deleted)`: the process is exiting.
    pub deleted: bool,
    /// Pod UID with dashes (systemd's `_` escapes undone), lower case. Static pods keep
    /// their 32 hex digits.
    pub pod_uid: Option<String>,
    /// Whether `pod_uid` is a static (mirror) pod's 32-hex hash rather than a UUID.
    pub static_pod_uid: bool,
    /// QoS class from the path (Guaranteed when the pod has no QoS level); None outside pods.
    pub qos: Option<Qos>,
    /// The container, when the path names one.
    pub container: Option<ContainerRef>,
    /// Whether the cgroup is CRI-O's `crio-conmon-<id>`: the container's monitor process,
    /// not the container itself (`container` then holds the monitored container's id).
    pub conmon: bool,
    /// How the cgroups are named; None when the path says nothing about it (e.g. `/`).
    pub layout: Option<CgroupLayout>,
}

impl CgroupIdentity {
    /// Whether the chosen line is cgroup v2 (the unified hierarchy).
    pub fn is_v2(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }
}

/// One `hierarchy:controllers:path` line.
struct Line<'a> {
    hierarchy: u32,
    controllers: &'a str,
    path: &'a str,
    deleted: bool,
}

/// What one path names.
#[derive(Default)]
struct PathInfo {
    pod: Option<PodPart>,
    container: Option<ContainerPart>,
    /// The pod came from a `slice:prefix:id` component.
    colon_form: bool,
    /// Some component is a systemd unit (`.slice`, `.scope`, `.service`).
    systemd_units: bool,
    depth: usize,
}

struct PodPart {
    uid: String,
    is_static: bool,
    qos: Qos,
    systemd: bool,
}

struct ContainerPart {
    container: ContainerRef,
    conmon: bool,
    systemd: bool,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID as written in a cgroup name: a UUID with `sep` as its separator, or 32 hex
/// digits (static pods). Returns the dashed, lower-case UID and whether it is static.
fn pod_uid(raw: &str, sep: u8) -> Option<(String, bool)> {
    let b = raw.as_bytes();
    if b.len() == 32 && is_hex(raw) {
        return Some((raw.to_ascii_lowercase(), true));
    }
    if b.len() != 36 {
        return None;
    }
    let shaped = b.iter().enumerate().all(|(i, &c)| match i {
        8 | 13 | 18 | 23 => c == sep,
        _ => c.is_ascii_hexdigit(),
    });
    shaped.then(|| (raw.replace(sep as char, "-").to_ascii_lowercase(), false))
}

/// `[<prefix>-]kubepods[-burstable|-besteffort]-pod<uid_>.slice` (systemd driver).
fn systemd_pod(tok: &str) -> Option<PodPart> {
    let stem = tok.strip_suffix(".slice")?;
    let at = stem.rfind("kubepods")?;
    if at > 0 && !stem[..at].ends_with('-') {
        return None;
    }
    let rest = &stem[at + "kubepods".len()..];
    let (qos, rest) = if let Some(r) = rest.strip_prefix("-burstable") {
        (Qos::Burstable, r)
    } else if let Some(r) = rest.strip_prefix("-besteffort") {
        (Qos::Besteffort, r)
    } else {
        (Qos::Guaranteed, rest)
    };
    let (uid, is_static) = pod_uid(rest.strip_prefix("-pod")?, b'_')?;
    Some(PodPart {
        uid,
        is_static,
        qos,
        systemd: true,
    })
}

/// `kubepods/[burstable|besteffort/]pod<uid>` (cgroupfs driver); `parents` are the
/// components above `tok`, nearest last.
///
/// Read from inside a cgroup namespace (snat in a container with a private cgroupns),
/// paths outside the namespace's root are relative to it and climb out with `..`, e.g.
/// `/../../../burstable/pod<uid>/<id>`: there `..` stands for the hidden `kubepods`.
fn cgroupfs_pod(tok: &str, parents: &[&str]) -> Option<PodPart> {
    let (uid, is_static) = pod_uid(tok.strip_prefix("pod")?, b'-')?;
    let qos = match parents {
        [.., "kubepods" | ".."] => Qos::Guaranteed,
        [.., "kubepods" | "..", "burstable"] => Qos::Burstable,
        [.., "kubepods" | "..", "besteffort"] => Qos::Besteffort,
        _ => return None,
    };
    Some(PodPart {
        uid,
        is_static,
        qos,
        systemd: false,
    })
}

const RUNTIME_PREFIXES: [(&str, Runtime, bool); 4] = [
    ("cri-containerd-", Runtime::Containerd, false),
    ("crio-conmon-", Runtime::Crio, true),
    ("crio-", Runtime::Crio, false),
    ("docker-", Runtime::Docker, false),
];

/// A container id of a prefixed name: hex, 12 to 64 digits.
fn container_id(s: &str) -> Option<String> {
    (is_hex(s) && (12..=64).contains(&s.len())).then(|| s.to_ascii_lowercase())
}

/// `cri-containerd-<id>.scope`, `crio-<id>`, `crio-conmon-<id>.scope`, `docker-<id>.scope`,
/// or a bare 64-hex directory (cgroupfs; Docker when its parent is `docker`).
fn container_token(tok: &str, parent: Option<&str>) -> Option<ContainerPart> {
    let (stem, systemd) = match tok.strip_suffix(".scope") {
        Some(s) => (s, true),
        None => (tok, false),
    };
    for (prefix, runtime, conmon) in RUNTIME_PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix).and_then(container_id) {
            return Some(ContainerPart {
                container: ContainerRef { runtime, id },
                conmon,
                systemd,
            });
        }
    }
    if !systemd && tok.len() == 64 && is_hex(tok) {
        let runtime = if parent == Some("docker") {
            Runtime::Docker
        } else {
            Runtime::Unknown
        };
        return Some(ContainerPart {
            container: ContainerRef {
                runtime,
                id: tok.to_ascii_lowercase(),
            },
            conmon: false,
            systemd: false,
        });
    }
    None
}

/// The `slice:prefix:id` component of the mixed layout.
fn colon_component(comp: &str) -> Option<(PodPart, Option<ContainerPart>)> {
    let mut parts = comp.splitn(3, ':');
    let (slice, prefix, id) = (parts.next()?, parts.next()?, parts.next()?);
    let pod = systemd_pod(slice)?;
    let container = container_token(&format!("{prefix}-{id}"), None).or_else(|| {
        container_id(id).map(|id| ContainerPart {
            container: ContainerRef {
                runtime: Runtime::Unknown,
                id,
            },
            conmon: false,
            systemd: false,
        })
    });
    Some((pod, container))
}

fn analyse(path: &str) -> PathInfo {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut info = PathInfo {
        depth: comps.len(),
        ..PathInfo::default()
    };
    info.systemd_units = comps.iter().any(|c| {
        let c = c.split(':').next().unwrap_or(c);
        c.ends_with(".slice") || c.ends_with(".scope") || c.ends_with(".service")
    });
    let mut last_container = None;
    for (i, comp) in comps.iter().enumerate() {
        if info.pod.is_none() {
            if comp.contains(':') {
                if let Some((pod, container)) = colon_component(comp) {
                    info.pod = Some(pod);
                    info.colon_form = true;
                    info.container = container;
                    continue;
                }
            } else if let Some(pod) = systemd_pod(comp).or_else(|| cgroupfs_pod(comp, &comps[..i])) {
                info.pod = Some(pod);
                continue;
            }
        }
        let parent = i.checked_sub(1).map(|p| comps[p]);
        if let Some(c) = container_token(comp, parent) {
            if info.pod.is_some() {
                if info.container.is_none() {
                    info.container = Some(c);
                }
            } else {
                last_container = Some(c);
            }
        }
    }
    if info.pod.is_none() {
        info.container = last_container;
    }
    info
}

fn layout(info: &PathInfo) -> Option<CgroupLayout> {
    let container_systemd = info.container.as_ref().map(|c| c.systemd);
    match &info.pod {
        Some(_) if info.colon_form => Some(CgroupLayout::Mixed),
        Some(pod) => Some(match (pod.systemd, container_systemd) {
            (true, Some(false)) | (false, Some(true)) => CgroupLayout::Mixed,
            (true, _) => CgroupLayout::Systemd,
            (false, _) => CgroupLayout::Cgroupfs,
        }),
        None => match container_systemd {
            Some(true) => Some(CgroupLayout::Systemd),
            Some(false) => Some(CgroupLayout::Cgroupfs),
            None if info.systemd_units => Some(CgroupLayout::Systemd),
            None => None,
        },
    }
}

fn bad_line(line: usize, text: &str, reason: &'static str) -> Error {
    let mut text: String = text.chars().take(80).collect();
    if text.is_empty() {
        text = "(empty)".into();
    }
    Error::NotCgroupFile { line, text, reason }
}

fn parse_line(n: usize, raw: &str) -> Result<Line<'_>, Error> {
    let mut parts = raw.splitn(3, ':');
    let (Some(h), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad_line(n, raw, "expected hierarchy:controllers:path"));
    };
    let hierarchy = h
        .parse::<u32>()
        .map_err(|_| bad_line(n, raw, "the hierarchy id is not a number"))?;
    if !path.starts_with('/') {
        return Err(bad_line(n, raw, "the path does not start with /"));
    }
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Ok(Line {
        hierarchy,
        controllers,
        path,
        deleted,
    })
}

/// Tie-break between v1 lines that are equally specific: `pids`, then `memory`, then
/// `name=systemd`, then the rest, then file order.
fn controller_rank(controllers: &str) -> u8 {
    let has = |c: &str| controllers.split(',').any(|x| x == c);
    if has("pids") {
        0
    } else if has("memory") {
        1
    } else if has("name=systemd") {
        2
    } else {
        3
    }
}

/// Reads the content of a `/proc/PID/cgroup` file.
///
/// Errors only when the content is not a cgroup file at all (empty, or a line that is not
/// `hierarchy:controllers:path`), naming the offending line (1-based).
pub fn parse(content: &str) -> Result<CgroupIdentity, Error> {
    let mut lines = Vec::new();
    for (i, raw) in content.lines().enumerate() {
        let raw = raw.trim_end_matches('\r');
        if raw.trim().is_empty() {
            continue;
        }
        lines.push(parse_line(i + 1, raw)?);
    }
    if lines.is_empty() {
        return Err(bad_line(1, "", "the file has no cgroup lines"));
    }
    let analysed: Vec<(Line<'_>, PathInfo)> = lines
        .into_iter()
        .map(|l| {
            let info = analyse(l.path);
            (l, info)
        })
        .collect();
    let is_v2 = |l: &Line<'_>| l.hierarchy == 0 && l.controllers.is_empty();
    // Most specific v1 line: names a pod, then a container, then deepest, then controller rank.
    let best_v1 = analysed.iter().filter(|(l, _)| !is_v2(l)).min_by_key(|(l, info)| {
        (
            info.pod.is_none(),
            info.container.is_none(),
            std::cmp::Reverse(info.depth),
            controller_rank(l.controllers),
        )
    });
    let v2 = analysed.iter().find(|(l, _)| is_v2(l));
    let chosen = match (v2, best_v1) {
        (Some(v2), _) if v2.1.pod.is_some() => v2,
        (_, Some(v1)) if v1.1.pod.is_some() => v1,
        (Some(v2), Some(v1)) if v2.1.container.is_none() && v1.1.container.is_some() => v1,
        (Some(v2), _) => v2,
        (None, Some(v1)) => v1,
        // Unreachable: `lines` is not empty, so one of the two exists.
        (None, None) => return Err(bad_line(1, "", "the file has no cgroup lines")),
    };
    let (line, info) = chosen;
    Ok(CgroupIdentity {
        path: line.path.to_string(),
        hierarchy: line.hierarchy,
        controllers: line.controllers.to_string(),
        deleted: line.deleted,
        pod_uid: info.pod.as_ref().map(|p| p.uid.clone()),
        static_pod_uid: info.pod.as_ref().is_some_and(|p| p.is_static),
        qos: info.pod.as_ref().map(|p| p.qos),
        container: info.container.as_ref().map(|c| c.container.clone()),
        conmon: info.container.as_ref().is_some_and(|c| c.conmon),
        layout: layout(info),
    })
}

/// Reads and parses `<proc_root>/<pid>/cgroup`.
///
/// Returns `Ok(None)` when the process has gone (the file is missing, the read fails with
/// ESRCH, or it reads empty because the process is being reaped): /proc races are normal
/// during a scan. Other read failures are errors, as is content that is not a cgroup file.
pub fn read(proc_root: &Path, pid: u32) -> Result<Option<CgroupIdentity>, Error> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(source) => {
            return Err(Error::Io {
                what: "cannot read cgroup file",
                path,
                source,
            });
        }
    };
    let content = String::from_utf8_lossy(&bytes);
    if content.trim().is_empty() {
        return Ok(None);
    }
    parse(&content).map(Some)
}

/// The pod sandbox id from a containerd shim's command line (`containerd-shim-runc-v2
/// -namespace k8s.io -id <sandbox id> -address ...`), as `pstree -aps` shows it: the id
/// the support article matches against `crictl pods`/`crictl ps` POD ID.
///
/// Accepts `-id X`, `--id X`, `-id=X` and `--id=X`. Returns None when `cmdline[0]` is not a
/// containerd shim or has no id.
pub fn sandbox_id_from_shim_cmdline(cmdline: &[String]) -> Option<String> {
    let argv0 = cmdline.first()?;
    let name = argv0.rsplit('/').next().unwrap_or(argv0);
    if !name.starts_with("containerd-shim") {
        return None;
    }
    let mut args = cmdline[1..].iter();
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-id" | "--id" => args.next().map(String::as_str),
            other => other.strip_prefix("-id=").or_else(|| other.strip_prefix("--id=")),
        };
        if let Some(v) = value {
            return (!v.is_empty() && !v.starts_with('-')).then(|| v.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/cgroup/");
    const UID1: &str = "89a0fc0b-8f55-4af1-a313-9a13cc840cbb";
    const UID2: &str = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";
    const UID3: &str = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
    const UID4: &str = "0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b";
    const UID5: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    const STATIC: &str = "2f8e1b7c9d3a4e5f6a7b8c9d0e1f2a3b";
    const C1: &str = "3f2d5c1e8a9b4c7d6e5f40312a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const C2: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const C3: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const C4: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const C5: &str = "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f";

    use CgroupLayout::{Cgroupfs, Mixed, Systemd};
    use Qos::{Besteffort, Burstable, Guaranteed};
    use Runtime::{Containerd, Crio, Docker, Unknown};

    /// (file, pod uid, qos, runtime and id, layout, chosen line's controllers)
    #[rstest]
    #[case("v2-systemd-containerd-burstable", Some(UID1), Some(Burstable), Some((Containerd, C1)), Some(Systemd), "")]
    #[case("v2-systemd-guaranteed", Some(UID2), Some(Guaranteed), Some((Containerd, C2)), Some(Systemd), "")]
    #[case("v2-cgroupfs-besteffort", Some(UID3), Some(Besteffort), Some((Unknown, C3)), Some(Cgroupfs), "")]
    #[case("v1-systemd-docker", Some(UID4), Some(Burstable), Some((Docker, C4)), Some(Systemd), "pids")]
    #[case("v1-cgroupfs-crio", Some(UID5), Some(Burstable), Some((Crio, C5)), Some(Cgroupfs), "pids")]
    #[case("crio-conmon", Some(UID5), Some(Besteffort), Some((Crio, C5)), Some(Systemd), "")]
    #[case("static-pod", Some(STATIC), Some(Burstable), Some((Containerd, C1)), Some(Systemd), "")]
    #[case("mixed", Some(UID1), Some(Burstable), Some((Containerd, C2)), Some(Mixed), "")]
    #[case("system-service", None, None, None, Some(Systemd), "")]
    #[case("user-session", None, None, None, Some(Systemd), "")]
    #[case("root", None, None, None, None, "")]
    #[case("hybrid-v1-cgroupfs-v2-unnamed", Some(UID2), Some(Guaranteed), Some((Unknown, C3)), Some(Cgroupfs), "pids")]
    #[case("hybrid-systemd", Some(UID3), Some(Besteffort), Some((Containerd, C4)), Some(Systemd), "")]
    #[case("kind-nested-systemd", Some(UID3), Some(Besteffort), Some((Containerd, C2)), Some(Systemd), "")]
    #[case("docker-no-pod", None, None, Some((Docker, C4)), Some(Systemd), "")]
    #[case("v2-cgroupfs-deleted", Some(UID1), Some(Burstable), Some((Unknown, C1)), Some(Cgroupfs), "")]
    fn layouts(
        #[case] file: &str,
        #[case] uid: Option<&str>,
        #[case] qos: Option<Qos>,
        #[case] container: Option<(Runtime, &str)>,
        #[case] layout: Option<CgroupLayout>,
        #[case] controllers: &str,
    ) {
        let content = std::fs::read_to_string(format!("{DATA}{file}.txt")).unwrap();
        let id = parse(&content).unwrap();
        assert_eq!(id.pod_uid.as_deref(), uid, "{file}: uid");
        assert_eq!(id.qos, qos, "{file}: qos");
        let got = id.container.as_ref().map(|c| (c.runtime, c.id.as_str()));
        assert_eq!(got, container, "{file}: container");
        assert_eq!(id.layout, layout, "{file}: layout");
        assert_eq!(id.controllers, controllers, "{file}: chosen line");
        assert_eq!(id.static_pod_uid, file == "static-pod", "{file}: static");
        assert_eq!(id.conmon, file == "crio-conmon", "{file}: conmon");
        assert_eq!(id.deleted, file == "v2-cgroupfs-deleted", "{file}: deleted");
        assert!(content.contains(&id.path), "{file}: the path comes from the file");
        assert!(!id.path.ends_with("(deleted)"));
    }

    #[test]
    fn hybrid_prefers_the_v1_line_that_names_the_pod() {
        let content = std::fs::read_to_string(format!("{DATA}hybrid-v1-cgroupfs-v2-unnamed.txt")).unwrap();
        let id = parse(&content).unwrap();
        assert!(!id.is_v2());
        assert_eq!(
            id.hierarchy, 10,
            "pids is preferred over memory (line 11) at equal depth"
        );
        assert!(id.path.starts_with("/kubepods/pod"));
    }

    #[rstest]
    #[case("", 1)]
    #[case("\n\n", 1)]
    #[case("hello world", 1)]
    #[case("0::/\nnot a cgroup line", 2)]
    #[case("x::/", 1)]
    #[case("0::relative/path", 1)]
    #[case("Name:\tbash\nUmask:\t0022", 1)]
    fn not_a_cgroup_file(#[case] content: &str, #[case] line: usize) {
        match parse(content) {
            Err(Error::NotCgroupFile { line: l, .. }) => assert_eq!(l, line, "{content:?}"),
            other => panic!("{content:?}: {other:?}"),
        }
        let msg = parse(content).unwrap_err().to_string();
        assert!(msg.contains(&format!("line {line}")), "{msg}");
    }

    #[rstest]
    // Not pods: look-alikes must not be taken for pods or containers.
    #[case("0::/kubepods.slice/kubepods-burstable.slice")]
    #[case("0::/kubepods/burstable")]
    #[case("0::/kubepods-podman.slice/x.scope")]
    #[case("0::/system.slice/pod1b4e28ba-2fa1-41d2-883f-0016d3cca427")]
    #[case("0::/kubepods/pod1b4e28ba_2fa1_41d2_883f_0016d3cca427")]
    #[case("0::/kubepods.slice/kubepods-pod1b4e28ba-2fa1-41d2-883f-0016d3cca427.slice")]
    #[case("0::/kubepods.slice/kubepods-podzz4e28ba_2fa1_41d2_883f_0016d3cca427.slice")]
    fn look_alikes_are_not_pods(#[case] content: &str) {
        assert_eq!(parse(content).unwrap().pod_uid, None, "{content}");
    }

    #[rstest]
    // A systemd pod slice with a cgroupfs-style leaf, and the reverse: the drivers disagree.
    #[case(format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/{C1}", UID1.replace('-', "_")), CgroupLayout::Mixed)]
    #[case(format!("0::/kubepods/burstable/pod{UID1}/cri-containerd-{C1}.scope"), CgroupLayout::Mixed)]
    #[case(format!("0::/kubepods/burstable/pod{UID1}/crio-{C1}"), CgroupLayout::Cgroupfs)]
    #[case(format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{C1}.scope", UID1.replace('-', "_")), CgroupLayout::Systemd)]
    fn layout_is_detected_from_names(#[case] content: String, #[case] layout: CgroupLayout) {
        let id = parse(&content).unwrap();
        assert_eq!(
            (id.pod_uid.as_deref(), id.layout),
            (Some(UID1), Some(layout)),
            "{content}"
        );
        assert_eq!(id.container.unwrap().id, C1);
    }

    /// Seen from inside a private cgroup namespace, a cgroupfs pod's path is relative to
    /// the namespace's root: `..` climbs past the hidden `kubepods`.
    #[rstest]
    #[case(format!("0::/../../../burstable/pod{UID1}/{C1}"), Some(UID1), Some(Burstable))]
    #[case(format!("0::/../besteffort/pod{UID3}/{C1}"), Some(UID3), Some(Besteffort))]
    #[case(format!("0::/../../pod{UID2}/{C1}"), Some(UID2), Some(Guaranteed))]
    #[case(format!("0::/../../../burstable/pod{STATIC}/{C1}"), Some(STATIC), Some(Burstable))]
    #[case(format!("12:pids:/../../burstable/pod{UID1}/{C1}\n0::/"), Some(UID1), Some(Burstable))]
    // Not pods: no `kubepods` (or `..` in its place) above the QoS level or the pod.
    #[case(format!("0::/../other/pod{UID1}/{C1}"), None, None)]
    #[case(format!("0::/../burstable/extra/pod{UID1}/{C1}"), None, None)]
    #[case("0::/../../burstable".to_string(), None, None)]
    fn cgroupfs_paths_relative_to_a_cgroup_namespace(
        #[case] content: String,
        #[case] uid: Option<&str>,
        #[case] qos: Option<Qos>,
    ) {
        let id = parse(&content).unwrap();
        assert_eq!((id.pod_uid.as_deref(), id.qos), (uid, qos), "{content}");
        if uid.is_some() {
            assert_eq!(id.container.unwrap().id, C1, "{content}");
            assert_eq!(id.layout, Some(Cgroupfs), "{content}");
        }
    }

    #[test]
    fn pod_without_container_is_the_pod_cgroup() {
        let id = parse("0::/kubepods.slice/kubepods-pod1b4e28ba_2fa1_41d2_883f_0016d3cca427.slice\n").unwrap();
        assert_eq!(id.pod_uid.as_deref(), Some(UID2));
        assert_eq!(id.qos, Some(Guaranteed));
        assert_eq!(id.container, None);
    }

    #[test]
    fn dind_inside_a_pod_names_the_pod_container() {
        let content = format!("0::/kubepods/burstable/pod{UID1}/{C1}/docker/{C2}\n");
        let id = parse(&content).unwrap();
        assert_eq!(id.container.unwrap().id, C1);
    }

    #[test]
    fn read_from_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        std::fs::copy(format!("{DATA}mixed.txt"), dir.path().join("42/cgroup")).unwrap();
        std::fs::create_dir(dir.path().join("43")).unwrap();
        std::fs::write(dir.path().join("43/cgroup"), "").unwrap();
        std::fs::create_dir(dir.path().join("44")).unwrap();
        std::fs::write(dir.path().join("44/cgroup"), "garbage").unwrap();
        let id = read(dir.path(), 42).unwrap().unwrap();
        assert_eq!(id.layout, Some(Mixed));
        assert_eq!(read(dir.path(), 7).unwrap(), None, "vanished process");
        assert_eq!(read(dir.path(), 43).unwrap(), None, "process being reaped");
        assert!(matches!(read(dir.path(), 44), Err(Error::NotCgroupFile { .. })));
    }

    #[test]
    fn read_own_process() {
        // The test's own cgroup file must parse, whatever the host's layout.
        let id = read(Path::new("/proc"), std::process::id()).unwrap().unwrap();
        assert!(id.path.starts_with('/'));
    }

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[rstest]
    #[case(
        "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id abc123 -address /run/containerd/containerd.sock",
        Some("abc123")
    )]
    #[case("containerd-shim-runc-v2 --id=abc123", Some("abc123"))]
    #[case("containerd-shim -namespace moby -id=deadbeef", Some("deadbeef"))]
    #[case("containerd-shim-runc-v2 -namespace k8s.io -id", None)]
    #[case("containerd-shim-runc-v2 -id -address", None)]
    #[case("/usr/bin/containerd --id abc", None)]
    #[case("runc -id abc", None)]
    #[case("", None)]
    fn shim_sandbox_id(#[case] cmdline: &str, #[case] want: Option<&str>) {
        assert_eq!(sandbox_id_from_shim_cmdline(&args(cmdline)).as_deref(), want);
    }

    proptest! {
        #[test]
        fn systemd_and_cgroupfs_forms_agree(bytes: [u8; 16], qos in 0usize..3, id in "[0-9a-f]{64}") {
            let uid = uuid::Uuid::from_bytes(bytes).hyphenated().to_string();
            let escaped = uid.replace('-', "_");
            let (sd_parent, sd_level, fs_level) = match qos {
                0 => ("kubepods.slice", "kubepods", ""),
                1 => ("kubepods.slice/kubepods-burstable.slice", "kubepods-burstable", "burstable/"),
                _ => ("kubepods.slice/kubepods-besteffort.slice", "kubepods-besteffort", "besteffort/"),
            };
            let systemd = format!("0::/{sd_parent}/{sd_level}-pod{escaped}.slice/cri-containerd-{id}.scope");
            let cgroupfs = format!("0::/kubepods/{fs_level}pod{uid}/{id}");
            let mixed = format!("0::/system.slice/containerd.service/{sd_level}-pod{escaped}.slice:cri-containerd:{id}");
            let a = parse(&systemd).unwrap();
            let b = parse(&cgroupfs).unwrap();
            let c = parse(&mixed).unwrap();
            // As read from inside a private cgroup namespace rooted below `kubepods`.
            let relative = format!("0::/../../{fs_level}pod{uid}/{id}");
            let d = parse(&relative).unwrap();
            prop_assert_eq!((&b.pod_uid, b.qos, b.layout), (&d.pod_uid, d.qos, d.layout));
            prop_assert_eq!(a.pod_uid.as_deref(), Some(uid.as_str()));
            prop_assert_eq!(&a.pod_uid, &b.pod_uid);
            prop_assert_eq!(&a.pod_uid, &c.pod_uid);
            prop_assert_eq!(a.qos, b.qos);
            prop_assert_eq!(a.qos, c.qos);
            prop_assert_eq!(a.container.map(|c| c.id), b.container.map(|c| c.id));
            prop_assert_eq!((a.layout, b.layout, c.layout), (Some(Systemd), Some(Cgroupfs), Some(Mixed)));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn garbage_paths_never_panic(path in "(/[a-z0-9_.:-]{0,70}){0,8}") {
            let content = format!("0::{}\n3:pids:{}\n", if path.is_empty() { "/" } else { &path }, path);
            let _ = parse(&content);
        }

        #[test]
        fn garbage_shim_cmdlines_never_panic(argv in proptest::collection::vec("\\PC{0,12}", 0..6)) {
            let _ = sandbox_id_from_shim_cmdline(&argv);
        }
    }
}

//! Who and where a run is: host name, kernel, user ids and effective capabilities.

use super::HostInfo;
use crate::Error;

/// Capability names by bit number, as in `include/uapi/linux/capability.h` (0 to 40).
const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Decodes a capability mask as `/proc/<pid>/status` prints it (`CapEff:`, `CapPrm:`...:
/// up to 16 hex digits, e.g. `000001fffeffffff`) into capability names in bit order.
/// Bits this version does not know are named `CAP_<bit>`, e.g. `CAP_41`.
///
/// Fails with [`Error::InvalidArgument`] when `hex` is not 1 to 16 hex digits (surrounding
/// white space is allowed).
pub fn decode_capabilities(hex: &str) -> Result<Vec<String>, Error> {
    let hex = hex.trim();
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "capability mask {hex:?} is not a hex number of at most 16 digits (as in CapEff: of /proc/self/status)"
        )));
    }
    let mask =
        u64::from_str_radix(hex, 16).map_err(|e| Error::InvalidArgument(format!("capability mask {hex:?}: {e}")))?;
    Ok((0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| {
            CAP_NAMES
                .get(bit)
                .map_or_else(|| format!("CAP_{bit}"), |n| (*n).to_owned())
        })
        .collect())
}

/// The value of the `CapEff:` line of a `/proc/<pid>/status` text.
fn cap_eff(status: &str) -> Option<&str> {
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim)
}

/// `uname(2)`: (node name, release).
fn uname() -> Option<(String, String)> {
    let mut buf = std::mem::MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: `buf` is a valid, writable utsname; uname only writes into it.
    if unsafe { libc::uname(buf.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: uname returned 0, so it filled the struct (which was zeroed before anyway).
    let u = unsafe { buf.assume_init() };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Some((field(&u.nodename), field(&u.release)))
}

fn proc_string(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The host name of the host whose `/proc` is mounted at `proc_root` (`--host-proc`), as
/// [`HostInfo::current`] would give it on that host, or `None` when it cannot be told:
///
/// - this process's own host name (`uname(2)`) when PID 1 of `proc_root` is in this
///   process's UTS namespace (`/proc` itself, or a pod's `/host/proc` with the host's
///   network and so its UTS namespace: the fleet Jobs);
/// - else that host's `/etc/hostname`, read through PID 1's root (a container with a host
///   name of its own, given the host's `/proc`; needs the privileges a census needs);
/// - else, when `proc_root` is this process's own `/proc` (PID 1's namespace cannot be read
///   without root), `uname(2)`.
pub fn hostname_of(proc_root: &std::path::Path) -> Option<String> {
    let here = || uname().map(|(name, _)| name).filter(|n| !n.is_empty());
    let ours = std::fs::read_link("/proc/self/ns/uts").ok();
    let theirs = std::fs::read_link(proc_root.join("1/ns/uts")).ok();
    if ours.is_some() && ours == theirs {
        return here();
    }
    if let Ok(text) = std::fs::read_to_string(proc_root.join("1").join("root").join("etc/hostname"))
        && let Some(name) = text.lines().next().map(str::trim).filter(|n| !n.is_empty())
    {
        return Some(name.to_string());
    }
    let own_proc = std::fs::read_link(proc_root.join("self"))
        .ok()
        .is_some_and(|pid| pid.as_os_str() == std::process::id().to_string().as_str());
    if theirs.is_none() && own_proc {
        return here();
    }
    None
}

impl HostInfo {
    /// The host this process runs on: host name and kernel release (`uname(2)`, else
    /// `/proc/sys/kernel/{hostname,osrelease}`, else `"unknown"`), real and effective user
    /// ids, and the effective capabilities from `CapEff:` of `/proc/self/status` (empty, with
    /// a warning logged, if that cannot be read).
    pub fn current() -> HostInfo {
        let (hostname, kernel_release) = uname().unwrap_or_else(|| {
            (
                proc_string("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
                proc_string("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            )
        });
        // SAFETY: getuid and geteuid have no preconditions and cannot fail.
        let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
        let capabilities = match std::fs::read_to_string("/proc/self/status") {
            Ok(status) => match cap_eff(&status).map(decode_capabilities) {
                Some(Ok(caps)) => caps,
                Some(Err(e)) => {
                    tracing::warn!("audit: cannot decode CapEff of /proc/self/status: {e}");
                    Vec::new()
                }
                None => {
                    tracing::warn!("audit: /proc/self/status has no CapEff line");
                    Vec::new()
                }
            },
            Err(e) => {
                tracing::warn!("audit: cannot read /proc/self/status: {e}");
                Vec::new()
            }
        };
        HostInfo {
            hostname,
            kernel_release,
            uid,
            euid,
            capabilities,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::none("0000000000000000", &[])]
    #[case::chown("1", &["CAP_CHOWN"])]
    #[case::net_admin("0000000000001000", &["CAP_NET_ADMIN"])]
    #[case::sys_admin("0000000000200000", &["CAP_SYS_ADMIN"])]
    #[case::bpf_perfmon("000000c000000000", &["CAP_PERFMON", "CAP_BPF"])]
    #[case::ptrace_admin_net("0000000000283000", &["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_PTRACE", "CAP_SYS_ADMIN"])]
    #[case::checkpoint("0000010000000000", &["CAP_CHECKPOINT_RESTORE"])]
    #[case::unknown_bits("8000020000000000", &["CAP_41", "CAP_63"])]
    #[case::docker_default("00000000a80425fb", &[
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT",
        "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP",
    ])]
    #[case::upper_and_spaces("  00000000000000FF\n", &[
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
    ])]
    fn decodes_known_masks(#[case] hex: &str, #[case] want: &[&str]) {
        assert_eq!(decode_capabilities(hex).unwrap(), want);
    }

    #[test]
    fn full_root_mask_names_every_known_capability_once() {
        // A kernel with 41 capabilities shows root's CapEff as 000001ffffffffff.
        let caps = decode_capabilities("000001ffffffffff").unwrap();
        assert_eq!(caps, CAP_NAMES);
        // Without CAP_SYS_RESOURCE (bit 24), as on this project's test machines.
        let caps = decode_capabilities("000001fffeffffff").unwrap();
        assert_eq!(caps.len(), 40);
        assert!(!caps.iter().any(|c| c == "CAP_SYS_RESOURCE"));
        assert!(caps.iter().any(|c| c == "CAP_BPF"));
    }

    #[rstest]
    #[case::empty("")]
    #[case::not_hex("zz")]
    #[case::too_long("00000000000000001")]
    #[case::prefixed("0x1f")]
    #[case::negative("-1")]
    fn rejects_bad_masks(#[case] hex: &str) {
        let err = decode_capabilities(hex).unwrap_err().to_string();
        assert!(err.contains("capability mask"), "{err}");
    }

    /// A `/proc` tree with PID 1's `/etc/hostname` (and, when `uts` is given, its UTS
    /// namespace link).
    fn proc_tree(hostname: Option<&str>, uts: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("1").join("root").join("etc")).unwrap();
        std::fs::create_dir_all(d.path().join("1/ns")).unwrap();
        if let Some(h) = hostname {
            std::fs::write(d.path().join("1").join("root").join("etc/hostname"), h).unwrap();
        }
        if let Some(u) = uts {
            std::os::unix::fs::symlink(u, d.path().join("1/ns/uts")).unwrap();
        }
        d
    }

    #[rstest]
    #[case::another_hosts_proc(
        Some("aks-nodepool1-12345678-vmss000003\n"),
        None,
        Some("aks-nodepool1-12345678-vmss000003")
    )]
    #[case::another_uts_namespace(Some("node-b\n"), Some("uts:[1]"), Some("node-b"))]
    #[case::first_line_only(Some("  node-c \n# comment\n"), None, Some("node-c"))]
    #[case::empty_hostname_file(Some("\n"), None, None)]
    #[case::nothing_to_tell(None, None, None)]
    fn names_the_host_of_another_proc(
        #[case] etc_hostname: Option<&str>,
        #[case] uts: Option<&str>,
        #[case] want: Option<&str>,
    ) {
        let d = proc_tree(etc_hostname, uts);
        assert_eq!(hostname_of(d.path()).as_deref(), want);
    }

    #[test]
    fn names_this_host_from_its_own_proc() {
        assert_eq!(
            hostname_of(std::path::Path::new("/proc")),
            Some(HostInfo::current().hostname)
        );
        // PID 1 in this process's UTS namespace: this host, whatever its /etc/hostname says.
        let ours = std::fs::read_link("/proc/self/ns/uts").unwrap();
        let d = proc_tree(Some("stale-name"), Some(ours.to_str().unwrap()));
        assert_eq!(hostname_of(d.path()), Some(HostInfo::current().hostname));
    }

    #[test]
    fn finds_cap_eff_line() {
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000003000\n";
        assert_eq!(cap_eff(status), Some("0000000000003000"));
        assert_eq!(cap_eff("Name:\tcat\n"), None);
    }

    #[test]
    fn current_host_matches_the_process() {
        let h = HostInfo::current();
        assert!(!h.hostname.is_empty());
        assert!(!h.kernel_release.is_empty());
        // SAFETY: no preconditions.
        assert_eq!(h.euid, unsafe { libc::geteuid() });
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let want = decode_capabilities(cap_eff(&status).unwrap()).unwrap();
        assert_eq!(h.capabilities, want);
        if h.euid != 0 {
            assert!(!h.capabilities.iter().any(|c| c == "CAP_SYS_ADMIN"));
        }
    }
}

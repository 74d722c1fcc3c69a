//! The one error type of snat-ebpf. Each variant says what failed and what to do about it.

use std::path::PathBuf;

use aya::programs::ProgramError;

/// Errors of the live tracer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller asked for something that cannot work (an empty netns set, a zero
    /// duration, an event ring size that is not a power of two...).
    #[error("invalid tracer option: {0}")]
    InvalidOption(String),

    /// The process may not load eBPF programs.
    #[error(
        "not permitted to {what}: run as root, or grant CAP_BPF and CAP_PERFMON (e.g. `sudo setcap cap_bpf,cap_perfmon+ep BINARY`, or in Kubernetes a privileged pod / securityContext.capabilities.add: [BPF, PERFMON])"
    )]
    NotPermitted {
        /// What was being done.
        what: String,
        /// The cause, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The kernel does not expose its BTF, which the CO-RE program needs.
    #[error(
        "the kernel has no BTF ({} is absent): snat's tracer needs Linux 5.12 or later built with CONFIG_DEBUG_INFO_BTF=y (AKS node images have both); in a container, make the host's /sys visible (a privileged pod has it)",
        path.display()
    )]
    NoBtf {
        /// Where it was looked for.
        path: PathBuf,
    },

    /// tracefs is not mounted and could not be mounted.
    #[error(
        "tracefs is not mounted ({detail}): mount it with `mount -t tracefs nodev /sys/kernel/tracing` as root, or run snat as root with CAP_SYS_ADMIN (it then mounts tracefs itself)"
    )]
    TracefsUnavailable {
        /// What was tried.
        detail: String,
        /// The mount error, when a mount was tried.
        #[source]
        source: Option<std::io::Error>,
    },

    /// tracefs is mounted, but this process may not read it.
    #[error(
        "tracefs is mounted but this process may not read {} (permission denied: tracefs is mode 0700): run snat as root, or use attach \"raw_tracepoint\" (the default \"auto\" tries it first), which needs no tracefs",
        path.display()
    )]
    TracefsDenied {
        /// The path that could not be read.
        path: PathBuf,
    },

    /// The kernel's verifier rejected the program.
    #[error(
        "the kernel's verifier rejected program {program}: this kernel is not supported by this build of snat (it needs Linux 5.12 or later: BTF, BPF ring buffer, BPF atomics); if the kernel is that recent, report it with the log below\n{log}"
    )]
    Verifier {
        /// Program name.
        program: String,
        /// The verifier's log.
        log: String,
    },

    /// Loading the object (maps, BTF relocations) failed.
    #[error("cannot load snat's eBPF object: {message} (it needs Linux 5.12 or later with BTF)")]
    Load {
        /// Short description.
        message: String,
        /// The cause.
        #[source]
        source: Box<aya::EbpfError>,
    },

    /// Loading the program failed for another reason than the verifier.
    #[error(
        "cannot load program {program} into the kernel (fentry/kprobe-free tracepoint program; a kernel in lockdown mode may refuse eBPF altogether)"
    )]
    ProgramLoad {
        /// Program name.
        program: String,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// Attaching to the tracepoint failed.
    #[error(
        "cannot attach to {tracepoint} (needs Linux 5.12+; the classic tracepoint also needs tracefs): check that /sys/kernel/tracing/events/sock/inet_sock_set_state/id exists, or try the other attach point (TracerBuilder::attach_point, playbook option `attach`)"
    )]
    Attach {
        /// Which attach point, e.g. `tracepoint sock/inet_sock_set_state`.
        tracepoint: String,
        /// The cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// A map is missing from the object or cannot be used.
    #[error("eBPF map {name}: {what}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What went wrong.
        what: String,
        /// The cause.
        #[source]
        source: Option<Box<aya::maps::MapError>>,
    },

    /// A system call of the reader failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether an error chain bottoms out in EPERM/EACCES.
pub(crate) fn is_permission(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Classify a failed `BPF_PROG_LOAD`: EPERM without a verifier log is a missing
/// privilege (or lockdown), anything with a log is the verifier's rejection.
pub(crate) fn load_error(program: &str, e: ProgramError) -> Error {
    match e {
        ProgramError::LoadError {
            ref io_error,
            ref verifier_log,
        } => {
            let log = verifier_log.to_string();
            if matches!(io_error.raw_os_error(), Some(libc::EPERM)) && log.trim().is_empty() {
                Error::NotPermitted {
                    what: format!("load eBPF program {program} (BPF_PROG_LOAD returned EPERM)"),
                    source: Some(Box::new(e)),
                }
            } else {
                Error::Verifier {
                    program: program.into(),
                    log: format!("{io_error}\n{log}"),
                }
            }
        }
        other => Error::ProgramLoad {
            program: program.into(),
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi;
    use aya_obj::VerifierLog;

    fn load_failure(errno: i32, log: &str) -> ProgramError {
        ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(errno),
            verifier_log: VerifierLog::new(log.to_string()),
        }
    }

    #[test]
    fn eperm_without_a_log_is_a_missing_privilege() {
        let err = load_error(abi::PROGRAM, load_failure(libc::EPERM, ""));
        assert!(matches!(err, Error::NotPermitted { .. }), "{err:?}");
        assert!(err.to_string().contains("CAP_BPF"), "{err}");
    }

    #[test]
    fn a_rejection_with_a_log_carries_the_log() {
        let log = "0: (79) r1 = *(u64 *)(r1 +0)\ninvalid bpf_context access off=0 size=8\n";
        for errno in [libc::EACCES, libc::EINVAL, libc::EPERM] {
            let err = load_error(abi::PROGRAM, load_failure(errno, log));
            assert!(matches!(err, Error::Verifier { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("invalid bpf_context access off=0 size=8"), "{msg}");
            assert!(msg.contains("report it with the log below"), "{msg}");
        }
    }
}

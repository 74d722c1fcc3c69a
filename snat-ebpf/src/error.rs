//! The one error type of snat-ebpf. Each variant says what failed and what to do about it.

use std::path::PathBuf;

/// Errors of the live tracer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller asked for something that cannot work (an empty netns set, a zero
    /// duration, a ring buffer size that is not a power of two...).
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
        "the kernel has no BTF ({} is absent): snat's tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.4+ on most distributions; AKS node images have it); in a container, make the host's /sys visible (a privileged pod has it)",
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

    /// The kernel's verifier rejected the program.
    #[error(
        "the kernel's verifier rejected program {program}: this kernel is not supported by this build of snat; report it with the log below\n{log}"
    )]
    Verifier {
        /// Program name.
        program: String,
        /// The verifier's log.
        log: String,
    },

    /// Loading the object (maps, BTF relocations) failed.
    #[error("cannot load snat's eBPF object: {message}")]
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
        "cannot attach to tracepoint {tracepoint} (needs Linux 4.16+ and tracefs): check that /sys/kernel/tracing/events/{tracepoint}/id exists"
    )]
    Attach {
        /// `category/name`.
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

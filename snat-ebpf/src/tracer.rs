//! Loading, configuring, running and detaching the kernel program.
//!
//! ```no_run
//! use std::time::Duration;
//! use snat_ebpf::{Mode, TracerBuilder};
//!
//! # fn main() -> Result<(), snat_ebpf::Error> {
//! let mut tracer = TracerBuilder::new()
//!     .duration(Duration::from_secs(10))
//!     .mode(Mode::Stream)
//!     .dport(443)
//!     .attach()?; // tracing starts here; dropping `tracer` detaches it
//! tracer.run(|ev| println!("{ev:?}"), |_progress| {})?;
//! let result = tracer.finish(|ev| println!("{ev:?}"))?;
//! println!("{} flows, {} events lost", result.flows.len(), result.stats.lost());
//! # Ok(())
//! # }
//! ```
//!
//! Nothing stays attached once the [`Tracer`] is gone: the program's link is owned by it,
//! so it is detached by [`Tracer::finish`], by `Drop` (also while a panic unwinds), and the
//! run loop returns as soon as the caller's cancel flag (set by a SIGINT/SIGTERM handler)
//! is seen.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap as BpfHashMap};
use aya::programs::{
    ProgramError, RawTracePoint, TracePoint, raw_trace_point::RawTracePointLinkId, trace_point::TracePointLinkId,
};
use aya::{Ebpf, EbpfLoader};
use snat_core::model::{Family, TcpEvent};

use crate::abi::{self, FlowCounts, FlowKey};
use crate::cpu_rings::{self, CpuRings};
use crate::error::{Error, is_permission, load_error};
use crate::flow::{FlowRow, WallClock, event_from_raw};
use crate::kfunc;
use crate::seed::{self, SeedReport};

/// The compiled kernel program (`bpf/snat_tcp.bpf.o`, built by `scripts/build-bpf`).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/snat_tcp.bpf.o");

/// The compiled kernel program, as embedded in this crate.
pub fn object() -> &'static [u8] {
    OBJECT
}

const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// What the kernel program produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Only per-flow counters in a kernel map (cheapest; no pid/comm/sport per event).
    #[default]
    Aggregated,
    /// Counters plus one record per event in per-CPU rings, with batched wakeups.
    Stream,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "aggregated" | "aggregate" | "agg" => Ok(Mode::Aggregated),
            "stream" | "events" => Ok(Mode::Stream),
            other => Err(Error::InvalidOption(format!(
                "unknown mode {other:?}: expected \"aggregated\" or \"stream\""
            ))),
        }
    }
}

/// How the program is attached to `sock:inet_sock_set_state`. Both run the same code
/// and count the same events; the raw tracepoint is cheaper (the kernel builds no trace
/// record for it and needs no tracefs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachPoint {
    /// The raw tracepoint when the kernel allows it, else the classic tracepoint.
    #[default]
    Auto,
    /// Only the raw tracepoint (`BPF_RAW_TRACEPOINT_OPEN`).
    RawTracepoint,
    /// Only the classic tracepoint (perf event; needs tracefs).
    Tracepoint,
}

impl std::fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachPoint::Auto => "auto",
            AttachPoint::RawTracepoint => "raw_tracepoint",
            AttachPoint::Tracepoint => "tracepoint",
        })
    }
}

impl std::str::FromStr for AttachPoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AttachPoint::Auto),
            "raw_tracepoint" | "raw" | "raw_tp" => Ok(AttachPoint::RawTracepoint),
            "tracepoint" | "tp" => Ok(AttachPoint::Tracepoint),
            other => Err(Error::InvalidOption(format!(
                "unknown attach point {other:?}: expected \"auto\", \"raw_tracepoint\" or \"tracepoint\""
            ))),
        }
    }
}

/// How the kernel program reads the kernel's sockets (see [`TracerBuilder::probe_reads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelReads {
    /// Plain loads through pointers cast by the kernel function `bpf_rdonly_cast`
    /// (Linux 6.2+, raw tracepoint only): the cheaper way.
    Direct,
    /// `bpf_probe_read_kernel` calls: any kernel, either attach point.
    Probe,
}

impl std::fmt::Display for KernelReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelReads::Direct => "direct reads",
            KernelReads::Probe => "probe reads",
        })
    }
}

/// Which events are counted, decided in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only these network namespaces (inodes); empty: all.
    pub netns: Vec<u64>,
    /// Only sockets owned by this process (tgid): the `connect()` caller, or the
    /// `listen()` caller for accepted sockets.
    pub pid: Option<u32>,
    /// Only this server port: the remote port of outbound connections, the local
    /// (listening) port of inbound ones.
    pub dport: Option<u16>,
    /// Only this address family.
    pub family: Option<Family>,
}

/// Whether this machine keeps stores in program order (x86's TSO): the program then
/// publishes events and frees socket slots with plain stores instead of atomic operations
/// (see `cfg_tso`).
const TSO: u8 = cfg!(any(target_arch = "x86_64", target_arch = "x86")) as u8;

/// Default size of the kernel's flow table.
const DEFAULT_FLOW_ENTRIES: u32 = 1 << 14;
/// Default size of the kernel's socket table.
const DEFAULT_SOCKET_ENTRIES: u32 = 1 << 17;
/// Largest socket table (64 MiB of kernel memory in aggregated mode, 416 MiB with owners).
const MAX_SOCKET_ENTRIES: u32 = 1 << 22;

/// Configures and starts a [`Tracer`].
#[derive(Debug, Clone)]
pub struct TracerBuilder {
    duration: Option<Duration>,
    mode: Mode,
    filters: Filters,
    ring_bytes: Option<u32>,
    wakeup_bytes: u64,
    drain_interval: Duration,
    cancel: Option<Arc<AtomicBool>>,
    flow_entries: Option<u32>,
    socket_entries: Option<u32>,
    seed_owners: bool,
    seed_proc_root: PathBuf,
    attach_point: AttachPoint,
    probe_reads: bool,
}

impl Default for TracerBuilder {
    fn default() -> Self {
        TracerBuilder::new()
    }
}

impl TracerBuilder {
    /// Defaults: aggregated mode, no filter, no time limit (runs until cancelled), 4 MiB
    /// of event rings (256 KiB per CPU beyond 16 CPUs), a wakeup when 256 KiB of events
    /// wait on a CPU, drained every 100 ms.
    pub fn new() -> TracerBuilder {
        TracerBuilder {
            duration: None,
            mode: Mode::Aggregated,
            filters: Filters::default(),
            ring_bytes: None,
            wakeup_bytes: 256 << 10,
            drain_interval: Duration::from_millis(100),
            cancel: None,
            flow_entries: None,
            socket_entries: None,
            seed_owners: true,
            seed_proc_root: PathBuf::from("/proc"),
            attach_point: AttachPoint::Auto,
            probe_reads: false,
        }
    }

    /// Size of the kernel's flow table (distinct (netns, family, direction, port, saddr,
    /// daddr) keys; default 16384). Events of keys that do not fit are counted in
    /// [`KernelStats::flows_full`].
    pub fn flow_table_entries(mut self, n: u32) -> Self {
        self.flow_entries = Some(n);
        self
    }

    /// Size of the kernel's socket table (sockets being connected or established during
    /// the trace; default 131072 slots), rounded up to a power of two. A slot takes 16
    /// bytes in aggregated mode without a pid filter (2 MiB by default), 104 bytes in
    /// stream mode or with a pid filter, which also keep owners (13 MiB by default). A
    /// socket whose slots are all taken is counted in [`KernelStats::socks_full`] and its
    /// close is counted without direction. Keep it a few times larger than the connections
    /// that may be open at once.
    pub fn socket_table_entries(mut self, n: u32) -> Self {
        self.socket_entries = Some(n);
        self
    }

    /// How long [`Tracer::run`] traces.
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }

    /// Aggregated counters only, or also the event stream.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// All filters at once.
    pub fn filters(mut self, f: Filters) -> Self {
        self.filters = f;
        self
    }

    /// Only these network namespaces (inode numbers, as `stat -L -c %i /proc/PID/ns/net`).
    pub fn netns(mut self, inodes: impl IntoIterator<Item = u64>) -> Self {
        self.filters.netns = inodes.into_iter().collect();
        self
    }

    /// Only sockets owned by this process.
    pub fn pid(mut self, pid: u32) -> Self {
        self.filters.pid = Some(pid);
        self
    }

    /// Only this server port (see [`Filters::dport`]).
    pub fn dport(mut self, port: u16) -> Self {
        self.filters.dport = Some(port);
        self
    }

    /// Only this family.
    pub fn family(mut self, family: Family) -> Self {
        self.filters.family = Some(family);
        self
    }

    /// Bytes of event rings, shared out among the CPUs (a power of two, at least one page;
    /// stream mode only). Each possible CPU (`/sys/devices/system/cpu/possible`, as for
    /// the kernel's per-CPU maps) gets a ring of its own, of a power of two of 96-byte
    /// events and at least 16; an event is dropped, and counted in
    /// [`KernelStats::events_dropped`], when its CPU's ring holds a whole ring of unread
    /// ones.
    pub fn ring_buffer_bytes(mut self, n: u32) -> Self {
        self.ring_bytes = Some(n);
        self
    }

    /// Force a wakeup of the reader when this many bytes of events wait in one CPU's ring
    /// (at least one event, at most half a ring). Below that, the reader drains on its
    /// timer.
    pub fn wakeup_bytes(mut self, n: u64) -> Self {
        self.wakeup_bytes = n;
        self
    }

    /// How often the reader drains the event rings without a wakeup (and polls the
    /// cancel flag).
    pub fn drain_interval(mut self, d: Duration) -> Self {
        self.drain_interval = d;
        self
    }

    /// Whether [`TracerBuilder::attach`] takes a snapshot of the sockets that exist when
    /// tracing starts, so that accepts on older listeners and closes and failures of older
    /// connections carry their owner instead of pid 0 (default: on; see [`crate::seed`]).
    /// In aggregated mode only listeners are seeded, and only with a pid filter (it then
    /// matches accepts on older listeners): without one the program records no owners, so
    /// there is nothing to seed and no snapshot is taken. It costs one socket census per
    /// network namespace (only the filtered ones with
    /// [`TracerBuilder::netns`]) and a read of `/proc/PID/fd` of their processes; turn it
    /// off where that matters more than the attribution.
    pub fn seed_owners(mut self, on: bool) -> Self {
        self.seed_owners = on;
        self
    }

    /// The `/proc` the snapshot of [`TracerBuilder::seed_owners`] reads (default `/proc`;
    /// e.g. `/host/proc` in a container without the host's pid namespace): its pids must
    /// be the host's, as the kernel reports them.
    pub fn seed_proc_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.seed_proc_root = path.into();
        self
    }

    /// How to attach (default [`AttachPoint::Auto`]: the raw tracepoint, falling back
    /// to the classic one when the kernel refuses it). [`Tracer::attach_point`] says
    /// which was used.
    pub fn attach_point(mut self, p: AttachPoint) -> Self {
        self.attach_point = p;
        self
    }

    /// Read the kernel's sockets with `bpf_probe_read_kernel` even where the kernel
    /// allows direct reads (default false: direct reads through `bpf_rdonly_cast` on
    /// Linux 6.2+ with the raw tracepoint, which cost less on every socket state change).
    /// For comparing the two, or working around a kernel that misbehaves with one.
    /// [`Tracer::kernel_reads`] says which was used.
    pub fn probe_reads(mut self, on: bool) -> Self {
        self.probe_reads = on;
        self
    }

    /// A flag that stops [`Tracer::run`] when set (e.g. by a SIGINT/SIGTERM handler).
    pub fn cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.duration == Some(Duration::ZERO) {
            return Err(Error::InvalidOption("duration must be more than 0 seconds".into()));
        }
        if let Some(ring_bytes) = self.ring_bytes
            && self.mode == Mode::Stream
            && (!ring_bytes.is_power_of_two() || ring_bytes < page_size())
        {
            return Err(Error::InvalidOption(format!(
                "event ring size {} must be a power of two and at least one page ({} bytes)",
                ring_bytes,
                page_size()
            )));
        }
        if self.drain_interval.is_zero() {
            return Err(Error::InvalidOption("drain interval must be more than 0".into()));
        }
        if self.filters.netns.len() > 256 {
            return Err(Error::InvalidOption(format!(
                "at most 256 network namespaces can be filtered on, got {}",
                self.filters.netns.len()
            )));
        }
        if let Some(n) = self
            .filters
            .netns
            .iter()
            .find(|n| u32::try_from(**n).is_err() || **n == 0)
        {
            return Err(Error::InvalidOption(format!(
                "{n} is not a network namespace inode (expected e.g. 4026531840)"
            )));
        }
        if self.socket_entries.is_some_and(|n| n > MAX_SOCKET_ENTRIES) {
            return Err(Error::InvalidOption(format!(
                "the socket table holds at most {MAX_SOCKET_ENTRIES} entries"
            )));
        }
        if self.flow_entries == Some(0) || self.socket_entries == Some(0) {
            return Err(Error::InvalidOption(
                "flow and socket tables need at least one entry".into(),
            ));
        }
        if self.filters.pid == Some(0) {
            return Err(Error::InvalidOption("pid filter must not be 0".into()));
        }
        if self.filters.dport == Some(0) {
            return Err(Error::InvalidOption("port filter must not be 0".into()));
        }
        Ok(())
    }

    /// Check the host, load the program with this configuration and attach it: tracing
    /// starts when this returns.
    pub fn attach(self) -> Result<Tracer, Error> {
        self.validate()?;
        check_privileges_and_btf()?;
        let clock = WallClock::now();
        let emit: u8 = u8::from(self.mode == Mode::Stream);
        let filter_netns: u8 = u8::from(!self.filters.netns.is_empty());
        let family: u16 = match self.filters.family {
            None => 0,
            Some(Family::Ipv4) => abi::AF_INET,
            Some(Family::Ipv6) => abi::AF_INET6,
        };
        let port: u16 = self.filters.dport.unwrap_or(0);
        let pid: u32 = self.filters.pid.unwrap_or(0);
        // The program records owners (and takes its general path) only in stream mode or
        // with a pid filter (TRACK_OWNERS in the kernel program).
        let owners_used = self.mode == Mode::Stream || self.filters.pid.is_some();
        // Possible CPUs (bpf_get_smp_processor_id's range): one cpu_state entry each, and
        // in stream mode one event ring each.
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| Error::Io { what, source })?;
        let (slots, wakeup) = if self.mode == Mode::Stream {
            let total = self
                .ring_bytes
                .map_or_else(|| cpu_rings::default_ring_bytes(cpus), u64::from);
            cpu_rings::sizing(total, self.wakeup_bytes, cpus)
        } else {
            (1, 1)
        };
        let ring_shift: u32 = slots.trailing_zeros();
        let ring_cpus = if self.mode == Mode::Stream { cpus } else { 1 };
        let ring_entries = u32::try_from(ring_cpus)
            .ok()
            .and_then(|c| c.checked_mul(slots))
            .ok_or_else(|| {
                Error::InvalidOption(format!(
                    "{cpus} CPUs x {slots} events per CPU do not fit one map; ask for fewer ring_buffer_bytes"
                ))
            })?;
        // The kernel's BTF, parsed once: for CO-RE, and to link the direct-read program.
        let btf = aya::Btf::from_sys_fs().map_err(|e| Error::Load {
            message: format!("parsing the kernel's BTF ({BTF_PATH}) failed"),
            source: Box::new(aya::EbpfError::BtfError(e)),
        })?;
        let linked = if self.probe_reads || self.attach_point == AttachPoint::Tracepoint {
            None
        } else {
            kfunc::rdonly_cast_id(&btf)
                .and_then(|id| kfunc::link_rdonly_cast(OBJECT, id))
                .filter(|(_, calls)| *calls > 0)
                .map(|(object, _)| object)
        };
        let direct_unavailable =
            (linked.is_none() && !self.probe_reads && self.attach_point != AttachPoint::Tracepoint)
                .then(|| "the kernel has no bpf_rdonly_cast (Linux 6.2+)".to_string());
        let object: &[u8] = linked.as_deref().unwrap_or(OBJECT);
        let mut loader = EbpfLoader::new();
        loader.btf(Some(&btf));
        let flows = self.flow_entries.unwrap_or(DEFAULT_FLOW_ENTRIES);
        loader.map_max_entries(abi::MAP_FLOWS, flows);
        loader.map_max_entries(abi::MAP_FLOW_COUNTS, flows);
        let flow_max_id: u32 = flows - 1;
        let socks = self
            .socket_entries
            .unwrap_or(DEFAULT_SOCKET_ENTRIES)
            .next_power_of_two();
        // The program keeps sockets in one of two tables: the short path's (aggregated mode
        // without a pid filter: no owners) has slots of 16 bytes, the general path's of 104.
        // The one not used gets one slot.
        let (full, fast) = if owners_used { (socks, 1) } else { (1, socks) };
        loader.map_max_entries(abi::MAP_SOCKS, full);
        loader.map_max_entries(abi::MAP_FAST_SOCKS, fast);
        let socks_mask: u32 = socks - 1;
        let mut ebpf = loader
            .override_global(abi::CFG_EMIT_EVENTS, &emit, true)
            .override_global(abi::CFG_FILTER_NETNS, &filter_netns, true)
            .override_global(abi::CFG_FAMILY, &family, true)
            .override_global(abi::CFG_PORT, &port, true)
            .override_global(abi::CFG_PID, &pid, true)
            .override_global(abi::CFG_RING_SHIFT, &ring_shift, true)
            .override_global(abi::CFG_WAKEUP_EVENTS, &wakeup, true)
            .override_global(abi::CFG_SOCKS_MASK, &socks_mask, true)
            .override_global(abi::CFG_FLOW_MAX_ID, &flow_max_id, true)
            .override_global(abi::CFG_TSO, &TSO, true)
            .map_max_entries(abi::MAP_CPU_EVENTS, ring_entries)
            .map_max_entries(abi::MAP_CPU_POS, u32::try_from(ring_cpus).unwrap_or(u32::MAX))
            .map_max_entries(abi::MAP_CPU_STATE, u32::try_from(cpus).unwrap_or(u32::MAX))
            .load(object)
            .map_err(|e| {
                if is_permission(&e) {
                    Error::NotPermitted {
                        what: "create eBPF maps".into(),
                        source: Some(Box::new(e)),
                    }
                } else {
                    Error::Load {
                        message: "creating maps or applying CO-RE relocations failed".into(),
                        source: Box::new(e),
                    }
                }
            })?;

        if !self.filters.netns.is_empty() {
            let map = ebpf
                .map_mut(abi::MAP_NETNS_ALLOW)
                .ok_or_else(|| map_missing(abi::MAP_NETNS_ALLOW))?;
            let mut allow: BpfHashMap<_, u32, u8> =
                BpfHashMap::try_from(map).map_err(|e| map_err(abi::MAP_NETNS_ALLOW, e))?;
            for n in &self.filters.netns {
                let n = u32::try_from(*n).unwrap_or(0);
                allow.insert(n, 1, 0).map_err(|e| map_err(abi::MAP_NETNS_ALLOW, e))?;
            }
        }

        let rings = if self.mode == Mode::Stream {
            Some(CpuRings::take(&mut ebpf, cpus, slots)?)
        } else {
            None
        };

        let (link, raw_refused, direct_refused) = attach_program(&mut ebpf, self.attach_point, linked.is_some())?;
        let direct_refused = direct_refused.or(direct_unavailable);
        tracing::debug!(mode = ?self.mode, filters = ?self.filters, via = %link.point(), "snat tracer attached");
        // After attaching, so that no socket created meanwhile is missed by both.
        // The program only looks owners up in stream mode or with a pid filter.
        let (pre_existing, seed) = if self.seed_owners && owners_used {
            let stream = self.mode == Mode::Stream;
            let (p, r) = seed::seed(&mut ebpf, &self.seed_proc_root, &self.filters.netns, stream);
            (Some(p), Some(r))
        } else {
            (None, None)
        };
        Ok(Tracer {
            ebpf,
            attached_via: link.point(),
            program: link.program(),
            raw_refused,
            direct_refused,
            flow_keys: std::sync::Mutex::new(Vec::new()),
            link: Some(link),
            rings,
            mode: self.mode,
            duration: self.duration,
            drain_interval: self.drain_interval,
            cancel: self.cancel,
            started: Instant::now(),
            started_unix_ns: unix_now_ns(),
            clock,
            events_read: 0,
            events_malformed: 0,
            pre_existing,
            seed,
            owners_filled: 0,
            owners_unknown: 0,
        })
    }
}

pub(crate) fn map_missing(name: &'static str) -> Error {
    Error::Map {
        name,
        what: "missing from the object".into(),
        source: None,
    }
}

pub(crate) fn map_err(name: &'static str, e: aya::maps::MapError) -> Error {
    Error::Map {
        name,
        what: "cannot use it".into(),
        source: Some(Box::new(e)),
    }
}

/// The object's map `name` as the aya map type `M`, borrowed for reading.
fn read_map<'a, M>(ebpf: &'a Ebpf, name: &'static str) -> Result<M, Error>
where
    M: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or_else(|| map_missing(name))?;
    M::try_from(map).map_err(|e| map_err(name, e))
}

/// `BPF_OBJ_GET_INFO_BY_FD` for a program, returning its `recursion_misses`.
fn prog_recursion_misses(fd: std::os::fd::RawFd) -> Option<u64> {
    use aya_obj::generated::bpf_prog_info;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is a plain C struct of integers; all-zero is valid.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd).ok()?,
        info_len: u32::try_from(size_of::<bpf_prog_info>()).ok()?,
        info: (&raw mut info) as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr points to a valid, initialised attribute block of the size passed, and
    // attr.info to a writable bpf_prog_info of info_len bytes that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    (rc == 0).then_some(info.recursion_misses)
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub(crate) fn page_size() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).unwrap_or(4096)
}

/// Effective capabilities of the calling thread (capabilities are per thread), from
/// /proc/thread-self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line["CapEff:".len()..].trim(), 16).ok()
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Check what the tracer needs before touching the kernel: capabilities, BTF and, for
/// the classic tracepoint, tracefs (mounted here when missing and allowed). Each failure
/// says what to do. [`TracerBuilder::attach`] makes the same checks, tracefs only when it
/// falls back to the classic tracepoint.
pub fn preflight() -> Result<(), Error> {
    check_privileges_and_btf()?;
    ensure_tracefs()
}

fn check_privileges_and_btf() -> Result<(), Error> {
    if let Some(caps) = effective_caps() {
        let has = |c: u32| caps & (1u64 << c) != 0;
        if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
            return Err(Error::NotPermitted {
                what: "load eBPF programs (this process has neither CAP_SYS_ADMIN nor CAP_BPF + CAP_PERFMON)".into(),
                source: None,
            });
        }
    }
    if !Path::new(BTF_PATH).exists() {
        return Err(Error::NoBtf { path: BTF_PATH.into() });
    }
    Ok(())
}

/// The attached program's link, by attach point.
enum Link {
    /// A raw tracepoint link, and which program holds it.
    Raw(RawTracePointLinkId, &'static str),
    Classic(TracePointLinkId),
}

impl Link {
    fn point(&self) -> AttachPoint {
        match self {
            Link::Raw(..) => AttachPoint::RawTracepoint,
            Link::Classic(_) => AttachPoint::Tracepoint,
        }
    }

    fn program(&self) -> &'static str {
        match self {
            Link::Raw(_, name) => name,
            Link::Classic(_) => abi::PROGRAM,
        }
    }
}

/// Program `name` of the object, as its aya type (`TracePoint`, `RawTracePoint`).
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Map {
            name: "program",
            what: format!("program {name} missing from the object"),
            source: None,
        })?
        .try_into()
        .map_err(|e: ProgramError| Error::ProgramLoad {
            program: name.into(),
            source: Box::new(e),
        })
}

fn attach_error(e: ProgramError, what: String) -> Error {
    if is_permission(&e) {
        Error::NotPermitted {
            what: format!("attach to {what}"),
            source: Some(Box::new(e)),
        }
    } else {
        Error::Attach {
            tracepoint: what,
            source: Box::new(e),
        }
    }
}

/// A link, why the raw tracepoint was refused and why direct reads were, when they were.
type Attached = (Link, Option<String>, Option<String>);

/// Load and attach the program at `point`: the direct-read raw program first when
/// `direct` (the object was linked), then the probe-read raw program, then, for `Auto`,
/// the classic tracepoint. Each refusal falls through to the next and is returned beside
/// the link (and logged).
fn attach_program(ebpf: &mut Ebpf, point: AttachPoint, direct: bool) -> Result<Attached, Error> {
    let mut raw_refused = None;
    let mut direct_refused = None;
    if point != AttachPoint::Tracepoint {
        if direct {
            match attach_raw(ebpf, abi::PROGRAM_CAST) {
                Ok(link) => return Ok((link, None, None)),
                Err(e) => {
                    let why = snat_core::error::chain(&e);
                    tracing::info!(error = %why, "direct reads refused; using probe reads");
                    direct_refused = Some(why);
                }
            }
        }
        match attach_raw(ebpf, abi::PROGRAM_RAW) {
            Ok(link) => return Ok((link, None, direct_refused)),
            Err(e) if point == AttachPoint::Auto => {
                let why = snat_core::error::chain(&e);
                tracing::info!(error = %why, "raw tracepoint refused; using the classic tracepoint");
                raw_refused = Some(why);
            }
            Err(e) => return Err(e),
        }
    }
    ensure_tracefs()?;
    let prog: &mut TracePoint = program_mut(ebpf, abi::PROGRAM)?;
    prog.load().map_err(|e| load_error(abi::PROGRAM, e))?;
    let link = prog
        .attach(abi::TP_CATEGORY, abi::TP_NAME)
        .map(Link::Classic)
        .map_err(|e| attach_error(e, format!("tracepoint {}/{}", abi::TP_CATEGORY, abi::TP_NAME)))?;
    Ok((link, raw_refused, direct_refused))
}

fn attach_raw(ebpf: &mut Ebpf, name: &'static str) -> Result<Link, Error> {
    let prog: &mut RawTracePoint = program_mut(ebpf, name)?;
    prog.load().map_err(|e| load_error(name, e))?;
    prog.attach(abi::TP_NAME)
        .map(|id| Link::Raw(id, name))
        .map_err(|e| attach_error(e, format!("raw tracepoint {}", abi::TP_NAME)))
}

fn tracepoint_dir(root: &str) -> std::path::PathBuf {
    Path::new(root).join("events").join(abi::TP_CATEGORY).join(abi::TP_NAME)
}

fn ensure_tracefs() -> Result<(), Error> {
    if tracepoint_dir(TRACEFS).exists() || tracepoint_dir(DEBUGFS_TRACING).exists() {
        return Ok(());
    }
    // `exists()` is false also when the path cannot be read: tracefs is mounted with mode
    // 0700, so a process without root's file access sees nothing there. Say that, not
    // "not mounted" (mounting it again would not help).
    let tp = tracepoint_dir(TRACEFS);
    if matches!(tp.try_exists(), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied) {
        return Err(Error::TracefsDenied { path: tp });
    }
    if Path::new(TRACEFS).join("events").exists() {
        return Err(Error::TracefsUnavailable {
            detail: format!(
                "tracefs is mounted but has no {}/{} tracepoint (kernel older than 4.16?)",
                abi::TP_CATEGORY,
                abi::TP_NAME
            ),
            source: None,
        });
    }
    let src = c"nodev";
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let why = match e.raw_os_error() {
            Some(libc::ENOENT) => format!("{TRACEFS} does not exist (is /sys mounted from the host?)"),
            Some(libc::EPERM) | Some(libc::EACCES) => "this process lacks CAP_SYS_ADMIN".to_string(),
            _ => e.to_string(),
        };
        return Err(Error::TracefsUnavailable {
            detail: format!("{TRACEFS}/events is absent and mounting tracefs there failed: {why}"),
            source: Some(e),
        });
    }
    tracing::info!("mounted tracefs on {TRACEFS}");
    if tracepoint_dir(TRACEFS).exists() {
        Ok(())
    } else {
        Err(Error::TracefsUnavailable {
            detail: format!(
                "mounted tracefs on {TRACEFS} but it has no {}/{} tracepoint",
                abi::TP_CATEGORY,
                abi::TP_NAME
            ),
            source: None,
        })
    }
}

/// Counters kept by the kernel program (summed over CPUs) and by the reader.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    /// Events the program wrote to the event rings.
    pub events_sent: u64,
    /// Events lost because their CPU's event ring was full (reader too slow).
    pub events_dropped: u64,
    /// Events not counted because the flow table was full.
    pub flows_full: u64,
    /// Connects/accepts/failures whose owner the kernel program did not know (socket or
    /// listener older than the trace and not seeded): reported with pid 0, unless the
    /// reader fills it in from the snapshot (see
    /// [`KernelStats::events_owner_from_snapshot`]). Owners are only recorded in stream
    /// mode or with a pid filter, so this is 0 otherwise.
    pub owner_unknown: u64,
    /// Events that passed the filters and were counted.
    pub counted: u64,
    /// Sockets that found no slot in the kernel's socket table
    /// ([`TracerBuilder::socket_table_entries`]): counted, but not as open, and their
    /// close is counted without direction.
    pub socks_full: u64,
    /// Program runs the kernel skipped (`recursion_misses`): a state change that came
    /// while the program was already running on that CPU (from an interrupt's TCP work),
    /// or, attached as a classic tracepoint, while any tracing program was. Each may have
    /// been an event, so this is an upper bound on events the kernel never showed the
    /// program.
    pub missed_runs: u64,
    /// Events read from the event rings by this process.
    pub events_read: u64,
    /// Event records that could not be decoded.
    pub events_malformed: u64,
    /// Events read whose owner the program did not know (close or failure of a connection
    /// older than the trace) and the reader took from the attach-time snapshot
    /// ([`TracerBuilder::seed_owners`]).
    pub events_owner_from_snapshot: u64,
    /// Events read that still have no owner (pid 0): their socket predates the trace and
    /// the snapshot did not name it (or seeding was off).
    pub events_owner_unknown: u64,
}

impl KernelStats {
    /// Every event lost on the way: dropped in the kernel, not counted for lack of map
    /// space, or sent but never read (only possible if the reader stopped early).
    ///
    /// Does not include [`KernelStats::missed_runs`]; see [`KernelStats::possibly_lost`].
    pub fn lost(&self) -> u64 {
        self.events_dropped
            + self.flows_full
            + self.events_malformed
            + self
                .events_sent
                .saturating_sub(self.events_read + self.events_malformed)
    }

    /// [`KernelStats::lost`] plus the program runs the kernel skipped: an upper bound on
    /// every event missing from the trace.
    pub fn possibly_lost(&self) -> u64 {
        self.lost() + self.missed_runs
    }
}

/// Progress of a running trace, for a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Time since the tracer was attached.
    pub elapsed: Duration,
    /// Time left, when there is a duration.
    pub remaining: Option<Duration>,
    /// Events counted so far (in the kernel).
    pub events: u64,
    /// Events lost so far.
    pub lost: u64,
}

/// Why [`Tracer::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The duration elapsed.
    Elapsed,
    /// The cancel flag was set.
    Cancelled,
}

/// What a finished trace produced.
#[derive(Debug, Clone)]
pub struct TraceResult {
    /// The kernel's per-flow counters, sorted by key.
    pub flows: Vec<FlowRow>,
    /// Loss accounting and counters.
    pub stats: KernelStats,
    /// Time between attach and detach.
    pub elapsed: Duration,
    /// The mode it ran in.
    pub mode: Mode,
    /// What the attach-time snapshot of older sockets seeded (`None` when
    /// [`TracerBuilder::seed_owners`] was off).
    pub seed: Option<SeedReport>,
    /// Where the program was attached.
    pub attach_point: AttachPoint,
    /// Why the raw tracepoint was refused, when [`AttachPoint::Auto`] fell back to the
    /// classic one (the error, with its cause).
    pub raw_refused: Option<String>,
    /// How the program read the kernel's sockets.
    pub kernel_reads: KernelReads,
    /// Why direct reads were not used, when they were not asked off
    /// ([`TracerBuilder::probe_reads`]) and the raw tracepoint was used.
    pub direct_refused: Option<String>,
}

/// An attached tracer. Dropping it detaches the program and frees its maps.
pub struct Tracer {
    ebpf: Ebpf,
    link: Option<Link>,
    attached_via: AttachPoint,
    /// The attached program's name.
    program: &'static str,
    raw_refused: Option<String>,
    direct_refused: Option<String>,
    /// The key of each flow id read so far (see [`Tracer::flows`]).
    flow_keys: std::sync::Mutex<Vec<Option<FlowKey>>>,
    rings: Option<CpuRings>,
    mode: Mode,
    duration: Option<Duration>,
    drain_interval: Duration,
    cancel: Option<Arc<AtomicBool>>,
    started: Instant,
    started_unix_ns: u64,
    clock: WallClock,
    events_read: u64,
    events_malformed: u64,
    pre_existing: Option<seed::PreExisting>,
    seed: Option<SeedReport>,
    owners_filled: u64,
    owners_unknown: u64,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("mode", &self.mode)
            .field("attached", &self.link.is_some())
            .field("events_read", &self.events_read)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// The mode it runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// When tracing started (attach), in Unix nanoseconds: the origin of event times
    /// relative to the trace.
    pub fn started_unix_ns(&self) -> u64 {
        self.started_unix_ns
    }

    /// How the program is attached ([`AttachPoint::RawTracepoint`] or
    /// [`AttachPoint::Tracepoint`]).
    pub fn attach_point(&self) -> AttachPoint {
        self.attached_via
    }

    /// How the attached program reads the kernel's sockets.
    pub fn kernel_reads(&self) -> KernelReads {
        if self.program == abi::PROGRAM_CAST {
            KernelReads::Direct
        } else {
            KernelReads::Probe
        }
    }

    /// The attached program.
    fn program_info(&self) -> Option<(aya::programs::ProgramInfo, std::os::fd::RawFd)> {
        let p = self.ebpf.program(self.program)?;
        Some((p.info().ok()?, p.fd().ok()?.as_fd().as_raw_fd()))
    }

    /// The kernel's id of the loaded program (as `bpftool prog` lists it).
    pub fn program_id(&self) -> Option<u32> {
        self.program_info().map(|(i, _)| i.id())
    }

    /// How many times the kernel skipped running the program
    /// (`bpf_prog_info.recursion_misses`; see [`KernelStats::missed_runs`]). Each skipped
    /// run may have been an event.
    pub fn missed_runs(&self) -> Option<u64> {
        self.program_info().and_then(|(_, fd)| prog_recursion_misses(fd))
    }

    /// What the attach-time snapshot of older sockets seeded (`None` when
    /// [`TracerBuilder::seed_owners`] was off).
    pub fn seed_report(&self) -> Option<&SeedReport> {
        self.seed.as_ref()
    }

    /// Whether the program is still attached.
    pub fn is_attached(&self) -> bool {
        self.link.is_some()
    }

    /// Read every event waiting in the event rings, without blocking, in time order.
    /// Returns how many were read. Does nothing in aggregated mode.
    pub fn drain(&mut self, on_event: &mut dyn FnMut(TcpEvent)) -> usize {
        let Some(mut rings) = self.rings.take() else {
            return 0;
        };
        let mut n = 0;
        rings.drain(&mut |raw| match event_from_raw(raw, &self.clock) {
            Some(mut ev) => {
                self.events_read += 1;
                if ev.cgroup_id.is_none() {
                    if self.pre_existing.as_mut().is_some_and(|p| p.fill(&mut ev)) {
                        self.owners_filled += 1;
                    } else {
                        self.owners_unknown += 1;
                    }
                }
                n += 1;
                on_event(ev);
            }
            None => self.events_malformed += 1,
        });
        self.rings = Some(rings);
        n
    }

    /// Wait up to `timeout` for the kernel to signal waiting events (it does once
    /// [`TracerBuilder::wakeup_bytes`] wait). In aggregated mode this just sleeps.
    pub fn wait(&self, timeout: Duration) -> Result<(), Error> {
        let Some(rings) = self.rings.as_ref() else {
            std::thread::sleep(timeout);
            return Ok(());
        };
        let mut pfd = libc::pollfd {
            fd: rings.wake_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: pfd is a valid pollfd and we pass a count of 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Io {
                    what: "poll on the event rings' wakeups",
                    source: e,
                });
            }
        }
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Trace until the duration elapses or the cancel flag is set, passing each event to
    /// `on_event` (stream mode) and a [`Progress`] about once a second to `on_progress`.
    /// Without a duration and a cancel flag this would never end, so it is refused.
    pub fn run(&mut self, on_event: impl FnMut(TcpEvent), on_progress: impl FnMut(&Progress)) -> Result<RunEnd, Error> {
        self.run_sampled(None, on_event, on_progress, |_, _| {})
    }

    /// [`Tracer::run`], and also, with `every`, read the kernel's per-flow counters at
    /// each multiple of `every` after attach that falls before the deadline and pass them
    /// to `on_sample` with the sample's index (0 for the end of the first interval). The
    /// events waiting in the event rings are drained first. The counters are cumulative;
    /// the rows after the deadline are [`TraceResult::flows`].
    pub fn run_sampled(
        &mut self,
        every: Option<Duration>,
        mut on_event: impl FnMut(TcpEvent),
        mut on_progress: impl FnMut(&Progress),
        mut on_sample: impl FnMut(usize, &[FlowRow]),
    ) -> Result<RunEnd, Error> {
        if self.duration.is_none() && self.cancel.is_none() {
            return Err(Error::InvalidOption(
                "Tracer::run needs a duration or a cancel flag, or it would never end".into(),
            ));
        }
        if every.is_some_and(|e| e.is_zero()) {
            return Err(Error::InvalidOption("sampling interval must be more than 0".into()));
        }
        let deadline = self.duration.map(|d| self.started + d);
        let mut last_progress = Instant::now();
        let mut sample = 0usize;
        let started = self.started;
        // The k-th sample is due at (k + 1) x every, if that is before the deadline.
        let next_sample = |k: usize| {
            every
                .map(|e| started + e * u32::try_from(k + 1).unwrap_or(u32::MAX))
                .filter(|at| deadline.is_none_or(|d| *at < d))
        };
        let mut next = next_sample(sample);
        loop {
            if self.cancelled() {
                return Ok(RunEnd::Cancelled);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(RunEnd::Elapsed);
            }
            if let Some(at) = next
                && now >= at
            {
                self.drain(&mut on_event);
                let rows = self.flows()?;
                on_sample(sample, &rows);
                sample += 1;
                // Past the deadline the caller samples the final rows itself.
                next = next_sample(sample);
                continue;
            }
            let mut step = deadline.map_or(self.drain_interval, |d| self.drain_interval.min(d - now));
            if let Some(at) = next {
                step = step.min(at - now);
            }
            self.wait(step)?;
            self.drain(&mut on_event);
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                let s = self.stats()?;
                on_progress(&Progress {
                    elapsed: self.started.elapsed(),
                    remaining: deadline.map(|d| d.saturating_duration_since(Instant::now())),
                    events: s.counted,
                    lost: s.lost(),
                });
            }
        }
    }

    /// Detach the program (no more events are produced); the maps stay readable.
    pub fn detach(&mut self) -> Result<(), Error> {
        let detach_err = |e: ProgramError| Error::Attach {
            tracepoint: format!("{}/{} (detach)", abi::TP_CATEGORY, abi::TP_NAME),
            source: Box::new(e),
        };
        match self.link.take() {
            None => {}
            Some(Link::Raw(link, name)) => {
                let prog: &mut RawTracePoint = program_mut(&mut self.ebpf, name)?;
                prog.detach(link).map_err(detach_err)?;
            }
            Some(Link::Classic(link)) => {
                let prog: &mut TracePoint = program_mut(&mut self.ebpf, abi::PROGRAM)?;
                prog.detach(link).map_err(detach_err)?;
            }
        }
        Ok(())
    }

    /// The kernel's counters so far.
    pub fn stats(&self) -> Result<KernelStats, Error> {
        let arr: Array<_, abi::CpuState> = read_map(&self.ebpf, abi::MAP_CPU_STATE)?;
        let mut sums = [0u64; abi::STAT_MAX as usize];
        for cpu in 0..arr.len() {
            let st = arr.get(&cpu, 0).map_err(|e| map_err(abi::MAP_CPU_STATE, e))?;
            for level in st.stats {
                for (sum, v) in sums.iter_mut().zip(level) {
                    *sum = sum.saturating_add(v);
                }
            }
        }
        let get = |i: u32| -> Result<u64, Error> { Ok(sums[i as usize]) };
        Ok(KernelStats {
            events_sent: get(abi::STAT_EVENTS_SENT)?,
            events_dropped: get(abi::STAT_EVENTS_DROPPED)?,
            flows_full: get(abi::STAT_FLOWS_FULL)?,
            owner_unknown: get(abi::STAT_OWNER_UNKNOWN)?,
            counted: get(abi::STAT_COUNTED)?,
            socks_full: get(abi::STAT_SOCKS_FULL)?,
            missed_runs: self.missed_runs().unwrap_or(0),
            events_read: self.events_read,
            events_malformed: self.events_malformed,
            events_owner_from_snapshot: self.owners_filled,
            events_owner_unknown: self.owners_unknown,
        })
    }

    /// The kernel's per-flow counters so far, sorted by key.
    ///
    /// One map read per flow: the counters by id. Flows are never deleted from the
    /// kernel's table and ids never reused, so the key of each id is read once and kept;
    /// the key table is only walked again when an id it does not know has counted
    /// something (a flow without counts yet is left out).
    pub fn flows(&self) -> Result<Vec<FlowRow>, Error> {
        let counts: Array<_, FlowCounts> = read_map(&self.ebpf, abi::MAP_FLOW_COUNTS)?;
        let next: Array<_, u32> = read_map(&self.ebpf, abi::MAP_FLOW_NEXT)?;
        // Ids handed out so far (the counter keeps going when the table is full).
        let handed_out = next.get(&0, 0).map_err(|e| map_err(abi::MAP_FLOW_NEXT, e))?;
        let ids = handed_out.min(counts.len());
        let mut keys = self.flow_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.len() < ids as usize {
            keys.resize(ids as usize, None);
        }
        let mut found = Vec::with_capacity(ids as usize);
        let mut unknown = false;
        for id in 0..ids {
            let c = counts.get(&id, 0).map_err(|e| map_err(abi::MAP_FLOW_COUNTS, e))?;
            if c == FlowCounts::default() {
                continue; // not counted yet, or an id lost to a race and never used
            }
            unknown |= keys[id as usize].is_none();
            found.push((id, c));
        }
        if unknown {
            let flows: BpfHashMap<_, FlowKey, u32> = read_map(&self.ebpf, abi::MAP_FLOWS)?;
            for item in flows.iter() {
                match item {
                    Ok((k, id)) => {
                        if let Some(slot) = keys.get_mut(id as usize) {
                            *slot = Some(k);
                        }
                    }
                    // An entry deleted while iterating is skipped; the map is never deleted from.
                    Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(abi::MAP_FLOWS, e)),
                }
            }
        }
        // A flow's key is in the table before anything is counted for it, so every id
        // found here has its key now.
        let mut rows: Vec<FlowRow> = found
            .iter()
            .filter_map(|(id, c)| keys[*id as usize].as_ref().and_then(|k| FlowRow::from_raw(k, c)))
            .collect();
        rows.sort_by(|a, b| {
            (a.netns, a.family, a.direction, a.saddr, a.daddr, a.port).cmp(&(
                b.netns,
                b.family,
                b.direction,
                b.saddr,
                b.daddr,
                b.port,
            ))
        });
        Ok(rows)
    }

    /// Detach, read the last events (passed to `on_event`), then the counters.
    pub fn finish(mut self, mut on_event: impl FnMut(TcpEvent)) -> Result<TraceResult, Error> {
        self.detach()?;
        let elapsed = self.started.elapsed();
        self.drain(&mut on_event);
        Ok(TraceResult {
            flows: self.flows()?,
            stats: self.stats()?,
            elapsed,
            mode: self.mode,
            seed: self.seed.take(),
            attach_point: self.attached_via,
            raw_refused: self.raw_refused.take(),
            kernel_reads: self.kernel_reads(),
            direct_refused: if self.attached_via == AttachPoint::Tracepoint {
                None
            } else {
                self.direct_refused.take()
            },
        })
    }
}

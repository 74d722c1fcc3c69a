//! The binary interface with the kernel program: Rust mirrors of the C structs in
//! `bpf/snat_tcp.bpf.c`, the constants they use, and the names of its maps and globals.
//!
//! Every struct is `#[repr(C)]` with explicit padding so that it has no hidden bytes; the
//! test `object_layout` checks sizes and member offsets against the committed object's BTF.

/// Name of the classic tracepoint program in the object (the fallback).
pub const PROGRAM: &str = "snat_tcp_state";
/// Name of the raw tracepoint program that reads sockets with `bpf_probe_read_kernel` (same
/// code; used where [`PROGRAM_CAST`] cannot load).
pub const PROGRAM_RAW: &str = "snat_tcp_state_raw";
/// Name of the raw tracepoint program that reads the kernel's sockets directly, through
/// the kfunc `bpf_rdonly_cast` (Linux 6.2+), linked by the loader: see the `kfunc` module.
pub const PROGRAM_CAST: &str = "snat_tcp_state_cast";
/// The helper id the C source calls in place of `bpf_rdonly_cast` (SNAT_RDONLY_CAST_MARKER
/// in the C source); no kernel has a helper with this id.
pub const RDONLY_CAST_MARKER: i32 = 0x5a7a_0001;
/// Tracepoint category.
pub const TP_CATEGORY: &str = "sock";
/// Tracepoint name.
pub const TP_NAME: &str = "inet_sock_set_state";

/// Map: flow ids (`HASH`, [`FlowKey`] -> u32 index into [`MAP_FLOW_COUNTS`]).
pub const MAP_FLOWS: &str = "flows";
/// Map: per-flow counters (`ARRAY`, flow id -> [`FlowCounts`]).
pub const MAP_FLOW_COUNTS: &str = "flow_counts";
/// Map: the next flow id to hand out (`ARRAY` of one u32).
pub const MAP_FLOW_NEXT: &str = "flow_next";
/// Entries of [`CpuState::tcp_prot`]: the protocol ops tables (`struct proto` addresses)
/// a CPU has seen on TCP sockets, so that a socket whose `sk_prot` is one of them needs no
/// read of `sk_protocol`.
pub const TCP_PROTOS: usize = 4;
/// Map: per-socket owner and state (`ARRAY` of [`SockInfo`] slots, an open-addressing
/// table keyed in the kernel by the socket's address).
pub const MAP_SOCKS: &str = "socks";
/// Map: per-socket flow id of aggregated mode's short path, taken without a pid filter
/// (`ARRAY` of [`SockSlot`], the same open-addressing table with smaller slots). The loader
/// gives the table the program does not use one slot.
pub const MAP_FAST_SOCKS: &str = "fast_socks";
/// Map: listener owners (`LRU_HASH`, [`ListenKey`] -> [`ListenInfo`]).
pub const MAP_LISTENERS: &str = "listeners";
/// Map: the listeners' generation (`ARRAY`, one u32), bumped at every change to
/// [`MAP_LISTENERS`]; a CPU's cached listener is valid under the generation it was read in.
pub const MAP_LISTEN_GEN: &str = "listen_gen";
/// Map: the netns filter set (`HASH`, netns inode -> 1).
pub const MAP_NETNS_ALLOW: &str = "netns_allow";
/// Map: what each CPU keeps for itself (`ARRAY` of [`CpuState`], by CPU): the counters
/// (`stats`, index `STAT_*`), and state the program keeps to itself.
pub const MAP_CPU_STATE: &str = "cpu_state";
/// Map: the event stream, one ring of [`RawEvent`] per CPU (`ARRAY`, `BPF_F_MMAPABLE`):
/// CPU `c` owns entries `c << cfg_ring_shift` up to `(c + 1) << cfg_ring_shift`.
pub const MAP_CPU_EVENTS: &str = "cpu_events";
/// Map: each CPU's ring positions (`ARRAY` of [`RingPos`], `BPF_F_MMAPABLE`), by CPU.
pub const MAP_CPU_POS: &str = "cpu_pos";
/// Map: wakeups of the reader (`RINGBUF` of u32 CPU numbers; the records carry no event).
pub const MAP_WAKEUPS: &str = "wakeups";

/// Global: write events to the event rings (u8, 0/1).
pub const CFG_EMIT_EVENTS: &str = "cfg_emit_events";
/// Global: only count netns in `netns_allow` (u8, 0/1).
pub const CFG_FILTER_NETNS: &str = "cfg_filter_netns";
/// Global: only this address family (u16, `AF_INET`/`AF_INET6`, 0 = any).
pub const CFG_FAMILY: &str = "cfg_family";
/// Global: only this server port (u16, 0 = any): the remote port of an outbound
/// connection, the local port of an inbound one.
pub const CFG_PORT: &str = "cfg_port";
/// Global: only sockets owned by this process (u32 tgid, 0 = any).
pub const CFG_PID: &str = "cfg_pid";
/// Global: log2 of the slots of each CPU's event ring (u32).
pub const CFG_RING_SHIFT: &str = "cfg_ring_shift";
/// Global: wake the reader when a CPU's ring holds this many unread events (u32).
pub const CFG_WAKEUP_EVENTS: &str = "cfg_wakeup_events";
/// Global: the largest flow id, the flow table's entries minus one (u32).
pub const CFG_FLOW_MAX_ID: &str = "cfg_flow_max_id";
/// Global: entries of the `socks` table minus one (u32; entries are a power of two).
pub const CFG_SOCKS_MASK: &str = "cfg_socks_mask";
/// Global: stores become visible in program order on this machine (x86's TSO), so events
/// are published, and socket slots freed, with plain stores (u8, 0/1).
pub const CFG_TSO: &str = "cfg_tso";

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// [`RawEvent::kind`]: connect.
pub const KIND_CONNECT: u8 = 1;
/// [`RawEvent::kind`]: accept.
pub const KIND_ACCEPT: u8 = 2;
/// [`RawEvent::kind`]: close.
pub const KIND_CLOSE: u8 = 3;
/// [`RawEvent::kind`]: failed connect.
pub const KIND_FAILED_CONNECT: u8 = 4;

/// Direction: a close of a connection established before the trace started.
pub const DIR_UNKNOWN: u8 = 0;
/// Direction: this side called `connect()`.
pub const DIR_OUTBOUND: u8 = 1;
/// Direction: this side accepted.
pub const DIR_INBOUND: u8 = 2;

/// [`RawEvent::flags`]: pid, comm and cgroup id are known.
pub const FLAG_OWNER_KNOWN: u8 = 1;
/// [`RawEvent::flags`]: `duration_ns` is known.
pub const FLAG_DURATION_KNOWN: u8 = 2;

/// `stats[0]`: events written to the event rings.
pub const STAT_EVENTS_SENT: u32 = 0;
/// `stats[1]`: events lost because their CPU's event ring was full.
pub const STAT_EVENTS_DROPPED: u32 = 1;
/// `stats[2]`: counts lost because the `flows` map was full.
pub const STAT_FLOWS_FULL: u32 = 2;
/// `stats[3]`: connects/accepts/failures whose owner was not recorded (socket or
/// listener created before the trace started).
pub const STAT_OWNER_UNKNOWN: u32 = 3;
/// `stats[4]`: events counted (passing the filters).
pub const STAT_COUNTED: u32 = 4;
/// `stats[5]`: socket-table updates that failed.
pub const STAT_SOCKS_FULL: u32 = 5;
/// Number of `stats` slots.
pub const STAT_MAX: u32 = 8;

/// Owner of a socket, recorded in process context (mirror of `struct owner`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Task command name, NUL-padded.
    pub comm: [u8; 16],
}

/// Key of the `flows` map (mirror of `struct flow_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network namespace inode.
    pub netns: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Server port: remote port (outbound, unknown), local port (inbound).
    pub port: u16,
    /// `DIR_*`.
    pub direction: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Local address (IPv4 in the first 4 bytes), network order.
    pub saddr: [u8; 16],
    /// Remote address, network order.
    pub daddr: [u8; 16],
}

/// Value of the `flows` map (mirror of `struct flow_counts`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// Connects that reached ESTABLISHED.
    pub connects: u64,
    /// Accepted connections.
    pub accepts: u64,
    /// Connects that went SYN_SENT -> CLOSE.
    pub failed_connects: u64,
    /// Closes.
    pub closes: u64,
    /// Established in the window and not closed yet.
    pub open: u64,
}

/// One slot of the `fast_socks` table (mirror of `struct sock_slot`), and the head of a
/// [`SockInfo`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockSlot {
    /// The socket's kernel address; 0 when the slot is free.
    pub sk: u64,
    /// Internal flags (filtered out; in a [`SockInfo`] also established, owner known).
    pub flags: u32,
    /// The flow's id (index into [`MAP_FLOW_COUNTS`]).
    pub flow_id: u32,
}

/// One slot of the `socks` table (mirror of `struct sock_info`): an open-addressing
/// table in an `ARRAY` map, keyed in the kernel by the socket's address.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockInfo {
    /// The socket's kernel address; 0 when the slot is free.
    pub sk: u64,
    /// Internal flags (established, filtered out, owner known).
    pub flags: u32,
    /// The flow's id (index into [`MAP_FLOW_COUNTS`]), once established.
    pub flow_id: u32,
    /// The flow the socket was counted under.
    pub key: FlowKey,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// Boot-clock time of ESTABLISHED.
    pub established_ns: u64,
    /// Owner, when `flags` says it is known.
    pub owner: Owner,
}

/// Key of the `listeners` map (mirror of `struct listen_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenKey {
    /// Network namespace inode.
    pub netns: u32,
    /// Local port.
    pub port: u16,
    /// Zero.
    pub pad: u16,
}

/// Value of the `listeners` map (mirror of `struct listen_info`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenInfo {
    /// Who called `listen()`.
    pub owner: Owner,
    /// The listening socket.
    pub sk: u64,
}

/// One event of the stream (mirror of `struct tcp_event`): a slot of [`MAP_CPU_EVENTS`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawEvent {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`; for connects and accepts, the
    /// socket's `tcp_clock_cache` on the same clock).
    pub ts_ns: u64,
    /// For closes: time since ESTABLISHED.
    pub duration_ns: u64,
    /// Owner's cgroup v2 id.
    pub cgroup_id: u64,
    /// Owner's pid (0 when unknown).
    pub pid: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// For failed connects: `sk->sk_err` (positive errno, 0 when none).
    pub error: i32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// `KIND_*`.
    pub kind: u8,
    /// TCP state left.
    pub prev_state: u8,
    /// `FLAG_*`.
    pub flags: u8,
    /// `DIR_*`.
    pub direction: u8,
    /// Zero.
    pub pad: [u8; 2],
    /// Local address, network order.
    pub saddr: [u8; 16],
    /// Remote address, network order.
    pub daddr: [u8; 16],
    /// Owner's command name, NUL-padded.
    pub comm: [u8; 16],
}

/// A CPU's ring positions (mirror of `struct ring_pos`), one entry of [`MAP_CPU_POS`]:
/// `head` and `tail` count events since the start, the ring's slot of an event is its
/// count modulo the ring's size. Each sits alone in its cache line.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingPos {
    /// Events written on this CPU; only the program on that CPU writes it.
    pub head: u64,
    /// Zero.
    pub pad0: [u64; 7],
    /// Events the reader has consumed; only the reader writes it.
    pub tail: u64,
    /// Zero.
    pub pad1: [u64; 7],
}

/// What each CPU keeps for itself (mirror of `struct cpu_state`; entry `cpu` of
/// [`MAP_CPU_STATE`]). The loader reads `stats`; tests set `busy`; the rest is the
/// program's own.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CpuState {
    /// Runs of the program under way on this CPU (a run that finds it set is nested).
    pub busy: u32,
    /// Zero.
    pub pad: u32,
    /// Protocol ops tables seen on TCP sockets (kernel addresses).
    pub tcp_prot: [u64; TCP_PROTOS],
    /// Counters, by nesting level (a run, and a run nested in it), then `STAT_*` index.
    pub stats: [[u64; STAT_MAX as usize]; 2],
    /// The flow cache: three `struct flow_cache` (a [`FlowKey`], a u32 id, and the
    /// `struct net` and ops table addresses of the socket that made it).
    pub last: [u8; 3 * 64],
    /// The listener cache: a `struct listen_cache` (a [`ListenKey`], the generation, whether
    /// the owner is known, an [`Owner`]).
    pub listener: [u8; 48],
    /// Scratch space: two `struct scratch` (socket fields, flow key, owner, event).
    pub x: [u8; 2 * 232],
    /// Keeps CPUs' entries off each other's cache lines.
    pub guard: [u8; 64],
}

// SAFETY: all of these are repr(C), made only of integers and byte arrays, with explicit
// padding fields: every bit pattern is valid and there are no uninitialised bytes.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowCounts {}
// SAFETY: as above.
unsafe impl aya::Pod for RawEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for ListenKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ListenInfo {}
// SAFETY: as above.
unsafe impl aya::Pod for RingPos {}
// SAFETY: as above.
unsafe impl aya::Pod for CpuState {}

impl RawEvent {
    /// Decode an event's bytes; `None` when they are too short.
    pub fn from_bytes(b: &[u8]) -> Option<RawEvent> {
        if b.len() < size_of::<RawEvent>() {
            return None;
        }
        // SAFETY: RawEvent is Pod (any bit pattern valid) and `b` holds at least
        // size_of::<RawEvent>() bytes; read_unaligned has no alignment requirement.
        Some(unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<RawEvent>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_no_hidden_padding() {
        assert_eq!(size_of::<Owner>(), 32);
        assert_eq!(size_of::<FlowKey>(), 44);
        assert_eq!(size_of::<FlowCounts>(), 40);
        assert_eq!(size_of::<SockSlot>(), 16);
        assert_eq!(size_of::<SockInfo>(), 8 + 8 + 44 + 4 + 8 + 32);
        assert_eq!(size_of::<ListenKey>(), 8);
        assert_eq!(size_of::<RawEvent>(), 96);
        assert_eq!(size_of::<RingPos>(), 128);
        assert_eq!(std::mem::offset_of!(RingPos, tail), 64);
    }

    #[test]
    fn short_record_is_rejected() {
        assert!(RawEvent::from_bytes(&[0u8; 95]).is_none());
        let mut b = [0u8; 96];
        b[0] = 7;
        assert_eq!(RawEvent::from_bytes(&b).unwrap().ts_ns, 7);
    }
}

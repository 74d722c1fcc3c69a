// SPDX-License-Identifier: GPL-2.0
/*
 * snat's kernel-side TCP tracer, on tracepoint sock:inet_sock_set_state (no kprobes),
 * attached raw when the kernel allows it, else as a classic tracepoint: the same code. The
 * raw program comes twice: reading sockets directly through bpf_rdonly_cast (Linux 6.2+,
 * see snat_rdonly_cast), or with bpf_probe_read_kernel on any kernel.
 *
 * What it sees, per TCP socket state change:
 *   CLOSE -> SYN_SENT        inside connect(): remember the owner (current task) by socket
 *   CLOSE -> LISTEN          inside listen(): remember the owner by (netns, local port)
 *   SYN_SENT -> ESTABLISHED  connect  (owner: the one remembered at SYN_SENT)
 *   SYN_RECV -> ESTABLISHED  accept   (owner: the listener's owner)
 *   SYN_SENT -> CLOSE        failed connect (refused, reset, timed out), with sk->sk_err
 *   other -> CLOSE           close of an established connection, with the state it left
 *                            and the time since ESTABLISHED
 * At any other transition `current` is whoever runs the softirq, so it is never used.
 * Owners are only recorded when something uses them: in event-stream mode, or with a pid
 * filter. Aggregated counts are keyed by network namespace, not by process.
 *
 * Every counted event is added to its flow's counters in `flow_counts`; `flows` maps the
 * flow's key (netns, family, direction, port, saddr, daddr) to its index there, where port
 * is the remote port of an outbound connection and the local (listening) port of an
 * inbound one. With
 * cfg_emit_events set, each event is also written to its CPU's ring in `cpu_events`
 * (see event_send), with batched wakeups through the `wakeups` ring buffer. Every loss is
 * counted in the per-CPU counters (`stats` in cpu_state).
 *
 * Aggregated mode without a pid filter, the common case, takes its own short path
 * (fast_state): it counts the same, keeps nothing that only events and owners use, and
 * its stack frame stays small. The general path (on_state) is one out-of-line function
 * per counted state change, each with a small frame too.
 *
 * Per-socket state lives in a lock-free open-addressing table in an array map: a
 * socket's slot is one of SOCK_PROBES consecutive slots from one given by its address,
 * claimed with compare-and-swap. The general path's table, `socks`, keeps the socket's
 * flow id, owner and ports; the short path's, `fast_socks`, only what a close needs (16
 * bytes a slot, not 104: four slots to a cache line). The loader sizes the table the
 * program uses and leaves the other one slot. A socket's own state changes are
 * serialised by its lock, so only the claim can race (with other sockets). Array lookups
 * are inlined by the verifier: this costs a fraction of a hash map's update and delete.
 *
 * The layouts below are mirrored in snat-ebpf/src/abi.rs; tests check them against this
 * object's BTF.
 */
#include "vmlinux_min.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_CLOSE = 7,
	TCP_LISTEN = 10,
	TCP_NEW_SYN_RECV = 12,
};

/* Event kinds (abi.rs: KIND_*). */
#define KIND_CONNECT 1
#define KIND_ACCEPT 2
#define KIND_CLOSE 3
#define KIND_FAILED_CONNECT 4

/* Directions (abi.rs: DIR_*). */
#define DIR_UNKNOWN 0
#define DIR_OUTBOUND 1
#define DIR_INBOUND 2

/* Event flags (abi.rs: FLAG_*). */
#define FLAG_OWNER_KNOWN 1
#define FLAG_DURATION_KNOWN 2

/* sock_info flags */
#define SI_ESTABLISHED 1
#define SI_FILTERED_OUT 2
#define SI_OWNER_KNOWN 4

/* Slots probed per socket in `socks` and `fast_socks`. */
#define SOCK_PROBES 8

/* stats indices (abi.rs: STAT_*) */
#define STAT_EVENTS_SENT 0
#define STAT_EVENTS_DROPPED 1
#define STAT_FLOWS_FULL 2
#define STAT_OWNER_UNKNOWN 3
#define STAT_COUNTED 4
#define STAT_SOCKS_FULL 5
#define STAT_MAX 8

/* ---- configuration, set by the loader before the program is loaded ---- */
const volatile __u8 cfg_emit_events = 0;
const volatile __u8 cfg_filter_netns = 0;
const volatile __u16 cfg_family = 0;
const volatile __u16 cfg_port = 0;
const volatile __u32 cfg_pid = 0;
/* Slots of each CPU's event ring, log2 (the loader sizes cpu_events to CPUs << this). */
const volatile __u32 cfg_ring_shift = 0;
/* Wake the reader when a CPU's ring holds this many unread events. */
const volatile __u32 cfg_wakeup_events = 1;
/* The largest flow id: entries of `flows` and `flow_counts` minus one. */
const volatile __u32 cfg_flow_max_id = 16383;
/* Entries of the socket table in use (`socks` or `fast_socks`) minus one (entries are a
 * power of two). */
const volatile __u32 cfg_socks_mask = 131071;
/* Set by the loader on x86, whose memory model (TSO) keeps stores in program order:
 * events are then published, and socket slots freed, with plain stores (see
 * store_release). */
const volatile __u8 cfg_tso = 0;

struct owner {
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
	char comm[16];
};

struct flow_key {
	__u32 netns;
	__u16 family;
	__u16 port;
	__u8 direction;
	__u8 pad[3];
	__u8 saddr[16];
	__u8 daddr[16];
};

struct flow_counts {
	__u64 connects;
	__u64 accepts;
	__u64 failed_connects;
	__u64 closes;
	__u64 open;
};

/* One slot of `fast_socks`, and the head of one of `socks` (struct sock_info): sk is 0
 * when the slot is free. In `fast_socks` every slot is an established connection, and
 * flags only says whether the filters dropped it. */
struct sock_slot {
	__u64 sk;
	__u32 flags;
	__u32 flow_id;
};

/* One slot of `socks`. */
struct sock_info {
	__u64 sk;
	__u32 flags;
	__u32 flow_id;
	struct flow_key key;
	__u16 sport;
	__u16 dport;
	__u64 established_ns;
	struct owner owner;
};

struct listen_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

struct listen_info {
	struct owner owner;
	__u64 sk;
};

struct tcp_event {
	__u64 ts_ns;
	__u64 duration_ns;
	__u64 cgroup_id;
	__u32 pid;
	__u32 netns;
	__s32 error;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u8 kind;
	__u8 prev_state;
	__u8 flags;
	__u8 direction;
	__u8 pad[2];
	__u8 saddr[16];
	__u8 daddr[16];
	char comm[16];
};

/* Flows: key -> id in `flows`, counters by id in `flow_counts` (ids are never reused,
 * flows never deleted), the next id in `flow_next`. A socket's slot keeps its flow's id,
 * so its close needs no hash lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u32);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct flow_counts);
} flow_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} flow_next SEC(".maps");

/* The flow each CPU used last in each direction (unknown, outbound, inbound), checked
 * before the hash: connections come in runs to the same destination (a storming pod most
 * of all), and a node's outbound connections interleave with its inbound ones (on
 * loopback, every connect is followed by its own accept). */
struct flow_cache {
	struct flow_key key;
	__u32 id;
	/* Where aggregated mode's short path made this entry for an IPv4 socket (else 0):
	 * the socket's struct net and ops table, so that the next socket can be checked
	 * against the entry with its own fields, before any key is built (see flow_hint). */
	__u64 net;
	__u64 prot;
};


struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct sock_info);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 131072);
	__type(key, __u32);
	__type(value, struct sock_slot);
} fast_socks SEC(".maps");

_Static_assert(__builtin_offsetof(struct sock_info, sk) == __builtin_offsetof(struct sock_slot, sk) &&
		       __builtin_offsetof(struct sock_info, flags) == __builtin_offsetof(struct sock_slot, flags) &&
		       __builtin_offsetof(struct sock_info, flow_id) == __builtin_offsetof(struct sock_slot, flow_id),
	       "a sock_info starts with a sock_slot");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct listen_key);
	__type(value, struct listen_info);
} listeners SEC(".maps");

/* Bumped at every change to `listeners`: a CPU's cached listener (see cpu_state) is valid
 * while the generation it was read under is the current one. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} listen_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} netns_allow SEC(".maps");

/* Protocol ops tables (struct proto addresses) seen on TCP sockets: see is_tcp_fields. */
#define TCP_PROTOS 4

/*
 * The event stream: one ring of events per CPU, in an array the reader maps into its
 * memory. CPU c owns entries [c << cfg_ring_shift, (c + 1) << cfg_ring_shift) of
 * cpu_events and entry c of cpu_pos. Only the program on CPU c writes its ring and its
 * head (a program never runs twice at once on one CPU), only the reader writes tail:
 * no lock, no cache line written by two CPUs (a BPF ring buffer takes one lock shared by
 * all CPUs for every record).
 */
struct ring_pos {
	__u64 head; /* events written on this CPU, ever */
	__u64 pad0[7];
	__u64 tail; /* events the reader has consumed */
	__u64 pad1[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ring_pos);
} cpu_pos SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcp_event);
} cpu_events SEC(".maps");

/* Wakeups only: a CPU whose ring fills up to cfg_wakeup_events writes its number here,
 * which wakes the reader (it otherwise drains on its timer). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} wakeups SEC(".maps");

/* The current task as owner. Direct: one helper call, then plain loads from the task
 * (bpf_get_current_task_btf, Linux 5.11+; the direct program needs 6.2+ anyway), the
 * same fields the three helpers below read. Each helper is a call, and on CPUs with
 * return-thunk mitigations every return is dear. */
static __always_inline void fill_owner(struct owner *o, const int direct)
{
	if (direct) {
		struct task_struct *t = bpf_get_current_task_btf();
		o->pid = t->tgid;
		o->tid = t->pid;
		o->cgroup_id = t->cgroups->dfl_cgrp->kn->id;
		const __u64 *comm = (const __u64 *)t->comm;
		((__u64 *)o->comm)[0] = comm[0];
		((__u64 *)o->comm)[1] = comm[1];
		return;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	o->pid = pid_tgid >> 32;
	o->tid = (__u32)pid_tgid;
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/*
 * A function kept out of line: a BPF subprogram with its own stack frame. `used` keeps
 * clang from dropping the return value when no caller reads it (it then leaves r0 as it
 * was, and the verifier refuses a subprogram that may return a stack pointer).
 */
#define __out_of_line __attribute__((noinline, used))

/* A function of the rare or general paths, out of line: one copy per way of reading the
 * socket (see read_fields), name_direct and name_probe, each calling the inline `name`
 * with `direct` last among its arguments. */
#define OUT_OF_LINE_COPIES(name, params, args)  \
	static __out_of_line int name##_direct params \
	{                                             \
		const int direct = 1;                 \
		return name args;                     \
	}                                             \
	static __out_of_line int name##_probe params  \
	{                                             \
		const int direct = 0;                 \
		return name args;                     \
	}

/* What the program reads of a socket: the start of struct sock_common. */
struct sk_fields {
	__u64 net;
	__u64 prot;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* Per-run scratch space: the socket's fields, the flow key and the owner, kept off the
 * stack (see cpu_state). */
struct scratch {
	struct sk_fields f;
	struct flow_key k;
	struct owner o;
	struct tcp_event e;
};

/*
 * What each CPU keeps for itself: entry `cpu` of `cpu_state`, an array the loader sizes
 * to the possible CPUs. An array indexed by CPU rather than a per-CPU map: its entries
 * sit right in the map, where a per-CPU map's lookup first loads the CPU's pointer from
 * the map, one more cache line per lookup; and all of it, looked up once per run, spans
 * a few neighbouring cache lines where separate maps spread over as many pages.
 *
 *   busy      how many runs of this program are under way on this CPU. On kernels
 *             without "bpf: Prevent bpf program recursion for raw tracepoint probes"
 *             (2022), a raw tracepoint program runs again when an interrupt (a softirq
 *             processing packets) hits the tracepoint while the program runs in process
 *             context (with it, the kernel skips such a run and counts it in
 *             recursion_misses). A nested run counts its event like any other, but
 *             leaves alone what the run it interrupted may be half way through: the
 *             flow cache, the scratch space of level 0, and the CPU's event ring (its
 *             event is counted as dropped).
 *   tcp_prot  protocol ops tables seen on TCP sockets (see is_tcp_fields), learned by
 *             each CPU for itself.
 *   stats     the counters (STAT_*) by nesting level, summed over the CPUs and levels
 *             by the reader (see stat_inc).
 *   last      the flow cache, by direction (see flow_id and flow_hint).
 *   listener  the listener this CPU looked up last and its owner, valid under generation
 *             gen of `listen_gen` (see listener_owner): a node accepts most of its
 *             connections on a few listeners, and a hash lookup is a call.
 *   x         scratch space, by nesting level (socket fields, flow key, owner, the event
 *             being written): with it each function's frame stays under the 64 bytes
 *             from which Linux 6.14+ moves it to a private per-CPU stack, cold memory
 *             that every run would then touch.
 *   guard     keeps one CPU's entry off the cache lines of the next.
 */
struct listen_cache {
	struct listen_key key;
	__u32 gen;
	__u32 known;
	struct owner owner;
};

struct cpu_state {
	__u32 busy;
	__u32 pad;
	__u64 tcp_prot[TCP_PROTOS];
	__u64 stats[2][STAT_MAX];
	struct flow_cache last[3];
	struct listen_cache listener;
	struct scratch x[2];
	__u8 guard[64];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cpu_state);
} cpu_state SEC(".maps");

/* Plain adds, one set of counters per nesting level: a run nested in another on this CPU
 * (see cpu_state) counts in its own set, so it cannot lose the other's increment between
 * its load and its store. Not atomic adds: on x86 a locked instruction waits for every
 * store before it to complete, and in stream mode these follow the event's stores to
 * ring lines the reader has read (a fifth of the program's samples sat there). */
static __always_inline void stat_inc(struct cpu_state *cs, __u32 idx)
{
	cs->stats[cs->busy > 1 ? 1 : 0][idx & (STAT_MAX - 1)] += 1;
}

/* Bytes read from the start of the socket in one go: through skc_v6_rcv_saddr on every
 * kernel since 4.x (88 on 6.x). */
#define HEAD_BYTES 96

#define HEAD_OFF(field) bpf_core_field_offset(((struct sock *)0)->__sk_common.field)
#define HEAD_HAS(field, size) (HEAD_OFF(field) + (size) <= HEAD_BYTES)

/*
 * Two ways to read kernel memory, chosen per program (`direct`, a constant in each):
 *
 * Direct (snat_tcp_state_cast): the socket pointer is cast with the kfunc bpf_rdonly_cast
 * (Linux 6.2+) into a read-only BTF pointer, and members are read with plain loads, which
 * the verifier turns into faulting-safe loads: no helper call, no copy through a stack
 * buffer. aya 0.14 cannot link kfunc calls, so the program calls a helper id that no
 * kernel has (SNAT_RDONLY_CAST_MARKER) and the loader rewrites each such call into a call
 * of the running kernel's bpf_rdonly_cast, by its BTF id. Without that function (or if
 * the kernel refuses the program) the loader uses the other program.
 *
 * Probe (snat_tcp_state_raw, snat_tcp_state): bpf_probe_read_kernel, on any kernel.
 */
#define SNAT_RDONLY_CAST_MARKER 0x5a7a0001
static void *(*const snat_rdonly_cast)(const void *obj, __u32 btf_id) = (void *)SNAT_RDONLY_CAST_MARKER;

#define AS_SOCK(sk) ((struct sock *)snat_rdonly_cast((sk), bpf_core_type_id_kernel(struct sock)))

/* An IPv4 socket's addresses take the first word of their 16 bytes; the other three must
 * be zero, not what an IPv6 socket read earlier on this CPU left in its scratch space: flow
 * keys are compared and hashed whole, so stale words split one IPv4 flow into several. */
static __always_inline void clear_v4_tail(struct sk_fields *f)
{
#pragma unroll
	for (int i = 1; i < 4; i++) {
		((__u32 *)f->saddr)[i] = 0;
		((__u32 *)f->daddr)[i] = 0;
	}
}

/* Read family, ports, addresses and the netns pointer: directly, or with one probe read
 * of the socket's first bytes, member by member (CO-RE) if some member lies beyond them. */
static __always_inline int read_fields(struct sock *sk, struct sk_fields *f, const int direct)
{
	if (direct) {
		struct sock_common *c = &AS_SOCK(sk)->__sk_common;
		f->family = c->skc_family;
		f->net = (__u64)c->skc_net.net;
		f->prot = (__u64)c->skc_prot;
		f->sport = c->skc_num;
		f->dport = bpf_ntohs(c->skc_dport);
		if (f->family == AF_INET) {
			*(__u32 *)f->saddr = c->skc_rcv_saddr;
			*(__u32 *)f->daddr = c->skc_daddr;
			clear_v4_tail(f);
		} else {
#pragma unroll
			for (int i = 0; i < 4; i++) {
				((__u32 *)f->saddr)[i] = c->skc_v6_rcv_saddr.in6_u.u6_addr32[i];
				((__u32 *)f->daddr)[i] = c->skc_v6_daddr.in6_u.u6_addr32[i];
			}
		}
		return 0;
	}
	if (HEAD_HAS(skc_daddr, 4) && HEAD_HAS(skc_rcv_saddr, 4) && HEAD_HAS(skc_dport, 2) &&
	    HEAD_HAS(skc_num, 2) && HEAD_HAS(skc_family, 2) && HEAD_HAS(skc_net, 8) && HEAD_HAS(skc_prot, 8) &&
	    HEAD_HAS(skc_v6_daddr, 16) && HEAD_HAS(skc_v6_rcv_saddr, 16)) {
		__u8 h[HEAD_BYTES] __attribute__((aligned(8)));
		if (bpf_probe_read_kernel(h, sizeof(h), sk))
			return -1;
		/* Each member at its type's natural alignment, which the kernel's layout keeps
		 * wherever CO-RE puts it: word copies instead of byte copies. */
#define HEAD_COPY(dst, field, size, align) \
	__builtin_memcpy(dst, __builtin_assume_aligned(h + HEAD_OFF(field), align), size)
		HEAD_COPY(&f->family, skc_family, 2, 2);
		HEAD_COPY(&f->net, skc_net, 8, 8);
		HEAD_COPY(&f->prot, skc_prot, 8, 8);
		__u16 dport, num;
		HEAD_COPY(&dport, skc_dport, 2, 2);
		HEAD_COPY(&num, skc_num, 2, 2);
		f->sport = num;
		f->dport = bpf_ntohs(dport);
		if (f->family == AF_INET) {
			HEAD_COPY(f->saddr, skc_rcv_saddr, 4, 4);
			HEAD_COPY(f->daddr, skc_daddr, 4, 4);
			clear_v4_tail(f);
		} else {
			HEAD_COPY(f->saddr, skc_v6_rcv_saddr, 16, 4);
			HEAD_COPY(f->daddr, skc_v6_daddr, 16, 4);
		}
#undef HEAD_COPY
		return 0;
	}
	f->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	f->net = (__u64)BPF_CORE_READ(sk, __sk_common.skc_net.net);
	f->prot = (__u64)BPF_CORE_READ(sk, __sk_common.skc_prot);
	f->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	f->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (f->family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)f->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)f->daddr, sk, __sk_common.skc_daddr);
		clear_v4_tail(f);
	} else {
		bpf_core_read(f->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(f->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	return 0;
}

static __always_inline __u32 net_inum(__u64 net, const int direct)
{
	if (direct)
		return ((struct net *)snat_rdonly_cast((void *)net, bpf_core_type_id_kernel(struct net)))->ns.inum;
	return BPF_CORE_READ((struct net *)net, ns.inum);
}

/* The local port from inet_sport: at CLOSE the kernel has already released the port and
 * zeroed skc_num, but inet_sport still holds it (as the classic tracepoint reports it). */
static __always_inline __u16 local_port(struct sock *sk, const int direct)
{
	if (direct)
		return bpf_ntohs(((struct inet_sock *)snat_rdonly_cast(sk, bpf_core_type_id_kernel(struct inet_sock)))
					 ->inet_sport);
	return bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

static __always_inline int is_tcp(struct sock *sk, const int direct)
{
	if (direct)
		return AS_SOCK(sk)->sk_protocol == IPPROTO_TCP;
	return BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP;
}

/* Whether sk, whose ops table is prot, is TCP by its sk_protocol; if so, remember prot in
 * this CPU's tcp_prot (a nested run may overwrite an entry the run it interrupted just
 * wrote: only ever with another TCP table, and a table forgotten costs one more read).
 * Out of line: it runs once per ops table and CPU, not per socket. One copy per way of
 * reading, so that a program never holds the other's calls. */
static __always_inline int tcp_prot_learn(struct cpu_state *cs, struct sock *sk, __u64 prot, const int direct)
{
	if (!is_tcp(sk, direct))
		return 0;
	if (prot) {
		for (int i = 0; i < TCP_PROTOS; i++) {
			if (cs->tcp_prot[i] == prot)
				break;
			if (cs->tcp_prot[i] == 0) {
				cs->tcp_prot[i] = prot;
				break;
			}
		}
	}
	return 1;
}

OUT_OF_LINE_COPIES(tcp_prot_learn, (struct cpu_state * cs, struct sock * sk, __u64 prot), (cs, sk, prot, direct))

/* Whether a socket whose fields f were read is TCP, by its protocol's ops table
 * (skc_prot, read with the other fields) when that table was seen on a TCP socket before,
 * else by reading sk_protocol. A struct proto serves one protocol (tcp_prot, tcpv6_prot,
 * and the copies a BPF sockmap swaps in are all TCP's; MPTCP sockets, which also pass
 * through this tracepoint, have their own), so a learned table never errs. */
static __always_inline int is_tcp_fields(struct cpu_state *cs, struct sock *sk, const struct sk_fields *f,
					 const int direct)
{
	if (f->prot) {
#pragma unroll
		for (int i = 0; i < TCP_PROTOS; i++)
			if (cs->tcp_prot[i] == f->prot)
				return 1;
	}
	return direct ? tcp_prot_learn_direct(cs, sk, f->prot) : tcp_prot_learn_probe(cs, sk, f->prot);
}

/* ---- the socket table ---- */

/* A socket's first slot: its address in units of 2 KiB (TCP sockets are larger, so live
 * sockets get distinct first slots until the table wraps). Sockets next to each other in
 * memory get slots next to each other: a hash spreading them over the whole table cost
 * cache and TLB misses, to this program and to the TCP stack around it. */
static __always_inline __u32 sock_hash(__u64 sk)
{
	return (__u32)(sk >> 11);
}

/* The slot of table (`socks` or `fast_socks`) holding sk, or NULL. */
static __always_inline struct sock_slot *slot_find(void *table, __u64 sk)
{
	__u32 h = sock_hash(sk);
	for (__u32 i = 0; i < SOCK_PROBES; i++) {
		__u32 idx = (h + i) & cfg_socks_mask;
		struct sock_slot *s = bpf_map_lookup_elem(table, &idx);
		if (s && s->sk == sk)
			return s;
	}
	return NULL;
}

/* A slot of table for sk: its own if it has one (a stale one after a missed close), else
 * a free one claimed with compare-and-swap; NULL when all its slots are taken. The caller
 * fills in everything but sk. */
static __always_inline struct sock_slot *slot_claim(struct cpu_state *cs, void *table, __u64 sk)
{
	__u32 h = sock_hash(sk);
	for (__u32 i = 0; i < SOCK_PROBES; i++) {
		__u32 idx = (h + i) & cfg_socks_mask;
		struct sock_slot *s = bpf_map_lookup_elem(table, &idx);
		if (!s)
			continue;
		if (s->sk == sk)
			return s;
		if (s->sk == 0 && __sync_val_compare_and_swap(&s->sk, 0, sk) == 0)
			return s;
	}
	stat_inc(cs, STAT_SOCKS_FULL);
	return NULL;
}

/* The general path's table. */
static __always_inline struct sock_info *sock_find(__u64 sk)
{
	return (struct sock_info *)slot_find(&socks, sk);
}

static __always_inline struct sock_info *sock_claim(struct cpu_state *cs, __u64 sk)
{
	return (struct sock_info *)slot_claim(cs, &socks, sk);
}

/* *p = v, visible only after every load and store before it (a release store). On x86
 * (cfg_tso) a store is never reordered before earlier loads or stores, so a plain store
 * after a compiler barrier is one; a locked instruction would stall until every earlier
 * store completes (often cache misses: an event's stores go to lines the reader has
 * read). Elsewhere an atomic exchange, which orders the accesses before it (arm64's JIT
 * gives it acquire-release semantics). */
static __always_inline void store_release(__u64 *p, __u64 v)
{
	if (cfg_tso) {
		asm volatile("" ::: "memory");
		*(volatile __u64 *)p = v;
	} else {
		__sync_lock_test_and_set(p, v);
	}
}

/* Free the slot (every claim sets all the fields it uses), after this run's reads of it. */
static __always_inline void slot_release(struct sock_slot *s)
{
	store_release(&s->sk, 0);
}

static __always_inline void sock_release(struct sock_info *s)
{
	slot_release((struct sock_slot *)s);
}

/* The filters on what a socket is (family, netns): the same at each of its state changes,
 * so a socket they reject needs no slot to be rejected again at its close. */
static __always_inline int socket_wanted(__u32 netns, __u16 family)
{
	if (cfg_family && family != cfg_family)
		return 0;
	if (cfg_filter_netns && !bpf_map_lookup_elem(&netns_allow, &netns))
		return 0;
	return 1;
}

/* The filters on the event's port and owner. */
static __always_inline int event_wanted(__u16 port, const struct owner *o, int owner_known)
{
	if (cfg_port && port != cfg_port)
		return 0;
	if (cfg_pid && (!owner_known || o->pid != cfg_pid))
		return 0;
	return 1;
}

/* Whether an event passes the configured filters. */
static __always_inline int wanted(__u32 netns, __u16 family, __u16 port, const struct owner *o, int owner_known)
{
	return socket_wanted(netns, family) && event_wanted(port, o, owner_known);
}

#define NO_FLOW 0xffffffffu

_Static_assert(sizeof(struct flow_key) == 44, "flow_key is eleven 4-byte words");

static __always_inline int key_eq(const struct flow_key *a, const struct flow_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	__u32 diff = 0;
#pragma unroll
	for (int i = 0; i < 11; i++)
		diff |= x[i] ^ y[i];
	return diff == 0;
}

/* Word by word: a struct copy loads all eleven words before it stores any, which spills
 * registers and grows the frame (see cpu_state). */
static __always_inline void key_copy(struct flow_key *to, const struct flow_key *from)
{
	const __u32 *a = (const __u32 *)from;
	__u32 *b = (__u32 *)to;
#pragma unroll
	for (int i = 0; i < 11; i++)
		b[i] = a[i];
}

/* The id of flow k, made on first sight; NO_FLOW (counted in flows_full) when the table
 * is full. The cache entry it leaves carries net and prot (see flow_cache; 0 and 0 when k
 * is not an IPv4 key read directly). */
static __always_inline __u32 flow_id(struct cpu_state *cs, const struct flow_key *k, int nested, __u64 net,
				     __u64 prot)
{
	__u32 zero = 0, dir = k->direction;
	/* A nested run leaves the cache to the run it interrupted (it may be half written). */
	struct flow_cache *last = nested || dir > 2 ? NULL : &cs->last[dir];
	if (last && last->id != NO_FLOW && key_eq(&last->key, k))
		return last->id;
	__u32 *found = bpf_map_lookup_elem(&flows, k);
	__u32 id;
	if (found) {
		id = *found;
	} else {
		__u32 *next = bpf_map_lookup_elem(&flow_next, &zero);
		if (!next)
			return NO_FLOW;
		id = __sync_fetch_and_add(next, 1);
		if (id > cfg_flow_max_id || bpf_map_update_elem(&flows, k, &id, BPF_NOEXIST)) {
			/* Full, or made by another CPU meanwhile (this id is then never used). */
			found = bpf_map_lookup_elem(&flows, k);
			if (!found) {
				stat_inc(cs, STAT_FLOWS_FULL);
				return NO_FLOW;
			}
			id = *found;
		}
	}
	if (last) {
		key_copy(&last->key, k);
		last->id = id;
		last->net = net;
		last->prot = prot;
	}
	return id;
}

static __always_inline struct flow_counts *flow_at(__u32 id)
{
	return id == NO_FLOW ? NULL : bpf_map_lookup_elem(&flow_counts, &id);
}

/* Count the close of a connection established during the trace under its flow (the id
 * its slot kept). */
static __always_inline void count_close(struct cpu_state *cs, __u32 flow_id)
{
	struct flow_counts *c = flow_at(flow_id);
	if (c) {
		__sync_fetch_and_add(&c->closes, 1);
		__sync_fetch_and_add(&c->open, (__u64)-1);
	} else {
		/* Its flow did not fit in the table when it was established. */
		stat_inc(cs, STAT_FLOWS_FULL);
	}
	stat_inc(cs, STAT_COUNTED);
}

static __always_inline struct flow_counts *flow_get(struct cpu_state *cs, const struct flow_key *k, int nested)
{
	return flow_at(flow_id(cs, k, nested, 0, 0));
}

/* Whether this run writes its event: not outside stream mode, nor in a nested run (the
 * run it interrupted may be writing this CPU's ring: the event is counted as dropped).
 * An event is filled in in the run's scratch space (event_fill), then copied to the ring
 * (event_send): no field of it then lives in a register across the ring's lookups, so
 * the frame stays small (see cpu_state). */
static __always_inline int event_allowed(struct cpu_state *cs, int nested)
{
	if (!cfg_emit_events)
		return 0;
	if (nested) {
		stat_inc(cs, STAT_EVENTS_DROPPED);
		return 0;
	}
	return 1;
}

static __always_inline void event_fill(struct tcp_event *e, const struct flow_key *k, __u8 kind, __u8 prev_state,
				       __u16 sport, __u16 dport, const struct owner *o, int owner_known, __u64 now,
				       __u64 duration, int duration_known, __s32 error)
{
	e->ts_ns = now;
	e->duration_ns = duration;
	e->cgroup_id = owner_known ? o->cgroup_id : 0;
	e->pid = owner_known ? o->pid : 0;
	e->netns = k->netns;
	e->error = error;
	e->family = k->family;
	e->sport = sport;
	e->dport = dport;
	e->kind = kind;
	e->prev_state = prev_state;
	e->flags = (owner_known ? FLAG_OWNER_KNOWN : 0) | (duration_known ? FLAG_DURATION_KNOWN : 0);
	e->direction = k->direction;
	e->pad[0] = 0;
	e->pad[1] = 0;
	__builtin_memcpy(e->saddr, k->saddr, 16);
	__builtin_memcpy(e->daddr, k->daddr, 16);
	if (owner_known)
		__builtin_memcpy(e->comm, o->comm, 16);
	else
		__builtin_memset(e->comm, 0, 16);
}

_Static_assert(sizeof(struct tcp_event) == 96, "tcp_event is twelve 8-byte words");

/* Copy event ev into this CPU's ring and publish it; counted as dropped when the ring is
 * full. */
static __always_inline void event_send(struct cpu_state *cs, const struct tcp_event *ev)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct ring_pos *p = bpf_map_lookup_elem(&cpu_pos, &cpu);
	if (!p) {
		stat_inc(cs, STAT_EVENTS_DROPPED);
		return;
	}
	__u64 head = p->head;
	__u64 waiting = head - *(volatile __u64 *)&p->tail;
	__u64 slots = 1ULL << cfg_ring_shift;
	if (waiting >= slots) {
		/* Full: the reader is behind. */
		stat_inc(cs, STAT_EVENTS_DROPPED);
		return;
	}
	__u32 idx = (cpu << cfg_ring_shift) | (__u32)(head & (slots - 1));
	struct tcp_event *e = bpf_map_lookup_elem(&cpu_events, &idx);
	if (!e) {
		stat_inc(cs, STAT_EVENTS_DROPPED);
		return;
	}
	/* Word by word (see key_copy). */
	const __u64 *from = (const __u64 *)ev;
	__u64 *to = (__u64 *)e;
#pragma unroll
	for (int i = 0; i < 12; i++)
		to[i] = from[i];
	/* Publish it: the reader loads head with acquire ordering. Only this CPU's runs that
	 * are not nested write head (see event_allowed), so head + 1 is its next value. */
	store_release(&p->head, head + 1);
	/* Wake the reader once, when this ring reaches the threshold (it grows one event at
	 * a time, so it cannot jump past it): each wakeup is an interrupt, a VM exit in a
	 * virtual machine. A wakeup lost to a full `wakeups` is caught by the reader's timer. */
	if (waiting + 1 == cfg_wakeup_events)
		bpf_ringbuf_output(&wakeups, &cpu, sizeof(cpu), BPF_RB_FORCE_WAKEUP);
	stat_inc(cs, STAT_EVENTS_SENT);
}

/* Write one event to the stream (when this run writes one: see event_allowed). */
static __always_inline void emit(struct cpu_state *cs, const struct flow_key *k, __u8 kind, __u8 prev_state,
				 __u16 sport, __u16 dport, const struct owner *o, int owner_known, __u64 now,
				 __u64 duration, int duration_known, __s32 error, int nested)
{
	if (!event_allowed(cs, nested))
		return;
	struct tcp_event *e = &cs->x[0].e;
	event_fill(e, k, kind, prev_state, sport, dport, o, owner_known, now, duration, duration_known, error);
	event_send(cs, e);
}

/* Read a TCP socket (AF_INET or AF_INET6) and start its flow key: netns, family,
 * addresses. Non-zero for any other socket. */
static __always_inline int read_tcp(struct cpu_state *cs, struct sock *sk, struct sk_fields *f, struct flow_key *k,
				    const int direct)
{
	if (read_fields(sk, f, direct))
		return -1;
	if (f->family != AF_INET && f->family != AF_INET6)
		return -1;
	if (!is_tcp_fields(cs, sk, f, direct))
		return -1;
	k->netns = net_inum(f->net, direct);
	k->family = f->family;
	__builtin_memcpy(k->saddr, f->saddr, 16);
	__builtin_memcpy(k->daddr, f->daddr, 16);
	return 0;
}

/*
 * The time a socket reached ESTABLISHED, on the clock of every event time
 * (CLOCK_MONOTONIC, bpf_ktime_get_ns). Direct: the socket's tcp_clock_cache, which TCP
 * sets to tcp_clock_ns(), that same clock, when it starts processing a packet
 * (tcp_mstamp_refresh); a socket becomes ESTABLISHED while TCP processes the SYN-ACK
 * (connect) or the handshake's last ACK (accept), after that refresh. A plain load where
 * a clock read is a helper call and an indirect call into the clocksource (the four per
 * connection were a fifth of stream mode's cost). At worst (a kernel that no longer
 * refreshes it there) the time is that of the handshake's previous packet. Probe: clock.
 */
static __always_inline __u64 established_ns(struct sock *sk, const int direct)
{
	if (direct && bpf_core_field_exists(struct tcp_sock, tcp_clock_cache)) {
		__u64 t = ((struct tcp_sock *)snat_rdonly_cast(sk, bpf_core_type_id_kernel(struct tcp_sock)))
				  ->tcp_clock_cache;
		if (t)
			return t;
	}
	return bpf_ktime_get_ns();
}

/* Whether owners are recorded: only what uses them pays for them. */
#define TRACK_OWNERS (cfg_emit_events || cfg_pid)

/* A listener opens (inside listen(): current is the caller) or closes. Out of line, as
 * are all rare paths: the hot ones then keep a small stack frame (see cpu_state). */
static __always_inline int on_listen(struct cpu_state *cs, struct sock *sk, int newstate, const int direct)
{
	__u64 skey = (__u64)sk;
	struct sk_fields f = {};
	struct flow_key k = {};
	if (read_tcp(cs, sk, &f, &k, direct))
		return 0;
	struct listen_key lk = { .netns = k.netns, .port = local_port(sk, direct) };
	if (newstate == TCP_LISTEN) {
		/* Inside listen(): current is the caller. */
		struct listen_info li = { .sk = skey };
		fill_owner(&li.owner, direct);
		bpf_map_update_elem(&listeners, &lk, &li, BPF_ANY);
	} else {
		struct listen_info *li = bpf_map_lookup_elem(&listeners, &lk);
		if (!li || li->sk != skey)
			return 0;
		bpf_map_delete_elem(&listeners, &lk);
	}
	/* After the change, so that a CPU that read the old generation before its lookup
	 * cannot keep what it found under the new one. */
	__u32 zero = 0;
	__u32 *gen = bpf_map_lookup_elem(&listen_gen, &zero);
	if (gen)
		__sync_fetch_and_add(gen, 1);
	return 0;
}

OUT_OF_LINE_COPIES(on_listen, (struct cpu_state * cs, struct sock * sk, int newstate), (cs, sk, newstate, direct))

/* The close of a socket not established during the trace (s: its slot, holding at most
 * the owner from SYN_SENT, or NULL): a failed connect, or the close of a connection
 * established before the trace. Out of line. */
static __always_inline int on_close_untracked(struct cpu_state *cs, struct sock *sk, int oldstate,
					      struct sock_info *s, int nested, const int direct)
{
	__u64 now = cfg_emit_events ? bpf_ktime_get_ns() : 0;
	/* Not established during the trace: its slot holds at most the owner from SYN_SENT. */
	struct owner o = {};
	int owner_known = 0;
	if (s) {
		if (s->flags & SI_OWNER_KNOWN) {
			o = s->owner;
			owner_known = 1;
		}
		sock_release(s);
	}
	if (oldstate == TCP_SYN_RECV || oldstate == TCP_NEW_SYN_RECV)
		/* An incoming connection that never got established: not counted. */
		return 0;
	struct sk_fields f = {};
	struct flow_key k = {};
	if (read_tcp(cs, sk, &f, &k, direct))
		return 0;
	if (cfg_emit_events)
		f.sport = local_port(sk, direct);
	k.port = f.dport;

	if (oldstate == TCP_SYN_SENT) {
		/* A connect that never got established. */
		k.direction = DIR_OUTBOUND;
		if (!wanted(k.netns, f.family, k.port, &o, owner_known))
			return 0;
		if (TRACK_OWNERS && !owner_known)
			stat_inc(cs, STAT_OWNER_UNKNOWN);
		__s32 err = direct ? AS_SOCK(sk)->sk_err : BPF_CORE_READ(sk, sk_err);
		struct flow_counts *c = flow_get(cs, &k, nested);
		if (c)
			__sync_fetch_and_add(&c->failed_connects, 1);
		stat_inc(cs, STAT_COUNTED);
		emit(cs, &k, KIND_FAILED_CONNECT, oldstate, f.sport, f.dport, &o, owner_known, now, 0, 0, err, nested);
		return 0;
	}

	/* Established before the trace started: owner and direction unknown. */
	k.direction = DIR_UNKNOWN;
	struct owner none = {};
	if (!wanted(k.netns, f.family, k.port, &none, 0))
		return 0;
	struct flow_counts *c = flow_get(cs, &k, nested);
	if (c)
		__sync_fetch_and_add(&c->closes, 1);
	stat_inc(cs, STAT_COUNTED);
	emit(cs, &k, KIND_CLOSE, oldstate, f.sport, f.dport, &none, 0, now, 0, 0, 0, nested);
	return 0;
}

OUT_OF_LINE_COPIES(on_close_untracked,
		   (struct cpu_state * cs, struct sock * sk, int oldstate, struct sock_info * s, int nested),
		   (cs, sk, oldstate, s, nested, direct))

/*
 * The general path, for the stream and the pid filter, which use owners: one function
 * per state change that counts, each out of line so that each keeps its own frame under
 * the 64 bytes from which Linux 6.14+ gives a function a private stack (see cpu_state).
 */

/* A connect starts (inside connect(): current is the caller): record its owner. */
static __always_inline int on_syn_sent(struct cpu_state *cs, struct sock *sk, int nested, const int direct)
{
	if (cfg_filter_netns || cfg_family) {
		struct scratch *x = &cs->x[nested ? 1 : 0];
		__builtin_memset(&x->k, 0, sizeof(x->k));
		if (read_tcp(cs, sk, &x->f, &x->k, direct) || !socket_wanted(x->k.netns, x->k.family))
			return 0;
	} else if (!is_tcp(sk, direct)) {
		return 0;
	}
	struct sock_info *s = sock_claim(cs, (__u64)sk);
	if (!s)
		return 0;
	s->flags = SI_OWNER_KNOWN;
	fill_owner(&s->owner, direct);
	return 0;
}

/* The owner of the listener that accepted the connection in x (its netns and local port),
 * into x->o; zero when it is not known. From this CPU's cached listener when that is the
 * one and no listener changed since (a nested run leaves the cache to the run it
 * interrupted), else from `listeners`. */
static __always_inline int listener_owner(struct cpu_state *cs, struct scratch *x, int nested)
{
	__u32 zero = 0;
	__u32 *genp = bpf_map_lookup_elem(&listen_gen, &zero);
	if (!genp)
		return 0;
	/* Read before the lookup (see on_listen). */
	__u32 gen = *(volatile __u32 *)genp;
	struct listen_cache *lc = nested ? NULL : &cs->listener;
	if (lc && lc->gen == gen && lc->key.netns == x->k.netns && lc->key.port == x->f.sport) {
		if (!lc->known)
			return 0;
		x->o = lc->owner;
		return 1;
	}
	struct listen_key lk = { .netns = x->k.netns, .port = x->f.sport };
	struct listen_info *li = bpf_map_lookup_elem(&listeners, &lk);
	if (li)
		x->o = li->owner;
	if (lc) {
		lc->key = lk;
		lc->gen = gen;
		lc->known = li != NULL;
		if (li)
			lc->owner = x->o;
	}
	return li != NULL;
}

/* A connection is established, from SYN_SENT (a connect) or SYN_RECV (an accept). What its
 * event needs later (kind, previous state, time, whether the owner is known) goes into
 * the scratch event as soon as it is known, rather than stay in registers across the
 * helper calls that follow: that keeps the frame under 64 bytes. */
static __always_inline int on_established(struct cpu_state *cs, struct sock *sk, int oldstate, int nested,
					  const int direct)
{
	struct scratch *x = &cs->x[nested ? 1 : 0];
	struct tcp_event *ev = &x->e;
	__builtin_memset(x, 0, __builtin_offsetof(struct scratch, e));
	if (read_tcp(cs, sk, &x->f, &x->k, direct) || !socket_wanted(x->k.netns, x->k.family))
		return 0;
	int outbound = oldstate == TCP_SYN_SENT;
	x->k.direction = outbound ? DIR_OUTBOUND : DIR_INBOUND;
	x->k.port = outbound ? x->f.dport : x->f.sport;
	ev->kind = outbound ? KIND_CONNECT : KIND_ACCEPT;
	ev->prev_state = oldstate;
	ev->flags = 0;
	/* Timestamps only travel in events (and durations between them). */
	ev->ts_ns = cfg_emit_events ? established_ns(sk, direct) : 0;
	struct sock_info *s = NULL;
	if (outbound) {
		s = sock_find((__u64)sk);
		if (s && (s->flags & SI_OWNER_KNOWN)) {
			x->o = s->owner;
			ev->flags = FLAG_OWNER_KNOWN;
		}
	} else if (listener_owner(cs, x, nested)) {
		ev->flags = FLAG_OWNER_KNOWN;
	}
	/* socket_wanted passed above. */
	int pass = event_wanted(x->k.port, &x->o, ev->flags & FLAG_OWNER_KNOWN);
	__u32 id = pass ? flow_id(cs, &x->k, nested, 0, 0) : NO_FLOW;
	if (!s)
		s = sock_claim(cs, (__u64)sk);
	if (s) {
		s->flow_id = id;
		if (cfg_emit_events) {
			/* What only its close event uses. */
			key_copy(&s->key, &x->k);
			s->sport = x->f.sport;
			s->dport = x->f.dport;
			s->established_ns = ev->ts_ns;
		}
		s->flags = SI_ESTABLISHED | (pass ? 0 : SI_FILTERED_OUT) |
			   (ev->flags & FLAG_OWNER_KNOWN ? SI_OWNER_KNOWN : 0);
		s->owner = x->o;
	}
	if (!pass)
		return 0;
	if (!(ev->flags & FLAG_OWNER_KNOWN))
		stat_inc(cs, STAT_OWNER_UNKNOWN);
	struct flow_counts *c = flow_at(id);
	if (c) {
		__sync_fetch_and_add(ev->kind == KIND_CONNECT ? &c->connects : &c->accepts, 1);
		/* Open only when its close can be matched: a socket without a slot
		 * (counted in socks_full) closes without direction. */
		if (s)
			__sync_fetch_and_add(&c->open, 1);
	}
	stat_inc(cs, STAT_COUNTED);
	if (event_allowed(cs, nested)) {
		event_fill(ev, &x->k, ev->kind, ev->prev_state, x->f.sport, x->f.dport, &x->o,
			   ev->flags & FLAG_OWNER_KNOWN, ev->ts_ns, 0, 0, 0);
		event_send(cs, ev);
	}
	return 0;
}

/* A socket closes. */
static __always_inline int on_close(struct cpu_state *cs, struct sock *sk, int oldstate, int nested, const int direct)
{
	struct sock_info *s = sock_find((__u64)sk);
	__u64 now = cfg_emit_events ? bpf_ktime_get_ns() : 0;

	if (s && (s->flags & SI_ESTABLISHED)) {
		/* Close of a connection established during the trace. */
		if (s->flags & SI_FILTERED_OUT) {
			sock_release(s);
			return 0;
		}
		count_close(cs, s->flow_id);
		/* The event straight from the slot, before the slot is freed. */
		int send = event_allowed(cs, nested);
		if (send)
			event_fill(&cs->x[0].e, &s->key, KIND_CLOSE, oldstate, s->sport, s->dport, &s->owner,
				   !!(s->flags & SI_OWNER_KNOWN), now, now - s->established_ns, 1, 0);
		sock_release(s);
		if (send)
			event_send(cs, &cs->x[0].e);
		return 0;
	}

	return direct ? on_close_untracked_direct(cs, sk, oldstate, s, nested)
		      : on_close_untracked_probe(cs, sk, oldstate, s, nested);
}

OUT_OF_LINE_COPIES(on_syn_sent, (struct cpu_state * cs, struct sock * sk, int nested), (cs, sk, nested, direct))
OUT_OF_LINE_COPIES(on_established, (struct cpu_state * cs, struct sock * sk, int oldstate, int nested),
		   (cs, sk, oldstate, nested, direct))
OUT_OF_LINE_COPIES(on_close, (struct cpu_state * cs, struct sock * sk, int oldstate, int nested),
		   (cs, sk, oldstate, nested, direct))

/*
 * One state change of socket sk. Decided on the states alone first, so that the
 * transitions nobody counts (FIN_WAIT*, CLOSE_WAIT, LAST_ACK, a child cloned from its
 * listener) cost no read of the socket and no map operation.
 */
static __always_inline int on_state(struct cpu_state *cs, struct sock *sk, int oldstate, int newstate, int nested,
				    const int direct)
{
	if (newstate == TCP_SYN_SENT)
		return direct ? on_syn_sent_direct(cs, sk, nested) : on_syn_sent_probe(cs, sk, nested);
	if (newstate == TCP_LISTEN || (oldstate == TCP_LISTEN && newstate == TCP_CLOSE))
		return direct ? on_listen_direct(cs, sk, newstate) : on_listen_probe(cs, sk, newstate);
	if (newstate == TCP_ESTABLISHED) {
		if (oldstate != TCP_SYN_SENT && oldstate != TCP_SYN_RECV)
			return 0;
		return direct ? on_established_direct(cs, sk, oldstate, nested)
			      : on_established_probe(cs, sk, oldstate, nested);
	}
	if (newstate != TCP_CLOSE)
		return 0;
	return direct ? on_close_direct(cs, sk, oldstate, nested) : on_close_probe(cs, sk, oldstate, nested);
}

/*
 * The flow of an IPv4 socket read directly, when it is the one this CPU's cache entry for
 * its direction was made for by this path: the socket's struct net, ops table (a TCP
 * one: the entry was made after is_tcp_fields), addresses and port are the entry's, and
 * the network namespace still has the entry's inode (a struct net freed and made again
 * at the same address has another). No key is built and no key compared: a handful of
 * loads from the socket's first cache line. Else NO_FLOW, and the caller takes the whole
 * way (read_tcp, flow_id), which makes the entry for the next socket.
 */
static __always_inline __u32 flow_hint(struct cpu_state *cs, struct sock *sk, int outbound)
{
	struct flow_cache *last = &cs->last[outbound ? DIR_OUTBOUND : DIR_INBOUND];
	struct sock_common *c = &AS_SOCK(sk)->__sk_common;
	__u64 net = (__u64)c->skc_net.net;
	if (last->net != net || last->prot != (__u64)c->skc_prot || c->skc_family != AF_INET)
		return NO_FLOW;
	const __u32 *w = (const __u32 *)&last->key;
	__u16 port = outbound ? bpf_ntohs(c->skc_dport) : c->skc_num;
	/* Words of struct flow_key: 0 netns, 1 family and port, 3 saddr, 7 daddr; an IPv4
	 * key's other address words are zero. */
	if (w[1] != (AF_INET | (__u32)port << 16) || w[3] != c->skc_rcv_saddr || w[7] != c->skc_daddr)
		return NO_FLOW;
	if (w[0] != net_inum(net, 1))
		return NO_FLOW;
	return last->id;
}

_Static_assert(__builtin_offsetof(struct flow_key, family) == 4 && __builtin_offsetof(struct flow_key, port) == 6 &&
		       __builtin_offsetof(struct flow_key, saddr) == 12 && __builtin_offsetof(struct flow_key, daddr) == 28,
	       "flow_hint reads the key by words");

/*
 * The fast path: aggregated mode without a pid filter, where no owner and no event is
 * ever used. The common case, and the one whose cost every connection of the node pays.
 * It counts exactly what on_state counts, but keeps only what counting needs (no
 * listeners, no owners, no event fields), in code small enough that the program's frame
 * stays under the 64 bytes from which Linux 6.14+ gives it a private stack (see
 * cpu_state). Everything rare goes out of line.
 */
static __always_inline int fast_established(struct cpu_state *cs, struct sock *sk, int oldstate, int nested,
					    const int direct)
{
	int outbound = oldstate == TCP_SYN_SENT;
	/* Not in a nested run: the cache is the interrupted run's. The filters need no
	 * second look: an entry is only made for a socket they passed (socket_wanted, and
	 * flow_id is only asked when the port passed), and one that matches the entry has
	 * the same network namespace, family and port. */
	__u32 id = direct && !nested ? flow_hint(cs, sk, outbound) : NO_FLOW;
	int pass = 1;
	if (id == NO_FLOW) {
		struct scratch *x = &cs->x[nested ? 1 : 0];
		struct flow_key *k = &x->k;
		__builtin_memset(k, 0, sizeof(*k));
		if (read_tcp(cs, sk, &x->f, k, direct) || !socket_wanted(k->netns, k->family))
			return 0;
		k->direction = outbound ? DIR_OUTBOUND : DIR_INBOUND;
		k->port = outbound ? x->f.dport : x->f.sport;
		pass = !cfg_port || k->port == cfg_port;
		int hint = direct && x->f.family == AF_INET;
		id = pass ? flow_id(cs, k, nested, hint ? x->f.net : 0, hint ? x->f.prot : 0) : NO_FLOW;
	}
	struct sock_slot *s = slot_claim(cs, &fast_socks, (__u64)sk);
	if (s) {
		s->flow_id = id;
		/* Only SI_FILTERED_OUT: every slot of this table is claimed here. */
		s->flags = pass ? 0 : SI_FILTERED_OUT;
	}
	if (!pass)
		return 0;
	struct flow_counts *c = flow_at(id);
	if (c) {
		__sync_fetch_and_add(outbound ? &c->connects : &c->accepts, 1);
		/* Open only when its close can be matched (see on_established). */
		if (s)
			__sync_fetch_and_add(&c->open, 1);
	}
	stat_inc(cs, STAT_COUNTED);
	return 0;
}

static __always_inline int fast_close(struct cpu_state *cs, struct sock *sk, int oldstate, int nested,
				      const int direct)
{
	/* The short path claims slots only at ESTABLISHED: a socket with a slot is a
	 * connection established during the trace. */
	struct sock_slot *s = slot_find(&fast_socks, (__u64)sk);
	if (s) {
		if (!(s->flags & SI_FILTERED_OUT))
			count_close(cs, s->flow_id);
		slot_release(s);
		return 0;
	}
	return direct ? on_close_untracked_direct(cs, sk, oldstate, NULL, nested)
		      : on_close_untracked_probe(cs, sk, oldstate, NULL, nested);
}

/* Whether the short path has anything to do at this state change: a connection
 * established, or a socket closed. A listener's close needs nothing here: listeners only
 * serve owners. Checked first of all, so that every other change (SYN_SENT, SYN_RECV,
 * FIN_WAIT1, ...: most of them) costs no more than the program's dispatch. */
static __always_inline int fast_counts(int oldstate, int newstate)
{
	if (newstate == TCP_ESTABLISHED)
		return oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV;
	return newstate == TCP_CLOSE && oldstate != TCP_LISTEN;
}

/* A change that fast_counts accepted (run checks it first): an established connection
 * or a close. */
static __always_inline int fast_state(struct cpu_state *cs, struct sock *sk, int oldstate, int newstate, int nested,
				      const int direct)
{
	if (newstate == TCP_ESTABLISHED)
		return fast_established(cs, sk, oldstate, nested, direct);
	return fast_close(cs, sk, oldstate, nested, direct);
}

static __always_inline int run(struct sock *sk, int oldstate, int newstate, const int direct)
{
	if (!TRACK_OWNERS && !fast_counts(oldstate, newstate))
		return 0;
	__u32 cpu = bpf_get_smp_processor_id();
	struct cpu_state *cs = bpf_map_lookup_elem(&cpu_state, &cpu);
	if (!cs)
		return 0;
	__u32 busy = cs->busy;
	int nested = busy != 0;
	cs->busy = busy + 1;
	if (TRACK_OWNERS)
		on_state(cs, sk, oldstate, newstate, nested, direct);
	else
		fast_state(cs, sk, oldstate, newstate, nested, direct);
	cs->busy = busy;
	return 0;
}

/* Preferred attach: the raw tracepoint, whose arguments are (sk, oldstate, newstate). The
 * kernel then builds no trace record: cheaper on every socket state change. With direct
 * reads (see snat_rdonly_cast) where the kernel allows them, else with probe reads. */
SEC("raw_tracepoint/inet_sock_set_state")
int snat_tcp_state_cast(struct bpf_raw_tracepoint_args *ctx)
{
	return run((struct sock *)ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], 1);
}

SEC("raw_tracepoint/inet_sock_set_state")
int snat_tcp_state_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return run((struct sock *)ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], 0);
}

/* Fallback attach: the classic tracepoint, for kernels that refuse raw tracepoints. Each
 * context field is read once into a local (the verifier refuses modified ctx pointers). */
SEC("tracepoint/sock/inet_sock_set_state")
int snat_tcp_state(struct inet_sock_set_state_args *ctx)
{
	const void *skaddr = ctx->skaddr;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;
	return run((struct sock *)skaddr, oldstate, newstate, 0);
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/*
 * snat's kernel-side TCP tracer, on tracepoint sock:inet_sock_set_state (no kprobes).
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
 *
 * Every counted event is added to the `flows` hash map, keyed by
 * (netns, family, direction, port, saddr, daddr) where port is the remote port of an
 * outbound connection and the local (listening) port of an inbound one. With
 * cfg_emit_events set, each event is also written to the `events` ring buffer with
 * batched wakeups. Every loss is counted in `stats`.
 *
 * The layouts below are mirrored in snat-ebpf/src/abi.rs; tests check them against this
 * object's BTF.
 */
#include "vmlinux_min.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

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
const volatile __u64 cfg_wakeup_bytes = 65536;

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

struct sock_info {
	struct owner owner;
	struct flow_key key;
	__u32 pad;
	__u64 established_ns;
	__u32 flags;
	__u32 owner_known;
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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct flow_counts);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, struct sock_info);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct listen_key);
	__type(value, struct listen_info);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} netns_allow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024);
} events SEC(".maps");

/* Never written: it puts struct tcp_event in the object's BTF so that tests can check
 * its layout against the Rust mirror (a type used only through the ring buffer is not). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tcp_event);
} event_layout SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline void fill_owner(struct owner *o)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	o->pid = pid_tgid >> 32;
	o->tid = (__u32)pid_tgid;
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline __u32 sock_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void read_addrs(struct sock *sk, __u16 family, __u8 *saddr, __u8 *daddr)
{
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)daddr, sk, __sk_common.skc_daddr);
	} else {
		bpf_core_read(saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

/* Whether an event passes the configured filters. */
static __always_inline int wanted(__u32 netns, __u16 family, __u16 port, const struct owner *o, int owner_known)
{
	if (cfg_family && family != cfg_family)
		return 0;
	if (cfg_port && port != cfg_port)
		return 0;
	if (cfg_pid && (!owner_known || o->pid != cfg_pid))
		return 0;
	if (cfg_filter_netns && !bpf_map_lookup_elem(&netns_allow, &netns))
		return 0;
	return 1;
}

static __always_inline struct flow_counts *flow_get(const struct flow_key *k)
{
	struct flow_counts *c = bpf_map_lookup_elem(&flows, k);
	if (c)
		return c;
	struct flow_counts zero = {};
	bpf_map_update_elem(&flows, k, &zero, BPF_NOEXIST);
	c = bpf_map_lookup_elem(&flows, k);
	if (!c)
		stat_inc(STAT_FLOWS_FULL);
	return c;
}

static __always_inline void emit(const struct flow_key *k, __u8 kind, __u8 prev_state, __u16 sport, __u16 dport,
				 const struct owner *o, int owner_known, __u64 now, __u64 duration, int duration_known,
				 __s32 error)
{
	if (!cfg_emit_events)
		return;
	struct tcp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		stat_inc(STAT_EVENTS_DROPPED);
		return;
	}
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
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(e, avail >= cfg_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	stat_inc(STAT_EVENTS_SENT);
}

SEC("tracepoint/sock/inet_sock_set_state")
int snat_tcp_state(struct inet_sock_set_state_args *ctx)
{
	/* Each context field is read once into a local (the verifier refuses modified ctx
	 * pointers); addresses are read from the socket. */
	const void *skaddr = ctx->skaddr;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;
	__u16 sport = ctx->sport;
	__u16 dport = ctx->dport;
	__u16 family = ctx->family;
	__u16 protocol = ctx->protocol;

	if (protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
		return 0;

	struct sock *sk = (struct sock *)skaddr;
	__u64 skey = (__u64)skaddr;

	if (newstate == TCP_SYN_SENT) {
		/* Inside connect(): current is the caller. */
		struct sock_info si = {};
		fill_owner(&si.owner);
		si.owner_known = 1;
		if (bpf_map_update_elem(&socks, &skey, &si, BPF_ANY))
			stat_inc(STAT_SOCKS_FULL);
		return 0;
	}

	if (newstate == TCP_LISTEN) {
		/* Inside listen(): current is the caller. */
		struct listen_key lk = { .netns = sock_netns(sk), .port = sport };
		struct listen_info li = { .sk = skey };
		fill_owner(&li.owner);
		bpf_map_update_elem(&listeners, &lk, &li, BPF_ANY);
		return 0;
	}

	if (oldstate == TCP_LISTEN) {
		struct listen_key lk = { .netns = sock_netns(sk), .port = sport };
		struct listen_info *li = bpf_map_lookup_elem(&listeners, &lk);
		if (li && li->sk == skey)
			bpf_map_delete_elem(&listeners, &lk);
		return 0;
	}

	__u64 now = bpf_ktime_get_boot_ns();

	if (newstate == TCP_ESTABLISHED && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV)) {
		struct flow_key k = {};
		k.netns = sock_netns(sk);
		k.family = family;
		read_addrs(sk, family, k.saddr, k.daddr);
		__u8 kind;
		struct sock_info *known = bpf_map_lookup_elem(&socks, &skey);
		struct sock_info si = {};
		if (oldstate == TCP_SYN_SENT) {
			kind = KIND_CONNECT;
			k.direction = DIR_OUTBOUND;
			k.port = dport;
			if (known && known->owner_known) {
				si.owner = known->owner;
				si.owner_known = 1;
			}
		} else {
			kind = KIND_ACCEPT;
			k.direction = DIR_INBOUND;
			k.port = sport;
			struct listen_key lk = { .netns = k.netns, .port = sport };
			struct listen_info *li = bpf_map_lookup_elem(&listeners, &lk);
			if (li) {
				si.owner = li->owner;
				si.owner_known = 1;
			}
		}
		si.key = k;
		si.established_ns = now;
		si.flags = SI_ESTABLISHED;
		if (!wanted(k.netns, family, k.port, &si.owner, si.owner_known)) {
			si.flags |= SI_FILTERED_OUT;
			bpf_map_update_elem(&socks, &skey, &si, BPF_ANY);
			return 0;
		}
		if (bpf_map_update_elem(&socks, &skey, &si, BPF_ANY))
			stat_inc(STAT_SOCKS_FULL);
		if (!si.owner_known)
			stat_inc(STAT_OWNER_UNKNOWN);
		struct flow_counts *c = flow_get(&k);
		if (c) {
			if (kind == KIND_CONNECT)
				__sync_fetch_and_add(&c->connects, 1);
			else
				__sync_fetch_and_add(&c->accepts, 1);
			__sync_fetch_and_add(&c->open, 1);
		}
		stat_inc(STAT_COUNTED);
		emit(&k, kind, oldstate, sport, dport, &si.owner, si.owner_known, now, 0, 0, 0);
		return 0;
	}

	if (newstate != TCP_CLOSE)
		return 0;

	struct sock_info *known = bpf_map_lookup_elem(&socks, &skey);

	if (oldstate == TCP_SYN_RECV || oldstate == TCP_NEW_SYN_RECV) {
		/* An incoming connection that never got established: not counted. */
		if (known)
			bpf_map_delete_elem(&socks, &skey);
		return 0;
	}

	if (oldstate == TCP_SYN_SENT) {
		struct flow_key k = {};
		k.netns = sock_netns(sk);
		k.family = family;
		k.direction = DIR_OUTBOUND;
		k.port = dport;
		read_addrs(sk, family, k.saddr, k.daddr);
		struct owner o = {};
		int owner_known = 0;
		if (known && known->owner_known) {
			o = known->owner;
			owner_known = 1;
		}
		if (known)
			bpf_map_delete_elem(&socks, &skey);
		if (!wanted(k.netns, family, k.port, &o, owner_known))
			return 0;
		if (!owner_known)
			stat_inc(STAT_OWNER_UNKNOWN);
		__s32 err = BPF_CORE_READ(sk, sk_err);
		struct flow_counts *c = flow_get(&k);
		if (c)
			__sync_fetch_and_add(&c->failed_connects, 1);
		stat_inc(STAT_COUNTED);
		emit(&k, KIND_FAILED_CONNECT, oldstate, sport, dport, &o, owner_known, now, 0, 0, err);
		return 0;
	}

	/* Close of a connection that was established. */
	if (known) {
		struct sock_info si = *known;
		bpf_map_delete_elem(&socks, &skey);
		if (!(si.flags & SI_ESTABLISHED) || (si.flags & SI_FILTERED_OUT))
			return 0;
		struct flow_counts *c = flow_get(&si.key);
		if (c) {
			__sync_fetch_and_add(&c->closes, 1);
			__sync_fetch_and_add(&c->open, (__u64)-1);
		}
		stat_inc(STAT_COUNTED);
		emit(&si.key, KIND_CLOSE, oldstate, sport, dport, &si.owner, si.owner_known, now,
		     now - si.established_ns, 1, 0);
		return 0;
	}

	/* Established before the trace started: owner and direction unknown. */
	struct flow_key k = {};
	k.netns = sock_netns(sk);
	k.family = family;
	k.direction = DIR_UNKNOWN;
	k.port = dport;
	read_addrs(sk, family, k.saddr, k.daddr);
	struct owner o = {};
	if (!wanted(k.netns, family, k.port, &o, 0))
		return 0;
	struct flow_counts *c = flow_get(&k);
	if (c)
		__sync_fetch_and_add(&c->closes, 1);
	stat_inc(STAT_COUNTED);
	emit(&k, KIND_CLOSE, oldstate, sport, dport, &o, 0, now, 0, 0, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

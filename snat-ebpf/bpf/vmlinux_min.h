/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The few kernel types snat's tracer reads, written by hand for CO-RE.
 *
 * Only the members the program touches are declared. `preserve_access_index` makes clang
 * record every member access as a BTF relocation, and the loader (aya) rewrites each
 * offset against the running kernel's BTF (/sys/kernel/btf/vmlinux), so the layouts below
 * do not need to match any particular kernel. Anonymous unions/structs are nested as in
 * the kernel so that the member paths match.
 */
#ifndef SNAT_VMLINUX_MIN_H
#define SNAT_VMLINUX_MIN_H

#include <linux/types.h>

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct proto;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
};

struct sock_common {
	union {
		__u64 skc_addrpair;
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		__u32 skc_portpair;
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	struct proto *skc_prot;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	int sk_err;
};

struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

/* The time of the socket's last packet processing (see established_ns). */
struct tcp_sock {
	__u64 tcp_clock_cache;
};

/* The current task's owner fields (see fill_owner): the path of task_dfl_cgroup() and
 * cgroup_id(), as bpf_get_current_cgroup_id takes it. */
struct kernfs_node {
	__u64 id;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct css_set {
	struct cgroup *dfl_cgrp;
};

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct css_set *cgroups;
};

#pragma clang attribute pop

/*
 * The context of tracepoint sock:inet_sock_set_state, as in
 * /sys/kernel/tracing/events/sock/inet_sock_set_state/format. Tracepoint formats are not
 * relocated: this one has been stable since Linux 4.16. The first 8 bytes (common_*) may
 * not be read by a tracepoint program.
 */
struct inet_sock_set_state_args {
	__u64 common;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u16 protocol;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
};

#endif

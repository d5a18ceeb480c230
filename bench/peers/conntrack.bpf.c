// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * A small TCP connection tracker in an LRU hash, written for teardown's
 * bench (`cargo xtask bench --peers`) as the straightforward way to do what
 * teardown does: the peer it must beat on every TCP frame. Not part of
 * teardown.
 *
 * Per TCP frame: parse Ethernet, one 802.1Q/802.1ad tag, IPv4 (with
 * options) or IPv6 (TCP as the first next header), TCP; build a canonical
 * key (the lower endpoint first, so both directions share an entry); look
 * it up in an LRU hash of 131072 entries (teardown's default --max-flows).
 * A SYN without an entry creates one (SYN_SENT); any other segment without
 * one is picked up midstream as ESTABLISHED, as nf_conntrack does with
 * nf_conntrack_tcp_loose=1; a RST without an entry is ignored. An entry's
 * state follows the flags (SYN-ACK, ACK, FIN each way, RST), its last-seen
 * time (the coarse clock, as teardown's default) and per-direction packet
 * and byte counters are updated on every segment. Always XDP_PASS.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define CT_MAX_FLOWS 131072

enum ct_state {
	CT_SYN_SENT = 1,
	CT_SYN_RECV,
	CT_ESTABLISHED,
	CT_FIN_WAIT,
	CT_TIME_WAIT,
	CT_CLOSE,
};

struct ct_key {
	__u64 lo_addr[2];
	__u64 hi_addr[2];
	__u16 lo_port;
	__u16 hi_port;
	__u8 family;
	__u8 pad[3];
};

struct ct_entry {
	__u64 first_seen;
	__u64 last_seen;
	__u64 packets[2];
	__u64 bytes[2];
	__u8 state;
	/* bit 0: the lower endpoint sent a FIN; bit 1: the higher one did */
	__u8 fins;
	/* the direction of the first segment seen: 0 lower to higher */
	__u8 opener;
	__u8 midstream;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAX_FLOWS);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} conntrack SEC(".maps");

struct vlan_hdr {
	__be16 tci;
	__be16 proto;
};

static __always_inline int track(struct ct_key *key, int dir, __u8 flags, __u64 len)
{
	const __u8 syn = flags & 0x02, ack = flags & 0x10, fin = flags & 0x01,
		   rst = flags & 0x04;
	__u64 now = bpf_ktime_get_coarse_ns();
	struct ct_entry *e = bpf_map_lookup_elem(&conntrack, key);

	if (!e) {
		struct ct_entry fresh = {
			.first_seen = now,
			.last_seen = now,
			.opener = dir,
		};
		if (rst)
			return XDP_PASS;
		if (syn && !ack) {
			fresh.state = CT_SYN_SENT;
		} else {
			fresh.state = CT_ESTABLISHED;
			fresh.midstream = 1;
		}
		fresh.packets[dir & 1] = 1;
		fresh.bytes[dir & 1] = len;
		bpf_map_update_elem(&conntrack, key, &fresh, BPF_NOEXIST);
		return XDP_PASS;
	}
	e->last_seen = now;
	e->packets[dir & 1] += 1;
	e->bytes[dir & 1] += len;
	if (rst) {
		e->state = CT_CLOSE;
	} else if (syn) {
		if (ack && e->state == CT_SYN_SENT && dir != e->opener)
			e->state = CT_SYN_RECV;
		else if (!ack && (e->state == CT_CLOSE || e->state == CT_TIME_WAIT)) {
			/* a new connection on a closed one's 4-tuple */
			e->state = CT_SYN_SENT;
			e->fins = 0;
			e->opener = dir;
			e->first_seen = now;
		}
	} else {
		if (fin) {
			e->fins |= 1 << (dir & 1);
			e->state = e->fins == 3 ? CT_TIME_WAIT : CT_FIN_WAIT;
		} else if (ack && e->state == CT_SYN_RECV) {
			e->state = CT_ESTABLISHED;
		}
	}
	return XDP_PASS;
}

SEC("xdp")
int conntrack_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ct_key key = {};
	struct tcphdr *tcp;
	__u16 sport, dport;
	__be16 proto;
	__u8 flags;
	void *l3;
	__u64 len = data_end - data;
	int dir;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	proto = eth->h_proto;
	l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vlan = l3;
		if ((void *)(vlan + 1) > data_end)
			return XDP_PASS;
		proto = vlan->proto;
		l3 = vlan + 1;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP ||
		    ip->ihl < 5)
			return XDP_PASS;
		/* a later fragment has no TCP header */
		if (ip->frag_off & bpf_htons(0x1fff))
			return XDP_PASS;
		tcp = l3 + ip->ihl * 4;
		if ((void *)(tcp + 1) > data_end)
			return XDP_PASS;
		flags = ((__u8 *)tcp)[13];
		sport = bpf_ntohs(tcp->source);
		dport = bpf_ntohs(tcp->dest);
		__u32 s = bpf_ntohl(ip->saddr), d = bpf_ntohl(ip->daddr);
		dir = s > d || (s == d && sport > dport);
		key.lo_addr[0] = dir ? d : s;
		key.hi_addr[0] = dir ? s : d;
		key.family = 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_TCP)
			return XDP_PASS;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > data_end)
			return XDP_PASS;
		flags = ((__u8 *)tcp)[13];
		sport = bpf_ntohs(tcp->source);
		dport = bpf_ntohs(tcp->dest);
		__u64 s0, s1, d0, d1;
		__builtin_memcpy(&s0, &ip6->saddr, 8);
		__builtin_memcpy(&s1, (void *)&ip6->saddr + 8, 8);
		__builtin_memcpy(&d0, &ip6->daddr, 8);
		__builtin_memcpy(&d1, (void *)&ip6->daddr + 8, 8);
		s0 = bpf_be64_to_cpu(s0);
		s1 = bpf_be64_to_cpu(s1);
		d0 = bpf_be64_to_cpu(d0);
		d1 = bpf_be64_to_cpu(d1);
		dir = s0 > d0 || (s0 == d0 && (s1 > d1 || (s1 == d1 && sport > dport)));
		key.lo_addr[0] = dir ? d0 : s0;
		key.lo_addr[1] = dir ? d1 : s1;
		key.hi_addr[0] = dir ? s0 : d0;
		key.hi_addr[1] = dir ? s1 : d1;
		key.family = 6;
	} else {
		return XDP_PASS;
	}
	key.lo_port = dir ? dport : sport;
	key.hi_port = dir ? sport : dport;
	return track(&key, dir, flags, len);
}

char _license[] SEC("license") = "Dual MIT/GPL";

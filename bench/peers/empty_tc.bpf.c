// SPDX-License-Identifier: MIT OR Apache-2.0
/* A TC program that only lets the packet go on: the live bench's baseline
 * for teardown at TC ingress (`cargo xtask bench --live`), attached with
 * `tc filter add ... ingress bpf direct-action obj`. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int empty_tc(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "Dual MIT/GPL";

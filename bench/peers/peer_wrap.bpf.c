// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * For teardown's bench (`cargo xtask bench --peers`): the random-source SYN
 * case needs a new IPv4 source address every run, which a peer's program
 * does not make itself. `peer_new_source` writes one into the frame and
 * tail-calls the program in slot 0 of `peer_slot`; the bench times it once
 * with `peer_empty` in the slot (the wrapper's own cost) and once with each
 * peer, and subtracts. Untagged IPv4 frames only.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} peer_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} peer_runs SEC(".maps");

#define IPV4_SOURCE (14 + 12)

SEC("xdp")
int peer_new_source(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u64 *runs = bpf_map_lookup_elem(&peer_runs, &zero);

	if (runs && data + IPV4_SOURCE + 4 <= data_end) {
		__u32 run = (__u32)++*runs;
		/* murmur3's finaliser: distinct sources spread over the table */
		run ^= run >> 16;
		run *= 0x85ebca6b;
		run ^= run >> 13;
		run *= 0xc2b2ae35;
		run ^= run >> 16;
		__builtin_memcpy(data + IPV4_SOURCE, &run, 4);
	}
	bpf_tail_call(ctx, &peer_slot, 0);
	return XDP_PASS;
}

SEC("xdp")
int peer_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";

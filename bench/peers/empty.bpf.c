// SPDX-License-Identifier: MIT OR Apache-2.0
/* An XDP program that only passes: the live bench's baseline
 * (`cargo xtask bench --live`), attached with `ip link set ... xdp obj`. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int empty_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";

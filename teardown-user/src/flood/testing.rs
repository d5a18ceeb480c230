//! Helpers shared by the flood modules' tests.

use std::net::IpAddr;

use super::target::TargetKey;

/// A destination the tests use.
pub const A: &str = "10.0.0.2:80";
/// Another, IPv6.
pub const B: &str = "[2001:db8::5]:443";

/// SplitMix64: a reproducible stream of pseudo-random numbers.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash the kernel computes for a source address, for filling and
/// checking sketches in user space.
pub fn source_hash(addr: IpAddr) -> u32 {
    teardown_common::sketch::hash_addr(&teardown_common::addr::Addr16::from(addr).words())
}

/// `ADDR:PORT`, which must parse.
pub fn dest(text: &str) -> TargetKey {
    text.parse().expect("test destinations parse")
}

/// An address, which must parse.
pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("test addresses parse")
}

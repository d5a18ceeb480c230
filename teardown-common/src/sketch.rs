//! Hashing and a HyperLogLog register update for SYN sources, shared by the
//! XDP program (which runs them per SYN) and user space (which estimates
//! from the registers), so both sides hash an address the same way.
//!
//! Integer-only and branch-light: the kernel does
//!
//! ```text
//! let (index, rank) = hll_slot(hash_addr(&src_words));
//! if rank > registers[index] { registers[index] = rank }
//! ```
//!
//! The hash is not keyed: someone who knows it can choose IPv6 sources that
//! collide and so make a flood look like fewer senders than it has. It never
//! decides whether to alert; it only sizes the distinct-source estimate.

/// Number of index bits: the top `HLL_BITS` bits of a hash pick a register.
pub const HLL_BITS: u32 = 6;
/// Registers per sketch (`1 << HLL_BITS`): 64 bytes, standard error
/// 1.04 / sqrt(64) = 13 %.
pub const HLL_REGISTERS: usize = 1 << HLL_BITS;
/// The largest rank: every one of the remaining `32 - HLL_BITS` bits zero.
pub const HLL_MAX_RANK: u8 = (32 - HLL_BITS + 1) as u8;

/// murmur3's 32-bit finalizer: a bijection on `u32` in which every input
/// bit flips each output bit with probability close to 1/2. Five ALU steps.
#[inline(always)]
pub fn mix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Odd multipliers for the four address words (golden-ratio and murmur3
/// constants): odd, so each word's term is a bijection of that word.
const WORD_MULTIPLIERS: [u32; 4] = [0x9e37_79b1, 0x85eb_ca77, 0xc2b2_ae3d, 0x27d4_eb2f];

/// Hashes an address held as four words of its bytes in memory order (what
/// [`crate::addr::Addr16::words`] and a BPF program's 4-byte loads give; IPv4 is
/// IPv4-mapped, words `[0, 0, ffff-mapped, addr]`).
///
/// A multiply-add of the words, then [`mix32`]: four multiplies, three adds
/// and the finalizer. For IPv4 the first three words are constant, so the
/// hash is a bijection of the address: two IPv4 sources never collide.
#[inline(always)]
pub fn hash_addr(words: &[u32; 4]) -> u32 {
    let sum = words[0]
        .wrapping_mul(WORD_MULTIPLIERS[0])
        .wrapping_add(words[1].wrapping_mul(WORD_MULTIPLIERS[1]))
        .wrapping_add(words[2].wrapping_mul(WORD_MULTIPLIERS[2]))
        .wrapping_add(words[3].wrapping_mul(WORD_MULTIPLIERS[3]));
    mix32(sum)
}

/// The HyperLogLog register a hash updates and the rank it offers: the
/// index is the top [`HLL_BITS`] bits; the rank is the number of leading
/// zeros of the remaining bits plus one, at most [`HLL_MAX_RANK`].
#[inline(always)]
pub fn hll_slot(hash: u32) -> (usize, u8) {
    let index = (hash >> (32 - HLL_BITS)) as usize;
    // The low HLL_BITS bits shifted in are zeros, so an all-zero remainder
    // counts 32 leading zeros; the cap makes that the largest rank.
    let rank = (hash << HLL_BITS).leading_zeros() + 1;
    let rank = if rank > HLL_MAX_RANK as u32 {
        HLL_MAX_RANK
    } else {
        rank as u8
    };
    (index, rank)
}

/// Adds one hash to a sketch, as the kernel does.
#[inline(always)]
pub fn hll_add(registers: &mut [u8; HLL_REGISTERS], hash: u32) {
    let (index, rank) = hll_slot(hash);
    if rank > registers[index] {
        registers[index] = rank;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Addr16;
    use std::vec::Vec;

    /// splitmix64: deterministic test input.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn mix32_is_murmur3_fmix32() {
        // Reference values of murmur3's fmix32.
        assert_eq!(mix32(0), 0);
        assert_eq!(mix32(1), 0x514e_28b7);
        assert_eq!(mix32(0xffff_ffff), 0x81f1_6f39);
    }

    #[test]
    fn mix32_has_no_collisions_on_a_million_sequential_inputs() {
        let mut outputs: Vec<u32> = (0..1u32 << 20).map(mix32).collect();
        outputs.sort_unstable();
        outputs.dedup();
        assert_eq!(outputs.len(), 1 << 20, "mix32 collided");
    }

    #[test]
    fn mix32_avalanches() {
        // Flipping any one input bit flips each output bit about half the time.
        let mut state = 7;
        let samples = 4000;
        for bit in 0..32 {
            let mut flips = [0u32; 32];
            for _ in 0..samples {
                let x = splitmix(&mut state) as u32;
                let diff = mix32(x) ^ mix32(x ^ (1 << bit));
                for (out, count) in flips.iter_mut().enumerate() {
                    *count += (diff >> out) & 1;
                }
            }
            for (out, count) in flips.iter().enumerate() {
                let p = *count as f64 / samples as f64;
                assert!(
                    (0.40..=0.60).contains(&p),
                    "input bit {bit} flips output bit {out} with p={p:.3}"
                );
            }
        }
    }

    fn v4_words(addr: u32) -> [u32; 4] {
        Addr16::v4_mapped(addr.to_be_bytes()).words()
    }

    #[test]
    fn ipv4_words_are_the_mapped_form() {
        let w = v4_words(0xc000_0201); // 192.0.2.1
        assert_eq!(w[0], 0);
        assert_eq!(w[1], 0);
        assert_eq!(w[2], u32::from_ne_bytes([0, 0, 0xff, 0xff]));
        assert_eq!(w[3], u32::from_ne_bytes([192, 0, 2, 1]));
    }

    #[test]
    fn ipv4_sources_never_collide() {
        // 2^20 consecutive addresses (a /12): all hashes distinct.
        let base = 0x0a00_0000u32;
        let mut hashes: Vec<u32> = (0..1u32 << 20)
            .map(|i| hash_addr(&v4_words(base + i)))
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), 1 << 20, "two IPv4 sources share a hash");
    }

    #[test]
    fn ipv6_sources_spread_like_a_random_function() {
        // Random /64 interface identifiers in one prefix, and consecutive
        // ones: collisions close to the birthday expectation n^2 / 2^33.
        let n = 1u64 << 18;
        let expected = (n * n) as f64 / 2f64.powi(33); // 8
        let mut state = 11;
        let prefix = [0x2001_0db8u32.to_be(), 0x0000_0001u32.to_be()];
        for consecutive in [false, true] {
            let mut hashes: Vec<u32> = (0..n)
                .map(|i| {
                    let iid = if consecutive { i } else { splitmix(&mut state) };
                    let w = [
                        prefix[0],
                        prefix[1],
                        ((iid >> 32) as u32).to_be(),
                        (iid as u32).to_be(),
                    ];
                    hash_addr(&w)
                })
                .collect();
            hashes.sort_unstable();
            hashes.dedup();
            let collisions = n as f64 - hashes.len() as f64;
            assert!(
                collisions <= expected * 4.0 + 8.0,
                "{collisions} collisions (consecutive={consecutive}), birthday expectation {expected}"
            );
        }
    }

    #[test]
    fn hash_spreads_over_every_register() {
        // Consecutive IPv4 sources fill the 64 registers evenly.
        let mut per_register = [0u32; HLL_REGISTERS];
        let n = 64_000u32;
        for i in 0..n {
            per_register[hll_slot(hash_addr(&v4_words(0xc633_6400 + i))).0] += 1;
        }
        let mean = n as f64 / HLL_REGISTERS as f64;
        for (index, count) in per_register.iter().enumerate() {
            assert!(
                (*count as f64 - mean).abs() < 5.0 * mean.sqrt(),
                "register {index} got {count}, mean {mean}"
            );
        }
    }

    #[test]
    fn slot_index_is_the_top_bits_and_rank_counts_leading_zeros() {
        assert_eq!(hll_slot(0), (0, HLL_MAX_RANK));
        assert_eq!(hll_slot(u32::MAX), (63, 1));
        // Index 0b101010, then a 1 right after the index: rank 1.
        assert_eq!(hll_slot(0b101010 << 26 | 1 << 25), (42, 1));
        // Index 1, then 3 zeros and a 1: rank 4.
        assert_eq!(hll_slot(1 << 26 | 1 << 22), (1, 4));
        // Only the last bit set: 25 zeros, rank 26.
        assert_eq!(hll_slot(1), (0, 26));
        assert_eq!(HLL_MAX_RANK, 27);
    }

    #[test]
    fn ranks_are_geometric() {
        // P(rank = r) = 2^-r.
        let mut state = 3;
        let n = 1 << 16;
        let mut counts = [0u32; HLL_MAX_RANK as usize + 1];
        for _ in 0..n {
            counts[hll_slot(splitmix(&mut state) as u32).1 as usize] += 1;
        }
        assert_eq!(counts[0], 0, "rank 0 is never produced");
        for (rank, expected) in [(1, 0.5), (2, 0.25), (3, 0.125), (4, 0.0625)] {
            let p = counts[rank] as f64 / n as f64;
            assert!(
                (p - expected).abs() < 0.01,
                "P(rank={rank}) = {p}, expected {expected}"
            );
        }
    }

    #[test]
    fn hll_add_keeps_the_maximum_rank() {
        let mut registers = [0u8; HLL_REGISTERS];
        hll_add(&mut registers, 5 << 26 | 1 << 20); // rank 6 in register 5
        hll_add(&mut registers, 5 << 26 | 1 << 25); // rank 1: no change
        assert_eq!(registers[5], 6);
        hll_add(&mut registers, 5 << 26); // rank 27
        assert_eq!(registers[5], HLL_MAX_RANK);
        assert_eq!(registers.iter().filter(|r| **r != 0).count(), 1);
    }
}

//! HyperLogLog: how many distinct SYN sources the kernel's per-poll
//! sketches (`teardown_common::sketch`) saw, alone or merged.

/// The HyperLogLog cardinality estimate of a sketch (any power-of-two
/// number of registers): the harmonic-mean estimate, with linear counting
/// below 2.5 m while registers are still empty, and the 32-bit hash's
/// large-range correction.
pub fn hll_estimate(registers: &[u8]) -> f64 {
    if registers.is_empty() {
        return 0.0;
    }
    let m = registers.len() as f64;
    let alpha = match registers.len() {
        16 => 0.673,
        32 => 0.697,
        64 => 0.709,
        _ => 0.7213 / (1.0 + 1.079 / m),
    };
    let sum: f64 = registers
        .iter()
        .map(|&rank| (-f64::from(rank)).exp2())
        .sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&rank| rank == 0).count();
    let two32 = 2f64.powi(32);
    if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else if raw > two32 / 30.0 {
        if raw >= two32 {
            two32
        } else {
            -two32 * (1.0 - raw / two32).ln()
        }
    } else {
        raw
    }
}

/// Folds `from` into `into`: afterwards `into` sketches the union.
pub fn hll_merge(into: &mut [u8], from: &[u8]) {
    for (mine, theirs) in into.iter_mut().zip(from) {
        *mine = (*mine).max(*theirs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use teardown_common::sketch::{HLL_REGISTERS, hll_add};

    use crate::flood::testing::{source_hash, splitmix};

    #[test]
    fn hll_estimates_are_within_three_standard_errors() {
        let sigma = 1.04 / (HLL_REGISTERS as f64).sqrt();
        let mut state = 42;
        for n in [10u32, 100, 1_000, 10_000, 100_000] {
            let trials = if n >= 100_000 { 60 } else { 300 };
            let mut within = 0;
            let mut total_error = 0.0;
            for _ in 0..trials {
                // n distinct IPv4 sources from a random base.
                let base = splitmix(&mut state) as u32;
                let mut registers = [0u8; HLL_REGISTERS];
                for i in 0..n {
                    let addr = IpAddr::from(base.wrapping_add(i).to_be_bytes());
                    hll_add(&mut registers, source_hash(addr));
                }
                let error = (hll_estimate(&registers) - n as f64) / n as f64;
                total_error += error;
                if error.abs() <= 3.0 * sigma {
                    within += 1;
                }
            }
            let bias = total_error / trials as f64;
            assert!(
                within as f64 >= 0.97 * trials as f64,
                "n={n}: {within}/{trials} within 3 standard errors"
            );
            assert!(bias.abs() < 0.05, "n={n}: mean relative error {bias:.3}");
        }
        assert_eq!(hll_estimate(&[0; HLL_REGISTERS]), 0.0);
    }

    #[test]
    fn hll_merge_is_the_union() {
        let mut left = [0u8; HLL_REGISTERS];
        let mut right = [0u8; HLL_REGISTERS];
        let mut both = [0u8; HLL_REGISTERS];
        for i in 0..5_000u32 {
            let hash = source_hash(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
            hll_add(if i % 3 == 0 { &mut left } else { &mut right }, hash);
            hll_add(&mut both, hash);
        }
        hll_merge(&mut left, &right);
        assert_eq!(left, both);
    }
}

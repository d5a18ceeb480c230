//! Heavy hitters: the SYN sources that sent the most, from the sampled
//! sources, in bounded memory.

use std::{collections::HashMap, net::IpAddr};

/// Space-Saving heavy hitters (Metwally et al.) with weights: at most
/// `capacity` counters. For every address it reports, the true weight lies
/// in `[count - error, count]`; every address whose true weight exceeds
/// `total / capacity` is reported.
#[derive(Clone, Debug)]
pub struct SpaceSaving {
    capacity: usize,
    counters: HashMap<IpAddr, (u64, u64)>,
    total: u64,
    /// Samples inserted (merges add the other summary's).
    samples: u64,
}

impl SpaceSaving {
    /// A summary of at most `capacity` (at least 1) addresses.
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            counters: HashMap::with_capacity(capacity.max(1)),
            total: 0,
            samples: 0,
        }
    }

    /// Counts `weight` for `addr`.
    pub fn insert(&mut self, addr: IpAddr, weight: u64) {
        if weight > 0 {
            self.samples += 1;
        }
        self.insert_with_error(addr, weight, 0);
    }

    fn insert_with_error(&mut self, addr: IpAddr, weight: u64, error: u64) {
        if weight == 0 {
            return;
        }
        self.total = self.total.saturating_add(weight);
        if let Some((count, err)) = self.counters.get_mut(&addr) {
            *count = count.saturating_add(weight);
            *err = err.saturating_add(error);
            return;
        }
        if self.counters.len() < self.capacity {
            self.counters.insert(addr, (weight, error));
            return;
        }
        // Replace the smallest counter: the newcomer may have had up to its
        // count before, unseen.
        let (victim, (min, _)) = self
            .counters
            .iter()
            .min_by_key(|(addr, (count, _))| (*count, **addr))
            .map(|(addr, value)| (*addr, *value))
            .expect("a full summary has counters");
        self.counters.remove(&victim);
        self.counters.insert(
            addr,
            (min.saturating_add(weight), min.saturating_add(error)),
        );
    }

    /// Adds another summary's counts (the bounds still hold for the union
    /// of both streams).
    pub fn merge(&mut self, other: &SpaceSaving) {
        // Largest first, so the merge does not depend on hash order. The
        // counters sum to the other summary's total, so totals add up too.
        let mut entries: Vec<_> = other.counters.iter().collect();
        entries.sort_by_key(|(addr, (count, _))| (std::cmp::Reverse(*count), **addr));
        for (addr, (count, error)) in entries {
            self.insert_with_error(*addr, *count, *error);
        }
        self.samples += other.samples;
    }

    /// The `n` largest: (address, count, error), the largest guaranteed
    /// weight (`count - error`) first. On a stream without heavy hitters
    /// every count is mostly error; ranking by the guaranteed part keeps an
    /// address inserted once, late, from outranking one seen throughout.
    pub fn top(&self, n: usize) -> Vec<(IpAddr, u64, u64)> {
        let mut entries: Vec<_> = self
            .counters
            .iter()
            .map(|(addr, (count, error))| (*addr, *count, *error))
            .collect();
        entries.sort_by(|a, b| {
            (b.1 - b.2)
                .cmp(&(a.1 - a.2))
                .then(b.1.cmp(&a.1))
                .then(a.0.cmp(&b.0))
        });
        entries.truncate(n);
        entries
    }

    /// Total weight inserted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Samples inserted.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Addresses held (at most the capacity).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.counters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    use crate::flood::{config::SOURCE_CAPACITY, testing::splitmix};

    #[test]
    fn space_saving_finds_heavy_hitters_within_its_bounds() {
        let capacity = SOURCE_CAPACITY;
        let mut summary = SpaceSaving::new(capacity);
        let mut truth: HashMap<IpAddr, u64> = HashMap::new();
        let mut state = 17;
        let heavy: Vec<(IpAddr, u64)> = (0..5u8)
            .map(|i| (IpAddr::from([198, 51, 100, i]), 40 - 5 * i as u64))
            .collect();
        // 20 000 events: the heavy five take 150 in 1000 (4 % down to 2 %,
        // all above 1 / capacity), the rest spread over 50 000 light
        // addresses.
        for _ in 0..20_000 {
            let roll = splitmix(&mut state) % 1000;
            let mut cumulative = 0;
            let mut addr = None;
            for (heavy_addr, per_mille) in &heavy {
                cumulative += per_mille;
                if roll < cumulative {
                    addr = Some(*heavy_addr);
                    break;
                }
            }
            let addr = addr.unwrap_or_else(|| {
                IpAddr::from((0x0a00_0000 + (splitmix(&mut state) % 50_000) as u32).to_be_bytes())
            });
            let weight = 1 + splitmix(&mut state) % 3;
            summary.insert(addr, weight);
            *truth.entry(addr).or_default() += weight;
        }
        let total: u64 = truth.values().sum();
        assert_eq!(summary.total(), total);
        assert!(summary.len() <= capacity);
        let top = summary.top(capacity);
        for (addr, count, error) in &top {
            let real = truth[addr];
            assert!(
                count - error <= real && real <= *count,
                "{addr}: true {real} outside [{}, {count}]",
                count - error
            );
        }
        // Everything above total / capacity is reported; the top five are
        // the heavy five, in order.
        for (addr, real) in &truth {
            if *real > total / capacity as u64 {
                assert!(
                    top.iter().any(|(a, _, _)| a == addr),
                    "{addr} ({real}) missed"
                );
            }
        }
        let top5: Vec<IpAddr> = summary.top(5).into_iter().map(|(a, _, _)| a).collect();
        let expected: Vec<IpAddr> = heavy.iter().map(|(a, _)| *a).collect();
        assert_eq!(top5, expected);

        // Merging two halves keeps the bounds.
        let mut first = SpaceSaving::new(capacity);
        let mut second = SpaceSaving::new(capacity);
        let mut truth: HashMap<IpAddr, u64> = HashMap::new();
        for i in 0..10_000u64 {
            let addr = if i % 4 == 0 {
                IpAddr::from([203, 0, 113, (i % 3) as u8])
            } else {
                IpAddr::from((0x0a00_0000 + (splitmix(&mut state) % 5_000) as u32).to_be_bytes())
            };
            if i % 2 == 0 { &mut first } else { &mut second }.insert(addr, 1);
            *truth.entry(addr).or_default() += 1;
        }
        first.merge(&second);
        assert_eq!(first.total(), 10_000);
        for (addr, count, error) in first.top(capacity) {
            let real = truth[&addr];
            assert!(count - error <= real && real <= count, "{addr} after merge");
        }
        let top3: HashSet<IpAddr> = first.top(3).into_iter().map(|(a, _, _)| a).collect();
        let expected: HashSet<IpAddr> = (0..3).map(|i| IpAddr::from([203, 0, 113, i])).collect();
        assert_eq!(top3, expected);
    }
}

//! Turns the kernel's per-CPU destination counts (`teardown_common::dest`)
//! into the detector's [`Tick`]s: one per poll, with each destination's
//! cumulative SYNs and completions summed over CPUs, its half-open gauge,
//! the sketch of its SYN sources during the poll, and the sampled sources.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use teardown_common::{
    addr::Addr16,
    dest::{DestSlot, SAMPLE_RING_LEN, SampleRing, sample_mask_for},
    sketch::HLL_REGISTERS,
};

use super::{
    detector::{TargetObservation, Tick},
    hll::hll_merge,
    target::TargetKey,
};

/// Polls after which a destination with nothing half-open and no change is
/// forgotten here: 10 minutes at 100 ms. The detector keeps its own history
/// (and tolerates counts that restart from zero when it comes back).
const FORGET_AFTER_POLLS: u64 = 6000;

/// Polls after which a destination is forgotten even with half-open flows
/// counted. By then every one has been resolved (the longest
/// `--syn-timeout` is an hour, and the kernel's grace 2 s; 45 000 polls are
/// at least 67 minutes, polls being at least 90 ms apart): a count still
/// above zero is a resolution the kernel could not count, on a CPU whose
/// slot belonged to another destination. Kept for ever, such destinations
/// piled up with every port sweep.
const STALE_AFTER_POLLS: u64 = 45_000;

/// Destinations remembered at most. Each (CPU, slot) brings a new one at
/// most every 30 s (`TAKEOVER_IDLE_EPOCHS`), so this is only reached with
/// many CPUs and destinations that keep changing; then the least recently
/// changed are forgotten first, and counted. 65 536 is four times what 64
/// CPUs' slots hold at once, about 5 MB.
const MAX_DESTINATIONS: usize = 65_536;

fn target_of(words: &[u32; 4], port: u32) -> TargetKey {
    TargetKey::from_mapped(Addr16::from_words(*words), port as u16)
}

/// A kernel slot's counts as last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SlotCounts {
    target: TargetKey,
    syns: u64,
    completions: u64,
    half_open_started: u64,
    half_open_resolved: u64,
}

impl SlotCounts {
    fn of(slot: &DestSlot) -> SlotCounts {
        SlotCounts {
            target: target_of(&slot.addr, slot.port),
            syns: slot.syns,
            completions: slot.completions,
            half_open_started: slot.half_open_started,
            half_open_resolved: slot.half_open_resolved,
        }
    }
}

/// One destination's counts over every CPU since teardown started.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    syns: u64,
    completions: u64,
    half_open_started: u64,
    /// Resolved in the kernel plus timed out in user space.
    half_open_resolved: u64,
    last_change: u64,
}

impl Totals {
    fn half_open(&self) -> u64 {
        self.half_open_started
            .saturating_sub(self.half_open_resolved)
    }
}

/// What one poll read from the kernel.
#[derive(Default)]
pub struct KernelReading {
    /// (CPU, slot index, slot) of every slot in use.
    pub slots: Vec<(u32, u32, DestSlot)>,
    /// Every CPU's sample ring.
    pub rings: Vec<SampleRing>,
}

/// The per-poll bookkeeping between the kernel's counts and the detector.
#[derive(Default)]
pub struct DestinationFeed {
    /// The poll whose sketches the next reading holds.
    epoch: u64,
    /// Each (CPU, slot index)'s counts at the last poll.
    last: HashMap<(u32, u32), SlotCounts>,
    totals: HashMap<TargetKey, Totals>,
    /// At most this many destinations in `totals` ([`MAX_DESTINATIONS`]).
    max_destinations: usize,
    /// Samples read so far, per CPU.
    samples_read: Vec<u64>,
    /// SYNs counted per destination in the latest poll, all CPUs.
    pub syns_last_poll: u64,
    /// Destinations forgotten while something was still counted: half-open
    /// flows whose resolution never came ([`STALE_AFTER_POLLS`]), or any
    /// count, over [`MAX_DESTINATIONS`]. (Quiet ones, forgotten after
    /// [`FORGET_AFTER_POLLS`], lose nothing and are not counted.)
    pub dropped: u64,
}

impl DestinationFeed {
    pub fn new() -> DestinationFeed {
        DestinationFeed::with_limit(MAX_DESTINATIONS)
    }

    /// A feed that remembers at most `max_destinations` destinations.
    fn with_limit(max_destinations: usize) -> DestinationFeed {
        DestinationFeed {
            epoch: 1,
            max_destinations,
            ..DestinationFeed::default()
        }
    }

    /// The epoch and sampling mask to hand the kernel before reading: the
    /// kernel then writes the new epoch's sketches while this poll reads the
    /// previous one's.
    pub fn next_control(&self) -> (u64, u64) {
        (self.epoch + 1, sample_mask_for(self.syns_last_poll))
    }

    /// Builds the detector's tick from one reading, taken after the kernel
    /// was given [`Self::next_control`]. `timed_out` lists the responders
    /// of half-open records user space closed out since the last poll.
    pub fn tick(
        &mut self,
        now_ns: u64,
        reading: &KernelReading,
        timed_out: &[(IpAddr, u16)],
    ) -> Tick {
        let epoch = self.epoch;
        self.epoch += 1;
        let mut changed: HashSet<TargetKey> = HashSet::new();
        let mut sketches: HashMap<TargetKey, Vec<u8>> = HashMap::new();
        let mut syns_this_poll = 0;
        let mut seen = HashSet::new();
        for (cpu, index, slot) in &reading.slots {
            seen.insert((*cpu, *index));
            let now = SlotCounts::of(slot);
            // The same destination as last time: the counts grew by the
            // difference. A new one (the slot was taken over): all its counts
            // are new.
            let before = match self.last.get(&(*cpu, *index)) {
                Some(before) if before.target == now.target => *before,
                _ => SlotCounts {
                    syns: 0,
                    completions: 0,
                    half_open_started: 0,
                    half_open_resolved: 0,
                    ..now
                },
            };
            self.last.insert((*cpu, *index), now);
            let grew = |now: u64, before: u64| now.saturating_sub(before);
            let delta = (
                grew(now.syns, before.syns),
                grew(now.completions, before.completions),
                grew(now.half_open_started, before.half_open_started),
                grew(now.half_open_resolved, before.half_open_resolved),
            );
            syns_this_poll += delta.0;
            if delta != (0, 0, 0, 0) {
                let totals = self.totals.entry(now.target).or_default();
                totals.syns += delta.0;
                totals.completions += delta.1;
                totals.half_open_started += delta.2;
                totals.half_open_resolved += delta.3;
                totals.last_change = epoch;
                changed.insert(now.target);
            }
            if let Some(sketch) = slot.sketch_of(epoch as u32) {
                let merged = sketches
                    .entry(now.target)
                    .or_insert_with(|| vec![0; HLL_REGISTERS]);
                hll_merge(merged, sketch);
                changed.insert(now.target);
            }
        }
        self.last.retain(|key, _| seen.contains(key));
        for (addr, port) in timed_out {
            let target = TargetKey::new(*addr, *port);
            if let Some(totals) = self.totals.get_mut(&target) {
                totals.half_open_resolved += 1;
                totals.last_change = epoch;
                changed.insert(target);
            }
        }
        self.syns_last_poll = syns_this_poll;
        let sources = self.read_samples(&reading.rings);
        self.forget(epoch);
        let mut targets: Vec<TargetObservation> = changed
            .into_iter()
            .filter_map(|target| {
                let totals = self.totals.get(&target)?;
                Some(TargetObservation {
                    target,
                    syns: totals.syns,
                    completions: totals.completions,
                    half_open: totals.half_open(),
                    source_registers: sketches.remove(&target).unwrap_or_default(),
                })
            })
            .collect();
        targets.sort_by_key(|observation| observation.target);
        Tick {
            now_ns,
            targets,
            sources,
        }
    }

    /// Forgets the destinations that went quiet, and the least recently
    /// changed ones while there are too many.
    fn forget(&mut self, epoch: u64) {
        let mut dropped = 0;
        self.totals.retain(|_, totals| {
            let quiet = epoch - totals.last_change;
            if totals.half_open() == 0 {
                quiet < FORGET_AFTER_POLLS
            } else if quiet < STALE_AFTER_POLLS {
                true
            } else {
                dropped += 1;
                false
            }
        });
        let excess = self.totals.len().saturating_sub(self.max_destinations);
        if excess > 0 {
            let mut by_age: Vec<(u64, TargetKey)> = self
                .totals
                .iter()
                .map(|(target, totals)| (totals.last_change, *target))
                .collect();
            by_age.select_nth_unstable(excess - 1);
            for (_, target) in &by_age[..excess] {
                self.totals.remove(target);
            }
            dropped += excess as u64;
        }
        self.dropped += dropped;
    }

    /// Destinations remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.totals.len()
    }

    /// The samples written since the last poll (at most a ring's worth per
    /// CPU: older ones were overwritten, and the rest are as uniform).
    fn read_samples(&mut self, rings: &[SampleRing]) -> Vec<(TargetKey, IpAddr)> {
        self.samples_read.resize(rings.len(), 0);
        let mut sources = Vec::new();
        for (ring, read) in rings.iter().zip(self.samples_read.iter_mut()) {
            let first = (*read).max(ring.written.saturating_sub(SAMPLE_RING_LEN as u64));
            for n in first..ring.written {
                let sample = &ring.samples[(n % SAMPLE_RING_LEN as u64) as usize];
                let target = target_of(&sample.dest, sample.dest_port);
                let source = IpAddr::from(Addr16::from_words(sample.source));
                sources.push((target, source));
            }
            *read = ring.written;
        }
        sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teardown_common::sketch::hash_addr;

    fn v4(last: u8) -> [u32; 4] {
        Addr16::v4_mapped([10, 0, 0, last]).words()
    }

    fn slot(dest: u8, port: u16, epoch: u32) -> DestSlot {
        let mut slot = DestSlot::EMPTY;
        slot.take_over(&v4(dest), port, epoch);
        slot
    }

    fn target(dest: u8, port: u16) -> TargetKey {
        TargetKey::new(IpAddr::from([10, 0, 0, dest]), port)
    }

    #[test]
    fn counts_are_summed_over_cpus_and_accumulate_across_polls() {
        let mut feed = DestinationFeed::new();
        let mut cpu0 = slot(1, 80, 1);
        let mut cpu1 = slot(1, 80, 1);
        for n in 0..30u32 {
            cpu0.add_syn(hash_addr(&[0, 0, 0, n]), 1);
        }
        for n in 0..12u32 {
            cpu1.add_syn(hash_addr(&[0, 0, 1, n]), 1);
        }
        cpu0.half_open_started = 30;
        cpu1.completions = 5;
        let reading = KernelReading {
            slots: vec![(0, 7, cpu0), (1, 7, cpu1)],
            rings: vec![],
        };
        let tick = feed.tick(100, &reading, &[]);
        assert_eq!(tick.targets.len(), 1, "{:?}", tick.targets);
        let seen = &tick.targets[0];
        assert_eq!(seen.target, target(1, 80));
        assert_eq!((seen.syns, seen.completions, seen.half_open), (42, 5, 30));
        assert_eq!(
            seen.source_registers.len(),
            HLL_REGISTERS,
            "epoch 1's sketches"
        );
        assert_eq!(feed.syns_last_poll, 42);

        // Next poll: CPU 0 saw 8 more SYNs in epoch 2; 10 half-open records
        // resolved in the kernel, 4 timed out in user space.
        for n in 0..8u32 {
            cpu0.add_syn(hash_addr(&[0, 0, 2, n]), 2);
        }
        cpu0.half_open_resolved = 10;
        let reading = KernelReading {
            slots: vec![(0, 7, cpu0), (1, 7, cpu1)],
            rings: vec![],
        };
        let timed_out = vec![(IpAddr::from([10, 0, 0, 1]), 80); 4];
        let tick = feed.tick(200, &reading, &timed_out);
        let seen = &tick.targets[0];
        assert_eq!((seen.syns, seen.completions, seen.half_open), (50, 5, 16));
        let registers = seen.source_registers.iter().filter(|&&r| r > 0).count();
        assert!(
            registers <= 8,
            "only epoch 2's eight sources: {registers} registers"
        );
        assert_eq!(feed.syns_last_poll, 8);

        // Nothing new: the destination is left out of the tick.
        let tick = feed.tick(300, &reading, &[]);
        assert!(tick.targets.is_empty(), "{:?}", tick.targets);
    }

    #[test]
    fn a_slot_taken_over_starts_the_new_destination_from_zero() {
        let mut feed = DestinationFeed::new();
        let mut first = slot(1, 80, 1);
        first.add_syn(1, 1);
        first.add_syn(2, 1);
        feed.tick(
            100,
            &KernelReading {
                slots: vec![(0, 3, first)],
                rings: vec![],
            },
            &[],
        );
        let mut second = slot(2, 443, 2);
        second.add_syn(3, 2);
        let tick = feed.tick(
            200,
            &KernelReading {
                slots: vec![(0, 3, second)],
                rings: vec![],
            },
            &[],
        );
        assert_eq!(tick.targets.len(), 1);
        assert_eq!(tick.targets[0].target, target(2, 443));
        assert_eq!(tick.targets[0].syns, 1, "the newcomer's one SYN, not 1 - 2");
    }

    #[test]
    fn samples_are_read_once_and_overwritten_ones_skipped() {
        let mut feed = DestinationFeed::new();
        let mut ring = SampleRing::EMPTY;
        for n in 0..10u32 {
            ring.offer(&v4(n as u8 + 100), &v4(1), 80, 0);
        }
        let reading = KernelReading {
            slots: vec![],
            rings: vec![ring, SampleRing::EMPTY],
        };
        let tick = feed.tick(100, &reading, &[]);
        assert_eq!(tick.sources.len(), 10);
        assert_eq!(
            tick.sources[0],
            (target(1, 80), IpAddr::from([10, 0, 0, 100]))
        );
        let tick = feed.tick(200, &reading, &[]);
        assert!(tick.sources.is_empty(), "already read");
        for n in 0..1000u32 {
            ring.offer(&[0, 0, 0, n], &v4(1), 80, 0);
        }
        let reading = KernelReading {
            slots: vec![],
            rings: vec![ring],
        };
        let tick = feed.tick(300, &reading, &[]);
        assert_eq!(
            tick.sources.len(),
            SAMPLE_RING_LEN,
            "the ring's worth that is left"
        );
    }

    /// A port sweep's destinations, one after another in one kernel slot
    /// (each taking it over once the previous one is idle), each leaving a
    /// half-open count whose resolution the kernel lost: none is kept for
    /// ever, and each one dropped so is counted.
    #[test]
    fn destinations_with_lost_resolutions_are_forgotten_in_time() {
        let mut feed = DestinationFeed::new();
        let takeover = teardown_common::dest::TAKEOVER_IDLE_EPOCHS as u64;
        let polls = 2 * STALE_AFTER_POLLS;
        let mut port = 0u16;
        let mut held = slot(1, port, 1);
        let mut most = 0;
        for poll in 0..polls {
            if poll % takeover == 0 {
                port += 1;
                held = slot(1, port, poll as u32 + 1);
                held.add_syn(7, poll as u32 + 1);
                held.half_open_started = 1;
            }
            let reading = KernelReading {
                slots: vec![(0, 1, held)],
                rings: vec![],
            };
            feed.tick(poll * 100, &reading, &[]);
            most = most.max(feed.remembered());
        }
        let destinations = polls / takeover;
        let bound = (STALE_AFTER_POLLS / takeover + 1) as usize;
        assert!(
            most <= bound,
            "{most} destinations remembered, at most {bound}"
        );
        assert!(
            feed.dropped >= destinations - bound as u64,
            "{} dropped of {destinations}",
            feed.dropped
        );
    }

    /// More destinations than the limit: the least recently changed are
    /// forgotten, and counted; the newest are observed.
    #[test]
    fn destinations_are_bounded_and_the_oldest_go_first() {
        let mut feed = DestinationFeed::with_limit(100);
        let poll = |feed: &mut DestinationFeed, first: u16, now: u64| {
            let slots = (0..80u16)
                .map(|n| {
                    let mut held = slot(1, first + n, now as u32);
                    held.add_syn(n as u32, now as u32);
                    (0, (first + n) as u32, held)
                })
                .collect();
            feed.tick(
                now,
                &KernelReading {
                    slots,
                    rings: vec![],
                },
                &[],
            )
        };
        poll(&mut feed, 0, 1);
        assert_eq!((feed.remembered(), feed.dropped), (80, 0));
        let tick = poll(&mut feed, 1000, 2);
        assert_eq!((feed.remembered(), feed.dropped), (100, 60));
        assert_eq!(tick.targets.len(), 80, "the newest are all observed");
        assert!(tick.targets.iter().all(|seen| seen.target.port >= 1000));
        // Far more than the limit at once: still the limit.
        let mut feed = DestinationFeed::with_limit(100);
        let slots = (0..5000u32)
            .map(|n| {
                let mut held = slot((n / 256) as u8, n as u16, 1);
                held.add_syn(n, 1);
                (0, n, held)
            })
            .collect();
        feed.tick(
            1,
            &KernelReading {
                slots,
                rings: vec![],
            },
            &[],
        );
        assert_eq!((feed.remembered(), feed.dropped), (100, 4900));
    }

    #[test]
    fn the_sampling_mask_follows_the_syn_rate() {
        let mut feed = DestinationFeed::new();
        assert_eq!(feed.next_control(), (2, 0));
        let mut busy = slot(1, 80, 1);
        busy.syns = 10_000;
        feed.tick(
            100,
            &KernelReading {
                slots: vec![(0, 1, busy)],
                rings: vec![],
            },
            &[],
        );
        let (epoch, mask) = feed.next_control();
        assert_eq!(epoch, 3);
        assert_eq!(mask, sample_mask_for(10_000));
        assert!(mask > 0);
    }
}

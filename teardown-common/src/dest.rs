//! Per-destination SYN accounting, the kernel's input to SYN-flood
//! detection (user space's `detect` module).
//!
//! Per CPU, the kernel keeps a small direct-mapped table of destinations
//! (address and port, [`DEST_SLOTS`] slots, indexed by [`dest_index`]). For
//! each destination it counts pure SYNs, completed handshakes (the
//! originator's first ACK after the responder's SYN-ACK), and half-open
//! records started and resolved; and it keeps a HyperLogLog sketch of the
//! SYN sources of the current poll. Every slot is this CPU's own: no atomics,
//! no cache line bouncing between CPUs when a flood hits one destination.
//! User space reads every CPU's slots once a poll and sums them per
//! destination.
//!
//! # Polls and sketches
//!
//! User space advances [`DetectControl::epoch`] once a poll. A slot has two sketch
//! buffers; SYNs of poll `e` go to buffer `e & 1`, which the kernel clears
//! when it first writes to it in a new poll. After advancing the epoch from
//! `e` to `e + 1`, user space reads buffer `e & 1`, which the kernel no
//! longer writes, so a flood's SYNs during the read cannot wipe it.
//!
//! # Collisions
//!
//! Two destinations with the same index on one CPU share nothing: the slot
//! belongs to the first until it has seen no SYN for
//! [`TAKEOVER_IDLE_EPOCHS`] polls (and its counts are handed over to user
//! space), then the next destination's SYN takes it over, starting from
//! zero. Until then the newcomer's SYNs are counted in
//! [`crate::events::FlowStats::dest_collisions`] (and in the overall
//! tallies), not per destination.
//!
//! # Source samples
//!
//! One SYN in `sample_mask + 1` ([`DetectControl::sample_mask`], a power of two
//! minus one that user space adapts to the SYN rate) is written to this
//! CPU's [`SampleRing`], for the alerts' heavy hitters.

use crate::sketch::{HLL_REGISTERS, hash_addr};

/// Destination slots per CPU (a power of two).
pub const DEST_SLOTS: u32 = 256;

/// Polls without a SYN after which another destination may take a slot.
/// 300 polls: 30 s at teardown's 100 ms poll.
pub const TAKEOVER_IDLE_EPOCHS: u32 = 300;

/// Samples a CPU's ring holds; user space reads it every poll.
pub const SAMPLE_RING_LEN: usize = 256;

/// Samples user space aims for per poll, all CPUs together (it sets
/// [`DetectControl::sample_mask`] from the latest poll's SYNs).
pub const SAMPLES_PER_POLL: u64 = 128;

/// What user space tells the kernel each poll: one map entry, read with
/// one lookup per SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectControl {
    /// The current poll's number.
    pub epoch: u64,
    /// Sample one SYN when `(SYNs seen on this CPU) & sample_mask == 0`.
    pub sample_mask: u64,
}

const _: () = assert!(core::mem::size_of::<DetectControl>() == 16);

/// One destination's counts on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestSlot {
    /// The address as four words of its bytes in memory order
    /// ([`crate::addr::Addr16::words`]; IPv4 is IPv4-mapped).
    pub addr: [u32; 4],
    pub port: u32,
    /// Epoch of the last SYN (for [`TAKEOVER_IDLE_EPOCHS`]).
    pub last_syn_epoch: u32,
    /// The epoch each sketch buffer belongs to.
    pub sketch_epochs: [u32; 2],
    /// Pure SYNs sent to this destination.
    pub syns: u64,
    /// Handshakes completed: the originator acknowledged the SYN-ACK.
    pub completions: u64,
    /// Records that became half-open (SYN sent, no answer yet).
    pub half_open_started: u64,
    /// Half-open records resolved in the kernel (answered, reset, evicted or
    /// closed out). User space adds those it times out itself.
    pub half_open_resolved: u64,
    /// HyperLogLog sketches of the SYN sources, by epoch parity.
    pub sketches: [[u8; HLL_REGISTERS]; 2],
}

const _: () = assert!(core::mem::size_of::<DestSlot>() == 16 + 4 * 4 + 4 * 8 + 2 * HLL_REGISTERS);

impl DestSlot {
    pub const EMPTY: DestSlot = DestSlot {
        addr: [0; 4],
        port: 0,
        last_syn_epoch: 0,
        sketch_epochs: [0; 2],
        syns: 0,
        completions: 0,
        half_open_started: 0,
        half_open_resolved: 0,
        sketches: [[0; HLL_REGISTERS]; 2],
    };

    #[inline(always)]
    pub fn holds(&self, addr: &[u32; 4], port: u16) -> bool {
        self.port == port as u32
            && self.addr[3] == addr[3]
            && self.addr[0] == addr[0]
            && self.addr[1] == addr[1]
            && self.addr[2] == addr[2]
    }

    /// Whether a SYN for another destination arriving at `epoch` may take
    /// the slot: it never had one, or its owner has been quiet long enough.
    #[inline(always)]
    pub fn may_take_over(&self, epoch: u32) -> bool {
        self.syns == 0
            && self.half_open_started == 0
            && self.completions == 0
            && self.half_open_resolved == 0
            || epoch.wrapping_sub(self.last_syn_epoch) > TAKEOVER_IDLE_EPOCHS
    }

    /// Starts the slot afresh for a destination. Field by field: a struct
    /// assignment would become a memset call in the BPF backend.
    #[inline(always)]
    pub fn take_over(&mut self, addr: &[u32; 4], port: u16, epoch: u32) {
        self.addr[0] = addr[0];
        self.addr[1] = addr[1];
        self.addr[2] = addr[2];
        self.addr[3] = addr[3];
        self.port = port as u32;
        self.last_syn_epoch = epoch;
        // Volatile: LLVM would merge plain zero stores into a memset call.
        for counter in [
            &mut self.syns,
            &mut self.completions,
            &mut self.half_open_started,
            &mut self.half_open_resolved,
        ] {
            // SAFETY: a valid, aligned field.
            unsafe { core::ptr::write_volatile(counter, 0) };
        }
        // Neither buffer belongs to a live epoch: the next SYN clears one.
        self.sketch_epochs = [epoch.wrapping_sub(2), epoch.wrapping_sub(2)];
    }

    /// Counts a SYN from the source with hash `source_hash` at `epoch`.
    #[inline(always)]
    pub fn add_syn(&mut self, source_hash: u32, epoch: u32) {
        self.syns += 1;
        self.last_syn_epoch = epoch;
        let buffer = (epoch & 1) as usize;
        if self.sketch_epochs[buffer] != epoch {
            self.sketch_epochs[buffer] = epoch;
            clear_sketch(&mut self.sketches[buffer]);
        }
        let (index, rank) = crate::sketch::hll_slot(source_hash);
        let register = &mut self.sketches[buffer][index & (HLL_REGISTERS - 1)];
        if rank > *register {
            *register = rank;
        }
    }

    /// The sketch of the SYN sources seen during `epoch`, if this slot has
    /// one (no SYN that poll: none).
    pub fn sketch_of(&self, epoch: u32) -> Option<&[u8; HLL_REGISTERS]> {
        let buffer = (epoch & 1) as usize;
        (self.sketch_epochs[buffer] == epoch).then_some(&self.sketches[buffer])
    }
}

/// Zeroes a sketch eight bytes at a time, with volatile stores: LLVM turns
/// any plain zeroing loop into a memset call, which BPF cannot make.
#[inline(always)]
fn clear_sketch(sketch: &mut [u8; HLL_REGISTERS]) {
    let words = sketch.as_mut_ptr() as *mut u64;
    let mut i = 0;
    while i < HLL_REGISTERS / 8 {
        // SAFETY: i * 8 + 8 <= HLL_REGISTERS, and the sketch follows four
        // u64 fields in a repr(C) struct, so it is 8-aligned.
        unsafe { words.add(i).write_volatile(0) };
        i += 1;
    }
}

/// The slot of a destination: the source-address hash of its address with
/// the port folded into the third word. For IPv4 that word is the constant
/// mapped prefix, so the index mixes address and port fully.
#[inline(always)]
pub fn dest_index(addr: &[u32; 4], port: u16) -> u32 {
    hash_addr(&[addr[0], addr[1], addr[2] ^ port as u32, addr[3]]) & (DEST_SLOTS - 1)
}

/// One sampled SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceSample {
    /// Words as in [`DestSlot::addr`].
    pub source: [u32; 4],
    pub dest: [u32; 4],
    pub dest_port: u32,
    /// Always zero: explicit padding.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SourceSample>() == 40);

/// This CPU's sampled SYNs: `samples[n % SAMPLE_RING_LEN]` is the n-th
/// sample written (counting from 0), for `written - SAMPLE_RING_LEN <= n <
/// written`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRing {
    /// Pure SYNs this CPU has seen.
    pub syns_seen: u64,
    /// Samples written.
    pub written: u64,
    pub samples: [SourceSample; SAMPLE_RING_LEN],
}

const _: () = assert!(core::mem::size_of::<SampleRing>() == 16 + 40 * SAMPLE_RING_LEN);

impl SampleRing {
    pub const EMPTY: SampleRing = SampleRing {
        syns_seen: 0,
        written: 0,
        samples: [SourceSample {
            source: [0; 4],
            dest: [0; 4],
            dest_port: 0,
            _pad: 0,
        }; SAMPLE_RING_LEN],
    };

    /// Counts a SYN and samples it when `mask` says so.
    #[inline(always)]
    pub fn offer(&mut self, source: &[u32; 4], dest: &[u32; 4], dest_port: u16, mask: u64) {
        let seen = self.syns_seen;
        self.syns_seen = seen + 1;
        if seen & mask != 0 {
            return;
        }
        let at = (self.written % SAMPLE_RING_LEN as u64) as usize;
        self.written += 1;
        let sample = &mut self.samples[at & (SAMPLE_RING_LEN - 1)];
        sample.source[0] = source[0];
        sample.source[1] = source[1];
        sample.source[2] = source[2];
        sample.source[3] = source[3];
        sample.dest[0] = dest[0];
        sample.dest[1] = dest[1];
        sample.dest[2] = dest[2];
        sample.dest[3] = dest[3];
        sample.dest_port = dest_port as u32;
        sample._pad = 0;
    }
}

/// The sampling mask for a poll that saw `syns` SYNs (all CPUs): the
/// smallest power of two minus one that keeps the samples near
/// [`SAMPLES_PER_POLL`].
pub fn sample_mask_for(syns: u64) -> u64 {
    let every = (syns / SAMPLES_PER_POLL).max(1);
    every.next_power_of_two() - 1
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and byte arrays only, no implicit padding
    // (sizes asserted above).
    unsafe impl aya::Pod for super::DestSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SourceSample {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleRing {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DetectControl {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Addr16;
    use crate::sketch::hll_slot;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> [u32; 4] {
        Addr16::v4_mapped([a, b, c, d]).words()
    }

    #[test]
    fn syns_fill_the_current_epochs_sketch_only() {
        let mut slot = DestSlot::EMPTY;
        slot.take_over(&v4(10, 0, 0, 1), 80, 7);
        for source in 0..1000u32 {
            slot.add_syn(hash_addr(&v4(192, 0, (source >> 8) as u8, source as u8)), 7);
        }
        assert_eq!(slot.syns, 1000, "every SYN counted");
        let sketch = slot.sketch_of(7).expect("epoch 7 has a sketch");
        assert!(
            sketch.iter().all(|&r| r > 0),
            "1000 sources fill 64 registers"
        );
        assert!(slot.sketch_of(6).is_none(), "no SYN in epoch 6");
        // The next epoch writes the other buffer and leaves epoch 7's alone.
        let before = *sketch;
        slot.add_syn(hash_addr(&v4(1, 2, 3, 4)), 8);
        assert_eq!(
            slot.sketch_of(7),
            Some(&before),
            "epoch 7 intact after a SYN of epoch 8"
        );
        let (index, rank) = hll_slot(hash_addr(&v4(1, 2, 3, 4)));
        let eight = slot.sketch_of(8).expect("epoch 8 has a sketch");
        assert_eq!(eight[index], rank, "the one SYN's register");
        assert_eq!(eight.iter().filter(|&&r| r > 0).count(), 1, "and only it");
        // Epoch 9 reuses epoch 7's buffer, cleared first.
        slot.add_syn(hash_addr(&v4(1, 2, 3, 5)), 9);
        assert!(
            slot.sketch_of(7).is_none(),
            "epoch 7's buffer now belongs to 9"
        );
        assert_eq!(
            slot.sketch_of(9)
                .unwrap()
                .iter()
                .filter(|&&r| r > 0)
                .count(),
            1
        );
    }

    #[test]
    fn a_slot_is_taken_over_only_when_empty_or_idle() {
        let mut slot = DestSlot::EMPTY;
        assert!(slot.may_take_over(0), "an empty slot");
        slot.take_over(&v4(10, 0, 0, 1), 80, 5);
        assert!(slot.holds(&v4(10, 0, 0, 1), 80));
        assert!(!slot.holds(&v4(10, 0, 0, 1), 81), "the port matters");
        assert!(!slot.holds(&v4(10, 0, 0, 2), 80), "the address matters");
        slot.add_syn(1, 5);
        assert!(!slot.may_take_over(6), "its owner is active");
        assert!(
            !slot.may_take_over(5 + TAKEOVER_IDLE_EPOCHS),
            "not idle long enough"
        );
        assert!(
            slot.may_take_over(6 + TAKEOVER_IDLE_EPOCHS),
            "idle long enough"
        );
        slot.completions = 3;
        slot.take_over(&v4(10, 0, 0, 2), 443, 400);
        assert_eq!((slot.syns, slot.completions), (0, 0), "counts start afresh");
        assert!(slot.sketch_of(400).is_none() && slot.sketch_of(399).is_none());
    }

    #[test]
    fn the_index_spreads_ports_and_addresses() {
        let mut used = std::collections::HashSet::new();
        for port in 0..64u16 {
            used.insert(dest_index(&v4(10, 0, 0, 1), 8000 + port));
        }
        assert!(
            used.len() > 48,
            "64 ports of one address use {} slots",
            used.len()
        );
        let mut used = std::collections::HashSet::new();
        for host in 0..64u8 {
            used.insert(dest_index(&v4(10, 0, 0, host), 80));
        }
        assert!(
            used.len() > 48,
            "64 addresses on one port use {} slots",
            used.len()
        );
    }

    #[test]
    fn the_ring_samples_one_in_mask_plus_one_and_wraps() {
        let mut ring = SampleRing::EMPTY;
        let dest = v4(10, 0, 0, 1);
        for n in 0..4096u32 {
            ring.offer(&[0, 0, 0, n], &dest, 80, 7);
        }
        assert_eq!(ring.syns_seen, 4096);
        assert_eq!(ring.written, 512, "one in eight");
        // The newest 256 samples are SYNs 2048, 2056, ..., 4088.
        for n in 256..512u64 {
            let sample = ring.samples[(n % SAMPLE_RING_LEN as u64) as usize];
            assert_eq!(sample.source[3] as u64, n * 8, "sample {n}");
            assert_eq!((sample.dest, sample.dest_port), (dest, 80));
        }
    }

    #[test]
    fn the_mask_keeps_samples_near_the_target() {
        assert_eq!(sample_mask_for(0), 0, "sample everything when quiet");
        assert_eq!(sample_mask_for(SAMPLES_PER_POLL), 0);
        assert_eq!(sample_mask_for(SAMPLES_PER_POLL * 3), 3);
        let syns = 50_000u64;
        let per_poll = syns / (sample_mask_for(syns) + 1);
        assert!(
            (SAMPLES_PER_POLL / 2..=SAMPLES_PER_POLL).contains(&per_poll),
            "{per_poll} samples for {syns} SYNs"
        );
    }
}

//! Reading the maps: the tallies and flow statistics, the flow table
//! mapped into this process, the event ring buffer, the flood-detection
//! maps, and the few control maps user space writes.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, RingBuf},
};
use teardown_common::{
    counters::Tallies,
    dest::{DEST_SLOTS, DestSlot, DetectControl, SampleRing},
    events::{CHANGED_WORDS_CAPACITY, ChangedWords, FlowStats, SLOTS_PER_CHANGE_WORD},
    names,
    table::FlowSlot,
    tunnel::{TUNNEL_CAPACITY, Tunnel, TunnelRef},
};

use super::Kernel;

/// Maps an mmapable array map (`len` bytes of it) into this process.
fn mmap_map(ebpf: &Ebpf, name: &str, len: usize) -> anyhow::Result<NonNull<u8>> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("eBPF object has no {name} map"))?;
    let data: &MapData = match map {
        aya::maps::Map::Array(data) => data,
        _ => anyhow::bail!("{name} is not an array map"),
    };
    let fd = data.fd().as_fd().as_raw_fd();
    // SAFETY: a shared read-write mapping of the map's memory, which the
    // kernel allows for BPF_F_MMAPABLE arrays; `len` is within the map.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error()).with_context(|| format!("mapping the {name} map"));
    }
    NonNull::new(address.cast()).with_context(|| format!("mapping the {name} map"))
}

/// How many times [`FlowTable::read`] tries for a consistent copy.
const SLOT_READ_TRIES: u32 = 100_000;

/// The kernel's flow table as seen from user space (see
/// `teardown_common::table`): records are read in place, and only
/// [`FlowSlot::reported`] is ever written.
pub struct FlowTable {
    slots: NonNull<FlowSlot>,
    len: usize,
    changes: NonNull<u64>,
    words: usize,
    /// The kernel's table of tunnels (`TUNNELS`), which records refer to.
    tunnels: NonNull<Tunnel>,
    /// The bitmap's words the kernel marked, where it lists them
    /// ([`ChangedWords`]; a replay).
    noted: Option<NonNull<ChangedWords>>,
    mappings: [(NonNull<u8>, usize); 4],
}

impl FlowTable {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The tunnel a record's connection came through
    /// ([`Conn::tunnel`](teardown_common::conn::Conn::tunnel)), if any. An
    /// entry is written once, by the CPU its index was handed to, before
    /// any record refers to it; a record is read after the kernel let go
    /// of it. A tunnel the kernel's table had no room for is known by its
    /// innermost kind alone (the kernel counts those).
    pub fn tunnel(&self, reference: [u8; 3]) -> Option<Tunnel> {
        let reference = TunnelRef::from_bytes(reference);
        if reference == TunnelRef::NONE {
            return None;
        }
        match reference.index() {
            Some(index) if index < TUNNEL_CAPACITY => {
                // SAFETY: in bounds of the mapping; Tunnel is plain data.
                Some(unsafe { std::ptr::read_volatile(self.tunnels.as_ptr().add(index as usize)) })
            }
            _ => {
                let mut tunnel = Tunnel::default();
                tunnel.layers[0] = (reference.0 & 0xff) as u8;
                Some(tunnel)
            }
        }
    }

    /// A consistent copy of slot `index`, its lanes taken into the record
    /// ([`Conn::fold_lanes`](teardown_common::conn::Conn::fold_lanes)).
    /// The kernel may be writing it meanwhile: the copy is kept only if
    /// both of the slot's sequence locks (one in each of the record's
    /// lanes) were even, and unchanged, around it; otherwise it is taken
    /// again. A kernel writer holds a lane for a few microseconds at most,
    /// so the retries end long before their bound; should they not, the
    /// last copy is returned all the same.
    pub fn read(&self, index: u32) -> Option<FlowSlot> {
        if index as usize >= self.len {
            return None;
        }
        // SAFETY: in bounds of the mapping; FlowSlot is plain data, any
        // bytes are valid; each lane's `lock` is a 4-aligned u32 the kernel
        // changes only atomically.
        let mut copy = unsafe {
            let slot = self.slots.as_ptr().add(index as usize);
            let locks = [
                AtomicU32::from_ptr(std::ptr::addr_of_mut!((*slot).conn.lanes[0].lock)),
                AtomicU32::from_ptr(std::ptr::addr_of_mut!((*slot).conn.lanes[1].lock)),
            ];
            let mut copy = std::ptr::read_volatile(slot);
            for _ in 0..SLOT_READ_TRIES {
                let before = [
                    locks[0].load(Ordering::Acquire),
                    locks[1].load(Ordering::Acquire),
                ];
                if (before[0] | before[1]) & 1 == 0 {
                    copy = std::ptr::read_volatile(slot);
                    fence(Ordering::Acquire);
                    if locks[0].load(Ordering::Relaxed) == before[0]
                        && locks[1].load(Ordering::Relaxed) == before[1]
                    {
                        break;
                    }
                }
                std::hint::spin_loop();
            }
            copy
        };
        copy.conn.fold_lanes();
        Some(copy)
    }

    /// Marks `generation` of slot `index` reported: the kernel may reuse the
    /// slot and will not report that record itself.
    pub fn mark_reported(&self, index: u32, generation: u32) {
        if index as usize >= self.len {
            return;
        }
        // SAFETY: in bounds; `reported` is a 4-aligned u32 only user space
        // writes; the kernel reads it.
        unsafe {
            let slot = self.slots.as_ptr().add(index as usize);
            let reported = std::ptr::addr_of_mut!((*slot).reported);
            std::sync::atomic::AtomicU32::from_ptr(reported)
                .store(generation, std::sync::atomic::Ordering::Release);
        }
    }

    /// Calls `each` for every slot flagged since the last call, clearing
    /// the flags.
    pub fn take_changes(&self, mut each: impl FnMut(u32)) {
        if let Some(noted) = self.noted {
            // SAFETY: the mapped ChangedWords; the kernel writes it only
            // during a test run, which has returned (see ChangedWords).
            let listed = unsafe { std::ptr::read_volatile(noted.as_ptr()) };
            if listed.count as usize <= CHANGED_WORDS_CAPACITY {
                for &word_index in &listed.words[..listed.count as usize] {
                    self.take_word(word_index as usize, &mut each);
                }
                // SAFETY: as above.
                unsafe { std::ptr::write_volatile(noted.as_ptr(), ChangedWords::default()) };
                // Every marked word was listed: none is left anywhere.
                debug_assert!(
                    (0..self.words).all(|word_index| {
                        // SAFETY: in bounds of the mapping, as below.
                        unsafe { AtomicU64::from_ptr(self.changes.as_ptr().add(word_index)) }
                            .load(Ordering::Relaxed)
                            == 0
                    }),
                    "a change word was marked but not listed"
                );
                return;
            }
            // More were marked than listed: take them all, below.
            // SAFETY: as above.
            unsafe { std::ptr::write_volatile(noted.as_ptr(), ChangedWords::default()) };
        }
        for word_index in 0..self.words {
            self.take_word(word_index, &mut each);
        }
    }

    /// Takes the flags of one word of the bitmap.
    fn take_word(&self, word_index: usize, each: &mut impl FnMut(u32)) {
        if word_index >= self.words {
            return;
        }
        // SAFETY: in bounds of the mapping; the kernel ORs bits in
        // atomically, and swapping the word takes them all exactly once.
        let word = unsafe { AtomicU64::from_ptr(self.changes.as_ptr().add(word_index)) };
        // Nearly every word is 0 between two calls: a plain load first,
        // as a swap writes the cache line even when there is nothing to
        // take. A bit set just after the load is taken next time, as one
        // set just after a swap would be. (The replay takes changes after
        // every packet: swapping every word was a quarter of its time.)
        if word.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let mut bits = word.swap(0, std::sync::atomic::Ordering::AcqRel);
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            each(word_index as u32 * SLOTS_PER_CHANGE_WORD + bit);
        }
    }
}

impl Drop for FlowTable {
    fn drop(&mut self) {
        for (address, len) in self.mappings {
            // SAFETY: each was mapped by mmap_map with this length.
            unsafe { libc::munmap(address.as_ptr().cast(), len) };
        }
    }
}

impl Kernel {
    /// The flow table and its changed-slot bitmap, mapped into this process.
    pub fn flow_table(&mut self) -> anyhow::Result<FlowTable> {
        let slots = self.slots as usize;
        let table = mmap_map(
            &self.ebpf,
            names::FLOW_TABLE_MAP,
            slots * size_of::<FlowSlot>(),
        )?;
        let changes = mmap_map(
            &self.ebpf,
            names::FLOW_CHANGES_MAP,
            slots.div_ceil(SLOTS_PER_CHANGE_WORD as usize) * 8,
        )?;
        let tunnels_len = TUNNEL_CAPACITY as usize * size_of::<Tunnel>();
        let tunnels = mmap_map(&self.ebpf, names::TUNNELS_MAP, tunnels_len)?;
        let noted_len = size_of::<ChangedWords>();
        let noted = mmap_map(&self.ebpf, names::CHANGED_WORDS_MAP, noted_len)?;
        Ok(FlowTable {
            slots: table.cast(),
            len: slots,
            changes: changes.cast(),
            words: slots.div_ceil(SLOTS_PER_CHANGE_WORD as usize),
            tunnels: tunnels.cast(),
            noted: self.note_changed_words.then_some(noted.cast()),
            mappings: [
                (table, slots * size_of::<FlowSlot>()),
                (changes, slots.div_ceil(64) * 8),
                (tunnels, tunnels_len),
                (noted, noted_len),
            ],
        })
    }

    /// Takes the event ring buffer out of the object (once).
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS_MAP)
            .context("eBPF object has no event ring buffer")?;
        RingBuf::try_from(map).context("opening the event ring buffer")
    }

    /// The flow-table statistics summed over all CPUs.
    pub fn flow_stats(&self) -> anyhow::Result<FlowStats> {
        let map = self
            .ebpf
            .map(names::FLOW_STATS_MAP)
            .context("eBPF object has no flow statistics map")?;
        let array = PerCpuArray::<&MapData, FlowStats>::try_from(map)
            .context("opening the flow statistics map")?;
        let per_cpu = array.get(&0, 0).context("reading the flow statistics")?;
        let mut total = FlowStats::default();
        for cpu in per_cpu.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Sets the benchmark wrappers' frame change (see the eBPF `BENCH` map).
    pub fn set_bench(&mut self, mode: u64, step: u64, first: u64) -> anyhow::Result<()> {
        let mut bench: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(names::BENCH_MAP)
                .context("eBPF object has no bench map")?,
        )
        .context("opening the bench map")?;
        for (index, value) in [mode, 0, step, first].into_iter().enumerate() {
            bench
                .set(index as u32, value, 0)
                .context("setting the bench map")?;
        }
        Ok(())
    }

    /// Every CPU's destination slots that have counted anything, as
    /// (CPU, slot index, slot): one system call per slot index.
    pub fn destinations(&self) -> anyhow::Result<Vec<(u32, u32, DestSlot)>> {
        let map = self
            .ebpf
            .map(names::DESTINATIONS_MAP)
            .context("eBPF object has no destination map")?;
        let array = PerCpuArray::<&MapData, DestSlot>::try_from(map)
            .context("opening the destination map")?;
        let mut used = Vec::new();
        for index in 0..DEST_SLOTS {
            let per_cpu = array
                .get(&index, 0)
                .context("reading the destination map")?;
            for (cpu, slot) in per_cpu.iter().enumerate() {
                if slot.syns != 0 || slot.half_open_started != 0 || slot.completions != 0 {
                    used.push((cpu as u32, index, *slot));
                }
            }
        }
        Ok(used)
    }

    /// Every CPU's ring of sampled SYN sources.
    pub fn source_samples(&self) -> anyhow::Result<Vec<SampleRing>> {
        let map = self
            .ebpf
            .map(names::SOURCE_SAMPLES_MAP)
            .context("eBPF object has no source sample map")?;
        let array = PerCpuArray::<&MapData, SampleRing>::try_from(map)
            .context("opening the source sample map")?;
        let per_cpu = array.get(&0, 0).context("reading the source samples")?;
        Ok(per_cpu.iter().copied().collect())
    }

    /// Starts poll `epoch` for the destination sketches, with `sample_mask`
    /// for the source samples (see `teardown_common::dest`).
    pub fn set_detect_control(&mut self, epoch: u64, sample_mask: u64) -> anyhow::Result<()> {
        let mut control: Array<&mut MapData, DetectControl> = Array::try_from(
            self.ebpf
                .map_mut(names::DETECT_CONTROL_MAP)
                .context("eBPF object has no detection control map")?,
        )
        .context("opening the detection control map")?;
        control
            .set(0, DetectControl { epoch, sample_mask }, 0)
            .context("setting the poll epoch")
    }

    /// The tallies of what arrives, summed over all CPUs.
    pub fn tallies(&self) -> anyhow::Result<Tallies> {
        self.tallies_of(names::TALLIES_MAP)
    }

    /// The tallies of what the host sends (TC egress), summed over all CPUs.
    pub fn egress_tallies(&self) -> anyhow::Result<Tallies> {
        self.tallies_of(names::EGRESS_TALLIES_MAP)
    }

    fn tallies_of(&self, name: &str) -> anyhow::Result<Tallies> {
        let map = self
            .ebpf
            .map(name)
            .with_context(|| format!("eBPF object has no {name} map"))?;
        let array =
            PerCpuArray::<&MapData, Tallies>::try_from(map).context("opening the tallies map")?;
        let per_cpu = array.get(&0, 0).context("reading the tallies map")?;
        let mut total = Tallies::default();
        for cpu in per_cpu.iter() {
            total.add(cpu);
        }
        Ok(total)
    }
}

//! Every map the programs share with user space, and the globals user space
//! sets at load. User space finds both by name (`teardown_common`'s
//! `names`): the `#[map]` statics are exported under their own names, the
//! settings are `#[unsafe(no_mangle)]`, so neither may be renamed. The
//! benchmark wrappers' map, [`BENCH`](crate::bench::BENCH), lives with them.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, ProgramArray, RingBuf},
};
use teardown_common::{
    conn::{PORT_SET_WORDS, Timeouts},
    counters::Tallies,
    dest::{DEST_SLOTS, DestSlot, DetectControl, SampleRing},
    events::{
        Admission, ChangedWords, DEFAULT_MAX_FLOWS, EVENTS_BYTES, FlowStats, SLOTS_PER_CHANGE_WORD,
        SYN_STAMP_BUCKETS,
    },
    table::{FlowSlot, PrintLine, SLOTS_PER_PRINT_LINE, set_shift},
    tunnel::{DecapState, TUNNEL_CAPACITY, Tunnel, TunnelPorts},
};

use crate::fast_path::{ReplaySegment, TrackInput};

/// One slot of tallies per CPU: no atomics and no contention. What arrives.
#[map]
pub(crate) static TALLIES: PerCpuArray<Tallies> = PerCpuArray::with_max_entries(1, 0);

/// The same tallies of what the host sends (TC egress).
#[map]
pub(crate) static EGRESS_TALLIES: PerCpuArray<Tallies> = PerCpuArray::with_max_entries(1, 0);

/// The flow table (see `teardown_common::table`): sized by user space at
/// load, mmapped by it to read records without a system call each.
#[map]
pub(crate) static FLOW_TABLE: Array<FlowSlot> =
    Array::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_MMAPABLE);

/// The slots' fingerprints (`teardown_common::table::PrintLine`), sized
/// with [`FLOW_TABLE`] at load. Why it is safe to read them without a
/// lock: each set's word has one writer at a time, the CPU holding both of
/// the set's slot locks to give one of them a key (`claim_slot`), and it
/// writes the word whole (an aligned u32 store is never torn) before the
/// key. A reader sees the old print or the new one: the old one of a slot
/// taking a new key only ever answers "no record of yours here" for a
/// connection whose record is being started at that moment, which the
/// fast path treats as it treats a probe that ran just before the key
/// was written (see `fast_path::look_up`).
#[map]
pub(crate) static FLOW_PRINTS: Array<PrintLine> =
    Array::with_max_entries(DEFAULT_MAX_FLOWS / SLOTS_PER_PRINT_LINE, 0);

/// One bit per slot: a new record, or a deadline moved earlier.
#[map]
pub(crate) static FLOW_CHANGES: Array<u64> =
    Array::with_max_entries(DEFAULT_MAX_FLOWS / SLOTS_PER_CHANGE_WORD, BPF_F_MMAPABLE);

/// The bitmap's words marked during a replay's test run (see
/// [`ChangedWords`]); written only where [`NOTE_CHANGED_WORDS`] says so.
#[map]
pub(crate) static CHANGED_WORDS: Array<ChangedWords> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// A per-CPU place for the segment handed to
/// [`track_segment`](crate::slow_path::track_segment).
#[map]
pub(crate) static TRACK_INPUT: PerCpuArray<TrackInput> = PerCpuArray::with_max_entries(1, 0);

/// A per-CPU place for the segment a replay program hands to
/// [`track_replay_segment`](crate::fast_path::track_replay_segment).
#[map]
pub(crate) static REPLAY_SEGMENT: PerCpuArray<ReplaySegment> = PerCpuArray::with_max_entries(1, 0);

/// Records the kernel closed out itself.
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// What the flow table did, counted per CPU ([`FlowStats`]); read through
/// [`stats`].
#[map]
static FLOW_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(1, 0);

/// Zeek's likely server ports as a 65536-bit set, filled in by user space.
#[map]
static LIKELY_PORTS: Array<u64> = Array::with_max_entries(PORT_SET_WORDS as u32, 0);

/// The current packet's capture time, for the replay program only.
#[map]
pub(crate) static REPLAY_CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// Where [`teardown_clock`](crate::teardown_clock) leaves the clocks'
/// readings: the precise clock, and the coarse one before its offset.
#[map]
pub(crate) static CLOCK_PROBE: Array<u64> = Array::with_max_entries(2, 0);

/// `bpf_ktime_get_ns() - jiffies * tick`, at its smallest: user space
/// measures it at load with [`teardown_clock`](crate::teardown_clock). With
/// it the coarse clock reads the precise clock's time (as of the last tick),
/// so records can mix both: the precise clock where a packet takes the slow
/// path (SYN, FIN, RST, anything out of the ordinary), the coarse one on the
/// fast path.
#[map]
pub(crate) static CLOCK_OFFSET: Array<u64> = Array::with_max_entries(1, 0);

/// This CPU's admission of new half-open records.
#[map]
pub(crate) static ADMISSION: PerCpuArray<Admission> = PerCpuArray::with_max_entries(1, 0);

/// The last admission window under pressure on any CPU, plus one
/// (`Admission::admit`): the table is shared, so its pressure is too.
/// Written at most once per window per CPU, read with each SYN admitted.
/// Both CPUs may store at once; a u64 store is never torn, and the values
/// raced are window numbers a window apart at most, either of which
/// limits the next window.
#[map]
pub(crate) static TABLE_PRESSURE: Array<u64> = Array::with_max_entries(1, 0);

/// The recent-SYN stamps (`teardown_common::events::syn_stamp`), one byte
/// per bucket of flow-table sets, shared by every CPU: an admitted SYN
/// stamps its set's bucket with its window, so a SYN-ACK under pressure
/// can tell, without probing the table, that no admitted SYN can have
/// started its record (see `fast_path::look_up`).
///
/// Shared across CPUs without a lock: each access is a single byte load or
/// store, which cannot tear. Two CPUs stamping one bucket at once both
/// write a current window; whichever lands, the bucket reads as recent. A
/// stale read can only be of an older stamp, written before: at worst a
/// SYN-ACK is looked up for nothing (as without the stamps), or, for a SYN
/// admitted on one CPU a moment before its SYN-ACK is seen on another and
/// not yet visible there, the SYN-ACK goes to admission like a flood's,
/// costing the record one segment under pressure, never memory safety.
/// In practice the SYN-ACK follows its SYN through the network stack and
/// a peer, whose queues order the store before it.
#[map]
pub(crate) static SYN_STAMPS: Array<[u8; SYN_STAMP_BUCKETS]> = Array::with_max_entries(1, 0);

/// SYNs, completions and half-open records per destination, this CPU's
/// own (see `teardown_common::dest`).
#[map]
pub(crate) static DESTINATIONS: PerCpuArray<DestSlot> =
    PerCpuArray::with_max_entries(DEST_SLOTS, 0);

/// This CPU's sampled SYN sources.
#[map]
pub(crate) static SOURCE_SAMPLES: PerCpuArray<SampleRing> = PerCpuArray::with_max_entries(1, 0);

/// The poll epoch and the sampling mask, which user space writes each poll.
#[map]
pub(crate) static DETECT_CONTROL: Array<DetectControl> = Array::with_max_entries(1, 0);

/// The XDP tunnel programs the XDP programs hand tunnelled frames to
/// (`teardown_common::names::tunnel_slot`); user space fills it at load.
/// Empty, the tail call fails and the frame passes untracked.
#[map]
pub(crate) static TUNNEL_XDP: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// The TC tunnel programs the TC programs hand tunnelled packets to
/// (`teardown_common::names::tc_tunnel_slot`); user space fills it.
#[map]
pub(crate) static TUNNEL_TC: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// The tunnels records refer to, by the index
/// [`TunnelRef`](teardown_common::tunnel::TunnelRef) holds; user space
/// reads an entry when it reports a record that refers to it.
///
/// Shared by every CPU without a lock: an index is handed out once
/// ([`TUNNEL_NEXT`], an atomic add), and only the CPU it was handed to
/// writes its entry, before the index is published (in [`TUNNEL_IDS`] or
/// a record); an entry is never written again. Mapped by user space,
/// which reads a record's tunnel in place when the record ends.
#[map]
pub(crate) static TUNNELS: Array<Tunnel> = Array::with_max_entries(TUNNEL_CAPACITY, BPF_F_MMAPABLE);

/// Each tunnel's index in [`TUNNELS`], so that connections through one
/// tunnel share its entry. The map's own locking orders concurrent
/// inserts; a CPU whose insert loses a race uses the winner's index.
#[map]
pub(crate) static TUNNEL_IDS: HashMap<Tunnel, u32> = HashMap::with_max_entries(TUNNEL_CAPACITY, 0);

/// The last index handed out in [`TUNNELS`] (index 0 means none).
#[map]
pub(crate) static TUNNEL_NEXT: Array<u64> = Array::with_max_entries(1, 0);

/// The encapsulations of the frame this CPU is working on, opened layer by
/// layer ([`DecapState`]); its tunnel goes on to the slow path, which
/// records it if the segment starts a record.
#[map]
pub(crate) static DECAP_STATE: PerCpuArray<DecapState> = PerCpuArray::with_max_entries(1, 0);

/// Which encapsulations the parser opens; user space sets it at load.
/// Mutable for the same reason as [`TIMEOUTS`]. Read through
/// [`tunnel_ports`].
#[unsafe(no_mangle)]
static mut TUNNEL_PORTS: TunnelPorts = TunnelPorts::DEFAULT;

/// Timer settings; user space overrides them at load time. Mutable (in
/// `.data`) only so the compiler reads it from the map instead of folding in
/// the defaults; nothing writes it after load. Read through [`timeouts`].
#[unsafe(no_mangle)]
static mut TIMEOUTS: Timeouts = Timeouts::ZEEK;

/// How long past a deadline a record may stay for user space to close it out
/// before the next packet makes the kernel do it.
#[unsafe(no_mangle)]
pub(crate) static GRACE_NS: u64 = 0;

/// [`set_shift`] of the slots in [`FLOW_TABLE`]; set at load with the
/// map's size.
#[unsafe(no_mangle)]
pub(crate) static SET_SHIFT: u32 = set_shift(DEFAULT_MAX_FLOWS);

/// Nanoseconds per jiffy, or 0 for the precise clock. `bpf_ktime_get_ns`
/// costs about as much as parsing a whole packet on this kind of machine;
/// the jiffies counter is a plain load, at the price of a tick's resolution.
#[unsafe(no_mangle)]
pub(crate) static NS_PER_TICK: u64 = 0;

/// New half-open records this CPU may create per window while under
/// pressure ([`Admission`]); set at load.
#[unsafe(no_mangle)]
pub(crate) static HALF_OPEN_BUDGET: u64 = 1 << 20;

/// 1 if [`unlock`](crate::lock::unlock) may let go of a slot with a plain
/// store, 0 for a fetching add; set at load for the host's architecture.
#[unsafe(no_mangle)]
pub(crate) static UNLOCK_BY_STORE: u32 = 0;

/// 1 if the slow path lists the change words it marks in
/// [`CHANGED_WORDS`]: set by `teardown replay` alone, which runs one
/// packet at a time on one thread, so the plain (not atomic) update of the
/// list has one writer and no reader meanwhile.
#[unsafe(no_mangle)]
pub(crate) static NOTE_CHANGED_WORDS: u32 = 0;

/// 1 if the reset program, while [`TABLE_PRESSURE`] says the table is
/// under pressure, sends no event for a reset of a connection
/// [`FLOW_TABLE`] holds no record of (counted all the same). Set by `teardown
/// run` when it watches one interface: with several, each has a table of
/// its own, and the one reset program sees only the first's.
#[unsafe(no_mangle)]
pub(crate) static SKIP_UNTRACKED_RESETS: u32 = 0;

/// 1 if the interface's packets start with their IP header, no Ethernet
/// header before it (a tun or WireGuard device: `ARPHRD_NONE`,
/// `ARPHRD_RAWIP`): the TC programs then read each packet from its first
/// byte ([`crate::tc_work`]). Set at load for the interface watched; the
/// verifier reads it as a constant and drops the other way's code.
#[unsafe(no_mangle)]
pub(crate) static IP_LINK: u32 = 0;

/// Reads a global user space may have set at load; volatile so the compiler
/// does not fold in the default.
macro_rules! setting {
    ($global:ident) => {
        // SAFETY: a plain read of a global that nothing writes after load.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($global)) }
    };
}
pub(crate) use setting;

/// This CPU's [`FLOW_STATS`].
#[inline(always)]
pub(crate) fn stats() -> Option<&'static mut FlowStats> {
    // SAFETY: the per-CPU slot is only touched by this CPU, one program at a time.
    FLOW_STATS
        .get_ptr_mut(0)
        .map(|stats| unsafe { &mut *stats })
}

/// Whether `port` is one of Zeek's likely server ports ([`LIKELY_PORTS`]).
#[inline(always)]
pub(crate) fn is_likely_server(port: u16) -> bool {
    match LIKELY_PORTS.get(port as u32 / 64) {
        Some(word) => word & (1 << (port % 64)) != 0,
        None => false,
    }
}

/// The timer settings ([`TIMEOUTS`]).
#[inline(always)]
pub(crate) fn timeouts() -> &'static Timeouts {
    // SAFETY: TIMEOUTS is never written after load; a reference to it rather
    // than a copy keeps 48 bytes off the BPF stack.
    unsafe { &*core::ptr::addr_of!(TIMEOUTS) }
}

/// The tunnel settings ([`TUNNEL_PORTS`]).
#[inline(always)]
pub(crate) fn tunnel_ports() -> &'static TunnelPorts {
    // SAFETY: TUNNEL_PORTS is never written after load.
    unsafe { &*core::ptr::addr_of!(TUNNEL_PORTS) }
}

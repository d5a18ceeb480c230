//! The per-packet path: admission of SYNs, then a probe of the
//! connection's set in the flow table, and for the common case (an
//! established connection's ordinary segment) the update right there, under
//! its direction's lane lock taken in one try. Everything else is written to
//! [`TRACK_INPUT`] and handed to the slow path
//! ([`track_segment`]).

use teardown_common::{
    addr::Addr16,
    conn::{Lane, Segment},
    events::{syn_bucket, syn_recent, syn_stamp},
    flow::FlowKey,
    parse::{
        PacketBytes, TcpSegment,
        tcp_flags::{ACK, FIN, RST, SYN},
    },
    table::{
        WAYS, flow_hash, fold_address, matched, print_of, print_place, prints_may_hold, set_of,
    },
};

use crate::{
    clock::{FlowClock, ReplayClock},
    flood::{admits_midstream, admits_syn, count_syn, table_limited},
    frame::Frame,
    lock::{try_lock, try_lock_fast, unlock, unlock_slot},
    maps::{
        FLOW_PRINTS, FLOW_TABLE, REPLAY_SEGMENT, SET_SHIFT, SYN_STAMPS, TRACK_INPUT, setting,
        stats, timeouts,
    },
    slow_path::track_segment,
};

/// One TCP segment the fast path declined, for the slow path: everything it
/// needs, in a per-CPU slot, so the tracking functions never see packet
/// memory and keep their stacks small.
///
/// Every scalar is a whole u64. With misaligned access enabled, LLVM merges
/// neighbouring narrow loads into wider ones at odd offsets; the verifier
/// allows that for packet memory but not for other memory.
#[repr(C)]
pub struct TrackInput {
    pub now: u64,
    pub seq: u64,
    pub ack: u64,
    pub len: u64,
    /// The IP datagram's length.
    pub ip_len: u64,
    pub window: u64,
    pub src_port: u64,
    pub dst_port: u64,
    pub flags: u64,
    /// 0 if the TCP header (options included) was cut short.
    pub header_complete: u64,
    /// 4 or 6, with [`TUNNELLED`] if the segment came through a tunnel,
    /// which this CPU's [`DECAP_STATE`](crate::maps::DECAP_STATE) describes.
    pub family: u64,
    /// First slot of the connection's set, and the way holding its live
    /// record ([`WAYS`] if none does), with [`HELD`] if the fast path hands
    /// that slot over held.
    pub set: u64,
    pub way: u64,
    /// Source and destination addresses as [`Addr16::halves`] (IPv4 mapped).
    pub src: [u64; 2],
    pub dst: [u64; 2],
    /// Filled in by [`track_segment`]: the connection's canonical key, and 1
    /// if the segment travels from its endpoint `a`.
    pub key: FlowKey,
    pub from_a: u64,
}

const _: () = assert!(core::mem::size_of::<TrackInput>() == 14 * 8 + 32 + 40);

/// A TCP segment a replay program tracks out of line, for
/// [`track_replay_segment`]: the segment's fields, its IP header's offset,
/// its addresses and the capture's time, in a per-CPU slot
/// ([`REPLAY_SEGMENT`]). Whole u64s, as in [`TrackInput`].
#[repr(C)]
pub struct ReplaySegment {
    pub now: u64,
    /// What admission answered: the time of a pure SYN, 0 for the rest.
    pub syn_time: u64,
    pub seq: u64,
    pub ack: u64,
    pub payload_len: u64,
    pub window: u64,
    pub src_port: u64,
    pub dst_port: u64,
    pub flags: u64,
    pub header_len: u64,
    pub header_complete: u64,
    /// The TCP header's offset in the frame.
    pub tcp_offset: u64,
    pub ip_offset: u64,
    /// As [`TrackInput::src`] and [`TrackInput::dst`].
    pub src: [u64; 2],
    pub dst: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<ReplaySegment>() == 13 * 8 + 32);

/// Set in [`TrackInput::family`] for a segment found inside a tunnel.
pub const TUNNELLED: u64 = 0x100;

/// Set in [`TrackInput::way`] (and the `way` of [`look_up`]) when the fast
/// path hands the slow path the record's slot held (both lanes): it found
/// the record under its lane's lock, declined the segment, and took the
/// other lane at the first try. Only with a way below [`WAYS`].
pub const HELD: u32 = 0x100;

/// The per-packet work: find the connection's slot and, for the common
/// case, update it right here ([`Conn::update_established`]); anything else
/// goes to [`track_segment`]. Inlined into each program.
///
/// A segment found inside a tunnel (`TUNNELLED`) has its tunnel described
/// in this CPU's [`DECAP_STATE`](crate::maps::DECAP_STATE) by `describe`,
/// called only on the way to the slow path, the one place a record (which
/// keeps its tunnel) may start.
///
/// [`Conn::update_established`]: teardown_common::conn::Conn::update_established
#[inline(always)]
pub(crate) fn track<const OPAQUE_OFFSET: bool, const TUNNELLED: bool, C: FlowClock>(
    frame: &Frame,
    tcp: &TcpSegment,
    ip_offset: usize,
    is_v6: bool,
    clock: &C,
    describe: impl Fn(),
) {
    // In the TC program, the offset is made opaque to the optimiser, so it
    // keeps the bounds checks of the address loads below: it can prove them
    // from the parser's earlier checks, by reasoning the verifier does not
    // follow, and would drop them. The XDP programs do not need it, and
    // save its stack round trip on every packet.
    let ip_offset = if OPAQUE_OFFSET {
        core::hint::black_box(ip_offset)
    } else {
        ip_offset
    };
    // Straight from the packet into words: byte-array stores of the
    // IPv4-mapped prefix would become memset calls. Each version gets its
    // own copy of the lookup, specialised to its address words.
    if is_v6 {
        if let (Some(src), Some(dst)) = (
            frame.load::<16>(ip_offset + 8),
            frame.load::<16>(ip_offset + 24),
        ) {
            let (src, dst) = (Addr16(src).halves(), Addr16(dst).halves());
            admit_and_look_up::<true, TUNNELLED, C>(tcp, ip_offset, &src, &dst, clock, describe);
        }
    } else if let Some(pair) = frame.load::<8>(ip_offset + 12) {
        let src = Addr16::v4_mapped_halves([pair[0], pair[1], pair[2], pair[3]]);
        let dst = Addr16::v4_mapped_halves([pair[4], pair[5], pair[6], pair[7]]);
        admit_and_look_up::<false, TUNNELLED, C>(tcp, ip_offset, &src, &dst, clock, describe);
    }
}

/// A segment's admission, then its probe ([`look_up`]): inline, on the
/// host's clock; out of line on a capture's ([`track_replay_segment`] and its kin).
///
/// Why a replay tracks out of line: inline, every program carries a copy
/// of the probe and the fast path for each way it reads a segment (the
/// common frame, tagged, each tunnel shortcut, the general parser; IPv4
/// and IPv6), and the verifier checks each copy on every path that leads
/// to it: nearly all of the replay program's work at load, which is most
/// of a short capture's replay. A global function is checked once. The
/// live programs keep their copies: a call, and the segment's round trip
/// through a map, would cost every packet, where a replay's per-packet
/// cost is the system call's. The code run is the same either way.
#[inline(always)]
fn admit_and_look_up<const V6: bool, const TUNNELLED: bool, C: FlowClock>(
    tcp: &TcpSegment,
    ip_offset: usize,
    src: &[u64; 2],
    dst: &[u64; 2],
    clock: &C,
    describe: impl Fn(),
) {
    if C::REPLAY {
        // Described now rather than only on the way to the slow path, as
        // the live path does, for the call takes no closure: the
        // description waits in this CPU's `DECAP_STATE` for a record the
        // segment may start, and nothing else reads it.
        if TUNNELLED {
            describe();
        }
        // Admission here, where the live path asks it: its stack would
        // add to the global function's, on top of the slow path's chain.
        let Some(syn_time) = admit(tcp, src, dst, clock) else {
            return;
        };
        let Some(input) = REPLAY_SEGMENT.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's slot, used by one program run at a time.
        let input = unsafe { &mut *input };
        input.now = clock.precise();
        input.syn_time = syn_time;
        input.seq = tcp.seq as u64;
        input.ack = tcp.ack as u64;
        input.payload_len = tcp.payload_len as u64;
        input.window = tcp.window as u64;
        input.src_port = tcp.src_port as u64;
        input.dst_port = tcp.dst_port as u64;
        input.flags = tcp.flags as u64;
        input.header_len = tcp.header_len as u64;
        input.header_complete = tcp.header_complete as u64;
        input.tcp_offset = tcp.offset as u64;
        input.ip_offset = ip_offset as u64;
        input.src = *src;
        input.dst = *dst;
        let handed = match (V6, TUNNELLED) {
            (false, false) => track_replay_segment(),
            (true, false) => track_replay_segment_v6(),
            (false, true) => track_replay_tunnelled(),
            (true, true) => track_replay_tunnelled_v6(),
        };
        // The slow path called from here, not from inside that function:
        // the kernel's 512 bytes of stack hold the longest chain of calls,
        // and this keeps the function's frame out of the slow path's.
        if handed != 0
            && let Some(input) = TRACK_INPUT.get_ptr_mut(0)
        {
            // SAFETY: this CPU's slot, filled by that function just now.
            track_segment(unsafe { &mut *input });
        }
        return;
    }
    if let Some(syn_time) = admit(tcp, src, dst, clock) {
        look_up::<V6, TUNNELLED, C>(tcp, ip_offset, src, dst, clock, syn_time, describe);
    }
}

/// Tracks the segment a replay program left in this CPU's
/// [`REPLAY_SEGMENT`] ([`admit_and_look_up`]), on the capture's time it
/// carries, an IPv4 one not from a tunnel: a global function the verifier
/// checks once. One function per family and tunnelling, each with one copy
/// of the probe: one function holding all four took 216 bytes of stack,
/// on top of the slow path's chain, past the kernel's 512.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_replay_segment() -> i32 {
    replay_from_input::<false, false>() as i32
}

/// [`track_replay_segment`] for IPv6.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_replay_segment_v6() -> i32 {
    replay_from_input::<true, false>() as i32
}

/// [`track_replay_segment`] for a segment from a tunnel (already
/// described).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_replay_tunnelled() -> i32 {
    replay_from_input::<false, true>() as i32
}

/// [`track_replay_tunnelled`] for IPv6.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_replay_tunnelled_v6() -> i32 {
    replay_from_input::<true, true>() as i32
}

/// 1 if it left the segment in [`TRACK_INPUT`] for the slow path, which
/// the caller then calls.
#[inline(always)]
fn replay_from_input<const V6: bool, const TUNNELLED: bool>() -> bool {
    let Some(input) = REPLAY_SEGMENT.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, written by the caller just before.
    let input = unsafe { &*input };
    let tcp = TcpSegment {
        flags: input.flags as u8,
        header_len: input.header_len as u8,
        header_complete: input.header_complete != 0,
        offset: input.tcp_offset as u16,
        src_port: input.src_port as u16,
        dst_port: input.dst_port as u16,
        window: input.window as u16,
        seq: input.seq as u32,
        ack: input.ack as u32,
        payload_len: input.payload_len as u32,
    };
    let clock = ReplayClock { now: input.now };
    // The addresses read where they are, in the map's value: this
    // function's stack is on top of the slow path's chain of calls.
    look_up::<V6, TUNNELLED, ReplayClock>(
        &tcp,
        input.ip_offset as usize,
        &input.src,
        &input.dst,
        &clock,
        input.syn_time,
        || {},
    )
}

/// A pure SYN is counted for its destination (flood detection), then asks
/// this CPU's [`Admission`]: `None` if refused (the SYN is tallied, not
/// looked up). Otherwise `Some`, with the precise time of a pure SYN (0
/// for anything else), which its record starts with.
///
/// The clock is read where it is needed: for a SYN here, for its
/// admission; for anything else only once the slot is found. Each read is a
/// call, across which only four registers survive, so reading it first
/// would make everything live around it go to the stack and back.
///
/// [`Admission`]: teardown_common::events::Admission
#[inline(always)]
fn admit(
    tcp: &TcpSegment,
    source: &[u64; 2],
    dest: &[u64; 2],
    clock: &impl FlowClock,
) -> Option<u64> {
    if tcp.flags & (SYN | ACK) != SYN {
        return Some(0);
    }
    count_syn(
        &Addr16::words_of_halves(source),
        &Addr16::words_of_halves(dest),
        tcp.dst_port,
    );
    // Admission works in windows of about 134 ms: a reading to the tick is
    // plenty (even with `--clock precise`, [`FlowClock::tick`]), and the
    // SYNs of a flood it refuses never pay for the precise one.
    if !admits_syn(clock.tick()) {
        // A SYN flood: not even looked up, which would cost a cache miss
        // or two per packet in a table this size.
        if let Some(stats) = stats() {
            stats.syn_untracked += 1;
        }
        return None;
    }
    Some(clock.precise())
}

/// Not a pure SYN-ACK.
const SYNACK_NOT: u8 = 0;
/// A pure SYN-ACK that asks admission if the probe finds no record.
const SYNACK_ASK: u8 = 1;
/// A pure SYN-ACK admission already let through.
const SYNACK_ADMITTED: u8 = 2;

/// A SYN-ACK with no record refused by admission: counted, not tracked.
#[inline(always)]
fn synack_untracked() {
    if let Some(stats) = stats() {
        stats.synack_untracked += 1;
    }
}

/// A segment that would start a mid-stream record refused by its budget:
/// counted, not tracked.
#[inline(always)]
pub(crate) fn midstream_untracked() {
    if let Some(stats) = stats() {
        stats.midstream_untracked += 1;
    }
}

/// Whether `set` may hold a record of the connection whose print is
/// `print`, by the set's prints ([`FLOW_PRINTS`], read without a lock:
/// the argument is there); true if they cannot be read.
#[inline(always)]
pub(crate) fn set_may_hold(set: u32, print: u32) -> bool {
    let (line, word) = print_place(set);
    match FLOW_PRINTS.get_ptr(line) {
        // SAFETY: an aligned u32 of map memory, written whole.
        Some(line) => prints_may_hold(
            unsafe { core::ptr::read_volatile(&(*line)[word & 15]) },
            print,
        ),
        None => true,
    }
}

/// Probes the two slots of the connection's set, comparing the packet's
/// endpoints against each slot's key in both orders
/// ([`FlowSlot::direction_of`]): no canonical key is built, and for IPv4
/// only the words that tell IPv4 keys apart are compared. The fast path
/// updates the record under its direction's lane lock, taken in one try; a
/// lane that is held, or a segment the fast path declines, goes to the
/// slow path.
///
/// True if it left the segment in [`TRACK_INPUT`] for the slow path
/// without calling it: on a capture's clock, whose caller calls it
/// ([`replay_from_input`]).
///
/// [`FlowSlot::direction_of`]: teardown_common::table::FlowSlot::direction_of
#[inline(always)]
fn look_up<const V6: bool, const TUNNELLED: bool, C: FlowClock>(
    tcp: &TcpSegment,
    ip_offset: usize,
    src: &[u64; 2],
    dst: &[u64; 2],
    clock: &C,
    syn_time: u64,
    describe: impl Fn(),
) -> bool {
    let family = if V6 { 6 } else { 4 };
    let hash = flow_hash(
        fold_address(src),
        tcp.src_port,
        fold_address(dst),
        tcp.dst_port,
    );
    let set = set_of(hash, setting!(SET_SHIFT));
    // A pure SYN-ACK with no record would start one. Under a random-source
    // SYN flood these are the host's SYN-cookie replies to the spoofed
    // SYNs that admission refused: each would claim a set, evict a record
    // and hand it to user space (about 400 ns), and even probing its set
    // costs a cache miss or two in a large table. So an admitted SYN
    // stamps its set's bucket ([`SYN_STAMPS`]); a SYN-ACK whose bucket has
    // no recent stamp cannot be answering an admitted SYN that just came
    // by, and asks the SYNs' admission ([`Admission`]) before any probe,
    // from the same budget: without pressure it is admitted (and looked up
    // as ever), under pressure beyond the budget it is counted and goes no
    // further. One with a recent stamp is looked up first and asks only if
    // it found no record.
    //
    // [`Admission`]: teardown_common::events::Admission
    let mut synack = SYNACK_NOT;
    if syn_time != 0 {
        if let Some(stamps) = SYN_STAMPS.get_ptr_mut(0) {
            // SAFETY: one byte of a shared map value, index masked into
            // range; single-byte stores cannot tear (see SYN_STAMPS).
            unsafe { (*stamps)[syn_bucket(set)] = syn_stamp(syn_time) };
        }
    } else if tcp.flags & (SYN | ACK | FIN | RST) == SYN | ACK {
        synack = SYNACK_ASK;
        if let Some(stamps) = SYN_STAMPS.get_ptr(0) {
            let now = clock.tick();
            // SAFETY: as above, a load.
            if !syn_recent(unsafe { (*stamps)[syn_bucket(set)] }, now) {
                if !admits_syn(now) {
                    synack_untracked();
                    return false;
                }
                synack = SYNACK_ADMITTED;
            }
        }
    }
    let ip_len = (tcp.offset as u32)
        .wrapping_sub(ip_offset as u32)
        .wrapping_add(tcp.header_len as u32)
        .wrapping_add(tcp.payload_len);
    let mut way = WAYS;
    let mut held = 0;
    let mut candidate = 0;
    // A segment that would start a mid-stream record if it has none (not
    // a pure SYN or SYN-ACK, which have their admission above), in a copy
    // of the fast path that asks the mid-stream budget itself: the
    // untunnelled ones (why, below). The prints and the budget are both
    // for it.
    let midstream_here = !TUNNELLED && syn_time == 0 && synack == SYNACK_NOT;
    // Under pressure, as under an ACK flood (every packet a segment of a
    // connection with no record), the set's prints first ([`FLOW_PRINTS`]):
    // if neither slot's print is the connection's, neither slot holds its
    // record, and the probe is skipped. The probe's first key load is a
    // cache miss in a table of tens of megabytes, nearly all of such a
    // packet's cost; a print is 2 bytes beside each 384-byte slot. Only
    // under pressure (otherwise nearly every packet finds its record, and
    // would pay for the extra load), and only for a segment that would
    // start a mid-stream record (a pure SYN or SYN-ACK has its own
    // admission above). A record another CPU is starting at this moment
    // may not have its print yet: the segment is then taken for one
    // without a record, as a probe just before the key was written would
    // take it (asked the mid-stream budget below, and if admitted, found
    // under the set's locks by the slow path). Not in the tunnel programs'
    // copies, for their verifier budget (as the budget's check below).
    if midstream_here && table_limited(clock) && !set_may_hold(set, print_of(hash)) {
        candidate = WAYS;
    }
    while candidate < WAYS {
        if let Some(slot) = FLOW_TABLE.get_ptr_mut(set + candidate) {
            // SAFETY: a flow-table slot; written only under its locks.
            let slot = unsafe { &mut *slot };
            let found = slot.direction_of::<V6>(src, tcp.src_port, dst, tcp.dst_port, family);
            if found != matched::NONE {
                // The segment's own direction's lane (0 for the key's
                // endpoint `a`): its lock, and all the fast path writes.
                let lane = Lane::of_sender(found == matched::FROM_A);
                if tcp.header_complete && try_lock_fast(slot, lane) {
                    // The record may have changed hands between the compare
                    // and the lock: compare again, under the lock.
                    let segment = Segment {
                        flags: tcp.flags,
                        seq: tcp.seq,
                        ack: tcp.ack,
                        window: tcp.window,
                        len: tcp.payload_len,
                        ip_len,
                        src_port: tcp.src_port,
                        dst_port: tcp.dst_port,
                    };
                    if slot.direction_of::<V6>(src, tcp.src_port, dst, tcp.dst_port, family)
                        != found
                    {
                        unlock(slot, lane);
                    } else if slot.conn.update_established(
                        found == matched::FROM_A,
                        &segment,
                        clock.coarse(),
                        timeouts().idle_ns,
                    ) {
                        unlock(slot, lane);
                        return false;
                    } else if try_lock(slot, lane ^ 1) {
                        // Declined (a FIN, a RST, a retransmission, ...),
                        // and the other lane free at the first try: the
                        // slot stays held, both lanes, and the slow path
                        // applies the segment under this same hold.
                        // Letting go here would cost the slow path two
                        // more atomics to take it again, and a second
                        // compare of the key. The other lane is only
                        // tried, never waited for: a CPU holding lane 1
                        // must not wait for lane 0 (see `try_lock`). The
                        // slow path takes the lanes into the record
                        // (`close_out_if_due`), as `lock_slot` would.
                        held = HELD;
                    } else {
                        unlock(slot, lane);
                    }
                }
                way = candidate;
                break;
            }
        }
        candidate += 1;
    }
    // A pure SYN-ACK the probe did not find (a bucket's stamp said it
    // might have a record) asks admission now, unless it already did.
    if way == WAYS && synack == SYNACK_ASK && !admits_syn(clock.tick()) {
        synack_untracked();
        return false;
    }
    // Anything else the probe did not find would start a mid-stream
    // record: under an ACK flood, every packet. It asks its own budget
    // ([`admits_midstream`]) here, on a reading to the tick, before the
    // hand-over and the precise clock's read, which the refused never
    // need. Only in the copies for untunnelled segments: in the tunnel
    // programs' copies it took them from 892,000 instructions of the
    // verifier's 1,000,000 to 975,000 (925,000 as a call), so for a
    // tunnelled segment the slow path asks, first thing
    // ([`track_segment`]).
    if midstream_here && way == WAYS && !admits_midstream(clock.tick()) {
        midstream_untracked();
        return false;
    }

    // The slow path runs on the precise clock: a record's first and last
    // packets (SYN, FIN, RST, the last ACK) nearly always come this way,
    // so its duration is exact.
    let now = if syn_time != 0 {
        syn_time
    } else {
        clock.precise()
    };
    if TUNNELLED {
        describe();
    }
    to_slow_path(
        !C::REPLAY,
        tcp,
        ip_len,
        src,
        dst,
        family,
        set,
        way | held,
        TUNNELLED,
        now,
    )
}

/// Hands a segment to the slow path ([`track_segment`]) through this
/// CPU's [`TRACK_INPUT`]: `way` is the way of its set holding its record,
/// or [`WAYS`] if none was found, with [`HELD`] if this CPU holds that
/// slot (let go of here if the segment cannot be handed over).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the segment's parts, kept in registers"
)]
fn to_slow_path(
    call_now: bool,
    tcp: &TcpSegment,
    ip_len: u32,
    src: &[u64; 2],
    dst: &[u64; 2],
    family: u8,
    set: u32,
    way: u32,
    tunnelled: bool,
    now: u64,
) -> bool {
    let Some(input) = TRACK_INPUT.get_ptr_mut(0) else {
        if way & HELD != 0 {
            unlock_slot(set + (way & !HELD));
        }
        return false;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let input = unsafe { &mut *input };
    input.now = now;
    input.seq = tcp.seq as u64;
    input.ack = tcp.ack as u64;
    input.len = tcp.payload_len as u64;
    input.ip_len = ip_len as u64;
    input.window = tcp.window as u64;
    input.src_port = tcp.src_port as u64;
    input.dst_port = tcp.dst_port as u64;
    input.flags = tcp.flags as u64;
    input.header_complete = tcp.header_complete as u64;
    // A tunnelled segment's family carries TUNNELLED: one store fewer on
    // every other path (the verifier counts each, on every path).
    input.family = family as u64 | if tunnelled { TUNNELLED } else { 0 };
    input.set = set as u64;
    input.way = way as u64;
    input.src = *src;
    input.dst = *dst;
    if call_now {
        track_segment(input);
        return false;
    }
    true
}

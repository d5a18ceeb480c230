//! teardown's kernel programs. The XDP program parses every frame's headers
//! with the shared parser, counts what it saw in a per-CPU array, and feeds
//! TCP segments to the flow table; the TC egress program feeds the host's own
//! segments to the same table. Neither ever drops: XDP returns XDP_PASS and
//! TC lets the packet continue, on every path.
#![no_std]
#![no_main]
// The BPF target offers no atomic read-modify-write through core::sync::atomic;
// the intrinsic compiles to the BPF atomic OR instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod clock;
mod flood;
mod frame;
mod lock;
mod maps;

use core::intrinsics::{AtomicOrdering, atomic_or};

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_jiffies64,
    macros::{classifier, map, xdp},
    maps::Array,
    programs::{TcContext, XdpContext},
};
use teardown_common::{
    conn::{Conn, Segment, end_reason, flip_at_creation},
    counters::{Tally, tally, tally_common},
    events::{EndedEvent, EventHeader, SLOTS_PER_CHANGE_WORD, kind},
    flow::{Direction, FlowKey},
    parse::{
        CommonTcp, IpVersion, PacketBytes, TcpSegment, parse, parse_common,
        tcp_flags::{ACK, SYN},
    },
    table::{
        FlowSlot, WAYS, flow_hash, fold_address, halves, ipv4_half, matched, set_of, words_of,
    },
};

use clock::{FlowClock, LiveClock, ReplayClock};
use flood::{
    admits_syn, count_for_responder, count_half_open, count_syn, note_eviction, responder_change,
};
use frame::Frame;
use lock::{lock_slot, try_lock, unlock, unlock_slot};
use maps::{
    CLOCK_PROBE, EGRESS_TALLIES, EVENTS, FLOW_CHANGES, FLOW_TABLE, GRACE_NS, NS_PER_TICK,
    SET_SHIFT, TALLIES, TRACK_INPUT, is_likely_server, setting, stats, timeouts,
};

/// Flags the slot for user space to (re)schedule its deadline.
#[inline(always)]
fn mark_changed(slot: u32) {
    if let Some(word) = FLOW_CHANGES.get_ptr_mut(slot / SLOTS_PER_CHANGE_WORD) {
        // SAFETY: an 8-aligned word of map memory; user space swaps it
        // atomically too.
        unsafe {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                word,
                1 << (slot % SLOTS_PER_CHANGE_WORD),
            )
        };
    }
}

/// Hands a finished record to user space. Out of line to keep its stack
/// frame apart from its callers'.
#[inline(never)]
fn emit_ended(slot: &FlowSlot, index: u32, reason: u8, now: u64) {
    if let Some(stats) = stats() {
        stats.ended_in_kernel += 1;
        if slot.conn.half_open() {
            stats.half_open_resolved += 1;
        }
    }
    if slot.conn.half_open() {
        count_for_responder(slot, responder_change::HALF_OPEN_RESOLVED);
    }
    match EVENTS.reserve::<EndedEvent>(0) {
        Some(mut entry) => {
            // SAFETY: the entry is ours until submitted; every field is written.
            let event = unsafe { &mut *entry.as_mut_ptr() };
            event.header = EventHeader {
                kind: kind::ENDED,
                reason: reason as u32,
                time_ns: now,
                key: slot.key,
                slot: index,
                generation: slot.generation,
            };
            // SAFETY: both point to whole, distinct Conn records.
            unsafe {
                core::ptr::copy_nonoverlapping(&slot.conn as *const Conn, &mut event.conn, 1)
            };
            entry.submit(0);
        }
        None => {
            if let Some(stats) = stats() {
                stats.events_lost += 1;
            }
        }
    }
}

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
    /// 4 or 6.
    pub family: u64,
    /// First slot of the connection's set, and the way holding its live
    /// record ([`WAYS`] if none does).
    pub set: u64,
    pub way: u64,
    /// Source and destination addresses as [`halves`] (IPv4 mapped).
    pub src: [u64; 2],
    pub dst: [u64; 2],
    /// Filled in by [`track_segment`]: the connection's canonical key, and 1
    /// if the segment travels from its endpoint `a`.
    pub key: FlowKey,
    pub from_a: u64,
}

const _: () = assert!(core::mem::size_of::<TrackInput>() == 14 * 8 + 32 + 40);

/// The per-packet work: find the connection's slot and, for the common
/// case, update it right here ([`Conn::update_established`]); anything else
/// goes to [`track_segment`]. Inlined into each program.
#[inline(always)]
fn track<const OPAQUE_OFFSET: bool>(
    frame: &Frame,
    tcp: &TcpSegment,
    ip_offset: usize,
    is_v6: bool,
    clock: &impl FlowClock,
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
            let (src, dst) = (halves(src), halves(dst));
            if let Some(syn_time) = admit(tcp, &src, &dst, clock) {
                look_up::<true>(tcp, ip_offset, &src, &dst, clock, syn_time);
            }
        }
    } else if let Some(pair) = frame.load::<8>(ip_offset + 12) {
        let src = [0, ipv4_half([pair[0], pair[1], pair[2], pair[3]])];
        let dst = [0, ipv4_half([pair[4], pair[5], pair[6], pair[7]])];
        if let Some(syn_time) = admit(tcp, &src, &dst, clock) {
            look_up::<false>(tcp, ip_offset, &src, &dst, clock, syn_time);
        }
    }
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
    count_syn(&words_of(source), &words_of(dest), tcp.dst_port);
    // Admission works in 100 ms windows: the coarse clock is plenty, and
    // the SYNs of a flood it refuses never pay for the precise one.
    if !admits_syn(clock.coarse()) {
        // A SYN flood: not even looked up, which would cost a cache miss
        // or two per packet in a table this size.
        if let Some(stats) = stats() {
            stats.syn_untracked += 1;
        }
        return None;
    }
    Some(clock.precise())
}

/// Probes the two slots of the connection's set, comparing the packet's
/// endpoints against each slot's key in both orders
/// ([`FlowSlot::direction_of`]): no canonical key is built, and for IPv4
/// only the words that tell IPv4 keys apart are compared. The fast path
/// updates the record under the slot's lock, taken in one try; a slot that
/// is held, or a segment the fast path declines, goes to the slow path.
#[inline(always)]
fn look_up<const V6: bool>(
    tcp: &TcpSegment,
    ip_offset: usize,
    src: &[u64; 2],
    dst: &[u64; 2],
    clock: &impl FlowClock,
    syn_time: u64,
) {
    let family = if V6 { 6 } else { 4 };
    let hash = flow_hash(
        fold_address(src),
        tcp.src_port,
        fold_address(dst),
        tcp.dst_port,
    );
    let set = set_of(hash, setting!(SET_SHIFT));
    let ip_len = (tcp.offset as u32)
        .wrapping_sub(ip_offset as u32)
        .wrapping_add(tcp.header_len as u32)
        .wrapping_add(tcp.payload_len);
    let mut way = WAYS;
    let mut candidate = 0;
    while candidate < WAYS {
        if let Some(slot) = FLOW_TABLE.get_ptr_mut(set + candidate) {
            // SAFETY: a flow-table slot; written only under its lock.
            let slot = unsafe { &mut *slot };
            let found = slot.direction_of::<V6>(src, tcp.src_port, dst, tcp.dst_port, family);
            if found != matched::NONE {
                if tcp.header_complete && try_lock(slot) {
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
                    let done =
                        slot.direction_of::<V6>(src, tcp.src_port, dst, tcp.dst_port, family)
                            == found
                            && slot.conn.update_established(
                                found == matched::FROM_A,
                                &segment,
                                clock.coarse(),
                                timeouts().idle_ns,
                            );
                    unlock(slot);
                    if done {
                        return;
                    }
                }
                way = candidate;
                break;
            }
        }
        candidate += 1;
    }

    let Some(input) = TRACK_INPUT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let input = unsafe { &mut *input };
    // The slow path runs on the precise clock: a record's first and last
    // packets (SYN, FIN, RST, the last ACK) nearly always come this way,
    // so its duration is exact.
    input.now = if syn_time != 0 {
        syn_time
    } else {
        clock.precise()
    };
    input.seq = tcp.seq as u64;
    input.ack = tcp.ack as u64;
    input.len = tcp.payload_len as u64;
    input.ip_len = ip_len as u64;
    input.window = tcp.window as u64;
    input.src_port = tcp.src_port as u64;
    input.dst_port = tcp.dst_port as u64;
    input.flags = tcp.flags as u64;
    input.header_complete = tcp.header_complete as u64;
    input.family = family as u64;
    input.set = set as u64;
    input.way = way as u64;
    input.src = *src;
    input.dst = *dst;
    track_segment(input);
}

#[inline(always)]
fn segment_of(input: &TrackInput) -> Segment {
    Segment {
        flags: input.flags as u8,
        seq: input.seq as u32,
        ack: input.ack as u32,
        window: input.window as u16,
        len: input.len as u32,
        ip_len: input.ip_len as u32,
        src_port: input.src_port as u16,
        dst_port: input.dst_port as u16,
    }
}

// Lints allowed on these functions: they are BPF global functions, whose
// pointer arguments the verifier checks (each is null-checked here), and the
// map keys are borrowed on purpose so the helpers get a pointer into the
// per-CPU slot instead of a copy on the stack.
//
// The slow path is split into global BPF functions. The verifier checks
// each global function once, on its own, so their branches add up instead of
// multiplying with the parser's and with each other's; and each gets its own
// stack frame. Global functions may be handed null pointers, hence the checks.

/// Whether slot `index` holds a live record of `key`.
#[inline(always)]
fn slot_holds(index: u32, key: &FlowKey) -> bool {
    match FLOW_TABLE.get_ptr(index) {
        // SAFETY: a flow-table slot.
        Some(slot) => unsafe { !(*slot).is_free() && (*slot).holds(key) },
        None => false,
    }
}

/// Feeds one TCP segment the fast path declined to its connection's record,
/// creating the record if need be. Holds the record's slot (for a new
/// record, both slots of its set) for the whole update.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn track_segment(input: *mut TrackInput) -> i32 {
    // SAFETY: null-checked; the caller passes this CPU's input slot.
    let Some(input) = (unsafe { input.as_mut() }) else {
        return 0;
    };
    // The canonical key, built only here: the fast path needs none.
    // SAFETY: [u64; 2] and [u32; 4] have the same size, and any bits are
    // valid: the same bytes, grouped as `words` groups them.
    let words = |halves: [u64; 2]| unsafe { core::mem::transmute::<[u64; 2], [u32; 4]>(halves) };
    let (key, direction) = FlowKey::from_words(
        words(input.src),
        input.src_port as u16,
        words(input.dst),
        input.dst_port as u16,
        input.family as u8,
    );
    input.key = key;
    input.from_a = (direction == Direction::AToB) as u64;
    let set = input.set as u32;
    if input.way < WAYS as u64 {
        let index = set + input.way as u32;
        if lock_slot(index) == 0 {
            return 0;
        }
        // Still the connection's? Another CPU may have ended it meanwhile.
        if slot_holds(index, &input.key) {
            close_out_if_due(index, input);
            apply(index, input);
            unlock_slot(index);
            return 0;
        }
        unlock_slot(index);
    }
    let claimed = claim_slot(input);
    if claimed == u32::MAX {
        return 0;
    }
    let index = claimed & !FOUND_UNDER_LOCK;
    if claimed & FOUND_UNDER_LOCK != 0 {
        // Called from here, not from claim_slot: the deepest chain of
        // calls must fit the 512 bytes all their stack frames share.
        close_out_if_due(index, input);
    }
    apply(index, input);
    unlock_slot(set);
    unlock_slot(set + 1);
    0
}

/// Set in [`claim_slot`]'s answer when the record was there after all.
const FOUND_UNDER_LOCK: u32 = 1 << 31;

/// Applies the segment to the record in slot `index`, which this CPU holds,
/// and counts what changed.
#[inline(always)]
fn apply(index: u32, input: &TrackInput) {
    let Some(slot) = FLOW_TABLE.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: a flow-table slot this CPU holds.
    let slot = unsafe { &mut *slot };
    if input.header_complete == 0 {
        // Zeek too creates the connection and then ignores such a segment.
        if let Some(stats) = stats() {
            stats.truncated_segments += 1;
        }
        return;
    }
    conn_count_gap(&mut slot.conn, input);
    let outcome = conn_update(&mut slot.conn, input);
    let (before, after) = (
        outcome & outcome::HALF_OPEN_BEFORE != 0,
        outcome & outcome::HALF_OPEN_AFTER != 0,
    );
    count_half_open(before, after);
    let change = if !before && after {
        responder_change::HALF_OPEN_STARTED
    } else if before && !after {
        responder_change::HALF_OPEN_RESOLVED
    } else {
        0
    } | if outcome & outcome::COMPLETED != 0 {
        responder_change::COMPLETED
    } else {
        0
    };
    if change != 0 {
        count_for_responder(slot, change);
    }
    if outcome & outcome::RESCHEDULED != 0 {
        mark_changed(index);
    }
}

/// Starts a new record in `slot` for the segment's connection.
#[inline(always)]
fn begin_record(slot: &mut FlowSlot, index: u32, input: &TrackInput) {
    let segment = segment_of(input);
    let flip = flip_at_creation(&segment, is_likely_server);
    slot.set_key(&input.key);
    slot.generation = slot.generation.wrapping_add(1);
    slot.conn.init(input.from_a != 0, &segment, flip, input.now);
    if let Some(stats) = stats() {
        stats.created += 1;
    }
    mark_changed(index);
}

/// If the record in slot `index` (held by this CPU) is past its deadline
/// (allowing user space the grace time to do it first), or the segment
/// starts a new connection on the same ports ([`Conn::is_reuse`]), hands
/// the record to user space and starts a new one in place.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn close_out_if_due(index: u32, input: *const TrackInput) -> i32 {
    // SAFETY: null-checked; this CPU's input slot.
    let Some(input) = (unsafe { input.as_ref() }) else {
        return 0;
    };
    let Some(slot) = FLOW_TABLE.get_ptr_mut(index) else {
        return 0;
    };
    // SAFETY: a flow-table slot.
    let slot = unsafe { &mut *slot };
    let grace: u64 = setting!(GRACE_NS);
    let reason = match slot.conn.due(input.now.saturating_sub(grace), timeouts()) {
        Some(reason) => reason,
        None if slot.conn.is_reuse(&segment_of(input)) => end_reason::REUSED,
        None => return 0,
    };
    emit_ended(slot, index, reason, input.now);
    begin_record(slot, index, input);
    1
}

/// Finds a slot for a connection the fast path did not find, and leaves
/// both slots of its set held by this CPU. First it looks again under the
/// locks: another CPU may have started the record meanwhile. Otherwise it
/// starts the record in a free slot, else one whose record is past its
/// deadline (handed to user space first), else one whose connection is
/// completely closed and only waits out its close delay (handed to user
/// space early: nothing is lost but the absorption of late packets), else
/// one holding a one-sided record or an unacknowledged handshake
/// ([`Conn::is_evictable`]; evicted, and counted). Conversations are never
/// evicted; if both slots hold one, the new connection is not tracked
/// (counted). Returns the slot (with [`FOUND_UNDER_LOCK`] if the record
/// was there after all), or `u32::MAX` with nothing held.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn claim_slot(input: *const TrackInput) -> u32 {
    // SAFETY: null-checked; this CPU's input slot.
    let Some(input) = (unsafe { input.as_ref() }) else {
        return u32::MAX;
    };
    let set = input.set as u32;
    // Way 0 before way 1, always: two CPUs claiming in one set cannot
    // each hold the slot the other waits for.
    if lock_slot(set) == 0 {
        return u32::MAX;
    }
    if lock_slot(set + 1) == 0 {
        unlock_slot(set);
        return u32::MAX;
    }
    let mut found = 0;
    while found < WAYS {
        if slot_holds(set + found, &input.key) {
            return (set + found) | FOUND_UNDER_LOCK;
        }
        found += 1;
    }
    let (Some(first), Some(second)) =
        (FLOW_TABLE.get_ptr_mut(set), FLOW_TABLE.get_ptr_mut(set + 1))
    else {
        unlock_slot(set);
        unlock_slot(set + 1);
        return u32::MAX;
    };
    // SAFETY: two distinct flow-table slots, both held by this CPU.
    let ways = unsafe { [&mut *first, &mut *second] };
    let grace: u64 = setting!(GRACE_NS);
    let late = input.now.saturating_sub(grace);

    let mut chosen = WAYS as usize;
    if ways[0].is_free() {
        chosen = 0;
    } else if ways[1].is_free() {
        chosen = 1;
    }
    if chosen == WAYS as usize {
        let mut way = 0;
        while way < WAYS as usize {
            let slot = &*ways[way & 1];
            if let Some(reason) = slot.conn.due(late, timeouts()) {
                emit_ended(slot, set + way as u32, reason, input.now);
                chosen = way;
                break;
            }
            way += 1;
        }
    }
    if chosen == WAYS as usize {
        let closed = [ways[0].conn.is_closed_out(), ways[1].conn.is_closed_out()];
        chosen = match closed {
            [true, true] => (ways[1].conn.last_pkt_ns < ways[0].conn.last_pkt_ns) as usize,
            [true, false] => 0,
            [false, true] => 1,
            [false, false] => WAYS as usize,
        };
        if chosen < WAYS as usize {
            emit_ended(
                ways[chosen & 1],
                set + chosen as u32,
                end_reason::CLOSED,
                input.now,
            );
        }
    }
    if chosen == WAYS as usize {
        let evictable = [ways[0].conn.is_evictable(), ways[1].conn.is_evictable()];
        chosen = match evictable {
            [true, true] => (ways[1].conn.last_pkt_ns < ways[0].conn.last_pkt_ns) as usize,
            [true, false] => 0,
            [false, true] => 1,
            [false, false] => {
                if let Some(stats) = stats() {
                    stats.insert_failed += 1;
                }
                unlock_slot(set);
                unlock_slot(set + 1);
                return u32::MAX;
            }
        };
        if let Some(stats) = stats() {
            stats.evicted += 1;
            if ways[chosen & 1].conn.half_open() {
                stats.half_open_resolved += 1;
            }
        }
        if ways[chosen & 1].conn.half_open() {
            count_for_responder(ways[chosen & 1], responder_change::HALF_OPEN_RESOLVED);
        }
        note_eviction(input.now);
    }
    let index = set + chosen as u32;
    begin_record(ways[chosen & 1], index, input);
    index
}

/// What [`conn_update`] reports.
mod outcome {
    /// The record's deadline moved earlier.
    pub const RESCHEDULED: u32 = 1;
    /// Half-open before the segment.
    pub const HALF_OPEN_BEFORE: u32 = 2;
    /// Half-open after it.
    pub const HALF_OPEN_AFTER: u32 = 4;
    /// The segment completed the handshake ([`Conn::handshake_completed`]).
    pub const COMPLETED: u32 = 8;
}

/// Applies the segment to the record ([`Conn::update`]). Returns
/// [`outcome`] bits.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn conn_update(conn: *mut Conn, input: *const TrackInput) -> u32 {
    // SAFETY: null-checked; a flow-table record and this CPU's input slot.
    let (Some(conn), Some(input)) = (unsafe { conn.as_mut() }, unsafe { input.as_ref() }) else {
        return 0;
    };
    let segment = segment_of(input);
    let before = conn.half_open();
    let completed_before = conn.handshake_completed();
    let update = conn.update_segment(input.from_a != 0, &segment, input.now, timeouts());
    let completed_now = !completed_before && conn.handshake_completed();
    let mut bits = 0;
    if update.rescheduled {
        bits |= outcome::RESCHEDULED;
    }
    if before {
        bits |= outcome::HALF_OPEN_BEFORE;
    }
    if conn.half_open() {
        bits |= outcome::HALF_OPEN_AFTER;
    }
    if completed_now {
        bits |= outcome::COMPLETED;
    }
    bits
}

/// [`Conn::count_gap`], the part of [`Conn::update`] that [`conn_update`]
/// leaves out.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn conn_count_gap(conn: *mut Conn, input: *const TrackInput) -> i32 {
    // SAFETY: null-checked; a flow-table record and this CPU's input slot.
    let (Some(conn), Some(input)) = (unsafe { conn.as_mut() }, unsafe { input.as_ref() }) else {
        return 0;
    };
    conn.count_gap(input.from_a != 0, &segment_of(input));
    0
}

/// What the programs read of a frame: its tally, and its TCP segment with
/// the IP header's offset and version. The common frame's shortcut first
/// ([`parse_common`]), the general parser for the rest.
#[inline(always)]
fn read_frame(frame: &Frame) -> (Tally, Option<(usize, bool, TcpSegment)>) {
    match parse_common(frame) {
        Some(common) => (
            tally_common(&common),
            Some((
                CommonTcp::IP_OFFSET,
                common.version == IpVersion::V6,
                common.segment,
            )),
        ),
        None => {
            let parsed = parse(frame);
            let segment = parsed
                .tcp()
                .map(|(ip, tcp)| (ip.offset as usize, ip.version == IpVersion::V6, *tcp));
            (tally(&parsed), segment)
        }
    }
}

#[inline(always)]
fn count_and_track(ctx: &XdpContext, clock: &impl FlowClock) {
    let frame = &Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (counted, segment) = read_frame(frame);
    // The flow table first, the tallies after: the tally is two small
    // numbers to keep across the table's lookups, where the segment's fields
    // would all have to be saved across the tallies' lookup (the BPF calling
    // convention leaves four registers that survive a call).
    if let Some((ip_offset, is_v6, tcp)) = segment {
        track::<false>(frame, &tcp, ip_offset, is_v6, clock);
    }
    if let Some(tallies) = TALLIES.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, and only here.
        unsafe { (*tallies).record(&counted) };
    }
}

#[xdp]
pub fn teardown(ctx: XdpContext) -> u32 {
    count_and_track(&ctx, &LiveClock);
    xdp_action::XDP_PASS
}

/// The same work on capture time: `teardown replay --connections` sets the
/// clock before each packet, so every timeout runs on the capture's clock.
#[xdp]
pub fn teardown_replay(ctx: XdpContext) -> u32 {
    count_and_track(&ctx, &ReplayClock);
    xdp_action::XDP_PASS
}

/// Bytes of headers the egress program wants in the linear part of the skb.
const EGRESS_HEADER_BYTES: u32 = 128;

/// The host's own segments (SYN-ACKs, FINs, RSTs it sends), into the same
/// flow table, and counted in tallies of their own ([`EGRESS_TALLIES`]).
#[classifier]
pub fn teardown_egress(ctx: TcContext) -> i32 {
    let linear = ctx.data_end() - ctx.data();
    if (linear as u32) < EGRESS_HEADER_BYTES && ctx.len() > linear as u32 {
        // Headers may sit in paged data; failing to pull only means a shorter view.
        let _ = ctx.pull_data(ctx.len().min(EGRESS_HEADER_BYTES));
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (counted, segment) = read_frame(&frame);
    if let Some((ip_offset, is_v6, tcp)) = segment {
        track::<true>(&frame, &tcp, ip_offset, is_v6, &LiveClock);
    }
    if let Some(tallies) = EGRESS_TALLIES.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, and only here.
        unsafe { (*tallies).record(&counted) };
    }
    // Let the packet go on to whatever else is attached.
    TC_ACT_UNSPEC
}

/// Reads the clocks into [`CLOCK_PROBE`]: the precise clock, and the
/// coarse one before its offset. User space test-runs it to measure
/// [`CLOCK_OFFSET`] and to relate the flow table's clock to its own.
#[xdp]
pub fn teardown_clock(_ctx: XdpContext) -> u32 {
    let precise = LiveClock.precise();
    let tick: u64 = setting!(NS_PER_TICK);
    // SAFETY: a helper without arguments.
    let coarse = unsafe { bpf_jiffies64() }.wrapping_mul(tick);
    if let Some(reading) = CLOCK_PROBE.get_ptr_mut(0) {
        // SAFETY: the probe's first slot.
        unsafe { *reading = precise };
    }
    if let Some(reading) = CLOCK_PROBE.get_ptr_mut(1) {
        // SAFETY: the probe's second slot.
        unsafe { *reading = coarse };
    }
    xdp_action::XDP_PASS
}

/// Settings of the benchmark wrappers: [mode, runs so far, sequence step,
/// first sequence number]. Mode 0 leaves the frame alone; 1 gives it a new
/// IPv4 source address each run (a random-source SYN flood); 2 advances its
/// TCP sequence number by the step each run (in-order data).
#[map]
static BENCH: Array<u64> = Array::with_max_entries(4, 0);

/// Offsets in an untagged IPv4 TCP frame, the only kind the wrappers change.
const BENCH_IPV4_SOURCE: usize = 14 + 12;
const BENCH_TCP_SEQ: usize = 14 + 20 + 4;

#[inline(always)]
fn bench_mutate(ctx: &XdpContext) {
    let (Some(mode), Some(runs)) = (BENCH.get(0).copied(), BENCH.get_ptr_mut(1)) else {
        return;
    };
    // SAFETY: the map's own slot; test runs of one program do not overlap.
    let run = unsafe {
        *runs += 1;
        *runs
    };
    let start = ctx.data();
    if start + BENCH_TCP_SEQ + 4 > ctx.data_end() {
        return;
    }
    match mode {
        1 => {
            let source = teardown_common::sketch::mix32(run as u32).to_be_bytes();
            // SAFETY: inside the frame, checked above.
            unsafe { ((start + BENCH_IPV4_SOURCE) as *mut [u8; 4]).write_unaligned(source) };
        }
        2 => {
            let step = BENCH.get(2).copied().unwrap_or(0);
            let first = BENCH.get(3).copied().unwrap_or(0);
            let seq = (first.wrapping_add(run.wrapping_mul(step)) as u32).to_be_bytes();
            // SAFETY: inside the frame, checked above.
            unsafe { ((start + BENCH_TCP_SEQ) as *mut [u8; 4]).write_unaligned(seq) };
        }
        _ => {}
    }
}

/// The counting program after [`bench_mutate`], for `teardown bench`.
#[xdp]
pub fn teardown_bench(ctx: XdpContext) -> u32 {
    bench_mutate(&ctx);
    count_and_track(&ctx, &LiveClock);
    xdp_action::XDP_PASS
}

/// [`bench_mutate`] alone: its cost, which `teardown bench` subtracts.
#[xdp]
pub fn teardown_bench_mutate(ctx: XdpContext) -> u32 {
    bench_mutate(&ctx);
    xdp_action::XDP_PASS
}

/// A slot's lock taken and let go, uncontended, as the fast path does for
/// every packet it updates: what the safety on two CPUs costs it (the
/// fast path also compares the key again under the lock, not counted here).
#[xdp]
pub fn teardown_bench_lock(_ctx: XdpContext) -> u32 {
    if let Some(slot) = FLOW_TABLE.get_ptr(0) {
        // SAFETY: a flow-table slot, written only under its lock.
        let slot = unsafe { &*slot };
        if try_lock(slot) {
            unlock(slot);
        }
    }
    xdp_action::XDP_PASS
}

/// Does nothing but pass: the baseline `teardown bench` compares against.
#[xdp]
pub fn teardown_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

//! The slow path: every segment the fast path declines (a SYN, FIN or RST,
//! a connection's first segment, a held slot, anything out of the
//! ordinary), applied to its connection's record under both of the slot's
//! lane locks, creating, closing out or evicting records as need be.
//!
//! It is split into global BPF functions (`extern "C"`, `no_mangle`,
//! `inline(never)`). The verifier checks each global function once, on its
//! own, so their branches add up instead of multiplying with the parser's
//! and with each other's; and each gets its own stack frame. A global
//! function's pointer arguments are checked by the verifier against their
//! types but may be null, hence each is null-checked here; that is why
//! they allow `clippy::not_unsafe_ptr_arg_deref`. They take their segment
//! from [`TrackInput`], this CPU's slot in
//! [`TRACK_INPUT`](crate::maps::TRACK_INPUT), so they never see packet
//! memory.

use core::intrinsics::{AtomicOrdering, atomic_or, atomic_xadd};

use aya_ebpf::bindings::BPF_NOEXIST;

use teardown_common::{
    addr::Addr16,
    conn::{Conn, Segment, end_reason, flip_at_creation},
    events::{CHANGED_WORDS_CAPACITY, EndedEvent, EventHeader, SLOTS_PER_CHANGE_WORD, kind},
    flow::{Direction, FlowKey},
    parse::tcp_flags::{ACK, FIN, RST, SYN},
    table::{FlowSlot, WAYS, flow_hash, fold_address, print_of, print_place, with_print},
    tunnel::{TUNNEL_CAPACITY, TunnelRef},
};

use crate::{
    fast_path::{HELD, TUNNELLED, TrackInput, midstream_untracked},
    flood::{
        admits_midstream, count_for_responder, count_half_open, note_eviction, responder_change,
    },
    lock::{lock_slot, unlock_slot},
    maps::{
        CHANGED_WORDS, DECAP_STATE, EVENTS, FLOW_CHANGES, FLOW_PRINTS, FLOW_TABLE, GRACE_NS,
        NOTE_CHANGED_WORDS, TUNNEL_IDS, TUNNEL_NEXT, TUNNELS, is_likely_server, setting, stats,
        timeouts,
    },
};

/// Feeds one TCP segment the fast path declined to its connection's record,
/// creating the record if need be. Holds the record's slot (for a new
/// record, both slots of its set) for the whole update.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_segment(input: *mut TrackInput) -> i32 {
    // SAFETY: null-checked; the caller passes this CPU's input slot.
    let Some(input) = (unsafe { input.as_mut() }) else {
        return 0;
    };
    let set = input.set as u32;
    // Handed over held, the slot holds the connection's record: the fast
    // path compared its key under this very hold. Nothing here needs the
    // key then, only which way the segment goes.
    let held = input.way & HELD as u64 != 0;
    let way = input.way & !(HELD as u64);
    // A tunnelled segment of a connection the fast path found no record
    // of, other than a pure SYN or SYN-ACK (which asked admission in the
    // fast path), would start a mid-stream record: under an ACK flood one
    // per packet, each pushing another out. It asks its budget here, first
    // thing, before the canonical key and the set's two locks. An
    // untunnelled one asked in the fast path (see `look_up`, and why not
    // the tunnelled ones there). The record may have appeared since the
    // probe (another CPU started it): then a refusal costs it one segment,
    // only while the budget is spent.
    if way == WAYS as u64
        && input.family & TUNNELLED != 0
        && !is_admitted_start(input.flags as u8)
        && !admits_midstream(input.now)
    {
        midstream_untracked();
        return 0;
    }
    if held {
        input.from_a = sent_from_a(set + way as u32, input) as u64;
    } else {
        key_of_segment(input);
    }
    if way < WAYS as u64 {
        let index = set + way as u32;
        if !held && lock_slot(index) == 0 {
            return 0;
        }
        // Still the connection's? Another CPU may have ended it meanwhile.
        if held || slot_holds(index, &input.key) {
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

/// Fills in the segment's canonical key and direction, built only here:
/// the fast path needs none. Out of line, so the key's temporaries are not
/// in [`track_segment`]'s frame while it calls [`claim_slot`]: inline
/// (behind the held test) they grew that frame from 104 bytes to 120,
/// which took the tunnel programs' deepest chain of calls past the 512
/// bytes of stack they share; out of line it is 56.
#[inline(never)]
fn key_of_segment(input: &mut TrackInput) {
    let (key, direction) = FlowKey::from_words(
        Addr16::words_of_halves(&input.src),
        input.src_port as u16,
        Addr16::words_of_halves(&input.dst),
        input.dst_port as u16,
        (input.family & 0xff) as u8,
    );
    input.key = key;
    input.from_a = (direction == Direction::AToB) as u64;
}

/// Whether the segment travels from endpoint `a` of the key in slot
/// `index`, which holds its connection (the fast path compared it, in
/// one order or the other): the source is `a` if its address and port
/// are. For a connection from an endpoint to itself both orders match,
/// and the canonical key says `a` too.
#[inline(always)]
fn sent_from_a(index: u32, input: &TrackInput) -> bool {
    let Some(slot) = FLOW_TABLE.get_ptr(index) else {
        return true;
    };
    // SAFETY: a flow-table slot this CPU holds.
    let key = unsafe { &(*slot).key };
    key.port_a == input.src_port as u16 && key.addr_a.halves() == input.src
}

/// Set in [`claim_slot`]'s answer when the record was there after all.
const FOUND_UNDER_LOCK: u32 = 1 << 31;

/// Whether slot `index` holds a live record of `key`.
#[inline(always)]
fn slot_holds(index: u32, key: &FlowKey) -> bool {
    match FLOW_TABLE.get_ptr(index) {
        // SAFETY: a flow-table slot.
        Some(slot) => unsafe { !(*slot).is_free() && (*slot).holds(key) },
        None => false,
    }
}

/// If the record in slot `index` (held by this CPU) is past its deadline
/// (allowing user space the grace time to do it first), or the segment
/// starts a new connection on the same ports ([`Conn::is_reuse`]), hands
/// the record to user space and starts a new one in place.
#[unsafe(no_mangle)]
#[inline(never)]
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
    // Held since `lock_slot`, which took the lanes into the record, or
    // handed over held by the fast path, which did not: here, out of the
    // fast path's copies (and so verified once, not once per program).
    slot.conn.fold_lanes();
    let grace: u64 = setting!(GRACE_NS);
    let reason = match slot.conn.due(input.now.saturating_sub(grace), timeouts()) {
        Some(reason) => reason,
        None if slot.conn.is_reuse(&segment_of(input)) => end_reason::REUSED,
        None => return 0,
    };
    emit_ended(slot, index, reason, input.now);
    // The slot holds the connection's key: the new record keeps it.
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
    // The print before the key (see FLOW_PRINTS).
    note_print(input, chosen as u32);
    ways[chosen & 1].set_key(&input.key);
    begin_record(ways[chosen & 1], index, input);
    index
}

/// Gives way `way` of the segment's set the print of its connection
/// ([`FLOW_PRINTS`]), for the fast path under pressure. Called holding
/// both of the set's locks, which makes this CPU the word's one writer,
/// before the slot takes the key.
#[inline(always)]
fn note_print(input: &TrackInput, way: u32) {
    let (line, word) = print_place(input.set as u32);
    let Some(line) = FLOW_PRINTS.get_ptr_mut(line) else {
        return;
    };
    // The packet's hash, as the fast path took it: symmetric, so the
    // same from either endpoint.
    let print = print_of(flow_hash(
        fold_address(&input.src),
        input.src_port as u16,
        fold_address(&input.dst),
        input.dst_port as u16,
    ));
    // SAFETY: an aligned u32 of map memory only this CPU writes now; one
    // whole store, never torn, for the lock-free readers.
    unsafe {
        let word = &mut (*line)[word & 15];
        core::ptr::write_volatile(word, with_print(core::ptr::read_volatile(word), way, print));
    }
}

/// Whether a segment that starts a record asked admission in the fast
/// path: a pure SYN, or a pure SYN-ACK.
#[inline(always)]
fn is_admitted_start(flags: u8) -> bool {
    flags & (SYN | ACK) == SYN || flags & (SYN | ACK | FIN | RST) == SYN | ACK
}

/// Starts a new record in `slot` for the segment's connection, whose key
/// the slot holds (set by the caller if it did not already).
#[inline(always)]
fn begin_record(slot: &mut FlowSlot, index: u32, input: &TrackInput) {
    let segment = segment_of(input);
    // A segment whose TCP header was cut short is not looked at (see
    // `apply`), not even for who is the client: Zeek too keeps such a
    // connection as the packet's sender to its receiver.
    let flip = input.header_complete != 0 && flip_at_creation(&segment, is_likely_server);
    slot.generation = slot.generation.wrapping_add(1);
    slot.conn.init(input.from_a != 0, &segment, flip, input.now);
    if input.family & TUNNELLED != 0 {
        slot.conn.tunnel = record_tunnel().to_bytes();
    }
    if let Some(stats) = stats() {
        stats.created += 1;
    }
    mark_changed(index);
}

/// The reference to this CPU's tunnel ([`DECAP_STATE`]) for a new
/// record: its index in [`TUNNELS`], taken the first time a connection
/// comes through it. Out of line: only tunnelled connections pay for it.
#[inline(never)]
fn record_tunnel() -> TunnelRef {
    let Some(state) = DECAP_STATE.get_ptr(0) else {
        return TunnelRef::NONE;
    };
    // SAFETY: this CPU's slot, written by the parser for this frame.
    let tunnel = unsafe { &(*state).tunnel };
    // SAFETY: a lookup; the value is a plain u32.
    if let Some(&index) = unsafe { TUNNEL_IDS.get(tunnel) } {
        return TunnelRef(index);
    }
    let unrecorded = || {
        if let Some(stats) = stats() {
            stats.tunnels_unrecorded += 1;
        }
        TunnelRef(TunnelRef::UNRECORDED | tunnel.innermost() as u32)
    };
    let Some(next) = TUNNEL_NEXT.get_ptr_mut(0) else {
        return unrecorded();
    };
    // SAFETY: an atomic add on a shared map value: each index is handed out once.
    // SeqCst, not Relaxed: for a relaxed add this compiler emits the BPF
    // add that returns nothing (no BPF_FETCH) and then uses the register
    // it added as if it were the old value, so every CPU got index 2 (seen
    // in the object's bytes: `db 70 ..` with an immediate of 0, not 1).
    let index = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(next, 1) } + 1;
    if index >= TUNNEL_CAPACITY as u64 {
        return unrecorded();
    }
    let index = index as u32;
    let Some(entry) = TUNNELS.get_ptr_mut(index) else {
        return unrecorded();
    };
    // SAFETY: the entry of an index this CPU was just handed: no one else
    // writes it, and no one reads it before the index is published below.
    teardown_common::tunnel::copy(unsafe { &mut *entry }, tunnel);
    if TUNNEL_IDS.insert(tunnel, index, BPF_NOEXIST as u64).is_ok() {
        return TunnelRef(index);
    }
    // Another CPU recorded the same tunnel meanwhile (or the map is full):
    // its index, if there is one; this one's entry stays unused.
    // SAFETY: a lookup, as above.
    match unsafe { TUNNEL_IDS.get(tunnel) } {
        Some(&winner) => TunnelRef(winner),
        None => TunnelRef(index),
    }
}

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

/// What [`conn_update`] reports.
mod outcome {
    /// The record's deadline moved earlier.
    pub const RESCHEDULED: u32 = 1;
    /// Half-open before the segment.
    pub const HALF_OPEN_BEFORE: u32 = 2;
    /// Half-open after it.
    pub const HALF_OPEN_AFTER: u32 = 4;
    /// The segment completed the handshake ([`Conn::handshake_completed`]).
    ///
    /// [`Conn::handshake_completed`]: super::Conn::handshake_completed
    pub const COMPLETED: u32 = 8;
}

/// Applies the segment to the record ([`Conn::update`]: [`Conn::count_gap`],
/// then [`Conn::update_segment`]'s phases). Returns [`outcome`] bits.
///
/// The phases are three global functions, called in the same order (the
/// two small ones at each end share a function with their neighbour: a
/// call fewer each, per slow-path segment): the verifier checks each once,
/// where in one function their branches multiplied (about 614,000 instructions processed
/// for this function alone in every program, of the 1,000,000 a program may
/// take; the late flip's history shift alone doubled every path after it).
/// No reference to the record is held across the calls: each phase writes
/// it through its own pointer. Inlined into [`track_segment`], so the
/// phases' frames sit right under its own: a tunnelled segment's chain of
/// calls is one deeper, and all their frames must fit in 512 bytes.
#[inline(always)]
fn conn_update(conn: *mut Conn, input: *const TrackInput) -> u32 {
    // SAFETY: null-checked; a flow-table record and this CPU's input slot.
    let (Some(record), Some(_)) = (unsafe { conn.as_ref() }, unsafe { input.as_ref() }) else {
        return 0;
    };
    let before = record.half_open();
    let completed_before = record.handshake_completed();
    let schedule_before = (record.delete_at_ns, record.expire_chain_ns);
    conn_count_gap_settle_roles(conn, input);
    conn_record_segment(conn, input);
    conn_advance_state_finish(conn, input);
    // SAFETY: as above; the phases are done with it.
    let Some(record) = (unsafe { conn.as_ref() }) else {
        return 0;
    };
    let mut bits = 0;
    if (record.delete_at_ns, record.expire_chain_ns) != schedule_before {
        bits |= outcome::RESCHEDULED;
    }
    if before {
        bits |= outcome::HALF_OPEN_BEFORE;
    }
    if record.half_open() {
        bits |= outcome::HALF_OPEN_AFTER;
    }
    if !completed_before && record.handshake_completed() {
        bits |= outcome::COMPLETED;
    }
    bits
}

/// Phase 1 of [`conn_update`]: [`Conn::count_gap`] (the part of
/// [`Conn::update`] before [`Conn::update_segment`]), then
/// [`Conn::settle_roles`]. Two small steps in one function: a call fewer
/// per slow-path segment.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn conn_count_gap_settle_roles(conn: *mut Conn, input: *const TrackInput) -> i32 {
    // SAFETY: null-checked; a flow-table record and this CPU's input slot.
    let (Some(conn), Some(input)) = (unsafe { conn.as_mut() }, unsafe { input.as_ref() }) else {
        return 0;
    };
    let segment = segment_of(input);
    conn.count_gap(input.from_a != 0, &segment);
    conn.settle_roles(&segment);
    0
}

/// Phase 2 of [`conn_update`]: [`Conn::record_segment`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn conn_record_segment(conn: *mut Conn, input: *const TrackInput) -> i32 {
    // SAFETY: null-checked; a flow-table record and this CPU's input slot.
    let (Some(conn), Some(input)) = (unsafe { conn.as_mut() }, unsafe { input.as_ref() }) else {
        return 0;
    };
    conn.record_segment(input.from_a != 0, &segment_of(input), input.now);
    0
}

/// Phases 3 and 4 of [`conn_update`]: [`Conn::advance_state`], then
/// [`Conn::finish_segment`] (the sender's counts, and its side closed if
/// the first said so). One function: a call fewer per slow-path segment.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn conn_advance_state_finish(conn: *mut Conn, input: *const TrackInput) -> i32 {
    // SAFETY: null-checked; a flow-table record and this CPU's input slot.
    let (Some(conn), Some(input)) = (unsafe { conn.as_mut() }, unsafe { input.as_ref() }) else {
        return 0;
    };
    let from_a = input.from_a != 0;
    let segment = segment_of(input);
    let do_close = conn.advance_state(from_a, &segment, input.now, timeouts());
    conn.finish_segment(from_a, &segment, do_close, timeouts());
    0
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

/// Flags the slot for user space to (re)schedule its deadline.
#[inline(always)]
fn mark_changed(slot: u32) {
    let word_index = slot / SLOTS_PER_CHANGE_WORD;
    if let Some(word) = FLOW_CHANGES.get_ptr_mut(word_index) {
        // SAFETY: an 8-aligned word of map memory; user space swaps it
        // atomically too.
        unsafe {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                word,
                1 << (slot % SLOTS_PER_CHANGE_WORD),
            )
        };
    }
    if setting!(NOTE_CHANGED_WORDS) != 0 {
        note_changed_word(word_index);
    }
}

/// Lists a marked word in [`CHANGED_WORDS`] (a replay only: see
/// [`NOTE_CHANGED_WORDS`] for why plain stores are safe there).
#[inline(always)]
fn note_changed_word(word_index: u32) {
    if let Some(noted) = CHANGED_WORDS.get_ptr_mut(0) {
        // SAFETY: the map's one value; one writer, no reader meanwhile.
        let noted = unsafe { &mut *noted };
        let count = noted.count;
        if count < CHANGED_WORDS_CAPACITY as u64 {
            noted.words[count as usize] = word_index as u64;
        }
        noted.count = count.wrapping_add(1);
    }
}

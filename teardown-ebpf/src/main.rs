//! teardown's kernel programs. The XDP program parses every frame's headers
//! with the shared parser, counts what it saw in a per-CPU array, and feeds
//! TCP segments to the flow table; the TC egress program feeds the host's own
//! segments to the same table. Neither ever drops: XDP returns XDP_PASS and
//! TC lets the packet continue, on every path.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use teardown_common::{
    conn::{Conn, PORT_SET_WORDS, Segment, Timeouts, end_reason, flip_at_creation},
    counters::{Tallies, tally},
    events::{DEFAULT_MAX_FLOWS, EVENTS_BYTES, EndedEvent, EventHeader, FlowStats, kind},
    flow::{Direction, FlowKey, words},
    parse::{IpVersion, MAX_L4_OFFSET, PacketBytes, TcpSegment, parse},
};

/// One slot of tallies per CPU: no atomics and no contention.
#[map]
static TALLIES: PerCpuArray<Tallies> = PerCpuArray::with_max_entries(1, 0);

/// The flow table. LRU, so a full table evicts the least recently used
/// connection instead of refusing new ones; user space notices evictions when
/// a flow it was told about is gone.
#[map]
static FLOWS: LruHashMap<FlowKey, Conn> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// New flows, moved deadlines and records the kernel closed out.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
static FLOW_STATS: PerCpuArray<FlowStats> = PerCpuArray::with_max_entries(1, 0);

/// A per-CPU place to build a new record: a [`Conn`] is too big for the stack.
#[map]
static SCRATCH: PerCpuArray<Conn> = PerCpuArray::with_max_entries(1, 0);

/// Zeek's likely server ports as a 65536-bit set, filled in by user space.
#[map]
static LIKELY_PORTS: Array<u64> = Array::with_max_entries(PORT_SET_WORDS as u32, 0);

/// The current packet's capture time, for the replay program only.
#[map]
static REPLAY_CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// Timer settings; user space overrides them at load time. Mutable (in
/// `.data`) only so the compiler reads it from the map instead of folding in
/// the defaults; nothing writes it after load.
#[unsafe(no_mangle)]
static mut TIMEOUTS: Timeouts = Timeouts::ZEEK;

/// How long past a deadline a record may stay for user space to close it out
/// before the next packet makes the kernel do it.
#[unsafe(no_mangle)]
static GRACE_NS: u64 = 0;

/// The frame as the verifier sees it: `[start, end)` of packet memory.
struct Frame {
    start: usize,
    end: usize,
}

impl PacketBytes for Frame {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // A bounded offset keeps the pointer arithmetic within the range the
        // verifier tracks for packet pointers.
        if offset > MAX_L4_OFFSET + 64 {
            return None;
        }
        let at = self.start + offset;
        if at + N > self.end {
            return None;
        }
        // SAFETY: [at, at + N) lies inside the packet, checked just above.
        Some(unsafe { (at as *const [u8; N]).read_unaligned() })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.end - self.start
    }
}

#[inline(always)]
fn stats() -> Option<&'static mut FlowStats> {
    // SAFETY: the per-CPU slot is only touched by this CPU, one program at a time.
    FLOW_STATS
        .get_ptr_mut(0)
        .map(|stats| unsafe { &mut *stats })
}

#[inline(always)]
fn is_likely_server(port: u16) -> bool {
    match LIKELY_PORTS.get(port as u32 / 64) {
        Some(word) => word & (1 << (port % 64)) != 0,
        None => false,
    }
}

/// Tells user space about a flow; a full ring buffer is counted, not fatal.
/// Out of line, as the other event builders, to keep their stack frames apart.
#[inline(never)]
fn notify(kind: u32, key: &FlowKey, now: u64) {
    let header = EventHeader {
        kind,
        reason: 0,
        time_ns: now,
        key: *key,
    };
    if EVENTS.output::<EventHeader>(&header, 0).is_err()
        && let Some(stats) = stats()
    {
        stats.events_lost += 1;
    }
}

/// Hands a finished record to user space.
#[inline(never)]
fn emit_ended(key: &FlowKey, conn: &Conn, reason: u8, now: u64) {
    if let Some(stats) = stats() {
        stats.ended_in_kernel += 1;
        if conn.half_open() {
            stats.half_open_resolved += 1;
        }
    }
    match EVENTS.reserve::<EndedEvent>(0) {
        Some(mut entry) => {
            // SAFETY: the entry is ours until submitted; every field is written.
            let event = unsafe { &mut *entry.as_mut_ptr() };
            event.header = EventHeader {
                kind: kind::ENDED,
                reason: reason as u32,
                time_ns: now,
                key: *key,
            };
            // SAFETY: both point to whole, distinct Conn records.
            unsafe { core::ptr::copy_nonoverlapping(conn as *const Conn, &mut event.conn, 1) };
            entry.submit(0);
        }
        None => {
            if let Some(stats) = stats() {
                stats.events_lost += 1;
            }
        }
    }
}

/// Counts a handshake going half-open or being resolved.
#[inline(always)]
fn count_half_open(before: bool, after: bool) {
    if before != after
        && let Some(stats) = stats()
    {
        if after {
            stats.half_open_started += 1;
        } else {
            stats.half_open_resolved += 1;
        }
    }
}

/// One TCP segment, ready for the flow table: everything [`track_segment`]
/// needs, copied out of the packet into a per-CPU slot, so the tracking
/// functions never see packet memory and keep their stacks small.
///
/// Every scalar is a whole u64. With misaligned access enabled, LLVM merges
/// neighbouring narrow loads into wider ones at odd offsets; the verifier
/// allows that for packet memory but not for other memory.
#[repr(C)]
pub struct TrackInput {
    /// Source and destination addresses (IPv4-mapped for IPv4), the bytes in
    /// memory order grouped in words.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// 4 or 6.
    pub family: u64,
    pub now: u64,
    pub seq: u64,
    pub ack: u64,
    pub len: u64,
    pub window: u64,
    pub src_port: u64,
    pub dst_port: u64,
    pub flags: u64,
    /// 0 if the TCP header (options included) was cut short.
    pub header_complete: u64,
    /// Filled in by [`track_segment`]: the connection's key, and 1 if the
    /// segment travels from its endpoint `a`.
    pub key: FlowKey,
    pub from_a: u64,
}

const _: () = assert!(core::mem::size_of::<TrackInput>() == 32 + 10 * 8 + 40 + 8);

/// A per-CPU place for the segment handed to [`track_segment`].
#[map]
static TRACK_INPUT: PerCpuArray<TrackInput> = PerCpuArray::with_max_entries(1, 0);

/// Copies what the flow table needs out of the packet and hands it to
/// [`track_segment`]. Inlined: taking a reference into the parser's result
/// would force that result onto the stack, enum padding and all, and the
/// verifier rejects the uninitialised padding bytes LLVM then stores.
#[inline(always)]
fn track(frame: &Frame, tcp: &TcpSegment, ip_offset: usize, is_v6: bool, now: u64) {
    let Some(input) = TRACK_INPUT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let input = unsafe { &mut *input };
    input.now = now;
    input.seq = tcp.seq as u64;
    input.ack = tcp.ack as u64;
    input.len = tcp.payload_len as u64;
    input.window = tcp.window as u64;
    input.src_port = tcp.src_port as u64;
    input.dst_port = tcp.dst_port as u64;
    input.flags = tcp.flags as u64;
    input.header_complete = tcp.header_complete as u64;
    // Straight from the packet into the slot, in 4-byte words: byte-array
    // stores of the IPv4-mapped prefix would become memset calls.
    if is_v6 {
        match (
            frame.load::<16>(ip_offset + 8),
            frame.load::<16>(ip_offset + 24),
        ) {
            (Some(src), Some(dst)) => {
                input.src = words(src);
                input.dst = words(dst);
            }
            _ => return,
        }
    } else {
        match frame.load::<8>(ip_offset + 12) {
            Some(pair) => {
                let prefix = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
                input.src = [
                    0,
                    0,
                    prefix,
                    u32::from_ne_bytes([pair[0], pair[1], pair[2], pair[3]]),
                ];
                input.dst = [
                    0,
                    0,
                    prefix,
                    u32::from_ne_bytes([pair[4], pair[5], pair[6], pair[7]]),
                ];
            }
            None => return,
        }
    }
    input.family = if is_v6 { 6 } else { 4 };
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
        src_port: input.src_port as u16,
        dst_port: input.dst_port as u16,
    }
}

#[inline(always)]
fn timeouts() -> &'static Timeouts {
    // SAFETY: TIMEOUTS is never written after load; a reference to it rather
    // than a copy keeps 48 bytes off the BPF stack.
    unsafe { &*core::ptr::addr_of!(TIMEOUTS) }
}

// Lints allowed on these functions: they are BPF global functions, whose
// pointer arguments the verifier checks (each is null-checked here), and the
// map keys are borrowed on purpose so the helpers get a pointer into the
// per-CPU slot instead of a copy on the stack.
//
// The tracking work is split into global BPF functions. The verifier checks
// each global function once, on its own, so their branches add up instead of
// multiplying with the parser's and with each other's; and each gets its own
// stack frame. Global functions may be handed null pointers, hence the checks.

/// Feeds one TCP segment to its connection's record.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(
    clippy::not_unsafe_ptr_arg_deref,
    clippy::needless_borrows_for_generic_args
)]
pub extern "C" fn track_segment(input: *mut TrackInput) -> i32 {
    // SAFETY: null-checked; the caller passes this CPU's input slot.
    let Some(input) = (unsafe { input.as_mut() }) else {
        return 0;
    };
    let (key, direction) = FlowKey::from_words(
        input.src,
        input.src_port as u16,
        input.dst,
        input.dst_port as u16,
        input.family as u8,
    );
    input.key = key;
    input.from_a = (direction == Direction::AToB) as u64;

    let record = match FLOWS.get_ptr_mut(&input.key) {
        Some(conn) => {
            close_out_if_due(conn, input);
            conn
        }
        None => {
            start_record(input);
            // Inserted now, or by another CPU a moment ago.
            match FLOWS.get_ptr_mut(&input.key) {
                Some(conn) => conn,
                None => {
                    if let Some(stats) = stats() {
                        stats.insert_failed += 1;
                    }
                    return 0;
                }
            }
        }
    };
    if input.header_complete == 0 {
        // Zeek too creates the connection and then ignores such a segment.
        if let Some(stats) = stats() {
            stats.truncated_segments += 1;
        }
        return 0;
    }
    let outcome = conn_update(record, input);
    count_half_open(outcome & 2 != 0, outcome & 4 != 0);
    if outcome & 1 != 0 {
        notify(kind::CLOSING, &input.key, input.now);
    }
    0
}

/// If the record is past its deadline (allowing user space the grace time to
/// do it first), or the segment is a SYN that starts a new connection on the
/// same ports, hands the record to user space and starts a new one in place.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(
    clippy::not_unsafe_ptr_arg_deref,
    clippy::needless_borrows_for_generic_args
)]
pub extern "C" fn close_out_if_due(conn: *mut Conn, input: *const TrackInput) -> i32 {
    // SAFETY: null-checked; a flow-table record and this CPU's input slot.
    let (Some(conn), Some(input)) = (unsafe { conn.as_mut() }, unsafe { input.as_ref() }) else {
        return 0;
    };
    let segment = segment_of(input);
    // SAFETY: a plain read of a global user space may have set before load;
    // volatile so the compiler does not fold in the default.
    let grace = unsafe { core::ptr::read_volatile(&GRACE_NS) };
    let reason = match conn.due(input.now.saturating_sub(grace), timeouts()) {
        Some(reason) => reason,
        None if conn.is_reuse(&segment) => end_reason::REUSED,
        None => return 0,
    };
    emit_ended(&input.key, conn, reason, input.now);
    begin_record(conn, input, &segment);
    announce_record(input);
    1
}

/// Starts `conn` afresh for the segment's connection.
#[inline(always)]
fn begin_record(conn: &mut Conn, input: &TrackInput, segment: &Segment) {
    let flip = flip_at_creation(segment, is_likely_server);
    conn.init(input.from_a != 0, segment, flip, input.now);
}

/// Counts a new record and tells user space to schedule its deadline.
#[inline(always)]
fn announce_record(input: &TrackInput) {
    if let Some(stats) = stats() {
        stats.created += 1;
    }
    notify(kind::NEW, &input.key, input.now);
}

/// Inserts a new record for the segment's connection.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(
    clippy::not_unsafe_ptr_arg_deref,
    clippy::needless_borrows_for_generic_args
)]
pub extern "C" fn start_record(input: *const TrackInput) -> i32 {
    // SAFETY: null-checked; this CPU's input slot.
    let Some(input) = (unsafe { input.as_ref() }) else {
        return 0;
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, used only here; a Conn is too big for
    // the stack.
    let fresh = unsafe { &mut *scratch };
    begin_record(fresh, input, &segment_of(input));
    if FLOWS
        .insert(&input.key, &*fresh, BPF_NOEXIST as u64)
        .is_err()
    {
        // Another CPU was first, or the table refused; the caller looks again.
        return 0;
    }
    announce_record(input);
    1
}

/// Applies the segment to the record ([`Conn::update`]). Returns bit 0: the
/// deadline moved; bit 1: half-open before; bit 2: half-open after.
#[unsafe(no_mangle)]
#[inline(never)]
#[allow(
    clippy::not_unsafe_ptr_arg_deref,
    clippy::needless_borrows_for_generic_args
)]
pub extern "C" fn conn_update(conn: *mut Conn, input: *const TrackInput) -> u32 {
    // SAFETY: null-checked; a flow-table record and this CPU's input slot.
    let (Some(conn), Some(input)) = (unsafe { conn.as_mut() }, unsafe { input.as_ref() }) else {
        return 0;
    };
    let segment = segment_of(input);
    let before = conn.half_open();
    let update = conn.update(input.from_a != 0, &segment, input.now, timeouts());
    update.rescheduled as u32 | (before as u32) << 1 | (conn.half_open() as u32) << 2
}

#[inline(always)]
fn count_and_track(frame: &Frame, now: impl FnOnce() -> u64) {
    let parsed = parse(frame);
    let counted = tally(&parsed);
    if let Some(tallies) = TALLIES.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, and only here.
        unsafe { (*tallies).record(&counted) };
    }
    if let Some((ip, tcp)) = parsed.tcp() {
        track(
            frame,
            tcp,
            ip.offset as usize,
            ip.version == IpVersion::V6,
            now(),
        );
    }
}

#[xdp]
pub fn teardown(ctx: XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    // SAFETY: a helper without arguments.
    count_and_track(&frame, || unsafe { bpf_ktime_get_ns() });
    xdp_action::XDP_PASS
}

/// The same work on capture time: `teardown replay --connections` sets the
/// clock before each packet, so every timeout runs on the capture's clock.
#[xdp]
pub fn teardown_replay(ctx: XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    count_and_track(&frame, || REPLAY_CLOCK.get(0).copied().unwrap_or(0));
    xdp_action::XDP_PASS
}

/// Bytes of headers the egress program wants in the linear part of the skb.
const EGRESS_HEADER_BYTES: u32 = 128;

/// The host's own segments (SYN-ACKs, FINs, RSTs it sends), into the same
/// flow table. Not counted in the tallies, which describe what arrives.
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
    let parsed = parse(&frame);
    if let Some((ip, tcp)) = parsed.tcp() {
        let is_v6 = ip.version == IpVersion::V6;
        // SAFETY: a helper without arguments.
        track(&frame, tcp, ip.offset as usize, is_v6, unsafe {
            bpf_ktime_get_ns()
        });
    }
    // Let the packet go on to whatever else is attached.
    TC_ACT_UNSPEC
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

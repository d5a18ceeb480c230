//! The `conn_state` target: a conversation between two endpoints, decoded
//! from the fuzzer's bytes, driven through [`Conn`] the way the kernel's
//! flow table drives one slot, with the record's invariants checked after
//! every segment.
//!
//! # Encoding
//!
//! A [`HEADER_LEN`]-byte header, then [`STEP_LEN`]-byte steps (a trailing
//! partial step is ignored). All integers big-endian.
//!
//! Header: endpoint a's port (2), endpoint b's port (2), the clock's start
//! in nanoseconds (8), the SYN timeout in tenths of a second minus one (1),
//! the idle timeout in tens of seconds minus one (1).
//!
//! Step: a control byte, the TCP flags (1), the payload length (2), the
//! sequence number (4), the acknowledgement number (4), a time step (2).
//! Control bits:
//!
//! * 0: sent by endpoint b (else a);
//! * 1: the sequence number is absolute (else relative to the next one
//!   the sender would send: 0 is in order);
//! * 2: the acknowledgement is absolute (else relative to the next
//!   sequence number of the receiver: 0 acknowledges everything);
//! * 3: the TCP header is incomplete (the kernel creates the record, then
//!   ignores the segment);
//! * 4-5: how the time step counts: microseconds, milliseconds or seconds
//!   forward, or microseconds backward (capture clocks step back);
//! * 6-7: the window: 65535, 0, 1 or 512 (only zero matters).
//!
//! Relative numbers let the fuzzer write in-order streams, retransmissions
//! and gaps with small values; absolute ones reach anything else.

use teardown_common::conn::{
    CloseKind, Conn, Endpoint, HISTORY_CAP, LIKELY_SERVER_PORTS, ORIG, RESP, Segment, Timeouts,
    end_reason, flag, flip_at_creation, rst_cause, rstos0_history, state,
};
use teardown_common::parse::tcp_flags::{FIN, SYN};

pub const HEADER_LEN: usize = 14;
pub const STEP_LEN: usize = 14;
/// Steps read from one input: enough to fill a history many times over.
pub const MAX_STEPS: usize = 2048;

/// The control byte's bits (see the module's documentation).
pub mod control {
    pub const FROM_B: u8 = 1;
    pub const SEQ_ABSOLUTE: u8 = 2;
    pub const ACK_ABSOLUTE: u8 = 4;
    pub const INCOMPLETE: u8 = 8;
    pub const TIME_SHIFT: u8 = 4;
    pub const WINDOW_SHIFT: u8 = 6;
}

const WINDOWS: [u16; 4] = [65_535, 0, 1, 512];
const MICROSECOND: u64 = 1_000;
const MILLISECOND: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;

/// The conversation's setting, from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ports: [u16; 2],
    pub start_ns: u64,
    /// `syn_ns` = (this + 1) * 100 ms.
    pub syn_tenths: u8,
    /// `idle_ns` = (this + 1) * 10 s.
    pub idle_tens: u8,
}

impl Header {
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Header {
        Header {
            ports: [
                u16::from_be_bytes([bytes[0], bytes[1]]),
                u16::from_be_bytes([bytes[2], bytes[3]]),
            ],
            start_ns: u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes")),
            syn_tenths: bytes[12],
            idle_tens: bytes[13],
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&self.ports[0].to_be_bytes());
        out[2..4].copy_from_slice(&self.ports[1].to_be_bytes());
        out[4..12].copy_from_slice(&self.start_ns.to_be_bytes());
        out[12] = self.syn_tenths;
        out[13] = self.idle_tens;
        out
    }

    /// Zeek's timers, with the two that `teardown replay` lets the user set.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            syn_ns: (self.syn_tenths as u64 + 1) * 100 * MILLISECOND,
            idle_ns: (self.idle_tens as u64 + 1) * 10 * SECOND,
            ..Timeouts::ZEEK
        }
    }
}

/// One decoded segment, as the kernel would pass it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub from_a: bool,
    pub segment: Segment,
    pub complete: bool,
    pub now: u64,
}

/// What the relative fields are relative to: the next sequence number of
/// each side (one past the furthest segment it sent) and the clock.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    ports: [u16; 2],
    next: [u32; 2],
    heard: [bool; 2],
    now: u64,
}

impl Decoder {
    pub fn new(header: &Header) -> Decoder {
        Decoder {
            ports: header.ports,
            next: [0; 2],
            heard: [false; 2],
            now: header.start_ns,
        }
    }

    pub fn decode(&mut self, raw: &[u8; STEP_LEN]) -> Step {
        let bits = raw[0];
        let side = (bits & control::FROM_B != 0) as usize;
        let flags = raw[1];
        let len = u16::from_be_bytes([raw[2], raw[3]]) as u32;
        let seq_field = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let ack_field = u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let time = u16::from_be_bytes([raw[12], raw[13]]) as u64;
        let seq = if bits & control::SEQ_ABSOLUTE != 0 {
            seq_field
        } else {
            self.next[side].wrapping_add(seq_field)
        };
        let ack = if bits & control::ACK_ABSOLUTE != 0 {
            ack_field
        } else {
            self.next[1 - side].wrapping_add(ack_field)
        };
        self.now = match (bits >> control::TIME_SHIFT) & 3 {
            0 => self.now.saturating_add(time * MICROSECOND),
            1 => self.now.saturating_add(time * MILLISECOND),
            2 => self.now.saturating_add(time * SECOND),
            _ => self.now.saturating_sub(time * MICROSECOND),
        };
        let end = seq
            .wrapping_add(len)
            .wrapping_add((flags & SYN != 0) as u32)
            .wrapping_add((flags & FIN != 0) as u32);
        if !self.heard[side] || (end.wrapping_sub(self.next[side]) as i32) > 0 {
            self.next[side] = end;
            self.heard[side] = true;
        }
        Step {
            from_a: side == 0,
            segment: Segment {
                flags,
                seq,
                ack,
                window: WINDOWS[(bits >> control::WINDOW_SHIFT) as usize & 3],
                len,
                // An IPv4 datagram with a bare TCP header.
                ip_len: 40 + len,
                src_port: self.ports[side],
                dst_port: self.ports[1 - side],
            },
            complete: bits & control::INCOMPLETE == 0,
            now: self.now,
        }
    }

    /// The step's bytes for a segment sent at `at_ns`, written relative to
    /// what came before so that [`Decoder::decode`] reads it back (the time
    /// to the step's resolution). Used to seed the corpus with real
    /// conversations.
    pub fn encode(&mut self, from_a: bool, segment: &Segment, at_ns: u64) -> [u8; STEP_LEN] {
        let side = (!from_a) as usize;
        let diff = at_ns as i128 - self.now as i128;
        let (class, time) = if diff < 0 {
            (3u8, (-diff) as u64 / MICROSECOND)
        } else if (diff as u64) < 65_536 * MICROSECOND {
            (0, diff as u64 / MICROSECOND)
        } else if (diff as u64) < 65_536 * MILLISECOND {
            (1, diff as u64 / MILLISECOND)
        } else {
            (2, diff as u64 / SECOND)
        };
        let window = if segment.window == 0 { 1 } else { 0 };
        let mut raw = [0u8; STEP_LEN];
        raw[0] = side as u8 | class << control::TIME_SHIFT | window << control::WINDOW_SHIFT;
        raw[1] = segment.flags;
        raw[2..4].copy_from_slice(&(segment.len.min(u16::MAX as u32) as u16).to_be_bytes());
        raw[4..8].copy_from_slice(&segment.seq.wrapping_sub(self.next[side]).to_be_bytes());
        raw[8..12].copy_from_slice(&segment.ack.wrapping_sub(self.next[1 - side]).to_be_bytes());
        raw[12..14].copy_from_slice(&(time.min(u16::MAX as u64) as u16).to_be_bytes());
        // Moves the decoder's state along exactly as reading it back will.
        self.decode(&raw);
        raw
    }
}

/// The conversation's steps.
pub fn decode(input: &[u8]) -> Option<(Header, Vec<Step>)> {
    let header = Header::decode(input.get(..HEADER_LEN)?.try_into().ok()?);
    let mut decoder = Decoder::new(&header);
    let steps = input[HEADER_LEN..]
        .chunks_exact(STEP_LEN)
        .take(MAX_STEPS)
        .map(|raw| decoder.decode(raw.try_into().expect("a whole step")))
        .collect();
    Some((header, steps))
}

fn likely_server(port: u16) -> bool {
    LIKELY_SERVER_PORTS.contains(&port)
}

/// Endpoint a's or b's side of the record, wherever the roles put it.
fn side(conn: &Conn, a: bool) -> &Endpoint {
    &conn.ep[if conn.from_orig(a) { ORIG } else { RESP }]
}

/// Endpoint a's or b's bits of the history mask.
fn seen_bits(conn: &Conn, a: bool) -> u32 {
    if conn.from_orig(a) {
        conn.hist_seen & 0xffff
    } else {
        conn.hist_seen >> 16
    }
}

/// What the segments applied to the current record add up to, per
/// endpoint (a, b): the record must count exactly these.
#[derive(Default)]
struct Applied {
    pkts: [u64; 2],
    payload: [u64; 2],
    ip_bytes: [u64; 2],
}

/// One flow-table slot holding the conversation's record.
struct Slot {
    conn: Conn,
    applied: Applied,
    /// No step went back in time since the record began.
    monotonic: bool,
}

const STICKY_FLAGS: u16 =
    flag::FLIPPED | flag::HISTORY_TRUNCATED | flag::CLOSE_COMPLETE | flag::FINS_CROSSED;

/// History letters the state machine writes (Zeek's, without the content
/// gap and checksum letters, which teardown never writes).
const LETTERS: &[u8] = b"^SsHhAaDdFfRrIiQqTtWw";

/// Decodes `input` and plays it through one slot, as the kernel does for
/// one 4-tuple: the fast path first where it applies, else the record is
/// closed out if past its deadline or reused by a new SYN, then updated;
/// every ended record is summarised as user space does. Checks that
///
/// * nothing panics (overflow checks are on);
/// * a segment the fast path takes leaves the record exactly as the full
///   state machine would (its times aside, when the clock stepped back),
///   and is one the slow path would not have closed the record for; a
///   segment it declines leaves the record untouched;
/// * each endpoint's packets, payload and IP bytes are exactly what it
///   sent, whatever the role swaps; missed bytes, retransmissions, zero
///   windows, FINs and history bits only grow; the first FIN and RST,
///   the reset cause, the removal time and the sticky flags, once set,
///   stay;
/// * the history only grows, stays within [`HISTORY_CAP`] and holds only
///   Zeek's letters; states are valid;
/// * with the clock not going back, the record's deadline is after the
///   last packet (else the kernel would close a record it just updated);
/// * summaries (`conn_state`, `close`, sizes) of any record are well formed.
pub fn check(input: &[u8]) {
    let Some((header, steps)) = decode(input) else {
        return;
    };
    let timeouts = header.timeouts();
    let mut slot: Option<Slot> = None;
    for step in &steps {
        let (from_a, segment, now) = (step.from_a, &step.segment, step.now);
        let Some(current) = slot.as_mut() else {
            slot = Some(begin(step));
            if let Some(fresh) = slot.as_mut() {
                apply(fresh, step, &timeouts);
            }
            continue;
        };
        if now < current.conn.last_pkt_ns {
            current.monotonic = false;
        }
        if step.complete {
            let before = current.conn;
            let mut fast = before;
            if fast.update_established(from_a, segment, now, timeouts.idle_ns) {
                // As the kernel's slow path does when it next holds the
                // record, and user space with each copy it reads.
                fast.fold_lanes();
                assert_eq!(
                    before.due(now, &timeouts),
                    None,
                    "the fast path took a segment for a record past its deadline"
                );
                assert!(!before.is_reuse(segment));
                let mut full = before;
                full.update(from_a, segment, now, &timeouts);
                if now < before.last_ns {
                    // On purpose, the fast path never moves the record's
                    // time back (in the kernel the precise clock may have
                    // stamped it a little ahead of the coarse one), where
                    // the state machine takes the packet's time. Capture
                    // clocks do step back; only the times may differ then.
                    full.last_ns = before.last_ns;
                    full.last_pkt_ns = before.last_pkt_ns;
                }
                assert_eq!(
                    fast, full,
                    "the fast path and the state machine disagree on {segment:?}"
                );
                current.conn = fast;
                record_applied(current, step);
                check_record(current, &before, now, &timeouts);
                continue;
            }
            assert_eq!(fast, before, "a declined segment changed the record");
        }
        let reason = match current.conn.due(now, &timeouts) {
            Some(reason) => Some(reason),
            None if current.conn.is_reuse(segment) => Some(end_reason::REUSED),
            None => None,
        };
        if let Some(reason) = reason {
            summarise(&current.conn, reason);
            *current = begin(step);
        }
        apply(current, step, &timeouts);
    }
    if let Some(last) = &slot {
        summarise(&last.conn, end_reason::END_OF_INPUT);
    }
}

/// A new record for the step's connection, as the kernel starts one.
fn begin(step: &Step) -> Slot {
    let mut conn = Conn::zeroed();
    let flip = flip_at_creation(&step.segment, likely_server);
    conn.init(step.from_a, &step.segment, flip, step.now);
    Slot {
        conn,
        applied: Applied::default(),
        monotonic: true,
    }
}

/// The slow path's update (nothing for an incomplete header), then checks.
fn apply(slot: &mut Slot, step: &Step, timeouts: &Timeouts) {
    if !step.complete {
        return;
    }
    let before = slot.conn;
    slot.conn
        .update(step.from_a, &step.segment, step.now, timeouts);
    record_applied(slot, step);
    check_record(slot, &before, step.now, timeouts);
}

fn record_applied(slot: &mut Slot, step: &Step) {
    let who = (!step.from_a) as usize;
    slot.applied.pkts[who] += 1;
    slot.applied.payload[who] += step.segment.len as u64;
    slot.applied.ip_bytes[who] += step.segment.ip_len as u64;
}

fn check_record(slot: &Slot, before: &Conn, now: u64, timeouts: &Timeouts) {
    let conn = &slot.conn;
    assert!(conn.orig_is_a <= 1, "orig_is_a {}", conn.orig_is_a);
    for (who, a) in [(0, true), (1, false)] {
        let (old, new) = (side(before, a), side(conn, a));
        // Lanes are kept by the key's endpoint: lane 0 is a's.
        let (old_lane, new_lane) = (&before.lanes[who], &conn.lanes[who]);
        let name = if a { "a" } else { "b" };
        assert_eq!(
            (new_lane.pkts, new_lane.payload_bytes, new_lane.ip_bytes),
            (
                slot.applied.pkts[who],
                slot.applied.payload[who],
                slot.applied.ip_bytes[who]
            ),
            "endpoint {name}'s packets, payload and IP bytes are not what it sent"
        );
        for (what, old, new) in [
            ("missed bytes", old_lane.missed_bytes, new_lane.missed_bytes),
            (
                "retransmissions",
                old.retransmits as u64,
                new.retransmits as u64,
            ),
            (
                "zero windows",
                old.zero_windows as u64,
                new.zero_windows as u64,
            ),
            ("FINs", old.fin_cnt as u64, new.fin_cnt as u64),
        ] {
            assert!(
                new >= old,
                "endpoint {name}'s {what} went from {old} to {new}"
            );
        }
        for (what, old, new) in [
            ("first FIN", old.first_fin_pkt, new.first_fin_pkt),
            ("first RST", old.first_rst_pkt, new.first_rst_pkt),
        ] {
            assert!(
                old == 0 || old == new,
                "endpoint {name}'s {what} moved from packet {old} to {new}"
            );
            assert!(
                new <= conn.packets,
                "{what} at packet {new} of {}",
                conn.packets
            );
        }
        let (old_bits, new_bits) = (seen_bits(before, a), seen_bits(conn, a));
        assert_eq!(
            old_bits & !new_bits,
            0,
            "endpoint {name}'s history bits {old_bits:#x} -> {new_bits:#x}"
        );
        assert!(new.state <= state::RESET && new.prev_state <= state::RESET);
        assert!(new.did_close <= 1);
    }
    assert_eq!(
        conn.lanes[0].pkts + conn.lanes[1].pkts,
        conn.packets as u64,
        "the record's packet count is not the sum of its sides'"
    );
    assert!(
        before.rst_cause == rst_cause::NONE || before.rst_cause == conn.rst_cause,
        "the reset cause changed"
    );
    assert!(conn.rst_cause <= rst_cause::UNKNOWN_CONNECTION);
    assert!(
        conn.rst_cause == rst_cause::NONE
            || conn.ep[ORIG].first_rst_pkt != 0
            || conn.ep[RESP].first_rst_pkt != 0,
        "a reset cause without a reset"
    );
    assert_eq!(
        before.flags & STICKY_FLAGS & !conn.flags,
        0,
        "flags {:#x} -> {:#x}",
        before.flags,
        conn.flags
    );
    assert!(before.delete_at_ns == 0 || before.delete_at_ns == conn.delete_at_ns);
    assert_eq!(
        conn.flags & flag::CLOSE_COMPLETE != 0,
        conn.delete_at_ns != 0,
        "a removal time without a complete close, or the reverse"
    );
    assert_eq!(conn.start_ns, before.start_ns);

    let history = conn.history();
    assert!(conn.history_len as usize <= HISTORY_CAP);
    assert!(conn.history_len >= before.history_len, "the history shrank");
    assert!(
        history.iter().all(|letter| LETTERS.contains(letter)),
        "history {:?}",
        String::from_utf8_lossy(history)
    );
    assert!(!(conn.handshake_pending() && conn.handshake_completed()));

    if slot.monotonic {
        let (at, reason) = conn.deadline(timeouts);
        assert!(
            at > now || at == u64::MAX,
            "updated at {now}, the record is already due at {at} ({})",
            end_reason::name(reason)
        );
    }
}

/// What user space makes of an ended record: all of it must be defined.
fn summarise(conn: &Conn, reason: u8) {
    const STATES: &[&str] = &[
        "S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH",
    ];
    let conn_state = conn.conn_state();
    assert!(STATES.contains(&conn_state), "conn_state {conn_state}");
    let close = conn.close(reason);
    assert!(matches!(close.closed_by, None | Some(ORIG) | Some(RESP)));
    assert_eq!(close.teardown_ns.is_some(), conn.first_close_ns != 0);
    if matches!(close.kind, CloseKind::Graceful | CloseKind::Simultaneous) {
        assert!(conn.ep[ORIG].first_fin_pkt != 0 && conn.ep[RESP].first_fin_pkt != 0);
    }
    // User space adds these together (`orig_bytes + resp_bytes + ...`).
    let sizes = [conn.size(ORIG), conn.size(RESP)];
    let total = sizes
        .iter()
        .chain([&conn.lanes[0].payload_bytes, &conn.lanes[1].payload_bytes])
        .try_fold(0u64, |sum, &n| sum.checked_add(n));
    assert!(total.is_some(), "sizes {sizes:?} overflow");
    let _ = rstos0_history(conn.history());
    let _ = (conn.is_evictable(), conn.is_closed_out(), conn.half_open());
}

#[cfg(test)]
mod tests {
    use super::*;
    use teardown_common::parse::tcp_flags::{ACK, RST};

    #[test]
    fn encoded_steps_decode_to_the_same_segments() {
        let header = Header {
            ports: [40_000, 443],
            start_ns: 1_700_000_000 * SECOND,
            syn_tenths: 49,
            idle_tens: 29,
        };
        let segments = [
            (true, SYN, 1_000, 0, 0),
            (false, SYN | ACK, 9_000, 1_001, 0),
            (true, ACK, 1_001, 9_001, 0),
            (true, ACK, 1_001, 9_001, 100),
            (false, ACK, 9_001, 1_101, 1_400),
            // A retransmission, a gap, a reset far off.
            (true, ACK, 1_001, 10_401, 100),
            (true, ACK, 5_000, 10_401, 10),
            (false, RST, 3_000_000_000, 0, 0),
        ];
        let mut encoder = Decoder::new(&header);
        let mut input = header.encode().to_vec();
        let mut times = Vec::new();
        let mut now = header.start_ns;
        for (index, &(from_a, flags, seq, ack, len)) in segments.iter().enumerate() {
            let segment = Segment {
                flags,
                seq,
                ack,
                window: 65_535,
                len,
                ip_len: 40 + len,
                src_port: header.ports[!from_a as usize],
                dst_port: header.ports[from_a as usize],
            };
            // Steps of microseconds, milliseconds and seconds, and one
            // back, each a whole number of its unit: read back exactly.
            let delta: i64 = [
                0,
                1_000,
                5_000_000_000,
                -3_000,
                10_000_000,
                65_000_000_000,
                0,
                100_000_000_000,
            ][index];
            now = now
                .checked_add_signed(delta)
                .expect("a time after the start");
            let at = now;
            times.push(at);
            input.extend(encoder.encode(from_a, &segment, at));
        }
        let (decoded_header, steps) = decode(&input).expect("a header");
        assert_eq!(decoded_header, header);
        assert_eq!(steps.len(), segments.len());
        for (step, (&(from_a, flags, seq, ack, len), at)) in
            steps.iter().zip(segments.iter().zip(times))
        {
            assert_eq!(
                (step.from_a, step.segment.flags, step.segment.seq),
                (from_a, flags, seq)
            );
            assert_eq!((step.segment.ack, step.segment.len), (ack, len));
            assert_eq!(step.now, at);
            assert!(step.complete);
        }
        check(&input);
    }
}

//! Per-connection TCP state, updated packet by packet, with Zeek's semantics.
//!
//! The kernel keeps one [`Conn`] per flow and calls [`Conn::update`] for every
//! segment; user space calls [`Conn::summary`] when the connection ends. The
//! rules follow Zeek's TCP session adapter (`docs/zeek-tcp-semantics.md` walks
//! through them with citations) so `conn_state` and `history` mean exactly what
//! Zeek's `conn.log` means by them. On top of that the record keeps what
//! teardown itself reports: who closed, how, and why a reset happened.
//!
//! Everything here is plain integer code on a `repr(C)` record: no allocation,
//! no floating point, every loop bounded, so the same functions run in the XDP
//! program and in the host's unit tests.

use crate::parse::tcp_flags::{ACK, FIN, RST, SYN};

/// Zeek's endpoint states (`TCP_ENDPOINT_*`), as stored in [`Endpoint::state`].
pub mod state {
    pub const INACTIVE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_ACK_SENT: u8 = 2;
    pub const PARTIAL: u8 = 3;
    pub const ESTABLISHED: u8 = 4;
    pub const CLOSED: u8 = 5;
    pub const RESET: u8 = 6;
}
use state::*;

/// Index of the originator in [`Conn::ep`].
pub const ORIG: usize = 0;
/// Index of the responder in [`Conn::ep`].
pub const RESP: usize = 1;

/// Bytes of history kept per connection. Zeek's letters are bounded (each of
/// S H A D F R I Q at most a few times per side) except the logarithmic C T W
/// G, so 40 holds every history in the corpus with room to spare; a longer one
/// is cut and flagged [`flag::HISTORY_TRUNCATED`].
pub const HISTORY_CAP: usize = 40;

/// Bits of [`Conn::flags`].
pub mod flag {
    /// Roles were swapped by the port heuristic or the SYN-ACK-first rule: the
    /// originator is a guess, not the side seen sending the first SYN.
    pub const FLIPPED: u16 = 1;
    /// The first packet was a SYN-ACK left unflipped; the next ACK or data
    /// segment flips the roles (Zeek's second-packet flip).
    pub const SYN_ACK_FIRST: u16 = 2;
    /// The history outgrew [`super::HISTORY_CAP`].
    pub const HISTORY_TRUNCATED: u16 = 4;
    /// The connection closed completely; it is removed at `delete_at_ns`.
    pub const CLOSE_COMPLETE: u16 = 8;
    /// The second FIN was sent before the first one was acknowledged.
    pub const FINS_CROSSED: u16 = 16;
    /// The first packet was not a pure SYN, so the originator was chosen by
    /// heuristic (Zeek's likely-server ports and SYN-ACK rules), not seen.
    pub const ORIG_GUESSED: u16 = 32;
}

/// Why the first reset of a connection happened (`Conn::rst_cause`).
pub mod rst_cause {
    pub const NONE: u8 = 0;
    /// The responder answered a SYN with a RST: nothing listens there.
    pub const REFUSED: u8 = 1;
    /// A RST on a connection that was set up (or seen working midstream).
    pub const ABORT: u8 = 2;
    /// A RST after a FIN from either side (typically a close with unread data).
    pub const AFTER_FIN: u8 = 3;
    /// A RST from a side that had sent nothing on a connection whose setup was
    /// never seen: the answer to a segment for a connection it does not know.
    pub const UNKNOWN_CONNECTION: u8 = 4;

    pub const fn name(cause: u8) -> Option<&'static str> {
        match cause {
            REFUSED => Some("refused"),
            ABORT => Some("abort"),
            AFTER_FIN => Some("after_fin"),
            UNKNOWN_CONNECTION => Some("unknown_connection"),
            _ => None,
        }
    }
}

/// Why a connection record was closed out.
pub mod end_reason {
    /// A SYN (or SYN-ACK) was not answered within the SYN timeout.
    pub const SYN_TIMEOUT: u8 = 1;
    /// Closed completely (both FINs, or a RST) and the close delay passed.
    pub const CLOSED: u8 = 2;
    /// Zeek's expire timer: one side closed or reset and the connection went
    /// quiet for the linger time.
    pub const LINGER: u8 = 3;
    /// No packet for the idle timeout.
    pub const IDLE: u8 = 4;
    /// A new SYN started another connection on the same addresses and ports.
    pub const REUSED: u8 = 5;
    /// The capture ended or teardown stopped with the connection still there.
    pub const END_OF_INPUT: u8 = 6;

    pub const fn name(reason: u8) -> &'static str {
        match reason {
            SYN_TIMEOUT => "syn_timeout",
            CLOSED => "closed",
            LINGER => "linger",
            IDLE => "idle",
            REUSED => "reused",
            END_OF_INPUT => "end_of_input",
            _ => "unknown",
        }
    }
}

/// Zeek's history-mask bits (`HIST_*`); responder bits sit 16 higher.
mod hist {
    pub const SYN: u32 = 0x1;
    pub const FIN: u32 = 0x2;
    pub const RST: u32 = 0x4;
    pub const FIN_RST: u32 = 0x8;
    pub const DATA: u32 = 0x10;
    pub const ACK: u32 = 0x20;
    pub const MULTI_FLAG: u32 = 0x40;
}

/// Sequence jumps beyond this are not trusted for SYN and RST segments (Zeek's
/// `TOO_LARGE_SEQ_DELTA`).
const TOO_LARGE_SEQ_DELTA: i32 = 1_048_576;

/// One side of a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Segments sent by this side (every one whose header was complete).
    pub pkts: u64,
    /// Payload bytes by IP length, retransmissions included.
    pub payload_bytes: u64,
    /// IP datagram bytes (headers included), Zeek's `orig_ip_bytes` /
    /// `resp_ip_bytes`.
    pub ip_bytes: u64,
    /// Sequence space this side's segments skipped over: bytes sent that
    /// the monitor never saw (Zeek's `missed_bytes`, from gaps alone; a
    /// segment reordered ahead of its predecessor counts as a gap too).
    pub missed_bytes: u64,
    pub start_seq: u32,
    /// Highest sequence number seen, one past the segment.
    pub last_seq: u32,
    /// Highest acknowledgement of this side's data sent by the peer.
    pub ack_seq: u32,
    pub seq_wraps: u32,
    pub ack_wraps: u32,
    /// Absolute sequence number just past this side's first FIN.
    pub fin_end_seq: u32,
    pub hist_last_syn: u32,
    pub hist_last_fin: u32,
    pub hist_last_rst: u32,
    pub retransmits: u32,
    pub zero_windows: u32,
    /// Ordinal (1-based, within the connection) of this side's first FIN; 0 = none.
    pub first_fin_pkt: u32,
    /// Ordinal of this side's first RST; 0 = none.
    pub first_rst_pkt: u32,
    pub state: u8,
    pub prev_state: u8,
    pub did_close: u8,
    /// FINs sent (saturating).
    pub fin_cnt: u8,
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 88);
// `open_established` reads these four bytes as one aligned word.
const _: () = assert!(
    core::mem::offset_of!(Endpoint, state).is_multiple_of(4)
        && core::mem::offset_of!(Endpoint, prev_state)
            == core::mem::offset_of!(Endpoint, state) + 1
        && core::mem::offset_of!(Endpoint, did_close) == core::mem::offset_of!(Endpoint, state) + 2
        && core::mem::offset_of!(Endpoint, fin_cnt) == core::mem::offset_of!(Endpoint, state) + 3
);

impl Endpoint {
    /// `state == ESTABLISHED && did_close == 0`, from one load of the four
    /// state bytes.
    #[inline(always)]
    fn open_established(&self) -> bool {
        // SAFETY: state, prev_state, did_close and fin_cnt are four
        // consecutive bytes at a 4-aligned offset of an 8-aligned struct
        // (asserted above).
        let word = unsafe { (&self.state as *const u8 as *const u32).read() };
        word & u32::from_ne_bytes([0xff, 0, 0xff, 0]) == u32::from_ne_bytes([ESTABLISHED, 0, 0, 0])
    }
}
const _: () = assert!(core::mem::align_of::<Endpoint>() == 8);
const _: () =
    assert!(core::mem::size_of::<Conn>().is_multiple_of(8) && core::mem::align_of::<Conn>() == 8);

/// The flow-table value: one TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// `[originator, responder]`.
    pub ep: [Endpoint; 2],
    /// Time of the packet that created the record.
    pub start_ns: u64,
    /// Zeek's `last_time`: the last packet before both sides had closed.
    pub last_ns: u64,
    /// The last packet of any kind.
    pub last_pkt_ns: u64,
    /// The first FIN or RST.
    pub first_close_ns: u64,
    /// When an unanswered SYN times out (0: no attempt timer).
    pub attempt_at_ns: u64,
    /// Start of the expire-timer chain armed by a one-sided close (0: none).
    pub expire_chain_ns: u64,
    /// When a completely closed connection is removed (0: not closed).
    pub delete_at_ns: u64,
    /// Segments seen in either direction; gives each its ordinal.
    pub packets: u32,
    /// Zeek's `hist_seen` mask: originator bits low, responder bits high.
    pub hist_seen: u32,
    /// [`flag`] bits.
    pub flags: u16,
    /// [`rst_cause`] of the first RST.
    pub rst_cause: u8,
    /// 1 if the originator is endpoint `a` of the flow key.
    pub orig_is_a: u8,
    pub history_len: u8,
    pub _pad: [u8; 3],
    pub history: [u8; HISTORY_CAP],
}

const _: () = assert!(core::mem::size_of::<Conn>() == 2 * 88 + 7 * 8 + 16 + HISTORY_CAP);

/// The parts of a TCP segment the state machine looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// Payload length from the IP header.
    pub len: u32,
    /// The whole IP datagram's length: IP and TCP headers and payload.
    pub ip_len: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Timer settings, in nanoseconds. Zeek's defaults are in [`Timeouts::ZEEK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// An unanswered SYN is reported half-open after this (Zeek: `tcp_attempt_delay`).
    pub syn_ns: u64,
    /// A connection with no packets for this long is ended as idle.
    pub idle_ns: u64,
    /// A completely closed connection stays this long for late packets (`tcp_close_delay`).
    pub close_ns: u64,
    /// Quiet time before a half-closed or reset connection is expired (`tcp_connection_linger`).
    pub linger_ns: u64,
    /// Period of the expire timer (`tcp_session_timer`).
    pub session_timer_ns: u64,
    /// First run of the expire timer after creation (`tcp_SYN_timeout`).
    pub first_expire_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Timeouts>() == 48);

const SECOND: u64 = 1_000_000_000;

impl Timeouts {
    pub const ZEEK: Timeouts = Timeouts {
        syn_ns: 5 * SECOND,
        idle_ns: 300 * SECOND,
        close_ns: 5 * SECOND,
        linger_ns: 5 * SECOND,
        session_timer_ns: 6 * SECOND,
        first_expire_ns: 5 * SECOND,
    };
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::ZEEK
    }
}

/// Ports Zeek treats as likely servers (`likely_server_ports`), which decide
/// who is the originator of a connection first seen without its SYN. The set
/// is what Zeek's default scripts register for TCP.
pub const LIKELY_SERVER_PORTS: &[u16] = &[
    21, 22, 23, 25, 53, 80, 81, 88, 110, 135, 137, 138, 139, 143, 389, 443, 445, 502, 563, 585,
    587, 614, 631, 636, 750, 989, 990, 992, 993, 995, 1080, 1434, 2811, 3128, 3268, 3306, 3389,
    5222, 5223, 5269, 5432, 6379, 6666, 6667, 6668, 6669, 8000, 8080, 8888, 20000,
];

/// A 65536-bit set of ports, one bit per port.
pub const PORT_SET_WORDS: usize = 1024;

/// The [`LIKELY_SERVER_PORTS`] as a bit set.
pub const fn likely_server_port_set() -> [u64; PORT_SET_WORDS] {
    let mut set = [0u64; PORT_SET_WORDS];
    let mut i = 0;
    while i < LIKELY_SERVER_PORTS.len() {
        let port = LIKELY_SERVER_PORTS[i] as usize;
        set[port / 64] |= 1 << (port % 64);
        i += 1;
    }
    set
}

#[inline(always)]
fn has(flags: u8, bit: u8) -> bool {
    flags & bit != 0
}

/// Zeek's `seq_delta`: the signed distance between two sequence numbers.
#[inline(always)]
fn seq_delta(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

#[inline(always)]
fn swap_case(letter: u8) -> u8 {
    if letter.is_ascii_alphabetic() {
        letter ^ 0x20
    } else {
        letter
    }
}

/// Whether `count` is 1, 10, 100, ...: when Zeek's scaled history letters
/// (T, W) are written.
#[inline(always)]
fn is_power_of_ten(count: u32) -> bool {
    let mut threshold = 1u32;
    let mut i = 0;
    while i < 10 {
        if count == threshold {
            return true;
        }
        threshold = threshold.wrapping_mul(10);
        i += 1;
    }
    false
}

/// Zeek's `WantConnection` flip: whether a connection first seen with this
/// segment should make the *receiver* the originator.
#[inline(always)]
pub fn flip_at_creation(segment: &Segment, likely_server: impl Fn(u16) -> bool) -> bool {
    let pure_syn = has(segment.flags, SYN) && !has(segment.flags, ACK);
    if pure_syn || !likely_server(segment.src_port) {
        return false;
    }
    if likely_server(segment.dst_port) {
        !has(segment.flags, SYN) && segment.src_port < segment.dst_port
    } else {
        true
    }
}

/// What [`Conn::update`] tells the caller about a packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// The packet closed a side or set a removal time: the record's deadline
    /// moved earlier.
    pub rescheduled: bool,
}

impl Conn {
    /// An empty record for a connection whose first packet is `segment`,
    /// travelling from endpoint `a` if `from_a`.
    #[inline(always)]
    pub fn init(&mut self, from_a: bool, segment: &Segment, flip: bool, now: u64) {
        // Zero in place, word by word: a `Conn::zeroed()` temporary would not
        // fit the BPF stack, and a memset would become a call the BPF target
        // cannot make. Volatile keeps LLVM from turning the loop into one.
        const WORDS: usize = core::mem::size_of::<Conn>() / 8;
        let words = self as *mut Conn as *mut u64;
        let mut i = 0;
        while i < WORDS {
            // SAFETY: Conn is 8-aligned, a whole number of words, and all-zero
            // bytes are a valid Conn (integers and byte arrays only).
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
            i += 1;
        }
        self.orig_is_a = (from_a != flip) as u8;
        self.start_ns = now;
        self.last_ns = now;
        self.last_pkt_ns = now;
        if !has(segment.flags, SYN) || has(segment.flags, ACK) {
            self.flags |= flag::ORIG_GUESSED;
        }
        if flip {
            self.flags |= flag::FLIPPED;
            self.push_history(b'^');
        } else if has(segment.flags, SYN) && has(segment.flags, ACK) {
            self.flags |= flag::SYN_ACK_FIRST;
        }
    }

    pub const fn zeroed() -> Conn {
        const EMPTY: Endpoint = Endpoint {
            pkts: 0,
            payload_bytes: 0,
            ip_bytes: 0,
            missed_bytes: 0,
            start_seq: 0,
            last_seq: 0,
            ack_seq: 0,
            seq_wraps: 0,
            ack_wraps: 0,
            fin_end_seq: 0,
            hist_last_syn: 0,
            hist_last_fin: 0,
            hist_last_rst: 0,
            retransmits: 0,
            zero_windows: 0,
            first_fin_pkt: 0,
            first_rst_pkt: 0,
            state: 0,
            prev_state: 0,
            did_close: 0,
            fin_cnt: 0,
        };
        Conn {
            ep: [EMPTY; 2],
            start_ns: 0,
            last_ns: 0,
            last_pkt_ns: 0,
            first_close_ns: 0,
            attempt_at_ns: 0,
            expire_chain_ns: 0,
            delete_at_ns: 0,
            packets: 0,
            hist_seen: 0,
            flags: 0,
            rst_cause: 0,
            orig_is_a: 0,
            history_len: 0,
            _pad: [0; 3],
            history: [0; HISTORY_CAP],
        }
    }

    /// A handshake in progress: the originator's SYN has had no answer yet.
    #[inline(always)]
    pub fn half_open(&self) -> bool {
        self.ep[ORIG].state == SYN_SENT && self.ep[RESP].state == INACTIVE
    }

    /// Whether the handshake has completed: the responder sent its SYN-ACK
    /// and the originator acknowledged it (a pure ACK or data). A spoofed
    /// SYN's source never does, even when the host answers it with a
    /// SYN-ACK. The originator's SYN need not be in the record: a SYN over
    /// the half-open budget is counted but not tracked, and its connection
    /// is tracked from the SYN-ACK on; its completion must count all the
    /// same, or a legitimate surge would look like failing handshakes.
    #[inline(always)]
    pub fn handshake_completed(&self) -> bool {
        self.hist_seen & hist::SYN << 16 != 0 && self.hist_seen & (hist::ACK | hist::DATA) != 0
    }

    /// Whether the originator has sent a SYN, the responder its SYN-ACK, and
    /// nothing has acknowledged it: what a SYN flood leaves behind when the
    /// host answers it (with SYN cookies, say). Two-sided, but with no
    /// conversation to lose: such records may be evicted like one-sided ones.
    #[inline(always)]
    pub fn handshake_pending(&self) -> bool {
        const SYNS: u32 = hist::SYN | hist::SYN << 16;
        const ANYTHING_ELSE: u32 = (hist::ACK | hist::DATA | hist::FIN | hist::RST) * 0x1_0001;
        self.hist_seen & SYNS == SYNS && self.hist_seen & ANYTHING_ELSE == 0
    }

    /// Whether a packet from endpoint `a` (if `from_a`) comes from the originator.
    #[inline(always)]
    pub fn from_orig(&self, from_a: bool) -> bool {
        from_a == (self.orig_is_a != 0)
    }

    /// The history string (Zeek's letters).
    pub fn history(&self) -> &[u8] {
        let len = (self.history_len as usize).min(HISTORY_CAP);
        &self.history[..len]
    }

    #[inline(always)]
    fn push_history(&mut self, letter: u8) {
        // `get_mut` rather than indexing: no panic path for the BPF target.
        match self.history.get_mut(self.history_len as usize) {
            Some(slot) => {
                *slot = letter;
                self.history_len += 1;
            }
            None => self.flags |= flag::HISTORY_TRUNCATED,
        }
    }

    /// Zeek's `CheckHistory`: records the letter the first time its mask bit
    /// is set for this side. Returns whether it had been seen before.
    #[inline(always)]
    fn check_history(&mut self, is_orig: bool, mask: u32, letter: u8) -> bool {
        let (mask, letter) = if is_orig {
            (mask, letter)
        } else {
            (mask << 16, letter.to_ascii_lowercase())
        };
        if self.hist_seen & mask != 0 {
            return true;
        }
        self.hist_seen |= mask;
        self.push_history(letter);
        false
    }

    #[inline(always)]
    fn add_history(&mut self, is_orig: bool, letter: u8) {
        self.push_history(if is_orig {
            letter
        } else {
            letter.to_ascii_lowercase()
        });
    }

    /// Zeek's `IsReuse`: whether a SYN on this connection starts a new one.
    ///
    /// One rule beyond Zeek's: a SYN-ACK with a new sequence number on a
    /// connection that has ended (either side closed or reset) answers a
    /// new connection on the same ports whose SYN was not seen. Zeek would
    /// append it to the old record (`ShADadfFhfF`); a busy client reuses
    /// ports within seconds, so that would merge two connections.
    #[inline(always)]
    pub fn is_reuse(&self, segment: &Segment) -> bool {
        if !has(segment.flags, SYN) {
            return false;
        }
        let orig = &self.ep[ORIG];
        let resp = &self.ep[RESP];
        let mut conn_orig = orig;
        if has(segment.flags, ACK) {
            if orig.state != INACTIVE {
                let ended =
                    |ep: &Endpoint| ep.did_close != 0 || ep.state == CLOSED || ep.state == RESET;
                return (ended(orig) || ended(resp))
                    && segment.seq != orig.start_seq
                    && segment.seq != resp.start_seq;
            }
            conn_orig = resp;
        }
        if orig.did_close == 0 && resp.did_close == 0 {
            if segment.seq == conn_orig.start_seq {
                return false;
            }
            if !has(segment.flags, ACK)
                && conn_orig.state == SYN_ACK_SENT
                && resp.state == INACTIVE
                && segment.seq == resp.start_seq
            {
                return false;
            }
        }
        true
    }

    /// Exchanges the two endpoints word by word, without a 72-byte temporary
    /// on the (512-byte) BPF stack.
    #[inline(always)]
    fn swap_endpoints(&mut self) {
        const WORDS: usize = core::mem::size_of::<Endpoint>() / 8;
        let words = self.ep.as_mut_ptr() as *mut u64;
        let mut i = 0;
        while i < WORDS {
            // SAFETY: `ep` is two 8-aligned Endpoints of WORDS u64 each.
            unsafe {
                let orig = words.add(i);
                let resp = words.add(WORDS + i);
                core::ptr::swap(orig, resp);
            }
            i += 1;
        }
    }

    /// Swaps the roles after the fact: the connection started with a SYN-ACK
    /// and its next segment showed who the client is. Behaves as if the flip
    /// had happened on the first packet: `^`, case-swapped history, and the
    /// SYN-ACK's sender established as responder.
    #[inline(always)]
    fn flip_late(&mut self) {
        self.swap_endpoints();
        self.ep[RESP].state = ESTABLISHED;
        self.orig_is_a ^= 1;
        self.hist_seen = self.hist_seen.rotate_left(16);
        self.flags |= flag::FLIPPED;
        let len = self.history_len as usize;
        let shifted = if len < HISTORY_CAP { len + 1 } else { len };
        // Shift right by one, swapping case, from the back; the bound is constant.
        let mut i = HISTORY_CAP - 1;
        while i > 0 {
            if i < shifted {
                let previous = self.history.get(i - 1).copied().unwrap_or(0);
                if let Some(slot) = self.history.get_mut(i) {
                    *slot = swap_case(previous);
                }
            }
            i -= 1;
        }
        if let Some(first) = self.history.first_mut() {
            *first = b'^';
        }
        if len >= HISTORY_CAP {
            self.flags |= flag::HISTORY_TRUNCATED;
        }
        self.history_len = shifted as u8;
    }

    /// Applies one segment sent by endpoint `a` (if `from_a`) at time `now`:
    /// [`Conn::count_gap`], then [`Conn::update_segment`].
    #[inline(always)]
    pub fn update(
        &mut self,
        from_a: bool,
        segment: &Segment,
        now: u64,
        timeouts: &Timeouts,
    ) -> Update {
        self.count_gap(from_a, segment);
        self.update_segment(from_a, segment, now, timeouts)
    }

    /// Everything [`Conn::update`] does but [`Conn::count_gap`]. The kernel
    /// runs the two as separate functions, each within the verifier's
    /// limits.
    #[inline(always)]
    pub fn update_segment(
        &mut self,
        from_a: bool,
        segment: &Segment,
        now: u64,
        timeouts: &Timeouts,
    ) -> Update {
        let flags = segment.flags;
        let delete_at_before = self.delete_at_ns;
        let expire_chain_before = self.expire_chain_ns;
        if self.flags & flag::SYN_ACK_FIRST != 0 && self.packets > 0 {
            self.flags &= !flag::SYN_ACK_FIRST;
            if !has(flags, SYN) && !has(flags, RST) && (has(flags, ACK) || segment.len > 0) {
                self.flip_late();
            }
        }
        let is_orig = self.from_orig(from_a);
        let (me, peer) = if is_orig { (ORIG, RESP) } else { (RESP, ORIG) };
        self.packets = self.packets.wrapping_add(1);
        let ordinal = self.packets;
        self.last_pkt_ns = now;

        let base_seq = segment.seq;
        let len = segment.len;
        // Zeek's get_segment_len: SYN and FIN occupy a sequence number; the
        // data of a RST does not count.
        let mut seg_len = len + has(flags, SYN) as u32 + has(flags, FIN) as u32;
        if has(flags, RST) {
            seg_len -= len;
        }
        let seq_end = base_seq.wrapping_add(seg_len);

        self.init_endpoint(me, flags, base_seq, seq_end);
        let rel_seq = base_seq.wrapping_sub(self.ep[me & 1].start_seq);
        self.update_history(is_orig, me, flags, rel_seq, len);

        // Zero window ('W'), judged on the states before this packet.
        if segment.window == 0
            && !has(flags, RST)
            && self.ep[peer & 1].state != CLOSED
            && self.ep[me & 1].state != RESET
        {
            self.ep[me & 1].zero_windows = self.ep[me & 1].zero_windows.saturating_add(1);
            if is_power_of_ten(self.ep[me & 1].zero_windows) {
                self.add_history(is_orig, b'W');
            }
        }

        if self.ep[ORIG].did_close == 0 || self.ep[RESP].did_close == 0 {
            self.last_ns = now;
        }

        let first_fin_of_side = has(flags, FIN) && self.ep[me & 1].fin_cnt == 0;
        if has(flags, FIN) {
            if first_fin_of_side {
                self.ep[me & 1].first_fin_pkt = ordinal;
                self.ep[me & 1].fin_end_seq = seq_end;
                // Crossed FINs: the peer already sent its FIN and this one does
                // not acknowledge it, so it was sent before the peer's arrived.
                let peer_fin = self.ep[peer & 1].fin_cnt > 0;
                if peer_fin
                    && (!has(flags, ACK)
                        || seq_delta(segment.ack, self.ep[peer & 1].fin_end_seq) < 0)
                {
                    self.flags |= flag::FINS_CROSSED;
                }
            }
            self.ep[me & 1].fin_cnt = self.ep[me & 1].fin_cnt.saturating_add(1);
        }
        if has(flags, RST) && self.ep[me & 1].first_rst_pkt == 0 {
            self.ep[me & 1].first_rst_pkt = ordinal;
            if self.rst_cause == rst_cause::NONE {
                self.rst_cause = self.classify_reset(me, peer);
            }
        }
        if (has(flags, FIN) || has(flags, RST)) && self.first_close_ns == 0 {
            self.first_close_ns = now;
        }

        if has(flags, ACK) {
            if self.ep[peer & 1].state == INACTIVE {
                // Zeek's init_peer: number the peer's bytes as if its SYN was seen.
                let start = segment.ack.wrapping_sub(1);
                let p = &mut self.ep[peer & 1];
                p.start_seq = start;
                p.ack_seq = start;
                p.last_seq = start;
            } else if !has(flags, RST) {
                self.update_ack_seq(peer, segment.ack);
            }
        }

        self.update_last_seq(is_orig, me, seq_end, flags, len);

        let do_close =
            self.update_state_machine(is_orig, me, peer, flags, base_seq, len, now, timeouts);
        // A reversed handshake may have swapped the roles: find the sender again.
        let (me, peer) = if self.from_orig(from_a) {
            (ORIG, RESP)
        } else {
            (RESP, ORIG)
        };

        let ep = &mut self.ep[me & 1];
        ep.pkts += 1;
        ep.payload_bytes += len as u64;
        ep.ip_bytes += segment.ip_len as u64;

        if do_close {
            self.connection_closed(me, peer, timeouts);
        }
        Update {
            rescheduled: self.delete_at_ns != delete_at_before
                || self.expire_chain_ns != expire_chain_before,
        }
    }

    /// The common case of [`Conn::update`], cheap enough to run inline for
    /// every packet of an established connection: an in-order ACK or data
    /// segment (no SYN, FIN or RST, non-zero window) while both sides are
    /// established and the record is not yet idle. Applies it and returns
    /// true, leaving the record exactly as `update` would; returns false,
    /// changing nothing, for anything else, which then takes `update`.
    ///
    /// Everything `update` would do for such a segment reduces to: count it,
    /// move the clocks, advance the sender's highest sequence number and the
    /// acknowledgement of the peer's data. History letters (A, D) must
    /// already be set for the sender; a retransmission (T) or zero window
    /// (W) goes the long way.
    #[inline(always)]
    pub fn update_established(
        &mut self,
        from_a: bool,
        segment: &Segment,
        now: u64,
        idle_ns: u64,
    ) -> bool {
        let flags = segment.flags;
        if flags & (SYN | FIN | RST) != 0
            || flags & ACK == 0
            || segment.window == 0
            || self.flags & flag::SYN_ACK_FIRST != 0
            // Past the idle deadline (`now >= last_ns.saturating_add(idle_ns)`,
            // spelled without the saturating add's branches): the slow path
            // decides whether to close the record out first.
            || (now >= self.last_ns && (now - self.last_ns >= idle_ns || now == u64::MAX))
        {
            return false;
        }
        let is_orig = self.from_orig(from_a);
        let (me, peer) = if is_orig { (ORIG, RESP) } else { (RESP, ORIG) };
        let sender = &self.ep[me & 1];
        let receiver = &self.ep[peer & 1];
        if !sender.open_established() || !receiver.open_established() {
            return false;
        }
        let letter = if segment.len > 0 {
            hist::DATA
        } else {
            hist::ACK
        };
        let letter = if is_orig { letter } else { letter << 16 };
        if self.hist_seen & letter == 0 {
            return false;
        }
        if seq_delta(segment.seq, sender.last_seq) > 0 {
            // It starts past what was seen of this side: a gap, which
            // `update` counts as missed bytes.
            return false;
        }
        let seq_end = segment.seq.wrapping_add(segment.len);
        let advance = seq_delta(seq_end, sender.last_seq) > 0;
        if !advance && segment.len > 0 {
            // A retransmission: counted, and maybe a 'T', by `update`.
            return false;
        }

        self.packets = self.packets.wrapping_add(1);
        // The slow path may have stamped the record with the precise clock,
        // a little ahead of this (coarse) reading: never move time back.
        if now > self.last_ns {
            self.last_pkt_ns = now;
            self.last_ns = now;
        }
        self.update_ack_seq(peer, segment.ack);
        let sender = &mut self.ep[me & 1];
        if advance {
            if seq_end < sender.last_seq {
                sender.seq_wraps += 1;
            }
            sender.last_seq = seq_end;
        }
        sender.pkts += 1;
        sender.payload_bytes += segment.len as u64;
        sender.ip_bytes += segment.ip_len as u64;
        true
    }

    /// Counts the sequence space between what was seen of the sender and
    /// this segment's start as missed bytes, before the segment is applied.
    /// Not for SYNs and RSTs (their sequence numbers may jump), nor while
    /// nothing of the side was seen (a side numbered from the peer's ACK
    /// starts at its SYN, which is not a byte of data).
    #[inline(always)]
    pub fn count_gap(&mut self, from_a: bool, segment: &Segment) {
        let me = if self.from_orig(from_a) { ORIG } else { RESP };
        let ep = &mut self.ep[me & 1];
        if has(segment.flags, SYN) || has(segment.flags, RST) || ep.last_seq == ep.start_seq {
            return;
        }
        let gap = seq_delta(segment.seq, ep.last_seq);
        if gap > 0 {
            ep.missed_bytes += gap as u64;
        }
    }

    /// Why this RST (the connection's first) was sent by `me`.
    #[inline(always)]
    fn classify_reset(&self, me: usize, peer: usize) -> u8 {
        let sender = &self.ep[me & 1];
        let other = &self.ep[peer & 1];
        let syn_seen = self.hist_seen & (hist::SYN | hist::SYN << 16) != 0;
        if sender.state == INACTIVE && (other.state == SYN_SENT || other.state == SYN_ACK_SENT) {
            rst_cause::REFUSED
        } else if sender.fin_cnt > 0 || other.fin_cnt > 0 {
            rst_cause::AFTER_FIN
        } else if sender.state == INACTIVE && !syn_seen {
            rst_cause::UNKNOWN_CONNECTION
        } else {
            rst_cause::ABORT
        }
    }

    /// Zeek's `init_endpoint`: sets up or re-bases `me`'s sequence numbers.
    #[inline(always)]
    fn init_endpoint(&mut self, me: usize, flags: u8, base_seq: u32, seq_end: u32) {
        let ep = &mut self.ep[me & 1];
        let syn = has(flags, SYN);
        let rebase = match ep.state {
            INACTIVE => {
                if syn {
                    ep.start_seq = base_seq;
                    ep.ack_seq = base_seq;
                    ep.last_seq = seq_end;
                } else {
                    // A partial connection: number bytes as if a SYN came just
                    // before, and don't call the first packet a retransmission.
                    ep.start_seq = base_seq.wrapping_sub(1);
                    ep.ack_seq = base_seq.wrapping_sub(1);
                    ep.last_seq = base_seq;
                }
                false
            }
            SYN_SENT | SYN_ACK_SENT => syn && base_seq != ep.start_seq,
            ESTABLISHED | PARTIAL => syn,
            RESET => syn && ep.prev_state == INACTIVE,
            _ => false,
        };
        if rebase {
            ep.start_seq = base_seq;
            ep.ack_seq = base_seq;
            ep.last_seq = seq_end;
        }
    }

    /// Zeek's `update_history`: S H A D F R I Q letters.
    #[inline(always)]
    fn update_history(&mut self, is_orig: bool, me: usize, flags: u8, rel_seq: u32, len: u32) {
        let syn = has(flags, SYN);
        let fin = has(flags, FIN);
        let rst = has(flags, RST);
        let multiple = syn as u8 + fin as u8 + rst as u8;
        if multiple > 1 {
            if fin && rst {
                self.check_history(is_orig, hist::FIN_RST, b'I');
            } else {
                self.check_history(is_orig, hist::MULTI_FLAG, b'Q');
            }
        } else if syn {
            let letter = if has(flags, ACK) { b'H' } else { b'S' };
            if self.check_history(is_orig, hist::SYN, letter)
                && rel_seq != self.ep[me & 1].hist_last_syn
            {
                self.add_history(is_orig, letter);
            }
            self.ep[me & 1].hist_last_syn = rel_seq;
        } else if fin {
            let fin_at = rel_seq.wrapping_add(len);
            if self.check_history(is_orig, hist::FIN, b'F')
                && fin_at != self.ep[me & 1].hist_last_fin
            {
                self.add_history(is_orig, b'F');
            }
            self.ep[me & 1].hist_last_fin = fin_at;
        } else if rst {
            if self.check_history(is_orig, hist::RST, b'R')
                && rel_seq != self.ep[me & 1].hist_last_rst
            {
                self.add_history(is_orig, b'R');
            }
            self.ep[me & 1].hist_last_rst = rel_seq;
        } else if len > 0 {
            self.check_history(is_orig, hist::DATA, b'D');
        } else if has(flags, ACK) {
            self.check_history(is_orig, hist::ACK, b'A');
        }
    }

    /// Zeek's `update_ack_seq`: the peer's data acknowledged so far.
    #[inline(always)]
    fn update_ack_seq(&mut self, peer: usize, ack: u32) {
        let ep = &mut self.ep[peer & 1];
        let delta = seq_delta(ack, ep.ack_seq);
        // An ACK of 0 far ahead is more likely broken than a huge connection
        // landing on 0. Written as one condition, with the wrap counted by an
        // add rather than a branch: fewer instructions on the fast path.
        if delta > 0 && (ack != 0 || delta <= TOO_LARGE_SEQ_DELTA) {
            ep.ack_wraps += (ack < ep.ack_seq) as u32;
            ep.ack_seq = ack;
        }
    }

    /// Zeek's `update_last_seq`: advances the highest sequence seen, or
    /// counts a retransmission ('T').
    #[inline(always)]
    fn update_last_seq(&mut self, is_orig: bool, me: usize, seq_end: u32, flags: u8, len: u32) {
        let ep = &mut self.ep[me & 1];
        let delta = seq_delta(seq_end, ep.last_seq);
        let advance = if (has(flags, SYN) || has(flags, RST))
            && !(-TOO_LARGE_SEQ_DELTA..=TOO_LARGE_SEQ_DELTA).contains(&delta)
        {
            false
        } else if has(flags, FIN) && ep.last_seq == ep.start_seq.wrapping_add(1) {
            true
        } else if ep.state == RESET {
            false
        } else if delta > 0 {
            true
        } else {
            if len > 0 {
                ep.retransmits = ep.retransmits.saturating_add(1);
                if is_power_of_ten(ep.retransmits) {
                    self.add_history(is_orig, b'T');
                }
            }
            false
        };
        if advance {
            let ep = &mut self.ep[me & 1];
            if seq_end < ep.last_seq {
                ep.seq_wraps += 1;
            }
            ep.last_seq = seq_end;
        }
    }

    #[inline(always)]
    fn set_state(&mut self, which: usize, new_state: u8) {
        let ep = &mut self.ep[which & 1];
        if ep.state != new_state {
            ep.prev_state = ep.state;
            ep.state = new_state;
        }
    }

    /// Zeek's `UpdateStateMachine`. Returns whether the packet closes `me`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn update_state_machine(
        &mut self,
        is_orig: bool,
        me: usize,
        peer: usize,
        flags: u8,
        base_seq: u32,
        len: u32,
        now: u64,
        timeouts: &Timeouts,
    ) -> bool {
        let syn = has(flags, SYN);
        let fin = has(flags, FIN);
        let rst = has(flags, RST);
        let ack = has(flags, ACK);
        let mut do_close = false;
        match self.ep[me & 1].state {
            INACTIVE => {
                if syn {
                    if is_orig {
                        self.set_state(me, if ack { SYN_ACK_SENT } else { SYN_SENT });
                        self.attempt_at_ns = now.saturating_add(timeouts.syn_ns);
                    } else {
                        if !ack
                            && self.ep[peer & 1].state == SYN_ACK_SENT
                            && base_seq == self.ep[me & 1].start_seq
                        {
                            // The originator's SYN-ACK came first: the roles were
                            // reversed. Zeek flips and keeps going.
                            self.swap_endpoints();
                            self.orig_is_a ^= 1;
                            self.hist_seen = self.hist_seen.rotate_left(16);
                            self.flags |= flag::FLIPPED;
                            // Now a seen SYN names the originator.
                            self.flags &= !flag::ORIG_GUESSED;
                            self.push_history(b'^');
                            // After the swap the SYN's sender is the originator.
                            self.set_state(peer, ESTABLISHED);
                            self.set_state(me, ESTABLISHED);
                            return false;
                        }
                        if self.ep[peer & 1].state == SYN_SENT {
                            self.set_state(peer, ESTABLISHED);
                        }
                        self.set_state(me, ESTABLISHED);
                    }
                }
                if fin {
                    self.set_state(me, CLOSED);
                    do_close = true;
                }
                if rst {
                    self.set_state(me, RESET);
                    do_close = true;
                }
                if self.ep[me & 1].state == INACTIVE {
                    let orig_state = self.ep[ORIG].state;
                    if !is_orig && len == 0 && orig_state == SYN_SENT {
                        // An early ACK from the responder: wait for its SYN-ACK.
                    } else if ack && self.ep[peer & 1].state == ESTABLISHED {
                        self.set_state(me, ESTABLISHED);
                    } else {
                        self.set_state(me, PARTIAL);
                    }
                }
            }
            SYN_SENT | SYN_ACK_SENT => {
                if fin {
                    self.set_state(me, CLOSED);
                    do_close = true;
                }
                if rst {
                    self.set_state(me, RESET);
                    do_close = true;
                }
            }
            ESTABLISHED | PARTIAL => {
                if syn
                    && self.ep[me & 1].state == PARTIAL
                    && self.ep[peer & 1].state == INACTIVE
                    && !ack
                {
                    self.set_state(me, SYN_SENT);
                }
                if fin && !rst {
                    self.set_state(me, CLOSED);
                    do_close = true;
                    if self.ep[peer & 1].state == RESET && self.ep[peer & 1].prev_state == CLOSED {
                        self.set_state(peer, CLOSED);
                    }
                }
                if rst {
                    self.set_state(me, RESET);
                    do_close = true;
                }
            }
            CLOSED if rst && self.ep[peer & 1].state != CLOSED => {
                self.set_state(me, RESET);
                do_close = self.ep[me & 1].did_close == 0;
                // Zeek's reset timer removes the connection after the delay.
                if self.delete_at_ns == 0 {
                    self.delete_at_ns = now.saturating_add(timeouts.close_ns);
                    self.flags |= flag::CLOSE_COMPLETE;
                }
            }
            _ => {}
        }
        do_close
    }

    /// Zeek's `ConnectionClosed`: marks `me` closed and schedules removal.
    #[inline(always)]
    fn connection_closed(&mut self, me: usize, peer: usize, timeouts: &Timeouts) {
        if self.ep[me & 1].did_close != 0 {
            return;
        }
        self.ep[me & 1].did_close = 1;
        let complete = self.ep[me & 1].state == RESET
            || self.ep[peer & 1].did_close != 0
            || self.ep[peer & 1].state == INACTIVE;
        if complete {
            if self.flags & flag::CLOSE_COMPLETE == 0 {
                self.flags |= flag::CLOSE_COMPLETE;
                self.delete_at_ns = self.last_ns.saturating_add(timeouts.close_ns);
            }
        } else if self.ep[me & 1].prev_state != INACTIVE && self.expire_chain_ns == 0 {
            self.expire_chain_ns = self.last_ns.saturating_add(timeouts.session_timer_ns);
        }
    }

    /// When this record must be closed out, and why, if no packet arrives
    /// before then. Mirrors Zeek's timers; evaluated lazily, so it only
    /// depends on the record.
    #[inline(always)]
    pub fn deadline(&self, timeouts: &Timeouts) -> (u64, u8) {
        if self.flags & flag::CLOSE_COMPLETE != 0 {
            return (self.delete_at_ns, end_reason::CLOSED);
        }
        let orig = &self.ep[ORIG];
        let resp = &self.ep[RESP];
        let mut best = (
            self.last_ns.saturating_add(timeouts.idle_ns),
            end_reason::IDLE,
        );
        if self.attempt_at_ns != 0
            && (orig.state == SYN_SENT || orig.state == SYN_ACK_SENT)
            && resp.state == INACTIVE
            && self.attempt_at_ns < best.0
        {
            best = (self.attempt_at_ns, end_reason::SYN_TIMEOUT);
        }
        let some_closed = orig.did_close != 0 || resp.did_close != 0;
        let expirable = (some_closed
            && ((orig.did_close != 0 && resp.did_close != 0)
                || orig.state == RESET
                || resp.state == RESET
                || orig.state == INACTIVE
                || resp.state == INACTIVE))
            || (orig.state == INACTIVE && resp.state == INACTIVE);
        if expirable {
            // The timer fires at phase + k * period; it acts at the first firing
            // after the last packet that is also past last_time + linger.
            let after = self
                .last_pkt_ns
                .max(self.last_ns.saturating_add(timeouts.linger_ns));
            let period = timeouts.session_timer_ns.max(1);
            let mut fire = next_firing(
                self.start_ns.saturating_add(timeouts.first_expire_ns),
                period,
                after,
            );
            if self.expire_chain_ns != 0 {
                fire = fire.min(next_firing(self.expire_chain_ns, period, after));
            }
            if fire < best.0 {
                best = (fire, end_reason::LINGER);
            }
        }
        best
    }

    /// Whether the record is due to be closed out at `now`.
    #[inline(always)]
    pub fn due(&self, now: u64, timeouts: &Timeouts) -> Option<u8> {
        let (at, reason) = self.deadline(timeouts);
        if at <= now { Some(reason) } else { None }
    }

    /// Zeek's `TCP_Endpoint::Size`: bytes by sequence space.
    pub fn size(&self, which: usize) -> u64 {
        let ep = &self.ep[which & 1];
        let peer = &self.ep[(which & 1) ^ 1];
        let no_data_acked =
            ep.ack_seq == ep.start_seq || ep.ack_seq == ep.start_seq.wrapping_add(1);
        if ep.prev_state == SYN_SENT
            && ep.state == RESET
            && peer.state == INACTIVE
            && !no_data_acked
        {
            return 0;
        }
        let last = ((ep.seq_wraps as u64) << 32) | ep.last_seq as u64;
        let acked = ((ep.ack_wraps as u64) << 32) | ep.ack_seq as u64;
        // One sequence number is the SYN (real or assumed).
        let mut size = last
            .max(acked)
            .saturating_sub(ep.start_seq as u64)
            .saturating_sub(1);
        if ep.fin_cnt > 0 && size != 0 {
            size -= 1;
        }
        size
    }

    /// Zeek's `conn_state`.
    pub fn conn_state(&self) -> &'static str {
        let os = self.ep[ORIG].state;
        let rs = self.ep[RESP].state;
        let o_inactive = os == INACTIVE || os == PARTIAL;
        let r_inactive = rs == INACTIVE || rs == PARTIAL;
        if rs == RESET {
            if os == SYN_SENT
                || os == SYN_ACK_SENT
                || (os == RESET && self.size(ORIG) == 0 && self.size(RESP) == 0)
            {
                "REJ"
            } else if o_inactive {
                "RSTRH"
            } else {
                "RSTR"
            }
        } else if os == RESET {
            if r_inactive {
                if rstos0_history(self.history()) {
                    "RSTOS0"
                } else {
                    "OTH"
                }
            } else {
                "RSTO"
            }
        } else if rs == CLOSED && os == CLOSED {
            "SF"
        } else if os == CLOSED {
            if r_inactive { "SH" } else { "S2" }
        } else if rs == CLOSED {
            if o_inactive { "SHR" } else { "S3" }
        } else if os == SYN_SENT && rs == INACTIVE {
            "S0"
        } else if os == ESTABLISHED && rs == ESTABLISHED {
            "S1"
        } else {
            "OTH"
        }
    }

    /// teardown's own account of how the connection ended.
    pub fn close(&self, reason: u8) -> Close {
        let orig = &self.ep[ORIG];
        let resp = &self.ep[RESP];
        let first_of = |a: u32, b: u32| -> Option<usize> {
            match (a, b) {
                (0, 0) => None,
                (0, _) => Some(RESP),
                (_, 0) => Some(ORIG),
                (a, b) => Some(if a <= b { ORIG } else { RESP }),
            }
        };
        let first_fin = first_of(orig.first_fin_pkt, resp.first_fin_pkt);
        let first_rst = first_of(orig.first_rst_pkt, resp.first_rst_pkt);
        let first_rst_pkt = match first_rst {
            Some(side) => self.ep[side & 1].first_rst_pkt,
            None => 0,
        };
        let both_fins_before_rst = orig.first_fin_pkt != 0
            && resp.first_fin_pkt != 0
            && (first_rst_pkt == 0
                || (orig.first_fin_pkt < first_rst_pkt && resp.first_fin_pkt < first_rst_pkt));
        let closed_by = match (first_fin, first_rst) {
            (Some(f), Some(r)) => {
                if self.ep[f & 1].first_fin_pkt < self.ep[r & 1].first_rst_pkt {
                    Some(f)
                } else {
                    Some(r)
                }
            }
            (Some(f), None) => Some(f),
            (None, r) => r,
        };
        let kind = if both_fins_before_rst {
            if self.flags & flag::FINS_CROSSED != 0 {
                CloseKind::Simultaneous
            } else {
                CloseKind::Graceful
            }
        } else if first_rst.is_some() {
            if self.rst_cause == rst_cause::REFUSED {
                CloseKind::Refused
            } else {
                CloseKind::Abort
            }
        } else if first_fin.is_some() {
            CloseKind::HalfClosed
        } else if reason == end_reason::SYN_TIMEOUT
            || (reason == end_reason::REUSED && self.conn_state() == "S0")
        {
            CloseKind::HalfOpen
        } else if reason == end_reason::IDLE || reason == end_reason::LINGER {
            CloseKind::Idle
        } else {
            CloseKind::Open
        };
        let teardown_ns = if self.first_close_ns != 0 {
            self.last_pkt_ns.saturating_sub(self.first_close_ns)
        } else {
            0
        };
        Close {
            kind,
            closed_by,
            rst_cause: rst_cause::name(self.rst_cause),
            teardown_ns: (self.first_close_ns != 0).then_some(teardown_ns),
        }
    }
}

/// The first time `phase + k * period` (k >= 0) strictly after `after`,
/// or `u64::MAX` if there is none before the clock's end: a capture's
/// timestamps can be that late (pcapng's saturate there), and a wrapped
/// sum would put the deadline in the distant past.
///
/// `phase + ((after - phase) / period + 1) * period`, rewritten as the
/// last firing at or before `after` plus a period, which cannot overflow
/// before the final add: that one saturates. (A saturating multiply would
/// need a 128-bit product, which the BPF target cannot call for.)
#[inline(always)]
fn next_firing(phase: u64, period: u64, after: u64) -> u64 {
    if phase > after {
        phase
    } else {
        (after - (after - phase) % period).saturating_add(period)
    }
}

/// Zeek's RSTOS0 test: the history fully matches `^?S[^HAFGIQ]*R.*`.
pub fn rstos0_history(history: &[u8]) -> bool {
    let rest = match history.first() {
        Some(b'^') => &history[1..],
        _ => history,
    };
    let Some((&b'S', rest)) = rest.split_first() else {
        return false;
    };
    for &letter in rest {
        if letter == b'R' {
            return true;
        }
        if matches!(letter, b'H' | b'A' | b'F' | b'G' | b'I' | b'Q') {
            return false;
        }
    }
    false
}

/// How a connection ended, in teardown's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseKind {
    /// Both sides sent FIN, one after the other.
    Graceful,
    /// One side sent FIN and the other never did.
    HalfClosed,
    /// Both sides sent FIN before seeing the other's.
    Simultaneous,
    /// A RST ended a connection that was set up or in use.
    Abort,
    /// A RST answered the SYN.
    Refused,
    /// The SYN was never answered.
    HalfOpen,
    /// No packet for the idle timeout.
    Idle,
    /// Still open when the capture ended or teardown stopped.
    Open,
}

impl CloseKind {
    pub const fn name(self) -> &'static str {
        match self {
            CloseKind::Graceful => "graceful",
            CloseKind::HalfClosed => "half_closed",
            CloseKind::Simultaneous => "simultaneous",
            CloseKind::Abort => "abort",
            CloseKind::Refused => "refused",
            CloseKind::HalfOpen => "half_open",
            CloseKind::Idle => "idle",
            CloseKind::Open => "open",
        }
    }
}

/// teardown's explanation of a connection's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    pub kind: CloseKind,
    /// [`ORIG`] or [`RESP`]: who sent the first FIN or RST.
    pub closed_by: Option<usize>,
    pub rst_cause: Option<&'static str>,
    /// From the first FIN or RST to the last packet.
    pub teardown_ns: Option<u64>,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays only, no implicit padding (sizes asserted).
unsafe impl aya::Pod for Conn {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Timeouts {}

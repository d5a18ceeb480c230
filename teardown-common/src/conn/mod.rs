//! Per-connection TCP state, updated packet by packet, with Zeek's semantics.
//!
//! The kernel keeps one [`Conn`] per flow and calls [`Conn::update`] for every
//! segment (`machine.rs`); user space reads the verdicts when the connection
//! ends (`verdict.rs`: [`Conn::conn_state`], [`Conn::close`]). The rules follow Zeek's TCP session adapter (`docs/zeek-tcp-semantics.md` walks
//! through them with citations) so `conn_state` and `history` mean exactly what
//! Zeek's `conn.log` means by them. On top of that the record keeps what
//! teardown itself reports: who closed, how, and why a reset happened.
//!
//! Everything here is plain integer code on a `repr(C)` record: no allocation,
//! no floating point, every loop bounded, so the same functions run in the XDP
//! program and in the host's unit tests. This file holds the record and
//! its constants.

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

/// One side of a connection: what only the slow path (holding both of the
/// slot's lane locks) writes. What the side's own segments write on the
/// fast path is in its [`Lane`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub start_seq: u32,
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

/// One direction's lane of a record: everything a segment sent by one
/// endpoint of the flow key writes on the fast path, with the lock that
/// guards it, on a 64-byte cache line of its own.
///
/// Why: a connection's two directions are often handled on two CPUs at
/// once (a server's ingress in XDP on the receiving CPU, its egress in TC
/// on the sending one). With one lock and the counters of both sides
/// mixed on the record's lines, every segment took the line the other
/// CPU had just written: `teardown bench --contention` read 24 ns per
/// segment alone and 430 both at once, and gave up on hundreds of held
/// slots per million. A segment's fast path now takes its own lane's lock
/// and writes its own lane alone; it reads the rest of the record, which
/// only the slow path writes, holding both lanes' locks.
///
/// Lanes are indexed by endpoint of the flow key (0 for `a`), not by role:
/// a role swap moves the [`Endpoint`]s, never a lane, so a lane's lock
/// always guards the same direction's segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lane {
    /// The lane's sequence lock, odd while a CPU holds it (the eBPF crate's
    /// `lock`). The state machine never touches it, and [`Conn::init`]
    /// leaves it as it is.
    pub lock: u32,
    /// Segments the fast path applied since the slow path last took them
    /// into [`Conn::packets`] ([`Conn::fold_lanes`]).
    pub fast_packets: u32,
    /// The fast path's latest time for this direction; taken into
    /// [`Conn::last_ns`] and [`Conn::last_pkt_ns`] by [`Conn::fold_lanes`].
    pub fast_last_ns: u64,
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
    /// Highest sequence number this side sent, one past the segment.
    pub last_seq: u32,
    pub seq_wraps: u32,
    /// Highest acknowledgement of the peer's data this side sent (Zeek
    /// keeps it as the peer's `ack_seq`): this side's segments write it.
    pub acked_seq: u32,
    pub acked_wraps: u32,
}

const _: () = assert!(core::mem::size_of::<Lane>() == 64);
const _: () = assert!(core::mem::offset_of!(Lane, lock) == 0);

impl Lane {
    /// The lane of the segments sent by the flow key's endpoint `a` (if
    /// `from_a`) or `b`: the one whose lock their fast path takes.
    #[inline(always)]
    pub const fn of_sender(from_a: bool) -> usize {
        (!from_a) as usize
    }

    pub const ZERO: Lane = Lane {
        lock: 0,
        fast_packets: 0,
        fast_last_ns: 0,
        pkts: 0,
        payload_bytes: 0,
        ip_bytes: 0,
        missed_bytes: 0,
        last_seq: 0,
        seq_wraps: 0,
        acked_seq: 0,
        acked_wraps: 0,
    };
}

const _: () = assert!(core::mem::size_of::<Endpoint>() == 40);
// `open_state` reads these four bytes as one aligned word.
const _: () = assert!(
    core::mem::offset_of!(Endpoint, state).is_multiple_of(4)
        && core::mem::offset_of!(Endpoint, prev_state)
            == core::mem::offset_of!(Endpoint, state) + 1
        && core::mem::offset_of!(Endpoint, did_close) == core::mem::offset_of!(Endpoint, state) + 2
        && core::mem::offset_of!(Endpoint, fin_cnt) == core::mem::offset_of!(Endpoint, state) + 3
);

impl Endpoint {
    /// The side's state if it has not closed (`did_close == 0`), else
    /// [`Endpoint::CLOSING`]: from one load of the four state bytes, for
    /// the fast path.
    #[inline(always)]
    pub(crate) fn open_state(&self) -> u8 {
        // SAFETY: state, prev_state, did_close and fin_cnt are four
        // consecutive bytes at a 4-aligned offset of an 8-aligned struct
        // (asserted above).
        let word = unsafe { (&self.state as *const u8 as *const u32).read() };
        if word & u32::from_ne_bytes([0, 0, 0xff, 0]) != 0 {
            return Self::CLOSING;
        }
        word.to_ne_bytes()[0]
    }

    /// [`Endpoint::open_state`]'s answer for a side that has closed: no
    /// state's value.
    pub(crate) const CLOSING: u8 = u8::MAX;
}
const _: () = assert!(core::mem::align_of::<Endpoint>() == 4);
// `swap_endpoints` exchanges them as u64 words.
const _: () = assert!(core::mem::offset_of!(Conn, ep).is_multiple_of(8));
const _: () =
    assert!(core::mem::size_of::<Conn>().is_multiple_of(8) && core::mem::align_of::<Conn>() == 8);

/// The flow-table value: one TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// `[a, b]`, by endpoint of the flow key: each on its own cache line
    /// (the record is 64-aligned in the flow table). Reach them by role with
    /// [`Conn::lane`].
    pub lanes: [Lane; 2],
    /// `[originator, responder]`.
    pub ep: [Endpoint; 2],
    /// Time of the packet that created the record.
    pub start_ns: u64,
    /// Zeek's `last_time`: the last packet before both sides had closed.
    /// The fast path's latest times are in the lanes until
    /// [`Conn::fold_lanes`].
    pub last_ns: u64,
    /// The last packet of any kind (as `last_ns`, with the lanes').
    pub last_pkt_ns: u64,
    /// The first FIN or RST.
    pub first_close_ns: u64,
    /// When an unanswered SYN times out (0: no attempt timer).
    pub attempt_at_ns: u64,
    /// Start of the expire-timer chain armed by a one-sided close (0: none).
    pub expire_chain_ns: u64,
    /// When a completely closed connection is removed (0: not closed).
    pub delete_at_ns: u64,
    /// Segments seen in either direction; gives each its ordinal. The fast
    /// path's are counted in the lanes until [`Conn::fold_lanes`].
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
    /// The record's tunnel: its index in the kernel's table of tunnels
    /// ([`crate::tunnel::TunnelRef`], 24 bits little-endian), 0 for none.
    pub tunnel: [u8; 3],
    pub history: [u8; HISTORY_CAP],
}

const _: () = assert!(core::mem::size_of::<Conn>() == 2 * 64 + 2 * 40 + 7 * 8 + 16 + HISTORY_CAP);
// Three 64-byte lines after the lanes: the record fills whole lines.
const _: () = assert!(core::mem::size_of::<Conn>() == 5 * 64);

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

mod machine;
mod verdict;

pub use machine::{Update, flip_at_creation};
pub use verdict::{Close, CloseKind, rstos0_history};

#[cfg(feature = "user")]
// SAFETY: repr(C), integers and byte arrays only, no implicit padding (sizes asserted).
unsafe impl aya::Pod for Conn {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for Timeouts {}

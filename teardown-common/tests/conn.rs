//! The connection state machine against Zeek's rules: every `conn_state`,
//! the history letters, and teardown's own close / closed_by / rst_cause, for
//! clean exchanges and for retransmitted, reordered and late FINs and RSTs.

use teardown_common::conn::{
    CloseKind, Conn, ORIG, RESP, Segment, Timeouts, end_reason, flag, flip_at_creation,
    likely_server_port_set, rstos0_history,
};
use teardown_common::parse::tcp_flags::{ACK, FIN, PSH, RST, SYN};

const MS: u64 = 1_000_000;
const CLIENT_PORT: u16 = 40000;
const SERVER_PORT: u16 = 8080;

/// A client (endpoint `a`) and a server exchanging segments, with sequence and
/// acknowledgement numbers kept the way real stacks keep them.
struct Sim {
    conn: Option<Conn>,
    now: u64,
    /// Next sequence number per side: [client, server].
    next: [u32; 2],
    /// Highest sequence received from the other side: what an ACK carries.
    received: [u32; 2],
    timeouts: Timeouts,
    /// Records closed out by reuse or by a timer, with the reason.
    ended: Vec<(Conn, u8)>,
    ports: [u16; 2],
}

impl Sim {
    fn new() -> Sim {
        Sim {
            conn: None,
            now: 1_000 * MS,
            next: [1_000, 50_000],
            received: [0, 0],
            timeouts: Timeouts::ZEEK,
            ended: Vec::new(),
            ports: [CLIENT_PORT, SERVER_PORT],
        }
    }

    fn client(&mut self, flags: u8, len: u32) -> &mut Sim {
        self.send(0, flags, len)
    }

    fn server(&mut self, flags: u8, len: u32) -> &mut Sim {
        self.send(1, flags, len)
    }

    fn wait(&mut self, ms: u64) -> &mut Sim {
        self.now += ms * MS;
        self
    }

    /// Sends with the side's current sequence number and advances it.
    fn send(&mut self, side: usize, flags: u8, len: u32) -> &mut Sim {
        let seq = self.next[side];
        self.send_at(side, flags, len, seq);
        let advance = len + (flags & SYN != 0) as u32 + (flags & FIN != 0) as u32;
        if flags & RST == 0 {
            self.next[side] = seq.wrapping_add(advance);
            self.received[1 - side] = self.received[1 - side].max(seq.wrapping_add(advance));
        }
        self
    }

    /// Sends a segment at an explicit sequence number (retransmissions,
    /// reordering) without moving the side's counters.
    fn send_at(&mut self, side: usize, flags: u8, len: u32, seq: u32) -> &mut Sim {
        let segment = Segment {
            flags,
            seq,
            ack: if flags & ACK != 0 {
                self.received[side]
            } else {
                0
            },
            window: 64_000,
            len,
            ip_len: 40 + len,
            src_port: self.ports[side],
            dst_port: self.ports[1 - side],
        };
        self.deliver(side == 0, &segment);
        self.now += MS;
        self
    }

    fn deliver(&mut self, from_a: bool, segment: &Segment) {
        if let Some(conn) = &self.conn {
            if let Some(reason) = conn.due(self.now, &self.timeouts) {
                self.ended.push((*conn, reason));
                self.conn = None;
            } else if conn.is_reuse(segment) {
                self.ended.push((*conn, end_reason::REUSED));
                self.conn = None;
            }
        }
        let now = self.now;
        let timeouts = self.timeouts;
        let conn = self.conn.get_or_insert_with(|| {
            let likely = likely_server_port_set();
            let flip = flip_at_creation(segment, |port| {
                likely[port as usize / 64] & (1 << (port % 64)) != 0
            });
            let mut conn = Conn::zeroed();
            conn.init(from_a, segment, flip, now);
            conn
        });
        // As the kernel does: the established fast path first, the full
        // state machine for anything it declines.
        if !conn.update_established(from_a, segment, now, timeouts.idle_ns) {
            conn.update(from_a, segment, now, &timeouts);
        }
    }

    fn handshake(&mut self) -> &mut Sim {
        self.client(SYN, 0).server(SYN | ACK, 0).client(ACK, 0)
    }

    fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("a connection")
    }

    /// The live record as it would be logged at the end of a capture.
    fn verdict(&self) -> Verdict {
        Verdict::of(self.conn(), end_reason::END_OF_INPUT)
    }

    /// Runs the clock forward until the record is due, and returns it.
    fn expire(&mut self) -> Verdict {
        let (at, reason) = self.conn().deadline(&self.timeouts);
        assert!(
            at >= self.now,
            "deadline {at} is in the past (now {})",
            self.now
        );
        self.now = at;
        assert_eq!(self.conn().due(self.now, &self.timeouts), Some(reason));
        Verdict::of(self.conn(), reason)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    conn_state: &'static str,
    history: String,
    close: &'static str,
    closed_by: Option<&'static str>,
    rst_cause: Option<&'static str>,
    pkts: (u64, u64),
}

impl Verdict {
    fn of(conn: &Conn, reason: u8) -> Verdict {
        let close = conn.close(reason);
        Verdict {
            conn_state: conn.conn_state(),
            history: String::from_utf8(conn.history().to_vec()).unwrap(),
            close: close.kind.name(),
            closed_by: close
                .closed_by
                .map(|side| if side == ORIG { "orig" } else { "resp" }),
            rst_cause: close.rst_cause,
            pkts: (conn.lane(ORIG).pkts, conn.lane(RESP).pkts),
        }
    }
}

fn expect(
    verdict: Verdict,
    conn_state: &'static str,
    history: &str,
    close: CloseKind,
    closed_by: Option<&'static str>,
    rst_cause: Option<&'static str>,
) {
    assert_eq!(
        (
            verdict.conn_state,
            verdict.history.as_str(),
            verdict.close,
            verdict.closed_by,
            verdict.rst_cause
        ),
        (conn_state, history, close.name(), closed_by, rst_cause),
        "full verdict: {verdict:?}"
    );
}

#[test]
fn s0_unanswered_syn_is_half_open_after_the_syn_timeout() {
    let mut sim = Sim::new();
    sim.client(SYN, 0);
    // A retransmission with the same ISN stays in the connection and adds no letter.
    sim.wait(1000).send_at(0, SYN, 0, 1000);
    let verdict = sim.expire();
    assert_eq!(verdict.pkts, (2, 0));
    expect(verdict, "S0", "S", CloseKind::HalfOpen, None, None);
    assert_eq!(
        sim.conn().deadline(&sim.timeouts).1,
        end_reason::SYN_TIMEOUT
    );
    assert_eq!(
        sim.conn().deadline(&sim.timeouts).0,
        sim.conn().start_ns + 5_000 * MS
    );
}

#[test]
fn s0_at_end_of_input_is_still_open() {
    let mut sim = Sim::new();
    sim.client(SYN, 0);
    expect(sim.verdict(), "S0", "S", CloseKind::Open, None, None);
}

#[test]
fn syn_after_the_syn_timeout_starts_a_new_connection() {
    let mut sim = Sim::new();
    sim.client(SYN, 0).wait(6_000).send_at(0, SYN, 0, 1000);
    assert_eq!(sim.ended.len(), 1);
    assert_eq!(sim.ended[0].1, end_reason::SYN_TIMEOUT);
    assert_eq!(sim.ended[0].0.conn_state(), "S0");
    assert_eq!(sim.conn().lane(ORIG).pkts, 1);
}

#[test]
fn s1_established_and_still_open() {
    let mut sim = Sim::new();
    sim.handshake()
        .client(ACK | PSH, 100)
        .server(ACK | PSH, 200);
    let verdict = sim.verdict();
    assert_eq!(verdict.pkts, (3, 2));
    expect(verdict, "S1", "ShADd", CloseKind::Open, None, None);
    // Byte counts by sequence space, as Zeek's Size().
    assert_eq!((sim.conn().size(ORIG), sim.conn().size(RESP)), (100, 200));
}

#[test]
fn sf_graceful_close_by_the_client() {
    let mut sim = Sim::new();
    sim.handshake()
        .client(ACK | PSH, 10)
        .server(ACK | PSH, 20)
        .client(FIN | ACK, 0)
        .server(FIN | ACK, 0)
        .client(ACK, 0);
    let verdict = sim.expire();
    assert_eq!(verdict.pkts, (5, 3));
    expect(
        verdict,
        "SF",
        "ShADdFf",
        CloseKind::Graceful,
        Some("orig"),
        None,
    );
    assert_eq!((sim.conn().size(ORIG), sim.conn().size(RESP)), (10, 20));
    // Removed the close delay after the last packet before both sides closed.
    let (at, reason) = sim.conn().deadline(&sim.timeouts);
    assert_eq!(reason, end_reason::CLOSED);
    assert_eq!(at, sim.conn().last_ns + 5_000 * MS);
}

#[test]
fn sf_graceful_close_by_the_server() {
    let mut sim = Sim::new();
    sim.handshake()
        .server(FIN | ACK, 0)
        .client(ACK, 0)
        .client(FIN | ACK, 0)
        .server(ACK, 0);
    expect(
        sim.expire(),
        "SF",
        "ShAfFa",
        CloseKind::Graceful,
        Some("resp"),
        None,
    );
}

#[test]
fn simultaneous_close_is_detected_from_the_acknowledgements() {
    let mut sim = Sim::new();
    sim.handshake();
    // Both FINs are sent before either arrives: the second does not ack the first.
    let client_fin = sim.next[0];
    let server_view = sim.received[1];
    sim.client(FIN | ACK, 0);
    sim.received[1] = server_view;
    sim.server(FIN | ACK, 0);
    sim.received[1] = client_fin + 1;
    sim.client(ACK, 0).server(ACK, 0);
    expect(
        sim.expire(),
        "SF",
        "ShAFfa",
        CloseKind::Simultaneous,
        Some("orig"),
        None,
    );
}

#[test]
fn half_close_then_close_is_graceful_and_half_close_alone_is_half_closed() {
    let mut sim = Sim::new();
    sim.handshake()
        .client(FIN | ACK, 0)
        .server(ACK | PSH, 500)
        .client(ACK, 0);
    // Only one side closed and the other is still up: Zeek keeps such a
    // connection until it goes idle; it is reported half-closed.
    let (_, reason) = sim.conn().deadline(&sim.timeouts);
    assert_eq!(reason, end_reason::IDLE);
    expect(
        sim.expire(),
        "S2",
        "ShAFd",
        CloseKind::HalfClosed,
        Some("orig"),
        None,
    );

    let mut sim = Sim::new();
    sim.handshake()
        .client(FIN | ACK, 0)
        .server(ACK | PSH, 500)
        .client(ACK, 0);
    sim.wait(2_000).server(FIN | ACK, 0).client(ACK, 0);
    let verdict = sim.expire();
    assert_eq!(verdict.pkts, (5, 3));
    expect(
        verdict,
        "SF",
        "ShAFdf",
        CloseKind::Graceful,
        Some("orig"),
        None,
    );
    assert_eq!(sim.conn().size(RESP), 500);
}

#[test]
fn s3_only_the_responder_closed() {
    let mut sim = Sim::new();
    sim.handshake().server(FIN | ACK, 0).client(ACK, 0);
    expect(
        sim.verdict(),
        "S3",
        "ShAf",
        CloseKind::HalfClosed,
        Some("resp"),
        None,
    );
}

#[test]
fn rej_connect_to_a_closed_port() {
    let mut sim = Sim::new();
    sim.client(SYN, 0);
    sim.received[1] = sim.next[0];
    sim.server(RST | ACK, 0);
    let verdict = sim.expire();
    assert_eq!(verdict.pkts, (1, 1));
    expect(
        verdict,
        "REJ",
        "Sr",
        CloseKind::Refused,
        Some("resp"),
        Some("refused"),
    );
}

#[test]
fn syn_after_rej_is_a_new_connection_even_with_the_same_isn() {
    let mut sim = Sim::new();
    sim.client(SYN, 0)
        .server(RST | ACK, 0)
        .send_at(0, SYN, 0, 1000);
    assert_eq!(sim.ended.len(), 1);
    assert_eq!(sim.ended[0].1, end_reason::REUSED);
    assert_eq!(sim.ended[0].0.conn_state(), "REJ");
}

#[test]
fn rsto_abort_by_the_client() {
    let mut sim = Sim::new();
    sim.handshake()
        .client(ACK | PSH, 10)
        .server(ACK, 0)
        .client(RST | ACK, 0);
    expect(
        sim.expire(),
        "RSTO",
        "ShADaR",
        CloseKind::Abort,
        Some("orig"),
        Some("abort"),
    );
}

#[test]
fn rstr_abort_by_the_server() {
    let mut sim = Sim::new();
    sim.handshake().client(ACK | PSH, 10).server(RST | ACK, 0);
    let verdict = sim.expire();
    assert_eq!(verdict.pkts, (3, 2));
    expect(
        verdict,
        "RSTR",
        "ShADr",
        CloseKind::Abort,
        Some("resp"),
        Some("abort"),
    );
}

#[test]
fn rstos0_client_gives_up_its_own_syn() {
    let mut sim = Sim::new();
    sim.client(SYN, 0).client(RST, 0);
    expect(
        sim.expire(),
        "RSTOS0",
        "SR",
        CloseKind::Abort,
        Some("orig"),
        Some("abort"),
    );
    assert!(rstos0_history(b"^STR"));
    assert!(!rstos0_history(b"SAR"));
    assert!(!rstos0_history(b"R"));
}

#[test]
fn rstrh_synack_then_reset_without_a_syn() {
    // The SYN was missed; the server's port is a likely server port, so the
    // roles flip at creation and the history starts with '^'.
    let mut sim = Sim::new();
    sim.ports = [CLIENT_PORT, 80];
    sim.server(SYN | ACK, 0).server(RST, 0);
    let verdict = sim.expire();
    expect(
        verdict,
        "RSTRH",
        "^hr",
        CloseKind::Abort,
        Some("resp"),
        Some("abort"),
    );
    assert_ne!(sim.conn().flags & flag::FLIPPED, 0);
    assert_ne!(sim.conn().flags & flag::ORIG_GUESSED, 0);
}

#[test]
fn sh_syn_then_fin_without_an_answer() {
    let mut sim = Sim::new();
    sim.client(SYN, 0).client(FIN, 0);
    expect(
        sim.expire(),
        "SH",
        "SF",
        CloseKind::HalfClosed,
        Some("orig"),
        None,
    );
}

#[test]
fn shr_lone_fin_from_a_likely_server() {
    let mut sim = Sim::new();
    sim.ports = [CLIENT_PORT, 80];
    sim.server(FIN | ACK, 0).client(ACK, 0);
    expect(
        sim.expire(),
        "SHR",
        "^fA",
        CloseKind::HalfClosed,
        Some("resp"),
        None,
    );
    assert_eq!((sim.conn().size(ORIG), sim.conn().size(RESP)), (0, 0));
}

#[test]
fn oth_midstream_data_without_handshake() {
    let mut sim = Sim::new();
    sim.client(ACK | PSH, 10).server(ACK | PSH, 10);
    expect(sim.verdict(), "OTH", "Dd", CloseKind::Open, None, None);
    assert_ne!(sim.conn().flags & flag::ORIG_GUESSED, 0);
}

#[test]
fn midstream_data_goes_idle_after_the_idle_timeout() {
    let mut sim = Sim::new();
    sim.client(ACK | PSH, 10).server(ACK | PSH, 10);
    let verdict = sim.expire();
    assert_eq!(sim.conn().deadline(&sim.timeouts).1, end_reason::IDLE);
    expect(verdict, "OTH", "Dd", CloseKind::Idle, None, None);
}

#[test]
fn midstream_both_fins_is_sf() {
    let mut sim = Sim::new();
    sim.ports = [51476, 8118];
    sim.client(ACK | PSH, 45)
        .server(ACK, 0)
        .client(FIN | ACK, 0)
        .server(FIN | ACK, 0);
    sim.client(ACK, 0);
    expect(
        sim.expire(),
        "SF",
        "DaFfA",
        CloseKind::Graceful,
        Some("orig"),
        None,
    );
}

#[test]
fn unknown_connection_reset_answers_a_stray_segment() {
    let mut sim = Sim::new();
    sim.client(ACK | PSH, 10);
    sim.server(RST, 0);
    expect(
        sim.expire(),
        "RSTRH",
        "Dr",
        CloseKind::Abort,
        Some("resp"),
        Some("unknown_connection"),
    );
}

#[test]
fn lone_reset_is_oth_and_unknown_connection() {
    let mut sim = Sim::new();
    sim.client(RST, 0);
    expect(
        sim.expire(),
        "OTH",
        "R",
        CloseKind::Abort,
        Some("orig"),
        Some("unknown_connection"),
    );
}

#[test]
fn reset_after_fin_is_after_fin() {
    // The client half-closes, the server closes with unread data: RST.
    let mut sim = Sim::new();
    sim.handshake()
        .client(ACK | PSH, 10)
        .client(FIN | ACK, 0)
        .server(RST | ACK, 0);
    let verdict = sim.expire();
    expect(
        verdict,
        "RSTR",
        "ShADFr",
        CloseKind::Abort,
        Some("orig"),
        Some("after_fin"),
    );
}

#[test]
fn reset_after_both_fins_keeps_the_graceful_close() {
    let mut sim = Sim::new();
    sim.handshake()
        .client(FIN | ACK, 0)
        .server(FIN | ACK, 0)
        .server(RST, 0);
    let verdict = sim.expire();
    expect(
        verdict,
        "SF",
        "ShAFfr",
        CloseKind::Graceful,
        Some("orig"),
        Some("after_fin"),
    );
}

#[test]
fn retransmitted_fin_adds_no_letter_and_counts_packets() {
    let mut sim = Sim::new();
    sim.handshake();
    let fin_seq = sim.next[0];
    sim.client(FIN | ACK, 0).send_at(0, FIN | ACK, 0, fin_seq);
    sim.server(FIN | ACK, 0).client(ACK, 0);
    let verdict = sim.expire();
    assert_eq!(verdict.pkts, (5, 2));
    expect(
        verdict,
        "SF",
        "ShAFf",
        CloseKind::Graceful,
        Some("orig"),
        None,
    );
}

#[test]
fn fin_after_more_data_repeats_the_letter() {
    let mut sim = Sim::new();
    sim.handshake();
    let fin_seq = sim.next[0];
    sim.send_at(0, FIN | ACK, 0, fin_seq);
    // A FIN at a later sequence (more data went first): a second 'F'.
    sim.send_at(0, FIN | ACK, 0, fin_seq + 100);
    assert_eq!(sim.verdict().history, "ShAFF");
}

#[test]
fn repeated_reset_at_the_same_sequence_is_one_letter() {
    let mut sim = Sim::new();
    sim.handshake();
    let seq = sim.next[0];
    sim.send_at(0, RST, 0, seq)
        .send_at(0, RST, 0, seq)
        .send_at(0, RST, 0, seq + 7);
    let verdict = sim.expire();
    assert_eq!(verdict.pkts, (5, 1));
    expect(
        verdict,
        "RSTO",
        "ShARR",
        CloseKind::Abort,
        Some("orig"),
        Some("abort"),
    );
}

#[test]
fn reordered_fin_before_the_last_data_segment() {
    // The FIN overtakes the last data segment on the wire: that segment then
    // ends below the highest sequence seen and counts as a retransmission.
    let mut sim = Sim::new();
    sim.handshake();
    let data_seq = sim.next[0];
    sim.send_at(0, FIN | ACK, 0, data_seq + 100);
    sim.send_at(0, ACK | PSH, 100, data_seq);
    sim.next[0] = data_seq + 101;
    sim.received[1] = data_seq + 101;
    sim.server(FIN | ACK, 0).client(ACK, 0);
    let verdict = sim.expire();
    expect(
        verdict,
        "SF",
        "ShAFDTf",
        CloseKind::Graceful,
        Some("orig"),
        None,
    );
    assert_eq!(sim.conn().size(ORIG), 100);
}

#[test]
fn reset_overtaking_a_fin_keeps_the_reset() {
    // Out of order: the server's RST arrives before the FIN it followed.
    let mut sim = Sim::new();
    sim.handshake();
    let fin_seq = sim.next[1];
    sim.send_at(1, RST | ACK, 0, fin_seq + 1);
    sim.send_at(1, FIN | ACK, 0, fin_seq);
    // RESET is final for Zeek: the late FIN changes no state.
    let verdict = sim.expire();
    assert_eq!(verdict.conn_state, "RSTR");
    assert_eq!(verdict.close, "abort");
    assert_eq!(verdict.rst_cause, Some("abort"));
}

#[test]
fn server_fin_reverts_a_closed_then_reset_client() {
    // irc starttls: client FIN, client RST, then the server's FIN: SF.
    let mut sim = Sim::new();
    sim.handshake().client(ACK | PSH, 5).server(ACK | PSH, 5);
    sim.client(FIN | ACK, 0)
        .client(RST | ACK, 0)
        .server(FIN | ACK, 0);
    let verdict = sim.expire();
    expect(
        verdict,
        "SF",
        "ShADdFRf",
        CloseKind::Abort,
        Some("orig"),
        Some("after_fin"),
    );
}

#[test]
fn synack_first_flips_on_the_second_packet() {
    // Both ports likely servers: not flipped at creation; the client's ACK
    // flips the roles after the fact (Zeek's local-flip trace).
    let mut sim = Sim::new();
    sim.ports = [1080, 8000];
    sim.server(SYN | ACK, 0)
        .client(ACK, 0)
        .client(ACK | PSH, 10)
        .server(ACK | PSH, 10);
    sim.client(FIN | ACK, 0).server(FIN | ACK, 0);
    let verdict = sim.expire();
    assert_eq!(verdict.pkts, (3, 3));
    expect(
        verdict,
        "SF",
        "^hADdFf",
        CloseKind::Graceful,
        Some("orig"),
        None,
    );
    assert_eq!(
        sim.conn().orig_is_a,
        1,
        "the client is endpoint a and the originator"
    );
}

#[test]
fn reversed_handshake_flips_when_the_syn_follows_the_synack() {
    let mut sim = Sim::new();
    // The SYN-ACK is seen first (no likely port involved), then the SYN.
    sim.ports = [40000, 40001];
    let server_isn = sim.next[1];
    sim.received[1] = 1001;
    sim.server(SYN | ACK, 0);
    sim.send_at(0, SYN, 0, 1000);
    let conn = sim.conn();
    assert_eq!(conn.orig_is_a, 1, "the SYN's sender becomes the originator");
    assert_eq!(conn.ep[ORIG].state, 4);
    assert_eq!(conn.ep[RESP].state, 4);
    assert_eq!(conn.ep[RESP].start_seq, server_isn);
    assert_eq!(conn.history(), b"Hs^");
}

#[test]
fn syn_with_a_new_isn_on_an_open_connection_is_reuse() {
    let mut sim = Sim::new();
    sim.handshake();
    sim.send_at(0, SYN, 0, 777_777);
    assert_eq!(sim.ended.len(), 1);
    assert_eq!(sim.ended[0].1, end_reason::REUSED);
    assert_eq!(sim.ended[0].0.conn_state(), "S1");
}

#[test]
fn idle_established_connection_ends_as_idle() {
    let mut sim = Sim::new();
    sim.timeouts.idle_ns = 2_000 * MS;
    sim.handshake();
    let verdict = sim.expire();
    expect(verdict, "S1", "ShA", CloseKind::Idle, None, None);
}

#[test]
fn zero_window_and_scaled_letters() {
    let mut sim = Sim::new();
    sim.handshake();
    let segment = Segment {
        flags: ACK,
        seq: sim.next[1],
        ack: sim.received[1],
        window: 0,
        len: 0,
        ip_len: 40,
        src_port: SERVER_PORT,
        dst_port: CLIENT_PORT,
    };
    for _ in 0..10 {
        sim.deliver(false, &segment);
    }
    // Letters at the 1st and 10th zero window.
    assert_eq!(sim.conn().history(), b"ShAaww");
}

#[test]
fn byte_counts_survive_sequence_wraparound() {
    let mut sim = Sim::new();
    sim.next = [u32::MAX - 10, 7];
    sim.handshake().client(ACK | PSH, 100).server(ACK, 0);
    assert_eq!(sim.conn().size(ORIG), 100);
}

#[test]
fn history_is_capped_and_flagged() {
    let mut sim = Sim::new();
    sim.handshake();
    let seq = sim.next[0];
    for i in 0..60 {
        sim.send_at(0, RST, 0, seq + i);
    }
    assert_eq!(
        sim.conn().history().len(),
        teardown_common::conn::HISTORY_CAP
    );
    assert_ne!(sim.conn().flags & flag::HISTORY_TRUNCATED, 0);
}

#[test]
fn every_conn_state_is_reachable_here() {
    // Guards the table above: if a rule breaks, one of these names disappears.
    let mut seen = std::collections::BTreeSet::new();
    let cases: [fn(&mut Sim); 13] = [
        |s| {
            s.client(SYN, 0);
        },
        |s| {
            s.handshake();
        },
        |s| {
            s.handshake().client(FIN | ACK, 0).server(FIN | ACK, 0);
        },
        |s| {
            s.client(SYN, 0).server(RST | ACK, 0);
        },
        |s| {
            s.handshake().client(FIN | ACK, 0);
        },
        |s| {
            s.handshake().server(FIN | ACK, 0);
        },
        |s| {
            s.handshake().client(RST, 0);
        },
        |s| {
            s.handshake().server(RST, 0);
        },
        |s| {
            s.client(SYN, 0).client(RST, 0);
        },
        |s| {
            s.ports = [CLIENT_PORT, 80];
            s.server(SYN | ACK, 0).server(RST, 0);
        },
        |s| {
            s.client(SYN, 0).client(FIN, 0);
        },
        |s| {
            s.ports = [CLIENT_PORT, 80];
            s.server(FIN | ACK, 0);
        },
        |s| {
            s.client(ACK, 10);
        },
    ];
    for case in cases {
        let mut sim = Sim::new();
        case(&mut sim);
        seen.insert(sim.conn().conn_state());
    }
    let all = [
        "S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH",
    ];
    assert_eq!(seen, all.into_iter().collect(), "states reached");
    let _ = RESP;
}

/// What the flood detector counts as a completed handshake: the
/// originator's acknowledgement of the SYN-ACK, never the SYN-ACK alone
/// (a host answers spoofed SYNs too), and never on the established fast
/// path, which does not change the history bits, so the kernel can count
/// completions in its slow path alone.
#[test]
fn a_handshake_completes_with_the_originators_ack_of_the_syn_ack() {
    let mut sim = Sim::new();
    sim.client(SYN, 0);
    assert!(!sim.conn().handshake_completed(), "after the SYN");
    sim.server(SYN | ACK, 0);
    assert!(!sim.conn().handshake_completed(), "after the SYN-ACK alone");
    let mut probe = *sim.conn();
    let third = Segment {
        flags: ACK,
        seq: sim.next[0],
        ack: sim.received[0],
        window: 64_000,
        len: 0,
        ip_len: 40,
        src_port: CLIENT_PORT,
        dst_port: SERVER_PORT,
    };
    assert!(
        !probe.update_established(true, &third, sim.now, Timeouts::ZEEK.idle_ns),
        "the completing ACK must take the slow path"
    );
    sim.client(ACK, 0);
    assert!(sim.conn().handshake_completed(), "after the third ACK");

    // Data in place of the pure third ACK completes it too.
    let mut sim = Sim::new();
    sim.client(SYN, 0)
        .server(SYN | ACK, 0)
        .client(ACK | PSH, 100);
    assert!(
        sim.conn().handshake_completed(),
        "data acknowledging the SYN-ACK"
    );

    // A spoofed source's host answers the SYN-ACK with a RST.
    let mut sim = Sim::new();
    sim.client(SYN, 0).server(SYN | ACK, 0).client(RST, 0);
    assert!(!sim.conn().handshake_completed(), "a RST is no completion");

    // The SYN went untracked (over the half-open budget): the record starts
    // at the SYN-ACK, and the ACK still completes it.
    let mut sim = Sim::new();
    sim.server(SYN | ACK, 0);
    assert!(!sim.conn().handshake_completed(), "the SYN-ACK alone");
    sim.client(ACK, 0);
    assert!(
        sim.conn().handshake_completed(),
        "the ACK after an untracked SYN"
    );

    // Refused, and picked up midstream: never.
    let mut sim = Sim::new();
    sim.client(SYN, 0).server(RST | ACK, 0);
    assert!(!sim.conn().handshake_completed(), "refused");
    let mut sim = Sim::new();
    sim.client(ACK, 10).server(ACK, 0).client(ACK, 10);
    assert!(!sim.conn().handshake_completed(), "no handshake seen");
}

/// A flooded host that answers every SYN leaves records of a SYN and a
/// SYN-ACK only; those may be evicted, anything with a conversation not.
#[test]
fn only_unacknowledged_handshakes_are_pending() {
    let mut sim = Sim::new();
    sim.client(SYN, 0);
    assert!(!sim.conn().handshake_pending(), "a SYN alone is half-open");
    sim.server(SYN | ACK, 0);
    assert!(sim.conn().handshake_pending(), "SYN and SYN-ACK");
    sim.server(SYN | ACK, 0);
    assert!(sim.conn().handshake_pending(), "a retransmitted SYN-ACK");
    sim.client(ACK, 0);
    assert!(!sim.conn().handshake_pending(), "acknowledged");

    let mut sim = Sim::new();
    sim.client(SYN, 0).server(SYN | ACK, 0).client(RST, 0);
    assert!(!sim.conn().handshake_pending(), "reset by the originator");
    let mut sim = Sim::new();
    sim.client(ACK, 10).server(ACK, 0);
    assert!(!sim.conn().handshake_pending(), "midstream");
    let mut sim = Sim::new();
    sim.server(SYN | ACK, 0);
    assert!(!sim.conn().handshake_pending(), "a SYN-ACK alone");
}

/// A closed connection, then the next one on the same ports whose SYN the
/// monitor missed: its SYN-ACK starts a record of its own (Zeek would
/// append it to the closed one).
#[test]
fn a_syn_ack_with_a_new_isn_after_a_close_starts_a_new_record() {
    let mut sim = Sim::new();
    sim.handshake();
    sim.client(ACK, 100).server(ACK, 0);
    sim.client(FIN | ACK, 0).server(FIN | ACK, 0).client(ACK, 0);
    // The next connection's SYN is not seen; its SYN-ACK carries a new ISN.
    sim.next = [9_000, 90_000];
    sim.received[0] = 9_001;
    sim.server(SYN | ACK, 0).client(ACK, 0);
    assert_eq!(sim.ended.len(), 1, "the closed connection is ended");
    assert_eq!(sim.ended[0].1, end_reason::REUSED);
    assert_eq!(sim.ended[0].0.conn_state(), "SF");
    assert_eq!(sim.ended[0].0.history(), b"ShADaFf");
    // The new record starts at the SYN-ACK and learns who the client is.
    assert_eq!(sim.conn().lane(ORIG).pkts + sim.conn().lane(RESP).pkts, 2);
}

/// After an abort too; but a retransmitted SYN-ACK (the old ISN) is not a
/// new connection, and neither is a SYN-ACK on an open one.
#[test]
fn only_a_new_isn_on_an_ended_connection_is_reuse_for_a_syn_ack() {
    let mut sim = Sim::new();
    sim.handshake();
    sim.client(RST, 0);
    let ended = sim.conn();
    let old_synack = Segment {
        flags: SYN | ACK,
        seq: 50_000,
        ack: 1_001,
        window: 64_000,
        len: 0,
        ip_len: 40,
        src_port: SERVER_PORT,
        dst_port: CLIENT_PORT,
    };
    assert!(!ended.is_reuse(&old_synack), "a retransmission");
    assert!(ended.is_reuse(&Segment {
        seq: 123_456,
        ..old_synack
    }));
    let mut open = Sim::new();
    open.handshake();
    assert!(!open.conn().is_reuse(&Segment {
        seq: 123_456,
        ..old_synack
    }));
}

/// Segments the monitor never saw show up as missed bytes, on the side that
/// sent them; IP bytes count every segment's whole datagram.
#[test]
fn gaps_are_missed_bytes_and_ip_bytes_count_whole_datagrams() {
    let mut sim = Sim::new();
    sim.handshake();
    sim.client(ACK | PSH, 100);
    // 300 bytes of the client's go unseen.
    sim.next[0] += 300;
    sim.client(ACK | PSH, 50).server(ACK, 0);
    // A retransmission of seen data is not a gap.
    let seq = sim.next[0] - 50;
    sim.send_at(0, ACK | PSH, 50, seq);
    let conn = sim.conn();
    assert_eq!(conn.lane(ORIG).missed_bytes, 300);
    assert_eq!(conn.lane(RESP).missed_bytes, 0);
    // Client: SYN, ACK, 100, 50, 50 bytes of payload, 40 bytes of headers each.
    assert_eq!(conn.lane(ORIG).ip_bytes, 5 * 40 + 200);
    assert_eq!(conn.lane(RESP).ip_bytes, 2 * 40);
    // Zeek's size counts the sequence space, gap included.
    assert_eq!(conn.size(ORIG), 450);
}

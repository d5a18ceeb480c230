//! Inputs `cargo xtask fuzz` found to break a promise, kept as ordinary
//! tests so the fix stays. Each says which target found it and what went
//! wrong; the input is written out in the types of the code it broke.

use teardown_common::conn::{Conn, LIKELY_SERVER_PORTS, Segment, Timeouts, flip_at_creation};

/// `conn_state`: a record created at the end of the clock (a pcapng
/// timestamp past what u64 nanoseconds hold saturates to `u64::MAX`)
/// overflowed the expire timer's next firing: a panic in a debug build,
/// and in release a deadline wrapped into the past, which closed the
/// record as soon as user space looked at it.
#[test]
fn a_record_at_the_end_of_the_clock_has_a_deadline() {
    // The minimised input: a segment with an incomplete header (the record
    // is created, not updated), then another at the same time.
    let first = Segment {
        flags: 0x7e,
        seq: 4_286_463_666,
        ack: 2_118_038_078,
        window: 65_535,
        len: 32_511,
        ip_len: 32_551,
        src_port: 65_535,
        dst_port: 255,
    };
    let second = Segment {
        flags: 0x81,
        seq: 796_819_070,
        ack: 2_109_567_024,
        window: 1,
        len: 33_026,
        ip_len: 33_066,
        src_port: 255,
        dst_port: 65_535,
    };
    let timeouts = Timeouts {
        syn_ns: 100_000_000,
        idle_ns: 1_270_000_000_000,
        ..Timeouts::ZEEK
    };
    let likely_server = |port| LIKELY_SERVER_PORTS.contains(&port);
    let now = u64::MAX;
    let mut conn = Conn::zeroed();
    conn.init(false, &first, flip_at_creation(&first, likely_server), now);
    assert_eq!(conn.deadline(&timeouts).0, u64::MAX);
    assert_eq!(conn.due(now - 1, &timeouts), None);
    // As the kernel does for the next segment: close out if due, then update.
    if conn.due(now, &timeouts).is_some() {
        conn.init(true, &second, flip_at_creation(&second, likely_server), now);
    }
    conn.update(true, &second, now, &timeouts);
    let (at, _) = conn.deadline(&timeouts);
    assert_eq!(at, u64::MAX);

    // The same a little earlier: the timer fires at the clock's end, not
    // at a wrapped time before the record's last packet.
    let now = u64::MAX - 3_000_000_000;
    let mut conn = Conn::zeroed();
    conn.init(false, &first, flip_at_creation(&first, likely_server), now);
    assert!(conn.deadline(&timeouts).0 > now);
}

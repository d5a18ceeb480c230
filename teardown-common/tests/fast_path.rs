//! The established-connection fast path must leave every record exactly as
//! the full state machine would. Checked over random exchanges that mix
//! handshakes, data, pure ACKs, retransmissions, reordering, zero windows,
//! sequence wraps, FINs, RSTs and long pauses.

use teardown_common::conn::{Conn, Segment, Timeouts, flip_at_creation};
use teardown_common::parse::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};

/// xorshift64*: deterministic, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How an exchange starts.
#[derive(Clone, Copy, PartialEq)]
enum Start {
    /// Mostly with a handshake.
    Handshake,
    /// Mid-stream: a connection already open when teardown started.
    Midstream,
    /// Mid-stream, and only one side is ever seen (asymmetric routing).
    OneSided,
}

/// One random segment from `side`, mostly plausible, sometimes not.
fn segment(rng: &mut Rng, next: &mut [u32; 2], side: usize, step: usize, start: Start) -> Segment {
    let step = if start == Start::Handshake {
        step
    } else {
        3 + step
    };
    let flags = match (step, rng.below(1000)) {
        // Mostly a proper handshake first, so the connection gets established.
        (0, 0..=899) => SYN,
        (1, 0..=899) => SYN | ACK,
        (2, 0..=899) => ACK,
        (_, 0..=4) => SYN,
        (_, 5..=9) => SYN | ACK,
        (_, 10..=19) => FIN | ACK,
        (_, 20..=22) => RST,
        (_, 23..=25) => RST | ACK,
        (_, 26..=30) => 0,
        (_, 31..=40) => ACK | URG,
        (_, 41..=500) => ACK | PSH,
        _ => ACK,
    };
    let len = if flags & (SYN | RST) == 0 && rng.chance(50) {
        1 + rng.below(1460) as u32
    } else {
        0
    };
    let seq = if rng.chance(4) {
        // A retransmission or reordered segment.
        next[side].wrapping_sub(rng.below(4000) as u32)
    } else if rng.chance(2) {
        // A segment after a gap: what came before it was not seen.
        let ahead = next[side].wrapping_add(1 + rng.below(3000) as u32);
        next[side] = ahead;
        ahead
    } else {
        next[side]
    };
    if seq == next[side] {
        let used = len + (flags & SYN != 0) as u32 + (flags & FIN != 0) as u32;
        next[side] = next[side].wrapping_add(used);
    }
    let ack = if rng.chance(2) {
        rng.next() as u32
    } else {
        next[1 - side].wrapping_sub(rng.below(3000) as u32)
    };
    Segment {
        flags,
        seq,
        ack,
        window: if rng.chance(2) { 0 } else { 65_000 },
        len,
        ip_len: 20 + 32 + len,
        src_port: [40_000, 443][side],
        dst_port: [443, 40_000][side],
    }
}

#[test]
fn fast_path_leaves_every_record_as_the_state_machine_would() {
    let timeouts = Timeouts::ZEEK;
    // Segments the fast path took, by how their exchange started.
    let mut taken = [0u64; 3];
    for seed in 1..=3_000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let start = [Start::Handshake, Start::Midstream, Start::OneSided][(seed % 3) as usize];
        // Start near the wrap point sometimes, so wraps are exercised.
        let mut next = if rng.chance(30) {
            [u32::MAX - rng.below(50_000) as u32, u32::MAX - 10_000]
        } else {
            [rng.next() as u32, rng.next() as u32]
        };
        let mut now = 1_000_000_000u64;
        let mut slow: Option<Conn> = None;
        let mut both: Option<Conn> = None;
        for step in 0..200 {
            let side = if start == Start::OneSided {
                0
            } else if step < 3 && rng.chance(90) {
                step % 2
            } else {
                rng.below(2) as usize
            };
            let seg = segment(&mut rng, &mut next, side, step, start);
            now += match rng.below(100) {
                0 if rng.chance(30) => timeouts.idle_ns + rng.below(10) * 1_000_000_000,
                1..=3 => rng.below(10) * 1_000_000_000,
                _ => rng.below(2_000_000),
            };
            let from_a = side == 0;
            let (Some(reference), Some(candidate)) = (slow.as_mut(), both.as_mut()) else {
                let mut conn = Conn::zeroed();
                conn.init(from_a, &seg, flip_at_creation(&seg, |p| p == 443), now);
                conn.update(from_a, &seg, now, &timeouts);
                slow = Some(conn);
                both = Some(conn);
                continue;
            };
            let before = *candidate;
            let fast = candidate.update_established(from_a, &seg, now, timeouts.idle_ns);
            if fast {
                taken[start as usize] += 1;
            } else {
                assert_eq!(
                    *candidate, before,
                    "seed {seed} step {step}: a declined segment changed the record"
                );
                candidate.update(from_a, &seg, now, &timeouts);
            }
            reference.update(from_a, &seg, now, &timeouts);
            // The fast path counts in the sender's lane until the slow path
            // (or user space's copy) takes the lane into the record.
            let mut folded = *candidate;
            folded.fold_lanes();
            assert_eq!(
                &mut folded, reference,
                "seed {seed} step {step}: {seg:?} (fast path {fast}) diverged"
            );
        }
    }
    // The exchanges must actually exercise the fast path, each way they
    // start, or this proves nothing.
    println!(
        "fast path taken for {taken:?} of {} segments each (handshake, midstream, one-sided)",
        1_000 * 199
    );
    for (start, count) in ["handshake", "midstream", "one-sided"].iter().zip(taken) {
        assert!(
            count > 30_000,
            "fast path taken only {count} times ({start})"
        );
    }
}

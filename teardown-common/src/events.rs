//! What the kernel tells user space about flows: ring-buffer events, the
//! changed-slot bitmap and the per-CPU flow-table statistics.

use crate::conn::Conn;
use crate::flow::FlowKey;

/// Default number of connections the flow table holds (`--max-flows`).
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;
/// Bytes of the event ring buffer: room for about 12 000 ended-connection
/// events (328 bytes each with the ring's header) between two polls. A
/// client whose connections are refused at 30 000/s reuses its ports within
/// half a second, and each reuse closes a record out in the kernel: with
/// a quarter of this, 5 000 of 20 000 such records were lost
/// (`cargo xtask bench --resets`).
pub const EVENTS_BYTES: u32 = 4 << 20;

/// Slots per word of the changed-slot bitmap. The kernel sets a slot's bit
/// (an atomic OR) when the slot gets a new record or its deadline moves
/// earlier; user space swaps each word with zero and looks at those slots
/// only. Cheaper than a ring-buffer notice per new connection, which would
/// cost a SYN flood's every packet as much as the parse.
pub const SLOTS_PER_CHANGE_WORD: u32 = 64;

/// Room in [`ChangedWords::words`]: more than one packet marks (a record
/// closed out and a new one begun, or an evicted one replaced, in one set).
pub const CHANGED_WORDS_CAPACITY: usize = 7;

/// For a replay only (`teardown replay`, which takes the changes after
/// every packet, one test run at a time on one thread): which words of the
/// changed-slot bitmap the kernel marked since user space last set `count`
/// to 0, so that it swaps those words, not all of them (with the default
/// table, 2,048 words per packet were a third of a large replay's time).
/// A `count` above [`CHANGED_WORDS_CAPACITY`] says some were not listed:
/// user space then takes every word. Live, the kernel never writes it (the
/// `NOTE_CHANGED_WORDS` global is 0, and the verifier drops the code).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangedWords {
    /// Words marked; the first [`CHANGED_WORDS_CAPACITY`] are listed.
    pub count: u64,
    /// Indexes into the bitmap.
    pub words: [u64; CHANGED_WORDS_CAPACITY],
}

const _: () = assert!(core::mem::size_of::<ChangedWords>() == 64);

/// [`EventHeader::kind`] values.
pub mod kind {
    /// The kernel closed a record out itself (a new SYN reused the ports, a
    /// packet arrived after the record's deadline, or a new connection took
    /// the slot of a record past its deadline); the record follows.
    pub const ENDED: u32 = 3;
}

/// Every event starts with this.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// [`crate::conn::end_reason`] for [`kind::ENDED`], else 0.
    pub reason: u32,
    /// Kernel monotonic time (or capture time in a replay) of the packet.
    pub time_ns: u64,
    pub key: FlowKey,
    /// The flow-table slot and the generation of the record in it.
    pub slot: u32,
    pub generation: u32,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 64);

/// A [`kind::ENDED`] event: the header and the final record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndedEvent {
    pub header: EventHeader,
    pub conn: Conn,
}

const _: () = assert!(core::mem::size_of::<EndedEvent>() == 64 + core::mem::size_of::<Conn>());

/// Flow-table bookkeeping, one slot per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Records created (new connections, including ones split off by reuse).
    pub created: u64,
    /// Segments of connections not tracked: both slots of their set held
    /// live two-sided connections. Counted per segment, as nothing is kept
    /// of a connection that found no slot: one such connection counts once
    /// for each of its segments.
    pub insert_failed: u64,
    /// One-sided records (half-open SYNs, lone midstream segments) and
    /// unacknowledged handshakes pushed out of a full set by a new
    /// connection before they ended.
    pub evicted: u64,
    /// Events dropped because the ring buffer was full.
    pub events_lost: u64,
    /// Records the kernel closed out itself (reuse, or a late packet).
    pub ended_in_kernel: u64,
    /// Handshakes that became half-open (SYN sent, no answer yet).
    pub half_open_started: u64,
    /// Half-open handshakes answered, reset, closed, evicted or closed out by
    /// the kernel.
    pub half_open_resolved: u64,
    /// TCP segments whose header was cut short: they create a record but
    /// change nothing (as in Zeek).
    pub truncated_segments: u64,
    /// Pure SYNs not looked up at all because this CPU had used its budget
    /// of new half-open records for the window ([`HALF_OPEN_WINDOW_NS`]): a
    /// SYN flood. Counted in the tallies all the same; the connection, if it
    /// is real, is tracked from its SYN-ACK on.
    pub syn_untracked: u64,
    /// Pure SYNs not counted per destination: their destination's slot in
    /// this CPU's table ([`crate::dest`]) belonged to another, active one.
    pub dest_collisions: u64,
    /// Segments not applied to their record because another CPU held the
    /// record's slot for longer than the wait for it, a millisecond (see
    /// the flow table's sequence lock). Expected to stay 0: an update holds
    /// it for well under a microsecond; only a holder stopped for longer
    /// (on a VM, its virtual CPU taken away) outlasts the wait.
    pub lock_contended: u64,
    /// Pure SYN-ACKs of connections with no record (their SYN was not
    /// tracked: under a SYN flood, the host's SYN-cookie replies to spoofed
    /// SYNs) that found this CPU over its budget of new half-open records
    /// ([`Admission`]): not tracked. The connection, if it is real, is
    /// tracked from its next segment on.
    pub synack_untracked: u64,
    /// Segments of connections with no record, other than pure SYNs and
    /// SYN-ACKs (an ACK, data, a FIN or a RST of a connection whose
    /// handshake was not seen), that found this CPU over its budget of new
    /// mid-stream records ([`Admission::admit_midstream`]): not tracked.
    /// Under an ACK flood (random sources) each would otherwise start a
    /// one-sided record and push another out. A real connection is tracked
    /// from a later segment, once the budget allows.
    pub midstream_untracked: u64,
    /// Connections seen through a tunnel when the kernel's table of
    /// tunnels was full ([`crate::tunnel::TUNNEL_CAPACITY`]): their records
    /// name the tunnel's kind only.
    pub tunnels_unrecorded: u64,
}

/// The window of the per-CPU budget of new half-open records, as a power
/// of two: 2^27 ns, about 134 ms.
///
/// A power of two so that a packet's window is a shift
/// ([`half_open_window`]). It was 100 ms: BPF has no multiply-high, so
/// LLVM cannot turn a 64-bit division by a constant into a multiplication
/// there, and every SYN and every pure SYN-ACK paid a hardware divide. A
/// profile of a live random-source flood (`perf record -e cpu-clock`,
/// samples mapped to instructions through the programs' line info) put a
/// third of the TC egress program's time on that one instruction.
pub const HALF_OPEN_WINDOW_SHIFT: u32 = 27;

/// [`HALF_OPEN_WINDOW_SHIFT`] in nanoseconds.
pub const HALF_OPEN_WINDOW_NS: u64 = 1 << HALF_OPEN_WINDOW_SHIFT;

/// The admission window (`now / HALF_OPEN_WINDOW_NS`) of the time `now`.
#[inline(always)]
pub const fn half_open_window(now: u64) -> u64 {
    now >> HALF_OPEN_WINDOW_SHIFT
}

/// New half-open records a CPU may create per window while under pressure
/// ([`Admission`]), for a table of `slots` slots and a SYN timeout of
/// `syn_timeout_ns` on `cpus` CPUs: at that rate, half-open records fill at
/// most half the table before they time out.
pub fn half_open_budget(slots: u32, syn_timeout_ns: u64, cpus: u32) -> u64 {
    let windows = (syn_timeout_ns / HALF_OPEN_WINDOW_NS).max(1);
    (slots as u64 / 2 / windows / cpus.max(1) as u64).max(16)
}

/// Signs of pressure in one window (half-open records pushed out of the
/// table, SYNs refused by the budget) that put the next window under the
/// budget.
pub const PRESSURE_THRESHOLD: u64 = 64;

/// One CPU's admission of new half-open records (pure SYNs).
///
/// A SYN is always looked up and tracked while the table copes: a burst of
/// legitimate connections, however fast, never loses its SYNs. The table
/// is under pressure when new connections have to push half-open records
/// out of it (a SYN flood's debris fills it): then, from the next window
/// on, at most the budget ([`half_open_budget`]) of SYNs per window are
/// tracked, and the rest are only counted, which spares a flood's every
/// packet the table's cache misses. Pressure lasts while its signs do (the
/// SYNs the budget refuses count as signs too, so a flood held at the
/// budget stays under it). A legitimate connection whose SYN went
/// untracked is tracked from its SYN-ACK on.
///
/// A pure SYN-ACK that finds no record would start one (for a connection
/// whose SYN was missed), so it asks the same admission, from the same
/// budget: under a flood, the host's replies to spoofed SYNs (SYN cookies)
/// are looked up but do not fill the table one record each, and their
/// refusals count as signs of pressure like the SYNs'. A real connection
/// whose SYN and SYN-ACK both found the budget spent is tracked from its
/// next segment on (a midstream record). Without pressure every such
/// SYN-ACK is tracked, as before.
///
/// Segments that are neither, of connections with no record (an ACK, data,
/// a FIN or a RST whose handshake was not seen: every connection already
/// open when teardown starts, and an ACK flood's every packet), would
/// start a one-sided record each. Under pressure they get a budget of
/// their own, of the same size ([`Admission::admit_midstream`]): an ACK
/// flood then costs a look at the set's prints per packet (see
/// `table::PrintLine`), not a record and an eviction (about 400 ns), and a
/// SYN flood that spends the SYNs' budget leaves the
/// real connections' next segments theirs. Without pressure each is
/// tracked, as before.
///
/// Decided per CPU on the packets' own clock, so a replay of a capture
/// admits what the live run did. But the table is one, whichever CPU a
/// flood's packets arrive on: a window under pressure on any CPU is
/// stamped in a value all CPUs share (`table_pressure`, the window's
/// number plus one), and a CPU entering a new window is limited if the
/// window before it, or this one, was under pressure on any CPU. Without
/// it a CPU the flood moves to (the scheduler moves the sender, an idle
/// CPU takes a softirq) would start unlimited and admit a whole window of
/// the flood, tens of thousands of SYNs, each evicting a record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The window (`now / HALF_OPEN_WINDOW_NS`) the counts are for.
    pub window: u64,
    /// SYNs admitted or refused in this window.
    pub syns: u64,
    /// Signs of pressure in this window.
    pub pressure: u64,
    /// 1 if the budget applies in this window.
    pub limited: u64,
    /// Mid-stream starts admitted or refused in this window.
    pub midstream: u64,
}

const _: () = assert!(core::mem::size_of::<Admission>() == 5 * 8);

impl Admission {
    #[inline(always)]
    fn roll(&mut self, now: u64, table_pressure: u64) {
        let window = half_open_window(now);
        // Only forward: SYNs are admitted on the coarse clock, which runs
        // up to a tick behind the precise one that stamps evictions, so a
        // window boundary may be seen from both sides in turn; going back
        // would throw the window's counts away.
        if window > self.window {
            // Pressure carries over from the window just before only: this
            // CPU's own, or any CPU's (its stamp is that window plus one,
            // or this window's, plus one).
            let own = window == self.window.wrapping_add(1) && self.pressure >= PRESSURE_THRESHOLD;
            let shared = table_pressure >= window;
            self.limited = (own || shared) as u64;
            self.window = window;
            // Volatile: neighbouring zero stores become a `memset` call in
            // the BPF build (an inlined copy of this for each admission),
            // which the kernel refuses.
            // SAFETY: plain fields of `self`.
            unsafe {
                core::ptr::write_volatile(&mut self.syns, 0);
                core::ptr::write_volatile(&mut self.pressure, 0);
                core::ptr::write_volatile(&mut self.midstream, 0);
            }
        }
    }

    /// One more sign of pressure; the window's stamp for every CPU once
    /// there are enough (one store per window).
    #[inline(always)]
    fn press(&mut self, table_pressure: &mut u64) {
        self.pressure += 1;
        if self.pressure == PRESSURE_THRESHOLD {
            let stamp = self.window.wrapping_add(1);
            if stamp > *table_pressure {
                *table_pressure = stamp;
            }
        }
    }

    /// Whether a pure SYN at `now` may be looked up and tracked;
    /// `table_pressure` is the stamp all CPUs share.
    #[inline(always)]
    pub fn admit(&mut self, now: u64, budget: u64, table_pressure: &mut u64) -> bool {
        self.spend(now, budget, table_pressure, |admission| &mut admission.syns)
    }

    /// Whether a segment of a connection with no record, other than a pure
    /// SYN or SYN-ACK, may start a (mid-stream) record at `now`: the same
    /// policy as [`Admission::admit`], from a budget of its own, and its
    /// refusals are signs of pressure too.
    #[inline(always)]
    pub fn admit_midstream(&mut self, now: u64, budget: u64, table_pressure: &mut u64) -> bool {
        self.spend(now, budget, table_pressure, |admission| {
            &mut admission.midstream
        })
    }

    /// The policy both admissions share: one more from the window's
    /// `spent` count, refused (a sign of pressure) past `budget` while the
    /// budget applies.
    #[inline(always)]
    fn spend(
        &mut self,
        now: u64,
        budget: u64,
        table_pressure: &mut u64,
        spent: impl FnOnce(&mut Self) -> &mut u64,
    ) -> bool {
        self.roll(now, *table_pressure);
        let count = spent(self);
        *count += 1;
        let over = *count > budget;
        if self.limited != 0 && over {
            self.press(table_pressure);
            return false;
        }
        true
    }

    /// Whether the budget applies at `now`, as far as this CPU knows
    /// without asking: [`Admission::limited`] is set when the CPU rolls
    /// into a window, which it does only when it asks admission or notes
    /// an eviction, so a CPU that stops asking after a flood would keep it
    /// set for good. It counts only if that window is `now`'s or the one
    /// before. Read by the fast path to choose a cheaper way to the same
    /// answer (the flow table's prints), never to refuse anything.
    #[inline(always)]
    pub fn limited_at(&self, now: u64) -> bool {
        self.limited != 0 && half_open_window(now) <= self.window.wrapping_add(1)
    }

    /// A half-open or one-sided record pushed out of the table at `now`.
    #[inline(always)]
    pub fn note_eviction(&mut self, now: u64, table_pressure: &mut u64) {
        self.roll(now, *table_pressure);
        self.press(table_pressure);
    }
}

/// Buckets of the recent-SYN stamps ([`syn_stamp`]): a byte each, indexed
/// by a connection's set in the flow table ([`syn_bucket`]).
pub const SYN_STAMP_BUCKETS: usize = 65_536;

/// The bucket of the stamp for the connection in flow-table set `set`
/// (a set's first slot, always even).
#[inline(always)]
pub const fn syn_bucket(set: u32) -> usize {
    (set as usize >> 1) & (SYN_STAMP_BUCKETS - 1)
}

/// The stamp an admitted SYN at `now` leaves in its bucket: its admission
/// window, modulo 256.
#[inline(always)]
pub const fn syn_stamp(now: u64) -> u8 {
    half_open_window(now) as u8
}

/// Whether a bucket's `stamp` says a SYN was admitted there in this
/// window, the one before, or the one after (the SYN's time came from the
/// precise clock, `now` from the coarse one, up to a tick behind): a
/// SYN-ACK answering it may have a record. False for a bucket no admitted
/// SYN touched for a few windows, except once every 256 windows (34 s),
/// when an old stamp comes round again: then the SYN-ACK is looked up, as
/// without the stamps.
#[inline(always)]
pub const fn syn_recent(stamp: u8, now: u64) -> bool {
    syn_stamp(now).wrapping_sub(stamp).wrapping_add(1) <= 2
}

const _: () = assert!(core::mem::size_of::<FlowStats>() == 14 * 8);

impl FlowStats {
    pub fn add(&mut self, other: &FlowStats) {
        self.created += other.created;
        self.insert_failed += other.insert_failed;
        self.evicted += other.evicted;
        self.events_lost += other.events_lost;
        self.ended_in_kernel += other.ended_in_kernel;
        self.half_open_started += other.half_open_started;
        self.half_open_resolved += other.half_open_resolved;
        self.truncated_segments += other.truncated_segments;
        self.syn_untracked += other.syn_untracked;
        self.dest_collisions += other.dest_collisions;
        self.lock_contended += other.lock_contended;
        self.synack_untracked += other.synack_untracked;
        self.midstream_untracked += other.midstream_untracked;
        self.tunnels_unrecorded += other.tunnels_unrecorded;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers, byte arrays and Pod records only, no implicit
    // padding (sizes asserted above).
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndedEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = HALF_OPEN_WINDOW_NS;

    #[test]
    fn a_burst_of_syns_is_admitted_whole_without_pressure() {
        let mut admission = Admission::default();
        let mut shared = 0;
        let start = 1_000 * WINDOW;
        for i in 0..100_000 {
            assert!(admission.admit(start + i, 16, &mut shared), "SYN {i}");
        }
    }

    #[test]
    fn pressure_limits_the_next_window_and_lasts_while_its_signs_do() {
        let mut admission = Admission::default();
        let mut shared = 0;
        let budget = 100;
        let t = 1_000 * WINDOW;
        // Window 0: a flood fills the table and pushes records out.
        for i in 0..1_000 {
            assert!(admission.admit(t + i, budget, &mut shared));
            admission.note_eviction(t + i, &mut shared);
        }
        // Window 1: under the budget.
        let admitted = (0..1_000)
            .filter(|i| admission.admit(t + WINDOW + i, budget, &mut shared))
            .count();
        assert_eq!(admitted, budget as usize);
        // Window 2: the refused SYNs of window 1 keep it limited.
        let admitted = (0..1_000)
            .filter(|i| admission.admit(t + 2 * WINDOW + i, budget, &mut shared))
            .count();
        assert_eq!(admitted, budget as usize);
        // Window 3: the flood stopped in window 2's wake: a few SYNs, no
        // evictions; window 4 is free again.
        for i in 0..10 {
            admission.admit(t + 3 * WINDOW + i, budget, &mut shared);
        }
        assert!((0..1_000).all(|i| admission.admit(t + 4 * WINDOW + i, budget, &mut shared)));
    }

    #[test]
    fn the_budget_is_said_to_apply_only_while_the_flag_is_fresh() {
        let mut admission = Admission::default();
        let mut shared = 0;
        let t = 1_000 * WINDOW;
        assert!(!admission.limited_at(t));
        // A flood in window 0 limits window 1, as soon as the CPU rolls
        // into it.
        for i in 0..1_000 {
            admission.note_eviction(t + i, &mut shared);
        }
        assert!(!admission.limited_at(t + 10));
        assert!(!admission.admit_midstream(t + WINDOW, 0, &mut shared));
        assert!(admission.limited_at(t + WINDOW));
        assert!(admission.limited_at(t + 2 * WINDOW + WINDOW - 1));
        // The CPU asks nothing more: two windows on, the flag is stale.
        assert!(!admission.limited_at(t + 3 * WINDOW));
        assert!(!admission.limited_at(t + 100 * WINDOW));
    }

    #[test]
    fn a_syn_stamp_is_recent_for_its_window_and_its_neighbours_only() {
        let t = 1_000 * WINDOW + 5;
        let stamp = syn_stamp(t);
        assert!(syn_recent(stamp, t));
        assert!(syn_recent(stamp, t + WINDOW));
        assert!(
            syn_recent(stamp, t - WINDOW),
            "the precise clock runs ahead"
        );
        assert!(!syn_recent(stamp, t + 2 * WINDOW));
        assert!(!syn_recent(stamp, t + 100 * WINDOW));
        // Round again after 256 windows: looked up, which is safe.
        assert!(syn_recent(stamp, t + 256 * WINDOW));
        assert_eq!(syn_bucket(2 * SYN_STAMP_BUCKETS as u32 + 6), 3);
    }

    #[test]
    fn pressure_on_one_cpu_limits_another_that_the_flood_moves_to() {
        // One table, two CPUs, one stamp they share.
        let (mut first, mut second) = (Admission::default(), Admission::default());
        let mut shared = 0;
        let budget = 100;
        let t = 1_000 * WINDOW;
        // The flood arrives on the first CPU and fills the table.
        for i in 0..1_000 {
            first.admit(t + i, budget, &mut shared);
            first.note_eviction(t + i, &mut shared);
        }
        // The second CPU saw nothing since long before; the flood moves
        // to it in the next window: limited from its first SYN.
        second.admit(t - 50 * WINDOW, budget, &mut shared);
        let admitted = (0..1_000)
            .filter(|i| second.admit(t + WINDOW + i, budget, &mut shared))
            .count();
        assert_eq!(admitted, budget as usize);
        // Its refusals keep both limited, the first CPU too, though it
        // had nothing in that window.
        let admitted = (0..1_000)
            .filter(|i| first.admit(t + 2 * WINDOW + i, budget, &mut shared))
            .count();
        assert_eq!(admitted, budget as usize);
        // Once no CPU sees pressure for a window, both are free again.
        for i in 0..10 {
            second.admit(t + 3 * WINDOW + i, budget, &mut shared);
        }
        assert!((0..1_000).all(|i| second.admit(t + 4 * WINDOW + i, budget, &mut shared)));
        assert!((0..1_000).all(|i| first.admit(t + 5 * WINDOW + i, budget, &mut shared)));
    }

    #[test]
    fn pressure_does_not_carry_over_a_quiet_window() {
        let mut admission = Admission::default();
        let mut shared = 0;
        let t = 1_000 * WINDOW;
        for i in 0..PRESSURE_THRESHOLD {
            admission.note_eviction(t + i, &mut shared);
        }
        // The next SYN comes two windows later: no limit.
        assert!((0..1_000).all(|i| admission.admit(t + 2 * WINDOW + i, 1, &mut shared)));
    }

    #[test]
    fn a_boundary_seen_from_both_clocks_keeps_the_window() {
        let mut admission = Admission::default();
        let mut shared = 0;
        let budget = 100;
        let t = 1_000 * WINDOW;
        for i in 0..1_000 {
            admission.note_eviction(t + i, &mut shared);
        }
        // Window 1 under the budget, with SYNs on the coarse clock still
        // reading window 0 after evictions stamped in window 1.
        let next = t + WINDOW;
        admission.note_eviction(next, &mut shared);
        let admitted = (0..1_000)
            .filter(|i| admission.admit(next - 1 + (i % 2), budget, &mut shared))
            .count();
        assert_eq!(admitted, budget as usize);
    }

    #[test]
    fn midstream_starts_have_a_budget_of_their_own_under_pressure_only() {
        let mut admission = Admission::default();
        let mut shared = 0;
        let budget = 100;
        let t = 1_000 * WINDOW;
        // No pressure: every mid-stream start, however many.
        assert!((0..10_000).all(|i| admission.admit_midstream(t + i, budget, &mut shared)));
        // An ACK flood's records push others out: the next window is
        // limited, for mid-stream starts and SYNs alike, each from its own
        // budget: the flood's ACKs leave the SYNs theirs.
        for i in 0..1_000 {
            admission.note_eviction(t + 10_000 + i, &mut shared);
        }
        let next = t + WINDOW;
        let acks = (0..1_000)
            .filter(|i| admission.admit_midstream(next + i, budget, &mut shared))
            .count();
        let syns = (0..1_000)
            .filter(|i| admission.admit(next + 1_000 + i, budget, &mut shared))
            .count();
        assert_eq!((acks, syns), (budget as usize, budget as usize));
        // A SYN flood spends the SYNs' budget; a real connection's next
        // segment still finds the mid-stream one.
        let later = t + 2 * WINDOW;
        assert_eq!(
            (0..1_000)
                .filter(|i| admission.admit(later + i, budget, &mut shared))
                .count(),
            budget as usize
        );
        assert!(admission.admit_midstream(later + 1_000, budget, &mut shared));
        // Refused mid-stream starts alone keep the pressure on.
        let third = t + 3 * WINDOW;
        assert_eq!(
            (0..1_000)
                .filter(|i| admission.admit_midstream(third + i, budget, &mut shared))
                .count(),
            budget as usize
        );
        let fourth = t + 4 * WINDOW;
        assert_eq!(
            (0..1_000)
                .filter(|i| admission.admit_midstream(fourth + i, budget, &mut shared))
                .count(),
            budget as usize
        );
        // Once they stop, free again a window later.
        assert!((0..1_000).all(|i| admission.admit_midstream(
            t + 6 * WINDOW + i,
            budget,
            &mut shared
        )));
    }

    #[test]
    fn fewer_signs_than_the_threshold_do_not_limit() {
        let mut admission = Admission::default();
        let mut shared = 0;
        let t = 1_000 * WINDOW;
        for i in 0..PRESSURE_THRESHOLD - 1 {
            admission.note_eviction(t + i, &mut shared);
        }
        assert!((0..1_000).all(|i| admission.admit(t + WINDOW + i, 1, &mut shared)));
    }
}

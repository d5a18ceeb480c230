//! The per-packet state machine: what each segment does to a [`Conn`]
//! (Zeek's TCP session adapter, `docs/zeek-tcp-semantics.md`), and when a
//! record is due. Runs in the kernel for every tracked segment, so
//! everything is bounded integer code.

use super::*;
use crate::parse::tcp_flags::{ACK, FIN, RST, SYN};

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
        // Each lane's first word holds its lock, which the caller holds:
        // only the count beside it is zeroed.
        const WORDS: usize = core::mem::size_of::<Conn>() / 8;
        const LANE_WORDS: usize = core::mem::size_of::<Lane>() / 8;
        let words = self as *mut Conn as *mut u64;
        let mut i = 0;
        while i < WORDS {
            if i != 0 && i != LANE_WORDS {
                // SAFETY: Conn is 8-aligned, a whole number of words, and
                // all-zero bytes are a valid Conn (integers and byte arrays
                // only).
                unsafe { core::ptr::write_volatile(words.add(i), 0) };
            }
            i += 1;
        }
        self.lanes[0].fast_packets = 0;
        self.lanes[1].fast_packets = 0;
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
            start_seq: 0,
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
            lanes: [Lane::ZERO; 2],
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
            tunnel: [0; 3],
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

    /// The lane of side `side` ([`ORIG`] or [`RESP`]): lanes are kept by
    /// endpoint of the flow key, roles by [`Conn::orig_is_a`].
    #[inline(always)]
    pub fn lane(&self, side: usize) -> &Lane {
        &self.lanes[Self::lane_index(side, self.orig_is_a)]
    }

    /// [`Conn::lane`], to write.
    #[inline(always)]
    pub fn lane_mut(&mut self, side: usize) -> &mut Lane {
        &mut self.lanes[Self::lane_index(side, self.orig_is_a)]
    }

    /// [`Lane::of_sender`] of side `side`'s endpoint, without a branch:
    /// the originator is `a` if `orig_is_a`.
    #[inline(always)]
    const fn lane_index(side: usize, orig_is_a: u8) -> usize {
        (side ^ orig_is_a as usize ^ 1) & 1
    }

    /// Takes what the fast path counted in the lanes (segments, the latest
    /// time) into the record's own [`Conn::packets`], [`Conn::last_ns`] and
    /// [`Conn::last_pkt_ns`]. The kernel does it whenever it holds both
    /// lanes (before the slow path reads the record), user space on each
    /// copy it reads, [`Conn::update`] first thing. Idempotent.
    #[inline(always)]
    pub fn fold_lanes(&mut self) {
        let mut lane = 0;
        while lane < 2 {
            let (count, last) = {
                let l = &self.lanes[lane & 1];
                (l.fast_packets, l.fast_last_ns)
            };
            if count != 0 {
                self.packets = self.packets.wrapping_add(count);
                self.lanes[lane & 1].fast_packets = 0;
            }
            if last != 0 {
                self.last_ns = self.last_ns.max(last);
                self.last_pkt_ns = self.last_pkt_ns.max(last);
                self.lanes[lane & 1].fast_last_ns = 0;
            }
            lane += 1;
        }
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

    /// Exchanges the two endpoints word by word, without a 40-byte temporary
    /// on the (512-byte) BPF stack. The lanes stay: they belong to the
    /// flow key's endpoints, and [`Conn::orig_is_a`] maps roles to them.
    #[inline(always)]
    fn swap_endpoints(&mut self) {
        const WORDS: usize = core::mem::size_of::<Endpoint>() / 8;
        let words = self.ep.as_mut_ptr() as *mut u64;
        let mut i = 0;
        while i < WORDS {
            // SAFETY: `ep` is two Endpoints of WORDS u64 each, at an 8-aligned
            // offset of an 8-aligned Conn (asserted in mod.rs).
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
        self.fold_lanes();
        self.count_gap(from_a, segment);
        self.update_segment(from_a, segment, now, timeouts)
    }

    /// Everything [`Conn::update`] does but [`Conn::count_gap`], in four
    /// phases. The kernel runs [`Conn::count_gap`] and each phase as a
    /// separate function: the verifier then checks each once, where in one
    /// function the branches of each phase multiply with the others' (the
    /// late flip alone doubled every path after it).
    #[inline(always)]
    pub fn update_segment(
        &mut self,
        from_a: bool,
        segment: &Segment,
        now: u64,
        timeouts: &Timeouts,
    ) -> Update {
        let delete_at_before = self.delete_at_ns;
        let expire_chain_before = self.expire_chain_ns;
        self.settle_roles(segment);
        self.record_segment(from_a, segment, now);
        let do_close = self.advance_state(from_a, segment, now, timeouts);
        self.finish_segment(from_a, segment, do_close, timeouts);
        Update {
            rescheduled: self.delete_at_ns != delete_at_before
                || self.expire_chain_ns != expire_chain_before,
        }
    }

    /// Phase 1 of [`Conn::update_segment`]: a connection first seen at its
    /// SYN-ACK learns from its next segment who the client is.
    #[inline(always)]
    pub fn settle_roles(&mut self, segment: &Segment) {
        let flags = segment.flags;
        if self.flags & flag::SYN_ACK_FIRST != 0 && self.packets > 0 {
            self.flags &= !flag::SYN_ACK_FIRST;
            if !has(flags, SYN) && !has(flags, RST) && (has(flags, ACK) || segment.len > 0) {
                self.flip_late();
            }
        }
    }

    /// Sequence space of a segment: Zeek's get_segment_len (SYN and FIN
    /// occupy a sequence number; the data of a RST does not count). Returns
    /// the segment's end.
    #[inline(always)]
    fn segment_end(segment: &Segment) -> u32 {
        let flags = segment.flags;
        let len = segment.len;
        let mut seg_len = len + has(flags, SYN) as u32 + has(flags, FIN) as u32;
        if has(flags, RST) {
            seg_len -= len;
        }
        segment.seq.wrapping_add(seg_len)
    }

    /// Phase 2 of [`Conn::update_segment`]: the segment counted, its
    /// history letters, sequence numbers, FIN and RST bookkeeping.
    #[inline(always)]
    pub fn record_segment(&mut self, from_a: bool, segment: &Segment, now: u64) {
        let flags = segment.flags;
        let base_seq = segment.seq;
        let len = segment.len;
        let seq_end = Self::segment_end(segment);
        let is_orig = self.from_orig(from_a);
        let (me, peer) = if is_orig { (ORIG, RESP) } else { (RESP, ORIG) };
        self.packets = self.packets.wrapping_add(1);
        let ordinal = self.packets;
        self.last_pkt_ns = now;

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
                self.ep[peer & 1].start_seq = start;
                self.lane_mut(me).acked_seq = start;
                self.lane_mut(peer).last_seq = start;
            } else if !has(flags, RST) {
                self.lane_mut(me).note_ack(segment.ack);
            }
        }

        self.update_last_seq(is_orig, me, seq_end, flags, len);
    }

    /// Phase 3 of [`Conn::update_segment`]: each side's TCP state (Zeek's
    /// UpdateStateMachine). True if the segment closes the sender's side.
    #[inline(always)]
    pub fn advance_state(
        &mut self,
        from_a: bool,
        segment: &Segment,
        now: u64,
        timeouts: &Timeouts,
    ) -> bool {
        let is_orig = self.from_orig(from_a);
        let (me, peer) = if is_orig { (ORIG, RESP) } else { (RESP, ORIG) };
        self.update_state_machine(
            is_orig,
            me,
            peer,
            segment.flags,
            segment.seq,
            segment.len,
            now,
            timeouts,
        )
    }

    /// Phase 4 of [`Conn::update_segment`]: the sender's counts, and its
    /// side closed if [`Conn::advance_state`] said so.
    #[inline(always)]
    pub fn finish_segment(
        &mut self,
        from_a: bool,
        segment: &Segment,
        do_close: bool,
        timeouts: &Timeouts,
    ) {
        let len = segment.len;
        // A reversed handshake may have swapped the roles: find the sender again.
        let (me, peer) = if self.from_orig(from_a) {
            (ORIG, RESP)
        } else {
            (RESP, ORIG)
        };

        let lane = self.lane_mut(me);
        lane.pkts += 1;
        lane.payload_bytes += len as u64;
        lane.ip_bytes += segment.ip_len as u64;

        if do_close {
            self.connection_closed(me, peer, timeouts);
        }
    }

    /// The common case of [`Conn::update`], cheap enough to run inline for
    /// every packet of an established connection: an in-order ACK or data
    /// segment (no SYN, FIN or RST, non-zero window) while both sides are
    /// open (established, or seen only mid-stream, or for the receiver not
    /// seen yet) and the record is not yet idle. Applies it and returns
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
        // Both sides open, the sender established or first seen mid-stream
        // (PARTIAL: a connection already open when teardown started, whose
        // every packet would otherwise take the slow path), the receiver
        // too or not seen yet (INACTIVE: a one-sided flow, as asymmetric
        // routing shows a router). For such a segment `update` changes no
        // state either way.
        let sender_state = sender.open_state();
        if sender_state != ESTABLISHED && sender_state != PARTIAL {
            return false;
        }
        let receiver_state = receiver.open_state();
        if receiver_state != ESTABLISHED && receiver_state != PARTIAL && receiver_state != INACTIVE
        {
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
        // The sender's lane, by the key's endpoint: the one whose lock the
        // caller holds. Nothing below writes outside it but the INACTIVE
        // receiver's numbering (why that is safe: there).
        let lane = &self.lanes[Lane::of_sender(from_a)];
        if seq_delta(segment.seq, lane.last_seq) > 0 {
            // It starts past what was seen of this side: a gap, which
            // `update` counts as missed bytes.
            return false;
        }
        let seq_end = segment.seq.wrapping_add(segment.len);
        let advance = seq_delta(seq_end, lane.last_seq) > 0;
        if !advance && segment.len > 0 {
            // A retransmission: counted, and maybe a 'T', by `update`.
            return false;
        }
        // The slow path may have stamped the record with the precise clock,
        // a little ahead of this (coarse) reading: never move time back.
        // Written at once, so that no flag stays live across the branches
        // below (each would double the verifier's paths through them).
        let newest = if lane.fast_last_ns > self.last_ns {
            lane.fast_last_ns
        } else {
            self.last_ns
        };
        let lane = &mut self.lanes[Lane::of_sender(from_a)];
        lane.fast_packets = lane.fast_packets.wrapping_add(1);
        if now > newest {
            lane.fast_last_ns = now;
        }
        if advance {
            if seq_end < lane.last_seq {
                lane.seq_wraps += 1;
            }
            lane.last_seq = seq_end;
        }
        lane.pkts += 1;
        lane.payload_bytes += segment.len as u64;
        lane.ip_bytes += segment.ip_len as u64;
        if receiver_state == INACTIVE {
            // Zeek's init_peer, as `record_segment` does it: the peer's
            // bytes numbered as if its SYN was seen, at every ACK until it
            // sends. The peer's start and lane are written under this lane's
            // lock alone, yet never by two CPUs at once: the peer's own
            // fast path runs only while its state is ESTABLISHED or PARTIAL,
            // this branch only while it is INACTIVE, and states change only
            // in the slow path, holding both lanes.
            let start = segment.ack.wrapping_sub(1);
            lane.acked_seq = start;
            self.lanes[Lane::of_sender(!from_a)].last_seq = start;
            self.ep[peer & 1].start_seq = start;
        } else {
            lane.note_ack(segment.ack);
        }
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
        let start_seq = self.ep[me & 1].start_seq;
        let lane = self.lane_mut(me);
        if has(segment.flags, SYN) || has(segment.flags, RST) || lane.last_seq == start_seq {
            return;
        }
        let gap = seq_delta(segment.seq, lane.last_seq);
        if gap > 0 {
            lane.missed_bytes += gap as u64;
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
        // (start, the peer's acknowledgement of it, last) if re-based.
        let numbers = match ep.state {
            // A partial connection: number bytes as if a SYN came just
            // before, and don't call the first packet a retransmission.
            INACTIVE if !syn => {
                Some((base_seq.wrapping_sub(1), base_seq.wrapping_sub(1), base_seq))
            }
            INACTIVE => Some((base_seq, base_seq, seq_end)),
            SYN_SENT | SYN_ACK_SENT if syn && base_seq != ep.start_seq => {
                Some((base_seq, base_seq, seq_end))
            }
            ESTABLISHED | PARTIAL if syn => Some((base_seq, base_seq, seq_end)),
            RESET if syn && ep.prev_state == INACTIVE => Some((base_seq, base_seq, seq_end)),
            _ => None,
        };
        if let Some((start, acked, last)) = numbers {
            ep.start_seq = start;
            // Zeek's `ack_seq` of this side: in the peer's lane, whose
            // segments acknowledge it.
            self.lane_mut(me ^ 1).acked_seq = acked;
            self.lane_mut(me).last_seq = last;
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

    /// Zeek's `update_last_seq`: advances the highest sequence seen, or
    /// counts a retransmission ('T').
    #[inline(always)]
    fn update_last_seq(&mut self, is_orig: bool, me: usize, seq_end: u32, flags: u8, len: u32) {
        let ep = &self.ep[me & 1];
        let (start_seq, state) = (ep.start_seq, ep.state);
        let last_seq = self.lane(me).last_seq;
        let delta = seq_delta(seq_end, last_seq);
        let advance = if (has(flags, SYN) || has(flags, RST))
            && !(-TOO_LARGE_SEQ_DELTA..=TOO_LARGE_SEQ_DELTA).contains(&delta)
        {
            false
        } else if has(flags, FIN) && last_seq == start_seq.wrapping_add(1) {
            true
        } else if state == RESET {
            false
        } else if delta > 0 {
            true
        } else {
            if len > 0 {
                let ep = &mut self.ep[me & 1];
                ep.retransmits = ep.retransmits.saturating_add(1);
                if is_power_of_ten(ep.retransmits) {
                    self.add_history(is_orig, b'T');
                }
            }
            false
        };
        if advance {
            let lane = self.lane_mut(me);
            if seq_end < lane.last_seq {
                lane.seq_wraps += 1;
            }
            lane.last_seq = seq_end;
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
    #[expect(
        clippy::too_many_arguments,
        reason = "Zeek's UpdateStateMachine, argument for argument, so the two read side by side"
    )]
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

impl Lane {
    /// Zeek's `update_ack_seq`: the peer's data this side acknowledged so
    /// far.
    #[inline(always)]
    pub(crate) fn note_ack(&mut self, ack: u32) {
        let delta = seq_delta(ack, self.acked_seq);
        // An ACK of 0 far ahead is more likely broken than a huge connection
        // landing on 0. Written as one condition, with the wrap counted by an
        // add rather than a branch: fewer instructions on the fast path.
        if delta > 0 && (ack != 0 || delta <= TOO_LARGE_SEQ_DELTA) {
            self.acked_wraps += (ack < self.acked_seq) as u32;
            self.acked_seq = ack;
        }
    }
}

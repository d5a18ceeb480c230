//! Verdicts on a record: Zeek's `conn_state` and byte counts, and
//! teardown's account of how the connection closed. Read by user space
//! when a connection ends; the kernel never needs them.

use super::*;

impl Conn {
    /// Zeek's `TCP_Endpoint::Size`: bytes by sequence space.
    pub fn size(&self, which: usize) -> u64 {
        let ep = &self.ep[which & 1];
        let peer = &self.ep[(which & 1) ^ 1];
        let lane = self.lane(which);
        // Zeek's `ack_seq` of this side, kept in the peer's lane.
        let peer_lane = self.lane(which ^ 1);
        let ack_seq = peer_lane.acked_seq;
        let no_data_acked = ack_seq == ep.start_seq || ack_seq == ep.start_seq.wrapping_add(1);
        if ep.prev_state == SYN_SENT
            && ep.state == RESET
            && peer.state == INACTIVE
            && !no_data_acked
        {
            return 0;
        }
        let last = ((lane.seq_wraps as u64) << 32) | lane.last_seq as u64;
        let acked = ((peer_lane.acked_wraps as u64) << 32) | ack_seq as u64;
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

//! Closing connection records out: the user-space half of the flow table.
//!
//! The kernel flags each slot that gets a new record or whose deadline moved
//! earlier in a bitmap. The tracker reads only those slots and keeps a heap
//! of deadlines, so each poll it looks at the records that are due, never at
//! the whole table. A due record is read, reported and marked reported in
//! its slot, which frees the slot. Records the kernel closed out itself (a
//! new SYN on the same ports, a packet after the deadline, a new connection
//! taking the slot of a record past its deadline) arrive whole on the ring
//! buffer. The kernel counts the records it evicted.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{MapData, RingBuf};
use serde_json::{Value, json};
use teardown_common::{
    conn::{Conn, ORIG, Timeouts, end_reason, flag},
    events::{EndedEvent, EventHeader, FlowStats, kind},
    flow::FlowKey,
};

use crate::kernel::FlowTable;

/// A connection that ended, with why its record was closed out.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub key: FlowKey,
    pub conn: Conn,
    pub reason: u8,
}

/// Converts record times (kernel monotonic, or capture time) to Unix time.
#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// Record times are capture timestamps: already Unix time.
    Capture,
    /// Record times are CLOCK_MONOTONIC; add this to get Unix time.
    Monotonic { offset_ns: i128 },
}

impl Clock {
    /// For record times on a clock that reads `now` at this moment.
    pub fn offset_from(now: u64) -> Clock {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i128;
        Clock::Monotonic {
            offset_ns: unix - now as i128,
        }
    }

    fn unix_seconds(&self, ns: u64) -> f64 {
        match self {
            Clock::Capture => ns as f64 / 1e9,
            Clock::Monotonic { offset_ns } => (ns as i128 + offset_ns) as f64 / 1e9,
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn address(bytes: [u8; 16], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

fn seconds(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e6
}

impl Ended {
    /// (originator, responder) as (address, port).
    pub fn endpoints(&self) -> ((IpAddr, u16), (IpAddr, u16)) {
        let a = (address(self.key.addr_a, self.key.family), self.key.port_a);
        let b = (address(self.key.addr_b, self.key.family), self.key.port_b);
        if self.conn.orig_is_a != 0 {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// The responder's port: what "per destination port" counts use.
    pub fn resp_port(&self) -> u16 {
        self.endpoints().1.1
    }

    /// A Zeek-compatible conn.log record plus teardown's explanation.
    pub fn json(&self, clock: &Clock) -> Value {
        let conn = &self.conn;
        let ((orig_h, orig_p), (resp_h, resp_p)) = self.endpoints();
        let close = conn.close(self.reason);
        let duration_ns = conn.last_ns.saturating_sub(conn.start_ns);
        // Zeek logs byte counts only when the duration is positive.
        let bytes = |side| (duration_ns > 0).then(|| conn.size(side));
        let history = String::from_utf8_lossy(conn.history()).into_owned();
        json!({
            "event": "conn",
            "ts": clock.unix_seconds(conn.start_ns),
            "id.orig_h": orig_h.to_string(),
            "id.orig_p": orig_p,
            "id.resp_h": resp_h.to_string(),
            "id.resp_p": resp_p,
            "proto": "tcp",
            "duration": seconds(duration_ns),
            "orig_bytes": bytes(ORIG),
            "resp_bytes": bytes(1 - ORIG),
            "orig_pkts": conn.ep[ORIG].pkts,
            "resp_pkts": conn.ep[1 - ORIG].pkts,
            "orig_payload_bytes": conn.ep[ORIG].payload_bytes,
            "resp_payload_bytes": conn.ep[1 - ORIG].payload_bytes,
            "conn_state": conn.conn_state(),
            "history": if history.is_empty() { "-".to_string() } else { history },
            "history_truncated": conn.flags & flag::HISTORY_TRUNCATED != 0,
            "close": close.kind.name(),
            "closed_by": close.closed_by.map(|side| if side == ORIG { "orig" } else { "resp" }),
            "rst_cause": close.rst_cause,
            "teardown": close.teardown_ns.map(seconds),
            "orig_guessed": conn.flags & flag::ORIG_GUESSED != 0,
            "end_reason": end_reason::name(self.reason),
        })
    }

    /// One readable line.
    pub fn human_line(&self) -> String {
        let conn = &self.conn;
        let ((orig_h, orig_p), (resp_h, resp_p)) = self.endpoints();
        let close = conn.close(self.reason);
        let by = match close.closed_by {
            Some(side) if side == ORIG => " by orig",
            Some(_) => " by resp",
            None => "",
        };
        let cause = close
            .rst_cause
            .map(|cause| format!(" ({cause})"))
            .unwrap_or_default();
        let history = String::from_utf8_lossy(conn.history()).into_owned();
        let fmt = |addr: IpAddr, port: u16| match addr {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        format!(
            "conn {} -> {} {:<6} {}{by}{cause} {:.3}s pkts {}/{} history {}",
            fmt(orig_h, orig_p),
            fmt(resp_h, resp_p),
            conn.conn_state(),
            close.kind.name(),
            conn.last_ns.saturating_sub(conn.start_ns) as f64 / 1e9,
            conn.ep[ORIG].pkts,
            conn.ep[1 - ORIG].pkts,
            if history.is_empty() { "-" } else { &history },
        )
    }
}

/// Bookkeeping the tracker adds to the kernel's [`teardown_common::events::FlowStats`].
#[derive(Clone, Debug, Default)]
pub struct TrackerStats {
    /// Records closed out by user space.
    pub ended_in_user_space: u64,
    /// Half-open records user space closed out (the kernel counts the rest).
    pub half_open_closed: u64,
    /// Connections reported, by conn_state and by close kind.
    pub by_conn_state: BTreeMap<&'static str, u64>,
    pub by_close: BTreeMap<&'static str, u64>,
    /// Handshakes that timed out half-open, by responder port.
    pub half_open_by_port: BTreeMap<u16, u64>,
}

/// Deadlines of the records in the flow table.
pub struct Tracker {
    timeouts: Timeouts,
    /// (deadline, slot, generation): the generation tells a stale entry (for
    /// an earlier record in the slot) from a current one.
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Slots with a record not yet reported, and its generation.
    known: HashMap<u32, u32>,
    pub stats: TrackerStats,
    /// Responders of the half-open records closed out here since the last
    /// [`Tracker::take_half_open_timeouts`], when someone asked for them:
    /// the kernel counts the other resolutions per destination itself.
    half_open_timeouts: Option<Vec<(IpAddr, u16)>>,
}

impl Tracker {
    pub fn new(timeouts: Timeouts) -> Tracker {
        Tracker {
            timeouts,
            heap: BinaryHeap::new(),
            known: HashMap::new(),
            stats: TrackerStats::default(),
            half_open_timeouts: None,
        }
    }

    /// Keeps the responders of half-open records closed out here, for
    /// [`Tracker::take_half_open_timeouts`].
    pub fn watch_half_open_timeouts(&mut self) {
        self.half_open_timeouts.get_or_insert_with(Vec::new);
    }

    /// The responders of half-open records closed out here since the last call.
    pub fn take_half_open_timeouts(&mut self) -> Vec<(IpAddr, u16)> {
        self.half_open_timeouts
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Records being tracked.
    pub fn live(&self) -> usize {
        self.known.len()
    }

    /// Handshakes in progress: started in the kernel, minus those resolved
    /// there (answered, reset, evicted, closed out) and those closed out here.
    pub fn half_open(&self, kernel: &FlowStats) -> u64 {
        kernel
            .half_open_started
            .saturating_sub(kernel.half_open_resolved + self.stats.half_open_closed)
    }

    fn count(&mut self, ended: &Ended) {
        *self
            .stats
            .by_conn_state
            .entry(ended.conn.conn_state())
            .or_default() += 1;
        *self
            .stats
            .by_close
            .entry(ended.conn.close(ended.reason).kind.name())
            .or_default() += 1;
        if ended.reason == end_reason::SYN_TIMEOUT {
            *self
                .stats
                .half_open_by_port
                .entry(ended.resp_port())
                .or_default() += 1;
        }
    }

    /// Schedules every slot the kernel flagged since the last call.
    pub fn take_changes(&mut self, table: &FlowTable) {
        let mut changed = Vec::new();
        table.take_changes(|index| changed.push(index));
        for index in changed {
            let Some(slot) = table.read(index) else {
                continue;
            };
            if slot.is_free() {
                continue;
            }
            self.known.insert(index, slot.generation);
            let (at, _) = slot.conn.deadline(&self.timeouts);
            self.heap.push(Reverse((at, index, slot.generation)));
        }
        // Entries for records that were replaced wait in the heap until their
        // old deadline; rebuild it when they outnumber the live ones, so a
        // flood of short-lived records cannot grow it without bound.
        if self.heap.len() > 4 * self.known.len() + 1024 {
            let mut fresh = BinaryHeap::with_capacity(self.known.len());
            for (&index, &generation) in self.known.iter() {
                if let Some(slot) = table.read(index)
                    && slot.generation == generation
                {
                    let (at, _) = slot.conn.deadline(&self.timeouts);
                    fresh.push(Reverse((at, index, generation)));
                }
            }
            self.heap = fresh;
        }
    }

    /// Reads every pending event; records the kernel closed out are appended
    /// to `out`.
    pub fn drain_events(&mut self, events: &mut RingBuf<MapData>, out: &mut Vec<Ended>) {
        while let Some(item) = events.next() {
            let bytes: &[u8] = &item;
            if bytes.len() < size_of::<EndedEvent>() {
                continue;
            }
            // SAFETY: a whole EndedEvent's bytes; plain data.
            let event: EndedEvent =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const EndedEvent) };
            let header: EventHeader = event.header;
            if header.kind != kind::ENDED {
                continue;
            }
            if self.known.get(&header.slot) == Some(&header.generation) {
                self.known.remove(&header.slot);
            }
            let ended = Ended {
                key: header.key,
                conn: event.conn,
                reason: header.reason as u8,
            };
            self.count(&ended);
            out.push(ended);
        }
    }

    /// Closes out every record due at `now` (on the flow table's clock).
    pub fn expire(&mut self, now: u64, table: &FlowTable, out: &mut Vec<Ended>) {
        while let Some(Reverse((at, index, generation))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.known.get(&index) != Some(&generation) {
                continue; // an earlier record in this slot, already handled
            }
            let Some(slot) = table.read(index) else {
                continue;
            };
            if slot.generation != generation || slot.is_free() {
                // Replaced by the kernel: reported on the ring buffer, or
                // evicted (the kernel counts those).
                self.known.remove(&index);
                continue;
            }
            let (deadline, reason) = slot.conn.deadline(&self.timeouts);
            if deadline > now {
                self.heap.push(Reverse((deadline, index, generation)));
                continue;
            }
            table.mark_reported(index, generation);
            self.known.remove(&index);
            self.stats.ended_in_user_space += 1;
            let ended = Ended {
                key: slot.key,
                conn: slot.conn,
                reason,
            };
            if slot.conn.half_open() {
                self.stats.half_open_closed += 1;
                if let Some(timeouts) = &mut self.half_open_timeouts {
                    timeouts.push(ended.endpoints().1);
                }
            }
            self.count(&ended);
            out.push(ended);
        }
    }

    /// Closes out every record still in the table, as Zeek does at the end
    /// of a trace.
    pub fn finish(&mut self, table: &FlowTable, out: &mut Vec<Ended>) {
        let mut ended = Vec::new();
        for index in 0..table.len() as u32 {
            let Some(slot) = table.read(index) else {
                continue;
            };
            if slot.is_free() {
                continue;
            }
            table.mark_reported(index, slot.generation);
            if slot.conn.half_open() {
                // No longer in progress: the half-open gauge drops to 0.
                self.stats.half_open_closed += 1;
            }
            ended.push(Ended {
                key: slot.key,
                conn: slot.conn,
                reason: end_reason::END_OF_INPUT,
            });
        }
        ended.sort_by_key(|ended| ended.conn.start_ns);
        for record in &ended {
            self.count(record);
        }
        self.known.clear();
        self.heap.clear();
        out.extend(ended);
    }
}

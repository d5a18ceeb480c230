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
    net::IpAddr,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use serde_json::{Value, json};
use teardown_common::{
    conn::{Conn, ORIG, Timeouts, end_reason, flag},
    events::{EndedEvent, EventHeader, FlowStats, kind},
    flow::FlowKey,
    tunnel::{Tunnel, encap},
};

use crate::{conn::resets::KernelReset, kernel::FlowTable};

/// A connection that ended, with why its record was closed out.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub key: FlowKey,
    pub conn: Conn,
    pub reason: u8,
    /// The kernel's account of the reset this host sent, when the reset
    /// program saw one in the connection's lifetime
    /// ([`ResetBook`](crate::conn::resets::ResetBook)).
    pub kernel_reset: Option<KernelReset>,
    /// The tunnel the connection came through, for a connection found
    /// inside one ([`FlowTable::tunnel`]).
    pub tunnel: Option<Tunnel>,
    /// The interface the record was kept on (`teardown run`: each
    /// interface has its own flow table); `None` for a capture.
    pub iface: Option<&'static str>,
}

/// The names of a tunnel's layers, outermost first.
pub fn layer_names(tunnel: &Tunnel) -> Vec<&'static str> {
    tunnel
        .layers
        .iter()
        .take_while(|kind| **kind != 0)
        .map(|kind| encap::name(*kind))
        .collect()
}

/// A tunnel's outer IP endpoints, source first as the frame had them, if
/// an IP tunnel was opened.
pub fn outer_endpoints(tunnel: &Tunnel) -> Option<(IpAddr, IpAddr)> {
    if tunnel.outer_family == 0 {
        return None;
    }
    let (src, dst) = tunnel.outer_endpoints();
    Some((
        src.to_ip(tunnel.outer_family),
        dst.to_ip(tunnel.outer_family),
    ))
}

/// A record's `tunnel`, in the spirit of Zeek's `tunnel_parents`, but
/// self-contained: the layers (outermost first), the innermost layer's id
/// (VNI, GRE key, MPLS label, PPPoE session, I-SID, VN-Tag interface),
/// and the outer endpoints of the innermost IP tunnel.
fn tunnel_json(tunnel: &Tunnel) -> Value {
    let mut value = json!({ "layers": layer_names(tunnel) });
    let fields = value.as_object_mut().expect("a JSON object");
    if tunnel.id != 0 {
        fields.insert("id".into(), json!(tunnel.id));
    }
    if let Some((src, dst)) = outer_endpoints(tunnel) {
        fields.insert("outer_src".into(), json!(src.to_string()));
        fields.insert("outer_dst".into(), json!(dst.to_string()));
    }
    value
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

    /// Unix seconds to the microsecond, as Zeek logs `ts` (a microsecond
    /// count up to 2^53, about the year 2255, is exact in an f64).
    fn unix_seconds(&self, ns: u64) -> f64 {
        let unix_ns = match self {
            Clock::Capture => ns as i128,
            Clock::Monotonic { offset_ns } => ns as i128 + offset_ns,
        };
        (unix_ns as f64 / 1e3).round() / 1e6
    }

    /// Unix milliseconds (IPFIX's `dateTimeMilliseconds`), 0 before the epoch.
    pub fn unix_millis(&self, ns: u64) -> u64 {
        let unix_ns = match self {
            Clock::Capture => ns as i128,
            Clock::Monotonic { offset_ns } => ns as i128 + offset_ns,
        };
        (unix_ns.max(0) / 1_000_000) as u64
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

fn seconds(ns: u64) -> f64 {
    (ns as f64 / 1e3).round() / 1e6
}

impl Ended {
    /// (originator, responder) as (address, port).
    pub fn endpoints(&self) -> ((IpAddr, u16), (IpAddr, u16)) {
        let a = (self.key.addr_a.to_ip(self.key.family), self.key.port_a);
        let b = (self.key.addr_b.to_ip(self.key.family), self.key.port_b);
        if self.conn.orig_is_a != 0 {
            (a, b)
        } else {
            (b, a)
        }
    }

    /// Whether this was a real connection: its handshake completed, or
    /// (picked up mid-stream) both sides sent data. The rest is one-sided
    /// debris: unanswered SYNs (`S0`), refusals (`REJ`), stray segments and
    /// unacknowledged SYN-ACKs (`OTH`, `SH`, `S1` without the ACK), which a
    /// SYN flood leaves by the hundred thousand. One judgement for the
    /// dashboard's lists and the flood summaries (`flood/debris.rs`), so a
    /// record is debris in both or in neither.
    pub fn is_conversation(&self) -> bool {
        let conn = &self.conn;
        let two_sided_talk =
            conn.lane(ORIG).payload_bytes > 0 && conn.lane(1 - ORIG).payload_bytes > 0;
        conn.handshake_completed() || two_sided_talk
    }

    /// The responder's port: what "per destination port" counts use.
    pub fn resp_port(&self) -> u16 {
        self.endpoints().1.1
    }

    /// Zeek's `uid` for the record: `C` and 17 base62 digits (101 bits; Zeek's
    /// hold 96). The digits come from a 128-bit hash of a per-process random seed and what identifies
    /// the record (its addresses, ports, first-packet time and initial
    /// sequence numbers, and the interface), so the record has one uid however often it is
    /// printed (screen, `--json`, `--log`), and uids differ across records
    /// and across runs.
    pub fn uid(&self) -> String {
        use std::hash::{Hash, Hasher};
        let conn = &self.conn;
        let word = |domain: u8| {
            let mut hasher = std::hash::DefaultHasher::new();
            uid_seed().hash(&mut hasher);
            domain.hash(&mut hasher);
            (
                self.key.addr_a,
                self.key.addr_b,
                self.key.port_a,
                self.key.port_b,
            )
                .hash(&mut hasher);
            (self.key.family, conn.orig_is_a, conn.start_ns).hash(&mut hasher);
            (conn.ep[0].start_seq, conn.ep[1].start_seq).hash(&mut hasher);
            // A connection forwarded between two watched interfaces has a
            // record on each: two records, two uids.
            self.iface.hash(&mut hasher);
            hasher.finish()
        };
        base62_uid((word(0) as u128) << 64 | word(1) as u128)
    }

    /// A Zeek-compatible conn.log record plus teardown's explanation. As
    /// Zeek's JSON writer does, fields without a value are left out rather
    /// than written as `null`: `history` when empty, `closed_by`, `rst_cause`
    /// and `teardown` when nothing closed, `duration`, `orig_bytes` and
    /// `resp_bytes` when the duration is 0 and no byte moved.
    pub fn json(&self, clock: &Clock) -> Value {
        let conn = &self.conn;
        let ((orig_h, orig_p), (resp_h, resp_p)) = self.endpoints();
        let close = conn.close(self.reason);
        let duration_ns = conn.last_ns.saturating_sub(conn.start_ns);
        let (orig, resp) = (conn.lane(ORIG), conn.lane(1 - ORIG));
        let mut record = json!({
            "event": "conn",
            "ts": clock.unix_seconds(conn.start_ns),
            "uid": self.uid(),
            "id.orig_h": orig_h.to_string(),
            "id.orig_p": orig_p,
            "id.resp_h": resp_h.to_string(),
            "id.resp_p": resp_p,
            "proto": "tcp",
            "ip_proto": 6,
            "conn_state": conn.conn_state(),
            "missed_bytes": orig.missed_bytes + resp.missed_bytes,
            "orig_pkts": orig.pkts,
            "orig_ip_bytes": orig.ip_bytes,
            "resp_pkts": resp.pkts,
            "resp_ip_bytes": resp.ip_bytes,
            "orig_payload_bytes": orig.payload_bytes,
            "resp_payload_bytes": resp.payload_bytes,
            "history_truncated": conn.flags & flag::HISTORY_TRUNCATED != 0,
            "close": close.kind.name(),
            "orig_guessed": conn.flags & flag::ORIG_GUESSED != 0,
            "end_reason": end_reason::name(self.reason),
        });
        let fields = record.as_object_mut().expect("a JSON object");
        // Zeek sets duration and the sequence-space byte counts together,
        // when the duration is positive. Two packets can carry one timestamp
        // (capture resolution, or the coarse clock's tick): the counts are
        // still given whenever bytes moved, with the duration beside them.
        let (orig_bytes, resp_bytes) = (conn.size(ORIG), conn.size(1 - ORIG));
        let moved = orig_bytes + resp_bytes + orig.payload_bytes + resp.payload_bytes > 0;
        if duration_ns > 0 || moved {
            fields.insert("duration".into(), json!(seconds(duration_ns)));
            fields.insert("orig_bytes".into(), json!(orig_bytes));
            fields.insert("resp_bytes".into(), json!(resp_bytes));
        }
        if !conn.history().is_empty() {
            let history = String::from_utf8_lossy(conn.history()).into_owned();
            fields.insert("history".into(), json!(history));
        }
        if let Some(side) = close.closed_by {
            let by = if side == ORIG { "orig" } else { "resp" };
            fields.insert("closed_by".into(), json!(by));
        }
        if let Some(cause) = close.rst_cause {
            fields.insert("rst_cause".into(), json!(cause));
        }
        if let Some(teardown) = close.teardown_ns {
            fields.insert("teardown".into(), json!(seconds(teardown)));
        }
        if let Some(tunnel) = &self.tunnel {
            fields.insert("tunnel".into(), tunnel_json(tunnel));
        }
        if let Some(iface) = self.iface {
            fields.insert("iface".into(), json!(iface));
        }
        if let Some(reset) = &self.kernel_reset {
            fields.insert("rst_reason".into(), json!(reset.reason));
            if let Some(state) = reset.state_name() {
                fields.insert("rst_state".into(), json!(state));
            }
            if let Some(process) = &reset.process {
                fields.insert("pid".into(), json!(process.pid));
                fields.insert("comm".into(), json!(process.comm()));
            }
        }
        record
    }

    /// The tunnel as the plain line says it: ` tunnel vxlan 42 10.0.0.1>10.0.0.2`
    /// (layers outermost first, the innermost's id, the outer endpoints).
    fn tunnel_words(&self) -> String {
        let Some(tunnel) = &self.tunnel else {
            return String::new();
        };
        let mut words = format!(" tunnel {}", layer_names(tunnel).join("/"));
        if tunnel.id != 0 {
            words += &format!(" {}", tunnel.id);
        }
        if let Some((src, dst)) = outer_endpoints(tunnel) {
            words += &format!(" {src}>{dst}");
        }
        words
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
        let kernel = match &self.kernel_reset {
            Some(reset) => match &reset.process {
                Some(process) => format!(
                    " [kernel: {} by {}[{}]]",
                    reset.reason,
                    process.comm(),
                    process.pid
                ),
                None => format!(" [kernel: {}]", reset.reason),
            },
            None => String::new(),
        };
        let history = String::from_utf8_lossy(conn.history()).into_owned();
        let fmt = |addr: IpAddr, port: u16| match addr {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        };
        let via = self
            .iface
            .map(|iface| format!(" via {iface}"))
            .unwrap_or_default();
        format!(
            "conn {} -> {} {:<6} {}{by}{cause}{kernel} {:.3}s pkts {}/{} history {}{via} uid {}{}",
            fmt(orig_h, orig_p),
            fmt(resp_h, resp_p),
            conn.conn_state(),
            close.kind.name(),
            conn.last_ns.saturating_sub(conn.start_ns) as f64 / 1e9,
            conn.lane(ORIG).pkts,
            conn.lane(1 - ORIG).pkts,
            if history.is_empty() { "-" } else { &history },
            self.uid(),
            self.tunnel_words(),
        )
    }
}

/// 128 random bits drawn once per process (getrandom), the secret part of
/// every [`Ended::uid`].
fn uid_seed() -> u128 {
    static SEED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        let mut bytes = [0u8; 16];
        let mut filled = 0;
        while filled < bytes.len() {
            // SAFETY: getrandom writes at most the given length into the buffer.
            let got = unsafe {
                libc::getrandom(
                    bytes[filled..].as_mut_ptr() as *mut libc::c_void,
                    bytes.len() - filled,
                    0,
                )
            };
            if got > 0 {
                filled += got as usize;
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // No getrandom: fall back on time and pid, still unique per run.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                return now ^ ((std::process::id() as u128) << 96) ^ monotonic_now_ns() as u128;
            }
        }
        u128::from_ne_bytes(bytes)
    })
}

/// Base62 digits in a uid: 17 carry 101 bits, at least Zeek's 96.
const UID_DIGITS: usize = 17;

/// `C` and the low 17 base62 digits of `bits`, most significant first:
/// Zeek's connection uid shape (`C` and about 18 alphanumerics). From
/// uniform 128-bit input every digit is (nearly) uniform, the first too.
fn base62_uid(mut bits: u128) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut digits = [b'0'; UID_DIGITS];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(bits % 62) as usize];
        bits /= 62;
    }
    let mut uid = String::with_capacity(1 + UID_DIGITS);
    uid.push('C');
    uid.extend(digits.iter().map(|&d| d as char));
    uid
}

/// Ports listed by name in the half-open timeouts by port (JSON stats,
/// Prometheus, dashboard); the rest are summed in `other`. 32 is more than
/// the services a host usually listens on, so normally no real service is
/// hidden in `other`; and a port-sweeping flood (a new port with nearly
/// every SYN) adds at most about 1 KB to a stats line and 33 series to
/// Prometheus, where one entry per port made every stats line over 500 KB
/// for the rest of the run after a 15 s sweep.
pub const HALF_OPEN_PORTS_LISTED: usize = 32;

/// A listed port without a new half-open timeout for this long is folded
/// into `other`: the list shows the ports that time out now, not forever
/// the busiest of a flood long over. Ten minutes, as long as the SYN-flood
/// feed remembers a quiet destination (`flood/feed.rs`).
pub const HALF_OPEN_PORT_QUIET: Duration = Duration::from_secs(600);

/// Counts per port in bounded memory: at most `capacity` ports listed with
/// their own count, everything else summed in `other`, so the listed counts
/// plus `other` always equal `total`, exactly.
///
/// A new port takes the place of the listed one with the smallest count
/// (of those, the one that moved least recently), whose count goes to
/// `other`; so is a port that has not moved for the quiet time. A sweep
/// that brings a new port every time thus churns through the ports seen
/// once, while ports that keep timing out keep their lines. A port's count
/// runs from when it was last listed: one folded and seen again starts
/// afresh (its earlier counts stay in `other`). Every fold is counted
/// (`folded`), so a large `other` made of a sweep's thousands of ports can
/// be told from one of a few ports.
#[derive(Clone, Debug)]
pub struct PortCounts {
    capacity: usize,
    quiet_ns: u64,
    listed: Vec<ListedPort>,
    other: u64,
    total: u64,
    folded: u64,
    /// Counts added so far: orders the listed ports by when they last moved.
    moves: u64,
}

#[derive(Clone, Copy, Debug)]
struct ListedPort {
    port: u16,
    count: u64,
    /// When its count last moved (the caller's clock), and the `moves`
    /// number of that change (which orders changes made at one time).
    moved_ns: u64,
    moved_at: u64,
}

impl Default for PortCounts {
    fn default() -> PortCounts {
        PortCounts::new(HALF_OPEN_PORTS_LISTED, HALF_OPEN_PORT_QUIET)
    }
}

impl PortCounts {
    /// At most `capacity` ports listed (0: everything in `other`); a port
    /// quiet for `quiet` is folded by [`PortCounts::forget_quiet`].
    pub fn new(capacity: usize, quiet: Duration) -> PortCounts {
        PortCounts {
            capacity,
            quiet_ns: quiet.as_nanos().min(u64::MAX as u128) as u64,
            listed: Vec::with_capacity(capacity),
            other: 0,
            total: 0,
            folded: 0,
            moves: 0,
        }
    }

    /// Counts one for `port` at `now_ns`.
    pub fn add(&mut self, port: u16, now_ns: u64) {
        self.total = self.total.saturating_add(1);
        self.moves += 1;
        if let Some(listed) = self.listed.iter_mut().find(|listed| listed.port == port) {
            listed.count = listed.count.saturating_add(1);
            listed.moved_ns = now_ns;
            listed.moved_at = self.moves;
            return;
        }
        if self.capacity == 0 {
            self.other = self.other.saturating_add(1);
            return;
        }
        if self.listed.len() >= self.capacity
            && let Some(smallest) = (0..self.listed.len())
                .min_by_key(|&index| (self.listed[index].count, self.listed[index].moved_at))
        {
            self.fold(smallest);
        }
        self.listed.push(ListedPort {
            port,
            count: 1,
            moved_ns: now_ns,
            moved_at: self.moves,
        });
    }

    /// Folds into `other` every listed port whose count has not moved for
    /// the quiet time, as of `now_ns`.
    pub fn forget_quiet(&mut self, now_ns: u64) {
        let mut index = 0;
        while index < self.listed.len() {
            if now_ns.saturating_sub(self.listed[index].moved_ns) >= self.quiet_ns {
                self.fold(index);
            } else {
                index += 1;
            }
        }
    }

    fn fold(&mut self, index: usize) {
        let gone = self.listed.swap_remove(index);
        self.other = self.other.saturating_add(gone.count);
        self.folded += 1;
    }

    /// The `n` ports with the largest counts, largest first (ties by port),
    /// and the sum of every other count, listed or not: the two add up to
    /// [`PortCounts::total`].
    pub fn top(&self, n: usize) -> (Vec<(u16, u64)>, u64) {
        let mut ports: Vec<(u16, u64)> = self
            .listed
            .iter()
            .map(|listed| (listed.port, listed.count))
            .collect();
        ports.sort_by_key(|&(port, count)| (std::cmp::Reverse(count), port));
        ports.truncate(n);
        let shown: u64 = ports.iter().map(|(_, count)| count).sum();
        (ports, self.total.saturating_sub(shown))
    }

    /// Every listed port (most first) and `other`: what the stats and
    /// Prometheus show.
    pub fn listed(&self) -> (Vec<(u16, u64)>, u64) {
        self.top(self.capacity)
    }

    /// Everything counted since the start (the stats show it as the sum
    /// of the listed counts and `other`).
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Ports folded into `other` (for room, or quiet) since the start.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

/// Bookkeeping the tracker adds to the kernel's [`teardown_common::events::FlowStats`].
#[derive(Clone, Debug, Default)]
pub struct TrackerStats {
    /// Records closed out by user space.
    pub ended_in_user_space: u64,
    /// Half-open records user space closed out (the kernel counts the rest).
    pub half_open_closed: u64,
    /// Connections reported, by conn_state and by close kind (a fixed set
    /// of names each, so bounded).
    pub by_conn_state: BTreeMap<&'static str, u64>,
    pub by_close: BTreeMap<&'static str, u64>,
    /// Handshakes that timed out half-open, by responder port: the busiest
    /// [`HALF_OPEN_PORTS_LISTED`] ports, the rest in `other`.
    pub half_open_by_port: PortCounts,
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
    /// The interface whose flow table this tracker follows, stamped on
    /// every record it ends.
    iface: Option<&'static str>,
}

impl Tracker {
    pub fn new(timeouts: Timeouts) -> Tracker {
        Tracker {
            timeouts,
            heap: BinaryHeap::new(),
            known: HashMap::new(),
            stats: TrackerStats::default(),
            half_open_timeouts: None,
            iface: None,
        }
    }

    /// A tracker for the flow table of interface `iface`: its records say so.
    pub fn on_interface(timeouts: Timeouts, iface: &'static str) -> Tracker {
        Tracker {
            iface: Some(iface),
            ..Tracker::new(timeouts)
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

    /// Counts a reported record; `now` is when it was closed out (on the
    /// flow table's clock).
    fn count(&mut self, ended: &Ended, now: u64) {
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
            self.stats.half_open_by_port.add(ended.resp_port(), now);
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
    pub fn drain_events(
        &mut self,
        events: &mut RingBuf<MapData>,
        table: &FlowTable,
        out: &mut Vec<Ended>,
    ) {
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
                kernel_reset: None,
                tunnel: table.tunnel(event.conn.tunnel),
                iface: self.iface,
            };
            self.count(&ended, header.time_ns);
            out.push(ended);
        }
    }

    /// Closes out every record due at `now` (on the flow table's clock).
    pub fn expire(&mut self, now: u64, table: &FlowTable, out: &mut Vec<Ended>) {
        self.stats.half_open_by_port.forget_quiet(now);
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
                kernel_reset: None,
                tunnel: table.tunnel(slot.conn.tunnel),
                iface: self.iface,
            };
            if slot.conn.half_open() {
                self.stats.half_open_closed += 1;
                if let Some(timeouts) = &mut self.half_open_timeouts {
                    timeouts.push(ended.endpoints().1);
                }
            }
            self.count(&ended, now);
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
                kernel_reset: None,
                tunnel: table.tunnel(slot.conn.tunnel),
                iface: self.iface,
            });
        }
        ended.sort_by_key(|ended| ended.conn.start_ns);
        // End of input, not a timeout: the time only stamps port counts,
        // which only timeouts move.
        for record in &ended {
            self.count(record, record.conn.last_ns);
        }
        self.known.clear();
        self.heap.clear();
        out.extend(ended);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use teardown_common::{
        conn::Segment,
        parse::tcp_flags::{ACK, FIN, RST, SYN},
    };

    use super::*;
    use teardown_common::addr::Addr16;

    const MS: u64 = 1_000_000;

    fn key(client_port: u16) -> FlowKey {
        let mut addr_a = [0u8; 16];
        let mut addr_b = [0u8; 16];
        addr_a[12..].copy_from_slice(&[192, 0, 2, 1]);
        addr_b[12..].copy_from_slice(&[192, 0, 2, 2]);
        FlowKey {
            addr_a: Addr16(addr_a),
            addr_b: Addr16(addr_b),
            port_a: client_port,
            port_b: 8080,
            family: 4,
            _pad8: 0,
            _pad16: 0,
        }
    }

    /// A record fed `packets`: (from the client, flags, seq, ack, payload, time).
    pub(crate) fn record(client_port: u16, packets: &[(bool, u8, u32, u32, u32, u64)]) -> Ended {
        let timeouts = Timeouts::ZEEK;
        let mut conn = Conn::zeroed();
        for (i, &(from_a, flags, seq, ack, len, now)) in packets.iter().enumerate() {
            let segment = Segment {
                flags,
                seq,
                ack,
                window: 1000,
                len,
                ip_len: 40 + len,
                src_port: if from_a { client_port } else { 8080 },
                dst_port: if from_a { 8080 } else { client_port },
            };
            if i == 0 {
                conn.init(from_a, &segment, false, now);
            }
            conn.update(from_a, &segment, now, &timeouts);
        }
        Ended {
            key: key(client_port),
            conn,
            reason: end_reason::CLOSED,
            kernel_reset: None,
            tunnel: None,
            iface: None,
        }
    }

    /// SYN, SYN-ACK, ACK, 5 bytes each way, FIN, FIN, ACK at `t` ms steps.
    fn graceful(client_port: u16, times: [u64; 9]) -> Ended {
        let (c, s) = (1000u32, 5000u32);
        record(
            client_port,
            &[
                (true, SYN, c, 0, 0, times[0]),
                (false, SYN | ACK, s, c + 1, 0, times[1]),
                (true, ACK, c + 1, s + 1, 0, times[2]),
                (true, ACK, c + 1, s + 1, 5, times[3]),
                (false, ACK, s + 1, c + 6, 5, times[4]),
                (true, FIN | ACK, c + 6, s + 6, 0, times[5]),
                (false, ACK, s + 6, c + 7, 0, times[6]),
                (false, FIN | ACK, s + 6, c + 7, 0, times[7]),
                (true, ACK, c + 7, s + 7, 0, times[8]),
            ],
        )
    }

    const SECOND: u64 = 1_000_000_000;

    /// The listed counts plus `other` are the total, and no more ports
    /// are listed than the capacity.
    fn assert_adds_up(counts: &PortCounts) {
        let (listed, other) = counts.listed();
        assert!(listed.len() <= HALF_OPEN_PORTS_LISTED, "{listed:?}");
        let shown: u64 = listed.iter().map(|(_, count)| count).sum();
        assert_eq!(shown + other, counts.total(), "{listed:?} + other {other}");
    }

    #[test]
    fn a_port_sweep_lists_a_bounded_number_of_ports_and_keeps_the_total() {
        let mut counts = PortCounts::default();
        // Two real services time out now and then, before and during a
        // sweep that times out once on each of every port.
        for _ in 0..5 {
            counts.add(8080, 0);
            counts.add(443, 0);
        }
        let mut sweep = 0u64;
        for round in 0..3u64 {
            for port in 1..=u16::MAX {
                counts.add(port, round * SECOND);
                sweep += 1;
                assert!(counts.listed.len() <= HALF_OPEN_PORTS_LISTED);
            }
            assert_adds_up(&counts);
        }
        assert_eq!(counts.total(), 10 + sweep);
        let (listed, other) = counts.listed();
        assert_eq!(listed.len(), HALF_OPEN_PORTS_LISTED);
        // The services seen repeatedly keep their lines and their counts
        // (5 before the sweep, 3 in it), above the sweep's ports.
        assert_eq!(&listed[..2], &[(443, 8), (8080, 8)], "{listed:?}");
        assert!(
            listed[2..].iter().all(|&(_, count)| count == 1),
            "{listed:?}"
        );
        assert_eq!(
            other,
            counts.total() - 16 - (HALF_OPEN_PORTS_LISTED as u64 - 2)
        );
        // Every port newly listed past the first 32 made room by folding
        // one (the services' own timeouts in the sweep found them listed).
        assert_eq!(
            counts.folded(),
            2 + (sweep - 2 * 3) - HALF_OPEN_PORTS_LISTED as u64
        );
    }

    #[test]
    fn the_top_few_and_the_rest_add_up() {
        let mut counts = PortCounts::new(4, HALF_OPEN_PORT_QUIET);
        for (port, times) in [(22u16, 3), (80, 9), (443, 5), (8080, 1)] {
            for _ in 0..times {
                counts.add(port, 0);
            }
        }
        assert_eq!(counts.top(2), (vec![(80, 9), (443, 5)], 4));
        assert_eq!(counts.top(0), (vec![], 18));
        assert_eq!(
            counts.listed(),
            (vec![(80, 9), (443, 5), (22, 3), (8080, 1)], 0)
        );
        // A fifth port takes the place of the smallest.
        counts.add(9000, 0);
        assert_eq!(
            counts.listed(),
            (vec![(80, 9), (443, 5), (22, 3), (9000, 1)], 1)
        );
        assert_eq!(counts.folded(), 1);
        // No room at all: everything in other, still counted.
        let mut none = PortCounts::new(0, HALF_OPEN_PORT_QUIET);
        none.add(80, 0);
        assert_eq!(none.listed(), (vec![], 1));
        assert_eq!(none.total(), 1);
    }

    #[test]
    fn quiet_ports_are_folded_into_other() {
        let quiet = HALF_OPEN_PORT_QUIET.as_nanos() as u64;
        let mut counts = PortCounts::default();
        for _ in 0..100 {
            counts.add(8080, 0);
        }
        counts.add(443, quiet / 2);
        counts.forget_quiet(quiet - 1);
        assert_eq!(counts.listed(), (vec![(8080, 100), (443, 1)], 0));
        counts.forget_quiet(quiet);
        assert_eq!(counts.listed(), (vec![(443, 1)], 100), "8080 went quiet");
        assert_eq!(counts.folded(), 1);
        // Seen again, it starts afresh; its old count stays in other.
        counts.add(8080, quiet + 1);
        assert_eq!(counts.listed(), (vec![(443, 1), (8080, 1)], 100));
        assert_eq!(counts.total(), 102);
        // A clock that goes back (another capture) folds nothing.
        counts.forget_quiet(0);
        assert_eq!(counts.listed().0.len(), 2);
    }

    /// A record kept on an interface says which, in every output, and its
    /// twin on another interface (a forwarded connection) is another
    /// record with another uid; a capture's says none.
    #[test]
    fn records_name_their_interface() {
        let times = [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|t| 1_000 * MS + t * MS);
        let capture = graceful(40000, times);
        assert!(capture.json(&Clock::Capture).get("iface").is_none());
        assert!(!capture.human_line().contains(" via "));
        let eth0 = Ended {
            iface: Some("eth0"),
            ..capture
        };
        let eth1 = Ended {
            iface: Some("eth1"),
            ..capture
        };
        assert_eq!(eth0.json(&Clock::Capture)["iface"], "eth0");
        let line = eth0.human_line();
        assert!(
            line.ends_with(&format!(" history ShADdFaf via eth0 uid {}", eth0.uid())),
            "{line}"
        );
        assert_ne!(eth0.uid(), eth1.uid());
        assert_ne!(eth0.uid(), capture.uid());
    }

    #[test]
    fn uids_look_like_zeeks_and_are_stable_per_record_and_distinct_across_records() {
        let times = [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|t| 1_000 * MS + t * MS);
        let one = graceful(40000, times);
        let uid = one.uid();
        assert_eq!(uid.len(), 18, "{uid}");
        assert!(uid.starts_with('C'), "{uid}");
        assert!(uid[1..].chars().all(|c| c.is_ascii_alphanumeric()), "{uid}");
        assert_eq!(one.uid(), uid, "one record, one uid");
        assert_eq!(one.json(&Clock::Capture)["uid"], uid.as_str());
        assert!(one.human_line().ends_with(&format!(" uid {uid}")));
        // Another port, or the same 4-tuple reused later: other uids.
        let other_port = graceful(40001, times);
        let reused = graceful(40000, times.map(|t| t + 100 * MS));
        let uids: std::collections::HashSet<String> = [&one, &other_port, &reused]
            .iter()
            .map(|e| e.uid())
            .collect();
        assert_eq!(uids.len(), 3, "{uids:?}");
        assert_eq!(base62_uid(0), "C00000000000000000");
        assert_eq!(base62_uid(u128::MAX).len(), 18);
        // No digit is stuck: 300 records' first digits take many values.
        let first_digits: std::collections::HashSet<char> = (0..300)
            .map(|port| graceful(30000 + port, times).uid().chars().nth(1).unwrap())
            .collect();
        assert!(first_digits.len() > 40, "{first_digits:?}");
        assert_eq!(base62_uid(61), "C0000000000000000z");
    }

    #[test]
    fn a_graceful_close_has_every_zeek_field_and_no_null() {
        let times = [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|t| 1_000 * MS + t * MS);
        let value = graceful(40000, times).json(&Clock::Capture);
        let fields = value.as_object().expect("an object");
        assert!(fields.values().all(|v| !v.is_null()), "{value}");
        assert_eq!(value["duration"], 0.007, "to the second FIN: {value}");
        assert_eq!(
            (&value["orig_bytes"], &value["resp_bytes"]),
            (&5.into(), &5.into())
        );
        assert_eq!(value["orig_ip_bytes"], 5 * 40 + 5, "{value}");
        assert_eq!(value["resp_ip_bytes"], 4 * 40 + 5, "{value}");
        assert_eq!(value["missed_bytes"], 0);
        assert_eq!(value["ts"], 1.0, "{value}");
        assert_eq!(value["ip_proto"], 6);
        assert_eq!(value["history"], "ShADdFaf");
        assert_eq!(value["closed_by"], "orig");
        assert!(fields.contains_key("teardown"), "{value}");
        assert!(!fields.contains_key("rst_cause"), "{value}");
    }

    #[test]
    fn ts_is_written_to_the_microsecond() {
        let ns = 1_796_260_951_036_767_200;
        let times = [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|t| ns + t * MS);
        let value = graceful(40000, times).json(&Clock::Capture);
        assert_eq!(value["ts"].to_string(), "1796260951.036767", "{value}");
    }

    #[test]
    fn bytes_are_given_even_when_the_clock_did_not_move() {
        let value = graceful(40000, [5 * MS; 9]).json(&Clock::Capture);
        assert_eq!(value["duration"], 0.0, "{value}");
        assert_eq!(
            (&value["orig_bytes"], &value["resp_bytes"]),
            (&5.into(), &5.into())
        );
    }

    #[test]
    fn unset_fields_are_left_out() {
        // A lone SYN: no duration, no bytes, nobody closed it.
        let lone = record(40000, &[(true, SYN, 1000, 0, 0, 7 * MS)]);
        let value = lone.json(&Clock::Capture);
        let fields = value.as_object().expect("an object");
        for absent in [
            "duration",
            "orig_bytes",
            "resp_bytes",
            "closed_by",
            "rst_cause",
            "teardown",
        ] {
            assert!(!fields.contains_key(absent), "{absent} in {value}");
        }
        assert_eq!(value["history"], "S");
        assert!(fields.values().all(|v| !v.is_null()), "{value}");
        // A refused SYN: a duration, zero bytes, closed by the responder.
        let refused = record(
            40001,
            &[
                (true, SYN, 1000, 0, 0, 7 * MS),
                (false, RST | ACK, 0, 1001, 0, 8 * MS),
            ],
        );
        let value = refused.json(&Clock::Capture);
        assert_eq!(value["conn_state"], "REJ", "{value}");
        assert_eq!(value["duration"], 0.001, "{value}");
        assert_eq!(
            (&value["orig_bytes"], &value["resp_bytes"]),
            (&0.into(), &0.into())
        );
        assert_eq!(
            (&value["closed_by"], &value["rst_cause"]),
            (&"resp".into(), &"refused".into())
        );
        // An empty history (nothing but a bare record) is left out, not "-".
        let empty = Ended {
            key: key(40002),
            conn: Conn::zeroed(),
            reason: end_reason::END_OF_INPUT,
            kernel_reset: None,
            tunnel: None,
            iface: None,
        };
        assert!(empty.json(&Clock::Capture).get("history").is_none());
    }
}

//! Resets the host sent, joined to the records of their connections.
//!
//! The reset program's events arrive on their own ring buffer, usually well
//! before the connection's record is closed out (a reset record waits out a
//! close delay for stragglers). They wait in a bounded book keyed by the
//! connection's two ends; when a record ends, the reset that falls within
//! its lifetime is taken from the book and travels with the record. Events
//! nobody claims (the connection never crossed the watched interface, or
//! the book was full) are counted, never kept without bound.

use std::collections::{BTreeMap, HashMap, VecDeque};

use teardown_common::addr::Addr16;
use teardown_common::reasons::{
    RESET_REASON_SLOTS, ResetCounts, ResetEvent, endpoint, reset_flag, tcp_state,
};

use crate::{
    conn::tracker::Ended,
    flood::{AlertEvent, Phase},
    kernel::{
        Kernel,
        listeners::{self, Listeners},
        netstat::HandshakeDrops,
        reasons::{ReasonNames, ResetWatch},
    },
    report::figures::{LISTEN_PORTS_LISTED, PortFigures, ReasonFigures, ResetPorts},
};

/// The kernel's reasons as a run follows them: the reset program's events
/// joined to records ([`ResetBook`]), its counts, and the host's handshake
/// counters.
pub struct KernelReasons {
    /// `None` when the reset program could not be attached.
    watch: Option<ResetWatch>,
    /// Reason names by number, each allocated once for the whole run (the
    /// kernel's table, then numbers it lacks, bounded by the counters).
    names: HashMap<u32, &'static str>,
    pub book: ResetBook,
    handshakes_at_start: Option<HandshakeDrops>,
    /// The host's handshake counters at this poll and the one before: an
    /// alert starts from the reading before the poll that raised it.
    handshakes_now: Option<HandshakeDrops>,
    handshakes_before: Option<HandshakeDrops>,
    /// The counters when each alert in progress started, by target.
    alert_starts: HashMap<String, HandshakeDrops>,
    /// The listening sockets' drops when the run started.
    listeners_at_start: Option<Listeners>,
}

impl KernelReasons {
    /// Attaches the reset program if this kernel allows; returns what to
    /// tell the user about it (at most one line each: why reasons are
    /// missing, or why processes are).
    pub fn start(kernel: &mut Kernel) -> (KernelReasons, Vec<String>) {
        let mut notes = Vec::new();
        let watch = match kernel.watch_resets() {
            Ok(watch) => {
                if let Err(why) = &watch.process_attribution {
                    notes.push(format!(
                        "teardown: resets are not put down to processes ({why})"
                    ));
                }
                Some(watch)
            }
            Err(err) => {
                notes.push(format!(
                    "teardown: the kernel's reset reasons are unavailable ({err:#}); records carry the wire's reasons only"
                ));
                None
            }
        };
        let names = match &watch {
            Some(watch) => watch
                .names
                .all()
                .map(|(number, name)| (number, &*Box::leak(name.to_string().into_boxed_str())))
                .collect(),
            None => HashMap::new(),
        };
        (
            KernelReasons {
                watch,
                names,
                book: ResetBook::default(),
                handshakes_at_start: HandshakeDrops::read(),
                handshakes_now: None,
                handshakes_before: None,
                alert_starts: HashMap::new(),
                listeners_at_start: listeners::read().ok(),
            },
            notes,
        )
    }

    /// Tells each alert event what the host's stack did with handshakes
    /// since the alert started: dropping them on full queues, or coping
    /// with SYN cookies.
    pub fn annotate(&mut self, events: &mut [AlertEvent]) {
        let Some(now) = self.handshakes_now else {
            return;
        };
        for event in events {
            let target = event.target.to_string();
            let start = match event.phase {
                Phase::Start => {
                    let start = self.handshakes_before.unwrap_or(now);
                    self.alert_starts.insert(target.clone(), start);
                    start
                }
                _ => self
                    .alert_starts
                    .get(&target)
                    .copied()
                    .or(self.handshakes_at_start)
                    .unwrap_or(now),
            };
            event.host = Some(now.since(&start));
            if event.phase == Phase::End {
                self.alert_starts.remove(&target);
            }
        }
    }

    /// The name of reason number `reason`.
    fn name(&mut self, reason: u32) -> &'static str {
        let slot = ResetCounts::slot(reason) as u32;
        let number = if slot == reason {
            reason
        } else {
            RESET_REASON_SLOTS
        };
        self.names.entry(number).or_insert_with(|| {
            if number == RESET_REASON_SLOTS {
                "REASON_OUT_OF_RANGE"
            } else {
                Box::leak(ReasonNames::default().name(number).into_boxed_str())
            }
        })
    }

    /// Reads the waiting reset events into the book and gives up the ones
    /// no record claimed in time. Called before the records are collected,
    /// so a record finds the resets sent before it ended.
    pub fn poll(&mut self, now_ns: u64) {
        self.handshakes_before = self.handshakes_now.take();
        self.handshakes_now = HandshakeDrops::read();
        let mut events = Vec::new();
        if let Some(watch) = &mut self.watch {
            watch.drain(|event| events.push(*event));
        }
        for event in &events {
            let name = self.name(event.reason);
            self.book.insert(event, name);
        }
        self.book.expire(now_ns);
    }

    /// Gives each ended record the reset the host sent in its lifetime.
    pub fn claim(&mut self, ended: &mut [Ended]) {
        if self.book.is_empty() {
            return;
        }
        for record in ended {
            record.kernel_reset = self.book.claim(record);
        }
    }

    /// This moment's figures, for [`crate::report::figures::Figures::assemble`].
    pub fn figures(&mut self, kernel: &Kernel) -> anyhow::Result<ReasonFigures> {
        let handshakes = match (HandshakeDrops::read(), &self.handshakes_at_start) {
            (Some(now), Some(start)) => Some(now.since(start)),
            _ => None,
        };
        let listen_drops_by_port = match (&self.listeners_at_start, listeners::read()) {
            (Some(start), Ok(now)) => {
                let mut ports: Vec<(u16, u64)> =
                    listeners::drops_since(&now, start).into_iter().collect();
                ports.sort_by_key(|(port, drops)| (std::cmp::Reverse(*drops), *port));
                let other = ports
                    .iter()
                    .skip(LISTEN_PORTS_LISTED)
                    .map(|(_, drops)| drops)
                    .sum();
                ports.truncate(LISTEN_PORTS_LISTED);
                PortFigures {
                    listed: ports,
                    other,
                }
            }
            _ => PortFigures::default(),
        };
        if self.watch.is_none() {
            return Ok(ReasonFigures {
                handshakes,
                listen_drops_by_port,
                ..ReasonFigures::default()
            });
        }
        let counts = kernel.reset_counts()?;
        let mut resets_sent = BTreeMap::new();
        for (number, count) in counts.by_reason.iter().enumerate() {
            if *count > 0 {
                resets_sent.insert(self.name(number as u32), *count);
            }
        }
        let mut reason_names: Vec<&'static str> = self
            .names
            .values()
            .copied()
            .filter(|name| *name != "MAX")
            .collect();
        reason_names.sort_unstable();
        let (listed, other) = self.book.by_port();
        Ok(ReasonFigures {
            resets_watched: true,
            resets_sent,
            resets_by_port: ResetPorts { listed, other },
            reset_events_lost: counts.events_lost,
            reset_events_skipped: counts.events_skipped,
            resets_unclaimed: self.book.stats.unclaimed + self.book.stats.unaddressed,
            reason_names,
            handshakes,
            listen_drops_by_port,
        })
    }
}

/// At most this many resets wait in the book (about 6 MB).
pub const BOOK_CAPACITY: usize = 65_536;
/// A reset no record claimed within this long is given up: longer than any
/// close delay a reset record waits before it is reported.
pub const UNCLAIMED_AFTER_NS: u64 = 120_000_000_000;
/// A reset belongs to a record when sent within the record's lifetime,
/// give or take this much. The clocks are one (CLOCK_MONOTONIC), and a
/// record's first packet and its resets take the slow path's precise
/// clock; the slack covers a fast-path time a tick coarse (4 ms at HZ=250).
/// It must stay well under the time a client takes to reuse its port: a
/// port scan refused at 25 000/s cycles through the ephemeral ports in
/// half a second.
const LIFETIME_SLACK_NS: u64 = 20_000_000;
/// (local port, reason) pairs counted one by one; the rest sum in `other`.
pub const PORT_REASONS_LISTED: usize = 128;
/// Resets kept per pair of ends: a client refused many times a second
/// reuses its port every ~100 ms, each use with a reset of its own waiting
/// for its record (5 waited at once in `cargo xtask bench --resets`), and
/// a host answering a retransmitting peer resets it several times.
const RESETS_PER_CONNECTION: usize = 64;

/// The kernel's account of one reset, as a record carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelReset {
    pub time_ns: u64,
    /// The kernel's name of the reason (`NO_SOCKET`, `TCP_ABORT_ON_CLOSE`).
    pub reason: &'static str,
    /// The socket's state when the reset was sent (`tcp_state` number).
    pub state: u32,
    /// Whether the reset answered a segment (rather than an abort of the
    /// host's own accord).
    pub reply: bool,
    /// The process behind it, when it ran in the process's context.
    pub process: Option<Process>,
}

impl KernelReset {
    /// The socket state's name (`ESTABLISHED`), or `None` without a socket.
    pub fn state_name(&self) -> Option<&'static str> {
        (self.state != 0).then(|| tcp_state::name(self.state))
    }
}

/// A process: its id and its command name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub comm: [u8; 16],
}

impl Process {
    /// The command name, up to its first NUL.
    pub fn comm(&self) -> String {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}

/// One end: address (IPv4-mapped for IPv4, as flow keys hold them) and port.
type End = (Addr16, u16);

/// A connection's two ends, in a fixed order whichever end sent.
fn pair(family: u8, one: End, other: End) -> (u8, End, End) {
    if one <= other {
        (family, one, other)
    } else {
        (family, other, one)
    }
}

/// What became of the resets, since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BookStats {
    /// Events read.
    pub received: u64,
    /// Resets given to a record.
    pub claimed: u64,
    /// Resets no record claimed in time, or pushed out of a full book.
    pub unclaimed: u64,
    /// Events without a usable address (neither IPv4 nor IPv6).
    pub unaddressed: u64,
}

/// Resets waiting for their records, and the counts by local port.
pub struct ResetBook {
    waiting: HashMap<(u8, End, End), Vec<KernelReset>>,
    /// Arrival order, for expiry and for eviction when full.
    order: VecDeque<(u64, (u8, End, End))>,
    len: usize,
    capacity: usize,
    by_port: BTreeMap<(u16, &'static str), u64>,
    by_port_other: u64,
    pub stats: BookStats,
}

impl Default for ResetBook {
    fn default() -> Self {
        ResetBook::new(BOOK_CAPACITY)
    }
}

impl ResetBook {
    pub fn new(capacity: usize) -> ResetBook {
        ResetBook {
            waiting: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
            capacity: capacity.max(1),
            by_port: BTreeMap::new(),
            by_port_other: 0,
            stats: BookStats::default(),
        }
    }

    /// Resets waiting now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes in one event; `reason` is its kernel name.
    pub fn insert(&mut self, event: &ResetEvent, reason: &'static str) {
        self.stats.received += 1;
        let (Some(local), Some(remote)) = (endpoint(&event.local), endpoint(&event.remote)) else {
            self.stats.unaddressed += 1;
            return;
        };
        let key = (local.2, reason);
        let room = self.by_port.len() < PORT_REASONS_LISTED;
        match self.by_port.get_mut(&key) {
            Some(count) => *count += 1,
            None if room => {
                self.by_port.insert(key, 1);
            }
            None => self.by_port_other += 1,
        }
        let reset = KernelReset {
            time_ns: event.time_ns,
            reason,
            state: event.state,
            reply: event.flags & reset_flag::REPLY != 0,
            process: (event.flags & reset_flag::PROCESS != 0).then_some(Process {
                pid: event.pid,
                comm: event.comm,
            }),
        };
        if self.len >= self.capacity {
            self.drop_oldest();
        }
        let key = pair(local.0, (local.1, local.2), (remote.1, remote.2));
        let resets = self.waiting.entry(key).or_default();
        if resets.len() >= RESETS_PER_CONNECTION {
            // The first few stand for the connection; later ones (resets
            // to a peer's retransmissions) change no record.
            self.stats.unclaimed += 1;
            return;
        }
        resets.push(reset);
        self.len += 1;
        self.order.push_back((event.time_ns, key));
    }

    /// Gives up the oldest waiting reset.
    fn drop_oldest(&mut self) {
        while let Some((time, key)) = self.order.pop_front() {
            if self.remove(key, time) {
                self.stats.unclaimed += 1;
                return;
            }
        }
    }

    /// Removes the reset of `key` sent at `time`, if still waiting.
    fn remove(&mut self, key: (u8, End, End), time: u64) -> bool {
        let Some(resets) = self.waiting.get_mut(&key) else {
            return false;
        };
        let Some(index) = resets.iter().position(|reset| reset.time_ns == time) else {
            return false;
        };
        resets.remove(index);
        if resets.is_empty() {
            self.waiting.remove(&key);
        }
        self.len -= 1;
        true
    }

    /// The first reset the host sent within `ended`'s lifetime, taken from
    /// the book with any others of that lifetime. Only when none falls
    /// strictly within it does a reset just outside count (the nearest,
    /// within [`LIFETIME_SLACK_NS`]): a port reused a moment later must
    /// keep its own reset.
    pub fn claim(&mut self, ended: &Ended) -> Option<KernelReset> {
        let key = pair(
            ended.key.family,
            (ended.key.addr_a, ended.key.port_a),
            (ended.key.addr_b, ended.key.port_b),
        );
        let resets = self.waiting.get_mut(&key)?;
        let (start, last) = (
            ended.conn.start_ns,
            ended.conn.last_ns.max(ended.conn.start_ns),
        );
        let inside = |reset: &KernelReset| (start..=last).contains(&reset.time_ns);
        let distance = |reset: &KernelReset| {
            start
                .saturating_sub(reset.time_ns)
                .max(reset.time_ns.saturating_sub(last))
        };
        let (first, taken) = match resets
            .iter()
            .filter(|reset| inside(reset))
            .min_by_key(|reset| reset.time_ns)
        {
            Some(first) => {
                let first = *first;
                let before = resets.len();
                resets.retain(|reset| !inside(reset));
                (first, before - resets.len())
            }
            None => {
                let (index, nearest) = resets
                    .iter()
                    .enumerate()
                    .filter(|(_, reset)| distance(reset) <= LIFETIME_SLACK_NS)
                    .min_by_key(|(_, reset)| distance(reset))?;
                let nearest = *nearest;
                resets.remove(index);
                (nearest, 1)
            }
        };
        if resets.is_empty() {
            self.waiting.remove(&key);
        }
        self.len -= taken;
        self.stats.claimed += 1;
        // Further resets of the same lifetime are the same story told again.
        self.stats.unclaimed += taken as u64 - 1;
        Some(first)
    }

    /// Gives up resets older than [`UNCLAIMED_AFTER_NS`] at `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        let limit = now_ns.saturating_sub(UNCLAIMED_AFTER_NS);
        while let Some(&(time, key)) = self.order.front() {
            if time >= limit {
                break;
            }
            self.order.pop_front();
            if self.remove(key, time) {
                self.stats.unclaimed += 1;
            }
        }
        // The order list also holds claimed resets' entries: trim it when it
        // runs far ahead of what waits.
        if self.order.len() > 2 * self.capacity {
            let waiting: std::collections::HashSet<_> = self
                .waiting
                .iter()
                .flat_map(|(key, resets)| resets.iter().map(move |reset| (reset.time_ns, *key)))
                .collect();
            self.order.retain(|entry| waiting.contains(entry));
        }
    }

    /// Resets by local port and reason (at most [`PORT_REASONS_LISTED`]
    /// pairs), and the count of the rest.
    pub fn by_port(&self) -> (Vec<(u16, &'static str, u64)>, u64) {
        let listed = self
            .by_port
            .iter()
            .map(|((port, reason), count)| (*port, *reason, *count))
            .collect();
        (listed, self.by_port_other)
    }
}

#[cfg(test)]
mod tests {
    use teardown_common::{conn::Conn, flow::FlowKey, reasons::SOCKADDR_BYTES};

    use super::*;

    fn sockaddr(address: [u8; 4], port: u16) -> [u8; SOCKADDR_BYTES] {
        let mut out = [0u8; SOCKADDR_BYTES];
        out[..2].copy_from_slice(&2u16.to_le_bytes());
        out[2..4].copy_from_slice(&port.to_be_bytes());
        out[4..8].copy_from_slice(&address);
        out
    }

    const SERVER: [u8; 4] = [192, 0, 2, 2];
    const CLIENT: [u8; 4] = [192, 0, 2, 1];

    fn event(client_port: u16, time_ns: u64, flags: u32) -> ResetEvent {
        let mut comm = [0u8; 16];
        comm[..6].copy_from_slice(b"server");
        ResetEvent {
            time_ns,
            pid: 4242,
            reason: 11,
            state: 7,
            flags,
            local: sockaddr(SERVER, 8080),
            remote: sockaddr(CLIENT, client_port),
            comm,
        }
    }

    /// A record of client port `client_port` from `start` to `last`, keyed
    /// the client first as the kernel would have it either way.
    fn ended(client_port: u16, start: u64, last: u64, client_first: bool) -> Ended {
        let client = (Addr16::v4_mapped(CLIENT), client_port);
        let server = (Addr16::v4_mapped(SERVER), 8080);
        let (a, b) = if client_first {
            (client, server)
        } else {
            (server, client)
        };
        let key = FlowKey {
            addr_a: a.0,
            addr_b: b.0,
            port_a: a.1,
            port_b: b.1,
            family: 4,
            _pad8: 0,
            _pad16: 0,
        };
        let mut conn = Conn::zeroed();
        conn.start_ns = start;
        conn.last_ns = last;
        Ended {
            key,
            conn,
            reason: 0,
            kernel_reset: None,
            tunnel: None,
            iface: None,
        }
    }

    #[test]
    fn a_reset_joins_its_record_whichever_way_the_key_runs() {
        for client_first in [true, false] {
            let mut book = ResetBook::default();
            book.insert(
                &event(40000, 5_000, reset_flag::PROCESS),
                "TCP_ABORT_ON_CLOSE",
            );
            let reset = book
                .claim(&ended(40000, 1_000, 9_000, client_first))
                .unwrap();
            assert_eq!(reset.reason, "TCP_ABORT_ON_CLOSE");
            assert_eq!(reset.state_name(), Some("CLOSE"));
            assert_eq!(reset.process.unwrap().pid, 4242);
            assert_eq!(reset.process.unwrap().comm(), "server");
            assert!(!reset.reply);
            assert!(book.is_empty());
            assert_eq!(book.stats.claimed, 1);
        }
    }

    #[test]
    fn a_reset_outside_the_lifetime_is_left_for_the_next_connection_on_those_ports() {
        let mut book = ResetBook::default();
        let later = 100 * LIFETIME_SLACK_NS;
        book.insert(&event(40000, later, reset_flag::REPLY), "NO_SOCKET");
        assert_eq!(book.claim(&ended(40000, 1_000, 9_000, true)), None);
        let reset = book
            .claim(&ended(40000, later - 10, later + 10, true))
            .unwrap();
        assert_eq!(reset.reason, "NO_SOCKET");
        assert!(reset.reply && reset.process.is_none());
    }

    #[test]
    fn the_first_reset_of_a_lifetime_is_the_records_and_the_rest_are_counted() {
        let mut book = ResetBook::default();
        book.insert(&event(40000, 7_000, 0), "TCP_STATE");
        book.insert(&event(40000, 6_000, 0), "TCP_ABORT_ON_DATA");
        book.insert(&event(40000, 8_000, 0), "TCP_STATE");
        let reset = book.claim(&ended(40000, 1_000, 9_000, true)).unwrap();
        assert_eq!(reset.reason, "TCP_ABORT_ON_DATA");
        assert!(book.is_empty());
        assert_eq!(book.stats.claimed, 1);
        assert_eq!(book.stats.unclaimed, 2);
    }

    #[test]
    fn a_port_reused_within_the_slack_keeps_its_own_reset() {
        let mut book = ResetBook::default();
        let second = 5_000_000; // 5 ms later, on the same ports
        book.insert(&event(40000, 1_500, reset_flag::REPLY), "NO_SOCKET");
        book.insert(&event(40000, second + 500, reset_flag::REPLY), "NO_SOCKET");
        let first = book.claim(&ended(40000, 1_000, 2_000, true)).unwrap();
        assert_eq!(first.time_ns, 1_500);
        let next = book
            .claim(&ended(40000, second, second + 1_000, true))
            .unwrap();
        assert_eq!(next.time_ns, second + 500);
        assert_eq!(book.stats.unclaimed, 0);
    }

    #[test]
    fn a_reset_just_outside_a_coarse_lifetime_is_still_claimed() {
        let mut book = ResetBook::default();
        // The record's last time a tick coarse: the reset 3 ms after it.
        book.insert(&event(40000, 9_000 + 3_000_000, 0), "TCP_STATE");
        assert!(book.claim(&ended(40000, 1_000, 9_000, true)).is_some());
        book.insert(&event(40000, 9_000 + 3 * LIFETIME_SLACK_NS, 0), "TCP_STATE");
        assert!(book.claim(&ended(40000, 1_000, 9_000, true)).is_none());
    }

    #[test]
    fn the_book_is_bounded_and_what_it_gives_up_is_counted() {
        let mut book = ResetBook::new(10);
        for port in 0..25 {
            book.insert(&event(40000 + port, 1_000 + port as u64, 0), "NO_SOCKET");
        }
        assert_eq!(book.len(), 10);
        assert_eq!(book.stats.unclaimed, 15);
        // The newest ten are the ones left.
        assert!(book.claim(&ended(40024, 0, 2_000, true)).is_some());
        assert!(book.claim(&ended(40000, 0, 2_000, true)).is_none());
        assert_eq!(book.stats.received, 25);
    }

    #[test]
    fn unclaimed_resets_expire() {
        let mut book = ResetBook::default();
        book.insert(&event(40000, 1_000, 0), "NO_SOCKET");
        book.expire(1_000 + UNCLAIMED_AFTER_NS - 1);
        assert_eq!(book.len(), 1);
        book.expire(1_000 + UNCLAIMED_AFTER_NS + 1);
        assert!(book.is_empty());
        assert_eq!(book.stats.unclaimed, 1);
    }

    #[test]
    fn counts_by_port_are_bounded_and_add_up() {
        let mut book = ResetBook::new(1_000_000);
        let mut sent = 0;
        for port in 0..200u16 {
            let mut reset = event(40000, 1_000 + u64::from(port), 0);
            reset.local = sockaddr(SERVER, port);
            book.insert(&reset, "NO_SOCKET");
            book.insert(&reset, "NO_SOCKET");
            sent += 2;
        }
        let (listed, other) = book.by_port();
        assert_eq!(listed.len(), PORT_REASONS_LISTED);
        let total: u64 = listed.iter().map(|(_, _, count)| count).sum::<u64>() + other;
        assert_eq!(total, sent);
        assert_eq!(listed[0], (0, "NO_SOCKET", 2));
    }

    #[test]
    fn an_event_without_addresses_is_counted_not_kept() {
        let mut book = ResetBook::default();
        let mut reset = event(40000, 1_000, 0);
        reset.remote = [0; SOCKADDR_BYTES];
        book.insert(&reset, "NO_SOCKET");
        assert!(book.is_empty());
        assert_eq!(book.stats.unaddressed, 1);
    }
}

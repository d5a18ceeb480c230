//! The figures of one tick of `teardown run`, assembled once.
//!
//! [`Figures::assemble`] is the one place where the kernel's readings (taken
//! by the run loop), the tracker's bookkeeping, the alert watch's summary and
//! the outputs' losses become one plain value. Every view is a pure function
//! of it: the plain lines ([`crate::report::plain`]), the JSON `stats` and `final`
//! lines ([`crate::report::json`]), the dashboard ([`crate::report::dashboard`]) and the
//! Prometheus exposition ([`crate::report::prometheus`]). None of them reads the
//! kernel or the tracker.
//!
//! The JSON `stats` line is this value serialized (see [`crate::report::json`]): the
//! serde attributes below are its schema, so a field added here shows up
//! there, named as it is here, unless it is marked `skip`.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};
use teardown_common::{
    counters::{Counter, Counters, Tallies},
    events::FlowStats,
};

use crate::{conn::tracker::Tracker, flood::DebrisCounts, kernel::netstat::HandshakeDrops};

/// Everything one tick of `teardown run` shows, in every view.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figures {
    /// When the figures were taken, Unix seconds.
    pub ts: f64,
    /// The interface watched; with several, their names joined by commas
    /// (each one's own figures are in `interfaces`).
    pub iface: String,
    /// Seconds the rates are measured over (the report interval); `None`
    /// when the figures carry no rates (between reports, at the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    /// What arrived (XDP): `totals` and, at a report, `rates`; with several
    /// interfaces, the sum of theirs.
    #[serde(flatten)]
    pub received: Traffic,
    /// What the host sent (TC egress); `None` with `--direction ingress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Traffic>,
    /// The flow table's figures and the connections ended (summed over the
    /// interfaces), with the flood debris summarised, which is the host's.
    pub flows: FlowFigures,
    /// Each interface's own figures, one per `--iface` in the order given:
    /// the views that break figures down by interface (Prometheus's
    /// `iface` label) read these. In the JSON only when there are several;
    /// with one, the top level is that interface's.
    #[serde(skip_serializing_if = "single_interface")]
    pub interfaces: Vec<InterfaceFigures>,
    /// SYN-flood alerts.
    pub alerts: AlertFigures,
    /// The kernel's own reasons: resets the host sent, and the handshakes
    /// its stack dropped or answered with cookies.
    #[serde(rename = "kernel_reasons")]
    pub reasons: ReasonFigures,
    /// Lines each output could not write: stdout, then the log if any.
    pub lines_lost: LinesLost,
    /// About the run, for the views that show it (not in the JSON).
    #[serde(skip)]
    pub run: RunFacts,
    /// Connections the metrics endpoint gave up on. The endpoint counts them
    /// itself and fills them in when it serves the figures (not in the JSON).
    #[serde(skip)]
    pub endpoint_drops: EndpointDrops,
    /// The process's own figures (`process_*`), read by the metrics
    /// endpoint when it is given the figures (not in the JSON).
    #[serde(skip)]
    pub process: Option<crate::report::process::ProcessFigures>,
}

/// Whether there is one interface at most: its figures are the top level's.
fn single_interface(interfaces: &[InterfaceFigures]) -> bool {
    interfaces.len() < 2
}

/// One interface's own figures: what its kernel instance (its programs and
/// flow table, each interface has its own) counted, and the connections its
/// records ended. The host's own figures (alerts, the kernel's reasons, the
/// outputs, flood debris) are not per interface.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InterfaceFigures {
    pub iface: String,
    /// What arrived on it (XDP): `totals` and, at a report, `rates`.
    #[serde(flatten)]
    pub received: Traffic,
    /// What the host sent through it (TC egress).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Traffic>,
    /// Its flow table's figures and the connections ended on it
    /// (`records_summarised` and `debris_summaries` are the host's: 0 here).
    pub flows: FlowFigures,
}

impl InterfaceFigures {
    /// At zero, before the first reading.
    fn zero(iface: &str, egress: bool) -> InterfaceFigures {
        InterfaceFigures {
            iface: iface.to_string(),
            received: Traffic::zero(),
            egress: egress.then(Traffic::zero),
            flows: FlowFigures::default(),
        }
    }

    /// The interface's counters since its baseline, rates since its
    /// previous reading `seconds` ago when given, and its tracker's figures.
    fn assemble(source: &InterfaceSource<'_>, seconds: Option<f64>) -> InterfaceFigures {
        let rates = |now: &Tallies, before: Option<&Tallies>| {
            seconds.zip(before).map(|(seconds, before)| Rates {
                delta: now.since(before).totals(),
                seconds: seconds.max(1e-9),
            })
        };
        let (now, previous) = (source.now, source.previous);
        let received = Traffic {
            totals: now.received.since(&source.baseline.received).totals(),
            rates: rates(&now.received, previous.map(|before| &before.received)),
        };
        let egress = match (&now.sent, &source.baseline.sent) {
            (Some(sent), Some(start)) => Some(Traffic {
                totals: sent.since(start).totals(),
                rates: rates(sent, previous.and_then(|before| before.sent.as_ref())),
            }),
            _ => None,
        };
        InterfaceFigures {
            iface: source.iface.to_string(),
            received,
            egress,
            flows: FlowFigures::new(&now.flow, source.tracker),
        }
    }
}

/// What one interface gives a tick's figures: its kernel instance's
/// readings and its tracker.
pub struct InterfaceSource<'a> {
    pub iface: &'a str,
    /// Its counters before anything was attached.
    pub baseline: &'a Baseline,
    pub now: &'a Reading,
    /// The latest report's reading, for rates.
    pub previous: Option<&'a Reading>,
    pub tracker: &'a Tracker,
}

/// `counters` added to `sum`, counter by counter.
fn add_counters(sum: &mut Counters, counters: &Counters) {
    for (sum, value) in sum.values.iter_mut().zip(counters.values.iter()) {
        *sum = sum.wrapping_add(*value);
    }
}

impl Traffic {
    /// Several interfaces' traffic, added up: the totals, and the rates if
    /// every one has them (they are measured over the same interval).
    fn sum<'a>(all: impl Iterator<Item = &'a Traffic> + Clone) -> Traffic {
        let mut totals = Counters::default();
        for traffic in all.clone() {
            add_counters(&mut totals, &traffic.totals);
        }
        let rates = all
            .map(|traffic| traffic.rates)
            .reduce(|sum, rates| {
                let (mut sum, rates) = (sum?, rates?);
                add_counters(&mut sum.delta, &rates.delta);
                Some(sum)
            })
            .flatten();
        Traffic { totals, rates }
    }
}

/// What stays the same for the whole run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunFacts {
    /// teardown's version.
    pub version: &'static str,
    /// The direction watched, as `--direction` spells it (`both`, `ingress`).
    pub direction: &'static str,
    /// When teardown started, Unix seconds.
    pub start_time_seconds: f64,
    /// Slots in each interface's flow table (`--max-flows`, rounded up to
    /// a power of two); 0 where there is no table (tests).
    pub flow_table_capacity: u64,
}

impl RunFacts {
    /// The facts of a run starting now.
    pub fn starting_now(direction: &'static str) -> RunFacts {
        RunFacts {
            version: env!("CARGO_PKG_VERSION"),
            direction,
            start_time_seconds: unix_seconds(),
            flow_table_capacity: 0,
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// One direction's packet and flag counters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Traffic {
    /// Since teardown started.
    #[serde(serialize_with = "serialize_totals")]
    pub totals: Counters,
    /// Over the latest report interval, when the figures are a report's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates: Option<Rates>,
}

impl Traffic {
    /// Counters at 0 and no rates: before the first reading.
    pub fn zero() -> Traffic {
        Traffic {
            totals: Counters::default(),
            rates: None,
        }
    }

    /// `counter` per second over the interval (0 without rates).
    pub fn per_second(&self, counter: Counter) -> f64 {
        self.rates.map_or(0.0, |rates| rates.per_second(counter))
    }
}

/// Counts over an interval, shown per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    pub delta: Counters,
    /// The interval's length (never 0).
    pub seconds: f64,
}

impl Rates {
    pub fn per_second(&self, counter: Counter) -> f64 {
        self.delta.get(counter) as f64 / self.seconds
    }
}

/// Every counter by key, as `{"packets": 12, ...}`.
pub fn serialize_totals<S: Serializer>(
    totals: &Counters,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(
        Counter::ALL
            .iter()
            .map(|counter| (counter.key(), totals.get(*counter))),
    )
}

/// Every counter's rate by key, rounded to thousandths.
impl Serialize for Rates {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(Counter::ALL.iter().map(|counter| {
            (
                counter.key(),
                (self.per_second(*counter) * 1000.0).round() / 1000.0,
            )
        }))
    }
}

/// The flow table's figures (the kernel's) and the connections ended (the
/// tracker's).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FlowFigures {
    /// Records user space is tracking now.
    pub tracked: u64,
    /// Records the kernel created.
    pub created: u64,
    /// Handshakes waiting for an answer now.
    pub half_open: u64,
    /// Inserts the flow table refused.
    pub insert_failed: u64,
    /// One-sided records evicted for a new connection before they ended.
    pub evicted: u64,
    /// Ring-buffer events dropped.
    pub events_lost: u64,
    /// SYNs over the half-open budget, not tracked.
    pub syn_untracked: u64,
    /// SYN-ACKs with no record over the half-open budget, not tracked.
    pub synack_untracked: u64,
    /// Other segments of connections with no record (an ACK flood's) over
    /// the mid-stream budget, not tracked.
    pub midstream_untracked: u64,
    /// Segments given up on after a bounded wait for a held flow-table slot.
    pub lock_contended: u64,
    /// SYNs not counted per destination (their slot belonged to another).
    pub dest_collisions: u64,
    pub truncated_segments: u64,
    /// Connections inside a tunnel first seen when the kernel's table of
    /// tunnels was full: their records name the tunnel's kind only.
    pub tunnels_unrecorded: u64,
    /// Connections ended, by Zeek's conn_state and by teardown's close kind.
    pub ended_by_conn_state: BTreeMap<&'static str, u64>,
    pub ended_by_close: BTreeMap<&'static str, u64>,
    /// Half-open timeouts by responder port.
    #[serde(rename = "half_open_timeouts_by_port")]
    pub half_open_timeouts: PortFigures,
    /// Ports folded into `other` since the start.
    pub half_open_timeout_ports_folded: u64,
    /// Ended records of a flood's debris counted into `flood_debris`
    /// summaries instead of written in full (`--flood-records summary`):
    /// with the full records, they make up every record ended.
    pub records_summarised: u64,
    /// `flood_debris` summaries made (one per target and interval).
    pub debris_summaries: u64,
}

/// `, {label} {count}` once `count` is not 0, else nothing: the words for
/// a count the plain line and the dashboard only mention once there is
/// something to say (a flood's), so their lines stay as they were
/// otherwise.
pub fn phrase_if_any(label: &str, count: u64) -> String {
    if count > 0 {
        format!(", {label} {count}")
    } else {
        String::new()
    }
}

/// The plain line's and the dashboard's words for `midstream_untracked`
/// ([`phrase_if_any`]).
pub fn midstream_untracked_words(count: u64) -> String {
    phrase_if_any("mid-stream segments untracked", count)
}

impl FlowFigures {
    /// The kernel's flow statistics with the tracker's.
    pub fn new(flow: &FlowStats, tracker: &Tracker) -> FlowFigures {
        let ports = &tracker.stats.half_open_by_port;
        let (listed, other) = ports.listed();
        FlowFigures {
            tracked: tracker.live() as u64,
            created: flow.created,
            half_open: tracker.half_open(flow),
            insert_failed: flow.insert_failed,
            evicted: flow.evicted,
            events_lost: flow.events_lost,
            syn_untracked: flow.syn_untracked,
            synack_untracked: flow.synack_untracked,
            midstream_untracked: flow.midstream_untracked,
            lock_contended: flow.lock_contended,
            dest_collisions: flow.dest_collisions,
            truncated_segments: flow.truncated_segments,
            tunnels_unrecorded: flow.tunnels_unrecorded,
            ended_by_conn_state: tracker.stats.by_conn_state.clone(),
            ended_by_close: tracker.stats.by_close.clone(),
            half_open_timeouts: PortFigures { listed, other },
            half_open_timeout_ports_folded: ports.folded(),
            records_summarised: 0,
            debris_summaries: 0,
        }
    }

    /// Connections ended since the start.
    pub fn ended(&self) -> u64 {
        self.ended_by_close.values().sum()
    }

    /// Several interfaces' flow figures, added up: every count, and the
    /// half-open timeouts port by port (at most as many ports listed as
    /// one interface lists, the rest in `other`).
    fn sum<'a>(all: impl Iterator<Item = &'a FlowFigures> + Clone) -> FlowFigures {
        let mut sum = FlowFigures::default();
        for flows in all.clone() {
            sum.tracked += flows.tracked;
            sum.created += flows.created;
            sum.half_open += flows.half_open;
            sum.insert_failed += flows.insert_failed;
            sum.evicted += flows.evicted;
            sum.events_lost += flows.events_lost;
            sum.syn_untracked += flows.syn_untracked;
            sum.synack_untracked += flows.synack_untracked;
            sum.midstream_untracked += flows.midstream_untracked;
            sum.lock_contended += flows.lock_contended;
            sum.dest_collisions += flows.dest_collisions;
            sum.truncated_segments += flows.truncated_segments;
            sum.tunnels_unrecorded += flows.tunnels_unrecorded;
            for (state, count) in &flows.ended_by_conn_state {
                *sum.ended_by_conn_state.entry(state).or_default() += count;
            }
            for (close, count) in &flows.ended_by_close {
                *sum.ended_by_close.entry(close).or_default() += count;
            }
            sum.half_open_timeout_ports_folded += flows.half_open_timeout_ports_folded;
            sum.records_summarised += flows.records_summarised;
            sum.debris_summaries += flows.debris_summaries;
        }
        sum.half_open_timeouts = PortFigures::sum(
            all.map(|flows| &flows.half_open_timeouts),
            crate::conn::tracker::HALF_OPEN_PORTS_LISTED,
        );
        sum
    }
}

/// Half-open timeouts by responder port: the listed ports (at most
/// [`crate::conn::tracker::HALF_OPEN_PORTS_LISTED`], most first, ties by port) and
/// `other`, the sum of the rest, so that they add up to every timeout
/// however many ports timed out. In JSON: `{"8080": 13, ..., "other": 40}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortFigures {
    pub listed: Vec<(u16, u64)>,
    pub other: u64,
}

impl PortFigures {
    /// Several lists added up port by port: the `listed` ports with most,
    /// ties by port, and `other` holding the rest, so the sum still adds up.
    fn sum<'a>(all: impl Iterator<Item = &'a PortFigures>, listed: usize) -> PortFigures {
        let mut by_port: BTreeMap<u16, u64> = BTreeMap::new();
        let mut other = 0;
        for ports in all {
            for (port, count) in &ports.listed {
                *by_port.entry(*port).or_default() += count;
            }
            other += ports.other;
        }
        let mut ports: Vec<(u16, u64)> = by_port.into_iter().collect();
        ports.sort_by_key(|(port, count)| (std::cmp::Reverse(*count), *port));
        other += ports
            .iter()
            .skip(listed)
            .map(|(_, count)| count)
            .sum::<u64>();
        ports.truncate(listed);
        PortFigures {
            listed: ports,
            other,
        }
    }

    /// The `n` ports with most timeouts, and the sum of all the others.
    pub fn top(&self, n: usize) -> (Vec<(u16, u64)>, u64) {
        let shown = &self.listed[..n.min(self.listed.len())];
        let rest: u64 = self.listed[shown.len()..]
            .iter()
            .map(|(_, count)| count)
            .sum();
        (shown.to_vec(), self.other.saturating_add(rest))
    }
}

impl Serialize for PortFigures {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.listed
                .iter()
                .map(|(port, count)| (port.to_string(), *count))
                .chain(std::iter::once(("other".to_string(), self.other))),
        )
    }
}

/// The kernel's own reasons (`kernel_reasons` in JSON).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReasonFigures {
    /// Whether the reset program is attached (`tcp:tcp_send_reset`); without
    /// it records carry the wire's reasons only.
    pub resets_watched: bool,
    /// Resets the host sent since the start, by the kernel's reason (the
    /// ones that occurred).
    pub resets_sent: BTreeMap<&'static str, u64>,
    /// The same resets by local port and reason (a bounded list, the rest
    /// in `other`): `{"8080": {"NO_SOCKET": 3}, "other": 0}`.
    pub resets_by_port: ResetPorts,
    /// Reset events the ring buffer had no room for (still counted above,
    /// but no record got their reason).
    pub reset_events_lost: u64,
    /// Reset events not sent because no record could claim them: resets of
    /// connections the flow table held no record of while it was under
    /// pressure (a flood). Counted above, and not by port.
    pub reset_events_skipped: u64,
    /// Resets no record claimed: their connection never crossed the watched
    /// interface, or was not tracked, or the host reset it again.
    pub resets_unclaimed: u64,
    /// Every reason the running kernel names: Prometheus lists them all,
    /// zeros included.
    #[serde(skip)]
    pub reason_names: Vec<&'static str>,
    /// The host stack's handshake drops and SYN cookies since the start,
    /// where `/proc/net/netstat` can be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<HandshakeDrops>,
    /// Handshake segments each listening port dropped since the start (the
    /// listeners' own `sk_drops`, through `sock_diag`): at most
    /// [`LISTEN_PORTS_LISTED`] ports, most first, the rest in `other`.
    pub listen_drops_by_port: PortFigures,
}

/// Listening ports listed one by one in `listen_drops_by_port`.
pub const LISTEN_PORTS_LISTED: usize = 32;

/// Resets by local port and reason, bounded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResetPorts {
    pub listed: Vec<(u16, &'static str, u64)>,
    pub other: u64,
}

impl Serialize for ResetPorts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut ports: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for (port, reason, count) in &self.listed {
            ports
                .entry(port.to_string())
                .or_default()
                .insert(reason, *count);
        }
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(ports.len() + 1))?;
        for (port, reasons) in &ports {
            map.serialize_entry(port, reasons)?;
        }
        map.serialize_entry("other", &self.other)?;
        map.end()
    }
}

pub use crate::flood::{AlertState, AlertSummary};

/// SYN-flood alerts: the summary (the JSON `alerts` object) and what the
/// other views show of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AlertFigures {
    #[serde(flatten)]
    pub summary: AlertSummary,
    /// Every target's state (ended ones stay, inactive): Prometheus.
    #[serde(skip)]
    pub states: Vec<AlertState>,
    /// One short line per alert in progress: the dashboard.
    #[serde(skip)]
    pub active_lines: Vec<String>,
    /// The alerts in one line, as the alert watch words it: the plain output.
    #[serde(skip)]
    pub summary_line: String,
}

/// Lines each output could not write, by its key (`stdout`, `log`), in the
/// order of the outputs. In JSON: `{"stdout": 0, "log": 12}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinesLost(pub Vec<(&'static str, u64)>);

impl LinesLost {
    /// The lines `key` lost, if that output is in use.
    pub fn of(&self, key: &str) -> Option<u64> {
        self.0
            .iter()
            .find(|(output, _)| *output == key)
            .map(|(_, count)| *count)
    }
}

impl Serialize for LinesLost {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, count)| (*key, *count)))
    }
}

/// Connections to the metrics endpoint closed without serving a scrape, by
/// why: `teardown_metrics_connections_dropped_total{reason}`. They show
/// whether anyone is crowding the endpoint, and which limit turned them away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointDrops {
    /// Cancelled at capacity to make room for a newcomer.
    pub evicted: u64,
    /// Request head not complete in time (answered 408).
    pub read_timeout: u64,
    /// Response not taken in time.
    pub write_timeout: u64,
    /// Request head too large (answered 431).
    pub too_large: u64,
}

impl EndpointDrops {
    /// Each reason with its count, all of them always (so `rate()` over a
    /// reason never comes back empty).
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("evicted", self.evicted),
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            ("too_large", self.too_large),
        ]
    }
}

/// One reading of the kernel's counters and flow statistics, taken by the
/// run loop.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub received: Tallies,
    /// `None` when egress is not watched.
    pub sent: Option<Tallies>,
    pub flow: FlowStats,
}

/// Where the counters started: the reading before anything was attached.
pub struct Baseline {
    pub received: Tallies,
    pub sent: Option<Tallies>,
}

impl Figures {
    /// Figures at zero, before the first reading: what the metrics endpoint
    /// serves until the run loop publishes. `interfaces` are the interfaces
    /// watched, `egress` says whether the sent counters are watched, and
    /// `outputs` the outputs in use (their samples are there, at 0, from
    /// the first scrape on).
    pub fn zero(
        interfaces: &[&str],
        run: RunFacts,
        egress: bool,
        outputs: &[&'static str],
    ) -> Figures {
        Figures {
            ts: run.start_time_seconds,
            iface: interfaces.join(","),
            interval: None,
            received: Traffic::zero(),
            egress: egress.then(Traffic::zero),
            flows: FlowFigures::default(),
            interfaces: interfaces
                .iter()
                .map(|iface| InterfaceFigures::zero(iface, egress))
                .collect(),
            alerts: AlertFigures::default(),
            reasons: ReasonFigures::default(),
            lines_lost: LinesLost(outputs.iter().map(|key| (*key, 0)).collect()),
            run,
            endpoint_drops: EndpointDrops::default(),
            process: None,
        }
    }

    /// The one place the figures are put together: each interface's
    /// counters since its baseline, rates since its previous reading
    /// (`seconds` ago, at a report) and its flow figures with its
    /// tracker's; their sum; the flood debris summarised, the alerts, the
    /// kernel's reasons and the outputs' losses, which are the host's.
    pub fn assemble(
        run: &RunFacts,
        interfaces: &[InterfaceSource<'_>],
        seconds: Option<f64>,
        alerts: AlertFigures,
        reasons: ReasonFigures,
        lines_lost: LinesLost,
        debris: DebrisCounts,
    ) -> Figures {
        let interfaces: Vec<InterfaceFigures> = interfaces
            .iter()
            .map(|source| InterfaceFigures::assemble(source, seconds))
            .collect();
        // One interface: its figures as they are (the sums would only
        // reorder ties among its listed ports).
        let (received, egress, flows) = match interfaces.as_slice() {
            [only] => (only.received, only.egress, only.flows.clone()),
            _ => (
                Traffic::sum(interfaces.iter().map(|one| &one.received)),
                interfaces
                    .iter()
                    .map(|one| one.egress.as_ref())
                    .collect::<Option<Vec<_>>>()
                    .filter(|sent| !sent.is_empty())
                    .map(|sent| Traffic::sum(sent.into_iter())),
                FlowFigures::sum(interfaces.iter().map(|one| &one.flows)),
            ),
        };
        Figures {
            ts: unix_seconds(),
            iface: interfaces
                .iter()
                .map(|one| one.iface.as_str())
                .collect::<Vec<_>>()
                .join(","),
            interval: seconds.map(|seconds| seconds.max(1e-9)),
            received,
            egress,
            flows: FlowFigures {
                records_summarised: debris.records_summarised,
                debris_summaries: debris.summaries,
                ..flows
            },
            interfaces,
            alerts,
            reasons,
            lines_lost,
            run: run.clone(),
            endpoint_drops: EndpointDrops::default(),
            process: None,
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use serde_json::{Value, json};
    use teardown_common::conn::Timeouts;

    /// A tracker after a port-sweeping flood's timeouts (every port three
    /// times) and one service's ten: with the total of timeouts.
    pub fn port_sweep_tracker() -> (Tracker, u64) {
        let mut tracker = Tracker::new(Timeouts::ZEEK);
        let ports = &mut tracker.stats.half_open_by_port;
        for _ in 0..10 {
            ports.add(8080, 0);
        }
        for round in 0..3 {
            for port in 1..=u16::MAX {
                ports.add(port, round);
            }
        }
        let total = ports.total();
        (tracker, total)
    }

    /// Figures with every counter and figure set to something distinct.
    pub fn busy_figures() -> Figures {
        let mut figures = Figures::zero(
            &["eth0"],
            RunFacts {
                version: "0.1.0",
                direction: "both",
                start_time_seconds: 1_700_000_000.0,
                flow_table_capacity: 131_072,
            },
            true,
            &["stdout", "log"],
        );
        figures.ts = 1_700_000_100.5;
        figures.interval = Some(2.0);
        let mut delta = Counters::default();
        for (index, value) in figures.received.totals.values.iter_mut().enumerate() {
            *value = 1000 + index as u64;
            delta.values[index] = 2 * index as u64 + 1;
        }
        figures.received.rates = Some(Rates {
            delta,
            seconds: 2.0,
        });
        let mut sent = Counters::default();
        for (index, value) in sent.values.iter_mut().enumerate() {
            *value = 2000 + index as u64;
        }
        figures.egress = Some(Traffic {
            totals: sent,
            rates: Some(Rates {
                delta: Counters::default(),
                seconds: 2.0,
            }),
        });
        let flows = &mut figures.flows;
        flows.tracked = 3;
        flows.created = 40;
        flows.half_open = 1;
        flows.events_lost = 4;
        flows.lock_contended = 5;
        flows.ended_by_conn_state.insert("SF", 7);
        flows.ended_by_conn_state.insert("REJ", 2);
        flows.ended_by_close.insert("graceful", 7);
        flows.ended_by_close.insert("refused", 2);
        flows.half_open_timeouts = PortFigures {
            listed: vec![(8080, 12), (443, 3)],
            other: 40,
        };
        flows.half_open_timeout_ports_folded = 38;
        figures.alerts.summary = AlertSummary {
            active: vec!["192.0.2.2:80".into()],
            started: 2,
            destinations_watched: 9,
            ..AlertSummary::default()
        };
        figures.alerts.states = vec![
            AlertState {
                target: "192.0.2.2:80".into(),
                active: true,
            },
            AlertState {
                target: "odd \"target\" \\ with\nnewline".into(),
                active: false,
            },
        ];
        figures.lines_lost = LinesLost(vec![("stdout", 0), ("log", 12)]);
        figures.interfaces = vec![InterfaceFigures {
            iface: "eth0".into(),
            received: figures.received,
            egress: figures.egress,
            flows: figures.flows.clone(),
        }];
        figures
    }

    /// Figures of two interfaces: `eth0` with 5 non-IP frames in, 3
    /// records created, 2 graceful ends and a half-open timeout on port 80;
    /// `eth1` with 7 frames in and 1 out, 4 records, 1 graceful and 3
    /// aborted ends and timeouts on ports 80 and 443. At a report, over 2 s.
    pub fn two_interface_figures() -> Figures {
        let tallies = |non_ip: u64| {
            let mut tallies = Tallies::default();
            tallies.frames[teardown_common::counters::class::NON_IP as usize] = non_ip;
            tallies
        };
        let reading = |received: u64, sent: u64, created: u64| Reading {
            received: tallies(received),
            sent: Some(tallies(sent)),
            flow: FlowStats {
                created,
                ..FlowStats::default()
            },
        };
        let baseline = Baseline {
            received: tallies(0),
            sent: Some(tallies(0)),
        };
        let (eth0_now, eth1_now) = (reading(5, 0, 3), reading(7, 1, 4));
        let (eth0_before, eth1_before) = (reading(1, 0, 0), reading(7, 0, 0));
        let mut eth0 = Tracker::new(Timeouts::ZEEK);
        eth0.stats.by_close.insert("graceful", 2);
        eth0.stats.half_open_by_port.add(80, 0);
        let mut eth1 = Tracker::new(Timeouts::ZEEK);
        eth1.stats.by_close.insert("graceful", 1);
        eth1.stats.by_close.insert("abort", 3);
        eth1.stats.half_open_by_port.add(80, 0);
        eth1.stats.half_open_by_port.add(443, 0);
        Figures::assemble(
            &RunFacts::starting_now("both"),
            &[
                InterfaceSource {
                    iface: "eth0",
                    baseline: &baseline,
                    now: &eth0_now,
                    previous: Some(&eth0_before),
                    tracker: &eth0,
                },
                InterfaceSource {
                    iface: "eth1",
                    baseline: &baseline,
                    now: &eth1_now,
                    previous: Some(&eth1_before),
                    tracker: &eth1,
                },
            ],
            Some(2.0),
            AlertFigures::default(),
            ReasonFigures::default(),
            LinesLost(vec![("stdout", 0)]),
            DebrisCounts::default(),
        )
    }

    #[test]
    fn several_interfaces_add_up_and_each_keeps_its_own() {
        let figures = two_interface_figures();
        assert_eq!(figures.iface, "eth0,eth1");
        let packets = |traffic: &Traffic| traffic.totals.get(Counter::Packets);
        assert_eq!(packets(&figures.received), 12);
        assert_eq!(figures.received.per_second(Counter::Packets), 2.0);
        assert_eq!(figures.egress.as_ref().map(packets), Some(1));
        assert_eq!(figures.flows.created, 7);
        assert_eq!(
            figures.flows.ended_by_close,
            [("abort", 3), ("graceful", 3)].into_iter().collect()
        );
        assert_eq!(figures.flows.half_open_timeouts.listed, [(80, 2), (443, 1)]);
        let [eth0, eth1] = &figures.interfaces[..] else {
            panic!("two interfaces: {:?}", figures.interfaces);
        };
        assert_eq!((eth0.iface.as_str(), eth1.iface.as_str()), ("eth0", "eth1"));
        assert_eq!((packets(&eth0.received), packets(&eth1.received)), (5, 7));
        assert_eq!(eth0.received.per_second(Counter::Packets), 2.0);
        assert_eq!(eth1.received.per_second(Counter::Packets), 0.0);
        assert_eq!((eth0.flows.created, eth1.flows.created), (3, 4));
        assert_eq!(eth0.flows.half_open_timeouts.listed, [(80, 1)]);

        // The stats object: the sum at the top, each interface in
        // `interfaces`, in the order given.
        let value = serde_json::to_value(&figures).expect("serializes");
        assert_eq!(value["iface"], "eth0,eth1");
        assert_eq!(value["totals"]["packets"], 12);
        let interfaces = value["interfaces"].as_array().expect("an array");
        assert_eq!(interfaces.len(), 2, "{value}");
        assert_eq!(interfaces[1]["iface"], "eth1");
        assert_eq!(interfaces[1]["totals"]["packets"], 7);
        assert_eq!(interfaces[1]["egress"]["totals"]["packets"], 1);
        assert_eq!(interfaces[1]["rates"]["packets"], 0.0);
        assert_eq!(
            interfaces[1]["flows"]["ended_by_close"],
            json!({"abort": 3, "graceful": 1})
        );
        assert_eq!(interfaces[0]["flows"]["created"], 3);
    }

    #[test]
    fn the_kernels_reasons_serialize_by_reason_and_by_port() {
        let mut figures = busy_figures();
        figures.reasons = ReasonFigures {
            resets_watched: true,
            resets_sent: [("NO_SOCKET", 3), ("TCP_STATE", 1)].into_iter().collect(),
            resets_by_port: ResetPorts {
                listed: vec![
                    (8080, "NO_SOCKET", 2),
                    (8080, "TCP_STATE", 1),
                    (22, "NO_SOCKET", 1),
                ],
                other: 0,
            },
            reset_events_lost: 0,
            reset_events_skipped: 5,
            resets_unclaimed: 1,
            reason_names: vec!["NO_SOCKET", "TCP_STATE"],
            handshakes: None,
            listen_drops_by_port: PortFigures {
                listed: vec![(9207, 28)],
                other: 0,
            },
        };
        let value = serde_json::to_value(&figures).expect("serializes");
        assert_eq!(
            value["kernel_reasons"],
            json!({
                "resets_watched": true,
                "resets_sent": {"NO_SOCKET": 3, "TCP_STATE": 1},
                "resets_by_port": {
                    "22": {"NO_SOCKET": 1},
                    "8080": {"NO_SOCKET": 2, "TCP_STATE": 1},
                    "other": 0
                },
                "reset_events_lost": 0,
                "reset_events_skipped": 5,
                "resets_unclaimed": 1,
                "listen_drops_by_port": {"9207": 28, "other": 0}
            })
        );
    }

    /// The keys and shapes of the `stats` object (less `event`), as the
    /// tests in `tests/` read them.
    #[test]
    fn figures_serialize_as_the_stats_object() {
        let value = serde_json::to_value(busy_figures()).expect("serializes");
        let keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "alerts",
                "egress",
                "flows",
                "iface",
                "interval",
                "kernel_reasons",
                "lines_lost",
                "rates",
                "totals",
                "ts"
            ]
        );
        assert_eq!(value["totals"]["packets"], 1000);
        assert_eq!(
            value["totals"].as_object().unwrap().len(),
            Counter::ALL.len()
        );
        assert_eq!(value["rates"]["packets"], 0.5);
        assert_eq!(value["rates"]["non_ip"], 1.5);
        assert_eq!(value["egress"]["totals"]["packets"], 2000);
        assert_eq!(value["egress"]["rates"]["packets"], 0.0);
        assert_eq!(value["interval"], 2.0);
        assert_eq!(value["lines_lost"], json!({"stdout": 0, "log": 12}));
        assert_eq!(
            value["alerts"],
            json!({
                "active": ["192.0.2.2:80"],
                "started": 2,
                "destinations_watched": 9,
                "destinations_dropped": 0,
                "destination_counts_dropped": 0,
                "counter_resets": 0,
            })
        );
        let flows = &value["flows"];
        let mut flow_keys: Vec<&str> = flows
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        flow_keys.sort();
        assert_eq!(
            flow_keys,
            [
                "created",
                "debris_summaries",
                "dest_collisions",
                "ended_by_close",
                "ended_by_conn_state",
                "events_lost",
                "evicted",
                "half_open",
                "half_open_timeout_ports_folded",
                "half_open_timeouts_by_port",
                "insert_failed",
                "lock_contended",
                "midstream_untracked",
                "records_summarised",
                "syn_untracked",
                "synack_untracked",
                "tracked",
                "truncated_segments",
                "tunnels_unrecorded",
            ]
        );
        assert_eq!(
            flows["half_open_timeouts_by_port"],
            json!({"8080": 12, "443": 3, "other": 40})
        );
        assert_eq!(
            flows["ended_by_close"],
            json!({"graceful": 7, "refused": 2})
        );

        // Without egress and rates (ingress only, at the end): no such keys.
        let mut bare = busy_figures();
        bare.egress = None;
        bare.received.rates = None;
        bare.interval = None;
        let value = serde_json::to_value(bare).expect("serializes");
        for key in ["egress", "rates", "interval"] {
            assert_eq!(value.get(key), None, "{key}: {value}");
        }
    }

    /// A port-sweeping flood's timeouts, every port three times, and one
    /// service's: the flows object stays small and its per-port counts
    /// still add up to every timeout.
    #[test]
    fn half_open_timeouts_by_port_stay_small_after_a_port_sweep() {
        let (tracker, total) = port_sweep_tracker();
        let figures = FlowFigures::new(&FlowStats::default(), &tracker);
        let flows = serde_json::to_value(&figures).expect("serializes");
        let text = flows.to_string();
        // 32 ports and `other` with counts of a few digits: about 500 bytes,
        // where every port's own entry took over 500 KB.
        assert!(text.len() < 2048, "{} bytes: {text}", text.len());
        let by_port = flows["half_open_timeouts_by_port"]
            .as_object()
            .expect("an object");
        assert_eq!(
            by_port.len(),
            crate::conn::tracker::HALF_OPEN_PORTS_LISTED + 1
        );
        assert_eq!(by_port["8080"], 13, "{text}");
        let sum: u64 = by_port.values().filter_map(Value::as_u64).sum();
        assert_eq!(sum, total, "{text}");
        assert!(flows["half_open_timeout_ports_folded"].as_u64() > Some(65_000));
        // Any number of the busiest, and the rest: as the tracker counts them.
        for n in [0, 3, 5, 32, 100] {
            assert_eq!(
                figures.half_open_timeouts.top(n),
                tracker.stats.half_open_by_port.top(n),
                "top {n}"
            );
        }
    }

    #[test]
    fn no_timeouts_yet_is_an_other_of_zero() {
        let tracker = Tracker::new(Timeouts::ZEEK);
        let flows = serde_json::to_value(FlowFigures::new(&FlowStats::default(), &tracker))
            .expect("serializes");
        assert_eq!(
            flows["half_open_timeouts_by_port"],
            json!({ "other": 0 }),
            "{flows}"
        );
    }

    #[test]
    fn alert_summaries_are_the_json_alerts_object() {
        let summary = AlertSummary {
            active: vec!["*".to_string()],
            started: 1,
            destinations_watched: 2,
            destinations_dropped: 3,
            destination_counts_dropped: 4,
            counter_resets: 5,
        };
        assert_eq!(
            serde_json::to_value(&summary).expect("serializes"),
            json!({
                "active": ["*"],
                "started": 1,
                "destinations_watched": 2,
                "destinations_dropped": 3,
                "destination_counts_dropped": 4,
                "counter_resets": 5,
            }),
            "the alert watch's summary"
        );
        assert_eq!(summary.counter_resets, 5);
        assert_eq!(summary.active, ["*"]);
    }
}

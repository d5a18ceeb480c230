//! Flood debris, summarised: while a SYN-flood alert is active on a
//! destination, the one-sided records its flood leaves (`S0`, `REJ`, `OTH`,
//! ... from spoofed sources: a 30 s random-source flood left 190,604 of
//! them, 84.6 MB of JSON in `--log`) are counted into one summary per
//! target and report interval instead of going out one line each. Every
//! real connection ([`Ended::is_conversation`]) keeps its full record.
//!
//! Which records: one-sided, to the alert's destination (address and
//! port; or from it, where a lone SYN-ACK made Zeek's rule guess the host
//! the originator), whose first packet came while its alert was active (from
//! [`LOOKBACK`] before its start, as the flood's first SYNs precede the
//! alert they cause, to its end). The record may end long after the alert:
//! a half-open record ends `--syn-timeout` later, an unanswered SYN-ACK
//! `--idle-timeout` later; it is still the flood's and still summarised, so
//! the tail of a flood does not come out in full. The `*` alert (all
//! destinations) summarises nothing: its debris has no one target.
//!
//! Nothing is hidden: each [`DebrisSummary`] counts its records exactly, by
//! `conn_state` and by `close`, with their packets and bytes; the sources
//! are estimated (a HyperLogLog sketch for how many, Space-Saving for the
//! heaviest). [`DebrisCounts`] carries the totals into the figures, so
//! `records_summarised` plus the full records written is every record
//! ended. Memory is bounded: a pile per target with an alert span
//! remembered, at most [`TARGETS_KEPT`] of them.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use serde::{Serialize, Serializer};
use teardown_common::{
    conn::ORIG,
    sketch::{HLL_REGISTERS, hash_addr, hll_add},
};

use super::{
    config::SOURCE_CAPACITY,
    events::{AlertEvent, Phase},
    heavy::SpaceSaving,
    hll::hll_estimate,
    target::{AlertTarget, TargetKey},
};
use crate::conn::tracker::{Clock, Ended};

/// `--flood-records`: what becomes of a flood's one-sided records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FloodRecords {
    /// Counted into a summary per target and interval (the default).
    #[default]
    Summary,
    /// A full record each, as any other connection.
    Full,
}

/// How long before its alert's start a record may have begun and still be
/// the flood's: the detector needs its first poll or two of flooding SYNs
/// (100 ms each, 165-196 ms measured in `tests/flood.rs`) before it alerts,
/// and the SYNs of that time are the flood's too.
pub const LOOKBACK: Duration = Duration::from_secs(1);

/// Targets (with their alert spans and piles) kept at most; beyond, the
/// one whose alert ended longest ago is forgotten. Alerts on this many
/// destinations at once are already a flood spread too thin to summarise
/// per target.
pub const TARGETS_KEPT: usize = 256;

/// Alert spans kept per target: one alert after another on one target
/// (each ending after `--alert-quiet`) needs the earlier spans while their
/// records still end; the oldest goes first.
const SPANS_PER_TARGET: usize = 8;

/// A top source sent at least this many of the interval's records (and
/// 1 % of them): a spoofed source sends one SYN, so in a small interval
/// every source would otherwise have its 1 %.
const TOP_SOURCE_LEAST: u64 = 2;

/// Sources tracked per pile for the top sources (as the detector's).
const HEAVY_CAPACITY: usize = SOURCE_CAPACITY;

/// A source listed among a summary's top sources.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopSource {
    #[serde(serialize_with = "display")]
    pub addr: IpAddr,
    /// Records from this source in the interval, at least (Space-Saving's
    /// guaranteed count)...
    pub records: u64,
    /// ...and at most this many more.
    pub error: u64,
}

fn display<S: Serializer, T: std::fmt::Display>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// One target's flood debris over one report interval: the value every
/// output renders (the JSON `flood_debris` line is this, serialized; the
/// plain line, the dashboard and IPFIX read its fields).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DebrisSummary {
    /// When the summary was made (the interval's end), Unix seconds.
    pub ts: f64,
    /// The destination, `ADDR:PORT`, as its alert names it.
    #[serde(serialize_with = "display")]
    pub target: TargetKey,
    #[serde(serialize_with = "display")]
    pub target_addr: IpAddr,
    pub target_port: u16,
    /// The interval's start, Unix seconds (the previous summary's `ts`).
    pub interval_start: f64,
    /// Whether the target's alert is still active (the tail of a flood is
    /// summarised after its alert ended).
    pub alert_active: bool,
    /// Records summarised: exactly the sum of `by_conn_state`.
    pub records: u64,
    /// Zeek's conn_state of each record.
    pub by_conn_state: BTreeMap<&'static str, u64>,
    /// teardown's close of each record.
    pub by_close: BTreeMap<&'static str, u64>,
    /// Segments and IP bytes the records' originators (the sources) and
    /// the responder (the target) sent, summed.
    pub orig_pkts: u64,
    pub orig_ip_bytes: u64,
    pub resp_pkts: u64,
    pub resp_ip_bytes: u64,
    /// The records' first packet and last, Unix milliseconds (IPFIX's
    /// flowStart and flowEnd).
    #[serde(skip)]
    pub first_ms: u64,
    #[serde(skip)]
    pub last_ms: u64,
    /// Distinct source addresses among the records: a HyperLogLog estimate
    /// (64 registers, 13 % standard error, as the alerts').
    pub distinct_sources: u64,
    /// The sources with at least 1 % of the records and two of them,
    /// guaranteed, heaviest first (at most `--top-sources`): a spoofed
    /// flood has none.
    pub top_sources: Vec<TopSource>,
}

impl DebrisSummary {
    /// The JSON line (`--json`, `--log`): `{"event":"flood_debris", ...}`.
    pub fn json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("event".into(), "flood_debris".into());
        }
        value
    }

    /// One readable line, e.g. `flood debris 10.0.0.2:80 (alert active):
    /// 18,211 one-sided records in 1.0s (S0 18,000, REJ 211), ~17.9k
    /// sources; top none`.
    pub fn human_line(&self) -> String {
        let states: Vec<String> = self
            .by_conn_state
            .iter()
            .map(|(state, count)| format!("{state} {count}"))
            .collect();
        let top = if self.top_sources.is_empty() {
            "none".to_string()
        } else {
            self.top_sources
                .iter()
                .map(|source| format!("{} {}", source.addr, source.records))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "flood debris {} ({}): {} one-sided records in {:.1}s ({}), pkts {}/{}, ~{} distinct sources; top {top}",
            self.target,
            if self.alert_active {
                "alert active"
            } else {
                "alert ended"
            },
            self.records,
            (self.ts - self.interval_start).max(0.0),
            states.join(", "),
            self.orig_pkts,
            self.resp_pkts,
            crate::output::short_count(self.distinct_sources as f64),
        )
    }
}

/// The summariser's totals since the start, for the figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DebrisCounts {
    /// Records counted into summaries instead of written in full.
    pub records_summarised: u64,
    /// Summaries made (one per target and interval with records).
    pub summaries: u64,
}

/// When one alert on a target covered: records that began in it are the
/// flood's. Kernel clock (the records' own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    from_ns: u64,
    /// `None` while the alert is active.
    until_ns: Option<u64>,
}

/// One target's debris since its last summary.
struct Pile {
    spans: Vec<Span>,
    records: u64,
    by_conn_state: BTreeMap<&'static str, u64>,
    by_close: BTreeMap<&'static str, u64>,
    packets: [u64; 2],
    octets: [u64; 2],
    first_ns: u64,
    last_ns: u64,
    sketch: [u8; HLL_REGISTERS],
    heavy: SpaceSaving,
}

impl Pile {
    fn new() -> Pile {
        Pile {
            spans: Vec::new(),
            records: 0,
            by_conn_state: BTreeMap::new(),
            by_close: BTreeMap::new(),
            packets: [0; 2],
            octets: [0; 2],
            first_ns: u64::MAX,
            last_ns: 0,
            sketch: [0; HLL_REGISTERS],
            heavy: SpaceSaving::new(HEAVY_CAPACITY),
        }
    }

    fn active(&self) -> bool {
        self.spans.iter().any(|span| span.until_ns.is_none())
    }

    /// When the latest alert ended (`u64::MAX` while one is active).
    fn ended_at(&self) -> u64 {
        self.spans
            .iter()
            .map(|span| span.until_ns.unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0)
    }

    fn covers(&self, start_ns: u64) -> bool {
        self.spans.iter().any(|span| {
            span.from_ns <= start_ns && span.until_ns.is_none_or(|until| start_ns <= until)
        })
    }

    fn add(&mut self, record: &Ended, target: TargetKey) {
        let conn = &record.conn;
        // The source is the end that is not the target.
        let ((orig, orig_port), resp) = record.endpoints();
        let source = if TargetKey::new(orig, orig_port) == target {
            resp.0
        } else {
            orig
        };
        self.records += 1;
        *self.by_conn_state.entry(conn.conn_state()).or_default() += 1;
        *self
            .by_close
            .entry(conn.close(record.reason).kind.name())
            .or_default() += 1;
        for (side, ep) in [(0, conn.lane(ORIG)), (1, conn.lane(1 - ORIG))] {
            self.packets[side] = self.packets[side].saturating_add(ep.pkts);
            self.octets[side] = self.octets[side].saturating_add(ep.ip_bytes);
        }
        self.first_ns = self.first_ns.min(conn.start_ns);
        self.last_ns = self
            .last_ns
            .max(conn.last_ns.max(conn.last_pkt_ns).max(conn.start_ns));
        let words = teardown_common::addr::Addr16::from(source).words();
        hll_add(&mut self.sketch, hash_addr(&words));
        self.heavy.insert(source.to_canonical(), 1);
    }

    /// The summary of what was piled up, and an empty pile (spans kept).
    fn take(
        &mut self,
        target: TargetKey,
        ts: f64,
        interval_start: f64,
        clock: &Clock,
        top_sources: usize,
    ) -> DebrisSummary {
        let records = self.records;
        let top = self
            .heavy
            .top(top_sources)
            .into_iter()
            .map(|(addr, count, error)| TopSource {
                addr,
                records: count - error,
                error,
            })
            .filter(|source| source.records >= TOP_SOURCE_LEAST && source.records * 100 >= records)
            .collect();
        let summary = DebrisSummary {
            ts,
            target,
            target_addr: target.addr,
            target_port: target.port,
            interval_start,
            alert_active: self.active(),
            records,
            by_conn_state: std::mem::take(&mut self.by_conn_state),
            by_close: std::mem::take(&mut self.by_close),
            orig_pkts: self.packets[0],
            orig_ip_bytes: self.octets[0],
            resp_pkts: self.packets[1],
            resp_ip_bytes: self.octets[1],
            first_ms: clock.unix_millis(self.first_ns),
            last_ms: clock.unix_millis(self.last_ns),
            distinct_sources: hll_estimate(&self.sketch).round() as u64,
            top_sources: top,
        };
        let spans = std::mem::take(&mut self.spans);
        *self = Pile::new();
        self.spans = spans;
        summary
    }
}

/// Takes a flood's debris out of the ended records and sums it up per
/// target: see the module's documentation.
pub struct DebrisSummariser {
    mode: FloodRecords,
    /// The flow table's clock minus CLOCK_MONOTONIC (the alerts'), ns.
    kernel_offset_ns: i128,
    /// How long after its alert's end a span is kept: the longest a
    /// record begun in it can take to end (`--idle-timeout` and the
    /// kernel's grace, with a margin).
    keep_after_ns: u64,
    top_sources: usize,
    piles: HashMap<TargetKey, Pile>,
    last_summary_ts: f64,
    counts: DebrisCounts,
}

impl DebrisSummariser {
    /// `kernel_offset_ns`: the records' clock minus CLOCK_MONOTONIC;
    /// `longest_end`: the longest a one-sided record can take to end after
    /// its first packet's alert (the idle timeout plus the kernel's grace).
    pub fn new(
        mode: FloodRecords,
        kernel_offset_ns: i128,
        longest_end: Duration,
        top_sources: usize,
        now_ts: f64,
    ) -> DebrisSummariser {
        DebrisSummariser {
            mode,
            kernel_offset_ns,
            keep_after_ns: (longest_end + Duration::from_secs(10)).as_nanos() as u64,
            top_sources,
            piles: HashMap::new(),
            last_summary_ts: now_ts,
            counts: DebrisCounts::default(),
        }
    }

    /// CLOCK_MONOTONIC nanoseconds on the records' clock.
    fn kernel_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.kernel_offset_ns).clamp(0, u64::MAX as i128) as u64
    }

    /// Follows the alerts: a start opens a span for its destination, an
    /// end closes it.
    pub fn observe(&mut self, events: &[AlertEvent]) {
        if self.mode == FloodRecords::Full {
            return;
        }
        for event in events {
            let AlertTarget::Dest(target) = event.target else {
                continue;
            };
            let from_ns = self
                .kernel_ns(event.started_ns)
                .saturating_sub(LOOKBACK.as_nanos() as u64);
            let now_ns = self.kernel_ns(event.now_ns);
            if !self.piles.contains_key(&target) {
                self.make_room();
            }
            let pile = self.piles.entry(target).or_insert_with(Pile::new);
            match event.phase {
                // An update of an alert this summariser has no span of (none
                // happen, but a span is cheap): as a start.
                Phase::Start | Phase::Update => {
                    if !pile.active() {
                        if pile.spans.len() == SPANS_PER_TARGET {
                            pile.spans.remove(0);
                        }
                        pile.spans.push(Span {
                            from_ns,
                            until_ns: None,
                        });
                    }
                }
                Phase::End => {
                    for span in &mut pile.spans {
                        if span.until_ns.is_none() {
                            span.until_ns = Some(now_ns);
                        }
                    }
                }
            }
        }
    }

    /// Forgets the target whose alert ended longest ago, if the table is
    /// full. A target with records waiting for their summary is not
    /// forgotten (they are counted already): the table may pass its bound
    /// by those until the next summary empties them, which is one interval.
    fn make_room(&mut self) {
        if self.piles.len() < TARGETS_KEPT {
            return;
        }
        let oldest = self
            .piles
            .iter()
            .filter(|(_, pile)| pile.records == 0)
            .min_by_key(|(_, pile)| pile.ended_at())
            .map(|(target, _)| *target);
        if let Some(target) = oldest {
            self.piles.remove(&target);
        }
    }

    /// Takes the flood's debris out of `ended`, into the piles; what is
    /// left gets full records.
    pub fn take_debris(&mut self, ended: &mut Vec<Ended>) {
        if self.mode == FloodRecords::Full || self.piles.is_empty() {
            return;
        }
        ended.retain(|record| {
            if record.is_conversation() {
                return true;
            }
            // The target is the responder; or, where the originator was
            // guessed (a lone SYN-ACK of the host's to a spoofed source,
            // whose SYN went untracked, read by Zeek's rule as coming from
            // the originator), the originator.
            let (orig, resp) = record.endpoints();
            let Some((target, pile)) = [resp, orig]
                .into_iter()
                .find(|(addr, port)| self.piles.contains_key(&TargetKey::new(*addr, *port)))
                .map(|(addr, port)| TargetKey::new(addr, port))
                .and_then(|target| Some((target, self.piles.get_mut(&target)?)))
            else {
                return true;
            };
            if !pile.covers(record.conn.start_ns) {
                return true;
            }
            pile.add(record, target);
            self.counts.records_summarised += 1;
            false
        });
    }

    /// The report interval ended: a summary per target with records since
    /// the last, in target order; and the spans of alerts long over are
    /// forgotten. `now_monotonic_ns` is CLOCK_MONOTONIC now.
    pub fn summaries(
        &mut self,
        now_ts: f64,
        now_monotonic_ns: u64,
        clock: &Clock,
    ) -> Vec<DebrisSummary> {
        let interval_start = self.last_summary_ts;
        self.last_summary_ts = now_ts;
        let mut summaries: Vec<DebrisSummary> = self
            .piles
            .iter_mut()
            .filter(|(_, pile)| pile.records > 0)
            .map(|(target, pile)| {
                pile.take(*target, now_ts, interval_start, clock, self.top_sources)
            })
            .collect();
        summaries.sort_by_key(|summary| summary.target);
        self.counts.summaries += summaries.len() as u64;
        let now_ns = self.kernel_ns(now_monotonic_ns);
        let keep_after = self.keep_after_ns;
        for pile in self.piles.values_mut() {
            pile.spans.retain(|span| {
                span.until_ns
                    .is_none_or(|until| now_ns < until.saturating_add(keep_after))
            });
        }
        self.piles
            .retain(|_, pile| !pile.spans.is_empty() || pile.records > 0);
        summaries
    }

    /// Totals since the start.
    pub fn counts(&self) -> DebrisCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use teardown_common::parse::tcp_flags::{ACK, FIN, SYN};

    use super::*;
    use crate::{
        conn::tracker::tests::record,
        flood::{
            events::{AlertEvent, Triggers},
            testing::dest,
        },
    };

    const SECOND: u64 = 1_000_000_000;

    /// An alert event on `target` at `now_ns`, started at `started_ns`.
    fn alert(phase: Phase, target: AlertTarget, started_ns: u64, now_ns: u64) -> AlertEvent {
        AlertEvent {
            phase,
            target,
            syn_rate: 50_000.0,
            peak_syn_rate: 50_000.0,
            baseline_syn_rate: 10.0,
            completion_ratio: Some(0.0),
            half_open: 100,
            top_sources: Vec::new(),
            distinct_sources: Some(1000.0),
            triggers: Triggers {
                syn_rate: true,
                half_open: false,
            },
            started_ns,
            now_ns,
            host: None,
        }
    }

    /// A lone SYN from 192.0.2.1:`port` to 192.0.2.2:8080 at `at_ns`.
    fn syn(port: u16, at_ns: u64) -> Ended {
        record(port, &[(true, SYN, 1000, 0, 0, at_ns)])
    }

    /// A whole conversation from 192.0.2.1:`port`, starting at `at_ns`.
    fn conversation(port: u16, at_ns: u64) -> Ended {
        let (c, s) = (1000u32, 5000u32);
        record(
            port,
            &[
                (true, SYN, c, 0, 0, at_ns),
                (false, SYN | ACK, s, c + 1, 0, at_ns + 1),
                (true, ACK, c + 1, s + 1, 0, at_ns + 2),
                (true, FIN | ACK, c + 1, s + 1, 0, at_ns + 3),
                (false, FIN | ACK, s + 1, c + 2, 0, at_ns + 4),
                (true, ACK, c + 2, s + 2, 0, at_ns + 5),
            ],
        )
    }

    fn summariser(mode: FloodRecords) -> DebrisSummariser {
        // The records' clock is CLOCK_MONOTONIC here.
        DebrisSummariser::new(mode, 0, Duration::from_secs(300), 5, 0.0)
    }

    const CLOCK: Clock = Clock::Monotonic { offset_ns: 0 };

    /// During an alert, one-sided records to its target are summarised,
    /// real ones and those to other targets or from before the alert are
    /// not, and every count adds up.
    #[test]
    fn debris_of_an_alert_is_summarised_and_adds_up() {
        let target = dest("192.0.2.2:8080");
        let mut debris = summariser(FloodRecords::Summary);
        debris.observe(&[alert(
            Phase::Start,
            AlertTarget::Dest(target),
            10 * SECOND,
            10 * SECOND,
        )]);
        let mut ended = vec![
            syn(40_000, 5 * SECOND),    // long before the alert: written
            syn(40_001, 9_500_000_000), // within the lookback: summarised
            syn(40_002, 11 * SECOND),
            conversation(40_003, 11 * SECOND), // real: written
            syn(40_004, 11 * SECOND),
        ];
        debris.take_debris(&mut ended);
        let left: Vec<u16> = ended.iter().map(|record| record.endpoints().0.1).collect();
        assert_eq!(left, [40_000, 40_003]);
        assert_eq!(debris.counts().records_summarised, 3);

        let summaries = debris.summaries(1.0, 12 * SECOND, &CLOCK);
        assert_eq!(summaries.len(), 1);
        let summary = &summaries[0];
        assert_eq!(summary.target, target);
        assert_eq!(summary.records, 3);
        assert_eq!(summary.by_conn_state.values().sum::<u64>(), 3);
        assert_eq!(summary.by_close.values().sum::<u64>(), 3);
        assert_eq!(summary.by_conn_state.get("S0"), Some(&3));
        assert_eq!((summary.orig_pkts, summary.resp_pkts), (3, 0));
        assert!(summary.alert_active);
        // One source sent all three: it is the top source.
        assert_eq!(summary.top_sources.len(), 1, "{summary:?}");
        assert_eq!(summary.top_sources[0].records, 3);
        assert_eq!(summary.distinct_sources, 1);
        let json = summary.json();
        assert_eq!(json["event"], "flood_debris");
        assert_eq!(json["target"], "192.0.2.2:8080");
        assert_eq!(json["by_conn_state"]["S0"], 3);
        assert!(summary.human_line().starts_with(
            "flood debris 192.0.2.2:8080 (alert active): 3 one-sided records in 1.0s (S0 3)"
        ));
        // Nothing new: no summary.
        assert!(debris.summaries(2.0, 13 * SECOND, &CLOCK).is_empty());
        assert_eq!(debris.counts().summaries, 1);
    }

    /// After the alert's end, records begun during it are still its debris
    /// (a half-open record ends --syn-timeout later); records begun after
    /// it are not; and the span is forgotten once no record of it can end.
    #[test]
    fn the_tail_of_a_flood_is_summarised_and_spans_are_forgotten() {
        let target = AlertTarget::Dest(dest("192.0.2.2:8080"));
        let mut debris = summariser(FloodRecords::Summary);
        debris.observe(&[alert(Phase::Start, target, 10 * SECOND, 10 * SECOND)]);
        debris.observe(&[alert(Phase::End, target, 10 * SECOND, 20 * SECOND)]);
        let mut ended = vec![syn(40_000, 19 * SECOND), syn(40_001, 21 * SECOND)];
        debris.take_debris(&mut ended);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].endpoints().0.1, 40_001);
        let summaries = debris.summaries(1.0, 25 * SECOND, &CLOCK);
        assert!(!summaries[0].alert_active);
        // Past the idle timeout and the margin, the span is gone.
        debris.summaries(2.0, 20 * SECOND + 311 * SECOND, &CLOCK);
        let mut late = vec![syn(40_002, 15 * SECOND)];
        debris.take_debris(&mut late);
        assert_eq!(late.len(), 1, "no span left to match");
        assert!(debris.piles.is_empty());
    }

    /// `--flood-records full`, and the `*` alert: nothing is summarised.
    #[test]
    fn full_records_and_the_all_alert_summarise_nothing() {
        let target = AlertTarget::Dest(dest("192.0.2.2:8080"));
        let mut full = summariser(FloodRecords::Full);
        full.observe(&[alert(Phase::Start, target, 10 * SECOND, 10 * SECOND)]);
        let mut ended = vec![syn(40_000, 11 * SECOND)];
        full.take_debris(&mut ended);
        assert_eq!(ended.len(), 1);
        assert!(full.summaries(1.0, 12 * SECOND, &CLOCK).is_empty());

        let mut all = summariser(FloodRecords::Summary);
        all.observe(&[alert(
            Phase::Start,
            AlertTarget::All,
            10 * SECOND,
            10 * SECOND,
        )]);
        all.take_debris(&mut ended);
        assert_eq!(ended.len(), 1);
        assert_eq!(all.counts(), DebrisCounts::default());
    }

    /// The table of targets stays bounded however many destinations alert.
    #[test]
    fn targets_are_bounded() {
        let mut debris = summariser(FloodRecords::Summary);
        for port in 0..(TARGETS_KEPT as u16 * 2) {
            let target = AlertTarget::Dest(TargetKey::new([192, 0, 2, 2].into(), port));
            debris.observe(&[
                alert(Phase::Start, target, SECOND, SECOND),
                alert(Phase::End, target, SECOND, 2 * SECOND + u64::from(port)),
            ]);
        }
        assert_eq!(debris.piles.len(), TARGETS_KEPT);
    }
}

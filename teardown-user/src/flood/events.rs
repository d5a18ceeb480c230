//! The alert events the detector returns, and their two forms: one JSON
//! object, one readable line.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::target::AlertTarget;
use crate::kernel::netstat::HandshakeDrops;
use crate::output::short_count;

/// Where an alert is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Start,
    Update,
    End,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Update => "update",
            Phase::End => "end",
        }
    }
}

/// Which rules held on the poll an event was made on (both false at the
/// end of an alert).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Triggers {
    pub syn_rate: bool,
    pub half_open: bool,
}

impl Triggers {
    fn names(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.syn_rate {
            names.push("syn_rate");
        }
        if self.half_open {
            names.push("half_open");
        }
        names
    }
}

/// A heavy hitter among an alert's sources.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TopSource {
    pub addr: IpAddr,
    /// SYNs this source sent during the alert, at least (estimated from the
    /// samples); it may have sent up to `error` more.
    pub syns: f64,
    pub error: f64,
    /// `syns` over all the alert's SYNs represented by samples.
    pub share: f64,
}

/// A SYN-flood alert's start, update or end.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEvent {
    pub phase: Phase,
    pub target: AlertTarget,
    /// SYN/s over the latest poll.
    pub syn_rate: f64,
    /// Highest per-poll SYN rate since the alert started (including the
    /// poll before, where the flood's first SYNs were counted).
    pub peak_syn_rate: f64,
    /// The learned baseline, as it was when the alert started.
    pub baseline_syn_rate: f64,
    /// Completed handshakes over SYNs old enough to have completed, in the
    /// ratio window; `None` when there were no such SYNs.
    pub completion_ratio: Option<f64>,
    pub half_open: u64,
    pub top_sources: Vec<TopSource>,
    /// HyperLogLog estimate of the distinct sources over the alert's
    /// lifetime; `None` if no sketches were reported.
    pub distinct_sources: Option<f64>,
    pub triggers: Triggers,
    pub started_ns: u64,
    pub now_ns: u64,
    /// What the host's own TCP stack did with handshakes since the alert
    /// started (this namespace's `/proc/net/netstat`): dropping them on
    /// full queues, or coping with SYN cookies. Filled in by the run loop;
    /// `None` where the counters cannot be read.
    pub host: Option<HandshakeDrops>,
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn percent(fraction: f64) -> String {
    let percent = fraction * 100.0;
    if percent < 10.0 && percent.fract() != 0.0 {
        format!("{percent:.1}%")
    } else {
        format!("{percent:.0}%")
    }
}

impl AlertEvent {
    /// Seconds from the alert's start to this event.
    pub fn duration_s(&self) -> f64 {
        self.now_ns.saturating_sub(self.started_ns) as f64 / 1e9
    }

    /// One JSON object: `wall_clock_ts` is this event's time (`now_ns`) as
    /// Unix seconds. `target` is `ADDR:PORT` or `*` (all destinations),
    /// with `target_addr` and `target_port` apart (null for `*`).
    pub fn json(&self, wall_clock_ts: f64) -> Value {
        let (addr, port) = match self.target {
            AlertTarget::Dest(key) => (Some(key.addr.to_string()), Some(key.port)),
            AlertTarget::All => (None, None),
        };
        let top: Vec<Value> = self
            .top_sources
            .iter()
            .map(|source| {
                json!({
                    "addr": source.addr.to_string(),
                    "syns": source.syns.round(),
                    "error": source.error.round(),
                    "share": round_to(source.share, 4),
                })
            })
            .collect();
        let duration = self.duration_s();
        json!({
            "event": "syn_flood",
            "ts": wall_clock_ts,
            "phase": self.phase.name(),
            "target": self.target.to_string(),
            "target_addr": addr,
            "target_port": port,
            "started": round_to(wall_clock_ts - duration, 6),
            "duration": round_to(duration, 3),
            "syn_rate": round_to(self.syn_rate, 1),
            "peak_syn_rate": round_to(self.peak_syn_rate, 1),
            "baseline_syn_rate": round_to(self.baseline_syn_rate, 1),
            "completion_ratio": self.completion_ratio.map(|ratio| round_to(ratio, 4)),
            "half_open": self.half_open,
            "distinct_sources": self.distinct_sources.map(f64::round),
            "top_sources": top,
            "triggers": self.triggers.names(),
            "host": self.host.map(|host| {
                let mut value = json!(host);
                value["verdict"] = json!(host.verdict());
                value
            }),
        })
    }

    /// One readable line, e.g. `SYN FLOOD start 10.0.0.2:80 [syn rate]
    /// 42.1k SYN/s (peak 50.0k, baseline 120), 0.3% completed, 8.1k
    /// half-open, ~31.0k distinct sources; top 198.51.100.7 2%, ...`.
    pub fn human_line(&self) -> String {
        let target = match self.target {
            AlertTarget::Dest(key) => key.to_string(),
            AlertTarget::All => "* (all destinations)".to_string(),
        };
        let when = match self.phase {
            Phase::Start => String::new(),
            Phase::Update => format!(" for {:.1}s", self.duration_s()),
            Phase::End => format!(" after {:.1}s", self.duration_s()),
        };
        let triggers = self.triggers.names();
        let triggers = if triggers.is_empty() {
            String::new()
        } else {
            format!(" [{}]", triggers.join(", ").replace('_', " "))
        };
        let ratio = self
            .completion_ratio
            .map(percent)
            .unwrap_or_else(|| "n/a".to_string());
        let distinct = self
            .distinct_sources
            .map(|estimate| format!(", ~{} distinct sources", short_count(estimate.round())))
            .unwrap_or_default();
        let top = if self.top_sources.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self
                .top_sources
                .iter()
                .map(|source| format!("{} {}", source.addr, percent(source.share)))
                .collect();
            format!("; top {}", list.join(", "))
        };
        let host = self
            .host
            .and_then(|host| host.verdict())
            .map(|verdict| format!("; {verdict}"))
            .unwrap_or_default();
        format!(
            "SYN FLOOD {} {target}{when}{triggers}  {} SYN/s (peak {}, baseline {}), {ratio} completed, {} half-open{distinct}{top}{host}",
            self.phase.name(),
            short_count(self.syn_rate),
            short_count(self.peak_syn_rate),
            short_count(self.baseline_syn_rate),
            short_count(self.half_open as f64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::testing::{A, B, dest, ip};

    fn sample_event() -> AlertEvent {
        AlertEvent {
            phase: Phase::Start,
            target: AlertTarget::Dest(dest(A)),
            syn_rate: 42_123.4,
            peak_syn_rate: 50_000.0,
            baseline_syn_rate: 120.0,
            completion_ratio: Some(0.003),
            half_open: 8_100,
            top_sources: vec![TopSource {
                addr: ip("198.51.100.7"),
                syns: 1024.0,
                error: 0.0,
                share: 0.02,
            }],
            distinct_sources: Some(31_000.4),
            triggers: Triggers {
                syn_rate: true,
                half_open: false,
            },
            started_ns: 5 * 1_000_000_000,
            now_ns: 5 * 1_000_000_000,
            host: None,
        }
    }

    #[test]
    fn json_carries_every_key() {
        let event = sample_event();
        let value = event.json(1_700_000_000.5);
        for key in [
            "event",
            "ts",
            "phase",
            "target",
            "syn_rate",
            "peak_syn_rate",
            "completion_ratio",
            "half_open",
            "top_sources",
            "distinct_sources",
            "triggers",
            "started",
            "duration",
            "host",
        ] {
            assert!(value.get(key).is_some(), "no {key} in {value}");
        }
        assert_eq!(value["event"], "syn_flood");
        assert_eq!(value["phase"], "start");
        assert_eq!(value["target"], "10.0.0.2:80");
        assert_eq!(value["target_port"], 80);
        assert_eq!(value["syn_rate"], 42_123.4);
        assert_eq!(value["completion_ratio"], 0.003);
        assert_eq!(value["half_open"], 8_100);
        assert_eq!(value["distinct_sources"], 31_000.0);
        assert_eq!(
            value["top_sources"],
            json!([{"addr": "198.51.100.7", "syns": 1024.0, "error": 0.0, "share": 0.02}])
        );
        assert_eq!(value["triggers"], json!(["syn_rate"]));

        let all = AlertEvent {
            target: AlertTarget::All,
            phase: Phase::End,
            completion_ratio: None,
            distinct_sources: None,
            now_ns: 7 * 1_000_000_000,
            ..sample_event()
        };
        let value = all.json(1_700_000_002.5);
        assert_eq!(value["target"], "*");
        assert_eq!(value["target_addr"], Value::Null);
        assert_eq!(value["completion_ratio"], Value::Null);
        assert_eq!(value["duration"], 2.0);
        assert_eq!(value["started"], 1_700_000_000.5);
    }

    #[test]
    fn the_host_verdict_says_dropping_or_coping() {
        let mut event = sample_event();
        assert_eq!(event.json(0.0)["host"], Value::Null);
        event.host = Some(HandshakeDrops {
            listen_overflows: 120,
            listen_drops: 120,
            ..HandshakeDrops::default()
        });
        let value = event.json(0.0);
        assert_eq!(value["host"]["listen_overflows"], 120);
        assert_eq!(
            value["host"]["verdict"],
            "host dropping handshakes: 120 dropped on full queues"
        );
        assert!(
            event
                .human_line()
                .ends_with("; host dropping handshakes: 120 dropped on full queues"),
            "{}",
            event.human_line()
        );
        event.host = Some(HandshakeDrops {
            syncookies_sent: 5_000,
            ..HandshakeDrops::default()
        });
        assert!(
            event
                .human_line()
                .ends_with("; host coping: 5000 SYN cookies sent, no handshake dropped")
        );
        // Counters that did not move add nothing to the line.
        event.host = Some(HandshakeDrops::default());
        assert!(!event.human_line().contains("host"));
    }

    #[test]
    fn human_line_reads_as_one_sentence() {
        assert_eq!(
            sample_event().human_line(),
            "SYN FLOOD start 10.0.0.2:80 [syn rate]  42.1k SYN/s (peak 50.0k, baseline 120), \
             0.3% completed, 8.1k half-open, ~31.0k distinct sources; top 198.51.100.7 2%"
        );
        let end = AlertEvent {
            phase: Phase::End,
            target: AlertTarget::Dest(dest(B)),
            triggers: Triggers::default(),
            completion_ratio: None,
            top_sources: Vec::new(),
            distinct_sources: None,
            now_ns: 17_500_000_000,
            ..sample_event()
        };
        assert_eq!(
            end.human_line(),
            "SYN FLOOD end [2001:db8::5]:443 after 12.5s  42.1k SYN/s (peak 50.0k, baseline 120), \
             n/a completed, 8.1k half-open"
        );
        let all = AlertEvent {
            target: AlertTarget::All,
            phase: Phase::Update,
            ..sample_event()
        };
        assert!(
            all.human_line()
                .starts_with("SYN FLOOD update * (all destinations) for 0.0s"),
            "{}",
            all.human_line()
        );
    }
}

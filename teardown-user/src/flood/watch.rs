//! SYN-flood detection in the run loop: every poll, reads the kernel's
//! per-destination counts, feeds them to the detector and keeps the state
//! of each alert for the metrics and the live view.

use std::collections::BTreeMap;

use anyhow::Context as _;
use serde::Serialize;

use super::{
    config::DetectConfig,
    detector::Detector,
    events::{AlertEvent, Phase},
    feed::{DestinationFeed, KernelReading},
};
use crate::{
    conn::tracker::{Tracker, monotonic_now_ns},
    kernel::Kernel,
};

/// Ended alerts remembered (shown inactive in the metrics) at most.
const ENDED_ALERTS_KEPT: usize = 256;

/// The shortest time between two polls. The run loop may wake twice in a
/// row (its report tick and its poll tick); a second poll a few
/// milliseconds after the first would measure a rate over a sliver of time,
/// where a clump of SYNs reads as a flood.
const MIN_POLL_GAP_NS: u64 = 90_000_000;

/// A SYN-flood alert's state on one target, as the detector reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertState {
    /// What is attacked, e.g. `192.0.2.2:80`; free text, escaped on output.
    pub target: String,
    /// Whether the alert is active now (it stays listed, inactive, after clearing).
    pub active: bool,
}

/// The detector's figures: the JSON `alerts` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AlertSummary {
    /// Targets whose alert is active now.
    pub active: Vec<String>,
    /// Alerts started since the start.
    pub started: u64,
    pub destinations_watched: u64,
    pub destinations_dropped: u64,
    pub destination_counts_dropped: u64,
    pub counter_resets: u64,
}

pub struct AlertWatch {
    feed: DestinationFeed,
    detector: Detector,
    /// Every alert target seen, whether its alert is active, and when it
    /// last changed (for forgetting the oldest ended ones).
    states: BTreeMap<String, (bool, u64)>,
    pub started: u64,
    /// The latest event of each active alert, for the live view.
    active: BTreeMap<String, AlertEvent>,
    last_poll_ns: u64,
    /// The kernel's per-CPU entries per map: how far apart the CPUs of two
    /// kernel instances are numbered (see [`AlertWatch::poll`]).
    cpus: u32,
}

impl AlertWatch {
    /// Checks the thresholds; nothing touches the kernel yet.
    pub fn new(config: DetectConfig) -> anyhow::Result<AlertWatch> {
        let detector = Detector::new(config)?;
        Ok(AlertWatch {
            feed: DestinationFeed::new(),
            detector,
            states: BTreeMap::new(),
            started: 0,
            active: BTreeMap::new(),
            last_poll_ns: 0,
            cpus: aya::util::nr_cpus().map_or(1, |n| n as u32),
        })
    }

    /// Starts the kernel's first poll epoch; call once, before attaching.
    pub fn start(&self, kernel: &mut Kernel) -> anyhow::Result<()> {
        let (epoch, mask) = self.feed.next_control();
        kernel
            .set_detect_control(epoch - 1, mask)
            .context("starting the SYN-flood counters")
    }

    /// One poll of every interface's kernel instance (with the tracker of
    /// its flow table): the alert events it causes. Nothing if the last
    /// poll was less than [`MIN_POLL_GAP_NS`] ago.
    ///
    /// Detection is the host's, per destination: each instance's per-CPU
    /// destination slots are read as those of CPUs of their own (instance
    /// `n`'s CPU `c` as `n * CPUs + c`), so a destination's SYNs add up
    /// over the interfaces they arrive on.
    pub fn poll<'a>(
        &mut self,
        watched: impl Iterator<Item = (&'a mut Kernel, &'a mut Tracker)>,
    ) -> anyhow::Result<Vec<AlertEvent>> {
        if monotonic_now_ns().saturating_sub(self.last_poll_ns) < MIN_POLL_GAP_NS {
            return Ok(Vec::new());
        }
        let (epoch, mask) = self.feed.next_control();
        let now_ns = monotonic_now_ns();
        self.last_poll_ns = now_ns;
        let mut reading = KernelReading::default();
        let mut timed_out = Vec::new();
        let cpus = self.cpus;
        for (instance, (kernel, tracker)) in (0u32..).zip(watched) {
            kernel.set_detect_control(epoch, mask)?;
            reading.slots.extend(
                kernel
                    .destinations()?
                    .into_iter()
                    .map(|(cpu, index, slot)| (instance * cpus + cpu, index, slot)),
            );
            reading.rings.extend(kernel.source_samples()?);
            timed_out.extend(tracker.take_half_open_timeouts());
        }
        let tick = self.feed.tick(now_ns, &reading, &timed_out);
        let events = self.detector.observe(&tick);
        self.record(&events, now_ns);
        Ok(events)
    }

    /// teardown is stopping: an `end` event for every alert in progress.
    pub fn finish(&mut self) -> Vec<AlertEvent> {
        let now_ns = monotonic_now_ns();
        let events = self.detector.finish(now_ns);
        self.record(&events, now_ns);
        events
    }

    fn record(&mut self, events: &[AlertEvent], now_ns: u64) {
        for event in events {
            let target = event.target.to_string();
            let active = event.phase != Phase::End;
            if event.phase == Phase::Start {
                self.started += 1;
            }
            self.states.insert(target.clone(), (active, now_ns));
            if active {
                self.active.insert(target, event.clone());
            } else {
                self.active.remove(&target);
            }
        }
        while self.states.len() > ENDED_ALERTS_KEPT + self.active.len() {
            let oldest = self
                .states
                .iter()
                .filter(|(_, (active, _))| !active)
                .min_by_key(|(_, (_, at))| *at)
                .map(|(target, _)| target.clone());
            match oldest {
                Some(target) => self.states.remove(&target),
                None => break,
            };
        }
    }

    /// Each alert target's state, for the metrics.
    pub fn states(&self) -> Vec<AlertState> {
        self.states
            .iter()
            .map(|(target, (active, _))| AlertState {
                target: target.clone(),
                active: *active,
            })
            .collect()
    }

    /// One short line per alert in progress, for the top of the dashboard:
    /// what a glance needs, without the event's full wording.
    pub fn active_lines(&self) -> Vec<String> {
        use crate::output::short_count;
        self.active()
            .map(|event| {
                let ratio = event
                    .completion_ratio
                    .map(|ratio| format!("{:.0}% completed", ratio * 100.0))
                    .unwrap_or_else(|| "completion n/a".to_string());
                let sources = event
                    .distinct_sources
                    .map(|estimate| format!(", ~{} sources", short_count(estimate.round())))
                    .unwrap_or_default();
                format!(
                    "SYN FLOOD {} for {:.0}s: {} SYN/s (peak {}), {ratio}, {} half-open{sources}",
                    event.target,
                    event.duration_s(),
                    short_count(event.syn_rate),
                    short_count(event.peak_syn_rate),
                    short_count(event.half_open as f64),
                )
            })
            .collect()
    }

    /// The latest event of each alert in progress.
    pub fn active(&self) -> impl Iterator<Item = &AlertEvent> {
        self.active.values()
    }

    /// The detector's figures: the JSON `alerts` object.
    pub fn summary(&self) -> AlertSummary {
        let stats = self.detector.stats();
        AlertSummary {
            active: self.active.keys().cloned().collect(),
            started: self.started,
            destinations_watched: self.detector.tracked_targets() as u64,
            destinations_dropped: stats.targets_evicted,
            destination_counts_dropped: self.feed.dropped,
            counter_resets: stats.counter_resets,
        }
    }

    /// One line for the human output: the alerts in progress, if any.
    pub fn summary_line(&self) -> String {
        let watched = self.detector.tracked_targets();
        if self.active.is_empty() {
            format!(
                "alerts: none active, {} started; {watched} destinations watched",
                self.started
            )
        } else {
            let targets: Vec<String> = self
                .active()
                .map(|event| {
                    format!(
                        "{} at {} SYN/s",
                        event.target,
                        crate::output::short_count(event.syn_rate)
                    )
                })
                .collect();
            format!(
                "alerts: {} ACTIVE ({}), {} started; {watched} destinations watched",
                self.active.len(),
                targets.join(", "),
                self.started
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::{
        events::Triggers,
        target::{AlertTarget, TargetKey},
    };

    fn event(phase: Phase, target: AlertTarget) -> AlertEvent {
        AlertEvent {
            phase,
            target,
            syn_rate: 110_700.0,
            peak_syn_rate: 120_000.0,
            baseline_syn_rate: 58.0,
            completion_ratio: Some(0.004),
            half_open: 279,
            top_sources: Vec::new(),
            distinct_sources: Some(140_000.0),
            triggers: Triggers {
                syn_rate: true,
                half_open: false,
            },
            started_ns: 1_000_000_000,
            now_ns: 3_000_000_000,
            host: None,
        }
    }

    #[test]
    fn alerts_are_active_from_start_to_end_and_counted() {
        let mut watch = AlertWatch::new(DetectConfig::default()).expect("default config");
        let dest = AlertTarget::Dest(TargetKey::new([10, 99, 0, 2].into(), 8080));
        watch.record(
            &[
                event(Phase::Start, dest),
                event(Phase::Start, AlertTarget::All),
            ],
            1,
        );
        watch.record(&[event(Phase::Update, dest)], 2);
        assert_eq!(watch.started, 2, "updates start nothing");
        let lines = watch.active_lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines.contains(
                &"SYN FLOOD 10.99.0.2:8080 for 2s: 110.7k SYN/s (peak 120.0k), 0% completed, 279 half-open, ~140.0k sources"
                    .to_string()
            ),
            "{lines:?}"
        );
        watch.record(&[event(Phase::End, dest)], 3);
        assert_eq!(
            watch.active_lines().len(),
            1,
            "the destination's alert ended"
        );
        let states = watch.states();
        assert_eq!(
            states
                .iter()
                .map(|state| (state.target.as_str(), state.active))
                .collect::<Vec<_>>(),
            [("*", true), ("10.99.0.2:8080", false)],
            "ended alerts stay listed, inactive"
        );
        let summary = watch.summary();
        assert_eq!(summary.active, ["*"], "the alert still in progress");
        assert_eq!(summary.started, 2);
    }
}

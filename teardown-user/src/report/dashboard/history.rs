//! The last minutes of a few rates, for the dashboard's sparklines: one
//! sample per report, a bounded number kept, so a flood's shape stays in
//! sight for a while after it ends and memory never grows.

use std::collections::VecDeque;

use teardown_common::counters::Counter;

use crate::report::figures::Figures;

/// Samples kept per series: five minutes of one-second reports.
pub const SAMPLES_KEPT: usize = 300;

/// One rate over time, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    samples: VecDeque<u64>,
}

impl Series {
    pub fn push(&mut self, value: f64) {
        if self.samples.len() == SAMPLES_KEPT {
            self.samples.pop_front();
        }
        // Rates are shown as whole numbers per second; a negative or NaN
        // rate cannot happen, and would be 0.
        self.samples.push_back(value.max(0.0).round() as u64);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The newest `count` samples (or all there are), oldest first.
    #[cfg(test)]
    pub fn last(&self, count: usize) -> Vec<u64> {
        let skip = self.samples.len().saturating_sub(count);
        self.samples.iter().skip(skip).copied().collect()
    }

    /// Every sample kept, in at most `cells` values, oldest first: one
    /// per sample when they fit, else each value the peak of a run of
    /// neighbouring samples, so a narrow sparkline still spans the whole
    /// history and a short burst is not averaged away.
    pub fn fitted(&self, cells: usize) -> Vec<u64> {
        if cells == 0 {
            return Vec::new();
        }
        let per_cell = self.samples.len().div_ceil(cells).max(1);
        let samples: Vec<u64> = self.samples.iter().copied().collect();
        samples
            .chunks(per_cell)
            .map(|run| run.iter().copied().max().unwrap_or(0))
            .collect()
    }

    /// The newest sample.
    pub fn current(&self) -> u64 {
        self.samples.back().copied().unwrap_or(0)
    }

    /// The largest sample kept.
    pub fn peak(&self) -> u64 {
        self.samples.iter().copied().max().unwrap_or(0)
    }
}

/// The series the dashboard draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// SYNs that arrived, per second.
    pub syn: Series,
    /// SYN-ACKs per second: the host's own (sent) when egress is watched,
    /// else those seen arriving (a mirror port carries both ways).
    pub syn_ack: Series,
    /// RSTs per second, both ways.
    pub rst: Series,
    /// Handshakes waiting for an answer, at each report.
    pub half_open: Series,
}

impl History {
    /// Takes a sample from a report's figures; figures without rates
    /// (between reports, at the end) add nothing.
    pub fn sample(&mut self, figures: &Figures) {
        if figures.received.rates.is_none() {
            return;
        }
        let received = &figures.received;
        let sent = figures.egress.as_ref();
        self.syn.push(received.per_second(Counter::Syn));
        self.syn_ack.push(match sent {
            Some(sent) => sent.per_second(Counter::SynAck),
            None => received.per_second(Counter::SynAck),
        });
        self.rst.push(
            received.per_second(Counter::Rst)
                + sent.map_or(0.0, |sent| sent.per_second(Counter::Rst)),
        );
        self.half_open.push(figures.flows.half_open as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_keeps_the_last_five_minutes_only() {
        let mut series = Series::default();
        for value in 0..(SAMPLES_KEPT as u64 * 3) {
            series.push(value as f64);
        }
        assert_eq!(series.len(), SAMPLES_KEPT);
        assert_eq!(series.current(), SAMPLES_KEPT as u64 * 3 - 1);
        assert_eq!(series.last(3), [897, 898, 899]);
        assert_eq!(series.last(10_000).len(), SAMPLES_KEPT);
        assert_eq!(series.last(10_000)[0], SAMPLES_KEPT as u64 * 2);
        assert_eq!(series.peak(), 899);
        series.push(-3.0);
        series.push(f64::NAN);
        assert_eq!(series.last(2), [0, 0]);
    }

    #[test]
    fn a_narrow_sparkline_spans_the_whole_history_keeping_peaks() {
        let mut series = Series::default();
        for second in 0..SAMPLES_KEPT {
            series.push(if second == 7 {
                900.0
            } else {
                second as f64 % 5.0
            });
        }
        assert_eq!(series.fitted(SAMPLES_KEPT), series.last(SAMPLES_KEPT));
        assert_eq!(series.fitted(1000).len(), SAMPLES_KEPT);
        let narrow = series.fitted(50);
        assert_eq!(narrow.len(), 50);
        assert_eq!(narrow[1], 900, "{narrow:?}");
        assert!(narrow[2..].iter().all(|&peak| peak == 4), "{narrow:?}");
        // 300 samples in 7 cells: runs of 43, the last one shorter.
        assert_eq!(series.fitted(7).len(), 7);
        assert!(series.fitted(0).is_empty());
        assert!(Series::default().fitted(10).is_empty());
    }

    /// A flood's peak is still in the history minutes after it ended, and
    /// gone once more than the kept samples have passed.
    #[test]
    fn a_flood_stays_visible_then_rolls_off() {
        let mut series = Series::default();
        for _ in 0..30 {
            series.push(50_000.0);
        }
        for _ in 0..(SAMPLES_KEPT - 31) {
            series.push(3.0);
        }
        assert_eq!(series.peak(), 50_000);
        series.push(3.0);
        series.push(3.0);
        assert_eq!(
            series.peak(),
            50_000,
            "the flood's last second is still kept"
        );
        for _ in 0..30 {
            series.push(3.0);
        }
        assert_eq!(series.peak(), 3);
    }

    #[test]
    fn only_a_reports_figures_make_a_sample() {
        let figures = crate::report::figures::tests::busy_figures();
        let mut history = History::default();
        history.sample(&figures);
        assert_eq!(history.syn.len(), 1);
        assert_eq!(history.half_open.current(), figures.flows.half_open);
        let mut between = figures.clone();
        between.received.rates = None;
        history.sample(&between);
        assert_eq!(history.syn.len(), 1);
    }
}

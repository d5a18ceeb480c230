//! The detector's thresholds ([`DetectConfig`]), their defaults and their
//! validation.

use std::{fmt, time::Duration};

/// Most sources an alert can report (`--top-sources`); also the size of the
/// heavy-hitter summaries, so the top five are exact unless a flood has
/// more than ~60 comparable senders.
pub const SOURCE_CAPACITY: usize = 64;

/// Detection thresholds. [`Default`] gives the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectConfig {
    /// `--syn-rate-floor`: SYN/s a scope must exceed before the rate rule
    /// applies, whatever its baseline. Default 1000: above what one busy
    /// service sees from legitimate clients, below what any flood worth the
    /// name sends (a single attacker host manages tens of thousands).
    pub syn_rate_floor: f64,
    /// `--baseline-multiple`: the SYN rate must also exceed this many times
    /// the learned baseline. Default 3: daily peaks are rarely more than
    /// 2x the recent level; at least 1.
    pub baseline_multiple: f64,
    /// `--completion-threshold`: the rate rule fires only while fewer than
    /// this fraction of SYNs complete their handshake. Default 0.5: a
    /// flood at least as large as the legitimate traffic.
    pub completion_threshold: f64,
    /// `--half-open-threshold`: half-open flows (past their grace) that
    /// alert by themselves. Default 2000: a server at 20 000 connections/s
    /// with 100 ms round trips has 2000 handshakes in flight, but those are
    /// within their grace and do not count.
    pub half_open_threshold: u64,
    /// `--baseline-half-life`: half-life of the SYN-rate baseline. Default
    /// 60 s: it follows the hour's level, not a flood's first seconds.
    pub baseline_half_life: Duration,
    /// `--handshake-grace`: a SYN younger than this is still in progress,
    /// not failed. Set it to the worst round trip of your clients; SYNs are
    /// judged at poll granularity, so with 100 ms polls the default 80 ms
    /// (room for poll jitter) means SYNs are judged from the next poll on,
    /// when they are at least 100 ms old.
    pub handshake_grace: Duration,
    /// `--ratio-window`: the completion ratio looks back this far. Default
    /// 500 ms: long enough to smooth poll-boundary jitter, short enough
    /// that a flood's first SYNs are not diluted by seconds of past traffic.
    /// Must be longer than the grace.
    pub ratio_window: Duration,
    /// `--alert-quiet`: an alert ends after this long without a flooding
    /// poll. Default 3 s: one flood with pauses is one alert.
    pub quiet_time: Duration,
    /// `--alert-update`: interval of `update` events. Default 1 s.
    pub update_period: Duration,
    /// `--top-sources`: heaviest sources reported per alert, 1 to
    /// [`SOURCE_CAPACITY`]. Default 5.
    pub top_sources: usize,
    /// `--max-targets`: destinations tracked at once. Default 4096.
    pub max_targets: usize,
}

impl Default for DetectConfig {
    fn default() -> DetectConfig {
        DetectConfig {
            syn_rate_floor: 1000.0,
            baseline_multiple: 3.0,
            completion_threshold: 0.5,
            half_open_threshold: 2000,
            baseline_half_life: Duration::from_secs(60),
            handshake_grace: Duration::from_millis(80),
            ratio_window: Duration::from_millis(500),
            quiet_time: Duration::from_secs(3),
            update_period: Duration::from_secs(1),
            top_sources: 5,
            max_targets: 4096,
        }
    }
}

/// A threshold out of its range; the message names the flag and what it
/// allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {value}: must be {allowed}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub allowed: String,
}

impl DetectConfig {
    /// Checks every threshold; the first bad one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(
            ok: bool,
            flag: &'static str,
            value: impl fmt::Debug,
            allowed: &str,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError {
                    flag,
                    value: format!("{value:?}"),
                    allowed: allowed.to_string(),
                })
            }
        }
        let positive = |value: f64| value.is_finite() && value > 0.0;
        check(
            positive(self.syn_rate_floor),
            "--syn-rate-floor",
            self.syn_rate_floor,
            "a number of SYNs per second above 0",
        )?;
        check(
            self.baseline_multiple.is_finite() && self.baseline_multiple >= 1.0,
            "--baseline-multiple",
            self.baseline_multiple,
            "a number of at least 1",
        )?;
        check(
            positive(self.completion_threshold) && self.completion_threshold <= 1.0,
            "--completion-threshold",
            self.completion_threshold,
            "a fraction above 0 and at most 1",
        )?;
        check(
            self.half_open_threshold > 0,
            "--half-open-threshold",
            self.half_open_threshold,
            "a number of flows above 0",
        )?;
        for (flag, value) in [
            ("--baseline-half-life", self.baseline_half_life),
            ("--handshake-grace", self.handshake_grace),
            ("--ratio-window", self.ratio_window),
            ("--alert-quiet", self.quiet_time),
            ("--alert-update", self.update_period),
        ] {
            check(!value.is_zero(), flag, value, "a duration above 0")?;
        }
        check(
            self.ratio_window > self.handshake_grace,
            "--ratio-window",
            self.ratio_window,
            &format!("longer than --handshake-grace ({:?})", self.handshake_grace),
        )?;
        check(
            (1..=SOURCE_CAPACITY).contains(&self.top_sources),
            "--top-sources",
            self.top_sources,
            &format!("1 to {SOURCE_CAPACITY}"),
        )?;
        check(
            self.max_targets > 0,
            "--max-targets",
            self.max_targets,
            "a number of destinations above 0",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::detector::Detector;

    #[test]
    fn config_validation_names_the_flag() {
        assert_eq!(DetectConfig::default().validate(), Ok(()));
        let base = DetectConfig::default();
        let bad_numbers = [0.0, -1.0, f64::NAN, f64::INFINITY];
        type Setter = fn(&mut DetectConfig, f64);
        let fields: [(&str, Setter); 3] = [
            ("--syn-rate-floor", |c, v| c.syn_rate_floor = v),
            ("--baseline-multiple", |c, v| c.baseline_multiple = v),
            ("--completion-threshold", |c, v| c.completion_threshold = v),
        ];
        for (flag, set) in fields {
            for value in bad_numbers {
                let mut config = base.clone();
                set(&mut config, value);
                let err = config.validate().expect_err("bad value accepted");
                assert_eq!(err.flag, flag, "{err}");
                assert!(err.to_string().starts_with(flag), "{err}");
                assert!(Detector::new(config).is_err());
            }
        }
        let cases: Vec<(DetectConfig, &str)> = vec![
            (
                DetectConfig {
                    baseline_multiple: 0.5,
                    ..base.clone()
                },
                "--baseline-multiple",
            ),
            (
                DetectConfig {
                    completion_threshold: 1.5,
                    ..base.clone()
                },
                "--completion-threshold",
            ),
            (
                DetectConfig {
                    half_open_threshold: 0,
                    ..base.clone()
                },
                "--half-open-threshold",
            ),
            (
                DetectConfig {
                    baseline_half_life: Duration::ZERO,
                    ..base.clone()
                },
                "--baseline-half-life",
            ),
            (
                DetectConfig {
                    handshake_grace: Duration::ZERO,
                    ..base.clone()
                },
                "--handshake-grace",
            ),
            (
                DetectConfig {
                    ratio_window: Duration::from_millis(50),
                    ..base.clone()
                },
                "--ratio-window",
            ),
            (
                DetectConfig {
                    quiet_time: Duration::ZERO,
                    ..base.clone()
                },
                "--alert-quiet",
            ),
            (
                DetectConfig {
                    update_period: Duration::ZERO,
                    ..base.clone()
                },
                "--alert-update",
            ),
            (
                DetectConfig {
                    top_sources: 0,
                    ..base.clone()
                },
                "--top-sources",
            ),
            (
                DetectConfig {
                    top_sources: SOURCE_CAPACITY + 1,
                    ..base.clone()
                },
                "--top-sources",
            ),
            (
                DetectConfig {
                    max_targets: 0,
                    ..base.clone()
                },
                "--max-targets",
            ),
        ];
        for (config, flag) in cases {
            let err = config.validate().expect_err(flag);
            assert_eq!(err.flag, flag, "{err}");
        }
        let err = DetectConfig {
            syn_rate_floor: 0.0,
            ..base.clone()
        }
        .validate()
        .expect_err("zero floor");
        assert_eq!(
            err.to_string(),
            "--syn-rate-floor 0.0: must be a number of SYNs per second above 0"
        );
        let err = DetectConfig {
            ratio_window: Duration::from_millis(50),
            ..base
        }
        .validate()
        .expect_err("window under grace");
        assert_eq!(
            err.to_string(),
            "--ratio-window 50ms: must be longer than --handshake-grace (80ms)"
        );
    }
}

//! The detector's thresholds ([`DetectConfig`]), their defaults and their
//! validation.

use std::{fmt, time::Duration};

#[cfg(test)]
use super::target::{TargetKey, TargetParseError};

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

fn parse_number(text: &str, example: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let value: f64 = trimmed
        .parse()
        .map_err(|_| format!("{text:?} is not a number: use e.g. {example}"))?;
    if !value.is_finite() {
        return Err(format!(
            "{text:?} is not a finite number: use e.g. {example}"
        ));
    }
    Ok(value)
}

/// clap parser for a positive finite number (`--syn-rate-floor`): refuses
/// 0, negatives, NaN and infinities.
pub fn parse_positive_f64(text: &str) -> Result<f64, String> {
    let value = parse_number(text, "1000")?;
    if value <= 0.0 {
        return Err(format!("{text:?} is out of range: use a number above 0"));
    }
    Ok(value)
}

/// clap parser for `--baseline-multiple`: a finite number of at least 1.
pub fn parse_multiple(text: &str) -> Result<f64, String> {
    let value = parse_number(text, "3")?;
    if value < 1.0 {
        return Err(format!(
            "{text:?} is out of range: use a number of at least 1"
        ));
    }
    Ok(value)
}

/// clap parser for `--completion-threshold`: a fraction in (0, 1], written
/// `0.5` or `50%`.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let value = match trimmed.strip_suffix('%') {
        Some(percent) => parse_number(percent, "0.5 or 50%")? / 100.0,
        None => parse_number(trimmed, "0.5 or 50%")?,
    };
    if !(value > 0.0 && value <= 1.0) {
        return Err(format!(
            "{text:?} is out of range: use a fraction above 0 and at most 1 (or 100%)"
        ));
    }
    Ok(value)
}

/// clap parser for a whole number above 0 (`--half-open-threshold`,
/// `--max-targets`).
pub fn parse_positive_u64(text: &str) -> Result<u64, String> {
    let value: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number: use e.g. 2000"))?;
    if value == 0 {
        return Err(format!("{text:?} is out of range: use a number above 0"));
    }
    Ok(value)
}

/// clap parser for `--top-sources`: 1 to [`SOURCE_CAPACITY`].
pub fn parse_top_sources(text: &str) -> Result<usize, String> {
    let value: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number: use e.g. 5"))?;
    if !(1..=SOURCE_CAPACITY).contains(&value) {
        return Err(format!(
            "{text:?} is out of range: use 1 to {SOURCE_CAPACITY}"
        ));
    }
    Ok(value)
}

/// clap parser for a destination `ADDR:PORT`.
#[cfg(test)]
pub fn parse_target(text: &str) -> Result<TargetKey, String> {
    text.parse()
        .map_err(|err: TargetParseError| err.to_string())
}

/// `teardown run`'s detection flags; every default is [`DetectConfig`]'s.
/// Values may start with `-`, so `--syn-rate-floor -5` reaches the parser
/// and is refused naming the flag, instead of reading as an unknown option.
#[derive(clap::Args, Clone, Debug)]
pub struct DetectArgs {
    /// SYN/s a destination (or all together) must exceed before the rate
    /// rule applies, whatever its learned baseline.
    #[arg(long, allow_hyphen_values = true, value_name = "SYN/S", default_value = "1000", value_parser = parse_positive_f64)]
    pub syn_rate_floor: f64,
    /// The SYN rate must also exceed this many times the learned baseline.
    #[arg(long, allow_hyphen_values = true, value_name = "X", default_value = "3", value_parser = parse_multiple)]
    pub baseline_multiple: f64,
    /// The rate rule fires only while fewer than this fraction of SYNs
    /// complete their handshake (0.5 or 50%).
    #[arg(long, allow_hyphen_values = true, value_name = "RATIO", default_value = "0.5", value_parser = parse_ratio)]
    pub completion_threshold: f64,
    /// Half-open flows (older than the handshake grace) that alert by themselves.
    #[arg(long, allow_hyphen_values = true, value_name = "FLOWS", default_value = "2000", value_parser = parse_positive_u64)]
    pub half_open_threshold: u64,
    /// Half-life of the learned SYN-rate baseline.
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", default_value = "60s", value_parser = crate::parse_timeout)]
    pub baseline_half_life: Duration,
    /// A SYN younger than this is still in progress, not failed: your
    /// clients' worst round trip.
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", default_value = "80ms", value_parser = crate::parse_timeout)]
    pub handshake_grace: Duration,
    /// How far back the completion ratio looks (longer than the grace).
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", default_value = "500ms", value_parser = crate::parse_timeout)]
    pub ratio_window: Duration,
    /// An alert ends after this long without a flooding poll.
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", default_value = "3s", value_parser = crate::parse_timeout)]
    pub alert_quiet: Duration,
    /// Interval of an alert's update events.
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", default_value = "1s", value_parser = crate::parse_timeout)]
    pub alert_update: Duration,
    /// Heaviest sources listed per alert.
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = "5", value_parser = parse_top_sources)]
    pub top_sources: usize,
    /// Destinations watched at once (the least recently active are dropped
    /// first, never one that is alerting).
    #[arg(long, allow_hyphen_values = true, value_name = "N", default_value = "4096", value_parser = parse_positive_u64)]
    pub max_targets: u64,
}

impl DetectArgs {
    pub fn config(&self) -> DetectConfig {
        DetectConfig {
            syn_rate_floor: self.syn_rate_floor,
            baseline_multiple: self.baseline_multiple,
            completion_threshold: self.completion_threshold,
            half_open_threshold: self.half_open_threshold,
            baseline_half_life: self.baseline_half_life,
            handshake_grace: self.handshake_grace,
            ratio_window: self.ratio_window,
            quiet_time: self.alert_quiet,
            update_period: self.alert_update,
            top_sources: self.top_sources,
            max_targets: self.max_targets.min(usize::MAX as u64) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::detector::Detector;
    use crate::flood::testing::dest;

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

    #[test]
    fn flag_parsers_refuse_bad_values_clearly() {
        assert_eq!(parse_positive_f64("1000"), Ok(1000.0));
        assert_eq!(parse_positive_f64(" 2.5 "), Ok(2.5));
        for bad in [
            "0", "-1", "-0", "nan", "NaN", "inf", "-inf", "", "abc", "1e999",
        ] {
            let err = parse_positive_f64(bad).expect_err(bad);
            assert!(err.starts_with(&format!("{bad:?} is ")), "{err}");
        }
        assert_eq!(
            parse_positive_f64("0").unwrap_err(),
            "\"0\" is out of range: use a number above 0"
        );
        assert_eq!(
            parse_positive_f64("x").unwrap_err(),
            "\"x\" is not a number: use e.g. 1000"
        );
        assert_eq!(parse_multiple("3"), Ok(3.0));
        assert!(parse_multiple("0.9").is_err());
        assert_eq!(parse_ratio("0.5"), Ok(0.5));
        assert_eq!(parse_ratio("25%"), Ok(0.25));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        for bad in ["0", "0%", "1.5", "150%", "-0.2", "nan", "half"] {
            assert!(parse_ratio(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_positive_u64("2000"), Ok(2000));
        for bad in ["0", "-5", "1.5", "", "many"] {
            assert!(parse_positive_u64(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_top_sources("5"), Ok(5));
        assert!(parse_top_sources("0").is_err());
        assert!(parse_top_sources("65").is_err());
        assert_eq!(parse_target("10.0.0.1:80"), Ok(dest("10.0.0.1:80")));
        for bad in [
            "10.0.0.1",
            "host:80",
            "10.0.0.1:99999",
            "2001:db8::1:80",
            "",
        ] {
            let err = parse_target(bad).expect_err(bad);
            assert!(err.contains("is not a destination: use ADDR:PORT"), "{err}");
        }
    }
}

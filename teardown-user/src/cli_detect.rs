//! The CLI layer of SYN-flood detection: `teardown run`'s detection flags
//! ([`DetectArgs`]), their parsers, and their translation into the
//! detector's [`DetectConfig`]. The detector itself (`flood/`) knows
//! nothing of clap.

use std::time::Duration;

use crate::flood::{DetectConfig, SOURCE_CAPACITY};
#[cfg(test)]
use crate::flood::{TargetKey, TargetParseError};

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
    use crate::flood::testing::dest;

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

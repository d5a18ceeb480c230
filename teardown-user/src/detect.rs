//! Building blocks of SYN-flood detection: destinations, the HyperLogLog
//! estimate of distinct sources, Space-Saving heavy hitters, and the
//! detection thresholds with their flag parsers. The detector itself
//! follows.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use teardown_common::{
    flow::{v4_mapped, words},
    sketch::hash_addr,
};

/// A destination: address and port. IPv4-mapped IPv6 addresses are kept
/// as IPv4 (see [`TargetKey::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl TargetKey {
    /// A destination, with an IPv4-mapped address turned back into IPv4.
    pub fn new(addr: IpAddr, port: u16) -> TargetKey {
        TargetKey {
            addr: addr.to_canonical(),
            port,
        }
    }

    /// From the kernel's form: 16 address bytes (IPv4 mapped) and a port.
    pub fn from_mapped(addr: [u8; 16], port: u16) -> TargetKey {
        TargetKey::new(IpAddr::from(addr), port)
    }
}

impl fmt::Display for TargetKey {
    /// `10.0.0.1:80`, `[2001:db8::1]:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// A destination that is not `ADDR:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a destination: use ADDR:PORT, e.g. 10.0.0.1:80 or [2001:db8::1]:443")]
pub struct TargetParseError(pub String);

impl FromStr for TargetKey {
    type Err = TargetParseError;

    fn from_str(text: &str) -> Result<TargetKey, TargetParseError> {
        let socket: SocketAddr = text
            .trim()
            .parse()
            .map_err(|_| TargetParseError(text.to_string()))?;
        Ok(TargetKey::new(socket.ip(), socket.port()))
    }
}

/// What an alert is about: one destination, or all of them together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertTarget {
    /// One destination address and port.
    Dest(TargetKey),
    /// Every destination together: shown as `*`. Alerts alongside the
    /// per-destination alerts, and alone when a flood is spread over many
    /// destinations (random ports, a whole subnet) none of which crosses
    /// the thresholds by itself.
    All,
}

impl fmt::Display for AlertTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlertTarget::Dest(key) => key.fmt(f),
            AlertTarget::All => f.write_str("*"),
        }
    }
}

/// The hash the kernel computes for a source address, for filling and
/// checking sketches in user space.
pub fn source_hash(addr: IpAddr) -> u32 {
    let bytes = match addr.to_canonical() {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    hash_addr(&words(bytes))
}

// ---------------------------------------------------------------------------
// HyperLogLog

/// The HyperLogLog cardinality estimate of a sketch (any power-of-two
/// number of registers): the harmonic-mean estimate, with linear counting
/// below 2.5 m while registers are still empty, and the 32-bit hash's
/// large-range correction.
pub fn hll_estimate(registers: &[u8]) -> f64 {
    if registers.is_empty() {
        return 0.0;
    }
    let m = registers.len() as f64;
    let alpha = match registers.len() {
        16 => 0.673,
        32 => 0.697,
        64 => 0.709,
        _ => 0.7213 / (1.0 + 1.079 / m),
    };
    let sum: f64 = registers
        .iter()
        .map(|&rank| (-f64::from(rank)).exp2())
        .sum();
    let raw = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&rank| rank == 0).count();
    let two32 = 2f64.powi(32);
    if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else if raw > two32 / 30.0 {
        if raw >= two32 {
            two32
        } else {
            -two32 * (1.0 - raw / two32).ln()
        }
    } else {
        raw
    }
}

/// Folds `from` into `into`: afterwards `into` sketches the union.
pub fn hll_merge(into: &mut [u8], from: &[u8]) {
    for (mine, theirs) in into.iter_mut().zip(from) {
        *mine = (*mine).max(*theirs);
    }
}

// ---------------------------------------------------------------------------
// Heavy hitters

/// Space-Saving heavy hitters (Metwally et al.) with weights: at most
/// `capacity` counters. For every address it reports, the true weight lies
/// in `[count - error, count]`; every address whose true weight exceeds
/// `total / capacity` is reported.
#[derive(Clone, Debug)]
pub struct SpaceSaving {
    capacity: usize,
    counters: HashMap<IpAddr, (u64, u64)>,
    total: u64,
}

impl SpaceSaving {
    /// A summary of at most `capacity` (at least 1) addresses.
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            counters: HashMap::with_capacity(capacity.max(1)),
            total: 0,
        }
    }

    /// Counts `weight` for `addr`.
    pub fn insert(&mut self, addr: IpAddr, weight: u64) {
        self.insert_with_error(addr, weight, 0);
    }

    fn insert_with_error(&mut self, addr: IpAddr, weight: u64, error: u64) {
        if weight == 0 {
            return;
        }
        self.total = self.total.saturating_add(weight);
        if let Some((count, err)) = self.counters.get_mut(&addr) {
            *count = count.saturating_add(weight);
            *err = err.saturating_add(error);
            return;
        }
        if self.counters.len() < self.capacity {
            self.counters.insert(addr, (weight, error));
            return;
        }
        // Replace the smallest counter: the newcomer may have had up to its
        // count before, unseen.
        let (victim, (min, _)) = self
            .counters
            .iter()
            .min_by_key(|(addr, (count, _))| (*count, **addr))
            .map(|(addr, value)| (*addr, *value))
            .expect("a full summary has counters");
        self.counters.remove(&victim);
        self.counters.insert(
            addr,
            (min.saturating_add(weight), min.saturating_add(error)),
        );
    }

    /// Adds another summary's counts (the bounds still hold for the union
    /// of both streams).
    pub fn merge(&mut self, other: &SpaceSaving) {
        // Largest first, so the merge does not depend on hash order. The
        // counters sum to the other summary's total, so totals add up too.
        let mut entries: Vec<_> = other.counters.iter().collect();
        entries.sort_by_key(|(addr, (count, _))| (std::cmp::Reverse(*count), **addr));
        for (addr, (count, error)) in entries {
            self.insert_with_error(*addr, *count, *error);
        }
    }

    /// The `n` largest: (address, count, error), the largest guaranteed
    /// weight (`count - error`) first. On a stream without heavy hitters
    /// every count is mostly error; ranking by the guaranteed part keeps an
    /// address inserted once, late, from outranking one seen throughout.
    pub fn top(&self, n: usize) -> Vec<(IpAddr, u64, u64)> {
        let mut entries: Vec<_> = self
            .counters
            .iter()
            .map(|(addr, (count, error))| (*addr, *count, *error))
            .collect();
        entries.sort_by(|a, b| {
            (b.1 - b.2)
                .cmp(&(a.1 - a.2))
                .then(b.1.cmp(&a.1))
                .then(a.0.cmp(&b.0))
        });
        entries.truncate(n);
        entries
    }

    /// Total weight inserted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Addresses held (at most the capacity).
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }
}

// ---------------------------------------------------------------------------
// Configuration

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
pub fn parse_target(text: &str) -> Result<TargetKey, String> {
    text.parse()
        .map_err(|err: TargetParseError| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use teardown_common::sketch::{HLL_REGISTERS, hll_add};

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn dest(text: &str) -> TargetKey {
        text.parse().expect("test destinations parse")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test addresses parse")
    }

    // --- Configuration and flags.

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

    #[test]
    fn targets_display_as_socket_addresses() {
        assert_eq!(dest("10.0.0.1:80").to_string(), "10.0.0.1:80");
        assert_eq!(dest("[2001:db8::1]:80").to_string(), "[2001:db8::1]:80");
        // IPv4-mapped becomes IPv4, from text or from the kernel's bytes.
        assert_eq!(dest("[::ffff:10.0.0.1]:80").to_string(), "10.0.0.1:80");
        let mapped = v4_mapped([192, 0, 2, 1]);
        assert_eq!(
            TargetKey::from_mapped(mapped, 443).to_string(),
            "192.0.2.1:443"
        );
        assert_eq!(AlertTarget::All.to_string(), "*");
    }

    // --- Sketches.

    #[test]
    fn hll_estimates_are_within_three_standard_errors() {
        let sigma = 1.04 / (HLL_REGISTERS as f64).sqrt();
        let mut state = 42;
        for n in [10u32, 100, 1_000, 10_000, 100_000] {
            let trials = if n >= 100_000 { 60 } else { 300 };
            let mut within = 0;
            let mut total_error = 0.0;
            for _ in 0..trials {
                // n distinct IPv4 sources from a random base.
                let base = splitmix(&mut state) as u32;
                let mut registers = [0u8; HLL_REGISTERS];
                for i in 0..n {
                    let addr = IpAddr::from(base.wrapping_add(i).to_be_bytes());
                    hll_add(&mut registers, source_hash(addr));
                }
                let error = (hll_estimate(&registers) - n as f64) / n as f64;
                total_error += error;
                if error.abs() <= 3.0 * sigma {
                    within += 1;
                }
            }
            let bias = total_error / trials as f64;
            assert!(
                within as f64 >= 0.97 * trials as f64,
                "n={n}: {within}/{trials} within 3 standard errors"
            );
            assert!(bias.abs() < 0.05, "n={n}: mean relative error {bias:.3}");
        }
        assert_eq!(hll_estimate(&[0; HLL_REGISTERS]), 0.0);
    }

    #[test]
    fn hll_merge_is_the_union() {
        let mut left = [0u8; HLL_REGISTERS];
        let mut right = [0u8; HLL_REGISTERS];
        let mut both = [0u8; HLL_REGISTERS];
        for i in 0..5_000u32 {
            let hash = source_hash(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
            hll_add(if i % 3 == 0 { &mut left } else { &mut right }, hash);
            hll_add(&mut both, hash);
        }
        hll_merge(&mut left, &right);
        assert_eq!(left, both);
    }

    #[test]
    fn space_saving_finds_heavy_hitters_within_its_bounds() {
        let capacity = SOURCE_CAPACITY;
        let mut summary = SpaceSaving::new(capacity);
        let mut truth: HashMap<IpAddr, u64> = HashMap::new();
        let mut state = 17;
        let heavy: Vec<(IpAddr, u64)> = (0..5u8)
            .map(|i| (IpAddr::from([198, 51, 100, i]), 40 - 5 * i as u64))
            .collect();
        // 20 000 events: the heavy five take 150 in 1000 (4 % down to 2 %,
        // all above 1 / capacity), the rest spread over 50 000 light
        // addresses.
        for _ in 0..20_000 {
            let roll = splitmix(&mut state) % 1000;
            let mut cumulative = 0;
            let mut addr = None;
            for (heavy_addr, per_mille) in &heavy {
                cumulative += per_mille;
                if roll < cumulative {
                    addr = Some(*heavy_addr);
                    break;
                }
            }
            let addr = addr.unwrap_or_else(|| {
                IpAddr::from((0x0a00_0000 + (splitmix(&mut state) % 50_000) as u32).to_be_bytes())
            });
            let weight = 1 + splitmix(&mut state) % 3;
            summary.insert(addr, weight);
            *truth.entry(addr).or_default() += weight;
        }
        let total: u64 = truth.values().sum();
        assert_eq!(summary.total(), total);
        assert!(summary.len() <= capacity);
        let top = summary.top(capacity);
        for (addr, count, error) in &top {
            let real = truth[addr];
            assert!(
                count - error <= real && real <= *count,
                "{addr}: true {real} outside [{}, {count}]",
                count - error
            );
        }
        // Everything above total / capacity is reported; the top five are
        // the heavy five, in order.
        for (addr, real) in &truth {
            if *real > total / capacity as u64 {
                assert!(
                    top.iter().any(|(a, _, _)| a == addr),
                    "{addr} ({real}) missed"
                );
            }
        }
        let top5: Vec<IpAddr> = summary.top(5).into_iter().map(|(a, _, _)| a).collect();
        let expected: Vec<IpAddr> = heavy.iter().map(|(a, _)| *a).collect();
        assert_eq!(top5, expected);

        // Merging two halves keeps the bounds.
        let mut first = SpaceSaving::new(capacity);
        let mut second = SpaceSaving::new(capacity);
        let mut truth: HashMap<IpAddr, u64> = HashMap::new();
        for i in 0..10_000u64 {
            let addr = if i % 4 == 0 {
                IpAddr::from([203, 0, 113, (i % 3) as u8])
            } else {
                IpAddr::from((0x0a00_0000 + (splitmix(&mut state) % 5_000) as u32).to_be_bytes())
            };
            if i % 2 == 0 { &mut first } else { &mut second }.insert(addr, 1);
            *truth.entry(addr).or_default() += 1;
        }
        first.merge(&second);
        assert_eq!(first.total(), 10_000);
        for (addr, count, error) in first.top(capacity) {
            let real = truth[&addr];
            assert!(count - error <= real && real <= count, "{addr} after merge");
        }
        let top3: HashSet<IpAddr> = first.top(3).into_iter().map(|(a, _, _)| a).collect();
        let expected: HashSet<IpAddr> = (0..3).map(|i| IpAddr::from([203, 0, 113, i])).collect();
        assert_eq!(top3, expected);
    }
}

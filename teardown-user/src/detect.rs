//! SYN-flood detection: pure and clock-free (every input carries its time),
//! so it is tested on simulated traffic.
//!
//! The run loop polls the kernel about every 100 ms and hands each poll to
//! [`Detector::observe`] as a [`Tick`]: per destination (address and port),
//! cumulative SYNs and completed handshakes, the half-open gauge, a
//! HyperLogLog sketch of the SYN sources seen since the last poll, and a
//! sample of SYN sources. The detector keeps, per destination and for all
//! destinations together ([`AlertTarget::All`], shown as `*`), the SYN rate,
//! the handshake completion ratio, the half-open count and a learned
//! baseline, and returns [`AlertEvent`]s: a start, periodic updates and an
//! end per alert.
//!
//! # The rule
//!
//! A scope (one destination, or `*`) is *flooding* on a poll when either
//!
//! * **SYN rate**: the SYN rate over the latest poll exceeds
//!   `--syn-rate-floor` and `--baseline-multiple` times the learned
//!   baseline, **and** completions fall behind: the completion ratio
//!   (below) is under `--completion-threshold`, **and** the SYNs that had
//!   their chance to complete but did not number at least what the floor
//!   rate sends in one `--handshake-grace`; or
//! * **half-open**: the half-open gauge, less the SYNs still within their
//!   grace, exceeds `--half-open-threshold`.
//!
//! An alert starts on the first flooding poll, is updated every
//! `--alert-update` while it lasts, and ends once no poll has been flooding
//! for `--alert-quiet`. The baseline (an exponentially weighted moving
//! average of the per-poll SYN rate with half-life `--baseline-half-life`)
//! is learned only while the scope is not alerting, so a flood does not
//! teach the detector that floods are normal. A new destination starts
//! from a baseline of 0, so only the floor applies until it has history:
//! a flood already under way when teardown starts is still caught.
//!
//! A flood's half-open flows outlive it until the kernel times them out
//! (`--syn-timeout`, 5 s): the half-open rule keeps the alert open while
//! they exceed the threshold, then the quiet time runs. The updates in
//! between show the SYN rate back to normal and the half-open count
//! falling.
//!
//! # Completions lag SYNs
//!
//! A handshake completes one round trip after its SYN, so the SYNs of the
//! latest poll have mostly not completed yet, flood or not: a legitimate
//! surge and a flood look the same until a round trip has passed. The
//! completion ratio therefore only judges SYNs at least `--handshake-grace`
//! old: over the polls in the last `--ratio-window`, it is the completions
//! of the newest *n* polls over the SYNs of the *n* polls that ended at
//! least a grace ago (the same number of polls, shifted by the lag). A
//! legitimate surge's completions arrive within the grace, so its ratio
//! stays near 1 at every poll boundary; a flood's SYNs fail.
//!
//! On a LAN the round trip is far shorter than a poll and completions land
//! in the same poll as their SYNs; there the shifted count would judge a
//! surge that falls off (a busy poll, then a quieter one) by the quieter
//! poll's completions. So the completions of the judged polls themselves
//! count too: the ratio takes the larger of the two. A flood's SYNs never
//! complete, so it fails under both.
//!
//! The consequence, and the latency: a flood is judged on the first poll
//! at which its earliest SYNs are a grace old. With 100 ms polls, a flood
//! that dwarfs the legitimate traffic alerts on the second poll after its
//! first packet, 100 to 200 ms after it (one poll more when only a sliver
//! of it fell into the first poll). A flood only a few times the learned
//! rate must first outweigh the completions in the window: about 300 ms
//! for one that quadruples the SYN rate. No rule can alert on the first
//! poll without alerting on legitimate surges too: there, the two are
//! indistinguishable.
//!
//! The same reasoning is the guard against a one-poll spike: the rate test
//! uses the latest poll, the failure test uses older SYNs, so a burst that
//! fits in one poll has gone by the time its SYNs can be judged. The
//! failed-SYN minimum keeps a destination whose handshakes already trickle
//! away (a closed port under a slow scan) from alerting on one busy poll.
//!
//! # Sources
//!
//! `top_sources` come from the sampled sources ([`SpaceSaving`], bounded
//! memory). Each sample of a destination stands for that destination's
//! SYNs in the poll divided by its samples in the poll, whatever the
//! kernel's sampling rate; `syns` is the number of SYNs the source sent
//! during the alert for certain (it may have sent up to `error` more), and
//! `share` is `syns` over all the SYNs the alert's samples stand for. Only
//! sources with a share of at least 1 %, and at least five samples' worth,
//! are listed: a spoofed flood has none, and lists none. The
//! `distinct_sources` estimate is the HyperLogLog union of every poll's
//! sketch during the alert (standard error 13 %): tens of thousands or more
//! means spoofed sources, a handful means a few real senders.
//!
//! # Bounded state
//!
//! At most `--max-targets` destinations are tracked. Idle destinations (no
//! SYNs, completions or half-open flows for five minutes) are dropped, and
//! when more than the maximum are seen the least recently active ones are
//! dropped first; never one that is alerting. A dropped destination leaves
//! a small tombstone (its cumulative counters, half-open gauge and
//! baseline; up to four per tracked destination) so its counts resume where
//! they were when it returns. Every drop is counted in [`DetectStats`].

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use serde_json::{Value, json};
use teardown_common::sketch::HLL_REGISTERS;

use crate::report::output::short_count;

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
#[cfg(test)]
pub fn source_hash(addr: IpAddr) -> u32 {
    let bytes = match addr.to_canonical() {
        IpAddr::V4(v4) => teardown_common::flow::v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    teardown_common::sketch::hash_addr(&teardown_common::flow::words(bytes))
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
    /// Samples inserted (merges add the other summary's).
    samples: u64,
}

impl SpaceSaving {
    /// A summary of at most `capacity` (at least 1) addresses.
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            counters: HashMap::with_capacity(capacity.max(1)),
            total: 0,
            samples: 0,
        }
    }

    /// Counts `weight` for `addr`.
    pub fn insert(&mut self, addr: IpAddr, weight: u64) {
        if weight > 0 {
            self.samples += 1;
        }
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
        self.samples += other.samples;
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

    /// Samples inserted.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Addresses held (at most the capacity).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.counters.len()
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

// ---------------------------------------------------------------------------
// Input and output

/// One poll of the kernel.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    /// CLOCK_MONOTONIC of the poll; must increase from poll to poll (a poll
    /// that does not is ignored and counted).
    pub now_ns: u64,
    /// Every destination whose counters or half-open gauge changed since the
    /// last poll (more is fine). A destination left out is taken as
    /// unchanged: no new SYNs or completions, the same half-open count.
    pub targets: Vec<TargetObservation>,
    /// Sampled SYN sources since the last poll, any uniform sampling.
    pub sources: Vec<(TargetKey, IpAddr)>,
}

/// One destination in a [`Tick`].
#[derive(Clone, Debug, Default)]
pub struct TargetObservation {
    pub target: TargetKey,
    /// Cumulative SYNs. If this (or `completions`) goes down, the kernel
    /// entry was dropped and created anew after the last poll: its counts
    /// are all new since then.
    pub syns: u64,
    /// Cumulative completed handshakes.
    pub completions: u64,
    /// Half-open flows now.
    pub half_open: u64,
    /// HyperLogLog registers ([`HLL_REGISTERS`] bytes) of the SYN sources
    /// seen during this poll only; empty when there are none to report.
    pub source_registers: Vec<u8>,
}

impl Default for TargetKey {
    fn default() -> TargetKey {
        TargetKey::new(IpAddr::from([0u8; 4]), 0)
    }
}

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
        format!(
            "SYN FLOOD {} {target}{when}{triggers}  {} SYN/s (peak {}, baseline {}), {ratio} completed, {} half-open{distinct}{top}",
            self.phase.name(),
            short_count(self.syn_rate),
            short_count(self.peak_syn_rate),
            short_count(self.baseline_syn_rate),
            short_count(self.half_open as f64),
        )
    }
}

/// Bookkeeping: what the detector dropped or could not use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DetectStats {
    /// Polls observed.
    pub ticks: u64,
    /// Polls ignored because their time did not follow the previous one.
    pub ticks_out_of_order: u64,
    /// Destinations whose state was dropped (idle, or over `--max-targets`).
    pub targets_evicted: u64,
    /// Dropped destinations whose tombstone was dropped too: if they come
    /// back, their first poll's counts may include older SYNs.
    pub tombstones_dropped: u64,
    /// Kernel counters that went down: the entry was recreated.
    pub counter_resets: u64,
    /// Source sketches of the wrong size, ignored.
    pub bad_registers: u64,
}

// ---------------------------------------------------------------------------
// The detector

/// A source is listed in `top_sources` only when it sent at least this
/// share of the alert's sampled SYNs for certain (its guaranteed count).
/// A spoofed flood has no such source, and lists none, rather than random
/// addresses whose counts are all summary error.
const MIN_TOP_SHARE: f64 = 0.01;
/// And only when its guaranteed weight is worth at least this many samples:
/// early in an alert, with a few dozen samples, one sample of a spoofed
/// address is a share of several percent.
const MIN_TOP_SAMPLES: f64 = 5.0;
/// Sample weights are kept in 1/1024 SYN, so a sample standing for 1.5 SYNs
/// is not rounded to 1 or 2.
const WEIGHT_SCALE: u64 = 1024;
/// A destination with nothing happening for this long is dropped.
const TARGET_IDLE_NS: u64 = 300_000_000_000;
/// Tombstones kept per tracked destination.
const TOMBSTONES_PER_TARGET: usize = 4;

type Registers = [u8; HLL_REGISTERS];

fn ns(duration: Duration) -> u64 {
    duration.as_nanos().min(u64::MAX as u128) as u64
}

#[derive(Clone, Copy, Debug)]
struct PollCounts {
    end_ns: u64,
    syns: u64,
    completions: u64,
}

/// What one poll showed for a scope.
#[derive(Clone, Copy, Debug, Default)]
struct Measure {
    rate: f64,
    ratio: Option<f64>,
    half_open: u64,
    triggers: Triggers,
}

#[derive(Debug)]
struct Alert {
    started_ns: u64,
    last_flooding_ns: u64,
    last_emit_ns: u64,
    peak: f64,
    baseline: f64,
    registers: Option<Registers>,
    sources: SpaceSaving,
}

/// Detection state of one destination, or of all of them.
#[derive(Debug, Default)]
struct Scope {
    baseline: f64,
    window: VecDeque<PollCounts>,
    last: Measure,
    /// The previous poll's sketch and samples, for an alert that starts now:
    /// the flood's first SYNs were counted there.
    prev_registers: Option<Registers>,
    prev_sources: Option<SpaceSaving>,
    alert: Option<Alert>,
}

/// One poll's input to a scope.
struct ScopeInput {
    now_ns: u64,
    dt_s: f64,
    syns: u64,
    completions: u64,
    half_open: u64,
    registers: Option<Registers>,
    sources: Option<SpaceSaving>,
}

fn merge_registers(into: &mut Option<Registers>, from: Option<&Registers>) {
    match (into.as_mut(), from) {
        (Some(mine), Some(theirs)) => hll_merge(mine, theirs),
        (None, Some(theirs)) => *into = Some(*theirs),
        (_, None) => {}
    }
}

impl Scope {
    fn with_baseline(baseline: f64) -> Scope {
        Scope {
            baseline,
            ..Scope::default()
        }
    }

    /// Takes one poll; returns the event it causes, if any.
    fn step(
        &mut self,
        config: &DetectConfig,
        target: AlertTarget,
        input: ScopeInput,
    ) -> Option<AlertEvent> {
        let now = input.now_ns;
        let rate = input.syns as f64 / input.dt_s;
        let previous_rate = self.last.rate;
        self.window.push_back(PollCounts {
            end_ns: now,
            syns: input.syns,
            completions: input.completions,
        });
        let window_ns = ns(config.ratio_window);
        while self
            .window
            .front()
            .is_some_and(|poll| poll.end_ns.saturating_add(window_ns) <= now)
        {
            self.window.pop_front();
        }
        // Polls whose SYNs are at least a grace old: a prefix of the window.
        let grace_ns = ns(config.handshake_grace);
        let matured = self
            .window
            .iter()
            .take_while(|poll| poll.end_ns.saturating_add(grace_ns) <= now)
            .count();
        let judged: u64 = self.window.iter().take(matured).map(|p| p.syns).sum();
        let pending: u64 = self.window.iter().skip(matured).map(|p| p.syns).sum();
        // Completions lag their SYNs by up to a round trip. Where it nears
        // the grace, the judged SYNs' completions are those of the newest
        // `matured` polls; where it is far shorter than a poll (a LAN), they
        // land in the judged polls themselves, and the newest polls'
        // completions answer the newest SYNs instead: a surge that falls off
        // would read as failing. Either count is completions that happened,
        // so the larger is the judge; a flood's SYNs fail under both.
        let completed_later: u64 = self
            .window
            .iter()
            .skip(self.window.len() - matured)
            .map(|p| p.completions)
            .sum();
        let completed_alongside: u64 = self
            .window
            .iter()
            .take(matured)
            .map(|p| p.completions)
            .sum();
        let completed = completed_later.max(completed_alongside);
        let ratio = (judged > 0).then(|| (completed as f64 / judged as f64).min(1.0));
        let failed = judged.saturating_sub(completed);

        let floor = config.syn_rate_floor;
        let syn_rate = rate > floor
            && rate > config.baseline_multiple * self.baseline
            && ratio.is_some_and(|ratio| ratio < config.completion_threshold)
            && failed as f64 >= floor * config.handshake_grace.as_secs_f64();
        let half_open = input.half_open.saturating_sub(pending) > config.half_open_threshold;
        let triggers = Triggers {
            syn_rate,
            half_open,
        };
        let flooding = syn_rate || half_open;
        self.last = Measure {
            rate,
            ratio,
            half_open: input.half_open,
            triggers,
        };

        let Some(alert) = self.alert.as_mut() else {
            if !flooding {
                // Learn only from polls that are not part of an alert.
                let alpha = 1.0 - (-input.dt_s / config.baseline_half_life.as_secs_f64()).exp2();
                self.baseline += alpha * (rate - self.baseline);
                self.prev_registers = input.registers;
                self.prev_sources = input.sources;
                return None;
            }
            let mut registers = self.prev_registers.take();
            merge_registers(&mut registers, input.registers.as_ref());
            let mut sources = self
                .prev_sources
                .take()
                .unwrap_or_else(|| SpaceSaving::new(SOURCE_CAPACITY));
            if let Some(now_sources) = &input.sources {
                sources.merge(now_sources);
            }
            self.alert = Some(Alert {
                started_ns: now,
                last_flooding_ns: now,
                last_emit_ns: now,
                peak: rate.max(previous_rate),
                baseline: self.baseline,
                registers,
                sources,
            });
            return Some(self.event(config, Phase::Start, target, now));
        };

        merge_registers(&mut alert.registers, input.registers.as_ref());
        if let Some(now_sources) = &input.sources {
            alert.sources.merge(now_sources);
        }
        alert.peak = alert.peak.max(rate);
        if flooding {
            alert.last_flooding_ns = now;
        }
        if now.saturating_sub(alert.last_flooding_ns) >= ns(config.quiet_time) {
            let event = self.event(config, Phase::End, target, now);
            self.alert = None;
            return Some(event);
        }
        if now.saturating_sub(alert.last_emit_ns) >= ns(config.update_period) {
            alert.last_emit_ns = now;
            return Some(self.event(config, Phase::Update, target, now));
        }
        None
    }

    fn event(
        &self,
        config: &DetectConfig,
        phase: Phase,
        target: AlertTarget,
        now: u64,
    ) -> AlertEvent {
        let alert = self.alert.as_ref().expect("an event belongs to an alert");
        let total = alert.sources.total().max(1) as f64;
        let scale = WEIGHT_SCALE as f64;
        let per_sample = total / alert.sources.samples().max(1) as f64;
        AlertEvent {
            phase,
            target,
            syn_rate: self.last.rate,
            peak_syn_rate: alert.peak,
            baseline_syn_rate: alert.baseline,
            completion_ratio: self.last.ratio,
            half_open: self.last.half_open,
            top_sources: alert
                .sources
                .top(config.top_sources)
                .into_iter()
                .map(|(addr, count, error)| TopSource {
                    addr,
                    syns: (count - error) as f64 / scale,
                    error: error as f64 / scale,
                    share: (count - error) as f64 / total,
                })
                .filter(|source| {
                    source.share >= MIN_TOP_SHARE
                        && source.syns * scale >= MIN_TOP_SAMPLES * per_sample
                })
                .collect(),
            distinct_sources: alert.registers.as_ref().map(|r| hll_estimate(r)),
            triggers: self.last.triggers,
            started_ns: alert.started_ns,
            now_ns: now,
        }
    }
}

/// A tracked destination: its kernel counters as last read, and its scope.
#[derive(Debug)]
struct TargetState {
    syns: u64,
    completions: u64,
    half_open: u64,
    last_active_ns: u64,
    scope: Scope,
    // This poll's input, filled while reading the tick.
    poll_syns: u64,
    poll_completions: u64,
    poll_registers: Option<Registers>,
    poll_sources: Option<SpaceSaving>,
}

impl TargetState {
    fn new(baseline: f64, now: u64) -> TargetState {
        TargetState {
            syns: 0,
            completions: 0,
            half_open: 0,
            last_active_ns: now,
            scope: Scope::with_baseline(baseline),
            poll_syns: 0,
            poll_completions: 0,
            poll_registers: None,
            poll_sources: None,
        }
    }
}

/// What is left of a dropped destination.
#[derive(Clone, Copy, Debug)]
struct Tombstone {
    syns: u64,
    completions: u64,
    half_open: u64,
    baseline: f64,
    at_ns: u64,
}

/// SYN-flood detector: feed it every poll with [`Detector::observe`].
#[derive(Debug)]
pub struct Detector {
    config: DetectConfig,
    last_now: Option<u64>,
    targets: HashMap<TargetKey, TargetState>,
    tombstones: HashMap<TargetKey, Tombstone>,
    /// Tombstones oldest first, as (key, time buried): an entry whose time
    /// differs from the tombstone's is stale.
    tombstone_order: VecDeque<(TargetKey, u64)>,
    all: Scope,
    /// Sum of the half-open gauges of every destination known (tracked or
    /// tombstoned).
    all_half_open: u64,
    stats: DetectStats,
}

impl Detector {
    /// A detector with `config`, once it is valid.
    pub fn new(config: DetectConfig) -> Result<Detector, ConfigError> {
        config.validate()?;
        Ok(Detector {
            config,
            last_now: None,
            targets: HashMap::new(),
            tombstones: HashMap::new(),
            tombstone_order: VecDeque::new(),
            all: Scope::default(),
            all_half_open: 0,
            stats: DetectStats::default(),
        })
    }

    pub fn stats(&self) -> &DetectStats {
        &self.stats
    }

    /// Destinations tracked now (at most `--max-targets` after each poll).
    pub fn tracked_targets(&self) -> usize {
        self.targets.len()
    }

    /// The learned SYN-rate baseline of a scope, if it is tracked.
    #[cfg(test)]
    pub fn baseline(&self, target: &AlertTarget) -> Option<f64> {
        match target {
            AlertTarget::All => Some(self.all.baseline),
            AlertTarget::Dest(key) => self.targets.get(key).map(|state| state.scope.baseline),
        }
    }

    /// Scopes with an alert in progress.
    #[cfg(test)]
    pub fn active_alerts(&self) -> Vec<AlertTarget> {
        let mut active: Vec<AlertTarget> = self
            .targets
            .iter()
            .filter(|(_, state)| state.scope.alert.is_some())
            .map(|(key, _)| AlertTarget::Dest(*key))
            .collect();
        active.sort();
        if self.all.alert.is_some() {
            active.push(AlertTarget::All);
        }
        active
    }

    /// Takes one poll; returns the alert events it causes: per-destination
    /// events in destination order, then the `*` event.
    pub fn observe(&mut self, tick: &Tick) -> Vec<AlertEvent> {
        let now = tick.now_ns;
        let Some(last_now) = self.last_now else {
            // The first poll: counters since the kernel started, no rate yet.
            self.last_now = Some(now);
            self.stats.ticks += 1;
            for observation in &tick.targets {
                let state = self
                    .targets
                    .entry(observation.target)
                    .or_insert_with(|| TargetState::new(0.0, now));
                state.syns = observation.syns;
                state.completions = observation.completions;
                self.all_half_open =
                    self.all_half_open.saturating_sub(state.half_open) + observation.half_open;
                state.half_open = observation.half_open;
            }
            self.evict(now);
            return Vec::new();
        };
        if now <= last_now {
            self.stats.ticks_out_of_order += 1;
            return Vec::new();
        }
        self.stats.ticks += 1;
        self.last_now = Some(now);
        let dt_s = (now - last_now) as f64 / 1e9;

        // Counters: this poll's SYNs and completions per destination.
        let mut all_syns = 0u64;
        let mut all_completions = 0u64;
        let mut all_registers: Option<Registers> = None;
        for observation in &tick.targets {
            let registers = match observation.source_registers.len() {
                0 => None,
                HLL_REGISTERS => {
                    let mut registers = [0u8; HLL_REGISTERS];
                    registers.copy_from_slice(&observation.source_registers);
                    Some(registers)
                }
                _ => {
                    self.stats.bad_registers += 1;
                    None
                }
            };
            let state = self.state_for(observation.target, now);
            let reset =
                observation.syns < state.syns || observation.completions < state.completions;
            let (syns, completions) = if reset {
                (observation.syns, observation.completions)
            } else {
                (
                    observation.syns - state.syns,
                    observation.completions - state.completions,
                )
            };
            state.syns = observation.syns;
            state.completions = observation.completions;
            let old_half_open = state.half_open;
            state.half_open = observation.half_open;
            state.poll_syns += syns;
            state.poll_completions += completions;
            if syns > 0 || completions > 0 || observation.half_open > 0 {
                state.last_active_ns = now;
            }
            merge_registers(&mut state.poll_registers, registers.as_ref());
            if reset {
                self.stats.counter_resets += 1;
            }
            merge_registers(&mut all_registers, registers.as_ref());
            self.all_half_open =
                self.all_half_open.saturating_sub(old_half_open) + observation.half_open;
            all_syns += syns;
            all_completions += completions;
        }

        // Samples: each stands for its destination's SYNs over its samples.
        let mut samples: HashMap<TargetKey, Vec<IpAddr>> = HashMap::new();
        for (target, source) in &tick.sources {
            samples
                .entry(*target)
                .or_default()
                .push(source.to_canonical());
        }
        let mut all_sources: Option<SpaceSaving> = None;
        for (target, sources) in samples {
            let syns = self.targets.get(&target).map_or(0, |state| state.poll_syns);
            let weight = if syns > 0 {
                (syns * WEIGHT_SCALE / sources.len() as u64).max(1)
            } else {
                WEIGHT_SCALE
            };
            let mut sketch = SpaceSaving::new(SOURCE_CAPACITY);
            let all = all_sources.get_or_insert_with(|| SpaceSaving::new(SOURCE_CAPACITY));
            for source in sources {
                sketch.insert(source, weight);
                all.insert(source, weight);
            }
            if let Some(state) = self.targets.get_mut(&target) {
                state.poll_sources = Some(sketch);
            }
        }

        self.evict(now);

        let config = &self.config;
        let mut events = Vec::new();
        for (key, state) in self.targets.iter_mut() {
            let input = ScopeInput {
                now_ns: now,
                dt_s,
                syns: std::mem::take(&mut state.poll_syns),
                completions: std::mem::take(&mut state.poll_completions),
                half_open: state.half_open,
                registers: state.poll_registers.take(),
                sources: state.poll_sources.take(),
            };
            if let Some(event) = state.scope.step(config, AlertTarget::Dest(*key), input) {
                events.push(event);
            }
        }
        events.sort_by_key(|event| event.target);
        let input = ScopeInput {
            now_ns: now,
            dt_s,
            syns: all_syns,
            completions: all_completions,
            half_open: self.all_half_open,
            registers: all_registers,
            sources: all_sources,
        };
        if let Some(event) = self.all.step(config, AlertTarget::All, input) {
            events.push(event);
        }
        events
    }

    /// Ends every alert in progress (teardown is stopping): one `end` event
    /// each, with the last poll's figures.
    pub fn finish(&mut self, now_ns: u64) -> Vec<AlertEvent> {
        let config = &self.config;
        let mut events = Vec::new();
        let scopes = self
            .targets
            .iter_mut()
            .map(|(key, state)| (AlertTarget::Dest(*key), &mut state.scope))
            .chain(std::iter::once((AlertTarget::All, &mut self.all)));
        for (target, scope) in scopes {
            if scope.alert.is_some() {
                let mut event = scope.event(config, Phase::End, target, now_ns);
                event.triggers = Triggers::default();
                events.push(event);
                scope.alert = None;
            }
        }
        events.sort_by_key(|event| event.target);
        events
    }

    /// The state of `key`, created (from its tombstone if it has one) when
    /// it is not tracked.
    fn state_for(&mut self, key: TargetKey, now: u64) -> &mut TargetState {
        if !self.targets.contains_key(&key) {
            let state = match self.tombstones.remove(&key) {
                Some(tombstone) => {
                    // The baseline decays over the idle time, as it would have.
                    let idle_s = now.saturating_sub(tombstone.at_ns) as f64 / 1e9;
                    let decay = (-idle_s / self.config.baseline_half_life.as_secs_f64()).exp2();
                    let mut state = TargetState::new(tombstone.baseline * decay, now);
                    state.syns = tombstone.syns;
                    state.completions = tombstone.completions;
                    state.half_open = tombstone.half_open;
                    state
                }
                // New since the last poll: all its counts are this poll's.
                None => TargetState::new(0.0, now),
            };
            self.targets.insert(key, state);
        }
        self.targets.get_mut(&key).expect("inserted above")
    }

    /// Drops idle destinations, then the least recently active ones while
    /// over the limit; never one that is alerting.
    fn evict(&mut self, now: u64) {
        let idle: Vec<TargetKey> = self
            .targets
            .iter()
            .filter(|(_, state)| {
                state.scope.alert.is_none()
                    && state.last_active_ns.saturating_add(TARGET_IDLE_NS) <= now
            })
            .map(|(key, _)| *key)
            .collect();
        let mut victims: HashSet<TargetKey> = idle.into_iter().collect();
        let excess = self
            .targets
            .len()
            .saturating_sub(victims.len())
            .saturating_sub(self.config.max_targets);
        if excess > 0 {
            let mut candidates: Vec<(u64, TargetKey)> = self
                .targets
                .iter()
                .filter(|(key, state)| state.scope.alert.is_none() && !victims.contains(*key))
                .map(|(key, state)| (state.last_active_ns, *key))
                .collect();
            candidates.sort_unstable();
            victims.extend(candidates.into_iter().take(excess).map(|(_, key)| key));
        }
        for key in victims {
            if let Some(state) = self.targets.remove(&key) {
                self.stats.targets_evicted += 1;
                self.bury(key, &state, now);
            }
        }
    }

    fn bury(&mut self, key: TargetKey, state: &TargetState, now: u64) {
        self.tombstones.insert(
            key,
            Tombstone {
                syns: state.syns,
                completions: state.completions,
                half_open: state.half_open,
                baseline: state.scope.baseline,
                at_ns: now,
            },
        );
        self.tombstone_order.push_back((key, now));
        let limit = self
            .config
            .max_targets
            .saturating_mul(TOMBSTONES_PER_TARGET);
        while self.tombstones.len() > limit {
            let Some((key, at)) = self.tombstone_order.pop_front() else {
                break;
            };
            if self.tombstones.get(&key).is_some_and(|t| t.at_ns == at) {
                let tombstone = self.tombstones.remove(&key).expect("checked above");
                // Forgotten: its half-open flows are no longer ours to count.
                self.all_half_open = self.all_half_open.saturating_sub(tombstone.half_open);
                self.stats.tombstones_dropped += 1;
            }
        }
        if self.tombstone_order.len() > 2 * limit.max(1) {
            let tombstones = &self.tombstones;
            self.tombstone_order
                .retain(|(key, at)| tombstones.get(key).is_some_and(|t| t.at_ns == *at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use teardown_common::sketch::hll_add;

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    const MS: u64 = 1_000_000;
    const POLL_MS: u64 = 100;

    fn dest(text: &str) -> TargetKey {
        text.parse().expect("test destinations parse")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test addresses parse")
    }

    fn ms(event: &AlertEvent) -> u64 {
        event.now_ns / MS
    }

    // --- A simulated kernel: SYNs per millisecond, handshakes completing
    // after a round trip or timing out half-open, sketches filled per SYN
    // with the kernel's hash, every 8th SYN sampled, a poll every 100 ms.

    enum Sources {
        /// Spoofed: a random IPv4 address per SYN.
        Random(u64),
        /// These senders in turn.
        Few(Vec<IpAddr>),
        /// Clients base, base+1, ..., base+size-1, in turn.
        Pool { base: u32, size: u32 },
    }

    impl Sources {
        fn next(&mut self, n: u64) -> IpAddr {
            match self {
                Sources::Random(state) => IpAddr::from((splitmix(state) as u32).to_be_bytes()),
                Sources::Few(senders) => senders[n as usize % senders.len()],
                Sources::Pool { base, size } => {
                    IpAddr::from((*base + (n as u32 % *size)).to_be_bytes())
                }
            }
        }
    }

    struct Stream {
        target: TargetKey,
        per_second: f64,
        from_ms: u64,
        until_ms: u64,
        /// Handshakes complete this long after the SYN; `None`: never.
        rtt_ms: Option<u64>,
        sources: Sources,
        carry: f64,
        sent: u64,
        /// Distinct sources sent, when asked for.
        truth: Option<HashSet<IpAddr>>,
    }

    fn stream(
        target: TargetKey,
        per_second: f64,
        from_ms: u64,
        until_ms: u64,
        rtt_ms: Option<u64>,
        sources: Sources,
    ) -> Stream {
        Stream {
            target,
            per_second,
            from_ms,
            until_ms,
            rtt_ms,
            sources,
            carry: 0.0,
            sent: 0,
            truth: None,
        }
    }

    #[derive(Default)]
    struct SimTarget {
        syns: u64,
        completions: u64,
        half_open: u64,
        registers: Vec<u8>,
        completing: BTreeMap<u64, u64>,
        expiring: BTreeMap<u64, u64>,
    }

    struct Sim {
        now_ms: u64,
        syn_timeout_ms: u64,
        streams: Vec<Stream>,
        targets: BTreeMap<TargetKey, SimTarget>,
        samples: Vec<(TargetKey, IpAddr)>,
        /// One SYN in this many is sampled.
        sample_every: u64,
        syn_count: u64,
        detector: Detector,
        events: Vec<AlertEvent>,
    }

    /// The simulation starts at 10 s; traffic usually from 10 s on.
    const T0: u64 = 10_000;

    impl Sim {
        fn new(config: DetectConfig) -> Sim {
            let mut detector = Detector::new(config).expect("test configs are valid");
            detector.observe(&Tick {
                now_ns: T0 * MS,
                ..Tick::default()
            });
            Sim {
                now_ms: T0,
                syn_timeout_ms: 5000,
                streams: Vec::new(),
                targets: BTreeMap::new(),
                samples: Vec::new(),
                sample_every: 8,
                syn_count: 0,
                detector,
                events: Vec::new(),
            }
        }

        fn run_until(&mut self, until_ms: u64) {
            while self.now_ms < until_ms {
                self.step();
            }
        }

        fn step(&mut self) {
            self.now_ms += 1;
            let now = self.now_ms;
            for stream in &mut self.streams {
                if !(stream.from_ms..stream.until_ms).contains(&now) {
                    continue;
                }
                stream.carry += stream.per_second / 1000.0;
                let n = stream.carry as u64;
                stream.carry -= n as f64;
                if n == 0 {
                    continue;
                }
                let target = self.targets.entry(stream.target).or_default();
                target.registers.resize(HLL_REGISTERS, 0);
                let registers: &mut Registers =
                    (&mut target.registers[..]).try_into().expect("sized above");
                for _ in 0..n {
                    let source = stream.sources.next(stream.sent);
                    stream.sent += 1;
                    if let Some(truth) = &mut stream.truth {
                        truth.insert(source);
                    }
                    hll_add(registers, source_hash(source));
                    self.syn_count += 1;
                    if self.syn_count.is_multiple_of(self.sample_every) {
                        self.samples.push((stream.target, source));
                    }
                }
                target.syns += n;
                target.half_open += n;
                match stream.rtt_ms {
                    Some(rtt) => *target.completing.entry(now + rtt).or_default() += n,
                    None => {
                        *target
                            .expiring
                            .entry(now + self.syn_timeout_ms)
                            .or_default() += n
                    }
                }
            }
            for target in self.targets.values_mut() {
                while let Some(entry) = target.completing.first_entry() {
                    if *entry.key() > now {
                        break;
                    }
                    let n = entry.remove();
                    target.completions += n;
                    target.half_open -= n;
                }
                while let Some(entry) = target.expiring.first_entry() {
                    if *entry.key() > now {
                        break;
                    }
                    target.half_open -= entry.remove();
                }
            }
            if now.is_multiple_of(POLL_MS) {
                self.poll();
            }
        }

        fn poll(&mut self) {
            let tick = Tick {
                now_ns: self.now_ms * MS,
                targets: self
                    .targets
                    .iter_mut()
                    .map(|(key, target)| TargetObservation {
                        target: *key,
                        syns: target.syns,
                        completions: target.completions,
                        half_open: target.half_open,
                        // The run loop zeroes the kernel's copy after reading.
                        source_registers: std::mem::take(&mut target.registers),
                    })
                    .collect(),
                sources: std::mem::take(&mut self.samples),
            };
            let events = self.detector.observe(&tick);
            self.events.extend(events);
        }

        fn events_for(&self, target: AlertTarget) -> Vec<&AlertEvent> {
            self.events.iter().filter(|e| e.target == target).collect()
        }
    }

    const A: &str = "10.0.0.2:80";
    const B: &str = "[2001:db8::5]:443";

    /// Clients 192.168.0.0 + i.
    fn pool(size: u32) -> Sources {
        Sources::Pool {
            base: 0xc0a8_0000,
            size,
        }
    }

    fn background(sim: &mut Sim, until_ms: u64) {
        let a = dest(A);
        let b = dest(B);
        sim.streams
            .push(stream(a, 300.0, T0, until_ms, Some(10), pool(500)));
        sim.streams
            .push(stream(b, 100.0, T0, until_ms, Some(30), pool(200)));
    }

    fn describe(events: &[AlertEvent]) -> String {
        events
            .iter()
            .map(|e| format!("{} {}", ms(e), e.human_line()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn random_source_flood_alerts_on_the_next_poll_and_is_described() {
        let mut sim = Sim::new(DetectConfig::default());
        let end = T0 + 30_000;
        background(&mut sim, end);
        let a = dest(A);
        let start = T0 + 10_037; // mid-poll
        let stop = start + 5_000;
        let mut flood = stream(a, 50_000.0, start, stop, None, Sources::Random(1));
        flood.truth = Some(HashSet::new());
        sim.streams.push(flood);
        sim.run_until(end);
        let log = describe(&sim.events);

        let events = sim.events_for(AlertTarget::Dest(a));
        let first = events
            .first()
            .unwrap_or_else(|| panic!("no alert for {a}:\n{log}"));
        assert_eq!(first.phase, Phase::Start, "{log}");
        // The poll at start+63 ms counts the first SYNs; the next one, when
        // they are 100 ms old, judges them.
        assert_eq!(ms(first), T0 + 10_200, "{log}");
        assert!(ms(first) - start <= 250, "latency {} ms", ms(first) - start);
        assert!(first.triggers.syn_rate, "{log}");
        assert!(
            (45_000.0..=55_000.0).contains(&first.syn_rate),
            "rate {}",
            first.syn_rate
        );
        let ratio = first.completion_ratio.expect("SYNs were judged");
        assert!(ratio < 0.1, "completion ratio {ratio}");
        assert!(
            first.baseline_syn_rate < 400.0,
            "baseline {}",
            first.baseline_syn_rate
        );
        // The other destination saw nothing unusual.
        assert!(
            sim.events_for(AlertTarget::Dest(dest(B))).is_empty(),
            "{log}"
        );
        // Everything together alerts on the same poll.
        let all = sim.events_for(AlertTarget::All);
        assert_eq!(
            all.first().map(|e| (e.phase, ms(e))),
            Some((Phase::Start, ms(first)))
        );

        // Updates every second while it lasts, then one end.
        let last = events.last().expect("events");
        assert_eq!(last.phase, Phase::End, "{log}");
        let middle = &events[1..events.len() - 1];
        assert!(middle.iter().all(|e| e.phase == Phase::Update), "{log}");
        let mut previous = ms(first);
        for update in middle {
            assert_eq!(ms(update) - previous, 1000, "updates not periodic:\n{log}");
            previous = ms(update);
        }
        // The flood's half-open flows time out 5 s after it stops; the alert
        // holds while they exceed the threshold, then for the quiet time.
        let expected_end = stop + sim.syn_timeout_ms + 3_000;
        assert!(
            ms(last).abs_diff(expected_end) <= 200,
            "ended at {}, expected about {expected_end}\n{log}",
            ms(last)
        );
        assert!(
            last.peak_syn_rate >= 49_000.0,
            "peak {}",
            last.peak_syn_rate
        );

        // Distinct sources within 3 standard errors of the truth.
        let flood = sim.streams.last().expect("flood");
        let truth = flood.truth.as_ref().expect("truth").len() as f64 + 500.0;
        let estimate = last.distinct_sources.expect("sketches were reported");
        let error = (estimate - truth).abs() / truth;
        assert!(
            error <= 3.0 * 1.04 / 8.0,
            "distinct estimate {estimate} vs {truth} ({:.0}% off)",
            error * 100.0
        );
        // Spoofed: no source stands out, so none is named.
        for event in &events {
            assert!(event.top_sources.is_empty(), "{log}");
        }
    }

    #[test]
    fn first_alert_is_within_250_ms_whatever_the_phase() {
        for phase_ms in [1, 13, 50, 87, 99, 100] {
            let mut sim = Sim::new(DetectConfig::default());
            background(&mut sim, T0 + 12_000);
            let start = T0 + 10_000 + phase_ms;
            sim.streams.push(stream(
                dest(A),
                20_000.0,
                start,
                start + 1_000,
                None,
                Sources::Random(phase_ms),
            ));
            sim.run_until(start + 600);
            let first = sim
                .events
                .first()
                .unwrap_or_else(|| panic!("phase {phase_ms}: no alert"));
            let latency = ms(first) - start;
            assert!(
                latency <= 250,
                "phase {phase_ms}: first alert {latency} ms after the first SYN"
            );
        }
    }

    #[test]
    fn sparse_samples_of_a_spoofed_flood_name_no_source() {
        // Sparse sampling, as at the start of a flood: 25 samples a poll,
        // so the start event rests on a few dozen samples, each of which
        // alone is a share of several percent.
        let mut sim = Sim::new(DetectConfig::default());
        sim.sample_every = 200;
        let a = dest(A);
        let start = T0 + 1_000;
        sim.streams.push(stream(
            a,
            50_000.0,
            start,
            start + 3_000,
            None,
            Sources::Random(7),
        ));
        sim.run_until(start + 6_000);
        let log = describe(&sim.events);
        let events = sim.events_for(AlertTarget::Dest(a));
        assert!(!events.is_empty(), "no alert:\n{log}");
        for event in events {
            assert!(
                event.top_sources.is_empty(),
                "spoofed sources listed:\n{log}"
            );
        }

        // One real sender still shows at once.
        let mut sim = Sim::new(DetectConfig::default());
        sim.sample_every = 200;
        let b = dest(B);
        let sender = ip("198.51.100.7");
        sim.streams.push(stream(
            b,
            20_000.0,
            start,
            start + 3_000,
            None,
            Sources::Few(vec![sender]),
        ));
        sim.run_until(start + 1_000);
        let log = describe(&sim.events);
        let first = sim
            .events_for(AlertTarget::Dest(b))
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no alert:\n{log}"));
        assert_eq!(
            first.top_sources.first().map(|source| source.addr),
            Some(sender),
            "{log}"
        );
    }

    #[test]
    fn a_flood_a_few_times_the_legitimate_rate_alerts_within_a_second() {
        // The hard case: 2000 SYN/s of learned legitimate traffic, then
        // 6000 SYN/s more that fail (4x the total, 75 % failing). Its
        // failures must outweigh the window's completions first.
        for phase_ms in [1, 50, 99] {
            let mut sim = Sim::new(DetectConfig::default());
            let a = dest(A);
            let start = T0 + 200_000 + phase_ms;
            sim.streams
                .push(stream(a, 2_000.0, T0, start + 3_000, Some(40), pool(5_000)));
            sim.run_until(start - 1);
            assert!(sim.events.is_empty(), "{}", describe(&sim.events));
            let learned = sim
                .detector
                .baseline(&AlertTarget::Dest(a))
                .expect("tracked");
            assert!(learned > 1_700.0, "baseline {learned}");
            sim.streams.push(stream(
                a,
                6_000.0,
                start,
                start + 3_000,
                None,
                Sources::Random(phase_ms),
            ));
            sim.run_until(start + 1_500);
            let first = sim
                .events_for(AlertTarget::Dest(a))
                .first()
                .map(|event| ms(event))
                .unwrap_or_else(|| panic!("phase {phase_ms}: no alert"));
            let latency = first - start;
            // About 300 ms; a ratio window at most.
            assert!(
                latency <= 500,
                "phase {phase_ms}: first alert after {latency} ms"
            );
        }
    }

    #[test]
    fn a_burst_on_a_new_destination_whose_last_poll_is_quieter_does_not_alert() {
        // As seen live: 4000 connections in 150 ms to a destination never
        // seen before, completing within the poll of their SYN; the second
        // poll has fewer SYNs than the first.
        let mut feed = Feed::new(DetectConfig::default());
        for _ in 0..20 {
            feed.poll(&[]);
        }
        let target = dest("192.0.2.2:9101");
        feed.poll(&[(target, 2731, 2700, 0)]);
        feed.poll(&[(target, 1218, 1183, 0)]);
        for _ in 0..20 {
            feed.poll(&[(target, 0, 66, 0)]);
        }
        assert!(
            feed.events.is_empty(),
            "a completing burst alerted:\n{}",
            describe(&feed.events)
        );
    }

    #[test]
    fn legitimate_surges_never_alert() {
        // 5000 SYN/s completing exactly one poll later, at two phases; and
        // 50 000 SYN/s with 80 ms round trips, whose 4000 handshakes in
        // flight exceed the half-open threshold but are within their grace;
        // and a surge over many destinations at once.
        // (name, SYN/s per destination, round trip ms, phase ms, destinations)
        let cases: [(&str, f64, u64, u64, u16); 5] = [
            ("5k/s rtt 100ms aligned", 5_000.0, 100, 0, 1),
            ("5k/s rtt 100ms mid-poll", 5_000.0, 100, 50, 1),
            ("5k/s rtt 20ms", 5_000.0, 20, 33, 1),
            ("50k/s rtt 80ms", 50_000.0, 80, 10, 1),
            ("20 targets x 2k/s rtt 90ms", 2_000.0, 90, 70, 20),
        ];
        for (name, rate, rtt, phase, targets) in cases {
            let mut sim = Sim::new(DetectConfig::default());
            background(&mut sim, T0 + 20_000);
            for i in 0..targets {
                let target = TargetKey::new(ip("10.0.1.1"), 8000 + i);
                let from = T0 + 5_000 + phase;
                sim.streams.push(stream(
                    target,
                    rate,
                    from,
                    from + 3_000,
                    Some(rtt),
                    pool(20_000),
                ));
            }
            sim.run_until(T0 + 20_000);
            assert!(
                sim.events.is_empty(),
                "{name}: a legitimate surge alerted:\n{}",
                describe(&sim.events)
            );
        }
    }

    #[test]
    fn a_few_real_senders_are_named_and_counted_as_few() {
        let mut sim = Sim::new(DetectConfig::default());
        background(&mut sim, T0 + 20_000);
        let target = dest("10.0.0.9:25");
        let senders = vec![ip("198.51.100.7"), ip("203.0.113.9"), ip("192.0.2.200")];
        sim.streams.push(stream(
            target,
            30_000.0,
            T0 + 5_000,
            T0 + 8_000,
            None,
            Sources::Few(senders.clone()),
        ));
        sim.run_until(T0 + 20_000);
        let events = sim.events_for(AlertTarget::Dest(target));
        let log = describe(&sim.events);
        let start = events.first().unwrap_or_else(|| panic!("no alert:\n{log}"));
        assert_eq!(start.phase, Phase::Start);
        for event in &events {
            let distinct = event.distinct_sources.expect("sketches");
            assert!(
                (2.5..=4.0).contains(&distinct),
                "distinct estimate {distinct} for 3 senders"
            );
            let mut named: Vec<IpAddr> = event.top_sources.iter().map(|s| s.addr).collect();
            named.sort();
            let mut expected = senders.clone();
            expected.sort();
            assert_eq!(named, expected, "{log}");
            for source in &event.top_sources {
                assert!((source.share - 1.0 / 3.0).abs() < 0.05, "{source:?}");
            }
        }
        // Each sender's estimated SYNs over the alert: about 10k/s each.
        let end = events.last().expect("end");
        assert_eq!(end.phase, Phase::End);
        for source in &end.top_sources {
            assert!(
                (8_000.0..=11_000.0).contains(&(source.syns / 3.0)),
                "{source:?} over 3 s"
            );
        }
    }

    #[test]
    fn half_open_flows_alone_alert() {
        // 600 SYN/s, under the rate floor, none answered: half-open flows
        // pile up until they time out after 5 s.
        let mut sim = Sim::new(DetectConfig::default());
        background(&mut sim, T0 + 20_000);
        let target = dest("10.0.0.7:22");
        let start = T0 + 5_000;
        sim.streams.push(stream(
            target,
            600.0,
            start,
            T0 + 12_000,
            None,
            Sources::Random(5),
        ));
        sim.run_until(T0 + 20_000);
        let log = describe(&sim.events);
        let events = sim.events_for(AlertTarget::Dest(target));
        let first = events.first().unwrap_or_else(|| panic!("no alert:\n{log}"));
        assert_eq!(first.phase, Phase::Start);
        assert_eq!(
            first.triggers,
            Triggers {
                syn_rate: false,
                half_open: true
            }
        );
        // 2000 flows past their grace: 2000 / 600 s plus the last poll.
        let after = ms(first) - start;
        assert!(
            (3_300..=3_600).contains(&after),
            "alerted {after} ms in\n{log}"
        );
        assert!(first.half_open > 2_000, "{log}");
        assert!(events.iter().all(|e| !e.triggers.syn_rate), "{log}");
        assert_eq!(events.last().map(|e| e.phase), Some(Phase::End), "{log}");
    }

    #[test]
    fn alert_ends_after_the_quiet_time_with_periodic_updates() {
        // Only the rate rule: half-open flows do not prolong the alert.
        let config = DetectConfig {
            half_open_threshold: u64::MAX,
            ..DetectConfig::default()
        };
        let mut sim = Sim::new(config);
        background(&mut sim, T0 + 20_000);
        let a = dest(A);
        let stop = T0 + 8_000;
        sim.streams.push(stream(
            a,
            10_000.0,
            T0 + 5_000,
            stop,
            None,
            Sources::Random(9),
        ));
        sim.run_until(T0 + 20_000);
        let log = describe(&sim.events);
        let events = sim.events_for(AlertTarget::Dest(a));
        let phases: Vec<Phase> = events.iter().map(|e| e.phase).collect();
        let mut expected = vec![Phase::Start];
        expected.extend([Phase::Update; 5]);
        expected.push(Phase::End);
        assert_eq!(phases, expected, "{log}");
        // The poll at 5 s counts the flood's first millisecond, too few SYNs
        // to judge; the next one's are judged one poll later: 200 ms.
        let start = ms(events[0]);
        assert_eq!(start, T0 + 5_200, "{log}");
        for (i, update) in events[1..6].iter().enumerate() {
            assert_eq!(ms(update), start + 1_000 * (i as u64 + 1), "{log}");
        }
        // The last flooding poll is the one at the stop; 3 s later it ends.
        assert_eq!(ms(events[6]), stop + 3_000, "{log}");
        assert!(events[6].syn_rate < 1_000.0);
        assert!(events[6].triggers == Triggers::default());
    }

    // --- Counter-level feeds: exact counts per poll, no per-SYN simulation.

    struct Feed {
        detector: Detector,
        now_ms: u64,
        counters: BTreeMap<TargetKey, (u64, u64, u64)>,
        events: Vec<AlertEvent>,
    }

    impl Feed {
        fn new(config: DetectConfig) -> Feed {
            let mut detector = Detector::new(config).expect("valid");
            detector.observe(&Tick {
                now_ns: T0 * MS,
                ..Tick::default()
            });
            Feed {
                detector,
                now_ms: T0,
                counters: BTreeMap::new(),
                events: Vec::new(),
            }
        }

        /// One poll: (target, new SYNs, new completions, half-open now).
        fn poll(&mut self, changes: &[(TargetKey, u64, u64, u64)]) -> Vec<AlertEvent> {
            self.now_ms += POLL_MS;
            for (target, syns, completions, half_open) in changes {
                let counter = self.counters.entry(*target).or_default();
                counter.0 += syns;
                counter.1 += completions;
                counter.2 = *half_open;
            }
            let tick = Tick {
                now_ns: self.now_ms * MS,
                targets: self
                    .counters
                    .iter()
                    .map(
                        |(target, (syns, completions, half_open))| TargetObservation {
                            target: *target,
                            syns: *syns,
                            completions: *completions,
                            half_open: *half_open,
                            source_registers: Vec::new(),
                        },
                    )
                    .collect(),
                sources: Vec::new(),
            };
            let events = self.detector.observe(&tick);
            self.events.extend(events.iter().cloned());
            events
        }

        /// `polls` polls of `per_second` legitimate SYNs (completing on the
        /// next poll) plus `failing` SYN/s that never complete.
        fn traffic(&mut self, target: TargetKey, polls: u64, per_second: u64, failing: u64) {
            let legit = per_second / 10;
            let bad = failing / 10;
            for _ in 0..polls {
                self.poll(&[(target, legit + bad, legit, legit)]);
            }
        }
    }

    #[test]
    fn the_baseline_learns_a_steady_legitimate_rate() {
        let config = DetectConfig {
            half_open_threshold: u64::MAX,
            ..DetectConfig::default()
        };
        let a = dest(A);
        let dest_a = AlertTarget::Dest(a);
        let mut feed = Feed::new(config.clone());
        // Five minutes at 20 000 SYN/s, all completing.
        feed.traffic(a, 3_000, 20_000, 0);
        let baseline = feed.detector.baseline(&dest_a).expect("tracked");
        // After five half-lives: within 1/32 of the rate.
        assert!(
            (18_500.0..=20_000.0).contains(&baseline),
            "baseline {baseline}"
        );
        assert!(feed.events.is_empty());

        // 30 000 SYN/s more that never complete: 50 000 SYN/s, 40 %
        // completed, but under 3x the learned baseline.
        feed.traffic(a, 30, 20_000, 30_000);
        assert!(
            feed.events.is_empty(),
            "alerted under 3x baseline:\n{}",
            describe(&feed.events)
        );
        // The same traffic on a detector that has not learned it alerts.
        let mut fresh = Feed::new(config.clone());
        fresh.traffic(a, 100, 20_000, 0);
        fresh.traffic(a, 30, 20_000, 30_000);
        assert!(
            fresh.events.iter().any(|e| e.phase == Phase::Start),
            "no alert without a baseline"
        );

        // 10x the baseline, not completing: alerts on the second poll.
        let learned = feed.detector.baseline(&dest_a).expect("tracked");
        feed.traffic(a, 50, 20_000, 0);
        feed.events.clear();
        feed.traffic(a, 2, 20_000, 180_000);
        let start = feed
            .events
            .first()
            .unwrap_or_else(|| panic!("no alert at 10x"));
        assert_eq!((start.phase, start.target), (Phase::Start, dest_a));
        assert!(start.baseline_syn_rate > 18_000.0, "{start:?}");
        // Thirty seconds of flood do not move the baseline.
        feed.traffic(a, 300, 20_000, 180_000);
        let during = feed.detector.baseline(&dest_a).expect("tracked");
        assert!(
            (during - learned).abs() < learned * 0.05,
            "baseline moved from {learned} to {during} during the alert"
        );
        feed.traffic(a, 40, 20_000, 0);
        assert_eq!(feed.events.last().map(|e| e.phase), Some(Phase::End));
    }

    #[test]
    fn a_one_poll_spike_does_not_alert() {
        let closed = dest("10.0.0.2:23");
        let healthy = dest(A);
        let mut feed = Feed::new(DetectConfig::default());
        for _ in 0..100 {
            // A slow scan of a closed port (nothing ever completes) and a
            // healthy service.
            feed.poll(&[(closed, 10, 0, 0), (healthy, 30, 30, 3)]);
        }
        // One poll of 3000 SYN/s at each, none completing.
        feed.poll(&[(closed, 300, 0, 0), (healthy, 330, 30, 303)]);
        for _ in 0..50 {
            feed.poll(&[(closed, 10, 0, 0), (healthy, 30, 30, 3)]);
        }
        assert!(feed.events.is_empty(), "{}", describe(&feed.events));
    }

    #[test]
    fn a_flood_spread_over_many_ports_alerts_for_all_destinations() {
        let mut feed = Feed::new(DetectConfig::default());
        let ports: Vec<TargetKey> = (0..1000)
            .map(|port| TargetKey::new(ip("10.0.0.2"), 10_000 + port))
            .collect();
        for _ in 0..10 {
            feed.poll(&[(dest(A), 30, 30, 3)]);
        }
        // 20 SYN/s to each of 1000 ports: 20 000 SYN/s, none completing.
        for _ in 0..5 {
            let changes: Vec<_> = ports.iter().map(|port| (*port, 2, 0, 0)).collect();
            feed.poll(&changes);
        }
        let log = describe(&feed.events);
        assert!(!feed.events.is_empty(), "no alert");
        assert!(
            feed.events.iter().all(|e| e.target == AlertTarget::All),
            "{log}"
        );
        assert_eq!(feed.events[0].phase, Phase::Start);
    }

    #[test]
    fn tracked_destinations_are_bounded_and_resume_their_counts() {
        let config = DetectConfig {
            max_targets: 8,
            ..DetectConfig::default()
        };
        let mut feed = Feed::new(config);
        let targets: Vec<TargetKey> = (0..20)
            .map(|i| TargetKey::new(ip("10.0.2.1"), 1000 + i))
            .collect();
        // Each has a long history of failed SYNs: a restart of its count
        // from zero would look like a flood.
        let history: Vec<_> = targets.iter().map(|t| (*t, 1_000_000, 0, 0)).collect();
        feed.poll(&history);
        for round in 0..200 {
            // A few at a time, so some come back after being dropped.
            let changes: Vec<_> = targets
                .iter()
                .enumerate()
                .filter(|(i, _)| (i + round) % 3 == 0)
                .map(|(_, t)| (*t, 1, 0, 0))
                .collect();
            feed.poll(&changes);
            assert!(feed.detector.tracked_targets() <= 8);
        }
        let stats = feed.detector.stats().clone();
        assert!(stats.targets_evicted > 0, "{stats:?}");
        assert_eq!(stats.tombstones_dropped, 0, "{stats:?}");
        assert!(feed.events.is_empty(), "{}", describe(&feed.events));
    }

    #[test]
    fn a_recreated_kernel_entry_counts_from_zero() {
        let mut detector = Detector::new(DetectConfig::default()).expect("valid");
        let a = dest(A);
        let observe = |detector: &mut Detector, at_ms: u64, syns, completions| {
            detector.observe(&Tick {
                now_ns: at_ms * MS,
                targets: vec![TargetObservation {
                    target: a,
                    syns,
                    completions,
                    half_open: 0,
                    source_registers: Vec::new(),
                }],
                sources: Vec::new(),
            })
        };
        observe(&mut detector, 1_000, 5_000_000, 4_000_000);
        observe(&mut detector, 1_100, 5_000_010, 4_000_010);
        // Recreated: 20 SYNs and 20 completions since.
        let events = observe(&mut detector, 1_200, 20, 20);
        assert!(events.is_empty());
        assert_eq!(detector.stats().counter_resets, 1);
        // Out of order: ignored.
        assert!(observe(&mut detector, 1_150, 0, 0).is_empty());
        assert_eq!(detector.stats().ticks_out_of_order, 1);
        assert!(observe(&mut detector, 1_300, 30, 30).is_empty());
        assert!(detector.active_alerts().is_empty());
    }

    #[test]
    fn finish_ends_every_alert() {
        let mut feed = Feed::new(DetectConfig::default());
        let a = dest(A);
        feed.traffic(a, 5, 0, 50_000);
        assert_eq!(
            feed.detector.active_alerts(),
            vec![AlertTarget::Dest(a), AlertTarget::All]
        );
        let ended = feed.detector.finish(feed.now_ms * MS);
        let phases: Vec<_> = ended.iter().map(|e| (e.phase, e.target)).collect();
        assert_eq!(
            phases,
            vec![
                (Phase::End, AlertTarget::Dest(a)),
                (Phase::End, AlertTarget::All)
            ]
        );
        assert!(feed.detector.active_alerts().is_empty());
    }

    // --- Events.

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

    #[test]
    fn targets_display_as_socket_addresses() {
        assert_eq!(dest("10.0.0.1:80").to_string(), "10.0.0.1:80");
        assert_eq!(dest("[2001:db8::1]:80").to_string(), "[2001:db8::1]:80");
        // IPv4-mapped becomes IPv4, from text or from the kernel's bytes.
        assert_eq!(dest("[::ffff:10.0.0.1]:80").to_string(), "10.0.0.1:80");
        let mapped = teardown_common::flow::v4_mapped([192, 0, 2, 1]);
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

//! Printing: compact human tables and one JSON object per line.

use std::io::Write as _;

use serde_json::Value;
use teardown_common::counters::{Counter, Counters};

/// Prints one JSON object on its own line and flushes, so a reader on a pipe
/// sees each record as soon as it is made.
pub fn print_json(value: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (e.g. `| head`) is not an error worth a panic.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// A count in at most six characters: 999, 12.3k, 4.56M.
pub fn short_count(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude < 1_000.0 {
        // A decimal says something below 10/s (0.5 vs 1); above, it is noise.
        if magnitude >= 10.0 || value.fract() == 0.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.1}")
        }
    } else if magnitude < 1_000_000.0 {
        format!("{:.1}k", value / 1_000.0)
    } else if magnitude < 1_000_000_000.0 {
        format!("{:.2}M", value / 1_000_000.0)
    } else {
        format!("{:.2}G", value / 1_000_000_000.0)
    }
}

/// Every counter with its total, one per line, aligned.
pub fn totals_table(counters: &Counters) -> String {
    let width = Counter::ALL
        .iter()
        .map(|c| c.key().len())
        .max()
        .unwrap_or(0);
    let mut table = String::new();
    for counter in Counter::ALL {
        table.push_str(&format!(
            "  {:<width$}  {:>14}\n",
            counter.key(),
            counters.get(*counter)
        ));
    }
    table
}

/// Every counter with its totals for what arrived (`in`) and what the host
/// sent (`out`), one per line, aligned under a header.
pub fn totals_table_both(received: &Counters, sent: &Counters) -> String {
    let width = Counter::ALL
        .iter()
        .map(|c| c.key().len())
        .max()
        .unwrap_or(0);
    let mut table = format!("  {:<width$}  {:>14}  {:>14}\n", "", "in", "out");
    for counter in Counter::ALL {
        table.push_str(&format!(
            "  {:<width$}  {:>14}  {:>14}\n",
            counter.key(),
            received.get(*counter),
            sent.get(*counter)
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_counts_fit_six_characters() {
        assert_eq!(short_count(0.0), "0");
        assert_eq!(short_count(999.0), "999");
        assert_eq!(short_count(2.5), "2.5");
        assert_eq!(short_count(17.96), "18");
        assert_eq!(short_count(12_345.0), "12.3k");
        assert_eq!(short_count(4_560_000.0), "4.56M");
        assert_eq!(short_count(7.1e9), "7.10G");
    }

    #[test]
    fn totals_table_lists_every_counter() {
        let mut counters = Counters::default();
        counters.values[Counter::Syn as usize] = 42;
        let table = totals_table(&counters);
        assert_eq!(table.lines().count(), Counter::ALL.len());
        assert!(
            table
                .lines()
                .any(|line| line.split_whitespace().eq(["syn", "42"])),
            "{table}"
        );
    }

    #[test]
    fn both_ways_table_has_a_column_each() {
        let (mut received, mut sent) = (Counters::default(), Counters::default());
        received.values[Counter::Syn as usize] = 42;
        sent.values[Counter::SynAck as usize] = 41;
        let table = totals_table_both(&received, &sent);
        assert_eq!(table.lines().count(), Counter::ALL.len() + 1);
        assert!(
            table
                .lines()
                .next()
                .unwrap()
                .split_whitespace()
                .eq(["in", "out"])
        );
        assert!(
            table
                .lines()
                .any(|line| line.split_whitespace().eq(["syn", "42", "0"])),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|line| line.split_whitespace().eq(["syn_ack", "0", "41"])),
            "{table}"
        );
    }
}

//! `teardown run`: attach to an interface and report live figures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::{Map, Value, json};
use teardown_common::counters::{Counter, Counters};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    kernel::{AttachMode, Kernel},
    output::{self, short_count},
};

pub struct RunOptions {
    pub iface: String,
    pub mode: AttachMode,
    pub interval: Duration,
    pub json: bool,
}

/// The counters shown in each human row, as per-second rates.
const ROW_COUNTERS: &[(Counter, &str)] = &[
    (Counter::Packets, "pkts/s"),
    (Counter::Tcp, "tcp/s"),
    (Counter::Syn, "syn/s"),
    (Counter::SynAck, "synack/s"),
    (Counter::Fin, "fin/s"),
    (Counter::Rst, "rst/s"),
    (Counter::Malformed, "bad/s"),
    (Counter::NonIp, "nonip/s"),
];

/// Rows between repeated headers in the human output.
const HEADER_EVERY: usize = 20;

fn header() -> String {
    let mut line = format!("{:<8}", "time");
    for (_, label) in ROW_COUNTERS {
        line.push_str(&format!(" {label:>8}"));
    }
    line.push_str(&format!(" {:>10}", "total tcp"));
    line
}

fn clock_time() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // UTC: the monitor's logs are compared across hosts.
    format!(
        "{:02}:{:02}:{:02}",
        now / 3600 % 24,
        now / 60 % 60,
        now % 60
    )
}

fn row(delta: &Counters, seconds: f64, total: &Counters) -> String {
    let mut line = format!("{:<8}", clock_time());
    for (counter, _) in ROW_COUNTERS {
        line.push_str(&format!(
            " {:>8}",
            short_count(delta.get(*counter) as f64 / seconds)
        ));
    }
    line.push_str(&format!(" {:>10}", total.get(Counter::Tcp)));
    line
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn stats_json(iface: &str, delta: &Counters, seconds: f64, total: &Counters) -> Value {
    let mut totals = Map::new();
    let mut rates = Map::new();
    for counter in Counter::ALL {
        totals.insert(counter.key().into(), json!(total.get(*counter)));
        let rate = delta.get(*counter) as f64 / seconds;
        rates.insert(
            counter.key().into(),
            json!((rate * 1000.0).round() / 1000.0),
        );
    }
    json!({
        "event": "stats",
        "ts": unix_seconds(),
        "iface": iface,
        "interval": seconds,
        "totals": totals,
        "rates": rates,
    })
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let mut kernel = Kernel::load()?;
    let mode = kernel.attach(&options.iface, options.mode)?;
    eprintln!(
        "teardown: watching {} ({mode} XDP), every {:?}; Ctrl-C to stop",
        options.iface, options.interval
    );
    let start = kernel.tallies()?;
    let mut previous = start;
    let mut previous_at = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut rows = 0usize;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        let now = kernel.tallies()?;
        let now_at = tokio::time::Instant::now();
        let seconds = (now_at - previous_at).as_secs_f64().max(1e-9);
        let delta = now.since(&previous).totals();
        let total = now.since(&start).totals();
        if options.json {
            output::print_json(&stats_json(&options.iface, &delta, seconds, &total));
        } else {
            if rows.is_multiple_of(HEADER_EVERY) {
                println!("{}", header());
            }
            println!("{}", row(&delta, seconds, &total));
            rows += 1;
        }
        previous = now;
        previous_at = now_at;
    }
    let total = kernel.tallies()?.since(&start).totals();
    // Dropping the kernel handle detaches the program before the summary.
    drop(kernel);
    eprintln!("teardown: detached from {}", options.iface);
    if options.json {
        let mut totals = Map::new();
        for counter in Counter::ALL {
            totals.insert(counter.key().into(), json!(total.get(*counter)));
        }
        output::print_json(&json!({
            "event": "final",
            "ts": unix_seconds(),
            "iface": options.iface,
            "totals": totals,
        }));
    } else {
        println!("final totals on {}:", options.iface);
        print!("{}", output::totals_table(&total));
    }
    Ok(())
}

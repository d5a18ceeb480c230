//! `teardown run`: attach to an interface and report live figures.

use std::{
    fmt::Display,
    fs::File,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde_json::{Map, Value, json};
use teardown_common::{
    conn::Timeouts,
    counters::{Counter, Counters},
    events::FlowStats,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    dashboard::{self, CounterFigure, FlowFigures, Live},
    flood::{AlertEvent, AlertWatch, DetectConfig},
    kernel::{AttachMode, ClockMode, Kernel, LoadOptions},
    metrics::MetricsServer,
    output::{self, LineOutput, Sink, push_line, say, short_count},
    tracker::{Clock, Ended, PortCounts, Tracker, monotonic_now_ns},
};

/// Which way packets are watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// XDP on ingress and TC on egress: the host's own SYN-ACKs, FINs and
    /// RSTs are seen too.
    Both,
    /// XDP only: for a mirror port that carries both directions.
    Ingress,
}

pub struct RunOptions {
    pub iface: String,
    pub mode: AttachMode,
    pub interval: Duration,
    pub json: bool,
    /// Scrolling lines even when stdout is a terminal (no dashboard).
    pub plain: bool,
    pub direction: Direction,
    pub timeouts: Timeouts,
    pub max_flows: u32,
    pub clock: ClockMode,
    /// Also append every connection record, as JSON, to this file.
    pub log: Option<PathBuf>,
    /// Serve Prometheus metrics here (`None`: `--metrics-addr off`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// SYN-flood detection thresholds.
    pub detect: DetectConfig,
}

/// How often ended connections are collected, whatever the report interval.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// How long past a deadline the kernel leaves a record for user space.
const GRACE: Duration = Duration::from_secs(2);

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

/// One row of rates: `label` is the time for what arrived, `sent` for
/// what the host sent (printed below it, in the same columns).
fn row(label: &str, delta: &Counters, seconds: f64, total: &Counters) -> String {
    let mut line = format!("{label:<8}");
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

/// Every counter: its total, and its rate over the interval.
fn totals_and_rates(delta: &Counters, seconds: f64, total: &Counters) -> (Value, Value) {
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
    (Value::Object(totals), Value::Object(rates))
}

/// Every counter's total, by key.
fn totals_json(total: &Counters) -> Value {
    Value::Object(
        Counter::ALL
            .iter()
            .map(|counter| (counter.key().to_string(), json!(total.get(*counter))))
            .collect(),
    )
}

/// What one interval counted: `totals` and `rates` of what arrived, and,
/// when egress is watched, an `egress` object with the same two for what
/// the host sent.
fn stats_json(iface: &str, seconds: f64, received: Figures, sent: Option<Figures>) -> Value {
    let (totals, rates) = totals_and_rates(received.delta, seconds, received.total);
    let mut object = json!({
        "event": "stats",
        "ts": unix_seconds(),
        "iface": iface,
        "interval": seconds,
        "totals": totals,
        "rates": rates,
    });
    if let Some(sent) = sent {
        let (totals, rates) = totals_and_rates(sent.delta, seconds, sent.total);
        object["egress"] = json!({ "totals": totals, "rates": rates });
    }
    object
}

/// One direction's counters for a report: the interval's, and since start.
#[derive(Clone, Copy)]
struct Figures<'a> {
    delta: &'a Counters,
    total: &'a Counters,
}

fn flow_json(stats: &FlowStats, tracker: &Tracker) -> Value {
    let half_open = tracker.half_open(stats);
    json!({
        "tracked": tracker.live(),
        "created": stats.created,
        "half_open": half_open,
        "insert_failed": stats.insert_failed,
        "evicted": stats.evicted,
        "events_lost": stats.events_lost,
        "syn_untracked": stats.syn_untracked,
        "lock_contended": stats.lock_contended,
        "dest_collisions": stats.dest_collisions,
        "truncated_segments": stats.truncated_segments,
        "ended_by_conn_state": tracker.stats.by_conn_state,
        "ended_by_close": tracker.stats.by_close,
        "half_open_timeouts_by_port": half_open_ports_json(&tracker.stats.half_open_by_port),
        "half_open_timeout_ports_folded": tracker.stats.half_open_by_port.folded(),
    })
}

/// The listed ports' half-open timeouts (at most
/// [`crate::tracker::HALF_OPEN_PORTS_LISTED`]) and `other`, the rest: the values add up to
/// every half-open timeout since the start, however many ports timed out.
fn half_open_ports_json(ports: &PortCounts) -> Value {
    let (listed, other) = ports.listed();
    let mut object: Map<String, Value> = listed
        .iter()
        .map(|(port, count)| (port.to_string(), json!(count)))
        .collect();
    object.insert("other".into(), json!(other));
    Value::Object(object)
}

/// `port:count` of the `n` ports with most half-open timeouts, and
/// `other:count` for the rest when there is any.
fn half_open_ports_line(ports: &PortCounts, n: usize) -> Vec<String> {
    let (top, rest) = ports.top(n);
    let mut words: Vec<String> = top
        .iter()
        .map(|(port, count)| format!("{port}:{count}"))
        .collect();
    if rest > 0 {
        words.push(format!("other:{rest}"));
    }
    words
}

fn flow_line(stats: &FlowStats, tracker: &Tracker) -> String {
    let half_open = tracker.half_open(stats);
    let ports = half_open_ports_line(&tracker.stats.half_open_by_port, 3);
    format!(
        "flows: {} tracked, {half_open} half-open, {} ended; lost events {}, failed inserts {}, evicted {}, SYNs untracked {}, lock contended {}{}{}",
        tracker.live(),
        tracker.stats.by_close.values().sum::<u64>(),
        stats.events_lost,
        stats.insert_failed,
        stats.evicted,
        stats.syn_untracked,
        stats.lock_contended,
        if stats.dest_collisions > 0 {
            format!(
                ", SYNs not counted per destination {}",
                stats.dest_collisions
            )
        } else {
            String::new()
        },
        if ports.is_empty() {
            String::new()
        } else {
            format!("; half-open timeouts by port {}", ports.join(" "))
        }
    )
}

/// Lines each output could not write, by its key (`stdout`, `log`).
type LinesLost = Vec<(&'static str, u64)>;

/// The `flows:` line, and what the outputs lost: the plain output's
/// figures of everything dropped, in one line.
fn flows_and_lines_lost(stats: &FlowStats, tracker: &Tracker, lost: &LinesLost) -> String {
    let lost: Vec<String> = lost
        .iter()
        .map(|(key, count)| format!("{key} {count}"))
        .collect();
    format!(
        "{}; lines lost {}",
        flow_line(stats, tracker),
        lost.join(", ")
    )
}

/// The flow table's figures as the dashboard shows them, with the lines
/// `--log` lost (stdout's are not the dashboard's business: it draws frames).
fn flow_figures(stats: &FlowStats, tracker: &Tracker, lost: &LinesLost) -> FlowFigures {
    let most_first = |map: &std::collections::BTreeMap<&'static str, u64>| {
        let mut list: Vec<(String, u64)> = map
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(name, count)| (name.to_string(), *count))
            .collect();
        list.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        list
    };
    let (ports, other_ports) = tracker.stats.half_open_by_port.top(5);
    FlowFigures {
        tracked: tracker.live() as u64,
        half_open: tracker.half_open(stats),
        ended: tracker.stats.by_close.values().sum(),
        ended_by_close: most_first(&tracker.stats.by_close),
        ended_by_conn_state: most_first(&tracker.stats.by_conn_state),
        events_lost: stats.events_lost,
        insert_failed: stats.insert_failed,
        evicted: stats.evicted,
        log_lines_lost: lost
            .iter()
            .find(|(key, _)| *key == "log")
            .map(|(_, count)| *count),
        syn_untracked: stats.syn_untracked,
        lock_contended: stats.lock_contended,
        half_open_timeouts_by_port: ports,
        half_open_timeouts_other: other_ports,
    }
}

/// The row counters of one direction as the dashboard shows them.
fn counter_figures(figures: Figures, seconds: f64) -> Vec<CounterFigure> {
    ROW_COUNTERS
        .iter()
        .map(|(counter, label)| CounterFigure {
            label: label.trim_end_matches("/s"),
            per_second: figures.delta.get(*counter) as f64 / seconds,
            total: figures.total.get(*counter),
        })
        .collect()
}

/// Where the human output goes: scrolling lines (a pipe, or `--plain`), or
/// the live dashboard when stdout is a terminal. `--json` never comes here.
enum Screen {
    Plain { rows: usize },
    Dashboard(Box<Live>),
}

impl Screen {
    fn new(options: &RunOptions, attachment: String) -> anyhow::Result<Screen> {
        if options.json || options.plain || !dashboard::stdout_can_show_dashboard() {
            return Ok(Screen::Plain { rows: 0 });
        }
        let mut dashboard = Live::start(options.iface.clone(), attachment)?;
        dashboard.draw(clock_time())?;
        Ok(Screen::Dashboard(Box::new(dashboard)))
    }

    /// An ended connection: its line for the plain output, or `None` when
    /// the dashboard took it.
    fn connection(&mut self, record: &Ended) -> Option<String> {
        match self {
            Screen::Plain { .. } => Some(record.human_line()),
            Screen::Dashboard(dashboard) => {
                dashboard.snapshot.push_teardown(record.human_line());
                None
            }
        }
    }

    /// One report interval's figures: rows of the table on `out`, or a
    /// redrawn dashboard (whose drawing may fail: see [`Outputs::drawn`]).
    #[expect(
        clippy::too_many_arguments,
        reason = "the figures come from several sources until one value carries them (issue 17)"
    )]
    fn report(
        &mut self,
        seconds: f64,
        received: Figures,
        sent: Option<Figures>,
        flow_stats: &FlowStats,
        tracker: &Tracker,
        lost: &LinesLost,
        out: &mut Sink,
    ) -> anyhow::Result<()> {
        match self {
            Screen::Plain { rows } => {
                let mut text = String::new();
                if rows.is_multiple_of(HEADER_EVERY) {
                    push_line(&mut text, header());
                }
                push_line(
                    &mut text,
                    row(&clock_time(), received.delta, seconds, received.total),
                );
                if let Some(sent) = sent {
                    push_line(&mut text, row("  sent", sent.delta, seconds, sent.total));
                }
                push_line(&mut text, flows_and_lines_lost(flow_stats, tracker, lost));
                out.write(&text);
                *rows += 1;
                Ok(())
            }
            Screen::Dashboard(dashboard) => {
                dashboard.snapshot.counters = counter_figures(received, seconds);
                dashboard.snapshot.sent = sent
                    .map(|sent| counter_figures(sent, seconds))
                    .unwrap_or_default();
                dashboard.snapshot.flows = flow_figures(flow_stats, tracker, lost);
                dashboard.draw(clock_time())
            }
        }
    }

    /// An alert started, changed or ended (one line, e.g.
    /// `AlertEvent::human_line`): its line for the plain output, or `None`
    /// when it went to the dashboard's alert log. Not for `--json`, which
    /// prints the event's JSON instead.
    fn alert_event(&mut self, line: String) -> Option<String> {
        match self {
            Screen::Plain { .. } => Some(line),
            Screen::Dashboard(dashboard) => {
                dashboard.snapshot.push_alert_event(line);
                None
            }
        }
    }

    /// The ongoing alerts, one line each, shown at the top of the dashboard
    /// (the plain lines already carry each alert's events).
    fn set_active_alerts(&mut self, lines: Vec<String>) {
        if let Screen::Dashboard(dashboard) = self {
            dashboard.snapshot.active_alerts = lines;
        }
    }

    /// The alert summary after each report's rows (the dashboard shows the
    /// alerts themselves).
    fn alert_summary(&mut self, line: String, out: &mut Sink) {
        if let Screen::Plain { .. } = self {
            out.write(&format!("{line}\n"));
        }
    }

    /// Between reports: redraws the dashboard a few times a second, so new
    /// teardowns and the uptime move.
    fn refresh(&mut self) -> anyhow::Result<()> {
        match self {
            Screen::Dashboard(dashboard) => dashboard.draw_if_due(clock_time),
            Screen::Plain { .. } => Ok(()),
        }
    }

    /// Gives the terminal back, if the dashboard had it (returns whether);
    /// what follows is printed as lines.
    fn leave(&mut self) -> bool {
        let was_dashboard = matches!(self, Screen::Dashboard(_));
        *self = Screen::Plain { rows: 0 };
        was_dashboard
    }
}

/// Adds `line` to the batch `text` for `sink`, writing the batch when it is
/// full.
fn batch(sink: &mut Sink, text: &mut String, line: impl Display) {
    push_line(text, line);
    if text.len() >= output::BATCH_BYTES {
        sink.write(text);
        text.clear();
    }
}

/// Where `teardown run` writes lines: stdout (the table, the plain lines,
/// or JSON) and the `--log` file. Neither stops the monitor by failing (see
/// [`Sink`]): a full disk costs lines, counted and shown in every output,
/// not the watch. A closed stdout (`| head`) ends the run, quietly.
struct Outputs {
    json: bool,
    stdout: Sink,
    log: Option<Sink>,
    clock: Clock,
    /// Whether a failure to draw the dashboard was said already.
    dashboard_warned: bool,
}

impl Outputs {
    /// Lines each output lost so far: stdout, then the log if there is one.
    fn lines_lost(&self) -> LinesLost {
        std::iter::once(&self.stdout)
            .chain(&self.log)
            .map(|sink| (sink.key, sink.lost()))
            .collect()
    }

    fn lines_lost_json(&self) -> Value {
        Value::Object(
            self.lines_lost()
                .into_iter()
                .map(|(key, count)| (key.to_string(), json!(count)))
                .collect(),
        )
    }

    /// Prints ended connections, and appends them to the log file if any.
    fn emit(&mut self, ended: &[Ended], screen: &mut Screen) {
        let (mut out, mut log) = (String::new(), String::new());
        for record in ended {
            if self.json || self.log.is_some() {
                let object = record.json(&self.clock).to_string();
                if self.json {
                    batch(&mut self.stdout, &mut out, &object);
                }
                if let Some(sink) = &mut self.log {
                    batch(sink, &mut log, &object);
                }
            }
            if !self.json
                && let Some(line) = screen.connection(record)
            {
                batch(&mut self.stdout, &mut out, line);
            }
        }
        self.flush(&out, &log);
    }

    /// Prints SYN-flood alert events, and appends them to the log file.
    fn emit_alerts(&mut self, events: &[AlertEvent], screen: &mut Screen) {
        let (mut out, mut log) = (String::new(), String::new());
        for event in events {
            // Events are made at the poll that just ran: now.
            let object = event.json(unix_seconds()).to_string();
            if self.json {
                batch(&mut self.stdout, &mut out, &object);
            } else if let Some(line) = screen.alert_event(event.human_line()) {
                batch(&mut self.stdout, &mut out, line);
            }
            if let Some(sink) = &mut self.log {
                batch(sink, &mut log, &object);
            }
        }
        self.flush(&out, &log);
    }

    fn flush(&mut self, out: &str, log: &str) {
        self.stdout.write(out);
        if let Some(sink) = &mut self.log {
            sink.write(log);
        }
    }

    /// What became of a dashboard frame. A terminal that is gone (`EPIPE`,
    /// or `EIO` once it hung up) ends the run as a closed stdout does. Any
    /// other failure is said once and the next frame tries again: a frame
    /// carries no record, and the next one replaces it, so there is nothing
    /// to count.
    fn drawn(&mut self, result: anyhow::Result<()>) {
        let Err(err) = result else { return };
        let gone = err.downcast_ref::<std::io::Error>().is_some_and(|err| {
            err.kind() == std::io::ErrorKind::BrokenPipe || err.raw_os_error() == Some(libc::EIO)
        });
        if gone {
            self.stdout.close();
        } else if !self.dashboard_warned {
            self.dashboard_warned = true;
            say(format_args!(
                "teardown: warning: {err:#}; monitoring goes on, and every frame is tried again"
            ));
        }
    }
}

/// The flow table's clock minus CLOCK_MONOTONIC, in nanoseconds: read a few
/// times, keeping the reading bracketed most tightly by two of ours. For the
/// coarse clock it is right to within a tick, which is its resolution anyway.
fn calibrate_clock(kernel: &mut Kernel) -> anyhow::Result<i128> {
    let mut best: Option<(u64, i128)> = None;
    for _ in 0..5 {
        let before = monotonic_now_ns();
        let reading = kernel.kernel_clock_ns()?;
        let after = monotonic_now_ns();
        let width = after.saturating_sub(before);
        let offset = reading as i128 - (before / 2 + after / 2) as i128;
        if best.is_none_or(|(narrowest, _)| width < narrowest) {
            best = Some((width, offset));
        }
    }
    Ok(best.map(|(_, offset)| offset).unwrap_or(0))
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    // Prometheus (metrics.rs): bound before anything is attached, so a taken
    // address fails the run with nothing to undo.
    let metrics = MetricsServer::for_run(&options).await?;
    let mut alerts = AlertWatch::new(options.detect.clone())?;
    // stdout before the log: were fd 1 closed (`>&-`), the log would be
    // opened as fd 1 and taken for stdout.
    let stdout = Sink::new(
        "stdout",
        "stdout".to_string(),
        LineOutput::stdout().context("stdout is not open")?,
        true,
    );
    let log = match &options.log {
        Some(path) => Some(Sink::new(
            "log",
            format!("the log file {}", path.display()),
            LineOutput::file(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open the log file {}", path.display()))?,
            ),
            false,
        )),
        None => None,
    };
    let mut kernel = Kernel::load(&LoadOptions {
        timeouts: options.timeouts,
        grace_ns: GRACE.as_nanos() as u64,
        max_flows: options.max_flows,
        clock: options.clock,
    })?;
    let mut events = kernel.take_events()?;
    let table = kernel.flow_table()?;
    let kernel_offset = calibrate_clock(&mut kernel)?;
    let kernel_now = || (monotonic_now_ns() as i128 + kernel_offset).max(0) as u64;
    alerts.start(&mut kernel)?;
    // The counters' starting point, before anything is attached: a packet
    // that arrives as soon as the program is attached must count.
    let start = kernel.tallies()?;
    let egress_start = match options.direction {
        Direction::Both => Some(kernel.egress_tallies()?),
        Direction::Ingress => None,
    };
    let mode = kernel.attach(&options.iface, options.mode)?;
    if options.direction == Direction::Both {
        kernel.attach_egress(&options.iface)?;
    }
    let attachment = format!(
        "{mode} XDP{}",
        if options.direction == Direction::Both {
            " + TC egress"
        } else {
            ", ingress only"
        }
    );
    say(format_args!(
        "teardown: watching {} ({attachment}), every {:?}; Ctrl-C to stop",
        options.iface, options.interval
    ));
    if let Some(metrics) = &metrics {
        say(format_args!(
            "teardown: Prometheus metrics at http://{}/metrics",
            metrics.local_addr()
        ));
    }
    let mut output = Outputs {
        json: options.json,
        stdout,
        log,
        clock: Clock::offset_from(kernel_now()),
        dashboard_warned: false,
    };
    let mut tracker = Tracker::new(options.timeouts);
    tracker.watch_half_open_timeouts();
    let mut previous = start;
    let mut previous_sent = egress_start;
    let mut previous_at = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let mut poll = tokio::time::interval(EVENT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut ended = Vec::new();
    // Taken last, once the signals that end the loop are caught, so the
    // terminal is given back on every way out (its guard drops).
    let mut screen = Screen::new(&options, attachment)?;
    loop {
        // The reader of stdout is gone (`| head`): nothing is watching any
        // more, so the run ends as on Ctrl-C, quietly (below).
        if output.stdout.closed() {
            break;
        }
        let report = tokio::select! {
            _ = ticker.tick() => true,
            _ = poll.tick() => false,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        };
        tracker.drain_events(&mut events, &mut ended);
        tracker.take_changes(&table);
        tracker.expire(kernel_now(), &table, &mut ended);
        output.emit(&ended, &mut screen);
        ended.clear();
        let alert_events = alerts.poll(&mut kernel, &mut tracker)?;
        output.emit_alerts(&alert_events, &mut screen);
        if !alert_events.is_empty() {
            screen.set_active_alerts(alerts.active_lines());
        }
        if let Some(metrics) = &metrics {
            // Prometheus: every event poll, so a scrape is at most 100 ms behind.
            metrics.publish(&kernel, &start, egress_start.as_ref(), &tracker)?;
            metrics.update(|snapshot| {
                snapshot.syn_flood_alerts = alerts.states();
                snapshot.syn_flood_alerts_started = alerts.started;
                snapshot.output_lines_lost = output.lines_lost();
            });
        }
        if !report {
            output.drawn(screen.refresh());
            continue;
        }
        let now = kernel.tallies()?;
        let now_sent = match egress_start {
            Some(_) => Some(kernel.egress_tallies()?),
            None => None,
        };
        let now_at = tokio::time::Instant::now();
        let seconds = (now_at - previous_at).as_secs_f64().max(1e-9);
        let delta = now.since(&previous).totals();
        let total = now.since(&start).totals();
        let sent_counts = match (&now_sent, &previous_sent, &egress_start) {
            (Some(now_sent), Some(previous_sent), Some(egress_start)) => Some((
                now_sent.since(previous_sent).totals(),
                now_sent.since(egress_start).totals(),
            )),
            _ => None,
        };
        let received = Figures {
            delta: &delta,
            total: &total,
        };
        let sent = sent_counts
            .as_ref()
            .map(|(delta, total)| Figures { delta, total });
        let flow_stats = kernel.flow_stats()?;
        if options.json {
            let mut object = stats_json(&options.iface, seconds, received, sent);
            object["flows"] = flow_json(&flow_stats, &tracker);
            object["alerts"] = alerts.summary_json();
            object["lines_lost"] = output.lines_lost_json();
            output.stdout.write(&format!("{object}\n"));
        } else {
            let lost = output.lines_lost();
            let drawn = screen.report(
                seconds,
                received,
                sent,
                &flow_stats,
                &tracker,
                &lost,
                &mut output.stdout,
            );
            output.drawn(drawn);
            screen.alert_summary(alerts.summary_line(), &mut output.stdout);
        }
        previous_sent = now_sent;
        previous = now;
        previous_at = now_at;
    }
    // Detached first, so the totals below count every packet that reached
    // the program: read while it was still attached, a packet arriving
    // between the read and the detach went uncounted (the flood test's
    // exact Ip InReceives check saw one).
    if let Err(err) = kernel.detach() {
        // E.g. the interface went away, taking the attachments with it: the
        // figures are final either way, so report them rather than fail.
        say(format_args!("teardown: {err:#}"));
    }
    // Whoever read stdout has gone (`| head -1` has its line): what follows
    // still goes to the log, but nothing is said, as `head`-style
    // pipelines expect of a program whose reader left, and the exit status
    // is 0: the reader had what it wanted, and a failure status would fail
    // a `set -o pipefail` script for it.
    let reader_gone = output.stdout.closed();
    let total = kernel.tallies()?.since(&start).totals();
    let sent_total = match &egress_start {
        Some(egress_start) => Some(kernel.egress_tallies()?.since(egress_start).totals()),
        None => None,
    };
    // Connections still open are reported as they stand, as at the end of a
    // capture.
    tracker.drain_events(&mut events, &mut ended);
    tracker.finish(&table, &mut ended);
    output.emit(&ended, &mut screen);
    // After a dashboard, the records of connections still open (thousands
    // after a flood) would bury the totals: they are counted, and logged.
    if screen.leave() && !ended.is_empty() && !reader_gone {
        say(format_args!(
            "teardown: {} connections still open at exit are not listed{}",
            ended.len(),
            match &options.log {
                Some(path) => format!(" (they are in {})", path.display()),
                None => " (--log FILE keeps every record, --plain lists them)".to_string(),
            }
        ));
    }
    // Alerts still in progress end here, printed after the dashboard.
    output.emit_alerts(&alerts.finish(), &mut screen);
    let flow_stats = kernel.flow_stats()?;
    drop(table);
    drop(kernel);
    if reader_gone {
        if let Some(log) = &mut output.log {
            log.finish();
        }
        return Ok(());
    }
    say(format_args!("teardown: detached from {}", options.iface));
    if options.json {
        let mut object = json!({
            "event": "final",
            "ts": unix_seconds(),
            "iface": options.iface,
            "totals": totals_json(&total),
            "flows": flow_json(&flow_stats, &tracker),
            "lines_lost": output.lines_lost_json(),
        });
        if let Some(sent) = &sent_total {
            object["egress"] = json!({ "totals": totals_json(sent) });
        }
        output.stdout.write(&format!("{object}\n"));
    } else {
        let mut text = format!("final totals on {}:\n", options.iface);
        text.push_str(&match &sent_total {
            Some(sent) => output::totals_table_both(&total, sent),
            None => output::totals_table(&total),
        });
        push_line(
            &mut text,
            flows_and_lines_lost(&flow_stats, &tracker, &output.lines_lost()),
        );
        output.stdout.write(&text);
    }
    // An output still failing at the end: its warning said when the
    // trouble began, and no "written again" note will say what it cost.
    output.stdout.finish();
    if let Some(log) = &mut output.log {
        log.finish();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port-sweeping flood's timeouts, every port three times, and one
    /// service's: the flows object stays small and its per-port counts
    /// still add up to every timeout.
    #[test]
    fn half_open_timeouts_by_port_stay_small_after_a_port_sweep() {
        let mut tracker = Tracker::new(Timeouts::ZEEK);
        let ports = &mut tracker.stats.half_open_by_port;
        for _ in 0..10 {
            ports.add(8080, 0);
        }
        for round in 0..3 {
            for port in 1..=u16::MAX {
                ports.add(port, round);
            }
        }
        let total = ports.total();
        let flows = flow_json(&FlowStats::default(), &tracker);
        let text = flows.to_string();
        // 32 ports and `other` with counts of a few digits: about 500 bytes,
        // where every port's own entry took over 500 KB.
        assert!(text.len() < 2048, "{} bytes: {text}", text.len());
        let by_port = flows["half_open_timeouts_by_port"]
            .as_object()
            .expect("an object");
        assert_eq!(by_port.len(), crate::tracker::HALF_OPEN_PORTS_LISTED + 1);
        assert_eq!(by_port["8080"], 13, "{text}");
        let sum: u64 = by_port.values().filter_map(Value::as_u64).sum();
        assert_eq!(sum, total, "{text}");
        assert!(flows["half_open_timeout_ports_folded"].as_u64() > Some(65_000));

        // The plain line: the three busiest (ties by port: the sweep's
        // last 31 ports are listed) and the rest.
        let line = flow_line(&FlowStats::default(), &tracker);
        assert!(
            line.ends_with(&format!(
                "; half-open timeouts by port 8080:13 65505:1 65506:1 other:{}",
                total - 15
            )),
            "{line}"
        );
        let figures = flow_figures(&FlowStats::default(), &tracker, &Vec::new());
        assert_eq!(figures.half_open_timeouts_by_port.len(), 5);
        let shown: u64 = figures
            .half_open_timeouts_by_port
            .iter()
            .map(|(_, count)| count)
            .sum();
        assert_eq!(shown + figures.half_open_timeouts_other, total);
    }

    #[test]
    fn no_timeouts_yet_is_an_other_of_zero() {
        let tracker = Tracker::new(Timeouts::ZEEK);
        let flows = flow_json(&FlowStats::default(), &tracker);
        assert_eq!(
            flows["half_open_timeouts_by_port"],
            json!({ "other": 0 }),
            "{flows}"
        );
        assert!(!flow_line(&FlowStats::default(), &tracker).contains("half-open timeouts"));
    }
}

//! `teardown run`: attach to an interface and report live figures.

use std::{fmt::Display, path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use teardown_common::conn::Timeouts;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    conn::{
        resets::KernelReasons,
        tracker::{Clock, Ended, Tracker, monotonic_now_ns},
    },
    flood::{AlertEvent, AlertWatch, DebrisSummariser, DebrisSummary, DetectConfig, FloodRecords},
    kernel::{
        AttachMode, ClockMode, FlowTable, Kernel, LinkLayer, LoadOptions, SetupError,
        check_tables_fit, interface_index, link_layer_of,
    },
    report::dashboard::{self, KeyOutcome, Live},
    report::figures::{
        AlertFigures, Baseline, Figures, InterfaceSource, LinesLost, Reading, RunFacts,
        unix_seconds,
    },
    report::hook::AlertHook,
    report::ipfix::Exporter,
    report::json,
    report::metrics_server::MetricsServer,
    report::output::{self, LineOutput, QueuedSink, Sink, push_line, say},
    report::plain,
};

/// Which way packets are watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// XDP on ingress and TC on egress: the host's own SYN-ACKs, FINs and
    /// RSTs are seen too.
    Both,
    /// XDP only: for a mirror port that carries both directions.
    Ingress,
}

impl Direction {
    /// As `--direction` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Both => "both",
            Direction::Ingress => "ingress",
        }
    }
}

pub struct RunOptions {
    /// The interfaces to watch (`--iface`, repeated): each gets a kernel
    /// instance of its own (programs, maps, a flow table of `max_flows`).
    /// Distinct and at least one (the command line sees to it).
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    pub interval: Duration,
    pub json: bool,
    /// Scrolling lines even when stdout is a terminal (no dashboard).
    pub plain: bool,
    pub direction: Direction,
    /// The encapsulations opened, and the ports of VXLAN and Geneve.
    pub tunnels: teardown_common::tunnel::TunnelPorts,
    pub timeouts: Timeouts,
    pub max_flows: u32,
    pub clock: ClockMode,
    /// Also append every connection record, as JSON, to this file.
    pub log: Option<PathBuf>,
    /// A flood's one-sided records: summarised per target, or in full.
    pub flood_records: FloodRecords,
    /// Serve Prometheus metrics here (`None`: `--metrics-addr off`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// SYN-flood detection thresholds.
    pub detect: DetectConfig,
    /// IPFIX export (and alert hooks): `cli_fleet`.
    pub fleet: crate::cli_fleet::FleetOptions,
}

/// How long the run's end waits for each output to write the lines it
/// still holds (a reader that does not read costs them, counted and said).
const OUTPUT_PATIENCE: Duration = Duration::from_secs(5);

/// How often ended connections are collected, whatever the report interval.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// How long past a deadline the kernel leaves a record for user space.
const GRACE: Duration = Duration::from_secs(2);

/// The wall-clock time the dashboard shows, as the plain rows print it.
fn clock_time() -> String {
    plain::clock(unix_seconds())
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
        let mut dashboard = Live::start(options.interfaces.join(", "), attachment)?;
        dashboard.draw(clock_time())?;
        Ok(Screen::Dashboard(Box::new(dashboard)))
    }

    /// An ended connection: its line for the plain output, or `None` when
    /// the dashboard took it.
    fn connection(&mut self, record: &Ended) -> Option<String> {
        match self {
            Screen::Plain { .. } => Some(record.human_line()),
            Screen::Dashboard(dashboard) => {
                dashboard.snapshot().push_teardown(record);
                None
            }
        }
    }

    /// One report interval's figures: rows of the table on `out`, or a
    /// redrawn dashboard (whose drawing may fail: see [`Outputs::drawn`]).
    fn report(&mut self, figures: &Figures, out: &mut QueuedSink) -> anyhow::Result<()> {
        match self {
            Screen::Plain { rows } => {
                out.write(&plain::report(figures, *rows));
                *rows += 1;
                Ok(())
            }
            Screen::Dashboard(dashboard) => {
                dashboard.snapshot().show(figures);
                dashboard.draw(clock_time())
            }
        }
    }

    /// A flood's debris summary: its line for the plain output, or `None`
    /// when the dashboard took it.
    fn summary(&mut self, summary: &DebrisSummary) -> Option<String> {
        match self {
            Screen::Plain { .. } => Some(summary.human_line()),
            Screen::Dashboard(dashboard) => {
                dashboard.snapshot().push_summary(summary);
                None
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
                dashboard.snapshot().push_alert_event(line);
                None
            }
        }
    }

    /// The ongoing alerts, one line each, shown at the top of the dashboard
    /// (the plain lines already carry each alert's events).
    fn set_active_alerts(&mut self, lines: Vec<String>) {
        if let Screen::Dashboard(dashboard) = self {
            dashboard.snapshot().active_alerts = lines;
        }
    }

    /// The alert summary after each report's rows (the dashboard shows the
    /// alerts themselves).
    fn alert_summary(&mut self, figures: &Figures, out: &mut QueuedSink) {
        if let Screen::Plain { .. } = self {
            out.write(&plain::alert_summary(figures));
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

    /// The next key pressed on the dashboard; never, without one.
    async fn next_key(&mut self) -> crossterm::event::KeyEvent {
        match self {
            Screen::Dashboard(dashboard) => dashboard.next_key().await,
            Screen::Plain { .. } => std::future::pending().await,
        }
    }

    /// A key pressed on the dashboard: whether it asks to stop the run, as
    /// Ctrl-C does. A key that changed the view redraws it at once.
    fn key(&mut self, key: crossterm::event::KeyEvent) -> (bool, anyhow::Result<()>) {
        let Screen::Dashboard(dashboard) = self else {
            return (false, Ok(()));
        };
        match dashboard.key(key) {
            KeyOutcome::Quit => (true, Ok(())),
            KeyOutcome::Redraw => (false, dashboard.draw(clock_time())),
            KeyOutcome::Ignored => (false, Ok(())),
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
fn batch(sink: &mut QueuedSink, text: &mut String, line: impl Display) {
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
    stdout: QueuedSink,
    log: Option<QueuedSink>,
    clock: Clock,
    /// `--ipfix`: connection records to a flow collector.
    ipfix: Option<Exporter>,
    /// `--on-alert`: a command run for every alert event.
    hook: Option<AlertHook>,
    /// Whether a failure to draw the dashboard was said already.
    dashboard_warned: bool,
}

impl Outputs {
    /// Lines each output lost so far: stdout, then the log if there is one.
    fn lines_lost(&self) -> LinesLost {
        LinesLost(
            std::iter::once(&self.stdout)
                .chain(&self.log)
                .map(|sink| (sink.key, sink.lost()))
                .chain(self.ipfix.as_ref().map(|ipfix| ("ipfix", ipfix.lost())))
                .chain(self.hook.as_ref().map(|hook| ("alert_hook", hook.failed())))
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
        if let Some(ipfix) = &mut self.ipfix {
            ipfix.export(ended, &self.clock);
        }
    }

    /// Prints the summaries of flood debris, appends them to the log file
    /// and sends them to the collector, as [`Outputs::emit`] does records.
    fn emit_summaries(&mut self, summaries: &[DebrisSummary], screen: &mut Screen) {
        let (mut out, mut log) = (String::new(), String::new());
        for summary in summaries {
            if self.json || self.log.is_some() {
                let object = summary.json().to_string();
                if self.json {
                    batch(&mut self.stdout, &mut out, &object);
                }
                if let Some(sink) = &mut self.log {
                    batch(sink, &mut log, &object);
                }
            }
            if !self.json
                && let Some(line) = screen.summary(summary)
            {
                batch(&mut self.stdout, &mut out, line);
            }
        }
        self.flush(&out, &log);
        if let Some(ipfix) = &mut self.ipfix {
            ipfix.export_summaries(summaries);
        }
    }

    /// Prints SYN-flood alert events, and appends them to the log file.
    fn emit_alerts(&mut self, events: &[AlertEvent], screen: &mut Screen) {
        let (mut out, mut log) = (String::new(), String::new());
        // The monotonic clock read against the wall clock once: each event
        // is stamped with its own poll's time, not with the moment it is
        // written (a busy host may write it a while later), so that every
        // event of an alert says the same `started`.
        let (unix_now, monotonic_now) = (unix_seconds(), monotonic_now_ns());
        for event in events {
            let ts = unix_now - monotonic_now.saturating_sub(event.now_ns) as f64 / 1e9;
            let object = event.json(ts).to_string();
            if self.json {
                batch(&mut self.stdout, &mut out, &object);
            } else if let Some(line) = screen.alert_event(event.human_line()) {
                batch(&mut self.stdout, &mut out, line);
            }
            if let Some(sink) = &mut self.log {
                batch(sink, &mut log, &object);
            }
            if let Some(hook) = &mut self.hook {
                hook.run(event.phase.name(), &object);
            }
        }
        self.flush(&out, &log);
        if let Some(hook) = &mut self.hook {
            hook.poll();
        }
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

/// The alert watch's figures, for [`Figures::assemble`].
fn alert_figures(alerts: &AlertWatch) -> anyhow::Result<AlertFigures> {
    Ok(AlertFigures {
        summary: alerts.summary(),
        states: alerts.states(),
        active_lines: alerts.active_lines(),
        summary_line: alerts.summary_line(),
    })
}

/// The kernel's counters (and the sent ones when `egress`) and flow
/// statistics, now.
fn read_kernel(kernel: &Kernel, egress: bool) -> anyhow::Result<Reading> {
    Ok(Reading {
        received: kernel.tallies()?,
        sent: if egress {
            Some(kernel.egress_tallies()?)
        } else {
            None
        },
        flow: kernel.flow_stats()?,
    })
}

/// One interface watched: a kernel instance of its own (programs, maps,
/// flow table), so each interface's counters and records are its own, and
/// a connection a router forwards between two watched interfaces is a
/// record on each rather than one record fed twice.
struct Watched {
    /// Its name, for the life of the process (every record carries it).
    iface: &'static str,
    // Declared before the kernel, so dropped before it.
    events: RingBuf<MapData>,
    table: FlowTable,
    tracker: Tracker,
    /// The flow table's clock minus CLOCK_MONOTONIC.
    kernel_offset: i128,
    /// Its counters before anything was attached.
    baseline: Baseline,
    /// The latest report's reading: the next report's rates are measured
    /// from it (the first one's from the start).
    previous: Reading,
    /// How it is attached, e.g. `generic XDP + TC egress`, once it is.
    attachment: String,
    kernel: Kernel,
}

impl Watched {
    /// Loads a kernel instance for `iface`, not attached yet, with the
    /// alert watch's first poll epoch set.
    fn load(
        iface: &str,
        load: &LoadOptions,
        alerts: &AlertWatch,
        egress: bool,
        timeouts: Timeouts,
    ) -> anyhow::Result<Watched> {
        let iface: &'static str = Box::leak(iface.to_string().into_boxed_str());
        let mut kernel = Kernel::load(load)?;
        let events = kernel.take_events()?;
        let table = kernel.flow_table()?;
        let kernel_offset = calibrate_clock(&mut kernel)?;
        alerts.start(&mut kernel)?;
        // The counters' starting point, before anything is attached: a
        // packet that arrives as soon as the program is attached must count.
        let start = read_kernel(&kernel, egress)?;
        let mut tracker = Tracker::on_interface(timeouts, iface);
        tracker.watch_half_open_timeouts();
        Ok(Watched {
            iface,
            events,
            table,
            tracker,
            kernel_offset,
            baseline: Baseline {
                received: start.received,
                sent: start.sent,
            },
            previous: start,
            attachment: String::new(),
            kernel,
        })
    }

    /// The flow table's clock now.
    fn kernel_now(&self) -> u64 {
        (monotonic_now_ns() as i128 + self.kernel_offset).max(0) as u64
    }

    /// Attaches the ingress program (XDP, or TC) and TC egress when
    /// `egress` to the interface.
    fn attach(&mut self, mode: AttachMode, egress: bool) -> anyhow::Result<()> {
        let mode = self.kernel.attach(self.iface, mode)?;
        if egress {
            self.kernel.attach_egress(self.iface)?;
        }
        self.attachment = match (egress, mode) {
            (true, _) => format!("{mode} + TC egress"),
            (false, "TC ingress") => "TC ingress only".to_string(),
            (false, _) => format!("{mode}, ingress only"),
        };
        Ok(())
    }

    /// What the interface gives the figures, read `now`.
    fn source<'a>(&'a self, now: &'a Reading, report: bool) -> InterfaceSource<'a> {
        InterfaceSource {
            iface: self.iface,
            baseline: &self.baseline,
            now,
            previous: report.then_some(&self.previous),
            tracker: &self.tracker,
        }
    }
}

/// Attaches every interface, in order. If one fails, those attached before
/// it are detached again before its error is returned: a run that does not
/// start leaves no program behind.
fn attach_all(watched: &mut [Watched], mode: AttachMode, egress: bool) -> anyhow::Result<()> {
    for index in 0..watched.len() {
        if let Err(err) = watched[index].attach(mode, egress) {
            for earlier in watched[..=index].iter_mut().rev() {
                // Its own failure may have left the XDP half attached.
                if let Err(detach) = earlier.kernel.detach() {
                    say(format_args!(
                        "teardown: {}: {detach:#}; `ip link set dev {} xdp off` removes it",
                        earlier.iface, earlier.iface
                    ));
                }
            }
            return Err(err);
        }
    }
    Ok(())
}

/// How the interfaces are attached, in one phrase: the same for all
/// (`generic XDP + TC egress`), or each one's.
fn attachments(watched: &[Watched]) -> String {
    match watched {
        [first, rest @ ..] if rest.iter().all(|one| one.attachment == first.attachment) => {
            first.attachment.clone()
        }
        _ => watched
            .iter()
            .map(|one| format!("{}: {}", one.iface, one.attachment))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let egress = options.direction == Direction::Both;
    let facts = RunFacts {
        flow_table_capacity: u64::from(teardown_common::table::slots_for(options.max_flows)),
        ..RunFacts::starting_now(options.direction.name())
    };
    let names: Vec<&str> = options.interfaces.iter().map(String::as_str).collect();
    // Caught from the start: a SIGTERM just after the "watching" line (a
    // service manager, a test) must end the run cleanly, not kill it, and
    // SIGHUP reopens --log (logrotate renamed it) rather than ending the run.
    // Signals that come before the loop are taken there at once.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // The outputs in use, by key: stdout, and the log with --log.
    let mut output_keys = vec!["stdout"];
    output_keys.extend(options.log.is_some().then_some("log"));
    output_keys.extend(options.fleet.ipfix.is_some().then_some("ipfix"));
    output_keys.extend(options.fleet.on_alert.is_some().then_some("alert_hook"));
    let output_keys = &output_keys[..];
    // Prometheus (metrics.rs): bound before anything is attached, so a taken
    // address fails the run with nothing to undo. It serves figures at 0
    // (with the sent counters and the outputs in use) until the first publish.
    let metrics = match options.metrics_addr {
        Some(addr) => Some(
            MetricsServer::start(
                addr,
                Figures::zero(&names, facts.clone(), egress, output_keys),
            )
            .await?,
        ),
        None => None,
    };
    let mut alerts = AlertWatch::new(options.detect.clone())?;
    // stdout before the log: were fd 1 closed (`>&-`), the log would be
    // opened as fd 1 and taken for stdout.
    let stdout = QueuedSink::start(Sink::new(
        "stdout",
        "stdout".to_string(),
        LineOutput::stdout().context("stdout is not open")?,
        true,
    ))
    .context("starting the stdout writer")?;
    let log = match &options.log {
        Some(path) => Some(
            QueuedSink::start(Sink::new(
                "log",
                format!("the log file {}", path.display()),
                LineOutput::append_to(path)
                    .with_context(|| format!("cannot open the log file {}", path.display()))?,
                false,
            ))
            .context("starting the log writer")?,
        ),
        None => None,
    };
    let ipfix = options.fleet.ipfix.map(Exporter::start).transpose()?;
    // Before anything is loaded: a misspelt interface, or tables that would
    // not fit together, cost nothing to undo.
    let mut indexes: Vec<(u32, &str)> = Vec::new();
    for iface in &names {
        let index = interface_index(iface)?;
        if let Some((_, same)) = indexes.iter().find(|(known, _)| *known == index) {
            return Err(SetupError::SameInterface(same.to_string(), iface.to_string()).into());
        }
        indexes.push((index, iface));
    }
    check_tables_fit(options.max_flows, names.len() as u32)?;
    let load = LoadOptions {
        timeouts: options.timeouts,
        grace_ns: GRACE.as_nanos() as u64,
        max_flows: options.max_flows,
        clock: options.clock,
        tunnels: options.tunnels,
        // Many CPUs mark changes at once, live.
        note_changed_words: false,
        // The reset program sees the first interface's table only.
        skip_untracked_resets: names.len() == 1,
        ip_link: false,
    };
    let mut watched = names
        .iter()
        .map(|iface| {
            // Each interface's programs read its packets as they start.
            let load = LoadOptions {
                ip_link: link_layer_of(iface)? == LinkLayer::Ip,
                ..load
            };
            Watched::load(iface, &load, &alerts, egress, options.timeouts)
        })
        .collect::<anyhow::Result<Vec<Watched>>>()?;
    // The host's clock for what is not an interface's: the reset events,
    // the flood debris, the records' Unix times.
    let kernel_offset = watched[0].kernel_offset;
    let kernel_now = || (monotonic_now_ns() as i128 + kernel_offset).max(0) as u64;
    // The kernel's reasons before the packets: a reset sent as soon as the
    // programs see traffic finds its program in place. What it cannot do on
    // this kernel is said after the "watching" line. The tracepoint sees
    // every reset the host sends, whatever the interface: one instance
    // watches it for all.
    let (mut reasons, reason_notes) = KernelReasons::start(&mut watched[0].kernel);
    attach_all(&mut watched, options.mode, egress)?;
    let attachment = attachments(&watched);
    let watching = match &watched[..] {
        [only] => format!("{} ({attachment})", only.iface),
        _ if !attachment.contains(": ") => format!("{} ({attachment})", names.join(", ")),
        _ => attachment.clone(),
    };
    say(format_args!(
        "teardown: watching {watching}, every {:?}; Ctrl-C to stop",
        options.interval
    ));
    for note in &reason_notes {
        say(format_args!("{note}"));
    }
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
        ipfix,
        hook: options
            .fleet
            .on_alert
            .clone()
            .map(|command| AlertHook::new(command, options.fleet.on_alert_timeout)),
        dashboard_warned: false,
    };
    // A one-sided record begun during an alert ends at most the idle
    // timeout and the kernel's grace after its last packet.
    let mut debris = DebrisSummariser::new(
        options.flood_records,
        kernel_offset,
        Duration::from_nanos(options.timeouts.idle_ns.max(options.timeouts.syn_ns)) + GRACE,
        options.detect.top_sources,
        unix_seconds(),
    );
    let mut previous_at = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let mut poll = tokio::time::interval(EVENT_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = sighup.recv() => {
                match (&mut output.log, &options.log) {
                    (Some(log), Some(path)) => log.reopen(path),
                    _ => say("teardown: SIGHUP: no --log file to reopen; monitoring goes on"),
                }
                continue;
            }
            key = screen.next_key() => {
                // `q` ends the run as Ctrl-C does; other keys change the
                // view, and wait for no tick.
                let (quit, drawn) = screen.key(key);
                output.drawn(drawn);
                if quit {
                    break;
                }
                continue;
            }
        };
        // Resets first: a record ending now finds the reset sent before.
        reasons.poll(kernel_now());
        for one in &mut watched {
            let now = one.kernel_now();
            one.tracker
                .drain_events(&mut one.events, &one.table, &mut ended);
            one.tracker.take_changes(&one.table);
            one.tracker.expire(now, &one.table, &mut ended);
        }
        reasons.claim(&mut ended);
        debris.take_debris(&mut ended);
        output.emit(&ended, &mut screen);
        ended.clear();
        let mut alert_events = alerts.poll(
            watched
                .iter_mut()
                .map(|one| (&mut one.kernel, &mut one.tracker)),
        )?;
        debris.observe(&alert_events);
        reasons.annotate(&mut alert_events);
        output.emit_alerts(&alert_events, &mut screen);
        if !alert_events.is_empty() {
            screen.set_active_alerts(alerts.active_lines());
        }
        // Prometheus is published every event poll, so a scrape is at most
        // 100 ms behind; the other views take a report's figures.
        if metrics.is_none() && !report {
            output.drawn(screen.refresh());
            continue;
        }
        if report {
            // The interval's debris, before the stats line whose
            // `records_summarised` they add up to.
            let summaries = debris.summaries(unix_seconds(), monotonic_now_ns(), &output.clock);
            output.emit_summaries(&summaries, &mut screen);
        }
        let readings = watched
            .iter()
            .map(|one| read_kernel(&one.kernel, egress))
            .collect::<anyhow::Result<Vec<Reading>>>()?;
        let now_at = tokio::time::Instant::now();
        // This tick's figures: every view below shows these.
        let figures = Figures::assemble(
            &facts,
            &watched
                .iter()
                .zip(&readings)
                .map(|(one, now)| one.source(now, report))
                .collect::<Vec<_>>(),
            report.then(|| (now_at - previous_at).as_secs_f64()),
            alert_figures(&alerts)?,
            reasons.figures(&watched[0].kernel)?,
            output.lines_lost(),
            debris.counts(),
        );
        if let Some(metrics) = &metrics {
            metrics.publish(figures.clone());
        }
        if !report {
            output.drawn(screen.refresh());
            continue;
        }
        if options.json {
            output.stdout.write(&json::stats(&figures));
        } else {
            let drawn = screen.report(&figures, &mut output.stdout);
            output.drawn(drawn);
            screen.alert_summary(&figures, &mut output.stdout);
        }
        for (one, now) in watched.iter_mut().zip(readings) {
            one.previous = now;
        }
        previous_at = now_at;
    }
    // Detached first, so the totals below count every packet that reached
    // the programs: read while they were still attached, a packet arriving
    // between the read and the detach went uncounted (the flood test's
    // exact Ip InReceives check saw one).
    for one in &mut watched {
        if let Err(err) = one.kernel.detach() {
            // E.g. the interface went away, taking the attachments with
            // it: the figures are final either way, so report them rather
            // than fail.
            say(format_args!("teardown: {}: {err:#}", one.iface));
        }
    }
    // Whoever read stdout has gone (`| head -1` has its line): what follows
    // still goes to the log, but nothing is said, as `head`-style
    // pipelines expect of a program whose reader left, and the exit status
    // is 0: the reader had what it wanted, and a failure status would fail
    // a `set -o pipefail` script for it.
    let reader_gone = output.stdout.closed();
    // Connections still open are reported as they stand, as at the end of a
    // capture; those whose time is up (a SYN timed out, an idle flow expired) end
    // first, as they would have at the next poll: stopped just after the
    // deadline, or while the loop was busy, the run still reports them as
    // what they are, not as `open`.
    reasons.poll(kernel_now());
    for one in &mut watched {
        let now = one.kernel_now();
        one.tracker
            .drain_events(&mut one.events, &one.table, &mut ended);
        one.tracker.take_changes(&one.table);
        one.tracker.expire(now, &one.table, &mut ended);
        one.tracker.finish(&one.table, &mut ended);
    }
    reasons.claim(&mut ended);
    debris.take_debris(&mut ended);
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
    let mut last_alerts = alerts.finish();
    debris.observe(&last_alerts);
    reasons.annotate(&mut last_alerts);
    output.emit_alerts(&last_alerts, &mut screen);
    // The last debris, with the records still open at exit: summed up
    // before the totals they add up to.
    let summaries = debris.summaries(unix_seconds(), monotonic_now_ns(), &output.clock);
    output.emit_summaries(&summaries, &mut screen);
    if let Some(ipfix) = &mut output.ipfix {
        // The last records get a moment to go out; the rest are counted.
        ipfix.finish(Duration::from_millis(500));
    }
    if let Some(hook) = &mut output.hook {
        // The alerts' end events have just started their hooks.
        hook.finish();
    }
    let last = watched
        .iter()
        .map(|one| read_kernel(&one.kernel, egress))
        .collect::<anyhow::Result<Vec<Reading>>>()?;
    // Resets sent since the last poll count as unclaimed (the records are
    // all out), so the figures add up.
    reasons.poll(kernel_now());
    let last_reasons = reasons.figures(&watched[0].kernel)?;
    let figures = Figures::assemble(
        &facts,
        &watched
            .iter()
            .zip(&last)
            .map(|(one, now)| one.source(now, false))
            .collect::<Vec<_>>(),
        None,
        alert_figures(&alerts)?,
        last_reasons,
        output.lines_lost(),
        debris.counts(),
    );
    drop(watched);
    if reader_gone {
        if let Some(log) = &mut output.log {
            log.finish(OUTPUT_PATIENCE);
        }
        return Ok(());
    }
    say(format_args!("teardown: detached from {}", names.join(", ")));
    if options.json {
        output.stdout.write(&json::final_line(&figures));
    } else {
        output.stdout.write(&plain::final_totals(&figures));
    }
    // An output still failing at the end: its warning said when the
    // trouble began, and no "written again" note will say what it cost.
    output.stdout.finish(OUTPUT_PATIENCE);
    if let Some(log) = &mut output.log {
        log.finish(OUTPUT_PATIENCE);
    }
    Ok(())
}

//! The live dashboard `teardown run` shows when its output is a terminal,
//! drawn with ratatui.
//!
//! Three layers: [`Snapshot`] is plain data (the figures of the latest
//! report, a short history of a few rates, the newest teardowns and
//! alerts), taken from the one [`Figures`] value of each tick and from the
//! records the run loop hands over; [`view`] draws a snapshot and the
//! user's [`keys::ViewState`] (pause, sort, filter, help) into any ratatui
//! buffer, so it is unit-tested on ratatui's `TestBackend` with no terminal;
//! [`Live`] is the thin part that owns the screen (alternate screen, hidden
//! cursor, no echo, keys read one at a time) and gives it back however the
//! run ends: normal exit, error, Ctrl-C, SIGTERM, `q` (all end the run
//! loop) or panic.

pub mod history;
pub mod keys;
pub mod view;

use std::{
    collections::{BTreeMap, VecDeque},
    fs::File,
    io::Write as _,
    os::fd::AsFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossterm::event::{Event, KeyEvent};
use ratatui::{
    Terminal as Ratatui, TerminalOptions, Viewport, backend::CrosstermBackend, layout::Rect,
};
use teardown_common::conn::{CloseKind, ORIG, RESP};
use tokio::sync::mpsc;

use crate::{
    conn::tracker::Ended,
    flood::DebrisSummary,
    kernel::netstat::HandshakeDrops,
    report::figures::{Figures, Traffic, midstream_untracked_words},
    report::output::short_count,
    report::plain::ROW_COUNTERS,
};
pub use history::History;
pub use keys::{KeyOutcome, ViewState};

/// Connections kept for the teardown list, in each of its two lists (real
/// ones and debris): more than any screen shows, so a taller window fills
/// at once.
const RECENT_TEARDOWNS_KEPT: usize = 256;

/// Flooded targets whose latest debris summary is kept (the view shows
/// two at most).
const SUMMARIES_KEPT: usize = 8;

/// Alert events kept, and at most shown.
const ALERT_EVENTS_KEPT: usize = 64;
const ALERT_EVENTS_SHOWN: usize = 5;

/// Lines that start with this are alerts: the view paints them in reverse
/// video and red, and they stay readable as plain text.
pub const ALERT_MARK: &str = "!! ";

/// One counter's figures for the latest interval.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterFigure {
    pub label: &'static str,
    pub per_second: f64,
    pub total: u64,
}

/// The flow table's figures: what the plain output's `flows:` line says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowFigures {
    pub tracked: u64,
    pub half_open: u64,
    pub ended: u64,
    /// Ended connections by close kind and by Zeek conn_state, as (name, count).
    pub ended_by_close: Vec<(String, u64)>,
    pub ended_by_conn_state: Vec<(String, u64)>,
    pub events_lost: u64,
    pub insert_failed: u64,
    pub evicted: u64,
    pub syn_untracked: u64,
    /// Segments of connections with no record over the mid-stream budget.
    pub midstream_untracked: u64,
    pub lock_contended: u64,
    /// Records `--log` could not write (a full disk), when there is a log.
    pub log_lines_lost: Option<u64>,
    /// IPFIX records not sent, with `--ipfix`.
    pub ipfix_records_lost: Option<u64>,
    /// Alert events whose `--on-alert` hook failed.
    pub alert_hooks_failed: Option<u64>,
    /// Half-open timeouts by responder port: the few with most, most
    /// first, and the sum of all the others (which, after a port sweep,
    /// may be thousands of ports).
    pub half_open_timeouts_by_port: Vec<(u16, u64)>,
    pub half_open_timeouts_other: u64,
    /// Resets the host sent by the kernel's reason, most first (empty
    /// without the reset program, or before the first reset).
    pub resets_sent: Vec<(String, u64)>,
    /// The host's handshake drops and SYN cookies since the start, when
    /// any is non-zero.
    pub handshakes: Option<HandshakeDrops>,
    /// Listening ports with drops, most first (a few), and the rest.
    pub listen_drops: Vec<String>,
}

/// One ended connection, as the teardown list shows, sorts and filters it.
#[derive(Clone, Debug, PartialEq)]
pub struct Teardown {
    /// `Ended::human_line`.
    pub line: String,
    pub conn_state: &'static str,
    pub close: CloseKind,
    /// A real connection: its handshake completed, or (picked up
    /// mid-stream) both sides sent data. The rest is one-sided debris:
    /// unanswered SYNs (S0), refusals (REJ), stray segments (OTH, SH...),
    /// which a flood leaves by the hundred thousand.
    pub established: bool,
    pub duration_ns: u64,
    /// Bytes both ways, by sequence space (Zeek's orig_bytes + resp_bytes).
    pub bytes: u64,
    /// Order of arrival: the newest has the highest.
    pub seq: u64,
}

impl Teardown {
    /// The row for an ended connection, judged from its record (the
    /// handshake and what each side sent), never from its text.
    pub fn of(record: &Ended) -> Teardown {
        let conn = &record.conn;
        Teardown {
            line: record.human_line(),
            conn_state: conn.conn_state(),
            close: conn.close(record.reason).kind,
            established: record.is_conversation(),
            duration_ns: conn.last_ns.saturating_sub(conn.start_ns),
            bytes: conn.size(ORIG) + conn.size(RESP),
            seq: 0,
        }
    }
}

/// Everything one dashboard frame shows.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub iface: String,
    /// How the programs are attached, e.g. "native XDP + TC egress".
    pub attachment: String,
    pub uptime: Duration,
    /// Wall-clock time of the frame (UTC, as the plain rows print it).
    pub clock: String,
    /// Rates over the latest report interval and totals since start; empty
    /// until the first interval has passed.
    pub counters: Vec<CounterFigure>,
    /// The same counters for what the host sent (TC egress), in the same
    /// order; empty when only ingress is watched.
    pub sent: Vec<CounterFigure>,
    pub flows: FlowFigures,
    /// A few rates over the last minutes, for the sparklines.
    pub history: History,
    /// One line per ongoing alert, replaced wholesale by whoever tracks
    /// alerts; shown first, highlighted.
    pub active_alerts: Vec<String>,
    /// Newest last.
    alert_events: VecDeque<String>,
    /// Connections that were real (see [`Teardown::established`]), newest
    /// last: a flood's debris never pushes them off.
    established: VecDeque<Teardown>,
    /// One-sided debris, newest last, kept apart.
    debris: VecDeque<Teardown>,
    /// Debris since the start, by conn_state, and in all.
    debris_by_state: BTreeMap<&'static str, u64>,
    debris_total: u64,
    /// Of the debris, the records that came in flood summaries.
    debris_summarised: u64,
    /// The latest summary line of each flooded target, newest last.
    debris_summaries: VecDeque<(String, String)>,
    /// Teardowns taken so far: the next one's `seq`.
    taken: u64,
}

impl Snapshot {
    pub fn new(iface: String, attachment: String) -> Snapshot {
        Snapshot {
            iface,
            attachment,
            ..Snapshot::default()
        }
    }

    /// Logs an alert's start, update or end (one line, e.g.
    /// `AlertEvent::human_line`); the newest few are shown.
    pub fn push_alert_event(&mut self, line: String) {
        push_bounded(&mut self.alert_events, line, ALERT_EVENTS_KEPT);
    }

    /// Takes a tick's figures: the counters and the flow table's, and,
    /// from a report's, a sample of the rates' history.
    pub fn show(&mut self, figures: &Figures) {
        self.counters = counter_figures(&figures.received);
        self.sent = figures
            .egress
            .as_ref()
            .map(counter_figures)
            .unwrap_or_default();
        self.flows = flow_figures(figures);
        self.history.sample(figures);
    }

    /// Adds an ended connection.
    pub fn push_teardown(&mut self, record: &Ended) {
        self.push_row(Teardown::of(record));
    }

    fn push_row(&mut self, mut row: Teardown) {
        row.seq = self.taken;
        self.taken += 1;
        if row.established {
            push_bounded(&mut self.established, row, RECENT_TEARDOWNS_KEPT);
        } else {
            *self.debris_by_state.entry(row.conn_state).or_default() += 1;
            self.debris_total += 1;
            push_bounded(&mut self.debris, row, RECENT_TEARDOWNS_KEPT);
        }
    }

    /// Adds a flood's debris summary: its records count as debris, as
    /// they would one by one, and its line is the target's latest.
    pub fn push_summary(&mut self, summary: &DebrisSummary) {
        for (state, count) in &summary.by_conn_state {
            *self.debris_by_state.entry(state).or_default() += count;
        }
        self.debris_total += summary.records;
        self.debris_summarised += summary.records;
        let target = summary.target.to_string();
        self.debris_summaries.retain(|(kept, _)| *kept != target);
        push_bounded(
            &mut self.debris_summaries,
            (target, summary.human_line()),
            SUMMARIES_KEPT,
        );
    }

    /// Debris records that came in flood summaries, and the latest summary
    /// line of each target, newest first.
    pub fn summaries(&self) -> (u64, impl Iterator<Item = &str>) {
        (
            self.debris_summarised,
            self.debris_summaries
                .iter()
                .rev()
                .map(|(_, line)| line.as_str()),
        )
    }

    /// The teardowns kept, both lists, oldest first within each.
    pub fn teardowns(&self) -> impl Iterator<Item = &Teardown> {
        self.established.iter().chain(&self.debris)
    }

    /// One-sided records since the start: in all, and by conn_state, most
    /// first.
    pub fn debris(&self) -> (u64, Vec<(&'static str, u64)>) {
        let mut by_state: Vec<(&'static str, u64)> =
            self.debris_by_state.iter().map(|(s, n)| (*s, *n)).collect();
        by_state.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        (self.debris_total, by_state)
    }
}

/// The row counters of one direction as the dashboard shows them.
fn counter_figures(traffic: &Traffic) -> Vec<CounterFigure> {
    ROW_COUNTERS
        .iter()
        .map(|(counter, label)| CounterFigure {
            label: label.trim_end_matches("/s"),
            per_second: traffic.per_second(*counter),
            total: traffic.totals.get(*counter),
        })
        .collect()
}

/// The flow table's figures as the dashboard shows them, with the lines
/// `--log` lost (stdout's are not the dashboard's business: it draws frames).
fn flow_figures(figures: &Figures) -> FlowFigures {
    let most_first = |map: &BTreeMap<&'static str, u64>| {
        let mut list: Vec<(String, u64)> = map
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(name, count)| (name.to_string(), *count))
            .collect();
        list.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        list
    };
    let flows = &figures.flows;
    let (ports, other_ports) = flows.half_open_timeouts.top(5);
    FlowFigures {
        tracked: flows.tracked,
        half_open: flows.half_open,
        ended: flows.ended(),
        ended_by_close: most_first(&flows.ended_by_close),
        ended_by_conn_state: most_first(&flows.ended_by_conn_state),
        events_lost: flows.events_lost,
        insert_failed: flows.insert_failed,
        evicted: flows.evicted,
        log_lines_lost: figures.lines_lost.of("log"),
        ipfix_records_lost: figures.lines_lost.of("ipfix"),
        alert_hooks_failed: figures.lines_lost.of("alert_hook"),
        syn_untracked: flows.syn_untracked,
        midstream_untracked: flows.midstream_untracked,
        lock_contended: flows.lock_contended,
        half_open_timeouts_by_port: ports,
        half_open_timeouts_other: other_ports,
        resets_sent: most_first(&figures.reasons.resets_sent),
        handshakes: figures
            .reasons
            .handshakes
            .filter(|drops| drops.dropped() > 0 || drops.syncookies_sent > 0),
        listen_drops: crate::report::plain::half_open_ports_words(
            &figures.reasons.listen_drops_by_port,
            3,
        ),
    }
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T, keep: usize) {
    if list.len() == keep {
        list.pop_front();
    }
    list.push_back(item);
}

/// `H:MM:SS`, or `Dd HH:MM:SS` past a day.
fn uptime(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (days, hours, minutes, secs) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d {hours:02}:{minutes:02}:{secs:02}")
    } else {
        format!("{hours}:{minutes:02}:{secs:02}")
    }
}

/// A count with thousands separated: 190,604.
fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// At most `width` characters; a cut line ends in `...` so it is not
/// mistaken for the whole. Control characters (which would move the cursor)
/// become `?`.
fn fit(line: &str, width: usize) -> String {
    let clean: Vec<char> = line
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if clean.len() <= width {
        return clean.into_iter().collect();
    }
    if width < 4 {
        return clean[..width].iter().collect();
    }
    let mut cut: String = clean[..width - 3].iter().collect();
    cut.push_str("...");
    cut
}

fn counts(list: &[(String, u64)]) -> String {
    if list.is_empty() {
        return "-".to_string();
    }
    list.iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}
/// The counters as a small table: labels, then a row of rates and a row of
/// totals; with `sent` (the same counters for what the host sent), a row of
/// each for what arrived and for what was sent, so a server's SYNs in stand
/// above its SYN-ACKs out.
fn counter_table(counters: &[CounterFigure], sent: &[CounterFigure]) -> Vec<String> {
    if counters.is_empty() {
        return vec!["rates     waiting for the first interval".to_string()];
    }
    let rows: Vec<(&str, &str, &[CounterFigure])> = if sent.is_empty() {
        vec![("per second", "total", counters)]
    } else {
        vec![
            ("in /s", "in total", counters),
            ("out /s", "out total", sent),
        ]
    };
    let rendered: Vec<(Vec<String>, Vec<String>)> = rows
        .iter()
        .map(|(_, _, figures)| {
            (
                figures.iter().map(|c| short_count(c.per_second)).collect(),
                figures.iter().map(|c| c.total.to_string()).collect(),
            )
        })
        .collect();
    let column = counters
        .iter()
        .map(|c| c.label.len())
        .chain(
            rendered
                .iter()
                .flat_map(|(rates, totals)| rates.iter().chain(totals))
                .map(String::len),
        )
        .max()
        .unwrap_or(0)
        .max(7)
        + 1;
    let mut header = format!("{:<10}", "");
    for counter in counters {
        header.push_str(&format!("{:>column$}", counter.label));
    }
    let mut lines = vec![header];
    for ((rate_label, total_label, _), (rates, totals)) in rows.iter().zip(&rendered) {
        let mut rate_line = format!("{rate_label:<10}");
        let mut total_line = format!("{total_label:<10}");
        for (rate, total) in rates.iter().zip(totals) {
            rate_line.push_str(&format!("{rate:>column$}"));
            total_line.push_str(&format!("{total:>column$}"));
        }
        lines.push(rate_line);
        lines.push(total_line);
    }
    lines
}

fn flow_lines(flows: &FlowFigures) -> Vec<String> {
    let mut lines = vec![
        format!(
            "flows     {} tracked, {} half-open, {} ended",
            flows.tracked, flows.half_open, flows.ended
        ),
        format!("closes    {}", counts(&flows.ended_by_close)),
        format!("states    {}", counts(&flows.ended_by_conn_state)),
        format!(
            "trouble   lost events {}, failed inserts {}, evicted {}, SYNs untracked {}{}, lock contended {}{}{}{}",
            flows.events_lost,
            flows.insert_failed,
            flows.evicted,
            flows.syn_untracked,
            midstream_untracked_words(flows.midstream_untracked),
            flows.lock_contended,
            flows
                .log_lines_lost
                .map(|lost| format!(", log lines lost {lost}"))
                .unwrap_or_default(),
            flows
                .ipfix_records_lost
                .map(|lost| format!(", IPFIX records lost {lost}"))
                .unwrap_or_default(),
            flows
                .alert_hooks_failed
                .map(|failed| format!(", alert hooks failed {failed}"))
                .unwrap_or_default()
        ),
    ];
    let mut ports: Vec<String> = flows
        .half_open_timeouts_by_port
        .iter()
        .map(|(port, count)| format!("{port}:{count}"))
        .collect();
    if flows.half_open_timeouts_other > 0 {
        ports.push(format!("other:{}", flows.half_open_timeouts_other));
    }
    if !ports.is_empty() {
        lines.push(format!("half-open timeouts by port {}", ports.join(" ")));
    }
    if !flows.resets_sent.is_empty() {
        lines.push(format!(
            "resets    {} (the kernel's reasons)",
            counts(&flows.resets_sent)
        ));
    }
    if let Some(drops) = &flows.handshakes {
        lines.push(format!(
            "host      handshakes dropped {} (listen overflows {}, SYN queue {}), SYN cookies sent {}",
            drops.dropped(),
            drops.listen_overflows,
            drops.syn_queue_full_drops,
            drops.syncookies_sent
        ));
    }
    if !flows.listen_drops.is_empty() {
        lines.push(format!(
            "listen    drops by port {}",
            flows.listen_drops.join(" ")
        ));
    }
    lines
}

/// What the dashboard holds: the snapshot it collects, the user's view of
/// it, and, while paused, the snapshot as it was when the pause began.
#[derive(Clone, Debug, Default)]
pub struct Board {
    /// What is collected: it moves on while the screen is paused.
    pub snapshot: Snapshot,
    /// What the screen shows while paused.
    frozen: Option<Snapshot>,
    pub view: ViewState,
}

impl Board {
    pub fn new(snapshot: Snapshot) -> Board {
        Board {
            snapshot,
            ..Board::default()
        }
    }

    /// Applies a key to the view (see [`ViewState::key`]): pausing freezes
    /// what the screen shows while the snapshot goes on taking figures;
    /// sorting, filtering and help apply to the frozen screen too.
    pub fn key(&mut self, key: KeyEvent) -> KeyOutcome {
        let outcome = self.view.key(key);
        if !self.view.paused {
            self.frozen = None;
        } else if self.frozen.is_none() {
            self.frozen = Some(self.snapshot.clone());
        }
        outcome
    }

    /// What the screen shows: the frozen snapshot while paused.
    pub fn shown(&self) -> &Snapshot {
        self.frozen.as_ref().unwrap_or(&self.snapshot)
    }
}

/// How often the dashboard is redrawn between reports.
const REDRAW: Duration = Duration::from_millis(250);

/// How long the key reader waits for a key before it looks whether it
/// should stop: the longest a run's end waits for it.
const KEY_POLL: Duration = Duration::from_millis(100);

/// Where ratatui's frames go: gathered, then written to stdout in one
/// write per frame by `flush`, through a duplicate of fd 1 with no buffer
/// of its own, so a failed write leaves nothing behind to come out later.
struct FrameWriter {
    out: File,
    pending: Vec<u8>,
    /// The dashboard is ending: what ratatui still writes (it shows the
    /// cursor as it lets go) is dropped, as the guard gives the terminal
    /// back whole, and a terminal already gone must not make it complain.
    closing: Arc<AtomicBool>,
    /// A whole frame is being drawn: what ratatui flushes on the way
    /// (it clears the area first) waits for the frame's end.
    holding: Arc<AtomicBool>,
}

impl std::io::Write for FrameWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.closing.load(Ordering::Relaxed) {
            self.pending.clear();
        }
        if self.pending.is_empty() || self.holding.load(Ordering::Relaxed) {
            return Ok(());
        }
        let result = self.out.write_all(&self.pending);
        // Written or not, the frame is done with: the next one is drawn
        // whole after a failure (see `Live::stale`).
        self.pending.clear();
        result
    }
}

/// Reads keys on a thread of its own (crossterm's reads block) and hands
/// them to the run loop through a channel, so the loop never waits on the
/// keyboard.
struct KeyReader {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl KeyReader {
    fn start() -> anyhow::Result<(KeyReader, mpsc::UnboundedReceiver<KeyEvent>)> {
        let (sender, keys) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("dashboard keys".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Sent to the background (^Z, then bg), a read of
                        // the terminal would stop the whole run (SIGTTIN):
                        // keys wait until it is in the foreground again.
                        if !in_foreground() {
                            thread::sleep(KEY_POLL);
                            continue;
                        }
                        // A terminal that cannot be read (gone, or none to
                        // open) just means no keys: Ctrl-C still works.
                        match crossterm::event::poll(KEY_POLL) {
                            Ok(false) => continue,
                            Ok(true) => {}
                            Err(_) => break,
                        }
                        match crossterm::event::read() {
                            Ok(Event::Key(key)) => {
                                if sender.send(key).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                }
            })
            .context("starting the dashboard's key reader")?;
        Ok((
            KeyReader {
                stop,
                thread: Some(thread),
            },
            keys,
        ))
    }
}

impl Drop for KeyReader {
    /// Stops the reader before the terminal is given back, so no keystroke
    /// typed after the run (for the shell) is taken by it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The dashboard while it runs: the terminal, taken over until this is
/// dropped, and what it shows.
pub struct Live {
    // Dropped in this order: the key reader stops, ratatui lets go of the
    // screen, then the guard gives the terminal back.
    _keys_reader: Option<KeyReader>,
    keys: Option<mpsc::UnboundedReceiver<KeyEvent>>,
    terminal: Ratatui<CrosstermBackend<FrameWriter>>,
    /// Tells the frame writer the dashboard is ending.
    closing: Arc<AtomicBool>,
    /// Tells the frame writer to hold a whole frame until it is drawn.
    holding: Arc<AtomicBool>,
    screen: Terminal,
    board: Board,
    started: Instant,
    drawn_at: Option<Instant>,
    /// The area ratatui draws on: the top rows, as [`Terminal::size`] says.
    area: Rect,
    /// A frame failed to get out: ratatui's idea of the screen is wrong, so
    /// the next frame is drawn whole.
    stale: bool,
}

impl Live {
    /// Takes the terminal over (see [`Terminal::enter`]) and, in the
    /// foreground, starts reading keys.
    pub fn start(iface: String, attachment: String) -> anyhow::Result<Live> {
        let screen = Terminal::enter()?;
        let out = File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("stdout is not open")?,
        );
        let (width, height) = screen.size();
        let area = Rect::new(0, 0, width, height);
        let closing = Arc::new(AtomicBool::new(false));
        let holding = Arc::new(AtomicBool::new(false));
        let terminal = Ratatui::with_options(
            CrosstermBackend::new(FrameWriter {
                out,
                pending: Vec::new(),
                closing: Arc::clone(&closing),
                holding: Arc::clone(&holding),
            }),
            TerminalOptions {
                viewport: Viewport::Fixed(area),
            },
        )
        .context("setting up the dashboard on the terminal (use --plain for lines)")?;
        // A process in the background that reads its terminal is stopped
        // (SIGTTIN): there, no keys; Ctrl-C and SIGTERM still stop it.
        let (keys_reader, keys) = if screen.reads_keys {
            let (reader, keys) = KeyReader::start()?;
            (Some(reader), Some(keys))
        } else {
            (None, None)
        };
        Ok(Live {
            _keys_reader: keys_reader,
            keys,
            terminal,
            closing,
            holding,
            screen,
            board: Board::new(Snapshot::new(iface, attachment)),
            started: Instant::now(),
            drawn_at: None,
            area,
            stale: false,
        })
    }

    /// The next key pressed; never ready when keys are not read (or no
    /// longer can be), so it fits in a `select!` beside the run's timers.
    pub async fn next_key(&mut self) -> KeyEvent {
        match &mut self.keys {
            Some(keys) => match keys.recv().await {
                Some(key) => key,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// What the dashboard collects (it goes on while the screen is paused).
    pub fn snapshot(&mut self) -> &mut Snapshot {
        &mut self.board.snapshot
    }

    /// Applies a key (see [`Board::key`]).
    pub fn key(&mut self, key: KeyEvent) -> KeyOutcome {
        self.board.snapshot.uptime = self.started.elapsed();
        self.board.key(key)
    }

    /// Redraws at once, the whole frame; `clock` is the wall-clock time to
    /// show (a paused screen keeps its own). Called at every report and
    /// after a key: whatever else wrote on the terminal meanwhile (a
    /// warning on stderr, the shell while teardown was stopped by ^Z) is
    /// gone by the next report, as ratatui otherwise redraws only the cells
    /// it changed.
    pub fn draw(&mut self, clock: String) -> anyhow::Result<()> {
        self.render(clock, true)
    }

    /// Redraws if the last frame is a quarter of a second old, so new
    /// teardowns and the uptime move between reports: only what changed.
    pub fn draw_if_due(&mut self, clock: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.drawn_at.is_none_or(|at| at.elapsed() >= REDRAW) {
            self.render(clock(), false)
        } else {
            Ok(())
        }
    }

    /// Draws a frame, `whole` or only the cells that changed, in one write:
    /// a whole frame's clearing and drawing go out together, so the screen
    /// never flickers through blank.
    fn render(&mut self, clock: String, whole: bool) -> anyhow::Result<()> {
        let now = Instant::now();
        self.board.snapshot.uptime = now - self.started;
        self.board.snapshot.clock = clock;
        let (width, height) = self.screen.size();
        let area = Rect::new(0, 0, width, height);
        self.holding.store(true, Ordering::Relaxed);
        let mut drawn = Ok(());
        if whole || area != self.area || self.stale {
            // Clears the area and forgets the last frame: the next is whole.
            drawn = self.terminal.resize(area);
            self.area = area;
        }
        if drawn.is_ok() {
            let board = &self.board;
            drawn = self
                .terminal
                .draw(|frame| view::draw(frame, board.shown(), &board.view))
                .map(|_| ());
        }
        self.holding.store(false, Ordering::Relaxed);
        let flushed = self.terminal.backend_mut().flush();
        self.drawn_at = Some(now);
        // A frame that did not get out leaves ratatui wrong about the
        // screen: the next one is whole.
        let drawn = drawn.and(flushed);
        self.stale = drawn.is_err();
        drawn.context("drawing the dashboard")
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// Escape sequences: alternate screen, hidden cursor, no line wrap (a line
/// that is one character too wide must not scroll the frame), and back.
const ENTER: &str = "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[2J";
const LEAVE: &str = "\x1b[0m\x1b[?7h\x1b[?25h\x1b[?1049l";

/// Whether the screen is taken, so it is given back exactly once (by the
/// guard's Drop or, first, by the panic hook).
static SCREEN_TAKEN: AtomicBool = AtomicBool::new(false);
/// The terminal's settings before echo and line editing were turned off.
static SAVED_TERMIOS: Mutex<Option<libc::termios>> = Mutex::new(None);

fn give_back_screen() {
    if !SCREEN_TAKEN.swap(false, Ordering::SeqCst) {
        return;
    }
    if let Some(saved) = SAVED_TERMIOS.lock().ok().and_then(|mut s| s.take()) {
        // SAFETY: tcsetattr on stdout with settings tcgetattr returned for it.
        unsafe { libc::tcsetattr(libc::STDOUT_FILENO, libc::TCSANOW, &saved) };
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(LEAVE.as_bytes());
    let _ = out.flush();
}

/// Whether this process is in the terminal's foreground: only then may it
/// read the terminal or change its settings (others are stopped, by SIGTTIN
/// or SIGTTOU).
fn in_foreground() -> bool {
    // SAFETY: tcgetpgrp and getpgrp only read the process's and the
    // terminal's process groups.
    unsafe { libc::tcgetpgrp(libc::STDOUT_FILENO) == libc::getpgrp() }
}

/// Whether stdout is a terminal that can show the dashboard: not a pipe or
/// file, and not `TERM=dumb` (which does not move the cursor).
pub fn stdout_can_show_dashboard() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    let terminal = unsafe { libc::isatty(libc::STDOUT_FILENO) == 1 };
    terminal && std::env::var("TERM").map_or(true, |term| term != "dumb")
}

/// The screen, taken over while this guard lives. Dropping it gives the
/// terminal back as it was.
pub struct Terminal {
    /// In the foreground, with echo and line editing off: keys can be read
    /// one at a time.
    reads_keys: bool,
}

impl Terminal {
    pub fn enter() -> anyhow::Result<Terminal> {
        // A panic's message would be printed on the alternate screen and
        // vanish with it: give the screen back first, then report.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            give_back_screen();
            previous(info);
        }));
        SCREEN_TAKEN.store(true, Ordering::SeqCst);
        // Keystrokes would be echoed over the frame, and a key would reach
        // the dashboard only with Enter: echo and line editing go off. Not
        // the rest of raw mode: ^C and ^Z stay signals from the terminal to
        // the whole foreground job (a script or the demo that started
        // teardown stops with it, as before), and output processing stays.
        // Only the foreground process may change the terminal (others are
        // stopped by SIGTTOU), so a background run keeps it as it is.
        let mut reads_keys = false;
        // SAFETY: plain libc calls on stdout with a zeroed, then filled, termios.
        unsafe {
            if in_foreground() {
                let mut settings: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(libc::STDOUT_FILENO, &mut settings) == 0 {
                    if let Ok(mut saved) = SAVED_TERMIOS.lock() {
                        *saved = Some(settings);
                    }
                    settings.c_lflag &= !(libc::ECHO | libc::ICANON);
                    settings.c_cc[libc::VMIN] = 1;
                    settings.c_cc[libc::VTIME] = 0;
                    reads_keys =
                        libc::tcsetattr(libc::STDOUT_FILENO, libc::TCSANOW, &settings) == 0;
                }
            }
        }
        let terminal = Terminal { reads_keys };
        let mut out = std::io::stdout().lock();
        out.write_all(ENTER.as_bytes())
            .and_then(|()| out.flush())
            .context("setting up the dashboard on the terminal (use --plain for lines)")?;
        Ok(terminal)
    }

    /// Columns and rows: `COLUMNS` and `LINES` when set (as curses programs
    /// honour them), else the terminal's size, else 80 × 24. The dashboard
    /// draws on that many top rows; with `LINES` set, the rows below may
    /// belong to someone else (the demo's narration) and are left alone.
    pub fn size(&self) -> (u16, u16) {
        let from_env = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u16>().ok())
                .filter(|&v| v > 0)
        };
        // SAFETY: winsize is plain integers, for which all zeroes is valid.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills the winsize it is given, nothing else.
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
        let (cols, rows) = if ok && size.ws_col > 0 && size.ws_row > 0 {
            (size.ws_col, size.ws_row)
        } else {
            (80, 24)
        };
        (
            from_env("COLUMNS").unwrap_or(cols),
            from_env("LINES").unwrap_or(rows),
        )
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        give_back_screen();
    }
}

#[cfg(test)]
pub mod tests {
    use crossterm::event::{KeyCode, KeyModifiers};
    use teardown_common::parse::tcp_flags::{ACK, FIN, RST, SYN};

    use super::*;

    /// A teardown row as `Teardown::of` makes it, for a line and a kind.
    pub fn row(
        port: u16,
        conn_state: &'static str,
        close: CloseKind,
        established: bool,
    ) -> Teardown {
        Teardown {
            line: format!(
                "conn 192.0.2.1:{port} -> 192.0.2.2:8080 {conn_state:<6} {} 0.004s pkts 5/4 history ShADdFf",
                close.name()
            ),
            conn_state,
            close,
            established,
            duration_ns: 0,
            bytes: 0,
            seq: 0,
        }
    }

    impl Snapshot {
        pub fn push_test_row(&mut self, row: Teardown) {
            self.push_row(row);
        }
    }

    pub fn busy_snapshot() -> Snapshot {
        let mut snapshot = Snapshot {
            iface: "eth0".into(),
            attachment: "native XDP + TC egress".into(),
            uptime: Duration::from_secs(3725),
            clock: "14:02:11".into(),
            counters: vec![
                CounterFigure {
                    label: "pkts",
                    per_second: 12_400.0,
                    total: 118_734,
                },
                CounterFigure {
                    label: "syn",
                    per_second: 212.0,
                    total: 9_001,
                },
            ],
            flows: FlowFigures {
                tracked: 12,
                half_open: 3,
                ended: 120,
                ended_by_close: vec![("graceful".into(), 100), ("refused".into(), 20)],
                ended_by_conn_state: vec![("SF".into(), 100), ("REJ".into(), 20)],
                half_open_timeouts_by_port: vec![(8080, 12)],
                ..FlowFigures::default()
            },
            ..Snapshot::default()
        };
        for i in 0..40 {
            snapshot.push_row(row(40000 + i, "SF", CloseKind::Graceful, true));
        }
        snapshot
    }

    /// A record fed `packets`: (from the client, flags, seq, ack, payload),
    /// a millisecond apart.
    fn record(packets: &[(bool, u8, u32, u32, u32)]) -> Ended {
        let timed: Vec<_> = packets
            .iter()
            .enumerate()
            .map(|(i, &(from_a, flags, seq, ack, len))| {
                (from_a, flags, seq, ack, len, 1_000_000 * (i as u64 + 1))
            })
            .collect();
        crate::conn::tracker::tests::record(40000, &timed)
    }

    /// Real or debris is read from the record: the handshake, or talk both
    /// ways; not from the line.
    #[test]
    fn real_connections_and_debris_are_told_apart_by_the_record() {
        let (c, s) = (1000u32, 5000u32);
        let graceful = Teardown::of(&record(&[
            (true, SYN, c, 0, 0),
            (false, SYN | ACK, s, c + 1, 0),
            (true, ACK, c + 1, s + 1, 0),
            (true, ACK, c + 1, s + 1, 5),
            (false, ACK, s + 1, c + 6, 7),
            (true, FIN | ACK, c + 6, s + 8, 0),
            (false, FIN | ACK, s + 8, c + 7, 0),
            (true, ACK, c + 7, s + 9, 0),
        ]));
        assert_eq!(
            (graceful.conn_state, graceful.close),
            ("SF", CloseKind::Graceful)
        );
        assert!(graceful.established);
        assert_eq!(graceful.bytes, 12);
        assert!(graceful.duration_ns >= 6_000_000, "{graceful:?}");
        assert!(
            graceful
                .line
                .starts_with("conn 192.0.2.1:40000 -> 192.0.2.2:8080 SF")
        );

        let aborted = Teardown::of(&record(&[
            (true, SYN, c, 0, 0),
            (false, SYN | ACK, s, c + 1, 0),
            (true, ACK, c + 1, s + 1, 0),
            (false, RST, s + 1, 0, 0),
        ]));
        assert_eq!(aborted.close, CloseKind::Abort);
        assert!(aborted.established, "{aborted:?}");

        let rejected = Teardown::of(&record(&[
            (true, SYN, c, 0, 0),
            (false, RST | ACK, 0, c + 1, 0),
        ]));
        assert_eq!(rejected.conn_state, "REJ");
        assert!(!rejected.established);

        let unanswered = Teardown::of(&record(&[(true, SYN, c, 0, 0), (true, SYN, c, 0, 0)]));
        assert_eq!(unanswered.conn_state, "S0");
        assert!(!unanswered.established);

        // A SYN flood the host answers (SYN cookies): SYN, SYN-ACK, nothing.
        let answered_spoof = Teardown::of(&record(&[
            (true, SYN, c, 0, 0),
            (false, SYN | ACK, s, c + 1, 0),
        ]));
        assert!(!answered_spoof.established);

        // Picked up mid-stream (started before teardown): no handshake seen,
        // but both sides talk.
        let midstream = Teardown::of(&record(&[
            (true, ACK, c, s, 10),
            (false, ACK, s, c + 10, 20),
        ]));
        assert_eq!(midstream.conn_state, "OTH");
        assert!(midstream.established);
        let stray = Teardown::of(&record(&[(true, ACK, c, s, 10)]));
        assert!(!stray.established);
    }

    /// A flood's hundred thousand one-sided records leave every real
    /// connection in the list, and are counted whole.
    #[test]
    fn debris_never_pushes_real_connections_off() {
        let mut snapshot = Snapshot::default();
        for port in 0..5 {
            snapshot.push_row(row(port, "SF", CloseKind::Graceful, true));
        }
        for i in 0..100_000u32 {
            let state = if i % 10 == 0 { "REJ" } else { "S0" };
            let close = if i % 10 == 0 {
                CloseKind::Refused
            } else {
                CloseKind::HalfOpen
            };
            snapshot.push_row(row(10_000 + (i % 50_000) as u16, state, close, false));
        }
        snapshot.push_row(row(5, "RSTO", CloseKind::Abort, true));
        assert_eq!(snapshot.established.len(), 6);
        assert_eq!(snapshot.debris.len(), RECENT_TEARDOWNS_KEPT);
        assert_eq!(
            snapshot.debris(),
            (100_000, vec![("S0", 90_000), ("REJ", 10_000)])
        );
        // The newest real connection came after the whole flood.
        assert_eq!(snapshot.established.back().unwrap().seq, 100_005);
    }

    #[test]
    fn the_teardown_lists_are_bounded() {
        let mut snapshot = Snapshot::default();
        for i in 0..RECENT_TEARDOWNS_KEPT + 10 {
            snapshot.push_row(row(i as u16, "SF", CloseKind::Graceful, true));
            snapshot.push_row(row(i as u16, "S0", CloseKind::HalfOpen, false));
        }
        assert_eq!(snapshot.established.len(), RECENT_TEARDOWNS_KEPT);
        assert_eq!(snapshot.debris.len(), RECENT_TEARDOWNS_KEPT);
        assert!(
            snapshot
                .established
                .front()
                .unwrap()
                .line
                .contains(":10 ->")
        );
        assert_eq!(snapshot.debris().0, RECENT_TEARDOWNS_KEPT as u64 + 10);
        for _ in 0..ALERT_EVENTS_KEPT + 3 {
            snapshot.push_alert_event("alert".into());
        }
        assert_eq!(snapshot.alert_events.len(), ALERT_EVENTS_KEPT);
    }

    /// Paused, the screen shows the snapshot as it was while the figures
    /// go on being taken; unpaused, it shows them all.
    #[test]
    fn a_paused_board_freezes_the_screen_not_the_figures() {
        let press = |code| KeyEvent::new(code, KeyModifiers::NONE);
        let mut board = Board::new(busy_snapshot());
        assert_eq!(board.key(press(KeyCode::Char('p'))), KeyOutcome::Redraw);
        board
            .snapshot
            .push_row(row(1, "SF", CloseKind::Graceful, true));
        board.snapshot.flows.tracked = 99;
        assert_eq!(board.shown().established.len(), 40);
        assert_eq!(board.shown().flows.tracked, 12);
        assert_eq!(board.snapshot.established.len(), 41);
        // Sorting while paused changes the view, not what is frozen.
        board.key(press(KeyCode::Char('s')));
        assert_eq!(board.shown().flows.tracked, 12);
        board.key(press(KeyCode::Char(' ')));
        assert_eq!(board.shown().flows.tracked, 99);
        assert_eq!(board.shown().established.len(), 41);
        // A second pause freezes the figures of that moment.
        board.key(press(KeyCode::Char('p')));
        board.snapshot.flows.tracked = 100;
        assert_eq!(board.shown().flows.tracked, 99);
    }

    /// The figures of a report, as the dashboard keeps them.
    #[test]
    fn a_report_gives_its_figures() {
        let figures = crate::report::figures::tests::busy_figures();
        let mut snapshot = Snapshot::new("eth0".into(), "native XDP + TC egress".into());
        snapshot.show(&figures);
        assert_eq!(snapshot.counters.len(), ROW_COUNTERS.len());
        assert_eq!(
            snapshot.counters[0],
            CounterFigure {
                label: "pkts",
                per_second: 0.5,
                total: 1000,
            }
        );
        assert_eq!(snapshot.sent[0].total, 2000);
        assert_eq!(snapshot.flows.ended, 9);
        assert_eq!(
            snapshot.flows.ended_by_close,
            [("graceful".to_string(), 7), ("refused".to_string(), 2)]
        );
        assert_eq!(snapshot.flows.log_lines_lost, Some(12));
        assert_eq!(snapshot.flows.ipfix_records_lost, None, "no --ipfix");
        let mut fleet = figures.clone();
        fleet.lines_lost.0.extend([("ipfix", 3), ("alert_hook", 1)]);
        let mut with_fleet = Snapshot::new("eth0".into(), "native XDP".into());
        with_fleet.show(&fleet);
        assert_eq!(with_fleet.flows.ipfix_records_lost, Some(3));
        assert_eq!(with_fleet.flows.alert_hooks_failed, Some(1));
        assert_eq!(
            snapshot.flows.half_open_timeouts_by_port,
            [(8080, 12), (443, 3)]
        );
        assert_eq!(snapshot.flows.half_open_timeouts_other, 40);
        assert_eq!(snapshot.history.syn.len(), 1);
        // Ingress only, no log: no out rows, no log figure.
        let mut ingress = figures.clone();
        ingress.egress = None;
        ingress.lines_lost.0.pop();
        snapshot.show(&ingress);
        assert!(snapshot.sent.is_empty());
        assert_eq!(snapshot.flows.log_lines_lost, None);
        assert_eq!(snapshot.history.syn.len(), 2);
    }

    /// A whole frame goes out in one write at its end; what is written as
    /// the dashboard ends is dropped; a failed write leaves nothing behind.
    #[test]
    fn frames_go_out_whole_and_once() {
        use std::io::Write as _;
        let path = std::env::temp_dir().join(format!("teardown-frames-{}", std::process::id()));
        let file = File::create(&path).expect("temp file");
        let (closing, holding) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(true)),
        );
        let mut writer = FrameWriter {
            out: file,
            pending: Vec::new(),
            closing: Arc::clone(&closing),
            holding: Arc::clone(&holding),
        };
        let read = || std::fs::read_to_string(&path).expect("read back");
        writer.write_all(b"clear;").unwrap();
        writer.flush().unwrap();
        assert_eq!(read(), "", "held");
        writer.write_all(b"frame").unwrap();
        holding.store(false, Ordering::Relaxed);
        writer.flush().unwrap();
        assert_eq!(read(), "clear;frame");
        closing.store(true, Ordering::Relaxed);
        writer.write_all(b"show cursor").unwrap();
        writer.flush().unwrap();
        assert_eq!(read(), "clear;frame");
        let _ = std::fs::remove_file(&path);
        // A full device: the error comes back, and the frame is not kept
        // to come out later.
        let mut full = FrameWriter {
            out: File::options()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
            pending: Vec::new(),
            closing: Arc::new(AtomicBool::new(false)),
            holding: Arc::new(AtomicBool::new(false)),
        };
        full.write_all(b"frame").unwrap();
        assert!(full.flush().is_err());
        assert!(full.pending.is_empty());
    }

    #[test]
    fn uptime_reads_as_a_clock() {
        assert_eq!(uptime(Duration::from_secs(59)), "0:00:59");
        assert_eq!(uptime(Duration::from_secs(3725)), "1:02:05");
        assert_eq!(uptime(Duration::from_secs(90_061)), "1d 01:01:01");
    }

    #[test]
    fn the_kernels_reasons_have_rows_once_there_is_something_to_show() {
        let mut figures = crate::report::figures::tests::busy_figures();
        assert!(
            !flow_lines(&flow_figures(&figures))
                .iter()
                .any(|line| line.starts_with("resets"))
        );
        figures.reasons.resets_sent.insert("NO_SOCKET", 2);
        figures.reasons.resets_sent.insert("TCP_ABORT_ON_CLOSE", 5);
        figures.reasons.handshakes = Some(HandshakeDrops {
            listen_overflows: 28,
            listen_drops: 28,
            ..HandshakeDrops::default()
        });
        let lines = flow_lines(&flow_figures(&figures));
        assert!(
            lines.contains(
                &"resets    TCP_ABORT_ON_CLOSE 5, NO_SOCKET 2 (the kernel's reasons)".to_string()
            ),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"host      handshakes dropped 28 (listen overflows 28, SYN queue 0), SYN cookies sent 0".to_string()),
            "{lines:?}"
        );
    }

    #[test]
    fn counts_are_grouped_and_lines_cut_visibly() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(190_604), "190,604");
        assert_eq!(grouped(12_345_678), "12,345,678");
        assert_eq!(fit("abcdef", 3), "abc");
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("abcdefg", 6), "abc...");
        assert_eq!(fit("a\x1b[2Jb", 10), "a?[2Jb");
    }
}

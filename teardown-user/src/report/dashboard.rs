//! The live dashboard `teardown run` shows when its output is a terminal.
//!
//! Two layers: [`Snapshot`] is plain data (the figures of the latest interval,
//! the newest teardowns and alerts) and [`render`] turns it into exactly the
//! text that fits a `width` × `height` screen, with no terminal involved, so
//! it is unit-tested; [`Terminal`] is the thin part that owns the screen
//! (alternate screen, hidden cursor, no echo) and gives it back however the
//! run ends: normal exit, error, Ctrl-C, SIGTERM (both end the run loop) or
//! panic.

use std::{
    collections::VecDeque,
    io::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    report::figures::{Figures, Traffic},
    report::output::short_count,
    report::plain::ROW_COUNTERS,
};

/// Teardown lines kept for the "recent teardowns" list: more than any screen
/// shows, so a taller window fills at once.
const RECENT_TEARDOWNS_KEPT: usize = 256;

/// Alert events kept, and at most shown.
const ALERT_EVENTS_KEPT: usize = 64;
const ALERT_EVENTS_SHOWN: usize = 5;

/// Lines that start with this are alerts: [`Terminal::draw`] paints them in
/// reverse video, and they stay readable as plain text.
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
    pub lock_contended: u64,
    /// Records `--log` could not write (a full disk), when there is a log.
    pub log_lines_lost: Option<u64>,
    /// Half-open timeouts by responder port: the few with most, most
    /// first, and the sum of all the others (which, after a port sweep,
    /// may be thousands of ports).
    pub half_open_timeouts_by_port: Vec<(u16, u64)>,
    pub half_open_timeouts_other: u64,
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
    /// One line per ongoing alert, replaced wholesale by whoever tracks
    /// alerts; shown first, highlighted.
    pub active_alerts: Vec<String>,
    /// Newest last.
    alert_events: VecDeque<String>,
    /// Newest last.
    recent_teardowns: VecDeque<String>,
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

    /// Takes a report's figures: the counters and the flow table's.
    pub fn show(&mut self, figures: &Figures) {
        self.counters = counter_figures(&figures.received);
        self.sent = figures
            .egress
            .as_ref()
            .map(counter_figures)
            .unwrap_or_default();
        self.flows = flow_figures(figures);
    }

    /// Adds an ended connection (`Ended::human_line`).
    pub fn push_teardown(&mut self, line: String) {
        push_bounded(&mut self.recent_teardowns, line, RECENT_TEARDOWNS_KEPT);
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
    let most_first = |map: &std::collections::BTreeMap<&'static str, u64>| {
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
        syn_untracked: flows.syn_untracked,
        lock_contended: flows.lock_contended,
        half_open_timeouts_by_port: ports,
        half_open_timeouts_other: other_ports,
    }
}

fn push_bounded(list: &mut VecDeque<String>, line: String, keep: usize) {
    if list.len() == keep {
        list.pop_front();
    }
    list.push_back(line);
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
            "trouble   lost events {}, failed inserts {}, evicted {}, SYNs untracked {}, lock contended {}{}",
            flows.events_lost,
            flows.insert_failed,
            flows.evicted,
            flows.syn_untracked,
            flows.lock_contended,
            flows
                .log_lines_lost
                .map(|lost| format!(", log lines lost {lost}"))
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
    lines
}

/// The frame for `snapshot` on a `width` × `height` screen: at most
/// `height` lines of at most `width` characters, joined by `\n`.
///
/// Sections come in order of importance, so a short screen loses the least
/// important ones: the title (which counts active alerts, so even a one-line
/// screen shows them), the alerts, the counters, the flow table, the alert
/// log, then as many recent teardowns as fit, newest first.
pub fn render(snapshot: &Snapshot, width: usize, height: usize) -> String {
    if width == 0 || height == 0 {
        return String::new();
    }
    let mut lines: Vec<String> = Vec::with_capacity(height);
    let alerts = snapshot.active_alerts.len();
    let mut title = format!(
        "teardown  {} ({})  up {}  {} UTC",
        snapshot.iface,
        snapshot.attachment,
        uptime(snapshot.uptime),
        snapshot.clock
    );
    if alerts > 0 {
        title = format!(
            "{ALERT_MARK}{alerts} ALERT{}  {title}",
            if alerts == 1 { "" } else { "S" }
        );
    }
    lines.push(title);

    if alerts == 0 {
        lines.push("alerts    none active".to_string());
    } else {
        // Alerts come first but leave the counters in sight: at most a third
        // of the screen, the rest summed up in one line.
        let room = (height / 3).max(1);
        let shown = if alerts <= room { alerts } else { room - 1 };
        for alert in &snapshot.active_alerts[..shown] {
            lines.push(format!("{ALERT_MARK}{alert}"));
        }
        if shown < alerts {
            lines.push(format!(
                "{ALERT_MARK}... and {} more active alerts",
                alerts - shown
            ));
        }
    }
    lines.extend(counter_table(&snapshot.counters, &snapshot.sent));
    lines.extend(flow_lines(&snapshot.flows));
    if !snapshot.alert_events.is_empty() {
        lines.push("alert events, newest first".to_string());
        lines.extend(
            snapshot
                .alert_events
                .iter()
                .rev()
                .take(ALERT_EVENTS_SHOWN)
                .map(|line| format!("  {line}")),
        );
    }
    if snapshot.recent_teardowns.is_empty() {
        lines.push("recent teardowns: none yet".to_string());
    } else {
        lines.push("recent teardowns, newest first".to_string());
        let room = height.saturating_sub(lines.len());
        lines.extend(
            snapshot
                .recent_teardowns
                .iter()
                .rev()
                .take(room)
                .map(|line| format!("  {line}")),
        );
    }
    lines.truncate(height);
    lines
        .iter()
        .map(|line| fit(line, width))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How often the dashboard is redrawn between reports.
const REDRAW: Duration = Duration::from_millis(250);

/// The dashboard while it runs: the terminal, taken over until this is
/// dropped, and what it shows.
pub struct Live {
    terminal: Terminal,
    pub snapshot: Snapshot,
    started: Instant,
    drawn_at: Option<Instant>,
}

impl Live {
    /// Takes the terminal over (see [`Terminal::enter`]).
    pub fn start(iface: String, attachment: String) -> anyhow::Result<Live> {
        Ok(Live {
            terminal: Terminal::enter()?,
            snapshot: Snapshot::new(iface, attachment),
            started: Instant::now(),
            drawn_at: None,
        })
    }

    /// Redraws at once; `clock` is the wall-clock time to show.
    pub fn draw(&mut self, clock: String) -> anyhow::Result<()> {
        let now = Instant::now();
        self.snapshot.uptime = now - self.started;
        self.snapshot.clock = clock;
        let (width, height) = self.terminal.size();
        let frame = render(&self.snapshot, width, height);
        self.terminal.draw(&frame, height)?;
        self.drawn_at = Some(now);
        Ok(())
    }

    /// Redraws if the last frame is a quarter of a second old, so new
    /// teardowns and the uptime move between reports.
    pub fn draw_if_due(&mut self, clock: impl FnOnce() -> String) -> anyhow::Result<()> {
        if self.drawn_at.is_none_or(|at| at.elapsed() >= REDRAW) {
            self.draw(clock())
        } else {
            Ok(())
        }
    }
}

/// Escape sequences: alternate screen, hidden cursor, no line wrap (a line
/// that is one character too wide must not scroll the frame), and back.
const ENTER: &str = "\x1b[?1049h\x1b[?25l\x1b[?7l\x1b[2J";
const LEAVE: &str = "\x1b[?7h\x1b[?25h\x1b[?1049l";

/// Whether the screen is taken, so it is given back exactly once (by the
/// guard's Drop or, first, by the panic hook).
static SCREEN_TAKEN: AtomicBool = AtomicBool::new(false);
/// The terminal's settings before echo was turned off.
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
    _private: (),
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
        // Keystrokes would be echoed over the frame. Only the foreground
        // process may change the terminal (others are stopped by SIGTTOU),
        // so a background run just keeps the echo.
        // SAFETY: plain libc calls on stdout with a zeroed, then filled, termios.
        unsafe {
            if libc::tcgetpgrp(libc::STDOUT_FILENO) == libc::getpgrp() {
                let mut settings: libc::termios = std::mem::zeroed();
                if libc::tcgetattr(libc::STDOUT_FILENO, &mut settings) == 0 {
                    if let Ok(mut saved) = SAVED_TERMIOS.lock() {
                        *saved = Some(settings);
                    }
                    settings.c_lflag &= !libc::ECHO;
                    libc::tcsetattr(libc::STDOUT_FILENO, libc::TCSANOW, &settings);
                }
            }
        }
        let terminal = Terminal { _private: () };
        let mut out = std::io::stdout().lock();
        out.write_all(ENTER.as_bytes())
            .and_then(|()| out.flush())
            .context("setting up the dashboard on the terminal (use --plain for lines)")?;
        Ok(terminal)
    }

    /// Columns and rows: `COLUMNS` and `LINES` when set (as curses programs
    /// honour them), else the terminal's size, else 80 × 24.
    pub fn size(&self) -> (usize, usize) {
        let from_env = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&v| v > 0)
        };
        // SAFETY: winsize is plain integers, for which all zeroes is valid.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ fills the winsize it is given, nothing else.
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
        let (cols, rows) = if ok && size.ws_col > 0 && size.ws_row > 0 {
            (size.ws_col as usize, size.ws_row as usize)
        } else {
            (80, 24)
        };
        (
            from_env("COLUMNS").unwrap_or(cols),
            from_env("LINES").unwrap_or(rows),
        )
    }

    /// Draws a frame from [`render`] on the top `height` rows: each row is
    /// cleared and rewritten in place, in one write, so the screen never
    /// flickers through blank. Rows below `height` are left alone (with
    /// `LINES` set they may belong to someone else).
    pub fn draw(&mut self, frame: &str, height: usize) -> anyhow::Result<()> {
        let mut buffer = String::with_capacity(frame.len() + 16 * height);
        let mut lines = frame.split('\n');
        for row in 1..=height {
            buffer.push_str(&format!("\x1b[{row};1H\x1b[2K"));
            match lines.next() {
                // Bold, reverse video: alerts stand out on any colour scheme.
                Some(line) if line.starts_with(ALERT_MARK) => {
                    buffer.push_str("\x1b[1;7m");
                    buffer.push_str(line);
                    buffer.push_str("\x1b[0m");
                }
                Some(line) => buffer.push_str(line),
                None => {}
            }
        }
        let mut out = std::io::stdout().lock();
        out.write_all(buffer.as_bytes())
            .and_then(|()| out.flush())
            .context("drawing the dashboard")
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        give_back_screen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy_snapshot() -> Snapshot {
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
            snapshot.push_teardown(format!(
                "conn 192.0.2.1:{} -> 192.0.2.2:8080 SF     graceful by orig 0.004s pkts 5/4 history ShADdFf",
                40000 + i
            ));
        }
        snapshot
    }

    fn assert_fits(frame: &str, width: usize, height: usize) {
        assert!(frame.lines().count() <= height, "too many lines:\n{frame}");
        for line in frame.lines() {
            assert!(
                line.chars().count() <= width,
                "line wider than {width}: {line:?}"
            );
        }
    }

    #[test]
    fn a_frame_fits_the_screen_and_fills_it_with_teardowns() {
        let snapshot = busy_snapshot();
        for (width, height) in [(80, 24), (132, 50), (40, 10)] {
            let frame = render(&snapshot, width, height);
            assert_fits(&frame, width, height);
            // 40 teardowns are more than fit: the screen is used to the last row.
            assert_eq!(frame.lines().count(), height, "{frame}");
        }
        // Fewer than fit: all of them, and no padding.
        let frame = render(&snapshot, 200, 100);
        assert_fits(&frame, 200, 100);
        assert_eq!(
            frame.lines().filter(|l| l.starts_with("  conn ")).count(),
            40
        );
        let frame = render(&snapshot, 120, 30);
        assert!(frame.starts_with("teardown  eth0 (native XDP + TC egress)  up 1:02:05"));
        assert!(frame.contains("12.4k"), "{frame}");
        assert!(frame.contains("118734"), "{frame}");
        assert!(frame.contains("graceful 100, refused 20"), "{frame}");
        assert!(frame.contains("SF 100, REJ 20"), "{frame}");
        assert!(
            frame.contains("half-open timeouts by port 8080:12"),
            "{frame}"
        );
        // After a sweep: the few busiest ports, the rest in one figure.
        let mut swept = snapshot.clone();
        swept.flows.half_open_timeouts_by_port = vec![(8080, 12), (443, 3)];
        swept.flows.half_open_timeouts_other = 58_690;
        let frame_swept = render(&swept, 120, 30);
        assert!(
            frame_swept.contains("half-open timeouts by port 8080:12 443:3 other:58690\n"),
            "{frame_swept}"
        );
        // Newest first.
        let first = frame.lines().position(|l| l.contains(":40039 ->"));
        let second = frame.lines().position(|l| l.contains(":40038 ->"));
        assert!(first.is_some() && first < second, "{frame}");
    }

    #[test]
    fn sent_counters_stand_below_received_ones() {
        let mut snapshot = busy_snapshot();
        snapshot.counters = vec![
            CounterFigure {
                label: "syn",
                per_second: 40.0,
                total: 400,
            },
            CounterFigure {
                label: "synack",
                per_second: 0.0,
                total: 0,
            },
        ];
        snapshot.sent = vec![
            CounterFigure {
                label: "syn",
                per_second: 0.0,
                total: 0,
            },
            CounterFigure {
                label: "synack",
                per_second: 38.0,
                total: 390,
            },
        ];
        snapshot.flows.lock_contended = 3;
        snapshot.flows.log_lines_lost = Some(7);
        let frame = render(&snapshot, 80, 24);
        let lines: Vec<&str> = frame.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.split_whitespace().eq(["syn", "synack"]))
            .expect("the counters' header");
        assert!(
            lines[header + 1]
                .split_whitespace()
                .eq(["in", "/s", "40", "0"]),
            "{frame}"
        );
        assert!(
            lines[header + 2]
                .split_whitespace()
                .eq(["in", "total", "400", "0"]),
            "{frame}"
        );
        assert!(
            lines[header + 3]
                .split_whitespace()
                .eq(["out", "/s", "0", "38"]),
            "{frame}"
        );
        assert!(
            lines[header + 4]
                .split_whitespace()
                .eq(["out", "total", "0", "390"]),
            "{frame}"
        );
        // Columns line up: SYN-ACKs out under the synack label.
        let column_end = lines[header].find("synack").unwrap() + "synack".len();
        assert_eq!(
            lines[header + 4].find("390").unwrap() + 3,
            column_end,
            "{frame}"
        );
        let wide = render(&snapshot, 140, 24);
        assert!(
            wide.contains("SYNs untracked 0, lock contended 3, log lines lost 7"),
            "{wide}"
        );
    }

    #[test]
    fn long_lines_are_cut_visibly() {
        let snapshot = busy_snapshot();
        let frame = render(&snapshot, 30, 24);
        assert_fits(&frame, 30, 24);
        let teardown = frame
            .lines()
            .find(|line| line.starts_with("  conn "))
            .expect("a teardown line");
        assert_eq!(teardown, "  conn 192.0.2.1:40039 -> 1...");
        assert_eq!(fit("abcdef", 3), "abc");
        assert_eq!(fit("abcdef", 6), "abcdef");
        assert_eq!(fit("a\x1b[2Jb", 10), "a?[2Jb");
    }

    #[test]
    fn alerts_come_first_and_are_marked() {
        let mut snapshot = busy_snapshot();
        snapshot.active_alerts = vec![
            "SYN FLOOD start 10.99.0.2:8080 [syn rate]  42.1k SYN/s".into(),
            "SYN FLOOD start * (all destinations)".into(),
        ];
        snapshot.push_alert_event("SYN FLOOD start 10.99.0.2:8080".into());
        snapshot.push_alert_event("SYN FLOOD end 10.99.0.2:8081 after 12.0s".into());
        let frame = render(&snapshot, 80, 24);
        let lines: Vec<&str> = frame.lines().collect();
        assert!(lines[0].starts_with("!! 2 ALERTS  teardown"), "{frame}");
        assert!(lines[1].starts_with("!! SYN FLOOD start 10.99.0.2:8080"));
        assert!(lines[2].starts_with("!! SYN FLOOD start * (all"));
        let log = lines
            .iter()
            .position(|l| *l == "alert events, newest first")
            .expect("the alert log");
        assert!(lines[log + 1].contains("end 10.99.0.2:8081"), "{frame}");
        assert!(lines[log + 2].contains("start 10.99.0.2:8080"), "{frame}");

        // Many alerts take at most a third of the screen, and say how many are hidden.
        snapshot.active_alerts = (0..30).map(|i| format!("alert {i}")).collect();
        let frame = render(&snapshot, 80, 24);
        assert_fits(&frame, 80, 24);
        let marked = frame.lines().filter(|l| l.starts_with(ALERT_MARK)).count();
        assert_eq!(marked, 1 + 8, "{frame}");
        assert!(
            frame.contains("!! ... and 23 more active alerts"),
            "{frame}"
        );
        assert!(frame.contains("per second"), "{frame}");
    }

    #[test]
    fn tiny_screens_keep_the_most_important_lines() {
        let mut snapshot = busy_snapshot();
        assert_eq!(render(&snapshot, 0, 24), "");
        assert_eq!(render(&snapshot, 80, 0), "");
        snapshot.active_alerts = vec!["SYN FLOOD start 10.99.0.2:8080".into()];
        // One row: the title, which counts the alerts.
        assert_eq!(render(&snapshot, 12, 1), "!! 1 ALER...");
        let frame = render(&snapshot, 1, 3);
        assert_fits(&frame, 1, 3);
        for (width, height) in [(1, 1), (2, 2), (5, 3), (3, 100), (1000, 2)] {
            assert_fits(&render(&snapshot, width, height), width, height);
        }
        // Three rows: title, alert, the counters' heading.
        let frame = render(&snapshot, 80, 3);
        assert_eq!(frame.lines().count(), 3);
        assert!(frame.lines().nth(1).unwrap().starts_with("!! SYN FLOOD"));
    }

    #[test]
    fn an_empty_snapshot_renders() {
        let frame = render(&Snapshot::default(), 80, 24);
        assert_fits(&frame, 80, 24);
        assert!(frame.contains("waiting for the first interval"), "{frame}");
        assert!(frame.contains("alerts    none active"), "{frame}");
        assert!(frame.contains("recent teardowns: none yet"), "{frame}");
    }

    #[test]
    fn the_teardown_list_is_bounded() {
        let mut snapshot = Snapshot::default();
        for i in 0..RECENT_TEARDOWNS_KEPT + 10 {
            snapshot.push_teardown(i.to_string());
        }
        assert_eq!(snapshot.recent_teardowns.len(), RECENT_TEARDOWNS_KEPT);
        assert_eq!(snapshot.recent_teardowns.front().unwrap(), "10");
    }

    /// The figures of a report, as the dashboard shows them.
    #[test]
    fn a_report_shows_its_figures() {
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
        assert_eq!(
            snapshot.flows.half_open_timeouts_by_port,
            [(8080, 12), (443, 3)]
        );
        assert_eq!(snapshot.flows.half_open_timeouts_other, 40);
        let frame = render(&snapshot, 140, 24);
        assert!(frame.contains("in /s"), "{frame}");
        assert!(
            frame.contains("flows     3 tracked, 1 half-open, 9 ended\n"),
            "{frame}"
        );
        assert!(
            frame.contains("lock contended 5, log lines lost 12\n"),
            "{frame}"
        );
        assert!(
            frame.contains("half-open timeouts by port 8080:12 443:3 other:40\n"),
            "{frame}"
        );
        // Ingress only, no log: no out rows, no log figure.
        let mut ingress = figures.clone();
        ingress.egress = None;
        ingress.lines_lost.0.pop();
        snapshot.show(&ingress);
        assert!(snapshot.sent.is_empty());
        assert_eq!(snapshot.flows.log_lines_lost, None);
        assert!(render(&snapshot, 140, 24).contains("per second"));
    }

    #[test]
    fn uptime_reads_as_a_clock() {
        assert_eq!(uptime(Duration::from_secs(59)), "0:00:59");
        assert_eq!(uptime(Duration::from_secs(3725)), "1:02:05");
        assert_eq!(uptime(Duration::from_secs(90_061)), "1d 01:01:01");
    }
}

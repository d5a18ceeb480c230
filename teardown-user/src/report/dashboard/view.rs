//! The dashboard's frame: a [`Snapshot`] and the user's [`ViewState`] drawn
//! into a ratatui [`Frame`], whatever its size (a one-row screen shows the
//! title, which counts the alerts). No terminal here: the tests draw on
//! ratatui's `TestBackend` and read the buffer back.
//!
//! Rows come in order of importance, so a short screen loses the least
//! important ones: the title, the active alerts (reverse video, red), the
//! counters, the flow table, the sparklines of the last minutes, the alert
//! log, then as many teardowns as fit. The teardown list shows real
//! connections, coloured by how they closed; a flood's one-sided debris is
//! one line of counts there and, dimmed, its newest few records in at most
//! a quarter of the pane while real ones fill the rest (the `f` key lists
//! it alone).

use ratatui::{
    Frame,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph, Sparkline},
};
use teardown_common::conn::CloseKind;

use super::{
    ALERT_EVENTS_SHOWN, ALERT_MARK, Snapshot, Teardown, counter_table, fit, flow_lines, grouped,
    history::Series,
    keys::{Filter, HELP, Sort, ViewState},
    uptime,
};
use crate::report::output::short_count;

/// The label before each sparkline: name, latest value, peak kept.
const SPARK_LABEL: usize = 29;

/// Rows the teardown list keeps, at least, before the sparklines are shown.
const TEARDOWN_ROWS_BEFORE_SPARKLINES: usize = 4;

/// Alerts: red, reverse video, bold; readable on any colour scheme.
pub fn alert_style() -> Style {
    Style::new()
        .fg(Color::Red)
        .add_modifier(Modifier::REVERSED | Modifier::BOLD)
}

/// The colour of a teardown row: how the connection closed. Debris is dim
/// besides.
pub fn close_style(row: &Teardown) -> Style {
    let colour = match row.close {
        CloseKind::Graceful => Color::Green,
        CloseKind::Simultaneous => Color::Cyan,
        CloseKind::HalfClosed => Color::Yellow,
        CloseKind::Abort => Color::Red,
        CloseKind::Refused => Color::Magenta,
        CloseKind::HalfOpen => Color::DarkGray,
        CloseKind::Idle => Color::Blue,
        CloseKind::Open => Color::Reset,
    };
    let style = Style::new().fg(colour);
    if row.established {
        style
    } else {
        style.add_modifier(Modifier::DIM)
    }
}

/// One row of the frame.
enum Row<'a> {
    Text(Line<'static>),
    Spark {
        label: String,
        series: &'a Series,
        /// The scale's top: SYN and SYN-ACK share one, so their heights
        /// compare.
        max: u64,
        style: Style,
    },
}

/// `spans` cut to `width` characters as [`fit`] cuts a line (ending in
/// `...`), each part keeping its style.
fn fitted(spans: Vec<(String, Style)>, width: usize) -> Line<'static> {
    let text: String = spans.iter().map(|(text, _)| text.as_str()).collect();
    let cut: Vec<char> = fit(&text, width).chars().collect();
    let mut line = Vec::with_capacity(spans.len());
    let mut at = 0;
    for (text, style) in spans {
        let end = (at + text.chars().count()).min(cut.len());
        if at < end {
            line.push(Span::styled(cut[at..end].iter().collect::<String>(), style));
        }
        at = end;
    }
    Line::from(line)
}

fn plain(text: impl Into<String>, width: usize) -> Row<'static> {
    Row::Text(fitted(vec![(text.into(), Style::new())], width))
}

fn styled(text: impl Into<String>, style: Style, width: usize) -> Row<'static> {
    Row::Text(fitted(vec![(text.into(), style)], width))
}

fn title(snapshot: &Snapshot, state: &ViewState, width: usize) -> Row<'static> {
    let alerts = snapshot.active_alerts.len();
    let mut spans = Vec::new();
    let base = if alerts > 0 {
        spans.push((
            format!(
                "{ALERT_MARK}{alerts} ALERT{}  ",
                if alerts == 1 { "" } else { "S" }
            ),
            alert_style(),
        ));
        alert_style()
    } else {
        Style::new().add_modifier(Modifier::BOLD)
    };
    if state.paused {
        spans.push((
            " PAUSED ".to_string(),
            Style::new()
                .fg(Color::Yellow)
                .add_modifier(Modifier::REVERSED | Modifier::BOLD),
        ));
        spans.push(("  ".to_string(), Style::new()));
    }
    spans.push((
        format!(
            "teardown  {} ({})  up {}  {} UTC",
            snapshot.iface,
            snapshot.attachment,
            uptime(snapshot.uptime),
            snapshot.clock
        ),
        base,
    ));
    spans.push((
        "  ? keys".to_string(),
        Style::new().add_modifier(Modifier::DIM),
    ));
    Row::Text(fitted(spans, width))
}

fn sparkline_rows(snapshot: &Snapshot) -> Vec<Row<'_>> {
    let history = &snapshot.history;
    let handshake = history.syn.peak().max(history.syn_ack.peak());
    [
        ("syn/s", &history.syn, handshake, Color::Yellow),
        ("synack/s", &history.syn_ack, handshake, Color::Green),
        ("rst/s", &history.rst, history.rst.peak(), Color::Red),
        (
            "half-open",
            &history.half_open,
            history.half_open.peak(),
            Color::Magenta,
        ),
    ]
    .into_iter()
    .map(|(name, series, max, colour)| Row::Spark {
        label: format!(
            "{name:<10}{:>6} peak {:>6} ",
            short_count(series.current() as f64),
            short_count(series.peak() as f64)
        ),
        series,
        max,
        style: Style::new().fg(colour),
    })
    .collect()
}

/// The teardown list's heading, which says its sort and filter.
fn teardown_heading(state: &ViewState) -> String {
    let order = match state.sort {
        Sort::Newest => "newest first",
        Sort::Duration => "longest first",
        Sort::Bytes => "most bytes first",
        Sort::State => "by conn_state",
    };
    match state.filter {
        Filter::All => format!("recent teardowns, {order}"),
        filter => format!("recent teardowns, {order}, only {}", filter.name()),
    }
}

/// The debris line: how many one-sided records the list leaves out.
fn debris_line(snapshot: &Snapshot) -> Option<String> {
    let (total, by_state) = snapshot.debris();
    if total == 0 {
        return None;
    }
    let states: Vec<String> = by_state
        .iter()
        .take(4)
        .map(|(state, count)| format!("{state} {}", grouped(*count)))
        .collect();
    let (summarised, _) = snapshot.summaries();
    let summarised = if summarised > 0 {
        format!(", {} of them in flood summaries", grouped(summarised))
    } else {
        String::new()
    };
    Some(format!(
        "  + {} one-sided, no handshake ({}){summarised}: the newest dimmed below; f lists them",
        grouped(total),
        states.join(", ")
    ))
}

/// Flood summaries shown under the debris line, at most.
const SUMMARIES_SHOWN: usize = 2;

/// Every row of the frame, at most `height`, each at most `width` wide.
fn rows<'a>(
    snapshot: &'a Snapshot,
    state: &ViewState,
    width: usize,
    height: usize,
) -> Vec<Row<'a>> {
    let mut rows = Vec::with_capacity(height);
    if width == 0 || height == 0 {
        return rows;
    }
    rows.push(title(snapshot, state, width));
    let alerts = snapshot.active_alerts.len();
    if alerts == 0 {
        rows.push(plain("alerts    none active", width));
    } else {
        // Alerts come first but leave the counters in sight: at most a third
        // of the screen, the rest summed up in one line.
        let room = (height / 3).max(1);
        let shown = if alerts <= room { alerts } else { room - 1 };
        for alert in &snapshot.active_alerts[..shown] {
            rows.push(styled(format!("{ALERT_MARK}{alert}"), alert_style(), width));
        }
        if shown < alerts {
            rows.push(styled(
                format!("{ALERT_MARK}... and {} more active alerts", alerts - shown),
                alert_style(),
                width,
            ));
        }
    }
    for line in counter_table(&snapshot.counters, &snapshot.sent) {
        rows.push(plain(line, width));
    }
    for line in flow_lines(&snapshot.flows) {
        rows.push(plain(line, width));
    }
    let sparklines = sparkline_rows(snapshot);
    if snapshot.history.syn.len() > 0
        && rows.len() + sparklines.len() + TEARDOWN_ROWS_BEFORE_SPARKLINES <= height
    {
        rows.extend(sparklines);
    }
    if !snapshot.alert_events.is_empty() {
        rows.push(plain("alert events, newest first", width));
        for line in snapshot.alert_events.iter().rev().take(ALERT_EVENTS_SHOWN) {
            rows.push(plain(format!("  {line}"), width));
        }
    }
    let mut list: Vec<&Teardown> = snapshot
        .teardowns()
        .filter(|row| state.filter.shows(row))
        .collect();
    state.sort.apply(&mut list);
    // Under "all", debris is a count line and the newest few records,
    // dimmed, below the real connections: at most a quarter of the pane
    // while real ones fill the rest, more only when they do not.
    let mut debris: Vec<&Teardown> = Vec::new();
    let mut debris_count = None;
    if state.filter == Filter::All {
        debris = snapshot.debris.iter().collect();
        state.sort.apply(&mut debris);
        debris_count = debris_line(snapshot);
    }
    let default_list = state.filter == Filter::All && state.sort == Sort::Newest;
    if list.is_empty() && debris_count.is_none() && default_list {
        rows.push(plain("recent teardowns: none yet", width));
    } else {
        rows.push(plain(teardown_heading(state), width));
        if let Some(count) = debris_count {
            rows.push(styled(
                count,
                Style::new().add_modifier(Modifier::DIM),
                width,
            ));
            // The newest flood summaries: what the records not listed one
            // by one amount to, per target.
            for line in snapshot.summaries().1.take(SUMMARIES_SHOWN) {
                rows.push(styled(
                    format!("  {line}"),
                    Style::new().add_modifier(Modifier::DIM),
                    width,
                ));
            }
        }
        if list.is_empty() && debris.is_empty() {
            rows.push(plain("  none", width));
        }
        let room = height.saturating_sub(rows.len());
        let debris_share = if room >= 4 { room / 4 } else { 0 }.min(debris.len());
        let real = list.len().min(room - debris_share);
        let debris_shown = debris.len().min(room - real);
        for row in list
            .into_iter()
            .take(real)
            .chain(debris.into_iter().take(debris_shown))
        {
            rows.push(styled(format!("  {}", row.line), close_style(row), width));
        }
    }
    rows.truncate(height);
    rows
}

/// The help overlay: the keys, in a box in the middle of the screen.
fn help(frame: &mut Frame, area: Rect) {
    let key = Style::new().add_modifier(Modifier::BOLD);
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::styled(format!(" {keys:<9} "), key),
                Span::raw(*what),
            ])
        })
        .collect();
    let widest = lines.iter().map(Line::width).max().unwrap_or(0);
    let width = (widest as u16 + 2).min(area.width);
    let height = (lines.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys (? closes) ")),
        rect,
    );
}

/// Draws `snapshot` as `state` asks on the whole of `frame`.
pub fn draw(frame: &mut Frame, snapshot: &Snapshot, state: &ViewState) {
    let area = frame.area();
    let width = usize::from(area.width);
    for (y, row) in rows(snapshot, state, width, usize::from(area.height))
        .into_iter()
        .enumerate()
    {
        let line_area = Rect::new(area.x, area.y + y as u16, area.width, 1);
        match row {
            Row::Text(line) => frame.render_widget(line, line_area),
            Row::Spark {
                label,
                series,
                max,
                style,
            } => {
                let label_width = SPARK_LABEL.min(width);
                frame.render_widget(Line::from(fit(&label, label_width)), line_area);
                let room = width - label_width;
                if room > 0 {
                    let data = series.fitted(room);
                    frame.render_widget(
                        Sparkline::default()
                            .data(&data)
                            .max(max.max(1))
                            .style(style),
                        Rect::new(area.x + label_width as u16, line_area.y, room as u16, 1),
                    );
                }
            }
        }
    }
    if state.help && area.width > 0 && area.height > 0 {
        help(frame, area);
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend, buffer::Buffer};

    use super::*;
    use crate::report::dashboard::{
        CounterFigure, KeyOutcome, ROW_COUNTERS,
        tests::{busy_snapshot, row},
    };

    /// The frame on a `width` × `height` screen.
    fn render_buffer(snapshot: &Snapshot, state: &ViewState, width: u16, height: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("a test terminal");
        terminal
            .draw(|frame| draw(frame, snapshot, state))
            .expect("drawn");
        terminal.backend().buffer().clone()
    }

    /// The frame's text: its rows, trailing blanks cut, joined by `\n`,
    /// trailing blank rows dropped.
    fn text(buffer: &Buffer) -> String {
        let area = buffer.area;
        let mut rows: Vec<String> = (0..area.height)
            .map(|y| {
                (0..area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect();
        while rows.last().is_some_and(String::is_empty) {
            rows.pop();
        }
        rows.join("\n")
    }

    fn render(snapshot: &Snapshot, width: u16, height: u16) -> String {
        text(&render_buffer(
            snapshot,
            &ViewState::default(),
            width,
            height,
        ))
    }

    fn render_with(snapshot: &Snapshot, state: ViewState, width: u16, height: u16) -> String {
        text(&render_buffer(snapshot, &state, width, height))
    }

    /// The row whose text starts with `start`, and its cells.
    fn row_style(buffer: &Buffer, start: &str) -> Style {
        let frame = text(buffer);
        let y = frame
            .lines()
            .position(|line| line.starts_with(start))
            .unwrap_or_else(|| panic!("no row starting {start:?}:\n{frame}"));
        // The first letter past the indent carries the row's style.
        let x = start.len() - start.trim_start().len();
        buffer[(x as u16, y as u16)].style()
    }

    #[test]
    fn a_frame_fills_the_screen_with_teardowns() {
        let snapshot = busy_snapshot();
        for (width, height) in [(80, 24), (132, 50), (40, 10)] {
            let frame = render(&snapshot, width, height);
            // 40 teardowns are more than fit: the screen is used to the last row.
            assert_eq!(frame.lines().count(), usize::from(height), "{frame}");
            assert!(
                frame
                    .lines()
                    .all(|l| l.chars().count() <= usize::from(width))
            );
        }
        // Fewer than fit: all of them.
        let frame = render(&snapshot, 200, 100);
        assert_eq!(
            frame.lines().filter(|l| l.starts_with("  conn ")).count(),
            40
        );
        let frame = render(&snapshot, 120, 30);
        assert!(
            frame.starts_with(
                "teardown  eth0 (native XDP + TC egress)  up 1:02:05  14:02:11 UTC  ? keys"
            ),
            "{frame}"
        );
        assert!(frame.contains("12.4k"), "{frame}");
        assert!(frame.contains("118734"), "{frame}");
        assert!(
            frame.contains("closes    graceful 100, refused 20"),
            "{frame}"
        );
        assert!(frame.contains("states    SF 100, REJ 20"), "{frame}");
        assert!(
            frame.contains("\nhalf-open timeouts by port 8080:12\n"),
            "{frame}"
        );
        assert!(
            frame.contains("\nrecent teardowns, newest first\n"),
            "{frame}"
        );
        // After a sweep: the few busiest ports, the rest in one figure.
        let mut swept = snapshot.clone();
        swept.flows.half_open_timeouts_by_port = vec![(8080, 12), (443, 3)];
        swept.flows.half_open_timeouts_other = 58_690;
        let frame_swept = render(&swept, 120, 30);
        assert!(
            frame_swept.contains("\nhalf-open timeouts by port 8080:12 443:3 other:58690\n"),
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
        let figure = |label, per_second, total| CounterFigure {
            label,
            per_second,
            total,
        };
        snapshot.counters = vec![figure("syn", 40.0, 400), figure("synack", 0.0, 0)];
        snapshot.sent = vec![figure("syn", 0.0, 0), figure("synack", 38.0, 390)];
        snapshot.flows.lock_contended = 3;
        snapshot.flows.log_lines_lost = Some(7);
        let frame = render(&snapshot, 80, 24);
        let lines: Vec<&str> = frame.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.split_whitespace().eq(["syn", "synack"]))
            .expect("the counters' header");
        for (offset, words) in [
            (1, ["in", "/s", "40", "0"]),
            (2, ["in", "total", "400", "0"]),
            (3, ["out", "/s", "0", "38"]),
            (4, ["out", "total", "0", "390"]),
        ] {
            assert!(
                lines[header + offset].split_whitespace().eq(words),
                "{frame}"
            );
        }
        // Columns line up: SYN-ACKs out under the synack label.
        let column_end = lines[header].find("synack").unwrap() + "synack".len();
        assert_eq!(
            lines[header + 4].find("390").unwrap() + 3,
            column_end,
            "{frame}"
        );
        let wide = render(&snapshot, 140, 24);
        assert!(
            wide.contains("SYNs untracked 0, lock contended 3, log lines lost 7\n"),
            "{wide}"
        );
    }

    #[test]
    fn long_lines_are_cut_visibly() {
        let frame = render(&busy_snapshot(), 30, 24);
        let teardown = frame
            .lines()
            .find(|line| line.starts_with("  conn "))
            .expect("a teardown line");
        assert_eq!(teardown, "  conn 192.0.2.1:40039 -> 1...");
        // Control characters in a line cannot move the cursor.
        let mut snapshot = busy_snapshot();
        snapshot.active_alerts = vec!["evil\x1b[2Jalert".into()];
        assert!(render(&snapshot, 80, 24).contains("!! evil?[2Jalert"));
    }

    #[test]
    fn alerts_come_first_in_red_reverse_video() {
        let mut snapshot = busy_snapshot();
        snapshot.active_alerts = vec![
            "SYN FLOOD start 10.99.0.2:8080 [syn rate]  42.1k SYN/s".into(),
            "SYN FLOOD start * (all destinations)".into(),
        ];
        snapshot.push_alert_event("SYN FLOOD start 10.99.0.2:8080".into());
        snapshot.push_alert_event("SYN FLOOD end 10.99.0.2:8081 after 12.0s".into());
        let buffer = render_buffer(&snapshot, &ViewState::default(), 80, 30);
        let frame = text(&buffer);
        let lines: Vec<&str> = frame.lines().collect();
        assert!(lines[0].starts_with("!! 2 ALERTS  teardown"), "{frame}");
        assert!(lines[1].starts_with("!! SYN FLOOD start 10.99.0.2:8080"));
        assert!(lines[2].starts_with("!! SYN FLOOD start * (all"));
        for start in ["!! 2 ALERTS", "!! SYN FLOOD start 10.99"] {
            let style = row_style(&buffer, start);
            assert_eq!(style.fg, Some(Color::Red), "{start}");
            assert!(style.add_modifier.contains(Modifier::REVERSED), "{start}");
        }
        let log = lines
            .iter()
            .position(|l| *l == "alert events, newest first")
            .expect("the alert log");
        assert!(lines[log + 1].contains("end 10.99.0.2:8081"), "{frame}");
        assert!(lines[log + 2].contains("start 10.99.0.2:8080"), "{frame}");

        // Many alerts take at most a third of the screen, and say how many are hidden.
        snapshot.active_alerts = (0..30).map(|i| format!("alert {i}")).collect();
        let frame = render(&snapshot, 80, 24);
        let marked = frame.lines().filter(|l| l.starts_with(ALERT_MARK)).count();
        assert_eq!(marked, 1 + 8, "{frame}");
        assert!(
            frame.contains("!! ... and 23 more active alerts"),
            "{frame}"
        );
        assert!(frame.contains("per second"), "{frame}");
    }

    #[test]
    fn tiny_screens_keep_the_most_important_rows_and_never_panic() {
        let mut snapshot = busy_snapshot();
        snapshot.active_alerts = vec!["SYN FLOOD start 10.99.0.2:8080".into()];
        for i in 0..50 {
            snapshot.history.syn.push(f64::from(i * 1000));
        }
        // One row: the title, which counts the alerts.
        assert_eq!(render(&snapshot, 12, 1), "!! 1 ALER...");
        // Three rows: title, alert, the counters' heading.
        let frame = render(&snapshot, 80, 3);
        assert_eq!(frame.lines().count(), 3);
        assert!(frame.lines().nth(1).unwrap().starts_with("!! SYN FLOOD"));
        let states = [
            ViewState::default(),
            ViewState {
                paused: true,
                help: true,
                ..ViewState::default()
            },
        ];
        for state in states {
            for (width, height) in [
                (0, 24),
                (80, 0),
                (1, 1),
                (2, 2),
                (5, 3),
                (20, 5),
                (3, 100),
                (1000, 2),
                (25, 40),
                (80, 24),
            ] {
                let buffer = render_buffer(&snapshot, &state, width, height);
                assert_eq!(buffer.area, Rect::new(0, 0, width, height));
            }
        }
    }

    #[test]
    fn an_empty_snapshot_renders() {
        let frame = render(&Snapshot::default(), 80, 24);
        assert!(frame.contains("waiting for the first interval"), "{frame}");
        assert!(frame.contains("\nalerts    none active\n"), "{frame}");
        assert!(frame.contains("recent teardowns: none yet"), "{frame}");
        // No sample yet: no sparklines.
        assert!(!frame.contains("synack/s"), "{frame}");
    }

    /// A report's figures, as the dashboard shows them.
    #[test]
    fn a_report_shows_its_figures() {
        let figures = crate::report::figures::tests::busy_figures();
        let mut snapshot = Snapshot::new("eth0".into(), "native XDP + TC egress".into());
        snapshot.show(&figures);
        let frame = render(&snapshot, 140, 24);
        assert!(frame.contains("in /s"), "{frame}");
        assert!(
            frame.contains("\nflows     3 tracked, 1 half-open, 9 ended\n"),
            "{frame}"
        );
        assert!(
            frame.contains("lock contended 5, log lines lost 12\n"),
            "{frame}"
        );
        assert!(
            frame.contains("\nhalf-open timeouts by port 8080:12 443:3 other:40\n"),
            "{frame}"
        );
        assert_eq!(snapshot.counters.len(), ROW_COUNTERS.len());
        let mut ingress = figures.clone();
        ingress.egress = None;
        snapshot.show(&ingress);
        let frame = render(&snapshot, 140, 24);
        assert!(frame.contains("per second"), "{frame}");
        assert!(!frame.contains("out /s"), "{frame}");
    }

    /// A flood's summaries count as debris in the count line, their
    /// latest line is shown under it, and the real connections stay listed.
    #[test]
    fn flood_summaries_count_as_debris_and_show_under_the_count_line() {
        let mut snapshot = busy_snapshot();
        let target = crate::flood::TargetKey::new([192, 0, 2, 2].into(), 8080);
        let summary = |ts: f64, s0: u64| crate::flood::DebrisSummary {
            ts,
            target,
            target_addr: target.addr,
            target_port: target.port,
            interval_start: ts - 1.0,
            alert_active: true,
            records: s0 + 11,
            by_conn_state: [("S0", s0), ("REJ", 11)].into_iter().collect(),
            by_close: [("half_open", s0), ("refused", 11)].into_iter().collect(),
            orig_pkts: s0 + 11,
            orig_ip_bytes: 40 * (s0 + 11),
            resp_pkts: 11,
            resp_ip_bytes: 440,
            first_ms: 0,
            last_ms: 0,
            distinct_sources: s0,
            top_sources: Vec::new(),
        };
        snapshot.push_summary(&summary(10.0, 18_000));
        snapshot.push_summary(&summary(11.0, 20_000));
        let buffer = render_buffer(&snapshot, &ViewState::default(), 160, 30);
        let frame = text(&buffer);
        assert!(
            frame.contains(
                "\n  + 38,022 one-sided, no handshake (S0 38,000, REJ 22), 38,022 of them in flood summaries: the newest dimmed below; f lists them\n"
            ),
            "{frame}"
        );
        // The target's latest summary only, dimmed.
        let lines: Vec<&str> = frame
            .lines()
            .filter(|l| l.starts_with("  flood debris 192.0.2.2:8080"))
            .collect();
        assert_eq!(lines.len(), 1, "{frame}");
        assert!(lines[0].contains("20011 one-sided records"), "{frame}");
        let style = row_style(&buffer, lines[0]);
        assert!(style.add_modifier.contains(Modifier::DIM), "{style:?}");
        let listed = frame.lines().filter(|l| l.contains(" SF ")).count();
        assert!(listed >= 10, "{frame}");
    }

    /// After a flood, the real connections fill the list and the debris is
    /// one line of counts; `f` lists the debris.
    #[test]
    fn flood_debris_is_a_count_line_and_real_connections_stay_listed() {
        let mut snapshot = busy_snapshot();
        for i in 0..190_604u32 {
            // The refusals are among the newest: the debris list keeps the
            // newest few hundred only.
            let (state, close) = if i >= 190_604 - 1208 && i % 2 == 0 {
                ("REJ", CloseKind::Refused)
            } else {
                ("S0", CloseKind::HalfOpen)
            };
            snapshot.push_test_row(row(20_000 + (i % 40_000) as u16, state, close, false));
        }
        let buffer = render_buffer(&snapshot, &ViewState::default(), 120, 30);
        let frame = text(&buffer);
        assert!(
            frame.contains(
                "\n  + 190,604 one-sided, no handshake (S0 190,000, REJ 604): the newest dimmed below; f lists them\n"
            ),
            "{frame}"
        );
        // Under it, real connections, newest first, then a quarter of the
        // pane for the newest debris, dimmed.
        let listed: Vec<&str> = frame.lines().filter(|l| l.starts_with("  conn ")).collect();
        assert_eq!(listed.len(), 18, "{frame}");
        assert!(listed[..14].iter().all(|l| l.contains(" SF ")), "{frame}");
        assert!(listed[0].contains(":40039 ->"), "{frame}");
        assert!(listed[13].contains(":40026 ->"), "{frame}");
        assert!(
            listed[14..]
                .iter()
                .all(|l| l.contains(" S0 ") || l.contains(" REJ ")),
            "{frame}"
        );
        let style = row_style(&buffer, listed[14]);
        assert!(style.add_modifier.contains(Modifier::DIM), "{style:?}");
        // On a tall screen, every real connection kept is listed, and the
        // debris has the rest.
        let frame = render(&snapshot, 120, 200);
        let listed: Vec<&str> = frame.lines().filter(|l| l.starts_with("  conn ")).collect();
        assert_eq!(listed.iter().filter(|l| l.contains(" SF ")).count(), 40);
        assert_eq!(listed.len(), 200 - 12, "{frame}");
        // The debris filter lists it, dimmed.
        let state = ViewState {
            filter: Filter::Debris,
            ..ViewState::default()
        };
        let buffer = render_buffer(&snapshot, &state, 120, 30);
        let frame = text(&buffer);
        assert!(
            frame.contains("\nrecent teardowns, newest first, only debris\n"),
            "{frame}"
        );
        assert!(!frame.contains("one-sided, no handshake"), "{frame}");
        let listed: Vec<&str> = frame.lines().filter(|l| l.starts_with("  conn ")).collect();
        assert!(
            !listed.is_empty()
                && listed
                    .iter()
                    .all(|l| l.contains(" S0 ") || l.contains(" REJ ")),
            "{frame}"
        );
        let style = row_style(&buffer, "  conn ");
        assert!(style.add_modifier.contains(Modifier::DIM), "{style:?}");
        // Half-open only, and rejected only.
        for (filter, state) in [(Filter::HalfOpen, " S0 "), (Filter::Rejected, " REJ ")] {
            let frame = render_with(
                &snapshot,
                ViewState {
                    filter,
                    ..ViewState::default()
                },
                120,
                30,
            );
            let listed: Vec<&str> = frame.lines().filter(|l| l.starts_with("  conn ")).collect();
            assert!(
                !listed.is_empty() && listed.iter().all(|l| l.contains(state)),
                "{frame}"
            );
        }
        // With only debris, it has the pane.
        let mut only_debris = Snapshot::default();
        only_debris.push_test_row(row(1, "S0", CloseKind::HalfOpen, false));
        only_debris.push_test_row(row(2, "REJ", CloseKind::Refused, false));
        let frame = render(&only_debris, 120, 24);
        assert!(
            frame.contains("+ 2 one-sided, no handshake (REJ 1, S0 1)"),
            "{frame}"
        );
        let listed: Vec<&str> = frame.lines().filter(|l| l.starts_with("  conn ")).collect();
        assert_eq!(listed.len(), 2, "{frame}");
        assert!(listed[0].contains(":2 ->"), "{frame}");
        assert!(!frame.contains("\n  none"), "{frame}");
        // A filter that matches nothing says so.
        let frame = render_with(
            &only_debris,
            ViewState {
                filter: Filter::Graceful,
                ..ViewState::default()
            },
            120,
            24,
        );
        assert!(frame.ends_with("only graceful\n  none"), "{frame}");
    }

    #[test]
    fn each_close_kind_has_its_colour() {
        let kinds = [
            ("SF", CloseKind::Graceful, Color::Green),
            ("SF", CloseKind::Simultaneous, Color::Cyan),
            ("S2", CloseKind::HalfClosed, Color::Yellow),
            ("RSTO", CloseKind::Abort, Color::Red),
            ("S1", CloseKind::Idle, Color::Blue),
        ];
        let mut snapshot = Snapshot::default();
        for (port, (state, close, _)) in kinds.iter().enumerate() {
            snapshot.push_test_row(row(port as u16, state, *close, true));
        }
        let buffer = render_buffer(&snapshot, &ViewState::default(), 120, 30);
        for (port, (_, close, colour)) in kinds.iter().enumerate() {
            let style = row_style(&buffer, &format!("  conn 192.0.2.1:{port} "));
            assert_eq!(style.fg, Some(*colour), "{close:?}");
            assert!(!style.add_modifier.contains(Modifier::DIM), "{close:?}");
        }
        // Debris: its kind's colour, dimmed.
        for (close, colour) in [
            (CloseKind::Refused, Color::Magenta),
            (CloseKind::HalfOpen, Color::DarkGray),
        ] {
            let style = close_style(&row(1, "S0", close, false));
            assert_eq!(style.fg, Some(colour));
            assert!(style.add_modifier.contains(Modifier::DIM));
        }
        // The graceful filter leaves the abort out.
        let frame = render_with(
            &snapshot,
            ViewState {
                filter: Filter::Graceful,
                ..ViewState::default()
            },
            120,
            30,
        );
        let listed: Vec<&str> = frame.lines().filter(|l| l.starts_with("  conn ")).collect();
        assert_eq!(listed.len(), 2, "{frame}");
        assert!(frame.contains("only graceful"), "{frame}");
    }

    #[test]
    fn sorting_orders_the_list() {
        let mut snapshot = Snapshot::default();
        for (port, duration_ns, bytes, state) in
            [(1, 5, 300, "SF"), (2, 900, 10, "RSTO"), (3, 50, 7000, "S1")]
        {
            let mut teardown = row(port, state, CloseKind::Graceful, true);
            teardown.duration_ns = duration_ns;
            teardown.bytes = bytes;
            snapshot.push_test_row(teardown);
        }
        let order = |sort| {
            let frame = render_with(
                &snapshot,
                ViewState {
                    sort,
                    ..ViewState::default()
                },
                120,
                30,
            );
            let ports: Vec<char> = frame
                .lines()
                .filter_map(|l| l.strip_prefix("  conn 192.0.2.1:"))
                .map(|l| l.chars().next().unwrap())
                .collect();
            (ports, frame)
        };
        assert_eq!(order(Sort::Newest).0, ['3', '2', '1']);
        assert_eq!(order(Sort::Duration).0, ['2', '3', '1']);
        assert_eq!(order(Sort::Bytes).0, ['3', '1', '2']);
        let (ports, frame) = order(Sort::State);
        assert_eq!(ports, ['2', '3', '1']);
        assert!(frame.contains("recent teardowns, by conn_state"), "{frame}");
    }

    #[test]
    fn pause_and_help_show() {
        let mut board = crate::report::dashboard::Board::new(busy_snapshot());
        let press = |c| {
            crossterm::event::KeyEvent::new(
                crossterm::event::KeyCode::Char(c),
                crossterm::event::KeyModifiers::NONE,
            )
        };
        assert_eq!(board.key(press('p')), KeyOutcome::Redraw);
        let buffer = render_buffer(board.shown(), &board.view, 80, 24);
        let frame = text(&buffer);
        assert!(frame.starts_with(" PAUSED   teardown  eth0"), "{frame}");
        let style = buffer[(1, 0)].style();
        assert!(style.add_modifier.contains(Modifier::REVERSED));
        board.key(press('?'));
        let frame = text(&render_buffer(board.shown(), &board.view, 80, 24));
        for (keys, what) in HELP {
            assert!(frame.contains(keys) && frame.contains(what), "{frame}");
        }
        assert!(frame.contains("keys (? closes)"), "{frame}");
        // The help box on a tiny screen is cut, not a panic.
        let frame = text(&render_buffer(board.shown(), &board.view, 20, 5));
        assert!(frame.contains("keys"), "{frame}");
    }

    /// SYN and SYN-ACK over the last minutes share a scale, so a flood's
    /// unanswered SYNs stand out; the flood is still drawn minutes later.
    #[test]
    fn sparklines_show_the_flood_and_share_the_handshake_scale() {
        let mut snapshot = busy_snapshot();
        for second in 0..200 {
            let flood = (20..50).contains(&second);
            snapshot
                .history
                .syn
                .push(if flood { 40_000.0 } else { 100.0 });
            snapshot.history.syn_ack.push(100.0);
            snapshot.history.rst.push(if flood { 5_000.0 } else { 0.0 });
            snapshot
                .history
                .half_open
                .push(if flood { 8_000.0 } else { 2.0 });
        }
        let buffer = render_buffer(&snapshot, &ViewState::default(), 400, 40);
        let frame = text(&buffer);
        let line = |name: &str| {
            frame
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} sparkline:\n{frame}"))
                .to_string()
        };
        let syn = line("syn/s ");
        assert!(syn.starts_with("syn/s        100 peak  40.0k "), "{syn}");
        let synack = line("synack/s");
        assert!(
            synack.starts_with("synack/s     100 peak    100"),
            "{synack:?}"
        );
        assert!(line("half-open  ").contains("peak   8.0k"), "{frame}");
        // The flood's seconds are full bars, 150 samples back.
        let bars: Vec<char> = syn.chars().skip(SPARK_LABEL).collect();
        assert!(bars[20..50].iter().all(|&c| c == '█'), "{syn}");
        assert!(
            !bars[..20].contains(&'█') && !bars[50..].contains(&'█'),
            "{syn}"
        );
        // SYN-ACKs at 100/s, on the SYNs' scale, are near nothing.
        let synack_bars: String = line("synack/s").chars().skip(SPARK_LABEL).collect();
        assert!(!synack_bars.contains('█'), "{synack_bars}");
        // On 80 columns, the whole history still, each cell the peak of
        // a few seconds: the flood is there, in proportion.
        let frame = render(&snapshot, 80, 30);
        let syn = frame
            .lines()
            .find(|l| l.starts_with("syn/s "))
            .expect("syn");
        let bars: Vec<char> = syn.chars().skip(SPARK_LABEL).collect();
        let full: Vec<usize> = (0..bars.len()).filter(|&i| bars[i] == '█').collect();
        // 200 samples in 51 cells: 4 a cell; seconds 20 to 49 are cells 5 to 12.
        assert_eq!(full, (5..=12).collect::<Vec<_>>(), "{syn}");
        // Too short a screen: the teardowns keep their rows, no sparklines.
        let frame = render(&snapshot, 80, 16);
        assert!(!frame.contains("synack/s"), "{frame}");
    }
}

//! The plain view: scrolling lines of `teardown run` (a pipe, a file, or
//! `--plain`), from [`Figures`]: a row of per-second rates per report (and a
//! `sent` row under it), the `flows:` line, the alert summary, and the final
//! totals; with several interfaces, those of each follow their sum's.

use teardown_common::counters::{Counter, Counters};

use crate::{
    report::figures::{
        Figures, FlowFigures, InterfaceFigures, LinesLost, PortFigures, ReasonFigures, Traffic,
        midstream_untracked_words, phrase_if_any,
    },
    report::output::{self, push_line, short_count},
};

/// The counters shown in each human row (and in the dashboard's table), as
/// per-second rates.
pub const ROW_COUNTERS: &[(Counter, &str)] = &[
    (Counter::Packets, "pkts/s"),
    (Counter::Tcp, "tcp/s"),
    (Counter::Syn, "syn/s"),
    (Counter::SynAck, "synack/s"),
    (Counter::Fin, "fin/s"),
    (Counter::Rst, "rst/s"),
    (Counter::Malformed, "bad/s"),
    (Counter::NonIp, "nonip/s"),
];

/// Rows between repeated headers.
pub const HEADER_EVERY: usize = 20;

fn header() -> String {
    let mut line = format!("{:<8}", "time");
    for (_, label) in ROW_COUNTERS {
        line.push_str(&format!(" {label:>8}"));
    }
    line.push_str(&format!(" {:>10}", "total tcp"));
    line
}

/// `HH:MM:SS` UTC of a Unix time: the monitor's logs are compared across
/// hosts.
pub fn clock(unix_seconds: f64) -> String {
    let now = unix_seconds as u64;
    format!(
        "{:02}:{:02}:{:02}",
        now / 3600 % 24,
        now / 60 % 60,
        now % 60
    )
}

/// One row of rates: `label` is the time for what arrived, `sent` for
/// what the host sent (printed below it, in the same columns).
fn row(label: &str, traffic: &Traffic) -> String {
    let mut line = format!("{label:<8}");
    for (counter, _) in ROW_COUNTERS {
        line.push_str(&format!(
            " {:>8}",
            short_count(traffic.per_second(*counter))
        ));
    }
    line.push_str(&format!(" {:>10}", traffic.totals.get(Counter::Tcp)));
    line
}

/// `port:count` of the `n` ports with most half-open timeouts, and
/// `other:count` for the rest when there is any.
pub fn half_open_ports_words(ports: &PortFigures, n: usize) -> Vec<String> {
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

fn flow_line(flows: &FlowFigures) -> String {
    let ports = half_open_ports_words(&flows.half_open_timeouts, 3);
    format!(
        "flows: {} tracked, {} half-open, {} ended{}; lost events {}, failed inserts {}, evicted {}, SYNs untracked {}{}, lock contended {}{}{}{}",
        flows.tracked,
        flows.half_open,
        flows.ended(),
        // Only once a flood was summarised: the line every report prints
        // stays as it was otherwise.
        if flows.records_summarised > 0 {
            format!(
                " ({} of them in {} flood debris summaries)",
                flows.records_summarised, flows.debris_summaries
            )
        } else {
            String::new()
        },
        flows.events_lost,
        flows.insert_failed,
        flows.evicted,
        flows.syn_untracked,
        midstream_untracked_words(flows.midstream_untracked),
        flows.lock_contended,
        phrase_if_any("SYNs not counted per destination", flows.dest_collisions),
        phrase_if_any(
            "tunnels not recorded (table full)",
            flows.tunnels_unrecorded
        ),
        if ports.is_empty() {
            String::new()
        } else {
            format!("; half-open timeouts by port {}", ports.join(" "))
        }
    )
}

/// The `flows:` line, and what the outputs lost: the plain output's
/// figures of everything dropped, in one line.
fn flows_and_lines_lost(flows: &FlowFigures, lost: &LinesLost) -> String {
    let lost: Vec<String> = lost
        .0
        .iter()
        .map(|(key, count)| format!("{key} {count}"))
        .collect();
    format!("{}; lines lost {}", flow_line(flows), lost.join(", "))
}

/// The kernel's reasons in one line: resets sent by reason, and what the
/// host's stack did with handshakes it could not take. `None` while there
/// is nothing to say (no reset sent, no handshake dropped, no cookie).
fn reasons_line(reasons: &ReasonFigures) -> Option<String> {
    let mut parts = Vec::new();
    if reasons.resets_sent.values().any(|count| *count > 0) {
        let by_reason: Vec<String> = reasons
            .resets_sent
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        parts.push(format!(
            "resets sent: {} (unclaimed {}, events lost {}{})",
            by_reason.join(", "),
            reasons.resets_unclaimed,
            reasons.reset_events_lost,
            phrase_if_any(
                "events of untracked connections skipped",
                reasons.reset_events_skipped
            )
        ));
    }
    if let Some(handshakes) = &reasons.handshakes
        && (handshakes.dropped() > 0 || handshakes.syncookies_sent > 0)
    {
        parts.push(format!(
            "handshakes dropped by the host: {} listen overflows, {} listen drops, {} on a full SYN queue; SYN cookies sent {}, completed {}",
            handshakes.listen_overflows,
            handshakes.listen_drops,
            handshakes.syn_queue_full_drops,
            handshakes.syncookies_sent,
            handshakes.syncookies_recv
        ));
    }
    let ports = half_open_ports_words(&reasons.listen_drops_by_port, 3);
    if !ports.is_empty() {
        parts.push(format!("listen drops by port {}", ports.join(" ")));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// A report's lines: the header every [`HEADER_EVERY`] rows (`row` counts
/// the reports so far), the rates (and `sent` rates), the `flows:` line.
pub fn report(figures: &Figures, row_number: usize) -> String {
    let mut text = String::new();
    if row_number.is_multiple_of(HEADER_EVERY) {
        push_line(&mut text, header());
    }
    push_line(&mut text, row(&clock(figures.ts), &figures.received));
    if let Some(sent) = &figures.egress {
        push_line(&mut text, row("  sent", sent));
    }
    push_line(
        &mut text,
        flows_and_lines_lost(&figures.flows, &figures.lines_lost),
    );
    // With several interfaces, the rows above are their sum; each one's
    // own follow, labelled with its name.
    for one in several(figures) {
        push_line(&mut text, row(&one.iface, &one.received));
        if let Some(sent) = &one.egress {
            push_line(&mut text, row("  sent", sent));
        }
        push_line(
            &mut text,
            format!("{} {}", one.iface, flow_line(&one.flows)),
        );
    }
    if let Some(line) = reasons_line(&figures.reasons) {
        push_line(&mut text, line);
    }
    text
}

/// Each interface's figures when there are several (with one, the
/// figures' own are its).
fn several(figures: &Figures) -> &[InterfaceFigures] {
    match figures.interfaces.len() {
        0 | 1 => &[],
        _ => &figures.interfaces,
    }
}

/// The alert summary that follows each report's lines.
pub fn alert_summary(figures: &Figures) -> String {
    format!("{}\n", figures.alerts.summary_line)
}

/// The totals once teardown has detached.
pub fn final_totals(figures: &Figures) -> String {
    let mut text = format!("final totals on {}:\n", figures.iface);
    let received: &Counters = &figures.received.totals;
    text.push_str(&match &figures.egress {
        Some(sent) => output::totals_table_both(received, &sent.totals),
        None => output::totals_table(received),
    });
    push_line(
        &mut text,
        flows_and_lines_lost(&figures.flows, &figures.lines_lost),
    );
    for one in several(figures) {
        text.push_str(&format!("totals on {}:\n", one.iface));
        text.push_str(&match &one.egress {
            Some(sent) => output::totals_table_both(&one.received.totals, &sent.totals),
            None => output::totals_table(&one.received.totals),
        });
        push_line(&mut text, flow_line(&one.flows));
    }
    if let Some(line) = reasons_line(&figures.reasons) {
        push_line(&mut text, line);
    }
    text
}

#[cfg(test)]
mod tests {
    use teardown_common::{conn::Timeouts, events::FlowStats};

    use super::*;
    use crate::{
        conn::tracker::Tracker,
        report::figures::tests::{busy_figures, port_sweep_tracker},
    };

    #[test]
    fn a_report_is_a_row_a_sent_row_and_the_flows() {
        let figures = busy_figures();
        let first = report(&figures, 0);
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 4, "{first}");
        assert!(
            lines[0].starts_with("time       pkts/s    tcp/s"),
            "{first}"
        );
        // 1_700_000_100 is 22:15:00 UTC.
        assert!(lines[1].starts_with("22:15:00      0.5"), "{first}");
        assert!(lines[1].ends_with(&format!(" {}", figures.received.totals.get(Counter::Tcp))));
        assert!(lines[2].starts_with("  sent          0"), "{first}");
        assert_eq!(
            lines[3],
            "flows: 3 tracked, 1 half-open, 9 ended; lost events 4, failed inserts 0, evicted 0, SYNs untracked 0, lock contended 5; half-open timeouts by port 8080:12 443:3 other:40; lines lost stdout 0, log 12"
        );
        // An ACK flood's untracked segments appear once there are any.
        let mut flooded = figures.clone();
        flooded.flows.midstream_untracked = 589_869;
        assert!(
            report(&flooded, 0).contains(
                "SYNs untracked 0, mid-stream segments untracked 589869, lock contended 5"
            ),
            "{}",
            report(&flooded, 0)
        );
        // No header between the twentieth rows, no sent row when ingress only.
        let mut ingress = figures.clone();
        ingress.egress = None;
        assert_eq!(report(&ingress, 1).lines().count(), 2);
        assert_eq!(report(&ingress, HEADER_EVERY).lines().count(), 3);
    }

    #[test]
    fn the_flows_line_lists_three_ports_then_the_rest() {
        let (tracker, total) = port_sweep_tracker();
        let flows = FlowFigures::new(&FlowStats::default(), &tracker);
        // The three busiest (ties by port: the sweep's last 31 ports are
        // listed) and the rest.
        let line = flow_line(&flows);
        assert!(
            line.ends_with(&format!(
                "; half-open timeouts by port 8080:13 65505:1 65506:1 other:{}",
                total - 15
            )),
            "{line}"
        );
        let quiet = FlowFigures::new(&FlowStats::default(), &Tracker::new(Timeouts::ZEEK));
        assert!(!flow_line(&quiet).contains("half-open timeouts"));
        let mut collided = quiet.clone();
        collided.dest_collisions = 6;
        assert!(flow_line(&collided).contains(", SYNs not counted per destination 6"));
    }

    #[test]
    fn the_final_totals_end_with_the_flows() {
        let text = final_totals(&busy_figures());
        assert!(text.starts_with("final totals on eth0:\n"), "{text}");
        assert!(text.contains(" out\n"), "{text}");
        assert!(text.ends_with("; lines lost stdout 0, log 12\n"), "{text}");
    }

    #[test]
    fn the_kernels_reasons_get_a_line_when_there_is_something_to_say() {
        let mut figures = busy_figures();
        assert_eq!(reasons_line(&figures.reasons), None);
        figures.reasons.resets_sent.insert("NO_SOCKET", 2);
        figures.reasons.resets_sent.insert("TCP_ABORT_ON_CLOSE", 1);
        figures.reasons.resets_unclaimed = 1;
        figures.reasons.handshakes = Some(crate::kernel::netstat::HandshakeDrops {
            listen_overflows: 28,
            listen_drops: 28,
            ..Default::default()
        });
        figures.reasons.listen_drops_by_port = PortFigures {
            listed: vec![(9207, 28)],
            other: 0,
        };
        let text = report(&figures, 1);
        assert_eq!(
            text.lines().last().unwrap(),
            "resets sent: NO_SOCKET 2, TCP_ABORT_ON_CLOSE 1 (unclaimed 1, events lost 0); handshakes dropped by the host: 28 listen overflows, 28 listen drops, 0 on a full SYN queue; SYN cookies sent 0, completed 0; listen drops by port 9207:28"
        );
        assert!(final_totals(&figures).ends_with("9207:28\n"));
        // Counters read but nothing dropped: no line.
        figures.reasons.resets_sent.clear();
        figures.reasons.handshakes = Some(Default::default());
        figures.reasons.listen_drops_by_port = PortFigures::default();
        assert_eq!(reasons_line(&figures.reasons), None);
    }

    #[test]
    fn several_interfaces_get_rows_of_their_own_after_the_sum() {
        let figures = crate::report::figures::tests::two_interface_figures();
        let text = report(&figures, 1);
        let lines: Vec<&str> = text.lines().collect();
        // The sum (a row, a sent row, the flows), then each interface's.
        assert_eq!(lines.len(), 9, "{text}");
        assert!(
            lines[2].starts_with("flows: 0 tracked, 0 half-open, 6 ended;"),
            "{text}"
        );
        assert!(lines[3].starts_with("eth0            2"), "{text}");
        assert!(lines[4].starts_with("  sent"), "{text}");
        assert!(
            lines[5].starts_with("eth0 flows: 0 tracked, 0 half-open, 2 ended;"),
            "{text}"
        );
        assert!(lines[6].starts_with("eth1            0"), "{text}");
        assert!(
            lines[8].starts_with("eth1 flows: 0 tracked, 0 half-open, 4 ended;"),
            "{text}"
        );
        let totals = final_totals(&figures);
        assert!(
            totals.starts_with("final totals on eth0,eth1:\n"),
            "{totals}"
        );
        assert!(totals.contains("\ntotals on eth1:\n"), "{totals}");
        // One interface: no rows of its own, its figures are the report's.
        assert_eq!(report(&busy_figures(), 1).lines().count(), 3);
    }

    #[test]
    fn clocks_are_utc() {
        assert_eq!(clock(0.0), "00:00:00");
        assert_eq!(clock(86_399.9), "23:59:59");
        assert_eq!(clock(1_700_000_100.5), "22:15:00");
    }
}

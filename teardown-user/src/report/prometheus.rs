//! Prometheus view of `teardown run`'s figures: [`render`] turns a
//! [`Figures`] into the text exposition format 0.0.4. It reads nothing but
//! the figures; the run loop publishes them to the endpoint
//! ([`super::metrics_server`]), which serves the latest it was given.
//!
//! # Metric families
//!
//! The families, their types, labels and meanings, and how they map to the
//! `stats` JSON keys are listed once, in `docs/metrics.md`, with the
//! endpoint's limits; change that table with [`render`].

use std::{
    collections::BTreeMap,
    fmt::{Display, Write as _},
};

use teardown_common::{conn::CloseKind, counters::Counter};

use crate::{
    conn::tracker::{HALF_OPEN_PORT_QUIET, HALF_OPEN_PORTS_LISTED},
    report::figures::{Figures, InterfaceFigures},
};

/// Zeek's conn_state values (docs/zeek-tcp-semantics.md), always exported.
pub const CONN_STATES: &[&str] = &[
    "S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH",
];

/// Every close kind, always exported.
pub const CLOSE_KINDS: &[CloseKind] = &[
    CloseKind::Graceful,
    CloseKind::HalfClosed,
    CloseKind::Simultaneous,
    CloseKind::Abort,
    CloseKind::Refused,
    CloseKind::HalfOpen,
    CloseKind::Idle,
    CloseKind::Open,
];

/// Fails to compile when a close kind is added without being listed above.
const _: fn(CloseKind) = |kind| match kind {
    CloseKind::Graceful
    | CloseKind::HalfClosed
    | CloseKind::Simultaneous
    | CloseKind::Abort
    | CloseKind::Refused
    | CloseKind::HalfOpen
    | CloseKind::Idle
    | CloseKind::Open => {}
};

/// Where a [`Counter`] goes: its family, and its label if the family has one.
const fn exposition(counter: Counter) -> (&'static str, Option<(&'static str, &'static str)>) {
    const FLAGS: &str = "teardown_tcp_flag_segments_total";
    const IP: &str = "teardown_ip_packets_total";
    const TUNNEL: &str = "teardown_tunnel_packets_total";
    const TUNNEL_PROBLEM: &str = "teardown_tunnel_problem_packets_total";
    match counter {
        Counter::Packets => ("teardown_packets_total", None),
        Counter::NonIp => ("teardown_non_ip_packets_total", None),
        Counter::Vlan => ("teardown_vlan_packets_total", None),
        Counter::VlanTooDeep => ("teardown_vlan_too_deep_packets_total", None),
        Counter::Ipv4 => (IP, Some(("version", "4"))),
        Counter::Ipv6 => (IP, Some(("version", "6"))),
        Counter::Fragments => ("teardown_ip_fragments_total", None),
        Counter::Ipv6ChainTooLong => ("teardown_ipv6_chain_too_long_packets_total", None),
        Counter::Tcp => ("teardown_tcp_segments_total", None),
        Counter::Syn
        | Counter::SynAck
        | Counter::Fin
        | Counter::Rst
        | Counter::PureAck
        | Counter::Data
        | Counter::Psh
        | Counter::Urg
        | Counter::Ece
        | Counter::Cwr => (FLAGS, Some(("flag", counter.key()))),
        Counter::OtherTransport => ("teardown_other_transport_packets_total", None),
        Counter::Malformed => ("teardown_malformed_packets_total", None),
        Counter::Tunnelled => ("teardown_tunnelled_packets_total", None),
        Counter::TunnelledTcp => ("teardown_tunnelled_tcp_segments_total", None),
        Counter::TunnelMpls => (TUNNEL, Some(("kind", "mpls"))),
        Counter::TunnelPppoe => (TUNNEL, Some(("kind", "pppoe"))),
        Counter::TunnelVntag => (TUNNEL, Some(("kind", "vntag"))),
        Counter::TunnelPbb => (TUNNEL, Some(("kind", "pbb"))),
        Counter::TunnelFabricpath => (TUNNEL, Some(("kind", "fabricpath"))),
        Counter::TunnelGre => (TUNNEL, Some(("kind", "gre"))),
        Counter::TunnelIpip => (TUNNEL, Some(("kind", "ipip"))),
        Counter::TunnelVxlan => (TUNNEL, Some(("kind", "vxlan"))),
        Counter::TunnelGeneve => (TUNNEL, Some(("kind", "geneve"))),
        Counter::TunnelOther => ("teardown_tunnelled_other_packets_total", None),
        Counter::TunnelMalformed => (TUNNEL_PROBLEM, Some(("problem", "malformed"))),
        Counter::TunnelTooDeep => (TUNNEL_PROBLEM, Some(("problem", "too_deep"))),
        Counter::TunnelUnsupported => (TUNNEL_PROBLEM, Some(("problem", "unsupported"))),
    }
}

/// HELP of the families that gather several counters.
fn labelled_family_help(family: &str) -> &'static str {
    match family {
        "teardown_ip_packets_total" => {
            "Frames by IP version (EtherType IPv4 or IPv6); direction in: arrived, out: sent by the host."
        }
        "teardown_tcp_flag_segments_total" => {
            "TCP segments by flag: syn (SYN without ACK), syn_ack, fin, rst, pure_ack (ACK only, no payload), data (with payload), psh, urg, ece, cwr. A segment counts under each that applies, so sum() over flag is not a segment count: see teardown_tcp_segments_total. direction in: arrived, out: sent by the host."
        }
        "teardown_tunnel_packets_total" => {
            "Frames with an encapsulation layer of this kind opened (mpls, pppoe, vntag, pbb, fabricpath, gre, ipip, vxlan, geneve); a frame counts under each layer it has. direction in: arrived, out: sent by the host."
        }
        "teardown_tunnel_problem_packets_total" => {
            "Tunnelled frames not followed to their TCP segment: malformed (an encapsulation header or one inside it cut short or inconsistent), too_deep (more layers, labels, tags or extension headers than followed), unsupported (recognised, not followed). direction in: arrived, out: sent by the host."
        }
        _ => "teardown counters.",
    }
}

/// Escapes a `# HELP` text: backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Builds the exposition text, one family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label_value(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per interface (see [`interface_labels`]).
    fn per_interface<T: Display>(
        &mut self,
        interfaces: &[InterfaceFigures],
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&InterfaceFigures) -> T,
    ) {
        self.family(name, kind, help);
        for one in interfaces {
            self.sample(name, &interface_labels(interfaces, one, &[]), value(one));
        }
    }
}

/// The labels of interface `one`'s sample: `iface` first when several
/// interfaces are watched, then `rest`. With one, none: its series stay
/// what they were before teardown watched several (a label added to a
/// series makes it another series, and `rate()` across an upgrade would
/// break); `teardown_interface_info` names it.
fn interface_labels<'a>(
    interfaces: &[InterfaceFigures],
    one: &'a InterfaceFigures,
    rest: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut labels = Vec::with_capacity(rest.len() + 1);
    if interfaces.len() > 1 {
        labels.push(("iface", one.iface.as_str()));
    }
    labels.extend_from_slice(rest);
    labels
}

/// The snapshot in the Prometheus text exposition format, version 0.0.4.
///
/// What each interface's kernel instance counts (packets, its flow table,
/// the connections ended on it) has a sample per interface, labelled
/// `iface` when there are several ([`interface_labels`]); the host's
/// figures (alerts, the kernel's reasons, the outputs, flood debris, the
/// process) have none.
pub fn render(figures: &Figures) -> String {
    let interfaces = &figures.interfaces[..];
    let mut e = Exposition {
        out: String::with_capacity(8 * 1024),
    };

    // Packet and flag counters, families in the order of their first counter.
    let mut families: Vec<(&str, Vec<Counter>)> = Vec::new();
    for &counter in Counter::ALL {
        let (family, _) = exposition(counter);
        match families.iter_mut().find(|(name, _)| *name == family) {
            Some((_, members)) => members.push(counter),
            None => families.push((family, vec![counter])),
        }
    }
    for (family, members) in &families {
        let help_owned: String;
        let help = match members.as_slice() {
            // Doc comments start with a space.
            [only] if exposition(*only).1.is_none() => {
                help_owned = format!(
                    "{} direction in: arrived, out: sent by the host.",
                    only.help().trim()
                );
                help_owned.as_str()
            }
            _ => labelled_family_help(family),
        };
        e.family(family, "counter", help);
        for one in interfaces {
            let directions = [
                ("in", Some(&one.received.totals)),
                ("out", one.egress.as_ref().map(|sent| &sent.totals)),
            ];
            for (direction, counters) in directions {
                let Some(counters) = counters else { continue };
                for &counter in members {
                    let mut labels = interface_labels(interfaces, one, &[("direction", direction)]);
                    labels.extend(exposition(counter).1);
                    e.sample(family, &labels, counters.get(counter));
                }
            }
        }
    }

    // Ended connections: every known value, then any other the tracker saw.
    let name = "teardown_connections_ended_total";
    e.family(
        name,
        "counter",
        "TCP connections ended, by Zeek's conn_state.",
    );
    for one in interfaces {
        for (state, count) in with_known_keys(CONN_STATES, &one.flows.ended_by_conn_state) {
            let labels = interface_labels(interfaces, one, &[("conn_state", state)]);
            e.sample(name, &labels, count);
        }
    }
    let name = "teardown_connections_ended_by_close_total";
    e.family(
        name,
        "counter",
        "TCP connections ended, by how they closed: graceful, half_closed, simultaneous, abort, refused, half_open, idle, open (still open when teardown stopped).",
    );
    let close_names: Vec<&str> = CLOSE_KINDS.iter().map(|kind| kind.name()).collect();
    for one in interfaces {
        for (close, count) in with_known_keys(&close_names, &one.flows.ended_by_close) {
            e.sample(
                name,
                &interface_labels(interfaces, one, &[("close", close)]),
                count,
            );
        }
    }
    let flows = &figures.flows;

    e.single(
        "teardown_records_summarised_total",
        "counter",
        "Ended records of a SYN flood's one-sided debris (S0, REJ, OTH, ... to a destination under an active alert) counted into flood_debris summaries instead of written in full (--flood-records summary). Subtract from teardown_connections_ended_total for the full records written.",
        flows.records_summarised,
    );
    e.single(
        "teardown_flood_debris_summaries_total",
        "counter",
        "flood_debris summaries made: one per flooded destination and report interval with debris.",
        flows.debris_summaries,
    );
    e.per_interface(
        interfaces,
        "teardown_flows_tracked",
        "gauge",
        "Connection records being tracked now.",
        |one| one.flows.tracked,
    );
    e.per_interface(
        interfaces,
        "teardown_flow_table_capacity",
        "gauge",
        "Connection records the interface's flow table holds (each interface has its own): --max-flows rounded up to a power of two. Compare with teardown_flows_tracked.",
        |_| figures.run.flow_table_capacity,
    );
    e.per_interface(
        interfaces,
        "teardown_flows_created_total",
        "counter",
        "Connection records created in the flow table.",
        |one| one.flows.created,
    );
    e.per_interface(
        interfaces,
        "teardown_half_open_connections",
        "gauge",
        "Handshakes with a SYN sent and no answer yet.",
        |one| one.flows.half_open,
    );
    // A bounded label set: the listed ports and `other`, always present
    // (0 until a handshake times out), which sums the rest.
    let name = "teardown_half_open_timeouts_total";
    e.family(
        name,
        "counter",
        &format!(
            "Handshakes that timed out half-open (SYN unanswered for --syn-timeout), by responder port: at most {HALF_OPEN_PORTS_LISTED} ports, those with most timeouts lately, each counted from when it was listed, and port=\"other\", the rest; the samples sum to every half-open timeout."
        ),
    );
    for one in interfaces {
        let ports = &one.flows.half_open_timeouts;
        for (port, count) in &ports.listed {
            e.sample(
                name,
                &interface_labels(interfaces, one, &[("port", &port.to_string())]),
                count,
            );
        }
        e.sample(
            name,
            &interface_labels(interfaces, one, &[("port", "other")]),
            ports.other,
        );
    }
    e.per_interface(
        interfaces,
        "teardown_half_open_timeout_ports_folded_total",
        "counter",
        &format!(
            "Ports whose half-open timeouts were folded into port=\"other\" of teardown_half_open_timeouts_total: to make room for another port, or after {} s without one.",
            HALF_OPEN_PORT_QUIET.as_secs()
        ),
        |one| one.flows.half_open_timeout_ports_folded,
    );
    e.per_interface(
        interfaces,
        "teardown_flow_insert_failures_total",
        "counter",
        "Segments the flow table found no slot for (both slots of the set held conversations): counted, not tracked; an untracked connection counts once per segment.",
        |one| one.flows.insert_failed,
    );
    e.per_interface(
        interfaces,
        "teardown_flows_evicted_total",
        "counter",
        "One-sided records (half-open SYNs, lone segments) evicted for a new connection before they ended.",
        |one| one.flows.evicted,
    );
    e.per_interface(
        interfaces,
        "teardown_syns_untracked_total",
        "counter",
        "SYNs not tracked because the per-CPU budget of new half-open records was spent (a SYN flood).",
        |one| one.flows.syn_untracked,
    );
    e.per_interface(
        interfaces,
        "teardown_synacks_untracked_total",
        "counter",
        "SYN-ACKs of connections with no record not tracked because the per-CPU budget of new half-open records was spent (the host's replies to a SYN flood).",
        |one| one.flows.synack_untracked,
    );
    e.per_interface(
        interfaces,
        "teardown_midstream_untracked_total",
        "counter",
        "Segments of connections with no record, other than pure SYNs and SYN-ACKs, not tracked because the per-CPU budget of new mid-stream records was spent while the table was under pressure (an ACK flood).",
        |one| one.flows.midstream_untracked,
    );
    e.per_interface(
        interfaces,
        "teardown_tunnels_unrecorded_total",
        "counter",
        "Connections inside a tunnel first seen while the kernel's table of tunnels was full: their records name the tunnel's kind, not its id or endpoints.",
        |one| one.flows.tunnels_unrecorded,
    );
    e.per_interface(
        interfaces,
        "teardown_flow_lock_contended_total",
        "counter",
        "Segments not applied to their connection's record because another CPU held its flow-table slot past a bounded wait (dropped from the record, still in the packet counters).",
        |one| one.flows.lock_contended,
    );
    e.per_interface(
        interfaces,
        "teardown_syn_destination_collisions_total",
        "counter",
        "SYNs not counted per destination for flood detection: their slot in the kernel's per-CPU destination table belonged to another, active destination.",
        |one| one.flows.dest_collisions,
    );
    e.per_interface(
        interfaces,
        "teardown_events_lost_total",
        "counter",
        "Kernel events dropped because the ring buffer was full.",
        |one| one.flows.events_lost,
    );
    let name = "teardown_output_lines_lost_total";
    e.family(
        name,
        "counter",
        "Lines (connection records, alert events, reports) an output could not write whole, e.g. on a full disk: output stdout, or log (--log). Writing is retried with every new line.",
    );
    for (output, lost) in &figures.lines_lost.0 {
        e.sample(name, &[("output", output)], lost);
    }

    let name = "teardown_syn_flood_alert_active";
    e.family(
        name,
        "gauge",
        "1 while a SYN-flood alert on the target is active, 0 once it has cleared.",
    );
    for alert in &figures.alerts.states {
        e.sample(
            name,
            &[("target", alert.target.as_str())],
            u8::from(alert.active),
        );
    }
    e.single(
        "teardown_syn_flood_alerts_started_total",
        "counter",
        "SYN-flood alerts started.",
        figures.alerts.summary.started,
    );

    let reasons = &figures.reasons;
    if reasons.resets_watched {
        let name = "teardown_resets_sent_total";
        e.family(
            name,
            "counter",
            "Resets this host sent, by the kernel's own reason (tcp:tcp_send_reset; names as the running kernel spells enum sk_rst_reason): NO_SOCKET (nothing listens or the connection is unknown), TCP_ABORT_ON_CLOSE (closed with unread data), TCP_ABORT_ON_DATA (data after a shutdown), TCP_TIMEWAIT_SOCKET, TCP_KEEPALIVE_TIMEOUT, TCP_STATE (an abort such as SO_LINGER 0), ... Every reason the kernel names is listed.",
        );
        for (reason, count) in with_known_keys(&reasons.reason_names, &reasons.resets_sent) {
            e.sample(name, &[("reason", reason)], count);
        }
        e.single(
            "teardown_reset_events_lost_total",
            "counter",
            "Reset events the ring buffer had no room for: counted in teardown_resets_sent_total, but no record got their reason.",
            reasons.reset_events_lost,
        );
        e.single(
            "teardown_reset_events_skipped_total",
            "counter",
            "Reset events not sent because no record could claim them: resets of connections the flow table held no record of while it was under pressure (a flood). Counted in teardown_resets_sent_total, not by port.",
            reasons.reset_events_skipped,
        );
        e.single(
            "teardown_resets_unclaimed_total",
            "counter",
            "Resets no connection record claimed: the connection never crossed the watched interface or was not tracked, or the host reset it more than once.",
            reasons.resets_unclaimed,
        );
    }
    let name = "teardown_listen_drops_total";
    e.family(
        name,
        "counter",
        "Handshake segments each listening port dropped since teardown started (the listeners' own sk_drops, read through sock_diag: a full accept queue, a full SYN queue with cookies off): at most 32 ports, and port=\"other\" (always present) for the rest.",
    );
    for (port, drops) in &reasons.listen_drops_by_port.listed {
        e.sample(name, &[("port", &port.to_string())], drops);
    }
    e.sample(
        name,
        &[("port", "other")],
        reasons.listen_drops_by_port.other,
    );
    if let Some(handshakes) = &reasons.handshakes {
        for (stem, help, value) in handshakes.each() {
            e.single(
                &format!("teardown_host_{stem}_total"),
                "counter",
                &format!("The host's TCP stack (this network namespace, /proc/net/netstat) since teardown started: {help}."),
                value,
            );
        }
    }

    let name = "teardown_build_info";
    e.family(name, "gauge", "teardown's version; always 1.");
    e.sample(name, &[("version", figures.run.version)], 1);
    let name = "teardown_interface_info";
    e.family(
        name,
        "gauge",
        "Each interface teardown watches and in which direction; always 1.",
    );
    for one in interfaces {
        e.sample(
            name,
            &[("iface", &one.iface), ("direction", figures.run.direction)],
            1,
        );
    }
    e.single(
        "teardown_start_time_seconds",
        "gauge",
        "When teardown started, in seconds since the Unix epoch.",
        figures.run.start_time_seconds,
    );
    let name = "teardown_metrics_connections_dropped_total";
    e.family(
        name,
        "counter",
        "Connections to this metrics endpoint closed without serving a scrape, by reason: evicted (cancelled at capacity for a newcomer: the oldest one still sending its request, else the oldest still being sent its answer), read_timeout (request not complete in time, answered 408), write_timeout (answer not taken in time), too_large (request head too large, answered 431).",
    );
    for (reason, count) in figures.endpoint_drops.by_reason() {
        e.sample(name, &[("reason", reason)], count);
    }
    if let Some(process) = &figures.process {
        process_families(&mut e, process);
    }
    e.out
}

/// The standard `process_*` families, named and described as the client
/// libraries export them.
fn process_families(e: &mut Exposition, process: &crate::report::process::ProcessFigures) {
    e.single(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        process.cpu_seconds,
    );
    e.single(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        process.resident_memory_bytes,
    );
    e.single(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        process.virtual_memory_bytes,
    );
    e.single(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        process.open_fds,
    );
    if let Some(max) = process.max_fds {
        e.single(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    e.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        process.start_time_seconds,
    );
}

/// `known` in order with their counts (0 if absent), then the map's other keys.
fn with_known_keys<'a>(
    known: &'a [&'a str],
    counts: &'a BTreeMap<&'static str, u64>,
) -> impl Iterator<Item = (&'a str, u64)> {
    known
        .iter()
        .map(|key| (*key, counts.get(key).copied().unwrap_or(0)))
        .chain(
            counts
                .iter()
                .filter(|(key, _)| !known.contains(key))
                .map(|(key, count)| (*key, *count)),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::tracker::Tracker;
    use std::{io::Write as _, process::Command};

    fn busy_snapshot() -> Figures {
        crate::report::figures::tests::busy_figures()
    }

    /// Figures at zero, without egress or outputs, as a test's starting point.
    fn zero(iface: &str, direction: &'static str) -> Figures {
        Figures::zero(
            &[iface],
            crate::report::figures::RunFacts::starting_now(direction),
            false,
            &[],
        )
    }

    /// The `teardown_half_open_timeouts_total` samples: (port label, value).
    fn half_open_timeout_samples(text: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter_map(|line| line.strip_prefix("teardown_half_open_timeouts_total{port=\""))
            .map(|rest| {
                let (port, value) = rest.split_once("\"} ").expect("a sample");
                (port.to_string(), value.parse().expect("a count"))
            })
            .collect()
    }

    #[test]
    fn half_open_timeouts_by_port_are_a_bounded_label_set_that_sums_to_the_total() {
        // Before any timeout: only `other`, at 0.
        let empty = render(&zero("eth0", "both"));
        assert_eq!(
            half_open_timeout_samples(&empty),
            [("other".to_string(), 0)]
        );
        let busy = half_open_timeout_samples(&render(&busy_snapshot()));
        assert_eq!(
            busy,
            [
                ("8080".to_string(), 12),
                ("443".to_string(), 3),
                ("other".to_string(), 40)
            ]
        );
        // A sweep over every port, three times, with one service timing
        // out before and throughout: at most the listed ports and `other`.
        let mut tracker = Tracker::new(teardown_common::conn::Timeouts::ZEEK);
        let ports = &mut tracker.stats.half_open_by_port;
        for _ in 0..10 {
            ports.add(9100, 0);
        }
        for round in 0..3 {
            for port in 1..=u16::MAX {
                ports.add(port, round);
                if port % 1000 == 0 {
                    ports.add(9100, round);
                }
            }
        }
        let total = ports.total();
        let mut snapshot = zero("eth0", "both");
        snapshot.interfaces[0].flows = crate::report::figures::FlowFigures::new(
            &teardown_common::events::FlowStats::default(),
            &tracker,
        );
        let text = render(&snapshot);
        let samples = half_open_timeout_samples(&text);
        assert_eq!(samples.len(), HALF_OPEN_PORTS_LISTED + 1, "{samples:?}");
        assert_eq!(samples[0], ("9100".to_string(), 10 + 3 * 65 + 3));
        assert_eq!(samples.last().map(|(port, _)| port.as_str()), Some("other"));
        assert_eq!(samples.iter().map(|(_, count)| count).sum::<u64>(), total);
        assert!(text.contains(&format!(
            "teardown_half_open_timeout_ports_folded_total {}\n",
            tracker.stats.half_open_by_port.folded()
        )));
        promtool_check(&text);
    }

    /// promtool, which the Debian package `prometheus` ships. Missing is a
    /// failure under CI (`cargo xtask test` installs it); elsewhere the check
    /// is skipped with a note.
    fn promtool() -> Option<&'static str> {
        let found = Command::new("promtool")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return Some("promtool");
        }
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            panic!(
                "promtool is missing (CI=true): install the Debian package prometheus, or run cargo xtask test"
            );
        }
        eprintln!("promtool not found: skipping the promtool check (apt-get install prometheus)");
        None
    }

    fn promtool_check(text: &str) {
        let Some(promtool) = promtool() else { return };
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting promtool");
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(text.as_bytes())
            .expect("writing to promtool");
        let output = child.wait_with_output().expect("waiting for promtool");
        assert!(
            output.status.success(),
            "promtool check metrics failed ({}): {}{}\n--- exposition ---\n{text}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn exposition_passes_promtool() {
        promtool_check(&render(&busy_snapshot()));
        promtool_check(&render(&zero("lo", "ingress")));
    }

    /// Every sample's family has HELP and TYPE before it, each family appears
    /// once, counters end in _total and nothing else does.
    #[test]
    fn every_family_is_declared_once_and_named_by_convention() {
        let text = render(&busy_snapshot());
        let mut declared: Vec<(String, String)> = Vec::new();
        let mut helped = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    !declared.iter().any(|(n, _)| n == name),
                    "{name} declared twice"
                );
                assert_eq!(
                    helped.last().map(String::as_str),
                    Some(name),
                    "HELP of {name}"
                );
                assert!(name.starts_with("teardown_"), "{name}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name} {kind}");
                declared.push((name.to_string(), kind.to_string()));
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(
                    declared.last().map(|(n, _)| n.as_str()),
                    Some(name),
                    "sample outside its family: {line}"
                );
            }
        }
        assert!(declared.len() >= 20, "{declared:?}");
    }

    #[test]
    fn every_counter_is_exported_once_with_its_value() {
        let snapshot = busy_snapshot();
        let text = render(&snapshot);
        let sent = snapshot.egress.expect("busy snapshot has egress").totals;
        for &counter in Counter::ALL {
            let (family, label) = exposition(counter);
            for (direction, counters) in [("in", &snapshot.received.totals), ("out", &sent)] {
                let sample = match label {
                    Some((name, value)) => {
                        format!("{family}{{direction=\"{direction}\",{name}=\"{value}\"}}")
                    }
                    None => format!("{family}{{direction=\"{direction}\"}}"),
                };
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|line| line.split(' ').next() == Some(sample.as_str()))
                    .collect();
                assert_eq!(
                    lines,
                    [format!("{sample} {}", counters.get(counter))],
                    "{counter:?} {direction}"
                );
            }
        }
        assert!(
            text.contains("teardown_tcp_flag_segments_total{direction=\"in\",flag=\"syn\"} 1009\n")
        );
        assert!(text.contains(
            "teardown_tcp_flag_segments_total{direction=\"out\",flag=\"syn_ack\"} 2010\n"
        ));
        assert!(text.contains("teardown_flow_lock_contended_total 5\n"));
        // Ingress only: no `out` samples, rather than zeros that look measured.
        let ingress = render(&zero("eth0", "ingress"));
        assert!(ingress.contains("teardown_packets_total{direction=\"in\"} 0\n"));
        assert!(!ingress.contains("direction=\"out\""), "{ingress}");
    }

    #[test]
    fn known_states_are_present_at_zero() {
        let text = render(&zero("eth0", "both"));
        for state in CONN_STATES {
            assert!(
                text.contains(&format!(
                    "teardown_connections_ended_total{{conn_state=\"{state}\"}} 0\n"
                )),
                "{state}"
            );
        }
        for kind in CLOSE_KINDS {
            assert!(text.contains(&format!(
                "teardown_connections_ended_by_close_total{{close=\"{}\"}} 0\n",
                kind.name()
            )));
        }
        let busy = render(&busy_snapshot());
        assert!(busy.contains("teardown_connections_ended_total{conn_state=\"SF\"} 7\n"));
        assert!(busy.contains("teardown_connections_ended_by_close_total{close=\"refused\"} 2\n"));
        assert!(busy.contains("teardown_half_open_connections 1\n"));
        assert!(busy.contains("teardown_events_lost_total 4\n"));
        assert!(busy.contains("teardown_output_lines_lost_total{output=\"stdout\"} 0\n"));
        assert!(busy.contains("teardown_flow_table_capacity 131072\n"));
        assert!(busy.contains("teardown_output_lines_lost_total{output=\"log\"} 12\n"));
        // No --log: no log sample, rather than a 0 that looks measured.
        assert!(!text.contains("output=\"log\""), "{text}");
        // No alerts yet: the family is declared, with no samples.
        assert!(text.contains("# TYPE teardown_syn_flood_alert_active gauge\n"));
        assert!(!text.contains("teardown_syn_flood_alert_active{"));
        for reason in ["evicted", "read_timeout", "write_timeout", "too_large"] {
            assert!(
                text.contains(&format!(
                    "teardown_metrics_connections_dropped_total{{reason=\"{reason}\"}} 0\n"
                )),
                "{reason}"
            );
        }
    }

    /// Each interface's figures under its own `iface` label, the host's
    /// without one.
    #[test]
    fn several_interfaces_are_labelled_each_with_its_own() {
        let text = render(&crate::report::figures::tests::two_interface_figures());
        for sample in [
            "teardown_packets_total{iface=\"eth0\",direction=\"in\"} 5\n",
            "teardown_packets_total{iface=\"eth1\",direction=\"in\"} 7\n",
            "teardown_packets_total{iface=\"eth1\",direction=\"out\"} 1\n",
            "teardown_flows_created_total{iface=\"eth0\"} 3\n",
            "teardown_flows_created_total{iface=\"eth1\"} 4\n",
            "teardown_connections_ended_by_close_total{iface=\"eth0\",close=\"abort\"} 0\n",
            "teardown_connections_ended_by_close_total{iface=\"eth1\",close=\"abort\"} 3\n",
            "teardown_half_open_timeouts_total{iface=\"eth1\",port=\"443\"} 1\n",
            "teardown_half_open_timeouts_total{iface=\"eth0\",port=\"other\"} 0\n",
            "teardown_interface_info{iface=\"eth0\",direction=\"both\"} 1\n",
            "teardown_interface_info{iface=\"eth1\",direction=\"both\"} 1\n",
            "teardown_output_lines_lost_total{output=\"stdout\"} 0\n",
            "teardown_records_summarised_total 0\n",
        ] {
            assert!(text.contains(sample), "{sample:?} missing from:\n{text}");
        }
        promtool_check(&text);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("line\nbreak"), r"line\nbreak");
        assert_eq!(escape_label_value("plain:80 [::1]"), "plain:80 [::1]");
        let text = render(&busy_snapshot());
        assert!(
            text.contains(
                "teardown_syn_flood_alert_active{target=\"odd \\\"target\\\" \\\\ with\\nnewline\"} 0\n"
            ),
            "{text}"
        );
        assert!(text.contains("teardown_syn_flood_alert_active{target=\"192.0.2.2:80\"} 1\n"));
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }
}

//! SYN floods, live: teardown on the server's interface in both directions
//! (XDP ingress, TC egress), a real listener behind it.
//!
//! * A random-source flood (hping3) must start an alert for the listener's
//!   address and port within a second of its first packet, by the
//!   timestamps teardown and tcpdump record, and end it after the flood
//!   stops; an established connection to the same listener lives through it
//!   and is reported exactly, and the flow table stays within its size.
//! * A burst of thousands of real connections, above the SYN-rate floor,
//!   must raise no alert, and every connection must be reported.

mod support;

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::Mutex,
    thread,
    time::Duration,
};

use serde_json::Value;
use support::*;

/// The two tests take turns: a flood saturates this machine's cores, and a
/// burst run beside it is then no longer a legitimate burst on a healthy
/// host (its handshakes and teardown's polls are delayed, and the detector
/// has been seen to alert on it).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn events<'a>(lines: &'a [Value], event: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    lines.iter().filter(move |value| value["event"] == event)
}

/// The final event's `flows`, without its half-open timeouts by port (one
/// entry per spoofed source port in a flood).
fn final_flows(lines: &[Value], stderr: &str) -> Value {
    let mut flows = events(lines, "final")
        .next()
        .unwrap_or_else(|| panic!("no final event; teardown's stderr: {stderr}"))["flows"]
        .clone();
    if let Some(flows) = flows.as_object_mut() {
        flows.remove("half_open_timeouts_by_port");
    }
    flows
}

/// Timestamps (Unix seconds, as tcpdump recorded them) of the packets in a
/// capture.
fn packet_times(capture: &std::path::Path) -> Vec<f64> {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args(["-T", "fields", "-e", "frame.time_epoch"]));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            line.trim()
                .parse()
                .unwrap_or_else(|_| panic!("tshark time {line:?}"))
        })
        .collect()
}

/// IPv4 datagrams the namespace's IP layer has received (`InReceives`),
/// counted before any check: some of a random-source flood's sources are
/// martians, which IP drops before TCP sees them.
fn ipv4_datagrams_received(netns: &str) -> u64 {
    nstat(netns, "IpInReceives")
}

/// SYNs the namespace's listeners dropped (`ListenDrops`): handshakes the
/// server itself failed, e.g. with a full accept queue.
fn listen_drops(netns: &str) -> u64 {
    nstat(netns, "TcpExtListenDrops")
}

/// The listener's port, and the connections' destination port in the burst.
const FLOOD_PORT: u16 = 9100;
const BURST_PORT: u16 = 9101;
const MAX_FLOWS: u64 = 4096;

/// Sends `message` and reads the expected reply of the same length.
fn exchange(writer: &mut TcpStream, reader: &mut TcpStream, message: &[u8], reply: &[u8]) {
    writer.write_all(message).expect("canary write");
    let mut got = vec![0u8; message.len()];
    reader.read_exact(&mut got).expect("canary read");
    assert_eq!(got, message, "the canary's bytes arrived changed");
    reader.write_all(reply).expect("canary reply");
    let mut got = vec![0u8; reply.len()];
    writer.read_exact(&mut got).expect("canary reply read");
    assert_eq!(got, reply, "the canary's reply arrived changed");
}

/// A real connection from the client's namespace to `server`, accepted on
/// `listener`: (client end, server end, the client's address), each end
/// with a read timeout.
fn connect_real(
    lab: &Lab,
    listener: &TcpListener,
    server: std::net::SocketAddr,
) -> (TcpStream, TcpStream, std::net::SocketAddr) {
    let client = in_netns(&lab.client_ns, move || {
        TcpStream::connect(server).expect("connect from the client's namespace")
    })
    .join()
    .expect("the client thread panicked");
    let (server_end, _) = listener.accept().expect("accept");
    for end in [&client, &server_end] {
        end.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
    }
    let address = client.local_addr().expect("client address");
    (client, server_end, address)
}

/// Closes a connection from `connect_real` gracefully, the client first,
/// and waits for both FINs.
fn close_from_client(mut client: TcpStream, mut server_end: TcpStream) {
    client.shutdown(Shutdown::Write).expect("close");
    let mut rest = Vec::new();
    server_end
        .read_to_end(&mut rest)
        .expect("EOF at the server");
    assert!(rest.is_empty(), "{rest:?}");
    drop(server_end);
    client.read_to_end(&mut rest).expect("the server's FIN");
}

/// hping3 flooding `SERVER_V4:port` from the client's namespace with
/// random sources, TCP flag option `flag` (`-S`, `-A`).
fn start_hping_flood(lab: &Lab, flag: &str, port: u16) -> ChildGuard {
    let port = port.to_string();
    ChildGuard::new(
        Command::new("ip")
            .args(["netns", "exec", &lab.client_ns, "hping3", flag, "--flood"])
            .args(["--rand-source", "-p", &port, SERVER_V4])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting hping3 (Debian package hping3)"),
    )
}

/// Stops hping3 and returns the packets it says it sent, with its output.
fn stop_hping(mut hping: ChildGuard) -> (u64, String) {
    let hping_child = hping.child.take().expect("hping3 running");
    // SIGINT: hping3 prints its statistics and exits. (`ip netns exec`
    // execs it, so the pid is hping3's.)
    // SAFETY: kill() on a pid we own and have not reaped.
    unsafe { libc::kill(hping_child.id() as i32, libc::SIGINT) };
    let hping_output = hping_child.wait_with_output().expect("waiting for hping3");
    let hping_text = format!(
        "{}{}",
        String::from_utf8_lossy(&hping_output.stdout),
        String::from_utf8_lossy(&hping_output.stderr)
    );
    let sent = hping_text
        .lines()
        .find_map(|line| {
            line.split(" packets transmitted")
                .next()
                .filter(|_| line.contains("packets transmitted"))
        })
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no packet count in hping3's output: {hping_text}"));
    (sent, hping_text)
}

/// A random-source SYN flood against a real listener, with an established
/// connection (the canary) to the same listener open through it.
#[test]
fn a_random_source_syn_flood_alerts_within_a_second_and_spares_established_connections() {
    let _turn = one_at_a_time();
    let lab = Lab::new();
    // The server answers the spoofed sources (with SYN cookies, once its
    // SYN queue is full) through the client, which drops them.
    lab.route_server_replies_via(CLIENT_V4)
        .expect("routing the server's replies through the client");
    let server = socket_addr(SERVER_V4, FLOOD_PORT);
    let listener = listen_in(&lab.server_ns, server);

    let canary_capture = std::env::temp_dir().join(format!("{}-canary.pcap", lab.server_ns));
    let flood_capture = std::env::temp_dir().join(format!("{}-flood.pcap", lab.server_ns));
    let canary_tcpdump = start_tcpdump_with(
        &lab.server_ns,
        &lab.server_if,
        &canary_capture,
        &[],
        &format!("tcp and host {CLIENT_V4} and port {FLOOD_PORT}"),
    );
    // Only the flood's first SYNs (any SYN not from the client's own
    // address), so tcpdump keeps up: the first one starts the clock.
    let flood_tcpdump = start_tcpdump_with(
        &lab.server_ns,
        &lab.server_if,
        &flood_capture,
        &["-c", "100"],
        &format!(
            "dst host {SERVER_V4} and dst port {FLOOD_PORT} and not src host {CLIENT_V4} and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"
        ),
    );
    let max_flows = MAX_FLOWS.to_string();
    // Every IPv4 datagram the server receives while teardown watches,
    // teardown must have counted. The server's count is read before
    // teardown starts and again once it says it is watching: a datagram
    // arriving between the two may or may not have been counted.
    let datagrams_before = ipv4_datagrams_received(&lab.server_ns);
    let (mut teardown, stderr) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &[
            "--mode",
            "native",
            "--max-flows",
            &max_flows,
            "--syn-timeout",
            "2s",
            "--alert-quiet",
            "1s",
            "--alert-update",
            "1s",
        ],
    );
    let datagrams_at_attach = ipv4_datagrams_received(&lab.server_ns);
    let watched = JsonLines::watch(&mut teardown, stderr);

    // The canary: set up and used before the flood.
    let (mut client, mut server_end, canary) = connect_real(&lab, &listener, server);
    exchange(
        &mut client,
        &mut server_end,
        b"canary before the flood",
        b"still here",
    );
    thread::sleep(Duration::from_millis(300));

    // The flood, from the client's namespace, for four seconds.
    let hping = start_hping_flood(&lab, "-S", FLOOD_PORT);
    thread::sleep(Duration::from_secs(4));
    let (sent, hping_text) = stop_hping(hping);
    let flood_stopped = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time after 1970")
        .as_secs_f64();

    // The canary, after the flood: still works, then closes gracefully
    // (client first). A pause first, so tcpdump has caught up.
    thread::sleep(Duration::from_secs(1));
    exchange(
        &mut client,
        &mut server_end,
        b"canary after the flood",
        b"survived",
    );
    close_from_client(client, server_end);
    // Nothing from the client's side reaches the server from here on: the
    // server's SYN queue still retransmits SYN-ACKs for up to half a
    // minute, and the resets they draw could land after teardown stops
    // (counted by Ip InReceives, not by teardown, as a CI run saw: 2 of
    // 773,129). A moment first for the canary's last ACK.
    thread::sleep(Duration::from_millis(300));
    nft(
        &lab.client_ns,
        "table inet td_flood_quiet {\n  chain output {\n    type filter hook output priority 0;\n    drop\n  }\n}\n",
    );

    // The alert ends (half-open flows time out after 2 s, then 1 s quiet),
    // and the canary's record comes 5 s after its close.
    let target = format!("{SERVER_V4}:{FLOOD_PORT}");
    let is_canary = |value: &Value| {
        value["event"] == "conn"
            && value["id.orig_h"] == canary.ip().to_string()
            && value["id.orig_p"] == canary.port()
    };
    let ended = watched.wait_for(Duration::from_secs(15), |value| {
        value["event"] == "syn_flood" && value["target"] == target && value["phase"] == "end"
    });
    watched.wait_for(Duration::from_secs(10), is_canary);
    // The server's count just before teardown stops and just after: a
    // packet arriving in between (a late retransmission) is in the second
    // and maybe in teardown's, never in the first.
    let datagrams_while_watched = ipv4_datagrams_received(&lab.server_ns) - datagrams_at_attach;
    let (lines, _output, stderr) = watched.finish(teardown);
    let datagrams_received = ipv4_datagrams_received(&lab.server_ns) - datagrams_before;
    // The namespace is new: its count is the test's.
    let cookies_sent = nstat(&lab.server_ns, "TcpExtSyncookiesSent");
    let _ = canary_tcpdump.terminate();
    let _ = flood_tcpdump.terminate();
    drop(listener);
    let canary_packets = connection_packets(&canary_capture, canary, server);
    let flood_times = packet_times(&flood_capture);
    let _ = std::fs::remove_file(&canary_capture);
    let _ = std::fs::remove_file(&flood_capture);

    // The premise: the flood reached the server, and teardown counted it.
    let totals = events(&lines, "final")
        .next()
        .unwrap_or_else(|| panic!("no final event; stderr: {stderr}"))["totals"]
        .clone();
    let syns = totals["syn"].as_u64().expect("syn total");
    eprintln!("flood: hping3 sent {sent} SYNs, teardown counted {syns} SYNs");
    assert!(
        sent > 20_000,
        "hping3 sent only {sent} SYNs in 4 s: {hping_text}"
    );
    // hping3's own count may miss the last few it sent as it was stopped.
    assert!(
        syns <= sent + 10 && syns * 10 >= sent * 9,
        "teardown counted {syns} SYNs; hping3 sent {sent} (and the canary 1)"
    );
    // Exact under the flood: teardown's IPv4 count is what the server's IP
    // layer received while teardown watched (up to the few that arrived as
    // it started or stopped).
    let ipv4 = totals["ipv4"].as_u64().expect("ipv4 total");
    let while_starting = datagrams_at_attach - datagrams_before;
    assert!(
        (datagrams_while_watched..=datagrams_received).contains(&ipv4),
        "teardown's IPv4 frames {ipv4} against the server's Ip InReceives: {datagrams_while_watched} from its start to before it stopped, {datagrams_received} from before it started to after it stopped ({while_starting} while it started): {totals}"
    );
    let first_flood_packet = *flood_times
        .first()
        .expect("tcpdump saw no flood SYN at the server");

    // The canary lived through it and is reported exactly.
    let canary_records: Vec<&Value> = lines.iter().filter(|value| is_canary(value)).collect();
    assert_eq!(
        canary_records.len(),
        1,
        "one record for the canary {canary}: {canary_records:#?}"
    );
    let record = canary_records[0];
    assert_eq!(
        (
            record["conn_state"].as_str(),
            record["close"].as_str(),
            record["closed_by"].as_str(),
            record.get("rst_cause"),
            &record["orig_guessed"],
        ),
        (
            Some("SF"),
            Some("graceful"),
            Some("orig"),
            None,
            &Value::Bool(false)
        ),
        "the canary: {record}"
    );
    assert_eq!(
        (record["orig_pkts"].as_u64(), record["resp_pkts"].as_u64()),
        (Some(canary_packets.0), Some(canary_packets.1)),
        "the canary's packets against tcpdump's count: {record}"
    );

    // The flow table stayed within its size, and shed the flood.
    let flows = final_flows(&lines, &stderr);
    eprintln!("flood: final flows {flows}");
    let tracked = flows["tracked"].as_u64().expect("tracked");
    assert!(tracked <= MAX_FLOWS, "{tracked} tracked: {flows}");
    // Beyond the half-open budget a SYN is not even looked up; the
    // records made for the SYN-ACKs the server sends back are one-sided
    // and evicted for one another.
    let untracked = flows["syn_untracked"].as_u64().expect("syn_untracked");
    let evicted = flows["evicted"].as_u64().expect("evicted");
    assert!(
        untracked * 10 >= syns * 9 && evicted > 0,
        "the flood must be shed: {untracked} of {syns} SYNs untracked, {evicted} records evicted: {flows}"
    );
    assert_eq!(flows["events_lost"], 0, "{flows}");

    // The alert: for the listener, started within a second of the flood's
    // first packet, judged on failed handshakes from spoofed sources.
    let alerts: Vec<&Value> = events(&lines, "syn_flood")
        .filter(|value| value["target"] == target)
        .collect();
    let start = *alerts
        .iter()
        .find(|value| value["phase"] == "start")
        .unwrap_or_else(|| {
            panic!(
                "no syn_flood start for {target}; alerts: {:#?}; stderr: {stderr}",
                events(&lines, "syn_flood").collect::<Vec<_>>()
            )
        });
    let alert_ts = start["ts"].as_f64().expect("alert ts");
    let latency = alert_ts - first_flood_packet;
    eprintln!(
        "flood: first flood SYN at {first_flood_packet:.6} (tcpdump), alert start at {alert_ts:.6} (teardown): latency {:.0} ms",
        latency * 1000.0
    );
    assert!(
        (0.0..1.0).contains(&latency),
        "the alert must start within 1 s of the flood's first packet: first SYN at {first_flood_packet:.6}, alert at {alert_ts:.6}, {latency:.3} s: {start}"
    );
    let triggers = start["triggers"].as_array().expect("triggers");
    match start["completion_ratio"].as_f64() {
        Some(ratio) => assert!(ratio < 0.2, "completion ratio {ratio}: {start}"),
        None => assert!(
            triggers.contains(&Value::from("half_open")),
            "no completion ratio, so the half-open rule must have fired: {start}"
        ),
    }
    assert!(!triggers.is_empty(), "{start}");
    let distinct = start["distinct_sources"].as_f64().unwrap_or(0.0);
    assert!(
        distinct > 1000.0,
        "spoofed sources: want > 1000 distinct, got {distinct}: {start}"
    );
    // Each spoofed address sends a SYN or two: none may be listed as a
    // heavy hitter, at the start or later (docs/flood-detection.md: "a
    // spoofed flood has none, and lists none").
    for event in &alerts {
        assert_eq!(
            event["top_sources"],
            Value::Array(vec![]),
            "no spoofed source has a share: {event}"
        );
    }
    assert_eq!(
        (start["target_addr"].as_str(), start["target_port"].as_u64()),
        (Some(SERVER_V4), Some(FLOOD_PORT as u64)),
        "{start}"
    );
    // One alert, updated while the flood lasts, ended after it stopped.
    let end = ended.unwrap_or_else(|| panic!("no end event for {target}: {alerts:#?}"));
    let phases: Vec<&str> = alerts
        .iter()
        .map(|value| value["phase"].as_str().expect("phase"))
        .collect();
    assert!(
        phases.len() >= 2
            && phases[0] == "start"
            && phases[phases.len() - 1] == "end"
            && phases[1..phases.len() - 1]
                .iter()
                .all(|phase| *phase == "update"),
        "one alert for one flood, start, updates, end: {phases:?}"
    );
    // What the host's own stack made of it (SYN cookies are on by
    // default): the end event says it coped, with cookies the namespace
    // counted itself.
    let host = &end["host"];
    let cookies = host["syncookies_sent"].as_u64().unwrap_or(0);
    assert!(
        cookies > 0 && cookies <= cookies_sent,
        "the alert's host figures: {cookies} cookies of the namespace's {cookies_sent}: {end}"
    );
    assert!(
        host["verdict"]
            .as_str()
            .is_some_and(|verdict| verdict.contains(&format!("{cookies} SYN cookies sent"))),
        "{end}"
    );
    let end_ts = end["ts"].as_f64().expect("end ts");
    assert!(
        end_ts > flood_stopped,
        "the alert ended at {end_ts:.6}, before the flood stopped at {flood_stopped:.6}: {end}"
    );
    // `started` is the start's time, as each event computes it from its own
    // clock reading: equal to within a poll.
    let (started, end_started) = (
        start["started"].as_f64().expect("started"),
        end["started"].as_f64().expect("end's started"),
    );
    assert!(
        (started - end_started).abs() < 0.1,
        "the end's `started` must be the start's: {start} {end}"
    );
    eprintln!(
        "flood: alert ended {:.3} s after the flood stopped, {} events; distinct sources {} at the end for {sent} spoofed SYNs; alerts for *: {}",
        end_ts - flood_stopped,
        phases.len(),
        end["distinct_sources"],
        events(&lines, "syn_flood")
            .filter(|value| value["target"] == "*")
            .count()
    );
}

/// The ACK flood's destination port: a listener's, so the server answers
/// each spoofed ACK with a RST, which the egress program sees too.
const ACK_FLOOD_PORT: u16 = 9102;

/// A random-source ACK flood: no handshake, so no SYN admission; each
/// packet, and each RST the server answers it with, would start a
/// one-sided record and push another out. Once the table is under
/// pressure, those starts get a budget of their own and the rest are only
/// counted (`midstream_untracked`), while a real connection opened during
/// the flood is tracked whole, from its SYN: the ACKs do not spend the
/// SYNs' budget. The server's resets to the spoofed sources reach user
/// space as counts, not as events (`reset_events_skipped`).
#[test]
fn a_random_source_ack_flood_is_held_to_the_midstream_budget() {
    let _turn = one_at_a_time();
    let lab = Lab::new();
    // The server's RSTs to the spoofed sources go out through the client,
    // which drops them.
    lab.route_server_replies_via(CLIENT_V4)
        .expect("routing the server's replies through the client");
    let server = socket_addr(SERVER_V4, ACK_FLOOD_PORT);
    let listener = listen_in(&lab.server_ns, server);
    let max_flows = MAX_FLOWS.to_string();
    let (mut teardown, stderr) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &["--mode", "native", "--max-flows", &max_flows],
    );
    let watched = JsonLines::watch(&mut teardown, stderr);

    let hping = start_hping_flood(&lab, "-A", ACK_FLOOD_PORT);
    // A real connection in the middle of the flood, closed by the client.
    thread::sleep(Duration::from_millis(1500));
    let (mut client, mut server_end, real) = connect_real(&lab, &listener, server);
    exchange(
        &mut client,
        &mut server_end,
        b"through an ACK flood",
        b"made it",
    );
    close_from_client(client, server_end);
    thread::sleep(Duration::from_millis(1500));
    let (sent, hping_text) = stop_hping(hping);

    // The real connection's record comes after the close delay.
    let is_real = |value: &Value| {
        value["event"] == "conn"
            && value["id.orig_h"] == real.ip().to_string()
            && value["id.orig_p"] == real.port()
    };
    watched.wait_for(Duration::from_secs(15), is_real);
    let (lines, _output, stderr) = watched.finish(teardown);
    drop(listener);

    assert!(
        sent > 20_000,
        "hping3 sent only {sent} ACKs in 3 s: {hping_text}"
    );
    let flows = final_flows(&lines, &stderr);
    eprintln!("ack flood: hping3 sent {sent} ACKs; final flows {flows}");
    let created = flows["created"].as_u64().expect("created");
    let untracked = flows["midstream_untracked"]
        .as_u64()
        .expect("midstream_untracked");
    // The flood's ACKs and the server's RSTs, each without a record, were
    // either admitted (a record, most of them evicted again) or refused.
    // Without the budget every one would have been a record.
    assert!(
        untracked > 0 && untracked * 10 >= (created + untracked) * 8,
        "the ACK flood must be held to the mid-stream budget: {untracked} refused, {created} records created, for {sent} ACKs: {flows}"
    );
    let tracked = flows["tracked"].as_u64().expect("tracked");
    assert!(tracked <= MAX_FLOWS, "{flows}");
    // Every record made is accounted for: written (ended), evicted, or its
    // event lost, counted. Before the budget applies (the flood's first
    // admission window) records come by the thousand, most of them closed
    // at once by the server's RST and handed over to make room; the test's
    // unoptimised build of teardown may fall behind on them.
    let ended: u64 = flows["ended_by_conn_state"]
        .as_object()
        .expect("ended_by_conn_state")
        .values()
        .map(|count| count.as_u64().expect("a count"))
        .sum();
    let evicted = flows["evicted"].as_u64().expect("evicted");
    let lost = flows["events_lost"].as_u64().expect("events_lost");
    assert_eq!(
        created,
        ended + evicted + lost + tracked,
        "records created against ended {ended} + evicted {evicted} + lost {lost} + tracked {tracked}: {flows}"
    );

    // The server answered each spoofed ACK with a reset. While the table
    // was under pressure, the reset program sent user space no event for
    // those of connections without a record (no record could claim them):
    // counted by reason all the same.
    let reasons = &events(&lines, "final")
        .next()
        .unwrap_or_else(|| panic!("no final event; stderr: {stderr}"))["kernel_reasons"];
    if reasons["resets_watched"] == true {
        let sent: u64 = reasons["resets_sent"]
            .as_object()
            .expect("resets_sent")
            .values()
            .map(|count| count.as_u64().expect("a count"))
            .sum();
        let skipped = reasons["reset_events_skipped"]
            .as_u64()
            .expect("reset_events_skipped");
        eprintln!("ack flood: {sent} resets sent, {skipped} of their events skipped: {reasons}");
        assert!(
            skipped > 0 && skipped <= sent && skipped * 2 >= sent,
            "most of the flood's resets must not reach user space: {skipped} of {sent} skipped: {reasons}"
        );
    }

    // The real connection: tracked from its SYN, whole.
    let records: Vec<&Value> = lines.iter().filter(|value| is_real(value)).collect();
    assert_eq!(
        records.len(),
        1,
        "one record for the connection {real}: {records:#?}"
    );
    let record = records[0];
    assert_eq!(
        (
            record["conn_state"].as_str(),
            record["close"].as_str(),
            record["closed_by"].as_str(),
            &record["orig_guessed"],
        ),
        (
            Some("SF"),
            Some("graceful"),
            Some("orig"),
            &Value::Bool(false)
        ),
        "the connection made during the ACK flood: {record}"
    );
    assert!(
        record["history"]
            .as_str()
            .is_some_and(|history| history.starts_with("ShA")),
        "its handshake seen: {record}"
    );
}

/// Connections a burst opens, and the client threads that open them.
const BURST: usize = 4000;
const BURST_THREADS: usize = 8;

/// Client ports of the burst, one per connection, below the kernel's
/// ephemeral range (32768 up).
const BURST_FIRST_CLIENT_PORT: u16 = 20_000;

/// A connection from `CLIENT_V4:port` to `server`. Each burst connection
/// gets its own port: left to itself the kernel reuses the ports of
/// connections closed a moment ago, and a connection whose SYN went
/// untracked (beyond the kernel's half-open budget) is then counted into
/// the previous connection's record, still lingering after its close.
fn connect_from(port: u16, server: std::net::SocketAddr) -> TcpStream {
    support::connect_from(socket_addr(CLIENT_V4, port), server, ConnectFrom::default())
        .unwrap_or_else(|err| panic!("connect from port {port}: {err}"))
}

/// A legitimate burst: thousands of real connections, faster than the SYN
/// rate floor (1000/s), each completed and closed. Every handshake
/// completes, so no alert may start; every connection is reported.
#[test]
fn a_burst_of_real_connections_above_the_syn_rate_floor_raises_no_alert() {
    let _turn = one_at_a_time();
    let lab = Lab::new();
    let server = socket_addr(SERVER_V4, BURST_PORT);
    let capture = std::env::temp_dir().join(format!("{}-burst.pcap", lab.server_ns));
    let tcpdump = start_tcpdump_with(
        &lab.server_ns,
        &lab.server_if,
        &capture,
        &[],
        &format!("tcp port {BURST_PORT} and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"),
    );
    let drops_before = listen_drops(&lab.server_ns);
    let (mut teardown, stderr) =
        start_teardown(&lab.server_ns, &lab.server_if, &["--mode", "native"]);
    let watched = JsonLines::watch(&mut teardown, stderr);

    // The server accepts and closes at once: each connection is a
    // handshake, the server's FIN, the client's FIN.
    let accepter = in_netns(&lab.server_ns, move || {
        let listener = TcpListener::bind(server).expect("binding the server");
        // A backlog for the whole burst: with the standard library's 128,
        // the accept queue overflows, the kernel drops SYNs and they are
        // retried a second later, which is a server failing handshakes, not
        // a legitimate surge that completes. (listen() again on a listening
        // socket only changes its backlog.)
        // SAFETY: listen(2) on a socket this thread owns.
        let relisted = unsafe { libc::listen(listener.as_raw_fd(), BURST as i32) };
        assert_eq!(relisted, 0, "raising the listen backlog");
        for _ in 0..BURST {
            let (stream, _) = listener.accept().expect("accept");
            drop(stream);
        }
    });
    thread::sleep(Duration::from_millis(300));
    let clients: Vec<_> = (0..BURST_THREADS)
        .map(|thread| {
            in_netns(&lab.client_ns, move || {
                let mut ports = Vec::new();
                for i in 0..BURST / BURST_THREADS {
                    let port =
                        BURST_FIRST_CLIENT_PORT + (thread * BURST / BURST_THREADS + i) as u16;
                    let mut stream = connect_from(port, server);
                    ports.push(port);
                    let mut sink = Vec::new();
                    stream.read_to_end(&mut sink).expect("burst read");
                }
                ports
            })
        })
        .collect();
    let mut opened = Vec::new();
    for client in clients {
        opened.extend(client.join().expect("a burst client panicked"));
    }
    accepter.join().expect("the accepting thread panicked");
    assert_eq!(opened.len(), BURST);
    // The premise: a surge whose handshakes all complete. A listener that
    // drops SYNs fails handshakes, and an alert would be right.
    assert_eq!(
        listen_drops(&lab.server_ns) - drops_before,
        0,
        "the server's listener dropped SYNs: not a burst that completes"
    );

    // Records come 5 s after each close: wait until teardown tracks
    // nothing any more (every record reported).
    thread::sleep(Duration::from_secs(5));
    wait_until(Duration::from_secs(10), || {
        watched
            .latest_flows()
            .is_some_and(|flows| flows["tracked"] == 0)
    });
    let (lines, _output, stderr) = watched.finish(teardown);
    let _ = tcpdump.terminate();
    let syn_times = packet_times(&capture);
    let _ = std::fs::remove_file(&capture);

    // The premise, by tcpdump: every connection's SYN, faster than the
    // floor on average over the whole burst.
    assert!(
        syn_times.len() >= BURST,
        "tcpdump saw {} SYNs for {BURST} connections",
        syn_times.len()
    );
    let first = syn_times.iter().copied().fold(f64::INFINITY, f64::min);
    let last = syn_times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let rate = syn_times.len() as f64 / (last - first);
    let peak_poll_rate = events(&lines, "stats")
        .filter_map(|value| value["rates"]["syn"].as_f64())
        .fold(0.0, f64::max);
    eprintln!(
        "burst: {} SYNs in {:.3} s (tcpdump): {rate:.0} SYN/s on average; teardown's highest 100 ms rate {peak_poll_rate:.0} SYN/s",
        syn_times.len(),
        last - first
    );
    assert!(
        rate > 1000.0,
        "the burst must exceed the 1000 SYN/s floor: {} SYNs from {first:.6} to {last:.6}, {rate:.0}/s",
        syn_times.len()
    );

    // No alert, for the destination or for all of them.
    let alerts: Vec<&Value> = events(&lines, "syn_flood").collect();
    assert!(
        alerts.is_empty(),
        "a legitimate burst raised alerts: {alerts:#?}"
    );

    // Every connection reported once, a completed, graceful close.
    let records: Vec<&Value> = lines
        .iter()
        .filter(|value| value["event"] == "conn" && value["id.resp_p"] == BURST_PORT)
        .collect();
    let odd: Vec<&&Value> = records
        .iter()
        .filter(|record| record["conn_state"] != "SF" || record["close"] != "graceful")
        .take(5)
        .collect();
    assert!(
        odd.is_empty(),
        "every burst record must be SF, graceful: {odd:#?}"
    );
    let mut reported: Vec<u16> = records
        .iter()
        .map(|record| record["id.orig_p"].as_u64().expect("orig_p") as u16)
        .collect();
    reported.sort_unstable();
    let missing: Vec<u16> = opened
        .iter()
        .copied()
        .filter(|port| reported.binary_search(port).is_err())
        .collect();
    eprintln!(
        "burst: {} records for {BURST} connections, {} with the originator guessed (SYN untracked), {} connections without a record",
        records.len(),
        records
            .iter()
            .filter(|record| record["orig_guessed"] == true)
            .count(),
        missing.len()
    );
    reported.dedup();
    assert_eq!(
        reported.len(),
        records.len(),
        "one record per connection (each has its own client port)"
    );
    // A legitimate burst below the flood threshold: every connection gets
    // its record, from its SYN (issue 11).
    assert!(
        missing.is_empty(),
        "{} of {BURST} connections have no record, e.g. client ports {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let guessed = records
        .iter()
        .filter(|record| record["orig_guessed"] == true)
        .count();
    assert_eq!(guessed, 0, "burst records whose SYN went untracked");
    let flows = final_flows(&lines, &stderr);
    eprintln!("burst: final flows {flows}");
    for trouble in ["events_lost", "insert_failed", "syn_untracked", "evicted"] {
        assert_eq!(flows[trouble], 0, "{trouble}: {flows}");
    }
    assert_eq!(
        flows["created"].as_u64(),
        Some(records.len() as u64),
        "every record created was reported: {flows}"
    );
}

//! Live connection records: real kernel TCP between two namespaces, teardown
//! attached to the server's interface in both directions (XDP ingress, TC
//! egress). Each way of ending a connection gets its own server port; the
//! record teardown prints for it must say exactly how it ended, and its
//! packet counts must equal tcpdump's count of the same connection.
//!
//! Seven scenarios share one lab. The others need the network itself to
//! misbehave (nftables drops chosen packets) or teardown to start late, so
//! each has a lab of its own.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;
use support::*;

/// One scenario per server port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// The client sends a request and closes first; the server then closes.
    GracefulByClient = 9001,
    /// The server sends a reply and closes first; the client then closes.
    GracefulByServer = 9002,
    /// The client half-closes, the server keeps sending, then closes.
    HalfCloseThenClose = 9003,
    /// The client closes with SO_LINGER 0: a RST on an established connection.
    AbortByClient = 9004,
    /// The server closes with SO_LINGER 0.
    AbortByServer = 9005,
    /// Nothing listens: the server's kernel answers the SYN with a RST.
    Refused = 9006,
    /// Established, then silent past the idle timeout.
    Idle = 9007,
    /// Both sides send a FIN before the other's has reached them: the FINs
    /// cross (own lab).
    SimultaneousClose = 9008,
    /// The server's SYN-ACKs never leave its namespace: the SYN goes
    /// unanswered past the SYN timeout (own lab).
    HalfOpen = 9009,
    /// The server dropped the connection without telling the client; the
    /// client's next segment is answered with a RST, and teardown never saw
    /// the setup (own lab).
    UnknownConnection = 9010,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario::GracefulByClient,
    Scenario::GracefulByServer,
    Scenario::HalfCloseThenClose,
    Scenario::AbortByClient,
    Scenario::AbortByServer,
    Scenario::Refused,
    Scenario::Idle,
];

/// Every scenario, for telling the ports in a capture apart.
const ALL_SCENARIOS: [Scenario; 10] = [
    Scenario::GracefulByClient,
    Scenario::GracefulByServer,
    Scenario::HalfCloseThenClose,
    Scenario::AbortByClient,
    Scenario::AbortByServer,
    Scenario::Refused,
    Scenario::Idle,
    Scenario::SimultaneousClose,
    Scenario::HalfOpen,
    Scenario::UnknownConnection,
];

/// (conn_state, close, closed_by, rst_cause) each scenario must produce;
/// `None`: the field is left out of the record, as Zeek leaves out unset
/// fields.
fn expected(
    scenario: Scenario,
) -> (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
) {
    let orig = Some("orig");
    let resp = Some("resp");
    match scenario {
        Scenario::GracefulByClient => ("SF", "graceful", orig, None),
        Scenario::GracefulByServer => ("SF", "graceful", resp, None),
        Scenario::HalfCloseThenClose => ("SF", "graceful", orig, None),
        Scenario::AbortByClient => ("RSTO", "abort", orig, Some("abort")),
        Scenario::AbortByServer => ("RSTR", "abort", resp, Some("abort")),
        Scenario::Refused => ("REJ", "refused", resp, Some("refused")),
        Scenario::Idle => ("S1", "idle", None, None),
        // Both endpoints CLOSED: SF. The second FIN did not acknowledge the
        // first: simultaneous. The server's FIN is first on the server's wire
        // (see the test), and closed_by names who sent the first FIN.
        Scenario::SimultaneousClose => ("SF", "simultaneous", resp, None),
        // Originator SYN_SENT, responder INACTIVE: S0. No FIN or RST, so no
        // one closed it and there is no reset cause.
        Scenario::HalfOpen => ("S0", "half_open", None, None),
        // The client's data without a seen SYN leaves it PARTIAL; the server's
        // RST makes it RESET: rule 1 of conn_state with an inactive
        // originator, RSTRH. A RST that is not refusing a SYN is an abort;
        // the server had sent nothing and no SYN was seen: unknown_connection.
        Scenario::UnknownConnection => ("RSTRH", "abort", resp, Some("unknown_connection")),
    }
}

/// Whether the originator must be a guess: only when teardown never saw the
/// connection's SYN.
fn orig_guessed(scenario: Scenario) -> bool {
    scenario == Scenario::UnknownConnection
}

/// The server side of a scenario: accepts one connection and ends it; an
/// idle connection is handed back, to be closed after teardown stops.
fn serve(scenario: Scenario) -> Option<TcpStream> {
    let listener =
        TcpListener::bind(socket_addr(SERVER_V4, scenario as u16)).expect("binding the server");
    let (mut stream, _) = listener.accept().expect("accept");
    let mut sink = Vec::new();
    match scenario {
        Scenario::GracefulByClient => {
            let _ = stream.read_to_end(&mut sink);
            // Dropping the stream sends the server's FIN.
        }
        Scenario::GracefulByServer => {
            stream.write_all(b"hello from the server").expect("write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            let _ = stream.read_to_end(&mut sink);
        }
        Scenario::HalfCloseThenClose => {
            let _ = stream.read_to_end(&mut sink);
            // The client has half-closed; keep sending before closing.
            stream
                .write_all(&[7u8; 500])
                .expect("write after half-close");
        }
        Scenario::AbortByClient => {
            let _ = stream.read_to_end(&mut sink);
        }
        Scenario::AbortByServer => {
            set_linger_zero(stream.as_raw_fd());
        }
        Scenario::Idle => return Some(stream),
        Scenario::Refused => unreachable!("nothing listens for Refused"),
        _ => unreachable!("{scenario:?} has a lab of its own"),
    }
    None
}

/// The client side of a scenario (an idle connection is handed back).
fn connect(scenario: Scenario) -> Option<TcpStream> {
    let address = socket_addr(SERVER_V4, scenario as u16);
    if scenario == Scenario::Refused {
        let error = TcpStream::connect(address).expect_err("nothing listens there");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        return None;
    }
    let mut stream = match TcpStream::connect(address) {
        Ok(stream) => stream,
        // On a busy machine the server's RST can be processed before this
        // thread wakes from connect(), which then reports the reset: the
        // connection was made and aborted, which is the scenario.
        Err(error)
            if scenario == Scenario::AbortByServer
                && error.kind() == std::io::ErrorKind::ConnectionReset =>
        {
            return None;
        }
        Err(error) => panic!("connect for {scenario:?}: {error}"),
    };
    let mut sink = Vec::new();
    match scenario {
        Scenario::GracefulByClient => {
            stream.write_all(b"request").expect("write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            let _ = stream.read_to_end(&mut sink);
        }
        Scenario::GracefulByServer => {
            let _ = stream.read_to_end(&mut sink);
            assert_eq!(sink, b"hello from the server");
        }
        Scenario::HalfCloseThenClose => {
            stream.shutdown(Shutdown::Write).expect("half-close");
            let _ = stream.read_to_end(&mut sink);
            assert_eq!(sink.len(), 500, "data after the half-close");
        }
        Scenario::AbortByClient => {
            set_linger_zero(stream.as_raw_fd());
            stream.write_all(b"bye").expect("write");
            // Let the data be acknowledged so the RST is the only thing left.
            thread::sleep(Duration::from_millis(100));
        }
        Scenario::AbortByServer => {
            // The server's RST ends the read.
            let _ = stream.read_to_end(&mut sink);
        }
        Scenario::Idle => return Some(stream),
        Scenario::Refused => unreachable!(),
        _ => unreachable!("{scenario:?} has a lab of its own"),
    }
    None
}

/// Packets per direction per server port, counted by tshark in a capture:
/// port -> (client to server, server to client).
fn captured_packets(capture: &std::path::Path) -> BTreeMap<u16, (u64, u64)> {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args(["-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport"]));
    let mut counts: BTreeMap<u16, (u64, u64)> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut fields = line.split('\t').map(|f| f.parse::<u16>().unwrap_or(0));
        let (src, dst) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
        if ALL_SCENARIOS.iter().any(|s| *s as u16 == dst) {
            counts.entry(dst).or_default().0 += 1;
        } else if ALL_SCENARIOS.iter().any(|s| *s as u16 == src) {
            counts.entry(src).or_default().1 += 1;
        }
    }
    counts
}

#[test]
fn every_way_of_ending_a_connection_is_reported_exactly() {
    let lab = Lab::new();
    let capture = std::env::temp_dir().join(format!("{}-conn.pcap", lab.server_ns));
    let tcpdump = start_tcpdump(&lab.server_ns, &lab.server_if, &capture);
    let (mut teardown, stderr) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &["--mode", "native", "--idle-timeout", "3s"],
    );
    let watched = JsonLines::watch(&mut teardown, stderr);

    let mut servers = Vec::new();
    for scenario in SCENARIOS {
        if scenario != Scenario::Refused {
            servers.push(in_netns(&lab.server_ns, move || serve(scenario)));
        }
    }
    thread::sleep(Duration::from_millis(200));
    let clients: Vec<_> = SCENARIOS
        .into_iter()
        .map(|scenario| in_netns(&lab.client_ns, move || connect(scenario)))
        .collect();
    let mut idle_sockets = Vec::new();
    for handle in clients.into_iter().chain(servers) {
        idle_sockets.extend(handle.join().expect("a scenario thread panicked"));
    }
    // Closed connections are reported after the 5 s close delay, the idle
    // one 3 s after its last packet (found at the latest by its handshake's
    // 5 s timer): wait for each scenario's record, or stop after 20 s
    // (anything still open is then reported at the stop, and fails below).
    for scenario in SCENARIOS {
        let port = scenario as u16;
        watched.wait_for(Duration::from_secs(20), |value| {
            value["event"] == "conn" && value["id.resp_p"] == port
        });
    }
    let (lines, _output, _stderr) = watched.finish(teardown);
    let _ = tcpdump.terminate();
    drop(idle_sockets);
    let packets = captured_packets(&capture);
    let _ = std::fs::remove_file(&capture);

    let records = conn_records(&lines);
    for scenario in SCENARIOS {
        check_record(scenario, &records, &packets);
    }
    check_nothing_lost(&lines);
}

/// The `conn` objects teardown printed.
fn conn_records(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter(|value| value["event"] == "conn")
        .cloned()
        .collect()
}

/// Every JSON line teardown printed.
fn json_lines(output: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

/// Checks the one record for `scenario`'s port against the expected verdict
/// and tcpdump's packet counts; returns it for further checks.
fn check_record<'a>(
    scenario: Scenario,
    records: &'a [Value],
    packets: &BTreeMap<u16, (u64, u64)>,
) -> &'a Value {
    let port = scenario as u16;
    let matching: Vec<&Value> = records
        .iter()
        .filter(|record| record["id.resp_p"] == port)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{scenario:?}: one record for port {port}, got {matching:#?}"
    );
    let record = matching[0];
    let (state, close, closed_by, rst_cause) = expected(scenario);
    assert_eq!(
        (
            record["conn_state"].as_str(),
            record["close"].as_str(),
            optional_str(record, "closed_by"),
            optional_str(record, "rst_cause"),
        ),
        (Some(state), Some(close), closed_by, rst_cause),
        "{scenario:?}: {record}"
    );
    assert_eq!(record["id.orig_h"], CLIENT_V4, "{scenario:?}: {record}");
    assert_eq!(
        record["orig_guessed"],
        orig_guessed(scenario),
        "{scenario:?}: {record}"
    );
    let (to_server, to_client) = packets.get(&port).copied().unwrap_or_default();
    assert_eq!(
        (record["orig_pkts"].as_u64(), record["resp_pkts"].as_u64()),
        (Some(to_server), Some(to_client)),
        "{scenario:?}: packets against tcpdump's count: {record}"
    );
    record
}

/// A string field that may be left out of a record: `None` when absent; a
/// `null` or non-string value fails the test (unset fields are omitted).
fn optional_str<'a>(record: &'a Value, name: &str) -> Option<&'a str> {
    record.get(name).map(|value| {
        value
            .as_str()
            .unwrap_or_else(|| panic!("{name} is present but not a string: {record}"))
    })
}

/// teardown's final flow statistics: no event lost, no insert failed.
fn check_nothing_lost(lines: &[Value]) {
    let final_event = lines
        .iter()
        .find(|value| value["event"] == "final")
        .expect("a final event");
    let final_flows = &final_event["flows"];
    assert_eq!(final_flows["events_lost"], 0, "{final_flows}");
    assert_eq!(final_flows["insert_failed"], 0, "{final_flows}");
}

/// An nftables table with one base chain on `hook` that drops what `matches`.
fn drop_table(table: &str, hook: &str, matches: &str) -> String {
    format!(
        "table inet {table} {{\n  chain {hook} {{\n    type filter hook {hook} priority 0;\n    {matches} drop\n  }}\n}}\n"
    )
}

/// A connection from the client's namespace to `port` in the server's, as
/// (client end, server end); the listener is closed again. A socket stays in
/// the namespace it was made in, whichever thread then uses it, so the test
/// can drive both ends from one thread, in an order it chooses.
fn connected_pair(lab: &Lab, port: u16) -> (TcpStream, TcpStream) {
    let listener = in_netns(&lab.server_ns, move || {
        TcpListener::bind(socket_addr(SERVER_V4, port)).expect("binding the server")
    })
    .join()
    .expect("the listener thread panicked");
    let client = in_netns(&lab.client_ns, move || {
        TcpStream::connect(socket_addr(SERVER_V4, port)).expect("connect")
    })
    .join()
    .expect("the client thread panicked");
    let (server, _) = listener.accept().expect("accept");
    // A read that waits for a packet that never comes fails the test instead
    // of hanging it.
    for end in [&client, &server] {
        end.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
    }
    (client, server)
}

/// The FINs of `port`'s connection in tcpdump's capture, in capture order:
/// (sent by the server, sequence number just past the FIN, acknowledgement
/// number), all absolute.
fn captured_fins(capture: &std::path::Path, port: u16) -> Vec<(bool, u32, u32)> {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args([
            "-Y",
            &format!("tcp.port == {port} && tcp.flags.fin == 1"),
            "-T",
            "fields",
        ])
        .args(["-e", "tcp.srcport", "-e", "tcp.seq_raw", "-e", "tcp.len"])
        .args(["-e", "tcp.ack_raw"]));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let fields: Vec<u32> = line
                .split('\t')
                .map(|field| {
                    field
                        .parse()
                        .unwrap_or_else(|_| panic!("tshark field {field:?} in {line:?}"))
                })
                .collect();
            let [src_port, seq, len, ack] = fields[..] else {
                panic!("tshark line {line:?}: want 4 fields");
            };
            // The FIN takes the sequence number after the payload.
            (
                src_port == port as u32,
                seq.wrapping_add(len).wrapping_add(1),
                ack,
            )
        })
        .collect()
}

/// FINs that cross. The server half-closes first; the client's namespace
/// drops the server's FIN before the client's TCP can see it (this kernel has
/// no netem to delay it instead), so the client half-closes without having
/// received it and its FIN cannot acknowledge the server's. Then the drop is
/// lifted and the server's retransmitted FIN completes the close. teardown
/// and tcpdump both watch the server's interface, where the server's first
/// FIN leaves before the client's FIN arrives: closed_by is the server.
#[test]
fn fins_that_cross_are_a_simultaneous_close() {
    let scenario = Scenario::SimultaneousClose;
    let port = scenario as u16;
    let lab = Lab::new();
    let capture = std::env::temp_dir().join(format!("{}-conn.pcap", lab.server_ns));
    let tcpdump = start_tcpdump(&lab.server_ns, &lab.server_if, &capture);
    let (teardown, _stderr) = start_teardown(&lab.server_ns, &lab.server_if, &["--mode", "native"]);

    let (mut client, mut server) = connected_pair(&lab, port);
    nft(
        &lab.client_ns,
        &drop_table(
            "td_cross",
            "input",
            &format!("tcp sport {port} tcp flags & fin == fin"),
        ),
    );
    // The server's FIN: teardown's egress program has seen it when this
    // returns; the client's namespace drops it on arrival.
    server.shutdown(Shutdown::Write).expect("server half-close");
    // The client has not had the server's FIN, so its own does not ack it.
    client.shutdown(Shutdown::Write).expect("client half-close");
    nft(&lab.client_ns, "delete table inet td_cross");
    let mut sink = Vec::new();
    client
        .read_to_end(&mut sink)
        .expect("the client receives the server's retransmitted FIN");
    server
        .read_to_end(&mut sink)
        .expect("the server receives the client's FIN");
    assert!(sink.is_empty(), "no data was sent: {sink:?}");
    drop((client, server));
    // The close delay (5 s) passes before the record is reported.
    thread::sleep(Duration::from_secs(6));
    let output = teardown.terminate();
    let _ = tcpdump.terminate();
    let packets = captured_packets(&capture);
    let fins = captured_fins(&capture, port);
    let _ = std::fs::remove_file(&capture);

    // The premise, by tcpdump: the server's FIN came first on this wire and
    // the client's first FIN did not acknowledge it.
    let (server_first, server_fin_end, _) = *fins.first().expect("FINs in the capture");
    assert!(server_first, "the server's FIN must come first: {fins:?}");
    let (_, _, client_fin_ack) = *fins
        .iter()
        .find(|(from_server, _, _)| !from_server)
        .unwrap_or_else(|| panic!("a FIN from the client: {fins:?}"));
    assert!(
        (client_fin_ack.wrapping_sub(server_fin_end) as i32) < 0,
        "the client's FIN acknowledges the server's: the FINs did not cross: {fins:?}"
    );

    let records = conn_records(&json_lines(&output));
    check_record(scenario, &records, &packets);
    check_nothing_lost(&json_lines(&output));
}

/// A SYN whose answers never arrive. The server listens, but its namespace
/// drops everything it sends from the port, in the output path, before
/// teardown's egress program and tcpdump see it. The client gives up after
/// 1.5 s (closing a socket still in SYN_SENT sends nothing), having
/// retransmitted its SYN once, at 1 s. Its last SYN thus comes well before
/// teardown's 3 s SYN timeout, so none starts a second record. (The kernel's
/// own give-up time is no bound here: since Linux 6.6 SYN retries are spaced
/// linearly, `tcp_syn_linear_timeouts`, and tcp_syn_retries 1 still sent a
/// third SYN at 2 s.)
#[test]
fn a_syn_whose_answers_are_dropped_is_half_open_after_the_syn_timeout() {
    let scenario = Scenario::HalfOpen;
    let port = scenario as u16;
    let lab = Lab::new();
    let listener = in_netns(&lab.server_ns, move || {
        TcpListener::bind(socket_addr(SERVER_V4, port)).expect("binding the server")
    })
    .join()
    .expect("the listener thread panicked");
    nft(
        &lab.server_ns,
        &drop_table("td_half_open", "output", &format!("tcp sport {port}")),
    );
    let capture = std::env::temp_dir().join(format!("{}-conn.pcap", lab.server_ns));
    let tcpdump = start_tcpdump(&lab.server_ns, &lab.server_if, &capture);
    let (teardown, _stderr) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &["--mode", "native", "--syn-timeout", "3s"],
    );

    let error = in_netns(&lab.client_ns, move || {
        TcpStream::connect_timeout(&socket_addr(SERVER_V4, port), Duration::from_millis(1500))
            .expect_err("no SYN-ACK reaches the client")
    })
    .join()
    .expect("the client thread panicked");
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
    // The record times out 3 s after the first SYN, 1.5 s from now; the
    // stop (3.5 s later) finds it ended either way. Nothing reads
    // teardown's stdout until then: its stats lines (2 KB, ten a second)
    // fill the pipe in about three seconds. That once stalled the whole
    // monitoring loop, so a loaded CI machine saw the record still `open`
    // three times; stdout is now written by a thread of its own
    // (`outputs`' a_stdout_nobody_reads_does_not_stall_the_watch).
    thread::sleep(Duration::from_millis(5000));
    let output = teardown.terminate();
    let _ = tcpdump.terminate();
    drop(listener);
    let packets = captured_packets(&capture);
    let _ = std::fs::remove_file(&capture);

    // The premise, by tcpdump: the SYN was retransmitted, nothing came back.
    let (to_server, to_client) = packets.get(&port).copied().unwrap_or_default();
    assert!(
        to_server >= 2 && to_client == 0,
        "want a retransmitted SYN and no answer, tcpdump saw {to_server} to and {to_client} from the server"
    );
    let records = conn_records(&json_lines(&output));
    let record = check_record(scenario, &records, &packets);
    assert_eq!(record["end_reason"], "syn_timeout", "{record}");
    check_nothing_lost(&json_lines(&output));
}

/// A RST for a connection the server no longer knows. The connection is set
/// up; the server aborts it (SO_LINGER 0) while its namespace drops what it
/// sends, so the RST never leaves and the client still has the connection.
/// teardown starts only then: it never sees the setup. The client sends
/// data; the server's kernel, which has no socket for it, answers with a RST.
#[test]
fn a_reset_from_a_server_that_forgot_the_connection_is_unknown_connection() {
    let scenario = Scenario::UnknownConnection;
    let port = scenario as u16;
    let lab = Lab::new();
    let (mut client, server) = connected_pair(&lab, port);
    nft(
        &lab.server_ns,
        &drop_table("td_forget", "output", &format!("tcp sport {port}")),
    );
    set_linger_zero(server.as_raw_fd());
    drop(server);
    nft(&lab.server_ns, "delete table inet td_forget");
    // The premise: the server has forgotten, the client has not.
    let server_sockets = tcp_sockets(&lab.server_ns, port);
    assert!(
        server_sockets.is_empty(),
        "the server still has a socket on port {port}: {server_sockets:?}"
    );
    let client_sockets = tcp_sockets(&lab.client_ns, port);
    assert!(
        client_sockets.len() == 1 && client_sockets[0].starts_with("ESTAB"),
        "the client must still have the connection: {client_sockets:?}"
    );

    let capture = std::env::temp_dir().join(format!("{}-conn.pcap", lab.server_ns));
    let tcpdump = start_tcpdump(&lab.server_ns, &lab.server_if, &capture);
    let (teardown, _stderr) = start_teardown(&lab.server_ns, &lab.server_if, &["--mode", "native"]);
    client.write_all(b"still there?").expect("write");
    let error = client
        .read(&mut [0u8; 64])
        .expect_err("the server answers with a RST");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    drop(client);
    // The close delay (5 s) passes before the record is reported.
    thread::sleep(Duration::from_secs(6));
    let output = teardown.terminate();
    let _ = tcpdump.terminate();
    let packets = captured_packets(&capture);
    let _ = std::fs::remove_file(&capture);

    let records = conn_records(&json_lines(&output));
    check_record(scenario, &records, &packets);
    check_nothing_lost(&json_lines(&output));
}

//! Connections already open when teardown starts: their handshakes never
//! seen, every later packet counted on the fast path (both sides
//! PARTIAL). Real kernel TCP between two namespaces: 120 connections
//! exchange a first message, sit idle while teardown (its defaults, both
//! directions) and tcpdump start on the server's interface, then carry 30
//! round trips each from four client threads at once and close
//! gracefully. Each must get one record whose packets and IP bytes per
//! direction are tshark's counts of the capture, whose bytes are what the
//! client sent (and had echoed) after teardown started, with no missed
//! bytes, its client as the originator (it spoke first), and a history of
//! data and FINs from both sides without a SYN.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::Value;
use support::*;

const SERVER_PORT: u16 = 9301;
const CONNECTIONS: usize = 120;
const CLIENT_THREADS: usize = 4;
const ROUND_TRIPS: usize = 30;

/// The size of round trip `round`'s message: 1 to 1400 bytes, varied so
/// segments of many sizes cross.
fn message_len(round: usize, connection: usize) -> usize {
    1 + (round * 97 + connection * 31) % 1400
}

/// Echoes what it reads until the client half-closes, then closes.
fn echo(mut stream: TcpStream) {
    let mut buffer = [0u8; 2048];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Sends `len` bytes and reads their echo back.
fn round_trip(stream: &mut TcpStream, len: usize) {
    let message = vec![0x5a; len];
    stream.write_all(&message).expect("client write");
    let mut echoed = vec![0u8; len];
    stream.read_exact(&mut echoed).expect("the echo");
}

/// One connection as tshark reads the capture: (client to server, server
/// to client).
#[derive(Clone, Copy, Debug, Default)]
struct Wire {
    frames: (u64, u64),
    /// Sums of `ip.len`.
    ip_bytes: (u64, u64),
}

/// The capture's connections by client port.
fn wire_counts(capture: &std::path::Path) -> BTreeMap<u16, Wire> {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args(["-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport"])
        .args(["-e", "ip.len"]));
    let mut counts: BTreeMap<u16, Wire> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [src, dst, ip_len] = fields[..] else {
            panic!("tshark line {line:?}");
        };
        let (src, dst): (u16, u16) = (src.parse().expect("port"), dst.parse().expect("port"));
        let ip_len: u64 = ip_len.parse().expect("ip.len");
        if dst == SERVER_PORT {
            let wire = counts.entry(src).or_default();
            wire.frames.0 += 1;
            wire.ip_bytes.0 += ip_len;
        } else {
            let wire = counts.entry(dst).or_default();
            wire.frames.1 += 1;
            wire.ip_bytes.1 += ip_len;
        }
    }
    counts
}

#[test]
fn connections_open_before_teardown_starts_are_counted_exactly() {
    let lab = Lab::new();
    let listener = listen_in(&lab.server_ns, socket_addr(SERVER_V4, SERVER_PORT));
    let server = thread::spawn(move || {
        let mut echoes = Vec::new();
        for _ in 0..CONNECTIONS {
            let (stream, _) = listener.accept().expect("accept");
            echoes.push(thread::spawn(move || echo(stream)));
        }
        for echo in echoes {
            echo.join().expect("an echo thread panicked");
        }
    });

    // The connections open, each with a first exchange, before teardown.
    let streams: Vec<TcpStream> = in_netns(&lab.client_ns, || {
        (0..CONNECTIONS)
            .map(|connection| {
                let mut stream =
                    TcpStream::connect(socket_addr(SERVER_V4, SERVER_PORT)).expect("connect");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("read timeout");
                round_trip(&mut stream, message_len(0, connection));
                stream
            })
            .collect()
    })
    .join()
    .expect("the connecting thread panicked");
    let client_ports: Vec<u16> = streams
        .iter()
        .map(|stream| stream.local_addr().expect("local address").port())
        .collect();
    // Delayed ACKs of the first exchange pass before anything watches.
    thread::sleep(Duration::from_millis(500));

    // teardown first, then the judge: between the two the line is idle.
    let (teardown, _stderr) = start_teardown(&lab.server_ns, &lab.server_if, &[]);
    let capture = std::env::temp_dir().join(format!("{}-midstream.pcap", lab.server_ns));
    let tcpdump = start_tcpdump(&lab.server_ns, &lab.server_if, &capture);
    thread::sleep(Duration::from_millis(300));

    // Four threads at once, each with its share of the connections.
    let shared = Arc::new(Mutex::new(
        streams.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                loop {
                    let next = shared.lock().expect("the queue").pop();
                    let Some((connection, mut stream)) = next else {
                        break;
                    };
                    for round in 1..=ROUND_TRIPS {
                        round_trip(&mut stream, message_len(round, connection));
                    }
                    stream.shutdown(Shutdown::Write).expect("client FIN");
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                    assert!(rest.is_empty(), "data after the last echo");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread panicked");
    }
    server.join().expect("the server thread panicked");
    // The close delay (5 s) passes before closed records are reported.
    thread::sleep(Duration::from_secs(6));
    let output = teardown.terminate();
    thread::sleep(Duration::from_millis(200));
    let _ = tcpdump.terminate();
    let wire = wire_counts(&capture);
    let _ = std::fs::remove_file(&capture);

    let records: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|value| value["event"] == "conn" && value["id.resp_p"] == SERVER_PORT)
        .collect();
    let mut wrong = Vec::new();
    for (connection, port) in client_ports.iter().enumerate() {
        // The client's own record: what it sent after teardown started,
        // and had echoed.
        let sent: usize = (1..=ROUND_TRIPS)
            .map(|round| message_len(round, connection))
            .sum();
        let mine: Vec<&Value> = records
            .iter()
            .filter(|record| record["id.orig_p"] == *port)
            .collect();
        let Some(&Wire {
            frames: (to_server, to_client),
            ip_bytes: (bytes_to_server, bytes_to_client),
        }) = wire.get(port)
        else {
            wrong.push(format!("client port {port}: tshark saw nothing"));
            continue;
        };
        let [record] = mine[..] else {
            wrong.push(format!("client port {port}: {} records", mine.len()));
            continue;
        };
        let history = record["history"].as_str().unwrap_or("");
        let counted = (
            record["orig_pkts"].as_u64(),
            record["resp_pkts"].as_u64(),
            record["orig_ip_bytes"].as_u64(),
            record["resp_ip_bytes"].as_u64(),
            record["orig_bytes"].as_u64(),
            record["resp_bytes"].as_u64(),
        );
        let expected = (
            Some(to_server),
            Some(to_client),
            Some(bytes_to_server),
            Some(bytes_to_client),
            Some(sent as u64),
            Some(sent as u64),
        );
        if counted != expected
            || record["missed_bytes"] != 0
            || !["D", "d", "F", "f"]
                .iter()
                .all(|letter| history.contains(letter))
            || history.contains(['S', 's', 'H', 'h'])
        {
            wrong.push(format!(
                "client port {port}: packets, IP bytes and bytes {counted:?}, tshark's and the \
                 client's {expected:?}: {record}"
            ));
        }
    }
    println!(
        "{} records of {CONNECTIONS} connections open before teardown started; for example {}",
        records.len(),
        records.first().map_or(String::new(), Value::to_string)
    );
    assert!(
        wrong.is_empty(),
        "{} of {CONNECTIONS} connections wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

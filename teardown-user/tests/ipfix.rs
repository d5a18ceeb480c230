//! `--ipfix` against a real collector: nfcapd (Debian's nfdump) listening
//! on `[::1]` inside the lab's server namespace, teardown exporting the
//! connections made through the monitored veth (IPv4 and IPv6, with data,
//! and one refused). `nfdump` reads back one flow per connection, whose
//! addresses, ports, packets, octets (both directions: an RFC 5103 biflow)
//! and TCP flags must be teardown's JSON record's; the messages nfcapd
//! repeats to the test (`-R`) are decoded here for the enterprise elements
//! (PEN 32473), which nfdump does not know.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{
    CLIENT_V4, CLIENT_V6, ChildGuard, JsonLines, Lab, SERVER_V4, SERVER_V6, TempDir, in_netns, run,
    socket_addr, start_teardown, wait_until,
};

const COLLECTOR_PORT: u16 = 4739;
const REPEAT_PORT: u16 = 4740;
const SERVICE_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The server: answers each connection's request with `reply` bytes, then
/// closes.
fn serve(listener: TcpListener, connections: usize) {
    for _ in 0..connections {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = [0u8; 64];
        let n = stream.read(&mut request).expect("request");
        let reply = vec![b'r'; 100 * n];
        stream.write_all(&reply).expect("reply");
        let _ = stream.shutdown(Shutdown::Write);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
}

/// A client connection sending `size` bytes; returns its local port.
fn connect(server: &str, size: usize) -> u16 {
    let mut stream = TcpStream::connect(socket_addr(server, SERVICE_PORT)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(&vec![b'q'; size]).expect("request");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).expect("reply");
    assert_eq!(reply.len(), 100 * size);
    let port = stream.local_addr().expect("local").port();
    stream.shutdown(Shutdown::Write).expect("shutdown");
    port
}

/// The flows nfdump read from the collector's files, as JSON objects.
fn nfdump_flows(dir: &Path) -> Vec<Value> {
    let output = run(Command::new("nfdump")
        .arg("-R")
        .arg(dir)
        .args(["-o", "json"]));
    let text = String::from_utf8_lossy(&output.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Vec<Value>>(&text)
        .unwrap_or_else(|err| panic!("nfdump's JSON: {err}: {text}"))
}

/// nfdump's flag string (`...A..SF`: C E U A P R S F) as bits.
fn nfdump_flags(text: &str) -> u16 {
    let bits = [0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01];
    text.chars()
        .zip(bits)
        .filter(|(c, _)| *c != '.')
        .map(|(_, bit)| bit)
        .sum()
}

/// The flags teardown's history letters name (see `report/ipfix.rs`): the
/// originator's (upper case) or the responder's.
fn history_flags(history: &str, originator: bool) -> u16 {
    history
        .chars()
        .filter(|c| c.is_ascii_uppercase() == originator)
        .map(|c| match c.to_ascii_uppercase() {
            'S' => 0x02,
            'H' => 0x12,
            'A' => 0x10,
            'F' => 0x01,
            'R' => 0x04,
            _ => 0,
        })
        .fold(0, |all, bit| all | bit)
}

/// A small IPFIX decoder, for what nfdump leaves out: each data record's
/// teardown elements (PEN 32473) and interfaceName (82) by element id,
/// with its source port. It
/// learns the templates from the messages themselves.
fn enterprise_elements(messages: &[Vec<u8>]) -> Vec<(u16, BTreeMap<u16, String>)> {
    // Template id -> fields (id, length, enterprise).
    let mut templates: BTreeMap<u16, Vec<(u16, u16, u32)>> = BTreeMap::new();
    let mut records = Vec::new();
    let be16 = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    for message in messages {
        assert_eq!(be16(message, 0), 10, "IPFIX version");
        assert_eq!(be16(message, 2) as usize, message.len(), "message length");
        let mut at = 16;
        while at + 4 <= message.len() {
            let (set_id, set_len) = (be16(message, at), be16(message, at + 2) as usize);
            let end = at + set_len;
            let mut pos = at + 4;
            if set_id == 2 {
                while pos + 4 <= end {
                    let (id, count) = (be16(message, pos), be16(message, pos + 2));
                    pos += 4;
                    let mut fields = Vec::new();
                    for _ in 0..count {
                        let (element, length) = (be16(message, pos), be16(message, pos + 2));
                        pos += 4;
                        let pen = if element & 0x8000 != 0 {
                            pos += 4;
                            be32(message, pos - 4)
                        } else {
                            0
                        };
                        fields.push((element & 0x7fff, length, pen));
                    }
                    templates.insert(id, fields);
                }
            } else if let Some(fields) = templates.get(&set_id) {
                while pos < end {
                    let mut strings = BTreeMap::new();
                    let mut source_port = 0;
                    for &(element, length, pen) in fields {
                        let length = if length == 65535 {
                            let short = message[pos] as usize;
                            pos += 1;
                            if short == 255 {
                                pos += 2;
                                be16(message, pos - 2) as usize
                            } else {
                                short
                            }
                        } else {
                            length as usize
                        };
                        let value = &message[pos..pos + length];
                        if pen == 0 && element == 7 {
                            source_port = be16(value, 0);
                        }
                        // teardown's elements, and interfaceName (82).
                        if pen == 32473 || (pen == 0 && element == 82) {
                            strings.insert(element, String::from_utf8_lossy(value).into_owned());
                        }
                        pos += length;
                    }
                    records.push((source_port, strings));
                }
            }
            at = end;
        }
    }
    records
}

#[test]
fn nfcapd_collects_every_connection_as_teardown_records_it() {
    for program in ["nfcapd", "nfdump"] {
        if !have(program) {
            println!(
                "skipped: {program} is not installed (Debian's nfdump package; cargo xtask test installs it)"
            );
            return;
        }
    }
    let lab = Lab::new();
    let flows = TempDir::new("teardown-ipfix-flows");

    // What nfcapd repeats, received in the server's namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let (bound_tx, bound_rx) = mpsc::channel();
    let repeated = in_netns(&lab.server_ns, {
        let stop = Arc::clone(&stop);
        move || {
            let socket = UdpSocket::bind(("::1", REPEAT_PORT)).expect("binding the repeat port");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            bound_tx.send(()).expect("bound");
            let mut messages = Vec::new();
            let mut buffer = [0u8; 65536];
            while !stop.load(Ordering::SeqCst) {
                if let Ok(n) = socket.recv(&mut buffer) {
                    messages.push(buffer[..n].to_vec());
                }
            }
            messages
        }
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the repeat port bound");
    let collector_port = COLLECTOR_PORT.to_string();
    let repeat = format!("::1/{REPEAT_PORT}");
    let nfcapd = ChildGuard::new(
        lab.exec(&lab.server_ns, "nfcapd")
            .args(["-6", "-b", "::1", "-p", &collector_port, "-t", "3600"])
            .arg("-w")
            .arg(&flows.0)
            .args(["-R", &repeat])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nfcapd"),
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_dir(&flows.0).is_ok_and(|mut entries| entries.next().is_some())
        }),
        "nfcapd did not start"
    );

    let collector = format!("[::1]:{COLLECTOR_PORT}");
    let (mut teardown, stderr) =
        start_teardown(&lab.server_ns, &lab.server_if, &["--ipfix", &collector]);
    let lines = JsonLines::watch(&mut teardown, stderr);

    let sizes_v4 = [1, 7, 30];
    let sizes_v6 = [3, 12];
    let server = in_netns(&lab.server_ns, move || {
        let v4 = TcpListener::bind((SERVER_V4, SERVICE_PORT)).expect("bind v4");
        let v6 = TcpListener::bind((SERVER_V6, SERVICE_PORT)).expect("bind v6");
        let a = thread::spawn(move || serve(v4, sizes_v4.len()));
        let b = thread::spawn(move || serve(v6, sizes_v6.len()));
        a.join().expect("v4 server");
        b.join().expect("v6 server");
    });
    thread::sleep(Duration::from_millis(200));
    let client = in_netns(&lab.client_ns, move || {
        let mut ports = Vec::new();
        for size in sizes_v4 {
            ports.push((SERVER_V4, connect(SERVER_V4, size)));
        }
        for size in sizes_v6 {
            ports.push((SERVER_V6, connect(SERVER_V6, size)));
        }
        let refused = TcpStream::connect(socket_addr(SERVER_V4, CLOSED_PORT))
            .expect_err("nothing listens there");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        ports
    });
    let ports = client.join().expect("the client");
    server.join().expect("the server");

    // Every connection's record ends while teardown runs (the close delay
    // is 5 s), so the run loop's export sends it.
    let expected = ports.len() + 1;
    let ended = wait_until(Duration::from_secs(20), || {
        lines
            .wait_for(Duration::ZERO, |value| {
                value["event"] == "conn" && value["id.resp_p"] == CLOSED_PORT
            })
            .is_some()
            && ports.iter().all(|(_, port)| {
                lines
                    .wait_for(Duration::ZERO, |value| {
                        value["event"] == "conn" && value["id.orig_p"] == *port
                    })
                    .is_some()
            })
    });
    assert!(ended, "not every connection was reported within 20 s");
    let (values, output, stderr) = lines.finish(teardown);
    assert!(output.status.success(), "teardown failed: {stderr}");
    let records: Vec<&Value> = values
        .iter()
        .filter(|value| value["event"] == "conn")
        .collect();
    assert_eq!(records.len(), expected, "{records:#?}");
    let last = values.last().expect("a final line");
    assert_eq!(last["lines_lost"]["ipfix"], 0, "{last}");

    // nfcapd writes its file when it stops.
    thread::sleep(Duration::from_millis(300));
    let collected = nfcapd.terminate();
    stop.store(true, Ordering::SeqCst);
    let messages = repeated.join().expect("the repeat receiver");
    let nfcapd_said = String::from_utf8_lossy(&collected.stderr).into_owned()
        + &String::from_utf8_lossy(&collected.stdout);
    assert!(
        nfcapd_said.contains("Sequence Errors: 0"),
        "nfcapd saw a gap: {nfcapd_said}"
    );
    let flows = nfdump_flows(&flows.0);
    assert_eq!(flows.len(), expected, "one flow per connection: {flows:#?}");
    let decoded = enterprise_elements(&messages);
    assert_eq!(decoded.len(), expected, "repeated records: {decoded:?}");

    for record in &records {
        let orig_h = record["id.orig_h"].as_str().unwrap();
        let resp_h = record["id.resp_h"].as_str().unwrap();
        let orig_p = record["id.orig_p"].as_u64().unwrap();
        let v6 = orig_h.contains(':');
        assert_eq!(orig_h, if v6 { CLIENT_V6 } else { CLIENT_V4 });
        let (src_key, dst_key) = if v6 {
            ("src6_addr", "dst6_addr")
        } else {
            ("src4_addr", "dst4_addr")
        };
        let flow = flows
            .iter()
            .find(|flow| flow["src_port"] == orig_p && flow[src_key] == orig_h)
            .unwrap_or_else(|| panic!("no flow for {record}: {flows:#?}"));
        assert_eq!(flow[dst_key], resp_h, "{flow}");
        assert_eq!(flow["dst_port"], record["id.resp_p"], "{flow}");
        assert_eq!(flow["proto"], 6);
        assert_eq!(flow["in_packets"], record["orig_pkts"], "{flow} {record}");
        assert_eq!(flow["in_bytes"], record["orig_ip_bytes"], "{flow} {record}");
        assert_eq!(flow["out_packets"], record["resp_pkts"], "{flow} {record}");
        assert_eq!(
            flow["out_bytes"], record["resp_ip_bytes"],
            "{flow} {record}"
        );
        let history = record["history"].as_str().unwrap_or("");
        assert_eq!(
            nfdump_flags(flow["tcp_flags"].as_str().unwrap()),
            history_flags(history, true),
            "{flow} {record}"
        );

        let (_, strings) = decoded
            .iter()
            .find(|(port, _)| u64::from(*port) == orig_p)
            .unwrap_or_else(|| panic!("no repeated record for {record}"));
        let text = |key: &str| record[key].as_str().unwrap_or("").to_string();
        assert_eq!(strings[&1], text("conn_state"), "{record}");
        assert_eq!(strings[&2], history, "{record}");
        assert_eq!(strings[&3], text("close"), "{record}");
        assert_eq!(strings[&4], text("closed_by"), "{record}");
        assert_eq!(strings[&5], text("rst_cause"), "{record}");
        assert_eq!(strings[&6], text("rst_reason"), "{record}");
        assert_eq!(strings[&7], text("uid"), "{record}");
        assert_eq!(strings[&82], text("iface"), "{record}");
        assert_eq!(strings[&82], lab.server_if, "{record}");
    }
    // The refused connection: a SYN answered by a RST, as nfdump has it.
    let refused = records
        .iter()
        .find(|record| record["id.resp_p"] == CLOSED_PORT)
        .expect("the refused connection's record");
    assert_eq!(refused["conn_state"], "REJ", "{refused}");
}

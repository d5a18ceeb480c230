//! Connection records against tshark, field by field. Real kernel TCP between
//! two namespaces, teardown on the server's interface with its default
//! settings (the coarse clock on the fast path), tcpdump on the same
//! interface. For every connection, live and replayed from the capture:
//! `duration` within 1 ms of tshark's first-to-last frame time, the IP bytes
//! per direction equal to tshark's sum of `ip.len`, no missed bytes, a
//! Zeek-shaped `uid`, and no `null` anywhere.

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;
use support::*;

/// One way of using and ending a connection per server port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// A request and a reply; the client closes first.
    GracefulByClient = 9101,
    /// The server replies and closes first.
    GracefulByServer = 9102,
    /// The client half-closes; the server sends 500 bytes, then closes.
    HalfClose = 9103,
    /// The client sends data and aborts (SO_LINGER 0): a RST.
    AbortByClient = 9104,
    /// The server aborts right after accepting.
    AbortByServer = 9105,
    /// Nothing listens: the SYN is answered with a RST.
    Refused = 9106,
    /// 200 kB from the server, then a graceful close.
    Bulk = 9107,
}

const CASES: [Case; 7] = [
    Case::GracefulByClient,
    Case::GracefulByServer,
    Case::HalfClose,
    Case::AbortByClient,
    Case::AbortByServer,
    Case::Refused,
    Case::Bulk,
];

const BULK: usize = 200_000;

fn expected_state(case: Case) -> &'static str {
    match case {
        Case::GracefulByClient | Case::GracefulByServer | Case::HalfClose | Case::Bulk => "SF",
        Case::AbortByClient => "RSTO",
        Case::AbortByServer => "RSTR",
        Case::Refused => "REJ",
    }
}

fn serve(case: Case, listener: TcpListener) {
    let (mut stream, _) = listener.accept().expect("accept");
    let mut sink = Vec::new();
    match case {
        Case::GracefulByClient => {
            let mut request = [0u8; 7];
            stream.read_exact(&mut request).expect("request");
            stream.write_all(b"reply").expect("reply");
            let _ = stream.read_to_end(&mut sink);
        }
        Case::GracefulByServer => {
            stream.write_all(b"hello from the server").expect("write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            let _ = stream.read_to_end(&mut sink);
        }
        Case::HalfClose | Case::AbortByClient => {
            let _ = stream.read_to_end(&mut sink);
            if case == Case::HalfClose {
                stream
                    .write_all(&[7u8; 500])
                    .expect("write after half-close");
            }
        }
        Case::AbortByServer => set_linger_zero(stream.as_raw_fd()),
        Case::Bulk => {
            stream.write_all(&vec![1u8; BULK]).expect("bulk write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            let _ = stream.read_to_end(&mut sink);
        }
        Case::Refused => unreachable!(),
    }
}

fn connect(case: Case) {
    let address = socket_addr(SERVER_V4, case as u16);
    if case == Case::Refused {
        let error = TcpStream::connect(address).expect_err("nothing listens there");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        return;
    }
    let mut stream = match TcpStream::connect(address) {
        Ok(stream) => stream,
        // The server's RST may be processed before connect() returns.
        Err(error)
            if case == Case::AbortByServer
                && error.kind() == std::io::ErrorKind::ConnectionReset =>
        {
            return;
        }
        Err(error) => panic!("connect for {case:?}: {error}"),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut sink = Vec::new();
    match case {
        Case::GracefulByClient => {
            stream.write_all(b"request").expect("write");
            let mut reply = [0u8; 5];
            stream.read_exact(&mut reply).expect("reply");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            let _ = stream.read_to_end(&mut sink);
        }
        Case::GracefulByServer | Case::Bulk => {
            let _ = stream.read_to_end(&mut sink);
            let want = if case == Case::Bulk { BULK } else { 21 };
            assert_eq!(sink.len(), want, "{case:?}");
        }
        Case::HalfClose => {
            stream.shutdown(Shutdown::Write).expect("half-close");
            let _ = stream.read_to_end(&mut sink);
            assert_eq!(sink.len(), 500, "data after the half-close");
        }
        Case::AbortByClient => {
            set_linger_zero(stream.as_raw_fd());
            stream.write_all(b"bye").expect("write");
            thread::sleep(Duration::from_millis(100));
        }
        Case::AbortByServer => {
            let _ = stream.read_to_end(&mut sink);
        }
        Case::Refused => unreachable!(),
    }
}

/// One connection in tshark's reading of the capture.
#[derive(Clone, Debug, Default)]
struct Wire {
    /// Epoch seconds of its first and last frames.
    first: f64,
    last: f64,
    /// Sum of `ip.len` (client to server, server to client).
    ip_bytes: (u64, u64),
    frames: (u64, u64),
}

/// The capture's TCP connections by tshark's `tcp.stream`, keyed by
/// (client port, server port); the server's ports are `server_ports`.
fn wire_connections(capture: &Path, server_ports: &[u16]) -> BTreeMap<(u16, u16), Vec<Wire>> {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args(["-T", "fields", "-e", "tcp.stream", "-e", "frame.time_epoch"])
        .args(["-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "ip.len"]));
    let mut streams: BTreeMap<u64, ((u16, u16), Wire)> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [stream, time, src, dst, ip_len] = f[..] else {
            panic!("tshark line {line:?}");
        };
        let stream: u64 = stream.parse().expect("tcp.stream");
        let time: f64 = time.parse().expect("frame.time_epoch");
        let (src, dst): (u16, u16) = (src.parse().expect("port"), dst.parse().expect("port"));
        let ip_len: u64 = ip_len.parse().expect("ip.len");
        let to_server = server_ports.contains(&dst);
        let key = if to_server { (src, dst) } else { (dst, src) };
        let (_, wire) = streams.entry(stream).or_insert_with(|| {
            (
                key,
                Wire {
                    first: time,
                    ..Wire::default()
                },
            )
        });
        wire.last = time;
        if to_server {
            wire.ip_bytes.0 += ip_len;
            wire.frames.0 += 1;
        } else {
            wire.ip_bytes.1 += ip_len;
            wire.frames.1 += 1;
        }
    }
    let mut by_ports: BTreeMap<(u16, u16), Vec<Wire>> = BTreeMap::new();
    for (key, wire) in streams.into_values() {
        by_ports.entry(key).or_default().push(wire);
    }
    by_ports
}

/// `C` and 17 base62 digits.
fn zeek_uid(uid: &str) -> bool {
    uid.len() == 18 && uid.starts_with('C') && uid[1..].chars().all(|c| c.is_ascii_alphanumeric())
}

/// Checks `record` against tshark's view of its connection; returns
/// teardown's duration minus tshark's and its `ts` minus tshark's first
/// frame time, in seconds.
fn check_against_wire(source: &str, case: Case, record: &Value, wire: &Wire) -> (f64, f64) {
    let fields = record.as_object().expect("a record is an object");
    assert!(
        fields.values().all(|value| !value.is_null()),
        "{source} {case:?}: a null field: {record}"
    );
    assert!(
        record["uid"].as_str().is_some_and(zeek_uid),
        "{source} {case:?}: uid: {record}"
    );
    assert_eq!(
        record["conn_state"],
        expected_state(case),
        "{source} {case:?}: {record}"
    );
    assert!(
        record["history"]
            .as_str()
            .is_some_and(|h| h.starts_with('S')),
        "{source} {case:?}: {record}"
    );
    // Live, ts is the kernel's clock moved onto Unix time by one offset
    // taken at start; replayed, it is the capture's own time.
    let ts = record["ts"].as_f64().expect("ts");
    let ts_delta = ts - wire.first;
    assert!(
        ts_delta.abs() <= 0.001,
        "{source} {case:?}: ts {ts:.6} against tshark's first frame {:.6}: {record}",
        wire.first
    );
    let duration = record["duration"]
        .as_f64()
        .unwrap_or_else(|| panic!("{source} {case:?}: no duration: {record}"));
    let reference = wire.last - wire.first;
    let delta = duration - reference;
    assert!(
        delta.abs() <= 0.001,
        "{source} {case:?}: duration {duration} against tshark's {reference:.6} (first \
         frame {:.6}, last {:.6}): {record}",
        wire.first,
        wire.last
    );
    assert_eq!(
        (
            record["orig_ip_bytes"].as_u64(),
            record["resp_ip_bytes"].as_u64()
        ),
        (Some(wire.ip_bytes.0), Some(wire.ip_bytes.1)),
        "{source} {case:?}: IP bytes against tshark's sums of ip.len: {record}"
    );
    assert_eq!(
        (record["orig_pkts"].as_u64(), record["resp_pkts"].as_u64()),
        (Some(wire.frames.0), Some(wire.frames.1)),
        "{source} {case:?}: packets against tshark's: {record}"
    );
    assert_eq!(record["missed_bytes"], 0, "{source} {case:?}: {record}");
    assert_eq!(record["ip_proto"], 6, "{source} {case:?}: {record}");
    // Every case lasts more than 0 s, so Zeek gives the sequence-space
    // counts (0 for the refusal) beside the duration.
    let (orig_bytes, resp_bytes) = (record["orig_bytes"].as_u64(), record["resp_bytes"].as_u64());
    assert!(
        orig_bytes.is_some() && resp_bytes.is_some(),
        "{source} {case:?}: byte counts: {record}"
    );
    if case == Case::Bulk {
        assert_eq!(resp_bytes, Some(BULK as u64), "{source}: {record}");
    }
    (delta, ts_delta)
}

/// Checks every case's one record in `records`; returns the (duration, ts)
/// deltas.
fn check_all(
    source: &str,
    records: &[Value],
    wire: &BTreeMap<(u16, u16), Vec<Wire>>,
) -> Vec<(Case, (f64, f64))> {
    let uids: HashSet<&str> = records.iter().filter_map(|r| r["uid"].as_str()).collect();
    assert_eq!(
        uids.len(),
        records.len(),
        "{source}: uids repeat: {records:#?}"
    );
    CASES
        .iter()
        .map(|&case| {
            let port = case as u16;
            let matching: Vec<&Value> = records
                .iter()
                .filter(|record| record["id.resp_p"] == port)
                .collect();
            assert_eq!(matching.len(), 1, "{source} {case:?}: {matching:#?}");
            let record = matching[0];
            let client_port = record["id.orig_p"].as_u64().expect("orig port") as u16;
            let wires = wire
                .get(&(client_port, port))
                .unwrap_or_else(|| panic!("{source} {case:?}: tshark saw nothing: {record}"));
            assert_eq!(wires.len(), 1, "{source} {case:?}: {wires:?}");
            (case, check_against_wire(source, case, record, &wires[0]))
        })
        .collect()
}

#[test]
fn records_agree_with_tshark_live_and_replayed() {
    let lab = Lab::new();
    let capture = std::env::temp_dir().join(format!("{}-records.pcap", lab.server_ns));
    let tcpdump = start_tcpdump(&lab.server_ns, &lab.server_if, &capture);
    // teardown's defaults: no --clock, no --mode.
    let (teardown, _stderr) = start_teardown(&lab.server_ns, &lab.server_if, &[]);

    for case in CASES {
        let server = (case != Case::Refused).then(|| {
            let listener = in_netns(&lab.server_ns, move || {
                TcpListener::bind(socket_addr(SERVER_V4, case as u16)).expect("bind")
            })
            .join()
            .expect("the listener thread panicked");
            thread::spawn(move || serve(case, listener))
        });
        in_netns(&lab.client_ns, move || connect(case))
            .join()
            .expect("a client thread panicked");
        if let Some(server) = server {
            server.join().expect("a server thread panicked");
        }
    }
    // The close delay (5 s) passes before closed records are reported.
    thread::sleep(Duration::from_secs(6));
    let output = teardown.terminate();
    thread::sleep(Duration::from_millis(200));
    let _ = tcpdump.terminate();
    let ports: Vec<u16> = CASES.iter().map(|&case| case as u16).collect();
    let wire = wire_connections(&capture, &ports);
    let replayed = Command::new(teardown_bin())
        .args(["replay", "--connections", "--json"])
        .arg(&capture)
        .output()
        .expect("running teardown replay");
    let _ = std::fs::remove_file(&capture);
    assert!(
        replayed.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&replayed.stderr)
    );

    let live = conn_records(&output.stdout);
    let replay = conn_records(&replayed.stdout);
    for record in live.iter().chain(&replay) {
        println!("{record}");
    }
    let live_deltas = check_all("live", &live, &wire);
    let replay_deltas = check_all("replay", &replay, &wire);
    for ((case, live), (_, replay)) in live_deltas.iter().zip(&replay_deltas) {
        println!(
            "{case:?}: duration minus tshark's: live {:+.0} us, replay {:+.0} us; \
             ts minus first frame: live {:+.0} us, replay {:+.0} us",
            live.0 * 1e6,
            replay.0 * 1e6,
            live.1 * 1e6,
            replay.1 * 1e6
        );
    }
    // A run's uids and a replay's never meet.
    let live_uids: HashSet<&str> = live.iter().filter_map(|r| r["uid"].as_str()).collect();
    assert!(
        replay
            .iter()
            .all(|r| !live_uids.contains(r["uid"].as_str().unwrap_or(""))),
        "a uid repeats across runs"
    );

    // The check can fail: 1.5 ms more on one duration is caught.
    let mut wrong = live.clone();
    let record = wrong
        .iter_mut()
        .find(|record| record["id.resp_p"] == Case::Bulk as u16)
        .expect("the bulk record");
    record["duration"] = (record["duration"].as_f64().expect("a duration") + 0.0015).into();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught = std::panic::catch_unwind(|| check_all("tampered", &wrong, &wire));
    std::panic::set_hook(quiet);
    assert!(caught.is_err(), "a duration 1.5 ms off went unnoticed");
}

//! Port reuse, live: the same 4-tuple used twice in a row, the second
//! connection's SYN arriving while the first record is still in its close
//! delay. The client binds its local port itself, so both connections have
//! the same addresses and ports. Each way must give exactly two records, the
//! first closed out by the reuse, both starting with the SYN, each with its
//! own conn_state, and packet counts equal to tshark's for its own stream;
//! the capture replayed must give the same.

mod support;

use std::{
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

/// One reuse story per server port; the client uses `port + 33000` locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Story {
    /// The client closes first (so it holds TIME_WAIT; its namespace lets
    /// connect() reuse that at once), then connects again.
    CloseThenReuse = 9201,
    /// The client aborts (RST, no TIME_WAIT anywhere), then connects again.
    AbortThenReuse = 9202,
    /// The server closes first and holds TIME_WAIT; the client's new SYN has
    /// a higher sequence number, which Linux accepts on a TIME_WAIT socket.
    ReuseWhileServerInTimeWait = 9203,
}

const STORIES: [Story; 3] = [
    Story::CloseThenReuse,
    Story::AbortThenReuse,
    Story::ReuseWhileServerInTimeWait,
];

impl Story {
    fn server_port(self) -> u16 {
        self as u16
    }

    fn client_port(self) -> u16 {
        self as u16 + 33000
    }

    /// conn_state of the first and the second connection.
    fn states(self) -> [&'static str; 2] {
        match self {
            Story::CloseThenReuse | Story::ReuseWhileServerInTimeWait => ["SF", "SF"],
            Story::AbortThenReuse => ["RSTO", "SF"],
        }
    }
}

/// A TCP connection from `CLIENT_V4:local_port` (SO_REUSEADDR, so a port in
/// TIME_WAIT can be bound) to the server. Call from the client's namespace.
fn connect_from(local_port: u16, server_port: u16) -> std::io::Result<TcpStream> {
    support::connect_from(
        socket_addr(CLIENT_V4, local_port),
        socket_addr(SERVER_V4, server_port),
        ConnectFrom {
            reuse_address: true,
            timeout: None,
        },
    )
}

/// A connected (client, server) pair for `story`, the client from its own
/// fixed port.
fn pair(lab: &Lab, listener: &TcpListener, story: Story) -> (TcpStream, TcpStream) {
    let (local, remote) = (story.client_port(), story.server_port());
    let client = in_netns(&lab.client_ns, move || connect_from(local, remote))
        .join()
        .expect("the client thread panicked")
        .unwrap_or_else(|err| panic!("{story:?}: connect from port {local}: {err}"));
    let (server, _) = listener.accept().expect("accept");
    for end in [&client, &server] {
        end.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
    }
    (client, server)
}

/// A request, a reply, and a graceful close, `first` closing first.
fn exchange_and_close(mut client: TcpStream, mut server: TcpStream, client_first: bool) {
    client.write_all(b"request").expect("request");
    let mut request = [0u8; 7];
    server.read_exact(&mut request).expect("read request");
    server.write_all(b"reply").expect("reply");
    let mut reply = [0u8; 5];
    client.read_exact(&mut reply).expect("read reply");
    let (mut first, mut second) = if client_first {
        (client, server)
    } else {
        (server, client)
    };
    first.shutdown(Shutdown::Write).expect("first FIN");
    let mut sink = Vec::new();
    second
        .read_to_end(&mut sink)
        .expect("the first FIN arrives");
    drop(second); // its FIN
    first
        .read_to_end(&mut sink)
        .expect("the second FIN arrives");
    assert!(sink.is_empty(), "{sink:?}");
    drop(first);
}

fn play(lab: &Lab, story: Story) {
    let port = story.server_port();
    let listener = in_netns(&lab.server_ns, move || {
        TcpListener::bind(socket_addr(SERVER_V4, port)).expect("binding the server")
    })
    .join()
    .expect("the listener thread panicked");
    let (client, mut server) = pair(lab, &listener, story);
    match story {
        Story::CloseThenReuse => exchange_and_close(client, server, true),
        Story::ReuseWhileServerInTimeWait => {
            exchange_and_close(client, server, false);
            let sockets = tcp_sockets(&lab.server_ns, story.client_port());
            assert!(
                sockets.iter().any(|s| s.starts_with("TIME-WAIT")),
                "the server must hold TIME_WAIT: {sockets:?}"
            );
        }
        Story::AbortThenReuse => {
            let mut client = client;
            client.write_all(b"bye").expect("write");
            let mut bye = [0u8; 3];
            server.read_exact(&mut bye).expect("read");
            // Let the data be acknowledged so the RST is the only thing left.
            thread::sleep(Duration::from_millis(50));
            set_linger_zero(client.as_raw_fd());
            drop(client);
            let mut sink = Vec::new();
            let error = server.read_to_end(&mut sink).expect_err("the RST");
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        }
    }
    // At once (the client's TIME_WAIT may be reused after 1 ms), the same
    // 4-tuple again.
    thread::sleep(Duration::from_millis(5));
    let (client, server) = pair(lab, &listener, story);
    exchange_and_close(client, server, true);
}

/// One TCP stream in tshark's reading: (frames client to server, frames
/// server to client, first frame time).
type Stream = (u64, u64, f64);

/// tshark's streams of `story`'s 4-tuple, in order.
fn wire_streams(capture: &Path, story: Story) -> Vec<Stream> {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args([
            "-Y",
            &format!(
                "tcp.port == {} && tcp.port == {}",
                story.client_port(),
                story.server_port()
            ),
        ])
        .args(["-T", "fields", "-e", "tcp.stream", "-e", "tcp.dstport"])
        .args(["-e", "frame.time_epoch"]));
    let mut streams: Vec<(u64, Stream)> = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [stream, dst, time] = f[..] else {
            panic!("tshark line {line:?}");
        };
        let stream: u64 = stream.parse().expect("tcp.stream");
        let time: f64 = time.parse().expect("time");
        if streams.last().is_none_or(|(s, _)| *s != stream) {
            streams.push((stream, (0, 0, time)));
        }
        let entry = &mut streams.last_mut().expect("pushed").1;
        if dst == story.server_port().to_string() {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }
    streams.into_iter().map(|(_, stream)| stream).collect()
}

fn check(source: &str, story: Story, records: &[Value], streams: &[Stream]) {
    let mut mine: Vec<&Value> = records
        .iter()
        .filter(|r| r["id.orig_p"] == story.client_port() && r["id.resp_p"] == story.server_port())
        .collect();
    mine.sort_by(|a, b| a["ts"].as_f64().partial_cmp(&b["ts"].as_f64()).unwrap());
    assert_eq!(
        mine.len(),
        2,
        "{source} {story:?}: two records for the reused 4-tuple: {mine:#?}"
    );
    for (i, (record, state)) in mine.iter().zip(story.states()).enumerate() {
        assert_eq!(
            (
                record["conn_state"].as_str(),
                record["id.orig_h"].as_str(),
                record["orig_guessed"].as_bool()
            ),
            (Some(state), Some(CLIENT_V4), Some(false)),
            "{source} {story:?}: connection {}: {record}",
            i + 1
        );
        assert!(
            record["history"]
                .as_str()
                .is_some_and(|h| h.starts_with('S')),
            "{source} {story:?}: connection {} must start with its SYN: {record}",
            i + 1
        );
    }
    assert_eq!(
        mine[0]["end_reason"], "reused",
        "{source} {story:?}: the second SYN closes the first record out: {}",
        mine[0]
    );
    assert_ne!(mine[0]["uid"], mine[1]["uid"], "{source} {story:?}");
    // Each record holds its own connection's packets, as tshark split them.
    assert_eq!(
        streams.len(),
        2,
        "{source} {story:?}: tshark's streams: {streams:?}"
    );
    for (record, (to_server, to_client, first)) in mine.iter().zip(streams) {
        assert_eq!(
            (record["orig_pkts"].as_u64(), record["resp_pkts"].as_u64()),
            (Some(*to_server), Some(*to_client)),
            "{source} {story:?}: packets against tshark's stream: {record}"
        );
        let ts = record["ts"].as_f64().expect("ts");
        assert!(
            (ts - first).abs() <= 0.001,
            "{source} {story:?}: ts {ts:.6} against the stream's first frame {first:.6}: {record}"
        );
    }
}

/// Lets the client reuse its own TIME_WAIT 1 ms after it began (the client
/// namespace's own settings, gone with it).
fn allow_time_wait_reuse(lab: &Lab) {
    for (name, value) in [("tcp_tw_reuse", "1"), ("tcp_tw_reuse_delay", "1")] {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &lab.client_ns,
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.{name}={value}"),
        ]));
    }
}

#[test]
fn a_reused_four_tuple_gives_two_records_live_and_replayed() {
    let lab = Lab::new();
    allow_time_wait_reuse(&lab);
    let capture = std::env::temp_dir().join(format!("{}-reuse.pcap", lab.server_ns));
    let tcpdump = start_tcpdump(&lab.server_ns, &lab.server_if, &capture);
    let (teardown, _stderr) = start_teardown(&lab.server_ns, &lab.server_if, &[]);
    for story in STORIES {
        play(&lab, story);
    }
    // The second connections' close delay (5 s) passes before their
    // records are reported.
    thread::sleep(Duration::from_secs(6));
    let output = teardown.terminate();
    thread::sleep(Duration::from_millis(200));
    let _ = tcpdump.terminate();
    let streams: Vec<Vec<Stream>> = STORIES
        .iter()
        .map(|&story| wire_streams(&capture, story))
        .collect();
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
        println!(
            "{} -> {} {} {} {} pkts {}/{} {}",
            record["id.orig_p"],
            record["id.resp_p"],
            record["conn_state"],
            record["history"],
            record["end_reason"],
            record["orig_pkts"],
            record["resp_pkts"],
            record["uid"]
        );
    }
    for (story, streams) in STORIES.iter().zip(&streams) {
        check("live", *story, &live, streams);
        check("replay", *story, &replay, streams);
    }
}

/// Server port and client ports of the burst.
const BURST_PORT: u16 = 9204;
const BURST_CLIENTS: std::ops::Range<u16> = 43000..43060;

/// Many short connections in a burst, then each 4-tuple again at once: 120
/// SYNs within a few hundred milliseconds, far more than the 16 per CPU per
/// 100 ms a small table (`--max-flows 1024`) once allowed however empty it
/// was. The table is never under pressure, so every SYN must be tracked:
/// each 4-tuple gives exactly two records, both seen from their SYN.
#[test]
fn a_burst_of_reused_four_tuples_gives_two_records_each() {
    let lab = Lab::new();
    allow_time_wait_reuse(&lab);
    let capture = std::env::temp_dir().join(format!("{}-burst.pcap", lab.server_ns));
    let tcpdump = start_tcpdump(&lab.server_ns, &lab.server_if, &capture);
    let (teardown, _stderr) =
        start_teardown(&lab.server_ns, &lab.server_if, &["--max-flows", "1024"]);
    let listener = in_netns(&lab.server_ns, || {
        TcpListener::bind(socket_addr(SERVER_V4, BURST_PORT)).expect("binding the server")
    })
    .join()
    .expect("the listener thread panicked");
    let connections = 2 * BURST_CLIENTS.len();
    let server = thread::spawn(move || {
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            let mut request = [0u8; 7];
            stream.read_exact(&mut request).expect("request");
            stream.write_all(b"reply").expect("reply");
            let _ = stream.read_to_end(&mut Vec::new());
        }
    });
    in_netns(&lab.client_ns, || {
        for _round in 0..2 {
            for local in BURST_CLIENTS {
                let mut client = connect_from(local, BURST_PORT)
                    .unwrap_or_else(|err| panic!("connect from port {local}: {err}"));
                client
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("read timeout");
                client.write_all(b"request").expect("request");
                let mut reply = [0u8; 5];
                client.read_exact(&mut reply).expect("reply");
                client.shutdown(Shutdown::Write).expect("FIN");
                let _ = client.read_to_end(&mut Vec::new());
            }
            thread::sleep(Duration::from_millis(2));
        }
    })
    .join()
    .expect("the client thread panicked");
    server.join().expect("the server thread panicked");
    thread::sleep(Duration::from_secs(6));
    let output = teardown.terminate();
    thread::sleep(Duration::from_millis(200));
    let _ = tcpdump.terminate();
    let replayed = Command::new(teardown_bin())
        .args(["replay", "--connections", "--json"])
        .arg(&capture)
        .output()
        .expect("running teardown replay");
    let streams = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&capture)
        .args(["-T", "fields", "-e", "tcp.stream"]));
    let _ = std::fs::remove_file(&capture);
    let mut stream_ids: Vec<&str> = std::str::from_utf8(&streams.stdout)
        .expect("tshark's output")
        .lines()
        .collect();
    stream_ids.sort();
    stream_ids.dedup();
    assert_eq!(stream_ids.len(), connections, "tshark's stream count");
    assert!(
        replayed.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    for (source, records) in [
        ("live", conn_records(&output.stdout)),
        ("replay", conn_records(&replayed.stdout)),
    ] {
        let bad: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["conn_state"] != "SF"
                    || r["orig_guessed"] != false
                    || !r["history"].as_str().is_some_and(|h| h.starts_with('S'))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{source}: records not SF from the SYN: {bad:#?}"
        );
        for local in BURST_CLIENTS {
            let count = records
                .iter()
                .filter(|r| r["id.orig_p"] == local && r["id.resp_p"] == BURST_PORT)
                .count();
            assert_eq!(count, 2, "{source}: records for client port {local}");
        }
        assert_eq!(records.len(), connections, "{source}: records");
    }
}

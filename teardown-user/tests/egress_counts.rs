//! Flag counts in both directions, judged by tshark: teardown (XDP ingress
//! and TC egress) on the server's end of the lab's link, tcpdump capturing
//! every frame on the same interface, and real connections both ways over
//! IPv4 and IPv6: graceful closes with data each way, resets from either
//! side, refused connects. teardown's counts of what the server sent
//! (`egress.totals`) must equal tshark's counts of frames whose source MAC
//! is the server's, and its counts of what arrived (`totals`) those of all
//! other frames.
//!
//! Segmentation: TCP hands TC egress GSO packets of several segments
//! whatever the device offers. On a device with TSO (veth as it comes, most
//! NICs) they stay whole up to the driver, so TC egress and tcpdump see the
//! same frames. With TSO and GSO turned off through ethtool alone, the
//! stack cuts them up after TC egress and before tcpdump: measured here,
//! teardown counted 90 data frames sent where tshark counted 861. So one
//! test runs the link as it comes, and one with a device limit of one
//! segment per GSO packet ([`one_segment_per_frame`]), where every frame
//! is a wire segment; both must agree exactly.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use support::*;

const OPEN_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;
/// Bytes the server sends on each connection that asks for them: many
/// segments, so offloads would matter.
const DOWNLOAD: usize = 200_000;

/// The counters compared, by teardown's key.
const COMPARED: &[&str] = &[
    "packets", "tcp", "syn", "syn_ack", "fin", "rst", "pure_ack", "data",
];

/// Makes every frame `iface` sends in `ns` one TCP segment, as on a wire.
/// Turning TSO and GSO off with ethtool is not enough: TCP builds GSO
/// packets whatever the device offers (software GSO), and the stack cuts
/// them into segments only after TC egress has run, just before the
/// frames reach tcpdump and the driver. TC egress would count one frame
/// where tcpdump sees several. A device limit of one segment per GSO
/// packet makes TCP build single-segment packets. GRO is off too, so what
/// arrives is what was sent.
fn one_segment_per_frame(ns: &str, iface: &str) {
    run(Command::new("ip").args(["-n", ns, "link", "set", iface, "gso_max_segs", "1"]));
    run(Command::new("ip").args([
        "netns", "exec", ns, "ethtool", "-K", iface, "tso", "off", "gso", "off", "gro", "off",
    ]));
}

/// Keeps the link free of frames nobody asked for, which could fall
/// between teardown's start and tcpdump's (or their stops) and make the
/// packet counts differ by one: each side knows the other's addresses for
/// good (no ARP or neighbour discovery), sends no router solicitations, and
/// the multicast reports of bringing the link up are over before anything
/// is watched.
fn quiet_link(lab: &Lab) {
    let sides = [
        (
            &lab.client_ns,
            &lab.client_if,
            &lab.server_ns,
            &lab.server_if,
            SERVER_V4,
            SERVER_V6,
        ),
        (
            &lab.server_ns,
            &lab.server_if,
            &lab.client_ns,
            &lab.client_if,
            CLIENT_V4,
            CLIENT_V6,
        ),
    ];
    for (ns, iface, peer_ns, peer_if, peer_v4, peer_v6) in sides {
        let peer_mac = mac_of(peer_ns, peer_if);
        for address in [peer_v4, peer_v6] {
            run(Command::new("ip").args([
                "-n",
                ns,
                "neigh",
                "replace",
                address,
                "lladdr",
                &peer_mac,
                "dev",
                iface,
                "nud",
                "permanent",
            ]));
        }
        run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{iface}.router_solicitations=0"),
        ]));
    }
    // MLDv2 repeats its unsolicited reports within about two seconds.
    std::thread::sleep(Duration::from_millis(2500));
}

fn mac_of(ns: &str, iface: &str) -> String {
    let output = run(Command::new("ip").args(["-n", ns, "-j", "link", "show", iface]));
    let links: Value = serde_json::from_slice(&output.stdout).expect("ip -j link");
    links[0]["address"]
        .as_str()
        .expect("a MAC address")
        .to_lowercase()
}

/// What the server does with an accepted connection, chosen by the
/// client's first byte.
fn serve_one(mut stream: TcpStream) {
    let mut first = [0u8; 1];
    if stream.read_exact(&mut first).is_err() {
        return;
    }
    match first[0] {
        // Download: send a lot, then close gracefully after the client's FIN.
        b'D' => {
            let _ = stream.write_all(&vec![b'x'; DOWNLOAD]);
            let _ = stream.shutdown(Shutdown::Write);
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
        // Abort: the server resets the connection.
        b'A' => {
            set_linger_zero(stream.as_raw_fd());
            drop(stream);
        }
        // Upload (or a client reset): read to the end, answer, close.
        _ => {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
            let _ = stream.write_all(b"thanks");
        }
    }
}

fn serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let mut workers = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                workers.push(std::thread::spawn(move || serve_one(stream)));
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(err) => panic!("accept: {err}"),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// The client's side of every scenario, against `server`.
fn clients(server: &str) {
    let open = socket_addr(server, OPEN_PORT);
    // Upload, graceful close.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(open).expect("connect");
        stream.write_all(&[b'U'; 50_000]).expect("upload");
        stream.shutdown(Shutdown::Write).expect("shutdown");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("read the answer");
    }
    // Download, graceful close.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(open).expect("connect");
        stream.write_all(b"D").expect("ask");
        let mut data = Vec::new();
        stream.read_to_end(&mut data).expect("download");
        assert_eq!(data.len(), DOWNLOAD);
    }
    // The client resets.
    for _ in 0..2 {
        let stream = TcpStream::connect(open).expect("connect");
        (&stream).write_all(b"R").expect("write");
        std::thread::sleep(Duration::from_millis(20));
        set_linger_zero(stream.as_raw_fd());
        drop(stream);
    }
    // The server resets.
    for _ in 0..2 {
        let mut stream = TcpStream::connect(open).expect("connect");
        stream.write_all(b"A").expect("write");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
    // Refused: the server's kernel answers the SYN with a RST.
    for _ in 0..3 {
        let err = TcpStream::connect(socket_addr(server, CLOSED_PORT))
            .expect_err("nobody listens on the closed port");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    }
}

/// tshark's counts of `capture`, split by whether the frame's source MAC is
/// `server_mac` (sent) or not (arrived), with teardown's definitions.
fn tshark_counts(
    capture: &std::path::Path,
    server_mac: &str,
) -> (BTreeMap<&'static str, u64>, BTreeMap<&'static str, u64>) {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args(["-T", "fields", "-E", "separator=/t"])
        .args(["-e", "eth.src", "-e", "tcp.flags", "-e", "tcp.len"]));
    let (mut sent, mut arrived) = (BTreeMap::new(), BTreeMap::new());
    for key in COMPARED {
        sent.insert(*key, 0);
        arrived.insert(*key, 0);
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let counts = if fields[0].eq_ignore_ascii_case(server_mac) {
            &mut sent
        } else {
            &mut arrived
        };
        *counts.get_mut("packets").unwrap() += 1;
        let Some(flags) = fields.get(1).filter(|flags| !flags.is_empty()) else {
            continue;
        };
        let flags = u16::from_str_radix(flags.trim_start_matches("0x"), 16).expect("tcp.flags");
        let len: u64 = fields
            .get(2)
            .and_then(|len| len.parse().ok())
            .expect("tcp.len");
        let (fin, syn, rst, ack) = (
            flags & 0x01 != 0,
            flags & 0x02 != 0,
            flags & 0x04 != 0,
            flags & 0x10 != 0,
        );
        let mut add = |key| *counts.get_mut(key).unwrap() += 1;
        add("tcp");
        if syn && !ack {
            add("syn");
        }
        if syn && ack {
            add("syn_ack");
        }
        if fin {
            add("fin");
        }
        if rst {
            add("rst");
        }
        if ack && !syn && !fin && !rst && len == 0 {
            add("pure_ack");
        }
        if len > 0 {
            add("data");
        }
    }
    (sent, arrived)
}

fn teardown_counts(totals: &Value) -> BTreeMap<&'static str, u64> {
    COMPARED
        .iter()
        .map(|key| {
            (
                *key,
                totals[*key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no {key} in {totals}")),
            )
        })
        .collect()
}

/// Runs every scenario with teardown and tcpdump on the server's end;
/// with `one_segment`, both ends send one TCP segment per frame.
fn run_lab(one_segment: bool) -> Counts {
    let lab = Lab::new();
    let dir = TempDir::new(&format!("td-egress-{}", lab.server_ns));
    let capture = dir.join("server.pcap");
    if one_segment {
        one_segment_per_frame(&lab.server_ns, &lab.server_if);
        one_segment_per_frame(&lab.client_ns, &lab.client_if);
    }
    let server_mac = mac_of(&lab.server_ns, &lab.server_if);
    quiet_link(&lab);

    // Listening before anything is watched: nothing is sent meanwhile.
    let listeners: Vec<TcpListener> = [SERVER_V4, SERVER_V6]
        .into_iter()
        .map(|address| listen_in(&lab.server_ns, socket_addr(address, OPEN_PORT)))
        .collect();
    let (teardown, _stderr) =
        start_teardown(&lab.server_ns, &lab.server_if, &["--metrics-addr", "off"]);
    // Every frame, not only TCP, so the packet counts compare too.
    let tcpdump = start_tcpdump_with(&lab.server_ns, &lab.server_if, &capture, &[], "");
    // tcpdump is capturing once its file exists; give it a moment more.
    std::thread::sleep(Duration::from_millis(300));

    let stop = Arc::new(AtomicBool::new(false));
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve(listener, stop))
        })
        .collect();
    for server in [SERVER_V4, SERVER_V6] {
        in_netns(&lab.client_ns, move || clients(server))
            .join()
            .expect("client thread");
    }
    stop.store(true, Ordering::SeqCst);
    for server in servers {
        server.join().expect("server thread");
    }
    // Let the last FINs and ACKs cross the link.
    std::thread::sleep(Duration::from_millis(500));

    let output = teardown.terminate();
    assert!(output.status.success(), "teardown run: {output:?}");
    std::thread::sleep(Duration::from_millis(200));
    drop(tcpdump.terminate());

    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let last = lines
        .iter()
        .find(|value| value["event"] == "final")
        .unwrap_or_else(|| panic!("no final line: {stdout}"));
    // The interval lines carry the egress figures and lock_contended too.
    let stats = lines
        .iter()
        .rfind(|value| value["event"] == "stats")
        .unwrap_or_else(|| panic!("no stats line: {stdout}"));
    assert!(stats["egress"]["rates"]["syn_ack"].is_number(), "{stats}");
    assert!(stats["egress"]["totals"]["syn_ack"].is_number(), "{stats}");
    assert!(stats["flows"]["lock_contended"].is_u64(), "{stats}");

    let teardown_sent = teardown_counts(&last["egress"]["totals"]);
    let teardown_arrived = teardown_counts(&last["totals"]);
    let (tshark_sent, tshark_arrived) = tshark_counts(&capture, &server_mac);
    eprintln!("one segment per frame: {one_segment}");
    eprintln!("sent by the server:    teardown {teardown_sent:?}");
    eprintln!("                       tshark   {tshark_sent:?}");
    eprintln!("arrived at the server: teardown {teardown_arrived:?}");
    eprintln!("                       tshark   {tshark_arrived:?}");
    // Not required to be 0: a segment given up on a held slot leaves the
    // flag counts alone (they are tallied apart from the flow table).
    eprintln!("lock_contended {}", last["flows"]["lock_contended"]);
    // The scenarios happened: 2 x (3 + 3 + 2 + 2) SYN-ACKs sent, and
    // 2 x (3 refused + 2 aborted) RSTs at least.
    assert_eq!(teardown_sent["syn_ack"], 20, "{teardown_sent:?}");
    assert!(teardown_sent["rst"] >= 10, "{teardown_sent:?}");
    assert_eq!(teardown_arrived["syn"], 26, "{teardown_arrived:?}");
    Counts {
        teardown_sent,
        teardown_arrived,
        tshark_sent,
        tshark_arrived,
    }
}

/// Both sides' counts of one lab run.
struct Counts {
    teardown_sent: BTreeMap<&'static str, u64>,
    teardown_arrived: BTreeMap<&'static str, u64>,
    tshark_sent: BTreeMap<&'static str, u64>,
    tshark_arrived: BTreeMap<&'static str, u64>,
}

/// One segment per frame: every count equal, both ways.
#[test]
fn egress_and_ingress_counts_equal_tsharks() {
    let counts = run_lab(true);
    assert_eq!(
        counts.teardown_sent, counts.tshark_sent,
        "frames the server sent"
    );
    assert_eq!(
        counts.teardown_arrived, counts.tshark_arrived,
        "frames the server received"
    );
}

/// The link as it comes: veth offers TSO, so TCP sends GSO packets of
/// several data segments that stay whole up to the driver, and TC egress
/// and tcpdump see the same frames (as tcpdump does on any NIC with TSO):
/// every count equal again, data frames being GSO packets. The flags that
/// matter for handshakes and teardowns count the same as on the wire: a
/// SYN-ACK, an RST or a pure ACK is never part of a GSO packet, and of a
/// GSO packet's segments only the last carries its FIN.
#[test]
fn egress_and_ingress_counts_equal_tsharks_with_offloads() {
    let counts = run_lab(false);
    assert_eq!(
        counts.teardown_sent, counts.tshark_sent,
        "frames the server sent"
    );
    assert_eq!(
        counts.teardown_arrived, counts.tshark_arrived,
        "frames the server received"
    );
}

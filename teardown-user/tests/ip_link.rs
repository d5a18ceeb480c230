//! teardown on an interface whose packets carry no Ethernet header: a tun
//! device, as a VPN (OpenVPN, WireGuard's own device type) makes one.
//!
//! Two namespaces, each with a tun device, and this test in between
//! relaying every packet from one device's descriptor to the other's: a
//! point-to-point IP link, IPv4 and IPv6. Real connections cross it
//! (graceful closes, resets by the client, refused connects), with
//! teardown as `teardown run` starts by default (`--mode auto`, which on
//! such a device attaches at TC) on the server's device, and tcpdump
//! capturing it. Every connection's record must be what the client did
//! (`SF`, `RSTO`, `REJ`), its packet counts tshark's, and the replay of
//! the capture (raw IP, as tcpdump writes a tun device's) must give the
//! same records. Before teardown read such packets from their IP header,
//! it read them as Ethernet frames: no connection at all. As root.

mod support;

use std::{
    collections::BTreeMap,
    ffi::CString,
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{
    ConnectFrom, JsonLines, TempDir, conn_records, connect_from, in_netns, run, set_linger_zero,
    start_tcpdump_with, start_teardown, teardown_bin, vxlan_device,
};

const CLIENT_V4: &str = "198.51.100.1";
const SERVER_V4: &str = "198.51.100.2";
const CLIENT_V6: &str = "2001:db8:7::1";
const SERVER_V6: &str = "2001:db8:7::2";
const OPEN_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;
/// Connections of each kind, per address family.
const EACH: usize = 25;

/// Two namespaces, deleted when dropped (their tun devices with them).
struct Namespaces {
    client: String,
    server: String,
}

impl Namespaces {
    fn new() -> Namespaces {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        // `td-<role>-<pid>-...`, as `cargo xtask test` sweeps a dead run's.
        let pid = std::process::id();
        let spaces = Namespaces {
            client: format!("td-c-{pid}-tun{n}"),
            server: format!("td-s-{pid}-tun{n}"),
        };
        for ns in [&spaces.client, &spaces.server] {
            run(Command::new("ip").args(["netns", "add", ns]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        spaces
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Creates tun device `name` (IP packets, no packet information header)
/// in `ns`, with IPv4 address `local_v4` (its peer `peer_v4` at the other
/// end) and IPv6 address `local_v6` (with its prefix length), up.
fn tun_device(ns: &str, name: &str, local_v4: &str, peer_v4: &str, local_v6: &str) -> OwnedFd {
    let c_name = CString::new(name).expect("a device name");
    let fd = in_netns(ns, move || {
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        // SAFETY: open(2) of a path; ioctl(2) with an ifreq that outlives
        // the call; the descriptor is owned once returned.
        unsafe {
            let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
            let mut request: libc::ifreq = std::mem::zeroed();
            for (slot, byte) in request.ifr_name.iter_mut().zip(c_name.as_bytes_with_nul()) {
                *slot = *byte as libc::c_char;
            }
            request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            let rc = libc::ioctl(fd, TUNSETIFF, &mut request);
            assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        }
    })
    .join()
    .expect("the tun thread");
    run(Command::new("ip").args([
        "-n", ns, "addr", "add", local_v4, "peer", peer_v4, "dev", name,
    ]));
    // IPv6 on the link's prefix (a peer address would add no route to it).
    run(Command::new("ip").args(["-n", ns, "addr", "add", local_v6, "dev", name, "nodad"]));
    run(Command::new("ip").args(["-n", ns, "link", "set", name, "up"]));
    fd
}

/// Copies every packet one device's descriptor gives to the other's, both
/// ways, until `stop`: the wire between the two tun devices.
fn relay(a: OwnedFd, b: OwnedFd, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut buffer = vec![0u8; 65_536];
        let mut relayed = 0;
        let mut polled = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: poll(2) on two descriptors this thread owns.
            let ready = unsafe { libc::poll(polled.as_mut_ptr(), 2, 50) };
            if ready <= 0 {
                continue;
            }
            for (from, to) in [(0, &b), (1, &a)] {
                if polled[from].revents & libc::POLLIN == 0 {
                    continue;
                }
                // SAFETY: read(2) into a buffer of its length, then write(2)
                // of the bytes read, on descriptors this thread owns.
                unsafe {
                    let read =
                        libc::read(polled[from].fd, buffer.as_mut_ptr().cast(), buffer.len());
                    if read > 0 {
                        libc::write(to.as_raw_fd(), buffer.as_ptr().cast(), read as usize);
                        relayed += 1;
                    }
                }
            }
        }
        relayed
    })
}

/// What a client did on one connection, to be found in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Request, reply, both sides closed: `SF`.
    Graceful,
    /// Handshake, then the client reset (linger 0): `RSTO`.
    Reset,
    /// Nobody listens: `REJ`.
    Refused,
}

impl Kind {
    fn conn_state(self) -> &'static str {
        match self {
            Kind::Graceful => "SF",
            Kind::Reset => "RSTO",
            Kind::Refused => "REJ",
        }
    }
}

/// The server: echoes a line back and closes, for every connection.
fn serve(listener: TcpListener, connections: usize) {
    for _ in 0..connections {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = [0u8; 64];
        let read = stream.read(&mut request).unwrap_or(0);
        if read > 0 {
            let _ = stream.write_all(&request[..read]);
        }
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    }
}

/// The client's record of what it did: (server address, client port) to
/// the kind, and how many refused connects to each server address.
type ClientRecord = (BTreeMap<(String, u16), Kind>, BTreeMap<String, usize>);

fn client(servers: [&'static str; 2]) -> ClientRecord {
    let mut done = BTreeMap::new();
    let mut refused = BTreeMap::new();
    for server in servers {
        let address = |port| SocketAddr::new(server.parse().expect("an address"), port);
        for _ in 0..EACH {
            let mut stream = TcpStream::connect(address(OPEN_PORT)).expect("connect");
            let port = stream.local_addr().expect("local address").port();
            stream.write_all(b"hello\n").expect("write");
            let mut reply = [0u8; 6];
            stream.read_exact(&mut reply).expect("the reply");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).expect("read to the end");
            done.insert((server.to_string(), port), Kind::Graceful);
        }
        for _ in 0..EACH {
            let mut stream = TcpStream::connect(address(OPEN_PORT)).expect("connect");
            let port = stream.local_addr().expect("local address").port();
            stream.write_all(b"bye\n").expect("write");
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).expect("the reply");
            set_linger_zero(stream.as_raw_fd());
            drop(stream);
            done.insert((server.to_string(), port), Kind::Reset);
        }
        let reset_ports: Vec<u16> = done
            .iter()
            .filter(|((to, _), kind)| to == server && **kind == Kind::Reset)
            .map(|((_, port), _)| *port)
            .collect();
        for n in 0..EACH {
            // The first few from a reset connection's port, free again at
            // once (a reset leaves no TIME_WAIT), as the kernel may pick it
            // itself: two connections with one client port, which must
            // keep their own records and counts.
            let result = match reset_ports.get(n).filter(|_| n < REUSED_PORTS) {
                Some(&port) => {
                    let any = SocketAddr::new(
                        if server.contains(':') {
                            Ipv6Addr::UNSPECIFIED.into()
                        } else {
                            Ipv4Addr::UNSPECIFIED.into()
                        },
                        port,
                    );
                    connect_from(any, address(CLOSED_PORT), ConnectFrom::default()).map(drop)
                }
                None => TcpStream::connect(address(CLOSED_PORT)).map(drop),
            };
            let err = result.expect_err("nobody listens");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        }
        refused.insert(server.to_string(), EACH);
    }
    (done, refused)
}

/// A connection as tshark's counts know it: (server address, client port,
/// server port). The server's port belongs in it: a refused connect to
/// [`CLOSED_PORT`] may take a client port a closed connection to
/// [`OPEN_PORT`] had (another 4-tuple, so the kernel may), and keyed
/// without it the refused connect's SYN and RST were added to the other
/// connection's counts: one packet each way more than its record.
type WireKey = (String, u16, u16);

/// Refused connects per server address made from a reset connection's
/// client port.
const REUSED_PORTS: usize = 5;

/// tshark's packets per connection of `capture`, to (client to server,
/// server to client).
fn tshark_packets(capture: &std::path::Path) -> BTreeMap<WireKey, (u64, u64)> {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        .args(["-Y", "tcp", "-T", "fields", "-E", "separator=/t"])
        // The last occurrence: inside a tunnel, the inner header's.
        .args(["-E", "occurrence=l"])
        .args([
            "-e", "ip.dst", "-e", "ipv6.dst", "-e", "ip.src", "-e", "ipv6.src",
        ])
        .args(["-e", "tcp.srcport", "-e", "tcp.dstport"]));
    let mut packets = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        // IPv6 inside an IPv4 tunnel has both: the IPv6 one is inner.
        let either = |v4: &str, v6: &str| if v6.is_empty() { v4 } else { v6 }.to_string();
        let (dst, src) = (either(fields[0], fields[1]), either(fields[2], fields[3]));
        let (src_port, dst_port): (u16, u16) = (
            fields[4].parse().expect("tcp.srcport"),
            fields[5].parse().expect("tcp.dstport"),
        );
        if dst_port == OPEN_PORT || dst_port == CLOSED_PORT {
            packets.entry((dst, src_port, dst_port)).or_insert((0, 0)).0 += 1;
        } else {
            packets.entry((src, dst_port, src_port)).or_insert((0, 0)).1 += 1;
        }
    }
    packets
}

/// Checks `records` against the client's record and tshark's counts;
/// returns each record's (server, client port, state, packets, history).
fn check(
    source: &str,
    records: &[Value],
    client: &ClientRecord,
    wire: &BTreeMap<WireKey, (u64, u64)>,
    tunnel: &Value,
) -> Vec<(String, u16, String, u64, u64, String)> {
    let (done, refused) = client;
    let mut seen = Vec::new();
    let mut refused_seen: BTreeMap<String, usize> = BTreeMap::new();
    for record in records {
        let server = record["id.resp_h"].as_str().expect("id.resp_h").to_string();
        let port = record["id.orig_p"].as_u64().expect("id.orig_p") as u16;
        let server_port = record["id.resp_p"].as_u64().expect("id.resp_p") as u16;
        let state = record["conn_state"].as_str().expect("conn_state");
        let packets = (
            record["orig_pkts"].as_u64().expect("orig_pkts"),
            record["resp_pkts"].as_u64().expect("resp_pkts"),
        );
        let kind = if server_port == CLOSED_PORT {
            *refused_seen.entry(server.clone()).or_default() += 1;
            Kind::Refused
        } else {
            *done
                .get(&(server.clone(), port))
                .unwrap_or_else(|| panic!("{source}: a record the client did not make: {record}"))
        };
        assert_eq!(state, kind.conn_state(), "{source} {kind:?}: {record}");
        assert_eq!(&record["tunnel"], tunnel, "{source} {kind:?}: {record}");
        assert_eq!(
            Some(&packets),
            wire.get(&(server.clone(), port, server_port)),
            "{source} {kind:?}: packets against tshark's: {record}"
        );
        seen.push((
            server,
            port,
            state.to_string(),
            packets.0,
            packets.1,
            record["history"].as_str().unwrap_or("").to_string(),
        ));
    }
    let open = seen.iter().filter(|record| record.2 != "REJ").count();
    assert_eq!(open, done.len(), "{source}: one record per connection");
    assert_eq!(&refused_seen, refused, "{source}: refused connects");
    seen.sort();
    seen
}

#[test]
fn connections_over_a_tun_device_are_recorded_live_and_replayed() {
    over_a_tun_link(false);
}

/// VXLAN over the tun link, as Cilium sends its overlay through a
/// WireGuard device: teardown on the server's tun device opens it (the
/// general way, from the packet's IP header) and records the inner
/// connections with their tunnel, as the replay of the capture does its
/// own way (the shortcut, behind the Ethernet header the replay puts in
/// front of each raw-IP packet).
#[test]
fn connections_inside_vxlan_over_a_tun_device_are_recorded_with_their_tunnel() {
    over_a_tun_link(true);
}

/// The overlay's addresses, on a VXLAN device over the tun link.
const OVERLAY_CLIENT_V4: &str = "203.0.113.1";
const OVERLAY_SERVER_V4: &str = "203.0.113.2";
const OVERLAY_CLIENT_V6: &str = "2001:db8:8::1";
const OVERLAY_SERVER_V6: &str = "2001:db8:8::2";
const VNI: u32 = 77;

/// The tun link, connections over it (or, with `vxlan`, over VXLAN over
/// it), and every record held to the client's record, tshark and the
/// replay.
fn over_a_tun_link(vxlan: bool) {
    let spaces = Namespaces::new();
    let pid = std::process::id() % 100_000;
    let tag = if vxlan { "v" } else { "" };
    let (client_if, server_if) = (format!("tdtc{tag}{pid}"), format!("tdts{tag}{pid}"));

    let client_fd = tun_device(
        &spaces.client,
        &client_if,
        CLIENT_V4,
        SERVER_V4,
        &format!("{CLIENT_V6}/64"),
    );
    let server_fd = tun_device(
        &spaces.server,
        &server_if,
        SERVER_V4,
        CLIENT_V4,
        &format!("{SERVER_V6}/64"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let wire_relay = relay(client_fd, server_fd, Arc::clone(&stop));
    let (servers, tunnel) = if vxlan {
        for (ns, local, remote, v4, v6) in [
            (
                &spaces.client,
                CLIENT_V4,
                SERVER_V4,
                OVERLAY_CLIENT_V4,
                OVERLAY_CLIENT_V6,
            ),
            (
                &spaces.server,
                SERVER_V4,
                CLIENT_V4,
                OVERLAY_SERVER_V4,
                OVERLAY_SERVER_V6,
            ),
        ] {
            vxlan_device(
                ns,
                "tdvx0",
                VNI,
                (local, remote),
                1400,
                &[format!("{v4}/24"), format!("{v6}/64")],
            )
            .unwrap_or_else(|err| panic!("the VXLAN device: {err}"));
        }
        // Every record starts at the client's SYN, sent from its end of
        // the tun link.
        let tunnel = serde_json::json!({
            "layers": ["vxlan"],
            "id": VNI,
            "outer_src": CLIENT_V4,
            "outer_dst": SERVER_V4,
        });
        ([OVERLAY_SERVER_V4, OVERLAY_SERVER_V6], tunnel)
    } else {
        ([SERVER_V4, SERVER_V6], Value::Null)
    };
    let dir = TempDir::new("ip-link");
    let capture = dir.join("server.pcap");
    let tcpdump = start_tcpdump_with(
        &spaces.server,
        &server_if,
        &capture,
        // Every header (tcpdump takes the last `-s`): the default 128
        // bytes cut an IPv6 SYN's options inside VXLAN short. Not whole
        // packets: with 256 KiB a slot, tcpdump's default buffer held
        // a few packets and the capture lost some.
        &["-s", "256"],
        "tcp or udp port 4789",
    );

    let (mut teardown, stderr) = start_teardown(&spaces.server, &server_if, &[]);
    let lines = JsonLines::watch(&mut teardown, stderr);

    let listeners = servers.map(|server| {
        in_netns(&spaces.server, move || {
            let listener = TcpListener::bind(SocketAddr::new(server.parse().unwrap(), OPEN_PORT))
                .expect("bind");
            thread::spawn(move || serve(listener, 2 * EACH))
        })
        .join()
        .expect("the listener thread")
    });
    let client_record = in_netns(&spaces.client, move || client(servers))
        .join()
        .expect("the client");
    for server in listeners {
        server.join().expect("a server thread");
    }
    // The close delay (5 s) passes before closed records are reported.
    thread::sleep(Duration::from_secs(6));
    let (values, _output, said) = lines.finish(teardown);
    thread::sleep(Duration::from_millis(200));
    let _ = tcpdump.terminate();
    stop.store(true, Ordering::Relaxed);
    let relayed = wire_relay.join().expect("the relay");
    eprintln!("relayed {relayed} packets; teardown said: {said}");
    let final_line = values
        .iter()
        .find(|value| value["event"] == "final")
        .expect("a final line");
    let live_records: Vec<Value> = values
        .iter()
        .filter(|value| value["event"] == "conn")
        .cloned()
        .collect();
    // Every packet read from its IP header: none taken for a frame of
    // another kind, none malformed.
    for counter in ["non_ip", "malformed"] {
        assert_eq!(final_line["totals"][counter], 0, "{counter}: {final_line}");
    }
    let wire = tshark_packets(&capture);
    if vxlan {
        // Every TCP segment tshark found inside VXLAN, opened and counted
        // as TCP inside; the overlay's ARP and neighbour discovery as
        // something else inside.
        // tshark's capture has both directions: the received counts
        // and the sent ones (`egress`) together.
        let (totals, sent) = (&final_line["totals"], &final_line["egress"]["totals"]);
        let both = |key: &str| totals[key].as_u64().unwrap() + sent[key].as_u64().unwrap();
        let segments: u64 = wire.values().map(|(to, from)| to + from).sum();
        assert_eq!(both("tunnelled_tcp"), segments, "{totals}; sent {sent}");
        assert_eq!(
            both("tunnel_vxlan"),
            both("tunnelled"),
            "{totals}; sent {sent}"
        );
    }

    let replayed = Command::new(teardown_bin())
        .args(["replay", "--connections", "--json"])
        .arg(&capture)
        .output()
        .expect("running teardown replay");
    assert!(
        replayed.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    // teardown's final figures in every live message: a segment given up
    // on a held slot (`lock_contended`) is in the tallies and not in its
    // record, which a packet count short of tshark's would then show.
    let live = check(
        &format!("live (teardown's final line: {final_line})"),
        &live_records,
        &client_record,
        &wire,
        &tunnel,
    );
    let replay = check(
        "replay",
        &conn_records(&replayed.stdout),
        &client_record,
        &wire,
        &tunnel,
    );
    eprintln!(
        "{} records live, {} replayed, every one as the client did and as tshark counted",
        live.len(),
        replay.len()
    );
    assert_eq!(live, replay, "live and replayed records differ");
    drop(spaces);
}

/// XDP reads from an Ethernet header: on a tun device teardown attaches at
/// TC (what `auto` chooses), and asked for native or generic XDP it says
/// so in one line and exits non-zero, attaching nothing.
#[test]
fn xdp_modes_on_a_tun_device_are_refused_in_one_line() {
    let spaces = Namespaces::new();
    let name = format!("tdtx{}", std::process::id() % 100_000);
    let _fd = tun_device(
        &spaces.server,
        &name,
        SERVER_V4,
        CLIENT_V4,
        &format!("{SERVER_V6}/64"),
    );
    for mode in ["native", "skb"] {
        let output = run_and_wait(&spaces.server, &name, mode);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--mode {mode} ran: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "teardown: error: interface {name} carries IP packets with no Ethernet header (a tun or WireGuard device), which teardown reads at TC only: use --mode tc or --mode auto, not --mode {mode}"
            ),
            "--mode {mode}"
        );
    }
    let links = run(Command::new("ip").args(["-n", &spaces.server, "-d", "link", "show", &name]));
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("xdp"),
        "an XDP program was left attached"
    );
}

/// `teardown run` on `iface` in `ns` with `--mode mode`, which is expected
/// to stop by itself (killed after 20 s if it does not).
fn run_and_wait(ns: &str, iface: &str, mode: &str) -> std::process::Output {
    Command::new("timeout")
        .args(["20", "ip", "netns", "exec", ns])
        .args([teardown_bin(), "run", "--iface", iface, "--mode", mode])
        .args(["--metrics-addr", "off"])
        .output()
        .expect("running teardown")
}

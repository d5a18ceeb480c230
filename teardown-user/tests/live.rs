//! Live: real kernel TCP between two namespaces, teardown attached with XDP.

mod support;

use std::{
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

#[derive(Clone, Copy, Debug)]
enum Close {
    /// Client sends a request and closes; the server reads to EOF, then closes.
    Graceful,
    /// Client closes with SO_LINGER 0 right after the handshake: one RST.
    Reset,
    /// Nobody listens: the server's kernel answers the SYN with a RST.
    Refused,
}

/// Accepts until told to stop; reads each connection to its end, then closes it.
fn serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                let mut sink = Vec::new();
                // EOF for graceful closes, ECONNRESET for resets: both end it.
                let _ = stream.read_to_end(&mut sink);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(err) => panic!("accept: {err}"),
        }
    }
}

fn client(server: &str, close: Close) {
    match close {
        Close::Graceful => {
            let mut stream = TcpStream::connect(socket_addr(server, OPEN_PORT)).expect("connect");
            stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            // Wait for the server's FIN so both FINs are on the wire.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).expect("read to EOF");
        }
        Close::Reset => {
            let stream = TcpStream::connect(socket_addr(server, OPEN_PORT)).expect("connect");
            set_linger_zero(stream.as_raw_fd());
            drop(stream);
        }
        Close::Refused => {
            let err = TcpStream::connect(socket_addr(server, CLOSED_PORT))
                .expect_err("connect to a closed port must fail");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        }
    }
}

fn counts(totals: &Value, key: &str) -> u64 {
    totals[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {totals}"))
}

#[test]
fn counters_equal_what_real_tcp_connections_sent() {
    let lab = Lab::new();
    // XDP sees ingress only: one teardown on each end sees each direction once.
    let (server_side, _server_err) =
        start_teardown(&lab.server_ns, &lab.server_if, &["--mode", "native"]);
    let (client_side, _client_err) =
        start_teardown(&lab.client_ns, &lab.client_if, &["--mode", "native"]);
    assert!(
        lab.link_details(&lab.server_ns, &lab.server_if)
            .contains("xdp")
    );

    // The judge: the kernel's own capture of the client end, both directions.
    let capture = std::env::temp_dir().join(format!("{}.pcap", lab.client_ns));
    let tcpdump = start_tcpdump(&lab.client_ns, &lab.client_if, &capture);

    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for address in [SERVER_V4, SERVER_V6] {
        let stop = stop.clone();
        let bind = socket_addr(address, OPEN_PORT);
        // Bound before any client connects (a listener bound in a thread
        // of its own raced the clients and was refused under load); the
        // socket stays in the server's namespace whatever thread serves it.
        let listener = listen_in(&lab.server_ns, bind);
        servers.push(std::thread::spawn(move || serve(listener, stop)));
    }

    let plan: &[(Close, usize)] = &[(Close::Graceful, 5), (Close::Reset, 3), (Close::Refused, 2)];
    let mut expected_client_to_server = [0u64; 4]; // syn, syn_ack, fin, rst
    let mut expected_server_to_client = [0u64; 4];
    for address in [SERVER_V4, SERVER_V6] {
        for &(close, times) in plan {
            let times = times as u64;
            expected_client_to_server[0] += times; // every connection starts with a SYN
            match close {
                Close::Graceful => {
                    expected_server_to_client[1] += times;
                    expected_client_to_server[2] += times;
                    expected_server_to_client[2] += times;
                }
                Close::Reset => {
                    expected_server_to_client[1] += times;
                    expected_client_to_server[3] += times;
                }
                Close::Refused => expected_server_to_client[3] += times,
            }
            let address = address.to_string();
            in_netns(&lab.client_ns, move || {
                for _ in 0..times {
                    client(&address, close);
                }
            })
            .join()
            .expect("client thread");
        }
    }
    // Let the last segments (final ACKs) cross, then stop everything.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for server in servers {
        server.join().expect("server thread");
    }
    let tcpdump_output = tcpdump.terminate();
    let server_totals = final_totals(&server_side.terminate());
    let client_totals = final_totals(&client_side.terminate());

    for (index, key) in ["syn", "syn_ack", "fin", "rst"].iter().enumerate() {
        assert_eq!(
            counts(&server_totals, key),
            expected_client_to_server[index],
            "{key} seen arriving at the server: {server_totals}"
        );
        assert_eq!(
            counts(&client_totals, key),
            expected_server_to_client[index],
            "{key} seen arriving at the client: {client_totals}"
        );
    }
    for totals in [&server_totals, &client_totals] {
        assert_eq!(counts(totals, "malformed"), 0, "{totals}");
        assert_eq!(
            counts(totals, "ipv4") + counts(totals, "ipv6") + counts(totals, "non_ip"),
            counts(totals, "packets")
        );
    }

    // Every TCP segment in the capture was counted by one side or the other.
    let judged = run(Command::new("python3")
        .arg(shared_dir().join("oracle/tshark_flag_counts.py"))
        .arg(&capture));
    let _ = std::fs::remove_file(&capture);
    let judged: Value = serde_json::from_slice(&judged.stdout).expect("oracle JSON");
    for key in ["tcp", "syn", "syn_ack", "fin", "rst"] {
        assert_eq!(
            counts(&server_totals, key) + counts(&client_totals, key),
            counts(&judged, key),
            "{key}: teardown (both ends) vs tshark on the capture; tcpdump said {}",
            String::from_utf8_lossy(&tcpdump_output.stderr)
        );
    }
}

#[test]
fn generic_mode_attaches_and_counts_too() {
    let lab = Lab::new();
    let (server_side, _err) = start_teardown(&lab.server_ns, &lab.server_if, &["--mode", "skb"]);
    assert!(
        lab.link_details(&lab.server_ns, &lab.server_if)
            .contains("xdpgeneric")
    );
    in_netns(&lab.client_ns, || {
        for _ in 0..3 {
            client(SERVER_V4, Close::Refused);
        }
    })
    .join()
    .expect("client thread");
    std::thread::sleep(Duration::from_millis(300));
    let totals = final_totals(&server_side.terminate());
    assert_eq!(counts(&totals, "syn"), 3, "{totals}");
    // Gone once teardown exits.
    assert!(
        !lab.link_details(&lab.server_ns, &lab.server_if)
            .contains("xdp")
    );
}

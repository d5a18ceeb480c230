//! The kernel's own reasons, provoked for real: the Linux TCP stack of a
//! server namespace resets connections for each reason we can make it
//! give (a closed port, a close with unread data, `SO_LINGER` 0, data after
//! a shutdown, data to a closed socket's time-wait remains, a keepalive
//! timeout) and drops handshakes on a full accept queue. teardown runs in
//! the server namespace; every record must carry the kernel's reason (and
//! the closing thread's name and pid where a process closed), its counts
//! must add up, and the handshake drops must equal what `nstat` reads.
//!
//! The judges: the kernel's tracepoint output in its own words would be
//! circular, so each case is judged by what the test did (it knows which
//! socket call it made) and, for the queue, by the namespace's own MIB
//! counters.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use serde_json::Value;
use support::*;

const CLOSED_PORT: u16 = 9201;
const UNREAD_PORT: u16 = 9202;
const LINGER_PORT: u16 = 9203;
const SHUTDOWN_PORT: u16 = 9204;
const TIME_WAIT_PORT: u16 = 9205;
const KEEPALIVE_PORT: u16 = 9206;
const BACKLOG_PORT: u16 = 9207;

/// Names the calling thread (the `comm` the kernel reports for it).
fn name_thread(name: &str) {
    let name = std::ffi::CString::new(name).expect("a name without NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_NAME: {}", std::io::Error::last_os_error());
}

fn set_int_option(fd: i32, level: i32, option: i32, value: i32) {
    // SAFETY: setsockopt reads one c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

fn listen(ns: &str, port: u16) -> TcpListener {
    let address = socket_addr(SERVER_V4, port);
    in_netns(ns, move || TcpListener::bind(address).expect("bind"))
        .join()
        .expect("binding in the server namespace")
}

fn connect(ns: &str, host: &'static str, port: u16) -> std::io::Result<TcpStream> {
    in_netns(ns, move || TcpStream::connect(socket_addr(host, port)))
        .join()
        .expect("connecting from the client namespace")
}

/// Runs `serve` on the next connection to `listener` in a thread named
/// `name` (the thread is already in the right namespace: the listener is).
fn serve(
    listener: TcpListener,
    name: &'static str,
    serve: impl FnOnce(TcpStream) + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        name_thread(name);
        let (stream, _) = listener.accept().expect("accept");
        serve(stream);
    })
}

#[test]
fn every_reset_carries_the_kernels_reason_and_the_process_behind_it() {
    let lab = Lab::new();
    let (server_ns, client_ns) = (lab.server_ns.clone(), lab.client_ns.clone());
    run(std::process::Command::new("ip").args([
        "netns",
        "exec",
        &server_ns,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_syncookies=0",
    ]));
    let (teardown, _stderr) = start_teardown(&server_ns, &lab.server_if, &[]);
    let pid = std::process::id();
    // Client sockets stay open until teardown has stopped: closing them
    // would make the server answer with resets of its own (NO_SOCKET).
    let mut kept = Vec::new();

    // A closed port, over IPv4 and IPv6: NO_SOCKET, sent in softirq.
    for host in [SERVER_V4, SERVER_V6] {
        let refused = connect(&client_ns, host, CLOSED_PORT).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    // Close with unread data: TCP_ABORT_ON_CLOSE, by the closing thread.
    let server = serve(listen(&server_ns, UNREAD_PORT), "td-unread", |stream| {
        let mut byte = [0u8; 1];
        stream.peek(&mut byte).expect("data arrives");
        drop(stream);
    });
    let mut client = connect(&client_ns, SERVER_V4, UNREAD_PORT).expect("connect");
    client.write_all(b"never read").expect("write");
    server.join().expect("unread server");
    kept.push(client);

    // SO_LINGER 0 with nothing unread: the close aborts.
    let server = serve(listen(&server_ns, LINGER_PORT), "td-linger", |stream| {
        set_linger_zero(stream.as_raw_fd());
        drop(stream);
    });
    let client = connect(&client_ns, SERVER_V4, LINGER_PORT).expect("connect");
    server.join().expect("linger server");
    kept.push(client);

    // The server shuts both directions (its socket stays open); data that
    // arrives after is answered with a reset, in softirq.
    let (shut_tx, shut_rx) = std::sync::mpsc::channel::<TcpStream>();
    let server = serve(
        listen(&server_ns, SHUTDOWN_PORT),
        "td-shutdown",
        move |stream| {
            stream.shutdown(Shutdown::Both).expect("shutdown");
            shut_tx.send(stream).expect("keeping the server socket");
        },
    );
    let mut client = connect(&client_ns, SERVER_V4, SHUTDOWN_PORT).expect("connect");
    server.join().expect("shutdown server");
    let held_server_socket = shut_rx.recv().expect("the server socket");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).expect("the server's FIN");
    thread::sleep(Duration::from_millis(100));
    let _ = client.write_all(b"too late");
    kept.push(client);

    // The server closes with nothing unread; its socket lives on as
    // time-wait remains (FIN_WAIT2), which reset data arriving after.
    let server = serve(listen(&server_ns, TIME_WAIT_PORT), "td-timewait", drop);
    let mut client = connect(&client_ns, SERVER_V4, TIME_WAIT_PORT).expect("connect");
    server.join().expect("time-wait server");
    client.read_to_end(&mut rest).expect("the server's FIN");
    thread::sleep(Duration::from_millis(100));
    let _ = client.write_all(b"too late");
    kept.push(client);

    // Keepalive with the peer gone silent (nft drops what the client
    // namespace receives from the port): the keepalive timer resets.
    let (alive_tx, alive_rx) = std::sync::mpsc::channel::<TcpStream>();
    let server = serve(
        listen(&server_ns, KEEPALIVE_PORT),
        "td-keepalive",
        move |stream| {
            let fd = stream.as_raw_fd();
            set_int_option(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
            set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1);
            set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1);
            set_int_option(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 1);
            alive_tx.send(stream).expect("keeping the server socket");
        },
    );
    let client = connect(&client_ns, SERVER_V4, KEEPALIVE_PORT).expect("connect");
    server.join().expect("keepalive server");
    let keepalive_socket = alive_rx.recv().expect("the server socket");
    nft(
        &client_ns,
        &format!(
            "table inet deaf {{\n  chain input {{\n    type filter hook input priority 0;\n    tcp sport {KEEPALIVE_PORT} drop\n  }}\n}}\n"
        ),
    );
    kept.push(client);

    // A listener with an accept queue of one that never accepts, SYN
    // cookies off: the burst's handshakes are dropped.
    let backlog = in_netns(&server_ns, || {
        let socket = TcpListener::bind(socket_addr(SERVER_V4, BACKLOG_PORT)).expect("bind");
        // SAFETY: listen(2) on a bound socket we own.
        let rc = unsafe { libc::listen(socket.as_raw_fd(), 1) };
        assert_eq!(rc, 0);
        socket
    })
    .join()
    .expect("the small listener");
    let burst = in_netns(&client_ns, || {
        (0..30)
            .map(|_| {
                let socket = socket2_nonblocking_connect(SERVER_V4, BACKLOG_PORT);
                thread::sleep(Duration::from_millis(5));
                socket
            })
            .collect::<Vec<_>>()
    })
    .join()
    .expect("the burst");
    thread::sleep(Duration::from_millis(300));
    // Closing a handshake in progress sends nothing: the counters stop.
    drop(burst);

    // The keepalive timer fires after 1 s idle and one unanswered probe.
    let keepalive_reset = wait_until(Duration::from_secs(10), || {
        tcp_sockets(&server_ns, KEEPALIVE_PORT).is_empty()
    });
    assert!(keepalive_reset, "the keepalive socket is still there");
    thread::sleep(Duration::from_millis(500));
    let output = teardown.terminate();
    let overflows = nstat(&server_ns, "TcpExtListenOverflows");
    let listen_drops = nstat(&server_ns, "TcpExtListenDrops");
    drop((kept, held_server_socket, keepalive_socket, backlog));

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("unavailable"),
        "the kernel's reasons were not watched: {stderr}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let records: Vec<&Value> = lines
        .iter()
        .filter(|line| line["event"] == "conn")
        .collect();
    let record = |host: &str, port: u16| -> &Value {
        let found: Vec<&&Value> = records
            .iter()
            .filter(|record| record["id.resp_p"] == port && record["id.resp_h"] == host)
            .collect();
        assert_eq!(found.len(), 1, "records to {host}:{port}: {found:?}");
        found[0]
    };
    let reasons = &lines
        .iter()
        .find(|line| line["event"] == "final")
        .expect("a final line")["kernel_reasons"];
    let expect = |host: &str, port: u16, reason: &str, thread: Option<&str>| {
        let record = record(host, port);
        assert_eq!(record["rst_reason"], reason, "{record}; {reasons}");
        match thread {
            Some(name) => {
                assert_eq!(record["comm"], name, "{record}");
                assert_eq!(record["pid"], pid, "{record}");
            }
            None => {
                assert!(record.get("pid").is_none(), "{record}");
                assert!(record.get("comm").is_none(), "{record}");
            }
        }
        assert!(
            record["rst_state"].is_string() || reason == "NO_SOCKET",
            "{record}"
        );
    };
    expect(SERVER_V4, CLOSED_PORT, "NO_SOCKET", None);
    expect(SERVER_V6, CLOSED_PORT, "NO_SOCKET", None);
    assert_eq!(record(SERVER_V4, CLOSED_PORT)["conn_state"], "REJ");
    expect(
        SERVER_V4,
        UNREAD_PORT,
        "TCP_ABORT_ON_CLOSE",
        Some("td-unread"),
    );
    expect(SERVER_V4, LINGER_PORT, "TCP_STATE", Some("td-linger"));
    expect(SERVER_V4, SHUTDOWN_PORT, "TCP_ABORT_ON_DATA", None);
    expect(SERVER_V4, TIME_WAIT_PORT, "TCP_TIMEWAIT_SOCKET", None);
    expect(SERVER_V4, KEEPALIVE_PORT, "TCP_KEEPALIVE_TIMEOUT", None);
    assert_eq!(record(SERVER_V4, UNREAD_PORT)["rst_state"], "CLOSE");

    // The counts: exactly these resets, every one claimed by its record.
    let sent: BTreeMap<String, u64> =
        serde_json::from_value(reasons["resets_sent"].clone()).expect("resets_sent");
    let expected: BTreeMap<String, u64> = [
        ("NO_SOCKET", 2),
        ("TCP_ABORT_ON_CLOSE", 1),
        ("TCP_STATE", 1),
        ("TCP_ABORT_ON_DATA", 1),
        ("TCP_TIMEWAIT_SOCKET", 1),
        ("TCP_KEEPALIVE_TIMEOUT", 1),
    ]
    .into_iter()
    .map(|(reason, count)| (reason.to_string(), count))
    .collect();
    assert_eq!(sent, expected, "{reasons}");
    assert_eq!(reasons["resets_watched"], true);
    assert_eq!(reasons["reset_events_lost"], 0, "{reasons}");
    assert_eq!(reasons["resets_unclaimed"], 0, "{reasons}");
    assert_eq!(
        reasons["resets_by_port"][CLOSED_PORT.to_string()]["NO_SOCKET"],
        2,
        "{reasons}"
    );
    assert_eq!(
        reasons["resets_by_port"][UNREAD_PORT.to_string()]["TCP_ABORT_ON_CLOSE"],
        1,
        "{reasons}"
    );

    // The handshakes the full queue dropped, as the namespace counts them.
    assert!(overflows > 0, "the burst overflowed nothing");
    assert_eq!(
        reasons["handshakes"]["listen_overflows"], overflows,
        "{reasons}"
    );
    assert_eq!(reasons["handshakes"]["syncookies_sent"], 0, "{reasons}");
    // And by listening port, from the listener's own count: all of the
    // namespace's drops were the small listener's.
    assert_eq!(
        reasons["listen_drops_by_port"][BACKLOG_PORT.to_string()],
        listen_drops,
        "{reasons}"
    );
    assert_eq!(reasons["listen_drops_by_port"]["other"], 0, "{reasons}");
}

/// A kernel without the tracepoint (stood in for by an empty tracefs):
/// one line says so, and the run goes on with the wire's reasons: the
/// refused connection's record has its `rst_cause` and no `rst_reason`.
#[test]
fn without_the_tracepoint_records_keep_the_wires_reasons() {
    let lab = Lab::new();
    let empty = TempDir::new("no-tracefs");
    let mut command = teardown_command(teardown_bin(), &lab.server_ns, &lab.server_if, &[]);
    command.env("TEARDOWN_TRACEFS", &empty.0);
    let (teardown, mut stderr) = start_teardown_command(command, &lab.server_if);
    let refused = connect(&lab.client_ns, SERVER_V4, CLOSED_PORT).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    thread::sleep(Duration::from_millis(300));
    let output = teardown.terminate();
    let mut said = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut said).expect("teardown's stderr");
    let unavailable: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("reset reasons are unavailable"))
        .collect();
    assert_eq!(unavailable.len(), 1, "{said}");
    assert!(
        unavailable[0].contains("no tcp:tcp_send_reset tracepoint")
            && unavailable[0].ends_with("records carry the wire's reasons only"),
        "{said}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let record = lines
        .iter()
        .find(|line| line["event"] == "conn" && line["id.resp_p"] == CLOSED_PORT)
        .unwrap_or_else(|| panic!("no record of the refused connection: {stdout}"));
    assert_eq!(record["rst_cause"], "refused", "{record}");
    assert!(record.get("rst_reason").is_none(), "{record}");
    let last = lines
        .iter()
        .find(|line| line["event"] == "final")
        .expect("a final line");
    assert_eq!(last["kernel_reasons"]["resets_watched"], false, "{last}");
}

/// Killed outright, teardown leaves nothing attached: its tracepoint link
/// is a file descriptor the kernel closes with the process, as are its XDP
/// and TC links.
#[test]
fn a_killed_run_leaves_nothing_attached() {
    let lab = Lab::new();
    let (mut teardown, _stderr) = start_teardown(&lab.server_ns, &lab.server_if, &[]);
    let child = teardown.child.take().expect("the child");
    let pid = child.id();
    // The programs behind teardown's links, from its descriptors' fdinfo.
    let mut linked = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo") {
        let info = std::fs::read_to_string(entry.expect("an fd").path()).unwrap_or_default();
        if info.contains("link_type:") {
            let program = info
                .lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse::<u64>().ok());
            linked.extend(program);
        }
    }
    let loaded = || -> std::collections::BTreeSet<u64> {
        let output = run(std::process::Command::new("bpftool").args(["prog", "show", "-j"]));
        let programs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        programs
            .iter()
            .filter_map(|program| program["id"].as_u64())
            .collect()
    };
    // The tracepoint, XDP and TC links.
    assert!(
        linked.len() >= 3,
        "teardown {pid} holds links to {linked:?}"
    );
    assert!(linked.is_subset(&loaded()), "{linked:?}");
    let mut child = child;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping teardown");
    // Programs are freed once their last link and descriptor are gone,
    // which the kernel does as the process's files close.
    let freed = wait_until(Duration::from_secs(5), || loaded().is_disjoint(&linked));
    assert!(
        freed,
        "programs outlived teardown: {:?}",
        linked.intersection(&loaded()).collect::<Vec<_>>()
    );
    let details = lab.link_details(&lab.server_ns, &lab.server_if);
    assert!(
        !details.contains("prog/xdp"),
        "XDP left attached: {details}"
    );
}

/// A non-blocking connect, left in progress.
fn socket2_nonblocking_connect(host: &str, port: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let address: std::net::Ipv4Addr = host.parse().expect("an IPv4 address");
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(address).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect(2) reads the sockaddr_in for its size.
    let rc = unsafe {
        libc::connect(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    let err = std::io::Error::last_os_error();
    assert!(
        rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
        "connect: {err}"
    );
    socket
}

/// The reset program's cost per reset, as the kernel's own statistics
/// measure it: `cargo xtask bench --resets`. Refused connections (a reset
/// each) at full speed for a few seconds, teardown on the server's side,
/// `kernel.bpf_stats_enabled` on for the run (restored after) and the
/// program's `run_time_ns / run_cnt` read with bpftool. Prints figures; it
/// asserts only that every reset ran the program.
#[test]
#[ignore = "a benchmark: cargo xtask bench --resets"]
fn reset_cost() {
    const RESETS: u64 = 20_000;
    let lab = Lab::new();
    // The release build (xtask sets TEARDOWN_BENCH_BIN): the test's own is
    // unoptimised, and its user space falls behind at this rate.
    let binary = std::env::var("TEARDOWN_BENCH_BIN").unwrap_or_else(|_| teardown_bin().to_string());
    let (teardown, _stderr) = start_teardown_from(&binary, &lab.server_ns, &lab.server_if, &[]);
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(stats).expect("reading bpf_stats_enabled");
    std::fs::write(stats, "1").expect("enabling BPF statistics");
    let program_stats = |name: &str| -> (u64, u64) {
        let output = run(std::process::Command::new("bpftool").args(["prog", "show", "-j"]));
        let programs: Vec<Value> = serde_json::from_slice(&output.stdout).expect("bpftool's JSON");
        programs
            .iter()
            .filter(|program| program["name"] == name)
            .map(|program| {
                (
                    program["run_time_ns"].as_u64().unwrap_or(0),
                    program["run_cnt"].as_u64().unwrap_or(0),
                )
            })
            .fold((0, 0), |(time, count), (t, c)| (time + t, count + c))
    };
    let (time_before, runs_before) = program_stats("teardown_reset");
    let started = std::time::Instant::now();
    in_netns(&lab.client_ns, || {
        for _ in 0..RESETS {
            let refused = TcpStream::connect(socket_addr(SERVER_V4, CLOSED_PORT));
            assert!(refused.is_err(), "port {CLOSED_PORT} must be closed");
        }
    })
    .join()
    .expect("the refused connections");
    let elapsed = started.elapsed().as_secs_f64();
    let (time_after, runs_after) = program_stats("teardown_reset");
    std::fs::write(stats, before.trim()).expect("restoring bpf_stats_enabled");
    let output = teardown.terminate();
    let runs = runs_after - runs_before;
    let time = time_after - time_before;
    println!(
        "resets: {RESETS} refused connections in {elapsed:.2} s ({:.0}/s); the reset program ran {runs} times, {:.0} ns per reset (kernel.bpf_stats_enabled=1, which adds ~15 ns of its own per run)",
        RESETS as f64 / elapsed,
        time as f64 / runs.max(1) as f64
    );
    assert!(runs >= RESETS, "{runs} program runs for {RESETS} resets");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["event"] == "final")
        .expect("a final line");
    let reasons = &last["kernel_reasons"];
    let flows = &last["flows"];
    println!(
        "resets: counted {} NO_SOCKET, events lost {}, unclaimed {}; records {} created, ended {}, flow events lost {}, evicted {}, failed inserts {}",
        reasons["resets_sent"]["NO_SOCKET"],
        reasons["reset_events_lost"],
        reasons["resets_unclaimed"],
        flows["created"],
        flows["ended_by_conn_state"],
        flows["events_lost"],
        flows["evicted"],
        flows["insert_failed"]
    );
    let claimed = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["event"] == "conn" && line["rst_reason"] == "NO_SOCKET")
        .count();
    println!("resets: {claimed} records carry NO_SOCKET");
    // When the refused connects come fast enough to raise the SYN-rate
    // alert, the ones after it are the flood's debris: counted into
    // flood_debris summaries, not written in full (`--flood-records`).
    let summarised = flows["records_summarised"].as_u64().unwrap_or(0);
    if summarised > 0 {
        println!(
            "resets: {summarised} more ended records came after a SYN-rate alert, as a flood's debris: counted into {} flood_debris summaries instead of written in full",
            flows["debris_summaries"]
        );
    }
    // TEARDOWN_BENCH_DUMP=FILE keeps teardown's output for a closer look.
    if let Some(dump) = std::env::var_os("TEARDOWN_BENCH_DUMP") {
        std::fs::write(dump, stdout.as_bytes()).expect("writing TEARDOWN_BENCH_DUMP");
    }
}

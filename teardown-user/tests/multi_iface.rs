//! Several interfaces in one run (`-i A -i B`): a server namespace with two
//! links, each to a client namespace of its own, and one teardown watching
//! both. Every record must name the interface its connection crossed, and
//! each interface's counters (JSON and Prometheus) must be exactly what its
//! own clients did; a run whose second interface cannot be attached must
//! leave nothing attached to the first.

mod support;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use support::*;

const OPEN_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;

/// One link of the server's: a client namespace, the veth pair's two ends
/// and their IPv4 addresses (documentation ranges, existing only in these
/// namespaces).
struct Link {
    client_ns: String,
    client_if: String,
    server_if: String,
    client_addr: &'static str,
    server_addr: &'static str,
}

/// The server's namespace and its links; every namespace is deleted when
/// dropped, even while a failing test unwinds (which detaches anything
/// attached in them).
struct Topology {
    server_ns: String,
    links: Vec<Link>,
    /// Namespaces created so far, deleted on drop.
    created: Vec<String>,
}

static NEXT_TOPOLOGY: AtomicUsize = AtomicUsize::new(0);

impl Topology {
    /// The server's namespace with a link to each of two clients: `a`
    /// (192.0.2.0/24) and `b` (198.51.100.0/24).
    fn new() -> Topology {
        // Named `td-<role>-<pid>-<n>`, so `cargo xtask test` sweeps the
        // namespaces of a run that was killed outright.
        let pid = std::process::id();
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", pid % 100_000);
        let mut topology = Topology {
            server_ns: format!("td-mis-{pid}-{n}"),
            links: Vec::new(),
            created: Vec::new(),
        };
        topology.add_namespace(&topology.server_ns.clone());
        for (side, client_addr, server_addr) in [
            ("a", "192.0.2.1", "192.0.2.2"),
            ("b", "198.51.100.1", "198.51.100.2"),
        ] {
            let link = Link {
                client_ns: format!("td-mi{side}-{pid}-{n}"),
                client_if: format!("tdc{side}{id}"),
                server_if: format!("tds{side}{id}"),
                client_addr,
                server_addr,
            };
            topology.add_namespace(&link.client_ns);
            topology.join(&link);
            topology.links.push(link);
        }
        topology
    }

    fn add_namespace(&mut self, ns: &str) {
        lab::ip(&["netns", "add", ns]).unwrap_or_else(|err| panic!("{err}"));
        self.created.push(ns.to_string());
    }

    /// The veth pair of `link`, made in the client's namespace with its
    /// peer in the server's, addressed and up.
    fn join(&self, link: &Link) {
        let ip = |args: &[&str]| lab::ip(args).unwrap_or_else(|err| panic!("{err}"));
        ip(&[
            "-n",
            &link.client_ns,
            "link",
            "add",
            &link.client_if,
            "type",
            "veth",
            "peer",
            "name",
            &link.server_if,
            "netns",
            &self.server_ns,
        ]);
        for (ns, iface, addr) in [
            (&link.client_ns, &link.client_if, link.client_addr),
            (&self.server_ns, &link.server_if, link.server_addr),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", iface]);
            ip(&["-n", ns, "link", "set", iface, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
    }

    /// `teardown run` in the server's namespace with `args`, to completion.
    fn teardown(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.server_ns, teardown_bin(), "run"])
            .args(args)
            .output()
            .expect("starting teardown")
    }

    /// What is attached to the server's interface `iface`: XDP per `ip
    /// link`, and every program `bpftool net` lists (XDP, tc, TCX).
    fn attachments(&self, iface: &str) -> Vec<String> {
        let link = run(Command::new("ip").args([
            "-n",
            &self.server_ns,
            "-d",
            "link",
            "show",
            "dev",
            iface,
        ]));
        let mut found: Vec<String> = String::from_utf8_lossy(&link.stdout)
            .lines()
            .filter(|line| line.contains("xdp") || line.contains("prog/"))
            .map(str::to_string)
            .collect();
        let net = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.server_ns,
            "bpftool",
            "net",
            "show",
            "dev",
            iface,
        ]));
        found.extend(
            String::from_utf8_lossy(&net.stdout)
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.ends_with(':'))
                .map(str::to_string),
        );
        found
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Close {
    /// The client sends a request and half-closes; the server reads to
    /// EOF and closes: `SF graceful`.
    Graceful,
    /// The client closes with SO_LINGER 0 after the handshake: `RSTO abort`.
    Reset,
    /// Nothing listens: the server's kernel answers with a RST: `REJ refused`.
    Refused,
}

impl Close {
    /// The record's `conn_state` and `close`.
    fn verdict(self) -> (&'static str, &'static str) {
        match self {
            Close::Graceful => ("SF", "graceful"),
            Close::Reset => ("RSTO", "abort"),
            Close::Refused => ("REJ", "refused"),
        }
    }
}

/// Accepts until told to stop; reads each connection to its end, then
/// closes it.
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
                thread::sleep(Duration::from_millis(5))
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
            // The server's FIN, so both FINs are on the wire.
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

/// What each link's clients do: (close, how many times).
type Plan = &'static [(Close, u64)];

const PLANS: [Plan; 2] = [
    &[(Close::Graceful, 3), (Close::Reset, 2), (Close::Refused, 1)],
    &[(Close::Graceful, 2), (Close::Reset, 1), (Close::Refused, 2)],
];

/// The segments a plan puts on the server's interface, as (direction,
/// flag) -> count: `in` arrived from the client, `out` the server sent.
fn expected_segments(plan: Plan) -> BTreeMap<(&'static str, &'static str), u64> {
    let mut segments = BTreeMap::new();
    for &(close, times) in plan {
        let mut add = |direction, flag| *segments.entry((direction, flag)).or_insert(0) += times;
        add("in", "syn");
        match close {
            Close::Graceful => {
                add("out", "syn_ack");
                add("in", "fin");
                add("out", "fin");
            }
            Close::Reset => {
                add("out", "syn_ack");
                add("in", "rst");
            }
            Close::Refused => add("out", "rst"),
        }
    }
    for direction in ["in", "out"] {
        for flag in ["syn", "syn_ack", "fin", "rst"] {
            segments.entry((direction, flag)).or_insert(0);
        }
    }
    segments
}

/// The records a plan ends, by (conn_state, close).
fn expected_records(plan: Plan) -> BTreeMap<(String, String), u64> {
    let mut records = BTreeMap::new();
    for &(close, times) in plan {
        let (state, kind) = close.verdict();
        *records
            .entry((state.to_string(), kind.to_string()))
            .or_insert(0) += times;
    }
    records
}

/// The value of the sample `series` (name and labels, as served) in a
/// scrape.
fn sample(scrape: &str, series: &str) -> Option<u64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn several_interfaces_in_one_run_each_counted_and_attributed() {
    let topology = Topology::new();
    let [a, b] = &topology.links[..] else {
        unreachable!("two links")
    };
    let stop = Arc::new(AtomicBool::new(false));
    // One listener for both links, bound before any client connects.
    let listener = listen_in(&topology.server_ns, socket_addr("0.0.0.0", OPEN_PORT));
    let server = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || serve(listener, stop))
    };

    let mut child = Command::new("ip")
        .args(["netns", "exec", &topology.server_ns, teardown_bin(), "run"])
        .args(["-i", &a.server_if, "--iface", &b.server_if])
        .args([
            "--json",
            "--interval",
            "100ms",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting teardown run");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut teardown = ChildGuard::new(child);
    let mut said = Vec::new();
    let mut metrics_addr = None;
    while metrics_addr.is_none() {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("teardown's stderr") == 0 {
            panic!("teardown stopped before serving its metrics: {said:?}");
        }
        metrics_addr = line
            .trim()
            .strip_prefix("teardown: Prometheus metrics at http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .map(str::to_string);
        said.push(line);
    }
    // Both interfaces, on the one line that says the run started.
    assert_eq!(
        said[0].trim(),
        format!(
            "teardown: watching {}, {} (TC ingress + TC egress), every 100ms; Ctrl-C to stop",
            a.server_if, b.server_if
        ),
        "{said:?}"
    );
    let lines = JsonLines::watch(&mut teardown, stderr);

    let clients: Vec<_> = topology
        .links
        .iter()
        .zip(PLANS)
        .map(|(link, plan)| {
            let server_addr = link.server_addr;
            in_netns(&link.client_ns, move || {
                for &(close, times) in plan {
                    for _ in 0..times {
                        client(server_addr, close);
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread panicked");
    }

    // Every record out (a reset's waits out its close delay): the stats
    // line counts them, per interface too.
    let total: u64 = PLANS
        .iter()
        .flat_map(|plan| plan.iter())
        .map(|(_, n)| n)
        .sum();
    let all_ended = |stats: &Value| {
        stats["event"] == "stats"
            && stats["flows"]["ended_by_close"]
                .as_object()
                .is_some_and(|by| by.values().filter_map(Value::as_u64).sum::<u64>() == total)
    };
    let stats = lines
        .wait_for(Duration::from_secs(30), all_ended)
        .unwrap_or_else(|| panic!("not every record ended: {:?}", lines.latest_flows()));
    let interfaces = stats["interfaces"].as_array().expect("stats per interface");
    assert_eq!(interfaces.len(), 2, "{stats}");

    // Prometheus: each interface's counters under its label.
    thread::sleep(Duration::from_millis(300));
    let metrics = scrape_metrics(
        &topology.server_ns,
        &metrics_addr.expect("the metrics address"),
    );
    for (link, plan) in topology.links.iter().zip(PLANS) {
        let iface = &link.server_if;
        for ((direction, flag), count) in expected_segments(plan) {
            let series = format!(
                "teardown_tcp_flag_segments_total{{iface=\"{iface}\",direction=\"{direction}\",flag=\"{flag}\"}}"
            );
            assert_eq!(
                sample(&metrics, &series),
                Some(count),
                "{series}\n{metrics}"
            );
        }
        let records = expected_records(plan);
        for close in ["graceful", "abort", "refused", "half_open", "idle"] {
            let series = format!(
                "teardown_connections_ended_by_close_total{{iface=\"{iface}\",close=\"{close}\"}}"
            );
            let expected: u64 = records
                .iter()
                .filter(|((_, kind), _)| kind == close)
                .map(|(_, count)| count)
                .sum();
            assert_eq!(
                sample(&metrics, &series),
                Some(expected),
                "{series}\n{metrics}"
            );
        }
        let series = format!("teardown_flow_table_capacity{{iface=\"{iface}\"}}");
        assert_eq!(sample(&metrics, &series), Some(131_072), "{series}");
        let series = format!("teardown_interface_info{{iface=\"{iface}\",direction=\"both\"}}");
        assert_eq!(sample(&metrics, &series), Some(1), "{series}");
    }

    // Nothing arrives from elsewhere now: stop everything.
    stop.store(true, Ordering::SeqCst);
    server.join().expect("the server thread panicked");
    let (values, output, stderr) = lines.finish(teardown);
    assert!(output.status.success(), "{output:?}; {stderr}");
    assert!(
        stderr.contains(&format!(
            "teardown: detached from {}, {}",
            a.server_if, b.server_if
        )),
        "{stderr}"
    );

    // Each record names the interface its connection crossed: the
    // addresses of that link's client and server, and exactly that
    // link's connections.
    let mut records: BTreeMap<String, BTreeMap<(String, String), u64>> = BTreeMap::new();
    for record in values.iter().filter(|value| value["event"] == "conn") {
        let iface = record["iface"]
            .as_str()
            .unwrap_or_else(|| panic!("a record without its interface: {record}"));
        let link = topology
            .links
            .iter()
            .find(|link| link.server_if == iface)
            .unwrap_or_else(|| panic!("a record on an unknown interface: {record}"));
        assert_eq!(record["id.orig_h"], link.client_addr, "{record}");
        assert_eq!(record["id.resp_h"], link.server_addr, "{record}");
        let verdict = (
            record["conn_state"].as_str().unwrap_or("-").to_string(),
            record["close"].as_str().unwrap_or("-").to_string(),
        );
        *records
            .entry(iface.to_string())
            .or_default()
            .entry(verdict)
            .or_insert(0) += 1;
    }
    for (link, plan) in topology.links.iter().zip(PLANS) {
        assert_eq!(
            records.get(&link.server_if),
            Some(&expected_records(plan)),
            "records on {}: {records:?}",
            link.server_if
        );
    }

    // The final line: each interface's totals, and their sum at the top.
    let last = values
        .iter()
        .find(|value| value["event"] == "final")
        .expect("a final line");
    let per_interface = last["interfaces"].as_array().expect("final per interface");
    assert_eq!(per_interface.len(), 2, "{last}");
    for ((link, plan), figures) in topology.links.iter().zip(PLANS).zip(per_interface) {
        assert_eq!(figures["iface"], link.server_if.as_str(), "{last}");
        for ((direction, flag), count) in expected_segments(plan) {
            let totals = match direction {
                "in" => &figures["totals"],
                _ => &figures["egress"]["totals"],
            };
            assert_eq!(
                totals[flag], count,
                "{direction} {flag} on {}: {last}",
                link.server_if
            );
        }
        let ended: u64 = plan.iter().map(|(_, n)| n).sum();
        let by_close = figures["flows"]["ended_by_close"]
            .as_object()
            .expect("ended_by_close");
        assert_eq!(
            by_close.values().filter_map(Value::as_u64).sum::<u64>(),
            ended,
            "{last}"
        );
    }
    for flag in ["syn", "syn_ack", "fin", "rst", "tcp", "packets"] {
        let sum: u64 = per_interface
            .iter()
            .map(|figures| figures["totals"][flag].as_u64().expect("a count"))
            .sum();
        assert_eq!(last["totals"][flag], sum, "{flag}: {last}");
    }

    // And nothing is left attached.
    for link in &topology.links {
        assert_eq!(topology.attachments(&link.server_if), Vec::<String>::new());
    }
}

/// Asserts a failed run with exactly one line on stderr containing every
/// `needle`.
fn assert_one_line_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
}

/// The second interface cannot be attached (another XDP program holds
/// it): one line, a failure, and the first interface, attached a moment
/// before, is detached again, XDP and TC both.
#[test]
fn a_failed_attach_on_the_second_interface_leaves_the_first_untouched() {
    let topology = Topology::new();
    let [a, b] = &topology.links[..] else {
        unreachable!("two links")
    };
    let (holder, _holder_err) = start_teardown(
        &topology.server_ns,
        &b.server_if,
        &["--mode", "native", "--metrics-addr", "off"],
    );
    let held = topology.attachments(&b.server_if);
    assert!(!held.is_empty(), "the first teardown attached nothing");

    // Native XDP asked, as the holder's: `auto` would attach at TC
    // ingress on a veth, where programs do not exclude each other.
    let output = topology.teardown(&[
        "-i",
        &a.server_if,
        "-i",
        &b.server_if,
        "--mode",
        "native",
        "--metrics-addr",
        "off",
    ]);
    assert_one_line_error(
        &output,
        &["already has an XDP program attached", &b.server_if],
    );
    assert_eq!(topology.attachments(&a.server_if), Vec::<String>::new());
    // The other program is left as it was, and still counting.
    assert_eq!(topology.attachments(&b.server_if), held);
    let output = holder.terminate();
    assert!(output.status.success(), "{output:?}");
}

/// Interfaces checked before anything is loaded: one that does not exist,
/// or one named twice under two names (an altname), is one line and a
/// failure, with nothing attached to the others.
#[test]
fn a_missing_or_repeated_interface_fails_before_attaching_any() {
    let topology = Topology::new();
    let [a, _] = &topology.links[..] else {
        unreachable!("two links")
    };
    let output = topology.teardown(&["-i", &a.server_if, "-i", "nosuchif0"]);
    assert_one_line_error(
        &output,
        &["no network interface named \"nosuchif0\"", "ip link"],
    );

    let altname = format!("{}x", a.server_if);
    run(Command::new("ip").args([
        "-n",
        &topology.server_ns,
        "link",
        "property",
        "add",
        "dev",
        &a.server_if,
        "altname",
        &altname,
    ]));
    let output = topology.teardown(&["-i", &a.server_if, "-i", &altname]);
    assert_one_line_error(&output, &["same interface", &altname, "name it once"]);

    let output = topology.teardown(&["-i", &a.server_if, "--iface", &a.server_if]);
    assert_one_line_error(&output, &["given twice", "teardown --help"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(topology.attachments(&a.server_if), Vec::<String>::new());
}

//! Prometheus: a real Prometheus server (Debian package `prometheus`) scrapes
//! teardown's `/metrics`, and its query API returns teardown's SYN count.
//!
//! teardown, Prometheus and the listening side all run in the lab's server
//! namespace, talking over that namespace's own loopback: fixed ports cannot
//! collide with anything on the host (including a system Prometheus service,
//! which the Debian package starts where systemd runs), and Prometheus keeps
//! its data in a temporary directory removed afterwards.

mod support;

use std::{
    fs::File,
    io::{BufRead, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

const METRICS_PORT: u16 = 9464;
const PROMETHEUS_PORT: u16 = 9090;
const OPEN_PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;
const GRACEFUL: usize = 5;
const REFUSED: usize = 3;
const SYN_QUERY: &str = "teardown_tcp_flag_segments_total{direction=\"in\",flag=\"syn\"}";
/// What the server answered with a SYN-ACK (TC egress).
const SYN_ACK_OUT_QUERY: &str =
    "teardown_tcp_flag_segments_total{direction=\"out\",flag=\"syn_ack\"}";
/// docs/metrics.md's example query: SYNs in that the server did not answer with a
/// SYN-ACK (here, the refused connections).
const UNANSWERED_QUERY: &str = "teardown_tcp_flag_segments_total{direction=\"in\",flag=\"syn\"} - ignoring(direction, flag) teardown_tcp_flag_segments_total{direction=\"out\",flag=\"syn_ack\"}";
/// Generous: Prometheus starts, then scrapes once a second.
const PATIENCE: Duration = Duration::from_secs(120);

/// `GET target` from 127.0.0.1:`port` inside `ns`: the status and body, or
/// why there is none yet.
fn http_get(ns: &str, port: u16, target: &str) -> Result<(u16, String), String> {
    let request = format!("GET {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    in_netns(ns, move || {
        let mut stream = TcpStream::connect(socket_addr("127.0.0.1", port))
            .map_err(|err| format!("connecting to port {port}: {err}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|err| err.to_string())?;
        stream
            .write_all(request.as_bytes())
            .map_err(|err| format!("sending to port {port}: {err}"))?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|err| format!("reading from port {port}: {err}"))?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP response head: {response:?}"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no HTTP status: {head:?}"))?;
        Ok((status, body.to_string()))
    })
    .join()
    .expect("HTTP client thread")
}

/// The value of an instant query's single series, or why there is none yet.
fn query(ns: &str, promql: &str) -> Result<f64, String> {
    let (status, body) = http_get(ns, PROMETHEUS_PORT, &prometheus::query_target(promql, None))?;
    prometheus::single_value(status, &body)
}

/// The sample line for `sample` (name and labels) in an exposition text.
fn sample_line<'a>(exposition: &'a str, sample: &str) -> Option<&'a str> {
    exposition.lines().find(|line| {
        line.rsplit_once(' ')
            .is_some_and(|(name, _)| name == sample)
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn prometheus_scrapes_the_syn_counter() {
    // Dropped last to first: processes, then files, then namespaces.
    let lab = Lab::new();
    let dir = TempDir::new(&format!("teardown-prometheus-{}", lab.server_ns));

    // teardown on the server's end of the link, serving metrics on the
    // namespace's loopback. Its JSON goes to a file, so a full pipe never
    // stalls its loop while the test waits.
    let teardown_out = dir.join("teardown.jsonl");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, teardown_bin(), "run"])
        .args(["--iface", &lab.server_if, "--json", "--interval", "1s"])
        .args(["--metrics-addr", &format!("127.0.0.1:{METRICS_PORT}")])
        .stdout(File::create(&teardown_out).expect("creating teardown's output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting teardown run");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
    let teardown = ChildGuard::new(child);
    // The start, then (after any notes on the kernel's reset reasons) where
    // the metrics are.
    let mut said = Vec::new();
    for expected in [
        "watching".to_string(),
        format!("metrics at http://127.0.0.1:{METRICS_PORT}/metrics"),
    ] {
        loop {
            let mut line = String::new();
            stderr
                .read_line(&mut line)
                .expect("reading teardown's stderr");
            said.push(line.clone());
            if line.contains(&expected) {
                break;
            }
            assert!(
                !line.is_empty() && line.starts_with("teardown: ") && said.len() > 1,
                "teardown did not say {expected:?}: {said:?}"
            );
        }
    }
    // Answering already, with the SYN counter at 0.
    let (status, exposition) = http_get(&lab.server_ns, METRICS_PORT, "/metrics")
        .unwrap_or_else(|err| panic!("teardown's metrics endpoint: {err}"));
    assert_eq!(status, 200, "{exposition}");
    assert_eq!(
        sample_line(&exposition, SYN_QUERY),
        Some(&*format!("{SYN_QUERY} 0"))
    );
    assert_eq!(
        sample_line(&exposition, SYN_ACK_OUT_QUERY),
        Some(&*format!("{SYN_ACK_OUT_QUERY} 0"))
    );

    // A real Prometheus, scraping every second.
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: teardown\n    static_configs:\n      - targets: ['127.0.0.1:{METRICS_PORT}']\n"
        ),
    )
    .expect("writing the Prometheus configuration");
    let prometheus_log = dir.join("prometheus.log");
    let log = File::create(&prometheus_log).expect("creating the Prometheus log");
    let prometheus = ChildGuard::new(
        Command::new("ip")
            .args(["netns", "exec", &lab.server_ns, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("starting prometheus (Debian package prometheus; cargo xtask test installs it): {err}")
            }),
    );

    // Connections: each starts with one SYN from the client, which XDP on the
    // server's end sees arrive.
    let listener = in_netns(&lab.server_ns, || {
        TcpListener::bind(socket_addr(SERVER_V4, OPEN_PORT)).expect("bind")
    })
    .join()
    .expect("listener thread");
    let server = std::thread::spawn(move || {
        for _ in 0..GRACEFUL {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
    });
    in_netns(&lab.client_ns, || {
        for _ in 0..GRACEFUL {
            let mut stream =
                TcpStream::connect(socket_addr(SERVER_V4, OPEN_PORT)).expect("connect");
            stream.write_all(b"hello").expect("write");
            stream.shutdown(Shutdown::Write).expect("shutdown");
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).expect("read to EOF");
        }
        for _ in 0..REFUSED {
            let err = TcpStream::connect(socket_addr(SERVER_V4, CLOSED_PORT))
                .expect_err("connect to a closed port must fail");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        }
    })
    .join()
    .expect("client thread");
    server.join().expect("server thread");
    let sent_syns = (GRACEFUL + REFUSED) as f64;

    // Ask Prometheus until its latest scrape has them all.
    let deadline = Instant::now() + PATIENCE;
    let scraped = loop {
        let answer = query(&lab.server_ns, SYN_QUERY);
        if answer == Ok(sent_syns) {
            break sent_syns;
        }
        if Instant::now() > deadline {
            let exposition = http_get(&lab.server_ns, METRICS_PORT, "/metrics").map(|(_, body)| {
                sample_line(&body, SYN_QUERY)
                    .unwrap_or("no SYN sample")
                    .to_string()
            });
            panic!(
                "Prometheus did not report {SYN_QUERY} = {sent_syns} within {PATIENCE:?}: last answer {answer:?}; \
                 up = {:?}; teardown serves {exposition:?}; Prometheus log:\n{}",
                query(&lab.server_ns, "up{job=\"teardown\"}"),
                tail(&prometheus_log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // SYNs in less SYN-ACKs out: the refused connections (answered by RST).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = query(&lab.server_ns, UNANSWERED_QUERY);
        if answer == Ok(REFUSED as f64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not report {UNANSWERED_QUERY} = {REFUSED}: last answer {answer:?}; SYN-ACKs out {:?}",
            query(&lab.server_ns, SYN_ACK_OUT_QUERY)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(prometheus);

    // teardown's own count, as it prints it, agrees.
    let output = teardown.terminate();
    assert!(output.status.success(), "teardown run: {}", output.status);
    let printed = std::fs::read_to_string(&teardown_out).expect("reading teardown's output");
    let last = printed
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|value| value["event"] == "final")
        .unwrap_or_else(|| panic!("no final totals in teardown's output: {printed}"));
    let totals = &last["totals"];
    assert_eq!(
        totals["syn"].as_f64(),
        Some(scraped),
        "teardown printed {totals}, Prometheus scraped {scraped}"
    );
    assert_eq!(
        last["egress"]["totals"]["syn_ack"].as_u64(),
        Some(GRACEFUL as u64),
        "SYN-ACKs sent: {last}"
    );
}

//! Bounded output and memory under a port-sweeping SYN flood, live.
//!
//! SYNs to thousands of distinct destination ports, left unanswered (the
//! server's namespace drops them after teardown's XDP program has seen
//! them), time out half-open on thousands of ports. teardown's stats lines
//! must stay under a fixed size (the busiest ports and `other`, not one
//! entry per port), its Prometheus family by port must stay a bounded label
//! set, the per-port counts must still add up to every timeout, and its
//! resident memory must not grow with the number of ports.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::Value;
use support::*;

/// Ports teardown lists by name (teardown-user/src/tracker.rs,
/// `HALF_OPEN_PORTS_LISTED`); everything else is in `other`.
const PORTS_LISTED: usize = 32;

/// The most a stats line may take. Without the ports a line is about 3 KB
/// (counters and rates both ways, flows, alerts); the ports add at most 33
/// entries of at most 30 bytes (`"65535":` and a 20-digit count), about
/// 1 KB. 16 KB leaves room for the other fields to grow, and is still 30
/// times less than the 500 KB and more that one entry per port made after
/// such a sweep.
const MAX_STATS_LINE: usize = 16 * 1024;

/// How much teardown's resident memory may grow over the flood: generous,
/// as the allocator keeps what it once used (a poll's records, the flow
/// table's pages as they are touched); one entry per port cost more than
/// this (34 MB after a 5 s sweep at full speed).
const MAX_RSS_GROWTH_KB: u64 = 20 * 1024;

/// Where teardown serves Prometheus inside the server's namespace (its own
/// loopback, not the host's; not the default port, which other tests use).
const METRICS_PORT: u16 = 19464;

/// The flow table's size: small, so the memory the table itself costs (its
/// pages, the records of one poll) stays small beside the bound.
const MAX_FLOWS: &str = "8192";

/// How long the sweep lasts, and how fast it goes: 20 000 SYNs/s (one every
/// 50 µs) is far more new ports than the table holds, without taking the
/// machine's cores from everything else.
const SWEEP: Duration = Duration::from_secs(4);
const SWEEP_INTERVAL: &str = "u50";

/// What the test keeps of teardown's stdout: sizes, and the latest stats
/// line (a sweep's connection records and, on a teardown without bounds,
/// its half-megabyte lines are not kept).
#[derive(Default)]
struct Seen {
    stats_lines: usize,
    longest_stats_line: usize,
    conn_lines: usize,
    /// Connection records closed out for their SYN timeout: what the
    /// half-open timeouts by port count.
    syn_timeout_records: u64,
    last_stats: Option<Value>,
    last_final: Option<Value>,
}

/// The kilobytes of resident memory of process `pid`.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The values of `teardown_half_open_timeouts_total` in one scrape, as
/// (port label, count).
fn scrape_half_open_timeouts(netns: &str) -> Vec<(String, u64)> {
    let text = in_netns(netns, || {
        let mut stream =
            TcpStream::connect(("127.0.0.1", METRICS_PORT)).expect("connecting to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("asking for /metrics");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("reading /metrics");
        response
    })
    .join()
    .expect("the scrape thread panicked");
    text.lines()
        .filter_map(|line| line.strip_prefix("teardown_half_open_timeouts_total{port=\""))
        .map(|rest| {
            let (port, value) = rest
                .split_once("\"} ")
                .unwrap_or_else(|| panic!("a sample: {rest:?}"));
            (port.to_string(), value.parse().expect("a count"))
        })
        .collect()
}

/// The sum of a `half_open_timeouts_by_port` object's values.
fn sum_of(by_port: &Value) -> u64 {
    by_port
        .as_object()
        .map(|ports| ports.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

#[test]
fn a_port_sweep_keeps_stats_lines_and_memory_bounded() {
    let lab = Lab::new();
    // The server never answers: SYNs from the link are dropped after XDP
    // (ingress) has seen them, so each one's record times out half-open.
    // (Loopback is spared: the test scrapes the metrics through it.)
    nft(
        &lab.server_ns,
        &format!(
            "table inet td_bounds {{\n  chain input {{\n    type filter hook input priority 0;\n    iifname \"{}\" tcp flags & (syn | ack) == syn drop\n  }}\n}}\n",
            lab.server_if
        ),
    );
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    let (mut teardown, mut stderr) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &[
            "--syn-timeout",
            "1s",
            "--max-flows",
            MAX_FLOWS,
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    // `ip netns exec` execs teardown: the child's pid is teardown's.
    let pid = teardown.child.as_ref().expect("teardown is running").id();
    let stdout = teardown
        .child
        .as_mut()
        .expect("teardown is running")
        .stdout
        .take()
        .expect("stdout piped");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let seen = Arc::clone(&seen);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut seen = seen.lock().expect("seen lock");
                if line.contains("\"event\":\"conn\"") {
                    seen.conn_lines += 1;
                    if line.contains("\"end_reason\":\"syn_timeout\"") {
                        seen.syn_timeout_records += 1;
                    }
                } else if line.contains("\"event\":\"stats\"") {
                    seen.stats_lines += 1;
                    seen.longest_stats_line = seen.longest_stats_line.max(line.len());
                    seen.last_stats = serde_json::from_str(&line).ok();
                } else if line.contains("\"event\":\"final\"") {
                    seen.longest_stats_line = seen.longest_stats_line.max(line.len());
                    seen.last_final = serde_json::from_str(&line).ok();
                }
            }
        })
    };
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    // Resident memory before the sweep: once teardown has settled.
    thread::sleep(Duration::from_secs(1));
    let rss_before = rss_kb(pid).expect("teardown's VmRSS");
    let rss_peak = Arc::new(Mutex::new(rss_before));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (rss_peak, sampling) = (Arc::clone(&rss_peak), Arc::clone(&sampling));
        thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(rss) = rss_kb(pid) {
                    let mut peak = rss_peak.lock().expect("peak lock");
                    *peak = (*peak).max(rss);
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // The sweep: SYNs from the client to the server, each to the next
    // destination port (hping3's `++`), from port 1 up and round again.
    let hping = ChildGuard::new(
        Command::new("ip")
            .args(["netns", "exec", &lab.client_ns, "hping3", "-S"])
            .args(["-i", SWEEP_INTERVAL, "-p", "++1", SERVER_V4])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting hping3 (Debian package hping3)"),
    );
    thread::sleep(SWEEP);
    drop(hping);

    // Every record of the sweep times out (1 s, and 2 s of grace when the
    // kernel leaves it to user space): wait until nothing is tracked.
    let settled = wait_until(Duration::from_secs(20), || {
        let seen = seen.lock().expect("seen lock");
        seen.last_stats
            .as_ref()
            .is_some_and(|stats| stats["flows"]["tracked"] == 0 && stats["flows"]["half_open"] == 0)
    });
    // A few more report intervals, through which the counts stand still.
    thread::sleep(Duration::from_secs(1));
    let scraped = scrape_half_open_timeouts(&lab.server_ns);
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().expect("the memory sampler panicked");
    let rss_after = rss_kb(pid).expect("teardown's VmRSS after the sweep");
    let rss_peak = *rss_peak.lock().expect("peak lock");
    let output = teardown.terminate();
    reader.join().expect("the stdout reader panicked");
    let stderr = stderr_reader.join().expect("the stderr reader panicked");
    assert!(
        output.status.success(),
        "teardown failed ({}): {stderr}",
        output.status
    );
    let seen = std::mem::take(&mut *seen.lock().expect("seen lock"));
    // The final line comes after every record: its counts are the run's.
    let last = seen
        .last_final
        .unwrap_or_else(|| panic!("no final line; stderr: {stderr}"));
    let flows = &last["flows"];
    let timeouts = seen.syn_timeout_records;
    eprintln!(
        "bounds: {timeouts} half-open timeouts (records ended by syn_timeout), {} connection records; {} stats lines, the longest {} bytes; VmRSS {rss_before} kB before the sweep, {rss_peak} kB at most, {rss_after} kB after (settled: {settled})",
        seen.conn_lines, seen.stats_lines, seen.longest_stats_line
    );

    // The premise: thousands of half-open timeouts (each on a port of its
    // own, as the sweep sends to each port once per round).
    assert!(
        timeouts >= 5000,
        "the sweep must time out half-open thousands of times: {timeouts}; flows {flows}"
    );

    // Output bounded by the number of ports listed, not by the ports seen.
    assert!(
        seen.longest_stats_line < MAX_STATS_LINE,
        "a stats line took {} bytes (at most {MAX_STATS_LINE}): one entry per port?",
        seen.longest_stats_line
    );
    // Memory bounded likewise.
    let growth = rss_peak.saturating_sub(rss_before);
    assert!(
        growth < MAX_RSS_GROWTH_KB,
        "teardown's resident memory grew by {growth} kB over the sweep ({rss_before} kB to {rss_peak} kB), at most {MAX_RSS_GROWTH_KB} kB"
    );

    assert!(
        settled,
        "records still tracked 20 s after the sweep: {}",
        flows
    );

    // Nothing hidden: the listed ports and `other` add up to every timeout.
    let by_port = &flows["half_open_timeouts_by_port"];
    let listed = by_port.as_object().map_or(0, |ports| ports.len());
    assert!(
        listed <= PORTS_LISTED + 1 && by_port.get("other").is_some(),
        "at most {PORTS_LISTED} ports and other: {by_port}"
    );
    assert_eq!(
        sum_of(by_port),
        timeouts,
        "the ports' counts add up to the records that timed out half-open: {flows}"
    );
    let folded = flows["half_open_timeout_ports_folded"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        folded + (listed as u64) >= 5000,
        "thousands of ports came and went in the list: {folded} folded; {flows}"
    );
    // The last stats line, once everything had timed out, said the same.
    let stats_flows = &seen
        .last_stats
        .unwrap_or_else(|| panic!("no stats line; stderr: {stderr}"))["flows"];
    assert_eq!(
        sum_of(&stats_flows["half_open_timeouts_by_port"]),
        timeouts,
        "{stats_flows}"
    );

    // Prometheus: a bounded label set, summing to the same total.
    assert!(
        scraped.len() <= PORTS_LISTED + 1 && scraped.iter().any(|(port, _)| port == "other"),
        "at most {PORTS_LISTED} ports and other: {scraped:?}"
    );
    let scraped_sum: u64 = scraped.iter().map(|(_, count)| count).sum();
    assert_eq!(
        scraped_sum, timeouts,
        "Prometheus' per-port timeouts against the stats': {scraped:?}"
    );
}

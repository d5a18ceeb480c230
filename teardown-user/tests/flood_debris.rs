//! Flood debris, summarised (issue 16 part 2), live: a random-source SYN
//! flood (hping3) at a real listener, and a canary connection set up, used
//! and closed gracefully while the flood's alert is active.
//!
//! With the default `--flood-records summary`, the flood's one-sided
//! records go out as `flood_debris` summaries, one per target and report
//! interval, and:
//! * the canary still gets its full record (`SF`, graceful);
//! * the summaries' counts add up: each summary's `by_conn_state` and
//!   `by_close` sum to its `records`; all summaries sum to the final
//!   `flows.records_summarised`; and the summarised records plus the full
//!   records written make every record teardown ended, state by state
//!   (`flows.ended_by_conn_state`, counted from the kernel's records);
//! * output is bounded by the number of intervals, not by the flood: at
//!   most one summary per target per interval (plus the last one at exit),
//!   and almost no full one-sided record to the target.

mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use serde_json::Value;
use support::*;

const FLOOD_PORT: u16 = 9300;

fn events<'a>(lines: &'a [Value], event: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    lines.iter().filter(move |value| value["event"] == event)
}

fn counts(object: &Value) -> BTreeMap<String, u64> {
    object
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(key, value)| (key.clone(), value.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// The server's counters that say where a handshake went under the flood:
/// cookies sent, taken and refused, accept-queue overflows, drops.
fn listen_counters(ns: &str) -> String {
    [
        "TcpExtSyncookiesSent",
        "TcpExtSyncookiesRecv",
        "TcpExtSyncookiesFailed",
        "TcpExtListenOverflows",
        "TcpExtListenDrops",
        "TcpExtTCPReqQFullDrop",
    ]
    .map(|counter| format!("{counter} {}", nstat(ns, counter)))
    .join(", ")
}

/// Sends `message` from `writer` and reads it on `reader`.
fn send(writer: &mut TcpStream, reader: &mut TcpStream, message: &[u8]) {
    writer.write_all(message).expect("canary write");
    let mut got = vec![0u8; message.len()];
    reader.read_exact(&mut got).expect("canary read");
    assert_eq!(got, message);
}

#[test]
fn a_floods_debris_is_summarised_and_the_canary_keeps_its_record() {
    let lab = Lab::new();
    // The server answers the spoofed sources (with SYN cookies, once its
    // SYN queue is full) through the client, which drops them.
    lab.route_server_replies_via(CLIENT_V4)
        .expect("routing the server's replies through the client");
    let server = socket_addr(SERVER_V4, FLOOD_PORT);
    let listener = listen_in(&lab.server_ns, server);
    let (mut teardown, stderr) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &[
            "--mode",
            "native",
            "--syn-timeout",
            "2s",
            "--idle-timeout",
            "3s",
            "--alert-quiet",
            "1s",
        ],
    );
    let watched = JsonLines::watch(&mut teardown, stderr);
    let target = format!("{SERVER_V4}:{FLOOD_PORT}");

    let port = FLOOD_PORT.to_string();
    let hping = ChildGuard::new(
        Command::new("ip")
            .args(["netns", "exec", &lab.client_ns, "hping3", "-S", "--flood"])
            .args(["--rand-source", "-p", &port, SERVER_V4])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting hping3 (Debian package hping3)"),
    );
    let started = watched.wait_for(Duration::from_secs(5), |value| {
        value["event"] == "syn_flood" && value["target"] == target && value["phase"] == "start"
    });
    assert!(
        started.is_some(),
        "no alert for {target} within 5 s of the flood"
    );

    // The canary, during the alert: handshake, a line each way, a graceful
    // close by the client.
    // Its handshake crosses the flood: the host answers with a SYN cookie,
    // and the client's last ACK, sent once and never again, can be lost
    // among the flood's packets (on a slower machine, often), leaving the
    // client connected and nothing to accept. So the client writes its
    // first line at once: TCP sends that segment again until it is
    // acknowledged, and it carries the ACK that validates the cookie. The
    // accept waits 20 s, which covers six retransmissions; a canary still
    // not accepted is replaced (3 tries), with the server's counters
    // printed to say where it went.
    const FIRST_LINE: &[u8] = b"canary in the flood";
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let (mut client, mut server_end) = 'tries: {
        for attempt in 1..=3 {
            let mut client = in_netns(&lab.client_ns, move || {
                TcpStream::connect_timeout(&server, Duration::from_secs(10))
                    .expect("canary connect")
            })
            .join()
            .expect("the canary thread panicked");
            client.write_all(FIRST_LINE).expect("canary write");
            let me = client.local_addr().expect("canary address");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                match listener.accept() {
                    // An earlier try's, completed late: not this canary.
                    Ok((_, peer)) if peer != me => {}
                    Ok((server_end, _)) => {
                        server_end
                            .set_nonblocking(false)
                            .expect("blocking canary socket");
                        break 'tries (client, server_end);
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(err) => panic!("canary accept: {err}"),
                }
            }
            eprintln!(
                "flood_debris: canary try {attempt}: not accepted in 20 s; the server's \
                 counters: {}",
                listen_counters(&lab.server_ns)
            );
            // Given up with a reset: its record (the server never saw the
            // handshake end) is the flood's debris, in a state a summary
            // may hold (RSTO), not a graceful close.
            set_linger_zero(std::os::fd::AsRawFd::as_raw_fd(&client));
            drop(client);
        }
        panic!("no canary accepted in 3 tries during the flood");
    };
    for end in [&client, &server_end] {
        end.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
    }
    let canary = client.local_addr().expect("canary address");
    let mut first_line = vec![0u8; FIRST_LINE.len()];
    server_end
        .read_exact(&mut first_line)
        .expect("the canary's first line");
    assert_eq!(first_line, FIRST_LINE);
    send(&mut server_end, &mut client, b"still here");
    client.shutdown(Shutdown::Write).expect("canary close");
    let mut rest = Vec::new();
    server_end.read_to_end(&mut rest).expect("canary EOF");
    drop(server_end);
    client.read_to_end(&mut rest).expect("the server's FIN");
    drop(client);

    thread::sleep(Duration::from_secs(3));
    drop(hping); // killed: the flood stops
    // The alert ends (1 s quiet), then the flood's last records: half-open
    // ones after 2 s, unanswered SYN-ACKs after 3 s idle, plus the kernel's
    // 2 s grace; the canary's 5 s after its close.
    let ended = watched.wait_for(Duration::from_secs(15), |value| {
        value["event"] == "syn_flood" && value["target"] == target && value["phase"] == "end"
    });
    thread::sleep(Duration::from_secs(7));
    let (lines, _output, stderr) = watched.finish(teardown);
    drop(listener);
    assert!(ended.is_some(), "the alert did not end; stderr: {stderr}");

    let last = events(&lines, "final")
        .next()
        .unwrap_or_else(|| panic!("no final line; stderr: {stderr}"));
    let flows = &last["flows"];
    let stats_lines = events(&lines, "stats").count() as u64;

    // The canary's full record.
    let canary_records: Vec<&Value> = events(&lines, "conn")
        .filter(|value| {
            value["id.orig_h"] == canary.ip().to_string() && value["id.orig_p"] == canary.port()
        })
        .collect();
    assert_eq!(
        canary_records.len(),
        1,
        "the canary {canary}: {canary_records:#?}"
    );
    let record = canary_records[0];
    assert_eq!(
        (record["conn_state"].as_str(), record["close"].as_str()),
        (Some("SF"), Some("graceful")),
        "{record}"
    );

    // The summaries: each adds up.
    let summaries: Vec<&Value> = events(&lines, "flood_debris").collect();
    assert!(
        !summaries.is_empty(),
        "no flood_debris summary; stderr: {stderr}"
    );
    let mut summarised = 0;
    let mut summarised_by_state: BTreeMap<String, u64> = BTreeMap::new();
    for summary in &summaries {
        assert_eq!(summary["target"], target.as_str(), "{summary}");
        let records = summary["records"].as_u64().expect("records");
        assert!(records > 0, "{summary}");
        let by_state = counts(&summary["by_conn_state"]);
        assert_eq!(by_state.values().sum::<u64>(), records, "{summary}");
        assert_eq!(
            counts(&summary["by_close"]).values().sum::<u64>(),
            records,
            "{summary}"
        );
        for state in by_state.keys() {
            assert!(
                [
                    "S0", "S1", "REJ", "OTH", "SH", "SHR", "RSTOS0", "RSTRH", "RSTR", "RSTO"
                ]
                .contains(&state.as_str()),
                "one-sided states only: {summary}"
            );
        }
        assert!(summary["distinct_sources"].as_u64().is_some(), "{summary}");
        assert_eq!(
            summary["top_sources"],
            Value::Array(vec![]),
            "spoofed: {summary}"
        );
        summarised += records;
        for (state, count) in by_state {
            *summarised_by_state.entry(state).or_default() += count;
        }
    }
    assert!(
        summarised > 1000,
        "a flood's debris: only {summarised} records summarised"
    );
    assert!(
        summaries
            .iter()
            .any(|summary| summary["alert_active"] == true)
    );
    assert_eq!(
        flows["records_summarised"].as_u64(),
        Some(summarised),
        "{flows}"
    );
    assert_eq!(
        flows["debris_summaries"].as_u64(),
        Some(summaries.len() as u64),
        "{flows}"
    );

    // Summarised plus written in full: every record ended, state by state.
    let mut written_by_state: BTreeMap<String, u64> = BTreeMap::new();
    for record in events(&lines, "conn") {
        let state = record["conn_state"]
            .as_str()
            .expect("conn_state")
            .to_string();
        *written_by_state.entry(state).or_default() += 1;
    }
    let ended_by_state = counts(&flows["ended_by_conn_state"]);
    let mut states: Vec<&String> = ended_by_state
        .keys()
        .chain(written_by_state.keys())
        .chain(summarised_by_state.keys())
        .collect();
    states.sort();
    states.dedup();
    for state in states {
        let written = written_by_state.get(state).copied().unwrap_or(0);
        let folded = summarised_by_state.get(state).copied().unwrap_or(0);
        assert_eq!(
            written + folded,
            ended_by_state.get(state).copied().unwrap_or(0),
            "{state}: {written} written + {folded} summarised against the records ended: {flows}"
        );
    }
    let ended_total: u64 = counts(&flows["ended_by_close"]).values().sum();
    let written = events(&lines, "conn").count() as u64;
    assert_eq!(written + summarised, ended_total, "{flows}");

    // Bounded: at most one summary per report interval (one target), and
    // the one at exit. Full one-sided records to or from the target are
    // the few that began outside the alert: the server's retransmitted
    // SYN-ACKs to the spoofed sources still in its SYN queue after the
    // alert ended (64 here), bounded by the queue, not by the flood.
    let one_sided_written = events(&lines, "conn")
        .filter(|value| {
            let target_side = |side: &str| {
                value[format!("id.{side}_h").as_str()] == SERVER_V4
                    && value[format!("id.{side}_p").as_str()] == FLOOD_PORT
            };
            (target_side("resp") || target_side("orig")) && *value != record
        })
        .count() as u64;
    let summary_bytes: usize = summaries
        .iter()
        .map(|summary| summary.to_string().len() + 1)
        .sum();
    let widest = summaries
        .iter()
        .map(|summary| summary.to_string().len())
        .max()
        .unwrap_or(0);
    eprintln!(
        "flood debris: {summarised} records in {} summaries ({summary_bytes} bytes, widest {widest}) over {stats_lines} intervals; {written} full records, {one_sided_written} of them one-sided to the target; ended {ended_total}",
        summaries.len()
    );
    assert!(
        summaries.len() as u64 <= stats_lines + 1,
        "{} summaries for {stats_lines} intervals",
        summaries.len()
    );
    assert!(widest < 2048, "a summary line of {widest} bytes");
    assert!(
        one_sided_written * 100 <= summarised,
        "{one_sided_written} one-sided records to {target} written in full, {summarised} summarised"
    );
}

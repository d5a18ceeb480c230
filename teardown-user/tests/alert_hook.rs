//! `--on-alert CMD`: a burst of refused connections (every SYN answered by
//! a RST, so no handshake completes) over a low `--syn-rate-floor` starts a
//! SYN-flood alert, which updates and ends. The hook writes its stdin to a
//! file of its own and then hangs: every alert event must reach a hook with
//! the very JSON teardown printed (start and end among them), each hanging
//! hook must be killed (with what it started) after `--on-alert-timeout`
//! and counted in `lines_lost.alert_hook`, and the stats lines must keep
//! their 100 ms pace meanwhile.

mod support;

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    JsonLines, Lab, SERVER_V4, TempDir, in_netns, socket_addr, start_teardown, wait_until,
};

const CLOSED_PORT: u16 = 8099;

/// Processes of process group `group` that are not zombies, from `/proc`.
fn live_in_group(group: i32) -> Vec<String> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so split
        // after its closing parenthesis.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == group.to_string() && fields[0] != "Z" {
            live.push(stat);
        }
    }
    live
}

#[test]
fn the_hook_gets_every_alert_event_and_a_hanging_one_delays_nothing() {
    let lab = Lab::new();
    let dir = TempDir::new("teardown-alert-hook");
    // `$$` is the hook's shell, the leader of its process group: the test
    // checks below that the group is gone.
    let hook = format!(
        "f=$(mktemp {}/event.XXXXXX); echo $$ > \"$f.pid\"; cat > \"$f\"; sleep 30",
        dir.0.display()
    );
    let (mut teardown, stderr) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &[
            "--syn-rate-floor",
            "50",
            "--alert-quiet",
            "1s",
            "--alert-update",
            "500ms",
            "--on-alert",
            &hook,
            "--on-alert-timeout",
            "1s",
        ],
    );
    let lines = JsonLines::watch(&mut teardown, stderr);

    // Refused connections for 1.5 s: a SYN and a RST each.
    let refused = in_netns(&lab.client_ns, || {
        let server = socket_addr(SERVER_V4, CLOSED_PORT);
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < Duration::from_millis(1500) {
            let _ = TcpStream::connect(server);
            count += 1;
            // About 500/s, ten times the floor: enough, without starving
            // teardown of CPU on a small machine.
            std::thread::sleep(Duration::from_millis(1));
        }
        count
    })
    .join()
    .expect("the client");
    let burst_over = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(refused > 200, "only {refused} connections refused");

    let target = format!("{SERVER_V4}:{CLOSED_PORT}");
    let is_end = |value: &Value| value["event"] == "syn_flood" && value["phase"] == "end";
    assert!(
        lines.wait_for(Duration::from_secs(10), is_end).is_some(),
        "no alert ended within 10 s of the burst"
    );
    // The end event's hook hangs too: it is killed after a second.
    std::thread::sleep(Duration::from_millis(1500));
    let (values, output, stderr) = lines.finish(teardown);
    assert!(output.status.success(), "teardown failed: {stderr}");

    let events: Vec<&Value> = values
        .iter()
        .filter(|value| value["event"] == "syn_flood")
        .collect();
    // The destination's alert (and perhaps the all-destinations one, `*`).
    let phases: Vec<(&str, &str)> = events
        .iter()
        .map(|event| {
            (
                event["target"].as_str().unwrap_or("?"),
                event["phase"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    for phase in ["start", "end"] {
        assert!(
            phases.contains(&(target.as_str(), phase)),
            "no {phase} for {target}: {phases:?}"
        );
    }
    assert!(
        phases
            .iter()
            .all(|(alerted, _)| *alerted == target || *alerted == "*"),
        "{phases:?}"
    );

    // Every event reached a hook, as printed.
    let mut received: Vec<Value> = Vec::new();
    let mut groups = Vec::new();
    for entry in std::fs::read_dir(&dir.0).expect("the hooks' directory") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("a hook's file");
        if path.extension().is_some_and(|ext| ext == "pid") {
            groups.push(text.trim().parse::<i32>().expect("a pid"));
        } else {
            assert_eq!(text.lines().count(), 1, "one line per hook: {text:?}");
            received.push(serde_json::from_str(&text).expect("the event's JSON"));
        }
    }
    assert_eq!(received.len(), events.len(), "{received:#?}");
    for event in &events {
        assert!(
            received.contains(event),
            "no hook got {event}: {received:#?}"
        );
    }

    // Every hook hung and was killed, with its sleep: counted, and gone.
    let last = values.last().expect("the final line");
    assert_eq!(last["event"], "final");
    assert_eq!(
        last["lines_lost"]["alert_hook"],
        events.len() as u64,
        "{last}"
    );
    assert!(stderr.contains("alert hook"), "said on stderr: {stderr}");
    assert_eq!(groups.len(), events.len());
    for group in groups {
        // Killed processes may stay zombies a moment, until init reaps
        // them: only live ones count.
        let gone = wait_until(Duration::from_secs(3), || live_in_group(group).is_empty());
        assert!(
            gone,
            "the hook's process group {group} is still running: {:?}",
            live_in_group(group)
        );
    }

    // Stats lines kept their pace while hooks hung (from the burst's end,
    // which took CPU, to the exit): a loop that waited for a hook would
    // show a gap of at least the hook's timeout, 1 s.
    let stats: Vec<f64> = values
        .iter()
        .filter(|value| value["event"] == "stats")
        .filter_map(|value| value["ts"].as_f64())
        .filter(|ts| *ts > burst_over)
        .collect();
    let widest = stats
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .fold(0.0, f64::max);
    let times: Vec<String> = values
        .iter()
        .map(|value| format!("{} {}", value["event"], value["ts"]))
        .collect();
    assert!(stats.len() > 10, "{} stats lines: {times:#?}", stats.len());
    assert!(
        widest < 0.9,
        "a gap of {widest:.3} s between stats lines: {times:#?}"
    );
}

//! Bad input: one line on stderr that says what to do, a non-zero exit, and no
//! harm done to anything already running.

mod support;

use std::{
    process::{Command, Output},
    time::Duration,
};

use support::*;

fn teardown(args: &[&str]) -> Output {
    Command::new(teardown_bin())
        .args(args)
        .output()
        .expect("starting teardown")
}

/// Asserts a failed run with exactly one line on stderr containing every `needle`.
fn assert_one_line_error(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected failure, got {}: {stderr}",
        output.status
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line on stderr, got: {stderr:?}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_interface() {
    let output = teardown(&["run", "--iface", "nosuchif0"]);
    assert_one_line_error(
        &output,
        &["no network interface named \"nosuchif0\"", "ip link"],
    );
}

/// Interfaces are all looked up before anything is loaded: a missing one
/// among several is one line, whichever it is.
#[test]
fn unknown_interface_among_several() {
    for args in [
        &["run", "-i", "lo", "-i", "nosuchif0"][..],
        &["run", "-i", "nosuchif0", "-i", "lo"][..],
    ] {
        let output = teardown(args);
        assert_one_line_error(
            &output,
            &["no network interface named \"nosuchif0\"", "ip link"],
        );
    }
}

#[test]
fn unreadable_and_non_capture_files_are_named_and_the_rest_still_replayed() {
    let shared = shared_dir();
    let good = shared.join("corpus/zeek/traces/opt.basic.pcap");
    let not_capture =
        std::env::temp_dir().join(format!("teardown-not-a-capture-{}", std::process::id()));
    std::fs::write(&not_capture, b"this is not a capture file at all").expect("writing temp file");
    let output = Command::new(teardown_bin())
        .args(["replay", "--json", "/nonexistent/capture.pcap"])
        .arg(&good)
        .arg(&not_capture)
        .output()
        .expect("starting teardown");
    let _ = std::fs::remove_file(&not_capture);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one line per unreadable file: {stderr:?}");
    assert!(lines[0].contains("/nonexistent/capture.pcap") && lines[0].contains("No such file"));
    assert!(
        lines[1].contains(&not_capture.display().to_string())
            && lines[1].contains("not a pcap or pcapng file")
    );
    // The good file between them was still replayed.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(records.len(), 1, "{stdout}");
    assert_eq!(records[0]["file"], good.display().to_string());
    assert_eq!(records[0]["frames"], 136);
}

#[test]
fn bad_flag_values() {
    for (args, needle) in [
        (
            &["run", "--iface", "lo", "--interval", "0"][..],
            "--interval",
        ),
        (
            &["run", "--iface", "lo", "--interval", "soon"][..],
            "not a duration",
        ),
        (&["run", "--iface", "lo", "--mode", "turbo"][..], "--mode"),
        (
            &["run", "--iface", "lo", "--flood-records", "some"][..],
            "--flood-records",
        ),
        (
            &["run", "--iface", "lo", "--metrics-addr", "localhost"][..],
            "--metrics-addr",
        ),
        (
            &["run", "--iface", "lo", "--metrics-addr", "example.com:9464"][..],
            "HOST:PORT",
        ),
        (&["run", "--iface", "lo", "--ipfix", "4739"][..], "--ipfix"),
        (
            &["run", "--iface", "lo", "--on-alert", " "][..],
            "--on-alert",
        ),
        (
            &["run", "--iface", "lo", "--on-alert-timeout", "5s"][..],
            "--on-alert",
        ),
        (
            &["run", "--iface", "lo", "--ipfix", "127.0.0.1:0"][..],
            "HOST:PORT",
        ),
        (
            &["run", "--iface", "lo", "--plain", "--json"][..],
            "cannot be used with",
        ),
        (
            &["run", "--iface", "lo", "--vxlan-port", "0"][..],
            "--vxlan-port",
        ),
        (
            &["run", "--iface", "lo", "--geneve-port", "70000"][..],
            "--geneve-port",
        ),
        (
            &[
                "run",
                "--iface",
                "lo",
                "--vxlan-port",
                "4789",
                "--geneve-port",
                "4789",
            ][..],
            "both VXLAN (--vxlan-port",
        ),
        (
            &[
                "replay",
                "--vxlan-port",
                "1",
                "--vxlan-port",
                "2",
                "--vxlan-port",
                "3",
                "--vxlan-port",
                "4",
                "--vxlan-port",
                "5",
                "x.pcap",
            ][..],
            "at most 4",
        ),
        (
            &["replay", "--no-tunnels", "--geneve-port", "6082", "x.pcap"][..],
            "cannot be used with",
        ),
        (&["bench", "--repeat", "0"][..], "--repeat"),
        (&["run"][..], "--iface"),
        (&["replay"][..], "FILES"),
        // The conventions of issue 15: short flags, human durations, `:PORT`.
        (&["run", "-i", "lo", "-m", "turbo"][..], "--mode"),
        (
            &["run", "-i", "lo", "-j", "--plain"][..],
            "cannot be used with",
        ),
        (
            &["run", "-i", "lo", "--interval", "1m30"][..],
            "not a duration",
        ),
        (
            &["run", "-i", "lo", "--interval", "1h1s"][..],
            "out of range",
        ),
        (
            &["run", "-i", "lo", "--idle-timeout", "2days"][..],
            "out of range",
        ),
        (
            &["run", "-i", "lo", "--syn-timeout", "5 parsecs"][..],
            "not a duration",
        ),
        (
            &["run", "-i", "lo", "--alert-quiet", "1min30"][..],
            "--alert-quiet",
        ),
        (&["run", "-i", "lo", "--metrics-addr", ":"][..], "HOST:PORT"),
        (
            &["run", "-i", "lo", "--metrics-addr", ":http"][..],
            "HOST:PORT",
        ),
        (
            &["run", "-i", "lo", "--metrics-addr", ":70000"][..],
            "HOST:PORT",
        ),
        // Several interfaces (-i repeated): each named once, each a name
        // the kernel could have.
        (&["run", "-i", "lo", "-i", "lo"][..], "given twice"),
        (
            &["run", "-i", "lo", "--iface", "eth0", "-i", "lo"][..],
            "--iface lo is given twice",
        ),
        (&["run", "-i", ""][..], "not an interface name"),
        (
            &["run", "-i", "lo", "-i", "sixteen-bytes-xx"][..],
            "not an interface name",
        ),
        (&["run", "-i", "eth0:1"][..], "not an interface name"),
        (
            &["run", "-i", "lo", "-i", "a/b"][..],
            "not an interface name",
        ),
        (&["run", "-i", ".."][..], "not an interface name"),
        (&["completions", "tcsh"][..], "possible values"),
        (&["completions"][..], "SHELL"),
    ] {
        let output = teardown(args);
        assert_one_line_error(&output, &[needle, "teardown --help"]);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

/// The conventional spellings parse: the run gets as far as the interface.
#[test]
fn short_flags_human_durations_and_every_address_parse() {
    let output = teardown(&[
        "run",
        "-i",
        "nosuchif0",
        "-m",
        "skb",
        "-j",
        "--interval",
        "1m30s",
        "--syn-timeout",
        "90sec",
        "--idle-timeout",
        "1h 30min",
        "--alert-quiet",
        "1min",
        "--metrics-addr",
        ":0",
    ]);
    assert_one_line_error(&output, &["no network interface named \"nosuchif0\""]);
    let output = teardown(&["replay", "-j", "/nonexistent/capture.pcap"]);
    assert_one_line_error(&output, &["/nonexistent/capture.pcap"]);
}

#[test]
fn version_and_completions() {
    for flag in ["--version", "-V"] {
        let output = teardown(&[flag]);
        assert!(output.status.success(), "{flag}: {}", output.status);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            format!("teardown {}", env!("CARGO_PKG_VERSION"))
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let output = teardown(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {}", output.status);
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(
            script.contains("metrics-addr") && script.contains("replay"),
            "{shell}: {script}"
        );
    }
}

#[test]
fn missing_privileges() {
    let shared = shared_dir();
    let capture = shared.join("corpus/zeek/traces/opt.basic.pcap");
    // As nobody, with no capabilities: loading eBPF must be refused, politely.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(teardown_bin())
        .arg("replay")
        .arg(&capture)
        .output()
        .expect("starting setpriv");
    assert_one_line_error(&output, &["permission denied", "root"]);
}

#[test]
fn interface_with_an_xdp_program_already_attached_is_left_alone() {
    let lab = Lab::new();
    let (first, _first_err) = start_teardown(&lab.server_ns, &lab.server_if, &["--mode", "native"]);
    let before = lab.link_details(&lab.server_ns, &lab.server_if);
    assert!(before.contains("prog/xdp"), "{before}");

    // Not `auto`: on a veth it attaches at TC ingress, beside any XDP
    // program (below).
    for mode in ["native", "skb"] {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.server_ns,
                teardown_bin(),
                "run",
                "--iface",
            ])
            .args([&lab.server_if, "--mode", mode])
            // The first teardown holds the namespace's metrics port.
            .args(["--metrics-addr", "off"])
            .output()
            .expect("starting teardown");
        assert_one_line_error(
            &output,
            &["already has an XDP program attached", "left in place"],
        );
        // The first program is still attached, unchanged.
        assert_eq!(
            lab.link_details(&lab.server_ns, &lab.server_if),
            before,
            "mode {mode}"
        );
    }

    // At TC ingress (`auto` on a veth, or `tc`), beside the XDP program,
    // which stays as it was.
    let (beside, _beside_err) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &["--mode", "auto", "--metrics-addr", "off"],
    );
    assert_eq!(lab.link_details(&lab.server_ns, &lab.server_if), before);
    drop(beside.terminate());

    // ...and still counting.
    in_netns(&lab.client_ns, || {
        let _ = std::net::TcpStream::connect_timeout(
            &socket_addr(SERVER_V4, 9),
            Duration::from_secs(2),
        );
    })
    .join()
    .expect("client thread");
    std::thread::sleep(Duration::from_millis(300));
    let totals = final_totals(&first.terminate());
    assert_eq!(totals["syn"], 1, "{totals}");
}

#[test]
fn metrics_address_in_use_fails_before_attaching() {
    let lab = Lab::new();
    // The first teardown attaches and serves metrics on the namespace's
    // loopback, at the default 127.0.0.1:9464.
    let (first, _first_err) = start_teardown(&lab.server_ns, &lab.server_if, &["--mode", "native"]);
    let before = lab.link_details(&lab.server_ns, &lab.server_if);
    // A second one on the same interface: it must fail on the port before
    // it attaches anything (on a veth `auto` would attach at TC ingress,
    // beside the first).
    let output = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, teardown_bin(), "run"])
        .args(["--iface", &lab.server_if])
        .output()
        .expect("starting teardown");
    assert_one_line_error(
        &output,
        &["127.0.0.1:9464", "in use", "--metrics-addr HOST:PORT"],
    );
    assert_eq!(lab.link_details(&lab.server_ns, &lab.server_if), before);
    let output = first.terminate();
    assert!(output.status.success(), "{output:?}");
}

/// Runs `teardown run` with `args` on an interface that does not exist: a
/// value accepted by mistake then fails on the interface (and the needles
/// catch it) instead of attaching to a real one and running on.
fn run_with(args: &[&str]) -> Output {
    let mut full = vec!["run", "--iface", "nosuchif0"];
    full.extend_from_slice(args);
    teardown(&full)
}

#[test]
fn bad_detection_thresholds_name_the_flag_and_what_it_allows() {
    let mut cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["--syn-rate-floor", "0"],
            &["--syn-rate-floor", "above 0"],
        ),
        (
            vec!["--syn-rate-floor=-5"],
            &["--syn-rate-floor", "above 0"],
        ),
        (
            vec!["--syn-rate-floor", "NaN"],
            &["--syn-rate-floor", "finite"],
        ),
        (
            vec!["--syn-rate-floor", "inf"],
            &["--syn-rate-floor", "finite"],
        ),
        (
            vec!["--syn-rate-floor", "abc"],
            &["--syn-rate-floor", "not a number"],
        ),
        (
            vec!["--baseline-multiple", "0.5"],
            &["--baseline-multiple", "at least 1"],
        ),
        (
            vec!["--baseline-multiple", "0"],
            &["--baseline-multiple", "at least 1"],
        ),
        (
            vec!["--baseline-multiple", "NaN"],
            &["--baseline-multiple", "finite"],
        ),
        (
            vec!["--baseline-multiple", "abc"],
            &["--baseline-multiple", "not a number"],
        ),
        (
            vec!["--completion-threshold", "150%"],
            &["--completion-threshold", "at most 1"],
        ),
        (
            vec!["--completion-threshold", "1.5"],
            &["--completion-threshold", "at most 1"],
        ),
        (
            vec!["--completion-threshold", "0"],
            &["--completion-threshold", "above 0"],
        ),
        (
            vec!["--completion-threshold", "0%"],
            &["--completion-threshold", "above 0"],
        ),
        (
            vec!["--completion-threshold=-10%"],
            &["--completion-threshold", "above 0"],
        ),
        (
            vec!["--completion-threshold", "NaN"],
            &["--completion-threshold", "finite"],
        ),
        (
            vec!["--completion-threshold", "abc"],
            &["--completion-threshold", "0.5 or 50%"],
        ),
        (
            vec!["--completion-threshold", "half%"],
            &["--completion-threshold", "0.5 or 50%"],
        ),
        (
            vec!["--half-open-threshold", "0"],
            &["--half-open-threshold", "above 0"],
        ),
        (
            vec!["--half-open-threshold", "1.5"],
            &["--half-open-threshold", "whole number"],
        ),
        (
            vec!["--half-open-threshold", "abc"],
            &["--half-open-threshold", "whole number"],
        ),
        (vec!["--top-sources", "0"], &["--top-sources", "1 to 64"]),
        (vec!["--top-sources", "65"], &["--top-sources", "1 to 64"]),
        (
            vec!["--top-sources", "five"],
            &["--top-sources", "whole number"],
        ),
        (vec!["--max-targets", "0"], &["--max-targets", "above 0"]),
        (
            vec!["--max-targets", "abc"],
            &["--max-targets", "whole number"],
        ),
    ];
    for flag in [
        "--baseline-half-life",
        "--handshake-grace",
        "--ratio-window",
        "--alert-quiet",
        "--alert-update",
    ] {
        cases.push((vec![flag, "0"], &["10ms to 24h"]));
        cases.push((vec![flag, "abc"], &["not a duration"]));
        cases.push((vec![flag, "NaN"], &["10ms to 24h"]));
        cases.push((vec![flag, "5ms"], &["10ms to 24h"]));
        cases.push((vec![flag, "25h"], &["10ms to 24h"]));
    }
    for (args, needles) in &cases {
        let output = run_with(args);
        let flag = args[0].split('=').next().expect("flag");
        let mut needles = needles.to_vec();
        needles.extend([flag, "teardown --help"]);
        assert_one_line_error(&output, &needles);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

/// A negative value written as its own argument (`--syn-rate-floor -5`)
/// must reach the flag's parser, not be taken for an unknown option.
#[test]
fn negative_detection_thresholds_name_the_flag() {
    for (flag, value, allowed) in [
        ("--syn-rate-floor", "-5", "above 0"),
        ("--baseline-multiple", "-3", "at least 1"),
        ("--completion-threshold", "-0.1", "above 0"),
        ("--half-open-threshold", "-3", "whole number"),
        ("--max-targets", "-1", "whole number"),
        ("--top-sources", "-1", "whole number"),
        ("--alert-quiet", "-1s", "10ms to 24h"),
    ] {
        let output = run_with(&[flag, value]);
        assert_one_line_error(&output, &[flag, allowed, "teardown --help"]);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
    }
}

#[test]
fn ratio_window_must_be_longer_than_the_handshake_grace() {
    for args in [
        &["--ratio-window", "50ms"][..],
        &["--ratio-window", "80ms"][..],
        &["--handshake-grace", "600ms"][..],
        &["--handshake-grace", "1s", "--ratio-window", "1s"][..],
    ] {
        let output = run_with(args);
        assert_one_line_error(
            &output,
            &["--ratio-window", "longer than --handshake-grace"],
        );
    }
    // At the limit's good side, the thresholds pass and only the interface
    // is missing.
    let output = run_with(&["--handshake-grace", "100ms", "--ratio-window", "110ms"]);
    assert_one_line_error(&output, &["no network interface named \"nosuchif0\""]);
}

#[test]
fn unparsable_metrics_addresses_name_the_flag() {
    for address in [
        "999.1.1.1:9464",
        "127.0.0.1:99999",
        "127.0.0.1:",
        "127.0.0.1",
        "[::1]",
        "::1:9464",
        "localhost:http",
        // `:9464` means every address (issue 15); a bad port after the
        // colon is still refused.
        ":94x64",
        "",
    ] {
        let output = run_with(&["--metrics-addr", address]);
        assert_one_line_error(&output, &["--metrics-addr", "HOST:PORT", "teardown --help"]);
        assert_eq!(output.status.code(), Some(2), "{address:?}");
    }
}

/// Each cause once: `cannot read /tmp: Is a directory`, not the I/O error's
/// text again after a second "cannot read".
#[test]
fn an_unreadable_capture_names_its_cause_once() {
    for args in [
        &["replay", "/tmp"][..],
        &["replay", "--connections", "/tmp"][..],
    ] {
        let output = teardown(args);
        assert_one_line_error(&output, &["cannot read /tmp", "Is a directory"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.matches("Is a directory").count(), 1, "{stderr}");
        assert_eq!(stderr.matches("cannot read").count(), 1, "{stderr}");
    }
}

//! XDP on a veth and the peer's offloads (issue 14): the program declares
//! multi-buffer support (`xdp.frags`), so native XDP on a veth accepts the
//! peer's large MTUs; what each attach mode does to the peer's TSO (auto
//! attaches at TC ingress on a veth, no XDP at all), and bulk TCP
//! throughput with teardown attached against none, measured with iperf3
//! when it is installed and printed, never asserted on.
//!
//! Run with `--nocapture` to see the figures. As root.

mod support;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Lab, SERVER_V4, run, teardown_bin, teardown_command, wait_until};

/// `ethtool -k` of `iface` in `ns`: is TCP segmentation offload on?
fn tso_on(ns: &str, iface: &str) -> bool {
    let output = run(Command::new("ip").args(["netns", "exec", ns, "ethtool", "-k", iface]));
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.starts_with("tcp-segmentation-offload:"))
        .unwrap_or_else(|| panic!("no tcp-segmentation-offload line in ethtool -k: {text}"));
    line.split(':').nth(1).is_some_and(|v| v.trim() == "on")
}

/// The largest MTU the kernel allows `iface` now (`ip -d link`'s maxmtu).
fn max_mtu(lab: &Lab, ns: &str, iface: &str) -> u32 {
    let details = lab.link_details(ns, iface);
    details
        .split_whitespace()
        .skip_while(|word| *word != "maxmtu")
        .nth(1)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no maxmtu in {details}"))
}

/// Bulk TCP from client to server for a few seconds, in Gbit/s; None if
/// iperf3 is not installed (`cargo xtask provision` installs it).
fn iperf3_gbits(lab: &Lab, seconds: u32) -> Option<f64> {
    if Command::new("iperf3").arg("--version").output().is_err() {
        return None;
    }
    let mut server = support::ChildGuard::new(
        lab.exec(&lab.server_ns, "iperf3")
            .args(["-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting iperf3 -s"),
    );
    // The server listens within a moment; the client retries its connect.
    std::thread::sleep(Duration::from_millis(300));
    let output = run(lab.exec(&lab.client_ns, "iperf3").args([
        "-c",
        SERVER_V4,
        "-p",
        "5201",
        "-J",
        "-t",
        &seconds.to_string(),
    ]));
    if let Some(mut child) = server.child.take() {
        let _ = child.wait();
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("iperf3 -J output");
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bits| bits / 1e9)
}

/// teardown attached in `mode`, the kind of XDP attachment `ip link`
/// shows, and how teardown says it attached (its first line's parentheses:
/// "TC ingress + TC egress").
fn attached_mode(lab: &Lab, mode: &str) -> (support::ChildGuard, String, String) {
    attached_mode_on(lab, &lab.server_if, mode)
}

/// [`attached_mode`] on interface `iface` of the server's namespace.
fn attached_mode_on(lab: &Lab, iface: &str, mode: &str) -> (support::ChildGuard, String, String) {
    let mut child = teardown_command(
        teardown_bin(),
        &lab.server_ns,
        iface,
        &["--mode", mode, "--metrics-addr", "off"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("starting teardown run");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
    let guard = support::ChildGuard::new(child);
    let mut line = String::new();
    stderr
        .read_line(&mut line)
        .expect("reading teardown's stderr");
    let said = line
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inside, _)| inside.to_string())
        .unwrap_or_else(|| panic!("teardown did not say how it attached: {line:?}"));
    // Drained, so teardown never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let details = lab.link_details(&lab.server_ns, iface);
    let kind = if details.contains("xdpgeneric") {
        "generic"
    } else if details.contains("xdp") {
        "native"
    } else {
        "none"
    };
    (guard, kind.to_string(), said)
}

#[test]
fn xdp_on_a_veth_and_the_peers_offloads() {
    let lab = Lab::new();
    const SECONDS: u32 = 4;
    assert!(
        tso_on(&lab.client_ns, &lab.client_if),
        "a fresh veth has TSO on"
    );
    let none = iperf3_gbits(&lab, SECONDS);

    // auto on a veth: TC ingress, no XDP, though the driver supports
    // native, which would cost the peer its TSO (below), and generic,
    // which copies every TSO segment for the program.
    let (auto, kind, said) = attached_mode(&lab, "auto");
    assert_eq!(kind, "none", "--mode auto on a veth attaches no XDP");
    assert_eq!(said, "TC ingress + TC egress", "--mode auto on a veth");
    assert!(
        tso_on(&lab.client_ns, &lab.client_if),
        "--mode auto on a veth must leave the peer's TSO on"
    );
    let tc_gbits = iperf3_gbits(&lab, SECONDS);
    drop(auto.terminate());

    // Native: the program declares multi-buffer support, so the kernel
    // lets the peer keep MTUs above a page (a program without it caps the
    // peer at about 3.5 kB).
    let (native, kind, said) = attached_mode(&lab, "native");
    assert_eq!(kind, "native");
    assert_eq!(said, "native XDP + TC egress");
    let native_max_mtu = max_mtu(&lab, &lab.client_ns, &lab.client_if);
    assert!(
        native_max_mtu > 16_384,
        "peer's maxmtu {native_max_mtu} with native XDP: the program was not loaded with BPF_F_XDP_HAS_FRAGS"
    );
    // The veth driver clears the peer's software GSO (TSO) for any native
    // XDP program, multi-buffer or not (veth_fix_features): reported, the
    // kernel's choice, not ours.
    let native_tso = tso_on(&lab.client_ns, &lab.client_if);
    let native_gbits = iperf3_gbits(&lab, SECONDS);
    drop(native.terminate());
    assert!(
        wait_until(Duration::from_secs(5), || tso_on(
            &lab.client_ns,
            &lab.client_if
        )),
        "the peer's TSO came back after teardown detached"
    );

    // Generic XDP leaves the peer's offloads alone.
    let (skb, kind, said) = attached_mode(&lab, "skb");
    assert_eq!(kind, "generic");
    assert_eq!(said, "generic XDP + TC egress");
    assert!(
        tso_on(&lab.client_ns, &lab.client_if),
        "generic XDP must leave the peer's TSO on"
    );
    let skb_gbits = iperf3_gbits(&lab, SECONDS);
    drop(skb.terminate());

    println!(
        "veth peer: TSO with native XDP: {}; maxmtu with native XDP: {native_max_mtu}",
        if native_tso { "on" } else { "off" }
    );
    match (none, native_gbits, skb_gbits) {
        (Some(none), Some(native), Some(skb)) => println!(
            "bulk TCP over the veth, {SECONDS} s each (iperf3; noisy on a shared machine): no program {none:.2} Gbit/s, TC (auto) {:.2} ({:.2}x), native {native:.2} ({:.2}x), generic {skb:.2} ({:.2}x)",
            tc_gbits.unwrap_or(0.0),
            tc_gbits.unwrap_or(0.0) / none,
            native / none,
            skb / none
        ),
        _ => println!("iperf3 not installed: throughput not measured"),
    }
}

/// `--mode auto` on an interface whose driver has no native XDP (a
/// bridge) attaches at TC ingress, not generic XDP, which would copy
/// every multi-page packet for the program.
#[test]
fn auto_without_native_xdp_attaches_at_tc_ingress() {
    let lab = Lab::new();
    let iface = "tdpbridge0";
    run(Command::new("ip").args(["-n", &lab.server_ns, "link", "add", iface, "type", "bridge"]));
    run(Command::new("ip").args(["-n", &lab.server_ns, "link", "set", iface, "up"]));
    let (auto, kind, said) = attached_mode_on(&lab, iface, "auto");
    assert_eq!(
        kind, "none",
        "--mode auto without native XDP attaches no XDP"
    );
    assert_eq!(said, "TC ingress + TC egress");
    let output = auto.terminate();
    assert!(output.status.success(), "{output:?}");
    // Native asked for, the same interface says what to do instead.
    let output = teardown_command(teardown_bin(), &lab.server_ns, iface, &["--mode", "native"])
        .args(["--metrics-addr", "off"])
        .output()
        .expect("starting teardown");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not support native XDP") && stderr.contains("--mode tc"),
        "{stderr}"
    );
}

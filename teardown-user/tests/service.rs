//! teardown as a service: what logrotate and systemd do to it.
//!
//! - logrotate's copy-less rotation renames `--log`'s file and sends SIGHUP:
//!   teardown keeps running, and the next records go to a new file at the
//!   path, none lost between the two.
//! - The unit runs it as an unprivileged user with exactly CAP_BPF,
//!   CAP_NET_ADMIN and CAP_PERFMON: with the three it watches, with any one
//!   missing it says, in one line, which.
//! - Without root, tracefs is closed: the kernel's reset reasons are off,
//!   and the note says why.
//! - The unit itself (`dist/systemd/teardown@.service`) passes
//!   `systemd-analyze verify` and keeps to those capabilities and its
//!   hardening.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{ChildGuard, Lab, TempDir, refused_connects, teardown_bin, wait_until};

/// The responder ports of the connection records in the log file at `path`
/// (every line must be whole JSON).
fn logged_ports(path: &Path) -> Vec<u16> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a cut line",
        path.display()
    );
    text.lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|err| panic!("a log line is not JSON ({err}): {line:?}"))
        })
        .filter(|value| value["event"] == "conn")
        .filter_map(|value| value["id.resp_p"].as_u64())
        .map(|port| port as u16)
        .collect()
}

fn send(guard: &ChildGuard, signal: i32) {
    let child = guard.child.as_ref().expect("teardown running");
    // SAFETY: kill() on a child we own and have not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

#[test]
fn sighup_after_a_rename_reopens_the_log_and_loses_nothing() {
    let lab = Lab::new();
    let dir = TempDir::new("teardown-sighup");
    let log = dir.join("teardown.log");
    let rotated = dir.join("teardown.log.1");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.server_ns, teardown_bin(), "run"])
        .args(["--iface", &lab.server_if, "--interval", "100ms", "--json"])
        .args(["--metrics-addr", "off", "--log"])
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting teardown run");
    let stderr = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let stream = child.stderr.take().expect("stderr piped");
        let stderr = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                stderr.lock().expect("stderr lock").push(line);
            }
        })
    };
    let mut guard = ChildGuard::new(child);
    let said = |what: &str| {
        stderr
            .lock()
            .expect("stderr lock")
            .iter()
            .any(|line| line.contains(what))
    };
    assert!(
        wait_until(Duration::from_secs(90), || said("watching")),
        "teardown did not start watching: {:?}",
        stderr.lock().expect("stderr lock")
    );

    // Before the rotation: 20 refused connects, all in the first file.
    let before = 20_000..20_020;
    refused_connects(&lab, before.clone());
    assert!(
        wait_until(Duration::from_secs(10), || logged_ports(&log).len()
            == before.len()),
        "records before the rotation: {:?}",
        logged_ports(&log)
    );
    // logrotate without copytruncate: rename, then SIGHUP.
    std::fs::rename(&log, &rotated).expect("renaming the log");
    // Records made between the rename and the signal go to the renamed file.
    let between = 20_100..20_110;
    refused_connects(&lab, between.clone());
    let renamed = before.len() + between.len();
    assert!(
        wait_until(Duration::from_secs(10), || logged_ports(&rotated).len()
            == renamed),
        "records after the rename, before SIGHUP: {:?}",
        logged_ports(&rotated)
    );
    send(&guard, libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || said("reopened")),
        "no word of the reopening: {:?}",
        stderr.lock().expect("stderr lock")
    );
    let after = 20_200..20_230;
    refused_connects(&lab, after.clone());
    assert!(
        wait_until(Duration::from_secs(10), || logged_ports(&log).len()
            == after.len()),
        "records after the rotation in the new file: {:?}",
        logged_ports(&log)
    );
    // Still running: SIGHUP used to end it (status 129).
    let still = guard
        .child
        .as_mut()
        .expect("teardown running")
        .try_wait()
        .expect("try_wait");
    assert!(still.is_none(), "teardown ended after SIGHUP: {still:?}");

    let output = guard.terminate();
    reader.join().expect("stderr reader");
    let stderr = stderr.lock().expect("stderr lock").clone();
    assert!(output.status.success(), "{}: {stderr:?}", output.status);
    let reopened: Vec<_> = stderr
        .iter()
        .filter(|line| line.contains("SIGHUP"))
        .collect();
    assert_eq!(reopened.len(), 1, "one line per SIGHUP: {stderr:?}");
    assert!(
        reopened[0].contains(&log.display().to_string()),
        "{reopened:?}"
    );

    let mut old = logged_ports(&rotated);
    let mut new = logged_ports(&log);
    old.sort_unstable();
    new.sort_unstable();
    let expected_old: Vec<u16> = before.chain(between).collect();
    let expected_new: Vec<u16> = after.collect();
    assert_eq!(old, expected_old, "the renamed file");
    assert_eq!(new, expected_new, "the new file");
}

/// `teardown run` in the lab's server namespace as nobody, with only `caps`
/// (setpriv's `+bpf,+net_admin,...`) inheritable and ambient.
fn as_nobody_with(lab: &Lab, caps: &str) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &lab.server_ns, "setpriv"])
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(teardown_bin())
        .args(["run", "-i", &lab.server_if, "--interval", "100ms", "-j"])
        .args(["--metrics-addr", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[test]
fn three_capabilities_suffice_and_a_missing_one_is_named() {
    let lab = Lab::new();
    let mut child = as_nobody_with(&lab, "+bpf,+net_admin,+perfmon")
        .spawn()
        .expect("starting setpriv");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
    let guard = ChildGuard::new(child);
    let mut first = String::new();
    stderr.read_line(&mut first).expect("reading stderr");
    assert!(
        first.contains("watching"),
        "with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: {first:?}"
    );
    refused_connects(&lab, 21_000..21_003);
    let output = guard.terminate();
    assert!(output.status.success(), "{}", output.status);

    for (missing, caps) in [
        ("CAP_BPF", "+net_admin,+perfmon"),
        ("CAP_NET_ADMIN", "+bpf,+perfmon"),
        ("CAP_PERFMON", "+bpf,+net_admin"),
    ] {
        let output = as_nobody_with(&lab, caps)
            .output()
            .expect("starting setpriv");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "without {missing}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "without {missing}: {stderr:?}");
        assert!(
            stderr.contains("permission denied") && stderr.contains(&format!("lacks {missing}:")),
            "without {missing}: {stderr:?}"
        );
    }
}

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd/teardown@.service");
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// The values of `key=` lines in the unit, in order.
fn settings<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_unit_keeps_to_three_capabilities_and_its_hardening() {
    let unit = unit_text();
    let three = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let values = settings(&unit, key);
        assert_eq!(values.len(), 1, "{key}: {values:?}");
        let mut caps: Vec<&str> = values[0].split_whitespace().collect();
        caps.sort_unstable();
        assert_eq!(caps, three, "{key}");
    }
    for (key, value) in [
        ("User", "teardown"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("LogsDirectory", "teardown"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(settings(&unit, key), [value], "{key}");
    }
    let families = settings(&unit, "RestrictAddressFamilies");
    for family in ["AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(
            families
                .iter()
                .any(|line| line.split_whitespace().any(|f| f == family)),
            "{family} not in {families:?}"
        );
    }
    let exec = settings(&unit, "ExecStart");
    assert!(
        exec.len() == 1
            && exec[0].contains(" run -i %i ")
            && exec[0].contains("--log /var/log/teardown/%i.log"),
        "{exec:?}"
    );
}

/// `systemd-analyze verify` on an instance of the unit, its ExecStart
/// pointed at the binary under test (verify checks that it exists). Skipped,
/// saying why, where systemd-analyze is not installed (`cargo xtask test`
/// installs it).
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    let dir = TempDir::new("teardown-unit");
    let unit = unit_text().replace("/usr/local/bin/teardown", teardown_bin());
    let instance = dir.join("teardown@lo.service");
    std::fs::write(&instance, unit).expect("writing the unit");
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .output()
        .expect("starting systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify ({}): {stderr}",
        output.status
    );
    // The hardening as systemd scores it (0 is locked down, 10 exposed);
    // `--offline` needs systemd 250.
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&instance)
        .output()
        .expect("starting systemd-analyze");
    if output.status.success() {
        let text = String::from_utf8_lossy(&output.stdout);
        let score: f64 = text
            .lines()
            .find_map(|line| line.split("Overall exposure level for").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|score| score.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in: {text}"));
        assert!(score <= 3.0, "exposure {score}: {text}");
    }
}

/// Without root, tracefs (mode 0700) is closed, so the kernel's reset
/// reasons are off: the note says why. `unshare --net` rather than the lab
/// (`ip netns exec` mounts a fresh /sys without tracefs); the veth pair is
/// made inside the new namespace and goes with it.
#[test]
fn a_run_without_root_says_tracefs_is_roots() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata("/sys/kernel/tracing").map(|m| m.permissions().mode());
    if !matches!(mode, Ok(mode) if mode & 0o077 == 0) {
        println!("skipped: /sys/kernel/tracing is not root's alone here ({mode:?})");
        return;
    }
    let script = format!(
        "ip link add tdt0 type veth peer name tdt1 && ip link set tdt0 up && ip link set tdt1 up && \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups \
         --inh-caps=-all,+bpf,+net_admin,+perfmon --ambient-caps=-all,+bpf,+net_admin,+perfmon \
         {} run -i tdt0 --metrics-addr off -j",
        teardown_bin()
    );
    let mut child = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting unshare");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
    let guard = ChildGuard::new(child);
    let mut first = String::new();
    stderr.read_line(&mut first).expect("reading stderr");
    assert!(first.contains("watching"), "{first:?}");
    let output = guard.terminate();
    assert!(output.status.success(), "{}", output.status);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("reading stderr");
    assert!(
        rest.contains("reset reasons are unavailable (tracefs at /sys/kernel/tracing can only be read by root)"),
        "{rest}"
    );
}

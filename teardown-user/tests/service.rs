//! teardown as a service: what logrotate and systemd do to it.
//!
//! - logrotate's copy-less rotation renames `--log`'s file and sends SIGHUP:
//!   teardown keeps running, and the next records go to a new file at the
//!   path, none lost between the two.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{
    ChildGuard, Lab, SERVER_V4, TempDir, in_netns, socket_addr, teardown_bin, wait_until,
};

/// Connects from the client's namespace to each of `ports` on the server,
/// where nothing listens: each connect is refused, one REJ record each.
fn refused_connects(lab: &Lab, ports: std::ops::Range<u16>) {
    in_netns(&lab.client_ns, move || {
        for port in ports {
            let result =
                TcpStream::connect_timeout(&socket_addr(SERVER_V4, port), Duration::from_secs(2));
            assert!(
                matches!(&result, Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused),
                "connect to {port}: {result:?}"
            );
        }
    })
    .join()
    .expect("client thread");
}

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

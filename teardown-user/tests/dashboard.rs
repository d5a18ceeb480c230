//! The dashboard on a real pseudo-terminal (`script`): teardown takes the
//! alternate screen, draws frames there, and gives the terminal back as it
//! was (normal screen, cursor, echo) when Ctrl-C or SIGTERM stops it, then
//! prints its totals on the normal screen.

mod support;

use std::{
    io::{Read as _, Write as _},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use support::*;

const ENTER_ALTERNATE: &str = "\x1b[?1049h";
const LEAVE_ALTERNATE: &str = "\x1b[?1049l";
const SHOW_CURSOR: &str = "\x1b[?25h";

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// ^C typed on the terminal: the line discipline sends SIGINT.
    CtrlC,
    Sigterm,
}

/// Everything the terminal received while teardown ran on it, and after.
fn run_on_a_terminal(stop: Stop) -> String {
    let lab = Lab::new();
    let teardown = format!(
        "{} run --iface {} --metrics-addr off --interval 100ms",
        teardown_bin(),
        lab.server_if
    );
    // After Ctrl-C the shell goes on: `stty -a` shows whether echo is back.
    // For SIGTERM teardown replaces the shell, so it is script's child.
    let shell_command = match stop {
        Stop::CtrlC => format!("{teardown}; stty -a"),
        Stop::Sigterm => format!("exec {teardown}"),
    };
    let mut script = ChildGuard::new(
        Command::new("ip")
            .args(["netns", "exec", &lab.server_ns])
            .args(["script", "--quiet", "--return", "--command"])
            .arg(&shell_command)
            .arg("/dev/null")
            // bash, not dash: it goes on when its child survives a ^C.
            .env("SHELL", "/bin/bash")
            .env("COLUMNS", "100")
            .env("LINES", "30")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting script (util-linux)"),
    );
    let child = script.child.as_mut().expect("script runs");
    let script_pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin piped");
    let mut stdout = child.stdout.take().expect("stdout piped");
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let screen = Arc::clone(&screen);
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = stdout.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    assert!(
        // Both directions are watched (the default): a row for what
        // arrived and one for what was sent.
        wait_until(Duration::from_secs(20), || {
            let text = text();
            text.contains("in /s") && text.contains("out /s")
        }),
        "no dashboard frame with rates on the terminal: {:?}",
        text()
    );
    match stop {
        Stop::CtrlC => stdin.write_all(b"\x03").expect("typing ^C"),
        Stop::Sigterm => {
            // `ip netns exec` became script; script's child is teardown.
            let children =
                std::fs::read_to_string(format!("/proc/{script_pid}/task/{script_pid}/children"))
                    .expect("script's children");
            let teardown_pid: i32 = children
                .split_whitespace()
                .next()
                .and_then(|pid| pid.parse().ok())
                .expect("teardown under script");
            // SAFETY: kill() on a process of this test.
            unsafe { libc::kill(teardown_pid, libc::SIGTERM) };
        }
    }
    let child = script.child.as_mut().expect("script runs");
    assert!(
        wait_until(Duration::from_secs(20), || child
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "teardown did not stop on {stop:?}: {:?}",
        text()
    );
    let status = child.wait().expect("script's status");
    drop(stdin);
    reader.join().expect("terminal reader");
    let output = text();
    assert!(status.success(), "{stop:?}: {status}: {output:?}");
    output
}

fn assert_terminal_given_back(output: &str) {
    let entered = output
        .find(ENTER_ALTERNATE)
        .expect("alternate screen taken");
    let left = output
        .rfind(LEAVE_ALTERNATE)
        .expect("alternate screen left");
    assert!(entered < left, "{output:?}");
    assert!(
        output[left..].contains(SHOW_CURSOR) || output[entered..left].contains(SHOW_CURSOR),
        "cursor not shown again: {output:?}"
    );
    let frames = &output[entered..left];
    assert!(frames.contains("teardown  tds"), "no title: {frames:?}");
    assert!(frames.contains("alerts    none active"), "{frames:?}");
    assert!(frames.contains("lock contended"), "{frames:?}");
    // The totals come after, on the normal screen.
    let after = &output[left..];
    assert!(after.contains("final totals on"), "{after:?}");
    assert!(after.contains("lock contended"), "{after:?}");
}

#[test]
fn ctrl_c_gives_the_terminal_back_with_echo() {
    let output = run_on_a_terminal(Stop::CtrlC);
    assert_terminal_given_back(&output);
    let left = output.rfind(LEAVE_ALTERNATE).unwrap();
    let stty = &output[left..];
    assert!(
        stty.contains(" echo ") && !stty.contains("-echo "),
        "echo not restored: {stty:?}"
    );
}

#[test]
fn sigterm_gives_the_terminal_back() {
    let output = run_on_a_terminal(Stop::Sigterm);
    assert_terminal_given_back(&output);
}

//! The dashboard on a real pseudo-terminal (`script`): teardown takes the
//! alternate screen, draws frames there, answers keys, and gives the
//! terminal back as it was (normal screen, cursor, echo, line editing) when
//! Ctrl-C, SIGTERM or `q` stops it, then prints its totals on the normal
//! screen. What the terminal shows is read through a terminal emulator
//! (vt100), as a person would see it: ratatui writes only the cells that
//! change, so the raw bytes do not hold whole lines.

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

/// The size teardown is given (`COLUMNS`, `LINES`), and the emulator's.
const COLUMNS: u16 = 100;
const LINES: u16 = 30;

#[derive(Clone, Copy, Debug)]
enum Stop {
    /// ^C typed on the terminal: the line discipline sends SIGINT.
    CtrlC,
    Sigterm,
    /// `q` typed on the terminal: the dashboard ends the run.
    Quit,
}

/// What a terminal shows after receiving `bytes`, each row without its
/// trailing blanks (a cell cleared by writing a space is still blank).
fn screen(bytes: &[u8]) -> String {
    let mut terminal = vt100::Parser::new(LINES, COLUMNS, 0);
    terminal.process(bytes);
    terminal
        .screen()
        .contents()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everything the terminal received while teardown ran on it, and after.
/// Before stopping it, each of `keys` is typed once the screen shows what
/// came before, and the screen must then show its text.
fn run_on_a_terminal(stop: Stop, keys: &[(&[u8], &str)]) -> String {
    let lab = Lab::new();
    let teardown = format!(
        "{} run --iface {} --metrics-addr off --interval 100ms",
        teardown_bin(),
        lab.server_if
    );
    // After Ctrl-C or `q` the shell goes on: `stty -a` shows whether echo
    // is back. For SIGTERM teardown replaces the shell, so it is script's
    // child.
    let shell_command = match stop {
        Stop::CtrlC | Stop::Quit => format!("{teardown}; stty -a"),
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
            .env("COLUMNS", COLUMNS.to_string())
            .env("LINES", LINES.to_string())
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
    let received = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let received = Arc::clone(&received);
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = stdout.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                received.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    let shown = || screen(&received.lock().unwrap());
    assert!(
        // Both directions are watched (the default): a row for what
        // arrived and one for what was sent.
        wait_until(Duration::from_secs(20), || {
            let shown = shown();
            shown.contains("in /s") && shown.contains("out /s")
        }),
        "no dashboard frame with rates on the terminal: {:?}",
        text()
    );
    for (key, expected) in keys {
        stdin.write_all(key).expect("typing a key");
        assert!(
            wait_until(Duration::from_secs(10), || shown().contains(expected)),
            "after {key:?}, no {expected:?} on the screen:\n{}",
            shown()
        );
    }
    match stop {
        Stop::CtrlC => stdin.write_all(b"\x03").expect("typing ^C"),
        Stop::Quit => stdin.write_all(b"q").expect("typing q"),
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
    // The last frame, as the terminal showed it just before it was given back.
    let frame = screen(&output.as_bytes()[..left]);
    assert!(frame.starts_with("teardown  tds"), "no title: {frame}");
    assert!(frame.contains("\nalerts    none active\n"), "{frame}");
    assert!(frame.contains("lock contended"), "{frame}");
    // The totals come after, on the normal screen.
    let after = &output[left..];
    assert!(after.contains("final totals on"), "{after:?}");
    assert!(after.contains("lock contended"), "{after:?}");
}

/// `stty -a`'s words after the dashboard: echo and line editing are back.
fn assert_settings_restored(output: &str) {
    let left = output.rfind(LEAVE_ALTERNATE).unwrap();
    let stty = &output[left..];
    let words: Vec<&str> = stty.split_whitespace().collect();
    for setting in ["echo", "icanon", "isig"] {
        assert!(
            words.contains(&setting) && !words.contains(&format!("-{setting}").as_str()),
            "{setting} not restored: {stty:?}"
        );
    }
}

#[test]
fn ctrl_c_gives_the_terminal_back_with_echo() {
    let output = run_on_a_terminal(Stop::CtrlC, &[]);
    assert_terminal_given_back(&output);
    assert_settings_restored(&output);
}

#[test]
fn sigterm_gives_the_terminal_back() {
    let output = run_on_a_terminal(Stop::Sigterm, &[]);
    assert_terminal_given_back(&output);
}

/// Keys act at once: help, pause (and back), sort, filter; `q` ends the
/// run as Ctrl-C does, totals printed after the screen is given back.
#[test]
fn keys_change_the_view_and_q_stops_the_run() {
    let output = run_on_a_terminal(
        Stop::Quit,
        &[
            (b"?", "keys (? closes)"),
            (b"?p", "PAUSED"),
            (b" s", "recent teardowns, longest first"),
            (b"f", "only graceful"),
        ],
    );
    assert_terminal_given_back(&output);
    assert_settings_restored(&output);
    let left = output.rfind(LEAVE_ALTERNATE).unwrap();
    let frame = screen(&output.as_bytes()[..left]);
    assert!(!frame.contains("PAUSED"), "{frame}");
    assert!(!frame.contains("keys (? closes)"), "{frame}");
}

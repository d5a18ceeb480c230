//! teardown run's stdout (JSON lines) and stderr, read as they come (a
//! full pipe would stall it), kept for the checks after it stops.
//!
//! Lines are kept as text and parsed only when looked at (each at most once
//! by [`JsonLines::wait_for`]), so that a test measuring teardown under load
//! does not spend its CPU parsing meanwhile.

use std::{
    io::{BufRead, BufReader, Read},
    process::{ChildStderr, Output},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::Duration,
};

use serde_json::Value;

use super::{ChildGuard, wait_until};

pub struct JsonLines {
    lines: Arc<Mutex<Vec<String>>>,
    /// The first lines parsed, for [`JsonLines::wait_for`] (those that are
    /// not JSON left out: [`JsonLines::finish`] judges them).
    parsed: Mutex<Vec<Value>>,
    /// How many lines `parsed` has looked at.
    looked_at: Mutex<usize>,
    stdout_reader: JoinHandle<()>,
    stderr_reader: JoinHandle<String>,
}

impl JsonLines {
    /// Takes teardown's stdout, and drains its stderr so it never blocks on
    /// a full pipe.
    pub fn watch(teardown: &mut ChildGuard, stderr: BufReader<ChildStderr>) -> JsonLines {
        let stdout = teardown
            .child
            .as_mut()
            .expect("teardown is running")
            .stdout
            .take()
            .expect("stdout piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("lines lock").push(line);
            }
        });
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let mut stderr = stderr;
            let _ = stderr.read_to_string(&mut text);
            text
        });
        JsonLines {
            lines,
            parsed: Mutex::new(Vec::new()),
            looked_at: Mutex::new(0),
            stdout_reader,
            stderr_reader,
        }
    }

    /// Waits until some line satisfies `wanted`; returns it, or None after
    /// `timeout`.
    pub fn wait_for(&self, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
        let mut found = None;
        wait_until(timeout, || {
            let mut parsed = self.parsed.lock().expect("parsed lock");
            let mut looked_at = self.looked_at.lock().expect("looked-at lock");
            let lines = self.lines.lock().expect("lines lock");
            parsed.extend(
                lines[*looked_at..]
                    .iter()
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok()),
            );
            *looked_at = lines.len();
            found = parsed.iter().find(|value| wanted(value)).cloned();
            found.is_some()
        });
        found
    }

    /// The flows of the latest stats line.
    pub fn latest_flows(&self) -> Option<Value> {
        let lines = self.lines.lock().expect("lines lock");
        lines
            .iter()
            .rev()
            .filter(|line| line.contains("\"stats\""))
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|value| value["event"] == "stats")
            .map(|value| value["flows"].clone())
    }

    /// Stops teardown and returns every line it printed (each must be
    /// JSON), its exit and its stderr.
    pub fn finish(self, teardown: ChildGuard) -> (Vec<Value>, Output, String) {
        let output = teardown.terminate();
        self.stdout_reader
            .join()
            .expect("the stdout reader panicked");
        let stderr = self
            .stderr_reader
            .join()
            .expect("the stderr reader panicked");
        let lines = std::mem::take(&mut *self.lines.lock().expect("lines lock"));
        let values = lines
            .iter()
            .map(|line| {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|err| panic!("teardown printed {line:?}, not JSON: {err}"))
            })
            .collect();
        (values, output, stderr)
    }
}

//! Alert hooks (`--on-alert CMD`): CMD runs through `sh -c` for every
//! SYN-flood alert event (start, update, end), with the event's JSON line on
//! its stdin, as FastNetMon's notify script does.
//!
//! A hook never holds the run loop up: it is spawned and left running, at
//! most [`IN_FLIGHT`] at once; each poll reaps those that ended and kills
//! (its whole process group) any that outlived the timeout. An event whose
//! hook could not start, failed (non-zero exit), was killed, or found too
//! many hooks still running is counted (`lines_lost.alert_hook`) and said on
//! stderr once a minute at most.

use std::{
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::report::output::say;

/// Hooks running at once at most; an event beyond is counted, not queued
/// (a hook that hangs must not pile up processes).
pub const IN_FLIGHT: usize = 8;
/// Warnings come at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

struct Running {
    child: Child,
    started: Instant,
    /// E.g. `start`, for messages.
    phase: &'static str,
}

/// What became of one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
}

pub struct AlertHook {
    command: String,
    timeout: Duration,
    running: Vec<Running>,
    /// Events whose hook did not run to a successful end.
    failed: u64,
    /// Hooks that ran to a successful end.
    succeeded: u64,
    warned_at: Option<Instant>,
}

impl AlertHook {
    pub fn new(command: String, timeout: Duration) -> AlertHook {
        AlertHook {
            command,
            timeout,
            running: Vec::new(),
            failed: 0,
            succeeded: 0,
            warned_at: None,
        }
    }

    /// Events whose hook failed, timed out, could not start, or was
    /// skipped because [`IN_FLIGHT`] hooks were running.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Hooks that exited with status 0.
    #[cfg(test)]
    pub fn succeeded(&self) -> u64 {
        self.succeeded
    }

    /// Hooks still running.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Starts the hook for one event (`json`: one line, without its
    /// newline); never waits for it.
    pub fn run(&mut self, phase: &'static str, json: &str) {
        self.poll();
        if self.running.len() >= IN_FLIGHT {
            self.fail(
                phase,
                &format!("{IN_FLIGHT} earlier hooks are still running"),
            );
            return;
        }
        match self.spawn(phase, json) {
            Ok(child) => self.running.push(Running {
                child,
                started: Instant::now(),
                phase,
            }),
            Err(err) => self.fail(phase, &format!("cannot start it: {err}")),
        }
    }

    fn spawn(&self, phase: &'static str, json: &str) -> io::Result<Child> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("TEARDOWN_ALERT_PHASE", phase)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so a timeout kills whatever it started.
            .process_group(0)
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            // The event (a few KB) fits the pipe's buffer (64 KB), so this
            // write does not wait; non-blocking all the same, so a hook that
            // shrank its pipe cannot stall the loop: it gets what fits.
            let fd = stdin.as_raw_fd();
            // SAFETY: fcntl on a descriptor this function owns.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
            let mut line = json.to_string();
            line.push('\n');
            // A hook that does not read its stdin (or exits first) is fine.
            let _ = stdin.write_all(line.as_bytes());
            // Dropped here: the hook sees the end of its input.
        }
        Ok(child)
    }

    /// Reaps hooks that ended and kills those past the timeout.
    pub fn poll(&mut self) {
        let mut index = 0;
        while index < self.running.len() {
            let hook = &mut self.running[index];
            let outcome = match hook.child.try_wait() {
                Ok(Some(status)) => Some(outcome(status)),
                Ok(None) if hook.started.elapsed() >= self.timeout => {
                    kill_group(&mut hook.child);
                    Some(Outcome::Failed(format!(
                        "still running after {:?}, killed",
                        self.timeout
                    )))
                }
                Ok(None) => None,
                Err(err) => {
                    kill_group(&mut hook.child);
                    Some(Outcome::Failed(format!("cannot wait for it: {err}")))
                }
            };
            match outcome {
                None => index += 1,
                Some(outcome) => {
                    let hook = self.running.swap_remove(index);
                    match outcome {
                        Outcome::Succeeded => self.succeeded += 1,
                        Outcome::Failed(why) => self.fail(hook.phase, &why),
                    }
                }
            }
        }
    }

    /// At the end of the run: waits for running hooks (the alerts' `end`
    /// events have just started theirs) up to the timeout, then kills the
    /// rest.
    pub fn finish(&mut self) {
        let deadline = Instant::now() + self.timeout;
        self.poll();
        while !self.running.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            self.poll();
        }
        // Past the deadline, every one left is past its own timeout too.
        self.poll();
    }

    fn fail(&mut self, phase: &str, why: &str) {
        self.failed += 1;
        if self.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            self.warned_at = Some(Instant::now());
            say(format_args!(
                "teardown: warning: the alert hook for a {phase} event failed: {why}; monitoring goes on, and such events are counted (lines_lost.alert_hook)"
            ));
        }
    }
}

fn outcome(status: ExitStatus) -> Outcome {
    if status.success() {
        Outcome::Succeeded
    } else {
        Outcome::Failed(format!("it exited with {status}"))
    }
}

/// Kills the hook's process group (the shell and what it started) and
/// reaps the shell.
fn kill_group(child: &mut Child) {
    // SAFETY: kill() on the process group this child leads (process_group(0)
    // made its pid the group id); a group already gone is ESRCH, harmless.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

impl Drop for AlertHook {
    fn drop(&mut self) {
        for hook in &mut self.running {
            kill_group(&mut hook.child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("teardown-hook-{name}-{}", std::process::id()))
    }

    fn wait_idle(hook: &mut AlertHook) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while hook.in_flight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            hook.poll();
        }
        assert_eq!(hook.in_flight(), 0);
    }

    #[test]
    fn the_hook_gets_the_event_on_stdin_and_its_phase() {
        let out = temp("stdin");
        let mut hook = AlertHook::new(
            format!(
                "{{ echo \"$TEARDOWN_ALERT_PHASE\"; cat; }} > {}",
                out.display()
            ),
            Duration::from_secs(10),
        );
        hook.run("start", r#"{"event":"syn_flood","phase":"start"}"#);
        wait_idle(&mut hook);
        let text = std::fs::read_to_string(&out).expect("the hook's output");
        let _ = std::fs::remove_file(&out);
        assert_eq!(
            text,
            "start\n{\"event\":\"syn_flood\",\"phase\":\"start\"}\n"
        );
        assert_eq!((hook.succeeded(), hook.failed()), (1, 0));
    }

    #[test]
    fn failing_and_hanging_hooks_are_counted_and_never_waited_for() {
        let mut failing = AlertHook::new("exit 3".into(), Duration::from_secs(10));
        failing.run("start", "{}");
        wait_idle(&mut failing);
        assert_eq!((failing.succeeded(), failing.failed()), (0, 1));

        // A hook that hangs (and a child of it): run returns at once, the
        // poll after the timeout kills the group.
        let mut hanging = AlertHook::new("sleep 30 & sleep 30".into(), Duration::from_millis(200));
        let before = Instant::now();
        hanging.run("start", "{}");
        assert!(before.elapsed() < Duration::from_millis(150));
        assert_eq!(hanging.in_flight(), 1);
        wait_idle(&mut hanging);
        assert!(before.elapsed() < Duration::from_secs(2));
        assert_eq!(hanging.failed(), 1);

        // At most IN_FLIGHT at once: the rest are counted, not queued.
        let mut busy = AlertHook::new("sleep 30".into(), Duration::from_secs(30));
        for _ in 0..IN_FLIGHT + 2 {
            busy.run("update", "{}");
        }
        assert_eq!(busy.in_flight(), IN_FLIGHT);
        assert_eq!(busy.failed(), 2);
        drop(busy); // kills them
    }
}

//! Outputs that fail. A full disk under `--log` (which anyone who can make
//! connections can fill with records) or under stdout must not stop the
//! monitor: the failure is said once on stderr, every line not written is
//! counted and shown (JSON stats, final totals, Prometheus), writing resumes
//! by itself when there is room again, and the log never holds a line cut
//! short. A closed stdout (`| head -1`) ends teardown quietly, successfully
//! and with nothing left attached; `teardown replay` stops with one line of
//! error when its stdout is full.
//!
//! The live tests run teardown in a lab's server namespace; the records are
//! of connects refused by the server's kernel (REJ), which teardown reports
//! 5 s after the RST (Zeek's close delay).

mod support;

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::*;

/// Records take 5 s (close delay) plus a poll to come out; generous.
const RECORD_PATIENCE: Duration = Duration::from_secs(20);

/// How long a teardown whose stdout reader left may take to end.
const EXIT_PATIENCE: Duration = Duration::from_secs(10);

/// A tmpfs of `size` mounted on a temporary directory: a disk that fills
/// up. Unmounted when dropped, also when a test fails (lazily, should
/// something still hold a file open on it).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = TempDir::new("teardown-tmpfs");
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir.0));
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir.0).status();
        }
    }
}

/// Fills the file system of `path` with `path` itself, then gives `room`
/// bytes back: what is left for anyone else is about `room`.
fn fill_leaving(path: &Path, room: u64) {
    let mut file = File::create(path).expect("creating the filler");
    let chunk = vec![0u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("filling {}: {err}", path.display()),
        }
    }
    let len = file.metadata().expect("filler metadata").len();
    assert!(len > room, "the file system is smaller than {room} bytes");
    file.set_len((len / 4096) * 4096 - room)
        .expect("shrinking the filler");
}

/// `teardown run` in the lab's server namespace, its stdout and stderr read
/// line by line on threads, so the test can wait for what it prints.
struct Running {
    guard: ChildGuard,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// Reads `from` line by line into `into` until it ends.
fn collect_lines(
    from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            into.lock().expect("lines lock").push(line);
        }
    })
}

impl Running {
    /// Starts teardown with `args` after `run --iface <server's>`, stdout
    /// going to `stdout` (`None`: read by the test), and waits until it
    /// watches.
    fn start(lab: &Lab, args: &[&str], stdout: Option<Stdio>) -> Running {
        let read_stdout = stdout.is_none();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.server_ns, teardown_bin(), "run"])
            .args(["--iface", &lab.server_if, "--interval", "100ms"])
            .args(args)
            .stdout(stdout.unwrap_or_else(Stdio::piped))
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting teardown run");
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = vec![collect_lines(
            child.stderr.take().expect("stderr piped"),
            stderr_lines.clone(),
        )];
        if read_stdout {
            readers.push(collect_lines(
                child.stdout.take().expect("stdout piped"),
                stdout_lines.clone(),
            ));
        }
        let running = Running {
            guard: ChildGuard::new(child),
            stdout: stdout_lines,
            stderr: stderr_lines,
            readers,
        };
        assert!(
            wait_until(Duration::from_secs(90), || running
                .stderr()
                .iter()
                .any(|line| line.contains("watching"))),
            "teardown did not start watching: {:?}",
            running.stderr()
        );
        running
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// stdout's lines as JSON (every one must be).
    fn json(&self) -> Vec<Value> {
        self.stdout()
            .iter()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("teardown printed {line:?}, not JSON: {err}"))
            })
            .collect()
    }

    /// The connection records printed so far whose responder port is in `ports`.
    fn records_to(&self, ports: std::ops::Range<u16>) -> usize {
        self.json()
            .iter()
            .filter(|value| {
                value["event"] == "conn"
                    && value["id.resp_p"]
                        .as_u64()
                        .is_some_and(|port| ports.contains(&(port as u16)))
            })
            .count()
    }

    /// The latest stats line's `lines_lost` of `output`.
    fn stats_lost(&self, output: &str) -> Option<u64> {
        self.json()
            .iter()
            .rev()
            .find(|value| value["event"] == "stats")
            .and_then(|value| value["lines_lost"][output].as_u64())
    }

    /// SIGTERM, then the exit status, stdout and stderr lines.
    fn stop(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        let output = std::mem::replace(&mut self.guard, ChildGuard { child: None }).terminate();
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        (output.status, self.stdout(), self.stderr())
    }
}

/// The last `n` lines, for failure messages (stats lines are long).
fn tail(lines: &[String], n: usize) -> &[String] {
    &lines[lines.len().saturating_sub(n)..]
}

/// The lines of stderr that are warnings.
fn warnings(stderr: &[String]) -> Vec<&String> {
    stderr
        .iter()
        .filter(|line| line.contains("warning"))
        .collect()
}

fn assert_nothing_bad(stderr: &[String]) {
    for line in stderr {
        assert!(
            !line.contains("panicked") && !line.contains("error"),
            "stderr: {stderr:?}"
        );
    }
}

/// The whole lines of `path` so far, for polling while teardown may be
/// mid-write: a last line without its newline yet is left for later.
fn log_lines_so_far(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    whole
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a log line is not whole JSON ({err}): {line:?}"))
        })
        .collect()
}

/// Every line of `path`, each of which must be a whole JSON object.
fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the log ends in a cut line: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a log line is not whole JSON ({err}): {line:?}"))
        })
        .collect()
}

/// A log that can never be written (`/dev/full`): teardown keeps watching,
/// says so once, counts every record lost, in the stats lines, in
/// Prometheus and in the final totals, and ends cleanly on SIGTERM. (Before:
/// the first record ended the run with status 1 and no totals.)
#[test]
fn a_log_that_cannot_be_written_costs_records_not_the_watch() {
    let lab = Lab::new();
    let teardown = Running::start(
        &lab,
        &[
            "--json",
            "--log",
            "/dev/full",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        None,
    );
    // Said after the "watching" line and the kernel's notes, so it may not
    // be there yet when `start` returns.
    let metrics_line = || {
        teardown.stderr().iter().find_map(|line| {
            line.split("http://")
                .nth(1)
                .and_then(|rest| rest.strip_suffix("/metrics"))
                .map(str::to_string)
        })
    };
    assert!(
        wait_until(RECORD_PATIENCE, || metrics_line().is_some()),
        "teardown did not say where its metrics are: {:?}",
        teardown.stderr()
    );
    let metrics_addr = metrics_line().expect("teardown says where its metrics are");
    refused_connects(&lab, 7001..7004);
    assert!(
        wait_until(RECORD_PATIENCE, || teardown.records_to(7001..7004) == 3
            && teardown.stats_lost("log").is_some_and(|lost| lost >= 3)),
        "no stats line counting the 3 records lost; stdout ends: {:?}; stderr: {:?}",
        tail(&teardown.stdout(), 2),
        teardown.stderr()
    );
    // Still watching: a later connection is reported too.
    refused_connects(&lab, 7004..7005);
    assert!(
        wait_until(RECORD_PATIENCE, || teardown.records_to(7004..7005) == 1),
        "the watch stopped after the log failed: {:?}",
        teardown.stderr()
    );
    let lost_in_log = |text: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("teardown_output_lines_lost_total{output=\"log\"} "))
            .and_then(|value| value.parse::<u64>().ok())
    };
    // The log's own writer thread counts the loss once its write fails,
    // and the next publication (every interval) carries it: scraped until
    // then, not once right after the record reached stdout.
    let mut metrics = String::new();
    assert!(
        wait_until(RECORD_PATIENCE, || {
            metrics = scrape_metrics(&lab.server_ns, &metrics_addr);
            lost_in_log(&metrics).is_some_and(|lost| lost >= 4)
        }),
        "{metrics}"
    );
    assert!(
        metrics.contains("teardown_output_lines_lost_total{output=\"stdout\"} 0\n"),
        "{metrics}"
    );

    let (status, stdout, stderr) = teardown.stop();
    assert!(status.success(), "{status}; stderr: {stderr:?}");
    let values: Vec<Value> = stdout
        .iter()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    // Every line bound for the log (records and alert events: all but
    // stats and final) was lost, and counted.
    let bound_for_log = values
        .iter()
        .filter(|value| value["event"] != "stats" && value["event"] != "final")
        .count() as u64;
    let last = values.last().expect("teardown printed something");
    assert_eq!(last["event"], "final", "{:?}", tail(&stdout, 2));
    assert_eq!(last["lines_lost"]["log"], bound_for_log, "{last}");
    assert_eq!(last["lines_lost"]["stdout"], 0, "{last}");
    let warnings = warnings(&stderr);
    assert_eq!(warnings.len(), 1, "one warning: {stderr:?}");
    assert!(
        warnings[0].contains("/dev/full")
            && warnings[0].contains("No space left on device")
            && warnings[0].contains("counted as lost"),
        "{}",
        warnings[0]
    );
    assert!(
        stderr.iter().any(|line| line.contains("detached from")),
        "{stderr:?}"
    );
    assert!(!stderr.iter().any(|line| line.contains("panicked")));
}

/// A log on a disk that fills up in the middle of a burst of records, then
/// gets room again: monitoring goes on, one warning, the records that did
/// not fit are counted, none is cut in the log, and once there is room the
/// records are written again, which stderr says with the count lost.
#[test]
fn a_full_log_disk_loses_whole_records_and_writing_resumes() {
    let disk = Tmpfs::mount("512k");
    let filler = disk.dir.join("filler");
    let log = disk.dir.join("conn.log");
    // Two pages: a few records fit, and the burst's write is cut short in
    // the middle of one (a tmpfs write stops at the page it cannot get).
    fill_leaving(&filler, 8192);
    let lab = Lab::new();
    let log_arg = log.display().to_string();
    let teardown = Running::start(
        &lab,
        &["--json", "--log", &log_arg, "--metrics-addr", "off"],
        None,
    );

    const BURST: std::ops::Range<u16> = 8000..8150;
    refused_connects(&lab, BURST);
    assert!(
        wait_until(RECORD_PATIENCE, || teardown.records_to(BURST)
            == BURST.len()
            && teardown.stats_lost("log").is_some_and(|lost| lost > 0)),
        "no stats line counting records lost; stdout has {} records; stderr: {:?}",
        teardown.records_to(BURST),
        teardown.stderr()
    );
    let written = log_lines_so_far(&log);
    let lost = teardown.stats_lost("log").expect("counted");
    assert!(
        !written.is_empty() && (written.len() as u64) < BURST.len() as u64,
        "{} records in the log, {lost} lost",
        written.len()
    );
    // Said on stderr, which the test reads on a thread of its own.
    wait_until(RECORD_PATIENCE, || !warnings(&teardown.stderr()).is_empty());
    let warnings_so_far = warnings(&teardown.stderr())
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(warnings_so_far.len(), 1, "{:?}", teardown.stderr());
    assert!(
        warnings_so_far[0].contains(&log_arg) && warnings_so_far[0].contains("counted as lost"),
        "{}",
        warnings_so_far[0]
    );

    // Room again: the next records are written.
    std::fs::remove_file(&filler).expect("removing the filler");
    const LATER: std::ops::Range<u16> = 8200..8220;
    refused_connects(&lab, LATER);
    assert!(
        wait_until(RECORD_PATIENCE, || teardown.records_to(LATER)
            == LATER.len()),
        "the later records were not reported: {:?}",
        teardown.stderr()
    );
    // The log has a writer thread of its own: stdout's lines say nothing
    // of how far it has got.
    let later_in_log = || {
        log_lines_so_far(&log)
            .iter()
            .filter(|value| {
                value["id.resp_p"]
                    .as_u64()
                    .is_some_and(|port| LATER.contains(&(port as u16)))
            })
            .count()
    };
    assert!(
        wait_until(RECORD_PATIENCE, || later_in_log() == LATER.len()),
        "writing did not resume: {} of {} later records in the log",
        later_in_log(),
        LATER.len()
    );
    let (status, stdout, stderr) = teardown.stop();
    assert!(status.success(), "{status}; stderr: {stderr:?}");
    assert_eq!(warnings(&stderr).len(), 1, "{stderr:?}");

    // Every line bound for the log is either in it, whole, or counted lost.
    let values: Vec<Value> = stdout
        .iter()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    let bound_for_log = values
        .iter()
        .filter(|value| value["event"] != "stats" && value["event"] != "final")
        .count() as u64;
    let in_log = log_lines(&log).len() as u64;
    let last = values.last().expect("output");
    assert_eq!(last["event"], "final");
    let lost = last["lines_lost"]["log"].as_u64().expect("lines_lost.log");
    assert!(lost > 0, "{last}");
    assert_eq!(
        in_log + lost,
        bound_for_log,
        "{in_log} lines in the log and {lost} lost, of {bound_for_log}"
    );
    let note = format!("written again; {lost} lines were lost");
    assert!(
        stderr
            .iter()
            .any(|line| line.contains(&log_arg) && line.contains(&note)),
        "no {note:?} in {stderr:?}"
    );
    drop(disk);
}

/// stdout on a full disk (`> /dev/full`) under `run --plain`: the watch goes
/// on (the log still gets every record), one warning, and the count of
/// lines lost is said at exit. (Before: a panic at the first line.)
#[test]
fn a_full_stdout_does_not_stop_the_watch() {
    let lab = Lab::new();
    let dir = TempDir::new("teardown-outputs");
    let log = dir.join("conn.log");
    let log_arg = log.display().to_string();
    let full = File::options()
        .write(true)
        .open("/dev/full")
        .expect("opening /dev/full");
    let teardown = Running::start(
        &lab,
        &["--plain", "--log", &log_arg, "--metrics-addr", "off"],
        Some(Stdio::from(full)),
    );
    refused_connects(&lab, 7101..7103);
    assert!(
        wait_until(RECORD_PATIENCE, || log.exists()
            && log_lines_so_far(&log).len() == 2),
        "the records did not reach the log; stderr: {:?}",
        teardown.stderr()
    );
    let (status, _, stderr) = teardown.stop();
    assert!(status.success(), "{status}; stderr: {stderr:?}");
    let warnings = warnings(&stderr);
    assert_eq!(warnings.len(), 1, "{stderr:?}");
    assert!(
        warnings[0].contains("stdout") && warnings[0].contains("No space left on device"),
        "{}",
        warnings[0]
    );
    assert!(
        stderr
            .iter()
            .any(|line| line.contains("stdout still cannot be written at exit")),
        "{stderr:?}"
    );
    assert!(!stderr.iter().any(|line| line.contains("panicked")));
}

/// A stdout whose reader stops reading (a paused pager, a stalled
/// collector) holds up nothing: with the pipe full, connections still end
/// on time and reach the log, and once the reader reads again, stdout has
/// every line. (Before: the monitoring loop itself waited in the write, so
/// no record ended; a record due meanwhile came out `open` at the stop.)
#[test]
fn a_stdout_nobody_reads_does_not_stall_the_watch() {
    let lab = Lab::new();
    let dir = TempDir::new("teardown-outputs");
    let log = dir.join("conn.log");
    let log_arg = log.display().to_string();
    let (mut reader, writer) = pipe();
    let teardown = Running::start(
        &lab,
        &["--json", "--log", &log_arg, "--metrics-addr", "off"],
        Some(Stdio::from(writer)),
    );
    // Stats lines, ten a second, fill the pipe (64 KiB, in pages, so
    // somewhat less of whole lines) in a few seconds: full once what waits
    // in it stops growing for a second.
    let unread = |reader: &File| {
        let mut bytes: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, the bytes waiting in the pipe.
        let rc = unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut bytes) };
        assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
        bytes
    };
    let mut last = (0, Instant::now());
    assert!(
        wait_until(Duration::from_secs(60), || {
            let now = unread(&reader);
            if now != last.0 {
                last = (now, Instant::now());
            }
            now > 32 * 1024 && last.1.elapsed() > Duration::from_secs(1)
        }),
        "stdout's pipe did not fill ({} bytes); stderr: {:?}",
        unread(&reader),
        teardown.stderr()
    );
    refused_connects(&lab, 7201..7203);
    assert!(
        wait_until(RECORD_PATIENCE, || log.exists()
            && log_lines_so_far(&log).len() == 2),
        "with stdout's pipe full, the records did not reach the log; stderr: {:?}",
        teardown.stderr()
    );
    let draining = thread::spawn(move || {
        let mut text = String::new();
        reader.read_to_string(&mut text).expect("reading stdout");
        text
    });
    let (status, _, stderr) = teardown.stop();
    let text = draining.join().expect("the stdout reader");
    assert!(status.success(), "{status}; stderr: {stderr:?}");
    assert_nothing_bad(&stderr);
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("whole JSON lines"))
        .collect();
    let records = lines
        .iter()
        .filter(|value| value["event"] == "conn" && value["conn_state"] == "REJ")
        .count();
    assert_eq!(records, 2, "stdout has both records");
    let final_line = lines
        .iter()
        .find(|value| value["event"] == "final")
        .expect("a final line");
    assert_eq!(final_line["lines_lost"]["stdout"], 0, "{final_line}");
}

/// A pipe: (read end, write end).
fn pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here only.
    unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Waits for `child` to exit on its own within `patience`.
fn wait_exit(guard: &mut ChildGuard, patience: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + patience;
    let child = guard.child.as_mut().expect("running");
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What is attached to `iface` in `ns`: XDP per `ip link`, and every
/// program `bpftool net` lists (XDP, tc, TCX).
fn attachments(ns: &str, iface: &str) -> Vec<String> {
    let link = run(Command::new("ip").args(["-n", ns, "-d", "link", "show", "dev", iface]));
    let mut found: Vec<String> = String::from_utf8_lossy(&link.stdout)
        .lines()
        .filter(|line| line.contains("xdp") || line.contains("prog/"))
        .map(str::to_string)
        .collect();
    let net =
        run(Command::new("ip").args(["netns", "exec", ns, "bpftool", "net", "show", "dev", iface]));
    found.extend(
        String::from_utf8_lossy(&net.stdout)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.ends_with(':'))
            .map(str::to_string),
    );
    found
}

/// `teardown run | head -1`, in every output mode, and with stderr in the
/// same pipe (`2>&1 | head -1`): teardown ends by itself, soon, with status
/// 0, nothing on stderr beyond its start, and nothing left attached.
/// (Before: `--plain` and the default panicked with status 101, `--json`
/// wrote into the void forever.)
#[test]
fn run_ends_quietly_when_its_reader_goes() {
    let lab = Lab::new();
    for (args, stderr_too) in [
        (&["--json"][..], false),
        (&["--plain"], false),
        (&[], false),
        (&["--json"], true),
        (&["--plain"], true),
    ] {
        let what = format!("run {args:?}{}", if stderr_too { " 2>&1" } else { "" });
        let (reader, writer) = pipe();
        let stderr = if stderr_too {
            Stdio::from(writer.try_clone().expect("dup"))
        } else {
            Stdio::piped()
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.server_ns, teardown_bin(), "run"])
            .args(["--iface", &lab.server_if, "--interval", "100ms"])
            .args(["--metrics-addr", "off"])
            .args(args)
            .stdout(Stdio::from(writer))
            .stderr(stderr)
            .spawn()
            .expect("starting teardown run");
        let stderr_reader = child.stderr.take().map(|stderr| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = BufReader::new(stderr).read_to_string(&mut text);
                text
            })
        });
        let mut guard = ChildGuard::new(child);
        // `head -1`: one line, then the pipe is closed.
        let mut first = String::new();
        BufReader::new(reader)
            .read_line(&mut first)
            .expect("reading the first line");
        assert!(!first.is_empty(), "{what}: no output");
        let status = wait_exit(&mut guard, EXIT_PATIENCE);
        let status = status.unwrap_or_else(|| {
            panic!("{what}: still running {EXIT_PATIENCE:?} after its reader left")
        });
        let stderr = stderr_reader
            .map(|reader| reader.join().expect("stderr reader"))
            .unwrap_or_default();
        assert!(status.success(), "{what}: exit {status}, stderr: {stderr}");
        let lines: Vec<String> = stderr.lines().map(str::to_string).collect();
        assert_nothing_bad(&lines);
        // The start, and on a kernel that lacks them, its notes on the
        // reset reasons (`KernelReasons::start`); nothing else.
        assert!(
            lines.iter().all(|line| line.contains("watching")
                || line.starts_with("teardown: resets are not put down")
                || line.starts_with("teardown: the kernel's reset reasons are unavailable")),
            "{what}: more than the start on stderr: {stderr}"
        );
        let attached = attachments(&lab.server_ns, &lab.server_if);
        assert!(attached.is_empty(), "{what}: left attached: {attached:?}");
    }
}

fn corpus_file(name: &str) -> String {
    shared_dir()
        .join("corpus/zeek/traces")
        .join(name)
        .display()
        .to_string()
}

/// `teardown replay` in every mode whose reader has gone before it writes
/// (the end state of `| head -1`): it stops at once, status 0, nothing on
/// stderr, and does not go on to the next files (the missing one would be
/// an error). (Before: the table panicked with status 101; JSON replayed
/// every file into the void and reported the missing one.)
#[test]
fn replay_stops_quietly_when_its_reader_goes() {
    for mode in [&[][..], &["--json"], &["--connections"]] {
        let (reader, writer) = pipe();
        drop(reader);
        let output = Command::new(teardown_bin())
            .arg("replay")
            .args(mode)
            .arg(corpus_file("opt.basic.pcap"))
            .arg(corpus_file("opt.basic.pcap"))
            .arg("/nonexistent/capture.pcap")
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .output()
            .expect("starting teardown replay");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.is_empty(),
            "replay {mode:?}: {}, stderr: {stderr}",
            output.status
        );
    }
    // And a real `| head -1` over the whole corpus, with pipefail.
    let traces = shared_dir().join("corpus/zeek/traces");
    for mode in ["", "--json", "--connections"] {
        let script = format!(
            "set -o pipefail; {} replay {mode} {}/*.pcap | head -1 >/dev/null",
            teardown_bin(),
            traces.display()
        );
        let output = Command::new("bash")
            .args(["-c", &script])
            .output()
            .expect("bash");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && !stderr.contains("panicked"),
            "replay {mode} | head -1: {}, stderr: {stderr}",
            output.status
        );
    }
}

/// `teardown replay > /dev/full`: one line of error and status 1 in every
/// mode. (Before: a panic for the table, success for JSON.)
#[test]
fn replay_to_a_full_disk_is_an_error() {
    for mode in [&[][..], &["--json"], &["--connections"]] {
        let output = Command::new(teardown_bin())
            .arg("replay")
            .args(mode)
            .arg(corpus_file("opt.basic.pcap"))
            .stdout(Stdio::from(
                File::options()
                    .write(true)
                    .open("/dev/full")
                    .expect("/dev/full"),
            ))
            .stderr(Stdio::piped())
            .output()
            .expect("starting teardown replay");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "replay {mode:?}: {stderr}");
        assert_eq!(
            stderr.lines().collect::<Vec<_>>(),
            ["teardown: error: cannot write to stdout: No space left on device (os error 28)"],
            "replay {mode:?}"
        );
    }
}

/// `teardown bench` whose reader has gone: the report's lines are dropped,
/// the benchmark runs to its end and writes its JSON. (Before: a panic,
/// status 101, on the first line.)
#[test]
fn bench_runs_to_its_end_when_its_reader_goes() {
    let dir = std::env::temp_dir().join(format!("td-bench-head-{}", std::process::id()));
    let json = dir.join("bench.json");
    let (reader, writer) = pipe();
    drop(reader);
    let output = Command::new(teardown_bin())
        .args(["bench", "--repeat", "1000", "--rounds", "1", "--json-out"])
        .arg(&json)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("starting teardown bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = std::fs::read_to_string(&json);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !stderr.contains("panicked"),
        "bench with its reader gone: {}, stderr: {stderr}",
        output.status
    );
    let report: serde_json::Value = serde_json::from_str(
        &report.unwrap_or_else(|err| panic!("no JSON report ({err}): {stderr}")),
    )
    .expect("the report is JSON");
    // The verifier's work per program, as the kernel reports it: every
    // program `run` and `replay` load, each accepted, so within the limit.
    let verifier = report["verifier"].as_array().expect("a verifier section");
    let programs: Vec<&str> = verifier
        .iter()
        .map(|row| row["program"].as_str().expect("a program name"))
        .collect();
    assert_eq!(
        programs,
        [
            "teardown",
            "teardown_egress",
            "teardown_replay",
            "teardown_tunnel",
            "teardown_tunnel_egress",
            "teardown_tunnel_replay",
            "teardown_ingress",
            "teardown_tunnel_ingress",
            "teardown_ingress",
            "teardown_egress",
            "teardown_tunnel_ingress",
            "teardown_tunnel_egress"
        ]
    );
    let ip_link: Vec<bool> = verifier
        .iter()
        .map(|row| row["ip_link"].as_bool().expect("ip_link"))
        .collect();
    assert_eq!(ip_link, [[false; 8].as_slice(), &[true; 4]].concat());
    for row in verifier {
        let verified = row["verified_insns"]
            .as_u64()
            .expect("this kernel reports it");
        assert!(
            verified > 0 && verified <= row["limit"].as_u64().unwrap(),
            "{row}"
        );
    }
}

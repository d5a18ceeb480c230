//! `cargo xtask demo`: a lab in two network namespaces joined by a veth pair,
//! a real TCP server, teardown's live dashboard on the server's interface,
//! and a scripted story told from the client's side: graceful closes,
//! resets, refused connects, a half-close, then a SYN flood from random
//! sources and quiet afterwards.
//!
//! Nothing outside the two namespaces is touched: the addresses (10.99.0.0/24)
//! exist only inside them. Everything is undone by guards' `Drop` (children
//! killed, namespaces deleted) however the demo ends; Ctrl-C, SIGTERM and
//! SIGHUP only raise a flag the story checks between steps, so the guards
//! always run.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{provision, remove_leftover_namespaces, say};

#[path = "../../teardown-user/tests/support/lab.rs"]
mod lab;

/// Debian packages the demo runs: iproute2 for the namespaces, python3 for
/// the server and clients, hping3 for the SYN flood.
const DEMO_PACKAGES: &[&str] = &["iproute2", "python3", "hping3"];

const SERVER_PY: &str = include_str!("demo/server.py");
const CLIENT_PY: &str = include_str!("demo/client.py");

const CLIENT_ADDR: &str = "10.99.0.1";
const SERVER_ADDR: &str = "10.99.0.2";
/// Interface names inside the namespaces (each namespace has its own names).
const CLIENT_IF: &str = "td-demo-cli";
const SERVER_IF: &str = "td-demo-srv";
/// Answers and closes once the client has closed.
const GRACEFUL_PORT: u16 = 8080;
/// Answers, then keeps its side open after the client's FIN.
const HOLD_PORT: u16 = 8081;
/// Nobody listens here.
const CLOSED_PORT: u16 = 8099;

/// Rows at the bottom of the terminal the narration uses; the dashboard
/// gets the rest (through `LINES`).
const NARRATION_ROWS: usize = 4;

/// teardown's `--idle-timeout` in the demo (5 min by default): the
/// half-closed connection of act 4 is silent, and is reported once it has
/// been silent this long.
const DEMO_IDLE_TIMEOUT: &str = "10s";

pub struct DemoOptions {
    pub teardown: PathBuf,
    pub flood_seconds: u64,
    pub no_flood: bool,
    /// Non-interactive: short pauses, plain lines on a pipe, and a check
    /// that teardown reported what the story did.
    pub check: bool,
}

/// The signal that asked the demo to stop, or 0.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Ctrl-C, SIGTERM and SIGHUP (terminal closed) set [`STOP_SIGNAL`]
/// instead of killing the demo, so its guards clean up.
fn catch_stop_signals() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let previous = unsafe {
            libc::signal(
                signal,
                on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        if previous == libc::SIG_ERR {
            bail!("installing a handler for signal {signal}");
        }
    }
    Ok(())
}

fn stop_requested() -> anyhow::Result<()> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => Ok(()),
        signal => bail!(
            "demo stopped by {}; its namespaces and processes are cleaned up",
            if signal == libc::SIGINT {
                "Ctrl-C"
            } else {
                "SIGTERM/SIGHUP"
            }
        ),
    }
}

/// The two namespaces ([`lab::Lab`], shared with the integration tests),
/// deleted (with the veth pair and any XDP program in them) when dropped.
/// Named `td-demo-<pid>-…` so a sweep can tell a dead demo's from a running
/// one's, as for the tests' namespaces.
struct DemoLab {
    lab: lab::Lab,
}

impl std::ops::Deref for DemoLab {
    type Target = lab::Lab;

    fn deref(&self) -> &lab::Lab {
        &self.lab
    }
}

impl DemoLab {
    fn create() -> anyhow::Result<DemoLab> {
        let pid = std::process::id();
        let plan = lab::LabPlan {
            client_ns: format!("td-demo-{pid}-cli"),
            server_ns: format!("td-demo-{pid}-srv"),
            client_if: CLIENT_IF.to_string(),
            server_if: SERVER_IF.to_string(),
            client_addrs: &[format!("{CLIENT_ADDR}/24")],
            server_addrs: &[format!("{SERVER_ADDR}/24")],
            link_options: &[],
        };
        say(&format!(
            "creating namespaces {} ({CLIENT_ADDR}) and {} ({SERVER_ADDR}) joined by a veth pair",
            plan.client_ns, plan.server_ns
        ));
        let lab = DemoLab {
            lab: lab::Lab::create(&plan)
                .map_err(anyhow::Error::msg)
                .context("setting up the demo's namespaces")?,
        };
        // The flood's SYN-ACKs go to random addresses.
        lab.route_server_replies_via(CLIENT_ADDR)
            .map_err(anyhow::Error::msg)
            .context("setting up the demo's namespaces")?;
        Ok(lab)
    }
}

impl Drop for DemoLab {
    fn drop(&mut self) {
        let names = format!("{} and {}", self.lab.client_ns, self.lab.server_ns);
        self.lab.delete();
        say(&format!("deleted namespaces {names}"));
    }
}

/// A helper process in its own process group (so the terminal's Ctrl-C is
/// the demo's to handle, not a Python traceback), killed with its group
/// when dropped.
struct Helper {
    name: &'static str,
    child: Option<Child>,
}

impl Helper {
    fn spawn(name: &'static str, command: &mut Command) -> anyhow::Result<Helper> {
        use std::os::unix::process::CommandExt as _;
        let child = command
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        Ok(Helper {
            name,
            child: Some(child),
        })
    }

    /// `python3 - ARGS` in namespace `ns`, the program fed on stdin (so
    /// `ps` shows the arguments, not the whole source).
    fn python(
        name: &'static str,
        lab: &DemoLab,
        ns: &str,
        source: &str,
        args: &[String],
        stdout: Stdio,
        stderr: Stdio,
    ) -> anyhow::Result<Helper> {
        let mut command = lab.exec(ns, "python3");
        command
            .arg("-")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr);
        let mut helper = Helper::spawn(name, &mut command)?;
        // Dropping stdin closes it: python runs what it has read.
        let stdin = helper.child.as_mut().and_then(|child| child.stdin.take());
        stdin
            .context("python's stdin")?
            .write_all(source.as_bytes())
            .with_context(|| format!("feeding the {name} to python3"))?;
        Ok(helper)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill() on the process group of a child not yet reaped.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
            say(&format!("stopped the {}", self.name));
        }
    }
}

/// teardown itself: asked to stop with SIGTERM (it detaches and prints its
/// totals), killed if it has not within a few seconds.
struct Teardown {
    child: Option<Child>,
    /// Its stdout lines, when piped (`--check`).
    stdout: Arc<Mutex<Vec<String>>>,
    /// Connection lines of the flood, counted rather than echoed.
    flood_lines: Arc<AtomicUsize>,
    /// Set when teardown's stderr closes: it has exited (or is exiting).
    exited: Arc<AtomicBool>,
    /// Its stderr after the "watching" line: shown once it is done, so
    /// nothing is written over the dashboard.
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Teardown {
    fn start(
        lab: &DemoLab,
        options: &DemoOptions,
        dashboard_rows: Option<usize>,
    ) -> anyhow::Result<Teardown> {
        let mut command = lab.exec(&lab.server_ns, &options.teardown);
        command
            .args(["run", "--iface", SERVER_IF])
            // In its own namespace the default address would not be
            // reachable from the host anyway.
            .args(["--metrics-addr", "off"])
            .args(["--idle-timeout", DEMO_IDLE_TIMEOUT])
            .stderr(Stdio::piped());
        match dashboard_rows {
            Some(rows) => {
                command.env("LINES", rows.to_string());
            }
            // No room for the dashboard and the narration: lines, which the
            // narration on stderr interleaves with.
            None => {
                command.arg("--plain");
            }
        }
        if options.check {
            command.stdout(Stdio::piped());
        }
        let mut child = command.spawn().context("starting teardown")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let (watching_tx, watching_rx) = mpsc::channel();
        let exited = Arc::new(AtomicBool::new(false));
        if let Some(pipe) = child.stderr.take() {
            let stderr = Arc::clone(&stderr);
            let exited = Arc::clone(&exited);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains("teardown: watching") {
                        let _ = watching_tx.send(());
                    } else if let Ok(mut lines) = stderr.lock() {
                        lines.push(line);
                    }
                }
                exited.store(true, Ordering::SeqCst);
            }));
        }
        let flood_lines = Arc::new(AtomicUsize::new(0));
        if let Some(pipe) = child.stdout.take() {
            let stdout = Arc::clone(&stdout);
            let flood_lines = Arc::clone(&flood_lines);
            readers.push(thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    // The story's own connections come from the client's
                    // address; the flood's (random sources, tens of
                    // thousands) would bury them.
                    let from_story = !line.starts_with("conn ")
                        || line.starts_with(&format!("conn {CLIENT_ADDR}:"));
                    if from_story {
                        println!("{line}");
                    } else {
                        flood_lines.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut lines) = stdout.lock() {
                        lines.push(line);
                    }
                }
            }));
        }
        let mut teardown = Teardown {
            child: Some(child),
            stdout,
            flood_lines,
            exited,
            stderr,
            readers,
        };
        // Loading and attaching take a moment; the story must not start
        // before teardown watches.
        let started = Instant::now();
        loop {
            stop_requested()?;
            if watching_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                if dashboard_rows.is_some() {
                    // The dashboard takes the (alternate) screen right after
                    // saying it watches; narration written before that would
                    // be left behind on the normal screen.
                    thread::sleep(Duration::from_secs(1));
                }
                return Ok(teardown);
            }
            let exited = teardown
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > Duration::from_secs(30) {
                teardown.stop();
                bail!(
                    "teardown did not start watching {SERVER_IF}: {}",
                    teardown.stderr_text()
                );
            }
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|lines| lines.join("; "))
            .unwrap_or_default()
    }

    /// Stops teardown (SIGTERM, then SIGKILL after 10 s) and waits for its
    /// output to be read.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill() on a child not yet reaped (`ip netns exec` has
            // exec'd teardown, so this is teardown itself).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if let Ok(mut lines) = self.stderr.lock() {
            for line in lines.drain(..) {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the story is told: in the bottom rows of the dashboard's terminal,
/// or as lines on stderr.
struct Narrator {
    /// The terminal's rows, when narrating at its bottom.
    rows: Option<usize>,
    lines: Vec<String>,
    /// teardown has exited: the story has no one to tell it to.
    teardown_exited: Arc<AtomicBool>,
}

impl Narrator {
    fn tell(&mut self, lines: &[&str]) {
        self.lines = lines.iter().map(|line| line.to_string()).collect();
        if self.rows.is_none() {
            for line in lines {
                eprintln!("demo: {line}");
            }
        }
        self.redraw();
    }

    /// Rewrites the narration rows (teardown's first frame clears the whole
    /// screen, so this is repeated while the story waits).
    fn redraw(&self) {
        let Some(rows) = self.rows else { return };
        let columns = terminal_size().map(|(columns, _)| columns).unwrap_or(80);
        let first = rows.saturating_sub(NARRATION_ROWS) + 1;
        // Save the cursor, write each row from its start, restore.
        let mut text = String::from("\x1b7");
        let rule = format!("-- teardown demo {}", "-".repeat(columns));
        let rows_text = std::iter::once(rule.as_str())
            .chain(self.lines.iter().map(String::as_str))
            .chain(std::iter::repeat(""));
        for (row, line) in (first..=rows).zip(rows_text) {
            let line: String = line.chars().take(columns).collect();
            text.push_str(&format!("\x1b[{row};1H\x1b[2K{line}"));
        }
        text.push_str("\x1b8");
        self.write(&text);
    }

    fn write(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Waits `seconds`, keeping the narration on screen; fails when asked
    /// to stop.
    fn pause(&self, seconds: f64) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        loop {
            stop_requested()?;
            if self.teardown_exited.load(Ordering::SeqCst) {
                bail!("teardown stopped before the story ended (its messages are above)");
            }
            self.redraw();
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            thread::sleep((end - now).min(Duration::from_millis(250)));
        }
    }
}

/// Columns and rows of the terminal on stdout, if it is one.
fn terminal_size() -> Option<(usize, usize)> {
    // SAFETY: isatty and TIOCGWINSZ only read the descriptor's state.
    unsafe {
        if libc::isatty(libc::STDOUT_FILENO) != 1 {
            return None;
        }
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) != 0 || size.ws_row == 0 {
            return None;
        }
        Some((size.ws_col as usize, size.ws_row as usize))
    }
}

/// Runs the client script in the client namespace and waits for it.
fn clients(
    lab: &DemoLab,
    action: &str,
    port: u16,
    count: u32,
    gap_seconds: f64,
) -> anyhow::Result<()> {
    let args = [
        action.to_string(),
        SERVER_ADDR.to_string(),
        port.to_string(),
        count.to_string(),
        gap_seconds.to_string(),
    ];
    let mut helper = Helper::python(
        "demo clients",
        lab,
        &lab.client_ns,
        CLIENT_PY,
        &args,
        Stdio::piped(),
        Stdio::piped(),
    )?;
    let child = helper.child.take().context("the clients' process")?;
    let output = child
        .wait_with_output()
        .context("waiting for the demo clients")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "the demo's {action} clients failed: {}",
            stderr.lines().last().unwrap_or("no message")
        );
    }
    Ok(())
}

/// What `--check` requires among teardown's connection lines: a conn_state
/// and why the story should have produced it.
const EXPECTED_STATES: &[(&[&str], &str)] = &[
    (&["SF"], "graceful closes"),
    (&["RSTO", "RSTR"], "resets"),
    (&["REJ"], "refused connects"),
];

/// The conn_state of a plain `conn A -> B STATE ...` line.
fn conn_state(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    (words.next() == Some("conn")).then_some(())?;
    words.nth(3)
}

/// Checks teardown's plain lines: the expected connection states and, if
/// the story had a flood, an alert for `flooded` (`ADDR:PORT`).
fn check_report(lines: &[String], flooded: Option<&str>) -> anyhow::Result<()> {
    let states: Vec<&str> = lines.iter().filter_map(|line| conn_state(line)).collect();
    let mut missing: Vec<String> = EXPECTED_STATES
        .iter()
        .filter(|(wanted, _)| !states.iter().any(|state| wanted.contains(state)))
        .map(|(wanted, what)| format!("{} ({what})", wanted.join("/")))
        .collect();
    if let Some(target) = flooded {
        let alert = format!("SYN FLOOD start {target} ");
        if !lines.iter().any(|line| line.starts_with(&alert)) {
            missing.push(format!("a SYN-flood alert for {target}"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "teardown did not report {}; it reported {} connection lines: {:?}",
            missing.join(", "),
            states.len(),
            states
        );
    }
    say(&format!(
        "check passed: teardown reported {} connections, including SF, REJ and RSTO/RSTR{}",
        states.len(),
        if flooded.is_some() {
            ", and the flood's alert"
        } else {
            ""
        }
    ));
    Ok(())
}

/// What the demo needs before teardown is built: root, and its packages.
pub fn prepare() -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!(
            "the demo creates network namespaces and loads eBPF programs: run it as root (sudo -E cargo xtask demo)"
        );
    }
    provision::ensure_packages(
        DEMO_PACKAGES,
        "for the demo (iproute2 for the namespaces, python3 for the server and clients, hping3 for the SYN flood)",
    )
}

pub fn demo(options: DemoOptions) -> anyhow::Result<()> {
    catch_stop_signals()?;
    remove_leftover_namespaces("td-demo-", "demo");
    let lab = DemoLab::create()?;
    let mut server = Helper::python(
        "demo server",
        &lab,
        &lab.server_ns,
        SERVER_PY,
        &[
            SERVER_ADDR.to_string(),
            GRACEFUL_PORT.to_string(),
            HOLD_PORT.to_string(),
        ],
        Stdio::piped(),
        Stdio::inherit(),
    )?;
    let ready = server
        .child
        .as_mut()
        .and_then(|child| child.stdout.take())
        .map(|pipe| {
            let mut line = String::new();
            let _ = BufReader::new(pipe).read_line(&mut line);
            line
        })
        .unwrap_or_default();
    if ready.trim() != "ready" {
        bail!("the demo server did not start (python3 in the server namespace)");
    }
    say(&format!(
        "server listening on {SERVER_ADDR}:{GRACEFUL_PORT} (graceful) and :{HOLD_PORT} (keeps half-closed connections open); nothing on :{CLOSED_PORT}"
    ));

    // The dashboard needs the terminal; the narration keeps a few rows of it.
    let terminal = if options.check { None } else { terminal_size() };
    let usable = terminal.filter(|(_, rows)| *rows > NARRATION_ROWS + 8);
    if terminal.is_some() && usable.is_none() {
        say("the terminal is too short for the dashboard and the narration: plain lines instead");
    }
    let narration_rows = usable.map(|(_, rows)| rows);
    say(&format!(
        "starting teardown on {SERVER_IF} in {} ({})",
        lab.server_ns,
        if narration_rows.is_some() {
            "live dashboard; Ctrl-C stops the demo and cleans up"
        } else {
            "plain lines"
        }
    ));
    let mut teardown = Teardown::start(
        &lab,
        &options,
        narration_rows.map(|rows| rows - NARRATION_ROWS),
    )?;
    let mut narrator = Narrator {
        rows: narration_rows,
        lines: Vec::new(),
        teardown_exited: Arc::clone(&teardown.exited),
    };
    let story = tell_story(&lab, &options, &mut narrator);
    // teardown first, so the helpers' exits are not part of what it reports.
    teardown.stop();
    drop(server);
    let flood_lines = teardown.flood_lines.load(Ordering::Relaxed);
    if flood_lines > 0 {
        say(&format!(
            "(not shown: {flood_lines} connection lines of the flood's random sources)"
        ));
    }
    let stdout = teardown
        .stdout
        .lock()
        .map(|lines| lines.clone())
        .unwrap_or_default();
    drop(teardown);
    drop(lab);
    story?;
    if options.check {
        let flooded = format!("{SERVER_ADDR}:{GRACEFUL_PORT}");
        check_report(&stdout, (!options.no_flood).then_some(flooded.as_str()))?;
    }
    Ok(())
}

fn tell_story(lab: &DemoLab, options: &DemoOptions, narrator: &mut Narrator) -> anyhow::Result<()> {
    // A person needs time to read each act and see its records arrive; a
    // check needs none (records still in the table are reported at exit).
    let (gap, read, settle) = if options.check {
        (0.0, 0.2, 1.0)
    } else {
        (0.7, 3.0, 6.0)
    };
    let flood_seconds = if options.check {
        options.flood_seconds.min(2)
    } else {
        options.flood_seconds
    };
    let acts = if options.no_flood { 4 } else { 6 };
    let server = SERVER_ADDR;

    narrator.tell(&[
        &format!("act 1/{acts}: 5 clients connect to {server}:{GRACEFUL_PORT}, exchange a line and close gracefully"),
        "expect: SF graceful lines, a few seconds after each close (teardown waits 5 s for late packets)",
    ]);
    narrator.pause(read)?;
    clients(lab, "graceful", GRACEFUL_PORT, 5, gap)?;
    narrator.pause(settle)?;

    narrator.tell(&[
        &format!("act 2/{acts}: 5 clients exchange a line, then close with SO_LINGER 0: a RST instead of a FIN"),
        "expect: RSTO abort by orig lines; rst/s ticks up",
    ]);
    narrator.pause(read)?;
    clients(lab, "reset", GRACEFUL_PORT, 5, gap)?;
    narrator.pause(settle)?;

    narrator.tell(&[
        &format!("act 3/{acts}: 5 connects to {server}:{CLOSED_PORT}, where nothing listens: the kernel answers RST"),
        "expect: REJ refused lines",
    ]);
    narrator.pause(read)?;
    clients(lab, "refused", CLOSED_PORT, 5, gap)?;
    narrator.pause(settle)?;

    narrator.tell(&[
        &format!("act 4/{acts}: a client sends its FIN to {server}:{HOLD_PORT}; the server answers but never closes"),
        &format!("expect: an S2 half_closed line once it has been silent for {DEMO_IDLE_TIMEOUT} (the demo's --idle-timeout; 5 min by default)"),
    ]);
    narrator.pause(read)?;
    clients(lab, "halfclose", HOLD_PORT, 1, gap)?;
    narrator.pause(if options.check { settle } else { 14.0 })?;
    if options.no_flood {
        narrator.tell(&["the end (no flood: --no-flood); stopping teardown"]);
        return narrator.pause(read);
    }

    narrator.tell(&[
        &format!("act 5/{acts}: SYN flood on {server}:{GRACEFUL_PORT} for {flood_seconds} s from random sources (hping3 --flood --rand-source)"),
        "expect: syn/s soars, half-open, evicted and SYNs untracked climb; an alert while it lasts",
    ]);
    narrator.pause(read)?;
    let mut flood_command = lab.exec(&lab.client_ns, "hping3");
    flood_command
        .args(["--flood", "--rand-source", "-S", "-p"])
        .arg(GRACEFUL_PORT.to_string())
        .arg(server)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut flood = Helper::spawn("SYN flood (hping3)", &mut flood_command)?;
    let flooded = narrator.pause(flood_seconds as f64);
    flood.stop();
    flooded?;

    let quiet = if options.check { settle } else { 20.0 };
    narrator.tell(&[
        &format!("act 6/{acts}: quiet for {quiet:.0} s: the flood's records end, S0 half_open or S1/OTH idle (the SYN-ACK went nowhere)"),
        "expect: rates back to 0, half-open drains; the alert ends",
    ]);
    narrator.pause(quiet)?;
    narrator.tell(&["the end: stopping teardown and cleaning up"]);
    narrator.pause(if options.check { 0.0 } else { 2.0 })
}

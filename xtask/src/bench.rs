//! `cargo xtask bench --peers` and `--live` (issue 14): teardown beside
//! its peers, kernel-timed per frame, and live in namespaces under iperf3
//! and hping3 SYN and ACK floods.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    command_output, is_root, provision, remove_leftover_namespaces, run_command, run_teardown, say,
    workspace_root,
};

#[allow(
    clippy::duplicate_mod,
    reason = "the demo includes the same file as its own private module; each keeps its copy rather than sharing one through main.rs"
)]
#[path = "../../teardown-user/tests/support/lab.rs"]
mod lab;

/// Debian packages the peers bench needs: xdp-tools (its xdp-filter; the
/// program objects come with libxdp1, a dependency), clang and libbpf's
/// headers for the bench's own C programs, the kernel's UAPI headers.
const PEER_PACKAGES: &[&str] = &["xdp-tools", "clang", "libbpf-dev", "linux-libc-dev"];

/// The bench's C programs, in `bench/peers/`, built to `target/bench/peers/NAME.bpf.o`.
const PEER_SOURCES: &[&str] = &["conntrack", "peer_wrap", "empty", "empty_tc"];

/// The target's Debian multiarch name (for `/usr/include/<multiarch>/asm`).
fn multiarch() -> String {
    command_output(Command::new("gcc").arg("-print-multiarch"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", std::env::consts::ARCH))
}

/// Builds the bench's C programs with clang (installing what is missing);
/// returns the directory holding the objects.
pub fn build_peer_objects() -> anyhow::Result<PathBuf> {
    provision::ensure_packages(
        PEER_PACKAGES,
        "for the peers bench (xdp-filter's program, clang and libbpf headers for the bench's C conntrack)",
    )?;
    let root = workspace_root();
    let out = root.join("target/bench/peers");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let include = format!("-I/usr/include/{}", multiarch());
    for name in PEER_SOURCES {
        let source = root.join("bench/peers").join(format!("{name}.bpf.c"));
        let object = out.join(format!("{name}.bpf.o"));
        run_command(
            Command::new("clang")
                .args([
                    "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", &include, "-c",
                ])
                .arg(&source)
                .arg("-o")
                .arg(&object),
        )
        .with_context(|| format!("building {}", source.display()))?;
    }
    Ok(out)
}

/// `teardown bench --peers`: teardown, xdp-filter and the bench's conntrack
/// on the same frames, in one run.
pub fn peers(binary: &Path, args: &[OsString]) -> anyhow::Result<()> {
    let objects = build_peer_objects()?;
    say("peers: the same frames through teardown, xdp-filter and the bench's conntrack");
    let mut full = vec![
        OsString::from("bench"),
        "--peers".into(),
        "--peer-objects".into(),
        objects.into(),
        "--json-out".into(),
        workspace_root().join("target/bench/peers.json").into(),
    ];
    full.extend(args.iter().cloned());
    run_teardown(binary, &full)
}

// ---------------------------------------------------------------------------
// Live mode

const LIVE_PACKAGES: &[&str] = &["iproute2", "iperf3", "hping3", "bpftool", "python3"];
const CLIENT_ADDR: &str = "10.199.0.1";
const SERVER_ADDR: &str = "10.199.0.2";
const FLOOD_PORT: &str = "8080";
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` for the live run: 0 while throughput is
/// measured, 1 only for the windows that read each program's
/// `run_time_ns` and `run_cnt` ([`StatsWindow::on`]); put back when
/// dropped (also on an error, not if the run is killed).
///
/// Why not on for the whole run: the statistics add 15 to 30 ns to every
/// program run, the empty program's too, and teardown runs two or three
/// programs a packet (XDP or TC ingress, TC egress, the reset program)
/// where the empty configuration runs one, so its throughput ratios would
/// carry the statistics' cost two or three times.
struct StatsWindow {
    previous: String,
}

impl StatsWindow {
    fn take() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?
            .trim()
            .to_string();
        let window = StatsWindow { previous };
        window.set(false)?;
        Ok(window)
    }

    fn set(&self, on: bool) -> anyhow::Result<()> {
        std::fs::write(STATS_SYSCTL, if on { "1" } else { "0" }).with_context(|| {
            format!(
                "switching kernel.bpf_stats_enabled {}",
                if on { "on" } else { "off" }
            )
        })
    }

    /// Runs `during` with the statistics on, and switches them off after
    /// (also when it fails).
    fn on<T>(&self, during: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.set(true)?;
        let result = during();
        self.set(false)?;
        result
    }
}

impl Drop for StatsWindow {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(STATS_SYSCTL, &self.previous) {
            say(&format!(
                "could not restore kernel.bpf_stats_enabled to {}: {err}",
                self.previous
            ));
        }
    }
}

/// Seconds of each statistics window ([`StatsWindow::on`]), after the
/// throughput window of the same traffic.
const STATS_WINDOW_SECONDS: u64 = 2;

/// Fails if a program ran between two snapshots taken with the statistics
/// off: they were on all the same (another process holds them on through
/// a `BPF_ENABLE_STATS` descriptor, which the setting does not override),
/// and the throughput measured between the two paid for them.
fn ensure_stats_were_off(
    before: &[ProgStats],
    after: &[ProgStats],
    what: &str,
) -> anyhow::Result<()> {
    if let Some((name, _, runs, _)) = per_run(before, after).first() {
        bail!(
            "the BPF statistics counted {runs} runs of {name} during the {what} with kernel.bpf_stats_enabled at 0: another process holds them on (a BPF_ENABLE_STATS descriptor); stop it and run the live bench again"
        );
    }
    Ok(())
}

/// The namespaces, deleted when dropped (also on an error).
struct LiveLab {
    lab: lab::Lab,
}

impl LiveLab {
    fn create() -> anyhow::Result<Self> {
        let pid = std::process::id();
        let plan = lab::LabPlan {
            client_ns: format!("tdp-live-{pid}-cli"),
            server_ns: format!("tdp-live-{pid}-srv"),
            client_if: "tdpc".into(),
            server_if: "tdps".into(),
            client_addrs: &[format!("{CLIENT_ADDR}/24")],
            server_addrs: &[format!("{SERVER_ADDR}/24")],
            link_options: &[],
        };
        say(&format!(
            "live: namespaces {} ({CLIENT_ADDR}) and {} ({SERVER_ADDR}) joined by a veth pair",
            plan.client_ns, plan.server_ns
        ));
        let lab = LiveLab {
            lab: lab::Lab::create(&plan).map_err(anyhow::Error::msg)?,
        };
        // SYN-ACKs to the flood's random sources.
        lab.lab
            .route_server_replies_via(CLIENT_ADDR)
            .map_err(anyhow::Error::msg)?;
        Ok(lab)
    }

    fn exec(&self, server: bool, program: &str) -> Command {
        let ns = if server {
            &self.lab.server_ns
        } else {
            &self.lab.client_ns
        };
        self.lab.exec(ns, program)
    }

    /// The server interface's transmitted packets (SYN-ACKs under a SYN
    /// flood, resets under an ACK flood).
    fn server_tx_packets(&self) -> anyhow::Result<u64> {
        self.server_packets("tx_packets")
    }

    /// The server interface's received packets (the flood's, as many as
    /// the sender got through: a veth delivers in the sender's context, so
    /// the XDP program's cost slows the sender).
    fn server_rx_packets(&self) -> anyhow::Result<u64> {
        self.server_packets("rx_packets")
    }

    fn server_packets(&self, counter: &str) -> anyhow::Result<u64> {
        let text = command_output(self.exec(true, "cat").arg(format!(
            "/sys/class/net/{}/statistics/{counter}",
            self.lab.server_if
        )))?;
        Ok(text.trim().parse()?)
    }

    fn server_link(&self) -> anyhow::Result<String> {
        command_output(Command::new("ip").args([
            "-n",
            &self.lab.server_ns,
            "-d",
            "link",
            "show",
            &self.lab.server_if,
        ]))
    }
}

impl Drop for LiveLab {
    fn drop(&mut self) {
        self.lab.delete();
        say("live: deleted the namespaces");
    }
}

/// A background process, killed (its whole process group) when dropped.
struct Background {
    child: Option<Child>,
}

impl Background {
    fn spawn(command: &mut Command, what: &str) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let child = command
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Background { child: Some(child) })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = -(child.id() as i32);
        // SAFETY: kill() on the process group of a child not yet reaped.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What is on the server's interface for a measurement.
#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Nothing,
    Empty(&'static str),
    Teardown(&'static str),
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Nothing => "no program".into(),
            Setup::Empty("tc") => "empty TC ingress".into(),
            Setup::Empty(mode) => format!("empty XDP, {mode}"),
            Setup::Teardown(mode) => format!("teardown, {mode}"),
        }
    }

    fn mode(self) -> Option<&'static str> {
        match self {
            Setup::Nothing => None,
            Setup::Empty(mode) | Setup::Teardown(mode) => Some(mode),
        }
    }
}

/// A program's cumulative run time and count (bpftool prog show).
#[derive(Clone, Default)]
struct ProgStats {
    name: String,
    kind: String,
    run_time_ns: u64,
    run_cnt: u64,
}

fn prog_stats(id: u32) -> anyhow::Result<ProgStats> {
    let text = command_output(Command::new("bpftool").args([
        "prog",
        "show",
        "id",
        &id.to_string(),
        "-j",
    ]))?;
    let value: serde_json::Value = serde_json::from_str(&text).context("bpftool's JSON")?;
    Ok(ProgStats {
        name: value["name"].as_str().unwrap_or("?").to_string(),
        kind: value["type"].as_str().unwrap_or("?").to_string(),
        run_time_ns: value["run_time_ns"].as_u64().unwrap_or(0),
        run_cnt: value["run_cnt"].as_u64().unwrap_or(0),
    })
}

/// The BPF program ids a process holds descriptors of (its fdinfo's
/// `prog_id`): teardown's own programs, whatever else runs on the machine.
fn program_ids_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for fd in fds.flatten() {
        if let Ok(info) = std::fs::read_to_string(fd.path())
            && let Some(id) = info
                .lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids
}

/// The id of the program `tc filter show ... ingress` shows.
fn attached_tc_id(filters: &str) -> Option<u32> {
    let mut words = filters.split_whitespace();
    words.find(|word| *word == "id")?;
    words.next()?.parse().ok()
}

/// What a program does in a configuration, for the tables' ns/run
/// columns: `ingress` (the XDP program, or a TC one at ingress), `egress`
/// (teardown's TC egress program), `reset` (its tracepoint program).
fn role(name: &str, kind: &str) -> &'static str {
    match kind {
        "xdp" => "ingress",
        "tracepoint" => "reset",
        _ if name.starts_with("teardown_egress") => "egress",
        _ => "ingress",
    }
}

/// The XDP program id `ip -d link` shows on the server's interface.
fn attached_xdp_id(link: &str) -> Option<u32> {
    let mut words = link
        .split_whitespace()
        .skip_while(|word| !word.starts_with("prog/xdp"));
    words.find(|word| *word == "id")?;
    words.next()?.parse().ok()
}

/// The attachment for one configuration; detached when dropped.
struct Attached<'a> {
    lab: &'a LiveLab,
    setup: Setup,
    teardown: Option<Background>,
    /// Programs to read statistics of.
    ids: Vec<u32>,
}

impl<'a> Attached<'a> {
    fn new(lab: &'a LiveLab, setup: Setup, binary: &Path, objects: &Path) -> anyhow::Result<Self> {
        let empty = objects.join("empty.bpf.o");
        let mut attached = Attached {
            lab,
            setup,
            teardown: None,
            ids: Vec::new(),
        };
        let xdp_kind = |mode: &str| {
            if mode == "skb" {
                "xdpgeneric"
            } else {
                "xdpdrv"
            }
        };
        match setup {
            Setup::Nothing => {}
            Setup::Empty("tc") => {
                let tc = |args: &[&str]| {
                    let mut command = Command::new("tc");
                    command.args(["-n", &lab.lab.server_ns]).args(args);
                    command
                };
                let iface = lab.lab.server_if.as_str();
                run_command(&mut tc(&["qdisc", "add", "dev", iface, "clsact"]))?;
                let object = objects.join("empty_tc.bpf.o").display().to_string();
                run_command(&mut tc(&[
                    "filter",
                    "add",
                    "dev",
                    iface,
                    "ingress",
                    "bpf",
                    "direct-action",
                    "obj",
                    &object,
                    "sec",
                    "tc",
                ]))?;
                let filters =
                    command_output(&mut tc(&["filter", "show", "dev", iface, "ingress"]))?;
                attached.ids = attached_tc_id(&filters).into_iter().collect();
            }
            Setup::Empty(mode) => {
                run_command(Command::new("ip").args([
                    "-n",
                    &lab.lab.server_ns,
                    "link",
                    "set",
                    "dev",
                    &lab.lab.server_if,
                    xdp_kind(mode),
                    "obj",
                    &empty.display().to_string(),
                    "sec",
                    "xdp",
                ]))?;
                attached.ids = attached_xdp_id(&lab.server_link()?).into_iter().collect();
            }
            Setup::Teardown(mode) => {
                let log =
                    std::fs::File::create(workspace_root().join("target/bench/live-teardown.log"))?;
                // Its JSON lines: the flow statistics under the ACK flood
                // ([`Attached::teardown_figures`]).
                let lines = std::fs::File::create(teardown_lines_path())?;
                let mut command = lab.exec(true, &binary.display().to_string());
                command
                    .args(["run", "--iface", &lab.lab.server_if, "--mode", mode])
                    .args(["--json", "--metrics-addr", "off"])
                    .stdout(lines)
                    .stderr(log);
                let child = Background::spawn(&mut command, "teardown run")?;
                let pid = child.pid();
                attached.teardown = Some(child);
                // Attached, and both its programs loaded: the XDP one (or
                // at TC ingress, the TC one) and the TC egress one, which
                // loads (verifies) a second or two after the first.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let names: Vec<String> = program_ids_of(pid)
                        .into_iter()
                        .filter_map(|id| prog_stats(id).ok())
                        .map(|stats| stats.name)
                        .collect();
                    let held = |prefix: &str| names.iter().any(|name| name.starts_with(prefix));
                    if (lab.server_link()?.contains("prog/xdp") || held("teardown_ingres"))
                        && held("teardown_egress")
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "teardown did not attach its ingress and TC egress programs within 30 s (see target/bench/live-teardown.log)"
                        );
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                // Its programs' ids, the attached ones only (the XDP program
                // and the TC egress one; the replay and bench programs are
                // not loaded by `run`).
                attached.ids = program_ids_of(pid);
                thread::sleep(Duration::from_millis(300));
            }
        }
        if let Some(mode) = setup.mode().filter(|mode| *mode != "auto") {
            let link = lab.server_link()?;
            let xdp = if link.contains("xdpgeneric") {
                "skb"
            } else if link.contains("prog/xdp") {
                "native"
            } else {
                "tc"
            };
            if xdp != mode {
                bail!("{} asked, but ip link shows: {link}", setup.label());
            }
        }
        Ok(attached)
    }

    fn stats(&self) -> Vec<ProgStats> {
        self.ids
            .iter()
            .filter_map(|id| prog_stats(*id).ok())
            .collect()
    }

    /// teardown's own figures as of its last `stats` line (one a second),
    /// if it runs here.
    fn teardown_figures(&self) -> Option<TeardownFigures> {
        self.teardown.as_ref()?;
        let text = std::fs::read_to_string(teardown_lines_path()).ok()?;
        // The last whole stats line: the writer may be midway through the
        // file's last line.
        let value = text
            .lines()
            .rev()
            .filter(|line| line.contains(r#""event":"stats""#))
            .find_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())?;
        let count = |section: &str, name: &str| value[section][name].as_u64().unwrap_or(0);
        Some(TeardownFigures {
            created: count("flows", "created"),
            starts_refused: count("flows", "midstream_untracked"),
            resets_skipped: count("kernel_reasons", "reset_events_skipped"),
            events_lost: count("flows", "events_lost")
                + count("kernel_reasons", "reset_events_lost"),
        })
    }

    /// teardown's CPU time so far (user + system), in clock ticks.
    fn teardown_ticks(&self) -> Option<u64> {
        let pid = self.teardown.as_ref()?.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Some(mut teardown) = self.teardown.take() {
            teardown.stop();
        }
        if let Setup::Empty("tc") = self.setup {
            let _ = Command::new("tc")
                .args(["-n", &self.lab.lab.server_ns, "qdisc", "del", "dev"])
                .args([&self.lab.lab.server_if, "clsact"])
                .status();
        } else if let Setup::Empty(mode) = self.setup {
            let _ = Command::new("ip")
                .args([
                    "-n",
                    &self.lab.lab.server_ns,
                    "link",
                    "set",
                    "dev",
                    &self.lab.lab.server_if,
                    if mode == "skb" {
                        "xdpgeneric"
                    } else {
                        "xdpdrv"
                    },
                    "off",
                ])
                .status();
        }
    }
}

/// Where `teardown run` writes its JSON lines in the live bench.
fn teardown_lines_path() -> PathBuf {
    workspace_root().join("target/bench/live-teardown.jsonl")
}

/// teardown's cumulative flow figures that matter under an ACK flood, from
/// its JSON `stats` line.
#[derive(Clone, Copy, Default)]
struct TeardownFigures {
    /// Records created (`flows.created`).
    created: u64,
    /// Mid-stream record starts refused by the budget
    /// (`flows.midstream_untracked`).
    starts_refused: u64,
    /// Reset events the reset program did not send, for connections
    /// without a record (`kernel_reasons.reset_events_skipped`).
    resets_skipped: u64,
    /// Flow and reset events lost in their rings.
    events_lost: u64,
}

impl TeardownFigures {
    fn since(self, before: TeardownFigures) -> TeardownFigures {
        TeardownFigures {
            created: self.created.saturating_sub(before.created),
            starts_refused: self.starts_refused.saturating_sub(before.starts_refused),
            resets_skipped: self.resets_skipped.saturating_sub(before.resets_skipped),
            events_lost: self.events_lost.saturating_sub(before.events_lost),
        }
    }
}

/// Each program that ran between two snapshots: (name, type, runs, ns/run).
type ProgRuns = Vec<(String, String, u64, f64)>;

/// ns per run of each program between two snapshots.
fn per_run(before: &[ProgStats], after: &[ProgStats]) -> ProgRuns {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let runs = a.run_cnt.saturating_sub(b.run_cnt);
            let ns = a.run_time_ns.saturating_sub(b.run_time_ns);
            (
                a.name.clone(),
                a.kind.clone(),
                runs,
                if runs == 0 {
                    0.0
                } else {
                    ns as f64 / runs as f64
                },
            )
        })
        .filter(|(_, _, runs, _)| *runs > 0)
        .collect()
}

fn iperf3_gbits(lab: &LiveLab, seconds: u64) -> anyhow::Result<f64> {
    let text = command_output(lab.exec(false, "iperf3").args([
        "-c",
        SERVER_ADDR,
        "-p",
        "5201",
        "-J",
        "-t",
        &seconds.to_string(),
    ]))?;
    let report: serde_json::Value = serde_json::from_str(&text).context("iperf3 -J")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bits| bits / 1e9)
        .context("iperf3 reported no received bits")
}

/// One configuration's figures in one round.
struct Measured {
    setup: Setup,
    gbits: f64,
    synacks_per_s: f64,
    bulk_progs: ProgRuns,
    flood_progs: ProgRuns,
    cpu_percent: Option<f64>,
    ack_flood: AckFlood,
}

/// One configuration's figures under the random-source ACK flood.
struct AckFlood {
    /// The flood's packets the server received per second.
    received_per_s: f64,
    /// Packets the server sent per second: its resets.
    resets_per_s: f64,
    progs: ProgRuns,
    cpu_percent: Option<f64>,
    /// teardown's, between its last stats lines before and after the
    /// whole flood (its statistics window included).
    figures: Option<TeardownFigures>,
    /// How long the whole flood lasted.
    flooded_seconds: f64,
}

fn measure(
    lab: &LiveLab,
    setup: Setup,
    binary: &Path,
    objects: &Path,
    seconds: u64,
    stats: &StatsWindow,
) -> anyhow::Result<Measured> {
    let attached = Attached::new(lab, setup, binary, objects)?;
    // Each kind of traffic: its throughput with the statistics off, then
    // a window of the same with them on for the programs' ns per run.
    let quiet = attached.stats();
    let gbits = iperf3_gbits(lab, seconds)?;
    ensure_stats_were_off(&quiet, &attached.stats(), "bulk transfer")?;
    let bulk_progs = stats.on(|| {
        let before = attached.stats();
        iperf3_gbits(lab, STATS_WINDOW_SECONDS)?;
        Ok(per_run(&before, &attached.stats()))
    })?;
    let quiet = attached.stats();
    let ticks_before = attached.teardown_ticks();
    let tx_before = lab.server_tx_packets()?;
    let started = Instant::now();
    let mut flood = start_flood(lab, "-S")?;
    thread::sleep(Duration::from_secs(seconds));
    let tx_after = lab.server_tx_packets()?;
    let elapsed = started.elapsed().as_secs_f64();
    let ticks_after = attached.teardown_ticks();
    let quiet_after = attached.stats();
    let flood_progs = stats.on(|| Ok(stats_window(&attached)));
    flood.stop();
    ensure_stats_were_off(&quiet, &quiet_after, "SYN flood")?;
    let flood_progs = flood_progs?;
    // Let the half-open connections' SYN-ACK retransmissions die down,
    // and teardown write a stats line after the flood.
    thread::sleep(Duration::from_millis(1_200));
    let ack_flood = measure_ack_flood(lab, &attached, seconds, stats)?;
    Ok(Measured {
        setup,
        gbits,
        synacks_per_s: (tx_after - tx_before) as f64 / elapsed,
        bulk_progs,
        flood_progs,
        cpu_percent: cpu_percent(ticks_before, ticks_after, elapsed),
        ack_flood,
    })
}

/// Each attached program's runs over a [`STATS_WINDOW_SECONDS`] window of
/// the traffic going on.
fn stats_window(attached: &Attached) -> ProgRuns {
    let before = attached.stats();
    thread::sleep(Duration::from_secs(STATS_WINDOW_SECONDS));
    per_run(&before, &attached.stats())
}

/// teardown's share of a core between two readings of its CPU time (clock
/// ticks) `elapsed` seconds apart, in percent.
fn cpu_percent(before: Option<u64>, after: Option<u64>, elapsed: f64) -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    before
        .zip(after)
        .map(|(b, a)| a.saturating_sub(b) as f64 / hz / elapsed * 100.0)
}

/// `  teardown CPU x %` for a round's line, or nothing without teardown.
fn cpu_words(cpu: Option<f64>) -> String {
    cpu.map(|cpu| format!("  teardown CPU {cpu:.1} %"))
        .unwrap_or_default()
}

/// hping3 flooding the listener from random sources with segments of
/// `flag` (`-S` SYNs, `-A` ACKs), until stopped.
fn start_flood(lab: &LiveLab, flag: &str) -> anyhow::Result<Background> {
    Background::spawn(
        lab.exec(false, "hping3")
            .args([
                "--flood",
                "--rand-source",
                flag,
                "-p",
                FLOOD_PORT,
                SERVER_ADDR,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        &format!("hping3 {flag}"),
    )
}

/// A random-source ACK flood (`hping3 --flood --rand-source -A`) at the
/// listener for `seconds`: every packet a segment of a connection nobody
/// has, which the server answers with a reset, and which teardown would
/// track as a mid-stream record but for its budget under pressure.
fn measure_ack_flood(
    lab: &LiveLab,
    attached: &Attached,
    seconds: u64,
    stats: &StatsWindow,
) -> anyhow::Result<AckFlood> {
    let figures_before = attached.teardown_figures();
    let quiet = attached.stats();
    let ticks_before = attached.teardown_ticks();
    let (rx_before, tx_before) = (lab.server_rx_packets()?, lab.server_tx_packets()?);
    let started = Instant::now();
    let mut flood = start_flood(lab, "-A")?;
    thread::sleep(Duration::from_secs(seconds));
    let (rx_after, tx_after) = (lab.server_rx_packets()?, lab.server_tx_packets()?);
    let elapsed = started.elapsed().as_secs_f64();
    let ticks_after = attached.teardown_ticks();
    let quiet_after = attached.stats();
    let progs = stats.on(|| Ok(stats_window(attached)));
    let flooded_seconds = started.elapsed().as_secs_f64();
    flood.stop();
    ensure_stats_were_off(&quiet, &quiet_after, "ACK flood")?;
    let progs = progs?;
    // A stats line written after the flood.
    thread::sleep(Duration::from_millis(1_200));
    let figures = attached
        .teardown_figures()
        .zip(figures_before)
        .map(|(after, before)| after.since(before));
    Ok(AckFlood {
        received_per_s: rx_after.saturating_sub(rx_before) as f64 / elapsed,
        resets_per_s: tx_after.saturating_sub(tx_before) as f64 / elapsed,
        progs,
        cpu_percent: cpu_percent(ticks_before, ticks_after, elapsed),
        figures,
        flooded_seconds,
    })
}

fn progs_text(progs: &[(String, String, u64, f64)]) -> String {
    if progs.is_empty() {
        return "-".into();
    }
    progs
        .iter()
        .map(|(name, kind, runs, ns)| format!("{name} ({kind}) {ns:.0} ns x {runs}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// The live mode: in two namespaces joined by a veth, bulk TCP (iperf3)
/// and random-source SYN and ACK floods (hping3) with nothing, an empty
/// XDP or TC program, and teardown attached (native XDP, generic XDP, TC),
/// interleaved over rounds; each attached program's ns per run from the
/// kernel's BPF statistics, throughput ratios to the empty program and to
/// none, and under the ACK flood teardown's own figures.
pub fn live(binary: &Path, seconds: u64, rounds: u32) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the live bench creates network namespaces and reads BPF statistics: run it as root (sudo -E cargo xtask bench --live)"
        );
    }
    provision::ensure_packages(
        LIVE_PACKAGES,
        "for the live bench (iperf3 bulk TCP, hping3 SYN flood, bpftool reads the programs' statistics)",
    )?;
    let objects = build_peer_objects()?;
    remove_leftover_namespaces("tdp-", "bench");
    let stats = StatsWindow::take()?;
    let lab = LiveLab::create()?;
    let _iperf = Background::spawn(
        lab.exec(true, "iperf3")
            .args(["-s", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "iperf3 -s",
    )?;
    let _listener = Background::spawn(
        lab.exec(true, "python3").args([
            "-c",
            &format!(
                "import socket, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{SERVER_ADDR}', {FLOOD_PORT}))\ns.listen(16)\ntime.sleep(86400)"
            ),
        ]),
        "the flood's listener",
    )?;
    thread::sleep(Duration::from_millis(500));
    // Which mode `--mode auto` picks on a veth.
    {
        let auto = Attached::new(&lab, Setup::Teardown("auto"), binary, &objects);
        match auto {
            Ok(_) => {
                let link = lab.server_link()?;
                say(&format!(
                    "live: --mode auto on a veth attaches {}",
                    if link.contains("xdpgeneric") {
                        "generic XDP (skb)"
                    } else if link.contains("prog/xdp") {
                        "native XDP"
                    } else {
                        "at TC ingress (tc)"
                    }
                ));
            }
            Err(err) => say(&format!("live: --mode auto: {err:#}")),
        }
    }
    println!(
        "live: {rounds} rounds x ({seconds} s iperf3 bulk + {seconds} s hping3 --flood --rand-source -S + {seconds} s of the same with -A) per configuration, interleaved; throughput and CPU with kernel.bpf_stats_enabled=0 (was {}), ns per run from a further {STATS_WINDOW_SECONDS} s of each with it at 1 (which adds its own ~15-30 ns to every run); 2 shared cores: noisy",
        stats.previous
    );
    let setups = [
        Setup::Nothing,
        Setup::Empty("native"),
        Setup::Teardown("native"),
        Setup::Empty("skb"),
        Setup::Teardown("skb"),
        Setup::Empty("tc"),
        Setup::Teardown("tc"),
    ];
    let mut all: Vec<Measured> = Vec::new();
    for round in 1..=rounds {
        for &setup in &setups {
            let m = measure(&lab, setup, binary, &objects, seconds, &stats)
                .with_context(|| format!("round {round}, {}", setup.label()))?;
            println!(
                "round {round} {:<18} bulk {:>6.2} Gbit/s [{}]  flood {:>8.0} SYN-ACK/s [{}]{}",
                setup.label(),
                m.gbits,
                progs_text(&m.bulk_progs),
                m.synacks_per_s,
                progs_text(&m.flood_progs),
                cpu_words(m.cpu_percent)
            );
            let ack = &m.ack_flood;
            println!(
                "round {round} {:<18} ACK flood {:>8.0} received/s, {:>8.0} RST/s [{}]{}{}",
                setup.label(),
                ack.received_per_s,
                ack.resets_per_s,
                progs_text(&ack.progs),
                cpu_words(ack.cpu_percent),
                ack.figures
                    .map(|f| {
                        let per_s = |count: u64| count as f64 / ack.flooded_seconds;
                        format!(
                            "; records created {:.0}/s, starts refused {:.0}/s, resets skipped {:.0}/s, events lost {}",
                            per_s(f.created),
                            per_s(f.starts_refused),
                            per_s(f.resets_skipped),
                            f.events_lost
                        )
                    })
                    .unwrap_or_default()
            );
            all.push(m);
        }
    }
    let med = |setup: Setup, f: &dyn Fn(&Measured) -> f64| {
        median(all.iter().filter(|m| m.setup == setup).map(f).collect())
    };
    let none_bulk = med(Setup::Nothing, &|m| m.gbits);
    let none_flood = med(Setup::Nothing, &|m| m.synacks_per_s);
    println!(
        "\nmedians over {rounds} rounds\n{:<18} {:>11} {:>8} {:>9} {:>12} {:>8} {:>9}  {:<34} {:<34} {:>7}",
        "configuration",
        "bulk Gbit/s",
        "vs none",
        "vs empty",
        "flood SYNACK/s",
        "vs none",
        "vs empty",
        "ns/run in bulk (in; egress)",
        "ns/run in flood (in; egress)",
        "CPU %"
    );
    for &setup in &setups {
        let bulk = med(setup, &|m| m.gbits);
        let flood = med(setup, &|m| m.synacks_per_s);
        let empty_of = setup.mode().map(Setup::Empty);
        let vs_empty = |value: f64, f: &dyn Fn(&Measured) -> f64| match empty_of {
            Some(empty) if empty != setup => format!("{:.2}x", value / med(empty, f)),
            _ => "-".into(),
        };
        let ns_of = |pick: &dyn Fn(&Measured) -> &ProgRuns| {
            ns_per_run(&all, setup, pick, &["ingress", "egress"])
        };
        let cpu: Vec<f64> = all
            .iter()
            .filter(|m| m.setup == setup)
            .filter_map(|m| m.cpu_percent)
            .collect();
        println!(
            "{:<18} {bulk:>11.2} {:>8} {:>9} {flood:>12.0} {:>8} {:>9}  {:<34} {:<34} {:>7}",
            setup.label(),
            format!("{:.2}x", bulk / none_bulk),
            vs_empty(bulk, &|m| m.gbits),
            format!("{:.2}x", flood / none_flood),
            vs_empty(flood, &|m| m.synacks_per_s),
            ns_of(&|m| &m.bulk_progs),
            ns_of(&|m| &m.flood_progs),
            median_text(cpu, 1)
        );
    }
    ack_flood_table(&all, &setups, rounds);
    drop(lab);
    drop(stats);
    Ok(())
}

/// The medians of `values` with `decimals`, or `-` if there are none.
fn median_text(values: Vec<f64>, decimals: usize) -> String {
    if values.is_empty() {
        "-".into()
    } else {
        format!("{:.decimals$}", median(values))
    }
}

/// The median ns per run of the program of each [`role`] in `roles` over
/// the rounds of `setup`, `;`-separated (`-` for a role that did not run).
fn ns_per_run(
    all: &[Measured],
    setup: Setup,
    pick: &dyn Fn(&Measured) -> &ProgRuns,
    roles: &[&str],
) -> String {
    roles
        .iter()
        .map(|wanted| {
            let values: Vec<f64> = all
                .iter()
                .filter(|m| m.setup == setup)
                .filter_map(|m| {
                    pick(m)
                        .iter()
                        .find(|p| role(&p.0, &p.1) == *wanted)
                        .map(|p| p.3)
                })
                .collect();
            median_text(values, 0)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The medians under the ACK flood: packets received (the rate the sender
/// got through) and resets sent, against no program and the empty one;
/// each program's ns per run (the reset program's too); teardown's CPU
/// and its figures per second of flood (records created, starts refused,
/// reset events skipped), and the events it lost.
fn ack_flood_table(all: &[Measured], setups: &[Setup], rounds: u32) {
    let med = |setup: Setup, f: &dyn Fn(&AckFlood) -> f64| {
        median(
            all.iter()
                .filter(|m| m.setup == setup)
                .map(|m| f(&m.ack_flood))
                .collect(),
        )
    };
    let none = med(Setup::Nothing, &|ack| ack.received_per_s);
    println!(
        "\nunder hping3 --flood --rand-source -A, medians over {rounds} rounds\n{:<18} {:>11} {:>8} {:>9} {:>9}  {:<24} {:>7} {:>9} {:>10} {:>10} {:>8}",
        "configuration",
        "received/s",
        "vs none",
        "vs empty",
        "RST/s",
        "ns/run (in; egress; rst)",
        "CPU %",
        "records/s",
        "refused/s",
        "skipped/s",
        "lost"
    );
    for &setup in setups {
        let received = med(setup, &|ack| ack.received_per_s);
        let vs_empty = match setup.mode().map(Setup::Empty) {
            Some(empty) if empty != setup => {
                format!("{:.2}x", received / med(empty, &|ack| ack.received_per_s))
            }
            _ => "-".into(),
        };
        let ours: Vec<&AckFlood> = all
            .iter()
            .filter(|m| m.setup == setup)
            .map(|m| &m.ack_flood)
            .collect();
        // Per second of the whole flood, its statistics window included;
        // events lost as counted.
        let figure = |f: &dyn Fn(&TeardownFigures) -> u64, per_second: bool| {
            median_text(
                ours.iter()
                    .filter_map(|ack| {
                        let seconds = if per_second { ack.flooded_seconds } else { 1.0 };
                        ack.figures
                            .as_ref()
                            .map(|figures| f(figures) as f64 / seconds)
                    })
                    .collect(),
                0,
            )
        };
        println!(
            "{:<18} {received:>11.0} {:>8} {vs_empty:>9} {:>9.0}  {:<24} {:>7} {:>9} {:>10} {:>10} {:>8}",
            setup.label(),
            format!("{:.2}x", received / none),
            med(setup, &|ack| ack.resets_per_s),
            ns_per_run(
                all,
                setup,
                &|m| &m.ack_flood.progs,
                &["ingress", "egress", "reset"]
            ),
            median_text(ours.iter().filter_map(|ack| ack.cpu_percent).collect(), 1),
            figure(&|f| f.created, true),
            figure(&|f| f.starts_refused, true),
            figure(&|f| f.resets_skipped, true),
            figure(&|f| f.events_lost, false),
        );
    }
}

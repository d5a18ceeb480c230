//! teardown: watches every TCP connection end at XDP line rate.

mod capture;
mod cli;
mod cli_detect;
mod cli_fleet;
mod cmd;
mod conn;
mod flood;
mod kernel;
mod report;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use teardown_common::{
    conn::Timeouts,
    tunnel::{TUNNEL_PORT_SLOTS, TunnelPorts},
};

use crate::{
    cmd::{bench, bench_peers, manual, replay, run},
    report::output,
};

#[derive(Parser)]
#[command(
    name = "teardown",
    version,
    about = "Counts TCP handshakes and teardowns at XDP, live or from captures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[expect(
    clippy::large_enum_variant,
    reason = "`run` carries many flags; the enum is parsed once, so its size is moot"
)]
#[derive(Subcommand)]
enum Command {
    /// Attach to an interface and print live counters until Ctrl-C or SIGTERM.
    Run {
        /// Interface to watch, e.g. eth0; repeat it to watch several in one
        /// process (-i eth0 -i eth1). Each gets a flow table of its own, of
        /// --max-flows connections, and every record says which it was on.
        #[arg(long, short, required = true, value_name = "IFACE",
              value_parser = cli::parse_iface)]
        iface: Vec<String>,
        /// How the ingress program is attached: XDP (native or generic) or TC.
        #[arg(long, short, value_enum, default_value = "auto")]
        mode: cli::ModeArg,
        /// Reporting interval: 1s, 500ms, 2m, 1m30s, or plain seconds.
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
        /// JSON lines instead of a table: one stats object per interval and
        /// one conn object per ended connection.
        #[arg(long, short)]
        json: bool,
        /// Scrolling lines even when stdout is a terminal, instead of the
        /// live dashboard (a pipe or file always gets lines).
        #[arg(long, conflicts_with = "json")]
        plain: bool,
        /// Watch both directions (XDP ingress and TC egress) or ingress only.
        #[arg(long, value_enum, default_value = "both")]
        direction: cli::DirectionArg,
        #[command(flatten)]
        timers: TimerArgs,
        #[command(flatten)]
        tunnels: TunnelArgs,
        /// Connections the flow table holds (rounded up to a power of two),
        /// at 386 bytes of kernel memory each (the default: 48 MiB), per
        /// interface: each --iface has a table of this size. When a
        /// connection's two slots are taken, a one-sided record (half-open
        /// SYN, lone segment) is evicted for it, never a two-sided
        /// connection; both are counted. Refused if the tables (every
        /// interface's together) would take more than half the memory
        /// available.
        #[arg(long, default_value_t = teardown_common::events::DEFAULT_MAX_FLOWS,
              value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
        max_flows: u32,
        /// Timestamps of connection records: `coarse` (the kernel tick,
        /// e.g. 4 ms, nearly free) or `precise` (nanoseconds, costs about as
        /// much again as the parse for every TCP packet).
        #[arg(long, value_enum, default_value = "coarse")]
        clock: cli::ClockArg,
        /// Also append every connection record, as JSON, to this file.
        #[arg(long)]
        log: Option<PathBuf>,
        /// A SYN flood's one-sided records (S0, REJ, OTH from spoofed
        /// sources): `summary` counts them into one `flood_debris` summary
        /// per flooded destination and interval while its alert is active
        /// (real connections keep their full records); `full` writes each.
        #[arg(long, value_enum, default_value = "summary")]
        flood_records: cli::FloodRecordsArg,
        /// Serve Prometheus metrics at HOST:PORT (an IP address; :9464 for
        /// every address), or `off`.
        #[arg(long, value_name = "HOST:PORT", default_value = cli::DEFAULT_METRICS_ADDR,
              value_parser = cli::parse_metrics_addr)]
        metrics_addr: cli::MetricsAddr,
        #[command(flatten)]
        detect: cli_detect::DetectArgs,
        #[command(flatten)]
        fleet: cli_fleet::FleetArgs,
    },
    /// Feed every frame of pcap/pcapng files through the XDP program and print
    /// its counters, or (--connections) its connection records.
    Replay {
        /// One JSON object per file, on its own line.
        #[arg(long, short)]
        json: bool,
        /// Print one JSON record per TCP connection (Zeek conn.log fields and
        /// teardown's close explanation), timed on the capture's clock.
        #[arg(long)]
        connections: bool,
        #[command(flatten)]
        timers: TimerArgs,
        #[command(flatten)]
        tunnels: TunnelArgs,
        /// Capture files (pcap or pcapng).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Measure the program's per-packet cost against an empty XDP program.
    Bench {
        /// Runs per measurement.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
        repeat: u32,
        /// Alternating measurements per frame (the median is reported).
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Only the contention case: two CPUs update one connection's
        /// record at once (XDP ingress and TC egress), --repeat pure ACKs
        /// each; fails unless the record counted every one.
        #[arg(long)]
        contention: bool,
        /// Only the verifier's work to accept each program, against its
        /// limit: seconds, where the whole bench takes minutes (for anyone
        /// changing the programs).
        #[arg(long, conflicts_with_all = ["contention", "peers"])]
        verifier: bool,
        /// Only this case of the per-packet table, repeated for more (with
        /// `est_ack`, which the tunnelled cases' goal is measured against);
        /// no verifier or contention figures. For anyone working on one
        /// path.
        #[arg(long = "case", value_name = "NAME", conflicts_with_all = ["contention", "peers"])]
        cases: Vec<String>,
        /// Instead of the per-packet table, the side-by-side one: the same
        /// frames through teardown, xdp-filter and the bench's conntrack
        /// (`cargo xtask bench --peers` builds and passes the objects).
        #[arg(long, requires = "peer_objects")]
        peers: bool,
        /// With --peers: the directory holding the bench's conntrack.bpf.o
        /// and peer_wrap.bpf.o (built from bench/peers/).
        #[arg(long, value_name = "DIR")]
        peer_objects: Option<PathBuf>,
        /// With --peers: an xdp-filter program object to compare, repeated
        /// for more (default: libxdp's xdpfilt_alw_all.o and
        /// xdpfilt_alw_tcp.o, found under /usr/lib/*/bpf or /usr/lib/bpf).
        #[arg(long, value_name = "FILE")]
        xdp_filter_object: Vec<PathBuf>,
    },
    #[command(flatten)]
    Manual(ManualCommand),
}

impl Cli {
    /// What clap cannot check one value at a time: an interface named
    /// twice (it cannot be attached to twice).
    fn checked(self) -> Result<Cli, clap::Error> {
        use clap::CommandFactory as _;
        if let Command::Run { iface, .. } = &self.command
            && let Some(repeated) = cli::repeated(iface)
        {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("--iface {repeated} is given twice: name each interface once"),
            ));
        }
        // The tunnel ports together (how many, none both kinds'): a usage
        // error like any other, before anything is loaded.
        if let Command::Run { tunnels, .. } | Command::Replay { tunnels, .. } = &self.command
            && let Err(err) = tunnels.ports()
        {
            return Err(
                Cli::command().error(clap::error::ErrorKind::ValueValidation, err.to_string())
            );
        }
        Ok(self)
    }
}

/// Generating the manual (`cargo xtask install`).
#[derive(Subcommand)]
enum ManualCommand {
    /// Print the shell completion script for SHELL on stdout, e.g.
    /// `teardown completions bash > /etc/bash_completion.d/teardown`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (teardown.1, teardown-run.1, ...) into DIR.
    #[command(hide = true)]
    ManPages { dir: PathBuf },
}

/// When connections are reported ended.
#[derive(clap::Args, Clone, Copy, Debug)]
struct TimerArgs {
    /// A SYN with no answer for this long is reported half-open (S0).
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    syn_timeout: Duration,
    /// A connection with no packets for this long is reported idle.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    idle_timeout: Duration,
}

/// Which tunnels are opened. The inner TCP connections of those opened
/// get records of their own, with the tunnel they came through.
#[derive(clap::Args, Clone, Debug)]
struct TunnelArgs {
    /// Open no encapsulation: MPLS, PPPoE, GRE, IP-in-IP, VXLAN and Geneve
    /// frames are counted, their inner connections not tracked.
    #[arg(long, conflicts_with_all = ["vxlan_port", "geneve_port"])]
    no_tunnels: bool,
    /// UDP destination port that carries VXLAN (repeat for up to 4; given,
    /// they replace the defaults 4789 and 8472).
    #[arg(long = "vxlan-port", value_name = "PORT", value_parser = parse_tunnel_port)]
    vxlan_port: Vec<u16>,
    /// UDP destination port that carries Geneve (repeat for up to 4;
    /// given, they replace the default 6081).
    #[arg(long = "geneve-port", value_name = "PORT", value_parser = parse_tunnel_port)]
    geneve_port: Vec<u16>,
}

impl TunnelArgs {
    fn ports(&self) -> anyhow::Result<TunnelPorts> {
        if self.no_tunnels {
            return Ok(TunnelPorts::OFF);
        }
        let mut ports = TunnelPorts::DEFAULT;
        for (given, slots, flag) in [
            (&self.vxlan_port, &mut ports.vxlan, "--vxlan-port"),
            (&self.geneve_port, &mut ports.geneve, "--geneve-port"),
        ] {
            if given.is_empty() {
                continue;
            }
            if given.len() > TUNNEL_PORT_SLOTS {
                anyhow::bail!(
                    "{flag} was given {} times; at most {TUNNEL_PORT_SLOTS} ports can be opened",
                    given.len()
                );
            }
            *slots = [0; TUNNEL_PORT_SLOTS];
            slots[..given.len()].copy_from_slice(given);
        }
        if let Some(port) = ports
            .vxlan
            .iter()
            .find(|port| **port != 0 && ports.geneve.contains(port))
        {
            anyhow::bail!(
                "port {port} would be both VXLAN (--vxlan-port, default 4789 and 8472) and Geneve (--geneve-port, default 6081): give it to one"
            );
        }
        Ok(ports)
    }
}

/// A UDP port for a tunnel: 1 to 65535.
fn parse_tunnel_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("'{text}' is not a UDP port (1 to 65535)")),
    }
}

impl TimerArgs {
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            syn_ns: self.syn_timeout.as_nanos() as u64,
            idle_ns: self.idle_timeout.as_nanos() as u64,
            ..Timeouts::ZEEK
        }
    }
}

/// Parses a timeout: like [`parse_interval`], up to a day, and also in hours ("2h").
fn parse_timeout(text: &str) -> Result<Duration, String> {
    parse_duration(text, 86_400.0, "10ms to 24h")
}

/// Parses "1s", "250ms", "2m" or "1.5" (seconds) into a positive duration of at most an hour.
fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_duration(text, 3_600.0, "10ms to 1h")
}

/// A duration from 10 ms to `max_seconds`; `range` says so in the error.
///
/// Plain seconds (`1.5`), one number with a unit (`250ms`, `0.5s`, `2m`,
/// `1h`), or humantime's spans (`1m30s`, `1min`, `90sec`, `1h 30m`).
fn parse_duration(text: &str, max_seconds: f64, range: &str) -> Result<Duration, String> {
    let text = text.trim();
    let seconds = simple_seconds(text)
        .or_else(|| {
            humantime::parse_duration(text)
                .ok()
                .map(|duration| duration.as_secs_f64())
        })
        .ok_or_else(|| {
            format!("{text:?} is not a duration: use e.g. 1s, 500ms, 2m, 1m30s or plain seconds")
        })?;
    if !(seconds.is_finite() && (0.01..=max_seconds).contains(&seconds)) {
        return Err(format!("{text:?} is out of range: use {range}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Seconds in `text` when it is one number, possibly fractional, with at
/// most one unit (ms, s, m, h): the forms humantime does not take (`1.5`,
/// `0.5s`) and those it does (`2m`).
fn simple_seconds(text: &str) -> Option<f64> {
    let (number, unit_seconds) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = text.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    Some(value * unit_seconds)
}

/// Help and version go out as clap writes them; a usage error becomes one line.
fn usage_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(if err.use_stderr() { 2 } else { 0 });
    }
    output::say(format_args!(
        "teardown: error: {} (see teardown --help)",
        one_line(&err.to_string())
    ));
    ExitCode::from(2)
}

/// clap's message up to its first blank line, joined into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse().and_then(Cli::checked) {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let result = match cli.command {
        Command::Run {
            iface,
            mode,
            interval,
            json,
            plain,
            direction,
            timers,
            tunnels,
            max_flows,
            clock,
            log,
            flood_records,
            metrics_addr,
            detect,
            fleet,
        } => tunnels
            .ports()
            .and_then(|tunnels| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .map(|runtime| (runtime, tunnels))
            })
            .and_then(|(runtime, tunnels)| {
                runtime.block_on(run::run(run::RunOptions {
                    interfaces: iface,
                    mode: mode.into(),
                    interval,
                    json,
                    plain,
                    direction: direction.into(),
                    timeouts: timers.timeouts(),
                    tunnels,
                    max_flows,
                    clock: clock.into(),
                    log,
                    flood_records: flood_records.into(),
                    metrics_addr: metrics_addr.0,
                    detect: detect.config(),
                    fleet: fleet.options(),
                }))
            })
            .map(|()| true),
        Command::Replay {
            json,
            connections,
            timers,
            tunnels,
            files,
        } => {
            if connections {
                tunnels.ports().and_then(|tunnels| {
                    replay::run_connections(
                        &files,
                        &kernel::LoadOptions {
                            timeouts: timers.timeouts(),
                            tunnels,
                            ..kernel::LoadOptions::default()
                        },
                    )
                })
            } else {
                tunnels.ports().and_then(|tunnels| {
                    replay::run(
                        &files,
                        json,
                        &kernel::LoadOptions {
                            tunnels,
                            ..kernel::LoadOptions::default()
                        },
                    )
                })
            }
        }
        Command::Bench {
            json_out,
            verifier: true,
            ..
        } => bench::verifier_only(json_out),
        Command::Bench {
            repeat,
            rounds,
            json_out,
            contention,
            peers,
            peer_objects,
            xdp_filter_object,
            cases,
            ..
        } => match (peers, peer_objects) {
            (true, Some(dir)) => {
                bench_peers::xdp_filter_objects(xdp_filter_object).and_then(|xdp_filter| {
                    bench_peers::run(bench_peers::PeersOptions {
                        repeat,
                        rounds,
                        xdp_filter,
                        conntrack: dir.join("conntrack.bpf.o"),
                        wrapper: dir.join("peer_wrap.bpf.o"),
                        json_out,
                    })
                })
            }
            _ => bench::run(bench::BenchOptions {
                repeat,
                rounds,
                json_out,
                contention_only: contention,
                only_cases: cases,
            }),
        },
        Command::Manual(ManualCommand::Completions { shell }) => {
            use clap::CommandFactory as _;
            manual::completions(Cli::command(), shell).map(|()| true)
        }
        Command::Manual(ManualCommand::ManPages { dir }) => {
            use clap::CommandFactory as _;
            manual::man_pages(Cli::command(), &dir).map(|_| true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            // One line: the operation and every cause, joined.
            output::say(format_args!("teardown: error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_interval;
    use std::time::Duration;

    #[test]
    fn detection_flag_defaults_are_the_documented_defaults() {
        use clap::Parser as _;
        let cli = super::Cli::try_parse_from(["teardown", "run", "--iface", "eth0"])
            .expect("run with only --iface parses");
        let super::Command::Run { detect, .. } = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(detect.config(), crate::flood::DetectConfig::default());
    }

    #[test]
    fn intervals_parse_with_and_without_units() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_interval("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_interval("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("0.5s"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn human_durations_parse() {
        use super::parse_timeout;
        assert_eq!(parse_interval("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("1min"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("90sec"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_interval("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_timeout("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_timeout("2hours"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("1day"), Ok(Duration::from_secs(86_400)));
        assert!(parse_timeout("1day 1s").is_err());
        assert!(parse_interval("1h1s").is_err());
    }

    #[test]
    fn usage_errors_fold_into_one_line() {
        let message = "error: the following required arguments were not provided:\n  --iface <IFACE>\n\nUsage: teardown run --iface <IFACE>\n";
        assert_eq!(
            super::one_line(message),
            "the following required arguments were not provided: --iface <IFACE>"
        );
    }

    #[test]
    fn bad_intervals_are_refused() {
        for bad in [
            "0", "-1s", "abc", "", "5h", "nan", "inf", "2ms", "1m30", "1 parsec", "1y",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad} accepted");
        }
    }
}

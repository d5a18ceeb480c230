//! `cargo xtask`: builds, runs, tests and benchmarks teardown, provisioning
//! what is missing on the way.

mod bench;
mod demo;
// How teardown-ebpf is built, shared with teardown-user's build script,
// which builds it: xtask installs its tools and lints it.
#[path = "../../teardown-user/build/ebpf.rs"]
mod ebpf;
mod fuzz;
mod install;
mod provision;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run, test and benchmark teardown"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the release binary target/release/teardown (its build script
    /// builds the eBPF object it embeds), provisioning the tools first.
    Build,
    /// Install what building the eBPF object needs: rust-src for the
    /// nightly toolchain, and bpf-linker built against the nightly's LLVM
    /// (under ~/.cache/teardown). Plain `cargo build` then works.
    Provision,
    /// Build, then install the binary, its man pages and its shell
    /// completions under ROOT (bin/, share/man/man1/, share/bash-completion/,
    /// share/zsh/, share/fish/).
    Install {
        /// Where to install.
        #[arg(long, default_value = "/usr/local")]
        root: PathBuf,
    },
    /// Build, then pack target/dist/teardown-VERSION-ARCH-linux.tar.gz: what
    /// `install` puts under a root, the licences, the systemd unit and the
    /// logrotate snippet.
    Dist,
    /// Build, then run `teardown run` with the given arguments (as root).
    Run {
        /// Arguments for `teardown run`, e.g. --iface eth0 --json.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// A self-contained lab: two network namespaces, a TCP server, teardown's
    /// live dashboard on the server's side, and a scripted story (graceful
    /// closes, resets, refused connects, a half-close, a SYN flood). As root.
    Demo {
        /// Seconds the SYN flood lasts.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
        flood_seconds: u64,
        /// Leave out the SYN flood.
        #[arg(long)]
        no_flood: bool,
        /// Non-interactive, for CI: no pauses to read, plain lines, and fail
        /// unless teardown reported graceful (SF), reset (RSTO/RSTR) and
        /// refused (REJ) connections.
        #[arg(long)]
        check: bool,
    },
    /// Unit, replay and live tests (needs root and a few Debian packages).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Per-packet cost against an empty XDP program; writes target/bench/xdp.json.
    Bench {
        /// Then the sustained rate of new connections: real connections
        /// through a veth, as fast as they go, with the records teardown
        /// (release) gets right per second, live and replayed; the churn
        /// test's harness, for TEARDOWN_CHURN_SECONDS (default 10), inside
        /// a VXLAN overlay with TEARDOWN_CHURN_LINK=vxlan. As root.
        #[arg(long)]
        churn: bool,
        /// Then the reset program's cost per reset (tcp:tcp_send_reset), as
        /// the kernel's BPF statistics measure it over 20 000 refused
        /// connections. As root.
        #[arg(long)]
        resets: bool,
        /// Instead of the per-packet table, the same frames through
        /// teardown, xdp-filter (Debian's xdp-tools) and the bench's C
        /// conntrack (bench/peers/, built with clang) side by side, in one
        /// run; writes target/bench/peers.json. As root.
        #[arg(long)]
        peers: bool,
        /// Instead of the per-packet table, live in two namespaces: bulk TCP
        /// (iperf3) and random-source SYN and ACK floods (hping3) with no program,
        /// an empty XDP program, an empty TC program and teardown (native XDP, generic XDP, TC ingress);
        /// throughput ratios with the kernel's BPF statistics off, then ns per
        /// run of each attached program from them, switched on for a further
        /// 2 s of the same traffic. As root.
        #[arg(long)]
        live: bool,
        /// With --live: seconds of each bulk transfer and of each flood.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
        live_seconds: u64,
        /// With --live: rounds over the configurations (medians are printed).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
        live_rounds: u32,
        /// Extra arguments for `teardown bench`, e.g. --repeat 200000.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Connection verdicts against Zeek's for testdata/corpus/zeek: a table
    /// per trace, the totals, and every disagreement with its reason.
    Accuracy,
    /// Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the frame parser,
    /// the capture reader and the connection state machine, seeded from the
    /// test captures; fails if a target crashes, naming the input.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        seconds: u64,
        /// Only this target.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS.iter().map(|t| t.name)))]
        target: Option<String>,
    },
    /// cargo fmt --check and clippy -D warnings on the host crates, the eBPF
    /// crate and the fuzz workspace.
    Lint,
}

pub fn say(message: &str) {
    eprintln!("xtask: {message}");
}

pub fn is_root() -> bool {
    command_output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

/// Runs a command, echoing it; fails with its exit status.
pub fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its standard output.
pub fn command_output(command: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .with_context(|| format!("starting {shown}"))?;
    if !output.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// PATH with the cached bpf-linker first.
fn path_with(dir: &Path) -> anyhow::Result<OsString> {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(existing) = env::var_os("PATH") {
        paths.extend(env::split_paths(&existing));
    }
    env::join_paths(paths).context("building PATH")
}

/// A host `cargo` command from the workspace root. teardown-user's build
/// script builds the eBPF object with the tools [`provision::ebpf_tools`]
/// installed.
fn host_cargo() -> Command {
    let mut cargo = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(workspace_root());
    cargo
}

/// What the outer cargo (`cargo xtask` runs on the stable toolchain) sets
/// for its children, and must not leak into a nightly build.
const OUTER_TOOLCHAIN_VARS: &[&str] = &[
    "RUSTC",
    "RUSTUP_TOOLCHAIN",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_ENCODED_RUSTFLAGS",
];

fn build_release() -> anyhow::Result<PathBuf> {
    provision::ebpf_tools()?;
    say("building target/release/teardown (its build script builds the eBPF object it embeds)");
    run_command(host_cargo().args(["build", "--release", "--package", "teardown"]))
        .context("building teardown")?;
    Ok(workspace_root()
        .join("target")
        .join("release")
        .join("teardown"))
}

/// Runs the teardown binary, through sudo when not root (XDP needs it).
fn run_teardown(binary: &Path, args: &[OsString]) -> anyhow::Result<()> {
    let mut command = if is_root() {
        Command::new(binary)
    } else {
        say("teardown needs root to load eBPF: running it through sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg(binary);
        sudo
    };
    command.args(args);
    let status = command.status().context("starting teardown")?;
    if !status.success() {
        // teardown has already said why.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

/// Debian packages the tests use as judges and tools (nftables drops chosen
/// packets inside the live tests' namespaces; prometheus scrapes the
/// metrics endpoint; ethtool turns offloads off for the egress counts;
/// systemd's `systemd-analyze verify` checks the unit in dist/systemd).
const TEST_PACKAGES: &[&str] = &[
    "tshark",
    "tcpdump",
    "iproute2",
    "python3",
    "nftables",
    "prometheus",
    "hping3",
    "ethtool",
    "nfdump",
    "systemd",
    "iperf3",
    // `bpftool net` lists what is attached (outputs, multi_iface),
    // `bpftool prog` the programs' statistics (kernel_reasons).
    "bpftool",
    // teardown-user/tests/bench_peers.rs: the bench's C programs and xdp-filter's.
    "clang",
    "libbpf-dev",
    "xdp-tools",
];

fn test(args: &[OsString]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the tests load eBPF programs and create network namespaces: run them as root (sudo -E cargo xtask test)"
        );
    }
    provision::ensure_packages(
        TEST_PACKAGES,
        "for the tests (tshark is the reference for flag counts, nftables drops packets in live tests, prometheus scrapes the metrics endpoint, nfdump collects IPFIX, iperf3 measures bulk TCP over a veth, bpftool lists what is attached)",
    )?;
    provision::ebpf_tools()?;
    say("running unit, replay and live tests");
    let result = run_command(
        host_cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "teardown-ebpf",
                "--no-fail-fast",
            ])
            .args(args),
    )
    .context("tests failed");
    remove_leftover_namespaces("td-", "test");
    result
}

/// Test namespaces are named `td-<role>-<pid>-<n>` (the demo's
/// `td-demo-<pid>-<role>`) and deleted by the tests (the demo) themselves,
/// even when they fail; this catches a process that was killed outright. A
/// namespace whose process still runs belongs to another test run or demo
/// on this machine and is left alone. Only names starting with `prefix` are
/// considered.
pub fn remove_leftover_namespaces(prefix: &str, kind: &str) {
    let Ok(list) = command_output(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let owner_alive = name
            .split('-')
            .nth(2)
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if name.starts_with(prefix) && !owner_alive {
            say(&format!("removing leftover {kind} namespace {name}"));
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// The churn test's harness as a benchmark (its ignored `churn_rate`),
/// with the release binary: new connections per second and records right
/// per second.
fn bench_churn(binary: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the churn benchmark creates network namespaces and attaches XDP: run it as root (sudo -E cargo xtask bench --churn)"
        );
    }
    provision::ensure_packages(
        &["tcpdump", "iproute2"],
        "for the churn benchmark (tcpdump captures the link whose capture is replayed)",
    )?;
    say("churn: real connections through a veth, teardown (release) on the server's side");
    run_command(
        host_cargo()
            .args(["test", "--package", "teardown", "--test", "churn", "--"])
            .args(["--ignored", "--exact", "churn_rate", "--nocapture"])
            .env("TEARDOWN_CHURN_BIN", binary),
    )
    .context("the churn benchmark")
}

/// The reset program's cost per reset: the kernel_reasons test's ignored
/// `reset_cost`.
fn bench_resets(binary: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the reset benchmark creates network namespaces and reads BPF statistics: run it as root (sudo -E cargo xtask bench --resets)"
        );
    }
    say("resets: refused connections through a veth, the reset program's cost per reset");
    run_command(
        host_cargo()
            .args([
                "test",
                "--package",
                "teardown",
                "--test",
                "kernel_reasons",
                "--",
            ])
            .args(["--ignored", "--exact", "reset_cost", "--nocapture"])
            .env("TEARDOWN_BENCH_BIN", binary),
    )
    .context("the reset benchmark")
}

fn lint() -> anyhow::Result<()> {
    let linker_bin = provision::ebpf_tools()?;
    let root = workspace_root();
    say("cargo fmt --check");
    run_command(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )
    .context("formatting differs: run `cargo fmt --all`")?;
    say("clippy on the host crates");
    run_command(host_cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "teardown-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy (host crates)")?;
    say("clippy on the eBPF crate, for its target");
    // The build script's command, as clippy: the same flags, features and
    // target directory, so the eBPF build is not repeated.
    run_command(
        ebpf::cargo(&root, &root.join("target/ebpf"), &linker_bin, "clippy")
            .args(["--", "-D", "warnings"]),
    )
    .context("clippy (eBPF crate)")?;
    // fuzz/ is a workspace of its own (its targets only build under cargo
    // fuzz), so the commands above do not see it; it is held to the same
    // rules. Clippy checks it as ordinary code, on the stable toolchain.
    let fuzz_manifest = root.join("fuzz/Cargo.toml");
    say("cargo fmt --check and clippy on the fuzz workspace (fuzz/)");
    run_command(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check", "--manifest-path"])
            .arg(&fuzz_manifest),
    )
    .context(
        "formatting differs in fuzz/: run `cargo fmt --all --manifest-path fuzz/Cargo.toml`",
    )?;
    run_command(
        Command::new("cargo")
            .current_dir(&root)
            .args(["clippy", "--manifest-path"])
            .arg(&fuzz_manifest)
            .args(["--workspace", "--all-targets", "--", "-D", "warnings"]),
    )
    .context("clippy (fuzz workspace)")?;
    // The docs are read as much as the code: a broken intra-doc link is an
    // error like any other. Private items too: most of teardown is a
    // binary, whose documentation is all private; so links from public
    // items to private ones resolve, and are allowed.
    say("cargo doc on the host crates, warnings denied");
    run_command(
        host_cargo()
            .args([
                "doc",
                "--workspace",
                "--exclude",
                "teardown-ebpf",
                "--no-deps",
                "--document-private-items",
            ])
            .env(
                "RUSTDOCFLAGS",
                "-D warnings -A rustdoc::private_intra_doc_links",
            ),
    )
    .context("cargo doc (host crates)")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Build => build_release().map(|binary| say(&format!("built {}", binary.display()))),
        Task::Provision => provision::ebpf_tools().map(|linker| {
            say(&format!(
                "ready: the nightly toolchain with rust-src, and bpf-linker in {}; `cargo build` builds the eBPF object",
                linker.display()
            ))
        }),
        Task::Install { root } => {
            build_release().and_then(|binary| install::install(&binary, &root).map(|_| ()))
        }
        Task::Dist => build_release().and_then(|binary| install::dist(&binary).map(|_| ())),
        Task::Run { args } => build_release().and_then(|binary| {
            let mut full = vec![OsString::from("run")];
            full.extend(args);
            run_teardown(&binary, &full)
        }),
        Task::Demo {
            flood_seconds,
            no_flood,
            check,
        } => demo::prepare()
            .and_then(|()| build_release())
            .and_then(|teardown| {
                demo::demo(demo::DemoOptions {
                    teardown,
                    flood_seconds,
                    no_flood,
                    check,
                })
            }),
        Task::Test { args } => test(&args),
        Task::Bench {
            churn,
            resets,
            peers,
            live,
            live_seconds,
            live_rounds,
            args,
        } => build_release().and_then(|binary| {
            if peers || live {
                if peers {
                    bench::peers(&binary, &args)?;
                }
                if live {
                    bench::live(&binary, live_seconds, live_rounds)?;
                }
                return Ok(());
            }
            let mut full = vec![OsString::from("bench"), OsString::from("--json-out")];
            full.push(workspace_root().join("target/bench/xdp.json").into());
            full.extend(args);
            run_teardown(&binary, &full)?;
            if churn {
                bench_churn(&binary)?;
            }
            if resets {
                bench_resets(&binary)?;
            }
            Ok(())
        }),
        Task::Fuzz { seconds, target } => fuzz::fuzz(seconds, target.as_deref()),
        Task::Lint => lint(),
        // The report is the accuracy test's output: one implementation, and the
        // test enforces the goal the report shows.
        Task::Accuracy => test(&[
            "--test".into(),
            "accuracy".into(),
            "--".into(),
            "--nocapture".into(),
        ]),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

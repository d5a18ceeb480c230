//! `cargo xtask fuzz`: coverage-guided fuzzing of the parser, the capture
//! reader and the connection state machine with cargo-fuzz (libFuzzer).
//!
//! Each run seeds the corpora afresh (the fuzz harness's `seed` program
//! reads every capture under `testdata/corpus` and adds crafted frames),
//! builds the targets once, then runs each for the given time with its
//! growing corpus in `fuzz/corpus/<target>` (kept between runs, not
//! committed) and the seeds beside it. libFuzzer's output goes to
//! `target/fuzz/logs/<target>.log`; its progress lines are echoed. A crash
//! stops that target's run, leaves its input in `fuzz/artifacts/<target>/`,
//! and makes the command fail once every target has had its turn.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{OUTER_TOOLCHAIN_VARS, path_with, provision, say, workspace_root};

pub struct Target {
    pub name: &'static str,
    /// libFuzzer's `-max_len`: longer inputs reach nothing new.
    max_len: usize,
}

pub const TARGETS: &[Target] = &[
    // Room for the longest header chain the parser walks (MAX_L4_OFFSET:
    // six IPv6 extension headers of up to 2 KiB each) and a TCP header.
    Target {
        name: "parse_frame",
        max_len: 16 * 1024,
    },
    // The capture seeds are cut to 64 KiB (harness `seeds::MAX_CAPTURE_SEED`).
    Target {
        name: "capture_reader",
        max_len: 64 * 1024,
    },
    // A 14-byte header and up to 291 steps of 14 bytes: histories overflow
    // their 40 letters long before that.
    Target {
        name: "conn_state",
        max_len: 4 * 1024,
    },
    // Encapsulated frames: up to three layers, the inner frame within 512
    // bytes, then the inner headers (the parser's own room, as above).
    Target {
        name: "decapsulate",
        max_len: 16 * 1024,
    },
];

/// libFuzzer's per-input time limit, in seconds: an input that takes this
/// long is a hang, reported like a crash (every target's inputs take
/// microseconds).
const INPUT_TIMEOUT_SECONDS: u32 = 10;

/// What one target's run gave, read from libFuzzer's output.
#[derive(Default)]
struct Outcome {
    name: &'static str,
    runs: Option<u64>,
    exec_per_sec: Option<u64>,
    /// Edges covered, and libFuzzer's finer "features".
    coverage: Option<u64>,
    features: Option<u64>,
    new_units: Option<u64>,
    peak_rss_mb: Option<u64>,
    /// Files and bytes in the target's corpus directory afterwards.
    corpus_files: usize,
    corpus_bytes: u64,
    /// The input that crashed (or hung, or ran out of memory).
    artifact: Option<PathBuf>,
    /// The run failed: a crash, or the fuzzer could not run at all.
    failed: bool,
    log: PathBuf,
}

/// A cargo command with none of the outer (stable) cargo's toolchain
/// settings, from the workspace root.
fn cargo(root: &Path) -> Command {
    let mut cargo = Command::new("cargo");
    cargo.current_dir(root);
    for key in OUTER_TOOLCHAIN_VARS {
        cargo.env_remove(key);
    }
    cargo
}

pub fn fuzz(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let root = workspace_root();
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|target| only.is_none_or(|name| name == target.name))
        .collect();
    provision::nightly_version()?;
    let path = path_with(&provision::ensure_cargo_fuzz()?)?;

    let seeds = root.join("target/fuzz/seeds");
    let captures = root.join("testdata/corpus");
    if captures.is_dir() {
        say(&format!(
            "seeding the corpora from the captures under {} and crafted frames",
            captures.display()
        ));
    } else {
        say(&format!(
            "no {}: seeding the corpora from crafted frames only",
            captures.display()
        ));
    }
    let mut seed = cargo(&root);
    seed.args(["run", "--release", "--quiet", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        .args(["--package", "teardown-fuzz-harness", "--bin", "seed", "--"])
        .arg(&seeds);
    if captures.is_dir() {
        seed.arg(&captures);
    }
    crate::run_command(&mut seed).context("seeding the fuzz corpora")?;

    say(
        "building the fuzz targets (cargo +nightly fuzz build: libFuzzer, AddressSanitizer, overflow checks)",
    );
    let mut build = cargo(&root);
    build
        .args([&format!("+{}", provision::NIGHTLY), "fuzz", "build"])
        .args(only)
        .env("PATH", &path);
    crate::run_command(&mut build).context("building the fuzz targets")?;

    let logs = root.join("target/fuzz/logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut outcomes = Vec::new();
    for target in targets {
        outcomes.push(run_target(&root, &path, target, seconds, &seeds, &logs)?);
    }

    println!("fuzzing, {seconds} s per target:");
    println!(
        "  {:<15} {:>10} {:>8} {:>9} {:>9} {:>20} {:>6}  result",
        "target", "runs", "exec/s", "coverage", "features", "corpus", "new"
    );
    let show = |value: Option<u64>| value.map_or("?".to_string(), |v| v.to_string());
    for outcome in &outcomes {
        println!(
            "  {:<15} {:>10} {:>8} {:>9} {:>9} {:>20} {:>6}  {}",
            outcome.name,
            show(outcome.runs),
            show(outcome.exec_per_sec),
            show(outcome.coverage),
            show(outcome.features),
            format!(
                "{} files {} KiB",
                outcome.corpus_files,
                outcome.corpus_bytes.div_ceil(1024)
            ),
            show(outcome.new_units),
            match (&outcome.artifact, outcome.failed) {
                (Some(_), _) => "CRASH",
                (None, true) => "FAILED",
                (None, false) => "ok",
            }
        );
    }
    println!(
        "  (coverage: edges reached; features: libFuzzer's finer signal; corpus: fuzz/corpus/<target>; peak RSS {} MiB)",
        outcomes
            .iter()
            .filter_map(|outcome| outcome.peak_rss_mb)
            .max()
            .map_or("?".to_string(), |mb| mb.to_string())
    );

    let failed: Vec<&Outcome> = outcomes.iter().filter(|outcome| outcome.failed).collect();
    for outcome in &failed {
        report_failure(&root, outcome, &path);
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|outcome| outcome.name).collect();
        bail!("fuzzing failed: {}", names.join(", "));
    }
    Ok(())
}

/// Runs one target for `seconds`; its output goes to its log, the
/// progress lines to the terminal too.
fn run_target(
    root: &Path,
    path: &std::ffi::OsStr,
    target: &Target,
    seconds: u64,
    seeds: &Path,
    logs: &Path,
) -> anyhow::Result<Outcome> {
    let corpus = root.join("fuzz/corpus").join(target.name);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let log_path = logs.join(format!("{}.log", target.name));
    say(&format!(
        "fuzzing {} for {seconds} s (output in {})",
        target.name,
        log_path.display()
    ));
    let mut log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut run = cargo(root);
    run.args([
        &format!("+{}", provision::NIGHTLY),
        "fuzz",
        "run",
        target.name,
    ])
    .arg(&corpus)
    .arg(seeds.join(target.name))
    .arg("--")
    .args([
        format!("-max_total_time={seconds}"),
        format!("-max_len={}", target.max_len),
        format!("-timeout={INPUT_TIMEOUT_SECONDS}"),
        "-print_final_stats=1".to_string(),
    ])
    .env("PATH", path)
    .stdout(log.try_clone()?)
    .stderr(Stdio::piped());
    let mut child = run
        .spawn()
        .with_context(|| format!("starting cargo fuzz run {}", target.name))?;
    // libFuzzer reports on stderr; cargo-fuzz's own advice after a crash
    // goes to stdout, straight into the log.
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).split(b'\n') {
            let line = String::from_utf8_lossy(&line?).into_owned();
            writeln!(log, "{line}")?;
            if ["INITED", "\tpulse ", "\tDONE ", "panicked at", "ERROR:"]
                .iter()
                .any(|mark| line.contains(mark))
            {
                eprintln!("  {}", line.trim_end());
            }
        }
    }
    let status = child.wait()?;
    drop(log);

    let text = String::from_utf8_lossy(&fs::read(&log_path)?).into_owned();
    let mut outcome = Outcome {
        name: target.name,
        failed: !status.success(),
        log: log_path,
        ..Outcome::default()
    };
    // The last status line: `#N  DONE   cov: C ft: F corp: U/S lim: L exec/s: E rss: R`.
    if let Some(line) = text
        .lines()
        .rev()
        .find(|line| line.starts_with('#') && line.contains(" cov: "))
    {
        let field = |name: &str| -> Option<u64> {
            let mut words = line.split_whitespace();
            words.find(|word| *word == name)?;
            words.next()?.parse().ok()
        };
        outcome.coverage = field("cov:");
        outcome.features = field("ft:");
        outcome.exec_per_sec = field("exec/s:");
        outcome.runs = line[1..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok());
    }
    let stat = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("stat::{name}:")))
            .and_then(|value| value.trim().parse().ok())
    };
    outcome.runs = stat("number_of_executed_units").or(outcome.runs);
    outcome.exec_per_sec = stat("average_exec_per_sec").or(outcome.exec_per_sec);
    outcome.new_units = stat("new_units_added");
    outcome.peak_rss_mb = stat("peak_rss_mb");
    outcome.artifact = text.lines().find_map(|line| {
        let (_, path) = line.split_once("Test unit written to ")?;
        Some(PathBuf::from(path.trim()))
    });
    for entry in fs::read_dir(&corpus)? {
        let metadata = entry?.metadata()?;
        if metadata.is_file() {
            outcome.corpus_files += 1;
            outcome.corpus_bytes += metadata.len();
        }
    }
    Ok(outcome)
}

/// What went wrong, where the input is, and how to run it again.
fn report_failure(root: &Path, outcome: &Outcome, path: &std::ffi::OsStr) {
    let text = fs::read(&outcome.log)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let Some(artifact) = &outcome.artifact else {
        eprintln!(
            "xtask: {} failed without a crash input; the end of {}:",
            outcome.name,
            outcome.log.display()
        );
        for line in &lines[lines.len().saturating_sub(30)..] {
            eprintln!("  {line}");
        }
        return;
    };
    let shown = artifact.strip_prefix(root).unwrap_or(artifact);
    eprintln!(
        "xtask: {} crashed; the input is {}",
        outcome.name,
        shown.display()
    );
    // The panic message (or sanitizer report), up to its backtrace.
    if let Some(start) = lines
        .iter()
        .position(|line| line.contains("panicked at") || line.contains("ERROR: AddressSanitizer"))
    {
        for line in lines[start..]
            .iter()
            .take_while(|line| !line.starts_with("stack backtrace:"))
            .take(12)
        {
            eprintln!("  {line}");
        }
    }
    let cargo_fuzz_dir = std::env::split_paths(path)
        .next()
        .map(|dir| dir.display().to_string())
        .unwrap_or_default();
    eprintln!(
        "  reproduce with libFuzzer: PATH={cargo_fuzz_dir}:$PATH cargo +{} fuzz run {} {}",
        provision::NIGHTLY,
        outcome.name,
        shown.display()
    );
    eprintln!(
        "  or without it, under a debugger if need be: cargo run --manifest-path fuzz/harness/Cargo.toml --bin check -- {} {}",
        outcome.name,
        shown.display()
    );
    eprintln!(
        "  then fix it and keep the input as a regression test (see README, Fuzzing); full output in {}",
        outcome.log.display()
    );
}

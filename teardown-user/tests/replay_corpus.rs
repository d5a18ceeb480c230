//! Every capture of both corpora through the kernel program, judged by tshark.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use serde_json::Value;
use support::{run, shared_dir, teardown_bin};

const JUDGED: [&str; 6] = ["frames", "tcp", "syn", "syn_ack", "fin", "rst"];

fn captures(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|err| panic!("listing {}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no captures in {}", dir.display());
    files
}

fn json_lines(bytes: &[u8]) -> BTreeMap<String, Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("bad JSON line {line:?}: {err}"));
            (value["file"].as_str().expect("file key").to_string(), value)
        })
        .collect()
}

/// Runs tshark over `files` in two processes at once (one per core). With
/// `widen`, the oracle's own counting code runs with its stack pattern's
/// Ethernet prefix widened to the link layers replay converts (Linux cooked,
/// BSD loopback, raw IP), whose frames the oracle would otherwise never count.
fn tshark_counts(oracle: &Path, files: &[PathBuf], widen: bool) -> BTreeMap<String, Value> {
    const WRAPPER: &str = r#"
import importlib.util, json, re, sys
spec = importlib.util.spec_from_file_location("oracle", sys.argv[1])
oracle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(oracle)
prefix = "^(?:eth:ethertype|sll:ethertype|null|loop|raw)"
oracle.STACK = re.compile(oracle.STACK.pattern.replace("^eth:ethertype", prefix, 1))
for path in sys.argv[2:]:
    print(json.dumps(oracle.counts(path)))
"#;
    let halves: Vec<Vec<PathBuf>> = files
        .chunks(files.len().div_ceil(2).max(1))
        .map(<[PathBuf]>::to_vec)
        .collect();
    let workers: Vec<_> = halves
        .into_iter()
        .map(|chunk| {
            let oracle = oracle.to_path_buf();
            thread::spawn(move || {
                let mut command = Command::new("python3");
                if widen {
                    command.args(["-c", WRAPPER]).arg(&oracle);
                } else {
                    command.arg(&oracle);
                }
                run(command.args(&chunk)).stdout
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for worker in workers {
        counts.extend(json_lines(&worker.join().expect("oracle thread")));
    }
    counts
}

#[test]
fn every_corpus_capture_passes_and_matches_tshark_flag_counts() {
    let shared = shared_dir();
    let mut files = captures(&shared.join("corpus/zeek/traces"));
    files.extend(captures(&shared.join("corpus/tcpdump")));

    let replay = run(Command::new(teardown_bin())
        .args(["replay", "--json"])
        .args(&files));
    let ours = json_lines(&replay.stdout);
    assert_eq!(ours.len(), files.len(), "replay must report every file");

    let (ethernet, converted): (Vec<PathBuf>, Vec<PathBuf>) =
        files.iter().cloned().partition(|file| {
            let report = &ours[&file.display().to_string()];
            report["link_types"]
                .as_object()
                .expect("link_types")
                .keys()
                .all(|k| k == "ethernet")
        });
    let oracle = shared.join("oracle/tshark_flag_counts.py");
    let mut judged = tshark_counts(&oracle, &ethernet, false);
    if !converted.is_empty() {
        judged.extend(tshark_counts(&oracle, &converted, true));
    }

    let mut disagreements = Vec::new();
    for file in &files {
        let name = file.display().to_string();
        let report = &ours[&name];
        let reference = judged
            .get(&name)
            .unwrap_or_else(|| panic!("tshark gave no counts for {name}"));
        if report["not_passed"] != 0 {
            disagreements.push(format!(
                "{name}: {} verdicts were not XDP_PASS",
                report["not_passed"]
            ));
        }
        // Every frame of a supported link type was fed to the program.
        let fed = report["packets"].as_u64().expect("packets");
        let skipped = report["unsupported_frames"]
            .as_u64()
            .expect("unsupported_frames");
        if fed + skipped != report["frames"].as_u64().expect("frames") {
            disagreements.push(format!(
                "{name}: {fed} fed + {skipped} skipped != {} frames",
                report["frames"]
            ));
        }
        for key in JUDGED {
            if report[key] != reference[key] {
                disagreements.push(format!(
                    "{name}: {key} teardown {} tshark {}",
                    report[key], reference[key]
                ));
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements with tshark over {} captures:\n{}",
        disagreements.len(),
        files.len(),
        disagreements.join("\n")
    );
    eprintln!(
        "{} captures ({} converted from other link types) agree with tshark",
        files.len(),
        converted.len()
    );
}

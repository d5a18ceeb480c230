//! `teardown bench --peers` (issue 14's side-by-side table): builds the
//! bench's C programs (bench/peers/) with clang, loads xdp-filter's object
//! from xdp-tools, and checks that the table has a row for every frame case
//! with all three programs' figures, and that its JSON carries the same.
//! Short runs: no timing is judged here, only that every program ran every
//! frame to XDP_PASS and the report is whole. As root, with clang,
//! libbpf-dev and xdp-tools installed (`cargo xtask test` installs them).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

const CASES: &[&str] = &[
    "est_ack",
    "est_ack_v6",
    "fin",
    "rst",
    "midstream",
    "vlan_tcp",
    "new_syn",
];
/// teardown, xdp-filter with every feature and with TCP ports only (the
/// default objects), the bench's conntrack.
const PROGRAMS: &[&str] = &["teardown", "xdp-filter", "xdp-filter-tcp", "conntrack"];

fn build_objects(out: &Path) {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/peers");
    let multiarch = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", std::env::consts::ARCH));
    for name in ["conntrack", "peer_wrap"] {
        let status = Command::new("clang")
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .arg("-c")
            .arg(sources.join(format!("{name}.bpf.c")))
            .arg("-o")
            .arg(out.join(format!("{name}.bpf.o")))
            .status()
            .expect("starting clang (apt-get install clang libbpf-dev)");
        assert!(status.success(), "clang failed on {name}.bpf.c");
    }
}

#[test]
fn peers_table_has_every_case_and_program() {
    let dir: PathBuf = std::env::temp_dir().join(format!("td-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    build_objects(&dir);
    let json_path = dir.join("peers.json");
    let output = Command::new(teardown_bin())
        .args(["bench", "--peers", "--repeat", "20000", "--rounds", "1"])
        .arg("--peer-objects")
        .arg(&dir)
        .arg("--json-out")
        .arg(&json_path)
        .output()
        .expect("starting teardown bench --peers");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "teardown bench --peers failed: {stderr}\n{stdout}"
    );

    // The table: a row per case, in order, with the empty program's ns and
    // a "+added (ratio x)" cell per program, then the verdict.
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|line| {
            CASES
                .iter()
                .any(|case| line.split_whitespace().next() == Some(case))
        })
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|row| row.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, CASES, "table rows:\n{stdout}");
    for row in &rows {
        let words: Vec<&str> = row.split_whitespace().collect();
        words[1]
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("empty ns in {row}"));
        for cell in 0..PROGRAMS.len() {
            let added = words[2 + 2 * cell];
            let ratio = words[3 + 2 * cell];
            assert!(
                added.starts_with(['+', '-']) && added[1..].parse::<f64>().is_ok(),
                "added ns {added} in {row}"
            );
            assert!(
                ratio.starts_with('(')
                    && ratio.ends_with("x)")
                    && ratio[1..ratio.len() - 2].parse::<f64>().is_ok(),
                "ratio {ratio} in {row}"
            );
        }
        let verdict = words[2 + 2 * PROGRAMS.len()..].join(" ");
        let named_peers_only = verdict
            .strip_prefix("only ")
            .is_some_and(|list| list.split(", ").all(|peer| PROGRAMS[1..].contains(&peer)));
        assert!(
            verdict == "all" || verdict == "NONE" || named_peers_only,
            "verdict {verdict:?} in {row}"
        );
    }
    assert!(
        stdout.contains("teardown cheaper than every peer (added ns) on "),
        "{stdout}"
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), CASES.len());
    for (row, case) in results.iter().zip(CASES) {
        assert_eq!(row["case"], *case);
        assert!(row["empty_ns"].as_f64().unwrap() > 0.0, "{row}");
        for program in PROGRAMS {
            let figure = &row["programs"][program];
            for field in ["ns", "added_ns", "ratio"] {
                assert!(
                    figure[field].as_f64().is_some(),
                    "{case}: {program}'s {field} missing: {row}"
                );
            }
            assert!(figure["ns"].as_f64().unwrap() > 0.0, "{row}");
        }
        // The verdict agrees with the figures.
        let teardown = row["programs"]["teardown"]["added_ns"].as_f64().unwrap();
        let cheaper: Vec<&str> = row["teardown_cheaper_than"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for peer in &PROGRAMS[1..] {
            let added = row["programs"][peer]["added_ns"].as_f64().unwrap();
            assert_eq!(cheaper.contains(peer), teardown < added, "{row}");
        }
    }
    assert_eq!(report["programs"], serde_json::json!(PROGRAMS));
    let filters = report["xdp_filter"].as_array().expect("xdp_filter");
    assert_eq!(filters.len(), 2, "{filters:?}");
    for filter in filters {
        assert!(
            filter["config"]
                .as_str()
                .is_some_and(|c| c.contains("deny")),
            "the benchmarked xdp-filter configuration is recorded: {filter}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

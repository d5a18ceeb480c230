//! The Prometheus alerting rules shipped in `dist/prometheus/`:
//! `promtool check rules` (valid rules) and `promtool test rules` (each
//! alert fires on what it is meant for, and not on its neighbours). Skipped,
//! saying so, where promtool is not installed (Debian's prometheus package;
//! `cargo xtask test` installs it).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/prometheus")
}

/// Runs `promtool ARGS` in `dist/prometheus`; `None` without promtool.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(dist())
        .output()
    {
        Ok(output) => Some(output),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "skipped: promtool is not installed (Debian's prometheus package; cargo xtask test installs it)"
            );
            None
        }
        Err(err) => panic!("cannot run promtool: {err}"),
    }
}

fn assert_success(output: &std::process::Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_rules_are_valid() {
    let Some(output) = promtool(&["check", "rules", "teardown-rules.yml"]) else {
        return;
    };
    assert_success(&output, "promtool check rules");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("SUCCESS: 9 rules found"), "{said}");
}

#[test]
fn every_alert_fires_on_its_case_only() {
    let Some(output) = promtool(&["test", "rules", "teardown-rules.test.yml"]) else {
        return;
    };
    assert_success(&output, "promtool test rules");
}

/// Every alert in the rules has a test case that expects it to fire.
#[test]
fn every_alert_is_tested() {
    let rules = std::fs::read_to_string(dist().join("teardown-rules.yml")).expect("the rules");
    let tests =
        std::fs::read_to_string(dist().join("teardown-rules.test.yml")).expect("the rule tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 9, "{alerts:?}");
    for alert in alerts {
        let fires = tests
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(alert) && case.contains("exp_labels"));
        assert!(fires, "no test expects {alert} to fire");
    }
}

//! The Grafana dashboard (`dist/grafana/teardown.json`) and the alerting
//! rules (`dist/prometheus/teardown-rules.yml`) against a real scrape: the
//! dashboard is valid JSON with panels that each query something, its
//! queries are valid PromQL (promtool checks them as recording rules, when
//! installed), and every metric the dashboard and the rules name is in
//! what a running teardown serves on /metrics.

mod support;

use std::{
    collections::BTreeSet,
    io::BufRead,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use support::{Lab, TempDir, scrape_metrics, start_teardown, wait_until};

fn dist(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(path)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(dist("grafana/teardown.json")).expect("the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query of the dashboard: the panels' and the variables'.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("an expr").to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    queries
}

/// The names in `text` that are teardown's or the process's metrics.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("teardown_") || word.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "teardown");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("an expr");
            assert!(!metric_names(expr).is_empty(), "{title}: {expr}");
        }
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
    }
    // The panels the issue asks for.
    let all = queries(&dashboard).join("\n");
    for wanted in [
        "flag=\"syn\"",
        "flag=\"syn_ack\"",
        "teardown_connections_ended_by_close_total",
        "teardown_connections_ended_total",
        "teardown_resets_sent_total",
        "teardown_half_open_connections",
        "teardown_syn_flood_alert_active",
    ] {
        assert!(all.contains(wanted), "no query with {wanted}");
    }
}

/// The dashboard's queries as recording rules, for `promtool check rules`:
/// Grafana's variables replaced by what they stand for.
#[test]
fn the_dashboard_queries_are_valid_promql() {
    let dir = TempDir::new("teardown-grafana-promql");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, query) in queries(&dashboard()).iter().enumerate() {
        let query = query
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        let query = match query.strip_prefix("label_values(") {
            // label_values(METRIC, LABEL) is Grafana's, not PromQL: its
            // selector is checked.
            Some(rest) => rest.rsplit_once(',').expect("two arguments").0.to_string(),
            None => query,
        };
        rules.push_str(&format!(
            "      - record: dashboard:query{index}\n        expr: {}\n",
            serde_json::to_string(&query).expect("a YAML string")
        ));
    }
    let path = dir.join("dashboard-rules.yml");
    std::fs::write(&path, &rules).expect("writing the rules");
    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "promtool rejects a query:\n{}{}\n{rules}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: promtool is not installed (Debian's prometheus package)");
        }
        Err(err) => panic!("cannot run promtool: {err}"),
    }
}

#[test]
fn every_metric_the_dashboard_and_the_rules_name_is_served() {
    let lab = Lab::new();
    let (teardown, mut stderr) = start_teardown(
        &lab.server_ns,
        &lab.server_if,
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let mut addr = None;
    for _ in 0..20 {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("teardown's stderr") == 0 {
            break;
        }
        if let Some(rest) = line
            .trim()
            .strip_prefix("teardown: Prometheus metrics at http://")
        {
            addr = rest.strip_suffix("/metrics").map(str::to_string);
            break;
        }
    }
    let addr = addr.expect("teardown said where its metrics are");
    // Until the run loop's first publication the endpoint serves zeros,
    // without the families of the kernel's figures (the host's SYN cookies
    // among them): scraped until they are there.
    let mut body = String::new();
    wait_until(Duration::from_secs(10), || {
        body = scrape_metrics(&lab.server_ns, &addr);
        body.contains("teardown_host_syncookies_sent_total")
    });
    drop(teardown);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    // Families count with or without samples (an alert gauge has none
    // before an alert).
    let served: BTreeSet<String> = body
        .lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if !line.starts_with('#') => line.split(['{', ' ']).next(),
            None => None,
        })
        .map(str::to_string)
        .collect();
    for family in ["process_cpu_seconds_total", "teardown_flow_table_capacity"] {
        assert!(served.contains(family), "{family} not served");
    }

    let rules = std::fs::read_to_string(dist("prometheus/teardown-rules.yml")).expect("the rules");
    for (source, names) in [
        (
            "the dashboard",
            metric_names(&queries(&dashboard()).join("\n")),
        ),
        ("the rules", metric_names(&rules)),
    ] {
        assert!(!names.is_empty());
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| !served.contains(*name))
            .collect();
        assert!(
            missing.is_empty(),
            "{source} names metrics teardown does not serve: {missing:?}"
        );
    }
}

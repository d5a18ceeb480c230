//! The JSON view: `stats` lines at each report and the `final` line, from
//! [`Figures`]. The `stats` object is the figures serialized (their serde
//! attributes are its schema) with `"event": "stats"`; `final` is the subset
//! that makes sense once teardown has stopped: no rates, no alerts (the
//! kernel's reasons are totals, so they stay).

use serde::Serialize;

use teardown_common::counters::Counters;

use crate::report::figures::{
    Figures, FlowFigures, LinesLost, ReasonFigures, Traffic, serialize_totals,
};

#[derive(Serialize)]
struct Stats<'a> {
    event: &'static str,
    #[serde(flatten)]
    figures: &'a Figures,
}

#[derive(Serialize)]
struct Final<'a> {
    event: &'static str,
    ts: f64,
    iface: &'a str,
    totals: Totals,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<EgressTotals>,
    flows: &'a FlowFigures,
    /// Each interface's totals, with several (as in the `stats` lines).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<FinalInterface<'a>>,
    kernel_reasons: &'a ReasonFigures,
    lines_lost: &'a LinesLost,
}

/// One interface's part of the `final` line.
#[derive(Serialize)]
struct FinalInterface<'a> {
    iface: &'a str,
    totals: Totals,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<EgressTotals>,
    flows: &'a FlowFigures,
}

/// Only the totals of a [`Traffic`]: a map of counters.
struct Totals(Counters);

impl Serialize for Totals {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_totals(&self.0, serializer)
    }
}

#[derive(Serialize)]
struct EgressTotals {
    totals: Totals,
}

fn totals(traffic: &Traffic) -> Totals {
    Totals(traffic.totals)
}

/// Serialized through a `serde_json::Value`, whose objects keep their keys
/// sorted: the lines read as they always have, key for key.
fn line(value: impl Serialize) -> String {
    let mut text = serde_json::to_value(value)
        .expect("figures serialize to JSON")
        .to_string();
    text.push('\n');
    text
}

/// The `stats` line of a report (ends in a newline).
pub fn stats(figures: &Figures) -> String {
    line(Stats {
        event: "stats",
        figures,
    })
}

/// The `final` line, once teardown has detached (ends in a newline).
pub fn final_line(figures: &Figures) -> String {
    line(Final {
        event: "final",
        ts: figures.ts,
        iface: &figures.iface,
        totals: totals(&figures.received),
        egress: figures.egress.as_ref().map(|egress| EgressTotals {
            totals: totals(egress),
        }),
        flows: &figures.flows,
        interfaces: if figures.interfaces.len() > 1 {
            figures
                .interfaces
                .iter()
                .map(|one| FinalInterface {
                    iface: &one.iface,
                    totals: totals(&one.received),
                    egress: one.egress.as_ref().map(|egress| EgressTotals {
                        totals: totals(egress),
                    }),
                    flows: &one.flows,
                })
                .collect()
        } else {
            Vec::new()
        },
        kernel_reasons: &figures.reasons,
        lines_lost: &figures.lines_lost,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::report::figures::tests::busy_figures;

    fn parse(line: &str) -> Value {
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        serde_json::from_str(line).expect("one JSON object")
    }

    #[test]
    fn stats_lines_carry_every_figure() {
        let value = parse(&stats(&busy_figures()));
        assert_eq!(value["event"], "stats");
        assert_eq!(value["iface"], "eth0");
        assert_eq!(value["interval"], 2.0);
        assert_eq!(value["ts"], 1_700_000_100.5);
        assert_eq!(
            value["totals"]["syn"],
            busy_figures()
                .received
                .totals
                .get(teardown_common::counters::Counter::Syn)
        );
        assert!(value["rates"].is_object() && value["egress"]["rates"].is_object());
        assert_eq!(value["flows"]["tracked"], 3);
        assert_eq!(value["alerts"]["started"], 2);
        assert_eq!(value["lines_lost"]["log"], 12);
    }

    #[test]
    fn the_final_line_has_totals_only() {
        let value = parse(&final_line(&busy_figures()));
        let mut keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "egress",
                "event",
                "flows",
                "iface",
                "kernel_reasons",
                "lines_lost",
                "totals",
                "ts"
            ]
        );
        assert_eq!(value["event"], "final");
        assert_eq!(value["totals"]["packets"], 1000);
        assert_eq!(value["egress"].as_object().unwrap().len(), 1, "{value}");
        assert_eq!(value["egress"]["totals"]["packets"], 2000);
        assert_eq!(value["flows"]["ended_by_conn_state"]["SF"], 7);

        let mut ingress = busy_figures();
        ingress.egress = None;
        assert_eq!(parse(&final_line(&ingress)).get("egress"), None);
    }
}

//! `teardown bench`: the program's per-packet cost against an empty XDP
//! program, both measured in the same run on the same frames.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use serde_json::json;
use teardown_common::{
    craft::{self, Network, Spec, Transport},
    names,
    parse::{ethertype, tcp_flags},
};

use crate::kernel::Kernel;

pub struct BenchOptions {
    /// Runs per BPF_PROG_TEST_RUN call.
    pub repeat: u32,
    /// Alternating baseline/program measurements per frame; the median is kept.
    pub rounds: u32,
    pub json_out: Option<PathBuf>,
}

/// Goal for counter-only paths: at most this many times the empty program.
const COUNTER_GOAL: f64 = 1.5;

fn cases() -> Vec<(&'static str, craft::Frame)> {
    use tcp_flags::{ACK, FIN, PSH, RST, SYN};
    let mut vlan = Spec::tcp_v4(ACK, 0);
    vlan.vlans = &[(ethertype::VLAN, 100)];
    let mut udp = Spec::tcp_v4(0, 64);
    udp.transport = Transport::Udp {
        src_port: 5353,
        dst_port: 53,
    };
    let arp = Spec {
        network: Network::Arp,
        ..Spec::tcp_v4(0, 0)
    };
    vec![
        ("syn", craft::build(&Spec::tcp_v4(SYN, 0))),
        ("syn_ack", craft::build(&Spec::tcp_v4(SYN | ACK, 0))),
        ("pure_ack", craft::build(&Spec::tcp_v4(ACK, 0))),
        ("data", craft::build(&Spec::tcp_v4(ACK | PSH, 1400))),
        ("fin", craft::build(&Spec::tcp_v4(FIN | ACK, 0))),
        ("rst", craft::build(&Spec::tcp_v4(RST | ACK, 0))),
        ("ipv6_tcp", craft::build(&Spec::tcp_v6(ACK, 0))),
        ("vlan_tcp", craft::build(&vlan)),
        ("udp", craft::build(&udp)),
        ("arp", craft::build(&arp)),
    ]
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len().is_multiple_of(2) {
        (samples[mid - 1] + samples[mid]) / 2.0
    } else {
        samples[mid]
    }
}

pub fn run(options: BenchOptions) -> anyhow::Result<()> {
    if options.repeat == 0 || options.rounds == 0 {
        bail!("--repeat and --rounds must be at least 1");
    }
    let mut kernel = Kernel::load(&crate::kernel::LoadOptions::default())?;
    println!(
        "per-packet cost: kernel-timed BPF_PROG_TEST_RUN, {} runs x {} rounds, median; baseline = empty XDP_PASS program",
        options.repeat, options.rounds
    );
    println!(
        "{:<10} {:>12} {:>12} {:>7}  goal",
        "frame", "baseline ns", "teardown ns", "ratio"
    );
    let mut results = Vec::new();
    let mut over_goal = 0;
    for (name, frame) in cases() {
        let mut baseline = Vec::new();
        let mut program = Vec::new();
        // Warm caches and the JIT image once before measuring.
        kernel.time_run(names::XDP_BASELINE_PROGRAM, &frame, 1000)?;
        kernel.time_run(names::XDP_PROGRAM, &frame, 1000)?;
        for _ in 0..options.rounds {
            // Alternate so drift on a noisy machine hits both alike.
            let (_, base_ns) =
                kernel.time_run(names::XDP_BASELINE_PROGRAM, &frame, options.repeat)?;
            let (verdict, prog_ns) = kernel.time_run(names::XDP_PROGRAM, &frame, options.repeat)?;
            if verdict != 2 {
                bail!("teardown returned verdict {verdict} for the {name} frame, not XDP_PASS");
            }
            baseline.push(base_ns);
            program.push(prog_ns);
        }
        let base = median(&mut baseline);
        let prog = median(&mut program);
        let ratio = prog / base;
        let within = ratio <= COUNTER_GOAL;
        if !within {
            over_goal += 1;
        }
        println!(
            "{name:<10} {base:>12.2} {prog:>12.2} {ratio:>6.2}x  {}",
            if within { "ok" } else { "over" }
        );
        results.push(json!({
            "frame": name,
            "baseline_ns": (base * 100.0).round() / 100.0,
            "program_ns": (prog * 100.0).round() / 100.0,
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "goal": COUNTER_GOAL,
            "within_goal": within,
        }));
    }
    println!(
        "{} of {} frames within {COUNTER_GOAL}x of the empty program",
        results.len() - over_goal,
        results.len()
    );
    if let Some(path) = options.json_out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let report = json!({
            "method": "kernel-timed BPF_PROG_TEST_RUN (whole ns + 0.5), median of alternating rounds",
            "repeat": options.repeat,
            "rounds": options.rounds,
            "results": results,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

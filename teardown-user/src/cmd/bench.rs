//! `teardown bench`: the program's per-packet cost against an empty XDP
//! program, both measured in the same run on the same frames.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;
use teardown_common::{
    craft::{self, Network, Spec, Transport},
    dest::sample_mask_for,
    names,
    parse::{ethertype, tcp_flags},
};

use crate::kernel::{ClockMode, Kernel, LoadOptions, VERIFIER_INSN_LIMIT};
use crate::report::output::outln;

/// SYNs per 100 ms poll of the flood `new_syn` stands for (a million a second).
pub(super) const FLOOD_SYNS_PER_POLL: u64 = 100_000;

/// The contention case's fewest runs per CPU.
const CONTENTION_MIN_REPEAT: u32 = 1_000_000;

pub struct BenchOptions {
    /// Runs per BPF_PROG_TEST_RUN call.
    pub repeat: u32,
    /// Alternating baseline/program measurements per frame; the median is kept.
    pub rounds: u32,
    pub json_out: Option<PathBuf>,
    /// Only the contention case ([`crate::cmd::contention`]).
    pub contention_only: bool,
    /// Only these cases of the per-packet table (and [`TUNNEL_BASE`]); no
    /// verifier or contention figures. Empty: every case.
    pub only_cases: Vec<String>,
}

/// How a case's frame changes between runs (the eBPF `BENCH` map's modes).
#[derive(Clone, Copy)]
pub(super) enum Change {
    None,
    /// A new IPv4 source address every run: each SYN a new connection.
    NewSource,
    /// The sequence number advances by the payload each run: in-order data.
    AdvanceSeq {
        step: u64,
        first: u64,
    },
}

pub(super) struct Case {
    pub(super) name: &'static str,
    /// Frames run once first (a handshake, so the connection is established).
    pub(super) setup: Vec<craft::Frame>,
    pub(super) frame: craft::Frame,
    pub(super) change: Change,
    /// The open issues' goal for the case ([`Goal`]: ns added, a ratio to
    /// the empty program, or for a tunnelled case a multiple of
    /// [`TUNNEL_BASE`]'s added ns in the same run); None: reported only.
    goal: Option<Goal>,
}

#[derive(Clone, Copy)]
pub(super) enum Goal {
    /// At most this many ns over the empty program (issue 14's budgets).
    AddedNs(f64),
    /// A ratio to the empty program.
    Ratio(f64),
    /// A multiple of [`TUNNEL_BASE`]'s added ns: the same segment
    /// untunnelled (issue 13: at most twice).
    Untunnelled(f64),
}

/// The untunnelled case each tunnelled case carries the segment of.
pub(super) const TUNNEL_BASE: &str = "est_ack";

/// A tunnelled segment: at most twice the same segment untunnelled.
const TUNNEL_GOAL: Goal = Goal::Untunnelled(2.0);

/// Issue 14's budgets, in ns added over the empty program: an established
/// connection's ACK or data, IPv4 or IPv6, at most 8; a FIN, a RST, a SYN,
/// a VLAN-tagged segment and a segment of a flow whose handshake was not
/// seen, at most 15 each. The first segment of such a flow
/// (`midstream_new`, a record created or refused by the mid-stream
/// budget: an ACK flood's path) has none and is reported. Counter-only
/// frames keep issue 3's 1.5 times the empty program.
const ESTABLISHED_GOAL: Goal = Goal::AddedNs(8.0);
const CLOSE_AND_NEW_GOAL: Goal = Goal::AddedNs(15.0);
const COUNTER_GOAL: Goal = Goal::Ratio(1.5);

/// A client port per case, so each case has its own connection.
fn on_port(mut spec: Spec<'static>, port: u16, seq: u32, ack: u32) -> Spec<'static> {
    if let Transport::Tcp {
        src_port,
        dst_port,
        seq: s,
        ack: a,
        ..
    } = &mut spec.transport
    {
        if *src_port == 80 {
            *dst_port = port;
        } else {
            *src_port = port;
        }
        *s = seq;
        *a = ack;
    }
    spec
}

/// `frame` in VXLAN over IPv4 to port 4789, VNI 4242.
fn in_vxlan(frame: &craft::Frame) -> craft::Frame {
    in_vxlan_over(frame, false)
}

/// `frame` in VXLAN to port 4789, VNI 4242, over IPv6 when `outer_v6`.
fn in_vxlan_over(frame: &craft::Frame, outer_v6: bool) -> craft::Frame {
    let vxlan = craft::Encap::Vxlan {
        vni: 4242,
        port: 4789,
        outer_v6,
    };
    craft::wrap(frame.as_bytes(), &vxlan, &[])
}

const VLAN_100: &[(u16, u16)] = &[(ethertype::VLAN, 100)];
const QINQ: &[(u16, u16)] = &[(ethertype::QINQ, 10), (ethertype::VLAN, 20)];

/// `frame` in VXLAN over IPv4 behind the outer tags `vlans`.
fn in_tagged_vxlan(frame: &craft::Frame, vlans: &[(u16, u16)]) -> craft::Frame {
    let vxlan = craft::Encap::Vxlan {
        vni: 4242,
        port: 4789,
        outer_v6: false,
    };
    craft::wrap(frame.as_bytes(), &vxlan, vlans)
}

/// `frame` in Geneve over IPv4 with 8 bytes of options, Ethernet inside.
fn in_geneve_option(frame: &craft::Frame) -> craft::Frame {
    let geneve = craft::Encap::Geneve {
        vni: 4242,
        options_len: 8,
        ethernet: true,
        outer_v6: false,
    };
    craft::wrap(frame.as_bytes(), &geneve, &[])
}

/// `frame` under two MPLS labels, as a carrier's core carries it.
fn in_mpls(frame: &craft::Frame) -> craft::Frame {
    craft::wrap(
        frame.as_bytes(),
        &craft::Encap::Mpls {
            labels: &[1000, 2000],
        },
        &[],
    )
}

/// `frame` in a PPPoE session on a QinQ-tagged link, as a broadband
/// access network carries it.
fn in_qinq_pppoe(frame: &craft::Frame) -> craft::Frame {
    craft::wrap(frame.as_bytes(), &craft::Encap::Pppoe { session: 7 }, QINQ)
}

/// `frame` behind a VN-Tag (a fabric extender's), which only the general
/// way reads.
fn in_vntag(frame: &craft::Frame) -> craft::Frame {
    craft::wrap(frame.as_bytes(), &craft::Encap::VnTag { vif: 9 }, &[])
}

/// `frame` in VXLAN, itself in GRE with a key: two layers, nested.
fn in_gre_vxlan(frame: &craft::Frame) -> craft::Frame {
    in_gre(&in_vxlan(frame))
}

/// `frame` in GRE over IPv4 with a key, IP inside.
fn in_gre(frame: &craft::Frame) -> craft::Frame {
    let gre = craft::Encap::Gre {
        key: Some(42),
        checksum: false,
        sequence: false,
        ethernet: false,
        outer_v6: false,
    };
    craft::wrap(frame.as_bytes(), &gre, &[])
}

/// SYN (seq 1000), SYN-ACK (seq 5000), ACK: an established connection.
fn handshake(v6: bool, port: u16) -> Vec<craft::Frame> {
    handshake_of(
        |flags| {
            if v6 {
                Spec::tcp_v6(flags, 0)
            } else {
                Spec::tcp_v4(flags, 0)
            }
        },
        port,
    )
}

/// [`handshake`] of segments built on `base` (e.g. VLAN-tagged ones).
fn handshake_of(base: impl Fn(u8) -> Spec<'static>, port: u16) -> Vec<craft::Frame> {
    use tcp_flags::{ACK, SYN};
    vec![
        craft::build(&on_port(base(SYN), port, 1000, 0)),
        craft::build(&on_port(base(SYN | ACK).reversed(), port, 5000, 1001)),
        craft::build(&on_port(base(ACK), port, 1001, 5001)),
    ]
}

pub(super) fn cases() -> Vec<Case> {
    use tcp_flags::{ACK, FIN, PSH, RST, SYN};
    let vlan = |flags| {
        let mut spec = Spec::tcp_v4(flags, 0);
        spec.vlans = &[(ethertype::VLAN, 100)];
        spec
    };
    let mut udp = Spec::tcp_v4(0, 64);
    udp.transport = Transport::Udp {
        src_port: 5353,
        dst_port: 53,
    };
    let arp = Spec {
        network: Network::Arp,
        ..Spec::tcp_v4(0, 0)
    };
    let established = |name, v6: bool, port, flags, len: u16, change, goal| Case {
        name,
        setup: handshake(v6, port),
        frame: craft::build(&on_port(
            if v6 {
                Spec::tcp_v6(flags, len)
            } else {
                Spec::tcp_v4(flags, len)
            },
            port,
            1001,
            5001,
        )),
        change,
        goal,
    };
    vec![
        Case {
            name: "new_syn",
            setup: vec![],
            frame: craft::build(&on_port(Spec::tcp_v4(SYN, 0), 40100, 1000, 0)),
            change: Change::NewSource,
            goal: Some(CLOSE_AND_NEW_GOAL),
        },
        established(
            "est_ack",
            false,
            40101,
            ACK,
            0,
            Change::None,
            Some(ESTABLISHED_GOAL),
        ),
        established(
            "est_data",
            false,
            40102,
            ACK | PSH,
            1400,
            Change::AdvanceSeq {
                step: 1400,
                first: 1001,
            },
            Some(ESTABLISHED_GOAL),
        ),
        established(
            "est_ack_v6",
            true,
            40103,
            ACK,
            0,
            Change::None,
            Some(ESTABLISHED_GOAL),
        ),
        established(
            "fin",
            false,
            40104,
            FIN | ACK,
            0,
            Change::None,
            Some(CLOSE_AND_NEW_GOAL),
        ),
        established(
            "rst",
            false,
            40105,
            RST | ACK,
            0,
            Change::None,
            Some(CLOSE_AND_NEW_GOAL),
        ),
        Case {
            name: "vlan_tcp",
            setup: handshake_of(vlan, 40106),
            frame: craft::build(&on_port(vlan(ACK), 40106, 1001, 5001)),
            change: Change::None,
            goal: Some(CLOSE_AND_NEW_GOAL),
        },
        // A connection already open when teardown started: its handshake
        // never seen. The first run creates its record; the others are its
        // later segments, as every packet of such a flow after its first.
        Case {
            name: "midstream",
            setup: vec![],
            frame: craft::build(&on_port(Spec::tcp_v4(ACK, 0), 40107, 7001, 9001)),
            change: Change::None,
            goal: Some(CLOSE_AND_NEW_GOAL),
        },
        // The first segment of such a flow, a new one every run (a new
        // source address): its record created, until the table fills and
        // comes under pressure; from then on most are refused by the
        // mid-stream budget (an ACK flood's path).
        Case {
            name: "midstream_new",
            setup: vec![],
            frame: craft::build(&on_port(Spec::tcp_v4(ACK, 0), 40108, 7001, 9001)),
            change: Change::NewSource,
            goal: None,
        },
        // est_ack's segment inside VXLAN (UDP 4789, VNI 4242), its
        // handshake through the same tunnel: the common tunnelled frame,
        // read by the main program's shortcut. Issue 13 asks for at most
        // twice est_ack's cost.
        Case {
            name: "vxlan_ack",
            setup: handshake(false, 40109).iter().map(in_vxlan).collect(),
            frame: in_vxlan(&craft::build(&on_port(
                Spec::tcp_v4(ACK, 0),
                40109,
                1001,
                5001,
            ))),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        // The same over an IPv6 underlay: the shortcut too.
        Case {
            name: "vxlan6_ack",
            setup: handshake(false, 40111)
                .iter()
                .map(|frame| in_vxlan_over(frame, true))
                .collect(),
            frame: in_vxlan_over(
                &craft::build(&on_port(Spec::tcp_v4(ACK, 0), 40111, 1001, 5001)),
                true,
            ),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        // The same inside GRE with a key: the shortcut too.
        Case {
            name: "gre_ack",
            setup: handshake(false, 40110).iter().map(in_gre).collect(),
            frame: in_gre(&craft::build(&on_port(
                Spec::tcp_v4(ACK, 0),
                40110,
                1001,
                5001,
            ))),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        // The same under two MPLS labels: by tail call to the tunnel
        // program, whose shortcut reads it (as PPPoE).
        Case {
            name: "mpls_ack",
            setup: handshake(false, 40112).iter().map(in_mpls).collect(),
            frame: in_mpls(&craft::build(&on_port(
                Spec::tcp_v4(ACK, 0),
                40112,
                1001,
                5001,
            ))),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        // VXLAN on a VLAN-tagged underlay (by tail call to the tunnel
        // program, whose shortcut reads it), and Geneve with an 8-byte
        // option (as OVN sends it; the main program's shortcut).
        Case {
            name: "vlan_vxlan_ack",
            setup: handshake(false, 40113)
                .iter()
                .map(|frame| in_tagged_vxlan(frame, VLAN_100))
                .collect(),
            frame: in_tagged_vxlan(
                &craft::build(&on_port(Spec::tcp_v4(ACK, 0), 40113, 1001, 5001)),
                VLAN_100,
            ),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        Case {
            name: "geneve_opt_ack",
            setup: handshake(false, 40114)
                .iter()
                .map(in_geneve_option)
                .collect(),
            frame: in_geneve_option(&craft::build(&on_port(
                Spec::tcp_v4(ACK, 0),
                40114,
                1001,
                5001,
            ))),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        // VXLAN on a QinQ-tagged underlay, and PPPoE on a QinQ-tagged
        // access link: the tunnel program's shortcuts.
        Case {
            name: "qinq_vxlan_ack",
            setup: handshake(false, 40115)
                .iter()
                .map(|frame| in_tagged_vxlan(frame, QINQ))
                .collect(),
            frame: in_tagged_vxlan(
                &craft::build(&on_port(Spec::tcp_v4(ACK, 0), 40115, 1001, 5001)),
                QINQ,
            ),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        Case {
            name: "qinq_pppoe_ack",
            setup: handshake(false, 40116).iter().map(in_qinq_pppoe).collect(),
            frame: in_qinq_pppoe(&craft::build(&on_port(
                Spec::tcp_v4(ACK, 0),
                40116,
                1001,
                5001,
            ))),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        // VXLAN inside GRE: the general way, by tail call to the tunnel
        // program, which opens the layers one by one, as every
        // encapsulation no shortcut reads goes (nesting, link-layer shims,
        // deeper MPLS stacks, pseudowires).
        Case {
            name: "gre_vxlan_ack",
            setup: handshake(false, 40117).iter().map(in_gre_vxlan).collect(),
            frame: in_gre_vxlan(&craft::build(&on_port(
                Spec::tcp_v4(ACK, 0),
                40117,
                1001,
                5001,
            ))),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        Case {
            name: "vntag_ack",
            setup: handshake(false, 40118).iter().map(in_vntag).collect(),
            frame: in_vntag(&craft::build(&on_port(
                Spec::tcp_v4(ACK, 0),
                40118,
                1001,
                5001,
            ))),
            change: Change::None,
            goal: Some(TUNNEL_GOAL),
        },
        Case {
            name: "udp",
            setup: vec![],
            frame: craft::build(&udp),
            change: Change::None,
            goal: Some(COUNTER_GOAL),
        },
        Case {
            name: "arp",
            setup: vec![],
            frame: craft::build(&arp),
            change: Change::None,
            goal: Some(COUNTER_GOAL),
        },
    ]
}

/// The kernel's switch for BPF run-time statistics. With it on, every
/// program run (the empty one's too) also reads the clock twice and adds to
/// per-CPU counters, about 30 ns here: ratios then understate the program's
/// cost, so the bench measures with it off.
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` held at 0 for the bench's run and put back
/// as it was when dropped (on success and on error; not if the process is
/// killed).
pub(super) struct StatsOff {
    pub(super) previous: String,
}

impl StatsOff {
    /// Switches the statistics off, or says in one line why it cannot:
    /// not root, or another process holds them on through a
    /// `BPF_ENABLE_STATS` descriptor, which the sysctl does not override.
    pub(super) fn switch() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        if let Some(pid) = stats_descriptor_holder() {
            bail!(
                "process {pid} holds BPF statistics on (a BPF_ENABLE_STATS descriptor), which adds its own cost to every run: not measuring until it lets go"
            );
        }
        if previous != "0" {
            std::fs::write(STATS_SYSCTL, "0").with_context(|| {
                format!("cannot switch kernel.bpf_stats_enabled off for the bench (it is {previous}; needs root)")
            })?;
        }
        Ok(StatsOff { previous })
    }

    /// Fails if someone switched the statistics back on mid-run.
    pub(super) fn still_off(&self) -> anyhow::Result<()> {
        let now = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("reading {STATS_SYSCTL}"))?;
        if now.trim() != "0" {
            bail!(
                "another process switched kernel.bpf_stats_enabled on during the bench: its figures are not comparable, discarded"
            );
        }
        Ok(())
    }
}

impl Drop for StatsOff {
    fn drop(&mut self) {
        if self.previous != "0"
            && let Err(err) = std::fs::write(STATS_SYSCTL, &self.previous)
        {
            crate::report::output::say(format_args!(
                "teardown: could not restore kernel.bpf_stats_enabled to {}: {err}",
                self.previous
            ));
        }
    }
}

/// A process holding a `BPF_ENABLE_STATS` descriptor (an anonymous inode
/// named `bpf-stats`), if any.
fn stats_descriptor_holder() -> Option<u32> {
    let processes = std::fs::read_dir("/proc").ok()?;
    processes
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-stats")
                })
            })
        })
}

/// The verifier's work to accept each program `teardown run` and
/// `teardown replay` load, against its limit per program: every
/// instruction added to a program's paths is paid for on each path, and
/// a program over the limit does not load at all. Printed and returned
/// for the JSON report.
fn verifier_budget() -> anyhow::Result<serde_json::Value> {
    let mut kernel = Kernel::load(&LoadOptions::default())?;
    outln!(
        "\nverifier: instructions processed to accept each program (limit {} per program)",
        VERIFIER_INSN_LIMIT
    );
    // The TC programs (and their tunnel programs) as loaded for an
    // interface whose packets start with their IP header (a tun or
    // WireGuard device): the verifier walks the other way of reading
    // them, the Ethernet one dropped as dead code.
    let mut ip_link_kernel = Kernel::load(&LoadOptions {
        ip_link: true,
        ..LoadOptions::default()
    })?;
    let mut rows = Vec::new();
    for (name, ip_link) in [
        (names::XDP_PROGRAM, false),
        (names::TC_EGRESS_PROGRAM, false),
        (names::XDP_REPLAY_PROGRAM, false),
        (names::XDP_TUNNEL_PROGRAM, false),
        (names::TC_TUNNEL_PROGRAM, false),
        (names::XDP_TUNNEL_REPLAY_PROGRAM, false),
        (names::TC_INGRESS_PROGRAM, false),
        (names::TC_TUNNEL_INGRESS_PROGRAM, false),
        (names::TC_INGRESS_PROGRAM, true),
        (names::TC_EGRESS_PROGRAM, true),
        (names::TC_TUNNEL_INGRESS_PROGRAM, true),
        (names::TC_TUNNEL_PROGRAM, true),
    ] {
        let (verified, label) = if ip_link {
            (
                ip_link_kernel.verified_insns(name)?,
                format!("{name}, IP link"),
            )
        } else {
            (kernel.verified_insns(name)?, name.to_string())
        };
        match verified {
            Some(count) => outln!(
                "{label:<32} {count:>9} ({:.1} % of the limit, {} to spare)",
                100.0 * count as f64 / VERIFIER_INSN_LIMIT as f64,
                VERIFIER_INSN_LIMIT.saturating_sub(count)
            ),
            None => outln!("{label:<32} (the kernel does not report it)"),
        }
        rows.push(json!({
            "program": name,
            "ip_link": ip_link,
            "verified_insns": verified,
            "limit": VERIFIER_INSN_LIMIT,
        }));
    }
    Ok(serde_json::Value::Array(rows))
}

/// `teardown bench --verifier`: the verifier's budget alone, and in JSON
/// under `verifier` if asked.
pub fn verifier_only(json_out: Option<PathBuf>) -> anyhow::Result<bool> {
    let verifier = verifier_budget()?;
    if let Some(path) = json_out {
        write_report(&path, &json!({ "verifier": verifier }))?;
    }
    Ok(true)
}

fn write_report(path: &Path, report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    outln!("wrote {}", path.display());
    Ok(())
}

pub(super) fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    if samples.len().is_multiple_of(2) {
        (samples[mid - 1] + samples[mid]) / 2.0
    } else {
        samples[mid]
    }
}

/// The pause before a case's handshake is fed. A connection is set up
/// before any flood: new_syn leaves the CPU under pressure, which lasts
/// until a window passes without its signs and would refuse the
/// handshake's SYN. Two windows are enough for that, but not for the
/// machine: with two, `est_ack` right after new_syn read +41 to +46 ns in
/// 5 of 14 runs (the empty program 10.5 ns where it reads 7.5), though its
/// handshake was tracked each time; with six, +21 to +24 in 6 of 6.
pub(super) const SETTLE_BEFORE_SETUP: std::time::Duration = std::time::Duration::from_millis(
    6 * teardown_common::events::HALF_OPEN_WINDOW_NS / 1_000_000 + 50,
);

/// One clock's table: every case against the empty program. Returns the
/// JSON rows and how many cases missed their goal.
fn run_clock(
    options: &BenchOptions,
    clock: ClockMode,
    stats: &StatsOff,
) -> anyhow::Result<(Vec<serde_json::Value>, usize)> {
    let mut kernel = Kernel::load(&LoadOptions {
        clock,
        ..LoadOptions::default()
    })?;
    kernel.load_bench_programs()?;
    // Source sampling as the run loop sets it during a flood of a million
    // SYN/s (100 000 per poll): new_syn stands for such a flood.
    kernel.set_detect_control(1, sample_mask_for(FLOOD_SYNS_PER_POLL))?;
    outln!(
        "\nclock {}: {}",
        match clock {
            ClockMode::Coarse => "coarse (default)",
            ClockMode::Precise => "precise (--clock precise)",
        },
        match clock {
            ClockMode::Coarse => "records stamped with the kernel tick",
            ClockMode::Precise => "records stamped with bpf_ktime_get_ns",
        }
    );
    outln!(
        "{:<14} {:>11} {:>12} {:>9} {:>7} {:>6}",
        "case",
        "baseline ns",
        "teardown ns",
        "added ns",
        "ratio",
        "goal"
    );
    let mut results = Vec::new();
    let mut over_goal = 0;
    // TUNNEL_BASE's frame, run again beside each tunnelled case's for its
    // goal: measured in the same rounds, the two drift alike on a noisy
    // machine, and their ratio holds still where each alone does not.
    let mut untunnelled_frame: Option<Vec<u8>> = None;
    for case in cases() {
        if !options.only_cases.is_empty()
            && case.name != TUNNEL_BASE
            && !options.only_cases.iter().any(|name| name == case.name)
        {
            continue;
        }
        stats.still_off()?;
        if !case.setup.is_empty() {
            std::thread::sleep(SETTLE_BEFORE_SETUP);
        }
        kernel.set_bench(0, 0, 0)?;
        // Through the program as attached: the wrapper makes no tail call,
        // so a tunnelled handshake the tunnel program reads would never
        // reach the flow table, and the case would measure a segment of a
        // connection without a record (the slow path) every run.
        for frame in &case.setup {
            kernel.test_run(names::XDP_PROGRAM, frame)?;
        }
        let (mode, step, first) = match case.change {
            Change::None => (0, 0, 0),
            Change::NewSource => (1, 0, 0),
            Change::AdvanceSeq { step, first } => (2, step, first),
        };
        kernel.set_bench(mode, step, first)?;
        let frame = &case.frame;
        // A frame that stays the same is run through the program that
        // attaches to interfaces, as it is. One that must change each run
        // goes through the wrapper that changes it first; the change's own
        // cost, measured alone, is taken out.
        let (program_name, mutates) = match case.change {
            Change::None => (names::XDP_PROGRAM, false),
            _ => (names::XDP_BENCH_PROGRAM, true),
        };
        // Warm caches and the JIT images once before measuring.
        kernel.time_run(names::XDP_BASELINE_PROGRAM, frame, 1000)?;
        kernel.time_run(names::XDP_BENCH_MUTATE_PROGRAM, frame, 1000)?;
        kernel.time_run(program_name, frame, 1000)?;
        let mut baseline = Vec::new();
        let mut program = Vec::new();
        let mut times_untunnelled = Vec::new();
        let untunnelled = match case.goal {
            Some(Goal::Untunnelled(_)) => untunnelled_frame.as_deref(),
            _ => None,
        };
        for _ in 0..options.rounds {
            // Alternate so drift on a noisy machine hits both alike.
            let (_, base_ns) =
                kernel.time_run(names::XDP_BASELINE_PROGRAM, frame, options.repeat)?;
            let change_ns = if mutates {
                let (_, change_ns) =
                    kernel.time_run(names::XDP_BENCH_MUTATE_PROGRAM, frame, options.repeat)?;
                change_ns - base_ns
            } else {
                0.0
            };
            let (verdict, prog_ns) = kernel.time_run(program_name, frame, options.repeat)?;
            if verdict != 2 {
                bail!(
                    "teardown returned verdict {verdict} for the {} frame, not XDP_PASS",
                    case.name
                );
            }
            if let Some(untunnelled) = untunnelled {
                let (_, untunnelled_ns) =
                    kernel.time_run(names::XDP_PROGRAM, untunnelled, options.repeat)?;
                times_untunnelled.push((prog_ns - base_ns) / (untunnelled_ns - base_ns).max(0.5));
            }
            baseline.push(base_ns);
            program.push(prog_ns - change_ns);
        }
        let base = median(&mut baseline);
        let prog = median(&mut program);
        let ratio = prog / base;
        let added = prog - base;
        if case.name == TUNNEL_BASE {
            untunnelled_frame = Some(case.frame.as_bytes().to_vec());
        }
        // A tunnelled case against the same segment untunnelled: the
        // median over the rounds of the ratio of their added ns.
        let to_untunnelled =
            (!times_untunnelled.is_empty()).then(|| median(&mut times_untunnelled));
        let within = match case.goal {
            None => true,
            Some(Goal::AddedNs(goal)) => added <= goal,
            Some(Goal::Ratio(goal)) => ratio <= goal,
            Some(Goal::Untunnelled(goal)) => to_untunnelled.is_some_and(|times| times <= goal),
        };
        if !within {
            over_goal += 1;
        }
        let verdict = if within { "ok" } else { "over" };
        let (goal_column, note) = match case.goal {
            None => (String::new(), String::new()),
            Some(Goal::AddedNs(goal)) => (format!("+{goal}"), verdict.to_owned()),
            Some(Goal::Ratio(goal)) => (format!("{goal}x"), verdict.to_owned()),
            Some(Goal::Untunnelled(goal)) => (
                format!("{goal}x*"),
                format!(
                    "{verdict} ({:.2}x {TUNNEL_BASE}'s added ns, in the same rounds)",
                    to_untunnelled.unwrap_or(f64::NAN)
                ),
            ),
        };
        outln!(
            "{:<14} {base:>11.2} {prog:>12.2} {added:>+9.2} {ratio:>6.2}x {goal_column:>6}  {note}",
            case.name,
        );
        let (goal, goal_added, goal_untunnelled) = match case.goal {
            None => (None, None, None),
            Some(Goal::AddedNs(goal)) => (None, Some(goal), None),
            Some(Goal::Ratio(goal)) => (Some(goal), None, None),
            Some(Goal::Untunnelled(goal)) => (None, None, Some(goal)),
        };
        results.push(json!({
            "clock": format!("{clock:?}").to_lowercase(),
            "case": case.name,
            "baseline_ns": (base * 100.0).round() / 100.0,
            "program_ns": (prog * 100.0).round() / 100.0,
            "added_ns": (added * 100.0).round() / 100.0,
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "goal": goal,
            "goal_added_ns": goal_added,
            "goal_times_untunnelled": goal_untunnelled,
            "times_untunnelled": to_untunnelled.map(|times| (times * 1000.0).round() / 1000.0),
            "within_goal": within,
        }));
    }
    if !options.only_cases.is_empty() {
        return Ok((results, over_goal));
    }
    let (row, over) = synack_without_record(&mut kernel, options, clock)?;
    results.push(row);
    over_goal += over;
    let (rows, over) = egress_established(&mut kernel, options, clock)?;
    results.extend(rows);
    over_goal += over;
    let (rows, over) = ip_link_established(options, clock)?;
    results.extend(rows);
    over_goal += over;
    // The concurrency safety's share of the fast path: the slot lock alone.
    // The program does not read the frame; any will do.
    let frame = &craft::build(&Spec::tcp_v4(tcp_flags::ACK, 0));
    let mut added = Vec::new();
    for _ in 0..options.rounds {
        let (_, base_ns) = kernel.time_run(names::XDP_BASELINE_PROGRAM, frame, options.repeat)?;
        let (_, lock_ns) = kernel.time_run(names::XDP_BENCH_LOCK_PROGRAM, frame, options.repeat)?;
        added.push(lock_ns - base_ns);
    }
    let lock_ns = median(&mut added);
    outln!(
        "{:<14} {:>+34.2} ns: a lane's lock taken and let go, alone, uncontended (once per fast-path update, where its cost overlaps the probe's)",
        "slot_lock",
        lock_ns
    );
    results.push(json!({
        "clock": format!("{clock:?}").to_lowercase(),
        "case": "slot_lock",
        "added_ns": (lock_ns * 100.0).round() / 100.0,
    }));
    Ok((results, over_goal))
}

/// Added ns allowed for a SYN-ACK with no record (issue 14: under a
/// random-source flood, at most +30 ns per SYN-ACK the host sends).
const SYNACK_FLOOD_GOAL_NS: f64 = 30.0;

/// The TC egress program on the host's SYN-ACK to a new (spoofed) source
/// every run, as under a random-source SYN flood answered with SYN
/// cookies: no record, as its SYN was not tracked. Through the egress
/// wrapper (new destination address each run), its own cost subtracted,
/// against an empty TC program. Returns the JSON row and 1 if over the
/// goal.
fn synack_without_record(
    kernel: &mut Kernel,
    options: &BenchOptions,
    clock: ClockMode,
) -> anyhow::Result<(serde_json::Value, usize)> {
    use crate::cmd::contention::test_run_fd;
    use tcp_flags::{ACK, SYN};
    let name = "synack_norec";
    let frame = craft::build(&on_port(
        Spec::tcp_v4(SYN | ACK, 0).reversed(),
        40109,
        5000,
        1001,
    ));
    kernel.set_bench(3, 0, 0)?;
    let baseline = kernel.program_fd(names::TC_BASELINE_PROGRAM)?;
    let mutate = kernel.program_fd(names::TC_BENCH_MUTATE_PROGRAM)?;
    let program = kernel.program_fd(names::TC_BENCH_PROGRAM)?;
    for fd in [baseline, mutate, program] {
        test_run_fd(fd, &frame, 1000)?;
    }
    let (mut base_runs, mut prog_runs) = (Vec::new(), Vec::new());
    for _ in 0..options.rounds {
        let (_, base_ns) = test_run_fd(baseline, &frame, options.repeat)?;
        let (_, change_ns) = test_run_fd(mutate, &frame, options.repeat)?;
        let (verdict, prog_ns) = test_run_fd(program, &frame, options.repeat)?;
        // TC_ACT_UNSPEC
        if verdict != u32::MAX {
            bail!(
                "teardown's egress program returned {verdict} for the {name} frame, not TC_ACT_UNSPEC"
            );
        }
        let base_ns = base_ns as f64 + 0.5;
        base_runs.push(base_ns);
        prog_runs.push(prog_ns as f64 + 0.5 - (change_ns as f64 - base_ns + 0.5));
    }
    Ok(egress_row(
        name,
        "TC egress",
        clock,
        &mut base_runs,
        &mut prog_runs,
        SYNACK_FLOOD_GOAL_NS,
    ))
}

/// A TC case's row from its rounds, the program at `hook` ("TC egress",
/// "TC ingress"): printed, and as JSON, with 1 if over its goal of
/// `goal_ns` added.
fn egress_row(
    name: &str,
    hook: &str,
    clock: ClockMode,
    base_runs: &mut [f64],
    prog_runs: &mut [f64],
    goal_ns: f64,
) -> (serde_json::Value, usize) {
    let base = median(base_runs);
    let prog = median(prog_runs);
    let added = prog - base;
    let within = added <= goal_ns;
    outln!(
        "{name:<14} {base:>11.2} {prog:>12.2} {added:>+9.2} {:>6.2}x {:>6}  {} ({hook}, against an empty TC program; goal in added ns)",
        prog / base,
        format!("+{goal_ns}"),
        if within { "ok" } else { "over" }
    );
    (
        json!({
            "clock": format!("{clock:?}").to_lowercase(),
            "case": name,
            "program": hook.to_lowercase(),
            "baseline_ns": (base * 100.0).round() / 100.0,
            "program_ns": (prog * 100.0).round() / 100.0,
            "added_ns": (added * 100.0).round() / 100.0,
            "ratio": (prog / base * 1000.0).round() / 1000.0,
            "goal_added_ns": goal_ns,
            "within_goal": within,
        }),
        usize::from(!within),
    )
}

/// Issue 14's budgets for the TC egress program, as for XDP: an
/// established connection's ACK at most +8 ns, a FIN at most +15 ns.
const EGRESS_ESTABLISHED_GOAL_NS: f64 = 8.0;
const EGRESS_CLOSE_GOAL_NS: f64 = 15.0;

/// The TC egress program as attached, on the host's own segments of an
/// established connection (its handshake fed through the XDP program
/// first, into the same flow table): the server's pure ACK, and its FIN
/// (after the first run a retransmission, which takes the full state
/// machine, as `fin`); and the TC ingress program (`--mode tc`, `auto` on
/// a veth) on the client's pure ACK, as `est_ack` in XDP. Against an empty
/// TC program, goals in added ns. Returns the JSON rows and how many are
/// over their goal.
fn egress_established(
    kernel: &mut Kernel,
    options: &BenchOptions,
    clock: ClockMode,
) -> anyhow::Result<(Vec<serde_json::Value>, usize)> {
    use tcp_flags::{ACK, FIN};
    let mut rows = Vec::new();
    let mut over = 0;
    for (name, port, flags, goal_ns, ingress) in [
        (
            "est_ack_egress",
            40150,
            ACK,
            EGRESS_ESTABLISHED_GOAL_NS,
            false,
        ),
        ("fin_egress", 40151, FIN | ACK, EGRESS_CLOSE_GOAL_NS, false),
        (
            "est_ack_tc_in",
            40152,
            ACK,
            EGRESS_ESTABLISHED_GOAL_NS,
            true,
        ),
    ] {
        std::thread::sleep(SETTLE_BEFORE_SETUP);
        kernel.set_bench(0, 0, 0)?;
        for frame in handshake(false, port) {
            kernel.test_run(names::XDP_PROGRAM, &frame)?;
        }
        // The server's segment: its next sequence number after the
        // SYN-ACK, acknowledging the client's; at ingress, the client's,
        // as `est_ack`'s.
        let frame = if ingress {
            craft::build(&on_port(Spec::tcp_v4(flags, 0), port, 1001, 5001))
        } else {
            craft::build(&on_port(
                Spec::tcp_v4(flags, 0).reversed(),
                port,
                5001,
                1001,
            ))
        };
        let (program_name, hook) = if ingress {
            (names::TC_INGRESS_PROGRAM, "TC ingress")
        } else {
            (names::TC_EGRESS_PROGRAM, "TC egress")
        };
        let baseline = kernel.program_fd(names::TC_BASELINE_PROGRAM)?;
        let program = kernel.program_fd(program_name)?;
        let (mut base_runs, mut prog_runs) =
            time_tc_rounds(options, baseline, program, &frame, name, hook)?;
        let (row, over_goal) =
            egress_row(name, hook, clock, &mut base_runs, &mut prog_runs, goal_ns);
        over += over_goal;
        rows.push(row);
    }
    Ok((rows, over))
}

/// A TC case's rounds: the empty TC program (`baseline`) and `program`
/// on `frame`, warmed up, then alternated `options.rounds` times, each
/// the kernel's ns per run (rounded up by half a ns, as the XDP cases'
/// are). Fails if `program` does not let the packet go on
/// (`TC_ACT_UNSPEC`).
fn time_tc_rounds(
    options: &BenchOptions,
    baseline: std::os::fd::RawFd,
    program: std::os::fd::RawFd,
    frame: &[u8],
    name: &str,
    hook: &str,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    use crate::cmd::contention::test_run_fd;
    for fd in [baseline, program] {
        test_run_fd(fd, frame, 1000)?;
    }
    let (mut base_runs, mut prog_runs) = (Vec::new(), Vec::new());
    for _ in 0..options.rounds {
        let (_, base_ns) = test_run_fd(baseline, frame, options.repeat)?;
        let (verdict, prog_ns) = test_run_fd(program, frame, options.repeat)?;
        // TC_ACT_UNSPEC
        if verdict != u32::MAX {
            bail!(
                "teardown's {hook} program returned {verdict} for the {name} frame, not TC_ACT_UNSPEC"
            );
        }
        base_runs.push(base_ns as f64 + 0.5);
        prog_runs.push(prog_ns as f64 + 0.5);
    }
    Ok((base_runs, prog_runs))
}

/// The TC ingress program as loaded for an interface whose packets start
/// with their IP header (a tun or WireGuard device: `IP_LINK`), on the
/// client's pure ACK of an established connection, as `est_ack_tc_in`
/// with no Ethernet header: its handshake fed first through the same
/// program and the egress one. Against the empty TC program. A test run
/// of a TC program reads the first 14 bytes as an Ethernet header for the
/// packet's protocol, and hands the program the data from byte 0: the
/// bare IP packet, as the device gives it. Then the same segment in
/// VXLAN over the same kind of packet (VXLAN over WireGuard), read by the
/// tunnel program's shortcut from the IP header, its goal twice the plain
/// one's added ns.
fn ip_link_established(
    options: &BenchOptions,
    clock: ClockMode,
) -> anyhow::Result<(Vec<serde_json::Value>, usize)> {
    use crate::cmd::contention::test_run_fd;
    let mut kernel = Kernel::load(&LoadOptions {
        clock,
        ip_link: true,
        ..LoadOptions::default()
    })?;
    let ingress = kernel.program_fd(names::TC_INGRESS_PROGRAM)?;
    let egress = kernel.program_fd(names::TC_EGRESS_PROGRAM)?;
    let baseline = kernel.program_fd(names::TC_BASELINE_PROGRAM)?;
    // The device's packet: the frame without its Ethernet header.
    let bare = |frame: &craft::Frame| frame.as_bytes()[14..].to_vec();
    let mut rows = Vec::new();
    let mut over = 0;
    let mut plain_added = None;
    for (name, port, vxlan) in [
        ("est_ack_iplink", 40153, false),
        ("vxlan_iplink", 40154, true),
    ] {
        let wrapped = |frame: craft::Frame| bare(&if vxlan { in_vxlan(&frame) } else { frame });
        std::thread::sleep(SETTLE_BEFORE_SETUP);
        for (frame, fd) in handshake(false, port)
            .into_iter()
            .zip([ingress, egress, ingress])
        {
            test_run_fd(fd, &wrapped(frame), 1)?;
        }
        let frame = wrapped(craft::build(&on_port(
            Spec::tcp_v4(tcp_flags::ACK, 0),
            port,
            1001,
            5001,
        )));
        let (mut base_runs, mut prog_runs) = time_tc_rounds(
            options,
            baseline,
            ingress,
            &frame,
            name,
            "TC ingress, IP link",
        )?;
        let added = median(&mut prog_runs.clone()) - median(&mut base_runs.clone());
        // The tunnelled segment against the plain one, measured just
        // before (issue 13's goal, 2x; not in the same rounds, as the
        // XDP cases' ratios are).
        let goal_ns = match plain_added {
            Some(plain) if vxlan => 2.0 * plain,
            _ => EGRESS_ESTABLISHED_GOAL_NS,
        };
        let (row, over_goal) = egress_row(
            name,
            "TC ingress, IP link",
            clock,
            &mut base_runs,
            &mut prog_runs,
            goal_ns,
        );
        plain_added.get_or_insert(added);
        over += over_goal;
        rows.push(row);
    }
    // Both connections held, established: else the rows timed something
    // other than the fast path.
    let table = kernel.flow_table()?;
    let tracked = (0..table.len() as u32)
        .filter_map(|index| table.read(index))
        .filter(|slot| {
            use teardown_common::conn::state::ESTABLISHED;
            slot.key.family != 0 && slot.conn.ep.iter().all(|side| side.state == ESTABLISHED)
        })
        .count();
    anyhow::ensure!(
        tracked == 2,
        "the handshakes through the IP-link programs left {tracked} established records, not 2"
    );
    Ok((rows, over))
}

/// Runs the benchmark; false if the contention case lost updates (after
/// printing, and writing the JSON).
pub fn run(options: BenchOptions) -> anyhow::Result<bool> {
    if options.repeat == 0 || options.rounds == 0 {
        bail!("--repeat and --rounds must be at least 1");
    }
    let known: Vec<&str> = cases().iter().map(|case| case.name).collect();
    if let Some(unknown) = options
        .only_cases
        .iter()
        .find(|name| !known.contains(&name.as_str()))
    {
        bail!(
            "no bench case {unknown:?}: --case takes one of {}",
            known.join(", ")
        );
    }
    let stats = StatsOff::switch()?;
    let mut results = Vec::new();
    let mut over_goal = 0;
    if !options.contention_only {
        outln!(
            "per-packet cost: kernel-timed BPF_PROG_TEST_RUN, {} runs x {} rounds, median; baseline = empty XDP_PASS program; kernel.bpf_stats_enabled=0 for the run (was {})",
            options.repeat,
            options.rounds,
            stats.previous
        );
        outln!(
            "new_syn and midstream_new get a new source address and est_data the next sequence number every run, through a wrapper whose own cost is measured alone and subtracted (which flatters them by 1-2 ns); the other cases run the program as attached"
        );
        outln!(
            "goal +N: at most N ns added (issue 14's budgets); Nx: at most N times the empty program; 2x*: a tunnelled case's, at most twice {TUNNEL_BASE}'s added ns (the same segment untunnelled), the two run in the same rounds (the median of their ratios)"
        );
        for clock in [ClockMode::Coarse, ClockMode::Precise] {
            let (rows, over) = run_clock(&options, clock, &stats)?;
            results.extend(rows);
            over_goal += over;
        }
        let with_goal = results
            .iter()
            .filter(|row| {
                !row["goal"].is_null()
                    || !row["goal_added_ns"].is_null()
                    || !row["goal_times_untunnelled"].is_null()
            })
            .count();
        outln!(
            "\n{} of {with_goal} cases with a goal within it",
            with_goal - over_goal
        );
    }
    if !options.only_cases.is_empty() {
        stats.still_off()?;
        if let Some(path) = options.json_out {
            write_report(&path, &json!({ "results": results }))?;
        }
        return Ok(true);
    }
    let verifier = verifier_budget()?;
    // Repeats beyond a few million only make the case longer: two CPUs
    // collide within the first thousands of runs.
    let (contention, exact) =
        crate::cmd::contention::run(options.repeat.max(CONTENTION_MIN_REPEAT))?;
    stats.still_off()?;
    if let Some(path) = options.json_out {
        let report = json!({
            "method": "kernel-timed BPF_PROG_TEST_RUN (whole ns + 0.5), median of alternating rounds, kernel.bpf_stats_enabled=0; frames that change each run go through a wrapper whose own cost is subtracted, the others through the attached program",
            "repeat": options.repeat,
            "rounds": options.rounds,
            "results": results,
            "verifier": verifier,
            "contention": contention,
        });
        write_report(&path, &report)?;
    }
    if !exact {
        crate::report::output::say(
            "teardown: the contention case lost updates: the flow table's record did not count every packet",
        );
    }
    Ok(exact)
}

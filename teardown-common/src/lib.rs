//! Shared between teardown's XDP program and its user-space tools: the map
//! value types (`repr(C)`, no padding, sizes asserted) and the pure logic the
//! kernel runs, so it can be unit-tested and fuzzed on the host.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod addr;
pub mod conn;
pub mod counters;
#[cfg(any(test, feature = "craft"))]
pub mod craft;
pub mod dest;
pub mod events;
pub mod flow;
pub mod parse;
pub mod reasons;
pub mod sketch;
pub mod table;
pub mod tunnel;

/// Names of the maps and programs in the eBPF object, used by both sides.
pub mod names {
    /// Per-CPU array with one [`crate::counters::Tallies`] slot: what
    /// arrives (XDP).
    pub const TALLIES_MAP: &str = "TALLIES";
    /// Per-CPU array with one [`crate::counters::Tallies`] slot: what the
    /// host sends (TC egress).
    pub const EGRESS_TALLIES_MAP: &str = "EGRESS_TALLIES";
    /// Array with one u64: the coarse clock's offset, set at load, so that
    /// `jiffies * tick + offset` reads the same clock as `bpf_ktime_get_ns`
    /// (at most a tick behind it).
    pub const CLOCK_OFFSET_MAP: &str = "CLOCK_OFFSET";
    /// The XDP program that parses and counts.
    pub const XDP_PROGRAM: &str = "teardown";
    /// The counting program behind a per-run frame change, for benchmarks.
    pub const XDP_BENCH_PROGRAM: &str = "teardown_bench";
    /// The per-run frame change alone, whose cost the benchmark subtracts.
    pub const XDP_BENCH_MUTATE_PROGRAM: &str = "teardown_bench_mutate";
    /// A flow-table slot's lane lock taken and let go, alone: what the
    /// concurrency safety adds to the fast path.
    pub const XDP_BENCH_LOCK_PROGRAM: &str = "teardown_bench_lock";
    /// Array of 4 u64: the benchmark wrappers' settings.
    pub const BENCH_MAP: &str = "BENCH";
    /// The TC egress program's work behind a per-run frame change, for benchmarks.
    pub const TC_BENCH_PROGRAM: &str = "teardown_bench_egress";
    /// The per-run frame change alone, in a TC program.
    pub const TC_BENCH_MUTATE_PROGRAM: &str = "teardown_bench_egress_mutate";
    /// A TC program that only lets the packet go on: the egress baseline.
    pub const TC_BASELINE_PROGRAM: &str = "teardown_tc_baseline";
    /// An XDP program that only returns XDP_PASS: the benchmark's baseline.
    pub const XDP_BASELINE_PROGRAM: &str = "teardown_baseline";
    /// The XDP program on a capture's clock, so a replay runs the kernel's
    /// code on capture time: the time comes as 8 bytes of XDP metadata
    /// before the frame (a native-endian u64), or, without metadata, from
    /// [`REPLAY_CLOCK_MAP`].
    pub const XDP_REPLAY_PROGRAM: &str = "teardown_replay";
    /// The TC egress program: the host's own segments, into the same flow table.
    pub const TC_EGRESS_PROGRAM: &str = "teardown_egress";
    /// Mmapable array of [`crate::table::FlowSlot`]: the flow table.
    pub const FLOW_TABLE_MAP: &str = "FLOW_TABLE";
    /// Array of [`crate::table::PrintLine`]: the flow table's fingerprints,
    /// sized with it ([`crate::table::print_lines_for`]).
    pub const FLOW_PRINTS_MAP: &str = "FLOW_PRINTS";
    /// Mmapable array of u64 words: the changed-slot bitmap
    /// ([`crate::events::SLOTS_PER_CHANGE_WORD`]).
    pub const FLOW_CHANGES_MAP: &str = "FLOW_CHANGES";
    /// Mmapable array of one [`crate::events::ChangedWords`]: the bitmap's
    /// words marked during a replay's test run.
    pub const CHANGED_WORDS_MAP: &str = "CHANGED_WORDS";
    /// u32 global: 1 if the kernel lists the words it marks in
    /// [`CHANGED_WORDS_MAP`] (a replay), 0 if not (live).
    pub const NOTE_CHANGED_WORDS_GLOBAL: &str = "NOTE_CHANGED_WORDS";
    /// u32 global: 1 if, while the flow table is under pressure, the reset
    /// program sends no event for a reset of a connection without a record
    /// (`teardown run` on one interface), 0 if it sends every one.
    pub const SKIP_UNTRACKED_RESETS_GLOBAL: &str = "SKIP_UNTRACKED_RESETS";
    /// Array of two u64: [`CLOCK_PROBE_PROGRAM`] writes the precise clock
    /// (`bpf_ktime_get_ns`, or the capture clock in a replay) at 0 and the
    /// coarse clock before its offset (`jiffies * tick`) at 1.
    pub const CLOCK_PROBE_MAP: &str = "CLOCK_PROBE";
    /// An XDP program, only ever test-run, that reads the clock the flow
    /// table runs on, so user space can relate it to its own.
    pub const CLOCK_PROBE_PROGRAM: &str = "teardown_clock";
    /// Ring buffer of [`crate::events`] events.
    pub const EVENTS_MAP: &str = "EVENTS";
    /// Per-CPU array with one [`crate::events::FlowStats`] slot.
    pub const FLOW_STATS_MAP: &str = "FLOW_STATS";
    /// Array of [`crate::conn::PORT_SET_WORDS`] words: the likely server ports.
    pub const LIKELY_PORTS_MAP: &str = "LIKELY_PORTS";
    /// Array with one u64: the packet time for the replay program when the
    /// frame carries none in its metadata (`teardown replay` always passes it there).
    pub const REPLAY_CLOCK_MAP: &str = "REPLAY_CLOCK";
    /// Global: the [`crate::conn::Timeouts`] the kernel closes records with.
    pub const TIMEOUTS_GLOBAL: &str = "TIMEOUTS";
    /// Global: how long past a deadline the kernel waits for user space to
    /// close a record before doing it itself on the next packet (0 in replay).
    pub const GRACE_GLOBAL: &str = "GRACE_NS";
    /// Global: [`crate::table::set_shift`] of the flow table's slots.
    pub const SET_SHIFT_GLOBAL: &str = "SET_SHIFT";
    /// Global: nanoseconds per jiffy for the coarse clock, 0 for the
    /// precise one (`bpf_ktime_get_ns`).
    pub const NS_PER_TICK_GLOBAL: &str = "NS_PER_TICK";
    /// Global: new half-open records per CPU per window under pressure
    /// ([`crate::events::half_open_budget`], [`crate::events::Admission`]).
    pub const HALF_OPEN_BUDGET_GLOBAL: &str = "HALF_OPEN_BUDGET";
    /// Global: 1 where a plain store lets go of a flow-table lane's lock
    /// with release order (x86-64's BPF JIT; see the eBPF crate's `lock`),
    /// 0 for a fetching add everywhere else.
    pub const UNLOCK_BY_STORE_GLOBAL: &str = "UNLOCK_BY_STORE";
    /// Global: 1 where the interface's packets start with their IP header
    /// (no Ethernet header: a tun or WireGuard device), read by the TC
    /// programs from their first byte; 0 for Ethernet frames.
    pub const IP_LINK_GLOBAL: &str = "IP_LINK";
    /// Per-CPU array of [`crate::dest::DEST_SLOTS`]
    /// [`crate::dest::DestSlot`]s: SYNs, completions and half-open records
    /// per destination.
    pub const DESTINATIONS_MAP: &str = "DESTINATIONS";
    /// Per-CPU array with one [`crate::dest::SampleRing`].
    pub const SOURCE_SAMPLES_MAP: &str = "SOURCE_SAMPLES";
    /// Array with one [`crate::dest::DetectControl`], which user space
    /// writes every poll: the epoch and the sampling mask.
    pub const DETECT_CONTROL_MAP: &str = "DETECT_CONTROL";
    /// The `tcp:tcp_send_reset` tracepoint program.
    pub const RESET_PROGRAM: &str = "teardown_reset";
    /// Array with one [`crate::reasons::ResetLayout`], written before the
    /// reset program is attached.
    pub const RESET_LAYOUT_MAP: &str = "RESET_LAYOUT";
    /// Ring buffer of [`crate::reasons::ResetEvent`]s.
    pub const RESET_EVENTS_MAP: &str = "RESET_EVENTS";
    /// Per-CPU array with one [`crate::reasons::ResetCounts`].
    pub const RESET_COUNTS_MAP: &str = "RESET_COUNTS";
    /// Array of [`crate::tunnel::TUNNEL_CAPACITY`]
    /// [`crate::tunnel::Tunnel`]s: the tunnels records refer to
    /// ([`crate::tunnel::TunnelRef`]), each written once.
    pub const TUNNELS_MAP: &str = "TUNNELS";
    /// Global: the [`crate::tunnel::TunnelPorts`] the parser opens tunnels with.
    pub const TUNNEL_PORTS_GLOBAL: &str = "TUNNEL_PORTS";
    /// Program array of the XDP tunnel programs, at [`tunnel_slot`]s: the
    /// XDP programs tail-call them with frames that may carry a tunnel.
    pub const TUNNEL_XDP_MAP: &str = "TUNNEL_XDP";
    /// Program array of the TC tunnel programs, at [`tc_tunnel_slot`]s.
    pub const TUNNEL_TC_MAP: &str = "TUNNEL_TC";
    /// The live XDP tunnel program (slot [`tunnel_slot::LIVE`]).
    pub const XDP_TUNNEL_PROGRAM: &str = "teardown_tunnel";
    /// The replay's XDP tunnel program (slot [`tunnel_slot::REPLAY`]).
    pub const XDP_TUNNEL_REPLAY_PROGRAM: &str = "teardown_tunnel_replay";
    /// The TC egress program's tunnel program (slot
    /// [`tc_tunnel_slot::EGRESS`]).
    pub const TC_TUNNEL_PROGRAM: &str = "teardown_tunnel_egress";
    /// The TC ingress program: what [`XDP_PROGRAM`] does, at TC ingress
    /// (`--mode tc`, and `auto` on a veth or without native XDP), where it
    /// costs a software device's received packets no copy.
    pub const TC_INGRESS_PROGRAM: &str = "teardown_ingress";
    /// The TC ingress program's tunnel program (slot
    /// [`tc_tunnel_slot::INGRESS`]).
    pub const TC_TUNNEL_INGRESS_PROGRAM: &str = "teardown_tunnel_ingress";

    /// Slots of [`TUNNEL_XDP_MAP`].
    pub mod tunnel_slot {
        pub const LIVE: u32 = 0;
        pub const REPLAY: u32 = 1;
    }

    /// Slots of [`TUNNEL_TC_MAP`].
    pub mod tc_tunnel_slot {
        pub const EGRESS: u32 = 0;
        pub const INGRESS: u32 = 1;
    }
}

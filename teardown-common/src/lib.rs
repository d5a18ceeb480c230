//! Shared between teardown's XDP program and its user-space tools: the map
//! value types (`repr(C)`, no padding, sizes asserted) and the pure logic the
//! kernel runs, so it can be unit-tested and fuzzed on the host.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod conn;
pub mod counters;
pub mod craft;
pub mod events;
pub mod flow;
pub mod parse;
pub mod sketch;

/// Names of the maps and programs in the eBPF object, used by both sides.
pub mod names {
    /// Per-CPU array with one [`crate::counters::Tallies`] slot.
    pub const TALLIES_MAP: &str = "TALLIES";
    /// The XDP program that parses and counts.
    pub const XDP_PROGRAM: &str = "teardown";
    /// An XDP program that only returns XDP_PASS: the benchmark's baseline.
    pub const XDP_BASELINE_PROGRAM: &str = "teardown_baseline";
    /// The XDP program with its clock read from [`REPLAY_CLOCK_MAP`], so a
    /// replay runs the kernel's code on capture time.
    pub const XDP_REPLAY_PROGRAM: &str = "teardown_replay";
    /// The TC egress program: the host's own segments, into the same flow table.
    pub const TC_EGRESS_PROGRAM: &str = "teardown_egress";
    /// LRU hash of [`crate::flow::FlowKey`] to [`crate::conn::Conn`].
    pub const FLOWS_MAP: &str = "FLOWS";
    /// Ring buffer of [`crate::events`] events.
    pub const EVENTS_MAP: &str = "EVENTS";
    /// Per-CPU array with one [`crate::events::FlowStats`] slot.
    pub const FLOW_STATS_MAP: &str = "FLOW_STATS";
    /// Array of [`crate::conn::PORT_SET_WORDS`] words: the likely server ports.
    pub const LIKELY_PORTS_MAP: &str = "LIKELY_PORTS";
    /// Array with one u64: the packet time for the replay program.
    pub const REPLAY_CLOCK_MAP: &str = "REPLAY_CLOCK";
    /// Global: the [`crate::conn::Timeouts`] the kernel closes records with.
    pub const TIMEOUTS_GLOBAL: &str = "TIMEOUTS";
    /// Global: how long past a deadline the kernel waits for user space to
    /// close a record before doing it itself on the next packet (0 in replay).
    pub const GRACE_GLOBAL: &str = "GRACE_NS";
}

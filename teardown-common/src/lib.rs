//! Shared between teardown's XDP program and its user-space tools: the map
//! value types (`repr(C)`, no padding, sizes asserted) and the pure logic the
//! kernel runs, so it can be unit-tested and fuzzed on the host.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod conn;
pub mod counters;
pub mod craft;
pub mod flow;
pub mod parse;

/// Names of the maps and programs in the eBPF object, used by both sides.
pub mod names {
    /// Per-CPU array with one [`crate::counters::Tallies`] slot.
    pub const TALLIES_MAP: &str = "TALLIES";
    /// The XDP program that parses and counts.
    pub const XDP_PROGRAM: &str = "teardown";
    /// An XDP program that only returns XDP_PASS: the benchmark's baseline.
    pub const XDP_BASELINE_PROGRAM: &str = "teardown_baseline";
}

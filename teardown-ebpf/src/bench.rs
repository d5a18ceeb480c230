//! The programs `teardown bench` test-runs to price the per-packet work:
//! the counting program behind a frame mutator, the mutator alone, an
//! uncontended slot lock, and an empty program to subtract; and the same
//! for the TC egress program.

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::Array,
    programs::{TcContext, XdpContext},
};

use crate::{
    clock::LiveClock,
    count_and_track, egress_work,
    lock::{try_lock, unlock},
    maps::FLOW_TABLE,
};

/// Settings of the benchmark wrappers: [mode, runs so far, sequence step,
/// first sequence number]. Mode 0 leaves the frame alone; 1 gives it a new
/// IPv4 source address each run (a random-source SYN flood); 2 advances its
/// TCP sequence number by the step each run (in-order data); 3 gives it a
/// new IPv4 destination address each run (the host's replies to such a
/// flood).
#[map]
pub(crate) static BENCH: Array<u64> = Array::with_max_entries(4, 0);

/// Offsets in an untagged IPv4 TCP frame, the only kind the wrappers change.
const BENCH_IPV4_SOURCE: usize = 14 + 12;
const BENCH_IPV4_DEST: usize = 14 + 16;
const BENCH_TCP_SEQ: usize = 14 + 20 + 4;

/// Changes the frame `[start, end)` as [`BENCH`] says, before each run.
#[inline(always)]
fn bench_mutate(start: usize, end: usize) {
    let (Some(mode), Some(runs)) = (BENCH.get(0).copied(), BENCH.get_ptr_mut(1)) else {
        return;
    };
    // SAFETY: the map's own slot; test runs of one program do not overlap.
    let run = unsafe {
        *runs += 1;
        *runs
    };
    if start + BENCH_TCP_SEQ + 4 > end {
        return;
    }
    match mode {
        1 => {
            let source = teardown_common::sketch::mix32(run as u32).to_be_bytes();
            // SAFETY: inside the frame, checked above.
            unsafe { ((start + BENCH_IPV4_SOURCE) as *mut [u8; 4]).write_unaligned(source) };
        }
        2 => {
            let step = BENCH.get(2).copied().unwrap_or(0);
            let first = BENCH.get(3).copied().unwrap_or(0);
            let seq = (first.wrapping_add(run.wrapping_mul(step)) as u32).to_be_bytes();
            // SAFETY: inside the frame, checked above.
            unsafe { ((start + BENCH_TCP_SEQ) as *mut [u8; 4]).write_unaligned(seq) };
        }
        3 => {
            let dest = teardown_common::sketch::mix32(run as u32).to_be_bytes();
            // SAFETY: inside the frame, checked above.
            unsafe { ((start + BENCH_IPV4_DEST) as *mut [u8; 4]).write_unaligned(dest) };
        }
        _ => {}
    }
}

/// The counting program after [`bench_mutate`], for `teardown bench`.
#[xdp]
// Inlined into the wrapper the macro makes: as a function of its own it
// would be a static subprogram, whose stack the 6.18 verifier\'s precision
// tracking gets wrong ("verifier bug: stack slot").
#[inline(always)]
pub fn teardown_bench(ctx: XdpContext) -> u32 {
    bench_mutate(ctx.data(), ctx.data_end());
    // Tunnelled frames are not benchmarked here: no tail call.
    let _ = count_and_track(&ctx, &LiveClock);
    xdp_action::XDP_PASS
}

/// [`bench_mutate`] alone: its cost, which `teardown bench` subtracts.
#[xdp]
pub fn teardown_bench_mutate(ctx: XdpContext) -> u32 {
    bench_mutate(ctx.data(), ctx.data_end());
    xdp_action::XDP_PASS
}

/// A lane's lock of a slot taken and let go, uncontended, as the fast path does for
/// every packet it updates: what the safety on two CPUs costs it (the
/// fast path also compares the key again under the lock, not counted here).
#[xdp]
pub fn teardown_bench_lock(_ctx: XdpContext) -> u32 {
    if let Some(slot) = FLOW_TABLE.get_ptr(0) {
        // SAFETY: a flow-table slot, written only under its locks.
        let slot = unsafe { &*slot };
        if try_lock(slot, 0) {
            unlock(slot, 0);
        }
    }
    xdp_action::XDP_PASS
}

/// Does nothing but pass: the baseline `teardown bench` compares against.
#[xdp]
pub fn teardown_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The egress program's work after [`bench_mutate`], for `teardown bench`.
/// TC programs may write packet data directly once it is bounds-checked.
#[classifier]
// Inlined into the wrapper the macro makes: as a function of its own it
// would be a static subprogram, whose stack the 6.18 verifier\'s precision
// tracking gets wrong ("verifier bug: stack slot").
#[inline(always)]
pub fn teardown_bench_egress(ctx: TcContext) -> i32 {
    bench_mutate(ctx.data(), ctx.data_end());
    let _ = egress_work(&ctx);
    TC_ACT_UNSPEC
}

/// [`bench_mutate`] alone on a TC packet, whose cost the bench subtracts.
#[classifier]
pub fn teardown_bench_egress_mutate(ctx: TcContext) -> i32 {
    bench_mutate(ctx.data(), ctx.data_end());
    TC_ACT_UNSPEC
}

/// An empty TC program: the egress cases' baseline.
#[classifier]
pub fn teardown_tc_baseline(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

//! teardown's kernel programs. The XDP program parses every frame's headers
//! with the shared parser, counts what it saw in a per-CPU array, and feeds
//! TCP segments to the flow table; the TC egress program feeds the host's own
//! segments to the same table. Neither ever drops: XDP returns XDP_PASS and
//! TC lets the packet continue, on every path.
#![no_std]
#![no_main]
// The BPF target offers no atomic read-modify-write through core::sync::atomic;
// the intrinsic compiles to the BPF atomic OR instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod clock;
mod fast_path;
mod flood;
mod frame;
mod lock;
mod maps;
mod slow_path;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_jiffies64,
    macros::{classifier, map, xdp},
    maps::Array,
    programs::{TcContext, XdpContext},
};
use teardown_common::{
    counters::{Tally, tally, tally_common},
    parse::{CommonTcp, IpVersion, TcpSegment, parse, parse_common},
};

use clock::{FlowClock, LiveClock, ReplayClock};
use fast_path::track;
use frame::Frame;
use lock::{try_lock, unlock};
use maps::{CLOCK_PROBE, EGRESS_TALLIES, FLOW_TABLE, NS_PER_TICK, TALLIES, setting};

/// What the programs read of a frame: its tally, and its TCP segment with
/// the IP header's offset and version. The common frame's shortcut first
/// ([`parse_common`]), the general parser for the rest.
#[inline(always)]
fn read_frame(frame: &Frame) -> (Tally, Option<(usize, bool, TcpSegment)>) {
    match parse_common(frame) {
        Some(common) => (
            tally_common(&common),
            Some((
                CommonTcp::IP_OFFSET,
                common.version == IpVersion::V6,
                common.segment,
            )),
        ),
        None => {
            let parsed = parse(frame);
            let segment = parsed
                .tcp()
                .map(|(ip, tcp)| (ip.offset as usize, ip.version == IpVersion::V6, *tcp));
            (tally(&parsed), segment)
        }
    }
}

#[inline(always)]
fn count_and_track(ctx: &XdpContext, clock: &impl FlowClock) {
    let frame = &Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (counted, segment) = read_frame(frame);
    // The flow table first, the tallies after: the tally is two small
    // numbers to keep across the table's lookups, where the segment's fields
    // would all have to be saved across the tallies' lookup (the BPF calling
    // convention leaves four registers that survive a call).
    if let Some((ip_offset, is_v6, tcp)) = segment {
        track::<false>(frame, &tcp, ip_offset, is_v6, clock);
    }
    if let Some(tallies) = TALLIES.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, and only here.
        unsafe { (*tallies).record(&counted) };
    }
}

#[xdp]
pub fn teardown(ctx: XdpContext) -> u32 {
    count_and_track(&ctx, &LiveClock);
    xdp_action::XDP_PASS
}

/// The same work on capture time: `teardown replay --connections` sets the
/// clock before each packet, so every timeout runs on the capture's clock.
#[xdp]
pub fn teardown_replay(ctx: XdpContext) -> u32 {
    count_and_track(&ctx, &ReplayClock);
    xdp_action::XDP_PASS
}

/// Bytes of headers the egress program wants in the linear part of the skb.
const EGRESS_HEADER_BYTES: u32 = 128;

/// The host's own segments (SYN-ACKs, FINs, RSTs it sends), into the same
/// flow table, and counted in tallies of their own ([`EGRESS_TALLIES`]).
#[classifier]
pub fn teardown_egress(ctx: TcContext) -> i32 {
    let linear = ctx.data_end() - ctx.data();
    if (linear as u32) < EGRESS_HEADER_BYTES && ctx.len() > linear as u32 {
        // Headers may sit in paged data; failing to pull only means a shorter view.
        let _ = ctx.pull_data(ctx.len().min(EGRESS_HEADER_BYTES));
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (counted, segment) = read_frame(&frame);
    if let Some((ip_offset, is_v6, tcp)) = segment {
        track::<true>(&frame, &tcp, ip_offset, is_v6, &LiveClock);
    }
    if let Some(tallies) = EGRESS_TALLIES.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, and only here.
        unsafe { (*tallies).record(&counted) };
    }
    // Let the packet go on to whatever else is attached.
    TC_ACT_UNSPEC
}

/// Reads the clocks into [`CLOCK_PROBE`]: the precise clock, and the
/// coarse one before its offset. User space test-runs it to measure
/// [`CLOCK_OFFSET`] and to relate the flow table's clock to its own.
#[xdp]
pub fn teardown_clock(_ctx: XdpContext) -> u32 {
    let precise = LiveClock.precise();
    let tick: u64 = setting!(NS_PER_TICK);
    // SAFETY: a helper without arguments.
    let coarse = unsafe { bpf_jiffies64() }.wrapping_mul(tick);
    if let Some(reading) = CLOCK_PROBE.get_ptr_mut(0) {
        // SAFETY: the probe's first slot.
        unsafe { *reading = precise };
    }
    if let Some(reading) = CLOCK_PROBE.get_ptr_mut(1) {
        // SAFETY: the probe's second slot.
        unsafe { *reading = coarse };
    }
    xdp_action::XDP_PASS
}

/// Settings of the benchmark wrappers: [mode, runs so far, sequence step,
/// first sequence number]. Mode 0 leaves the frame alone; 1 gives it a new
/// IPv4 source address each run (a random-source SYN flood); 2 advances its
/// TCP sequence number by the step each run (in-order data).
#[map]
static BENCH: Array<u64> = Array::with_max_entries(4, 0);

/// Offsets in an untagged IPv4 TCP frame, the only kind the wrappers change.
const BENCH_IPV4_SOURCE: usize = 14 + 12;
const BENCH_TCP_SEQ: usize = 14 + 20 + 4;

#[inline(always)]
fn bench_mutate(ctx: &XdpContext) {
    let (Some(mode), Some(runs)) = (BENCH.get(0).copied(), BENCH.get_ptr_mut(1)) else {
        return;
    };
    // SAFETY: the map's own slot; test runs of one program do not overlap.
    let run = unsafe {
        *runs += 1;
        *runs
    };
    let start = ctx.data();
    if start + BENCH_TCP_SEQ + 4 > ctx.data_end() {
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
        _ => {}
    }
}

/// The counting program after [`bench_mutate`], for `teardown bench`.
#[xdp]
pub fn teardown_bench(ctx: XdpContext) -> u32 {
    bench_mutate(&ctx);
    count_and_track(&ctx, &LiveClock);
    xdp_action::XDP_PASS
}

/// [`bench_mutate`] alone: its cost, which `teardown bench` subtracts.
#[xdp]
pub fn teardown_bench_mutate(ctx: XdpContext) -> u32 {
    bench_mutate(&ctx);
    xdp_action::XDP_PASS
}

/// A slot's lock taken and let go, uncontended, as the fast path does for
/// every packet it updates: what the safety on two CPUs costs it (the
/// fast path also compares the key again under the lock, not counted here).
#[xdp]
pub fn teardown_bench_lock(_ctx: XdpContext) -> u32 {
    if let Some(slot) = FLOW_TABLE.get_ptr(0) {
        // SAFETY: a flow-table slot, written only under its lock.
        let slot = unsafe { &*slot };
        if try_lock(slot) {
            unlock(slot);
        }
    }
    xdp_action::XDP_PASS
}

/// Does nothing but pass: the baseline `teardown bench` compares against.
#[xdp]
pub fn teardown_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

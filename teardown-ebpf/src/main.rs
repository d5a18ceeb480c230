//! teardown's kernel programs. The XDP program ([`teardown`];
//! [`teardown_replay`] on a capture's clock) parses every frame's headers
//! with the shared parser, counts what it saw in a per-CPU array, and feeds
//! TCP segments to the flow table; the TC egress program
//! ([`teardown_egress`]) feeds the host's own segments to the same table.
//! Neither ever drops: XDP returns XDP_PASS and TC lets the packet continue,
//! on every path.
//!
//! The modules, in the order a segment meets them:
//! - [`frame`]: the packet's bytes, as the shared parser reads them;
//! - [`fast_path`]: a SYN's admission, the probe of the connection's set,
//!   and the update of an established connection in place;
//! - [`slow_path`]: everything else, in global BPF functions the verifier
//!   checks one at a time: records created, updated, closed out, evicted;
//! - [`lock`]: the slot locks that let CPUs share one table, and why that
//!   is safe;
//! - [`flood`]: SYNs counted per destination, the admission of half-open
//!   records, the counts for a record's responder;
//! - [`clock`]: the host's clock and a capture's;
//! - [`reset`]: the kernel's reason for each reset the host sends, from
//!   the `tcp:tcp_send_reset` tracepoint;
//! - [`maps`]: every map and load-time setting, under the names user space
//!   looks them up by;
//! - [`bench`](mod@bench): the programs `teardown bench` prices the work with.
#![no_std]
#![no_main]
// The BPF target offers no atomic read-modify-write through core::sync::atomic;
// the intrinsics compile to BPF atomic instructions: the slot locks'
// compare-and-swap and fetching add (lock.rs), the change bits' OR
// (slow_path.rs).
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics, for the atomics above")]

mod bench;
mod clock;
mod fast_path;
mod flood;
mod frame;
mod lock;
mod maps;
mod reset;
mod slow_path;

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_jiffies64,
    macros::{classifier, tracepoint, xdp},
    programs::{TcContext, TracePointContext, XdpContext},
};
use teardown_common::{
    counters::{Tally, tally, tally_common},
    parse::{CommonTcp, IpVersion, TcpSegment, parse, parse_common},
};

use clock::{FlowClock, LiveClock, ReplayClock};
use fast_path::track;
use frame::Frame;
use maps::{CLOCK_PROBE, EGRESS_TALLIES, NS_PER_TICK, TALLIES, setting};

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

/// The XDP programs' work on one frame: its TCP segment to the flow table,
/// then its tally.
#[inline(always)]
pub(crate) fn count_and_track(ctx: &XdpContext, clock: &impl FlowClock) {
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

/// The live program, attached to the interface: every frame counted, every
/// TCP segment tracked, on the host's clock.
///
/// Declared multi-buffer (`xdp.frags`, loaded with `BPF_F_XDP_HAS_FRAGS`):
/// without it, native XDP on a veth turns GSO/TSO off on the peer and
/// refuses MTUs above a page. The program reads headers only, all through
/// [`Frame`]'s bounds-checked load against `data_end`, which in a
/// multi-buffer frame is the end of the first (linear) buffer, where the
/// headers are; a header that did not fit there reads as cut short, as in
/// a truncated frame. It never touches the fragments.
#[xdp(frags)]
pub fn teardown(ctx: XdpContext) -> u32 {
    count_and_track(&ctx, &LiveClock);
    xdp_action::XDP_PASS
}

/// The same work on capture time: `teardown replay --connections` passes
/// each packet's time in its XDP metadata ([`ReplayClock::of`]), so every
/// timeout runs on the capture's clock.
/// Multi-buffer like [`teardown`], so both load and run alike.
#[xdp(frags)]
pub fn teardown_replay(ctx: XdpContext) -> u32 {
    count_and_track(&ctx, &ReplayClock::of(ctx.metadata(), ctx.data()));
    xdp_action::XDP_PASS
}

/// Bytes of headers the egress program wants in the linear part of the skb.
const EGRESS_HEADER_BYTES: u32 = 128;

/// The host's own segments (SYN-ACKs, FINs, RSTs it sends), into the same
/// flow table, and counted in tallies of their own ([`EGRESS_TALLIES`]).
#[classifier]
pub fn teardown_egress(ctx: TcContext) -> i32 {
    egress_work(&ctx);
    // Let the packet go on to whatever else is attached.
    TC_ACT_UNSPEC
}

/// The egress program's work on one packet, also run by the benchmark's
/// egress wrapper.
#[inline(always)]
pub(crate) fn egress_work(ctx: &TcContext) {
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
}

/// Reads the clocks into [`CLOCK_PROBE`]: the precise clock, and the
/// coarse one before its offset. User space test-runs it to measure
/// [`CLOCK_OFFSET`](maps::CLOCK_OFFSET) and to relate the flow table's clock to its own.
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

/// On `tcp:tcp_send_reset`: the kernel's reason for a reset this host
/// sends, and the process behind it ([`reset`]). Tracepoint programs return
/// nothing the kernel acts on.
#[tracepoint]
pub fn teardown_reset(ctx: TracePointContext) -> u32 {
    reset::on_send_reset(&ctx);
    0
}

/// The licence the kernel reads: GPL-compatible, as the reset program's
/// `bpf_probe_read_kernel` requires (aya's own programs declare the same).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

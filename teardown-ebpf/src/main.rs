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
// An empty asm! is the compiler barrier in front of the plain-store unlock
// (lock.rs): LLVM's BPF backend has no fence, nor a release store below
// ISA v4.
#![feature(asm_experimental_arch)]

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
    bindings::{__sk_buff, xdp_md},
    maps::PerCpuArray,
};
use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::bpf_jiffies64,
    macros::{classifier, tracepoint, xdp},
    programs::{TcContext, TracePointContext, XdpContext},
};
use teardown_common::{
    counters::{Tallies, Tally, encap_tally_of, other_ip_tally, tally, tally_common, tally_tagged},
    parse::{
        CommonTcp, ETH_HLEN, IpVersion, MAX_INNER_START, Parsed, TcpSegment, ip_version_type,
        parse, parse_common, parse_common_ip, parse_network,
    },
    tunnel::{
        CommonOther, CommonOverlay, DecapState, LayerStart, Pending, carried_tcp,
        decapsulate_in_place, describe_layers, encap, enter_layer, inner_class, ip_underlay,
        layer_of_word, layer_word, may_carry_tunnel, outcome as tunnel_outcome, read_common_other,
        read_layer, read_tagged_overlay, step_layer, underlay,
    },
};

use clock::{FlowClock, LiveClock, ReplayClock};
use fast_path::track;
use frame::Frame;
use maps::{
    CLOCK_PROBE, DECAP_STATE, EGRESS_TALLIES, IP_LINK, NS_PER_TICK, TALLIES, TUNNEL_TC, TUNNEL_XDP,
    setting, tunnel_ports,
};
use teardown_common::names::{tc_tunnel_slot, tunnel_slot};

/// What [`read_frame`] says follows a frame's tally and segment: nothing,
/// or (no TCP segment of its own) that it may carry one in a tunnel; or,
/// for a segment read by the tunnel shortcut, [`next::SHORTCUT`] with the
/// [`encap`] kind of its one layer in the low bits.
mod next {
    pub const NOTHING: u8 = 0;
    pub const MAY_TUNNEL: u8 = 1;
    pub const SHORTCUT: u8 = 0x80;
}

const _: () = assert!(encap::COUNT < next::SHORTCUT as usize);

/// What the programs read of a frame: its tally, its TCP segment with the
/// IP header's offset and version, and what follows ([`next`]). The
/// common frame's shortcut first ([`parse_common`]); then the one for the
/// rest of the common frames ([`read_common_other`]: the common frame
/// under VLAN tags; one VXLAN, Geneve, GRE or IP-in-IP layer over untagged
/// IPv4 or IPv6, the common frame inside, with the tunnel's layer as a
/// [`layer_word`], for [`describe_tunnel_xdp`] if a record may start); the
/// general parser for the rest, and for a frame with no TCP segment of its
/// own, whether it may carry one in a tunnel ([`may_carry_tunnel`]: only
/// such frames are handed to the tunnel program).
#[inline(always)]
fn read_frame(frame: &Frame) -> (Tally, Option<(usize, bool, TcpSegment)>, u8, u64) {
    if let Some(common) = parse_common(frame) {
        return (
            tally_common(&common),
            Some((
                CommonTcp::IP_OFFSET,
                common.version == IpVersion::V6,
                common.segment,
            )),
            next::NOTHING,
            0,
        );
    }
    let ports = tunnel_ports();
    match read_common_other(frame, ports) {
        Some(CommonOther::TaggedTcp { ip_offset, inner }) => {
            return (
                tally_tagged(&inner),
                Some((ip_offset, inner.version == IpVersion::V6, inner.segment)),
                next::NOTHING,
                0,
            );
        }
        Some(CommonOther::Overlay(overlay)) => return shortcut_read(overlay),
        Some(CommonOther::Plain {
            v6,
            tagged,
            may_tunnel,
        }) => {
            let next = if may_tunnel {
                hand_layer(None);
                next::MAY_TUNNEL
            } else {
                next::NOTHING
            };
            return (other_ip_tally(v6, tagged), None, next, 0);
        }
        Some(CommonOther::Layer { word, carried }) => {
            hand_layer(Some((word, &carried)));
            let v6 = layer_of_word(word).outer_v6;
            return (other_ip_tally(v6, false), None, next::MAY_TUNNEL, 0);
        }
        None => {}
    }
    let parsed = parse(frame);
    let segment = parsed
        .tcp()
        .map(|(ip, tcp)| (ip.offset as usize, ip.version == IpVersion::V6, *tcp));
    let next = if segment.is_none() && may_carry_tunnel(frame, &parsed, ports) {
        hand_layer(None);
        next::MAY_TUNNEL
    } else {
        next::NOTHING
    };
    (tally(&parsed), segment, next, 0)
}

/// Leaves in this CPU's [`DECAP_STATE`], for the tunnel program a frame is
/// about to be handed to, the one layer the shortcut read of it (`Some`:
/// a layer with no common TCP frame inside, whose carried frame the tunnel
/// program reads straight away, [`handed_layer`]), or that it read none.
/// Written for every frame handed over, so the tunnel program never reads
/// one left by an earlier frame.
#[inline(always)]
fn hand_layer(layer: Option<(u64, &LayerStart)>) {
    let Some(state) = DECAP_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by one program run at a time (the
    // tunnel program this one tail-calls runs after it, on this CPU).
    let pending = unsafe { &mut (*state).pending };
    match layer {
        Some((word, carried)) => {
            *pending = Pending {
                ethertype: carried.ethertype,
                offset: carried.offset as u16,
                limit: carried.limit.min(u32::MAX as usize) as u32,
                outer_layer: word,
            }
        }
        None => pending.outer_layer = 0,
    }
}

/// Whether the main program handed this frame over with its first layer
/// read ([`hand_layer`]): then the tunnel program reads the second
/// ([`track_nested_xdp`]) without reading the first again.
#[inline(always)]
fn handed_layer() -> bool {
    match DECAP_STATE.get_ptr(0) {
        // SAFETY: this CPU's slot, used by one program run at a time.
        Some(state) => unsafe { (*state).pending.outer_layer != 0 },
        None => false,
    }
}

/// [`read_frame`]'s answer for the common tunnelled frame, with its layer
/// as a [`layer_word`]: [`read_common_other`] reads overlays of untagged
/// frames, so the outer IP header is right after the Ethernet header.
#[inline(always)]
fn shortcut_read(overlay: CommonOverlay) -> (Tally, Option<(usize, bool, TcpSegment)>, u8, u64) {
    let outer_v6 = overlay.tunnel.outer_family == 6;
    (
        other_ip_tally(outer_v6, false),
        Some((
            overlay.ip_offset,
            overlay.inner.version == IpVersion::V6,
            overlay.inner.segment,
        )),
        next::SHORTCUT | overlay.tunnel.layers[0],
        overlay.layer_word(ETH_HLEN),
    )
}

/// Describes a shortcut's tunnel in this CPU's [`DECAP_STATE`], for a
/// record the segment may start: the layer of word `outer`
/// ([`layer_word`]) and, unless `inner` is 0, the one inside it
/// ([`describe_layers`]). A function of its own, verified once: a segment
/// comes here only on its way to the slow path ([`track`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn describe_tunnel_xdp(ctx: *mut xdp_md, outer: u64, inner: u64) -> i32 {
    if let Some(frame) = xdp_frame(ctx) {
        describe_tunnel(&frame, outer, inner);
    }
    0
}

/// [`describe_tunnel_xdp`] for the TC programs.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn describe_tunnel_tc(skb: *mut __sk_buff, outer: u64, inner: u64) -> i32 {
    if let Some(frame) = tc_frame(skb) {
        describe_tunnel(&frame, outer, inner);
    }
    0
}

#[inline(always)]
fn describe_tunnel(frame: &Frame, outer: u64, inner: u64) {
    if let Some(state) = DECAP_STATE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, used by one program run at a time; the
        // caller holds no reference to it now.
        describe_layers(frame, unsafe { &mut (*state).tunnel }, outer, inner);
    }
}

/// Counts a segment a tunnel shortcut read in [`Tallies::encap`], as the
/// general way would have: its `layers`, TCP inside.
#[inline(always)]
fn record_overlay(tallies: &PerCpuArray<Tallies>, layers: [u8; 3]) {
    if let Some(tallies) = tallies.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, one
        // program at a time.
        unsafe { (*tallies).record_overlay(layers) };
    }
}

/// Opens the encapsulations of a frame ([`decapsulate_in_place`]), one
/// layer per call of `step_layer` and `enter_layer` (global functions,
/// verified once rather than once per layer and path; `begin` parses the
/// outer headers first), and counts what it found in [`Tallies::encap`].
/// Returns 1 if a TCP segment is inside. Each is a global function of its
/// own: verified on its own, with nothing here touching the packet after
/// a call (packet offsets worked out after a call to a global function
/// trip the 6.18 verifier's precision tracking, "verifier bug: stack
/// slot"), and none so large that its paths multiply past the verifier's
/// limit.
#[inline(always)]
fn open_tunnel(
    tallies: &PerCpuArray<Tallies>,
    begin: impl Fn() -> u32,
    step_layer: impl Fn(u64) -> u32,
    enter_layer: impl Fn() -> u32,
) -> i32 {
    let outcome = decapsulate_in_place(&mut (), tunnel_ports(), |_, depth| {
        if depth == 0 && begin() == 0 {
            return tunnel_outcome::NONE;
        }
        let stepped = step_layer(depth as u64) as u8;
        if stepped != tunnel_outcome::OPENED {
            return stepped;
        }
        enter_layer() as u8
    });
    if outcome == tunnel_outcome::NONE {
        return 0;
    }
    let Some(state) = DECAP_STATE.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, used by one program run at a time; the
    // layers are opened.
    let (counted, tcp_inside) = unsafe {
        (
            encap_tally_of(outcome, &(*state).tunnel, &(*state).inner),
            outcome == tunnel_outcome::INNER && (*state).inner.class == inner_class::TCP,
        )
    };
    if let (Some(counted), Some(tallies)) = (counted, tallies.get_ptr_mut(0)) {
        // SAFETY: the per-CPU slot is only touched by this CPU, one
        // program at a time.
        unsafe { (*tallies).record_encap(&counted) };
    }
    tcp_inside as i32
}

/// [`open_tunnel`] for the XDP programs.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn open_tunnel_xdp(ctx: *mut xdp_md) -> i32 {
    open_tunnel(
        &TALLIES,
        || begin_tunnel_xdp(ctx),
        |depth| step_layer_xdp(ctx, depth),
        || enter_layer_xdp(ctx),
    )
}

/// [`open_tunnel`] for the TC egress program.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn open_tunnel_tc(skb: *mut __sk_buff) -> i32 {
    open_tunnel(
        &EGRESS_TALLIES,
        || begin_tunnel_tc(skb),
        |depth| step_layer_tc(skb, depth),
        || enter_layer_tc(skb),
    )
}

/// [`open_tunnel`] for the TC ingress program: counted as received.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn open_tunnel_tc_ingress(skb: *mut __sk_buff) -> i32 {
    open_tunnel(
        &TALLIES,
        || begin_tunnel_tc(skb),
        |depth| step_layer_tc(skb, depth),
        || enter_layer_tc(skb),
    )
}

/// The outer headers of an XDP program's frame, read into this CPU's
/// [`DECAP_STATE`] ([`DecapState::begin`]): 1 if they stop where a tunnel
/// may start.
///
/// [`DecapState::begin`]: teardown_common::tunnel::DecapState::begin
#[unsafe(no_mangle)]
#[inline(never)]
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "a global function: the verifier checks its context pointer's type, and it is null-checked"
)]
pub extern "C" fn begin_tunnel_xdp(ctx: *mut xdp_md) -> u32 {
    // SAFETY: null-checked; the program's own context.
    let Some(md) = (unsafe { ctx.as_ref() }) else {
        return 0;
    };
    begin_tunnel(md.data as usize, md.data_end as usize)
}

/// [`begin_tunnel_xdp`] for the TC program.
#[unsafe(no_mangle)]
#[inline(never)]
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "a global function: the verifier checks its context pointer's type, and it is null-checked"
)]
pub extern "C" fn begin_tunnel_tc(skb: *mut __sk_buff) -> u32 {
    // SAFETY: null-checked; the program's own context.
    let Some(buff) = (unsafe { skb.as_ref() }) else {
        return 0;
    };
    begin_tunnel(buff.data as usize, buff.data_end as usize)
}

#[inline(always)]
fn begin_tunnel(start: usize, end: usize) -> u32 {
    let Some(state) = DECAP_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; the caller holds no reference to it now.
    let state = unsafe { &mut *state };
    if setting!(IP_LINK) != 0 {
        // The packet starts with its IP header ([`ip_link_work`]); the
        // start opaque, as there, for the first byte's bounds check.
        let start = core::hint::black_box(start);
        return state.begin_ip(&Frame { start, end }) as u32;
    }
    state.begin(&Frame { start, end }) as u32
}

/// The encapsulation header of an XDP program's frame that this CPU's
/// [`DECAP_STATE`] stops at ([`step_layer`]).
#[unsafe(no_mangle)]
#[inline(never)]
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "a global function: the verifier checks its context pointer's type, and it is null-checked"
)]
pub extern "C" fn step_layer_xdp(ctx: *mut xdp_md, depth: u64) -> u32 {
    // SAFETY: null-checked; the program's own context.
    let Some(md) = (unsafe { ctx.as_ref() }) else {
        return tunnel_outcome::NONE as u32;
    };
    with_state(md.data as usize, md.data_end as usize, |frame, state| {
        step_layer(frame, state, depth as usize, tunnel_ports())
    })
}

/// The frame inside the layer [`step_layer_xdp`] read ([`enter_layer`]).
#[unsafe(no_mangle)]
#[inline(never)]
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "a global function: the verifier checks its context pointer's type, and it is null-checked"
)]
pub extern "C" fn enter_layer_xdp(ctx: *mut xdp_md) -> u32 {
    // SAFETY: null-checked; the program's own context.
    let Some(md) = (unsafe { ctx.as_ref() }) else {
        return tunnel_outcome::NONE as u32;
    };
    with_state(md.data as usize, md.data_end as usize, |frame, state| {
        enter_layer::<_, false>(frame, state)
    })
}

/// [`step_layer_xdp`] for the TC program.
#[unsafe(no_mangle)]
#[inline(never)]
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "a global function: the verifier checks its context pointer's type, and it is null-checked"
)]
pub extern "C" fn step_layer_tc(skb: *mut __sk_buff, depth: u64) -> u32 {
    // SAFETY: null-checked; the program's own context.
    let Some(buff) = (unsafe { skb.as_ref() }) else {
        return tunnel_outcome::NONE as u32;
    };
    with_state(
        buff.data as usize,
        buff.data_end as usize,
        |frame, state| step_layer(frame, state, depth as usize, tunnel_ports()),
    )
}

/// [`enter_layer_xdp`] for the TC program.
#[unsafe(no_mangle)]
#[inline(never)]
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "a global function: the verifier checks its context pointer's type, and it is null-checked"
)]
pub extern "C" fn enter_layer_tc(skb: *mut __sk_buff) -> u32 {
    // SAFETY: null-checked; the program's own context.
    let Some(buff) = (unsafe { skb.as_ref() }) else {
        return tunnel_outcome::NONE as u32;
    };
    with_state(
        buff.data as usize,
        buff.data_end as usize,
        enter_layer::<_, false>,
    )
}

/// `work` on the frame `[start, end)` and this CPU's [`DECAP_STATE`].
#[inline(always)]
fn with_state(start: usize, end: usize, work: impl FnOnce(&Frame, &mut DecapState) -> u8) -> u32 {
    let Some(state) = DECAP_STATE.get_ptr_mut(0) else {
        return tunnel_outcome::NONE as u32;
    };
    // SAFETY: this CPU's slot; the caller holds no reference to it now.
    work(&Frame { start, end }, unsafe { &mut *state }) as u32
}

/// The frame of an XDP program's context, for a global function (given
/// the context as a pointer, whose type the verifier checks): `None` if
/// the pointer is null.
#[inline(always)]
fn xdp_frame(ctx: *mut xdp_md) -> Option<Frame> {
    // SAFETY: null-checked; the program's own context.
    let md = unsafe { ctx.as_ref() }?;
    Some(Frame {
        start: md.data as usize,
        end: md.data_end as usize,
    })
}

/// [`xdp_frame`] for a TC program's context.
#[inline(always)]
fn tc_frame(skb: *mut __sk_buff) -> Option<Frame> {
    // SAFETY: null-checked; the program's own context.
    let buff = unsafe { skb.as_ref() }?;
    Some(Frame {
        start: buff.data as usize,
        end: buff.data_end as usize,
    })
}

/// What [`track_shortcut_xdp`] did with a frame.
mod shortcut {
    /// Nothing: the general way opens it.
    pub const DECLINED: i32 = 0;
    /// Its segment tracked, one layer in.
    pub const TRACKED: i32 = 1;
    /// Its first layer read, another inside: [`super::track_nested_xdp`]'s.
    pub const NESTED: i32 = 2;
}

/// The tunnel program's shortcuts, in an XDP program: one layer of any
/// kind ([`read_layer`]: an IP tunnel, also behind one or two VLAN tags
/// and Geneve with options; MPLS of up to three labels, a pseudowire,
/// PPPoE, VN-Tag, 802.1ah, FabricPath), read at fixed offsets, with the
/// common TCP frame inside: its segment tracked and the layer counted, as
/// the general way would, without opening layers one by one
/// ([`shortcut::TRACKED`]). A frame whose first layer carries another is
/// left to [`track_nested_xdp`] ([`shortcut::NESTED`]); any other to the
/// general way ([`shortcut::DECLINED`]). On the host's clock.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_shortcut_xdp(ctx: *mut xdp_md) -> i32 {
    let Some(frame) = xdp_frame(ctx) else {
        return shortcut::DECLINED;
    };
    track_shortcut(&frame, &LiveClock, &TALLIES, |outer, inner| {
        describe_tunnel_xdp(ctx, outer, inner);
    })
}

/// [`track_shortcut_xdp`] at capture time `now`, for the replay's tunnel
/// program. A function of its own per clock (so too for the nested and
/// the general way): one function taking the clock as an argument held
/// both copies of the fast path, and each program had the verifier check
/// both, nearly doubling its work.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_shortcut_xdp_replay(ctx: *mut xdp_md, now: u64) -> i32 {
    let Some(frame) = xdp_frame(ctx) else {
        return shortcut::DECLINED;
    };
    track_shortcut(&frame, &ReplayClock { now }, &TALLIES, |outer, inner| {
        describe_tunnel_xdp(ctx, outer, inner);
    })
}

/// [`track_shortcut_xdp`] for the TC egress program.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_shortcut_tc(skb: *mut __sk_buff) -> i32 {
    let Some(frame) = tc_frame(skb) else {
        return shortcut::DECLINED;
    };
    track_shortcut(&frame, &LiveClock, &EGRESS_TALLIES, |outer, inner| {
        describe_tunnel_tc(skb, outer, inner);
    })
}

/// [`track_shortcut_xdp`] for the TC ingress program. A function of its
/// own per tallies (so too for the nested and the general way): a map
/// chosen at run time would keep the verifier from inlining its lookup.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_shortcut_tc_ingress(skb: *mut __sk_buff) -> i32 {
    let Some(frame) = tc_frame(skb) else {
        return shortcut::DECLINED;
    };
    track_shortcut(&frame, &LiveClock, &TALLIES, |outer, inner| {
        describe_tunnel_tc(skb, outer, inner);
    })
}

/// `describe` describes the tunnel from its layers' words, on the way to
/// the slow path ([`track`]).
#[inline(always)]
fn track_shortcut(
    frame: &Frame,
    clock: &impl FlowClock,
    tallies: &PerCpuArray<Tallies>,
    describe: impl Fn(u64, u64),
) -> i32 {
    let ip_link = setting!(IP_LINK) != 0;
    let start = if ip_link {
        // A packet that starts with its IP header ([`ip_link_work`]), its
        // start opaque for the first byte's bounds check, as there.
        ip_underlay(&Frame {
            start: core::hint::black_box(frame.start),
            end: frame.end,
        })
    } else {
        let Some(start) = underlay(frame) else {
            return shortcut::DECLINED;
        };
        start
    };
    // VXLAN, Geneve, GRE or IP-in-IP behind one or two tags, the common
    // TCP frame inside: at fixed offsets, as the main program's shortcut
    // reads them untagged.
    if !ip_link && let Some(overlay) = read_tagged_overlay(frame, tunnel_ports(), &start) {
        let word = overlay.layer_word(start.offset);
        let is_v6 = overlay.inner.version == IpVersion::V6;
        track::<true, true, _>(
            frame,
            &overlay.inner.segment,
            overlay.ip_offset,
            is_v6,
            clock,
            || describe(word, 0),
        );
        record_overlay(tallies, [overlay.tunnel.layers[0], 0, 0]);
        return shortcut::TRACKED;
    }
    let Some(layer) = read_layer(frame, tunnel_ports(), &start) else {
        return shortcut::DECLINED;
    };
    let Some(state) = DECAP_STATE.get_ptr_mut(0) else {
        return shortcut::DECLINED;
    };
    // SAFETY: this CPU's slot, used by one program run at a time; no other
    // reference to it is held here.
    let state = unsafe { &mut *state };
    let word = layer_word(&layer);
    let Some(inner) = carried_tcp(frame, &layer) else {
        // Where the layer inside starts, for `track_nested_xdp`, which
        // reads it at an offset the verifier takes as any (a global
        // function's argument), so its paths do not multiply by this
        // function's; and this layer, for the tunnel's description.
        state.pending = Pending {
            ethertype: layer.carried.ethertype,
            offset: layer.carried.offset as u16,
            limit: layer.carried.limit.min(u32::MAX as usize) as u32,
            outer_layer: word,
        };
        return shortcut::NESTED;
    };
    // The offset opaque to the optimiser, as in `track_inner`.
    let is_v6 = inner.version == IpVersion::V6;
    track::<true, true, _>(
        frame,
        &inner.segment,
        layer.carried.offset,
        is_v6,
        clock,
        || describe(word, 0),
    );
    record_overlay(tallies, [layer.kind, 0, 0]);
    shortcut::TRACKED
}

/// The second layer of a frame [`track_shortcut_xdp`] read the first of
/// ([`shortcut::NESTED`]), where this CPU's [`DECAP_STATE`] says it
/// starts, read the same way ([`read_layer`]), with the common TCP frame
/// inside: its segment tracked, both layers in its tunnel and counted. 1
/// if so, 0 for the general way.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_nested_xdp(ctx: *mut xdp_md) -> i32 {
    let Some(frame) = xdp_frame(ctx) else {
        return 0;
    };
    track_nested(&frame, &LiveClock, &TALLIES, |outer, inner| {
        describe_tunnel_xdp(ctx, outer, inner);
    })
}

/// [`track_nested_xdp`] at capture time `now`, for the replay.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_nested_xdp_replay(ctx: *mut xdp_md, now: u64) -> i32 {
    let Some(frame) = xdp_frame(ctx) else {
        return 0;
    };
    track_nested(&frame, &ReplayClock { now }, &TALLIES, |outer, inner| {
        describe_tunnel_xdp(ctx, outer, inner);
    })
}

/// [`track_nested_xdp`] for the TC egress program.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_nested_tc(skb: *mut __sk_buff) -> i32 {
    let Some(frame) = tc_frame(skb) else {
        return 0;
    };
    track_nested(&frame, &LiveClock, &EGRESS_TALLIES, |outer, inner| {
        describe_tunnel_tc(skb, outer, inner);
    })
}

/// [`track_nested_xdp`] for the TC ingress program.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_nested_tc_ingress(skb: *mut __sk_buff) -> i32 {
    let Some(frame) = tc_frame(skb) else {
        return 0;
    };
    track_nested(&frame, &LiveClock, &TALLIES, |outer, inner| {
        describe_tunnel_tc(skb, outer, inner);
    })
}

#[inline(always)]
fn track_nested(
    frame: &Frame,
    clock: &impl FlowClock,
    tallies: &PerCpuArray<Tallies>,
    describe: impl Fn(u64, u64),
) -> i32 {
    let Some(state) = DECAP_STATE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot, used by one program run at a time; no other
    // reference to it is held here.
    let state = unsafe { &mut *state };
    let pending = state.pending;
    // Bounded again: the value made a round trip through memory.
    if pending.offset as usize > MAX_INNER_START + 2 {
        return 0;
    }
    let start = LayerStart {
        ethertype: pending.ethertype,
        offset: pending.offset as usize,
        limit: if pending.limit == u32::MAX {
            usize::MAX
        } else {
            pending.limit as usize
        },
    };
    let Some(layer) = read_layer(frame, tunnel_ports(), &start) else {
        return 0;
    };
    let Some(inner) = carried_tcp(frame, &layer) else {
        return 0;
    };
    let outer = pending.outer_layer;
    let outermost = layer_of_word(outer).kind;
    let word = layer_word(&layer);
    let is_v6 = inner.version == IpVersion::V6;
    track::<true, true, _>(
        frame,
        &inner.segment,
        layer.carried.offset,
        is_v6,
        clock,
        || describe(outer, word),
    );
    record_overlay(tallies, [outermost, layer.kind, 0]);
    1
}

/// Tracks the TCP segment an XDP program's frame carries inside its
/// tunnel ([`DECAP_STATE`] says where), as a connection of its own, on the
/// host's clock.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_inner_xdp(ctx: *mut xdp_md) -> i32 {
    let Some(frame) = xdp_frame(ctx) else {
        return 0;
    };
    track_inner(&frame, &LiveClock);
    0
}

/// [`track_inner_xdp`] at capture time `now`, for the replay.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_inner_xdp_replay(ctx: *mut xdp_md, now: u64) -> i32 {
    let Some(frame) = xdp_frame(ctx) else {
        return 0;
    };
    track_inner(&frame, &ReplayClock { now });
    0
}

/// [`track_inner_xdp`] for the TC program.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn track_inner_tc(skb: *mut __sk_buff) -> i32 {
    let Some(frame) = tc_frame(skb) else {
        return 0;
    };
    track_inner(&frame, &LiveClock);
    0
}

#[inline(always)]
fn track_inner(frame: &Frame, clock: &impl FlowClock) {
    let Some(state) = DECAP_STATE.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by one program run at a time.
    let inner = unsafe { &(*state).inner };
    if let Some(segment) = inner.reparse(frame) {
        // The same fast path as an untunnelled segment's, with the offset
        // opaque to the optimiser as in the TC program (it would drop the
        // address loads' bounds checks, proved from the parse's, by
        // reasoning the verifier does not follow); a record it starts
        // records its tunnel.
        let ip_offset = inner.ip_offset as usize;
        // The general way described the tunnel as it opened it.
        track::<true, true, _>(frame, &segment, ip_offset, inner.is_v6 != 0, clock, || {});
    }
}

/// The XDP programs' work on one frame: its TCP segment to the flow table,
/// then its tally. True if the frame may carry a tunnel, which the caller
/// then hands to its tunnel program ([`teardown_tunnel`]).
#[inline(always)]
pub(crate) fn count_and_track(ctx: &XdpContext, clock: &impl FlowClock) -> bool {
    let frame = &Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (counted, segment, next, overlay) = read_frame(frame);
    // The flow table first, the tallies after: the tally is two small
    // numbers to keep across the table's lookups, where the segment's fields
    // would all have to be saved across the tallies' lookup (the BPF calling
    // convention leaves four registers that survive a call).
    if let Some((ip_offset, is_v6, tcp)) = segment {
        if next & next::SHORTCUT != 0 {
            // Inside a tunnel: a record it starts records the tunnel.
            track::<false, true, _>(frame, &tcp, ip_offset, is_v6, clock, || {
                describe_tunnel_xdp(ctx.ctx, overlay, 0);
            });
            record_tally(&TALLIES, &counted);
            record_overlay(&TALLIES, [next & !next::SHORTCUT, 0, 0]);
            return false;
        }
        track::<false, false, _>(frame, &tcp, ip_offset, is_v6, clock, || {});
        record_tally(&TALLIES, &counted);
        return false;
    }
    record_tally(&TALLIES, &counted);
    next == next::MAY_TUNNEL
}

#[inline(always)]
fn record_tally(tallies: &PerCpuArray<Tallies>, counted: &Tally) {
    if let Some(tallies) = tallies.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, and only here.
        unsafe { (*tallies).record(counted) };
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
// Inlined into the wrapper the macro makes: as a function of its own it
// would be a static subprogram, whose stack the 6.18 verifier\'s precision
// tracking gets wrong ("verifier bug: stack slot").
#[inline(always)]
pub fn teardown(ctx: XdpContext) -> u32 {
    if count_and_track(&ctx, &LiveClock) {
        // SAFETY: the program's own context; on failure (no program in
        // the slot) the call returns and the frame passes as ever.
        unsafe { TUNNEL_XDP.tail_call(&ctx, tunnel_slot::LIVE) };
    }
    xdp_action::XDP_PASS
}

/// The same work on capture time: `teardown replay --connections` passes
/// each packet's time in its XDP metadata ([`ReplayClock::of`]), so every
/// timeout runs on the capture's clock.
/// Multi-buffer like [`teardown`], so both load and run alike.
#[xdp(frags)]
// Inlined into the wrapper the macro makes: as a function of its own it
// would be a static subprogram, whose stack the 6.18 verifier\'s precision
// tracking gets wrong ("verifier bug: stack slot").
#[inline(always)]
pub fn teardown_replay(ctx: XdpContext) -> u32 {
    if count_and_track(&ctx, &ReplayClock::of(ctx.ctx)) {
        // SAFETY: as in `teardown`.
        unsafe { TUNNEL_XDP.tail_call(&ctx, tunnel_slot::REPLAY) };
    }
    xdp_action::XDP_PASS
}

/// Frames whose own headers carry no TCP but may carry a tunnel, handed
/// on by [`teardown`] with a tail call: the carrier's common frame read
/// at fixed offsets ([`track_shortcut_xdp`]), any other's layers opened and
/// counted ([`open_tunnel_xdp`]), the TCP segment inside tracked as a
/// connection of its own, with its tunnel ([`track_inner_xdp`]). A program of its own,
/// entered by tail call, so that its chain of calls starts afresh: called
/// from [`teardown`], its frames and the flow table's functions' under
/// [`teardown`]'s own passed the 512 bytes of stack the kernel allows.
#[xdp(frags)]
pub fn teardown_tunnel(ctx: XdpContext) -> u32 {
    let read = if handed_layer() {
        track_nested_xdp(ctx.ctx) != 0
    } else {
        match track_shortcut_xdp(ctx.ctx) {
            shortcut::NESTED => track_nested_xdp(ctx.ctx) != 0,
            done => done == shortcut::TRACKED,
        }
    };
    if !read && open_tunnel_xdp(ctx.ctx) != 0 {
        track_inner_xdp(ctx.ctx);
    }
    xdp_action::XDP_PASS
}

/// [`teardown_tunnel`] on the capture's time, for [`teardown_replay`].
#[xdp(frags)]
pub fn teardown_tunnel_replay(ctx: XdpContext) -> u32 {
    let now = ReplayClock::of(ctx.ctx).now;
    let read = if handed_layer() {
        track_nested_xdp_replay(ctx.ctx, now) != 0
    } else {
        match track_shortcut_xdp_replay(ctx.ctx, now) {
            shortcut::NESTED => track_nested_xdp_replay(ctx.ctx, now) != 0,
            done => done == shortcut::TRACKED,
        }
    };
    if !read && open_tunnel_xdp(ctx.ctx) != 0 {
        track_inner_xdp_replay(ctx.ctx, now);
    }
    xdp_action::XDP_PASS
}

/// [`teardown_tunnel`] for [`teardown_egress`].
#[classifier]
pub fn teardown_tunnel_egress(ctx: TcContext) -> i32 {
    tunnel_tc(
        ctx.skb.skb,
        track_shortcut_tc,
        track_nested_tc,
        open_tunnel_tc,
    )
}

/// [`teardown_tunnel`] for [`teardown_ingress`].
#[classifier]
pub fn teardown_tunnel_ingress(ctx: TcContext) -> i32 {
    tunnel_tc(
        ctx.skb.skb,
        track_shortcut_tc_ingress,
        track_nested_tc_ingress,
        open_tunnel_tc_ingress,
    )
}

/// A TC tunnel program's work, with its direction's global functions.
#[inline(always)]
fn tunnel_tc(
    skb: *mut __sk_buff,
    track_shortcut: extern "C" fn(*mut __sk_buff) -> i32,
    track_nested: extern "C" fn(*mut __sk_buff) -> i32,
    open_tunnel: extern "C" fn(*mut __sk_buff) -> i32,
) -> i32 {
    let read = if handed_layer() {
        track_nested(skb) != 0
    } else {
        match track_shortcut(skb) {
            shortcut::NESTED => track_nested(skb) != 0,
            done => done == shortcut::TRACKED,
        }
    };
    if !read && open_tunnel(skb) != 0 {
        track_inner_tc(skb);
    }
    TC_ACT_UNSPEC
}

/// Bytes of headers the TC programs want in the linear part of the
/// skb: enough for a TCP segment inside VXLAN over IPv6 with IPv6 inside
/// (14 + 40 + 8 + 8 + 14 + 40 + 60 = 184).
const TC_HEADER_BYTES: u32 = 192;

/// The host's own segments (SYN-ACKs, FINs, RSTs it sends), into the same
/// flow table, and counted in tallies of their own ([`EGRESS_TALLIES`]).
#[classifier]
// Inlined into the wrapper the macro makes: as a function of its own it
// would be a static subprogram, whose stack the 6.18 verifier\'s precision
// tracking gets wrong ("verifier bug: stack slot").
#[inline(always)]
pub fn teardown_egress(ctx: TcContext) -> i32 {
    if egress_work(&ctx) {
        // SAFETY: as in `teardown`.
        unsafe { TUNNEL_TC.tail_call(&ctx, tc_tunnel_slot::EGRESS) };
    }
    // Let the packet go on to whatever else is attached.
    TC_ACT_UNSPEC
}

/// What [`teardown`] does, at TC ingress (`--mode tc`, and `--mode auto`
/// on a veth or without native XDP): the same flow table and tallies, every received packet
/// counted and its TCP segment tracked. On a software device XDP costs
/// more than it reads: generic XDP copies every multi-page packet (a
/// veth's TSO segments) into pages of its own for the program, native XDP
/// on a veth turns the peer's TSO off. TC reads the packet where it is.
/// Like generic XDP, it sees a packet after GRO, one run per aggregate.
#[classifier]
// Inlined into the wrapper the macro makes, as `teardown_egress` is.
#[inline(always)]
pub fn teardown_ingress(ctx: TcContext) -> i32 {
    if tc_work(&ctx, &TALLIES) {
        // SAFETY: as in `teardown`.
        unsafe { TUNNEL_TC.tail_call(&ctx, tc_tunnel_slot::INGRESS) };
    }
    TC_ACT_UNSPEC
}

/// The egress program's work on one packet, also run by the benchmark's
/// egress wrapper. True if the packet may carry a tunnel
/// ([`teardown_tunnel_egress`]).
#[inline(always)]
pub(crate) fn egress_work(ctx: &TcContext) -> bool {
    tc_work(ctx, &EGRESS_TALLIES)
}

/// A TC program's work on one packet, counted in `tallies`. True if the
/// packet may carry a tunnel, for the caller's tunnel program.
#[inline(always)]
fn tc_work(ctx: &TcContext, tallies: &PerCpuArray<Tallies>) -> bool {
    if setting!(IP_LINK) != 0 {
        return ip_link_work(ctx, tallies);
    }
    // Read first, while the context pointer is as the program got it: a
    // load from it later, after calls, had LLVM keep the field's address
    // instead, which the verifier refuses ("dereference of modified ctx
    // ptr").
    let stripped_tag = stripped_vlan_tag(ctx);
    let linear = ctx.data_end() - ctx.data();
    if (linear as u32) < TC_HEADER_BYTES
        && ctx.len() > linear as u32
        && parse_common(&Frame {
            start: ctx.data(),
            end: ctx.data_end(),
        })
        .is_none()
    {
        // Headers may sit in paged data; failing to pull only means a
        // shorter view. Not for the common TCP segment whose headers are
        // all in the linear part already, as a TSO or GRO segment's are:
        // the pull copies from the pages, often into a new head, which
        // cost such a segment about 200 to 300 ns at TC ingress (bulk TCP
        // into a veth, `kernel.bpf_stats_enabled`), twice the program.
        let _ = ctx.pull_data(ctx.len().min(TC_HEADER_BYTES));
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (counted, segment, next, overlay) = read_frame(&frame);
    if let Some((ip_offset, is_v6, tcp)) = segment {
        if next & next::SHORTCUT != 0 {
            track::<true, true, _>(&frame, &tcp, ip_offset, is_v6, &LiveClock, || {
                describe_tunnel_tc(ctx.skb.skb, overlay, 0);
            });
            record_tc_tally(tallies, counted, stripped_tag);
            record_overlay(tallies, [next & !next::SHORTCUT, 0, 0]);
            return false;
        }
        track::<true, false, _>(&frame, &tcp, ip_offset, is_v6, &LiveClock, || {});
        record_tc_tally(tallies, counted, stripped_tag);
        return false;
    }
    record_tc_tally(tallies, counted, stripped_tag);
    next == next::MAY_TUNNEL
}

/// [`tc_work`] on an interface whose packets start with their IP header
/// ([`IP_LINK`]: a tun or WireGuard device): the IP version in the first
/// byte says which, the common TCP segment is read as the main shortcut
/// reads it after an Ethernet header, anything else by the general
/// parser from the IP header on, and counted as [`tally`] counts it with
/// no Ethernet header before it. True if the packet may carry a tunnel,
/// which the caller's tunnel program then reads from the first byte
/// ([`track_shortcut`], [`ip_underlay`]; the general way from
/// [`DecapState::begin_ip`]).
#[inline(always)]
fn ip_link_work(ctx: &TcContext, tallies: &PerCpuArray<Tallies>) -> bool {
    // The packet as it lies. Its start opaque: LLVM narrowed the first
    // byte's bounds check (`start + 1 > end`, both zero-extended 32-bit
    // loads) to a 32-bit compare of the two pointers, from which the
    // verifier learns no bounds.
    let packet = || Frame {
        start: core::hint::black_box(ctx.data()),
        end: ctx.data_end(),
    };
    let linear = ctx.data_end() - ctx.data();
    if (linear as u32) < TC_HEADER_BYTES && ctx.len() > linear as u32 && {
        let frame = packet();
        parse_common_ip(&frame, ip_version_type(&frame), 0, usize::MAX).is_none()
    } {
        // As in `tc_work`: headers may sit in paged data, and a common
        // segment whose headers are all linear (a GSO packet's) is not
        // pulled, a copy from its pages.
        let _ = ctx.pull_data(ctx.len().min(TC_HEADER_BYTES));
    }
    let frame = packet();
    let network_type = ip_version_type(&frame);
    if let Some(common) = parse_common_ip(&frame, network_type, 0, usize::MAX) {
        let is_v6 = common.version == IpVersion::V6;
        track::<true, false, _>(&frame, &common.segment, 0, is_v6, &LiveClock, || {});
        record_tally(tallies, &tally_common(&common));
        return false;
    }
    let parsed = Parsed {
        vlan_tags: 0,
        payload: parse_network(&frame, network_type, 0, usize::MAX),
        network_type,
        network_offset: 0,
    };
    if let Some((ip, tcp)) = parsed.tcp() {
        let is_v6 = ip.version == IpVersion::V6;
        track::<true, false, _>(&frame, tcp, ip.offset as usize, is_v6, &LiveClock, || {});
        record_tally(tallies, &tally(&parsed));
        return false;
    }
    record_tally(tallies, &tally(&parsed));
    if may_carry_tunnel(&frame, &parsed, tunnel_ports()) {
        // No layer read here: the tunnel program reads from the first
        // byte ([`track_shortcut`], [`ip_underlay`]).
        hand_layer(None);
        return true;
    }
    false
}

/// [`record_tally`] for a TC program's packet, whose outermost VLAN tag
/// the kernel may have taken out of its frame ([`stripped_vlan_tag`]).
/// Applied here, after the flow table: applied to the frame's tally as it
/// was read, the test changed how LLVM merged the paths, and one path
/// stored a register it never set, which the verifier refuses ("R4
/// !read_ok").
#[inline(always)]
fn record_tc_tally(tallies: &PerCpuArray<Tallies>, counted: Tally, stripped_tag: bool) {
    let counted = if stripped_tag {
        counted.with_stripped_tag()
    } else {
        counted
    };
    record_tally(tallies, &counted);
}

/// Whether the kernel took the packet's outermost VLAN tag out of its
/// frame before the TC program runs ([`Tally::with_stripped_tag`]): at
/// ingress every tagged frame's (`skb_vlan_untag`, before TC), at egress
/// a VLAN device's packets where the device below inserts tags itself.
/// Its frame is counted as tagged, as XDP and tcpdump count it. The flow
/// key has no VLAN, so tracking is the same either way.
#[inline(always)]
fn stripped_vlan_tag(ctx: &TcContext) -> bool {
    // SAFETY: the program's own context; the verifier rewrites the
    // field's load into one of the packet's tag metadata.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.skb.skb).vlan_present)) != 0 }
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

//! The kernel's own reason for every reset this host sends: a program on
//! the `tcp:tcp_send_reset` tracepoint. It runs once per reset, never per
//! packet, so the XDP and TC programs' cost does not change.
//!
//! The record's layout comes from user space ([`RESET_LAYOUT`], read from
//! the tracepoint's `format` file), so the program holds no kernel's
//! offsets or reason numbering of its own.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, generated},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use teardown_common::{
    events::half_open_window,
    reasons::{
        RESET_EVENTS_BYTES, ResetCounts, ResetEvent, ResetLayout, SOCKADDR_BYTES, endpoint_halves,
        reset_flag, tcp_state,
    },
    table::{WAYS, flow_hash, fold_address, matched, print_of, set_of},
};

use crate::{
    clock::{FlowClock, LiveClock},
    fast_path::set_may_hold,
    maps::{FLOW_TABLE, SET_SHIFT, SKIP_UNTRACKED_RESETS, TABLE_PRESSURE, setting},
};

/// Where the tracepoint record's fields are; see [`ResetLayout`].
#[map]
static RESET_LAYOUT: Array<ResetLayout> = Array::with_max_entries(1, 0);

/// One event per reset, for user space to join to the connection's record.
#[map]
static RESET_EVENTS: RingBuf = RingBuf::with_byte_size(RESET_EVENTS_BYTES, 0);

/// Resets by reason, this CPU's; exact even when events are lost.
#[map]
static RESET_COUNTS: PerCpuArray<ResetCounts> = PerCpuArray::with_max_entries(1, 0);

/// Reads one field of the tracepoint's record; `None` if the kernel refused.
#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u16) -> Option<T> {
    // SAFETY: read_at copies through bpf_probe_read, which checks the
    // address; the offset comes from the record's own format.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// Whether the socket's owner holds it now (`sk->sk_lock.owned`). Only then
/// is the running task the process behind the reset: a `close()` or
/// `setsockopt()` takes the lock, while the softirq and timer paths send
/// only when no process owns the socket (they defer to the owner
/// otherwise), and then the running task is whatever was interrupted.
/// Listening, time-wait and request sockets are not full sockets (or, for a
/// listener, are served without its lock), so they never count.
#[inline(always)]
fn owner_is_running(sk: u64, state: u32, owned_offset: u16) -> bool {
    if sk == 0
        || owned_offset == 0
        || matches!(
            state,
            tcp_state::LISTEN | tcp_state::TIME_WAIT | tcp_state::NEW_SYN_RECV
        )
    {
        return false;
    }
    let owned = (sk + owned_offset as u64) as *const u8;
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    matches!(unsafe { bpf_probe_read_kernel(owned) }, Ok(value) if value != 0)
}

/// Copies `len` bytes of kernel memory at `src` to `dst`; on failure the
/// helper zeroes `dst`, so a field that cannot be read reads as zeros.
///
/// # Safety
/// `dst` must be valid for `len` bytes of writes.
#[inline(always)]
unsafe fn copy_kernel(dst: *mut u8, len: u32, src: *const u8) {
    // SAFETY: the helper checks `src`; the caller vouches for `dst`.
    unsafe { generated::bpf_probe_read_kernel(dst.cast(), len, src.cast()) };
}

/// Reads a pointer-sized word of kernel memory at `base + offset`; 0 when
/// it cannot be read.
#[inline(always)]
fn read_pointer(base: u64, offset: u16) -> u64 {
    if base == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u64) }.unwrap_or(0)
}

/// Whether the reset belongs to the namespace watched: the tracepoint
/// fires for every namespace on the host (containers, the test's client).
/// The socket's namespace when there is a socket, else the namespace of
/// the device the answered segment arrived on. Without the offsets (the
/// kernel's BTF did not give them) every reset counts.
#[inline(always)]
fn in_watched_netns(layout: &ResetLayout, sk: u64, skb: u64) -> bool {
    if layout.sk_net == 0 || layout.net_inum == 0 || layout.skb_dev == 0 || layout.dev_net == 0 {
        return true;
    }
    let net = if sk != 0 {
        read_pointer(sk, layout.sk_net)
    } else {
        read_pointer(read_pointer(skb, layout.skb_dev), layout.dev_net)
    };
    if net == 0 {
        return false;
    }
    let inum = (net + layout.net_inum as u64) as *const u32;
    // SAFETY: bpf_probe_read_kernel checks the address and fails cleanly.
    matches!(unsafe { bpf_probe_read_kernel(inum) }, Ok(found) if found == layout.netns)
}

/// Whether the flow table is under pressure now (a window under pressure
/// on any CPU limits the next: see `TABLE_PRESSURE`), on the clock the
/// admission's windows run on.
#[inline(always)]
fn table_under_pressure() -> bool {
    let now = LiveClock.coarse();
    TABLE_PRESSURE
        .get(0)
        .is_some_and(|stamp| *stamp >= half_open_window(now))
}

/// Whether the flow table holds a record of the connection between `local`
/// and `remote`: the fast path's probe of its set, without the lock. A
/// filter only: a record changing hands meanwhile may be misread either
/// way, which costs one event sent for nothing or one reason missing from
/// a flood's debris.
#[inline(always)]
fn has_record(local: &[u8; SOCKADDR_BYTES], remote: &[u8; SOCKADDR_BYTES]) -> bool {
    let (Some((family, local, local_port)), Some((_, remote, remote_port))) =
        (endpoint_halves(local), endpoint_halves(remote))
    else {
        // Not an address the table keys: let user space decide.
        return true;
    };
    let hash = flow_hash(
        fold_address(&local),
        local_port,
        fold_address(&remote),
        remote_port,
    );
    let set = set_of(hash, setting!(SET_SHIFT));
    // The set's prints first: under the pressure that calls this, most
    // resets are an ACK flood's, of connections with no record, and the
    // probe's cache miss was most of their cost.
    if !set_may_hold(set, print_of(hash)) {
        return false;
    }
    let mut way = 0;
    while way < WAYS {
        if let Some(slot) = FLOW_TABLE.get(set + way) {
            let found = if family == 6 {
                slot.direction_of::<true>(&local, local_port, &remote, remote_port, family)
            } else {
                slot.direction_of::<false>(&local, local_port, &remote, remote_port, family)
            };
            if found != matched::NONE {
                return true;
            }
        }
        way += 1;
    }
    false
}

/// Zeroes an event's command name with two stores (volatile, or the
/// compiler would call `memset` for them).
///
/// # Safety
/// `comm` is a ResetEvent's `comm`, 8-byte aligned (offset 80 of a
/// u64-aligned struct).
#[inline(always)]
unsafe fn clear_comm(comm: *mut [u8; 16]) {
    let words = comm.cast::<u64>();
    // SAFETY: two aligned u64s inside the 16 bytes, as the caller vouches.
    unsafe {
        words.write_volatile(0);
        words.add(1).write_volatile(0);
    }
}

/// Counts the reset and sends its event.
///
/// The event is filled in place in the ring buffer, field by field: a
/// zeroed local copy would make the compiler call `memset`, a function the
/// loader would have to link in beside the program.
#[inline(always)]
pub(crate) fn on_send_reset(ctx: &TracePointContext) {
    let Some(layout) = RESET_LAYOUT.get(0) else {
        return;
    };
    if layout.enabled == 0 {
        return;
    }
    let sk: u64 = field(ctx, layout.sk).unwrap_or(0);
    let skb: u64 = field(ctx, layout.skb).unwrap_or(0);
    if !in_watched_netns(layout, sk, skb) {
        return;
    }
    let reason: u32 = field(ctx, layout.reason).unwrap_or(0);
    let counts = match RESET_COUNTS.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, one program
        // run at a time (tracepoint programs do not nest on a CPU).
        Some(counts) => unsafe { &mut *counts },
        None => return,
    };
    let slot = ResetCounts::slot(reason);
    if let Some(count) = counts.by_reason.get_mut(slot) {
        *count += 1;
    }
    let record = ctx.as_ptr().cast::<u8>();
    // Under a flood the host may send a reset per packet (to an ACK
    // flood's spoofed sources, to SYNs for a closed port), each an event
    // user space reads and keeps for a record that will never claim it:
    // most of teardown's own CPU under an ACK flood. While the table is
    // under pressure, a reset of a connection it holds no record of is
    // counted here (and by reason above), and sent no further.
    if setting!(SKIP_UNTRACKED_RESETS) != 0 && table_under_pressure() {
        // Not zeroed first (a memset call): the helper writes every byte
        // read, zeros where it cannot read. Whole words, so the stack
        // buffers are 8-aligned: the compiler merges the byte reads below
        // into word loads, which the verifier refuses at an odd offset.
        let mut local = core::mem::MaybeUninit::<[u64; 4]>::uninit();
        let mut remote = core::mem::MaybeUninit::<[u64; 4]>::uninit();
        // SAFETY: two 32-byte stack buffers, of which the helper fills the
        // first 28 (the record's fields at offsets its format gave, through
        // the checked helper); only those are read, as byte arrays.
        let (local, remote) = unsafe {
            copy_kernel(
                local.as_mut_ptr().cast(),
                SOCKADDR_BYTES as u32,
                record.add(layout.local as usize),
            );
            copy_kernel(
                remote.as_mut_ptr().cast(),
                SOCKADDR_BYTES as u32,
                record.add(layout.remote as usize),
            );
            (
                &*local.as_ptr().cast::<[u8; SOCKADDR_BYTES]>(),
                &*remote.as_ptr().cast::<[u8; SOCKADDR_BYTES]>(),
            )
        };
        if !has_record(local, remote) {
            counts.events_skipped += 1;
            return;
        }
    }
    // The event's time, read only for a reset that gets one: the precise
    // clock was about a quarter of a skipped reset's cost.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(mut entry) = RESET_EVENTS.reserve::<ResetEvent>(0) else {
        counts.events_lost += 1;
        return;
    };
    let state: u32 = field::<i32>(ctx, layout.state).unwrap_or(0) as u32;
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is the reserved entry, ResetEvent-sized and aligned;
    // every field is written below before it is submitted. The record's
    // fields are read at offsets its format gave, through the checked helper.
    unsafe {
        (*event).time_ns = now;
        (*event).reason = reason;
        (*event).state = state;
        let local = core::ptr::addr_of_mut!((*event).local).cast::<u8>();
        copy_kernel(
            local,
            SOCKADDR_BYTES as u32,
            record.add(layout.local as usize),
        );
        let remote = core::ptr::addr_of_mut!((*event).remote).cast::<u8>();
        copy_kernel(
            remote,
            SOCKADDR_BYTES as u32,
            record.add(layout.remote as usize),
        );
        let comm = core::ptr::addr_of_mut!((*event).comm);
        let mut flags = if skb != 0 { reset_flag::REPLY } else { 0 };
        if owner_is_running(sk, state, layout.sk_lock_owned) {
            if generated::bpf_get_current_comm(comm.cast(), 16) != 0 {
                clear_comm(comm);
            }
            (*event).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            flags |= reset_flag::PROCESS;
        } else {
            clear_comm(comm);
            (*event).pid = 0;
        }
        (*event).flags = flags;
    }
    // No wakeup: user space reads on its poll timer, never waits on the
    // ring, and a wakeup per reset would cost more than the rest together.
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

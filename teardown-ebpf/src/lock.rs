//! The flow table's slot locks: a sequence lock per direction, in each of
//! the record's two lanes (`Lane::lock`), odd while a CPU holds it. A
//! segment's fast path takes its own direction's lane in one try
//! ([`try_lock_fast`]) and leaves a held lane, or a slot another CPU waits
//! for, to the slow path, which takes both lanes, waiting a bounded number
//! of tries ([`lock_slot`]). Why this makes one table safe to share between
//! CPUs is argued at [`try_lock`].

use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_loop};
use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use teardown_common::table::FlowSlot;

/// The lock word of lane `lane` (0 for the key's endpoint `a`) of a slot.
#[inline(always)]
fn lane_lock(slot: &FlowSlot, lane: usize) -> *mut u32 {
    core::ptr::addr_of!(slot.conn.lanes[lane & 1].lock) as *mut u32
}

use crate::maps::{FLOW_TABLE, UNLOCK_BY_STORE, setting, stats};

/// How long a CPU waits for a held lane before it gives up on the segment
/// (counted in `lock_contended`): 1 ms. The longest hold is one slow-path
/// update, a few thousand instructions, well under a microsecond, unless
/// something interrupts the holder: a hardware interrupt, or on a VM the
/// host taking its virtual CPU away. The wait outlasts the first by far and
/// most of the second; a holder gone for longer costs a counted segment,
/// not a stalled CPU. (The kernel's own spin locks wait for ever.)
pub(crate) const LOCK_WAIT_NS: u64 = 1_000_000;

/// Tries between two looks at the clock in a wait: a look is tens of
/// nanoseconds, a try one or two while the lock's line sits in this CPU's
/// cache, a tenth of a microsecond while another CPU keeps writing it.
const TRIES_PER_LOOK: u64 = 1024;

/// Tries a wait makes at most, whatever the clock says: a bound for
/// `bpf_loop` (its own limit is 2^23). At a nanosecond or more a try,
/// [`LOCK_WAIT_NS`] ends a wait first.
const MAX_TRIES: u32 = 1 << 21;

/// Takes lane `lane`'s sequence lock if it is free, in one try.
///
/// Why this is safe to share between CPUs. A slot has two locks, one in
/// each lane of its record (lane 0 for segments sent by the key's
/// endpoint `a`, lane 1 for `b`'s). Every write to a slot happens between
/// a successful [`try_lock`] (an even lock word swapped for the next odd
/// one, atomically) and [`unlock`] (the word bumped back to even):
/// - the fast path ([`Conn::update_established`]) holds its own
///   direction's lane and writes only that lane (and, for a peer not seen
///   yet, the peer's numbering, which the peer's own fast path never
///   writes at the same time: argued there);
/// - everything else (a new key, the generation, the slow path's updates)
///   holds both lanes ([`lock_slot`]), so it excludes every other writer.
///
/// So no two CPUs ever write one field at once, and what a fast path reads
/// outside its lane is written only under both locks, one of which it
/// holds. The compare-and-swap is fully ordered (the BPF memory model
/// orders atomics that return a value), so the holder sees everything the
/// previous holder wrote before it let go. The locks cannot deadlock: a
/// CPU that waits for a lock ([`lock_slot`]) takes a slot's lane 0 before
/// its lane 1, and `claim_slot` a set's way 0 before its way 1; a fast
/// path never waits (it holds one lane and may try the other once); and
/// nothing that takes slot locks can interrupt a holder on its own CPU
/// (XDP runs in softirq, TC egress with bottom halves off, and neither
/// nests in the other). User space takes no lock: it keeps a copy of a
/// slot only if both lock words were even and unchanged around the copy.
///
/// [`Conn::update_established`]: teardown_common::conn::Conn::update_established
#[inline(always)]
pub(crate) fn try_lock(slot: &FlowSlot, lane: usize) -> bool {
    let word = lane_lock(slot, lane);
    // SAFETY: an aligned u32 of map memory; other CPUs only touch it atomically.
    let seen = unsafe { core::ptr::read_volatile(word) };
    if seen & 1 != 0 {
        return false;
    }
    // SAFETY: as above.
    let (_, swapped) = unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            word,
            seen,
            seen.wrapping_add(1),
        )
    };
    swapped
}

/// Lets go of lane `lane` of a slot, taken with [`try_lock`], with release order: every
/// write made under the lock is visible before the word is even again (the
/// next holder's, and user space's check of a copy, rely on it).
///
/// Where user space says so at load ([`UNLOCK_BY_STORE`], on x86-64) a
/// plain store does it. x86-64's JIT makes a BPF store one `mov`, and x86
/// never makes a store visible before an earlier one (TSO), so the store
/// is a release there (Linux's own x86 spin_unlock is such a store); an
/// empty asm! keeps LLVM from moving the holder's writes below it (its
/// BPF backend has no fence, nor a release store below ISA v4). It saves
/// about 6 ns per fast-path segment (`est_ack` +20 to +21 ns against +26
/// to +27 with the fetching add, run in turn). Elsewhere (arm64 and
/// others, where a plain store is no release and the BPF store-release
/// instruction needs Linux 6.15) a fetching add, fully ordered. The
/// setting is a constant the verifier reads at load: the branch not taken
/// is dropped before the program is compiled, and costs nothing.
#[inline(always)]
pub(crate) fn unlock(slot: &FlowSlot, lane: usize) {
    let word = lane_lock(slot, lane);
    if setting!(UNLOCK_BY_STORE) != 0 {
        // SAFETY: an aligned u32 of map memory, held by this CPU: no other
        // CPU changes it (their compare-and-swaps fail on an odd word).
        unsafe {
            // A compiler barrier (an empty asm! may read and write any
            // memory): the holder's writes stay above the store.
            core::arch::asm!("", options(nostack, preserves_flags));
            core::ptr::write_volatile(word, core::ptr::read_volatile(word).wrapping_add(1));
        }
        return;
    }
    // SAFETY: an aligned u32 of map memory, held by this CPU.
    let before = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(word, 1) };
    // Using the old value makes LLVM emit the fetching form.
    core::hint::black_box(before);
}

/// Takes lane `lane` of a slot on the fast path, in one try, unless a CPU
/// waits for the slot in [`lock_slot`]: then the segment goes to the slow
/// path, which waits its turn.
///
/// Why: a CPU updating one record back to back (a fast flow's ACKs) lets
/// go and takes the lock again before a CPU waiting on another core even
/// sees it free, as its cache holds the line; measured with `teardown
/// bench --contention`, the waiter gave up hundreds to thousands of
/// segments per million. A waiter announces itself in
/// [`FlowSlot::waiters`], on the key's line (one more load here).
#[inline(always)]
pub(crate) fn try_lock_fast(slot: &FlowSlot, lane: usize) -> bool {
    // SAFETY: an aligned u32 of map memory; other CPUs only touch it atomically.
    let waiters = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(slot.waiters)) };
    waiters == 0 && try_lock(slot, lane)
}

/// Takes both lanes of slot `index`, lane 0 first, waiting for other CPUs
/// to let go for a bounded time each ([`wait_for_lane`]): 1 if it holds them,
/// 0 (nothing held, and counted in `lock_contended`) if it gave up. While
/// it waits it is counted in the slot's [`FlowSlot::waiters`], which keeps
/// the fast path off the slot ([`try_lock_fast`]). Holding both, it takes
/// what the fast path counted in the lanes into the record
/// ([`Conn::fold_lanes`]), so the slow path reads the record whole.
///
/// [`Conn::fold_lanes`]: teardown_common::conn::Conn::fold_lanes
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lock_slot(index: u32) -> i32 {
    let Some(slot) = FLOW_TABLE.get_ptr_mut(index) else {
        return 0;
    };
    // SAFETY: a flow-table slot; written below only once both lanes are held.
    let slot = unsafe { &mut *slot };
    if !(try_lock(slot, 0) || wait_for_lane(index, 0) != 0) {
        return 0;
    }
    if !(try_lock(slot, 1) || wait_for_lane(index, 1) != 0) {
        unlock(slot, 0);
        return 0;
    }
    slot.conn.fold_lanes();
    1
}

/// Waits for lane `lane` of slot `index`, after the caller's one try,
/// counted in its waiters: 1 if it took the lane, 0 (counted in
/// `lock_contended`) if it gave up after [`LOCK_WAIT_NS`]. A function the
/// verifier checks once, on its own.
///
/// Why a time and not a count of tries: a try is a nanosecond or so while
/// the holder's line sits in this CPU's cache, so 4,096 tries, all the wait
/// there was, lasted a few microseconds. A holder interrupted for longer (a
/// hardware interrupt, or on a VM its virtual CPU descheduled) outlasted
/// that: `cargo xtask bench --churn` lost about one segment in a million to
/// `lock_contended` at 15,000 connections a second, each a wrong record
/// (a FIN given up turned an `SF` into an `S2` or `S3`).
///
/// Why `bpf_loop`: the verifier walked a loop of tries once per try, in
/// every program (4,095 tries were about 230,000 of the main program's
/// 510,000 instructions); it checks a `bpf_loop` callback once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn wait_for_lane(index: u32, lane: u32) -> i32 {
    let Some(slot) = FLOW_TABLE.get_ptr(index) else {
        return 0;
    };
    // SAFETY: a flow-table slot.
    let slot = unsafe { &*slot };
    let waiters = core::ptr::addr_of!(slot.waiters) as *mut u32;
    // SAFETY: an aligned u32 of map memory, only changed atomically.
    let before = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(waiters, 1) };
    core::hint::black_box(before);
    let mut wait = LaneWait {
        index,
        lane: lane & 1,
        taken: 0,
        started_ns: 0,
    };
    // The zeroes stored one by one: LLVM would otherwise make them a call
    // to `memset`, which a BPF program cannot make.
    // SAFETY: fields of a local.
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!(wait.taken), 0);
        core::ptr::write_volatile(core::ptr::addr_of_mut!(wait.started_ns), 0);
    }
    // SAFETY: `try_lane` has the callback's signature, and `wait` outlives
    // the call (the kernel calls it synchronously, with this pointer).
    unsafe {
        bpf_loop(
            MAX_TRIES,
            try_lane as *mut c_void,
            core::ptr::addr_of_mut!(wait).cast(),
            0,
        )
    };
    // SAFETY: as above; this CPU's own count taken back (adding u32::MAX
    // is subtracting one).
    let before = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(waiters, u32::MAX) };
    core::hint::black_box(before);
    let taken = (wait.taken != 0) as i32;
    if taken == 0
        && let Some(stats) = stats()
    {
        stats.lock_contended += 1;
    }
    taken
}

/// [`wait_for_lane`]'s state, on its stack, for [`try_lane`].
#[repr(C)]
struct LaneWait {
    index: u32,
    lane: u32,
    /// 1 once the lane is taken.
    taken: u64,
    /// When the wait first looked at the clock (0 before).
    started_ns: u64,
}

/// One try of [`wait_for_lane`], called by `bpf_loop` with the try's
/// number: 1 (stop) once the lane is taken or the wait is over, 0 (go on)
/// otherwise. Static, as the verifier wants a callback.
#[inline(never)]
extern "C" fn try_lane(tries: u64, wait: *mut c_void) -> i64 {
    // SAFETY: `wait_for_lane`'s `LaneWait`, which the verifier knows as its
    // stack.
    let wait = unsafe { &mut *wait.cast::<LaneWait>() };
    let Some(slot) = FLOW_TABLE.get_ptr(wait.index) else {
        return 1;
    };
    // SAFETY: a flow-table slot.
    if try_lock(unsafe { &*slot }, wait.lane as usize) {
        wait.taken = 1;
        return 1;
    }
    if tries % TRIES_PER_LOOK == TRIES_PER_LOOK - 1 {
        // SAFETY: a helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        if wait.started_ns == 0 {
            wait.started_ns = now;
        } else if now.wrapping_sub(wait.started_ns) >= LOCK_WAIT_NS {
            return 1;
        }
    }
    0
}

/// Lets go of both lanes of slot `index`.
#[inline(always)]
pub(crate) fn unlock_slot(index: u32) {
    if let Some(slot) = FLOW_TABLE.get_ptr(index) {
        // SAFETY: a flow-table slot this CPU holds.
        let slot = unsafe { &*slot };
        unlock(slot, 1);
        unlock(slot, 0);
    }
}

//! The flow table's slot locks: a sequence lock per direction, in each of
//! the record's two lanes (`Lane::lock`), odd while a CPU holds it. A
//! segment's fast path takes its own direction's lane in one try
//! ([`try_lock_fast`]) and leaves a held lane, or a slot another CPU waits
//! for, to the slow path, which takes both lanes, waiting a bounded number
//! of tries ([`lock_slot`]). Why this makes one table safe to share between
//! CPUs is argued at [`try_lock`].

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use teardown_common::table::FlowSlot;

/// The lock word of lane `lane` (0 for the key's endpoint `a`) of a slot.
#[inline(always)]
fn lane_lock(slot: &FlowSlot, lane: usize) -> *mut u32 {
    core::ptr::addr_of!(slot.conn.lanes[lane & 1].lock) as *mut u32
}

use crate::maps::{FLOW_TABLE, UNLOCK_BY_STORE, setting, stats};

/// How many times a CPU tries a lane's lock before it gives up on the
/// segment (counted in `lock_contended`). The longest hold is one slow-path
/// update, a few thousand instructions at most, while one try is a load and
/// maybe a compare-and-swap: thousands of tries outlast any hold.
pub(crate) const LOCK_TRIES: u32 = 4096;

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
/// to let go for at most [`LOCK_TRIES`] tries each: 1 if it holds them,
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
/// counted in its waiters, at most [`LOCK_TRIES`] tries in all: 1 if it
/// took the lane, 0 (counted in `lock_contended`) if it gave up. A function the verifier checks once,
/// on its own: [`lock_slot`]'s two waits inline made too long a chain of
/// jumps for it.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn wait_for_lane(index: u32, lane: u32) -> i32 {
    let Some(slot) = FLOW_TABLE.get_ptr(index) else {
        return 0;
    };
    // SAFETY: a flow-table slot.
    let slot = unsafe { &*slot };
    let lane = (lane & 1) as usize;
    let waiters = core::ptr::addr_of!(slot.waiters) as *mut u32;
    // SAFETY: an aligned u32 of map memory, only changed atomically.
    let before = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(waiters, 1) };
    core::hint::black_box(before);
    let mut taken = 0;
    // The caller's own try was the first: LOCK_TRIES in all. (4,096 here
    // would be a chain of 8,193 jumps, past the verifier's 8,192.)
    let mut tries = 1;
    while tries < LOCK_TRIES {
        if try_lock(slot, lane) {
            taken = 1;
            break;
        }
        tries += 1;
    }
    // SAFETY: as above; this CPU's own count taken back (adding u32::MAX
    // is subtracting one).
    let before = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(waiters, u32::MAX) };
    core::hint::black_box(before);
    if taken == 0
        && let Some(stats) = stats()
    {
        stats.lock_contended += 1;
    }
    taken
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

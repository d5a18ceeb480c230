//! The flow table's slot locks: a sequence lock per slot
//! (`FlowSlot::lock`), odd while a CPU holds it. The fast path takes it in
//! one try ([`try_lock_fast`]) and leaves a held slot, or one another CPU
//! waits for, to the slow path, which waits for it a bounded number of
//! tries ([`lock_slot`]). Why this makes one table safe to share between
//! CPUs is argued at [`try_lock`].

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use teardown_common::table::FlowSlot;

use crate::maps::{FLOW_TABLE, UNLOCK_BY_STORE, setting, stats};

/// How many times a CPU tries a slot's lock before it gives up on the
/// segment (counted in `lock_contended`). The longest hold is one slow-path
/// update, a few thousand instructions at most, while one try is a load and
/// maybe a compare-and-swap: thousands of tries outlast any hold.
pub(crate) const LOCK_TRIES: u32 = 4096;

/// Takes the slot's sequence lock if it is free, in one try.
///
/// Why this is safe to share between CPUs: every write to a slot's key,
/// generation or record happens between a successful [`try_lock`] (an even
/// lock word swapped for the next odd one, atomically) and [`unlock`]
/// (the word bumped back to even), so no two CPUs ever write one slot at
/// once. The compare-and-swap is fully ordered (the BPF memory model
/// orders atomics that return a value), so the holder sees everything the
/// previous holder wrote before it let go. The lock cannot deadlock: a
/// program that holds a slot never waits for another slot, except
/// `claim_slot`, which takes a set's two ways in order (way 0, then way
/// 1); and nothing that takes slot locks can interrupt a holder on its own
/// CPU (XDP runs in softirq, TC egress with bottom halves off, and neither
/// nests in the other). The fast path, finding a slot held, leaves the
/// segment to the slow path, which waits for it, boundedly
/// ([`LOCK_TRIES`]). User space takes no lock: it keeps a copy of a slot
/// only if the lock word was even and unchanged around the copy.
#[inline(always)]
pub(crate) fn try_lock(slot: &FlowSlot) -> bool {
    let word = core::ptr::addr_of!(slot.lock) as *mut u32;
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

/// Lets go of a slot taken with [`try_lock`], with release order: every
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
pub(crate) fn unlock(slot: &FlowSlot) {
    let word = core::ptr::addr_of!(slot.lock) as *mut u32;
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

/// Takes a slot's lock on the fast path, in one try, unless a CPU waits
/// for it in [`lock_slot`]: then the segment goes to the slow path, which
/// waits its turn.
///
/// Why: a CPU updating one record back to back (a fast flow's ACKs) lets
/// go and takes the lock again before a CPU waiting on another core even
/// sees it free, as its cache holds the line; measured with `teardown
/// bench --contention`, the waiter gave up hundreds to thousands of
/// segments per million. A waiter announces itself in
/// [`FlowSlot::waiters`], on the lock's cache line (one more load here).
#[inline(always)]
pub(crate) fn try_lock_fast(slot: &FlowSlot) -> bool {
    // SAFETY: an aligned u32 of map memory; other CPUs only touch it atomically.
    let waiters = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(slot.waiters)) };
    waiters == 0 && try_lock(slot)
}

/// Takes slot `index`'s lock, waiting for another CPU to let go of it for
/// at most [`LOCK_TRIES`] tries: 1 if it has the lock, 0 (and counted in
/// `lock_contended`) if it gave up. While it waits it is counted in the
/// slot's [`FlowSlot::waiters`], which keeps the fast path off the slot
/// ([`try_lock_fast`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn lock_slot(index: u32) -> i32 {
    let Some(slot) = FLOW_TABLE.get_ptr(index) else {
        return 0;
    };
    // SAFETY: a flow-table slot.
    let slot = unsafe { &*slot };
    if try_lock(slot) {
        return 1;
    }
    let waiters = core::ptr::addr_of!(slot.waiters) as *mut u32;
    // SAFETY: an aligned u32 of map memory, only changed atomically.
    let before = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(waiters, 1) };
    core::hint::black_box(before);
    let mut taken = 0;
    let mut tries = 1;
    while tries < LOCK_TRIES {
        if try_lock(slot) {
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

/// Lets go of slot `index`.
#[inline(always)]
pub(crate) fn unlock_slot(index: u32) {
    if let Some(slot) = FLOW_TABLE.get_ptr(index) {
        // SAFETY: a flow-table slot this CPU holds.
        unlock(unsafe { &*slot });
    }
}

//! Flood accounting: what a SYN flood is detected and held off by. Pure
//! SYNs are counted per destination, with sampled sources
//! ([`count_syn`]); each CPU admits new half-open records within a budget
//! while under pressure ([`admits_syn`], [`note_eviction`]; the policy is
//! `teardown_common::events::Admission`); and handshakes going half-open,
//! being resolved or completing are counted for their responder
//! ([`count_for_responder`]) and in the flow statistics
//! ([`count_half_open`]).

use teardown_common::{dest::dest_index, events::Admission, sketch::hash_addr, table::FlowSlot};

use crate::clock::FlowClock;
use crate::maps::{
    ADMISSION, DESTINATIONS, DETECT_CONTROL, HALF_OPEN_BUDGET, SOURCE_SAMPLES, TABLE_PRESSURE,
    setting, stats,
};

/// Counts a pure SYN for its destination: the SYN count, the source sketch
/// and, one in `sample_mask + 1`, a source sample.
#[inline(always)]
pub(crate) fn count_syn(source: &[u32; 4], dest: &[u32; 4], dest_port: u16) {
    let Some(control) = DETECT_CONTROL.get(0) else {
        return;
    };
    let epoch = control.epoch as u32;
    if let Some(slot) = DESTINATIONS.get_ptr_mut(dest_index(dest, dest_port)) {
        // SAFETY: this CPU's slot, one program run at a time.
        let slot = unsafe { &mut *slot };
        if slot.holds(dest, dest_port) {
            slot.add_syn(hash_addr(source), epoch);
        } else if slot.may_take_over(epoch) {
            slot.take_over(dest, dest_port, epoch);
            slot.add_syn(hash_addr(source), epoch);
        } else if let Some(stats) = stats() {
            stats.dest_collisions += 1;
        }
    }
    if let Some(ring) = SOURCE_SAMPLES.get_ptr_mut(0) {
        // SAFETY: as above.
        unsafe { (*ring).offer(source, dest, dest_port, control.sample_mask) };
    }
}

/// Whether this CPU admits a new half-open record now ([`Admission`]).
///
/// [`Admission`]: teardown_common::events::Admission
#[inline(always)]
pub(crate) fn admits_syn(now: u64) -> bool {
    ask_admission(|admission, budget, table_pressure| admission.admit(now, budget, table_pressure))
}

/// Whether this CPU admits a new mid-stream record now
/// ([`Admission::admit_midstream`]): for a segment of a connection with no
/// record that is neither a pure SYN nor a pure SYN-ACK.
///
/// [`Admission::admit_midstream`]: teardown_common::events::Admission::admit_midstream
#[inline(always)]
pub(crate) fn admits_midstream(now: u64) -> bool {
    ask_admission(|admission, budget, table_pressure| {
        admission.admit_midstream(now, budget, table_pressure)
    })
}

/// Asks this CPU's [`Admission`] with the budget both admissions share;
/// admitted if its maps cannot be read (fails open).
///
/// [`Admission`]: teardown_common::events::Admission
#[inline(always)]
fn ask_admission(ask: impl FnOnce(&mut Admission, u64, &mut u64) -> bool) -> bool {
    let (Some(admission), Some(table_pressure)) =
        (ADMISSION.get_ptr_mut(0), TABLE_PRESSURE.get_ptr_mut(0))
    else {
        return true;
    };
    let budget: u64 = setting!(HALF_OPEN_BUDGET);
    // SAFETY: this CPU's slot, one program run at a time; the shared stamp
    // is one u64, read and written whole (see TABLE_PRESSURE).
    unsafe { ask(&mut *admission, budget, &mut *table_pressure) }
}

/// Whether this CPU's budget applies now ([`Admission::limited_at`]):
/// the table under pressure, as under a flood. The clock is read only
/// when the flag is set: without pressure this is one load. It is read to
/// the tick ([`FlowClock::tick`]): with `--clock precise` a precise read
/// here cost every segment after a flood about 30 ns more (`teardown
/// bench --case new_syn --case est_data`: `est_data` +78 where alone it
/// reads +50), for an answer that needs only the admission window.
///
/// [`Admission::limited_at`]: teardown_common::events::Admission::limited_at
#[inline(always)]
pub(crate) fn table_limited(clock: &impl FlowClock) -> bool {
    let Some(admission) = ADMISSION.get_ptr(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, one program run at a time.
    let admission = unsafe { &*admission };
    admission.limited != 0 && admission.limited_at(clock.tick())
}

/// A record pushed out of the table: a sign of pressure for [`Admission`].
///
/// [`Admission`]: teardown_common::events::Admission
#[inline(always)]
pub(crate) fn note_eviction(now: u64) {
    if let (Some(admission), Some(table_pressure)) =
        (ADMISSION.get_ptr_mut(0), TABLE_PRESSURE.get_ptr_mut(0))
    {
        // SAFETY: as in `ask_admission`.
        unsafe { (*admission).note_eviction(now, &mut *table_pressure) };
    }
}

/// [`count_for_responder`] changes.
pub(crate) mod responder_change {
    pub const HALF_OPEN_STARTED: u32 = 1;
    pub const HALF_OPEN_RESOLVED: u32 = 2;
    pub const COMPLETED: u32 = 4;
}

/// Counts a change to a record against its responder's destination slot
/// on this CPU: a handshake going half-open, being resolved, or completing.
/// Nothing if the slot belongs to another, active destination (its SYN was
/// counted as a collision).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn count_for_responder(slot: *const FlowSlot, change: u32) -> i32 {
    // SAFETY: null-checked; a flow-table slot.
    let Some(slot) = (unsafe { slot.as_ref() }) else {
        return 0;
    };
    let (addr, port) = if slot.conn.orig_is_a != 0 {
        (&slot.key.addr_b, slot.key.port_b)
    } else {
        (&slot.key.addr_a, slot.key.port_a)
    };
    let addr = addr.words();
    let Some(dest) = DESTINATIONS.get_ptr_mut(dest_index(&addr, port)) else {
        return 0;
    };
    // SAFETY: this CPU's slot, one program run at a time.
    let dest = unsafe { &mut *dest };
    if !dest.holds(&addr, port) {
        // The SYN may have been counted on another CPU: this one's slot may
        // never have seen the destination. Start it here, or the change is
        // lost (and a surge's completions with it).
        let epoch = DETECT_CONTROL.get(0).map_or(0, |control| control.epoch) as u32;
        if !dest.may_take_over(epoch) {
            return 0;
        }
        dest.take_over(&addr, port, epoch);
    }
    if change & responder_change::HALF_OPEN_STARTED != 0 {
        dest.half_open_started += 1;
    }
    if change & responder_change::HALF_OPEN_RESOLVED != 0 {
        dest.half_open_resolved += 1;
    }
    if change & responder_change::COMPLETED != 0 {
        dest.completions += 1;
    }
    0
}

/// Counts a handshake going half-open or being resolved, in this CPU's flow
/// statistics.
#[inline(always)]
pub(crate) fn count_half_open(before: bool, after: bool) {
    if before != after
        && let Some(stats) = stats()
    {
        if after {
            stats.half_open_started += 1;
        } else {
            stats.half_open_resolved += 1;
        }
    }
}

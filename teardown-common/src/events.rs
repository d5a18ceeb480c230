//! What the kernel tells user space about flows: ring-buffer events and the
//! per-CPU flow-table statistics.

use crate::conn::Conn;
use crate::flow::FlowKey;

/// Default number of connections the flow table holds (`--max-flows`).
pub const DEFAULT_MAX_FLOWS: u32 = 131_072;
/// Bytes of the event ring buffer: room for about 3 000 ended-connection
/// events or 18 000 new-flow notices between two polls.
pub const EVENTS_BYTES: u32 = 1 << 20;

/// [`EventHeader::kind`] values.
pub mod kind {
    /// A flow entered the table: schedule its first deadline check.
    pub const NEW: u32 = 1;
    /// A side closed: the flow's deadline moved earlier.
    pub const CLOSING: u32 = 2;
    /// The kernel closed a record out itself (a new SYN reused the ports, or
    /// a packet arrived after the record's deadline); the record follows.
    pub const ENDED: u32 = 3;
}

/// Every event starts with this.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// [`crate::conn::end_reason`] for [`kind::ENDED`], else 0.
    pub reason: u32,
    /// Kernel monotonic time (or capture time in a replay) of the packet.
    pub time_ns: u64,
    pub key: FlowKey,
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 56);

/// A [`kind::ENDED`] event: the header and the final record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndedEvent {
    pub header: EventHeader,
    pub conn: Conn,
}

const _: () = assert!(core::mem::size_of::<EndedEvent>() == 56 + core::mem::size_of::<Conn>());

/// Flow-table bookkeeping, one slot per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Records created (new connections, including ones split off by reuse).
    pub created: u64,
    /// Inserts the table refused: the segment's connection is not tracked.
    pub insert_failed: u64,
    /// Events dropped because the ring buffer was full.
    pub events_lost: u64,
    /// Records the kernel closed out itself (reuse, or a late packet).
    pub ended_in_kernel: u64,
    /// Handshakes that became half-open (SYN sent, no answer yet).
    pub half_open_started: u64,
    /// Half-open handshakes answered, reset, closed or closed out by the kernel.
    pub half_open_resolved: u64,
    /// TCP segments whose header was cut short: they create a record but
    /// change nothing (as in Zeek).
    pub truncated_segments: u64,
}

const _: () = assert!(core::mem::size_of::<FlowStats>() == 7 * 8);

impl FlowStats {
    pub fn add(&mut self, other: &FlowStats) {
        self.created += other.created;
        self.insert_failed += other.insert_failed;
        self.events_lost += other.events_lost;
        self.ended_in_kernel += other.ended_in_kernel;
        self.half_open_started += other.half_open_started;
        self.half_open_resolved += other.half_open_resolved;
        self.truncated_segments += other.truncated_segments;
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers, byte arrays and Pod records only, no implicit
    // padding (sizes asserted above).
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndedEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
}

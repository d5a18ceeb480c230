//! The flow table's layout, shared by the kernel and user space.
//!
//! The table is a BPF array of [`FlowSlot`]s, two-way set associative: a
//! connection lives in one of the two slots of the set its key hashes to.
//! An array rather than a BPF hash map because a lookup is then a hash, an
//! index and a key compare, all inline: a hash-map lookup of the 40-byte key
//! costs more than parsing the whole packet, and an LRU insert about fifteen
//! times that, which a SYN flood would pay for every packet.
//!
//! Both sides share the slots without locks. The kernel owns every field but
//! [`FlowSlot::reported`], which user space writes, atomically, after it
//! reported the record of that [`FlowSlot::generation`].

use crate::conn::{Conn, ORIG, RESP, state};
use crate::flow::FlowKey;
use crate::sketch::mix32;

/// Slots per set.
pub const WAYS: u32 = 2;
/// The largest table `--max-flows` may ask for.
pub const MAX_SLOTS: u32 = 1 << 24;

/// One slot: a connection's key and record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSlot {
    /// `family == 0`: never used.
    pub key: FlowKey,
    /// Incremented by the kernel each time the slot gets a new record.
    pub generation: u32,
    /// Written by user space: the generation it has reported and closed.
    /// When it equals `generation` the slot is free.
    pub reported: u32,
    pub conn: Conn,
}

const _: () = assert!(core::mem::size_of::<FlowSlot>() == 40 + 8 + core::mem::size_of::<Conn>());
const _: () = assert!(core::mem::offset_of!(FlowSlot, reported) % 4 == 0);

/// Slots for a table of at least `max_flows` connections: a power of two, so
/// a set is found by masking, and at least one set.
pub const fn slots_for(max_flows: u32) -> u32 {
    let wanted = if max_flows < WAYS { WAYS } else { max_flows };
    if wanted >= MAX_SLOTS {
        MAX_SLOTS
    } else {
        wanted.next_power_of_two()
    }
}

/// The first slot of the set `hash` falls in, for a table of `slots` slots.
#[inline(always)]
pub fn set_of(hash: u32, slots: u32) -> u32 {
    hash & (slots - 1) & !(WAYS - 1)
}

impl FlowKey {
    /// A hash of the key: a few multiply-rotate rounds over its words. Cheap
    /// in BPF, and both directions of a connection hash alike because the
    /// key itself is canonical.
    #[inline(always)]
    pub fn hash32(&self) -> u32 {
        // SAFETY: FlowKey is 40 bytes of plain data, 2-aligned; read as
        // unaligned words.
        let w = unsafe { (self as *const FlowKey as *const [u32; 10]).read_unaligned() };
        // Fold the address words (the IPv4 ones sit in words 3 and 7), give
        // each endpoint's fold its own rotation so swapped endpoints of
        // different keys do not collide, then mix once.
        let a = w[0] ^ w[1] ^ w[2] ^ w[3];
        let b = w[4] ^ w[5] ^ w[6] ^ w[7];
        mix32(a ^ b.rotate_left(11) ^ w[8].rotate_left(22) ^ w[9])
    }
}

impl FlowSlot {
    /// Whether the slot holds no record user space still has to report.
    #[inline(always)]
    pub fn is_free(&self) -> bool {
        self.key.family == 0 || self.reported == self.generation
    }

    /// Stores `key` word by word. A plain assignment between two pointers
    /// into map memory becomes a memmove call, which BPF programs cannot make.
    #[inline(always)]
    pub fn set_key(&mut self, key: &FlowKey) {
        // SAFETY: both are 40 bytes of plain data; FlowKey is 2-aligned and
        // 40 bytes, so as 20 u16 words every access is aligned.
        unsafe {
            let from = key as *const FlowKey as *const u16;
            let to = &mut self.key as *mut FlowKey as *mut u16;
            let mut i = 0;
            while i < 20 {
                core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i)));
                i += 1;
            }
        }
    }

    /// Whether the slot's live record is `key`'s.
    #[inline(always)]
    pub fn holds(&self, key: &FlowKey) -> bool {
        // Word compares: a byte-array compare would become a memcmp call,
        // which BPF programs cannot make.
        // SAFETY: both are 40 bytes of plain data.
        let (mine, theirs) = unsafe {
            (
                (&self.key as *const FlowKey as *const [u32; 10]).read_unaligned(),
                (key as *const FlowKey as *const [u32; 10]).read_unaligned(),
            )
        };
        let mut differ = 0;
        let mut i = 0;
        while i < 10 {
            differ |= mine[i] ^ theirs[i];
            i += 1;
        }
        differ == 0
    }
}

impl Conn {
    /// Whether only one side has been heard from: a half-open SYN, or a lone
    /// segment of a connection seen midstream. Such records may be evicted
    /// for a new connection when the table is full; records of two-sided
    /// conversations never are, so spoofed one-sided traffic (a SYN flood)
    /// cannot push real connections out.
    #[inline(always)]
    pub fn is_one_sided(&self) -> bool {
        self.ep[ORIG].state == state::INACTIVE || self.ep[RESP].state == state::INACTIVE
    }

    /// Whether a new connection may push this record out of a full set: it
    /// is one-sided, or a handshake the originator never acknowledged
    /// ([`Conn::handshake_pending`]: a flooded host's SYN-ACKs). Either way
    /// there is no conversation to lose.
    #[inline(always)]
    pub fn is_evictable(&self) -> bool {
        self.is_one_sided() || self.handshake_pending()
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), plain data, no implicit padding (size asserted above).
unsafe impl aya::Pod for FlowSlot {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_are_powers_of_two_with_whole_sets() {
        assert_eq!(slots_for(0), 2);
        assert_eq!(slots_for(1), 2);
        assert_eq!(slots_for(3), 4);
        assert_eq!(slots_for(131_072), 131_072);
        assert_eq!(slots_for(131_073), 262_144);
        assert_eq!(slots_for(u32::MAX), MAX_SLOTS);
        for hash in [0, 1, 7, u32::MAX] {
            let set = set_of(hash, 8);
            assert!(set < 8 && set.is_multiple_of(WAYS));
        }
    }

    #[test]
    fn hash_spreads_keys_over_sets() {
        let slots = 1 << 12;
        let mut used = std::vec![0u32; (slots / WAYS) as usize];
        for port in 0..20_000u16 {
            let (key, _) = FlowKey::from_endpoints(
                crate::flow::v4_mapped([10, 0, 0, 1]),
                port,
                crate::flow::v4_mapped([10, 0, 0, 2]),
                80,
                4,
            );
            used[(set_of(key.hash32(), slots) / WAYS) as usize] += 1;
        }
        // 20 000 keys over 2048 sets: about 9.8 each; a poor hash piles them up.
        let max = *used.iter().max().unwrap();
        assert!(max < 30, "a set got {max} keys");
    }

    #[test]
    fn holds_compares_every_word() {
        let (key, _) = FlowKey::from_endpoints([1; 16], 1, [2; 16], 2, 6);
        let mut slot = FlowSlot {
            key,
            generation: 1,
            reported: 0,
            conn: Conn::zeroed(),
        };
        assert!(slot.holds(&key) && !slot.is_free());
        slot.key.addr_b[15] = 3;
        assert!(!slot.holds(&key));
        slot.reported = 1;
        assert!(slot.is_free());
    }
}

//! The flow table's layout, shared by the kernel and user space.
//!
//! The table is a BPF array of [`FlowSlot`]s, two-way set associative: a
//! connection lives in one of the two slots of the set its key hashes to.
//! An array rather than a BPF hash map because a lookup is then a hash, an
//! index and a key compare, all inline: a hash-map lookup of the 40-byte key
//! costs more than parsing the whole packet, and an LRU insert about fifteen
//! times that, which a SYN flood would pay for every packet.
//!
//! Sharing. The kernel owns every field but [`FlowSlot::reported`], which
//! user space writes, atomically, after it reported the record of that
//! [`FlowSlot::generation`]. In the kernel, several CPUs may write one slot
//! at once: a server's ingress (XDP, on the receive queue's CPU) and egress
//! (TC, on the sending socket's CPU) update one record, and two new
//! connections may claim one slot. So every write to a slot happens under
//! its locks: one sequence lock per direction, in each of the record's
//! [`Lane`]s (see `teardown-ebpf`'s `lock.rs`), odd while a CPU is
//! writing, bumped by one when it takes it and once more when it lets go.
//! A segment's fast path takes its own direction's lane and writes only
//! that lane; everything else (a new key, the slow path's updates) holds
//! both. Readers that must not wait (user space, which reads records
//! through the mmapped table) copy the slot and keep the copy only if both
//! lock words were even and unchanged around the copy.
//!
//! A slot is 384 bytes, six whole cache lines of the page-aligned
//! (mmappable) table: the key and the fields beside it on the first, each
//! lane on one of its own, the rest of the record on the last three. The
//! two directions of a connection, updated by two CPUs at once, so never
//! write a line the other reads.

use crate::conn::{Conn, Lane, ORIG, RESP, state};
use crate::flow::FlowKey;

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
    /// CPUs waiting for the slot's locks in the kernel's slow path; while
    /// any wait, the fast path leaves the slot alone (see the eBPF crate's
    /// `lock`). User space neither reads nor writes it.
    pub waiters: u32,
    /// Fills the key's line: the record starts on a line of its own.
    pub reserved: [u32; 3],
    /// The record; its two [`Lane`]s hold the slot's locks.
    pub conn: Conn,
}

const _: () = assert!(core::mem::size_of::<FlowSlot>() == 6 * 64);
const _: () = assert!(core::mem::offset_of!(FlowSlot, conn) == 64);
const _: () = assert!(core::mem::offset_of!(FlowSlot, reported) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(FlowSlot, waiters) % 4 == 0);
const _: () =
    assert!(core::mem::offset_of!(Conn, lanes) == 0 && core::mem::size_of::<Lane>() == 64);

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

/// How far [`set_of`] shifts a hash for a table of `slots` slots (a power
/// of two, at least [`WAYS`]): the set is taken from the hash's top bits,
/// the ones [`flow_hash`]'s multiply mixes best.
pub const fn set_shift(slots: u32) -> u32 {
    slots.leading_zeros() + 1
}

/// The first slot of the set `hash` falls in, for a table whose
/// [`set_shift`] is `shift`.
#[inline(always)]
pub fn set_of(hash: u32, shift: u32) -> u32 {
    ((hash as u64) >> shift) as u32 & !(WAYS - 1)
}

/// An address folded into one word: the XOR of its four 4-byte words. For
/// an IPv4-mapped address that is the IPv4 address XOR a constant.
#[inline(always)]
pub fn fold_address(halves: &[u64; 2]) -> u32 {
    let x = halves[0] ^ halves[1];
    (x ^ x >> 32) as u32
}

/// The set hash of a connection from its two endpoints (folded address,
/// port), in either order: symmetric, so a packet is hashed as it comes,
/// without first putting its endpoints in the key's canonical order.
///
/// Each endpoint is its folded address and port side by side in one
/// 48-bit word, so two IPv4 endpoints never share a word. The
/// two words are ordered, so the hash does not depend on which endpoint
/// sent the packet, and ordering rather than adding them keeps apart
/// connections that only swap ports between the same two addresses
/// (A:p-B:q and A:q-B:p). Each is multiplied by its own 64-bit constant and
/// the products XORed; [`set_of`] takes the set from the top bits, which
/// depend on every bit of both words.
///
/// It sits on the per-packet path's longest chain of dependent
/// instructions (hash, then slot address, then key load): two independent
/// multiplies, where a full finaliser would chain four. The tests check it
/// spreads the traffic shapes that matter (clients, ports, NAT, IPv6
/// prefixes) at least as evenly as a random hash. Not keyed: someone who
/// knows it can pick colliding connections, which the two ways and
/// eviction of one-sided records absorb.
#[inline(always)]
pub fn flow_hash(addr_1: u32, port_1: u16, addr_2: u32, port_2: u16) -> u32 {
    let endpoint = |addr: u32, port: u16| (addr as u64) << 16 | port as u64;
    let (one, two) = (endpoint(addr_1, port_1), endpoint(addr_2, port_2));
    let (low, high) = if one <= two { (one, two) } else { (two, one) };
    let mixed = low.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ high.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    (mixed >> 32) as u32
}

impl FlowKey {
    /// [`flow_hash`] of the key's endpoints: the same as of any packet of
    /// the connection.
    pub fn hash32(&self) -> u32 {
        flow_hash(
            fold_address(&self.addr_a.halves()),
            self.port_a,
            fold_address(&self.addr_b.halves()),
            self.port_b,
        )
    }
}

/// The key's last eight bytes as one native-endian word: `port_a`,
/// `port_b`, `family` and the zero padding. Spelled as arithmetic rather
/// than as bytes: from bytes, LLVM rebuilt each port byte by byte out of the
/// packet's big-endian loads, a dozen more BPF instructions per packet.
#[inline(always)]
fn key_tail(port_a: u16, port_b: u16, family: u8) -> u64 {
    if cfg!(target_endian = "little") {
        port_a as u64 | (port_b as u64) << 16 | (family as u64) << 32
    } else {
        (port_a as u64) << 48 | (port_b as u64) << 32 | (family as u64) << 24
    }
}

/// The flow table's fingerprints: a 16-bit print of each slot's key
/// ([`print_of`]), kept beside the table (the kernel's `FLOW_PRINTS` map)
/// so that under an ACK flood, whose every packet belongs to no record,
/// the fast path can tell that a set holds no record of the packet's
/// connection from one small word, not the set's two 384-byte slots in a
/// table of tens of megabytes: the probe's cache miss was nearly all of
/// such a packet's cost. 2 bytes a slot; a value of the map ([`PrintLine`])
/// holds the prints of [`SLOTS_PER_PRINT_LINE`] slots, one cache line.
///
/// A print is written whenever a slot takes a key, by the CPU holding the
/// set's two locks, before the key; it is never cleared (a slot whose
/// record was freed keeps its key too). A set whose prints both differ
/// from the packet's holds no record of its connection, except one another
/// CPU is starting at that moment; prints that match only mean the slots
/// must be probed, as without prints.
pub type PrintLine = [u32; 16];

/// Slots whose prints one [`PrintLine`] holds: 16 sets of [`WAYS`] slots,
/// a `u32` per set (way 0 in the low half, way 1 in the high half).
pub const SLOTS_PER_PRINT_LINE: u32 = 32;

const _: () = assert!(core::mem::size_of::<PrintLine>() as u32 == SLOTS_PER_PRINT_LINE * 2);
const _: () = assert!(WAYS == 2);

/// Lines of prints for a table of `slots` slots.
pub const fn print_lines_for(slots: u32) -> u32 {
    slots.div_ceil(SLOTS_PER_PRINT_LINE)
}

/// The print of a connection whose [`flow_hash`] is `hash`: its low 16
/// bits with the lowest set, so never 0 (a slot never given a key matches
/// nothing). [`set_of`] does not use those bits for a table of up to 2^17
/// slots (the default), so 15 bits tell a set's keys apart; from 2^18 on,
/// [`set_of`] takes some of them too, down to 8 bits at the largest
/// table (a print then matches another connection of its set one time in
/// 256, which only costs that packet the probe).
#[inline(always)]
pub fn print_of(hash: u32) -> u32 {
    (hash & 0xffff) | 1
}

/// Where the prints of `set` (a set's first slot) are: the line's index
/// in the map, and the set's word in the line.
#[inline(always)]
pub fn print_place(set: u32) -> (u32, usize) {
    (set / SLOTS_PER_PRINT_LINE, ((set / WAYS) % 16) as usize)
}

/// Whether a set whose prints are `word` may hold a record of the
/// connection whose print is `print`.
#[inline(always)]
pub fn prints_may_hold(word: u32, print: u32) -> bool {
    word & 0xffff == print || word >> 16 == print
}

/// `word` with way `way`'s print replaced by `print`.
#[inline(always)]
pub fn with_print(word: u32, way: u32, print: u32) -> u32 {
    let shift = (way & 1) * 16;
    (word & !(0xffff << shift)) | (print & 0xffff) << shift
}

/// What [`FlowSlot::direction_of`] found.
pub mod matched {
    /// The slot holds another connection, or none.
    pub const NONE: u32 = 0;
    /// The slot holds the connection; the packet travels from endpoint `a`.
    pub const FROM_A: u32 = 1;
    /// The slot holds the connection; the packet travels from endpoint `b`.
    pub const FROM_B: u32 = 2;
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

    /// Whether the slot's live record is the connection of a packet from
    /// `(src, src_port)` to `(dst, dst_port)` (addresses as [`Addr16::halves`](crate::addr::Addr16::halves), IPv4
    /// mapped), and which way the packet travels: [`matched`]. The same
    /// answer as building the packet's canonical key
    /// ([`FlowKey::from_words`]) and calling [`Self::holds`], without
    /// building it: stored keys are canonical, so the slot holds the
    /// connection exactly when its key equals the packet's endpoints in one
    /// order or the other, and the order is the direction. Both orders match
    /// only when the two endpoints are equal, and then the canonical key says
    /// `a` sent it, as here. Compared eight bytes at a time: ports, family
    /// and padding in one word, each address in two.
    ///
    /// For IPv4 (`V6` false, `family` 4) the first half of each address is
    /// not compared: a key of family 4 is only ever stored by the kernel from
    /// an IPv4 packet, so that half is zero.
    #[inline(always)]
    pub fn direction_of<const V6: bool>(
        &self,
        src: &[u64; 2],
        src_port: u16,
        dst: &[u64; 2],
        dst_port: u16,
        family: u8,
    ) -> u32 {
        // SAFETY: FlowSlot is 8-aligned and starts with the 40-byte key: five
        // aligned words of plain data.
        let word = |i: usize| unsafe { (self as *const FlowSlot as *const u64).add(i).read() };
        let tail = word(4);
        let same = |base: usize, addr: &[u64; 2]| {
            word(base + 1) == addr[1] && (!V6 || word(base) == addr[0])
        };
        let found = if tail == key_tail(src_port, dst_port, family) && same(0, src) && same(2, dst)
        {
            matched::FROM_A
        } else if tail == key_tail(dst_port, src_port, family) && same(0, dst) && same(2, src) {
            matched::FROM_B
        } else {
            return matched::NONE;
        };
        // A matching family is never 0: only whether user space freed it.
        if self.reported == self.generation {
            return matched::NONE;
        }
        found
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

    /// Whether both sides are done with the connection (both FINs, or a
    /// RST) and the record only waits out Zeek's close delay for late
    /// packets. A new connection that finds its set full may end such a
    /// record early (reported, not lost) and take its slot: under heavy
    /// churn most of the table is connections in their close delay.
    #[inline(always)]
    pub fn is_closed_out(&self) -> bool {
        self.flags & crate::conn::flag::CLOSE_COMPLETE != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), plain data, no implicit padding (size asserted above).
unsafe impl aya::Pod for FlowSlot {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Addr16;

    #[test]
    fn a_set_s_prints_say_whether_it_may_hold_a_connection() {
        // Two connections of one set: each slot's print, written as the
        // kernel writes it, is found again from a packet of the
        // connection, in either direction, and a third print is not.
        let packet_hash = |src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16| {
            flow_hash(
                fold_address(&Addr16::v4_mapped_halves(src)),
                sport,
                fold_address(&Addr16::v4_mapped_halves(dst)),
                dport,
            )
        };
        let one = packet_hash([10, 0, 0, 2], 40000, [10, 0, 0, 1], 80);
        let reply = packet_hash([10, 0, 0, 1], 80, [10, 0, 0, 2], 40000);
        assert_eq!(print_of(one), print_of(reply));
        let other = (0u16..)
            .map(|port| packet_hash([10, 0, 0, 3], port, [10, 0, 0, 1], 80))
            .find(|hash| print_of(*hash) != print_of(one))
            .unwrap();
        let third = (0u16..)
            .map(|port| packet_hash([10, 0, 0, 4], port, [10, 0, 0, 1], 80))
            .find(|hash| print_of(*hash) != print_of(one) && print_of(*hash) != print_of(other))
            .unwrap();
        let word = with_print(with_print(0, 0, print_of(one)), 1, print_of(other));
        assert!(prints_may_hold(word, print_of(reply)));
        assert!(prints_may_hold(word, print_of(other)));
        assert!(!prints_may_hold(word, print_of(third)));
        // A set never given a key holds nothing.
        assert!(!prints_may_hold(0, print_of(one)));
        assert!(
            (0..=u32::MAX)
                .step_by(65_521)
                .all(|hash| print_of(hash) != 0)
        );
        // Replacing one way's print leaves the other's.
        let replaced = with_print(word, 0, print_of(third));
        assert!(prints_may_hold(replaced, print_of(third)));
        assert!(prints_may_hold(replaced, print_of(other)));
        assert!(!prints_may_hold(replaced, print_of(one)));
    }

    #[test]
    fn every_set_has_its_own_word_of_prints() {
        // The default table's sets, and the largest table's first and last
        // lines: each set one word, no two sets the same one, every line
        // within the map's size.
        for slots in [WAYS, 64, 131_072, MAX_SLOTS] {
            let lines = print_lines_for(slots);
            let mut seen = std::collections::HashSet::new();
            let sets = (0..slots / WAYS).map(|set| set * WAYS);
            let sets: std::vec::Vec<u32> = if slots > 1 << 20 {
                sets.clone()
                    .take(4096)
                    .chain(sets.skip((slots / WAYS - 4096) as usize))
                    .collect()
            } else {
                sets.collect()
            };
            for set in sets {
                let (line, word) = print_place(set);
                assert!(line < lines && word < 16, "set {set} of {slots} slots");
                assert!(seen.insert((line, word)), "set {set} shares its word");
            }
        }
    }

    #[test]
    fn halves_and_words_are_the_same_bytes() {
        let addr = Addr16(core::array::from_fn(|i| (i * 17 + 3) as u8));
        assert_eq!(Addr16::words_of_halves(&addr.halves()), addr.words());
        let v4 = Addr16::v4_mapped([192, 0, 2, 1]);
        assert_eq!(v4.halves(), Addr16::v4_mapped_halves([192, 0, 2, 1]));
        assert_eq!(Addr16::words_of_halves(&v4.halves()), v4.words());
    }

    #[test]
    fn table_sizes_are_powers_of_two_with_whole_sets() {
        assert_eq!(slots_for(0), 2);
        assert_eq!(slots_for(1), 2);
        assert_eq!(slots_for(3), 4);
        assert_eq!(slots_for(131_072), 131_072);
        assert_eq!(slots_for(131_073), 262_144);
        assert_eq!(slots_for(u32::MAX), MAX_SLOTS);
        for hash in [0, 1, 7, u32::MAX] {
            let set = set_of(hash, set_shift(8));
            assert!(set < 8 && set.is_multiple_of(WAYS));
        }
    }

    #[test]
    fn hash_spreads_keys_over_sets() {
        let slots = 1 << 12;
        let mut used = std::vec![0u32; (slots / WAYS) as usize];
        for port in 0..20_000u16 {
            let (key, _) = FlowKey::from_endpoints(
                Addr16::v4_mapped([10, 0, 0, 1]),
                port,
                Addr16::v4_mapped([10, 0, 0, 2]),
                80,
                4,
            );
            used[(set_of(key.hash32(), set_shift(slots)) / WAYS) as usize] += 1;
        }
        // 20 000 keys over 2048 sets: about 9.8 each; a poor hash piles them up.
        let max = *used.iter().max().unwrap();
        assert!(max < 30, "a set got {max} keys");
    }

    /// Connections of typical shapes land in sets about as a random hash
    /// would put them: no more records beyond a set's two ways.
    #[test]
    fn hash_spreads_typical_traffic_like_a_random_hash() {
        let slots = 1 << 16;
        let server = Addr16::v4_mapped([192, 0, 2, 1]);
        let server6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let v4 = |client: u32, port: u16, server_port: u16| {
            FlowKey::from_endpoints(
                Addr16::v4_mapped(client.to_be_bytes()),
                port,
                server,
                server_port,
                4,
            )
            .0
        };
        let v6 = |client: u32, at: usize| {
            let mut addr = server6;
            addr[at..at + 4].copy_from_slice(&client.to_be_bytes());
            FlowKey::from_endpoints(Addr16(addr), 40_000, Addr16(server6), 443, 6).0
        };
        // Any client, any server, both IPv4.
        let pair = |client: u32, port: u16, server: u32, server_port: u16| {
            FlowKey::from_endpoints(
                Addr16::v4_mapped(client.to_be_bytes()),
                port,
                Addr16::v4_mapped(server.to_be_bytes()),
                server_port,
                4,
            )
            .0
        };
        let mut next = stream(3);
        let mut other = stream(5);
        let shapes: [(&str, std::vec::Vec<FlowKey>); 11] = [
            (
                "one client, its ports",
                (0..30_000)
                    .map(|p| v4(0x0a00_0001, 1024 + p as u16, 443))
                    .collect(),
            ),
            (
                "clients, one port each",
                (0..30_000)
                    .map(|c| v4(0x0a00_0000 + c, 40_000, 443))
                    .collect(),
            ),
            (
                "clients x ports",
                (0..30_000)
                    .map(|c| v4(0x0a00_0000 + c / 100, 30_000 + (c % 100) as u16, 443))
                    .collect(),
            ),
            (
                "one client, server ports",
                (0..30_000)
                    .map(|p| v4(0x0a00_0001, 40_000, p as u16))
                    .collect(),
            ),
            (
                "a NAT's ports to 16 servers",
                (0..30_000)
                    .map(|i| {
                        pair(
                            0xc633_6401,
                            20_000 + (i / 16) as u16,
                            0x0a00_0000 + i % 16,
                            443,
                        )
                    })
                    .collect(),
            ),
            (
                "server ports of 8 servers",
                (0..30_000)
                    .map(|i| pair(0x0a00_0001, 40_000, 0x0a00_0100 + i % 8, (i / 8) as u16))
                    .collect(),
            ),
            (
                "a /24's clients, random ports",
                (0..30_000)
                    .map(|_| {
                        let x = other();
                        pair(
                            0xc0a8_0100 + (x & 0xff) as u32,
                            (x >> 8) as u16,
                            0x0a00_0001,
                            443,
                        )
                    })
                    .collect(),
            ),
            (
                "clients and ports counting up together",
                (0..30_000)
                    .map(|i| pair(0x0a00_0000 + i, 1024 + i as u16, 0x0a00_00ff, 80))
                    .collect(),
            ),
            ("IPv6 hosts", (0..30_000).map(|c| v6(c, 12)).collect()),
            ("IPv6 prefixes", (0..30_000).map(|c| v6(c, 4)).collect()),
            (
                "random",
                (0..30_000)
                    .map(|_| {
                        let x = next();
                        v4(x as u32, (x >> 32) as u16, 80)
                    })
                    .collect(),
            ),
        ];
        for (shape, keys) in shapes {
            let mut used = std::vec![0u32; (slots / WAYS) as usize];
            for key in &keys {
                used[(set_of(key.hash32(), set_shift(slots)) / WAYS) as usize] += 1;
            }
            // 30 000 keys in 32 768 sets: a random hash leaves about 2 700
            // beyond two per set.
            let beyond: u32 = used.iter().map(|&n| n.saturating_sub(WAYS)).sum();
            assert!(
                beyond < 3_200,
                "{shape}: {beyond} keys beyond their set's ways"
            );
        }
    }

    #[test]
    fn halves_group_an_address_as_words_does() {
        let v4 = [192, 0, 2, 7];
        assert_eq!(Addr16::v4_mapped(v4).halves(), Addr16::v4_mapped_halves(v4));
        let v6 = Addr16(core::array::from_fn(|i| i as u8 * 17));
        let w = v6.words();
        // SAFETY: same size, plain data.
        let as_words = unsafe { core::mem::transmute::<[u64; 2], [u32; 4]>(v6.halves()) };
        assert_eq!(as_words, w);
        assert_eq!(fold_address(&v6.halves()), w[0] ^ w[1] ^ w[2] ^ w[3]);
    }

    /// A deterministic stream of test values (xorshift64*).
    fn stream(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn hash_spreads_addresses_and_tells_swapped_ports_apart() {
        let slots = 1 << 12;
        let sets = (slots / WAYS) as usize;
        // Clients 10.0.x.y, one port each, to one server port.
        let mut used = std::vec![0u32; sets];
        for client in 0..20_000u32 {
            let addr = (0x0a00_0000 + client).to_be_bytes();
            let (key, _) = FlowKey::from_endpoints(
                Addr16::v4_mapped(addr),
                40_000,
                Addr16::v4_mapped([192, 0, 2, 1]),
                443,
                4,
            );
            used[(set_of(key.hash32(), set_shift(slots)) / WAYS) as usize] += 1;
        }
        let max = *used.iter().max().unwrap();
        assert!(max < 30, "a set got {max} keys");
        // A:p-B:q and A:q-B:p are different connections.
        let a = Addr16::v4_mapped([10, 0, 0, 1]);
        let b = Addr16::v4_mapped([10, 0, 0, 2]);
        let mut same = 0;
        for p in 1000..2000u16 {
            let q = 80;
            let (one, _) = FlowKey::from_endpoints(a, p, b, q, 4);
            let (other, _) = FlowKey::from_endpoints(a, q, b, p, 4);
            same += (one.hash32() == other.hash32()) as u32;
        }
        assert!(same < 3, "{same} of 1000 port swaps collide");
    }

    /// `direction_of` must say what building the canonical key and
    /// comparing it would, for either family, either direction, and keys
    /// that differ from the slot's in any one field.
    #[test]
    fn direction_of_agrees_with_the_canonical_key() {
        let mut next = stream(7);
        let mut checked = 0;
        for round in 0..4000 {
            let v6 = round % 2 == 1;
            let family = if v6 { 6 } else { 4 };
            let address = |next: &mut dyn FnMut() -> u64| -> Addr16 {
                let mut bytes = (next() as u128 | (next() as u128) << 64).to_ne_bytes();
                if !v6 {
                    bytes = Addr16::v4_mapped([bytes[0], bytes[1], bytes[2], bytes[3] % 4]).0;
                } else {
                    bytes[15] %= 4;
                }
                Addr16(bytes)
            };
            let (x, y) = (address(&mut next), address(&mut next));
            let (px, py) = ((next() % 3) as u16, (next() % 3) as u16);
            let (stored, _) = FlowKey::from_endpoints(x, px, y, py, family);
            let mut slot = FlowSlot {
                key: stored,
                generation: 1,
                reported: 0,
                waiters: 0,
                reserved: [0; 3],
                conn: Conn::zeroed(),
            };
            // Packets of this connection both ways, and near misses.
            let (u, v) = (address(&mut next), address(&mut next));
            let (pu, pv) = ((next() % 3) as u16, (next() % 3) as u16);
            for (src, sp, dst, dp) in [
                (x, px, y, py),
                (y, py, x, px),
                (u, px, y, py),
                (x, pu, y, py),
                (x, px, v, py),
                (x, px, y, pv),
                (y, py, u, px),
                (u, pu, v, pv),
            ] {
                for reported in [0, 1] {
                    slot.reported = reported;
                    let (key, direction) = FlowKey::from_endpoints(src, sp, dst, dp, family);
                    let expected = if slot.holds(&key) && !slot.is_free() {
                        if direction == crate::flow::Direction::AToB {
                            matched::FROM_A
                        } else {
                            matched::FROM_B
                        }
                    } else {
                        matched::NONE
                    };
                    let (src, dst) = (src.halves(), dst.halves());
                    let got = if v6 {
                        slot.direction_of::<true>(&src, sp, &dst, dp, family)
                    } else {
                        slot.direction_of::<false>(&src, sp, &dst, dp, family)
                    };
                    assert_eq!(got, expected, "{stored:?} vs {key:?}");
                    // The packet hashes as its canonical key does, either way.
                    assert_eq!(
                        flow_hash(fold_address(&src), sp, fold_address(&dst), dp),
                        key.hash32(),
                        "{key:?}"
                    );
                    checked += (expected != matched::NONE) as u32;
                }
            }
            // A key of the other family never matches.
            let other = if v6 { 4 } else { 6 };
            slot.reported = 0;
            let (src, dst) = (x.halves(), y.halves());
            assert_eq!(
                slot.direction_of::<true>(&src, px, &dst, py, other),
                matched::NONE
            );
        }
        // Enough matches, of both kinds, to mean something.
        assert!(checked > 4000, "only {checked} matches");
    }

    #[test]
    fn holds_compares_every_word() {
        let (key, _) = FlowKey::from_endpoints(Addr16([1; 16]), 1, Addr16([2; 16]), 2, 6);
        let mut slot = FlowSlot {
            key,
            generation: 1,
            reported: 0,
            waiters: 0,
            reserved: [0; 3],
            conn: Conn::zeroed(),
        };
        assert!(slot.holds(&key) && !slot.is_free());
        slot.key.addr_b.0[15] = 3;
        assert!(!slot.holds(&key));
        slot.reported = 1;
        assert!(slot.is_free());
    }
}

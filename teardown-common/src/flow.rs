//! Flow identity: one key for both directions of a TCP connection.

use crate::{
    addr::Addr16,
    parse::{IpPacket, IpVersion, PacketBytes, TcpSegment},
};

/// A connection's endpoints in canonical order: the (address, port) pair that
/// sorts lower is endpoint `a`, so both directions of a connection share one
/// key. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr_a: Addr16,
    pub addr_b: Addr16,
    pub port_a: u16,
    pub port_b: u16,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding, always zero, so the key hashes the same in the kernel
    /// and in user space. Two fields rather than `[u8; 3]`, which the BPF
    /// backend would zero with a memset call.
    pub _pad8: u8,
    pub _pad16: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Which way a packet travels relative to its [`FlowKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From endpoint `a` to endpoint `b`.
    AToB,
    /// From endpoint `b` to endpoint `a`.
    BToA,
}

/// Source and destination addresses of an IP packet, 16 bytes each.
#[inline(always)]
pub fn addresses<P: PacketBytes + ?Sized>(pkt: &P, ip: &IpPacket) -> Option<(Addr16, Addr16)> {
    addresses_at(pkt, ip.offset as usize, ip.version == IpVersion::V6)
}

/// Source and destination addresses of the IP header at `offset`.
#[inline(always)]
pub fn addresses_at<P: PacketBytes + ?Sized>(
    pkt: &P,
    offset: usize,
    is_v6: bool,
) -> Option<(Addr16, Addr16)> {
    match is_v6 {
        false => {
            let pair = pkt.load::<8>(offset + 12)?;
            Some((
                Addr16::v4_mapped([pair[0], pair[1], pair[2], pair[3]]),
                Addr16::v4_mapped([pair[4], pair[5], pair[6], pair[7]]),
            ))
        }
        true => Some((
            Addr16(pkt.load::<16>(offset + 8)?),
            Addr16(pkt.load::<16>(offset + 24)?),
        )),
    }
}

/// An address held as four native-endian words of its bytes in memory
/// order (what a BPF program gets from 4-byte loads), as a sortable integer pair.
#[inline(always)]
fn word_halves(words: &[u32; 4]) -> (u64, u64) {
    let be = |word: u32| u32::from_be(word) as u64;
    (
        be(words[0]) << 32 | be(words[1]),
        be(words[2]) << 32 | be(words[3]),
    )
}

impl FlowKey {
    /// [`FlowKey::from_endpoints`] for addresses held as words (see
    /// [`word_halves`]): no byte shuffling, which matters on the BPF target,
    /// where it costs dozens of instructions and stack spills.
    #[inline(always)]
    pub fn from_words(
        src: [u32; 4],
        src_port: u16,
        dst: [u32; 4],
        dst_port: u16,
        family: u8,
    ) -> (FlowKey, Direction) {
        let (src_high, src_low) = word_halves(&src);
        let (dst_high, dst_low) = word_halves(&dst);
        let src_first = src_high < dst_high
            || (src_high == dst_high
                && (src_low < dst_low || (src_low == dst_low && src_port <= dst_port)));
        let (a, port_a, b, port_b, direction) = if src_first {
            (src, src_port, dst, dst_port, Direction::AToB)
        } else {
            (dst, dst_port, src, src_port, Direction::BToA)
        };
        (
            FlowKey {
                addr_a: Addr16::from_words(a),
                addr_b: Addr16::from_words(b),
                port_a,
                port_b,
                family,
                _pad8: 0,
                _pad16: 0,
            },
            direction,
        )
    }

    /// The key of the connection a segment belongs to, and the segment's direction.
    #[inline(always)]
    pub fn of<P: PacketBytes + ?Sized>(
        pkt: &P,
        ip: &IpPacket,
        segment: &TcpSegment,
    ) -> Option<(FlowKey, Direction)> {
        Self::at(
            pkt,
            ip.offset as usize,
            ip.version == IpVersion::V6,
            segment,
        )
    }

    /// The same from the IP header's offset and version: plain arguments, for
    /// callers (BPF functions) that cannot take the parser's enums.
    #[inline(always)]
    pub fn at<P: PacketBytes + ?Sized>(
        pkt: &P,
        ip_offset: usize,
        is_v6: bool,
        segment: &TcpSegment,
    ) -> Option<(FlowKey, Direction)> {
        let (src, dst) = addresses_at(pkt, ip_offset, is_v6)?;
        Some(Self::from_endpoints(
            src,
            segment.src_port,
            dst,
            segment.dst_port,
            if is_v6 { 6 } else { 4 },
        ))
    }

    /// Orders two endpoints into a key; the direction is that of src -> dst.
    #[inline(always)]
    pub fn from_endpoints(
        src: Addr16,
        src_port: u16,
        dst: Addr16,
        dst_port: u16,
        family: u8,
    ) -> (FlowKey, Direction) {
        Self::from_words(src.words(), src_port, dst.words(), dst_port, family)
    }
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, byte arrays and integers only, padding explicit (size
// asserted above), any bit pattern valid.
unsafe impl aya::Pod for FlowKey {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::craft::{self, Spec};
    use crate::parse::{Payload, parse, tcp_flags};

    fn key_of(frame: &[u8]) -> (FlowKey, Direction) {
        let parsed = parse(frame);
        let Payload::Ip(ip) = parsed.payload else {
            panic!("not IP: {parsed:?}")
        };
        let (_, segment) = parsed.tcp().expect("TCP");
        FlowKey::of(frame, &ip, segment).expect("addresses in frame")
    }

    #[test]
    fn both_directions_share_one_key() {
        for spec in [
            Spec::tcp_v4(tcp_flags::SYN, 0),
            Spec::tcp_v6(tcp_flags::SYN, 0),
        ] {
            let forward = craft::build(&spec);
            let backward = craft::build(&spec.reversed());
            let (key_forward, dir_forward) = key_of(&forward);
            let (key_backward, dir_backward) = key_of(&backward);
            assert_eq!(key_forward, key_backward);
            assert_ne!(dir_forward, dir_backward);
        }
    }

    #[test]
    fn ipv4_addresses_are_mapped_and_ports_kept() {
        let (key, direction) = key_of(&craft::build(&Spec::tcp_v4(tcp_flags::SYN, 0)));
        assert_eq!(key.family, 4);
        // 192.0.2.1 sorts below 192.0.2.2: the client is endpoint a.
        assert_eq!(direction, Direction::AToB);
        assert_eq!(key.addr_a, Addr16::v4_mapped(craft::CLIENT_V4));
        assert_eq!(key.addr_b, Addr16::v4_mapped(craft::SERVER_V4));
        assert_eq!((key.port_a, key.port_b), (40000, 80));
        assert_eq!((key._pad8, key._pad16), (0, 0));
    }

    #[test]
    fn endpoints_order_as_bytes_then_port() {
        let pairs = [
            (
                Addr16::v4_mapped([10, 0, 0, 1]),
                Addr16::v4_mapped([10, 0, 0, 2]),
            ),
            (
                Addr16::v4_mapped([10, 0, 0, 2]),
                Addr16::v4_mapped([9, 255, 0, 1]),
            ),
            (
                Addr16::v4_mapped([10, 0, 1, 0]),
                Addr16::v4_mapped([10, 0, 0, 255]),
            ),
            (Addr16(craft::CLIENT_V6), Addr16(craft::SERVER_V6)),
            (Addr16(craft::SERVER_V6), Addr16(craft::CLIENT_V6)),
            (
                Addr16::v4_mapped([1, 2, 3, 4]),
                Addr16::v4_mapped([1, 2, 3, 4]),
            ),
        ];
        for (src, dst) in pairs {
            for (sp, dp) in [(80, 5000), (5000, 80), (7, 7)] {
                let (key, direction) = FlowKey::from_endpoints(src, sp, dst, dp, 6);
                // The independent rule: compare (address bytes, port) tuples.
                let src_first = (src, sp) <= (dst, dp);
                assert_eq!(
                    direction == Direction::AToB,
                    src_first,
                    "{src:?}:{sp} {dst:?}:{dp}"
                );
                let (low, high) = if src_first {
                    ((src, sp), (dst, dp))
                } else {
                    ((dst, dp), (src, sp))
                };
                assert_eq!(
                    (key.addr_a, key.port_a, key.addr_b, key.port_b),
                    (low.0, low.1, high.0, high.1)
                );
            }
        }
    }

    #[test]
    fn same_address_orders_by_port() {
        let addr = Addr16::v4_mapped([127, 0, 0, 1]);
        let (key, direction) = FlowKey::from_endpoints(addr, 5000, addr, 80, 4);
        assert_eq!(direction, Direction::BToA);
        assert_eq!((key.port_a, key.port_b), (80, 5000));
    }
}

//! Flow identity: one key for both directions of a TCP connection.

use crate::parse::{IpPacket, IpVersion, PacketBytes, TcpSegment};

/// A connection's endpoints in canonical order: the (address, port) pair that
/// sorts lower is endpoint `a`, so both directions of a connection share one
/// key. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    pub port_a: u16,
    pub port_b: u16,
    /// 4 or 6.
    pub family: u8,
    /// Explicit padding, always zero, so the key hashes the same in the kernel
    /// and in user space.
    pub _pad: [u8; 3],
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

/// An IPv4 address in IPv4-mapped IPv6 form.
#[inline(always)]
pub fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3],
    ]
}

/// Source and destination addresses of an IP packet, 16 bytes each.
#[inline(always)]
pub fn addresses<P: PacketBytes + ?Sized>(pkt: &P, ip: &IpPacket) -> Option<([u8; 16], [u8; 16])> {
    let offset = ip.offset as usize;
    match ip.version {
        IpVersion::V4 => {
            let pair = pkt.load::<8>(offset + 12)?;
            Some((
                v4_mapped([pair[0], pair[1], pair[2], pair[3]]),
                v4_mapped([pair[4], pair[5], pair[6], pair[7]]),
            ))
        }
        IpVersion::V6 => Some((pkt.load::<16>(offset + 8)?, pkt.load::<16>(offset + 24)?)),
    }
}

impl FlowKey {
    /// The key of the connection a segment belongs to, and the segment's direction.
    #[inline(always)]
    pub fn of<P: PacketBytes + ?Sized>(
        pkt: &P,
        ip: &IpPacket,
        segment: &TcpSegment,
    ) -> Option<(FlowKey, Direction)> {
        let (src, dst) = addresses(pkt, ip)?;
        Some(Self::from_endpoints(
            src,
            segment.src_port,
            dst,
            segment.dst_port,
            match ip.version {
                IpVersion::V4 => 4,
                IpVersion::V6 => 6,
            },
        ))
    }

    /// Orders two endpoints into a key; the direction is that of src -> dst.
    #[inline(always)]
    pub fn from_endpoints(
        src: [u8; 16],
        src_port: u16,
        dst: [u8; 16],
        dst_port: u16,
        family: u8,
    ) -> (FlowKey, Direction) {
        if (src, src_port) <= (dst, dst_port) {
            (
                FlowKey {
                    addr_a: src,
                    addr_b: dst,
                    port_a: src_port,
                    port_b: dst_port,
                    family,
                    _pad: [0; 3],
                },
                Direction::AToB,
            )
        } else {
            (
                FlowKey {
                    addr_a: dst,
                    addr_b: src,
                    port_a: dst_port,
                    port_b: src_port,
                    family,
                    _pad: [0; 3],
                },
                Direction::BToA,
            )
        }
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
        assert_eq!(key.addr_a, v4_mapped(craft::CLIENT_V4));
        assert_eq!(key.addr_b, v4_mapped(craft::SERVER_V4));
        assert_eq!((key.port_a, key.port_b), (40000, 80));
        assert_eq!(key._pad, [0; 3]);
    }

    #[test]
    fn same_address_orders_by_port() {
        let addr = v4_mapped([127, 0, 0, 1]);
        let (key, direction) = FlowKey::from_endpoints(addr, 5000, addr, 80, 4);
        assert_eq!(direction, Direction::BToA);
        assert_eq!((key.port_a, key.port_b), (80, 5000));
    }
}

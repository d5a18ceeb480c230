//! Builds well-formed frames from a short description, without allocating.
//!
//! Used by the parser's unit tests, the replay tests and `teardown bench`, so
//! every test frame is written by one piece of code whose output is checked
//! against the parser field by field.

use crate::parse::{ETH_HLEN, ethertype, ip_proto};

/// Largest frame [`build`] writes.
pub const MAX_FRAME: usize = 2048;

/// A crafted frame.
#[derive(Clone)]
pub struct Frame {
    buf: [u8; MAX_FRAME],
    len: usize,
}

impl Frame {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::ops::Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Network<'a> {
    Ipv4 {
        src: [u8; 4],
        dst: [u8; 4],
        /// Bytes of IPv4 options (a multiple of 4, at most 40).
        options_len: u8,
        /// Fragment offset in 8-byte units.
        fragment_offset: u16,
        more_fragments: bool,
    },
    Ipv6 {
        src: [u8; 16],
        dst: [u8; 16],
        /// Extension headers to insert in order, by protocol number (hop-by-hop,
        /// routing, destination options: 8 bytes each; fragment: offset 0).
        extensions: &'a [u8],
    },
    /// An ARP request; `transport` and `payload_len` are ignored.
    Arp,
}

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        /// Bytes of TCP options (a multiple of 4, at most 40).
        options_len: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Spec<'a> {
    /// VLAN tags, outermost first: (TPID, VLAN id).
    pub vlans: &'a [(u16, u16)],
    pub network: Network<'a>,
    pub transport: Transport,
    pub payload_len: u16,
}

pub const CLIENT_V4: [u8; 4] = [192, 0, 2, 1];
pub const SERVER_V4: [u8; 4] = [192, 0, 2, 2];
pub const CLIENT_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const SERVER_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

impl Spec<'static> {
    /// An IPv4 TCP segment from the client's port 40000 to the server's port 80.
    pub const fn tcp_v4(flags: u8, payload_len: u16) -> Self {
        Spec {
            vlans: &[],
            network: Network::Ipv4 {
                src: CLIENT_V4,
                dst: SERVER_V4,
                options_len: 0,
                fragment_offset: 0,
                more_fragments: false,
            },
            transport: Transport::Tcp {
                src_port: 40000,
                dst_port: 80,
                seq: 1000,
                ack: 0,
                flags,
                options_len: 0,
            },
            payload_len,
        }
    }

    /// The same segment over IPv6.
    pub const fn tcp_v6(flags: u8, payload_len: u16) -> Self {
        let mut spec = Self::tcp_v4(flags, payload_len);
        spec.network = Network::Ipv6 {
            src: CLIENT_V6,
            dst: SERVER_V6,
            extensions: &[],
        };
        spec
    }
}

impl<'a> Spec<'a> {
    /// The same segment in the other direction: addresses and ports swapped.
    pub fn reversed(&self) -> Spec<'a> {
        let mut back = *self;
        back.network = match self.network {
            Network::Ipv4 {
                src,
                dst,
                options_len,
                fragment_offset,
                more_fragments,
            } => Network::Ipv4 {
                src: dst,
                dst: src,
                options_len,
                fragment_offset,
                more_fragments,
            },
            Network::Ipv6 {
                src,
                dst,
                extensions,
            } => Network::Ipv6 {
                src: dst,
                dst: src,
                extensions,
            },
            Network::Arp => Network::Arp,
        };
        back.transport = match self.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                seq,
                ack,
                flags,
                options_len,
            } => Transport::Tcp {
                src_port: dst_port,
                dst_port: src_port,
                seq,
                ack,
                flags,
                options_len,
            },
            Transport::Udp { src_port, dst_port } => Transport::Udp {
                src_port: dst_port,
                dst_port: src_port,
            },
        };
        back
    }
}

struct Writer {
    frame: Frame,
}

impl Writer {
    fn put(&mut self, bytes: &[u8]) {
        let start = self.frame.len;
        self.frame.buf[start..start + bytes.len()].copy_from_slice(bytes);
        self.frame.len += bytes.len();
    }

    fn zeros(&mut self, count: usize) {
        self.frame.len += count;
    }

    fn put_u16(&mut self, value: u16) {
        self.put(&value.to_be_bytes());
    }

    fn set_u16(&mut self, at: usize, value: u16) {
        self.frame.buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }
}

/// The one's-complement sum used by the IPv4 header checksum.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes the frame `spec` describes. Panics if it would exceed [`MAX_FRAME`].
pub fn build(spec: &Spec) -> Frame {
    let mut w = Writer {
        frame: Frame {
            buf: [0; MAX_FRAME],
            len: 0,
        },
    };
    w.put(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC (locally administered)
    w.put(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    for &(tpid, vlan_id) in spec.vlans {
        w.put_u16(tpid);
        w.put_u16(vlan_id & 0x0fff);
    }
    let l4_len = match spec.transport {
        Transport::Tcp { options_len, .. } => 20 + options_len as usize,
        Transport::Udp { .. } => 8,
    } + spec.payload_len as usize;
    let l4_proto = match spec.transport {
        Transport::Tcp { .. } => ip_proto::TCP,
        Transport::Udp { .. } => ip_proto::UDP,
    };

    match spec.network {
        Network::Arp => {
            w.put_u16(0x0806);
            // Ethernet/IPv4 request: who has SERVER_V4, tell CLIENT_V4.
            w.put(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
            w.put(&[0x02, 0, 0, 0, 0, 0x01]);
            w.put(&CLIENT_V4);
            w.zeros(6);
            w.put(&SERVER_V4);
            return w.frame;
        }
        Network::Ipv4 {
            src,
            dst,
            options_len,
            fragment_offset,
            more_fragments,
        } => {
            w.put_u16(ethertype::IPV4);
            let start = w.frame.len;
            let header_len = 20 + options_len as usize;
            w.put(&[0x40 | (header_len / 4) as u8, 0]);
            w.put_u16((header_len + l4_len) as u16);
            w.put_u16(0x1234); // identification
            let flags = if more_fragments { 0x2000 } else { 0 };
            w.put_u16(flags | (fragment_offset & 0x1fff));
            w.put(&[64, l4_proto, 0, 0]); // TTL, protocol, checksum placeholder
            w.put(&src);
            w.put(&dst);
            for _ in 0..options_len {
                w.put(&[1]); // NOP options
            }
            let checksum = internet_checksum(&w.frame.buf[start..start + header_len]);
            w.set_u16(start + 10, checksum);
        }
        Network::Ipv6 {
            src,
            dst,
            extensions,
        } => {
            w.put_u16(ethertype::IPV6);
            w.put(&[0x60, 0, 0, 0]);
            w.put_u16((extensions.len() * 8 + l4_len) as u16);
            let first_next = extensions.first().copied().unwrap_or(l4_proto);
            w.put(&[first_next, 64]);
            w.put(&src);
            w.put(&dst);
            for (index, &kind) in extensions.iter().enumerate() {
                let next = extensions.get(index + 1).copied().unwrap_or(l4_proto);
                if kind == ip_proto::FRAGMENT {
                    w.put(&[next, 0, 0, 0]); // offset 0, M clear
                    w.put(&[0, 0, 0, 1]); // identification
                } else {
                    // Length 0: 8 bytes, padded with a PadN option.
                    w.put(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
        }
    }

    match spec.transport {
        Transport::Tcp {
            src_port,
            dst_port,
            seq,
            ack,
            flags,
            options_len,
        } => {
            w.put_u16(src_port);
            w.put_u16(dst_port);
            w.put(&seq.to_be_bytes());
            w.put(&ack.to_be_bytes());
            let data_offset = (20 + options_len) / 4;
            w.put(&[data_offset << 4, flags]);
            w.put_u16(64240); // window
            w.put(&[0, 0, 0, 0]); // checksum (not checked by the parser), urgent pointer
            for _ in 0..options_len {
                w.put(&[1]);
            }
        }
        Transport::Udp { src_port, dst_port } => {
            w.put_u16(src_port);
            w.put_u16(dst_port);
            w.put_u16(8 + spec.payload_len);
            w.put(&[0, 0]);
        }
    }
    for index in 0..spec.payload_len {
        w.put(&[b'a' + (index % 26) as u8]);
    }
    debug_assert!(w.frame.len >= ETH_HLEN);
    w.frame
}

/// Outer endpoints of the tunnels [`wrap`] builds.
pub const TUNNEL_A_V4: [u8; 4] = [198, 51, 100, 1];
pub const TUNNEL_B_V4: [u8; 4] = [198, 51, 100, 2];
pub const TUNNEL_A_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
pub const TUNNEL_B_V6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
];

/// One encapsulation layer for [`wrap`]. Layers that carry an IP datagram
/// (IP-in-IP, GRE with an IP protocol, MPLS, PPPoE) take the inner frame's
/// datagram (an untagged inner frame's bytes after its Ethernet header);
/// the others carry the whole inner Ethernet frame.
#[derive(Clone, Copy, Debug)]
pub enum Encap<'a> {
    /// VXLAN over UDP to `port`.
    Vxlan { vni: u32, port: u16, outer_v6: bool },
    /// Geneve over UDP 6081, with `options_len` bytes of options (a
    /// multiple of 4); `ethernet`: carries the Ethernet frame (else the
    /// datagram, by EtherType).
    Geneve {
        vni: u32,
        options_len: u8,
        ethernet: bool,
        outer_v6: bool,
    },
    /// GRE version 0 with the optional fields whose flags are set;
    /// `ethernet`: transparent Ethernet bridging.
    Gre {
        key: Option<u32>,
        checksum: bool,
        sequence: bool,
        ethernet: bool,
        outer_v6: bool,
    },
    /// The datagram directly in IPv4 or IPv6.
    IpIp { outer_v6: bool },
    /// A label stack, top first (the last gets the bottom-of-stack bit).
    Mpls { labels: &'a [u32] },
    /// A PPPoE session.
    Pppoe { session: u16 },
    /// A VN-Tag for virtual interface `vif`.
    VnTag { vif: u16 },
    /// An 802.1ah I-TAG and the customer's Ethernet header.
    Pbb { isid: u32 },
    /// A FabricPath header in front of the classical Ethernet frame.
    FabricPath,
}

/// The inner frame's EtherType and datagram (for an untagged frame).
fn datagram_of(inner: &[u8]) -> (u16, &[u8]) {
    (
        u16::from_be_bytes([inner[12], inner[13]]),
        &inner[ETH_HLEN..],
    )
}

impl Writer {
    /// An outer IP header for `payload_len` bytes of protocol `protocol`.
    fn outer_ip(&mut self, v6: bool, protocol: u8, payload_len: usize) {
        if v6 {
            w_put_v6(self, protocol, payload_len);
        } else {
            let start = self.frame.len;
            self.put(&[0x45, 0]);
            self.put_u16((20 + payload_len) as u16);
            self.put(&[0x43, 0x21, 0, 0, 64, protocol, 0, 0]);
            self.put(&TUNNEL_A_V4);
            self.put(&TUNNEL_B_V4);
            let checksum = internet_checksum(&self.frame.buf[start..start + 20]);
            self.set_u16(start + 10, checksum);
        }
    }
}

fn w_put_v6(w: &mut Writer, protocol: u8, payload_len: usize) {
    w.put(&[0x60, 0, 0, 0]);
    w.put_u16(payload_len as u16);
    w.put(&[protocol, 64]);
    w.put(&TUNNEL_A_V6);
    w.put(&TUNNEL_B_V6);
}

/// Wraps `inner` (an Ethernet frame) in one encapsulation `layer`, in an
/// Ethernet frame with `outer_vlans` tags. Wrap a wrapped frame again for
/// nesting. Panics if it would exceed [`MAX_FRAME`].
pub fn wrap(inner: &[u8], layer: &Encap, outer_vlans: &[(u16, u16)]) -> Frame {
    let mut w = Writer {
        frame: Frame {
            buf: [0; MAX_FRAME],
            len: 0,
        },
    };
    w.put(&[0x02, 0, 0, 0, 0, 0x12]);
    w.put(&[0x02, 0, 0, 0, 0, 0x11]);
    if let Encap::FabricPath = layer {
        // The outer header's switch addresses are the MACs above; the tag,
        // then the classical frame.
        w.put_u16(crate::parse::ethertype::FABRICPATH);
        w.put(&[0x00, 0x3f]);
        w.put(inner);
        return w.frame;
    }
    for &(tpid, vlan_id) in outer_vlans {
        w.put_u16(tpid);
        w.put_u16(vlan_id & 0x0fff);
    }
    let ip_type = |v6: bool| if v6 { ethertype::IPV6 } else { ethertype::IPV4 };
    match *layer {
        Encap::Vxlan {
            vni,
            port,
            outer_v6,
        } => {
            w.put_u16(ip_type(outer_v6));
            w.outer_ip(outer_v6, ip_proto::UDP, 16 + inner.len());
            w.put_u16(49152);
            w.put_u16(port);
            w.put_u16((16 + inner.len()) as u16);
            w.put(&[0, 0]);
            w.put(&[0x08, 0, 0, 0]);
            w.put(&(vni << 8).to_be_bytes());
            w.put(inner);
        }
        Encap::Geneve {
            vni,
            options_len,
            ethernet,
            outer_v6,
        } => {
            let (protocol, body) = if ethernet {
                (crate::parse::ethertype::TEB, inner)
            } else {
                datagram_of(inner)
            };
            let len = 16 + options_len as usize + body.len();
            w.put_u16(ip_type(outer_v6));
            w.outer_ip(outer_v6, ip_proto::UDP, len);
            w.put_u16(49152);
            w.put_u16(6081);
            w.put_u16(len as u16);
            w.put(&[0, 0]);
            w.put(&[options_len / 4, 0]);
            w.put_u16(protocol);
            w.put(&(vni << 8).to_be_bytes());
            for index in 0..options_len {
                // Option class, type, length words: any bytes do, the
                // parser steps over them by the length in the header.
                w.put(&[index]);
            }
            w.put(body);
        }
        Encap::Gre {
            key,
            checksum,
            sequence,
            ethernet,
            outer_v6,
        } => {
            let (protocol, body) = if ethernet {
                (crate::parse::ethertype::TEB, inner)
            } else {
                datagram_of(inner)
            };
            let header_len =
                4 + 4 * (checksum as usize + key.is_some() as usize + sequence as usize);
            w.put_u16(ip_type(outer_v6));
            w.outer_ip(outer_v6, ip_proto::GRE, header_len + body.len());
            let flags =
                (checksum as u16) << 15 | (key.is_some() as u16) << 13 | (sequence as u16) << 12;
            w.put_u16(flags);
            w.put_u16(protocol);
            if checksum {
                w.put(&[0, 0, 0, 0]);
            }
            if let Some(key) = key {
                w.put(&key.to_be_bytes());
            }
            if sequence {
                w.put(&7u32.to_be_bytes());
            }
            w.put(body);
        }
        Encap::IpIp { outer_v6 } => {
            let (protocol, body) = datagram_of(inner);
            let ip_in = if protocol == ethertype::IPV6 {
                ip_proto::IPV6
            } else {
                ip_proto::IPIP
            };
            w.put_u16(ip_type(outer_v6));
            w.outer_ip(outer_v6, ip_in, body.len());
            w.put(body);
        }
        Encap::Mpls { labels } => {
            let (_, body) = datagram_of(inner);
            w.put_u16(crate::parse::ethertype::MPLS_UNICAST);
            for (index, &label) in labels.iter().enumerate() {
                let bottom = (index + 1 == labels.len()) as u32;
                w.put(&((label << 12) | (bottom << 8) | 64).to_be_bytes());
            }
            w.put(body);
        }
        Encap::Pppoe { session } => {
            let (protocol, body) = datagram_of(inner);
            w.put_u16(crate::parse::ethertype::PPPOE_SESSION);
            w.put(&[0x11, 0]);
            w.put_u16(session);
            w.put_u16((2 + body.len()) as u16);
            w.put_u16(if protocol == ethertype::IPV6 {
                0x0057
            } else {
                0x0021
            });
            w.put(body);
        }
        Encap::VnTag { vif } => {
            let (protocol, body) = datagram_of(inner);
            w.put_u16(crate::parse::ethertype::VNTAG);
            w.put_u16(0x8000 | (vif & 0x3fff));
            w.put_u16(0);
            w.put_u16(protocol);
            w.put(body);
        }
        Encap::Pbb { isid } => {
            w.put_u16(crate::parse::ethertype::PBB);
            w.put(&(isid & 0x00ff_ffff).to_be_bytes());
            w.put(inner);
        }
        Encap::FabricPath => unreachable!("handled above"),
    }
    w.frame
}

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

//! Ethernet / VLAN / IPv4 / IPv6 / TCP header parsing, shared by the XDP
//! program and the host.
//!
//! The parser never indexes a frame directly: every read goes through
//! [`PacketBytes::load`], which returns `None` when the bytes are not all inside
//! the frame. On the host that is a slice lookup; in the kernel it is the
//! `data + offset + N <= data_end` comparison the verifier wants to see. Length
//! fields taken from the packet (IHL, TCP data offset, IPv6 extension lengths)
//! only ever move the cursor forward by a bounded amount, and the bytes they
//! claim are checked again before anything behind them is read.

/// Read access to a frame's bytes. The single bounds-checked read helper.
pub trait PacketBytes {
    /// The `N` bytes at `offset`, or `None` unless all of them are inside the frame.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The number of bytes of the frame available to the parser.
    fn frame_len(&self) -> usize;
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(self.get(offset..end)?);
        Some(out)
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len()
    }
}

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_MIN_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_MIN_HLEN: usize = 20;
/// Bytes of a TCP header that must be present for its flags to be read: ports,
/// sequence and acknowledgement numbers, data offset, flags and window.
pub const TCP_READABLE_LEN: usize = 16;
/// How many VLAN tags (802.1Q or 802.1ad) the parser steps over. A frame with
/// more is counted as `vlan_too_deep` and not parsed further.
pub const MAX_VLAN_TAGS: usize = 2;
/// How many IPv6 extension headers the parser walks before giving up.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Upper bound on where an encapsulated frame may start
/// ([`crate::tunnel`]): real encapsulation stacks start their inner frame
/// within the first 200 bytes; one past this is counted as too deep.
pub const MAX_INNER_START: usize = 512;
/// Upper bound on any header offset the parser computes: an inner frame's
/// start, 2 VLAN tags, a 60-byte IPv4 header or a 40-byte IPv6 header with
/// 6 extension headers of at most 2048 bytes each. Bounding offsets keeps
/// the verifier's range tracking finite.
pub const MAX_L4_OFFSET: usize = MAX_INNER_START
    + ETH_HLEN
    + MAX_VLAN_TAGS * VLAN_HLEN
    + IPV6_HLEN
    + MAX_IPV6_EXT_HEADERS * 2048;

pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86DD;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88A8;
    /// MPLS unicast and multicast label stacks.
    pub const MPLS_UNICAST: u16 = 0x8847;
    pub const MPLS_MULTICAST: u16 = 0x8848;
    /// PPPoE session stage (RFC 2516).
    pub const PPPOE_SESSION: u16 = 0x8864;
    /// Cisco VN-Tag (802.1Qbh).
    pub const VNTAG: u16 = 0x8926;
    /// Provider backbone bridging's I-TAG (802.1ah).
    pub const PBB: u16 = 0x88E7;
    /// Cisco FabricPath's tag, in the outer header.
    pub const FABRICPATH: u16 = 0x8903;
    /// Transparent Ethernet bridging: an Ethernet frame (GRE, Geneve).
    pub const TEB: u16 = 0x6558;
}

pub mod ip_proto {
    pub const HOPOPTS: u8 = 0;
    /// IPv4 in IP.
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// IPv6 in IP.
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const GRE: u8 = 47;
    pub const FRAGMENT: u8 = 44;
    pub const DSTOPTS: u8 = 60;
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// The header in which a malformed frame went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Ethernet,
    Vlan,
    Ipv4,
    Ipv6,
    Ipv6Extension,
    Tcp,
}

/// What was wrong with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The frame ends inside the header.
    Truncated,
    /// A length field is below the minimum or claims more than the packet holds.
    BadLength,
    /// The IP version field disagrees with the EtherType.
    BadVersion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    Whole,
    /// Fragment offset 0: carries the transport header.
    First,
    /// Fragment offset > 0: carries no transport header.
    Later,
}

/// The fixed part of a TCP header, plus where it sits and how much payload follows.
///
/// `repr(C)`, bytes first: the enums that carry it put their other
/// variants' small fields over its first bytes, and the BPF backend then
/// splits any field they overlap into pieces, which it must keep apart and
/// put back together for every use. The 4-byte fields come last, clear of
/// them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub flags: u8,
    /// Header length in bytes (data offset * 4), 20..=60.
    pub header_len: u8,
    /// Whether the whole header, options included, is inside the frame and the
    /// IP datagram. An incomplete header is counted as malformed too.
    pub header_complete: bool,
    /// Offset of the TCP header in the frame.
    pub offset: u16,
    pub src_port: u16,
    pub dst_port: u16,
    /// The raw (unscaled) receive window.
    pub window: u16,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes according to the IP length fields (not the captured
    /// length); 0 when the header is incomplete.
    pub payload_len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp(TcpSegment),
    /// Another transport (or one the parser does not step through, such as
    /// AH or ESP); its header starts at [`IpPacket::l4_offset`].
    Other {
        protocol: u8,
    },
    /// A later fragment: no transport header in this packet.
    LaterFragment,
    /// The IPv6 extension-header chain is longer than [`MAX_IPV6_EXT_HEADERS`].
    ChainTooLong,
    /// The IP header, an extension header or the TCP header is malformed.
    Malformed {
        layer: Layer,
        problem: Problem,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    pub version: IpVersion,
    /// Offset of the IP header in the frame.
    pub offset: u16,
    pub fragment: Fragment,
    pub transport: Transport,
    /// Where the transport header starts and the datagram ends (for the
    /// tunnels of [`crate::tunnel`]); 0 when the IP headers are unusable.
    /// Plain fields rather than the transport variant's: a variant's
    /// fields are undefined on other variants' paths, which the BPF
    /// verifier refuses where the compiler merges them.
    pub l4_offset: u16,
    pub end: u32,
    /// The transport's protocol number (0 when the IP headers are unusable).
    pub protocol: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Neither IPv4 nor IPv6: the payload after the EtherType starts at
    /// [`Parsed::network_offset`] (MPLS, PPPoE and link-layer shims are
    /// opened from there by [`crate::tunnel`]).
    NonIp {
        ethertype: u16,
    },
    VlanTooDeep,
    /// The Ethernet header or a VLAN tag is cut short.
    Malformed {
        layer: Layer,
    },
    Ip(IpPacket),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// VLAN tags stepped over (at most [`MAX_VLAN_TAGS`]; one more when too deep).
    pub vlan_tags: u8,
    pub payload: Payload,
    /// The link layer's last EtherType, and where the header after it
    /// starts (both 0 if the link-layer header is cut short): plain fields
    /// for [`crate::tunnel`], for the reason [`IpPacket::l4_offset`] gives.
    pub network_type: u16,
    pub network_offset: u16,
}

impl Parsed {
    /// The TCP segment, if the frame carries a well-formed one.
    #[inline(always)]
    pub fn tcp(&self) -> Option<(&IpPacket, &TcpSegment)> {
        match &self.payload {
            Payload::Ip(ip) => match &ip.transport {
                Transport::Tcp(segment) => Some((ip, segment)),
                _ => None,
            },
            _ => None,
        }
    }
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// Parses the headers of one Ethernet frame.
#[inline(always)]
pub fn parse<P: PacketBytes + ?Sized>(pkt: &P) -> Parsed {
    parse_link(pkt, ETH_HLEN - 2, usize::MAX)
}

/// What [`walk_link`] found ([`LinkWalk::status`]).
pub mod link {
    /// The EtherType after the tags is in [`super::LinkWalk::ethertype`].
    pub const OK: u8 = 0;
    /// The EtherType field is cut short.
    pub const TRUNCATED_ETHERNET: u8 = 1;
    /// A VLAN tag is cut short.
    pub const TRUNCATED_VLAN: u8 = 2;
    /// More VLAN tags than [`super::MAX_VLAN_TAGS`].
    pub const TOO_DEEP: u8 = 3;
}

/// The link layer walked by [`walk_link`]: a flat struct, every field set
/// on every path (see [`IpPacket::l4_offset`] for why that matters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkWalk {
    /// A [`link`] status.
    pub status: u8,
    /// Tags stepped over.
    pub vlan_tags: u8,
    /// The last EtherType read.
    pub ethertype: u16,
    /// Where what follows it starts.
    pub offset: usize,
}

/// Reads an Ethernet frame's EtherType field at `type_offset` and steps
/// over at most [`MAX_VLAN_TAGS`] tags.
#[inline(always)]
pub fn walk_link<P: PacketBytes + ?Sized>(pkt: &P, type_offset: usize) -> LinkWalk {
    let Some(type_bytes) = pkt.load::<2>(type_offset) else {
        return LinkWalk {
            status: link::TRUNCATED_ETHERNET,
            vlan_tags: 0,
            ethertype: 0,
            offset: 0,
        };
    };
    let mut ethertype = be16(type_bytes);
    let mut offset = type_offset + 2;
    let mut vlan_tags = 0u8;

    // Step over at most MAX_VLAN_TAGS tags; the fixed bound keeps the loop
    // verifiable and unrollable.
    let mut tag = 0;
    while tag < MAX_VLAN_TAGS {
        if ethertype != ethertype::VLAN && ethertype != ethertype::QINQ {
            break;
        }
        // A tag is TCI (2 bytes) then the inner EtherType (2 bytes).
        let Some(inner) = pkt.load::<2>(offset + 2) else {
            return LinkWalk {
                status: link::TRUNCATED_VLAN,
                vlan_tags,
                ethertype: 0,
                offset: 0,
            };
        };
        ethertype = be16(inner);
        offset += VLAN_HLEN;
        vlan_tags += 1;
        tag += 1;
    }
    let status = if ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
        link::TOO_DEEP
    } else {
        link::OK
    };
    LinkWalk {
        status,
        vlan_tags,
        ethertype,
        offset,
    }
}

/// Parses an Ethernet frame's headers from its EtherType field at
/// `type_offset` (12 for a frame of its own; further in for a frame inside
/// a tunnel), its IP datagram bounded by `limit`: an IP header claiming
/// more than the tunnel that carries it is malformed. The same walk as
/// [`walk_link`], written out: the kernel's verifier budget for the
/// programs is nearly spent, and this form costs it fewer instructions.
#[inline(always)]
pub fn parse_link<P: PacketBytes + ?Sized>(pkt: &P, type_offset: usize, limit: usize) -> Parsed {
    let Some(type_bytes) = pkt.load::<2>(type_offset) else {
        return Parsed {
            vlan_tags: 0,
            payload: Payload::Malformed {
                layer: Layer::Ethernet,
            },
            network_type: 0,
            network_offset: 0,
        };
    };
    let mut ethertype = be16(type_bytes);
    let mut offset = type_offset + 2;
    let mut vlan_tags = 0u8;
    let mut tag = 0;
    while tag < MAX_VLAN_TAGS {
        if ethertype != ethertype::VLAN && ethertype != ethertype::QINQ {
            break;
        }
        let Some(inner) = pkt.load::<2>(offset + 2) else {
            return Parsed {
                vlan_tags,
                payload: Payload::Malformed { layer: Layer::Vlan },
                network_type: 0,
                network_offset: 0,
            };
        };
        ethertype = be16(inner);
        offset += VLAN_HLEN;
        vlan_tags += 1;
        tag += 1;
    }
    if ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
        return Parsed {
            vlan_tags: vlan_tags + 1,
            payload: Payload::VlanTooDeep,
            network_type: ethertype,
            network_offset: offset as u16,
        };
    }
    Parsed {
        vlan_tags,
        payload: parse_network(pkt, ethertype, offset, limit),
        network_type: ethertype,
        network_offset: offset as u16,
    }
}

/// The EtherType of a packet that starts with its IP header, no link
/// layer before it (a tun or WireGuard device's, a raw-IP capture's), by
/// the version in its first byte; 0, which no EtherType is, unless 4 or 6.
#[inline(always)]
pub fn ip_version_type<P: PacketBytes + ?Sized>(pkt: &P) -> u16 {
    match pkt.load::<1>(0) {
        Some([first]) if first >> 4 == 4 => ethertype::IPV4,
        Some([first]) if first >> 4 == 6 => ethertype::IPV6,
        _ => 0,
    }
}

/// Parses what an EtherType (or a tunnel's protocol field, in EtherType
/// numbers) says starts at `offset`.
#[inline(always)]
pub fn parse_network<P: PacketBytes + ?Sized>(
    pkt: &P,
    ethertype: u16,
    offset: usize,
    limit: usize,
) -> Payload {
    match ethertype {
        ethertype::IPV4 => Payload::Ip(parse_ipv4(pkt, offset, limit)),
        ethertype::IPV6 => Payload::Ip(parse_ipv6(pkt, offset, limit)),
        other => Payload::NonIp { ethertype: other },
    }
}

#[inline(always)]
fn ip_packet(
    version: IpVersion,
    offset: usize,
    fragment: Fragment,
    transport: Transport,
    l4_offset: usize,
    end: usize,
    protocol: u8,
) -> IpPacket {
    IpPacket {
        version,
        offset: offset as u16,
        fragment,
        transport,
        l4_offset: l4_offset as u16,
        end: end.min(u32::MAX as usize) as u32,
        protocol,
    }
}

#[inline(always)]
fn malformed(layer: Layer, problem: Problem) -> Transport {
    Transport::Malformed { layer, problem }
}

#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(pkt: &P, offset: usize, limit: usize) -> IpPacket {
    let v4 = |fragment, transport| ip_packet(IpVersion::V4, offset, fragment, transport, 0, 0, 0);
    // Bytes 0..10: version/IHL, TOS, total length, id, flags/fragment offset, TTL, protocol.
    let Some(head) = pkt.load::<10>(offset) else {
        return v4(Fragment::Whole, malformed(Layer::Ipv4, Problem::Truncated));
    };
    if head[0] >> 4 != 4 {
        return v4(Fragment::Whole, malformed(Layer::Ipv4, Problem::BadVersion));
    }
    let header_len = ((head[0] & 0x0f) as usize) * 4;
    if header_len < IPV4_MIN_HLEN {
        return v4(Fragment::Whole, malformed(Layer::Ipv4, Problem::BadLength));
    }
    // The whole header, options included, must be inside the frame.
    if pkt.load::<1>(offset + header_len - 1).is_none() {
        return v4(Fragment::Whole, malformed(Layer::Ipv4, Problem::Truncated));
    }
    let total_len = be16([head[2], head[3]]) as usize;
    // Total length 0 is what TSO/GSO ("big TCP") packets carry; anything else
    // shorter than the header is inconsistent.
    if total_len != 0 && total_len < header_len {
        return v4(Fragment::Whole, malformed(Layer::Ipv4, Problem::BadLength));
    }
    let ip_end = if total_len == 0 {
        pkt.frame_len()
    } else {
        offset + total_len
    };
    // Inside a tunnel, the datagram must fit in what carries it.
    if ip_end > limit {
        return v4(Fragment::Whole, malformed(Layer::Ipv4, Problem::BadLength));
    }
    let frag_field = be16([head[6], head[7]]);
    let more_fragments = frag_field & 0x2000 != 0;
    let fragment_offset = frag_field & 0x1fff;
    let fragment = if fragment_offset != 0 {
        Fragment::Later
    } else if more_fragments {
        Fragment::First
    } else {
        Fragment::Whole
    };
    if fragment == Fragment::Later {
        return v4(fragment, Transport::LaterFragment);
    }
    let protocol = head[9];
    let l4_offset = offset + header_len;
    let transport = if protocol == ip_proto::TCP {
        parse_tcp(pkt, l4_offset, ip_end)
    } else {
        Transport::Other { protocol }
    };
    ip_packet(
        IpVersion::V4,
        offset,
        fragment,
        transport,
        l4_offset,
        ip_end,
        protocol,
    )
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(pkt: &P, offset: usize, limit: usize) -> IpPacket {
    let v6 = |fragment, transport| ip_packet(IpVersion::V6, offset, fragment, transport, 0, 0, 0);
    // Bytes 0..8: version/class/flow label, payload length, next header, hop limit.
    let Some(head) = pkt.load::<8>(offset) else {
        return v6(Fragment::Whole, malformed(Layer::Ipv6, Problem::Truncated));
    };
    if head[0] >> 4 != 6 {
        return v6(Fragment::Whole, malformed(Layer::Ipv6, Problem::BadVersion));
    }
    // The addresses must be there too.
    if pkt.load::<1>(offset + IPV6_HLEN - 1).is_none() {
        return v6(Fragment::Whole, malformed(Layer::Ipv6, Problem::Truncated));
    }
    let payload_len = be16([head[4], head[5]]) as usize;
    // Payload length 0 with a hop-by-hop header may be a jumbogram (RFC 2675):
    // trust the frame. Without one the payload is empty, as tshark reads it;
    // XDP runs before GRO, so it never sees big-TCP packets built without it.
    let ip_end = if payload_len != 0 {
        offset + IPV6_HLEN + payload_len
    } else if head[6] == ip_proto::HOPOPTS {
        pkt.frame_len()
    } else {
        offset + IPV6_HLEN
    };
    // Inside a tunnel, the datagram must fit in what carries it.
    if ip_end > limit {
        return v6(Fragment::Whole, malformed(Layer::Ipv6, Problem::BadLength));
    }

    let mut next = head[6];
    let mut cursor = offset + IPV6_HLEN;
    let mut fragment = Fragment::Whole;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        match next {
            ip_proto::HOPOPTS | ip_proto::ROUTING | ip_proto::DSTOPTS => {
                let Some(ext) = pkt.load::<2>(cursor) else {
                    return v6(
                        fragment,
                        malformed(Layer::Ipv6Extension, Problem::Truncated),
                    );
                };
                next = ext[0];
                // Length in 8-octet units, not counting the first 8: at most 2048 bytes.
                let ext_len = (ext[1] as usize + 1) * 8;
                // The whole header must be in the frame before stepping over it.
                if pkt.load::<1>(cursor + ext_len - 1).is_none() {
                    return v6(
                        fragment,
                        malformed(Layer::Ipv6Extension, Problem::Truncated),
                    );
                }
                cursor += ext_len;
            }
            ip_proto::FRAGMENT => {
                // Fixed 8 bytes: next header, reserved, offset and flags, identification.
                let Some(ext) = pkt.load::<8>(cursor) else {
                    return v6(
                        fragment,
                        malformed(Layer::Ipv6Extension, Problem::Truncated),
                    );
                };
                next = ext[0];
                let frag_field = be16([ext[2], ext[3]]);
                fragment = if frag_field & 0xfff8 != 0 {
                    Fragment::Later
                } else {
                    Fragment::First
                };
                cursor += 8;
                if fragment == Fragment::Later {
                    return v6(fragment, Transport::LaterFragment);
                }
            }
            _ => break,
        }
        walked += 1;
    }
    if walked == MAX_IPV6_EXT_HEADERS
        && matches!(
            next,
            ip_proto::HOPOPTS | ip_proto::ROUTING | ip_proto::DSTOPTS | ip_proto::FRAGMENT
        )
    {
        return v6(fragment, Transport::ChainTooLong);
    }
    // The extension headers' own lengths must fit in the packet.
    if cursor > ip_end {
        return v6(
            fragment,
            malformed(Layer::Ipv6Extension, Problem::BadLength),
        );
    }
    let transport = if next == ip_proto::TCP {
        parse_tcp(pkt, cursor, ip_end)
    } else {
        Transport::Other { protocol: next }
    };
    ip_packet(
        IpVersion::V6,
        offset,
        fragment,
        transport,
        cursor,
        ip_end,
        next,
    )
}

/// Parses a TCP header at `offset`, inside an IP datagram ending at `ip_end`.
///
/// The segment counts as TCP once its first [`TCP_READABLE_LEN`] bytes are in
/// both the frame and the datagram and its data offset is valid; that is the
/// point at which tshark, the project's judge, reads the flags. Options cut
/// short by the capture or the datagram leave the segment marked incomplete:
/// counted as malformed as well, and its payload length not trusted.
#[inline(always)]
fn parse_tcp<P: PacketBytes + ?Sized>(pkt: &P, offset: usize, ip_end: usize) -> Transport {
    if offset > MAX_L4_OFFSET {
        return malformed(Layer::Tcp, Problem::BadLength);
    }
    if offset + TCP_READABLE_LEN > ip_end {
        return malformed(Layer::Tcp, Problem::BadLength);
    }
    // Ports, sequence and acknowledgement numbers, data offset, flags, window.
    let Some(head) = pkt.load::<TCP_READABLE_LEN>(offset) else {
        return malformed(Layer::Tcp, Problem::Truncated);
    };
    let header_len = (head[12] >> 4) as usize * 4;
    if header_len < TCP_MIN_HLEN {
        return malformed(Layer::Tcp, Problem::BadLength);
    }
    // The options the data offset announces must be in the frame and the datagram.
    let header_end = offset + header_len;
    let complete = header_end <= ip_end && pkt.load::<1>(header_end - 1).is_some();
    let payload_len = if complete { ip_end - header_end } else { 0 };
    Transport::Tcp(tcp_segment(
        &head,
        offset,
        header_len,
        complete,
        payload_len,
    ))
}

/// The segment whose header's first [`TCP_READABLE_LEN`] bytes are `head`,
/// at `offset` in the frame.
#[inline(always)]
fn tcp_segment(
    head: &[u8; TCP_READABLE_LEN],
    offset: usize,
    header_len: usize,
    complete: bool,
    payload_len: usize,
) -> TcpSegment {
    TcpSegment {
        offset: offset as u16,
        src_port: be16([head[0], head[1]]),
        dst_port: be16([head[2], head[3]]),
        seq: u32::from_be_bytes([head[4], head[5], head[6], head[7]]),
        ack: u32::from_be_bytes([head[8], head[9], head[10], head[11]]),
        flags: head[13],
        window: be16([head[14], head[15]]),
        header_len: header_len as u8,
        header_complete: complete,
        payload_len: payload_len as u32,
    }
}

/// A frame of the shape nearly all traffic has, read by [`parse_common`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonTcp {
    pub version: IpVersion,
    /// The segment, its header complete.
    pub segment: TcpSegment,
}

impl CommonTcp {
    /// The IP header's offset: right after an untagged Ethernet header.
    pub const IP_OFFSET: usize = ETH_HLEN;
}

/// Reads the frame nearly all traffic is, without the general parser's
/// bookkeeping: untagged Ethernet, IPv4 without options or IPv6 without
/// extension headers, not a fragment, carrying a TCP segment whose whole
/// header is in the frame and the datagram. A few wide loads and compares;
/// in the kernel, [`parse`] spends a hundred instructions on the same frame
/// building its result for every case it covers.
///
/// `None` for any other frame, [`parse`] then reads it. Where it answers, it
/// answers as [`parse`] does: the same segment, in the same IP packet (a
/// host test holds the two to that, over mutated frames).
#[inline(always)]
pub fn parse_common<P: PacketBytes + ?Sized>(pkt: &P) -> Option<CommonTcp> {
    parse_common_at(pkt, 0, usize::MAX)
}

/// [`parse_common`] of the Ethernet frame at `link` (its offsets, and the
/// segment's, from the start of `pkt`), its datagram inside `limit`, where
/// what carries it ends: the common frame inside a tunnel (see
/// `crate::tunnel::parse_common_overlay`). At `link` 0 with no limit, the
/// same code as [`parse_common`]'s, constants folded.
#[inline(always)]
pub fn parse_common_at<P: PacketBytes + ?Sized>(
    pkt: &P,
    link: usize,
    limit: usize,
) -> Option<CommonTcp> {
    let ethertype = be16(pkt.load::<2>(link + 12)?);
    parse_common_ip(pkt, ethertype, link + ETH_HLEN, limit)
}

/// [`parse_common_at`] of the IP header of `ethertype` (IPv4 or IPv6) at
/// `ip_offset`: the common frame inside a tunnel that carries IP itself
/// (GRE, IP-in-IP), its datagram inside `limit`.
#[inline(always)]
pub fn parse_common_ip<P: PacketBytes + ?Sized>(
    pkt: &P,
    ethertype: u16,
    ip_offset: usize,
    limit: usize,
) -> Option<CommonTcp> {
    let (version, tcp_offset, ip_end) = if ethertype == ethertype::IPV4 {
        // Version 4, IHL 5; protocol; no fragment (neither MF nor an offset).
        let ip = pkt.load::<IPV4_MIN_HLEN>(ip_offset)?;
        let total_len = be16([ip[2], ip[3]]) as usize;
        if ip[0] != 0x45
            || ip[9] != ip_proto::TCP
            || be16([ip[6], ip[7]]) & 0x3fff != 0
            || total_len < IPV4_MIN_HLEN
        {
            return None;
        }
        (
            IpVersion::V4,
            ip_offset + IPV4_MIN_HLEN,
            ip_offset + total_len,
        )
    } else if ethertype == ethertype::IPV6 {
        // Version 6; TCP right after the fixed header; a payload length.
        let ip = pkt.load::<8>(ip_offset)?;
        let payload_len = be16([ip[4], ip[5]]) as usize;
        if ip[0] >> 4 != 6 || ip[6] != ip_proto::TCP || payload_len == 0 {
            return None;
        }
        (
            IpVersion::V6,
            ip_offset + IPV6_HLEN,
            ip_offset + IPV6_HLEN + payload_len,
        )
    } else {
        return None;
    };
    // Inside a tunnel, the datagram must fit in what carries it (the
    // general parser calls anything else malformed).
    if ip_end > limit {
        return None;
    }
    let head = pkt.load::<TCP_READABLE_LEN>(tcp_offset)?;
    let header_len = (head[12] >> 4) as usize * 4;
    let header_end = tcp_offset + header_len;
    // Options included, the header must be in the datagram and the frame.
    if header_len < TCP_MIN_HLEN || header_end > ip_end || header_end > pkt.frame_len() {
        return None;
    }
    let segment = tcp_segment(&head, tcp_offset, header_len, true, ip_end - header_end);
    Some(CommonTcp { version, segment })
}

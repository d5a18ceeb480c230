//! Encapsulations: the TCP connections inside tunnels and link-layer shims.
//!
//! [`crate::parse::parse`] reads a frame's own headers and stops where an
//! encapsulation starts: an MPLS label stack, a PPPoE session, a VN-Tag,
//! an 802.1ah I-TAG, a FabricPath header (all `Payload::NonIp`), or a GRE,
//! IP-in-IP, VXLAN or Geneve packet (`Transport::Other`). [`decapsulate`]
//! opens those, one layer at a time and at most [`MAX_ENCAP_DEPTH`] deep,
//! and parses the frame inside with the same parser, so every header inside
//! goes through the same bounds-checked reads and length checks as the
//! outer ones. Each layer's own lengths are checked too, and the frame
//! inside must fit in what carries it: a tunnel whose inner datagram claims
//! more than the outer one holds is malformed, not trusted.
//!
//! A frame that stops inside an encapsulation header, or whose layers go
//! deeper than the parser follows, is counted (`tunnel_malformed`,
//! `tunnel_too_deep`), never trusted. The outer frame's own tallies are
//! those of its outer headers: a VXLAN packet counts as UDP, an MPLS frame
//! as non-IP, as tshark (the project's judge of flag counts) reads them;
//! the TCP segments found inside are counted apart (`tunnelled_tcp`).

use crate::addr::Addr16;
use crate::parse::{
    CommonTcp, ETH_HLEN, Fragment, IPV4_MIN_HLEN, IPV6_HLEN, IpPacket, IpVersion, MAX_INNER_START,
    PacketBytes, Parsed, Payload, TcpSegment, Transport, VLAN_HLEN, ethertype, ip_proto, link,
    parse_common_ip, parse_network, walk_link,
};

/// Encapsulation kinds, as [`Tunnel::layers`] stores them (0: no layer).
pub mod encap {
    /// An MPLS label stack (RFC 3032); the id is the bottom label.
    pub const MPLS: u8 = 1;
    /// A PPPoE session (RFC 2516); the id is the session id.
    pub const PPPOE: u8 = 2;
    /// A Cisco VN-Tag; the id is the destination virtual interface.
    pub const VNTAG: u8 = 3;
    /// Provider backbone bridging (802.1ah); the id is the I-SID.
    pub const PBB: u8 = 4;
    /// Cisco FabricPath; no id.
    pub const FABRICPATH: u8 = 5;
    /// GRE (RFC 2784, 2890), version 0; the id is the key, if present.
    pub const GRE: u8 = 6;
    /// IPv4 or IPv6 directly in IPv4 or IPv6 (protocols 4 and 41); no id.
    pub const IPIP: u8 = 7;
    /// VXLAN (RFC 7348); the id is the VNI.
    pub const VXLAN: u8 = 8;
    /// Geneve (RFC 8926); the id is the VNI.
    pub const GENEVE: u8 = 9;
    /// Kinds, 0 included.
    pub const COUNT: usize = 10;

    /// The kind's name, as records and counters spell it.
    pub const fn name(kind: u8) -> &'static str {
        match kind {
            MPLS => "mpls",
            PPPOE => "pppoe",
            VNTAG => "vntag",
            PBB => "pbb",
            FABRICPATH => "fabricpath",
            GRE => "gre",
            IPIP => "ipip",
            VXLAN => "vxlan",
            GENEVE => "geneve",
            _ => "none",
        }
    }

    /// Whether the kind carries its frame between two IP endpoints (whose
    /// addresses the record keeps), rather than inside a link.
    pub const fn is_ip_tunnel(kind: u8) -> bool {
        matches!(kind, GRE | IPIP | VXLAN | GENEVE)
    }
}

/// How many encapsulation layers are opened, one inside the other. A frame
/// with more is counted as too deep.
pub const MAX_ENCAP_DEPTH: usize = 3;
/// How many MPLS labels a stack may have before it is counted as too deep.
pub const MAX_MPLS_LABELS: usize = 8;
/// Ports per UDP tunnel kind in [`TunnelPorts`].
pub const TUNNEL_PORT_SLOTS: usize = 4;

/// Which encapsulations are opened, and the UDP destination ports that
/// mean VXLAN or Geneve. A kernel setting; 0 marks an unused port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelPorts {
    /// 4789 (IANA), 8472 (Linux's and flannel's default).
    pub vxlan: [u16; TUNNEL_PORT_SLOTS],
    /// 6081 (IANA).
    pub geneve: [u16; TUNNEL_PORT_SLOTS],
    /// 0: open no encapsulation at all.
    pub enabled: u32,
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<TunnelPorts>() == 24);

impl TunnelPorts {
    pub const DEFAULT: TunnelPorts = TunnelPorts {
        vxlan: [4789, 8472, 0, 0],
        geneve: [6081, 0, 0, 0],
        enabled: 1,
        _reserved: 0,
    };

    /// Opens nothing.
    pub const OFF: TunnelPorts = TunnelPorts {
        vxlan: [0; TUNNEL_PORT_SLOTS],
        geneve: [0; TUNNEL_PORT_SLOTS],
        enabled: 0,
        _reserved: 0,
    };

    #[inline(always)]
    fn has(ports: &[u16; TUNNEL_PORT_SLOTS], port: u16) -> bool {
        port != 0 && (ports[0] == port || ports[1] == port || ports[2] == port || ports[3] == port)
    }

    /// The UDP tunnel a destination port carries: [`encap::VXLAN`],
    /// [`encap::GENEVE`], or 0.
    #[inline(always)]
    pub fn kind_of(&self, dst_port: u16) -> u8 {
        if Self::has(&self.vxlan, dst_port) {
            encap::VXLAN
        } else if Self::has(&self.geneve, dst_port) {
            encap::GENEVE
        } else {
            0
        }
    }

    /// Whether the UDP header at `offset` goes to a tunnel's port (its
    /// ports in one load: what follows a UDP header's ports is longer than
    /// two bytes, see `mpls` on loads).
    #[inline(always)]
    fn udp_to_tunnel<P: PacketBytes + ?Sized>(&self, pkt: &P, offset: usize) -> bool {
        pkt.load::<4>(offset)
            .is_some_and(|head| self.kind_of(be16([head[2], head[3]])) != 0)
    }

    /// Whether an IP datagram of `protocol`, its transport header at
    /// `l4`, may carry a tunnel: IP-in-IP, IPv6 in IP, GRE, or UDP to a
    /// tunnel's port. (Whether tunnels are opened at all is the caller's.)
    #[inline(always)]
    fn ip_may_tunnel<P: PacketBytes + ?Sized>(&self, pkt: &P, protocol: u8, l4: usize) -> bool {
        match protocol {
            ip_proto::IPIP | ip_proto::IPV6 | ip_proto::GRE => true,
            ip_proto::UDP => self.udp_to_tunnel(pkt, l4),
            _ => false,
        }
    }
}

impl Default for TunnelPorts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The tunnel a connection came through, as its record keeps it: the
/// layers from the outermost in, the innermost layer's id, and the
/// endpoints of the innermost IP tunnel (GRE, IP-in-IP, VXLAN, Geneve) in
/// the direction of the frame they were read from.
///
/// The addresses are kept as [`Addr16::halves`]: 8-byte aligned words,
/// which the kernel zeroes and copies with a few word stores (byte-aligned
/// arrays become calls to `memset`/`memcpy`, which BPF has no BTF for).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tunnel {
    pub outer_src: [u64; 2],
    pub outer_dst: [u64; 2],
    /// VNI, GRE key, bottom MPLS label, PPPoE session, I-SID or VN-Tag
    /// interface of the innermost layer (0 if it has none).
    pub id: u32,
    /// [`encap`] kinds, outermost first; 0 after the last.
    pub layers: [u8; MAX_ENCAP_DEPTH],
    /// 4 or 6: the outer endpoints' family; 0 when no IP tunnel was opened.
    pub outer_family: u8,
}

const _: () = assert!(core::mem::size_of::<Tunnel>() == 40);

impl Tunnel {
    /// The innermost layer's kind (0 for none).
    pub fn innermost(&self) -> u8 {
        let mut kind = 0;
        for &layer in &self.layers {
            if layer != 0 {
                kind = layer;
            }
        }
        kind
    }

    /// The outer endpoints, as read from the frame (source, destination).
    pub fn outer_endpoints(&self) -> (Addr16, Addr16) {
        (
            Addr16::from_words(Addr16::words_of_halves(&self.outer_src)),
            Addr16::from_words(Addr16::words_of_halves(&self.outer_dst)),
        )
    }

    /// The layers opened, outermost first.
    pub fn depth(&self) -> usize {
        self.layers.iter().take_while(|&&kind| kind != 0).count()
    }
}

/// What [`decapsulate`] made of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decap {
    /// Not an encapsulation the parser opens.
    None,
    /// The frame inside the tunnel, read.
    Inner { tunnel: Tunnel, inner: Inner },
    /// More layers than [`MAX_ENCAP_DEPTH`], an MPLS stack deeper than
    /// [`MAX_MPLS_LABELS`], or an inner frame starting past
    /// [`MAX_INNER_START`]: not followed.
    TooDeep { tunnel: Tunnel },
    /// An encapsulation header cut short, or whose lengths or fields are
    /// inconsistent; `layers` ends with the kind that was.
    Malformed { tunnel: Tunnel },
    /// An encapsulation the parser recognises but does not follow (GRE
    /// version 1 or with routing, an MPLS payload that is neither IP nor
    /// Ethernet, a Geneve or GRE protocol other than IP or Ethernet).
    Unsupported { tunnel: Tunnel },
}

impl Decap {
    /// The tunnel, if any layer was recognised.
    pub fn tunnel(&self) -> Option<&Tunnel> {
        match self {
            Decap::None => None,
            Decap::Inner { tunnel, .. }
            | Decap::TooDeep { tunnel }
            | Decap::Malformed { tunnel }
            | Decap::Unsupported { tunnel } => Some(tunnel),
        }
    }
}

/// Where the frame inside a layer starts: an Ethernet frame (or the rest
/// of a link-layer header) whose EtherType field is at `offset` when
/// `ethertype` is [`LINK`], else a header of that EtherType (IPv4, IPv6,
/// MPLS, ...) at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Start {
    ethertype: u16,
    offset: usize,
}

/// [`Start::ethertype`] of a link-layer start.
const LINK: u16 = 0;

impl Start {
    #[inline(always)]
    fn link(type_offset: usize) -> Start {
        Start {
            ethertype: LINK,
            offset: type_offset,
        }
    }

    #[inline(always)]
    fn network(ethertype: u16, offset: usize) -> Start {
        Start { ethertype, offset }
    }
}

/// What [`step`] made of the current frame: an [`outcome`]
/// ([`outcome::NONE`]: not an encapsulation; [`outcome::OPENED`]: a layer
/// of `kind` whose frame starts at `start` and must end by `limit`,
/// `usize::MAX` if unknown; otherwise why the layer of `kind` was not).
///
/// Flat, every field set on every path: with an enum, one variant's
/// fields are undefined on the others' paths, and where those paths merge
/// the compiler may store any register for them, one the verifier knows
/// to be uninitialised and refuses to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    outcome: u8,
    kind: u8,
    id: u32,
    start: Start,
    limit: usize,
}

impl Step {
    #[inline(always)]
    fn done() -> Step {
        Step::problem(outcome::NONE, 0)
    }

    #[inline(always)]
    fn layer(kind: u8, id: u32, start: Start, limit: usize) -> Step {
        Step {
            outcome: outcome::OPENED,
            kind,
            id,
            start,
            limit,
        }
    }

    #[inline(always)]
    fn problem(outcome: u8, kind: u8) -> Step {
        Step {
            outcome,
            kind,
            id: 0,
            start: Start::link(0),
            limit: 0,
        }
    }

    #[inline(always)]
    fn malformed(kind: u8) -> Step {
        Step::problem(outcome::MALFORMED, kind)
    }

    #[inline(always)]
    fn too_deep(kind: u8) -> Step {
        Step::problem(outcome::TOO_DEEP, kind)
    }

    #[inline(always)]
    fn unsupported(kind: u8) -> Step {
        Step::problem(outcome::UNSUPPORTED, kind)
    }
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

/// What opening a frame's encapsulations came to ([`decapsulate_in_place`]).
pub mod outcome {
    /// Not an encapsulation the parser opens.
    pub const NONE: u8 = 0;
    /// Opened: the frame inside is read ([`super::DecapState::inner`]).
    pub const INNER: u8 = 1;
    /// Too many layers, labels, or an inner frame starting too far in.
    pub const TOO_DEEP: u8 = 2;
    /// An encapsulation header cut short or inconsistent.
    pub const MALFORMED: u8 = 3;
    /// Recognised but not followed.
    pub const UNSUPPORTED: u8 = 4;
    /// [`super::open_layer`] only: one layer opened, look again.
    pub const OPENED: u8 = 5;
}

/// Where a frame's headers stopped, as far as tunnels care ([`Cursor::stop`]).
pub mod stop {
    /// Nothing a tunnel could start at: TCP, a malformed header, a later
    /// fragment, ...
    pub const END: u8 = 0;
    /// A payload of a non-IP EtherType at [`super::Cursor::offset`].
    pub const NON_IP: u8 = 1;
    /// A transport other than TCP ([`super::Cursor::protocol`]) at
    /// [`super::Cursor::offset`], in an IP datagram.
    pub const IP_OTHER: u8 = 2;
}

/// Where the frame being opened stopped: what [`open_layer`] needs of a
/// parse, in plain fields (the kernel keeps it in a map between layers).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// A [`stop`] value.
    pub stop: u8,
    /// [`stop::IP_OTHER`]: the IP protocol.
    pub protocol: u8,
    /// [`stop::IP_OTHER`]: 1 for IPv6.
    pub is_v6: u8,
    /// [`stop::IP_OTHER`]: 1 unless the datagram is a first fragment.
    pub whole: u8,
    /// [`stop::NON_IP`]: the EtherType.
    pub ethertype: u16,
    /// Where the payload (non-IP) or the transport header starts.
    pub offset: u16,
    /// [`stop::IP_OTHER`]: the IP header's offset.
    pub ip_offset: u16,
    pub _pad: u16,
    /// [`stop::IP_OTHER`]: where the IP datagram ends; [`stop::NON_IP`]:
    /// where what carries the payload ends (`u32::MAX`: unknown).
    pub end: u32,
}

const _: () = assert!(core::mem::size_of::<Cursor>() == 16);

/// What the innermost frame read holds ([`DecapState::inner`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inner {
    /// The TCP segment, if [`Inner::class`] is [`inner_class::TCP`].
    pub segment: TcpSegment,
    /// Its IP header's offset in the frame.
    pub ip_offset: u16,
    /// 1 for IPv6.
    pub is_v6: u8,
    /// An [`inner_class`] value.
    pub class: u8,
    /// Where the inner datagram had to end (`u32::MAX`: unknown), so the
    /// kernel can read the segment again ([`Inner::reparse`]).
    pub limit: u32,
}

impl Inner {
    /// The TCP segment of a [`inner_class::TCP`] frame, read again from
    /// the frame at its IP header: what the kernel does rather than keep
    /// the copy in [`Inner::segment`]. The same parser at the same place
    /// with the same bound: the same segment (a host test holds the two
    /// to that).
    #[inline(always)]
    pub fn reparse<P: PacketBytes + ?Sized>(&self, pkt: &P) -> Option<TcpSegment> {
        let ethertype = if self.is_v6 != 0 {
            ethertype::IPV6
        } else {
            ethertype::IPV4
        };
        let limit = if self.limit == u32::MAX {
            usize::MAX
        } else {
            self.limit as usize
        };
        match parse_network(pkt, ethertype, self.ip_offset as usize, limit) {
            Payload::Ip(IpPacket {
                transport: Transport::Tcp(segment),
                ..
            }) => Some(segment),
            _ => None,
        }
    }
}

/// What an innermost frame is ([`Inner::class`]).
pub mod inner_class {
    pub const TCP: u8 = 0;
    /// Another transport, a later fragment, a non-IP payload.
    pub const OTHER: u8 = 1;
    /// A header cut short or inconsistent.
    pub const MALFORMED: u8 = 2;
    /// VLAN tags or IPv6 extension headers beyond what the parser follows.
    pub const TOO_DEEP: u8 = 3;
}

const EMPTY_SEGMENT: TcpSegment = TcpSegment {
    flags: 0,
    header_len: 0,
    header_complete: false,
    offset: 0,
    src_port: 0,
    dst_port: 0,
    window: 0,
    seq: 0,
    ack: 0,
    payload_len: 0,
};

impl Default for Inner {
    fn default() -> Self {
        Inner {
            segment: EMPTY_SEGMENT,
            ip_offset: 0,
            is_v6: 0,
            class: inner_class::OTHER,
            limit: u32::MAX,
        }
    }
}

/// The work of opening one frame's encapsulations, layer by layer: where
/// the current frame stopped, the tunnel gathered so far, and what the
/// innermost frame read holds. `repr(C)`, plain fields: the kernel keeps
/// it in a per-CPU map, and opens each layer in a function of its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapState {
    pub tunnel: Tunnel,
    pub inner: Inner,
    pub cursor: Cursor,
    pub pending: Pending,
}

/// Where the frame inside the layer [`step_layer`] read starts
/// ([`Start`], in plain fields), for [`enter_layer`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// 0: an Ethernet frame whose EtherType field is at `offset`.
    pub ethertype: u16,
    pub offset: u16,
    /// `u32::MAX`: unknown.
    pub limit: u32,
    /// For the kernel's two-layer shortcut: the outer layer, as a
    /// [`layer_word`], described with the inner one if a record may start.
    pub outer_layer: u64,
}

impl DecapState {
    /// Starts on a frame: the tunnel empty, the cursor where its own
    /// headers stop. False if they stop where no encapsulation can start
    /// (a TCP segment, a malformed header): the common case.
    #[inline(always)]
    pub fn begin<P: PacketBytes + ?Sized>(&mut self, pkt: &P) -> bool {
        clear(&mut self.tunnel);
        self.take_in::<P, false>(pkt, Start::link(ETH_HLEN - 2), usize::MAX);
        self.cursor.stop != stop::END
    }

    /// [`DecapState::begin`] for a packet that starts with its IP header,
    /// no Ethernet header before it (a tun or WireGuard device's), its
    /// version in the first byte ([`crate::parse::ip_version_type`]).
    #[inline(always)]
    pub fn begin_ip<P: PacketBytes + ?Sized>(&mut self, pkt: &P) -> bool {
        clear(&mut self.tunnel);
        let start = Start::network(crate::parse::ip_version_type(pkt), 0);
        self.take_in::<P, false>(pkt, start, usize::MAX);
        self.cursor.stop != stop::END
    }

    /// Reads the frame that starts at `start`, its datagram bounded by
    /// `limit`, into the cursor and [`DecapState::inner`]: the same
    /// parser as [`crate::parse::parse`] ([`walk_link`], [`parse_network`]),
    /// read field by field where each is defined. With `SEGMENT`, a TCP
    /// segment is copied into [`Inner::segment`]; the kernel reads it
    /// again where it needs it ([`Inner::reparse`]) and keeps only whether
    /// its header is whole, for the tallies. Nothing here is read
    /// out of a merged parse result: the compiler may store registers for
    /// the fields a path leaves undefined, which the verifier refuses.
    #[inline(always)]
    fn take_in<P: PacketBytes + ?Sized, const SEGMENT: bool>(
        &mut self,
        pkt: &P,
        start: Start,
        limit: usize,
    ) {
        clear(&mut self.cursor);
        clear(&mut self.inner);
        self.inner.class = inner_class::OTHER;
        self.inner.limit = limit.min(u32::MAX as usize) as u32;
        let (ethertype, offset) = if start.ethertype == LINK {
            let walked = walk_link(pkt, start.offset);
            match walked.status {
                link::OK => (walked.ethertype, walked.offset),
                link::TOO_DEEP => {
                    self.inner.class = inner_class::TOO_DEEP;
                    return;
                }
                _ => {
                    self.inner.class = inner_class::MALFORMED;
                    return;
                }
            }
        } else {
            (start.ethertype, start.offset)
        };
        if ethertype != ethertype::IPV4 && ethertype != ethertype::IPV6 {
            self.cursor.stop = stop::NON_IP;
            self.cursor.ethertype = ethertype;
            self.cursor.offset = offset as u16;
            // A layer without lengths of its own (MPLS, a link-layer shim)
            // is still bounded by the tunnel around it.
            self.cursor.end = self.inner.limit;
            return;
        }
        let Payload::Ip(ip) = parse_network(pkt, ethertype, offset, limit) else {
            return;
        };
        self.inner.ip_offset = ip.offset;
        self.inner.is_v6 = (ip.version == IpVersion::V6) as u8;
        match ip.transport {
            Transport::Tcp(segment) => {
                self.inner.class = inner_class::TCP;
                if SEGMENT {
                    self.inner.segment = segment;
                } else {
                    // The kernel parses the segment again where it tracks
                    // it; the tallies still need to know a header cut
                    // short (`encap_tally_of`).
                    self.inner.segment.header_complete = segment.header_complete;
                }
            }
            Transport::Other { .. } => {
                self.cursor.stop = stop::IP_OTHER;
                self.cursor.protocol = ip.protocol;
                self.cursor.is_v6 = self.inner.is_v6;
                self.cursor.whole = (ip.fragment == Fragment::Whole) as u8;
                self.cursor.offset = ip.l4_offset;
                self.cursor.ip_offset = ip.offset;
                self.cursor.end = ip.end;
            }
            Transport::LaterFragment => {}
            Transport::ChainTooLong => self.inner.class = inner_class::TOO_DEEP,
            Transport::Malformed { .. } => self.inner.class = inner_class::MALFORMED,
        }
    }
}

/// Zeroes `value` a 4-byte word at a time. A plain assignment of a zeroed
/// struct this size compiles, for BPF, to a call to `memset`, which the
/// kernel cannot take (the object has no BTF for it); volatile stores are
/// not merged into one.
#[inline(always)]
pub fn clear<T: Copy>(value: &mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    let base = value as *mut T as *mut u32;
    let mut word = 0;
    while word < core::mem::size_of::<T>() / 4 {
        // SAFETY: inside `value`, aligned (asserted above); any bits are a
        // valid u32, and all-zero is valid for the types this is used on.
        unsafe { core::ptr::write_volatile(base.add(word), 0) };
        word += 1;
    }
}

/// `*to = *from`, a 4-byte word at a time, for the reason [`clear`] gives.
#[inline(always)]
pub fn copy<T: Copy>(to: &mut T, from: &T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    let (to, from) = (to as *mut T as *mut u32, from as *const T as *const u32);
    let mut word = 0;
    while word < core::mem::size_of::<T>() / 4 {
        // SAFETY: inside both values, aligned (asserted above).
        unsafe {
            core::ptr::write_volatile(to.add(word), core::ptr::read_volatile(from.add(word)))
        };
        word += 1;
    }
}

/// Opens the encapsulations of a frame, and reads the frame inside.
/// Bounded: at most [`MAX_ENCAP_DEPTH`] layers, each with a bounded number
/// of reads.
pub fn decapsulate<P: PacketBytes + ?Sized>(pkt: &P, ports: &TunnelPorts) -> Decap {
    let mut state = DecapState::default();
    if !state.begin(pkt) {
        return Decap::None;
    }
    decapsulate_begun(pkt, ports, state)
}

/// [`decapsulate`] for a packet that starts with its IP header, no
/// Ethernet header before it (a tun or WireGuard device's:
/// [`DecapState::begin_ip`]). Offsets in the answer are the packet's own.
pub fn decapsulate_ip<P: PacketBytes + ?Sized>(pkt: &P, ports: &TunnelPorts) -> Decap {
    let mut state = DecapState::default();
    if !state.begin_ip(pkt) {
        return Decap::None;
    }
    decapsulate_begun(pkt, ports, state)
}

/// The layers of a frame `state` has begun.
fn decapsulate_begun<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    mut state: DecapState,
) -> Decap {
    let result = decapsulate_in_place(&mut state, ports, |state, depth| {
        open_layer::<P, true>(pkt, state, depth, ports)
    });
    let tunnel = state.tunnel;
    match result {
        outcome::NONE => Decap::None,
        outcome::INNER => Decap::Inner {
            tunnel,
            inner: state.inner,
        },
        outcome::MALFORMED => Decap::Malformed { tunnel },
        outcome::UNSUPPORTED => Decap::Unsupported { tunnel },
        _ => Decap::TooDeep { tunnel },
    }
}

/// Whether a frame whose own headers carry no TCP segment may carry one in
/// a tunnel: they stop at an EtherType or IP protocol that [`decapsulate`]
/// opens, or at UDP to one of `ports`. Decided on what `parsed` already
/// holds and, for UDP, one load of its ports, so that the kernel hands the
/// tunnel program only these frames, and ARP, DNS or QUIC never pay for
/// it. Never false where [`decapsulate`] would find a layer (a host test
/// holds the two to that).
#[inline(always)]
pub fn may_carry_tunnel<P: PacketBytes + ?Sized>(
    pkt: &P,
    parsed: &Parsed,
    ports: &TunnelPorts,
) -> bool {
    if ports.enabled == 0 {
        return false;
    }
    match parsed.network_type {
        ethertype::MPLS_UNICAST
        | ethertype::MPLS_MULTICAST
        | ethertype::PPPOE_SESSION
        | ethertype::VNTAG
        | ethertype::PBB
        | ethertype::FABRICPATH => true,
        ethertype::IPV4 | ethertype::IPV6 => match &parsed.payload {
            // Read here and only here, as `crate::counters::tally` reads
            // a segment's length: loaded ahead of the match, on a path
            // where the parse wrote no IP packet, the stack slot may hold
            // half a spilled pointer, which the verifier refuses.
            Payload::Ip(ip) => {
                // SAFETY: references to initialised fields.
                let (protocol, l4_offset) = unsafe {
                    (
                        core::ptr::read_volatile(&ip.protocol),
                        core::ptr::read_volatile(&ip.l4_offset),
                    )
                };
                ports.ip_may_tunnel(pkt, protocol, l4_offset as usize)
            }
            _ => false,
        },
        _ => false,
    }
}

/// The loop of [`decapsulate`], for a `state` [`DecapState::begin`] set up:
/// `open` is [`open_layer`] (which the kernel calls as a function of its
/// own, verified once). Returns an [`outcome`].
#[inline(always)]
pub fn decapsulate_in_place<S>(
    state: &mut S,
    ports: &TunnelPorts,
    mut open: impl FnMut(&mut S, usize) -> u8,
) -> u8 {
    if ports.enabled == 0 {
        return outcome::NONE;
    }
    let mut depth = 0;
    while depth <= MAX_ENCAP_DEPTH {
        match open(state, depth) {
            outcome::OPENED => depth += 1,
            outcome::NONE if depth == 0 => return outcome::NONE,
            outcome::NONE => return outcome::INNER,
            other => return other,
        }
    }
    outcome::TOO_DEEP
}

/// Opens the encapsulation the current frame (at nesting `depth`) stops
/// at, if it is one: the frame inside is parsed and becomes the current
/// one, and the layer goes into the tunnel ([`outcome::OPENED`]).
/// [`outcome::NONE`] if the current frame is not an encapsulation;
/// otherwise why it could not be opened. [`step_layer`] then
/// [`enter_layer`], which the kernel runs as two functions.
///
/// With `SEGMENT`, the innermost TCP segment is copied into
/// [`Inner::segment`] (see [`DecapState::begin`]).
#[inline(always)]
pub fn open_layer<P: PacketBytes + ?Sized, const SEGMENT: bool>(
    pkt: &P,
    state: &mut DecapState,
    depth: usize,
    ports: &TunnelPorts,
) -> u8 {
    let stepped = step_layer(pkt, state, depth, ports);
    if stepped != outcome::OPENED {
        return stepped;
    }
    enter_layer::<P, SEGMENT>(pkt, state)
}

/// The first half of [`open_layer`]: the encapsulation header the cursor
/// stops at, read into the tunnel, and where the frame inside starts left
/// in [`DecapState::pending`] ([`outcome::OPENED`]).
#[inline(always)]
pub fn step_layer<P: PacketBytes + ?Sized>(
    pkt: &P,
    state: &mut DecapState,
    depth: usize,
    ports: &TunnelPorts,
) -> u8 {
    let cursor = state.cursor;
    let tunnel = &mut state.tunnel;
    let step = step(pkt, &cursor, ports);
    if step.outcome == outcome::NONE {
        return outcome::NONE;
    }
    if step.outcome != outcome::OPENED {
        push(tunnel, depth, step.kind);
        return step.outcome;
    }
    if depth >= MAX_ENCAP_DEPTH {
        return outcome::TOO_DEEP;
    }
    push(tunnel, depth, step.kind);
    tunnel.id = step.id;
    if encap::is_ip_tunnel(step.kind) {
        // The endpoints of the IP header that carries this layer.
        if let Some((src, dst, family)) =
            endpoints_at(pkt, cursor.ip_offset as usize, cursor.is_v6 != 0)
        {
            tunnel.outer_src = src;
            tunnel.outer_dst = dst;
            tunnel.outer_family = family;
        }
    }
    if step.start.offset > MAX_INNER_START {
        return outcome::TOO_DEEP;
    }
    state.pending = Pending {
        ethertype: step.start.ethertype,
        offset: step.start.offset as u16,
        limit: step.limit.min(u32::MAX as usize) as u32,
        outer_layer: 0,
    };
    outcome::OPENED
}

/// The second half of [`open_layer`]: the frame [`step_layer`] found,
/// parsed into the cursor and [`DecapState::inner`].
#[inline(always)]
pub fn enter_layer<P: PacketBytes + ?Sized, const SEGMENT: bool>(
    pkt: &P,
    state: &mut DecapState,
) -> u8 {
    let pending = state.pending;
    // Bounded again: the value may have made a round trip through memory.
    if pending.offset as usize > MAX_INNER_START {
        return outcome::TOO_DEEP;
    }
    let limit = if pending.limit == u32::MAX {
        usize::MAX
    } else {
        pending.limit as usize
    };
    let start = Start {
        ethertype: pending.ethertype,
        offset: pending.offset as usize,
    };
    state.take_in::<P, SEGMENT>(pkt, start, limit);
    outcome::OPENED
}

#[inline(always)]
fn push(tunnel: &mut Tunnel, depth: usize, kind: u8) {
    if let Some(layer) = tunnel.layers.get_mut(depth) {
        *layer = kind;
    }
}

/// Opens the encapsulation the cursor stops at, if it is one.
#[inline(always)]
fn step<P: PacketBytes + ?Sized>(pkt: &P, cursor: &Cursor, ports: &TunnelPorts) -> Step {
    let offset = cursor.offset as usize;
    // Where what carries a non-IP payload ends: the frame inside must fit.
    let carrier_end = if cursor.end == u32::MAX {
        usize::MAX
    } else {
        cursor.end as usize
    };
    match cursor.stop {
        stop::NON_IP => match cursor.ethertype {
            ethertype::MPLS_UNICAST | ethertype::MPLS_MULTICAST => mpls(pkt, offset, carrier_end),
            ethertype::PPPOE_SESSION => pppoe(pkt, offset, carrier_end),
            // VN-Tag: 4 bytes (direction, pointer, destination and source
            // virtual interfaces), then the EtherType.
            ethertype::VNTAG => match pkt.load::<4>(offset) {
                Some(tag) => Step::layer(
                    encap::VNTAG,
                    (be16([tag[0], tag[1]]) & 0x3fff) as u32,
                    Start::link(offset + 4),
                    carrier_end,
                ),
                None => Step::malformed(encap::VNTAG),
            },
            // 802.1ah: the I-TAG (flags and a 24-bit I-SID), then the
            // customer's Ethernet header.
            ethertype::PBB => match pkt.load::<4>(offset) {
                Some(tag) => Step::layer(
                    encap::PBB,
                    u32::from_be_bytes([0, tag[1], tag[2], tag[3]]),
                    Start::link(offset + 4 + 12),
                    carrier_end,
                ),
                None => Step::malformed(encap::PBB),
            },
            // FabricPath: the outer addresses, then the 4-byte tag whose
            // first two bytes were read as the EtherType, then the
            // classical Ethernet frame.
            ethertype::FABRICPATH => Step::layer(
                encap::FABRICPATH,
                0,
                Start::link(offset + 2 + 12),
                carrier_end,
            ),
            _ => Step::done(),
        },
        stop::IP_OTHER => {
            // A first fragment's datagram is longer than what this packet
            // holds: its inner lengths cannot be held to it.
            let limit = if cursor.whole != 0 {
                cursor.end as usize
            } else {
                usize::MAX
            };
            match cursor.protocol {
                ip_proto::IPIP => Step::layer(
                    encap::IPIP,
                    0,
                    Start::network(ethertype::IPV4, offset),
                    limit,
                ),
                ip_proto::IPV6 => Step::layer(
                    encap::IPIP,
                    0,
                    Start::network(ethertype::IPV6, offset),
                    limit,
                ),
                ip_proto::GRE => gre(pkt, offset, limit),
                ip_proto::UDP => udp(pkt, offset, limit, ports),
                _ => Step::done(),
            }
        }
        _ => Step::done(),
    }
}

/// An MPLS label stack at `offset`: labels up to the one with the
/// bottom-of-stack bit, then IPv4 or IPv6 by the first nibble, or a
/// pseudowire's control word (first nibble 0) and an Ethernet frame,
/// bounded by `limit`, where what carries the stack ends.
#[inline(always)]
fn mpls<P: PacketBytes + ?Sized>(pkt: &P, offset: usize, limit: usize) -> Step {
    let mut cursor = offset;
    let mut labels = 0;
    while labels < MAX_MPLS_LABELS {
        let Some(entry) = pkt.load::<4>(cursor) else {
            return Step::malformed(encap::MPLS);
        };
        cursor += 4;
        labels += 1;
        if entry[2] & 0x01 != 0 {
            let label = u32::from_be_bytes(entry) >> 12;
            // Two bytes, though one is read: for a one-byte load, the
            // compiler turns `at + 1 > end` into `at >= end`, from which
            // the verifier learns no readable range. Whatever follows the
            // stack is longer than two bytes.
            let Some([first, _]) = pkt.load::<2>(cursor) else {
                return Step::malformed(encap::MPLS);
            };
            let start = match first >> 4 {
                4 => Start::network(ethertype::IPV4, cursor),
                6 => Start::network(ethertype::IPV6, cursor),
                // RFC 4385's control word, then the Ethernet frame.
                0 => Start::link(cursor + 4 + 12),
                _ => return Step::unsupported(encap::MPLS),
            };
            return Step::layer(encap::MPLS, label, start, limit);
        }
    }
    Step::too_deep(encap::MPLS)
}

/// A PPPoE session header at `offset`: version and type 0x11, code 0, the
/// session id, the payload length, then the PPP protocol (2 bytes). The
/// payload must fit in `limit`, where what carries the session ends.
#[inline(always)]
fn pppoe<P: PacketBytes + ?Sized>(pkt: &P, offset: usize, limit: usize) -> Step {
    let Some(head) = pkt.load::<8>(offset) else {
        return Step::malformed(encap::PPPOE);
    };
    let length = be16([head[4], head[5]]) as usize;
    // The length counts the PPP protocol and what follows it.
    let end = offset + 6 + length;
    if head[0] != 0x11 || head[1] != 0 || length < 2 || end > limit {
        return Step::malformed(encap::PPPOE);
    }
    let ethertype = match be16([head[6], head[7]]) {
        0x0021 => ethertype::IPV4,
        0x0057 => ethertype::IPV6,
        // Link control, authentication and the rest: not a datagram.
        _ => return Step::unsupported(encap::PPPOE),
    };
    Step::layer(
        encap::PPPOE,
        be16([head[2], head[3]]) as u32,
        Start::network(ethertype, offset + 8),
        end,
    )
}

/// A GRE header at `offset` (version 0): flags and version, the protocol
/// (an EtherType), then the checksum, key and sequence number, each 4
/// bytes, if its flag is set.
#[inline(always)]
fn gre<P: PacketBytes + ?Sized>(pkt: &P, offset: usize, limit: usize) -> Step {
    let Some(head) = pkt.load::<4>(offset) else {
        return Step::malformed(encap::GRE);
    };
    let flags = be16([head[0], head[1]]);
    let protocol = be16([head[2], head[3]]);
    // Version 1 is PPTP's enhanced GRE; routing (RFC 1701) carries
    // variable source routes: neither is followed.
    if flags & 0x0007 != 0 || flags & 0x4000 != 0 {
        return Step::unsupported(encap::GRE);
    }
    let has_checksum = flags & 0x8000 != 0;
    let has_key = flags & 0x2000 != 0;
    let has_sequence = flags & 0x1000 != 0;
    let key_at = offset + 4 + 4 * has_checksum as usize;
    let header_len = 4 + 4 * (has_checksum as usize + has_key as usize + has_sequence as usize);
    let id = if has_key {
        match pkt.load::<4>(key_at) {
            Some(key) => u32::from_be_bytes(key),
            None => return Step::malformed(encap::GRE),
        }
    } else {
        0
    };
    let inner = offset + header_len;
    // The whole header in the frame and the datagram (two bytes checked:
    // see `mpls`; what follows is longer).
    if pkt.load::<2>(inner - 2).is_none() || inner > limit {
        return Step::malformed(encap::GRE);
    }
    let start = match protocol {
        ethertype::TEB => Start::link(inner + 12),
        ethertype::IPV4 | ethertype::IPV6 | ethertype::MPLS_UNICAST | ethertype::MPLS_MULTICAST => {
            Start::network(protocol, inner)
        }
        _ => return Step::unsupported(encap::GRE),
    };
    Step::layer(encap::GRE, id, start, limit)
}

/// A UDP header at `offset`: VXLAN or Geneve by its destination port.
#[inline(always)]
fn udp<P: PacketBytes + ?Sized>(pkt: &P, offset: usize, limit: usize, ports: &TunnelPorts) -> Step {
    let Some(head) = pkt.load::<8>(offset) else {
        return Step::done();
    };
    let kind = ports.kind_of(be16([head[2], head[3]]));
    if kind == 0 {
        return Step::done();
    }
    // The UDP length must cover its header and the tunnel's, and fit in
    // the datagram.
    let udp_len = be16([head[4], head[5]]) as usize;
    let udp_end = offset + udp_len;
    if udp_len < 16 || udp_end > limit {
        return Step::malformed(kind);
    }
    let at = offset + 8;
    let Some(tunnel) = pkt.load::<8>(at) else {
        return Step::malformed(kind);
    };
    let vni = u32::from_be_bytes([0, tunnel[4], tunnel[5], tunnel[6]]);
    if kind == encap::VXLAN {
        // The I flag says the VNI is valid (RFC 7348); without it this is
        // not VXLAN as specified.
        if tunnel[0] & 0x08 == 0 {
            return Step::malformed(kind);
        }
        return Step::layer(kind, vni, Start::link(at + 8 + 12), udp_end);
    }
    // Geneve: version (2 bits, 0) and options length in 4-byte words,
    // flags, the protocol (an EtherType), the VNI; then the options.
    if tunnel[0] >> 6 != 0 {
        return Step::unsupported(kind);
    }
    let inner = at + 8 + (tunnel[0] & 0x3f) as usize * 4;
    if inner > udp_end || pkt.load::<2>(inner - 2).is_none() {
        return Step::malformed(kind);
    }
    let start = match be16([tunnel[2], tunnel[3]]) {
        ethertype::TEB => Start::link(inner + 12),
        protocol @ (ethertype::IPV4 | ethertype::IPV6) => Start::network(protocol, inner),
        _ => return Step::unsupported(kind),
    };
    Step::layer(kind, vni, start, udp_end)
}

/// The tunnelled frame nearly every tunnel carries, read by
/// [`read_common_other`]: one layer (VXLAN, Geneve, GRE, IP-in-IP) right
/// after an untagged outer IPv4 or IPv6 header, with the common TCP frame
/// inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonOverlay {
    /// As [`decapsulate`] reports it: the one layer, its id (VNI, GRE
    /// key), the outer endpoints and their family.
    pub tunnel: Tunnel,
    /// The inner segment, its offsets from the start of the outer frame.
    pub inner: CommonTcp,
    /// The inner IP header's offset.
    pub ip_offset: usize,
}

impl CommonOverlay {
    /// The overlay's one layer as a [`layer_word`], with its outer IP
    /// header at `outer_ip` (where the frame's [`underlay`] ends): what the
    /// kernel describes the tunnel from ([`describe_layers`]).
    #[inline(always)]
    pub const fn layer_word(&self, outer_ip: usize) -> u64 {
        word_of_layer(
            self.tunnel.layers[0],
            self.tunnel.id,
            outer_ip,
            self.tunnel.outer_family == 6,
        )
    }
}

/// What [`read_common_other`] makes of a frame that is not the common
/// (untagged) TCP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonOther {
    /// The common TCP frame under one or two VLAN tags: its IP header's
    /// offset and segment. Its tally is `crate::counters::tally_tagged`'s.
    TaggedTcp { ip_offset: usize, inner: CommonTcp },
    /// The common tunnelled frame, and the TCP segment inside it. Its own
    /// tally is `crate::counters::other_ip_tally` of its outer family.
    Overlay(CommonOverlay),
    /// A whole datagram under at most two VLAN tags, IPv4 without options
    /// or IPv6 with UDP right after its header, whose transport is not TCP:
    /// its tally is `crate::counters::other_ip_tally(v6, tagged)`, and it
    /// may carry a tunnel exactly when [`may_carry_tunnel`] says so of it.
    Plain {
        v6: bool,
        tagged: bool,
        may_tunnel: bool,
    },
    /// An untagged datagram whose one tunnel layer the shortcut read, and
    /// found no common TCP frame in (most often it carries another layer,
    /// as VXLAN inside GRE): the layer as [`read_layer`] reads it, as its
    /// [`layer_word`] and what it carries, which the kernel hands to its
    /// tunnel program, so that it goes on from there. Its tally is
    /// `crate::counters::other_ip_tally` of the outer family (the word's),
    /// untagged, and it may carry a tunnel ([`may_carry_tunnel`]).
    ///
    /// A word, not a [`Layer`]: on the kernel's stack LLVM merged the
    /// layer's narrow fields into loads at odd offsets, which the verifier
    /// refuses for the stack.
    Layer { word: u64, carried: LayerStart },
}

/// Reads the common frame that [`crate::parse::parse_common`] does not,
/// without the general parser: a few wide loads and compares, as
/// `parse_common` reads plain TCP. The frame may have one or two VLAN
/// tags (802.1Q or 802.1ad, as the general parser's walk reads them).
/// A frame without TCP of its own (UDP, ICMP, ... over IPv4 without
/// options, not a fragment; UDP over IPv6) is plain, unless, untagged,
/// its one tunnel layer follows the IPv4 or IPv6 header (no extension
/// header) and holds the common TCP frame
/// ([`crate::parse::parse_common_at`], [`parse_common_ip`]) inside what
/// carries it: the common tunnelled frame, its tunnel and segment. The
/// layer is VXLAN, Geneve (any options; Ethernet or IP inside) to a
/// configured port, GRE version 0 (any of checksum, key and sequence
/// number; IP or Ethernet inside) or IP-in-IP. `None` for any other
/// frame, which the general parser then reads.
/// Where it answers, it answers as the general parser and [`decapsulate`]
/// do: the same tally, the same answer to [`may_carry_tunnel`], the same
/// tunnel and inner segment (host tests hold it to that, over every
/// single-byte mutation of tunnelled frames, and the `decapsulate` fuzz
/// target over any bytes).
#[inline(always)]
pub fn read_common_other<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
) -> Option<CommonOther> {
    // At most two tags, by the general parser's own walk; tags cut short
    // or too many are the general parser's to count.
    let LayerStart {
        ethertype,
        offset: outer_ip,
        ..
    } = underlay(pkt)?;
    if outer_ip == ETH_HLEN {
        return read_untagged_other(pkt, ports, ethertype);
    }
    if let Some(inner) = parse_common_ip(pkt, ethertype, outer_ip, usize::MAX) {
        return Some(CommonOther::TaggedTcp {
            ip_offset: outer_ip,
            inner,
        });
    }
    // Tagged without TCP: plain, or a tunnel for the tunnel program to
    // read. Reading tagged tunnels here verified the rest of the shortcut
    // and the tracking after it once per number of tags (the verifier
    // knows each offset as a constant; one copy for an unknown offset
    // explores more still), and took the replay program from 0.6M to
    // 0.96M instructions of its 1M.
    tagged_plain(pkt, ports, ethertype, outer_ip)
}

/// The IPv4 header at `at` of a frame [`read_common_other`] calls plain
/// (or reads a tunnel in), and its total length: IHL 5, not TCP, whole; a
/// total length of 0 (TSO) or one that holds the header, as the general
/// parser wants. `None` for any other.
#[inline(always)]
fn other_ipv4_header<P: PacketBytes + ?Sized>(
    pkt: &P,
    at: usize,
) -> Option<([u8; IPV4_MIN_HLEN], usize)> {
    let ip = pkt.load::<IPV4_MIN_HLEN>(at)?;
    let total_len = be16([ip[2], ip[3]]) as usize;
    if ip[0] != 0x45
        || ip[9] == ip_proto::TCP
        || be16([ip[6], ip[7]]) & 0x3fff != 0
        || (total_len != 0 && total_len < IPV4_MIN_HLEN)
    {
        return None;
    }
    Some((ip, total_len))
}

/// A tagged frame without TCP of its own whose IP header of `ethertype`
/// starts at `outer_ip`, as [`read_untagged_other`] calls an untagged one
/// plain: IPv4 without options, not a fragment, or UDP right after an
/// IPv6 header. `None` for anything else.
#[inline(always)]
fn tagged_plain<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    ethertype: u16,
    outer_ip: usize,
) -> Option<CommonOther> {
    let (v6, may_tunnel) = if ethertype == ethertype::IPV6 {
        // The whole fixed header in the frame, version 6, UDP.
        let ip = pkt.load::<IPV6_HLEN>(outer_ip)?;
        if ip[0] >> 4 != 6 || ip[6] != ip_proto::UDP {
            return None;
        }
        (true, ports.udp_to_tunnel(pkt, outer_ip + IPV6_HLEN))
    } else if ethertype == ethertype::IPV4 {
        let (ip, _) = other_ipv4_header(pkt, outer_ip)?;
        (
            false,
            ports.ip_may_tunnel(pkt, ip[9], outer_ip + IPV4_MIN_HLEN),
        )
    } else {
        return None;
    };
    Some(CommonOther::Plain {
        v6,
        tagged: true,
        may_tunnel: ports.enabled != 0 && may_tunnel,
    })
}

/// [`read_common_other`] of an untagged frame: the header of `ethertype`
/// right after the Ethernet header.
#[inline(always)]
fn read_untagged_other<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    ethertype: u16,
) -> Option<CommonOther> {
    const OUTER_IP: usize = ETH_HLEN;
    const L4_V4: usize = OUTER_IP + IPV4_MIN_HLEN;
    const L4_V6: usize = OUTER_IP + IPV6_HLEN;
    if ethertype == ethertype::IPV6 {
        // The whole fixed header in the frame, version 6.
        let ip = pkt.load::<IPV6_HLEN>(OUTER_IP)?;
        if ip[0] >> 4 != 6 {
            return None;
        }
        let protocol = ip[6];
        let plain = match protocol {
            ip_proto::UDP => Some(CommonOther::Plain {
                v6: true,
                tagged: false,
                may_tunnel: ports.enabled != 0 && ports.udp_to_tunnel(pkt, L4_V6),
            }),
            // Left to the general parser unless read as a tunnel below.
            ip_proto::GRE | ip_proto::IPIP | ip_proto::IPV6 => None,
            _ => return None,
        };
        let payload_len = be16([ip[4], ip[5]]) as usize;
        // A payload length of 0 (a jumbogram, or TSO) bounds nothing.
        if ports.enabled == 0 || payload_len == 0 {
            return plain;
        }
        let read = untagged_tunnel(
            pkt,
            ports,
            protocol,
            L4_V6,
            L4_V6 + payload_len,
            true,
            |kind, id| tunnel_in_v6(&ip, kind, id),
        );
        return read.or(plain);
    }
    if ethertype != ethertype::IPV4 {
        return None;
    }
    let (ip, total_len) = other_ipv4_header(pkt, OUTER_IP)?;
    let plain = |may_tunnel| {
        Some(CommonOther::Plain {
            v6: false,
            tagged: false,
            may_tunnel,
        })
    };
    if ports.enabled == 0 {
        return plain(false);
    }
    let protocol = ip[9];
    let may_tunnel = ports.ip_may_tunnel(pkt, protocol, L4_V4);
    // From here on a tunnel: the tunnel program opens whatever the
    // shortcut does not read. A total length of 0 bounds nothing.
    if !may_tunnel || total_len == 0 {
        return plain(may_tunnel);
    }
    let read = untagged_tunnel(
        pkt,
        ports,
        protocol,
        L4_V4,
        OUTER_IP + total_len,
        false,
        |kind, id| tunnel_in_v4(&ip, kind, id),
    );
    read.or(plain(true))
}

/// The one tunnel layer of an untagged frame, whose outer IP header is
/// right after the Ethernet header, as [`common_tunnel`] reads it: the
/// common tunnelled frame ([`CommonOther::Overlay`], its tunnel by
/// `tunnel_of` from the layer's kind and id), or, where the layer carries
/// no common TCP frame (most often another layer), the layer as
/// [`read_layer`] reads it at the frame's [`underlay`] (the same header,
/// its same checks: [`CommonOther::Layer`]), for the tunnel program to go
/// on from instead of reading it again. `None` where neither reads it.
#[inline(always)]
fn untagged_tunnel<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    protocol: u8,
    l4: usize,
    limit: usize,
    outer_v6: bool,
    tunnel_of: impl FnOnce(u8, u32) -> Tunnel,
) -> Option<CommonOther> {
    let (kind, id, carried, limit) = tunnel_header(pkt, ports, protocol, l4, limit)?;
    // `common_tunnel`'s first steps, written again: shared through a
    // helper returning an `Option`, they cost the replay program 25,000
    // more instructions of the verifier's (512,241 against 487,552).
    let (ethertype, offset) = carried;
    let (ethertype, ip_offset) = if ethertype == LINK {
        (be16(pkt.load::<2>(offset)?), offset + 2)
    } else {
        (ethertype, offset)
    };
    if let Some(inner) = parse_common_ip(pkt, ethertype, ip_offset, limit) {
        return Some(CommonOther::Overlay(CommonOverlay {
            tunnel: tunnel_of(kind, id),
            inner,
            ip_offset,
        }));
    }
    let layer = finish_layer(pkt, kind, id, ETH_HLEN, outer_v6, carried, limit)?;
    Some(CommonOther::Layer {
        word: layer_word(&layer),
        carried: layer.carried,
    })
}

/// The common tunnelled frame ([`CommonOverlay`]) under one or two VLAN
/// tags, its outer IP header where `start` (the frame's [`underlay`])
/// says: the tunnel program's first shortcut, read at fixed offsets as
/// [`read_common_other`] reads an untagged one (one copy per number of
/// tags), where [`read_layer`] finds each header's offset as it goes. A
/// VXLAN underlay behind a VLAN tag cost twice an untagged segment by
/// that way. `None` for anything else, which [`read_layer`] then reads.
#[inline(always)]
pub fn read_tagged_overlay<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    start: &LayerStart,
) -> Option<CommonOverlay> {
    const ONE_TAG: usize = ETH_HLEN + VLAN_HLEN;
    const TWO_TAGS: usize = ETH_HLEN + 2 * VLAN_HLEN;
    if ports.enabled == 0 {
        return None;
    }
    match start.offset {
        ONE_TAG => overlay_at::<ONE_TAG, P>(pkt, ports, start.ethertype),
        TWO_TAGS => overlay_at::<TWO_TAGS, P>(pkt, ports, start.ethertype),
        _ => None,
    }
}

/// [`read_tagged_overlay`] with the outer IP header of `ethertype` at
/// `OUTER_IP`: IPv4 without options, not a fragment, with a total length
/// (not 0), or IPv6 with a payload length, the tunnel layer right after.
///
/// Its last steps repeat [`read_untagged_other`]'s. Shared through a
/// helper (with the header passed by reference, or a closure), they grew
/// the main programs' own frame from 184 bytes to 240: at first that took
/// their deepest chain of calls to 528 bytes of the 512 allowed (refused);
/// since the slow path's frame shrank it would fit, but not for 56 bytes
/// of the stack the fast path spills to, for eight lines.
#[inline(always)]
fn overlay_at<const OUTER_IP: usize, P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    ethertype: u16,
) -> Option<CommonOverlay> {
    if ethertype == ethertype::IPV6 {
        let ip = pkt.load::<IPV6_HLEN>(OUTER_IP)?;
        let payload_len = be16([ip[4], ip[5]]) as usize;
        if ip[0] >> 4 != 6 || payload_len == 0 {
            return None;
        }
        let l4 = OUTER_IP + IPV6_HLEN;
        let (kind, id, inner, ip_offset) = common_tunnel(pkt, ports, ip[6], l4, l4 + payload_len)?;
        return Some(CommonOverlay {
            tunnel: tunnel_in_v6(&ip, kind, id),
            inner,
            ip_offset,
        });
    }
    if ethertype != ethertype::IPV4 {
        return None;
    }
    let (ip, total_len) = other_ipv4_header(pkt, OUTER_IP)?;
    if total_len == 0 {
        return None;
    }
    let l4 = OUTER_IP + IPV4_MIN_HLEN;
    let (kind, id, inner, ip_offset) = common_tunnel(pkt, ports, ip[9], l4, OUTER_IP + total_len)?;
    Some(CommonOverlay {
        tunnel: tunnel_in_v4(&ip, kind, id),
        inner,
        ip_offset,
    })
}

/// Where a layer of encapsulation may start, for the tunnel program's
/// shortcuts: the header of `ethertype` at `offset`, in a datagram that
/// must end by `limit` (`usize::MAX`: the frame's own headers, bounded
/// only by the frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerStart {
    pub ethertype: u16,
    pub offset: usize,
    pub limit: usize,
}

/// Where a packet that starts with its IP header, no Ethernet header
/// before it (a tun or WireGuard device's), has its first layer: the IP
/// header at offset 0, of the version its first byte says
/// ([`crate::parse::ip_version_type`]). What [`underlay`] is for an
/// Ethernet frame.
#[inline(always)]
pub fn ip_underlay<P: PacketBytes + ?Sized>(pkt: &P) -> LayerStart {
    LayerStart {
        ethertype: crate::parse::ip_version_type(pkt),
        offset: 0,
        limit: usize::MAX,
    }
}

/// Where a frame's own link layer ends: after at most
/// [`crate::parse::MAX_VLAN_TAGS`] 802.1Q or 802.1ad tags, by the general
/// parser's own walk ([`walk_link`]). `None` where it finds the tags cut
/// short or too many.
#[inline(always)]
pub fn underlay<P: PacketBytes + ?Sized>(pkt: &P) -> Option<LayerStart> {
    let walked = walk_link(pkt, ETH_HLEN - 2);
    if walked.status != link::OK {
        return None;
    }
    Some(LayerStart {
        ethertype: walked.ethertype,
        offset: walked.offset,
        limit: usize::MAX,
    })
}

/// One layer of encapsulation read by [`read_layer`]: its [`encap`] kind
/// and id, the IP header that carries it if it is an IP tunnel (whose
/// endpoints are the tunnel's), and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    pub kind: u8,
    pub id: u32,
    /// The offset of the IP header carrying an IP tunnel
    /// ([`encap::is_ip_tunnel`]); 0, and not read, for a link-layer layer,
    /// which has no endpoints.
    pub outer_ip: usize,
    pub outer_v6: bool,
    /// What the layer carries: an IP datagram or another layer, never an
    /// Ethernet frame (the shortcuts step over its untagged header).
    pub carried: LayerStart,
}

/// MPLS label stacks the shortcuts read, at most: a transport label, a
/// service label (L3VPN, 6PE) and one more (traffic engineering's, or an
/// entropy label's indicator). Deeper stacks go the general way.
pub const SHORTCUT_MPLS_LABELS: usize = 3;

/// The bottom entry of an MPLS stack of at most [`SHORTCUT_MPLS_LABELS`]
/// labels at `at` (the one with the bottom-of-stack bit), and where what
/// follows the stack starts. Written out, not a loop: LLVM strength-reduces
/// such a loop into a packet pointer biased past the entry it loads, at a
/// negative offset the verifier will not take a bounds check from, when
/// `at` is not a constant (a second layer's).
#[inline(always)]
fn bottom_of_short_stack<P: PacketBytes + ?Sized>(pkt: &P, at: usize) -> Option<([u8; 4], usize)> {
    const _: () = assert!(SHORTCUT_MPLS_LABELS == 3);
    let first = pkt.load::<4>(at)?;
    if first[2] & 0x01 != 0 {
        return Some((first, at + 4));
    }
    let second = pkt.load::<4>(at + 4)?;
    if second[2] & 0x01 != 0 {
        return Some((second, at + 8));
    }
    let third = pkt.load::<4>(at + 8)?;
    if third[2] & 0x01 != 0 {
        return Some((third, at + 12));
    }
    None
}

/// The layer of encapsulation at `start`, as the tunnel program's
/// shortcuts read it, at fixed offsets (or offsets moved by one length):
/// - over IPv4 (IHL 5, whole) or IPv6 (no extension header): VXLAN,
///   Geneve (its options stepped over by their length; Ethernet or IP
///   inside), GRE version 0
///   (any of checksum, key and sequence) or IP-in-IP;
/// - an MPLS stack of up to [`SHORTCUT_MPLS_LABELS`] labels carrying IP
///   or a pseudowire's control word and an Ethernet frame (EoMPLS, VPLS);
///   a PPPoE session carrying IP; a VN-Tag, an 802.1ah I-TAG or a
///   FabricPath header, an Ethernet frame after it.
///
/// A carried Ethernet frame must be untagged. `None` for anything else,
/// which the general way opens; where it answers, it answers as
/// [`decapsulate`] does (its checks are those of `step`, `mpls`, `pppoe`,
/// `gre`, `udp` and the parser's, or narrower ones; host tests and the
/// `decapsulate` fuzz target hold it to that).
#[inline(always)]
pub fn read_layer<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    start: &LayerStart,
) -> Option<Layer> {
    if ports.enabled == 0 {
        return None;
    }
    let at = start.offset;
    let limit = start.limit;
    // The layer, and where what it carries starts: a header of an
    // EtherType, or (`LINK`) an Ethernet frame whose EtherType field is
    // at the offset. The offset is what the general way's `step` calls
    // the start.
    let (kind, id, outer_ip, outer_v6, carried) = match start.ethertype {
        ethertype::IPV4 | ethertype::IPV6 => {
            let (protocol, l4, ip_end, v6) = if start.ethertype == ethertype::IPV6 {
                // Version 6; a payload length, which bounds the tunnel.
                let head = pkt.load::<8>(at)?;
                let payload_len = be16([head[4], head[5]]) as usize;
                if head[0] >> 4 != 6 || payload_len == 0 {
                    return None;
                }
                let l4 = at + IPV6_HLEN;
                (head[6], l4, l4 + payload_len, true)
            } else {
                // IHL 5, whole, a total length that holds the header.
                let head = pkt.load::<10>(at)?;
                let total_len = be16([head[2], head[3]]) as usize;
                if head[0] != 0x45
                    || be16([head[6], head[7]]) & 0x3fff != 0
                    || total_len < IPV4_MIN_HLEN
                {
                    return None;
                }
                (head[9], at + IPV4_MIN_HLEN, at + total_len, false)
            };
            // The addresses in the frame (the tunnel's endpoints), and the
            // datagram inside what carries it.
            if pkt.load::<1>(l4 - 1).is_none() || ip_end > limit {
                return None;
            }
            let (kind, id, carried, carried_limit) =
                tunnel_header(pkt, ports, protocol, l4, ip_end)?;
            return finish_layer(pkt, kind, id, at, v6, carried, carried_limit);
        }
        ethertype::MPLS_UNICAST | ethertype::MPLS_MULTICAST => {
            // Up to the entry with the bottom-of-stack bit, then IPv4 or
            // IPv6 by the first nibble, or (0) a pseudowire's control
            // word and the Ethernet frame.
            let (bottom, cursor) = bottom_of_short_stack(pkt, at)?;
            let label = u32::from_be_bytes(bottom) >> 12;
            let [version, _] = pkt.load::<2>(cursor)?;
            let carried = match version >> 4 {
                4 => (ethertype::IPV4, cursor),
                6 => (ethertype::IPV6, cursor),
                0 => (LINK, cursor + 4 + 12),
                _ => return None,
            };
            (encap::MPLS, label, 0, false, carried)
        }
        ethertype::PPPOE_SESSION => {
            // Version and type 0x11, code 0, the session, the length (of
            // the PPP protocol and what follows), the PPP protocol.
            let head = pkt.load::<8>(at)?;
            let length = be16([head[4], head[5]]) as usize;
            if head[0] != 0x11 || head[1] != 0 || length < 2 || at + 6 + length > limit {
                return None;
            }
            let carried = match be16([head[6], head[7]]) {
                0x0021 => ethertype::IPV4,
                0x0057 => ethertype::IPV6,
                _ => return None,
            };
            let session = be16([head[2], head[3]]) as u32;
            return finish_layer(
                pkt,
                encap::PPPOE,
                session,
                0,
                false,
                (carried, at + 8),
                at + 6 + length,
            );
        }
        ethertype::VNTAG => {
            let tag = pkt.load::<4>(at)?;
            let vif = (be16([tag[0], tag[1]]) & 0x3fff) as u32;
            (encap::VNTAG, vif, 0, false, (LINK, at + 4))
        }
        ethertype::PBB => {
            let tag = pkt.load::<4>(at)?;
            let isid = u32::from_be_bytes([0, tag[1], tag[2], tag[3]]);
            (encap::PBB, isid, 0, false, (LINK, at + 4 + 12))
        }
        ethertype::FABRICPATH => (encap::FABRICPATH, 0, 0, false, (LINK, at + 2 + 12)),
        _ => return None,
    };
    // A layer without lengths of its own is bounded by what carries it.
    finish_layer(pkt, kind, id, outer_ip, outer_v6, carried, limit)
}

/// A [`Layer`] whose carried frame starts at `carried` (an EtherType and
/// the offset of its header, or `LINK` and the offset of an Ethernet
/// frame's EtherType field), bounded by `limit`: the general way's start
/// must be within [`MAX_INNER_START`], and a carried Ethernet frame is
/// stepped over (untagged only).
#[inline(always)]
fn finish_layer<P: PacketBytes + ?Sized>(
    pkt: &P,
    kind: u8,
    id: u32,
    outer_ip: usize,
    outer_v6: bool,
    carried: (u16, usize),
    limit: usize,
) -> Option<Layer> {
    let (ethertype, offset) = carried;
    if offset > MAX_INNER_START {
        return None;
    }
    let carried = if ethertype == LINK {
        let ethertype = be16(pkt.load::<2>(offset)?);
        if ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
            return None;
        }
        LayerStart {
            ethertype,
            offset: offset + 2,
            limit,
        }
    } else {
        LayerStart {
            ethertype,
            offset,
            limit,
        }
    };
    Some(Layer {
        kind,
        id,
        outer_ip,
        outer_v6,
        carried,
    })
}

/// The common TCP frame a [`Layer`] carries, if it does
/// ([`parse_common_ip`]).
#[inline(always)]
pub fn carried_tcp<P: PacketBytes + ?Sized>(pkt: &P, layer: &Layer) -> Option<CommonTcp> {
    let carried = &layer.carried;
    parse_common_ip(pkt, carried.ethertype, carried.offset, carried.limit)
}

/// The endpoints of the IP header carrying `layer`, an IP tunnel, and
/// their family; `None` for a link-layer layer. Told by the layer's kind,
/// as the general way tells it, not by its IP offset: in a packet with no
/// Ethernet header before it (a tun or WireGuard device's) the outer IP
/// header is at offset 0.
#[inline(always)]
fn endpoints_of<P: PacketBytes + ?Sized>(
    pkt: &P,
    layer: &Layer,
) -> Option<([u64; 2], [u64; 2], u8)> {
    if !encap::is_ip_tunnel(layer.kind) {
        return None;
    }
    endpoints_at(pkt, layer.outer_ip, layer.outer_v6)
}

/// The source and destination of the IPv4 (or, with `v6`, IPv6) header at
/// `at`, as [`Tunnel`] keeps them, and their family: a tunnel's outer
/// endpoints, for the general way and the shortcuts alike.
#[inline(always)]
fn endpoints_at<P: PacketBytes + ?Sized>(
    pkt: &P,
    at: usize,
    v6: bool,
) -> Option<([u64; 2], [u64; 2], u8)> {
    if v6 {
        let (src, dst) = (pkt.load::<16>(at + 8)?, pkt.load::<16>(at + 24)?);
        Some((Addr16(src).halves(), Addr16(dst).halves(), 6))
    } else {
        let pair = pkt.load::<8>(at + 12)?;
        Some((
            Addr16::v4_mapped_halves([pair[0], pair[1], pair[2], pair[3]]),
            Addr16::v4_mapped_halves([pair[4], pair[5], pair[6], pair[7]]),
            4,
        ))
    }
}

/// Makes `tunnel` the one `layer`, the outermost, as the general way's
/// `step_layer` records it: its kind and id, and for an IP tunnel the
/// endpoints of the IP header that carries it (zero otherwise). Every
/// field written once, word by word, rather than cleared first.
#[inline(always)]
pub fn start_tunnel<P: PacketBytes + ?Sized>(pkt: &P, tunnel: &mut Tunnel, layer: &Layer) {
    let (src, dst, family) = endpoints_of(pkt, layer).unwrap_or(([0; 2], [0; 2], 0));
    tunnel.outer_src = src;
    tunnel.outer_dst = dst;
    tunnel.id = layer.id;
    tunnel.layers = [layer.kind, 0, 0];
    tunnel.outer_family = family;
}

/// A layer as [`start_tunnel`] and [`add_inner_layer`] read it, in one
/// word ([`describe_layers`]): the offset of the IP header carrying it
/// (bits 0 to 15; 0 for a link-layer layer, which has no endpoints), that
/// header's family (bit 16: IPv6), a bit always set (17, so no layer's
/// word is 0), its kind (bits 24 to 31) and id (bits 32 to 63).
///
/// Why: the kernel's shortcuts describe a segment's tunnel only on the way
/// to the slow path, where a record may start (an established
/// connection's segments never go there), and carry the layers that far
/// in a word each. Writing the description for every segment, 48 bytes
/// and the outer endpoints' loads, was 5 to 6 ns of a VXLAN segment's 30.
#[inline(always)]
pub const fn layer_word(layer: &Layer) -> u64 {
    word_of_layer(layer.kind, layer.id, layer.outer_ip, layer.outer_v6)
}

/// [`layer_word`] of a layer's parts.
#[inline(always)]
const fn word_of_layer(kind: u8, id: u32, outer_ip: usize, outer_v6: bool) -> u64 {
    (outer_ip as u64 & 0xffff)
        | (outer_v6 as u64) << 16
        | 1 << 17
        | (kind as u64) << 24
        | (id as u64) << 32
}

/// The layer of a [`layer_word`], as far as the word keeps it (what it
/// carries is not kept).
#[inline(always)]
pub const fn layer_of_word(word: u64) -> Layer {
    Layer {
        kind: (word >> 24) as u8,
        id: (word >> 32) as u32,
        outer_ip: (word & 0xffff) as usize,
        outer_v6: word & 1 << 16 != 0,
        carried: LayerStart {
            ethertype: 0,
            offset: 0,
            limit: 0,
        },
    }
}

/// Describes in `tunnel` the layer of word `outer` ([`layer_word`]) and,
/// unless `inner` is 0, the one of word `inner` found inside it: what
/// [`start_tunnel`], then [`add_inner_layer`], write.
#[inline(always)]
pub fn describe_layers<P: PacketBytes + ?Sized>(
    pkt: &P,
    tunnel: &mut Tunnel,
    outer: u64,
    inner: u64,
) {
    start_tunnel(pkt, tunnel, &layer_of_word(outer));
    if inner != 0 {
        add_inner_layer(pkt, tunnel, &layer_of_word(inner));
    }
}

/// Adds `layer`, found inside the tunnel's outermost one, as the general
/// way's `step_layer` does: its kind second, its id as the innermost one's,
/// and for an IP tunnel, the endpoints of the IP header that carries it.
#[inline(always)]
pub fn add_inner_layer<P: PacketBytes + ?Sized>(pkt: &P, tunnel: &mut Tunnel, layer: &Layer) {
    tunnel.layers[1] = layer.kind;
    tunnel.id = layer.id;
    if let Some((src, dst, family)) = endpoints_of(pkt, layer) {
        tunnel.outer_src = src;
        tunnel.outer_dst = dst;
        tunnel.outer_family = family;
    }
}

/// The tunnel program's shortcuts on the host, as the kernel composes
/// them: one layer at the frame's [`underlay`] with the common TCP frame
/// inside, or two, the second read where the first's carried frame
/// starts. The tunnel, the inner IP header's offset and the segment;
/// `None` where the general way must look.
pub fn shortcut_tunnel<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
) -> Option<(Tunnel, usize, CommonTcp)> {
    shortcut_tunnel_from(pkt, ports, underlay(pkt)?, true)
}

/// [`shortcut_tunnel`] for a packet that starts with its IP header
/// ([`ip_underlay`]): no tags, so no [`read_tagged_overlay`].
pub fn shortcut_tunnel_ip<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
) -> Option<(Tunnel, usize, CommonTcp)> {
    shortcut_tunnel_from(pkt, ports, ip_underlay(pkt), false)
}

fn shortcut_tunnel_from<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    start: LayerStart,
    ethernet: bool,
) -> Option<(Tunnel, usize, CommonTcp)> {
    // Not zeroed: `start_tunnel` writes every field.
    let mut tunnel = Tunnel {
        outer_src: [u64::MAX; 2],
        outer_dst: [u64::MAX; 2],
        id: u32::MAX,
        layers: [u8::MAX; MAX_ENCAP_DEPTH],
        outer_family: u8::MAX,
    };
    // The tunnel described from the layers' words, as the kernel describes
    // it on the way to its slow path.
    if ethernet && let Some(overlay) = read_tagged_overlay(pkt, ports, &start) {
        describe_layers(pkt, &mut tunnel, overlay.layer_word(start.offset), 0);
        return Some((tunnel, overlay.ip_offset, overlay.inner));
    }
    let first = read_layer(pkt, ports, &start)?;
    if let Some(inner) = carried_tcp(pkt, &first) {
        describe_layers(pkt, &mut tunnel, layer_word(&first), 0);
        return Some((tunnel, first.carried.offset, inner));
    }
    let second = read_layer(pkt, ports, &first.carried)?;
    let inner = carried_tcp(pkt, &second)?;
    describe_layers(pkt, &mut tunnel, layer_word(&first), layer_word(&second));
    Some((tunnel, second.carried.offset, inner))
}

/// The one layer of `kind` and `id` carried by the IPv4 header `ip`.
#[inline(always)]
fn tunnel_in_v4(ip: &[u8; IPV4_MIN_HLEN], kind: u8, id: u32) -> Tunnel {
    Tunnel {
        outer_src: Addr16::v4_mapped_halves([ip[12], ip[13], ip[14], ip[15]]),
        outer_dst: Addr16::v4_mapped_halves([ip[16], ip[17], ip[18], ip[19]]),
        id,
        layers: [kind, 0, 0],
        outer_family: 4,
    }
}

/// The one layer of `kind` and `id` carried by the IPv6 header `ip`.
#[inline(always)]
fn tunnel_in_v6(ip: &[u8; IPV6_HLEN], kind: u8, id: u32) -> Tunnel {
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    Tunnel {
        outer_src: Addr16(src).halves(),
        outer_dst: Addr16(dst).halves(),
        id,
        layers: [kind, 0, 0],
        outer_family: 6,
    }
}

/// The one tunnel layer [`read_common_other`] reads, at the outer
/// transport header `l4` of `protocol`, in an outer datagram that ends at
/// `limit`: its kind, id, the common TCP frame inside and that frame's IP
/// header offset. `None` where the general parser must look (another
/// protocol or port, IP options, a header cut short or inconsistent, an
/// inner frame that is not the common one).
#[inline(always)]
fn common_tunnel<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    protocol: u8,
    l4: usize,
    limit: usize,
) -> Option<(u8, u32, CommonTcp, usize)> {
    let (kind, id, (ethertype, offset), limit) = tunnel_header(pkt, ports, protocol, l4, limit)?;
    let (ethertype, ip_offset) = if ethertype == LINK {
        (be16(pkt.load::<2>(offset)?), offset + 2)
    } else {
        (ethertype, offset)
    };
    let inner = parse_common_ip(pkt, ethertype, ip_offset, limit)?;
    Some((kind, id, inner, ip_offset))
}

/// The tunnel header at the outer transport header `l4` of `protocol`, in
/// an outer datagram that ends at `limit`: its kind, id, where what it
/// carries starts (an EtherType and its header's offset, or `LINK` and the
/// offset of a carried Ethernet frame's EtherType field) and where that
/// must end (a UDP tunnel's datagram, or `limit`). `None` where the
/// general way must look: each check is the general parser's (`udp`,
/// `gre`, `step`), or a narrower one. Geneve's options are stepped over
/// by their length.
#[inline(always)]
fn tunnel_header<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
    protocol: u8,
    l4: usize,
    limit: usize,
) -> Option<(u8, u32, (u16, usize), usize)> {
    match protocol {
        ip_proto::UDP => {
            // The UDP header and the tunnel's, read at once.
            let head = pkt.load::<16>(l4)?;
            let kind = ports.kind_of(be16([head[2], head[3]]));
            let udp_end = l4 + be16([head[4], head[5]]) as usize;
            // Geneve's protocol: Ethernet, or (the tunnel program's) IP.
            let protocol = be16([head[10], head[11]]);
            let (header_read, options) = if kind == encap::VXLAN {
                (head[8] & 0x08 != 0, 0)
            } else {
                // Version 0; the options' length in 4-byte words.
                (
                    kind == encap::GENEVE
                        && head[8] >> 6 == 0
                        && matches!(protocol, ethertype::TEB | ethertype::IPV4 | ethertype::IPV6),
                    (head[8] & 0x3f) as usize * 4,
                )
            };
            let link = l4 + 16 + options;
            // Both headers in the datagram (as `udp` wants), and Geneve's
            // options too.
            if !header_read || udp_end < link || udp_end > limit {
                return None;
            }
            let vni = u32::from_be_bytes([0, head[12], head[13], head[14]]);
            let carried = if kind == encap::GENEVE && protocol != ethertype::TEB {
                (protocol, link)
            } else {
                (LINK, link + 12)
            };
            Some((kind, vni, carried, udp_end))
        }
        ip_proto::GRE => {
            let head = pkt.load::<4>(l4)?;
            let flags = be16([head[0], head[1]]);
            // Version 0, no routing: what `gre` follows.
            if flags & 0x4007 != 0 {
                return None;
            }
            let has_checksum = (flags >> 15) as usize;
            let has_key = (flags >> 13) as usize & 1;
            let has_sequence = (flags >> 12) as usize & 1;
            let id = if has_key != 0 {
                u32::from_be_bytes(pkt.load::<4>(l4 + 4 + 4 * has_checksum)?)
            } else {
                0
            };
            let at = l4 + 4 + 4 * (has_checksum + has_key + has_sequence);
            if at > limit {
                return None;
            }
            // What `gre` opens, and nothing else: an unknown protocol
            // would be read as what it says it is, and 0 as `LINK`, an
            // Ethernet frame (the fuzzer found a GRE header with protocol 0
            // followed by an EtherType read so, where the general way
            // calls it unsupported).
            let carried = match be16([head[2], head[3]]) {
                ethertype::TEB => (LINK, at + 12),
                protocol @ (ethertype::IPV4
                | ethertype::IPV6
                | ethertype::MPLS_UNICAST
                | ethertype::MPLS_MULTICAST) => (protocol, at),
                _ => return None,
            };
            Some((encap::GRE, id, carried, limit))
        }
        ip_proto::IPIP => Some((encap::IPIP, 0, (ethertype::IPV4, l4), limit)),
        ip_proto::IPV6 => Some((encap::IPIP, 0, (ethertype::IPV6, l4), limit)),
        _ => None,
    }
}

/// Whether the main programs hand `pkt` to their tunnel program: what
/// their `read_frame` answers, on the host. A frame with a TCP segment of
/// its own, or one the main shortcut reads inside its tunnel, stays; one
/// without TCP stays unless it may carry a tunnel ([`read_common_other`],
/// then [`may_carry_tunnel`] of the general parse). `teardown replay`
/// loads the replay program's tunnel program at the first frame this says
/// yes for: a capture without tunnels never pays for its verification.
pub fn hands_to_tunnel_program<P: PacketBytes + ?Sized>(pkt: &P, ports: &TunnelPorts) -> bool {
    if crate::parse::parse_common(pkt).is_some() {
        return false;
    }
    match read_common_other(pkt, ports) {
        Some(CommonOther::TaggedTcp { .. } | CommonOther::Overlay(_)) => false,
        Some(CommonOther::Plain { may_tunnel, .. }) => may_tunnel,
        Some(CommonOther::Layer { .. }) => true,
        None => {
            let parsed = crate::parse::parse(pkt);
            parsed.tcp().is_none() && may_carry_tunnel(pkt, &parsed, ports)
        }
    }
}

/// The common tunnelled frame [`read_common_other`] reads, if the frame is
/// one.
#[inline(always)]
pub fn parse_common_overlay<P: PacketBytes + ?Sized>(
    pkt: &P,
    ports: &TunnelPorts,
) -> Option<CommonOverlay> {
    match read_common_other(pkt, ports) {
        Some(CommonOther::Overlay(overlay)) => Some(overlay),
        _ => None,
    }
}

/// How many distinct tunnels the kernel's table holds: each (layers, id,
/// outer endpoints) gets an index the first time a connection is seen
/// through it, kept for the run. An overlay's tunnels are one per peer and
/// VNI; past this many, records say only that they were tunnelled.
pub const TUNNEL_CAPACITY: u32 = 65_536;

/// A record's reference to its tunnel, as [`crate::conn::Conn::tunnel`]
/// stores it: an index into the table of tunnels (1..[`TUNNEL_CAPACITY`]),
/// or, with [`TunnelRef::UNRECORDED`] set, only the innermost kind (the
/// table was full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelRef(pub u32);

impl TunnelRef {
    pub const NONE: TunnelRef = TunnelRef(0);
    /// Set when the table of tunnels was full: the low byte is the kind.
    pub const UNRECORDED: u32 = 1 << 23;

    #[inline(always)]
    pub fn to_bytes(self) -> [u8; 3] {
        let [a, b, c, _] = self.0.to_le_bytes();
        [a, b, c]
    }

    #[inline(always)]
    pub fn from_bytes(bytes: [u8; 3]) -> TunnelRef {
        TunnelRef(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]))
    }

    /// The index in the table of tunnels, if the tunnel was recorded.
    pub fn index(self) -> Option<u32> {
        (self.0 != 0 && self.0 & Self::UNRECORDED == 0).then_some(self.0)
    }

    /// The innermost kind of a tunnel that could not be recorded.
    pub fn unrecorded_kind(self) -> Option<u8> {
        (self.0 & Self::UNRECORDED != 0).then_some(self.0 as u8)
    }
}

const _: () = assert!(TUNNEL_CAPACITY < TunnelRef::UNRECORDED);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, no padding (size asserted), every bit pattern valid.
unsafe impl aya::Pod for Tunnel {}

#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for TunnelPorts {}

const _: () = assert!(core::mem::size_of::<Inner>() == 32);
const _: () = assert!(core::mem::size_of::<DecapState>() == 40 + 32 + 16 + 16);

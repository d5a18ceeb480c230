//! Decapsulation ([`decapsulate`]) on crafted frames: every encapsulation
//! and the nestings that occur in practice read exactly; every frame cut at
//! every offset; lengths and fields that lie; the depth limits; the
//! configurable VXLAN and Geneve ports; every single-byte mutation of every
//! crafted frame, with the common frame's shortcut (`parse_common`) and the
//! kernel's split path (`step_layer` + `enter_layer` + `Inner::reparse`)
//! held to the same answers.
//!
//! What a frame must decapsulate to is worked out here from how it was
//! crafted (the header sizes of each protocol, [`Built`]), never by running
//! the decapsulator a second time.
//!
//! The truncation contract, read from `tunnel.rs` and `parse.rs`: lengths
//! come from headers, never from the frame's own length, so
//!
//! * a frame cut anywhere after the inner TCP header (options included)
//!   decapsulates exactly as the whole frame;
//! * cut after the inner header's first 16 bytes ([`TCP_READABLE_LEN`]:
//!   ports, numbers, flags, window) but inside its options, it gives the
//!   same segment with `header_complete` false and no payload length, as
//!   the outer parser does for a plain frame;
//! * cut before the outermost layer can be recognised (inside the outer
//!   Ethernet header or VLAN tags, the outer IP header, or a UDP tunnel's
//!   UDP header, whose destination port and length say what it is), it is
//!   no encapsulation at all ([`Decap::None`]): the outer tallies count it
//!   as the outer parser reads it;
//! * anywhere else it is malformed: [`Decap::Malformed`], or an inner frame
//!   of class [`inner_class::MALFORMED`], with the layers opened so far a
//!   prefix of the whole frame's. One exception: cut inside a nested UDP
//!   tunnel's UDP header, the inner datagram is a UDP datagram that is not
//!   (yet) a tunnel, [`inner_class::OTHER`], as an outer one is `None`.

use teardown_common::addr::Addr16;
use teardown_common::counters::{
    Tallies, class, encap_slot, encap_tally, encap_tally_of, other_ip_tally, overlay_encap_tally,
    tally, tally_common, tally_tagged,
};
use teardown_common::craft::{self, Encap, Network, Spec, Transport as CraftTransport};
use teardown_common::flow::addresses_at;
use teardown_common::parse::{
    CommonTcp, ETH_HLEN, Fragment, IpVersion, MAX_INNER_START, MAX_VLAN_TAGS, Payload,
    TCP_READABLE_LEN, TcpSegment, VLAN_HLEN, ethertype, ip_proto, parse, parse_common, tcp_flags,
};
use teardown_common::tunnel::{
    self, CommonOther, Decap, DecapState, Inner, MAX_ENCAP_DEPTH, MAX_MPLS_LABELS, Tunnel,
    TunnelPorts, decapsulate, describe_layers, encap, hands_to_tunnel_program, inner_class,
    may_carry_tunnel, outcome, parse_common_overlay, read_common_other, read_tagged_overlay,
    shortcut_tunnel, underlay,
};

// The inner segment every crafted frame carries: values no header around
// it has, so a segment read from the wrong place shows.
const FLAGS: u8 = tcp_flags::PSH | tcp_flags::ACK;
const SRC_PORT: u16 = 40_123;
const DST_PORT: u16 = 8_443;
const SEQ: u32 = 0xdead_beef;
const ACK: u32 = 0x0102_0304;
const TCP_OPTIONS: u8 = 12;
const TCP_HEADER: usize = 20 + TCP_OPTIONS as usize;
const PAYLOAD: u16 = 37;
/// The window `craft::build` writes.
const WINDOW: u16 = 64_240;

const DEFAULT: TunnelPorts = TunnelPorts::DEFAULT;

/// A crafted frame and what it must decapsulate to, worked out from its
/// layout as it was wrapped.
#[derive(Clone, Debug)]
struct Built {
    name: String,
    frame: Vec<u8>,
    /// Kinds, outermost first.
    layers: Vec<u8>,
    /// The innermost layer's id.
    id: u32,
    /// The innermost IP tunnel's outer family (4, 6), 0 if none.
    outer_family: u8,
    ip_offset: usize,
    is_v6: bool,
    tcp_offset: usize,
    /// Whether a layer bounds the inner datagram. Every crafted layer ends
    /// where the frame ends, so the bound is the frame's length.
    bounded: bool,
    /// The shortest cut at which the outermost layer is recognised.
    recognised_at: usize,
    /// Offsets of the UDP headers of UDP tunnels, outermost first.
    udp_headers: Vec<usize>,
}

impl Built {
    fn headers_end(&self) -> usize {
        self.tcp_offset + TCP_HEADER
    }
}

fn inner_spec(v6: bool) -> Spec<'static> {
    let mut spec = if v6 {
        Spec::tcp_v6(FLAGS, PAYLOAD)
    } else {
        Spec::tcp_v4(FLAGS, PAYLOAD)
    };
    spec.transport = CraftTransport::Tcp {
        src_port: SRC_PORT,
        dst_port: DST_PORT,
        seq: SEQ,
        ack: ACK,
        flags: FLAGS,
        options_len: TCP_OPTIONS,
    };
    spec
}

/// The untagged Ethernet frame every tunnel carries.
fn plain(v6: bool) -> Built {
    let ip_header = if v6 { 40 } else { 20 };
    Built {
        name: if v6 { "tcp6" } else { "tcp4" }.to_string(),
        frame: craft::build(&inner_spec(v6)).to_vec(),
        layers: Vec::new(),
        id: 0,
        outer_family: 0,
        ip_offset: 14,
        is_v6: v6,
        tcp_offset: 14 + ip_header,
        bounded: false,
        recognised_at: 0,
        udp_headers: Vec::new(),
    }
}

fn family(v6: bool) -> u8 {
    if v6 { 6 } else { 4 }
}

fn ip_header(v6: bool) -> usize {
    if v6 { 40 } else { 20 }
}

/// `craft::wrap`, and where everything in the carried frame lands: layers
/// that carry a datagram drop the carried frame's Ethernet header (offset
/// 14 of the carried frame lands at the layer's payload), the others keep
/// it (offset 0 lands there).
fn wrap(carried: &Built, layer: Encap, vlans: &[(u16, u16)]) -> Built {
    let frame = craft::wrap(&carried.frame, &layer, vlans).to_vec();
    let tags = VLAN_HLEN * vlans.len();
    let carried_type = u16::from_be_bytes([carried.frame[12], carried.frame[13]]);
    // (kind, id, where the payload starts, whether it is a whole Ethernet
    // frame, outer family, recognised at, UDP header, bounds the datagram)
    let (kind, id, payload, ethernet, outer, recognised, udp, bounds) = match layer {
        Encap::Vxlan { vni, outer_v6, .. } => {
            let udp = 14 + tags + ip_header(outer_v6);
            let f = family(outer_v6);
            (
                encap::VXLAN,
                vni,
                udp + 16,
                true,
                f,
                udp + 8,
                Some(udp),
                true,
            )
        }
        Encap::Geneve {
            vni,
            options_len,
            ethernet,
            outer_v6,
        } => {
            let udp = 14 + tags + ip_header(outer_v6);
            let payload = udp + 16 + options_len as usize;
            let f = family(outer_v6);
            (
                encap::GENEVE,
                vni,
                payload,
                ethernet,
                f,
                udp + 8,
                Some(udp),
                true,
            )
        }
        Encap::Gre {
            key,
            checksum,
            sequence,
            ethernet,
            outer_v6,
        } => {
            let gre = 14 + tags + ip_header(outer_v6);
            let len = 4 + 4 * (checksum as usize + key.is_some() as usize + sequence as usize);
            let f = family(outer_v6);
            let id = key.unwrap_or(0);
            (encap::GRE, id, gre + len, ethernet, f, gre, None, true)
        }
        Encap::IpIp { outer_v6 } => {
            let start = 14 + tags + ip_header(outer_v6);
            let f = family(outer_v6);
            (encap::IPIP, 0, start, false, f, start, None, true)
        }
        Encap::Mpls { labels } => {
            let bottom = *labels.last().unwrap();
            let payload = 14 + tags + 4 * labels.len();
            (
                encap::MPLS,
                bottom,
                payload,
                false,
                0,
                14 + tags,
                None,
                false,
            )
        }
        Encap::Pppoe { session } => {
            let id = session as u32;
            (
                encap::PPPOE,
                id,
                14 + tags + 8,
                false,
                0,
                14 + tags,
                None,
                true,
            )
        }
        // Its EtherType after the tag stands for the carried frame's.
        Encap::VnTag { vif } => {
            let id = (vif & 0x3fff) as u32;
            (
                encap::VNTAG,
                id,
                14 + tags + 6,
                false,
                0,
                14 + tags,
                None,
                false,
            )
        }
        Encap::Pbb { isid } => {
            let id = isid & 0x00ff_ffff;
            (
                encap::PBB,
                id,
                14 + tags + 4,
                true,
                0,
                14 + tags,
                None,
                false,
            )
        }
        Encap::FabricPath => {
            assert!(vlans.is_empty(), "craft puts no tags before FabricPath");
            (encap::FABRICPATH, 0, 16, true, 0, 14, None, false)
        }
    };
    // What each layer can carry as a datagram (craft takes the carried
    // frame's EtherType and what follows it).
    let ip = carried_type == ethertype::IPV4 || carried_type == ethertype::IPV6;
    let takes = match layer {
        Encap::Gre {
            ethernet: false, ..
        } => ip || carried_type == ethertype::MPLS_UNICAST,
        Encap::VnTag { .. } => carried_type != ethertype::VLAN && carried_type != ethertype::QINQ,
        _ => ethernet || ip,
    };
    assert!(takes, "{:?} cannot carry {}", layer, carried.name);
    // Where byte `x` of the carried frame lands.
    let shift = if ethernet { payload } else { payload - 14 };
    finish(
        carried, frame, shift, kind, id, outer, recognised, udp, bounds,
    )
}

#[allow(
    clippy::too_many_arguments,
    reason = "one layer's facts, each named at the two call sites"
)]
fn finish(
    carried: &Built,
    frame: Vec<u8>,
    shift: usize,
    kind: u8,
    id: u32,
    outer: u8,
    recognised: usize,
    udp: Option<usize>,
    bounds: bool,
) -> Built {
    let mut layers = vec![kind];
    layers.extend(&carried.layers);
    let mut udp_headers: Vec<usize> = udp.into_iter().collect();
    udp_headers.extend(carried.udp_headers.iter().map(|at| at + shift));
    Built {
        name: format!("{}/{}", encap::name(kind), carried.name),
        frame,
        layers,
        id: if carried.layers.is_empty() {
            id
        } else {
            carried.id
        },
        outer_family: if carried.outer_family != 0 {
            carried.outer_family
        } else {
            outer
        },
        ip_offset: carried.ip_offset + shift,
        is_v6: carried.is_v6,
        tcp_offset: carried.tcp_offset + shift,
        bounded: carried.bounded || bounds,
        recognised_at: recognised,
        udp_headers,
    }
}

/// An MPLS pseudowire (which `craft::wrap` does not write): the label
/// stack, RFC 4385's control word (first nibble 0), then the whole
/// carried Ethernet frame.
fn pseudowire(carried: &Built, labels: &[u32], vlans: &[(u16, u16)]) -> Built {
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x22, 0x02, 0, 0, 0, 0, 0x21];
    for &(tpid, vid) in vlans {
        frame.extend(tpid.to_be_bytes());
        frame.extend(vid.to_be_bytes());
    }
    frame.extend(ethertype::MPLS_UNICAST.to_be_bytes());
    for (index, &label) in labels.iter().enumerate() {
        let bottom = (index + 1 == labels.len()) as u32;
        frame.extend(((label << 12) | (bottom << 8) | 255).to_be_bytes());
    }
    frame.extend([0x00, 0x00, 0x12, 0x34]); // control word, sequence 0x1234
    let shift = frame.len();
    frame.extend(&carried.frame);
    let tags = VLAN_HLEN * vlans.len();
    let bottom = *labels.last().unwrap();
    finish(
        carried,
        frame,
        shift,
        encap::MPLS,
        bottom,
        0,
        14 + tags,
        None,
        false,
    )
}

fn vxlan(carried: &Built, outer_v6: bool) -> Built {
    let layer = Encap::Vxlan {
        vni: 0x00ab_cdef,
        port: 4789,
        outer_v6,
    };
    wrap(carried, layer, &[])
}

fn geneve(carried: &Built, options_len: u8, ethernet: bool, outer_v6: bool) -> Built {
    let layer = Encap::Geneve {
        vni: 0x0012_3456,
        options_len,
        ethernet,
        outer_v6,
    };
    wrap(carried, layer, &[])
}

fn gre(carried: &Built, key: Option<u32>, checksum: bool, sequence: bool, ethernet: bool) -> Built {
    let layer = Encap::Gre {
        key,
        checksum,
        sequence,
        ethernet,
        outer_v6: false,
    };
    wrap(carried, layer, &[])
}

fn ipip(carried: &Built, outer_v6: bool) -> Built {
    wrap(carried, Encap::IpIp { outer_v6 }, &[])
}

fn mpls(carried: &Built, labels: &'static [u32], vlans: &[(u16, u16)]) -> Built {
    wrap(carried, Encap::Mpls { labels }, vlans)
}

fn pppoe(carried: &Built, vlans: &[(u16, u16)]) -> Built {
    wrap(carried, Encap::Pppoe { session: 0x1d2c }, vlans)
}

const VLAN: &[(u16, u16)] = &[(ethertype::VLAN, 100)];
const QINQ: &[(u16, u16)] = &[(ethertype::QINQ, 10), (ethertype::VLAN, 20)];
const EIGHT_LABELS: &[u32] = &[11, 12, 13, 14, 15, 16, 17, 0xf_ffff];

/// Every encapsulation, alone and in the nestings that occur in practice.
fn catalogue() -> Vec<Built> {
    let mut all = Vec::new();
    for v6 in [false, true] {
        let tcp = plain(v6);
        // UDP tunnels.
        for outer_v6 in [false, true] {
            all.push(vxlan(&tcp, outer_v6));
            let flannel = Encap::Vxlan {
                vni: 1,
                port: 8472,
                outer_v6,
            };
            all.push(wrap(&tcp, flannel, &[]));
            for options in [0, 4, 8, 252] {
                all.push(geneve(&tcp, options, true, outer_v6));
                all.push(geneve(&tcp, options, false, outer_v6));
            }
        }
        // GRE, every flag combination, every payload, both outer families.
        for outer_v6 in [false, true] {
            for bits in 0..8u8 {
                for payload in ["ip", "teb", "mpls"] {
                    let layer = Encap::Gre {
                        key: (bits & 1 != 0).then_some(0xfeed_f00d),
                        checksum: bits & 2 != 0,
                        sequence: bits & 4 != 0,
                        ethernet: payload == "teb",
                        outer_v6,
                    };
                    let carried = if payload == "mpls" {
                        mpls(&tcp, &[300, 301], &[])
                    } else {
                        tcp.clone()
                    };
                    all.push(wrap(&carried, layer, &[]));
                }
            }
        }
        // IP in IP: 4in4, 6in4, 4in6, 6in6.
        all.push(ipip(&tcp, false));
        all.push(ipip(&tcp, true));
        // MPLS: one label, a full stack, in a VLAN, in QinQ; a pseudowire.
        all.push(mpls(&tcp, &[16], &[]));
        all.push(mpls(&tcp, &[1000, 2000], &[]));
        // Traffic engineering's, the transport's and the service's.
        all.push(mpls(&tcp, &[24001, 1000, 2000], &[]));
        // Tunnels on a tagged underlay.
        for outer_v6 in [false, true] {
            let vxlan = Encap::Vxlan {
                vni: 77,
                port: 4789,
                outer_v6,
            };
            all.push(wrap(&tcp, vxlan, VLAN));
            let gre = Encap::Gre {
                key: Some(5),
                checksum: false,
                sequence: false,
                ethernet: false,
                outer_v6,
            };
            all.push(wrap(&tcp, gre, VLAN));
            all.push(wrap(&tcp, Encap::IpIp { outer_v6 }, VLAN));
            all.push(wrap(&tcp, vxlan, QINQ));
            all.push(wrap(&tcp, gre, QINQ));
            all.push(wrap(&tcp, Encap::IpIp { outer_v6 }, QINQ));
        }
        all.push(mpls(&tcp, EIGHT_LABELS, &[]));
        all.push(mpls(&tcp, &[1000, 2000], VLAN));
        all.push(mpls(&tcp, &[1000], QINQ));
        all.push(pseudowire(&tcp, &[77], &[]));
        all.push(pseudowire(&tcp, &[77, 78, 79], VLAN));
        // PPPoE, also under a VLAN and QinQ.
        all.push(pppoe(&tcp, &[]));
        all.push(pppoe(&tcp, VLAN));
        all.push(pppoe(&tcp, QINQ));
        // Link-layer shims.
        all.push(wrap(&tcp, Encap::VnTag { vif: 0x3abc }, &[]));
        all.push(wrap(&tcp, Encap::VnTag { vif: 0x0123 }, VLAN));
        all.push(wrap(&tcp, Encap::Pbb { isid: 0x00fe_dcba }, &[]));
        // 802.1ah as it is sent: behind the backbone's B-TAG (802.1ad).
        all.push(wrap(
            &tcp,
            Encap::Pbb { isid: 0x0000_0042 },
            &[(ethertype::QINQ, 7)],
        ));
        all.push(wrap(&tcp, Encap::FabricPath, &[]));
        // Carried Ethernet frames with tags of their own.
        let mut tagged = plain(v6);
        let mut spec = inner_spec(v6);
        spec.vlans = QINQ;
        tagged.frame = craft::build(&spec).to_vec();
        tagged.ip_offset += 8;
        tagged.tcp_offset += 8;
        all.push(vxlan(&tagged, false));
        all.push(gre(&tagged, Some(9), false, false, true));
        // Nestings.
        all.push(vxlan(&mpls(&tcp, &[500], &[]), false));
        all.push(vxlan(&pppoe(&tcp, QINQ), true));
        all.push(geneve(&pseudowire(&tcp, &[5, 6], &[]), 8, true, false));
        all.push(gre(&vxlan(&tcp, false), Some(3), true, true, false));
        all.push(ipip(&gre(&tcp, None, false, false, false), true));
        all.push(vxlan(&vxlan(&tcp, true), false));
        all.push(vxlan(&geneve(&vxlan(&tcp, false), 4, false, true), false));
        all.push(gre(&pppoe(&tcp, QINQ), Some(1), false, false, true));
        all.push(gre(
            &vxlan(&mpls(&tcp, &[7], &[]), false),
            Some(1),
            false,
            false,
            true,
        ));
        all.push(vxlan(&wrap(&tcp, Encap::VnTag { vif: 5 }, &[]), true));
        all.push(geneve(&wrap(&tcp, Encap::FabricPath, &[]), 0, true, false));
        all.push(gre(&ipip(&tcp, true), Some(2), false, true, false));
        all.push(wrap(
            &vxlan(&wrap(&tcp, Encap::Pbb { isid: 3 }, &[]), false),
            Encap::VnTag { vif: 4 },
            &[],
        ));
    }
    all
}

fn segment(tcp_offset: usize, complete: bool) -> TcpSegment {
    TcpSegment {
        flags: FLAGS,
        header_len: TCP_HEADER as u8,
        header_complete: complete,
        offset: tcp_offset as u16,
        src_port: SRC_PORT,
        dst_port: DST_PORT,
        window: WINDOW,
        seq: SEQ,
        ack: ACK,
        payload_len: if complete { PAYLOAD as u32 } else { 0 },
    }
}

fn tunnel_of(layers: &[u8], id: u32, outer_family: u8) -> Tunnel {
    let (outer_src, outer_dst) = match outer_family {
        4 => (
            Addr16::v4_mapped_halves(craft::TUNNEL_A_V4),
            Addr16::v4_mapped_halves(craft::TUNNEL_B_V4),
        ),
        6 => (
            Addr16(craft::TUNNEL_A_V6).halves(),
            Addr16(craft::TUNNEL_B_V6).halves(),
        ),
        _ => ([0; 2], [0; 2]),
    };
    let mut kinds = [0; MAX_ENCAP_DEPTH];
    kinds[..layers.len()].copy_from_slice(layers);
    Tunnel {
        outer_src,
        outer_dst,
        id,
        layers: kinds,
        outer_family,
    }
}

/// What the whole frame must decapsulate to.
fn expected(built: &Built) -> Decap {
    Decap::Inner {
        tunnel: tunnel_of(&built.layers, built.id, built.outer_family),
        inner: Inner {
            segment: segment(built.tcp_offset, true),
            ip_offset: built.ip_offset as u16,
            is_v6: built.is_v6 as u8,
            class: inner_class::TCP,
            limit: if built.bounded {
                built.frame.len() as u32
            } else {
                u32::MAX
            },
        },
    }
}

fn set16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn get16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Whether the outcome counts as malformed: the layer itself, or the
/// frame inside it.
fn is_malformed(decap: &Decap) -> bool {
    match decap {
        Decap::Malformed { .. } => true,
        Decap::Inner { inner, .. } => inner.class == inner_class::MALFORMED,
        _ => false,
    }
}

fn layers_of(decap: &Decap) -> Vec<u8> {
    decap.tunnel().map_or(Vec::new(), |tunnel| {
        tunnel
            .layers
            .iter()
            .copied()
            .take_while(|&kind| kind != 0)
            .collect()
    })
}

/// The kernel's way through the same frame: `begin`, then each layer in two
/// halves, without the segment copy, the segment read again where it lies.
/// Returns the outcome and the state.
fn kernel_path(frame: &[u8], ports: &TunnelPorts) -> (u8, DecapState) {
    let mut state = DecapState::default();
    let result = tunnel::decapsulate_in_place(&mut state, ports, |state, depth| {
        if depth == 0 && !state.begin(frame) {
            return outcome::NONE;
        }
        let stepped = tunnel::step_layer(frame, state, depth, ports);
        if stepped != outcome::OPENED {
            return stepped;
        }
        tunnel::enter_layer::<_, false>(frame, state)
    });
    (result, state)
}

/// What holds of any frame's decapsulation, whatever its bytes: nothing
/// reported outside the frame, an outcome consistent with the outer parse
/// and with itself, the kernel's split path and the common frame's
/// shortcut agreeing with it. Panics (with `context`) otherwise.
fn check_invariants(
    frame: &[u8],
    decap: &Decap,
    ports: &TunnelPorts,
    context: &dyn Fn() -> String,
) {
    let parsed = parse(frame);

    // The kernel asks the tunnel program only about frames the cheap test
    // lets through: it must let through every frame with a layer to open.
    if !matches!(decap, Decap::None) && parsed.tcp().is_none() {
        assert!(
            may_carry_tunnel(frame, &parsed, ports),
            "{}: decapsulated, but the kernel would not have asked: {parsed:?}",
            context()
        );
    }

    // The common frame's shortcut: where it answers, the frame is a plain
    // TCP segment the parser reads the same way, with no tunnel to open.
    if let Some(common) = parse_common(frame) {
        let Some((ip, segment)) = parsed.tcp() else {
            panic!("{}: shortcut read {common:?}, parser {parsed:?}", context());
        };
        assert_eq!(
            (
                parsed.vlan_tags,
                ip.version,
                ip.offset as usize,
                ip.fragment,
                *segment
            ),
            (
                0,
                common.version,
                CommonTcp::IP_OFFSET,
                Fragment::Whole,
                common.segment
            ),
            "{}",
            context()
        );
        assert_eq!(tally(&parsed), tally_common(&common), "{}", context());
        assert_eq!(*decap, Decap::None, "{}: a common frame opened", context());
    }

    // The common frame without TCP: where the shortcut calls it plain, the
    // general parser finds no TCP, tallies it the same, and the kernel's
    // cheap test says the same of it; a frame it says carries no tunnel
    // has none.
    let other = read_common_other(frame, ports);
    if let Some(CommonOther::TaggedTcp { ip_offset, inner }) = other {
        let Some((ip, segment)) = parsed.tcp() else {
            panic!(
                "{}: tagged TCP read {inner:?}, parser {parsed:?}",
                context()
            );
        };
        assert_ne!(parsed.vlan_tags, 0, "{}: tagged TCP untagged", context());
        assert_eq!(
            (ip.version, ip.offset as usize, ip.fragment, *segment),
            (inner.version, ip_offset, Fragment::Whole, inner.segment),
            "{}: tagged TCP",
            context()
        );
        assert_eq!(tally(&parsed), tally_tagged(&inner), "{}", context());
        assert_eq!(*decap, Decap::None, "{}: tagged TCP opened", context());
    }
    if let Some(CommonOther::Plain {
        v6,
        tagged,
        may_tunnel,
    }) = other
    {
        assert!(parsed.tcp().is_none(), "{}: plain, but TCP", context());
        assert_eq!(
            tally(&parsed),
            other_ip_tally(v6, tagged),
            "{}: plain tally",
            context()
        );
        assert_eq!(
            may_tunnel,
            may_carry_tunnel(frame, &parsed, ports),
            "{}: plain frame's tunnel question",
            context()
        );
        if !may_tunnel {
            assert_eq!(*decap, Decap::None, "{}: plain frame opened", context());
        }
    }

    // An untagged tunnel layer the main shortcut read with no common TCP
    // frame inside: the kernel hands its carried frame to the tunnel
    // program, which reads it straight away (`track_nested`), where its own
    // shortcut would first read the same layer (`read_layer` at the frame's
    // underlay) and find no common TCP frame in it.
    if let Some(CommonOther::Layer { word, carried }) = other {
        assert!(parsed.tcp().is_none(), "{}: a layer, but TCP", context());
        assert_eq!(
            tally(&parsed),
            other_ip_tally(tunnel::layer_of_word(word).outer_v6, false),
            "{}: a layer's tally",
            context()
        );
        assert!(
            may_carry_tunnel(frame, &parsed, ports),
            "{}: a layer read, but not handed over",
            context()
        );
        let first = underlay(frame).and_then(|start| tunnel::read_layer(frame, ports, &start));
        assert_eq!(
            first.map(|layer| (tunnel::layer_word(&layer), layer.carried)),
            Some((word, carried)),
            "{}: the main shortcut's layer against the tunnel program's",
            context()
        );
        assert!(
            first.is_some_and(|layer| tunnel::carried_tcp(frame, &layer).is_none()),
            "{}: a layer handed over with the common TCP frame inside",
            context()
        );
    }

    // The main programs' tunnel shortcut: where it answers, the
    // decapsulator finds the same tunnel and the same inner segment, and
    // the tallies are the same.
    if let Some(overlay) = parse_common_overlay(frame, ports) {
        let read = (overlay.tunnel, overlay.ip_offset, overlay.inner);
        assert_shortcut_agrees("overlay", read, decap, context);
        // The kernel keeps the layer as a word, and describes the tunnel
        // from it only on the way to its slow path: the same tunnel.
        let mut described = Tunnel::default();
        describe_layers(frame, &mut described, overlay.layer_word(ETH_HLEN), 0);
        assert_eq!(
            described,
            overlay.tunnel,
            "{}: the overlay described from its word",
            context()
        );
        assert_eq!(
            tally(&parsed),
            other_ip_tally(overlay.tunnel.outer_family == 6, false),
            "{}",
            context()
        );
    }

    // The tunnel program's shortcuts (one layer, or two), as the kernel
    // composes them: where they answer, the main program hands the frame
    // over, and the decapsulator finds the same.
    if let Some(read) = shortcut_tunnel(frame, ports) {
        assert!(
            may_carry_tunnel(frame, &parsed, ports),
            "{}: the tunnel program's shortcut read {read:?}, but the frame is not handed over",
            context()
        );
        assert_shortcut_agrees("tunnel program's", read, decap, context);
    }

    // The kernel and the host go the same way.
    let (kernel_outcome, state) = kernel_path(frame, ports);
    let host_outcome = match decap {
        Decap::None => outcome::NONE,
        Decap::Inner { .. } => outcome::INNER,
        Decap::TooDeep { .. } => outcome::TOO_DEEP,
        Decap::Malformed { .. } => outcome::MALFORMED,
        Decap::Unsupported { .. } => outcome::UNSUPPORTED,
    };
    assert_eq!(kernel_outcome, host_outcome, "{}: {decap:?}", context());

    let Some(tunnel) = decap.tunnel() else {
        assert_eq!(encap_tally(decap), None);
        return;
    };
    assert_eq!(state.tunnel, *tunnel, "{}: kernel's tunnel", context());

    // Only frames the kernel hands to the tunnel programs: a non-IP
    // payload, or an IP transport other than TCP.
    let decoded = class::decode(tally(&parsed).frame_class as usize);
    assert!(
        decoded.kind == class::NON_IP
            || decoded
                .ip
                .is_some_and(|(_, _, transport)| transport == class::OTHER_TRANSPORT),
        "{}: opened a frame of class {decoded:?}: {decap:?}",
        context()
    );

    // The layers: 1 to MAX_ENCAP_DEPTH known kinds, then zeros.
    let depth = tunnel.depth();
    assert!(
        (1..=MAX_ENCAP_DEPTH).contains(&depth),
        "{}: {decap:?}",
        context()
    );
    assert!(
        tunnel.layers[depth..].iter().all(|&kind| kind == 0),
        "{}",
        context()
    );
    assert!(
        tunnel.layers[..depth]
            .iter()
            .all(|&kind| kind != 0 && (kind as usize) < encap::COUNT),
        "{}: {decap:?}",
        context()
    );
    assert!(matches!(tunnel.outer_family, 0 | 4 | 6), "{}", context());
    if tunnel.outer_family == 0 {
        assert_eq!((tunnel.outer_src, tunnel.outer_dst), ([0; 2], [0; 2]));
    }

    let tallied = encap_tally(decap).expect("a tunnel is tallied");
    assert_eq!(tallied.layers, tunnel.layers);
    // The kernel tallies from its own state, without the segment copy: the
    // same tally (a segment it did not copy is not thereby cut short).
    assert_eq!(
        encap_tally_of(kernel_outcome, &state.tunnel, &state.inner),
        Some(tallied),
        "{}: kernel's tally",
        context()
    );
    let slot = tallied.outcome as usize;

    let Decap::Inner { inner, .. } = decap else {
        let expected_slot = match decap {
            Decap::Malformed { .. } => encap_slot::MALFORMED,
            Decap::Unsupported { .. } => encap_slot::UNSUPPORTED,
            _ => encap_slot::TOO_DEEP,
        };
        assert_eq!(slot, expected_slot, "{}", context());
        return;
    };
    // Every layer of an opened frame was opened: an IP tunnel's endpoints
    // are known exactly when there is one.
    let ip_tunnel = tunnel.layers.iter().any(|&kind| encap::is_ip_tunnel(kind));
    assert_eq!(
        ip_tunnel,
        tunnel.outer_family != 0,
        "{}: {decap:?}",
        context()
    );
    assert_eq!(
        (
            state.inner.class,
            state.inner.ip_offset,
            state.inner.is_v6,
            state.inner.limit
        ),
        (inner.class, inner.ip_offset, inner.is_v6, inner.limit),
        "{}: kernel's inner frame",
        context()
    );
    let expected_slot = match inner.class {
        inner_class::TCP => encap_slot::TCP,
        inner_class::OTHER => encap_slot::OTHER,
        inner_class::MALFORMED => encap_slot::MALFORMED,
        inner_class::TOO_DEEP => encap_slot::TOO_DEEP,
        other => panic!("{}: inner class {other}", context()),
    };
    assert_eq!(slot, expected_slot, "{}", context());
    if inner.class != inner_class::TCP {
        return;
    }

    // A TCP segment inside: within the frame, within its datagram, within
    // what carries it, and read again where it lies as the kernel does.
    let segment = inner.segment;
    let ip_offset = inner.ip_offset as usize;
    let offset = segment.offset as usize;
    let ip_header = if inner.is_v6 != 0 { 40 } else { 20 };
    assert!(
        ip_offset <= MAX_INNER_START + 2 + MAX_VLAN_TAGS * VLAN_HLEN,
        "{}: inner IP header at {ip_offset}",
        context()
    );
    assert!(offset >= ip_offset + ip_header, "{}: {decap:?}", context());
    assert!(
        offset + TCP_READABLE_LEN <= frame.len(),
        "{}: {decap:?}",
        context()
    );
    assert!((20..=60).contains(&segment.header_len), "{}", context());
    if segment.header_complete {
        assert!(
            offset + segment.header_len as usize <= frame.len(),
            "{}",
            context()
        );
        if inner.limit != u32::MAX {
            let end = offset + segment.header_len as usize + segment.payload_len as usize;
            assert!(
                end <= inner.limit as usize,
                "{}: datagram past its carrier: {decap:?}",
                context()
            );
        }
        // Whatever lies between, a whole outer IP datagram bounds it too:
        // a bound from the outer parser, independent of the layers' own.
        if let Payload::Ip(outer) = parsed.payload
            && outer.fragment == Fragment::Whole
        {
            let end = offset + segment.header_len as usize + segment.payload_len as usize;
            assert!(
                end <= outer.end as usize,
                "{}: datagram past the outer one: {decap:?}",
                context()
            );
        }
    } else {
        assert_eq!(segment.payload_len, 0, "{}", context());
    }
    assert_eq!(tallied.incomplete_tcp, !segment.header_complete as u8);
    assert!(
        addresses_at(frame, ip_offset, inner.is_v6 != 0).is_some(),
        "{}: addresses outside the frame",
        context()
    );
    assert_eq!(
        inner.reparse(frame),
        Some(segment),
        "{}: read again",
        context()
    );
    assert_eq!(
        state.inner.reparse(frame),
        Some(segment),
        "{}: kernel",
        context()
    );
}

// ---------------------------------------------------------------------------
// The frames themselves.

/// The crafter's output, checked against the protocols' layouts at the
/// fields the decapsulator reads, so the other tests stand on frames that
/// are what they say.
#[test]
fn crafted_frames_have_the_protocols_layouts() {
    let tcp = plain(false);
    // The inner frame: Ethernet, IPv4 (total length), TCP.
    assert_eq!(get16(&tcp.frame, 12), 0x0800);
    assert_eq!(
        get16(&tcp.frame, 16) as usize,
        20 + TCP_HEADER + PAYLOAD as usize
    );
    assert_eq!(tcp.frame.len(), 14 + 20 + TCP_HEADER + PAYLOAD as usize);
    assert_eq!(get16(&tcp.frame, 34), SRC_PORT);
    assert_eq!(tcp.frame[46] >> 4, (TCP_HEADER / 4) as u8);

    // VXLAN (RFC 7348): UDP to 4789, length 8 + 8 + the frame; I flag; VNI.
    let frame = vxlan(&tcp, false).frame;
    assert_eq!(get16(&frame, 12), 0x0800);
    assert_eq!(frame[14 + 9], ip_proto::UDP);
    assert_eq!(get16(&frame, 16) as usize, frame.len() - 14);
    assert_eq!(get16(&frame, 36), 4789);
    assert_eq!(get16(&frame, 38) as usize, 16 + tcp.frame.len());
    assert_eq!(frame[42], 0x08);
    assert_eq!(&frame[46..49], &[0xab, 0xcd, 0xef]);
    assert_eq!(&frame[50..], &tcp.frame[..]);

    // Geneve (RFC 8926): options length in words, protocol, VNI, options.
    let frame = geneve(&tcp, 8, false, true).frame;
    assert_eq!(get16(&frame, 12), 0x86dd);
    assert_eq!(frame[14 + 6], ip_proto::UDP);
    assert_eq!(get16(&frame, 18) as usize, frame.len() - 54);
    assert_eq!(get16(&frame, 56), 6081);
    assert_eq!(frame[62], 2);
    assert_eq!(get16(&frame, 64), 0x0800);
    assert_eq!(&frame[66..69], &[0x12, 0x34, 0x56]);
    assert_eq!(&frame[78..], &tcp.frame[14..]);

    // GRE (RFC 2784, 2890) with C, K and S: checksum, key, sequence.
    let frame = gre(&tcp, Some(0x0a0b_0c0d), true, true, false).frame;
    assert_eq!(frame[14 + 9], ip_proto::GRE);
    assert_eq!(get16(&frame, 34), 0xb000);
    assert_eq!(get16(&frame, 36), 0x0800);
    assert_eq!(&frame[42..46], &[0x0a, 0x0b, 0x0c, 0x0d]);
    assert_eq!(&frame[50..], &tcp.frame[14..]);

    // MPLS (RFC 3032): the bottom-of-stack bit on the last label only.
    let frame = mpls(&tcp, &[1, 2, 3], VLAN).frame;
    assert_eq!(get16(&frame, 12), ethertype::VLAN);
    assert_eq!(get16(&frame, 16), 0x8847);
    for (index, at) in [18, 22, 26].into_iter().enumerate() {
        let entry = u32::from_be_bytes(frame[at..at + 4].try_into().unwrap());
        assert_eq!(entry >> 12, index as u32 + 1);
        assert_eq!(entry >> 8 & 1, (index == 2) as u32);
    }
    assert_eq!(&frame[30..], &tcp.frame[14..]);

    // PPPoE session (RFC 2516): version/type, code, session, length from
    // the PPP protocol on, protocol 0x0021 (IPv4), 0x0057 (IPv6).
    let frame = pppoe(&tcp, QINQ).frame;
    assert_eq!(get16(&frame, 20), 0x8864);
    assert_eq!(&frame[22..24], &[0x11, 0]);
    assert_eq!(get16(&frame, 24), 0x1d2c);
    assert_eq!(get16(&frame, 26) as usize, frame.len() - 28);
    assert_eq!(get16(&frame, 28), 0x0021);
    assert_eq!(get16(&pppoe(&plain(true), &[]).frame, 20), 0x0057);

    // 802.1ah: I-TAG with the I-SID, then the customer's frame whole.
    let frame = wrap(&tcp, Encap::Pbb { isid: 0x00fe_dcba }, &[]).frame;
    assert_eq!(get16(&frame, 12), 0x88e7);
    assert_eq!(&frame[15..18], &[0xfe, 0xdc, 0xba]);
    assert_eq!(&frame[18..], &tcp.frame[..]);

    // VN-Tag: the tag, then the carried frame's EtherType and datagram.
    let frame = wrap(&tcp, Encap::VnTag { vif: 0x3abc }, &[]).frame;
    assert_eq!(get16(&frame, 12), 0x8926);
    assert_eq!(get16(&frame, 14) & 0x3fff, 0x3abc);
    assert_eq!(get16(&frame, 18), 0x0800);
    assert_eq!(&frame[20..], &tcp.frame[14..]);

    // FabricPath: the 4-byte tag after the outer addresses, then the frame.
    let frame = wrap(&tcp, Encap::FabricPath, &[]).frame;
    assert_eq!(get16(&frame, 12), 0x8903);
    assert_eq!(&frame[16..], &tcp.frame[..]);
}

/// Every encapsulation and nesting decapsulates to the carried segment:
/// 4-tuple, flags, numbers, lengths, the layers, the innermost id and the
/// tunnel's outer endpoints exactly. The common frame's shortcut declines
/// every one of them, and the outer parser finds no TCP in them.
#[test]
fn every_encapsulation_is_read_exactly() {
    let all = catalogue();
    for built in &all {
        let decap = decapsulate(&built.frame[..], &DEFAULT);
        assert_eq!(decap, expected(built), "{}", built.name);
        let Decap::Inner { inner, .. } = decap else {
            unreachable!()
        };
        let (src, dst) = addresses_at(&built.frame[..], built.ip_offset, built.is_v6).unwrap();
        let (client, server) = if built.is_v6 {
            (Addr16(craft::CLIENT_V6), Addr16(craft::SERVER_V6))
        } else {
            (
                Addr16::v4_mapped(craft::CLIENT_V4),
                Addr16::v4_mapped(craft::SERVER_V4),
            )
        };
        assert_eq!((src, dst), (client, server), "{}", built.name);
        assert_eq!(inner.reparse(&built.frame[..]), Some(inner.segment));
        assert_eq!(parse_common(&built.frame[..]), None, "{}", built.name);
        assert!(parse(&built.frame[..]).tcp().is_none(), "{}", built.name);
        check_invariants(&built.frame, &decap, &DEFAULT, &|| built.name.clone());
    }
    // Each kind, as the outermost layer and inside another.
    for kind in 1..encap::COUNT as u8 {
        assert!(all.iter().any(|built| built.layers[0] == kind), "{kind}");
        assert!(
            all.iter().any(|built| built.layers[1..].contains(&kind)),
            "{kind}"
        );
    }
    assert!(
        all.iter()
            .any(|built| built.layers.len() == MAX_ENCAP_DEPTH)
    );
}

/// What a tunnel shortcut read (its tunnel, the inner IP header's offset,
/// the inner segment) is what the decapsulator found, and counts as it
/// does: one layer of the tunnel's kind, a whole TCP segment inside.
fn assert_shortcut_agrees(
    which: &str,
    (tunnel, ip_offset, inner_tcp): (Tunnel, usize, CommonTcp),
    decap: &Decap,
    context: &dyn Fn() -> String,
) {
    let Decap::Inner {
        tunnel: found,
        inner,
    } = decap
    else {
        panic!(
            "{}: {which} shortcut read {tunnel:?}, decapsulator {decap:?}",
            context()
        );
    };
    assert_eq!(
        (
            *found,
            inner.class,
            inner.ip_offset as usize,
            inner.is_v6 != 0,
            inner.segment
        ),
        (
            tunnel,
            inner_class::TCP,
            ip_offset,
            inner_tcp.version == IpVersion::V6,
            inner_tcp.segment
        ),
        "{}: {which} shortcut",
        context()
    );
    assert_eq!(
        encap_tally(decap),
        Some(overlay_encap_tally(tunnel.layers)),
        "{}: {which} shortcut's tally",
        context()
    );
}

/// Cut at every offset: the whole frame's answer once the inner TCP header
/// is in; the flags (header incomplete, no payload) once its first 16 bytes
/// are; before that no TCP, and either no encapsulation (before the
/// outermost layer is recognisable) or a malformed one, whose layers are a
/// prefix of the whole frame's and only grow with the cut.
/// Runs a shortcut over the catalogue: it must answer exactly for the
/// frames `expected` picks, and then read what was built (the inner TCP
/// header's and IP header's offsets, the id, the innermost kind). Returns
/// the names of the frames it answered for.
fn shortcut_answers(
    read: impl Fn(&[u8]) -> Option<(Tunnel, usize, CommonTcp)>,
    expected: impl Fn(&Built, &[u8]) -> bool,
) -> Vec<String> {
    let mut answered = Vec::new();
    for built in catalogue() {
        let frame = built.frame.as_slice();
        let read = read(frame);
        assert_eq!(
            read.is_some(),
            expected(&built, frame),
            "{}: {read:?}",
            built.name
        );
        if let Some((tunnel, ip_offset, inner)) = read {
            assert_eq!(
                (
                    inner.segment.offset as usize,
                    ip_offset,
                    tunnel.id,
                    tunnel.innermost(),
                    tunnel.outer_family
                ),
                (
                    built.tcp_offset,
                    built.ip_offset,
                    built.id,
                    built.layers[0],
                    built.outer_family
                ),
                "{}",
                built.name
            );
            answered.push(built.name);
        }
    }
    answered
}

/// The main programs' tunnel shortcut answers for the frames it is for
/// (one VXLAN, Geneve, GRE or IP-in-IP layer over untagged IPv4 or IPv6,
/// the common TCP frame inside, untagged if it is an Ethernet frame): the
/// untagged one-layer IP tunnels the tunnel program's shortcut reads too,
/// and no other crafted frame. The kernel's
/// fast way for tunnels is taken where it should be, and
/// `check_invariants` holds it to the decapsulator's answer there.
#[test]
fn the_tunnel_shortcut_answers_for_common_tunnelled_frames_only() {
    let answered = shortcut_answers(
        |frame| {
            parse_common_overlay(frame, &DEFAULT)
                .map(|overlay| (overlay.tunnel, overlay.ip_offset, overlay.inner))
        },
        |built, frame| {
            let tagged = matches!(
                u16::from_be_bytes([frame[12], frame[13]]),
                ethertype::VLAN | ethertype::QINQ
            );
            built.layers.len() == 1
                && !tagged
                && matches!(
                    built.layers[0],
                    encap::VXLAN | encap::GENEVE | encap::GRE | encap::IPIP
                )
                && shortcut_tunnel(frame, &DEFAULT).is_some()
        },
    );
    // Around IPv4 and IPv6 each, over IPv4 and IPv6 each: VXLAN on both
    // default ports, Geneve without options, GRE with every combination
    // of its 3 optional fields carrying IP and Ethernet, IP-in-IP (40);
    // Geneve with 4, 8 and 252 bytes of options carrying Ethernet (6),
    // and with 0, 4, 8 and 252 carrying IP (8).
    assert_eq!(answered.len(), 2 * (40 + 6 + 8), "{answered:?}");
    // Tunnels off, or the port not configured: no answer.
    let vxlan = vxlan4();
    assert!(parse_common_overlay(vxlan.frame.as_slice(), &DEFAULT).is_some());
    assert_eq!(
        parse_common_overlay(vxlan.frame.as_slice(), &TunnelPorts::OFF),
        None
    );
    let elsewhere = TunnelPorts {
        vxlan: [4790, 0, 0, 0],
        ..DEFAULT
    };
    assert_eq!(
        parse_common_overlay(vxlan.frame.as_slice(), &elsewhere),
        None
    );
}

/// The kernel's shortcuts count a tunnelled segment with
/// `Tallies::record_overlay`, which adds what the general way's
/// `record_encap` adds for the same layers, for any layers (out-of-range
/// kinds included).
#[test]
fn a_shortcut_counts_a_tunnelled_segment_as_the_general_way() {
    let kinds = (0..=encap::COUNT as u8 + 1).chain([u8::MAX]);
    for first in kinds.clone() {
        for second in kinds.clone() {
            for third in [0, encap::MPLS, encap::VXLAN, encap::COUNT as u8, u8::MAX] {
                let layers = [first, second, third];
                let mut quick = Tallies::default();
                quick.record_overlay(layers);
                let mut general = Tallies::default();
                general.record_encap(&overlay_encap_tally(layers));
                assert_eq!(quick, general, "{layers:?}");
            }
        }
    }
}

/// An IP tunnel right after the Ethernet header whose carried frame is
/// not the common TCP frame: the main shortcut reads that layer and hands
/// it over (`CommonOther::Layer`), so the tunnel program reads only what
/// it carries, exactly where its own shortcut would have read the layer
/// and found no common TCP frame in it. (`check_invariants` holds each
/// handed layer to the tunnel program's own reading.)
#[test]
fn the_main_shortcut_hands_an_untagged_outer_layer_over() {
    let mut handed = Vec::new();
    for built in catalogue() {
        let frame = built.frame.as_slice();
        let Some(start) = underlay(frame).filter(|start| {
            start.offset == ETH_HLEN && matches!(start.ethertype, ethertype::IPV4 | ethertype::IPV6)
        }) else {
            continue;
        };
        let tunnel_program_reads = tunnel::read_layer(frame, &DEFAULT, &start)
            .is_some_and(|layer| tunnel::carried_tcp(frame, &layer).is_none());
        let read = read_common_other(frame, &DEFAULT);
        if let Some(CommonOther::Layer { word, .. }) = read {
            assert_eq!(
                tunnel::layer_of_word(word).kind,
                built.layers[0],
                "{}",
                built.name
            );
            handed.push(built.name.clone());
        }
        assert_eq!(
            matches!(read, Some(CommonOther::Layer { .. })),
            tunnel_program_reads,
            "{}: {read:?}",
            built.name
        );
    }
    for name in [
        "gre/vxlan/tcp4",
        "gre/vxlan/tcp6",
        "ipip/gre/tcp4",
        "vxlan/vxlan/tcp6",
    ] {
        assert!(
            handed.iter().any(|handed| handed == name),
            "{name}: not handed over"
        );
    }
}

/// The tunnel program's shortcuts answer, as the kernel composes them
/// (`shortcut_tunnel`: one layer, or a second inside the first), for
/// exactly the crafted frames they are for: one or two layers of the kinds
/// they read, every carried Ethernet frame untagged, the common TCP frame
/// inside (`check_invariants` holds each answer to the decapsulator's).
#[test]
fn the_tunnel_programs_shortcuts_answer_for_one_or_two_layers_only() {
    let mut by_depth = [0; MAX_ENCAP_DEPTH + 1];
    let mut declined: Vec<String> = Vec::new();
    for built in catalogue() {
        let read = shortcut_tunnel(built.frame.as_slice(), &DEFAULT);
        let Some((tunnel, ip_offset, inner)) = read else {
            declined.push(built.name.clone());
            continue;
        };
        assert_eq!(
            (
                inner.segment.offset as usize,
                ip_offset,
                tunnel.id,
                tunnel.layers[..built.layers.len()].to_vec(),
                tunnel.outer_family
            ),
            (
                built.tcp_offset,
                built.ip_offset,
                built.id,
                built.layers.clone(),
                built.outer_family
            ),
            "{}",
            built.name
        );
        by_depth[tunnel.depth()] += 1;
    }
    // One layer, around IPv4 and IPv6 each: the main programs' 40; VXLAN,
    // GRE and IP-in-IP behind a tag and behind QinQ (12); Geneve with 4, 8
    // and 252 bytes of options carrying Ethernet (6), and with 0, 4, 8 and
    // 252 carrying IP (8); MPLS of one to three
    // labels, two in a VLAN, one in QinQ, pseudowires of one label and of
    // three in a VLAN, PPPoE untagged, in a VLAN and in QinQ, VN-Tag
    // untagged and in a VLAN, 802.1ah untagged and behind its B-TAG,
    // FabricPath (15).
    assert_eq!(by_depth[1], 2 * (40 + 12 + 6 + 8 + 15));
    // Of those, VXLAN, GRE and IP-in-IP behind a tag and behind QinQ (12)
    // by the tagged overlay's fixed offsets, the first shortcut.
    let tagged_overlays = catalogue()
        .iter()
        .filter(|built| {
            let frame = built.frame.as_slice();
            underlay(frame)
                .and_then(|start| read_tagged_overlay(frame, &DEFAULT, &start))
                .is_some()
        })
        .count();
    assert_eq!(tagged_overlays, 2 * 12);
    // Two layers, around IPv4 and IPv6 each: GRE carrying MPLS (16: every
    // flag combination over both outer families), and MPLS in VXLAN, a
    // pseudowire in Geneve, VXLAN in GRE, GRE in IP-in-IP, VXLAN in VXLAN,
    // VN-Tag in VXLAN, FabricPath in Geneve, IP-in-IP in GRE (8).
    assert_eq!(by_depth[2], 2 * (16 + 8));
    assert_eq!(by_depth[3], 0);
    // The rest go the general way, around IPv4 and IPv6 each: a carried
    // Ethernet frame with tags (in VXLAN, in GRE, PPPoE's QinQ in VXLAN and
    // in GRE), eight MPLS labels, and three layers (3).
    declined.sort();
    let mut expected: Vec<String> = Vec::new();
    for family in ["tcp4", "tcp6"] {
        for name in [
            "vxlan",
            "gre",
            "vxlan/pppoe",
            "gre/pppoe",
            "mpls",
            "gre/vxlan/mpls",
            "vntag/vxlan/pbb",
            "vxlan/geneve/vxlan",
        ] {
            expected.push(format!("{name}/{family}"));
        }
    }
    expected.sort();
    assert_eq!(declined, expected);
    assert_eq!(
        shortcut_tunnel(catalogue()[0].frame.as_slice(), &TunnelPorts::OFF),
        None
    );
}

/// The main programs hand every crafted tunnelled frame to the tunnel
/// program except those their own shortcut reads; plain TCP and UDP stay.
/// `teardown replay` loads the tunnel program by this answer, so a frame
/// it got wrong would lose its connection.
#[test]
fn the_frames_handed_to_the_tunnel_program_are_known_on_the_host() {
    for built in catalogue() {
        let frame = built.frame.as_slice();
        assert_eq!(
            hands_to_tunnel_program(frame, &DEFAULT),
            parse_common_overlay(frame, &DEFAULT).is_none(),
            "{}",
            built.name
        );
        assert!(!hands_to_tunnel_program(frame, &TunnelPorts::OFF));
    }
    for v6 in [false, true] {
        assert!(!hands_to_tunnel_program(
            plain(v6).frame.as_slice(),
            &DEFAULT
        ));
    }
}

/// Plain UDP, the frame most non-TCP traffic is (DNS, QUIC), is read by
/// the shortcut too, over IPv4 and IPv6, to a tunnel port or not, and its
/// every single-byte mutation and cut holds to the general parser.
#[test]
fn plain_udp_is_read_by_the_shortcut_as_the_parser_reads_it() {
    for v6 in [false, true] {
        for (dst_port, tunnel_port) in [(53, false), (443, false), (4789, true), (6081, true)] {
            let mut spec = if v6 {
                Spec::tcp_v6(0, 40)
            } else {
                Spec::tcp_v4(0, 40)
            };
            spec.transport = CraftTransport::Udp {
                src_port: 40_000,
                dst_port,
            };
            let frame = craft::build(&spec).to_vec();
            let read = read_common_other(frame.as_slice(), &DEFAULT);
            assert_eq!(
                read,
                Some(CommonOther::Plain {
                    v6,
                    tagged: false,
                    may_tunnel: tunnel_port
                }),
                "UDP to {dst_port}, IPv6 {v6}"
            );
            assert_eq!(
                read_common_other(frame.as_slice(), &TunnelPorts::OFF),
                Some(CommonOther::Plain {
                    v6,
                    tagged: false,
                    may_tunnel: false
                })
            );
            let name = format!("udp {dst_port} v6 {v6}");
            for cut in 0..=frame.len() {
                let short = &frame[..cut];
                let decap = decapsulate(short, &DEFAULT);
                check_invariants(short, &decap, &DEFAULT, &|| format!("{name} cut at {cut}"));
            }
            for at in 0..frame.len() {
                for value in [0x00, 0x01, 0x06, 0x11, 0x2f, 0x45, 0x86, 0xdd, 0xff] {
                    let mut mutated = frame.clone();
                    mutated[at] = value;
                    let decap = decapsulate(mutated.as_slice(), &DEFAULT);
                    check_invariants(&mutated, &decap, &DEFAULT, &|| {
                        format!("{name} byte {at} = {value:#x}")
                    });
                }
            }
        }
    }
}

/// `decapsulate` fuzz target: a GRE header whose protocol field is 0
/// (no EtherType), followed by the bytes of an EtherType and an IPv4 TCP
/// segment. The shortcuts took protocol 0 for their own marker of a
/// carried Ethernet frame and tracked the segment inside; the general way
/// calls the layer unsupported. Now every shortcut declines a GRE
/// protocol the general way does not open, and all agree.
#[test]
fn a_gre_protocol_of_zero_is_not_an_ethernet_frame() {
    let frame: &[u8] = &[
        0xe3, 0x00, 0x00, 0x00, 0x00, 0x12, 0x02, 0x00, 0x00, 0x00, 0x00, 0x11, 0x08, 0x00, 0x45,
        0x00, 0x00, 0x44, 0x43, 0x21, 0x00, 0x00, 0x40, 0x2f, 0xe2, 0xff, 0xae, 0xc6, 0x31, 0x64,
        0x01, 0xc6, 0x33, 0x64, 0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x45, 0x00, 0x00, 0x28, 0x12,
        0x34, 0x00, 0x00, 0x40, 0x06, 0x3b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xe4, 0x98,
        0xc0, 0x00, 0x02, 0x01, 0xc0, 0x00, 0x02, 0x02, 0xe9, 0x9c, 0x40, 0x00, 0x52, 0x00, 0xb9,
        0xb9, 0x46, 0xb9, 0x40, 0x30, 0x64, 0x02, 0x00, 0x00, 0x00, 0x08, 0x00, 0x45, 0x00, 0x00,
        0x28, 0x12, 0x00, 0x04, 0x50, 0x02, 0xfa, 0xf0, 0x00,
    ];
    let decap = decapsulate(frame, &DEFAULT);
    assert!(matches!(decap, Decap::Unsupported { .. }), "{decap:?}");
    assert_eq!(parse_common_overlay(frame, &DEFAULT), None);
    assert_eq!(shortcut_tunnel(frame, &DEFAULT), None);
    check_invariants(frame, &decap, &DEFAULT, &|| "GRE protocol 0".to_string());
    // The same frame with each protocol the general way does not open.
    for protocol in [0x0000u16, 0x0001, 0x8864, 0x88a8, 0x8100, 0xffff] {
        let mut mutated = frame.to_vec();
        mutated[36..38].copy_from_slice(&protocol.to_be_bytes());
        let decap = decapsulate(mutated.as_slice(), &DEFAULT);
        assert!(
            matches!(decap, Decap::Unsupported { .. }),
            "{protocol:#06x}: {decap:?}"
        );
        check_invariants(&mutated, &decap, &DEFAULT, &|| {
            format!("GRE protocol {protocol:#06x}")
        });
    }
}

/// The common frame under one or two VLAN tags (802.1Q, QinQ), TCP or
/// UDP, over IPv4 and IPv6, is read by the shortcut too, and its every
/// single-byte mutation and cut holds to the general parser; three tags
/// are the general parser's (too deep).
#[test]
fn tagged_frames_are_read_by_the_shortcut_as_the_parser_reads_them() {
    let one: &[(u16, u16)] = &[(ethertype::VLAN, 100)];
    let two: &[(u16, u16)] = &[(ethertype::QINQ, 10), (ethertype::VLAN, 100)];
    let three: &[(u16, u16)] = &[
        (ethertype::QINQ, 10),
        (ethertype::VLAN, 100),
        (ethertype::VLAN, 7),
    ];
    for v6 in [false, true] {
        for udp in [false, true] {
            for vlans in [one, two, three] {
                let mut spec = if v6 {
                    Spec::tcp_v6(tcp_flags::ACK, 40)
                } else {
                    Spec::tcp_v4(tcp_flags::ACK, 40)
                };
                spec.vlans = vlans;
                if udp {
                    spec.transport = CraftTransport::Udp {
                        src_port: 40_000,
                        dst_port: 53,
                    };
                }
                let frame = craft::build(&spec).to_vec();
                let ip_offset = 14 + VLAN_HLEN * vlans.len();
                let read = read_common_other(frame.as_slice(), &DEFAULT);
                let name = format!("{} tags, UDP {udp}, IPv6 {v6}", vlans.len());
                match read {
                    _ if vlans.len() > MAX_VLAN_TAGS => assert_eq!(read, None, "{name}"),
                    Some(CommonOther::Plain {
                        v6: read_v6,
                        tagged: true,
                        may_tunnel: false,
                    }) if udp => assert_eq!(read_v6, v6, "{name}"),
                    Some(CommonOther::TaggedTcp {
                        ip_offset: read_offset,
                        inner,
                    }) if !udp => {
                        assert_eq!(read_offset, ip_offset, "{name}");
                        assert_eq!(
                            inner.segment.offset as usize,
                            ip_offset + if v6 { 40 } else { 20 }
                        );
                    }
                    _ => panic!("{name}: {read:?}"),
                }
                for cut in 0..=frame.len() {
                    let short = &frame[..cut];
                    let decap = decapsulate(short, &DEFAULT);
                    check_invariants(short, &decap, &DEFAULT, &|| format!("{name} cut at {cut}"));
                }
                for at in 0..frame.len() {
                    for value in [
                        0x00, 0x01, 0x06, 0x11, 0x2f, 0x45, 0x81, 0x86, 0x88, 0xa8, 0xdd, 0xff,
                    ] {
                        let mut mutated = frame.clone();
                        mutated[at] = value;
                        let decap = decapsulate(mutated.as_slice(), &DEFAULT);
                        check_invariants(&mutated, &decap, &DEFAULT, &|| {
                            format!("{name} byte {at} = {value:#x}")
                        });
                    }
                }
            }
        }
    }
}

#[test]
fn every_encapsulation_truncated_at_every_offset() {
    for built in catalogue() {
        let whole = expected(&built);
        let Decap::Inner { tunnel, inner } = whole else {
            unreachable!()
        };
        let mut deepest = 0;
        for cut in 0..=built.frame.len() {
            let frame = &built.frame[..cut];
            let decap = decapsulate(frame, &DEFAULT);
            let context = || format!("{} cut at {cut}: {decap:?}", built.name);
            check_invariants(frame, &decap, &DEFAULT, &context);
            assert_eq!(parse_common(frame), None, "{}", context());
            if cut >= built.headers_end() {
                assert_eq!(decap, whole, "{}", context());
                continue;
            }
            if cut >= built.tcp_offset + TCP_READABLE_LEN {
                let cut_short = Inner {
                    segment: segment(built.tcp_offset, false),
                    ..inner
                };
                assert_eq!(
                    decap,
                    Decap::Inner {
                        tunnel,
                        inner: cut_short
                    },
                    "{}",
                    context()
                );
                continue;
            }
            if cut < built.recognised_at {
                assert_eq!(decap, Decap::None, "{}", context());
                continue;
            }
            let layers = layers_of(&decap);
            assert!(
                !layers.is_empty() && built.layers.starts_with(&layers),
                "{}",
                context()
            );
            assert!(
                layers.len() >= deepest,
                "{}: fewer layers than a shorter cut",
                context()
            );
            deepest = layers.len();
            // The UDP headers of layers inside the outermost.
            let outer_udp = matches!(built.layers[0], encap::VXLAN | encap::GENEVE);
            let in_nested_udp = built
                .udp_headers
                .iter()
                .skip(outer_udp as usize)
                .any(|&udp| (udp..udp + 8).contains(&cut));
            let other_udp = matches!(
                decap,
                Decap::Inner { inner, .. } if inner.class == inner_class::OTHER
            ) && in_nested_udp;
            assert!(is_malformed(&decap) || other_udp, "{}", context());
        }
    }
}

// ---------------------------------------------------------------------------
// Lengths and fields that lie.

fn vxlan4() -> Built {
    vxlan(&plain(false), false)
}

/// Offsets in `vxlan4()`: outer IPv4 at 14, UDP at 34, VXLAN at 42, the
/// carried frame at 50 (its IPv4 at 64, TCP at 84).
const V4_UDP: usize = 34;

#[test]
fn udp_length_must_cover_the_tunnel_and_fit_the_datagram() {
    let built = vxlan4();
    let real = get16(&built.frame, V4_UDP + 4);
    let vxlan_only = tunnel_of(&[encap::VXLAN], 0, 0);
    for (claimed, malformed_layer) in [
        (0, true),
        (8, true),
        (15, true),
        // Past the IP datagram.
        (real + 1, true),
        (u16::MAX, true),
        // Short of the carried frame: the frame inside is malformed.
        (16, false),
        (real - 1, false),
    ] {
        let mut frame = built.frame.clone();
        set16(&mut frame, V4_UDP + 4, claimed);
        let decap = decapsulate(&frame[..], &DEFAULT);
        check_invariants(&frame, &decap, &DEFAULT, &|| {
            format!("UDP length {claimed}")
        });
        if malformed_layer {
            assert_eq!(
                decap,
                Decap::Malformed { tunnel: vxlan_only },
                "UDP length {claimed}"
            );
        } else {
            let Decap::Inner { tunnel, inner } = decap else {
                panic!("UDP length {claimed}: {decap:?}");
            };
            assert_eq!(tunnel.layers, [encap::VXLAN, 0, 0]);
            assert_eq!(inner.class, inner_class::MALFORMED, "UDP length {claimed}");
        }
    }
    // The same for Geneve over IPv6 (UDP at 54).
    let built = geneve(&plain(true), 8, false, true);
    let real = get16(&built.frame, 54 + 4);
    for claimed in [0, 15, real + 1] {
        let mut frame = built.frame.clone();
        set16(&mut frame, 54 + 4, claimed);
        let decap = decapsulate(&frame[..], &DEFAULT);
        assert_eq!(layers_of(&decap), [encap::GENEVE]);
        assert!(
            matches!(decap, Decap::Malformed { .. }),
            "{claimed}: {decap:?}"
        );
    }
    for claimed in [16, 16 + 8, real - 1] {
        let mut frame = built.frame.clone();
        set16(&mut frame, 54 + 4, claimed);
        let decap = decapsulate(&frame[..], &DEFAULT);
        assert!(is_malformed(&decap), "{claimed}: {decap:?}");
    }
}

#[test]
fn ip_lengths_that_lie_are_malformed() {
    // The outer IPv4 datagram shorter than the UDP length.
    let built = vxlan4();
    let mut frame = built.frame.clone();
    let total = get16(&frame, 16);
    set16(&mut frame, 16, total - 1);
    assert!(matches!(
        decapsulate(&frame[..], &DEFAULT),
        Decap::Malformed { .. }
    ));
    // The carried IPv4 datagram longer than the UDP datagram (at 64 + 2).
    for claimed in [get16(&built.frame, 66) + 1, u16::MAX] {
        let mut frame = built.frame.clone();
        set16(&mut frame, 66, claimed);
        let decap = decapsulate(&frame[..], &DEFAULT);
        assert!(
            matches!(decap, Decap::Inner { inner, .. } if inner.class == inner_class::MALFORMED),
            "inner total length {claimed}: {decap:?}"
        );
    }
    // IP in IP, each family in each: the carried datagram longer than the
    // outer one, and the outer shorter than the carried.
    for (outer_v6, inner_v6) in [(false, false), (false, true), (true, false), (true, true)] {
        let built = ipip(&plain(inner_v6), outer_v6);
        let outer_length = if outer_v6 { 14 + 4 } else { 14 + 2 };
        let carried_at = 14 + ip_header(outer_v6);
        let carried_length = carried_at + if inner_v6 { 4 } else { 2 };
        let mut frame = built.frame.clone();
        let value = get16(&frame, carried_length);
        set16(&mut frame, carried_length, value + 1);
        let decap = decapsulate(&frame[..], &DEFAULT);
        assert!(
            matches!(decap, Decap::Inner { inner, .. } if inner.class == inner_class::MALFORMED),
            "{outer_v6} {inner_v6}: {decap:?}"
        );
        let mut frame = built.frame.clone();
        let value = get16(&frame, outer_length);
        set16(&mut frame, outer_length, value - 1);
        let decap = decapsulate(&frame[..], &DEFAULT);
        assert!(
            matches!(decap, Decap::Inner { inner, .. } if inner.class == inner_class::MALFORMED),
            "{outer_v6} {inner_v6}: {decap:?}"
        );
        check_invariants(&frame, &decap, &DEFAULT, &|| "ipip".into());
    }
    // GRE: the outer datagram ends inside the GRE header.
    let built = gre(&plain(false), Some(1), true, true, false);
    let mut frame = built.frame.clone();
    set16(&mut frame, 16, 20 + 12);
    assert_eq!(
        decapsulate(&frame[..], &DEFAULT),
        Decap::Malformed {
            tunnel: tunnel_of(&[encap::GRE], 0, 0)
        }
    );
}

/// A datagram inside a layer without lengths of its own (MPLS, a VN-Tag,
/// 802.1ah, FabricPath) is still bounded by whatever carries that layer:
/// an inner IPv4 datagram claiming more than the UDP datagram the VXLAN
/// frame arrived in is malformed however many layers lie between.
#[test]
fn a_datagram_is_bounded_by_every_layer_around_it() {
    let tcp = plain(false);
    let cases = [
        vxlan(&mpls(&tcp, &[500], &[]), false),
        vxlan(&wrap(&tcp, Encap::VnTag { vif: 1 }, &[]), false),
        vxlan(&wrap(&tcp, Encap::Pbb { isid: 1 }, &[]), false),
        vxlan(&wrap(&tcp, Encap::FabricPath, &[]), false),
        vxlan(&pseudowire(&tcp, &[5], &[]), false),
        gre(&mpls(&tcp, &[7, 8], &[]), None, false, false, false),
        geneve(&wrap(&tcp, Encap::Pbb { isid: 1 }, &[]), 0, true, true),
    ];
    for built in cases {
        // The carried IPv4 header's total length, one past what carries it.
        let at = built.ip_offset + 2;
        let mut frame = built.frame.clone();
        let claimed = get16(&frame, at) + 1;
        set16(&mut frame, at, claimed);
        let decap = decapsulate(&frame[..], &DEFAULT);
        check_invariants(&frame, &decap, &DEFAULT, &|| built.name.clone());
        assert!(
            matches!(decap, Decap::Inner { inner, .. } if inner.class == inner_class::MALFORMED),
            "{}: {decap:?}",
            built.name
        );
    }
    // PPPoE's own length inside a UDP datagram: no more than it holds.
    let built = vxlan(&pppoe(&tcp, &[]), false);
    let at = 50 + 14 + 4;
    let mut frame = built.frame.clone();
    let claimed = get16(&frame, at) + 1;
    set16(&mut frame, at, claimed);
    let decap = decapsulate(&frame[..], &DEFAULT);
    assert!(is_malformed(&decap), "{decap:?}");
    assert_eq!(layers_of(&decap), [encap::VXLAN, encap::PPPOE]);
}

#[test]
fn pppoe_lengths_and_fields_that_lie_are_refused() {
    let tcp = plain(false);
    for vlans in [&[][..], QINQ] {
        let built = pppoe(&tcp, vlans);
        let head = 14 + VLAN_HLEN * vlans.len();
        let pppoe_only = Decap::Malformed {
            tunnel: tunnel_of(&[encap::PPPOE], 0, 0),
        };
        // Shorter than the PPP protocol field.
        for claimed in [0, 1] {
            let mut frame = built.frame.clone();
            set16(&mut frame, head + 4, claimed);
            assert_eq!(decapsulate(&frame[..], &DEFAULT), pppoe_only, "{claimed}");
        }
        // Shorter than the datagram it carries.
        for claimed in [2, 22, get16(&built.frame, head + 4) - 1] {
            let mut frame = built.frame.clone();
            set16(&mut frame, head + 4, claimed);
            let decap = decapsulate(&frame[..], &DEFAULT);
            assert!(
                matches!(decap, Decap::Inner { inner, .. } if inner.class == inner_class::MALFORMED),
                "{claimed}: {decap:?}"
            );
        }
        // Not version 1 type 1, or not a session packet (code 0).
        for (at, value) in [
            (head, 0x12),
            (head, 0x21),
            (head + 1, 0x09),
            (head + 1, 0xa7),
        ] {
            let mut frame = built.frame.clone();
            frame[at] = value;
            assert_eq!(
                decapsulate(&frame[..], &DEFAULT),
                pppoe_only,
                "{at} {value:#x}"
            );
        }
        // Link control, IPCP: recognised, not followed.
        for protocol in [0xc021, 0x8021, 0x0281] {
            let mut frame = built.frame.clone();
            set16(&mut frame, head + 6, protocol);
            assert_eq!(
                decapsulate(&frame[..], &DEFAULT),
                Decap::Unsupported {
                    tunnel: tunnel_of(&[encap::PPPOE], 0, 0)
                },
                "{protocol:#x}"
            );
        }
    }
}

#[test]
fn geneve_option_lengths_that_lie_are_refused() {
    for (outer_v6, options) in [(false, 0u8), (false, 8), (true, 252)] {
        let built = geneve(&plain(false), options, true, outer_v6);
        let head = 14 + ip_header(outer_v6) + 8;
        let room = built.frame.len() - head - 8;
        // Options past the UDP datagram (and the frame).
        // (The length is 6 bits: at most 63 words.)
        for words in [(room / 4 + 1).min(63) as u8, 63] {
            if words as usize * 4 <= room {
                continue;
            }
            let mut frame = built.frame.clone();
            frame[head] = words;
            assert_eq!(
                decapsulate(&frame[..], &DEFAULT),
                Decap::Malformed {
                    tunnel: tunnel_of(&[encap::GENEVE], 0, 0)
                },
                "{options} bytes of options claiming {words} words"
            );
        }
        // Any other length moves the carried frame: never the segment.
        for words in 0..64u8 {
            if words as usize * 4 == options as usize {
                continue;
            }
            let mut frame = built.frame.clone();
            frame[head] = words;
            let decap = decapsulate(&frame[..], &DEFAULT);
            check_invariants(&frame, &decap, &DEFAULT, &|| format!("{words} words"));
            if let Decap::Inner { inner, .. } = decap {
                assert_ne!(inner.class, inner_class::TCP, "{words} words: {decap:?}");
            }
        }
        // Versions 1 to 3: recognised, not followed.
        for version in 1..4u8 {
            let mut frame = built.frame.clone();
            frame[head] |= version << 6;
            assert_eq!(
                decapsulate(&frame[..], &DEFAULT),
                Decap::Unsupported {
                    tunnel: tunnel_of(&[encap::GENEVE], 0, 0)
                }
            );
        }
        // A protocol other than IP or Ethernet.
        for protocol in [0x0806, 0x8847, 0x0000] {
            let mut frame = built.frame.clone();
            set16(&mut frame, head + 2, protocol);
            assert!(
                matches!(decapsulate(&frame[..], &DEFAULT), Decap::Unsupported { .. }),
                "{protocol:#x}"
            );
        }
    }
}

#[test]
fn vxlan_without_its_i_flag_is_malformed() {
    let built = vxlan4();
    let mut frame = built.frame.clone();
    frame[42] = 0x00;
    assert_eq!(
        decapsulate(&frame[..], &DEFAULT),
        Decap::Malformed {
            tunnel: tunnel_of(&[encap::VXLAN], 0, 0)
        }
    );
    // Other flags and reserved bits are not judged.
    frame[42] = 0xff;
    assert_eq!(decapsulate(&frame[..], &DEFAULT), expected(&built));
}

/// Every GRE flag combination and payload is read exactly (the catalogue);
/// here, flags that change the header's length without the bytes being
/// there, versions other than 0 and routing, and unknown protocols.
#[test]
fn gre_flags_versions_and_protocols() {
    let tcp = plain(false);
    let gre_only = |decap: &Decap| layers_of(decap) == [encap::GRE];
    for bits in 0..8u8 {
        let (key, checksum, sequence) = (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0);
        let built = gre(&tcp, key.then_some(5), checksum, sequence, false);
        let flags_at = 34;
        let flags = get16(&built.frame, flags_at);
        // Versions 1 (PPTP) to 7, and routing present: not followed.
        for version in 1..8u16 {
            let mut frame = built.frame.clone();
            set16(&mut frame, flags_at, flags | version);
            let decap = decapsulate(&frame[..], &DEFAULT);
            assert!(matches!(decap, Decap::Unsupported { .. }) && gre_only(&decap));
        }
        let mut frame = built.frame.clone();
        set16(&mut frame, flags_at, flags | 0x4000);
        assert!(matches!(
            decapsulate(&frame[..], &DEFAULT),
            Decap::Unsupported { .. }
        ));
        // Each flag flipped: the header is longer or shorter than written,
        // and the segment is not read from the wrong place.
        for flag in [0x8000u16, 0x2000, 0x1000] {
            let mut frame = built.frame.clone();
            set16(&mut frame, flags_at, flags ^ flag);
            let decap = decapsulate(&frame[..], &DEFAULT);
            check_invariants(&frame, &decap, &DEFAULT, &|| format!("{bits} ^ {flag:#x}"));
            assert!(gre_only(&decap), "{bits} ^ {flag:#x}: {decap:?}");
            assert!(is_malformed(&decap), "{bits} ^ {flag:#x}: {decap:?}");
        }
        // Every flag on a frame that ends with the base header.
        let mut frame = built.frame[..flags_at + 4].to_vec();
        set16(&mut frame, 16, 24);
        set16(&mut frame, flags_at, 0xb000);
        assert!(matches!(
            decapsulate(&frame[..], &DEFAULT),
            Decap::Malformed { .. }
        ));
        // Protocols other than IP, Ethernet and MPLS.
        for protocol in [0x880b, 0x0806, 0x88be, 0x0000] {
            let mut frame = built.frame.clone();
            set16(&mut frame, flags_at + 2, protocol);
            let decap = decapsulate(&frame[..], &DEFAULT);
            assert!(
                matches!(decap, Decap::Unsupported { .. }),
                "{protocol:#x}: {decap:?}"
            );
        }
    }
}

#[test]
fn mpls_stacks_bottom_and_payloads() {
    let tcp = plain(false);
    // Eight labels are followed (the catalogue); the bottom-of-stack bit
    // cleared on the eighth, or a ninth label, is too deep.
    let built = mpls(&tcp, EIGHT_LABELS, &[]);
    let mut frame = built.frame.clone();
    frame[14 + 4 * 7 + 2] &= !1;
    let mpls_only = tunnel_of(&[encap::MPLS], 0, 0);
    assert_eq!(
        decapsulate(&frame[..], &DEFAULT),
        Decap::TooDeep { tunnel: mpls_only }
    );
    const NINE: &[u32] = &[1, 2, 3, 4, 5, 6, 7, 8, 9];
    assert_eq!(NINE.len(), MAX_MPLS_LABELS + 1);
    let built = mpls(&tcp, NINE, VLAN);
    assert_eq!(
        decapsulate(&built.frame[..], &DEFAULT),
        Decap::TooDeep { tunnel: mpls_only }
    );
    // No bottom of stack and nothing after it.
    let built = mpls(&tcp, &[1, 2], &[]);
    let mut frame = built.frame[..14 + 8].to_vec();
    frame[14 + 6] &= !1;
    assert_eq!(
        decapsulate(&frame[..], &DEFAULT),
        Decap::Malformed { tunnel: mpls_only }
    );
    // Inside VXLAN, too deep with both layers.
    let built = vxlan(&mpls(&tcp, NINE, &[]), false);
    assert_eq!(
        decapsulate(&built.frame[..], &DEFAULT),
        Decap::TooDeep {
            tunnel: tunnel_of(&[encap::VXLAN, encap::MPLS], 0x00ab_cdef, 4)
        }
    );
    // After the stack: neither IP nor a control word.
    let built = mpls(&tcp, &[1], &[]);
    for nibble in [1u8, 2, 3, 5, 7, 8, 0xf] {
        let mut frame = built.frame.clone();
        frame[18] = nibble << 4 | 5;
        assert_eq!(
            decapsulate(&frame[..], &DEFAULT),
            Decap::Unsupported { tunnel: mpls_only },
            "nibble {nibble}"
        );
    }
    // The multicast EtherType is a label stack too.
    let built = mpls(&tcp, &[42], &[]);
    let mut frame = built.frame.clone();
    set16(&mut frame, 12, ethertype::MPLS_MULTICAST);
    assert_eq!(decapsulate(&frame[..], &DEFAULT), expected(&built));
}

#[test]
fn carried_frames_too_deep_for_the_parser_are_named() {
    // Three VLAN tags on the carried frame.
    let mut spec = inner_spec(false);
    spec.vlans = &[
        (ethertype::QINQ, 1),
        (ethertype::VLAN, 2),
        (ethertype::VLAN, 3),
    ];
    let mut carried = plain(false);
    carried.frame = craft::build(&spec).to_vec();
    let decap = decapsulate(&vxlan(&carried, false).frame[..], &DEFAULT);
    assert!(
        matches!(decap, Decap::Inner { inner, .. } if inner.class == inner_class::TOO_DEEP),
        "{decap:?}"
    );
    // An IPv6 extension chain longer than the parser walks, in 6in4.
    let mut spec = inner_spec(true);
    spec.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &[ip_proto::DSTOPTS; 7],
    };
    let mut carried = plain(true);
    carried.frame = craft::build(&spec).to_vec();
    let decap = decapsulate(&ipip(&carried, false).frame[..], &DEFAULT);
    assert!(
        matches!(decap, Decap::Inner { inner, .. } if inner.class == inner_class::TOO_DEEP),
        "{decap:?}"
    );
    // Carried non-TCP: UDP and ARP are other.
    let mut udp = inner_spec(false);
    udp.transport = CraftTransport::Udp {
        src_port: 53,
        dst_port: 53,
    };
    let mut arp = inner_spec(false);
    arp.network = Network::Arp;
    for spec in [udp, arp] {
        let mut carried = plain(false);
        carried.frame = craft::build(&spec).to_vec();
        let decap = decapsulate(&vxlan(&carried, true).frame[..], &DEFAULT);
        assert!(
            matches!(decap, Decap::Inner { inner, .. } if inner.class == inner_class::OTHER),
            "{decap:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Depth.

#[test]
fn three_layers_are_opened_and_a_fourth_is_too_deep() {
    let tcp = plain(false);
    let three = vxlan(&vxlan(&vxlan(&tcp, false), true), false);
    assert_eq!(decapsulate(&three.frame[..], &DEFAULT), expected(&three));
    let four = vxlan(&three, false);
    assert_eq!(
        decapsulate(&four.frame[..], &DEFAULT),
        Decap::TooDeep {
            // The third layer's endpoints: the middle one, over IPv6.
            tunnel: tunnel_of(&[encap::VXLAN; 3], 0x00ab_cdef, 6)
        }
    );
    // Mixed kinds: GRE around VXLAN around IP-in-IP around VXLAN.
    let mixed = gre(
        &vxlan(&ipip(&vxlan(&tcp, true), false), false),
        None,
        false,
        false,
        false,
    );
    let decap = decapsulate(&mixed.frame[..], &DEFAULT);
    assert!(matches!(decap, Decap::TooDeep { .. }), "{decap:?}");
    assert_eq!(layers_of(&decap), [encap::GRE, encap::VXLAN, encap::IPIP]);
    check_invariants(&mixed.frame, &decap, &DEFAULT, &|| "mixed".into());
    // Four link-layer layers: PBB, VN-Tag, FabricPath, MPLS.
    let links = wrap(
        &wrap(
            &wrap(&mpls(&tcp, &[1], &[]), Encap::FabricPath, &[]),
            Encap::VnTag { vif: 2 },
            &[],
        ),
        Encap::Pbb { isid: 3 },
        &[],
    );
    let decap = decapsulate(&links.frame[..], &DEFAULT);
    assert!(matches!(decap, Decap::TooDeep { .. }), "{decap:?}");
    assert_eq!(
        layers_of(&decap),
        [encap::PBB, encap::VNTAG, encap::FABRICPATH]
    );
}

/// The frame inside may start at [`MAX_INNER_START`] and no further:
/// Geneve over IPv6 with the most options (252 bytes), carrying Geneve
/// over IPv6 whose options put the carried IP header at 512, then 516.
#[test]
fn the_inner_frame_starts_within_max_inner_start() {
    let tcp = plain(false);
    // Outer: 14 + 40 + 8 + 8 + 252 = 322 to the carried Ethernet frame;
    // in it, 14 + 40 + 8 + 8 + options to the carried datagram.
    for (options, fits) in [(120u8, true), (124, false)] {
        let built = geneve(&geneve(&tcp, options, false, true), 252, true, true);
        assert_eq!(built.ip_offset, 322 + 70 + options as usize);
        assert_eq!(built.ip_offset <= MAX_INNER_START, fits);
        let decap = decapsulate(&built.frame[..], &DEFAULT);
        check_invariants(&built.frame, &decap, &DEFAULT, &|| format!("{options}"));
        if fits {
            assert_eq!(decap, expected(&built));
        } else {
            assert_eq!(
                decap,
                Decap::TooDeep {
                    tunnel: tunnel_of(&[encap::GENEVE, encap::GENEVE], 0x0012_3456, 6)
                }
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Ports and switches.

#[test]
fn only_the_configured_udp_ports_are_tunnels() {
    let tcp = plain(false);
    let on = |port: u16| vxlan_on(&tcp, port);
    let custom = TunnelPorts {
        vxlan: [9999, 0, 0, 0],
        geneve: [0, 0, 0, 7777],
        ..TunnelPorts::DEFAULT
    };
    // The defaults: 4789 and 8472 VXLAN, 6081 Geneve.
    for port in [4789, 8472] {
        assert!(matches!(
            decapsulate(&on(port).frame[..], &DEFAULT),
            Decap::Inner { .. }
        ));
        assert_eq!(
            decapsulate(&on(port).frame[..], &custom),
            Decap::None,
            "{port}"
        );
    }
    let built = on(9999);
    assert_eq!(decapsulate(&built.frame[..], &DEFAULT), Decap::None);
    assert_eq!(decapsulate(&built.frame[..], &custom), expected(&built));
    // Port 0 is an empty slot, never a tunnel's port.
    assert_eq!(decapsulate(&on(0).frame[..], &DEFAULT), Decap::None);
    assert_eq!(decapsulate(&on(0).frame[..], &custom), Decap::None);
    // A VXLAN frame on a Geneve port is read as Geneve (and is not one).
    let mut swapped = custom;
    swapped.geneve[0] = 9999;
    swapped.vxlan[0] = 0;
    let decap = decapsulate(&built.frame[..], &swapped);
    assert_eq!(layers_of(&decap), [encap::GENEVE]);
    assert_ne!(decap, expected(&built));
    // Geneve on 7777.
    let mut built = geneve(&tcp, 4, true, false);
    set16(&mut built.frame, 36, 7777);
    assert_eq!(decapsulate(&built.frame[..], &DEFAULT), Decap::None);
    assert_eq!(decapsulate(&built.frame[..], &custom), expected(&built));
    // The source port decides nothing.
    let mut frame = on(1234).frame;
    set16(&mut frame, 34, 4789);
    assert_eq!(decapsulate(&frame[..], &DEFAULT), Decap::None);
    // Switched off, nothing is opened, UDP or not.
    for built in catalogue() {
        assert_eq!(
            decapsulate(&built.frame[..], &TunnelPorts::OFF),
            Decap::None
        );
        let mut enabled_only = TunnelPorts::OFF;
        enabled_only.enabled = 1;
        let decap = decapsulate(&built.frame[..], &enabled_only);
        if built.udp_headers.first() == Some(&(built.recognised_at - 8)) {
            assert_eq!(decap, Decap::None, "{}", built.name);
        } else if built.udp_headers.is_empty() {
            assert_eq!(decap, expected(&built), "{}", built.name);
        }
    }
}

fn vxlan_on(carried: &Built, port: u16) -> Built {
    let layer = Encap::Vxlan {
        vni: 0x00ab_cdef,
        port,
        outer_v6: false,
    };
    wrap(carried, layer, &[])
}

// ---------------------------------------------------------------------------
// Mutations.

/// Every single-byte mutation (every position, every value) of `frames`:
/// no panic, an outcome consistent with the outer parse and itself, the
/// kernel's path agreeing, the common frame's shortcut declining or
/// agreeing with the parser (and then no tunnel), and any TCP segment
/// inside the frame, its datagram and what carries it. Returns the count
/// of each outcome (none, inner, too deep, malformed, unsupported) and of
/// mutants the shortcut read.
fn sweep_single_bytes(frames: &[Built]) -> ([u64; 5], u64) {
    let mut outcomes = [0u64; 5];
    let mut shortcut = 0u64;
    for built in frames {
        let mut frame = built.frame.clone();
        // Past the inner headers, bytes are payload: a few positions do.
        let positions = (0..built.headers_end()).chain([built.headers_end(), frame.len() - 1]);
        for at in positions {
            let original = frame[at];
            for value in 0..=255u8 {
                if value == original {
                    continue;
                }
                frame[at] = value;
                let decap = decapsulate(&frame[..], &DEFAULT);
                check_invariants(&frame, &decap, &DEFAULT, &|| {
                    format!("{}: byte {at} = {value:#04x}: {decap:?}", built.name)
                });
                shortcut += parse_common(&frame[..]).is_some() as u64;
                outcomes[match decap {
                    Decap::None => 0,
                    Decap::Inner { .. } => 1,
                    Decap::TooDeep { .. } => 2,
                    Decap::Malformed { .. } => 3,
                    Decap::Unsupported { .. } => 4,
                }] += 1;
            }
            frame[at] = original;
        }
    }
    println!(
        "{} frames; none, inner, too deep, malformed, unsupported: {outcomes:?}; shortcut read {shortcut}",
        frames.len()
    );
    (outcomes, shortcut)
}

/// [`sweep_single_bytes`] over one frame of each shape in the catalogue:
/// each sequence of layers, over each outer family, carrying each inner
/// family (the catalogue's other frames differ in GRE's optional fields,
/// Geneve's option lengths, VXLAN's port, MPLS labels and tags, all of
/// which `every_single_byte_mutation_of_the_whole_catalogue` covers).
#[test]
fn every_single_byte_mutation_of_each_shape() {
    let mut seen = std::collections::HashSet::new();
    let shapes: Vec<Built> = catalogue()
        .into_iter()
        .filter(|built| seen.insert((built.layers.clone(), built.outer_family, built.is_v6)))
        .collect();
    let (outcomes, shortcut) = sweep_single_bytes(&shapes);
    // The mutants reach every outcome, and the shortcut's answer too.
    assert!(outcomes.iter().all(|&count| count > 0), "{outcomes:?}");
    assert!(shortcut > 0);
}

/// [`sweep_single_bytes`] over the whole catalogue: about 7 million
/// mutants, half a minute in a debug build; run with `--ignored`.
#[test]
#[ignore = "slow: run with --ignored"]
fn every_single_byte_mutation_of_the_whole_catalogue() {
    let (outcomes, shortcut) = sweep_single_bytes(&catalogue());
    assert!(outcomes.iter().all(|&count| count > 0), "{outcomes:?}");
    assert!(shortcut > 0);
}

/// xorshift64: the same cases on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Several bytes changed at once and the frame cut anywhere, at random,
/// also with configured ports, under the same checks.
#[test]
fn random_mutations_and_cuts_of_encapsulated_frames() {
    let seeds = catalogue();
    let custom = TunnelPorts {
        vxlan: [4789, 6081, 0, 0],
        geneve: [8472, 0, 0, 0],
        ..TunnelPorts::DEFAULT
    };
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for case in 0..200_000 {
        let built = &seeds[(rng.next() % seeds.len() as u64) as usize];
        let mut frame = built.frame.clone();
        for _ in 0..1 + rng.next() % 4 {
            // Mostly in the headers.
            let span = if rng.next().is_multiple_of(4) {
                frame.len()
            } else {
                built.headers_end()
            };
            let at = (rng.next() % span as u64) as usize;
            frame[at] = rng.next() as u8;
        }
        let cut = frame.len() - (rng.next() % (frame.len() as u64 / 2 + 1)) as usize;
        let frame = &frame[..cut];
        let ports = if case % 3 == 0 { &custom } else { &DEFAULT };
        let decap = decapsulate(frame, ports);
        check_invariants(frame, &decap, ports, &|| {
            format!("case {case} ({}): {frame:02x?}: {decap:?}", built.name)
        });
    }
}

/// A tunnel inside a packet that starts with its IP header (a tun or
/// WireGuard device's, which the TC programs open with
/// `DecapState::begin_ip`) opens as the same packet behind an Ethernet
/// header does, its offsets 14 bytes less: every IP-carried frame of the
/// catalogue, cut short at every length.
#[test]
fn a_tunnel_in_a_packet_without_ethernet_header_opens_as_behind_one() {
    use teardown_common::tunnel::{Decap, Inner, decapsulate_ip};
    let shifted = |inner: &Inner| {
        // Offsets that were set (0: none read).
        let mut moved = *inner;
        if moved.ip_offset != 0 {
            moved.ip_offset += 14;
        }
        if moved.limit != u32::MAX {
            moved.limit += 14;
        }
        if moved.segment.offset != 0 {
            moved.segment.offset += 14;
        }
        moved
    };
    let mut checked = 0;
    let mut opened = 0;
    for (built, len) in ip_carried_cuts() {
        let framed = &built.frame[..len];
        let bare = &built.frame[14..len];
        let as_ip = match decapsulate_ip(bare, &DEFAULT) {
            Decap::Inner { tunnel, inner } => Decap::Inner {
                tunnel,
                inner: shifted(&inner),
            },
            other => other,
        };
        let behind = decapsulate(framed, &DEFAULT);
        assert_eq!(as_ip, behind, "{} cut at {len}", built.name);
        opened += matches!(behind, Decap::Inner { .. }) as u32;
        checked += 1;
    }
    assert!(
        checked > 1_000 && opened > 50,
        "{checked} cuts, {opened} opened"
    );
}

/// The tunnel program's shortcuts from a packet's IP header (a tun or
/// WireGuard device's: `ip_underlay`, no tags): where they answer, the
/// general way from the same header (`decapsulate_ip`) finds the same
/// tunnel, its outer endpoints at offset 0 included, and the same inner
/// segment at the same place; every IP-carried frame of the catalogue,
/// cut at every length.
#[test]
fn the_shortcuts_from_a_packets_ip_header_agree_with_the_general_way() {
    use teardown_common::tunnel::{decapsulate_ip, shortcut_tunnel_ip};
    let mut read = 0;
    let mut cuts = 0;
    for (built, len) in ip_carried_cuts() {
        let bare = &built.frame[14..len];
        cuts += 1;
        let Some((tunnel, ip_offset, inner)) = shortcut_tunnel_ip(bare, &DEFAULT) else {
            continue;
        };
        read += 1;
        match decapsulate_ip(bare, &DEFAULT) {
            Decap::Inner {
                tunnel: general,
                inner: found,
            } => {
                assert_eq!(tunnel, general, "{} cut at {len}", built.name);
                assert_ne!(tunnel.outer_family, 0, "{}: endpoints", built.name);
                assert_eq!(
                    (ip_offset, inner.segment),
                    (found.ip_offset as usize, found.segment),
                    "{} cut at {len}",
                    built.name
                );
            }
            other => panic!(
                "{} cut at {len}: shortcut read, general way {other:?}",
                built.name
            ),
        }
    }
    assert!(read > 30 && cuts > 1_000, "{read} read of {cuts} cuts");
}

/// Each crafted frame whose outer header is IPv4 or IPv6, with every
/// length it can be cut to past its Ethernet header: what a device with no
/// Ethernet header (tun, WireGuard) would carry, whole and cut short.
fn ip_carried_cuts() -> impl Iterator<Item = (Built, usize)> {
    catalogue()
        .into_iter()
        .filter(|built| {
            matches!(
                u16::from_be_bytes([built.frame[12], built.frame[13]]),
                0x0800 | 0x86dd
            )
        })
        .flat_map(|built| (15..=built.frame.len()).map(move |len| (built.clone(), len)))
}

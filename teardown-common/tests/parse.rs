//! Parser tests on crafted frames: every layer, every length field, every cut.

use teardown_common::counters::{Counter, counters_of};
use teardown_common::craft::{self, Network, Spec, Transport as CraftTransport};
use teardown_common::parse::{
    Fragment, IpVersion, Layer, MAX_IPV6_EXT_HEADERS, Parsed, Payload, Problem, TCP_READABLE_LEN,
    TcpSegment, Transport, ethertype, ip_proto, parse, tcp_flags,
};

const SYN: u8 = tcp_flags::SYN;
const SYN_ACK: u8 = tcp_flags::SYN | tcp_flags::ACK;

fn tcp_of(parsed: &Parsed) -> TcpSegment {
    match parsed.tcp() {
        Some((_, segment)) => *segment,
        None => panic!("expected a TCP segment, parsed {parsed:?}"),
    }
}

fn transport_of(parsed: &Parsed) -> Transport {
    match parsed.payload {
        Payload::Ip(ip) => ip.transport,
        other => panic!("expected an IP packet, parsed {other:?}"),
    }
}

/// The keys of the counters one frame increments, each by exactly one.
fn counted(parsed: &Parsed) -> Vec<&'static str> {
    let counters = counters_of(parsed);
    Counter::ALL
        .iter()
        .filter(|counter| {
            let value = counters.get(**counter);
            assert!(
                value <= 1,
                "{counter:?} counted {value} times for one frame"
            );
            value == 1
        })
        .map(|counter| counter.key())
        .collect()
}

/// Whether one frame increments `counter`.
fn hits(parsed: &Parsed, counter: Counter) -> bool {
    counters_of(parsed).get(counter) == 1
}

#[test]
fn ipv4_tcp_fields_are_read_exactly() {
    let frame = craft::build(&Spec::tcp_v4(SYN, 0));
    let parsed = parse(&frame[..]);
    assert_eq!(parsed.vlan_tags, 0);
    let Payload::Ip(ip) = parsed.payload else {
        panic!("not IP: {parsed:?}")
    };
    assert_eq!(ip.version, IpVersion::V4);
    assert_eq!(ip.offset, 14);
    assert_eq!(ip.fragment, Fragment::Whole);
    let segment = tcp_of(&parsed);
    assert_eq!(segment.offset, 34);
    assert_eq!((segment.src_port, segment.dst_port), (40000, 80));
    assert_eq!((segment.seq, segment.ack), (1000, 0));
    assert_eq!(
        segment.window, 64240,
        "the crafter writes a 64240-byte window"
    );
    assert_eq!(segment.flags, SYN);
    assert_eq!(segment.header_len, 20);
    assert_eq!(segment.payload_len, 0);
    assert_eq!(counted(&parsed), ["packets", "ipv4", "tcp", "syn"]);
}

#[test]
fn ipv6_tcp_fields_are_read_exactly() {
    let frame = craft::build(&Spec::tcp_v6(SYN_ACK, 100));
    let parsed = parse(&frame[..]);
    let segment = tcp_of(&parsed);
    assert_eq!(segment.offset, 54);
    assert_eq!(segment.flags, SYN_ACK);
    assert_eq!(segment.payload_len, 100);
    assert_eq!(
        counted(&parsed),
        ["packets", "ipv6", "tcp", "syn_ack", "data"]
    );
}

#[test]
fn flag_counters_follow_the_flags() {
    let cases: &[(u8, u16, &[&str])] = &[
        (tcp_flags::ACK, 0, &["pure_ack"]),
        (tcp_flags::ACK | tcp_flags::PSH, 10, &["data", "psh"]),
        (tcp_flags::FIN | tcp_flags::ACK, 0, &["fin"]),
        (tcp_flags::RST, 0, &["rst"]),
        (tcp_flags::RST | tcp_flags::ACK, 0, &["rst"]),
        (
            SYN | tcp_flags::ECE | tcp_flags::CWR,
            0,
            &["syn", "ece", "cwr"],
        ),
        (tcp_flags::ACK | tcp_flags::URG, 1, &["data", "urg"]),
        // SYN+FIN+RST all at once (a scan): each counted, never "pure".
        (
            SYN | tcp_flags::FIN | tcp_flags::RST,
            0,
            &["syn", "fin", "rst"],
        ),
    ];
    for &(flags, payload, expected) in cases {
        let frame = craft::build(&Spec::tcp_v4(flags, payload));
        let got = counted(&parse(&frame[..]));
        let mut want = vec!["packets", "ipv4", "tcp"];
        want.extend_from_slice(expected);
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        assert_eq!(got_sorted, want, "flags {flags:#04x} payload {payload}");
    }
}

/// Cutting a frame anywhere inside its headers must give a malformed verdict and
/// never a panic. Up to the TCP window field nothing is TCP; from there to the
/// end of the header the flags are readable (tshark counts them) but the
/// segment is incomplete and still malformed. Cutting in the payload must not
/// change what was parsed: lengths come from the IP header.
fn check_every_truncation(frame: &[u8], headers_end: usize) {
    let whole = parse(frame);
    let whole_segment = tcp_of(&whole);
    assert!(whole_segment.header_complete);
    let tcp_start = headers_end - 20;
    for cut in 0..frame.len() {
        let parsed = parse(&frame[..cut]);
        assert!(hits(&parsed, Counter::Packets));
        if cut >= headers_end {
            assert_eq!(tcp_of(&parsed), whole_segment, "cut at {cut}");
            assert!(!hits(&parsed, Counter::Malformed), "cut at {cut}");
            continue;
        }
        assert!(
            hits(&parsed, Counter::Malformed),
            "cut at {cut} not counted malformed: {parsed:?}"
        );
        if cut >= tcp_start + TCP_READABLE_LEN {
            let segment = tcp_of(&parsed);
            assert!(!segment.header_complete, "cut at {cut}");
            assert_eq!(
                segment.payload_len, 0,
                "cut at {cut}: payload must not be trusted"
            );
            assert_eq!(segment.flags, whole_segment.flags);
            assert!(hits(&parsed, Counter::Tcp) && hits(&parsed, Counter::Syn));
            continue;
        }
        assert!(
            parsed.tcp().is_none(),
            "cut at {cut} gave a TCP segment: {parsed:?}"
        );
        assert!(!hits(&parsed, Counter::Tcp), "cut at {cut}");
        match parsed.payload {
            Payload::Malformed { layer } => {
                assert!(cut < 14, "cut at {cut}");
                assert_eq!(layer, Layer::Ethernet);
            }
            Payload::Ip(ip) => {
                let expected_layers: &[Layer] = if cut >= tcp_start {
                    &[Layer::Tcp]
                } else {
                    &[Layer::Ipv4, Layer::Ipv6, Layer::Ipv6Extension]
                };
                match ip.transport {
                    Transport::Malformed {
                        layer,
                        problem: Problem::Truncated,
                    } => assert!(expected_layers.contains(&layer), "cut at {cut}: {layer:?}"),
                    other => panic!("cut at {cut}: expected truncation, got {other:?}"),
                }
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn ipv4_tcp_truncated_at_every_offset() {
    let frame = craft::build(&Spec::tcp_v4(SYN, 32));
    check_every_truncation(&frame, 14 + 20 + 20);
}

#[test]
fn ipv6_tcp_truncated_at_every_offset() {
    let frame = craft::build(&Spec::tcp_v6(SYN, 32));
    check_every_truncation(&frame, 14 + 40 + 20);
}

#[test]
fn ipv6_with_extension_headers_truncated_at_every_offset() {
    let mut spec = Spec::tcp_v6(SYN, 8);
    spec.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &[ip_proto::HOPOPTS, ip_proto::DSTOPTS, ip_proto::ROUTING],
    };
    let frame = craft::build(&spec);
    check_every_truncation(&frame, 14 + 40 + 24 + 20);
}

fn set_byte(frame: &[u8], at: usize, value: u8) -> Vec<u8> {
    let mut copy = frame.to_vec();
    copy[at] = value;
    copy
}

#[test]
fn ihl_below_five_is_malformed() {
    let frame = craft::build(&Spec::tcp_v4(SYN, 0));
    for ihl in 0..5u8 {
        let bad = set_byte(&frame, 14, 0x40 | ihl);
        let parsed = parse(&bad[..]);
        assert_eq!(
            transport_of(&parsed),
            Transport::Malformed {
                layer: Layer::Ipv4,
                problem: Problem::BadLength
            },
            "IHL {ihl}"
        );
        assert_eq!(counted(&parsed), ["packets", "ipv4", "malformed"]);
    }
}

#[test]
fn ihl_beyond_the_frame_is_malformed() {
    // IHL 15 claims 60 bytes; the frame has 20 bytes of IP and 20 of TCP.
    let frame = craft::build(&Spec::tcp_v4(SYN, 0));
    let bad = set_byte(&frame, 14, 0x4f);
    let parsed = parse(&bad[..bad.len() - 1]);
    assert_eq!(
        transport_of(&parsed),
        Transport::Malformed {
            layer: Layer::Ipv4,
            problem: Problem::Truncated
        }
    );
}

#[test]
fn ipv4_options_are_skipped() {
    for options_len in [4u8, 12, 40] {
        let mut spec = Spec::tcp_v4(tcp_flags::FIN | tcp_flags::ACK, 5);
        spec.network = Network::Ipv4 {
            src: craft::CLIENT_V4,
            dst: craft::SERVER_V4,
            options_len,
            fragment_offset: 0,
            more_fragments: false,
        };
        let frame = craft::build(&spec);
        let segment = tcp_of(&parse(&frame[..]));
        assert_eq!(segment.offset as usize, 14 + 20 + options_len as usize);
        assert_eq!(segment.flags, tcp_flags::FIN | tcp_flags::ACK);
        assert_eq!(segment.payload_len, 5);
    }
}

#[test]
fn version_disagreeing_with_ethertype_is_malformed() {
    let v4 = craft::build(&Spec::tcp_v4(SYN, 0));
    let parsed = parse(&set_byte(&v4, 14, 0x65)[..]);
    assert_eq!(
        transport_of(&parsed),
        Transport::Malformed {
            layer: Layer::Ipv4,
            problem: Problem::BadVersion
        }
    );
    let v6 = craft::build(&Spec::tcp_v6(SYN, 0));
    let parsed = parse(&set_byte(&v6, 14, 0x45)[..]);
    assert_eq!(
        transport_of(&parsed),
        Transport::Malformed {
            layer: Layer::Ipv6,
            problem: Problem::BadVersion
        }
    );
}

#[test]
fn ipv4_total_length_shorter_than_header_is_malformed_but_zero_is_tso() {
    let frame = craft::build(&Spec::tcp_v4(SYN, 10));
    let mut bad = frame.to_vec();
    bad[16..18].copy_from_slice(&12u16.to_be_bytes());
    assert_eq!(
        transport_of(&parse(&bad[..])),
        Transport::Malformed {
            layer: Layer::Ipv4,
            problem: Problem::BadLength
        }
    );
    // Total length 0 (TSO/big TCP): the payload runs to the end of the frame.
    let mut tso = frame.to_vec();
    tso[16..18].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(tcp_of(&parse(&tso[..])).payload_len, 10);
}

#[test]
fn tcp_header_past_the_ip_datagram_is_malformed() {
    // Total length says 30: the TCP header cannot fit in the datagram.
    let frame = craft::build(&Spec::tcp_v4(SYN, 10));
    let mut bad = frame.to_vec();
    bad[16..18].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(
        transport_of(&parse(&bad[..])),
        Transport::Malformed {
            layer: Layer::Tcp,
            problem: Problem::BadLength
        }
    );
}

#[test]
fn data_offset_below_five_is_malformed() {
    let frame = craft::build(&Spec::tcp_v4(SYN, 0));
    for data_offset in 0..5u8 {
        let parsed = parse(&set_byte(&frame, 14 + 20 + 12, data_offset << 4)[..]);
        assert_eq!(
            transport_of(&parsed),
            Transport::Malformed {
                layer: Layer::Tcp,
                problem: Problem::BadLength
            },
            "data offset {data_offset}"
        );
        assert_eq!(counted(&parsed), ["packets", "ipv4", "malformed"]);
    }
}

#[test]
fn data_offset_beyond_the_frame_is_malformed_but_flags_count() {
    // Data offset 15 claims 60 bytes of TCP header; only 20 are there. The flags
    // were on the wire (tshark counts them); the options and payload are not.
    let frame = craft::build(&Spec::tcp_v4(SYN, 0));
    let parsed = parse(&set_byte(&frame, 14 + 20 + 12, 0xf0)[..]);
    let segment = tcp_of(&parsed);
    assert_eq!(segment.header_len, 60);
    assert!(!segment.header_complete);
    assert_eq!(segment.payload_len, 0);
    assert_eq!(
        counted(&parsed),
        ["packets", "ipv4", "tcp", "syn", "malformed"]
    );
}

#[test]
fn tcp_needs_sixteen_bytes_inside_the_datagram() {
    // IP total length leaves 15, then 16 bytes of the 20-byte TCP header.
    let frame = craft::build(&Spec::tcp_v4(SYN, 0));
    for (total_len, readable) in [(35u16, false), (36, true), (39, true), (40, true)] {
        let mut copy = frame.to_vec();
        copy[16..18].copy_from_slice(&total_len.to_be_bytes());
        let parsed = parse(&copy[..]);
        assert_eq!(parsed.tcp().is_some(), readable, "total length {total_len}");
        assert_eq!(
            hits(&parsed, Counter::Malformed),
            total_len < 40,
            "total length {total_len}"
        );
    }
}

#[test]
fn ipv6_payload_length_zero_is_empty_without_a_hop_by_hop_header() {
    let mut frame = craft::build(&Spec::tcp_v6(SYN, 0)).to_vec();
    frame[18..20].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(
        transport_of(&parse(&frame[..])),
        Transport::Malformed {
            layer: Layer::Tcp,
            problem: Problem::BadLength
        }
    );
    // With a hop-by-hop header it may be a jumbogram: the frame's length counts.
    let mut spec = Spec::tcp_v6(SYN, 10);
    spec.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &[ip_proto::HOPOPTS],
    };
    let mut jumbo = craft::build(&spec).to_vec();
    jumbo[18..20].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(tcp_of(&parse(&jumbo[..])).payload_len, 10);
}

#[test]
fn tcp_options_are_within_the_header() {
    let mut spec = Spec::tcp_v4(SYN, 0);
    spec.transport = CraftTransport::Tcp {
        src_port: 1,
        dst_port: 2,
        seq: 3,
        ack: 4,
        flags: SYN,
        options_len: 40,
    };
    let frame = craft::build(&spec);
    let segment = tcp_of(&parse(&frame[..]));
    assert_eq!(segment.header_len, 60);
    assert_eq!(segment.payload_len, 0);
    assert_eq!(
        (segment.src_port, segment.dst_port, segment.seq, segment.ack),
        (1, 2, 3, 4)
    );
}

fn fragment_spec(fragment_offset: u16, more_fragments: bool) -> Spec<'static> {
    let mut spec = Spec::tcp_v4(SYN, 100);
    spec.network = Network::Ipv4 {
        src: craft::CLIENT_V4,
        dst: craft::SERVER_V4,
        options_len: 0,
        fragment_offset,
        more_fragments,
    };
    spec
}

#[test]
fn first_fragment_carries_tcp_later_fragments_do_not() {
    let first = craft::build(&fragment_spec(0, true));
    let parsed = parse(&first[..]);
    let Payload::Ip(ip) = parsed.payload else {
        panic!("{parsed:?}")
    };
    assert_eq!(ip.fragment, Fragment::First);
    assert_eq!(tcp_of(&parsed).flags, SYN);
    assert_eq!(
        counted(&parsed),
        ["packets", "ipv4", "fragments", "tcp", "syn", "data"]
    );

    // A later fragment's first bytes are payload, whatever they look like.
    for (offset, more) in [(1, true), (185, false)] {
        let later = craft::build(&fragment_spec(offset, more));
        let parsed = parse(&later[..]);
        let Payload::Ip(ip) = parsed.payload else {
            panic!("{parsed:?}")
        };
        assert_eq!(ip.fragment, Fragment::Later);
        assert_eq!(ip.transport, Transport::LaterFragment);
        assert_eq!(
            counted(&parsed),
            ["packets", "ipv4", "fragments", "other_transport"]
        );
    }
}

#[test]
fn vlan_tags_zero_one_two_are_followed_and_a_third_is_not() {
    let tags: [(u16, u16); 3] = [
        (ethertype::QINQ, 100),
        (ethertype::VLAN, 200),
        (ethertype::VLAN, 300),
    ];
    for count in 0..=2 {
        let mut spec = Spec::tcp_v4(SYN, 0);
        spec.vlans = &tags[..count];
        let frame = craft::build(&spec);
        let parsed = parse(&frame[..]);
        assert_eq!(parsed.vlan_tags as usize, count);
        assert_eq!(tcp_of(&parsed).offset as usize, 14 + 4 * count + 20);
        let mut expected = vec!["packets"];
        if count > 0 {
            expected.push("vlan");
        }
        expected.extend(["ipv4", "tcp", "syn"]);
        assert_eq!(counted(&parsed), expected);
    }
    // Two 802.1Q tags (not 802.1ad outside) are followed just the same.
    let mut spec = Spec::tcp_v6(SYN, 0);
    spec.vlans = &[(ethertype::VLAN, 1), (ethertype::VLAN, 2)];
    assert_eq!(tcp_of(&parse(&craft::build(&spec)[..])).offset, 14 + 8 + 40);

    let mut spec = Spec::tcp_v4(SYN, 0);
    spec.vlans = &tags;
    let parsed = parse(&craft::build(&spec)[..]);
    assert_eq!(parsed.payload, Payload::VlanTooDeep);
    assert_eq!(counted(&parsed), ["packets", "vlan", "vlan_too_deep"]);
}

#[test]
fn truncated_vlan_tag_is_malformed() {
    let mut spec = Spec::tcp_v4(SYN, 0);
    spec.vlans = &[(ethertype::VLAN, 7)];
    let frame = craft::build(&spec);
    for cut in 14..18 {
        let parsed = parse(&frame[..cut]);
        assert_eq!(
            parsed.payload,
            Payload::Malformed { layer: Layer::Vlan },
            "cut {cut}"
        );
    }
}

#[test]
fn ipv6_extension_header_chains_are_walked() {
    let chain = [
        ip_proto::HOPOPTS,
        ip_proto::ROUTING,
        ip_proto::FRAGMENT,
        ip_proto::DSTOPTS,
    ];
    let mut spec = Spec::tcp_v6(tcp_flags::RST, 0);
    spec.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &chain,
    };
    let parsed = parse(&craft::build(&spec)[..]);
    let Payload::Ip(ip) = parsed.payload else {
        panic!("{parsed:?}")
    };
    assert_eq!(
        ip.fragment,
        Fragment::First,
        "fragment header with offset 0"
    );
    let segment = tcp_of(&parsed);
    assert_eq!(segment.offset as usize, 14 + 40 + 8 * chain.len());
    assert_eq!(segment.flags, tcp_flags::RST);
    assert_eq!(
        counted(&parsed),
        ["packets", "ipv6", "fragments", "tcp", "rst"]
    );
}

#[test]
fn ipv6_chain_at_and_beyond_the_limit() {
    let at_limit = [ip_proto::DSTOPTS; MAX_IPV6_EXT_HEADERS];
    let mut spec = Spec::tcp_v6(SYN, 0);
    spec.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &at_limit,
    };
    assert_eq!(tcp_of(&parse(&craft::build(&spec)[..])).flags, SYN);

    let beyond = [ip_proto::DSTOPTS; MAX_IPV6_EXT_HEADERS + 1];
    spec.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &beyond,
    };
    let parsed = parse(&craft::build(&spec)[..]);
    assert_eq!(transport_of(&parsed), Transport::ChainTooLong);
    assert_eq!(counted(&parsed), ["packets", "ipv6", "ipv6_chain_too_long"]);
}

#[test]
fn ipv6_later_fragment_has_no_tcp() {
    let mut spec = Spec::tcp_v6(SYN, 0);
    spec.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &[ip_proto::FRAGMENT],
    };
    let mut frame = craft::build(&spec).to_vec();
    // Fragment offset 1 (8 bytes), in the fragment header after the fixed header.
    frame[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&(1u16 << 3).to_be_bytes());
    let parsed = parse(&frame[..]);
    assert_eq!(transport_of(&parsed), Transport::LaterFragment);
}

#[test]
fn ipv6_extension_longer_than_payload_is_malformed() {
    let mut spec = Spec::tcp_v6(SYN, 0);
    spec.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &[ip_proto::HOPOPTS],
    };
    let frame = craft::build(&spec).to_vec();
    let mut past_frame = frame.clone();
    past_frame[14 + 40 + 1] = 200; // hop-by-hop claims 1608 bytes
    assert_eq!(
        transport_of(&parse(&past_frame[..])),
        Transport::Malformed {
            layer: Layer::Ipv6Extension,
            problem: Problem::Truncated
        }
    );
    // Inside the frame but past the payload length the IPv6 header gives.
    let mut past_payload = frame;
    past_payload[18..20].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(
        transport_of(&parse(&past_payload[..])),
        Transport::Malformed {
            layer: Layer::Ipv6Extension,
            problem: Problem::BadLength
        }
    );
}

#[test]
fn ah_and_udp_are_other_transports() {
    let mut spec = Spec::tcp_v4(0, 0);
    spec.transport = CraftTransport::Udp {
        src_port: 53,
        dst_port: 53,
    };
    let parsed = parse(&craft::build(&spec)[..]);
    // The UDP header right after the 20-byte IPv4 header; the datagram is
    // the 28 bytes of its headers.
    assert_eq!(transport_of(&parsed), Transport::Other { protocol: 17 });
    // The UDP header right after the 20-byte IPv4 header; the datagram is
    // the 28 bytes of its headers.
    let Payload::Ip(ip) = parsed.payload else {
        unreachable!()
    };
    assert_eq!((ip.l4_offset, ip.end), (34, 14 + 28));
    assert_eq!(counted(&parsed), ["packets", "ipv4", "other_transport"]);

    // Authentication header (51): not stepped through, as tshark's definition of
    // "TCP directly over IP" excludes it.
    let mut frame = craft::build(&Spec::tcp_v6(SYN, 0)).to_vec();
    frame[14 + 6] = 51;
    assert_eq!(
        transport_of(&parse(&frame[..])),
        Transport::Other { protocol: 51 }
    );
}

#[test]
fn non_ip_ethertypes_are_counted_as_such() {
    let arp = craft::build(&Spec {
        network: Network::Arp,
        ..Spec::tcp_v4(0, 0)
    });
    let parsed = parse(&arp[..]);
    assert_eq!(parsed.payload, Payload::NonIp { ethertype: 0x0806 });
    assert_eq!(parsed.network_offset, 14);
    assert_eq!(counted(&parsed), ["packets", "non_ip"]);
    for ethertype in [0x88cc_u16, 0x8847, 0x8863, 0x0000, 0xffff, 0x05dc] {
        let mut frame = craft::build(&Spec::tcp_v4(SYN, 0)).to_vec();
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        assert_eq!(parse(&frame[..]).payload, Payload::NonIp { ethertype });
    }
}

#[test]
fn runt_frames_are_malformed_ethernet() {
    for len in 0..14 {
        let parsed = parse(&[0u8; 13][..len]);
        assert_eq!(
            parsed.payload,
            Payload::Malformed {
                layer: Layer::Ethernet
            }
        );
        assert_eq!(counted(&parsed), ["packets", "malformed"]);
    }
}

/// A small, deterministic xorshift generator: the sweep below needs no crate
/// and gives the same cases on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Mutates bytes of well-formed frames at random: the parser must never panic,
/// and whatever it reports must lie inside the frame it was given.
#[test]
fn random_mutations_never_escape_the_frame() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut spec_v6 = Spec::tcp_v6(SYN, 30);
    spec_v6.network = Network::Ipv6 {
        src: craft::CLIENT_V6,
        dst: craft::SERVER_V6,
        extensions: &[ip_proto::HOPOPTS, ip_proto::FRAGMENT],
    };
    let mut spec_vlan = Spec::tcp_v4(tcp_flags::ACK, 30);
    spec_vlan.vlans = &[(ethertype::QINQ, 1), (ethertype::VLAN, 2)];
    let seeds = [
        craft::build(&Spec::tcp_v4(SYN, 30)).to_vec(),
        craft::build(&spec_v6).to_vec(),
        craft::build(&spec_vlan).to_vec(),
    ];
    for _ in 0..200_000 {
        let mut frame = seeds[(rng.next() % seeds.len() as u64) as usize].clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() % frame.len() as u64) as usize;
            frame[at] = rng.next() as u8;
        }
        let cut = (rng.next() % (frame.len() as u64 + 1)) as usize;
        let frame = &frame[..cut];
        let parsed = parse(frame);
        assert!(hits(&parsed, Counter::Packets));
        if let Some((ip, segment)) = parsed.tcp() {
            assert!((ip.offset as usize) < frame.len());
            assert!(segment.offset as usize + TCP_READABLE_LEN <= frame.len());
            if segment.header_complete {
                assert!(segment.offset as usize + segment.header_len as usize <= frame.len());
            } else {
                assert!(hits(&parsed, Counter::Malformed));
                assert_eq!(segment.payload_len, 0);
            }
            assert!(segment.header_len >= 20 && segment.header_len <= 60);
            assert!(hits(&parsed, Counter::Tcp));
        } else {
            assert!(!hits(&parsed, Counter::Tcp));
        }
    }
}

/// `parse_common` must answer exactly as `parse` does wherever it answers:
/// the same segment, in an untagged, whole IP packet right after the
/// Ethernet header, and the same tally. Checked on frames of every shape
/// and on each with single bytes of its headers changed and its length cut,
/// which is where a shortcut would go wrong.
#[test]
fn the_common_frame_shortcut_agrees_with_the_parser() {
    use teardown_common::counters::{tally, tally_common};
    use teardown_common::parse::{CommonTcp, parse_common};

    let mut shapes = Vec::new();
    for flags in [
        SYN,
        SYN_ACK,
        tcp_flags::ACK,
        tcp_flags::FIN | tcp_flags::ACK,
    ] {
        for payload in [0, 1, 100] {
            for options in [0, 12, 40] {
                for v6 in [false, true] {
                    let mut spec = if v6 {
                        Spec::tcp_v6(flags, payload)
                    } else {
                        Spec::tcp_v4(flags, payload)
                    };
                    if let CraftTransport::Tcp { options_len, .. } = &mut spec.transport {
                        *options_len = options;
                    }
                    shapes.push((craft::build(&spec).to_vec(), true));
                }
            }
        }
    }
    // Shapes it must leave to the parser.
    let mut vlan = Spec::tcp_v4(tcp_flags::ACK, 10);
    vlan.vlans = &[(ethertype::VLAN, 7)];
    let mut options = Spec::tcp_v4(tcp_flags::ACK, 10);
    let mut fragment = Spec::tcp_v4(tcp_flags::ACK, 10);
    if let Network::Ipv4 { options_len, .. } = &mut options.network {
        *options_len = 8;
    }
    if let Network::Ipv4 { more_fragments, .. } = &mut fragment.network {
        *more_fragments = true;
    }
    let mut extension = Spec::tcp_v6(tcp_flags::ACK, 10);
    if let Network::Ipv6 { extensions, .. } = &mut extension.network {
        *extensions = &[ip_proto::DSTOPTS];
    }
    let mut udp = Spec::tcp_v4(0, 10);
    udp.transport = CraftTransport::Udp {
        src_port: 53,
        dst_port: 53,
    };
    for spec in [vlan, options, fragment, extension, udp] {
        shapes.push((craft::build(&spec).to_vec(), false));
    }

    let agrees = |frame: &[u8]| -> bool {
        let parsed = parse(frame);
        let Some(common) = parse_common(frame) else {
            return false;
        };
        let Some((ip, segment)) = parsed.tcp() else {
            panic!("shortcut read {common:?}, the parser {parsed:?}: {frame:02x?}");
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
            "{frame:02x?}"
        );
        assert_eq!(tally(&parsed), tally_common(&common), "{frame:02x?}");
        true
    };

    let mut taken = 0;
    let mut mutants = 0;
    for (frame, common) in &shapes {
        assert_eq!(agrees(frame), *common, "{frame:02x?}");
        // Every byte of the headers, set to values that matter to them.
        let headers = frame.len().min(14 + 40 + 60);
        for at in 0..headers {
            for value in [
                0x00, 0x01, 0x05, 0x06, 0x08, 0x20, 0x40, 0x45, 0x46, 0x50, 0x60, 0x86, 0xdd, 0xff,
            ] {
                let mut mutant = frame.clone();
                mutant[at] = value;
                taken += agrees(&mutant) as u32;
                mutants += 1;
            }
        }
        for len in 0..frame.len() {
            taken += agrees(&frame[..len]) as u32;
            mutants += 1;
        }
    }
    // The mutants exercise both answers.
    assert!(
        taken > mutants / 4 && taken < mutants,
        "{taken} of {mutants} taken"
    );
}

/// `frame` with an 802.1Q tag (VLAN 100) inserted after its MAC addresses:
/// the frame a tag-stripping receive path had before it took the tag out.
fn with_outer_tag(frame: &[u8]) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 100]);
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// What the TC programs count for a frame whose outermost tag the kernel
/// moved to the packet's metadata (`Tally::with_stripped_tag` of the frame
/// they read) is what `tally` counts for the frame with its tag, as XDP,
/// tcpdump and the replay see it: for every kind of frame, cut short at
/// every length past the Ethernet header and with its header bytes
/// changed. The one exception, a frame with two tags left after the
/// stripping (three on the wire, too deep for the parser), is checked as
/// such.
#[test]
fn a_tag_the_kernel_stripped_is_counted_as_on_the_frame() {
    use teardown_common::counters::tally;
    let mut fragment = fragment_spec(8, false);
    fragment.payload_len = 40;
    let mut options = Spec::tcp_v4(tcp_flags::ACK, 0);
    options.network = Network::Ipv4 {
        src: craft::CLIENT_V4,
        dst: craft::SERVER_V4,
        options_len: 8,
        fragment_offset: 0,
        more_fragments: false,
    };
    let mut udp = Spec::tcp_v4(0, 30);
    udp.transport = CraftTransport::Udp {
        src_port: 5353,
        dst_port: 4789,
    };
    let mut inner_tagged = Spec::tcp_v6(SYN_ACK, 0);
    inner_tagged.vlans = &[(0x8100, 7)];
    let mut two_tags = Spec::tcp_v4(SYN, 0);
    two_tags.vlans = &[(0x88a8, 7), (0x8100, 8)];
    let arp = Spec {
        network: Network::Arp,
        ..Spec::tcp_v4(0, 0)
    };
    let shapes: Vec<Vec<u8>> = [
        Spec::tcp_v4(SYN, 0),
        Spec::tcp_v4(tcp_flags::ACK | tcp_flags::PSH, 100),
        Spec::tcp_v6(tcp_flags::FIN | tcp_flags::ACK, 0),
        fragment,
        options,
        udp,
        inner_tagged,
        arp,
    ]
    .iter()
    .map(|spec| craft::build(spec).to_vec())
    .collect();

    let is_tag = |at: usize, frame: &[u8]| {
        frame.len() >= at + 2
            && matches!(
                u16::from_be_bytes([frame[at], frame[at + 1]]),
                0x8100 | 0x88a8
            )
    };
    let mut checked = 0;
    let mut check = |frame: &[u8]| {
        if frame.len() < 14 {
            return;
        }
        let read = tally(&parse(frame));
        let on_the_wire = tally(&parse(&with_outer_tag(frame)[..]));
        if is_tag(12, frame) && is_tag(16, frame) {
            // Three tags on the wire: too deep for XDP and the replay; two
            // left for the TC program, which reads on.
            assert_eq!(
                on_the_wire.frame_class,
                teardown_common::counters::class::VLAN_TOO_DEEP * 2 + 1
            );
            return;
        }
        assert_eq!(read.with_stripped_tag(), on_the_wire, "{frame:02x?}");
        checked += 1;
    };
    for frame in &shapes {
        for len in 14..=frame.len() {
            check(&frame[..len]);
        }
        for at in 12..frame.len().min(14 + 4 + 60 + 20) {
            for value in [
                0x00, 0x05, 0x06, 0x08, 0x11, 0x45, 0x81, 0x86, 0x88, 0xa8, 0xdd, 0xff,
            ] {
                let mut mutant = frame.clone();
                mutant[at] = value;
                check(&mutant);
            }
        }
    }
    check(&craft::build(&two_tags)[..]);
    assert!(checked > 5_000, "{checked} frames checked");
}

/// A packet that starts with its IP header (a tun or WireGuard device's):
/// its type by the version in its first byte, and read from offset 0 it
/// counts and parses as the same packet behind an Ethernet header does,
/// cut short anywhere, and its common TCP segment is read the same. The
/// TC programs read such an interface's packets this way.
#[test]
fn a_packet_without_ethernet_header_reads_as_behind_one() {
    use teardown_common::counters::{tally, tally_common};
    use teardown_common::parse::{ip_version_type, parse_common, parse_common_ip, parse_network};
    assert_eq!(ip_version_type(&[0x45u8][..]), ethertype::IPV4);
    assert_eq!(ip_version_type(&[0x60u8, 0][..]), ethertype::IPV6);
    assert_eq!(ip_version_type(&[0x50u8][..]), 0);
    assert_eq!(ip_version_type(&[][..] as &[u8]), 0);
    let mut udp = Spec::tcp_v6(0, 12);
    udp.transport = CraftTransport::Udp {
        src_port: 5353,
        dst_port: 53,
    };
    let mut checked = 0;
    for spec in [
        Spec::tcp_v4(SYN, 0),
        Spec::tcp_v4(tcp_flags::ACK | tcp_flags::PSH, 100),
        Spec::tcp_v6(tcp_flags::FIN | tcp_flags::ACK, 0),
        fragment_spec(8, false),
        udp,
    ] {
        let frame = craft::build(&spec).to_vec();
        for len in 15..=frame.len() {
            let framed = &frame[..len];
            let bare = &frame[14..len];
            let network_type = ip_version_type(bare);
            assert_eq!(network_type, u16::from_be_bytes([frame[12], frame[13]]));
            let behind = parse(framed);
            let payload = parse_network(bare, network_type, 0, usize::MAX);
            let read = Parsed {
                vlan_tags: 0,
                payload,
                network_type,
                network_offset: 0,
            };
            assert_eq!(tally(&read), tally(&behind), "{bare:02x?}");
            // The TCP segment the same, at offsets 14 bytes apart.
            assert_eq!(
                read.tcp()
                    .map(|(ip, tcp)| (ip.offset + 14, tcp.flags, tcp.payload_len)),
                behind
                    .tcp()
                    .map(|(ip, tcp)| (ip.offset, tcp.flags, tcp.payload_len)),
            );
            let common = parse_common_ip(bare, network_type, 0, usize::MAX);
            assert_eq!(
                common.map(|c| tally_common(&c)),
                parse_common(framed).map(|c| tally_common(&c))
            );
            checked += 1;
        }
    }
    assert!(checked > 300, "{checked}");
}

//! The `parse_frame` target: the parser's promises about any bytes.

use teardown_common::{
    counters::{Counter, NO_TCP_SLOT, TCP_SLOTS, class, counters_of, tally, tally_common},
    flow::FlowKey,
    parse::{
        CommonTcp, ETH_HLEN, Fragment, IPV4_MIN_HLEN, IPV6_HLEN, IpVersion, MAX_L4_OFFSET,
        MAX_VLAN_TAGS, Payload, TCP_READABLE_LEN, VLAN_HLEN, parse, parse_common,
    },
    table::{flow_hash, fold_address},
};

/// Parses `frame` with the general parser and the common frame's shortcut
/// and checks what the kernel relies on:
///
/// * nothing panics (indexing, arithmetic overflow: the fuzz build keeps
///   overflow checks on);
/// * every frame lands in exactly one frame class and is counted once, and
///   as TCP exactly when the parser found a segment;
/// * whatever the parser reports lies inside the frame: the headers it read,
///   the addresses the flow key is built from;
/// * the flow hash is the same both ways (both directions of a connection
///   must find one slot);
/// * wherever `parse_common` answers, it answers what `parse` does, tally
///   included (the property `tests/parse.rs` checks on mutated frames).
pub fn check(frame: &[u8]) {
    let parsed = parse(frame);
    let counted = tally(&parsed);
    assert!(
        (counted.frame_class as usize) < class::COUNT,
        "frame class {} out of range: {parsed:?}",
        counted.frame_class
    );
    assert!(
        counted.tcp_slot == NO_TCP_SLOT || (counted.tcp_slot as usize) < TCP_SLOTS,
        "TCP slot {} out of range: {parsed:?}",
        counted.tcp_slot
    );
    let counters = counters_of(&parsed);
    assert_eq!(counters.get(Counter::Packets), 1, "{parsed:?}");
    assert_eq!(
        counters.get(Counter::Tcp),
        parsed.tcp().is_some() as u64,
        "{parsed:?}"
    );
    assert!(parsed.vlan_tags as usize <= MAX_VLAN_TAGS + 1, "{parsed:?}");

    if let Payload::Ip(ip) = &parsed.payload {
        assert_eq!(
            ip.offset as usize,
            ETH_HLEN + VLAN_HLEN * parsed.vlan_tags as usize,
            "the IP header follows the tags: {parsed:?}"
        );
    }
    if let Some((ip, segment)) = parsed.tcp() {
        let ip_header = match ip.version {
            IpVersion::V4 => IPV4_MIN_HLEN,
            IpVersion::V6 => IPV6_HLEN,
        };
        let offset = segment.offset as usize;
        assert!(
            offset >= ip.offset as usize + ip_header && offset <= MAX_L4_OFFSET,
            "TCP header at {offset}: {parsed:?}"
        );
        assert!(offset + TCP_READABLE_LEN <= frame.len(), "{parsed:?}");
        assert!(
            (20..=60).contains(&segment.header_len),
            "header length {}: {parsed:?}",
            segment.header_len
        );
        if segment.header_complete {
            assert!(
                offset + segment.header_len as usize <= frame.len(),
                "{parsed:?}"
            );
        } else {
            assert_eq!(segment.payload_len, 0, "{parsed:?}");
            assert_eq!(counters.get(Counter::Malformed), 1, "{parsed:?}");
        }
        // The payload length comes from a 16-bit IP length field, or from
        // the frame itself (TSO, jumbograms).
        assert!(
            segment.payload_len as usize <= frame.len().max(u16::MAX as usize),
            "payload length {}: {parsed:?}",
            segment.payload_len
        );
        // What the kernel hands the state machine as the datagram's length.
        let ip_len = (offset - ip.offset as usize)
            .checked_add(segment.header_len as usize)
            .and_then(|len| len.checked_add(segment.payload_len as usize));
        assert!(ip_len.is_some_and(|len| len <= u32::MAX as usize));

        let Some((key, _)) = FlowKey::of(frame, ip, segment) else {
            panic!("a TCP segment whose addresses are outside the frame: {parsed:?}");
        };
        let (a, b) = (
            fold_address(&key.addr_a.halves()),
            fold_address(&key.addr_b.halves()),
        );
        assert_eq!(
            flow_hash(a, key.port_a, b, key.port_b),
            flow_hash(b, key.port_b, a, key.port_a),
            "the flow hash must not depend on the direction"
        );
    }

    if let Some(common) = parse_common(frame) {
        let Some((ip, segment)) = parsed.tcp() else {
            panic!("the shortcut read {common:?}, the parser {parsed:?}");
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
            "the shortcut and the parser disagree"
        );
        assert_eq!(counted, tally_common(&common), "the tallies disagree");
    }
}

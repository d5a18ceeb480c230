//! The `decapsulate` target: the tunnel decapsulator's promises about any
//! bytes (the properties `teardown-common/tests/tunnel.rs` checks on
//! crafted frames and their mutations).

use teardown_common::{
    counters::{
        class, encap_slot, encap_tally, encap_tally_of, other_ip_tally, overlay_encap_tally, tally,
        tally_tagged,
    },
    flow::addresses_at,
    parse::{
        CommonTcp, Fragment, IpVersion, MAX_INNER_START, MAX_VLAN_TAGS, Payload, TCP_READABLE_LEN,
        VLAN_HLEN, parse, parse_common,
    },
    tunnel::{
        self, CommonOther, Decap, DecapState, MAX_ENCAP_DEPTH, Tunnel, TunnelPorts, decapsulate,
        decapsulate_in_place, encap, enter_layer, inner_class, may_carry_tunnel, outcome,
        parse_common_overlay, read_common_other, shortcut_tunnel, step_layer,
    },
};

/// The ports the fuzzer's frames are opened with: the defaults, and a
/// configuration that swaps the kinds' ports and adds others, so the same
/// bytes take both UDP tunnels' paths.
const PORTS: [TunnelPorts; 2] = [
    TunnelPorts::DEFAULT,
    TunnelPorts {
        vxlan: [6081, 0, 9999, 1],
        geneve: [4789, 8472, 0, 0],
        ..TunnelPorts::DEFAULT
    },
];

/// Decapsulates `frame` with each of [`PORTS`] and checks what the kernel
/// relies on:
///
/// * nothing panics (the fuzz build keeps overflow checks on);
/// * a tunnel is opened only in a frame the outer parser finds no TCP in
///   and whose class the kernel hands to its tunnel programs (non-IP, or
///   an IP transport other than TCP), and never where the common frame's
///   shortcut (`parse_common`) answers;
/// * the layers are 1 to [`MAX_ENCAP_DEPTH`] known kinds, and the tunnel's
///   outer endpoints are known exactly when an IP tunnel was opened;
/// * a TCP segment inside lies in the frame, its datagram inside what
///   carries it (and, when the outer frame is a whole IP datagram, inside
///   that: a bound the outer parser gives, independent of the layers
///   between), its addresses readable, and reading it again where it
///   lies (the kernel's `Inner::reparse`) gives the same segment;
/// * the kernel's way through (`step_layer` and `enter_layer` without the
///   segment copy) gives the same outcome, tunnel, inner frame and tally;
/// * the kernel's cheap test (`may_carry_tunnel`), which decides whether
///   its tunnel program is asked at all, lets every opened frame through;
/// * the tally agrees with the outcome;
/// * where the common overlay frame's shortcut (`parse_common_overlay`,
///   which the kernel's main programs try first) answers, the
///   decapsulator finds the same tunnel and inner segment, and the
///   tallies are the same; where it calls a frame plain
///   (`read_common_other`), the general parser tallies it the same and
///   the kernel's cheap test says the same of it.
pub fn check(frame: &[u8]) {
    for ports in &PORTS {
        check_with(frame, ports);
    }
    assert_eq!(decapsulate(frame, &TunnelPorts::OFF), Decap::None);
}

fn check_with(frame: &[u8], ports: &TunnelPorts) {
    let decap = decapsulate(frame, ports);
    let parsed = parse(frame);
    if parse_common(frame).is_some() {
        assert_eq!(decap, Decap::None, "the shortcut's frame opened");
    }

    let other = read_common_other(frame, ports);
    if let Some(CommonOther::TaggedTcp { ip_offset, inner }) = other {
        let Some((ip, segment)) = parsed.tcp() else {
            panic!("tagged TCP read, parser found none");
        };
        assert_ne!(parsed.vlan_tags, 0, "tagged TCP untagged");
        assert_eq!(
            (ip.version, ip.offset as usize, ip.fragment, *segment),
            (inner.version, ip_offset, Fragment::Whole, inner.segment),
            "tagged TCP"
        );
        assert_eq!(tally(&parsed), tally_tagged(&inner), "tagged TCP tally");
        assert_eq!(decap, Decap::None, "tagged TCP opened");
    }
    if let Some(CommonOther::Plain {
        v6,
        tagged,
        may_tunnel,
    }) = other
    {
        assert!(parsed.tcp().is_none(), "plain, but TCP");
        assert_eq!(tally(&parsed), other_ip_tally(v6, tagged), "plain tally");
        assert_eq!(
            may_tunnel,
            may_carry_tunnel(frame, &parsed, ports),
            "plain frame's tunnel question"
        );
        if !may_tunnel {
            assert_eq!(decap, Decap::None, "plain frame opened");
        }
    }
    // A layer the main shortcut hands over is the one the tunnel
    // program's own shortcut reads first, with no common TCP frame inside.
    if let Some(CommonOther::Layer { word, carried }) = other {
        assert!(parsed.tcp().is_none(), "a layer, but TCP");
        assert_eq!(
            tally(&parsed),
            other_ip_tally(tunnel::layer_of_word(word).outer_v6, false),
            "a layer's tally"
        );
        assert!(
            may_carry_tunnel(frame, &parsed, ports),
            "a layer not handed over"
        );
        let first =
            tunnel::underlay(frame).and_then(|start| tunnel::read_layer(frame, ports, &start));
        assert_eq!(
            first.map(|layer| (tunnel::layer_word(&layer), layer.carried)),
            Some((word, carried)),
            "the main shortcut's layer against the tunnel program's"
        );
        assert!(
            first.is_some_and(|layer| tunnel::carried_tcp(frame, &layer).is_none()),
            "a layer handed over with the common TCP frame inside"
        );
    }
    if let Some(overlay) = parse_common_overlay(frame, ports) {
        let read = (overlay.tunnel, overlay.ip_offset, overlay.inner);
        assert_shortcut_agrees("overlay", read, &decap);
        assert_eq!(
            tally(&parsed),
            other_ip_tally(overlay.tunnel.outer_family == 6, false)
        );
    }

    // The tunnel program's shortcuts (one layer, or two).
    if let Some(read) = shortcut_tunnel(frame, ports) {
        assert!(
            may_carry_tunnel(frame, &parsed, ports),
            "tunnel program's shortcut, not handed over"
        );
        assert_shortcut_agrees("tunnel program's", read, &decap);
    }

    // The kernel's path.
    let mut state = DecapState::default();
    let kernel = decapsulate_in_place(&mut state, ports, |state, depth| {
        if depth == 0 && !state.begin(frame) {
            return outcome::NONE;
        }
        let stepped = step_layer(frame, state, depth, ports);
        if stepped != outcome::OPENED {
            return stepped;
        }
        enter_layer::<_, false>(frame, state)
    });
    let host = match decap {
        Decap::None => outcome::NONE,
        Decap::Inner { .. } => outcome::INNER,
        Decap::TooDeep { .. } => outcome::TOO_DEEP,
        Decap::Malformed { .. } => outcome::MALFORMED,
        Decap::Unsupported { .. } => outcome::UNSUPPORTED,
    };
    assert_eq!(kernel, host, "kernel path: {decap:?}");

    let Some(tunnel) = decap.tunnel() else {
        assert_eq!(encap_tally(&decap), None);
        return;
    };
    assert_eq!(state.tunnel, *tunnel, "kernel path's tunnel: {decap:?}");
    assert!(parsed.tcp().is_none(), "a tunnel in a TCP frame: {decap:?}");
    assert!(
        may_carry_tunnel(frame, &parsed, ports),
        "opened, but the kernel would not have asked: {decap:?}"
    );
    assert_eq!(
        encap_tally_of(kernel, &state.tunnel, &state.inner),
        encap_tally(&decap),
        "kernel path's tally: {decap:?}"
    );
    let decoded = class::decode(tally(&parsed).frame_class as usize);
    assert!(
        decoded.kind == class::NON_IP
            || decoded
                .ip
                .is_some_and(|(_, _, transport)| transport == class::OTHER_TRANSPORT),
        "opened a frame of class {decoded:?}: {decap:?}"
    );

    let depth = tunnel.depth();
    assert!((1..=MAX_ENCAP_DEPTH).contains(&depth), "{decap:?}");
    assert!(
        tunnel.layers[..depth]
            .iter()
            .all(|&kind| (kind as usize) < encap::COUNT)
            && tunnel.layers[depth..].iter().all(|&kind| kind == 0),
        "{decap:?}"
    );
    assert!(matches!(tunnel.outer_family, 0 | 4 | 6), "{decap:?}");

    let tallied = encap_tally(&decap).expect("a tunnel is tallied");
    assert_eq!(tallied.layers, tunnel.layers);
    let Decap::Inner { inner, .. } = decap else {
        let slot = match decap {
            Decap::Malformed { .. } => encap_slot::MALFORMED,
            Decap::Unsupported { .. } => encap_slot::UNSUPPORTED,
            _ => encap_slot::TOO_DEEP,
        };
        assert_eq!(tallied.outcome as usize, slot, "{decap:?}");
        return;
    };
    let ip_tunnel = tunnel.layers.iter().any(|&kind| encap::is_ip_tunnel(kind));
    assert_eq!(ip_tunnel, tunnel.outer_family != 0, "{decap:?}");
    assert_eq!(
        (
            state.inner.class,
            state.inner.ip_offset,
            state.inner.is_v6,
            state.inner.limit
        ),
        (inner.class, inner.ip_offset, inner.is_v6, inner.limit),
        "kernel path's inner frame: {decap:?}"
    );
    let slot = match inner.class {
        inner_class::TCP => encap_slot::TCP,
        inner_class::OTHER => encap_slot::OTHER,
        inner_class::MALFORMED => encap_slot::MALFORMED,
        inner_class::TOO_DEEP => encap_slot::TOO_DEEP,
        other => panic!("inner class {other}: {decap:?}"),
    };
    assert_eq!(tallied.outcome as usize, slot, "{decap:?}");
    if inner.class != inner_class::TCP {
        return;
    }

    let segment = inner.segment;
    let ip_offset = inner.ip_offset as usize;
    let offset = segment.offset as usize;
    let ip_header = if inner.is_v6 != 0 { 40 } else { 20 };
    assert!(
        ip_offset <= MAX_INNER_START + 2 + MAX_VLAN_TAGS * VLAN_HLEN,
        "{decap:?}"
    );
    assert!(offset >= ip_offset + ip_header, "{decap:?}");
    assert!(offset + TCP_READABLE_LEN <= frame.len(), "{decap:?}");
    assert!((20..=60).contains(&segment.header_len), "{decap:?}");
    if segment.header_complete {
        let header_end = offset + segment.header_len as usize;
        assert!(header_end <= frame.len(), "{decap:?}");
        if inner.limit != u32::MAX {
            assert!(
                header_end + segment.payload_len as usize <= inner.limit as usize,
                "a datagram past what carries it: {decap:?}"
            );
        }
        if let Payload::Ip(outer) = parsed.payload
            && outer.fragment == Fragment::Whole
        {
            assert!(
                header_end + segment.payload_len as usize <= outer.end as usize,
                "a datagram past the outer one ({}): {decap:?}",
                outer.end
            );
        }
    } else {
        assert_eq!(segment.payload_len, 0, "{decap:?}");
    }
    assert_eq!(tallied.incomplete_tcp, !segment.header_complete as u8);
    assert!(
        addresses_at(frame, ip_offset, inner.is_v6 != 0).is_some(),
        "addresses outside the frame: {decap:?}"
    );
    assert_eq!(inner.reparse(frame), Some(segment), "read again: {decap:?}");
    assert_eq!(
        state.inner.reparse(frame),
        Some(segment),
        "kernel path, read again: {decap:?}"
    );
}

/// What a tunnel shortcut read (its tunnel, the inner IP header's offset,
/// the inner segment) is what the decapsulator found, and counts as it
/// does (the host tests' check of the same name).
fn assert_shortcut_agrees(
    which: &str,
    (tunnel, ip_offset, inner_tcp): (Tunnel, usize, CommonTcp),
    decap: &Decap,
) {
    let Decap::Inner {
        tunnel: found,
        inner,
    } = decap
    else {
        panic!("{which} shortcut read {tunnel:?}, decapsulator {decap:?}");
    };
    assert_eq!(
        (
            *found,
            inner.class,
            inner.segment,
            inner.ip_offset as usize,
            inner.is_v6 != 0
        ),
        (
            tunnel,
            inner_class::TCP,
            inner_tcp.segment,
            ip_offset,
            inner_tcp.version == IpVersion::V6
        ),
        "{which} shortcut"
    );
    assert_eq!(
        encap_tally(decap),
        Some(overlay_encap_tally(tunnel.layers)),
        "{which} shortcut's tally"
    );
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::seeds::tunnel_frames;

    /// The seeds pass, whole and cut short.
    #[test]
    fn seeds_pass() {
        let frames = tunnel_frames();
        assert!(frames.len() > 20);
        for frame in &frames {
            for cut in 0..=frame.len() {
                check(&frame[..cut]);
            }
        }
    }
}

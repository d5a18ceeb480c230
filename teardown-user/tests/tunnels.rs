//! Connections inside tunnels, through the kernel's replay program: a
//! capture crafted with one TCP conversation per encapsulation this kernel
//! cannot create as a device (GRE, Geneve, IP-in-IP, MPLS, PPPoE, VN-Tag,
//! 802.1ah) and VXLAN, IPv4 and IPv6 inside, each replayed by
//! `teardown replay --connections`.
//!
//! Judges: tshark decodes the capture and must find every inner
//! conversation (so the frames are what they claim to be, independently
//! of teardown's parser); each tunnelled connection's record must be the
//! record of the same conversation replayed without its tunnel (the
//! untunnelled path is the one held to Zeek's verdicts), plus the tunnel
//! it came through, whose layers, id and outer endpoints are those the
//! frames were built with. Zeek's own encapsulated traces (MPLS in VLAN,
//! 802.1ah, VN-Tag) must give their tunnels too.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Value, json};
use support::{run, shared_dir, teardown_bin};
use teardown_common::{
    craft::{self, Encap, Spec, Transport},
    parse::tcp_flags::{ACK, FIN, PSH, SYN},
};

/// One encapsulation of the capture: how to wrap a frame, and the
/// `tunnel` its records must carry.
struct Case {
    name: &'static str,
    wrap: fn(&[u8]) -> craft::Frame,
    tunnel: Value,
}

const TUNNEL_A_V4: &str = "198.51.100.1";
const TUNNEL_B_V4: &str = "198.51.100.2";

fn outer_v6() -> (String, String) {
    let address = |bytes: [u8; 16]| std::net::Ipv6Addr::from(bytes).to_string();
    (address(craft::TUNNEL_A_V6), address(craft::TUNNEL_B_V6))
}

fn cases() -> Vec<Case> {
    let (a6, b6) = outer_v6();
    vec![
        Case {
            name: "vxlan",
            wrap: |inner| {
                let encap = Encap::Vxlan {
                    vni: 4242,
                    port: 4789,
                    outer_v6: false,
                };
                craft::wrap(inner, &encap, &[])
            },
            tunnel: json!({"layers": ["vxlan"], "id": 4242, "outer_src": TUNNEL_A_V4, "outer_dst": TUNNEL_B_V4}),
        },
        Case {
            name: "vxlan over IPv6, flannel's port",
            wrap: |inner| {
                let encap = Encap::Vxlan {
                    vni: 7,
                    port: 8472,
                    outer_v6: true,
                };
                craft::wrap(inner, &encap, &[])
            },
            tunnel: json!({"layers": ["vxlan"], "id": 7, "outer_src": a6, "outer_dst": b6}),
        },
        Case {
            name: "geneve with options",
            wrap: |inner| {
                let encap = Encap::Geneve {
                    vni: 99,
                    options_len: 12,
                    ethernet: true,
                    outer_v6: false,
                };
                craft::wrap(inner, &encap, &[])
            },
            tunnel: json!({"layers": ["geneve"], "id": 99, "outer_src": TUNNEL_A_V4, "outer_dst": TUNNEL_B_V4}),
        },
        Case {
            name: "gre with key, checksum and sequence, bridging Ethernet",
            wrap: |inner| {
                let encap = Encap::Gre {
                    key: Some(0xbeef),
                    checksum: true,
                    sequence: true,
                    ethernet: true,
                    outer_v6: false,
                };
                craft::wrap(inner, &encap, &[])
            },
            tunnel: json!({"layers": ["gre"], "id": 0xbeef, "outer_src": TUNNEL_A_V4, "outer_dst": TUNNEL_B_V4}),
        },
        Case {
            name: "gre over IPv6, IP inside",
            wrap: |inner| {
                let encap = Encap::Gre {
                    key: None,
                    checksum: false,
                    sequence: false,
                    ethernet: false,
                    outer_v6: true,
                };
                craft::wrap(inner, &encap, &[])
            },
            tunnel: json!({"layers": ["gre"], "outer_src": a6, "outer_dst": b6}),
        },
        Case {
            name: "ip in ip",
            wrap: |inner| craft::wrap(inner, &Encap::IpIp { outer_v6: false }, &[]),
            tunnel: json!({"layers": ["ipip"], "outer_src": TUNNEL_A_V4, "outer_dst": TUNNEL_B_V4}),
        },
        Case {
            name: "ip in ipv6",
            wrap: |inner| craft::wrap(inner, &Encap::IpIp { outer_v6: true }, &[]),
            tunnel: json!({"layers": ["ipip"], "outer_src": a6, "outer_dst": b6}),
        },
        Case {
            name: "mpls, two labels, in a vlan",
            wrap: |inner| {
                let encap = Encap::Mpls {
                    labels: &[1000, 2000],
                };
                craft::wrap(inner, &encap, &[(0x8100, 10)])
            },
            tunnel: json!({"layers": ["mpls"], "id": 2000}),
        },
        Case {
            name: "pppoe in qinq",
            wrap: |inner| {
                let encap = Encap::Pppoe { session: 0x1234 };
                craft::wrap(inner, &encap, &[(0x88a8, 100), (0x8100, 200)])
            },
            tunnel: json!({"layers": ["pppoe"], "id": 0x1234}),
        },
        Case {
            name: "gre over IPv6 on a vlan-tagged underlay",
            wrap: |inner| {
                let gre = Encap::Gre {
                    key: Some(77),
                    checksum: true,
                    sequence: false,
                    ethernet: false,
                    outer_v6: true,
                };
                craft::wrap(inner, &gre, &[(0x8100, 30)])
            },
            tunnel: json!({"layers": ["gre"], "id": 77, "outer_src": a6, "outer_dst": b6}),
        },
        Case {
            name: "vn-tag",
            wrap: |inner| craft::wrap(inner, &Encap::VnTag { vif: 55 }, &[]),
            tunnel: json!({"layers": ["vntag"], "id": 55}),
        },
        Case {
            name: "802.1ah",
            wrap: |inner| craft::wrap(inner, &Encap::Pbb { isid: 0x12345 }, &[]),
            tunnel: json!({"layers": ["pbb"], "id": 0x12345}),
        },
        Case {
            name: "vxlan inside gre (two layers)",
            wrap: |inner| {
                let vxlan = Encap::Vxlan {
                    vni: 31,
                    port: 4789,
                    outer_v6: false,
                };
                let inside = craft::wrap(inner, &vxlan, &[]);
                let gre = Encap::Gre {
                    key: Some(5),
                    checksum: false,
                    sequence: false,
                    ethernet: true,
                    outer_v6: false,
                };
                craft::wrap(inside.as_bytes(), &gre, &[])
            },
            // The outer endpoints are the innermost IP tunnel's: VXLAN's.
            tunnel: json!({"layers": ["gre", "vxlan"], "id": 31, "outer_src": TUNNEL_A_V4, "outer_dst": TUNNEL_B_V4}),
        },
        Case {
            // The main program reads the GRE layer and hands it over; the
            // tunnel program's second reading finds another tunnel where
            // it wants TCP, and its general way opens all three.
            name: "vxlan inside vxlan inside gre (three layers)",
            wrap: |inner| {
                let vxlan = |vni| Encap::Vxlan {
                    vni,
                    port: 4789,
                    outer_v6: false,
                };
                let inside = craft::wrap(inner, &vxlan(33), &[]);
                let middle = craft::wrap(inside.as_bytes(), &vxlan(32), &[]);
                let gre = Encap::Gre {
                    key: Some(6),
                    checksum: false,
                    sequence: false,
                    ethernet: true,
                    outer_v6: false,
                };
                craft::wrap(middle.as_bytes(), &gre, &[])
            },
            tunnel: json!({"layers": ["gre", "vxlan", "vxlan"], "id": 33, "outer_src": TUNNEL_A_V4, "outer_dst": TUNNEL_B_V4}),
        },
    ]
}

/// One graceful conversation from `client_port` to port 80: handshake,
/// 100 bytes each way, FIN from the client, FIN from the server, the last
/// ACK. `(from_client, flags, seq, ack, payload)` per segment.
const CONVERSATION: [(bool, u8, u32, u32, u16); 9] = [
    (true, SYN, 1000, 0, 0),
    (false, SYN | ACK, 5000, 1001, 0),
    (true, ACK, 1001, 5001, 0),
    (true, PSH | ACK, 1001, 5001, 100),
    (false, ACK, 5001, 1101, 0),
    (false, PSH | ACK, 5001, 1101, 100),
    (true, FIN | ACK, 1101, 5101, 0),
    (false, FIN | ACK, 5101, 1102, 0),
    (true, ACK, 1102, 5102, 0),
];

fn conversation(client_port: u16, v6: bool) -> Vec<craft::Frame> {
    CONVERSATION
        .iter()
        .map(|&(from_client, flags, seq, ack, payload_len)| {
            let base = if v6 {
                Spec::tcp_v6(flags, payload_len)
            } else {
                Spec::tcp_v4(flags, payload_len)
            };
            let spec = Spec {
                transport: Transport::Tcp {
                    src_port: client_port,
                    dst_port: 80,
                    seq,
                    ack,
                    flags,
                    options_len: 0,
                },
                ..base
            };
            let spec = if from_client { spec } else { spec.reversed() };
            // `reversed` keeps seq and ack: they are the sender's already.
            craft::build(&spec)
        })
        .collect()
}

/// A classic pcap (Ethernet, microseconds), one frame per millisecond.
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&4u16.to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&65535u32.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    for (index, frame) in frames.iter().enumerate() {
        let at_us = 1_700_000_000_000_000u64 + index as u64 * 1000;
        bytes.extend_from_slice(&((at_us / 1_000_000) as u32).to_le_bytes());
        bytes.extend_from_slice(&((at_us % 1_000_000) as u32).to_le_bytes());
        bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        bytes.extend_from_slice(frame);
    }
    std::fs::write(path, bytes).expect("writing the capture");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("teardown-tunnels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// The records of `teardown replay --connections`, by client port.
fn replay(capture: &Path, extra: &[&str]) -> BTreeMap<u16, Value> {
    let output = run(Command::new(teardown_bin())
        .args(["replay", "--connections"])
        .args(extra)
        .arg(capture));
    let mut records = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let record: Value = serde_json::from_str(line).expect("a JSON line");
        let port = record["id.orig_p"].as_u64().expect("orig port") as u16;
        assert!(
            records.insert(port, record).is_none(),
            "two records for client port {port}"
        );
    }
    records
}

/// The counters of `teardown replay --json` (one file).
fn counts(capture: &Path, extra: &[&str]) -> Value {
    let output = run(Command::new(teardown_bin())
        .args(["replay", "--json"])
        .args(extra)
        .arg(capture));
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

/// Inner conversations tshark finds: (client port, frames).
fn tshark_conversations(capture: &Path) -> BTreeMap<u16, usize> {
    let output = run(Command::new("tshark")
        .args(["-n", "-r"])
        .arg(capture)
        // Decode 8472 as VXLAN too, as teardown does by default.
        .args([
            "-d",
            "udp.port==8472,vxlan",
            "-T",
            "fields",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
        ]));
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let ports: Vec<u16> = line
            .split('\t')
            .filter_map(|field| field.split(',').next_back()?.parse().ok())
            .collect();
        if let [src, dst] = ports[..] {
            let client = if src == 80 { dst } else { src };
            *found.entry(client).or_insert(0) += 1;
        }
    }
    found
}

/// The record without what may differ between two replays of one
/// conversation (its uid, file) and without its tunnel.
fn comparable(record: &Value) -> Value {
    let mut record = record.clone();
    let fields = record.as_object_mut().expect("a JSON object");
    for key in ["uid", "file", "tunnel"] {
        fields.remove(key);
    }
    record
}

#[test]
fn every_encapsulation_gives_the_inner_connection_its_record_and_its_tunnel() {
    let cases = cases();
    let (mut plain, mut tunnelled) = (Vec::new(), Vec::new());
    let mut expected = BTreeMap::new();
    for (index, case) in cases.iter().enumerate() {
        for v6 in [false, true] {
            let port = 41000 + 2 * index as u16 + v6 as u16;
            for frame in conversation(port, v6) {
                plain.push(frame.as_bytes().to_vec());
                tunnelled.push((case.wrap)(frame.as_bytes()).as_bytes().to_vec());
            }
            expected.insert(port, (case, v6));
        }
    }
    let (plain_capture, tunnel_capture) = (scratch("plain.pcap"), scratch("tunnelled.pcap"));
    write_pcap(&plain_capture, &plain);
    write_pcap(&tunnel_capture, &tunnelled);

    // The capture is what it claims: tshark finds every inner segment.
    let decoded = tshark_conversations(&tunnel_capture);
    for (port, (case, v6)) in &expected {
        assert_eq!(
            decoded.get(port).copied(),
            Some(CONVERSATION.len()),
            "tshark does not find the {} conversation (IPv6 inside: {v6}) of port {port}",
            case.name
        );
    }

    let untunnelled = replay(&plain_capture, &[]);
    let records = replay(&tunnel_capture, &[]);
    for (port, (case, v6)) in &expected {
        let what = format!("{} (IPv6 inside: {v6}), client port {port}", case.name);
        let judge = untunnelled
            .get(port)
            .unwrap_or_else(|| panic!("no untunnelled record for {what}"));
        assert_eq!(judge["conn_state"], "SF", "untunnelled {what}: {judge}");
        assert!(judge.get("tunnel").is_none(), "untunnelled {what}: {judge}");
        let record = records
            .get(port)
            .unwrap_or_else(|| panic!("no record for {what}"));
        assert_eq!(
            comparable(record),
            comparable(judge),
            "{what}: the tunnelled record differs from the untunnelled one"
        );
        assert_eq!(record["tunnel"], case.tunnel, "{what}: {record}");
    }
    assert_eq!(
        records.len(),
        expected.len(),
        "records of no conversation: {records:?}"
    );

    // Tunnels off: the same capture gives no connection at all.
    let off = replay(&tunnel_capture, &["--no-tunnels"]);
    assert!(off.is_empty(), "--no-tunnels still opened: {off:?}");

    // The counters: every frame a tunnelled TCP segment, none of them
    // malformed; with tunnels off (counters only, no --connections) none
    // opened.
    let frames = tunnelled.len() as u64;
    let on = counts(&tunnel_capture, &[]);
    assert_eq!(
        (
            &on["tunnelled"],
            &on["tunnelled_tcp"],
            &on["tunnel_malformed"]
        ),
        (&json!(frames), &json!(frames), &json!(0)),
        "tunnel counters: {on}"
    );
    let off = counts(&tunnel_capture, &["--no-tunnels"]);
    assert_eq!(
        (&off["tunnelled"], &off["tunnelled_tcp"], &off["frames"]),
        (&json!(0), &json!(0), &json!(frames)),
        "tunnel counters with --no-tunnels: {off}"
    );

    // Ports replace the defaults: VXLAN on 4789 and 8472 is no longer
    // opened (nor a conversation inside it, under GRE or not), the others
    // are.
    let moved = replay(&tunnel_capture, &["--vxlan-port", "4790"]);
    for (port, (case, _)) in &expected {
        let vxlan_default = case.tunnel["layers"]
            .as_array()
            .expect("layers")
            .contains(&json!("vxlan"));
        assert_eq!(
            moved.contains_key(port),
            !vxlan_default,
            "--vxlan-port 4790: {} (port {port})",
            case.name
        );
    }
    let _ = std::fs::remove_dir_all(tunnel_capture.parent().expect("scratch dir"));
}

#[test]
fn zeeks_encapsulated_traces_give_their_tunnels() {
    let traces = shared_dir().join("corpus/zeek/traces");
    let tunnels = |trace: &str| -> BTreeMap<u16, Value> {
        replay(&traces.join(trace), &[])
            .into_iter()
            .map(|(port, record)| (port, record["tunnel"].clone()))
            .collect()
    };
    // tshark: frame 1 is plain VLAN, frame 2 carries label 16106, frame 3
    // the stack 254, 99.
    assert_eq!(
        tunnels("core.mpls-in-vlan.pcap"),
        BTreeMap::from([
            (19244, Value::Null),
            (32828, json!({"layers": ["mpls"], "id": 16106})),
            (61193, json!({"layers": ["mpls"], "id": 99})),
        ])
    );
    assert_eq!(
        tunnels("core.pbb.pcap"),
        BTreeMap::from([(49601, json!({"layers": ["pbb"], "id": 2014020}))])
    );
    // The VN-Tag's destination virtual interface is 0 in this trace.
    assert_eq!(
        tunnels("core.vntag-in-vlan.pcap"),
        BTreeMap::from([(443, json!({"layers": ["vntag"]}))])
    );
}

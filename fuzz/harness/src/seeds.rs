//! Seed inputs for the three targets, from capture files and from frames
//! crafted here, so the fuzzer starts from real traffic (and from the
//! tcpdump corpus's deliberately broken frames) rather than from nothing.

use std::collections::{BTreeMap, HashMap};

use teardown_common::{
    conn::Segment,
    craft::{self, Encap, Network, Spec, Transport as CraftTransport},
    flow::{Direction, FlowKey},
    parse::{Payload, Transport, ethertype, ip_proto, parse, parse_common, tcp_flags},
};

use crate::{
    capture::{CaptureReader, to_ethernet},
    conversation::{Decoder, HEADER_LEN, Header, STEP_LEN},
};

/// Capture seeds are cut to this: the reader's paths are all exercised in
/// the first blocks of a file, and libFuzzer mutates short inputs faster.
pub const MAX_CAPTURE_SEED: usize = 64 * 1024;
/// Frames are cut to what `teardown replay` feeds the kernel.
pub const MAX_FRAME_SEED: usize = 3520;
/// Frames kept per parser outcome (see [`shape`]): a few, not thousands of
/// frames that differ only in addresses and sequence numbers.
pub const FRAMES_PER_SHAPE: usize = 4;
/// Steps kept per conversation, and conversations kept per flag pattern.
pub const MAX_CONVERSATION_STEPS: usize = 256;
pub const CONVERSATIONS_PER_SHAPE: usize = 2;

/// Zeek's SYN timeout (5 s) and idle timeout (300 s) in the header's units.
const ZEEK_SYN_TENTHS: u8 = 49;
const ZEEK_IDLE_TENS: u8 = 29;

/// A segment of a conversation: whether endpoint a sent it, the segment,
/// whether its header was complete, and when it was sent.
type Sent = (bool, Segment, bool, u64);

/// Seeds for every target, deduplicated.
#[derive(Default)]
pub struct Seeds {
    /// (name, bytes) for `capture_reader`.
    pub captures: Vec<(String, Vec<u8>)>,
    /// For `parse_frame`, by shape.
    frames: HashMap<String, Vec<Vec<u8>>>,
    /// For `conn_state`, by flag pattern.
    conversations: HashMap<Vec<(bool, u8)>, Vec<Vec<u8>>>,
}

impl Seeds {
    pub fn frames(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.frames.values().flatten()
    }

    pub fn conversations(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.conversations.values().flatten()
    }

    pub fn add_frame(&mut self, frame: &[u8]) {
        let frame = &frame[..frame.len().min(MAX_FRAME_SEED)];
        let kept = self.frames.entry(shape(frame)).or_default();
        if kept.len() < FRAMES_PER_SHAPE && !kept.iter().any(|seen| seen == frame) {
            kept.push(frame.to_vec());
        }
    }

    pub fn add_conversation(&mut self, pattern: Vec<(bool, u8)>, input: Vec<u8>) {
        let kept = self.conversations.entry(pattern).or_default();
        if kept.len() < CONVERSATIONS_PER_SHAPE && !kept.contains(&input) {
            kept.push(input);
        }
    }

    /// Everything a capture file offers: itself (cut), its frames, and its
    /// TCP conversations. Records past a damaged part are lost, as in
    /// `teardown replay`; the file is still a capture seed.
    pub fn add_capture(&mut self, name: &str, file: &[u8]) {
        self.captures.push((
            name.to_string(),
            file[..file.len().min(MAX_CAPTURE_SEED)].to_vec(),
        ));
        let Ok(reader) = CaptureReader::new(file) else {
            return;
        };
        // By flow key, the segments in capture order: (from endpoint a,
        // segment, header complete, time).
        let mut flows: BTreeMap<FlowKey, (Direction, Vec<Sent>)> = BTreeMap::new();
        for record in reader.map_while(Result::ok) {
            let (_, Some(frame)) = to_ethernet(record.link_type, &record.data) else {
                continue;
            };
            self.add_frame(&frame);
            let parsed = parse(&frame[..]);
            let Some((ip, tcp)) = parsed.tcp() else {
                continue;
            };
            let Some((key, direction)) = FlowKey::of(&frame[..], ip, tcp) else {
                continue;
            };
            let segment = Segment {
                flags: tcp.flags,
                seq: tcp.seq,
                ack: tcp.ack,
                window: tcp.window,
                len: tcp.payload_len,
                ip_len: 0,
                src_port: tcp.src_port,
                dst_port: tcp.dst_port,
            };
            let (first, segments) = flows.entry(key).or_insert((direction, Vec::new()));
            if segments.len() < MAX_CONVERSATION_STEPS {
                segments.push((
                    direction == *first,
                    segment,
                    tcp.header_complete,
                    record.timestamp_ns,
                ));
            }
        }
        for (_, segments) in flows.into_values() {
            let Some((_, first, _, start_ns)) = segments.first() else {
                continue;
            };
            let header = Header {
                ports: [first.src_port, first.dst_port],
                start_ns: *start_ns,
                syn_tenths: ZEEK_SYN_TENTHS,
                idle_tens: ZEEK_IDLE_TENS,
            };
            self.add_conversation(
                segments
                    .iter()
                    .map(|(from_a, segment, _, _)| (*from_a, segment.flags))
                    .collect(),
                encode_conversation(&header, &segments),
            );
        }
    }

    /// Frames, conversations and two small captures written here, so the
    /// fuzzer has a start even without the shared capture corpus.
    pub fn add_crafted(&mut self) {
        use tcp_flags::{ACK, FIN, PSH, RST, SYN};
        let mut frames = Vec::new();
        for flags in [SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST, RST | ACK] {
            for spec in [Spec::tcp_v4(flags, 0), Spec::tcp_v6(flags, 100)] {
                frames.push(craft::build(&spec).to_vec());
            }
        }
        let mut tagged = Spec::tcp_v4(ACK, 10);
        tagged.vlans = &[(ethertype::QINQ, 1), (ethertype::VLAN, 2)];
        let mut options = Spec::tcp_v4(ACK, 10);
        if let Network::Ipv4 { options_len, .. } = &mut options.network {
            *options_len = 8;
        }
        if let CraftTransport::Tcp { options_len, .. } = &mut options.transport {
            *options_len = 12;
        }
        let mut fragment = Spec::tcp_v4(ACK, 10);
        if let Network::Ipv4 { more_fragments, .. } = &mut fragment.network {
            *more_fragments = true;
        }
        let mut extensions = Spec::tcp_v6(ACK, 10);
        if let Network::Ipv6 { extensions, .. } = &mut extensions.network {
            *extensions = &[ip_proto::HOPOPTS, ip_proto::ROUTING, ip_proto::FRAGMENT];
        }
        let mut udp = Spec::tcp_v4(0, 10);
        udp.transport = CraftTransport::Udp {
            src_port: 53,
            dst_port: 53,
        };
        let mut arp = Spec::tcp_v4(0, 0);
        arp.network = Network::Arp;
        for spec in [tagged, options, fragment, extensions, udp, arp] {
            frames.push(craft::build(&spec).to_vec());
        }
        for frame in frames.iter().chain(&tunnel_frames()) {
            self.add_frame(frame);
        }
        self.captures
            .push(("crafted.pcap".into(), pcap_file(&frames)));
        self.captures
            .push(("crafted.pcapng".into(), pcapng_file(&frames)));

        // A graceful close, a refused connect, an abort: (from a, flags,
        // seq, ack, payload length), 1 ms apart.
        type Exchange = &'static [(bool, u8, u32, u32, u32)];
        let conversations: [Exchange; 3] = [
            &[
                (true, SYN, 100, 0, 0),
                (false, SYN | ACK, 5000, 101, 0),
                (true, ACK, 101, 5001, 0),
                (true, PSH | ACK, 101, 5001, 20),
                (false, PSH | ACK, 5001, 121, 30),
                (true, FIN | ACK, 121, 5031, 0),
                (false, FIN | ACK, 5031, 122, 0),
                (true, ACK, 122, 5032, 0),
            ],
            &[(true, SYN, 100, 0, 0), (false, RST | ACK, 0, 101, 0)],
            &[
                (true, SYN, 100, 0, 0),
                (false, SYN | ACK, 5000, 101, 0),
                (true, ACK, 101, 5001, 0),
                (true, RST, 101, 0, 0),
            ],
        ];
        let header = Header {
            ports: [40_000, 80],
            start_ns: 1_000_000_000,
            syn_tenths: ZEEK_SYN_TENTHS,
            idle_tens: ZEEK_IDLE_TENS,
        };
        for conversation in conversations {
            let segments: Vec<_> = conversation
                .iter()
                .enumerate()
                .map(|(index, &(from_a, flags, seq, ack, len))| {
                    let segment = Segment {
                        flags,
                        seq,
                        ack,
                        window: 65_535,
                        len,
                        ip_len: 0,
                        src_port: header.ports[!from_a as usize],
                        dst_port: header.ports[from_a as usize],
                    };
                    (
                        from_a,
                        segment,
                        true,
                        header.start_ns + index as u64 * 1_000_000,
                    )
                })
                .collect();
            self.add_conversation(
                conversation.iter().map(|s| (s.0, s.1)).collect(),
                encode_conversation(&header, &segments),
            );
        }
    }
}

/// What the parser makes of a frame, without what varies from packet to
/// packet of one kind (ports, sequence numbers, payload size).
fn shape(frame: &[u8]) -> String {
    let mut parsed = parse(frame);
    if let Payload::Ip(ip) = &mut parsed.payload
        && let Transport::Tcp(segment) = &mut ip.transport
    {
        segment.src_port = 0;
        segment.dst_port = 0;
        segment.seq = 0;
        segment.ack = 0;
        segment.window = 0;
        segment.payload_len = segment.payload_len.min(1);
    }
    format!("{parsed:?} {}", parse_common(frame).is_some())
}

fn encode_conversation(header: &Header, segments: &[Sent]) -> Vec<u8> {
    let mut encoder = Decoder::new(header);
    let mut input = Vec::with_capacity(HEADER_LEN + segments.len() * STEP_LEN);
    input.extend(header.encode());
    for (from_a, segment, complete, at) in segments {
        let mut step = encoder.encode(*from_a, segment, *at);
        if !complete {
            step[0] |= crate::conversation::control::INCOMPLETE;
        }
        input.extend(step);
    }
    input
}

/// A little-endian, microsecond pcap file of Ethernet frames, 1 ms apart.
pub fn pcap_file(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0xA1B2_C3D4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    for word in [0u32, 0, 65_535, 1] {
        out.extend(word.to_le_bytes());
    }
    for (index, frame) in frames.iter().enumerate() {
        for word in [
            1_700_000_000,
            index as u32 * 1000,
            frame.len() as u32,
            frame.len() as u32,
        ] {
            out.extend(word.to_le_bytes());
        }
        out.extend(frame);
    }
    out
}

fn pcapng_block(out: &mut Vec<u8>, block_type: u32, body: &[u8]) {
    let padded = body.len().div_ceil(4) * 4;
    let total = (12 + padded) as u32;
    out.extend(block_type.to_le_bytes());
    out.extend(total.to_le_bytes());
    out.extend(body);
    out.resize(out.len() + padded - body.len(), 0);
    out.extend(total.to_le_bytes());
}

/// A pcapng file of Ethernet frames: a section, an interface with
/// nanosecond timestamps, an enhanced packet block per frame, and one
/// simple packet block.
pub fn pcapng_file(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut section = Vec::new();
    section.extend(0x1A2B_3C4Du32.to_le_bytes());
    section.extend(1u16.to_le_bytes());
    section.extend(0u16.to_le_bytes());
    section.extend(u64::MAX.to_le_bytes());
    pcapng_block(&mut out, 0x0A0D_0D0A, &section);
    // Ethernet, snap length 0; if_tsresol = 9 (nanoseconds), end of options.
    pcapng_block(
        &mut out,
        1,
        &[1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0],
    );
    for (index, frame) in frames.iter().enumerate() {
        let at = 1_700_000_000_000_000_000u64 + index as u64 * 1_000_000;
        let mut body = Vec::new();
        for word in [
            0u32,
            (at >> 32) as u32,
            at as u32,
            frame.len() as u32,
            frame.len() as u32,
        ] {
            body.extend(word.to_le_bytes());
        }
        body.extend(frame);
        pcapng_block(&mut out, 6, &body);
    }
    if let Some(frame) = frames.first() {
        let mut body = (frame.len() as u32).to_le_bytes().to_vec();
        body.extend(frame);
        pcapng_block(&mut out, 3, &body);
    }
    out
}

/// Encapsulated frames: a TCP segment inside each kind of layer
/// `craft::wrap` writes, alone and nested up to the depth limit and one
/// past it, for the `decapsulate` target (and `parse_frame`).
pub fn tunnel_frames() -> Vec<Vec<u8>> {
    use tcp_flags::{ACK, SYN};
    let vlan: &[(u16, u16)] = &[(ethertype::VLAN, 100)];
    let qinq: &[(u16, u16)] = &[(ethertype::QINQ, 10), (ethertype::VLAN, 20)];
    let mut out = Vec::new();
    for inner in [
        craft::build(&Spec::tcp_v4(SYN, 0)).to_vec(),
        craft::build(&Spec::tcp_v6(ACK, 20)).to_vec(),
    ] {
        let mut layers: Vec<(Encap, &[(u16, u16)])> = Vec::new();
        for outer_v6 in [false, true] {
            layers.push((
                Encap::Vxlan {
                    vni: 42,
                    port: 4789,
                    outer_v6,
                },
                &[],
            ));
            for (options_len, ethernet) in [(0, true), (8, false)] {
                let geneve = Encap::Geneve {
                    vni: 7,
                    options_len,
                    ethernet,
                    outer_v6,
                };
                layers.push((geneve, &[]));
            }
            for (key, checksum, sequence, ethernet) in
                [(None, false, false, false), (Some(5), true, true, true)]
            {
                let gre = Encap::Gre {
                    key,
                    checksum,
                    sequence,
                    ethernet,
                    outer_v6,
                };
                layers.push((gre, &[]));
            }
            layers.push((Encap::IpIp { outer_v6 }, &[]));
        }
        layers.push((Encap::Mpls { labels: &[16, 17] }, vlan));
        layers.push((Encap::Pppoe { session: 3 }, qinq));
        layers.push((Encap::VnTag { vif: 9 }, &[]));
        layers.push((Encap::Pbb { isid: 1000 }, &[(ethertype::QINQ, 1)]));
        layers.push((Encap::FabricPath, &[]));
        for (layer, vlans) in &layers {
            out.push(craft::wrap(&inner, layer, vlans).to_vec());
        }
        // Nested: MPLS in GRE, PPPoE and 802.1ah in VXLAN, and four VXLAN
        // layers (one more than the parser opens).
        let mpls = craft::wrap(&inner, &Encap::Mpls { labels: &[1] }, &[]);
        let gre = Encap::Gre {
            key: None,
            checksum: false,
            sequence: false,
            ethernet: false,
            outer_v6: false,
        };
        out.push(craft::wrap(&mpls, &gre, &[]).to_vec());
        let vxlan = Encap::Vxlan {
            vni: 1,
            port: 8472,
            outer_v6: false,
        };
        let pppoe = craft::wrap(&inner, &Encap::Pppoe { session: 1 }, &[]);
        out.push(craft::wrap(&pppoe, &vxlan, &[]).to_vec());
        let pbb = craft::wrap(&inner, &Encap::Pbb { isid: 2 }, &[]);
        out.push(craft::wrap(&pbb, &vxlan, &[]).to_vec());
        let mut nested = inner.clone();
        for _ in 0..4 {
            nested = craft::wrap(&nested, &vxlan, &[]).to_vec();
            out.push(nested.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crafted seeds are what they claim to be, and pass the checks.
    #[test]
    fn crafted_seeds_pass_every_check() {
        let mut seeds = Seeds::default();
        seeds.add_crafted();
        assert_eq!(seeds.captures.len(), 2);
        for (name, file) in &seeds.captures {
            let records = CaptureReader::new(&file[..])
                .unwrap_or_else(|err| panic!("{name}: {err}"))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(records.len() >= 20, "{name}: {} records", records.len());
            crate::captures::check(file);
        }
        assert!(seeds.frames().count() >= 15);
        for frame in seeds.frames() {
            crate::frame::check(frame);
        }
        assert_eq!(seeds.conversations().count(), 3);
        for conversation in seeds.conversations() {
            crate::conversation::check(conversation);
        }
    }
}

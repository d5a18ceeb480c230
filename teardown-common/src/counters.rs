//! Packet counters.
//!
//! The kernel keeps [`Tallies`] in one per-CPU array slot: a few frame-level
//! tallies and a histogram of TCP segments by flag byte and whether they carry
//! payload. Each frame costs a fixed handful of increments however many of the
//! user-facing [`Counter`]s it touches; user space derives those (SYN, SYN-ACK,
//! FIN, RST, pure ACK, ...) from the histogram. Both sides go through
//! [`tally`] and [`Tallies::totals`], so they cannot drift.

use crate::parse::{Fragment, IpVersion, Parsed, Payload, Transport, tcp_flags};
use crate::tunnel::{
    Decap, Inner, MAX_ENCAP_DEPTH, Tunnel, encap, inner_class, outcome as tunnel_outcome,
};

/// Declares the [`Counter`] enum together with its stable key and help text.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])+ $variant:ident => $key:literal, )+) => {
        /// One user-facing packet counter. The discriminant indexes [`Counters::values`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant, )+ ];

            /// The key used in JSON output and metric labels.
            pub const fn key(self) -> &'static str {
                match self { $( Counter::$variant => $key, )+ }
            }

            /// One line saying what the counter counts.
            pub const fn help(self) -> &'static str {
                match self { $( Counter::$variant => concat!($($doc),+), )+ }
            }
        }
    };
}

counters! {
    /// Frames seen, of any kind.
    Packets => "packets",
    /// Frames whose EtherType (after any VLAN tags) is neither IPv4 nor IPv6.
    NonIp => "non_ip",
    /// Frames carrying at least one 802.1Q or 802.1ad tag.
    Vlan => "vlan",
    /// Frames with more VLAN tags than the parser follows; not parsed further.
    VlanTooDeep => "vlan_too_deep",
    /// Frames with EtherType IPv4.
    Ipv4 => "ipv4",
    /// Frames with EtherType IPv6.
    Ipv6 => "ipv6",
    /// IP fragments, first and later ones; only first fragments carry a TCP header.
    Fragments => "fragments",
    /// IPv6 packets whose extension-header chain is longer than the parser follows.
    Ipv6ChainTooLong => "ipv6_chain_too_long",
    /// TCP segments whose flags are readable: the first 16 header bytes are in
    /// the frame and the datagram, and the data offset is at least 5.
    Tcp => "tcp",
    /// TCP segments with SYN set and ACK clear: connection attempts.
    Syn => "syn",
    /// TCP segments with SYN and ACK set: handshake replies.
    SynAck => "syn_ack",
    /// TCP segments with FIN set.
    Fin => "fin",
    /// TCP segments with RST set.
    Rst => "rst",
    /// TCP segments with ACK as the only one of SYN/FIN/RST/ACK, and no payload.
    PureAck => "pure_ack",
    /// TCP segments carrying payload.
    Data => "data",
    /// TCP segments with PSH set.
    Psh => "psh",
    /// TCP segments with URG set.
    Urg => "urg",
    /// TCP segments with ECE set (ECN echo).
    Ece => "ece",
    /// TCP segments with CWR set (congestion window reduced).
    Cwr => "cwr",
    /// IP packets whose transport is not TCP (or not reachable: later fragments, AH, ESP...).
    OtherTransport => "other_transport",
    /// Frames with a truncated or inconsistent Ethernet, VLAN, IP or TCP header
    /// (including TCP segments whose options are cut short).
    Malformed => "malformed",
    /// Frames in which at least one encapsulation was opened (MPLS, PPPoE,
    /// VN-Tag, 802.1ah, FabricPath, GRE, IP-in-IP, VXLAN, Geneve). The
    /// counters above count such a frame by its outer headers only.
    Tunnelled => "tunnelled",
    /// TCP segments found inside encapsulations, each tracked as a
    /// connection of its own (not in `tcp`, `syn`, ...).
    TunnelledTcp => "tunnelled_tcp",
    /// Frames with an MPLS label stack opened.
    TunnelMpls => "tunnel_mpls",
    /// Frames with a PPPoE session header opened.
    TunnelPppoe => "tunnel_pppoe",
    /// Frames with a Cisco VN-Tag opened.
    TunnelVntag => "tunnel_vntag",
    /// Frames with an 802.1ah (provider backbone bridging) I-TAG opened.
    TunnelPbb => "tunnel_pbb",
    /// Frames with a Cisco FabricPath header opened.
    TunnelFabricpath => "tunnel_fabricpath",
    /// Frames with a GRE header opened.
    TunnelGre => "tunnel_gre",
    /// Frames with IPv4 or IPv6 directly inside IPv4 or IPv6 opened.
    TunnelIpip => "tunnel_ipip",
    /// Frames with a VXLAN header opened.
    TunnelVxlan => "tunnel_vxlan",
    /// Frames with a Geneve header opened.
    TunnelGeneve => "tunnel_geneve",
    /// Tunnelled frames whose innermost payload is not TCP (UDP, ARP, ...).
    TunnelOther => "tunnel_other",
    /// Tunnelled frames with an encapsulation header, or a header inside it,
    /// cut short or inconsistent (lengths claiming more than the tunnel
    /// carries included).
    TunnelMalformed => "tunnel_malformed",
    /// Frames with more encapsulation layers (or MPLS labels, or VLAN tags
    /// or IPv6 extension headers inside) than the parser follows.
    TunnelTooDeep => "tunnel_too_deep",
    /// Frames with an encapsulation recognised but not followed (GRE version
    /// 1 or with routing, an unknown GRE or Geneve protocol, an MPLS or
    /// PPPoE payload that is neither IP nor Ethernet).
    TunnelUnsupported => "tunnel_unsupported",
}

/// Number of user-facing counters.
pub const COUNTER_COUNT: usize = Counter::ALL.len();

/// The user-facing counters, derived from [`Tallies`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTER_COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            values: [0; COUNTER_COUNT],
        }
    }
}

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    fn add_to(&mut self, counter: Counter, amount: u64) {
        self.values[counter as usize] += amount;
    }
}

/// Frame classes: every frame falls in exactly one, indexing [`Tallies::frames`].
///
/// `class = kind * 2 + has_vlan_tag`, where `kind` is one of the non-IP kinds
/// below or, for IP, `IP_BASE + version * 10 + fragment * 5 + transport`.
pub mod class {
    pub const NON_IP: u8 = 0;
    pub const VLAN_TOO_DEEP: u8 = 1;
    /// Ethernet header or VLAN tag cut short.
    pub const MALFORMED_LINK: u8 = 2;
    /// First IP kind; IP kinds run to `IP_BASE + 19`.
    pub const IP_BASE: u8 = 3;
    /// IP transport outcomes.
    pub const TCP_COMPLETE: u8 = 0;
    /// TCP counted, but its options run past the frame or datagram.
    pub const TCP_INCOMPLETE: u8 = 1;
    pub const OTHER_TRANSPORT: u8 = 2;
    pub const CHAIN_TOO_LONG: u8 = 3;
    /// IP header, IPv6 extension or TCP header unusable.
    pub const MALFORMED_NETWORK: u8 = 4;
    /// Number of frame classes.
    pub const COUNT: usize = 2 * (IP_BASE as usize + 20);

    /// The parts of a frame class.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Decoded {
        pub vlan: bool,
        /// `None` for non-IP kinds (then `kind` says which).
        pub ip: Option<(bool, bool, u8)>, // (is_v6, is_fragment, transport)
        pub kind: u8,
    }

    pub const fn decode(class: usize) -> Decoded {
        let kind = (class / 2) as u8;
        let ip = if kind >= IP_BASE {
            let rest = kind - IP_BASE;
            Some((rest >= 10, rest % 10 >= 5, rest % 5))
        } else {
            None
        };
        Decoded {
            vlan: class % 2 == 1,
            ip,
            kind,
        }
    }
}

/// Slots of [`Tallies::tcp`]: 256 flag bytes, without and with payload.
pub const TCP_SLOTS: usize = 512;
/// Marks a frame without a TCP segment in [`Tally::tcp_slot`].
pub const NO_TCP_SLOT: u16 = u16::MAX;

/// Slots of [`Tallies::encap`]: tunnelled frames, frames by the kind of
/// each layer opened (the slot is the [`encap`] kind), then what was found
/// innermost.
pub mod encap_slot {
    /// Frames with at least one layer opened.
    pub const TUNNELLED: usize = 0;
    // Slots 1..=9: the encap kinds.
    pub const TCP: usize = 10;
    pub const OTHER: usize = 11;
    pub const MALFORMED: usize = 12;
    pub const TOO_DEEP: usize = 13;
    pub const UNSUPPORTED: usize = 14;
    pub const COUNT: usize = 16;
    const _: () = assert!(COUNT.is_power_of_two());
}

const _: () = assert!(encap::COUNT <= encap_slot::TCP);

/// The value of the single slot of the per-CPU `TALLIES` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tallies {
    /// Frames by class (see [`class`]).
    pub frames: [u64; class::COUNT],
    /// TCP segments by `flags | (has_payload << 8)`.
    pub tcp: [u64; TCP_SLOTS],
    /// Encapsulated frames (see [`encap_slot`]): only frames that carry a
    /// tunnel touch these.
    pub encap: [u64; encap_slot::COUNT],
}

const _: () =
    assert!(core::mem::size_of::<Tallies>() == 8 * (class::COUNT + TCP_SLOTS + encap_slot::COUNT));

impl Default for Tallies {
    fn default() -> Self {
        Tallies {
            frames: [0; class::COUNT],
            tcp: [0; TCP_SLOTS],
            encap: [0; encap_slot::COUNT],
        }
    }
}

/// What one encapsulated frame adds to [`Tallies::encap`]: the tunnelled
/// total, each layer's kind, and the outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapTally {
    /// [`encap`] kinds of the layers (0: none).
    pub layers: [u8; MAX_ENCAP_DEPTH],
    /// An [`encap_slot`] outcome slot.
    pub outcome: u8,
    /// 1 if the innermost TCP segment's header was cut short (also malformed).
    pub incomplete_tcp: u8,
}

/// What a frame's encapsulation adds to the tallies, from what
/// [`crate::tunnel::decapsulate_in_place`] returned (`outcome`), the
/// layers it gathered and the innermost frame; `None` if the frame carries
/// no encapsulation.
#[inline(always)]
pub fn encap_tally_of(outcome: u8, tunnel: &Tunnel, innermost: &Inner) -> Option<EncapTally> {
    let (slot, incomplete_tcp) = match outcome {
        tunnel_outcome::NONE => return None,
        tunnel_outcome::INNER => match innermost.class {
            inner_class::TCP => (encap_slot::TCP, !innermost.segment.header_complete),
            inner_class::MALFORMED => (encap_slot::MALFORMED, false),
            inner_class::TOO_DEEP => (encap_slot::TOO_DEEP, false),
            _ => (encap_slot::OTHER, false),
        },
        tunnel_outcome::MALFORMED => (encap_slot::MALFORMED, false),
        tunnel_outcome::UNSUPPORTED => (encap_slot::UNSUPPORTED, false),
        _ => (encap_slot::TOO_DEEP, false),
    };
    Some(EncapTally {
        layers: tunnel.layers,
        outcome: slot as u8,
        incomplete_tcp: incomplete_tcp as u8,
    })
}

/// [`encap_tally_of`] a [`Decap`], for the host.
pub fn encap_tally(decap: &Decap) -> Option<EncapTally> {
    let nothing = Inner::default();
    match decap {
        Decap::None => None,
        Decap::Inner { tunnel, inner } => encap_tally_of(tunnel_outcome::INNER, tunnel, inner),
        Decap::TooDeep { tunnel } => encap_tally_of(tunnel_outcome::TOO_DEEP, tunnel, &nothing),
        Decap::Malformed { tunnel } => encap_tally_of(tunnel_outcome::MALFORMED, tunnel, &nothing),
        Decap::Unsupported { tunnel } => {
            encap_tally_of(tunnel_outcome::UNSUPPORTED, tunnel, &nothing)
        }
    }
}

/// What one frame adds to [`Tallies`]: two increments, whatever the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    /// Index into [`Tallies::frames`].
    pub frame_class: u8,
    /// Index into [`Tallies::tcp`], or [`NO_TCP_SLOT`].
    pub tcp_slot: u16,
}

impl Tally {
    /// The tally of a frame whose outermost VLAN tag the kernel took out
    /// before the program read it, as [`tally`] counts the frame with the
    /// tag: every class the same, tagged.
    ///
    /// Why: before TC ingress runs, the receive path moves a frame's
    /// outermost 802.1Q or 802.1ad tag into the packet's metadata
    /// (`skb_vlan_untag`), and a VLAN device hands its packets to TC
    /// egress of the device below with the tag in metadata too where that
    /// device inserts tags itself. The TC programs read the frame as if
    /// untagged (or with one tag fewer). XDP, tcpdump (which puts the tag
    /// back) and the replay see it on the frame.
    #[inline(always)]
    pub const fn with_stripped_tag(self) -> Tally {
        Tally {
            frame_class: self.frame_class | 1,
            tcp_slot: self.tcp_slot,
        }
    }
}

/// What one parsed frame adds to the tallies. Pure, so the kernel program and
/// host-side accounting (frames too short for BPF_PROG_TEST_RUN) agree.
#[inline(always)]
pub fn tally(parsed: &Parsed) -> Tally {
    let mut tcp_slot = NO_TCP_SLOT;
    let kind = match &parsed.payload {
        Payload::NonIp { .. } => class::NON_IP,
        Payload::VlanTooDeep => class::VLAN_TOO_DEEP,
        Payload::Malformed { .. } => class::MALFORMED_LINK,
        Payload::Ip(ip) => {
            let transport = match &ip.transport {
                Transport::Tcp(segment) => {
                    // Read here and only here: for BPF the compiler would
                    // otherwise load it ahead of the match, on every
                    // path, where no segment was written and the stack
                    // slot may hold half a spilled pointer, which the
                    // verifier refuses to read ("invalid size of register
                    // fill"). A volatile read is not moved.
                    // SAFETY: a reference to an initialised field.
                    let payload_len = unsafe { core::ptr::read_volatile(&segment.payload_len) };
                    let has_payload = (payload_len != 0) as u16;
                    tcp_slot = segment.flags as u16 | (has_payload << 8);
                    if segment.header_complete {
                        class::TCP_COMPLETE
                    } else {
                        class::TCP_INCOMPLETE
                    }
                }
                Transport::Other { .. } | Transport::LaterFragment => class::OTHER_TRANSPORT,
                Transport::ChainTooLong => class::CHAIN_TOO_LONG,
                Transport::Malformed { .. } => class::MALFORMED_NETWORK,
            };
            let version = (ip.version == IpVersion::V6) as u8;
            let fragment = (ip.fragment != Fragment::Whole) as u8;
            class::IP_BASE + version * 10 + fragment * 5 + transport
        }
    };
    Tally {
        frame_class: kind * 2 + (parsed.vlan_tags != 0) as u8,
        tcp_slot,
    }
}

/// What a frame [`crate::parse::parse_common`] read adds to the tallies:
/// the same as [`tally`] of what [`crate::parse::parse`] makes of it.
#[inline(always)]
pub fn tally_common(common: &crate::parse::CommonTcp) -> Tally {
    let version = (common.version == IpVersion::V6) as u8;
    let has_payload = (common.segment.payload_len != 0) as u16;
    Tally {
        // Untagged, whole, header complete.
        frame_class: (class::IP_BASE + version * 10 + class::TCP_COMPLETE) * 2,
        tcp_slot: common.segment.flags as u16 | (has_payload << 8),
    }
}

/// What a frame [`crate::tunnel::read_common_other`] read as the common
/// TCP frame under VLAN tags adds to the tallies, as [`tally`] of what
/// [`crate::parse::parse`] makes of it: [`tally_common`]'s, tagged.
#[inline(always)]
pub fn tally_tagged(common: &crate::parse::CommonTcp) -> Tally {
    let untagged = tally_common(common);
    Tally {
        frame_class: untagged.frame_class + 1,
        tcp_slot: untagged.tcp_slot,
    }
}

/// What a frame [`crate::tunnel::read_common_other`] read without TCP of
/// its own adds to the tallies, as [`tally`] of what [`crate::parse::parse`]
/// makes of it: IPv4 (`v6` false) or IPv6, whole, a transport other than
/// TCP, with or without VLAN tags.
#[inline(always)]
pub const fn other_ip_tally(v6: bool, tagged: bool) -> Tally {
    Tally {
        frame_class: (class::IP_BASE + v6 as u8 * 10 + class::OTHER_TRANSPORT) * 2 + tagged as u8,
        tcp_slot: NO_TCP_SLOT,
    }
}

/// What a frame a tunnel shortcut read adds to [`Tallies::encap`], as
/// [`encap_tally_of`] of what the decapsulator makes of it: its `layers`
/// (kinds, outermost first, 0 after the last), a whole TCP segment inside.
#[inline(always)]
pub fn overlay_encap_tally(layers: [u8; 3]) -> EncapTally {
    EncapTally {
        layers,
        outcome: encap_slot::TCP as u8,
        incomplete_tcp: 0,
    }
}

impl Tallies {
    /// Adds one frame's tally: two bounds-checked increments.
    #[inline(always)]
    pub fn record(&mut self, tally: &Tally) {
        if let Some(value) = self.frames.get_mut(tally.frame_class as usize) {
            *value += 1;
        }
        if let Some(value) = self.tcp.get_mut(tally.tcp_slot as usize) {
            *value += 1;
        }
    }

    /// Adds one encapsulated frame's tally: a handful of bounds-checked
    /// increments, paid only by frames that carry a tunnel.
    #[inline(always)]
    pub fn record_encap(&mut self, tally: &EncapTally) {
        // Masked into range, a bound the verifier follows; the index made
        // opaque first, or the compiler, having proved it small, drops
        // the mask (and its own compares take forms the verifier does not).
        let mut bump =
            |slot: usize| self.encap[core::hint::black_box(slot) & (encap_slot::COUNT - 1)] += 1;
        bump(encap_slot::TUNNELLED);
        for &kind in &tally.layers {
            if kind != 0 && (kind as usize) < encap::COUNT {
                bump(kind as usize);
            }
        }
        bump(tally.outcome as usize);
        if tally.incomplete_tcp != 0 {
            bump(encap_slot::MALFORMED);
        }
    }

    /// Adds the tally of a TCP segment a shortcut read inside the tunnel
    /// of `layers`: what [`Tallies::record_encap`] adds for
    /// [`overlay_encap_tally`], with the two slots every such segment
    /// counts (tunnelled, TCP inside) at constant indices, which need no
    /// mask: two stack round trips fewer on every tunnelled segment.
    #[inline(always)]
    pub fn record_overlay(&mut self, layers: [u8; 3]) {
        self.encap[encap_slot::TUNNELLED] += 1;
        self.encap[encap_slot::TCP] += 1;
        for &kind in &layers {
            if kind != 0 && (kind as usize) < encap::COUNT {
                // Masked as in `record_encap`.
                self.encap[core::hint::black_box(kind as usize) & (encap_slot::COUNT - 1)] += 1;
            }
        }
    }

    /// Element-wise sum, e.g. of the per-CPU copies.
    pub fn add(&mut self, other: &Tallies) {
        for (mine, theirs) in self.frames.iter_mut().zip(other.frames.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        for (mine, theirs) in self.tcp.iter_mut().zip(other.tcp.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        for (mine, theirs) in self.encap.iter_mut().zip(other.encap.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
    }

    /// Element-wise `self - earlier`, for deltas between two readings.
    pub fn since(&self, earlier: &Tallies) -> Tallies {
        let mut delta = *self;
        for (out, before) in delta.frames.iter_mut().zip(earlier.frames.iter()) {
            *out = out.wrapping_sub(*before);
        }
        for (out, before) in delta.tcp.iter_mut().zip(earlier.tcp.iter()) {
            *out = out.wrapping_sub(*before);
        }
        for (out, before) in delta.encap.iter_mut().zip(earlier.encap.iter()) {
            *out = out.wrapping_sub(*before);
        }
        delta
    }

    /// TCP segments with the given flag byte, without and with payload.
    pub fn tcp_by_flags(&self, flags: u8) -> (u64, u64) {
        (self.tcp[flags as usize], self.tcp[256 + flags as usize])
    }

    /// The user-facing counters.
    pub fn totals(&self) -> Counters {
        use tcp_flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN, URG};
        let mut c = Counters::default();
        for (index, &frames) in self.frames.iter().enumerate() {
            if frames == 0 {
                continue;
            }
            let decoded = class::decode(index);
            c.add_to(Counter::Packets, frames);
            if decoded.vlan {
                c.add_to(Counter::Vlan, frames);
            }
            match decoded.ip {
                None => c.add_to(
                    match decoded.kind {
                        class::NON_IP => Counter::NonIp,
                        class::VLAN_TOO_DEEP => Counter::VlanTooDeep,
                        _ => Counter::Malformed,
                    },
                    frames,
                ),
                Some((is_v6, is_fragment, transport)) => {
                    c.add_to(if is_v6 { Counter::Ipv6 } else { Counter::Ipv4 }, frames);
                    if is_fragment {
                        c.add_to(Counter::Fragments, frames);
                    }
                    match transport {
                        class::TCP_INCOMPLETE | class::MALFORMED_NETWORK => {
                            c.add_to(Counter::Malformed, frames)
                        }
                        class::OTHER_TRANSPORT => c.add_to(Counter::OtherTransport, frames),
                        class::CHAIN_TOO_LONG => c.add_to(Counter::Ipv6ChainTooLong, frames),
                        _ => {} // complete TCP: counted from the histogram below
                    }
                }
            }
        }
        for flags in 0..=255u8 {
            let (bare, with_payload) = self.tcp_by_flags(flags);
            let both = bare + with_payload;
            if both == 0 {
                continue;
            }
            c.add_to(Counter::Tcp, both);
            c.add_to(Counter::Data, with_payload);
            let has = |flag: u8| flags & flag != 0;
            if has(SYN) && !has(ACK) {
                c.add_to(Counter::Syn, both);
            }
            if has(SYN) && has(ACK) {
                c.add_to(Counter::SynAck, both);
            }
            if has(FIN) {
                c.add_to(Counter::Fin, both);
            }
            if has(RST) {
                c.add_to(Counter::Rst, both);
            }
            if flags & (SYN | FIN | RST | ACK) == ACK {
                c.add_to(Counter::PureAck, bare);
            }
            for (flag, counter) in [
                (PSH, Counter::Psh),
                (URG, Counter::Urg),
                (ECE, Counter::Ece),
                (CWR, Counter::Cwr),
            ] {
                if has(flag) {
                    c.add_to(counter, both);
                }
            }
        }
        for (slot, counter) in [
            (encap_slot::TUNNELLED, Counter::Tunnelled),
            (encap::MPLS as usize, Counter::TunnelMpls),
            (encap::PPPOE as usize, Counter::TunnelPppoe),
            (encap::VNTAG as usize, Counter::TunnelVntag),
            (encap::PBB as usize, Counter::TunnelPbb),
            (encap::FABRICPATH as usize, Counter::TunnelFabricpath),
            (encap::GRE as usize, Counter::TunnelGre),
            (encap::IPIP as usize, Counter::TunnelIpip),
            (encap::VXLAN as usize, Counter::TunnelVxlan),
            (encap::GENEVE as usize, Counter::TunnelGeneve),
            (encap_slot::TCP, Counter::TunnelledTcp),
            (encap_slot::OTHER, Counter::TunnelOther),
            (encap_slot::MALFORMED, Counter::TunnelMalformed),
            (encap_slot::TOO_DEEP, Counter::TunnelTooDeep),
            (encap_slot::UNSUPPORTED, Counter::TunnelUnsupported),
        ] {
            c.add_to(counter, self.encap[slot]);
        }
        c
    }
}

/// The counters one frame touches, for tests and host-side checks.
pub fn counters_of(parsed: &Parsed) -> Counters {
    let mut tallies = Tallies::default();
    tallies.record(&tally(parsed));
    tallies.totals()
}

#[cfg(feature = "user")]
// SAFETY: `Tallies` is `repr(C)`, made only of u64 arrays (no padding, size
// asserted above), and every bit pattern is a valid value.
unsafe impl aya::Pod for Tallies {}

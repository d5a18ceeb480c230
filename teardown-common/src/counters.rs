//! Packet counters kept by the XDP program in one per-CPU array slot.
//!
//! Every counter is declared once, here: its index in [`Counters::values`], the
//! key user space prints and exports, and what it means. The kernel program and
//! user space both index through [`Counter`], so the two sides cannot drift.

/// Declares the [`Counter`] enum together with its stable key and help text.
macro_rules! counters {
    ($( $(#[doc = $doc:literal])+ $variant:ident => $key:literal, )+) => {
        /// One packet counter. The discriminant is the index in [`Counters::values`].
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
    /// IPv4 packets (including malformed ones whose version field is 4).
    Ipv4 => "ipv4",
    /// IPv6 packets (including malformed ones whose version field is 6).
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
    /// TCP segments with only ACK among SYN/FIN/RST/ACK and no payload.
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
}

/// Number of counters, i.e. the length of [`Counters::values`].
pub const COUNTER_COUNT: usize = Counter::ALL.len();

impl Counter {
    /// Bit of this counter in a [`CounterSet`].
    #[inline(always)]
    pub const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// A set of counters to increment for one packet, one bit per [`Counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSet(pub u32);

impl CounterSet {
    #[inline(always)]
    pub const fn with(self, counter: Counter) -> Self {
        CounterSet(self.0 | counter.bit())
    }

    #[inline(always)]
    pub const fn contains(self, counter: Counter) -> bool {
        self.0 & counter.bit() != 0
    }
}

/// The value of the single slot of the per-CPU `COUNTERS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub values: [u64; COUNTER_COUNT],
}

const _: () = assert!(core::mem::size_of::<Counters>() == 8 * COUNTER_COUNT);
// A CounterSet has one bit per counter.
const _: () = assert!(COUNTER_COUNT <= 32);

impl Default for Counters {
    fn default() -> Self {
        Counters {
            values: [0; COUNTER_COUNT],
        }
    }
}

impl Counters {
    /// Adds one to every counter in `set`.
    #[inline(always)]
    pub fn apply(&mut self, set: CounterSet) {
        let mut index = 0;
        while index < COUNTER_COUNT {
            if set.0 & (1 << index) != 0 {
                self.values[index] += 1;
            }
            index += 1;
        }
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    /// Element-wise sum, e.g. of the per-CPU copies.
    pub fn add(&mut self, other: &Counters) {
        for (mine, theirs) in self.values.iter_mut().zip(other.values.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
    }

    /// Element-wise `self - earlier`, for deltas between two readings.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut delta = Counters::default();
        for ((out, now), before) in delta
            .values
            .iter_mut()
            .zip(self.values.iter())
            .zip(earlier.values.iter())
        {
            *out = now.wrapping_sub(*before);
        }
        delta
    }
}

#[cfg(feature = "user")]
// SAFETY: `Counters` is `repr(C)`, has no padding (asserted above) and every bit
// pattern is a valid value.
unsafe impl aya::Pod for Counters {}

use crate::parse::{Fragment, IpVersion, Parsed, Payload, TcpSegment, Transport, tcp_flags};

/// The counters one parsed frame increments. Pure, so the kernel program and
/// host-side accounting (frames too short for BPF_PROG_TEST_RUN) agree.
#[inline(always)]
pub fn classify(parsed: &Parsed) -> CounterSet {
    let mut set = CounterSet::default().with(Counter::Packets);
    if parsed.vlan_tags != 0 {
        set = set.with(Counter::Vlan);
    }
    match &parsed.payload {
        Payload::NonIp { .. } => set.with(Counter::NonIp),
        Payload::VlanTooDeep => set.with(Counter::VlanTooDeep),
        Payload::Malformed { .. } => set.with(Counter::Malformed),
        Payload::Ip(ip) => {
            set = set.with(match ip.version {
                IpVersion::V4 => Counter::Ipv4,
                IpVersion::V6 => Counter::Ipv6,
            });
            if ip.fragment != Fragment::Whole {
                set = set.with(Counter::Fragments);
            }
            match &ip.transport {
                Transport::Tcp(segment) => CounterSet(set.0 | tcp_counters(segment).0),
                Transport::Other { .. } | Transport::LaterFragment => {
                    set.with(Counter::OtherTransport)
                }
                Transport::ChainTooLong => set.with(Counter::Ipv6ChainTooLong),
                Transport::Malformed { .. } => set.with(Counter::Malformed),
            }
        }
    }
}

#[inline(always)]
fn tcp_counters(segment: &TcpSegment) -> CounterSet {
    let flags = segment.flags;
    let mut set = CounterSet::default().with(Counter::Tcp);
    if !segment.header_complete {
        set = set.with(Counter::Malformed);
    }
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    if syn && !ack {
        set = set.with(Counter::Syn);
    }
    if syn && ack {
        set = set.with(Counter::SynAck);
    }
    if flags & tcp_flags::FIN != 0 {
        set = set.with(Counter::Fin);
    }
    if flags & tcp_flags::RST != 0 {
        set = set.with(Counter::Rst);
    }
    let control = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST | tcp_flags::ACK;
    if flags & control == tcp_flags::ACK && segment.payload_len == 0 {
        set = set.with(Counter::PureAck);
    }
    if segment.payload_len != 0 {
        set = set.with(Counter::Data);
    }
    if flags & tcp_flags::PSH != 0 {
        set = set.with(Counter::Psh);
    }
    if flags & tcp_flags::URG != 0 {
        set = set.with(Counter::Urg);
    }
    if flags & tcp_flags::ECE != 0 {
        set = set.with(Counter::Ece);
    }
    if flags & tcp_flags::CWR != 0 {
        set = set.with(Counter::Cwr);
    }
    set
}

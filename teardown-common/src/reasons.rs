//! The kernel's own reasons: what the `tcp:tcp_send_reset` tracepoint tells
//! about each reset this host sends, shared by the tracepoint program and
//! user space.
//!
//! The tracepoint's record layout and its reason numbering belong to the
//! running kernel (`enum sk_rst_reason` grows and renumbers between
//! releases), so neither is compiled in: user space reads both from the
//! event's `format` file in tracefs, writes the field offsets into
//! [`ResetLayout`] before attaching, and names the reasons from the format's
//! `__print_symbolic` table.

use crate::addr::Addr16;

/// Reason numbers counted per CPU in the kernel: `enum sk_rst_reason` has
/// 26 values on 6.18; numbers from here up share the last counter.
pub const RESET_REASON_SLOTS: u32 = 64;

/// Bytes of the reset event ring buffer: room for about 40 000 resets
/// (104 bytes each with the ring's header) between two polls, over a
/// second of a host refusing a port scan at full speed.
pub const RESET_EVENTS_BYTES: u32 = 4 << 20;

/// The socket states `tcp:tcp_send_reset` reports (`include/net/tcp_states.h`,
/// numbers visible to user space in `/proc/net/tcp`): the ones whose socket
/// is not a full `struct sock`, whose lock must not be read.
pub mod tcp_state {
    pub const TIME_WAIT: u32 = 6;
    pub const LISTEN: u32 = 10;
    pub const NEW_SYN_RECV: u32 = 12;

    /// The state's name as the kernel prints it, without its `TCP_` prefix.
    pub fn name(state: u32) -> &'static str {
        match state {
            1 => "ESTABLISHED",
            2 => "SYN_SENT",
            3 => "SYN_RECV",
            4 => "FIN_WAIT1",
            5 => "FIN_WAIT2",
            6 => "TIME_WAIT",
            7 => "CLOSE",
            8 => "CLOSE_WAIT",
            9 => "LAST_ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            12 => "NEW_SYN_RECV",
            _ => "UNKNOWN",
        }
    }
}

/// Where the fields of a `tcp:tcp_send_reset` record sit (byte offsets in
/// the tracepoint's record, from its `format` file), and where
/// `sk_lock.owned` sits in `struct sock` (from the kernel's BTF). User space
/// writes it into the one-entry `RESET_LAYOUT` array before attaching the
/// program; `enabled` 0 (the default) makes the program return at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetLayout {
    pub skb: u16,
    pub sk: u16,
    pub state: u16,
    pub reason: u16,
    /// The local end's `struct sockaddr_in6`-sized address (28 bytes).
    pub local: u16,
    /// The remote end's.
    pub remote: u16,
    /// Offset of `sk_lock.owned` in `struct sock`; 0 when the kernel's BTF
    /// could not say, and then no reset is put down to a process.
    pub sk_lock_owned: u16,
    pub enabled: u16,
    /// Offsets for finding the network namespace a reset belongs to: the
    /// socket's (`sock_common.skc_net`), or for a reset without a socket the
    /// receiving device's (`sk_buff.dev`, then `net_device.nd_net`); and the
    /// namespace's inode number in `struct net` (`ns.inum`). Any of them 0:
    /// resets are not told apart by namespace.
    pub sk_net: u16,
    pub skb_dev: u16,
    pub dev_net: u16,
    pub net_inum: u16,
    /// The inode number of the namespace watched (`/proc/self/ns/net`): the
    /// tracepoint fires for every namespace on the host, and only this
    /// one's resets are counted and sent.
    pub netns: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ResetLayout>() == 32);

/// Bytes of a `struct sockaddr_in6`: how the tracepoint stores each end.
pub const SOCKADDR_BYTES: usize = 28;

/// [`ResetEvent::flags`] bits.
pub mod reset_flag {
    /// The socket's owner was running: `pid` and `comm` name the process
    /// that made the kernel send the reset (a `close()` with unread data, a
    /// `SO_LINGER` 0 close, a disconnect).
    pub const PROCESS: u32 = 1;
    /// The reset answers a segment that arrived (the kernel's
    /// `tcp_v4_send_reset`/`tcp_v6_send_reset`), rather than aborting a
    /// connection of its own accord (`tcp_send_active_reset`).
    pub const REPLY: u32 = 2;
}

/// One reset this host sent, as the tracepoint saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetEvent {
    /// Kernel monotonic clock, as the flow table's records use.
    pub time_ns: u64,
    /// The process (thread group) id, when [`reset_flag::PROCESS`].
    pub pid: u32,
    /// The kernel's `enum sk_rst_reason` number.
    pub reason: u32,
    /// The socket's state (`tcp_state`), 0 when there was no socket.
    pub state: u32,
    /// [`reset_flag`] bits.
    pub flags: u32,
    /// This host's end, a `sockaddr_in` or `sockaddr_in6` as the kernel
    /// stored it (see [`endpoint`]).
    pub local: [u8; SOCKADDR_BYTES],
    /// The peer's end.
    pub remote: [u8; SOCKADDR_BYTES],
    /// The process's command name, NUL-padded, when [`reset_flag::PROCESS`].
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<ResetEvent>() == 96);

/// Resets seen by the tracepoint program, counted per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetCounts {
    /// Resets by reason number; the last slot also holds every number at or
    /// above [`RESET_REASON_SLOTS`].
    pub by_reason: [u64; RESET_REASON_SLOTS as usize],
    /// Events the ring buffer had no room for (the counts above still hold
    /// them).
    pub events_lost: u64,
    /// Events not sent because no record could claim them: resets of
    /// connections the flow table does not hold, while it is under pressure
    /// (a flood: the host's resets to an ACK flood's spoofed sources, or to
    /// SYNs for a closed port). The counts above still hold them.
    pub events_skipped: u64,
}

impl Default for ResetCounts {
    fn default() -> Self {
        ResetCounts {
            by_reason: [0; RESET_REASON_SLOTS as usize],
            events_lost: 0,
            events_skipped: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<ResetCounts>() == 8 * (RESET_REASON_SLOTS as usize + 2));

impl ResetCounts {
    /// The slot counting reason number `reason`.
    #[inline(always)]
    pub fn slot(reason: u32) -> usize {
        if reason < RESET_REASON_SLOTS {
            reason as usize
        } else {
            RESET_REASON_SLOTS as usize - 1
        }
    }

    /// Adds another CPU's counts.
    pub fn add(&mut self, other: &ResetCounts) {
        for (sum, count) in self.by_reason.iter_mut().zip(other.by_reason.iter()) {
            *sum += count;
        }
        self.events_lost += other.events_lost;
        self.events_skipped += other.events_skipped;
    }
}

/// Address family numbers as `struct sockaddr` spells them on Linux.
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// One end of a connection from the tracepoint's `sockaddr` bytes: the IP
/// version (4 or 6), the address (IPv4 in IPv4-mapped form, as
/// [`crate::flow::FlowKey`] keeps it) and the port. `None` for any
/// other family (the kernel leaves the bytes zero when it had no address).
pub fn endpoint(sockaddr: &[u8; SOCKADDR_BYTES]) -> Option<(u8, Addr16, u16)> {
    let (family, halves, port) = endpoint_halves(sockaddr)?;
    Some((
        family,
        Addr16::from_words(Addr16::words_of_halves(&halves)),
        port,
    ))
}

/// [`endpoint`] with the address as [`Addr16::halves`], read word by word:
/// for the reset program's probe of the flow table, where a copy into a
/// local byte array would become a `memcpy` call.
#[inline(always)]
pub fn endpoint_halves(sockaddr: &[u8; SOCKADDR_BYTES]) -> Option<(u8, [u64; 2], u16)> {
    // The family is host-endian (x86 and BPF alike little-endian here); the
    // port and address are network order.
    let family = u16::from_le_bytes([sockaddr[0], sockaddr[1]]);
    let port = u16::from_be_bytes([sockaddr[2], sockaddr[3]]);
    let half = |at: usize| {
        u64::from_ne_bytes([
            sockaddr[at],
            sockaddr[at + 1],
            sockaddr[at + 2],
            sockaddr[at + 3],
            sockaddr[at + 4],
            sockaddr[at + 5],
            sockaddr[at + 6],
            sockaddr[at + 7],
        ])
    };
    match family {
        AF_INET => Some((
            4,
            Addr16::v4_mapped_halves([sockaddr[4], sockaddr[5], sockaddr[6], sockaddr[7]]),
            port,
        )),
        // sin6_flowinfo (4 bytes) comes first.
        AF_INET6 => Some((6, [half(8), half(16)], port)),
        _ => None,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, no padding (sizes asserted above).
    unsafe impl aya::Pod for super::ResetLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ResetEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ResetCounts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockaddr(bytes: &[u8]) -> [u8; SOCKADDR_BYTES] {
        let mut out = [0u8; SOCKADDR_BYTES];
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }

    #[test]
    fn an_ipv4_end_is_read_in_network_order() {
        let end = sockaddr(&[2, 0, 0x1f, 0x90, 192, 0, 2, 2]);
        let expected = Addr16::v4_mapped([192, 0, 2, 2]);
        assert_eq!(endpoint(&end), Some((4, expected, 8080)));
    }

    #[test]
    fn an_ipv6_end_skips_the_flow_label() {
        let address = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&[10, 0, 0, 80, 0xff, 0xff, 0xff, 0xff]);
        bytes[8..].copy_from_slice(&address);
        assert_eq!(endpoint(&sockaddr(&bytes)), Some((6, Addr16(address), 80)));
        // The kernel's form: the halves the flow table's keys compare.
        assert_eq!(
            endpoint_halves(&sockaddr(&bytes)),
            Some((6, Addr16(address).halves(), 80))
        );
    }

    #[test]
    fn no_address_is_no_endpoint() {
        assert_eq!(endpoint(&[0; SOCKADDR_BYTES]), None);
        assert_eq!(endpoint(&sockaddr(&[1, 0, 0, 80])), None);
    }

    #[test]
    fn reasons_past_the_slots_share_the_last() {
        assert_eq!(ResetCounts::slot(0), 0);
        assert_eq!(ResetCounts::slot(25), 25);
        assert_eq!(ResetCounts::slot(63), 63);
        assert_eq!(ResetCounts::slot(64), 63);
        assert_eq!(ResetCounts::slot(u32::MAX), 63);
    }

    #[test]
    fn counts_add_up_across_cpus() {
        let mut one = ResetCounts::default();
        one.by_reason[1] = 3;
        one.events_lost = 1;
        let mut two = ResetCounts::default();
        two.by_reason[1] = 2;
        two.by_reason[11] = 5;
        one.add(&two);
        assert_eq!(one.by_reason[1], 5);
        assert_eq!(one.by_reason[11], 5);
        assert_eq!(one.events_lost, 1);
    }
}

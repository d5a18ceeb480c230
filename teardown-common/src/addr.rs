//! The one address type the kernel and user space share: [`Addr16`], an
//! IP address as 16 bytes, IPv4 mapped (`::ffff:a.b.c.d`). Its other
//! forms, and the conversions between them, are here and nowhere else:
//! the four native-endian words of its bytes ([`Addr16::words`], what the
//! flood accounting hashes and stores) and its two halves
//! ([`Addr16::halves`], what the flow table's fast path compares), and,
//! for user space, `core::net::IpAddr`.

/// An IP address as 16 bytes in network order; IPv4 is IPv4-mapped.
/// Byte-aligned, so a struct holding it is laid out as with `[u8; 16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr16(pub [u8; 16]);

const _: () = assert!(core::mem::size_of::<Addr16>() == 16);
const _: () = assert!(core::mem::align_of::<Addr16>() == 1);

impl Addr16 {
    /// An IPv4 address in IPv4-mapped IPv6 form.
    #[inline(always)]
    pub const fn v4_mapped(v4: [u8; 4]) -> Addr16 {
        Addr16([
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
        ])
    }

    /// The bytes, in memory order, grouped as four native-endian words:
    /// the form [`crate::flow::FlowKey::from_words`], the flood accounting
    /// ([`crate::dest`]) and the source sketch take.
    #[inline(always)]
    pub fn words(&self) -> [u32; 4] {
        let addr = &self.0;
        let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        [word(0), word(4), word(8), word(12)]
    }

    /// The address whose [`Self::words`] these are.
    #[inline(always)]
    pub fn from_words(words: [u32; 4]) -> Addr16 {
        // SAFETY: [u32; 4] and [u8; 16] have the same size; any bytes are valid.
        Addr16(unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) })
    }

    /// The bytes as two native-endian halves, in memory order: the form
    /// [`crate::table::FlowSlot::direction_of`] and
    /// [`crate::table::fold_address`] take. An IPv4 address is
    /// `[0, half]`, see [`Self::v4_mapped_halves`].
    #[inline(always)]
    pub fn halves(&self) -> [u64; 2] {
        let addr = &self.0;
        let half = |i: usize| {
            u64::from_ne_bytes([
                addr[i],
                addr[i + 1],
                addr[i + 2],
                addr[i + 3],
                addr[i + 4],
                addr[i + 5],
                addr[i + 6],
                addr[i + 7],
            ])
        };
        [half(0), half(8)]
    }

    /// [`Self::halves`] of [`Self::v4_mapped`], built straight from the
    /// IPv4 address: the first half is zero.
    #[inline(always)]
    pub fn v4_mapped_halves(v4: [u8; 4]) -> [u64; 2] {
        [
            0,
            u64::from_ne_bytes([0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]),
        ]
    }

    /// [`Self::halves`] regrouped as [`Self::words`] (the same bytes).
    #[inline(always)]
    pub fn words_of_halves(halves: &[u64; 2]) -> [u32; 4] {
        let [a, b] = [halves[0].to_ne_bytes(), halves[1].to_ne_bytes()];
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        ]
    }
}

#[cfg(any(test, feature = "user"))]
mod net {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::Addr16;

    impl From<Ipv4Addr> for Addr16 {
        fn from(v4: Ipv4Addr) -> Addr16 {
            Addr16::v4_mapped(v4.octets())
        }
    }

    impl From<Ipv6Addr> for Addr16 {
        fn from(v6: Ipv6Addr) -> Addr16 {
            Addr16(v6.octets())
        }
    }

    /// IPv4 mapped, so an IPv4 address and its mapped IPv6 form are one.
    impl From<IpAddr> for Addr16 {
        fn from(addr: IpAddr) -> Addr16 {
            match addr {
                IpAddr::V4(v4) => v4.into(),
                IpAddr::V6(v6) => v6.into(),
            }
        }
    }

    /// IPv4 for a mapped address, IPv6 otherwise.
    impl From<Addr16> for IpAddr {
        fn from(addr: Addr16) -> IpAddr {
            Ipv6Addr::from(addr.0).to_canonical()
        }
    }

    impl Addr16 {
        /// The address of a family known apart (a flow key's `family`,
        /// 4 or 6): an IPv6 connection between mapped addresses stays IPv6.
        pub fn to_ip(self, family: u8) -> IpAddr {
            if family == 4 {
                let [.., a, b, c, d] = self.0;
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            } else {
                IpAddr::V6(Ipv6Addr::from(self.0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use core::net::IpAddr;

    use super::*;

    #[test]
    fn words_round_trip() {
        let v6 = Addr16(core::array::from_fn(|i| (i * 17 + 3) as u8));
        assert_eq!(Addr16::from_words(v6.words()), v6);
        let v4 = Addr16::v4_mapped([192, 0, 2, 1]);
        assert_eq!(Addr16::from_words(v4.words()), v4);
    }

    #[test]
    fn ip_addresses_round_trip_ipv4_mapped() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(Addr16::from(v4), Addr16::v4_mapped([192, 0, 2, 1]));
        assert_eq!(IpAddr::from(Addr16::from(v4)), v4);
        assert_eq!(IpAddr::from(Addr16::from(v6)), v6);
        assert_eq!(Addr16::from(v4).to_ip(4), v4);
        assert_eq!(
            Addr16::from(v4).to_ip(6),
            "::ffff:192.0.2.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(Addr16::from(v6).to_ip(6), v6);
    }
}

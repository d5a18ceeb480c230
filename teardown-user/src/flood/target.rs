//! What the detector watches and alerts on: destinations (address and
//! port) and alert targets (one destination, or all of them together).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use teardown_common::addr::Addr16;

/// A destination: address and port. IPv4-mapped IPv6 addresses are kept
/// as IPv4 (see [`TargetKey::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub addr: IpAddr,
    pub port: u16,
}

impl TargetKey {
    /// A destination, with an IPv4-mapped address turned back into IPv4.
    pub fn new(addr: IpAddr, port: u16) -> TargetKey {
        TargetKey {
            addr: addr.to_canonical(),
            port,
        }
    }

    /// From the kernel's form: an [`Addr16`] (IPv4 mapped) and a port.
    pub fn from_mapped(addr: Addr16, port: u16) -> TargetKey {
        TargetKey::new(IpAddr::from(addr), port)
    }
}

impl fmt::Display for TargetKey {
    /// `10.0.0.1:80`, `[2001:db8::1]:80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        SocketAddr::new(self.addr, self.port).fmt(f)
    }
}

/// A destination that is not `ADDR:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a destination: use ADDR:PORT, e.g. 10.0.0.1:80 or [2001:db8::1]:443")]
pub struct TargetParseError(pub String);

impl FromStr for TargetKey {
    type Err = TargetParseError;

    fn from_str(text: &str) -> Result<TargetKey, TargetParseError> {
        let socket: SocketAddr = text
            .trim()
            .parse()
            .map_err(|_| TargetParseError(text.to_string()))?;
        Ok(TargetKey::new(socket.ip(), socket.port()))
    }
}

/// What an alert is about: one destination, or all of them together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertTarget {
    /// One destination address and port.
    Dest(TargetKey),
    /// Every destination together: shown as `*`. Alerts alongside the
    /// per-destination alerts, and alone when a flood is spread over many
    /// destinations (random ports, a whole subnet) none of which crosses
    /// the thresholds by itself.
    All,
}

impl fmt::Display for AlertTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlertTarget::Dest(key) => key.fmt(f),
            AlertTarget::All => f.write_str("*"),
        }
    }
}

impl Default for TargetKey {
    fn default() -> TargetKey {
        TargetKey::new(IpAddr::from([0u8; 4]), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flood::testing::dest;

    #[test]
    fn targets_display_as_socket_addresses() {
        assert_eq!(dest("10.0.0.1:80").to_string(), "10.0.0.1:80");
        assert_eq!(dest("[2001:db8::1]:80").to_string(), "[2001:db8::1]:80");
        // IPv4-mapped becomes IPv4, from text or from the kernel's bytes.
        assert_eq!(dest("[::ffff:10.0.0.1]:80").to_string(), "10.0.0.1:80");
        let mapped = Addr16::v4_mapped([192, 0, 2, 1]);
        assert_eq!(
            TargetKey::from_mapped(mapped, 443).to_string(),
            "192.0.2.1:443"
        );
        assert_eq!(AlertTarget::All.to_string(), "*");
    }
}

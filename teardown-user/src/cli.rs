//! The command line's own types: what clap parses, mapped onto the domain
//! types ([`AttachMode`], [`Direction`], [`ClockMode`], the metrics
//! address), so that clap stays out of the modules that do the work.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    cmd::run::Direction,
    flood::FloodRecords,
    kernel::{AttachMode, ClockMode},
};

/// `--flood-records`: what becomes of a SYN flood's one-sided records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodRecordsArg {
    /// While a destination's SYN-flood alert is active, its one-sided
    /// records (S0, REJ, OTH, ...) are counted into one summary per
    /// interval (`flood_debris`); real connections keep their records.
    Summary,
    /// Every record in full, flood or not.
    Full,
}

impl From<FloodRecordsArg> for FloodRecords {
    fn from(arg: FloodRecordsArg) -> Self {
        match arg {
            FloodRecordsArg::Summary => FloodRecords::Summary,
            FloodRecordsArg::Full => FloodRecords::Full,
        }
    }
}

/// `--mode`: how to attach the ingress program (XDP, or TC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Native (driver) XDP if the interface supports it, TC ingress
    /// otherwise, on a veth, where native XDP turns the peer's TSO off
    /// (generic XDP copies every TSO segment), and on a tun or WireGuard
    /// device, whose packets have no Ethernet header.
    Auto,
    /// Native XDP, in the driver: fastest; fails if the driver lacks it.
    Native,
    /// Generic XDP, in the kernel's network stack: works on any Ethernet
    /// interface, slower.
    Skb,
    /// TC ingress instead of XDP: the same work on the kernel's own packet,
    /// after GRO; the cheapest on veths and other software devices.
    Tc,
}

impl From<ModeArg> for AttachMode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Auto => AttachMode::Auto,
            ModeArg::Native => AttachMode::Native,
            ModeArg::Skb => AttachMode::Skb,
            ModeArg::Tc => AttachMode::Tc,
        }
    }
}

/// `--direction`: which way packets are watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectionArg {
    /// XDP (or TC) on ingress and TC on egress: the host's own SYN-ACKs,
    /// FINs and RSTs are seen too.
    Both,
    /// Ingress only: for a mirror port that carries both directions.
    Ingress,
}

impl From<DirectionArg> for Direction {
    fn from(direction: DirectionArg) -> Self {
        match direction {
            DirectionArg::Both => Direction::Both,
            DirectionArg::Ingress => Direction::Ingress,
        }
    }
}

/// `--clock`: which clock stamps the flow table's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockArg {
    /// The jiffies counter: a plain load per packet, resolution one kernel
    /// tick (see `clock_getres(CLOCK_MONOTONIC_COARSE)`, 4 ms at HZ=250).
    Coarse,
    /// bpf_ktime_get_ns: nanoseconds, at about the cost of a whole parse
    /// per TCP packet on this kind of VM.
    Precise,
}

impl From<ClockArg> for ClockMode {
    fn from(clock: ClockArg) -> Self {
        match clock {
            ClockArg::Coarse => ClockMode::Coarse,
            ClockArg::Precise => ClockMode::Precise,
        }
    }
}

/// Where `--metrics-addr` serves: an address, or `None` for `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

/// The default `--metrics-addr`: loopback only, so nothing is exposed to the
/// network unless the user says so.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";

/// Parses `--metrics-addr`: `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT`,
/// `:PORT` (every address: `[::]`, which takes IPv4 too unless the host
/// says `net.ipv6.bindv6only=1`; `0.0.0.0` where the host has no IPv6), or
/// `off`.
///
/// Host names other than `localhost` are refused rather than resolved: the
/// address decides who can read the metrics, so it is stated, not looked up.
pub fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr(None));
    }
    let usage = || {
        format!(
            "{text:?} is not an address: use HOST:PORT with an IP address, e.g. 127.0.0.1:9464, [::1]:9464 or :9464 (every address), or off"
        )
    };
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| usage())?;
        return Ok(MetricsAddr(Some(SocketAddr::from((
            Ipv6Addr::UNSPECIFIED,
            port,
        )))));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| usage())?;
        return Ok(MetricsAddr(Some(SocketAddr::from((
            Ipv4Addr::LOCALHOST,
            port,
        )))));
    }
    text.parse::<SocketAddr>()
        .map(|addr| MetricsAddr(Some(addr)))
        .map_err(|_| usage())
}

/// Parses an `--iface` name: what the kernel accepts as one
/// (`dev_valid_name`): 1 to 15 bytes, not `.` or `..`, without `/`, `:`
/// or white space. Whether it exists is for the run to find out.
pub fn parse_iface(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() < libc::IFNAMSIZ
        && text != "."
        && text != ".."
        && !text
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not an interface name: 1 to {} bytes without '/', ':' or spaces (list them with `ip link`)",
            libc::IFNAMSIZ - 1
        ))
    }
}

/// The first name given more than once, if any.
pub fn repeated(names: &[String]) -> Option<&str> {
    names
        .iter()
        .enumerate()
        .find(|(index, name)| names[..*index].contains(name))
        .map(|(_, name)| name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_as_the_kernel_would() {
        for good in ["eth0", "lo", "veth-a.100", "br_lan", "a", "fifteen-bytes-x"] {
            assert_eq!(parse_iface(good).as_deref(), Ok(good));
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-bytes-xx",
            "eth0:1",
            "a/b",
            "eth 0",
            "eth0\n",
            "nul\0",
        ] {
            let err = parse_iface(bad).expect_err(bad);
            assert!(
                err.contains("not an interface name") && !err.contains('\n'),
                "{err}"
            );
        }
        let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect::<Vec<_>>();
        assert_eq!(repeated(&names(&["eth0", "eth1"])), None);
        assert_eq!(repeated(&names(&["eth0", "eth1", "eth0"])), Some("eth0"));
    }

    #[test]
    fn addresses_parse_and_bad_ones_say_how() {
        let v4: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        assert_eq!(
            parse_metrics_addr(DEFAULT_METRICS_ADDR),
            Ok(MetricsAddr(Some(v4)))
        );
        assert_eq!(
            parse_metrics_addr("localhost:9464"),
            Ok(MetricsAddr(Some(v4)))
        );
        assert_eq!(
            parse_metrics_addr("[::1]:9464"),
            Ok(MetricsAddr(Some("[::1]:9464".parse().unwrap())))
        );
        assert_eq!(parse_metrics_addr("off"), Ok(MetricsAddr(None)));
        assert_eq!(
            parse_metrics_addr(":9464"),
            Ok(MetricsAddr(Some("[::]:9464".parse().unwrap())))
        );
        for bad in [
            "",
            "9464",
            "127.0.0.1",
            "example.com:80",
            "1.2.3.4:99999",
            "::1:80",
            ":",
            ":http",
            ":99999",
            ":-1",
        ] {
            let err = parse_metrics_addr(bad).expect_err(bad);
            assert!(err.contains("HOST:PORT") && !err.contains('\n'), "{err}");
        }
    }
}

//! The CLI layer of the fleet outputs: `teardown run`'s `--ipfix` and
//! `--on-alert` flags and their parsers, mapped onto [`FleetOptions`]. The
//! exporter (`report/ipfix.rs`) and the hooks (`report/hook.rs`) know
//! nothing of clap.

use std::{
    net::{SocketAddr, ToSocketAddrs as _},
    time::Duration,
};

/// What `teardown run` sends beyond its own outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOptions {
    /// Send every ended connection as an IPFIX record to this collector.
    pub ipfix: Option<SocketAddr>,
    /// Run this (`sh -c`) for every alert event, its JSON on stdin.
    pub on_alert: Option<String>,
    /// A hook still running after this is killed.
    pub on_alert_timeout: Duration,
}

#[derive(clap::Args, Clone, Debug)]
pub struct FleetArgs {
    /// Send every ended connection as an IPFIX record (RFC 7011, a biflow)
    /// to the flow collector at HOST:PORT over UDP, e.g. 192.0.2.9:4739 (an
    /// IPv6 address in brackets; see docs/ipfix.md). Records the socket
    /// cannot take are counted (lines_lost.ipfix), never waited for.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_collector)]
    ipfix: Option<SocketAddr>,
    /// Run CMD (with sh -c) for every SYN-flood alert event (start, update,
    /// end), with the event's JSON line on its stdin and its phase in
    /// $TEARDOWN_ALERT_PHASE. Never waited for: at most 8 run at once;
    /// failures are counted (lines_lost.alert_hook).
    #[arg(long, value_name = "CMD", value_parser = parse_command)]
    on_alert: Option<String>,
    /// A hook still running after this long is killed (with what it
    /// started) and counted as failed.
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = crate::parse_timeout, requires = "on_alert")]
    on_alert_timeout: Duration,
}

impl FleetArgs {
    pub fn options(&self) -> FleetOptions {
        FleetOptions {
            ipfix: self.ipfix,
            on_alert: self.on_alert.clone(),
            on_alert_timeout: self.on_alert_timeout,
        }
    }
}

/// `--on-alert`: any command but an empty one.
pub fn parse_command(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("the command is empty: give a shell command, e.g. 'logger -t teardown'".into());
    }
    Ok(text.to_string())
}

/// Parses a collector's address: `IP:PORT`, `[IPv6]:PORT`, or a host name
/// and port, looked up once, here (its first address).
pub fn parse_collector(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let usage = || {
        format!(
            "{text:?} is not a collector address: use HOST:PORT, e.g. 192.0.2.9:4739, [2001:db8::9]:4739 or collector.example:4739"
        )
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(usage());
        }
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(usage());
    };
    let port: u16 = port.parse().map_err(|_| usage())?;
    if host.is_empty() || port == 0 {
        return Err(usage());
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(usage),
        Err(err) => Err(format!("cannot look up the collector {host:?}: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectors_parse_and_bad_ones_say_how() {
        assert_eq!(
            parse_collector("127.0.0.1:4739"),
            Ok("127.0.0.1:4739".parse().unwrap())
        );
        assert_eq!(
            parse_collector("[::1]:4739"),
            Ok("[::1]:4739".parse().unwrap())
        );
        assert_eq!(
            parse_collector("localhost:4739").map(|addr| addr.port()),
            Ok(4739)
        );
        for bad in ["", "4739", "127.0.0.1", "127.0.0.1:0", ":4739", "host:port"] {
            let err = parse_collector(bad).expect_err(bad);
            assert!(!err.contains('\n'), "{err}");
        }
    }
}

//! The host TCP stack's own counts of handshakes it could not take
//! (`/proc/net/netstat`, the `TcpExt` line, as `nstat` reads it): listen
//! queue overflows and drops, SYN-queue drops, SYN cookies. They belong to
//! the network namespace teardown runs in, which is the one whose
//! interface it watches.

use serde::Serialize;

/// The counters, since boot (or the namespace's creation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeDrops {
    /// SYNs or final ACKs dropped because a listener's accept queue was full
    /// (`ListenOverflows`).
    pub listen_overflows: u64,
    /// Every handshake segment a listener dropped, overflows included
    /// (`ListenDrops`).
    pub listen_drops: u64,
    /// SYNs dropped because the SYN queue was full and cookies were off
    /// (`TCPReqQFullDrop`).
    pub syn_queue_full_drops: u64,
    /// SYNs answered with a cookie because the SYN queue was full
    /// (`TCPReqQFullDoCookies`).
    pub syn_queue_full_cookies: u64,
    /// SYN cookies sent (`SyncookiesSent`).
    pub syncookies_sent: u64,
    /// Valid cookies received back: handshakes completed through a cookie
    /// (`SyncookiesRecv`).
    pub syncookies_recv: u64,
    /// Cookies that did not check out (`SyncookiesFailed`).
    pub syncookies_failed: u64,
}

impl HandshakeDrops {
    /// Reads this namespace's counters; `None` where there is no
    /// `/proc/net/netstat` (then no view shows them).
    pub fn read() -> Option<HandshakeDrops> {
        HandshakeDrops::parse(&std::fs::read_to_string("/proc/net/netstat").ok()?)
    }

    /// From the text of `/proc/net/netstat`: a line of names and a line of
    /// values per group.
    pub fn parse(text: &str) -> Option<HandshakeDrops> {
        let mut lines = text.lines();
        while let Some(names) = lines.next() {
            let values = lines.next()?;
            if !names.starts_with("TcpExt:") {
                continue;
            }
            let pairs: Vec<(&str, u64)> = names
                .split_whitespace()
                .skip(1)
                .zip(values.split_whitespace().skip(1))
                .filter_map(|(name, value)| Some((name, value.parse().ok()?)))
                .collect();
            let get = |key: &str| {
                pairs
                    .iter()
                    .find(|(name, _)| *name == key)
                    .map_or(0, |(_, value)| *value)
            };
            return Some(HandshakeDrops {
                listen_overflows: get("ListenOverflows"),
                listen_drops: get("ListenDrops"),
                syn_queue_full_drops: get("TCPReqQFullDrop"),
                syn_queue_full_cookies: get("TCPReqQFullDoCookies"),
                syncookies_sent: get("SyncookiesSent"),
                syncookies_recv: get("SyncookiesRecv"),
                syncookies_failed: get("SyncookiesFailed"),
            });
        }
        None
    }

    /// The counts from `start` to `self` (a counter that went backwards, as
    /// a namespace recreated, counts from 0).
    pub fn since(&self, start: &HandshakeDrops) -> HandshakeDrops {
        let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
        HandshakeDrops {
            listen_overflows: delta(self.listen_overflows, start.listen_overflows),
            listen_drops: delta(self.listen_drops, start.listen_drops),
            syn_queue_full_drops: delta(self.syn_queue_full_drops, start.syn_queue_full_drops),
            syn_queue_full_cookies: delta(
                self.syn_queue_full_cookies,
                start.syn_queue_full_cookies,
            ),
            syncookies_sent: delta(self.syncookies_sent, start.syncookies_sent),
            syncookies_recv: delta(self.syncookies_recv, start.syncookies_recv),
            syncookies_failed: delta(self.syncookies_failed, start.syncookies_failed),
        }
    }

    /// Each counter with its Prometheus name stem and help, for the views
    /// that list them.
    pub fn each(&self) -> [(&'static str, &'static str, u64); 7] {
        [
            (
                "listen_overflows",
                "SYNs or final ACKs dropped on a full accept queue (ListenOverflows)",
                self.listen_overflows,
            ),
            (
                "listen_drops",
                "Handshake segments a listener dropped, overflows included (ListenDrops)",
                self.listen_drops,
            ),
            (
                "syn_queue_full_drops",
                "SYNs dropped on a full SYN queue with cookies off (TCPReqQFullDrop)",
                self.syn_queue_full_drops,
            ),
            (
                "syn_queue_full_cookies",
                "SYNs answered with a cookie on a full SYN queue (TCPReqQFullDoCookies)",
                self.syn_queue_full_cookies,
            ),
            (
                "syncookies_sent",
                "SYN cookies sent (SyncookiesSent)",
                self.syncookies_sent,
            ),
            (
                "syncookies_recv",
                "Handshakes completed through a SYN cookie (SyncookiesRecv)",
                self.syncookies_recv,
            ),
            (
                "syncookies_failed",
                "SYN cookies that did not check out (SyncookiesFailed)",
                self.syncookies_failed,
            ),
        ]
    }

    /// Handshakes the host dropped: it is losing legitimate connections.
    pub fn dropped(&self) -> u64 {
        self.listen_drops.max(self.listen_overflows) + self.syn_queue_full_drops
    }

    /// What the host's stack is doing about a flood, in a few words: `None`
    /// when it neither dropped a handshake nor sent a cookie.
    pub fn verdict(&self) -> Option<String> {
        let dropped = self.dropped();
        match (dropped, self.syncookies_sent) {
            (0, 0) => None,
            (0, cookies) => Some(format!(
                "host coping: {cookies} SYN cookies sent, no handshake dropped"
            )),
            (dropped, 0) => Some(format!(
                "host dropping handshakes: {dropped} dropped on full queues"
            )),
            (dropped, cookies) => Some(format!(
                "host dropping handshakes: {dropped} dropped on full queues, {cookies} SYN cookies sent"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts ListenOverflows ListenDrops TCPReqQFullDoCookies TCPReqQFullDrop
TcpExt: 5 4 1 3 72 73 5 2
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
";

    #[test]
    fn the_tcpext_counters_are_read_by_name() {
        let drops = HandshakeDrops::parse(NETSTAT).unwrap();
        assert_eq!(
            drops,
            HandshakeDrops {
                listen_overflows: 72,
                listen_drops: 73,
                syn_queue_full_drops: 2,
                syn_queue_full_cookies: 5,
                syncookies_sent: 5,
                syncookies_recv: 4,
                syncookies_failed: 1,
            }
        );
        assert_eq!(drops.dropped(), 75);
    }

    #[test]
    fn no_tcpext_line_is_no_reading() {
        assert_eq!(HandshakeDrops::parse("IpExt: A\nIpExt: 1\n"), None);
        assert_eq!(HandshakeDrops::parse(""), None);
    }

    #[test]
    fn counts_since_the_start() {
        let start = HandshakeDrops::parse(NETSTAT).unwrap();
        let mut now = start;
        now.listen_overflows += 10;
        now.listen_drops += 10;
        now.syncookies_sent = 1; // the namespace was recreated
        let since = now.since(&start);
        assert_eq!(since.listen_overflows, 10);
        assert_eq!(since.syncookies_sent, 1);
        assert_eq!(since.syncookies_recv, 0);
    }

    #[test]
    fn the_verdict_tells_dropping_from_coping() {
        let none = HandshakeDrops::default();
        assert_eq!(none.verdict(), None);
        let coping = HandshakeDrops {
            syncookies_sent: 900,
            ..HandshakeDrops::default()
        };
        assert_eq!(
            coping.verdict().unwrap(),
            "host coping: 900 SYN cookies sent, no handshake dropped"
        );
        let dropping = HandshakeDrops {
            listen_overflows: 40,
            listen_drops: 40,
            ..HandshakeDrops::default()
        };
        assert_eq!(
            dropping.verdict().unwrap(),
            "host dropping handshakes: 40 dropped on full queues"
        );
    }

    #[test]
    fn this_hosts_counters_are_read() {
        if std::path::Path::new("/proc/net/netstat").exists() {
            assert!(HandshakeDrops::read().is_some());
        }
    }
}

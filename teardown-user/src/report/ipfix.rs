//! IPFIX export (`--ipfix HOST:PORT`): one record per ended connection, in
//! RFC 7011 messages over UDP, to a flow collector (nfcapd, pmacct,
//! ElastiFlow, ntopng).
//!
//! Each record is a biflow (RFC 5103): the originator's packets and octets
//! in the standard elements, the responder's in the same elements with the
//! reverse enterprise number 29305. teardown's own verdicts (`conn_state`,
//! `history`, `close`, `closed_by`, `rst_cause`, `rst_reason`, `uid`) are
//! variable-length strings under the documentation enterprise number 32473
//! until a real one is assigned. The elements are listed in
//! `docs/ipfix.md`.
//!
//! [`Encoder`] is pure: records in, message bytes out. [`Exporter`] owns a
//! non-blocking UDP socket and a bounded queue of messages, so exporting
//! never blocks the run loop; a record that cannot be sent (queue full,
//! socket error) is counted as lost, and shown as `lines_lost.ipfix`.

use std::{
    collections::VecDeque,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use teardown_common::conn::{ORIG, end_reason};

use crate::{
    conn::tracker::{Clock, Ended},
    flood::DebrisSummary,
    report::output::say,
};

/// IPFIX's version number, in every message header.
pub const VERSION: u16 = 10;
/// Set id of a template set.
pub const TEMPLATE_SET: u16 = 2;
/// Template id of IPv4 records.
pub const TEMPLATE_V4: u16 = 256;
/// Template id of IPv6 records.
pub const TEMPLATE_V6: u16 = 257;
/// Template id of flood debris summaries to an IPv4 target.
pub const TEMPLATE_DEBRIS_V4: u16 = 258;
/// Template id of flood debris summaries to an IPv6 target.
pub const TEMPLATE_DEBRIS_V6: u16 = 259;
/// RFC 5103's enterprise number for reverse elements.
pub const REVERSE_PEN: u32 = 29305;
/// teardown's enterprise number: the documentation one (RFC 5612) until a
/// real one is assigned.
pub const TEARDOWN_PEN: u32 = 32473;
/// The length of a variable-length element in a template.
pub const VARIABLE: u16 = 65535;
/// The observation domain of every message.
pub const DOMAIN: u32 = 1;
/// The most bytes in one message: fits a 1500-byte MTU with the IPv6 and
/// UDP headers (1452), so a message is never fragmented on Ethernet.
pub const MAX_MESSAGE: usize = 1400;
/// Message header length.
const HEADER: usize = 16;
/// Set header length.
const SET_HEADER: usize = 4;
/// Templates are sent again this often (RFC 7011 section 8.4: over UDP,
/// periodically), so a collector started or restarted later learns them.
pub const TEMPLATE_EVERY: Duration = Duration::from_secs(30);
/// ... and at least every this many messages.
pub const TEMPLATE_EVERY_MESSAGES: u64 = 100;
/// Messages waiting for the socket at most; beyond, new records are lost
/// (and counted). 512 messages of at most 1400 bytes: 700 KB.
pub const QUEUE_MESSAGES: usize = 512;

/// teardown's enterprise elements (PEN 32473), all variable-length UTF-8
/// strings.
pub mod element {
    pub const CONN_STATE: u16 = 1;
    pub const HISTORY: u16 = 2;
    pub const CLOSE: u16 = 3;
    pub const CLOSED_BY: u16 = 4;
    pub const RST_CAUSE: u16 = 5;
    pub const RST_REASON: u16 = 6;
    pub const UID: u16 = 7;
    /// A debris summary's records by conn_state: `S0=18000,REJ=211`.
    pub const DEBRIS_CONN_STATES: u16 = 8;
}

/// IANA's flowEndReason values (RFC 7012).
pub mod flow_end {
    pub const IDLE_TIMEOUT: u8 = 1;
    pub const END_OF_FLOW: u8 = 3;
    pub const FORCED_END: u8 = 4;
}

/// TCP header flag bits, as tcpControlBits carries them.
pub mod tcp {
    pub const FIN: u16 = 0x01;
    pub const SYN: u16 = 0x02;
    pub const RST: u16 = 0x04;
    pub const ACK: u16 = 0x10;
}

/// One field specifier of a template: (element id, length, enterprise).
type Field = (u16, u16, Option<u32>);

/// The fields of a record, in order; `v6` picks the address elements.
fn fields(v6: bool) -> Vec<Field> {
    let (src, dst, len) = if v6 { (27, 28, 16) } else { (8, 12, 4) };
    let mut fields = vec![
        (152, 8, None), // flowStartMilliseconds
        (153, 8, None), // flowEndMilliseconds
        (src, len, None),
        (dst, len, None),
        (7, 2, None),   // sourceTransportPort
        (11, 2, None),  // destinationTransportPort
        (4, 1, None),   // protocolIdentifier
        (136, 1, None), // flowEndReason
        // The responder's tcpControlBits before the originator's: a
        // collector that reads this element without its enterprise number
        // (nfdump 1.7 does) keeps the last, the originator's.
        (6, 2, Some(REVERSE_PEN)),
        (6, 2, None), // tcpControlBits, the originator's
        (2, 8, None), // packetDeltaCount, the originator's
        (1, 8, None), // octetDeltaCount, the originator's
        (2, 8, Some(REVERSE_PEN)),
        (1, 8, Some(REVERSE_PEN)),
    ];
    for id in [
        element::CONN_STATE,
        element::HISTORY,
        element::CLOSE,
        element::CLOSED_BY,
        element::RST_CAUSE,
        element::RST_REASON,
        element::UID,
    ] {
        fields.push((id, VARIABLE, Some(TEARDOWN_PEN)));
    }
    // interfaceName: the interface whose flow table kept the record (a
    // run may watch several).
    fields.push((82, VARIABLE, None));
    fields
}

/// The fields of a flood debris summary (RFC 7015's aggregated flow: one
/// record stands for `deltaFlowCount` records to one destination), in
/// order; `v6` picks the address element.
fn debris_fields(v6: bool) -> Vec<Field> {
    let (dst, len) = if v6 { (28, 16) } else { (12, 4) };
    vec![
        (152, 8, None), // flowStartMilliseconds: the first record's start
        (153, 8, None), // flowEndMilliseconds: the last record's end
        (dst, len, None),
        (11, 2, None), // destinationTransportPort
        (4, 1, None),  // protocolIdentifier
        (3, 8, None),  // deltaFlowCount: the records summarised
        (2, 8, None),  // packetDeltaCount, the sources'
        (1, 8, None),  // octetDeltaCount, the sources'
        (2, 8, Some(REVERSE_PEN)),
        (1, 8, Some(REVERSE_PEN)),
        (378, 8, None), // distinctCountOfSourceIPAddress (estimated)
        (element::DEBRIS_CONN_STATES, VARIABLE, Some(TEARDOWN_PEN)),
    ]
}

/// The template set announcing every template: set header, then each
/// template record (id, field count, field specifiers): connection
/// records (256, 257), then debris summaries (258, 259).
pub fn template_set() -> Vec<u8> {
    let mut set = vec![0; SET_HEADER];
    for (id, fields) in [
        (TEMPLATE_V4, fields(false)),
        (TEMPLATE_V6, fields(true)),
        (TEMPLATE_DEBRIS_V4, debris_fields(false)),
        (TEMPLATE_DEBRIS_V6, debris_fields(true)),
    ] {
        set.extend(id.to_be_bytes());
        set.extend((fields.len() as u16).to_be_bytes());
        for (element, length, enterprise) in fields {
            match enterprise {
                Some(pen) => {
                    set.extend((element | 0x8000).to_be_bytes());
                    set.extend(length.to_be_bytes());
                    set.extend(pen.to_be_bytes());
                }
                None => {
                    set.extend(element.to_be_bytes());
                    set.extend(length.to_be_bytes());
                }
            }
        }
    }
    let length = set.len() as u16;
    set[0..2].copy_from_slice(&TEMPLATE_SET.to_be_bytes());
    set[2..4].copy_from_slice(&length.to_be_bytes());
    set
}

/// One ended connection as IPFIX carries it: plain values, taken from an
/// [`Ended`] by [`FlowRecord::from_ended`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub start_ms: u64,
    pub end_ms: u64,
    /// The originator.
    pub source: (IpAddr, u16),
    /// The responder.
    pub destination: (IpAddr, u16),
    pub end_reason: u8,
    /// Flags the originator's segments carried, and the responder's (see
    /// [`history_flags`]).
    pub flags: [u16; 2],
    /// The originator's, then the responder's.
    pub packets: [u64; 2],
    /// IP octets (headers included), the originator's then the responder's.
    pub octets: [u64; 2],
    pub conn_state: String,
    pub history: String,
    pub close: String,
    pub closed_by: String,
    pub rst_cause: String,
    pub rst_reason: String,
    pub uid: String,
    /// The interface the record was kept on (empty for a capture's).
    pub iface: String,
}

/// The TCP flags a side's segments carried, as far as Zeek's history
/// letters tell (upper case the originator's, lower case the responder's):
/// `S` a SYN, `H` a SYN-ACK, `A` a pure ACK, `F` a FIN, `R` a RST. Flags
/// the letters do not name (PSH, URG, ECE, CWR, the ACK on data and on a
/// FIN or RST) are not claimed.
pub fn history_flags(history: &[u8]) -> [u16; 2] {
    let mut flags = [0; 2];
    for &letter in history {
        let side = if letter.is_ascii_uppercase() { 0 } else { 1 };
        flags[side] |= match letter.to_ascii_uppercase() {
            b'S' => tcp::SYN,
            b'H' => tcp::SYN | tcp::ACK,
            b'A' => tcp::ACK,
            b'F' => tcp::FIN,
            b'R' => tcp::RST,
            _ => 0,
        };
    }
    flags
}

/// IPFIX's flowEndReason for teardown's end reason.
pub fn flow_end_reason(reason: u8) -> u8 {
    match reason {
        end_reason::SYN_TIMEOUT | end_reason::IDLE => flow_end::IDLE_TIMEOUT,
        end_reason::END_OF_INPUT => flow_end::FORCED_END,
        // Closed, lingered after one side closed, or ended by a new SYN on
        // the same ports: the end was seen on the wire.
        _ => flow_end::END_OF_FLOW,
    }
}

impl FlowRecord {
    pub fn from_ended(record: &Ended, clock: &Clock) -> FlowRecord {
        let conn = &record.conn;
        let (source, destination) = record.endpoints();
        let close = conn.close(record.reason);
        let (orig, resp) = (conn.lane(ORIG), conn.lane(1 - ORIG));
        let end_ns = conn.last_ns.max(conn.last_pkt_ns).max(conn.start_ns);
        FlowRecord {
            start_ms: clock.unix_millis(conn.start_ns),
            end_ms: clock.unix_millis(end_ns),
            source,
            destination,
            end_reason: flow_end_reason(record.reason),
            flags: history_flags(conn.history()),
            packets: [orig.pkts, resp.pkts],
            octets: [orig.ip_bytes, resp.ip_bytes],
            conn_state: conn.conn_state().to_string(),
            history: String::from_utf8_lossy(conn.history()).into_owned(),
            close: close.kind.name().to_string(),
            closed_by: match close.closed_by {
                Some(side) if side == ORIG => "orig".into(),
                Some(_) => "resp".into(),
                None => String::new(),
            },
            rst_cause: close.rst_cause.unwrap_or_default().to_string(),
            rst_reason: record
                .kernel_reset
                .as_ref()
                .map(|reset| reset.reason.to_string())
                .unwrap_or_default(),
            uid: record.uid(),
            iface: record.iface.unwrap_or_default().to_string(),
        }
    }

    fn is_v6(&self) -> bool {
        // A mixed pair cannot happen (one flow key, one family); IPv6 wins.
        self.source.0.is_ipv6() || self.destination.0.is_ipv6()
    }

    /// The data record's bytes, in the order of [`fields`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend(self.start_ms.to_be_bytes());
        out.extend(self.end_ms.to_be_bytes());
        let v6 = self.is_v6();
        for (addr, _) in [self.source, self.destination] {
            match (addr, v6) {
                (IpAddr::V4(v4), false) => out.extend(v4.octets()),
                (IpAddr::V4(v4), true) => out.extend(v4.to_ipv6_mapped().octets()),
                (IpAddr::V6(v6), _) => out.extend(v6.octets()),
            }
        }
        out.extend(self.source.1.to_be_bytes());
        out.extend(self.destination.1.to_be_bytes());
        out.push(6); // TCP
        out.push(self.end_reason);
        out.extend(self.flags[1].to_be_bytes());
        out.extend(self.flags[0].to_be_bytes());
        for side in 0..2 {
            out.extend(self.packets[side].to_be_bytes());
            out.extend(self.octets[side].to_be_bytes());
        }
        for text in [
            &self.conn_state,
            &self.history,
            &self.close,
            &self.closed_by,
            &self.rst_cause,
            &self.rst_reason,
            &self.uid,
            &self.iface,
        ] {
            variable(out, text.as_bytes());
        }
    }
}

/// A data record of one of the templates.
pub trait DataRecord {
    /// Its template's id.
    fn template(&self) -> u16;
    /// Its bytes, in its template's order.
    fn encode_into(&self, out: &mut Vec<u8>);
}

impl DataRecord for FlowRecord {
    fn template(&self) -> u16 {
        if self.is_v6() {
            TEMPLATE_V6
        } else {
            TEMPLATE_V4
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode(out);
    }
}

/// A flood debris summary as IPFIX carries it: one aggregated record per
/// summary (the top sources stay in the JSON: a collector has no element
/// for them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebrisRecord {
    pub start_ms: u64,
    pub end_ms: u64,
    pub destination: (IpAddr, u16),
    pub records: u64,
    /// The sources', then the target's.
    pub packets: [u64; 2],
    pub octets: [u64; 2],
    pub distinct_sources: u64,
    /// `S0=18000,REJ=211`.
    pub conn_states: String,
}

impl DebrisRecord {
    pub fn from_summary(summary: &DebrisSummary) -> DebrisRecord {
        DebrisRecord {
            start_ms: summary.first_ms,
            end_ms: summary.last_ms.max(summary.first_ms),
            destination: (summary.target_addr, summary.target_port),
            records: summary.records,
            packets: [summary.orig_pkts, summary.resp_pkts],
            octets: [summary.orig_ip_bytes, summary.resp_ip_bytes],
            distinct_sources: summary.distinct_sources,
            conn_states: summary
                .by_conn_state
                .iter()
                .map(|(state, count)| format!("{state}={count}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

impl DataRecord for DebrisRecord {
    fn template(&self) -> u16 {
        if self.destination.0.is_ipv6() {
            TEMPLATE_DEBRIS_V6
        } else {
            TEMPLATE_DEBRIS_V4
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend(self.start_ms.to_be_bytes());
        out.extend(self.end_ms.to_be_bytes());
        match self.destination.0 {
            IpAddr::V4(v4) => out.extend(v4.octets()),
            IpAddr::V6(v6) => out.extend(v6.octets()),
        }
        out.extend(self.destination.1.to_be_bytes());
        out.push(6); // TCP
        out.extend(self.records.to_be_bytes());
        for side in 0..2 {
            out.extend(self.packets[side].to_be_bytes());
            out.extend(self.octets[side].to_be_bytes());
        }
        out.extend(self.distinct_sources.to_be_bytes());
        variable(out, self.conn_states.as_bytes());
    }
}

/// A variable-length field (RFC 7011 section 7): one length byte below 255,
/// else 255 and two length bytes. Longer than 65535 bytes is cut there.
fn variable(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(u16::MAX as usize)];
    if bytes.len() < 255 {
        out.push(bytes.len() as u8);
    } else {
        out.push(255);
        out.extend((bytes.len() as u16).to_be_bytes());
    }
    out.extend(bytes);
}

/// One message, ready to send, with how many data records it carries (what
/// is lost if it is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub bytes: Vec<u8>,
    pub records: u64,
}

/// Builds messages: the header's sequence number counts the data records
/// of every message built before (RFC 7011 section 3.1), so a collector
/// sees a gap for any message that did not reach it.
#[derive(Debug, Default)]
pub struct Encoder {
    sequence: u32,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Messages carrying `records` (none if there are none and no
    /// templates), each at most [`MAX_MESSAGE`] bytes (a record too large
    /// for one alone still goes, in a message of its own); the first starts
    /// with the template set when `templates`.
    pub fn encode<R: DataRecord>(
        &mut self,
        export_time: u32,
        records: &[R],
        templates: bool,
    ) -> Vec<Message> {
        let mut messages = Vec::new();
        let mut body = if templates {
            template_set()
        } else {
            Vec::new()
        };
        let mut count = 0u64;
        // The open data set: its template and where its header starts.
        let mut set: Option<(u16, usize)> = None;
        let mut record_bytes = Vec::new();
        for record in records {
            record_bytes.clear();
            record.encode_into(&mut record_bytes);
            let template = record.template();
            let same_set = set.is_some_and(|(id, _)| id == template);
            let needed = record_bytes.len() + if same_set { 0 } else { SET_HEADER };
            if HEADER + body.len() + needed > MAX_MESSAGE && !body.is_empty() {
                close_set(&mut body, set.take());
                messages.push(self.finish(export_time, &mut body, &mut count));
            }
            if set.is_none_or(|(id, _)| id != template) {
                close_set(&mut body, set.take());
                set = Some((template, body.len()));
                body.extend(template.to_be_bytes());
                body.extend([0, 0]);
            }
            body.extend(&record_bytes);
            count += 1;
        }
        close_set(&mut body, set.take());
        if !body.is_empty() {
            messages.push(self.finish(export_time, &mut body, &mut count));
        }
        messages
    }

    /// A message of `body` (taken) and its `count` records (reset).
    fn finish(&mut self, export_time: u32, body: &mut Vec<u8>, count: &mut u64) -> Message {
        let mut bytes = Vec::with_capacity(HEADER + body.len());
        bytes.extend(VERSION.to_be_bytes());
        bytes.extend(((HEADER + body.len()).min(u16::MAX as usize) as u16).to_be_bytes());
        bytes.extend(export_time.to_be_bytes());
        bytes.extend(self.sequence.to_be_bytes());
        bytes.extend(DOMAIN.to_be_bytes());
        bytes.append(body);
        self.sequence = self.sequence.wrapping_add(*count as u32);
        let records = std::mem::take(count);
        Message { bytes, records }
    }
}

/// Writes the length of the data set that starts at `start` of `body`.
fn close_set(body: &mut [u8], set: Option<(u16, usize)>) {
    if let Some((_, start)) = set {
        let length = (body.len() - start) as u16;
        body[start + 2..start + 4].copy_from_slice(&length.to_be_bytes());
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export IPFIX to {addr}")]
pub struct ExporterError {
    addr: SocketAddr,
    source: io::Error,
}

/// Warnings about the export come at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Sends ended connections to a collector: never blocks, counts what it
/// loses.
pub struct Exporter {
    addr: SocketAddr,
    socket: UdpSocket,
    encoder: Encoder,
    queue: VecDeque<Message>,
    /// When templates went out last, and messages since.
    templates_at: Option<Instant>,
    messages_since_templates: u64,
    lost: u64,
    failing: bool,
    warned_at: Option<Instant>,
}

impl Exporter {
    /// A non-blocking UDP socket connected to `addr` (so ICMP errors from a
    /// collector that is down come back as send errors, and are counted).
    pub fn start(addr: SocketAddr) -> Result<Exporter, ExporterError> {
        let error = |source| ExporterError { addr, source };
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(error)?;
        socket.connect(addr).map_err(error)?;
        socket.set_nonblocking(true).map_err(error)?;
        Ok(Exporter {
            addr,
            socket,
            encoder: Encoder::new(),
            queue: VecDeque::new(),
            templates_at: None,
            messages_since_templates: 0,
            lost: 0,
            failing: false,
            warned_at: None,
        })
    }

    /// Records lost since the start.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Queues the records of `ended` and sends what the socket takes.
    pub fn export(&mut self, ended: &[Ended], clock: &Clock) {
        if ended.is_empty() {
            self.flush();
            return;
        }
        let records: Vec<FlowRecord> = ended
            .iter()
            .map(|record| FlowRecord::from_ended(record, clock))
            .collect();
        self.send(&records);
    }

    /// Queues the flood debris summaries, one aggregated record each, and
    /// sends what the socket takes. They count in `lost` as records do.
    pub fn export_summaries(&mut self, summaries: &[DebrisSummary]) {
        if summaries.is_empty() {
            return;
        }
        let records: Vec<DebrisRecord> = summaries.iter().map(DebrisRecord::from_summary).collect();
        self.send(&records);
    }

    /// Queues `records` (with the templates when they are due) and sends
    /// what the socket takes.
    fn send<R: DataRecord>(&mut self, records: &[R]) {
        let templates = self.templates_at.is_none_or(|at| {
            at.elapsed() >= TEMPLATE_EVERY
                || self.messages_since_templates >= TEMPLATE_EVERY_MESSAGES
        });
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as u32;
        let messages = self.encoder.encode(now, records, templates);
        if templates {
            self.templates_at = Some(Instant::now());
            self.messages_since_templates = 0;
        }
        self.messages_since_templates += messages.len() as u64;
        for message in messages {
            if self.queue.len() >= QUEUE_MESSAGES {
                self.lose(&message, "the send queue is full");
                // The templates must not be lost with it: resend them.
                self.templates_at = None;
            } else {
                self.queue.push_back(message);
            }
        }
        self.flush();
    }

    /// Sends queued messages until the socket would block.
    pub fn flush(&mut self) {
        while let Some(message) = self.queue.front() {
            match self.socket.send(&message.bytes) {
                Ok(_) => {
                    self.queue.pop_front();
                    self.failing = false;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    let message = self.queue.pop_front().expect("a front message");
                    self.lose(&message, &err.to_string());
                    // A collector that was down may have missed the templates.
                    self.templates_at = None;
                }
            }
        }
    }

    /// At the end of the run: keeps sending for at most `patience`; what
    /// is still queued then is lost.
    pub fn finish(&mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        self.flush();
        while !self.queue.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            self.flush();
        }
        let left: u64 = self.queue.drain(..).map(|message| message.records).sum();
        if left > 0 {
            self.lost += left;
            say(format_args!(
                "teardown: {left} IPFIX records to {} were not sent by exit",
                self.addr
            ));
        }
    }

    fn lose(&mut self, message: &Message, why: &str) {
        self.lost += message.records;
        if self.failing {
            return;
        }
        self.failing = true;
        if self.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            self.warned_at = Some(Instant::now());
            say(format_args!(
                "teardown: warning: cannot send IPFIX to {}: {why}; monitoring goes on, records not sent are counted as lost (lines_lost.ipfix)",
                self.addr
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn record_v4() -> FlowRecord {
        FlowRecord {
            start_ms: 0x0000_0190_0000_0001,
            end_ms: 0x0000_0190_0000_0102,
            source: (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40000),
            destination: (IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 80),
            end_reason: flow_end::END_OF_FLOW,
            flags: [tcp::SYN | tcp::ACK | tcp::FIN, tcp::SYN | tcp::ACK],
            packets: [5, 4],
            octets: [300, 1000],
            conn_state: "SF".into(),
            history: "ShADadFf".into(),
            close: "graceful".into(),
            closed_by: "orig".into(),
            rst_cause: String::new(),
            rst_reason: String::new(),
            uid: "Cabc".into(),
            iface: "eth0".into(),
        }
    }

    #[test]
    fn the_template_set_is_byte_for_byte_rfc_7011() {
        let set = template_set();
        let mut expected: Vec<u8> = vec![0, 2]; // set id 2
        let length_at = expected.len();
        expected.extend([0, 0]);
        for (id, src, dst, len) in [(256u16, 8u16, 12u16, 4u16), (257, 27, 28, 16)] {
            expected.extend(id.to_be_bytes());
            expected.extend([0, 22]); // 15 standard and reverse, 7 teardown
            for (element, length) in [
                (152u16, 8u16),
                (153, 8),
                (src, len),
                (dst, len),
                (7, 2),
                (11, 2),
                (4, 1),
                (136, 1),
            ] {
                expected.extend(element.to_be_bytes());
                expected.extend(length.to_be_bytes());
            }
            // Reverse elements: the enterprise bit, and PEN 29305 (0x7279).
            expected.extend([0x80, 6, 0, 2, 0, 0, 0x72, 0x79]);
            expected.extend([0, 6, 0, 2, 0, 2, 0, 8, 0, 1, 0, 8]);
            expected.extend([0x80, 2, 0, 8, 0, 0, 0x72, 0x79]);
            expected.extend([0x80, 1, 0, 8, 0, 0, 0x72, 0x79]);
            // teardown's: variable length (0xffff), PEN 32473 (0x7ed9).
            for element in 1..=7u8 {
                expected.extend([0x80, element, 0xff, 0xff, 0, 0, 0x7e, 0xd9]);
            }
            expected.extend([0, 82, 0xff, 0xff]); // interfaceName
        }
        for (id, dst, len) in [(258u16, 12u16, 4u16), (259, 28, 16)] {
            expected.extend(id.to_be_bytes());
            expected.extend([0, 12]); // 9 standard, 2 reverse, 1 teardown
            for (element, length) in [(152u16, 8u16), (153, 8), (dst, len), (11, 2), (4, 1)] {
                expected.extend(element.to_be_bytes());
                expected.extend(length.to_be_bytes());
            }
            expected.extend([0, 3, 0, 8, 0, 2, 0, 8, 0, 1, 0, 8]);
            expected.extend([0x80, 2, 0, 8, 0, 0, 0x72, 0x79]);
            expected.extend([0x80, 1, 0, 8, 0, 0, 0x72, 0x79]);
            expected.extend([1, 0x7a, 0, 8]); // 378
            expected.extend([0x80, 8, 0xff, 0xff, 0, 0, 0x7e, 0xd9]);
        }
        let length = expected.len() as u16;
        expected[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
        assert_eq!(set, expected);
        assert_eq!(
            set.len(),
            4 + 2 * (4 + 12 * 4 + 10 * 8) + 2 * (4 + 9 * 4 + 3 * 8)
        );
    }

    #[test]
    fn an_ipv4_record_is_byte_for_byte_its_template() {
        let mut bytes = Vec::new();
        record_v4().encode(&mut bytes);
        let mut expected = vec![];
        expected.extend([0, 0, 1, 0x90, 0, 0, 0, 1]);
        expected.extend([0, 0, 1, 0x90, 0, 0, 1, 2]);
        expected.extend([192, 0, 2, 1, 198, 51, 100, 2]);
        expected.extend([0x9c, 0x40, 0, 80]);
        expected.extend([6, 3]);
        expected.extend([0, 0x12, 0, 0x13]);
        expected.extend([0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1, 0x2c]);
        expected.extend([0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 3, 0xe8]);
        expected.extend(b"\x02SF\x08ShADadFf\x08graceful\x04orig\x00\x00\x04Cabc\x04eth0");
        assert_eq!(bytes, expected);
    }

    #[test]
    fn an_ipv6_record_carries_sixteen_byte_addresses() {
        let mut record = record_v4();
        record.source.0 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        record.destination.0 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        assert_eq!(
            &bytes[16..48],
            &[
                0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x20, 1, 0xd, 0xb8, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 2
            ]
        );
        let mut v4 = Vec::new();
        record_v4().encode(&mut v4);
        assert_eq!(bytes.len(), v4.len() + 24);
    }

    #[test]
    fn long_strings_take_three_length_bytes() {
        let mut out = Vec::new();
        variable(&mut out, &[b'x'; 254]);
        assert_eq!(out[0], 254);
        assert_eq!(out.len(), 255);
        out.clear();
        variable(&mut out, &[b'x'; 300]);
        assert_eq!(&out[..3], &[255, 1, 44]);
        assert_eq!(out.len(), 303);
    }

    #[test]
    fn a_message_has_its_header_templates_and_one_set_per_family() {
        let mut encoder = Encoder::new();
        let mut v6 = record_v4();
        v6.source.0 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        v6.destination.0 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let records = [record_v4(), record_v4(), v6];
        let messages = encoder.encode(0x6543_2100, &records, true);
        assert_eq!(messages.len(), 1);
        let message = &messages[0];
        assert_eq!(message.records, 3);
        let bytes = &message.bytes;
        assert_eq!(&bytes[0..2], &[0, 10]);
        assert_eq!(
            u16::from_be_bytes([bytes[2], bytes[3]]) as usize,
            bytes.len()
        );
        assert_eq!(&bytes[4..8], &[0x65, 0x43, 0x21, 0x00]);
        assert_eq!(&bytes[8..12], &[0, 0, 0, 0], "no records before");
        assert_eq!(&bytes[12..16], &[0, 0, 0, 1], "observation domain 1");
        let templates = template_set();
        assert_eq!(&bytes[16..16 + templates.len()], &templates[..]);
        let mut at = 16 + templates.len();
        let mut one = Vec::new();
        record_v4().encode(&mut one);
        assert_eq!(&bytes[at..at + 2], &[1, 0], "set 256");
        assert_eq!(
            u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
            4 + 2 * one.len()
        );
        assert_eq!(&bytes[at + 4..at + 4 + one.len()], &one[..]);
        at += 4 + 2 * one.len();
        assert_eq!(&bytes[at..at + 2], &[1, 1], "set 257");
        let mut six = Vec::new();
        records[2].encode(&mut six);
        assert_eq!(&bytes[at + 4..], &six[..]);

        // The next message's sequence counts the three records before it.
        let next = encoder.encode(0, &[record_v4()], false);
        assert_eq!(&next[0].bytes[8..12], &[0, 0, 0, 3]);
        assert_eq!(&next[0].bytes[16..18], &[1, 0], "no templates this time");
        assert_eq!(encoder.sequence, 4);
    }

    /// A flood debris summary is one aggregated record of template 258,
    /// field for field.
    #[test]
    fn a_debris_summary_is_one_aggregated_record() {
        let record = DebrisRecord {
            start_ms: 0x0102,
            end_ms: 0x0304,
            destination: (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 8080),
            records: 18_211,
            packets: [18_211, 9],
            octets: [728_440, 396],
            distinct_sources: 17_900,
            conn_states: "REJ=211,S0=18000".into(),
        };
        assert_eq!(record.template(), TEMPLATE_DEBRIS_V4);
        let mut bytes = Vec::new();
        record.encode_into(&mut bytes);
        let mut expected = Vec::new();
        expected.extend(0x0102u64.to_be_bytes());
        expected.extend(0x0304u64.to_be_bytes());
        expected.extend([192, 0, 2, 2]);
        expected.extend(8080u16.to_be_bytes());
        expected.push(6);
        for value in [18_211u64, 18_211, 728_440, 9, 396, 17_900] {
            expected.extend(value.to_be_bytes());
        }
        expected.push(16);
        expected.extend(b"REJ=211,S0=18000");
        assert_eq!(bytes, expected);
        let fixed: u16 = debris_fields(false)
            .iter()
            .map(|(_, length, _)| *length)
            .filter(|length| *length != VARIABLE)
            .sum();
        assert_eq!(bytes.len(), fixed as usize + 1 + 16, "the template's sizes");

        let mut encoder = Encoder::new();
        let messages = encoder.encode(0, &[record], false);
        assert_eq!(&messages[0].bytes[16..18], &[1, 2], "set 258");
        assert_eq!(messages[0].records, 1);
    }

    #[test]
    fn many_records_are_split_into_messages_that_fit_the_mtu() {
        let mut encoder = Encoder::new();
        let records = vec![record_v4(); 100];
        let messages = encoder.encode(0, &records, true);
        assert!(messages.len() > 1);
        let mut sequence = 0u32;
        for message in &messages {
            assert!(
                message.bytes.len() <= MAX_MESSAGE,
                "{}",
                message.bytes.len()
            );
            assert_eq!(
                u32::from_be_bytes(message.bytes[8..12].try_into().unwrap()),
                sequence
            );
            sequence += message.records as u32;
        }
        assert_eq!(sequence, 100);
        assert!(encoder.encode::<FlowRecord>(0, &[], false).is_empty());
    }

    #[test]
    fn flags_come_from_the_history_letters_per_side() {
        assert_eq!(
            history_flags(b"ShADadFf"),
            [
                tcp::SYN | tcp::ACK | tcp::FIN,
                tcp::SYN | tcp::ACK | tcp::FIN
            ]
        );
        assert_eq!(history_flags(b"Sr"), [tcp::SYN, tcp::RST]);
        assert_eq!(history_flags(b""), [0, 0]);
    }

    /// The exporter's messages as a collector receives them: templates in
    /// the first, again once 100 messages went without, and after a send
    /// error; none in between.
    #[test]
    fn templates_go_first_and_again_periodically() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut exporter = Exporter::start(collector.local_addr().unwrap()).unwrap();
        let mut buffer = [0u8; 2048];
        let mut next = |exporter: &mut Exporter| {
            exporter.send(&[record_v4()]);
            let n = collector.recv(&mut buffer).unwrap();
            n > 18 && u16::from_be_bytes([buffer[16], buffer[17]]) == TEMPLATE_SET
        };
        assert!(next(&mut exporter), "the first message has the templates");
        assert!(!next(&mut exporter));
        exporter.messages_since_templates = TEMPLATE_EVERY_MESSAGES;
        assert!(next(&mut exporter), "again after 100 messages");
        assert!(!next(&mut exporter));
        exporter.templates_at = None; // as a send error leaves it
        assert!(next(&mut exporter), "again after an error");
        assert_eq!(exporter.lost(), 0);
    }

    /// anyhow prints the cause after the message, once.
    #[test]
    fn a_collector_that_cannot_be_reached_says_so_once() {
        let err = anyhow::Error::from(ExporterError {
            addr: "[2001:db8::9]:4739".parse().unwrap(),
            source: io::Error::from_raw_os_error(libc::ENETUNREACH),
        });
        let text = format!("{err:#}");
        assert!(
            text.starts_with("cannot export IPFIX to [2001:db8::9]:4739: Network is unreachable"),
            "{text}"
        );
        assert_eq!(text.matches("unreachable").count(), 1, "{text}");
    }

    #[test]
    fn sending_to_a_closed_port_is_counted_not_fatal() {
        // A port nobody listens on: ICMP port unreachable makes a later send
        // fail with ECONNREFUSED, counted as lost.
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let mut exporter = Exporter::start(addr).unwrap();
        let mut encoder = Encoder::new();
        for _ in 0..5 {
            let messages = encoder.encode(0, &[record_v4()], false);
            exporter.queue.extend(messages);
            exporter.flush();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(exporter.queue.is_empty());
        assert!(exporter.lost() >= 1, "lost {}", exporter.lost());
    }
}

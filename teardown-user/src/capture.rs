//! Reading pcap and pcapng files, and turning their frames into Ethernet
//! frames the XDP program can parse.
//!
//! Written here rather than taken from a crate so that a damaged file (the
//! tcpdump corpus has many) yields every frame before the damage and a precise
//! reason after it, instead of one opaque failure.

use std::io::Read;

use thiserror::Error;

/// Largest captured length accepted for one record; anything larger is taken
/// as a sign of a corrupt file rather than allocated.
const MAX_RECORD_LEN: usize = 1 << 20;

pub mod link_type {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    pub const RAW_BSD: u32 = 12;
    pub const RAW_OPENBSD: u32 = 14;
    pub const RAW: u32 = 101;
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

#[derive(Debug, Error)]
pub enum CaptureError {
    /// The I/O error itself: callers say what they were reading. Its text
    /// is not repeated as a cause, which `{:#}` would print twice.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("not a pcap or pcapng file (magic {0:#010x})")]
    UnknownFormat(u32),
    #[error("corrupt {what} at byte {offset}")]
    Corrupt { what: &'static str, offset: u64 },
    #[error("file ends inside a {0} (truncated capture)")]
    Truncated(&'static str),
}

/// One captured frame, as stored in the file.
#[derive(Debug, Clone)]
pub struct Record {
    /// Capture time in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    pub link_type: u32,
    /// Length of the frame on the wire (may exceed `data.len()`).
    pub original_len: u32,
    pub data: Vec<u8>,
}

struct ByteReader<R: Read> {
    inner: R,
    offset: u64,
}

impl<R: Read> ByteReader<R> {
    /// Fills `buf`; `Ok(false)` on a clean end of file before the first byte.
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<bool, CaptureError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(CaptureError::Truncated(what)),
                Ok(n) => filled += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
        self.offset += buf.len() as u64;
        Ok(true)
    }

    fn exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), CaptureError> {
        if self.fill(buf, what)? {
            Ok(())
        } else {
            Err(CaptureError::Truncated(what))
        }
    }
}

#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, bytes: &[u8]) -> u16 {
        let pair = [bytes[0], bytes[1]];
        match self {
            Endian::Little => u16::from_le_bytes(pair),
            Endian::Big => u16::from_be_bytes(pair),
        }
    }

    fn u32(self, bytes: &[u8]) -> u32 {
        let quad = [bytes[0], bytes[1], bytes[2], bytes[3]];
        match self {
            Endian::Little => u32::from_le_bytes(quad),
            Endian::Big => u32::from_be_bytes(quad),
        }
    }
}

struct PcapState {
    endian: Endian,
    nanosecond: bool,
    link_type: u32,
}

struct Interface {
    link_type: u32,
    /// Timestamp units per second.
    units_per_second: u64,
}

struct PcapNgState {
    endian: Endian,
    interfaces: Vec<Interface>,
}

enum Format {
    Pcap(PcapState),
    PcapNg(PcapNgState),
}

/// Iterates over the records of a pcap or pcapng stream.
pub struct CaptureReader<R: Read> {
    reader: ByteReader<R>,
    format: Format,
    failed: bool,
}

const PCAPNG_SECTION_HEADER: u32 = 0x0A0D_0D0A;
const PCAPNG_BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

impl<R: Read> CaptureReader<R> {
    pub fn new(inner: R) -> Result<Self, CaptureError> {
        let mut reader = ByteReader { inner, offset: 0 };
        let mut magic = [0u8; 4];
        reader.exact(&mut magic, "file header")?;
        let format = match u32::from_le_bytes(magic) {
            0xA1B2_C3D4 => Format::Pcap(Self::pcap_header(&mut reader, Endian::Little, false)?),
            0xA1B2_3C4D => Format::Pcap(Self::pcap_header(&mut reader, Endian::Little, true)?),
            0xD4C3_B2A1 => Format::Pcap(Self::pcap_header(&mut reader, Endian::Big, false)?),
            0x4D3C_B2A1 => Format::Pcap(Self::pcap_header(&mut reader, Endian::Big, true)?),
            PCAPNG_SECTION_HEADER => {
                let mut state = PcapNgState {
                    endian: Endian::Little,
                    interfaces: Vec::new(),
                };
                Self::pcapng_section(&mut reader, &mut state)?;
                Format::PcapNg(state)
            }
            other => return Err(CaptureError::UnknownFormat(other)),
        };
        Ok(CaptureReader {
            reader,
            format,
            failed: false,
        })
    }

    fn pcap_header(
        reader: &mut ByteReader<R>,
        endian: Endian,
        nanosecond: bool,
    ) -> Result<PcapState, CaptureError> {
        // version (4), thiszone (4), sigfigs (4), snaplen (4), network (4).
        let mut rest = [0u8; 20];
        reader.exact(&mut rest, "file header")?;
        // The upper bits of the link-type field may carry FCS information.
        let link_type = endian.u32(&rest[16..20]) & 0x0fff_ffff;
        Ok(PcapState {
            endian,
            nanosecond,
            link_type,
        })
    }

    /// Reads the rest of a section header block whose type was just read.
    fn pcapng_section(
        reader: &mut ByteReader<R>,
        state: &mut PcapNgState,
    ) -> Result<(), CaptureError> {
        let mut head = [0u8; 8];
        reader.exact(&mut head, "section header block")?;
        let endian = if u32::from_le_bytes([head[4], head[5], head[6], head[7]])
            == PCAPNG_BYTE_ORDER_MAGIC
        {
            Endian::Little
        } else if u32::from_be_bytes([head[4], head[5], head[6], head[7]])
            == PCAPNG_BYTE_ORDER_MAGIC
        {
            Endian::Big
        } else {
            return Err(CaptureError::Corrupt {
                what: "section header byte-order magic",
                offset: reader.offset - 4,
            });
        };
        let total = endian.u32(&head[0..4]) as usize;
        if total < 28 || !total.is_multiple_of(4) || total > MAX_RECORD_LEN {
            return Err(CaptureError::Corrupt {
                what: "section header length",
                offset: reader.offset - 8,
            });
        }
        let mut body = vec![0u8; total - 12];
        reader.exact(&mut body, "section header block")?;
        state.endian = endian;
        // Interface numbering starts again in every section.
        state.interfaces.clear();
        Ok(())
    }

    fn next_pcap(&mut self) -> Result<Option<Record>, CaptureError> {
        let Format::Pcap(state) = &self.format else {
            unreachable!("next_pcap on a pcapng file")
        };
        let mut head = [0u8; 16];
        if !self.reader.fill(&mut head, "record header")? {
            return Ok(None);
        }
        let endian = state.endian;
        let seconds = endian.u32(&head[0..4]) as u64;
        let fraction = endian.u32(&head[4..8]) as u64;
        let captured = endian.u32(&head[8..12]) as usize;
        let original_len = endian.u32(&head[12..16]);
        if captured > MAX_RECORD_LEN {
            return Err(CaptureError::Corrupt {
                what: "record length",
                offset: self.reader.offset - 8,
            });
        }
        let timestamp_ns = seconds * 1_000_000_000
            + if state.nanosecond {
                fraction
            } else {
                fraction * 1000
            };
        let link_type = state.link_type;
        let mut data = vec![0u8; captured];
        self.reader.exact(&mut data, "record")?;
        Ok(Some(Record {
            timestamp_ns,
            link_type,
            original_len,
            data,
        }))
    }

    fn next_pcapng(&mut self) -> Result<Option<Record>, CaptureError> {
        loop {
            let Format::PcapNg(state) = &mut self.format else {
                unreachable!("next_pcapng on a pcap file")
            };
            let block_start = self.reader.offset;
            let mut head = [0u8; 4];
            if !self.reader.fill(&mut head, "block header")? {
                return Ok(None);
            }
            if u32::from_le_bytes(head) == PCAPNG_SECTION_HEADER {
                Self::pcapng_section(&mut self.reader, state)?;
                continue;
            }
            let endian = state.endian;
            let block_type = endian.u32(&head);
            let mut length = [0u8; 4];
            self.reader.exact(&mut length, "block header")?;
            let total = endian.u32(&length) as usize;
            if total < 12 || !total.is_multiple_of(4) || total > MAX_RECORD_LEN {
                return Err(CaptureError::Corrupt {
                    what: "block length",
                    offset: block_start,
                });
            }
            let mut body = vec![0u8; total - 8];
            self.reader.exact(&mut body, "block")?;
            let body = &body[..total - 12]; // drop the trailing length copy
            let corrupt = |what| CaptureError::Corrupt {
                what,
                offset: block_start,
            };
            match block_type {
                // Interface description block.
                1 => {
                    if body.len() < 8 {
                        return Err(corrupt("interface description block"));
                    }
                    let link_type = endian.u16(&body[0..2]) as u32;
                    let units_per_second = interface_resolution(endian, &body[8..]);
                    state.interfaces.push(Interface {
                        link_type,
                        units_per_second,
                    });
                }
                // Enhanced packet block (6) and the obsolete packet block (2).
                6 | 2 => {
                    if body.len() < 20 {
                        return Err(corrupt("packet block"));
                    }
                    let interface_id = if block_type == 6 {
                        endian.u32(&body[0..4]) as usize
                    } else {
                        endian.u16(&body[0..2]) as usize
                    };
                    let high = endian.u32(&body[4..8]) as u64;
                    let low = endian.u32(&body[8..12]) as u64;
                    let captured = endian.u32(&body[12..16]) as usize;
                    let original_len = endian.u32(&body[16..20]);
                    if 20 + captured > body.len() {
                        return Err(corrupt("packet block captured length"));
                    }
                    let interface = state
                        .interfaces
                        .get(interface_id)
                        .ok_or(corrupt("packet block interface id"))?;
                    let units = (high << 32) | low;
                    return Ok(Some(Record {
                        timestamp_ns: units_to_ns(units, interface.units_per_second),
                        link_type: interface.link_type,
                        original_len,
                        data: body[20..20 + captured].to_vec(),
                    }));
                }
                // Simple packet block: interface 0, no timestamp.
                3 => {
                    if body.len() < 4 {
                        return Err(corrupt("simple packet block"));
                    }
                    let original_len = endian.u32(&body[0..4]);
                    let captured = (original_len as usize).min(body.len() - 4);
                    let interface = state
                        .interfaces
                        .first()
                        .ok_or(corrupt("simple packet block before any interface"))?;
                    return Ok(Some(Record {
                        timestamp_ns: 0,
                        link_type: interface.link_type,
                        original_len,
                        data: body[4..4 + captured].to_vec(),
                    }));
                }
                // Name resolution, statistics, custom and other blocks carry no frames.
                _ => {}
            }
        }
    }
}

impl<R: Read> Iterator for CaptureReader<R> {
    type Item = Result<Record, CaptureError>;

    /// Yields records until the end of the file or the first error, which is
    /// yielded once.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let next = match self.format {
            Format::Pcap(_) => self.next_pcap(),
            Format::PcapNg(_) => self.next_pcapng(),
        };
        match next {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => None,
            Err(err) => {
                self.failed = true;
                Some(Err(err))
            }
        }
    }
}

/// The `if_tsresol` option of an interface description block, in units per second.
fn interface_resolution(endian: Endian, mut options: &[u8]) -> u64 {
    const DEFAULT: u64 = 1_000_000;
    while options.len() >= 4 {
        let code = endian.u16(&options[0..2]);
        let len = endian.u16(&options[2..4]) as usize;
        let padded = (len + 3) & !3;
        if code == 0 || options.len() < 4 + padded {
            break;
        }
        if code == 9 && len >= 1 {
            let value = options[4];
            let exponent = (value & 0x7f) as u32;
            let per_second = if value & 0x80 != 0 {
                2u64.checked_pow(exponent)
            } else {
                10u64.checked_pow(exponent)
            };
            return per_second.unwrap_or(DEFAULT).max(1);
        }
        options = &options[4 + padded..];
    }
    DEFAULT
}

fn units_to_ns(units: u64, per_second: u64) -> u64 {
    let seconds = units / per_second;
    let rest = units % per_second;
    seconds
        .saturating_mul(1_000_000_000)
        .saturating_add((rest as u128 * 1_000_000_000 / per_second as u128) as u64)
}

/// What to do with a frame of a given link type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Already Ethernet.
    AsIs,
    /// Rewritten as an Ethernet frame with this EtherType.
    Converted,
    /// Not a link type the monitor can see at XDP; not fed to the program.
    Unsupported,
}

/// The frame as the XDP program would see it: Ethernet, with VLAN tags if any.
/// Returns `None` for link types that cannot be mapped (or frames too short to
/// carry their own link header).
pub fn to_ethernet(link_type: u32, data: &[u8]) -> (Conversion, Option<Vec<u8>>) {
    let with_ethertype = |ethertype: u16, payload: &[u8]| {
        let mut frame = Vec::with_capacity(14 + payload.len());
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        (Conversion::Converted, Some(frame))
    };
    let by_ip_version = |payload: &[u8]| match payload.first().map(|b| b >> 4) {
        Some(4) => with_ethertype(0x0800, payload),
        Some(6) => with_ethertype(0x86DD, payload),
        // Unknown version: still a frame on the wire, as a non-IP EtherType.
        _ => with_ethertype(0x0000, payload),
    };
    let by_address_family = |family: u32, payload: &[u8]| match family {
        2 => with_ethertype(0x0800, payload),
        // AF_INET6 on Linux, the BSDs and Darwin.
        10 | 24 | 28 | 30 => with_ethertype(0x86DD, payload),
        _ => with_ethertype(0x0000, payload),
    };
    match link_type {
        link_type::ETHERNET => (Conversion::AsIs, Some(data.to_vec())),
        link_type::RAW | link_type::RAW_BSD | link_type::RAW_OPENBSD => by_ip_version(data),
        link_type::IPV4 => with_ethertype(0x0800, data),
        link_type::IPV6 => with_ethertype(0x86DD, data),
        link_type::LINUX_SLL if data.len() >= 16 => {
            with_ethertype(u16::from_be_bytes([data[14], data[15]]), &data[16..])
        }
        link_type::LINUX_SLL2 if data.len() >= 20 => {
            with_ethertype(u16::from_be_bytes([data[0], data[1]]), &data[20..])
        }
        link_type::NULL if data.len() >= 4 => {
            // Host byte order of the capturing machine: small values tell which.
            let little = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            let family = if little > 0xffff {
                little.swap_bytes()
            } else {
                little
            };
            by_address_family(family, &data[4..])
        }
        link_type::LOOP if data.len() >= 4 => by_address_family(
            u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
            &data[4..],
        ),
        link_type::LINUX_SLL | link_type::LINUX_SLL2 | link_type::NULL | link_type::LOOP => {
            // Shorter than its own link header: a runt, fed as such.
            (Conversion::Converted, Some(Vec::new()))
        }
        _ => (Conversion::Unsupported, None),
    }
}

pub fn link_type_name(link_type: u32) -> &'static str {
    match link_type {
        link_type::NULL => "null",
        link_type::ETHERNET => "ethernet",
        link_type::RAW | link_type::RAW_BSD | link_type::RAW_OPENBSD => "raw",
        link_type::LOOP => "loop",
        link_type::LINUX_SLL => "linux_sll",
        link_type::IPV4 => "ipv4",
        link_type::IPV6 => "ipv6",
        link_type::LINUX_SLL2 => "linux_sll2",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_file(nanosecond: bool, big_endian: bool, link: u32, frames: &[&[u8]]) -> Vec<u8> {
        let put32 = |out: &mut Vec<u8>, v: u32| {
            out.extend_from_slice(&if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        let put16 = |out: &mut Vec<u8>, v: u16| {
            out.extend_from_slice(&if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            })
        };
        let mut out = Vec::new();
        put32(&mut out, if nanosecond { 0xA1B2_3C4D } else { 0xA1B2_C3D4 });
        put16(&mut out, 2);
        put16(&mut out, 4);
        put32(&mut out, 0);
        put32(&mut out, 0);
        put32(&mut out, 65535);
        put32(&mut out, link);
        for (index, frame) in frames.iter().enumerate() {
            put32(&mut out, 1_600_000_000 + index as u32);
            put32(&mut out, 250);
            put32(&mut out, frame.len() as u32);
            put32(&mut out, frame.len() as u32 + 10);
            out.extend_from_slice(frame);
        }
        out
    }

    #[test]
    fn reads_pcap_in_both_byte_orders_and_resolutions() {
        for big in [false, true] {
            for nano in [false, true] {
                let file = pcap_file(nano, big, 1, &[&[1, 2, 3], &[4; 20]]);
                let records: Vec<_> = CaptureReader::new(&file[..])
                    .unwrap_or_else(|err| panic!("header: {err}"))
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|err| panic!("records: {err}"));
                assert_eq!(records.len(), 2);
                assert_eq!(records[0].data, [1, 2, 3]);
                assert_eq!(records[1].original_len, 30);
                let fraction = if nano { 250 } else { 250_000 };
                assert_eq!(
                    records[1].timestamp_ns,
                    1_600_000_001 * 1_000_000_000 + fraction
                );
                assert_eq!(records[0].link_type, 1);
            }
        }
    }

    #[test]
    fn truncated_pcap_yields_the_complete_records_then_an_error() {
        let file = pcap_file(false, false, 1, &[&[1, 2, 3], &[4; 20]]);
        let cut = &file[..file.len() - 5];
        let results: Vec<_> = CaptureReader::new(cut).expect("header").collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(CaptureError::Truncated("record"))));
    }

    #[test]
    fn rejects_unknown_formats() {
        assert!(matches!(
            CaptureReader::new(&b"hello world, not a capture"[..]),
            Err(CaptureError::UnknownFormat(_))
        ));
        assert!(matches!(
            CaptureReader::new(&[0xD4u8, 0xC3][..]),
            Err(CaptureError::Truncated(_))
        ));
    }

    fn pcapng_block(block_type: u32, body: &[u8]) -> Vec<u8> {
        let mut padded = body.to_vec();
        while !padded.len().is_multiple_of(4) {
            padded.push(0);
        }
        let total = (padded.len() + 12) as u32;
        let mut out = Vec::new();
        out.extend_from_slice(&block_type.to_le_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(&padded);
        out.extend_from_slice(&total.to_le_bytes());
        out
    }

    #[test]
    fn reads_pcapng_with_two_interfaces_and_nanosecond_resolution() {
        let mut file = pcapng_block(
            PCAPNG_SECTION_HEADER,
            &[
                0x4D, 0x3C, 0x2B, 0x1A, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        );
        // Interface 0: Ethernet, default microseconds.
        file.extend(pcapng_block(1, &[1, 0, 0, 0, 0, 0, 4, 0]));
        // Interface 1: raw IP, if_tsresol = 9 (nanoseconds), end of options.
        file.extend(pcapng_block(
            1,
            &[101, 0, 0, 0, 0, 0, 4, 0, 9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0],
        ));
        let epb = |interface: u32, units: u64, data: &[u8]| {
            let mut body = Vec::new();
            body.extend_from_slice(&interface.to_le_bytes());
            body.extend_from_slice(&((units >> 32) as u32).to_le_bytes());
            body.extend_from_slice(&(units as u32).to_le_bytes());
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            pcapng_block(6, &body)
        };
        file.extend(epb(0, 1_500_000, &[9; 15]));
        file.extend(pcapng_block(5, &[0; 8])); // statistics block: skipped
        file.extend(epb(1, 2_000_000_001, &[0x45, 0, 0]));
        let records: Vec<_> = CaptureReader::new(&file[..])
            .expect("header")
            .collect::<Result<_, _>>()
            .unwrap_or_else(|err| panic!("records: {err}"));
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].link_type, records[0].timestamp_ns),
            (1, 1_500_000_000)
        );
        assert_eq!(records[0].data.len(), 15);
        assert_eq!(
            (records[1].link_type, records[1].timestamp_ns),
            (101, 2_000_000_001)
        );
    }

    #[test]
    fn link_types_become_ethernet() {
        let ip = [0x45u8, 0, 0, 20];
        let (kind, frame) = to_ethernet(link_type::RAW, &ip);
        assert_eq!(kind, Conversion::Converted);
        let frame = frame.expect("raw IP converts");
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(&frame[14..], &ip);

        let mut sll = vec![0u8; 16];
        sll[14..16].copy_from_slice(&[0x86, 0xDD]);
        sll.extend_from_slice(&[0x60, 0, 0, 0]);
        let frame = to_ethernet(link_type::LINUX_SLL, &sll)
            .1
            .expect("sll converts");
        assert_eq!(&frame[12..], &[0x86, 0xDD, 0x60, 0, 0, 0]);

        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        sll2.push(0x45);
        let frame = to_ethernet(link_type::LINUX_SLL2, &sll2)
            .1
            .expect("sll2 converts");
        assert_eq!(&frame[12..], &[0x08, 0x00, 0x45]);

        // BSD loopback in either host byte order, and OpenBSD's network order.
        for header in [[2u8, 0, 0, 0], [0, 0, 0, 2]] {
            let mut null = header.to_vec();
            null.push(0x45);
            let frame = to_ethernet(link_type::NULL, &null)
                .1
                .expect("null converts");
            assert_eq!(&frame[12..], &[0x08, 0x00, 0x45]);
        }
        let frame = to_ethernet(link_type::LOOP, &[0, 0, 0, 24, 0x60])
            .1
            .expect("loop converts");
        assert_eq!(&frame[12..], &[0x86, 0xDD, 0x60]);

        assert_eq!(to_ethernet(105, &[0; 30]), (Conversion::Unsupported, None));
    }
}

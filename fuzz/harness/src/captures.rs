//! The `capture_reader` target: any bytes as a capture file.

use std::io::Read;

use crate::capture::{CaptureError, CaptureReader, Conversion, Record, to_ethernet};

/// Smallest number of file bytes one record can take: a pcapng block of 12
/// bytes, a pcap record header of 16. Bounds the records a file can yield.
const MIN_RECORD_BYTES: usize = 12;

/// Hands out at most `chunk` bytes per `read`, as a pipe or a slow disk
/// may: the reader must not depend on reads being filled.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Everything a reader yields: the records up to the first error, and that
/// error as text (`CaptureError` has no `PartialEq`).
fn read_all(reader: impl Read, file_len: usize) -> (Vec<Record>, Option<String>) {
    let mut reader = match CaptureReader::new(reader) {
        Ok(reader) => reader,
        Err(err) => {
            check_error(&err, file_len);
            return (Vec::new(), Some(err.to_string()));
        }
    };
    let mut records = Vec::new();
    let mut error = None;
    // The bound is a check of its own: a reader that yields records
    // without consuming bytes would loop forever.
    for _ in 0..=file_len / MIN_RECORD_BYTES + 1 {
        match reader.next() {
            Some(Ok(record)) => records.push(record),
            Some(Err(err)) => {
                check_error(&err, file_len);
                error = Some(err.to_string());
                break;
            }
            None => break,
        }
    }
    assert!(
        reader.next().is_none(),
        "the reader goes on after an error or the end, or yields more records than the file can hold"
    );
    (records, error)
}

fn check_error(err: &CaptureError, file_len: usize) {
    if let CaptureError::Corrupt { offset, .. } = err {
        assert!(
            *offset < file_len as u64,
            "{err}: the offset is outside a file of {file_len} bytes"
        );
    }
}

/// Reads `file` as a capture and checks that
///
/// * nothing panics, and reading ends (at the end of the file or at the
///   first error, which is yielded once);
/// * records carry no more bytes than the file holds, and a `Corrupt`
///   error points inside the file;
/// * the same file read a few bytes at a time gives the same records and
///   the same error;
/// * every record converts to an Ethernet frame as its link type says
///   (kept as is, or a 14-byte header in front of the rest, or refused),
///   and that frame passes the parser's checks ([`crate::frame::check`]),
///   as `teardown replay` feeds it to the kernel.
pub fn check(file: &[u8]) {
    let (records, error) = read_all(file, file.len());
    let carried: usize = records.iter().map(|record| record.data.len()).sum();
    assert!(
        carried <= file.len(),
        "{carried} record bytes from a {}-byte file",
        file.len()
    );

    // A chunk size from the input's length, so one input always reads the
    // same way (a crash must reproduce), and lengths try them all.
    let chunk = 1 + file.len() % 7;
    let (trickled, trickled_error) = read_all(Trickle { data: file, chunk }, file.len());
    assert_eq!(
        error, trickled_error,
        "reading {chunk} bytes at a time ends differently"
    );
    assert_eq!(
        records.len(),
        trickled.len(),
        "reading {chunk} bytes at a time yields another number of records"
    );
    for (whole, bit) in records.iter().zip(&trickled) {
        assert_eq!(
            (
                whole.timestamp_ns,
                whole.link_type,
                whole.original_len,
                &whole.data
            ),
            (bit.timestamp_ns, bit.link_type, bit.original_len, &bit.data),
            "reading {chunk} bytes at a time yields another record"
        );
    }

    for record in &records {
        match to_ethernet(record.link_type, &record.data) {
            (Conversion::AsIs, Some(frame)) => {
                assert_eq!(frame, record.data);
                crate::frame::check(&frame);
            }
            (Conversion::Converted, Some(frame)) => {
                // A runt (shorter than its own link header) becomes an
                // empty frame; anything else gets an Ethernet header.
                assert!(
                    frame.is_empty()
                        || (frame.len() >= 14 && frame.len() <= record.data.len() + 14),
                    "link type {} turned {} bytes into {}",
                    record.link_type,
                    record.data.len(),
                    frame.len()
                );
                crate::frame::check(&frame);
            }
            (Conversion::Unsupported, None) => {}
            (kind, frame) => panic!(
                "link type {}: {kind:?} with {:?} bytes",
                record.link_type,
                frame.map(|frame| frame.len())
            ),
        }
    }
}

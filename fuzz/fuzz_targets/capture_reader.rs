//! A pcap or pcapng file through teardown's capture reader, each record
//! through the link-type conversion and the parser, as `teardown replay`
//! takes them. See `teardown_fuzz_harness::captures`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|file: &[u8]| teardown_fuzz_harness::captures::check(file));

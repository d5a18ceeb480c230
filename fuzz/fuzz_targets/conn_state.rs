//! A conversation of crafted segments through the connection state machine,
//! the way the kernel's flow table drives it (fast path, close-out, reuse),
//! checking its invariants after every segment. See
//! `teardown_fuzz_harness::conversation` for the input's encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| teardown_fuzz_harness::conversation::check(input));

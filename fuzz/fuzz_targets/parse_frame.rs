//! One frame through the general parser and the common frame's shortcut
//! (`parse_common`): no panic, everything reported inside the frame, and the
//! two agreeing wherever the shortcut answers. See
//! `teardown_fuzz_harness::frame`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| teardown_fuzz_harness::frame::check(frame));

//! One frame through the tunnel decapsulator, with the default and a
//! swapped set of VXLAN and Geneve ports: no panic, every layer and inner
//! segment reported inside the frame and inside what carries it, the
//! kernel's layer-by-layer path agreeing, and no tunnel where the common
//! frame's shortcut answers. See `teardown_fuzz_harness::decap`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| teardown_fuzz_harness::decap::check(frame));

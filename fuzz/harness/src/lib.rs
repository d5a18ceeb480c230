//! What the fuzz targets check, as plain functions: each takes the fuzzer's
//! bytes and panics (the fuzzer's crash) when a promise of the code under
//! test is broken. Kept out of the `fuzz_target!` bodies so that a crashing
//! input can be replayed and debugged with an ordinary `cargo test`, and so
//! that the seeder writes inputs in the encodings these checks read.

/// teardown-user's capture reader, compiled here from its own source file:
/// it lives in the `teardown` binary crate, which has no library target, and
/// whose build script needs the compiled eBPF object. Including the one file
/// fuzzes exactly the code `teardown replay` runs without changing how that
/// crate is built; the module uses nothing of the crate but std and
/// thiserror.
#[path = "../../../teardown-user/src/capture.rs"]
pub mod capture;

pub mod captures;
pub mod conversation;
pub mod decap;
pub mod frame;
pub mod seeds;

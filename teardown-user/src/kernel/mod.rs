//! Loading the embedded eBPF object, attaching it, and reading its maps.

mod load;

pub use load::*;

//! Embeds the eBPF object. `cargo xtask build` compiles `teardown-ebpf` for the
//! BPF target first and passes its path in TEARDOWN_EBPF_OBJECT.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TEARDOWN_EBPF_OBJECT");
    let object = match env::var_os("TEARDOWN_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            // Where `cargo xtask build` leaves it, relative to the workspace root.
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
            manifest.join("../target/ebpf/bpfel-unknown-none/release/teardown")
        }
    };
    if !object.is_file() {
        panic!(
            "the eBPF object {} does not exist: build through `cargo xtask build` (or `cargo xtask test`), which compiles teardown-ebpf first",
            object.display()
        );
    }
    let object = object
        .canonicalize()
        .expect("canonical path of the eBPF object");
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rustc-env=TEARDOWN_EBPF_OBJECT={}", object.display());
}

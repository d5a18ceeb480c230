//! Builds the eBPF program (`teardown-ebpf`) for the BPF target and embeds
//! it, as aya-template's build script does: `cargo build`, `cargo install
//! --path teardown-user`, `cargo check`, clippy and rust-analyzer all get
//! the object this way, and xtask needs no build step of its own.
//!
//! It needs the nightly toolchain with rust-src, and bpf-linker where
//! `cargo xtask provision` builds it (under `~/.cache/teardown/bpf-linker/`,
//! keyed by the nightly's version) or else on PATH; when one is missing,
//! the build stops with one line saying what to run.
//!
//! Two escape hatches:
//! - `TEARDOWN_EBPF_OBJECT=FILE` embeds a prebuilt object instead;
//! - `AYA_BUILD_SKIP=1` (aya-build's own variable) embeds none, for
//!   rust-analyzer or clippy on a machine without the tools: the binary
//!   then says it cannot load programs.
//!
//! Why not aya-build (0.2) itself: it passes its own rustflags in
//! `CARGO_ENCODED_RUSTFLAGS`, which replace the target's rustflags in
//! `.cargo/config.toml` (`target-cpu=v3`, which the flow table's slot locks
//! need for their atomics, and misaligned packet loads); and it only looks
//! for bpf-linker on PATH.

#[path = "build/ebpf.rs"]
mod ebpf;

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Stdio,
};

/// What to run when something is missing.
const PROVISION: &str = "run `cargo xtask provision` (adds rust-src to the nightly toolchain and builds bpf-linker against its LLVM, about a minute)";

fn main() {
    if let Err(message) = run() {
        // One line, and the build fails.
        println!("cargo::error={message}");
    }
}

fn run() -> Result<(), String> {
    println!("cargo::rerun-if-env-changed=TEARDOWN_EBPF_OBJECT");
    println!("cargo::rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let embedded = out_dir.join("teardown.bpf.o");
    if let Some(prebuilt) = env::var_os("TEARDOWN_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo::rerun-if-changed={}", prebuilt.display());
        copy_if_changed(&prebuilt, &embedded)?;
    } else if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        println!(
            "cargo::warning=AYA_BUILD_SKIP is set: no eBPF program embedded, this teardown cannot run"
        );
        write_if_changed(&embedded, &[])?;
    } else {
        let built = build(&out_dir)?;
        copy_if_changed(&built, &embedded)?;
    }
    // Not TEARDOWN_EBPF_OBJECT: cargo also sets rustc-env variables for
    // the programs it runs (`cargo test`, `cargo run`), and a cargo started
    // from one of them would take the variable for a prebuilt object.
    println!(
        "cargo::rustc-env=TEARDOWN_EMBEDDED_OBJECT={}",
        embedded.display()
    );
    Ok(())
}

/// Builds teardown-ebpf with the nightly cargo; returns the object's path.
fn build(out_dir: &Path) -> Result<PathBuf, String> {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let workspace = manifest
        .parent()
        .ok_or("teardown-user has no parent directory")?
        .to_path_buf();
    let crate_dir = workspace.join(ebpf::PACKAGE);
    if !crate_dir.join("Cargo.toml").is_file() {
        return Err(format!(
            "{} is not beside teardown-user: build teardown from its repository",
            crate_dir.display()
        ));
    }
    // What the object is built from; Cargo.lock and the config's rustflags too.
    for input in [
        crate_dir.clone(),
        workspace.join("teardown-common/src"),
        workspace.join("teardown-common/Cargo.toml"),
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
        workspace.join(".cargo/config.toml"),
    ] {
        println!("cargo::rerun-if-changed={}", input.display());
    }

    let version = ebpf::nightly_version()?;
    let sysroot = ebpf::nightly_sysroot()?;
    // A nightly updated in place (`rustup update`) rebuilds the object.
    println!(
        "cargo::rerun-if-changed={}",
        sysroot.join("bin/rustc").display()
    );
    if !ebpf::has_rust_src(&sysroot) {
        return Err(format!(
            "the {} toolchain lacks rust-src, which teardown's eBPF program needs (-Z build-std=core): {}",
            ebpf::NIGHTLY,
            PROVISION
        ));
    }
    let linker_bin = ebpf::bpf_linker_root(&version).join("bin");
    let linker_bin = if ebpf::bpf_linker_works(&linker_bin) {
        linker_bin
    } else if let Some(on_path) = on_path("bpf-linker") {
        on_path
    } else {
        return Err(format!(
            "no bpf-linker for {version} (in {} or on PATH), which teardown's eBPF program needs: {}",
            linker_bin.display(),
            PROVISION
        ));
    };
    println!(
        "cargo::rerun-if-changed={}",
        linker_bin.join("bpf-linker").display()
    );

    let target_dir = ebpf_target_dir(out_dir);
    let mut cargo = ebpf::cargo(&workspace, &target_dir, &linker_bin, "build");
    // Cargo shows a build script's stderr when it fails: the compiler's
    // messages are there.
    cargo.stdout(Stdio::from(std::io::stderr()));
    let status = cargo
        .status()
        .map_err(|err| format!("cannot start {cargo:?}: {err}"))?;
    if !status.success() {
        return Err(format!(
            "building teardown's eBPF program (teardown-ebpf) failed ({status}): the compiler's messages are above"
        ));
    }
    Ok(target_dir.join(ebpf::TARGET).join("release/teardown"))
}

/// `ebpf/` in the outer build's target directory (the first ancestor of
/// OUT_DIR that cargo tagged with CACHEDIR.TAG): shared by every profile
/// and by `cargo check`, so the eBPF crate and `core` are compiled once;
/// its own directory, since cargo locks the outer one while this runs.
fn ebpf_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(|dir| dir.join("ebpf"))
        .unwrap_or_else(|| out_dir.join("ebpf"))
}

/// The directory on PATH holding `tool`.
fn on_path(tool: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).find(|dir| dir.join(tool).is_file())
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<(), String> {
    let bytes = fs::read(from)
        .map_err(|err| format!("reading the eBPF object {}: {err}", from.display()))?;
    write_if_changed(to, &bytes)
}

/// Writes only on a change, so an unchanged object does not make rustc
/// embed it again.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    fs::write(path, bytes).map_err(|err| format!("writing {}: {err}", path.display()))
}

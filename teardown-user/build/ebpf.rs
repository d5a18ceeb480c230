//! How `teardown-ebpf` is built: the toolchain it needs, where the
//! provisioning (`cargo xtask provision`) puts bpf-linker, and the one
//! cargo command that builds (or lints) it for the BPF target.
//!
//! Compiled twice, by path: into teardown-user's build script, which builds
//! the object it embeds, and into xtask, which installs the tools and runs
//! clippy on the eBPF crate. std only, so the build script needs no
//! build-dependencies.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The toolchain that builds the eBPF crate (`-Z build-std=core`).
pub const NIGHTLY: &str = "nightly";

/// The bpf-linker release xtask builds against the nightly's own LLVM.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The eBPF crate's package, target and the feature that enables its
/// programs (without it, host commands over the whole workspace skip it).
pub const PACKAGE: &str = "teardown-ebpf";
pub const TARGET: &str = "bpfel-unknown-none";
pub const FEATURE: &str = "bpf";

/// What the outer cargo sets for its children (build scripts, `cargo
/// xtask`), or a user sets for the host build, and must not reach the
/// nightly build of the eBPF crate: the outer toolchain and its wrappers
/// (clippy's driver under `cargo clippy`), host flags that would replace
/// the `[target.bpfel-unknown-none]` rustflags of `.cargo/config.toml`, and
/// the host build's target and target directory.
pub const OUTER_VARS: &[&str] = &[
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "RUSTUP_TOOLCHAIN",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
];

/// Prefixes of the variables cargo sets for a build script about the
/// package it builds; the nightly cargo sets its own for the eBPF crate's
/// dependencies, and must not see stale ones (a feature of teardown-user
/// is no feature of aya-ebpf).
const OUTER_PREFIXES: &[&str] = &[
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
];

/// `rustup run nightly TOOL`: the nightly's tool whatever the outer
/// toolchain (a build script's PATH may lead to the stable one's binaries
/// rather than rustup's proxies, where `+nightly` would not work).
pub fn nightly(tool: &str) -> Command {
    let mut command = Command::new(rustup());
    command.args(["run", NIGHTLY, tool]);
    command.env_remove("RUSTUP_TOOLCHAIN");
    command
}

/// rustup: on PATH, or in `$CARGO_HOME/bin` (`~/.cargo/bin`).
fn rustup() -> PathBuf {
    let on_path = env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("rustup"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
            .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
            .join("bin/rustup")
    })
}

/// Runs `command`; its trimmed standard output, or why it failed.
fn output(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    match command.output() {
        Ok(output) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        }
        Ok(output) => Err(format!(
            "{shown} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(err) => Err(format!("cannot start {shown}: {err}")),
    }
}

/// `rustc --version` of the nightly, which names the LLVM its bitcode is
/// for (the key of the cached bpf-linker).
pub fn nightly_version() -> Result<String, String> {
    output(nightly("rustc").arg("--version")).map_err(|err| {
        format!(
            "teardown's eBPF program needs rustup and the {NIGHTLY} toolchain with rust-src ({err}): install them with `rustup toolchain install {NIGHTLY} --component rust-src`"
        )
    })
}

/// The nightly's sysroot (its LLVM library and, with rust-src, the
/// sources of `core`).
pub fn nightly_sysroot() -> Result<PathBuf, String> {
    output(nightly("rustc").args(["--print", "sysroot"])).map(PathBuf::from)
}

/// Whether the nightly has rust-src, which `-Z build-std=core` compiles.
pub fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

/// `$XDG_CACHE_HOME/teardown`, else `~/.cache/teardown`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("teardown");
    }
    let home = env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("teardown")
}

/// Where bpf-linker is installed for the nightly `version` (`--root` of
/// `cargo install`; the binary is in its `bin/`). Keyed by the nightly's
/// version: a changed nightly gets a linker for its LLVM instead of a
/// bitcode version error.
pub fn bpf_linker_root(version: &str) -> PathBuf {
    let key: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    cache_root()
        .join("bpf-linker")
        .join(format!("{BPF_LINKER_VERSION}-{key}"))
}

/// Whether `bin/bpf-linker` runs.
pub fn bpf_linker_works(bin: &Path) -> bool {
    Command::new(bin.join("bpf-linker"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `cargo SUBCOMMAND` (build, clippy) of the eBPF crate for the BPF
/// target on the nightly, from the workspace root (whose
/// `.cargo/config.toml` holds the target's rustflags), release, with
/// `linker_bin` first on PATH, its own target directory and none of the
/// outer build's settings.
pub fn cargo(workspace: &Path, target_dir: &Path, linker_bin: &Path, subcommand: &str) -> Command {
    let mut cargo = nightly("cargo");
    cargo
        .current_dir(workspace)
        .arg(subcommand)
        .args(["--package", PACKAGE, "--features", FEATURE, "--release"])
        .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(target_dir);
    let mut paths = vec![linker_bin.to_path_buf()];
    if let Some(existing) = env::var_os("PATH") {
        paths.extend(env::split_paths(&existing));
    }
    if let Ok(path) = env::join_paths(paths) {
        cargo.env("PATH", path);
    }
    for key in OUTER_VARS {
        cargo.env_remove(key);
    }
    for (key, _) in env::vars_os() {
        let name = key.to_string_lossy();
        if OUTER_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
            cargo.env_remove(&key);
        }
    }
    cargo
}

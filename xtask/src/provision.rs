//! Installs what building and testing need, saying what it does at each step.
//!
//! On a fresh machine of this project's kind the nightly toolchain is present
//! but lacks `rust-src`; bpf-linker must be built against the nightly's own
//! LLVM (no matching LLVM comes from Debian); the tests need a few Debian
//! packages. Each step checks first and only acts when something is missing.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow, bail};

use crate::{ebpf, run_command, say};

/// The toolchain that builds the eBPF crate (`-Z build-std`).
pub const NIGHTLY: &str = ebpf::NIGHTLY;

/// The bpf-linker release and the LLVM feature matching the nightly's LLVM.
const BPF_LINKER_VERSION: &str = ebpf::BPF_LINKER_VERSION;

/// `rustc --version` of the nightly, which names the LLVM the bitcode targets.
pub fn nightly_version() -> anyhow::Result<String> {
    ebpf::nightly_version().map_err(|err| anyhow!(err))
}

/// What the build script needs to build the eBPF object (`cargo xtask
/// provision`): the nightly with rust-src, and bpf-linker for its LLVM.
/// Returns the directory holding bpf-linker.
pub fn ebpf_tools() -> anyhow::Result<PathBuf> {
    nightly_version()?;
    ensure_rust_src()?;
    ensure_bpf_linker()
}

/// Adds `rust-src` to the nightly toolchain if it is missing.
pub fn ensure_rust_src() -> anyhow::Result<()> {
    let sysroot = ebpf::nightly_sysroot().map_err(|err| anyhow!(err))?;
    if ebpf::has_rust_src(&sysroot) {
        return Ok(());
    }
    say("installing rust-src for the nightly toolchain (needed for -Z build-std=core)");
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))
    .context("installing rust-src; by hand: rustup component add rust-src --toolchain nightly")
}

/// The shared LLVM library shipped inside the nightly toolchain, and its major version.
fn nightly_llvm() -> anyhow::Result<(PathBuf, u32)> {
    let sysroot = ebpf::nightly_sysroot().map_err(|err| anyhow!(err))?;
    let lib = sysroot.join("lib");
    // `libLLVM.so.<major>.<minor>-rust-...` is the library; `libLLVM-<major>-...so`
    // beside it is a linker script.
    for entry in std::fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if let Some(rest) = name.strip_prefix("libLLVM.so.") {
            let major = rest
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .with_context(|| format!("cannot read the LLVM version from {name}"))?;
            return Ok((path, major));
        }
    }
    bail!(
        "the nightly toolchain at {} ships no libLLVM.so.*: cannot build bpf-linker against it",
        lib.display()
    )
}

/// Returns the directory holding a bpf-linker built for the nightly's LLVM,
/// building it (about a minute) the first time for each nightly version.
pub fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let version = nightly_version()?;
    let root = ebpf::bpf_linker_root(&version);
    let bin = root.join("bin");
    if ebpf::bpf_linker_works(&bin) {
        return Ok(bin);
    }
    let (library, major) = nightly_llvm()?;
    say(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} ({version}) into {} (about a minute, once per nightly)",
        root.display()
    ));
    // bpf-linker's build looks for LLVM_PREFIX/lib/libLLVM.so: give it one that
    // points at the nightly's own library.
    let prefix = root.join("llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in [
        "libLLVM.so".to_string(),
        library
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string(),
    ] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link)
            .with_context(|| format!("linking {} to {}", link.display(), library.display()))?;
    }
    let feature = format!("llvm-{major}");
    let mut install = Command::new("cargo");
    install
        .args([
            &format!("+{NIGHTLY}"),
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", &feature, "--root"])
        .arg(&root)
        .env("LLVM_PREFIX", &prefix);
    run_command(&mut install).with_context(|| {
        format!(
            "building bpf-linker; by hand: LLVM_PREFIX={} cargo +nightly install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features {feature} --root {}",
            prefix.display(),
            root.display()
        )
    })?;
    Ok(bin)
}

/// The cargo-fuzz release `cargo xtask fuzz` drives.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Returns the directory holding cargo-fuzz, installing it (a few minutes
/// on two cores, once) into the cache the first time. Built with the
/// nightly toolchain, which the fuzz builds need anyway (sanitizers); it
/// is kept apart from `~/.cargo/bin` and pinned, so a fresh machine gets
/// the version `cargo xtask fuzz` was written against.
pub fn ensure_cargo_fuzz() -> anyhow::Result<PathBuf> {
    let root = ebpf::cache_root()
        .join("cargo-fuzz")
        .join(CARGO_FUZZ_VERSION);
    let bin = root.join("bin");
    // cargo passes the subcommand's name first, as cargo-fuzz expects.
    if Command::new(bin.join("cargo-fuzz"))
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(bin);
    }
    say(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (builds and runs the libFuzzer targets in fuzz/) from crates.io with the nightly toolchain into {} (a few minutes, once)",
        root.display()
    ));
    let mut install = Command::new("cargo");
    install
        .args([
            &format!("+{NIGHTLY}"),
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
            "--root",
        ])
        .arg(&root);
    for key in crate::OUTER_TOOLCHAIN_VARS {
        install.env_remove(key);
    }
    run_command(&mut install).with_context(|| {
        format!(
            "installing cargo-fuzz (is crates.io reachable?); by hand: cargo +nightly install cargo-fuzz --locked --version {CARGO_FUZZ_VERSION} --root {}",
            root.display()
        )
    })?;
    Ok(bin)
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs missing Debian packages with apt-get (as root), or says how to.
pub fn ensure_packages(packages: &[&str], why: &str) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !crate::is_root() {
        bail!("missing Debian packages {why}: install them with `sudo apt-get install {list}`");
    }
    say(&format!("installing Debian packages {why}: {list}"));
    run_command(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update; by hand: apt-get update")?;
    // tshark asks whether non-root users may capture; answer no, unattended.
    let mut preseed = Command::new("sh");
    preseed.args([
        "-c",
        "echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections",
    ]);
    let _ = run_command(&mut preseed);
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing packages; by hand: apt-get install {list}"))
}

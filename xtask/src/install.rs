//! `cargo xtask install`: the release binary, its man pages and shell
//! completions, where a packager or an operator expects them under a root
//! (`/usr/local` by default); and `cargo xtask dist`, the same tree in a
//! release tarball with the licences, the systemd unit and the logrotate
//! snippet.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{command_output, run_command, say, workspace_root};

/// The completion scripts: (shell, path under the root).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "share/bash-completion/completions/teardown"),
    ("zsh", "share/zsh/site-functions/_teardown"),
    ("fish", "share/fish/vendor_completions.d/teardown.fish"),
];

/// Installs `binary` as `ROOT/bin/teardown`, its man pages in
/// `ROOT/share/man/man1` and its completions (see [`COMPLETIONS`]); the
/// pages and scripts come from the binary itself, so they match it.
pub fn install(binary: &Path, root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut installed = Vec::new();
    let bin = root.join("bin/teardown");
    create_parent(&bin)?;
    // Copied to a temporary name and renamed, so a running teardown keeps
    // its (old) binary and the path is never half-written.
    let partial = bin.with_extension("partial");
    fs::copy(binary, &partial)
        .with_context(|| format!("copying {} to {}", binary.display(), partial.display()))?;
    fs::rename(&partial, &bin).with_context(|| format!("installing {}", bin.display()))?;
    installed.push(bin.clone());

    let man = root.join("share/man/man1");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    run_command(Command::new(&bin).arg("man-pages").arg(&man)).context("writing the man pages")?;
    for entry in fs::read_dir(&man).with_context(|| format!("reading {}", man.display()))? {
        let path = entry?.path();
        let is_page = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("teardown") && name.ends_with(".1"));
        if is_page {
            installed.push(path);
        }
    }

    for (shell, relative) in COMPLETIONS {
        let path = root.join(relative);
        create_parent(&path)?;
        let script = command_output(Command::new(&bin).args(["completions", shell]))?;
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        installed.push(path);
    }
    for path in &installed {
        say(&format!("installed {}", path.display()));
    }
    Ok(installed)
}

/// Builds `target/dist/teardown-VERSION-ARCH-linux.tar.gz`: the tree
/// [`install`] makes under a root, plus the licences, the README, and
/// `dist/` (systemd unit, logrotate snippet) under `share/teardown`.
pub fn dist(binary: &Path) -> anyhow::Result<PathBuf> {
    let version = command_output(Command::new(binary).arg("--version"))?
        .trim()
        .trim_start_matches("teardown ")
        .to_string();
    let name = format!("teardown-{version}-{}-linux", std::env::consts::ARCH);
    let out = workspace_root().join("target/dist");
    let stage = out.join(&name);
    let _ = fs::remove_dir_all(&stage);
    install(binary, &stage)?;
    let share = stage.join("share/teardown");
    fs::create_dir_all(&share)?;
    let root = workspace_root();
    for file in ["LICENSE-MIT", "LICENSE-APACHE", "README.md"] {
        fs::copy(root.join(file), stage.join(file)).with_context(|| format!("copying {file}"))?;
    }
    run_command(
        Command::new("cp")
            .arg("-r")
            .arg(root.join("dist/systemd"))
            .arg(root.join("dist/logrotate"))
            .arg(&share),
    )?;
    let tarball = out.join(format!("{name}.tar.gz"));
    run_command(
        Command::new("tar")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&out)
            .arg(&name),
    )
    .context("packing the tarball")?;
    say(&format!("wrote {}", tarball.display()));
    Ok(tarball)
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    let parent = path.parent().context("an installed file has a directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

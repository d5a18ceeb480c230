//! The man pages and shell completions, generated from the command line's
//! own definition, so they say what `--help` says. `cargo xtask install`
//! installs them; `teardown completions SHELL` prints a script on stdout.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::report::output::LineOutput;

/// Writes the completion script for `shell` on stdout.
pub fn completions(mut command: clap::Command, shell: clap_complete::Shell) -> anyhow::Result<()> {
    let name = command.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    let script = String::from_utf8(script).context("the completion script is not UTF-8")?;
    let mut stdout = LineOutput::stdout().context("stdout is not open")?;
    stdout
        .write(&script)
        .map_err(|err| err.error)
        .context("writing the completion script")
}

/// Writes `teardown.1` and a page per subcommand (`teardown-run.1`, ...)
/// into `dir`, which must exist; returns the files written.
pub fn man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut command = command;
    command.build();
    let mut written = Vec::new();
    let top = command.get_name().to_string();
    write_page(&command, &dir.join(format!("{top}.1")), &mut written)?;
    for sub in command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
    {
        let name = format!("{top}-{}", sub.get_name());
        let page = sub.clone().display_name(name.clone());
        write_page(&page, &dir.join(format!("{name}.1")), &mut written)?;
    }
    Ok(written)
}

fn write_page(
    command: &clap::Command,
    path: &Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut roff)
        .with_context(|| format!("rendering {}", path.display()))?;
    std::fs::File::create(path)
        .and_then(|mut file| file.write_all(&roff))
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_subcommand_and_its_flags() {
        use clap::CommandFactory as _;
        let dir = std::env::temp_dir().join(format!("teardown-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let written = man_pages(crate::Cli::command(), &dir).expect("man pages");
        let names: Vec<_> = written
            .iter()
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for page in [
            "teardown.1",
            "teardown-run.1",
            "teardown-replay.1",
            "teardown-bench.1",
        ] {
            assert!(
                names.iter().any(|name| name == page),
                "{page} not in {names:?}"
            );
        }
        assert!(
            !names
                .iter()
                .any(|name| name.contains("man") || name.contains("help")),
            "{names:?}"
        );
        let run = std::fs::read_to_string(dir.join("teardown-run.1")).expect("reading");
        assert!(
            run.contains("metrics\\-addr") && run.contains("\\-i"),
            "{run}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

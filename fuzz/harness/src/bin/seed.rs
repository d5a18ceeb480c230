//! `seed OUT DIR...`: writes seed corpora for the fuzz targets into
//! OUT/capture_reader, OUT/parse_frame, OUT/conn_state and OUT/decapsulate
//! (emptied first),
//! from every capture file under the DIRs and from crafted frames. Run by
//! `cargo xtask fuzz` before each fuzzing run; the fuzzer reads the seeds
//! and keeps what adds coverage in its own corpus.

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

use teardown_fuzz_harness::seeds::{Seeds, tunnel_frames};

/// Files under `dir` (recursively) that look like captures, sorted so the
/// seeds are the same on every run.
fn captures_under(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            captures_under(&path, out)?;
        } else if path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| matches!(ext, "pcap" | "pcapng" | "cap"))
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// A stable name for a seed: FNV-1a of its bytes.
fn name_of(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn write_all<'a>(dir: &Path, seeds: impl Iterator<Item = &'a Vec<u8>>) -> std::io::Result<usize> {
    let mut count = 0;
    for seed in seeds {
        fs::write(dir.join(name_of(seed)), seed)?;
        count += 1;
    }
    Ok(count)
}

fn run(out: &Path, dirs: &[PathBuf]) -> std::io::Result<()> {
    let mut seeds = Seeds::default();
    seeds.add_crafted();
    let mut files = Vec::new();
    for dir in dirs {
        captures_under(dir, &mut files)?;
    }
    for file in &files {
        let bytes = fs::read(file)?;
        let name = file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        seeds.add_capture(&name, &bytes);
    }
    let target_dir = |target: &str| -> std::io::Result<PathBuf> {
        let dir = out.join(target);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    let captures = target_dir("capture_reader")?;
    for (name, bytes) in &seeds.captures {
        fs::write(captures.join(format!("{}-{name}", name_of(bytes))), bytes)?;
    }
    let frames = write_all(&target_dir("parse_frame")?, seeds.frames())?;
    let conversations = write_all(&target_dir("conn_state")?, seeds.conversations())?;
    // The encapsulated frames, and every frame seed (a capture's tunnels
    // among them).
    let tunnels = tunnel_frames();
    let mut decap_seeds: Vec<&Vec<u8>> = tunnels.iter().chain(seeds.frames()).collect();
    decap_seeds.sort();
    decap_seeds.dedup();
    let decap = write_all(&target_dir("decapsulate")?, decap_seeds.into_iter())?;
    println!(
        "seeds from {} capture files: capture_reader {}, parse_frame {frames}, conn_state {conversations}, decapsulate {decap}",
        files.len(),
        seeds.captures.len(),
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let Some((out, dirs)) = args.split_first() else {
        eprintln!("usage: seed OUT [CAPTURE_DIR...]");
        return ExitCode::FAILURE;
    };
    match run(out, dirs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("seed: {err}");
            ExitCode::FAILURE
        }
    }
}

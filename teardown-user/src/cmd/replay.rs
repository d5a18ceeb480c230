//! `teardown replay`: every frame of a capture through the real kernel program.

use std::{collections::BTreeMap, fs::File, io::BufReader, path::Path};

use anyhow::Context as _;
use serde_json::{Map, Value, json};
use teardown_common::{
    counters::{Counter, Counters, Tallies, tally},
    names,
    parse::{ETH_HLEN, parse},
    tunnel::hands_to_tunnel_program,
};

use crate::{
    capture::{CaptureReader, Conversion, link_type_name, to_ethernet},
    conn::tracker::{Clock, Ended, Tracker},
    kernel::{Kernel, LoadOptions},
    report::output::{self, LineOutput, say},
};

/// Frames are cut to this length before BPF_PROG_TEST_RUN: the kernel's linear
/// XDP buffer for a test run is one page less headroom (256) and tailroom
/// (320). The program reads headers only, and payload lengths come from the IP
/// header, so nothing it counts depends on bytes past this point.
const MAX_TEST_RUN_FRAME: usize = 4096 - 256 - 320;

const XDP_PASS: u32 = 2;

/// What one capture file gave.
pub struct FileReport {
    pub file: String,
    /// Records in the file, of any link type.
    pub frames: u64,
    /// Records by link type name.
    pub link_types: BTreeMap<&'static str, u64>,
    /// Records of link types the monitor cannot see at XDP, not fed to it.
    pub unsupported_frames: u64,
    /// Frames too short for BPF_PROG_TEST_RUN (under 14 bytes), classified on
    /// the host by the same shared parser.
    pub runt_frames: u64,
    /// Frames captured shorter than they were on the wire (snap length).
    pub snapped_frames: u64,
    /// Capture time of the first and last frame, nanoseconds since the epoch.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    /// Verdicts other than XDP_PASS (there should be none).
    pub not_passed: u64,
    pub counters: Counters,
    /// Why reading stopped early, if it did.
    pub warning: Option<String>,
}

impl FileReport {
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("file".into(), json!(self.file));
        object.insert("frames".into(), json!(self.frames));
        for counter in Counter::ALL {
            object.insert(counter.key().into(), json!(self.counters.get(*counter)));
        }
        object.insert("link_types".into(), json!(self.link_types));
        object.insert("unsupported_frames".into(), json!(self.unsupported_frames));
        object.insert("runt_frames".into(), json!(self.runt_frames));
        object.insert("snapped_frames".into(), json!(self.snapped_frames));
        let seconds = |ns: Option<u64>| ns.map(|ns| ns as f64 / 1e9);
        object.insert("first_ts".into(), json!(seconds(self.first_ns)));
        object.insert("last_ts".into(), json!(seconds(self.last_ns)));
        object.insert("not_passed".into(), json!(self.not_passed));
        object.insert("warning".into(), json!(self.warning));
        Value::Object(object)
    }

    pub fn human_line(&self) -> String {
        let mut line = format!("{}: {} frames", self.file, self.frames);
        for counter in [
            Counter::Tcp,
            Counter::Syn,
            Counter::SynAck,
            Counter::Fin,
            Counter::Rst,
            Counter::Malformed,
        ] {
            line.push_str(&format!(
                "  {} {}",
                counter.key(),
                self.counters.get(counter)
            ));
        }
        let links: Vec<String> = self
            .link_types
            .iter()
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        line.push_str(&format!("  [{}]", links.join(", ")));
        if self.unsupported_frames > 0 {
            line.push_str(&format!(
                "  ({} frames of unsupported link types skipped)",
                self.unsupported_frames
            ));
        }
        if self.not_passed > 0 {
            line.push_str(&format!(
                "  ({} verdicts were not XDP_PASS!)",
                self.not_passed
            ));
        }
        line
    }
}

/// Replays one file. An error means the file could not be read at all; damage
/// partway through is reported in [`FileReport::warning`].
pub fn replay_file(kernel: &mut Kernel, path: &Path) -> anyhow::Result<FileReport> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = CaptureReader::new(BufReader::new(file))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let before = kernel.tallies()?;
    let mut report = FileReport {
        file: path.display().to_string(),
        frames: 0,
        link_types: BTreeMap::new(),
        unsupported_frames: 0,
        runt_frames: 0,
        snapped_frames: 0,
        first_ns: None,
        last_ns: None,
        not_passed: 0,
        counters: Counters::default(),
        warning: None,
    };
    let mut host_counted = Tallies::default();
    for record in reader {
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                report.warning = Some(format!("{err}; {} frames read before it", report.frames));
                break;
            }
        };
        report.frames += 1;
        report.first_ns.get_or_insert(record.timestamp_ns);
        report.last_ns = Some(record.timestamp_ns);
        if (record.data.len() as u64) < record.original_len as u64 {
            report.snapped_frames += 1;
        }
        *report
            .link_types
            .entry(link_type_name(record.link_type))
            .or_default() += 1;
        let (conversion, frame) = to_ethernet(record.link_type, &record.data);
        let Some(frame) = frame.filter(|_| conversion != Conversion::Unsupported) else {
            report.unsupported_frames += 1;
            continue;
        };
        if frame.len() < ETH_HLEN {
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
            report.runt_frames += 1;
            host_counted.record(&tally(&parse(&frame[..])));
            continue;
        }
        let fed = &frame[..frame.len().min(MAX_TEST_RUN_FRAME)];
        let verdict = kernel
            .test_run(names::XDP_PROGRAM, fed)
            .with_context(|| format!("{}: frame {}", path.display(), report.frames))?;
        if verdict != XDP_PASS {
            report.not_passed += 1;
        }
    }
    let mut tallies = kernel.tallies()?.since(&before);
    tallies.add(&host_counted);
    report.counters = tallies.totals();
    Ok(report)
}

/// Replay's stdout: everything replay has to say, so unlike `teardown run`
/// it stops at the first output failure.
struct Stdout(LineOutput);

impl Stdout {
    fn open() -> anyhow::Result<Stdout> {
        Ok(Stdout(LineOutput::stdout().context("stdout is not open")?))
    }

    /// Writes whole lines; `Ok(false)` when the reader has gone (`| head`):
    /// the replay then ends quietly, with the status it has so far, as the
    /// reader had what it wanted. Any other failure (a full disk) is an
    /// error: the results cannot be kept.
    fn write(&mut self, text: &str) -> anyhow::Result<bool> {
        match self.0.write(text) {
            Ok(()) => Ok(true),
            Err(err) if err.reader_gone() => Ok(false),
            Err(err) => Err(anyhow::Error::new(err).context("cannot write to stdout")),
        }
    }
}

/// `teardown replay`: returns whether every file could be read.
pub fn run(
    files: &[std::path::PathBuf],
    json: bool,
    options: &LoadOptions,
) -> anyhow::Result<bool> {
    let mut out = Stdout::open()?;
    let mut kernel = Kernel::load(options)?;
    let mut all_read = true;
    let mut total = Counters::default();
    let mut total_frames = 0;
    for path in files {
        match replay_file(&mut kernel, path) {
            Ok(report) => {
                if let Some(warning) = &report.warning {
                    say(format_args!(
                        "teardown: warning: {}: {warning}",
                        report.file
                    ));
                }
                let line = if json {
                    report.to_json().to_string()
                } else {
                    report.human_line()
                };
                if !out.write(&format!("{line}\n"))? {
                    return Ok(all_read);
                }
                for counter in Counter::ALL {
                    total.values[*counter as usize] += report.counters.get(*counter);
                }
                total_frames += report.frames;
            }
            Err(err) => {
                all_read = false;
                say(format_args!("teardown: error: {err:#}"));
            }
        }
    }
    if !json && files.len() > 1 {
        let mut text = format!("total: {total_frames} frames\n");
        text.push_str(&output::totals_table(&total));
        out.write(&text)?;
    }
    Ok(all_read)
}

/// Replays one file through the kernel's replay program, on the capture's
/// clock, and returns every connection record, in the order they ended.
///
/// Deadlines are checked before each packet, as Zeek fires its timers before
/// it processes the packet that moves network time past them; whatever is
/// left when the capture ends is closed out as it stands.
pub fn connections_of(
    path: &Path,
    options: &LoadOptions,
) -> anyhow::Result<(Vec<Ended>, Option<String>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = CaptureReader::new(BufReader::new(file))
        .with_context(|| format!("cannot read {}", path.display()))?;
    // A fresh table per capture: connections never span files. One packet
    // at a time, the changes taken after each: the kernel lists the words
    // it marks, so only those are looked at.
    let mut kernel = Kernel::load(&LoadOptions {
        note_changed_words: true,
        ..*options
    })?;
    let mut events = kernel.take_events()?;
    let table = kernel.flow_table()?;
    let mut tracker = Tracker::new(options.timeouts);
    let mut ended = Vec::new();
    let mut warning = None;
    let mut clock = 0u64;
    let mut buffer = Vec::new();
    for (read, record) in reader.enumerate() {
        let frames = read + 1;
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                warning = Some(format!("{err}; {read} frames read before it"));
                break;
            }
        };
        let (conversion, frame) = to_ethernet(record.link_type, &record.data);
        let Some(frame) = frame.filter(|_| conversion != Conversion::Unsupported) else {
            continue;
        };
        if frame.len() < ETH_HLEN {
            continue;
        }
        // Network time never goes backwards (Zeek's rule for reordered stamps).
        clock = clock.max(record.timestamp_ns);
        tracker.expire(clock, &table, &mut ended);
        let fed = &frame[..frame.len().min(MAX_TEST_RUN_FRAME)];
        // Asked only until the tunnel program is in (never with tunnels off).
        if kernel.replay_tunnels_wanted() && hands_to_tunnel_program(fed, kernel.tunnel_ports()) {
            kernel.install_replay_tunnels()?;
        }
        kernel
            .test_run_at(names::XDP_REPLAY_PROGRAM, fed, clock, &mut buffer)
            .with_context(|| format!("{}: frame {frames}", path.display()))?;
        tracker.drain_events(&mut events, &table, &mut ended);
        tracker.take_changes(&table);
    }
    tracker.drain_events(&mut events, &table, &mut ended);
    tracker.finish(&table, &mut ended);
    let stats = kernel.flow_stats()?;
    if stats.events_lost > 0 || stats.insert_failed > 0 || stats.evicted > 0 {
        let note = format!(
            "{} events lost, {} inserts failed, {} records evicted",
            stats.events_lost, stats.insert_failed, stats.evicted
        );
        warning = Some(match warning {
            Some(earlier) => format!("{earlier}; {note}"),
            None => note,
        });
    }
    Ok((ended, warning))
}

/// `teardown replay --connections`: one JSON object per connection.
pub fn run_connections(
    files: &[std::path::PathBuf],
    options: &LoadOptions,
) -> anyhow::Result<bool> {
    let mut out = Stdout::open()?;
    let mut all_read = true;
    for path in files {
        match connections_of(path, options) {
            Ok((ended, warning)) => {
                if let Some(warning) = warning {
                    say(format_args!(
                        "teardown: warning: {}: {warning}",
                        path.display()
                    ));
                }
                // Written in batches: a few large writes, not one per line.
                let mut text = String::new();
                for (index, record) in ended.iter().enumerate() {
                    let mut object = record.json(&Clock::Capture);
                    object["file"] = json!(path.display().to_string());
                    output::push_line(&mut text, object);
                    if (text.len() >= output::BATCH_BYTES || index + 1 == ended.len())
                        && !out.write(&std::mem::take(&mut text))?
                    {
                        return Ok(all_read);
                    }
                }
            }
            Err(err) => {
                all_read = false;
                say(format_args!("teardown: error: {err:#}"));
            }
        }
    }
    Ok(all_read)
}

//! `teardown bench --peers`: the same frames through teardown, xdp-filter
//! (Debian's xdp-tools) and a small LRU-hash connection tracker written in
//! C for the bench (`bench/peers/conntrack.bpf.c`), interleaved with an
//! empty XDP program in the same run, kernel-timed with BPF_PROG_TEST_RUN
//! and `kernel.bpf_stats_enabled` at 0, as `teardown bench` measures
//! (issue 14: teardown must be cheaper than each on every TCP frame).

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuHashMap, PerCpuValues, ProgramArray},
    programs::{ProgramFd, Xdp},
};
use serde_json::json;
use teardown_common::{dest::sample_mask_for, names};

use super::bench::{Change, FLOOD_SYNS_PER_POLL, StatsOff, cases, median};
use crate::cmd::contention::test_run_fd;
use crate::kernel::{ClockMode, Kernel, LoadOptions};
use crate::report::output::outln;

/// The frame cases of issue 14's table, in the order printed. `new_syn`
/// comes last: a random-source flood leaves the CPU under pressure in
/// teardown's admission, which would refuse a later case's handshake.
pub const PEER_CASES: &[&str] = &[
    "est_ack",
    "est_ack_v6",
    "fin",
    "rst",
    "midstream",
    "vlan_tcp",
    "new_syn",
];

pub struct PeersOptions {
    pub repeat: u32,
    pub rounds: u32,
    /// xdp-filter's program objects, each with the name of its column
    /// (libxdp1 installs them as
    /// `/usr/lib/<arch>/bpf/xdpfilt_<policy>_<features>.o`).
    pub xdp_filter: Vec<(String, PathBuf)>,
    /// The bench's conntrack (`bench/peers/conntrack.bpf.c`, built).
    pub conntrack: PathBuf,
    /// The source-rewriting tail-call wrapper (`bench/peers/peer_wrap.bpf.c`).
    pub wrapper: PathBuf,
    pub json_out: Option<PathBuf>,
}

/// A bpffs of our own, for the maps xdp-filter's object pins by name
/// (libbpf's LIBBPF_PIN_BY_NAME, which aya honours): never the system's
/// /sys/fs/bpf, where a running xdp-filter's maps could be found and
/// shared. Unmounted and removed when dropped.
struct PrivateBpfFs {
    dir: PathBuf,
}

impl PrivateBpfFs {
    fn mount() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tdp-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let c_dir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
        // SAFETY: NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c_dir.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            bail!("mounting a private bpffs on {}: {err}", dir.display());
        }
        Ok(PrivateBpfFs { dir })
    }
}

impl Drop for PrivateBpfFs {
    fn drop(&mut self) {
        if let Ok(c_dir) = std::ffi::CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c_dir.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A peer's object, loaded, and its XDP program's descriptor.
struct Peer {
    name: String,
    ebpf: Ebpf,
    program: String,
}

impl Peer {
    fn load(name: &str, path: &Path, pins: &Path) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins)
            .load_file(path)
            .with_context(|| format!("loading {name}'s object {}", path.display()))?;
        let program = ebpf
            .programs()
            .find(|(_, program)| matches!(program, aya::programs::Program::Xdp(_)))
            .map(|(name, _)| name.to_string())
            .with_context(|| format!("{} has no XDP program", path.display()))?;
        let xdp: &mut Xdp = ebpf
            .program_mut(&program)
            .context("the program vanished")?
            .try_into()?;
        xdp.load()
            .with_context(|| format!("loading {name}'s program {program}"))?;
        Ok(Peer {
            name: name.to_string(),
            ebpf,
            program,
        })
    }

    fn program_fd(&self) -> anyhow::Result<&ProgramFd> {
        Ok(self
            .ebpf
            .program(&self.program)
            .context("the program vanished")?
            .fd()?)
    }

    fn fd(&self) -> anyhow::Result<RawFd> {
        Ok(self.program_fd()?.as_fd().as_raw_fd())
    }
}

/// xdp-filter's map flags (xdp-filter/common_kern_user.h).
const MAP_FLAG_SRC: u64 = 1 << 0;
const MAP_FLAG_DST: u64 = 1 << 1;
const MAP_FLAG_TCP: u64 = 1 << 2;
const MAP_FLAG_UDP: u64 = 1 << 3;

/// Configures xdp-filter as its own commands would (`xdp-filter load IFACE`
/// with the default policy `allow` and every feature picks
/// xdpfilt_alw_all.o; then a few deny rules): rules that none of the
/// bench's frames match, so every frame is looked up in every table the
/// object has and passes, the common case on a host that filters. An
/// object built with fewer features (xdpfilt_alw_tcp.o, ...) lacks some of
/// the tables; their rules are left out. Returns the configuration, said.
fn configure_xdp_filter(peer: &mut Peer) -> anyhow::Result<String> {
    let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
    let all = |flags: u64| PerCpuValues::try_from(vec![flags; cpus]);
    // xdp-filter keys ports as the header's big-endian 16 bits, widened.
    let port_key = |port: u16| u32::from(u16::from_ne_bytes(port.to_be_bytes()));
    let mut rules = Vec::new();
    if let Some(map) = peer.ebpf.map_mut("filter_ports") {
        let mut ports: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        for port in [23, 445, 3389] {
            ports.set(port_key(port), all(MAP_FLAG_DST | MAP_FLAG_TCP)?, 0)?;
        }
        ports.set(port_key(11211), all(MAP_FLAG_DST | MAP_FLAG_UDP)?, 0)?;
        rules.push("deny tcp dst ports 23, 445, 3389; deny udp dst port 11211");
    }
    if let Some(map) = peer.ebpf.map_mut("filter_ipv4") {
        let mut v4: PerCpuHashMap<_, u32, u64> = PerCpuHashMap::try_from(map)?;
        for address in [[198, 51, 100, 7], [203, 0, 113, 9]] {
            v4.insert(u32::from_ne_bytes(address), all(MAP_FLAG_SRC)?, 0)?;
        }
        rules.push("deny IPv4 src 198.51.100.7, 203.0.113.9");
    }
    if let Some(map) = peer.ebpf.map_mut("filter_ipv6") {
        let mut v6: PerCpuHashMap<_, [u8; 16], u64> = PerCpuHashMap::try_from(map)?;
        let address = "2001:db8:bad::1".parse::<std::net::Ipv6Addr>()?.octets();
        v6.insert(address, all(MAP_FLAG_SRC)?, 0)?;
        rules.push("deny IPv6 src 2001:db8:bad::1");
    }
    if let Some(map) = peer.ebpf.map_mut("filter_ethernet") {
        let mut eth: PerCpuHashMap<_, [u8; 6], u64> = PerCpuHashMap::try_from(map)?;
        eth.insert([0x02, 0, 0x5e, 0, 0x53, 0xff], all(MAP_FLAG_SRC)?, 0)?;
        rules.push("deny Ethernet src 02:00:5e:00:53:ff");
    }
    if rules.is_empty() {
        bail!(
            "{}: no filter_ports, filter_ipv4, filter_ipv6 or filter_ethernet map: not an xdp-filter object",
            peer.program
        );
    }
    Ok(format!(
        "program {}, policy allow; {}",
        peer.program,
        rules.join("; ")
    ))
}

/// The tail-call wrapper that gives `new_syn`'s frame a new source address
/// before a peer's program.
struct Wrapper {
    ebpf: Ebpf,
}

impl Wrapper {
    fn load(path: &Path) -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load_file(path)
            .with_context(|| format!("loading the bench wrapper {}", path.display()))?;
        for name in ["peer_new_source", "peer_empty"] {
            let xdp: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{} has no program {name}", path.display()))?
                .try_into()?;
            xdp.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Wrapper { ebpf })
    }

    fn fd(&self, name: &str) -> anyhow::Result<RawFd> {
        Ok(self
            .ebpf
            .program(name)
            .context("no such program")?
            .fd()?
            .as_fd()
            .as_raw_fd())
    }

    /// Puts `program` in the slot the wrapper tail-calls.
    fn call(&mut self, program: &ProgramFd) -> anyhow::Result<()> {
        let mut slot = ProgramArray::try_from(
            self.ebpf
                .map_mut("peer_slot")
                .context("the wrapper has no peer_slot map")?,
        )?;
        slot.set(0, program, 0)?;
        Ok(())
    }

    fn call_empty(&mut self) -> anyhow::Result<()> {
        let empty = self
            .ebpf
            .program("peer_empty")
            .context("no peer_empty")?
            .fd()?
            .try_clone()?;
        self.call(&empty)
    }

    /// Zeroes the wrapper's run count (the source addresses start over).
    fn reset_runs(&mut self) -> anyhow::Result<()> {
        let mut runs: aya::maps::Array<_, u64> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut("peer_runs")
                .context("the wrapper has no peer_runs map")?,
        )?;
        runs.set(0, 0, 0)?;
        Ok(())
    }
}

/// Runs teardown's `new_syn` wrapper, untimed, for two and a half
/// admission windows: long enough for the first window's evictions to put
/// the next under the budget, and for that window's refusals to keep the
/// one after it there. Without it the peers' runs between teardown's (the
/// conntrack's million SYNs alone take about 0.44 s, three windows) leave
/// no sign of pressure, and each of teardown's measurements would start in
/// a window without the budget: a flood's start, where the per-packet table
/// (teardown back to back with the empty program) measures a sustained
/// flood.
fn sustain_flood(teardown_fd: RawFd, frame: &[u8]) -> anyhow::Result<()> {
    let window = std::time::Duration::from_nanos(teardown_common::events::HALF_OPEN_WINDOW_NS);
    let started = std::time::Instant::now();
    while started.elapsed() < window * 5 / 2 {
        test_run_fd(teardown_fd, frame, 100_000)?;
    }
    Ok(())
}

fn timed(fd: RawFd, frame: &[u8], repeat: u32, who: &str, case: &str) -> anyhow::Result<f64> {
    let (verdict, ns) = test_run_fd(fd, frame, repeat)?;
    if verdict != 2 {
        bail!("{who} returned verdict {verdict} for the {case} frame, not XDP_PASS");
    }
    Ok(f64::from(ns) + 0.5)
}

/// One program's figure in a case.
struct Figure {
    ns: f64,
    added: f64,
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Runs the side-by-side table. Returns true (the table is reported, never
/// judged by the exit status: whether teardown is cheaper is printed).
pub fn run(options: PeersOptions) -> anyhow::Result<bool> {
    if options.repeat == 0 || options.rounds == 0 {
        bail!("--repeat and --rounds must be at least 1");
    }
    let stats = StatsOff::switch()?;
    let pins = PrivateBpfFs::mount()?;
    let mut kernel = Kernel::load(&LoadOptions {
        clock: ClockMode::Coarse,
        ..LoadOptions::default()
    })?;
    kernel.load_bench_programs()?;
    kernel.set_detect_control(1, sample_mask_for(FLOOD_SYNS_PER_POLL))?;
    let mut peers = Vec::new();
    let mut filter_configs = Vec::new();
    let mut filter_lines = Vec::new();
    for (name, path) in &options.xdp_filter {
        // Each in a bpffs directory of its own: the objects' maps have the
        // same names and would otherwise be shared through their pins.
        let dir = pins.dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut filter = Peer::load(name, path, &dir)?;
        let config = configure_xdp_filter(&mut filter)?;
        filter_lines.push(format!("{name}: {} ({config})", path.display()));
        filter_configs.push(json!({ "name": name, "object": path, "config": config }));
        peers.push(filter);
    }
    peers.push(Peer::load("conntrack", &options.conntrack, &pins.dir)?);
    let mut wrapper = Wrapper::load(&options.wrapper)?;
    let names: Vec<&str> = std::iter::once("teardown")
        .chain(peers.iter().map(|peer| peer.name.as_str()))
        .collect();

    outln!(
        "per-packet cost side by side: kernel-timed BPF_PROG_TEST_RUN, {} runs x {} rounds, median; the same frames through an empty XDP program, teardown (--clock coarse, the program `teardown run` attaches), xdp-filter (by default with all its features, and with TCP ports only) and the bench's conntrack, interleaved in each round; kernel.bpf_stats_enabled=0 for the run (was {})",
        options.repeat,
        options.rounds,
        stats.previous
    );
    for line in &filter_lines {
        outln!("{line}");
    }
    outln!(
        "conntrack: {} (LRU hash of 131072 flows; handshake fed first where the case has one, to every program)",
        options.conntrack.display()
    );
    outln!(
        "new_syn: a new IPv4 source every run, a sustained flood (teardown's admission budget in force: 2.5 admission windows of it, untimed, before each of its measurements, as the per-packet table's back-to-back runs keep it); teardown through its bench wrapper, the peers through a tail-call wrapper, each wrapper's own cost measured alone and subtracted"
    );
    let mut header = format!("\n{:<11} {:>8} ", "case", "empty ns");
    for name in &names {
        header += &format!(" {name:<18}");
    }
    outln!("{header} teardown cheaper than");

    let all_cases = cases();
    let mut rows = Vec::new();
    let mut cheaper_everywhere = 0;
    for &case_name in PEER_CASES {
        let case = all_cases
            .iter()
            .find(|case| case.name == case_name)
            .with_context(|| format!("teardown bench has no {case_name} case"))?;
        stats.still_off()?;
        let frame: &[u8] = &case.frame;
        if !case.setup.is_empty() {
            // As `teardown bench`: no flood pressure left, and a settled
            // machine.
            std::thread::sleep(super::bench::SETTLE_BEFORE_SETUP);
        }
        kernel.set_bench(0, 0, 0)?;
        for setup in &case.setup {
            kernel.test_run(names::XDP_BENCH_PROGRAM, setup)?;
            for peer in &peers {
                test_run_fd(peer.fd()?, setup, 1)?;
            }
        }
        let mutates = !matches!(case.change, Change::None);
        if mutates {
            let Change::NewSource = case.change else {
                bail!("{case_name}: only a new source address is supported for the peers");
            };
            kernel.set_bench(1, 0, 0)?;
            wrapper.reset_runs()?;
        }
        let base_fd = kernel.program_fd(names::XDP_BASELINE_PROGRAM)?;
        let (teardown_fd, teardown_mutate_fd) = if mutates {
            (
                kernel.program_fd(names::XDP_BENCH_PROGRAM)?,
                Some(kernel.program_fd(names::XDP_BENCH_MUTATE_PROGRAM)?),
            )
        } else {
            (kernel.program_fd(names::XDP_PROGRAM)?, None)
        };
        let wrap_fd = wrapper.fd("peer_new_source")?;
        let peer_fds: Vec<RawFd> = peers.iter().map(|p| p.fd()).collect::<Result<_, _>>()?;
        let peer_program_fds: Vec<ProgramFd> = peers
            .iter()
            .map(|p| p.program_fd().and_then(|fd| Ok(fd.try_clone()?)))
            .collect::<Result<_, _>>()?;

        // Warm caches and JIT images once.
        for fd in [base_fd, teardown_fd]
            .into_iter()
            .chain(teardown_mutate_fd)
            .chain(peer_fds.iter().copied())
        {
            test_run_fd(fd, frame, 1000)?;
        }
        let mut base_runs = Vec::new();
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); 1 + peers.len()];
        for _ in 0..options.rounds {
            let base = timed(
                base_fd,
                frame,
                options.repeat,
                "the empty program",
                case_name,
            )?;
            base_runs.push(base);
            if mutates {
                sustain_flood(teardown_fd, frame)?;
            }
            let teardown = timed(teardown_fd, frame, options.repeat, "teardown", case_name)?;
            let change = match teardown_mutate_fd {
                Some(fd) => {
                    timed(fd, frame, options.repeat, "teardown's wrapper", case_name)? - base
                }
                None => 0.0,
            };
            runs[0].push(teardown - change);
            if mutates {
                wrapper.call_empty()?;
                let alone = timed(
                    wrap_fd,
                    frame,
                    options.repeat,
                    "the peers' wrapper",
                    case_name,
                )?;
                for (i, peer) in peers.iter().enumerate() {
                    wrapper.call(&peer_program_fds[i])?;
                    let with = timed(wrap_fd, frame, options.repeat, &peer.name, case_name)?;
                    runs[i + 1].push(base + with - alone);
                }
            } else {
                for (i, peer) in peers.iter().enumerate() {
                    runs[i + 1].push(timed(
                        peer_fds[i],
                        frame,
                        options.repeat,
                        &peer.name,
                        case_name,
                    )?);
                }
            }
        }
        let base = median(&mut base_runs);
        let figures: Vec<Figure> = runs
            .iter_mut()
            .map(|samples| {
                let ns = median(samples);
                Figure {
                    ns,
                    added: ns - base,
                }
            })
            .collect();
        let teardown = &figures[0];
        let beaten: Vec<&str> = peers
            .iter()
            .zip(&figures[1..])
            .filter(|(_, figure)| teardown.added < figure.added)
            .map(|(peer, _)| peer.name.as_str())
            .collect();
        let verdict = if beaten.len() == peers.len() {
            cheaper_everywhere += 1;
            "all".to_string()
        } else if beaten.is_empty() {
            "NONE".to_string()
        } else {
            format!("only {}", beaten.join(", "))
        };
        let mut row = format!("{case_name:<11} {base:>8.1} ");
        for figure in &figures {
            let cell = format!("{:+.1} ({:.2}x)", figure.added, figure.ns / base);
            row += &format!(" {cell:<18}");
        }
        outln!("{row} {verdict}");
        let mut programs = serde_json::Map::new();
        for (name, figure) in names.iter().zip(&figures) {
            programs.insert(
                (*name).to_string(),
                json!({
                    "ns": round2(figure.ns),
                    "added_ns": round2(figure.added),
                    "ratio": (figure.ns / base * 1000.0).round() / 1000.0,
                }),
            );
        }
        rows.push(json!({
            "case": case_name,
            "empty_ns": round2(base),
            "programs": programs,
            "teardown_cheaper_than": beaten,
        }));
    }
    stats.still_off()?;
    outln!(
        "\nteardown cheaper than every peer (added ns) on {cheaper_everywhere} of {} TCP frame cases",
        PEER_CASES.len()
    );
    if let Some(path) = options.json_out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let report = json!({
            "method": "kernel-timed BPF_PROG_TEST_RUN (whole ns + 0.5), median of rounds in which the empty program, teardown, xdp-filter and conntrack run in turn on the same frame, kernel.bpf_stats_enabled=0; new_syn through wrappers whose own cost is subtracted",
            "repeat": options.repeat,
            "rounds": options.rounds,
            "programs": names,
            "xdp_filter": filter_configs,
            "conntrack": { "object": options.conntrack },
            "results": rows,
            "cheaper_than_every_peer": cheaper_everywhere,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        outln!("wrote {}", path.display());
    }
    drop(pins);
    Ok(true)
}

/// The xdp-filter objects to compare, each with its column's name:
/// `explicit` ones (named by their file), or by default two of those
/// libxdp1 installs: `xdpfilt_alw_all.o` (`xdp-filter load IFACE`, every
/// feature, its default) as `xdp-filter`, and `xdpfilt_alw_tcp.o`
/// (`--features tcp`, the port table only) as `xdp-filter-tcp`.
pub fn xdp_filter_objects(explicit: Vec<PathBuf>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if !explicit.is_empty() {
        return Ok(explicit
            .into_iter()
            .map(|path| {
                let stem = path
                    .file_stem()
                    .map(|stem| stem.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (stem, path)
            })
            .collect());
    }
    let mut dirs = vec![PathBuf::from("/usr/lib/bpf")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("bpf")));
    }
    let dir = dirs
        .into_iter()
        .find(|dir| dir.join("xdpfilt_alw_all.o").is_file())
        .context("no xdpfilt_alw_all.o under /usr/lib/*/bpf or /usr/lib/bpf: install xdp-tools (apt-get install xdp-tools), or pass --xdp-filter-object")?;
    Ok(vec![
        ("xdp-filter".to_string(), dir.join("xdpfilt_alw_all.o")),
        ("xdp-filter-tcp".to_string(), dir.join("xdpfilt_alw_tcp.o")),
    ])
}

//! Loading the embedded eBPF object (split into load, attach and maps next).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
        tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use teardown_common::{
    conn::{Timeouts, likely_server_port_set},
    counters::Tallies,
    dest::{DEST_SLOTS, DestSlot, DetectControl, SampleRing},
    events::{DEFAULT_MAX_FLOWS, FlowStats, SLOTS_PER_CHANGE_WORD, half_open_budget},
    names,
    table::{FlowSlot, set_shift, slots_for},
};
use thiserror::Error;

/// The eBPF object built from `teardown-ebpf`, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TEARDOWN_EBPF_OBJECT"));

/// Problems the user can fix, each said in one line with what to do.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error(
        "permission denied while {0}: run teardown as root (sudo), or grant it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    )]
    Permission(&'static str),
    #[error("no network interface named {0:?}: list them with `ip link`")]
    UnknownInterface(String),
    #[error(
        "interface {0} already has an XDP program attached, left in place; remove it first (`ip link set dev {0} xdp off`) if it is not needed"
    )]
    AlreadyAttached(String),
    #[error("interface {iface} does not support {mode} XDP: try --mode skb (generic XDP)")]
    ModeUnsupported { iface: String, mode: &'static str },
    #[error(
        "--max-flows {max_flows} needs {needed_mib} MiB of kernel memory for the flow table ({slot_bytes} bytes a connection), more than half of the {available_mib} MiB available: choose a smaller --max-flows"
    )]
    TableTooLarge {
        max_flows: u32,
        needed_mib: u64,
        slot_bytes: usize,
        available_mib: u64,
    },
}

/// Kernel memory a flow table of `slots` slots takes: the slots and the
/// changed-slot bitmap.
pub fn table_bytes(slots: u32) -> u64 {
    slots as u64 * std::mem::size_of::<FlowSlot>() as u64 + (slots as u64).div_ceil(8)
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a table that would take more than half the memory available:
/// the kernel would take it, and the host would suffer.
fn check_table_fits(max_flows: u32, slots: u32) -> Result<(), SetupError> {
    table_fits(max_flows, slots, memory_available())
}

/// [`check_table_fits`] for a given amount of available memory (`None`:
/// unknown, so not refused).
fn table_fits(max_flows: u32, slots: u32, available: Option<u64>) -> Result<(), SetupError> {
    let needed = table_bytes(slots);
    match available {
        Some(available) if needed > available / 2 => Err(SetupError::TableTooLarge {
            max_flows,
            needed_mib: needed.div_ceil(1 << 20),
            slot_bytes: std::mem::size_of::<FlowSlot>(),
            available_mib: available >> 20,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod table_size_tests {
    use super::*;

    #[test]
    fn a_table_over_half_the_available_memory_is_refused_with_its_cost() {
        const GIB: u64 = 1 << 30;
        // The default table: 131072 slots of 344 bytes, 43 MiB, plus the bitmap.
        assert_eq!(table_bytes(131_072), 131_072 * 344 + 131_072 / 8);
        assert!(table_fits(131_072, 131_072, Some(GIB)).is_ok());
        assert!(table_fits(131_072, 131_072, None).is_ok());
        // The largest: 16M slots, 5.4 GiB: refused with 8 GiB available.
        let refused = table_fits(16_777_216, 16_777_216, Some(8 * GIB)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "--max-flows 16777216 needs 5506 MiB of kernel memory for the flow table (344 bytes a connection), more than half of the 8192 MiB available: choose a smaller --max-flows"
        );
        assert!(table_fits(16_777_216, 16_777_216, Some(12 * GIB)).is_ok());
    }

    #[test]
    fn meminfo_is_read() {
        assert!(memory_available().is_some_and(|bytes| bytes > 0));
    }
}

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) XDP if the interface supports it, generic otherwise.
    Auto,
    /// Native XDP, in the driver: fastest; fails if the driver lacks it.
    Native,
    /// Generic XDP, in the kernel's network stack: works everywhere, slower.
    Skb,
}

/// The loaded eBPF object.
pub struct Kernel {
    ebpf: Ebpf,
    slots: u32,
    /// The attachments [`Kernel::detach`] undoes (dropping the object undoes
    /// them too).
    xdp_link: Option<XdpLinkId>,
    egress_link: Option<SchedClassifierLinkId>,
}

/// Maps an mmapable array map (`len` bytes of it) into this process.
fn mmap_map(ebpf: &Ebpf, name: &str, len: usize) -> anyhow::Result<NonNull<u8>> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("eBPF object has no {name} map"))?;
    let data: &MapData = match map {
        aya::maps::Map::Array(data) => data,
        _ => anyhow::bail!("{name} is not an array map"),
    };
    let fd = data.fd().as_fd().as_raw_fd();
    // SAFETY: a shared read-write mapping of the map's memory, which the
    // kernel allows for BPF_F_MMAPABLE arrays; `len` is within the map.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(io::Error::last_os_error()).with_context(|| format!("mapping the {name} map"));
    }
    NonNull::new(address.cast()).with_context(|| format!("mapping the {name} map"))
}

/// How many times [`FlowTable::read`] tries for a consistent copy.
const SLOT_READ_TRIES: u32 = 100_000;

/// The kernel's flow table as seen from user space (see
/// `teardown_common::table`): records are read in place, and only
/// [`FlowSlot::reported`] is ever written.
pub struct FlowTable {
    slots: NonNull<FlowSlot>,
    len: usize,
    changes: NonNull<u64>,
    words: usize,
    mappings: [(NonNull<u8>, usize); 2],
}

impl FlowTable {
    pub fn len(&self) -> usize {
        self.len
    }

    /// A consistent copy of slot `index`. The kernel may be writing it
    /// meanwhile: the copy is kept only if the slot's sequence lock
    /// ([`FlowSlot::lock`]) was even, and unchanged, around it; otherwise it
    /// is taken again. A kernel writer holds a slot for a few microseconds
    /// at most, so the retries end long before their bound; should they
    /// not, the last copy is returned all the same.
    pub fn read(&self, index: u32) -> Option<FlowSlot> {
        if index as usize >= self.len {
            return None;
        }
        // SAFETY: in bounds of the mapping; FlowSlot is plain data, any
        // bytes are valid; `lock` is a 4-aligned u32 the kernel changes
        // only atomically.
        unsafe {
            let slot = self.slots.as_ptr().add(index as usize);
            let lock = AtomicU32::from_ptr(std::ptr::addr_of_mut!((*slot).lock));
            let mut copy = std::ptr::read_volatile(slot);
            for _ in 0..SLOT_READ_TRIES {
                let before = lock.load(Ordering::Acquire);
                if before & 1 == 0 {
                    copy = std::ptr::read_volatile(slot);
                    fence(Ordering::Acquire);
                    if lock.load(Ordering::Relaxed) == before {
                        break;
                    }
                }
                std::hint::spin_loop();
            }
            Some(copy)
        }
    }

    /// Marks `generation` of slot `index` reported: the kernel may reuse the
    /// slot and will not report that record itself.
    pub fn mark_reported(&self, index: u32, generation: u32) {
        if index as usize >= self.len {
            return;
        }
        // SAFETY: in bounds; `reported` is a 4-aligned u32 only user space
        // writes; the kernel reads it.
        unsafe {
            let slot = self.slots.as_ptr().add(index as usize);
            let reported = std::ptr::addr_of_mut!((*slot).reported);
            std::sync::atomic::AtomicU32::from_ptr(reported)
                .store(generation, std::sync::atomic::Ordering::Release);
        }
    }

    /// Calls `each` for every slot flagged since the last call, clearing
    /// the flags.
    pub fn take_changes(&self, mut each: impl FnMut(u32)) {
        for word_index in 0..self.words {
            // SAFETY: in bounds of the mapping; the kernel ORs bits in
            // atomically, and swapping the word takes them all exactly once.
            let word = unsafe { AtomicU64::from_ptr(self.changes.as_ptr().add(word_index)) };
            let mut bits = word.swap(0, std::sync::atomic::Ordering::AcqRel);
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                each(word_index as u32 * SLOTS_PER_CHANGE_WORD + bit);
            }
        }
    }
}

impl Drop for FlowTable {
    fn drop(&mut self) {
        for (address, len) in self.mappings {
            // SAFETY: each was mapped by mmap_map with this length.
            unsafe { libc::munmap(address.as_ptr().cast(), len) };
        }
    }
}

/// Settings fixed when the object is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub timeouts: Timeouts,
    /// Nanoseconds past a deadline before the kernel closes a record out on
    /// the next packet instead of waiting for user space (0 for replays).
    pub grace_ns: u64,
    pub max_flows: u32,
    pub clock: ClockMode,
}

/// Which clock stamps the flow table's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockMode {
    /// The jiffies counter: a plain load per packet, resolution one kernel
    /// tick (see `clock_getres(CLOCK_MONOTONIC_COARSE)`, 4 ms at HZ=250).
    #[default]
    Coarse,
    /// bpf_ktime_get_ns: nanoseconds, at about the cost of a whole parse
    /// per TCP packet on this kind of VM.
    Precise,
}

/// Nanoseconds per kernel tick: the resolution of CLOCK_MONOTONIC_COARSE,
/// which advances with jiffies.
fn ns_per_tick() -> anyhow::Result<u64> {
    let mut resolution = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes the struct we pass.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut resolution) } != 0 {
        return Err(io::Error::last_os_error()).context("reading the kernel tick length");
    }
    let ns = resolution.tv_sec as u64 * 1_000_000_000 + resolution.tv_nsec as u64;
    anyhow::ensure!(
        ns > 0 && ns <= 100_000_000,
        "implausible kernel tick length {ns} ns; use --clock precise"
    );
    Ok(ns)
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            timeouts: Timeouts::ZEEK,
            grace_ns: 0,
            max_flows: DEFAULT_MAX_FLOWS,
            clock: ClockMode::Coarse,
        }
    }
}

fn io_error_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

fn os_error_of(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    io_error_in(err).and_then(io::Error::raw_os_error)
}

/// EPERM/EACCES mean missing privileges only for an unprivileged caller: for
/// root, EACCES from BPF_PROG_LOAD is the verifier rejecting the program,
/// and its log is the useful part of the error.
fn is_permission_error(err: &(dyn std::error::Error + 'static)) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    !root && matches!(os_error_of(err), Some(libc::EPERM) | Some(libc::EACCES))
}

impl Kernel {
    /// Loads the embedded object into the kernel: its maps, sized and set
    /// for `options`; each program is loaded on first use.
    pub fn load(options: &LoadOptions) -> anyhow::Result<Self> {
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lifting it is
        // harmless on newer ones.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        let slots = slots_for(options.max_flows);
        check_table_fits(options.max_flows, slots)?;
        let tick = match options.clock {
            ClockMode::Coarse => ns_per_tick()?,
            ClockMode::Precise => 0,
        };
        let cpus = aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1);
        let budget = half_open_budget(slots, options.timeouts.syn_ns, cpus);
        let mut ebpf = match EbpfLoader::new()
            .verifier_log_level(aya::VerifierLogLevel::STATS)
            .override_global(names::TIMEOUTS_GLOBAL, &options.timeouts, true)
            .override_global(names::GRACE_GLOBAL, &options.grace_ns, true)
            .override_global(names::SET_SHIFT_GLOBAL, &set_shift(slots), true)
            .override_global(names::NS_PER_TICK_GLOBAL, &tick, true)
            .override_global(names::HALF_OPEN_BUDGET_GLOBAL, &budget, true)
            .map_max_entries(names::FLOW_TABLE_MAP, slots)
            .map_max_entries(
                names::FLOW_CHANGES_MAP,
                slots.div_ceil(SLOTS_PER_CHANGE_WORD),
            )
            .load(EBPF_OBJECT)
        {
            Ok(ebpf) => ebpf,
            Err(err) if is_permission_error(&err) => {
                return Err(SetupError::Permission("loading the eBPF object").into());
            }
            Err(err) => return Err(err).context("loading the eBPF object"),
        };
        // Programs are loaded (and verified, a second or more each) when
        // first used: a replay needs one, a run two, the clock probe aside.
        let mut ports: Array<&mut MapData, u64> = Array::try_from(
            ebpf.map_mut(names::LIKELY_PORTS_MAP)
                .context("eBPF object has no likely-ports map")?,
        )
        .context("opening the likely-ports map")?;
        for (index, word) in likely_server_port_set().iter().enumerate() {
            if *word != 0 {
                ports
                    .set(index as u32, *word, 0)
                    .context("filling the likely-ports map")?;
            }
        }
        let mut kernel = Kernel {
            ebpf,
            slots,
            xdp_link: None,
            egress_link: None,
        };
        kernel.set_clock_offset(tick)?;
        Ok(kernel)
    }

    /// The flow table's clock now: CLOCK_MONOTONIC, in nanoseconds (the
    /// coarse clock reads the same clock, as of the last tick).
    pub fn kernel_clock_ns(&mut self) -> anyhow::Result<u64> {
        Ok(self.probe_clocks()?.0)
    }

    /// Test-runs the clock probe: (precise clock, jiffies times the tick).
    fn probe_clocks(&mut self) -> anyhow::Result<(u64, u64)> {
        self.test_run(names::CLOCK_PROBE_PROGRAM, &[0u8; 64])
            .context("reading the kernel clock")?;
        let map = self
            .ebpf
            .map(names::CLOCK_PROBE_MAP)
            .context("eBPF object has no clock probe map")?;
        let probe = Array::<&MapData, u64>::try_from(map).context("opening the clock probe")?;
        Ok((
            probe.get(&0, 0).context("reading the clock probe")?,
            probe.get(&1, 0).context("reading the clock probe")?,
        ))
    }

    /// Measures and sets the coarse clock's offset ([`names::CLOCK_OFFSET_MAP`]):
    /// the smallest difference between the precise clock and jiffies times
    /// the tick, over readings spread across two ticks, so that the coarse
    /// clock reads the precise clock's time of the last tick, within an
    /// eighth of a tick.
    fn set_clock_offset(&mut self, tick_ns: u64) -> anyhow::Result<()> {
        if tick_ns == 0 {
            return Ok(());
        }
        let mut offset = u64::MAX;
        for _ in 0..17 {
            let (precise, coarse) = self.probe_clocks()?;
            offset = offset.min(precise.wrapping_sub(coarse));
            std::thread::sleep(std::time::Duration::from_nanos(tick_ns / 8));
        }
        let map = self
            .ebpf
            .map_mut(names::CLOCK_OFFSET_MAP)
            .context("eBPF object has no clock offset map")?;
        let mut array =
            Array::<&mut MapData, u64>::try_from(map).context("opening the clock offset map")?;
        array
            .set(0, offset, 0)
            .context("setting the coarse clock's offset")
    }

    /// The flow table and its changed-slot bitmap, mapped into this process.
    pub fn flow_table(&mut self) -> anyhow::Result<FlowTable> {
        let slots = self.slots as usize;
        let table = mmap_map(
            &self.ebpf,
            names::FLOW_TABLE_MAP,
            slots * size_of::<FlowSlot>(),
        )?;
        let changes = mmap_map(
            &self.ebpf,
            names::FLOW_CHANGES_MAP,
            slots.div_ceil(SLOTS_PER_CHANGE_WORD as usize) * 8,
        )?;
        Ok(FlowTable {
            slots: table.cast(),
            len: slots,
            changes: changes.cast(),
            words: slots.div_ceil(SLOTS_PER_CHANGE_WORD as usize),
            mappings: [
                (table, slots * size_of::<FlowSlot>()),
                (changes, slots.div_ceil(64) * 8),
            ],
        })
    }

    /// The TC egress program, loaded on first use.
    fn egress(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        let egress: &mut SchedClassifier = self
            .ebpf
            .program_mut(names::TC_EGRESS_PROGRAM)
            .context("eBPF object has no egress program")?
            .try_into()
            .context("the egress program is not a TC program")?;
        if egress.fd().is_err() {
            match egress.load() {
                Ok(()) => {}
                Err(err) if is_permission_error(&err) => {
                    return Err(SetupError::Permission("loading the TC egress program").into());
                }
                Err(err) => return Err(err).context("loading the TC egress program"),
            }
        }
        Ok(egress)
    }

    /// Attaches the TC egress program to `iface` (TCX), so the host's own
    /// segments reach the flow table. Lasts as long as this `Kernel`.
    pub fn attach_egress(&mut self, iface: &str) -> anyhow::Result<()> {
        match self.egress()?.attach(iface, TcAttachType::Egress) {
            Ok(link) => {
                self.egress_link = Some(link);
                Ok(())
            }
            Err(err) if is_permission_error(&err) => {
                Err(SetupError::Permission("attaching the TC egress program").into())
            }
            Err(err) => Err(err).with_context(|| {
                format!("attaching the TC egress program to {iface} (use --direction ingress to watch ingress only)")
            }),
        }
    }

    /// Takes the event ring buffer out of the object (once).
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS_MAP)
            .context("eBPF object has no event ring buffer")?;
        RingBuf::try_from(map).context("opening the event ring buffer")
    }

    /// The flow-table statistics summed over all CPUs.
    pub fn flow_stats(&self) -> anyhow::Result<FlowStats> {
        let map = self
            .ebpf
            .map(names::FLOW_STATS_MAP)
            .context("eBPF object has no flow statistics map")?;
        let array = PerCpuArray::<&MapData, FlowStats>::try_from(map)
            .context("opening the flow statistics map")?;
        let per_cpu = array.get(&0, 0).context("reading the flow statistics")?;
        let mut total = FlowStats::default();
        for cpu in per_cpu.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// Loads the benchmark wrappers now, so their verification stays out
    /// of what the benchmark times. Only `teardown bench` needs them.
    pub fn load_bench_programs(&mut self) -> anyhow::Result<()> {
        for name in [
            names::XDP_BENCH_PROGRAM,
            names::XDP_BENCH_MUTATE_PROGRAM,
            names::XDP_BENCH_LOCK_PROGRAM,
        ] {
            self.xdp(name)?;
        }
        Ok(())
    }

    /// Sets the benchmark wrappers' frame change (see the eBPF `BENCH` map).
    pub fn set_bench(&mut self, mode: u64, step: u64, first: u64) -> anyhow::Result<()> {
        let mut bench: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(names::BENCH_MAP)
                .context("eBPF object has no bench map")?,
        )
        .context("opening the bench map")?;
        for (index, value) in [mode, 0, step, first].into_iter().enumerate() {
            bench
                .set(index as u32, value, 0)
                .context("setting the bench map")?;
        }
        Ok(())
    }

    /// Every CPU's destination slots that have counted anything, as
    /// (CPU, slot index, slot): one system call per slot index.
    pub fn destinations(&self) -> anyhow::Result<Vec<(u32, u32, DestSlot)>> {
        let map = self
            .ebpf
            .map(names::DESTINATIONS_MAP)
            .context("eBPF object has no destination map")?;
        let array = PerCpuArray::<&MapData, DestSlot>::try_from(map)
            .context("opening the destination map")?;
        let mut used = Vec::new();
        for index in 0..DEST_SLOTS {
            let per_cpu = array
                .get(&index, 0)
                .context("reading the destination map")?;
            for (cpu, slot) in per_cpu.iter().enumerate() {
                if slot.syns != 0 || slot.half_open_started != 0 || slot.completions != 0 {
                    used.push((cpu as u32, index, *slot));
                }
            }
        }
        Ok(used)
    }

    /// Every CPU's ring of sampled SYN sources.
    pub fn source_samples(&self) -> anyhow::Result<Vec<SampleRing>> {
        let map = self
            .ebpf
            .map(names::SOURCE_SAMPLES_MAP)
            .context("eBPF object has no source sample map")?;
        let array = PerCpuArray::<&MapData, SampleRing>::try_from(map)
            .context("opening the source sample map")?;
        let per_cpu = array.get(&0, 0).context("reading the source samples")?;
        Ok(per_cpu.iter().copied().collect())
    }

    /// Starts poll `epoch` for the destination sketches, with `sample_mask`
    /// for the source samples (see `teardown_common::dest`).
    pub fn set_detect_control(&mut self, epoch: u64, sample_mask: u64) -> anyhow::Result<()> {
        let mut control: Array<&mut MapData, DetectControl> = Array::try_from(
            self.ebpf
                .map_mut(names::DETECT_CONTROL_MAP)
                .context("eBPF object has no detection control map")?,
        )
        .context("opening the detection control map")?;
        control
            .set(0, DetectControl { epoch, sample_mask }, 0)
            .context("setting the poll epoch")
    }

    /// Sets the clock the replay program runs on.
    pub fn set_replay_clock(&mut self, ns: u64) -> anyhow::Result<()> {
        let mut clock: Array<&mut MapData, u64> = Array::try_from(
            self.ebpf
                .map_mut(names::REPLAY_CLOCK_MAP)
                .context("eBPF object has no replay clock")?,
        )
        .context("opening the replay clock")?;
        clock.set(0, ns, 0).context("setting the replay clock")
    }

    /// The XDP program `name`, loaded on first use.
    fn xdp(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        let program = xdp_program(&mut self.ebpf, name)?;
        if program.fd().is_err() {
            match program.load() {
                Ok(()) => {}
                Err(err) if is_permission_error(&err) => {
                    return Err(SetupError::Permission("loading the XDP program").into());
                }
                Err(err) => {
                    return Err(err).with_context(|| format!("loading XDP program {name}"));
                }
            }
        }
        Ok(program)
    }

    /// Attaches the counting program to `iface`; returns the mode it runs in.
    /// The attachment lasts as long as this `Kernel`.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> anyhow::Result<&'static str> {
        let c_iface = std::ffi::CString::new(iface)
            .map_err(|_| SetupError::UnknownInterface(iface.to_string()))?;
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        if unsafe { libc::if_nametoindex(c_iface.as_ptr()) } == 0 {
            return Err(SetupError::UnknownInterface(iface.to_string()).into());
        }
        let program = self.xdp(names::XDP_PROGRAM)?;
        let attempts: &[(XdpMode, &'static str)] = match mode {
            AttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
            AttachMode::Native => &[(XdpMode::Driver, "native")],
            AttachMode::Skb => &[(XdpMode::Skb, "generic")],
        };
        let mut last_error = None;
        for &(xdp_mode, label) in attempts {
            match program.attach(iface, xdp_mode) {
                Ok(link) => {
                    self.xdp_link = Some(link);
                    return Ok(label);
                }
                Err(err) => match os_error_of(&err) {
                    // Something is attached already, in this mode or the other.
                    Some(libc::EBUSY) | Some(libc::EEXIST) => {
                        return Err(SetupError::AlreadyAttached(iface.to_string()).into());
                    }
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        return Err(SetupError::Permission("attaching XDP").into());
                    }
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) if xdp_mode == XdpMode::Driver => {
                        last_error = Some(SetupError::ModeUnsupported {
                            iface: iface.to_string(),
                            mode: "native",
                        });
                    }
                    _ => {
                        return Err(err)
                            .with_context(|| format!("attaching XDP ({label}) to {iface}"));
                    }
                },
            }
        }
        Err(last_error
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow::anyhow!("attaching XDP to {iface} failed")))
    }

    /// Detaches the programs from the interface, keeping the maps: after it
    /// nothing more is counted, so figures read next are final.
    pub fn detach(&mut self) -> anyhow::Result<()> {
        if let Some(link) = self.xdp_link.take() {
            self.xdp(names::XDP_PROGRAM)?
                .detach(link)
                .context("detaching the XDP program")?;
        }
        if let Some(link) = self.egress_link.take() {
            self.egress()?
                .detach(link)
                .context("detaching the TC egress program")?;
        }
        Ok(())
    }

    /// The tallies of what arrives, summed over all CPUs.
    pub fn tallies(&self) -> anyhow::Result<Tallies> {
        self.tallies_of(names::TALLIES_MAP)
    }

    /// The tallies of what the host sends (TC egress), summed over all CPUs.
    pub fn egress_tallies(&self) -> anyhow::Result<Tallies> {
        self.tallies_of(names::EGRESS_TALLIES_MAP)
    }

    fn tallies_of(&self, name: &str) -> anyhow::Result<Tallies> {
        let map = self
            .ebpf
            .map(name)
            .with_context(|| format!("eBPF object has no {name} map"))?;
        let array =
            PerCpuArray::<&MapData, Tallies>::try_from(map).context("opening the tallies map")?;
        let per_cpu = array.get(&0, 0).context("reading the tallies map")?;
        let mut total = Tallies::default();
        for cpu in per_cpu.iter() {
            total.add(cpu);
        }
        Ok(total)
    }

    /// The descriptor of program `name` (XDP or TC), loaded if need be, for
    /// BPF_PROG_TEST_RUN from threads of their own; valid while `self` is.
    pub fn program_fd(&mut self, name: &str) -> anyhow::Result<std::os::fd::RawFd> {
        // Programs load on first use.
        if name == names::TC_EGRESS_PROGRAM {
            self.egress()?;
        } else {
            self.xdp(name)?;
        }
        let program = self
            .ebpf
            .program(name)
            .with_context(|| format!("eBPF object has no program {name}"))?;
        Ok(program
            .fd()
            .with_context(|| format!("program {name} is not loaded"))?
            .as_fd()
            .as_raw_fd())
    }

    /// Runs `program` once over `frame` with BPF_PROG_TEST_RUN; returns its verdict.
    pub fn test_run(&mut self, program: &str, frame: &[u8]) -> anyhow::Result<u32> {
        let program = self.xdp(program)?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        Ok(result.return_value)
    }

    /// Runs `program` `repeat` times over `frame` in one BPF_PROG_TEST_RUN call;
    /// returns the verdict and the kernel's mean time per run in nanoseconds.
    ///
    /// The kernel times only its loop around the program, so the call's fixed
    /// cost (milliseconds here, which would swamp a ~20 ns program unless the
    /// repeat count were huge) stays out. It reports whole nanoseconds, floored;
    /// half a nanosecond is added back as the unbiased estimate of the true mean.
    pub fn time_run(
        &mut self,
        program: &str,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, f64)> {
        let program = self.xdp(program)?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        Ok((result.return_value, result.duration.as_nanos() as f64 + 0.5))
    }
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .with_context(|| format!("eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}

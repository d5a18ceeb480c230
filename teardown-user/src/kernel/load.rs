//! Loading the object: its globals and map sizes set for the options, the
//! flow table's size checked against the memory available, and each
//! program loaded (and verified) on first use, test runs included.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, ProgramArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use teardown_common::{
    conn::{Timeouts, likely_server_port_set},
    events::{DEFAULT_MAX_FLOWS, SLOTS_PER_CHANGE_WORD, half_open_budget},
    names,
    table::{FlowSlot, PrintLine, SLOTS_PER_PRINT_LINE, print_lines_for, set_shift, slots_for},
    tunnel::TunnelPorts,
};

use super::{Kernel, SetupError, is_permission_error};

/// The eBPF object built from `teardown-ebpf` by the build script, embedded
/// at build time (empty when built with `AYA_BUILD_SKIP`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TEARDOWN_EMBEDDED_OBJECT"));

/// Whether the kernel programs let go of a flow-table slot's lock with a
/// plain store (1) rather than a fetching add (0): only on x86-64, whose
/// BPF JIT makes the store one `mov`, a release under x86's ordering (the
/// argument is at the eBPF crate's `lock::unlock`).
const UNLOCK_BY_STORE: u32 = cfg!(target_arch = "x86_64") as u32;

/// The verifier's limit on the instructions it processes per program
/// (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_INSN_LIMIT: u32 = 1_000_000;

/// Kernel memory a flow table of `slots` slots takes: the slots, their
/// prints and the changed-slot bitmap.
pub fn table_bytes(slots: u32) -> u64 {
    slots as u64 * slot_bytes() as u64 + (slots as u64).div_ceil(8)
}

/// Kernel memory per slot of a flow table: the slot and its print.
pub fn slot_bytes() -> usize {
    std::mem::size_of::<FlowSlot>()
        + std::mem::size_of::<PrintLine>() / SLOTS_PER_PRINT_LINE as usize
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
    table_fits(max_flows, slots, 1, memory_available())
}

/// Refuses `tables` flow tables of `--max-flows` (one per interface a run
/// watches) that would together take more than half the memory available,
/// before any is loaded: loaded one by one, each would be checked against
/// what the ones before it left.
pub fn check_tables_fit(max_flows: u32, tables: u32) -> Result<(), SetupError> {
    table_fits(max_flows, slots_for(max_flows), tables, memory_available())
}

/// [`check_tables_fit`] for a given amount of available memory (`None`:
/// unknown, so not refused).
fn table_fits(
    max_flows: u32,
    slots: u32,
    tables: u32,
    available: Option<u64>,
) -> Result<(), SetupError> {
    let needed = table_bytes(slots).saturating_mul(u64::from(tables));
    match available {
        Some(available) if needed > available / 2 => Err(SetupError::TableTooLarge {
            max_flows,
            tables,
            needed_mib: needed.div_ceil(1 << 20),
            slot_bytes: slot_bytes(),
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
        // The default table: 131072 slots of 384 bytes and their 2-byte
        // prints, 48 MiB, plus the bitmap.
        assert_eq!(slot_bytes(), 386);
        assert_eq!(table_bytes(131_072), 131_072 * 386 + 131_072 / 8);
        assert!(table_fits(131_072, 131_072, 1, Some(GIB)).is_ok());
        assert!(table_fits(131_072, 131_072, 1, None).is_ok());
        // The largest: 16M slots, 6.0 GiB: refused with 8 GiB available.
        let refused = table_fits(16_777_216, 16_777_216, 1, Some(8 * GIB)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "--max-flows 16777216 needs 6178 MiB of kernel memory for the flow table (386 bytes a connection), more than half of the 8192 MiB available: choose a smaller --max-flows"
        );
        assert!(table_fits(16_777_216, 16_777_216, 1, Some(13 * GIB)).is_ok());
        // One table per interface: three of 2M slots (772 MiB each) do
        // not fit in 4 GiB, where one does.
        assert!(table_fits(2_097_152, 2_097_152, 1, Some(4 * GIB)).is_ok());
        let refused = table_fits(2_097_152, 2_097_152, 3, Some(4 * GIB)).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "--max-flows 2097152 needs 2317 MiB of kernel memory for 3 flow tables, one per interface (386 bytes a connection), more than half of the 4096 MiB available: choose a smaller --max-flows or fewer interfaces"
        );
    }

    #[test]
    fn meminfo_is_read() {
        assert!(memory_available().is_some_and(|bytes| bytes > 0));
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
    /// The encapsulations opened, and the UDP ports of VXLAN and Geneve
    /// ([`TunnelPorts::OFF`]: none; the tunnel programs are then not even
    /// loaded).
    pub tunnels: TunnelPorts,
    /// The kernel lists the changed-slot bitmap's words it marks
    /// ([`ChangedWords`]), so that [`FlowTable::take_changes`] swaps those
    /// alone. Only for a caller that runs one packet at a time on one
    /// thread and takes the changes after each (`replay --connections`):
    /// the list is updated without atomics.
    ///
    /// [`ChangedWords`]: teardown_common::events::ChangedWords
    /// [`FlowTable::take_changes`]: super::FlowTable::take_changes
    pub note_changed_words: bool,
    /// While the flow table is under pressure (a flood), the reset program
    /// sends no event for a reset of a connection the table holds no record
    /// of: no record could claim it, and under an ACK flood (a reset per
    /// spoofed ACK) reading them was most of teardown's own CPU. They are
    /// still counted, by reason, and in `reset_events_skipped`. Only where
    /// the reset program shares the one flow table watched (`teardown run`
    /// on one interface).
    pub skip_untracked_resets: bool,
    /// The interface's packets start with their IP header, no Ethernet
    /// header (a tun or WireGuard device: [`LinkLayer::Ip`]): the TC
    /// programs read them from their first byte, and the XDP modes are
    /// refused.
    ///
    /// [`LinkLayer::Ip`]: super::attach::LinkLayer::Ip
    pub ip_link: bool,
}

/// Which clock stamps the flow table's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
            tunnels: TunnelPorts::DEFAULT,
            note_changed_words: false,
            skip_untracked_resets: false,
            ip_link: false,
        }
    }
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

        // A build with AYA_BUILD_SKIP (for rust-analyzer, clippy) embeds none.
        if EBPF_OBJECT.is_empty() {
            anyhow::bail!(
                "this teardown was built with AYA_BUILD_SKIP and holds no eBPF program: build it again without it"
            );
        }
        let slots = slots_for(options.max_flows);
        check_table_fits(options.max_flows, slots)?;
        let tick = match options.clock {
            ClockMode::Coarse => ns_per_tick()?,
            ClockMode::Precise => 0,
        };
        let cpus = aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1);
        let budget = half_open_budget(slots, options.timeouts.syn_ns, cpus);
        // TEARDOWN_VERIFIER_LOG=1 asks for the verifier's whole log when a
        // program is refused (for whoever changes the kernel programs).
        let log_level = if std::env::var_os("TEARDOWN_VERIFIER_LOG").is_some_and(|v| v == "1") {
            aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS
        } else {
            aya::VerifierLogLevel::STATS
        };
        let mut ebpf = match EbpfLoader::new()
            .verifier_log_level(log_level)
            .override_global(names::TIMEOUTS_GLOBAL, &options.timeouts, true)
            .override_global(names::GRACE_GLOBAL, &options.grace_ns, true)
            .override_global(names::SET_SHIFT_GLOBAL, &set_shift(slots), true)
            .override_global(names::NS_PER_TICK_GLOBAL, &tick, true)
            .override_global(names::HALF_OPEN_BUDGET_GLOBAL, &budget, true)
            .override_global(names::UNLOCK_BY_STORE_GLOBAL, &UNLOCK_BY_STORE, true)
            .override_global(
                names::NOTE_CHANGED_WORDS_GLOBAL,
                &(options.note_changed_words as u32),
                true,
            )
            .override_global(
                names::SKIP_UNTRACKED_RESETS_GLOBAL,
                &(options.skip_untracked_resets as u32),
                true,
            )
            .override_global(names::TUNNEL_PORTS_GLOBAL, &options.tunnels, true)
            .override_global(names::IP_LINK_GLOBAL, &(options.ip_link as u32), true)
            .map_max_entries(names::FLOW_TABLE_MAP, slots)
            .map_max_entries(names::FLOW_PRINTS_MAP, print_lines_for(slots))
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
            tunnels: options.tunnels,
            replay_tunnels_installed: false,
            note_changed_words: options.note_changed_words,
            ip_link: options.ip_link,
            xdp_link: None,
            ingress_link: None,
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

    /// The TC egress program, loaded on first use.
    pub(super) fn egress(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        self.classifier(names::TC_EGRESS_PROGRAM)
    }

    /// The TC program `name` (the egress or ingress program, or a
    /// benchmark's), loaded on first use.
    pub(super) fn classifier(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        let egress: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("eBPF object has no program {name}"))?
            .try_into()
            .with_context(|| format!("program {name} is not a TC program"))?;
        if egress.fd().is_err() {
            match egress.load() {
                Ok(()) => {}
                Err(err) if is_permission_error(&err) => {
                    return Err(SetupError::Permission("loading a TC program").into());
                }
                Err(err) => return Err(err).with_context(|| format!("loading TC program {name}")),
            }
            self.install_tunnel_program(name)?;
        }
        self.ebpf
            .program_mut(name)
            .context("eBPF object lost a program")?
            .try_into()
            .with_context(|| format!("program {name} is not a TC program"))
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
        for name in [
            names::TC_BENCH_PROGRAM,
            names::TC_BENCH_MUTATE_PROGRAM,
            names::TC_BASELINE_PROGRAM,
        ] {
            self.classifier(name)?;
        }
        Ok(())
    }

    /// The XDP program `name`, loaded on first use.
    pub(super) fn xdp(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
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
            // The replay program's tunnel program waits for the first frame
            // that needs it (`install_replay_tunnels`).
            if name != names::XDP_REPLAY_PROGRAM {
                self.install_tunnel_program(name)?;
            }
        }
        xdp_program(&mut self.ebpf, name)
    }

    /// Loads the replay program's tunnel program and puts it where the
    /// replay program's tail call finds it, once: `teardown replay
    /// --connections` asks at the first frame the replay program would hand
    /// over ([`hands_to_tunnel_program`]), so a capture without tunnels
    /// never pays for its verification (about 0.4 s here). Until then the
    /// tail call finds no program, as with tunnels off.
    ///
    /// [`hands_to_tunnel_program`]: teardown_common::tunnel::hands_to_tunnel_program
    pub fn install_replay_tunnels(&mut self) -> anyhow::Result<()> {
        if self.replay_tunnels_installed {
            return Ok(());
        }
        self.install_tunnel_program(names::XDP_REPLAY_PROGRAM)?;
        self.replay_tunnels_installed = true;
        Ok(())
    }

    /// Whether a frame may still need [`Kernel::install_replay_tunnels`]:
    /// tunnels on, and the tunnel program not yet in.
    pub fn replay_tunnels_wanted(&self) -> bool {
        self.tunnels.enabled != 0 && !self.replay_tunnels_installed
    }

    /// The tunnel ports the programs were loaded with.
    pub fn tunnel_ports(&self) -> &TunnelPorts {
        &self.tunnels
    }

    /// Loads the tunnel program the program `name` hands frames that may
    /// carry a tunnel to, and puts it in the slot of the program array
    /// that `name` tail-calls. Nothing for other programs, nor with
    /// tunnels off: the tail call then finds no program and the frame
    /// passes, counted but not opened.
    fn install_tunnel_program(&mut self, name: &str) -> anyhow::Result<()> {
        let (partner, array, slot) = match name {
            names::XDP_PROGRAM => (
                names::XDP_TUNNEL_PROGRAM,
                names::TUNNEL_XDP_MAP,
                names::tunnel_slot::LIVE,
            ),
            names::XDP_REPLAY_PROGRAM => (
                names::XDP_TUNNEL_REPLAY_PROGRAM,
                names::TUNNEL_XDP_MAP,
                names::tunnel_slot::REPLAY,
            ),
            names::TC_EGRESS_PROGRAM => (
                names::TC_TUNNEL_PROGRAM,
                names::TUNNEL_TC_MAP,
                names::tc_tunnel_slot::EGRESS,
            ),
            names::TC_INGRESS_PROGRAM => (
                names::TC_TUNNEL_INGRESS_PROGRAM,
                names::TUNNEL_TC_MAP,
                names::tc_tunnel_slot::INGRESS,
            ),
            _ => return Ok(()),
        };
        if self.tunnels.enabled == 0 {
            return Ok(());
        }
        let fd = if array == names::TUNNEL_TC_MAP {
            self.classifier(partner)?.fd()?.try_clone()
        } else {
            let program = xdp_program(&mut self.ebpf, partner)?;
            if program.fd().is_err() {
                program
                    .load()
                    .with_context(|| format!("loading XDP program {partner}"))?;
            }
            program.fd()?.try_clone()
        }
        .with_context(|| format!("duplicating program {partner}'s descriptor"))?;
        let mut programs: ProgramArray<&mut MapData> = ProgramArray::try_from(
            self.ebpf
                .map_mut(array)
                .with_context(|| format!("eBPF object has no map {array}"))?,
        )
        .with_context(|| format!("opening program array {array}"))?;
        programs
            .set(slot, &fd, 0)
            .with_context(|| format!("putting {partner} in {array}"))
    }

    /// The descriptor of program `name` (XDP or TC), loaded if need be, for
    /// BPF_PROG_TEST_RUN from threads of their own; valid while `self` is.
    pub fn program_fd(&mut self, name: &str) -> anyhow::Result<std::os::fd::RawFd> {
        // Programs load on first use.
        if [
            names::TC_EGRESS_PROGRAM,
            names::TC_TUNNEL_PROGRAM,
            names::TC_INGRESS_PROGRAM,
            names::TC_TUNNEL_INGRESS_PROGRAM,
            names::TC_BENCH_PROGRAM,
            names::TC_BENCH_MUTATE_PROGRAM,
            names::TC_BASELINE_PROGRAM,
        ]
        .contains(&name)
        {
            self.classifier(name)?;
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

    /// How many instructions the verifier processed to accept program
    /// `name` (loaded if need be), out of its limit of
    /// [`VERIFIER_INSN_LIMIT`] per program: the margin any change to the
    /// program's paths has to fit in. `None` if the kernel does not say.
    pub fn verified_insns(&mut self, name: &str) -> anyhow::Result<Option<u32>> {
        self.program_fd(name)?;
        let program = self
            .ebpf
            .program(name)
            .with_context(|| format!("eBPF object has no program {name}"))?;
        let info = program
            .info()
            .with_context(|| format!("reading program {name}'s information"))?;
        Ok(info.verified_instruction_count())
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

    /// Runs the replay program once over `frame` at capture time `now_ns`,
    /// passed as 8 bytes of XDP metadata before the frame (the program's
    /// `ReplayClock` reads it there): one system call per packet, where
    /// setting the replay clock's map first took two. `buffer` is reused
    /// between calls. Returns the verdict.
    pub fn test_run_at(
        &mut self,
        program: &str,
        frame: &[u8],
        now_ns: u64,
        buffer: &mut Vec<u8>,
    ) -> anyhow::Result<u32> {
        const META: usize = 8;
        buffer.clear();
        buffer.extend_from_slice(&now_ns.to_ne_bytes());
        buffer.extend_from_slice(frame);
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex; offsets into data_in, where the
        // kernel wants the metadata first (data_meta 0) and data_end the
        // whole input's length.
        let mut ctx = [0u8; 24];
        ctx[0..4].copy_from_slice(&(META as u32).to_ne_bytes());
        ctx[4..8].copy_from_slice(&(buffer.len() as u32).to_ne_bytes());
        let program = self.xdp(program)?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(buffer),
                ctx_in: Some(&ctx),
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

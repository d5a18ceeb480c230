//! Loading the embedded eBPF object, attaching it, and reading its maps.

use std::io;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use teardown_common::{counters::Tallies, names};
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

fn is_permission_error(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(os_error_of(err), Some(libc::EPERM) | Some(libc::EACCES))
}

impl Kernel {
    /// Loads the embedded object and both XDP programs into the kernel.
    pub fn load() -> anyhow::Result<Self> {
        // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lifting it is
        // harmless on newer ones.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        let mut ebpf = match EbpfLoader::new().load(EBPF_OBJECT) {
            Ok(ebpf) => ebpf,
            Err(err) if is_permission_error(&err) => {
                return Err(SetupError::Permission("loading the eBPF object").into());
            }
            Err(err) => return Err(err).context("loading the eBPF object"),
        };
        for name in [names::XDP_PROGRAM, names::XDP_BASELINE_PROGRAM] {
            let program = xdp_program(&mut ebpf, name)?;
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
        Ok(Kernel { ebpf })
    }

    fn xdp(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, name)
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
                Ok(_) => return Ok(label),
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

    /// The tallies summed over all CPUs.
    pub fn tallies(&self) -> anyhow::Result<Tallies> {
        let map = self
            .ebpf
            .map(names::TALLIES_MAP)
            .with_context(|| format!("eBPF object has no {} map", names::TALLIES_MAP))?;
        let array =
            PerCpuArray::<&MapData, Tallies>::try_from(map).context("opening the tallies map")?;
        let per_cpu = array.get(&0, 0).context("reading the tallies map")?;
        let mut total = Tallies::default();
        for cpu in per_cpu.iter() {
            total.add(cpu);
        }
        Ok(total)
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

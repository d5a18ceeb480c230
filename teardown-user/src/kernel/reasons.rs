//! The reset program on `tcp:tcp_send_reset`: set up from the running
//! kernel's own description of the tracepoint, attached beside XDP and TC,
//! and read back as events and counts.
//!
//! Everything here may fail on a kernel without the tracepoint, without its
//! `reason` field, without tracefs or BTF: [`Kernel::watch_resets`] then
//! says why in one error, and the run carries on with the wire's reasons.

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use teardown_common::{
    names,
    reasons::{ResetCounts, ResetEvent, ResetLayout, SOCKADDR_BYTES},
};

use super::{
    Kernel,
    btf::Btf,
    tracefs::{Format, tracefs_root},
};

/// The names of the kernel's reset reasons, by number, as the running
/// kernel spells them (`NO_SOCKET`, `TCP_ABORT_ON_CLOSE`, ...).
#[derive(Clone, Debug, Default)]
pub struct ReasonNames(BTreeMap<u32, String>);

impl ReasonNames {
    pub fn new(names: BTreeMap<u32, String>) -> ReasonNames {
        ReasonNames(names)
    }

    /// The reason's name; a number the table lacks reads `REASON_<n>`.
    pub fn name(&self, reason: u32) -> String {
        self.0
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }

    /// Every (number, name) the kernel lists, in order.
    pub fn all(&self) -> impl Iterator<Item = (u32, &str)> {
        self.0.iter().map(|(number, name)| (*number, name.as_str()))
    }
}

/// The attached reset program's outputs.
pub struct ResetWatch {
    pub names: ReasonNames,
    pub events: RingBuf<MapData>,
    /// Whether resets can be put down to a process: the kernel's BTF gave
    /// the offset of `sk_lock.owned`. Why not, when not.
    pub process_attribution: Result<(), String>,
}

impl ResetWatch {
    /// Reads every waiting event, oldest first.
    pub fn drain(&mut self, mut each: impl FnMut(&ResetEvent)) {
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<ResetEvent>() {
                // SAFETY: the kernel wrote a whole ResetEvent (length checked);
                // read_unaligned makes no assumption about the alignment.
                let event = unsafe { item.as_ptr().cast::<ResetEvent>().read_unaligned() };
                each(&event);
            }
        }
    }
}

/// The inode number of this process's network namespace: what the
/// kernel's `net->ns.inum` holds for it.
fn netns_inode() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata("/proc/self/ns/net")?.ino();
    u32::try_from(inode).map_err(|_| std::io::Error::other("inode number over 32 bits"))
}

impl Kernel {
    /// Attaches the reset program to `tcp:tcp_send_reset`, laid out for the
    /// running kernel. An error says, in one line, what this kernel lacks.
    pub fn watch_resets(&mut self) -> anyhow::Result<ResetWatch> {
        let root = tracefs_root()?;
        let format = Format::read(&root, "tcp", "tcp_send_reset")?;
        let names = ReasonNames::new(format.symbols("reason")?);
        let offset = |name: &str, size: u16| format.field(name, size).map(|field| field.offset);
        let btf = Btf::kernel();
        let member = |structure: &str, path: &[&str]| -> Result<u16, String> {
            let btf = btf.as_ref().map_err(|err| err.to_string())?;
            match btf.member_offset(structure, path) {
                Ok(at) if at > 0 && at < u32::from(u16::MAX) => Ok(at as u16),
                Ok(at) => Err(format!("{} at {at} in struct {structure}", path.join("."))),
                Err(err) => Err(err.to_string()),
            }
        };
        let (sk_lock_owned, process_attribution) = match member("sock", &["sk_lock", "owned"]) {
            Ok(at) => (at, Ok(())),
            Err(why) => (0, Err(why)),
        };
        // Where the namespace of a reset is; without it every namespace's
        // resets would be counted as this one's.
        let namespace = (|| {
            Ok::<_, String>((
                member("sock_common", &["skc_net"])?,
                member("sk_buff", &["dev"])?,
                member("net_device", &["nd_net"])?,
                member("net", &["ns", "inum"])?,
                netns_inode().map_err(|err| format!("/proc/self/ns/net: {err}"))?,
            ))
        })()
        .map_err(|why| anyhow::anyhow!("cannot tell the namespace of a reset ({why})"))?;
        let layout = ResetLayout {
            skb: offset("skbaddr", 8)?,
            sk: offset("skaddr", 8)?,
            state: offset("state", 4)?,
            reason: offset("reason", 4)?,
            local: offset("saddr", SOCKADDR_BYTES as u16)?,
            remote: offset("daddr", SOCKADDR_BYTES as u16)?,
            sk_lock_owned,
            enabled: 1,
            sk_net: namespace.0,
            skb_dev: namespace.1,
            dev_net: namespace.2,
            net_inum: namespace.3,
            netns: namespace.4,
            _pad: 0,
        };
        let mut settings: Array<&mut MapData, ResetLayout> = Array::try_from(
            self.ebpf
                .map_mut(names::RESET_LAYOUT_MAP)
                .context("eBPF object has no reset layout map")?,
        )
        .context("opening the reset layout map")?;
        settings
            .set(0, layout, 0)
            .context("writing the reset layout")?;
        let program: &mut TracePoint = self
            .ebpf
            .program_mut(names::RESET_PROGRAM)
            .context("eBPF object has no reset program")?
            .try_into()
            .context("the reset program is not a tracepoint program")?;
        program.load().context("loading the reset program")?;
        // The link lives as long as the program, in the object: dropped with
        // the Kernel, and closed by the kernel if the process dies (a
        // tracepoint attachment is a perf event file descriptor).
        program
            .attach("tcp", "tcp_send_reset")
            .context("attaching to tcp:tcp_send_reset")?;
        let events = RingBuf::try_from(
            self.ebpf
                .take_map(names::RESET_EVENTS_MAP)
                .context("eBPF object has no reset event ring buffer")?,
        )
        .context("opening the reset event ring buffer")?;
        Ok(ResetWatch {
            names,
            events,
            process_attribution,
        })
    }

    /// Resets counted by reason number, summed over the CPUs.
    pub fn reset_counts(&self) -> anyhow::Result<ResetCounts> {
        let map = self
            .ebpf
            .map(names::RESET_COUNTS_MAP)
            .context("eBPF object has no reset counts map")?;
        let array = PerCpuArray::<&MapData, ResetCounts>::try_from(map)
            .context("opening the reset counts map")?;
        let per_cpu = array.get(&0, 0).context("reading the reset counts")?;
        let mut total = ResetCounts::default();
        for cpu in per_cpu.iter() {
            total.add(cpu);
        }
        Ok(total)
    }
}

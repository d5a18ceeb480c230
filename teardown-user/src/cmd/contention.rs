//! `teardown bench --contention`: both CPUs update one connection's record
//! at once, as a server's ingress (XDP, on the receiving CPU) and egress (TC,
//! on the sending CPU) do, and the record must count every packet.
//!
//! One connection is set up with a handshake. Then a thread pinned to the
//! first CPU runs the client's pure ACK through the XDP program and a thread
//! pinned to the second runs the server's pure ACK through the TC egress
//! program, each `repeat` times in one BPF_PROG_TEST_RUN, started together.
//! Both take the fast path, which updates the record in place: without the
//! slot's lock, the two CPUs' read-modify-writes of the shared fields
//! (`packets`, the timestamps) lose updates. The record's `packets` must
//! grow by exactly the runs, and each side's `pkts` by its own runs.
//! The same runs one CPU at a time give the uncontended cost.

use std::{
    os::fd::RawFd,
    sync::{Arc, Barrier},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use teardown_common::{
    craft::{self, Spec},
    names,
    parse::tcp_flags,
    table::FlowSlot,
};

use crate::kernel::{Kernel, LoadOptions};
use crate::report::output::outln;

/// One thread's frames: a program, by file descriptor, and its frame.
struct Hammer {
    label: &'static str,
    /// The sender: 0 the client (the originator), 1 the server.
    side: usize,
    program: &'static str,
    fd: RawFd,
    frame: Vec<u8>,
    cpu: usize,
}

/// `BPF_PROG_TEST_RUN`'s part of `union bpf_attr` (linux/bpf.h).
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs program `fd` `repeat` times over `frame` on this thread's CPU;
/// returns its verdict and the kernel's mean ns per run. Only needs the
/// program's descriptor, so threads can run programs of one object at once.
pub(crate) fn test_run_fd(fd: RawFd, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, u32)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRunAttr::default()
    };
    // SAFETY: the attribute is laid out as the kernel expects, and its
    // pointers are to buffers of the sizes given, alive across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_TEST_RUN");
    }
    Ok((attr.retval, attr.duration))
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // only touch the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning a thread to CPU {cpu}"));
        }
    }
    Ok(())
}

/// The client (A) and server (B) segments of one connection, port `port`
/// on the client: the handshake, then each side's pure ACK.
fn frames(port: u16) -> (Vec<craft::Frame>, craft::Frame, craft::Frame) {
    use tcp_flags::{ACK, SYN};
    let segment = |flags, seq, ack, reversed: bool| {
        let mut spec = Spec::tcp_v4(flags, 0);
        if let craft::Transport::Tcp {
            src_port,
            seq: s,
            ack: a,
            ..
        } = &mut spec.transport
        {
            *src_port = port;
            *s = seq;
            *a = ack;
        }
        craft::build(&if reversed { spec.reversed() } else { spec })
    };
    (
        vec![
            segment(SYN, 1000, 0, false),
            segment(SYN | ACK, 5000, 1001, true),
            segment(ACK, 1001, 5001, false),
        ],
        segment(ACK, 1001, 5001, false),
        segment(ACK, 5001, 1001, true),
    )
}

/// The connection's record: the one slot in use.
fn the_record(kernel: &mut Kernel) -> anyhow::Result<FlowSlot> {
    let table = kernel.flow_table()?;
    let mut found = None;
    for index in 0..table.len() as u32 {
        if let Some(slot) = table.read(index)
            && slot.key.family != 0
        {
            if found.is_some() {
                bail!("more than one record in the flow table");
            }
            found = Some(slot);
        }
    }
    found.context("the connection has no record in the flow table")
}

/// What one round of runs added to the record, and what it should have.
struct Round {
    /// Mean ns per run, per thread.
    ns: Vec<u32>,
    expected: [u64; 2],
    counted: [u64; 2],
    packets_expected: u64,
    packets_counted: u64,
    /// Segments the kernel gave up on after its bounded wait for the slot
    /// (`lock_contended`): dropped, but counted as such.
    contended: u64,
    /// How much of the shorter thread's run the other ran alongside, 0 to
    /// 1 (1 for the one-at-a-time round): a thread that starts late (or a
    /// CPU taken away) leaves "both at once" measuring each alone.
    overlap: f64,
}

impl Round {
    /// Runs missing from `packets` that `lock_contended` does not account for.
    fn lost_packets(&self) -> i64 {
        self.packets_expected as i64 - self.packets_counted as i64 - self.contended as i64
    }

    /// The same for the sides' `pkts`, added up.
    fn lost_pkts(&self) -> i64 {
        (self.expected[0] + self.expected[1]) as i64
            - (self.counted[0] + self.counted[1]) as i64
            - self.contended as i64
    }

    /// Whether every run is in the record or in `lock_contended`.
    fn exact(&self) -> bool {
        self.lost_packets() == 0 && self.lost_pkts() == 0
    }

    fn json(&self) -> Value {
        json!({
            "ns_per_run": self.ns,
            "packets_expected": self.packets_expected,
            "packets_counted": self.packets_counted,
            "client_pkts_expected": self.expected[0],
            "client_pkts_counted": self.counted[0],
            "server_pkts_expected": self.expected[1],
            "server_pkts_counted": self.counted[1],
            "lock_contended": self.contended,
            "overlap": self.overlap,
            "lost_packets": self.lost_packets(),
            "lost_pkts": self.lost_pkts(),
            "exact": self.exact(),
        })
    }
}

/// Runs the hammers (all at once if `together`, else one after the
/// other) and reads what the record gained.
fn round(
    kernel: &mut Kernel,
    hammers: &[Hammer],
    repeat: u32,
    together: bool,
) -> anyhow::Result<Round> {
    let before = the_record(kernel)?;
    let contended_before = kernel.flow_stats()?.lock_contended;
    let mut ns = Vec::new();
    let mut overlap = 1.0;
    if together {
        let barrier = Arc::new(Barrier::new(hammers.len()));
        let handles: Vec<_> = hammers
            .iter()
            .map(|hammer| {
                let (fd, frame, cpu) = (hammer.fd, hammer.frame.clone(), hammer.cpu);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || -> anyhow::Result<(u32, Instant, Instant)> {
                    pin_to(cpu)?;
                    barrier.wait();
                    let started = Instant::now();
                    let (_, duration) = test_run_fd(fd, &frame, repeat)?;
                    Ok((duration, started, Instant::now()))
                })
            })
            .collect();
        let mut spans = Vec::new();
        for handle in handles {
            let (duration, started, ended) = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a hammer thread panicked"))??;
            ns.push(duration);
            spans.push((started, ended));
        }
        overlap = overlap_of(&spans);
    } else {
        for hammer in hammers {
            let (fd, frame, cpu) = (hammer.fd, hammer.frame.clone(), hammer.cpu);
            let (_, duration) = std::thread::spawn(move || {
                pin_to(cpu)?;
                test_run_fd(fd, &frame, repeat)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a hammer thread panicked"))??;
            ns.push(duration);
        }
    }
    let after = the_record(kernel)?;
    let contended = kernel.flow_stats()?.lock_contended - contended_before;
    // The client is the originator (it sent the SYN).
    let (orig, resp) = (
        teardown_common::conn::ORIG & 1,
        teardown_common::conn::RESP & 1,
    );
    let runs = repeat as u64;
    Ok(Round {
        ns,
        expected: [0, 1]
            .map(|side| runs * hammers.iter().filter(|hammer| hammer.side == side).count() as u64),
        counted: [
            after.conn.lane(orig).pkts - before.conn.lane(orig).pkts,
            after.conn.lane(resp).pkts - before.conn.lane(resp).pkts,
        ],
        packets_expected: runs * hammers.len() as u64,
        packets_counted: after.conn.packets.wrapping_sub(before.conn.packets) as u64,
        contended,
        overlap,
    })
}

/// The time all the spans ran at once, as a fraction of the shortest.
fn overlap_of(spans: &[(Instant, Instant)]) -> f64 {
    let (Some(latest_start), Some(earliest_end)) = (
        spans.iter().map(|span| span.0).max(),
        spans.iter().map(|span| span.1).min(),
    ) else {
        return 0.0;
    };
    let shortest = spans
        .iter()
        .map(|(start, end)| end.duration_since(*start))
        .min()
        .unwrap_or_default();
    if shortest.is_zero() {
        return 0.0;
    }
    earliest_end
        .saturating_duration_since(latest_start)
        .as_secs_f64()
        / shortest.as_secs_f64()
}

/// The both-at-once round: threads that did not run at once measured
/// nothing of the contention, so it is tried again, keeping the round
/// that overlapped most.
fn together_round(kernel: &mut Kernel, hammers: &[Hammer], repeat: u32) -> anyhow::Result<Round> {
    let mut best = round(kernel, hammers, repeat, true)?;
    for _ in 1..TOGETHER_TRIES {
        if best.overlap >= ENOUGH_OVERLAP {
            break;
        }
        let again = round(kernel, hammers, repeat, true)?;
        if again.overlap > best.overlap {
            best = again;
        }
    }
    Ok(best)
}

/// Tries of the both-at-once round, for one whose threads ran alongside
/// each other for at least [`ENOUGH_OVERLAP`] of the shorter run.
const TOGETHER_TRIES: usize = 5;
const ENOUGH_OVERLAP: f64 = 0.9;

/// Runs the contention case; prints its table and returns its JSON and
/// whether every update was counted.
pub fn run(repeat: u32) -> anyhow::Result<(Value, bool)> {
    let cpus = aya::util::online_cpus()
        .map_err(|(_, err)| err)
        .context("listing the online CPUs")?;
    if cpus.len() < 2 {
        bail!(
            "the contention case needs two CPUs, this machine has {}",
            cpus.len()
        );
    }
    let (first_cpu, second_cpu) = (cpus[0] as usize, cpus[1] as usize);
    let mut kernel = Kernel::load(&LoadOptions {
        max_flows: 16,
        ..LoadOptions::default()
    })?;
    let (handshake, client_ack, server_ack) = frames(40200);
    let xdp_fd = kernel.program_fd(names::XDP_PROGRAM)?;
    for frame in &handshake {
        kernel.test_run(names::XDP_PROGRAM, frame)?;
    }
    // One ACK each way first: the slow path notes each side's first pure
    // ACK, after which both take the fast path.
    kernel.test_run(names::XDP_PROGRAM, &client_ack)?;
    kernel.test_run(names::XDP_PROGRAM, &server_ack)?;
    let client = |cpu| Hammer {
        label: "client ACK, XDP ingress",
        side: 0,
        program: names::XDP_PROGRAM,
        fd: xdp_fd,
        frame: client_ack.as_bytes().to_vec(),
        cpu,
    };
    let hammers = [
        client(first_cpu),
        Hammer {
            label: "server ACK, TC egress",
            side: 1,
            program: names::TC_EGRESS_PROGRAM,
            fd: kernel.program_fd(names::TC_EGRESS_PROGRAM)?,
            frame: server_ack.as_bytes().to_vec(),
            cpu: second_cpu,
        },
    ];
    // The client's ACKs on both CPUs at once: one direction, so one lane's
    // lock, taken by both (as when two receive queues, or a sending thread
    // and a softirq, carry one direction of a flow).
    let one_direction_hammers = [client(first_cpu), client(second_cpu)];
    // Warm the JIT images and caches.
    round(&mut kernel, &hammers, 10_000, false)?;
    let alone = round(&mut kernel, &hammers, repeat, false)?;
    let together = together_round(&mut kernel, &hammers, repeat)?;
    let one_direction = together_round(&mut kernel, &one_direction_hammers, repeat)?;
    outln!(
        "\ncontention: one connection's record, {repeat} pure ACKs each way, CPU {first_cpu} (XDP) and CPU {second_cpu} (TC egress)"
    );
    outln!(
        "{:<26} {:>10} {:>10} {:>7}",
        "program, frame",
        "alone ns",
        "both ns",
        "ratio"
    );
    for (index, hammer) in hammers.iter().enumerate() {
        let (solo, both) = (
            alone.ns[index] as f64 + 0.5,
            together.ns[index] as f64 + 0.5,
        );
        outln!(
            "{:<26} {solo:>10.1} {both:>10.1} {:>6.2}x",
            hammer.label,
            both / solo
        );
    }
    outln!(
        "{:<26} {:>10} {:>10.1}  (both CPUs at once, one direction: one lane's lock)",
        "client ACK, XDP, twice",
        "",
        one_direction.ns.iter().sum::<u32>() as f64 / one_direction.ns.len().max(1) as f64 + 0.5,
    );
    for (name, result) in [
        ("one CPU at a time", &alone),
        ("both CPUs at once", &together),
        ("both CPUs, one direction", &one_direction),
    ] {
        outln!(
            "{name}: packets {} of {}, client pkts {} of {}, server pkts {} of {}; {} given up on a held slot (lock_contended); lost updates: {} packets, {} pkts; ran alongside for {:.0} % of the shorter run",
            result.packets_counted,
            result.packets_expected,
            result.counted[0],
            result.expected[0],
            result.counted[1],
            result.expected[1],
            result.contended,
            result.lost_packets(),
            result.lost_pkts(),
            100.0 * result.overlap,
        );
    }
    let exact = alone.exact() && together.exact() && one_direction.exact();
    let report = json!({
        "repeat": repeat,
        "cpus": [first_cpu, second_cpu],
        "programs": hammers.iter().map(|hammer| hammer.program).collect::<Vec<_>>(),
        "alone": alone.json(),
        "together": together.json(),
        "one_direction": one_direction.json(),
        "exact": exact,
    });
    Ok((report, exact))
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_run_attr_is_the_kernels_size() {
        // linux/bpf.h: the test-run part of bpf_attr ends at batch_size, 76
        // bytes; padded to 8.
        assert_eq!(size_of::<super::TestRunAttr>(), 80);
    }
}

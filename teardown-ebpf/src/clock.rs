//! The clocks records are stamped with: the host's, live, and a capture's,
//! in replay.

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};

use crate::maps::{CLOCK_OFFSET, NS_PER_TICK, REPLAY_CLOCK, setting};

/// The clocks a program reads: a cheap one for the fast path, and a
/// precise one for everything else (SYNs, FINs, RSTs, the first segment of
/// a connection), so that a record's start and end, and so its duration,
/// are exact.
pub(crate) trait FlowClock {
    /// A capture's clock: the programs that run on it are a replay's,
    /// which track a segment out of line
    /// ([`track_replay_segment`](crate::fast_path::track_replay_segment)).
    const REPLAY: bool = false;
    /// The fast path's clock: the precise clock's time as of the last
    /// kernel tick with the default coarse clock.
    fn coarse(&self) -> u64;
    /// Everything else's: the clock's own reading.
    fn precise(&self) -> u64;
    /// A reading good to a kernel tick, whichever clock records are
    /// stamped with: for a decision that needs no more (which admission
    /// window it is), so that it never costs a precise read.
    fn tick(&self) -> u64;
}

/// The host's clock (CLOCK_MONOTONIC).
pub(crate) struct LiveClock;

impl FlowClock for LiveClock {
    #[inline(always)]
    fn coarse(&self) -> u64 {
        let tick: u64 = setting!(NS_PER_TICK);
        if tick == 0 {
            return self.precise();
        }
        let offset = CLOCK_OFFSET.get(0).copied().unwrap_or(0);
        // SAFETY: a helper without arguments.
        unsafe { bpf_jiffies64() }
            .wrapping_mul(tick)
            .wrapping_add(offset)
    }

    #[inline(always)]
    fn precise(&self) -> u64 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    }

    /// [`LiveClock::coarse`], or with `--clock precise` (no tick set) the
    /// kernel's coarse clock: CLOCK_MONOTONIC as of the last tick, the
    /// precise clock's base, without its read of the hardware counter
    /// (about 25 ns on this project's test machine).
    #[inline(always)]
    fn tick(&self) -> u64 {
        let tick: u64 = setting!(NS_PER_TICK);
        if tick == 0 {
            // SAFETY: a helper without arguments.
            return unsafe { bpf_ktime_get_coarse_ns() };
        }
        self.coarse()
    }
}

/// The capture's clock, set by `teardown replay` before each packet.
pub(crate) struct ReplayClock {
    /// The packet's capture time, read once when the program starts.
    pub(crate) now: u64,
}

impl ReplayClock {
    /// The capture time `teardown replay` passes in the frame's XDP
    /// metadata (8 bytes before the frame, a native-endian u64: one system
    /// call per packet instead of a map update and a test run), else, from
    /// a caller that passes none, [`REPLAY_CLOCK`]'s.
    #[inline(always)]
    pub(crate) fn of(ctx: *mut xdp_md) -> Self {
        ReplayClock {
            now: replay_time(ctx),
        }
    }
}

impl FlowClock for ReplayClock {
    const REPLAY: bool = true;

    #[inline(always)]
    fn coarse(&self) -> u64 {
        self.now
    }

    #[inline(always)]
    fn precise(&self) -> u64 {
        self.coarse()
    }

    #[inline(always)]
    fn tick(&self) -> u64 {
        self.now
    }
}

/// [`ReplayClock::of`]'s reading, out of line: a global function, so the
/// verifier takes its answer as any number and checks the program once
/// after it, where inline its ways to the time (the metadata, the map,
/// none) were states that did not prune one another.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn replay_time(ctx: *mut xdp_md) -> u64 {
    // SAFETY: null-checked; the program's own context.
    let Some(md) = (unsafe { ctx.as_ref() }) else {
        return 0;
    };
    let (meta, data) = (md.data_meta as usize, md.data as usize);
    if meta + 8 <= data {
        // SAFETY: the 8 bytes of metadata, bounds-checked against the
        // frame's start just above.
        unsafe { (meta as *const u64).read_unaligned() }
    } else {
        REPLAY_CLOCK.get(0).copied().unwrap_or(0)
    }
}

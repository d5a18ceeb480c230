//! The clocks records are stamped with: the host's, live, and a capture's,
//! in replay.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_ns};

use crate::maps::{CLOCK_OFFSET, NS_PER_TICK, REPLAY_CLOCK, setting};

/// The clocks a program reads: a cheap one for the fast path, and a
/// precise one for everything else (SYNs, FINs, RSTs, the first segment of
/// a connection), so that a record's start and end, and so its duration,
/// are exact.
pub(crate) trait FlowClock {
    /// The fast path's clock: the precise clock's time as of the last
    /// kernel tick with the default coarse clock.
    fn coarse(&self) -> u64;
    /// Everything else's: the clock's own reading.
    fn precise(&self) -> u64;
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
}

/// The capture's clock, set by `teardown replay` before each packet.
pub(crate) struct ReplayClock;

impl FlowClock for ReplayClock {
    #[inline(always)]
    fn coarse(&self) -> u64 {
        REPLAY_CLOCK.get(0).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn precise(&self) -> u64 {
        self.coarse()
    }
}

//! teardown's XDP program: parses every frame's headers with the shared parser
//! and counts what it saw in a per-CPU array. It never drops: every path
//! returns XDP_PASS.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use teardown_common::{
    counters::{Tallies, tally},
    parse::{MAX_L4_OFFSET, PacketBytes, parse},
};

/// One slot of tallies per CPU: no atomics and no contention.
#[map]
static TALLIES: PerCpuArray<Tallies> = PerCpuArray::with_max_entries(1, 0);

/// The frame as the verifier sees it: `[start, end)` of packet memory.
struct XdpFrame {
    start: usize,
    end: usize,
}

impl PacketBytes for XdpFrame {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        // A bounded offset keeps the pointer arithmetic within the range the
        // verifier tracks for packet pointers.
        if offset > MAX_L4_OFFSET + 64 {
            return None;
        }
        let at = self.start + offset;
        if at + N > self.end {
            return None;
        }
        // SAFETY: [at, at + N) lies inside the packet, checked just above.
        Some(unsafe { (at as *const [u8; N]).read_unaligned() })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.end - self.start
    }
}

#[xdp]
pub fn teardown(ctx: XdpContext) -> u32 {
    let frame = XdpFrame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let counted = tally(&parse(&frame));
    if let Some(tallies) = TALLIES.get_ptr_mut(0) {
        // SAFETY: the per-CPU slot is only touched by this CPU, and only here.
        unsafe { (*tallies).record(&counted) };
    }
    xdp_action::XDP_PASS
}

/// Does nothing but pass: the baseline `teardown bench` compares against.
#[xdp]
pub fn teardown_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

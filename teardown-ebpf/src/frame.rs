//! The frame a program reads, as the shared parser reads it.

use teardown_common::parse::{MAX_L4_OFFSET, PacketBytes};

/// The frame as the verifier sees it: `[start, end)` of packet memory.
pub(crate) struct Frame {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl PacketBytes for Frame {
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

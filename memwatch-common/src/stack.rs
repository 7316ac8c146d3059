//! User stacks, stored once per distinct content under a 64-bit hash.
//!
//! A content hash (instead of the kernel's STACK_TRACE bucket index) makes
//! collisions negligible and lets the daemon drop unused stacks without ever
//! attributing an allocation to the wrong code path.

#[cfg(feature = "user")]
mod user;

/// Frames kept per stack. Deeper stacks are truncated at the outer end.
pub const MAX_STACK_DEPTH: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackFrames {
    /// Return addresses, innermost first (the allocator's direct caller is
    /// frame 0); zero past the last frame.
    pub frames: [u64; MAX_STACK_DEPTH],
}

/// Hashes the frames up to the first zero. Never 0, which means "no stack".
#[inline(always)]
pub fn stack_hash(frames: &[u64; MAX_STACK_DEPTH]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < MAX_STACK_DEPTH {
        let f = frames[i];
        if f == 0 {
            break;
        }
        h = (h ^ f).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 29;
        i += 1;
    }
    h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    if h == 0 { 1 } else { h }
}

//! User stacks, stored once per distinct content under a 64-bit hash.
//!
//! A content hash (instead of the kernel's STACK_TRACE bucket index) makes
//! collisions negligible and lets the daemon drop unused stacks without ever
//! attributing an allocation to the wrong code path.

#[cfg(feature = "user")]
mod user;

use crate::python::{MAX_PY_FRAMES, PyFrame, PyProc};

/// Frames kept per stack. Deeper stacks are truncated at the outer end.
pub const MAX_STACK_DEPTH: usize = 64;

/// Stack ids each CPU remembers as present in `STACKS`.
pub const STACK_CACHE: usize = 16;

/// Bytes of user stack read at once by the walk: most frames are smaller,
/// so one read usually yields several frames. Each read costs ~25 ns, little
/// of it for the bytes (256 measured faster than 128 or 512 with `cargo
/// xtask bench`, for the frame-pointer walk this one replaced).
pub const STACK_WINDOW: usize = 256;
pub const WINDOW_WORDS: usize = STACK_WINDOW / 8;
// The walk bounds a word's index for the verifier with a mask.
const _: () = assert!(WINDOW_WORDS.is_power_of_two());
const PAGE: u64 = 4096;

/// Per-CPU scratch for stack capture, with a small direct-mapped cache of
/// stack ids known to be stored, valid while `epoch` equals the daemon's
/// `Settings::stacks_epoch` (bumped before it deletes unused stacks).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackScratch {
    pub frames: StackFrames,
    pub cache: [u64; STACK_CACHE],
    pub epoch: u32,
    pub _pad: u32,
    /// The slice of user stack last read by the walk, and a spare word: the
    /// verifier bounds a frame's index by a mask, which allows one more.
    pub window: [u64; WINDOW_WORDS + 1],
    /// Where `window` was read from, and how many bytes.
    pub window_base: u64,
    pub window_len: u64,
    /// A walk by call-frame information in progress.
    pub walk: Walk,
    /// A walk of the interpreter's frames in progress: the next frame to
    /// read, the layout to read it by, and the bytes last read (from
    /// `py_base`, `py_len` of them).
    pub py_frame: u64,
    pub py_n: u32,
    pub py_truncated: u32,
    pub py: PyProc,
    pub py_base: u64,
    pub py_len: u64,
    pub py_buf: [u64; PY_WINDOW_WORDS],
}

/// Bytes of an interpreter frame the walk needs: every field it uses lies
/// in the first 128 on 3.10 to 3.13.
pub const PY_FRAME_BYTES: u64 = 128;

/// Bytes of memory read at once by the walk of the interpreter's frames.
/// From 3.11 on, a thread's frames are contiguous in its data stack, each
/// caller just below its callee: one read below a frame usually holds its
/// callers too. Per frame of a 32-deep walk (`cargo xtask bench`, 3.11):
/// 128 bytes (one frame a read) ~100 ns, 256 ~115, 512 ~54, 1024 ~28,
/// 2048 ~32.
pub const PY_WINDOW: u64 = 1024;
pub const PY_WINDOW_WORDS: usize = PY_WINDOW as usize / 8;
const _: () = assert!(PY_WINDOW_WORDS.is_power_of_two());

/// The state of a walk by call-frame information, kept between the steps
/// of the kernel's loop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Walk {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    /// Where `pc` was read from the stack (0 for the first frame).
    pub ra_at: u64,
    /// tgid << 32 | the process's unwind version.
    pub owner: u64,
    pub hash: u64,
    pub tgid: u32,
    /// Nonzero: `pc` is a return address.
    pub ret: u32,
    /// Frames recorded so far.
    pub n: u32,
    /// [`crate::unwind::EndReason`] once the walk is over.
    pub end: u32,
    /// The process's [`crate::unwind::ProcUnwind::fp_ranges`], copied at
    /// the walk's start.
    pub fp_ranges: [[u64; 2]; crate::unwind::FP_RANGES],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackFrames {
    /// Return addresses, innermost first (the allocator's direct caller is
    /// frame 0); zero past the last frame.
    pub frames: [u64; MAX_STACK_DEPTH],
    /// Why the walk stopped: [`crate::unwind::EndReason`], plus
    /// [`END_FRAME_POINTERS`] when it followed frame pointers only, and the
    /// number of Python frames at [`END_PY_SHIFT`].
    pub end: u64,
    /// The innermost Python frames of the thread, innermost first, in a
    /// Python process.
    pub py: [PyFrame; MAX_PY_FRAMES],
}

/// `StackFrames::end`: Python frames recorded, from this bit on (8 bits).
pub const END_PY_SHIFT: u32 = 16;
/// `StackFrames::end` flag: the thread had more Python frames than kept.
pub const END_PY_TRUNCATED: u64 = 1 << 24;

/// `StackFrames::end` flag: walked by frame pointers alone (the process has
/// no unwind tables loaded).
pub const END_FRAME_POINTERS: u64 = 1 << 8;

/// How many bytes to read at `addr` (8-byte aligned) for a walk by
/// call-frame information: up to a window, not past the page.
#[inline(always)]
pub const fn window_len_at(addr: u64) -> u64 {
    let room = PAGE - (addr & (PAGE - 1));
    if room < STACK_WINDOW as u64 {
        room
    } else {
        STACK_WINDOW as u64
    }
}

/// A stack's content hash, fed one frame at a time (the eBPF side hashes
/// while it walks).
#[derive(Clone, Copy)]
pub struct StackHasher(u64);

impl StackHasher {
    #[inline(always)]
    pub const fn new() -> Self {
        StackHasher(0xcbf2_9ce4_8422_2325)
    }

    #[inline(always)]
    pub fn push(&mut self, frame: u64) {
        let h = (self.0 ^ frame).wrapping_mul(0x0000_0100_0000_01b3);
        self.0 = h ^ (h >> 29);
    }

    /// The state, to resume hashing later (`StackHasher(state)`).
    #[inline(always)]
    pub const fn state(self) -> u64 {
        self.0
    }

    #[inline(always)]
    pub const fn resume(state: u64) -> Self {
        StackHasher(state)
    }

    /// Never 0, which means "no stack".
    #[inline(always)]
    pub fn finish(self) -> u64 {
        let mut h = (self.0 ^ (self.0 >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        if h == 0 { 1 } else { h }
    }
}

impl Default for StackHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Hashes the frames up to the first zero, then how the walk ended (a stack
/// cut short is not the same stack as a complete one). Never 0, which means
/// "no stack".
#[inline(always)]
pub fn stack_hash(stack: &StackFrames) -> u64 {
    let mut h = StackHasher::new();
    let mut i = 0;
    while i < MAX_STACK_DEPTH {
        let f = stack.frames[i];
        if f == 0 {
            break;
        }
        h.push(f);
        i += 1;
    }
    let n = ((stack.end >> END_PY_SHIFT) & 0xff) as usize;
    let mut j = 0;
    while j < n && j < MAX_PY_FRAMES {
        h.push(stack.py[j].code);
        h.push(stack.py[j].instr);
        j += 1;
    }
    h.push(stack.end);
    h.finish()
}

//! CPython seen from outside: where a thread's interpreter frames are, per
//! version, so that the kernel side records the Python frames of every
//! stack it captures in a Python process, and the daemon names them.
//!
//! The kernel records, per Python frame, the code object and the
//! instruction pointer (or, on 3.10, the instruction index); the daemon
//! reads qualified name, file and line from the code object.

#[cfg(feature = "user")]
mod user;

/// Python frames kept per stack (the innermost ones).
pub const MAX_PY_FRAMES: usize = 32;

/// `PyFrame::instr` bit: this frame is the outermost of its evaluation loop
/// call (one `_PyEval_EvalFrameDefault` frame on the native stack).
pub const PY_ENTRY: u64 = 1 << 63;

/// One Python frame as the kernel records it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PyFrame {
    /// The code object.
    pub code: u64,
    /// The instruction pointer into the code object (3.11+) or the
    /// instruction index (3.10), with [`PY_ENTRY`].
    pub instr: u64,
}

/// How a version lays its frames out.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameLayout {
    /// 3.10: `PyFrameObject`s; every frame is its own evaluation call.
    Objects = 0,
    /// 3.11: `_PyInterpreterFrame`s with an `is_entry` flag.
    EntryFlag = 1,
    /// 3.12+: `_PyInterpreterFrame`s; a frame owned by the C stack (a shim
    /// pushed by each evaluation call) marks the frame above it as an entry.
    Shims = 2,
}

/// Where the current thread's frames are in one Python process, written by
/// the daemon when it finds CPython there. Offsets are in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProc {
    /// Nonzero when the rest is valid.
    pub enabled: u32,
    /// [`FrameLayout`].
    pub layout: u32,
    /// Address of the `Py_tss_t` key's value (`_PyRuntime` + autoTSSkey +
    /// 4): the pthread key under which each thread keeps its thread state.
    pub tss_key_addr: u64,
    /// In the thread state: the current frame, or the `_PyCFrame` pointer
    /// when `cframe_frame` is not [`NO_OFFSET`].
    pub tstate_frame: u32,
    /// In `_PyCFrame` (3.11, 3.12): the current frame.
    pub cframe_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    /// `owner` (3.12+) or `is_entry` (3.11): one byte; [`NO_OFFSET`] if none.
    pub frame_flag: u32,
}

/// An offset a version does not have.
pub const NO_OFFSET: u32 = u32::MAX;

/// `owner` of a frame the C stack owns (3.12+): a shim, not Python code.
pub const OWNED_BY_CSTACK: u8 = 3;

/// glibc x86-64: thread-specific data of key k (< 32) is at fsbase +
/// [`PTHREAD_SPECIFIC`] + 16·k + 8 (`struct pthread`'s `specific_1stblock`
/// of {seq, data} pairs); keys from 32 on go through the second-level
/// array at fsbase + [`PTHREAD_SPECIFIC_2ND`] + 8·(k / 32).
pub const PTHREAD_SPECIFIC: u64 = 0x310;
pub const PTHREAD_SPECIFIC_2ND: u64 = 0x510;

/// Where thread-specific data of `key` is, for the thread whose fsbase is
/// `fs`: an address to read, or (for keys past the first block) the address
/// of the second-level block pointer and the offset in that block.
#[inline(always)]
pub const fn tsd_slot(fs: u64, key: u32) -> TsdSlot {
    if key < 32 {
        TsdSlot::Direct(fs + PTHREAD_SPECIFIC + 16 * key as u64 + 8)
    } else {
        TsdSlot::Indirect {
            block: fs + PTHREAD_SPECIFIC_2ND + 8 * (key as u64 / 32),
            offset: 16 * (key as u64 % 32) + 8,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsdSlot {
    Direct(u64),
    Indirect { block: u64, offset: u64 },
}

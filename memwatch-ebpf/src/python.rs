//! The current thread's Python frames, in a process running CPython (see
//! `memwatch_common::python`): its thread state through the pthread key
//! CPython keeps it under (valid whether or not the thread holds the GIL),
//! then one read of each interpreter frame, one frame per iteration of
//! `bpf_loop`.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_probe_read_kernel, bpf_probe_read_user,
    generated::{self, bpf_get_current_task},
};
use memwatch_common::{
    python::{FrameLayout, MAX_PY_FRAMES, NO_OFFSET, OWNED_BY_CSTACK, PY_ENTRY, PyFrame, PyProc, TsdSlot, tsd_slot},
    stack::{PY_FRAME_BYTES, PY_WINDOW, PY_WINDOW_WORDS, StackScratch},
};

use crate::{
    bpf_loop::loop_result,
    maps::{PROBES, SYSCALLS, scratch},
    unwind::KERNEL_OFFSETS,
};

#[inline(always)]
fn user(addr: u64) -> Option<u64> {
    // SAFETY: the helper checks the user address.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

/// The current thread's `PyThreadState`, or None (a thread that never ran
/// Python, or a layout that does not hold).
#[inline(always)]
fn thread_state(py: &PyProc) -> Option<u64> {
    let off = KERNEL_OFFSETS.load();
    if off.task_fsbase == 0 {
        return None;
    }
    // SAFETY: a helper without arguments, then a checked kernel read.
    let task = unsafe { bpf_get_current_task() };
    let fs = unsafe { bpf_probe_read_kernel((task + off.task_fsbase as u64) as *const u64) }.ok()?;
    // SAFETY: the helper checks the user address.
    let key = unsafe { bpf_probe_read_user(py.tss_key_addr as *const u32) }.ok()?;
    let tstate = match tsd_slot(fs, key) {
        TsdSlot::Direct(at) => user(at)?,
        TsdSlot::Indirect { block, offset } => user(user(block)?.checked_add(offset)?)?,
    };
    (tstate != 0).then_some(tstate)
}

/// Starts recording the thread's Python frames into `scratch` (this CPU's
/// scratch `which`) and runs the walk, a frame per iteration of
/// `bpf_loop`. Returns the frames recorded and whether more were left.
#[inline(always)]
pub fn walk(scratch: *mut StackScratch, which: u64, py: &PyProc) -> (u32, bool) {
    // SAFETY: this CPU's map value.
    let s = unsafe { &mut *scratch };
    s.py_n = 0;
    s.py_truncated = 0;
    let Some(tstate) = thread_state(py) else {
        return (0, false);
    };
    let Some(mut frame) = user(tstate.wrapping_add(py.tstate_frame as u64)) else {
        return (0, false);
    };
    if py.cframe_frame != NO_OFFSET && frame != 0 {
        match user(frame.wrapping_add(py.cframe_frame as u64)) {
            Some(f) => frame = f,
            None => return (0, false),
        }
    }
    s.py_frame = frame;
    s.py = *py;
    s.py_len = 0;
    let callback: extern "C" fn(u64, *mut c_void) -> i64 = if which & 1 == PROBES {
        probes_python_step
    } else {
        syscalls_python_step
    };
    // SAFETY: the callback is a static function of this program; no context.
    unsafe {
        generated::bpf_loop(
            // Shims (3.12+) take iterations of their own.
            2 * MAX_PY_FRAMES as u32,
            callback as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    (s.py_n, s.py_truncated != 0)
}

/// The byte at `offset` of the window (the frame's own offset added).
#[inline(always)]
fn byte(buf: &[u64; PY_WINDOW_WORDS], offset: u64) -> u8 {
    (buf[(offset as usize / 8) & (PY_WINDOW_WORDS - 1)] >> ((offset % 8) * 8)) as u8
}

#[inline(always)]
fn word(buf: &[u64; PY_WINDOW_WORDS], offset: u64) -> u64 {
    buf[(offset as usize / 8) & (PY_WINDOW_WORDS - 1)]
}

/// Where `frame` starts in the window, reading a new window when the last
/// one does not hold its first [`PY_FRAME_BYTES`]: the frame at its top,
/// as much as fits below it without leaving the frame's page (the page
/// below may be unmapped). 3.10's frames are separate heap objects: only
/// the frame is read.
#[inline(always)]
fn window_at(s: &mut StackScratch, frame: u64) -> Option<u64> {
    let end = frame.checked_add(PY_FRAME_BYTES)?;
    if frame >= s.py_base && end <= s.py_base + s.py_len {
        return Some(frame - s.py_base);
    }
    let base = if s.py.layout == FrameLayout::Objects as u32 {
        frame
    } else {
        end.saturating_sub(PY_WINDOW).max(frame & !0xfff)
    };
    // 1 to the window's size, for the verifier.
    let len = ((end - base).wrapping_sub(1) & (PY_WINDOW - 1)) + 1;
    // SAFETY: the helper checks the user address and writes at most the buffer.
    let rc = unsafe { generated::bpf_probe_read_user(s.py_buf.as_mut_ptr().cast(), len as u32, base as *const c_void) };
    if rc != 0 {
        s.py_len = 0;
        return None;
    }
    s.py_base = base;
    s.py_len = len;
    Some(frame - base)
}

/// `bpf_loop` callbacks: one per scratch, each one frame of the
/// interpreter's walk.
pub extern "C" fn probes_python_step(_index: u64, _ctx: *mut c_void) -> i64 {
    loop_result(memwatch_py_step(PROBES))
}

pub extern "C" fn syscalls_python_step(_index: u64, _ctx: *mut c_void) -> i64 {
    loop_result(memwatch_py_step(SYSCALLS))
}

/// One interpreter frame of the walk in this CPU's scratch `which`.
/// Returns 1 when it is over. A global function (see `crate::stack`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn memwatch_py_step(which: u64) -> i64 {
    match scratch(which) {
        Some(s) => step(s),
        None => 1,
    }
}

#[inline(always)]
fn step(scratch: *mut StackScratch) -> i64 {
    // SAFETY: this CPU's map value.
    let s = unsafe { &mut *scratch };
    let frame = s.py_frame;
    if frame == 0 {
        return 1;
    }
    let n = s.py_n as usize;
    if n >= MAX_PY_FRAMES {
        s.py_truncated = 1;
        return 1;
    }
    let Some(at) = window_at(s, frame) else {
        return 1;
    };
    let py = s.py;
    let field = |off: u32| at + u64::from(off);
    s.py_frame = word(&s.py_buf, field(py.frame_previous));
    let flag = if py.frame_flag == NO_OFFSET {
        0
    } else {
        byte(&s.py_buf, field(py.frame_flag))
    };
    let entry = match py.layout {
        l if l == FrameLayout::Shims as u32 => {
            if flag == OWNED_BY_CSTACK {
                // A shim: the frame recorded before it began its evaluation call.
                if n > 0 {
                    s.frames.py[(n - 1) & (MAX_PY_FRAMES - 1)].instr |= PY_ENTRY;
                }
                return 0;
            }
            false
        }
        l if l == FrameLayout::EntryFlag as u32 => flag != 0,
        _ => true,
    };
    let instr = if py.layout == FrameLayout::Objects as u32 {
        // f_lasti, an int.
        word(&s.py_buf, field(py.frame_instr)) & 0xffff_ffff
    } else {
        word(&s.py_buf, field(py.frame_instr))
    };
    s.frames.py[n & (MAX_PY_FRAMES - 1)] = PyFrame {
        code: word(&s.py_buf, field(py.frame_code)),
        instr: instr | if entry { PY_ENTRY } else { 0 },
    };
    s.py_n += 1;
    0
}

//! User stack capture, by call-frame information where the daemon has
//! loaded the process's unwind tables and by frame pointers elsewhere;
//! stacks are stored once per content hash.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, pt_regs},
    helpers::generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    programs::RetProbeContext,
};
use memwatch_common::{
    drop::Drop,
    python::MAX_PY_FRAMES,
    stack::{
        END_FRAME_POINTERS, END_PY_SHIFT, END_PY_TRUNCATED, MAX_STACK_DEPTH, STACK_CACHE, StackHasher, StackScratch,
    },
    unwind::{ProcUnwind, Regs},
};

use crate::{
    maps::{EEXIST, GROWTH_SCRATCH, STACK_SCRATCH, STACKS, settings},
    python, unwind,
};

/// Captures the user stack of tracked process `tgid` at an allocator's
/// return and returns its id.
///
/// The kernel has restored the instruction pointer to the return address:
/// frame 0 is the allocator's direct caller, and the registers are the
/// caller's.
#[inline(always)]
pub fn capture(ctx: &RetProbeContext, tgid: u32) -> Result<u64, Drop> {
    let scratch = STACK_SCRATCH.get_ptr_mut(0).ok_or(Drop::StackCaptureFailed)?;
    let r = unsafe { &*ctx.regs };
    let regs = Regs {
        pc: r.rip,
        sp: r.rsp,
        bp: r.rbp,
        ret: true,
    };
    let end = walk(scratch, tgid, regs, alloc_walk_step, alloc_python_step)?;
    store(scratch, end, true)
}

/// Walks the native stack from `regs`, by CFI where the process has unwind
/// tables (else, owner 0, the same walk follows frame pointers), then its
/// Python frames; returns the end word for [`store`].
#[inline(always)]
fn walk(
    scratch: *mut StackScratch,
    tgid: u32,
    regs: Regs,
    native: extern "C" fn(u64, *mut c_void) -> i64,
    python: extern "C" fn(u64, *mut c_void) -> i64,
) -> Result<u64, Drop> {
    let proc = unwind::process(tgid);
    let owner = unwind::owner(tgid, proc);
    unwind::walk(scratch, owner.unwrap_or(0), regs, native).map_err(|_| Drop::StackCaptureFailed)?;
    // SAFETY: this CPU's map value.
    let end = unsafe { (*scratch).walk.end as u64 };
    let end = if owner.is_some() { end } else { end | END_FRAME_POINTERS };
    Ok(end | python_frames(scratch, proc, python))
}

/// Records the thread's Python frames after the native ones, in a process
/// running CPython; returns their count and flag for `StackFrames::end`.
#[inline(always)]
fn python_frames(
    scratch: *mut StackScratch,
    proc: Option<*const ProcUnwind>,
    callback: extern "C" fn(u64, *mut c_void) -> i64,
) -> u64 {
    let Some(p) = proc else { return 0 };
    // SAFETY: a map value; the flag first, the layout copied out only for
    // a Python process.
    if unsafe { (*p).py.enabled } == 0 {
        return 0;
    }
    let py = unsafe { (*p).py };
    let (n, truncated) = python::walk(scratch, &py, callback);
    ((n as u64) << END_PY_SHIFT) | if truncated { END_PY_TRUNCATED } else { 0 }
}

/// bpf_loop's callbacks for the Python frames, at the probes and at the
/// syscall tracepoints.
extern "C" fn alloc_python_step(_index: u64, _ctx: *mut c_void) -> i64 {
    match STACK_SCRATCH.get_ptr_mut(0) {
        Some(s) => python::step(s),
        None => 1,
    }
}

extern "C" fn growth_python_step(_index: u64, _ctx: *mut c_void) -> i64 {
    match GROWTH_SCRATCH.get_ptr_mut(0) {
        Some(s) => python::step(s),
        None => 1,
    }
}

/// bpf_loop's callback for walks at the allocator probes.
extern "C" fn alloc_walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    match STACK_SCRATCH.get_ptr_mut(0) {
        Some(s) => unwind::walk_step(s),
        None => 1,
    }
}

/// bpf_loop's callback for walks at the syscall tracepoints, with their own
/// scratch (a syscall may preempt a probe's program on this CPU).
extern "C" fn growth_walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    match GROWTH_SCRATCH.get_ptr_mut(0) {
        Some(s) => unwind::walk_step(s),
        None => 1,
    }
}

/// Ends the stack walked into `scratch` with `end`, stores it in STACKS
/// unless known, and returns its id. With `cached`, this CPU's memory of
/// stored ids is used (the allocator probes' scratch only).
#[inline(always)]
fn store(scratch: *mut StackScratch, end: u64, cached: bool) -> Result<u64, Drop> {
    // SAFETY: this CPU's map value.
    let s = unsafe { &mut *scratch };
    let n = s.walk.n as usize;
    if n < MAX_STACK_DEPTH {
        s.frames.frames[n] = 0;
    }
    s.frames.end = end;
    let mut hash = StackHasher::resume(s.walk.hash);
    let py = ((end >> END_PY_SHIFT) & 0xff) as usize;
    for j in 0..MAX_PY_FRAMES {
        if j >= py {
            break;
        }
        hash.push(s.frames.py[j].code);
        hash.push(s.frames.py[j].instr);
    }
    hash.push(end);
    let id = hash.finish();

    // Most allocations come from a few stacks: skip the map lookup for one
    // this CPU stored recently, unless the daemon has deleted stacks since.
    let way = (id as usize) & (STACK_CACHE - 1);
    if cached {
        let current = settings().stacks_epoch;
        if s.epoch != current {
            s.cache = [0; STACK_CACHE];
            s.epoch = current;
        }
        if s.cache[way] == id {
            return Ok(id);
        }
    }
    if STACKS.get_ptr(id).is_none() {
        // By reference: a copy would take the whole 512-byte BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        match STACKS.insert(id, &s.frames, BPF_NOEXIST as u64) {
            Ok(()) | Err(EEXIST) => {}
            Err(_) => return Err(Drop::StacksMapFull),
        }
    }
    if cached {
        s.cache[way] = id;
    }
    Ok(id)
}

/// Captures the user stack of the current task from a syscall tracepoint,
/// starting from the registers it entered the kernel with. Syscalls are
/// rare next to allocator calls, so no cache of stored ids here.
pub fn capture_current(tgid: u32) -> Result<u64, Drop> {
    let scratch = GROWTH_SCRATCH.get_ptr_mut(0).ok_or(Drop::StackCaptureFailed)?;
    // SAFETY: helpers on the current task; the user registers are copied
    // out of the kernel by the checked read.
    let r: pt_regs = unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        aya_ebpf::helpers::bpf_probe_read_kernel(regs).map_err(|_| Drop::StackCaptureFailed)?
    };
    // The pc is where the syscall returns to: an instruction, not a return
    // address.
    let regs = Regs {
        pc: r.rip,
        sp: r.rsp,
        bp: r.rbp,
        ret: false,
    };
    let end = walk(scratch, tgid, regs, growth_walk_step, growth_python_step)?;
    store(scratch, end, false)
}

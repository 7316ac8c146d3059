//! User stack capture, by call-frame information where the daemon has
//! loaded the process's unwind tables and by frame pointers elsewhere;
//! stacks are stored once per content hash.
//!
//! The walk is a chain of global functions (`memwatch_*`, `#[no_mangle]`,
//! never inlined): the kernel verifies each once, on its own, with its
//! arguments unknown, instead of once per path of its caller. What the
//! verifier spends on a stack walk is then bounded by the walk's code, not
//! by how the compiler happened to lay out the programs that call it.

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
    maps::{EEXIST, PROBES, STACKS, SYSCALLS, count_drop, scratch, settings},
    python, unwind,
};

/// Captures the user stack of tracked process `tgid` at an allocator's
/// return and returns its id, 0 when it could not be stored (counted).
///
/// The kernel has restored the instruction pointer to the return address:
/// frame 0 is the allocator's direct caller, and the registers are the
/// caller's.
#[inline(always)]
pub fn capture(ctx: &RetProbeContext, tgid: u32) -> u64 {
    let r = unsafe { &*ctx.regs };
    memwatch_capture(PROBES, tgid as u64, r.rip, r.rsp, r.rbp)
}

/// Captures the user stack of the current task from a syscall tracepoint,
/// starting from the registers it entered the kernel with; 0 when it could
/// not be stored (counted).
#[inline(always)]
pub fn capture_current(tgid: u32) -> u64 {
    // SAFETY: helpers on the current task; each user register is copied
    // out of the kernel by a checked read, one word at a time: the whole
    // pt_regs (168 bytes) on this program's stack would leave too little of
    // the 512 bytes the kernel allows a chain of calls (6.1 refuses 544).
    let r = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        let read = |field: *const u64| aya_ebpf::helpers::bpf_probe_read_kernel(field);
        (
            read(&raw const (*regs).rip),
            read(&raw const (*regs).rsp),
            read(&raw const (*regs).rbp),
        )
    };
    match r {
        (Ok(pc), Ok(sp), Ok(bp)) => memwatch_capture(SYSCALLS, tgid as u64, pc, sp, bp),
        _ => {
            count_drop(Drop::StackCaptureFailed);
            0
        }
    }
}

/// Walks and stores the stack of `tgid` from the registers given, with
/// scratch `which`: [`PROBES`] at an allocator's return (the pc is a return
/// address, and this CPU's memory of stored ids is used), [`SYSCALLS`] at a
/// syscall (the pc is where it returns to: an instruction). Returns the
/// stack's id, or 0 after counting why there is none.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn memwatch_capture(which: u64, tgid: u64, pc: u64, sp: u64, bp: u64) -> u64 {
    let probes = which & 1 == PROBES;
    let regs = Regs {
        pc,
        sp,
        bp,
        ret: probes,
    };
    let result = scratch(which).ok_or(Drop::StackCaptureFailed).and_then(|s| {
        let end = walk(s, which, tgid as u32, regs)?;
        store(s, end, probes)
    });
    result.unwrap_or_else(|reason| {
        count_drop(reason);
        0
    })
}

/// Walks the native stack from `regs`, by CFI where the process has unwind
/// tables (else, owner 0, the same walk follows frame pointers), then its
/// Python frames; returns the end word for [`store`].
#[inline(always)]
fn walk(scratch: *mut StackScratch, which: u64, tgid: u32, regs: Regs) -> Result<u64, Drop> {
    let proc = unwind::process(tgid);
    let owner = unwind::owner(tgid, proc);
    unwind::walk(scratch, which, proc, owner.unwrap_or(0), regs).map_err(|_| Drop::StackCaptureFailed)?;
    // SAFETY: this CPU's map value.
    let end = unsafe { (*scratch).walk.end as u64 };
    let end = if owner.is_some() { end } else { end | END_FRAME_POINTERS };
    Ok(end | python_frames(scratch, which, proc))
}

/// Records the thread's Python frames after the native ones, in a process
/// running CPython; returns their count and flag for `StackFrames::end`.
#[inline(always)]
fn python_frames(scratch: *mut StackScratch, which: u64, proc: Option<*const ProcUnwind>) -> u64 {
    let Some(p) = proc else { return 0 };
    // SAFETY: a map value; the flag first, the layout copied out only for
    // a Python process.
    if unsafe { (*p).py.enabled } == 0 {
        return 0;
    }
    let py = unsafe { (*p).py };
    let (n, truncated) = python::walk(scratch, which, &py);
    ((n as u64) << END_PY_SHIFT) | if truncated { END_PY_TRUNCATED } else { 0 }
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

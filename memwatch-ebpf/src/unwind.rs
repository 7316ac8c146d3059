//! Walking a user stack by call-frame information (see
//! `memwatch_common::unwind`): one frame per iteration of `bpf_loop`, so
//! that the verifier checks a frame once rather than 64 times.
//!
//! Per frame: code of an object built to keep frame pointers steps by
//! them; for the rest, the rule for the return address comes from this
//! CPU's rule cache, or else from the process's mappings and the object's
//! rows (two binary searches, in the global function `memwatch_lookup`),
//! and is cached; [`step`] applies it, reading the user stack through a
//! window that usually holds several frames.

use core::{
    ffi::c_void,
    sync::atomic::{Ordering, compiler_fence},
};

use aya_ebpf::{
    Global,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{self, bpf_get_current_task},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use memwatch_common::{
    event::EventKind,
    maps::{DEFAULT_UNWIND_PROCS, DEFAULT_UNWIND_ROWS},
    search::at_or_below,
    stack::{MAX_STACK_DEPTH, StackHasher, StackScratch, WINDOW_WORDS, window_len_at},
    unwind::{
        EndReason, ExecMapping, FP_RANGES, KernelOffsets, MAX_MAPPINGS, MAX_RETURN_INSTANCES, MappingKind, Method,
        ProcUnwind, RBP_SAME, RULE_CACHE_ENTRIES, Regs, RuleCache, RuleKind, STAT_CFI_FRAMES, STAT_RULE_MISSES,
        STATS_LEN, Step, UnwindRow, cache_index, stat_index, step,
    },
};

use crate::{
    bpf_loop::loop_result,
    maps::{PROBES, SYSCALLS, add, scratch},
};

#[map(name = "UNWIND_ROWS")]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(DEFAULT_UNWIND_ROWS, BPF_F_MMAPABLE);

#[map(name = "UNWIND_PROCS")]
pub static UNWIND_PROCS: HashMap<u32, ProcUnwind> = HashMap::with_max_entries(DEFAULT_UNWIND_PROCS, BPF_F_NO_PREALLOC);

#[map(name = "RULE_CACHE")]
static RULE_CACHE: PerCpuArray<RuleCache> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "UNWIND_STATS")]
static UNWIND_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// Set by the daemon at load, from the kernel's BTF.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    task_utask: 0,
    utask_return_instances: 0,
    ri_stack: 0,
    ri_orig_ret_vaddr: 0,
    ri_next: 0,
    task_fsbase: 0,
});

const FRAME_POINTER: UnwindRow = UnwindRow {
    pc: 0,
    kind: RuleKind::FramePointer as u8,
    rbp: RBP_SAME,
    cfa: 0,
};

#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = UNWIND_STATS.get_ptr_mut(index) {
        add(c, 1);
    }
}

/// Set by the daemon at load: 0 when `[unwind] enabled = false`, so that
/// the frame-pointer path skips the map lookup (the verifier sees the
/// constant and drops the branch).
#[unsafe(no_mangle)]
static UNWIND_ENABLED: Global<u8> = Global::new(1);

/// The process's entry, when the daemon has read its mappings.
#[inline(always)]
pub fn process(tgid: u32) -> Option<*const ProcUnwind> {
    if UNWIND_ENABLED.load() == 0 {
        return None;
    }
    UNWIND_PROCS.get_ptr(tgid)
}

/// tgid << 32 | version when the process's stacks are walked by CFI: its
/// mappings are known and not being replaced.
#[inline(always)]
pub fn owner(tgid: u32, p: Option<*const ProcUnwind>) -> Option<u64> {
    let p = p?;
    // SAFETY: a map value; `version` is one aligned word.
    let version = unsafe { core::ptr::read_volatile(&raw const (*p).version) };
    (version != 0).then_some(((tgid as u64) << 32) | version as u64)
}

/// Starts a walk at `regs` in `scratch` (this CPU's scratch `which`) and
/// runs it, a frame per iteration of `bpf_loop`. With `owner` 0 (no tables
/// for the process) every frame follows its frame pointer.
#[inline(always)]
pub fn walk(
    scratch: *mut StackScratch,
    which: u64,
    proc: Option<*const ProcUnwind>,
    owner: u64,
    regs: Regs,
) -> Result<(), ()> {
    // SAFETY: this CPU's map value.
    let s = unsafe { &mut *scratch };
    s.walk.fp_ranges = match proc {
        // SAFETY: a map value, copied.
        Some(p) if owner != 0 => unsafe { (*p).fp_ranges },
        _ => [[0; 2]; FP_RANGES],
    };
    s.walk.pc = regs.pc;
    s.walk.sp = regs.sp;
    s.walk.bp = regs.bp;
    s.walk.ret = regs.ret as u32;
    s.walk.ra_at = 0;
    s.walk.owner = owner;
    s.walk.tgid = (owner >> 32) as u32;
    s.walk.n = 0;
    s.walk.end = EndReason::DepthLimit as u32;
    s.walk.hash = StackHasher::new().state();
    s.window_base = u64::MAX;
    s.window_len = 0;
    let callback: extern "C" fn(u64, *mut c_void) -> i64 = if which & 1 == PROBES {
        probes_walk_step
    } else {
        syscalls_walk_step
    };
    // SAFETY: the callback is a static function of this program; no context.
    let rc = unsafe {
        generated::bpf_loop(
            // A few more steps than the frames kept: a trampoline takes a
            // step of its own.
            (MAX_STACK_DEPTH as u32 + 8).div_ceil(STEPS_PER_ITERATION),
            callback as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if rc < 0 {
        return Err(());
    }
    let end = EndReason::from_u64(s.walk.end as u64).unwrap_or(EndReason::DepthLimit);
    let method = if owner == 0 { Method::FramePointers } else { Method::Cfi };
    count(stat_index(method, end));
    if owner != 0 {
        // Frames walked, once per walk rather than once per frame: with
        // the misses, the cache's miss rate.
        if let Some(c) = UNWIND_STATS.get_ptr_mut(STAT_CFI_FRAMES) {
            add(c, s.walk.n as u64);
        }
    }
    if end == EndReason::UnknownMapping && owner != 0 {
        ask_refresh(s.walk.tgid);
    }
    Ok(())
}

/// Asks the daemon, once until it answers, to read the process's mappings
/// again: its code reached a mapping the kernel was not told about.
#[inline(always)]
fn ask_refresh(tgid: u32) {
    let Some(p) = UNWIND_PROCS.get_ptr_mut(tgid) else {
        return;
    };
    // SAFETY: a map value; one aligned word.
    let asked = unsafe { &mut (*p).refresh_asked };
    if *asked == 0 {
        *asked = 1;
        if crate::maps::send(EventKind::CodeMapped, tgid, 0, 0).is_err() {
            crate::maps::count_drop(memwatch_common::drop::Drop::EventsFull);
        }
    }
}

/// What the rule lookup found for a pc, in one word (a global function
/// returns one scalar): the rule's bits, and above them which answer it is.
/// A struct over the word rather than an enum with a payload: every answer
/// carries a rule (frame pointers where there is no table), so no path
/// reads a register the compiler left unset on another, which the verifier
/// would refuse.
#[derive(Clone, Copy)]
struct Found(u64);

impl Found {
    /// A rule from the tables, or frame pointers for code known to have none.
    const ROW: u64 = 0;
    /// A rule not to cache: the process's mappings changed since the walk
    /// began.
    const UNCACHED: u64 = 1;
    /// The `[uprobes]` page: a pending return probe's trampoline.
    const TRAMPOLINE: u64 = 2;
    /// A pc in no mapping the kernel was told about.
    const UNKNOWN: u64 = 3;

    #[inline(always)]
    const fn new(what: u64, rule: UnwindRow) -> Found {
        Found(what << 32 | rule.rule_bits())
    }

    #[inline(always)]
    const fn what(self) -> u64 {
        (self.0 >> 32) & 3
    }

    #[inline(always)]
    const fn rule(self) -> UnwindRow {
        UnwindRow::from_rule_bits(self.0)
    }

    /// Code memwatch has no table for (JIT code, or a library loaded
    /// since), walked by its frame pointer, the best guess.
    #[inline(always)]
    const fn unknown(self) -> bool {
        self.what() >= Found::TRAMPOLINE
    }
}

/// Steps of the walk per iteration of the kernel's loop: an iteration costs
/// a callback, a call into [`memwatch_walk_step`] and a scratch lookup of
/// its own. Measured side by side (`cargo xtask bench`, depth 16 without
/// frame pointers, `alloc_exit` per hit): 863–866 ns with 1 step, 591–627
/// with 4, 536–586 with 8. The steps are unrolled and verified once, in the
/// global function: `alloc_exit` 19,080 instructions with 1, 34,852 with
/// 4, 60,990 with 8 on 6.18.
const STEPS_PER_ITERATION: u32 = 8;

/// `bpf_loop` callbacks: one per scratch, each one frame of a walk.
pub extern "C" fn probes_walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    loop_result(memwatch_walk_step(PROBES))
}

pub extern "C" fn syscalls_walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    loop_result(memwatch_walk_step(SYSCALLS))
}

/// [`STEPS_PER_ITERATION`] frames of the walk in this CPU's scratch `which`:
/// each records the frame at the walk's pc and steps to its caller.
/// Returns 1 when the walk is over. A global function (see `crate::stack`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn memwatch_walk_step(which: u64) -> i64 {
    let Some(s) = scratch(which) else { return 1 };
    for _ in 0..STEPS_PER_ITERATION {
        if walk_step(s) != 0 {
            return 1;
        }
    }
    0
}

#[inline(always)]
fn walk_step(scratch: *mut StackScratch) -> i64 {
    // SAFETY: this CPU's map value.
    let s = unsafe { &mut *scratch };
    let n = s.walk.n as usize;
    if n >= MAX_STACK_DEPTH {
        s.walk.end = EndReason::DepthLimit as u32;
        return 1;
    }
    let regs = Regs {
        pc: s.walk.pc,
        sp: s.walk.sp,
        bp: s.walk.bp,
        ret: s.walk.ret != 0,
    };
    let pc = regs.lookup_pc();
    let found = if keeps_frame_pointers(&s.walk.fp_ranges, pc) {
        Found::new(Found::ROW, FRAME_POINTER)
    } else {
        rule_for(s.walk.owner, pc)
    };
    if found.unknown() && s.walk.ra_at != 0 {
        // A return probe pending on the caller put its trampoline here:
        // take the original, and look again at the next iteration (one
        // lookup in the loop's body keeps the verifier's work small).
        match memwatch_original_return(s.walk.ra_at) {
            0 if found.what() == Found::TRAMPOLINE => {
                s.walk.end = EndReason::Trampoline as u32;
                return 1;
            }
            0 => {}
            pc => {
                s.walk.pc = pc;
                s.walk.ra_at = 0;
                return 0;
            }
        }
    }
    s.frames.frames[n & (MAX_STACK_DEPTH - 1)] = regs.pc;
    let mut h = StackHasher::resume(s.walk.hash);
    h.push(regs.pc);
    s.walk.hash = h.state();
    s.walk.n += 1;

    let (row, unknown) = (found.rule(), found.unknown());
    let window = &mut s.window;
    let (base, len) = (&mut s.window_base, &mut s.window_len);
    match step(row, &regs, |addr| read_word(window, base, len, addr)) {
        Step::Caller { regs: next, ra_at } => {
            s.walk.pc = next.pc;
            s.walk.sp = next.sp;
            s.walk.bp = next.bp;
            s.walk.ret = next.ret as u32;
            s.walk.ra_at = ra_at;
            0
        }
        Step::End(reason) => {
            s.walk.end = if unknown && reason != EndReason::Complete {
                EndReason::UnknownMapping as u32
            } else {
                reason as u32
            };
            1
        }
    }
}

/// A word of the user stack, through the window.
#[inline(always)]
fn read_word(window: &mut [u64; WINDOW_WORDS + 1], base: &mut u64, len: &mut u64, addr: u64) -> Option<u64> {
    if addr & 7 != 0 {
        // SAFETY: the helper checks the user address.
        return unsafe { bpf_probe_read_user(addr as *const u64) }.ok();
    }
    if addr < *base || addr - *base + 8 > *len {
        // Start a little below: the next reads are a saved register or two
        // under the return address, then the frames above.
        let page = addr & !4095;
        let start = if addr - page >= 64 { addr - 64 } else { page };
        let want = window_len_at(start);
        // Never taken; the verifier needs the bound on the size.
        if want > (WINDOW_WORDS * 8) as u64 || want < 8 {
            return None;
        }
        // SAFETY: the helper checks the user address and writes at most
        // `want` bytes, which the window holds.
        let rc =
            unsafe { generated::bpf_probe_read_user(window.as_mut_ptr().cast(), want as u32, start as *const c_void) };
        if rc != 0 {
            *len = 0;
            return None;
        }
        *base = start;
        *len = want;
    }
    Some(window[(((addr - *base) / 8) as usize) & (WINDOW_WORDS - 1)])
}

/// Whether `pc` is in code built to keep frame pointers: walked by them
/// with no rule lookup, at the cost of a few comparisons.
#[inline(always)]
fn keeps_frame_pointers(ranges: &[[u64; 2]; FP_RANGES], pc: u64) -> bool {
    ranges.iter().any(|&[start, end]| pc >= start && pc < end)
}

/// The rule for `pc` in the process and mappings version `owner` (tgid <<
/// 32 | version): this CPU's cache, else a lookup.
#[inline(always)]
fn rule_for(owner: u64, pc: u64) -> Found {
    if owner == 0 {
        return Found::new(Found::UNCACHED, FRAME_POINTER);
    }
    let Some(cache) = RULE_CACHE.get_ptr_mut(0) else {
        return Found(memwatch_lookup(owner, pc));
    };
    let i = cache_index(pc);
    // SAFETY: this CPU's map value.
    let entries = unsafe { &mut (*cache).entries };
    let (a, b) = (i & (RULE_CACHE_ENTRIES - 1), (i ^ 1) & (RULE_CACHE_ENTRIES - 1));
    if entries[a].pc == pc && entries[a].owner == owner {
        return Found::new(Found::ROW, entries[a].row);
    }
    if entries[b].pc == pc && entries[b].owner == owner {
        return Found::new(Found::ROW, entries[b].row);
    }
    count(STAT_RULE_MISSES);
    let found = Found(memwatch_lookup(owner, pc));
    if found.what() == Found::ROW {
        let row = found.rule();
        // The way holding another of this process's rules is kept, if the
        // other way is free for it.
        let way = if entries[a].owner == owner && entries[b].owner != owner {
            b
        } else {
            a
        };
        let e = &mut entries[way];
        // A program preempting this one on this CPU sees no pc, or the
        // whole entry.
        e.pc = 0;
        compiler_fence(Ordering::SeqCst);
        e.row = row;
        e.owner = owner;
        compiler_fence(Ordering::SeqCst);
        e.pc = pc;
    }
    found
}

/// The rule for `pc` from the process's mappings and the rows, as
/// [`Found`]'s word. A global function (see `crate::stack`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn memwatch_lookup(owner: u64, pc: u64) -> u64 {
    lookup(owner, pc).0
}

#[inline(always)]
fn lookup(owner: u64, pc: u64) -> Found {
    let Some(p) = UNWIND_PROCS.get_ptr((owner >> 32) as u32) else {
        return Found::new(Found::UNCACHED, FRAME_POINTER);
    };
    // SAFETY: a map value, read field by field.
    let p = unsafe { &*p };
    if p.version as u64 != owner & 0xffff_ffff {
        return Found::new(Found::UNCACHED, FRAME_POINTER);
    }
    let Some(m) = mapping(p, pc) else {
        return Found::new(Found::UNKNOWN, FRAME_POINTER);
    };
    match m.kind {
        k if k == MappingKind::Table as u32 => {}
        k if k == MappingKind::Trampoline as u32 => return Found::new(Found::TRAMPOLINE, FRAME_POINTER),
        _ => return Found::new(Found::ROW, FRAME_POINTER),
    }
    let rel = pc.wrapping_sub(m.bias);
    if rel > u32::MAX as u64 {
        return Found::new(Found::ROW, FRAME_POINTER);
    }
    let rel = rel as u32;
    // The last row at or below `rel`; unwind.rows is at most 2^26.
    let below = at_or_below::<27>(m.len, |i| UNWIND_ROWS.get(m.rows.wrapping_add(i)).map(|r| r.pc <= rel));
    match below {
        Some(0) | None => Found::new(Found::ROW, FRAME_POINTER),
        Some(n) => match UNWIND_ROWS.get(m.rows.wrapping_add(n - 1)) {
            Some(r) => Found::new(Found::ROW, *r),
            None => Found::new(Found::ROW, FRAME_POINTER),
        },
    }
}

/// The executable mapping holding `pc`.
#[inline(always)]
fn mapping(p: &ProcUnwind, pc: u64) -> Option<ExecMapping> {
    // Never above the array: the daemon truncates.
    if p.count as usize > MAX_MAPPINGS {
        return None;
    }
    let n = at_or_below::<8>(p.count, |i| {
        Some(p.mappings[i as usize & (MAX_MAPPINGS - 1)].start <= pc)
    })?;
    if n == 0 {
        return None;
    }
    let m = p.mappings[(n - 1) as usize & (MAX_MAPPINGS - 1)];
    (pc >= m.start && pc < m.end).then_some(m)
}

/// The return address a pending return probe replaced with its trampoline
/// at stack slot `ra_at`, 0 when not found: the kernel keeps it in the
/// thread's list of return instances. A global function (see
/// `crate::stack`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn memwatch_original_return(ra_at: u64) -> u64 {
    original_return(ra_at).unwrap_or(0)
}

#[inline(always)]
fn original_return(ra_at: u64) -> Option<u64> {
    let off = KERNEL_OFFSETS.load();
    if !off.return_probes_known() {
        return None;
    }
    let kernel = |addr: u64| -> Option<u64> {
        // SAFETY: the helper checks the kernel address.
        unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
    };
    // SAFETY: a helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let utask = kernel(task + off.task_utask as u64)?;
    if utask == 0 {
        return None;
    }
    let mut ri = kernel(utask + off.utask_return_instances as u64)?;
    for _ in 0..MAX_RETURN_INSTANCES {
        if ri == 0 {
            return None;
        }
        if kernel(ri + off.ri_stack as u64)? == ra_at {
            return kernel(ri + off.ri_orig_ret_vaddr as u64);
        }
        ri = kernel(ri + off.ri_next as u64)?;
    }
    None
}

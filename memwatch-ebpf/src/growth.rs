//! Host-wide address-space growth by user stack, from syscall tracepoints:
//! anonymous mmap, brk growth and growing mremap. Syscalls are rare next to
//! allocator calls, so these run for every process, always.
//!
//! Each tracepoint's program measures the growth and tail-calls
//! `growth_record`, which walks the stack and records it: the walk is
//! verified once, not once per tracepoint.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use memwatch_common::{
    alloc::MAP_ANONYMOUS,
    drop::Drop,
    growth::{GrowthKey, GrowthValue, SYSCALL_RET_OFFSET, syscall_arg_offset},
};

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, ProgramArray},
};

use crate::{
    maps::{BRK_LAST, EEXIST, GROWTH, add_shared, settings},
    stack,
};

/// Holds `growth_record`, set by the daemon.
#[map(name = "GROWTH_TAIL")]
static GROWTH_TAIL: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// (tgid, bytes) from a growth tracepoint to `growth_record` on this CPU.
#[map(name = "GROWTH_PENDING")]
static GROWTH_PENDING: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> Result<u64, Drop> {
    // SAFETY: reads the tracepoint record at an offset of its fixed layout.
    unsafe { ctx.read_at::<u64>(offset) }.map_err(|_| Drop::SyscallRecordUnreadable)
}

/// Hands growth of `bytes` by `tgid` to `growth_record`.
fn record(ctx: &TracePointContext, tgid: u32, bytes: u64) -> Result<(), Drop> {
    if bytes == 0 || tgid == settings().daemon_tgid {
        return Ok(());
    }
    let pending = GROWTH_PENDING.get_ptr_mut(0).ok_or(Drop::StackCaptureFailed)?;
    // SAFETY: this CPU's map value, read back by the program tail-called now.
    unsafe { *pending = [tgid as u64, bytes] };
    // SAFETY: our own context; on success this does not return.
    unsafe { GROWTH_TAIL.tail_call(ctx, 0) };
    Err(Drop::StackCaptureFailed)
}

/// The tail-called half: walks the stack of the growth in GROWTH_PENDING
/// and adds it to GROWTH.
pub fn try_record(_ctx: &TracePointContext) -> Result<(), Drop> {
    let pending = GROWTH_PENDING.get(0).ok_or(Drop::StackCaptureFailed)?;
    let (tgid, bytes) = (pending[0] as u32, pending[1]);
    let stack_id = stack::capture_current(tgid);
    let key = GrowthKey {
        tgid,
        _pad: 0,
        stack_id,
    };
    if add_growth(key, bytes) {
        return Ok(());
    }
    // LRU: a full map evicts the least recently grown stack. NOEXIST: a
    // record another CPU created meanwhile is added to, not overwritten.
    match GROWTH.insert(key, GrowthValue { bytes, calls: 1 }, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(EEXIST) if add_growth(key, bytes) => Ok(()),
        Err(_) => Err(Drop::GrowthMapFull),
    }
}

/// Adds to the stack's growth record, if there is one.
#[inline(always)]
fn add_growth(key: GrowthKey, bytes: u64) -> bool {
    let Some(v) = GROWTH.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a map value.
    unsafe {
        add_shared(&raw mut (*v).bytes, bytes);
        add_shared(&raw mut (*v).calls, 1);
    }
    true
}

#[inline(always)]
fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

pub fn try_mmap(ctx: &TracePointContext) -> Result<(), Drop> {
    if arg(ctx, syscall_arg_offset(3))? & MAP_ANONYMOUS == 0 {
        return Ok(());
    }
    record(ctx, tgid(), arg(ctx, syscall_arg_offset(1))?)
}

pub fn try_brk(ctx: &TracePointContext) -> Result<(), Drop> {
    let now = arg(ctx, SYSCALL_RET_OFFSET)?;
    let tgid = tgid();
    // SAFETY: copied out.
    let last = unsafe { BRK_LAST.get(tgid) }.copied();
    if BRK_LAST.insert(tgid, now, 0).is_err() {
        crate::maps::count_drop(Drop::BrkStateFull);
    }
    match last {
        Some(last) if now > last => record(ctx, tgid, now - last),
        _ => Ok(()),
    }
}

pub fn try_mremap(ctx: &TracePointContext) -> Result<(), Drop> {
    let (old, new) = (arg(ctx, syscall_arg_offset(1))?, arg(ctx, syscall_arg_offset(2))?);
    if new > old {
        record(ctx, tgid(), new - old)
    } else {
        Ok(())
    }
}

//! Host-wide address-space growth by user stack, from syscall tracepoints:
//! anonymous mmap, brk growth and growing mremap. Syscalls are rare next to
//! allocator calls, so these run for every process, always.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext};
use memwatch_common::{
    alloc::MAP_ANONYMOUS,
    drop::Drop,
    growth::{GrowthKey, GrowthValue, SYSCALL_RET_OFFSET, syscall_arg_offset},
};

use crate::{
    maps::{BRK_LAST, GROWTH, add_shared, settings},
    stack,
};

#[inline(always)]
fn arg(ctx: &TracePointContext, offset: usize) -> Result<u64, Drop> {
    // SAFETY: reads the tracepoint record at an offset of its fixed layout.
    unsafe { ctx.read_at::<u64>(offset) }.map_err(|_| Drop::SyscallRecordUnreadable)
}

fn record(ctx: &TracePointContext, tgid: u32, bytes: u64) -> Result<(), Drop> {
    if bytes == 0 || tgid == settings().daemon_tgid {
        return Ok(());
    }
    let stack_id = stack::capture_current(ctx).unwrap_or_else(|reason| {
        crate::maps::count_drop(reason);
        0
    });
    let key = GrowthKey {
        tgid,
        _pad: 0,
        stack_id,
    };
    if let Some(v) = GROWTH.get_ptr_mut(key) {
        // SAFETY: a map value.
        unsafe {
            add_shared(&raw mut (*v).bytes, bytes);
            add_shared(&raw mut (*v).calls, 1);
        }
        return Ok(());
    }
    // LRU: a full map evicts the least recently grown stack.
    GROWTH
        .insert(key, GrowthValue { bytes, calls: 1 }, 0)
        .map_err(|_| Drop::GrowthMapFull)
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
    let _ = BRK_LAST.insert(tgid, now, 0);
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

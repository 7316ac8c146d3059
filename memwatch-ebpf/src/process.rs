//! Process lifecycle: exec starts a new generation, exit ends tracking, and
//! forks of tracked processes are reported so that the daemon can follow them.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    programs::TracePointContext,
};
use memwatch_common::{drop::Drop, event::EventKind};

use crate::{
    maps::{BRK_LAST, TRACKED, send, settings},
    unwind::UNWIND_PROCS,
};

const CLONE_THREAD: u64 = 0x0001_0000;
/// `pid` in task_newtask, stable since the tracepoint was added.
const NEWTASK_PID_OFFSET: usize = 8;

/// The tracked generation of `tgid`, 0 when untracked.
fn generation(tgid: u32) -> u32 {
    TRACKED.get(tgid).map_or(0, |t| t.generation)
}

/// The victim is any process on the host, tracked or not: the event is
/// rare and the daemon decides what to keep.
pub fn try_oom_victim(ctx: &TracePointContext) -> Result<(), Drop> {
    let offset = settings().oom_victim_pid_offset as usize;
    // SAFETY: reads the tracepoint record at an offset from its format.
    let pid = unsafe { ctx.read_at::<i32>(offset) }.map_err(|_| Drop::TaskRecordUnreadable)?;
    send(EventKind::OomVictim, pid as u32, generation(pid as u32), 0)
}

/// The name systemd-oomd's threads have.
const OOMD: &[u8; 13] = b"systemd-oomd\0";
const SIGKILL: i32 = 9;

/// A SIGKILL from systemd-oomd is its kill of a cgroup's processes under
/// memory pressure: told by the sender's name, as nothing else says so.
pub fn try_signal(ctx: &TracePointContext) -> Result<(), Drop> {
    let s = settings();
    // SAFETY: reads the tracepoint record at offsets from its format.
    let sig = unsafe { ctx.read_at::<i32>(s.signal_sig_offset as usize) }.map_err(|_| Drop::TaskRecordUnreadable)?;
    if sig != SIGKILL {
        return Ok(());
    }
    let comm = bpf_get_current_comm().map_err(|_| Drop::TaskRecordUnreadable)?;
    if comm[..OOMD.len()] != OOMD[..] {
        return Ok(());
    }
    let pid = unsafe { ctx.read_at::<i32>(s.signal_pid_offset as usize) }.map_err(|_| Drop::TaskRecordUnreadable)?;
    send(EventKind::OomdKill, pid as u32, generation(pid as u32), 0)
}

pub fn try_exec(_ctx: &TracePointContext) -> Result<(), Drop> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The new image's code is elsewhere: its stacks are walked by frame
    // pointers until the daemon has read its mappings.
    let _ = UNWIND_PROCS.remove(tgid);
    // Its heap starts afresh elsewhere: a break compared with the old
    // image's would count the distance between them as growth.
    let _ = BRK_LAST.remove(tgid);
    if let Some(t) = TRACKED.get_ptr_mut(tgid)
        // SAFETY: a map value; exec runs once the other threads are gone, so
        // nobody else writes this entry now.
        && unsafe { (*t).generation } != 0
    {
        let old = unsafe { (*t).generation };
        // The daemon gives generations in strides of 2^16: this never wraps
        // into another process's range, nor to 0.
        unsafe { (*t).generation = old.wrapping_add(1) };
        return send(EventKind::Exec, tgid, old, 0);
    }
    if settings().report_all_execs != 0 {
        return send(EventKind::Exec, tgid, 0, 0);
    }
    Ok(())
}

pub fn try_exit(ctx: &TracePointContext) -> Result<(), Drop> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let generation = generation(tgid);
    if generation == 0 {
        return Ok(());
    }
    let offset = settings().exit_group_dead_offset as usize;
    let group_dead = if offset != 0 {
        // SAFETY: reads the tracepoint record at an offset from its format.
        unsafe { ctx.read_at::<u8>(offset) }.map_err(|_| Drop::TaskRecordUnreadable)? != 0
    } else {
        pid_tgid as u32 == tgid
    };
    if !group_dead {
        return Ok(());
    }
    if let Some(t) = TRACKED.get_ptr_mut(tgid) {
        // SAFETY: a map value; the process is gone.
        unsafe { (*t).generation = 0 };
    }
    send(EventKind::Exit, tgid, generation, 0)
}

pub fn try_newtask(ctx: &TracePointContext) -> Result<(), Drop> {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let offset = settings().newtask_clone_flags_offset as usize;
    if offset == 0 {
        return Ok(());
    }
    // SAFETY: reads the tracepoint record at offsets from its format.
    let flags: u64 = unsafe { ctx.read_at(offset) }.map_err(|_| Drop::TaskRecordUnreadable)?;
    if flags & CLONE_THREAD != 0 {
        return Ok(());
    }
    let child: i32 = unsafe { ctx.read_at(NEWTASK_PID_OFFSET) }.map_err(|_| Drop::TaskRecordUnreadable)?;
    if child <= 0 {
        return Err(Drop::TaskRecordUnreadable);
    }
    // A reused pid must not be walked with an earlier process's mappings,
    // nor have its first break compared with an earlier process's.
    let _ = UNWIND_PROCS.remove(child as u32);
    let _ = BRK_LAST.remove(child as u32);
    if generation(parent) == 0 {
        return Ok(());
    }
    send(EventKind::Fork, child as u32, 0, parent)
}

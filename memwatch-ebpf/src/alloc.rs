//! The allocator probes: one program per role, specialised by the cookie.
//!
//! Entry remembers the call's arguments per thread; return turns them and the
//! return value into records and counters; releases act at entry. The rules
//! themselves live in `memwatch_common::alloc` and are unit-tested on the host.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_NOEXIST, pt_regs},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    programs::{ProbeContext, RetProbeContext},
};
use memwatch_common::{
    alloc::{
        AllocKey, AllocRecord, Args, CallEntry, EntryDecision, OutParam, ProcCounters, ProcKey, Unmap, call_outcome,
        call_request, classify_entry, release_is_nested, return_matches, unmap_effect,
    },
    cookie::{CallKind, ProbeCookie},
    drop::Drop,
};

use crate::{
    maps::{CALLS, EEXIST, LIVE, TRACKED, add, count_drop, counters},
    stack,
};

#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> Result<ProbeCookie, Drop> {
    // SAFETY: helper call on the program's own context.
    let raw = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    ProbeCookie::decode(raw).ok_or(Drop::BadCookie)
}

#[inline(always)]
fn regs(ptr: *mut pt_regs) -> &'static pt_regs {
    // SAFETY: the context of a uprobe program is the task's pt_regs.
    unsafe { &*ptr }
}

/// The process incarnation a call belongs to; `None` for untracked ones.
#[inline(always)]
fn proc_key(tgid: u32, family: u8) -> Option<ProcKey> {
    // SAFETY: the value is copied out immediately.
    let tracked = unsafe { TRACKED.get(tgid) }?;
    Some(ProcKey {
        tgid,
        generation: tracked.generation,
        family,
        _pad: [0; 7],
    })
}

#[inline(always)]
fn in_flight(pid_tgid: u64) -> Option<CallEntry> {
    // SAFETY: copied out; only this thread writes its own entry.
    unsafe { CALLS.get(pid_tgid) }.copied()
}

pub fn try_alloc_enter(ctx: &ProbeContext) -> Result<(), Drop> {
    let cookie = cookie(ctx)?;
    let r = regs(ctx.regs);
    let entry_sp = cookie.entry_sp(r.rsp);
    let pid_tgid = bpf_get_current_pid_tgid();
    let now = unsafe { bpf_ktime_get_ns() };

    match classify_entry(in_flight(pid_tgid).as_ref(), entry_sp, cookie.kind, now) {
        EntryDecision::Nested => return Ok(()),
        EntryDecision::ReplaceStale => count_drop(Drop::StaleCall),
        EntryDecision::Record => {}
    }
    let args = Args {
        a0: r.rdi,
        a1: r.rsi,
        a2: r.rdx,
        a3: r.rcx,
    };
    let (size, aux) = call_request(cookie.kind, args);
    let entry = CallEntry {
        entry_sp,
        timestamp_ns: now,
        size,
        aux,
        kind: cookie.kind as u8,
        family: cookie.family as u8,
        _pad: [0; 6],
    };
    CALLS
        .insert(pid_tgid, entry, BPF_ANY as u64)
        .map_err(|_| Drop::CallsMapFull)
}

pub fn try_alloc_exit(ctx: &RetProbeContext) -> Result<(), Drop> {
    let cookie = cookie(ctx)?;
    let r = regs(ctx.regs);
    let pid_tgid = bpf_get_current_pid_tgid();
    let entry = in_flight(pid_tgid).ok_or(Drop::ReturnWithoutEntry)?;
    if !return_matches(&entry, cookie.kind, r.rsp) {
        // The return of a nested call; the outer call's return accounts.
        return Ok(());
    }
    let _ = CALLS.remove(pid_tgid);

    let ret = r.rax;
    let out = if entry.kind == CallKind::PosixMemalign as u8 && ret as u32 == 0 {
        // SAFETY: reads user memory through the helper, which checks it.
        match unsafe { bpf_probe_read_user(entry.aux as *const u64) } {
            Ok(p) => OutParam::Read(p),
            Err(_) => {
                count_drop(Drop::OutParamUnreadable);
                OutParam::Unreadable
            }
        }
    } else {
        OutParam::None
    };
    let outcome = call_outcome(&entry, ret, out);
    if outcome.release == 0 && outcome.record == 0 {
        return Ok(());
    }
    let Some(key) = proc_key((pid_tgid >> 32) as u32, entry.family) else {
        return Ok(());
    };
    let c = counters(&key)?;
    if outcome.release != 0 {
        release_all(&key, outcome.release, c);
    }
    if outcome.record != 0 {
        record(ctx, &key, &entry, outcome.record, outcome.size, c)?;
    }
    Ok(())
}

pub fn try_free_enter(ctx: &ProbeContext) -> Result<(), Drop> {
    let cookie = cookie(ctx)?;
    let r = regs(ctx.regs);
    let addr = r.rdi;
    if addr == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let now = unsafe { bpf_ktime_get_ns() };
    if release_is_nested(in_flight(pid_tgid).as_ref(), cookie.entry_sp(r.rsp), now) {
        return Ok(());
    }
    let Some(key) = proc_key((pid_tgid >> 32) as u32, cookie.family as u8) else {
        return Ok(());
    };
    let c = counters(&key)?;
    match cookie.kind {
        CallKind::Munmap => unmap(&key, addr, r.rsi, c),
        _ => {
            if !release_all(&key, addr, c) {
                add(unsafe { &raw mut (*c).untracked_frees }, 1);
            }
            Ok(())
        }
    }
}

#[inline(always)]
fn alloc_key(key: &ProcKey, addr: u64) -> AllocKey {
    AllocKey {
        tgid: key.tgid,
        generation: key.generation,
        addr,
    }
}

/// Removes the record at `addr`, counting it as freed. False if untracked.
#[inline(always)]
fn release_all(key: &ProcKey, addr: u64, c: *mut ProcCounters) -> bool {
    let k = alloc_key(key, addr);
    // SAFETY: the size is copied out before the element is deleted.
    let Some(size) = (unsafe { LIVE.get(k) }).map(|rec| rec.size) else {
        return false;
    };
    if LIVE.remove(k).is_err() {
        // Another thread released it first (a double free in the program).
        return false;
    }
    count_freed(c, 1, size);
    true
}

#[inline(always)]
fn count_freed(c: *mut ProcCounters, frees: u64, bytes: u64) {
    // SAFETY: `c` points to this CPU's counters map value.
    unsafe {
        add(&raw mut (*c).frees, frees);
        add(&raw mut (*c).freed_bytes, bytes);
    }
}

fn unmap(key: &ProcKey, addr: u64, len: u64, c: *mut ProcCounters) -> Result<(), Drop> {
    let k = alloc_key(key, addr);
    // SAFETY: copied out.
    let Some(rec) = (unsafe { LIVE.get(k) }).copied() else {
        // Unrecorded mappings include file mappings, which are not tracked.
        return Ok(());
    };
    match unmap_effect(rec.size, len) {
        Unmap::Nothing => Ok(()),
        Unmap::All => {
            if LIVE.remove(k).is_ok() {
                count_freed(c, 1, rec.size);
            }
            Ok(())
        }
        Unmap::Head { freed, rest } => {
            let moved = AllocRecord { size: rest, ..rec };
            if LIVE.remove(k).is_err() {
                return Ok(());
            }
            count_freed(c, 0, freed);
            if LIVE
                .insert(alloc_key(key, addr + freed), moved, BPF_ANY as u64)
                .is_err()
            {
                // The rest could not be kept: account it as lost, not live.
                count_freed(c, 1, rest);
                return Err(Drop::LiveMapFull);
            }
            Ok(())
        }
    }
}

fn record(
    ctx: &RetProbeContext,
    key: &ProcKey,
    entry: &CallEntry,
    addr: u64,
    size: u64,
    c: *mut ProcCounters,
) -> Result<(), Drop> {
    let stack_id = match stack::capture(ctx) {
        Ok(id) => id,
        Err(reason) => {
            count_drop(reason);
            0
        }
    };
    let rec = AllocRecord {
        size,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        stack_id,
        kind: entry.kind,
        family: entry.family,
        _pad: [0; 6],
    };
    // SAFETY: `c` points to this CPU's counters map value.
    unsafe {
        add(&raw mut (*c).allocations, 1);
        add(&raw mut (*c).allocated_bytes, size);
    }
    let k = alloc_key(key, addr);
    match LIVE.insert(k, rec, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(EEXIST) => {
            // Still recorded: its release went unseen. Count the old block as
            // freed so that allocated - freed stays equal to live.
            let old = unsafe { LIVE.get(k) }.map(|r| r.size).unwrap_or(0);
            count_freed(c, 1, old);
            count_drop(Drop::MissedFree);
            LIVE.insert(k, rec, BPF_ANY as u64).map_err(|_| Drop::LiveMapFull)
        }
        Err(_) => {
            // SAFETY: as above.
            unsafe {
                add(&raw mut (*c).lost_allocations, 1);
                add(&raw mut (*c).lost_bytes, size);
            }
            Err(Drop::LiveMapFull)
        }
    }
}

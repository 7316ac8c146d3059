//! The allocator probes: one program per role, specialised by the cookie.
//!
//! Entry remembers the call's arguments per thread; return turns them and the
//! return value into records and counters; releases act at entry. The rules
//! themselves live in `memwatch_common::alloc` and are unit-tested on the host.
//!
//! Every probe hit costs here on top of the kernel's trap, so the common
//! paths do as few map operations as they can (see `cargo xtask bench`).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, BPF_NOEXIST, pt_regs},
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated::bpf_get_attach_cookie},
    programs::{ProbeContext, RetProbeContext},
};
use memwatch_common::{
    alloc::{
        AllocKey, AllocRecord, Args, CallEntry, EntryDecision, IDLE, OutParam, Unmap, call_outcome, call_request,
        classify_entry, return_matches, unmap_effect,
    },
    cookie::{CallKind, ProbeCookie},
    drop::Drop,
};

use crate::{
    live_table::{self, Claim},
    maps::{CALLS, EEXIST, LIVE, Proc, add, coarse_now, count_drop, move_live, tracked},
    stack, stack_totals,
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

pub fn try_alloc_enter(ctx: &ProbeContext) -> Result<(), Drop> {
    let cookie = cookie(ctx)?;
    let r = regs(ctx.regs);
    // Each register read at its own fixed offset: the verifier refuses a
    // context pointer moved by a computed shift.
    // SAFETY: fields of the context.
    let [rdi, rsi, rdx, rcx, r8] =
        unsafe { [&r.rdi, &r.rsi, &r.rdx, &r.rcx, &r.r8].map(|f| core::ptr::read_volatile(f)) };
    let args = if cookie.ctx_arg {
        Args {
            a0: rsi,
            a1: rdx,
            a2: rcx,
            a3: r8,
        }
    } else {
        Args {
            a0: rdi,
            a1: rsi,
            a2: rdx,
            a3: rcx,
        }
    };
    let (size, aux) = call_request(cookie.kind, args);
    let entry = CallEntry {
        entry_sp: cookie.entry_sp(r.rsp),
        timestamp_ns: coarse_now(),
        size,
        aux,
        kind: cookie.kind as u8,
        family: cookie.family as u8,
        _pad0: 0,
        _pad1: 0,
    };
    let Some(slot) = CALLS.current() else {
        // The thread's first allocator call: its entry is created once and
        // then rewritten in place.
        let mut entry = entry;
        return CALLS.create(&mut entry).map(|_| ()).ok_or(Drop::CallStateUnavailable);
    };
    // SAFETY: the map value of this thread, which only this thread writes.
    let prev = unsafe { *slot };
    let in_flight = (prev.kind != IDLE).then_some(&prev);
    match classify_entry(
        in_flight,
        entry.entry_sp,
        cookie.kind,
        cookie.family as u8,
        entry.timestamp_ns,
    ) {
        EntryDecision::Nested => return Ok(()),
        EntryDecision::ReplaceStale => count_drop(Drop::StaleCall),
        EntryDecision::Record => {}
    }
    // SAFETY: as above.
    unsafe { *slot = entry };
    Ok(())
}

pub fn try_alloc_exit(ctx: &RetProbeContext) -> Result<(), Drop> {
    let cookie = cookie(ctx)?;
    let r = regs(ctx.regs);
    let slot = CALLS.current().ok_or(Drop::ReturnWithoutEntry)?;
    // SAFETY: the map value of this thread, which only this thread writes.
    let entry = unsafe { *slot };
    if entry.kind == IDLE {
        return Err(Drop::ReturnWithoutEntry);
    }
    if !return_matches(&entry, cookie.kind, cookie.family as u8, r.rsp) {
        // The return of a nested call; the outer call's return accounts.
        return Ok(());
    }
    // SAFETY: as above.
    unsafe { (*slot).kind = IDLE };

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
    let Some(p) = tracked((bpf_get_current_pid_tgid() >> 32) as u32, entry.family)? else {
        return Ok(());
    };
    if outcome.release != 0 {
        release_all(&p, outcome.release);
    }
    if outcome.record != 0 {
        record(ctx, &p, &entry, outcome.record, outcome.size)?;
    }
    Ok(())
}

pub fn try_free_enter(ctx: &ProbeContext) -> Result<(), Drop> {
    let cookie = cookie(ctx)?;
    let r = regs(ctx.regs);
    // SAFETY: fields of the context, both read at their fixed offsets (see
    // above), then chosen.
    let [rdi, rsi] = unsafe { [&r.rdi, &r.rsi].map(|f| core::ptr::read_volatile(f)) };
    let addr = if cookie.ctx_arg { rsi } else { rdi };
    if addr == 0 {
        return Ok(());
    }
    // No nesting check: a release counts only if a live record exists, so a
    // free made inside realloc (of the block realloc then reports released)
    // is counted once either way.
    let Some(p) = tracked((bpf_get_current_pid_tgid() >> 32) as u32, cookie.family as u8)? else {
        return Ok(());
    };
    match cookie.kind {
        CallKind::Munmap => unmap(&p, addr, r.rsi),
        _ => {
            if !release_all(&p, addr) {
                // SAFETY: this CPU's counters.
                add(unsafe { &raw mut (*p.counters).untracked_frees }, 1);
                // Allocated before tracking began: what it held is read from
                // the allocator's header, while the block is still allocated.
                if cookie.chunk_header
                    && let Ok(header) = unsafe { bpf_probe_read_user((addr - 8) as *const u64) }
                {
                    let bytes = memwatch_common::alloc::glibc_usable_size(header);
                    // SAFETY: this CPU's counters.
                    add(unsafe { &raw mut (*p.counters).untracked_freed_usable_bytes }, bytes);
                }
            }
            Ok(())
        }
    }
}

#[inline(always)]
fn alloc_key(p: &Proc, addr: u64) -> AllocKey {
    AllocKey {
        tgid: p.tgid,
        generation: p.generation,
        addr,
    }
}

#[inline(always)]
fn count_freed(p: &Proc, frees: u64, bytes: u64) {
    // SAFETY: `p.counters` points to this CPU's counters map value.
    unsafe {
        add(&raw mut (*p.counters).frees, frees);
        add(&raw mut (*p.counters).freed_bytes, bytes);
    }
    move_live(p, bytes.wrapping_neg(), false);
}

/// Removes the record at `addr`, counting it as freed. False if untracked.
#[inline(always)]
fn release_all(p: &Proc, addr: u64) -> bool {
    if let Some(size) = live_table::release(p, addr) {
        count_freed(p, 1, size);
        return true;
    }
    let k = alloc_key(p, addr);
    // SAFETY: the size is copied out before the element is deleted.
    let Some(size) = (unsafe { LIVE.get(k) }).map(|rec| rec.size) else {
        return false;
    };
    if LIVE.remove(k).is_err() {
        // Another thread released it first (a double free in the program).
        return false;
    }
    count_freed(p, 1, size);
    true
}

fn unmap(p: &Proc, addr: u64, len: u64) -> Result<(), Drop> {
    let k = alloc_key(p, addr);
    // SAFETY: copied out.
    let Some(rec) = (unsafe { LIVE.get(k) }).copied() else {
        // Unrecorded mappings include file mappings, which are not tracked.
        return Ok(());
    };
    match unmap_effect(rec.size, len) {
        Unmap::Nothing => Ok(()),
        Unmap::All => {
            if LIVE.remove(k).is_ok() {
                count_freed(p, 1, rec.size);
            }
            Ok(())
        }
        Unmap::Head { freed, rest } => {
            if LIVE.remove(k).is_err() {
                return Ok(());
            }
            count_freed(p, 0, freed);
            let moved = AllocRecord { size: rest, ..rec };
            if LIVE.insert(alloc_key(p, addr + freed), moved, BPF_ANY as u64).is_err() {
                // The rest could not be kept: it is mapped still, but lost.
                count_lost(p, rest);
                return Err(Drop::LiveMapFull);
            }
            Ok(())
        }
    }
}

fn record(ctx: &RetProbeContext, p: &Proc, entry: &CallEntry, addr: u64, size: u64) -> Result<(), Drop> {
    let stack_id = stack::capture(ctx, p.tgid);
    // The call's start stands for the allocation's time: one clock read less.
    let rec = AllocRecord {
        size,
        timestamp_ns: entry.timestamp_ns,
        stack_id,
        kind: entry.kind,
        family: entry.family,
        _pad0: 0,
        _pad1: 0,
    };
    // SAFETY: `p.counters` points to this CPU's counters map value.
    unsafe {
        add(&raw mut (*p.counters).allocations, 1);
        add(&raw mut (*p.counters).allocated_bytes, size);
    }
    move_live(p, size, true);
    stack_totals::count(p, stack_id, size, entry);
    // Mappings stay in LIVE, where munmap looks for them.
    if entry.kind != CallKind::Mmap as u8 {
        match live_table::claim(p, addr, &rec) {
            Claim::Stored => return Ok(()),
            Claim::Replaced(old) => {
                count_freed(p, 1, old);
                count_drop(Drop::MissedFree);
                return Ok(());
            }
            Claim::Taken => {}
        }
    }
    let k = alloc_key(p, addr);
    match LIVE.insert(k, rec, BPF_NOEXIST as u64) {
        Ok(()) => Ok(()),
        Err(EEXIST) => {
            // Still recorded: its release went unseen. Count the old block as
            // freed so that allocated - freed stays equal to live.
            // SAFETY: copied out.
            let old = unsafe { LIVE.get(k) }.map(|r| r.size).unwrap_or(0);
            count_freed(p, 1, old);
            count_drop(Drop::MissedFree);
            LIVE.insert(k, rec, BPF_ANY as u64).map_err(|_| {
                count_lost(p, size);
                Drop::LiveMapFull
            })
        }
        Err(_) => {
            count_lost(p, size);
            Err(Drop::LiveMapFull)
        }
    }
}

/// Counts a block that is live in the process but has no record: the
/// identity allocated - freed - lost = live holds with it.
#[inline(always)]
fn count_lost(p: &Proc, bytes: u64) {
    // SAFETY: `p.counters` points to this CPU's counters map value.
    unsafe {
        add(&raw mut (*p.counters).lost_allocations, 1);
        add(&raw mut (*p.counters).lost_bytes, bytes);
    }
}

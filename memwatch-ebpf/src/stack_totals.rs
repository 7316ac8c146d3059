//! The allocation profile: every recorded allocation added to its (process
//! generation, stack) totals. A per-CPU cache slot takes the adds (no hash
//! lookup, no atomic: ~60 ns a pair less than the map); a slot wanted by
//! another stack first hands its totals to the shared `STACK_TOTALS` map.
//! The daemon reads both. Keys and values are used where they lie in the
//! slot, never copied to the stack: alloc_exit's chain of calls may use 512
//! bytes of stack in all, and Debian 12's 6.1 counts every one.

use aya_ebpf::bindings::BPF_NOEXIST;
use memwatch_common::{
    alloc::{CallEntry, StackTotalsSlot, stack_totals_slot_of},
    drop::Drop,
};

use crate::maps::{EEXIST, Proc, STACK_TOTALS, STACK_TOTALS_CACHE, add, add_shared, count_drop};

#[inline(always)]
pub fn count(p: &Proc, stack_id: u64, size: u64, entry: &CallEntry) {
    let Some(slot) = STACK_TOTALS_CACHE.get_ptr_mut(stack_totals_slot_of(p.tgid, p.generation, stack_id)) else {
        return count_drop(Drop::StackTotalsFull);
    };
    // SAFETY: this CPU's slot; `add` is atomic where programs can preempt
    // each other (PREEMPT_RT), as for the counters.
    unsafe {
        let k = &raw mut (*slot).key;
        if (*slot).totals.allocations != 0
            && (*k).stack_id == stack_id
            && (*k).tgid == p.tgid
            && (*k).generation == p.generation
        {
            add(&raw mut (*slot).totals.allocations, 1);
            add(&raw mut (*slot).totals.bytes, size);
            return;
        }
        if (*slot).totals.allocations != 0 {
            flush(slot);
        }
        (*k).tgid = p.tgid;
        (*k).generation = p.generation;
        (*k).stack_id = stack_id;
        (*slot).totals.allocations = 1;
        (*slot).totals.bytes = size;
        (*slot).totals.kind = entry.kind;
        (*slot).totals.family = entry.family;
    }
}

/// Adds a slot's totals to the shared map, creating the stack's entry.
///
/// # Safety
/// `slot` points to a cache slot of this CPU.
#[inline(always)]
unsafe fn flush(slot: *mut StackTotalsSlot) {
    // SAFETY: as the caller promises; map memory serves as key and value.
    let (key, totals) = unsafe { (&(*slot).key, &(*slot).totals) };
    for _ in 0..2 {
        if let Some(t) = STACK_TOTALS.get_ptr_mut(key) {
            // SAFETY: a map value other CPUs add to too.
            unsafe {
                add_shared(&raw mut (*t).allocations, totals.allocations);
                add_shared(&raw mut (*t).bytes, totals.bytes);
            }
            return;
        }
        match STACK_TOTALS.insert(key, totals, BPF_NOEXIST as u64) {
            Ok(()) => return,
            // Another CPU made it first: add to theirs.
            Err(EEXIST) => continue,
            Err(_) => break,
        }
    }
    count_drop(Drop::StackTotalsFull);
}

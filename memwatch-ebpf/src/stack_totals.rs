//! The allocation profile: every recorded allocation added to its (process
//! generation, stack) totals. A per-CPU cache slot takes the adds (no hash
//! lookup, no atomic: ~60 ns a pair less than the map); a slot wanted by
//! another stack first hands its totals to the shared `STACK_TOTALS` map.
//! The daemon reads both.

use aya_ebpf::bindings::BPF_NOEXIST;
use memwatch_common::{
    alloc::{CallEntry, StackTotalKey, StackTotals, stack_totals_slot},
    drop::Drop,
};

use crate::maps::{EEXIST, Proc, STACK_TOTALS, STACK_TOTALS_CACHE, add, add_shared, count_drop};

#[inline(always)]
pub fn count(p: &Proc, stack_id: u64, size: u64, entry: &CallEntry) {
    let key = StackTotalKey {
        tgid: p.tgid,
        generation: p.generation,
        stack_id,
    };
    let Some(slot) = STACK_TOTALS_CACHE.get_ptr_mut(stack_totals_slot(&key)) else {
        return flush(&key, 1, size, entry.kind, entry.family);
    };
    // SAFETY: this CPU's slot; `add` is atomic where programs can preempt
    // each other (PREEMPT_RT), as for the counters.
    unsafe {
        if (*slot).totals.allocations != 0 && (*slot).key == key {
            add(&raw mut (*slot).totals.allocations, 1);
            add(&raw mut (*slot).totals.bytes, size);
            return;
        }
        let old = *slot;
        (*slot).key = key;
        (*slot).totals = StackTotals {
            allocations: 1,
            bytes: size,
            kind: entry.kind,
            family: entry.family,
            _pad: [0; 6],
        };
        if old.totals.allocations != 0 {
            flush(
                &old.key,
                old.totals.allocations,
                old.totals.bytes,
                old.totals.kind,
                old.totals.family,
            );
        }
    }
}

/// Adds totals to the shared map, creating the stack's entry.
#[inline(always)]
fn flush(key: &StackTotalKey, allocations: u64, bytes: u64, kind: u8, family: u8) {
    for _ in 0..2 {
        if let Some(t) = STACK_TOTALS.get_ptr_mut(key) {
            // SAFETY: a map value other CPUs add to too.
            unsafe {
                add_shared(&raw mut (*t).allocations, allocations);
                add_shared(&raw mut (*t).bytes, bytes);
            }
            return;
        }
        let first = StackTotals {
            allocations,
            bytes,
            kind,
            family,
            _pad: [0; 6],
        };
        match STACK_TOTALS.insert(key, first, BPF_NOEXIST as u64) {
            Ok(()) => return,
            // Another CPU made it first: add to theirs.
            Err(EEXIST) => continue,
            Err(_) => break,
        }
    }
    count_drop(Drop::StackTotalsFull);
}

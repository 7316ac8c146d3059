//! The maps, and the counting helpers every program uses.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use memwatch_common::{
    alloc::{AllocKey, AllocRecord, CallEntry, ProcCounters, ProcKey, Tracked},
    drop::Drop,
    event::Settings,
    maps::*,
    stack::StackFrames,
};

#[map(name = "LIVE")]
pub static LIVE: HashMap<AllocKey, AllocRecord> = HashMap::with_max_entries(DEFAULT_LIVE_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "CALLS")]
pub static CALLS: HashMap<u64, CallEntry> = HashMap::with_max_entries(DEFAULT_CALLS_ENTRIES, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuHashMap<ProcKey, ProcCounters> =
    PerCpuHashMap::with_max_entries(DEFAULT_COUNTERS_ENTRIES, 0);

#[map(name = "TRACKED")]
pub static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(DEFAULT_TRACKED_ENTRIES, 0);

#[map(name = "STACKS")]
pub static STACKS: HashMap<u64, StackFrames> = HashMap::with_max_entries(DEFAULT_STACKS_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "STACK_SCRATCH")]
pub static STACK_SCRATCH: PerCpuArray<StackFrames> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Drop::COUNT, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Adds to a counter that other programs may update concurrently on this CPU
/// (uprobe programs can be preempted).
#[inline(always)]
pub fn add(counter: *mut u64, n: u64) {
    // SAFETY: `counter` points into a map value, valid and 8-byte aligned.
    // The BPF target offers no AtomicU64::fetch_add; this lowers to BPF's
    // atomic add instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

#[inline(always)]
pub fn count_drop(reason: Drop) {
    if let Some(slot) = DROPS.get_ptr_mut(reason as u32) {
        add(slot, 1);
    }
}

#[inline(always)]
pub fn count_result(result: Result<(), Drop>) {
    if let Err(reason) = result {
        count_drop(reason);
    }
}

pub fn settings() -> Settings {
    match SETTINGS.get(0) {
        Some(s) => *s,
        None => Settings::default(),
    }
}

/// This CPU's counters for a process incarnation, created on first use.
#[inline(always)]
pub fn counters(key: &ProcKey) -> Result<*mut ProcCounters, Drop> {
    if let Some(c) = COUNTERS.get_ptr_mut(key) {
        return Ok(c);
    }
    // EEXIST (another CPU or program got there first) is fine.
    let _ = COUNTERS.insert(key, ProcCounters::default(), BPF_NOEXIST as u64);
    COUNTERS.get_ptr_mut(key).ok_or(Drop::CountersMapFull)
}

/// `-EEXIST` as map helpers return it.
pub const EEXIST: i32 = -17;

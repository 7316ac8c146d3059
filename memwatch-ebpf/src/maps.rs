//! The maps, and the counting helpers every program uses.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use crate::task_storage::TaskStorage;
use aya_ebpf::{
    Global,
    bindings::BPF_F_NO_PREALLOC,
    helpers::bpf_ktime_get_ns,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use memwatch_common::{
    alloc::{
        AllocKey, AllocRecord, CallEntry, Peak, ProcCounters, STACK_TOTALS_CACHE_SLOTS, StackTotalKey, StackTotals,
        StackTotalsSlot, Tracked, counter_index, peak_index,
    },
    drop::Drop,
    event::{EventKind, ProcEvent, Settings},
    growth::{GrowthKey, GrowthValue},
    maps::*,
    stack::{StackFrames, StackScratch},
};

#[map(name = "LIVE")]
pub static LIVE: HashMap<AllocKey, AllocRecord> = HashMap::with_max_entries(DEFAULT_LIVE_ENTRIES, BPF_F_NO_PREALLOC);

/// Each thread's allocator call state: task-local, so the lookup on every
/// probe hit is a pointer chase rather than a hash.
#[btf_map(name = "CALLS")]
pub static CALLS: TaskStorage<CallEntry> = TaskStorage::new();

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<ProcCounters> = PerCpuArray::with_max_entries(DEFAULT_COUNTERS_ENTRIES, 0);

#[map(name = "STACK_TOTALS")]
pub static STACK_TOTALS: HashMap<StackTotalKey, StackTotals> =
    HashMap::with_max_entries(DEFAULT_STACKS_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "STACK_TOTALS_CACHE")]
pub static STACK_TOTALS_CACHE: PerCpuArray<StackTotalsSlot> =
    PerCpuArray::with_max_entries(STACK_TOTALS_CACHE_SLOTS, 0);

#[map(name = "PEAKS")]
pub static PEAKS: Array<Peak> = Array::with_max_entries(DEFAULT_COUNTERS_ENTRIES, 0);

#[map(name = "TRACKED")]
pub static TRACKED: Array<Tracked> = Array::with_max_entries(DEFAULT_TRACKED_ENTRIES, 0);

#[map(name = "STACKS")]
pub static STACKS: HashMap<u64, StackFrames> = HashMap::with_max_entries(DEFAULT_STACKS_ENTRIES, BPF_F_NO_PREALLOC);

/// Stack scratch per CPU: entry [`PROBES`] for the allocator probes,
/// [`SYSCALLS`] for the syscall tracepoints (a syscall may preempt a probe's
/// program on this CPU). One map, so that the functions that take the entry
/// as an argument see one map pointer on every path.
#[map(name = "STACK_SCRATCH")]
pub static STACK_SCRATCH: PerCpuArray<StackScratch> = PerCpuArray::with_max_entries(2, 0);
pub const PROBES: u64 = 0;
pub const SYSCALLS: u64 = 1;

/// This CPU's scratch `which` (only its low bit counts).
#[inline(always)]
pub fn scratch(which: u64) -> Option<*mut StackScratch> {
    STACK_SCRATCH.get_ptr_mut((which & 1) as u32)
}

#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Drop::COUNT, 0);

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "GROWTH")]
pub static GROWTH: LruHashMap<GrowthKey, GrowthValue> = LruHashMap::with_max_entries(DEFAULT_GROWTH_ENTRIES, 0);

#[map(name = "BRK_LAST")]
pub static BRK_LAST: LruHashMap<u32, u64> = LruHashMap::with_max_entries(DEFAULT_GROWTH_ENTRIES, 0);

#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map(name = "CLOCK")]
pub static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// Set by the daemon at load (see `memwatch_common::maps::ATOMIC_COUNTERS`);
/// the verifier sees the constant and drops the branch not taken.
#[unsafe(no_mangle)]
static ATOMIC_COUNTERS: Global<u8> = Global::new(1);

/// Adds to a counter in a per-CPU map value, and only there. Another program
/// can update it on this CPU only by preempting this one, which a kernel
/// without preemption never does: there a plain add is exact, and ~5 ns
/// cheaper than an atomic one.
#[inline(always)]
pub fn add(counter: *mut u64, n: u64) {
    if ATOMIC_COUNTERS.load() != 0 {
        add_shared(counter, n);
    } else {
        // SAFETY: `counter` points into a map value, valid and 8-byte aligned.
        unsafe { *counter += n };
    }
}

/// Adds to a counter that programs on other CPUs may update too.
#[inline(always)]
pub fn add_shared(counter: *mut u64, n: u64) {
    // SAFETY: `counter` points into a map value, valid and 8-byte aligned.
    // The BPF target offers no AtomicU64::fetch_add; this lowers to BPF's
    // atomic add instruction.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// CLOCK_MONOTONIC to [`memwatch_common::time::CLOCK_TICK_NS`].
#[inline(always)]
pub fn coarse_now() -> u64 {
    CLOCK.get(0).copied().unwrap_or(0)
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

/// Reports a lifecycle event to the daemon. Here, beside `EVENTS`: both
/// the lifecycle programs and the unwinder (new code mapped) send them.
pub fn send(kind: EventKind, tgid: u32, generation: u32, parent_tgid: u32) -> Result<(), Drop> {
    let event = ProcEvent {
        kind: kind as u32,
        tgid,
        generation,
        parent_tgid,
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
    };
    EVENTS.output::<ProcEvent>(&event, 0).map_err(|_| Drop::EventsFull)
}

pub fn settings() -> Settings {
    match SETTINGS.get(0) {
        Some(s) => *s,
        None => Settings::default(),
    }
}

/// A tracked process as the probes see it: its generation and this CPU's
/// counters for it.
pub struct Proc {
    pub tgid: u32,
    pub generation: u32,
    pub counters: *mut ProcCounters,
    /// Its live bytes and their high-water mark, shared by all CPUs.
    pub peak: *mut Peak,
}

/// The tracked process `tgid` for allocator `family`, or None if untracked.
/// Both lookups are array lookups, inlined by the verifier.
#[inline(always)]
pub fn tracked(tgid: u32, family: u8) -> Result<Option<Proc>, Drop> {
    let Some(t) = TRACKED.get(tgid) else { return Ok(None) };
    let (generation, slot) = (t.generation, t.slot);
    if generation == 0 {
        return Ok(None);
    }
    let counters = COUNTERS
        .get_ptr_mut(counter_index(slot, generation, family))
        .ok_or(Drop::CountersMapFull)?;
    let peak = PEAKS
        .get_ptr_mut(peak_index(slot, generation))
        .ok_or(Drop::CountersMapFull)?;
    Ok(Some(Proc {
        tgid,
        generation,
        counters,
        peak,
    }))
}

/// Adds `bytes` (wrapping: a release adds its negation) to the process's
/// live bytes and raises the high-water mark when they pass it. The add is
/// a compare-and-swap (BPF's fetching add needs a newer instruction set than
/// this object is built for), so each CPU knows the exact total it made;
/// under contention it is retried, then made blind (the mark may then miss
/// that one step, never the sum).
#[inline(always)]
pub fn move_live(p: &Proc, bytes: u64, rising: bool) {
    // SAFETY: `p.peak` points into an array map value, valid and aligned.
    unsafe {
        let live_ptr = &raw mut (*p.peak).live;
        let mut live = None;
        for _ in 0..4 {
            let old = core::ptr::read_volatile(live_ptr);
            let new = old.wrapping_add(bytes);
            if atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(live_ptr, old, new).1 {
                live = Some(new);
                break;
            }
        }
        let Some(live) = live else {
            add_shared(live_ptr, bytes);
            return;
        };
        if !rising {
            return;
        }
        for _ in 0..3 {
            let mark = core::ptr::read_volatile(&raw const (*p.peak).peak);
            if live <= mark {
                return;
            }
            if atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                &raw mut (*p.peak).peak,
                mark,
                live,
            )
            .1
            {
                core::ptr::write_volatile(&raw mut (*p.peak).peak_ns, coarse_now());
                return;
            }
        }
    }
}

/// `-EEXIST` as map helpers return it.
pub const EEXIST: i32 = -17;

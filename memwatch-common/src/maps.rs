//! Names of maps and programs, so the loader and the eBPF object cannot drift.

/// Live allocations: [`crate::alloc::AllocKey`] → [`crate::alloc::AllocRecord`].
pub const LIVE: &str = "LIVE";
/// The lock-free table in front of `LIVE` (array, mmapable):
/// [`crate::live_table::LiveSlot`].
pub const LIVE_TABLE: &str = "LIVE_TABLE";
/// A global (u32) set at load: the live table's slot count minus one.
pub const LIVE_TABLE_MASK: &str = "LIVE_TABLE_MASK";
/// Allocator call state per thread (task-local storage): [`crate::alloc::CallEntry`].
pub const CALLS: &str = "CALLS";
/// Per-process counters (per-CPU array), at [`crate::alloc::counter_index`].
pub const COUNTERS: &str = "COUNTERS";
pub const PEAKS: &str = "PEAKS";
/// Allocations per (process generation, stack), cumulative.
pub const STACK_TOTALS: &str = "STACK_TOTALS";
/// Each CPU's cache in front of it.
pub const STACK_TOTALS_CACHE: &str = "STACK_TOTALS_CACHE";
/// Processes being tracked: an array indexed by tgid (sized to pid_max) of
/// [`crate::alloc::Tracked`]. An array, so that the lookup on every probe
/// hit is inlined by the verifier.
pub const TRACKED: &str = "TRACKED";
/// User stacks by content hash: u64 → [`crate::stack::StackFrames`].
pub const STACKS: &str = "STACKS";
/// Per-CPU scratch space for stack capture: entry 0 for the allocator
/// probes, 1 for the syscall tracepoints.
pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
/// Per-CPU loss counters indexed by [`crate::drop::Drop`].
pub const DROPS: &str = "DROPS";
/// Process lifecycle events for the daemon: [`crate::event::ProcEvent`].
pub const EVENTS: &str = "EVENTS";
/// The daemon's CLOCK_MONOTONIC, republished every
/// [`crate::time::CLOCK_TICK_NS`]: a single-entry array of u64.
pub const CLOCK: &str = "CLOCK";
/// A global (u8) set at load: nonzero when the kernel can preempt a running
/// program, so that per-CPU counters need atomic adds.
pub const ATOMIC_COUNTERS: &str = "ATOMIC_COUNTERS";
/// Read-only settings written by the daemon before load: [`crate::event::Settings`].
pub const SETTINGS: &str = "SETTINGS";
/// Address-space growth by (process, stack), host-wide (LRU):
/// [`crate::growth::GrowthKey`] → [`crate::growth::GrowthValue`].
pub const GROWTH: &str = "GROWTH";
/// Each process's last brk, to measure brk growth (LRU): tgid → u64.
pub const BRK_LAST: &str = "BRK_LAST";

/// Unwind rows of every loaded object, in one mmapable array:
/// [`crate::unwind::UnwindRow`].
pub const UNWIND_ROWS: &str = "UNWIND_ROWS";
/// Processes whose stacks are walked by call-frame information: tgid →
/// [`crate::unwind::ProcUnwind`].
pub const UNWIND_PROCS: &str = "UNWIND_PROCS";
/// Per-CPU counters of stack walks by method and end, and rule-cache hits
/// and misses: see [`crate::unwind::stat_index`].
pub const UNWIND_STATS: &str = "UNWIND_STATS";
/// A global (u8) set at load: 0 when stacks are walked by frame pointers
/// only.
pub const UNWIND_ENABLED: &str = "UNWIND_ENABLED";
/// A global set at load: [`crate::unwind::KernelOffsets`].
pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";

pub const PROG_ALLOC_ENTER: &str = "alloc_enter";
pub const PROG_ALLOC_EXIT: &str = "alloc_exit";
pub const PROG_FREE_ENTER: &str = "free_enter";
pub const PROG_EXEC: &str = "sched_process_exec";
pub const PROG_EXIT: &str = "sched_process_exit";
pub const PROG_FORK: &str = "task_newtask";
pub const PROG_OOM: &str = "oom_mark_victim";
pub const PROG_SIGNAL: &str = "signal_generate";
pub const PROG_MMAP: &str = "sys_enter_mmap";
pub const PROG_BRK: &str = "sys_exit_brk";
pub const PROG_MREMAP: &str = "sys_enter_mremap";
pub const PROG_GROWTH_RECORD: &str = "growth_record";
/// A program array holding `growth_record`, which the growth tracepoints
/// tail-call.
pub const GROWTH_TAIL: &str = "GROWTH_TAIL";

/// Default capacities; the daemon resizes them from its config before load.
pub const DEFAULT_LIVE_ENTRIES: u32 = 1 << 20;
pub const DEFAULT_LIVE_TABLE_SLOTS: u32 = 1 << 18;
pub const DEFAULT_COUNTERS_ENTRIES: u32 = 1 << 12;
pub const DEFAULT_TRACKED_ENTRIES: u32 = 1 << 15;
pub const DEFAULT_STACKS_ENTRIES: u32 = 1 << 15;
pub const EVENTS_BYTES: u32 = 1 << 18;
pub const DEFAULT_GROWTH_ENTRIES: u32 = 1 << 14;
pub const DEFAULT_UNWIND_ROWS: u32 = 1 << 20;
pub const DEFAULT_UNWIND_PROCS: u32 = 1 << 10;

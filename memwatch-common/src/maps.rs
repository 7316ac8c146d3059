//! Names of maps and programs, so the loader and the eBPF object cannot drift.

/// Live allocations: [`crate::alloc::AllocKey`] → [`crate::alloc::AllocRecord`].
pub const LIVE: &str = "LIVE";
/// Allocator call state per thread (task-local storage): [`crate::alloc::CallEntry`].
pub const CALLS: &str = "CALLS";
/// Per-process counters (per-CPU array), at [`crate::alloc::counter_index`].
pub const COUNTERS: &str = "COUNTERS";
/// Processes being tracked: an array indexed by tgid (sized to pid_max) of
/// [`crate::alloc::Tracked`]. An array, so that the lookup on every probe
/// hit is inlined by the verifier.
pub const TRACKED: &str = "TRACKED";
/// User stacks by content hash: u64 → [`crate::stack::StackFrames`].
pub const STACKS: &str = "STACKS";
/// Per-CPU scratch space for stack capture.
pub const STACK_SCRATCH: &str = "STACK_SCRATCH";
/// Per-CPU loss counters indexed by [`crate::drop::Drop`].
pub const DROPS: &str = "DROPS";
/// Process lifecycle events for the daemon: [`crate::event::ProcEvent`].
pub const EVENTS: &str = "EVENTS";
/// Read-only settings written by the daemon before load: [`crate::event::Settings`].
pub const SETTINGS: &str = "SETTINGS";

pub const PROG_ALLOC_ENTER: &str = "alloc_enter";
pub const PROG_ALLOC_EXIT: &str = "alloc_exit";
pub const PROG_FREE_ENTER: &str = "free_enter";
pub const PROG_EXEC: &str = "sched_process_exec";
pub const PROG_EXIT: &str = "sched_process_exit";
pub const PROG_FORK: &str = "task_newtask";

/// Default capacities; the daemon resizes them from its config before load.
pub const DEFAULT_LIVE_ENTRIES: u32 = 1 << 20;
pub const DEFAULT_COUNTERS_ENTRIES: u32 = 1 << 12;
pub const DEFAULT_TRACKED_ENTRIES: u32 = 1 << 15;
pub const DEFAULT_STACKS_ENTRIES: u32 = 1 << 15;
pub const EVENTS_BYTES: u32 = 1 << 18;

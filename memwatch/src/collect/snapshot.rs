//! What one scan saw: the data /leaks and /metrics are served from.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use memwatch_common::{alloc::ProcCounters, cookie::Family, drop::Drop};

use crate::{
    collect::rates::Rates,
    kernel::ProgramStats,
    process::{AttachFailure, ProbeSummary, Selection},
    symbolize::Frame,
};

/// One live allocation as read from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveAlloc {
    pub stack_id: u64,
    pub size: u64,
    pub timestamp_ns: u64,
    pub kind: u8,
    pub family: u8,
}

#[derive(Debug, Clone)]
pub struct ProcessSnapshot {
    pub pid: u32,
    pub generation: u32,
    pub comm: String,
    pub exe: String,
    pub exe_name: String,
    pub cmdline: String,
    pub selection: Selection,
    pub tracked_since_unix: f64,
    /// Since tracking began (this generation), summed over allocator families.
    pub counters: ProcCounters,
    pub rates: Rates,
    pub allocations: Vec<LiveAlloc>,
    /// Symbolized frames by stack id; a missing id means the stack is not
    /// available (capture failed, or the kernel's copy was dropped).
    pub stacks: HashMap<u64, Arc<Vec<Frame>>>,
    pub probes: Vec<ProbeSummary>,
}

/// Counters of an executable name, across all its processes ever tracked.
#[derive(Debug, Clone, Default)]
pub struct GroupTotals {
    pub exe_name: String,
    pub counters: ProcCounters,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub processes: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// False until the first scan has completed.
    pub ready: bool,
    pub taken_at_ns: u64,
    pub taken_at_unix: f64,
    pub scan_seconds: f64,
    pub processes: Vec<ProcessSnapshot>,
    /// Kernel-side losses by reason, since memwatch started.
    pub drops: Vec<(Drop, u64)>,
    /// Cumulative counters per allocator family, exited processes included.
    pub families: Vec<(Family, ProcCounters)>,
    pub groups: Vec<GroupTotals>,
    pub failures: Vec<AttachFailure>,
    pub attach_failures_total: u64,
    pub probes_attached: usize,
    pub live_entries: usize,
    pub live_capacity: u32,
    pub stack_entries: usize,
    pub stack_capacity: u32,
    pub stacks_unavailable: u64,
    pub symbol_cache_entries: usize,
    pub programs: Vec<ProgramStats>,
    pub bpf_stats_enabled: bool,
    /// Whether probes go to emulated instructions (else to entries).
    pub placement: bool,
}

/// Probe sites in use, one per binary and function, with how many tracked
/// processes use each.
pub fn probe_sites(processes: &[ProcessSnapshot]) -> Vec<(ProbeSummary, usize)> {
    let mut out: Vec<(ProbeSummary, usize)> = Vec::new();
    for p in processes {
        for s in &p.probes {
            match out
                .iter_mut()
                .find(|(o, _)| o.module == s.module && o.function == s.function && o.build_id == s.build_id)
            {
                Some((_, n)) => *n += 1,
                None => out.push((s.clone(), 1)),
            }
        }
    }
    out.sort_by(|a, b| (&a.0.module, a.0.entry_offset).cmp(&(&b.0.module, b.0.entry_offset)));
    out
}

/// The latest snapshot, swapped in whole after each scan.
#[derive(Clone, Default)]
pub struct SharedSnapshot(Arc<RwLock<Arc<Snapshot>>>);

impl SharedSnapshot {
    pub fn get(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, s: Snapshot) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }
}

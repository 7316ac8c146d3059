//! What one scan saw: the data /leaks and /metrics are served from.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use memwatch_common::{alloc::ProcCounters, cookie::Family, drop::Drop};

pub use super::live_alloc::LiveAlloc;
use super::{oom::OomKill, rates::Rates};
use crate::{
    kernel::ProgramStats,
    process::{AttachFailure, Identity, ProbeSummary, Selection},
    report::StackReport,
    symbolize::{Frame, Stack, Walk},
    watch::{
        GrowthStack, Watched,
        alert::Alert,
        escalation::Status as EscalationStatus,
        estimator::{Estimate, Verdict},
        procmem::Memory,
    },
};

#[derive(Debug, Clone)]
pub struct ProcessSnapshot {
    pub id: Identity,
    pub generation: u32,
    pub exe_name: String,
    pub selection: Selection,
    pub tracked_since_unix: f64,
    /// Since tracking began (this generation), summed over allocator families.
    pub counters: ProcCounters,
    pub rates: Rates,
    pub allocations: Vec<LiveAlloc>,
    /// Symbolized frames by stack id; a missing id means the stack is not
    /// available (capture failed, or the kernel's copy was dropped).
    pub stacks: HashMap<u64, Arc<Stack>>,
    pub probes: Vec<ProbeSummary>,
    /// How each executable mapping's code is unwound.
    pub unwind: Vec<crate::unwind::ModuleUnwind>,
    /// What memwatch sees of the process's CPython, if it runs one.
    pub python: Option<crate::python::Sight>,
    /// Live bytes per stack at earlier scans, oldest first.
    pub history: Vec<Arc<super::history::Reading>>,
    /// Its high-water mark, and the stacks live at the scan nearest it.
    pub peak: Option<PeakSnapshot>,
    /// Every allocation since tracking began, by stack id.
    pub alloc_profile: Arc<HashMap<u64, super::profile::StackAllocs>>,
}

/// A process's peak: the kernel's exact mark of its tracked live bytes
/// (allocated − freed, lost ones included), and what held them as the scan
/// that saw the most live bytes found it.
#[derive(Debug, Clone)]
pub struct PeakSnapshot {
    pub bytes: u64,
    pub at_unix: f64,
    pub view: Arc<PeakView>,
}

/// The live allocations by stack at the scan with the most live bytes.
#[derive(Debug, Clone, Default)]
pub struct PeakView {
    pub taken_unix: f64,
    pub aggregated: super::aggregate::Aggregated,
    pub stacks: HashMap<u64, Arc<Stack>>,
}

impl ProcessSnapshot {
    /// The frames of a stack, empty when it is not available.
    pub fn frames(&self, stack_id: u64) -> Vec<Frame> {
        self.stacks.get(&stack_id).map(|s| s.frames.clone()).unwrap_or_default()
    }

    /// How the stack was walked (a default when it is not available).
    pub fn walk(&self, stack_id: u64) -> Walk {
        self.stacks.get(&stack_id).map(|s| s.walk).unwrap_or_default()
    }
}

/// A process whose exact tracking ended (untracked, its track's time up,
/// or exited), as the last scan before saw it: its stacks stay in /leaks.
#[derive(Debug, Clone)]
pub struct EndedProcess {
    pub id: Identity,
    pub selection: Selection,
    pub tracked_since_unix: f64,
    pub ended_unix: f64,
    pub why: String,
    /// As of the scan at `seen_unix`.
    pub seen_unix: f64,
    pub counters: ProcCounters,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub stack_count: usize,
    /// The largest, at most `report.stacks_per_process`.
    pub stacks: Vec<StackReport>,
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
    pub exited_before_attach_total: u64,
    pub probes_attached: usize,
    /// Records in the `LIVE` hash map (allocations whose table slot was taken).
    pub live_entries: usize,
    pub live_capacity: u32,
    /// Records in the lock-free live table in front of it.
    pub live_table_entries: usize,
    pub live_table_capacity: u32,
    pub stack_entries: usize,
    pub stack_capacity: u32,
    pub stacks_unavailable: u64,
    pub symbol_cache_entries: usize,
    pub programs: Vec<ProgramStats>,
    pub bpf_stats_enabled: bool,
    /// Whether probes go to emulated instructions (else to entries).
    pub placement: bool,
    /// Host-wide watching: suspects (alerted or escalated processes), the
    /// process groups, and the watcher's own counts.
    pub watch: WatchSnapshot,
    pub unwind: UnwindSnapshot,
    /// The selections in force.
    pub tracks: Vec<crate::control::Track>,
    /// Processes whose tracking ended, newest first (bounded).
    pub ended: Vec<Arc<EndedProcess>>,
    /// OOM-kill post-mortems, newest first (bounded by `oom.keep`).
    pub oom: Vec<Arc<OomKill>>,
    /// OOM kills seen since memwatch started: [cgroup, global, systemd-oomd].
    pub oom_kills_total: [u64; 3],
}

/// Stack walking: the tables loaded and the kernel's walk counters.
#[derive(Debug, Clone, Default)]
pub struct UnwindSnapshot {
    pub enabled: bool,
    pub totals: crate::unwind::UnwindTotals,
    /// `UNWIND_STATS`, summed over CPUs (None when it could not be read).
    pub stats: Option<[u64; memwatch_common::unwind::STATS_LEN as usize]>,
}

#[derive(Debug, Clone, Default)]
pub struct WatchSnapshot {
    pub enabled: bool,
    pub watched_processes: usize,
    pub suspects: Vec<SuspectSnapshot>,
    pub groups: Vec<HostGroup>,
    pub alerts_fired_total: u64,
    pub alerts_resolved_total: u64,
    pub escalations_running: usize,
    /// Ended escalations by [`crate::watch::escalation::Outcome`].
    pub escalation_outcomes: [u64; 4],
    pub sample_seconds: f64,
    /// Every process as last sampled (the host view, `/processes`).
    pub processes: Vec<HostProcess>,
}

/// A process as host-wide sampling last saw it, with its recent heap.
#[derive(Debug, Clone)]
pub struct HostProcess {
    pub id: Identity,
    pub memory: Memory,
    pub verdict: Verdict,
    pub rate: f64,
    pub alert: Alert,
    /// Listed as a suspect (an alert, an escalation or its evidence).
    pub suspect: bool,
    /// Its heap at the samples kept, oldest first: (Unix seconds, bytes).
    pub heap_history: Vec<(f64, u64)>,
}

impl HostProcess {
    /// `w` as sampled; `unix_offset` turns the samples' monotonic seconds
    /// into Unix seconds.
    pub fn of(w: &Watched, unix_offset: f64) -> Self {
        HostProcess {
            id: w.identity(),
            memory: w.memory,
            verdict: w.estimate.verdict,
            rate: w.estimate.rate,
            alert: w.alert,
            suspect: SuspectSnapshot::listed(w),
            heap_history: w.curve().into_iter().map(|(t, b)| (t + unix_offset, b)).collect(),
        }
    }
}

/// A process the detector flagged, now or recently, with its evidence.
#[derive(Debug, Clone)]
pub struct SuspectSnapshot {
    pub id: Identity,
    pub memory: Memory,
    pub estimate: Estimate,
    pub alert: Alert,
    pub leaking_since: Option<f64>,
    pub escalation: Option<EscalationStatus>,
    pub evidence: Vec<StackReport>,
    pub growth: Vec<GrowthStack>,
    pub exited: bool,
}

/// All processes of one executable name and unit, host-wide.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostGroup {
    pub exe_name: String,
    pub unit: String,
    pub processes: usize,
    pub resident_bytes: u64,
    pub anon_bytes: u64,
    /// Sum of the growth rates of its growing or leaking processes.
    pub growth_bytes_per_second: f64,
    pub pending: usize,
    pub firing: usize,
}

impl HostGroup {
    /// Adds another group's processes to this one.
    pub fn absorb(&mut self, g: &HostGroup) {
        self.processes += g.processes;
        self.resident_bytes += g.resident_bytes;
        self.anon_bytes += g.anon_bytes;
        self.growth_bytes_per_second += g.growth_bytes_per_second;
        self.pending += g.pending;
        self.firing += g.firing;
    }
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

impl SuspectSnapshot {
    pub fn of(w: &Watched) -> Self {
        SuspectSnapshot {
            id: w.identity(),
            memory: w.memory,
            estimate: w.estimate.clone(),
            alert: w.alert,
            leaking_since: w.leaking_since,
            escalation: w.escalation.clone(),
            evidence: w.evidence.clone(),
            growth: w
                .growth
                .iter()
                .take(super::stack_report::GROWTH_STACKS)
                .cloned()
                .collect(),
            exited: w.exited,
        }
    }

    /// Whether the report lists it: alerted now or recently, or escalated.
    pub fn listed(w: &Watched) -> bool {
        !matches!(w.alert, Alert::Inactive)
            || matches!(
                w.escalation,
                Some(EscalationStatus::Running { .. } | EscalationStatus::Done { .. })
            )
    }
}

/// Sums watched processes by (executable name, unit or container).
pub fn host_groups<'a>(procs: impl Iterator<Item = &'a Watched>) -> Vec<HostGroup> {
    let mut groups: HashMap<(String, String), HostGroup> = HashMap::new();
    for w in procs {
        let unit = w.unit().unwrap_or("").to_string();
        let g = groups.entry((w.exe_name(), unit.clone())).or_insert_with(|| HostGroup {
            exe_name: w.exe_name(),
            unit,
            ..Default::default()
        });
        g.processes += 1;
        g.resident_bytes += w.memory.rss;
        g.anon_bytes += w.memory.anon;
        if matches!(w.estimate.verdict, Verdict::Leak | Verdict::Growing) && w.estimate.rate > 0.0 {
            g.growth_bytes_per_second += w.estimate.rate;
        }
        match w.alert {
            Alert::Pending { .. } => g.pending += 1,
            Alert::Firing { .. } => g.firing += 1,
            _ => {}
        }
    }
    groups.into_values().collect()
}

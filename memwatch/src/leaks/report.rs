//! The `/leaks` report as served: what a process, a suspect and their
//! stacks look like in JSON (and, through `text`, as a table).

use serde::Serialize;

use crate::report::{GrowthStackReport, StackReport};
use crate::{
    collect::rates::Rates,
    process::{Identity, Selection},
    watch::{
        alert::Alert,
        escalation::Status as EscalationStatus,
        estimator::{Verdict, WindowEstimate},
    },
};

#[derive(Debug, Serialize)]
pub struct LeaksReport {
    /// When the data was read from the kernel (Unix seconds).
    pub snapshot_unix: f64,
    pub snapshot_age_seconds: f64,
    pub min_age_seconds: f64,
    /// "now", or "peak" with `?at=peak`: stacks as of each process's peak.
    pub at: &'static str,
    /// "live", or "allocated" with `?sort=allocated`: stacks ranked by what
    /// they allocated since tracking began.
    pub sort: &'static str,
    /// Processes the host-wide detector flagged (firing alerts first), with
    /// their evidence.
    pub suspects: Vec<SuspectReport>,
    /// Processes tracked exactly (by --pid, --exe, or escalation).
    pub processes: Vec<ProcessReport>,
    /// Processes whose exact tracking ended (untracked, their track's time
    /// up, or exited), newest first, as the last scan before saw them.
    pub ended: Vec<ProcessReport>,
}

#[derive(Debug, Serialize)]
pub struct SuspectReport {
    #[serde(flatten)]
    pub id: Identity,
    pub exited: bool,
    pub alert: Alert,
    pub growth: GrowthReport,
    /// Address-space growth by stack (mmap, brk, mremap), from before any
    /// escalation; frames past uninstrumented libraries may be missing.
    pub growth_stacks: Vec<GrowthStackReport>,
    pub escalation: Option<EscalationStatus>,
    /// Live allocations by stack at the end of exact tracking, largest first.
    pub stacks: Vec<StackReport>,
}

#[derive(Debug, Serialize)]
pub struct GrowthReport {
    pub verdict: Verdict,
    pub rate_bytes_per_second: f64,
    pub confidence: f64,
    /// How long the leak has been seen (0 when it is not).
    pub duration_seconds: f64,
    /// Anonymous memory, resident and swapped.
    pub heap_bytes: u64,
    pub resident_bytes: u64,
    pub windows: Vec<WindowEstimate>,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    #[serde(flatten)]
    pub id: Identity,
    pub selection: Selection,
    pub tracked_since_unix: f64,
    /// Live bytes and allocations (those at least `min_age` old).
    pub live_bytes: u64,
    pub live_allocations: u64,
    #[serde(flatten)]
    pub rates: Rates,
    pub totals: Totals,
    /// Distinct stacks with live allocations, before `limit`.
    pub stack_count: usize,
    pub stacks: Vec<StackReport>,
    /// In a CPython process: its version and what memwatch sees of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<crate::python::Sight>,
    /// With `?since=`: the change of the whole live heap over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<WindowGrowth>,
    /// Its high-water mark since tracking began; with `?at=peak`, `stacks`,
    /// `live_bytes` and `live_allocations` are those of the scan nearest it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<PeakReport>,
    /// Tracked live bytes at the scans kept for `?since=` (thinning with
    /// age, up to an hour), then now: [Unix seconds, bytes], oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub live_history: Vec<(f64, u64)>,
    /// When and why its tracking ended (in `ended` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<TrackingEnded>,
}

/// A process's peak: exact from the kernel, and the scan that saw the most.
#[derive(Debug, Serialize)]
pub struct PeakReport {
    /// Tracked live bytes at the high-water mark (allocated − freed,
    /// allocations no store had room for included).
    pub bytes: u64,
    pub at_unix: f64,
    /// The scan whose stacks stand for the peak: when, how much it saw
    /// live, and how far from the mark it was.
    pub stacks_seen_unix: f64,
    pub stacks_seen_bytes: u64,
    pub seconds_from_peak: f64,
}

#[derive(Debug, Serialize)]
pub struct TrackingEnded {
    pub at_unix: f64,
    pub why: String,
    /// The scan its figures and stacks are from.
    pub seen_unix: f64,
}

/// Growth over a window, from the reading kept closest before its start.
#[derive(Debug, Serialize)]
pub struct WindowGrowth {
    /// The reading compared with, and the window actually covered (at least
    /// the one asked for, when memwatch has tracked the process that long).
    pub since_unix: f64,
    pub window_seconds: f64,
    pub growth_bytes: i64,
    pub growth_allocations: i64,
    /// Frees of blocks allocated before tracking began, in the window, and
    /// what they released (estimated from glibc's chunk headers; 0 where
    /// the allocator keeps no size: see /probes).
    pub untracked_frees: u64,
    pub untracked_freed_bytes: u64,
    /// The heap's growth less what the untracked frees released: what the
    /// process really grew by.
    pub net_growth_bytes: i64,
}

/// Counts since tracking began.
#[derive(Debug, Serialize)]
pub struct Totals {
    pub allocations: u64,
    pub frees: u64,
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
    pub untracked_frees: u64,
    /// What the untracked frees released (estimated from glibc's chunk
    /// headers; 0 where the allocator keeps no size).
    pub untracked_freed_bytes: u64,
    /// Allocations live in the process that no store had room for:
    /// allocated - freed - lost = live, in count and in bytes.
    pub lost_allocations: u64,
    pub lost_bytes: u64,
}

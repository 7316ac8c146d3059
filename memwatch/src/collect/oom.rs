//! OOM-kill post-mortems. When the kernel's OOM killer marks a victim
//! (`oom:mark_victim`, for a cgroup's limit or the host's), the collector
//! keeps what memwatch knew of it: who and where it was, its cgroup's
//! limit and usage, its memory over the last minutes (host-wide sampling),
//! whether it was a suspect, and the stacks that held its memory — live
//! ones if it was tracked, address-space growth stacks otherwise.
//!
//! The post-mortem's record; `oom_victim` takes it.

use serde::Serialize;

use crate::{
    process::{Identity, memcg},
    report::{GrowthStackReport, StackReport},
    watch::{alert::Alert, estimator::Verdict},
};

#[derive(Debug, Clone, Serialize)]
pub struct OomKill {
    #[serde(flatten)]
    pub id: Identity,
    pub killed_unix: f64,
    /// "cgroup" when its memory cgroup's limit was reached, "global" for
    /// the host's memory, "systemd-oomd" when systemd-oomd killed it.
    pub constraint: &'static str,
    /// Its memory cgroup at the kill (None: not readable any more).
    pub cgroup: Option<memcg::MemoryLimits>,
    /// Resident and anonymous bytes at the last sample before the kill.
    pub resident_bytes: u64,
    pub heap_bytes: u64,
    /// Its heap (anonymous memory and swap) over the minutes before:
    /// (Unix seconds, bytes), oldest first.
    pub curve: Vec<(f64, u64)>,
    /// What host-wide detection thought of it.
    pub suspect: Option<SuspectVerdict>,
    /// Tracked exactly: its live allocations by stack at the kill.
    pub tracked: bool,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub stacks: Vec<StackReport>,
    /// Not tracked: its address-space growth by stack.
    pub growth_stacks: Vec<GrowthStackReport>,
    /// A Python process's last census (the periodic one), if one was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python_census: Option<crate::python::latest::LatestCensus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SuspectVerdict {
    pub alert: Alert,
    pub verdict: Verdict,
    pub rate_bytes_per_second: f64,
    pub confidence: f64,
}

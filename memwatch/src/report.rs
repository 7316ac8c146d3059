//! The records reports show of a stack: /leaks, /oom, an escalation's
//! evidence and the watcher's gone suspects. Plain data below both collect
//! (which builds them) and watch (which keeps evidence), so that neither
//! imports the other for them.

use serde::Serialize;

use crate::symbolize::{Frame, WalkReport};

#[derive(Debug, Clone, Serialize)]
pub struct StackReport {
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub oldest_age_seconds: f64,
    /// The allocator function called (malloc, calloc, …) and its family.
    pub call: &'static str,
    pub allocator: &'static str,
    /// Innermost first: frame 0 is the allocator's direct caller. Empty when
    /// the stack could not be captured.
    pub frames: Vec<Frame>,
    #[serde(flatten)]
    pub walk: WalkReport,
    /// With `?since=`: the change in live bytes and allocations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_allocations: Option<i64>,
    /// Of its growth (or, in an escalation's evidence, of its live bytes),
    /// what replaced blocks freed untracked (see `collect::replacement`), and the
    /// rest: its net growth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacing_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_growth_bytes: Option<i64>,
    /// The allocation profile: allocations from this stack since tracking
    /// began, freed or not, and those freed before the next scan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Allocated>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Allocated {
    pub allocations: u64,
    pub bytes: u64,
    pub temporary_allocations: u64,
    pub temporary_bytes: u64,
}

/// An address-space growth stack (mmap, brk, mremap) of a process memwatch
/// watches host-wide; frames past uninstrumented libraries may be missing.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthStackReport {
    pub bytes: u64,
    pub calls: u64,
    pub frames: Vec<Frame>,
    #[serde(flatten)]
    pub walk: WalkReport,
}

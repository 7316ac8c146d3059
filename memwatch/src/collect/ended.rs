//! A process whose exact tracking ended, kept from the last scan that saw
//! it. Built here, above both the snapshot and its stack reports, so that
//! the snapshot's data does not import its readers.

use super::{
    aggregate::aggregate,
    snapshot::{EndedProcess, ProcessSnapshot},
    stack_report::stack_reports,
};

impl EndedProcess {
    pub fn of(p: &ProcessSnapshot, seen_unix: f64, why: String, limit: usize) -> Self {
        let agg = aggregate(&p.allocations, None);
        EndedProcess {
            id: p.id.clone(),
            selection: p.selection.clone(),
            tracked_since_unix: p.tracked_since_unix,
            ended_unix: crate::process::unix_now(),
            why,
            seen_unix,
            counters: p.counters,
            live_bytes: agg.live_bytes,
            live_allocations: agg.live_allocations,
            stack_count: agg.stacks.len(),
            stacks: stack_reports(p, &agg, limit, crate::clock::monotonic_ns()),
        }
    }
}

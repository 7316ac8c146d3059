//! The `/leaks` report: tracked processes and their live allocations grouped
//! by stack, largest first. Built from a [`Snapshot`] by pure functions.

pub mod frames;
pub mod host;
pub mod oom;
pub mod query;
pub mod report;
pub mod text;

pub use crate::collect::stack_report::{
    Allocated, GrowthStackReport, StackReport, allocated_stacks, stack_reports, stack_reports_from,
};
use crate::{
    collect::{
        aggregate::{Aggregated, StackAggregate, aggregate},
        history,
        rates::Rates,
        replacement,
        snapshot::{EndedProcess, ProcessSnapshot, Snapshot, SuspectSnapshot},
    },
    watch::alert::Alert,
};
pub use query::{Format, LeaksQuery};
pub use report::*;

fn peak_report(p: &crate::collect::snapshot::PeakSnapshot) -> PeakReport {
    PeakReport {
        bytes: p.bytes,
        at_unix: p.at_unix,
        stacks_seen_unix: p.view.taken_unix,
        stacks_seen_bytes: p.view.aggregated.live_bytes,
        seconds_from_peak: (p.view.taken_unix - p.at_unix).abs(),
    }
}

/// The counters as reported; `live` (the process's live blocks) tells how
/// glibc rounded its requests, for the untracked frees' estimate.
fn totals(c: &memwatch_common::alloc::ProcCounters, live: &[crate::collect::snapshot::LiveAlloc]) -> Totals {
    Totals {
        allocations: c.allocations,
        frees: c.frees,
        allocated_bytes: c.allocated_bytes,
        freed_bytes: c.freed_bytes,
        untracked_frees: c.untracked_frees,
        untracked_freed_bytes: replacement::untracked_request_bytes(
            c.untracked_freed_usable_bytes,
            c.untracked_frees,
            live,
        ),
        lost_allocations: c.lost_allocations,
        lost_bytes: c.lost_bytes,
    }
}

fn ended_report(e: &EndedProcess, limit: usize) -> ProcessReport {
    ProcessReport {
        id: e.id.clone(),
        selection: e.selection.clone(),
        tracked_since_unix: e.tracked_since_unix,
        live_bytes: e.live_bytes,
        live_allocations: e.live_allocations,
        rates: Rates::default(),
        totals: totals(&e.counters, &[]),
        stack_count: e.stack_count,
        stacks: e.stacks.iter().take(limit).cloned().collect(),
        python: None,
        growth: None,
        peak: None,
        live_history: Vec::new(),
        ended: Some(TrackingEnded {
            at_unix: e.ended_unix,
            why: e.why.clone(),
            seen_unix: e.seen_unix,
        }),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum LeaksError {
    NotTracked { pid: u32, tracked: Vec<u32> },
}

impl std::fmt::Display for LeaksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaksError::NotTracked { pid, tracked } if tracked.is_empty() => {
                write!(f, "process {pid} is not tracked (no process is)")
            }
            LeaksError::NotTracked { pid, tracked } => {
                let list: Vec<String> = tracked.iter().map(u32::to_string).collect();
                write!(f, "process {pid} is not tracked (tracked: {})", list.join(", "))
            }
        }
    }
}

fn suspect_report(s: &SuspectSnapshot, limit: usize, now_unix: f64) -> SuspectReport {
    SuspectReport {
        id: s.id.clone(),
        exited: s.exited,
        alert: s.alert,
        growth: GrowthReport {
            verdict: s.estimate.verdict,
            rate_bytes_per_second: s.estimate.rate,
            confidence: s.estimate.confidence,
            duration_seconds: s.leaking_since.map_or(0.0, |t| (now_unix - t).max(0.0)),
            heap_bytes: s.memory.heap(),
            resident_bytes: s.memory.rss,
            windows: s.estimate.windows.clone(),
        },
        growth_stacks: s.growth.iter().take(limit).map(GrowthStackReport::of).collect(),
        escalation: s.escalation.clone(),
        stacks: s.evidence.iter().take(limit).cloned().collect(),
    }
}

/// The stacks with the most net growth since `earlier` first, with their
/// growth and what of it replaced blocks freed untracked; and the growth of
/// the whole heap.
fn growth_reports(
    p: &ProcessSnapshot,
    agg: &Aggregated,
    earlier: &history::Reading,
    (snapshot_ns, now_ns): (u64, u64),
    limit: usize,
) -> (Vec<StackReport>, WindowGrowth) {
    let untracked_frees = p
        .counters
        .untracked_frees
        .saturating_sub(earlier.counters.untracked_frees);
    let untracked_bytes = replacement::untracked_request_bytes(
        p.counters
            .untracked_freed_usable_bytes
            .saturating_sub(earlier.counters.untracked_freed_usable_bytes),
        untracked_frees,
        &p.allocations,
    );
    let grown: Vec<_> = agg.stacks.iter().map(|s| (*s, earlier.change(s))).collect();
    let replaced = replacement::replacing(&grown.iter().map(|g| g.1.0).collect::<Vec<_>>(), untracked_bytes);
    let mut grown: Vec<_> = grown.into_iter().zip(replaced).collect();
    grown.sort_by(|a, b| {
        let net = |g: &((StackAggregate, (i64, i64)), u64)| g.0.1.0 - g.1 as i64;
        net(b)
            .cmp(&net(a))
            .then(b.0.1.0.cmp(&a.0.1.0))
            .then(b.0.0.live_bytes.cmp(&a.0.0.live_bytes))
    });
    grown.truncate(limit);
    let sorted = Aggregated {
        stacks: grown.iter().map(|g| g.0.0).collect(),
        ..Default::default()
    };
    let mut reports = stack_reports(p, &sorted, limit, now_ns);
    for (r, ((_, (bytes, count)), replacing)) in reports.iter_mut().zip(&grown) {
        r.growth_bytes = Some(*bytes);
        r.growth_allocations = Some(*count);
        r.replacing_bytes = Some(*replacing);
        r.net_growth_bytes = Some(bytes - *replacing as i64);
    }
    let (before_bytes, before_count) = earlier
        .stacks
        .values()
        .fold((0u64, 0u64), |(b, n), &(sb, sn)| (b + sb, n + sn));
    let growth_bytes = agg.live_bytes as i64 - before_bytes as i64;
    let window = WindowGrowth {
        since_unix: earlier.taken_unix,
        // Readings are the scans': the window ends at this snapshot's.
        window_seconds: snapshot_ns.saturating_sub(earlier.taken_ns) as f64 / 1e9,
        growth_bytes,
        growth_allocations: agg.live_allocations as i64 - before_count as i64,
        untracked_frees,
        untracked_freed_bytes: untracked_bytes,
        net_growth_bytes: growth_bytes - untracked_bytes as i64,
    };
    (reports, window)
}

/// Builds the report as of `now_ns` (CLOCK_MONOTONIC).
pub fn build(snapshot: &Snapshot, q: &LeaksQuery, now_ns: u64, now_unix: f64) -> Result<LeaksReport, LeaksError> {
    if let Some(pid) = q.pid
        && !snapshot.processes.iter().any(|p| p.id.pid == pid)
        && !snapshot.watch.suspects.iter().any(|s| s.id.pid == pid)
        && !snapshot.ended.iter().any(|e| e.id.pid == pid)
    {
        return Err(LeaksError::NotTracked {
            pid,
            tracked: snapshot.processes.iter().map(|p| p.id.pid).collect(),
        });
    }
    let min_age_ns = q.min_age.as_nanos().min(u64::MAX as u128) as u64;
    let cutoff = (min_age_ns > 0).then(|| now_ns.saturating_sub(min_age_ns));
    let mut processes: Vec<ProcessReport> = snapshot
        .processes
        .iter()
        .filter(|p| q.pid.is_none_or(|pid| pid == p.id.pid))
        .map(|p| {
            let peak_view = p.peak.as_ref().filter(|_| q.at_peak).map(|pk| &pk.view);
            let agg = match peak_view {
                Some(v) => v.aggregated.clone(),
                None if q.by_allocated => allocated_stacks(p, &aggregate(&p.allocations, None)),
                None => aggregate(&p.allocations, cutoff),
            };
            let since = q.since.map(|d| d.as_nanos().min(u64::MAX as u128) as u64);
            let earlier = since.and_then(|d| history::earlier(&p.history, snapshot.taken_at_ns, d));
            let (stacks, growth) = match (earlier, peak_view) {
                (_, Some(v)) => (stack_reports_from(&v.stacks, &agg, q.limit, now_ns), None),
                (Some(e), None) => {
                    let (stacks, g) = growth_reports(p, &agg, e, (snapshot.taken_at_ns, now_ns), q.limit);
                    (stacks, Some(g))
                }
                (None, None) => (stack_reports(p, &agg, q.limit, now_ns), None),
            };
            let c = &p.counters;
            ProcessReport {
                id: p.id.clone(),
                selection: p.selection.clone(),
                tracked_since_unix: p.tracked_since_unix,
                live_bytes: agg.live_bytes,
                live_allocations: agg.live_allocations,
                rates: p.rates,
                totals: totals(c, &p.allocations),
                stack_count: agg.stacks.len(),
                stacks,
                python: p.python.clone(),
                growth,
                peak: p.peak.as_ref().map(peak_report),
                live_history: p
                    .history
                    .iter()
                    .map(|r| (r.taken_unix, r.live_bytes()))
                    .chain([(snapshot.taken_at_unix, p.allocations.iter().map(|a| a.size).sum())])
                    .collect(),
                ended: None,
            }
        })
        .collect();
    let grown = |p: &ProcessReport| p.growth.as_ref().map_or(0, |g| g.net_growth_bytes);
    processes.sort_by(|a, b| {
        grown(b)
            .cmp(&grown(a))
            .then(b.live_bytes.cmp(&a.live_bytes))
            .then(a.id.pid.cmp(&b.id.pid))
    });
    let mut suspects: Vec<SuspectReport> = snapshot
        .watch
        .suspects
        .iter()
        .filter(|s| q.pid.is_none_or(|pid| pid == s.id.pid))
        .map(|s| suspect_report(s, q.limit, now_unix))
        .collect();
    let rank = |a: &Alert| match a {
        Alert::Firing { .. } => 0,
        Alert::Pending { .. } => 1,
        _ => 2,
    };
    suspects.sort_by(|a, b| {
        rank(&a.alert).cmp(&rank(&b.alert)).then(
            b.growth
                .rate_bytes_per_second
                .total_cmp(&a.growth.rate_bytes_per_second),
        )
    });
    let mut report = LeaksReport {
        snapshot_unix: snapshot.taken_at_unix,
        snapshot_age_seconds: (now_unix - snapshot.taken_at_unix).max(0.0),
        min_age_seconds: q.min_age.as_secs_f64(),
        at: if q.at_peak { "peak" } else { "now" },
        sort: if q.by_allocated { "allocated" } else { "live" },
        suspects,
        processes,
        ended: snapshot
            .ended
            .iter()
            .filter(|e| q.pid.is_none_or(|pid| pid == e.id.pid))
            .map(|e| ended_report(e, q.limit))
            .collect(),
    };
    report.show_frames(q.frames);
    Ok(report)
}

impl LeaksReport {
    /// Folds interpreter frames in every stack, or leaves them (`?frames=`).
    fn show_frames(&mut self, frames: frames::Frames) {
        let stacks = self
            .processes
            .iter_mut()
            .chain(&mut self.ended)
            .flat_map(|p| &mut p.stacks)
            .chain(self.suspects.iter_mut().flat_map(|s| &mut s.stacks));
        for s in stacks {
            frames.apply(&mut s.frames);
        }
        for g in self.suspects.iter_mut().flat_map(|s| &mut s.growth_stacks) {
            frames.apply(&mut g.frames);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;

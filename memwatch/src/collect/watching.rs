//! The collector's host-wide side: growth stacks of the sampler's suspects,
//! and escalating them to exact tracking under a budget. The watcher's lock
//! is held only to read or write its records, never while probes are
//! attached or detached: those can wait seconds on the kernel.

use std::collections::HashMap;

use super::{
    Collector,
    stack_report::{GROWTH_STACKS, net_stack_reports},
};
use crate::{
    clock::monotonic_ns,
    collect::aggregate::aggregate,
    process::{Selection, TrackError, unix_now},
    unwind::Reason,
    watch::{
        GrowthStack, Watcher,
        escalation::{self, Candidate, Outcome, Status},
    },
};

/// Stacks kept as evidence per escalation.
const EVIDENCE_STACKS: usize = 10;

/// What exact tracking found in an escalated suspect: its stacks with the
/// most live bytes net of replacement (all its live blocks are growth since
/// the escalation began).
fn evidence_of(p: &super::snapshot::ProcessSnapshot) -> Vec<crate::report::StackReport> {
    let untracked = super::replacement::untracked_request_bytes(
        p.counters.untracked_freed_usable_bytes,
        p.counters.untracked_frees,
        &p.allocations,
    );
    net_stack_reports(
        p,
        &aggregate(&p.allocations, None),
        untracked,
        EVIDENCE_STACKS,
        monotonic_ns(),
    )
}

/// Escalations running now.
pub(super) fn running(w: &Watcher) -> usize {
    w.iter()
        .filter(|w| matches!(w.escalation, Some(Status::Running { .. })))
        .count()
}

impl Collector {
    /// Refreshes suspects' growth stacks and escalates or ends escalations,
    /// from the sampler's latest verdicts.
    pub(super) fn act_on_suspects(&mut self) {
        if self.watcher.is_none() {
            return;
        }
        self.refresh_growth();
        self.escalate_suspects(unix_now());
    }

    /// Reads the kernel's growth records, forgets those of exited processes
    /// and symbolizes the top growth stacks of suspects.
    pub(super) fn refresh_growth(&mut self) {
        let Some(shared) = self.watcher.clone() else { return };
        let records = self.kernel.growth();
        let mut by_pid: HashMap<u32, Vec<GrowthStack>> = HashMap::new();
        let mut dead = Vec::new();
        let (suspects, missing) = {
            let mut watcher = shared.lock();
            for (k, v) in records {
                if watcher.get(k.tgid).is_some() {
                    by_pid.entry(k.tgid).or_default().push(GrowthStack {
                        stack_id: k.stack_id,
                        bytes: v.bytes,
                        calls: v.calls,
                        frames: None,
                    });
                } else {
                    dead.push(k);
                }
            }
            watcher.set_growth(by_pid);
            let suspects: Vec<u32> = watcher.iter().filter(|w| w.alert.is_suspect()).map(|w| w.pid).collect();
            let missing: Vec<(u32, u64)> = watcher
                .iter()
                .filter(|w| w.alert.is_suspect())
                .flat_map(|w| {
                    w.growth
                        .iter()
                        .take(GROWTH_STACKS)
                        .filter(|g| g.frames.is_none() && g.stack_id != 0)
                        .map(|g| (w.pid, g.stack_id))
                })
                .collect();
            (suspects, missing)
        };
        if !dead.is_empty() {
            self.kernel.delete_growth(&dead);
        }
        // Suspects' growth stacks are walked by CFI from now on.
        let unwind = &mut self.table.unwind;
        for &pid in &suspects {
            if !unwind.is_registered_for(pid, Reason::Suspect)
                && let Err(e) = unwind.register(&mut self.kernel.unwind, pid, Reason::Suspect)
            {
                tracing::debug!(pid, error = %e, "cannot load a suspect's unwind tables");
            }
        }
        for pid in unwind.registered_for(Reason::Suspect) {
            if !suspects.contains(&pid) {
                unwind.unregister(&mut self.kernel.unwind, pid, Reason::Suspect);
            }
        }
        let named: Vec<_> = missing
            .into_iter()
            .filter_map(|(pid, id)| Some((pid, id, self.symbolize_one(pid, id)?)))
            .collect();
        let mut watcher = shared.lock();
        for (pid, id, stack) in named {
            if let Some(g) = watcher
                .get_mut(pid)
                .and_then(|w| w.growth.iter_mut().find(|g| g.stack_id == id))
            {
                g.frames = Some(stack);
            }
        }
    }

    /// Starts exact tracking of new suspects the policy admits, and ends
    /// escalations whose window is over.
    fn escalate_suspects(&mut self, now: f64) {
        let Some(shared) = self.watcher.clone() else { return };
        let mut due = Vec::new();
        let mut candidates = Vec::new();
        for w in shared.lock().iter() {
            match &w.escalation {
                Some(Status::Running { until, .. }) if now >= *until => due.push((w.pid, Outcome::Completed, None)),
                Some(Status::Running { .. }) => {}
                _ if w.alert.is_suspect() => candidates.push(w.pid),
                _ => {}
            }
        }
        self.finish_escalations(due, true);
        for pid in candidates {
            let (comm, start_time, decision, done_before) = {
                let watcher = shared.lock();
                let Some(w) = watcher.get(pid) else { continue };
                // A done escalation is not redone until the cooldown has passed.
                let decision = escalation::admit(
                    &self.config.escalation,
                    &Candidate {
                        exe: &w.exe,
                        unit: w.unit(),
                        last_ended: w.last_escalation_end,
                        tracked: self.table.get(pid).is_some(),
                    },
                    running(&watcher),
                    now,
                );
                (
                    w.comm.clone(),
                    w.start_time,
                    decision,
                    matches!(w.escalation, Some(Status::Done { .. })),
                )
            };
            let status = match decision {
                Err(_) if done_before => continue,
                Err(reason) => Status::Skipped { reason },
                Ok(()) => match self.table.track(&mut self.kernel, pid, Selection::Suspect) {
                    Ok(()) => {
                        tracing::info!(pid, comm = %comm, window_seconds = self.config.escalation.window_seconds, "escalating a leak suspect to exact tracking");
                        Status::Running {
                            started: now,
                            until: now + self.config.escalation.window_seconds,
                        }
                    }
                    Err(e) => {
                        // An exit while attaching is no failure of memwatch's.
                        let outcome = if matches!(e, TrackError::NoProcess(_)) {
                            Outcome::Exited
                        } else {
                            tracing::warn!(pid, error = %e, "cannot escalate a suspect");
                            Outcome::Failed
                        };
                        Status::Done {
                            started: now,
                            ended: now,
                            outcome,
                        }
                    }
                },
            };
            let mut watcher = shared.lock();
            if let Status::Done { outcome, .. } = status {
                watcher.counts.escalation_outcomes[outcome as usize] += 1;
            }
            // The sampler may have seen the process go meanwhile.
            if let Some(w) = watcher.get_mut(pid).filter(|w| w.start_time == start_time) {
                if matches!(status, Status::Done { .. }) {
                    w.last_escalation_end = Some(now);
                }
                w.escalation = Some(status);
            }
        }
    }

    /// Ends escalations: keeps the leaking stacks exact tracking found, then
    /// detaches. With `rescan`, the maps are read afresh first (once for all);
    /// without, the snapshot of the scan just done is used.
    pub(super) fn finish_escalations(&mut self, ends: Vec<(u32, Outcome, Option<String>)>, rescan: bool) {
        let Some(shared) = self.watcher.clone() else { return };
        if ends.is_empty() {
            return;
        }
        if rescan && ends.iter().any(|(pid, ..)| self.table.get(*pid).is_some()) {
            self.scan();
        }
        let snapshot = self.shared.get();
        let now = unix_now();
        for (pid, outcome, reason) in ends {
            let mut evidence = Vec::new();
            // Tracked by pid since (a control request): it stays tracked.
            if self.table.get(pid).is_some_and(|p| p.selection == Selection::Suspect) {
                if let Some(p) = snapshot.processes.iter().find(|p| p.id.pid == pid) {
                    evidence = evidence_of(p);
                }
                let why = match (&outcome, &reason) {
                    (Outcome::OverBudget, Some(r)) => format!("escalation over budget: {r}"),
                    _ => "its escalation window ended".to_string(),
                };
                self.table.untrack(&mut self.kernel, pid, &why);
            }
            let mut watcher = shared.lock();
            // Gone meanwhile: the sampler has ended and counted it.
            let Some(w) = watcher.get_mut(pid) else { continue };
            let Some(Status::Running { started, .. }) = w.escalation else {
                continue;
            };
            w.escalation = Some(Status::Done {
                started,
                ended: now,
                outcome,
            });
            w.last_escalation_end = Some(now);
            if !evidence.is_empty() || w.evidence.is_empty() {
                w.evidence = evidence;
            }
            tracing::info!(pid, comm = %w.comm, outcome = outcome.name(), stacks = w.evidence.len(), "escalation ended");
            watcher.counts.escalation_outcomes[outcome as usize] += 1;
        }
    }

    /// Stops escalations over their probe-hit budget (from this scan's rates)
    /// and notes those whose process exited. Running escalations keep the
    /// leaking stacks of each scan as evidence: a leaker that exits before
    /// its window ends (the sampler may be the first to see it go) is still
    /// named with its stacks.
    pub(super) fn enforce_budget(&mut self) {
        let Some(shared) = self.watcher.as_ref() else { return };
        let running: Vec<u32> = shared
            .lock()
            .iter()
            .filter(|w| matches!(w.escalation, Some(Status::Running { .. })))
            .map(|w| w.pid)
            .collect();
        let snapshot = self.shared.get();
        let mut hits = Vec::new();
        let mut ends = Vec::new();
        let mut evidence = Vec::new();
        for pid in running {
            match snapshot.processes.iter().find(|p| p.id.pid == pid) {
                Some(p) => {
                    hits.push((
                        pid,
                        escalation::hits_per_second(p.rates.allocations_per_second, p.rates.frees_per_second),
                    ));
                    let stacks = evidence_of(p);
                    if !stacks.is_empty() {
                        evidence.push((pid, stacks));
                    }
                }
                None if self.table.get(pid).is_none() => ends.push((pid, Outcome::Exited, None)),
                None => {}
            }
        }
        {
            let mut watcher = shared.lock();
            for (pid, stacks) in evidence {
                if let Some(w) = watcher.get_mut(pid) {
                    w.evidence = stacks;
                }
            }
        }
        for (pid, reason) in escalation::over_budget(&self.config.escalation, &hits) {
            tracing::warn!(pid, reason = %reason, "stopping an escalation over budget");
            ends.push((pid, Outcome::OverBudget, Some(reason)));
        }
        // Called right after a scan: its snapshot is fresh.
        self.finish_escalations(ends, false);
    }
}

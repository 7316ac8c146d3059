//! The collector's host-wide side: sampling every process, alert
//! transitions, and escalating suspects to exact tracking under a budget.

use std::{collections::HashMap, sync::Arc};

use super::Collector;
use crate::{
    clock::monotonic_ns,
    collect::aggregate::aggregate,
    leaks,
    process::{Selection, TrackError, unix_now},
    unwind::Reason,
    watch::{
        GrowthStack,
        alert::Transition,
        escalation::{self, Candidate, Outcome, Status},
    },
};

/// Stacks kept as evidence per escalation.
const EVIDENCE_STACKS: usize = 10;
/// Growth stacks symbolized per suspect.
const GROWTH_STACKS: usize = 5;

impl Collector {
    /// One host-wide sample: memory of every process, alerts, escalations.
    pub(super) fn sample_host(&mut self) {
        let started = std::time::Instant::now();
        let now = unix_now();
        let mono = monotonic_ns() as f64 / 1e9;
        let Some(watcher) = self.watcher.as_mut() else { return };
        let outcome = watcher.sample(mono, now);
        self.escalation_outcomes[Outcome::Exited as usize] += outcome.exited_escalations.len() as u64;
        for (pid, tr) in outcome.transitions {
            let w = watcher.get(pid).or_else(|| watcher.gone().find(|w| w.pid == pid));
            let (comm, rate) = w.map_or((String::new(), 0.0), |w| (w.comm.clone(), w.estimate.rate));
            match tr {
                Transition::Fired => {
                    self.alert_counts.0 += 1;
                    tracing::warn!(pid, comm = %comm, rate_bytes_per_second = rate as u64, "leak alert firing");
                }
                Transition::Resolved => {
                    self.alert_counts.1 += 1;
                    tracing::info!(pid, comm = %comm, "leak alert resolved");
                }
            }
        }
        self.refresh_growth();
        self.escalate_suspects(now);
        self.sample_seconds = started.elapsed().as_secs_f64();
    }

    /// Reads the kernel's growth records, forgets those of exited processes
    /// and symbolizes the top growth stacks of suspects.
    fn refresh_growth(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        let mut by_pid: HashMap<u32, Vec<GrowthStack>> = HashMap::new();
        let mut dead = Vec::new();
        for (k, v) in self.kernel.growth() {
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
        if !dead.is_empty() {
            self.kernel.delete_growth(&dead);
        }
        watcher.set_growth(by_pid);
        // Suspects' growth stacks are walked by CFI from now on.
        let suspects: Vec<u32> = watcher.iter().filter(|w| w.alert.is_suspect()).map(|w| w.pid).collect();
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
        for w in watcher.iter_mut().filter(|w| w.alert.is_suspect()) {
            let pid = w.pid;
            let missing: Vec<u64> = w
                .growth
                .iter()
                .take(GROWTH_STACKS)
                .filter(|g| g.frames.is_none() && g.stack_id != 0)
                .map(|g| g.stack_id)
                .collect();
            for id in missing {
                let Some(stack) = self.kernel.stack(id) else { continue };
                let native: Vec<_> = self
                    .symbolizer
                    .symbolize(pid, stack.addresses())
                    .into_iter()
                    .flatten()
                    .collect();
                let stack = super::with_python(&self.table.unwind, &mut self.python, pid, &stack, native);
                if let Some(g) = w.growth.iter_mut().find(|g| g.stack_id == id) {
                    g.frames = Some(Arc::new(stack));
                }
            }
        }
    }

    pub(super) fn running_escalations(&self) -> usize {
        self.watcher.as_ref().map_or(0, |w| {
            w.iter()
                .filter(|w| matches!(w.escalation, Some(Status::Running { .. })))
                .count()
        })
    }

    /// Starts exact tracking of new suspects the policy admits, and ends
    /// escalations whose window is over.
    fn escalate_suspects(&mut self, now: f64) {
        let Some(watcher) = self.watcher.as_ref() else { return };
        let mut due = Vec::new();
        let mut candidates = Vec::new();
        for w in watcher.iter() {
            match &w.escalation {
                Some(Status::Running { until, .. }) if now >= *until => due.push((w.pid, Outcome::Completed, None)),
                Some(Status::Running { .. }) => {}
                _ if w.alert.is_suspect() => candidates.push(w.pid),
                _ => {}
            }
        }
        self.finish_escalations(due, true);
        for pid in candidates {
            let running = self.running_escalations();
            let Some(w) = self.watcher.as_ref().and_then(|w| w.get(pid)) else {
                continue;
            };
            // A done escalation is not redone until the cooldown has passed.
            let decision = escalation::admit(
                &self.config.escalation,
                &Candidate {
                    exe: &w.exe,
                    unit: w.unit(),
                    last_ended: w.last_escalation_end,
                    tracked: self.table.get(pid).is_some(),
                },
                running,
                now,
            );
            let status = match decision {
                Err(reason) => {
                    if matches!(w.escalation, Some(Status::Done { .. })) {
                        continue;
                    }
                    Status::Skipped { reason }
                }
                Ok(()) => match self.table.track(&mut self.kernel, pid, Selection::Suspect) {
                    Ok(()) => {
                        tracing::info!(pid, comm = %w.comm, window_seconds = self.config.escalation.window_seconds, "escalating a leak suspect to exact tracking");
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
                        self.escalation_outcomes[outcome as usize] += 1;
                        Status::Done {
                            started: now,
                            ended: now,
                            outcome,
                        }
                    }
                },
            };
            if let Some(w) = self.watcher.as_mut().and_then(|w| w.get_mut(pid)) {
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
            if self.table.get(pid).is_some() {
                if let Some(p) = snapshot.processes.iter().find(|p| p.pid == pid) {
                    let agg = aggregate(&p.allocations, None);
                    evidence = leaks::stack_reports(p, &agg, EVIDENCE_STACKS, monotonic_ns());
                }
                let why = match (&outcome, &reason) {
                    (Outcome::OverBudget, Some(r)) => format!("escalation over budget: {r}"),
                    _ => "its escalation window ended".to_string(),
                };
                self.table.untrack(&mut self.kernel, pid, &why);
            }
            self.escalation_outcomes[outcome as usize] += 1;
            let Some(w) = self.watcher.as_mut().and_then(|w| w.get_mut(pid)) else {
                continue;
            };
            let started = match w.escalation {
                Some(Status::Running { started, .. }) => started,
                _ => now,
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
        }
    }

    /// Stops escalations over their probe-hit budget (from this scan's rates)
    /// and notes those whose process exited.
    pub(super) fn enforce_budget(&mut self) {
        let Some(watcher) = self.watcher.as_ref() else { return };
        let running: Vec<u32> = watcher
            .iter()
            .filter(|w| matches!(w.escalation, Some(Status::Running { .. })))
            .map(|w| w.pid)
            .collect();
        let snapshot = self.shared.get();
        let mut hits = Vec::new();
        let mut ends = Vec::new();
        for pid in running {
            match snapshot.processes.iter().find(|p| p.pid == pid) {
                Some(p) => hits.push((
                    pid,
                    escalation::hits_per_second(p.rates.allocations_per_second, p.rates.frees_per_second),
                )),
                None if self.table.get(pid).is_none() => ends.push((pid, Outcome::Exited, None)),
                None => {}
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

//! The alert lifecycle of a process: pending while its heap looks like a
//! leak, firing once that has lasted long enough, resolved once the growth
//! has been gone for a while. One alert per episode, not per evaluation.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Alert {
    /// No leak seen.
    Inactive,
    /// A leak is seen since `since` (Unix seconds), not yet for long enough;
    /// `last_seen` is the last evaluation that saw it.
    Pending { since: f64, last_seen: f64 },
    /// Fired at `fired_at`; `last_seen` is the last evaluation that saw the leak.
    Firing { since: f64, fired_at: f64, last_seen: f64 },
    /// The episode ended; kept to be shown for a while.
    Resolved {
        since: f64,
        fired_at: f64,
        resolved_at: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Fired,
    Resolved,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Seconds a leak must persist before firing.
    pub firing_after: f64,
    /// Seconds without a leak before a firing alert resolves.
    pub resolve_after: f64,
    /// Seconds without a leak before a pending alert is dropped: one noisy
    /// evaluation does not restart the episode.
    pub pending_grace: f64,
}

impl Timing {
    /// A pending alert's grace is a quarter of the time it takes to fire,
    /// and at least two and a half sampling intervals (two evaluations that
    /// miss the leak), never more than a firing alert takes to resolve.
    pub fn new(firing_after: f64, resolve_after: f64, sample_interval: f64) -> Timing {
        Timing {
            firing_after,
            resolve_after,
            pending_grace: (firing_after / 4.0).max(2.5 * sample_interval).min(resolve_after),
        }
    }
}

impl Alert {
    pub fn is_suspect(&self) -> bool {
        matches!(self, Alert::Pending { .. } | Alert::Firing { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Alert::Inactive => "inactive",
            Alert::Pending { .. } => "pending",
            Alert::Firing { .. } => "firing",
            Alert::Resolved { .. } => "resolved",
        }
    }

    /// The next state after an evaluation at `now` that did (or did not) see a leak.
    pub fn step(self, leaking: bool, now: f64, t: &Timing) -> (Alert, Option<Transition>) {
        match (self, leaking) {
            (Alert::Inactive | Alert::Resolved { .. }, true) => (
                Alert::Pending {
                    since: now,
                    last_seen: now,
                },
                None,
            ),
            (Alert::Pending { since, .. }, true) if now - since >= t.firing_after => (
                Alert::Firing {
                    since,
                    fired_at: now,
                    last_seen: now,
                },
                Some(Transition::Fired),
            ),
            (Alert::Pending { since, .. }, true) => (Alert::Pending { since, last_seen: now }, None),
            (Alert::Pending { last_seen, .. }, false) if now - last_seen >= t.pending_grace => (Alert::Inactive, None),
            (Alert::Firing { since, fired_at, .. }, true) => (
                Alert::Firing {
                    since,
                    fired_at,
                    last_seen: now,
                },
                None,
            ),
            (
                Alert::Firing {
                    since,
                    fired_at,
                    last_seen,
                },
                false,
            ) if now - last_seen >= t.resolve_after => (
                Alert::Resolved {
                    since,
                    fired_at,
                    resolved_at: now,
                },
                Some(Transition::Resolved),
            ),
            (state, _) => (state, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        firing_after: 60.0,
        resolve_after: 30.0,
        pending_grace: 5.0,
    };

    fn run(start: Alert, seen: &[(f64, bool)]) -> (Alert, Vec<(f64, Transition)>) {
        let mut a = start;
        let mut transitions = Vec::new();
        for &(now, leaking) in seen {
            let (next, tr) = a.step(leaking, now, &T);
            if let Some(tr) = tr {
                transitions.push((now, tr));
            }
            a = next;
        }
        (a, transitions)
    }

    #[test]
    fn a_lasting_leak_fires_once() {
        let seen: Vec<(f64, bool)> = (0..100).map(|i| (i as f64 * 2.0, true)).collect();
        let (a, tr) = run(Alert::Inactive, &seen);
        assert_eq!(tr, vec![(60.0, Transition::Fired)]);
        assert_eq!(
            a,
            Alert::Firing {
                since: 0.0,
                fired_at: 60.0,
                last_seen: 198.0
            }
        );
    }

    #[test]
    fn a_short_episode_never_fires() {
        let (a, tr) = run(
            Alert::Inactive,
            &[(0.0, true), (20.0, true), (40.0, false), (60.0, true)],
        );
        assert!(tr.is_empty());
        assert_eq!(
            a,
            Alert::Pending {
                since: 60.0,
                last_seen: 60.0
            }
        );
    }

    #[test]
    fn firing_resolves_after_the_growth_stops_for_a_while() {
        let firing = Alert::Firing {
            since: 0.0,
            fired_at: 60.0,
            last_seen: 100.0,
        };
        let (a, tr) = run(
            firing,
            &[(110.0, false), (120.0, false), (131.0, false), (140.0, false)],
        );
        assert_eq!(tr, vec![(131.0, Transition::Resolved)]);
        assert_eq!(
            a,
            Alert::Resolved {
                since: 0.0,
                fired_at: 60.0,
                resolved_at: 131.0
            }
        );
        // A brief pause does not resolve it.
        let (a, tr) = run(firing, &[(110.0, false), (120.0, true), (140.0, false)]);
        assert!(tr.is_empty());
        assert!(matches!(a, Alert::Firing { last_seen: 120.0, .. }));
    }

    #[test]
    fn a_pending_alert_survives_one_noisy_evaluation() {
        // Evaluations every 2 s; one misses the leak at 20 s.
        let seen: Vec<(f64, bool)> = (0..40).map(|i| (i as f64 * 2.0, i != 10)).collect();
        let (a, tr) = run(Alert::Inactive, &seen);
        assert_eq!(tr, vec![(60.0, Transition::Fired)]);
        assert!(matches!(a, Alert::Firing { since: 0.0, .. }));
        // Gone for longer than the grace: the episode is over.
        let (a, _) = run(
            Alert::Inactive,
            &[(0.0, true), (2.0, false), (4.0, false), (6.0, false)],
        );
        assert_eq!(a, Alert::Inactive);
    }

    #[test]
    fn a_new_episode_after_resolution_starts_pending() {
        let resolved = Alert::Resolved {
            since: 0.0,
            fired_at: 60.0,
            resolved_at: 131.0,
        };
        let (a, _) = resolved.step(true, 200.0, &T);
        assert_eq!(
            a,
            Alert::Pending {
                since: 200.0,
                last_seen: 200.0
            }
        );
        assert!(a.is_suspect());
        assert!(!resolved.is_suspect());
    }
}

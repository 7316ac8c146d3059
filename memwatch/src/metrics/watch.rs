//! Host-wide watching: process groups, alerts and escalations.

use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::series::{advance, counter_vec, gauge, gauge_vec};
use crate::collect::snapshot::{HostGroup, Snapshot};

/// Host-wide watching: process groups (executable name and unit, top N by
/// resident memory plus "other"), alerts and escalations.
pub struct WatchMetrics {
    top: usize,
    resident: IntGaugeVec,
    anon: IntGaugeVec,
    growth: prometheus::GaugeVec,
    processes: IntGaugeVec,
    group_alerts: IntGaugeVec,
    shown: std::sync::Mutex<Vec<(String, String)>>,
    watched: IntGauge,
    alerts: IntGaugeVec,
    transitions: IntCounterVec,
    escalations_running: IntGauge,
    escalations: IntCounterVec,
    sample_seconds: Gauge,
}

impl WatchMetrics {
    fn set_group(&self, g: &HostGroup) {
        let l = [g.exe_name.as_str(), g.unit.as_str()];
        self.resident.with_label_values(&l).set(g.resident_bytes as i64);
        self.anon.with_label_values(&l).set(g.anon_bytes as i64);
        self.growth.with_label_values(&l).set(g.growth_bytes_per_second);
        self.processes.with_label_values(&l).set(g.processes as i64);
        for (state, n) in [("pending", g.pending), ("firing", g.firing)] {
            self.group_alerts.with_label_values(&[l[0], l[1], state]).set(n as i64);
        }
    }

    pub fn register(r: &Registry, top: usize) -> Self {
        let g = &["exe", "unit"];
        let growth = prometheus::GaugeVec::new(
            Opts::new(
                "memwatch_group_growth_bytes_per_second",
                "Heap growth rate of a process group's growing or leaking processes.",
            ),
            g,
        )
        .expect("valid metric");
        r.register(Box::new(growth.clone())).expect("unique metric");
        let sample_seconds = Gauge::new(
            "memwatch_sample_duration_seconds",
            "Time the last host-wide sample took.",
        )
        .expect("valid metric");
        r.register(Box::new(sample_seconds.clone())).expect("unique metric");
        let transitions = counter_vec(
            r,
            "memwatch_alert_transitions_total",
            "Leak alerts that fired or resolved.",
            &["transition"],
        );
        for t in ["fired", "resolved"] {
            transitions.with_label_values(&[t]);
        }
        let escalations = counter_vec(
            r,
            "memwatch_escalations_total",
            "Escalations to exact tracking that ended, by outcome.",
            &["outcome"],
        );
        for o in crate::watch::escalation::Outcome::ALL {
            escalations.with_label_values(&[o.name()]);
        }
        let alerts = gauge_vec(r, "memwatch_alerts", "Leak alerts by state, host-wide.", &["state"]);
        for st in ["pending", "firing"] {
            alerts.with_label_values(&[st]);
        }
        WatchMetrics {
            top,
            resident: gauge_vec(
                r,
                "memwatch_group_resident_bytes",
                "Resident memory of a process group (executable name and unit).",
                g,
            ),
            anon: gauge_vec(
                r,
                "memwatch_group_anon_bytes",
                "Resident anonymous memory of a process group.",
                g,
            ),
            growth,
            processes: gauge_vec(r, "memwatch_group_processes", "Processes in a process group.", g),
            group_alerts: gauge_vec(
                r,
                "memwatch_group_alerts",
                "Leak alerts of a process group by state.",
                &["exe", "unit", "state"],
            ),
            shown: std::sync::Mutex::new(Vec::new()),
            watched: gauge(
                r,
                "memwatch_processes_watched",
                "Processes whose memory is sampled host-wide.",
            ),
            alerts,
            transitions,
            escalations_running: gauge(r, "memwatch_escalations_running", "Suspects under exact tracking now."),
            escalations,
            sample_seconds,
        }
    }

    pub(super) fn update(&self, s: &Snapshot) {
        let w = &s.watch;
        self.watched.set(w.watched_processes as i64);
        advance(&self.transitions.with_label_values(&["fired"]), w.alerts_fired_total);
        advance(
            &self.transitions.with_label_values(&["resolved"]),
            w.alerts_resolved_total,
        );
        self.escalations_running.set(w.escalations_running as i64);
        for o in crate::watch::escalation::Outcome::ALL {
            advance(
                &self.escalations.with_label_values(&[o.name()]),
                w.escalation_outcomes[o as usize],
            );
        }
        self.sample_seconds.set(w.sample_seconds);
        let (pending, firing) = w.groups.iter().fold((0, 0), |(p, f), g| (p + g.pending, f + g.firing));
        self.alerts.with_label_values(&["pending"]).set(pending as i64);
        self.alerts.with_label_values(&["firing"]).set(firing as i64);

        let mut groups: Vec<_> = w.groups.iter().collect();
        // Alerting groups first, then the largest.
        groups.sort_by(|a, b| {
            (b.firing + b.pending)
                .cmp(&(a.firing + a.pending))
                .then(b.resident_bytes.cmp(&a.resident_bytes))
        });
        let (top, rest) = groups.split_at(groups.len().min(self.top));
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        for (exe, unit) in shown.iter() {
            if !top.iter().any(|g| &g.exe_name == exe && &g.unit == unit) {
                for v in [&self.resident, &self.anon, &self.processes] {
                    let _ = v.remove_label_values(&[exe, unit]);
                }
                let _ = self.growth.remove_label_values(&[exe, unit]);
                for st in ["pending", "firing"] {
                    let _ = self.group_alerts.remove_label_values(&[exe, unit, st]);
                }
            }
        }
        let mut other = HostGroup {
            exe_name: "other".into(),
            ..Default::default()
        };
        for g in rest {
            other.absorb(g);
        }
        for g in top.iter().copied().chain(w.enabled.then_some(&other)) {
            self.set_group(g);
        }
        *shown = top.iter().map(|g| (g.exe_name.clone(), g.unit.clone())).collect();
    }
}

//! Probe sites in use and what each eBPF program costs.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::series::{advance, counter_vec, gauge, gauge_vec};
use crate::collect::snapshot::Snapshot;

/// Where probes sit and what the programs cost.
pub struct ProbeMetrics {
    sites: IntGaugeVec,
    runs: IntCounterVec,
    run_seconds: prometheus::CounterVec,
    verified: IntGaugeVec,
    stats_enabled: IntGauge,
}

impl ProbeMetrics {
    pub fn register(r: &Registry) -> Self {
        let run_seconds = prometheus::CounterVec::new(
            Opts::new(
                "memwatch_bpf_program_run_seconds_total",
                "Time spent in memwatch's eBPF programs (counted while sysctl kernel.bpf_stats_enabled=1).",
            ),
            &["program"],
        )
        .expect("valid metric");
        r.register(Box::new(run_seconds.clone())).expect("unique metric");
        ProbeMetrics {
            sites: gauge_vec(
                r,
                "memwatch_probe_site_info",
                "Probe sites in use, by binary and function: value = processes probed there.",
                &["module", "function", "offset", "instruction", "emulated"],
            ),
            runs: counter_vec(
                r,
                "memwatch_bpf_program_runs_total",
                "Runs of memwatch's eBPF programs (counted while sysctl kernel.bpf_stats_enabled=1).",
                &["program"],
            ),
            run_seconds,
            verified: gauge_vec(
                r,
                "memwatch_bpf_program_verified_instructions",
                "Instructions the kernel's verifier processed to load each of memwatch's eBPF programs (its limit is 1,000,000; load time grows with it).",
                &["program"],
            ),
            stats_enabled: gauge(
                r,
                "memwatch_bpf_stats_enabled",
                "1 while the kernel times BPF programs.",
            ),
        }
    }

    pub(super) fn update(&self, s: &Snapshot) {
        self.sites.reset();
        for (p, n) in crate::collect::snapshot::probe_sites(&s.processes) {
            let offset = format!("{:#x}", p.placement.offset);
            let emulated = if p.placement.emulated { "true" } else { "false" };
            self.sites
                .with_label_values(&[
                    p.module.as_str(),
                    p.function,
                    &offset,
                    &p.placement.instruction,
                    emulated,
                ])
                .set(n as i64);
        }
        for p in &s.programs {
            advance(&self.runs.with_label_values(&[&p.name]), p.runs);
            if let Some(n) = p.verified {
                self.verified.with_label_values(&[&p.name]).set(n.into());
            }
            let c = self.run_seconds.with_label_values(&[&p.name]);
            let total = p.run_ns as f64 / 1e9;
            if total > c.get() {
                c.inc_by(total - c.get());
            }
        }
        self.stats_enabled.set(s.bpf_stats_enabled.into());
    }
}

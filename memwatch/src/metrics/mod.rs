//! Prometheus metrics. Each component registers its own; all are refreshed
//! from a [`Snapshot`] after every scan, so a scrape only encodes.
//!
//! Labels are bounded: `allocator` (a handful), `reason` (fixed), `exe` for
//! the top-N executables only. No pid, address or stack labels.

mod control;
mod oom;
pub mod python;
mod unwind;

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::collect::snapshot::{HostGroup, Snapshot};

/// Sets a counter to a running total kept elsewhere (it only ever grows).
fn advance(c: &IntCounter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

/// Allocator activity across all tracked processes, exited ones included.
pub struct AllocatorMetrics {
    allocations: IntCounterVec,
    frees: IntCounterVec,
    allocated_bytes: IntCounterVec,
    freed_bytes: IntCounterVec,
    untracked_frees: IntCounterVec,
    lost_allocations: IntCounterVec,
    lost_bytes: IntCounterVec,
    live_bytes: IntGaugeVec,
    live_allocations: IntGaugeVec,
}

impl AllocatorMetrics {
    pub fn register(r: &Registry) -> Self {
        let l = &["allocator"];
        let m = AllocatorMetrics {
            allocations: counter_vec(
                r,
                "memwatch_allocations_total",
                "Allocations seen in tracked processes (realloc moves count).",
                l,
            ),
            frees: counter_vec(r, "memwatch_frees_total", "Releases of tracked allocations.", l),
            allocated_bytes: counter_vec(
                r,
                "memwatch_allocated_bytes_total",
                "Bytes allocated by tracked processes.",
                l,
            ),
            freed_bytes: counter_vec(
                r,
                "memwatch_freed_bytes_total",
                "Bytes released from tracked allocations.",
                l,
            ),
            untracked_frees: counter_vec(
                r,
                "memwatch_untracked_frees_total",
                "Releases of addresses allocated before tracking began.",
                l,
            ),
            lost_allocations: counter_vec(
                r,
                "memwatch_lost_allocations_total",
                "Allocations that could not be recorded (live map full): live but not in live_allocations.",
                l,
            ),
            lost_bytes: counter_vec(
                r,
                "memwatch_lost_bytes_total",
                "Bytes of allocations that could not be recorded: allocated - freed - lost = live.",
                l,
            ),
            live_bytes: gauge_vec(r, "memwatch_live_bytes", "Bytes in live tracked allocations.", l),
            live_allocations: gauge_vec(r, "memwatch_live_allocations", "Live tracked allocations.", l),
        };
        // Every series exists from the start, at 0, so rate() and absent()
        // behave before the first allocation.
        for f in memwatch_common::cookie::Family::ALL {
            let l = [f.name()];
            for c in [
                &m.allocations,
                &m.frees,
                &m.allocated_bytes,
                &m.freed_bytes,
                &m.untracked_frees,
                &m.lost_allocations,
                &m.lost_bytes,
            ] {
                c.with_label_values(&l);
            }
            m.live_bytes.with_label_values(&l);
            m.live_allocations.with_label_values(&l);
        }
        m
    }

    fn update(&self, s: &Snapshot) {
        for (family, c) in &s.families {
            let l = [family.name()];
            advance(&self.allocations.with_label_values(&l), c.allocations);
            advance(&self.frees.with_label_values(&l), c.frees);
            advance(&self.allocated_bytes.with_label_values(&l), c.allocated_bytes);
            advance(&self.freed_bytes.with_label_values(&l), c.freed_bytes);
            advance(&self.untracked_frees.with_label_values(&l), c.untracked_frees);
            advance(&self.lost_allocations.with_label_values(&l), c.lost_allocations);
            advance(&self.lost_bytes.with_label_values(&l), c.lost_bytes);
            let (mut bytes, mut count) = (0u64, 0u64);
            for p in &s.processes {
                for a in p.allocations.iter().filter(|a| a.family == *family as u8) {
                    bytes += a.size;
                    count += 1;
                }
            }
            self.live_bytes.with_label_values(&l).set(bytes as i64);
            self.live_allocations.with_label_values(&l).set(count as i64);
        }
    }
}

/// Events the kernel side could not record.
pub struct KernelMetrics {
    lost: IntCounterVec,
}

impl KernelMetrics {
    pub fn register(r: &Registry) -> Self {
        let lost = counter_vec(
            r,
            "memwatch_kernel_events_lost_total",
            "Events the eBPF programs dropped or could not fully record, by reason.",
            &["reason"],
        );
        for d in memwatch_common::drop::Drop::ALL {
            lost.with_label_values(&[d.name()]);
        }
        KernelMetrics { lost }
    }

    fn update(&self, s: &Snapshot) {
        for (reason, n) in &s.drops {
            advance(&self.lost.with_label_values(&[reason.name()]), *n);
        }
    }
}

/// Per-executable series for the top N by live bytes; the rest summed as
/// exe="other" (gauges only: a counter under "other" could go backwards).
pub struct ProcessMetrics {
    top: usize,
    live_bytes: IntGaugeVec,
    live_allocations: IntGaugeVec,
    processes: IntGaugeVec,
    allocations: IntCounterVec,
    frees: IntCounterVec,
    allocated_bytes: IntCounterVec,
    freed_bytes: IntCounterVec,
    shown: std::sync::Mutex<Vec<String>>,
}

impl ProcessMetrics {
    pub fn register(r: &Registry, top: usize) -> Self {
        let l = &["exe"];
        ProcessMetrics {
            top,
            live_bytes: gauge_vec(
                r,
                "memwatch_process_live_bytes",
                "Live bytes of tracked processes, by executable name (top N, rest as \"other\").",
                l,
            ),
            live_allocations: gauge_vec(
                r,
                "memwatch_process_live_allocations",
                "Live allocations of tracked processes, by executable name.",
                l,
            ),
            processes: gauge_vec(
                r,
                "memwatch_process_tracked",
                "Tracked processes, by executable name.",
                l,
            ),
            allocations: counter_vec(
                r,
                "memwatch_process_allocations_total",
                "Allocations by executable name (top N).",
                l,
            ),
            frees: counter_vec(
                r,
                "memwatch_process_frees_total",
                "Releases by executable name (top N).",
                l,
            ),
            allocated_bytes: counter_vec(
                r,
                "memwatch_process_allocated_bytes_total",
                "Bytes allocated by executable name (top N).",
                l,
            ),
            freed_bytes: counter_vec(
                r,
                "memwatch_process_freed_bytes_total",
                "Bytes released by executable name (top N).",
                l,
            ),
            shown: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn update(&self, s: &Snapshot) {
        let mut groups: Vec<_> = s.groups.iter().filter(|g| g.processes > 0).collect();
        groups.sort_by(|a, b| b.live_bytes.cmp(&a.live_bytes).then(a.exe_name.cmp(&b.exe_name)));
        let (top, rest) = groups.split_at(groups.len().min(self.top));
        let mut shown = self.shown.lock().unwrap_or_else(|e| e.into_inner());
        for old in shown.iter() {
            if !top.iter().any(|g| &g.exe_name == old) {
                for v in [&self.live_bytes, &self.live_allocations, &self.processes] {
                    let _ = v.remove_label_values(&[old]);
                }
                for v in [&self.allocations, &self.frees, &self.allocated_bytes, &self.freed_bytes] {
                    let _ = v.remove_label_values(&[old]);
                }
            }
        }
        for g in top {
            let l = [g.exe_name.as_str()];
            self.live_bytes.with_label_values(&l).set(g.live_bytes as i64);
            self.live_allocations
                .with_label_values(&l)
                .set(g.live_allocations as i64);
            self.processes.with_label_values(&l).set(g.processes as i64);
            advance(&self.allocations.with_label_values(&l), g.counters.allocations);
            advance(&self.frees.with_label_values(&l), g.counters.frees);
            advance(&self.allocated_bytes.with_label_values(&l), g.counters.allocated_bytes);
            advance(&self.freed_bytes.with_label_values(&l), g.counters.freed_bytes);
        }
        let other = ["other"];
        self.live_bytes
            .with_label_values(&other)
            .set(rest.iter().map(|g| g.live_bytes as i64).sum());
        self.live_allocations
            .with_label_values(&other)
            .set(rest.iter().map(|g| g.live_allocations as i64).sum());
        self.processes
            .with_label_values(&other)
            .set(rest.iter().map(|g| g.processes as i64).sum());
        *shown = top.iter().map(|g| g.exe_name.clone()).collect();
    }
}

/// memwatch's own health.
pub struct DaemonMetrics {
    tracked: IntGauge,
    probes: IntGauge,
    attach_failures: IntCounter,
    exited_before_attach: IntCounter,
    scan_seconds: Gauge,
    last_scan: Gauge,
    live_entries: IntGauge,
    live_capacity: IntGauge,
    live_table_entries: IntGauge,
    live_table_capacity: IntGauge,
    stack_entries: IntGauge,
    stack_capacity: IntGauge,
    stacks_unavailable: IntCounter,
    symbol_cache: IntGauge,
}

impl DaemonMetrics {
    pub fn register(r: &Registry) -> Self {
        let f = |name: &str, help: &str| {
            let g = Gauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let c = |name: &str, help: &str| {
            let g = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let info = IntGaugeVec::new(
            Opts::new(
                "memwatch_build_info",
                "memwatch version, and the first 12 hex digits of its eBPF object's SHA-256.",
            ),
            &["version", "ebpf_object"],
        )
        .expect("valid metric");
        r.register(Box::new(info.clone())).expect("unique metric");
        let object = crate::kernel::object::IDENTITY.sha256;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), object.get(..12).unwrap_or(object)])
            .set(1);
        DaemonMetrics {
            tracked: gauge(
                r,
                "memwatch_tracked_processes",
                "Processes tracked exactly (allocator probes attached).",
            ),
            probes: gauge(r, "memwatch_probes_attached", "Uprobes and uretprobes attached."),
            attach_failures: c(
                "memwatch_attach_failures_total",
                "Processes memwatch was asked to track but could not.",
            ),
            exited_before_attach: c(
                "memwatch_exited_before_attach_total",
                "Processes chosen for tracking (by --exe, at exec or fork, or escalated) that exited while being attached: races, not failures.",
            ),
            scan_seconds: f(
                "memwatch_scan_duration_seconds",
                "Time the last scan of the kernel maps took.",
            ),
            last_scan: f(
                "memwatch_last_scan_timestamp_seconds",
                "When the last scan completed (Unix time).",
            ),
            live_entries: gauge(
                r,
                "memwatch_live_map_entries",
                "Entries in the kernel's live-allocation map.",
            ),
            live_capacity: gauge(
                r,
                "memwatch_live_map_capacity",
                "Capacity of the kernel's live-allocation map.",
            ),
            live_table_entries: gauge(
                r,
                "memwatch_live_table_entries",
                "Live allocations held in the kernel's lock-free table (the rest are in the live map).",
            ),
            live_table_capacity: gauge(r, "memwatch_live_table_capacity", "Slots of the kernel's live table."),
            stack_entries: gauge(r, "memwatch_stack_map_entries", "Distinct stacks held by the kernel."),
            stack_capacity: gauge(r, "memwatch_stack_map_capacity", "Capacity of the kernel's stack map."),
            stacks_unavailable: c(
                "memwatch_stacks_unavailable_total",
                "Stacks referenced by live allocations but no longer readable.",
            ),
            symbol_cache: gauge(r, "memwatch_symbol_cache_entries", "Symbolized addresses cached."),
        }
    }

    fn update(&self, s: &Snapshot) {
        self.tracked.set(s.processes.len() as i64);
        self.probes.set(s.probes_attached as i64);
        advance(&self.attach_failures, s.attach_failures_total);
        advance(&self.exited_before_attach, s.exited_before_attach_total);
        self.scan_seconds.set(s.scan_seconds);
        self.last_scan.set(s.taken_at_unix);
        self.live_entries.set(s.live_entries as i64);
        self.live_capacity.set(s.live_capacity.into());
        self.live_table_entries.set(s.live_table_entries as i64);
        self.live_table_capacity.set(s.live_table_capacity.into());
        self.stack_entries.set(s.stack_entries as i64);
        self.stack_capacity.set(s.stack_capacity.into());
        advance(&self.stacks_unavailable, s.stacks_unavailable);
        self.symbol_cache.set(s.symbol_cache_entries as i64);
    }
}

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

    fn update(&self, s: &Snapshot) {
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

    fn update(&self, s: &Snapshot) {
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

pub struct Metrics {
    registry: Registry,
    watch: WatchMetrics,
    allocator: AllocatorMetrics,
    kernel: KernelMetrics,
    processes: ProcessMetrics,
    daemon: DaemonMetrics,
    probes: ProbeMetrics,
    unwind: unwind::UnwindMetrics,
    python: python::PythonMetrics,
    control: control::ControlMetrics,
    oom: oom::OomMetrics,
}

impl Metrics {
    pub fn new(top_processes: usize) -> Self {
        let registry = Registry::new();
        Metrics {
            allocator: AllocatorMetrics::register(&registry),
            kernel: KernelMetrics::register(&registry),
            processes: ProcessMetrics::register(&registry, top_processes),
            daemon: DaemonMetrics::register(&registry),
            probes: ProbeMetrics::register(&registry),
            watch: WatchMetrics::register(&registry, top_processes),
            unwind: unwind::UnwindMetrics::register(&registry),
            python: python::PythonMetrics::register(&registry, top_processes),
            control: control::ControlMetrics::register(&registry),
            oom: oom::OomMetrics::register(&registry),
            registry,
        }
    }

    /// The latest object censuses of tracked Python processes, by executable.
    pub fn update_python(&self, censuses: &[(String, crate::objects::Taken)]) {
        self.python.update(censuses);
    }

    /// A control request answered (`ok`: carried out).
    pub fn control_request(&self, name: &str, ok: bool) {
        self.control.request(name, ok);
    }

    /// A SIGHUP's config re-read (`applied`, or refused with the old kept).
    pub fn config_reload(&self, applied: bool) {
        self.control.reload(applied);
    }

    pub fn update(&self, s: &Snapshot) {
        self.control.update(s);
        self.oom.update(s);
        self.allocator.update(s);
        self.kernel.update(s);
        self.processes.update(s);
        self.daemon.update(s);
        self.probes.update(s);
        self.watch.update(s);
        self.unwind.update(s);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use memwatch_common::{alloc::ProcCounters, cookie::Family, drop::Drop};

    use super::*;
    use crate::collect::snapshot::GroupTotals;

    fn group(name: &str, live: u64, allocations: u64) -> GroupTotals {
        GroupTotals {
            exe_name: name.into(),
            counters: ProcCounters {
                allocations,
                ..Default::default()
            },
            live_bytes: live,
            live_allocations: 1,
            processes: 1,
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn totals_and_losses_are_exported() {
        let m = Metrics::new(2);
        let s = Snapshot {
            families: vec![(
                Family::Libc,
                ProcCounters {
                    allocations: 5,
                    frees: 3,
                    allocated_bytes: 500,
                    freed_bytes: 300,
                    ..Default::default()
                },
            )],
            drops: vec![(Drop::LiveMapFull, 4), (Drop::StackCaptureFailed, 0)],
            ..Default::default()
        };
        m.update(&s);
        let t = m.encode();
        assert_eq!(value(&t, "memwatch_allocations_total{allocator=\"libc\"}"), Some(5.0));
        assert_eq!(value(&t, "memwatch_freed_bytes_total{allocator=\"libc\"}"), Some(300.0));
        assert_eq!(
            value(&t, "memwatch_kernel_events_lost_total{reason=\"live_map_full\"}"),
            Some(4.0)
        );
        assert_eq!(
            value(&t, "memwatch_kernel_events_lost_total{reason=\"missed_free\"}"),
            Some(0.0)
        );
        // Counters never go backwards, whatever a snapshot says.
        m.update(&Snapshot {
            families: vec![(Family::Libc, ProcCounters::default())],
            ..Default::default()
        });
        assert_eq!(
            value(&m.encode(), "memwatch_allocations_total{allocator=\"libc\"}"),
            Some(5.0)
        );
    }

    #[test]
    fn five_hundred_containers_make_a_bounded_number_of_series() {
        use crate::collect::snapshot::WatchSnapshot;
        // 500 containers, each a process of its own, placed as docker's
        // systemd driver places them; the group's unit label is the short id.
        let groups: Vec<HostGroup> = (0..500u64)
            .map(|i| {
                let id = format!("{i:012x}{}", "e".repeat(52));
                let place = crate::process::cgroup::parse(&format!("0::/system.slice/docker-{id}.scope\n"));
                HostGroup {
                    exe_name: "worker".into(),
                    unit: place.group().unwrap().to_string(),
                    processes: 1,
                    resident_bytes: 1000 + i,
                    anon_bytes: 500 + i,
                    growth_bytes_per_second: 0.0,
                    pending: usize::from(i % 100 == 0),
                    firing: 0,
                }
            })
            .collect();
        assert!(groups.iter().all(|g| g.unit.len() == 12));
        assert_eq!(groups[7].unit, "000000000007");
        let count = |top: usize| {
            let m = Metrics::new(top);
            m.update(&Snapshot {
                watch: WatchSnapshot {
                    enabled: true,
                    watched_processes: 500,
                    groups: groups.clone(),
                    ..Default::default()
                },
                ..Default::default()
            });
            let t = m.encode();
            let group_series = t.lines().filter(|l| l.starts_with("memwatch_group_")).count();
            let all = t.lines().filter(|l| l.starts_with("memwatch_")).count();
            (group_series, all)
        };
        // Per group shown (alerting first, then the largest): resident,
        // anon, processes, growth and its pending and firing alerts; the
        // rest sum into exe="other".
        let (groups_10, all_10) = count(10);
        assert_eq!(groups_10, 11 * 6, "top 10 and other");
        let (groups_50, _) = count(50);
        assert_eq!(groups_50, 51 * 6);
        eprintln!("500 containers: {groups_10} group series of {all_10} memwatch_ series in all (top 10)");
    }

    #[test]
    fn host_groups_are_bounded_and_alerting_ones_come_first() {
        use crate::collect::snapshot::WatchSnapshot;
        let m = Metrics::new(2);
        let g = |exe: &str, resident: u64, firing: usize| HostGroup {
            exe_name: exe.into(),
            unit: format!("{exe}.service"),
            processes: 1,
            resident_bytes: resident,
            anon_bytes: resident / 2,
            growth_bytes_per_second: if firing > 0 { 2048.0 } else { 0.0 },
            pending: 0,
            firing,
        };
        let s = Snapshot {
            watch: WatchSnapshot {
                enabled: true,
                watched_processes: 4,
                groups: vec![g("big", 1000, 0), g("leaky", 10, 1), g("mid", 500, 0), g("small", 5, 0)],
                alerts_fired_total: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        m.update(&s);
        let t = m.encode();
        assert_eq!(
            value(
                &t,
                "memwatch_group_alerts{exe=\"leaky\",state=\"firing\",unit=\"leaky.service\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&t, "memwatch_group_resident_bytes{exe=\"big\",unit=\"big.service\"}"),
            Some(1000.0)
        );
        assert_eq!(
            value(&t, "memwatch_group_resident_bytes{exe=\"other\",unit=\"\"}"),
            Some(505.0)
        );
        assert_eq!(
            value(
                &t,
                "memwatch_group_growth_bytes_per_second{exe=\"leaky\",unit=\"leaky.service\"}"
            ),
            Some(2048.0)
        );
        assert_eq!(value(&t, "memwatch_processes_watched"), Some(4.0));
        assert_eq!(value(&t, "memwatch_alerts{state=\"firing\"}"), Some(1.0));
        assert_eq!(
            value(&t, "memwatch_alert_transitions_total{transition=\"fired\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&t, "memwatch_escalations_total{outcome=\"over_budget\"}"),
            Some(0.0)
        );
        assert!(!t.contains("exe=\"mid\""));
    }

    #[test]
    fn only_the_top_executables_get_series() {
        let m = Metrics::new(2);
        let s = Snapshot {
            groups: vec![
                group("a", 10, 1),
                group("b", 30, 2),
                group("c", 20, 3),
                group("d", 5, 4),
            ],
            ..Default::default()
        };
        m.update(&s);
        let t = m.encode();
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"b\"}"), Some(30.0));
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"c\"}"), Some(20.0));
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"other\"}"), Some(15.0));
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"a\"}"), None);
        assert_eq!(value(&t, "memwatch_process_allocations_total{exe=\"c\"}"), Some(3.0));
        assert!(!t.contains("pid="));
        // "a" overtakes "c": c's series go away.
        let s = Snapshot {
            groups: vec![group("a", 100, 1), group("b", 30, 2), group("c", 20, 3)],
            ..Default::default()
        };
        m.update(&s);
        let t = m.encode();
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"c\"}"), None);
        assert_eq!(value(&t, "memwatch_process_allocations_total{exe=\"c\"}"), None);
        assert_eq!(value(&t, "memwatch_process_live_bytes{exe=\"a\"}"), Some(100.0));
    }
}

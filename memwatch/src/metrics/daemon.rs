//! memwatch's own health: scans, table fill, attach failures.

use prometheus::{Gauge, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

use super::series::{advance, gauge};
use crate::collect::snapshot::Snapshot;

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

    pub(super) fn update(&self, s: &Snapshot) {
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

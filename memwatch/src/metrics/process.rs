//! Tracked processes by executable name: the top N with their own series.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::series::{advance, counter_vec, gauge_vec};
use crate::collect::snapshot::Snapshot;

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

    pub(super) fn update(&self, s: &Snapshot) {
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

//! Stack walking: how stacks were walked and why walks ended, the rule
//! cache's hits and misses, and the unwind tables' use of their bounded
//! kernel array.

use memwatch_common::unwind::{EndReason, Method, STAT_CFI_FRAMES, STAT_RULE_MISSES, stat_index};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

use super::series::{advance, counter_vec, gauge};
use crate::collect::snapshot::Snapshot;

pub struct UnwindMetrics {
    walks: IntCounterVec,
    lookups: IntCounterVec,
    rows: IntGauge,
    rows_capacity: IntGauge,
    tables: IntGauge,
    processes: IntGauge,
    without_room: IntCounter,
}

const METHODS: [(Method, &str); 2] = [(Method::Cfi, "cfi"), (Method::FramePointers, "frame_pointers")];

impl UnwindMetrics {
    pub fn register(r: &Registry) -> Self {
        let walks = counter_vec(
            r,
            "memwatch_stack_walks_total",
            "Stacks captured, by how they were walked (cfi, frame_pointers) and where the walk ended (complete, or why it was cut short).",
            &["method", "end"],
        );
        for (_, m) in METHODS {
            for e in EndReason::ALL {
                walks.with_label_values(&[m, e.name()]);
            }
        }
        let lookups = counter_vec(
            r,
            "memwatch_unwind_rule_lookups_total",
            "Unwind rules looked up per frame: from the per-CPU cache (hit) or the process's tables (miss).",
            &["result"],
        );
        let without_room = IntCounter::new(
            "memwatch_unwind_tables_without_room_total",
            "Objects whose unwind table found no room in unwind.rows (their code is walked by frame pointers).",
        )
        .expect("valid metric");
        r.register(Box::new(without_room.clone())).expect("unique metric");
        UnwindMetrics {
            walks,
            lookups,
            rows: gauge(r, "memwatch_unwind_rows", "Unwind rows loaded into the kernel."),
            rows_capacity: gauge(
                r,
                "memwatch_unwind_rows_capacity",
                "Capacity of the kernel's unwind rows (unwind.rows).",
            ),
            tables: gauge(r, "memwatch_unwind_tables", "Objects with an unwind table loaded."),
            processes: gauge(
                r,
                "memwatch_unwind_processes",
                "Processes whose stacks are walked by CFI.",
            ),
            without_room,
        }
    }

    pub fn update(&self, s: &Snapshot) {
        let u = &s.unwind;
        if let Some(stats) = &u.stats {
            for (method, name) in METHODS {
                for e in EndReason::ALL {
                    let n = stats[stat_index(method, e) as usize];
                    advance(&self.walks.with_label_values(&[name, e.name()]), n);
                }
            }
            let (frames, misses) = (stats[STAT_CFI_FRAMES as usize], stats[STAT_RULE_MISSES as usize]);
            advance(&self.lookups.with_label_values(&["hit"]), frames.saturating_sub(misses));
            advance(&self.lookups.with_label_values(&["miss"]), misses);
        }
        self.rows.set(u.totals.rows_used.into());
        self.rows_capacity.set(u.totals.rows_capacity.into());
        self.tables.set(u.totals.objects as i64);
        self.processes.set(u.totals.processes as i64);
        advance(&self.without_room, u.totals.objects_without_room);
    }
}

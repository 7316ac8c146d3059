//! Allocator activity by family (`allocator` label), summed over every
//! tracked process, exited ones included.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::series::{advance, counter_vec, gauge_vec};
use crate::collect::snapshot::Snapshot;

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

    pub(super) fn update(&self, s: &Snapshot) {
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

//! What the eBPF programs lost, by reason.

use prometheus::{IntCounterVec, Registry};

use super::series::{advance, counter_vec};
use crate::collect::snapshot::Snapshot;

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

    pub(super) fn update(&self, s: &Snapshot) {
        for (reason, n) in &s.drops {
            advance(&self.lost.with_label_values(&[reason.name()]), *n);
        }
    }
}

//! OOM kills on the host, by what ran out: the victim's memory cgroup
//! (`cgroup`) or the host (`global`). Victims are at `GET /oom`, never
//! labels here.

use prometheus::{IntCounterVec, Registry};

use super::series::{advance, counter_vec};
use crate::collect::snapshot::Snapshot;

pub struct OomMetrics {
    kills: IntCounterVec,
}

const CONSTRAINTS: [&str; 3] = ["cgroup", "global", "systemd-oomd"];

impl OomMetrics {
    pub fn register(r: &Registry) -> Self {
        let kills = counter_vec(
            r,
            "memwatch_oom_kills_total",
            "Processes killed for memory, by constraint: the kernel's OOM killer at their memory cgroup's limit (cgroup) or for the host's memory (global), or systemd-oomd (systemd-oomd). GET /oom has their post-mortems.",
            &["constraint"],
        );
        for c in CONSTRAINTS {
            kills.with_label_values(&[c]);
        }
        OomMetrics { kills }
    }

    pub fn update(&self, s: &Snapshot) {
        for (c, total) in CONSTRAINTS.iter().zip(s.oom_kills_total) {
            advance(&self.kills.with_label_values(&[c]), total);
        }
    }
}

//! Steering: control requests answered and config reloads, by outcome, and
//! the selections in force. Requests are counted as they are answered, not
//! from a snapshot.

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::series::{counter_vec, gauge_vec};
use crate::{collect::snapshot::Snapshot, control::Source};

pub struct ControlMetrics {
    requests: IntCounterVec,
    reloads: IntCounterVec,
    tracks: IntGaugeVec,
}

const REQUESTS: [&str; 3] = ["track", "untrack", "reload"];

impl ControlMetrics {
    pub fn register(r: &Registry) -> Self {
        let m = ControlMetrics {
            requests: counter_vec(
                r,
                "memwatch_control_requests_total",
                "Control requests (track, untrack, reload) answered, by result (ok, refused).",
                &["request", "result"],
            ),
            reloads: counter_vec(
                r,
                "memwatch_config_reloads_total",
                "Config re-reads on SIGHUP, by result (applied, refused: the old config stays).",
                &["result"],
            ),
            tracks: gauge_vec(
                r,
                "memwatch_tracks",
                "Selections in force (pid or exe glob), by source (config, control).",
                &["source"],
            ),
        };
        for q in REQUESTS {
            for result in ["ok", "refused"] {
                m.requests.with_label_values(&[q, result]);
            }
        }
        for result in ["applied", "refused"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    pub fn request(&self, name: &str, ok: bool) {
        let name = if REQUESTS.contains(&name) { name } else { "other" };
        self.requests
            .with_label_values(&[name, if ok { "ok" } else { "refused" }])
            .inc();
    }

    pub fn reload(&self, applied: bool) {
        self.reloads
            .with_label_values(&[if applied { "applied" } else { "refused" }])
            .inc();
    }

    pub fn update(&self, s: &Snapshot) {
        for (source, name) in [(Source::Config, "config"), (Source::Control, "control")] {
            let n = s.tracks.iter().filter(|t| t.source == source).count();
            self.tracks.with_label_values(&[name]).set(n as i64);
        }
    }
}

//! Taking an OOM-kill post-mortem (see `oom`) the moment the kernel marks
//! its victim, while its /proc entry and mappings can still be read.

use std::sync::Arc;

use super::{
    Collector,
    aggregate::aggregate,
    oom::{OomKill, SuspectVerdict},
    stack_report::{GROWTH_STACKS, GrowthStackReport, stack_reports},
};
use crate::{
    clock::monotonic_ns,
    process::{Identity, cgroup::Placement, memcg, unix_now},
};

impl Collector {
    /// Keeps a post-mortem of `pid`, just marked as the OOM killer's victim
    /// (or sent SIGKILL by systemd-oomd, `by_oomd`). Read at once: the
    /// process is dying and its /proc entry goes with it.
    pub(super) fn on_oom_victim(&mut self, pid: u32, by_oomd: bool) {
        let killed_unix = unix_now();
        let tracked = self.table.get(pid).is_some();
        if tracked {
            // Its live records as of the kill.
            self.scan_with(false);
        } else {
            // Its growth records as of the kill.
            self.refresh_growth();
        }
        let snapshot = self.shared.get();
        let process = snapshot.processes.iter().find(|p| p.id.pid == pid);
        let now_mono = monotonic_ns() as f64 / 1e9;
        let watched = self.watcher.as_ref().and_then(|w| w.lock().last_seen(pid).cloned());
        // Read afresh while it can be; a dying process's v1 cgroups may
        // read as the root already, and then what was seen before stands.
        let (fresh_place, fresh_nspid) = crate::process::cgroup::read(pid);
        let placed = |p: &Placement| p.memory.as_ref().is_some_and(|m| m.path != "/");
        let place = match (&watched, process) {
            _ if placed(&fresh_place) => fresh_place,
            (Some(w), _) if placed(&w.cgroup) => w.cgroup.clone(),
            (_, Some(p)) if placed(&p.id.place) => p.id.place.clone(),
            _ => fresh_place,
        };
        let cgroup = place
            .memory
            .as_ref()
            .and_then(|m| memcg::read(m, std::path::Path::new("/sys/fs/cgroup")));
        let constraint = if by_oomd {
            "systemd-oomd"
        } else if cgroup.as_ref().is_some_and(|c| c.limit_reached()) {
            "cgroup"
        } else {
            "global"
        };

        let (mut stacks, mut live_bytes, mut live_allocations) = (Vec::new(), 0, 0);
        if let Some(p) = process {
            let agg = aggregate(&p.allocations, None);
            stacks = stack_reports(p, &agg, self.config.stacks_per_process, monotonic_ns());
            (live_bytes, live_allocations) = (agg.live_bytes, agg.live_allocations);
        }
        let growth_stacks = match (&watched, tracked) {
            (Some(w), false) => self.growth_of_victim(pid, w),
            _ => Vec::new(),
        };
        let id = Identity {
            nspid: fresh_nspid.or(watched.as_ref().and_then(|w| w.nspid)),
            place,
            ..match (process, &watched) {
                (Some(p), _) => p.id.clone(),
                (None, Some(w)) => w.identity(),
                (None, None) => Identity {
                    pid,
                    comm: crate::process::procfs::read_stat(pid)
                        .map(|s| s.comm)
                        .unwrap_or_default(),
                    ..Default::default()
                },
            }
        };
        let kill = OomKill {
            id,
            killed_unix,
            constraint,
            cgroup,
            resident_bytes: watched.as_ref().map_or(0, |w| w.memory.rss),
            heap_bytes: watched.as_ref().map_or(0, |w| w.memory.heap()),
            curve: watched.as_ref().map_or_else(Vec::new, |w| {
                w.curve()
                    .into_iter()
                    .map(|(t, b)| (killed_unix - (now_mono - t), b))
                    .collect()
            }),
            suspect: watched
                .as_ref()
                .filter(|w| w.alert.is_suspect())
                .map(|w| SuspectVerdict {
                    alert: w.alert,
                    verdict: w.estimate.verdict,
                    rate_bytes_per_second: w.estimate.rate,
                    confidence: w.estimate.confidence,
                }),
            tracked,
            live_bytes,
            live_allocations,
            stacks,
            growth_stacks,
            python_census: self
                .censuses
                .as_ref()
                .and_then(|c| c.get(pid, watched.as_ref().map(|w| w.start_time))),
        };
        tracing::warn!(
            pid,
            comm = %kill.id.comm,
            exe = %kill.id.exe,
            unit = kill.id.place.unit.as_deref(),
            container = kill.id.place.container_short(),
            pod = kill.id.place.pod.as_deref(),
            constraint,
            cgroup = kill.cgroup.as_ref().map(|c| c.cgroup.as_str()),
            limit_bytes = kill.cgroup.as_ref().and_then(|c| c.limit_bytes),
            suspect = kill.suspect.is_some(),
            tracked,
            "OOM kill: {} (GET /oom for its post-mortem)",
            if by_oomd { "systemd-oomd killed this process" } else { "the kernel's OOM killer chose this process" }
        );
        self.oom_kills[match constraint {
            "cgroup" => 0,
            "global" => 1,
            _ => 2,
        }] += 1;
        self.oom.push_front(Arc::new(kill));
        self.oom.truncate(self.config.oom_kept);
    }

    /// The largest growth stacks of an untracked victim, symbolized now,
    /// while its mappings can still be read.
    fn growth_of_victim(&mut self, pid: u32, w: &crate::watch::Watched) -> Vec<GrowthStackReport> {
        let mut growth = w.growth.clone();
        growth.sort_by_key(|g| std::cmp::Reverse(g.bytes));
        growth.truncate(GROWTH_STACKS);
        for g in growth.iter_mut().filter(|g| g.frames.is_none() && g.stack_id != 0) {
            g.frames = self.symbolize_one(pid, g.stack_id);
        }
        growth.iter().map(GrowthStackReport::of).collect()
    }
}

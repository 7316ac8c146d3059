//! The `/leaks` report: tracked processes and their live allocations grouped
//! by stack, largest first. Built from a [`Snapshot`] by pure functions.

pub mod frames;
pub mod host;
pub mod oom;
pub mod query;
pub mod text;

use serde::Serialize;

pub use crate::collect::stack_report::{
    Allocated, GrowthStackReport, StackReport, allocated_stacks, stack_reports, stack_reports_from,
};
use crate::{
    collect::{
        aggregate::{Aggregated, StackAggregate, aggregate},
        history,
        rates::Rates,
        replacement,
        snapshot::{EndedProcess, ProcessSnapshot, Snapshot, SuspectSnapshot},
    },
    process::Selection,
    watch::{
        alert::Alert,
        escalation::Status as EscalationStatus,
        estimator::{Verdict, WindowEstimate},
    },
};
pub use query::{Format, LeaksQuery};

#[derive(Debug, Serialize)]
pub struct LeaksReport {
    /// When the data was read from the kernel (Unix seconds).
    pub snapshot_unix: f64,
    pub snapshot_age_seconds: f64,
    pub min_age_seconds: f64,
    /// "now", or "peak" with `?at=peak`: stacks as of each process's peak.
    pub at: &'static str,
    /// "live", or "allocated" with `?sort=allocated`: stacks ranked by what
    /// they allocated since tracking began.
    pub sort: &'static str,
    /// Processes the host-wide detector flagged (firing alerts first), with
    /// their evidence.
    pub suspects: Vec<SuspectReport>,
    /// Processes tracked exactly (by --pid, --exe, or escalation).
    pub processes: Vec<ProcessReport>,
    /// Processes whose exact tracking ended (untracked, their track's time
    /// up, or exited), newest first, as the last scan before saw them.
    pub ended: Vec<ProcessReport>,
}

#[derive(Debug, Serialize)]
pub struct SuspectReport {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub cmdline: String,
    /// Its systemd unit, container (whole id), pod UID and QoS class.
    #[serde(flatten)]
    pub place: crate::process::cgroup::Placement,
    /// The pid inside its own pid namespace (a container's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nspid: Option<u32>,
    pub exited: bool,
    pub alert: Alert,
    pub growth: GrowthReport,
    /// Address-space growth by stack (mmap, brk, mremap), from before any
    /// escalation; frames past uninstrumented libraries may be missing.
    pub growth_stacks: Vec<GrowthStackReport>,
    pub escalation: Option<EscalationStatus>,
    /// Live allocations by stack at the end of exact tracking, largest first.
    pub stacks: Vec<StackReport>,
}

#[derive(Debug, Serialize)]
pub struct GrowthReport {
    pub verdict: Verdict,
    pub rate_bytes_per_second: f64,
    pub confidence: f64,
    /// How long the leak has been seen (0 when it is not).
    pub duration_seconds: f64,
    /// Anonymous memory, resident and swapped.
    pub heap_bytes: u64,
    pub resident_bytes: u64,
    pub windows: Vec<WindowEstimate>,
}

#[derive(Debug, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// The pid inside its own pid namespace (a container's), as `docker
    /// top` and the container's logs show it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nspid: Option<u32>,
    pub comm: String,
    pub exe: String,
    pub cmdline: String,
    /// Its systemd unit, container (whole id), pod UID and QoS class.
    #[serde(flatten)]
    pub place: crate::process::cgroup::Placement,
    pub selection: Selection,
    pub tracked_since_unix: f64,
    /// Live bytes and allocations (those at least `min_age` old).
    pub live_bytes: u64,
    pub live_allocations: u64,
    #[serde(flatten)]
    pub rates: Rates,
    pub totals: Totals,
    /// Distinct stacks with live allocations, before `limit`.
    pub stack_count: usize,
    pub stacks: Vec<StackReport>,
    /// In a CPython process: its version and what memwatch sees of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<crate::python::Sight>,
    /// With `?since=`: the change of the whole live heap over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<WindowGrowth>,
    /// Its high-water mark since tracking began; with `?at=peak`, `stacks`,
    /// `live_bytes` and `live_allocations` are those of the scan nearest it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak: Option<PeakReport>,
    /// Tracked live bytes at the scans kept for `?since=` (thinning with
    /// age, up to an hour), then now: [Unix seconds, bytes], oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub live_history: Vec<(f64, u64)>,
    /// When and why its tracking ended (in `ended` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<TrackingEnded>,
}

/// A process's peak: exact from the kernel, and the scan that saw the most.
#[derive(Debug, Serialize)]
pub struct PeakReport {
    /// Tracked live bytes at the high-water mark (allocated − freed,
    /// allocations no store had room for included).
    pub bytes: u64,
    pub at_unix: f64,
    /// The scan whose stacks stand for the peak: when, how much it saw
    /// live, and how far from the mark it was.
    pub stacks_seen_unix: f64,
    pub stacks_seen_bytes: u64,
    pub seconds_from_peak: f64,
}

fn peak_report(p: &crate::collect::snapshot::PeakSnapshot) -> PeakReport {
    PeakReport {
        bytes: p.bytes,
        at_unix: p.at_unix,
        stacks_seen_unix: p.view.taken_unix,
        stacks_seen_bytes: p.view.aggregated.live_bytes,
        seconds_from_peak: (p.view.taken_unix - p.at_unix).abs(),
    }
}

#[derive(Debug, Serialize)]
pub struct TrackingEnded {
    pub at_unix: f64,
    pub why: String,
    /// The scan its figures and stacks are from.
    pub seen_unix: f64,
}

/// The counters as reported; `live` (the process's live blocks) tells how
/// glibc rounded its requests, for the untracked frees' estimate.
fn totals(c: &memwatch_common::alloc::ProcCounters, live: &[crate::collect::snapshot::LiveAlloc]) -> Totals {
    Totals {
        allocations: c.allocations,
        frees: c.frees,
        allocated_bytes: c.allocated_bytes,
        freed_bytes: c.freed_bytes,
        untracked_frees: c.untracked_frees,
        untracked_freed_bytes: replacement::untracked_request_bytes(
            c.untracked_freed_usable_bytes,
            c.untracked_frees,
            live,
        ),
        lost_allocations: c.lost_allocations,
        lost_bytes: c.lost_bytes,
    }
}

fn ended_report(e: &EndedProcess, limit: usize) -> ProcessReport {
    ProcessReport {
        pid: e.pid,
        nspid: e.nspid,
        comm: e.comm.clone(),
        exe: e.exe.clone(),
        cmdline: e.cmdline.clone(),
        place: e.place.clone(),
        selection: e.selection.clone(),
        tracked_since_unix: e.tracked_since_unix,
        live_bytes: e.live_bytes,
        live_allocations: e.live_allocations,
        rates: Rates::default(),
        totals: totals(&e.counters, &[]),
        stack_count: e.stack_count,
        stacks: e.stacks.iter().take(limit).cloned().collect(),
        python: None,
        growth: None,
        peak: None,
        live_history: Vec::new(),
        ended: Some(TrackingEnded {
            at_unix: e.ended_unix,
            why: e.why.clone(),
            seen_unix: e.seen_unix,
        }),
    }
}

/// Growth over a window, from the reading kept closest before its start.
#[derive(Debug, Serialize)]
pub struct WindowGrowth {
    /// The reading compared with, and the window actually covered (at least
    /// the one asked for, when memwatch has tracked the process that long).
    pub since_unix: f64,
    pub window_seconds: f64,
    pub growth_bytes: i64,
    pub growth_allocations: i64,
    /// Frees of blocks allocated before tracking began, in the window, and
    /// what they released (estimated from glibc's chunk headers; 0 where
    /// the allocator keeps no size: see /probes).
    pub untracked_frees: u64,
    pub untracked_freed_bytes: u64,
    /// The heap's growth less what the untracked frees released: what the
    /// process really grew by.
    pub net_growth_bytes: i64,
}

/// Counts since tracking began.
#[derive(Debug, Serialize)]
pub struct Totals {
    pub allocations: u64,
    pub frees: u64,
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
    pub untracked_frees: u64,
    /// What the untracked frees released (estimated from glibc's chunk
    /// headers; 0 where the allocator keeps no size).
    pub untracked_freed_bytes: u64,
    /// Allocations live in the process that no store had room for:
    /// allocated - freed - lost = live, in count and in bytes.
    pub lost_allocations: u64,
    pub lost_bytes: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LeaksError {
    NotTracked { pid: u32, tracked: Vec<u32> },
}

impl std::fmt::Display for LeaksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaksError::NotTracked { pid, tracked } if tracked.is_empty() => {
                write!(f, "process {pid} is not tracked (no process is)")
            }
            LeaksError::NotTracked { pid, tracked } => {
                let list: Vec<String> = tracked.iter().map(u32::to_string).collect();
                write!(f, "process {pid} is not tracked (tracked: {})", list.join(", "))
            }
        }
    }
}

fn suspect_report(s: &SuspectSnapshot, limit: usize, now_unix: f64) -> SuspectReport {
    SuspectReport {
        pid: s.pid,
        comm: s.comm.clone(),
        exe: s.exe.clone(),
        cmdline: s.cmdline.clone(),
        place: s.place.clone(),
        nspid: s.nspid,
        exited: s.exited,
        alert: s.alert,
        growth: GrowthReport {
            verdict: s.estimate.verdict,
            rate_bytes_per_second: s.estimate.rate,
            confidence: s.estimate.confidence,
            duration_seconds: s.leaking_since.map_or(0.0, |t| (now_unix - t).max(0.0)),
            heap_bytes: s.memory.heap(),
            resident_bytes: s.memory.rss,
            windows: s.estimate.windows.clone(),
        },
        growth_stacks: s.growth.iter().take(limit).map(GrowthStackReport::of).collect(),
        escalation: s.escalation.clone(),
        stacks: s.evidence.iter().take(limit).cloned().collect(),
    }
}

/// The stacks with the most net growth since `earlier` first, with their
/// growth and what of it replaced blocks freed untracked; and the growth of
/// the whole heap.
fn growth_reports(
    p: &ProcessSnapshot,
    agg: &Aggregated,
    earlier: &history::Reading,
    (snapshot_ns, now_ns): (u64, u64),
    limit: usize,
) -> (Vec<StackReport>, WindowGrowth) {
    let untracked_frees = p
        .counters
        .untracked_frees
        .saturating_sub(earlier.counters.untracked_frees);
    let untracked_bytes = replacement::untracked_request_bytes(
        p.counters
            .untracked_freed_usable_bytes
            .saturating_sub(earlier.counters.untracked_freed_usable_bytes),
        untracked_frees,
        &p.allocations,
    );
    let grown: Vec<_> = agg.stacks.iter().map(|s| (*s, earlier.change(s))).collect();
    let replaced = replacement::replacing(&grown.iter().map(|g| g.1.0).collect::<Vec<_>>(), untracked_bytes);
    let mut grown: Vec<_> = grown.into_iter().zip(replaced).collect();
    grown.sort_by(|a, b| {
        let net = |g: &((StackAggregate, (i64, i64)), u64)| g.0.1.0 - g.1 as i64;
        net(b)
            .cmp(&net(a))
            .then(b.0.1.0.cmp(&a.0.1.0))
            .then(b.0.0.live_bytes.cmp(&a.0.0.live_bytes))
    });
    grown.truncate(limit);
    let sorted = Aggregated {
        stacks: grown.iter().map(|g| g.0.0).collect(),
        ..Default::default()
    };
    let mut reports = stack_reports(p, &sorted, limit, now_ns);
    for (r, ((_, (bytes, count)), replacing)) in reports.iter_mut().zip(&grown) {
        r.growth_bytes = Some(*bytes);
        r.growth_allocations = Some(*count);
        r.replacing_bytes = Some(*replacing);
        r.net_growth_bytes = Some(bytes - *replacing as i64);
    }
    let (before_bytes, before_count) = earlier
        .stacks
        .values()
        .fold((0u64, 0u64), |(b, n), &(sb, sn)| (b + sb, n + sn));
    let growth_bytes = agg.live_bytes as i64 - before_bytes as i64;
    let window = WindowGrowth {
        since_unix: earlier.taken_unix,
        // Readings are the scans': the window ends at this snapshot's.
        window_seconds: snapshot_ns.saturating_sub(earlier.taken_ns) as f64 / 1e9,
        growth_bytes,
        growth_allocations: agg.live_allocations as i64 - before_count as i64,
        untracked_frees,
        untracked_freed_bytes: untracked_bytes,
        net_growth_bytes: growth_bytes - untracked_bytes as i64,
    };
    (reports, window)
}

/// Builds the report as of `now_ns` (CLOCK_MONOTONIC).
pub fn build(snapshot: &Snapshot, q: &LeaksQuery, now_ns: u64, now_unix: f64) -> Result<LeaksReport, LeaksError> {
    if let Some(pid) = q.pid
        && !snapshot.processes.iter().any(|p| p.pid == pid)
        && !snapshot.watch.suspects.iter().any(|s| s.pid == pid)
        && !snapshot.ended.iter().any(|e| e.pid == pid)
    {
        return Err(LeaksError::NotTracked {
            pid,
            tracked: snapshot.processes.iter().map(|p| p.pid).collect(),
        });
    }
    let min_age_ns = q.min_age.as_nanos().min(u64::MAX as u128) as u64;
    let cutoff = (min_age_ns > 0).then(|| now_ns.saturating_sub(min_age_ns));
    let mut processes: Vec<ProcessReport> = snapshot
        .processes
        .iter()
        .filter(|p| q.pid.is_none_or(|pid| pid == p.pid))
        .map(|p| {
            let peak_view = p.peak.as_ref().filter(|_| q.at_peak).map(|pk| &pk.view);
            let agg = match peak_view {
                Some(v) => v.aggregated.clone(),
                None if q.by_allocated => allocated_stacks(p, &aggregate(&p.allocations, None)),
                None => aggregate(&p.allocations, cutoff),
            };
            let since = q.since.map(|d| d.as_nanos().min(u64::MAX as u128) as u64);
            let earlier = since.and_then(|d| history::earlier(&p.history, snapshot.taken_at_ns, d));
            let (stacks, growth) = match (earlier, peak_view) {
                (_, Some(v)) => (stack_reports_from(&v.stacks, &agg, q.limit, now_ns), None),
                (Some(e), None) => {
                    let (stacks, g) = growth_reports(p, &agg, e, (snapshot.taken_at_ns, now_ns), q.limit);
                    (stacks, Some(g))
                }
                (None, None) => (stack_reports(p, &agg, q.limit, now_ns), None),
            };
            let c = &p.counters;
            ProcessReport {
                pid: p.pid,
                nspid: p.nspid,
                comm: p.comm.clone(),
                exe: p.exe.clone(),
                cmdline: p.cmdline.clone(),
                place: p.place.clone(),
                selection: p.selection.clone(),
                tracked_since_unix: p.tracked_since_unix,
                live_bytes: agg.live_bytes,
                live_allocations: agg.live_allocations,
                rates: p.rates,
                totals: totals(c, &p.allocations),
                stack_count: agg.stacks.len(),
                stacks,
                python: p.python.clone(),
                growth,
                peak: p.peak.as_ref().map(peak_report),
                live_history: p
                    .history
                    .iter()
                    .map(|r| (r.taken_unix, r.live_bytes()))
                    .chain([(snapshot.taken_at_unix, p.allocations.iter().map(|a| a.size).sum())])
                    .collect(),
                ended: None,
            }
        })
        .collect();
    let grown = |p: &ProcessReport| p.growth.as_ref().map_or(0, |g| g.net_growth_bytes);
    processes.sort_by(|a, b| {
        grown(b)
            .cmp(&grown(a))
            .then(b.live_bytes.cmp(&a.live_bytes))
            .then(a.pid.cmp(&b.pid))
    });
    let mut suspects: Vec<SuspectReport> = snapshot
        .watch
        .suspects
        .iter()
        .filter(|s| q.pid.is_none_or(|pid| pid == s.pid))
        .map(|s| suspect_report(s, q.limit, now_unix))
        .collect();
    let rank = |a: &Alert| match a {
        Alert::Firing { .. } => 0,
        Alert::Pending { .. } => 1,
        _ => 2,
    };
    suspects.sort_by(|a, b| {
        rank(&a.alert).cmp(&rank(&b.alert)).then(
            b.growth
                .rate_bytes_per_second
                .total_cmp(&a.growth.rate_bytes_per_second),
        )
    });
    let mut report = LeaksReport {
        snapshot_unix: snapshot.taken_at_unix,
        snapshot_age_seconds: (now_unix - snapshot.taken_at_unix).max(0.0),
        min_age_seconds: q.min_age.as_secs_f64(),
        at: if q.at_peak { "peak" } else { "now" },
        sort: if q.by_allocated { "allocated" } else { "live" },
        suspects,
        processes,
        ended: snapshot
            .ended
            .iter()
            .filter(|e| q.pid.is_none_or(|pid| pid == e.pid))
            .map(|e| ended_report(e, q.limit))
            .collect(),
    };
    report.show_frames(q.frames);
    Ok(report)
}

impl LeaksReport {
    /// Folds interpreter frames in every stack, or leaves them (`?frames=`).
    fn show_frames(&mut self, frames: frames::Frames) {
        let stacks = self
            .processes
            .iter_mut()
            .chain(&mut self.ended)
            .flat_map(|p| &mut p.stacks)
            .chain(self.suspects.iter_mut().flat_map(|s| &mut s.stacks));
        for s in stacks {
            frames.apply(&mut s.frames);
        }
        for g in self.suspects.iter_mut().flat_map(|s| &mut s.growth_stacks) {
            frames.apply(&mut g.frames);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{collections::HashMap, sync::Arc, time::Duration};

    use memwatch_common::{alloc::ProcCounters, unwind::EndReason};

    use super::*;
    use crate::{
        collect::snapshot::{LiveAlloc, ProcessSnapshot},
        symbolize::{Frame, FrameKind, Stack, Walk, WalkReport},
    };

    pub(crate) fn frame(function: &str, line: u32) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: Some(function.into()),
            file: Some("/src/leaky.c".into()),
            line: Some(line),
            module: Some("/usr/bin/leaky".into()),
            build_id: Some("ab12".into()),
            address: Some("0x401234".into()),
            inlined: false,
        }
    }

    /// Two processes: 42 leaks 3 × 1000 bytes from `leak_here` (old) and
    /// holds one young 64-byte block; 7 holds 10 bytes with an unknown stack.
    const CONTAINER: &str = "3f4c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d";

    fn allocs(allocations: u64, bytes: u64, temporary: u64) -> crate::collect::profile::StackAllocs {
        crate::collect::profile::StackAllocs {
            allocations,
            bytes,
            temporary,
            temporary_bytes: temporary * (bytes / allocations.max(1)),
            kind: 1,
            family: 1,
        }
    }

    pub(crate) fn fake_snapshot() -> Snapshot {
        let s = 1_000_000_000;
        let mk = |stack_id, size, ts| LiveAlloc {
            stack_id,
            size,
            timestamp_ns: ts,
            kind: 1,
            family: 1,
        };
        let p42 = ProcessSnapshot {
            pid: 42,
            generation: 1 << 16,
            comm: "leaky".into(),
            exe: "/usr/bin/leaky".into(),
            exe_name: "leaky".into(),
            cmdline: "leaky --fast".into(),
            place: crate::process::cgroup::parse(&format!("0::/system.slice/docker-{CONTAINER}.scope\n")),
            nspid: Some(7),
            selection: Selection::Pid,
            tracked_since_unix: 1000.0,
            counters: ProcCounters {
                allocations: 10,
                frees: 6,
                allocated_bytes: 4064,
                freed_bytes: 1000,
                ..Default::default()
            },
            rates: Rates {
                allocations_per_second: 2.0,
                ..Default::default()
            },
            allocations: vec![
                mk(11, 1000, 10 * s),
                mk(11, 1000, 11 * s),
                mk(11, 1000, 12 * s),
                mk(22, 64, 99 * s),
            ],
            stacks: HashMap::from([
                (
                    11,
                    Arc::new(Stack {
                        frames: vec![frame("leak_here", 10), frame("main", 20)],
                        walk: Walk {
                            method: "cfi",
                            end: EndReason::Complete,
                            python_truncated: false,
                        },
                    }),
                ),
                (
                    22,
                    Arc::new(Stack {
                        frames: vec![frame("cache_fill", 30)],
                        walk: Walk {
                            method: "frame_pointers",
                            end: EndReason::BadFramePointer,
                            python_truncated: false,
                        },
                    }),
                ),
            ]),
            unwind: Vec::new(),
            python: None,
            history: Vec::new(),
            peak: None,
            alloc_profile: Arc::new(HashMap::from([
                (11, allocs(5, 5000, 2)),
                (22, allocs(3, 96, 0)),
                // Churn: everything it allocated was freed at once.
                (33, allocs(100, 100_000, 100)),
            ])),
            probes: vec![crate::process::ProbeSummary {
                module: "/usr/lib/libc.so.6".into(),
                build_id: Some("cafe".into()),
                function: "free",
                entry_offset: 0x98ef0,
                untracked_free_sizes: Some("read from glibc's chunk header"),
                placement: crate::target::placement::Placement {
                    offset: 9,
                    sp_words: 0,
                    instruction: "push %rbp".into(),
                    emulated: true,
                    reason: "moved past 2 single-stepped instruction(s) to an emulated one".into(),
                },
            }],
        };
        let p7 = ProcessSnapshot {
            pid: 7,
            comm: "small".into(),
            allocations: vec![mk(0, 10, 50 * s)],
            stacks: HashMap::new(),
            ..p42.clone()
        };
        Snapshot {
            ready: true,
            taken_at_ns: 100 * s,
            taken_at_unix: 5000.0,
            processes: vec![p7, p42],
            ..Default::default()
        }
    }

    fn q(pid: Option<u32>, min_age: u64, limit: usize) -> LeaksQuery {
        LeaksQuery {
            pid,
            min_age: Duration::from_secs(min_age),
            since: None,
            limit,
            format: Format::Json,
            at_peak: false,
            by_allocated: false,
            frames: Default::default(),
        }
    }

    #[test]
    fn largest_process_and_stack_first() {
        let r = build(&fake_snapshot(), &q(None, 0, 20), 100_000_000_000, 5001.0).unwrap();
        assert_eq!(r.processes.iter().map(|p| p.pid).collect::<Vec<_>>(), [42, 7]);
        let p = &r.processes[0];
        assert_eq!((p.live_bytes, p.live_allocations, p.stack_count), (3064, 4, 2));
        assert_eq!((p.stacks[0].live_bytes, p.stacks[0].live_allocations), (3000, 3));
        assert_eq!(p.stacks[0].oldest_age_seconds, 90.0);
        assert_eq!(p.stacks[0].frames[0].function.as_deref(), Some("leak_here"));
        assert_eq!(p.stacks[0].call, "malloc");
        assert_eq!(
            p.stacks[0].walk,
            WalkReport {
                truncated: false,
                truncation: None,
                unwind: "cfi"
            }
        );
        assert_eq!(
            p.stacks[1].walk,
            WalkReport {
                truncated: true,
                truncation: Some("no_frame_pointer"),
                unwind: "frame_pointers"
            }
        );
        assert_eq!(r.snapshot_age_seconds, 1.0);
        // A stack that could not be captured has no frames but still counts.
        assert!(r.processes[1].stacks[0].frames.is_empty());
    }

    #[test]
    fn filters_by_pid_age_and_limit() {
        let snap = fake_snapshot();
        let r = build(&snap, &q(Some(42), 0, 1), 100_000_000_000, 5001.0).unwrap();
        assert_eq!(r.processes.len(), 1);
        assert_eq!(r.processes[0].stacks.len(), 1);
        assert_eq!(r.processes[0].stack_count, 2);
        // Only allocations at least 50 s old: the young 64 bytes drop out.
        let r = build(&snap, &q(Some(42), 50, 20), 100_000_000_000, 5001.0).unwrap();
        assert_eq!((r.processes[0].live_bytes, r.processes[0].live_allocations), (3000, 3));
        assert_eq!(r.processes[0].stacks.len(), 1);
    }

    #[test]
    fn an_untracked_pid_is_an_error_naming_the_tracked_ones() {
        let e = build(&fake_snapshot(), &q(Some(5), 0, 20), 0, 0.0).unwrap_err();
        assert_eq!(e.to_string(), "process 5 is not tracked (tracked: 7, 42)");
        let e = build(&Snapshot::default(), &q(Some(5), 0, 20), 0, 0.0).unwrap_err();
        assert_eq!(e.to_string(), "process 5 is not tracked (no process is)");
    }

    /// A firing suspect, pid 99, in a unit and a pod.
    fn a_suspect(snap: &mut Snapshot) {
        use crate::{
            collect::snapshot::SuspectSnapshot,
            watch::{
                alert::Alert,
                estimator::{Estimate, Verdict},
                procmem::Memory,
            },
        };
        snap.watch.suspects.push(SuspectSnapshot {
            pid: 99,
            comm: "grower".into(),
            exe: "/srv/grower".into(),
            cmdline: String::new(),
            place: crate::process::cgroup::Placement {
                unit: Some("grower.service".into()),
                pod: Some("0d3a5c1e-7b2f-4e8a-9c6d-1f2e3a4b5c6d".into()),
                qos: Some("burstable".into()),
                ..Default::default()
            },
            nspid: Some(12),
            memory: Memory {
                rss: 100,
                anon: 80,
                file: 20,
                shmem: 0,
                swap: 0,
            },
            estimate: Estimate {
                verdict: Verdict::Leak,
                rate: 2048.0,
                confidence: 0.9,
                windows: vec![],
            },
            alert: Alert::Firing {
                since: 10.0,
                fired_at: 70.0,
                last_seen: 90.0,
            },
            leaking_since: Some(10.0),
            escalation: None,
            evidence: vec![],
            growth: vec![],
            exited: false,
        });
    }

    #[test]
    fn at_peak_the_peak_scans_stacks_stand_for_now() {
        use crate::collect::snapshot::{PeakSnapshot, PeakView};
        let mut snap = fake_snapshot();
        let p = snap.processes.iter_mut().find(|p| p.pid == 42).unwrap();
        // At its peak, stack 22 held 50 000 bytes in 50 blocks.
        let at_peak: Vec<LiveAlloc> = (0..50)
            .map(|_| LiveAlloc {
                stack_id: 22,
                size: 1000,
                timestamp_ns: 1,
                kind: 0,
                family: 1,
            })
            .collect();
        p.peak = Some(PeakSnapshot {
            bytes: 50_100,
            at_unix: 4000.0,
            view: Arc::new(PeakView {
                taken_unix: 4000.5,
                aggregated: aggregate(&at_peak, None),
                stacks: p.stacks.clone(),
            }),
        });
        let mut query = q(Some(42), 0, 20);
        let now = build(&snap, &query, 100_000_000_000, 5001.0).unwrap();
        assert_eq!(now.at, "now");
        assert_eq!(now.processes[0].live_bytes, 3064);
        let peak = now.processes[0].peak.as_ref().unwrap();
        assert_eq!((peak.bytes, peak.stacks_seen_bytes), (50_100, 50_000));
        assert!((peak.seconds_from_peak - 0.5).abs() < 1e-9);
        query.at_peak = true;
        let r = build(&snap, &query, 100_000_000_000, 5001.0).unwrap();
        assert_eq!(r.at, "peak");
        let p = &r.processes[0];
        assert_eq!((p.live_bytes, p.live_allocations), (50_000, 50));
        assert_eq!(p.stacks.len(), 1);
        assert_eq!(p.stacks[0].frames[0].function.as_deref(), Some("cache_fill"));
        let text = text::render(&r);
        assert!(
            text.contains("peak 48.9 KiB") && text.contains("the stacks below are the scan's"),
            "{text}"
        );
    }

    #[test]
    fn sorted_by_allocated_churn_comes_first_though_it_holds_nothing() {
        let mut query = q(Some(42), 0, 20);
        query.by_allocated = true;
        let r = build(&fake_snapshot(), &query, 100_000_000_000, 5001.0).unwrap();
        assert_eq!(r.sort, "allocated");
        let p = &r.processes[0];
        let first = p.stacks[0].allocated.unwrap();
        assert_eq!(
            (first.allocations, first.bytes, first.temporary_allocations),
            (100, 100_000, 100)
        );
        assert_eq!(p.stacks[0].live_bytes, 0);
        assert_eq!(p.stacks[1].allocated.unwrap().bytes, 5000);
        let text = text::render(&r);
        assert!(
            text.contains("allocated   97.7 KiB in     100 allocation(s), 100 temporary; live 0 B in 0"),
            "{text}"
        );
        // The live report carries the totals too.
        let live = build(&fake_snapshot(), &q(Some(42), 0, 20), 100_000_000_000, 5001.0).unwrap();
        assert!(live.processes[0].stacks.iter().all(|s| s.live_bytes > 0));
        assert!(
            live.processes[0]
                .stacks
                .iter()
                .any(|s| s.allocated.is_some_and(|a| a.bytes == 5000))
        );
        // pprof's alloc_space has the churn; its inuse_space does not.
        let stacks = crate::export::heap_stacks(&fake_snapshot(), Some(42), None, None, false);
        let churn: Vec<_> = stacks.iter().filter(|s| s.allocated_bytes == 100_000).collect();
        assert_eq!((churn.len(), churn[0].bytes), (1, 0));
        assert!(!crate::export::collapsed::render(&stacks).contains(" 0\n"));
    }

    #[test]
    fn a_suspect_alone_is_found_by_pid() {
        let mut snap = fake_snapshot();
        a_suspect(&mut snap);
        let r = build(&snap, &q(Some(99), 0, 20), 0, 100.0).unwrap();
        assert!(r.processes.is_empty());
        assert_eq!(r.suspects.len(), 1);
        assert_eq!(r.suspects[0].growth.duration_seconds, 90.0);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["suspects"][0]["alert"]["state"], "firing");
        assert_eq!(v["suspects"][0]["growth"]["verdict"], "leak");
        assert_eq!(v["suspects"][0]["unit"], "grower.service");
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = build(&fake_snapshot(), &q(Some(42), 0, 20), 100_000_000_000, 5001.0).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let p = &v["processes"][0];
        for key in [
            "pid",
            "comm",
            "live_bytes",
            "live_allocations",
            "stacks",
            "allocations_per_second",
            "frees_per_second",
        ] {
            assert!(p.get(key).is_some(), "missing {key}");
        }
        let s = &p["stacks"][0];
        for key in ["live_bytes", "live_allocations", "oldest_age_seconds", "frames"] {
            assert!(s.get(key).is_some(), "missing {key}");
        }
        let f = &s["frames"][0];
        for key in ["function", "file", "line", "module"] {
            assert!(f.get(key).is_some(), "missing {key}");
        }
        assert_eq!(f["kind"], "native");
        assert_eq!(p["selection"]["by"], "pid");
    }

    #[test]
    fn a_containers_process_is_named_by_its_container_and_inner_pid() {
        let r = build(&fake_snapshot(), &q(None, 0, 20), 100_000_000_000, 5001.0).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let p42 = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == 42)
            .unwrap();
        assert_eq!(p42["container"], CONTAINER);
        assert_eq!(p42["nspid"], 7);
        assert!(p42.get("unit").is_none() && p42.get("pod").is_none(), "{p42}");
        let p7 = v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == 7)
            .unwrap();
        assert_eq!(p7["container"], CONTAINER, "a clone of 42's");
        let text = text::render(&r);
        assert!(
            text.contains("\n  container 3f4c0a9b8e7d  pid 7 in its namespace\n"),
            "{text}"
        );
    }

    #[test]
    fn a_suspect_is_named_by_its_unit_pod_and_inner_pid() {
        let mut snap = fake_snapshot();
        a_suspect(&mut snap);
        let r = build(&snap, &q(None, 0, 20), 100_000_000_000, 5001.0).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let s = &v["suspects"][0];
        assert_eq!(s["unit"], "grower.service", "{s}");
        assert_eq!(s["pod"], "0d3a5c1e-7b2f-4e8a-9c6d-1f2e3a4b5c6d", "{s}");
        assert_eq!(
            (s["qos"].as_str(), s["nspid"].as_u64()),
            (Some("burstable"), Some(12)),
            "{s}"
        );
        let text = text::render(&r);
        assert!(
            text.contains(
                "  unit grower.service  pod 0d3a5c1e-7b2f-4e8a-9c6d-1f2e3a4b5c6d (burstable)  pid 12 in its namespace\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn growth_since_compares_with_the_reading_before_the_window() {
        let mut snap = fake_snapshot();
        let s = 1_000_000_000;
        let p42 = snap.processes.iter_mut().find(|p| p.pid == 42).unwrap();
        // 60 s ago stack 11 held one block of 1000 bytes, and a stack since
        // freed held 500; 1 s ago everything was as now.
        let old = crate::collect::history::Reading {
            taken_ns: 40 * s,
            taken_unix: 4940.0,
            stacks: HashMap::from([((11, 1, 1), (1000, 1)), ((99, 1, 1), (500, 2))]),
            counters: Default::default(),
        };
        let recent = crate::collect::history::Reading::of(&p42.allocations, 99 * s, 4999.0);
        p42.history = vec![Arc::new(old), Arc::new(recent)];
        let mut query = q(Some(42), 0, 10);
        query.since = Some(Duration::from_secs(30));
        let r = build(&snap, &query, 100 * s, 5000.0).unwrap();
        let p = &r.processes[0];
        let g = p.growth.as_ref().unwrap();
        assert_eq!((g.window_seconds, g.since_unix), (60.0, 4940.0));
        assert_eq!(g.growth_bytes, 3064 - 1500);
        assert_eq!(g.growth_allocations, 4 - 3);
        // Most grown first: stack 11 (+2000 in +2), then the new 64 bytes.
        let grown: Vec<(Option<i64>, Option<i64>)> = p
            .stacks
            .iter()
            .map(|s| (s.growth_bytes, s.growth_allocations))
            .collect();
        assert_eq!(grown, [(Some(2000), Some(2)), (Some(64), Some(1))]);
        // A window shorter than the scans kept compares with the newest.
        query.since = Some(Duration::from_millis(500));
        let r = build(&snap, &query, 100 * s, 5000.0).unwrap();
        assert_eq!(r.processes[0].growth.as_ref().unwrap().growth_bytes, 0);
        // No since: no growth fields.
        let r = build(&snap, &q(Some(42), 0, 10), 100 * s, 5000.0).unwrap();
        assert!(r.processes[0].growth.is_none() && r.processes[0].stacks[0].growth_bytes.is_none());
    }
}

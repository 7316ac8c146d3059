//! Always-on, host-wide watching: every process's heap is sampled from
//! /proc, judged for sustained growth and raised as an alert; the collector
//! escalates suspects to exact tracking under a budget.
//!
//! /proc sampling rather than the kmem:rss_stat tracepoint: rss_stat fires on
//! page-fault paths of every process (tens of thousands a second on a busy
//! host), so a program on it would tax everyone, while sampling every couple
//! of seconds costs the watched processes nothing.

pub mod alert;
pub mod escalation;
pub mod estimator;
pub mod procmem;
pub mod sampler;

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
};

use crate::{
    config::Detect,
    process::{cgroup, procfs},
    report::StackReport,
};
use alert::{Alert, Timing, Transition};
use estimator::{Estimate, Params, Sample, Verdict};

/// Heap growth attributed to one stack by the syscall tracepoints.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowthStack {
    pub stack_id: u64,
    pub bytes: u64,
    pub calls: u64,
    /// Filled in by the collector for suspects.
    pub frames: Option<std::sync::Arc<crate::symbolize::Stack>>,
}

/// A process on the host, as the watcher follows it.
#[derive(Debug, Clone)]
pub struct Watched {
    pub pid: u32,
    pub start_time: u64,
    pub comm: String,
    pub exe: PathBuf,
    pub cmdline: String,
    pub cgroup: cgroup::Placement,
    /// Its pid inside its own pid namespace, when that is not the host's.
    pub nspid: Option<u32>,
    pub memory: procmem::Memory,
    series: VecDeque<Sample>,
    pub estimate: Estimate,
    pub alert: Alert,
    /// When the heap has been judged a leak since (Unix seconds).
    pub leaking_since: Option<f64>,
    pub escalation: Option<escalation::Status>,
    pub last_escalation_end: Option<f64>,
    /// Leaking stacks seen by exact tracking during the escalation.
    pub evidence: Vec<StackReport>,
    pub growth: Vec<GrowthStack>,
    pub exited: bool,
}

impl Watched {
    pub fn identity(&self) -> crate::process::Identity {
        crate::process::Identity {
            pid: self.pid,
            nspid: self.nspid,
            comm: self.comm.clone(),
            exe: self.exe.display().to_string(),
            cmdline: self.cmdline.clone(),
            place: self.cgroup.clone(),
        }
    }

    pub fn exe_name(&self) -> String {
        crate::process::exe_name(&self.exe, &self.comm)
    }

    /// The systemd unit or, failing that, the container id.
    pub fn unit(&self) -> Option<&str> {
        self.cgroup.group()
    }

    /// Its heap (anonymous memory and swap) at each sample kept, oldest
    /// first: (seconds on the series' clock, bytes).
    pub fn curve(&self) -> Vec<(f64, u64)> {
        self.series.iter().map(|s| (s.t, s.bytes as u64)).collect()
    }
}

/// One process as /proc showed it: the I/O half of a sample, read with no
/// lock held.
pub struct Reading {
    pub pid: u32,
    pub start_time: u64,
    pub comm: String,
    pub memory: procmem::Memory,
}

/// Reads every process's heap, except `me`'s; kernel threads and zombies
/// have none and are left out.
pub fn read_host(me: u32) -> Vec<Reading> {
    let pids = procfs::list_pids().unwrap_or_default();
    let mut out = Vec::with_capacity(pids.len());
    for pid in pids {
        if pid == me {
            continue;
        }
        let Ok(stat) = procfs::read_stat(pid) else { continue };
        let Some(memory) = std::fs::read_to_string(procfs::proc_path(pid, "status"))
            .ok()
            .and_then(|t| procmem::parse_status(&t))
        else {
            continue;
        };
        out.push(Reading {
            pid,
            start_time: stat.start_time,
            comm: stat.comm,
            memory,
        });
    }
    out
}

/// What the watcher did since start, for /metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub alerts_fired: u64,
    pub alerts_resolved: u64,
    /// Ended escalations by [`escalation::Outcome`].
    pub escalation_outcomes: [u64; 4],
    /// How long the last sample took.
    pub sample_seconds: f64,
}

pub struct Watcher {
    procs: HashMap<u32, Watched>,
    params: Params,
    timing: Timing,
    keep_seconds: f64,
    /// Exited processes whose alert had fired, kept for display.
    gone: VecDeque<Watched>,
    /// Every process that exited lately, with when (monotonic seconds): an
    /// OOM kill's post-mortem may be taken after the sampler saw it go.
    exited: VecDeque<(f64, Watched)>,
    /// Command-line arguments kept for reports.
    cmdline_arguments: usize,
    pub counts: Counts,
}

const GONE_KEPT: usize = 100;
/// Processes that exited kept this long, and at most this many, for OOM
/// post-mortems.
const EXITED_KEPT_SECONDS: f64 = 30.0;
const EXITED_KEPT: usize = 256;
/// Stacks of each kind kept with a gone process: its report shows the
/// largest, and a churn of leakers exiting must not grow the daemon.
const GONE_STACKS: usize = 5;
/// Resolved alerts stay visible this long (seconds).
const RESOLVED_SHOWN: f64 = 3600.0;

impl Watcher {
    pub fn new(d: &Detect, cmdline_arguments: usize) -> Self {
        let mut w = Watcher {
            procs: HashMap::new(),
            params: Params {
                window: 0.0,
                min_rate: 0.0,
                min_confidence: 0.0,
            },
            timing: Timing::new(0.0, 0.0, 0.0),
            keep_seconds: 0.0,
            gone: VecDeque::new(),
            exited: VecDeque::new(),
            cmdline_arguments,
            counts: Counts::default(),
        };
        w.set_thresholds(d);
        w
    }

    /// Judges and times alerts by `d` from the next sample on (a reload);
    /// the series kept so far stay.
    pub fn set_thresholds(&mut self, d: &Detect) {
        self.params = Params {
            window: d.window_seconds,
            min_rate: d.min_rate,
            min_confidence: d.min_confidence,
        };
        self.timing = Timing::new(
            d.firing_after_seconds,
            d.resolve_after_seconds,
            d.sample_interval.as_secs_f64(),
        );
        self.keep_seconds = 4.0 * d.window_seconds + 2.0 * d.sample_interval.as_secs_f64();
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&Watched> {
        self.procs.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut Watched> {
        self.procs.get_mut(&pid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Watched> {
        self.procs.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Watched> {
        self.procs.values_mut()
    }

    /// Exited processes with an alert, newest last.
    pub fn gone(&self) -> impl Iterator<Item = &Watched> {
        self.gone.iter()
    }

    /// `pid` as last sampled, alive or exited lately.
    pub fn last_seen(&self, pid: u32) -> Option<&Watched> {
        self.procs
            .get(&pid)
            .or_else(|| self.exited.iter().rev().find(|(_, w)| w.pid == pid).map(|(_, w)| w))
    }

    /// Samples every process once. `mono` is monotonic seconds (for the
    /// series), `now` Unix seconds (for alert times).
    #[cfg(test)]
    pub fn sample(&mut self, mono: f64, now: f64) -> Vec<(u32, Transition)> {
        let readings = read_host(std::process::id());
        self.apply(readings, mono, now)
    }

    /// Takes in one reading of the host: series, verdicts, alerts, and the
    /// processes gone since the last one. Counts alert transitions and
    /// escalations ended by an exit. Returns the alert transitions.
    pub fn apply(&mut self, readings: Vec<Reading>, mono: f64, now: f64) -> Vec<(u32, Transition)> {
        let mut transitions = Vec::new();
        let mut alive = std::collections::HashSet::with_capacity(readings.len());
        for Reading {
            pid,
            start_time,
            comm,
            memory,
        } in readings
        {
            alive.insert(pid);
            let w = match self.procs.get_mut(&pid) {
                Some(w) if w.start_time == start_time => w,
                _ => {
                    // New, or the pid was reused: start afresh.
                    self.procs
                        .insert(pid, new_watched(pid, start_time, comm.clone(), self.cmdline_arguments));
                    self.procs.get_mut(&pid).expect("just inserted")
                }
            };
            w.memory = memory;
            if w.comm != comm {
                // It exec'd: another program, and perhaps placed (a
                // container's runtime joins its cgroup before the exec).
                w.exe = procfs::read_exe(pid).unwrap_or_default();
                w.cmdline = procfs::read_cmdline(pid, self.cmdline_arguments).unwrap_or_default();
                (w.cgroup, w.nspid) = cgroup::read(pid);
            }
            w.comm = comm;
            keep_sample(
                &mut w.series,
                Sample {
                    t: mono,
                    bytes: memory.heap() as f64,
                },
                self.keep_seconds,
            );
            w.estimate = judge(&mut w.series, &self.params);
            let leaking = w.estimate.verdict == Verdict::Leak;
            if leaking && w.leaking_since.is_none() {
                w.leaking_since = Some(now);
            } else if !leaking && !w.alert.is_suspect() {
                w.leaking_since = None;
            }
            let (next, tr) = w.alert.step(leaking, now, &self.timing);
            w.alert = next;
            if let Some(tr) = tr {
                transitions.push((pid, tr));
            }
        }
        // Processes that are gone: a firing alert resolves with the process.
        let dead: Vec<u32> = self.procs.keys().copied().filter(|p| !alive.contains(p)).collect();
        for pid in dead {
            let mut w = self.procs.remove(&pid).expect("listed");
            w.exited = true;
            self.exited.push_back((mono, w.clone()));
            if let Some(escalation::Status::Running { started, .. }) = w.escalation {
                w.escalation = Some(escalation::Status::Done {
                    started,
                    ended: now,
                    outcome: escalation::Outcome::Exited,
                });
                self.counts.escalation_outcomes[escalation::Outcome::Exited as usize] += 1;
            }
            if let Alert::Firing { since, fired_at, .. } = w.alert {
                w.alert = Alert::Resolved {
                    since,
                    fired_at,
                    resolved_at: now,
                };
                transitions.push((pid, Transition::Resolved));
            }
            if matches!(w.alert, Alert::Resolved { .. })
                || matches!(w.escalation, Some(escalation::Status::Done { .. }))
            {
                w.series = VecDeque::new();
                w.evidence.truncate(GONE_STACKS);
                w.evidence.shrink_to_fit();
                w.growth.truncate(GONE_STACKS);
                w.growth.shrink_to_fit();
                self.gone.push_back(w);
                if self.gone.len() > GONE_KEPT {
                    self.gone.pop_front();
                }
            }
        }
        // Kept a little while and bounded: an exit storm must not grow us.
        while self
            .exited
            .front()
            .is_some_and(|(t, _)| mono - t > EXITED_KEPT_SECONDS || self.exited.len() > EXITED_KEPT)
        {
            self.exited.pop_front();
        }
        for (_, tr) in &transitions {
            match tr {
                Transition::Fired => self.counts.alerts_fired += 1,
                Transition::Resolved => self.counts.alerts_resolved += 1,
            }
        }
        self.gone
            .retain(|w| !matches!(w.alert, Alert::Resolved { resolved_at, .. } if now - resolved_at > RESOLVED_SHOWN));
        transitions
    }

    /// Sets each process's growth stacks from the kernel's records.
    pub fn set_growth(&mut self, mut by_pid: HashMap<u32, Vec<GrowthStack>>) {
        for w in self.procs.values_mut() {
            let mut g = by_pid.remove(&w.pid).unwrap_or_default();
            g.sort_by_key(|s| std::cmp::Reverse(s.bytes));
            // Keep symbolized frames already known.
            for s in &mut g {
                if let Some(old) = w.growth.iter().find(|o| o.stack_id == s.stack_id) {
                    s.frames.clone_from(&old.frames);
                }
            }
            w.growth = g;
        }
    }
}

fn new_watched(pid: u32, start_time: u64, comm: String, cmdline_arguments: usize) -> Watched {
    let (place, nspid) = cgroup::read(pid);
    Watched {
        pid,
        start_time,
        comm,
        exe: procfs::read_exe(pid).unwrap_or_default(),
        cmdline: procfs::read_cmdline(pid, cmdline_arguments).unwrap_or_default(),
        cgroup: place,
        nspid,
        memory: procmem::Memory::default(),
        series: VecDeque::new(),
        estimate: Estimate {
            verdict: Verdict::Insufficient,
            rate: 0.0,
            confidence: 0.0,
            windows: Vec::new(),
        },
        alert: Alert::Inactive,
        leaking_since: None,
        escalation: None,
        last_escalation_end: None,
        evidence: Vec::new(),
        growth: Vec::new(),
        exited: false,
    }
}

/// Samples kept per process, whatever the window: the estimator's pairwise
/// statistics cost the square of it (~10,600 pairs over the three windows
/// at most, each for two statistics), and
/// the default config (124 s at 2 s) keeps 63.
const MAX_SAMPLES: usize = 128;

/// Appends `s` and drops samples older than `keep_seconds`, keeping at most
/// [`MAX_SAMPLES`] spaced evenly enough to cover the span: the newest
/// sample replaces the last kept one until it is a spacing past the one
/// before.
fn keep_sample(series: &mut VecDeque<Sample>, s: Sample, keep_seconds: f64) {
    let spacing = keep_seconds / (MAX_SAMPLES - 1) as f64;
    let n = series.len();
    if n >= 2 && s.t - series[n - 2].t < spacing {
        series[n - 1] = s;
    } else {
        series.push_back(s);
    }
    while series.front().is_some_and(|x| s.t - x.t > keep_seconds) || series.len() > MAX_SAMPLES {
        series.pop_front();
    }
}

/// The estimator, skipped for series that have not moved beyond noise.
fn judge(series: &mut VecDeque<Sample>, p: &Params) -> Estimate {
    let series = series.make_contiguous();
    let (lo, hi) = series
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(s.bytes), hi.max(s.bytes)));
    if series.len() > 1 && hi - lo < 64.0 * 1024.0 {
        return Estimate {
            verdict: Verdict::Flat,
            rate: 0.0,
            confidence: 0.0,
            windows: Vec::new(),
        };
    }
    estimator::estimate(series, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples kept and the verdict at the end of `seconds` of a series
    /// sampled every `interval` s, judged over `window` s.
    fn run_series(window: f64, interval: f64, seconds: f64, bytes: impl Fn(f64) -> f64) -> (usize, Estimate) {
        let keep = 4.0 * window + 2.0 * interval;
        let mut series = VecDeque::new();
        let mut t = 0.0;
        while t <= seconds {
            keep_sample(&mut series, Sample { t, bytes: bytes(t) }, keep);
            assert!(series.len() <= MAX_SAMPLES);
            t += interval;
        }
        let p = Params {
            window,
            min_rate: 32_768.0,
            min_confidence: 0.6,
        };
        (series.len(), judge(&mut series, &p))
    }

    #[test]
    fn the_series_is_bounded_for_any_accepted_window() {
        // The longest window accepted, sampled every second for four and a
        // half days (the four windows' span and more): 128 samples, and the
        // leak is still told.
        let leak = |t: f64| 1e8 + 50_000.0 * t;
        let (n, e) = run_series(86_400.0, 1.0, 4.5 * 86_400.0, leak);
        assert_eq!(n, MAX_SAMPLES);
        assert_eq!(e.verdict, Verdict::Leak, "{e:?}");
        let (_, e) = run_series(3_600.0, 2.0, 4.0 * 3_600.0, leak);
        assert_eq!(e.verdict, Verdict::Leak, "{e:?}");
        let (_, e) = run_series(3_600.0, 2.0, 4.0 * 3_600.0, |t| 1e8 + 5e6 * (t / 600.0).sin());
        assert_ne!(e.verdict, Verdict::Leak, "{e:?}");
        // The default config keeps every sample, as before: 124 s at 2 s.
        let (n, _) = run_series(30.0, 2.0, 600.0, leak);
        assert_eq!(n, 63);
    }

    #[test]
    fn a_gone_suspect_keeps_only_its_largest_stacks() {
        let cfg = crate::config::Config::build(Default::default(), &Default::default()).unwrap();
        let mut w = Watcher::new(&cfg.detect, 0);
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        w.sample(0.0, 1000.0);
        let report = |i: u64| StackReport {
            live_bytes: 1000 - i,
            live_allocations: 1,
            oldest_age_seconds: 0.0,
            call: "malloc",
            allocator: "libc",
            frames: vec![],
            walk: Default::default(),
            growth_bytes: None,
            growth_allocations: None,
            replacing_bytes: None,
            net_growth_bytes: None,
            allocated: None,
        };
        let p = w.get_mut(pid).expect("the child is watched");
        p.alert = Alert::Firing {
            since: 0.0,
            fired_at: 1.0,
            last_seen: 1.0,
        };
        p.evidence = (0..10).map(report).collect();
        p.growth = (0..20)
            .map(|i| GrowthStack {
                stack_id: i,
                bytes: 100 - i,
                calls: 1,
                frames: None,
            })
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();
        w.sample(2.0, 1002.0);
        let gone = w.gone().find(|g| g.pid == pid).expect("kept as gone");
        assert!(matches!(gone.alert, Alert::Resolved { .. }));
        assert_eq!(gone.evidence.len(), GONE_STACKS);
        assert_eq!(gone.evidence[0].live_bytes, 1000);
        assert_eq!(
            gone.growth.iter().map(|g| g.stack_id).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn sampling_this_host_finds_this_process_family() {
        let cfg = crate::config::Config::build(Default::default(), &Default::default()).unwrap();
        let mut w = Watcher::new(&cfg.detect, 0);
        assert!(w.sample(0.0, 1000.0).is_empty());
        // The test runner is watched (the watcher skips only its own process,
        // which in tests is the runner itself: look at the parent instead).
        let parent = std::os::unix::process::parent_id();
        let p = w.get(parent).expect("the parent process is watched");
        assert!(p.memory.rss > 0);
        assert_eq!(p.alert, Alert::Inactive);
        assert!(w.len() > 1);
    }
}

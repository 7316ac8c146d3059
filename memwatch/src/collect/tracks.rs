//! The selections in force (by pid, by executable glob; from the config or
//! from control requests, some for a while) and how the collector carries
//! out requests to change them. Every change ends in [`Collector::apply`],
//! which makes the tracked processes match the selections.

use std::{collections::BTreeSet, time::Instant};

use super::Collector;
use crate::{
    config::{Config, ExeGlob},
    control::{Reply, Request, Source, Target, Track, TrackRequest},
    process::{Selection, TrackError, unix_now},
};

/// One selection and, for a track with a duration, when it ends.
#[derive(Debug, Clone)]
pub(super) struct Selected {
    pub target: Target,
    pub source: Source,
    pub since_unix: f64,
    pub until: Option<(Instant, f64)>,
}

/// The config's selections, as tracks.
pub(super) fn from_config(config: &Config) -> Vec<Selected> {
    let now = unix_now();
    let pids = config.pids.iter().map(|&p| Target::Pid(p));
    let globs = config.exe.iter().map(|g| Target::Exe(g.pattern.clone()));
    pids.chain(globs)
        .map(|target| Selected {
            target,
            source: Source::Config,
            since_unix: now,
            until: None,
        })
        .collect()
}

impl Collector {
    /// Answers the control requests waiting.
    pub(super) fn serve_requests(&mut self) {
        let Some(inbox) = self.inbox.take() else { return };
        let mut answers = Vec::new();
        for (request, answer) in inbox.pending() {
            let name = request.name();
            let (ok, message) = match request {
                Request::Track(t) => self.track_request(t),
                Request::Untrack(t) => self.untrack_request(t),
                Request::Reload(c) => self.reload(*c),
            };
            if ok {
                tracing::info!(request = name, "{message}");
            } else {
                tracing::warn!(request = name, "refused: {message}");
            }
            self.metrics.control_request(name, ok);
            answers.push((answer, ok, message));
        }
        self.inbox = Some(inbox);
        // Answered once the report shows the change.
        if self.selection_changed {
            self.selection_changed = false;
            self.scan();
        }
        for (answer, ok, message) in answers {
            // The asker may have given up waiting.
            let _ = answer.send(Reply {
                ok,
                message,
                tracks: self.track_list(),
            });
        }
    }

    fn track_request(&mut self, r: TrackRequest) -> (bool, String) {
        if let Err(e) = r.validate() {
            return (false, e);
        }
        let now = (Instant::now(), unix_now());
        let until = r
            .for_seconds
            .map(|s| (now.0 + std::time::Duration::from_secs_f64(s), now.1 + s));
        let how_long = r.for_seconds.map_or(String::new(), |s| format!(" for {s}s"));
        let existing = self
            .tracks
            .iter_mut()
            .find(|t| t.target == r.target && t.source == Source::Control);
        match existing {
            Some(t) => t.until = until,
            None => self.tracks.push(Selected {
                target: r.target.clone(),
                source: Source::Control,
                since_unix: now.1,
                until,
            }),
        }
        let failures = self.apply("it is no longer selected");
        match &r.target {
            Target::Pid(pid) => match failures.into_iter().find(|(p, _)| p == pid) {
                Some((_, e)) => {
                    self.tracks
                        .retain(|t| !(t.target == r.target && t.source == Source::Control));
                    (false, format!("cannot track process {pid}: {e}"))
                }
                None => {
                    let comm = self.table.get(*pid).map_or(String::new(), |p| p.comm.clone());
                    (true, format!("tracking process {pid} ({comm}){how_long}"))
                }
            },
            Target::Exe(g) => {
                let n = self.pids_of(&r.target).len();
                (true, format!("tracking --exe {g:?}{how_long}: {n} process(es) now"))
            }
        }
    }

    fn untrack_request(&mut self, target: Target) -> (bool, String) {
        let before = self.tracks.len();
        self.tracks.retain(|t| t.target != target);
        let removed = self.tracks.len() < before;
        match target {
            Target::Exe(g) if !removed => {
                let have: Vec<String> = self
                    .tracks
                    .iter()
                    .filter_map(|t| match &t.target {
                        Target::Exe(g) => Some(format!("{g:?}")),
                        Target::Pid(_) => None,
                    })
                    .collect();
                (false, format!("no track --exe {g:?} (tracked globs: {})", list(&have)))
            }
            Target::Exe(g) => {
                let n = self.pids_of(&Target::Exe(g.clone())).len();
                self.scan();
                self.apply(&format!("untracked: --exe {g:?}"));
                (true, format!("stopped tracking --exe {g:?} ({n} process(es))"))
            }
            Target::Pid(pid) => {
                let Some(selection) = self.table.get(pid).map(|p| p.selection.clone()) else {
                    let tracked: Vec<String> = self.table.iter().map(|p| p.pid.to_string()).collect();
                    return (
                        removed,
                        if removed {
                            format!("process {pid} was no longer tracked; its track is removed")
                        } else {
                            format!("process {pid} is not tracked (tracked: {})", list(&tracked))
                        },
                    );
                };
                if selection == Selection::Suspect {
                    return (
                        false,
                        format!("process {pid} is tracked as an escalated leak suspect: its escalation ends by itself"),
                    );
                }
                // A glob would track it again at once.
                self.table.exclude(pid);
                self.scan();
                self.table.untrack(&mut self.kernel, pid, "untracked by request");
                self.selection_changed = true;
                (true, format!("stopped tracking process {pid}"))
            }
        }
    }

    /// Re-reads what a reload may change at once; the rest applies at a
    /// restart, and the answer says which.
    fn reload(&mut self, new: Config) -> (bool, String) {
        let later = self.config.needs_restart(&new);
        self.config.pids = new.pids.clone();
        self.config.exe = new.exe.clone();
        self.config.collect_interval = new.collect_interval;
        self.config.escalation = new.escalation.clone();
        let (enabled, every) = (self.config.detect.enabled, self.config.detect.sample_interval);
        self.config.detect = crate::config::Detect {
            enabled,
            sample_interval: every,
            ..new.detect.clone()
        };
        if let Some(w) = &self.watcher {
            w.lock().set_thresholds(&self.config.detect);
        }
        self.tracks.retain(|t| t.source == Source::Control);
        let mut config_tracks = from_config(&new);
        config_tracks.append(&mut self.tracks);
        self.tracks = config_tracks;
        let failures = self.apply("it is no longer selected by the config");
        for (pid, e) in &failures {
            tracing::warn!(pid, error = %e, "cannot track a process the config names");
        }
        let mut message = format!(
            "config reloaded: {} pid(s) and {} glob(s) selected, {} process(es) tracked",
            new.pids.len(),
            new.exe.len(),
            self.table.len()
        );
        if !later.is_empty() {
            message += &format!("; changed but applied only at a restart: {}", later.join(", "));
        }
        (true, message)
    }

    /// Ends tracks whose time is up, with a scan first so that what they
    /// found stays in the report.
    pub(super) fn expire_tracks(&mut self) {
        let now = Instant::now();
        let due: Vec<Target> = self
            .tracks
            .iter()
            .filter(|t| t.until.is_some_and(|(at, _)| at <= now))
            .map(|t| t.target.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        self.scan();
        self.tracks.retain(|t| t.until.is_none_or(|(at, _)| at > now));
        for t in &due {
            tracing::info!(track = %t, "a track's time is up");
        }
        self.apply("its track's time is up");
        self.scan();
    }

    /// Makes the tracked processes match the selections: globs in force,
    /// processes no selection wants untracked (why: `why`), pids tracked.
    /// Returns the pids that could not be tracked, with why.
    pub(super) fn apply(&mut self, why: &str) -> Vec<(u32, TrackError)> {
        let patterns: BTreeSet<String> = self
            .tracks
            .iter()
            .filter_map(|t| match &t.target {
                Target::Exe(g) => Some(g.clone()),
                Target::Pid(_) => None,
            })
            .collect();
        // Validated by the config or the request.
        let globs: Vec<ExeGlob> = patterns.iter().filter_map(|g| ExeGlob::new(g).ok()).collect();
        self.table.set_globs(globs.clone());
        if let Err(e) = self.kernel.set_report_all_execs(self.table.has_globs()) {
            tracing::warn!(error = %e, "cannot tell the kernel side to report execs");
        }
        let pids: BTreeSet<u32> = self
            .tracks
            .iter()
            .filter_map(|t| match t.target {
                Target::Pid(p) => Some(p),
                Target::Exe(_) => None,
            })
            .collect();

        let mut unwanted = Vec::new();
        let mut reselect = Vec::new();
        for p in self.table.iter() {
            let by_glob = globs.iter().find(|g| g.matches(&p.exe)).map(|g| &g.pattern);
            match (&p.selection, pids.contains(&p.pid), by_glob) {
                (Selection::Pid, true, _) => {}
                // Asked for by pid: kept whatever ends the escalation or glob.
                (_, true, _) => reselect.push((p.pid, Selection::Pid)),
                (Selection::Suspect, ..) => {}
                (Selection::Pid, false, Some(g)) => reselect.push((p.pid, Selection::Exe(g.clone()))),
                (Selection::Exe(old), false, Some(g)) if old != g => reselect.push((p.pid, Selection::Exe(g.clone()))),
                (_, false, None) => unwanted.push(p.pid),
                _ => {}
            }
        }
        for (pid, s) in reselect {
            self.table.set_selection(pid, s);
        }
        for pid in unwanted {
            self.table.untrack(&mut self.kernel, pid, why);
            self.selection_changed = true;
        }
        let mut failures = Vec::new();
        for pid in pids {
            if self.table.get(pid).is_some() {
                continue;
            }
            match self.table.track(&mut self.kernel, pid, Selection::Pid) {
                Ok(()) => {
                    self.table.set_selection(pid, Selection::Pid);
                    self.selection_changed = true;
                }
                Err(e) => failures.push((pid, e)),
            }
        }
        let before = self.table.len();
        self.table.discover(&mut self.kernel);
        self.selection_changed |= self.table.len() != before;
        failures
    }

    /// Forgets control tracks of pids whose process has exited.
    pub(super) fn prune_tracks(&mut self) {
        let table = &self.table;
        self.tracks.retain(|t| match t.target {
            Target::Pid(p) => t.source == Source::Config || table.get(p).is_some(),
            Target::Exe(_) => true,
        });
    }

    fn pids_of(&self, target: &Target) -> Vec<u32> {
        self.table
            .iter()
            .filter(|p| match (target, &p.selection) {
                (Target::Pid(pid), Selection::Pid) => p.pid == *pid,
                (Target::Exe(g), Selection::Exe(s)) => g == s,
                _ => false,
            })
            .map(|p| p.pid)
            .collect()
    }

    /// The selections in force, for /status and control answers.
    pub(super) fn track_list(&self) -> Vec<Track> {
        self.tracks
            .iter()
            .map(|t| Track {
                target: t.target.clone(),
                source: t.source,
                since_unix: t.since_unix,
                until_unix: t.until.map(|(_, u)| u),
                pids: self.pids_of(&t.target),
            })
            .collect()
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

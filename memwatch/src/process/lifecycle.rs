//! Following processes: new ones matching a glob (retried while they
//! map their allocator), exec, fork and exit, and the periodic reconcile.

use super::{ProcessTable, Retired, Selection, TrackError, procfs};
use crate::{
    kernel::{Kernel, probes},
    target,
};

/// How long a new process may take to map its allocator.
const PENDING_FOR: std::time::Duration = std::time::Duration::from_secs(2);

pub(super) struct Pending {
    pid: u32,
    /// The glob it matched (a new process to track), or None for a tracked
    /// process whose probes are refreshed after exec.
    pub(super) pattern: Option<String>,
    start_time: u64,
    deadline: std::time::Instant,
}

impl ProcessTable {
    /// Tracks every running process whose executable matches a glob. One
    /// that cannot be tracked is retried less and less often, and said once.
    pub fn discover(&mut self, kernel: &mut Kernel) {
        if self.globs.is_empty() {
            return;
        }
        let me = std::process::id();
        let now = crate::clock::monotonic_ns() as f64 / 1e9;
        let pids = procfs::list_pids().unwrap_or_default();
        let listed: std::collections::HashSet<u32> = pids.iter().copied().collect();
        self.backoff.retain(|pid| listed.contains(&pid));
        for pid in pids {
            if pid == me || self.procs.contains_key(&pid) || self.pending.iter().any(|p| p.pid == pid) {
                continue;
            }
            let Ok(exe) = procfs::read_exe(pid) else { continue };
            let Some(pattern) = self.glob_for(pid, &exe) else {
                continue;
            };
            let Ok(stat) = procfs::read_stat(pid) else { continue };
            if !self.backoff.may_try(pid, stat.start_time, now) {
                continue;
            }
            match self.attempt(kernel, pid, Selection::Exe(pattern)) {
                Ok(()) => self.backoff.forget(pid),
                Err(TrackError::NoProcess(_)) => {}
                // Just exec'd: only the executable and ld.so are mapped yet.
                Err(TrackError::Target(target::TargetError::NoAllocator { .. }))
                    if procfs::age_seconds(stat.start_time).is_some_and(|a| a < PENDING_FOR.as_secs_f64()) => {}
                Err(e) => {
                    if self.backoff.failed(pid, stat.start_time, &e.to_string(), now) {
                        tracing::warn!(pid, error = %e, "cannot track a process matching --exe (retried less and less often)");
                        self.record_failure(pid, &e);
                    } else {
                        tracing::debug!(pid, error = %e, "still cannot track a process matching --exe");
                    }
                }
            }
        }
    }

    /// A process exec'd. The kernel already moved a tracked one to
    /// `old_generation + 1`.
    pub fn on_exec(&mut self, kernel: &mut Kernel, pid: u32, old_generation: u32) {
        let Some(inc) = self.procs.get_mut(&pid) else {
            // Untracked: a candidate for the globs.
            if let Ok(exe) = procfs::read_exe(pid)
                && let Some(pattern) = self.glob_for(pid, &exe)
                && pid != std::process::id()
            {
                self.track_new(kernel, pid, pattern);
            }
            return;
        };
        if inc.generation != old_generation {
            return;
        }
        let exe_name = inc.exe_name();
        self.retired.push(Retired {
            pid,
            generation: old_generation,
            exe_name,
            slot: inc.slot,
            release_slot: false,
            ended: None,
        });
        inc.generation = old_generation.wrapping_add(1);
        if let Ok(stat) = procfs::read_stat(pid) {
            inc.comm = stat.comm;
        }
        inc.exe = procfs::read_exe(pid).unwrap_or_default();
        inc.cmdline = procfs::read_cmdline(pid, self.cmdline_arguments).unwrap_or_default();
        let keep = match &inc.selection {
            Selection::Pid | Selection::Suspect => true,
            Selection::Exe(_) => self.globs.iter().any(|g| g.matches(&inc.exe)),
        };
        if !keep {
            self.untrack(kernel, pid, "it exec'd an executable no --exe glob matches");
            return;
        }
        self.refresh_or_wait(kernel, pid);
    }

    /// Re-resolves a process's allocator objects after exec and re-attaches
    /// only if they changed (the same libc keeps its probes: nothing is missed).
    /// Returns false when the image has not mapped its allocator yet (just
    /// after exec only the executable and ld.so are mapped; the current
    /// probes, by inode, fire again once libc is mapped).
    fn refresh_probes(&mut self, kernel: &mut Kernel, pid: u32) -> bool {
        let targets = match target::find_targets(pid, &mut self.elf, self.wanted) {
            Ok(t) => t,
            Err(target::TargetError::NoAllocator { .. }) => return false,
            Err(e) => {
                let e = self.unless_exited(pid, TrackError::from(e));
                if !matches!(e, TrackError::NoProcess(_)) {
                    self.record_failure(pid, &e);
                }
                self.untrack(kernel, pid, &format!("its new image cannot be probed: {e}"));
                return true;
            }
        };
        let Some(inc) = self.procs.get_mut(&pid) else {
            return true;
        };
        let wanted: Vec<(String, u64)> = targets
            .iter()
            .flat_map(|t| t.sites.iter().map(move |s| (t.path.clone(), s.file_offset())))
            .collect();
        let mut have: Vec<(String, u64)> = inc
            .sites
            .iter()
            .map(|s| (s.target_path.clone(), s.site.file_offset()))
            .collect();
        let mut wanted_sorted = wanted.clone();
        wanted_sorted.sort();
        have.sort();
        if wanted_sorted == have {
            return true;
        }
        let old = std::mem::take(&mut inc.sites);
        let mut sites = Vec::new();
        for t in &targets {
            match probes::attach(kernel.ebpf_mut(), pid, t) {
                Ok(s) => sites.extend(s),
                Err(e) => tracing::warn!(pid, module = %t.path, error = %e, "cannot attach to the new image"),
            }
        }
        self.reaper.reap(probes::detach(kernel.ebpf_mut(), old));
        if let Some(inc) = self.procs.get_mut(&pid) {
            inc.sites = sites;
        }
        true
    }

    fn refresh_or_wait(&mut self, kernel: &mut Kernel, pid: u32) {
        // The kernel dropped the old image's mappings at exec.
        if let Err(e) = self.unwind.refresh(&mut kernel.unwind, pid) {
            tracing::debug!(pid, error = %e, "reading the new image's mappings failed");
        }
        if !self.refresh_probes(kernel, pid) && !self.pending.iter().any(|p| p.pid == pid) {
            let start_time = self.procs.get(&pid).map_or(0, |p| p.start_time);
            let deadline = std::time::Instant::now() + PENDING_FOR;
            self.pending.push(Pending {
                pid,
                pattern: None,
                start_time,
                deadline,
            });
        }
    }

    pub fn on_exit(&mut self, kernel: &mut Kernel, pid: u32, generation: u32) {
        if self.is_current(pid, generation) {
            self.untrack(kernel, pid, "it exited");
        }
    }

    /// A tracked process forked: the child is tracked if its executable
    /// matches a glob (it is the parent's until it execs).
    pub fn on_fork(&mut self, kernel: &mut Kernel, child: u32) {
        if let Ok(exe) = procfs::read_exe(child)
            && let Some(pattern) = self.glob_for(child, &exe)
        {
            self.track_new(kernel, child, pattern);
        }
    }

    /// Tracks a process that just started, or keeps it pending until its
    /// allocator is mapped.
    fn track_new(&mut self, kernel: &mut Kernel, pid: u32, pattern: String) {
        if self.procs.contains_key(&pid) {
            return;
        }
        match self
            .try_track(kernel, pid, Selection::Exe(pattern.clone()))
            .map_err(|e| self.unless_exited(pid, e))
        {
            Ok(()) => {}
            Err(TrackError::Target(target::TargetError::NoAllocator { .. })) => {
                let start_time = procfs::read_stat(pid).map(|s| s.start_time).unwrap_or(0);
                if !self.pending.iter().any(|p| p.pid == pid) {
                    self.pending.push(Pending {
                        pid,
                        pattern: Some(pattern),
                        start_time,
                        deadline: std::time::Instant::now() + PENDING_FOR,
                    });
                }
            }
            Err(TrackError::NoProcess(_)) => {}
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot track a new process matching --exe");
                self.record_failure(pid, &e);
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Retries processes waiting for their allocator to be mapped.
    pub fn retry_pending(&mut self, kernel: &mut Kernel) {
        let now = std::time::Instant::now();
        for p in std::mem::take(&mut self.pending) {
            let same = procfs::read_stat(p.pid).is_ok_and(|s| s.start_time == p.start_time);
            if !same {
                continue;
            }
            let Some(pattern) = p.pattern.clone() else {
                // A tracked process after exec: refresh, or give up at the deadline.
                let mapped = self.refresh_probes(kernel, p.pid);
                if !mapped && now < p.deadline {
                    self.pending.push(p);
                } else if !mapped {
                    let e = TrackError::Target(target::TargetError::NoAllocator { pid: p.pid });
                    self.record_failure(p.pid, &e);
                    self.untrack(kernel, p.pid, &format!("its new image cannot be probed: {e}"));
                }
                continue;
            };
            match self
                .try_track(kernel, p.pid, Selection::Exe(pattern))
                .map_err(|e| self.unless_exited(p.pid, e))
            {
                Ok(()) => {}
                Err(TrackError::Target(target::TargetError::NoAllocator { .. })) if now < p.deadline => {
                    self.pending.push(p)
                }
                Err(TrackError::NoProcess(_)) => {}
                Err(e) => {
                    tracing::warn!(pid = p.pid, error = %e, "cannot track a new process matching --exe");
                    self.record_failure(p.pid, &e);
                }
            }
        }
    }

    /// Catches up with events the ring buffer may have dropped: exits (the
    /// start time no longer matches) and execs (the kernel's generation moved).
    pub fn reconcile(&mut self, kernel: &mut Kernel) {
        let pids: Vec<(u32, u64, u32)> = self
            .procs
            .values()
            .map(|p| (p.pid, p.start_time, p.generation))
            .collect();
        for (pid, start_time, generation) in pids {
            let alive =
                procfs::read_stat(pid).is_ok_and(|s| s.start_time == start_time && s.state != 'Z' && s.state != 'X');
            if !alive {
                self.untrack(kernel, pid, "it exited");
                continue;
            }
            match kernel.tracked_generation(pid) {
                Some(g) if g != generation => {
                    // Missed exec events: retire ours and those in between,
                    // and follow the kernel's.
                    let (exe_name, slot) = (self.procs[&pid].exe_name(), self.procs[&pid].slot);
                    let mut old = generation;
                    while old != g {
                        let exe_name = exe_name.clone();
                        self.retired.push(Retired {
                            pid,
                            generation: old,
                            exe_name,
                            slot,
                            release_slot: false,
                            ended: None,
                        });
                        old = old.wrapping_add(1);
                    }
                    if let Some(inc) = self.procs.get_mut(&pid) {
                        inc.generation = g;
                    }
                    self.refresh_or_wait(kernel, pid);
                }
                None => self.untrack(kernel, pid, "its kernel state vanished"),
                _ => {}
            }
        }
        // Libraries loaded or unloaded since.
        self.unwind.refresh_all(&mut kernel.unwind);
        self.discover(kernel);
    }

    /// The kernel met code of `pid` in no mapping it knows: read them again.
    pub fn on_code_mapped(&mut self, kernel: &mut Kernel, pid: u32) {
        if let Err(e) = self.unwind.refresh(&mut kernel.unwind, pid) {
            tracing::debug!(pid, error = %e, "refreshing unwind mappings failed");
        }
    }
}

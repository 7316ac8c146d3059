//! The tracked processes: selection (by pid or executable glob), attaching
//! and detaching their probes, and following exec, fork and exit.
//!
//! Each tracked process incarnation has a generation, unique per pid, that
//! the kernel stamps on its records; an exec moves it on (the kernel does so
//! itself, so no record of the new image is ever lost), and an exit retires
//! it. Records and counters of retired generations are swept by the scan.

mod backoff;
pub mod cgroup;
pub mod memcg;
pub mod procfs;

use std::{collections::BTreeMap, path::PathBuf};

use serde::Serialize;

use crate::{
    config::ExeGlob,
    kernel::{Kernel, probes},
    target::{self, elf::ElfCache},
    unwind::{Reason, Unwinder},
};

/// Why a process is tracked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "by", content = "value")]
pub enum Selection {
    Pid,
    Exe(String),
    /// Escalated by the leak detector, for a while.
    Suspect,
}

/// A probed allocator function and where its probes sit, for /probes,
/// /metrics and the logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSummary {
    pub module: String,
    pub build_id: Option<String>,
    pub function: &'static str,
    /// File offset of the function's entry.
    pub entry_offset: u64,
    /// At a free: how blocks freed that memwatch did not see allocated
    /// (before tracking began) are measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untracked_free_sizes: Option<&'static str>,
    #[serde(flatten)]
    pub placement: crate::target::placement::Placement,
}

pub struct Incarnation {
    pub pid: u32,
    pub generation: u32,
    /// Counter slot base in the kernel's COUNTERS array.
    pub slot: u32,
    pub start_time: u64,
    pub comm: String,
    pub exe: PathBuf,
    pub cmdline: String,
    /// Its systemd unit, container and pod, read once: a process does not
    /// change containers.
    pub place: cgroup::Placement,
    /// Its pid inside its own pid namespace, when that is not the host's.
    pub nspid: Option<u32>,
    pub selection: Selection,
    pub tracked_since_unix: f64,
    pub sites: Vec<probes::AttachedSite>,
}

/// A process's executable name, or its comm when the executable is unknown.
pub fn exe_name(exe: &std::path::Path, comm: &str) -> String {
    exe.file_name()
        .map_or_else(|| comm.to_string(), |n| n.to_string_lossy().into_owned())
}

impl Incarnation {
    pub fn exe_name(&self) -> String {
        exe_name(&self.exe, &self.comm)
    }

    pub fn probes(&self) -> Vec<ProbeSummary> {
        self.sites
            .iter()
            .map(|s| ProbeSummary {
                module: s.target_path.clone(),
                build_id: s.build_id.clone(),
                function: s.site.symbol,
                entry_offset: s.site.entry_offset,
                untracked_free_sizes: (s.site.kind == memwatch_common::cookie::CallKind::Free).then_some(
                    if s.chunk_header {
                        "read from glibc's chunk header"
                    } else {
                        "unknown: this allocator keeps no size before a block"
                    },
                ),
                placement: s.site.placement.clone(),
            })
            .collect()
    }
}

/// A generation that ended, kept until its counters are read one last time.
#[derive(Debug, Clone)]
pub struct Retired {
    pub pid: u32,
    pub generation: u32,
    pub exe_name: String,
    pub slot: u32,
    /// The process is no longer tracked: its slot can be reused once read.
    pub release_slot: bool,
    /// Why tracking ended (an exec within a tracked process: None).
    pub ended: Option<Ended>,
}

/// Tracking of a process that ended, and why.
#[derive(Debug, Clone)]
pub struct Ended {
    pub why: String,
    pub selection: Selection,
}

/// A process memwatch was asked to track but could not.
#[derive(Debug, Clone, Serialize)]
pub struct AttachFailure {
    pub pid: u32,
    pub error: String,
    pub at_unix: f64,
}

const GENERATION_STRIDE: u32 = 1 << 16;

pub struct ProcessTable {
    procs: BTreeMap<u32, Incarnation>,
    retired: Vec<Retired>,
    failures: Vec<AttachFailure>,
    next_generation: u32,
    globs: Vec<ExeGlob>,
    /// What to probe: emulated instructions or entries; CPython's objects.
    wanted: target::Wanted,
    elf: ElfCache,
    reaper: probes::Reaper,
    /// Counter slots not in use.
    free_slots: Vec<u32>,
    /// Processes just exec'd that match a glob but have not mapped their
    /// allocator yet (at exec only the executable and ld.so are mapped).
    pending: Vec<Pending>,
    logged_placements: std::collections::HashSet<(String, u64)>,
    /// Probe attachments that failed, ever (a counter for /metrics).
    pub attach_failures_total: u64,
    /// Processes that exited while being attached, ever: races, not failures.
    pub exited_before_attach_total: u64,
    /// Processes matching a glob that could not be tracked, retried less often.
    backoff: backoff::Backoff,
    /// Command-line arguments kept for reports.
    cmdline_arguments: usize,
    /// Unwind tables of the tracked processes (and of leak suspects).
    pub unwind: Unwinder,
    /// Processes untracked by request that a glob still matches, by start
    /// time: not tracked again by that glob while they run.
    excluded: std::collections::HashMap<u32, u64>,
}

const MAX_FAILURES_KEPT: usize = 100;
/// Binaries whose probe placement was logged, remembered to log each once;
/// forgotten wholesale past this many (logging one again is harmless).
const LOGGED_PLACEMENTS_MAX: usize = 4096;
/// How long a new process may take to map its allocator.
const PENDING_FOR: std::time::Duration = std::time::Duration::from_secs(2);

struct Pending {
    pid: u32,
    /// The glob it matched (a new process to track), or None for a tracked
    /// process whose probes are refreshed after exec.
    pattern: Option<String>,
    start_time: u64,
    deadline: std::time::Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("process {0} exited")]
    NoProcess(u32),
    #[error("process {0} does not exist")]
    Missing(u32),
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error("{0:#}")]
    Kernel(anyhow::Error),
    #[error("too many tracked processes (raise maps.processes)")]
    TooMany,
}

/// Whether `pid` is gone (or a zombie).
fn exited(pid: u32) -> bool {
    procfs::read_stat(pid).map_or(true, |s| s.state == 'Z' || s.state == 'X')
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl ProcessTable {
    pub fn new(
        globs: Vec<ExeGlob>,
        wanted: target::Wanted,
        slots: u32,
        unwind: Unwinder,
        cmdline_arguments: usize,
    ) -> Self {
        ProcessTable {
            procs: BTreeMap::new(),
            retired: Vec::new(),
            failures: Vec::new(),
            next_generation: GENERATION_STRIDE,
            globs,
            wanted,
            elf: ElfCache::default(),
            reaper: probes::Reaper::default(),
            free_slots: (0..slots).rev().collect(),
            pending: Vec::new(),
            logged_placements: Default::default(),
            attach_failures_total: 0,
            exited_before_attach_total: 0,
            backoff: backoff::Backoff::default(),
            cmdline_arguments,
            unwind,
            excluded: Default::default(),
        }
    }

    /// The table `config` asks for: its map sizes, placement, unwinding
    /// and reports; tracking the `--exe` globs given.
    pub fn for_config(config: &crate::config::Config, globs: Vec<ExeGlob>) -> Self {
        ProcessTable::new(
            globs,
            target::Wanted {
                place: config.placement,
                python_objects: config.python_objects,
                skip_mappings: false,
            },
            config.maps.processes,
            Unwinder::new(
                config.unwind.enabled,
                config.unwind.frame_pointer_objects,
                config.unwind.rows,
            ),
            config.cmdline_arguments,
        )
    }

    /// What memwatch keeps of an object process `pid` maps (parsed once per
    /// object, as for probing).
    pub fn object(&mut self, pid: u32, file: &procfs::MappedFile) -> Option<std::sync::Arc<target::elf::ElfInfo>> {
        let opened =
            procfs::open_mapped(pid, file.first_start, file.first_end, &file.path, &file.dev, file.inode).ok()?;
        self.elf.get(&opened, &file.dev, file.inode).ok()
    }

    /// Leaves mmap and munmap unprobed (see [`target::Wanted`]).
    pub fn skip_mappings(mut self) -> Self {
        self.wanted.skip_mappings = true;
        self
    }

    pub fn has_globs(&self) -> bool {
        !self.globs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Incarnation> {
        self.procs.values()
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&Incarnation> {
        self.procs.get(&pid)
    }

    pub fn is_current(&self, pid: u32, generation: u32) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.generation == generation)
    }

    pub fn failures(&self) -> &[AttachFailure] {
        &self.failures
    }

    pub fn probe_count(&self) -> usize {
        self.procs
            .values()
            .flat_map(|p| &p.sites)
            .map(|s| s.probe_count())
            .sum()
    }

    /// Generations ended since the last call.
    pub fn take_retired(&mut self) -> Vec<Retired> {
        std::mem::take(&mut self.retired)
    }

    /// Returns a counter slot once its last generation has been read.
    pub fn release_slot(&mut self, slot: u32) {
        self.free_slots.push(slot);
    }

    fn record_failure(&mut self, pid: u32, error: &TrackError) {
        self.attach_failures_total += 1;
        if self.failures.len() >= MAX_FAILURES_KEPT {
            self.failures.remove(0);
        }
        self.failures.push(AttachFailure {
            pid,
            error: error.to_string(),
            at_unix: unix_now(),
        });
    }

    /// The glob that selects a process running `exe`, unless it was
    /// untracked by request.
    fn glob_for(&self, pid: u32, exe: &std::path::Path) -> Option<String> {
        if self.is_excluded(pid) {
            return None;
        }
        self.globs.iter().find(|g| g.matches(exe)).map(|g| g.pattern.clone())
    }

    fn is_excluded(&self, pid: u32) -> bool {
        self.excluded
            .get(&pid)
            .is_some_and(|&t| procfs::read_stat(pid).is_ok_and(|s| s.start_time == t))
    }

    /// The globs in force, replacing those before. A process a glob
    /// selected that no glob matches any more is left tracked: the caller
    /// decides. New processes waiting for their allocator stay pending
    /// while their glob is in force.
    pub fn set_globs(&mut self, globs: Vec<ExeGlob>) {
        self.pending.retain(|p| {
            p.pattern
                .as_ref()
                .is_none_or(|pat| globs.iter().any(|g| &g.pattern == pat))
        });
        self.globs = globs;
    }

    /// Keeps the globs from tracking `pid` again while it runs (it was
    /// untracked by request); `track` by pid lifts it.
    pub fn exclude(&mut self, pid: u32) {
        if let Ok(s) = procfs::read_stat(pid) {
            self.excluded.insert(pid, s.start_time);
        }
        self.excluded
            .retain(|&p, &mut t| procfs::read_stat(p).is_ok_and(|s| s.start_time == t));
    }

    /// Changes why `pid` is tracked (a track by pid of a process a glob
    /// or an escalation tracks keeps it, whatever becomes of those).
    pub fn set_selection(&mut self, pid: u32, selection: Selection) {
        self.excluded.remove(&pid);
        if let Some(p) = self.procs.get_mut(&pid) {
            p.selection = selection;
        }
    }

    /// Starts tracking `pid`. Failures are returned, remembered for status
    /// reports, and leave nothing attached; a process that exited meanwhile
    /// is [`TrackError::NoProcess`], counted apart.
    pub fn track(&mut self, kernel: &mut Kernel, pid: u32, selection: Selection) -> Result<(), TrackError> {
        let result = self.attempt(kernel, pid, selection);
        if let Err(e) = &result
            && !matches!(e, TrackError::NoProcess(_))
        {
            self.record_failure(pid, e);
        }
        result
    }

    /// [`Self::track`] without remembering a failure.
    fn attempt(&mut self, kernel: &mut Kernel, pid: u32, selection: Selection) -> Result<(), TrackError> {
        if self.procs.contains_key(&pid) {
            return Ok(());
        }
        // A pid named by the user that does not exist is their error, not a race.
        if selection == Selection::Pid && procfs::read_stat(pid).is_err() {
            return Err(TrackError::Missing(pid));
        }
        self.try_track(kernel, pid, selection)
            .map_err(|e| self.unless_exited(pid, e))
    }

    /// `error`, or [`TrackError::NoProcess`] (counted) when the process
    /// has exited: whatever failed failed because it was gone.
    fn unless_exited(&mut self, pid: u32, error: TrackError) -> TrackError {
        if matches!(error, TrackError::NoProcess(_)) || exited(pid) {
            self.exited_before_attach_total += 1;
            tracing::debug!(pid, error = %error, "the process exited before it could be tracked");
            TrackError::NoProcess(pid)
        } else {
            error
        }
    }

    fn try_track(&mut self, kernel: &mut Kernel, pid: u32, selection: Selection) -> Result<(), TrackError> {
        let stat = procfs::read_stat(pid).map_err(|_| TrackError::NoProcess(pid))?;
        if stat.state == 'Z' || stat.state == 'X' {
            return Err(TrackError::NoProcess(pid));
        }
        let exe = procfs::read_exe(pid).map_err(|_| TrackError::NoProcess(pid))?;
        let targets = target::find_targets(pid, &mut self.elf, self.wanted)?;

        let generation = self.next_generation;
        self.next_generation = self
            .next_generation
            .wrapping_add(GENERATION_STRIDE)
            .max(GENERATION_STRIDE);
        let slot = self.free_slots.pop().ok_or(TrackError::TooMany)?;
        // Counted from the first probe hit on: the entry exists before any probe.
        if let Err(e) = kernel.track(pid, generation, slot) {
            self.free_slots.push(slot);
            return Err(TrackError::Kernel(e));
        }
        let mut sites = Vec::new();
        for t in &targets {
            match probes::attach(kernel.ebpf_mut(), pid, t) {
                Ok(s) => sites.extend(s),
                Err(e) => {
                    self.reaper.reap(probes::detach(kernel.ebpf_mut(), sites));
                    kernel.untrack(pid);
                    self.free_slots.push(slot);
                    return Err(TrackError::Kernel(e));
                }
            }
            self.log_placements(t);
            if !t.missing.is_empty() {
                tracing::info!(pid, module = %t.path, missing = ?t.missing, "allocator functions not defined by this object");
            }
        }
        let (place, nspid) = cgroup::read(pid);
        let inc = Incarnation {
            pid,
            generation,
            slot,
            start_time: stat.start_time,
            comm: stat.comm,
            exe,
            cmdline: procfs::read_cmdline(pid, self.cmdline_arguments).unwrap_or_default(),
            place,
            nspid,
            selection,
            tracked_since_unix: unix_now(),
            sites,
        };
        tracing::info!(
            pid,
            comm = %inc.comm,
            exe = %inc.exe.display(),
            unit = inc.place.unit.as_deref(),
            container = inc.place.container_short(),
            pod = inc.place.pod.as_deref(),
            nspid = inc.nspid,
            probes = inc.sites.iter().map(|s| s.probe_count()).sum::<usize>(),
            modules = ?targets.iter().map(|t| t.path.as_str()).collect::<Vec<_>>(),
            "tracking process"
        );
        self.procs.insert(pid, inc);
        if let Err(e) = self.unwind.register(&mut kernel.unwind, pid, Reason::Tracked) {
            tracing::warn!(pid, error = %e, "cannot load unwind tables: its stacks are walked by frame pointers");
        }
        Ok(())
    }

    /// Logs where each function of a binary is probed, the first time.
    fn log_placements(&mut self, t: &target::AllocatorTarget) {
        let key = (t.dev.clone(), t.inode);
        if self.logged_placements.contains(&key) {
            return;
        }
        if self.logged_placements.len() >= LOGGED_PLACEMENTS_MAX {
            self.logged_placements.clear();
        }
        self.logged_placements.insert(key);
        for s in &t.sites {
            let p = &s.placement;
            tracing::info!(
                module = %t.path,
                function = s.symbol,
                offset = format_args!("+{:#x}", p.offset),
                instruction = %p.instruction,
                emulated = p.emulated,
                "probe site: {}",
                p.reason
            );
        }
    }

    /// Stops tracking `pid`: detaches its probes and retires its generation.
    pub fn untrack(&mut self, kernel: &mut Kernel, pid: u32, why: &str) {
        let Some(inc) = self.procs.remove(&pid) else { return };
        kernel.untrack(pid);
        self.unwind.unregister(&mut kernel.unwind, pid, Reason::Tracked);
        let n: usize = inc.sites.iter().map(|s| s.probe_count()).sum();
        self.retired.push(Retired {
            pid,
            generation: inc.generation,
            exe_name: inc.exe_name(),
            slot: inc.slot,
            release_slot: true,
            ended: Some(Ended {
                why: why.to_string(),
                selection: inc.selection.clone(),
            }),
        });
        self.reaper.reap(probes::detach(kernel.ebpf_mut(), inc.sites));
        tracing::info!(pid, comm = %inc.comm, probes = n, "stopped tracking process: {why}");
    }

    pub fn untrack_all(&mut self, kernel: &mut Kernel) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            self.untrack(kernel, pid, "memwatch is shutting down");
        }
        self.reaper.finish();
    }

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

//! The tracked processes: selection (by pid or executable glob), attaching
//! and detaching their probes, and following exec, fork and exit.
//!
//! Each tracked process incarnation has a generation, unique per pid, that
//! the kernel stamps on its records; an exec moves it on (the kernel does so
//! itself, so no record of the new image is ever lost), and an exit retires
//! it. Records and counters of retired generations are swept by the scan.

mod backoff;
pub mod cgroup;
mod identity;
mod incarnation;
mod lifecycle;
pub mod memcg;
pub mod procfs;

use std::collections::BTreeMap;

pub use identity::Identity;
pub use incarnation::{AttachFailure, Ended, Incarnation, ProbeSummary, Retired, Selection, exe_name};

use crate::{
    config::ExeGlob,
    kernel::{Kernel, probes},
    target::{self, elf::ElfCache},
    unwind::{Reason, Unwinder},
};

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
    pending: Vec<lifecycle::Pending>,
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
        // The rules before the probes: every stack recorded is walked by
        // them, none by frame pointers while a large object's table loads.
        if let Err(e) = self.unwind.register(&mut kernel.unwind, pid, Reason::Tracked) {
            tracing::warn!(pid, error = %e, "cannot load unwind tables: its stacks are walked by frame pointers");
        }
        let mut sites = Vec::new();
        for t in &targets {
            match probes::attach(kernel.ebpf_mut(), pid, t) {
                Ok(s) => sites.extend(s),
                Err(e) => {
                    self.reaper.reap(probes::detach(kernel.ebpf_mut(), sites));
                    self.unwind.unregister(&mut kernel.unwind, pid, Reason::Tracked);
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
}

//! The collector: one thread that owns the kernel side. It follows process
//! lifecycle events from the ring buffer and, every interval, scans the
//! kernel maps into a [`Snapshot`] for the HTTP side.
//!
//! A scan reads counters and live allocations, sweeps what retired
//! generations left behind, symbolizes new stacks, and drops stacks nothing
//! refers to any more.

pub mod aggregate;
mod ended;
pub mod history;
pub mod live_alloc;
pub mod oom;
mod oom_victim;
pub mod profile;
pub mod rates;
pub mod replacement;
pub mod snapshot;
pub mod stack_report;
mod tracks;
mod watching;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use memwatch_common::{
    alloc::{AllocKey, ProcCounters},
    cookie::Family,
    drop::Drop,
    event::{EventKind, ProcEvent},
    stack::StackFrames,
};

use crate::{
    clock::monotonic_ns,
    config::Config,
    control::Inbox,
    kernel::Kernel,
    metrics::Metrics,
    process::{ProcessTable, Selection, unix_now},
    symbolize::{Frame, Stack, Symbolize, Walk, python::PythonSymbolizer},
    watch::sampler::SharedWatcher,
};
use snapshot::{EndedProcess, GroupTotals, LiveAlloc, ProcessSnapshot, SharedSnapshot, Snapshot};

/// A stack id is dropped from the kernel after this many scans unreferenced.
const STACK_GRACE_SCANS: u32 = 2;
/// How long lifecycle events are handled before scans and escalations get a
/// turn.
const DRAIN_BUDGET: Duration = Duration::from_millis(250);
/// Executable names with their own running totals; more are folded together.
const MAX_GROUPS: usize = 10_000;
/// Processes whose tracking ended kept for /leaks.
const ENDED_KEPT: usize = 32;

/// A beat the run loop gives every `every` with a status line; the daemon
/// passes systemd's watchdog ping (collect knows nothing of systemd).
pub struct Heartbeat {
    pub every: Duration,
    pub beat: Box<dyn FnMut(&str) + Send>,
}

pub struct Collector {
    kernel: Kernel,
    table: ProcessTable,
    symbolizer: Box<dyn Symbolize>,
    /// Names Python frames from the processes' code objects.
    python: PythonSymbolizer,
    config: Config,
    shared: SharedSnapshot,
    metrics: Arc<Metrics>,
    /// Symbolized stacks per (pid, generation, stack id).
    stacks: HashMap<(u32, u32, u64), Arc<Stack>>,
    unreferenced: HashMap<u64, u32>,
    stacks_unavailable: u64,
    /// Final counters of ended generations.
    retired_families: BTreeMap<Family, ProcCounters>,
    retired_groups: HashMap<String, ProcCounters>,
    /// The previous reading per (pid, generation), for rates.
    previous: HashMap<(u32, u32), (u64, ProcCounters)>,
    /// Live bytes per stack at earlier scans, for growth since a moment.
    history: history::History,
    /// Host-wide leak detection, sampled on its own thread (None when
    /// turned off); the collector escalates its suspects.
    watcher: Option<SharedWatcher>,
    /// Control requests (None while they are served, or without control).
    inbox: Option<Inbox>,
    /// The selections in force.
    tracks: Vec<tracks::Selected>,
    /// Processes were tracked or untracked since the last scan.
    selection_changed: bool,
    ended: VecDeque<Arc<EndedProcess>>,
    /// OOM-kill post-mortems, newest first (`oom.keep`).
    oom: VecDeque<Arc<oom::OomKill>>,
    /// OOM kills seen: [cgroup, global, systemd-oomd].
    oom_kills: [u64; 3],
    /// Per process generation, the stacks at the scan with most live bytes.
    peak_views: HashMap<(u32, u32), Arc<snapshot::PeakView>>,
    /// Per process generation, its allocation profile's running state.
    profiles: HashMap<(u32, u32), profile::ProfileState>,
    /// The last census of each tracked Python process (for OOM kills).
    censuses: Option<crate::python::latest::LatestCensuses>,
}

/// The stack with its Python frames in place of the interpreter's, in a
/// process whose CPython memwatch walks.
pub(crate) fn with_python(
    unwind: &crate::unwind::Unwinder,
    python: &mut PythonSymbolizer,
    pid: u32,
    stack: &StackFrames,
    native: Vec<Frame>,
) -> Stack {
    let walk = Walk::of(stack);
    let frames = match unwind.python(pid) {
        Some(crate::python::Python::Walked(rt)) if !stack.python().is_empty() => {
            let py = python.frames(pid, rt, stack.python());
            crate::symbolize::python::merge(native, py)
        }
        _ => native,
    };
    Stack { frames, walk }
}

/// The process's exact high-water mark from the kernel, and the stacks
/// of the scan with the most live bytes (this one, when it has more
/// than any before).
fn peak_of(
    kernel: &Kernel,
    views: &mut HashMap<(u32, u32), Arc<snapshot::PeakView>>,
    inc: &crate::process::Incarnation,
    allocations: &[LiveAlloc],
    stacks: &HashMap<u64, Arc<Stack>>,
    (read_ns, read_unix): (u64, f64),
) -> Option<snapshot::PeakSnapshot> {
    let key = (inc.pid, inc.generation);
    let total: u64 = allocations.iter().map(|a| a.size).sum();
    if views.get(&key).is_none_or(|v| total > v.aggregated.live_bytes) {
        views.insert(
            key,
            Arc::new(snapshot::PeakView {
                taken_unix: read_unix,
                aggregated: aggregate::aggregate(allocations, None),
                stacks: stacks.clone(),
            }),
        );
    }
    let p = kernel
        .peak(inc.slot, inc.generation)
        .inspect_err(|e| tracing::warn!(pid = inc.pid, error = %e, "reading the peak failed"))
        .ok()?;
    (p.peak > 0).then(|| snapshot::PeakSnapshot {
        bytes: p.peak,
        at_unix: read_unix - read_ns.saturating_sub(p.peak_ns) as f64 / 1e9,
        view: views[&key].clone(),
    })
}

fn add(a: &mut ProcCounters, b: &ProcCounters) {
    *a = ProcCounters::sum([&*a, b]);
}

impl Collector {
    pub fn new(
        kernel: Kernel,
        config: Config,
        symbolizer: Box<dyn Symbolize>,
        shared: SharedSnapshot,
        metrics: Arc<Metrics>,
        watcher: Option<SharedWatcher>,
        inbox: Option<Inbox>,
    ) -> Self {
        Collector {
            kernel,
            table: ProcessTable::for_config(&config, config.exe.clone()),
            symbolizer,
            python: PythonSymbolizer::new(config.symbol_cache_entries),
            config,
            shared,
            metrics,
            stacks: HashMap::new(),
            unreferenced: HashMap::new(),
            stacks_unavailable: 0,
            retired_families: BTreeMap::new(),
            retired_groups: HashMap::new(),
            previous: HashMap::new(),
            history: Default::default(),
            watcher,
            inbox,
            tracks: Vec::new(),
            selection_changed: false,
            ended: VecDeque::new(),
            oom: VecDeque::new(),
            oom_kills: [0; 3],
            peak_views: HashMap::new(),
            profiles: HashMap::new(),
            censuses: None,
        }
    }

    /// Names Python victims of OOM kills by their last census's types.
    pub fn with_censuses(mut self, censuses: crate::python::latest::LatestCensuses) -> Self {
        self.censuses = Some(censuses);
        self
    }

    /// Tracks the configured processes. A pid that cannot be tracked is
    /// reported and skipped; memwatch keeps running.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.kernel.set_report_all_execs(!self.config.exe.is_empty())?;
        self.tracks = tracks::from_config(&self.config);
        for (pid, e) in self.apply("") {
            tracing::warn!(pid, error = %e, "cannot track process");
        }
        self.act_on_suspects();
        self.scan();
        Ok(())
    }

    /// Runs until `shutdown` is set, then detaches every probe. With a
    /// `heartbeat`, the loop itself beats it: a stuck collector (not just a
    /// live HTTP server) misses beats.
    pub fn run(mut self, shutdown: Arc<AtomicBool>, mut heartbeat: Option<Heartbeat>) {
        let sample_every = self.config.detect.sample_interval;
        let mut next_scan = Instant::now() + self.config.collect_interval;
        let mut next_sample = Instant::now() + sample_every;
        let mut next_ping = Instant::now();
        while !shutdown.load(Ordering::Relaxed) {
            // New processes waiting for their libc are retried every few ms.
            let cap = if self.table.has_pending() {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(200)
            };
            let next = if self.watcher.is_some() {
                next_scan.min(next_sample)
            } else {
                next_scan
            };
            let wait = next.saturating_duration_since(Instant::now()).min(cap);
            self.wait_for_events(wait);
            self.drain_events();
            if self.table.has_pending() {
                self.table.retry_pending(&mut self.kernel);
            }
            self.serve_requests();
            self.expire_tracks();
            if self.watcher.is_some() && Instant::now() >= next_sample {
                self.act_on_suspects();
                next_sample += sample_every;
                if next_sample < Instant::now() {
                    next_sample = Instant::now() + sample_every;
                }
            }
            if Instant::now() >= next_scan {
                self.scan();
                self.enforce_budget();
                next_scan = Instant::now() + self.config.collect_interval;
            }
            if let Some(h) = &mut heartbeat
                && Instant::now() >= next_ping
            {
                let status = format!(
                    "tracking {} process(es) exactly, watching {}",
                    self.table.len(),
                    self.watcher.as_ref().map_or(0, |w| w.lock().len())
                );
                (h.beat)(&status);
                next_ping = Instant::now() + h.every;
            }
        }
        let probes = self.table.probe_count();
        let t = Instant::now();
        self.table.untrack_all(&mut self.kernel);
        tracing::info!(probes, seconds = t.elapsed().as_secs_f64(), "detached all probes");
    }

    fn wait_for_events(&mut self, timeout: Duration) {
        let fd = self.kernel.events().as_fd().as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    }

    /// Handles lifecycle events for at most [`DRAIN_BUDGET`]; the rest wait
    /// in the ring buffer. Under exec churn each attach can wait on the
    /// kernel's tracing lock for a long time, and a drain without an end
    /// would starve scans and escalations.
    fn drain_events(&mut self) {
        let started = Instant::now();
        while started.elapsed() < DRAIN_BUDGET {
            let Some(item) = self.kernel.events().next() else { break };
            let event = ProcEvent::from_bytes(&item);
            drop(item);
            if let Some(e) = event {
                self.handle(e);
            }
        }
        self.fold_retired();
    }

    /// Reads the final counters of generations that ended (exit, exec,
    /// untracking), adds them to the running totals and frees their slot.
    fn fold_retired(&mut self) {
        let retired = self.table.take_retired();
        let last = (!retired.is_empty()).then(|| self.shared.get());
        for r in retired {
            if let (Some(ended), Some(last)) = (&r.ended, &last)
                && ended.selection != Selection::Suspect
                && let Some(p) = last
                    .processes
                    .iter()
                    .find(|p| p.id.pid == r.pid && p.generation == r.generation)
            {
                let e = EndedProcess::of(p, last.taken_at_unix, ended.why.clone(), self.config.stacks_per_process);
                self.ended.retain(|x| x.id.pid != r.pid);
                self.ended.push_front(Arc::new(e));
                self.ended.truncate(ENDED_KEPT);
            }
            // Its code objects' addresses may be reused by the next image.
            self.python.forget(r.pid);
            let group = if self.retired_groups.len() >= MAX_GROUPS && !self.retired_groups.contains_key(&r.exe_name) {
                "other".to_string()
            } else {
                r.exe_name.clone()
            };
            for f in Family::ALL {
                match self.kernel.counters(r.slot, r.generation, f) {
                    Ok(c) => {
                        add(self.retired_families.entry(f).or_default(), &c);
                        add(self.retired_groups.entry(group.clone()).or_default(), &c);
                    }
                    Err(e) => tracing::warn!(pid = r.pid, error = %e, "reading final counters failed"),
                }
            }
            // The slot's parity is reused by the generation four execs on.
            if let Err(e) = self.kernel.clear_counters(r.slot, r.generation) {
                tracing::warn!(pid = r.pid, error = %e, "clearing counters failed");
            }
            if r.release_slot {
                self.table.release_slot(r.slot);
            }
        }
    }

    fn handle(&mut self, e: ProcEvent) {
        match EventKind::from_u32(e.kind) {
            Some(EventKind::Exec) => self.table.on_exec(&mut self.kernel, e.tgid, e.generation),
            Some(EventKind::Exit) => self.table.on_exit(&mut self.kernel, e.tgid, e.generation),
            Some(EventKind::Fork) => self.table.on_fork(&mut self.kernel, e.tgid),
            Some(EventKind::CodeMapped) => self.table.on_code_mapped(&mut self.kernel, e.tgid),
            Some(EventKind::OomVictim) => self.on_oom_victim(e.tgid, false),
            Some(EventKind::OomdKill) => self.on_oom_victim(e.tgid, true),
            None => tracing::warn!(kind = e.kind, "unknown event from the kernel"),
        }
    }

    /// Reads the kernel maps and publishes a new snapshot.
    pub fn scan(&mut self) {
        self.scan_with(true);
    }

    /// A scan; with `reconcile`, processes that exited unseen are untracked
    /// first (an OOM victim's post-mortem scans without: it is dying, and
    /// its records are what is wanted).
    fn scan_with(&mut self, reconcile: bool) {
        let started = Instant::now();
        // A snapshot is dated when its data is read: before the counters.
        let (read_ns, read_unix) = (monotonic_ns(), unix_now());
        let stamp = self.kernel.stamp_now();
        if reconcile {
            self.table.reconcile(&mut self.kernel);
            self.fold_retired();
            self.prune_tracks();
        }

        // Counters of the current generations.
        let mut current: HashMap<(u32, u32), ProcCounters> = HashMap::new();
        let mut families: BTreeMap<Family, ProcCounters> = self.retired_families.clone();
        for inc in self.table.iter() {
            for f in Family::ALL {
                match self.kernel.counters(inc.slot, inc.generation, f) {
                    Ok(c) => {
                        add(families.entry(f).or_default(), &c);
                        add(current.entry((inc.pid, inc.generation)).or_default(), &c);
                    }
                    Err(e) => tracing::warn!(pid = inc.pid, error = %e, "reading counters failed"),
                }
            }
        }

        // Live allocations, and the leftovers of ended generations.
        let mut live: HashMap<(u32, u32), Vec<LiveAlloc>> = HashMap::new();
        let mut stale: Vec<AllocKey> = Vec::new();
        let mut live_entries = 0usize;
        let table = &self.table;
        let read = self.kernel.for_each_live(|k, r| {
            live_entries += 1;
            if table.is_current(k.tgid, k.generation) {
                live.entry((k.tgid, k.generation)).or_default().push(LiveAlloc {
                    stack_id: r.stack_id,
                    size: r.size,
                    timestamp_ns: r.timestamp_ns,
                    kind: r.kind,
                    family: r.family,
                });
            } else {
                stale.push(*k);
            }
        });
        let live_table_entries = match read {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "reading live allocations failed");
                0
            }
        };
        let live_entries = live_entries.saturating_sub(live_table_entries);
        // A process that exec'd since `reconcile` already records under the
        // generation the kernel gave it: those records are not stale.
        let mut kernel_generation: HashMap<u32, Option<u32>> = HashMap::new();
        stale.retain(|k| {
            *kernel_generation
                .entry(k.tgid)
                .or_insert_with(|| self.kernel.tracked_generation(k.tgid))
                != Some(k.generation)
        });
        if !stale.is_empty() {
            match self.kernel.delete_live(&stale) {
                Ok(n) => tracing::debug!(deleted = n, "swept records of ended processes"),
                Err(e) => tracing::warn!(error = %e, "sweeping stale records failed"),
            }
        }

        // The allocation profile: every allocation by stack, freed or not.
        let mut totals: HashMap<(u32, u32), HashMap<u64, memwatch_common::alloc::StackTotals>> = HashMap::new();
        let (all_totals, in_map) = self.kernel.stack_totals();
        for (k, v) in all_totals {
            if self.table.is_current(k.tgid, k.generation) {
                totals.entry((k.tgid, k.generation)).or_default().insert(k.stack_id, v);
            }
        }
        let stale_totals: Vec<_> = in_map
            .into_iter()
            .filter(|k| {
                !self.table.is_current(k.tgid, k.generation)
                    && *kernel_generation
                        .entry(k.tgid)
                        .or_insert_with(|| self.kernel.tracked_generation(k.tgid))
                        != Some(k.generation)
            })
            .collect();
        if !stale_totals.is_empty() {
            self.kernel.delete_stack_totals(&stale_totals);
        }

        let mut wanted: HashMap<(u32, u32), HashSet<u64>> = HashMap::new();
        for (key, allocs) in &live {
            wanted
                .entry(*key)
                .or_default()
                .extend(allocs.iter().map(|a| a.stack_id));
        }
        for (key, by_stack) in &totals {
            wanted.entry(*key).or_default().extend(by_stack.keys().copied());
        }
        self.symbolize_new_stacks(&wanted);
        // The kernel keeps the stacks live blocks refer to; a stack only the
        // profile names keeps its symbolized frames here, and its kernel
        // copy goes: the stacks map stays for what is live.
        let mut referenced: HashSet<u64> = live.values().flatten().map(|a| a.stack_id).collect();
        // Growth records refer to stacks too.
        if let Some(w) = &self.watcher {
            referenced.extend(w.lock().iter().flat_map(|w| w.growth.iter().map(|g| g.stack_id)));
        }
        let stack_entries = self.collect_stack_garbage(&referenced);

        let mut processes = Vec::new();
        let mut groups: HashMap<String, GroupTotals> = HashMap::new();
        for inc in self.table.iter() {
            let key = (inc.pid, inc.generation);
            let counters = current.get(&key).copied().unwrap_or_default();
            let rates = match self.previous.get(&key) {
                Some((t, prev)) => rates::rates(prev, &counters, read_ns.saturating_sub(*t) as f64 / 1e9),
                None => rates::Rates::default(),
            };
            let allocations = live.remove(&key).unwrap_or_default();
            let mut reading = history::Reading::of(&allocations, read_ns, read_unix);
            reading.counters = counters;
            let history = self.history.record(key, reading);
            let alloc_profile = self.profiles.entry(key).or_default().update(
                totals.get(&key).unwrap_or(&HashMap::new()),
                &allocations,
                stamp,
            );
            let mut stacks = HashMap::new();
            let ids = allocations
                .iter()
                .map(|a| a.stack_id)
                .chain(alloc_profile.keys().copied());
            for id in ids {
                if let Some(f) = self.stacks.get(&(inc.pid, inc.generation, id)) {
                    stacks.entry(id).or_insert_with(|| f.clone());
                }
            }
            let g = groups.entry(inc.exe_name()).or_insert_with(|| GroupTotals {
                exe_name: inc.exe_name(),
                ..Default::default()
            });
            let peak = peak_of(
                &self.kernel,
                &mut self.peak_views,
                inc,
                &allocations,
                &stacks,
                (read_ns, read_unix),
            );
            g.processes += 1;
            g.live_bytes += allocations.iter().map(|a| a.size).sum::<u64>();
            g.live_allocations += allocations.len() as u64;
            add(&mut g.counters, &counters);
            processes.push(ProcessSnapshot {
                id: inc.identity(),
                generation: inc.generation,
                exe_name: inc.exe_name(),
                selection: inc.selection.clone(),
                tracked_since_unix: inc.tracked_since_unix,
                counters,
                rates,
                allocations,
                stacks,
                probes: inc.probes(),
                unwind: self.table.unwind.modules(inc.pid),
                python: self.table.unwind.python(inc.pid).and_then(crate::python::Sight::of),
                history,
                peak,
                alloc_profile: Arc::new(alloc_profile),
            });
        }
        let table = &self.table;
        self.history
            .retain(|&(pid, generation)| table.is_current(pid, generation));
        self.peak_views
            .retain(|&(pid, generation), _| table.is_current(pid, generation));
        self.profiles
            .retain(|&(pid, generation), _| table.is_current(pid, generation));
        for (name, c) in &self.retired_groups {
            let g = groups.entry(name.clone()).or_insert_with(|| GroupTotals {
                exe_name: name.clone(),
                ..Default::default()
            });
            add(&mut g.counters, c);
        }
        self.previous = current.into_iter().map(|(k, c)| (k, (read_ns, c))).collect();

        let drops = match self.kernel.drops() {
            Ok(d) => Drop::ALL.iter().map(|&r| (r, d[r as usize])).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading drop counters failed");
                Vec::new()
            }
        };
        let snapshot = Snapshot {
            ready: true,
            taken_at_ns: read_ns,
            taken_at_unix: read_unix,
            scan_seconds: started.elapsed().as_secs_f64(),
            processes,
            drops,
            families: families.into_iter().collect(),
            groups: groups.into_values().collect(),
            failures: self.table.failures().to_vec(),
            attach_failures_total: self.table.attach_failures_total,
            exited_before_attach_total: self.table.exited_before_attach_total,
            probes_attached: self.table.probe_count(),
            live_entries,
            live_capacity: self.kernel.sizes.live_allocations,
            live_table_entries,
            live_table_capacity: self.kernel.sizes.live_table_slots,
            stack_entries,
            stack_capacity: self.kernel.sizes.stacks,
            stacks_unavailable: self.stacks_unavailable,
            symbol_cache_entries: self.symbolizer.cached(),
            programs: self.kernel.program_stats(),
            bpf_stats_enabled: crate::kernel::bpf_stats_enabled(),
            placement: self.config.placement,
            watch: self.watch_snapshot(),
            unwind: snapshot::UnwindSnapshot {
                enabled: self.config.unwind.enabled,
                totals: self.table.unwind.totals(),
                stats: self
                    .kernel
                    .unwind
                    .stats()
                    .inspect_err(|e| tracing::warn!(error = %e, "reading stack walk counters failed"))
                    .ok(),
            },
            tracks: self.track_list(),
            ended: self.ended.iter().cloned().collect(),
            oom: self.oom.iter().cloned().collect(),
            oom_kills_total: self.oom_kills,
        };
        self.metrics.update(&snapshot);
        self.shared.set(snapshot);
    }

    fn watch_snapshot(&self) -> snapshot::WatchSnapshot {
        let Some(w) = &self.watcher else {
            return Default::default();
        };
        let w = w.lock();
        let mut suspects: Vec<snapshot::SuspectSnapshot> = w
            .iter()
            .chain(w.gone())
            .filter(|w| snapshot::SuspectSnapshot::listed(w))
            .map(snapshot::SuspectSnapshot::of)
            .collect();
        suspects.sort_by(|a, b| b.estimate.rate.total_cmp(&a.estimate.rate));
        snapshot::WatchSnapshot {
            enabled: true,
            watched_processes: w.len(),
            suspects,
            groups: snapshot::host_groups(w.iter()),
            alerts_fired_total: w.counts.alerts_fired,
            alerts_resolved_total: w.counts.alerts_resolved,
            escalations_running: watching::running(&w),
            escalation_outcomes: w.counts.escalation_outcomes,
            sample_seconds: w.counts.sample_seconds,
            processes: {
                let offset = crate::process::unix_now() - crate::clock::monotonic_ns() as f64 / 1e9;
                w.iter().map(|p| snapshot::HostProcess::of(p, offset)).collect()
            },
        }
    }

    /// One kernel stack of `pid`, symbolized now (None when the kernel no
    /// longer has it).
    fn symbolize_one(&mut self, pid: u32, id: u64) -> Option<Arc<Stack>> {
        let stack = self.kernel.stack(id)?;
        let native: Vec<Frame> = self
            .symbolizer
            .symbolize(pid, stack.addresses())
            .into_iter()
            .flatten()
            .collect();
        Some(Arc::new(with_python(
            &self.table.unwind,
            &mut self.python,
            pid,
            &stack,
            native,
        )))
    }

    /// Reads and symbolizes the `wanted` stacks seen for the first time, one
    /// batch per process (live blocks' and the allocation profile's), and
    /// forgets the symbolized stacks no longer wanted.
    fn symbolize_new_stacks(&mut self, wanted: &HashMap<(u32, u32), HashSet<u64>>) {
        let mut referenced = HashSet::new();
        for (&(pid, generation), ids) in wanted {
            let mut new_ids: Vec<u64> = Vec::new();
            for &id in ids {
                if id != 0 && referenced.insert((pid, id)) && !self.stacks.contains_key(&(pid, generation, id)) {
                    new_ids.push(id);
                }
            }
            let mut addrs = Vec::new();
            let mut spans = Vec::new();
            for id in new_ids {
                match self.kernel.stack(id) {
                    Some(stack) => {
                        let a = stack.addresses();
                        spans.push((id, addrs.len(), a.len(), stack));
                        addrs.extend_from_slice(a);
                    }
                    None => self.stacks_unavailable += 1,
                }
            }
            if spans.is_empty() {
                continue;
            }
            let symbolized = self.symbolizer.symbolize(pid, &addrs);
            for (id, start, len, stack) in spans {
                let native: Vec<Frame> = symbolized[start..start + len].iter().flatten().cloned().collect();
                let stack = with_python(&self.table.unwind, &mut self.python, pid, &stack, native);
                self.stacks.insert((pid, generation, id), Arc::new(stack));
            }
        }
        let ids: HashSet<u64> = referenced.iter().map(|&(_, id)| id).collect();
        // Forget symbolized stacks of ended generations or no longer used.
        self.stacks
            .retain(|&(pid, generation, id), _| self.table.is_current(pid, generation) && ids.contains(&id));
    }

    /// Deletes kernel stacks that no live allocation has referred to for a
    /// few scans. The stack id is a content hash, so a stack recaptured later
    /// gets the same id: nothing is ever attributed to the wrong code.
    /// Returns how many stacks the kernel keeps afterwards.
    fn collect_stack_garbage(&mut self, referenced: &HashSet<u64>) -> usize {
        let ids = self.kernel.stack_ids();
        let total = ids.len();
        let mut doomed = Vec::new();
        let mut seen = HashMap::new();
        for id in ids {
            if referenced.contains(&id) {
                continue;
            }
            let n = self.unreferenced.get(&id).copied().unwrap_or(0) + 1;
            if n > STACK_GRACE_SCANS {
                doomed.push(id);
            } else {
                seen.insert(id, n);
            }
        }
        self.unreferenced = seen;
        if doomed.is_empty() {
            return total;
        }
        match self.kernel.delete_stacks(&doomed) {
            Ok(n) => total - n,
            Err(e) => {
                tracing::warn!(error = %e, "deleting unused stacks failed");
                total
            }
        }
    }
}

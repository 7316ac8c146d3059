//! The kernel side as the daemon sees it: the loaded eBPF object, typed
//! access to its maps, and the lifecycle tracepoints.

pub mod batch;
mod btf;
mod clock;
mod live_table;
mod mapped;
pub mod object;
mod preempt;
pub mod probes;
mod requirements;
pub mod tracefs;
pub mod unwind;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use anyhow::{Context, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, ProgramArray, RingBuf},
    programs::{TracePoint, UProbe},
};
use memwatch_common::{
    alloc::{
        AllocKey, AllocRecord, GENERATION_SLOTS, Peak, ProcCounters, STACK_TOTALS_CACHE_SLOTS, StackTotalKey,
        StackTotals, StackTotalsSlot, Tracked, counter_index, peak_index,
    },
    cookie::Family,
    drop::Drop,
    event::Settings,
    growth::{GrowthKey, GrowthValue, syscall_arg_offset},
    maps as names,
    stack::StackFrames,
};

use crate::config::{MapSizes, Unwind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: String,
    pub runs: u64,
    pub run_ns: u64,
    /// Instructions the verifier processed to load it (the kernel's limit
    /// is 1,000,000; load time grows with it).
    pub verified: Option<u32>,
}

/// The kernel's pid_max: the size of the TRACKED array indexed by tgid.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 22)
}

/// Whether the kernel is timing BPF programs (`sysctl kernel.bpf_stats_enabled`).
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

pub struct Kernel {
    ebpf: Ebpf,
    live: Map,
    live_table: live_table::LiveTable,
    counters: Map,
    peaks: Map,
    stack_totals: Map,
    stack_totals_cache: Map,
    tracked: Map,
    stacks: Map,
    drops: Map,
    growth: Map,
    settings: Map,
    events: RingBuf<MapData>,
    _clock: clock::ClockPublisher,
    pub unwind: unwind::UnwindMaps,
    /// Holds `growth_record` for the growth tracepoints' tail call (the
    /// kernel empties a program array once no descriptor refers to it).
    _growth_tail: Option<ProgramArray<MapData>>,
    pub sizes: MapSizes,
    /// Possible CPUs: the length of every per-CPU value.
    cpus: usize,
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

fn map_fd(map: &Map) -> BorrowedFd<'_> {
    let data = match map {
        Map::HashMap(d) | Map::PerCpuHashMap(d) | Map::Array(d) | Map::PerCpuArray(d) | Map::LruHashMap(d) => d,
        other => unreachable!("unexpected map type {other:?}"),
    };
    data.fd().as_fd()
}

struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Kernel {
    /// Loads the programs and maps (sized from the config) and attaches the
    /// process lifecycle tracepoints. Uprobes are attached per process later.
    /// With `watch_growth`, host-wide growth attribution (mmap/brk/mremap
    /// tracepoints) is attached too.
    pub fn load(sizes: MapSizes, unwind: Unwind, report_all_execs: bool, watch_growth: bool) -> anyhow::Result<Kernel> {
        if object::BYTES.is_empty() {
            bail!(
                "this memwatch binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild it after `cargo xtask setup`"
            );
        }
        requirements::check()?;
        raise_memlock();
        tracefs::ensure_mounted().context("mounting tracefs at /sys/kernel/tracing")?;
        let exit_format = tracefs::read_format("sched", "sched_process_exit")?;
        let newtask_format = tracefs::read_format("task", "task_newtask")?;
        let oom_pid_offset = tracefs::read_format("oom", "mark_victim")
            .ok()
            .and_then(|f| tracefs::field_offset(&f, "pid"));
        let signal_offsets = tracefs::read_format("signal", "signal_generate")
            .ok()
            .and_then(|f| Some((tracefs::field_offset(&f, "sig")?, tracefs::field_offset(&f, "pid")?)));
        let settings = Settings {
            report_all_execs: report_all_execs.into(),
            exit_group_dead_offset: tracefs::field_offset(&exit_format, "group_dead").unwrap_or(0),
            newtask_clone_flags_offset: tracefs::field_offset(&newtask_format, "clone_flags")
                .context("task_newtask has no clone_flags field")?,
            stacks_epoch: 0,
            daemon_tgid: std::process::id(),
            oom_victim_pid_offset: oom_pid_offset.unwrap_or(0),
            signal_sig_offset: signal_offsets.map_or(0, |o| o.0),
            signal_pid_offset: signal_offsets.map_or(0, |o| o.1),
        };

        // MEMWATCH_VERIFIER_LOG=1 puts the verifier's full log into load errors.
        let log = if std::env::var_os("MEMWATCH_VERIFIER_LOG").is_some() {
            aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS
        } else {
            aya::VerifierLogLevel::default()
        };
        let preemption = preempt::detect();
        let atomic_counters = preempt::atomic_counters(preemption);
        tracing::info!(
            preemption = preemption.map_or("unknown".into(), |p| format!("{p:?}").to_lowercase()),
            "per-CPU counters use {} adds",
            if atomic_counters { "atomic" } else { "plain" }
        );
        let mut ebpf = EbpfLoader::new()
            .verifier_log_level(log)
            .override_global(names::ATOMIC_COUNTERS, &u8::from(atomic_counters), true)
            // CALLS is task-local storage, which aya creates but has no
            // user-space wrapper for; the daemon never reads it.
            .allow_unsupported_maps()
            .override_global(names::LIVE_TABLE_MASK, &(sizes.live_table_slots - 1), true)
            .map_max_entries(names::LIVE, sizes.live_allocations)
            .map_max_entries(names::LIVE_TABLE, sizes.live_table_slots)
            .map_max_entries(names::STACKS, sizes.stacks)
            .map_max_entries(names::COUNTERS, sizes.processes * GENERATION_SLOTS * Family::COUNT)
            .map_max_entries(names::PEAKS, sizes.processes * GENERATION_SLOTS)
            .map_max_entries(names::STACK_TOTALS, sizes.stack_totals)
            .map_max_entries(names::TRACKED, pid_max())
            .map_max_entries(names::UNWIND_ROWS, unwind.rows)
            .map_max_entries(names::UNWIND_PROCS, unwind.processes)
            .override_global(names::KERNEL_OFFSETS, &btf::kernel_offsets(), true)
            .override_global(names::UNWIND_ENABLED, &u8::from(unwind.enabled), true)
            .load(object::BYTES)
            .context("loading the eBPF object (memwatch needs root, or CAP_BPF and CAP_PERFMON)")?;

        let mut settings_map = take(&mut ebpf, names::SETTINGS)?;
        Array::<_, Settings>::try_from(&mut settings_map)?.set(0, settings, 0)?;
        let clock = clock::ClockPublisher::start(take(&mut ebpf, names::CLOCK)?)?;

        for prog in [names::PROG_ALLOC_ENTER, names::PROG_ALLOC_EXIT, names::PROG_FREE_ENTER] {
            let p: &mut UProbe = ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing"))?
                .try_into()?;
            p.load().with_context(|| format!("the kernel refused program {prog}"))?;
        }
        for (prog, category, name) in [
            (names::PROG_EXEC, "sched", "sched_process_exec"),
            (names::PROG_EXIT, "sched", "sched_process_exit"),
            (names::PROG_FORK, "task", "task_newtask"),
        ] {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing"))?
                .try_into()?;
            p.load().with_context(|| format!("the kernel refused program {prog}"))?;
            p.attach(category, name)
                .with_context(|| format!("attaching {category}/{name}"))?;
        }

        match oom_pid_offset {
            Some(_) => {
                let p: &mut TracePoint = ebpf
                    .program_mut(names::PROG_OOM)
                    .ok_or_else(|| anyhow!("program {} missing", names::PROG_OOM))?
                    .try_into()?;
                p.load()
                    .with_context(|| format!("the kernel refused program {}", names::PROG_OOM))?;
                p.attach("oom", "mark_victim").context("attaching oom/mark_victim")?;
            }
            None => tracing::warn!("this kernel has no oom/mark_victim tracepoint: no OOM-kill post-mortems"),
        }
        match signal_offsets {
            Some(_) => {
                let p: &mut TracePoint = ebpf
                    .program_mut(names::PROG_SIGNAL)
                    .ok_or_else(|| anyhow!("program {} missing", names::PROG_SIGNAL))?
                    .try_into()?;
                p.load()
                    .with_context(|| format!("the kernel refused program {}", names::PROG_SIGNAL))?;
                p.attach("signal", "signal_generate")
                    .context("attaching signal/signal_generate")?;
            }
            None => {
                tracing::warn!("this kernel has no signal/signal_generate tracepoint: systemd-oomd's kills go unseen")
            }
        }

        let growth_tail = if watch_growth {
            Some(attach_growth(&mut ebpf)?)
        } else {
            None
        };

        let events = RingBuf::try_from(take(&mut ebpf, names::EVENTS)?)?;
        let unwind = unwind::UnwindMaps::new(
            unwind::RowStore::map(take(&mut ebpf, names::UNWIND_ROWS)?, unwind.rows)?,
            take(&mut ebpf, names::UNWIND_PROCS)?,
            take(&mut ebpf, names::UNWIND_STATS)?,
        );
        let kernel = Kernel {
            unwind,
            _growth_tail: growth_tail,
            live: take(&mut ebpf, names::LIVE)?,
            live_table: live_table::LiveTable::map(take(&mut ebpf, names::LIVE_TABLE)?, sizes.live_table_slots)?,
            counters: take(&mut ebpf, names::COUNTERS)?,
            peaks: take(&mut ebpf, names::PEAKS)?,
            stack_totals: take(&mut ebpf, names::STACK_TOTALS)?,
            stack_totals_cache: take(&mut ebpf, names::STACK_TOTALS_CACHE)?,
            tracked: take(&mut ebpf, names::TRACKED)?,
            stacks: take(&mut ebpf, names::STACKS)?,
            drops: take(&mut ebpf, names::DROPS)?,
            growth: take(&mut ebpf, names::GROWTH)?,
            settings: settings_map,
            events,
            _clock: clock,
            ebpf,
            sizes,
            cpus: aya::util::nr_cpus().map_err(|(_, e)| e)?,
        };
        for p in kernel.program_stats() {
            tracing::debug!(program = p.name, verified_instructions = ?p.verified, "program loaded");
        }
        Ok(kernel)
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn set_report_all_execs(&mut self, on: bool) -> anyhow::Result<()> {
        let mut a = Array::<_, Settings>::try_from(&mut self.settings)?;
        let mut s = a.get(&0, 0)?;
        s.report_all_execs = on.into();
        a.set(0, s, 0)?;
        Ok(())
    }

    /// Starts counting a process's allocations under `generation`, in counter
    /// slot `slot` (whose counters are zeroed first).
    pub fn track(&mut self, tgid: u32, generation: u32, slot: u32) -> anyhow::Result<()> {
        for parity in 0..GENERATION_SLOTS {
            self.clear_counters(slot, parity)?;
        }
        let mut m = Array::<_, Tracked>::try_from(&mut self.tracked)?;
        m.set(tgid, Tracked { generation, slot }, 0)
            .with_context(|| format!("pid {tgid} is beyond this kernel's pid_max at startup"))?;
        Ok(())
    }

    pub fn untrack(&mut self, tgid: u32) {
        if let Ok(mut m) = Array::<_, Tracked>::try_from(&mut self.tracked) {
            let _ = m.set(tgid, Tracked::default(), 0);
        }
    }

    /// The kernel's view of a process's generation (it moves on at exec).
    pub fn tracked_generation(&self, tgid: u32) -> Option<u32> {
        let m = Array::<_, Tracked>::try_from(&self.tracked).ok()?;
        m.get(&tgid, 0).ok().map(|t| t.generation).filter(|&g| g != 0)
    }

    /// A process generation's counters for one allocator family, summed over CPUs.
    pub fn counters(&self, slot: u32, generation: u32, family: Family) -> anyhow::Result<ProcCounters> {
        let a = PerCpuArray::<_, ProcCounters>::try_from(&self.counters)?;
        let values = a.get(&counter_index(slot, generation, family as u8), 0)?;
        Ok(ProcCounters::sum(values.iter()))
    }

    /// A process generation's live bytes and their exact high-water mark.
    pub fn peak(&self, slot: u32, generation: u32) -> anyhow::Result<Peak> {
        let a = Array::<_, Peak>::try_from(&self.peaks)?;
        Ok(a.get(&peak_index(slot, generation), 0)?)
    }

    /// Zeroes the counters and the peak of one generation parity of a slot.
    pub fn clear_counters(&mut self, slot: u32, generation: u32) -> anyhow::Result<()> {
        let mut a = PerCpuArray::<_, ProcCounters>::try_from(&mut self.counters)?;
        for f in Family::ALL {
            let zero = PerCpuValues::try_from(vec![ProcCounters::default(); self.cpus])?;
            a.set(counter_index(slot, generation, f as u8), zero, 0)?;
        }
        Array::<_, Peak>::try_from(&mut self.peaks)?.set(peak_index(slot, generation), Peak::default(), 0)?;
        Ok(())
    }

    /// Every live allocation: the live table's, then the `LIVE` map's (read
    /// in batches). Returns how many of them the table held.
    pub fn for_each_live(&self, mut f: impl FnMut(&AllocKey, &AllocRecord)) -> std::io::Result<usize> {
        let in_table = self.live_table.for_each(&mut f);
        batch::for_each(&Fd(map_fd(&self.live).as_raw_fd()), 4096, f)?;
        Ok(in_table)
    }

    /// Deletes records of ended process generations, wherever they are held.
    pub fn delete_live(&self, keys: &[AllocKey]) -> std::io::Result<usize> {
        let in_map: Vec<AllocKey> = keys.iter().filter(|k| !self.live_table.clear(k)).copied().collect();
        let cleared = keys.len() - in_map.len();
        Ok(cleared + batch::delete(&Fd(map_fd(&self.live).as_raw_fd()), &in_map)?)
    }

    /// Address-space growth recorded per (process, stack).
    pub fn growth(&self) -> Vec<(GrowthKey, GrowthValue)> {
        let mut out = Vec::new();
        let fd = Fd(map_fd(&self.growth).as_raw_fd());
        if let Err(e) = batch::for_each::<GrowthKey, GrowthValue>(&fd, 1024, |k, v| out.push((*k, *v))) {
            tracing::warn!(error = %e, "reading growth records failed");
        }
        out
    }

    /// The time the probes stamp allocations with now (see `clock`).
    pub fn stamp_now(&self) -> u64 {
        self._clock.published()
    }

    /// Allocations per process generation and stack, since tracking began:
    /// the shared map's, plus what each CPU's cache holds yet. Returns the
    /// map's keys apart (only those can be deleted).
    pub fn stack_totals(&self) -> (Vec<(StackTotalKey, StackTotals)>, Vec<StackTotalKey>) {
        let mut sums: std::collections::HashMap<StackTotalKey, StackTotals> = Default::default();
        let mut add = |k: &StackTotalKey, v: &StackTotals| {
            let e = sums.entry(*k).or_insert(StackTotals {
                kind: v.kind,
                family: v.family,
                ..Default::default()
            });
            e.allocations += v.allocations;
            e.bytes += v.bytes;
        };
        let mut in_map = Vec::new();
        let fd = Fd(map_fd(&self.stack_totals).as_raw_fd());
        let read = batch::for_each::<StackTotalKey, StackTotals>(&fd, 1024, |k, v| {
            in_map.push(*k);
            add(k, v);
        });
        if let Err(e) = read {
            tracing::warn!(error = %e, "reading the allocation profile failed");
        }
        match PerCpuArray::<_, StackTotalsSlot>::try_from(&self.stack_totals_cache) {
            Ok(cache) => {
                for i in 0..STACK_TOTALS_CACHE_SLOTS {
                    for slot in cache.get(&i, 0).iter().flat_map(|v| v.iter()) {
                        if slot.totals.allocations != 0 {
                            add(&slot.key, &slot.totals);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the allocation profile's caches failed"),
        }
        (sums.into_iter().collect(), in_map)
    }

    pub fn delete_stack_totals(&self, keys: &[StackTotalKey]) {
        if let Err(e) = batch::delete(&Fd(map_fd(&self.stack_totals).as_raw_fd()), keys) {
            tracing::warn!(error = %e, "deleting ended processes' allocation profiles failed");
        }
    }

    pub fn delete_growth(&self, keys: &[GrowthKey]) {
        if let Err(e) = batch::delete(&Fd(map_fd(&self.growth).as_raw_fd()), keys) {
            tracing::warn!(error = %e, "deleting growth records failed");
        }
    }

    /// Events lost in the kernel, by [`Drop`] reason, summed over CPUs.
    pub fn drops(&self) -> anyhow::Result<[u64; Drop::COUNT as usize]> {
        let a = PerCpuArray::<_, u64>::try_from(&self.drops)?;
        let mut out = [0u64; Drop::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = a.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    pub fn stack(&self, id: u64) -> Option<StackFrames> {
        HashMap::<_, u64, StackFrames>::try_from(&self.stacks)
            .ok()?
            .get(&id, 0)
            .ok()
    }

    pub fn stack_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        let _ = batch::for_each::<u64, StackFrames>(&Fd(map_fd(&self.stacks).as_raw_fd()), 256, |k, _| ids.push(*k));
        ids
    }

    /// Deletes stored stacks. The eBPF side caches ids of stored stacks per
    /// CPU; bumping the epoch first and letting programs in flight finish
    /// keeps a cached id from outliving its stack.
    pub fn delete_stacks(&mut self, ids: &[u64]) -> anyhow::Result<usize> {
        let mut a = Array::<_, Settings>::try_from(&mut self.settings)?;
        let mut s = a.get(&0, 0)?;
        s.stacks_epoch = s.stacks_epoch.wrapping_add(1);
        a.set(0, s, 0)?;
        std::thread::sleep(std::time::Duration::from_millis(2));
        Ok(batch::delete(&Fd(map_fd(&self.stacks).as_raw_fd()), ids)?)
    }

    /// Run counts and times of memwatch's programs. The kernel keeps them
    /// only while the `kernel.bpf_stats_enabled` sysctl is 1.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgramStats {
                    name: name.to_string(),
                    runs: info.run_count(),
                    run_ns: info.run_time().as_nanos() as u64,
                    verified: info.verified_instruction_count(),
                })
            })
            .collect()
    }

    pub fn events(&mut self) -> &mut RingBuf<MapData> {
        &mut self.events
    }
}

/// Attaches the syscall tracepoints that attribute growth to stacks, once
/// their records are checked to have the layout the programs read, after
/// loading the program they tail-call into the returned array.
fn attach_growth(ebpf: &mut Ebpf) -> anyhow::Result<ProgramArray<MapData>> {
    let record: &mut TracePoint = ebpf
        .program_mut(names::PROG_GROWTH_RECORD)
        .ok_or_else(|| anyhow!("program {} missing", names::PROG_GROWTH_RECORD))?
        .try_into()?;
    record
        .load()
        .with_context(|| format!("the kernel refused program {}", names::PROG_GROWTH_RECORD))?;
    let fd = record.fd()?.try_clone()?;
    let mut tail = ProgramArray::try_from(take(ebpf, names::GROWTH_TAIL)?)?;
    tail.set(0, &fd, 0).context("setting the growth tail call")?;
    let mmap = tracefs::read_format("syscalls", "sys_enter_mmap")?;
    if tracefs::field_offset(&mmap, "flags") != Some(syscall_arg_offset(3) as u32)
        || tracefs::field_offset(&mmap, "len") != Some(syscall_arg_offset(1) as u32)
    {
        bail!("unexpected layout of syscalls/sys_enter_mmap; growth attribution is not supported on this kernel");
    }
    for (prog, name) in [
        (names::PROG_MMAP, "sys_enter_mmap"),
        (names::PROG_BRK, "sys_exit_brk"),
        (names::PROG_MREMAP, "sys_enter_mremap"),
    ] {
        let p: &mut TracePoint = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("program {prog} missing"))?
            .try_into()?;
        p.load().with_context(|| format!("the kernel refused program {prog}"))?;
        p.attach("syscalls", name)
            .with_context(|| format!("attaching syscalls/{name}"))?;
    }
    Ok(tail)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}

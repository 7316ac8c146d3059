//! The kernel side as the daemon sees it: the loaded eBPF object, typed
//! access to its maps, and the lifecycle tracepoints.

pub mod batch;
pub mod probes;
pub mod tracefs;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use anyhow::{Context, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{TracePoint, UProbe},
};
use memwatch_common::{
    alloc::{AllocKey, AllocRecord, ProcCounters, ProcKey, Tracked},
    drop::Drop,
    event::Settings,
    maps as names,
    stack::StackFrames,
};

use crate::config::MapSizes;

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memwatch"));

pub struct Kernel {
    ebpf: Ebpf,
    live: Map,
    counters: Map,
    tracked: Map,
    stacks: Map,
    drops: Map,
    settings: Map,
    events: RingBuf<MapData>,
    pub sizes: MapSizes,
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

fn map_fd(map: &Map) -> BorrowedFd<'_> {
    let data = match map {
        Map::HashMap(d) | Map::PerCpuHashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => d,
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
    pub fn load(sizes: MapSizes, report_all_execs: bool) -> anyhow::Result<Kernel> {
        if OBJECT.is_empty() {
            bail!(
                "this memwatch binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild it after `cargo xtask setup`"
            );
        }
        raise_memlock();
        tracefs::ensure_mounted().context("mounting tracefs at /sys/kernel/tracing")?;
        let exit_format = tracefs::read_format("sched", "sched_process_exit")?;
        let newtask_format = tracefs::read_format("task", "task_newtask")?;
        let settings = Settings {
            report_all_execs: report_all_execs.into(),
            exit_group_dead_offset: tracefs::field_offset(&exit_format, "group_dead").unwrap_or(0),
            newtask_clone_flags_offset: tracefs::field_offset(&newtask_format, "clone_flags")
                .context("task_newtask has no clone_flags field")?,
            _pad: 0,
        };

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::LIVE, sizes.live_allocations)
            .map_max_entries(names::STACKS, sizes.stacks)
            .map_max_entries(names::CALLS, sizes.calls_in_flight)
            .map_max_entries(names::COUNTERS, sizes.processes)
            .map_max_entries(names::TRACKED, sizes.processes)
            .load(OBJECT)
            .context("loading the eBPF object (memwatch needs root, or CAP_BPF and CAP_PERFMON)")?;

        let mut settings_map = take(&mut ebpf, names::SETTINGS)?;
        Array::<_, Settings>::try_from(&mut settings_map)?.set(0, settings, 0)?;

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

        let events = RingBuf::try_from(take(&mut ebpf, names::EVENTS)?)?;
        Ok(Kernel {
            live: take(&mut ebpf, names::LIVE)?,
            counters: take(&mut ebpf, names::COUNTERS)?,
            tracked: take(&mut ebpf, names::TRACKED)?,
            stacks: take(&mut ebpf, names::STACKS)?,
            drops: take(&mut ebpf, names::DROPS)?,
            settings: settings_map,
            events,
            ebpf,
            sizes,
        })
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

    /// Starts counting a process's allocations under `generation`.
    pub fn track(&mut self, tgid: u32, generation: u32) -> anyhow::Result<()> {
        let mut m = HashMap::<_, u32, Tracked>::try_from(&mut self.tracked)?;
        m.insert(tgid, Tracked { generation, _pad: 0 }, 0)
            .context("the tracked-process map is full (raise maps.processes)")?;
        Ok(())
    }

    pub fn untrack(&mut self, tgid: u32) {
        if let Ok(mut m) = HashMap::<_, u32, Tracked>::try_from(&mut self.tracked) {
            let _ = m.remove(&tgid);
        }
    }

    pub fn tracked_generation(&self, tgid: u32) -> Option<u32> {
        let m = HashMap::<_, u32, Tracked>::try_from(&self.tracked).ok()?;
        m.get(&tgid, 0).ok().map(|t| t.generation)
    }

    /// Every live allocation, read in batches.
    pub fn for_each_live(&self, f: impl FnMut(&AllocKey, &AllocRecord)) -> std::io::Result<()> {
        batch::for_each(&Fd(map_fd(&self.live).as_raw_fd()), 4096, f)
    }

    pub fn delete_live(&self, keys: &[AllocKey]) -> std::io::Result<usize> {
        batch::delete(&Fd(map_fd(&self.live).as_raw_fd()), keys)
    }

    /// Per-process counters, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<(ProcKey, ProcCounters)>> {
        let m = PerCpuHashMap::<_, ProcKey, ProcCounters>::try_from(&self.counters)?;
        let mut out = Vec::new();
        for key in m.keys() {
            let key = key?;
            if let Ok(values) = m.get(&key, 0) {
                out.push((key, ProcCounters::sum(values.iter())));
            }
        }
        Ok(out)
    }

    pub fn delete_counters(&mut self, key: &ProcKey) {
        if let Ok(mut m) = PerCpuHashMap::<_, ProcKey, ProcCounters>::try_from(&mut self.counters) {
            let _ = m.remove(key);
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

    pub fn delete_stacks(&self, ids: &[u64]) -> std::io::Result<usize> {
        batch::delete(&Fd(map_fd(&self.stacks).as_raw_fd()), ids)
    }

    pub fn events(&mut self) -> &mut RingBuf<MapData> {
        &mut self.events
    }
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

//! The daemon's side of the unwind maps: the rows array, mapped into the
//! daemon's memory so that an object's table is written without a syscall
//! per row, and the per-process mappings.

use anyhow::Context;
use aya::maps::{HashMap, Map, PerCpuArray};

use super::mapped::MappedArray;
use memwatch_common::unwind::{ProcUnwind, STATS_LEN, UnwindRow};

pub struct RowStore {
    array: MappedArray,
    rows: u32,
}

// SAFETY: the mapping is written by the collector thread only; the kernel
// reads rows only once a process's mappings point at them.
unsafe impl Send for RowStore {}

impl RowStore {
    /// Maps `map`, an mmapable array of `rows` [`UnwindRow`]s.
    pub fn map(map: Map, rows: u32) -> anyhow::Result<RowStore> {
        Ok(RowStore {
            array: MappedArray::map(map, rows, size_of::<UnwindRow>(), "the unwind rows")?,
            rows,
        })
    }

    /// Writes `rows` from row `at` on.
    pub fn write(&mut self, at: u32, rows: &[UnwindRow]) {
        let end = at as usize + rows.len();
        assert!(end <= self.rows as usize, "rows {at}..{end} beyond {}", self.rows);
        // SAFETY: within the mapping (checked above); nothing else writes it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                rows.as_ptr(),
                self.array.base::<UnwindRow>().as_ptr().add(at as usize),
                rows.len(),
            )
        };
    }
}

/// Per-process mappings and walk statistics.
pub struct UnwindMaps {
    pub rows: RowStore,
    procs: Map,
    stats: Map,
}

impl UnwindMaps {
    pub fn new(rows: RowStore, procs: Map, stats: Map) -> Self {
        UnwindMaps { rows, procs, stats }
    }

    pub fn set_proc(&mut self, tgid: u32, p: &ProcUnwind) -> anyhow::Result<()> {
        let mut m = HashMap::<_, u32, ProcUnwind>::try_from(&mut self.procs)?;
        m.insert(tgid, p, 0)
            .with_context(|| format!("the unwind map has no room for process {tgid} (raise unwind.processes)"))?;
        Ok(())
    }

    pub fn delete_proc(&mut self, tgid: u32) {
        if let Ok(mut m) = HashMap::<_, u32, ProcUnwind>::try_from(&mut self.procs) {
            let _ = m.remove(&tgid);
        }
    }

    /// Whether the kernel still has the process's entry (it drops it at
    /// exec and exit).
    pub fn has_proc(&self, tgid: u32) -> bool {
        HashMap::<_, u32, ProcUnwind>::try_from(&self.procs).is_ok_and(|m| m.get(&tgid, 0).is_ok())
    }

    /// Walk counters (see `memwatch_common::unwind::stat_index`), summed
    /// over CPUs.
    pub fn stats(&self) -> anyhow::Result<[u64; STATS_LEN as usize]> {
        let a = PerCpuArray::<_, u64>::try_from(&self.stats)?;
        let mut out = [0u64; STATS_LEN as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = a.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }
}

//! `/objects`: a census of a Python process's live objects by type, taken
//! on request (`python::census`), with its growth since an earlier census
//! memwatch kept — as `objgraph.show_growth` prints it.
//!
//! [`take`] does the I/O; [`Histories`] and [`report`] are pure.

mod query;
mod text;

use std::collections::{HashMap, VecDeque};

pub use query::{ObjectsQuery, parse_query};
use serde::Serialize;
pub use text::render_text;

use crate::{
    process::procfs,
    python::{
        self,
        arenas::{self, Arenas},
        census::{self, Census, Limits, TypeCount},
    },
};

/// Censuses kept per process, and processes kept.
const KEPT_PER_PROCESS: usize = 32;
const PROCESSES_KEPT: usize = 64;
/// Walks of one census: the young generation of a busy interpreter changes
/// at every allocation, and a walk that met a change is taken again.
const WALKS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("process {0} does not exist or has exited")]
    NoProcess(u32),
    #[error("process {0} runs no CPython memwatch recognises")]
    NotPython(u32),
    #[error("process {0}: {1}")]
    Unsupported(u32, String),
    #[error("process {0}: {1}")]
    Unreadable(u32, String),
}

/// One census as taken.
#[derive(Debug, Clone)]
pub struct Taken {
    pub pid: u32,
    /// Told apart from a later process with the same pid.
    pub start_time: u64,
    pub version: String,
    pub build: &'static str,
    pub taken_unix: f64,
    pub duration_seconds: f64,
    pub census: Census,
    /// pymalloc's blocks by size class, or why not.
    pub arenas: Result<Arenas, String>,
}

/// Takes a census of `pid` now (blocking: run it off the async workers).
pub fn take(pid: u32, now_unix: f64) -> Result<Taken, ObjectsError> {
    let started = std::time::Instant::now();
    let gone = || ObjectsError::NoProcess(pid);
    let start_time = procfs::read_stat(pid).map_err(|_| gone())?.start_time;
    let entries = procfs::read_maps(pid).map_err(|e| {
        if procfs::exists(pid) {
            ObjectsError::Unreadable(pid, format!("cannot read its memory map: {e}"))
        } else {
            gone()
        }
    })?;
    let rt = match python::detect(pid, &entries, true) {
        Ok(Some(rt)) => rt,
        Ok(None) => return Err(ObjectsError::NotPython(pid)),
        Err(_) if !procfs::exists(pid) => return Err(gone()),
        Err(e @ python::NotWalked::Unreadable(..)) => return Err(ObjectsError::Unreadable(pid, e.to_string())),
        Err(e) => return Err(ObjectsError::Unsupported(pid, e.to_string())),
    };
    let layout = rt.layout.gc.ok_or_else(|| {
        ObjectsError::Unsupported(
            pid,
            format!("a census of CPython {} is not supported (3.11 to 3.13)", rt.version),
        )
    })?;
    let mut mem = census::ChunkedMemory::open(pid).map_err(|e| {
        if procfs::exists(pid) {
            ObjectsError::Unreadable(pid, format!("cannot read its memory: {e}"))
        } else {
            gone()
        }
    })?;
    let walk = |mem: &mut census::ChunkedMemory| {
        census::take(mem, rt.runtime, &layout, &rt.version, Limits::default()).map_err(|e| {
            if procfs::exists(pid) {
                ObjectsError::Unsupported(pid, e.to_string())
            } else {
                gone()
            }
        })
    };
    let mut census = walk(&mut mem)?;
    for _ in 1..WALKS {
        // The walks share one walk's time.
        if !census.worth_retaking() || started.elapsed() > Limits::default().time {
            break;
        }
        // Fresh reads: the kept chunks are what the last walk saw.
        mem.forget();
        census = walk(&mut mem)?;
    }
    let arenas = blocks(&rt, &layout, &mut mem);
    if !procfs::exists(pid) {
        return Err(gone());
    }
    Ok(Taken {
        pid,
        start_time,
        version: rt.version.clone(),
        build: match rt.linkage {
            python::Linkage::Shared => "shared",
            python::Linkage::Static => "static",
        },
        taken_unix: now_unix,
        duration_seconds: started.elapsed().as_secs_f64(),
        census,
        arenas,
    })
}

/// The object allocator's table, read directly (pool headers are 16 KiB
/// apart: chunks would read whole arenas).
fn blocks(
    rt: &python::Runtime,
    layout: &census::GcLayout,
    chunked: &mut census::ChunkedMemory,
) -> Result<Arenas, String> {
    let roots = rt.arenas.ok_or_else(|| {
        format!(
            "memwatch did not find the arena table of this CPython {} build",
            rt.version
        )
    })?;
    let interp = census::interpreter(chunked, rt.runtime, layout, &rt.version).map_err(|e| e.to_string())?;
    arenas::take(chunked.direct(), roots, interp, Limits::default()).map_err(|e| e.to_string())
}

type Key = (String, String);

/// Per type: count and bytes.
#[derive(Debug, Clone)]
struct Kept {
    taken_unix: f64,
    types: HashMap<Key, (u64, u64)>,
}

/// The censuses memwatch kept, per process: bounded in both.
#[derive(Debug, Default)]
pub struct Histories {
    by_pid: HashMap<u32, (u64, VecDeque<Kept>)>,
}

impl Histories {
    /// Keeps `t`, and returns the census kept at or before `since` seconds
    /// ago (else the oldest) with the peak count of each type over all kept.
    fn keep(&mut self, t: &Taken, since: Option<f64>) -> Option<(Kept, HashMap<Key, u64>)> {
        let h = self
            .by_pid
            .entry(t.pid)
            .or_insert_with(|| (t.start_time, VecDeque::new()));
        if h.0 != t.start_time {
            *h = (t.start_time, VecDeque::new());
        }
        let types: HashMap<Key, (u64, u64)> = t
            .census
            .types
            .iter()
            .map(|c| ((c.module.clone(), c.name.clone()), (c.count, c.bytes)))
            .collect();
        let earlier = since.and_then(|s| {
            let cutoff = t.taken_unix - s;
            h.1.iter()
                .rev()
                .find(|k| k.taken_unix <= cutoff)
                .or_else(|| h.1.front())
                .cloned()
        });
        let mut peaks: HashMap<Key, u64> = HashMap::new();
        for k in h.1.iter().chain(std::iter::once(&Kept {
            taken_unix: t.taken_unix,
            types: types.clone(),
        })) {
            for (key, (count, _)) in &k.types {
                let p = peaks.entry(key.clone()).or_default();
                *p = (*p).max(*count);
            }
        }
        h.1.push_back(Kept {
            taken_unix: t.taken_unix,
            types,
        });
        while h.1.len() > KEPT_PER_PROCESS {
            h.1.pop_front();
        }
        if self.by_pid.len() > PROCESSES_KEPT {
            // The process whose last census is oldest goes.
            let oldest = self
                .by_pid
                .iter()
                .min_by(|a, b| {
                    let t = |h: &(u64, VecDeque<Kept>)| h.1.back().map_or(0.0, |k| k.taken_unix);
                    t(a.1).total_cmp(&t(b.1))
                })
                .map(|(pid, _)| *pid);
            if let Some(pid) = oldest {
                self.by_pid.remove(&pid);
            }
        }
        earlier.map(|e| (e, peaks))
    }
}

#[derive(Debug, Serialize)]
pub struct PythonInfo {
    pub version: String,
    pub build: &'static str,
}

#[derive(Debug, Serialize)]
pub struct GenerationReport {
    pub count: i64,
    pub threshold: i64,
    pub collections: u64,
    pub collected: u64,
    pub uncollectable: u64,
}

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub enabled: bool,
    pub generations: Vec<GenerationReport>,
    pub collections: u64,
    pub collected: u64,
    pub uncollectable: u64,
}

#[derive(Debug, Serialize)]
pub struct Growth {
    /// The census compared with, and the window actually covered.
    pub since_unix: f64,
    pub window_seconds: f64,
    /// Types whose count or bytes changed, most grown first.
    pub types: Vec<TypeGrowth>,
}

#[derive(Debug, Serialize)]
pub struct TypeGrowth {
    #[serde(rename = "type")]
    pub name: String,
    pub module: String,
    pub count: u64,
    pub count_change: i64,
    pub bytes_change: i64,
    pub peak_count: u64,
}

#[derive(Debug, Serialize)]
pub struct ObjectsReport {
    pub pid: u32,
    pub python: PythonInfo,
    pub taken_unix: f64,
    pub duration_seconds: f64,
    pub consistent: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inconsistency: Option<String>,
    /// Objects the collector tracks, all types.
    pub objects: u64,
    pub types: Vec<TypeCount>,
    pub gc: GcReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<Growth>,
    /// Blocks of the object allocator (pymalloc) in use, by size class:
    /// every small object, tracked by the collector or not.
    pub allocator: Option<Arenas>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator_unavailable: Option<String>,
}

/// The report of census `t` (kept in `histories`), its `limit` largest
/// types, and with `since` its growth since a census that long ago.
pub fn report(t: Taken, histories: &mut Histories, limit: usize, since: Option<f64>) -> ObjectsReport {
    let earlier = histories.keep(&t, since);
    let c = t.census;
    let (allocator, allocator_unavailable) = match t.arenas {
        Ok(a) => (Some(a), None),
        Err(e) => (None, Some(e)),
    };
    let growth = earlier.map(|(e, peaks)| {
        let mut types: Vec<TypeGrowth> = c
            .types
            .iter()
            .map(|now| {
                let key = (now.module.clone(), now.name.clone());
                let (count, bytes) = e.types.get(&key).copied().unwrap_or((0, 0));
                TypeGrowth {
                    name: now.name.clone(),
                    module: now.module.clone(),
                    count: now.count,
                    count_change: now.count as i64 - count as i64,
                    bytes_change: now.bytes as i64 - bytes as i64,
                    peak_count: peaks.get(&key).copied().unwrap_or(now.count),
                }
            })
            .chain(
                e.types
                    .iter()
                    .filter(|(k, _)| !c.types.iter().any(|n| n.module == k.0 && n.name == k.1))
                    .map(|((module, name), (count, bytes))| TypeGrowth {
                        name: name.clone(),
                        module: module.clone(),
                        count: 0,
                        count_change: -(*count as i64),
                        bytes_change: -(*bytes as i64),
                        peak_count: peaks.get(&(module.clone(), name.clone())).copied().unwrap_or(*count),
                    }),
            )
            .filter(|g| g.count_change != 0 || g.bytes_change != 0)
            .collect();
        types.sort_by(|a, b| {
            b.count_change
                .cmp(&a.count_change)
                .then(b.bytes_change.cmp(&a.bytes_change))
        });
        types.truncate(limit);
        Growth {
            since_unix: e.taken_unix,
            window_seconds: t.taken_unix - e.taken_unix,
            types,
        }
    });
    let g = &c.gc;
    ObjectsReport {
        pid: t.pid,
        python: PythonInfo {
            version: t.version,
            build: t.build,
        },
        taken_unix: t.taken_unix,
        duration_seconds: t.duration_seconds,
        consistent: c.consistent,
        inconsistency: c.inconsistency.clone(),
        objects: c.objects,
        types: c.types.iter().take(limit).cloned().collect(),
        gc: GcReport {
            enabled: g.enabled,
            generations: (0..g.generations.len())
                .map(|i| GenerationReport {
                    count: g.generations[i].count,
                    threshold: g.generations[i].threshold,
                    collections: g.collections[i],
                    collected: g.collected[i],
                    uncollectable: g.uncollectable[i],
                })
                .collect(),
            collections: g.collections.iter().sum(),
            collected: g.collected.iter().sum(),
            uncollectable: g.uncollectable.iter().sum(),
        },
        growth,
        allocator,
        allocator_unavailable,
    }
}

/// A census of `types` (name, count; 64 bytes each) in `module`, for tests.
#[cfg(test)]
pub(crate) fn fake_taken(at: f64, module: &str, types: &[(&str, u64)]) -> Taken {
    use crate::python::census::{GcStats, Generation};
    Taken {
        pid: 7,
        start_time: 1,
        version: "3.11".into(),
        build: "shared",
        taken_unix: at,
        duration_seconds: 0.1,
        census: Census {
            objects: types.iter().map(|t| t.1).sum(),
            types: types
                .iter()
                .map(|&(n, c)| TypeCount {
                    name: n.into(),
                    module: module.into(),
                    count: c,
                    bytes: c * 64,
                })
                .collect(),
            gc: GcStats {
                enabled: true,
                generations: vec![
                    Generation {
                        count: 1,
                        threshold: 700
                    };
                    3
                ],
                collections: vec![5, 1, 0],
                collected: vec![0; 3],
                uncollectable: vec![0, 0, 2],
            },
            consistent: true,
            inconsistency: None,
            limited: false,
        },
        arenas: Err("not read in tests".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_checked() {
        let q = parse_query(Some("pid=5&limit=3&since=60&format=text"), false).unwrap();
        assert_eq!((q.pid, q.limit, q.text, q.since), (5, 3, true, Some(60.0)));
        for bad in [
            "",
            "pid=0",
            "pid=5&limit=0",
            "pid=5&since=-1",
            "pid=5&format=xml",
            "pid=5&x=1",
        ] {
            assert!(parse_query(Some(bad), false).is_err(), "{bad}");
        }
    }

    fn taken(at: f64, types: &[(&str, u64)]) -> Taken {
        fake_taken(at, "shop", types)
    }

    #[test]
    fn growth_compares_with_the_census_that_long_ago() {
        let mut h = Histories::default();
        assert!(
            report(taken(100.0, &[("Order", 10), ("Cart", 5)]), &mut h, 10, Some(60.0))
                .growth
                .is_none()
        );
        report(taken(130.0, &[("Order", 40), ("Cart", 9)]), &mut h, 10, None);
        let r = report(taken(170.0, &[("Order", 70), ("Cart", 4)]), &mut h, 10, Some(60.0));
        let g = r.growth.as_ref().unwrap();
        // 60 s ago: the census at 100 (the one at 130 is only 40 s old).
        assert_eq!(g.window_seconds, 70.0);
        assert_eq!(g.types[0].name, "Order");
        assert_eq!((g.types[0].count_change, g.types[0].bytes_change), (60, 60 * 64));
        assert_eq!((g.types[1].count_change, g.types[1].peak_count), (-1, 9));
        assert_eq!(r.gc.collections, 6);
        assert_eq!(r.gc.uncollectable, 2);
        let text = render_text(&r);
        assert!(text.contains("shop.Order") && text.contains("+60"), "{text}");
    }

    #[test]
    fn history_is_bounded_and_forgets_an_earlier_process_with_the_pid() {
        let mut h = Histories::default();
        for i in 0..100 {
            report(taken(i as f64, &[("Order", i)]), &mut h, 10, None);
        }
        assert_eq!(h.by_pid[&7].1.len(), KEPT_PER_PROCESS);
        let mut other = taken(200.0, &[("Order", 1)]);
        other.start_time = 2;
        let r = report(other, &mut h, 10, Some(10.0));
        assert!(r.growth.is_none(), "no census of this process before");
        for pid in 0..200 {
            let mut t = taken(300.0 + pid as f64, &[]);
            t.pid = 1000 + pid;
            report(t, &mut h, 10, None);
        }
        assert!(h.by_pid.len() <= PROCESSES_KEPT);
    }
}

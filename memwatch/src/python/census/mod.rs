//! A census of a running interpreter's objects from outside: the objects
//! its garbage collector tracks (what `gc.get_objects()` returns), grouped
//! by type, and the collector's own statistics — read from the process's
//! memory while it runs, without pausing it.
//!
//! The walk follows the three generations' lists (`PyGC_Head` before each
//! object) and checks every link on the way: a node whose back link is not
//! the node it came from means the lists changed under the walk, and the
//! census says so (`consistent: false`) rather than loop or guess; so does
//! one that overlaps a collection, which moves objects off the lists while
//! it runs. It reads
//! at most [`Limits::objects`] objects within [`Limits::time`].
//!
//! Reading is behind [`Read`], so that the walk is tested on fake memory;
//! [`ChunkedMemory`] reads a live process in 64 KiB chunks, since objects
//! sit together in the allocator's arenas and a list walk would otherwise
//! make one system call per object.

mod memory;
mod types;

use std::{
    collections::HashMap,
    io,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use memory::{ChunkedMemory, Read};
use types::{TypeInfo, type_info};

/// Offsets of the collector's state, per CPython minor version (x86-64,
/// default build; from each version's internal headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcLayout {
    /// `_PyRuntime.interpreters.head`.
    pub interpreters_head: u64,
    /// `PyInterpreterState.gc`.
    pub interp_gc: u64,
    /// Compact strings' data, after their header: ASCII, and other.
    pub ascii_data: u64,
    pub compact_data: u64,
}

/// Within `struct _gc_runtime_state`, the same from 3.10 to 3.13.
const GC_ENABLED: u64 = 12;
const GC_GENERATIONS: u64 = 24;
const GENERATION_SIZE: u64 = 24;
const GENERATION_THRESHOLD: u64 = 16;
const GENERATION_COUNT: u64 = 20;
const GC_STATS: u64 = 128;
const STATS_SIZE: u64 = 24;
/// `collecting`, set while a collection runs: its lists are then half
/// moved (objects on the collector's own stack, links reused for counts).
const GC_COLLECTING: u64 = 200;
/// `PyGC_Head`: `_gc_next`, `_gc_prev` (whose two low bits are flags).
const GC_HEAD: u64 = 16;

/// How far a census may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub objects: u64,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            objects: 20_000_000,
            time: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    /// The type's `__name__`.
    #[serde(rename = "type")]
    pub name: String,
    pub module: String,
    pub count: u64,
    /// Shallow sizes as `sys.getsizeof` counts them, approximated (see the
    /// docs/src/leaks/python-objects.md): basic size, items, the collector's header and pre-header.
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generation {
    pub count: i64,
    pub threshold: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcStats {
    pub enabled: bool,
    pub generations: Vec<Generation>,
    /// Per generation, as `gc.get_stats()` gives them.
    pub collections: Vec<u64>,
    pub collected: Vec<u64>,
    pub uncollectable: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Census {
    pub objects: u64,
    /// Largest first (by bytes, then count).
    pub types: Vec<TypeCount>,
    pub gc: GcStats,
    pub consistent: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inconsistency: Option<String>,
    /// Stopped by [`Limits`]: walking again would stop again.
    #[serde(skip)]
    pub limited: bool,
}

impl Census {
    /// Partial because the lists changed under the walk (or objects were
    /// freed as it read them): another walk may well see them whole.
    pub fn worth_retaking(&self) -> bool {
        !self.consistent && !self.limited
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("cannot read the interpreter's state: {0}")]
    Unreadable(String),
    #[error("the interpreter's collector state does not look like CPython {0}'s: {1}")]
    Mismatch(String, String),
}

/// Takes the census of the interpreter whose `_PyRuntime` is at `runtime`.
pub fn take(
    mem: &mut impl Read,
    runtime: u64,
    layout: &GcLayout,
    version: &str,
    limits: Limits,
) -> Result<Census, CensusError> {
    let unreadable = |what: &str, e: io::Error| CensusError::Unreadable(format!("{what}: {e}"));
    let mismatch = |what: String| CensusError::Mismatch(version.to_string(), what);
    let interp = interpreter(mem, runtime, layout, version)?;
    let gc = interp + layout.interp_gc;
    let stats = gc_stats(mem, gc).map_err(|e| unreadable("the collector's state", e))?;
    if stats.generations.iter().any(|g| !(0..=1 << 30).contains(&g.threshold)) {
        return Err(mismatch(format!("thresholds {:?}", stats.generations)));
    }

    let collecting = |mem: &mut dyn Read| {
        mem.i32(gc + GC_COLLECTING)
            .map_err(|e| unreadable("the collector's state", e))
    };
    let collecting_before = collecting(mem)? != 0;
    let started = Instant::now();
    let mut types: HashMap<u64, (Option<TypeInfo>, u64, u64)> = HashMap::new();
    let mut objects = 0u64;
    let mut inconsistency = None;
    let mut limited = false;
    'generations: for g in 0..3 {
        let head = gc + GC_GENERATIONS + g * GENERATION_SIZE;
        let mut prev = head;
        let mut node = mem.u64(head).map_err(|e| unreadable("a generation's list", e))? & !1;
        while node != head {
            if objects >= limits.objects || started.elapsed() > limits.time {
                inconsistency = Some(format!(
                    "stopped after {objects} objects and {:.1} s (limits)",
                    started.elapsed().as_secs_f64()
                ));
                limited = true;
                break 'generations;
            }
            // _gc_next, _gc_prev, then the object: refcount, type, ob_size.
            let mut b = [0u8; 40];
            if node == 0 || !node.is_multiple_of(8) || mem.read(node, &mut b).is_err() {
                inconsistency = Some(format!("generation {g}: an unreadable link ({node:#x})"));
                break 'generations;
            }
            let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            if word(1) & !3 != prev {
                inconsistency = Some(format!("generation {g} changed during the census"));
                break 'generations;
            }
            let (ty, ob_size) = (word(3), word(4) as i64);
            let entry = types.entry(ty).or_insert_with(|| (None, 0, 0));
            if entry.0.is_none() {
                match type_info(mem, ty, (layout.ascii_data, layout.compact_data)) {
                    Some(info) => entry.0 = Some(info),
                    None => {
                        inconsistency = Some(format!("generation {g}: an object whose type is unreadable"));
                        break 'generations;
                    }
                }
            }
            let info = entry.0.as_ref().expect("set");
            // More items than an address space holds is not a count.
            let items = match ob_size.unsigned_abs() {
                n if info.itemsize > 0 && n < 1 << 40 => info.itemsize.saturating_mul(n),
                _ => 0,
            };
            entry.1 += 1;
            entry.2 += info.basicsize.saturating_add(items).saturating_add(info.pre_header);
            objects += 1;
            prev = node;
            node = word(0) & !1;
        }
    }
    if (collecting_before || collecting(mem)? != 0) && inconsistency.is_none() {
        inconsistency = Some("a collection ran during the census".to_string());
    }
    let mut types: Vec<TypeCount> = types
        .into_values()
        .filter_map(|(info, count, bytes)| {
            let info = info?;
            Some(TypeCount {
                name: info.name,
                module: info.module,
                count,
                bytes,
            })
        })
        .collect();
    types.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.count.cmp(&a.count))
            .then(a.name.cmp(&b.name))
    });
    Ok(Census {
        objects,
        types,
        gc: stats,
        consistent: inconsistency.is_none(),
        inconsistency,
        limited,
    })
}

/// The interpreter whose state a census reads: the newest one, the main
/// interpreter of a process that made no other.
pub fn interpreter(mem: &mut impl Read, runtime: u64, layout: &GcLayout, version: &str) -> Result<u64, CensusError> {
    let interp = mem
        .u64(runtime + layout.interpreters_head)
        .map_err(|e| CensusError::Unreadable(format!("the interpreter list: {e}")))?;
    if interp == 0 || !interp.is_multiple_of(8) {
        return Err(CensusError::Mismatch(
            version.to_string(),
            format!("interpreter at {interp:#x}"),
        ));
    }
    Ok(interp)
}

fn gc_stats(mem: &mut impl Read, gc: u64) -> io::Result<GcStats> {
    let mut generations = Vec::new();
    let (mut collections, mut collected, mut uncollectable) = (vec![], vec![], vec![]);
    for g in 0..3 {
        let at = gc + GC_GENERATIONS + g * GENERATION_SIZE;
        generations.push(Generation {
            threshold: i64::from(mem.i32(at + GENERATION_THRESHOLD)?),
            count: i64::from(mem.i32(at + GENERATION_COUNT)?),
        });
        let s = gc + GC_STATS + g * STATS_SIZE;
        collections.push(mem.u64(s)?);
        collected.push(mem.u64(s + 8)?);
        uncollectable.push(mem.u64(s + 16)?);
    }
    Ok(GcStats {
        enabled: mem.i32(gc + GC_ENABLED)? != 0,
        generations,
        collections,
        collected,
        uncollectable,
    })
}

#[cfg(test)]
mod tests {
    use super::{types::*, *};

    /// Memory as a map of 8-byte words and byte strings.
    #[derive(Default)]
    struct Fake(HashMap<u64, u8>);

    impl Fake {
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(addr + i as u64, *b);
            }
        }
        fn word(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
    }

    impl Read for Fake {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = *self.0.get(&(addr + i as u64)).ok_or(io::ErrorKind::UnexpectedEof)?;
            }
            Ok(())
        }
    }

    const LAYOUT: GcLayout = GcLayout {
        interpreters_head: 40,
        interp_gc: 648,
        ascii_data: 48,
        compact_data: 72,
    };
    const RUNTIME: u64 = 0x1000;
    const INTERP: u64 = 0x2000;
    const META: u64 = 0x5000;

    /// A static type named `name` of `basicsize` bytes at `at`.
    fn static_type(m: &mut Fake, at: u64, name: &str, basicsize: u64) {
        m.word(at + 8, META);
        m.word(at + TP_FLAGS, 0);
        m.word(at + TP_NAME, at + 0x800);
        m.put(at + 0x800, name.as_bytes());
        // Zeros after it, as a page holds (names are read in chunks).
        m.put(at + 0x800 + name.len() as u64, &[0; 64]);
        m.word(at + TP_BASICSIZE, basicsize);
        m.word(at + TP_ITEMSIZE, 0);
    }

    /// An interpreter whose generation 0 lists objects of `types`.
    fn interpreter(types: &[u64]) -> Fake {
        let mut m = Fake::default();
        m.word(RUNTIME + 40, INTERP);
        let gc = INTERP + 648;
        m.put(gc + GC_ENABLED, &1i32.to_le_bytes());
        m.put(gc + GC_COLLECTING, &0i32.to_le_bytes());
        for g in 0..3u64 {
            let head = gc + GC_GENERATIONS + g * GENERATION_SIZE;
            m.word(head, head);
            m.word(head + 8, head);
            m.put(head + GENERATION_THRESHOLD, &[700u32, 10, 10][g as usize].to_le_bytes());
            m.put(head + GENERATION_COUNT, &(g as u32).to_le_bytes());
            for w in 0..3 {
                m.word(gc + GC_STATS + g * STATS_SIZE + w * 8, g * 10 + w);
            }
        }
        m.word(META + TP_FLAGS, TPFLAGS_TYPE_SUBCLASS);
        static_type(&mut m, 0x6000, "collections.OrderedDict", 104);
        static_type(&mut m, 0x7000, "list", 40);
        let head = gc + GC_GENERATIONS;
        let mut prev = head;
        for (i, &ty) in types.iter().enumerate() {
            let node = 0x10_0000 + i as u64 * 64;
            m.word(prev, node);
            m.word(node + 8, prev);
            m.word(node + 16, 1);
            m.word(node + 24, ty);
            m.word(node + 32, 0);
            prev = node;
        }
        m.word(prev, head);
        m.word(head + 8, prev);
        m
    }

    #[test]
    fn objects_are_counted_by_type_with_the_collectors_figures() {
        let mut m = interpreter(&[0x6000, 0x7000, 0x6000]);
        let c = take(&mut m, RUNTIME, &LAYOUT, "3.11", Limits::default()).unwrap();
        assert!(c.consistent, "{c:?}");
        assert_eq!(c.objects, 3);
        assert_eq!(
            c.types[0],
            TypeCount {
                name: "OrderedDict".into(),
                module: "collections".into(),
                count: 2,
                bytes: 2 * (104 + 16),
            }
        );
        assert_eq!(
            (c.types[1].name.as_str(), c.types[1].module.as_str()),
            ("list", "builtins")
        );
        assert!(c.gc.enabled);
        assert_eq!(
            c.gc.generations[0],
            Generation {
                count: 0,
                threshold: 700
            }
        );
        assert_eq!(c.gc.collections, [0, 10, 20]);
        assert_eq!(c.gc.uncollectable, [2, 12, 22]);
    }

    #[test]
    fn a_list_changed_under_the_walk_is_reported_not_followed() {
        let mut m = interpreter(&[0x6000, 0x7000, 0x6000]);
        // The second node's back link no longer points at the first.
        m.word(0x10_0000 + 64 + 8, 0xdead_0000);
        let c = take(&mut m, RUNTIME, &LAYOUT, "3.11", Limits::default()).unwrap();
        assert!(!c.consistent);
        assert!(c.worth_retaking());
        assert!(c.inconsistency.unwrap().contains("changed"));
        assert_eq!(c.objects, 1);
        // A loop back into the list is cut by the same check, and a cycle
        // that keeps its links is cut by the limits.
        let mut m = interpreter(&[0x6000, 0x7000]);
        m.word(0x10_0000 + 64, 0x10_0000);
        let c = take(&mut m, RUNTIME, &LAYOUT, "3.11", Limits::default()).unwrap();
        assert!(!c.consistent);
        let mut m = interpreter(&[0x6000; 10]);
        let few = Limits {
            objects: 4,
            time: Duration::from_secs(5),
        };
        let c = take(&mut m, RUNTIME, &LAYOUT, "3.11", few).unwrap();
        assert_eq!(c.objects, 4);
        assert!(!c.worth_retaking(), "limits stop every walk alike");
        assert!(c.inconsistency.unwrap().contains("limits"));
    }

    #[test]
    fn a_census_overlapping_a_collection_is_partial() {
        let mut m = interpreter(&[0x6000, 0x7000]);
        m.put(INTERP + 648 + GC_COLLECTING, &1i32.to_le_bytes());
        let c = take(&mut m, RUNTIME, &LAYOUT, "3.11", Limits::default()).unwrap();
        assert!(!c.consistent && c.worth_retaking());
        assert!(c.inconsistency.unwrap().contains("collection"));
    }

    #[test]
    fn garbage_is_refused() {
        let mut m = interpreter(&[0x6000]);
        // Not a type: its type has no TYPE_SUBCLASS flag.
        m.word(0x10_0000 + 24, 0x10_0000);
        let c = take(&mut m, RUNTIME, &LAYOUT, "3.11", Limits::default()).unwrap();
        assert!(!c.consistent);
        let mut m = interpreter(&[]);
        m.word(RUNTIME + 40, 0);
        assert!(matches!(
            take(&mut m, RUNTIME, &LAYOUT, "3.11", Limits::default()),
            Err(CensusError::Mismatch(..))
        ));
        let mut m = Fake::default();
        assert!(matches!(
            take(&mut m, RUNTIME, &LAYOUT, "3.11", Limits::default()),
            Err(CensusError::Unreadable(..))
        ));
    }
}

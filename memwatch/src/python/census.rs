//! A census of a running interpreter's objects from outside: the objects
//! its garbage collector tracks (what `gc.get_objects()` returns), grouped
//! by type, and the collector's own statistics — read from the process's
//! memory while it runs, without pausing it.
//!
//! The walk follows the three generations' lists (`PyGC_Head` before each
//! object) and checks every link on the way: a node whose back link is not
//! the node it came from means the lists changed under the walk, and the
//! census says so (`consistent: false`) rather than loop or guess. It reads
//! at most [`Limits::objects`] objects within [`Limits::time`].
//!
//! Reading is behind [`Read`], so that the walk is tested on fake memory;
//! [`ChunkedMemory`] reads a live process in 64 KiB chunks, since objects
//! sit together in the allocator's arenas and a list walk would otherwise
//! make one system call per object.

use std::{
    collections::HashMap,
    io,
    time::{Duration, Instant},
};

use serde::Serialize;

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
/// `PyGC_Head`: `_gc_next`, `_gc_prev` (whose two low bits are flags).
const GC_HEAD: u64 = 16;
/// `PyTypeObject` fields (3.10 to 3.13).
const TP_NAME: u64 = 24;
const TP_BASICSIZE: u64 = 32;
const TP_ITEMSIZE: u64 = 40;
const TP_FLAGS: u64 = 168;
const TP_DICT: u64 = 264;
const TPFLAGS_HEAPTYPE: u64 = 1 << 9;
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
const TPFLAGS_MANAGED_WEAKREF: u64 = 1 << 3;
/// Set on `type` and its subclasses: an object's type must have a type
/// that has it.
const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;
/// Dicts: `ma_keys`, then in the keys `dk_log2_index_bytes`, `dk_kind`,
/// `dk_nentries` and the indices (3.11 to 3.13).
const MA_KEYS: u64 = 32;
const DK_LOG2_INDEX_BYTES: u64 = 9;
const DK_KIND: u64 = 10;
const DK_NENTRIES: u64 = 24;
const DK_INDICES: u64 = 32;

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

/// Memory of the process under census.
pub trait Read {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()>;

    fn u64(&mut self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn i32(&mut self, addr: u64) -> io::Result<i32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(i32::from_le_bytes(b))
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
    /// README): basic size, items, the collector's header and pre-header.
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
}

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("cannot read the interpreter's state: {0}")]
    Unreadable(String),
    #[error("the interpreter's collector state does not look like CPython {0}'s: {1}")]
    Mismatch(String, String),
}

struct TypeInfo {
    name: String,
    module: String,
    basicsize: u64,
    /// Per item, for types whose objects keep a count of items (`ob_size`)
    /// after their header; 0 for the rest.
    itemsize: u64,
    pre_header: u64,
}

/// Built-in types with a `tp_itemsize` whose objects have no `ob_size`:
/// generators and their kin size their embedded frame from their code.
const NOT_VAR_SIZED: [&str; 3] = ["generator", "coroutine", "async_generator"];

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

    let started = Instant::now();
    let mut types: HashMap<u64, (Option<TypeInfo>, u64, u64)> = HashMap::new();
    let mut objects = 0u64;
    let mut inconsistency = None;
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

/// A NUL-terminated string of at most `max` bytes.
fn c_string(mem: &mut impl Read, addr: u64, max: usize) -> Option<String> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 32];
    while out.len() < max {
        // Byte by byte where a chunk would cross into an unmapped page.
        let n = chunk.len().min((4096 - (addr + out.len() as u64) % 4096) as usize);
        mem.read(addr + out.len() as u64, &mut chunk[..n]).ok()?;
        if let Some(end) = chunk[..n].iter().position(|&c| c == 0) {
            out.extend_from_slice(&chunk[..end]);
            return String::from_utf8(out).ok();
        }
        out.extend_from_slice(&chunk[..n]);
    }
    None
}

/// The type at `ty`, checked to be one: its own type must be `type` or a
/// subclass of it.
fn type_info(mem: &mut impl Read, ty: u64, strings: (u64, u64)) -> Option<TypeInfo> {
    if ty == 0 || !ty.is_multiple_of(8) {
        return None;
    }
    let meta = mem.u64(ty + 8).ok()?;
    if meta == 0 || mem.u64(meta + TP_FLAGS).ok()? & TPFLAGS_TYPE_SUBCLASS == 0 {
        return None;
    }
    let flags = mem.u64(ty + TP_FLAGS).ok()?;
    let name_at = mem.u64(ty + TP_NAME).ok()?;
    let tp_name = c_string(mem, name_at, 256)?;
    let (name, module) = if flags & TPFLAGS_HEAPTYPE != 0 {
        let module = mem
            .u64(ty + TP_DICT)
            .ok()
            .and_then(|d| dict_str_item(mem, d, "__module__", strings))
            .unwrap_or_else(|| "builtins".to_string());
        (tp_name, module)
    } else {
        match tp_name.rsplit_once('.') {
            Some((m, n)) => (n.to_string(), m.to_string()),
            None => (tp_name, "builtins".to_string()),
        }
    };
    let gc_header = GC_HEAD;
    let pre_header = gc_header
        + if flags & (TPFLAGS_MANAGED_DICT | TPFLAGS_MANAGED_WEAKREF) != 0 {
            16
        } else {
            0
        };
    let itemsize = if flags & TPFLAGS_HEAPTYPE == 0 && module == "builtins" && NOT_VAR_SIZED.contains(&name.as_str()) {
        0
    } else {
        mem.u64(ty + TP_ITEMSIZE).ok()?
    };
    Some(TypeInfo {
        name,
        module,
        basicsize: mem.u64(ty + TP_BASICSIZE).ok()?,
        itemsize,
        pre_header,
    })
}

/// The value of `dict[key]` when it is a str, for a combined dict with str
/// keys (a class's namespace).
fn dict_str_item(mem: &mut impl Read, dict: u64, key: &str, strings: (u64, u64)) -> Option<String> {
    let keys = mem.u64(dict + MA_KEYS).ok()?;
    let mut head = [0u8; 32];
    mem.read(keys, &mut head).ok()?;
    let index_bytes = 1u64.checked_shl(u32::from(head[DK_LOG2_INDEX_BYTES as usize]))?;
    let entry_size = if head[DK_KIND as usize] == 0 { 24 } else { 16 };
    let key_at = if entry_size == 24 { 8 } else { 0 };
    let entries = u64::from_le_bytes(head[DK_NENTRIES as usize..DK_NENTRIES as usize + 8].try_into().ok()?);
    if entries > 4096 || index_bytes > 1 << 20 {
        return None;
    }
    let base = keys + DK_INDICES + index_bytes;
    for i in 0..entries {
        let e = base + i * entry_size;
        let k = mem.u64(e + key_at).ok()?;
        if k != 0 && py_str(mem, k, strings).as_deref() == Some(key) {
            let value = mem.u64(e + key_at + 8).ok()?;
            return py_str(mem, value, strings);
        }
    }
    None
}

/// A `str` object's text, as frames' names are read.
fn py_str(mem: &mut impl Read, s: u64, (ascii_data, compact_data): (u64, u64)) -> Option<String> {
    super::code::read_str(&mut |a, b| mem.read(a, b), s, ascii_data, compact_data).ok()
}

/// A live process's memory through `/proc/PID/mem`, read in 64 KiB chunks
/// kept until [`MAX_CHUNKS`] are held (then dropped and read again).
pub struct ChunkedMemory {
    mem: super::code::Memory,
    chunks: HashMap<u64, Option<Box<[u8]>>>,
    pub reads: u64,
}

const CHUNK: u64 = 64 * 1024;
/// 32 MiB at most.
const MAX_CHUNKS: usize = 512;

impl ChunkedMemory {
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(ChunkedMemory {
            mem: super::code::Memory::open(pid)?,
            chunks: HashMap::new(),
            reads: 0,
        })
    }

    /// The same memory read directly, without chunks.
    pub fn direct(&mut self) -> &mut super::code::Memory {
        &mut self.mem
    }

    fn chunk(&mut self, base: u64) -> Option<&[u8]> {
        if !self.chunks.contains_key(&base) {
            if self.chunks.len() >= MAX_CHUNKS {
                self.chunks.clear();
            }
            self.reads += 1;
            // A chunk reaching past the mapping's end fails whole: those
            // addresses are read directly.
            let data = self.mem.bytes(base, CHUNK).ok().map(Vec::into_boxed_slice);
            self.chunks.insert(base, data);
        }
        self.chunks.get(&base).and_then(|c| c.as_deref())
    }
}

/// Direct reads, for scattered small records (pool headers) where a chunk
/// would read a whole arena for one header.
impl Read for super::code::Memory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_at(addr, buf)
    }
}

impl Read for ChunkedMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let base = addr & !(CHUNK - 1);
        let off = (addr - base) as usize;
        if off + buf.len() <= CHUNK as usize
            && let Some(c) = self.chunk(base)
        {
            buf.copy_from_slice(&c[off..off + buf.len()]);
            return Ok(());
        }
        self.reads += 1;
        let b = self.mem.bytes(addr, buf.len() as u64)?;
        buf.copy_from_slice(&b);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(c.inconsistency.unwrap().contains("limits"));
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

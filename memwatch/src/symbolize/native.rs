//! Native symbolization with blazesym: ELF symbols, DWARF lines and inlined
//! functions, build-ids. Results are cached per binary (build-id, else the
//! file) and file offset, so processes sharing a library share its symbols.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use super::{Frame, FrameKind, Symbolize};
use crate::process::procfs::{self, MapEntry};

pub struct NativeSymbolizer {
    symbolizer: Symbolizer,
    /// Paths blazesym has opened (and keeps open, parsed, in its caches):
    /// past [`MAX_SOURCES`] it is made afresh. Objects are opened through
    /// their mappings, so each process adds a path per object.
    sources: HashSet<PathBuf>,
    /// Build-ids of mapped files by (device, inode), hex; None without one.
    build_ids: HashMap<(String, u64), Option<Arc<str>>>,
    /// (binary, file offset of the return address) → frames.
    cache: HashMap<(Arc<str>, u64), Arc<Vec<Frame>>>,
    capacity: usize,
}

/// Binaries blazesym may hold parsed at once.
const MAX_SOURCES: usize = 256;

/// Build-ids kept: one per distinct object mapped by a tracked process.
const MAX_BUILD_IDS: usize = 4096;

fn symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .build()
}

impl NativeSymbolizer {
    pub fn new(capacity: usize) -> Self {
        NativeSymbolizer {
            symbolizer: symbolizer(),
            sources: HashSet::new(),
            build_ids: HashMap::new(),
            cache: HashMap::new(),
            capacity,
        }
    }

    /// Starts blazesym afresh once it holds [`MAX_SOURCES`] binaries
    /// (before a call: its results borrow from it).
    fn bound_sources(&mut self) {
        if self.sources.len() >= MAX_SOURCES {
            self.symbolizer = symbolizer();
            self.sources.clear();
        }
    }

    /// The build-id of the file behind `e`, read once per file. Read from
    /// the file the process maps: the one at its path may be another's.
    fn build_id(&mut self, pid: u32, e: &MapEntry, path: &str) -> Option<Arc<str>> {
        let key = (e.dev.clone(), e.inode);
        if let Some(b) = self.build_ids.get(&key) {
            return b.clone();
        }
        let opened = procfs::open_mapped(pid, e.start, e.end, path, &e.dev, e.inode).ok()?;
        let id = blazesym::helper::read_elf_build_id(&opened.path)
            .ok()
            .flatten()
            .map(|b| hex(&b).into());
        if self.build_ids.len() >= MAX_BUILD_IDS {
            self.build_ids.clear();
        }
        self.build_ids.insert(key, id.clone());
        id
    }
}

/// Frames for one resolved symbol: inlined callees first, then the function.
fn frames_of(sym: &blazesym::symbolize::Sym<'_>, module: &str, build_id: Option<&str>, addr: u64) -> Vec<Frame> {
    let base = |function: String, code: Option<&blazesym::symbolize::CodeInfo<'_>>, inlined: bool| Frame {
        kind: FrameKind::Native,
        function: Some(function),
        file: code.map(|c| c.to_path().display().to_string()),
        line: code.and_then(|c| c.line),
        module: Some(module.to_string()),
        build_id: build_id.map(str::to_string),
        address: Some(format!("{addr:#x}")),
        inlined,
    };
    // blazesym lists inlined functions outermost first, each with the
    // location inside itself; `sym.code_info` is the location in the
    // containing function. Frames go innermost first.
    let mut out: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| base(f.name.to_string(), f.code_info.as_ref(), true))
        .collect();
    out.push(base(sym.name.to_string(), sym.code_info.as_deref(), false));
    out
}

/// Addresses in one binary not in the cache: (index, file offset) each.
struct Miss<'a> {
    entry: &'a MapEntry,
    build_id: Option<Arc<str>>,
    items: Vec<(usize, u64)>,
}

impl Symbolize for NativeSymbolizer {
    fn symbolize(&mut self, pid: u32, addrs: &[u64]) -> Vec<Vec<Frame>> {
        let unknown = || addrs.iter().map(|&a| vec![Frame::unknown(a)]).collect();
        self.bound_sources();
        let Ok(entries) = procfs::read_maps(pid) else {
            return unknown();
        };
        let mut out: Vec<Option<Vec<Frame>>> = vec![None; addrs.len()];
        // Cache misses grouped by binary, to open and symbolize each once.
        let mut misses: HashMap<Arc<str>, Miss> = HashMap::new();
        for (i, &a) in addrs.iter().enumerate() {
            // Return addresses point after the call: look up the call itself.
            let call = a.saturating_sub(1);
            let Some((e, path)) = entries
                .iter()
                .find(|e| e.start <= call && call < e.end)
                .and_then(|e| Some((e, e.path.as_deref()?)))
            else {
                out[i] = Some(vec![Frame::unknown(a)]);
                continue;
            };
            let offset = call - e.start + e.offset;
            let build_id = self.build_id(pid, e, path);
            let key: Arc<str> = match &build_id {
                Some(b) => format!("build-id:{b}").into(),
                None => format!("file:{}:{}:{path}", e.dev, e.inode).into(),
            };
            match self.cache.get(&(key.clone(), offset)) {
                Some(frames) => out[i] = Some(frames.as_ref().clone()),
                None => misses
                    .entry(key)
                    .or_insert_with(|| Miss {
                        entry: e,
                        build_id,
                        items: Vec::new(),
                    })
                    .items
                    .push((i, offset)),
            }
        }
        for (key, miss) in misses {
            let (e, build_id, items) = (miss.entry, miss.build_id, miss.items);
            let module = e.path.clone().unwrap_or_default();
            let results = match procfs::open_mapped(pid, e.start, e.end, &module, &e.dev, e.inode) {
                Ok(opened) => {
                    self.sources.insert(opened.path.clone());
                    let src = Source::Elf(Elf::new(opened.path));
                    let offsets: Vec<u64> = items.iter().map(|&(_, o)| o).collect();
                    self.symbolizer
                        .symbolize(&src, Input::FileOffset(&offsets))
                        .unwrap_or_default()
                }
                Err(_) => Vec::new(),
            };
            if self.cache.len() + items.len() > self.capacity {
                self.cache.clear();
            }
            for (j, &(i, offset)) in items.iter().enumerate() {
                let frames = match results.get(j) {
                    Some(Symbolized::Sym(sym)) => frames_of(sym, &module, build_id.as_deref(), addrs[i]),
                    _ => vec![Frame {
                        module: Some(module.clone()),
                        build_id: build_id.as_deref().map(str::to_string),
                        ..Frame::unknown(addrs[i])
                    }],
                };
                self.cache.insert((key.clone(), offset), Arc::new(frames.clone()));
                out[i] = Some(frames);
            }
        }
        // Cached frames carry the address they were first seen at (ASLR
        // differs per process): give each its own.
        out.into_iter()
            .zip(addrs)
            .map(|(frames, &a)| {
                let mut frames = frames.unwrap_or_else(|| vec![Frame::unknown(a)]);
                for f in &mut frames {
                    f.address = Some(format!("{a:#x}"));
                }
                frames
            })
            .collect()
    }

    fn cached(&self) -> usize {
        self.cache.len()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function() -> u64 {
        marker_function as *const () as u64
    }

    #[test]
    fn symbolizes_this_process() {
        let mut s = NativeSymbolizer::new(1000);
        // +1: the symbolizer treats addresses as return addresses.
        let addr = marker_function() + 1;
        let frames = s.symbolize(std::process::id(), &[addr]);
        assert_eq!(frames.len(), 1);
        let f = frames[0].last().unwrap();
        assert!(f.function.as_deref().unwrap_or("").contains("marker_function"), "{f:?}");
        assert!(f.module.as_deref().unwrap_or("").contains("memwatch"), "{f:?}");
        assert_eq!(f.address.as_deref(), Some(format!("{addr:#x}").as_str()));
        // Now served from the cache, with the same answer.
        assert_eq!(s.cached(), 1);
        assert_eq!(s.symbolize(std::process::id(), &[addr]), frames);
    }

    #[test]
    fn binaries_held_by_blazesym_are_bounded() {
        let mut s = NativeSymbolizer::new(1000);
        for i in 0..1000 {
            s.bound_sources();
            s.sources
                .insert(PathBuf::from(format!("/proc/{i}/map_files/7f0000000000-7f0000028000")));
            assert!(s.sources.len() <= MAX_SOURCES);
        }
        // Made afresh, it still symbolizes.
        let addr = marker_function() + 1;
        let frames = s.symbolize(std::process::id(), &[addr]);
        assert!(
            frames[0]
                .last()
                .unwrap()
                .function
                .as_deref()
                .unwrap_or("")
                .contains("marker_function")
        );
    }

    #[test]
    fn unmapped_addresses_are_unknown_not_errors() {
        let mut s = NativeSymbolizer::new(1000);
        let frames = s.symbolize(std::process::id(), &[0x10]);
        assert_eq!(frames[0], vec![Frame::unknown(0x10)]);
    }
}

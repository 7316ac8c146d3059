//! Native symbolization with blazesym: ELF symbols, DWARF lines and inlined
//! functions, build-ids. Results are cached per binary (build-id or path) and
//! file offset, so processes sharing a library share its symbols.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use blazesym::{
    Pid,
    normalize::{Normalizer, UserMeta},
    symbolize::{
        Input, Symbolized, Symbolizer,
        source::{Elf, Source},
    },
};

use super::{Frame, FrameKind, Symbolize};
use crate::process::procfs;

pub struct NativeSymbolizer {
    normalizer: Normalizer,
    symbolizer: Symbolizer,
    /// Paths blazesym has opened (and keeps open, parsed, in its caches):
    /// past [`MAX_SOURCES`] both are made afresh. Container processes add a
    /// `/proc/PID/root/...` path per process.
    sources: HashSet<PathBuf>,
    /// (binary, file offset of the return address) → frames.
    cache: HashMap<(Arc<str>, u64), Arc<Vec<Frame>>>,
    capacity: usize,
}

/// Binaries blazesym may hold parsed at once.
const MAX_SOURCES: usize = 256;

fn normalizer() -> Normalizer {
    Normalizer::builder()
        .enable_build_ids(true)
        .enable_build_id_caching(true)
        .build()
}

fn symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(true)
        .enable_inlined_fns(true)
        .build()
}

impl NativeSymbolizer {
    pub fn new(capacity: usize) -> Self {
        NativeSymbolizer {
            normalizer: normalizer(),
            symbolizer: symbolizer(),
            sources: HashSet::new(),
            cache: HashMap::new(),
            capacity,
        }
    }

    /// Starts blazesym afresh once it holds [`MAX_SOURCES`] binaries
    /// (before a call: its results borrow from it).
    fn bound_sources(&mut self) {
        if self.sources.len() >= MAX_SOURCES {
            self.symbolizer = symbolizer();
            self.normalizer = normalizer();
            self.sources.clear();
        }
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

impl Symbolize for NativeSymbolizer {
    fn symbolize(&mut self, pid: u32, addrs: &[u64]) -> Vec<Vec<Frame>> {
        // Return addresses point after the call: look up the call itself.
        let lookup: Vec<u64> = addrs.iter().map(|a| a.saturating_sub(1)).collect();
        let unknown = || addrs.iter().map(|&a| vec![Frame::unknown(a)]).collect();
        self.bound_sources();
        let Ok(normalized) = self.normalizer.normalize_user_addrs(Pid::from(pid), &lookup) else {
            return unknown();
        };
        let mut out: Vec<Option<Vec<Frame>>> = vec![None; addrs.len()];
        // Group cache misses by binary to symbolize each binary once.
        let mut misses: HashMap<usize, Vec<(usize, u64)>> = HashMap::new();
        for (i, &(offset, meta_idx)) in normalized.outputs.iter().enumerate() {
            match normalized.meta.get(meta_idx) {
                Some(UserMeta::Elf(elf)) => {
                    let key: Arc<str> = binary_key(&elf.path, elf.build_id.as_deref()).into();
                    match self.cache.get(&(key, offset)) {
                        Some(frames) => out[i] = Some(frames.as_ref().clone()),
                        None => misses.entry(meta_idx).or_default().push((i, offset)),
                    }
                }
                _ => out[i] = Some(vec![Frame::unknown(addrs[i])]),
            }
        }
        for (meta_idx, items) in misses {
            let Some(UserMeta::Elf(elf)) = normalized.meta.get(meta_idx) else {
                continue;
            };
            let module = elf.path.display().to_string();
            let build_id = elf.build_id.as_deref().map(hex);
            let key: Arc<str> = binary_key(&elf.path, elf.build_id.as_deref()).into();
            let path = open_path(pid, &elf.path);
            self.sources.insert(path.clone());
            let src = Source::Elf(Elf::new(path));
            let offsets: Vec<u64> = items.iter().map(|&(_, o)| o).collect();
            let results = self
                .symbolizer
                .symbolize(&src, Input::FileOffset(&offsets))
                .unwrap_or_default();
            if self.cache.len() + items.len() > self.capacity {
                self.cache.clear();
            }
            for (j, &(i, offset)) in items.iter().enumerate() {
                let frames = match results.get(j) {
                    Some(Symbolized::Sym(sym)) => frames_of(sym, &module, build_id.as_deref(), addrs[i]),
                    _ => vec![Frame {
                        module: Some(module.clone()),
                        build_id: build_id.clone(),
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

fn binary_key(path: &std::path::Path, build_id: Option<&[u8]>) -> String {
    match build_id {
        Some(b) => format!("build-id:{}", hex(b)),
        None => format!("path:{}", path.display()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where memwatch can read the binary the process sees at `path`.
fn open_path(pid: u32, path: &std::path::Path) -> PathBuf {
    procfs::openable_path(pid, &path.to_string_lossy())
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
                .insert(PathBuf::from(format!("/proc/{i}/root/usr/lib/libc.so.6")));
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

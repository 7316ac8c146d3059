//! ELF facts memwatch needs from an object: where the allocator functions are
//! and which file offsets they have. Parsed once per (device, inode).

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use super::{LIBC_FUNCTIONS, PYTHON_FUNCTIONS};
use crate::process::procfs::Opened;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a readable ELF object: {source}")]
    Parse { path: PathBuf, source: object::Error },
}

/// What memwatch keeps of one object.
#[derive(Debug, Default)]
pub struct ElfInfo {
    pub build_id: Option<String>,
    /// Defined functions among the allocator names, by virtual address.
    functions: HashMap<String, u64>,
    /// Loadable segments: (vaddr, size, file offset).
    segments: Vec<(u64, u64, u64)>,
    /// The first bytes of each function above, by virtual address.
    prologues: HashMap<u64, Vec<u8>>,
    /// For a CPython interpreter: its object allocator is called out of
    /// line (see `python::allocator_out_of_line`).
    pub python_calls_out_of_line: bool,
    /// glibc's `_IO_list_all`, the head of its list of open streams (for
    /// `memwatch check`), by virtual address.
    pub stream_list: Option<u64>,
}

impl ElfInfo {
    pub fn defines(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    pub fn function(&self, name: &str) -> Option<u64> {
        self.functions.get(name).copied()
    }

    /// The first bytes of the function at `vaddr` (empty if unknown).
    pub fn prologue(&self, vaddr: u64) -> &[u8] {
        self.prologues.get(&vaddr).map_or(&[], Vec::as_slice)
    }

    /// The file offset of a virtual address, which is what uprobes take.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(start, size, _)| vaddr >= start && vaddr - start < size)
            .and_then(|&(start, _, off)| off.checked_add(vaddr - start))
    }

    pub fn parse(data: &[u8]) -> Result<ElfInfo, object::Error> {
        let file = object::File::parse(data)?;
        let wanted = |n: &str| {
            LIBC_FUNCTIONS.iter().chain(PYTHON_FUNCTIONS).any(|(f, _)| *f == n) || n == super::python::INNER_FREE
        };
        let mut functions = HashMap::new();
        let mut stream_list = None;
        // Dynamic symbols first (what the linker binds), then the static
        // table of unstripped or static executables.
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            if !sym.is_definition() || sym.address() == 0 {
                continue;
            }
            if sym.kind() == SymbolKind::Data && sym.name() == Ok("_IO_list_all") {
                stream_list.get_or_insert(sym.address());
            }
            if sym.kind() != SymbolKind::Text {
                continue;
            }
            if let Ok(name) = sym.name()
                && wanted(name)
            {
                functions.entry(name.to_string()).or_insert(sym.address());
            }
        }
        let segments = file
            .segments()
            .map(|s| (s.address(), s.size(), s.file_range().0))
            .collect();
        let build_id = file.build_id()?.map(hex);
        let python_calls_out_of_line = crate::python::allocator_out_of_line(&file);
        let mut info = ElfInfo {
            build_id,
            functions,
            segments,
            prologues: HashMap::new(),
            python_calls_out_of_line,
            stream_list,
        };
        let addrs: Vec<u64> = info.functions.values().copied().collect();
        for vaddr in addrs {
            if let Some(off) = info.file_offset(vaddr) {
                let start = off as usize;
                let end = (start + super::placement::PROLOGUE_BYTES).min(data.len());
                if start < end {
                    info.prologues.insert(vaddr, data[start..end].to_vec());
                }
            }
        }
        Ok(info)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parsed objects by (device, inode): processes share their libc.
#[derive(Default)]
pub struct ElfCache {
    by_file: HashMap<(String, u64), Arc<ElfInfo>>,
}

impl ElfCache {
    /// The facts of an object a process maps, opened by
    /// [`procfs::open_mapped`](crate::process::procfs::open_mapped).
    pub fn get(&mut self, opened: &Opened, dev: &str, inode: u64) -> Result<Arc<ElfInfo>, ElfError> {
        let key = (dev.to_string(), inode);
        if let Some(info) = self.by_file.get(&key) {
            return Ok(info.clone());
        }
        let path = &opened.path;
        // SAFETY: the mapping is read-only; a concurrent truncation of a
        // mapped library would already break the process that maps it.
        let map = unsafe { memmap2::Mmap::map(&opened.file) }.map_err(|source| ElfError::Open {
            path: path.clone(),
            source,
        })?;
        let info = Arc::new(ElfInfo::parse(&map).map_err(|source| ElfError::Parse {
            path: path.clone(),
            source,
        })?);
        // Bounded by the number of distinct mapped objects; trim if a host
        // churns through many.
        if self.by_file.len() >= 4096 {
            self.by_file.clear();
        }
        self.by_file.insert(key, info.clone());
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_map_through_loadable_segments() {
        let info = ElfInfo {
            segments: vec![(0x0, 0x1000, 0x0), (0x11000, 0x5000, 0x1000)],
            ..Default::default()
        };
        assert_eq!(info.file_offset(0x11234), Some(0x1234));
        assert_eq!(info.file_offset(0x500), Some(0x500));
        assert_eq!(info.file_offset(0x9000), None);
    }

    #[test]
    fn garbage_is_not_an_elf() {
        assert!(ElfInfo::parse(b"not an elf").is_err());
    }
}

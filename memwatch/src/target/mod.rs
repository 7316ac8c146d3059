//! Allocator targets: which mapped objects of a process provide the
//! allocator functions, and where in them each probe goes.
//!
//! Any mapped ELF object that defines `malloc` or `free` is a provider: libc,
//! an LD_PRELOADed jemalloc or tcmalloc, or a statically linked executable.
//! Wrappers that forward to the next provider are nested calls and are not
//! counted twice.

pub mod elf;

use std::path::PathBuf;

use memwatch_common::cookie::{CallKind, Family};

use crate::process::procfs::{self, MappedFile};

/// The libc allocation API, by symbol. Aliases at one address (memalign and
/// aligned_alloc, mmap and mmap64 in glibc) get a single probe.
pub const LIBC_FUNCTIONS: &[(&str, CallKind)] = &[
    ("malloc", CallKind::Malloc),
    ("calloc", CallKind::Calloc),
    ("realloc", CallKind::Realloc),
    ("reallocarray", CallKind::ReallocArray),
    ("free", CallKind::Free),
    ("posix_memalign", CallKind::PosixMemalign),
    ("aligned_alloc", CallKind::AlignedAlloc),
    ("memalign", CallKind::AlignedAlloc),
    ("valloc", CallKind::Valloc),
    ("pvalloc", CallKind::Pvalloc),
    ("mmap", CallKind::Mmap),
    ("mmap64", CallKind::Mmap),
    ("munmap", CallKind::Munmap),
];

/// A function to probe inside one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub kind: CallKind,
    /// The symbol it was found by (the first of its aliases in the table).
    pub symbol: &'static str,
    pub vaddr: u64,
    pub file_offset: u64,
}

/// One object of a process that provides allocator functions.
#[derive(Debug, Clone)]
pub struct AllocatorTarget {
    pub family: Family,
    /// The path as the process sees it.
    pub path: String,
    /// Where memwatch opens it (through /proc/PID/root for containers).
    pub open_path: PathBuf,
    pub dev: String,
    pub inode: u64,
    pub build_id: Option<String>,
    pub sites: Vec<Site>,
    /// Functions of the family this object does not define.
    pub missing: Vec<&'static str>,
}

/// Chooses the probe sites from an object's defined functions: one site per
/// address, the first kind listed winning for aliases; and the names absent.
pub fn plan_sites(
    table: &[(&'static str, CallKind)],
    lookup: impl Fn(&str) -> Option<u64>,
) -> (Vec<(CallKind, &'static str, u64)>, Vec<&'static str>) {
    let mut sites: Vec<(CallKind, &'static str, u64)> = Vec::new();
    let mut missing = Vec::new();
    for &(name, kind) in table {
        match lookup(name) {
            Some(addr) => {
                if !sites.iter().any(|&(_, _, a)| a == addr) {
                    sites.push((kind, name, addr));
                }
            }
            None => missing.push(name),
        }
    }
    // An alias found under another name is not missing.
    missing.retain(|&name| {
        let kind = table.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
        !sites.iter().any(|&(k, _, _)| Some(k) == kind)
    });
    (sites, missing)
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("process {pid} does not exist or has exited")]
    NoProcess { pid: u32 },
    #[error("cannot read the memory map of process {pid}: {source}")]
    Maps { pid: u32, source: std::io::Error },
    #[error("process {pid} maps no object defining malloc or free (is it a kernel thread?)")]
    NoAllocator { pid: u32 },
}

/// Finds the allocator providers of a running process. Objects that cannot be
/// read are skipped with a warning; the others still count.
pub fn find_targets(pid: u32, cache: &mut elf::ElfCache) -> Result<Vec<AllocatorTarget>, TargetError> {
    let entries = procfs::read_maps(pid).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound || !procfs::exists(pid) {
            TargetError::NoProcess { pid }
        } else {
            TargetError::Maps { pid, source }
        }
    })?;
    let mut targets = Vec::new();
    for file in procfs::mapped_files(&entries).into_iter().filter(|f| f.executable) {
        match target_for(pid, &file, cache) {
            Ok(Some(t)) => targets.push(t),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(pid, path = %file.path, error = %e, "cannot read a mapped object; its allocator calls (if any) are not tracked")
            }
        }
    }
    if targets.is_empty() {
        return Err(TargetError::NoAllocator { pid });
    }
    Ok(targets)
}

fn target_for(
    pid: u32,
    file: &MappedFile,
    cache: &mut elf::ElfCache,
) -> Result<Option<AllocatorTarget>, elf::ElfError> {
    let open_path = if file.deleted {
        // A replaced file is still reachable through its mapping.
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            file.first_start, file.first_end
        ))
    } else {
        procfs::openable_path(pid, &file.path)
    };
    let info = cache.get(&open_path, &file.dev, file.inode)?;
    if !info.defines("malloc") && !info.defines("free") {
        return Ok(None);
    }
    let (planned, missing) = plan_sites(LIBC_FUNCTIONS, |n| info.function(n));
    let mut sites = Vec::new();
    for (kind, symbol, vaddr) in planned {
        match info.file_offset(vaddr) {
            Some(file_offset) => sites.push(Site {
                kind,
                symbol,
                vaddr,
                file_offset,
            }),
            None => tracing::warn!(pid, path = %file.path, symbol, "symbol outside any loadable segment; not probed"),
        }
    }
    Ok(Some(AllocatorTarget {
        family: Family::Libc,
        path: file.path.clone(),
        open_path,
        dev: file.dev.clone(),
        inode: file.inode,
        build_id: info.build_id.clone(),
        sites,
        missing,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_share_one_site_and_are_not_missing() {
        let syms = [
            ("malloc", 0x100),
            ("free", 0x200),
            ("aligned_alloc", 0x300),
            ("memalign", 0x300),
            ("mmap", 0x400),
            ("mmap64", 0x400),
        ];
        let (sites, missing) = plan_sites(LIBC_FUNCTIONS, |n| syms.iter().find(|(s, _)| *s == n).map(|(_, a)| *a));
        assert_eq!(
            sites,
            vec![
                (CallKind::Malloc, "malloc", 0x100),
                (CallKind::Free, "free", 0x200),
                (CallKind::AlignedAlloc, "aligned_alloc", 0x300),
                (CallKind::Mmap, "mmap", 0x400),
            ]
        );
        assert_eq!(
            missing,
            vec![
                "calloc",
                "realloc",
                "reallocarray",
                "posix_memalign",
                "valloc",
                "pvalloc",
                "munmap"
            ]
        );
    }

    #[test]
    fn an_alias_alone_covers_its_kind() {
        let (sites, missing) = plan_sites(LIBC_FUNCTIONS, |n| (n == "memalign").then_some(0x10));
        assert_eq!(sites, vec![(CallKind::AlignedAlloc, "memalign", 0x10)]);
        assert!(!missing.contains(&"aligned_alloc"));
    }

    #[test]
    fn this_machines_libc_provides_every_function() {
        // The real glibc of the test machine, as a process maps it.
        let pid = std::process::id();
        let mut cache = elf::ElfCache::default();
        let targets = find_targets(pid, &mut cache).expect("the test binary maps libc");
        let libc = targets
            .iter()
            .find(|t| t.path.contains("libc.so"))
            .expect("libc among the providers");
        assert!(libc.missing.is_empty(), "missing: {:?}", libc.missing);
        let kinds: Vec<CallKind> = libc.sites.iter().map(|s| s.kind).collect();
        for kind in CallKind::ALL {
            assert!(kinds.contains(&kind), "{kind} not planned");
        }
        assert!(libc.build_id.as_deref().is_some_and(|b| b.len() == 40));
    }
}

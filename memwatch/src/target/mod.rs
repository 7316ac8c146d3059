//! Allocator targets: which mapped objects of a process provide the
//! allocator functions, and where in them each probe goes.
//!
//! Any mapped ELF object that defines `malloc` or `free` is a provider: libc,
//! an LD_PRELOADed jemalloc or tcmalloc, or a statically linked executable.
//! Wrappers that forward to the next provider are nested calls and are not
//! counted twice.

pub mod elf;
pub mod placement;
pub mod python;

use std::path::PathBuf;

use memwatch_common::cookie::{CallKind, Family};

use crate::process::procfs::{self, MappedFile};
use placement::Placement;

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

/// CPython's allocation API, probed per object where the interpreter calls
/// it out of line (see `ElfInfo::python_calls_out_of_line`).
pub const PYTHON_FUNCTIONS: &[(&str, CallKind)] = &[
    ("PyObject_Malloc", CallKind::Malloc),
    ("PyObject_Calloc", CallKind::Calloc),
    ("PyObject_Realloc", CallKind::Realloc),
    ("PyObject_Free", CallKind::Free),
    ("PyMem_Malloc", CallKind::Malloc),
    ("PyMem_Calloc", CallKind::Calloc),
    ("PyMem_Realloc", CallKind::Realloc),
    ("PyMem_Free", CallKind::Free),
];

/// A function to probe inside one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub kind: CallKind,
    /// The symbol it was found by (the first of its aliases in the table).
    pub symbol: &'static str,
    pub vaddr: u64,
    /// File offset of the function's entry.
    pub entry_offset: u64,
    /// Where in the function the probes go, and why.
    pub placement: Placement,
    /// The function takes its allocator's context first (see
    /// `ProbeCookie::ctx_arg`).
    pub ctx_arg: bool,
}

impl Site {
    /// File offset of the probe site (what uprobes attach to).
    pub fn file_offset(&self) -> u64 {
        self.entry_offset + self.placement.offset
    }
}

/// One object of a process that provides allocator functions.
#[derive(Debug, Clone)]
pub struct AllocatorTarget {
    pub family: Family,
    /// The path as the process sees it.
    pub path: String,
    /// Where memwatch opened it and attaches its probes: a path that reached
    /// this very inode (see [`procfs::open_mapped`]).
    pub open_path: PathBuf,
    pub dev: String,
    pub inode: u64,
    pub build_id: Option<String>,
    pub sites: Vec<Site>,
    /// Functions of the family this object does not define.
    pub missing: Vec<&'static str>,
    /// glibc's malloc: each block's size is in the word before it, so a
    /// block freed that memwatch did not see allocated can be measured.
    pub chunk_header: bool,
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

/// What to probe in a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wanted {
    /// Probes go to emulated instructions (see [`placement`]), else to
    /// function entries.
    pub place: bool,
    /// CPython's object allocator too, per object, where the interpreter
    /// calls it out of line.
    pub python_objects: bool,
    /// Not mmap and munmap: `memwatch check` counts heap blocks only, and
    /// each probe costs it ~0.1 s of the kernel's time to close.
    pub skip_mappings: bool,
}

/// Finds the allocator providers of a running process. Objects that cannot be
/// read are skipped with a warning; the others still count.
pub fn find_targets(pid: u32, cache: &mut elf::ElfCache, wanted: Wanted) -> Result<Vec<AllocatorTarget>, TargetError> {
    let entries = procfs::read_maps(pid).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound || !procfs::exists(pid) {
            TargetError::NoProcess { pid }
        } else {
            TargetError::Maps { pid, source }
        }
    })?;
    let mut targets = Vec::new();
    for file in procfs::mapped_files(&entries).into_iter().filter(|f| f.executable) {
        match targets_of(pid, &entries, &file, cache, wanted) {
            Ok(t) => targets.extend(t),
            Err(e) => {
                tracing::warn!(pid, path = %file.path, error = %e, "cannot read a mapped object; its allocator calls (if any) are not tracked")
            }
        }
    }
    if !targets.iter().any(|t| t.family == Family::Libc) {
        return Err(TargetError::NoAllocator { pid });
    }
    Ok(targets)
}

/// The allocator families `file` provides: libc's API (any object defining
/// malloc or free), and CPython's object allocator when asked for and
/// called out of line.
fn targets_of(
    pid: u32,
    entries: &[procfs::MapEntry],
    file: &MappedFile,
    cache: &mut elf::ElfCache,
    wanted: Wanted,
) -> Result<Vec<AllocatorTarget>, elf::ElfError> {
    let opened = procfs::open_mapped(pid, file.first_start, file.first_end, &file.path, &file.dev, file.inode)
        .map_err(|source| elf::ElfError::Open {
            path: file.path.clone().into(),
            source,
        })?;
    let info = cache.get(&opened, &file.dev, file.inode)?;
    // The kernel resolves this path to the inode the probes go on.
    let open_path = opened.path;
    let mut out = Vec::new();
    if info.defines("malloc") || info.defines("free") {
        let functions: Vec<(&str, CallKind)> = LIBC_FUNCTIONS
            .iter()
            .copied()
            .filter(|(_, k)| !(wanted.skip_mappings && matches!(k, CallKind::Mmap | CallKind::Munmap)))
            .collect();
        out.push(target(
            pid,
            file,
            &open_path,
            &info,
            Family::Libc,
            &functions,
            wanted.place,
        ));
    }
    if wanted.python_objects && info.defines("PyObject_Malloc") {
        if info.python_calls_out_of_line {
            out.push(python_target(pid, entries, file, &open_path, &info, wanted.place));
        } else {
            tracing::info!(pid, path = %file.path, "this interpreter inlines its object allocator (PGO/LTO): its objects are not tracked one by one");
        }
    }
    Ok(out)
}

/// CPython's allocator functions, with its frees probed in `_PyObject_Free`
/// where that is safe (see [`python`]).
fn python_target(
    pid: u32,
    entries: &[procfs::MapEntry],
    file: &MappedFile,
    open_path: &std::path::Path,
    info: &elf::ElfInfo,
    place: bool,
) -> AllocatorTarget {
    let inner = python::inner_free(pid, entries, file, info);
    let Ok(inner) = inner.inspect_err(|why| {
        tracing::info!(pid, path = %file.path, why, "probing CPython's free dispatchers (single-stepped)");
    }) else {
        return target(pid, file, open_path, info, Family::Python, PYTHON_FUNCTIONS, place);
    };
    let table: Vec<(&'static str, CallKind)> = PYTHON_FUNCTIONS
        .iter()
        .copied()
        .filter(|(name, _)| !python::FREE_DISPATCHERS.contains(name))
        .collect();
    let mut t = target(pid, file, open_path, info, Family::Python, &table, place);
    if let Some(entry_offset) = info.file_offset(inner) {
        let code = info.prologue(inner);
        t.sites.push(Site {
            kind: CallKind::Free,
            symbol: python::INNER_FREE,
            vaddr: inner,
            entry_offset,
            placement: if place {
                placement::place_args(code, inner, CallKind::Free, true)
            } else {
                placement::at_entry(code, inner)
            },
            ctx_arg: true,
        });
    }
    t
}

fn target(
    pid: u32,
    file: &MappedFile,
    open_path: &std::path::Path,
    info: &elf::ElfInfo,
    family: Family,
    table: &[(&'static str, CallKind)],
    place: bool,
) -> AllocatorTarget {
    let (planned, missing) = plan_sites(table, |n| info.function(n));
    let mut sites = Vec::new();
    for (kind, symbol, vaddr) in planned {
        match info.file_offset(vaddr) {
            Some(entry_offset) => {
                let code = info.prologue(vaddr);
                let placement = if place {
                    placement::place(code, vaddr, kind)
                } else {
                    placement::at_entry(code, vaddr)
                };
                sites.push(Site {
                    kind,
                    symbol,
                    vaddr,
                    entry_offset,
                    placement,
                    ctx_arg: false,
                });
            }
            None => tracing::warn!(pid, path = %file.path, symbol, "symbol outside any loadable segment; not probed"),
        }
    }
    AllocatorTarget {
        family,
        path: file.path.clone(),
        open_path: open_path.to_path_buf(),
        dev: file.dev.clone(),
        inode: file.inode,
        build_id: info.build_id.clone(),
        sites,
        missing,
        // glibc's own streams list tells its libc (or a static glibc
        // program) from jemalloc, tcmalloc or mimalloc.
        chunk_header: family == Family::Libc && info.stream_list.is_some(),
    }
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
        let targets = find_targets(
            pid,
            &mut cache,
            Wanted {
                place: true,
                ..Default::default()
            },
        )
        .expect("the test binary maps libc");
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
        let site = |name: &str| libc.sites.iter().find(|s| s.symbol == name).unwrap().placement.clone();
        // glibc's free starts with `test %rdi,%rdi; je`: moved past it.
        let free = site("free");
        assert!(free.emulated && free.offset > 0, "{free:?}");
        assert!(free.instruction.starts_with("push"), "{free:?}");
        // Every chosen site is what the kernel emulates, or the entry.
        for s in &libc.sites {
            assert!(s.placement.emulated || s.placement.offset == 0, "{s:?}");
        }
    }

    #[test]
    fn a_check_leaves_mmap_and_munmap_unprobed() {
        let mut cache = elf::ElfCache::default();
        let wanted = Wanted {
            place: true,
            skip_mappings: true,
            ..Default::default()
        };
        let targets = find_targets(std::process::id(), &mut cache, wanted).unwrap();
        let libc = targets.iter().find(|t| t.path.contains("libc.so")).unwrap();
        let kinds: Vec<CallKind> = libc.sites.iter().map(|s| s.kind).collect();
        assert!(kinds.contains(&CallKind::Malloc) && kinds.contains(&CallKind::Free));
        assert!(!kinds.contains(&CallKind::Mmap) && !kinds.contains(&CallKind::Munmap));
        assert!(libc.missing.is_empty(), "missing: {:?}", libc.missing);
    }

    #[test]
    fn debian_12_glibc_placements() {
        // The machine this project targets: glibc 2.36 as Debian 12 builds it.
        // SAFETY: returns a static NUL-terminated string.
        let version = unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }
            .to_string_lossy()
            .into_owned();
        if version != "2.36" {
            eprintln!("glibc {version}: this test checks 2.36 only");
            return;
        }
        let mut cache = elf::ElfCache::default();
        let targets = find_targets(
            std::process::id(),
            &mut cache,
            Wanted {
                place: true,
                ..Default::default()
            },
        )
        .unwrap();
        let libc = targets.iter().find(|t| t.path.contains("libc.so")).unwrap();
        let got: Vec<(&str, u64, bool)> = libc
            .sites
            .iter()
            .map(|s| (s.symbol, s.placement.offset, s.placement.emulated))
            .collect();
        assert_eq!(
            got,
            vec![
                ("malloc", 0, true),         // push %r12
                ("calloc", 0, true),         // push %r13
                ("realloc", 0, true),        // push %r15
                ("reallocarray", 0, false),  // mov %rsi,%rax; mul %rdx: arguments change first
                ("free", 9, true),           // test; je (NULL); push %rbp
                ("posix_memalign", 7, true), // cmpb $0,…(%rip); push %r12
                ("aligned_alloc", 7, true),  // cmpb; je
                ("valloc", 7, true),         // cmpb; push %rbx
                ("pvalloc", 7, true),        // cmpb; push %rbx
                ("mmap", 10, true),          // mov %ecx,%r10d; test $0xfff,%r9d; jne
                ("munmap", 0, false),        // mov $0xb,%eax; syscall
            ]
        );
    }

    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
}

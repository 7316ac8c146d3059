//! Entry points for fuzzing the parsers memwatch runs on what it does not
//! control: ELF files and their call-frame information (any binary a process
//! maps), /proc text (paths and command lines are chosen by whoever starts
//! the process), CPython line tables and the instructions probes are placed
//! on. The `fuzz/` targets call these, and so does the regression test over
//! the corpus in `tests/corpus/`. Each must return, never panic, on any
//! input.

use memwatch_common::cookie::CallKind;

use crate::{
    process::cgroup,
    process::procfs,
    python,
    target::{LIBC_FUNCTIONS, PYTHON_FUNCTIONS, elf::ElfInfo, placement},
    unwind::table,
    watch::procmem,
};

/// What memwatch reads from a mapped object: its allocator functions and
/// their first instructions, its CFI, its CPython version and build.
pub fn elf(data: &[u8]) {
    if let Ok(info) = ElfInfo::parse(data) {
        for &(name, kind) in LIBC_FUNCTIONS.iter().chain(PYTHON_FUNCTIONS) {
            if let Some(vaddr) = info.function(name) {
                let _ = info.file_offset(vaddr);
                let _ = placement::place(info.prologue(vaddr), vaddr, kind);
            }
        }
    }
    if let Ok(t) = table::build(data) {
        let _ = procfs::bias(&t.segments, 0x7f00_0000_0000, 0);
    }
    if let Ok(file) = object::File::parse(data) {
        let _ = python::allocator_out_of_line(&file);
        let _ = python::version_of(&file, data, "libpython3.11.so.1.0");
    }
}

/// The /proc files memwatch parses, all from the same text.
pub fn procfs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let entries = procfs::parse_maps(&text);
    let _ = procfs::mapped_files(&entries);
    let _ = procfs::parse_stat(&text);
    let _ = procfs::parse_status_tgid(&text);
    let _ = procmem::parse_status(&text);
    let _ = cgroup::parse(&text);
    let _ = procfs::shown_cmdline(data, 2);
}

/// A code object's line table: the first 9 bytes choose the first line,
/// the instruction and the version, the rest is the table.
pub fn linetable(data: &[u8]) {
    let Some((head, table)) = data.split_at_checked(9) else {
        return;
    };
    let first_line = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let index = u64::from(u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")));
    let minor = 10 + head[8] % 4;
    let _ = python::linetable::line_at(table, first_line, index, minor);
}

/// Probe placement on arbitrary first bytes of a function.
pub fn placement(data: &[u8]) {
    for kind in [CallKind::Malloc, CallKind::Free, CallKind::Mmap, CallKind::Munmap] {
        let _ = placement::place(data, 0x40_1000, kind);
    }
}

/// A parser's entry point.
pub type Target = fn(&[u8]);

/// The targets by name, for the regression test and `cargo xtask fuzz`.
pub const TARGETS: &[(&str, Target)] = &[
    ("elf", elf),
    ("procfs", procfs),
    ("linetable", linetable),
    ("placement", placement),
];

//! CPython in a running process, from outside: which interpreter a process
//! maps (a shared `libpython3.X.so` or a static `python3.X`), its version
//! and build, and the layout the kernel side walks its frames by — checked
//! against the process's own memory before it is trusted.
//!
//! Offsets for 3.10 to 3.13 were read from each version's debug info and
//! checked against live processes (`sys._current_frames()`, gdb) on the
//! development machines; on 3.13 the interpreter publishes them itself
//! (`_Py_DebugOffsets`), and memwatch compares.

pub mod arenas;
pub mod census;
pub mod code;
pub mod latest;
pub mod linetable;

use std::path::Path;

use memwatch_common::python::{FrameLayout, NO_OFFSET, PyProc};
use object::{Object, ObjectSegment, ObjectSymbol};
use serde::Serialize;

use crate::process::procfs::{self, MapEntry};

/// Offsets of one CPython minor version (x86-64, default build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub minor: u8,
    /// `_PyRuntime.autoTSSkey` (a `Py_tss_t`: initialised flag, then key).
    pub tss_key: u32,
    pub tstate_frame: u32,
    pub cframe_frame: u32,
    pub frame_code: u32,
    pub frame_previous: u32,
    pub frame_instr: u32,
    pub frame_flag: u32,
    pub frames: FrameLayout,
    pub code: CodeLayout,
    /// Compact ASCII strings' data, after their header.
    pub ascii_data: u64,
    /// Compact non-ASCII strings' data.
    pub compact_data: u64,
    /// Where the collector's state is, for a census (3.11 on).
    pub gc: Option<census::GcLayout>,
    /// Where pymalloc's arena table is: in the interpreter state (3.12+),
    /// else (3.11) found in the binary's code by [`arenas::statics_from_code`].
    pub arenas: Option<arenas::Roots>,
}

/// Offsets in code objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLayout {
    pub firstlineno: u64,
    pub filename: u64,
    pub name: u64,
    /// None before 3.11 (the name is all there is).
    pub qualname: Option<u64>,
    pub linetable: u64,
    /// Where the instructions start (3.11+: `co_code_adaptive`, which is
    /// `PyCode_Type.tp_basicsize`); the size of a code object on 3.10.
    pub basicsize: u64,
}

pub const LAYOUTS: [Layout; 4] = [
    Layout {
        minor: 10,
        tss_key: 584,
        tstate_frame: 24,
        cframe_frame: NO_OFFSET,
        frame_code: 32,
        frame_previous: 24,
        frame_instr: 96,
        frame_flag: NO_OFFSET,
        frames: FrameLayout::Objects,
        code: CodeLayout {
            firstlineno: 40,
            filename: 104,
            name: 112,
            qualname: None,
            linetable: 120,
            basicsize: 176,
        },
        ascii_data: 48,
        compact_data: 72,
        gc: None,
        arenas: None,
    },
    Layout {
        minor: 11,
        tss_key: 592,
        tstate_frame: 56,
        cframe_frame: 8,
        frame_code: 32,
        frame_previous: 48,
        frame_instr: 56,
        frame_flag: 68,
        frames: FrameLayout::EntryFlag,
        code: CodeLayout {
            firstlineno: 72,
            filename: 112,
            name: 120,
            qualname: Some(128),
            linetable: 136,
            basicsize: 184,
        },
        ascii_data: 48,
        compact_data: 72,
        gc: Some(census::GcLayout {
            interpreters_head: 40,
            interp_gc: 648,
            ascii_data: 48,
            compact_data: 72,
        }),
        arenas: None,
    },
    Layout {
        minor: 12,
        tss_key: 1544,
        tstate_frame: 56,
        cframe_frame: 0,
        frame_code: 0,
        frame_previous: 8,
        frame_instr: 56,
        frame_flag: 70,
        frames: FrameLayout::Shims,
        code: CodeLayout {
            firstlineno: 68,
            filename: 112,
            name: 120,
            qualname: Some(128),
            linetable: 136,
            basicsize: 192,
        },
        ascii_data: 40,
        compact_data: 56,
        gc: Some(census::GcLayout {
            interpreters_head: 40,
            interp_gc: 112,
            ascii_data: 40,
            compact_data: 56,
        }),
        arenas: Some(arenas::Roots::Interpreter {
            offset: 3960,
            pointer: false,
        }),
    },
    Layout {
        minor: 13,
        tss_key: 2160,
        tstate_frame: 72,
        cframe_frame: NO_OFFSET,
        frame_code: 0,
        frame_previous: 8,
        frame_instr: 56,
        frame_flag: 70,
        frames: FrameLayout::Shims,
        code: CodeLayout {
            firstlineno: 68,
            filename: 112,
            name: 120,
            qualname: Some(128),
            linetable: 136,
            basicsize: 200,
        },
        ascii_data: 40,
        compact_data: 56,
        gc: Some(census::GcLayout {
            interpreters_head: 632,
            interp_gc: 7400,
            ascii_data: 40,
            compact_data: 56,
        }),
        arenas: Some(arenas::Roots::Interpreter {
            offset: 10800,
            pointer: true,
        }),
    },
];

/// How the interpreter is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Linkage {
    /// `libpython3.X.so`: the object allocator's functions are real calls.
    Shared,
    /// Into the executable: distribution and python.org builds, usually
    /// PGO+LTO, whose object allocator's fast paths are inlined.
    Static,
}

/// CPython as found in one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Runtime {
    /// "3.11".
    pub version: String,
    pub linkage: Linkage,
    /// The object holding the interpreter, as the process maps it.
    pub module: String,
    #[serde(skip)]
    pub layout: Layout,
    /// `_PyRuntime`'s address in the process.
    #[serde(skip)]
    pub runtime: u64,
    /// `PyCode_Type`'s address, to check code objects.
    #[serde(skip)]
    pub code_type: u64,
    /// Its object allocator is called out of line: it can be tracked per
    /// object (`[python] objects = true`).
    pub allocator_out_of_line: bool,
    /// Where its arena table is, if memwatch found it.
    #[serde(skip)]
    pub arenas: Option<arenas::Roots>,
}

impl Runtime {
    /// What the kernel side needs to walk the frames.
    pub fn proc(&self) -> PyProc {
        let l = &self.layout;
        PyProc {
            enabled: 1,
            layout: l.frames as u32,
            tss_key_addr: self.runtime + u64::from(l.tss_key) + 4,
            tstate_frame: l.tstate_frame,
            cframe_frame: l.cframe_frame,
            frame_code: l.frame_code,
            frame_previous: l.frame_previous,
            frame_instr: l.frame_instr,
            frame_flag: l.frame_flag,
        }
    }

    pub fn minor(&self) -> u8 {
        self.layout.minor
    }
}

/// The size under which `PyObject_Malloc` is only a dispatcher.
const DISPATCHER_MAX: u64 = 64;

/// Whether the interpreter in `elf` calls its object allocator out of line,
/// so that probing `PyObject_Malloc` sees every object. Told by the
/// function's size: a plain build's is a dispatcher through the allocator
/// table (27–35 bytes in pyenv's 3.10–3.13), where PGO+LTO inlined pymalloc
/// into it — and, with it, into the interpreter's hot paths (271 bytes in
/// Debian's 3.11, whose hot paths call it at none of their ~190 sites).
pub fn allocator_out_of_line(elf: &object::File<'_>) -> bool {
    elf.dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.name() == Ok("PyObject_Malloc") && s.is_definition())
        .is_some_and(|s| s.size() > 0 && s.size() < DISPATCHER_MAX)
}

/// Why a process's Python frames cannot be walked (for /probes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotWalked {
    #[error("CPython {0} has no frame layout memwatch knows (3.10 to 3.13)")]
    Version(String),
    #[error("its interpreter does not match the {0} layout: {1}")]
    Mismatch(String, String),
    #[error("the interpreter is not initialised yet")]
    NotYet,
    #[error("cannot read {0}: {1}")]
    Unreadable(String, String),
}

/// The CPython interpreter `pid` maps, if any. `Ok(None)`: no CPython.
///
/// Looked for in libpython and, with `main`, in the main executable
/// whatever its name (a static interpreter may be renamed or embedded);
/// other objects are not opened.
pub fn detect(pid: u32, entries: &[MapEntry], main: bool) -> Result<Option<Runtime>, NotWalked> {
    let exe = main
        .then(|| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
        .flatten()
        .map(|e| e.to_string_lossy().trim_end_matches(" (deleted)").to_string());
    for f in procfs::mapped_files(entries).into_iter().filter(|f| f.executable) {
        let name = Path::new(&f.path).file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        let main = exe.as_deref() == Some(f.path.as_str());
        let candidate = main || name.starts_with("libpython3") || name.starts_with("python3") || name == "python";
        if !candidate {
            continue;
        }
        let opened = procfs::open_mapped(pid, f.first_start, f.first_end, &f.path, &f.dev, f.inode)
            .map_err(|e| NotWalked::Unreadable(f.path.clone(), e.to_string()))?;
        // SAFETY: read-only; a mapped object truncated under us would already
        // break the process that maps it.
        let data = unsafe { memmap2::Mmap::map(&opened.file) }
            .map_err(|e| NotWalked::Unreadable(f.path.clone(), e.to_string()))?;
        let Ok(elf) = object::File::parse(&*data) else { continue };
        let find = |n: &str| elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.name() == Ok(n));
        let symbol = |n: &str| find(n).map(|s| s.address());
        let Some(runtime) = symbol("_PyRuntime") else { continue };
        let version = version_of(&elf, &data, &name).ok_or_else(|| NotWalked::Version(name.clone()))?;
        let layout = LAYOUTS
            .iter()
            .find(|l| version == (3, l.minor))
            .copied()
            .ok_or_else(|| NotWalked::Version(format!("{}.{}", version.0, version.1)))?;
        let segments: Vec<(u64, u64, u64)> = elf
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (s.address(), off, size)
            })
            .collect();
        let first = entries
            .iter()
            .filter(|e| e.inode == f.inode && e.dev == f.dev)
            .min_by_key(|e| e.start)
            .ok_or_else(|| NotWalked::Unreadable(f.path.clone(), "no mapping".into()))?;
        let bias = procfs::bias(&segments, first.start, first.offset)
            .ok_or_else(|| NotWalked::Unreadable(f.path.clone(), "mappings outside its segments".into()))?;
        let rt = Runtime {
            version: format!("3.{}", layout.minor),
            linkage: if name.starts_with("libpython") {
                Linkage::Shared
            } else {
                Linkage::Static
            },
            module: f.path.clone(),
            layout,
            runtime: bias.wrapping_add(runtime),
            code_type: symbol("PyCode_Type").map_or(0, |a| bias.wrapping_add(a)),
            allocator_out_of_line: allocator_out_of_line(&elf),
            arenas: layout.arenas.or_else(|| {
                let f = find("_Py_GetAllocatedBlocks")?;
                let code = file_bytes(&elf, &data, f.address(), f.size().min(4096))?;
                let (a, m) = arenas::statics_from_code(code, f.address())?;
                Some(arenas::Roots::Statics {
                    arenas: bias.wrapping_add(a),
                    maxarenas: bias.wrapping_add(m),
                })
            }),
        };
        check(pid, &rt)?;
        return Ok(Some(rt));
    }
    Ok(None)
}

/// The version: `Py_Version` (3.11+, in the dynamic symbols even of
/// stripped builds), else the file name (`libpython3.10.so`).
pub fn version_of(elf: &object::File<'_>, data: &[u8], name: &str) -> Option<(u8, u8)> {
    let sym = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.name() == Ok("Py_Version"));
    if let Some(s) = sym {
        let v = u32::from_le_bytes(file_bytes(elf, data, s.address(), 4)?.try_into().ok()?);
        return Some(((v >> 24) as u8, (v >> 16) as u8));
    }
    let rest = name.trim_start_matches("lib").strip_prefix("python3.")?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((3, minor.parse().ok()?))
}

/// The `len` bytes of the file at link-time address `addr`.
fn file_bytes<'d>(elf: &object::File<'_>, data: &'d [u8], addr: u64, len: u64) -> Option<&'d [u8]> {
    let off = elf.segments().find_map(|seg| {
        let (off, size) = seg.file_range();
        let within = addr.checked_sub(seg.address())?;
        (within.checked_add(len)? <= size)
            .then(|| off.checked_add(within))
            .flatten()
    })?;
    let off = usize::try_from(off).ok()?;
    data.get(off..off.checked_add(usize::try_from(len).ok()?)?)
}

/// Checks the layout against the process's memory: the type of code objects
/// has the size this version's has, and the thread-state key is set.
fn check(pid: u32, rt: &Runtime) -> Result<(), NotWalked> {
    let mem = code::Memory::open(pid).map_err(|e| NotWalked::Unreadable(format!("/proc/{pid}/mem"), e.to_string()))?;
    let mismatch = |what: String| NotWalked::Mismatch(rt.version.clone(), what);
    if rt.code_type != 0 {
        let basicsize = mem
            .u64(rt.code_type + 32)
            .map_err(|e| NotWalked::Unreadable("PyCode_Type".into(), e.to_string()))?;
        if basicsize != rt.layout.code.basicsize {
            return Err(mismatch(format!(
                "code objects are {basicsize} bytes, not {}",
                rt.layout.code.basicsize
            )));
        }
    }
    // Py_tss_t: {int _is_initialized; pthread_key_t _key;}
    let tss = mem
        .u64(rt.runtime + u64::from(rt.layout.tss_key))
        .map_err(|e| NotWalked::Unreadable("_PyRuntime".into(), e.to_string()))?;
    let (initialized, key) = (tss as u32, (tss >> 32) as u32);
    if initialized != 1 {
        return Err(NotWalked::NotYet);
    }
    if key >= 1024 {
        return Err(mismatch(format!("its thread-state key reads {key}")));
    }
    if rt.minor() >= 13 {
        // _Py_DebugOffsets: "xdebugpy", then the version, then the offsets.
        let cookie = mem.bytes(rt.runtime, 8).unwrap_or_default();
        let frame = mem.u64(rt.runtime + 184).unwrap_or(0);
        if cookie != b"xdebugpy" || frame != u64::from(rt.layout.tstate_frame) {
            return Err(mismatch("its _Py_DebugOffsets disagree".into()));
        }
    }
    Ok(())
}

/// CPython in a registered process, as far as memwatch knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Python {
    /// Not looked for yet.
    Unknown,
    /// The process runs no CPython.
    Absent,
    /// Its frames are walked.
    Walked(Box<Runtime>),
    NotWalked(NotWalked),
}

/// What memwatch sees of one process's CPython, for /probes, /status and
/// /leaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sight {
    pub version: Option<String>,
    pub linkage: Option<Linkage>,
    pub module: Option<String>,
    /// Whether Python frames are recorded in its stacks.
    pub frames: bool,
    /// Which of its allocations memwatch sees, and why not the rest.
    pub allocations: String,
}

impl Sight {
    pub fn of(p: &Python) -> Option<Sight> {
        match p {
            Python::Walked(rt) => Some(Sight {
                version: Some(rt.version.clone()),
                linkage: Some(rt.linkage),
                module: Some(rt.module.clone()),
                frames: true,
                allocations: if rt.allocator_out_of_line {
                    format!(
                        "{ALLOCATIONS_SEEN}; with [python] objects = true, every object through PyObject_Malloc and PyMem_Malloc"
                    )
                } else {
                    format!(
                        "{ALLOCATIONS_SEEN}; this build inlines its object allocator (PGO/LTO): objects cannot be tracked one by one, and small objects are attributed by arena, a sample"
                    )
                },
            }),
            Python::NotWalked(e) => Some(Sight {
                version: None,
                linkage: None,
                module: None,
                frames: false,
                allocations: format!("{ALLOCATIONS_SEEN}, without Python frames: {e}"),
            }),
            Python::Unknown | Python::Absent => None,
        }
    }
}

/// What the libc probes and the growth tracepoints see of a CPython process.
const ALLOCATIONS_SEEN: &str = "allocations through libc (objects over 512 bytes, buffers, the C extensions') \
     one by one, and pymalloc's 1 MiB arenas as they are mapped (address-space growth); \
     small objects inside an arena are not seen one by one";

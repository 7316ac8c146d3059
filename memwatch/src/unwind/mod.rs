//! Unwinding user stacks without frame pointers: each executable object's
//! call-frame information becomes a table of rows in the kernel's
//! `UNWIND_ROWS` array (once per object, shared by every process that maps
//! it), and each process whose stacks memwatch walks gets the list of its
//! executable mappings in `UNWIND_PROCS`. The kernel side does the rest.
//!
//! Tables live while a registered process maps their object, then stay
//! cached until their rows are needed for another.

pub mod ranges;
pub mod table;

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use memwatch_common::unwind::{ExecMapping, FP_RANGES, MAX_MAPPINGS, MappingKind, ProcUnwind};
use serde::Serialize;

use crate::{
    kernel::unwind::{RowStore, UnwindMaps},
    process::procfs::{self, MapEntry, bias},
    python::{self, NotWalked, Python},
};
use ranges::Ranges;

/// The [`FP_RANGES`] largest of `ranges`, for the kernel to walk by frame
/// pointers without a rule lookup (the rest are found by lookup, as
/// `MappingKind::FramePointer` mappings).
fn largest(mut ranges: Vec<[u64; 2]>) -> [[u64; 2]; FP_RANGES] {
    ranges.sort_by_key(|[start, end]| std::cmp::Reverse(end - start));
    let mut out = [[0; 2]; FP_RANGES];
    for (slot, r) in out.iter_mut().zip(ranges) {
        *slot = r;
    }
    out
}

/// An object by (device, inode), as /proc/PID/maps names it.
type ObjectKey = (String, u64);

/// One object's table in the kernel's rows.
struct Object {
    path: String,
    /// (first row, rows) in `UNWIND_ROWS`; None when the object has no CFI,
    /// could not be read, or found no room.
    rows: Option<(u32, u32)>,
    segments: Vec<(u64, u64, u64)>,
    fdes: usize,
    unsupported: usize,
    /// Why it has no rows, when it has none.
    problem: Option<String>,
    /// Built to keep frame pointers: walked by them, with no table.
    keeps_frame_pointers: bool,
    /// Registered processes mapping it.
    users: u32,
    last_used: Instant,
}

/// Why a process's stacks are walked by CFI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Tracked exactly (allocator probes).
    Tracked,
    /// A host-wide leak suspect (growth stacks).
    Suspect,
}

struct Registered {
    reasons: Vec<Reason>,
    version: u32,
    /// What was written, to tell whether the process's code changed.
    mappings: Vec<ExecMapping>,
    objects: Vec<ObjectKey>,
    python: Python,
}

/// What memwatch knows of one executable mapping of a process, for /probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModuleUnwind {
    pub module: String,
    /// "cfi", "frame_pointers" (no table) or "trampoline".
    pub unwind: &'static str,
    /// Walked by frame pointers because the object keeps them (not for
    /// want of a table).
    pub keeps_frame_pointers: bool,
    pub rows: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Totals for /status and /metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UnwindTotals {
    pub processes: usize,
    pub objects: usize,
    pub rows_used: u32,
    pub rows_capacity: u32,
    /// Objects that wanted a table but found no room in the rows array.
    pub objects_without_room: u64,
}

pub struct Unwinder {
    enabled: bool,
    /// Objects built to keep frame pointers are walked by them.
    frame_pointer_objects: bool,
    objects: HashMap<ObjectKey, Object>,
    ranges: Ranges,
    procs: BTreeMap<u32, Registered>,
    next_version: u32,
    without_room: u64,
}

impl Unwinder {
    pub fn new(enabled: bool, frame_pointer_objects: bool, rows: u32) -> Self {
        Unwinder {
            enabled,
            frame_pointer_objects,
            objects: HashMap::new(),
            ranges: Ranges::new(rows),
            procs: BTreeMap::new(),
            next_version: 1,
            without_room: 0,
        }
    }

    pub fn totals(&self) -> UnwindTotals {
        UnwindTotals {
            processes: self.procs.len(),
            objects: self.objects.values().filter(|o| o.rows.is_some()).count(),
            rows_used: self.ranges.used(),
            rows_capacity: self.ranges.capacity(),
            objects_without_room: self.without_room,
        }
    }

    pub fn is_registered_for(&self, pid: u32, why: Reason) -> bool {
        self.procs.get(&pid).is_some_and(|r| r.reasons.contains(&why))
    }

    /// The processes registered for `why`.
    pub fn registered_for(&self, why: Reason) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, r)| r.reasons.contains(&why))
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// Walks `pid`'s stacks by CFI from now on (for `why`). A failure leaves
    /// it walked by frame pointers and is returned for the logs.
    pub fn register(&mut self, maps: &mut UnwindMaps, pid: u32, why: Reason) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if let Some(r) = self.procs.get_mut(&pid) {
            if !r.reasons.contains(&why) {
                r.reasons.push(why);
            }
            return Ok(());
        }
        self.procs.insert(
            pid,
            Registered {
                reasons: vec![why],
                version: 0,
                mappings: Vec::new(),
                objects: Vec::new(),
                python: Python::Unknown,
            },
        );
        self.refresh(maps, pid)
    }

    /// Stops walking `pid`'s stacks by CFI for `why` (and altogether once no
    /// reason is left).
    pub fn unregister(&mut self, maps: &mut UnwindMaps, pid: u32, why: Reason) {
        let Some(r) = self.procs.get_mut(&pid) else { return };
        r.reasons.retain(|&w| w != why);
        if !r.reasons.is_empty() {
            return;
        }
        let r = self.procs.remove(&pid).expect("present");
        maps.delete_proc(pid);
        self.release(&r.objects);
    }

    /// Re-reads `pid`'s executable mappings and rewrites the kernel's entry
    /// if they changed (a library loaded or unloaded) or the kernel dropped
    /// it (at exec).
    pub fn refresh(&mut self, maps: &mut UnwindMaps, pid: u32) -> Result<(), String> {
        if !self.procs.contains_key(&pid) {
            return Ok(());
        }
        let entries = procfs::read_maps(pid).map_err(|e| format!("reading the memory map of {pid}: {e}"))?;
        let (mappings, objects, fp_ranges) = self.mappings_of(&mut maps.rows, pid, &entries);
        let r = self.procs.get_mut(&pid).expect("present");
        let changed = r.mappings != mappings;
        let in_kernel = maps.has_proc(pid);
        if r.version != 0 && !in_kernel {
            // Dropped by the kernel at exec: a new image, looked at afresh.
            r.python = Python::Unknown;
        }
        // Looked for again while it may still appear (a library loaded
        // later, an interpreter still starting); a runtime found stays put.
        let python_pending = matches!(r.python, Python::Unknown | Python::NotWalked(NotWalked::NotYet))
            || (changed && r.python == Python::Absent);
        if r.version != 0 && !changed && !python_pending && in_kernel {
            self.release(&objects);
            return Ok(());
        }
        if python_pending {
            // Once the executable was seen without CPython, only a library
            // loaded since can bring it.
            let main = r.python != Python::Absent;
            r.python = match python::detect(pid, &entries, main) {
                Ok(Some(rt)) => {
                    tracing::info!(pid, version = %rt.version, module = %rt.module, "CPython found: its frames are walked");
                    Python::Walked(Box::new(rt))
                }
                Ok(None) => Python::Absent,
                Err(e) => {
                    if e != NotWalked::NotYet {
                        tracing::info!(pid, error = %e, "CPython found, its frames are not walked");
                    }
                    Python::NotWalked(e)
                }
            };
        }
        let version = self.next_version;
        self.next_version = self.next_version.checked_add(1).unwrap_or(1);
        let mut value = ProcUnwind {
            version,
            count: mappings.len() as u32,
            ..ProcUnwind::default()
        };
        if let Python::Walked(rt) = &r.python {
            value.py = rt.proc();
        }
        value.mappings[..mappings.len()].copy_from_slice(&mappings);
        value.fp_ranges = largest(fp_ranges);
        let written = maps.set_proc(pid, &value);
        let old = std::mem::replace(&mut r.objects, objects);
        r.mappings = mappings;
        r.version = version;
        self.release(&old);
        written.map_err(|e| format!("{e:#}"))
    }

    /// Refreshes every registered process (each scan: catches libraries
    /// loaded or unloaded since).
    pub fn refresh_all(&mut self, maps: &mut UnwindMaps) {
        let pids: Vec<u32> = self.procs.keys().copied().collect();
        for pid in pids {
            if let Err(e) = self.refresh(maps, pid) {
                tracing::debug!(pid, error = %e, "refreshing unwind mappings failed");
            }
        }
    }

    /// The executable mappings of `pid` with their tables (loading tables
    /// not seen before), the objects they hold a use of, and the ranges of
    /// those that keep frame pointers.
    fn mappings_of(
        &mut self,
        rows: &mut RowStore,
        pid: u32,
        entries: &[MapEntry],
    ) -> (Vec<ExecMapping>, Vec<ObjectKey>, Vec<[u64; 2]>) {
        let mut mappings = Vec::new();
        let mut objects = Vec::new();
        let mut fp_ranges = Vec::new();
        for e in entries.iter().filter(|e| e.perms.as_bytes().get(2) == Some(&b'x')) {
            let mut m = ExecMapping {
                start: e.start,
                end: e.end,
                ..ExecMapping::default()
            };
            if e.special.as_deref() == Some("[uprobes]") {
                m.kind = MappingKind::Trampoline as u32;
            } else if let Some(path) = &e.path {
                let key = (e.dev.clone(), e.inode);
                let open = || procfs::open_mapped(pid, e.start, e.end, path, &e.dev, e.inode).map(|o| o.file);
                let o = self.object(rows, &key, path, open);
                if let (Some((rows, len)), Some(bias)) = (o.rows, bias(&o.segments, e.start, e.offset)) {
                    m.kind = MappingKind::Table as u32;
                    m.rows = rows;
                    m.len = len;
                    m.bias = bias;
                }
                if o.keeps_frame_pointers {
                    fp_ranges.push([e.start, e.end]);
                }
                o.users += 1;
                o.last_used = Instant::now();
                objects.push(key);
            }
            mappings.push(m);
        }
        if mappings.len() > MAX_MAPPINGS {
            // Keep those with tables; the rest are walked by frame pointers.
            mappings.sort_by_key(|m| m.kind != MappingKind::Table as u32);
            mappings.truncate(MAX_MAPPINGS);
            mappings.sort_by_key(|m| m.start);
        }
        (mappings, objects, fp_ranges)
    }

    /// The object's table, loaded into the rows the first time.
    fn object(
        &mut self,
        rows: &mut RowStore,
        key: &ObjectKey,
        path: &str,
        open: impl FnOnce() -> std::io::Result<std::fs::File>,
    ) -> &mut Object {
        if !self.objects.contains_key(key) {
            let o = self.load(rows, path, open);
            self.objects.insert(key.clone(), o);
        }
        self.objects.get_mut(key).expect("inserted")
    }

    fn load(
        &mut self,
        rows: &mut RowStore,
        path: &str,
        open: impl FnOnce() -> std::io::Result<std::fs::File>,
    ) -> Object {
        let mut o = Object {
            path: path.to_string(),
            rows: None,
            segments: Vec::new(),
            fdes: 0,
            unsupported: 0,
            problem: None,
            keeps_frame_pointers: false,
            users: 0,
            last_used: Instant::now(),
        };
        let built = open()
            .map_err(|e| format!("cannot open it: {e}"))
            // SAFETY: read-only; a mapped library truncated under us would
            // already break the process that maps it.
            .and_then(|f| unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("cannot map it: {e}")))
            .and_then(|data| table::build(&data).map_err(|e| e.to_string()));
        let t = match built {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(module = path, error = %e, "no unwind table: its code is walked by frame pointers");
                o.problem = Some(e);
                return o;
            }
        };
        let keeps_frame_pointers = t.keeps_frame_pointers();
        o.segments = t.segments;
        o.fdes = t.fdes;
        o.unsupported = t.unsupported;
        if t.rows.is_empty() {
            o.problem = Some("no call-frame information".into());
            return o;
        }
        if self.frame_pointer_objects && keeps_frame_pointers {
            tracing::debug!(module = path, "built to keep frame pointers: walked by them");
            o.keeps_frame_pointers = true;
            return o;
        }
        let len = t.rows.len() as u32;
        let Some(start) = self.take_rows(len) else {
            self.without_room += 1;
            tracing::warn!(
                module = path,
                rows = len,
                capacity = self.ranges.capacity(),
                "no room for an unwind table (raise unwind.rows): its code is walked by frame pointers"
            );
            o.problem = Some("no room in unwind.rows".into());
            return o;
        };
        rows.write(start, &t.rows);
        o.rows = Some((start, len));
        tracing::debug!(
            module = path,
            rows = len,
            fdes = t.fdes,
            unsupported = t.unsupported,
            "unwind table loaded"
        );
        o
    }

    /// `len` rows, evicting the least recently used unused tables if needed.
    fn take_rows(&mut self, len: u32) -> Option<u32> {
        loop {
            if let Some(start) = self.ranges.take(len) {
                return Some(start);
            }
            let victim = self
                .objects
                .iter()
                .filter(|(_, o)| o.users == 0 && o.rows.is_some())
                .min_by_key(|(_, o)| o.last_used)
                .map(|(k, _)| k.clone())?;
            if let Some(o) = self.objects.remove(&victim)
                && let Some((start, n)) = o.rows
            {
                self.ranges.give(start, n);
            }
        }
    }

    fn release(&mut self, keys: &[ObjectKey]) {
        for k in keys {
            if let Some(o) = self.objects.get_mut(k) {
                o.users = o.users.saturating_sub(1);
            }
        }
    }

    /// CPython in `pid`, as far as memwatch knows.
    pub fn python(&self, pid: u32) -> Option<&Python> {
        self.procs.get(&pid).map(|r| &r.python)
    }

    /// Per executable mapping of `pid`: how it is unwound.
    pub fn modules(&self, pid: u32) -> Vec<ModuleUnwind> {
        let Some(r) = self.procs.get(&pid) else {
            return Vec::new();
        };
        let mut out: Vec<ModuleUnwind> = Vec::new();
        for key in &r.objects {
            let Some(o) = self.objects.get(key) else { continue };
            if out.iter().any(|m| m.module == o.path) {
                continue;
            }
            out.push(ModuleUnwind {
                module: o.path.clone(),
                unwind: if o.rows.is_some() { "cfi" } else { "frame_pointers" },
                keeps_frame_pointers: o.keeps_frame_pointers,
                rows: o.rows.map_or(0, |(_, n)| n),
                problem: o.problem.clone().or_else(|| {
                    (o.unsupported > 0).then(|| format!("{} of its rules are not followed", o.unsupported))
                }),
            });
        }
        out
    }
}

//! Pictures of the live heap of tracked processes: collapsed stacks (the
//! input of every flame-graph tool), a flame graph SVG (inferno) and a pprof
//! profile (for `go tool pprof` and Grafana Pyroscope).

pub mod collapsed;
pub mod flamegraph;
pub mod pprof;

use crate::{
    collect::{aggregate::aggregate, history, snapshot::Snapshot, stack_report::allocated_stacks},
    symbolize::Frame,
};

/// One stack of one process with the live memory it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HeapStack {
    pub pid: u32,
    pub comm: String,
    /// Innermost first, as in /leaks.
    pub frames: Vec<Frame>,
    pub bytes: u64,
    pub allocations: u64,
    /// Allocated from it since tracking began, freed or not (0 where the
    /// picture is of growth or of a peak).
    pub allocated_bytes: u64,
    pub allocated_objects: u64,
}

/// The live stacks of the tracked processes (one, with `pid`), counting only
/// allocations made at or before `cutoff_ns`; with `since_ns`, the stacks
/// that grew over that window, by their growth (a growth-only profile).
pub fn heap_stacks(
    snapshot: &Snapshot,
    pid: Option<u32>,
    cutoff_ns: Option<u64>,
    since_ns: Option<u64>,
    at_peak: bool,
) -> Vec<HeapStack> {
    let mut out = Vec::new();
    for p in snapshot
        .processes
        .iter()
        .filter(|p| pid.is_none_or(|pid| pid == p.id.pid))
    {
        let earlier = since_ns.and_then(|d| history::earlier(&p.history, snapshot.taken_at_ns, d));
        let view = p.peak.as_ref().filter(|_| at_peak).map(|pk| &pk.view);
        // The live heap with what each stack allocated (stacks that hold
        // nothing now included), unless the picture is of one moment.
        let whole = view.is_none() && earlier.is_none() && cutoff_ns.is_none();
        let stacks = match view {
            Some(v) => v.aggregated.stacks.clone(),
            None if whole => allocated_stacks(p, &aggregate(&p.allocations, None)).stacks,
            None => aggregate(&p.allocations, cutoff_ns).stacks,
        };
        let mut profiled = std::collections::HashSet::new();
        let frames_of = |id| match view {
            Some(v) => v
                .stacks
                .get(&id)
                .map(|s| (s.frames.clone(), s.walk))
                .unwrap_or_default(),
            None => (p.frames(id), p.walk(id)),
        };
        for s in stacks {
            let (bytes, allocations) = match earlier {
                Some(e) => match e.change(&s) {
                    (b, n) if b > 0 => (b as u64, n.max(0) as u64),
                    _ => continue,
                },
                None => (s.live_bytes, s.live_allocations),
            };
            let (mut frames, walk) = frames_of(s.stack_id);
            // A stack cut short says so at its root, where its callers are missing.
            if let Some(why) = walk.truncation()
                && !frames.is_empty()
            {
                frames.push(Frame {
                    function: Some(format!("[truncated: {why}]")),
                    module: None,
                    file: None,
                    line: None,
                    ..Frame::unknown(0)
                });
            }
            // A stack's totals go with its first row (it may hold blocks
            // of more than one allocator call).
            let allocated = p
                .alloc_profile
                .get(&s.stack_id)
                .filter(|_| whole && profiled.insert(s.stack_id));
            out.push(HeapStack {
                pid: p.id.pid,
                comm: p.id.comm.clone(),
                frames,
                bytes,
                allocations,
                allocated_bytes: allocated.map_or(0, |a| a.bytes),
                allocated_objects: allocated.map_or(0, |a| a.allocations),
            });
        }
    }
    out
}

/// The stacks as a picture of what they allocated since tracking began
/// (freed or not) instead of what they hold.
pub fn by_allocated(stacks: Vec<HeapStack>) -> Vec<HeapStack> {
    stacks
        .into_iter()
        .map(|s| HeapStack {
            bytes: s.allocated_bytes,
            allocations: s.allocated_objects,
            ..s
        })
        .collect()
}

/// A frame's name in a picture: the function, or the module and address.
pub fn frame_name(f: &Frame) -> String {
    match (&f.function, &f.module) {
        (Some(func), _) => func.clone(),
        (None, Some(m)) => format!(
            "{}+{}",
            m.rsplit('/').next().unwrap_or(m),
            f.address.as_deref().unwrap_or("?")
        ),
        (None, None) => f.address.clone().unwrap_or_else(|| "??".into()),
    }
}

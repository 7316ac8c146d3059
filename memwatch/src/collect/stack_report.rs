//! Stack reports built from a scan: a process's largest stacks, net of
//! replacement, or by what they allocated. The records themselves live in
//! [`crate::report`], below both collect and watch.

use memwatch_common::cookie::{CallKind, Family};

use super::{aggregate::Aggregated, snapshot::ProcessSnapshot};

/// Growth stacks symbolized per leak suspect, and per OOM victim memwatch
/// did not track.
pub const GROWTH_STACKS: usize = 5;

pub use crate::report::{Allocated, GrowthStackReport, StackReport};

impl From<&super::profile::StackAllocs> for Allocated {
    fn from(a: &super::profile::StackAllocs) -> Self {
        Allocated {
            allocations: a.allocations,
            bytes: a.bytes,
            temporary_allocations: a.temporary,
            temporary_bytes: a.temporary_bytes,
        }
    }
}

/// The `limit` stacks with the most live bytes net of replacement: all a
/// process's live allocations are growth since tracking began, and the
/// `untracked` bytes it freed meanwhile (blocks allocated before) are laid
/// on them (see `replacement`). An escalated suspect's evidence.
pub fn net_stack_reports(
    p: &ProcessSnapshot,
    agg: &Aggregated,
    untracked: u64,
    limit: usize,
    now_ns: u64,
) -> Vec<StackReport> {
    let growths: Vec<i64> = agg.stacks.iter().map(|s| s.live_bytes as i64).collect();
    let replaced = super::replacement::replacing(&growths, untracked);
    let mut order: Vec<usize> = (0..agg.stacks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(growths[i] - replaced[i] as i64));
    order.truncate(limit);
    let top = Aggregated {
        stacks: order.iter().map(|&i| agg.stacks[i]).collect(),
        ..Default::default()
    };
    let mut reports = stack_reports(p, &top, limit, now_ns);
    for (r, &i) in reports.iter_mut().zip(&order) {
        r.replacing_bytes = Some(replaced[i]);
        r.net_growth_bytes = Some(growths[i] - replaced[i] as i64);
    }
    reports
}

// Here rather than beside the type: it reads the watcher's `GrowthStack`,
// and `report` stays below watch.
impl GrowthStackReport {
    pub fn of(g: &crate::watch::GrowthStack) -> Self {
        GrowthStackReport {
            bytes: g.bytes,
            calls: g.calls,
            frames: g.frames.as_ref().map(|s| s.frames.clone()).unwrap_or_default(),
            walk: g.frames.as_ref().map(|s| s.walk).unwrap_or_default().into(),
        }
    }
}

/// The `limit` largest stacks of a process's aggregate, symbolized.
pub fn stack_reports(p: &ProcessSnapshot, agg: &Aggregated, limit: usize, now_ns: u64) -> Vec<StackReport> {
    let mut reports = stack_reports_from(&p.stacks, agg, limit, now_ns);
    for (r, s) in reports.iter_mut().zip(&agg.stacks) {
        r.allocated = p.alloc_profile.get(&s.stack_id).map(Allocated::from);
    }
    reports
}

/// The process's stacks by what they allocated since tracking began, most
/// first, with what they hold now: stacks whose blocks were all freed too.
pub fn allocated_stacks(p: &ProcessSnapshot, live: &Aggregated) -> Aggregated {
    let mut stacks: Vec<super::aggregate::StackAggregate> = p
        .alloc_profile
        .iter()
        .map(|(&stack_id, a)| {
            let held = live.stacks.iter().filter(|s| s.stack_id == stack_id);
            let (bytes, count, oldest) = held.fold((0, 0, u64::MAX), |(b, n, o), s| {
                (b + s.live_bytes, n + s.live_allocations, o.min(s.oldest_timestamp_ns))
            });
            super::aggregate::StackAggregate {
                stack_id,
                kind: a.kind,
                family: a.family,
                live_bytes: bytes,
                live_allocations: count,
                oldest_timestamp_ns: oldest,
            }
        })
        .collect();
    // Live stacks the profile missed (its map was full) keep their place.
    stacks.extend(
        live.stacks
            .iter()
            .filter(|s| !p.alloc_profile.contains_key(&s.stack_id))
            .copied(),
    );
    let bytes = |s: &super::aggregate::StackAggregate| p.alloc_profile.get(&s.stack_id).map_or(0, |a| a.bytes);
    stacks.sort_by(|a, b| bytes(b).cmp(&bytes(a)).then(a.stack_id.cmp(&b.stack_id)));
    Aggregated {
        live_bytes: live.live_bytes,
        live_allocations: live.live_allocations,
        stacks,
    }
}

/// As [`stack_reports`], with frames from `stacks` (a peak's, say).
pub fn stack_reports_from(
    stacks: &std::collections::HashMap<u64, std::sync::Arc<crate::symbolize::Stack>>,
    agg: &Aggregated,
    limit: usize,
    now_ns: u64,
) -> Vec<StackReport> {
    let frames = |id| stacks.get(&id).map(|s| s.frames.clone()).unwrap_or_default();
    let walk = |id| stacks.get(&id).map(|s| s.walk).unwrap_or_default();
    agg.stacks
        .iter()
        .take(limit)
        .map(|s| StackReport {
            live_bytes: s.live_bytes,
            live_allocations: s.live_allocations,
            oldest_age_seconds: now_ns.saturating_sub(s.oldest_timestamp_ns) as f64 / 1e9,
            call: CallKind::from_u8(s.kind).map_or("unknown", CallKind::name),
            allocator: Family::from_u8(s.family).map_or("unknown", Family::name),
            frames: frames(s.stack_id),
            walk: walk(s.stack_id).into(),
            growth_bytes: None,
            growth_allocations: None,
            replacing_bytes: None,
            net_growth_bytes: None,
            allocated: None,
        })
        .collect()
}

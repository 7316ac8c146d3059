//! Live allocations grouped by stack: the heart of a leak report.

use std::collections::HashMap;

use super::live_alloc::LiveAlloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackAggregate {
    pub stack_id: u64,
    /// The allocator call ([`memwatch_common::cookie::CallKind`]) and family.
    pub kind: u8,
    pub family: u8,
    pub live_bytes: u64,
    pub live_allocations: u64,
    pub oldest_timestamp_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aggregated {
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// Largest first (then most allocations, then stack id, for stable output).
    pub stacks: Vec<StackAggregate>,
}

/// Groups allocations made at or before `cutoff_ns` (all when None) by stack
/// and allocator call.
pub fn aggregate(allocs: &[LiveAlloc], cutoff_ns: Option<u64>) -> Aggregated {
    let mut by_stack: HashMap<(u64, u8, u8), StackAggregate> = HashMap::new();
    let mut out = Aggregated::default();
    for a in allocs {
        if cutoff_ns.is_some_and(|c| a.timestamp_ns > c) {
            continue;
        }
        out.live_bytes += a.size;
        out.live_allocations += 1;
        let e = by_stack
            .entry((a.stack_id, a.kind, a.family))
            .or_insert(StackAggregate {
                stack_id: a.stack_id,
                kind: a.kind,
                family: a.family,
                live_bytes: 0,
                live_allocations: 0,
                oldest_timestamp_ns: a.timestamp_ns,
            });
        e.live_bytes += a.size;
        e.live_allocations += 1;
        e.oldest_timestamp_ns = e.oldest_timestamp_ns.min(a.timestamp_ns);
    }
    out.stacks = by_stack.into_values().collect();
    out.stacks.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then(b.live_allocations.cmp(&a.live_allocations))
            .then(a.stack_id.cmp(&b.stack_id))
            .then(a.kind.cmp(&b.kind))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(stack_id: u64, size: u64, ts: u64) -> LiveAlloc {
        LiveAlloc {
            stack_id,
            size,
            timestamp_ns: ts,
            kind: 1,
            family: 1,
        }
    }

    #[test]
    fn groups_by_stack_largest_first() {
        let allocs = [
            alloc(7, 100, 50),
            alloc(9, 1000, 40),
            alloc(7, 100, 10),
            alloc(9, 24, 60),
        ];
        let a = aggregate(&allocs, None);
        assert_eq!((a.live_bytes, a.live_allocations), (1224, 4));
        assert_eq!(a.stacks.len(), 2);
        assert_eq!(
            (
                a.stacks[0].stack_id,
                a.stacks[0].live_bytes,
                a.stacks[0].live_allocations
            ),
            (9, 1024, 2)
        );
        assert_eq!(a.stacks[0].oldest_timestamp_ns, 40);
        assert_eq!(
            (
                a.stacks[1].stack_id,
                a.stacks[1].live_bytes,
                a.stacks[1].oldest_timestamp_ns
            ),
            (7, 200, 10)
        );
    }

    #[test]
    fn the_cutoff_keeps_old_allocations_only() {
        let allocs = [alloc(7, 100, 50), alloc(9, 1000, 40), alloc(7, 100, 10)];
        let a = aggregate(&allocs, Some(45));
        assert_eq!((a.live_bytes, a.live_allocations), (1100, 2));
        assert_eq!(a.stacks[0].stack_id, 9);
        assert_eq!(a.stacks[1].live_bytes, 100);
    }

    #[test]
    fn same_stack_different_call_stays_apart() {
        let mut b = alloc(7, 10, 1);
        b.kind = 2;
        let a = aggregate(&[alloc(7, 10, 1), b], None);
        assert_eq!(a.stacks.len(), 2);
    }

    #[test]
    fn nothing_live_is_an_empty_report() {
        assert_eq!(aggregate(&[], None), Aggregated::default());
    }
}

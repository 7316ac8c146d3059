//! The allocation profile: per stack, every allocation since tracking
//! began (the kernel's cumulative totals), beside what is live — Go's
//! `alloc_objects`/`alloc_space` next to `inuse_*` — and the temporary ones:
//! allocations made and freed between two scans (heaptrack's "temporary
//! allocations"), counted here from the totals' growth less the blocks made
//! since the last scan that are still live.

use std::collections::HashMap;

use memwatch_common::alloc::StackTotals;

use super::live_alloc::LiveAlloc;

/// One stack's allocations since tracking began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackAllocs {
    pub allocations: u64,
    pub bytes: u64,
    /// Of them, freed before the scan after the one they were made in.
    pub temporary: u64,
    pub temporary_bytes: u64,
    /// The allocator call and family (of its first allocation).
    pub kind: u8,
    pub family: u8,
}

/// What one process's profile remembers between scans.
#[derive(Debug, Default)]
pub struct ProfileState {
    /// Totals at the last scan, per stack.
    previous: HashMap<u64, (u64, u64)>,
    /// Temporary allocations so far, per stack.
    temporary: HashMap<u64, (u64, u64)>,
    /// The probes' clock when the last scan read the maps (None before the
    /// first): blocks stamped with it or later were made since.
    previous_stamp: Option<u64>,
}

impl ProfileState {
    /// Takes in a scan: the kernel's `totals` by stack and the `live`
    /// allocations, read when the probes' clock said `stamp` (allocations
    /// are stamped at its resolution, `CLOCK_TICK_NS`: a block made in the
    /// tick before a scan counts as made after it, and a temporary one of
    /// that tick may be missed). Returns the profile.
    pub fn update(
        &mut self,
        totals: &HashMap<u64, StackTotals>,
        live: &[LiveAlloc],
        stamp: u64,
    ) -> HashMap<u64, StackAllocs> {
        let mut new_live: HashMap<u64, (u64, u64)> = HashMap::new();
        for a in live
            .iter()
            .filter(|a| self.previous_stamp.is_none_or(|t| a.timestamp_ns >= t))
        {
            let e = new_live.entry(a.stack_id).or_default();
            e.0 += 1;
            e.1 += a.size;
        }
        let mut out = HashMap::with_capacity(totals.len());
        for (&stack, t) in totals {
            let (was, was_bytes) = self.previous.get(&stack).copied().unwrap_or((0, 0));
            let (live_n, live_b) = new_live.get(&stack).copied().unwrap_or((0, 0));
            let tmp = self.temporary.entry(stack).or_default();
            tmp.0 += t.allocations.saturating_sub(was).saturating_sub(live_n);
            tmp.1 += t.bytes.saturating_sub(was_bytes).saturating_sub(live_b);
            out.insert(
                stack,
                StackAllocs {
                    allocations: t.allocations,
                    bytes: t.bytes,
                    temporary: tmp.0,
                    temporary_bytes: tmp.1,
                    kind: t.kind,
                    family: t.family,
                },
            );
        }
        self.previous = totals.iter().map(|(&s, t)| (s, (t.allocations, t.bytes))).collect();
        self.temporary.retain(|s, _| totals.contains_key(s));
        self.previous_stamp = Some(stamp);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(n: u64, bytes: u64) -> StackTotals {
        StackTotals {
            allocations: n,
            bytes,
            kind: 1,
            family: 1,
            ..Default::default()
        }
    }

    fn live(stack_id: u64, size: u64, at: u64) -> LiveAlloc {
        LiveAlloc {
            stack_id,
            size,
            timestamp_ns: at,
            kind: 1,
            family: 1,
        }
    }

    #[test]
    fn what_was_made_and_freed_between_scans_is_temporary() {
        let mut s = ProfileState::default();
        // First scan at t=100: stack 1 made 10 blocks, 2 of them live.
        let p = s.update(
            &HashMap::from([(1, totals(10, 1000))]),
            &[live(1, 100, 50), live(1, 100, 60)],
            100,
        );
        assert_eq!(
            (p[&1].allocations, p[&1].temporary, p[&1].temporary_bytes),
            (10, 8, 800)
        );
        // Second scan at t=200: 5 more made, one still live (made at 150);
        // the earlier two are live still and count for nothing new.
        let l = [live(1, 100, 50), live(1, 100, 60), live(1, 100, 150)];
        let p = s.update(&HashMap::from([(1, totals(15, 1500))]), &l, 200);
        assert_eq!((p[&1].allocations, p[&1].bytes, p[&1].temporary), (15, 1500, 12));
        // A block that outlived a scan and is freed later is no temporary.
        let p = s.update(&HashMap::from([(1, totals(15, 1500))]), &l[..2], 300);
        assert_eq!(p[&1].temporary, 12);
    }

    #[test]
    fn a_stack_that_only_leaks_has_no_temporaries() {
        let mut s = ProfileState::default();
        let l: Vec<LiveAlloc> = (0..4).map(|i| live(7, 10, i * 10)).collect();
        let p = s.update(&HashMap::from([(7, totals(4, 40))]), &l, 45);
        assert_eq!(p[&7].temporary, 0);
    }
}

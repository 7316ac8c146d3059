//! Live bytes and allocations per stack at earlier scans, per tracked
//! process, for growth since a moment (`/leaks?since=`). Readings are kept
//! densely while recent and more sparsely with age (no gap wider than half
//! the age of the reading after it), so a few dozen cover an hour whatever
//! the scan interval; each holds one pair of numbers per live stack.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::{aggregate::StackAggregate, live_alloc::LiveAlloc};

/// Stack id, allocator call and family: what
/// [`super::aggregate::aggregate`] groups by.
pub type StackKey = (u64, u8, u8);

/// One scan's live bytes and allocations by stack, of one process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub taken_ns: u64,
    pub taken_unix: f64,
    pub stacks: HashMap<StackKey, (u64, u64)>,
    /// The process's counters then (untracked frees, for net growth).
    pub counters: memwatch_common::alloc::ProcCounters,
}

impl Reading {
    /// Sums `allocs` by stack (unsorted: a scan takes one per process).
    pub fn of(allocs: &[LiveAlloc], taken_ns: u64, taken_unix: f64) -> Self {
        let mut stacks: HashMap<StackKey, (u64, u64)> = HashMap::new();
        for a in allocs {
            let e = stacks.entry((a.stack_id, a.kind, a.family)).or_default();
            e.0 += a.size;
            e.1 += 1;
        }
        Reading {
            taken_ns,
            taken_unix,
            stacks,
            counters: Default::default(),
        }
    }

    /// Live bytes then, over all stacks.
    pub fn live_bytes(&self) -> u64 {
        self.stacks.values().map(|&(bytes, _)| bytes).sum()
    }

    /// How much `s` grew since this reading: bytes, allocations.
    pub fn change(&self, s: &StackAggregate) -> (i64, i64) {
        let (bytes, count) = self.stacks.get(&key(s)).copied().unwrap_or((0, 0));
        (
            s.live_bytes as i64 - bytes as i64,
            s.live_allocations as i64 - count as i64,
        )
    }
}

fn key(s: &StackAggregate) -> StackKey {
    (s.stack_id, s.kind, s.family)
}

/// Readings older than this are dropped.
pub const KEPT_SECONDS: u64 = 3600;
/// And no process keeps more than this many (a bound whatever the timing).
const MAX_READINGS: usize = 48;

/// The readings of every tracked process (by pid and generation).
#[derive(Debug, Default)]
pub struct History {
    by_process: HashMap<(u32, u32), VecDeque<Arc<Reading>>>,
}

impl History {
    /// Adds a reading of `process` and returns its readings, oldest first.
    pub fn record(&mut self, process: (u32, u32), reading: Reading) -> Vec<Arc<Reading>> {
        let readings = self.by_process.entry(process).or_default();
        let now = reading.taken_ns;
        readings.push_back(Arc::new(reading));
        let times: Vec<u64> = readings.iter().map(|r| r.taken_ns).collect();
        let keep = thin(&times, now);
        let mut i = 0;
        readings.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        readings.iter().cloned().collect()
    }

    /// Forgets processes no longer tracked.
    pub fn retain(&mut self, tracked: impl Fn(&(u32, u32)) -> bool) {
        self.by_process.retain(|k, _| tracked(k));
    }
}

/// Which of the reading times (oldest first, the last one `now`) to keep:
/// none older than [`KEPT_SECONDS`]; of the rest, a reading goes when its
/// neighbours are within half the age of the newer one, so the gaps grow
/// with age.
pub fn thin(times: &[u64], now: u64) -> Vec<bool> {
    let n = times.len();
    let mut keep: Vec<bool> = times
        .iter()
        .map(|&t| now.saturating_sub(t) <= KEPT_SECONDS * 1_000_000_000)
        .collect();
    // From the newest down: `newer` is the closest kept reading after i.
    let mut newer = n.saturating_sub(1);
    for i in (1..n.saturating_sub(1)).rev() {
        if !keep[i] {
            continue;
        }
        let older = (0..i).rev().find(|&j| keep[j]);
        let Some(older) = older else { break };
        let gap = times[newer] - times[older];
        if gap <= now.saturating_sub(times[newer]) / 2 {
            keep[i] = false;
        } else {
            newer = i;
        }
    }
    // The hard bound: the oldest go first.
    let mut excess = keep.iter().filter(|&&k| k).count().saturating_sub(MAX_READINGS);
    for k in keep.iter_mut() {
        if excess == 0 {
            break;
        }
        if *k {
            *k = false;
            excess -= 1;
        }
    }
    keep
}

/// The reading to measure growth over the last `since_ns` from: the newest
/// taken at or before then, else the oldest there is.
pub fn earlier(readings: &[Arc<Reading>], now_ns: u64, since_ns: u64) -> Option<&Reading> {
    let cutoff = now_ns.saturating_sub(since_ns);
    readings
        .iter()
        .rev()
        .find(|r| r.taken_ns <= cutoff)
        .or_else(|| readings.first())
        .map(|r| &**r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn readings_thin_out_with_age_and_stay_bounded() {
        let mut h = History::default();
        let mut kept = Vec::new();
        // Two hours of scans every second.
        for t in 1..=7200u64 {
            kept = h.record(
                (1, 0),
                Reading {
                    taken_ns: t * S,
                    ..Default::default()
                },
            );
            assert!(kept.len() <= MAX_READINGS);
        }
        let ages: Vec<u64> = kept.iter().map(|r| 7200 - r.taken_ns / S).collect();
        assert!(ages.len() < 40, "{ages:?}");
        assert!(*ages.first().unwrap() <= KEPT_SECONDS, "{ages:?}");
        assert_eq!(*ages.last().unwrap(), 0);
        // Any window is covered to within half again its length.
        for since in [1, 2, 5, 10, 30, 60, 300, 1800] {
            let r = earlier(&kept, 7200 * S, since * S).unwrap();
            let covered = 7200 - r.taken_ns / S;
            assert!(
                covered >= since && covered as f64 <= since as f64 * 1.5 + 1.0,
                "{since}: {covered} {ages:?}"
            );
        }
    }

    #[test]
    fn growth_is_the_change_per_stack_and_a_new_stack_grows_from_zero() {
        // `n` blocks of 100 bytes on each stack.
        let allocs = |stacks: &[(u64, u64)]| -> Vec<LiveAlloc> {
            stacks
                .iter()
                .flat_map(|&(id, n)| {
                    (0..n).map(move |_| LiveAlloc {
                        stack_id: id,
                        size: 100,
                        timestamp_ns: 0,
                        kind: 0,
                        family: 0,
                    })
                })
                .collect()
        };
        let before = Reading::of(&allocs(&[(1, 10), (2, 5)]), 0, 0.0);
        let now = super::super::aggregate::aggregate(&allocs(&[(1, 30), (2, 5), (3, 1)]), None);
        let changes: Vec<(i64, i64)> = now.stacks.iter().map(|s| before.change(s)).collect();
        assert_eq!(changes, [(2000, 20), (0, 0), (100, 1)]);
        assert!(earlier(&[], 10, 5).is_none());
    }

    #[test]
    fn untracked_processes_are_forgotten() {
        let mut h = History::default();
        h.record((1, 0), Reading::default());
        h.record((2, 0), Reading::default());
        h.retain(|k| k.0 == 2);
        assert_eq!(h.by_process.len(), 1);
    }
}

//! The last census taken of each tracked Python process (by the periodic
//! census for the metrics), kept so that an OOM kill's post-mortem can say
//! what the process held by type when it died. Bounded: the processes
//! censused most recently.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use super::census::{Census, TypeCount};

/// Processes whose last census is kept.
const KEPT: usize = 256;
/// Types kept of each census (the largest).
pub const TYPES_KEPT: usize = 10;

#[derive(Debug, Clone, Serialize)]
pub struct LatestCensus {
    /// Told apart from a later process with the same pid.
    #[serde(skip)]
    pub start_time: u64,
    pub taken_unix: f64,
    pub objects: u64,
    /// The largest types, by bytes.
    pub types: Vec<TypeCount>,
    /// False when the walk stopped early (see `/objects`); then why.
    pub consistent: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inconsistency: Option<String>,
}

/// Shared by the census's taker and the collector.
#[derive(Clone, Default)]
pub struct LatestCensuses(Arc<Mutex<HashMap<u32, LatestCensus>>>);

impl LatestCensuses {
    /// Keeps `census` as `pid`'s last, unless it is one that the lists
    /// changing under it cut short and a census of the same process is
    /// already kept: a process dying at its memory limit is read while the
    /// kernel tears it down, and an earlier whole census says more than a
    /// fragment of the last.
    pub fn record(&self, pid: u32, start_time: u64, taken_unix: f64, census: &Census) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if census.worth_retaking() && m.get(&pid).is_some_and(|c| c.start_time == start_time) {
            return;
        }
        m.insert(
            pid,
            LatestCensus {
                start_time,
                taken_unix,
                objects: census.objects,
                types: census.types.iter().take(TYPES_KEPT).cloned().collect(),
                consistent: census.consistent,
                inconsistency: census.inconsistency.clone(),
            },
        );
        while m.len() > KEPT {
            let Some(oldest) = m
                .iter()
                .min_by(|a, b| a.1.taken_unix.total_cmp(&b.1.taken_unix))
                .map(|(&p, _)| p)
            else {
                break;
            };
            m.remove(&oldest);
        }
    }

    /// The last census of `pid`, if it is of the process started at
    /// `start_time` (when known).
    pub fn get(&self, pid: u32, start_time: Option<u64>) -> Option<LatestCensus> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&pid)
            .filter(|c| start_time.is_none_or(|t| t == c.start_time))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census(objects: u64) -> Census {
        Census {
            objects,
            types: (0..20)
                .map(|i| TypeCount {
                    name: format!("T{i}"),
                    module: "m".into(),
                    count: 1,
                    bytes: 100 - i,
                })
                .collect(),
            gc: Default::default(),
            consistent: true,
            inconsistency: None,
            limited: false,
        }
    }

    fn cut_short(objects: u64, limited: bool) -> Census {
        Census {
            consistent: false,
            inconsistency: Some("generation 2 changed during the census".into()),
            limited,
            ..census(objects)
        }
    }

    #[test]
    fn the_last_census_of_the_same_process_is_kept_and_bounded() {
        let l = LatestCensuses::default();
        l.record(7, 111, 1.0, &census(5));
        l.record(7, 111, 2.0, &census(6));
        let c = l.get(7, Some(111)).unwrap();
        assert_eq!((c.objects, c.taken_unix, c.types.len()), (6, 2.0, TYPES_KEPT));
        assert!(l.get(7, Some(222)).is_none(), "another process with the pid");
        assert!(l.get(7, None).is_some());
        for pid in 0..(KEPT as u32 + 10) {
            l.record(1000 + pid, 1, 10.0 + pid as f64, &census(1));
        }
        assert!(l.get(7, None).is_none(), "the oldest went first");
        assert_eq!(l.0.lock().unwrap().len(), KEPT);
    }

    #[test]
    fn a_census_cut_short_by_changes_does_not_replace_a_kept_one() {
        let l = LatestCensuses::default();
        l.record(7, 111, 1.0, &cut_short(3, false));
        let c = l.get(7, Some(111)).unwrap();
        assert!(!c.consistent && c.inconsistency.is_some(), "better than none: {c:?}");
        l.record(7, 111, 2.0, &census(800));
        l.record(7, 111, 3.0, &cut_short(40, false));
        assert_eq!(l.get(7, Some(111)).unwrap().objects, 800);
        // A new process with the pid has nothing to keep.
        l.record(7, 222, 4.0, &cut_short(40, false));
        assert_eq!(l.get(7, Some(222)).unwrap().objects, 40);
        // Limits stop every walk alike: such a census is the best there is.
        l.record(7, 222, 5.0, &census(900));
        l.record(7, 222, 6.0, &cut_short(20_000_000, true));
        assert_eq!(l.get(7, Some(222)).unwrap().objects, 20_000_000);
    }
}

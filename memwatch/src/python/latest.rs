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
}

/// Shared by the census's taker and the collector.
#[derive(Clone, Default)]
pub struct LatestCensuses(Arc<Mutex<HashMap<u32, LatestCensus>>>);

impl LatestCensuses {
    pub fn record(&self, pid: u32, start_time: u64, taken_unix: f64, census: &Census) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(
            pid,
            LatestCensus {
                start_time,
                taken_unix,
                objects: census.objects,
                types: census.types.iter().take(TYPES_KEPT).cloned().collect(),
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
}

//! Rates from two readings of monotonic counters.

use memwatch_common::alloc::ProcCounters;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rates {
    pub allocations_per_second: f64,
    pub frees_per_second: f64,
    pub allocated_bytes_per_second: f64,
    pub freed_bytes_per_second: f64,
}

/// Per-second rates between two readings `seconds` apart. A counter that went
/// backwards (a new generation) gives 0, not a negative rate.
pub fn rates(prev: &ProcCounters, cur: &ProcCounters, seconds: f64) -> Rates {
    if seconds <= 0.0 {
        return Rates::default();
    }
    let r = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    Rates {
        allocations_per_second: r(prev.allocations, cur.allocations),
        frees_per_second: r(prev.frees, cur.frees),
        allocated_bytes_per_second: r(prev.allocated_bytes, cur.allocated_bytes),
        freed_bytes_per_second: r(prev.freed_bytes, cur.freed_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_time() {
        let a = ProcCounters {
            allocations: 100,
            frees: 50,
            allocated_bytes: 1000,
            freed_bytes: 500,
            ..Default::default()
        };
        let b = ProcCounters {
            allocations: 300,
            frees: 250,
            allocated_bytes: 5000,
            freed_bytes: 500,
            ..Default::default()
        };
        let r = rates(&a, &b, 2.0);
        assert_eq!(r.allocations_per_second, 100.0);
        assert_eq!(r.frees_per_second, 100.0);
        assert_eq!(r.allocated_bytes_per_second, 2000.0);
        assert_eq!(r.freed_bytes_per_second, 0.0);
    }

    #[test]
    fn no_time_or_backwards_counters_give_zero() {
        let a = ProcCounters {
            allocations: 100,
            ..Default::default()
        };
        assert_eq!(rates(&a, &a, 0.0), Rates::default());
        assert_eq!(rates(&a, &ProcCounters::default(), 1.0).allocations_per_second, 0.0);
    }
}

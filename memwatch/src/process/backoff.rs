//! Processes that match `--exe` but cannot be tracked (no allocator to
//! probe, an unreadable binary): retried less and less often, and reported
//! once per reason rather than on every scan.

use std::collections::HashMap;

/// Seconds before the first retry; each failure doubles it up to [`LONGEST`].
const FIRST: f64 = 10.0;
const LONGEST: f64 = 600.0;

struct Entry {
    /// With the pid, the process's identity (a reused pid starts afresh).
    start_time: u64,
    next_try: f64,
    delay: f64,
    reason: String,
}

/// Backoff per process; bounded by the processes alive (see [`Backoff::retain`]).
#[derive(Default)]
pub struct Backoff {
    entries: HashMap<u32, Entry>,
}

impl Backoff {
    /// Whether the process may be tried at `now`.
    pub fn may_try(&self, pid: u32, start_time: u64, now: f64) -> bool {
        self.entries
            .get(&pid)
            .is_none_or(|e| e.start_time != start_time || now >= e.next_try)
    }

    /// Notes a failure; true when it should be reported (a new process or
    /// a new reason), false when it was said already.
    pub fn failed(&mut self, pid: u32, start_time: u64, reason: &str, now: f64) -> bool {
        match self.entries.get_mut(&pid) {
            Some(e) if e.start_time == start_time => {
                e.delay = (e.delay * 2.0).min(LONGEST);
                e.next_try = now + e.delay;
                let new_reason = e.reason != reason;
                if new_reason {
                    e.reason = reason.to_string();
                }
                new_reason
            }
            _ => {
                self.entries.insert(
                    pid,
                    Entry {
                        start_time,
                        next_try: now + FIRST,
                        delay: FIRST,
                        reason: reason.to_string(),
                    },
                );
                true
            }
        }
    }

    pub fn forget(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// Drops the processes `alive` says are gone.
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.entries.retain(|pid, _| alive(*pid));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_say_why_once() {
        let mut b = Backoff::default();
        assert!(b.may_try(7, 100, 0.0));
        assert!(b.failed(7, 100, "no allocator", 0.0));
        assert!(!b.may_try(7, 100, 5.0));
        assert!(b.may_try(7, 100, 10.0));
        assert!(!b.failed(7, 100, "no allocator", 10.0));
        assert!(!b.may_try(7, 100, 29.0));
        assert!(b.may_try(7, 100, 30.0));
        // Doubling stops at ten minutes.
        let mut now = 30.0;
        for _ in 0..20 {
            assert!(!b.failed(7, 100, "no allocator", now));
            now += 1000.0;
        }
        assert!(!b.may_try(7, 100, now - 1000.0 + 599.0));
        assert!(b.may_try(7, 100, now - 1000.0 + 600.0));
        // A new reason is said again.
        assert!(b.failed(7, 100, "unreadable binary", now));
    }

    #[test]
    fn a_reused_pid_starts_afresh_and_gone_processes_are_dropped() {
        let mut b = Backoff::default();
        b.failed(7, 100, "no allocator", 0.0);
        assert!(b.may_try(7, 200, 1.0));
        assert!(b.failed(7, 200, "no allocator", 1.0));
        b.failed(8, 100, "no allocator", 0.0);
        b.retain(|pid| pid == 8);
        assert_eq!(b.len(), 1);
        assert!(b.may_try(7, 200, 2.0));
    }
}

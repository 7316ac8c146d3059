//! Growth net of replacement. A process memwatch started tracking mid-life
//! frees blocks it never saw allocated ("untracked frees"), and the blocks
//! that replace them look like growth: a warm cache refilling entries grows
//! by nothing, yet every refill is a new live allocation. Over a window the
//! process's net growth is its tracked growth less what its untracked frees
//! released; that release is laid on the stacks that grew, in proportion to
//! their growth (memwatch cannot tell which allocation replaced which), as
//! `replacing_bytes`, and the rest is their net growth.

use memwatch_common::{alloc::glibc_usable_for, cookie::Family};

use super::live_alloc::LiveAlloc;

/// What `frees` blocks freed untracked, of `usable` usable bytes in all
/// (read from glibc's headers), were asked for: glibc rounds every request
/// up, and the blocks memwatch sees allocated (`live`, whose requests it
/// knows) tell by how much on average in this process. Exact for a process
/// whose blocks are of one size, as a cache's often are.
pub fn untracked_request_bytes(usable: u64, frees: u64, live: &[LiveAlloc]) -> u64 {
    let libc = live.iter().filter(|a| a.family == Family::Libc as u8);
    let (mut n, mut slack) = (0u64, 0u64);
    for a in libc {
        n += 1;
        slack += glibc_usable_for(a.size).saturating_sub(a.size);
    }
    let per_block = if n == 0 { 0.0 } else { slack as f64 / n as f64 };
    (usable as f64 - frees as f64 * per_block).max(0.0) as u64
}

/// For stacks that changed by `growths` bytes over a window in which
/// `untracked` bytes were freed untracked: the bytes of each stack's growth
/// that replaced them (0 for stacks that did not grow; never more than a
/// stack grew, nor in all more than `untracked`).
pub fn replacing(growths: &[i64], untracked: u64) -> Vec<u64> {
    let grown: u128 = growths.iter().filter(|&&g| g > 0).map(|&g| g as u128).sum();
    if grown == 0 || untracked == 0 {
        return vec![0; growths.len()];
    }
    let offset = (untracked as u128).min(grown);
    growths
        .iter()
        .map(|&g| if g > 0 { (g as u128 * offset / grown) as u64 } else { 0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refill_that_replaces_what_was_freed_grows_by_nothing() {
        assert_eq!(replacing(&[100_000], 100_000), [100_000]);
        assert_eq!(replacing(&[100_000], 250_000), [100_000], "never more than it grew");
    }

    #[test]
    fn replacement_is_shared_by_growth_and_spares_what_shrank() {
        assert_eq!(replacing(&[300, 100, -50, 0], 200), [150, 50, 0, 0]);
        let r = replacing(&[1_000_000, 3], 999_999);
        assert!(r.iter().sum::<u64>() <= 999_999);
    }

    #[test]
    fn untracked_requests_are_estimated_from_the_live_blocks_slack() {
        let live = |size| LiveAlloc {
            stack_id: 1,
            size,
            timestamp_ns: 0,
            kind: 1,
            family: Family::Libc as u8,
        };
        // 1000-byte blocks have no slack: 100 frees of usable 1000 are 100,000.
        assert_eq!(untracked_request_bytes(100_000, 100, &[live(1000); 5]), 100_000);
        // 1017-byte blocks get 1032 usable: 15 bytes each.
        assert_eq!(untracked_request_bytes(103_200, 100, &[live(1017); 3]), 101_700);
        // Nothing seen allocated: the usable bytes stand.
        assert_eq!(untracked_request_bytes(5000, 5, &[]), 5000);
        assert_eq!(untracked_request_bytes(0, 5, &[live(1017)]), 0);
    }

    #[test]
    fn without_untracked_frees_growth_is_growth() {
        assert_eq!(replacing(&[5, 7], 0), [0, 0]);
        assert_eq!(replacing(&[-5], 10), [0]);
        assert!(replacing(&[], 10).is_empty());
        assert_eq!(replacing(&[i64::MAX, i64::MAX], u64::MAX), [i64::MAX as u64; 2]);
    }
}

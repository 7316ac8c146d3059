//! Binary search in the shape the eBPF verifier can check cheaply.

/// How many of `len` ascending keys are at or below a probe, `le(i)` telling
/// whether key `i` is; None when a key cannot be read. `STEPS` must be at
/// least log2 of the largest `len` (a longer table is searched only in part).
///
/// It halves a count rather than narrowing `[lo, hi)`, so that no
/// comparison in it is one the verifier can decide from ranges alone (0
/// against a length known to be positive, say). A decided comparison marks
/// its registers precise; precise bounds keep the verifier from pruning,
/// and it then walks every path of the search apart, and all the code after
/// it once per path: 678,332 instructions for the allocator's return
/// program with `[lo, hi)` searches, 26,694 with this one.
#[inline(always)]
pub fn at_or_below<const STEPS: usize>(len: u32, mut le: impl FnMut(u32) -> Option<bool>) -> Option<u32> {
    if len == 0 {
        return Some(0);
    }
    let (mut base, mut n) = (0u32, len);
    for _ in 0..STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        if le(base + half)? {
            base += half;
        }
        n -= half;
    }
    Some(base + u32::from(le(base)?))
}

#[cfg(all(test, feature = "user"))]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::at_or_below;

    fn count(keys: &[u32], probe: u32) -> Option<u32> {
        at_or_below::<27>(keys.len() as u32, |i| Some(keys[i as usize] <= probe))
    }

    #[test]
    fn counts_the_keys_at_or_below_the_probe_for_every_probe_and_length() {
        for len in 0..70u32 {
            // Keys with repeats: 0, 0, 2, 2, 4, 4, ...
            let keys: Vec<u32> = (0..len).map(|i| i / 2 * 2).collect();
            for probe in 0..len + 3 {
                let expected = keys.iter().filter(|k| **k <= probe).count() as u32;
                assert_eq!(count(&keys, probe), Some(expected), "len {len} probe {probe}");
            }
        }
    }

    #[test]
    fn enough_steps_for_the_largest_tables() {
        // The mappings' search takes 8 steps for 128 entries, the rows' 27
        // for 2^26.
        let keys: Vec<u32> = (0..128).collect();
        assert_eq!(at_or_below::<8>(128, |i| Some(keys[i as usize] <= 127)), Some(128));
        assert_eq!(at_or_below::<8>(128, |i| Some(keys[i as usize] < 1)), Some(1));
        let len = 1u32 << 26;
        for probe in [0, 1, 12_345_678, len - 2, len - 1, len + 5] {
            assert_eq!(
                at_or_below::<27>(len, |i| Some(i <= probe)),
                Some(probe.min(len - 1) + 1)
            );
        }
    }

    #[test]
    fn an_unreadable_key_fails_the_search() {
        assert_eq!(at_or_below::<8>(10, |i| (i != 5).then_some(i <= 7)), None);
        assert_eq!(at_or_below::<8>(0, |_| None), Some(0));
    }
}

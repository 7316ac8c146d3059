use super::{AllocKey, AllocRecord, CallEntry, Peak, ProcCounters, StackTotalKey, StackTotals, Tracked};

// SAFETY: all are #[repr(C)] plain integers with explicit padding.
unsafe impl aya::Pod for AllocKey {}
unsafe impl aya::Pod for AllocRecord {}
unsafe impl aya::Pod for ProcCounters {}
unsafe impl aya::Pod for Tracked {}
unsafe impl aya::Pod for Peak {}
unsafe impl aya::Pod for StackTotalKey {}
unsafe impl aya::Pod for StackTotals {}
unsafe impl aya::Pod for super::StackTotalsSlot {}
unsafe impl aya::Pod for CallEntry {}

impl ProcCounters {
    /// Sums per-CPU copies.
    pub fn sum<'a>(values: impl IntoIterator<Item = &'a ProcCounters>) -> ProcCounters {
        values.into_iter().fold(ProcCounters::default(), |acc, v| ProcCounters {
            allocations: acc.allocations + v.allocations,
            frees: acc.frees + v.frees,
            allocated_bytes: acc.allocated_bytes + v.allocated_bytes,
            freed_bytes: acc.freed_bytes + v.freed_bytes,
            untracked_frees: acc.untracked_frees + v.untracked_frees,
            lost_allocations: acc.lost_allocations + v.lost_allocations,
            lost_bytes: acc.lost_bytes + v.lost_bytes,
            untracked_freed_usable_bytes: acc.untracked_freed_usable_bytes + v.untracked_freed_usable_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::cookie::CallKind::{self, *};

    unsafe extern "C" {
        fn malloc(size: usize) -> *mut u8;
        fn free(p: *mut u8);
        fn malloc_usable_size(p: *mut u8) -> usize;
        fn mallopt(param: i32, value: i32) -> i32;
    }

    /// glibc's M_MMAP_THRESHOLD: setting it stops glibc from raising the
    /// threshold after a mapped block is freed (other tests in this binary
    /// free some), which would serve 200 KB from the heap.
    const M_MMAP_THRESHOLD: i32 = -3;

    #[test]
    fn stacks_spread_over_the_cache_slots() {
        let mut used = std::collections::HashSet::new();
        for stack_id in 0..1000u64 {
            let key = StackTotalKey {
                tgid: 42,
                generation: 1 << 16,
                stack_id: stack_id.wrapping_mul(0xA24B_AED4_963E_E407),
            };
            let slot = stack_totals_slot(&key);
            assert!(slot < STACK_TOTALS_CACHE_SLOTS);
            used.insert(slot);
        }
        assert!(used.len() > 200, "{} slots used", used.len());
    }

    /// Against this host's glibc: the header read as the probe reads it,
    /// and the usable size a request gets, both as malloc_usable_size says.
    #[test]
    fn glibcs_sizes_are_read_and_predicted_as_glibc_gives_them() {
        // SAFETY: a glibc tunable, set before the blocks below.
        unsafe { mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD as i32) };
        for size in [1u64, 8, 24, 25, 40, 1000, 1016, 1017, 4096, 100_000, 200_000, 1 << 20] {
            // SAFETY: a block of `size` bytes, its header read before it is freed.
            unsafe {
                let p = malloc(size as usize);
                let usable = malloc_usable_size(p) as u64;
                let header = (p.sub(8) as *const u64).read_unaligned();
                assert_eq!(glibc_usable_size(header), usable, "header of {size}");
                assert_eq!(glibc_usable_for(size), usable, "prediction for {size}");
                free(p);
            }
        }
        assert_eq!(glibc_usable_size(0), 0);
        assert_eq!(glibc_usable_size(u64::MAX), 0);
    }

    fn entry(kind: CallKind, size: u64, aux: u64) -> CallEntry {
        CallEntry {
            entry_sp: 0x7000,
            timestamp_ns: 1_000,
            size,
            aux,
            kind: kind as u8,
            family: 1,
            _pad0: 0,
            _pad1: 0,
        }
    }

    fn args(a0: u64, a1: u64, a2: u64, a3: u64) -> Args {
        Args { a0, a1, a2, a3 }
    }

    #[test]
    fn request_sizes_follow_each_signature() {
        assert_eq!(call_request(Malloc, args(24, 9, 9, 9)), (24, 0));
        assert_eq!(call_request(Calloc, args(3, 8, 9, 9)), (24, 0));
        assert_eq!(call_request(Realloc, args(0xabc, 40, 9, 9)), (40, 0xabc));
        assert_eq!(call_request(ReallocArray, args(0xabc, 4, 10, 9)), (40, 0xabc));
        assert_eq!(call_request(PosixMemalign, args(0x10, 64, 100, 9)), (100, 0x10));
        assert_eq!(call_request(AlignedAlloc, args(64, 100, 9, 9)), (100, 0));
        assert_eq!(call_request(Valloc, args(100, 9, 9, 9)), (100, 0));
        assert_eq!(call_request(Pvalloc, args(100, 9, 9, 9)), (4096, 0));
        assert_eq!(call_request(Pvalloc, args(8192, 9, 9, 9)), (8192, 0));
        assert_eq!(call_request(Mmap, args(0, 1 << 20, 3, 0x22)), (1 << 20, 0x22));
    }

    #[test]
    fn requests_depend_only_on_the_arguments_declared_read() {
        // Placement relies on `arguments_read`: changing any other argument
        // register must not change what the entry program computes.
        for kind in CallKind::ALL {
            let base = [11u64, 22, 33, 44];
            let mask = kind.arguments_read();
            for i in 0..4 {
                if mask & (1 << i) != 0 {
                    continue;
                }
                let mut other = base;
                other[i] = 999;
                let (a, b) = (
                    args(base[0], base[1], base[2], base[3]),
                    args(other[0], other[1], other[2], other[3]),
                );
                let (sa, xa) = call_request(kind, a);
                let (sb, xb) = call_request(kind, b);
                // Releases take their address from argument 0 (in aux).
                assert_eq!((sa, xa), (sb, xb), "{kind}: argument {i} matters but is not declared");
            }
        }
    }

    #[test]
    fn plain_allocations_record_only_on_success() {
        let e = entry(Malloc, 24, 0);
        assert_eq!(
            call_outcome(&e, 0x1000, OutParam::None),
            Outcome {
                release: 0,
                record: 0x1000,
                size: 24
            }
        );
        assert_eq!(call_outcome(&e, 0, OutParam::None), Outcome::default());
    }

    #[test]
    fn realloc_of_null_is_an_allocation() {
        let e = entry(Realloc, 40, 0);
        assert_eq!(
            call_outcome(&e, 0x2000, OutParam::None),
            Outcome {
                release: 0,
                record: 0x2000,
                size: 40
            }
        );
    }

    #[test]
    fn realloc_to_zero_frees() {
        let e = entry(Realloc, 0, 0x1000);
        assert_eq!(
            call_outcome(&e, 0, OutParam::None),
            Outcome {
                release: 0x1000,
                record: 0,
                size: 0
            }
        );
    }

    #[test]
    fn successful_realloc_moves_the_record() {
        let e = entry(Realloc, 80, 0x1000);
        assert_eq!(
            call_outcome(&e, 0x3000, OutParam::None),
            Outcome {
                release: 0x1000,
                record: 0x3000,
                size: 80
            }
        );
        // In place: same address released and recorded with the new size.
        assert_eq!(
            call_outcome(&e, 0x1000, OutParam::None),
            Outcome {
                release: 0x1000,
                record: 0x1000,
                size: 80
            }
        );
    }

    #[test]
    fn failed_realloc_keeps_the_old_record() {
        let e = entry(Realloc, 1 << 50, 0x1000);
        assert_eq!(call_outcome(&e, 0, OutParam::None), Outcome::default());
        let e = entry(ReallocArray, 1 << 50, 0x1000);
        assert_eq!(call_outcome(&e, 0, OutParam::None), Outcome::default());
    }

    #[test]
    fn posix_memalign_counts_only_on_zero_with_the_out_pointer() {
        let e = entry(PosixMemalign, 100, 0x7ff0);
        assert_eq!(
            call_outcome(&e, 0, OutParam::Read(0x5000)),
            Outcome {
                release: 0,
                record: 0x5000,
                size: 100
            }
        );
        assert_eq!(call_outcome(&e, 12, OutParam::Read(0x5000)), Outcome::default()); // ENOMEM
        assert_eq!(call_outcome(&e, 0, OutParam::Unreadable), Outcome::default());
        // The return is an int: garbage in the upper half of rax is ignored.
        assert_eq!(
            call_outcome(&e, 0xdead_0000_0000, OutParam::Read(0x5000)).record,
            0x5000
        );
    }

    #[test]
    fn mmap_counts_anonymous_successes_only() {
        let anon = entry(Mmap, 1 << 20, MAP_ANONYMOUS | 0x2);
        assert_eq!(
            call_outcome(&anon, 0x7f00_0000_0000, OutParam::None).record,
            0x7f00_0000_0000
        );
        assert_eq!(call_outcome(&anon, MAP_FAILED, OutParam::None), Outcome::default());
        let file = entry(Mmap, 1 << 20, 0x2);
        assert_eq!(
            call_outcome(&file, 0x7f00_0000_0000, OutParam::None),
            Outcome::default()
        );
    }

    #[test]
    fn nested_calls_are_left_to_the_outer_call() {
        let outer = entry(Realloc, 40, 0);
        // realloc(NULL, n) → malloc: deeper frame.
        assert_eq!(
            classify_entry(Some(&outer), 0x6f00, Malloc, 1, 2_000),
            EntryDecision::Nested
        );
        // reallocarray → jmp realloc: same frame, other function.
        let ra = entry(ReallocArray, 40, 0);
        assert_eq!(
            classify_entry(Some(&ra), 0x7000, Realloc, 1, 2_000),
            EntryDecision::Nested
        );
        // PyObject_Malloc → jmp malloc (PYTHONMALLOC=malloc): same frame and
        // kind, other family; its return is left to the outer call's.
        let py = CallEntry {
            family: 2,
            ..entry(Malloc, 40, 0)
        };
        assert_eq!(
            classify_entry(Some(&py), 0x7000, Malloc, 1, 2_000),
            EntryDecision::Nested
        );
        assert!(!return_matches(&py, Malloc, 1, 0x7008));
        assert!(return_matches(&py, Malloc, 2, 0x7008));
    }

    #[test]
    fn stale_calls_are_replaced() {
        let prev = entry(Malloc, 24, 0);
        assert_eq!(classify_entry(None, 0x7000, Malloc, 1, 2_000), EntryDecision::Record);
        // Same function from the same frame again: the first returned unseen.
        assert_eq!(
            classify_entry(Some(&prev), 0x7000, Malloc, 1, 2_000),
            EntryDecision::ReplaceStale
        );
        // A shallower frame: the call in flight cannot be its caller.
        assert_eq!(
            classify_entry(Some(&prev), 0x7100, Calloc, 1, 2_000),
            EntryDecision::ReplaceStale
        );
        // Too old to be the caller of anything now.
        let late = 1_000 + crate::time::STALE_CALL_NS + 1;
        assert_eq!(
            classify_entry(Some(&prev), 0x6000, Malloc, 1, late),
            EntryDecision::ReplaceStale
        );
    }

    #[test]
    fn returns_match_their_own_call_only() {
        let e = entry(ReallocArray, 40, 0);
        assert!(return_matches(&e, ReallocArray, 1, 0x7008));
        assert!(!return_matches(&e, Realloc, 1, 0x7008)); // the tail-called realloc
        let e = entry(Realloc, 40, 0);
        assert!(!return_matches(&e, Malloc, 1, 0x6f08)); // the nested malloc
    }

    #[test]
    fn munmap_removes_or_trims() {
        assert_eq!(unmap_effect(1 << 20, 1 << 20), Unmap::All);
        assert_eq!(unmap_effect(1000, 1000), Unmap::All);
        assert_eq!(unmap_effect(1 << 20, 2 << 20), Unmap::All);
        assert_eq!(
            unmap_effect(3 * 4096, 4096),
            Unmap::Head {
                freed: 4096,
                rest: 2 * 4096
            }
        );
        assert_eq!(unmap_effect(3 * 4096, 0), Unmap::Nothing);
    }

    #[test]
    fn counter_slots_are_disjoint() {
        use crate::cookie::Family;
        let mut seen = std::collections::HashSet::new();
        for slot in 0..8 {
            for generation in 0..GENERATION_SLOTS {
                for f in Family::ALL {
                    assert!(seen.insert(counter_index(slot, (1 << 16) + generation, f as u8)));
                }
            }
        }
        assert_eq!(seen.len() as u32, 8 * GENERATION_SLOTS * Family::COUNT);
        assert_eq!(*seen.iter().max().unwrap(), 8 * GENERATION_SLOTS * Family::COUNT - 1);
    }

    #[test]
    fn counters_sum_across_cpus() {
        let a = ProcCounters {
            allocations: 2,
            allocated_bytes: 10,
            ..Default::default()
        };
        let b = ProcCounters {
            allocations: 3,
            frees: 1,
            ..Default::default()
        };
        let s = ProcCounters::sum([&a, &b]);
        assert_eq!((s.allocations, s.frees, s.allocated_bytes), (5, 1, 10));
    }
}

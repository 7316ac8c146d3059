//! Time rules shared by both sides. Timestamps are CLOCK_MONOTONIC nanoseconds
//! (`bpf_ktime_get_ns`), which the daemon reads with `clock_gettime`.

/// An allocator call still "in flight" after this long is taken to have
/// returned unseen (its return probe was lost), not to be the caller of a
/// nested allocator call. Real nested calls follow their outer entry within
/// microseconds.
pub const STALE_CALL_NS: u64 = 1_000_000_000;

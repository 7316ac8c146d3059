//! Time rules shared by both sides. Timestamps are CLOCK_MONOTONIC nanoseconds,
//! which the daemon reads with `clock_gettime`.

/// The allocator probes take the time from the `CLOCK` map, where the daemon
/// republishes CLOCK_MONOTONIC this often, instead of calling
/// `bpf_ktime_get_ns`: reading the TSC took ~25 ns of alloc_enter's ~70
/// (`cargo xtask bench`), and `bpf_ktime_get_coarse_ns` is closed to tracing
/// programs. Allocation times and ages are thus to this resolution.
pub const CLOCK_TICK_NS: u64 = 50_000_000;

/// An allocator call still "in flight" after this long is taken to have
/// returned unseen (its return probe was lost), not to be the caller of a
/// nested allocator call. Real nested calls follow their outer entry within
/// microseconds.
pub const STALE_CALL_NS: u64 = 1_000_000_000;

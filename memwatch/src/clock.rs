//! CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns` and of the
//! `CLOCK` map the daemon publishes to the probes, so that allocation ages are
//! computed against the kernel side's timestamps.

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

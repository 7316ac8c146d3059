//! The `bpf_loop` callbacks' side of the walks' global functions.

/// What a `bpf_loop` callback returns for a global function's result: the
/// kernel wants 0 or 1 and knows nothing of a global's result, so the bound
/// is applied to a value the compiler cannot see through.
#[inline(always)]
pub fn loop_result(r: i64) -> i64 {
    // SAFETY: a read of a local.
    (unsafe { core::ptr::read_volatile(&r) } != 0) as i64 & 1
}

//! User stack capture, deduplicated by content hash.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::generated::bpf_get_stack,
};
use memwatch_common::{
    drop::Drop,
    stack::{StackFrames, stack_hash},
};

use crate::maps::{STACK_SCRATCH, STACKS};

/// Captures the current user stack and returns its id (0 when none).
///
/// Called from the return probe, where the kernel has restored the
/// instruction pointer to the return address: frame 0 is the allocator's
/// direct caller, which a walk from the function's entry would skip.
#[inline(always)]
pub fn capture<C: EbpfContext>(ctx: &C) -> Result<u64, Drop> {
    let scratch = STACK_SCRATCH.get_ptr_mut(0).ok_or(Drop::StackCaptureFailed)?;
    // SAFETY: the helper writes at most `size` bytes into the map value and
    // zeroes what it does not fill.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            scratch.cast(),
            size_of::<StackFrames>() as u32,
            BPF_F_USER_STACK as u64,
        )
    };
    if n <= 0 {
        return Err(Drop::StackCaptureFailed);
    }
    // SAFETY: `scratch` is this CPU's map value.
    let frames = unsafe { &*scratch };
    let id = stack_hash(&frames.frames);
    if STACKS.get_ptr(id).is_none() {
        match STACKS.insert(id, frames, BPF_NOEXIST as u64) {
            Ok(()) => {}
            Err(crate::maps::EEXIST) => {}
            Err(_) => return Err(Drop::StacksMapFull),
        }
    }
    Ok(id)
}

//! User stack capture by frame pointers, deduplicated by content hash.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::generated::{bpf_get_stack, bpf_probe_read_user},
    programs::RetProbeContext,
};
use memwatch_common::{
    drop::Drop,
    stack::{
        MAX_STACK_DEPTH, NO_WINDOW, STACK_CACHE, STACK_WINDOW, StackFrames, StackHasher, WINDOW_WORDS, frame_in_window,
        stack_hash, window_len,
    },
};

use crate::maps::{EEXIST, GROWTH_SCRATCH, STACK_SCRATCH, STACKS, settings};

/// Captures the current user stack and returns its id.
///
/// Called from the return probe, where the kernel has restored the
/// instruction pointer to the return address: frame 0 is the allocator's
/// direct caller, and the frame pointer is the caller's.
#[inline(always)]
pub fn capture(ctx: &RetProbeContext) -> Result<u64, Drop> {
    let scratch = STACK_SCRATCH.get_ptr_mut(0).ok_or(Drop::StackCaptureFailed)?;
    // SAFETY: this CPU's map value; programs on one CPU do not interleave
    // between here and the copy into STACKS.
    let frames = unsafe { &mut (*scratch).frames.frames };
    let regs = unsafe { &*ctx.regs };
    frames[0] = regs.rip;
    let mut hash = StackHasher::new();
    hash.push(regs.rip);
    let mut fp = regs.rbp;
    let mut n = 1;
    // SAFETY: as above.
    let window = unsafe { &mut (*scratch).window };
    let (mut base, mut len) = NO_WINDOW;
    while n < MAX_STACK_DEPTH {
        if fp == 0 || fp & 7 != 0 {
            break;
        }
        let i = match frame_in_window(fp, base, len) {
            Some(i) => i,
            None => {
                let want = window_len(fp);
                // Never taken; the verifier needs the bound on the size.
                if want > STACK_WINDOW as u64 {
                    break;
                }
                // SAFETY: the helper checks the user address and writes at
                // most `want` bytes, which the window holds.
                let rc = unsafe { bpf_probe_read_user(window.as_mut_ptr().cast(), want as u32, fp as *const c_void) };
                if rc != 0 {
                    break;
                }
                (base, len) = (fp, want);
                0
            }
        };
        // A no-op (the frame is inside the window) that the verifier can see.
        let i = i & (WINDOW_WORDS - 1);
        let (next, ret) = (window[i], window[i + 1]);
        if ret == 0 {
            break;
        }
        frames[n] = ret;
        hash.push(ret);
        n += 1;
        // A frame pointer that does not move up the stack is not one.
        if next <= fp {
            break;
        }
        fp = next;
    }
    if n < MAX_STACK_DEPTH {
        frames[n] = 0;
    }
    let id = hash.finish();

    // Most allocations come from a few stacks: skip the map lookup for one
    // this CPU stored recently, unless the daemon has deleted stacks since.
    // SAFETY: this CPU's map value.
    let (cache, epoch) = unsafe { (&mut (*scratch).cache, &mut (*scratch).epoch) };
    let current = settings().stacks_epoch;
    if *epoch != current {
        *cache = [0; STACK_CACHE];
        *epoch = current;
    }
    let way = (id as usize) & (STACK_CACHE - 1);
    if cache[way] == id {
        return Ok(id);
    }
    if STACKS.get_ptr(id).is_none() {
        // By reference: a copy would take the whole 512-byte BPF stack.
        // SAFETY: as above.
        #[allow(clippy::needless_borrows_for_generic_args)]
        match STACKS.insert(id, unsafe { &(*scratch).frames }, BPF_NOEXIST as u64) {
            Ok(()) | Err(EEXIST) => {}
            Err(_) => return Err(Drop::StacksMapFull),
        }
    }
    cache[way] = id;
    Ok(id)
}

/// Captures the user stack of the current task from a tracepoint (a syscall
/// in progress), where no user registers are at hand: the kernel's own
/// frame-pointer walk does it. Syscalls are rare, so its cost is fine here.
pub fn capture_current<C: EbpfContext>(ctx: &C) -> Result<u64, Drop> {
    let scratch = GROWTH_SCRATCH.get_ptr_mut(0).ok_or(Drop::StackCaptureFailed)?;
    // SAFETY: the helper writes at most `size` bytes into the map value and
    // zeroes the rest.
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
    // SAFETY: this CPU's map value.
    let id = stack_hash(unsafe { &(*scratch).frames });
    if STACKS.get_ptr(id).is_none() {
        // SAFETY: as above; by reference to keep it off the BPF stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        match STACKS.insert(id, unsafe { &*scratch }, BPF_NOEXIST as u64) {
            Ok(()) | Err(EEXIST) => {}
            Err(_) => return Err(Drop::StacksMapFull),
        }
    }
    Ok(id)
}

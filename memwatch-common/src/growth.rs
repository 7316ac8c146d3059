//! Heap growth by code path, host-wide and always on: the kernel records
//! which user stacks grow processes' address space (anonymous mmap, brk,
//! growing mremap), so that a suspect's growth is attributed before any
//! allocator probe is attached.

#[cfg(feature = "user")]
mod user;

/// Bytes of address-space growth attributed to one stack of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrowthKey {
    pub tgid: u32,
    pub _pad: u32,
    /// Content hash in `STACKS`; 0 when the stack could not be captured.
    pub stack_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrowthValue {
    pub bytes: u64,
    pub calls: u64,
}

/// Offsets in a `syscalls:sys_enter_*` record: the kernel's
/// `struct syscall_trace_enter` puts argument i at 16 + 8·i.
pub const fn syscall_arg_offset(i: usize) -> usize {
    16 + 8 * i
}

/// Offset of `ret` in a `syscalls:sys_exit_*` record.
pub const SYSCALL_RET_OFFSET: usize = 16;

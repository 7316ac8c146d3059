//! memwatch's kernel side: uprobes on allocator functions and process
//! lifecycle tracepoints. Each entry point is thin and calls a `try_*`
//! function; failures are counted in `DROPS` rather than returned.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod alloc;
mod bpf_loop;
mod growth;
mod live_table;
mod maps;
mod process;
mod python;
mod stack;
mod stack_totals;
mod task_storage;
mod unwind;

use aya_ebpf::{
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};

/// Entry of an allocating call (malloc, calloc, realloc, …, mmap).
#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    maps::count_result(alloc::try_alloc_enter(&ctx));
    0
}

/// Return of an allocating call: records, moves or releases.
#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    maps::count_result(alloc::try_alloc_exit(&ctx));
    0
}

/// Entry of a releasing call (free, munmap), which needs no return probe.
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    maps::count_result(alloc::try_free_enter(&ctx));
    0
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    maps::count_result(process::try_exec(&ctx));
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    maps::count_result(process::try_exit(&ctx));
    0
}

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    maps::count_result(process::try_newtask(&ctx));
    0
}

/// The OOM killer's victim, host-wide: the daemon keeps a post-mortem.
#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    maps::count_result(process::try_oom_victim(&ctx));
    0
}

/// SIGKILLs sent by systemd-oomd, host-wide: kept as OOM kills.
#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    maps::count_result(process::try_signal(&ctx));
    0
}

/// Anonymous mmap, host-wide: growth attributed to the calling stack.
#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    maps::count_result(growth::try_mmap(&ctx));
    0
}

/// brk's return is the new break: growth since the last one.
#[tracepoint]
pub fn sys_exit_brk(ctx: TracePointContext) -> u32 {
    maps::count_result(growth::try_brk(&ctx));
    0
}

#[tracepoint]
pub fn sys_enter_mremap(ctx: TracePointContext) -> u32 {
    maps::count_result(growth::try_mremap(&ctx));
    0
}

/// Tail-called by the three above: walks the stack and records the growth.
#[tracepoint]
pub fn growth_record(ctx: TracePointContext) -> u32 {
    maps::count_result(growth::try_record(&ctx));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

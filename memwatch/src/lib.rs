//! memwatch: finds memory leaks in running processes with eBPF.
//!
//! How one allocation travels, for a first reading:
//! 1. `target` finds the objects a process maps that define malloc & co.
//!    and `kernel::probes` attaches the programs of `memwatch-ebpf` to them,
//!    for that process only.
//! 2. In the kernel, `alloc_enter`/`alloc_exit` record the allocation with its
//!    size and user stack in the `LIVE` map; `free_enter` removes it.
//! 3. `collect::Collector` scans the maps every interval, sweeps what exited
//!    processes left, symbolizes new stacks (`symbolize`) and publishes a
//!    `collect::snapshot::Snapshot`.
//! 4. `http` serves it: `leaks` groups live allocations by stack for
//!    `/leaks`, `metrics` turns it into `/metrics`.

pub mod check;
pub mod cli;
pub mod client;
pub mod clock;
pub mod collect;
pub mod config;
pub mod control;
pub mod daemon;
pub mod export;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod kernel;
pub mod leaks;
pub mod metrics;
pub mod objects;
pub mod process;
pub mod python;
pub mod report;
pub mod symbolize;
pub mod target;
pub mod unwind;
pub mod watch;

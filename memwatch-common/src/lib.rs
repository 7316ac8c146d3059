//! Types and names shared by memwatch's eBPF programs and its daemon.
//!
//! Every type crossing the kernel/user boundary is `#[repr(C)]` with explicit
//! padding and fixed-width integers, so both sides agree on the layout. Each
//! module is split kunai-style: `foo.rs` holds the types and pure rules,
//! `foo/user.rs` what only the daemon needs (`aya::Pod`, conversions).
#![no_std]

pub mod alloc;
pub mod cookie;
pub mod drop;
pub mod event;
pub mod growth;
pub mod live_table;
pub mod maps;
pub mod python;
pub mod search;
pub mod stack;
pub mod time;
pub mod unwind;

#[cfg(feature = "user")]
extern crate std;

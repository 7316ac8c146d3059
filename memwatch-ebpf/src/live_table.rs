//! Claiming and releasing slots of the live table (see
//! `memwatch_common::live_table` for the protocol).
//!
//! Ordering: a claimer writes the record, then publishes the address; a
//! releaser reads the address, then the record. x86-64 keeps stores in order
//! and loads in order, and the JIT emits them as written, so compiler fences
//! are all these programs need. (Other architectures would need
//! load-acquire/store-release instructions.)

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg},
    ptr::{read_volatile, write_volatile},
    sync::atomic::{Ordering, compiler_fence},
};

use aya_ebpf::{Global, bindings::BPF_F_MMAPABLE, macros::map, maps::Array};
use memwatch_common::{
    alloc::AllocRecord,
    live_table::{BUSY, EMPTY, LiveSlot, slot_index},
    maps::DEFAULT_LIVE_TABLE_SLOTS,
};

use crate::maps::Proc;

#[map(name = "LIVE_TABLE")]
pub static LIVE_TABLE: Array<LiveSlot> = Array::with_max_entries(DEFAULT_LIVE_TABLE_SLOTS, BPF_F_MMAPABLE);

/// Set by the daemon at load to the table's slot count minus one.
#[unsafe(no_mangle)]
static LIVE_TABLE_MASK: Global<u32> = Global::new(DEFAULT_LIVE_TABLE_SLOTS - 1);

/// What [`claim`] did.
pub enum Claim {
    Stored,
    /// The slot already held this process's record at this address, whose
    /// release went unseen; it now holds the new one. Carries the old size.
    Replaced(u64),
    /// The slot belongs to another allocation: use `LIVE`.
    Taken,
}

#[inline(always)]
fn slot(p: &Proc, addr: u64) -> Option<*mut LiveSlot> {
    LIVE_TABLE.get_ptr_mut(slot_index(p.tgid, p.generation, addr, LIVE_TABLE_MASK.load()))
}

#[inline(always)]
fn cas(word: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: `word` points into a map value, valid and 8-byte aligned; this
    // lowers to BPF's atomic compare-and-exchange.
    unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(word, old, new).1 }
}

/// Takes slot `s`, seen holding `addr`, for this process: moves its address
/// word to BUSY, so that no other program can claim, release or take it,
/// and checks the owner again, which holds still while the slot is BUSY.
/// False (the slot untouched) if the address belongs to another process's
/// record, or changed meanwhile.
///
/// SAFETY: `s` points to a live table slot.
#[inline(always)]
unsafe fn take(s: *mut LiveSlot, p: &Proc, addr: u64) -> bool {
    unsafe {
        compiler_fence(Ordering::Acquire);
        // Checked before too, so that another process's record at the same
        // address is not held BUSY (its release would miss it meanwhile).
        let ours = |s: *mut LiveSlot| (*s).tgid == p.tgid && (*s).generation == p.generation;
        if !ours(s) || !cas(&raw mut (*s).addr, addr, BUSY) {
            return false;
        }
        compiler_fence(Ordering::Acquire);
        if !ours(s) {
            write_volatile(&raw mut (*s).addr, addr);
            return false;
        }
        true
    }
}

/// Records the allocation at `addr` in its slot, if the slot is free.
#[inline(always)]
pub fn claim(p: &Proc, addr: u64, rec: &AllocRecord) -> Claim {
    let Some(s) = slot(p, addr) else { return Claim::Taken };
    // SAFETY: `s` points to a map value; other CPUs change only `addr`
    // (atomically) unless this program owns the slot (holds it BUSY).
    unsafe {
        let owner = read_volatile(&raw const (*s).addr);
        if owner == EMPTY && cas(&raw mut (*s).addr, EMPTY, BUSY) {
            (*s).tgid = p.tgid;
            (*s).generation = p.generation;
            (*s).record = *rec;
            compiler_fence(Ordering::Release);
            write_volatile(&raw mut (*s).addr, addr);
            return Claim::Stored;
        }
        if owner == addr && take(s, p, addr) {
            let old = (*s).record.size;
            (*s).record = *rec;
            compiler_fence(Ordering::Release);
            write_volatile(&raw mut (*s).addr, addr);
            return Claim::Replaced(old);
        }
    }
    Claim::Taken
}

/// Releases the record at `addr` if the table holds it: its size, or None.
#[inline(always)]
pub fn release(p: &Proc, addr: u64) -> Option<u64> {
    let s = slot(p, addr)?;
    // SAFETY: as in `claim`.
    unsafe {
        if read_volatile(&raw const (*s).addr) != addr || !take(s, p, addr) {
            return None;
        }
        let size = (*s).record.size;
        compiler_fence(Ordering::Release);
        write_volatile(&raw mut (*s).addr, EMPTY);
        Some(size)
    }
}

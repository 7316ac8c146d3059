//! The live table: a lock-free, direct-mapped array in front of the `LIVE`
//! hash map.
//!
//! A hash-map insert, lookup and delete cost ~110 ns per alloc/free pair
//! (bucket locks, element allocation); claiming and releasing a slot here
//! costs one compare-and-swap each. An allocation goes to the table when its
//! slot is free and to `LIVE` otherwise; a release looks in the table first.
//!
//! Each slot's `addr` word says who owns it: [`EMPTY`], [`BUSY`] while one
//! program reads or writes the record, or the allocation's address once the
//! record is complete. Only compare-and-swap moves a slot out of `EMPTY` or
//! out of an address (into `BUSY`), so one program at a time holds a slot,
//! and it checks the owner (pid, generation) again while holding it: a
//! release cannot take another process's record at the same address, nor an
//! overwrite another allocation's. Records of ended processes are cleared by
//! the daemon, the only writer of their slots.

#[cfg(feature = "user")]
mod user;

use crate::alloc::AllocRecord;

/// `LiveSlot::addr` of a free slot.
pub const EMPTY: u64 = 0;
/// `LiveSlot::addr` while its owner writes the record; no allocation is at 1.
pub const BUSY: u64 = 1;

/// One slot of the live table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSlot {
    /// [`EMPTY`], [`BUSY`] or the allocation's address.
    pub addr: u64,
    pub tgid: u32,
    pub generation: u32,
    pub record: AllocRecord,
}

/// The slot for `(tgid, generation, addr)` in a table of `mask + 1` slots
/// (a power of two): a splitmix64 finaliser, so that strided addresses and
/// owners differing only in high bits still spread over every slot.
#[inline(always)]
pub fn slot_index(tgid: u32, generation: u32, addr: u64, mask: u32) -> u32 {
    let mut h = addr ^ (((tgid as u64) << 32) | generation as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (h ^ (h >> 31)) as u32 & mask
}

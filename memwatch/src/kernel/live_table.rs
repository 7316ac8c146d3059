//! The daemon's side of the live table (see `memwatch_common::live_table`):
//! the array is mapped into the daemon's memory, so a scan reads it without
//! syscalls, and the daemon frees the slots of ended processes with the same
//! compare-and-swap the programs use.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::Map;
use memwatch_common::{
    alloc::{AllocKey, AllocRecord},
    live_table::{BUSY, EMPTY, LiveSlot, slot_index},
};

use super::mapped::MappedArray;

const WORDS: usize = size_of::<LiveSlot>() / 8;

pub struct LiveTable {
    array: MappedArray,
    slots: u32,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for LiveTable {}
unsafe impl Sync for LiveTable {}

impl LiveTable {
    /// Maps `map`, an mmapable array of `slots` [`LiveSlot`]s.
    pub fn map(map: Map, slots: u32) -> anyhow::Result<LiveTable> {
        Ok(LiveTable {
            array: MappedArray::map(map, slots, size_of::<LiveSlot>(), "the live table")?,
            slots,
        })
    }

    fn words(&self, i: u32) -> &[AtomicU64; WORDS] {
        assert!(i < self.slots);
        // SAFETY: slot `i` lies within the mapping, 8-byte aligned, and is
        // only accessed atomically while mapped (`&self`).
        unsafe {
            &*self
                .array
                .base::<AtomicU64>()
                .as_ptr()
                .add(i as usize * WORDS)
                .cast::<[AtomicU64; WORDS]>()
        }
    }

    /// Slot `i` if it holds a complete record. Its owner may release it while
    /// it is read: the address is read again after the rest, and a slot
    /// released and claimed again meanwhile for the same address (rare) may
    /// give a record mixed from two allocations, for this snapshot only.
    fn read(&self, i: u32) -> Option<LiveSlot> {
        let w = self.words(i);
        let addr = w[0].load(Ordering::Acquire);
        if addr == EMPTY || addr == BUSY {
            return None;
        }
        let mut raw = [0u64; WORDS];
        for (r, a) in raw.iter_mut().zip(w) {
            *r = a.load(Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::Acquire);
        if w[0].load(Ordering::Relaxed) != addr {
            return None;
        }
        // SAFETY: LiveSlot is plain old data of exactly WORDS words.
        let slot: LiveSlot = unsafe { std::mem::transmute(raw) };
        Some(LiveSlot { addr, ..slot })
    }

    /// Calls `f` for every record in the table; returns how many there were.
    pub fn for_each(&self, mut f: impl FnMut(&AllocKey, &AllocRecord)) -> usize {
        let mut n = 0;
        for i in 0..self.slots {
            if let Some(s) = self.read(i) {
                n += 1;
                let k = AllocKey {
                    tgid: s.tgid,
                    generation: s.generation,
                    addr: s.addr,
                };
                f(&k, &s.record);
            }
        }
        n
    }

    /// Frees the slot holding this record, which must belong to an ended
    /// process generation: no program takes those any more, so the daemon is
    /// their only writer. False if the table does not hold it.
    pub fn clear(&self, k: &AllocKey) -> bool {
        let i = slot_index(k.tgid, k.generation, k.addr, self.slots - 1);
        let held = self
            .read(i)
            .is_some_and(|s| (s.tgid, s.generation, s.addr) == (k.tgid, k.generation, k.addr));
        held && self.words(i)[0]
            .compare_exchange(k.addr, EMPTY, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

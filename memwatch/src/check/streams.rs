//! Streams the program opened and did not close. glibc keeps every `FILE`
//! on a list headed by its exported `_IO_list_all`, linked through
//! `_chain`, so they are the C runtime's by reach; but `__libc_freeres`
//! frees only their buffers, and memcheck counts the streams themselves
//! still reachable. Found from the list, not by name: naming glibc's
//! `__fopen_internal` takes its debug symbols.

use crate::{
    process::procfs::{MapEntry, MappedFile, runtime_address},
    target::elf::ElfInfo,
};

/// `offsetof(struct _IO_FILE, _chain)` on x86_64.
const CHAIN: u64 = 0x68;
/// A list longer than this is not glibc's (or is being changed).
const MAX_STREAMS: usize = 1 << 16;

/// The addresses on a list starting at `head`, each next one read at
/// `CHAIN` bytes into the last. Stops at the end, at an unreadable link or
/// a cycle.
pub fn chain(head: u64, mut read: impl FnMut(u64) -> Option<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = head;
    while at != 0 && out.len() < MAX_STREAMS && !out.contains(&at) {
        out.push(at);
        match read(at + CHAIN) {
            Some(next) => at = next,
            None => break,
        }
    }
    out
}

/// The streams on glibc's list in the stopped process whose mappings are
/// `maps`: `libc` is its glibc as mapped, `info` what memwatch keeps of it.
pub fn open(
    maps: &[MapEntry],
    libc: &MappedFile,
    info: &ElfInfo,
    mut read: impl FnMut(u64) -> Option<u64>,
) -> Vec<u64> {
    let head_at = info
        .stream_list
        .and_then(|vaddr| info.file_offset(vaddr))
        .and_then(|off| runtime_address(maps, libc, off));
    match head_at.and_then(&mut read) {
        Some(head) => chain(head, read),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_list_is_followed_through_chain_to_its_end_and_never_round_a_cycle() {
        let links = HashMap::from([(0x1000 + CHAIN, 0x2000), (0x2000 + CHAIN, 0x3000), (0x3000 + CHAIN, 0)]);
        assert_eq!(chain(0x1000, |a| links.get(&a).copied()), [0x1000, 0x2000, 0x3000]);
        let cycle = HashMap::from([(0x1000 + CHAIN, 0x2000), (0x2000 + CHAIN, 0x1000)]);
        assert_eq!(chain(0x1000, |a| cycle.get(&a).copied()), [0x1000, 0x2000]);
        assert_eq!(chain(0x1000, |_| None), [0x1000]);
        assert!(chain(0, |_| Some(1)).is_empty());
    }
}

//! Streams the program opened and did not close. glibc keeps every `FILE`
//! on a list headed by its exported `_IO_list_all`, linked through
//! `_chain`, so they are the C runtime's by reach; but `__libc_freeres`
//! frees only their buffers, and memcheck counts the streams themselves
//! still reachable. Found from the list, not by name: naming glibc's
//! `__fopen_internal` takes its debug symbols.

use object::{Object, ObjectSegment, ObjectSymbol};

use crate::process::procfs::MapEntry;

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

/// Where glibc's `_IO_list_all` is in the process, from its libc's file
/// and mappings.
fn list_head_address(maps: &[MapEntry], root: &std::path::Path) -> Option<u64> {
    let libc = maps.iter().find(|m| {
        m.path
            .as_deref()
            .is_some_and(|p| p.rsplit('/').next().is_some_and(|n| n.starts_with("libc.so.")))
    })?;
    let path = libc.path.as_deref()?;
    let data = std::fs::read(root.join(path.trim_start_matches('/'))).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let vaddr = file
        .dynamic_symbols()
        .find(|s| s.name() == Ok("_IO_list_all"))?
        .address();
    let offset = file.segments().find_map(|s| {
        let (off, size) = s.file_range();
        (s.address() <= vaddr && vaddr < s.address() + size).then(|| off + (vaddr - s.address()))
    })?;
    maps.iter()
        .filter(|m| m.inode == libc.inode && m.dev == libc.dev)
        .find(|m| offset >= m.offset && offset - m.offset < m.end - m.start)
        .map(|m| m.start + (offset - m.offset))
}

/// The streams on glibc's list in the stopped process `pid`.
pub fn open(pid: u32, maps: &[MapEntry], mut read: impl FnMut(u64) -> Option<u64>) -> Vec<u64> {
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    let Some(head) = list_head_address(maps, &root).and_then(&mut read) else {
        return Vec::new();
    };
    chain(head, read)
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

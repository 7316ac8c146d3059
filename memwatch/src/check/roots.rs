//! Where a stopped process keeps pointers outside its heap, read from its
//! memory map and its threads' registers — LeakSanitizer's roots:
//!
//! - the writable data of every loaded object (its `.data`, `.got` and the
//!   anonymous mapping right after it that holds its `.bss`);
//! - every thread's stack, from its stack pointer (less the 128-byte red
//!   zone) to the top of the mapping;
//! - each thread's static TLS, below its thread pointer (up to 64 KiB, in
//!   a mapping that holds no heap blocks);
//! - every thread's general-purpose registers.
//!
//! Not roots: the heap and other anonymous memory (glibc's free chunks keep
//! stale pointers), and memory mapped by the program itself (a pointer kept
//! only there shows as lost; valgrind would count it).

use super::{
    scan::{Block, Roots},
    tracee::Registers,
};
use crate::process::procfs::MapEntry;

const RED_ZONE: u64 = 128;
/// How far below the thread pointer static TLS is looked for.
const TLS_BELOW: u64 = 64 << 10;

pub fn of(maps: &[MapEntry], threads: &[Registers], blocks: &[Block]) -> Roots {
    let mut ranges = Vec::new();
    let writable = |m: &MapEntry| m.perms.as_bytes().get(1) == Some(&b'w');
    let holds_blocks = |m: &MapEntry| {
        let i = blocks.partition_point(|b| b.addr < m.start);
        blocks.get(i).is_some_and(|b| b.addr < m.end)
    };
    for (i, m) in maps.iter().enumerate() {
        if !writable(m) || m.special.is_some() {
            continue;
        }
        let bss =
            m.path.is_none() && i > 0 && maps[i - 1].path.is_some() && maps[i - 1].end == m.start && !holds_blocks(m);
        if m.path.is_some() || bss {
            ranges.push((m.start, m.end));
        }
    }
    let containing = |addr: u64| maps.iter().find(|m| m.start <= addr && addr < m.end);
    for t in threads {
        if let Some(m) = containing(t.sp) {
            ranges.push((t.sp.saturating_sub(RED_ZONE).max(m.start), m.end));
        }
        // A thread's TLS sits just below its thread pointer; a pthread's is
        // above its stack, in the same mapping, and scanned with it.
        if let Some(m) = containing(t.fs_base)
            && writable(m)
            && !holds_blocks(m)
            && !(m.start <= t.sp && t.sp < m.end)
        {
            ranges.push((t.fs_base.saturating_sub(TLS_BELOW).max(m.start), m.end));
        }
    }
    ranges.sort_unstable();
    // Merged, so no memory is read twice.
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    Roots {
        ranges: merged,
        words: threads.iter().flat_map(|t| t.words).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::procfs::parse_maps;

    #[test]
    fn data_bss_stacks_tls_and_registers_are_roots_and_the_heap_is_not() {
        let maps = parse_maps(
            "555555554000-555555555000 r--p 00000000 fe:00 100 /usr/bin/prog\n\
             555555555000-555555556000 r-xp 00001000 fe:00 100 /usr/bin/prog\n\
             555555557000-555555558000 rw-p 00003000 fe:00 100 /usr/bin/prog\n\
             555555558000-555555559000 rw-p 00000000 00:00 0 \n\
             555555559000-55555557a000 rw-p 00000000 00:00 0 [heap]\n\
             7ffff7d00000-7ffff7d10000 rw-p 00000000 00:00 0 \n\
             7ffff7f00000-7ffff7f01000 rw-p 00000000 00:00 0 \n\
             7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]\n",
        );
        let blocks = [Block {
            addr: 0x555555559010,
            size: 32,
        }];
        let main = Registers {
            sp: 0x7ffffffef000,
            fs_base: 0x7ffff7f00740,
            words: [0x42; 16],
        };
        let thread = Registers {
            sp: 0x7ffff7d0f000,
            fs_base: 0x7ffff7d0ff00,
            words: [0; 16],
        };
        let r = of(&maps, &[main, thread], &blocks);
        assert_eq!(
            r.ranges,
            [
                (0x555555557000, 0x555555559000),
                (0x7ffff7d0ef80, 0x7ffff7d10000),
                (0x7ffff7f00000, 0x7ffff7f01000),
                (0x7ffffffeef80, 0x7ffffffff000),
            ]
        );
        assert_eq!(r.words.len(), 32);
    }
}

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
//! - anonymous memory the program mapped itself — CPython's object arenas,
//!   buffers — as memcheck scans it: writable anonymous mappings but the
//!   live blocks in them (the kernel merges neighbours: an arena next to a
//!   block glibc mapped for itself is one mapping), glibc's arena heaps and
//!   threads' stacks.
//!
//! Not roots: the heap — the brk heap and glibc's other arenas, including
//! one whose blocks were all freed (its free chunks keep stale pointers) —
//! and the part of a thread's stack below its stack pointer.
//!
//! The C and C++ runtimes' own data (glibc, the dynamic loader, libstdc++,
//! libgcc) are roots of their own, scanned after the program's: what only
//! they hold — stdio buffers, locale data, libstdc++'s exception pool — is
//! the runtime's, which memcheck frees before it looks (it runs
//! `__libc_freeres` and `__gnu_cxx::__freeres` at exit).

use super::{
    scan::{Block, Roots},
    tracee::Registers,
};
use crate::process::procfs::MapEntry;

const RED_ZONE: u64 = 128;
/// How far below the thread pointer static TLS is looked for.
const TLS_BELOW: u64 = 64 << 10;

/// Objects whose data is the runtime's, by file name.
const RUNTIME: [&str; 4] = ["libc.so.", "ld-linux-", "libstdc++.so.", "libgcc_s.so."];

fn is_runtime(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    RUNTIME.iter().any(|r| name.starts_with(r))
}

/// glibc's heaps for its non-main arenas are 64 MiB-aligned reservations:
/// the part in use writable, the rest `---p` up to the next 64 MiB.
const ARENA_HEAP: u64 = 64 << 20;

fn glibc_arena_heap(maps: &[MapEntry], i: usize) -> bool {
    let m = &maps[i];
    if !m.start.is_multiple_of(ARENA_HEAP) {
        return false;
    }
    let reserved = maps.get(i + 1).is_some_and(|n| {
        n.start == m.end && n.path.is_none() && n.perms.starts_with("---") && n.end - m.start <= ARENA_HEAP
    });
    reserved || m.end - m.start == ARENA_HEAP
}

pub fn of(maps: &[MapEntry], threads: &[Registers], blocks: &[Block]) -> Roots {
    let mut ranges = Vec::new();
    let mut runtime = Vec::new();
    let writable = |m: &MapEntry| m.perms.as_bytes().get(1) == Some(&b'w');
    let holds_blocks = |m: &MapEntry| {
        let i = blocks.partition_point(|b| b.addr < m.start);
        blocks.get(i).is_some_and(|b| b.addr < m.end)
    };
    for (i, m) in maps.iter().enumerate() {
        if !writable(m) || m.special.is_some() {
            continue;
        }
        // An object's .bss is the anonymous mapping right after its data.
        let bss = m.path.is_none() && i > 0 && maps[i - 1].path.is_some() && maps[i - 1].end == m.start;
        let object = if bss { &maps[i - 1].path } else { &m.path };
        match object {
            Some(path) if is_runtime(path) => runtime.push((m.start, m.end)),
            Some(_) => ranges.push((m.start, m.end)),
            None if glibc_arena_heap(maps, i) || threads.iter().any(|t| m.start <= t.sp && t.sp < m.end) => {}
            None => ranges.extend(outside_blocks(m.start, m.end, blocks)),
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
    Roots {
        ranges: merged(ranges),
        runtime: merged(runtime),
        words: threads.iter().flat_map(|t| t.words).collect(),
    }
}

/// The parts of `[start, end)` outside the blocks in it and their chunks'
/// 16-byte headers: a block is scanned only if something reaches it.
fn outside_blocks(start: u64, end: u64, blocks: &[Block]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    let first = blocks.partition_point(|b| b.addr < start);
    for b in blocks[first..].iter().take_while(|b| b.addr < end) {
        let chunk = b.addr.saturating_sub(16).max(start);
        if chunk > at {
            out.push((at, chunk));
        }
        at = at.max(b.addr.saturating_add(b.size).saturating_add(7) & !7);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// Sorted and merged, so that no memory is read twice.
fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
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
             7ffff7c00000-7ffff7c10000 r-xp 00000000 fe:00 200 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
             7ffff7c10000-7ffff7c12000 rw-p 00010000 fe:00 200 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
             7ffff7c12000-7ffff7c14000 rw-p 00000000 00:00 0 \n\
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
        // glibc's data and bss: the runtime's.
        assert_eq!(r.runtime, [(0x7ffff7c10000, 0x7ffff7c14000)]);
        assert_eq!(r.words.len(), 32);
    }

    #[test]
    fn anonymous_memory_is_a_root_but_its_blocks_glibc_arenas_and_stacks_below_sp() {
        let maps = parse_maps(
            "555555559000-55555557a000 rw-p 00000000 00:00 0 [heap]\n\
             7fffe8000000-7fffe8021000 rw-p 00000000 00:00 0 \n\
             7fffe8021000-7fffec000000 ---p 00000000 00:00 0 \n\
             7ffff7a00000-7ffff7b00000 rw-p 00000000 00:00 0 \n\
             7ffff7d00000-7ffff7d10000 rw-p 00000000 00:00 0 \n",
        );
        // A block glibc mapped for itself, merged with a program's arena.
        let blocks = [Block {
            addr: 0x7ffff7a80010,
            size: 0x1000,
        }];
        let thread = Registers {
            sp: 0x7ffff7d0f000,
            fs_base: 0x7ffff7d0ff00,
            words: [0; 16],
        };
        let r = of(&maps, &[thread], &blocks);
        assert_eq!(
            r.ranges,
            [
                (0x7ffff7a00000, 0x7ffff7a80000),
                (0x7ffff7a81010, 0x7ffff7b00000),
                (0x7ffff7d0ef80, 0x7ffff7d10000),
            ]
        );
        assert_eq!(outside_blocks(0x1000, 0x2000, &[]), [(0x1000, 0x2000)]);
    }
}

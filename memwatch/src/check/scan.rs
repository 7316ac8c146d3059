//! Which live blocks a stopped process can still reach, as valgrind's
//! memcheck and LeakSanitizer tell them apart. Pure: the memory is behind
//! [`Memory`], so the rules are tested on made-up heaps.
//!
//! - A **start pointer** holds a block's first address; an **interior
//!   pointer** any other address inside it. Pointers are 8-byte aligned
//!   words, read from the roots and from blocks already reached.
//! - **Reachable**: a chain of start pointers leads to it from a root.
//! - **Possibly lost**: a chain leads to it, but only through at least one
//!   interior pointer.
//! - **Definitely lost**: nothing reaches it, not even another lost block —
//!   or it leads a group of lost blocks that point to each other.
//! - **Indirectly lost**: nothing reaches it from the roots, but a lost
//!   block points to it (so freeing the definitely lost blocks would
//!   lose it for good).
//! - **The runtime's**: only the C or C++ runtime's own data reaches it
//!   (see `roots`); memcheck frees these at exit before it looks.

/// One live block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub addr: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    DefinitelyLost,
    IndirectlyLost,
    PossiblyLost,
    Reachable,
    Runtime,
}

/// Reads the stopped process's memory.
pub trait Memory {
    /// `len` bytes at `addr`; None where it is not readable.
    fn read(&mut self, addr: u64, len: u64) -> Option<Vec<u8>>;
}

/// Where to look for pointers first: memory ranges and register values.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    pub ranges: Vec<(u64, u64)>,
    /// The runtime's data, looked at after everything else.
    pub runtime: Vec<(u64, u64)>,
    pub words: Vec<u64>,
}

/// Blocks bigger than this are scanned only this far (a huge buffer of
/// data would cost time and find nothing).
const MAX_SCANNED: u64 = 64 << 20;
/// Roots are read in pieces of this size.
const PIECE: u64 = 1 << 20;

/// How far into a block a pointer counts as pointing into it. glibc lays
/// the next chunk's header over a block's last 8 bytes (the header's first
/// word belongs to the block while it is in use), and its own state points
/// at such headers — the top chunk, free chunks in its bins: those are not
/// pointers into the block. A chunk is the request plus 8, rounded up to 16
/// (32 at least), starting 16 bytes before the block.
fn reach(size: u64) -> u64 {
    let chunk = (size.saturating_add(8 + 15) & !15).max(32);
    size.min(chunk - 16).max(1)
}

struct Index<'a> {
    /// Sorted by address.
    blocks: &'a [Block],
}

impl Index<'_> {
    /// The block `p` points into, and whether at its start.
    fn find(&self, p: u64) -> Option<(usize, bool)> {
        let i = self.blocks.partition_point(|b| b.addr <= p).checked_sub(1)?;
        let b = self.blocks[i];
        (p - b.addr < reach(b.size)).then_some((i, p == b.addr))
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
}

/// Calls `f` with each aligned word of the memory ranges, read in pieces.
fn for_words_in(ranges: &[(u64, u64)], mem: &mut impl Memory, mut f: impl FnMut(u64)) {
    for &(start, end) in ranges {
        let mut at = start & !7;
        while at < end {
            let len = (end - at).min(PIECE);
            if let Some(bytes) = mem.read(at, len) {
                words(&bytes).for_each(&mut f);
            }
            at += len;
        }
    }
}

/// Classifies `blocks` (sorted by address, not overlapping). Returns one
/// kind per block, in their order.
pub fn classify<M: Memory>(blocks: &[Block], roots: &Roots, mem: &mut M) -> Vec<Kind> {
    debug_assert!(blocks.windows(2).all(|w| w[0].addr < w[1].addr));
    let index = Index { blocks };
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum State {
        Unreached,
        Interior,
        Start,
        Runtime,
    }
    let mut state = vec![State::Unreached; blocks.len()];
    // Reachable: start-pointer chains from the roots.
    let mut start_work = Vec::new();
    let mut interior_work = Vec::new();
    let visit = |p: u64, state: &mut Vec<State>, start_work: &mut Vec<usize>, interior_work: &mut Vec<usize>| {
        if let Some((i, at_start)) = index.find(p) {
            if at_start && state[i] != State::Start {
                state[i] = State::Start;
                start_work.push(i);
            } else if !at_start && state[i] == State::Unreached {
                state[i] = State::Interior;
                interior_work.push(i);
            }
        }
    };
    for &w in &roots.words {
        visit(w, &mut state, &mut start_work, &mut interior_work);
    }
    for_words_in(&roots.ranges, mem, |w| {
        visit(w, &mut state, &mut start_work, &mut interior_work)
    });
    // Read afresh each time (at most twice a block): a copy of the heap
    // would double memwatch's memory for a big process.
    let read = |mem: &mut M, i: usize| -> Vec<u8> {
        let b = blocks[i];
        mem.read(b.addr, b.size.min(MAX_SCANNED) & !7).unwrap_or_default()
    };
    while let Some(i) = start_work.pop() {
        for w in words(&read(mem, i)) {
            visit(w, &mut state, &mut start_work, &mut interior_work);
        }
    }
    // Possibly lost: whatever an interior pointer led to, and beyond.
    while let Some(i) = interior_work.pop() {
        if state[i] != State::Interior {
            continue;
        }
        for w in words(&read(mem, i)) {
            if let Some((j, _)) = index.find(w)
                && state[j] == State::Unreached
            {
                state[j] = State::Interior;
                interior_work.push(j);
            }
        }
    }
    // The runtime's: what its data reaches, and beyond, of the rest.
    let mut runtime_work = Vec::new();
    // A start pointer from the runtime outweighs pointers only into the
    // middle from the program (glibc's locale alias table: libc holds its
    // start, the program a string inside it; memcheck frees it at exit).
    let take = |w: u64, state: &mut Vec<State>, work: &mut Vec<usize>| {
        if let Some((j, at_start)) = index.find(w)
            && (state[j] == State::Unreached || (at_start && state[j] == State::Interior))
        {
            state[j] = State::Runtime;
            work.push(j);
        }
    };
    for_words_in(&roots.runtime, mem, |w| take(w, &mut state, &mut runtime_work));
    while let Some(i) = runtime_work.pop() {
        for w in words(&read(mem, i)) {
            take(w, &mut state, &mut runtime_work);
        }
    }
    // Lost: each unreached block, in address order, leads the group it
    // reaches, unless an earlier group took it in; a leader reached later
    // joins that group.
    let mut kind: Vec<Kind> = state
        .iter()
        .map(|s| match s {
            State::Start => Kind::Reachable,
            State::Interior => Kind::PossiblyLost,
            State::Runtime => Kind::Runtime,
            State::Unreached => Kind::DefinitelyLost,
        })
        .collect();
    let mut grouped = vec![false; blocks.len()];
    for leader in 0..blocks.len() {
        if kind[leader] != Kind::DefinitelyLost || grouped[leader] {
            continue;
        }
        grouped[leader] = true;
        let mut work = vec![leader];
        while let Some(i) = work.pop() {
            for w in words(&read(mem, i)) {
                if let Some((j, _)) = index.find(w)
                    && j != leader
                    && matches!(kind[j], Kind::DefinitelyLost | Kind::IndirectlyLost)
                    && (!grouped[j] || kind[j] == Kind::DefinitelyLost)
                {
                    kind[j] = Kind::IndirectlyLost;
                    if !grouped[j] {
                        grouped[j] = true;
                        work.push(j);
                    }
                }
            }
        }
    }
    kind
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Memory as words at addresses.
    #[derive(Default)]
    struct Fake(HashMap<u64, u64>);

    impl Fake {
        fn put(&mut self, at: u64, value: u64) {
            self.0.insert(at, value);
        }
    }

    impl Memory for Fake {
        fn read(&mut self, addr: u64, len: u64) -> Option<Vec<u8>> {
            let mut out = Vec::new();
            for a in (addr..addr + len).step_by(8) {
                out.extend_from_slice(&self.0.get(&a).copied().unwrap_or(0).to_le_bytes());
            }
            Some(out)
        }
    }

    fn blocks(n: u64) -> Vec<Block> {
        (0..n)
            .map(|i| Block {
                addr: 0x10_000 + i * 0x100,
                size: 64,
            })
            .collect()
    }

    fn at(i: u64) -> u64 {
        0x10_000 + i * 0x100
    }

    #[test]
    fn the_four_kinds_as_valgrind_tells_them() {
        let b = blocks(8);
        let mut m = Fake::default();
        let global = 0x1000;
        // A global keeps block 0, which keeps 1 (reachable).
        m.put(global, at(0));
        m.put(at(0) + 8, at(1));
        // Block 2 is pointed into only (possibly lost), and keeps 3 (possibly too).
        m.put(global + 8, at(2) + 16);
        m.put(at(2), at(3));
        // Block 4 is lost and keeps 5 (indirectly lost).
        m.put(at(4) + 24, at(5));
        // 6 and 7 point to each other and nothing else reaches them: one
        // leads (definitely), the other is indirectly lost.
        m.put(at(6), at(7));
        m.put(at(7), at(6));
        let roots = Roots {
            ranges: vec![(global, global + 16)],
            words: vec![],
            ..Roots::default()
        };
        use Kind::*;
        assert_eq!(
            classify(&b, &roots, &mut m),
            [
                Reachable,
                Reachable,
                PossiblyLost,
                PossiblyLost,
                DefinitelyLost,
                IndirectlyLost,
                DefinitelyLost,
                IndirectlyLost
            ]
        );
    }

    #[test]
    fn a_pointer_at_the_next_chunks_header_is_not_into_the_block() {
        // A 1000-byte block's chunk is 1008 bytes: the next chunk's header
        // starts 992 bytes into the block (glibc's main_arena.top, say).
        let b = [Block {
            addr: 0x10_000,
            size: 1000,
        }];
        let mut m = Fake::default();
        m.put(0x1000, 0x10_000 + 992);
        let roots = Roots {
            ranges: vec![(0x1000, 0x1008)],
            words: vec![],
            ..Roots::default()
        };
        assert_eq!(classify(&b, &roots, &mut m), [Kind::DefinitelyLost]);
        m.put(0x1000, 0x10_000 + 991);
        assert_eq!(classify(&b, &roots, &mut m), [Kind::PossiblyLost]);
        assert_eq!((reach(1), reach(24), reach(25), reach(100)), (1, 16, 25, 96));
    }

    #[test]
    fn registers_are_roots_and_a_later_leader_joins_the_earlier_group() {
        let b = blocks(4);
        let mut m = Fake::default();
        // 2 leads 3 and 3 points back to 1, which points to 2: 1 leads (the
        // lowest address), 2 and 3 are indirectly lost.
        m.put(at(1), at(2));
        m.put(at(2), at(3));
        m.put(at(3), at(1));
        let roots = Roots {
            ranges: vec![],
            words: vec![at(0), 7],
            ..Roots::default()
        };
        use Kind::*;
        assert_eq!(
            classify(&b, &roots, &mut m),
            [Reachable, DefinitelyLost, IndirectlyLost, IndirectlyLost]
        );
    }

    #[test]
    fn a_later_leader_reached_from_another_group_is_demoted() {
        let b = blocks(3);
        let mut m = Fake::default();
        // 0 points to 2; 1 is alone; 2 would lead nothing. 2 is indirect.
        m.put(at(0) + 8, at(2));
        assert_eq!(
            classify(&b, &Roots::default(), &mut m),
            [Kind::DefinitelyLost, Kind::DefinitelyLost, Kind::IndirectlyLost]
        );
        // Reversed: 2 points to 0, so 0 (a leader by address) is demoted.
        let mut m = Fake::default();
        m.put(at(2), at(0));
        assert_eq!(
            classify(&b, &Roots::default(), &mut m),
            [Kind::IndirectlyLost, Kind::DefinitelyLost, Kind::DefinitelyLost]
        );
    }

    #[test]
    fn what_only_the_runtime_holds_is_the_runtimes_and_the_program_comes_first() {
        let b = blocks(6);
        let mut m = Fake::default();
        let (program, runtime) = (0x1000, 0x2000);
        // The runtime's data keeps 0 (a stdio buffer, say), which keeps 1.
        m.put(runtime, at(0));
        m.put(at(0), at(1));
        // Both keep 2: the program's.
        m.put(runtime + 8, at(2));
        m.put(program, at(2));
        // 3 only through a pointer into it from the runtime: still its.
        m.put(runtime + 16, at(3) + 8);
        // 4: nothing.
        // 5: into its middle from the program, its start from the runtime.
        m.put(program + 8, at(5) + 8);
        m.put(runtime + 24, at(5));
        let roots = Roots {
            ranges: vec![(program, program + 16)],
            runtime: vec![(runtime, runtime + 32)],
            words: vec![],
        };
        use Kind::*;
        assert_eq!(
            classify(&b, &roots, &mut m),
            [Runtime, Runtime, Reachable, Runtime, DefinitelyLost, Runtime]
        );
    }
}

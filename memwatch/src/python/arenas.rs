//! The object allocator's live blocks by size class, read from outside:
//! pymalloc's arena table and the header of every pool carved from each
//! arena — the figures `sys._debugmallocstats()` prints. It covers what the
//! collector's lists do not: str, int, float, bytes and every other small
//! object or buffer of at most 512 bytes.
//!
//! The table is found in the interpreter state on 3.12+ and, on 3.11 (where
//! it is a file-static variable that stripped builds do not name), from the
//! instructions of `_Py_GetAllocatedBlocks`, an exported function that reads
//! it: its one pointer load that is then dereferenced is `arenas`, its one
//! 32-bit load `maxarenas`.

use std::time::Instant;

use serde::Serialize;

use super::census::{CensusError, Limits, Read};

/// Where the arena table is, per CPython minor version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roots {
    /// 3.11: the addresses of the `arenas` and `maxarenas` statics.
    Statics { arenas: u64, maxarenas: u64 },
    /// 3.12+: `PyInterpreterState.obmalloc` at this offset, embedded (3.12)
    /// or a pointer to it (3.13).
    Interpreter { offset: u64, pointer: bool },
}

/// `struct _obmalloc_state.mgmt.arenas` and `.maxarenas` (3.12, 3.13).
const MGMT_ARENAS: u64 = 512;
const MGMT_MAXARENAS: u64 = 520;
/// 64-bit builds since 3.10: 1 MiB arenas of 16 KiB pools.
const ARENA_SIZE: u64 = 1 << 20;
const POOL_SIZE: u64 = 16 << 10;
/// `struct arena_object`: address, pool_address, nfreepools, ntotalpools, …
const ARENA_OBJECT: u64 = 48;
/// `struct pool_header`, rounded to the block alignment.
const POOL_OVERHEAD: u64 = 48;
const POOL_SZIDX: usize = 36;
const POOL_ARENAINDEX: usize = 32;
const ALIGNMENT: u64 = 16;
/// Size classes: 16 to 512 bytes.
const SIZE_CLASSES: u32 = 32;
/// More arena slots than this (a TiB of arenas) is not a table.
const MAX_ARENAS: u64 = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SizeClass {
    /// Block size in bytes.
    pub size: u64,
    /// Pools of this size with a block in use.
    pub pools: u64,
    pub blocks: u64,
    /// `blocks × size`.
    pub bytes: u64,
    /// Free blocks in those pools.
    pub free_blocks: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Arenas {
    /// Arenas allocated, and their bytes.
    pub arenas: u64,
    pub arena_bytes: u64,
    /// Pools with a block in use.
    pub pools: u64,
    /// Blocks in use, and their bytes.
    pub blocks: u64,
    pub bytes: u64,
    /// Size classes with a block in use, smallest first.
    pub size_classes: Vec<SizeClass>,
    pub consistent: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inconsistency: Option<String>,
}

/// The address of the arena table and its slot count.
fn table(mem: &mut impl Read, roots: Roots, interp: u64) -> Result<(u64, u64), CensusError> {
    let unreadable = |e: std::io::Error| CensusError::Unreadable(format!("the allocator's arena table: {e}"));
    let (arenas_at, max_at) = match roots {
        Roots::Statics { arenas, maxarenas } => (arenas, maxarenas),
        Roots::Interpreter { offset, pointer } => {
            let state = if pointer {
                mem.u64(interp + offset).map_err(unreadable)?
            } else {
                interp + offset
            };
            (state + MGMT_ARENAS, state + MGMT_MAXARENAS)
        }
    };
    let arenas = mem.u64(arenas_at).map_err(unreadable)?;
    let mut b = [0u8; 4];
    mem.read(max_at, &mut b).map_err(unreadable)?;
    Ok((arenas, u64::from(u32::from_le_bytes(b))))
}

/// Reads the arena table of the interpreter at `interp` and every used
/// pool's header. The process runs meanwhile: a header that contradicts
/// its arena makes the result `consistent: false`, not an error.
pub fn take(mem: &mut impl Read, roots: Roots, interp: u64, limits: Limits) -> Result<Arenas, CensusError> {
    let (table_at, slots) = table(mem, roots, interp)?;
    if slots > MAX_ARENAS || (slots > 0 && (table_at == 0 || !table_at.is_multiple_of(8))) {
        return Err(CensusError::Mismatch(
            "3.x".into(),
            format!("an arena table of {slots} slots at {table_at:#x}"),
        ));
    }
    let started = Instant::now();
    let mut out = Arenas {
        consistent: true,
        ..Default::default()
    };
    let mut classes = vec![SizeClass::default(); SIZE_CLASSES as usize];
    let mut inconsistency = None;
    let mut pools_read = 0u64;
    'arenas: for i in 0..slots {
        let mut a = [0u8; 16];
        if let Err(e) = mem.read(table_at + i * ARENA_OBJECT, &mut a) {
            inconsistency = Some(format!("arena slot {i} is unreadable: {e}"));
            break;
        }
        let address = u64::from_le_bytes(a[..8].try_into().expect("8 bytes"));
        let pool_address = u64::from_le_bytes(a[8..].try_into().expect("8 bytes"));
        if address == 0 {
            continue; // a free slot
        }
        out.arenas += 1;
        out.arena_bytes += ARENA_SIZE;
        let base = address.next_multiple_of(POOL_SIZE);
        if pool_address < base || pool_address > address.saturating_add(ARENA_SIZE) {
            inconsistency = Some(format!("arena {i}'s pools are outside it"));
            break;
        }
        let mut pool = base;
        while pool < pool_address {
            if pools_read >= limits.objects || started.elapsed() > limits.time {
                inconsistency = Some(format!("stopped after {pools_read} pools (limits)"));
                break 'arenas;
            }
            pools_read += 1;
            let mut h = [0u8; 40];
            if let Err(e) = mem.read(pool, &mut h) {
                inconsistency = Some(format!("a pool of arena {i} is unreadable: {e}"));
                break 'arenas;
            }
            let word = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
            let (count, szidx, index) = (u64::from(word(0)), word(POOL_SZIDX), word(POOL_ARENAINDEX));
            pool += POOL_SIZE;
            if count == 0 {
                continue; // empty, and its header may be stale
            }
            let size = (u64::from(szidx) + 1) * ALIGNMENT;
            let capacity = (POOL_SIZE - POOL_OVERHEAD) / size.max(1);
            if szidx >= SIZE_CLASSES || u64::from(index) != i || count > capacity {
                inconsistency = Some(format!(
                    "a pool of arena {i} changed during the census (class {szidx}, arena {index}, {count} blocks)"
                ));
                break 'arenas;
            }
            let c = &mut classes[szidx as usize];
            c.size = size;
            c.pools += 1;
            c.blocks += count;
            c.bytes += count * size;
            c.free_blocks += capacity - count;
        }
    }
    out.size_classes = classes.into_iter().filter(|c| c.pools > 0).collect();
    out.pools = out.size_classes.iter().map(|c| c.pools).sum();
    out.blocks = out.size_classes.iter().map(|c| c.blocks).sum();
    out.bytes = out.size_classes.iter().map(|c| c.bytes).sum();
    out.consistent = inconsistency.is_none();
    out.inconsistency = inconsistency;
    Ok(out)
}

/// The addresses of `arenas` and `maxarenas` (link-time) from the code of
/// 3.11's `_Py_GetAllocatedBlocks` at `ip`: the RIP-relative 32-bit load is
/// `maxarenas`; of the 64-bit loads, the one whose register is then used as
/// a memory base is `arenas` (the other is a counter it starts from).
pub fn statics_from_code(code: &[u8], ip: u64) -> Option<(u64, u64)> {
    use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut maxarenas = None;
    let mut loads: Vec<(Register, u64)> = Vec::new();
    let mut arenas = None;
    let mut insn = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut insn);
        if insn.is_invalid() || insn.mnemonic() == Mnemonic::Ret {
            break;
        }
        if insn.mnemonic() == Mnemonic::Mov
            && insn.op_count() == 2
            && insn.op0_kind() == OpKind::Register
            && insn.op1_kind() == OpKind::Memory
            && insn.is_ip_rel_memory_operand()
        {
            let target = insn.ip_rel_memory_address();
            let reg = insn.op0_register();
            if reg.is_gpr32() && maxarenas.is_none() {
                maxarenas = Some(target);
            } else if reg.is_gpr64() {
                loads.push((reg, target));
            }
            continue;
        }
        if arenas.is_none()
            && (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory)
            && let Some(&(_, target)) = loads.iter().find(|(r, _)| *r == insn.memory_base())
        {
            arenas = Some(target);
        }
        if arenas.is_some() && maxarenas.is_some() {
            break;
        }
    }
    Some((arenas?, maxarenas?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The first instructions of `_Py_GetAllocatedBlocks` in pyenv's 3.11.7
    /// (libpython3.11.so, at 0x1af280) and Debian 12's python3.11 (static
    /// PGO+LTO, at 0x6cd8e0), as objdump shows them.
    const PYENV_311: &[u8] = &[
        0x8b, 0x05, 0xd2, 0x87, 0x40, 0x00, // mov eax, [rip+0x4087d2]   maxarenas
        0x48, 0x8b, 0x15, 0x93, 0x85, 0x40, 0x00, // mov rdx, [rip+0x408593]  raw_allocated_blocks
        0x85, 0xc0, // test eax, eax
        0x74, 0x58, // je
        0x48, 0x8b, 0x35, 0xc8, 0x87, 0x40, 0x00, // mov rsi, [rip+0x4087c8]  arenas
        0x4c, 0x8d, 0x04, 0x40, // lea r8, [rax+rax*2]
        0x49, 0xc1, 0xe0, 0x04, // shl r8, 4
        0x49, 0x01, 0xf0, // add r8, rsi
        0xeb, 0x0c, // jmp
        0x0f, 0x1f, 0x00, // nop
        0x48, 0x83, 0xc6, 0x30, // add rsi, 0x30
        0x49, 0x39, 0xf0, // cmp r8, rsi
        0x74, 0x38, // je
        0x48, 0x8b, 0x06, // mov rax, [rsi]
        0xc3,
    ];
    const DEBIAN_311: &[u8] = &[
        0x48, 0x8b, 0x15, 0x99, 0x15, 0x3b, 0x00, // mov rdx, [rip+0x3b1599]  raw_allocated_blocks
        0x44, 0x8b, 0x0d, 0x0a, 0x18, 0x3f, 0x00, // mov r9d, [rip+0x3f180a]  maxarenas
        0x45, 0x31, 0xc0, // xor r8d, r8d
        0x48, 0x8b, 0x3d, 0x10, 0x18, 0x3f, 0x00, // mov rdi, [rip+0x3f1810]  arenas
        0x45, 0x39, 0xc1, // cmp r9d, r8d
        0x74, 0x34, // je
        0x48, 0x8b, 0x07, // mov rax, [rdi]
        0xc3,
    ];

    #[test]
    fn the_arena_statics_are_found_in_both_builds_of_3_11() {
        assert_eq!(statics_from_code(PYENV_311, 0x1af280), Some((0x5b7a60, 0x5b7a58)));
        assert_eq!(statics_from_code(DEBIAN_311, 0x6cd8e0), Some((0xabf108, 0xabf0f8)));
        assert_eq!(statics_from_code(&DEBIAN_311[..24], 0x6cd8e0), None);
        assert_eq!(statics_from_code(&[0xc3], 0), None);
    }

    struct Fake(HashMap<u64, u8>);

    impl Fake {
        fn put(&mut self, at: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.0.insert(at + i as u64, *b);
            }
        }

        fn pool(&mut self, at: u64, count: u32, arena: u32, szidx: u32) {
            let mut h = [0u8; 48];
            h[..4].copy_from_slice(&count.to_le_bytes());
            h[32..36].copy_from_slice(&arena.to_le_bytes());
            h[36..40].copy_from_slice(&szidx.to_le_bytes());
            self.put(at, &h);
        }
    }

    impl Read for Fake {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = *self
                    .0
                    .get(&(addr + i as u64))
                    .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            }
            Ok(())
        }
    }

    /// Interpreter at 0x1000 whose state (3.12-style) holds a table of three
    /// slots at 0x8000: arena 0 unaligned with three pools carved, slot 1
    /// free, arena 2 with one pool.
    fn fake() -> Fake {
        let mut m = Fake(HashMap::new());
        let state = 0x1000 + 3960;
        m.put(state + MGMT_ARENAS, &0x8000u64.to_le_bytes());
        m.put(state + MGMT_MAXARENAS, &3u32.to_le_bytes());
        let arena0 = 0x100_0100u64;
        let base0 = 0x100_4000u64;
        let slot = |m: &mut Fake, i: u64, address: u64, pool_address: u64| {
            m.put(0x8000 + i * 48, &address.to_le_bytes());
            m.put(0x8000 + i * 48 + 8, &pool_address.to_le_bytes());
        };
        slot(&mut m, 0, arena0, base0 + 3 * POOL_SIZE);
        slot(&mut m, 1, 0, 0);
        slot(&mut m, 2, 0x200_0000, 0x200_0000 + POOL_SIZE);
        m.pool(base0, 10, 0, 0); // 16-byte blocks
        m.pool(base0 + POOL_SIZE, 0, 0, 5); // empty: not counted
        m.pool(base0 + 2 * POOL_SIZE, 3, 0, 31); // 512-byte blocks
        m.pool(0x200_0000, 7, 2, 0);
        m
    }

    const ROOTS_312: Roots = Roots::Interpreter {
        offset: 3960,
        pointer: false,
    };

    #[test]
    fn used_pools_are_summed_by_size_class() {
        let a = take(&mut fake(), ROOTS_312, 0x1000, Limits::default()).unwrap();
        assert!(a.consistent, "{a:?}");
        assert_eq!((a.arenas, a.arena_bytes, a.pools, a.blocks), (2, 2 * ARENA_SIZE, 3, 20));
        assert_eq!(
            a.size_classes,
            [
                SizeClass {
                    size: 16,
                    pools: 2,
                    blocks: 17,
                    bytes: 272,
                    free_blocks: 2 * 1021 - 17
                },
                SizeClass {
                    size: 512,
                    pools: 1,
                    blocks: 3,
                    bytes: 1536,
                    free_blocks: 31 - 3
                },
            ]
        );
        assert_eq!(a.bytes, 272 + 1536);
    }

    #[test]
    fn a_pool_that_contradicts_its_arena_is_reported_not_trusted() {
        let mut m = fake();
        m.pool(0x200_0000, 7, 1, 0); // says arena 1
        let a = take(&mut m, ROOTS_312, 0x1000, Limits::default()).unwrap();
        assert!(!a.consistent);
        assert!(a.inconsistency.unwrap().contains("changed during the census"));
        let mut m = fake();
        m.pool(0x200_0000, 5000, 2, 0); // more blocks than fit
        assert!(!take(&mut m, ROOTS_312, 0x1000, Limits::default()).unwrap().consistent);
        let mut m = fake();
        m.put(0x8000 + 8, &0x900_0000u64.to_le_bytes()); // pools past the arena
        assert!(!take(&mut m, ROOTS_312, 0x1000, Limits::default()).unwrap().consistent);
    }

    #[test]
    fn a_table_that_is_not_one_is_an_error() {
        let mut m = fake();
        m.put(0x1000 + 3960 + MGMT_MAXARENAS, &u32::MAX.to_le_bytes());
        assert!(take(&mut m, ROOTS_312, 0x1000, Limits::default()).is_err());
        let pointer = Roots::Interpreter {
            offset: 8,
            pointer: true,
        };
        assert!(take(&mut fake(), pointer, 0x1000, Limits::default()).is_err());
    }
}

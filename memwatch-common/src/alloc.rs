//! Allocation records and the exact semantics of each allocator call.
//!
//! The rules are pure functions so that the eBPF programs and the host unit
//! tests run the very same code.

#[cfg(feature = "user")]
mod user;

use crate::{cookie::CallKind, time::STALE_CALL_NS};

/// Page size assumed for `pvalloc` rounding and `munmap` lengths (x86_64).
pub const PAGE_SIZE: u64 = 4096;
/// `MAP_ANONYMOUS` on x86_64.
pub const MAP_ANONYMOUS: u64 = 0x20;
/// `MAP_FAILED`, i.e. `(void *)-1`.
pub const MAP_FAILED: u64 = u64::MAX;

/// A live allocation's identity. `generation` changes at every exec (and is
/// unique per tracked process incarnation), so a new image or a reused pid
/// never matches an old record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocKey {
    pub tgid: u32,
    pub generation: u32,
    pub addr: u64,
}

/// What is known about a live allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocRecord {
    pub size: u64,
    /// CLOCK_MONOTONIC ns when the call began, to [`crate::time::CLOCK_TICK_NS`].
    pub timestamp_ns: u64,
    /// Content hash of the user stack in `STACKS`; 0 when none was captured.
    pub stack_id: u64,
    /// [`CallKind`] as u8.
    pub kind: u8,
    /// [`crate::cookie::Family`] as u8.
    pub family: u8,
    pub _pad0: u16,
    pub _pad1: u32,
}

/// Counter slots per tracked process: the generation's low bits pick one,
/// so that an exec (which moves the generation on in the kernel) starts
/// counting in a fresh slot while the daemon reads the old one's final values.
pub const GENERATION_SLOTS: u32 = 4;

/// Index in the `COUNTERS` per-CPU array for a process's counter slot base,
/// generation and allocator family.
#[inline(always)]
pub const fn counter_index(slot: u32, generation: u32, family: u8) -> u32 {
    (slot * GENERATION_SLOTS + (generation % GENERATION_SLOTS)) * crate::cookie::Family::COUNT + (family as u32 - 1)
}

/// Per-process counters (one copy per CPU; the daemon sums them).
///
/// Identity, per incarnation: `allocated_bytes - lost_bytes - freed_bytes` is
/// the sum of that incarnation's live records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcCounters {
    /// Successful allocations, including moves by realloc.
    pub allocations: u64,
    /// Releases of tracked allocations (free, munmap, realloc's old block).
    pub frees: u64,
    pub allocated_bytes: u64,
    /// Bytes released from tracked allocations (a partial munmap counts its part).
    pub freed_bytes: u64,
    /// Releases of addresses with no live record (allocated before tracking began).
    pub untracked_frees: u64,
    /// Allocations that could not be recorded (live map full).
    pub lost_allocations: u64,
    pub lost_bytes: u64,
    /// Usable bytes of the untracked frees, where the allocator keeps a
    /// block's size before it (glibc: [`glibc_usable_size`]).
    pub untracked_freed_usable_bytes: u64,
}

/// The usable size of a block glibc's malloc holds, from its chunk header
/// (the 8 bytes before the pointer: the chunk's size, flags in the low 3
/// bits; a mapped chunk, flag 2, has 16 bytes of overhead, others 8). 0
/// when the word is no plausible chunk size.
pub const fn glibc_usable_size(header: u64) -> u64 {
    let chunk = header & !7;
    if chunk < 32 || chunk >= 1 << 40 {
        return 0;
    }
    if header & 2 != 0 { chunk - 16 } else { chunk - 8 }
}

/// glibc's default mmap threshold: requests this large get their own mapping.
pub const GLIBC_MMAP_THRESHOLD: u64 = 128 << 10;

/// The usable size glibc's malloc gives a request of `size` bytes (x86-64:
/// 8-byte header, 16-byte alignment, 32-byte minimum chunk; requests from
/// the mmap threshold on are page-rounded mappings). With
/// [`glibc_usable_size`], what the requests of blocks freed untracked were
/// can be estimated from the slack of the process's own live blocks.
pub const fn glibc_usable_for(size: u64) -> u64 {
    let chunk = (size + 8 + 15) & !15;
    let chunk = if chunk < 32 { 32 } else { chunk };
    if size >= GLIBC_MMAP_THRESHOLD {
        ((chunk + 8 + 4095) & !4095) - 16
    } else {
        chunk - 8
    }
}

/// A process generation's stack, in `STACK_TOTALS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StackTotalKey {
    pub tgid: u32,
    pub generation: u32,
    pub stack_id: u64,
}

/// Allocations made from one stack since tracking began, freed or not:
/// the allocation profile (Go's alloc_objects and alloc_space).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    pub allocations: u64,
    pub bytes: u64,
    /// The allocator call and family of its first allocation.
    pub kind: u8,
    pub family: u8,
    pub _pad: [u8; 6],
}

/// Slots of each CPU's cache in front of `STACK_TOTALS`: most allocations
/// come from a few stacks, and adding to this CPU's slot costs no hash
/// lookup and no atomic operation. A power of two.
pub const STACK_TOTALS_CACHE_SLOTS: u32 = 256;

/// One slot of that cache: a stack's allocations not yet added to the map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotalsSlot {
    pub key: StackTotalKey,
    pub totals: StackTotals,
}

/// The cache slot of a (process generation, stack).
pub const fn stack_totals_slot(key: &StackTotalKey) -> u32 {
    stack_totals_slot_of(key.tgid, key.generation, key.stack_id)
}

/// [`stack_totals_slot`] from the key's parts (no key on the stack).
pub const fn stack_totals_slot_of(tgid: u32, generation: u32, stack_id: u64) -> u32 {
    let h = stack_id ^ ((tgid as u64) << 32 | generation as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h ^ (h >> 29)) as u32 & (STACK_TOTALS_CACHE_SLOTS - 1)
}

/// A tracked process's live bytes (allocated − freed, lost ones included)
/// and their high-water mark, in the `PEAKS` array at [`peak_index`]:
/// shared by all CPUs, updated atomically, so the mark is exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peak {
    pub live: u64,
    pub peak: u64,
    /// When the mark was reached (CLOCK_MONOTONIC, coarse).
    pub peak_ns: u64,
    pub _reserved: u64,
}

/// A process generation's entry in `PEAKS`: one per counter slot and
/// generation parity, as for its counters.
pub const fn peak_index(slot: u32, generation: u32) -> u32 {
    slot * GENERATION_SLOTS + (generation % GENERATION_SLOTS)
}

/// A process being tracked, in the `TRACKED` array at index tgid: set by the
/// daemon, moved on by the exec tracepoint. Generation 0 means untracked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    pub generation: u32,
    /// Base of the process's counter slots (see [`counter_index`]).
    pub slot: u32,
}

/// A thread's allocator call state, from an entry to its return. The entry
/// stays in the map between calls with `kind` = [`IDLE`], so that the hot
/// path writes it in place instead of inserting and deleting it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallEntry {
    /// Stack pointer at function entry (the return address is at this address).
    pub entry_sp: u64,
    pub timestamp_ns: u64,
    /// Requested size, computed from the arguments at entry.
    pub size: u64,
    /// Kind-specific: realloc's old pointer, posix_memalign's out-parameter,
    /// mmap's flags.
    pub aux: u64,
    pub kind: u8,
    pub family: u8,
    pub _pad0: u16,
    pub _pad1: u32,
}

/// `CallEntry::kind` of a thread with no allocator call in flight.
pub const IDLE: u8 = 0;

/// Up to three integer arguments of an allocator call, in ABI order.
#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub a0: u64,
    pub a1: u64,
    pub a2: u64,
    pub a3: u64,
}

/// `(size, aux)` of an allocating call from its arguments.
///
/// Overflowing products wrap: the call then fails and nothing is recorded.
#[inline(always)]
pub fn call_request(kind: CallKind, args: Args) -> (u64, u64) {
    match kind {
        CallKind::Malloc | CallKind::Valloc => (args.a0, 0),
        CallKind::Calloc => (args.a0.wrapping_mul(args.a1), 0),
        CallKind::Realloc => (args.a1, args.a0),
        CallKind::ReallocArray => (args.a1.wrapping_mul(args.a2), args.a0),
        CallKind::PosixMemalign => (args.a2, args.a0),
        CallKind::AlignedAlloc => (args.a1, 0),
        CallKind::Pvalloc => (round_up_page(args.a0), 0),
        CallKind::Mmap => (args.a1, args.a3),
        CallKind::Free | CallKind::Munmap => (0, args.a0),
    }
}

#[inline(always)]
pub const fn round_up_page(n: u64) -> u64 {
    n.wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// What a returning allocator call did: release one block, record another, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Address whose record goes away (0: none).
    pub release: u64,
    /// Address to record with `size` (0: none).
    pub record: u64,
    pub size: u64,
}

/// Where `posix_memalign` wrote its result, for [`call_outcome`].
pub enum OutParam {
    /// Not a posix_memalign call, or it failed before writing.
    None,
    Read(u64),
    /// The out-parameter could not be read from user memory.
    Unreadable,
}

/// The effect of an allocating call given its entry state and return value.
///
/// * `realloc(NULL, n)` allocates; `realloc(p, 0)` frees `p` (glibc returns
///   NULL; a libc returning a fresh block records it as well);
/// * a successful realloc moves the record; a failed one (NULL with n > 0)
///   leaves the old record in place;
/// * `posix_memalign` counts only when it returns 0, at `*memptr`;
/// * `mmap` counts anonymous mappings only.
#[inline(always)]
pub fn call_outcome(entry: &CallEntry, ret: u64, out: OutParam) -> Outcome {
    let Some(kind) = CallKind::from_u8(entry.kind) else {
        return Outcome::default();
    };
    let none = Outcome::default();
    match kind {
        CallKind::Malloc | CallKind::Calloc | CallKind::AlignedAlloc | CallKind::Valloc | CallKind::Pvalloc => {
            if ret == 0 {
                none
            } else {
                Outcome {
                    release: 0,
                    record: ret,
                    size: entry.size,
                }
            }
        }
        CallKind::Realloc | CallKind::ReallocArray => {
            if ret != 0 {
                Outcome {
                    release: entry.aux,
                    record: ret,
                    size: entry.size,
                }
            } else if entry.size == 0 {
                Outcome {
                    release: entry.aux,
                    ..none
                }
            } else {
                none
            }
        }
        CallKind::PosixMemalign => match out {
            OutParam::Read(p) if ret as u32 == 0 && p != 0 => Outcome {
                release: 0,
                record: p,
                size: entry.size,
            },
            _ => none,
        },
        CallKind::Mmap => {
            if ret != MAP_FAILED && ret != 0 && entry.aux & MAP_ANONYMOUS != 0 {
                Outcome {
                    release: 0,
                    record: ret,
                    size: entry.size,
                }
            } else {
                none
            }
        }
        CallKind::Free | CallKind::Munmap => none,
    }
}

/// What to do with a new allocator call given the thread's call in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryDecision {
    /// No call in flight: this is an outer call; record its entry.
    Record,
    /// Called from inside another allocator call (calloc→malloc,
    /// realloc→free, malloc→mmap, a tail call): the outer call accounts for it.
    Nested,
    /// The call in flight must have returned unseen: replace it (and count it).
    ReplaceStale,
}

/// Decides whether an allocating call is an outer call.
///
/// The stack grows down: a call made from inside the one in flight has a
/// lower entry stack pointer; a tail call (`jmp realloc`) has the same one but
/// is a different function — or the same kind of another family
/// (`PyObject_Malloc` → `jmp malloc` under PYTHONMALLOC=malloc).
#[inline(always)]
pub fn classify_entry(
    in_flight: Option<&CallEntry>,
    entry_sp: u64,
    kind: CallKind,
    family: u8,
    now_ns: u64,
) -> EntryDecision {
    let Some(prev) = in_flight else {
        return EntryDecision::Record;
    };
    // Saturating: a clock that reads back (a torn read of the daemon's
    // published clock) never makes a call stale.
    if now_ns.saturating_sub(prev.timestamp_ns) > STALE_CALL_NS {
        return EntryDecision::ReplaceStale;
    }
    if prev.entry_sp > entry_sp || (prev.entry_sp == entry_sp && (prev.kind != kind as u8 || prev.family != family)) {
        EntryDecision::Nested
    } else {
        EntryDecision::ReplaceStale
    }
}

/// Whether a return probe belongs to the call in flight: the same function
/// of the same family, returning above the frame it entered with. Returns of
/// nested calls (and of the inner function of a tail call) do not match.
#[inline(always)]
pub fn return_matches(in_flight: &CallEntry, kind: CallKind, family: u8, sp: u64) -> bool {
    in_flight.kind == kind as u8 && in_flight.family == family && sp > in_flight.entry_sp
}

/// How `munmap(addr, len)` changes a mapping recorded at `addr` with `size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmap {
    /// A zero length fails with EINVAL: nothing changes.
    Nothing,
    /// The whole mapping goes.
    All,
    /// Its head goes: the rest stays recorded at `addr + freed`.
    Head { freed: u64, rest: u64 },
}

#[inline(always)]
pub fn unmap_effect(size: u64, len: u64) -> Unmap {
    let freed = round_up_page(len);
    if len == 0 {
        Unmap::Nothing
    } else if freed >= round_up_page(size) {
        Unmap::All
    } else {
        Unmap::Head {
            freed,
            rest: size.saturating_sub(freed),
        }
    }
}

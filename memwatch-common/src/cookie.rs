//! The attach cookie: what a probe site is (call kind, allocator family) and
//! how its stack pointer relates to the function's entry.
//!
//! One generic program per role serves every allocator function and family;
//! the daemon encodes the specifics in the cookie of each attachment.

#[cfg(feature = "user")]
mod user;

/// The allocator call a probe site belongs to. Its semantics decide how the
/// arguments and the return value are read.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// `malloc(size)`
    Malloc = 1,
    /// `calloc(nmemb, size)`
    Calloc = 2,
    /// `realloc(ptr, size)`
    Realloc = 3,
    /// `reallocarray(ptr, nmemb, size)`
    ReallocArray = 4,
    /// `posix_memalign(memptr, alignment, size)`: returns 0 and writes `*memptr`.
    PosixMemalign = 5,
    /// `aligned_alloc(alignment, size)` and `memalign(alignment, size)`.
    AlignedAlloc = 6,
    /// `valloc(size)`
    Valloc = 7,
    /// `pvalloc(size)`: the size is rounded up to a whole page.
    Pvalloc = 8,
    /// `mmap(addr, length, prot, flags, fd, offset)`: anonymous mappings only.
    Mmap = 9,
    /// `free(ptr)`
    Free = 10,
    /// `munmap(addr, length)`
    Munmap = 11,
}

impl CallKind {
    pub const ALL: [CallKind; 11] = [
        CallKind::Malloc,
        CallKind::Calloc,
        CallKind::Realloc,
        CallKind::ReallocArray,
        CallKind::PosixMemalign,
        CallKind::AlignedAlloc,
        CallKind::Valloc,
        CallKind::Pvalloc,
        CallKind::Mmap,
        CallKind::Free,
        CallKind::Munmap,
    ];

    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => CallKind::Malloc,
            2 => CallKind::Calloc,
            3 => CallKind::Realloc,
            4 => CallKind::ReallocArray,
            5 => CallKind::PosixMemalign,
            6 => CallKind::AlignedAlloc,
            7 => CallKind::Valloc,
            8 => CallKind::Pvalloc,
            9 => CallKind::Mmap,
            10 => CallKind::Free,
            11 => CallKind::Munmap,
            _ => return None,
        })
    }

    /// The integer arguments (bit i = argument i) the programs read at the
    /// probe site; placement must not move past an instruction changing them.
    pub const fn arguments_read(self) -> u8 {
        match self {
            CallKind::Malloc | CallKind::Valloc | CallKind::Pvalloc | CallKind::Free => 0b0001,
            CallKind::Calloc | CallKind::Realloc | CallKind::Munmap => 0b0011,
            CallKind::ReallocArray => 0b0111,
            CallKind::PosixMemalign => 0b0101,
            CallKind::AlignedAlloc => 0b0010,
            CallKind::Mmap => 0b1010,
        }
    }

    /// Releases memory at entry and needs no return probe.
    pub const fn is_release(self) -> bool {
        matches!(self, CallKind::Free | CallKind::Munmap)
    }

    pub const fn name(self) -> &'static str {
        match self {
            CallKind::Malloc => "malloc",
            CallKind::Calloc => "calloc",
            CallKind::Realloc => "realloc",
            CallKind::ReallocArray => "reallocarray",
            CallKind::PosixMemalign => "posix_memalign",
            CallKind::AlignedAlloc => "aligned_alloc",
            CallKind::Valloc => "valloc",
            CallKind::Pvalloc => "pvalloc",
            CallKind::Mmap => "mmap",
            CallKind::Free => "free",
            CallKind::Munmap => "munmap",
        }
    }
}

/// Which allocator implementation a probe belongs to. It labels counters and
/// lets the same programs serve libc, prefixed allocators and interpreters.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Libc = 1,
    /// CPython's object and memory allocators (`PyObject_Malloc`,
    /// `PyMem_Malloc` and their kin), per object.
    Python = 2,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Libc, Family::Python];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Family::Libc),
            2 => Some(Family::Python),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Family::Libc => "libc",
            Family::Python => "python",
        }
    }
}

/// What a probe site is. Encoded into the 64-bit attach cookie as
/// `kind | family << 8 | sp_words << 16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeCookie {
    pub kind: CallKind,
    pub family: Family,
    /// Words pushed between the function's entry and the probe site, so that
    /// `sp + 8 * sp_words` is the stack pointer at entry. Zero at entry.
    pub sp_words: u8,
    /// The function takes its allocator's context first, as the functions of
    /// CPython's allocator table do (`free(ctx, ptr)`): the call's arguments
    /// start at the second argument register.
    pub ctx_arg: bool,
    /// The allocator keeps each block's size in the word before it, as
    /// glibc's malloc does: an untracked free's size can be read.
    pub chunk_header: bool,
}

impl ProbeCookie {
    pub const fn encode(self) -> u64 {
        (self.kind as u64)
            | ((self.family as u64) << 8)
            | ((self.sp_words as u64) << 16)
            | ((self.ctx_arg as u64) << 24)
            | ((self.chunk_header as u64) << 25)
    }

    pub const fn decode(cookie: u64) -> Option<Self> {
        let kind = match CallKind::from_u8(cookie as u8) {
            Some(k) => k,
            None => return None,
        };
        let family = match Family::from_u8((cookie >> 8) as u8) {
            Some(f) => f,
            None => return None,
        };
        Some(ProbeCookie {
            kind,
            family,
            sp_words: (cookie >> 16) as u8,
            ctx_arg: (cookie >> 24) & 1 != 0,
            chunk_header: (cookie >> 25) & 1 != 0,
        })
    }

    /// The stack pointer at function entry, given the one at the probe site.
    pub const fn entry_sp(self, sp: u64) -> u64 {
        sp.wrapping_add(8 * self.sp_words as u64)
    }
}

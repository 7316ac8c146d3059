//! Unwinding user stacks without frame pointers, from the call-frame
//! information (`.eh_frame`, `.debug_frame`) every x86-64 ELF carries.
//!
//! The daemon turns each object's CFI into a sorted table of compact
//! [`UnwindRow`]s in one shared array (`UNWIND_ROWS`), and tells the kernel
//! which of a process's executable mappings use which table
//! ([`ProcUnwind`]). The programs walk a stack frame by frame: find the row
//! for the pc, apply it with [`step`], repeat. Rules for return addresses
//! seen before come from a per-CPU cache, so a warm walk costs a cache probe
//! and a (windowed) stack read per frame.

#[cfg(feature = "user")]
mod user;

/// Executable mappings of one process the kernel side knows about. A
/// process with more (many shared libraries) has the rest unwound by frame
/// pointers.
pub const MAX_MAPPINGS: usize = 128;

/// Entries of each CPU's rule cache (two-way set-associative, by return
/// address).
/// (A per-CPU map value holds at most 32 KiB.)
pub const RULE_CACHE_ENTRIES: usize = 1024;

/// How the caller's frame is found from a frame at some instruction.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// No CFI covers the instruction: follow the frame pointer.
    FramePointer = 0,
    /// CFA = rsp + 8·cfa.
    CfaRsp = 1,
    /// CFA = rbp + 8·cfa.
    CfaRbp = 2,
    /// CFA = *(rbp + 8·cfa): a frame that realigned its stack (GCC's DRAP).
    CfaDerefRbp = 3,
    /// A signal frame (`__restore_rt`): the interrupted registers are in the
    /// `ucontext` at rsp.
    Signal = 4,
    /// The outermost frame: its return address is undefined (`_start`,
    /// a thread's start).
    End = 5,
    /// A rule memwatch does not follow (a DWARF expression, another base
    /// register): the walk stops there and says so.
    Unsupported = 6,
}

impl RuleKind {
    pub const fn from_u8(v: u8) -> RuleKind {
        match v {
            1 => RuleKind::CfaRsp,
            2 => RuleKind::CfaRbp,
            3 => RuleKind::CfaDerefRbp,
            4 => RuleKind::Signal,
            5 => RuleKind::End,
            6 => RuleKind::Unsupported,
            _ => RuleKind::FramePointer,
        }
    }
}

/// `UnwindRow::rbp`: the caller's rbp is the same as the callee's.
pub const RBP_SAME: i8 = 0;
/// `UnwindRow::rbp`: the caller's rbp was saved at [rbp] (a realigned frame).
pub const RBP_AT_RBP: i8 = i8::MIN;
/// `UnwindRow::rbp`: the caller's rbp cannot be recovered (a rule memwatch
/// does not follow); frames above that need it stop the walk.
pub const RBP_LOST: i8 = 1;

/// The rule from one instruction address on, until the next row's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRow {
    /// The first instruction it covers, as an address of its object (the
    /// ELF virtual address: a pc minus the mapping's bias).
    pub pc: u32,
    /// [`RuleKind`].
    pub kind: u8,
    /// Where the caller's rbp is: saved at CFA + 8·rbp when negative, or
    /// [`RBP_SAME`], [`RBP_AT_RBP`], [`RBP_LOST`].
    pub rbp: i8,
    /// CFA offset from the rule's base register, in 8-byte words.
    pub cfa: i16,
}

impl UnwindRow {
    pub const fn kind(&self) -> RuleKind {
        RuleKind::from_u8(self.kind)
    }

    /// The same rule at another address (rules compare without their pc).
    pub const fn same_rule(&self, other: &UnwindRow) -> bool {
        self.kind == other.kind && self.rbp == other.rbp && self.cfa == other.cfa
    }

    /// The rule without its pc, in the low 32 bits of a word: the kernel's
    /// global functions return one scalar, and a rule lookup is one of them.
    pub const fn rule_bits(&self) -> u64 {
        self.kind as u64 | (self.rbp as u8 as u64) << 8 | (self.cfa as u16 as u64) << 16
    }

    /// The rule from [`UnwindRow::rule_bits`] (pc 0).
    pub const fn from_rule_bits(bits: u64) -> UnwindRow {
        UnwindRow {
            pc: 0,
            kind: bits as u8,
            rbp: (bits >> 8) as u8 as i8,
            cfa: (bits >> 16) as u16 as i16,
        }
    }
}

/// How a mapping's code is unwound.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingKind {
    /// No table (the object keeps frame pointers, has no CFI, or none was
    /// loaded): frame pointers.
    FramePointer = 0,
    /// Rows `[rows, rows + len)` of `UNWIND_ROWS`.
    Table = 1,
    /// The `[uprobes]` page: a return address there was replaced by a
    /// pending return probe, whose original the kernel keeps.
    Trampoline = 2,
}

/// One executable mapping of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    /// pc − bias is the address in the object's own terms.
    pub bias: u64,
    /// First row in `UNWIND_ROWS`.
    pub rows: u32,
    pub len: u32,
    /// [`MappingKind`].
    pub kind: u32,
    pub _pad: u32,
}

/// Ranges of a process's code walked by frame pointers without a rule
/// lookup: the largest mappings of objects built to keep them.
pub const FP_RANGES: usize = 4;

/// A process's executable mappings, sorted by start and not overlapping.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcUnwind {
    /// Changes whenever the mappings do: the rule caches key on it. 0 while
    /// the mappings are being replaced (the kernel then walks by frame
    /// pointers).
    pub version: u32,
    pub count: u32,
    /// Set by the kernel when it asked the daemon to read the mappings
    /// again ([`crate::event::EventKind::CodeMapped`]); cleared by rewriting.
    pub refresh_asked: u32,
    pub _pad: u32,
    /// Where its interpreter frames are, when it runs CPython.
    pub py: crate::python::PyProc,
    /// [start, end) of code that keeps frame pointers (those mappings are
    /// [`MappingKind::FramePointer`] too); [0, 0] unused.
    pub fp_ranges: [[u64; 2]; FP_RANGES],
    pub mappings: [ExecMapping; MAX_MAPPINGS],
}

impl Default for ProcUnwind {
    fn default() -> Self {
        ProcUnwind {
            version: 0,
            count: 0,
            refresh_asked: 0,
            _pad: 0,
            py: crate::python::PyProc {
                enabled: 0,
                layout: 0,
                tss_key_addr: 0,
                tstate_frame: 0,
                cframe_frame: 0,
                frame_code: 0,
                frame_previous: 0,
                frame_instr: 0,
                frame_flag: 0,
            },
            fp_ranges: [[0; 2]; FP_RANGES],
            mappings: [ExecMapping::default(); MAX_MAPPINGS],
        }
    }
}

/// One entry of a CPU's rule cache: the rule found for `pc` in the process
/// and mapping version `owner`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedRule {
    pub pc: u64,
    /// tgid << 32 | version; never 0 for a real entry (versions start at 1).
    pub owner: u64,
    pub row: UnwindRow,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RuleCache {
    pub entries: [CachedRule; RULE_CACHE_ENTRIES],
}

/// The first of the two cache entries `pc` may be in (the other is this
/// index ^ 1): a multiplicative hash, so that call sites laid out at
/// regular strides spread.
#[inline(always)]
pub const fn cache_index(pc: u64) -> usize {
    (pc.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize & (RULE_CACHE_ENTRIES - 1)
}

/// Why a stack walk stopped, kept with each stack (`StackFrames::end`) and
/// counted per capture.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndReason {
    /// The outermost frame was reached.
    Complete = 0,
    /// The stack is deeper than the frames kept.
    DepthLimit = 1,
    /// A frame pointer that is not one (zero is the end; odd, or not moving
    /// up the stack, is not): code without frame pointers and no CFI.
    BadFramePointer = 2,
    /// A return address in no mapping memwatch has read yet (a library
    /// loaded since, JIT code).
    UnknownMapping = 3,
    /// A CFI rule memwatch does not follow.
    UnsupportedRule = 4,
    /// The stack could not be read where a rule said to.
    StackUnreadable = 5,
    /// A CFA that does not move up the stack.
    BadFrame = 6,
    /// A return probe's trampoline whose original return address was not
    /// found.
    Trampoline = 7,
}

impl EndReason {
    pub const COUNT: u32 = 8;

    pub const ALL: [EndReason; EndReason::COUNT as usize] = [
        EndReason::Complete,
        EndReason::DepthLimit,
        EndReason::BadFramePointer,
        EndReason::UnknownMapping,
        EndReason::UnsupportedRule,
        EndReason::StackUnreadable,
        EndReason::BadFrame,
        EndReason::Trampoline,
    ];

    pub const fn from_u64(v: u64) -> Option<EndReason> {
        if v < EndReason::COUNT as u64 {
            Some(EndReason::ALL[v as usize])
        } else {
            None
        }
    }

    /// The `reason` label value, and what `/leaks` says.
    pub const fn name(self) -> &'static str {
        match self {
            EndReason::Complete => "complete",
            EndReason::DepthLimit => "depth_limit",
            EndReason::BadFramePointer => "no_frame_pointer",
            EndReason::UnknownMapping => "unknown_mapping",
            EndReason::UnsupportedRule => "unsupported_rule",
            EndReason::StackUnreadable => "stack_unreadable",
            EndReason::BadFrame => "bad_frame",
            EndReason::Trampoline => "uprobe_trampoline",
        }
    }
}

/// The registers a walk tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
    /// `pc` is a return address (look its rule up at pc − 1, inside the
    /// call), rather than the address of an interrupted instruction.
    pub ret: bool,
}

impl Regs {
    /// The address whose rule applies.
    #[inline(always)]
    pub const fn lookup_pc(&self) -> u64 {
        if self.ret { self.pc.wrapping_sub(1) } else { self.pc }
    }
}

/// Where a step left the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The caller's frame; `ra_at` is where its return address was read
    /// (to look up the original when it is a return probe's trampoline).
    Caller {
        regs: Regs,
        ra_at: u64,
    },
    End(EndReason),
}

/// Offsets in `struct ucontext` (x86-64) of the registers a signal frame
/// saved: `uc_mcontext.gregs[REG_RBP]`, `[REG_RSP]`, `[REG_RIP]`.
pub const UCONTEXT_RBP: u64 = 40 + 8 * 10;
pub const UCONTEXT_RSP: u64 = 40 + 8 * 15;
pub const UCONTEXT_RIP: u64 = 40 + 8 * 16;

/// Applies `row` (the rule at `regs.lookup_pc()`) to find the caller's
/// frame. `read` reads a word of the user stack. Pure, so that the host
/// tests it and the programs run it.
///
/// Written with three reads at most, each in one place (the CFA through
/// memory, the return address, the saved rbp): the kernel's verifier walks
/// every path through this, once per program.
#[inline(always)]
pub fn step(row: UnwindRow, regs: &Regs, mut read: impl FnMut(u64) -> Option<u64>) -> Step {
    let w = |n: i16| (n as i64 * 8) as u64;
    let kind = row.kind();
    // Where the CFA is, or where it is stored.
    let (base, deref) = match kind {
        RuleKind::End => return Step::End(EndReason::Complete),
        RuleKind::Unsupported => return Step::End(EndReason::UnsupportedRule),
        // The interrupted registers are in the ucontext at rsp.
        RuleKind::Signal => (regs.sp.wrapping_add(UCONTEXT_RSP), true),
        RuleKind::FramePointer if regs.bp == 0 => return Step::End(EndReason::Complete),
        RuleKind::FramePointer if regs.bp & 7 != 0 || regs.bp < regs.sp => {
            return Step::End(EndReason::BadFramePointer);
        }
        // The saved rbp, then the return address, at rbp.
        RuleKind::FramePointer => (regs.bp.wrapping_add(16), false),
        RuleKind::CfaRsp => (regs.sp.wrapping_add(w(row.cfa)), false),
        RuleKind::CfaRbp | RuleKind::CfaDerefRbp if regs.bp == 0 => return Step::End(EndReason::UnsupportedRule),
        RuleKind::CfaRbp => (regs.bp.wrapping_add(w(row.cfa)), false),
        RuleKind::CfaDerefRbp => (regs.bp.wrapping_add(w(row.cfa)), true),
    };
    let cfa = if deref {
        match read(base) {
            Some(v) => v,
            None => return Step::End(EndReason::StackUnreadable),
        }
    } else {
        base
    };
    let signal = kind == RuleKind::Signal;
    if !signal && (cfa <= regs.sp || cfa & 7 != 0) {
        return Step::End(if kind == RuleKind::FramePointer {
            EndReason::BadFramePointer
        } else {
            EndReason::BadFrame
        });
    }
    let ra_at = if signal {
        regs.sp.wrapping_add(UCONTEXT_RIP)
    } else {
        cfa - 8
    };
    let Some(pc) = read(ra_at) else {
        return Step::End(EndReason::StackUnreadable);
    };
    if pc == 0 {
        return Step::End(EndReason::Complete);
    }
    // Where the caller's rbp was saved, if it was.
    let rbp = match kind {
        RuleKind::FramePointer => RBP_AT_RBP,
        RuleKind::Signal => RBP_SIGNAL,
        _ => row.rbp,
    };
    let bp_at = match rbp {
        RBP_SAME | RBP_LOST => None,
        RBP_AT_RBP => Some(regs.bp),
        RBP_SIGNAL => Some(regs.sp.wrapping_add(UCONTEXT_RBP)),
        n => Some(cfa.wrapping_add(w(n as i16))),
    };
    let bp = match bp_at {
        Some(at) => match read(at) {
            Some(v) => v,
            None => return Step::End(EndReason::StackUnreadable),
        },
        None if rbp == RBP_LOST => 0,
        None => regs.bp,
    };
    Step::Caller {
        regs: Regs {
            pc,
            sp: cfa,
            bp,
            // A signal frame resumes an interrupted instruction.
            ret: !signal,
        },
        ra_at: if signal { 0 } else { ra_at },
    }
}

/// Internal to [`step`]: the caller's rbp is in a signal frame's ucontext.
const RBP_SIGNAL: i8 = 2;

/// Offsets into kernel structures (from the kernel's BTF, read by the
/// daemon) to find the original return address behind a return probe's
/// trampoline: `current->utask->return_instances`, a list of
/// `{stack, orig_ret_vaddr, next}`. Zero when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_utask: u32,
    pub utask_return_instances: u32,
    pub ri_stack: u32,
    pub ri_orig_ret_vaddr: u32,
    pub ri_next: u32,
    /// `task_struct.thread.fsbase`: a thread's TLS base (for CPython's
    /// thread state); 0 when unknown.
    pub task_fsbase: u32,
}

impl KernelOffsets {
    pub const fn return_probes_known(&self) -> bool {
        self.task_utask != 0 && self.ri_next != 0
    }
}

/// How a stack was walked, for [`stat_index`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Cfi = 0,
    FramePointers = 1,
}

/// `UNWIND_STATS` index of walks by `method` that ended for `end`.
pub const fn stat_index(method: Method, end: EndReason) -> u32 {
    method as u32 * EndReason::COUNT + end as u32
}

/// `UNWIND_STATS` indexes of frames walked by CFI (each one rule lookup),
/// and of the lookups the per-CPU cache missed.
pub const STAT_CFI_FRAMES: u32 = 2 * EndReason::COUNT;
pub const STAT_RULE_MISSES: u32 = STAT_CFI_FRAMES + 1;
pub const STATS_LEN: u32 = STAT_RULE_MISSES + 1;

/// Pending return probes looked at per trampoline frame.
pub const MAX_RETURN_INSTANCES: usize = 8;

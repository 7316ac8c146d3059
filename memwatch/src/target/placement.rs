//! Where to put a probe in a function so that the kernel emulates the probed
//! instruction instead of single-stepping it (~1 µs instead of ~10 µs a hit
//! on x86_64; see docs/src/benchmarks.md).
//!
//! From the entry, the first instruction the kernel emulates is chosen if it
//! is reached without a branch and before any argument register the programs
//! read changes. Sites with a return probe must also come before the first
//! push: the kernel finds the return address at the stack pointer there.
//! Release functions may skip their early `if (ptr == NULL) return`.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};
use memwatch_common::cookie::CallKind;
use serde::Serialize;

/// How far into a function placement looks.
pub const PROLOGUE_BYTES: usize = 64;
const MAX_INSTRUCTIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Bytes from the function's entry.
    pub offset: u64,
    /// Words pushed between the entry and the site.
    pub sp_words: u8,
    /// The probed instruction, AT&T syntax.
    pub instruction: String,
    /// Whether the kernel emulates it (else it is single-stepped).
    pub emulated: bool,
    /// Why this site.
    pub reason: String,
}

/// Whether x86_64 Linux (through 6.18) emulates a probed instruction rather
/// than single-stepping it: `push reg`, `nop`, and relative jmp/call/jcc
/// without an operand-size prefix (arch/x86/kernel/uprobes.c).
pub fn kernel_emulates(bytes: &[u8]) -> bool {
    if let [0x50..=0x57] | [0x41, 0x50..=0x57] = bytes {
        return true;
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 => return false,
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x67 | 0xf0 | 0xf2 | 0xf3 => i += 1,
            _ => break,
        }
    }
    let rex = matches!(bytes.get(i), Some(0x40..=0x4f));
    if rex {
        i += 1;
    }
    match bytes.get(i) {
        Some(0xeb | 0xe9 | 0xe8 | 0x70..=0x7f) => true,
        // With REX.B, 0x90 is xchg, not nop.
        Some(0x90) => !rex,
        Some(0x0f) => matches!(bytes.get(i + 1), Some(0x80..=0x8f)),
        _ => false,
    }
}

const ARG_REGISTERS: [Register; 5] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX, Register::R8];

fn format(insn: &Instruction) -> String {
    let mut out = String::new();
    GasFormatter::new().format(insn, &mut out);
    out
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// `test reg,reg` or `cmp $0,reg` on the pointer argument, then `je`: the
/// early return on NULL of a release function.
fn is_null_check(prev: Option<&Instruction>, insn: &Instruction, pointer: Register) -> bool {
    let Some(p) = prev else { return false };
    let tests_pointer = match p.mnemonic() {
        Mnemonic::Test => {
            p.op_count() == 2
                && p.op0_kind() == OpKind::Register
                && p.op1_kind() == OpKind::Register
                && p.op0_register().full_register() == pointer
                && p.op1_register().full_register() == pointer
        }
        // iced panics on immediate() of an operand that is not one.
        Mnemonic::Cmp => {
            p.op_count() == 2
                && p.op0_kind() == OpKind::Register
                && p.op0_register().full_register() == pointer
                && matches!(
                    p.op1_kind(),
                    OpKind::Immediate8 | OpKind::Immediate32 | OpKind::Immediate8to64 | OpKind::Immediate32to64
                )
                && p.immediate(1) == 0
        }
        _ => false,
    };
    tests_pointer && matches!(insn.code(), Code::Je_rel8_64 | Code::Je_rel32_64)
}

/// Chooses the probe site for a function of `kind` whose first bytes are
/// `code`, located at `vaddr`.
pub fn place(code: &[u8], vaddr: u64, kind: CallKind) -> Placement {
    place_args(code, vaddr, kind, false)
}

/// As [`place`], for a function that takes its allocator's context before
/// the call's arguments when `ctx_arg` (see `ProbeCookie::ctx_arg`).
pub fn place_args(code: &[u8], vaddr: u64, kind: CallKind, ctx_arg: bool) -> Placement {
    let shift = usize::from(ctx_arg);
    let reads: Vec<Register> = (0..4)
        .filter(|i| kind.arguments_read() & (1 << i) != 0)
        .map(|i| ARG_REGISTERS[i + shift])
        .collect();
    let needs_return = !kind.is_release();
    let mut decoder = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut sp_words: u8 = 0;
    let mut prev: Option<Instruction> = None;
    let mut fallback: Option<Placement> = None;
    let mut stop = String::from("the prologue ends");

    for n in 0..MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        let insn = decoder.decode();
        if insn.is_invalid() {
            stop = "an undecodable instruction".into();
            break;
        }
        let offset = insn.ip() - vaddr;
        let bytes = &code[offset as usize..offset as usize + insn.len()];
        let text = format(&insn);
        let emulated = kernel_emulates(bytes);
        let null_check = kind.is_release() && is_null_check(prev.as_ref(), &insn, ARG_REGISTERS[shift]);

        if emulated && (sp_words == 0 || !needs_return) {
            let site = Placement {
                offset,
                sp_words,
                instruction: text.clone(),
                emulated: true,
                reason: if offset == 0 {
                    "the entry instruction is emulated".into()
                } else {
                    format!("moved past {n} single-stepped instruction(s) to an emulated one")
                },
            };
            if !null_check {
                return site;
            }
            // A later site also skips the trap for free(NULL); keep this one
            // in case there is none.
            fallback = Some(Placement {
                reason: "the early return on NULL is the first emulated instruction".into(),
                ..site
            });
        }

        // Can the walk go past this instruction?
        if insn.mnemonic() == Mnemonic::Syscall
            || insn.mnemonic() == Mnemonic::Int
            || insn.mnemonic() == Mnemonic::Sysenter
        {
            stop = format!("a system call ({text})");
            break;
        }
        if insn.flow_control() != FlowControl::Next && !null_check {
            stop = format!("a branch ({text})");
            break;
        }
        let used = info.info(&insn);
        if let Some(r) = used
            .used_registers()
            .iter()
            .find(|r| writes(r.access()) && reads.contains(&r.register().full_register()))
        {
            stop = format!(
                "{text}, which changes {:?}, an argument the probe reads",
                r.register().full_register()
            );
            break;
        }
        let is_push = insn.mnemonic() == Mnemonic::Push;
        let moves_sp = used
            .used_registers()
            .iter()
            .any(|r| writes(r.access()) && r.register().full_register() == Register::RSP);
        if moves_sp && !is_push {
            stop = format!("{text}, which moves the stack pointer");
            break;
        }
        if !is_push
            && used
                .used_memory()
                .iter()
                .any(|m| writes(m.access()) && m.base() == Register::RSP)
        {
            stop = format!("{text}, which writes to the stack");
            break;
        }
        if is_push {
            sp_words = sp_words.saturating_add(1);
            if needs_return {
                stop = "a push (a return probe needs the return address on top of the stack)".into();
                break;
            }
        }
        prev = Some(insn);
    }
    fallback.unwrap_or_else(|| Placement {
        reason: format!("no emulated instruction before {stop}: probing the entry"),
        ..at_entry(code, vaddr)
    })
}

/// The entry itself, for when placement is turned off.
pub fn at_entry(code: &[u8], vaddr: u64) -> Placement {
    let mut d = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let i = d.decode();
    let emulated = !i.is_invalid() && kernel_emulates(&code[..i.len().min(code.len())]);
    Placement {
        offset: 0,
        sp_words: 0,
        instruction: if i.is_invalid() {
            "(undecodable)".into()
        } else {
            format(&i)
        },
        emulated,
        reason: "placement is turned off: probing the entry".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(code: &[u8], kind: CallKind) -> Placement {
        place(code, 0x1000, kind)
    }

    #[test]
    fn the_kernel_model_matches_its_instruction_list() {
        assert!(kernel_emulates(&[0x55])); // push %rbp
        assert!(kernel_emulates(&[0x41, 0x54])); // push %r12
        assert!(!kernel_emulates(&[0x48, 0x50])); // REX.W push: not handled
        assert!(kernel_emulates(&[0x90])); // nop
        assert!(!kernel_emulates(&[0x66, 0x90])); // 16-bit nop
        assert!(!kernel_emulates(&[0x0f, 0x1f, 0x40, 0x00])); // nopl
        assert!(kernel_emulates(&[0x74, 0x05])); // je rel8
        assert!(kernel_emulates(&[0x0f, 0x84, 1, 0, 0, 0])); // je rel32
        assert!(kernel_emulates(&[0xe8, 1, 0, 0, 0])); // call
        assert!(kernel_emulates(&[0xeb, 0x10])); // jmp
        assert!(!kernel_emulates(&[0xf3, 0x0f, 0x1e, 0xfa])); // endbr64
        assert!(!kernel_emulates(&[0x48, 0x85, 0xff])); // test %rdi,%rdi
        assert!(!kernel_emulates(&[0x48, 0x89, 0xfb])); // mov %rdi,%rbx
        assert!(!kernel_emulates(&[0x48, 0x83, 0xec, 0x10])); // sub $0x10,%rsp
    }

    #[test]
    fn glibc_malloc_is_probed_at_its_entry_push() {
        // push %r12; push %rbp; push %rbx; mov %rdi,%rbx
        let p = at(&[0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb], CallKind::Malloc);
        assert_eq!(
            (p.offset, p.sp_words, p.emulated, p.instruction.as_str()),
            (0, 0, true, "push %r12")
        );
    }

    #[test]
    fn glibc_free_skips_its_null_check_to_the_push() {
        // test %rdi,%rdi; je +0xc5; push %rbp; lea -0x10(%rdi),%rsi
        let code = [
            0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55, 0x48, 0x8d, 0x77, 0xf0,
        ];
        let p = at(&code, CallKind::Free);
        assert_eq!(
            (p.offset, p.sp_words, p.emulated, p.instruction.as_str()),
            (9, 0, true, "push %rbp")
        );
        // An allocator does not skip a conditional branch.
        let p = at(&code, CallKind::Malloc);
        assert_eq!((p.offset, p.instruction.as_str()), (3, "je 0x00000000000010C8"));
    }

    #[test]
    fn endbr64_first_moves_to_the_push() {
        // endbr64; push %rbp; mov %rsp,%rbp
        let p = at(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5], CallKind::Malloc);
        assert_eq!((p.offset, p.emulated, p.instruction.as_str()), (4, true, "push %rbp"));
    }

    #[test]
    fn no_push_at_all_falls_back_to_the_entry() {
        // mov %rsi,%rax; mul %rdx; mov %rax,%rsi; ret (reallocarray-like)
        let p = at(
            &[0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x48, 0x89, 0xc6, 0xc3],
            CallKind::ReallocArray,
        );
        assert_eq!((p.offset, p.emulated), (0, false));
        assert!(p.reason.contains("an argument the probe reads"), "{}", p.reason);
    }

    #[test]
    fn an_argument_clobbered_before_the_first_push_stops_the_walk() {
        // xor %edi,%edi; push %rbx — malloc reads %rdi.
        let p = at(&[0x31, 0xff, 0x53], CallKind::Malloc);
        assert_eq!((p.offset, p.emulated), (0, false));
        assert!(p.reason.contains("RDI"), "{}", p.reason);
        // aligned_alloc reads only %rsi: the same prologue is fine for it.
        let p = at(&[0x31, 0xff, 0x53], CallKind::AlignedAlloc);
        assert_eq!((p.offset, p.emulated), (2, true));
    }

    #[test]
    fn the_stack_pointer_may_only_move_by_pushes() {
        // sub $0x18,%rsp; push %rbx
        let p = at(&[0x48, 0x83, 0xec, 0x18, 0x53], CallKind::Free);
        assert_eq!(p.offset, 0);
        assert!(p.reason.contains("stack pointer"), "{}", p.reason);
    }

    #[test]
    fn release_sites_may_follow_pushes_and_count_them() {
        // push $0x0 (not emulated); push %rbx. free reads only %rdi.
        let p = at(&[0x6a, 0x00, 0x53], CallKind::Free);
        assert_eq!((p.offset, p.sp_words, p.emulated), (2, 1, true));
        // An allocator's return probe cannot sit after a push.
        let p = at(&[0x6a, 0x00, 0x53], CallKind::Malloc);
        assert_eq!((p.offset, p.emulated), (0, false));
        assert!(p.reason.contains("return address"), "{}", p.reason);
    }

    #[test]
    fn system_calls_are_not_crossed() {
        // mov $0xb,%eax; syscall; cmp; jae  (munmap)
        let code = [
            0xb8, 0x0b, 0, 0, 0, 0x0f, 0x05, 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x73, 0x01,
        ];
        let p = at(&code, CallKind::Munmap);
        assert_eq!((p.offset, p.emulated), (0, false));
        assert!(p.reason.contains("system call"), "{}", p.reason);
    }

    #[test]
    fn turning_placement_off_probes_the_entry() {
        let p = at_entry(&[0x48, 0x85, 0xff, 0x74, 0x05], 0x1000);
        assert_eq!(
            (p.offset, p.emulated, p.instruction.as_str()),
            (0, false, "test %rdi,%rdi")
        );
    }
}

use super::{CachedRule, ExecMapping, KernelOffsets, ProcUnwind, UnwindRow};

// SAFETY: #[repr(C)] plain integers with explicit padding.
unsafe impl aya::Pod for UnwindRow {}
unsafe impl aya::Pod for ExecMapping {}
unsafe impl aya::Pod for ProcUnwind {}
unsafe impl aya::Pod for CachedRule {}
unsafe impl aya::Pod for KernelOffsets {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::*;

    fn row(kind: RuleKind, cfa: i16, rbp: i8) -> UnwindRow {
        UnwindRow {
            pc: 0,
            kind: kind as u8,
            rbp,
            cfa,
        }
    }

    fn regs(pc: u64, sp: u64, bp: u64) -> Regs {
        Regs { pc, sp, bp, ret: true }
    }

    /// A stack as words at addresses.
    fn memory(words: &[(u64, u64)]) -> impl FnMut(u64) -> Option<u64> {
        let m: HashMap<u64, u64> = words.iter().copied().collect();
        move |a| m.get(&a).copied()
    }

    #[test]
    fn a_rule_survives_packing_into_a_word() {
        for kind in 0..=6u8 {
            for (rbp, cfa) in [(RBP_SAME, 1), (RBP_AT_RBP, -3), (RBP_LOST, i16::MAX), (-2, i16::MIN)] {
                let r = UnwindRow { pc: 0, kind, rbp, cfa };
                assert!(r.rule_bits() < 1 << 32);
                assert_eq!(UnwindRow::from_rule_bits(r.rule_bits()), r);
            }
        }
    }

    #[test]
    fn layouts_are_what_the_programs_index() {
        assert_eq!(size_of::<UnwindRow>(), 8);
        assert_eq!(size_of::<ExecMapping>(), 40);
        assert_eq!(size_of::<CachedRule>(), 24);
        assert!(RULE_CACHE_ENTRIES.is_power_of_two());
        for pc in [0u64, 0x401000, 0x7fff_ffff_1234, u64::MAX] {
            assert!(cache_index(pc) < RULE_CACHE_ENTRIES);
        }
    }

    #[test]
    fn a_frame_without_frame_pointer_is_found_from_rsp() {
        // sub $0x128,%rsp after one push: CFA = rsp + 0x138; rbx saved, rbp not touched.
        let r = regs(0x1000, 0x7000, 0xdead0);
        let s = step(
            row(RuleKind::CfaRsp, 0x138 / 8, RBP_SAME),
            &r,
            memory(&[(0x7000 + 0x130, 0x2222)]),
        );
        assert_eq!(
            s,
            Step::Caller {
                regs: regs(0x2222, 0x7138, 0xdead0),
                ra_at: 0x7130
            }
        );
    }

    #[test]
    fn a_frame_pointer_frame_restores_rbp() {
        // push %rbp; mov %rsp,%rbp; CFA = rbp + 16, rbp at CFA - 16.
        let r = regs(0x1000, 0x6f00, 0x7000);
        let s = step(
            row(RuleKind::CfaRbp, 2, -2),
            &r,
            memory(&[(0x7000, 0x7100), (0x7008, 0x3333)]),
        );
        assert_eq!(
            s,
            Step::Caller {
                regs: regs(0x3333, 0x7010, 0x7100),
                ra_at: 0x7008
            }
        );
        // The same frame walked without CFI, by its frame pointer.
        let fp = step(
            row(RuleKind::FramePointer, 0, 0),
            &r,
            memory(&[(0x7000, 0x7100), (0x7008, 0x3333)]),
        );
        assert_eq!(fp, s);
    }

    #[test]
    fn a_realigned_frame_dereferences_its_cfa() {
        // GCC's DRAP: CFA = *(rbp - 8), rbp saved at [rbp].
        let r = regs(0x1000, 0x6e00, 0x6f00);
        let s = step(
            row(RuleKind::CfaDerefRbp, -1, RBP_AT_RBP),
            &r,
            memory(&[(0x6ef8, 0x7020), (0x7018, 0x4444), (0x6f00, 0x7200)]),
        );
        assert_eq!(
            s,
            Step::Caller {
                regs: regs(0x4444, 0x7020, 0x7200),
                ra_at: 0x7018
            }
        );
    }

    #[test]
    fn a_signal_frame_resumes_the_interrupted_instruction() {
        let r = regs(0x5000, 0x8000, 0);
        let s = step(
            row(RuleKind::Signal, 0, 0),
            &r,
            memory(&[
                (0x8000 + UCONTEXT_RIP, 0x1234),
                (0x8000 + UCONTEXT_RSP, 0x9000),
                (0x8000 + UCONTEXT_RBP, 0x9100),
            ]),
        );
        let Step::Caller { regs: next, .. } = s else {
            panic!("{s:?}")
        };
        assert_eq!(
            next,
            Regs {
                pc: 0x1234,
                sp: 0x9000,
                bp: 0x9100,
                ret: false
            }
        );
        assert_eq!(
            next.lookup_pc(),
            0x1234,
            "an interrupted instruction is looked up as is"
        );
        assert_eq!(
            regs(0x1234, 0, 0).lookup_pc(),
            0x1233,
            "a return address inside its call"
        );
    }

    #[test]
    fn walks_end_and_say_why() {
        let r = regs(0x1000, 0x7000, 0x7100);
        let none = |_| None;
        assert_eq!(step(row(RuleKind::End, 0, 0), &r, none), Step::End(EndReason::Complete));
        assert_eq!(
            step(row(RuleKind::Unsupported, 0, 0), &r, none),
            Step::End(EndReason::UnsupportedRule)
        );
        assert_eq!(
            step(row(RuleKind::CfaRsp, 2, 0), &r, none),
            Step::End(EndReason::StackUnreadable)
        );
        // A CFA below the stack pointer is not a frame.
        assert_eq!(
            step(row(RuleKind::CfaRsp, -2, 0), &r, none),
            Step::End(EndReason::BadFrame)
        );
        // A zero return address ends the stack.
        assert_eq!(
            step(row(RuleKind::CfaRsp, 2, 0), &r, memory(&[(0x7008, 0)])),
            Step::End(EndReason::Complete)
        );
        // Frame pointers: zero ends it, an odd or lower one is not a frame pointer.
        assert_eq!(
            step(row(RuleKind::FramePointer, 0, 0), &regs(1, 0x7000, 0), none),
            Step::End(EndReason::Complete)
        );
        assert_eq!(
            step(row(RuleKind::FramePointer, 0, 0), &regs(1, 0x7000, 0x7003), none),
            Step::End(EndReason::BadFramePointer)
        );
        assert_eq!(
            step(row(RuleKind::FramePointer, 0, 0), &regs(1, 0x7000, 0x6000), none),
            Step::End(EndReason::BadFramePointer)
        );
        // An rbp-based rule after rbp was lost.
        assert_eq!(
            step(row(RuleKind::CfaRbp, 2, 0), &regs(1, 0x7000, 0), none),
            Step::End(EndReason::UnsupportedRule)
        );
    }

    #[test]
    fn end_reasons_round_trip() {
        for r in EndReason::ALL {
            assert_eq!(EndReason::from_u64(r as u64), Some(r));
        }
        assert_eq!(EndReason::from_u64(EndReason::COUNT as u64), None);
    }
}

//! Where CPython's object frees are probed.
//!
//! `PyObject_Free` and `PyMem_Free` are dispatchers — `mov %rdi,%rsi; mov
//! ctx(%rip),%rdi; jmp *free(%rip)` through the allocator tables — with no
//! instruction the kernel emulates, so a probe there is single-stepped
//! (~5 µs a hit here, on ~30 frees a request of a web handler). Both reach
//! `_PyObject_Free(ctx, ptr)`, whose second instruction (the `je` of its
//! NULL check) is emulated. It is probed instead when both tables point at
//! it in the running process: not under PYTHONMALLOC=malloc or debug, whose
//! frees go elsewhere (the dispatchers are probed then, as before).

use iced_x86::{Code, Decoder, DecoderOptions};

use super::elf::ElfInfo;
use crate::process::procfs::{MapEntry, MappedFile, runtime_address};

/// pymalloc's release function: a local symbol, present unless stripped.
pub const INNER_FREE: &str = "_PyObject_Free";
/// The exported frees that dispatch to it.
pub const FREE_DISPATCHERS: [&str; 2] = ["PyObject_Free", "PyMem_Free"];

/// Where a dispatcher's jump target is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// At this address of the object: `jmp *disp(%rip)` (3.10–3.12's
    /// `_PyObject` and `_PyMem` tables).
    Direct(u64),
    /// `disp` bytes past the pointer stored at `pointer_at`: `mov
    /// x(%rip),%rax; jmp *disp(%rax)` (3.13's tables in `_PyRuntime`,
    /// reached through the GOT).
    Indirect { pointer_at: u64, disp: u64 },
}

/// The slot a dispatcher jumps through, among its first straight-line
/// instructions.
pub fn dispatch_slot(code: &[u8], vaddr: u64) -> Option<Slot> {
    let mut d = Decoder::with_ip(64, code, vaddr, DecoderOptions::NONE);
    let mut loaded: Option<(iced_x86::Register, u64)> = None;
    for _ in 0..5 {
        if !d.can_decode() {
            return None;
        }
        let insn = d.decode();
        if insn.code() == Code::Jmp_rm64 && insn.op0_kind() == iced_x86::OpKind::Memory {
            if insn.is_ip_rel_memory_operand() {
                return Some(Slot::Direct(insn.ip_rel_memory_address()));
            }
            let (reg, pointer_at) = loaded?;
            let plain = insn.memory_base() == reg && insn.memory_index() == iced_x86::Register::None;
            return plain.then(|| Slot::Indirect {
                pointer_at,
                disp: insn.memory_displacement64(),
            });
        }
        if insn.is_invalid() || insn.flow_control() != iced_x86::FlowControl::Next {
            return None;
        }
        if insn.code() == Code::Mov_r64_rm64 && insn.is_ip_rel_memory_operand() {
            loaded = Some((insn.op0_register(), insn.ip_rel_memory_address()));
        } else if loaded.is_some_and(|(r, _)| {
            insn.op0_kind() == iced_x86::OpKind::Register && insn.op0_register().full_register() == r
        }) {
            loaded = None;
        }
    }
    None
}

/// `_PyObject_Free`'s address in `info` if every free dispatcher of process
/// `pid` reaches it now; else why not.
pub fn inner_free(pid: u32, entries: &[MapEntry], file: &MappedFile, info: &ElfInfo) -> Result<u64, String> {
    let inner = info
        .function(INNER_FREE)
        .ok_or_else(|| format!("{INNER_FREE} is not in the symbol table (stripped)"))?;
    let at = |vaddr: u64| {
        info.file_offset(vaddr)
            .and_then(|off| runtime_address(entries, file, off))
            .ok_or_else(|| format!("{vaddr:#x} is not mapped"))
    };
    let inner_runtime = at(inner)?;
    let mem = crate::python::code::Memory::open(pid).map_err(|e| e.to_string())?;
    for name in FREE_DISPATCHERS {
        let vaddr = info.function(name).ok_or_else(|| format!("no {name}"))?;
        let slot = dispatch_slot(info.prologue(vaddr), vaddr)
            .ok_or_else(|| format!("{name} is not a dispatcher through a table"))?;
        let read = |addr: u64| mem.u64(addr).map_err(|e| format!("reading {name}'s table: {e}"));
        let slot = match slot {
            Slot::Direct(slot) => at(slot)?,
            Slot::Indirect { pointer_at, disp } => read(at(pointer_at)?)?.wrapping_add(disp),
        };
        let target = read(slot)?;
        if target != inner_runtime {
            return Err(format!(
                "{name} goes elsewhere (PYTHONMALLOC set, or a hook installed at startup)"
            ));
        }
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_of_pyenv_311s_free_dispatcher_is_found() {
        // PyObject_Free of pyenv's libpython3.11: mov %rdi,%rsi;
        // mov 0x2acfe6(%rip),%rdi; jmp *0x2ad000(%rip) — to _PyObject+0x20.
        let code = [
            0x48, 0x89, 0xfe, 0x48, 0x8b, 0x3d, 0xe6, 0xcf, 0x2a, 0x00, 0xff, 0x25, 0x00, 0xd0, 0x2a, 0x00,
        ];
        assert_eq!(dispatch_slot(&code, 0x1af270), Some(Slot::Direct(0x45c280)));
    }

    #[test]
    fn the_slot_of_pyenv_313s_free_dispatcher_is_found() {
        // PyObject_Free of pyenv's libpython3.13: mov 0x380679(%rip),%rax
        // (the GOT entry of _PyRuntime); mov %rdi,%rsi; mov 0x310(%rax),%rdi;
        // jmp *0x330(%rax).
        let code = [
            0x48, 0x8b, 0x05, 0x79, 0x06, 0x38, 0x00, 0x48, 0x89, 0xfe, 0x48, 0x8b, 0xb8, 0x10, 0x03, 0x00, 0x00, 0xff,
            0xa0, 0x30, 0x03, 0x00, 0x00,
        ];
        assert_eq!(
            dispatch_slot(&code, 0x16a630),
            Some(Slot::Indirect {
                pointer_at: 0x4eacb0,
                disp: 0x330
            })
        );
        // The register overwritten before the jump: no slot.
        let clobbered = [0x48, 0x8b, 0x05, 0, 0, 0, 0, 0x31, 0xc0, 0xff, 0xa0, 0x30, 0x03, 0, 0];
        assert_eq!(dispatch_slot(&clobbered, 0x1000), None);
    }

    #[test]
    fn other_code_has_no_slot() {
        // push %rbx; ret — and a direct jmp.
        assert_eq!(dispatch_slot(&[0x53, 0xc3], 0x1000), None);
        assert_eq!(dispatch_slot(&[0xe9, 0, 0, 0, 0], 0x1000), None);
        assert_eq!(dispatch_slot(&[], 0x1000), None);
    }
}

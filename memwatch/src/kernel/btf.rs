//! Offsets of a few kernel struct members, read from the kernel's BTF
//! (/sys/kernel/btf/vmlinux), for the one place the programs read kernel
//! memory: the original return address behind a return probe's trampoline.
//!
//! A reader of just what that needs (struct members by name). The Rust BTF
//! crates are either LGPL (btf-rs) or keep their type lookup private
//! (aya-obj); the format is small and documented (Documentation/bpf/btf.rst).

use memwatch_common::unwind::KernelOffsets;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// A type's name, kind and members (for structs and unions).
struct Type {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// (name offset, type id, offset field) of each member.
    members: Vec<(u32, u32, u32)>,
}

pub struct Btf<'a> {
    strings: &'a [u8],
    /// Index i is type id i + 1.
    types: Vec<Type>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses little-endian BTF; None if it is not BTF or is cut short.
    pub fn parse(data: &'a [u8]) -> Option<Btf<'a>> {
        if u16::from_le_bytes(data.get(0..2)?.try_into().ok()?) != MAGIC {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let body = data.get(hdr_len..)?;
        let tsec = body.get(type_off..type_off.checked_add(type_len)?)?;
        let strings = body.get(str_off..str_off.checked_add(str_len)?)?;
        let mut types = Vec::new();
        let mut at = 0;
        while at + 12 <= tsec.len() {
            let (name, info) = (u32_at(tsec, at)?, u32_at(tsec, at + 4)?);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                KIND_STRUCT | KIND_UNION | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                _ => return None,
            };
            let mut members = Vec::new();
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for m in 0..vlen {
                    let base = at + 12 * m;
                    members.push((u32_at(tsec, base)?, u32_at(tsec, base + 4)?, u32_at(tsec, base + 8)?));
                }
            }
            at += extra;
            types.push(Type {
                name,
                kind,
                kind_flag: info >> 31 != 0,
                members,
            });
        }
        Some(Btf { strings, types })
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The byte offset of `member` in struct `name`, looking into anonymous
    /// struct and union members.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let t = self
            .types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name) == name.as_bytes() && !t.members.is_empty())?;
        self.find_member(t, member.as_bytes(), 0)
    }

    fn find_member(&self, t: &Type, member: &[u8], depth: u32) -> Option<u32> {
        for &(name, ty, off) in &t.members {
            let bits = if t.kind_flag { off & 0xff_ffff } else { off };
            if self.name(name) == member {
                return Some(bits / 8);
            }
            if name == 0
                && depth < 4
                && let Some(inner) = self.get(ty).filter(|i| i.kind == KIND_STRUCT || i.kind == KIND_UNION)
                && let Some(o) = self.find_member(inner, member, depth + 1)
            {
                return Some(bits / 8 + o);
            }
        }
        None
    }
}

/// The offsets the programs need to find a return probe's original return
/// address and a thread's TLS base, or zeros (those features off) when this
/// kernel's BTF lacks them.
pub fn kernel_offsets() -> KernelOffsets {
    let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
        tracing::info!("no kernel BTF: stacks through pending return probes end at their trampoline");
        return KernelOffsets::default();
    };
    let found = Btf::parse(&data).and_then(|btf| {
        Some(KernelOffsets {
            task_utask: btf.member_offset("task_struct", "utask")?,
            utask_return_instances: btf.member_offset("uprobe_task", "return_instances")?,
            ri_stack: btf.member_offset("return_instance", "stack")?,
            ri_orig_ret_vaddr: btf.member_offset("return_instance", "orig_ret_vaddr")?,
            ri_next: btf.member_offset("return_instance", "next")?,
            task_fsbase: btf.member_offset("task_struct", "thread")? + btf.member_offset("thread_struct", "fsbase")?,
        })
    });
    found.unwrap_or_else(|| {
        tracing::info!("the kernel's BTF has no uprobe return instances: stacks through pending return probes end at their trampoline");
        KernelOffsets::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_return_instances_are_found() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            panic!("this machine's kernel has BTF (the project requires it)");
        };
        let btf = Btf::parse(&data).unwrap();
        let o = kernel_offsets();
        assert!(o.return_probes_known(), "{o:?}");
        assert_eq!(
            btf.member_offset("uprobe_task", "return_instances"),
            Some(o.utask_return_instances)
        );
        // Fields of return_instance are in declaration order.
        assert!(
            o.ri_stack < o.ri_orig_ret_vaddr && o.ri_orig_ret_vaddr < o.ri_next,
            "{o:?}"
        );
        assert_eq!(btf.member_offset("task_struct", "no_such_member"), None);
        assert_eq!(btf.member_offset("no_such_struct", "next"), None);
    }

    #[test]
    fn garbage_is_not_btf() {
        assert!(Btf::parse(b"").is_none());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]).is_none());
    }
}

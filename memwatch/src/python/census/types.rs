//! Naming an object's type from its `PyTypeObject`, read from outside:
//! its name and module (a heap type's `__module__`), and its objects' size.

use super::{GC_HEAD, Read};

/// `PyTypeObject` fields (3.10 to 3.13).
pub(super) const TP_NAME: u64 = 24;
pub(super) const TP_BASICSIZE: u64 = 32;
pub(super) const TP_ITEMSIZE: u64 = 40;
pub(super) const TP_FLAGS: u64 = 168;
const TP_DICT: u64 = 264;
const TPFLAGS_HEAPTYPE: u64 = 1 << 9;
const TPFLAGS_MANAGED_DICT: u64 = 1 << 4;
const TPFLAGS_MANAGED_WEAKREF: u64 = 1 << 3;
/// Set on `type` and its subclasses: an object's type must have a type
/// that has it.
pub(super) const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;
/// Dicts: `ma_keys`, then in the keys `dk_log2_index_bytes`, `dk_kind`,
/// `dk_nentries` and the indices (3.11 to 3.13).
const MA_KEYS: u64 = 32;
const DK_LOG2_INDEX_BYTES: u64 = 9;
const DK_KIND: u64 = 10;
const DK_NENTRIES: u64 = 24;
const DK_INDICES: u64 = 32;

pub(super) struct TypeInfo {
    pub(super) name: String,
    pub(super) module: String,
    pub(super) basicsize: u64,
    /// Per item, for types whose objects keep a count of items (`ob_size`)
    /// after their header; 0 for the rest.
    pub(super) itemsize: u64,
    pub(super) pre_header: u64,
}

/// Built-in types with a `tp_itemsize` whose objects have no `ob_size`:
/// generators and their kin size their embedded frame from their code.
const NOT_VAR_SIZED: [&str; 3] = ["generator", "coroutine", "async_generator"];

/// A NUL-terminated string of at most `max` bytes.
fn c_string(mem: &mut impl Read, addr: u64, max: usize) -> Option<String> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 32];
    while out.len() < max {
        // Byte by byte where a chunk would cross into an unmapped page.
        let n = chunk.len().min((4096 - (addr + out.len() as u64) % 4096) as usize);
        mem.read(addr + out.len() as u64, &mut chunk[..n]).ok()?;
        if let Some(end) = chunk[..n].iter().position(|&c| c == 0) {
            out.extend_from_slice(&chunk[..end]);
            return String::from_utf8(out).ok();
        }
        out.extend_from_slice(&chunk[..n]);
    }
    None
}

/// The type at `ty`, checked to be one: its own type must be `type` or a
/// subclass of it.
pub(super) fn type_info(mem: &mut impl Read, ty: u64, strings: (u64, u64)) -> Option<TypeInfo> {
    if ty == 0 || !ty.is_multiple_of(8) {
        return None;
    }
    let meta = mem.u64(ty + 8).ok()?;
    if meta == 0 || mem.u64(meta + TP_FLAGS).ok()? & TPFLAGS_TYPE_SUBCLASS == 0 {
        return None;
    }
    let flags = mem.u64(ty + TP_FLAGS).ok()?;
    let name_at = mem.u64(ty + TP_NAME).ok()?;
    let tp_name = c_string(mem, name_at, 256)?;
    let (name, module) = if flags & TPFLAGS_HEAPTYPE != 0 {
        let module = mem
            .u64(ty + TP_DICT)
            .ok()
            .and_then(|d| dict_str_item(mem, d, "__module__", strings))
            .unwrap_or_else(|| "builtins".to_string());
        (tp_name, module)
    } else {
        match tp_name.rsplit_once('.') {
            Some((m, n)) => (n.to_string(), m.to_string()),
            None => (tp_name, "builtins".to_string()),
        }
    };
    let gc_header = GC_HEAD;
    let pre_header = gc_header
        + if flags & (TPFLAGS_MANAGED_DICT | TPFLAGS_MANAGED_WEAKREF) != 0 {
            16
        } else {
            0
        };
    let itemsize = if flags & TPFLAGS_HEAPTYPE == 0 && module == "builtins" && NOT_VAR_SIZED.contains(&name.as_str()) {
        0
    } else {
        mem.u64(ty + TP_ITEMSIZE).ok()?
    };
    Some(TypeInfo {
        name,
        module,
        basicsize: mem.u64(ty + TP_BASICSIZE).ok()?,
        itemsize,
        pre_header,
    })
}

/// The value of `dict[key]` when it is a str, for a combined dict with str
/// keys (a class's namespace).
fn dict_str_item(mem: &mut impl Read, dict: u64, key: &str, strings: (u64, u64)) -> Option<String> {
    let keys = mem.u64(dict + MA_KEYS).ok()?;
    let mut head = [0u8; 32];
    mem.read(keys, &mut head).ok()?;
    let index_bytes = 1u64.checked_shl(u32::from(head[DK_LOG2_INDEX_BYTES as usize]))?;
    let entry_size = if head[DK_KIND as usize] == 0 { 24 } else { 16 };
    let key_at = if entry_size == 24 { 8 } else { 0 };
    let entries = u64::from_le_bytes(head[DK_NENTRIES as usize..DK_NENTRIES as usize + 8].try_into().ok()?);
    if entries > 4096 || index_bytes > 1 << 20 {
        return None;
    }
    let base = keys + DK_INDICES + index_bytes;
    for i in 0..entries {
        let e = base + i * entry_size;
        let k = mem.u64(e + key_at).ok()?;
        if k != 0 && py_str(mem, k, strings).as_deref() == Some(key) {
            let value = mem.u64(e + key_at + 8).ok()?;
            return py_str(mem, value, strings);
        }
    }
    None
}

/// A `str` object's text, as frames' names are read.
fn py_str(mem: &mut impl Read, s: u64, (ascii_data, compact_data): (u64, u64)) -> Option<String> {
    crate::python::code::read_str(&mut |a, b| mem.read(a, b), s, ascii_data, compact_data).ok()
}

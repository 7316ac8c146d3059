//! Reading a Python process's objects from outside: its memory through
//! /proc/PID/mem, code objects by the version's layout, and their names,
//! file and line table.

use std::{fs::File, io, os::unix::fs::FileExt};

use super::Layout;

/// A process's memory, read with pread on /proc/PID/mem.
pub struct Memory(File);

/// Strings and tables longer than this are not read (a corrupted object).
const MAX_BYTES: u64 = 1 << 20;

impl Memory {
    pub fn open(pid: u32) -> io::Result<Memory> {
        File::open(format!("/proc/{pid}/mem")).map(Memory)
    }

    pub fn bytes(&self, addr: u64, len: u64) -> io::Result<Vec<u8>> {
        if len > MAX_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes at {addr:#x}"),
            ));
        }
        let mut buf = vec![0; len as usize];
        self.0.read_exact_at(&mut buf, addr)?;
        Ok(buf)
    }

    pub fn read_at(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_exact_at(buf, addr)
    }

    pub fn u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.0.read_exact_at(&mut b, addr)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn u32(&self, addr: u64) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.0.read_exact_at(&mut b, addr)?;
        Ok(u32::from_le_bytes(b))
    }

    /// A `str` object's text (see [`read_str`]).
    pub fn string(&self, obj: u64, layout: &Layout) -> io::Result<String> {
        read_str(
            &mut |a, b| self.0.read_exact_at(b, a),
            obj,
            layout.ascii_data,
            layout.compact_data,
        )
    }

    /// A `bytes` object's contents.
    pub fn bytes_object(&self, obj: u64) -> io::Result<Vec<u8>> {
        let size = self.u64(obj + 16)?;
        self.bytes(obj + 32, size)
    }
}

/// A compact `str`'s text (what names, file names and module names are),
/// through `read` (address, buffer): its length at +16, its state bits at
/// +32, its data after the header (`ascii_data` or `compact_data` bytes).
pub fn read_str(
    read: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
    obj: u64,
    ascii_data: u64,
    compact_data: u64,
) -> io::Result<String> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let mut head = [0u8; 8];
    read(obj + 16, &mut head)?;
    let length = u64::from_le_bytes(head);
    read(obj + 32, &mut head[..4])?;
    let state = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    let kind = (state >> 2) & 7;
    let (compact, ascii) = (state & (1 << 5) != 0, state & (1 << 6) != 0);
    if !compact || !(1..=4).contains(&kind) || kind == 3 {
        return Err(invalid("not a compact string"));
    }
    let len = length
        .checked_mul(u64::from(kind))
        .filter(|&n| n <= MAX_BYTES)
        .ok_or_else(|| invalid("a string too long"))?;
    let mut bytes = vec![0; len as usize];
    read(obj + if ascii { ascii_data } else { compact_data }, &mut bytes)?;
    Ok(match kind {
        1 => bytes.iter().map(|&b| b as char).collect(),
        2 => String::from_utf16_lossy(
            &bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect::<Vec<_>>(),
        ),
        _ => bytes
            .chunks_exact(4)
            .filter_map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
    })
}

/// What memwatch reads of a code object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// The qualified name (3.11+), or the name.
    pub name: String,
    pub file: String,
    pub first_line: u32,
    pub line_table: Vec<u8>,
}

/// Reads the code object at `code`, checking its type when `code_type` is
/// known.
pub fn read_code(mem: &Memory, code: u64, layout: &Layout, code_type: u64) -> io::Result<Code> {
    let c = &layout.code;
    if code_type != 0 && mem.u64(code + 8)? != code_type {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a code object"));
    }
    let name_obj = mem.u64(code + c.qualname.unwrap_or(c.name))?;
    Ok(Code {
        name: mem.string(name_obj, layout)?,
        file: mem.string(mem.u64(code + c.filename)?, layout)?,
        first_line: mem.u32(code + c.firstlineno)?,
        line_table: mem.bytes_object(mem.u64(code + c.linetable)?)?,
    })
}

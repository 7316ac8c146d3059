//! The memory a census reads: behind [`Read`], so that the walk is tested
//! on fake memory; a live process through [`ChunkedMemory`].

use std::{collections::HashMap, io};

use crate::python::code;

/// Memory of the process under census.
pub trait Read {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()>;

    fn u64(&mut self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn i32(&mut self, addr: u64) -> io::Result<i32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(i32::from_le_bytes(b))
    }
}

/// A live process's memory through `/proc/PID/mem`, read in 64 KiB chunks
/// kept until [`MAX_CHUNKS`] are held (then dropped and read again).
pub struct ChunkedMemory {
    mem: code::Memory,
    chunks: HashMap<u64, Option<Box<[u8]>>>,
    pub reads: u64,
}

const CHUNK: u64 = 64 * 1024;
/// 32 MiB at most.
const MAX_CHUNKS: usize = 512;

impl ChunkedMemory {
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(ChunkedMemory {
            mem: code::Memory::open(pid)?,
            chunks: HashMap::new(),
            reads: 0,
        })
    }

    /// Drops the chunks read so far, so that the next reads see the
    /// process as it is now.
    pub fn forget(&mut self) {
        self.chunks.clear();
    }

    /// The same memory read directly, without chunks.
    pub fn direct(&mut self) -> &mut code::Memory {
        &mut self.mem
    }

    fn chunk(&mut self, base: u64) -> Option<&[u8]> {
        if !self.chunks.contains_key(&base) {
            if self.chunks.len() >= MAX_CHUNKS {
                self.chunks.clear();
            }
            self.reads += 1;
            // A chunk reaching past the mapping's end fails whole: those
            // addresses are read directly.
            let data = self.mem.bytes(base, CHUNK).ok().map(Vec::into_boxed_slice);
            self.chunks.insert(base, data);
        }
        self.chunks.get(&base).and_then(|c| c.as_deref())
    }
}

/// Direct reads, for scattered small records (pool headers) where a chunk
/// would read a whole arena for one header.
impl Read for code::Memory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_at(addr, buf)
    }
}

impl Read for ChunkedMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let base = addr & !(CHUNK - 1);
        let off = (addr - base) as usize;
        if off + buf.len() <= CHUNK as usize
            && let Some(c) = self.chunk(base)
        {
            buf.copy_from_slice(&c[off..off + buf.len()]);
            return Ok(());
        }
        self.reads += 1;
        let b = self.mem.bytes(addr, buf.len() as u64)?;
        buf.copy_from_slice(&b);
        Ok(())
    }
}

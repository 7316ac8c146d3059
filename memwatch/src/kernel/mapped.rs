//! An mmapable BPF array mapped into the daemon's memory: the live table
//! (read every scan without a syscall) and the unwind rows (written without
//! a syscall per row).

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{Context, bail};
use aya::maps::Map;

pub struct MappedArray {
    base: NonNull<u8>,
    bytes: usize,
    _map: Map,
}

impl MappedArray {
    /// Maps `map`, an mmapable array of `entries` values of `value_size`
    /// bytes; `what` names it in errors.
    pub fn map(map: Map, entries: u32, value_size: usize, what: &str) -> anyhow::Result<MappedArray> {
        let fd = match &map {
            Map::Array(d) => d.fd().as_fd().as_raw_fd(),
            other => bail!("{what} is a {other:?}, not an array"),
        };
        // SAFETY: plain libc call.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (entries as usize * value_size).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's own pages; the kernel checks
        // the length against the array.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping {what}"));
        }
        Ok(MappedArray {
            base: NonNull::new(ptr.cast()).context("mmap returned null")?,
            bytes,
            _map: map,
        })
    }

    /// The start of the mapping, valid while `self` lives.
    pub fn base<T>(&self) -> NonNull<T> {
        self.base.cast()
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, no longer referenced.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

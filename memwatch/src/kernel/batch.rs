//! Batched hash-map reads (BPF_MAP_LOOKUP_BATCH, kernel 5.6+).
//!
//! aya iterates with get_next_key, which restarts from the first bucket
//! whenever the current key is deleted meanwhile — constantly, while a traced
//! program frees memory — giving duplicates and quadratic scans. The batch
//! command walks buckets instead, and costs one syscall per chunk.

use std::{io, mem::MaybeUninit, os::fd::AsRawFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The batch member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the given size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, size_of::<BatchAttr>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Calls `f` for every element of a BPF hash map with keys `K` and values
/// `V` (both plain old data of the map's sizes).
pub fn for_each<K: aya::Pod, V: aya::Pod>(
    map: &impl AsRawFd,
    chunk: usize,
    mut f: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut chunk = chunk.max(16);
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    let mut cursor: u32 = 0;
    let mut first = true;
    loop {
        keys.resize_with(chunk, MaybeUninit::uninit);
        values.resize_with(chunk, MaybeUninit::uninit);
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &cursor as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more elements than a chunk: retry larger.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(e),
        };
        for i in 0..attr.count as usize {
            // SAFETY: the kernel initialised the first `count` elements.
            let (k, v) = unsafe { (keys[i].assume_init_ref(), values[i].assume_init_ref()) };
            f(k, v);
        }
        if done {
            return Ok(());
        }
        cursor = next;
        first = false;
    }
}

/// Deletes the given keys (missing ones are skipped by retrying past them).
pub fn delete<K: aya::Pod>(map: &impl AsRawFd, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        deleted += attr.count as usize;
        match result {
            Ok(()) => return Ok(deleted),
            // attr.count keys were deleted before one was not found.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[attr.count as usize + 1..],
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

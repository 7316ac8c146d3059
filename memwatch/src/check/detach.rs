//! A check's probes, closed after memwatch has exited without holding up
//! the next check.
//!
//! Each uprobe's last close waits for RCU grace periods under the kernel's
//! tracing lock (event_mutex; ~90 ms each here, ~1.8 s for a check), and
//! attaching a probe takes the same lock. Closed in a row while the next
//! check attaches, they made each check in a loop of short ones wait for
//! the previous one's closes (1.8 s a run). So a check takes a file lock
//! while it attaches, exclusively, and the closers of earlier checks take
//! it shared around each close; they pass a turnstile first, which an
//! attaching check holds, so that it waits for the close under way only
//! (~90 ms), not for a stream of them. Closers take turns (a third lock):
//! the kernel serializes their work anyway, and one at a time keeps one
//! close under way at most.
//!
//! The kernel's work itself (~1.8 s a check) is not made smaller: checks in
//! a tight loop leave it to be done behind them, each closer holding its
//! maps (~25 MiB of kernel memory) until it is done. A check waits at its
//! start while more than [`MAX_CLOSING`] closers are at work, which bounds
//! that memory.

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
};

const LOCK: &str = "/run/lock/memwatch-check.lock";
const TURNSTILE: &str = "/run/lock/memwatch-check.turnstile";
const CLOSERS: &str = "/run/lock/memwatch-check.closers";

/// Closers at work beyond which a new check waits.
pub const MAX_CLOSING: usize = 16;
/// A closer's name (comm), as counted.
const CLOSER_NAME: &[u8; 16] = b"memwatch-closer\0";

/// Closers at work on the host, by their name (a closer names itself).
pub fn closing() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| std::fs::read(e.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.strip_suffix(b"\n") == Some(&CLOSER_NAME[..15]))
        .count()
}

/// Waits while more than [`MAX_CLOSING`] closers of earlier checks are at
/// work.
pub fn wait_for_closers() {
    let mut said = false;
    loop {
        let n = closing();
        if n <= MAX_CLOSING {
            return;
        }
        if !said {
            tracing::info!(closers = n, "waiting for earlier checks' probes to close");
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn open_lock(path: &str) -> Option<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path);
    match file {
        Ok(f) => Some(f),
        Err(e) => {
            // Without it, checks in a row wait for each other's closes.
            tracing::debug!(path, error = %e, "no lock between checks");
            None
        }
    }
}

/// The descriptor of a lock file, or -1 without one.
fn raw(f: &Option<File>) -> i32 {
    f.as_ref().map_or(-1, |f| f.as_raw_fd())
}

fn flock(fd: i32, op: i32) {
    if fd >= 0 {
        // SAFETY: flock(2) on a descriptor; an error leaves things unlocked.
        unsafe { libc::flock(fd, op) };
    }
}

/// Held while a check attaches its programs and probes; closing the files
/// releases the locks.
pub struct AttachLock {
    _turnstile: Option<File>,
    _lock: Option<File>,
}

impl AttachLock {
    pub fn take() -> AttachLock {
        let turnstile = open_lock(TURNSTILE);
        let lock = open_lock(LOCK);
        flock(raw(&turnstile), libc::LOCK_EX);
        flock(raw(&lock), libc::LOCK_EX);
        AttachLock {
            _turnstile: turnstile,
            _lock: lock,
        }
    }
}

/// Leaves closing this process's descriptors (the probes' among them) to
/// a fresh, small process (`memwatch close-probes`, hidden): the command
/// has exited, so the probes fire for nothing meanwhile. It inherits the
/// descriptors, waits for memwatch to exit (its references are then the
/// last), closes them one at a time, each under the lock, and exits. A
/// fork of memwatch would do, but would hold memwatch's whole heap as long.
pub fn in_background() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for &fd in &fds {
        // SAFETY: fcntl(2) on a descriptor number; a closed one fails.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
    let spawned = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .arg("close-probes")
            .arg(std::process::id().to_string())
            .args(fds.iter().map(i32::to_string))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    });
    if let Err(e) = spawned {
        // memwatch's own exit closes them then, slowly.
        tracing::debug!(error = %e, "cannot leave the probes to a closer");
    }
}

/// `memwatch close-probes PARENT FD...`: the closer's side.
pub fn close_after(parent: u32, fds: &[i32]) {
    // SAFETY: prctl(2) with a NUL-terminated name.
    unsafe { libc::prctl(libc::PR_SET_NAME, CLOSER_NAME.as_ptr()) };
    // SAFETY: getppid(2) cannot fail.
    while unsafe { libc::getppid() } as u32 == parent {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (turnstile, lock, closers) = (open_lock(TURNSTILE), open_lock(LOCK), open_lock(CLOSERS));
    let (turnstile_fd, lock_fd, closers_fd) = (raw(&turnstile), raw(&lock), raw(&closers));
    flock(closers_fd, libc::LOCK_EX);
    for &fd in fds {
        if [lock_fd, turnstile_fd, closers_fd].contains(&fd) {
            continue;
        }
        flock(turnstile_fd, libc::LOCK_SH);
        flock(lock_fd, libc::LOCK_SH);
        flock(turnstile_fd, libc::LOCK_UN);
        // SAFETY: a descriptor inherited for this; nothing else uses it.
        unsafe { libc::close(fd) };
        flock(lock_fd, libc::LOCK_UN);
    }
}

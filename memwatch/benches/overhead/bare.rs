//! Bare counting uprobes (perf events, no BPF program) at the sites memwatch
//! uses: the kernel's own cost of a probe hit, the floor under memwatch's.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// From linux/perf_event.h (not in the libc crate).
pub const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

#[derive(Clone, Debug)]
pub struct Site {
    pub module: String,
    pub function: String,
    pub file_offset: u64,
    pub instruction: String,
    pub emulated: bool,
}

impl Site {
    pub fn needs_return(&self) -> bool {
        !matches!(
            self.function.as_str(),
            "free" | "munmap" | "PyObject_Free" | "PyMem_Free" | "_PyObject_Free"
        )
    }
}

/// A counting uprobe (a perf event with no BPF program): the kernel's own
/// cost of a probe hit at a site, which memwatch cannot go below.
pub struct BareProbe {
    pub fd: OwnedFd,
}

/// `struct perf_event_attr` up to config2 (PERF_ATTR_SIZE_VER1 is 72 bytes;
/// the kernel zero-extends).
#[repr(C)]
#[derive(Default)]
pub struct PerfEventAttr {
    pub type_: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    pub flags: u64,
    pub wakeup_events: u32,
    pub bp_type: u32,
    pub config1: u64,
    pub config2: u64,
}

pub fn sysfs_number(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = text.trim().trim_start_matches("config:");
    text.parse().unwrap_or_else(|_| panic!("{path}: {text}"))
}

/// perf_event_open(2), close-on-exec.
pub fn perf_event_open(attr: &PerfEventAttr, pid: i32, cpu: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: a valid attr of the size it declares.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            pid,
            cpu,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl BareProbe {
    pub fn attach(pid: u32, path: &str, offset: u64, ret: bool) -> BareProbe {
        let ty = sysfs_number("/sys/bus/event_source/devices/uprobe/type") as u32;
        let ret_bit = sysfs_number("/sys/bus/event_source/devices/uprobe/format/retprobe");
        let c_path = CString::new(path).unwrap();
        let attr = PerfEventAttr {
            type_: ty,
            size: size_of::<PerfEventAttr>() as u32,
            config: if ret { 1 << ret_bit } else { 0 },
            config1: c_path.as_ptr() as u64,
            config2: offset,
            ..Default::default()
        };
        let fd = perf_event_open(&attr, pid as i32, -1)
            .unwrap_or_else(|e| panic!("perf_event_open({path}+{offset:#x}): {e}"));
        BareProbe { fd }
    }

    pub fn count(&self) -> u64 {
        let mut v = 0u64;
        // SAFETY: reading a u64 counter from our own perf event.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        v
    }
}

pub fn bare_probes(pid: u32, sites: &[Site]) -> Vec<BareProbe> {
    let mut probes = Vec::new();
    for s in sites {
        if s.needs_return() {
            probes.push(BareProbe::attach(pid, &s.module, s.file_offset, true));
        }
        probes.push(BareProbe::attach(pid, &s.module, s.file_offset, false));
    }
    probes
}

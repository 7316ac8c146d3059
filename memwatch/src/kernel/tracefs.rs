//! tracefs: mounted if missing (a fresh host may not have it), and the
//! tracepoint record layouts read from it instead of assumed.

use std::{fs, io, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted where aya looks for it: at
/// /sys/kernel/tracing, or under debugfs (which mounts it on first access).
///
/// Safe when another process (another memwatch, perf, bpftrace) mounts it at
/// the same moment: the kernel refuses the second mount of the same
/// filesystem on the same place with EBUSY, which means it is there.
pub fn ensure_mounted() -> io::Result<()> {
    // A tracefs just mounted (by us or by someone else) may list no events
    // for a moment: give it a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut mounted_by_us = false;
    loop {
        if readable_events().is_some() {
            if mounted_by_us {
                tracing::info!(path = TRACEFS, "mounted tracefs");
            }
            return Ok(());
        }
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        if tracefs_mounted(&mounts) {
            // tracefs is root-only (mode 0700) unless DAC is bypassed.
            if let Err(e) = fs::read_dir(Path::new(TRACEFS).join("events"))
                && e.kind() == io::ErrorKind::PermissionDenied
            {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{TRACEFS} is not readable ({e}): run memwatch as root or with CAP_DAC_READ_SEARCH"),
                ));
            }
        } else {
            let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
            let fstype = c"tracefs";
            // SAFETY: valid NUL-terminated strings; no data argument.
            let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
            if rc == 0 {
                mounted_by_us = true;
            } else {
                let err = io::Error::last_os_error();
                // EBUSY: someone else mounted it between our look and our mount.
                if err.raw_os_error() != Some(libc::EBUSY) {
                    return Err(err);
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("tracefs is mounted but {TRACEFS}/events lists nothing"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The first tracefs `events` directory that can be listed and is not empty.
fn readable_events() -> Option<&'static str> {
    [TRACEFS, "/sys/kernel/debug/tracing"]
        .into_iter()
        .find(|root| fs::read_dir(Path::new(root).join("events")).is_ok_and(|mut entries| entries.next().is_some()))
}

/// Whether /proc/self/mounts lists tracefs where aya looks for it.
pub fn tracefs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next(), f.next(), f.next());
        fstype == Some("tracefs") && matches!(dir, Some("/sys/kernel/tracing" | "/sys/kernel/debug/tracing"))
    })
}

/// The format description of a tracepoint.
pub fn read_format(category: &str, name: &str) -> io::Result<String> {
    for root in [TRACEFS, "/sys/kernel/debug/tracing"] {
        let p = Path::new(root).join("events").join(category).join(name).join("format");
        if let Ok(text) = fs::read_to_string(&p) {
            return Ok(text);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no format for tracepoint {category}/{name}"),
    ))
}

/// The offset of a field in a tracepoint record, from its format text.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?.split('[').next()?;
        if name != field {
            return None;
        }
        rest.trim().strip_prefix("offset:")?.split(';').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT: &str = "name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;
";

    #[test]
    fn mounts_are_recognised() {
        assert!(tracefs_mounted(
            "sysfs /sys sysfs rw 0 0\nnodev /sys/kernel/tracing tracefs rw,relatime 0 0\n"
        ));
        assert!(tracefs_mounted("tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n"));
        assert!(!tracefs_mounted(
            "sysfs /sys sysfs rw 0 0\ndebugfs /sys/kernel/debug debugfs rw 0 0\n"
        ));
    }

    #[test]
    fn offsets_come_from_the_format() {
        assert_eq!(field_offset(EXIT, "group_dead"), Some(32));
        assert_eq!(field_offset(EXIT, "pid"), Some(24));
        assert_eq!(field_offset(EXIT, "comm"), Some(8));
        assert_eq!(field_offset(EXIT, "clone_flags"), None);
    }
}

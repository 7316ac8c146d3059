//! Reading /proc. Parsers are pure functions over the file contents; the
//! readers around them do the I/O.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// The fields of /proc/PID/stat that memwatch uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Start time in clock ticks since boot: with the pid, a process's identity.
    pub start_time: u64,
}

/// Parses /proc/PID/stat. `comm` may hold spaces and parentheses, so it is
/// delimited by the first `(` and the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); start_time is field 22.
    Some(Stat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start_time: rest.get(19)?.parse().ok()?,
    })
}

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// The path as the process sees it (inside its mount namespace), without
    /// a " (deleted)" suffix; None for anonymous mappings.
    pub path: Option<String>,
    pub deleted: bool,
    /// A kernel-named mapping: `[heap]`, `[vdso]`, `[uprobes]`, …
    pub special: Option<String>,
}

pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_string();
    let inode = it.next()?.parse().ok()?;
    let name = it.next().map(str::trim_start).filter(|p| !p.is_empty());
    let (start, end) = range.split_once('-')?;
    let special = name.filter(|p| p.starts_with('[')).map(str::to_string);
    let (path, deleted) = match name {
        Some(p) if p.ends_with(" (deleted)") => (Some(p.trim_end_matches(" (deleted)").to_string()), true),
        Some(p) if p.starts_with('/') => (Some(p.to_string()), false),
        // [heap], [stack], [vdso], …
        _ => (None, false),
    };
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
        deleted,
        special,
    })
}

/// A file-backed object mapped by a process, listed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    pub path: String,
    pub dev: String,
    pub inode: u64,
    pub deleted: bool,
    /// Start of its lowest mapping, for /proc/PID/map_files access.
    pub first_start: u64,
    pub first_end: u64,
    pub executable: bool,
}

/// Where the file offset `off` of `file` is mapped in the process.
pub fn runtime_address(entries: &[MapEntry], file: &MappedFile, off: u64) -> Option<u64> {
    entries
        .iter()
        .filter(|e| e.inode == file.inode && e.dev == file.dev)
        .find(|e| off >= e.offset && off - e.offset < e.end - e.start)
        .map(|e| e.start + (off - e.offset))
}

const PAGE: u64 = 0xfff;

/// The bias of a mapping of this object at `start`, from file offset
/// `offset`: what a pc there minus the object's virtual address is.
///
/// Segments are mapped from their page-aligned file offset, and linkers
/// like lld (Rust's default) start one segment in the page another ends in:
/// a mapping at that page belongs to the later segment, whose virtual
/// address is then a page off the earlier one's.
pub fn bias(segments: &[(u64, u64, u64)], start: u64, offset: u64) -> Option<u64> {
    let &(vaddr, off, _) = segments
        .iter()
        .filter(|&&(_, off, size)| off & !PAGE <= offset && offset < off.saturating_add(size.max(1)))
        .max_by_key(|&&(_, off, _)| off)?;
    // A segment whose address is below its page offset is malformed.
    let (vaddr, off) = (vaddr.checked_sub(off & PAGE)?, off & !PAGE);
    Some(start.wrapping_sub(vaddr.wrapping_add(offset - off)))
}

/// The distinct files behind a process's mappings, in address order.
pub fn mapped_files(entries: &[MapEntry]) -> Vec<MappedFile> {
    let mut out: Vec<MappedFile> = Vec::new();
    for e in entries {
        let Some(path) = &e.path else { continue };
        let exec = e.perms.as_bytes().get(2) == Some(&b'x');
        match out
            .iter_mut()
            .find(|f| f.inode == e.inode && f.dev == e.dev && &f.path == path)
        {
            Some(f) => f.executable |= exec,
            None => out.push(MappedFile {
                path: path.clone(),
                dev: e.dev.clone(),
                inode: e.inode,
                deleted: e.deleted,
                first_start: e.start,
                first_end: e.end,
                executable: exec,
            }),
        }
    }
    out
}

pub fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

pub fn read_stat(pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(proc_path(pid, "stat"))?;
    parse_stat(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
}

pub fn read_maps(pid: u32) -> io::Result<Vec<MapEntry>> {
    Ok(parse_maps(&fs::read_to_string(proc_path(pid, "maps"))?))
}

/// The executable's path as the process sees it.
pub fn read_exe(pid: u32) -> io::Result<PathBuf> {
    let p = fs::read_link(proc_path(pid, "exe"))?;
    let s = p.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(t) => PathBuf::from(t),
        None => p,
    })
}

/// Seconds since a process with `start_time` (clock ticks since boot)
/// started, or None when the clock cannot be read.
pub fn age_seconds(start_time: u64) -> Option<f64> {
    let uptime: f64 = fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: plain libc call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| uptime - start_time as f64 / hz as f64)
}

/// The command line of `pid` as reports show it: the executable and at most
/// `arguments` leading arguments (see [`shown_cmdline`]).
pub fn read_cmdline(pid: u32, arguments: usize) -> io::Result<String> {
    Ok(shown_cmdline(&fs::read(proc_path(pid, "cmdline"))?, arguments))
}

/// A raw /proc/PID/cmdline as reports show it. Arguments often carry
/// secrets (passwords, tokens), so only the first `arguments` are kept; the
/// rest are said to be hidden, never copied.
pub fn shown_cmdline(raw: &[u8], arguments: usize) -> String {
    let mut parts = raw.split(|&b| b == 0).filter(|s| !s.is_empty());
    let shown: Vec<String> = parts
        .by_ref()
        .take(arguments.saturating_add(1))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let hidden = parts.count();
    let mut out = shown.join(" ");
    if hidden > 0 {
        out.push_str(&format!(
            " … ({hidden} more argument{} hidden)",
            if hidden == 1 { "" } else { "s" }
        ));
    }
    out
}

/// Thread-group id of a task (a thread's /proc entry is reachable by its tid).
pub fn read_tgid(pid: u32) -> io::Result<u32> {
    let text = fs::read_to_string(proc_path(pid, "status"))?;
    parse_status_tgid(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Tgid in status"))
}

pub fn parse_status_tgid(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// All process ids currently in /proc.
pub fn list_pids() -> io::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        if let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// A file a process maps, opened, with the path that reached it (where
/// uprobes attach and blazesym reads).
#[derive(Debug)]
pub struct Opened {
    pub path: PathBuf,
    pub file: fs::File,
}

/// Opens the file behind the mapping `start`-`end` of `pid`, as the kernel
/// offers it whatever the process's root. `path`, `dev` and `inode` are the
/// mapping's in /proc/PID/maps; the file opened is checked to be that inode,
/// so a file replaced at its path is never taken for it.
pub fn open_mapped(pid: u32, start: u64, end: u64, path: &str, dev: &str, inode: u64) -> io::Result<Opened> {
    let want = parse_dev(dev).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("device {dev:?} in /proc/{pid}/maps"),
        )
    })?;
    let mut tried = Vec::new();
    for candidate in mapped_candidates(pid, start, end, path) {
        let why = match fs::File::open(&candidate).and_then(|f| Ok((f.metadata()?, f))) {
            Ok((meta, file)) => {
                use std::os::unix::fs::MetadataExt;
                let have = (libc::major(meta.dev()), libc::minor(meta.dev()));
                if is_mapped_file(want, inode, have, meta.ino(), || on_btrfs(&file)) {
                    return Ok(Opened { path: candidate, file });
                }
                format!("another file ({:x}:{:x} {})", have.0, have.1, meta.ino())
            }
            Err(e) => e.to_string(),
        };
        tried.push(format!("{}: {why}", candidate.display()));
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no path reaches the mapped file ({dev} {inode}): {}", tried.join("; ")),
    ))
}

/// Where a mapped file may be opened, best first. /proc/PID/maps names it
/// relative to our root when the process's mount is reachable from it (a
/// chroot) and relative to the process's root when not (pivot_root); only
/// map_files reaches it in both cases, and once it is deleted or replaced.
/// It needs CAP_SYS_ADMIN: without, the two readings of the path follow.
pub fn mapped_candidates(pid: u32, start: u64, end: u64, path: &str) -> [PathBuf; 3] {
    let mut in_root = proc_path(pid, "root");
    in_root.push(path.trim_start_matches('/'));
    [
        proc_path(pid, &format!("map_files/{start:x}-{end:x}")),
        in_root,
        PathBuf::from(path),
    ]
}

/// A device as /proc/PID/maps prints it (`fe:01`, major and minor in hex).
pub fn parse_dev(dev: &str) -> Option<(u32, u32)> {
    let (major, minor) = dev.split_once(':')?;
    Some((
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    ))
}

/// Whether a file with device `have` and inode `ino` is the mapped one.
/// btrfs gives stat each subvolume's own device where maps prints the
/// filesystem's, so there only the inode can be compared.
fn is_mapped_file(want: (u32, u32), inode: u64, have: (u32, u32), ino: u64, btrfs: impl FnOnce() -> bool) -> bool {
    ino == inode && (have == want || btrfs())
}

fn on_btrfs(file: &fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: statfs is plain old data, filled by the kernel for an open fd.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `buf` is a valid statfs for the call to fill.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut buf) };
    rc == 0 && buf.f_type == libc::BTRFS_SUPER_MAGIC
}

pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_are_placed_through_their_segment() {
        // A PIE's text at vaddr 0x1000, file offset 0x1000, loaded at 0x5555_0000_0000.
        let segs = [(0, 0, 0x800), (0x1000, 0x1000, 0x2000), (0x4000, 0x3000, 0x500)];
        assert_eq!(bias(&segs, 0x5555_0000_1000, 0x1000), Some(0x5555_0000_0000));
        // A segment whose vaddr and offset differ (non-PIE, 0x400000 base).
        let segs = [(0x40_0000, 0, 0x1000), (0x40_1000, 0x1000, 0x2000)];
        assert_eq!(bias(&segs, 0x40_1000, 0x1000), Some(0));
        assert_eq!(bias(&segs, 0x40_1000, 0x9000), None);
        // lld: text starts in the page the read-only segment ends in, a page
        // further on in memory (memwatch's own build).
        let lld = [
            (0, 0, 0x28_d1dc),
            (0x28_e1e0, 0x28_d1e0, 0x5b_4270),
            (0x84_3450, 0x84_1450, 0x3_80e0),
        ];
        assert_eq!(
            bias(&lld, 0x55af_ce5c_c000, 0x28_d000),
            Some(0x55af_ce5c_c000 - 0x28_e000)
        );
        assert_eq!(bias(&lld, 0x55af_ce33_f000, 0), Some(0x55af_ce33_f000));
        assert_eq!(
            bias(&lld, 0x55af_ceb8_2000, 0x84_1000),
            Some(0x55af_ceb8_2000 - 0x84_3000)
        );
    }

    #[test]
    fn command_lines_hide_arguments_past_those_asked_for() {
        let raw = b"/usr/bin/mysql\0-uroot\0-phunter2\0db\0";
        assert_eq!(shown_cmdline(raw, 0), "/usr/bin/mysql … (3 more arguments hidden)");
        assert_eq!(
            shown_cmdline(raw, 2),
            "/usr/bin/mysql -uroot -phunter2 … (1 more argument hidden)"
        );
        assert_eq!(shown_cmdline(raw, 4096), "/usr/bin/mysql -uroot -phunter2 db");
        assert_eq!(shown_cmdline(b"nginx: worker process\0", 0), "nginx: worker process");
        assert_eq!(shown_cmdline(b"", 0), "");
    }

    #[test]
    fn stat_survives_odd_command_names() {
        let text = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765 1000 200 18446744073709551615";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.comm, "a (weird) name");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_time, 98765);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn maps_lines_parse_with_and_without_paths() {
        let text = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1311 /usr/bin/leaky
7f1c2a200000-7f1c2a228000 r--p 00000000 fe:01 2050 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a228000-7f1c2a39d000 r-xp 00028000 fe:01 2050 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a400000-7f1c2a500000 rw-p 00000000 00:00 0 
7ffd1a000000-7ffd1a021000 rw-p 00000000 00:00 0                          [stack]
7f1c2b000000-7f1c2b001000 r-xp 00000000 fe:01 99 /tmp/old lib.so (deleted)
";
        let m = parse_maps(text);
        assert_eq!(m.len(), 6);
        assert_eq!(m[2].start, 0x7f1c2a228000);
        assert_eq!(m[2].offset, 0x28000);
        assert_eq!(m[2].path.as_deref(), Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(m[3].path, None);
        assert_eq!(m[4].path, None);
        assert_eq!(m[5].path.as_deref(), Some("/tmp/old lib.so"));
        assert!(m[5].deleted);

        let files = mapped_files(&m);
        assert_eq!(files.len(), 3);
        assert_eq!(files[1].path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert!(files[1].executable);
        assert!(!files[0].executable);
        assert_eq!(files[1].first_start, 0x7f1c2a200000);
    }

    #[test]
    fn status_gives_the_thread_group() {
        assert_eq!(parse_status_tgid("Name:\tx\nTgid:\t42\nPid:\t43\n"), Some(42));
        assert_eq!(parse_status_tgid("Name:\tx\n"), None);
    }

    #[test]
    fn mapped_files_are_looked_for_through_their_mapping_first() {
        let [mapping, root, host] = mapped_candidates(7, 0x7f1c2a228000, 0x7f1c2a39d000, "/usr/lib/libc.so.6");
        assert_eq!(mapping, PathBuf::from("/proc/7/map_files/7f1c2a228000-7f1c2a39d000"));
        assert_eq!(root, PathBuf::from("/proc/7/root/usr/lib/libc.so.6"));
        assert_eq!(host, PathBuf::from("/usr/lib/libc.so.6"));
    }

    #[test]
    fn a_mapped_file_opens_as_that_inode_and_no_other() {
        use std::os::unix::fs::MetadataExt;
        let pid = std::process::id();
        let maps = read_maps(pid).unwrap();
        let libc = maps
            .iter()
            .find(|e| e.path.as_deref().is_some_and(|p| p.contains("/libc.so")))
            .expect("the test binary maps libc");
        let path = libc.path.as_deref().unwrap();
        let opened = open_mapped(pid, libc.start, libc.end, path, &libc.dev, libc.inode).unwrap();
        assert_eq!(opened.file.metadata().unwrap().ino(), libc.inode);
        // The same places, asked for another inode: each candidate refuses.
        let e = open_mapped(pid, libc.start, libc.end, path, &libc.dev, libc.inode + 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("/proc/{pid}/root{path}: another file")), "{e}");
        assert!(e.contains(&format!("; {path}: another file")), "{e}");
    }

    #[test]
    fn devices_are_read_as_maps_prints_them() {
        assert_eq!(parse_dev("fe:01"), Some((0xfe, 1)));
        assert_eq!(parse_dev("00:28"), Some((0, 40)));
        // Minors past 255 print with more digits.
        assert_eq!(parse_dev("103:1a3"), Some((0x103, 0x1a3)));
        assert_eq!(parse_dev("00:00"), Some((0, 0)));
        assert_eq!(parse_dev("fe01"), None);
        assert_eq!(parse_dev("xx:01"), None);
    }

    #[test]
    fn a_candidate_is_the_mapped_file_only_by_device_and_inode() {
        let no = || false;
        assert!(is_mapped_file((0xfe, 1), 2050, (0xfe, 1), 2050, no));
        // A file replaced at its path: another inode.
        assert!(!is_mapped_file((0xfe, 1), 2050, (0xfe, 1), 2051, no));
        // The host's file of the same inode number on another filesystem.
        assert!(!is_mapped_file((0xfe, 1), 2050, (0, 40), 2050, no));
        // btrfs: stat's device is the subvolume's (measured: maps 00:28, stat 0:42).
        assert!(is_mapped_file((0, 40), 257, (0, 42), 257, || true));
        assert!(!is_mapped_file((0, 40), 257, (0, 42), 258, || true));
    }
}

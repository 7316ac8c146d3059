//! A process's memory from /proc/PID/status (cheaper than smaps, and the
//! kernel keeps these counters anyway).

/// Bytes, from the kB figures of /proc/PID/status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    pub swap: u64,
}

impl Memory {
    /// What a leak grows: anonymous memory, resident or swapped out.
    pub fn heap(&self) -> u64 {
        self.anon + self.swap
    }
}

/// Parses the memory lines of /proc/PID/status; None for processes without
/// an address space (kernel threads, zombies).
pub fn parse_status(text: &str) -> Option<Memory> {
    let mut m = Memory::default();
    let mut seen = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let field = match key {
            "VmRSS" => &mut m.rss,
            "RssAnon" => &mut m.anon,
            "RssFile" => &mut m.file,
            "RssShmem" => &mut m.shmem,
            "VmSwap" => &mut m.swap,
            _ => continue,
        };
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        *field = kb.saturating_mul(1024);
        seen = true;
    }
    seen.then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_memory_lines() {
        let text = "Name:\tleaky\nVmRSS:\t   10240 kB\nRssAnon:\t    8192 kB\nRssFile:\t    2048 kB\nRssShmem:\t       0 kB\nVmSwap:\t     100 kB\nThreads:\t1\n";
        let m = parse_status(text).unwrap();
        assert_eq!(
            m,
            Memory {
                rss: 10240 * 1024,
                anon: 8192 * 1024,
                file: 2048 * 1024,
                shmem: 0,
                swap: 100 * 1024
            }
        );
        assert_eq!(m.heap(), 8292 * 1024);
    }

    #[test]
    fn kernel_threads_have_no_memory() {
        assert_eq!(
            parse_status("Name:\tkworker/0:1\nState:\tI (idle)\nThreads:\t1\n"),
            None
        );
    }
}

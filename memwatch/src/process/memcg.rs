//! The memory controller of a process's cgroup: its limit, usage, peak and
//! OOM kills, on cgroup v2 and on v1 (these hosts are hybrid: v1's memory
//! controller at /sys/fs/cgroup/memory, v2 at /sys/fs/cgroup/unified).
//! Parsing is pure; [`read`] does the I/O.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Which cgroup accounts a process's memory (from /proc/PID/cgroup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryCgroup {
    pub path: String,
    /// Under v1's memory controller; else the unified hierarchy.
    pub v1: bool,
}

/// The controller's figures, as the kernel reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryLimits {
    /// The cgroup's path in its hierarchy.
    pub cgroup: String,
    /// "v1" or "v2".
    pub version: &'static str,
    /// memory.max (v2) or memory.limit_in_bytes (v1); None: unlimited.
    pub limit_bytes: Option<u64>,
    /// memory.current or memory.usage_in_bytes.
    pub usage_bytes: Option<u64>,
    /// memory.peak or memory.max_usage_in_bytes.
    pub peak_bytes: Option<u64>,
    /// OOM kills in this cgroup so far (memory.events or memory.oom_control).
    pub oom_kills: Option<u64>,
}

impl MemoryLimits {
    /// Whether the cgroup's own limit was reached (its peak within 1 % of
    /// it): then the kill was the cgroup's, else the host's.
    pub fn limit_reached(&self) -> bool {
        match (self.limit_bytes, self.peak_bytes.or(self.usage_bytes)) {
            (Some(limit), Some(peak)) => peak as f64 >= limit as f64 * 0.99,
            _ => false,
        }
    }
}

/// v1 reports "no limit" as the largest page-aligned i64.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// A limit file's value: bytes, or None for "max" (v2) or v1's unlimited.
pub fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse().ok().filter(|&v| v < V1_UNLIMITED)
}

/// The `oom_kill` count of memory.events (v2) or memory.oom_control (v1).
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// Where the hierarchy holding `m` is mounted on this host.
fn directory(m: &MemoryCgroup, root: &Path) -> PathBuf {
    let base = if m.v1 {
        root.join("memory")
    } else if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join("unified")
    };
    base.join(m.path.trim_start_matches('/'))
}

/// Reads the controller's files for `m` under `root` (/sys/fs/cgroup);
/// None when the cgroup is gone.
pub fn read(m: &MemoryCgroup, root: &Path) -> Option<MemoryLimits> {
    let dir = directory(m, root);
    if !dir.is_dir() {
        return None;
    }
    let file = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let number = |name: &str| file(name).and_then(|t| t.trim().parse().ok());
    Some(if m.v1 {
        MemoryLimits {
            cgroup: m.path.clone(),
            version: "v1",
            limit_bytes: file("memory.limit_in_bytes").and_then(|t| parse_limit(&t)),
            usage_bytes: number("memory.usage_in_bytes"),
            peak_bytes: number("memory.max_usage_in_bytes"),
            oom_kills: file("memory.oom_control").and_then(|t| parse_oom_kills(&t)),
        }
    } else {
        MemoryLimits {
            cgroup: m.path.clone(),
            version: "v2",
            limit_bytes: file("memory.max").and_then(|t| parse_limit(&t)),
            usage_bytes: number("memory.current"),
            peak_bytes: number("memory.peak"),
            oom_kills: file("memory.events").and_then(|t| parse_oom_kills(&t)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_the_kernel_writes_them() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("67108864\n"), Some(64 << 20));
        assert_eq!(parse_limit("garbage"), None);
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kills(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(1));
        assert_eq!(parse_oom_kills("low 0\n"), None);
    }

    #[test]
    fn a_cgroup_kill_is_told_from_a_global_one() {
        let at = |limit, peak| MemoryLimits {
            limit_bytes: limit,
            peak_bytes: peak,
            ..Default::default()
        };
        assert!(at(Some(100 << 20), Some(100 << 20)).limit_reached());
        assert!(!at(Some(100 << 20), Some(10 << 20)).limit_reached());
        assert!(!at(None, Some(100 << 20)).limit_reached());
    }

    #[test]
    fn the_memory_controller_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "12:memory:/mw/oom\n1:name=systemd:/user.slice\n0::/user.slice\n";
        let p = crate::process::cgroup::parse(hybrid);
        assert_eq!(
            p.memory,
            Some(MemoryCgroup {
                path: "/mw/oom".into(),
                v1: true
            })
        );
        let unified = crate::process::cgroup::parse("0::/system.slice/redis.service\n");
        let m = unified.memory.unwrap();
        assert!(!m.v1);
        let root = Path::new("/nonexistent-cgroup-root");
        assert_eq!(directory(&m, root), root.join("unified/system.slice/redis.service"));
        assert_eq!(read(&m, root), None);
    }

    #[test]
    fn this_hosts_own_cgroup_is_readable() {
        let own = crate::process::cgroup::parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap());
        let limits = read(own.memory.as_ref().unwrap(), Path::new("/sys/fs/cgroup")).unwrap();
        assert!(limits.usage_bytes.is_some_and(|u| u > 0), "{limits:?}");
    }
}

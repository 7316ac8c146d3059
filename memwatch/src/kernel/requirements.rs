//! What the eBPF programs need of the kernel, checked before loading them,
//! so that an older kernel gets a sentence naming what it lacks instead of a
//! verifier log.

use std::path::Path;

/// The newest feature each program depends on, with the release that
/// brought it. The oldest kernel memwatch has been run on is 6.1 (Debian
/// 12's; `cargo xtask kernels`).
const FEATURES: &[((u32, u32), &str)] = &[
    ((5, 11), "task-local storage for each thread's allocator call"),
    ((5, 15), "attach cookies for each probe's role"),
    ((5, 17), "bpf_loop for the stack walk"),
];

/// The release's (major, minor): "6.1.0-50-cloud-amd64" → (6, 1).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Why a kernel of `release` cannot run memwatch, if it cannot.
pub fn missing(release: &str, has_btf: bool) -> Option<String> {
    let version = parse_release(release)?;
    let lacking: Vec<String> = FEATURES
        .iter()
        .filter(|(since, _)| version < *since)
        .map(|((major, minor), what)| format!("{what} ({major}.{minor})"))
        .collect();
    if !lacking.is_empty() {
        return Some(format!(
            "memwatch needs Linux 5.17 or later; this kernel ({release}) lacks {}",
            lacking.join(", ")
        ));
    }
    (!has_btf).then(|| {
        format!(
            "memwatch needs the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF), which this kernel ({release}) does not have"
        )
    })
}

/// Checks the running kernel.
pub fn check() -> anyhow::Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    match missing(release.trim(), Path::new("/sys/kernel/btf/vmlinux").exists()) {
        Some(why) => anyhow::bail!(why),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_debian_and_upstream_releases() {
        assert_eq!(parse_release("6.1.0-50-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_release("6.12.57+deb13-amd64"), Some((6, 12)));
        assert_eq!(parse_release("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn names_what_an_older_kernel_lacks() {
        assert_eq!(missing("6.1.0-50-cloud-amd64", true), None);
        assert_eq!(missing("5.17.0", true), None);
        let why = missing("5.15.0-91-generic", true).unwrap();
        assert!(why.contains("bpf_loop for the stack walk (5.17)"), "{why}");
        assert!(!why.contains("attach cookies"), "{why}");
        let why = missing("5.10.0-26-amd64", true).unwrap();
        for lacking in ["task-local storage", "attach cookies", "bpf_loop"] {
            assert!(why.contains(lacking), "{why}");
        }
        assert!(why.contains("(5.10.0-26-amd64)"), "{why}");
        assert!(missing("6.8.0", false).unwrap().contains("BTF"));
        // An unreadable release is left to the loader.
        assert_eq!(missing("", true), None);
    }
}

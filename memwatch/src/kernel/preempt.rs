//! The kernel's preemption model, which decides whether the probes' per-CPU
//! counters need atomic adds: only a kernel that preempts a running BPF
//! program lets two programs interleave on one CPU.

use std::io::Read;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preemption {
    None,
    Voluntary,
    Full,
    Lazy,
    Rt,
}

impl Preemption {
    fn parse(name: &str) -> Option<Preemption> {
        Some(match name {
            "none" => Preemption::None,
            "voluntary" => Preemption::Voluntary,
            "full" => Preemption::Full,
            "lazy" => Preemption::Lazy,
            _ => return None,
        })
    }

    /// Whether a running program can be preempted (voluntary preemption
    /// happens only where the kernel may sleep, which BPF programs do not).
    pub fn preempts_programs(self) -> bool {
        !matches!(self, Preemption::None | Preemption::Voluntary)
    }
}

/// The model from what the kernel tells about itself:
/// - `version`: /proc/sys/kernel/version (`uname -v`), which names the
///   build's model (PREEMPT_RT, PREEMPT_DYNAMIC, PREEMPT, or none of them);
/// - `sched_preempt`: /sys/kernel/debug/sched/preempt, the current mode of a
///   PREEMPT_DYNAMIC kernel in parentheses, when readable;
/// - `cmdline`: /proc/cmdline, whose `preempt=` sets that mode at boot;
/// - `config`: the kernel's build configuration, for its default mode.
///
/// None when it cannot be told.
pub fn model(version: &str, sched_preempt: Option<&str>, cmdline: &str, config: Option<&str>) -> Option<Preemption> {
    let words: Vec<&str> = version.split_whitespace().collect();
    if words.contains(&"PREEMPT_RT") {
        return Some(Preemption::Rt);
    }
    if !words.contains(&"PREEMPT_DYNAMIC") {
        return Some(if words.contains(&"PREEMPT") {
            Preemption::Full
        } else if words.contains(&"PREEMPT_LAZY") {
            Preemption::Lazy
        } else {
            // Without preemption or with voluntary preemption, which the
            // version string does not tell apart; neither preempts programs.
            Preemption::Voluntary
        });
    }
    if let Some(current) = sched_preempt {
        let mode = current
            .split_whitespace()
            .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'));
        return mode.and_then(Preemption::parse);
    }
    // The kernel takes the last `preempt=`; after `--` come init's arguments.
    let kernel_args = cmdline.split_whitespace().take_while(|w| *w != "--");
    if let Some(mode) = kernel_args.filter_map(|w| w.strip_prefix("preempt=")).last() {
        return Preemption::parse(mode);
    }
    let config = config?;
    [
        ("CONFIG_PREEMPT_NONE=y", Preemption::None),
        ("CONFIG_PREEMPT_VOLUNTARY=y", Preemption::Voluntary),
        ("CONFIG_PREEMPT=y", Preemption::Full),
        ("CONFIG_PREEMPT_LAZY=y", Preemption::Lazy),
    ]
    .into_iter()
    .find(|(line, _)| config.lines().any(|l| l == *line))
    .map(|(_, m)| m)
}

/// The running kernel's model, read from /proc, debugfs and the kernel's
/// configuration (/proc/config.gz or /boot).
pub fn detect() -> Option<Preemption> {
    let version = std::fs::read_to_string("/proc/sys/kernel/version").ok()?;
    let sched = std::fs::read_to_string("/sys/kernel/debug/sched/preempt").ok();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    model(&version, sched.as_deref(), &cmdline, kernel_config().as_deref())
}

fn kernel_config() -> Option<String> {
    if let Ok(gz) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        if flate2::read::GzDecoder::new(gz).read_to_string(&mut text).is_ok() {
            return Some(text);
        }
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
}

/// Whether counters need atomic adds; when the model is unknown, they do.
pub fn atomic_counters(model: Option<Preemption>) -> bool {
    model.is_none_or(Preemption::preempts_programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYNAMIC: &str = "#1 SMP PREEMPT_DYNAMIC @0";

    #[test]
    fn build_models_without_dynamic_switching() {
        assert_eq!(model("#1 SMP PREEMPT_RT Tue", None, "", None), Some(Preemption::Rt));
        assert_eq!(model("#1 SMP PREEMPT Debian", None, "", None), Some(Preemption::Full));
        assert_eq!(
            model("#1 SMP Debian 6.1.0", None, "", None),
            Some(Preemption::Voluntary)
        );
    }

    #[test]
    fn dynamic_kernels_current_mode_wins() {
        let sched = "none voluntary (full) lazy\n";
        let config = "CONFIG_PREEMPT_NONE=y\n";
        assert_eq!(
            model(DYNAMIC, Some(sched), "preempt=none", Some(config)),
            Some(Preemption::Full)
        );
        assert_eq!(
            model(DYNAMIC, None, "quiet preempt=lazy", Some(config)),
            Some(Preemption::Lazy)
        );
        assert_eq!(model(DYNAMIC, None, "quiet", Some(config)), Some(Preemption::None));
        assert_eq!(
            model(DYNAMIC, None, "preempt=none preempt=full", Some(config)),
            Some(Preemption::Full)
        );
        assert_eq!(
            model(DYNAMIC, None, "quiet -- preempt=full", Some(config)),
            Some(Preemption::None)
        );
        assert_eq!(
            model(
                DYNAMIC,
                None,
                "",
                Some("# CONFIG_PREEMPT_NONE is not set\nCONFIG_PREEMPT_VOLUNTARY=y\n")
            ),
            Some(Preemption::Voluntary)
        );
    }

    #[test]
    fn unknown_means_atomic() {
        assert_eq!(model(DYNAMIC, None, "", None), None);
        assert_eq!(model(DYNAMIC, Some("garbled"), "", None), None);
        assert!(atomic_counters(None));
        assert!(atomic_counters(Some(Preemption::Full)));
        assert!(atomic_counters(Some(Preemption::Rt)));
        assert!(!atomic_counters(Some(Preemption::None)));
        assert!(!atomic_counters(Some(Preemption::Voluntary)));
    }
}

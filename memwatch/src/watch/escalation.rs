//! Who gets exact tracking, and who must stop: filters, a concurrency limit,
//! a cooldown, and a budget of probe hits per second.

use std::path::Path;

use serde::Serialize;

use crate::config::Escalation as Config;

/// How an escalation of one suspect went (or why there is none).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Status {
    /// Exact tracking attached since `started` (Unix seconds), until `until`.
    Running { started: f64, until: f64 },
    /// Finished; `outcome` says how.
    Done { started: f64, ended: f64, outcome: Outcome },
    /// Not escalated, and why.
    Skipped { reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The window ran out.
    Completed,
    /// Stopped: too many probe hits per second.
    OverBudget,
    /// The process exited meanwhile.
    Exited,
    /// Probes could not be attached.
    Failed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::OverBudget => "over_budget",
            Outcome::Exited => "exited",
            Outcome::Failed => "failed",
        }
    }

    pub const ALL: [Outcome; 4] = [
        Outcome::Completed,
        Outcome::OverBudget,
        Outcome::Exited,
        Outcome::Failed,
    ];
}

/// A suspect as the policy sees it.
pub struct Candidate<'a> {
    pub exe: &'a Path,
    /// systemd unit or container id.
    pub unit: Option<&'a str>,
    /// When its last escalation ended.
    pub last_ended: Option<f64>,
    /// Already tracked exactly (by --pid or --exe): nothing to add.
    pub tracked: bool,
}

/// Whether `c` may be escalated now, with `running` escalations under way.
pub fn admit(cfg: &Config, c: &Candidate<'_>, running: usize, now: f64) -> Result<(), String> {
    if !cfg.enabled {
        return Err("escalation is turned off".into());
    }
    if c.tracked {
        return Err("already tracked exactly".into());
    }
    let unit = c.unit.unwrap_or("");
    if !cfg.include_exe.is_empty() && !cfg.include_exe.iter().any(|g| g.matches(c.exe)) {
        return Err("executable not in escalation.include_exe".into());
    }
    if let Some(g) = cfg.exclude_exe.iter().find(|g| g.matches(c.exe)) {
        return Err(format!("executable excluded by {:?}", g.pattern));
    }
    if !cfg.include_units.is_empty() && !cfg.include_units.iter().any(|g| g.matches(unit)) {
        return Err("unit not in escalation.include_units".into());
    }
    if let Some(g) = cfg.exclude_units.iter().find(|g| g.matches(unit)) {
        return Err(format!("unit excluded by {:?}", g.pattern));
    }
    if let Some(ended) = c.last_ended
        && now - ended < cfg.cooldown_seconds
    {
        return Err(format!(
            "cooling down for {:.0} s after its last escalation",
            cfg.cooldown_seconds - (now - ended)
        ));
    }
    if running >= cfg.max_concurrent {
        return Err(format!(
            "{running} escalations already running (escalation.max_concurrent)"
        ));
    }
    Ok(())
}

/// Which running escalations must stop, given each one's probe hits per
/// second: any over the per-process budget, then the costliest until the
/// rest fit the host budget.
pub fn over_budget(cfg: &Config, running: &[(u32, f64)]) -> Vec<(u32, String)> {
    let mut stop: Vec<(u32, String)> = running
        .iter()
        .filter(|(_, hits)| *hits > cfg.max_hits_per_process)
        .map(|&(pid, hits)| {
            (
                pid,
                format!("{hits:.0} probe hits/s > {:.0} per process", cfg.max_hits_per_process),
            )
        })
        .collect();
    let mut rest: Vec<(u32, f64)> = running
        .iter()
        .copied()
        .filter(|(pid, _)| !stop.iter().any(|(s, _)| s == pid))
        .collect();
    rest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut total: f64 = rest.iter().map(|(_, h)| h).sum();
    for (pid, hits) in rest {
        if total <= cfg.max_hits {
            break;
        }
        stop.push((pid, format!("{total:.0} probe hits/s host-wide > {:.0}", cfg.max_hits)));
        total -= hits;
    }
    stop
}

/// Probe hits per second of a tracked process from its rates: an
/// allocation takes an entry and a return probe, a free one probe.
pub fn hits_per_second(allocations_per_second: f64, frees_per_second: f64) -> f64 {
    2.0 * allocations_per_second + frees_per_second
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config as Full, FileConfig, Overrides};

    fn cfg(toml: &str) -> Config {
        let file: FileConfig = crate::config::parse_file(toml).unwrap();
        Full::build(file, &Overrides::default()).unwrap().escalation
    }

    fn candidate(exe: &str, unit: Option<&'static str>) -> Candidate<'static> {
        Candidate {
            exe: Path::new(exe).to_owned().leak(),
            unit,
            last_ended: None,
            tracked: false,
        }
    }

    #[test]
    fn admits_by_default_within_the_limits() {
        let c = cfg("");
        assert_eq!(admit(&c, &candidate("/usr/bin/app", None), 0, 1000.0), Ok(()));
        assert!(
            admit(&c, &candidate("/usr/bin/app", None), 4, 1000.0)
                .unwrap_err()
                .contains("max_concurrent")
        );
        let mut tracked = candidate("/usr/bin/app", None);
        tracked.tracked = true;
        assert!(admit(&c, &tracked, 0, 1000.0).is_err());
    }

    #[test]
    fn filters_apply() {
        let c = cfg("[escalation]\ninclude_exe = [\"app*\"]\nexclude_units = [\"docker-*\"]\n");
        assert_eq!(
            admit(&c, &candidate("/srv/app-server", Some("app.service")), 0, 0.0),
            Ok(())
        );
        assert!(
            admit(&c, &candidate("/usr/bin/other", None), 0, 0.0)
                .unwrap_err()
                .contains("include_exe")
        );
        assert!(
            admit(&c, &candidate("/srv/app", Some("docker-1.scope")), 0, 0.0)
                .unwrap_err()
                .contains("docker-*")
        );
        let off = cfg("[escalation]\nenabled = false\n");
        assert!(
            admit(&off, &candidate("/srv/app", None), 0, 0.0)
                .unwrap_err()
                .contains("turned off")
        );
    }

    #[test]
    fn cooldown_after_an_escalation() {
        let c = cfg("[escalation]\ncooldown_seconds = 600\n");
        let mut cand = candidate("/srv/app", None);
        cand.last_ended = Some(1000.0);
        assert!(admit(&c, &cand, 0, 1500.0).unwrap_err().contains("cooling down"));
        assert_eq!(admit(&c, &cand, 0, 1601.0), Ok(()));
    }

    #[test]
    fn budgets_stop_the_costliest() {
        let c = cfg("[escalation]\nmax_hits_per_second_per_process = 1000\nmax_hits_per_second = 1500\n");
        let stop = over_budget(&c, &[(1, 2000.0), (2, 900.0), (3, 800.0), (4, 100.0)]);
        let pids: Vec<u32> = stop.iter().map(|(p, _)| *p).collect();
        // 1 is over its own budget; then 900+800+100 > 1500: the costliest goes.
        assert_eq!(pids, vec![1, 2]);
        assert!(stop[0].1.contains("per process") && stop[1].1.contains("host-wide"));
        assert!(over_budget(&c, &[(5, 500.0)]).is_empty());
        assert_eq!(hits_per_second(100.0, 90.0), 290.0);
    }
}

//! Host-wide growth detection and the escalation of its suspects to exact
//! tracking: their settings, validated.

use std::time::Duration;

use globset::GlobMatcher;

use super::{
    ConfigError, ExeGlob,
    file::{DetectFile, EscalationFile},
    glob, ranged, seconds, value_error,
};

/// Host-wide growth detection.
#[derive(Debug, Clone)]
pub struct Detect {
    pub enabled: bool,
    pub sample_interval: Duration,
    pub window_seconds: f64,
    pub min_rate: f64,
    pub min_confidence: f64,
    pub firing_after_seconds: f64,
    pub resolve_after_seconds: f64,
}

/// Exact tracking of suspects, for a while and under a budget.
#[derive(Debug, Clone)]
pub struct Escalation {
    pub enabled: bool,
    pub window_seconds: f64,
    pub max_concurrent: usize,
    pub max_hits_per_process: f64,
    pub max_hits: f64,
    pub cooldown_seconds: f64,
    pub include_exe: Vec<ExeGlob>,
    pub exclude_exe: Vec<ExeGlob>,
    pub include_units: Vec<Glob>,
    pub exclude_units: Vec<Glob>,
}

/// A glob over a name (systemd unit or container id).
#[derive(Debug, Clone)]
pub struct Glob {
    pub pattern: String,
    matcher: GlobMatcher,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, globset::Error> {
        Ok(Glob {
            pattern: pattern.into(),
            matcher: globset::Glob::new(pattern)?.compile_matcher(),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.matcher.is_match(name)
    }
}

pub(super) fn detect(f: &DetectFile) -> Result<Detect, ConfigError> {
    let d = Detect {
        enabled: f.enabled.unwrap_or(true),
        sample_interval: Duration::from_secs_f64(seconds(
            "detect.sample_interval_seconds",
            f.sample_interval_seconds,
            2.0,
            0.1,
            600.0,
        )?),
        window_seconds: seconds("detect.window_seconds", f.window_seconds, 30.0, 5.0, 86_400.0)?,
        min_rate: seconds(
            "detect.min_rate_bytes_per_second",
            f.min_rate_bytes_per_second,
            32_768.0,
            1.0,
            1e12,
        )?,
        min_confidence: seconds("detect.min_confidence", f.min_confidence, 0.6, 0.0, 1.0)?,
        firing_after_seconds: seconds(
            "detect.firing_after_seconds",
            f.firing_after_seconds,
            60.0,
            0.0,
            86_400.0,
        )?,
        resolve_after_seconds: seconds(
            "detect.resolve_after_seconds",
            f.resolve_after_seconds,
            60.0,
            0.0,
            86_400.0,
        )?,
    };
    // The shortest window must hold enough samples to judge.
    if d.window_seconds < 10.0 * d.sample_interval.as_secs_f64() {
        return Err(value_error(
            "detect.window_seconds",
            format!(
                "must be at least 10 samples long (10 × detect.sample_interval_seconds = {}s)",
                10.0 * d.sample_interval.as_secs_f64()
            ),
        ));
    }
    Ok(d)
}

pub(super) fn escalation(f: &EscalationFile) -> Result<Escalation, ConfigError> {
    let exe_globs = |key: &str, v: &Option<Vec<String>>| -> Result<Vec<ExeGlob>, ConfigError> {
        v.iter()
            .flatten()
            .enumerate()
            .map(|(i, g)| glob(g).map_err(|m| value_error(format!("{key}[{i}]"), m)))
            .collect()
    };
    let name_globs = |key: &str, v: &Option<Vec<String>>| -> Result<Vec<Glob>, ConfigError> {
        v.iter()
            .flatten()
            .enumerate()
            .map(|(i, g)| {
                Glob::new(g).map_err(|e| value_error(format!("{key}[{i}]"), format!("not a valid glob {g:?}: {e}")))
            })
            .collect()
    };
    Ok(Escalation {
        enabled: f.enabled.unwrap_or(true),
        window_seconds: seconds("escalation.window_seconds", f.window_seconds, 60.0, 1.0, 86_400.0)?,
        max_concurrent: ranged("escalation.max_concurrent", f.max_concurrent, 4, 0, 1024)? as usize,
        max_hits_per_process: seconds(
            "escalation.max_hits_per_second_per_process",
            f.max_hits_per_second_per_process,
            100_000.0,
            1.0,
            1e9,
        )?,
        max_hits: seconds(
            "escalation.max_hits_per_second",
            f.max_hits_per_second,
            300_000.0,
            1.0,
            1e10,
        )?,
        cooldown_seconds: seconds(
            "escalation.cooldown_seconds",
            f.cooldown_seconds,
            600.0,
            0.0,
            86_400.0 * 7.0,
        )?,
        include_exe: exe_globs("escalation.include_exe", &f.include_exe)?,
        exclude_exe: exe_globs("escalation.exclude_exe", &f.exclude_exe)?,
        include_units: name_globs("escalation.include_units", &f.include_units)?,
        exclude_units: name_globs("escalation.exclude_units", &f.exclude_units)?,
    })
}

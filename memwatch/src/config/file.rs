//! The config file as written (every key optional) and the command line's
//! overrides: what [`Config::build`](super::Config::build) validates.

use std::path::PathBuf;

use serde::Deserialize;

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// Prometheus exporters' web configuration file (TLS, basic auth).
    pub web_config_file: Option<PathBuf>,
    pub log: Option<String>,
    #[serde(default)]
    pub track: TrackFile,
    #[serde(default)]
    pub maps: MapsFile,
    #[serde(default)]
    pub collect: CollectFile,
    #[serde(default)]
    pub report: ReportFile,
    #[serde(default)]
    pub metrics: MetricsFile,
    #[serde(default)]
    pub symbolize: SymbolizeFile,
    #[serde(default)]
    pub probes: ProbesFile,
    #[serde(default)]
    pub detect: DetectFile,
    #[serde(default)]
    pub escalation: EscalationFile,
    #[serde(default)]
    pub unwind: UnwindFile,
    #[serde(default)]
    pub python: PythonFile,
    #[serde(default)]
    pub control: ControlFile,
    #[serde(default)]
    pub oom: OomFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OomFile {
    pub keep: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    pub socket: Option<PathBuf>,
    pub group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonFile {
    pub objects: Option<bool>,
    pub census_interval_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnwindFile {
    pub enabled: Option<bool>,
    pub frame_pointer_objects: Option<bool>,
    pub rows: Option<i64>,
    pub processes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectFile {
    pub enabled: Option<bool>,
    pub sample_interval_seconds: Option<f64>,
    pub window_seconds: Option<f64>,
    pub min_rate_bytes_per_second: Option<f64>,
    pub min_confidence: Option<f64>,
    pub firing_after_seconds: Option<f64>,
    pub resolve_after_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationFile {
    pub enabled: Option<bool>,
    pub window_seconds: Option<f64>,
    pub max_concurrent: Option<i64>,
    pub max_hits_per_second_per_process: Option<f64>,
    pub max_hits_per_second: Option<f64>,
    pub cooldown_seconds: Option<f64>,
    pub include_exe: Option<Vec<String>>,
    pub exclude_exe: Option<Vec<String>>,
    pub include_units: Option<Vec<String>>,
    pub exclude_units: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbesFile {
    pub placement: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackFile {
    pub pids: Option<Vec<i64>>,
    pub exe: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapsFile {
    pub live_allocations: Option<i64>,
    pub live_table_slots: Option<i64>,
    pub stacks: Option<i64>,
    pub processes: Option<i64>,
    pub stack_totals: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectFile {
    pub interval_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportFile {
    pub stacks_per_process: Option<i64>,
    pub cmdline_arguments: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    pub top_processes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolizeFile {
    pub cache_entries: Option<i64>,
}

/// Command-line overrides.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub web_config_file: Option<PathBuf>,
    pub pids: Vec<u32>,
    pub exe: Vec<String>,
    pub log: Option<String>,
    pub control_socket: Option<PathBuf>,
}

/// Parses the TOML text; the message names the offending key and line.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

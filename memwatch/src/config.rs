//! Configuration: a TOML file with documented defaults (see
//! `deploy/memwatch.toml`), overridden by command-line flags. Everything is
//! validated here, before anything is bound or attached, and every error names
//! the key at fault.

use std::{net::SocketAddr, path::Path, time::Duration};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Value { key: String, message: String },
}

fn value_error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        key: key.into(),
        message: message.into(),
    }
}

/// The file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
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
    pub stacks: Option<i64>,
    pub processes: Option<i64>,
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
    pub pids: Vec<u32>,
    pub exe: Vec<String>,
    pub log: Option<String>,
}

/// A process selector by executable: a glob with a `/` matches the full path,
/// one without matches the file name.
#[derive(Debug, Clone)]
pub struct ExeGlob {
    pub pattern: String,
    matcher: GlobMatcher,
    full_path: bool,
}

impl ExeGlob {
    pub fn new(pattern: &str) -> Result<Self, globset::Error> {
        Ok(ExeGlob {
            pattern: pattern.to_string(),
            matcher: Glob::new(pattern)?.compile_matcher(),
            full_path: pattern.contains('/'),
        })
    }

    pub fn matches(&self, exe: &Path) -> bool {
        if self.full_path {
            self.matcher.is_match(exe)
        } else {
            exe.file_name().is_some_and(|n| self.matcher.is_match(n))
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub log: String,
    pub pids: Vec<u32>,
    pub exe: Vec<ExeGlob>,
    pub maps: MapSizes,
    pub collect_interval: Duration,
    pub stacks_per_process: usize,
    pub top_processes: usize,
    pub symbol_cache_entries: usize,
    /// Probe instructions the kernel emulates instead of function entries.
    pub placement: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub live_allocations: u32,
    pub stacks: u32,
    pub processes: u32,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";

impl Config {
    /// Reads and validates `path` (if any), then applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                parse_file(&text).map_err(|message| ConfigError::Parse {
                    path: p.display().to_string(),
                    message,
                })?
            }
        };
        Config::build(file, overrides)
    }

    pub fn build(file: FileConfig, o: &Overrides) -> Result<Config, ConfigError> {
        let listen_text = o
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen_key = if o.listen.is_some() { "--listen" } else { "listen" };
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            value_error(
                listen_key,
                format!("expected an address such as 127.0.0.1:9477, got {listen_text:?}"),
            )
        })?;

        let mut pids = Vec::new();
        for (i, p) in file.track.pids.unwrap_or_default().into_iter().enumerate() {
            pids.push(pid(p).map_err(|m| value_error(format!("track.pids[{i}]"), m))?);
        }
        for &p in &o.pids {
            pid(p.into()).map_err(|m| value_error("--pid", m))?;
            pids.push(p);
        }
        pids.sort_unstable();
        pids.dedup();

        let mut exe = Vec::new();
        let file_globs = file.track.exe.unwrap_or_default().into_iter();
        for (i, g) in file_globs.enumerate() {
            exe.push(glob(&g).map_err(|m| value_error(format!("track.exe[{i}]"), m))?);
        }
        for g in &o.exe {
            exe.push(glob(g).map_err(|m| value_error("--exe", m))?);
        }

        let m = file.maps;
        let maps = MapSizes {
            live_allocations: ranged("maps.live_allocations", m.live_allocations, 1 << 20, 1024, 1 << 26)?,
            stacks: ranged("maps.stacks", m.stacks, 1 << 15, 256, 1 << 22)?,
            processes: ranged("maps.processes", m.processes, 1 << 10, 16, 1 << 16)?,
        };

        let interval = file.collect.interval_seconds.unwrap_or(5.0);
        if !(0.1..=3600.0).contains(&interval) {
            return Err(value_error(
                "collect.interval_seconds",
                format!("must be between 0.1 and 3600, got {interval}"),
            ));
        }

        let log = o.log.clone().or(file.log).unwrap_or_else(|| "info".to_string());
        tracing_subscriber::EnvFilter::try_new(&log)
            .map_err(|e| value_error("log", format!("not a valid log filter: {e}")))?;

        Ok(Config {
            listen,
            log,
            pids,
            exe,
            maps,
            collect_interval: Duration::from_secs_f64(interval),
            stacks_per_process: ranged(
                "report.stacks_per_process",
                file.report.stacks_per_process,
                20,
                1,
                10_000,
            )? as usize,
            top_processes: ranged("metrics.top_processes", file.metrics.top_processes, 10, 0, 1000)? as usize,
            placement: file.probes.placement.unwrap_or(true),
            symbol_cache_entries: ranged(
                "symbolize.cache_entries",
                file.symbolize.cache_entries,
                200_000,
                1000,
                100_000_000,
            )? as usize,
        })
    }
}

/// Parses the TOML text; the message names the offending key and line.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

fn pid(p: i64) -> Result<u32, String> {
    match u32::try_from(p) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("expected a process id (a positive integer), got {p}")),
    }
}

fn glob(pattern: &str) -> Result<ExeGlob, String> {
    if pattern.is_empty() {
        return Err("an empty glob matches nothing".into());
    }
    ExeGlob::new(pattern).map_err(|e| format!("not a valid glob {pattern:?}: {e}"))
}

fn ranged(key: &str, v: Option<i64>, default: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
    let v = v.unwrap_or(default.into());
    if v < min.into() || v > max.into() {
        return Err(value_error(key, format!("must be between {min} and {max}, got {v}")));
    }
    Ok(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<Config, ConfigError> {
        Config::build(
            parse_file(text).map_err(|m| value_error("file", m))?,
            &Overrides::default(),
        )
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let c = build("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert!(c.listen.ip().is_loopback());
        assert_eq!(c.maps.live_allocations, 1 << 20);
        assert_eq!(c.collect_interval, Duration::from_secs(5));
        assert!(c.pids.is_empty() && c.exe.is_empty());
    }

    #[test]
    fn the_shipped_default_config_is_valid_and_default() {
        let text = include_str!("../../deploy/memwatch.toml");
        let c = build(text).unwrap();
        let d = build("").unwrap();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.maps, d.maps);
        assert_eq!(c.collect_interval, d.collect_interval);
        assert_eq!(c.stacks_per_process, d.stacks_per_process);
        assert_eq!(c.top_processes, d.top_processes);
        assert_eq!(c.symbol_cache_entries, d.symbol_cache_entries);
        assert_eq!(c.placement, d.placement);
        assert!(d.placement);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse_file("[maps]\nlive = 3\n").unwrap_err();
        assert!(e.contains("unknown field `live`"), "{e}");
        let e = parse_file("listn = \"x\"\n").unwrap_err();
        assert!(e.contains("listn"), "{e}");
    }

    #[test]
    fn bad_types_are_named() {
        let e = parse_file("[collect]\ninterval_seconds = \"fast\"\n").unwrap_err();
        assert!(e.contains("interval_seconds"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        let e = build("[maps]\nlive_allocations = 3\n").unwrap_err().to_string();
        assert!(e.contains("maps.live_allocations") && e.contains("between"), "{e}");
        let e = build("[collect]\ninterval_seconds = 0\n").unwrap_err().to_string();
        assert!(e.contains("collect.interval_seconds"), "{e}");
        let e = build("[track]\npids = [0]\n").unwrap_err().to_string();
        assert!(e.contains("track.pids[0]"), "{e}");
        let e = build("listen = \"localhost\"\n").unwrap_err().to_string();
        assert!(e.contains("`listen`"), "{e}");
        let e = build("[track]\nexe = [\"ok\", \"[\"]\n").unwrap_err().to_string();
        assert!(e.contains("track.exe[1]"), "{e}");
        let e = build("log = \"=[\"\n").unwrap_err().to_string();
        assert!(e.contains("`log`"), "{e}");
    }

    #[test]
    fn flags_override_and_extend_the_file() {
        let file = parse_file("listen = \"127.0.0.1:1\"\n[track]\npids = [5]\nexe = [\"a\"]\n").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            pids: vec![7, 5],
            exe: vec!["b".into()],
            log: None,
        };
        let c = Config::build(file, &o).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.pids, vec![5, 7]);
        assert_eq!(c.exe.iter().map(|g| g.pattern.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let bad = Overrides {
            listen: Some("nope".into()),
            ..Default::default()
        };
        let e = Config::build(FileConfig::default(), &bad).unwrap_err().to_string();
        assert!(e.contains("--listen"), "{e}");
    }

    #[test]
    fn exe_globs_match_names_or_paths() {
        let by_name = ExeGlob::new("leak*").unwrap();
        assert!(by_name.matches(Path::new("/opt/app/leaky")));
        assert!(!by_name.matches(Path::new("/leak/app")));
        let by_path = ExeGlob::new("/usr/bin/*").unwrap();
        assert!(by_path.matches(Path::new("/usr/bin/python3")));
        assert!(!by_path.matches(Path::new("/usr/local/bin/python3")));
    }
}

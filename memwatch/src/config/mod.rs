//! Configuration: a TOML file with documented defaults (see
//! `deploy/memwatch.toml`), overridden by command-line flags. Everything is
//! validated here, before anything is bound or attached, and every error names
//! the key at fault.

mod detect;
mod file;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use globset::GlobMatcher;

pub use detect::{Detect, Escalation, Glob};
use detect::{detect, escalation};
pub use file::{
    CollectFile, ControlFile, DetectFile, EscalationFile, FileConfig, MapsFile, MetricsFile, OomFile, Overrides,
    ProbesFile, PythonFile, ReportFile, SymbolizeFile, TrackFile, UnwindFile, parse_file,
};

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
            matcher: globset::Glob::new(pattern)?.compile_matcher(),
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
    pub web_config_file: Option<PathBuf>,
    pub log: String,
    pub pids: Vec<u32>,
    pub exe: Vec<ExeGlob>,
    pub maps: MapSizes,
    pub collect_interval: Duration,
    pub stacks_per_process: usize,
    /// Leading command-line arguments reports show after the executable.
    pub cmdline_arguments: usize,
    pub top_processes: usize,
    pub symbol_cache_entries: usize,
    /// Probe instructions the kernel emulates instead of function entries.
    pub placement: bool,
    pub detect: Detect,
    pub escalation: Escalation,
    pub unwind: Unwind,
    /// Track CPython's object allocator per object in processes tracked
    /// exactly (where its functions are real calls).
    pub python_objects: bool,
    /// How often tracked Python processes get a census for the metrics
    /// (None: never).
    pub python_census_interval: Option<Duration>,
    pub control: ControlAccess,
    /// OOM-kill post-mortems kept for /oom.
    pub oom_kept: usize,
}

/// Who may steer the daemon through its control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlAccess {
    pub socket: PathBuf,
    /// Members of this group may, besides root and memwatch's own user.
    pub group: Option<(String, u32)>,
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/memwatch/control.sock";

/// A group's id by name, from the system's group database.
fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: valid pointers and a buffer of the length given.
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

fn control(f: &ControlFile, o: &Overrides) -> Result<ControlAccess, ConfigError> {
    let (socket, key) = match (&o.control_socket, &f.socket) {
        (Some(s), _) => (s.clone(), "--control-socket"),
        (None, Some(s)) => (s.clone(), "control.socket"),
        (None, None) => (PathBuf::from(DEFAULT_CONTROL_SOCKET), "control.socket"),
    };
    if !socket.is_absolute() {
        return Err(value_error(
            key,
            format!("must be an absolute path, got {}", socket.display()),
        ));
    }
    let group = match &f.group {
        None => None,
        Some(name) => Some((
            name.clone(),
            group_id(name)
                .ok_or_else(|| value_error("control.group", format!("no group named {name:?} on this host")))?,
        )),
    };
    Ok(ControlAccess { socket, group })
}

/// Stack walking by call-frame information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unwind {
    /// Off: every stack is walked by frame pointers.
    pub enabled: bool,
    /// Objects built to keep frame pointers are walked by them (faster),
    /// the rest by CFI; off: CFI wherever there is some.
    pub frame_pointer_objects: bool,
    /// Capacity of the kernel's table of unwind rows (8 bytes each, all
    /// allocated at startup), shared by every object loaded.
    pub rows: u32,
    /// Processes whose stacks are walked by CFI at once (about 5 KiB each).
    pub processes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    pub live_allocations: u32,
    /// A power of two.
    pub live_table_slots: u32,
    pub stacks: u32,
    pub processes: u32,
    /// Entries of the allocation profile: (process, stack) pairs.
    pub stack_totals: u32,
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
            live_table_slots: power_of_two("maps.live_table_slots", m.live_table_slots, 1 << 18, 1 << 10, 1 << 24)?,
            stacks: ranged("maps.stacks", m.stacks, 1 << 15, 256, 1 << 22)?,
            processes: ranged("maps.processes", m.processes, 1 << 10, 16, 1 << 16)?,
            stack_totals: ranged("maps.stack_totals", m.stack_totals, 1 << 16, 256, 1 << 22)?,
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
            web_config_file: o.web_config_file.clone().or(file.web_config_file),
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
            cmdline_arguments: ranged("report.cmdline_arguments", file.report.cmdline_arguments, 0, 0, 4096)? as usize,
            top_processes: ranged("metrics.top_processes", file.metrics.top_processes, 10, 0, 1000)? as usize,
            placement: file.probes.placement.unwrap_or(true),
            detect: detect(&file.detect)?,
            escalation: escalation(&file.escalation)?,
            python_objects: file.python.objects.unwrap_or(false),
            python_census_interval: Some(seconds(
                "python.census_interval_seconds",
                file.python.census_interval_seconds,
                60.0,
                0.0,
                86_400.0,
            )?)
            .filter(|&s| s > 0.0)
            .map(|s| Duration::from_secs_f64(s.max(1.0))),
            control: control(&file.control, o)?,
            oom_kept: ranged("oom.keep", file.oom.keep, 16, 1, 1000)? as usize,
            unwind: Unwind {
                enabled: file.unwind.enabled.unwrap_or(true),
                frame_pointer_objects: file.unwind.frame_pointer_objects.unwrap_or(true),
                rows: ranged("unwind.rows", file.unwind.rows, 1 << 20, 1 << 12, 1 << 26)?,
                processes: ranged("unwind.processes", file.unwind.processes, 1 << 10, 1, 1 << 16)?,
            },
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

impl Config {
    /// The keys that differ from `new` but apply only at a restart: what a
    /// reload keeps as it is, and says so. Selection, detection thresholds,
    /// escalation and the scan interval apply at once.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let d = (&self.detect, &new.detect);
        let differ = [
            ("listen", self.listen != new.listen),
            ("web_config_file", self.web_config_file != new.web_config_file),
            ("log", self.log != new.log),
            ("maps", self.maps != new.maps),
            ("unwind", self.unwind != new.unwind),
            ("probes.placement", self.placement != new.placement),
            (
                "python",
                self.python_objects != new.python_objects || self.python_census_interval != new.python_census_interval,
            ),
            ("detect.enabled", d.0.enabled != d.1.enabled),
            (
                "detect.sample_interval_seconds",
                d.0.sample_interval != d.1.sample_interval,
            ),
            (
                "report",
                self.stacks_per_process != new.stacks_per_process || self.cmdline_arguments != new.cmdline_arguments,
            ),
            ("metrics.top_processes", self.top_processes != new.top_processes),
            (
                "symbolize.cache_entries",
                self.symbol_cache_entries != new.symbol_cache_entries,
            ),
            ("control", self.control != new.control),
            ("oom.keep", self.oom_kept != new.oom_kept),
        ];
        differ.into_iter().filter(|(_, d)| *d).map(|(k, _)| k).collect()
    }
}

fn seconds(key: &str, v: Option<f64>, default: f64, min: f64, max: f64) -> Result<f64, ConfigError> {
    let v = v.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(value_error(key, format!("must be between {min} and {max}, got {v}")));
    }
    Ok(v)
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

fn power_of_two(key: &str, v: Option<i64>, default: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
    let n = ranged(key, v, default, min, max)?;
    if !n.is_power_of_two() {
        return Err(value_error(key, format!("must be a power of two, got {n}")));
    }
    Ok(n)
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
        let text = include_str!("../../../deploy/memwatch.toml");
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
        assert_eq!(c.detect.window_seconds, d.detect.window_seconds);
        assert_eq!(c.detect.min_rate, d.detect.min_rate);
        assert_eq!(c.detect.sample_interval, d.detect.sample_interval);
        assert_eq!(c.escalation.window_seconds, d.escalation.window_seconds);
        assert_eq!(c.escalation.max_concurrent, d.escalation.max_concurrent);
        assert_eq!(c.escalation.max_hits, d.escalation.max_hits);
        assert_eq!(c.control, d.control);
    }

    #[test]
    fn the_control_socket_and_group_are_checked() {
        let d = build("").unwrap();
        assert_eq!(d.control.socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(d.control.group, None);
        let c = build("[control]\nsocket = \"/run/x.sock\"\ngroup = \"root\"\n").unwrap();
        assert_eq!(c.control.group, Some(("root".into(), 0)));
        let e = build("[control]\ngroup = \"no-such-group-here\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("control.group") && e.contains("no-such-group-here"), "{e}");
        let e = build("[control]\nsocket = \"relative.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("control.socket") && e.contains("absolute"), "{e}");
    }

    #[test]
    fn a_reload_names_what_waits_for_a_restart() {
        let old = build("").unwrap();
        let new = build(
            "listen = \"127.0.0.1:1\"\n[maps]\nstacks = 4096\n[track]\nexe = [\"x\"]\n[detect]\nwindow_seconds = 60\n[escalation]\nmax_concurrent = 1\n",
        )
        .unwrap();
        assert_eq!(old.needs_restart(&new), ["listen", "maps"]);
        assert!(old.needs_restart(&old).is_empty());
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
        let e = build("[python]\ncensus_interval_seconds = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("python.census_interval_seconds"), "{e}");
        assert_eq!(
            build("[python]\ncensus_interval_seconds = 0\n")
                .unwrap()
                .python_census_interval,
            None
        );
        assert_eq!(build("").unwrap().python_census_interval, Some(Duration::from_secs(60)));
    }

    #[test]
    fn detection_and_escalation_settings_are_checked() {
        let c = build("").unwrap();
        assert!(c.detect.enabled && c.escalation.enabled);
        assert_eq!(c.detect.sample_interval, Duration::from_secs(2));
        let e = build("[detect]\nwindow_seconds = 5\nsample_interval_seconds = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("detect.window_seconds") && e.contains("10 samples"), "{e}");
        let e = build("[detect]\nmin_confidence = 2\n").unwrap_err().to_string();
        assert!(e.contains("detect.min_confidence"), "{e}");
        let e = build("[escalation]\nexclude_units = [\"a\", \"[\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("escalation.exclude_units[1]"), "{e}");
        let e = build("[escalation]\nmax_concurrent = -1\n").unwrap_err().to_string();
        assert!(e.contains("escalation.max_concurrent"), "{e}");
        let c = build("[escalation]\ninclude_exe = [\"nginx\"]\nexclude_units = [\"docker-*\"]\n").unwrap();
        assert!(c.escalation.include_exe[0].matches(Path::new("/usr/sbin/nginx")));
        assert!(c.escalation.exclude_units[0].matches("docker-abc.scope"));
    }

    #[test]
    fn flags_override_and_extend_the_file() {
        let file = parse_file(
            "listen = \"127.0.0.1:1\"\nweb_config_file = \"/etc/w.yml\"\n[track]\npids = [5]\nexe = [\"a\"]\n",
        )
        .unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            web_config_file: Some("/tmp/web.yml".into()),
            pids: vec![7, 5],
            exe: vec!["b".into()],
            log: None,
            control_socket: Some("/tmp/memwatch.sock".into()),
        };
        let c = Config::build(file, &o).unwrap();
        assert_eq!(c.control.socket, PathBuf::from("/tmp/memwatch.sock"));
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.web_config_file, Some(PathBuf::from("/tmp/web.yml")));
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

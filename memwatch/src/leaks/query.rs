//! The `/leaks` query string:
//! `?pid=N&min_age=SECONDS&since=SECONDS&at=peak&sort=allocated&limit=N&frames=python|all&format=json|text`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LeaksQuery {
    pub pid: Option<u32>,
    /// Count only allocations at least this old.
    pub min_age: Duration,
    /// Report each stack's growth over this window, most grown first.
    pub since: Option<Duration>,
    /// Stacks per process.
    pub limit: usize,
    pub format: Format,
    /// The stacks live at each process's peak instead of now.
    pub at_peak: bool,
    /// Stacks ranked by what they allocated since tracking began (freed or
    /// not) instead of what they hold: the allocation profile.
    pub by_allocated: bool,
    /// Whether Python stacks show the interpreter's own frames.
    pub frames: super::frames::Frames,
}

/// Whether an Accept header asks for plain text (as curl users do).
pub fn accepts_text(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/plain")))
}

/// Parses the raw query string. `accept` is the request's Accept header:
/// `text/plain` asks for the text format unless `format=` says otherwise.
pub fn parse(raw: Option<&str>, accept: Option<&str>, default_limit: usize) -> Result<LeaksQuery, String> {
    let wants_text = accepts_text(accept);
    let mut q = LeaksQuery {
        pid: None,
        min_age: Duration::ZERO,
        since: None,
        limit: default_limit,
        format: if wants_text { Format::Text } else { Format::Json },
        at_peak: false,
        by_allocated: false,
        frames: Default::default(),
    };
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "pid" => {
                let pid: u32 = value
                    .parse()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("invalid pid {value:?}: expected a process id (a positive integer)"))?;
                q.pid = Some(pid);
            }
            "min_age" => {
                let secs: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
                    .ok_or_else(|| format!("invalid min_age {value:?}: expected a number of seconds, 0 or more"))?;
                q.min_age = Duration::from_secs_f64(secs);
            }
            "since" => {
                let secs: f64 = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e9)
                    .ok_or_else(|| format!("invalid since {value:?}: expected a number of seconds, more than 0"))?;
                q.since = Some(Duration::from_secs_f64(secs));
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|&l: &usize| l > 0 && l <= 100_000)
                    .ok_or_else(|| format!("invalid limit {value:?}: expected a number of stacks from 1 to 100000"))?;
            }
            "at" => {
                q.at_peak = match value {
                    "peak" => true,
                    "now" => false,
                    _ => return Err(format!("invalid at {value:?}: expected peak or now")),
                }
            }
            "sort" => {
                q.by_allocated = match value {
                    "allocated" => true,
                    "live" => false,
                    _ => return Err(format!("invalid sort {value:?}: expected live or allocated")),
                }
            }
            "frames" => q.frames = super::frames::Frames::parse(value)?,
            "format" => {
                q.format = match value {
                    "json" => Format::Json,
                    "text" => Format::Text,
                    _ => return Err(format!("invalid format {value:?}: expected json or text")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}: expected pid, min_age, since, at, sort, limit, frames or format"
                ));
            }
        }
    }
    if q.by_allocated && (q.at_peak || q.since.is_some() || !q.min_age.is_zero()) {
        return Err(
            "sort=allocated ranks every allocation since tracking began: it takes no since, min_age or at".into(),
        );
    }
    if q.at_peak && (q.since.is_some() || !q.min_age.is_zero()) {
        return Err("at=peak cannot be combined with since or min_age: the peak is one moment's whole heap".into());
    }
    if q.since.is_some() && !q.min_age.is_zero() {
        return Err("since and min_age cannot be combined: growth compares all live allocations".into());
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let q = parse(None, None, 20).unwrap();
        assert_eq!(
            q,
            LeaksQuery {
                pid: None,
                min_age: Duration::ZERO,
                since: None,
                limit: 20,
                format: Format::Json,
                at_peak: false,
                by_allocated: false,
                frames: Default::default(),
            }
        );
        let q = parse(Some("sort=allocated&pid=4"), None, 20).unwrap();
        assert!(q.by_allocated);
        assert!(parse(Some("sort=allocated&since=5"), None, 20).is_err());
        assert!(
            parse(Some("sort=size"), None, 20)
                .unwrap_err()
                .contains("live or allocated")
        );
    }

    #[test]
    fn at_peak_is_a_moment_alone() {
        assert!(parse(Some("at=peak&pid=3"), None, 20).unwrap().at_peak);
        assert!(!parse(Some("at=now"), None, 20).unwrap().at_peak);
        assert!(parse(Some("at=noon"), None, 20).unwrap_err().contains("peak or now"));
        assert!(
            parse(Some("at=peak&since=5"), None, 20)
                .unwrap_err()
                .contains("cannot be combined")
        );
        assert!(parse(Some("at=peak&min_age=5"), None, 20).is_err());
    }

    #[test]
    fn all_parameters() {
        let q = parse(Some("pid=42&min_age=1.5&limit=3&format=text"), None, 20).unwrap();
        assert_eq!(q.pid, Some(42));
        assert_eq!(q.min_age, Duration::from_millis(1500));
        assert_eq!(q.limit, 3);
        assert_eq!(q.format, Format::Text);
    }

    #[test]
    fn accept_header_selects_text_unless_overridden() {
        assert_eq!(parse(None, Some("text/plain"), 1).unwrap().format, Format::Text);
        assert_eq!(
            parse(None, Some("application/json, text/plain;q=0.5"), 1)
                .unwrap()
                .format,
            Format::Text
        );
        assert_eq!(
            parse(Some("format=json"), Some("text/plain"), 1).unwrap().format,
            Format::Json
        );
        assert_eq!(parse(None, Some("*/*"), 1).unwrap().format, Format::Json);
    }

    #[test]
    fn bad_values_are_explained() {
        for (raw, needle) in [
            ("pid=abc", "invalid pid"),
            ("pid=0", "invalid pid"),
            ("pid=-3", "invalid pid"),
            ("min_age=-1", "invalid min_age"),
            ("min_age=soon", "invalid min_age"),
            ("min_age=NaN", "invalid min_age"),
            ("limit=0", "invalid limit"),
            ("format=xml", "invalid format"),
            ("colour=red", "unknown parameter"),
        ] {
            let e = parse(Some(raw), None, 20).unwrap_err();
            assert!(e.contains(needle), "{raw}: {e}");
        }
    }
}

//! Steering a running daemon: exact tracking started and stopped, and the
//! configuration re-read. Requests come from the HTTP side (the control
//! socket, or an authenticated listener) and from SIGHUP; the collector,
//! which owns the kernel side, carries them out and answers. This module
//! holds only what both sides share: the requests, the answers and the
//! channel between them.

use std::{
    sync::mpsc::{self, Receiver, Sender, SyncSender},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// What a track selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Pid(u32),
    /// An executable glob, as `--exe`: running processes and those started later.
    Exe(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(p) => write!(f, "pid {p}"),
            Target::Exe(g) => write!(f, "--exe {g:?}"),
        }
    }
}

/// Where a track came from: the config file and flags (replaced on reload),
/// or a control request (kept across reloads until untracked or expired).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Config,
    Control,
}

/// One selection in force, as `memwatch status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    #[serde(flatten)]
    pub target: Target,
    pub source: Source,
    pub since_unix: f64,
    /// When it ends by itself (None: until untracked).
    pub until_unix: Option<f64>,
    /// Processes it tracks now.
    #[serde(default)]
    pub pids: Vec<u32>,
}

/// The body of `POST /control/track`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TrackRequest {
    #[serde(flatten)]
    pub target: Target,
    /// Ends by itself after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_seconds: Option<f64>,
}

/// The longest `--for` accepted: a week (a longer one is a permanent track).
pub const MAX_TRACK_SECONDS: f64 = 7.0 * 86_400.0;

impl TrackRequest {
    /// The request's error, checked before it reaches the collector.
    pub fn validate(&self) -> Result<(), String> {
        match &self.target {
            Target::Pid(0) => return Err("pid 0 is not a process".into()),
            Target::Exe(g) if g.is_empty() => return Err("an empty glob matches nothing".into()),
            Target::Exe(g) => {
                crate::config::ExeGlob::new(g).map_err(|e| format!("not a valid glob {g:?}: {e}"))?;
            }
            Target::Pid(_) => {}
        }
        match self.for_seconds {
            Some(s) if !(s > 0.0 && s <= MAX_TRACK_SECONDS) => Err(format!(
                "for_seconds must be above 0 and at most {MAX_TRACK_SECONDS}, got {s}"
            )),
            _ => Ok(()),
        }
    }
}

/// What the collector is asked to do.
#[derive(Debug)]
pub enum Request {
    Track(TrackRequest),
    Untrack(Target),
    /// Apply a configuration that has been read and validated.
    Reload(Box<crate::config::Config>),
}

impl Request {
    /// Its name in logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Track(_) => "track",
            Request::Untrack(_) => "untrack",
            Request::Reload(_) => "reload",
        }
    }
}

/// The collector's answer: what it did, or why it could not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
    /// The selections in force afterwards.
    pub tracks: Vec<Track>,
}

/// The sending side, cloned by every front door.
#[derive(Clone)]
pub struct Control {
    tx: Sender<(Request, SyncSender<Reply>)>,
}

/// The collector's side.
pub struct Inbox {
    rx: Receiver<(Request, SyncSender<Reply>)>,
}

pub fn channel() -> (Control, Inbox) {
    let (tx, rx) = mpsc::channel();
    (Control { tx }, Inbox { rx })
}

/// How long a request may wait for the collector: attaching to many
/// processes can take seconds under the kernel's tracing locks.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

impl Control {
    /// Sends `request` and waits for the answer (blocking: call it off the
    /// async workers).
    pub fn ask(&self, request: Request) -> Result<Reply, String> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send((request, tx))
            .map_err(|_| "the collector has stopped".to_string())?;
        rx.recv_timeout(ANSWER_WITHIN)
            .map_err(|_| format!("the collector did not answer within {}s", ANSWER_WITHIN.as_secs()))
    }
}

impl Inbox {
    /// The requests waiting, each with where its answer goes.
    pub fn pending(&self) -> impl Iterator<Item = (Request, SyncSender<Reply>)> + '_ {
        self.rx.try_iter()
    }
}

/// Parses `--for`'s value: `90`, `90s`, `10m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(s) = t.parse::<f64>() {
        return if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(format!("expected a positive duration, got {text:?}"))
        };
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("expected a duration such as 90s, 10m or 1h30m, got {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_the_api_documents() {
        let r: TrackRequest = serde_json::from_str(r#"{"pid": 42, "for_seconds": 5}"#).unwrap();
        assert_eq!(r.target, Target::Pid(42));
        assert_eq!(r.for_seconds, Some(5.0));
        let r: TrackRequest = serde_json::from_str(r#"{"exe": "leak*"}"#).unwrap();
        assert_eq!(r.target, Target::Exe("leak*".into()));
        assert!(r.validate().is_ok());
        assert!(serde_json::from_str::<TrackRequest>(r#"{"pid": -1}"#).is_err());
        assert!(serde_json::from_str::<TrackRequest>(r#"{}"#).is_err());
    }

    #[test]
    fn bad_requests_say_why() {
        let bad = |t, s| {
            TrackRequest {
                target: t,
                for_seconds: s,
            }
            .validate()
            .unwrap_err()
        };
        assert!(bad(Target::Pid(0), None).contains("pid 0"));
        assert!(bad(Target::Exe(String::new()), None).contains("empty glob"));
        assert!(bad(Target::Exe("a[".into()), None).contains("not a valid glob"));
        assert!(bad(Target::Pid(1), Some(0.0)).contains("for_seconds"));
        assert!(bad(Target::Pid(1), Some(f64::NAN)).contains("for_seconds"));
        assert!(bad(Target::Pid(1), Some(1e9)).contains("for_seconds"));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("10m"));
    }

    #[test]
    fn an_answer_comes_back_through_the_channel() {
        let (control, inbox) = channel();
        let t = std::thread::spawn(move || control.ask(Request::Untrack(Target::Pid(7))));
        let (req, answer) = loop {
            if let Some(x) = inbox.pending().next() {
                break x;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(matches!(req, Request::Untrack(Target::Pid(7))));
        answer
            .send(Reply {
                ok: true,
                message: "done".into(),
                tracks: vec![],
            })
            .unwrap();
        assert_eq!(t.join().unwrap().unwrap().message, "done");
    }
}

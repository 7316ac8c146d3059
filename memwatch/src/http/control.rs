//! The control routes: `POST /control/track`, `POST /control/untrack` and
//! `GET /control/tracks`. Writes are served on the control socket to the
//! users its peer credentials admit, and on the TCP listener only behind
//! basic auth; elsewhere they are refused with 403 and why.

use std::os::unix::fs::PermissionsExt;

use axum::{
    body::Bytes,
    extract::{ConnectInfo, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    serve::IncomingStream,
};
use tokio::net::UnixListener;

use super::{AppState, json, text};
use crate::control::{self, Target, TrackRequest};

/// Whether this listener may change what is tracked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Door {
    Open,
    Closed(&'static str),
}

pub const NO_AUTH: &str = "control over HTTP needs basic auth (web_config_file with basic_auth_users); \
     on this host use the control socket (memwatch track)";

/// The peer of a control socket connection, from the kernel (SO_PEERCRED).
#[derive(Clone, Copy, Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        // An unknown peer is nobody: refused below.
        match stream.io().peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

/// Who the control socket admits: root, memwatch's own user, and members
/// of `group`.
#[derive(Clone, Debug)]
pub struct Admits {
    pub own_uid: u32,
    pub group: Option<(String, u32)>,
}

impl Admits {
    /// None when `peer` may steer, else why not. `groups` are the peer's
    /// supplementary groups.
    pub fn refusal(&self, peer: &Peer, groups: &[u32]) -> Option<String> {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return None;
        }
        match &self.group {
            Some((_, gid)) if peer.gid == *gid || groups.contains(gid) => None,
            Some((name, _)) => Some(format!(
                "uid {} may not control memwatch: only root and members of group {name:?} may",
                peer.uid
            )),
            None => Some(format!(
                "uid {} may not control memwatch: only root may (set control.group to admit a group)",
                peer.uid
            )),
        }
    }
}

/// A process's supplementary groups, from /proc/PID/status.
fn supplementary_groups(pid: Option<i32>) -> Vec<u32> {
    let Some(pid) = pid else { return Vec::new() };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        })
        .unwrap_or_default()
}

/// The control socket's gate: every request, read or write, from a peer
/// the socket admits.
pub async fn admit(
    State(admits): State<Admits>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    match admits.refusal(&peer, &supplementary_groups(peer.pid)) {
        None => next.run(req).await,
        Some(why) => {
            tracing::warn!(uid = peer.uid, pid = peer.pid, "control socket: refused");
            text(StatusCode::FORBIDDEN, format!("{why}\n"))
        }
    }
}

/// Binds the control socket at `path`: a stale socket of a previous run is
/// replaced; the mode lets only root and memwatch's user in, or anyone when
/// a group is admitted (its membership is checked per request).
pub fn bind(path: &std::path::Path, group: bool) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => anyhow::bail!("{} is in use: is another memwatch running?", path.display()),
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
    let listener =
        std::os::unix::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    let mode = if group { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Why this connection may not steer, and the status that says so.
fn refusal(s: &AppState) -> Option<(StatusCode, String)> {
    match (&s.door, &s.control) {
        (Door::Closed(why), _) => Some((StatusCode::FORBIDDEN, why.to_string())),
        (Door::Open, None) => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "this daemon takes no control requests".into(),
        )),
        (Door::Open, Some(_)) => None,
    }
}

fn closed(s: &AppState) -> Option<Response> {
    refusal(s).map(|(status, why)| text(status, format!("{why}\n")))
}

/// A JSON body, or what is wrong with it.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the body is not the JSON expected: {e}\n"))
}

async fn ask(s: &AppState, request: control::Request) -> Response {
    let control = s.control.clone().expect("checked by closed()");
    match tokio::task::spawn_blocking(move || control.ask(request)).await {
        Ok(Ok(reply)) if reply.ok => json(&reply),
        Ok(Ok(reply)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&reply).expect("serializes"),
        )
            .into_response(),
        Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// `POST /control/track` with `{"pid": N}` or `{"exe": "GLOB"}`, and
/// optionally `"for_seconds"`.
pub async fn track(State(s): State<AppState>, bytes: Bytes) -> Response {
    if let Some(r) = closed(&s) {
        return r;
    }
    let t: TrackRequest = match body(&bytes) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = t.validate() {
        return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
    }
    ask(&s, control::Request::Track(t)).await
}

/// `POST /control/untrack` with `{"pid": N}` or `{"exe": "GLOB"}`.
pub async fn untrack(State(s): State<AppState>, bytes: Bytes) -> Response {
    if let Some(r) = closed(&s) {
        return r;
    }
    let t: Target = match body(&bytes) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    ask(&s, control::Request::Untrack(t)).await
}

/// `GET /control`: whether this connection may steer (the page shows its
/// track buttons only then), and why not.
pub async fn door(State(s): State<AppState>) -> Response {
    let why_not = refusal(&s).map(|(_, why)| why);
    json(&serde_json::json!({ "may_control": why_not.is_none(), "why_not": why_not }))
}

/// `GET /control/tracks`: the selections in force, as of the last scan.
pub async fn tracks(State(s): State<AppState>) -> Response {
    json(&s.snapshot.get().tracks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_own_user_and_the_group_are_admitted() {
        let peer = |uid, gid| Peer { uid, gid, pid: None };
        let only_root = Admits {
            own_uid: 0,
            group: None,
        };
        assert!(only_root.refusal(&peer(0, 0), &[]).is_none());
        assert!(only_root.refusal(&peer(1000, 1000), &[]).unwrap().contains("only root"));
        let service = Admits {
            own_uid: 61000,
            group: Some(("memwatch".into(), 990)),
        };
        assert!(service.refusal(&peer(61000, 61000), &[]).is_none());
        assert!(service.refusal(&peer(1000, 990), &[]).is_none());
        assert!(service.refusal(&peer(1000, 1000), &[4, 990]).is_none());
        assert!(
            service
                .refusal(&peer(1000, 1000), &[4])
                .unwrap()
                .contains("\"memwatch\"")
        );
        assert!(service.refusal(&peer(u32::MAX, u32::MAX), &[]).is_some());
    }

    #[test]
    fn supplementary_groups_are_read_from_proc() {
        let mine = supplementary_groups(Some(std::process::id() as i32));
        // SAFETY: getgroups with a zero size returns the count only.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        assert_eq!(mine.len(), n as usize);
        assert!(supplementary_groups(None).is_empty());
    }
}

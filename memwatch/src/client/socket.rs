//! `memwatch track` and `memwatch untrack`: requests over the daemon's
//! control socket (HTTP/1.0, so that every answer is whole and closed), the
//! peer credentials of which the daemon checks.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};

use crate::control::{Reply, Target, TrackRequest};

/// The control socket: --socket, else `control.socket` from the config
/// file, else the default.
pub fn path(socket: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    Ok(crate::config::Config::load(config, &Default::default())?.control.socket)
}

/// One request; the status and body of the answer.
pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "permission denied on {}: only root and the group in control.group may control memwatch",
            socket.display()
        ),
        _ => anyhow::anyhow!(
            "cannot reach memwatch's control socket {}: {e} (is the daemon running? see --socket)",
            socket.display()
        ),
    })?;
    // Attaching to many processes can take a while; the daemon answers
    // within its own limit.
    stream.set_read_timeout(Some(crate::control::ANSWER_WITHIN + Duration::from_secs(5)))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: memwatch\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // One write; and a refusal may come (and the daemon close) before the
    // body is read, so the answer is read even when writing failed.
    let written = stream.write_all(format!("{head}{body}").as_bytes());
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        written.with_context(|| format!("writing to {}", socket.display()))?;
        read.with_context(|| format!("reading the answer from {}", socket.display()))?;
    }
    parse(&raw)
}

/// The status and body of a whole HTTP/1.0 answer.
fn parse(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let (status, body) = parse_bytes(raw)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The status and body, as bytes (a profile is binary).
pub(super) fn parse_bytes(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(raw).context("the daemon's answer is not HTTP")? {
        httparse::Status::Complete(n) => Ok((resp.code.unwrap_or(0), raw[n..].to_vec())),
        httparse::Status::Partial => bail!("the daemon's answer was cut short"),
    }
}

/// Sends a track or untrack; prints what the daemon did (or its JSON).
pub fn steer(socket: &Path, path: &str, body: &str, json: bool) -> anyhow::Result<()> {
    let (status, text) = request(socket, "POST", path, body)?;
    match serde_json::from_str::<Reply>(&text) {
        Ok(reply) if json => {
            println!("{}", serde_json::to_string_pretty(&reply)?);
            if !reply.ok {
                bail!("{}", reply.message);
            }
        }
        Ok(reply) if reply.ok => println!("{}", reply.message),
        Ok(reply) => bail!("{}", reply.message),
        Err(_) => bail!("{status}: {}", text.trim()),
    }
    Ok(())
}

pub fn track(socket: &Path, target: Target, for_seconds: Option<f64>, json: bool) -> anyhow::Result<()> {
    let body = serde_json::to_string(&TrackRequest { target, for_seconds })?;
    steer(socket, "/control/track", &body, json)
}

pub fn untrack(socket: &Path, target: Target, json: bool) -> anyhow::Result<()> {
    steer(socket, "/control/untrack", &serde_json::to_string(&target)?, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_whole() {
        let (status, body) =
            parse(b"HTTP/1.0 403 Forbidden\r\ncontent-type: text/plain\r\n\r\nuid 1000 may not\n").unwrap();
        assert_eq!((status, body.as_str()), (403, "uid 1000 may not\n"));
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"HTTP/1.0 200 OK\r\ncontent-").is_err());
    }

    #[test]
    fn an_absent_socket_is_explained() {
        let e = request(Path::new("/nonexistent/memwatch.sock"), "POST", "/control/track", "{}").unwrap_err();
        assert!(format!("{e:#}").contains("is the daemon running?"), "{e:#}");
    }
}

//! HTTP basic authentication against the web config's bcrypt hashes.
//!
//! bcrypt costs tens of milliseconds a check by design, and Prometheus
//! scrapes every few seconds: a password that verified is remembered per user
//! (one entry per configured user, so bounded) and later requests compare
//! against it in constant time. Checks run off the async workers, two at a
//! time at most, so that a flood of wrong passwords cannot starve serving.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::sync::Semaphore;

pub struct Users {
    hashes: HashMap<String, String>,
    verified: Mutex<HashMap<String, Vec<u8>>>,
    checks: Semaphore,
}

/// Checked for unknown users too, so that a reply's timing does not tell
/// which user names exist.
const DUMMY_HASH: &str = "$2b$10$zQFkvrVmYmEBLzrpQmkV0.T0Uc69dQqpKx6y5Bfn1EWN09D8sJWVe";

impl Users {
    pub fn new(users: &[(String, String)]) -> Self {
        Users {
            hashes: users.iter().cloned().collect(),
            verified: Mutex::default(),
            checks: Semaphore::new(2),
        }
    }

    async fn check(&self, user: &str, password: &[u8]) -> bool {
        let known = self.verified.lock().expect("not poisoned").get(user).cloned();
        if let Some(known) = known {
            return constant_time_eq(&known, password);
        }
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let hash = self.hashes.get(user).cloned();
        let pw = password.to_vec();
        let ok = tokio::task::spawn_blocking(move || {
            let ok = bcrypt::verify(&pw, hash.as_deref().unwrap_or(DUMMY_HASH)).unwrap_or(false);
            ok && hash.is_some()
        })
        .await
        .unwrap_or(false);
        if ok {
            let mut verified = self.verified.lock().expect("not poisoned");
            verified.insert(user.to_string(), password.to_vec());
        }
        ok
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// User and password of an `Authorization: Basic` header value.
pub fn basic_credentials(value: &str) -> Option<(String, Vec<u8>)> {
    use base64::Engine;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// The middleware: every path but `/healthz` (which tells only whether the
/// daemon is healthy, and which liveness probes call without credentials).
pub async fn require(State(users): State<Arc<Users>>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let credentials = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_credentials);
    match credentials {
        Some((user, password)) if users.check(&user, &password).await => next.run(req).await,
        found => {
            let message = if found.is_some() {
                "wrong user name or password\n"
            } else {
                "authentication required (HTTP basic)\n"
            };
            (
                StatusCode::UNAUTHORIZED,
                [
                    (header::WWW_AUTHENTICATE, "Basic realm=\"memwatch\""),
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                ],
                message,
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        // "prometheus:s3cr:et" — a colon in the password is the password's.
        let v = "Basic cHJvbWV0aGV1czpzM2NyOmV0";
        assert_eq!(
            basic_credentials(v),
            Some(("prometheus".to_string(), b"s3cr:et".to_vec()))
        );
        assert_eq!(
            basic_credentials("basic  cHJvbWV0aGV1czpzM2NyOmV0 ").unwrap().0,
            "prometheus"
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic bm9jb2xvbg==", "Basic"] {
            assert_eq!(basic_credentials(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn only_the_right_password_passes_and_is_remembered() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let users = Users::new(&[("prom".to_string(), hash)]);
        assert!(!users.check("prom", b"wrong").await);
        assert!(!users.check("nobody", b"right").await);
        assert!(users.verified.lock().unwrap().is_empty());
        assert!(users.check("prom", b"right").await);
        assert_eq!(users.verified.lock().unwrap().len(), 1);
        assert!(users.check("prom", b"right").await);
        assert!(!users.check("prom", b"righ").await);
        assert!(!users.check("prom", b"right!").await);
    }

    #[test]
    fn the_dummy_hash_is_a_hash() {
        assert!(DUMMY_HASH.parse::<bcrypt::HashParts>().is_ok());
    }
}

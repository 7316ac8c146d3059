//! The HTTP API: `/metrics`, `/leaks`, `/healthz`. Handlers only read the
//! latest snapshot; errors are plain-text messages with a fitting status.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    clock::monotonic_ns,
    collect::snapshot::SharedSnapshot,
    leaks::{self, Format, query},
    metrics::Metrics,
    process::unix_now,
};

#[derive(Clone)]
pub struct AppState {
    pub snapshot: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub default_limit: usize,
    /// /healthz fails when the last scan is older than this.
    pub stale_after: Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/leaks", get(leaks))
        .route("/healthz", get(healthz))
        .route("/probes", get(probes))
        .fallback(not_found)
        .with_state(state)
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.encode(),
    )
        .into_response()
}

async fn leaks(State(s): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let q = match query::parse(raw.as_deref(), accept, s.default_limit) {
        Ok(q) => q,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    let snapshot = s.snapshot.get();
    if !snapshot.ready {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "memwatch is starting: no scan has completed yet\n".into(),
        );
    }
    match leaks::build(&snapshot, &q, monotonic_ns(), unix_now()) {
        Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
        Ok(report) => match q.format {
            Format::Text => text(StatusCode::OK, leaks::text::render(&report)),
            Format::Json => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_string_pretty(&report).expect("report serializes"),
            )
                .into_response(),
        },
    }
}

/// Where every allocator function is probed, per binary, and why.
async fn probes(State(s): State<AppState>) -> Response {
    let snapshot = s.snapshot.get();
    let sites: Vec<serde_json::Value> = crate::collect::snapshot::probe_sites(&snapshot.processes)
        .into_iter()
        .map(|(p, n)| {
            let mut v = serde_json::to_value(&p).expect("serializable");
            v["processes"] = n.into();
            v
        })
        .collect();
    let body = serde_json::json!({ "placement": snapshot.placement, "sites": sites });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&body).expect("json"),
    )
        .into_response()
}

async fn healthz(State(s): State<AppState>) -> Response {
    let snapshot = s.snapshot.get();
    if !snapshot.ready {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
    }
    let age = unix_now() - snapshot.taken_at_unix;
    if age > s.stale_after.as_secs_f64() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stale: the last scan completed {age:.0}s ago\n"),
        );
    }
    text(StatusCode::OK, "ok\n".into())
}

async fn not_found() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "no such endpoint; memwatch serves /leaks, /probes, /metrics and /healthz\n".into(),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use tower::ServiceExt;

    use super::*;
    use crate::{collect::snapshot::Snapshot, leaks::tests::fake_snapshot};

    fn app(snapshot: Snapshot) -> Router {
        let shared = SharedSnapshot::default();
        shared.set(Snapshot {
            taken_at_unix: unix_now(),
            ..snapshot
        });
        let metrics = Arc::new(Metrics::new(10));
        metrics.update(&shared.get());
        router(AppState {
            snapshot: shared,
            metrics,
            default_limit: 20,
            stale_after: Duration::from_secs(60),
        })
    }

    async fn get(app: Router, uri: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        let mut req = axum::http::Request::get(uri);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = String::from_utf8(to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
        (status, ctype, body)
    }

    #[tokio::test]
    async fn leaks_json_by_default() {
        let (status, ctype, body) = get(app(fake_snapshot()), "/leaks?pid=42", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype, "application/json");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["processes"][0]["pid"], 42);
        assert_eq!(v["processes"][0]["stacks"][0]["frames"][0]["function"], "leak_here");
    }

    #[tokio::test]
    async fn leaks_text_by_parameter_or_accept_header() {
        let (status, ctype, body) = get(app(fake_snapshot()), "/leaks?format=text", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/plain"));
        assert!(body.contains("PID 42 (leaky)"), "{body}");
        let (_, _, body) = get(app(fake_snapshot()), "/leaks", Some("text/plain")).await;
        assert!(body.contains("leak_here"), "{body}");
    }

    #[tokio::test]
    async fn bad_requests_get_400_and_a_reason() {
        for uri in [
            "/leaks?pid=abc",
            "/leaks?min_age=-2",
            "/leaks?limit=0",
            "/leaks?format=xml",
            "/leaks?bogus=1",
        ] {
            let (status, _, body) = get(app(fake_snapshot()), uri, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
            assert!(
                body.starts_with("invalid") || body.starts_with("unknown"),
                "{uri}: {body}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_pid_and_path_get_404() {
        let (status, _, body) = get(app(fake_snapshot()), "/leaks?pid=999", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("process 999 is not tracked"), "{body}");
        let (status, _, body) = get(app(fake_snapshot()), "/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("/leaks"), "{body}");
    }

    #[tokio::test]
    async fn health_follows_the_scans() {
        let (status, _, body) = get(app(fake_snapshot()), "/healthz", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, _, _) = get(app(Snapshot::default()), "/healthz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let (status, _, _) = get(app(Snapshot::default()), "/leaks", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let stale = Snapshot {
            ready: true,
            ..Default::default()
        };
        let shared = SharedSnapshot::default();
        shared.set(Snapshot {
            taken_at_unix: unix_now() - 600.0,
            ..stale
        });
        let r = router(AppState {
            snapshot: shared,
            metrics: Arc::new(Metrics::new(1)),
            default_limit: 1,
            stale_after: Duration::from_secs(60),
        });
        let (status, _, body) = get(r, "/healthz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("stale"), "{body}");
    }

    #[tokio::test]
    async fn probes_lists_each_site_once_with_its_processes() {
        let (status, ctype, body) = get(app(fake_snapshot()), "/probes", None).await;
        assert_eq!((status, ctype.as_str()), (StatusCode::OK, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let sites = v["sites"].as_array().unwrap();
        // Both fake processes use the same free site.
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0]["function"], "free");
        assert_eq!(sites[0]["offset"], 9);
        assert_eq!(sites[0]["emulated"], true);
        assert_eq!(sites[0]["instruction"], "push %rbp");
        assert_eq!(sites[0]["processes"], 2);
        let (_, _, metrics) = get(app(fake_snapshot()), "/metrics", None).await;
        assert!(
            metrics.contains("memwatch_probe_site_info{emulated=\"true\",function=\"free\",instruction=\"push %rbp\",module=\"/usr/lib/libc.so.6\",offset=\"0x9\"} 2"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let (status, ctype, body) = get(app(fake_snapshot()), "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ctype.starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("# TYPE memwatch_allocations_total counter"), "{body}");
    }
}

//! The routes on fake snapshots: status codes, content types, bodies.

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
        censuses: Default::default(),
        metrics,
        default_limit: 20,
        stale_after: Duration::from_secs(60),
        control: None,
        door: control::Door::Closed(control::NO_AUTH),
        reload: Default::default(),
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
    let body = String::from_utf8_lossy(&to_bytes(resp.into_body(), 1 << 20).await.unwrap()).into_owned();
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
        censuses: Default::default(),
        metrics: Arc::new(Metrics::new(1)),
        default_limit: 1,
        stale_after: Duration::from_secs(60),
        control: None,
        door: control::Door::Closed(control::NO_AUTH),
        reload: Default::default(),
    });
    let (status, _, body) = get(r, "/healthz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.starts_with("stale"), "{body}");
}

#[tokio::test]
async fn the_page_is_served_small_and_under_a_strict_policy() {
    let resp = app(fake_snapshot())
        .oneshot(axum::http::Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let policy = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains("script-src 'self'") && policy.contains("connect-src 'self'"),
        "{policy}"
    );
    let (_, ctype, body) = get(app(fake_snapshot()), "/", None).await;
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert!(
        body.contains("/page/app.js") && body.contains("/page/app.css"),
        "{body}"
    );
    let (status, ctype, _) = get(app(fake_snapshot()), "/page/app.js", None).await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "text/javascript; charset=utf-8")
    );
    let (status, ctype, _) = get(app(fake_snapshot()), "/page/app.css", None).await;
    assert_eq!((status, ctype.as_str()), (StatusCode::OK, "text/css; charset=utf-8"));
    // HTML, CSS and script together; no framework, no fonts.
    assert!(page::size() < 48 * 1024, "{} bytes", page::size());
}

/// Everything the page shows comes from the JSON API: every path its
/// script fetches is a route, answered with JSON.
#[tokio::test]
async fn the_page_fetches_only_the_documented_api() {
    let script = include_str!("page/app.js");
    let mut paths: Vec<&str> = script
        .match_indices("api(")
        .filter_map(|(i, _)| {
            let rest = script[i + 4..].strip_prefix(['"', '`'])?;
            let end = rest.find(['"', '`', '?', '$']).unwrap_or(rest.len());
            Some(&rest[..end])
        })
        .filter(|p| p.starts_with('/') && *p != "/control/")
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths, ["/control", "/leaks", "/objects", "/processes", "/status"]);
    for path in paths {
        let (status, ctype, body) = get(app(fake_snapshot()), path, None).await;
        assert!(!body.starts_with("no such endpoint"), "{path}");
        if status == StatusCode::OK {
            assert_eq!(ctype, "application/json", "{path}");
        }
    }
    assert!(script.contains("`/control/${what}`"));
}

#[tokio::test]
async fn processes_lists_the_host_and_control_says_who_may_steer() {
    let (status, ctype, body) = get(app(fake_snapshot()), "/processes", None).await;
    assert_eq!((status, ctype.as_str()), (StatusCode::OK, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Sampling is off in the fake: its tracked processes, no figures.
    assert_eq!(v["watching"], false);
    assert_eq!(v["processes"].as_array().unwrap().len(), 2);
    assert_eq!(v["processes"][0]["tracked"], true);
    let (status, _, body) = get(app(fake_snapshot()), "/processes?pid=999", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, body) = get(app(fake_snapshot()), "/processes?sort=x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("expected pid, filter or limit"), "{body}");
    let (_, _, body) = get(app(fake_snapshot()), "/control", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["may_control"], false);
    assert!(v["why_not"].as_str().unwrap().contains("basic auth"), "{v}");
    let (status, _, body) = get(app(fake_snapshot()), "/leaks?frames=some", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("python or all"), "{body}");
    let (status, _, _) = get(app(fake_snapshot()), "/leaks/collapsed?frames=all", None).await;
    assert_eq!(status, StatusCode::OK);
}

async fn post(app: Router, uri: &str, body: &str) -> (StatusCode, String) {
    let req = axum::http::Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// A router whose control requests a thread answers as the collector would.
fn steerable() -> (Router, std::thread::JoinHandle<Vec<String>>) {
    let (control, inbox) = crate::control::channel();
    let shared = SharedSnapshot::default();
    let r = router(AppState {
        snapshot: shared,
        censuses: Default::default(),
        metrics: Arc::new(Metrics::new(1)),
        default_limit: 1,
        stale_after: Duration::from_secs(60),
        control: Some(control),
        door: control::Door::Open,
        reload: Default::default(),
    });
    let answering = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline && seen.len() < 2 {
            for (req, answer) in inbox.pending() {
                let ok = !matches!(req, crate::control::Request::Untrack(_));
                seen.push(format!("{req:?}"));
                let _ = answer.send(crate::control::Reply {
                    ok,
                    message: if ok { "tracking".into() } else { "not tracked".into() },
                    tracks: vec![],
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    });
    (r, answering)
}

#[tokio::test]
async fn control_is_refused_on_a_listener_without_auth() {
    let (status, body) = post(app(fake_snapshot()), "/control/track", r#"{"pid": 1}"#).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("basic auth"), "{body}");
    let (status, body) = post(app(fake_snapshot()), "/control/untrack", r#"{"pid": 1}"#).await;
    assert_eq!((status, body.contains("basic auth")), (StatusCode::FORBIDDEN, true));
    // Reading the selections is not control.
    let (status, _, body) = get(app(fake_snapshot()), "/control/tracks", None).await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "[]"));
    let (status, _, _) = get(app(fake_snapshot()), "/control/track", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn control_requests_reach_the_collector_and_bad_ones_do_not() {
    let (r, answering) = steerable();
    let (status, body) = post(r.clone(), "/control/track", r#"{"pid": 42, "for_seconds": 5}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"ok\": true") && body.contains("tracking"), "{body}");
    let (status, body) = post(r.clone(), "/control/untrack", r#"{"exe": "x*"}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("not tracked"), "{body}");
    for bad in [
        r#"{"pid": 0}"#,
        r#"{"pid": 1, "for_seconds": -1}"#,
        r#"{"nope": 1}"#,
        "not json",
    ] {
        let (status, body) = post(r.clone(), "/control/track", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(!body.trim().is_empty(), "{bad}: no message");
    }
    let seen = answering.join().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].contains("Pid(42)") && seen[0].contains("Some(5.0)"), "{seen:?}");
    assert!(seen[1].contains("Exe(\"x*\")"), "{seen:?}");
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
async fn pictures_of_the_live_heap() {
    let (status, _, body) = get(app(fake_snapshot()), "/leaks/collapsed?pid=42", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("leaky (42);main;leak_here 3000"), "{body}");
    let (status, ctype, body) = get(app(fake_snapshot()), "/leaks/flamegraph.svg", None).await;
    assert_eq!((status, ctype.as_str()), (StatusCode::OK, "image/svg+xml"));
    assert!(body.contains("<svg") && body.contains("leak_here"));
    let (status, ctype, _) = get(app(fake_snapshot()), "/leaks/pprof?pid=42", None).await;
    assert_eq!((status, ctype.as_str()), (StatusCode::OK, "application/octet-stream"));
    let (status, _, body) = get(app(fake_snapshot()), "/leaks/pprof?pid=5", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("not tracked"));
    let (status, _, _) = get(app(fake_snapshot()), "/leaks/flamegraph.svg?pid=x", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn status_summarises_the_daemon() {
    let (status, _, body) = get(app(fake_snapshot()), "/status", None).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["tracked_processes"].as_array().unwrap().len(), 2);
    assert_eq!(v["tracked_processes"][1]["live_bytes"], 3064);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (status, ctype, body) = get(app(fake_snapshot()), "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/plain; version=0.0.4"));
    assert!(body.contains("# TYPE memwatch_allocations_total counter"), "{body}");
}

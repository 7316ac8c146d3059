//! The HTTP API: `/metrics`, `/leaks`, `/healthz`. Handlers only read the
//! latest snapshot; errors are plain-text messages with a fitting status.
//! TLS and basic authentication, when the web config asks for them, wrap
//! the router (`auth`) and the listener (`tls`).

pub mod auth;
pub mod control;
pub mod page;
pub mod tls;
pub mod web_config;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
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
    /// Python censuses kept for `/objects?since=`.
    pub censuses: Arc<std::sync::Mutex<crate::objects::Histories>>,
    pub metrics: Arc<Metrics>,
    pub default_limit: usize,
    /// /healthz fails when the last scan is older than this.
    pub stale_after: Duration,
    /// Where control requests go (None: this daemon takes none).
    pub control: Option<crate::control::Control>,
    /// Whether this listener may send them.
    pub door: control::Door,
    /// The last SIGHUP's outcome, for /status.
    pub reload: Arc<std::sync::Mutex<Option<ReloadStatus>>>,
}

/// What became of the last config re-read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadStatus {
    pub at_unix: f64,
    pub applied: bool,
    pub message: String,
}

/// How the API is exposed: from the web config file, checked at startup.
#[derive(Default)]
pub struct Web {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Option<Arc<auth::Users>>,
}

impl Web {
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Web> {
        let Some(path) = path else { return Ok(Web::default()) };
        let c = web_config::load(path).map_err(anyhow::Error::msg)?;
        Ok(Web {
            tls: c.tls.as_ref().map(tls::server_config).transpose()?,
            users: (!c.users.is_empty()).then(|| Arc::new(auth::Users::new(&c.users))),
        })
    }

    pub fn authenticates(&self) -> bool {
        self.users.is_some()
    }

    /// `router` behind basic auth when users are configured.
    pub fn wrap(&self, router: Router) -> Router {
        match &self.users {
            Some(users) => router.layer(axum::middleware::from_fn_with_state(users.clone(), auth::require)),
            None => router,
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/page/app.js", get(page::script))
        .route("/page/app.css", get(page::style))
        .route("/processes", get(processes))
        .route("/control", get(control::door))
        .route("/metrics", get(metrics))
        .route("/leaks", get(leaks))
        .route("/leaks/collapsed", get(collapsed))
        .route("/leaks/flamegraph.svg", get(flamegraph))
        .route("/leaks/pprof", get(pprof))
        .route("/healthz", get(healthz))
        .route("/probes", get(probes))
        .route("/status", get(status))
        .route("/objects", get(objects))
        .route("/oom", get(oom))
        .route("/control/track", post(control::track))
        .route("/control/untrack", post(control::untrack))
        .route("/control/tracks", get(control::tracks))
        .fallback(not_found)
        .with_state(state)
}

fn json(body: &impl serde::Serialize) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(body).expect("serializes"),
    )
        .into_response()
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
        return starting();
    }
    match leaks::build(&snapshot, &q, monotonic_ns(), unix_now()) {
        Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
        Ok(report) => match q.format {
            Format::Text => text(StatusCode::OK, leaks::text::render(&report)),
            Format::Json => json(&report),
        },
    }
}

/// A census of a Python process's objects, taken now (see `objects`).
async fn objects(State(s): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    use crate::objects::{self, ObjectsError};
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let q = match objects::parse_query(raw.as_deref(), query::accepts_text(accept)) {
        Ok(q) => q,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    let pid = q.pid;
    let taken = tokio::task::spawn_blocking(move || objects::take(pid, unix_now())).await;
    let taken = match taken {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            let status = match e {
                ObjectsError::NoProcess(_) => StatusCode::NOT_FOUND,
                ObjectsError::NotPython(_) | ObjectsError::Unsupported(..) => StatusCode::UNPROCESSABLE_ENTITY,
                ObjectsError::Unreadable(..) => StatusCode::FORBIDDEN,
            };
            return text(status, format!("{e}\n"));
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("the census failed: {e}\n")),
    };
    let report = {
        let mut h = s.censuses.lock().expect("not poisoned");
        objects::report(taken, &mut h, q.limit, q.since)
    };
    if q.text {
        text(StatusCode::OK, objects::render_text(&report))
    } else {
        json(&report)
    }
}

/// Every process on the host as sampling last saw it (`leaks::host`).
async fn processes(State(s): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let q = match leaks::host::parse(raw.as_deref()) {
        Ok(q) => q,
        Err(message) => return text(StatusCode::BAD_REQUEST, format!("{message}\n")),
    };
    let snapshot = s.snapshot.get();
    if !snapshot.ready {
        return starting();
    }
    match leaks::host::build(&snapshot, &q) {
        // Compact: a thousand processes' curves, pretty-printed, weigh
        // megabytes (`| jq` indents it for a reader).
        Ok(r) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&r).expect("serializes"),
        )
            .into_response(),
        Err(e) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
    }
}

/// OOM-kill post-mortems, newest first: JSON, or text with `?format=text`
/// or `Accept: text/plain`.
async fn oom(State(s): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let mut as_text = query::accepts_text(accept);
    for pair in raw.as_deref().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("format", "text")) => as_text = true,
            Some(("format", "json")) => as_text = false,
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {pair:?}: /oom takes format=text|json\n"),
                );
            }
        }
    }
    let snapshot = s.snapshot.get();
    if as_text {
        text(StatusCode::OK, leaks::oom::render(&snapshot.oom, unix_now()))
    } else {
        json(&snapshot.oom.iter().map(|k| &**k).collect::<Vec<_>>())
    }
}

/// The daemon's state in one document, for `memwatch status`.
async fn status(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.get();
    let lost: serde_json::Map<String, serde_json::Value> = snap
        .drops
        .iter()
        .map(|(d, n)| (d.name().to_string(), (*n).into()))
        .collect();
    let body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ebpf_object": crate::kernel::object::IDENTITY,
        "ready": snap.ready,
        "snapshot_unix": snap.taken_at_unix,
        "scan_seconds": snap.scan_seconds,
        "tracked_processes": snap.processes.iter().map(|p| serde_json::json!({
            "pid": p.id.pid, "nspid": p.id.nspid, "comm": p.id.comm, "selection": p.selection,
            "unit": p.id.place.unit, "container": p.id.place.container, "pod": p.id.place.pod,
            "live_bytes": p.allocations.iter().map(|a| a.size).sum::<u64>(),
            "live_allocations": p.allocations.len(),
            "python": p.python,
        })).collect::<Vec<_>>(),
        "probes_attached": snap.probes_attached,
        "placement": snap.placement,
        "live_table": { "entries": snap.live_table_entries, "capacity": snap.live_table_capacity },
        "live_map": { "entries": snap.live_entries, "capacity": snap.live_capacity },
        "stack_map": { "entries": snap.stack_entries, "capacity": snap.stack_capacity },
        "unwind": {
            "enabled": snap.unwind.enabled,
            "processes": snap.unwind.totals.processes,
            "tables": snap.unwind.totals.objects,
            "rows": { "used": snap.unwind.totals.rows_used, "capacity": snap.unwind.totals.rows_capacity },
            "tables_without_room": snap.unwind.totals.objects_without_room,
        },
        "kernel_events_lost": lost,
        "tracks": snap.tracks,
        "ended_processes": snap.ended.len(),
        "last_reload": s.reload.lock().expect("not poisoned").clone(),
        "attach_failures": snap.failures,
        "exited_before_attach_total": snap.exited_before_attach_total,
        "watch": {
            "enabled": snap.watch.enabled,
            "watched_processes": snap.watch.watched_processes,
            "suspects": snap.watch.suspects.iter().filter(|x| x.alert.is_suspect()).count(),
            "alerts_fired_total": snap.watch.alerts_fired_total,
            "escalations_running": snap.watch.escalations_running,
        },
    });
    json(&body)
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
    let unwind: Vec<serde_json::Value> = snapshot
        .processes
        .iter()
        .map(|p| {
            let mut v = serde_json::json!({ "pid": p.id.pid, "nspid": p.id.nspid, "comm": p.id.comm, "modules": p.unwind, "python": p.python });
            if let (Some(o), Ok(serde_json::Value::Object(place))) = (v.as_object_mut(), serde_json::to_value(&p.id.place)) {
                o.extend(place);
            }
            v
        })
        .collect();
    let body = serde_json::json!({ "placement": snapshot.placement, "sites": sites, "unwind": unwind });
    json(&body)
}

/// The stacks a picture shows (with `?since=`, their growth), or the status
/// and message to send.
struct Picture {
    stacks: Vec<crate::export::HeapStack>,
    growth: bool,
    /// `?sort=allocated`: collapsed stacks and flame graphs of what each
    /// stack allocated since tracking began.
    allocated: bool,
}

impl Picture {
    /// The stacks as collapsed stacks and flame graphs draw them.
    fn drawn(self) -> Vec<crate::export::HeapStack> {
        if self.allocated {
            crate::export::by_allocated(self.stacks)
        } else {
            self.stacks
        }
    }
}

/// 503 before the first scan: no report yet, and saying so beats an empty one.
fn starting() -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        "memwatch is starting: no scan has completed yet\n".into(),
    )
}

fn picture_stacks(s: &AppState, raw: Option<&str>) -> Result<Picture, (StatusCode, String)> {
    let q = query::parse(raw, None, s.default_limit).map_err(|m| (StatusCode::BAD_REQUEST, format!("{m}\n")))?;
    let snapshot = s.snapshot.get();
    if !snapshot.ready {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "memwatch is starting: no scan has completed yet\n".into(),
        ));
    }
    if let Some(pid) = q.pid
        && !snapshot.processes.iter().any(|p| p.id.pid == pid)
    {
        let tracked = snapshot.processes.iter().map(|p| p.id.pid).collect();
        return Err((
            StatusCode::NOT_FOUND,
            format!("{}\n", leaks::LeaksError::NotTracked { pid, tracked }),
        ));
    }
    let min_age = q.min_age.as_nanos() as u64;
    let cutoff = (min_age > 0).then(|| monotonic_ns().saturating_sub(min_age));
    let since = q.since.map(|d| d.as_nanos().min(u64::MAX as u128) as u64);
    let mut stacks = crate::export::heap_stacks(&snapshot, q.pid, cutoff, since, q.at_peak);
    for s in &mut stacks {
        q.frames.apply(&mut s.frames);
    }
    Ok(Picture {
        stacks,
        growth: since.is_some(),
        allocated: q.by_allocated,
    })
}

/// Collapsed stacks of the live heap (`?pid=`, `?min_age=`).
async fn collapsed(State(s): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    match picture_stacks(&s, raw.as_deref()) {
        Ok(p) => text(StatusCode::OK, crate::export::collapsed::render(&p.drawn())),
        Err((status, message)) => text(status, message),
    }
}

/// A flame graph of the live heap by stack, in bytes.
async fn flamegraph(State(s): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let picture = match picture_stacks(&s, raw.as_deref()) {
        Ok(p) => p,
        Err((status, message)) => return text(status, message),
    };
    let title = match (picture.growth, picture.allocated) {
        (true, _) => "memwatch: growth of the live heap by stack",
        (false, true) => "memwatch: allocations by stack since tracking began",
        (false, false) => "memwatch: live heap by stack",
    };
    match crate::export::flamegraph::render(&picture.drawn(), title) {
        Ok(svg) => (StatusCode::OK, [(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("drawing the flame graph failed: {e}\n"),
        ),
    }
}

/// The live heap as a gzipped pprof profile.
async fn pprof(State(s): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let stacks = match picture_stacks(&s, raw.as_deref()) {
        Ok(p) => p.stacks,
        Err((status, message)) => return text(status, message),
    };
    let now = (unix_now() * 1e9) as i64;
    match crate::export::pprof::encode(&crate::export::pprof::build(&stacks, now)) {
        Ok(bytes) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"memwatch-heap.pb.gz\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the profile failed: {e}\n"),
        ),
    }
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
        "no such endpoint; memwatch serves its page at /, and /processes, /leaks, /objects, /oom, /probes, \
         /control, /status, /metrics and /healthz\n"
            .into(),
    )
}

#[cfg(test)]
mod tests;

//! `memwatch run`: binds the API and the control socket, loads the eBPF
//! programs, starts the collector and serves until SIGINT or SIGTERM, then
//! detaches everything. SIGHUP re-reads the config.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;

use crate::{
    collect::{Collector, Heartbeat, snapshot::SharedSnapshot},
    config::{Config, Overrides},
    control::{self, Control},
    http::{AppState, ReloadStatus, Web, control::Door, router, tls::TlsListener},
    kernel::Kernel,
    metrics::Metrics,
    symbolize::native::NativeSymbolizer,
    watch::{Watcher, sampler::SharedWatcher},
};

/// Where the config came from, to read it again on SIGHUP.
pub struct Source {
    pub path: Option<std::path::PathBuf>,
    pub overrides: Overrides,
}

pub fn run(config: Config, web: Web, source: Source) -> anyhow::Result<()> {
    // Threads come and go (detaching, censuses); glibc gives new threads
    // new arenas up to 8 per core, each keeping its freed pages, and the
    // soak saw 3 MiB more each minute until they were all made. Two arenas
    // bound it (MALLOC_ARENA_MAX in the environment still wins).
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: before any thread of ours allocates; mallopt is thread-safe.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
    // Bind first: a port in use fails before anything is attached.
    let listener =
        std::net::TcpListener::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let socket = bind_control(&config, &source)?;
    let socket_path = socket.as_ref().map(|s| s.1.clone());

    let kernel = Kernel::load(
        config.maps,
        config.unwind,
        !config.exe.is_empty(),
        config.detect.enabled,
    )?;
    let shared = SharedSnapshot::default();
    let metrics = Arc::new(Metrics::new(config.top_processes));
    let shutdown = Arc::new(AtomicBool::new(false));

    // Host-wide detection samples /proc on its own thread: it never waits on
    // the collector's attaching and detaching.
    let watcher = config
        .detect
        .enabled
        .then(|| SharedWatcher::new(Watcher::new(&config.detect, config.cmdline_arguments)));
    let sampler_thread = match &watcher {
        Some(w) => Some(w.spawn(config.detect.sample_interval, shutdown.clone())?),
        None => None,
    };

    // The collector owns the kernel side on its own thread (blazesym's
    // symbolizer is not Send, so it is created there). Startup errors come
    // back before the API starts serving.
    let (control, inbox) = control::channel();
    let latest = crate::python::latest::LatestCensuses::default();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let collector_thread = {
        let (shutdown, shared, metrics, config) = (shutdown.clone(), shared.clone(), metrics.clone(), config.clone());
        let (watcher, latest) = (watcher.clone(), latest.clone());
        std::thread::Builder::new().name("collector".into()).spawn(move || {
            let symbolizer = Box::new(NativeSymbolizer::new(config.symbol_cache_entries));
            let mut collector =
                Collector::new(kernel, config, symbolizer, shared, metrics, watcher, Some(inbox)).with_censuses(latest);
            let started = collector.start();
            let ok = started.is_ok();
            let _ = started_tx.send(started);
            if ok {
                collector.run(shutdown, watchdog());
            }
        })?
    };
    started_rx
        .recv()
        .context("the collector thread died while starting")??;

    let (shared_for_census, metrics_for_census) = (shared.clone(), metrics.clone());
    let state = AppState {
        snapshot: shared,
        censuses: Default::default(),
        metrics,
        default_limit: config.stacks_per_process,
        stale_after: (config.collect_interval * 3).max(Duration::from_secs(30)),
        control: Some(control.clone()),
        door: if web.authenticates() {
            Door::Open
        } else {
            Door::Closed(crate::http::control::NO_AUTH)
        },
        reload: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Probes for the configured processes are attached and the API is bound:
    // tell systemd (Type=notify) we are ready.
    notify(&[sd_notify::NotifyState::Ready]);
    if let Some(every) = config.python_census_interval {
        runtime.spawn(census_metrics(shared_for_census, metrics_for_census, latest, every));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    runtime.spawn(signals(stop_tx, state.clone(), control, source));
    let unix_state = AppState {
        door: Door::Open,
        ..state.clone()
    };
    let admits = crate::http::control::Admits {
        // SAFETY: geteuid cannot fail.
        own_uid: unsafe { libc::geteuid() },
        group: config.control.group.clone(),
    };
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = web.wrap(router(state));
        tracing::info!(
            address = %local,
            tls = web.tls.is_some(),
            basic_auth = web.authenticates(),
            control_socket = socket.as_ref().map(|s| s.1.display().to_string()),
            "serving /metrics, /leaks and /healthz"
        );
        if let Some((unix, _)) = socket {
            let unix = tokio::net::UnixListener::from_std(unix)?;
            let app = router(unix_state)
                .layer(axum::middleware::from_fn_with_state(
                    admits,
                    crate::http::control::admit,
                ))
                .into_make_service_with_connect_info::<crate::http::control::Peer>();
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(unix, app).with_graceful_shutdown(stop).await {
                    tracing::error!(error = %e, "the control socket failed");
                }
            });
        }
        match web.tls {
            Some(tls) => {
                let listener = TlsListener::new(listener, tls)?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped(stop_rx))
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped(stop_rx))
                    .await
            }
        }
    });
    if let Some(path) = &socket_path {
        let _ = std::fs::remove_file(path);
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.store(true, Ordering::Relaxed);
    if collector_thread.join().is_err() {
        anyhow::bail!("the collector thread panicked");
    }
    if sampler_thread.is_some_and(|t| t.join().is_err()) {
        anyhow::bail!("the sampling thread panicked");
    }
    served.context("HTTP server")?;
    tracing::info!("memwatch stopped");
    Ok(())
}

/// Takes a census of every tracked Python process every `every`, for the
/// `memwatch_python_*` metrics (off the async workers; one at a time).
async fn census_metrics(
    shared: SharedSnapshot,
    metrics: Arc<Metrics>,
    latest: crate::python::latest::LatestCensuses,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pythons: Vec<(u32, String)> = shared
            .get()
            .processes
            .iter()
            .filter(|p| p.python.is_some())
            .map(|p| (p.id.pid, p.exe_name.clone()))
            .collect();
        let latest = latest.clone();
        let taken = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (pid, exe) in pythons {
                match crate::objects::take(pid, crate::process::unix_now()) {
                    Ok(t) => {
                        latest.record(pid, t.start_time, t.taken_unix, &t.census);
                        // Cut short by changes even when walked again: its
                        // counts would dip every gauge of the executable.
                        if t.census.worth_retaking() {
                            tracing::debug!(pid, reason = ?t.census.inconsistency, "a partial census is left out of the metrics");
                        } else {
                            out.push((exe, t))
                        }
                    }
                    Err(e) => tracing::debug!(pid, error = %e, "no census for the metrics"),
                }
            }
            out
        })
        .await;
        if let Ok(censuses) = taken {
            metrics.update_python(&censuses);
        }
    }
}

/// Under systemd's watchdog, the collector's heartbeat pings it (at half
/// its timeout) with the collector's status.
fn watchdog() -> Option<Heartbeat> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Heartbeat {
        every: Duration::from_micros(usec) / 2,
        beat: Box::new(|status| notify(&[sd_notify::NotifyState::Watchdog, sd_notify::NotifyState::Status(status)])),
    })
}

/// Tells systemd, when run under it; a no-op otherwise.
pub fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Binds the control socket. One asked for by name that cannot be bound
/// stops the daemon; the default one only warns (another memwatch may hold
/// it, or this user may not write /run/memwatch): `memwatch track` will not
/// reach this daemon then.
fn bind_control(
    config: &Config,
    source: &Source,
) -> anyhow::Result<Option<(std::os::unix::net::UnixListener, std::path::PathBuf)>> {
    let path = &config.control.socket;
    match crate::http::control::bind(path, config.control.group.is_some()) {
        Ok(l) => Ok(Some((l, path.clone()))),
        Err(e)
            if path.as_os_str() == crate::config::DEFAULT_CONTROL_SOCKET
                && source.overrides.control_socket.is_none() =>
        {
            tracing::warn!(
                error = format!("{e:#}"),
                "no control socket: memwatch track cannot reach this daemon"
            );
            Ok(None)
        }
        Err(e) => Err(e.context("control socket (control.socket)")),
    }
}

/// Resolves once shutdown is asked for.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}

/// SIGINT and SIGTERM stop the daemon; SIGHUP re-reads the config.
async fn signals(stop: tokio::sync::watch::Sender<bool>, state: AppState, control: Control, source: Source) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let source = std::sync::Arc::new(source);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reading the config again");
                let (control, source) = (control.clone(), source.clone());
                let status = tokio::task::spawn_blocking(move || reload(&control, &source)).await;
                let status = status.unwrap_or_else(|e| ReloadStatus {
                    at_unix: crate::process::unix_now(),
                    applied: false,
                    message: format!("the reload failed: {e}"),
                });
                state.metrics.config_reload(status.applied);
                *state.reload.lock().expect("not poisoned") = Some(status);
            }
        }
    }
    let _ = stop.send(true);
}

/// Reads the config again and has the collector apply it; a config that
/// does not load changes nothing.
fn reload(control: &Control, source: &Source) -> ReloadStatus {
    let at_unix = crate::process::unix_now();
    notify(&[sd_notify::NotifyState::Reloading]);
    let outcome = Config::load(source.path.as_deref(), &source.overrides)
        .map_err(|e| format!("the config was not reloaded, the one in force stays: {e}"))
        .and_then(|c| control.ask(control::Request::Reload(Box::new(c))))
        .and_then(|reply| {
            if reply.ok {
                Ok(reply.message)
            } else {
                Err(reply.message)
            }
        });
    notify(&[sd_notify::NotifyState::Ready]);
    match outcome {
        Ok(message) => {
            tracing::info!("{message}");
            ReloadStatus {
                at_unix,
                applied: true,
                message,
            }
        }
        Err(message) => {
            tracing::error!("{message}");
            ReloadStatus {
                at_unix,
                applied: false,
                message,
            }
        }
    }
}

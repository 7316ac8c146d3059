//! `memwatch run`: binds the API, loads the eBPF programs, starts the
//! collector and serves until SIGINT or SIGTERM, then detaches everything.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;

use crate::{
    collect::{Collector, snapshot::SharedSnapshot},
    config::Config,
    http::{AppState, Web, router, tls::TlsListener},
    kernel::Kernel,
    metrics::Metrics,
    symbolize::native::NativeSymbolizer,
    watch::{Watcher, sampler::SharedWatcher},
};

pub fn run(config: Config, web: Web) -> anyhow::Result<()> {
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
    let (started_tx, started_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let collector_thread = {
        let (shutdown, shared, metrics, config) = (shutdown.clone(), shared.clone(), metrics.clone(), config.clone());
        let watcher = watcher.clone();
        std::thread::Builder::new().name("collector".into()).spawn(move || {
            let symbolizer = Box::new(NativeSymbolizer::new(config.symbol_cache_entries));
            let mut collector = Collector::new(kernel, config, symbolizer, shared, metrics, watcher);
            let started = collector.start();
            let ok = started.is_ok();
            let _ = started_tx.send(started);
            if ok {
                collector.run(shutdown);
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
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Probes for the configured processes are attached and the API is bound:
    // tell systemd (Type=notify) we are ready.
    notify(&[sd_notify::NotifyState::Ready]);
    if let Some(every) = config.python_census_interval {
        runtime.spawn(census_metrics(shared_for_census, metrics_for_census, every));
    }
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = web.wrap(router(state));
        tracing::info!(
            address = %local,
            tls = web.tls.is_some(),
            basic_auth = web.authenticates(),
            "serving /metrics, /leaks and /healthz"
        );
        match web.tls {
            Some(tls) => {
                let listener = TlsListener::new(listener, tls)?;
                axum::serve(listener, app).with_graceful_shutdown(signal()).await
            }
            None => axum::serve(listener, app).with_graceful_shutdown(signal()).await,
        }
    });
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
async fn census_metrics(shared: SharedSnapshot, metrics: Arc<Metrics>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pythons: Vec<(u32, String)> = shared
            .get()
            .processes
            .iter()
            .filter(|p| p.python.is_some())
            .map(|p| (p.pid, p.exe_name.clone()))
            .collect();
        let taken = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (pid, exe) in pythons {
                match crate::objects::take(pid, crate::process::unix_now()) {
                    Ok(t) => out.push((exe, t)),
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

/// Tells systemd, when run under it; a no-op otherwise.
pub fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

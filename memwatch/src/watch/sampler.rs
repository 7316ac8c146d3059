//! The host-wide sampling thread. It reads only /proc, never the kernel
//! maps or probes, so attaching and detaching (which can wait seconds on the
//! kernel's tracing locks under exec churn) never delays a sample: series
//! stay evenly spaced and alerts fire on time. The collector acts on the
//! suspects it finds.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{Watcher, alert::Transition, read_host};
use crate::{clock::monotonic_ns, process::unix_now};

/// The watcher, shared by the sampler and the collector. Neither holds the
/// lock across I/O: /proc is read before it is taken, probes are attached
/// after it is released.
#[derive(Clone)]
pub struct SharedWatcher(Arc<Mutex<Watcher>>);

impl SharedWatcher {
    pub fn new(w: Watcher) -> Self {
        SharedWatcher(Arc::new(Mutex::new(w)))
    }

    pub fn lock(&self) -> MutexGuard<'_, Watcher> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One sample of every process on the host.
    pub fn sample(&self) {
        let started = Instant::now();
        let readings = read_host(std::process::id());
        let (mono, now) = (monotonic_ns() as f64 / 1e9, unix_now());
        let mut w = self.lock();
        for (pid, tr) in w.apply(readings, mono, now) {
            let p = w.get(pid).or_else(|| w.gone().find(|g| g.pid == pid));
            let (comm, rate) = p.map_or((String::new(), 0.0), |p| (p.comm.clone(), p.estimate.rate));
            // Named as `docker ps`, `kubectl` and systemd name it.
            let place = p.map(|p| p.cgroup.clone()).unwrap_or_default();
            let (unit, container) = (place.unit.as_deref(), place.container_short());
            let (pod, nspid) = (place.pod.as_deref(), p.and_then(|p| p.nspid));
            match tr {
                Transition::Fired => {
                    tracing::warn!(pid, comm = %comm, unit, container, pod, nspid, rate_bytes_per_second = rate as u64, "leak alert firing")
                }
                Transition::Resolved => {
                    tracing::info!(pid, comm = %comm, unit, container, pod, nspid, "leak alert resolved")
                }
            }
        }
        w.counts.sample_seconds = started.elapsed().as_secs_f64();
    }

    /// Samples every `every` until `shutdown` is set.
    pub fn run(self, every: Duration, shutdown: Arc<AtomicBool>) {
        let mut next = Instant::now() + every;
        while !shutdown.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                // Short naps: shutdown is noticed within 200 ms.
                std::thread::sleep((next - now).min(Duration::from_millis(200)));
                continue;
            }
            self.sample();
            next += every;
            if next < Instant::now() {
                next = Instant::now() + every;
            }
        }
    }

    /// Starts the sampling thread after a first sample taken here, so that
    /// the first snapshot already shows the host.
    pub fn spawn(&self, every: Duration, shutdown: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
        self.sample();
        let me = self.clone();
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || me.run(every, shutdown))
    }
}

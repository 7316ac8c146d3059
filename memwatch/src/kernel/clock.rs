//! Publishes CLOCK_MONOTONIC to the `CLOCK` map for the allocator probes,
//! which read it there rather than calling `bpf_ktime_get_ns` on every
//! allocator call (see `memwatch_common::time::CLOCK_TICK_NS`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use aya::maps::{Array, Map, MapData};
use memwatch_common::time::CLOCK_TICK_NS;

use crate::clock::monotonic_ns;

pub struct ClockPublisher {
    stop: Arc<AtomicBool>,
    /// The time last published: what the probes stamp allocations with now.
    last: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl ClockPublisher {
    /// Writes the time once (before any probe can read the map) and then
    /// every tick from a thread of its own.
    pub fn start(map: Map) -> anyhow::Result<ClockPublisher> {
        let mut clock: Array<MapData, u64> = Array::try_from(map)?;
        let first = monotonic_ns();
        clock.set(0, first, 0).context("writing the CLOCK map")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let last = Arc::new(AtomicU64::new(first));
        let published = Arc::clone(&last);
        let thread = std::thread::Builder::new()
            .name("clock".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_nanos(CLOCK_TICK_NS));
                    let now = monotonic_ns();
                    match clock.set(0, now, 0) {
                        Ok(()) => published.store(now, Ordering::Release),
                        Err(e) => tracing::warn!(error = %e, "publishing the clock failed"),
                    }
                }
            })
            .context("starting the clock thread")?;
        Ok(ClockPublisher {
            stop,
            last,
            thread: Some(thread),
        })
    }

    /// The time the probes stamp allocations with now: a block stamped
    /// with it or later was made no earlier than the last publication.
    pub fn published(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

impl Drop for ClockPublisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

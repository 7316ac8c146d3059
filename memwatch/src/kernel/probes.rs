//! Attaching the allocator programs to one process's allocator functions.
//!
//! Probes are scoped to the process (perf_event pid scope): other processes
//! mapping the same libc never hit them.

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex},
};

use anyhow::{Context, anyhow};
use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
};
use memwatch_common::{cookie::ProbeCookie, maps as names};

use crate::target::{AllocatorTarget, Site};

/// The probes of one site: a uretprobe and a uprobe, or one uprobe for releases.
pub struct AttachedSite {
    pub site: Site,
    pub target_path: String,
    pub build_id: Option<String>,
    /// Untracked frees here are measured from the allocator's header.
    pub chunk_header: bool,
    links: Vec<(&'static str, UProbeLinkId)>,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing"))?
        .try_into()
        .map_err(Into::into)
}

fn attach_one(
    ebpf: &mut Ebpf,
    prog: &'static str,
    target: &AllocatorTarget,
    site: &Site,
    pid: NonZeroU32,
) -> anyhow::Result<(&'static str, UProbeLinkId)> {
    let cookie = ProbeCookie {
        kind: site.kind,
        family: target.family,
        sp_words: 0,
        ctx_arg: site.ctx_arg,
        chunk_header: target.chunk_header,
    };
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(site.file_offset()),
        cookie: Some(cookie.encode()),
    };
    let id = program(ebpf, prog)?
        .attach(point, &target.open_path, UProbeScope::OneProcess(pid))
        .with_context(|| {
            format!(
                "attaching {prog} to {}+{:#x} ({})",
                target.path,
                site.file_offset(),
                site.symbol
            )
        })?;
    Ok((prog, id))
}

/// Attaches every site of `target` for `pid`.
///
/// Return probes go in before entry probes: a call entered between the two
/// would otherwise leave entry state that no return ever clears. On failure
/// everything attached so far is detached again.
pub fn attach(ebpf: &mut Ebpf, pid: u32, target: &AllocatorTarget) -> anyhow::Result<Vec<AttachedSite>> {
    let pid = NonZeroU32::new(pid).context("pid 0")?;
    let mut sites: Vec<AttachedSite> = target
        .sites
        .iter()
        .map(|s| AttachedSite {
            site: s.clone(),
            target_path: target.path.clone(),
            build_id: target.build_id.clone(),
            chunk_header: target.chunk_header,
            links: Vec::new(),
        })
        .collect();
    let result = (|| {
        for s in sites.iter_mut().filter(|s| !s.site.kind.is_release()) {
            s.links
                .push(attach_one(ebpf, names::PROG_ALLOC_EXIT, target, &s.site, pid)?);
        }
        for s in sites.iter_mut() {
            let prog = if s.site.kind.is_release() {
                names::PROG_FREE_ENTER
            } else {
                names::PROG_ALLOC_ENTER
            };
            s.links.push(attach_one(ebpf, prog, target, &s.site, pid)?);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(sites),
        Err(e) => {
            // Rare, and nothing else runs meanwhile: close synchronously.
            drop(detach(ebpf, sites));
            Err(e)
        }
    }
}

/// Takes the links of `sites` out of their programs, entry probes first
/// (the reverse of attaching). Dropping a link detaches it; that waits for
/// RCU grace periods (~0.1 s a probe here), so callers hand the links to a
/// [`Reaper`] instead of dropping them on the collector's thread.
pub fn detach(ebpf: &mut Ebpf, sites: Vec<AttachedSite>) -> Vec<UProbeLink> {
    let mut links: Vec<(&'static str, UProbeLinkId)> = sites.into_iter().flat_map(|s| s.links).collect();
    links.sort_by_key(|(prog, _)| *prog == names::PROG_ALLOC_EXIT);
    let mut out = Vec::with_capacity(links.len());
    for (prog, id) in links {
        match program(ebpf, prog).and_then(|p| p.take_link(id).map_err(Into::into)) {
            Ok(link) => out.push(link),
            Err(e) => tracing::warn!(program = prog, error = %e, "detaching a probe failed"),
        }
    }
    out
}

/// Closes detached links in the background, many at once: concurrent
/// closers share the kernel's grace periods. At most [`REAPER_THREADS`]
/// closers run, however many calls hand links over: they drain one queue.
pub struct Reaper<T: Send + 'static = UProbeLink> {
    queue: Arc<Mutex<ReapQueue<T>>>,
    running: Vec<std::thread::JoinHandle<()>>,
}

struct ReapQueue<T> {
    links: Vec<T>,
    /// Closers that have not yet seen the queue empty.
    active: usize,
}

impl<T: Send + 'static> Default for Reaper<T> {
    fn default() -> Self {
        Reaper {
            queue: Arc::new(Mutex::new(ReapQueue {
                links: Vec::new(),
                active: 0,
            })),
            running: Vec::new(),
        }
    }
}

const REAPER_THREADS: usize = 32;

impl<T: Send + 'static> Reaper<T> {
    pub fn reap(&mut self, links: Vec<T>) {
        self.running.retain(|h| !h.is_finished());
        if links.is_empty() {
            return;
        }
        let spawn = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.links.extend(links);
            let n = REAPER_THREADS.saturating_sub(q.active).min(q.links.len());
            q.active += n;
            n
        };
        for _ in 0..spawn {
            let queue = self.queue.clone();
            let closer = move || loop {
                let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
                match q.links.pop() {
                    Some(link) => {
                        drop(q);
                        drop(link);
                    }
                    None => {
                        // Seen empty under the lock: reap() counts on it.
                        q.active -= 1;
                        return;
                    }
                }
            };
            match std::thread::Builder::new().name("reaper".into()).spawn(closer) {
                Ok(h) => self.running.push(h),
                Err(e) => {
                    tracing::warn!(error = %e, "detaching probes synchronously");
                    let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                    q.active -= 1;
                    let rest = std::mem::take(&mut q.links);
                    drop(q);
                    drop(rest);
                }
            }
        }
    }

    /// Waits until every link handed over is closed.
    pub fn finish(&mut self) {
        for h in self.running.drain(..) {
            let _ = h.join();
        }
    }

    /// Closer threads alive.
    pub fn threads(&self) -> usize {
        self.running.iter().filter(|h| !h.is_finished()).count()
    }
}

impl AttachedSite {
    pub fn probe_count(&self) -> usize {
        self.links.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;

    static CLOSING: AtomicUsize = AtomicUsize::new(0);
    static MOST: AtomicUsize = AtomicUsize::new(0);
    static CLOSED: AtomicUsize = AtomicUsize::new(0);

    /// Closes slowly, like a link waiting for a grace period.
    struct SlowLink;
    impl Drop for SlowLink {
        fn drop(&mut self) {
            let now = CLOSING.fetch_add(1, SeqCst) + 1;
            MOST.fetch_max(now, SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            CLOSING.fetch_sub(1, SeqCst);
            CLOSED.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn closers_are_capped_across_calls_and_close_everything() {
        let mut r: Reaper<SlowLink> = Reaper::default();
        for _ in 0..50 {
            r.reap((0..40).map(|_| SlowLink).collect());
            assert!(r.threads() <= REAPER_THREADS);
        }
        r.finish();
        assert_eq!(CLOSED.load(SeqCst), 2000);
        let most = MOST.load(SeqCst);
        assert!(most <= REAPER_THREADS && most > 1, "{most} closing at once");
    }
}

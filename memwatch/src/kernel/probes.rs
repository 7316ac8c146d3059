//! Attaching the allocator programs to one process's allocator functions.
//!
//! Probes are scoped to the process (perf_event pid scope): other processes
//! mapping the same libc never hit them.

use std::num::NonZeroU32;

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
/// closers share the kernel's grace periods.
#[derive(Default)]
pub struct Reaper {
    running: Vec<std::thread::JoinHandle<()>>,
}

const REAPER_THREADS: usize = 32;

impl Reaper {
    pub fn reap(&mut self, mut links: Vec<UProbeLink>) {
        self.running.retain(|h| !h.is_finished());
        if links.is_empty() {
            return;
        }
        let per_thread = links.len().div_ceil(REAPER_THREADS);
        while !links.is_empty() {
            let chunk: Vec<UProbeLink> = links.drain(..per_thread.min(links.len())).collect();
            match std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || drop(chunk))
            {
                Ok(h) => self.running.push(h),
                // Could not spawn: the chunk was dropped here, synchronously.
                Err(e) => tracing::warn!(error = %e, "detaching probes synchronously"),
            }
        }
    }

    /// Waits until every link handed over is closed.
    pub fn finish(&mut self) {
        for h in self.running.drain(..) {
            let _ = h.join();
        }
    }
}

impl AttachedSite {
    pub fn probe_count(&self) -> usize {
        self.links.len()
    }
}

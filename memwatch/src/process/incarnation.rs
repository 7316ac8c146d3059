//! The records of a tracked process: why it is tracked, its incarnation
//! (one generation of one pid) with the probes it got, and how its tracking
//! ended.

use std::path::PathBuf;

use serde::Serialize;

use super::cgroup;
use crate::kernel::probes;

/// Why a process is tracked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "by", content = "value")]
pub enum Selection {
    Pid,
    Exe(String),
    /// Escalated by the leak detector, for a while.
    Suspect,
}

/// A probed allocator function and where its probes sit, for /probes,
/// /metrics and the logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSummary {
    pub module: String,
    pub build_id: Option<String>,
    pub function: &'static str,
    /// File offset of the function's entry.
    pub entry_offset: u64,
    /// At a free: how blocks freed that memwatch did not see allocated
    /// (before tracking began) are measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untracked_free_sizes: Option<&'static str>,
    #[serde(flatten)]
    pub placement: crate::target::placement::Placement,
}

pub struct Incarnation {
    pub pid: u32,
    pub generation: u32,
    /// Counter slot base in the kernel's COUNTERS array.
    pub slot: u32,
    pub start_time: u64,
    pub comm: String,
    pub exe: PathBuf,
    pub cmdline: String,
    /// Its systemd unit, container and pod, read once: a process does not
    /// change containers.
    pub place: cgroup::Placement,
    /// Its pid inside its own pid namespace, when that is not the host's.
    pub nspid: Option<u32>,
    pub selection: Selection,
    pub tracked_since_unix: f64,
    pub sites: Vec<probes::AttachedSite>,
}

/// A process's executable name, or its comm when the executable is unknown.
pub fn exe_name(exe: &std::path::Path, comm: &str) -> String {
    exe.file_name()
        .map_or_else(|| comm.to_string(), |n| n.to_string_lossy().into_owned())
}

impl Incarnation {
    pub fn identity(&self) -> super::Identity {
        super::Identity {
            pid: self.pid,
            nspid: self.nspid,
            comm: self.comm.clone(),
            exe: self.exe.display().to_string(),
            cmdline: self.cmdline.clone(),
            place: self.place.clone(),
        }
    }

    pub fn exe_name(&self) -> String {
        exe_name(&self.exe, &self.comm)
    }

    pub fn probes(&self) -> Vec<ProbeSummary> {
        self.sites
            .iter()
            .map(|s| ProbeSummary {
                module: s.target_path.clone(),
                build_id: s.build_id.clone(),
                function: s.site.symbol,
                entry_offset: s.site.entry_offset,
                untracked_free_sizes: (s.site.kind == memwatch_common::cookie::CallKind::Free).then_some(
                    if s.chunk_header {
                        "read from glibc's chunk header"
                    } else {
                        "unknown: this allocator keeps no size before a block"
                    },
                ),
                placement: s.site.placement.clone(),
            })
            .collect()
    }
}

/// A generation that ended, kept until its counters are read one last time.
#[derive(Debug, Clone)]
pub struct Retired {
    pub pid: u32,
    pub generation: u32,
    pub exe_name: String,
    pub slot: u32,
    /// The process is no longer tracked: its slot can be reused once read.
    pub release_slot: bool,
    /// Why tracking ended (an exec within a tracked process: None).
    pub ended: Option<Ended>,
}

/// Tracking of a process that ended, and why.
#[derive(Debug, Clone)]
pub struct Ended {
    pub why: String,
    pub selection: Selection,
}

/// A process memwatch was asked to track but could not.
#[derive(Debug, Clone, Serialize)]
pub struct AttachFailure {
    pub pid: u32,
    pub error: String,
    pub at_unix: f64,
}

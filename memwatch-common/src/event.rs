//! Process lifecycle events sent to the daemon through the `EVENTS` ring
//! buffer, and the settings the daemon hands to the programs.

#[cfg(feature = "user")]
mod user;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A process called exec. For a tracked one `generation` is the old
    /// generation (the new one is `generation + 1`).
    Exec = 1,
    /// The last thread of a tracked process exited.
    Exit = 2,
    /// A tracked process forked a new process (not a thread).
    Fork = 3,
    /// A stack walk by CFI met code in no mapping the daemon told the
    /// kernel about (a library loaded since): read the process's mappings
    /// again. Sent once until the daemon rewrites them.
    CodeMapped = 4,
    /// The kernel's OOM killer chose `tgid` as its victim (global or a
    /// cgroup's limit): sent for every process on the host.
    OomVictim = 5,
    /// systemd-oomd sent SIGKILL to `tgid` (told by the sender's name).
    OomdKill = 6,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u32,
    pub tgid: u32,
    /// The tracked generation before the event; 0 for untracked processes.
    pub generation: u32,
    /// For Fork: the parent's tgid.
    pub parent_tgid: u32,
    pub timestamp_ns: u64,
}

/// Settings in the single-entry `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Nonzero: report every exec on the host (the daemon matches new
    /// processes against its executable globs).
    pub report_all_execs: u32,
    /// Offset of `group_dead` in the sched_process_exit record; 0 when this
    /// kernel lacks it (then a thread-group leader's exit stands for the
    /// process's).
    pub exit_group_dead_offset: u32,
    /// Offset of `clone_flags` in the task_newtask record.
    pub newtask_clone_flags_offset: u32,
    /// Bumped by the daemon before it deletes unused stacks: per-CPU caches
    /// of stored stack ids from an older epoch are dropped.
    pub stacks_epoch: u32,
    /// The daemon's own tgid, whose growth is not recorded.
    pub daemon_tgid: u32,
    /// Offset of `pid` in the oom/mark_victim record.
    pub oom_victim_pid_offset: u32,
    /// Offsets of `sig` and `pid` in the signal/signal_generate record.
    pub signal_sig_offset: u32,
    pub signal_pid_offset: u32,
}

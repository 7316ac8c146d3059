//! Reasons the kernel side loses or skips an event, counted per CPU in the
//! `DROPS` array so that the daemon can export them.

#[cfg(feature = "user")]
mod user;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// An allocation could not be recorded: the live map is full.
    LiveMapFull = 0,
    /// An allocator entry could not be remembered: the thread's call state
    /// could not be created (out of memory).
    CallStateUnavailable = 1,
    /// A tracked process's counter slot lies outside the counters array (a
    /// daemon/eBPF mismatch).
    CountersMapFull = 2,
    /// A new stack could not be stored: the stacks map is full.
    StacksMapFull = 3,
    /// The kernel could not walk the user stack.
    StackCaptureFailed = 4,
    /// A return probe fired with no entry state for its call.
    ReturnWithoutEntry = 5,
    /// An entry state was left behind by a call whose return went unseen.
    StaleCall = 6,
    /// A process event could not be sent: the ring buffer is full.
    EventsFull = 7,
    /// posix_memalign's out-parameter could not be read.
    OutParamUnreadable = 8,
    /// A probe's cookie did not decode (a daemon/eBPF mismatch).
    BadCookie = 9,
    /// An address was allocated again while still recorded: its release
    /// went unseen. The old record is counted as freed and replaced.
    MissedFree = 10,
    /// A growth record could not be stored (the LRU growth map refused it).
    GrowthMapFull = 11,
    /// A syscall tracepoint's record could not be read.
    SyscallRecordUnreadable = 12,
    /// A process tracepoint's field could not be read (exit's group_dead,
    /// fork's clone flags or child pid): the event is not acted on.
    TaskRecordUnreadable = 13,
    /// The last brk of a process could not be remembered: its next growth
    /// by brk goes unmeasured.
    BrkStateFull = 14,
    /// An allocation could not be added to its stack's totals (the
    /// allocation profile): the stack totals map is full.
    StackTotalsFull = 15,
}

impl Drop {
    pub const COUNT: u32 = 16;

    pub const ALL: [Drop; Drop::COUNT as usize] = [
        Drop::LiveMapFull,
        Drop::CallStateUnavailable,
        Drop::CountersMapFull,
        Drop::StacksMapFull,
        Drop::StackCaptureFailed,
        Drop::ReturnWithoutEntry,
        Drop::StaleCall,
        Drop::EventsFull,
        Drop::OutParamUnreadable,
        Drop::BadCookie,
        Drop::MissedFree,
        Drop::GrowthMapFull,
        Drop::SyscallRecordUnreadable,
        Drop::TaskRecordUnreadable,
        Drop::BrkStateFull,
        Drop::StackTotalsFull,
    ];

    /// The `reason` label value.
    pub const fn name(self) -> &'static str {
        match self {
            Drop::LiveMapFull => "live_map_full",
            Drop::CallStateUnavailable => "call_state_unavailable",
            Drop::CountersMapFull => "counters_map_full",
            Drop::StacksMapFull => "stacks_map_full",
            Drop::StackCaptureFailed => "stack_capture_failed",
            Drop::ReturnWithoutEntry => "return_without_entry",
            Drop::StaleCall => "stale_call",
            Drop::EventsFull => "events_full",
            Drop::OutParamUnreadable => "out_param_unreadable",
            Drop::BadCookie => "bad_cookie",
            Drop::MissedFree => "missed_free",
            Drop::GrowthMapFull => "growth_map_full",
            Drop::SyscallRecordUnreadable => "syscall_record_unreadable",
            Drop::TaskRecordUnreadable => "task_record_unreadable",
            Drop::BrkStateFull => "brk_state_full",
            Drop::StackTotalsFull => "stack_totals_full",
        }
    }
}

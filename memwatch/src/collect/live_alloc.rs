//! The record every reader of a scan starts from, below them all.

/// One live allocation as read from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveAlloc {
    pub stack_id: u64,
    pub size: u64,
    pub timestamp_ns: u64,
    pub kind: u8,
    pub family: u8,
}

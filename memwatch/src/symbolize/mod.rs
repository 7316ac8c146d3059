//! Turning captured addresses into frames a person can read.
//!
//! A [`Frame`] is either native code (function, file:line, module) or — once
//! interpreter support lands — an interpreted function (file:line), so that
//! reports need not care where a frame came from. Symbolizers are pluggable
//! behind [`Symbolize`].

pub mod native;
pub mod python;

use memwatch_common::{stack::StackFrames, unwind::EndReason};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Native,
    Python,
    /// A run of the Python interpreter's own C frames, folded (`?frames=python`).
    Folded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub kind: FrameKind,
    /// Function name, demangled; None when no symbol covers the address.
    pub function: Option<String>,
    /// Source file, where debug info exists.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The binary (executable or shared object) the address is in.
    pub module: Option<String>,
    pub build_id: Option<String>,
    /// The return address, as a hex string ("0x…").
    pub address: Option<String>,
    /// True for a function inlined into the frame that follows it.
    pub inlined: bool,
}

impl Frame {
    pub fn unknown(address: u64) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: None,
            file: None,
            line: None,
            module: None,
            build_id: None,
            address: Some(format!("{address:#x}")),
            inlined: false,
        }
    }

    /// `function (file:line)`, as the text report prints it.
    pub fn describe(&self) -> String {
        let mut s = self.function.clone().unwrap_or_else(|| "??".to_string());
        if let Some(file) = &self.file {
            s.push_str(&format!(" ({file}"));
            if let Some(line) = self.line {
                s.push_str(&format!(":{line}"));
            }
            s.push(')');
        }
        if self.inlined {
            s.push_str(" [inlined]");
        }
        s
    }
}

/// A symbolized stack and how it was walked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stack {
    pub frames: Vec<Frame>,
    pub walk: Walk,
}

/// How the kernel walked a stack, and whether it reached the outermost
/// frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// By call-frame information (`"cfi"`) or by frame pointers alone.
    pub method: &'static str,
    pub end: EndReason,
    /// The thread had more Python frames than were kept.
    pub python_truncated: bool,
}

impl Default for Walk {
    fn default() -> Self {
        Walk {
            method: "frame_pointers",
            end: EndReason::Complete,
            python_truncated: false,
        }
    }
}

impl Walk {
    pub fn of(stack: &StackFrames) -> Walk {
        Walk {
            method: if stack.frame_pointers_only() {
                "frame_pointers"
            } else {
                "cfi"
            },
            end: stack.end_reason().unwrap_or(EndReason::Complete),
            python_truncated: stack.python_truncated(),
        }
    }

    /// Why the stack is cut short, if it is.
    pub fn truncation(&self) -> Option<&'static str> {
        if self.end != EndReason::Complete {
            Some(self.end.name())
        } else if self.python_truncated {
            Some("python_depth_limit")
        } else {
            None
        }
    }
}

/// The fields of a stack report that say how it was walked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct WalkReport {
    /// True when the stack stops short of the outermost frame.
    pub truncated: bool,
    /// Why (see `memwatch_stack_walks_total`'s `end` label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncation: Option<&'static str>,
    /// `cfi` or `frame_pointers`.
    pub unwind: &'static str,
}

impl From<Walk> for WalkReport {
    fn from(w: Walk) -> Self {
        WalkReport {
            truncated: w.truncation().is_some(),
            truncation: w.truncation(),
            unwind: w.method,
        }
    }
}

/// Symbolizes the return addresses of one process. Each address yields one
/// or more frames (inlined functions first, the containing function last).
/// Not `Send`: a symbolizer lives on the collector's thread.
pub trait Symbolize {
    fn symbolize(&mut self, pid: u32, addrs: &[u64]) -> Vec<Vec<Frame>>;
    /// Number of cached entries, for the daemon's own metrics.
    fn cached(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_describe_themselves() {
        let mut f = Frame::unknown(0x1234);
        assert_eq!(f.describe(), "??");
        f.function = Some("leak".into());
        f.file = Some("leak.c".into());
        f.line = Some(7);
        assert_eq!(f.describe(), "leak (leak.c:7)");
        f.inlined = true;
        assert_eq!(f.describe(), "leak (leak.c:7) [inlined]");
    }
}

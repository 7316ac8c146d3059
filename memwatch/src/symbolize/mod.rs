//! Turning captured addresses into frames a person can read.
//!
//! A [`Frame`] is either native code (function, file:line, module) or — once
//! interpreter support lands — an interpreted function (file:line), so that
//! reports need not care where a frame came from. Symbolizers are pluggable
//! behind [`Symbolize`].

pub mod native;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Native,
    Python,
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

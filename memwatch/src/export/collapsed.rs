//! Collapsed stacks: `process;outermost;…;innermost bytes`, one line a stack.

use super::{HeapStack, frame_name};

pub fn render(stacks: &[HeapStack]) -> String {
    let mut out = String::new();
    // A stack that holds nothing now (it is in the profile for what it
    // allocated) is no part of this picture.
    for s in stacks.iter().filter(|s| s.bytes > 0) {
        // Semicolons separate frames: keep them out of names.
        let mut line = format!("{} ({})", s.comm, s.pid).replace(';', ":");
        for f in s.frames.iter().rev() {
            line.push(';');
            line.push_str(&frame_name(f).replace(';', ":"));
        }
        if s.frames.is_empty() {
            line.push_str(";[stack not captured]");
        }
        out.push_str(&format!("{line} {}\n", s.bytes));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::leaks::tests::frame;

    pub(crate) fn stacks() -> Vec<HeapStack> {
        vec![
            HeapStack {
                pid: 42,
                comm: "leaky".into(),
                frames: vec![frame("leak_here", 10), frame("main", 20)],
                bytes: 3000,
                allocations: 3,
                allocated_bytes: 9000,
                allocated_objects: 9,
            },
            HeapStack {
                pid: 42,
                comm: "leaky".into(),
                frames: vec![],
                bytes: 64,
                allocations: 1,
                allocated_bytes: 64,
                allocated_objects: 1,
            },
        ]
    }

    #[test]
    fn outermost_first_one_line_per_stack() {
        assert_eq!(
            render(&stacks()),
            "leaky (42);main;leak_here 3000\nleaky (42);[stack not captured] 64\n"
        );
    }
}

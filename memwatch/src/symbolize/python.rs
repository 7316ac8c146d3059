//! Python frames: the code objects and instruction positions the kernel
//! recorded, named from the process's memory (qualified name, file, line),
//! and merged into the native stack the way py-spy's `--native` does —
//! Python frames in place of the evaluation loop's native frames.

use std::{collections::HashMap, sync::Arc};

use memwatch_common::python::{PY_ENTRY, PyFrame};

use super::{Frame, FrameKind};
use crate::python::{
    Runtime,
    code::{Code, Memory, read_code},
    linetable,
};

/// The native function each evaluation call of the interpreter runs in.
pub const EVAL_FRAME: &str = "_PyEval_EvalFrameDefault";

/// Code objects read, per process, bounded.
pub struct PythonSymbolizer {
    codes: HashMap<(u32, u64), Option<Arc<Code>>>,
    capacity: usize,
}

impl PythonSymbolizer {
    pub fn new(capacity: usize) -> Self {
        PythonSymbolizer {
            codes: HashMap::new(),
            capacity,
        }
    }

    /// Forgets a process's code objects (it exited or exec'd: addresses may
    /// be reused).
    pub fn forget(&mut self, pid: u32) {
        self.codes.retain(|&(p, _), _| p != pid);
    }

    /// The frames of `py` (innermost first), each with whether it is the
    /// outermost of its evaluation call.
    pub fn frames(&mut self, pid: u32, rt: &Runtime, py: &[PyFrame]) -> Vec<(Frame, bool)> {
        let mut mem = None;
        py.iter()
            .map(|f| {
                let code = self.code(pid, rt, f.code, &mut mem);
                (frame(rt, code.as_deref(), f), f.instr & PY_ENTRY != 0)
            })
            .collect()
    }

    fn code(&mut self, pid: u32, rt: &Runtime, addr: u64, mem: &mut Option<Option<Memory>>) -> Option<Arc<Code>> {
        if let Some(c) = self.codes.get(&(pid, addr)) {
            return c.clone();
        }
        let mem = mem.get_or_insert_with(|| Memory::open(pid).ok()).as_ref()?;
        let code = read_code(mem, addr, &rt.layout, rt.code_type).ok().map(Arc::new);
        if self.codes.len() >= self.capacity {
            self.codes.clear();
        }
        self.codes.insert((pid, addr), code.clone());
        code
    }
}

/// A Python frame for the report.
fn frame(rt: &Runtime, code: Option<&Code>, f: &PyFrame) -> Frame {
    let Some(code) = code else {
        return Frame {
            kind: FrameKind::Python,
            function: Some("<unknown code>".into()),
            ..Frame::unknown(f.code)
        };
    };
    let instr = f.instr & !PY_ENTRY;
    let index = if rt.minor() <= 10 {
        instr
    } else {
        // An instruction pointer into the code object's bytecode.
        instr.wrapping_sub(f.code).wrapping_sub(rt.layout.code.basicsize) / 2
    };
    Frame {
        kind: FrameKind::Python,
        function: Some(code.name.clone()),
        file: Some(code.file.clone()),
        line: linetable::line_at(&code.line_table, code.first_line, index, rt.minor()),
        module: None,
        build_id: None,
        address: Some(format!("{:#x}", f.code)),
        inlined: false,
    }
}

/// Native frames (innermost first) with the Python frames put in place of
/// the evaluation loop's: each `_PyEval_EvalFrameDefault` frame stands for
/// the Python frames down to the next entry frame. Python frames left over
/// (the native walk was cut short, or the interpreter's symbols are
/// stripped) go where the native stack ends.
pub fn merge(native: Vec<Frame>, python: Vec<(Frame, bool)>) -> Vec<Frame> {
    if python.is_empty() {
        return native;
    }
    // Group the Python frames by evaluation call.
    let mut groups: Vec<Vec<Frame>> = Vec::new();
    let mut current = Vec::new();
    for (f, entry) in python {
        current.push(f);
        if entry {
            groups.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    let mut groups = groups.into_iter();
    let mut out = Vec::with_capacity(native.len() + 16);
    for f in native {
        if f.function.as_deref() == Some(EVAL_FRAME) && !f.inlined {
            match groups.next() {
                Some(g) => out.extend(g),
                None => out.push(f),
            }
        } else {
            out.push(f);
        }
    }
    // Python frames with no evaluation frame to stand in for: before the
    // native frames of the interpreter's start (py-spy does the same).
    let rest: Vec<Frame> = groups.flatten().collect();
    if !rest.is_empty() {
        let at = out
            .iter()
            .position(|f| matches!(f.function.as_deref(), Some("Py_RunMain" | "Py_BytesMain" | "main")))
            .unwrap_or(out.len());
        out.splice(at..at, rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(name: &str) -> Frame {
        Frame {
            function: Some(name.into()),
            ..Frame::unknown(0x1000)
        }
    }

    fn py(name: &str, entry: bool) -> (Frame, bool) {
        (
            Frame {
                kind: FrameKind::Python,
                function: Some(name.into()),
                ..Frame::unknown(0x2000)
            },
            entry,
        )
    }

    fn names(v: &[Frame]) -> Vec<&str> {
        v.iter().map(|f| f.function.as_deref().unwrap()).collect()
    }

    #[test]
    fn python_frames_stand_in_for_their_evaluation_calls() {
        // leaf and handle run in one evaluation call, called from C (json)
        // called from main's evaluation call.
        let n = vec![
            native("PyObject_Malloc"),
            native(EVAL_FRAME),
            native("c_extension"),
            native(EVAL_FRAME),
            native("Py_RunMain"),
            native("main"),
        ];
        let p = vec![
            py("leaf", false),
            py("handle", true),
            py("main", false),
            py("<module>", true),
        ];
        assert_eq!(
            names(&merge(n, p)),
            [
                "PyObject_Malloc",
                "leaf",
                "handle",
                "c_extension",
                "main",
                "<module>",
                "Py_RunMain",
                "main"
            ]
        );
    }

    #[test]
    fn leftover_python_frames_go_before_the_interpreter_starts() {
        // A stripped interpreter: no evaluation frame is named.
        let n = vec![
            native("malloc_caller"),
            native("??"),
            native("Py_BytesMain"),
            native("main"),
        ];
        let p = vec![py("f", true), py("<module>", true)];
        assert_eq!(
            names(&merge(n, p)),
            ["malloc_caller", "??", "f", "<module>", "Py_BytesMain", "main"]
        );
        assert_eq!(names(&merge(vec![native("a")], vec![])), ["a"]);
    }
}

//! Python stacks as Python users read them: each run of the interpreter's
//! own C frames (its eval loop, call machinery, startup) folded into one
//! `… N interpreter frames` marker, C extensions' frames kept
//! (`?frames=python`, the default; `?frames=all` shows every frame).

use crate::symbolize::{Frame, FrameKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Frames {
    /// Interpreter frames folded in stacks that hold Python frames.
    #[default]
    Python,
    All,
}

impl Frames {
    pub fn parse(value: &str) -> Result<Frames, String> {
        match value {
            "python" => Ok(Frames::Python),
            "all" => Ok(Frames::All),
            _ => Err(format!("invalid frames {value:?}: expected python or all")),
        }
    }

    /// `frames` as this setting shows them.
    pub fn apply(self, frames: &mut Vec<Frame>) {
        if self == Frames::Python
            && let Some(folded) = fold(frames)
        {
            *frames = folded;
        }
    }
}

/// Whether `module` is a CPython interpreter: `python3.11`, `python3`,
/// `libpython3.12.so.1.0` (its executable or shared library).
pub fn is_interpreter(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    if name.starts_with("libpython") {
        return true;
    }
    name.strip_prefix("python").is_some_and(|rest| {
        rest.is_empty()
            || rest.starts_with(|c: char| c.is_ascii_digit())
                && rest
                    .chars()
                    .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'd' | 'm' | 'u' | 't'))
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Interpreter,
    /// No module known: a gap inside the interpreter when between its frames.
    Unknown,
    Other,
}

fn class(f: &Frame) -> Class {
    if f.kind != FrameKind::Native {
        return Class::Other;
    }
    match f.module.as_deref() {
        Some(m) if is_interpreter(m) => Class::Interpreter,
        Some(_) => Class::Other,
        None => Class::Unknown,
    }
}

/// `frames` with each run of interpreter frames (unknown frames among them
/// included) replaced by one marker; None when the stack has no Python
/// frame or nothing to fold.
pub fn fold(frames: &[Frame]) -> Option<Vec<Frame>> {
    if !frames.iter().any(|f| f.kind == FrameKind::Python) {
        return None;
    }
    let classes: Vec<Class> = frames.iter().map(class).collect();
    let mut out = Vec::with_capacity(frames.len());
    let mut folded_any = false;
    let mut i = 0;
    while i < frames.len() {
        let mut end = i;
        while end < frames.len() && classes[end] != Class::Other {
            end += 1;
        }
        // Unknown frames at a run's ends stay: they may not be the interpreter's.
        let (mut start, mut stop) = (i, end);
        while start < stop && classes[start] == Class::Unknown {
            start += 1;
        }
        while stop > start && classes[stop - 1] == Class::Unknown {
            stop -= 1;
        }
        if stop > start {
            out.extend_from_slice(&frames[i..start]);
            out.push(marker(&frames[start..stop]));
            out.extend_from_slice(&frames[stop..end]);
            folded_any = true;
        } else {
            out.extend_from_slice(&frames[i..end]);
        }
        if end < frames.len() {
            out.push(frames[end].clone());
        }
        i = end + 1;
    }
    folded_any.then_some(out)
}

fn marker(run: &[Frame]) -> Frame {
    Frame {
        kind: FrameKind::Folded,
        function: Some(match run.len() {
            1 => "… 1 interpreter frame".to_string(),
            n => format!("… {n} interpreter frames"),
        }),
        file: None,
        line: None,
        module: run.iter().find_map(|f| f.module.clone()),
        build_id: None,
        address: None,
        inlined: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(function: &str, module: Option<&str>) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: Some(function.into()),
            file: None,
            line: None,
            module: module.map(Into::into),
            build_id: None,
            address: None,
            inlined: false,
        }
    }

    fn python(function: &str) -> Frame {
        Frame {
            kind: FrameKind::Python,
            file: Some("/srv/app.py".into()),
            line: Some(3),
            ..native(function, None)
        }
    }

    const PY: Option<&str> = Some("/usr/bin/python3.11");

    fn names(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|f| f.function.clone().unwrap()).collect()
    }

    #[test]
    fn interpreter_modules_are_told_by_name() {
        for m in [
            "/usr/bin/python3.11",
            "/usr/bin/python3",
            "python",
            "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0",
            "/usr/bin/python3.13t",
            "/usr/bin/python3.7m",
        ] {
            assert!(is_interpreter(m), "{m}");
        }
        for m in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
            "/usr/bin/python-config",
            "/usr/bin/pythonista",
        ] {
            assert!(!is_interpreter(m), "{m}");
        }
    }

    #[test]
    fn runs_of_interpreter_frames_fold_and_extensions_stay() {
        let frames = vec![
            native("PyObject_Malloc", PY),
            native("_PyObject_New", PY),
            python("grow"),
            native("_PyEval_EvalFrameDefault", PY),
            native("??", None),
            native("PyObject_Vectorcall", PY),
            native("ext_call", Some("/srv/_speedups.cpython-311-x86_64-linux-gnu.so")),
            native("_PyEval_EvalFrameDefault", PY),
            python("main"),
            native("PyEval_EvalCode", PY),
            native("_PyRun_SimpleFileObject", PY),
            native("Py_BytesMain", PY),
            native("__libc_start_main", Some("/usr/lib/x86_64-linux-gnu/libc.so.6")),
        ];
        let folded = fold(&frames).unwrap();
        assert_eq!(
            names(&folded),
            [
                "… 2 interpreter frames",
                "grow",
                "… 3 interpreter frames",
                "ext_call",
                "… 1 interpreter frame",
                "main",
                "… 3 interpreter frames",
                "__libc_start_main",
            ]
        );
        assert_eq!(folded[0].kind, FrameKind::Folded);
        assert_eq!(folded[0].module.as_deref(), PY);
        let mut shown = frames.clone();
        Frames::All.apply(&mut shown);
        assert_eq!(shown, frames);
        Frames::Python.apply(&mut shown);
        assert_eq!(shown, folded);
    }

    #[test]
    fn native_stacks_and_edge_unknowns_are_left_alone() {
        let native_only = vec![native("PyObject_Malloc", PY), native("_PyObject_New", PY)];
        assert_eq!(fold(&native_only), None);
        let frames = vec![
            native("??", None),
            native("PyObject_Malloc", PY),
            native("_PyObject_New", PY),
            native("??", None),
            python("grow"),
        ];
        assert_eq!(
            names(&fold(&frames).unwrap()),
            ["??", "… 2 interpreter frames", "??", "grow"]
        );
        // An unknown frame alone is not taken for the interpreter's.
        assert_eq!(fold(&[native("??", None), python("grow")]), None);
        let one = fold(&[python("a"), native("one", PY), python("b")]).unwrap();
        assert_eq!(names(&one), ["a", "… 1 interpreter frame", "b"]);
        assert_eq!(fold(&[python("a"), native("ext", Some("/srv/ext.so"))]), None);
    }

    #[test]
    fn the_setting_parses() {
        assert_eq!(Frames::parse("python"), Ok(Frames::Python));
        assert_eq!(Frames::parse("all"), Ok(Frames::All));
        assert!(Frames::parse("some").unwrap_err().contains("python or all"));
    }
}

//! The malloc-heavy workload (benches/workload.c): built with and without
//! frame pointers, started paused, run on request.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use crate::{PAIRS_DEFAULT, env_or};

pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Compiles the workload once and copies it under `name`, so that each
/// memwatch daemon (selecting by executable name) sees only its own runs.
pub fn workload_binary(name: &str) -> PathBuf {
    workload_build(name, "-fno-omit-frame-pointer")
}

/// The workload built without frame pointers, under `name`.
pub fn workload_binary_nofp(name: &str) -> PathBuf {
    workload_build(name, "-fomit-frame-pointer")
}

pub fn workload_build(name: &str, fp: &str) -> PathBuf {
    let built = tmp().join(format!("mwbench-workload{fp}"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/workload.c");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&built) < modified(&src) {
        let ok = Command::new("cc")
            .args(["-O2", "-g", fp, "-fno-builtin", "-o"])
            .arg(&built)
            .arg(&src)
            .status()
            .expect("cc")
            .success();
        assert!(ok, "compiling {}", src.display());
    }
    let copy = tmp().join(name);
    // A hard link: never a file open for writing when it is executed.
    let _ = std::fs::remove_file(&copy);
    std::fs::hard_link(&built, &copy).unwrap();
    copy
}

pub struct Workload {
    pub child: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Workload {
    pub fn start(binary: &Path) -> Workload {
        Self::start_with(binary, env_or("MWBENCH_PAIRS", PAIRS_DEFAULT), 0)
    }

    /// `hold` > 0: each block is freed `hold` pairs after it was allocated.
    pub fn start_with(binary: &Path, pairs: u64, hold: u64) -> Workload {
        Self::start_deep(binary, pairs, hold, 0)
    }

    /// `depth` > 0: every allocation made that many distinct functions deep.
    pub fn start_deep(binary: &Path, pairs: u64, hold: u64, depth: u64) -> Workload {
        let mut child = Command::new(binary)
            .args([pairs.to_string(), hold.to_string(), depth.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("workload");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "{line}");
        let pid = child.id();
        Workload {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Runs the pairs; returns ns per pair.
    pub fn go(&mut self) -> f64 {
        writeln!(self.stdin, "go").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let mut it = line.split_whitespace().map(|v| v.parse::<f64>().unwrap());
        let (pairs, ns) = (it.next().unwrap(), it.next().unwrap());
        ns / pairs
    }

    pub fn finish(mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }
}

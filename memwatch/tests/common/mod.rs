//! Harness for the privileged integration tests: the C fixture, the daemon
//! as a child process, and a small HTTP client.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub const IGNORE_REASON: &str = "needs root and eBPF; run with `cargo xtask test`";

/// What fixtures/leaker.c leaks: (function, bytes a block) ...
pub const LEAKS: [(&str, u64); 4] = [
    ("leak_with_malloc", 4000),
    ("leak_with_calloc", 1000),
    ("leak_with_realloc", 3000),
    ("leak_with_memalign", 2000),
];
/// ... and how many blocks of each kind: 2 threads × 50.
pub const LEAKS_PER_KIND: u64 = 100;

pub fn require_root() {
    // SAFETY: plain syscall.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root (`cargo xtask test`)"
    );
}

/// A fixture under another file name (for selection by executable).
///
/// A hard link, never a copy: a file this process opened for writing could
/// be inherited by another test thread's fork, and exec'ing it while that
/// child holds it fails with ETXTBSY.
pub fn fixture_copy(fixture: &str, name: &str) -> PathBuf {
    fixture_copy_as(fixture, Build::FramePointers, name)
}

/// [`fixture_copy`] of the fixture in `build`.
pub fn fixture_copy_as(fixture: &str, build: Build, name: &str) -> PathBuf {
    binary_as(&fixture_binary_as(fixture, build), name)
}

/// `binary` under the file name `name` (a hard link, as [`fixture_copy`]).
pub fn binary_as(binary: &std::path::Path, name: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let copy = dir.join(name);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::hard_link(binary, &tmp).unwrap();
    // Renamed over: the name may be running already.
    std::fs::rename(&tmp, &copy).unwrap();
    copy
}

/// How a fixture is compiled: with frame pointers (what the frame-pointer
/// walk relies on) or without (most distribution builds: memwatch walks
/// them by call-frame information).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    FramePointers,
    NoFramePointers,
}

impl Build {
    /// The fixture's file name in this build.
    pub fn name(self, fixture: &str) -> String {
        match self {
            Build::FramePointers => fixture.to_string(),
            Build::NoFramePointers => format!("{fixture}-nofp"),
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Build::FramePointers => "-fno-omit-frame-pointer",
            Build::NoFramePointers => "-fomit-frame-pointer",
        }
    }
}

/// Compiles a C fixture once per test binary, with frame pointers and debug
/// info.
pub fn fixture_binary(name: &str) -> PathBuf {
    fixture_binary_as(name, Build::FramePointers)
}

/// Compiles a C fixture once per test binary and build, -O1 with debug info.
pub fn fixture_binary_as(name: &str, build: Build) -> PathBuf {
    fixture_binary_into(name, build, &build.name(name), &[])
}

/// [`fixture_binary_as`] into the file `out`, with `extra` flags (for the
/// linker, say).
pub fn fixture_binary_into(name: &str, build: Build, out: &str, extra: &[&str]) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.c"));
    let mut flags = vec!["-O1", "-g", build.flag(), "-fno-inline", "-fno-builtin", "-pthread"];
    flags.extend_from_slice(extra);
    compile(out, &[src], &flags)
}

/// Compiles `sources` into `out` (in the tests' temporary directory) with
/// `flags`, once per test binary; returns its path. The compiler writes the
/// file: no test thread ever holds it open for writing (ETXTBSY).
pub fn compile(out: &str, sources: &[PathBuf], flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(out);
    if !built.iter().any(|b| b == out) {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        // Libraries after the sources that need them.
        let (libs, other): (Vec<&str>, Vec<&str>) = flags.iter().partition(|f| f.starts_with("-l"));
        let cpp = sources.iter().any(|s| s.extension().is_some_and(|e| e == "cpp"));
        let status = Command::new(if cpp { "c++" } else { "cc" })
            .args(&other)
            .arg("-I")
            .arg(&fixtures)
            .arg("-o")
            .arg(&path)
            .args(sources)
            .args(libs)
            .status()
            .expect("running cc");
        assert!(status.success(), "compiling {out} from {sources:?} with {flags:?}");
        built.push(out.to_string());
    }
    path
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct FixtureCounts {
    pub allocations: u64,
    pub frees: u64,
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
    pub leaked_allocations: u64,
    pub leaked_bytes: u64,
}

/// The leaker fixture, paused until `go`.
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
}

impl Fixture {
    pub fn start(args: &[&str]) -> Fixture {
        Fixture::start_from(&fixture_binary("leaker"), args)
    }

    /// The leaker in `build`.
    pub fn start_as(build: Build, args: &[&str]) -> Fixture {
        Fixture::start_from(&fixture_binary_as("leaker", build), args)
    }

    /// Another fixture with the leaker's protocol (tests/fixtures/NAME.c).
    pub fn start_other(name: &str, args: &[&str]) -> Fixture {
        Fixture::start_from(&fixture_binary(name), args)
    }

    /// Another fixture, in `build`.
    pub fn start_other_as(name: &str, build: Build, args: &[&str]) -> Fixture {
        Fixture::start_from(&fixture_binary_as(name, build), args)
    }

    /// Runs a copy of the fixture under another file name, for tests that
    /// select by executable without catching other tests' fixtures.
    pub fn start_renamed(name: &str, args: &[&str]) -> Fixture {
        Fixture::start_from(&fixture_copy("leaker", name), args)
    }

    /// The leaker in `build`, under another file name.
    pub fn start_renamed_as(build: Build, name: &str, args: &[&str]) -> Fixture {
        Fixture::start_from(&fixture_copy_as("leaker", build, name), args)
    }

    pub fn start_from(binary: &std::path::Path, args: &[&str]) -> Fixture {
        Fixture::start_command(Command::new(binary).args(args))
    }

    /// A fixture started by `command`, which may run it through a wrapper
    /// (chroot, unshare): `pid` is then the wrapper's until the test sets it.
    pub fn start_command(command: &mut Command) -> Fixture {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the fixture");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready "), "fixture said {line:?}");
        let pid = child.id();
        Fixture {
            child,
            stdin,
            stdout,
            pid,
        }
    }

    /// Sends `line` and returns the fixture's one-line answer.
    pub fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.read_line()
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        let _ = writeln!(stdin, "{line}");
        let _ = stdin.flush();
    }

    /// Runs the work; returns the fixture's own counts.
    pub fn go(&mut self) -> FixtureCounts {
        self.send("go");
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("fixture output {line:?}: {e}"))
    }

    /// Starts the work and returns at once (for fixtures that die midway).
    pub fn go_and_forget(&mut self) {
        self.send("go");
    }

    /// Execs the fixture afresh: same pid, new image, paused until `go`.
    pub fn exec(&mut self) {
        self.send("exec");
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            format!("ready {}", self.pid),
            "the new image keeps the pid"
        );
    }

    pub fn exit(mut self) -> ExitStatus {
        self.send("exit");
        self.stdin.take();
        self.child.wait().unwrap()
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the memwatch command line to completion: exit code, stderr, stdout.
pub fn memwatch(args: &[&str]) -> (i32, String, Vec<u8>) {
    let out = Command::new(env!("CARGO_BIN_EXE_memwatch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.stdout,
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Daemon {
    child: Option<Child>,
    pub addr: String,
    pub config: PathBuf,
}

/// A config for fast tests of exact tracking: scans every 200 ms; no
/// host-wide detection, so nothing else on the machine gets escalated.
pub const FAST: &str = "[collect]\ninterval_seconds = 0.2\n[detect]\nenabled = false\n";

/// Fast exact tracking with host-wide detection on (for its metrics), but
/// never escalating: another test's leaking fixture must not get probed.
pub const WATCH_NO_ESCALATION: &str = "[collect]\ninterval_seconds = 0.2\n[escalation]\nenabled = false\n";

impl Daemon {
    /// Starts `memwatch run` with `config` and `args`; waits until /healthz is OK.
    pub fn start(config: &str, args: &[&str]) -> Daemon {
        Daemon::start_as(config, args, &[], &[])
    }

    /// As [`Daemon::start`], run through `wrapper` (e.g. setpriv) with `env`.
    pub fn start_as(config: &str, args: &[&str], wrapper: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon::spawn(config, args, wrapper, env);
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.get("/healthz").0 != 200 {
            d.assert_running();
            assert!(
                Instant::now() < deadline,
                "timed out waiting for memwatch to become healthy"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// Panics if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("memwatch exited while starting: {status}");
        }
    }

    /// Starts `memwatch run` without waiting for it (for a daemon this
    /// harness cannot reach over plain HTTP).
    pub fn spawn(config: &str, args: &[&str], wrapper: &[&str], env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("memwatch-{port}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = match wrapper {
            [] => Command::new(env!("CARGO_BIN_EXE_memwatch")),
            [w, rest @ ..] => {
                let mut c = Command::new(w);
                c.args(rest).arg(env!("CARGO_BIN_EXE_memwatch"));
                c
            }
        };
        std::fs::set_permissions(&config_path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let child = cmd
            .envs(env.iter().copied())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", &addr])
            .args(args)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("starting memwatch");
        Daemon {
            child: Some(child),
            addr,
            config: config_path,
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_with(path, None)
    }

    pub fn get_with(&self, path: &str, accept: Option<&str>) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut req = agent.get(format!("http://{}{path}", self.addr));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        match req.call() {
            Ok(mut resp) => (
                resp.status().as_u16(),
                resp.body_mut().read_to_string().unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    /// GET as bytes (a profile, a picture).
    pub fn get_bytes(&self, path: &str) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        match agent.get(format!("http://{}{path}", self.addr)).call() {
            Ok(mut resp) => (
                resp.status().as_u16(),
                resp.body_mut().read_to_vec().unwrap_or_default(),
            ),
            Err(_) => (0, Vec::new()),
        }
    }

    /// Starts memwatch as `start` does, with `config` given whole.
    pub fn start_with(config: &str) -> Daemon {
        Daemon::start(config, &[])
    }

    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The value of one series in /metrics, e.g. `memwatch_allocations_total{allocator="libc"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a scan that started after now.
    pub fn wait_for_fresh_scan(&self) {
        let t0 = self.metric("memwatch_last_scan_timestamp_seconds").unwrap_or(0.0);
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        self.wait_for("a fresh scan", Duration::from_secs(20), || {
            self.metric("memwatch_last_scan_timestamp_seconds")
                .is_some_and(|t| t > t0 && t > start + 0.05)
        });
    }

    pub fn wait_tracked(&self, pid: u32) {
        self.wait_for(&format!("pid {pid} to be tracked"), Duration::from_secs(30), || {
            self.get(&format!("/leaks?pid={pid}")).0 == 200
        });
    }

    /// Waits until `pid` is tracked no more and listed under `ended`
    /// (exited, untracked, its track's time up); returns that entry.
    pub fn wait_ended(&self, pid: u32) -> serde_json::Value {
        let mut entry = serde_json::Value::Null;
        self.wait_for(&format!("pid {pid}'s tracking to end"), Duration::from_secs(30), || {
            let (status, body) = self.get(&format!("/leaks?pid={pid}"));
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            entry = v["ended"][0].clone();
            status == 200 && v["processes"].as_array().is_some_and(|p| p.is_empty()) && entry["pid"] == pid
        });
        entry
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, then waits for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "memwatch did not stop within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The /probes site of allocator `function` (the first, if several).
pub fn probe_site(d: &Daemon, function: &str) -> serde_json::Value {
    let probes = d.json("/probes");
    probes["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["function"] == function)
        .cloned()
        .unwrap_or_else(|| panic!("{function} is probed: {probes:#}"))
}

/// All stacks of a /leaks process entry whose innermost frame is `function`.
pub fn stacks_at<'a>(process: &'a serde_json::Value, function: &str) -> Vec<&'a serde_json::Value> {
    process["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["frames"].get(0).and_then(|f| f["function"].as_str()) == Some(function))
        .collect()
}

pub fn stack_mentions(stack: &serde_json::Value, function: &str) -> bool {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["function"].as_str() == Some(function))
}

/// Runs `fn $name(build: Build)` as two tests, `$name::with_frame_pointers`
/// and `$name::without_frame_pointers`: with fixtures built both ways.
#[macro_export]
macro_rules! in_both_builds {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[test]
            #[ignore = "needs root and eBPF; run with `cargo xtask test`"]
            fn with_frame_pointers() {
                super::$name(Build::FramePointers)
            }

            #[test]
            #[ignore = "needs root and eBPF; run with `cargo xtask test`"]
            fn without_frame_pointers() {
                super::$name(Build::NoFramePointers)
            }
        }
    };
}

// The Python service fixture (tests/fixtures/service.py).

pub fn service_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/service.py")
}

/// The line of service.py marked `# MARK`.
pub fn service_line(mark: &str) -> u64 {
    let text = std::fs::read_to_string(service_py()).unwrap();
    text.lines()
        .position(|l| l.trim_end().ends_with(&format!("# {mark}")))
        .unwrap_or_else(|| panic!("no line marked {mark}")) as u64
        + 1
}

/// The Python frames of a stack, as (function, line).
pub fn python_frames(stack: &serde_json::Value) -> Vec<(String, u64)> {
    stack["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "python")
        .map(|f| {
            assert!(
                f["file"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(".py") || p.starts_with("<frozen ")),
                "a Python frame names its file: {f}"
            );
            (
                f["function"].as_str().unwrap().to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A self-signed certificate for localhost and 127.0.0.1 (as `openssl req
/// -x509` makes them, marked as a CA) and its key, in `dir`.
pub fn self_signed_cert(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("memwatch.crt"), dir.join("memwatch.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

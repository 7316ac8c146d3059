//! OOM-kill post-mortems: a leaking process in a memory cgroup with a limit
//! (v1's memory controller: these hosts are hybrid) is killed by the
//! kernel's OOM killer, and `/oom` names it, its cgroup and limit, its
//! memory curve, and the stack that held its memory — live allocations when
//! it was tracked, address-space growth stacks when it was not.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

const LIMIT: u64 = 48 << 20;
const BLOCK: u64 = 256 << 10;

/// Samples host-wide every 200 ms (the curve), never escalates.
/// One kill at a time: every daemon sees every OOM kill on the host.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const CONFIG: &str = "[collect]\ninterval_seconds = 0.2\n[detect]\nsample_interval_seconds = 0.2\nwindow_seconds = 5\n[escalation]\nenabled = false\n";

/// A v1 memory cgroup with a limit and no swap, removed when dropped.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(name: &str) -> MemoryCgroup {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/memory/memwatch-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), LIMIT.to_string()).unwrap();
        let _ = std::fs::write(dir.join("memory.swappiness"), "0");
        MemoryCgroup(dir)
    }

    fn path(&self) -> String {
        format!("/{}", self.0.file_name().unwrap().to_string_lossy())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The fixture, started inside `cgroup` (it enters before exec'ing, so
/// that memwatch's first sight of it is already there).
struct Oomer {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    pid: u32,
}

impl Oomer {
    /// `pause`: microseconds between blocks.
    fn start(cgroup: &MemoryCgroup, name: &str, pause: u32) -> Oomer {
        let bin = binary_as(&fixture_binary("oomer"), name);
        Oomer::start_program(cgroup, &bin.to_string_lossy(), &[&pause.to_string()])
    }

    /// `program args` started inside `cgroup` (it enters before exec'ing),
    /// once it says "ready PID".
    fn start_program(cgroup: &MemoryCgroup, program: &str, args: &[&str]) -> Oomer {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
                cgroup.0.display()
            ))
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready "), "{line:?}");
        let pid = child.id();
        Oomer { child, out, pid }
    }

    /// Starts the leak and waits for the kill; returns the bytes it said
    /// it held last.
    fn leak_until_killed(mut self) -> u64 {
        writeln!(self.child.stdin.as_mut().unwrap(), "go").unwrap();
        let mut held = 0;
        let mut line = String::new();
        while self.out.read_line(&mut line).unwrap() > 0 {
            if let Some(n) = line.trim().strip_prefix("held ") {
                held = n.parse().unwrap();
            }
            line.clear();
        }
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
        held
    }
}

fn victim(d: &Daemon, pid: u32) -> serde_json::Value {
    let mut found = serde_json::Value::Null;
    d.wait_for(&format!("pid {pid} in /oom"), Duration::from_secs(20), || {
        found = d
            .json("/oom")
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["pid"] == pid)
            .cloned()
            .unwrap_or_default();
        !found.is_null()
    });
    found
}

/// What every post-mortem says: the cgroup and its limit, and a curve
/// rising to the kill.
fn assert_named(k: &serde_json::Value, cgroup: &MemoryCgroup) {
    assert_eq!(k["constraint"], "cgroup", "{k:#}");
    assert_eq!(k["cgroup"]["cgroup"], cgroup.path(), "{k:#}");
    assert_eq!(k["cgroup"]["version"], "v1", "{k:#}");
    assert_eq!(k["cgroup"]["limit_bytes"], LIMIT, "{k:#}");
    assert!(k["cgroup"]["oom_kills"].as_u64() >= Some(1), "{k:#}");
    let curve = k["curve"].as_array().unwrap();
    assert!(curve.len() >= 3, "{k:#}");
    let (first, last) = (
        curve[0][1].as_u64().unwrap(),
        curve[curve.len() - 1][1].as_u64().unwrap(),
    );
    assert!(last > first + (8 << 20), "the heap rose before the kill: {k:#}");
    assert!(curve[curve.len() - 1][0].as_f64().unwrap() <= k["killed_unix"].as_f64().unwrap());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_tracked_process_killed_by_its_cgroups_limit_leaves_its_leaking_stack() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cgroup = MemoryCgroup::new("tracked");
    let fx = Oomer::start(&cgroup, "oom-tracked", 10_000);
    let pid = fx.pid;
    let d = Daemon::start(CONFIG, &["--pid", &pid.to_string()]);
    d.wait_tracked(pid);
    let held = fx.leak_until_killed();
    assert!(held >= LIMIT / 2, "held {held}");

    let k = victim(&d, pid);
    assert_named(&k, &cgroup);
    assert_eq!(k["tracked"], true, "{k:#}");
    assert_eq!(k["exe"].as_str().unwrap().rsplit('/').next(), Some("oom-tracked"));
    // Every block it held at the kill, at its leak site: its own tally, or
    // one more block when the kill came inside the next one's memset.
    let live = k["live_bytes"].as_u64().unwrap();
    assert!(live == held || live == held + BLOCK, "live {live}, held {held}: {k:#}");
    let top = &k["stacks"][0];
    assert!(stack_mentions(top, "leak_until_killed"), "{top:#}");
    assert_eq!(top["live_bytes"].as_u64(), Some(live), "{k:#}");
    assert_eq!(d.metric("memwatch_oom_kills_total{constraint=\"cgroup\"}"), Some(1.0));
    let (_, text) = d.get("/oom?format=text");
    eprintln!("{text}");
    assert!(
        text.contains(&format!("PID {pid} (oom-tracked) killed")) && text.contains("its cgroup's limit"),
        "{text}"
    );
    assert!(
        text.contains("leak_until_killed") && text.contains(&cgroup.path()),
        "{text}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn an_untracked_process_killed_by_its_cgroups_limit_leaves_its_growth_stack() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cgroup = MemoryCgroup::new("untracked");
    let d = Daemon::start(CONFIG, &[]);
    // Slow enough (5 MiB/s) to become a leak suspect before the kill: a
    // suspect's growth stacks are walked through libc by its unwind tables
    // and named while it runs (an untracked victim's mappings are gone by
    // the time its kill is handled).
    let fx = Oomer::start(&cgroup, "oom-untracked", 50_000);
    let pid = fx.pid;
    d.wait_for("the sampler to see the fixture", Duration::from_secs(10), || {
        d.json("/status")["watch"]["watched_processes"].as_u64() > Some(0)
    });
    std::thread::sleep(Duration::from_millis(500));
    fx.leak_until_killed();

    let k = victim(&d, pid);
    assert_named(&k, &cgroup);
    assert_eq!(k["tracked"], false, "{k:#}");
    assert!(k["suspect"]["rate_bytes_per_second"].as_f64() > Some(1e6), "{k:#}");
    let stacks = k["growth_stacks"].as_array().unwrap();
    let leaking: u64 = stacks
        .iter()
        .filter(|s| stack_mentions(s, "leak_until_killed"))
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    assert!(leaking >= 8 << 20, "{k:#}");
    let total: u64 = stacks.iter().map(|s| s["bytes"].as_u64().unwrap()).sum();
    assert!(
        total <= LIMIT + (8 << 20),
        "no growth beyond what the cgroup allowed: {k:#}"
    );
    assert_eq!(d.metric("memwatch_oom_kills_total{constraint=\"cgroup\"}"), Some(1.0));
}

/// systemd-oomd kills with SIGKILL, and nothing but its name tells its kill
/// from another's: a `kill` run under that name stands in for it here.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_kill_by_systemd_oomd_is_kept_as_an_oom_kill() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fixture::start(&[]);
    let pid = fx.pid;
    let d = Daemon::start(CONFIG, &["--pid", &pid.to_string()]);
    d.wait_tracked(pid);
    fx.go();
    d.wait_for_fresh_scan();
    let oomd = binary_as(std::path::Path::new("/usr/bin/kill"), "systemd-oomd");
    let status = Command::new(&oomd).args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(fx.wait().signal(), Some(libc::SIGKILL));
    let k = victim(&d, pid);
    assert_eq!(k["constraint"], "systemd-oomd", "{k:#}");
    assert_eq!(k["tracked"], true, "{k:#}");
    let stacks = k["stacks"].as_array().unwrap();
    assert!(stacks.iter().any(|s| stack_mentions(s, "leak_with_malloc")), "{k:#}");
    assert_eq!(
        d.metric("memwatch_oom_kills_total{constraint=\"systemd-oomd\"}"),
        Some(1.0)
    );
    // A SIGKILL from anyone else is no OOM kill.
    let mut other = Fixture::start(&[]);
    let other_pid = other.pid;
    let status = Command::new("/usr/bin/kill")
        .args(["-KILL", &other_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    other.wait();
    d.wait_for_fresh_scan();
    assert!(!d.json("/oom").as_array().unwrap().iter().any(|k| k["pid"] == other_pid));
}

/// A Python service that keeps objects until its cgroup's limit kills it:
/// its post-mortem has its last census (taken every second here), naming the
/// type it kept.
#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn a_python_victim_keeps_its_last_census() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cgroup = MemoryCgroup::new("python");
    // 2 MiB a second of Chunk objects: a census or more before the kill.
    let script = "import os, sys, time\n\
        class Chunk:\n    def __init__(self):\n        self.data = bytearray(64 * 1024)\n\
        print('ready', os.getpid(), flush=True)\n\
        sys.stdin.readline()\n\
        kept = []\n\
        while True:\n    kept.append(Chunk())\n    time.sleep(0.03)\n";
    let mut fx = Oomer::start_program(&cgroup, "/usr/bin/python3.11", &["-c", script]);
    let pid = fx.pid;
    let d = Daemon::start(
        &format!("{CONFIG}[python]\ncensus_interval_seconds = 1\n"),
        &["--pid", &pid.to_string()],
    );
    d.wait_tracked(pid);
    writeln!(fx.child.stdin.as_mut().unwrap(), "go").unwrap();
    let status = fx.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let k = victim(&d, pid);
    assert_named(&k, &cgroup);
    let census = &k["python_census"];
    let chunk = census["types"]
        .as_array()
        .unwrap_or_else(|| panic!("no census in {k:#}"))
        .iter()
        .find(|t| t["type"] == "Chunk")
        .unwrap_or_else(|| panic!("Chunk among the largest types: {census:#}"));
    assert!(chunk["count"].as_u64() > Some(10), "{chunk:#}");
    // One cut short while the kernel tore the process down (CI met one)
    // does not replace the whole census before it.
    assert_eq!(census["consistent"], true, "{census:#}");
    assert!(census["taken_unix"].as_f64() <= k["killed_unix"].as_f64(), "{census:#}");
}

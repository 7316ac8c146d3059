//! Host-wide detection with real processes: nothing is named on the command
//! line; memwatch must find the leak, escalate it, name its leaking function,
//! and leave everything else alone.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// A patterns fixture running under its own executable name.
struct Shape {
    child: Child,
    pid: u32,
    started: Instant,
}

impl Shape {
    fn start(name: &str, args: &[&str]) -> Shape {
        let bin = fixture_copy("patterns", name);
        let mut child = Command::new(bin).args(args).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "{line:?}");
        let pid = child.id();
        Shape {
            child,
            pid,
            started: Instant::now(),
        }
    }
}

impl Drop for Shape {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn suspects(d: &Daemon) -> Vec<serde_json::Value> {
    d.json("/leaks?limit=20")["suspects"].as_array().unwrap().clone()
}

fn suspect(list: &[serde_json::Value], pid: u32) -> Option<&serde_json::Value> {
    list.iter().find(|s| s["pid"] == pid)
}

fn flagged(s: &serde_json::Value) -> bool {
    matches!(s["alert"]["state"].as_str(), Some("pending" | "firing"))
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_leak_is_found_escalated_and_named_and_nothing_else_is_flagged() {
    require_root();
    // Default detection settings; a short escalation window, and escalation
    // only for this test's programs.
    let d = Daemon::start_with(
        "[collect]\ninterval_seconds = 1\n[escalation]\nwindow_seconds = 15\ninclude_exe = [\"aon-leak\"]\n",
    );
    let idle: Vec<Shape> = (0..50).map(|_| Shape::start("aon-idle", &["idle"])).collect();
    let plateau = Shape::start("aon-plateau", &["plateau"]);
    let sawtooth = Shape::start("aon-sawtooth", &["sawtooth"]);
    let leak = Shape::start("aon-leak", &["leak", "204800"]);

    let quiet: Vec<u32> = idle.iter().chain([&plateau, &sawtooth]).map(|s| s.pid).collect();
    let mut flagged_after: Option<Duration> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let evidence = loop {
        assert!(
            Instant::now() < deadline,
            "no escalation evidence for the leak within 120 s"
        );
        let list = suspects(&d);
        for pid in &quiet {
            if let Some(s) = suspect(&list, *pid) {
                assert!(!flagged(s), "a non-leaking process was flagged: {s:#}");
            }
        }
        if let Some(s) = suspect(&list, leak.pid) {
            if flagged(s) && flagged_after.is_none() {
                flagged_after = Some(leak.started.elapsed());
            }
            if s["escalation"]["state"] == "done" {
                break s.clone();
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let flagged_after = flagged_after.expect("the leak was flagged");
    eprintln!("leak flagged after {:.0} s", flagged_after.as_secs_f64());
    assert!(
        flagged_after <= Duration::from_secs(60),
        "flagged after {flagged_after:?}"
    );

    // The evidence: the growth estimate, and the leak site from exact tracking.
    assert_eq!(evidence["growth"]["verdict"], "leak");
    let rate = evidence["growth"]["rate_bytes_per_second"].as_f64().unwrap();
    assert!((150_000.0..260_000.0).contains(&rate), "rate {rate}");
    assert!(evidence["growth"]["confidence"].as_f64().unwrap() >= 0.6);
    assert_eq!(evidence["escalation"]["outcome"], "completed");
    let top = &evidence["stacks"][0];
    assert_eq!(top["frames"][0]["function"], "leak_slowly", "{evidence:#}");
    assert!(top["live_bytes"].as_u64().unwrap() > 1_000_000, "{top:#}");
    assert!(top["oldest_age_seconds"].as_f64().unwrap() > 5.0);
    // Exact tracking was attached for the window only.
    d.wait_for("the escalation's probes to go", Duration::from_secs(30), || {
        d.metric("memwatch_probes_attached") == Some(0.0)
    });
    assert_eq!(d.metric("memwatch_escalations_total{outcome=\"completed\"}"), Some(1.0));
    assert!(
        d.metric("memwatch_group_resident_bytes{exe=\"aon-leak\",unit=\"\"}")
            .is_some()
            || {
                // Grouped under the test's own unit when run from a service.
                let (_, m) = d.get("/metrics");
                m.contains("exe=\"aon-leak\"")
            }
    );

    // Nothing quiet was flagged right to the end.
    let list = suspects(&d);
    for pid in &quiet {
        assert!(suspect(&list, *pid).is_none_or(|s| !flagged(s)));
    }
    // The text form leads with the suspect.
    let (_, text) = d.get_with("/leaks", Some("text/plain"));
    assert!(
        text.contains("SUSPECTS") && text.contains(&format!("PID {}", leak.pid)) && text.contains("leak_slowly ("),
        "{text}"
    );
    drop(idle);
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_suspect_that_exits_mid_escalation_leaves_nothing_attached() {
    require_root();
    let d = Daemon::start_with(
        "[collect]\ninterval_seconds = 1\n[escalation]\nwindow_seconds = 120\ninclude_exe = [\"aon-exiter\"]\n",
    );
    // Leaks 400 KB/s, then exits after 50 s: flagged and escalated first.
    let mut exiter = Shape::start("aon-exiter", &["leak", "409600", "50"]);
    let pid = exiter.pid;
    d.wait_for("the escalation to start", Duration::from_secs(60), || {
        suspect(&suspects(&d), pid).is_some_and(|s| s["escalation"]["state"] == "running")
    });
    assert!(d.metric("memwatch_probes_attached").unwrap() > 0.0);
    let status = exiter.child.wait().unwrap();
    assert!(status.success());
    d.wait_for("the escalation to end as exited", Duration::from_secs(30), || {
        suspect(&suspects(&d), pid).is_some_and(|s| s["escalation"]["outcome"] == "exited")
    });
    d.wait_for_fresh_scan();
    d.wait_for_fresh_scan();
    assert_eq!(d.metric("memwatch_probes_attached"), Some(0.0));
    assert_eq!(d.metric("memwatch_tracked_processes"), Some(0.0));
    assert_eq!(d.metric("memwatch_live_map_entries"), Some(0.0));
    assert_eq!(d.metric("memwatch_escalations_running"), Some(0.0));
    assert_eq!(d.metric("memwatch_escalations_total{outcome=\"exited\"}"), Some(1.0));
    let s = suspect(&suspects(&d), pid).cloned().unwrap();
    assert_eq!(s["exited"], true);
}

/// A Python service that grows, found by host-wide detection alone: its
/// escalation walks the interpreter's frames, and its suspect report names
/// the Python line that keeps the memory. Debian's static interpreter runs
/// under a name of its own, so that only it can be escalated (and so that
/// finding CPython does not depend on the executable's name).
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_growing_python_service_is_escalated_and_named_by_its_python_line() {
    require_root();
    let d = Daemon::start_with(
        "[collect]\ninterval_seconds = 1\n[escalation]\nwindow_seconds = 15\ninclude_exe = [\"aon-python\"]\n",
    );
    let python = binary_as(std::path::Path::new("/usr/bin/python3.11"), "aon-python");
    let mut fx = Fixture::start_from(&python, &[service_py().to_str().unwrap()]);
    assert_eq!(fx.ask("grow 204800"), "growing");
    let grow = ("grow_steadily".to_string(), service_line("GROW"));

    let deadline = Instant::now() + Duration::from_secs(120);
    let evidence = loop {
        assert!(
            Instant::now() < deadline,
            "no escalation evidence for the Python service within 120 s: {:#}",
            d.json("/leaks?limit=20")
        );
        if let Some(s) = suspect(&suspects(&d), fx.pid)
            && s["escalation"]["state"] == "done"
        {
            break s.clone();
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(evidence["growth"]["verdict"], "leak", "{evidence:#}");
    assert_eq!(evidence["escalation"]["outcome"], "completed", "{evidence:#}");
    // Arguments are not shown by default (they may carry secrets).
    assert_eq!(
        evidence["cmdline"],
        format!("{} … (1 more argument hidden)", python.display()),
        "{evidence:#}"
    );
    // Exact tracking's largest stack leads with the growing line; the
    // interpreter's own frames are replaced by Python's.
    let top = &evidence["stacks"][0];
    assert_eq!(python_frames(top).first(), Some(&grow), "{evidence:#}");
    assert!(top["live_bytes"].as_u64().unwrap() > 1_000_000, "{top:#}");
    let file = top["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "python")
        .unwrap()["file"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(file, service_py().to_str().unwrap());
    let (_, text) = d.get_with("/leaks", Some("text/plain"));
    assert!(text.contains(&format!("grow_steadily ({file}:{})", grow.1)), "{text}");
    assert!(fx.exit().success());
}

//! A fresh host has no tracefs mounted. These tests give memwatch one, in a
//! mount namespace of their own (so that tests running beside them keep
//! theirs): several daemons starting at once race to mount it, and a host
//! with debugfs only has it under /sys/kernel/debug/tracing.

mod common;

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Runs `script` with `sh` in a new mount namespace, in its own process
/// group, killed with everything it started when dropped.
struct Namespace(Child);

impl Namespace {
    fn run(script: &str) -> Namespace {
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .env("MEMWATCH", env!("CARGO_BIN_EXE_memwatch"))
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("unshare");
        Namespace(child)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn healthy(port: u16) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .call()
        .is_ok_and(|r| r.status() == 200)
}

/// Waits until every daemon answers, or one of them (or the script) is gone.
fn wait_healthy(ns: &mut Namespace, ports: &[u16], log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending: Vec<u16> = ports.to_vec();
    while !pending.is_empty() {
        pending.retain(|&p| !healthy(p));
        if let Some(status) = ns.0.try_wait().unwrap() {
            panic!(
                "the namespace's script ended ({status}) with daemons {pending:?} not healthy:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "daemons {pending:?} not healthy within 30 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(name: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fresh-{name}.toml"));
    std::fs::write(&path, FAST).unwrap();
    path
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn daemons_starting_together_on_a_host_without_tracefs_all_start() {
    require_root();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let log =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fresh-race-{}.log", std::process::id()));
    let cfg = config("race");
    let starts: String = ports
        .iter()
        .map(|p| {
            format!(
                "\"$MEMWATCH\" run --config {} --listen 127.0.0.1:{p} 2>>{} &\n",
                cfg.display(),
                log.display()
            )
        })
        .collect();
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null\n\
         if grep -q ' tracefs ' /proc/self/mounts; then echo 'tracefs still mounted' >>{log}; exit 1; fi\n\
         {starts}wait\n",
        log = log.display()
    );
    let mut ns = Namespace::run(&script);
    wait_healthy(&mut ns, &ports, &log);
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_host_with_tracefs_under_debugfs_only_works() {
    require_root();
    let port = free_port();
    let log =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fresh-debugfs-{}.log", std::process::id()));
    let cfg = config("debugfs");
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null\n\
         grep -q ' /sys/kernel/debug debugfs ' /proc/self/mounts || mount -t debugfs debugfs /sys/kernel/debug\n\
         exec \"$MEMWATCH\" run --config {} --listen 127.0.0.1:{port} 2>>{}\n",
        cfg.display(),
        log.display()
    );
    let mut ns = Namespace::run(&script);
    wait_healthy(&mut ns, &[port], &log);
    // memwatch used the debugfs one, and mounted nothing at /sys/kernel/tracing.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", ns.0.id())).unwrap();
    assert!(mounts.contains(" /sys/kernel/debug/tracing tracefs "), "{mounts}");
    assert!(!mounts.contains(" /sys/kernel/tracing tracefs "), "{mounts}");
}

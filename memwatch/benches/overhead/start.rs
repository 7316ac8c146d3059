//! Issue #21: how fast the daemon starts, and `memwatch check`'s fixed cost.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    daemon::{default_daemon, http_status, stop},
    median, verdict,
};

pub const TARGET_START_SECONDS: f64 = 1.5;
pub const TARGET_CHECK_FIXED_SECONDS: f64 = 0.5;
pub const START_RUNS: usize = 5;

/// Issue #21's start figures: the shipped daemon from exec to /healthz
/// answering 200, and to a process named by --pid being tracked; `memwatch
/// check`'s fixed cost over the command it runs. Runs one after another
/// (medians of five), wall clock.
pub fn start_bench() {
    let mut workload = Command::new("sleep").arg("600").spawn().expect("sleep");
    let (id, pid) = (u64::from(workload.id()), workload.id().to_string());
    let (mut healthy, mut tracked) = (Vec::new(), Vec::new());
    for _ in 0..START_RUNS {
        let t0 = Instant::now();
        let (child, addr) = default_daemon(&["--pid", &pid]);
        let deadline = t0 + Duration::from_secs(60);
        while http_status(&addr, "/healthz") != 200 {
            assert!(Instant::now() < deadline, "memwatch never became healthy");
            std::thread::sleep(Duration::from_millis(5));
        }
        healthy.push(t0.elapsed().as_secs_f64());
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        loop {
            let status: serde_json::Value = agent
                .get(format!("http://{addr}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|body| serde_json::from_str(&body).ok())
                .unwrap_or_default();
            let listed = status["tracked_processes"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["pid"].as_u64() == Some(id)));
            if listed {
                break;
            }
            assert!(Instant::now() < deadline, "the --pid process was never tracked");
            std::thread::sleep(Duration::from_millis(5));
        }
        tracked.push(t0.elapsed().as_secs_f64());
        stop(child);
    }
    let _ = workload.kill();
    let _ = workload.wait();

    let time = |cmd: &mut Command| {
        let t0 = Instant::now();
        let out = cmd.output().expect("running a command");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t0.elapsed().as_secs_f64()
    };
    let (mut plain, mut checked) = (Vec::new(), Vec::new());
    for _ in 0..START_RUNS {
        plain.push(time(Command::new("sleep").arg("0.2")));
        checked.push(time(
            Command::new(env!("CARGO_BIN_EXE_memwatch")).args(["check", "--", "sleep", "0.2"]),
        ));
    }
    let (healthy, tracked) = (median(&mut healthy), median(&mut tracked));
    let fixed = median(&mut checked) - median(&mut plain);
    println!();
    println!("start, median of {START_RUNS} runs (issue #21):");
    println!(
        "  memwatch run (shipped config) to /healthz 200      {healthy:>6.3} s   target <= {TARGET_START_SECONDS:.1} s   {}",
        verdict(healthy <= TARGET_START_SECONDS)
    );
    println!("  memwatch run --pid to the process tracked          {tracked:>6.3} s");
    println!(
        "  memwatch check -- sleep 0.2, over sleep 0.2         {fixed:>6.3} s   target <= {TARGET_CHECK_FIXED_SECONDS:.1} s   {}",
        verdict(fixed <= TARGET_CHECK_FIXED_SECONDS)
    );
}

//! Issues #12 and #13: a Python handler under memwatch beside tracemalloc
//! and memray, a census's time, and the interpreter walk's eBPF time.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use crate::{PAIRS_DEFAULT, bare::bare_probes, daemon::Daemon, env_or, median, set_bpf_stats, verdict, workload::tmp};

/// Issue #12's figures: a Python web handler (benches/handler.py) untraced,
/// tracked by memwatch with Python frames on the libc path, with per-object
/// tracking, and beside them tracemalloc (25 frames) and memray. Interleaved
/// rounds, medians, ratios to untraced.
pub fn python_bench() {
    let python = "/root/.pyenv/versions/3.11.7/bin/python3.11";
    if !Path::new(python).exists() {
        println!("python: not measured ({python} missing)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/handler.py");
    let requests = env_or("MWBENCH_REQUESTS", 200_000u64);
    // memray, from PyPI, in a venv of its own.
    let venv = tmp().join("mwbench-venv");
    let memray = venv.join("bin/python");
    if !memray.exists() {
        let _ = Command::new(python).args(["-m", "venv"]).arg(&venv).status();
        let _ = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "memray"])
            .status();
    }
    let has_memray = Command::new(&memray)
        .args(["-c", "import memray"])
        .status()
        .is_ok_and(|s| s.success());
    // The kernel's floor under per-object tracking: counting uprobes (no
    // program) at the sites memwatch uses for it, libc's and CPython's.
    let object_sites = {
        let (mut child, mut stdin, _out) = spawn_ready(Command::new(python).arg(&script).arg("1"));
        let pid = child.id().to_string();
        let d = Daemon::start_args(
            &["--pid", &pid],
            true,
            "[detect]\nenabled = false\n[python]\nobjects = true\n",
        );
        d.wait_tracked(child.id());
        let sites = d.sites();
        let _ = writeln!(stdin, "go");
        let _ = writeln!(stdin, "exit");
        let _ = child.wait();
        sites
    };
    let run = |mode: &str| -> f64 {
        let mut cmd = match mode {
            "memray" => {
                let mut c = Command::new(&memray);
                let out = tmp().join(format!("mwbench-memray-{}.bin", std::process::id()));
                let _ = std::fs::remove_file(&out);
                c.args(["-m", "memray", "run", "-f", "-q", "-o"]).arg(out);
                c
            }
            "tracemalloc" => {
                let mut c = Command::new(python);
                c.args(["-X", "tracemalloc=25"]);
                c
            }
            _ => Command::new(python),
        };
        let (mut child, mut stdin, mut out) = spawn_ready(cmd.arg(&script).arg(requests.to_string()));
        let mut line = String::new();
        // A daemon of its own per run, tracking it by pid (memwatch adds
        // pids at startup only), stopped afterwards.
        let pid = child.id().to_string();
        let daemon = match mode {
            "frames" => Some(Daemon::start_args(
                &["--pid", &pid],
                true,
                "[detect]\nenabled = false\n",
            )),
            "objects" => Some(Daemon::start_args(
                &["--pid", &pid],
                true,
                "[detect]\nenabled = false\n[python]\nobjects = true\n",
            )),
            _ => None,
        };
        if let Some(d) = &daemon {
            d.wait_tracked(child.id());
        }
        let bare = (mode == "bare").then(|| bare_probes(child.id(), &object_sites));
        writeln!(stdin, "go").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        let mut it = line.split_whitespace().map(|v| v.parse::<f64>().unwrap());
        let (n, ns) = (it.next().unwrap(), it.next().unwrap());
        let _ = writeln!(stdin, "exit");
        let _ = child.wait();
        drop(daemon);
        drop(bare);
        ns / n
    };
    let mut modes = vec!["untraced", "frames", "objects", "tracemalloc", "bare"];
    if has_memray {
        modes.push("memray");
    }
    let mut results: Vec<(&str, Vec<f64>)> = modes.iter().map(|m| (*m, Vec::new())).collect();
    for round in 0..3 {
        for (m, v) in results.iter_mut() {
            let ns = run(m);
            eprintln!("  python round {} {m:<12} {:>9.0} ns/request", round + 1, ns);
            v.push(ns);
        }
    }
    let med: Vec<(&str, f64)> = results.iter_mut().map(|(m, v)| (*m, median(v))).collect();
    let untraced = med[0].1;
    println!();
    println!(
        "Python (issue #12): pyenv 3.11 (shared libpython), {requests} requests of a web handler (dict → json.dumps, one in ten kept)"
    );
    for (m, ns) in &med {
        let label = match *m {
            "untraced" => "untraced",
            "frames" => "memwatch, Python frames on the libc path",
            "objects" => "memwatch, per-object ([python] objects = true)",
            "tracemalloc" => "python -X tracemalloc=25",
            "bare" => "bare counting uprobes at per-object sites",
            _ => "memray run",
        };
        println!("  {label:<48} {ns:>9.0} ns/request {:>7.2}x", ns / untraced);
    }
    let frames = med[1].1 / untraced;
    println!(
        "  Python frames on the libc path vs untraced      {frames:>6.2}x   target <= 1.10x  {}",
        verdict(frames <= 1.10)
    );
    let objects = med[2].1;
    let tracemalloc = med[3].1;
    println!(
        "  per-object tracking vs tracemalloc at 25 frames {:>6.2}x   target < 1x  {}",
        objects / tracemalloc,
        verdict(objects < tracemalloc)
    );
    let bare = med[4].1;
    println!(
        "  per-object tracking vs bare uprobes at its sites {:>6.2}x   (the kernel's traps are the rest)",
        objects / bare
    );
    let sites: Vec<String> = object_sites
        .iter()
        .filter(|s| s.module.contains("python"))
        .map(|s| {
            format!(
                "{} {}",
                s.function,
                if s.emulated { "emulated" } else { "single-stepped" }
            )
        })
        .collect();
    println!("  CPython sites: {}", sites.join(", "));
    if !has_memray {
        println!("  memray: could not be installed from PyPI here");
    }
    python_walk_time(python);
    census_time(python);
}

/// Issue #13's figure: the daemon's time for a census of a process holding
/// one million objects the collector tracks (the target is never paused).
pub fn census_time(python: &str) {
    let script = "import os, sys\nclass Obj:\n    pass\nkeep = [Obj() for _ in range(1_000_000)]\nprint('ready %d' % os.getpid(), flush=True)\nsys.stdin.readline()\n";
    let (mut child, mut stdin, _out) = spawn_ready(Command::new(python).args(["-c", script]));
    let d = Daemon::start_args(&[], true, "[detect]\nenabled = false\n");
    let mut runs = Vec::new();
    let mut objects = 0;
    for _ in 0..3 {
        let (status, body) = d.get(&format!("/objects?pid={}&limit=5", child.id()));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["consistent"], true, "{v}");
        objects = v["objects"].as_u64().unwrap();
        runs.push(v["duration_seconds"].as_f64().unwrap());
    }
    let _ = writeln!(stdin, "exit");
    let _ = child.wait();
    let t = median(&mut runs);
    println!(
        "Python object census (issue #13): {objects} objects tracked by the collector, {t:.3} s of the daemon's time (median of 3)   target <= 1 s  {}",
        verdict(t <= 1.0)
    );
}

/// Starts a Python workload and reads its "ready" line.
pub fn spawn_ready(cmd: &mut Command) -> (Child, ChildStdin, BufReader<ChildStdout>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "{line:?}");
    (child, stdin, out)
}

/// eBPF time of the walk of the interpreter's frames: alloc_exit's time per
/// hit under 3 and under 32 Python frames (the most kept), same native
/// stack (3.11 calls Python functions without recursing in C).
pub fn python_walk_time(python: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pydepth.py");
    let n = env_or("MWBENCH_PAIRS", PAIRS_DEFAULT).min(200_000);
    let (mut child, mut stdin, mut out) = spawn_ready(Command::new(python).arg(&script));
    let mut line = String::new();
    let stats_before = set_bpf_stats(true);
    let pid = child.id();
    let d = Daemon::start_args(&["--pid", &pid.to_string()], true, "[detect]\nenabled = false\n");
    d.wait_tracked(pid);
    d.wait("the interpreter's frames to be walked", |d| {
        let (_, body) = d.get("/probes");
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
            v["unwind"]
                .as_array()
                .is_some_and(|u| u.iter().any(|p| p["pid"] == pid && p["python"]["frames"] == true))
        })
    });
    let runs = "memwatch_bpf_program_runs_total{program=\"alloc_exit\"}";
    let seconds = "memwatch_bpf_program_run_seconds_total{program=\"alloc_exit\"}";
    let mut per_hit = Vec::new();
    for frames in [3u64, 32] {
        // A first pass warms the per-CPU rule cache and the interpreter.
        let mut v = Vec::new();
        for pass in 0..3 {
            let (r0, s0) = (d.metric(runs), d.metric(seconds));
            writeln!(stdin, "go {frames} {n}").unwrap();
            line.clear();
            out.read_line(&mut line).unwrap();
            d.wait("a scan after the run", |d| d.metric(runs) >= r0 + n as f64 * 0.99);
            std::thread::sleep(Duration::from_millis(500));
            let (r1, s1) = (d.metric(runs), d.metric(seconds));
            if pass > 0 {
                v.push((s1 - s0) * 1e9 / (r1 - r0).max(1.0));
            }
        }
        per_hit.push((frames, median(&mut v)));
    }
    let _ = writeln!(stdin, "exit");
    let _ = child.wait();
    drop(d);
    set_bpf_stats(stats_before == "1");
    println!("eBPF time of the Python frame walk (alloc_exit per hit, kernel.bpf_stats_enabled=1, {n} allocations):");
    for (frames, ns) in &per_hit {
        println!("  {frames:>2} Python frames on the stack   {ns:>8.0} ns/hit");
    }
    let per_frame = (per_hit[1].1 - per_hit[0].1) / 29.0;
    println!(
        "  per Python frame {per_frame:.0} ns; a walk of 32 Python frames {:.0} ns",
        per_frame * 32.0
    );
}

//! Walking stacks without frame pointers: programs' eBPF time, and the
//! unwind data a Python process needs.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    Mode, TARGET_NOFP_NS_PER_HIT, TARGET_NOFP_VS_BARE, TARGET_NS_PER_HIT, daemon::Daemon, verdict, workload::Workload,
};

/// Run counts and times (seconds) of programs, as the daemon exports them.
pub type ProgramTimes = Vec<(f64, f64)>;

/// One run of `binary` (allocating `depth` deep) under `d` while the kernel
/// times programs: their run counts and times before and after.
pub fn stats_run(d: &Daemon, binary: &Path, pairs: u64, depth: u64, programs: &[&str]) -> (ProgramTimes, ProgramTimes) {
    let read = |d: &Daemon| -> ProgramTimes {
        programs
            .iter()
            .map(|p| {
                (
                    d.metric(&format!("memwatch_bpf_program_runs_total{{program=\"{p}\"}}")),
                    d.metric(&format!("memwatch_bpf_program_run_seconds_total{{program=\"{p}\"}}")),
                )
            })
            .collect()
    };
    let mut w = Workload::start_deep(binary, pairs, 0, depth);
    d.wait_tracked(w.pid);
    std::thread::sleep(Duration::from_millis(700));
    let before = read(d);
    let runs_before = d.metric("memwatch_bpf_program_runs_total{program=\"alloc_exit\"}");
    w.go();
    w.finish();
    d.wait("a scan after the stats run", |d| {
        d.metric("memwatch_bpf_program_runs_total{program=\"alloc_exit\"}") >= runs_before + pairs as f64 * 0.99
    });
    std::thread::sleep(Duration::from_millis(700));
    (before, read(d))
}

/// Rows and bytes of unwind data memwatch loads for pyenv's python3.11
/// (libpython3.11.so) with libstdc++ preloaded, beside libc: (per module
/// rows, total rows, processes' mapping entries).
pub fn unwind_data_of_python() -> Option<(Vec<(String, u64)>, u64)> {
    let python = "/root/.pyenv/versions/3.11.7/bin/python3.11";
    let libstdcxx = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
    if !Path::new(python).exists() || !Path::new(libstdcxx).exists() {
        return None;
    }
    let d = Daemon::start(python, true);
    let mut child = Command::new(python)
        .args(["-c", "import time; print('ready', flush=True); time.sleep(60)"])
        .env("LD_PRELOAD", libstdcxx)
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take()?).read_line(&mut line).ok()?;
    d.wait_tracked(child.id());
    let probes: serde_json::Value = serde_json::from_str(&d.get("/probes").1).ok()?;
    let modules: Vec<(String, u64)> = probes["unwind"].as_array()?.iter().find(|p| p["pid"] == child.id())?["modules"]
        .as_array()?
        .iter()
        .map(|m| {
            (
                m["module"].as_str().unwrap_or("?").to_string(),
                m["rows"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let total = modules.iter().map(|(_, r)| r).sum();
    let _ = child.kill();
    let _ = child.wait();
    Some((modules, total))
}

pub fn print_unwinding(
    get: &dyn Fn(Mode) -> f64,
    pairs: u64,
    programs: &[&str],
    fp: (&ProgramTimes, &ProgramTimes),
    deep: &[(u64, f64, (f64, f64))],
    memory: Option<(Vec<(String, u64)>, u64)>,
) {
    println!("stacks without frame pointers (issue #11): workload -O2 -fomit-frame-pointer, {pairs} pairs,");
    println!("each allocation made D distinct functions deep; memwatch walks them by call-frame information");
    println!(
        "{:<8} {:>14} {:>14} {:>20} {:>16}",
        "depth", "ns/pair", "vs untraced", "alloc_exit ns/hit", "rule misses"
    );
    let untraced = get(Mode::NofpUntraced);
    for &(depth, ns, (hits, misses)) in deep {
        let m = match depth {
            8 => Mode::Nofp8,
            16 => Mode::Nofp16,
            _ => Mode::Nofp32,
        };
        println!(
            "{depth:<8} {:>14.1} {:>13.2}x {ns:>20.0} {:>9.0} of {:.1e} ({:.5}%)",
            get(m),
            get(m) / untraced,
            misses,
            hits + misses,
            100.0 * misses / (hits + misses).max(1.0)
        );
    }
    let vs_bare = get(Mode::Nofp16) / get(Mode::BareNofp16);
    println!(
        "  memwatch / bare uprobes at the same sites, depth 16   {vs_bare:>6.2}x   target <= {TARGET_NOFP_VS_BARE:.1}x  {}",
        verdict(vs_bare <= TARGET_NOFP_VS_BARE)
    );
    let d16 = deep.iter().find(|d| d.0 == 16).map_or(0.0, |d| d.1);
    println!(
        "  alloc_exit at depth 16                                {d16:>6.0} ns   target <= {TARGET_NOFP_NS_PER_HIT:.0} ns  {}",
        verdict(d16 <= TARGET_NOFP_NS_PER_HIT)
    );
    println!("  (rule misses: lookups that were not in the per-CPU cache, first-seen call sites included)");
    let i = programs.iter().position(|p| *p == "alloc_exit").unwrap_or(0);
    let fp_ns = (fp.1[i].1 - fp.0[i].1) * 1e9 / (fp.1[i].0 - fp.0[i].0).max(1.0);
    println!(
        "  frame-pointer workload: frame-pointer walk only (unwind off) alloc_exit {fp_ns:.0} ns/hit, {:.1} ns/pair; \
         by CFI (the default) {:.1} ns/pair",
        get(Mode::MemwatchFpWalk),
        get(Mode::MemwatchPlaced)
    );
    match memory {
        Some((modules, total)) => {
            println!(
                "  unwind data for pyenv's python3.11 with libstdc++ preloaded (8-byte rows in the kernel's array):"
            );
            for (m, rows) in &modules {
                if *rows > 0 {
                    println!("    {m:<60} {rows:>7} rows {:>7.0} KiB", *rows as f64 * 8.0 / 1024.0);
                }
            }
            println!(
                "    total {total} rows = {:.0} KiB, plus {} bytes of mappings per process",
                total as f64 * 8.0 / 1024.0,
                size_of::<memwatch_common::unwind::ProcUnwind>()
            );
        }
        None => println!("  unwind data: not measured (pyenv's python3.11 or libstdc++ missing)"),
    }
}

pub fn print_bpf_stats(pairs: u64, programs: &[&str], before: &[(f64, f64)], after: &[(f64, f64)]) {
    println!("BPF program time per hit (kernel.bpf_stats_enabled=1, one run of {pairs} pairs):");
    let mut worst: f64 = 0.0;
    for (i, p) in programs.iter().enumerate() {
        let runs = after[i].0 - before[i].0;
        let ns = (after[i].1 - before[i].1) * 1e9 / runs.max(1.0);
        worst = worst.max(ns);
        println!("  {p:<12} {runs:>10.0} runs {ns:>8.0} ns/hit");
    }
    println!(
        "  worst program {worst:.0} ns/hit (alloc_exit includes the stack capture)   target <= {TARGET_NS_PER_HIT:.0} ns   {}",
        verdict(worst <= TARGET_NS_PER_HIT)
    );
}

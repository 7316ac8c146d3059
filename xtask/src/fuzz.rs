//! `cargo xtask fuzz [--minutes N] [TARGET...]`: runs the cargo-fuzz targets
//! in `fuzz/` (libFuzzer, nightly) over the parsers memwatch runs on
//! untrusted input, each for N minutes, seeded with the regression corpus in
//! `memwatch/tests/corpus/` and, for ELF, with real binaries. Prints runs,
//! speed, coverage and crashes per target; a crash leaves its input in
//! `fuzz/artifacts/TARGET/` (add it to the regression corpus once fixed).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, bail};

use crate::{check, setup, workspace_root};

/// Pinned and installed from its own lockfile, as bpf-linker is.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const TARGETS: [&str; 4] = ["elf", "procfs", "linetable", "placement"];
/// Small real objects to start the ELF target from (the regression corpus
/// adds malformed ones).
const ELF_SEEDS: [&str; 3] = [
    "/usr/bin/true",
    "/usr/bin/env",
    "/usr/lib/x86_64-linux-gnu/libpthread.so.0",
];
/// Largest input: real ELF seeds are tens of KiB.
const MAX_LEN: &str = "-max_len=131072";

pub fn run(minutes: f64, targets: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION));
    if !installed {
        eprintln!("fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        check(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            &format!("={CARGO_FUZZ_VERSION}"),
        ]))?;
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target {t:?} (targets: {})", TARGETS.join(", "));
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let root = workspace_root();
    let seconds = (minutes * 60.0).round().max(1.0) as u64;
    let mut rows = Vec::new();
    for target in chosen {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        seed(&root.join("memwatch/tests/corpus").join(target), &corpus)?;
        if target == "elf" {
            for s in ELF_SEEDS.iter().map(Path::new).filter(|p| p.exists()) {
                std::fs::copy(
                    s,
                    corpus.join(format!("seed-{}", s.file_name().unwrap().to_string_lossy())),
                )?;
            }
        }
        eprintln!("fuzz: {target} for {seconds} s");
        let started = Instant::now();
        let out = Command::new("cargo")
            .current_dir(root.join("fuzz"))
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-timeout=10",
                "-rss_limit_mb=4096",
            ])
            .arg(MAX_LEN)
            // The parsers need no eBPF object.
            .env("AYA_BUILD_SKIP", "1")
            .output()
            .context("running cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let runs = last_number_after(&log, "Done ").unwrap_or(0);
        // libFuzzer's own seconds ("Done N runs in S second(s)"), not the build's.
        let secs = last_number_after(&log, " runs in ").map_or(started.elapsed().as_secs_f64(), |s| s.max(1) as f64);
        let cov = last_number_after(&log, "cov: ").unwrap_or(0);
        let crashed = !out.status.success();
        if crashed {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        rows.push((target, runs, secs, cov, crashed));
    }
    println!(
        "{:<10} {:>12} {:>10} {:>8} {:>8}",
        "target", "runs", "runs/s", "cov", "result"
    );
    for (t, runs, secs, cov, crashed) in &rows {
        let result = if *crashed { "CRASH" } else { "ok" };
        println!("{t:<10} {runs:>12} {:>10.0} {cov:>8} {result:>8}", *runs as f64 / secs);
    }
    if rows.iter().any(|r| r.4) {
        bail!("a fuzz target crashed or hung: see fuzz/artifacts/");
    }
    Ok(())
}

fn seed(from: &Path, to: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

/// The number after the last `marker` in libFuzzer's log ("Done 123 runs",
/// "cov: 456").
fn last_number_after(log: &str, marker: &str) -> Option<u64> {
    let at = log.rfind(marker)? + marker.len();
    log[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

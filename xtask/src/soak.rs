//! `cargo xtask soak --minutes N`: the release daemon under churn — shells
//! that fork, exec and exit hundreds of short processes a second, tracked by
//! `--exe`, and Python processes that leak for 30 s and exit, found by
//! host-wide detection and escalated — while its own RSS, open files,
//! threads and kernel-map fill are printed every 10 s, with their slope over
//! the second half of the run (after warm-up).

use std::{
    io::{Read, Write},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{cargo, check, setup, workspace_root};

/// Daemon series read from /metrics at each sample.
const SERIES: [(&str, &str); 6] = [
    ("tracked", "memwatch_tracked_processes"),
    ("probes", "memwatch_probes_attached"),
    ("live", "memwatch_live_map_entries"),
    ("stacks", "memwatch_stack_map_entries"),
    ("symbols", "memwatch_symbol_cache_entries"),
    ("unwind", "memwatch_unwind_rows"),
];

pub fn run(minutes: f64) -> anyhow::Result<()> {
    setup::run()?;
    check(cargo().args(["build", "--release", "--package", "memwatch"]))?;
    let dir = workspace_root().join("target/soak");
    std::fs::create_dir_all(&dir)?;
    let link = |from: &str, name: &str| -> anyhow::Result<PathBuf> {
        // The file itself: /bin/sh is a relative symlink.
        let from = std::fs::canonicalize(from).with_context(|| format!("finding {from}"))?;
        let to = dir.join(name);
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
        }
        Ok(to)
    };
    let sh = link("/bin/sh", "mw-soak-sh")?;
    let quick = link("/usr/bin/true", "mw-soak-true")?;
    let brief = link("/usr/bin/sleep", "mw-soak-sleep")?;
    // Not matched by --exe: found by detection and escalated.
    let python = link("/usr/bin/python3.11", "mw-leak-py")?;

    let port = free_port()?;
    let config = dir.join("soak.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nlog = \"warn\"\n\
             [collect]\ninterval_seconds = 1\n\
             [detect]\nsample_interval_seconds = 1\nwindow_seconds = 10\nfiring_after_seconds = 10\nresolve_after_seconds = 10\n\
             [escalation]\nwindow_seconds = 15\ncooldown_seconds = 5\ninclude_exe = [\"mw-leak-*\"]\n"
        ),
    )?;
    let log = dir.join("memwatch.log");
    let mut daemon = Command::new(workspace_root().join("target/release/memwatch"))
        .args(["run", "--config"])
        .arg(&config)
        .args(["--exe", "mw-soak-*"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting memwatch")?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&addr, "/healthz").is_err() {
        if Instant::now() > deadline || daemon.try_wait()?.is_some() {
            bail!("memwatch did not become healthy");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Forks (subshells), execs and exits; leakers one after another.
    let churn = format!(
        "while :; do for i in 1 2 3 4 5 6 7 8; do {q} & ( {b} 0.05 ) & done; wait; done",
        q = quick.display(),
        b = brief.display()
    );
    let leak = format!(
        "while :; do {p} -c 'import time\nk = []\nfor _ in range(300):\n    k.append(bytearray(20000)); time.sleep(0.1)'; done",
        p = python.display()
    );
    let drivers: Vec<Child> = [churn, leak]
        .iter()
        .map(|script| {
            Command::new(&sh)
                .args(["-c", script])
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;

    let pid = daemon.id();
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(minutes * 60.0);
    let mut rows: Vec<[f64; 5]> = Vec::new();
    println!("memwatch pid {} (log: {})", daemon.id(), log.display());
    println!(
        "{:>6} {:>9} {:>9} {:>5} {:>7} {}",
        "min",
        "rss_KiB",
        "anon_KiB",
        "fds",
        "threads",
        SERIES.map(|s| format!("{:>8}", s.0)).join(" ")
    );
    let result = (|| -> anyhow::Result<()> {
        while Instant::now() < end {
            std::thread::sleep(Duration::from_secs(10));
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("memwatch exited")?;
            let field = |name: &str| -> f64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(f64::NAN)
            };
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64;
            let metrics = get(&addr, "/metrics")?;
            let t = started.elapsed().as_secs_f64() / 60.0;
            let row = [t, field("VmRSS:"), field("RssAnon:"), fds, field("Threads:")];
            println!(
                "{:>6.1} {:>9.0} {:>9.0} {:>5.0} {:>7.0} {}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                SERIES.map(|s| format!("{:>8.0}", metric(&metrics, s.1))).join(" ")
            );
            rows.push(row);
        }
        let metrics = get(&addr, "/metrics")?;
        println!(
            "processes exited while being attached {:.0}, attach failures {:.0}, leak alerts fired {:.0}",
            metric(&metrics, "memwatch_exited_before_attach_total"),
            metric(&metrics, "memwatch_attach_failures_total"),
            metric(&metrics, "memwatch_alert_transitions_total{transition=\"fired\"}"),
        );
        let leaks: serde_json::Value = serde_json::from_str(&get(&addr, "/leaks?limit=1")?)?;
        let suspects: Vec<&serde_json::Value> = leaks["suspects"]
            .as_array()
            .map(|a| a.iter().filter(|s| s["comm"] == "mw-leak-py").collect())
            .unwrap_or_default();
        println!(
            "leakers in /leaks: {}, of which named with their leaking stacks: {}",
            suspects.len(),
            suspects
                .iter()
                .filter(|s| s["stacks"].as_array().is_some_and(|a| !a.is_empty()))
                .count()
        );
        println!(
            "escalations: {}",
            ["completed", "over_budget", "exited", "failed"]
                .map(|o| format!(
                    "{o} {:.0}",
                    metric(&metrics, &format!("memwatch_escalations_total{{outcome=\"{o}\"}}"))
                ))
                .join(", ")
        );
        Ok(())
    })();
    for mut d in drivers {
        // The whole group: the shell and what it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", d.id())])
            .status();
        let _ = d.wait();
    }
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = daemon.wait();
    result?;

    let half: Vec<[f64; 5]> = rows.iter().copied().skip(rows.len() / 2).collect();
    if half.len() < 3 {
        bail!("too short a soak to judge: run at least 1 minute");
    }
    println!("slope over the second half (per minute), and change first → last sample:");
    // RSS counts pages of the debug info memwatch maps and of the kernel's
    // mmapped live table, both bounded by their size; anonymous memory is
    // the daemon's own heap.
    for (i, name, unit) in [
        (1, "RSS", "KiB"),
        (2, "anonymous", "KiB"),
        (3, "open files", ""),
        (4, "threads", ""),
    ] {
        let slope = slope(&half, i);
        println!(
            "  {name:<11} {slope:>+9.2} {unit}/min   {:.0} → {:.0} {unit}",
            rows[0][i],
            rows[rows.len() - 1][i]
        );
    }
    Ok(())
}

/// Least-squares slope of column `y` against column 0.
fn slope(rows: &[[f64; 5]], y: usize) -> f64 {
    let n = rows.len() as f64;
    let (mx, my) = (
        rows.iter().map(|r| r[0]).sum::<f64>() / n,
        rows.iter().map(|r| r[y]).sum::<f64>() / n,
    );
    let cov: f64 = rows.iter().map(|r| (r[0] - mx) * (r[y] - my)).sum();
    let var: f64 = rows.iter().map(|r| (r[0] - mx).powi(2)).sum();
    if var > 0.0 { cov / var } else { 0.0 }
}

fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain HTTP/1.0 GET: the body, or an error for anything but 200.
fn get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

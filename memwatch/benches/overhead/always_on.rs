//! Always-on watching's cost to processes memwatch does not track.

use std::{path::Path, time::Duration};

use crate::{
    bare::{BareProbe, PerfEventAttr, perf_event_open},
    daemon::{default_daemon, http_status, stop},
    median, verdict,
    workload::{Workload, workload_binary},
};

/// kmem:rss_stat events per second host-wide, counted by perf for `secs`:
/// what a program on that tracepoint would run for.
pub fn rss_stat_rate(secs: f64) -> Option<f64> {
    let id: u64 = std::fs::read_to_string("/sys/kernel/tracing/events/kmem/rss_stat/id")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut fds = Vec::new();
    for cpu in 0..cpus {
        let attr = PerfEventAttr {
            type_: 2,
            size: size_of::<PerfEventAttr>() as u32,
            config: id,
            ..Default::default()
        };
        fds.push(BareProbe {
            fd: perf_event_open(&attr, -1, cpu as i32).ok()?,
        });
    }
    std::thread::sleep(Duration::from_secs_f64(secs));
    Some(fds.iter().map(BareProbe::count).sum::<u64>() as f64 / secs)
}

/// Always-on memwatch must not slow processes it is not tracking: blocks of
/// runs with no daemon, with a default daemon, and with a daemon tracking a
/// different (paused) process exactly. Daemons run only during their block.
/// The workload untraced and under an always-on daemon. Each daemon phase
/// is bracketed by untraced runs and compared with their mean, so that the
/// VM's drift cancels; runs are 10× longer than the tracked modes' (nothing
/// traps here, and short runs are all timer and scheduling noise).
pub fn always_on(pairs: u64) {
    pub const BLOCKS: usize = 5;
    pub const RUNS: usize = 7;
    let pairs = 10 * pairs;
    let runs = |binary: &Path| -> f64 {
        let mut v: Vec<f64> = (0..RUNS)
            .map(|_| {
                let mut w = Workload::start_with(binary, pairs, 0);
                let ns = w.go();
                w.finish();
                ns
            })
            .collect();
        median(&mut v)
    };
    let plain = workload_binary("mwbench-plain");
    let target_bin = workload_binary("mwbench-target");
    let (mut on, mut beside) = (Vec::new(), Vec::new());
    let mut untraced = vec![runs(&plain)];
    println!();
    for block in 1..=BLOCKS {
        let (daemon, addr) = default_daemon(&[]);
        while http_status(&addr, "/healthz") != 200 {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(3)); // a few samples in
        let under = runs(&plain);
        stop(daemon);
        untraced.push(runs(&plain));
        on.push(under / mean_of_last_two(&untraced));

        let target = Workload::start(&target_bin);
        let (daemon, addr) = default_daemon(&["--pid", &target.pid.to_string()]);
        while http_status(&addr, &format!("/leaks?pid={}", target.pid)) != 200 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let under = runs(&plain);
        stop(daemon);
        target.finish();
        untraced.push(runs(&plain));
        beside.push(under / mean_of_last_two(&untraced));
        println!(
            "  always-on block {block}: untraced {:.1} ns/pair, detection {:.3}x, beside a tracked process {:.3}x",
            untraced[untraced.len() - 1],
            on[on.len() - 1],
            beside[beside.len() - 1]
        );
    }
    println!(
        "always-on ({BLOCKS} blocks of {RUNS} runs of {pairs} pairs; median ratios; untraced median {:.1} ns/pair):",
        median(&mut untraced)
    );
    let r_on = median(&mut on);
    let r_beside = median(&mut beside);
    println!(
        "  host-wide detection, workload not tracked    {r_on:>6.3}x   target <= 1.01x  {}",
        verdict(r_on <= 1.01)
    );
    println!(
        "  another process tracked exactly              {r_beside:>6.3}x   target <= 1.01x  {}",
        verdict(r_beside <= 1.01)
    );
    match rss_stat_rate(2.0) {
        Some(rate) => println!(
            "  kmem:rss_stat on this host now: {rate:.0} events/s (sampled /proc instead: free for watched processes)"
        ),
        None => println!("  kmem:rss_stat could not be counted"),
    }
}

/// The mean of the untraced figures before and after a phase.
pub fn mean_of_last_two(v: &[f64]) -> f64 {
    (v[v.len() - 2] + v[v.len() - 1]) / 2.0
}

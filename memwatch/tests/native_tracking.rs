//! End-to-end tests of exact (uprobe) tracking: real eBPF, a real leaking C
//! program, real HTTP. They need root: `cargo xtask test` runs them.

mod common;

use std::{io::Read, os::unix::fs::FileExt, time::Duration};

use common::*;

fn process(leaks: &serde_json::Value, pid: u32) -> &serde_json::Value {
    leaks["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("process in /leaks")
}

fn counter(d: &Daemon, name: &str) -> u64 {
    d.metric(&format!("{name}{{allocator=\"libc\"}}")).unwrap_or(0.0) as u64
}

fn leaks_and_counters_match_the_fixture_exactly(build: Build) {
    let (d, fx, counts) = track_the_fixture_exactly(FAST, build);
    // The default table holds every leak but a few that share a slot.
    let status = d.json("/status");
    assert!(status["live_table"]["entries"].as_u64().unwrap() >= counts.leaked_allocations * 9 / 10);
    assert!(fx.exit().success());
}

/// A table too small for the fixture's leaks sends the rest to the `LIVE`
/// hash map; the two together must still account exactly.
fn leaks_and_counters_match_exactly_when_the_live_table_overflows(build: Build) {
    let (d, fx, counts) = track_the_fixture_exactly(&format!("{FAST}[maps]\nlive_table_slots = 1024\n"), build);
    let status = d.json("/status");
    let (table, map) = (
        status["live_table"]["entries"].as_u64().unwrap(),
        status["live_map"]["entries"].as_u64().unwrap(),
    );
    assert_eq!(status["live_table"]["capacity"], 1024);
    assert!(table > 0 && map > 0, "both stores in use: table {table}, map {map}");
    assert_eq!(table + map, counts.leaked_allocations);
    assert!(fx.exit().success());
}

/// Blocks freed by other threads than their allocators', with four threads
/// contending for a small live table (and the `LIVE` map behind it): the
/// table's compare-and-swap protocol must lose and double-count nothing.
fn frees_from_other_threads_account_exactly_in_a_contended_table(build: Build) {
    require_root();
    let mut fx = Fixture::start_other_as("handoff", build, &[]);
    let d = Daemon::start(
        &format!("{FAST}[maps]\nlive_table_slots = 1024\n"),
        &["--pid", &fx.pid.to_string()],
    );
    d.wait_tracked(fx.pid);
    d.wait_for_fresh_scan();
    let counts = go_and_check_totals(&d, &mut fx);
    for reason in ["live_map_full", "missed_free", "return_without_entry", "stale_call"] {
        let series = format!("memwatch_kernel_events_lost_total{{reason=\"{reason}\"}}");
        assert_eq!(d.metric(&series), Some(0.0), "{reason}");
    }
    let leaks = d.json(&format!("/leaks?pid={}&limit=100", fx.pid));
    let p = process(&leaks, fx.pid);
    assert_eq!(p["live_bytes"], counts.leaked_bytes);
    assert_eq!(p["live_allocations"], counts.leaked_allocations);
    let stacks = stacks_at(p, "leak_in_handoff");
    assert_eq!(stacks.len(), 1, "{:#}", p["stacks"]);
    assert_eq!(stacks[0]["live_bytes"], counts.leaked_bytes);
    let status = d.json("/status");
    assert_eq!(
        status["live_table"]["entries"].as_u64().unwrap() + status["live_map"]["entries"].as_u64().unwrap(),
        counts.leaked_allocations
    );
    assert!(fx.exit().success());
}

/// Runs the fixture's work; checks that the libc totals on /metrics moved by
/// exactly the fixture's own counts.
fn go_and_check_totals(d: &Daemon, fx: &mut Fixture) -> FixtureCounts {
    let names = [
        "memwatch_allocations_total",
        "memwatch_frees_total",
        "memwatch_allocated_bytes_total",
        "memwatch_freed_bytes_total",
    ];
    let before: Vec<u64> = names.iter().map(|n| counter(d, n)).collect();
    let counts = fx.go();
    d.wait_for_fresh_scan();
    let after: Vec<u64> = names.iter().map(|n| counter(d, n)).collect();
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let expected = [
        counts.allocations,
        counts.frees,
        counts.allocated_bytes,
        counts.freed_bytes,
    ];
    assert_eq!(delta, expected, "metrics deltas vs fixture");
    counts
}

/// Runs the fixture under a daemon with `config` and checks metrics and
/// `/leaks` against the fixture's own counts. The fixture is left running,
/// its work done.
fn track_the_fixture_exactly(config: &str, build: Build) -> (Daemon, Fixture, FixtureCounts) {
    require_root();
    let mut fx = Fixture::start_as(build, &[]);
    let d = Daemon::start(config, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    d.wait_for_fresh_scan();
    let started = std::time::Instant::now();
    let counts = go_and_check_totals(&d, &mut fx);
    assert_eq!(counts.leaked_allocations, LEAKS_PER_KIND * 4);
    for reason in [
        "live_map_full",
        "stack_capture_failed",
        "return_without_entry",
        "stale_call",
        "call_state_unavailable",
        "missed_free",
    ] {
        assert_eq!(
            d.metric(&format!("memwatch_kernel_events_lost_total{{reason=\"{reason}\"}}")),
            Some(0.0),
            "{reason}"
        );
    }
    assert_eq!(counter(&d, "memwatch_live_bytes"), counts.leaked_bytes);

    // /leaks: exactly the leaked bytes, at the leaking functions, nothing churned.
    let leaks = d.json(&format!("/leaks?pid={}&limit=100", fx.pid));
    let p = process(&leaks, fx.pid);
    let name = build.name("leaker");
    assert_eq!(p["comm"], name.as_str());
    assert_eq!(p["live_bytes"], counts.leaked_bytes);
    assert_eq!(p["live_allocations"], counts.leaked_allocations);
    assert_eq!(p["totals"]["allocations"], counts.allocations);
    for (function, size) in LEAKS {
        let stacks = stacks_at(p, function);
        assert_eq!(stacks.len(), 1, "{function}: one stack expected, got {stacks:#?}");
        let s = stacks[0];
        assert_eq!(s["live_bytes"], size * LEAKS_PER_KIND, "{function}");
        assert_eq!(s["live_allocations"], LEAKS_PER_KIND, "{function}");
        // thread_main's frame lies beyond do_work's 1 KiB one: past the
        // window of stack the probe reads at once.
        assert!(
            stack_mentions(s, "do_work") && stack_mentions(s, "thread_main"),
            "{function}: call chain {s:#}"
        );
        let f = &s["frames"][0];
        assert!(f["file"].as_str().unwrap().ends_with("leaker.c"), "{f}");
        assert!(f["line"].as_u64().unwrap() > 0);
        assert!(f["module"].as_str().unwrap().ends_with(&format!("/{name}")), "{f}");
        // Walked whole, to the thread's start.
        assert_eq!(s["truncated"], false, "{function}: {s:#}");
        assert!(stack_mentions(s, "start_thread"), "{function}: {s:#}");
        // Allocation times come from the clock the daemon publishes to the
        // probes every 50 ms: none can predate the run by more than its lag
        // (1 s allows for a loaded machine).
        let age = s["oldest_age_seconds"].as_f64().unwrap();
        assert!(
            (0.0..started.elapsed().as_secs_f64() + 1.0).contains(&age),
            "{function}: oldest allocation {age} s old"
        );
    }
    let calls: Vec<&str> = LEAKS
        .iter()
        .map(|(f, _)| stacks_at(p, f)[0]["call"].as_str().unwrap())
        .collect();
    assert_eq!(calls, ["malloc", "calloc", "realloc", "posix_memalign"]);
    assert_eq!(
        p["stacks"].as_array().unwrap().len(),
        4,
        "only the four leak sites hold memory"
    );
    assert!(
        !p["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| stack_mentions(s, "churn"))
    );

    // The text form says the same.
    let (status, text) = d.get_with(&format!("/leaks?pid={}", fx.pid), Some("text/plain"));
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!("PID {} ({name})", fx.pid))
            && text.contains("leak_with_malloc (")
            && text.contains("leaker.c:"),
        "{text}"
    );

    // ?min_age= far in the past of the leaks drops them all.
    let young = d.json(&format!("/leaks?pid={}&min_age=3600", fx.pid));
    assert_eq!(process(&young, fx.pid)["live_bytes"], 0);
    (d, fx, counts)
}

fn a_process_that_exits_midway_leaves_nothing_behind(build: Build) {
    require_root();
    let mut fx = Fixture::start_as(build, &["die-midway"]);
    let pid = fx.pid;
    let d = Daemon::start(FAST, &["--pid", &pid.to_string()]);
    d.wait_tracked(pid);
    fx.go_and_forget();
    fx.wait();
    // It leaves the tracked processes for `ended`, said to have exited.
    let ended = d.wait_ended(pid);
    assert_eq!(ended["ended"]["why"], "it exited", "{ended:#}");
    d.wait_for_fresh_scan();
    d.wait_for_fresh_scan();
    assert_eq!(d.metric("memwatch_tracked_processes"), Some(0.0));
    assert_eq!(d.metric("memwatch_probes_attached"), Some(0.0));
    assert_eq!(
        d.metric("memwatch_live_map_entries"),
        Some(0.0),
        "live records of the dead process must be swept"
    );
    assert_eq!(d.metric("memwatch_live_table_entries"), Some(0.0), "from the table too");
    assert_eq!(d.metric("memwatch_live_bytes{allocator=\"libc\"}"), Some(0.0));
    // Its counts stay in the totals: counters never go back.
    assert!(counter(&d, "memwatch_allocations_total") > 1000);
    assert_eq!(d.get("/healthz").0, 200);
}

/// The byte at `malloc` in the process's memory, and the one in libc's file.
fn malloc_bytes(pid: u32) -> (u8, u8) {
    let mut cache = memwatch::target::elf::ElfCache::default();
    let wanted = memwatch::target::Wanted {
        place: true,
        ..Default::default()
    };
    let targets = memwatch::target::find_targets(pid, &mut cache, wanted).unwrap();
    let libc = targets.iter().find(|t| t.path.contains("libc.so")).unwrap();
    let site = libc.sites.iter().find(|s| s.symbol == "malloc").unwrap();
    let maps = memwatch::process::procfs::read_maps(pid).unwrap();
    let m = maps
        .iter()
        .find(|m| {
            m.path.as_deref() == Some(libc.path.as_str())
                && m.offset <= site.file_offset()
                && site.file_offset() < m.offset + (m.end - m.start)
        })
        .unwrap();
    let addr = m.start + (site.file_offset() - m.offset);
    let mut live = [0u8];
    std::fs::File::open(format!("/proc/{pid}/mem"))
        .unwrap()
        .read_exact_at(&mut live, addr)
        .unwrap();
    let mut file = Vec::new();
    std::fs::File::open(&libc.open_path)
        .unwrap()
        .read_to_end(&mut file)
        .unwrap();
    (live[0], file[site.file_offset() as usize])
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn shutdown_detaches_every_probe() {
    require_root();
    let mut fx = Fixture::start(&[]);
    let d = Daemon::start(FAST, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    let (live, original) = malloc_bytes(fx.pid);
    assert_eq!(live, 0xcc, "a breakpoint sits at malloc while tracked");
    assert_ne!(original, 0xcc);
    let status = d.stop();
    assert!(status.success(), "memwatch exit status {status:?}");
    let (live, original) = malloc_bytes(fx.pid);
    assert_eq!(live, original, "malloc is restored after shutdown");
    // The process is left intact: its whole workload still runs.
    assert_eq!(fx.go().leaked_allocations, 400);
    assert!(fx.exit().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn bad_requests_and_unknown_pids_get_errors_while_serving_goes_on() {
    require_root();
    // An unknown pid at startup is reported, and memwatch keeps running.
    let d = Daemon::start(FAST, &["--pid", "999999999"]);
    assert_eq!(d.metric("memwatch_attach_failures_total"), Some(1.0));
    for (path, status, needle) in [
        ("/leaks?pid=999999999", 404, "not tracked"),
        ("/leaks?pid=abc", 400, "invalid pid"),
        ("/leaks?min_age=-1", 400, "invalid min_age"),
        ("/leaks?limit=zero", 400, "invalid limit"),
        ("/leaks?format=yaml", 400, "invalid format"),
        ("/leaks?what=1", 400, "unknown parameter"),
        ("/no/such/thing", 404, "no such endpoint"),
    ] {
        let (s, body) = d.get(path);
        assert_eq!(s, status, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
    }
    assert_eq!(d.get("/healthz"), (200, "ok\n".to_string()));
    let leaks = d.json("/leaks");
    assert_eq!(leaks["processes"].as_array().unwrap().len(), 0);
}

fn processes_started_later_are_found_by_executable_glob(build: Build) {
    require_root();
    let glob = format!("globbed-{}*", build.name("l"));
    let d = Daemon::start(FAST, &["--exe", &glob]);
    let mut fx = Fixture::start_renamed_as(build, &format!("globbed-{}-leaker", build.name("l")), &[]);
    d.wait_tracked(fx.pid);
    let counts = fx.go();
    d.wait_for_fresh_scan();
    let leaks = d.json(&format!("/leaks?pid={}", fx.pid));
    let p = process(&leaks, fx.pid);
    assert_eq!(p["selection"]["by"], "exe");
    assert_eq!(p["selection"]["value"], glob.as_str());
    assert_eq!(p["live_bytes"], counts.leaked_bytes);
    assert_eq!(stacks_at(p, "leak_with_malloc")[0]["live_bytes"], 4000 * LEAKS_PER_KIND);
    // Caught as it started, not as a failure retried later.
    assert_eq!(d.metric("memwatch_attach_failures_total"), Some(0.0));
    assert!(fx.exit().success());
}

fn exec_starts_the_process_afresh(build: Build) {
    require_root();
    let mut fx = Fixture::start_as(build, &[]);
    let pid = fx.pid;
    let d = Daemon::start(FAST, &["--pid", &pid.to_string()]);
    d.wait_tracked(pid);
    let first = fx.go();
    d.wait_for_fresh_scan();
    assert_eq!(
        process(&d.json(&format!("/leaks?pid={pid}")), pid)["live_bytes"],
        first.leaked_bytes
    );

    // The new image inherits nothing: the old image's leak stacks go, and
    // counting restarts (the new image's own thread stacks, mapped before it
    // says "ready", are all it holds).
    fx.exec();
    d.wait_for("the old image's records to be swept", Duration::from_secs(30), || {
        let leaks = d.json(&format!("/leaks?pid={pid}&limit=100"));
        let p = process(&leaks, pid);
        p["totals"]["allocations"].as_u64().unwrap() < first.allocations
            && LEAKS.iter().all(|(f, _)| stacks_at(p, f).is_empty())
    });
    d.wait_for_fresh_scan();
    let startup = process(&d.json(&format!("/leaks?pid={pid}")), pid).clone();
    // ...and its own leaks are counted exactly, under the same pid.
    let second = fx.go();
    d.wait_for_fresh_scan();
    let leaks = d.json(&format!("/leaks?pid={pid}&limit=100"));
    let p = process(&leaks, pid);
    let grown = |key: &str| p[key].as_u64().unwrap() - startup[key].as_u64().unwrap();
    assert_eq!(grown("live_bytes"), second.leaked_bytes);
    assert_eq!(grown("live_allocations"), second.leaked_allocations);
    assert_eq!(
        p["totals"]["allocations"].as_u64().unwrap() - startup["totals"]["allocations"].as_u64().unwrap(),
        second.allocations
    );
    let leak = stacks_at(p, "leak_with_malloc")[0];
    assert_eq!(leak["live_bytes"], 4000 * LEAKS_PER_KIND);
    // The new image's mappings were read again: its stacks are whole.
    assert_eq!(leak["truncated"], false, "{leak:#}");
    assert!(stack_mentions(leak, "thread_main"), "{leak:#}");
    // Both images' allocations are in the running totals.
    assert!(counter(&d, "memwatch_allocations_total") >= first.allocations + second.allocations);
    assert!(fx.exit().success());
}

// Each of these runs with its fixtures built with and without frame pointers.
in_both_builds!(leaks_and_counters_match_the_fixture_exactly);
in_both_builds!(leaks_and_counters_match_exactly_when_the_live_table_overflows);
in_both_builds!(frees_from_other_threads_account_exactly_in_a_contended_table);
in_both_builds!(a_process_that_exits_midway_leaves_nothing_behind);
in_both_builds!(processes_started_later_are_found_by_executable_glob);
in_both_builds!(exec_starts_the_process_afresh);

/// Short-lived processes matched by `--exe` (400 of them, 8 at a time) that
/// exit before or while memwatch attaches are races, counted apart: no
/// attach failure, nothing left attached.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn short_lived_processes_matched_by_exe_are_races_not_failures() {
    require_root();
    let d = Daemon::start(FAST, &["--exe", "mw-brief-*"]);
    let quick = binary_as(std::path::Path::new("/usr/bin/true"), "mw-brief-true");
    let brief = binary_as(std::path::Path::new("/usr/bin/sleep"), "mw-brief-sleep");
    for batch in 0..50 {
        let mut children: Vec<std::process::Child> = (0..8)
            .map(|i| {
                if (batch + i) % 2 == 0 {
                    std::process::Command::new(&quick).spawn().unwrap()
                } else {
                    std::process::Command::new(&brief).arg("0.02").spawn().unwrap()
                }
            })
            .collect();
        for c in &mut children {
            assert!(c.wait().unwrap().success());
        }
    }
    d.wait_for("every brief process to be let go", Duration::from_secs(30), || {
        d.metric("memwatch_tracked_processes") == Some(0.0) && d.metric("memwatch_probes_attached") == Some(0.0)
    });
    d.wait_for_fresh_scan();
    let status = d.json("/status");
    assert_eq!(status["attach_failures"], serde_json::json!([]), "{status:#}");
    assert_eq!(d.metric("memwatch_attach_failures_total"), Some(0.0));
    let raced = d.metric("memwatch_exited_before_attach_total").unwrap();
    eprintln!("400 brief processes: {raced} exited while being attached (not failures)");
}

/// A process matching `--exe` that can never be tracked (it has no
/// allocator) is reported once, with the reason, not on every scan.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_process_that_cannot_be_tracked_is_said_once_and_retried_less_often() {
    require_root();
    let bin = compile(
        "nolibc",
        &[std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nolibc.c")],
        &["-static", "-nostdlib", "-O1"],
    );
    let fx = Fixture::start_from(&binary_as(&bin, "mw-nolibc"), &[]);
    // Scans every 0.2 s: 25 of them in the 5 s below.
    let d = Daemon::start(FAST, &["--exe", "mw-nolibc"]);
    std::thread::sleep(Duration::from_secs(5));
    d.wait_for_fresh_scan();
    let failures = d.json("/status")["attach_failures"].as_array().unwrap().clone();
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert_eq!(failures[0]["pid"], fx.pid);
    assert!(
        failures[0]["error"].as_str().unwrap().contains("defining malloc"),
        "{failures:#?}"
    );
    assert_eq!(d.metric("memwatch_attach_failures_total"), Some(1.0));
    drop(fx);
}

/// Per process, allocated - freed - lost = live, in count and in bytes, when
/// the live table, the `LIVE` map and the stacks map all overflow under two
/// threads' churn; and nothing vanishes: what was lost and is still live,
/// plus what is recorded, is what the fixture holds.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn accounting_adds_up_when_every_store_overflows() {
    require_root();
    let mut fx = Fixture::start_other_as("overflow", Build::FramePointers, &[]);
    let tiny = "[maps]\nlive_table_slots = 1024\nlive_allocations = 1024\nstacks = 256\n";
    let d = Daemon::start(&format!("{FAST}{tiny}"), &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    d.wait_for_fresh_scan();
    let pid = fx.pid;
    let totals = |d: &Daemon| {
        let leaks = d.json(&format!("/leaks?pid={pid}"));
        let p = process(&leaks, pid).clone();
        let n = |k: &str| p["totals"][k].as_u64().unwrap() as i64;
        let live = (
            p["live_allocations"].as_i64().unwrap(),
            p["live_bytes"].as_i64().unwrap(),
        );
        let t = (
            n("allocations"),
            n("frees"),
            n("allocated_bytes"),
            n("freed_bytes"),
            n("lost_allocations"),
            n("lost_bytes"),
            n("untracked_frees"),
        );
        // The identity, at every reading.
        assert_eq!(
            t.0 - t.1 - t.4,
            live.0,
            "allocations - frees - lost = live: {:#}",
            p["totals"]
        );
        assert_eq!(
            t.2 - t.3 - t.5,
            live.1,
            "bytes: allocated - freed - lost = live: {:#}",
            p["totals"]
        );
        (t, live)
    };
    let (before, live_before) = totals(&d);
    let counts = fx.go();
    d.wait_for_fresh_scan();
    let (after, live_after) = totals(&d);

    assert_eq!(
        after.0 - before.0,
        counts.allocations as i64,
        "every allocation counted"
    );
    assert_eq!(after.2 - before.2, counts.allocated_bytes as i64);
    // A lost block's free finds no record: it is an untracked free.
    let untracked = after.6 - before.6;
    assert_eq!(
        after.1 - before.1 + untracked,
        counts.frees as i64,
        "every free counted"
    );
    let lost = after.4 - before.4;
    assert!(lost > 0, "the fixture overflows the maps");
    assert_eq!(
        live_after.0 - live_before.0 + lost - untracked,
        counts.leaked_allocations as i64,
        "recorded + lost and still live = what the fixture holds"
    );
    let drop = |reason: &str| {
        d.metric(&format!("memwatch_kernel_events_lost_total{{reason=\"{reason}\"}}"))
            .unwrap_or(0.0)
    };
    assert!(drop("live_map_full") > 0.0 && drop("stacks_map_full") > 0.0);
    for reason in [
        "missed_free",
        "return_without_entry",
        "stale_call",
        "call_state_unavailable",
    ] {
        assert_eq!(drop(reason), 0.0, "{reason}");
    }
    let status = d.json("/status");
    assert!(
        status["live_map"]["entries"].as_u64().unwrap() > 1000,
        "{:#}",
        status["live_map"]
    );
    assert!(status["live_table"]["entries"].as_u64().unwrap() > 512);
    // /metrics totals carry the losses too.
    let lost_bytes = d.metric("memwatch_lost_bytes_total{allocator=\"libc\"}").unwrap();
    assert_eq!(lost_bytes as i64, after.5, "only this process is tracked");
    assert!(fx.exit().success());
}

/// The stack of `process` whose innermost frames include `function`.
fn stack_of<'a>(process: &'a serde_json::Value, function: &str) -> &'a serde_json::Value {
    stacks_at(process, function)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no stack through {function}: {process:#}"))
}

/// The /leaks entry of `pid`.
fn process_in(report: &serde_json::Value, pid: u32) -> &serde_json::Value {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("{pid} in {report:#}"))
}

/// rates.c's leaker and its `mode` tracked together by pid, both past their
/// warm-up, with readings older than a 5 s window.
fn rates_beside_a_leak(mode: &str) -> (Fixture, Fixture, Daemon) {
    let mut leaker = Fixture::start_other("rates", &["leak"]);
    let mut other = Fixture::start_other("rates", &[mode]);
    let d = Daemon::start(
        FAST,
        &["--pid", &leaker.pid.to_string(), "--pid", &other.pid.to_string()],
    );
    d.wait_tracked(leaker.pid);
    d.wait_tracked(other.pid);
    leaker.send("go");
    other.send("go");
    assert_eq!(leaker.read_line(), "steady");
    assert_eq!(other.read_line(), "steady");
    std::thread::sleep(Duration::from_secs(8));
    d.wait_for_fresh_scan();
    (leaker, other, d)
}

#[test]
#[ignore = "needs root; run with `cargo xtask test`"]
fn growth_since_a_moment_is_the_leakers_rate_and_nothing_for_a_plateau() {
    require_root();
    let (leaker, plateau, d) = rates_beside_a_leak("plateau");
    let report = d.json("/leaks?since=5&limit=50");
    let (lp, pp) = (process_in(&report, leaker.pid), process_in(&report, plateau.pid));
    // The leaker grew by its rate over the window actually covered.
    let window = lp["growth"]["window_seconds"].as_f64().unwrap();
    assert!((5.0..=7.6).contains(&window), "{:#}", lp["growth"]);
    let leak = stack_of(lp, "steady_leak");
    let expected = window / 0.05;
    let grown = leak["growth_allocations"].as_i64().unwrap() as f64;
    assert!(
        (grown - expected).abs() <= 3.0,
        "{grown} blocks in {window} s: {leak:#}"
    );
    assert_eq!(
        leak["growth_bytes"].as_i64().unwrap(),
        leak["growth_allocations"].as_i64().unwrap() * 1000
    );
    assert_eq!(lp["stacks"][0]["frames"], leak["frames"], "most grown first");
    assert!(lp["growth"]["growth_bytes"].as_i64().unwrap() >= leak["growth_bytes"].as_i64().unwrap() - 1000);
    // The plateau's kept blocks did not grow; its churn holds a block at most.
    let warm = stack_of(pp, "warm_up");
    assert_eq!(warm["live_allocations"], 400, "{warm:#}");
    assert_eq!(warm["growth_bytes"], 0, "{warm:#}");
    for s in pp["stacks"].as_array().unwrap() {
        assert!(s["growth_bytes"].as_i64().unwrap().abs() <= 1000, "{s:#}");
    }
    // Text as tracemalloc's compare_to prints it; growth-only pictures.
    let (status, text) = d.get(&format!("/leaks?since=5&pid={}&format=text", leaker.pid));
    assert_eq!(status, 200);
    assert!(
        text.contains("growth over the last") && text.contains("size=") && text.contains("count="),
        "{text}"
    );
    let (status, folded) = d.get(&format!("/leaks/collapsed?since=5&pid={}", plateau.pid));
    assert_eq!(status, 200);
    assert!(!folded.contains("warm_up"), "a plateau has no growth to show: {folded}");
    let (status, folded) = d.get(&format!("/leaks/collapsed?since=5&pid={}", leaker.pid));
    assert_eq!(status, 200);
    assert!(folded.contains("steady_leak"), "{folded}");
    let (status, _) = d.get("/leaks/flamegraph.svg?since=5");
    assert_eq!(status, 200);
    let (status, message) = d.get("/leaks?since=5&min_age=1");
    assert_eq!(status, 400, "{message}");
}

/// A cache warmed before memwatch tracks it, then only refilled (one block
/// freed, one of the same size allocated, 200 a second), beside a leaker
/// tracked mid-life: the cache grows by nothing net of what it replaced,
/// and the leak by its rate.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_warm_cache_tracked_mid_life_does_not_grow_and_a_leak_beside_it_does() {
    require_root();
    let (leaker, cache, d) = rates_beside_a_leak("cache");
    let report = d.json("/leaks?since=5&limit=50");
    let (lp, cp) = (process_in(&report, leaker.pid), process_in(&report, cache.pid));
    eprintln!("{}", d.get("/leaks?since=5&limit=2&format=text").1);
    let g = &cp["growth"];
    let window = g["window_seconds"].as_f64().unwrap();
    // Without the untracked frees' sizes, the refills alone would be growth.
    assert!(
        g["growth_bytes"].as_i64().unwrap() as f64 > 150_000.0 * window * 0.5,
        "{g:#}"
    );
    assert!(g["untracked_frees"].as_u64().unwrap() > 0, "{g:#}");
    let net = g["net_growth_bytes"].as_i64().unwrap();
    assert!(
        (net.abs() as f64) <= 1000.0 * window,
        "net growth {net} B in {window} s: {g:#}"
    );
    for s in cp["stacks"].as_array().unwrap() {
        let n = s["net_growth_bytes"].as_i64().unwrap();
        assert!(n as f64 <= 1000.0 * window, "a cache stack reported growing: {s:#}");
    }
    assert!(stack_of(cp, "refill")["replacing_bytes"].as_u64() > Some(0), "{cp:#}");
    // The leak beside it: its rate times the window, within 5 %.
    let lw = lp["growth"]["window_seconds"].as_f64().unwrap();
    let leak = stack_of(lp, "steady_leak");
    let expected = 20_000.0 * lw;
    let got = leak["net_growth_bytes"].as_i64().unwrap() as f64;
    assert!(
        (got - expected).abs() <= 0.05 * expected,
        "{got} vs {expected}: {leak:#}"
    );
    assert_eq!(leak["replacing_bytes"], 0);
    // The leaker is listed first: processes rank by net growth.
    assert_eq!(report["processes"][0]["pid"], leaker.pid);
    let free = probe_site(&d, "free");
    assert_eq!(
        free["untracked_free_sizes"], "read from glibc's chunk header",
        "{free:#}"
    );
}

//! Stacks of code built without frame pointers, walked by call-frame
//! information: real processes, real eBPF, and an oracle in each fixture —
//! glibc's backtrace() (libgcc's DWARF unwinder) at the leak site — whose
//! return addresses memwatch's frames must equal exactly.

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;

/// The deep fixture's leaks: 200 blocks of 1500 bytes (tests/fixtures/deep.c).
const DEEP_LEAKS: u64 = 200;
const DEEP_LEAK_SIZE: u64 = 1500;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const NO_FP: [&str; 4] = ["-O2", "-g", "-fomit-frame-pointer", "-pthread"];

/// How deep.c reaches deep_leak.
#[derive(Clone, Copy, Debug)]
enum Variant {
    /// In the executable, position-independent (Debian's default).
    Pie,
    /// In a non-PIE executable (fixed addresses).
    NoPie,
    /// In a shared library the executable links.
    SharedLibrary,
    /// In a library the executable loads with dlopen after memwatch attached.
    Dlopen,
}

fn library() -> PathBuf {
    let flags: Vec<&str> = NO_FP.iter().copied().chain(["-shared", "-fPIC"]).collect();
    compile("libdeep-nofp.so", &[fixtures().join("deeplib.c")], &flags)
}

/// The deep fixture built for `v`, and its arguments.
fn deep(v: Variant) -> (PathBuf, Vec<String>) {
    let (deep, lib) = (fixtures().join("deep.c"), fixtures().join("deeplib.c"));
    match v {
        Variant::Pie => (compile("deep-pie", &[deep, lib], &NO_FP), vec![]),
        Variant::NoPie => {
            let flags: Vec<&str> = NO_FP.iter().copied().chain(["-no-pie", "-fno-pie"]).collect();
            (compile("deep-nopie", &[deep, lib], &flags), vec![])
        }
        Variant::SharedLibrary => {
            let so = library();
            let dir = so.parent().unwrap().to_str().unwrap().to_string();
            let (l, rpath) = (format!("-L{dir}"), format!("-Wl,-rpath,{dir}"));
            let flags: Vec<&str> = NO_FP
                .iter()
                .copied()
                .chain([l.as_str(), rpath.as_str(), "-ldeep-nofp"])
                .collect();
            (compile("deep-linked", &[deep], &flags), vec![])
        }
        Variant::Dlopen => {
            let flags: Vec<&str> = NO_FP.iter().copied().chain(["-DDLOPEN", "-ldl"]).collect();
            let so = library().to_str().unwrap().to_string();
            (compile("deep-dlopen", &[deep], &flags), vec![so])
        }
    }
}

fn process(leaks: &serde_json::Value, pid: u32) -> serde_json::Value {
    leaks["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .cloned()
        .expect("process in /leaks")
}

/// A stack's distinct return addresses (inlined frames share theirs).
fn addresses(stack: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in stack["frames"].as_array().unwrap() {
        let a = f["address"].as_str().unwrap().to_string();
        if out.last() != Some(&a) {
            out.push(a);
        }
    }
    out
}

fn oracle(line: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    v["oracle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let s = a.as_str().unwrap();
            format!("{:#x}", u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap())
        })
        .collect()
}

/// Runs the deep fixture in `v` under exact tracking and checks its leak
/// stack against the fixture's own backtrace(), and its bytes and counts.
fn deep_stack_matches_the_oracle(v: Variant) {
    require_root();
    let (bin, args) = deep(v);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut fx = Fixture::start_from(&bin, &args);
    let d = Daemon::start(FAST, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    if let Variant::Dlopen = v {
        assert_eq!(fx.ask("load"), "loaded");
        // Read again at the next scan (or at once, when a walk meets it).
        d.wait_for("memwatch to read the loaded library", Duration::from_secs(20), || {
            let probes = d.json("/probes");
            probes["unwind"].as_array().unwrap().iter().any(|p| {
                p["pid"] == fx.pid
                    && p["modules"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|m| m["module"].as_str().unwrap().ends_with("libdeep-nofp.so") && m["unwind"] == "cfi")
            })
        });
    }
    d.wait_for_fresh_scan();
    let counts = fx.go();
    let oracle = oracle(&fx.read_line());
    d.wait_for_fresh_scan();

    let p = process(&d.json(&format!("/leaks?pid={}&limit=50", fx.pid)), fx.pid);
    let stacks = stacks_at(&p, "deep_leak");
    assert_eq!(stacks.len(), 1, "{v:?}: one leak stack expected: {p:#}");
    let s = stacks[0];
    assert_eq!(s["live_allocations"], DEEP_LEAKS, "{v:?}");
    assert_eq!(s["live_bytes"], DEEP_LEAKS * DEEP_LEAK_SIZE, "{v:?}");
    assert_eq!(counts.leaked_bytes, DEEP_LEAKS * DEEP_LEAK_SIZE);
    if !matches!(v, Variant::Dlopen) {
        // (dlopen keeps memory of its own.)
        assert_eq!(p["live_bytes"], counts.leaked_bytes, "{v:?}: nothing else is live");
    }
    assert_eq!(s["unwind"], "cfi", "{v:?}");
    assert_eq!(s["truncated"], false, "{v:?}: {s:#}");
    // Frame 0 is in deep_leak at the malloc call, the oracle's at the
    // backtrace call: the callers above must be the same addresses.
    let got = addresses(s);
    assert!(oracle.len() >= 8, "{v:?}: oracle {oracle:?}");
    assert_eq!(got[1..], oracle[1..], "{v:?}: memwatch vs backtrace()\n{s:#}");
    for f in [
        "level_drap",
        "level_aligned",
        "level_alloca",
        "level_big",
        "do_work",
        "main",
    ] {
        assert!(stack_mentions(s, f), "{v:?}: {f} missing: {s:#}");
    }
    assert!(fx.exit().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn without_frame_pointers_a_pie_leak_stack_matches_backtrace() {
    deep_stack_matches_the_oracle(Variant::Pie);
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn without_frame_pointers_a_non_pie_leak_stack_matches_backtrace() {
    deep_stack_matches_the_oracle(Variant::NoPie);
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn without_frame_pointers_a_shared_library_leak_stack_matches_backtrace() {
    deep_stack_matches_the_oracle(Variant::SharedLibrary);
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn without_frame_pointers_a_dlopened_library_leak_stack_matches_backtrace() {
    deep_stack_matches_the_oracle(Variant::Dlopen);
}

/// A library loaded after memwatch attached, leaking at once: the first walk
/// that meets its code asks the daemon to read the mappings again, and the
/// stacks after that are whole. Every byte is accounted either way.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_library_loaded_mid_run_is_unwound_within_milliseconds() {
    require_root();
    let (bin, args) = deep(Variant::Dlopen);
    let mut fx = Fixture::start_from(&bin, &[&args[0], "slow"]);
    let d = Daemon::start(FAST, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    d.wait_for_fresh_scan();
    assert_eq!(fx.ask("load"), "loaded");
    // One leak a millisecond from the moment the library is there.
    let counts = fx.go();
    fx.read_line();
    d.wait_for_fresh_scan();
    let p = process(&d.json(&format!("/leaks?pid={}&limit=50", fx.pid)), fx.pid);
    let leaks = stacks_at(&p, "deep_leak");
    let bytes: u64 = leaks.iter().map(|s| s["live_bytes"].as_u64().unwrap()).sum();
    assert_eq!(bytes, counts.leaked_bytes, "{p:#}");
    let whole: u64 = leaks
        .iter()
        .filter(|s| s["truncated"] == false && stack_mentions(s, "main"))
        .map(|s| s["live_allocations"].as_u64().unwrap())
        .sum();
    assert!(
        whole >= DEEP_LEAKS / 2,
        "only {whole} of {DEEP_LEAKS} leaks on a whole stack: {p:#}"
    );
    let asked = d
        .metric("memwatch_stack_walks_total{end=\"unknown_mapping\",method=\"cfi\"}")
        .unwrap_or(0.0);
    eprintln!("{whole} of {DEEP_LEAKS} leaks whole; {asked} walks met the library before memwatch read it");
    assert!(fx.exit().success());
}

/// A recursion deeper than the frames kept: the stack says it is cut short
/// and why, and the walk is counted under that reason.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_stack_deeper_than_the_limit_says_it_is_truncated() {
    require_root();
    let bin = compile("recurse-nofp", &[fixtures().join("recurse.c")], &NO_FP);
    let mut fx = Fixture::start_from(&bin, &["100"]);
    let d = Daemon::start(FAST, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    d.wait_for_fresh_scan();
    fx.go();
    d.wait_for_fresh_scan();
    let p = process(&d.json(&format!("/leaks?pid={}", fx.pid)), fx.pid);
    let s = &stacks_at(&p, "recurse")[0];
    assert_eq!(s["truncated"], true, "{s:#}");
    assert_eq!(s["truncation"], "depth_limit", "{s:#}");
    assert_eq!(s["frames"].as_array().unwrap().len(), 64);
    let (_, text) = d.get_with(&format!("/leaks?pid={}", fx.pid), Some("text/plain"));
    assert!(text.contains("… truncated: depth limit"), "{text}");
    let (_, collapsed) = d.get(&format!("/leaks/collapsed?pid={}", fx.pid));
    assert!(collapsed.contains("[truncated: depth_limit];recurse"), "{collapsed}");
    assert!(
        d.metric("memwatch_stack_walks_total{end=\"depth_limit\",method=\"cfi\"}")
            .unwrap()
            >= 1.0
    );
    assert!(fx.exit().success());
}

/// The C++ cache in `build`: every stack through build_entry names it and
/// its callers up to main, whether the allocation went through operator new
/// directly or through std::string or std::vector (libstdc++, no frame
/// pointers).
fn cpp_cache_is_named(build: Build) {
    require_root();
    let (name, fp) = match build {
        Build::FramePointers => ("cache-fp", "-fno-omit-frame-pointer"),
        Build::NoFramePointers => ("cache-nofp", "-fomit-frame-pointer"),
    };
    let bin = compile(name, &[fixtures().join("cache.cpp")], &["-O2", "-g", fp]);
    let mut fx = Fixture::start_from(&bin, &[]);
    let d = Daemon::start(FAST, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    d.wait_for_fresh_scan();
    let line = fx.ask("go");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let (entries, entry_size) = (v["entries"].as_u64().unwrap(), v["entry_size"].as_u64().unwrap());
    d.wait_for_fresh_scan();
    let p = process(&d.json(&format!("/leaks?pid={}&limit=50", fx.pid)), fx.pid);
    let built: Vec<&serde_json::Value> = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| stack_mentions(s, "build_entry(int)"))
        .collect();
    // The entry itself, its key's buffer and its values' buffer.
    let allocations: u64 = built.iter().map(|s| s["live_allocations"].as_u64().unwrap()).sum();
    assert_eq!(allocations, 3 * entries, "{build:?}: {p:#}");
    for s in &built {
        assert_eq!(
            s["frames"][0]["function"], "operator new(unsigned long)",
            "{build:?}: {s:#}"
        );
        for f in ["fill_cache(int)", "handle_request(int)", "main"] {
            assert!(stack_mentions(s, f), "{build:?}: {f} missing: {s:#}");
        }
        assert_eq!(s["truncated"], false, "{build:?}: {s:#}");
    }
    // A stack through both kinds of code: the program's frames, built with
    // frame pointers, walked by them; libstdc++'s and libc's, built
    // without, by their call-frame information.
    let probes = d.json("/probes");
    let modules = probes["unwind"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == fx.pid)
        .map(|p| p["modules"].clone())
        .unwrap_or_else(|| panic!("{build:?}: no unwind entry for the fixture: {probes:#}"));
    let module = |suffix: &str| {
        modules
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["module"].as_str().unwrap().contains(suffix))
            .cloned()
            .unwrap_or_else(|| panic!("{build:?}: {suffix} not listed: {modules:#}"))
    };
    let program = module(name);
    let by_frame_pointers = build == Build::FramePointers;
    assert_eq!(program["keeps_frame_pointers"], by_frame_pointers, "{program:#}");
    assert_eq!(
        program["unwind"],
        if by_frame_pointers { "frame_pointers" } else { "cfi" },
        "{program:#}"
    );
    assert_eq!(module("libstdc++.so.6")["unwind"], "cfi", "{modules:#}");
    let entry = built
        .iter()
        .find(|s| s["frames"][1]["function"] == "build_entry(int)")
        .unwrap_or_else(|| panic!("{build:?}: no stack with build_entry right above operator new: {built:#?}"));
    assert_eq!(entry["live_bytes"], entries * entry_size);
    assert!(fx.exit().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn cpp_allocations_through_libstdcxx_name_the_allocating_function_with_frame_pointers() {
    cpp_cache_is_named(Build::FramePointers);
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn cpp_allocations_through_libstdcxx_name_the_allocating_function_without_frame_pointers() {
    cpp_cache_is_named(Build::NoFramePointers);
}

/// Debian's redis-server, which no one here wrote and which is built without
/// frame pointers, tracked while it stores keys: its live memory sits on
/// stacks that reach its event loop and main.
#[test]
#[ignore = "needs root, eBPF and redis-server; run with `cargo xtask test`"]
fn redis_server_memory_is_attributed_to_whole_stacks() {
    require_root();
    let port = free_port();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server; cargo xtask setup does)");
    let cli = |args: &[&str]| {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cli(&["ping"]) != "PONG" {
        assert!(std::time::Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = redis.id();
    let d = Daemon::start(FAST, &["--pid", &pid.to_string()]);
    d.wait_tracked(pid);
    d.wait_for_fresh_scan();
    // Keys stored by clients, through the event loop.
    let out = std::process::Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-n",
            "20000",
            "-r",
            "100000",
            "-q",
        ])
        .output()
        .expect("redis-benchmark");
    assert!(out.status.success());
    d.wait_for_fresh_scan();
    let keys: u64 = cli(&["dbsize"]).parse().unwrap();
    assert!(keys > 10_000, "{keys} keys");
    let p = process(&d.json(&format!("/leaks?pid={pid}&limit=10")), pid);
    let stacks = p["stacks"].as_array().unwrap();
    let top = &stacks[0];
    assert!(
        top["live_allocations"].as_u64().unwrap() >= keys,
        "the top stack holds a block per key at least: {top:#}"
    );
    for s in stacks.iter().take(3) {
        assert_eq!(s["unwind"], "cfi", "{s:#}");
        assert_eq!(s["truncated"], false, "{s:#}");
        for f in ["aeMain", "main"] {
            assert!(stack_mentions(s, f), "{f} missing: {s:#}");
        }
    }
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Host-wide growth attribution walks from the syscall's user registers
/// through Debian's libc (no frame pointers) to the function that called
/// malloc(64 MiB), once the process is a suspect.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn growth_stacks_reach_through_libc_to_the_caller_of_malloc() {
    growth_stacks_are_whole(false);
}

/// The same, with the process tracked exactly: the growth syscall runs
/// inside malloc, whose return address on the stack the pending return
/// probe replaced with its trampoline; the walk finds the original.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn growth_stacks_see_through_a_pending_return_probe() {
    growth_stacks_are_whole(true);
}

fn growth_stacks_are_whole(tracked: bool) {
    require_root();
    let bin = compile("grower-nofp", &[fixtures().join("grower.c")], &NO_FP);
    let fx = Fixture::start_from(&bin, &[]);
    let config = "[collect]\ninterval_seconds = 0.5\n\
                  [detect]\nsample_interval_seconds = 0.5\nwindow_seconds = 5\nfiring_after_seconds = 1\n\
                  [escalation]\nenabled = false\n";
    let pid = fx.pid.to_string();
    let args: Vec<&str> = if tracked { vec!["--pid", &pid] } else { vec![] };
    let d = Daemon::start(config, &args);
    let mut last = serde_json::Value::Null;
    d.wait_for(
        "a whole growth stack naming grow_by_mmap",
        Duration::from_secs(90),
        || {
            let leaks = d.json("/leaks?limit=20");
            let Some(s) = leaks["suspects"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["pid"] == fx.pid))
            else {
                return false;
            };
            last = s["growth_stacks"].clone();
            s["growth_stacks"].as_array().unwrap().iter().any(|g| {
                g["unwind"] == "cfi"
                    && g["truncated"] == false
                    && stack_mentions(g, "grow_by_mmap")
                    && stack_mentions(g, "main")
            })
        },
    );
    let whole = last
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["unwind"] == "cfi" && stack_mentions(g, "grow_by_mmap"))
        .unwrap();
    // Through libc: the syscall's wrapper first, malloc on the way.
    let names: Vec<&str> = whole["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(names[0].contains("mmap"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("libc_malloc")), "{names:?}");
    // Whole mappings of 64 MiB and glibc's header page.
    let (bytes, calls) = (whole["bytes"].as_u64().unwrap(), whole["calls"].as_u64().unwrap());
    assert_eq!(bytes, calls * ((64 << 20) + 4096), "{whole:#}");
    assert_eq!(
        d.metric("memwatch_stack_walks_total{end=\"uprobe_trampoline\",method=\"cfi\"}"),
        Some(0.0)
    );
    if tracked {
        // The trampoline was there to see through: malloc was probed.
        assert!(d.metric("memwatch_allocations_total{allocator=\"libc\"}").unwrap() > 0.0);
    }
    drop(fx);
}

/// memwatch's own binary, linked by lld (Rust's default linker): its text
/// segment starts in the page its read-only segment ends in, a page further
/// on in memory. A second daemon tracking the first walks every stack to
/// the root of its thread (the rules are placed through the right segment).
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn an_lld_linked_binary_is_walked_to_its_roots() {
    require_root();
    let out = std::process::Command::new("readelf")
        .args(["-lW", env!("CARGO_BIN_EXE_memwatch")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The layout this test is about: a LOAD whose vaddr and offset differ by a page.
    let shifted = text.lines().filter(|l| l.trim_start().starts_with("LOAD")).any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .skip(1)
            .take(2)
            .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
            .collect();
        f[1] != f[0]
    });
    assert!(shifted, "memwatch is no longer linked with shifted segments:\n{text}");
    let observed = Daemon::start(FAST, &[]);
    let pid = observed.pid();
    let d = Daemon::start(FAST, &["--pid", &pid.to_string()]);
    d.wait_tracked(pid);
    // Its collector allocates on every scan.
    d.wait_for("stacks of the observed daemon", Duration::from_secs(30), || {
        d.json(&format!("/leaks?pid={pid}&limit=500"))["processes"][0]["stacks"]
            .as_array()
            .is_some_and(|s| s.len() >= 5)
    });
    let leaks = d.json(&format!("/leaks?pid={pid}&limit=500"));
    let stacks = leaks["processes"][0]["stacks"].as_array().unwrap().clone();
    for s in &stacks {
        assert_eq!(s["unwind"], "cfi", "{s:#}");
        assert!(s["truncation"].is_null(), "{s:#}");
        let outermost = s["frames"].as_array().unwrap().last().unwrap()["function"].clone();
        assert!(
            ["clone3", "_start"].iter().any(|f| outermost == *f),
            "a stack ends at its thread's root: {s:#}"
        );
    }
    drop(d);
    drop(observed);
}

/// The verifier's work per program, from /metrics. The unwinder's searches
/// once made the allocator's return program cost 678,332 instructions of
/// the kernel's limit of 1,000,000 and 1.3 s of every start; the budget
/// keeps a regression far from the limit.
#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn every_program_loads_far_below_the_verifiers_limit() {
    require_root();
    let d = Daemon::start(WATCH_NO_ESCALATION, &[]);
    let (_, metrics) = d.get("/metrics");
    let verified: Vec<(&str, u64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("memwatch_bpf_program_verified_instructions{program=\""))
        .filter_map(|l| {
            let (name, rest) = l.split_once("\"}")?;
            Some((name, rest.trim().parse().ok()?))
        })
        .collect();
    for program in ["alloc_enter", "alloc_exit", "free_enter", "sched_process_exec"] {
        assert!(
            verified.iter().any(|(p, _)| *p == program),
            "no verifier figure for {program}: {verified:?}"
        );
    }
    for (program, n) in &verified {
        assert!(*n > 0 && *n < 100_000, "{program}: {n} instructions verified");
    }
    eprintln!("verified instructions: {verified:?}");
}

//! `memwatch check -- CMD`: a leak check of a command at its exit, held to
//! valgrind's memcheck on the same program (real eBPF, real ptrace, real
//! valgrind).

mod common;

use std::process::Command;

use common::*;

/// valgrind's LEAK SUMMARY: kind → (bytes, blocks).
fn memcheck(program: &std::path::Path, args: &[&str]) -> std::collections::HashMap<String, (u64, u64)> {
    let out = Command::new("valgrind")
        .args(["--leak-check=full", "--show-leak-kinds=all"])
        .arg(program)
        .args(args)
        .output()
        .expect("valgrind (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stderr);
    let mut kinds = std::collections::HashMap::new();
    for kind in ["definitely lost", "indirectly lost", "possibly lost", "still reachable"] {
        let figures = text
            .lines()
            .find_map(|l| l.split_once(&format!("{kind}: ")).map(|(_, r)| r.to_string()))
            .map(|r| {
                let n: Vec<u64> = r
                    .split_whitespace()
                    .filter_map(|w| w.replace(',', "").parse().ok())
                    .collect();
                (n[0], n[1])
            })
            .unwrap_or((0, 0));
        kinds.insert(kind.to_string(), figures);
    }
    if !text.contains("LEAK SUMMARY") {
        assert!(text.contains("All heap blocks were freed"), "{text}");
    }
    kinds
}

/// `memwatch check --json --log-file`: exit code and report (the report
/// apart from whatever the command prints).
fn check(args: &[&str]) -> (i32, serde_json::Value, String) {
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = std::env::temp_dir().join(format!("memwatch-check-{}-{n}.json", std::process::id()));
    let log_arg = log.to_str().unwrap();
    let (code, stderr, _) = memwatch(&[&["check", "--json", "--log-file", log_arg], args].concat());
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    let _ = std::fs::remove_file(&log);
    let report = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (code, report, stderr)
}

fn figures(report: &serde_json::Value, kind: &str) -> (u64, u64) {
    (
        report[kind]["bytes"].as_u64().unwrap(),
        report[kind]["blocks"].as_u64().unwrap(),
    )
}

#[test]
#[ignore = "needs root; run with `cargo xtask test`"]
fn lost_and_reachable_equal_valgrind_memcheck_and_the_check_fails() {
    require_root();
    let program = fixture_binary("lossy");
    let expected = memcheck(&program, &["leaks"]);
    assert_eq!(expected["definitely lost"], (1064, 11), "{expected:?}");
    let (code, r, text) = check(&["--", program.to_str().unwrap(), "leaks"]);
    assert_eq!(code, 23, "{text}");
    assert_eq!(r["exit_code"], 0);
    assert_eq!(figures(&r, "definitely_lost"), expected["definitely lost"], "{r:#}");
    assert_eq!(figures(&r, "indirectly_lost"), expected["indirectly lost"], "{r:#}");
    assert_eq!(figures(&r, "possibly_lost"), expected["possibly lost"], "{r:#}");
    assert_eq!(figures(&r, "reachable"), expected["still reachable"], "{r:#}");
    // Lost = definitely + indirectly; the losing function comes first.
    assert_eq!(figures(&r, "lost"), (1064 + 48, 12));
    let first = &r["lost"]["stacks"][0];
    assert_eq!(first["frames"][0]["function"], "lose_some", "{first:#}");
    assert_eq!(
        (first["bytes"].as_u64(), first["blocks"].as_u64()),
        (Some(1000), Some(10))
    );
    assert!(stack_mentions(&r["possibly_lost"]["stacks"][0], "interior"));
    assert!(stack_mentions(&r["reachable"]["stacks"][0], "keep_some"));
    assert!(text.contains("SUMMARY: definitely lost"), "{text}");

    // The same blocks, suppressed by function.
    let dir = std::env::temp_dir().join(format!("memwatch-supp-{}", std::process::id()));
    std::fs::write(&dir, "# the fixture's own\nfun:lose_*\nleak:interior\n").unwrap();
    let (code, r, text) = check(&[
        "--suppressions",
        dir.to_str().unwrap(),
        "--",
        program.to_str().unwrap(),
        "leaks",
    ]);
    let _ = std::fs::remove_file(&dir);
    assert_eq!(code, 0, "{text}");
    assert_eq!(figures(&r, "suppressed"), (1064 + 48 + 1000, 13));
    assert_eq!(figures(&r, "reachable"), (1000, 5));
    // Reachable blocks fail the check only when asked.
    let (code, _, _) = check(&["--fail-on", "reachable", "--", program.to_str().unwrap(), "leaks"]);
    assert_eq!(code, 23);
}

/// A pointer kept only in memory the program mapped itself (CPython's
/// arenas hold its objects so) keeps its block reachable, as for memcheck.
#[test]
#[ignore = "needs root; run with `cargo xtask test`"]
fn a_block_held_only_from_memory_the_program_mapped_is_reachable() {
    require_root();
    let program = fixture_binary("lossy");
    let expected = memcheck(&program, &["mapped"]);
    assert_eq!(expected["still reachable"], (256, 1), "{expected:?}");
    let (code, r, text) = check(&["--", program.to_str().unwrap(), "mapped"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(figures(&r, "reachable"), (256, 1), "{r:#}");
    assert_eq!(figures(&r, "lost"), (0, 0), "{r:#}");
}

/// glibc's own blocks (stdio buffers, locale data) are the runtime's, as
/// memcheck frees them at exit; a stream left open and a string the
/// program keeps are still reachable for both.
#[test]
#[ignore = "needs root; run with `cargo xtask test`"]
fn blocks_only_glibc_holds_are_not_the_programs_as_for_memcheck() {
    require_root();
    let program = fixture_binary("lossy");
    let expected = memcheck(&program, &["stdio"]);
    assert_eq!(expected["definitely lost"], (10, 1), "{expected:?}");
    assert_eq!(expected["still reachable"].1, 2, "{expected:?}");
    let (code, r, text) = check(&["--fail-on", "reachable", "--", program.to_str().unwrap(), "stdio"]);
    assert_eq!(code, 23, "{text}");
    for (ours, theirs) in [
        ("definitely_lost", "definitely lost"),
        ("indirectly_lost", "indirectly lost"),
        ("possibly_lost", "possibly lost"),
        ("reachable", "still reachable"),
    ] {
        assert_eq!(figures(&r, ours), expected[theirs], "{ours}: {r:#}");
    }
    let (bytes, blocks) = figures(&r, "runtime");
    assert!(
        blocks >= 2 && bytes >= 4096,
        "stdout's buffer and the locale's blocks: {r:#}"
    );
    assert!(stack_mentions(&r["reachable"]["stacks"][0], "main"));
}

#[test]
#[ignore = "needs root; run with `cargo xtask test`"]
fn a_clean_command_passes_and_a_failing_one_keeps_its_exit_code() {
    require_root();
    let program = fixture_binary("lossy");
    let expected = memcheck(&program, &["clean"]);
    assert!(expected.values().all(|&f| f == (0, 0)), "{expected:?}");
    let (code, r, text) = check(&["--", program.to_str().unwrap(), "clean"]);
    assert_eq!(code, 0, "{text}");
    for kind in ["lost", "possibly_lost", "reachable"] {
        assert_eq!(figures(&r, kind), (0, 0), "{kind}: {r:#}");
    }
    let (code, r, _) = check(&["--", program.to_str().unwrap(), "fail"]);
    assert_eq!((code, r["exit_code"].as_i64()), (3, Some(3)));
    // A command that cannot be started is memwatch's failure, said so.
    let (code, stderr, _) = memwatch(&["check", "--", "/nonexistent/program"]);
    assert_eq!(code, 125, "{stderr}");
    assert!(stderr.contains("/nonexistent/program"), "{stderr}");
}

#[test]
#[ignore = "needs root; run with `cargo xtask test`"]
fn blocks_held_only_by_a_threads_stack_or_registers_are_reachable() {
    require_root();
    let program = fixture_binary("lossy");
    let expected = memcheck(&program, &["threads"]);
    let (code, r, text) = check(&["--", program.to_str().unwrap(), "threads"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(figures(&r, "lost"), (0, 0), "{r:#}");
    // glibc's thread-local storage of the two running threads, pointed
    // into: possibly lost for both tools, and no failure unless asked.
    assert_eq!(figures(&r, "possibly_lost"), expected["possibly lost"], "{r:#}");
    assert_eq!(figures(&r, "reachable"), expected["still reachable"], "{r:#}");
    assert_eq!(figures(&r, "reachable"), (700, 2), "{r:#}");
    let reachable: Vec<&serde_json::Value> = r["reachable"]["stacks"].as_array().unwrap().iter().collect();
    for (function, bytes) in [("on_stack", 300), ("in_register", 400)] {
        let s = reachable
            .iter()
            .find(|s| stack_mentions(s, function))
            .unwrap_or_else(|| panic!("{function} not reachable: {r:#}"));
        assert_eq!(s["bytes"], bytes, "{s:#}");
    }
}

#[test]
#[ignore = "needs root; run with `cargo xtask test`"]
fn forked_and_execd_processes_are_checked_when_followed() {
    require_root();
    let program = fixture_binary("lossy");
    // Not followed: the parent's own loss alone.
    let (code, r, text) = check(&["--", program.to_str().unwrap(), "fork"]);
    assert_eq!(code, 23, "{text}");
    assert_eq!(figures(&r, "definitely_lost"), (10, 1), "{r:#}");
    assert!(r.get("processes").is_none());
    // Followed: the child (which exec'd the fixture in leaks mode) too,
    // each checked at its own exit.
    let (code, r, text) = check(&["--follow-forks", "--", program.to_str().unwrap(), "fork"]);
    assert_eq!(code, 23, "{text}");
    assert_eq!(figures(&r, "definitely_lost"), (1064 + 10, 12), "{r:#}");
    assert_eq!(figures(&r, "indirectly_lost"), (48, 1), "{r:#}");
    assert_eq!(figures(&r, "reachable"), (1000, 5), "{r:#}");
    let processes = r["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2, "{r:#}");
    assert!(
        processes
            .iter()
            .any(|p| p["command"].as_str().unwrap().contains("leaks")),
        "{r:#}"
    );
    assert!(stack_mentions(&r["lost"]["stacks"][0], "lose_some"));
    assert!(text.contains("process "), "{text}");
}

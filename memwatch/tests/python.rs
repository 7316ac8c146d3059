//! Python source lines in the stacks of real CPython processes, from
//! outside: pyenv's shared builds (3.10 to 3.13) and Debian's static,
//! PGO+LTO python3.11. An interpreter missing on the machine is reported in
//! the test's output (Debian's is installed by `cargo xtask setup` and must
//! be there).

mod common;

use std::time::Duration;

use common::*;

/// Stacks whose innermost Python frame is `function` at `line`.
fn stacks_leading_with<'a>(p: &'a serde_json::Value, function: &str, line: u64) -> Vec<&'a serde_json::Value> {
    p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            python_frames(s)
                .first()
                .is_some_and(|(f, l)| f == function && *l == line)
        })
        .collect()
}

fn sum(stacks: &[&serde_json::Value], key: &str) -> u64 {
    stacks.iter().map(|s| s[key].as_u64().unwrap()).sum()
}

/// The service running under `python`; None, said in the test's output,
/// when this machine has no such interpreter (a `required` one must be).
fn start_service(python: &str, required: bool) -> Option<Fixture> {
    require_root();
    if !std::path::Path::new(python).exists() {
        assert!(!required, "{python} is missing (cargo xtask setup installs it)");
        eprintln!("MISSING INTERPRETER: {python} is not on this machine; its test did not run");
        return None;
    }
    let script = service_py();
    Some(Fixture::start_from(
        std::path::Path::new(python),
        &[script.to_str().unwrap()],
    ))
}

/// Runs the service under `python`, tracked by pid, and checks its stacks.
fn python_lines_lead_the_stacks(python: &str, required: bool) {
    let Some(mut fx) = start_service(python, required) else {
        return;
    };
    let d = Daemon::start(FAST, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    // The interpreter is found and checked against its memory.
    d.wait_for(
        "memwatch to walk the interpreter's frames",
        Duration::from_secs(20),
        || {
            let probes = d.json("/probes");
            probes["unwind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["pid"] == fx.pid && p["python"]["frames"] == true)
        },
    );
    d.wait_for_fresh_scan();
    let line = fx.ask("go");
    let counts: serde_json::Value = serde_json::from_str(&line).unwrap();
    d.wait_for_fresh_scan();
    // Every frame: this checks the walk, not how reports fold it.
    let leaks = d.json(&format!("/leaks?pid={}&limit=100&frames=all", fx.pid));
    let p = leaks["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == fx.pid)
        .unwrap()
        .clone();
    let version = p["python"]["version"].as_str().unwrap_or("?").to_string();

    // The leak: handle at its line leads the process's largest stacks, in
    // both threads, and holds exactly the buffers kept.
    // (The list they are kept in grows by realloc at the same line.)
    let leak: Vec<&serde_json::Value> = stacks_leading_with(&p, "handle", service_line("LEAK"))
        .into_iter()
        .filter(|s| s["call"] == "malloc")
        .collect();
    assert!(
        !leak.is_empty(),
        "{python}: no stack leads with handle:{}: {p:#}",
        service_line("LEAK")
    );
    assert_eq!(
        sum(&leak, "live_allocations"),
        counts["kept"].as_u64().unwrap(),
        "{python}: {leak:#?}"
    );
    let top = &p["stacks"][0];
    assert_eq!(
        python_frames(top).first(),
        Some(&("handle".to_string(), service_line("LEAK"))),
        "{python}: the largest stack leads with the leak: {top:#}"
    );
    let in_worker = leak.iter().any(|s| python_frames(s).iter().any(|(f, _)| f == "worker"));
    let in_main = leak.iter().any(|s| python_frames(s).iter().any(|(f, _)| f == "main"));
    assert!(in_worker && in_main, "{python}: both threads' stacks: {leak:#?}");
    for s in &leak {
        let frames = python_frames(s);
        assert_eq!(frames[1].0, "serve", "{python}: {frames:?}");
        let outermost = frames.last().unwrap().0.as_str();
        if frames.iter().any(|(f, _)| f == "main") {
            assert_eq!(outermost, "<module>", "{python}: {frames:?}");
        } else {
            // threading's bootstrap (a qualified name from 3.11 on).
            assert!(outermost.ends_with("_bootstrap"), "{python}: {frames:?}");
        }
    }

    // Bodies built inside json.dumps (a C extension): native frames of the
    // extension above the Python frame that called it.
    let bodies: Vec<&serde_json::Value> = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| python_frames(s).contains(&("handle".to_string(), service_line("BODY"))))
        .collect();
    assert!(!bodies.is_empty(), "{python}: no body stack: {p:#}");
    assert!(
        sum(&bodies, "live_allocations") >= counts["bodies"].as_u64().unwrap(),
        "{python}: {bodies:#?}"
    );
    assert!(
        bodies.iter().all(|s| s["frames"][0]["kind"] == "native"),
        "{python}: the extension's frames come first: {bodies:#?}"
    );
    // Chunks made by a generator: the generator's frame, then its caller.
    let chunks: Vec<&serde_json::Value> = stacks_leading_with(&p, "chunks_of", service_line("GEN"))
        .into_iter()
        .filter(|s| s["call"] == "malloc")
        .collect();
    assert_eq!(
        sum(&chunks, "live_allocations"),
        counts["chunks"].as_u64().unwrap(),
        "{python}: {p:#}"
    );
    assert!(chunks.iter().all(|s| python_frames(s)[1].0 == "handle"));

    // Deeper than the Python frames kept: truncated, and says so.
    assert_eq!(fx.ask("deep"), "deep");
    d.wait_for_fresh_scan();
    let leaks = d.json(&format!("/leaks?pid={}&limit=200", fx.pid));
    let p = leaks["processes"][0].clone();
    let deep: Vec<&serde_json::Value> = stacks_leading_with(&p, "recurse", service_line("DEEP"))
        .into_iter()
        .filter(|s| s["call"] == "malloc")
        .collect();
    assert_eq!(deep.len(), 1, "{python}: {p:#}");
    assert_eq!(deep[0]["truncated"], true, "{python}: {:#}", deep[0]);
    assert!(python_frames(deep[0]).iter().all(|(f, _)| f == "recurse"));
    eprintln!("{python} (CPython {version}): Python lines lead the stacks");
    let pid = fx.pid;
    assert!(fx.exit().success());
    // Its exit leaves nothing behind.
    d.wait_ended(pid);
    assert_eq!(d.metric("memwatch_unwind_processes"), Some(0.0));
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_3_10_shared() {
    python_lines_lead_the_stacks("/root/.pyenv/versions/3.10.13/bin/python3.10", false);
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_3_11_shared() {
    python_lines_lead_the_stacks("/root/.pyenv/versions/3.11.7/bin/python3.11", false);
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_3_11_debian_static_pgo_lto() {
    python_lines_lead_the_stacks("/usr/bin/python3.11", true);
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_3_12_shared() {
    python_lines_lead_the_stacks("/root/.pyenv/versions/3.12.1/bin/python3.12", false);
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_3_13_shared() {
    python_lines_lead_the_stacks("/root/.pyenv/versions/3.13.0/bin/python3.13", false);
}

/// Per-object tracking of CPython's allocator, asked for by config: where
/// the interpreter calls it out of line (pyenv's shared builds), the
/// fixture's own tally of kept objects equals memwatch's, at the line that
/// keeps them; where PGO+LTO inlined it (Debian's), nothing pretends to be
/// counted per object.
fn python_objects_are_counted(python: &str, out_of_line: bool, required: bool) {
    python_objects_are_counted_with(python, out_of_line, required, None)
}

/// As above, with `PYTHONMALLOC` set to `pythonmalloc` when given: pymalloc
/// off, so the frees go through libc and `_PyObject_Free` must not be
/// probed in place of the dispatchers.
fn python_objects_are_counted_with(python: &str, out_of_line: bool, required: bool, pythonmalloc: Option<&str>) {
    let Some(mut fx) = (match pythonmalloc {
        None => start_service(python, required),
        Some(m) if std::path::Path::new(python).exists() => Some(Fixture::start_from(
            std::path::Path::new("/usr/bin/env"),
            &[&format!("PYTHONMALLOC={m}"), python, service_py().to_str().unwrap()],
        )),
        Some(_) => {
            eprintln!("MISSING INTERPRETER: {python} is not on this machine; its test did not run");
            None
        }
    }) else {
        return;
    };
    let d = Daemon::start(
        &format!("{FAST}[python]\nobjects = true\n"),
        &["--pid", &fx.pid.to_string()],
    );
    d.wait_tracked(fx.pid);
    d.wait_for_fresh_scan();
    let sites = d.json("/probes")["sites"].as_array().unwrap().clone();
    let probed = sites.iter().any(|s| s["function"] == "PyObject_Malloc");
    assert_eq!(probed, out_of_line, "{python}: {sites:#?}");
    let free = |f: &str| sites.iter().find(|s| s["function"] == f);
    if out_of_line && pythonmalloc.is_none() {
        // Frees in pymalloc itself, on an emulated instruction, not at the
        // single-stepped dispatchers.
        let inner = free("_PyObject_Free").unwrap_or_else(|| panic!("{python}: {sites:#?}"));
        assert_eq!(inner["emulated"], true, "{inner:#}");
        assert!(
            free("PyObject_Free").is_none() && free("PyMem_Free").is_none(),
            "{sites:#?}"
        );
    } else if out_of_line {
        assert!(free("_PyObject_Free").is_none(), "pymalloc is off: {sites:#?}");
        assert!(
            free("PyObject_Free").is_some() && free("PyMem_Free").is_some(),
            "{sites:#?}"
        );
    }
    let line = fx.ask("objects 5000");
    let kept = serde_json::from_str::<serde_json::Value>(&line).unwrap()["objects"]
        .as_u64()
        .unwrap();
    d.wait_for_fresh_scan();
    let leaks = d.json(&format!("/leaks?pid={}&limit=100", fx.pid));
    let p = &leaks["processes"][0];
    let objects: Vec<&serde_json::Value> = stacks_leading_with(p, "keep_objects", service_line("OBJ"))
        .into_iter()
        .filter(|s| s["allocator"] == "python" && s["call"] == "malloc")
        .collect();
    if out_of_line {
        assert_eq!(sum(&objects, "live_allocations"), kept, "{python}: {p:#}");
        let freed = d.metric("memwatch_frees_total{allocator=\"python\"}").unwrap();
        assert!(
            freed >= kept as f64,
            "{python}: the discarded objects were freed: {freed}"
        );
    } else {
        assert!(objects.is_empty(), "{python}: {objects:#?}");
        assert_eq!(d.metric("memwatch_allocations_total{allocator=\"python\"}"), Some(0.0));
    }
    assert!(fx.exit().success());
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_objects_counted_exactly_3_11_shared() {
    python_objects_are_counted("/root/.pyenv/versions/3.11.7/bin/python3.11", true, false);
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_objects_counted_exactly_3_11_shared_without_pymalloc() {
    python_objects_are_counted_with(
        "/root/.pyenv/versions/3.11.7/bin/python3.11",
        true,
        false,
        Some("malloc"),
    );
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_objects_counted_exactly_3_13_shared() {
    python_objects_are_counted("/root/.pyenv/versions/3.13.0/bin/python3.13", true, false);
}

#[test]
#[ignore = "needs root, eBPF and CPython; run with `cargo xtask test`"]
fn python_objects_not_pretended_on_debian_static_pgo_lto() {
    python_objects_are_counted("/usr/bin/python3.11", false, true);
}

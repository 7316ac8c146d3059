//! Verdicts on what guest.sh printed ("@mw KEY VALUE" lines), as one table
//! per kernel.

use std::time::Duration;

use serde_json::Value;

/// The project's bar for any one program (the kernel's limit is 1,000,000).
const MAX_VERIFIED: u64 = 100_000;
/// What the fixture leaks, and through which functions (innermost first).
const LEAK_CHAIN: [&str; 3] = ["leak_inner", "leak_outer", "main"];
const CHILD_CHAIN: [&str; 3] = ["child_leak", "fork_child", "main"];

pub struct Report {
    pub label: String,
    pub passed: bool,
    /// One line for the matrix's summary.
    pub summary: String,
}

struct Check {
    name: String,
    expected: String,
    reported: String,
    ok: bool,
}

struct Lines<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Lines<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.all(key).next()
    }

    fn all(&self, key: &str) -> impl Iterator<Item = &'a str> {
        let key = key.to_string();
        self.0.iter().filter(move |(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn json(&self, key: &str) -> Option<Value> {
        serde_json::from_str(self.get(key)?).ok()
    }
}

/// Judges the output of one run and prints its table.
pub fn judge(label: &str, how: &str, output: &[String], timed_out: Option<Duration>, seconds: f64) -> Report {
    let lines = Lines(
        output
            .iter()
            // The firmware's last line has no newline: the first marker may
            // follow it on the same line.
            .filter_map(|l| Some(&l[l.find("@mw ")? + 4..]))
            .map(|l| l.split_once(' ').unwrap_or((l, "")))
            .collect(),
    );
    let mut checks = Vec::new();
    let mut check = |name: &str, expected: String, reported: Option<String>, ok: bool| {
        checks.push(Check {
            name: name.to_string(),
            expected,
            ok: ok && reported.is_some(),
            reported: reported.unwrap_or_else(|| "missing".into()),
        })
    };

    let ended = match (timed_out, lines.get("abort")) {
        (Some(t), _) => Some(format!("killed after {} s", t.as_secs())),
        (None, Some(why)) => Some(why.to_string()),
        (None, None) if lines.get("end").is_none() => Some("output ended early".into()),
        _ => None,
    };
    check(
        "scenario ran to the end",
        "yes".into(),
        Some(ended.clone().unwrap_or("yes".into())),
        ended.is_none(),
    );

    let healthz = lines.get("healthz_centiseconds").and_then(|c| c.parse::<f64>().ok());
    check(
        "start -> /healthz ok",
        "answers".into(),
        healthz.map(|c| format!("{:.2} s", c / 100.0)),
        true,
    );
    let mut programs = 0;
    for v in lines.all("verified") {
        let program = v.split('"').nth(1).unwrap_or(v);
        let count = v.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok());
        check(
            &format!("verified insns: {program}"),
            format!("< {MAX_VERIFIED}"),
            count.map(|c| c.to_string()),
            count.is_some_and(|c| c < MAX_VERIFIED),
        );
        programs += 1;
    }
    if programs == 0 {
        check("verified insns", "every program".into(), None, false);
    }

    let version = lines.get("version").unwrap_or("");
    let mode = preemption_mode(
        version,
        lines.get("sched_preempt").unwrap_or(""),
        lines.get("config_preempt").unwrap_or(""),
    );
    let counters = lines.get("counters").filter(|c| !c.is_empty());
    let chosen = counters.and_then(|c| {
        ["atomic", "plain"]
            .into_iter()
            .find(|w| c.contains(&format!("use {w} adds")))
    });
    let expected = match mode.as_deref() {
        Some("rt" | "full" | "lazy") => Some("atomic"),
        Some("none" | "voluntary") => Some("plain"),
        _ => None,
    };
    check(
        "per-CPU counters",
        expected.unwrap_or("atomic or plain (mode unknown)").to_string(),
        chosen.map(|c| format!("{c} adds")),
        expected.is_none_or(|e| Some(e) == chosen),
    );

    let child = lines.json("child");
    let first = lines.json("counts1");
    let second = lines.json("counts2");
    for (what, counts, leaks, chain) in [
        ("fork child", &child, "leaks_child", &CHILD_CHAIN),
        ("image 1", &first, "leaks1", &LEAK_CHAIN),
        ("exec'd image 2", &second, "leaks2", &LEAK_CHAIN),
    ] {
        for (name, expected, reported) in compare(counts.as_ref(), lines.json(leaks).as_ref(), chain) {
            let ok = reported.as_deref() == Some(expected.as_str());
            check(&format!("{what}: {name}"), expected, reported, ok);
        }
    }
    // The daemon's totals over every tracked process, exited ones included.
    for field in ["allocations", "frees"] {
        let expected: Option<u64> = [&first, &child, &second]
            .iter()
            .map(|c| c.as_ref()?[field].as_u64())
            .sum();
        let series = format!("memwatch_{field}_total{{allocator=\"libc\"}} ");
        let reported = lines.all("total").find_map(|l| l.strip_prefix(&series));
        check(
            &format!("{field}_total (all three)"),
            expected.map_or("?".into(), |e| e.to_string()),
            reported.map(str::to_string),
            expected.is_some_and(|e| reported == Some(&e.to_string())),
        );
    }

    let breakpoints = |key: &str| lines.get(key).and_then(|v| v.split(' ').next()?.parse::<i64>().ok());
    let attached = breakpoints("breakpoints_attached");
    check(
        "int3 in fixture, attached",
        "> 0 (the check sees probes)".into(),
        attached.map(|n| n.to_string()),
        attached.is_some_and(|n| n > 0),
    );
    let exit = lines.get("daemon_exit");
    check(
        "SIGINT: daemon exits",
        "0".into(),
        exit.map(str::to_string),
        exit == Some("0"),
    );
    let detached = lines.get("detached").filter(|l| l.contains("detached all probes"));
    check(
        "log: detached all probes",
        "logged".into(),
        detached.map(|l| l.split("detached all probes").nth(1).unwrap_or("").trim().to_string()),
        true,
    );
    let after = breakpoints("breakpoints_after");
    check(
        "int3 in fixture, after stop",
        "0".into(),
        after.map(|n| n.to_string()),
        after == Some(0),
    );
    let fixture = lines.get("fixture_exit").zip(lines.get("fixture_done"));
    check(
        "fixture runs on, exits",
        "0, done".into(),
        fixture.map(|(code, done)| format!("{code}, {}", if done == "1" { "done" } else { "not done" })),
        fixture == Some(("0", "1")),
    );

    let passed = checks.iter().all(|c| c.ok);
    println!(
        "\n== {label}: {} ({how}, {seconds:.0} s) ==",
        lines.get("kernel").unwrap_or("kernel unknown")
    );
    println!(
        "preemption: {} (sched/preempt: {}; {}); memwatch: {}",
        version,
        lines.get("sched_preempt").unwrap_or("?"),
        lines
            .get("config_preempt")
            .filter(|c| !c.is_empty())
            .unwrap_or("no config"),
        counters.map_or("no log line".into(), |c| {
            c.split_once("memwatch::kernel: ").map_or(c, |(_, m)| m).to_string()
        })
    );
    let width =
        |f: fn(&Check) -> &str, title: &str| checks.iter().map(|c| f(c).len()).max().unwrap_or(0).max(title.len());
    let (w0, w1, w2) = (
        width(|c| &c.name, "check"),
        width(|c| &c.expected, "expected"),
        width(|c| &c.reported, "reported"),
    );
    println!("{:<w0$}  {:<w1$}  {:<w2$}  result", "check", "expected", "reported");
    for c in &checks {
        let result = if c.ok { "ok" } else { "FAIL" };
        println!("{:<w0$}  {:<w1$}  {:<w2$}  {result}", c.name, c.expected, c.reported);
    }
    for note in lines.all("note") {
        println!("note: {note}");
    }
    if !passed {
        for l in output.iter().filter_map(|l| l.strip_prefix("@mwlog ")) {
            println!("  memwatch: {l}");
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    Report {
        label: label.to_string(),
        passed,
        summary: format!(
            "{label:<10} {:<28} {:>5.0} s  /healthz {:>6}  {}",
            lines.get("kernel").unwrap_or("?"),
            seconds,
            healthz.map_or("-".into(), |c| format!("{:.2} s", c / 100.0)),
            if passed {
                "pass".to_string()
            } else {
                format!("FAIL ({failed} of {} checks)", checks.len())
            }
        ),
    }
}

/// The kernel's preemption mode, lower case: "rt" for a PREEMPT_RT build,
/// else the current mode of a PREEMPT_DYNAMIC kernel (in parentheses in
/// /sys/kernel/debug/sched/preempt, or its build default `config`, the line
/// CONFIG_PREEMPT_*=y of its configuration), else what a fixed build says.
fn preemption_mode(version: &str, sched_preempt: &str, config: &str) -> Option<String> {
    let words: Vec<&str> = version.split_whitespace().collect();
    if words.contains(&"PREEMPT_RT") {
        return Some("rt".into());
    }
    if words.contains(&"PREEMPT_DYNAMIC") {
        let current = sched_preempt
            .split_whitespace()
            .find_map(|w| w.strip_prefix('(')?.strip_suffix(')'));
        let default = match config {
            "CONFIG_PREEMPT=y" => Some("full"),
            other => other.strip_prefix("CONFIG_PREEMPT_").and_then(|m| m.strip_suffix("=y")),
        };
        return current.or(default).map(str::to_lowercase);
    }
    Some(
        if words.contains(&"PREEMPT") {
            "full"
        } else if words.contains(&"PREEMPT_LAZY") {
            "lazy"
        } else {
            // No preemption, or voluntary: the same for a BPF program.
            "voluntary"
        }
        .into(),
    )
}

/// (what, expected, reported) for a fixture's own figures `counts` against
/// its process in the /leaks JSON: the leak's stack (bytes, count and the
/// functions of `chain`), then the whole process (live memory and totals).
fn compare(counts: Option<&Value>, leaks: Option<&Value>, chain: &[&str]) -> [(String, String, Option<String>); 2] {
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let expected_stack = counts.map_or("?".into(), |c| {
        format!(
            "{} B in {}, {}",
            n(c, "leaked_bytes"),
            n(c, "leaked_allocations"),
            chain.join("<")
        )
    });
    let expected_process = counts.map_or("?".into(), |c| {
        format!(
            "{} B in {}; {} allocs {} frees",
            n(c, "leaked_bytes"),
            n(c, "leaked_allocations"),
            n(c, "allocations"),
            n(c, "frees")
        )
    });
    let process = leaks.and_then(|l| l["processes"].as_array()?.first().cloned());
    let function = |f: &Value| f["function"].as_str().unwrap_or("?").to_string();
    let stack = process.as_ref().and_then(|p| {
        p["stacks"]
            .as_array()?
            .iter()
            .find(|s| s["frames"][0]["function"] == chain[0])
            .cloned()
    });
    let reported_stack = stack.map(|s| {
        let frames = s["frames"].as_array().cloned().unwrap_or_default();
        let names: Vec<String> = frames.iter().take(chain.len()).map(function).collect();
        format!(
            "{} B in {}, {}",
            n(&s, "live_bytes"),
            n(&s, "live_allocations"),
            names.join("<")
        )
    });
    let reported_process = process.map(|p| {
        format!(
            "{} B in {}; {} allocs {} frees",
            n(&p, "live_bytes"),
            n(&p, "live_allocations"),
            n(&p["totals"], "allocations"),
            n(&p["totals"], "frees")
        )
    });
    [
        ("leak stack".into(), expected_stack, reported_stack),
        ("process".into(), expected_process, reported_process),
    ]
}

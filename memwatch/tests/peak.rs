//! The peak: a process that rises, holds, falls back and then spikes higher
//! for an instant. The kernel keeps its high-water mark exactly (the spike,
//! which no scan sees); `?at=peak` shows the stacks of the scan that saw
//! the most, and says how far from the mark that scan was.

mod common;

use common::*;

fn tally(line: &str, word: &str) -> u64 {
    line.strip_prefix(word)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("expected {word:?}, the fixture said {line:?}"))
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn the_peak_is_exact_and_its_stacks_are_the_nearest_scans() {
    require_root();
    let mut fx = Fixture::start_other("peaker", &[]);
    let pid = fx.pid;
    let d = Daemon::start(FAST, &["--pid", &pid.to_string()]);
    d.wait_tracked(pid);
    let held = tally(&fx.ask("go"), "held ");
    d.wait_for_fresh_scan();
    d.wait_for_fresh_scan();
    let kept = tally(&fx.ask("release"), "kept ");
    let spiked = tally(&fx.ask("spike"), "spiked ");
    assert!(spiked > held);
    d.wait_for_fresh_scan();

    let now = d.json(&format!("/leaks?pid={pid}"));
    let p = &now["processes"][0];
    assert_eq!(now["at"], "now");
    assert_eq!(p["live_bytes"], kept, "{p:#}");
    // The mark is the spike's, to the byte, though no scan saw it.
    assert_eq!(p["peak"]["bytes"], spiked, "{p:#}");

    let at = d.json(&format!("/leaks?pid={pid}&at=peak"));
    let p = &at["processes"][0];
    assert_eq!(at["at"], "peak");
    assert_eq!(p["live_bytes"], held, "{p:#}");
    assert_eq!(p["peak"]["stacks_seen_bytes"], held, "{p:#}");
    assert!(p["peak"]["seconds_from_peak"].as_f64() > Some(0.0), "{p:#}");
    let stacks = stacks_at(p, "hold_for_the_peak");
    assert_eq!(stacks.len(), 1, "{p:#}");
    assert_eq!(stacks[0]["live_bytes"], held);
    assert_eq!(stacks[0]["live_allocations"], 1024);
    assert!(stacks_at(p, "keep_after").is_empty(), "kept after the peak: {p:#}");

    let (status, collapsed) = d.get(&format!("/leaks/collapsed?pid={pid}&at=peak"));
    assert_eq!(status, 200);
    let line = collapsed
        .lines()
        .find(|l| l.contains("hold_for_the_peak"))
        .unwrap_or_else(|| panic!("{collapsed}"));
    assert!(line.ends_with(&format!(" {held}")), "{line}");
    let (_, text) = d.get_with(&format!("/leaks?pid={pid}&at=peak"), Some("text/plain"));
    eprintln!("{text}");
    assert!(
        text.contains("live allocations at each process's peak") && text.contains("hold_for_the_peak"),
        "{text}"
    );
    let (status, body) = d.get(&format!("/leaks?pid={pid}&at=peak&since=5"));
    assert_eq!(status, 400, "{body}");

    // The allocation profile: the spike allocated most and holds nothing,
    // every one of its blocks temporary; the held blocks were not.
    let by = d.json(&format!("/leaks?pid={pid}&sort=allocated"));
    let p = &by["processes"][0];
    let (top, held_stack) = (&p["stacks"][0], stacks_at(p, "hold_for_the_peak")[0]);
    assert!(stack_mentions(top, "spike_briefly"), "{p:#}");
    assert_eq!(top["allocated"]["allocations"], 1536, "{top:#}");
    assert_eq!(top["allocated"]["bytes"], spiked - kept, "{top:#}");
    assert_eq!(top["allocated"]["temporary_allocations"], 1536, "{top:#}");
    assert_eq!(top["live_bytes"], 0, "{top:#}");
    assert_eq!(held_stack["allocated"]["allocations"], 1024, "{held_stack:#}");
    assert_eq!(held_stack["allocated"]["temporary_allocations"], 0, "{held_stack:#}");
    // go tool pprof reads the same from the profile's alloc_* samples.
    let (status, profile) = d.get_bytes(&format!("/leaks/pprof?pid={pid}"));
    assert_eq!(status, 200);
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peaker-heap.pb.gz");
    std::fs::write(&path, profile).unwrap();
    for (index, first) in [("alloc_objects", "1536"), ("alloc_space", "12MB")] {
        let out = std::process::Command::new("go")
            .args([
                "tool",
                "pprof",
                "-top",
                "-symbolize=none",
                &format!("-sample_index={index}"),
            ])
            .arg(&path)
            .output()
            .unwrap();
        let top = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "go tool pprof: {top}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = top
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("flat"))
            .nth(1)
            .unwrap_or_else(|| panic!("{top}"));
        assert!(line.trim_end().ends_with("spike_briefly"), "{index}: {top}");
        assert!(line.trim_start().starts_with(first), "{index}: {top}");
    }
    assert!(fx.exit().success());
}

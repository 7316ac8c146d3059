//! Probe placement changes where the probes sit, never what they report.

mod common;

use common::*;

/// What must not depend on placement: counts, bytes and every stack.
fn essence(leaks: &serde_json::Value) -> serde_json::Value {
    let p = &leaks["processes"][0];
    let stacks: Vec<serde_json::Value> = p["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let frames: Vec<serde_json::Value> = s["frames"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| serde_json::json!([f["function"], f["file"], f["line"]]))
                .collect();
            serde_json::json!({
                "live_bytes": s["live_bytes"], "live_allocations": s["live_allocations"],
                "call": s["call"], "frames": frames,
            })
        })
        .collect();
    serde_json::json!({
        "live_bytes": p["live_bytes"], "live_allocations": p["live_allocations"],
        "totals": p["totals"], "stacks": stacks,
    })
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn the_leak_report_is_the_same_with_placement_on_and_off() {
    require_root();
    let mut placed = Fixture::start(&[]);
    let mut entry = Fixture::start(&[]);
    let on = Daemon::start(FAST, &["--pid", &placed.pid.to_string()]);
    let off_config = format!("{FAST}[probes]\nplacement = false\n");
    let off = Daemon::start(&off_config, &["--pid", &entry.pid.to_string()]);
    on.wait_tracked(placed.pid);
    off.wait_tracked(entry.pid);

    // Where the probes went.
    let sites_on = on.json("/probes");
    let sites_off = off.json("/probes");
    assert_eq!(sites_on["placement"], true);
    assert_eq!(sites_off["placement"], false);
    let free = |v: &serde_json::Value| {
        v["sites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["function"] == "free")
            .cloned()
            .expect("free is probed")
    };
    assert_eq!(free(&sites_on)["emulated"], true);
    assert!(free(&sites_on)["offset"].as_u64().unwrap() > 0, "{}", free(&sites_on));
    assert_eq!(free(&sites_off)["offset"], 0);
    assert!(sites_off["sites"].as_array().unwrap().iter().all(|s| s["offset"] == 0));
    let emulated_on = sites_on["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["emulated"] == true)
        .count();
    let emulated_off = sites_off["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["emulated"] == true)
        .count();
    assert!(
        emulated_on > emulated_off,
        "placement must move some sites: {emulated_on} vs {emulated_off}"
    );

    let counts_placed = placed.go();
    let counts_entry = entry.go();
    assert_eq!(counts_placed, counts_entry, "the fixture is deterministic");
    on.wait_for_fresh_scan();
    off.wait_for_fresh_scan();

    let report_on = essence(&on.json(&format!("/leaks?pid={}&limit=100", placed.pid)));
    let report_off = essence(&off.json(&format!("/leaks?pid={}&limit=100", entry.pid)));
    assert_eq!(report_on, report_off);
    assert_eq!(report_on["live_bytes"], counts_placed.leaked_bytes);
    assert_eq!(report_on["totals"]["allocations"], counts_placed.allocations);
    assert!(placed.exit().success());
    assert!(entry.exit().success());
}

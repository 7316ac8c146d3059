//! Unit tests of the report, and the fake snapshot other modules' tests use.

use std::{collections::HashMap, sync::Arc, time::Duration};

use memwatch_common::{alloc::ProcCounters, unwind::EndReason};

use super::*;
use crate::{
    collect::snapshot::{LiveAlloc, ProcessSnapshot},
    process::{Identity, Selection},
    symbolize::{Frame, FrameKind, Stack, Walk, WalkReport},
};

pub(crate) fn frame(function: &str, line: u32) -> Frame {
    Frame {
        kind: FrameKind::Native,
        function: Some(function.into()),
        file: Some("/src/leaky.c".into()),
        line: Some(line),
        module: Some("/usr/bin/leaky".into()),
        build_id: Some("ab12".into()),
        address: Some("0x401234".into()),
        inlined: false,
    }
}

/// Two processes: 42 leaks 3 × 1000 bytes from `leak_here` (old) and
/// holds one young 64-byte block; 7 holds 10 bytes with an unknown stack.
const CONTAINER: &str = "3f4c0a9b8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4e3d";

fn allocs(allocations: u64, bytes: u64, temporary: u64) -> crate::collect::profile::StackAllocs {
    crate::collect::profile::StackAllocs {
        allocations,
        bytes,
        temporary,
        temporary_bytes: temporary * (bytes / allocations.max(1)),
        kind: 1,
        family: 1,
    }
}

pub(crate) fn fake_snapshot() -> Snapshot {
    let s = 1_000_000_000;
    let mk = |stack_id, size, ts| LiveAlloc {
        stack_id,
        size,
        timestamp_ns: ts,
        kind: 1,
        family: 1,
    };
    let p42 = ProcessSnapshot {
        id: Identity {
            pid: 42,
            nspid: Some(7),
            comm: "leaky".into(),
            exe: "/usr/bin/leaky".into(),
            cmdline: "leaky --fast".into(),
            place: crate::process::cgroup::parse(&format!("0::/system.slice/docker-{CONTAINER}.scope\n")),
        },
        generation: 1 << 16,
        exe_name: "leaky".into(),
        selection: Selection::Pid,
        tracked_since_unix: 1000.0,
        counters: ProcCounters {
            allocations: 10,
            frees: 6,
            allocated_bytes: 4064,
            freed_bytes: 1000,
            ..Default::default()
        },
        rates: Rates {
            allocations_per_second: 2.0,
            ..Default::default()
        },
        allocations: vec![
            mk(11, 1000, 10 * s),
            mk(11, 1000, 11 * s),
            mk(11, 1000, 12 * s),
            mk(22, 64, 99 * s),
        ],
        stacks: HashMap::from([
            (
                11,
                Arc::new(Stack {
                    frames: vec![frame("leak_here", 10), frame("main", 20)],
                    walk: Walk {
                        method: "cfi",
                        end: EndReason::Complete,
                        python_truncated: false,
                    },
                }),
            ),
            (
                22,
                Arc::new(Stack {
                    frames: vec![frame("cache_fill", 30)],
                    walk: Walk {
                        method: "frame_pointers",
                        end: EndReason::BadFramePointer,
                        python_truncated: false,
                    },
                }),
            ),
        ]),
        unwind: Vec::new(),
        python: None,
        history: Vec::new(),
        peak: None,
        alloc_profile: Arc::new(HashMap::from([
            (11, allocs(5, 5000, 2)),
            (22, allocs(3, 96, 0)),
            // Churn: everything it allocated was freed at once.
            (33, allocs(100, 100_000, 100)),
        ])),
        probes: vec![crate::process::ProbeSummary {
            module: "/usr/lib/libc.so.6".into(),
            build_id: Some("cafe".into()),
            function: "free",
            entry_offset: 0x98ef0,
            untracked_free_sizes: Some("read from glibc's chunk header"),
            placement: crate::target::placement::Placement {
                offset: 9,
                sp_words: 0,
                instruction: "push %rbp".into(),
                emulated: true,
                reason: "moved past 2 single-stepped instruction(s) to an emulated one".into(),
            },
        }],
    };
    let p7 = ProcessSnapshot {
        id: Identity {
            pid: 7,
            comm: "small".into(),
            ..p42.id.clone()
        },
        allocations: vec![mk(0, 10, 50 * s)],
        stacks: HashMap::new(),
        ..p42.clone()
    };
    Snapshot {
        ready: true,
        taken_at_ns: 100 * s,
        taken_at_unix: 5000.0,
        processes: vec![p7, p42],
        ..Default::default()
    }
}

fn q(pid: Option<u32>, min_age: u64, limit: usize) -> LeaksQuery {
    LeaksQuery {
        pid,
        min_age: Duration::from_secs(min_age),
        since: None,
        limit,
        format: Format::Json,
        at_peak: false,
        by_allocated: false,
        frames: Default::default(),
    }
}

#[test]
fn largest_process_and_stack_first() {
    let r = build(&fake_snapshot(), &q(None, 0, 20), 100_000_000_000, 5001.0).unwrap();
    assert_eq!(r.processes.iter().map(|p| p.id.pid).collect::<Vec<_>>(), [42, 7]);
    let p = &r.processes[0];
    assert_eq!((p.live_bytes, p.live_allocations, p.stack_count), (3064, 4, 2));
    assert_eq!((p.stacks[0].live_bytes, p.stacks[0].live_allocations), (3000, 3));
    assert_eq!(p.stacks[0].oldest_age_seconds, 90.0);
    assert_eq!(p.stacks[0].frames[0].function.as_deref(), Some("leak_here"));
    assert_eq!(p.stacks[0].call, "malloc");
    assert_eq!(
        p.stacks[0].walk,
        WalkReport {
            truncated: false,
            truncation: None,
            unwind: "cfi"
        }
    );
    assert_eq!(
        p.stacks[1].walk,
        WalkReport {
            truncated: true,
            truncation: Some("no_frame_pointer"),
            unwind: "frame_pointers"
        }
    );
    assert_eq!(r.snapshot_age_seconds, 1.0);
    // A stack that could not be captured has no frames but still counts.
    assert!(r.processes[1].stacks[0].frames.is_empty());
}

#[test]
fn filters_by_pid_age_and_limit() {
    let snap = fake_snapshot();
    let r = build(&snap, &q(Some(42), 0, 1), 100_000_000_000, 5001.0).unwrap();
    assert_eq!(r.processes.len(), 1);
    assert_eq!(r.processes[0].stacks.len(), 1);
    assert_eq!(r.processes[0].stack_count, 2);
    // Only allocations at least 50 s old: the young 64 bytes drop out.
    let r = build(&snap, &q(Some(42), 50, 20), 100_000_000_000, 5001.0).unwrap();
    assert_eq!((r.processes[0].live_bytes, r.processes[0].live_allocations), (3000, 3));
    assert_eq!(r.processes[0].stacks.len(), 1);
}

#[test]
fn an_untracked_pid_is_an_error_naming_the_tracked_ones() {
    let e = build(&fake_snapshot(), &q(Some(5), 0, 20), 0, 0.0).unwrap_err();
    assert_eq!(e.to_string(), "process 5 is not tracked (tracked: 7, 42)");
    let e = build(&Snapshot::default(), &q(Some(5), 0, 20), 0, 0.0).unwrap_err();
    assert_eq!(e.to_string(), "process 5 is not tracked (no process is)");
}

/// A firing suspect, pid 99, in a unit and a pod.
fn a_suspect(snap: &mut Snapshot) {
    use crate::{
        collect::snapshot::SuspectSnapshot,
        watch::{
            alert::Alert,
            estimator::{Estimate, Verdict},
            procmem::Memory,
        },
    };
    snap.watch.suspects.push(SuspectSnapshot {
        id: Identity {
            pid: 99,
            nspid: Some(12),
            comm: "grower".into(),
            exe: "/srv/grower".into(),
            cmdline: String::new(),
            place: crate::process::cgroup::Placement {
                unit: Some("grower.service".into()),
                pod: Some("0d3a5c1e-7b2f-4e8a-9c6d-1f2e3a4b5c6d".into()),
                qos: Some("burstable".into()),
                ..Default::default()
            },
        },
        memory: Memory {
            rss: 100,
            anon: 80,
            file: 20,
            shmem: 0,
            swap: 0,
        },
        estimate: Estimate {
            verdict: Verdict::Leak,
            rate: 2048.0,
            confidence: 0.9,
            windows: vec![],
        },
        alert: Alert::Firing {
            since: 10.0,
            fired_at: 70.0,
            last_seen: 90.0,
        },
        leaking_since: Some(10.0),
        escalation: None,
        evidence: vec![],
        growth: vec![],
        exited: false,
    });
}

#[test]
fn at_peak_the_peak_scans_stacks_stand_for_now() {
    use crate::collect::snapshot::{PeakSnapshot, PeakView};
    let mut snap = fake_snapshot();
    let p = snap.processes.iter_mut().find(|p| p.id.pid == 42).unwrap();
    // At its peak, stack 22 held 50 000 bytes in 50 blocks.
    let at_peak: Vec<LiveAlloc> = (0..50)
        .map(|_| LiveAlloc {
            stack_id: 22,
            size: 1000,
            timestamp_ns: 1,
            kind: 0,
            family: 1,
        })
        .collect();
    p.peak = Some(PeakSnapshot {
        bytes: 50_100,
        at_unix: 4000.0,
        view: Arc::new(PeakView {
            taken_unix: 4000.5,
            aggregated: aggregate(&at_peak, None),
            stacks: p.stacks.clone(),
        }),
    });
    let mut query = q(Some(42), 0, 20);
    let now = build(&snap, &query, 100_000_000_000, 5001.0).unwrap();
    assert_eq!(now.at, "now");
    assert_eq!(now.processes[0].live_bytes, 3064);
    let peak = now.processes[0].peak.as_ref().unwrap();
    assert_eq!((peak.bytes, peak.stacks_seen_bytes), (50_100, 50_000));
    assert!((peak.seconds_from_peak - 0.5).abs() < 1e-9);
    query.at_peak = true;
    let r = build(&snap, &query, 100_000_000_000, 5001.0).unwrap();
    assert_eq!(r.at, "peak");
    let p = &r.processes[0];
    assert_eq!((p.live_bytes, p.live_allocations), (50_000, 50));
    assert_eq!(p.stacks.len(), 1);
    assert_eq!(p.stacks[0].frames[0].function.as_deref(), Some("cache_fill"));
    let text = text::render(&r);
    assert!(
        text.contains("peak 48.9 KiB") && text.contains("the stacks below are the scan's"),
        "{text}"
    );
}

#[test]
fn sorted_by_allocated_churn_comes_first_though_it_holds_nothing() {
    let mut query = q(Some(42), 0, 20);
    query.by_allocated = true;
    let r = build(&fake_snapshot(), &query, 100_000_000_000, 5001.0).unwrap();
    assert_eq!(r.sort, "allocated");
    let p = &r.processes[0];
    let first = p.stacks[0].allocated.unwrap();
    assert_eq!(
        (first.allocations, first.bytes, first.temporary_allocations),
        (100, 100_000, 100)
    );
    assert_eq!(p.stacks[0].live_bytes, 0);
    assert_eq!(p.stacks[1].allocated.unwrap().bytes, 5000);
    let text = text::render(&r);
    assert!(
        text.contains("allocated   97.7 KiB in     100 allocation(s), 100 temporary; live 0 B in 0"),
        "{text}"
    );
    // The live report carries the totals too.
    let live = build(&fake_snapshot(), &q(Some(42), 0, 20), 100_000_000_000, 5001.0).unwrap();
    assert!(live.processes[0].stacks.iter().all(|s| s.live_bytes > 0));
    assert!(
        live.processes[0]
            .stacks
            .iter()
            .any(|s| s.allocated.is_some_and(|a| a.bytes == 5000))
    );
    // pprof's alloc_space has the churn; its inuse_space does not.
    let stacks = crate::export::heap_stacks(&fake_snapshot(), Some(42), None, None, false);
    let churn: Vec<_> = stacks.iter().filter(|s| s.allocated_bytes == 100_000).collect();
    assert_eq!((churn.len(), churn[0].bytes), (1, 0));
    assert!(!crate::export::collapsed::render(&stacks).contains(" 0\n"));
}

#[test]
fn a_suspect_alone_is_found_by_pid() {
    let mut snap = fake_snapshot();
    a_suspect(&mut snap);
    let r = build(&snap, &q(Some(99), 0, 20), 0, 100.0).unwrap();
    assert!(r.processes.is_empty());
    assert_eq!(r.suspects.len(), 1);
    assert_eq!(r.suspects[0].growth.duration_seconds, 90.0);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["suspects"][0]["alert"]["state"], "firing");
    assert_eq!(v["suspects"][0]["growth"]["verdict"], "leak");
    assert_eq!(v["suspects"][0]["unit"], "grower.service");
}

#[test]
fn json_has_the_documented_fields() {
    let r = build(&fake_snapshot(), &q(Some(42), 0, 20), 100_000_000_000, 5001.0).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let p = &v["processes"][0];
    for key in [
        "pid",
        "comm",
        "live_bytes",
        "live_allocations",
        "stacks",
        "allocations_per_second",
        "frees_per_second",
    ] {
        assert!(p.get(key).is_some(), "missing {key}");
    }
    let s = &p["stacks"][0];
    for key in ["live_bytes", "live_allocations", "oldest_age_seconds", "frames"] {
        assert!(s.get(key).is_some(), "missing {key}");
    }
    let f = &s["frames"][0];
    for key in ["function", "file", "line", "module"] {
        assert!(f.get(key).is_some(), "missing {key}");
    }
    assert_eq!(f["kind"], "native");
    assert_eq!(p["selection"]["by"], "pid");
}

#[test]
fn a_containers_process_is_named_by_its_container_and_inner_pid() {
    let r = build(&fake_snapshot(), &q(None, 0, 20), 100_000_000_000, 5001.0).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let p42 = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == 42)
        .unwrap();
    assert_eq!(p42["container"], CONTAINER);
    assert_eq!(p42["nspid"], 7);
    assert!(p42.get("unit").is_none() && p42.get("pod").is_none(), "{p42}");
    let p7 = v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == 7)
        .unwrap();
    assert_eq!(p7["container"], CONTAINER, "a clone of 42's");
    let text = text::render(&r);
    assert!(
        text.contains("\n  container 3f4c0a9b8e7d  pid 7 in its namespace\n"),
        "{text}"
    );
}

#[test]
fn a_suspect_is_named_by_its_unit_pod_and_inner_pid() {
    let mut snap = fake_snapshot();
    a_suspect(&mut snap);
    let r = build(&snap, &q(None, 0, 20), 100_000_000_000, 5001.0).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let s = &v["suspects"][0];
    assert_eq!(s["unit"], "grower.service", "{s}");
    assert_eq!(s["pod"], "0d3a5c1e-7b2f-4e8a-9c6d-1f2e3a4b5c6d", "{s}");
    assert_eq!(
        (s["qos"].as_str(), s["nspid"].as_u64()),
        (Some("burstable"), Some(12)),
        "{s}"
    );
    let text = text::render(&r);
    assert!(
        text.contains(
            "  unit grower.service  pod 0d3a5c1e-7b2f-4e8a-9c6d-1f2e3a4b5c6d (burstable)  pid 12 in its namespace\n"
        ),
        "{text}"
    );
}

#[test]
fn growth_since_compares_with_the_reading_before_the_window() {
    let mut snap = fake_snapshot();
    let s = 1_000_000_000;
    let p42 = snap.processes.iter_mut().find(|p| p.id.pid == 42).unwrap();
    // 60 s ago stack 11 held one block of 1000 bytes, and a stack since
    // freed held 500; 1 s ago everything was as now.
    let old = crate::collect::history::Reading {
        taken_ns: 40 * s,
        taken_unix: 4940.0,
        stacks: HashMap::from([((11, 1, 1), (1000, 1)), ((99, 1, 1), (500, 2))]),
        counters: Default::default(),
    };
    let recent = crate::collect::history::Reading::of(&p42.allocations, 99 * s, 4999.0);
    p42.history = vec![Arc::new(old), Arc::new(recent)];
    let mut query = q(Some(42), 0, 10);
    query.since = Some(Duration::from_secs(30));
    let r = build(&snap, &query, 100 * s, 5000.0).unwrap();
    let p = &r.processes[0];
    let g = p.growth.as_ref().unwrap();
    assert_eq!((g.window_seconds, g.since_unix), (60.0, 4940.0));
    assert_eq!(g.growth_bytes, 3064 - 1500);
    assert_eq!(g.growth_allocations, 4 - 3);
    // Most grown first: stack 11 (+2000 in +2), then the new 64 bytes.
    let grown: Vec<(Option<i64>, Option<i64>)> = p
        .stacks
        .iter()
        .map(|s| (s.growth_bytes, s.growth_allocations))
        .collect();
    assert_eq!(grown, [(Some(2000), Some(2)), (Some(64), Some(1))]);
    // A window shorter than the scans kept compares with the newest.
    query.since = Some(Duration::from_millis(500));
    let r = build(&snap, &query, 100 * s, 5000.0).unwrap();
    assert_eq!(r.processes[0].growth.as_ref().unwrap().growth_bytes, 0);
    // No since: no growth fields.
    let r = build(&snap, &q(Some(42), 0, 10), 100 * s, 5000.0).unwrap();
    assert!(r.processes[0].growth.is_none() && r.processes[0].stacks[0].growth_bytes.is_none());
}

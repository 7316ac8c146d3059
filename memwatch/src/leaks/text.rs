//! The readable table of `/leaks?format=text` (and `Accept: text/plain`).

use std::fmt::Write;

use super::{LeaksReport, StackReport, SuspectReport};
use crate::{
    symbolize::WalkReport,
    watch::{alert::Alert, escalation::Status},
};

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{secs:.0}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn render(r: &LeaksReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memwatch: {} tracked process(es); data {} old{}",
        r.processes.len(),
        duration(r.snapshot_age_seconds),
        if r.min_age_seconds > 0.0 {
            format!("; allocations at least {} old", duration(r.min_age_seconds))
        } else {
            String::new()
        }
    );
    if !r.suspects.is_empty() {
        let _ = writeln!(out, "\nSUSPECTS (sustained heap growth, host-wide)");
        for sp in &r.suspects {
            render_suspect(&mut out, sp);
        }
        if !r.processes.is_empty() {
            let _ = writeln!(out, "\nTRACKED EXACTLY");
        }
    }
    let at_peak = r.at == "peak";
    if at_peak {
        let _ = writeln!(out, "(live allocations at each process's peak)");
    }
    if r.sort == "allocated" {
        let _ = writeln!(
            out,
            "(stacks by what they allocated since tracking began, freed or not)"
        );
    }
    for p in &r.processes {
        render_process(&mut out, p, at_peak, r.sort == "allocated");
    }
    if !r.ended.is_empty() {
        let _ = writeln!(out, "\nTRACKING ENDED (as the last scan before saw them)");
        for p in &r.ended {
            render_process(&mut out, p, false, false);
        }
    }
    out
}

fn render_process(out: &mut String, p: &super::ProcessReport, at_peak: bool, by_allocated: bool) {
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "PID {} ({})  live {} in {} allocation(s)  alloc {:.0}/s  free {:.0}/s  net {}/s",
        p.id.pid,
        p.id.comm,
        bytes(p.live_bytes),
        p.live_allocations,
        p.rates.allocations_per_second,
        p.rates.frees_per_second,
        signed_bytes(p.rates.allocated_bytes_per_second - p.rates.freed_bytes_per_second),
    );
    if let Some(place) = place_line(&p.id.place, p.id.nspid) {
        let _ = writeln!(out, "  {place}");
    }
    if let Some(e) = &p.ended {
        let _ = writeln!(
            out,
            "  tracking ended {} ago: {}",
            duration((crate::process::unix_now() - e.at_unix).max(0.0)),
            e.why
        );
    }
    if let Some(pk) = &p.peak {
        let ago = duration((crate::process::unix_now() - pk.at_unix).max(0.0));
        let _ = if at_peak {
            writeln!(
                out,
                "  peak {} {ago} ago; the stacks below are the scan's {:.1}s from it ({} live)",
                bytes(pk.bytes),
                pk.seconds_from_peak,
                bytes(pk.stacks_seen_bytes),
            )
        } else {
            writeln!(out, "  peak {} {ago} ago (?at=peak for its stacks)", bytes(pk.bytes))
        };
    }
    if let Some(g) = &p.growth {
        let _ = writeln!(
            out,
            "  growth over the last {}: {} in {:+} allocation(s); net {} after {} untracked free(s) of {}",
            duration(g.window_seconds),
            change(g.growth_bytes),
            g.growth_allocations,
            change(g.net_growth_bytes),
            g.untracked_frees,
            bytes(g.untracked_freed_bytes),
        );
    }
    if p.stacks.is_empty() {
        let _ = writeln!(out, "  no live allocations");
    }
    if by_allocated {
        render_allocated(out, &p.stacks);
    } else {
        render_stacks(out, &p.stacks);
    }
    if p.stack_count > p.stacks.len() {
        let _ = writeln!(
            out,
            "  … {} more stack(s); raise ?limit=",
            p.stack_count - p.stacks.len()
        );
    }
}

/// Stacks by what they allocated since tracking began, with what they hold.
fn render_allocated(out: &mut String, stacks: &[StackReport]) {
    for (i, s) in stacks.iter().enumerate() {
        let a = s.allocated.unwrap_or(super::Allocated {
            allocations: 0,
            bytes: 0,
            temporary_allocations: 0,
            temporary_bytes: 0,
        });
        let _ = writeln!(
            out,
            "  #{:<3} allocated {:>10} in {:>7} allocation(s), {} temporary; live {} in {}  [{}]",
            i + 1,
            bytes(a.bytes),
            a.allocations,
            a.temporary_allocations,
            bytes(s.live_bytes),
            s.live_allocations,
            s.call,
        );
        render_frames(out, &s.frames, &s.walk);
    }
}

pub(super) fn render_stacks(out: &mut String, stacks: &[StackReport]) {
    for (i, s) in stacks.iter().enumerate() {
        // As tracemalloc's compare_to prints its statistics.
        let replacing = match s.replacing_bytes {
            Some(r) if r > 0 => format!(", replacing {}", bytes(r)),
            _ => String::new(),
        };
        if let (Some(b), Some(n)) = (s.growth_bytes, s.growth_allocations) {
            let _ = writeln!(
                out,
                "  #{:<3} size={} ({}{replacing}), count={} ({:+})  [{}]",
                i + 1,
                bytes(s.live_bytes),
                change(b),
                s.live_allocations,
                n,
                s.call,
            );
            render_frames(out, &s.frames, &s.walk);
            continue;
        }
        let _ = writeln!(
            out,
            "  #{:<3} {:>10} in {:>7} allocation(s), oldest {:>6}  [{}]{}",
            i + 1,
            bytes(s.live_bytes),
            s.live_allocations,
            duration(s.oldest_age_seconds),
            s.call,
            if replacing.is_empty() {
                String::new()
            } else {
                format!("  ({})", &replacing[2..])
            },
        );
        render_frames(out, &s.frames, &s.walk);
    }
}

fn render_frames(out: &mut String, frames: &[crate::symbolize::Frame], walk: &WalkReport) {
    if frames.is_empty() {
        let _ = writeln!(out, "        (stack not captured)");
        return;
    }
    for f in frames {
        match f.module.as_deref() {
            Some(m) => {
                let _ = writeln!(out, "        {}  [{}]", f.describe(), m.rsplit('/').next().unwrap_or(m));
            }
            None if f.kind == crate::symbolize::FrameKind::Python => {
                let _ = writeln!(out, "        {}", f.describe());
            }
            None => {
                let _ = writeln!(out, "        {}  [?]", f.describe());
            }
        }
    }
    if let Some(why) = walk.truncation {
        let _ = writeln!(out, "        … truncated: {}", why.replace('_', " "));
    }
}

/// Where a tracked process runs, as `docker ps`, `kubectl` and systemd
/// name it: `unit nginx.service`, `container 3f4c0a9b8e7d (pid 7 inside)`,
/// `pod 0d3a… (burstable)`.
pub(super) fn place_line(place: &crate::process::cgroup::Placement, nspid: Option<u32>) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(u) = &place.unit {
        parts.push(format!("unit {u}"));
    }
    if let Some(c) = place.container_short() {
        parts.push(format!("container {c}"));
    }
    if let Some(pod) = &place.pod {
        parts.push(format!("pod {pod} ({})", place.qos.as_deref().unwrap_or("?")));
    }
    if let Some(n) = nspid {
        parts.push(format!("pid {n} in its namespace"));
    }
    (!parts.is_empty()).then(|| parts.join("  "))
}

fn render_suspect(out: &mut String, s: &SuspectReport) {
    let group = s.id.place.group().map(|u| format!(" [{u}]")).unwrap_or_default();
    let state = match s.alert {
        Alert::Firing { .. } => "FIRING",
        Alert::Pending { .. } => "pending",
        Alert::Resolved { .. } => "resolved",
        Alert::Inactive => "no alert",
    };
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "PID {} ({}){}  {}{}  heap {}  growing {}/s for {} (confidence {:.2})",
        s.id.pid,
        s.id.comm,
        group,
        state,
        if s.exited { " (exited)" } else { "" },
        bytes(s.growth.heap_bytes),
        signed_bytes(s.growth.rate_bytes_per_second),
        duration(s.growth.duration_seconds),
        s.growth.confidence,
    );
    if let Some(place) = place_line(&s.id.place, s.id.nspid) {
        let _ = writeln!(out, "  {place}");
    }
    match &s.escalation {
        Some(Status::Running { started, until }) => {
            let _ = writeln!(out, "  exact tracking running ({} window)", duration(until - started));
        }
        Some(Status::Done {
            started,
            ended,
            outcome,
        }) => {
            let _ = writeln!(
                out,
                "  exact tracking {} after {}",
                outcome.name().replace('_', " "),
                duration(ended - started)
            );
        }
        Some(Status::Skipped { reason }) => {
            let _ = writeln!(out, "  not escalated: {reason}");
        }
        None => {}
    }
    render_stacks(out, &s.stacks);
    render_growth_stacks(out, &s.growth_stacks);
}

pub(super) fn render_growth_stacks(out: &mut String, stacks: &[super::GrowthStackReport]) {
    if !stacks.is_empty() {
        let _ = writeln!(out, "  address-space growth by stack (mmap/brk):");
        for g in stacks {
            let _ = writeln!(out, "    {:>10} in {} call(s)", bytes(g.bytes), g.calls);
            render_frames(out, &g.frames, &g.walk);
        }
    }
}

/// A change in bytes, always signed.
fn change(v: i64) -> String {
    if v < 0 {
        format!("-{}", bytes(v.unsigned_abs()))
    } else {
        format!("+{}", bytes(v as u64))
    }
}

fn signed_bytes(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", bytes((-v) as u64))
    } else {
        bytes(v as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaks::{Format, LeaksQuery, build, tests::fake_snapshot};

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(duration(5.0), "5s");
        assert_eq!(duration(125.0), "2m05s");
        assert_eq!(duration(7300.0), "2h01m");
        assert_eq!(signed_bytes(-2048.0), "-2.0 KiB");
    }

    #[test]
    fn the_table_names_processes_stacks_and_frames() {
        let q = LeaksQuery {
            pid: None,
            min_age: std::time::Duration::ZERO,
            since: None,
            limit: 1,
            format: Format::Text,
            at_peak: false,
            by_allocated: false,
            frames: Default::default(),
        };
        let text = render(&build(&fake_snapshot(), &q, 100_000_000_000, 5001.0).unwrap());
        assert!(
            text.contains("PID 42 (leaky)  live 3.0 KiB in 4 allocation(s)"),
            "{text}"
        );
        assert!(
            text.contains("#1      2.9 KiB in       3 allocation(s), oldest  1m30s  [malloc]"),
            "{text}"
        );
        assert!(text.contains("leak_here (/src/leaky.c:10)  [leaky]"), "{text}");
        assert!(text.contains("1 more stack(s)"), "{text}");
        assert!(text.contains("(stack not captured)"), "{text}");
        assert!(!text.contains("truncated"), "the first stack is whole: {text}");
        let q = LeaksQuery { limit: 2, ..q };
        let text = render(&build(&fake_snapshot(), &q, 100_000_000_000, 5001.0).unwrap());
        assert!(
            text.contains("cache_fill (/src/leaky.c:30)  [leaky]\n        … truncated: no frame pointer"),
            "{text}"
        );
    }
}

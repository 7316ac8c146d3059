//! `GET /oom` and `memwatch oom` as text: the OOM killer's victims, newest
//! first, each with what memwatch knew of it when it was killed.

use std::{fmt::Write as _, sync::Arc};

use super::text::{bytes, duration, place_line, render_growth_stacks, render_stacks};
use crate::collect::oom::OomKill;

pub fn render(kills: &[Arc<OomKill>], now_unix: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "memwatch: {} OOM kill(s) kept, newest first", kills.len());
    for k in kills {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "PID {} ({}) killed {} ago by {}  resident {}  heap {}",
            k.id.pid,
            k.id.comm,
            duration((now_unix - k.killed_unix).max(0.0)),
            match k.constraint {
                "cgroup" => "the OOM killer (its cgroup's limit)",
                "global" => "the OOM killer (the host out of memory)",
                _ => "systemd-oomd (memory pressure)",
            },
            bytes(k.resident_bytes),
            bytes(k.heap_bytes),
        );
        if !k.id.exe.is_empty() {
            let _ = writeln!(
                out,
                "  {}",
                if k.id.cmdline.is_empty() {
                    &k.id.exe
                } else {
                    &k.id.cmdline
                }
            );
        }
        if let Some(place) = place_line(&k.id.place, k.id.nspid) {
            let _ = writeln!(out, "  {place}");
        }
        if let Some(c) = &k.cgroup {
            let _ = writeln!(
                out,
                "  cgroup {} ({}): limit {}, usage {}, peak {}, {} OOM kill(s) there",
                c.cgroup,
                c.version,
                c.limit_bytes.map_or("none".into(), bytes),
                c.usage_bytes.map_or("?".into(), bytes),
                c.peak_bytes.map_or("?".into(), bytes),
                c.oom_kills.map_or("?".into(), |n| n.to_string()),
            );
        }
        if let (Some(first), Some(last)) = (k.curve.first(), k.curve.last()) {
            let span = (last.0 - first.0).max(0.0);
            let _ = writeln!(
                out,
                "  heap over the last {}: {} -> {} ({} samples)",
                duration(span),
                bytes(first.1),
                bytes(last.1),
                k.curve.len()
            );
        }
        if let Some(s) = &k.suspect {
            let _ = writeln!(
                out,
                "  a leak suspect ({}): growing {}/s, confidence {:.2}",
                s.alert.name(),
                bytes(s.rate_bytes_per_second.max(0.0) as u64),
                s.confidence
            );
        }
        if k.tracked {
            let _ = writeln!(
                out,
                "  tracked exactly: live {} in {} allocation(s) at the kill",
                bytes(k.live_bytes),
                k.live_allocations
            );
            render_stacks(&mut out, &k.stacks);
        } else if k.growth_stacks.is_empty() {
            let _ = writeln!(out, "  not tracked, and no address-space growth recorded");
        }
        render_growth_stacks(&mut out, &k.growth_stacks);
        if let Some(c) = &k.python_census {
            let types: Vec<String> = c
                .types
                .iter()
                .take(5)
                .map(|t| format!("{} {} ({})", t.name, t.count, bytes(t.bytes)))
                .collect();
            let _ = writeln!(
                out,
                "  its last Python census, {} before{}: {} objects; largest types: {}",
                duration((k.killed_unix - c.taken_unix).max(0.0)),
                if c.consistent { "" } else { " (partial)" },
                c.objects,
                types.join(", ")
            );
        }
    }
    out
}

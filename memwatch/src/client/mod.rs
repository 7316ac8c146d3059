//! `memwatch leaks` and `memwatch status`: talk to a running daemon over its
//! HTTP API and print tables (or the JSON, for scripts). `socket`: track and
//! untrack over its control socket.

pub mod args;
pub mod connect;
pub mod socket;

use std::fmt::Write as _;

use anyhow::Context;
pub use args::{ClientArgs, LeaksArgs, ObjectsArgs};
pub use connect::Daemon;

use crate::leaks::text::{bytes, duration};

/// The daemon `c` names, reached as its options and config say.
pub fn connect(c: &ClientArgs) -> anyhow::Result<Daemon> {
    let served = connect::served(c.config.as_deref())?;
    let target = connect::target(c.addr.as_deref(), c.cacert.as_deref(), &served)?;
    let credentials = connect::credentials(c.user.clone(), c.password_file.as_deref(), |k| std::env::var(k).ok())?;
    Daemon::new(target, credentials)
}

/// The filters of `memwatch leaks` as a query string.
fn query(r: &LeaksArgs) -> String {
    let mut q = Vec::new();
    if let Some(p) = r.pid {
        q.push(format!("pid={p}"));
    }
    if let Some(a) = r.min_age {
        q.push(format!("min_age={a}"));
    }
    if let Some(s) = r.since {
        q.push(format!("since={s}"));
    }
    if r.peak {
        q.push("at=peak".into());
    }
    if r.allocated {
        q.push("sort=allocated".into());
    }
    if let Some(l) = r.limit {
        q.push(format!("limit={l}"));
    }
    if let Some(f) = &r.frames {
        q.push(format!("frames={f}"));
    }
    q.join("&")
}

pub fn leaks(d: &Daemon, r: &LeaksArgs) -> anyhow::Result<()> {
    let q = query(r);
    if let Some(path) = &r.flamegraph {
        std::fs::write(path, d.get(&format!("/leaks/flamegraph.svg?{q}"))?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &r.pprof {
        std::fs::write(path, d.get(&format!("/leaks/pprof?{q}"))?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} (go tool pprof {})", path.display(), path.display());
    }
    if r.collapsed {
        print!("{}", String::from_utf8_lossy(&d.get(&format!("/leaks/collapsed?{q}"))?));
    } else if r.flamegraph.is_none() && r.pprof.is_none() {
        let format = if r.client.json { "json" } else { "text" };
        let sep = if q.is_empty() { "" } else { "&" };
        print!(
            "{}",
            String::from_utf8_lossy(&d.get(&format!("/leaks?{q}{sep}format={format}"))?)
        );
    }
    Ok(())
}

pub fn objects(d: &Daemon, a: &ObjectsArgs) -> anyhow::Result<()> {
    let mut q = format!("pid={}&format={}", a.pid, if a.client.json { "json" } else { "text" });
    if let Some(l) = a.limit {
        q += &format!("&limit={l}");
    }
    if let Some(g) = a.growth {
        q += &format!("&since={g}");
    }
    print!("{}", String::from_utf8_lossy(&d.get(&format!("/objects?{q}"))?));
    Ok(())
}

pub fn oom(d: &Daemon, json: bool) -> anyhow::Result<()> {
    let format = if json { "json" } else { "text" };
    print!("{}", String::from_utf8_lossy(&d.get(&format!("/oom?format={format}"))?));
    Ok(())
}

pub fn status(d: &Daemon, json: bool) -> anyhow::Result<()> {
    let body = d.get("/status")?;
    if json {
        print!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&body).context("the daemon's /status is not JSON")?;
    print!("{}", render_status(&d.target.base, &v, crate::process::unix_now()));
    Ok(())
}

/// The status document as a readable table.
pub fn render_status(addr: &str, v: &serde_json::Value, now: f64) -> String {
    let mut out = String::new();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let age = now - v["snapshot_unix"].as_f64().unwrap_or(now);
    let _ = writeln!(
        out,
        "memwatch {} at {addr}: {}, last scan {} ago",
        v["version"].as_str().unwrap_or("?"),
        if v["ready"] == true { "ready" } else { "starting" },
        duration(age),
    );
    let w = &v["watch"];
    if w["enabled"] == true {
        let _ = writeln!(
            out,
            "host-wide: watching {} processes, {} suspect(s), {} alert(s) fired, {} escalation(s) running",
            n(&w["watched_processes"]),
            n(&w["suspects"]),
            n(&w["alerts_fired_total"]),
            n(&w["escalations_running"]),
        );
    } else {
        let _ = writeln!(out, "host-wide detection: off");
    }
    let tracked = v["tracked_processes"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "tracked exactly: {} process(es), {} probes (placement {})",
        tracked.len(),
        n(&v["probes_attached"]),
        if v["placement"] == true { "on" } else { "off" },
    );
    if !tracked.is_empty() {
        let _ = writeln!(
            out,
            "  {:<8} {:<16} {:<10} {:>12} {:>12}",
            "PID", "COMM", "BY", "LIVE", "ALLOCATIONS"
        );
        for p in &tracked {
            let _ = writeln!(
                out,
                "  {:<8} {:<16} {:<10} {:>12} {:>12}",
                n(&p["pid"]),
                p["comm"].as_str().unwrap_or("?"),
                p["selection"]["by"].as_str().unwrap_or("?"),
                bytes(n(&p["live_bytes"])),
                n(&p["live_allocations"]),
            );
        }
    }
    let _ = writeln!(
        out,
        "maps: live table {}/{}, live {}/{}, stacks {}/{}",
        n(&v["live_table"]["entries"]),
        n(&v["live_table"]["capacity"]),
        n(&v["live_map"]["entries"]),
        n(&v["live_map"]["capacity"]),
        n(&v["stack_map"]["entries"]),
        n(&v["stack_map"]["capacity"]),
    );
    let lost: Vec<String> = v["kernel_events_lost"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, c)| n(c) > 0)
                .map(|(k, c)| format!("{k} {}", n(c)))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "kernel events lost: {}",
        if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join(", ")
        }
    );
    if let Some(f) = v["attach_failures"].as_array().filter(|f| !f.is_empty()) {
        let _ = writeln!(
            out,
            "attach failures ({}), latest: pid {}: {}",
            f.len(),
            n(&f[f.len() - 1]["pid"]),
            f[f.len() - 1]["error"].as_str().unwrap_or("?")
        );
    }
    if let Some(raced) = v["exited_before_attach_total"].as_u64().filter(|&r| r > 0) {
        let _ = writeln!(out, "exited while being attached (not failures): {raced}");
    }
    render_tracks(&mut out, v, now);
    out
}

/// The selections in force and the last reload.
fn render_tracks(out: &mut String, v: &serde_json::Value, now: f64) {
    let tracks = v["tracks"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "selected: {} track(s)", tracks.len());
    for t in &tracks {
        let what = match (t["pid"].as_u64(), t["exe"].as_str()) {
            (Some(p), _) => format!("pid {p}"),
            (None, Some(g)) => format!("--exe {g:?}"),
            _ => "?".into(),
        };
        let until = match t["until_unix"].as_f64() {
            Some(u) => format!(", ends in {}", duration((u - now).max(0.0))),
            None => String::new(),
        };
        let pids: Vec<String> = t["pids"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p.as_u64()).map(|p| p.to_string()).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {what:<24} from {}{until}; tracking {}",
            t["source"].as_str().unwrap_or("?"),
            if pids.is_empty() {
                "no process".to_string()
            } else {
                pids.join(", ")
            }
        );
    }
    if let Some(r) = v["last_reload"].as_object() {
        let _ = writeln!(
            out,
            "last reload {} ago: {}",
            duration((now - r["at_unix"].as_f64().unwrap_or(now)).max(0.0)),
            r["message"].as_str().unwrap_or("?")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_as_a_table() {
        let v = serde_json::json!({
            "version": "0.1.0", "ready": true, "snapshot_unix": 100.0,
            "tracked_processes": [{"pid": 42, "comm": "leaky", "selection": {"by": "pid"}, "live_bytes": 3072, "live_allocations": 3}],
            "probes_attached": 20, "placement": true,
            "live_table": {"entries": 2, "capacity": 4096}, "live_map": {"entries": 3, "capacity": 1024}, "stack_map": {"entries": 1, "capacity": 256},
            "kernel_events_lost": {"live_map_full": 2, "stale_call": 0},
            "attach_failures": [{"pid": 7, "error": "process 7 does not exist", "at_unix": 99.0}],
            "exited_before_attach_total": 5,
            "tracks": [{"pid": 42, "source": "control", "since_unix": 90.0, "until_unix": 112.0, "pids": [42]},
                       {"exe": "redis*", "source": "config", "since_unix": 1.0, "until_unix": null, "pids": []}],
            "last_reload": {"at_unix": 101.0, "applied": false, "message": "invalid value for `listen`"},
            "watch": {"enabled": true, "watched_processes": 150, "suspects": 1, "alerts_fired_total": 2, "escalations_running": 0},
        });
        let t = render_status("127.0.0.1:9477", &v, 102.0);
        assert!(
            t.starts_with("memwatch 0.1.0 at 127.0.0.1:9477: ready, last scan 2s ago"),
            "{t}"
        );
        assert!(t.contains("watching 150 processes, 1 suspect(s)"), "{t}");
        assert!(t.contains("  42       leaky            pid"), "{t}");
        assert!(t.contains("3.0 KiB"), "{t}");
        assert!(t.contains("kernel events lost: live_map_full 2\n"), "{t}");
        assert!(t.contains("attach failures (1), latest: pid 7"), "{t}");
        assert!(t.contains("exited while being attached (not failures): 5"), "{t}");
        assert!(t.contains("selected: 2 track(s)"), "{t}");
        assert!(
            t.contains("pid 42                   from control, ends in 10s; tracking 42"),
            "{t}"
        );
        assert!(t.contains("  --exe \"redis*\" "), "{t}");
        assert!(t.contains(" from config; tracking no process\n"), "{t}");
        assert!(t.contains("last reload 1s ago: invalid value for `listen`"), "{t}");
    }

    /// `memwatch leaks ARGS` as the client receives it.
    fn leaks_args(args: &[&str]) -> Result<LeaksArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Leaks {
            #[command(flatten)]
            args: LeaksArgs,
        }
        use clap::Parser;
        Leaks::try_parse_from(std::iter::once("leaks").chain(args.iter().copied())).map(|l| l.args)
    }

    #[test]
    fn the_query_carries_the_filters() {
        let r = leaks_args(&["--pid", "5", "--min-age", "1.5", "--limit", "3"]).unwrap();
        assert_eq!(query(&r), "pid=5&min_age=1.5&limit=3");
        assert_eq!(query(&leaks_args(&["--since", "60"]).unwrap()), "since=60");
        assert_eq!(query(&leaks_args(&["--frames", "all"]).unwrap()), "frames=all");
        assert!(leaks_args(&["--frames", "some"]).is_err());
    }

    #[test]
    fn an_absent_daemon_is_explained() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = connect::target(Some(&format!("127.0.0.1:{port}")), None, &Default::default()).unwrap();
        let e = Daemon::new(target, None).unwrap().get("/status").unwrap_err();
        assert!(format!("{e:#}").contains("is the daemon running?"), "{e:#}");
    }
}

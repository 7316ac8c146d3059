//! Steering a running daemon: `memwatch track` and `untrack` over the
//! control socket, tracks that end by themselves, who may steer, and SIGHUP
//! re-reading the config. Each daemon starts with nothing selected (or
//! only what its config names) and its own control socket.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::*;

fn socket(name: &str) -> PathBuf {
    let s = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("control-{name}.sock"));
    let _ = std::fs::remove_file(&s);
    s
}

/// `memwatch ARGS --socket SOCKET`: exit code, stdout, stderr.
fn steer(socket: &Path, args: &[&str]) -> (i32, String, String) {
    steer_as(socket, args, &[])
}

/// As [`steer`], run through `wrapper` (setpriv, to be another user).
fn steer_as(socket: &Path, args: &[&str], wrapper: &[&str]) -> (i32, String, String) {
    let mut cmd = match wrapper {
        [] => Command::new(env!("CARGO_BIN_EXE_memwatch")),
        [w, rest @ ..] => {
            let mut c = Command::new(w);
            c.args(rest).arg(env!("CARGO_BIN_EXE_memwatch"));
            c
        }
    };
    let out = cmd.args(args).arg("--socket").arg(socket).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn start(config: &str, socket: &Path) -> Daemon {
    Daemon::start(config, &["--control-socket", socket.to_str().unwrap()])
}

/// The `/status` entry of a tracked process, if it is tracked.
fn tracked(d: &Daemon, pid: u32) -> Option<serde_json::Value> {
    d.json("/status")["tracked_processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .cloned()
}

/// Every leak of leaker.c at its site, exactly: bytes and count.
fn assert_exact_leaks(p: &serde_json::Value) {
    for (function, size) in LEAKS {
        let stacks = stacks_at(p, function);
        let bytes: u64 = stacks.iter().map(|s| s["live_bytes"].as_u64().unwrap()).sum();
        let count: u64 = stacks.iter().map(|s| s["live_allocations"].as_u64().unwrap()).sum();
        assert_eq!(
            (bytes, count),
            (size * LEAKS_PER_KIND, LEAKS_PER_KIND),
            "{function}: {p:#}"
        );
    }
}

fn runs(d: &Daemon, program: &str) -> f64 {
    d.metric(&format!("memwatch_bpf_program_runs_total{{program=\"{program}\"}}"))
        .unwrap_or(0.0)
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn track_and_untrack_a_running_process() {
    require_root();
    // The kernel counts program runs only with its statistics on: they show
    // that an untracked process no longer enters memwatch's programs.
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let s = socket("track");
    let d = start(FAST, &s);
    let mut fx = Fixture::start(&[]);
    let pid = fx.pid.to_string();
    assert!(tracked(&d, fx.pid).is_none());

    let (code, out, err) = steer(&s, &["track", &pid]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("tracking process {pid} (leaker)")), "{out}");
    assert_eq!(tracked(&d, fx.pid).unwrap()["selection"]["by"], "pid");
    let tracks = d.json("/control/tracks");
    assert_eq!(tracks[0]["pid"], fx.pid, "{tracks:#}");
    assert_eq!(tracks[0]["source"], "control", "{tracks:#}");
    let counts = fx.go();
    assert!(counts.leaked_bytes > 0);
    d.wait_for_fresh_scan();
    let leaks = d.json(&format!("/leaks?pid={pid}"));
    assert_exact_leaks(&leaks["processes"][0]);
    assert_eq!(
        d.metric("memwatch_control_requests_total{request=\"track\",result=\"ok\"}"),
        Some(1.0)
    );

    let (code, out, err) = steer(&s, &["untrack", &pid]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("stopped tracking process {pid}")), "{out}");
    assert!(tracked(&d, fx.pid).is_none());
    let status = d.json("/status");
    assert_eq!(status["probes_attached"], 0, "{status:#}");
    assert_eq!(status["tracks"], serde_json::json!([]), "{status:#}");
    // What it found stays in the report, said to be ended.
    let leaks = d.json(&format!("/leaks?pid={pid}"));
    let ended = &leaks["ended"][0];
    assert_eq!(ended["pid"], fx.pid, "{leaks:#}");
    assert_eq!(ended["ended"]["why"], "untracked by request", "{ended:#}");
    assert_exact_leaks(ended);
    let (_, text) = d.get_with(&format!("/leaks?pid={pid}"), Some("text/plain"));
    assert!(
        text.contains("TRACKING ENDED") && text.contains("untracked by request"),
        "{text}"
    );

    // Its allocations no longer enter memwatch's programs: a new image's
    // whole workload runs without a probe hit.
    let before = runs(&d, "alloc_enter");
    assert!(before >= counts.allocations as f64, "runs {before}: are bpf stats on?");
    fx.exec();
    let again = fx.go();
    assert!(again.allocations > 10_000);
    d.wait_for_fresh_scan();
    assert_eq!(runs(&d, "alloc_enter"), before, "probes still hit after untrack");

    // Untracking what is not tracked says so and fails.
    let (code, _, err) = steer(&s, &["untrack", &pid]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("process {pid} is not tracked")), "{err}");
    let (code, _, err) = steer(&s, &["track", "999999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot track process 999999999"), "{err}");
    assert!(d.json("/status")["tracks"].as_array().unwrap().is_empty());
    assert!(fx.exit().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_track_for_a_while_ends_by_itself_and_its_stacks_stay() {
    require_root();
    let s = socket("for");
    let d = start(FAST, &s);
    let mut fx = Fixture::start(&[]);
    let pid = fx.pid.to_string();
    let (code, out, err) = steer(&s, &["track", &pid, "--for", "4s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("for 4s"), "{out}");
    let until = d.json("/status")["tracks"][0]["until_unix"].as_f64().unwrap();
    assert!(until > 0.0);
    fx.go();
    d.wait_for("the track to end", Duration::from_secs(15), || {
        tracked(&d, fx.pid).is_none()
    });
    let leaks = d.json(&format!("/leaks?pid={pid}"));
    let ended = &leaks["ended"][0];
    assert_eq!(ended["ended"]["why"], "its track's time is up", "{leaks:#}");
    assert!(ended["ended"]["at_unix"].as_f64().unwrap() >= until - 0.5, "{ended:#}");
    assert_exact_leaks(ended);
    assert_eq!(d.json("/status")["probes_attached"], 0);
    assert!(fx.exit().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_glob_tracked_at_run_time_follows_new_processes_until_untracked() {
    require_root();
    let s = socket("glob");
    let d = start(FAST, &s);
    let mut first = Fixture::start_renamed("ctl-glob-a", &[]);
    let (code, out, err) = steer(&s, &["track", "--exe", "ctl-glob-*"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 process(es) now"), "{out}");
    // One started afterwards is tracked at its exec.
    let mut second = Fixture::start_renamed("ctl-glob-b", &[]);
    d.wait_tracked(second.pid);
    second.go();
    d.wait_for_fresh_scan();
    assert_exact_leaks(&d.json(&format!("/leaks?pid={}", second.pid))["processes"][0]);
    // One of them untracked by pid stays untracked though the glob matches it.
    let (code, out, err) = steer(&s, &["untrack", &first.pid.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    d.wait_for_fresh_scan();
    d.wait_for_fresh_scan();
    assert!(tracked(&d, first.pid).is_none());
    let (code, out, err) = steer(&s, &["untrack", "--exe", "ctl-glob-*"]);
    assert_eq!(code, 0, "{out}{err}");
    let status = d.json("/status");
    assert_eq!(status["tracked_processes"], serde_json::json!([]), "{status:#}");
    assert_eq!(status["probes_attached"], 0);
    let (code, _, err) = steer(&s, &["untrack", "--exe", "ctl-glob-*"]);
    assert_eq!((code, err.contains("no track --exe")), (1, true), "{err}");
    first.go();
    assert!(first.exit().success() && second.exit().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn only_root_the_control_group_and_authenticated_http_clients_may_steer() {
    require_root();
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    let fx = Fixture::start(&[]);
    let pid = fx.pid.to_string();

    // The default: a socket only root may open.
    let s = socket("root-only");
    let d = start(FAST, &s);
    let (code, _, err) = steer_as(&s, &["track", &pid], &nobody);
    assert_eq!(code, 1);
    assert!(err.contains("permission denied"), "{err}");
    drop(d);

    // A control group: anyone may connect, only its members are served.
    let s = socket("group");
    let d = start(&format!("{FAST}[control]\ngroup = \"adm\"\n"), &s);
    let (code, _, err) = steer_as(&s, &["track", &pid], &nobody);
    assert_eq!(code, 1);
    assert!(
        err.contains("may not control memwatch") && err.contains("\"adm\""),
        "{err}"
    );
    assert!(tracked(&d, fx.pid).is_none());
    let member = ["setpriv", "--reuid=65534", "--regid=65534", "--groups=4"];
    let (code, out, err) = steer_as(&s, &["track", &pid], &member);
    assert_eq!(code, 0, "{out}{err}");
    assert!(tracked(&d, fx.pid).is_some());
    // Unauthenticated HTTP may read but not steer.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .post(format!("http://{}/control/untrack", d.addr))
        .content_type("application/json")
        .send(format!("{{\"pid\": {pid}}}"))
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.body_mut().read_to_string().unwrap().contains("basic auth"));
    assert!(tracked(&d, fx.pid).is_some());
    drop(d);

    // Behind basic auth, HTTP may steer: 401 without the password.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let web = dir.join("control-web.yml");
    let hash = bcrypt::hash("steer-secret", 8).unwrap();
    std::fs::write(&web, format!("basic_auth_users:\n  ops: {hash}\n")).unwrap();
    let s = socket("auth");
    let d = Daemon::spawn(
        FAST,
        &[
            "--control-socket",
            s.to_str().unwrap(),
            "--web-config-file",
            web.to_str().unwrap(),
        ],
        &[],
        &[],
    );
    let post = |auth: Option<&str>| {
        let mut req = agent
            .post(format!("http://{}/control/track", d.addr))
            .content_type("application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send(format!("{{\"pid\": {pid}, \"for_seconds\": 60}}"))
    };
    d.wait_for("the daemon to answer", Duration::from_secs(30), || {
        post(None).is_ok_and(|r| r.status() == 401)
    });
    use base64::Engine as _;
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("ops:steer-secret")
    );
    let mut resp = post(Some(&good)).unwrap();
    let body = resp.body_mut().read_to_string().unwrap();
    assert_eq!(resp.status(), 200, "{body}");
    assert!(body.contains(&format!("tracking process {pid}")), "{body}");
    drop(fx);
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn sighup_applies_a_new_selection_without_detaching_and_refuses_a_broken_config() {
    require_root();
    let s = socket("hup");
    let config = |globs: &str| format!("{FAST}[track]\nexe = [{globs}]\n");
    let d = start(&config("\"ctl-hup-a\""), &s);
    let a = Fixture::start_renamed("ctl-hup-a", &[]);
    d.wait_tracked(a.pid);
    let since = |d: &Daemon| d.json(&format!("/leaks?pid={}", a.pid))["processes"][0]["tracked_since_unix"].clone();
    let before = since(&d);
    assert!(before.as_f64().is_some());
    let b = Fixture::start_renamed("ctl-hup-b", &[]);
    let hup = |d: &Daemon| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    };
    let last_reload = |d: &Daemon| d.json("/status")["last_reload"].clone();

    // A new glob: the new process tracked, the old one kept as it was.
    std::fs::write(&d.config, config("\"ctl-hup-a\", \"ctl-hup-b\"")).unwrap();
    hup(&d);
    d.wait_tracked(b.pid);
    d.wait_for("the reload's outcome", Duration::from_secs(10), || {
        last_reload(&d)["applied"] == true
    });
    assert_eq!(since(&d), before, "the process selected before was tracked afresh");
    let reload = last_reload(&d);
    assert!(reload["message"].as_str().unwrap().contains("2 glob(s)"), "{reload:#}");

    // A broken config changes nothing and says why.
    std::fs::write(&d.config, format!("{FAST}[track]\nexe = 3\n")).unwrap();
    hup(&d);
    d.wait_for("the refusal", Duration::from_secs(10), || {
        last_reload(&d)["applied"] == false
    });
    let reload = last_reload(&d);
    let why = reload["message"].as_str().unwrap();
    assert!(
        why.contains("the one in force stays") && why.contains("exe"),
        "{reload:#}"
    );
    assert!(tracked(&d, a.pid).is_some() && tracked(&d, b.pid).is_some());
    assert_eq!(d.metric("memwatch_config_reloads_total{result=\"refused\"}"), Some(1.0));
    assert_eq!(d.metric("memwatch_config_reloads_total{result=\"applied\"}"), Some(1.0));

    // A glob dropped: its process is untracked; a key that needs a restart
    // is named and left as it was.
    std::fs::write(&d.config, format!("{}[maps]\nstacks = 4096\n", config("\"ctl-hup-b\""))).unwrap();
    hup(&d);
    d.wait_for("a to be untracked", Duration::from_secs(10), || {
        tracked(&d, a.pid).is_none()
    });
    // The outcome is recorded once the collector has answered, which may
    // come after the scan that shows the change.
    d.wait_for("the reload's outcome", Duration::from_secs(10), || {
        last_reload(&d)["applied"] == true
    });
    assert!(tracked(&d, b.pid).is_some());
    let reload = last_reload(&d);
    assert!(
        reload["message"]
            .as_str()
            .unwrap()
            .contains("applied only at a restart: maps"),
        "{reload:#}"
    );
    let ended = &d.json(&format!("/leaks?pid={}", a.pid))["ended"][0];
    assert_eq!(
        ended["ended"]["why"], "it is no longer selected by the config",
        "{ended:#}"
    );
}

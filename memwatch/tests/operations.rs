//! The operational surface against the real tools: systemd-analyze, promtool,
//! a Prometheus server, `go tool pprof`, the CLI, the installer and the
//! Kubernetes manifest. `cargo xtask test` installs the tools (Debian's
//! systemd, prometheus and golang-go).

mod common;

use std::{
    io::Write,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The unit with ExecStart pointing at the binary under test (verify checks
/// that the executable exists).
fn unit_under_test() -> PathBuf {
    let unit = std::fs::read_to_string(repo("deploy/systemd/memwatch.service")).unwrap();
    let dir = tmp("unit");
    let path = dir.join("memwatch.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/memwatch", env!("CARGO_BIN_EXE_memwatch")),
    )
    .unwrap();
    path
}

#[test]
#[ignore = "needs systemd-analyze; run with `cargo xtask test`"]
fn the_systemd_unit_verifies_and_its_exposure_is_low() {
    let unit = unit_under_test();
    let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let (_, out) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit));
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for memwatch.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {out}"));
    eprintln!("systemd-analyze security --offline=yes: exposure {score}");
    assert!(score <= 4.0, "exposure {score} > 4.0");
}

fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(repo("deploy/systemd/memwatch.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// An unprivileged system user for the test, removed again when dropped.
struct ServiceUser(String);

impl ServiceUser {
    fn create() -> ServiceUser {
        let user = format!("mw-test-{}", std::process::id());
        let (ok, out) =
            run(Command::new("useradd").args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", &user]));
        assert!(ok, "useradd: {out}");
        ServiceUser(user)
    }
}

impl Drop for ServiceUser {
    fn drop(&mut self) {
        let (ok, out) = run(Command::new("userdel").arg(&self.0));
        if !ok {
            eprintln!("userdel {}: {out}", self.0);
        }
    }
}

/// setpriv arguments running as an unprivileged user with just `caps`, as
/// DynamicUser= and AmbientCapabilities= do.
fn as_service_user(user: &ServiceUser, caps: &[String]) -> Vec<String> {
    let user = &user.0;
    let set = format!(
        "-all,{}",
        caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",")
    );
    vec![
        "setpriv".into(),
        format!("--reuid={user}"),
        format!("--regid={user}"),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
    ]
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    require_root();
    let caps = unit_capabilities();
    assert!(!caps.is_empty());
    // A root process, watched by a non-root daemon with just the unit's set.
    let mut fx = Fixture::start(&[]);
    let user = ServiceUser::create();
    let wrapper = as_service_user(&user, &caps);
    let w: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let d = Daemon::start_as(FAST, &["--pid", &fx.pid.to_string()], &w, &[]);
    d.wait_tracked(fx.pid);
    fx.go();
    d.wait_for_fresh_scan();
    let leaks = d.json(&format!("/leaks?pid={}", fx.pid));
    let p = &leaks["processes"][0];
    assert_eq!(
        stacks_at(p, "leak_with_malloc").len(),
        1,
        "symbolized leak stacks with {caps:?}: {p:#}"
    );
    drop(d);

    // Without any one of them, it cannot do its job.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| c != &missing).cloned().collect();
        let wrapper = as_service_user(&user, &fewer);
        let config = tmp(&format!("cap-{missing}")).join("memwatch.toml");
        std::fs::write(&config, FAST).unwrap();
        let port = free_port();
        let mut child = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(env!("CARGO_BIN_EXE_memwatch"))
            .args(["run", "--config"])
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--pid", &fx.pid.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tracked = false;
        while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            if agent
                .get(format!("http://127.0.0.1:{port}/leaks?pid={}", fx.pid))
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                tracked = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            !tracked,
            "tracking worked without CAP_{}: the unit asks for more than it needs",
            missing.to_uppercase()
        );
    }
    assert!(fx.exit().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn it_tells_systemd_ready_watchdog_and_stopping() {
    require_root();
    let dir = tmp("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let sock = socket_path.to_str().unwrap().to_string();
    // systemd sets WATCHDOG_PID to the service's main pid: exec keeps the
    // shell's pid for memwatch.
    let wrapper = ["sh", "-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""];
    let d = Daemon::start_as(
        FAST,
        &[],
        &wrapper,
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "2000000")],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.iter().any(|m: &String| m.contains("READY=1")) && seen.iter().any(|m| m.contains("WATCHDOG=1"))) {
        assert!(Instant::now() < deadline, "no READY and WATCHDOG: {seen:?}");
        let n = socket.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        seen.iter().any(|m| m.contains("STATUS=tracking 0 process(es) exactly")),
        "{seen:?}"
    );
    let status = d.stop();
    assert!(status.success());
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1");
}

#[test]
#[ignore = "needs promtool and eBPF; run with `cargo xtask test`"]
fn promtool_accepts_the_rules_config_and_live_metrics() {
    require_root();
    let dir = repo("deploy/prometheus");
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules", "memwatch.rules.yml"])
        .current_dir(&dir));
    assert!(ok, "{out}");
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules", "memwatch.rules.test.yml"])
        .current_dir(&dir));
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
    assert!(ok, "{out}");

    let mut fx = Fixture::start(&[]);
    let d = Daemon::start(WATCH_NO_ESCALATION, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    fx.go();
    d.wait_for_fresh_scan();
    let (_, metrics) = d.get("/metrics");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
    assert!(fx.exit().success());
}

/// Metric names an expression refers to (memwatch's own and recording rules').
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("memwatch") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b':') {
            end += 1;
        }
        let prefix_ok = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if prefix_ok && end > start + "memwatch".len() {
            out.push(expr[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/dashboards/memwatch.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&v, &mut exprs);
    exprs
}

fn query(prom: &str, q: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut resp = agent
        .get(format!("http://{prom}/api/v1/query"))
        .query("query", q)
        .call()
        .unwrap();
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

fn wait_ready(prom: &str) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent
        .get(format!("http://{prom}/-/ready"))
        .call()
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "Prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A real Prometheus on loopback with `dir/prometheus.yml`, ready; killed
/// when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path) -> Prometheus {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        let p = Prometheus { child, addr };
        wait_ready(&p.addr);
        p
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs Prometheus and eBPF; run with `cargo xtask test`"]
fn prometheus_scrapes_memwatch_and_the_dashboard_queries_work() {
    require_root();
    let mut fx = Fixture::start(&[]);
    let d = Daemon::start(
        &WATCH_NO_ESCALATION.replace("0.2", "0.5"),
        &["--pid", &fx.pid.to_string()],
    );
    d.wait_tracked(fx.pid);
    fx.go();
    d.wait_for_fresh_scan();

    // A real Prometheus on loopback, scraping memwatch every second, with
    // the shipped rules.
    let dir = tmp("prometheus");
    std::fs::copy(
        repo("deploy/prometheus/memwatch.rules.yml"),
        dir.join("memwatch.rules.yml"),
    )
    .unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [memwatch.rules.yml]\nscrape_configs:\n  - job_name: memwatch\n    static_configs:\n      - targets: [\"{}\"]\n",
        d.addr
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let server = Prometheus::start(&dir);
    let prom = server.addr.clone();

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = query(&prom, "memwatch_allocations_total{allocator=\"libc\"}");
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["value"][1].as_str().is_some_and(|v| v != "0")))
        {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never got memwatch's series: {r}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let watched = query(&prom, "memwatch_processes_watched");
    assert_eq!(watched["data"]["result"][0]["metric"]["job"], "memwatch", "{watched}");
    // Recording rules evaluate over what was scraped.
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(&prom, "memwatch:allocations:rate5m")["data"]["result"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(Instant::now() < deadline, "the recording rule never produced data");
        std::thread::sleep(Duration::from_secs(1));
    }

    // Every dashboard query is valid PromQL that Prometheus evaluates, and
    // names only metrics memwatch exports or the rules record.
    let (_, exposition) = d.get("/metrics");
    let exported: std::collections::HashSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let rules = std::fs::read_to_string(repo("deploy/prometheus/memwatch.rules.yml")).unwrap();
    let recorded: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_string)
        .collect();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                exported.contains(&name) || recorded.contains(&name),
                "dashboard query uses {name}, which memwatch does not export: {e}"
            );
        }
        let q = e.replace("$instance", ".*").replace("$__rate_interval", "1m");
        let r = query(&prom, &q);
        assert_eq!(r["status"], "success", "dashboard query {q}: {r}");
    }
    // The alert rules, likewise.
    for line in rules.lines().filter(|l| l.contains("memwatch_")) {
        for name in metric_names(line) {
            assert!(
                exported.contains(&name) || recorded.contains(&name),
                "a rule uses {name}: {line}"
            );
        }
    }
    assert!(fx.exit().success());
}

/// `curl` over HTTPS trusting `ca`: the status code and the body.
fn curl(url: &str, ca: &Path, user: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca);
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let out = cmd.arg(url).output().expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The exporters' web config: a Prometheus `scrape_config` with `tls_config`
/// and `basic_auth` scrapes memwatch unchanged; a wrong password gets 401.
#[test]
#[ignore = "needs Prometheus and eBPF; run with `cargo xtask test`"]
fn prometheus_scrapes_over_tls_with_basic_auth_and_a_wrong_password_gets_401() {
    require_root();
    let dir = tmp("tls");
    let (cert, _key) = self_signed_cert(&dir);
    let hash = bcrypt::hash("scrape-secret", 8).unwrap();
    let web = dir.join("web.yml");
    // Relative paths: resolved against the web config's directory.
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: memwatch.crt\n  key_file: memwatch.key\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .unwrap();
    let mut d = Daemon::spawn(FAST, &["--web-config-file", web.to_str().unwrap()], &[], &[]);
    let port = d.addr.rsplit(':').next().unwrap().to_string();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&url("/healthz"), &cert, None).0 != 200 {
        d.assert_running();
        assert!(Instant::now() < deadline, "memwatch never served /healthz over TLS");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Liveness probes need no password; everything else does.
    assert_eq!(curl(&url("/metrics"), &cert, None).0, 401);
    let (code, body) = curl(&url("/leaks"), &cert, Some("prometheus:wrong"));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("wrong user name or password"), "{body}");
    assert_eq!(curl(&url("/metrics"), &cert, Some("intruder:scrape-secret")).0, 401);
    let (code, body) = curl(&url("/metrics"), &cert, Some("prometheus:scrape-secret"));
    assert_eq!(code, 200);
    assert!(body.contains("memwatch_build_info"), "{body}");
    // Plain HTTP on the TLS port gets nothing.
    assert_ne!(d.get("/healthz").0, 200);

    // The CLI over HTTPS: the CA and the credentials given (the password
    // never on the command line), or found in the daemon's own config.
    let https = format!("https://localhost:{port}");
    let ca = cert.to_str().unwrap();
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_memwatch"))
            .args(args)
            .env_remove("MEMWATCH_USER")
            .env_remove("MEMWATCH_PASSWORD")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &err,
        )
    };
    let creds = [("MEMWATCH_USER", "prometheus"), ("MEMWATCH_PASSWORD", "scrape-secret")];
    let (ok, out) = cli(&["status", "--addr", &https, "--cacert", ca], &creds);
    assert!(ok && out.contains(&https), "{out}");
    let (ok, out) = cli(&["leaks", "--addr", &https, "--cacert", ca, "--json"], &creds);
    assert!(ok && out.contains("\"processes\""), "{out}");
    let (ok, out) = cli(&["status", "--addr", &https, "--cacert", ca], &[]);
    assert!(
        !ok && out.contains("asks for basic auth") && out.contains("MEMWATCH_PASSWORD"),
        "{out}"
    );
    let (ok, out) = cli(
        &["status", "--addr", &https, "--cacert", ca],
        &[("MEMWATCH_USER", "prometheus"), ("MEMWATCH_PASSWORD", "guessed")],
    );
    assert!(!ok && out.contains("401"), "{out}");
    // The daemon's certificate is checked: unknown to the public roots.
    let (ok, out) = cli(&["status", "--addr", &https], &creds);
    assert!(!ok && out.contains("cannot reach memwatch"), "{out}");
    let password = dir.join("password");
    std::fs::write(&password, "scrape-secret\n").unwrap();
    let (ok, out) = cli(
        &[
            "status",
            "--addr",
            &https,
            "--cacert",
            ca,
            "--user",
            "prometheus",
            "--password-file",
        ],
        &[],
    );
    assert!(!ok, "--password-file takes a file: {out}");
    let (ok, out) = cli(
        &[
            "status",
            "--addr",
            &https,
            "--cacert",
            ca,
            "--user",
            "prometheus",
            "--password-file",
            password.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{out}");
    // On the daemon's host its config says where and how: HTTPS, its
    // certificate as the CA.
    let own = dir.join("memwatch.toml");
    std::fs::write(
        &own,
        format!(
            "listen = \"127.0.0.1:{port}\"\nweb_config_file = \"{}\"\n",
            web.display()
        ),
    )
    .unwrap();
    let (ok, out) = cli(&["status", "--config", own.to_str().unwrap()], &creds);
    assert!(ok && out.contains(&format!("https://127.0.0.1:{port}")), "{out}");

    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n\
         \x20 - job_name: memwatch\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n\
         \x20   basic_auth:\n      username: prometheus\n      password: scrape-secret\n\
         \x20   static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n\
         \x20 - job_name: memwatch_wrong_password\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n\
         \x20   basic_auth:\n      username: prometheus\n      password: guessed\n\
         \x20   static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n",
        ca = cert.display()
    );
    std::fs::write(dir.join("prometheus.yml"), &config).unwrap();
    let (ok, out) = run(Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(dir.join("prometheus.yml")));
    assert!(ok, "{out}\n{config}");
    let server = Prometheus::start(&dir);
    let prom = server.addr.clone();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let targets: serde_json::Value = serde_json::from_str(
            &agent
                .get(format!("http://{prom}/api/v1/targets"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap(),
        )
        .unwrap();
        let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        let job = |name: &str| active.iter().find(|t| t["labels"]["job"] == name).cloned();
        if let (Some(good), Some(bad)) = (job("memwatch"), job("memwatch_wrong_password"))
            && good["health"] == "up"
            && bad["health"] == "down"
        {
            let error = bad["lastError"].as_str().unwrap_or_default();
            assert!(error.contains("401"), "{bad}");
            break;
        }
        assert!(Instant::now() < deadline, "targets never settled: {targets}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = query(&prom, "memwatch_build_info");
    let jobs: Vec<&str> = r["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str())
        .collect();
    assert_eq!(jobs, ["memwatch"], "{r}");
    assert!(d.stop().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn the_cli_reports_from_a_running_daemon_with_pictures() {
    require_root();
    let mut fx = Fixture::start(&[]);
    let d = Daemon::start(FAST, &["--pid", &fx.pid.to_string()]);
    d.wait_tracked(fx.pid);
    fx.go();
    d.wait_for_fresh_scan();
    let pid = fx.pid.to_string();

    let (code, err, out) = memwatch(&["status", "--addr", &d.addr]);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("tracked exactly: 1 process(es), 20 probes (placement on)") && out.contains(&pid),
        "{out}"
    );
    let (_, _, out) = memwatch(&["status", "--addr", &d.addr, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["tracked_processes"][0]["live_bytes"], 1_000_000);

    let (code, _, out) = memwatch(&["leaks", "--addr", &d.addr, "--pid", &pid, "--limit", "4"]);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 0);
    assert!(
        text.contains(&format!("PID {pid} (leaker)")) && text.contains("leak_with_malloc ("),
        "{text}"
    );
    let (_, _, out) = memwatch(&["leaks", "--addr", &d.addr, "--pid", &pid, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["processes"][0]["live_bytes"], 1_000_000);
    let (_, _, out) = memwatch(&["leaks", "--addr", &d.addr, "--pid", &pid, "--collapsed"]);
    let collapsed = String::from_utf8(out).unwrap();
    let line = collapsed
        .lines()
        .find(|l| l.contains(";leak_with_malloc "))
        .expect("a collapsed leak_with_malloc stack");
    assert!(
        line.starts_with(&format!("leaker ({pid});")) && line.ends_with(" 400000"),
        "{line}"
    );

    let dir = tmp("pictures");
    let (svg, pprof) = (dir.join("heap.svg"), dir.join("heap.pb.gz"));
    let (code, err, _) = memwatch(&[
        "leaks",
        "--addr",
        &d.addr,
        "--pid",
        &pid,
        "--flamegraph",
        svg.to_str().unwrap(),
        "--pprof",
        pprof.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("leak_with_malloc"));
    // go tool pprof reads it as a heap profile.
    let (ok, top) = run(Command::new("go")
        .args(["tool", "pprof", "-top", "-symbolize=none", "-sample_index=inuse_space"])
        .arg(&pprof));
    assert!(ok, "go tool pprof: {top}");
    assert!(
        top.contains("leak_with_malloc") && top.contains("Type: inuse_space"),
        "{top}"
    );
    let line = top
        .lines()
        .find(|l| l.trim_end().ends_with("leak_with_malloc"))
        .unwrap();
    assert!(
        line.contains("390.62kB") || line.contains("0.38MB") || line.contains("400000"),
        "{line}"
    );

    // Errors reach the user as messages and a non-zero exit.
    let (code, err, _) = memwatch(&["leaks", "--addr", &d.addr, "--pid", "999999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("not tracked"), "{err}");
    let (code, err, _) = memwatch(&["status", "--addr", &format!("127.0.0.1:{}", free_port())]);
    assert_eq!(code, 1);
    assert!(err.contains("is the daemon running?"), "{err}");
    assert!(fx.exit().success());
}

#[test]
fn the_installer_puts_files_where_a_host_expects_them() {
    // An unpacked tarball, as `cargo xtask dist` lays it out.
    let stage = tmp("stage");
    let deploy = repo("deploy");
    for (to, from) in [
        ("bin/memwatch", PathBuf::from(env!("CARGO_BIN_EXE_memwatch"))),
        ("etc/memwatch/memwatch.toml", deploy.join("memwatch.toml")),
        ("systemd/memwatch.service", deploy.join("systemd/memwatch.service")),
        ("install.sh", deploy.join("install.sh")),
        ("README.md", repo("README.md")),
    ] {
        std::fs::create_dir_all(stage.join(to).parent().unwrap()).unwrap();
        std::fs::copy(from, stage.join(to)).unwrap();
    }
    for dir in ["prometheus", "grafana", "kubernetes"] {
        assert!(run(Command::new("cp").arg("-R").arg(deploy.join(dir)).arg(&stage)).0);
    }
    let root = tmp("root");
    let (ok, out) = run(Command::new("sh").arg(stage.join("install.sh")).env("DESTDIR", &root));
    assert!(ok, "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/local/bin/memwatch"), 0o755);
    assert_eq!(mode("etc/memwatch/memwatch.toml"), 0o644);
    assert_eq!(mode("etc/systemd/system/memwatch.service"), 0o644);
    assert!(
        root.join("usr/local/share/memwatch/prometheus/memwatch.rules.yml")
            .exists()
    );
    assert!(
        root.join("usr/local/share/memwatch/grafana/dashboards/memwatch.json")
            .exists()
    );
    assert!(root.join("usr/local/share/doc/memwatch/README.md").exists());
    // The installed binary runs and accepts the installed config.
    let (code, err, _) = memwatch(&[
        "leaks",
        "--config",
        root.join("etc/memwatch/memwatch.toml").to_str().unwrap(),
        "--addr",
        "127.0.0.1:1",
    ]);
    assert_eq!(code, 1, "{err}");
    // A second install keeps the operator's config.
    std::fs::write(root.join("etc/memwatch/memwatch.toml"), "listen = \"127.0.0.1:1\"\n").unwrap();
    let (ok, out) = run(Command::new("sh").arg(stage.join("install.sh")).env("DESTDIR", &root));
    assert!(ok && out.contains("kept /etc/memwatch/memwatch.toml"), "{out}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/memwatch/memwatch.toml")).unwrap(),
        "listen = \"127.0.0.1:1\"\n"
    );
    assert!(root.join("etc/memwatch/memwatch.toml.new").exists());
}

#[test]
fn the_kubernetes_manifest_fits_the_daemon() {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs =
        YamlLoader::load_from_str(&std::fs::read_to_string(repo("deploy/kubernetes/memwatch.yaml")).unwrap()).unwrap();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let ds = kind("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(caps.contains(&"SYS_ADMIN") && caps.contains(&"SYS_PTRACE"), "{caps:?}");
    assert_eq!(
        c["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("Unconfined")
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(
        mounts.contains(&"/sys/kernel/tracing") && mounts.contains(&"/etc/memwatch"),
        "{mounts:?}"
    );
    let port = c["ports"][0]["containerPort"].as_i64().unwrap();
    // The ConfigMap is a valid memwatch config listening on that port.
    let toml = kind("ConfigMap")["data"]["memwatch.toml"].as_str().unwrap();
    let file = memwatch::config::parse_file(toml).unwrap();
    let config = memwatch::config::Config::build(file, &Default::default()).unwrap();
    assert_eq!(i64::from(config.listen.port()), port);
    assert!(
        !config.listen.ip().is_loopback(),
        "Prometheus must reach it from the pod network"
    );
    // Beyond loopback: TLS and basic auth, from a Secret mounted where the
    // config looks, and probes that speak HTTPS.
    let web = config
        .web_config_file
        .expect("a web config for a non-loopback listener");
    let web_dir = web.parent().unwrap().to_str().unwrap();
    let web_mount = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(web_dir))
        .expect("the web config's directory is mounted");
    let volume = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"] == web_mount["name"])
        .unwrap();
    assert!(volume["secret"]["secretName"].as_str().is_some(), "{volume:?}");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["scheme"].as_str(), Some("HTTPS"), "{probe}");
    }
    assert_eq!(kind("Service")["spec"]["ports"][0]["port"].as_i64(), Some(port));
    // Grafana's provisioning files are valid YAML pointing at a dashboard folder.
    let prov = YamlLoader::load_from_str(
        &std::fs::read_to_string(repo("deploy/grafana/provisioning/dashboards/memwatch.yaml")).unwrap(),
    )
    .unwrap();
    assert!(prov[0]["providers"][0]["options"]["path"].as_str().is_some());
}

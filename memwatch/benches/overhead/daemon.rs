//! memwatch daemons under test: started with a configuration of their own,
//! asked over HTTP, stopped on drop.

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::{
    bare::Site,
    workload::{Workload, tmp, workload_binary},
};

/// A loopback address with a port free right now.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub placement: bool,
}

impl Daemon {
    /// A daemon tracking `exe_glob` exactly, without host-wide detection.
    pub fn start(exe_glob: &str, placement: bool) -> Daemon {
        Self::start_with(exe_glob, placement, "")
    }

    /// As [`Daemon::start`], with more configuration.
    pub fn start_with(exe_glob: &str, placement: bool, extra: &str) -> Daemon {
        Self::start_args(&["--exe", exe_glob], placement, extra)
    }

    /// A daemon with `args` (e.g. `--pid N`) and more configuration.
    pub fn start_args(args: &[&str], placement: bool, extra: &str) -> Daemon {
        let addr = free_addr();
        let config = tmp().join(format!("mwbench-{}.toml", addr.replace(['.', ':'], "-")));
        std::fs::write(
            &config,
            format!("[collect]\ninterval_seconds = 0.5\n[probes]\nplacement = {placement}\n{extra}"),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_memwatch"))
            .args(["run", "--config"])
            .arg(&config)
            .args(["--listen", &addr, "--log", "warn"])
            .args(args)
            .spawn()
            .expect("memwatch");
        let d = Daemon { child, addr, placement };
        d.wait("healthy", |d| d.get("/healthz").0 == 200);
        d
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        match agent.get(format!("http://{}{path}", self.addr)).call() {
            Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    pub fn wait(&self, what: &str, ok: impl Fn(&Daemon) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok(self) {
            assert!(Instant::now() < deadline, "timed out waiting for memwatch: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_tracked(&self, pid: u32) {
        self.wait("the workload to be tracked", |d| {
            d.get(&format!("/leaks?pid={pid}")).0 == 200
        });
    }

    pub fn sites(&self) -> Vec<Site> {
        let v: serde_json::Value = serde_json::from_str(&self.get("/probes").1).unwrap();
        v["sites"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Site {
                module: s["module"].as_str().unwrap().to_string(),
                function: s["function"].as_str().unwrap().to_string(),
                file_offset: s["entry_offset"].as_u64().unwrap() + s["offset"].as_u64().unwrap(),
                instruction: s["instruction"].as_str().unwrap().to_string(),
                emulated: s["emulated"].as_bool().unwrap(),
            })
            .collect()
    }

    /// Live records in the live table and in `LIVE`, from a scan made now.
    pub fn store_split(&self) -> (u64, u64) {
        let scanned = |d: &Daemon| -> f64 {
            let v: serde_json::Value = serde_json::from_str(&d.get("/status").1).unwrap_or_default();
            v["snapshot_unix"].as_f64().unwrap_or(0.0)
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        self.wait("a scan", |d| scanned(d) > now);
        let v: serde_json::Value = serde_json::from_str(&self.get("/status").1).unwrap();
        let n = |k: &str| v[k]["entries"].as_u64().unwrap_or(0);
        (n("live_table"), n("live_map"))
    }

    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// The sites a daemon uses, after it has tracked one workload.
pub fn sites_of(d: &Daemon) -> Vec<Site> {
    let w = Workload::start(&workload_binary(if d.placement {
        "mwbench-placed"
    } else {
        "mwbench-entry"
    }));
    d.wait_tracked(w.pid);
    let sites = d.sites();
    w.finish();
    sites
}

/// A daemon with the shipped configuration (host-wide detection on), plus
/// `args`.
pub fn default_daemon(args: &[&str]) -> (Child, String) {
    let addr = free_addr();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/memwatch.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_memwatch"))
        .args(["run", "--config"])
        .arg(shipped)
        .args(["--listen", &addr, "--log", "warn"])
        .args(args)
        .spawn()
        .expect("memwatch");
    (child, addr)
}

pub fn http_status(addr: &str, path: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    agent
        .get(format!("http://{addr}{path}"))
        .call()
        .map_or(0, |r| r.status().as_u16())
}

pub fn stop(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

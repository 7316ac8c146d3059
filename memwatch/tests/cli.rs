//! The command line refuses bad input before anything is attached. These
//! need no root: memwatch must exit before loading any eBPF.

mod common;

use common::memwatch;

fn config(name: &str, text: &str) -> String {
    let p = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn malformed_config_is_refused_naming_the_key() {
    let cases = [
        ("unknown-key.toml", "[maps]\nlive_allocs = 5\n", "live_allocs"),
        (
            "bad-type.toml",
            "[collect]\ninterval_seconds = \"soon\"\n",
            "interval_seconds",
        ),
        ("bad-range.toml", "[maps]\nstacks = 1\n", "maps.stacks"),
        ("bad-listen.toml", "listen = \"everywhere\"\n", "listen"),
        ("bad-pid.toml", "[track]\npids = [-4]\n", "track.pids[0]"),
        ("bad-glob.toml", "[track]\nexe = [\"a[\"]\n", "track.exe[0]"),
        ("not-toml.toml", "this is = = not toml", "invalid config file"),
    ];
    for (name, text, needle) in cases {
        let (code, stderr, _) = memwatch(&["run", "--config", &config(name, text)]);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert!(!stderr.contains("tracking process"), "{name}: nothing may be attached");
    }
}

#[test]
fn a_bad_web_config_is_refused_before_anything_is_attached() {
    let cases = [
        ("web-missing.yml", None, "cannot read"),
        (
            "web-plain-password.yml",
            Some("basic_auth_users:\n  prom: secret\n"),
            "not a bcrypt hash",
        ),
        (
            "web-no-cert.yml",
            Some("tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: /nonexistent/k.pem\n"),
            "/nonexistent/c.pem",
        ),
        (
            "web-mtls.yml",
            Some("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n"),
            "client_auth_type: not supported",
        ),
    ];
    for (name, text, needle) in cases {
        let path = match text {
            Some(t) => config(name, t),
            None => "/nonexistent/web.yml".to_string(),
        };
        let (code, stderr, _) = memwatch(&["run", "--web-config-file", &path]);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(
            stderr.contains("web_config_file") && stderr.contains(needle),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("tracking process"), "{name}: nothing may be attached");
    }
}

#[test]
fn missing_config_file_and_bad_flags_are_refused() {
    let (code, stderr, _) = memwatch(&["run", "--config", "/nonexistent/memwatch.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read config file /nonexistent/memwatch.toml"),
        "{stderr}"
    );
    let (code, stderr, _) = memwatch(&["run", "--pid", "abc"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--pid"), "{stderr}");
    let (code, stderr, _) = memwatch(&["run", "--listen", "nowhere"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--listen"), "{stderr}");
    let (code, _, _) = memwatch(&["run", "--exe", "["]);
    assert_eq!(code, 2);
}

#[test]
fn the_shipped_config_is_accepted() {
    // Parsing succeeds; listening on a taken port then fails with a clear message.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/memwatch.toml");
    let (code, stderr, _) = memwatch(&["run", "--config", shipped, "--listen", &addr]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

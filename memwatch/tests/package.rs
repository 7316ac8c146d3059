//! The Debian package as a fleet installs it. `cargo xtask dist` builds it
//! (`cargo xtask test` runs dist first); here it goes into a clean Debian
//! 12 root with systemd that debootstrap makes: `dpkg -i` installs it with nothing
//! missing, lintian finds nothing the package does not explain, the unit
//! verifies, the installed binary serves /healthz, an upgrade keeps an
//! edited config, and a purge leaves nothing behind.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The package `cargo xtask dist` built last.
fn built_deb() -> PathBuf {
    let dist = repo("target/dist");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dist)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    debs.retain(|p| p.extension().is_some_and(|e| e == "deb"));
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop()
        .unwrap_or_else(|| panic!("no .deb in {}: run `cargo xtask dist`", dist.display()))
}

/// A Debian 12 root with /proc, /sys and /dev of the host, unmounted and
/// removed on drop.
struct Root {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Root {
    fn make(dir: PathBuf) -> Root {
        if dir.exists() {
            let _ = Command::new("umount").arg("-R").arg(dir.join("proc")).status();
            let _ = Command::new("umount").arg("-R").arg(dir.join("sys")).status();
            let _ = Command::new("umount").arg("-R").arg(dir.join("dev")).status();
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let started = Instant::now();
        let (ok, out) = run(Command::new("debootstrap")
            // Debian's base system (required and important packages, as a
            // fresh server has them), systemd among them.
            .arg("bookworm")
            .arg(&dir)
            .arg("http://deb.debian.org/debian"));
        assert!(ok, "debootstrap: {out}");
        eprintln!("debootstrap: {:.0} s", started.elapsed().as_secs_f64());
        let mut root = Root {
            dir,
            mounted: Vec::new(),
        };
        for (what, args) in [
            ("proc", &["-t", "proc", "proc"][..]),
            ("sys", &["--rbind", "/sys"]),
            ("dev", &["--rbind", "/dev"]),
        ] {
            let to = root.dir.join(what);
            let (ok, out) = run(Command::new("mount").args(args).arg(&to));
            assert!(ok, "mount {what}: {out}");
            let _ = Command::new("mount").args(["--make-rslave"]).arg(&to).status();
            root.mounted.push(to);
        }
        root
    }

    /// `script` run by sh inside the root.
    fn sh(&self, script: &str) -> (bool, String) {
        run(Command::new("chroot")
            .arg(&self.dir)
            .args(["/bin/sh", "-c", script])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive"))
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    /// Every file, link and folder, but the kernel's, dpkg's own records
    /// and logs.
    fn files(&self) -> Vec<String> {
        let (ok, out) = self.sh(
            "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /var/lib/dpkg \
             -o -path /var/log -o -path /var/cache -o -path /run \\) -prune -o -print | sort",
        );
        assert!(ok, "{out}");
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            let _ = Command::new("umount").arg("-R").arg(m).status();
        }
    }
}

#[test]
#[ignore = "needs root, debootstrap's network and `cargo xtask dist`; run with `cargo xtask test`"]
fn the_package_installs_serves_upgrades_and_purges_on_a_clean_debian_12() {
    require_root();
    let deb = built_deb();
    eprintln!("package: {}", deb.display());

    // lintian: clean, or each finding explained by the package's overrides.
    let (_, out) = run(Command::new("lintian")
        .args(["--fail-on", "none", "--tag-display-limit", "0"])
        .arg(&deb));
    let findings: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(['E', 'W', 'I']) && l.contains(": "))
        .collect();
    assert!(findings.is_empty(), "lintian:\n{out}");

    let root = Root::make(Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-12-root"));
    let before = root.files();
    std::fs::copy(&deb, root.path("/tmp/memwatch.deb")).unwrap();
    let (ok, out) = root.sh("dpkg -i /tmp/memwatch.deb");
    assert!(ok, "dpkg -i on a clean Debian 12: {out}");
    assert!(!out.contains("dependency problems"), "{out}");

    // What a host expects, where it expects it.
    for file in [
        "/usr/bin/memwatch",
        "/etc/memwatch/memwatch.toml",
        "/lib/systemd/system/memwatch.service",
        "/usr/share/man/man1/memwatch.1.gz",
        "/usr/share/bash-completion/completions/memwatch",
        "/usr/share/zsh/vendor-completions/_memwatch",
        "/usr/share/fish/vendor_completions.d/memwatch.fish",
        "/usr/share/memwatch/prometheus/memwatch.rules.yml",
        "/usr/share/memwatch/grafana/memwatch.json",
        "/usr/share/doc/memwatch/copyright",
    ] {
        assert!(root.path(file).exists(), "{file} not installed");
    }
    let (_, conffiles) = root.sh("dpkg-query -W -f='${Conffiles}' memwatch");
    assert!(conffiles.contains("/etc/memwatch/memwatch.toml"), "{conffiles}");
    // Enabled at boot (started too, where systemd runs: not in a chroot).
    // (A link to the unit's path inside the root: not followed from here.)
    let wants = root.path("/etc/systemd/system/multi-user.target.wants/memwatch.service");
    assert!(
        std::fs::symlink_metadata(&wants).is_ok_and(|m| m.file_type().is_symlink()),
        "the unit is not enabled"
    );
    let unit = std::fs::read_to_string(root.path("/lib/systemd/system/memwatch.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/memwatch run --config /etc/memwatch/memwatch.toml"),
        "{unit}"
    );
    assert!(unit.contains("ExecReload="), "reloadable: {unit}");
    // The man page is checked below: the root has no man-db to open it.
    let (ok, out) = root.sh("systemd-analyze verify --man=no memwatch.service");
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    let (ok, man) = root.sh("zcat /usr/share/man/man1/memwatch.1.gz");
    assert!(
        ok && man.contains(".SH \"MEMWATCH LEAKS\"") && man.contains("password\\-file"),
        "{man}"
    );

    // The installed binary, with the installed config, serves /healthz.
    let port = free_port();
    let mut daemon = Command::new("chroot")
        .arg(&root.dir)
        .args(["/usr/bin/memwatch", "run", "--config", "/etc/memwatch/memwatch.toml"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--control-socket", "/run/memwatch-package-test.sock"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let healthy = agent
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .is_ok_and(|mut r| r.status() == 200 && r.body_mut().read_to_string().unwrap_or_default() == "ok\n");
        if healthy {
            break;
        }
        if let Some(status) = daemon.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the installed memwatch exited ({status}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "the installed memwatch never served /healthz"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    unsafe { libc::kill(daemon.id() as i32, libc::SIGINT) };
    assert!(daemon.wait().unwrap().success());

    // An upgrade keeps the operator's edit of the config.
    let edited = "\n# edited on this host: kept across upgrades\n";
    let config = root.path("/etc/memwatch/memwatch.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(edited);
    std::fs::write(&config, &text).unwrap();
    let (ok, version) = root.sh("dpkg-query -W -f='${Version}' memwatch");
    assert!(ok, "{version}");
    let next = format!("{version}+upgrade");
    let unpacked = root.path("/tmp/next");
    assert!(run(Command::new("dpkg-deb").arg("-R").arg(&deb).arg(&unpacked)).0);
    let control = unpacked.join("DEBIAN/control");
    let fields = std::fs::read_to_string(&control).unwrap();
    std::fs::write(
        &control,
        fields.replace(&format!("Version: {version}\n"), &format!("Version: {next}\n")),
    )
    .unwrap();
    let (ok, out) = run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&unpacked)
        .arg(root.path("/tmp/next.deb")));
    assert!(ok, "{out}");
    let (ok, out) = root.sh("dpkg -i /tmp/next.deb");
    assert!(ok, "upgrade: {out}");
    let (_, now) = root.sh("dpkg-query -W -f='${Version}' memwatch");
    assert_eq!(now, next);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        text,
        "the edited config was replaced"
    );

    // A purge leaves the root as it was.
    let (ok, out) = root.sh("dpkg --purge memwatch");
    assert!(ok, "purge: {out}");
    std::fs::remove_dir_all(&unpacked).unwrap();
    for f in ["/tmp/memwatch.deb", "/tmp/next.deb"] {
        std::fs::remove_file(root.path(f)).unwrap();
    }
    let after = root.files();
    let left: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
    let gone: Vec<&String> = before.iter().filter(|f| !after.contains(f)).collect();
    assert!(
        left.is_empty() && gone.is_empty(),
        "after purge, left: {left:#?}, gone: {gone:#?}"
    );
}

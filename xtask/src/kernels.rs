//! `cargo xtask kernels`: memwatch on kernels other than the host's. Each of
//! Debian's kernels below is downloaded (never installed: that would run the
//! host's initramfs and bootloader hooks) and booted under qemu with an
//! initramfs of busybox, memwatch and a fixture; then the host's own kernel
//! runs the same scenario (kernels/guest.sh) directly. The scenario only
//! prints what it measured; every verdict is taken here, by report.rs.

mod report;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{check, workspace_root};

const GUEST_SCRIPT: &str = include_str!("kernels/guest.sh");
/// Per kernel. Under TCG (code 20-50x slower than on the host) a guest here
/// boots and runs the scenario in ~10 s, ~40 s on PREEMPT_RT (where
/// detaching the probes takes ~25 s): room for a slower or busier machine.
const TIMEOUT: Duration = Duration::from_secs(300);

/// A kernel flavour: the newest package named `{prefix}N{suffix}`.
struct Flavour {
    name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

const FLAVOURS: [Flavour; 3] = [
    // Debian 12's stock kernel.
    Flavour {
        name: "6.1-cloud",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
    },
    // PREEMPT_RT: the one where BPF programs are preempted, so per-CPU
    // counters need atomic adds.
    Flavour {
        name: "6.1-rt",
        prefix: "linux-image-6.1.0-",
        suffix: "-rt-amd64-unsigned",
    },
    // bookworm's 6.12 kernel (in bookworm-security).
    Flavour {
        name: "6.12-cloud",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-cloud-amd64-unsigned",
    },
];
pub const HOST: &str = "host";

/// Runs the matrix with `memwatch` (or only the kernel named `only`: a
/// flavour's name or "host"); fails if any check failed.
pub fn run(memwatch: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let started = Instant::now();
    let flavours: Vec<&Flavour> = FLAVOURS.iter().filter(|f| only.is_none_or(|o| o == f.name)).collect();
    let host = only.is_none_or(|o| o == HOST);
    if flavours.is_empty() && !host {
        let names: Vec<&str> = FLAVOURS.iter().map(|f| f.name).chain([HOST]).collect();
        bail!(
            "no kernel named {:?}: choose one of {}",
            only.unwrap_or(""),
            names.join(", ")
        );
    }
    let dir = workspace_root().join("target/kernels");
    std::fs::create_dir_all(dir.join("logs"))?;
    let mut packages = vec!["busybox-static", "gcc", "libc6-dev"];
    if !flavours.is_empty() {
        packages.push("qemu-system-x86");
    }
    install_missing(&packages)?;
    let root = stage(&dir, memwatch)?;

    let mut results = Vec::new();
    if !flavours.is_empty() {
        results.extend(guests(&flavours, &root, &dir)?);
    }
    if host {
        results.push(on_host(&root, &dir)?);
    }
    println!(
        "\n\"Detaches cleanly\" was checked by: SIGINT ends the daemon with status 0, its log says \"detached all \
         probes\", no byte of the fixture's file-backed code differs from its file any more (while attached, the \
         same comparison counts the probes' int3 bytes), and the fixture then runs on and exits 0."
    );
    println!("\nkernel matrix ({:.0} s in all):", started.elapsed().as_secs_f64());
    for r in &results {
        println!("  {}", r.summary);
    }
    let failed: Vec<&str> = results.iter().filter(|r| !r.passed).map(|r| r.label.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "memwatch failed checks on: {} (see the tables above; consoles in {})",
            failed.join(", "),
            dir.join("logs").display()
        );
    }
    Ok(())
}

/// Boots each flavour's newest kernel under qemu with the staged root.
fn guests(flavours: &[&Flavour], root: &Path, dir: &Path) -> anyhow::Result<Vec<report::Report>> {
    let initrd = initramfs(root, dir)?;
    let mut apt = Apt { updated: false };
    let kernels = flavours
        .iter()
        .map(|f| apt.vmlinuz(f, dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let accel = accelerator(&kernels[0], dir);
    let how = format!("qemu {}", if accel == "kvm" { "KVM" } else { "TCG" });
    let mut results = Vec::new();
    // One at a time: a TCG guest starved of CPU stalls (soft lockups).
    for (flavour, vmlinuz) in flavours.iter().zip(&kernels) {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-accel", accel, "-cpu", "max", "-m", "2048", "-smp", "2"])
            .args(["-nographic", "-no-reboot", "-kernel"])
            .arg(vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"]);
        results.push(scenario(flavour.name, &how, qemu, dir)?);
    }
    Ok(results)
}

/// The same scenario on the host's kernel, with busybox's tools first in
/// PATH as in the guests.
fn on_host(root: &Path, dir: &Path) -> anyhow::Result<report::Report> {
    let busybox = root.join("bin/busybox");
    let path = dir.join("host-path");
    if !path.exists() {
        std::fs::create_dir_all(&path)?;
        check(Command::new(&busybox).arg("--install").arg("-s").arg(&path))?;
    }
    let tmp = dir.join("host-tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut sh = Command::new(&busybox);
    sh.arg("sh")
        .arg(root.join("init"))
        .env(
            "PATH",
            std::env::join_paths([path.as_path(), "/usr/sbin".as_ref(), "/usr/bin".as_ref()])?,
        )
        .env("MW_BIN", root.join("bin"))
        .env("MW_TMP", &tmp)
        .env("MW_PORT", free_port()?.to_string());
    scenario(HOST, "directly", sh, dir)
}

/// Installs the Debian packages in `pkgs` that are missing.
fn install_missing(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("kernels: installing {}", missing.join(" "));
    check(Command::new("apt-get").args(["update", "-q"]))?;
    check(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The guest's root: /init (the scenario), busybox, memwatch, the fixture,
/// and the libraries they load at the paths `ldd` names.
fn stage(dir: &Path, memwatch: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::write(root.join("init"), GUEST_SCRIPT)?;
    set_executable(&root.join("init"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying busybox")?;
    // For /init's #!; the script links the other applets itself.
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    std::fs::copy(memwatch, root.join("bin/memwatch")).with_context(|| format!("copying {}", memwatch.display()))?;
    let fixture = root.join("bin/mw-matrix");
    let source = workspace_root().join("memwatch/tests/fixtures/matrix.c");
    // As the integration tests build their fixtures: -fno-builtin, or GCC
    // deletes malloc/free pairs whose memory is never read.
    let flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fno-inline", "-fno-builtin"];
    check(Command::new("gcc").args(flags).arg("-o").arg(&fixture).arg(&source))?;
    std::fs::hard_link(&fixture, root.join("bin/mw-breakpoints"))?;
    for binary in [memwatch, &fixture] {
        let out = Command::new("ldd").arg(binary).output()?;
        for lib in String::from_utf8_lossy(&out.stdout).lines().filter_map(library_path) {
            let to = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("a library's path has a parent"))?;
            std::fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
        }
    }
    Ok(root)
}

/// The file an `ldd` line names: `libc.so.6 => /lib/.../libc.so.6 (0x...)`,
/// or the loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`.
fn library_path(line: &str) -> Option<&str> {
    let path = line.split("=>").last()?.split_whitespace().next()?;
    path.starts_with('/').then_some(path)
}

fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?)
}

/// A gzipped newc cpio of `root`, owned by root, made by busybox's cpio.
fn initramfs(root: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let initrd = dir.join("initrd.gz");
    check(
        Command::new("sh")
            .arg("-c")
            .arg(r#"find . | "$0" cpio -o -H newc -R 0:0 | gzip -1 >"$1""#)
            .arg(root.join("bin/busybox"))
            .arg(&initrd)
            .current_dir(root),
    )?;
    Ok(initrd)
}

struct Apt {
    updated: bool,
}

impl Apt {
    /// The vmlinuz of the newest package of `flavour`, downloaded and
    /// unpacked under `dir` unless it is there from an earlier run.
    fn vmlinuz(&mut self, flavour: &Flavour, dir: &Path) -> anyhow::Result<PathBuf> {
        let package = match self.newest(flavour)? {
            Some(p) => p,
            None => {
                self.update()?;
                self.newest(flavour)?
                    .with_context(|| format!("no package {}N{} in apt's lists", flavour.prefix, flavour.suffix))?
            }
        };
        let unpacked = dir.join(&package);
        if let Some(found) = find_vmlinuz(&unpacked) {
            return Ok(found);
        }
        let debs = dir.join("debs");
        std::fs::create_dir_all(&debs)?;
        let deb = match find_deb(&debs, &package) {
            Some(deb) => deb,
            None => {
                eprintln!("kernels: downloading {package}");
                if !self.download(&debs, &package) {
                    // The lists may name a version the mirror has dropped.
                    self.update()?;
                    if !self.download(&debs, &package) {
                        bail!("apt-get download {package} failed");
                    }
                }
                find_deb(&debs, &package).context("apt-get download left no .deb")?
            }
        };
        // Only boot/: the modules are hundreds of MB the guest never loads.
        // Renamed into place once whole, as the cache's mark of completion.
        let part = dir.join(format!("{package}.part"));
        let _ = std::fs::remove_dir_all(&part);
        std::fs::create_dir_all(&part)?;
        let mut unpack = Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(&deb)
            .stdout(Stdio::piped())
            .spawn()?;
        let tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&part)
            .arg("./boot")
            .stdin(unpack.stdout.take().expect("piped"))
            .status()?;
        if !unpack.wait()?.success() || !tar.success() {
            bail!("unpacking {}", deb.display());
        }
        let _ = std::fs::remove_dir_all(&unpacked);
        std::fs::rename(&part, &unpacked)?;
        find_vmlinuz(&unpacked).with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))
    }

    fn newest(&self, flavour: &Flavour) -> anyhow::Result<Option<String>> {
        let literal = |s: &str| s.replace('.', "\\.").replace('+', "\\+");
        let pattern = format!("^{}[0-9]+{}$", literal(flavour.prefix), literal(flavour.suffix));
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", &pattern])
            .output()
            .context("running apt-cache")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|name| {
                let n = name.strip_prefix(flavour.prefix)?.strip_suffix(flavour.suffix)?;
                Some((n.parse::<u32>().ok()?, name.to_string()))
            })
            .max()
            .map(|(_, name)| name))
    }

    fn update(&mut self) -> anyhow::Result<()> {
        if !self.updated {
            check(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        Ok(())
    }

    fn download(&self, debs: &Path, package: &str) -> bool {
        // As root, apt would fall back from its sandbox user with a warning.
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
            .current_dir(debs)
            .status()
            .is_ok_and(|s| s.success())
    }
}

fn find_deb(debs: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(debs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
}

fn find_vmlinuz(unpacked: &Path) -> Option<PathBuf> {
    std::fs::read_dir(unpacked.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// "kvm" when a kernel boots under KVM, else "tcg". /dev/kvm opening is not
/// enough: on some nested hosts the BIOS runs and the kernel then hangs.
fn accelerator(vmlinuz: &Path, dir: &Path) -> &'static str {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return "tcg";
    }
    // No initrd: a working guest panics for want of a root and exits.
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "kvm", "-cpu", "max", "-m", "512"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .args(["-append", "console=ttyS0 panic=-1"]);
    match run_logged(qemu, Duration::from_secs(10), &dir.join("logs/kvm-probe.log")) {
        Ok(run) if run.lines.iter().any(|l| l.contains("Linux version")) => "kvm",
        _ => {
            println!("kernels: KVM does not boot a kernel here within 10 s: guests run under TCG");
            "tcg"
        }
    }
}

/// Runs the scenario through `cmd` and prints its table.
fn scenario(label: &str, how: &str, cmd: Command, dir: &Path) -> anyhow::Result<report::Report> {
    println!("kernels: {label} ({how}) ...");
    let log = dir.join(format!("logs/{label}.log"));
    let run = run_logged(cmd, TIMEOUT, &log)?;
    let report = report::judge(label, how, &run.lines, run.timed_out.then_some(TIMEOUT), run.seconds);
    if !report.passed {
        println!("  console and daemon log: {}", log.display());
    }
    Ok(report)
}

struct Run {
    lines: Vec<String>,
    timed_out: bool,
    seconds: f64,
}

/// Runs `cmd` to its end or `timeout` (then kills it), keeping its output
/// lines and writing them to `log`.
fn run_logged(mut cmd: Command, timeout: Duration, log: &Path) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut file = std::fs::File::create(log)?;
    let mut lines = Vec::new();
    let deadline = started + timeout;
    let timed_out = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                writeln!(file, "{line}")?;
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The group: on the host, the daemon and the fixture too.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .status();
                break true;
            }
        }
    };
    child.wait()?;
    Ok(Run {
        lines,
        timed_out,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

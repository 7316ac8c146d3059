//! Developer tasks: `cargo xtask setup | run | test | kernels | bench | soak | fuzz | dist | docs`.

mod fuzz;
mod kernels;
mod setup;
mod soak;

use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "memwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build needs (nightly rust-src, LLVM 22, bpf-linker) and the test tools. Idempotent.
    Setup,
    /// Build memwatch (release) and run the daemon with deploy/memwatch.toml; extra arguments go to `memwatch run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure memwatch's overhead against untraced runs and bare uprobes (as root). MWBENCH_PAIRS,
    /// MWBENCH_ROUNDS and MWBENCH_MODES narrow it down for quick comparisons.
    Bench,
    /// Run the release daemon under process churn (fork, exec, exit; leaks escalated) and print its
    /// RSS, open files, threads and map fill every 10 s, with their slope (as root).
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// Fuzz the parsers of untrusted input (ELF and CFI, /proc text, CPython line tables, probe
    /// placement) with cargo-fuzz, each target for N minutes; prints runs, coverage and crashes.
    Fuzz {
        #[arg(long, default_value_t = 1.0)]
        minutes: f64,
        /// Targets to run (default: all): elf, procfs, linetable, placement.
        targets: Vec<String>,
    },
    /// Build the release tarball (binary, systemd unit, default config, Prometheus rules, Grafana
    /// dashboard, Kubernetes manifests, README and install.sh) and the Debian package, in
    /// target/dist/.
    Dist,
    /// Build the book (docs/, with mdBook, which this installs) into target/book/.
    Docs,
    /// Run every test: formatting, clippy, unit tests, the privileged eBPF integration tests and the
    /// kernel matrix (as root).
    Test {
        /// Extra arguments for the test harness (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot Debian's 6.1 (stock and PREEMPT_RT) and 6.12 kernels under qemu, then use the host's own,
    /// and check memwatch on each with a leaking fixture; one table per kernel (as root).
    Kernels {
        /// The memwatch binary to test (default: build the release binary).
        #[arg(long)]
        memwatch: Option<std::path::PathBuf>,
        /// Only this kernel: 6.1-cloud, 6.1-rt, 6.12-cloud or host.
        #[arg(long)]
        only: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Run { args } => run(&args),
        Task::Test { args } => test(&args),
        Task::Kernels { memwatch, only } => {
            if !is_root() {
                bail!("the host's run loads eBPF programs and apt installs qemu: run `cargo xtask kernels` as root");
            }
            let memwatch = match memwatch {
                Some(path) => path,
                None => {
                    setup::run()?;
                    release_binary()?
                }
            };
            kernels::run(&memwatch, only.as_deref())
        }
        Task::Bench => bench(),
        Task::Soak { minutes } => {
            if !is_root() {
                bail!("the soak attaches uprobes: run `cargo xtask soak` as root");
            }
            soak::run(minutes)
        }
        Task::Fuzz { minutes, targets } => fuzz::run(minutes, &targets),
        Task::Dist => dist().map(|path| println!("{}", path.display())),
        Task::Docs => docs(),
    }
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn check(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Builds target/release/memwatch (after `setup`) and returns its path.
fn release_binary() -> anyhow::Result<std::path::PathBuf> {
    check(cargo().args(["build", "--release", "--package", "memwatch"]))?;
    Ok(workspace_root().join("target/release/memwatch"))
}

fn run(args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    let bin = release_binary()?;
    let config = workspace_root().join("deploy/memwatch.toml");
    let mut cmd = Command::new(&bin);
    cmd.arg("run").arg("--config").arg(&config).args(args);
    if !is_root() {
        eprintln!("memwatch needs root (or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE): running it with sudo");
        cmd = Command::new("sudo");
        cmd.arg(&bin).arg("run").arg("--config").arg(&config).args(args);
    }
    check(&mut cmd)
}

/// Builds target/dist/memwatch-VERSION-ARCH-linux.tar.gz and returns its path.
pub fn dist() -> anyhow::Result<std::path::PathBuf> {
    setup::run()?;
    check(cargo().args(["build", "--release", "--package", "memwatch"]))?;
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("memwatch-{version}-{}-linux", std::env::consts::ARCH);
    let dist = root.join("target/dist");
    let stage = dist.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let deploy = root.join("deploy");
    let copies: [(&str, std::path::PathBuf); 4] = [
        ("bin/memwatch", root.join("target/release/memwatch")),
        ("etc/memwatch/memwatch.toml", deploy.join("memwatch.toml")),
        ("systemd/memwatch.service", deploy.join("systemd/memwatch.service")),
        ("install.sh", deploy.join("install.sh")),
    ];
    for (to, from) in copies {
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().expect("has a parent"))?;
        std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    std::fs::copy(root.join("README.md"), stage.join("README.md"))?;
    check(
        Command::new("cp")
            .arg("-R")
            .arg(root.join("docs/src"))
            .arg(stage.join("docs")),
    )?;
    for dir in ["prometheus", "grafana", "kubernetes"] {
        check(Command::new("cp").arg("-R").arg(deploy.join(dir)).arg(&stage))?;
    }
    let tarball = dist.join(format!("{name}.tar.gz"));
    check(
        Command::new("tar")
            .arg("-C")
            .arg(&dist)
            .arg("-czf")
            .arg(&tarball)
            .arg(&name),
    )?;
    let deb = deb(&root, &dist)?;
    eprintln!("dist: {}\ndist: {}", tarball.display(), deb.display());
    Ok(tarball)
}

/// The Debian package (cargo-deb, from memwatch's `[package.metadata.deb]`):
/// the unit with the package's paths, and the man page and shell
/// completions the release binary prints, generated first.
pub fn deb(root: &std::path::Path, dist: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let gen_dir = dist.join("deb");
    std::fs::create_dir_all(&gen_dir)?;
    let unit = std::fs::read_to_string(root.join("deploy/systemd/memwatch.service"))?
        .replace(
            "# memwatch as a systemd service: installed by deploy/install.sh to\n\
             # /etc/systemd/system/memwatch.service, with the binary in /usr/local/bin and\n\
             # the config in /etc/memwatch/memwatch.toml.\n",
            "# memwatch as a systemd service, from its Debian package: the binary in\n\
             # /usr/bin, the config (a conffile) in /etc/memwatch/memwatch.toml.\n",
        )
        .replace("/usr/local/bin/memwatch", "/usr/bin/memwatch")
        .replace("/usr/local/share/doc/memwatch/", "/usr/share/doc/memwatch/")
        .replace("Documentation=file:", "Documentation=man:memwatch(1) file:");
    if unit.contains("/usr/local") {
        bail!("deploy/systemd/memwatch.service names /usr/local paths the package cannot rewrite");
    }
    std::fs::write(gen_dir.join("memwatch.service"), unit)?;
    let bin = root.join("target/release/memwatch");
    let printed = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let out = Command::new(&bin).args(args).output()?;
        if !out.status.success() {
            bail!("memwatch {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    };
    std::fs::write(gen_dir.join("memwatch.1.gz"), gzip(&printed(&["man"])?)?)?;
    for (shell, file) in [
        ("bash", "memwatch.bash"),
        ("zsh", "_memwatch"),
        ("fish", "memwatch.fish"),
    ] {
        std::fs::write(gen_dir.join(file), printed(&["completions", shell])?)?;
    }
    let out = Command::new("cargo")
        .current_dir(root)
        .args(["deb", "--package", "memwatch", "--no-build", "--output"])
        .arg(dist)
        .output()
        .context("running cargo deb (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(std::path::PathBuf::from(path))
}

/// gzip -9n: no name, no time stamp, so the package is reproducible.
fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

/// mdBook, pinned like the other tools.
const MDBOOK: &str = "0.5.4";

fn docs() -> anyhow::Result<()> {
    let installed = Command::new("mdbook")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if installed.split_whitespace().last().map(|v| v.trim_start_matches('v')) != Some(MDBOOK) {
        eprintln!("docs: installing mdbook {MDBOOK}");
        check(Command::new("cargo").args(["install", "mdbook", "--locked", "--version", MDBOOK]))?;
    }
    let root = workspace_root();
    check(Command::new("mdbook").arg("build").arg(root.join("docs")))?;
    eprintln!("docs: {}", root.join("target/book/index.html").display());
    Ok(())
}

fn bench() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the benchmark attaches uprobes: run `cargo xtask bench` as root");
    }
    setup::run()?;
    check(cargo().args(["bench", "--package", "memwatch", "--bench", "overhead"]))
}

fn test(args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the integration tests load eBPF programs: run `cargo xtask test` as root");
    }
    setup::run()?;
    check(cargo().args(["fmt", "--all", "--check"]))?;
    check(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // $CARGO is the stable toolchain's cargo: go through rustup for the
    // eBPF crate's pinned nightly.
    let pins = setup::pins()?;
    check(Command::new("rustup").current_dir(workspace_root()).args([
        "run",
        &pins.toolchain,
        "cargo",
        "clippy",
        "--package",
        "memwatch-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The package test installs what dist builds (the release build is the
    // kernel matrix's too).
    dist()?;
    // The eBPF crate is left out of default-members: `cargo test` covers the
    // rest, and the eBPF object is exercised by the integration tests.
    check(cargo().args(["test", "--", "--include-ignored"]).args(args))?;
    if !args.is_empty() {
        eprintln!("test: a filter was given: the kernel matrix does not run (`cargo xtask kernels` runs it)");
        return Ok(());
    }
    kernels::run(&release_binary()?, None)
}

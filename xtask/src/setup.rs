//! `cargo xtask setup`: installs what building and testing memwatch needs,
//! skipping what is already there.

use std::process::Command;

use anyhow::Context;

use crate::check;

/// Pinned, and built from its own lockfile, so that a new release (or a new
/// release of one of its dependencies) cannot break a fresh build.
const BPF_LINKER_VERSION: &str = "=0.13.0";
const LLVM_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
/// Tools the tests use: C and C++ compilers for the fixtures, the real tools
/// the operations tests check memwatch against — systemd-analyze, promtool
/// and a Prometheus server, `go tool pprof`, curl and openssl for TLS — and
/// real programs memwatch is tried on: Debian's redis-server (built without
/// frame pointers) and its python3.11 (static, PGO+LTO) — and valgrind,
/// whose memcheck `memwatch check` is held to.
const TEST_PACKAGES: &[&str] = &[
    "gcc",
    "g++",
    "libc6-dev",
    "systemd",
    "prometheus",
    "golang-go",
    "redis-server",
    "python3.11",
    "curl",
    "openssl",
    "valgrind",
];

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p])).contains("install ok installed")
        })
        .map(|p| p.to_string())
        .collect()
}

fn apt_install(pkgs: &[String]) -> anyhow::Result<()> {
    eprintln!("setup: installing {}", pkgs.join(" "));
    check(Command::new("apt-get").args(["update", "-q"]))?;
    check(
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker_installed() -> bool {
    succeeds(Command::new("bpf-linker").arg("--version"))
}

pub fn run() -> anyhow::Result<()> {
    // The eBPF crate builds with nightly and -Z build-std=core.
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        eprintln!("setup: installing the nightly toolchain");
        check(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    if !output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .contains("rust-src")
    {
        eprintln!("setup: adding rust-src to nightly");
        check(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    let mut pkgs = missing_packages(TEST_PACKAGES);
    if !bpf_linker_installed() {
        pkgs.extend(missing_packages(LLVM_PACKAGES));
    }
    if !pkgs.is_empty() {
        apt_install(&pkgs)?;
    }
    if !bpf_linker_installed() {
        // Without LLVM_PREFIX, bpf-linker finds Debian's LLVM 14 and fails to link.
        eprintln!("setup: building bpf-linker against LLVM 22 (a few minutes)");
        check(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )
        .context("installing bpf-linker")?;
    }
    Ok(())
}

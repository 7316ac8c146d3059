//! `cargo xtask setup`: installs what building and testing memwatch needs,
//! skipping what is already there.

use std::process::Command;

use anyhow::Context;

use crate::{check, workspace_root};

/// Build dependencies of bpf-linker besides LLVM's own packages.
const LINKER_BUILD_PACKAGES: &[&str] = &["libzstd-dev", "zlib1g-dev"];
/// Tools the tests use: C and C++ compilers for the fixtures, the real tools
/// the operations tests check memwatch against — systemd-analyze, promtool
/// and a Prometheus server, `go tool pprof`, curl and openssl for TLS — and
/// real programs memwatch is tried on: Debian's redis-server (built without
/// frame pointers) and its python3.11 (static, PGO+LTO) — and valgrind,
/// whose memcheck `memwatch check` is held to — and headless Chromium, in
/// which the web page's tests load, click and screenshot it — and what the
/// package test needs: debootstrap for a clean Debian root, lintian.
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
    "chromium",
    "debootstrap",
    "lintian",
];

/// cargo-deb builds the Debian package (`cargo xtask dist`).
const CARGO_DEB: &str = "3.8.0";

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

#[path = "../../memwatch-ebpf/pins.rs"]
mod pins;
pub use pins::Pins;

/// The pins in memwatch-ebpf/ (memwatch's build.rs checks the same).
pub fn pins() -> anyhow::Result<Pins> {
    pins::read(&workspace_root().join("memwatch-ebpf"))
}

fn installed_version(package: &str) -> String {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status} ${Version}", package]))
        .strip_prefix("install ok installed ")
        .unwrap_or_default()
        .to_string()
}

fn bpf_linker_version() -> String {
    output(Command::new("bpf-linker").arg("--version"))
        .trim()
        .trim_start_matches("bpf-linker")
        .trim()
        .to_string()
}

/// The pinned nightly with its components.
fn install_toolchain(pins: &Pins) -> anyhow::Result<()> {
    let tc = pins.toolchain.as_str();
    if !succeeds(Command::new("rustup").args(["run", tc, "rustc", "--version"])) {
        eprintln!("setup: installing the eBPF toolchain {tc}");
        check(Command::new("rustup").args(["toolchain", "install", tc, "--profile", "minimal"]))?;
    }
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", tc, "--installed"]));
    for component in &pins.components {
        // Listed bare (rust-src) or with the host's triple (clippy-x86_64-…).
        let listed = |l: &str| l == component || l.starts_with(&format!("{component}-"));
        if !installed.lines().any(listed) {
            eprintln!("setup: adding {component} to {tc}");
            check(Command::new("rustup").args(["component", "add", component, "--toolchain", tc]))?;
        }
    }
    Ok(())
}

/// LLVM at the pinned version of Debian's packages, and bpf-linker at its
/// pinned version built against it (from its own lockfile, so that a new
/// release of one of its dependencies cannot break a fresh build).
fn install_linker(pins: &Pins) -> anyhow::Result<()> {
    let (major, version) = (&pins.llvm_major, &pins.llvm_package_version);
    let llvm_ok = installed_version(&format!("libllvm{major}")) == *version
        && installed_version(&format!("llvm-{major}-dev")) == *version;
    if !llvm_ok {
        let mut pkgs: Vec<String> = [
            format!("llvm-{major}-dev"),
            format!("libpolly-{major}-dev"),
            format!("llvm-{major}"),
            format!("llvm-{major}-runtime"),
            format!("llvm-{major}-linker-tools"),
            format!("llvm-{major}-tools"),
            format!("libllvm{major}"),
        ]
        .iter()
        .map(|p| format!("{p}={version}"))
        .collect();
        pkgs.extend(missing_packages(LINKER_BUILD_PACKAGES));
        apt_install(&pkgs).with_context(|| {
            format!(
                "installing LLVM {version} as pinned in memwatch-ebpf/Cargo.toml; if Debian no longer serves that \
                 version, pin the one it serves (`apt-cache policy llvm-{major}-dev`) and check that `cargo xtask test` \
                 still passes its verifier budget"
            )
        })?;
    }
    if !llvm_ok || bpf_linker_version() != pins.bpf_linker {
        // Without LLVM_PREFIX, bpf-linker finds Debian's LLVM 14 and fails to link.
        eprintln!(
            "setup: building bpf-linker {} against LLVM {major} (a few minutes)",
            pins.bpf_linker
        );
        check(
            Command::new("cargo")
                .args(["install", "bpf-linker", "--force", "--locked", "--no-default-features"])
                .args(["--version", &format!("={}", pins.bpf_linker)])
                .args(["--features", &format!("llvm-{major}")])
                .env("LLVM_PREFIX", format!("/usr/lib/llvm-{major}")),
        )
        .context("installing bpf-linker")?;
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    let pins = pins()?;
    install_toolchain(&pins)?;
    let pkgs = missing_packages(TEST_PACKAGES);
    if !pkgs.is_empty() {
        apt_install(&pkgs)?;
    }
    install_linker(&pins)?;
    install_cargo_deb()
}

fn install_cargo_deb() -> anyhow::Result<()> {
    let installed = output(Command::new("cargo").args(["deb", "--version"]));
    if installed.split_whitespace().last() != Some(CARGO_DEB) {
        eprintln!("setup: installing cargo-deb {CARGO_DEB}");
        check(Command::new("cargo").args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB]))
            .context("installing cargo-deb")?;
    }
    Ok(())
}

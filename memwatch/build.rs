//! Builds the eBPF object with aya-build and leaves it in OUT_DIR for
//! `include_bytes_aligned!`, with the toolchain pinned in
//! memwatch-ebpf/rust-toolchain.toml and the linker and LLVM pinned in its
//! Cargo.toml (`cargo xtask setup` installs them). The bytecode depends on
//! all three, and what the kernel's verifier spends on it with the bytecode:
//! a build with others fails here and says what to install, unless
//! MEMWATCH_EBPF_UNPINNED=1. The object's identity (toolchain, linker, LLVM,
//! SHA-256) is passed to the daemon, which reports it.
//!
//! With `AYA_BUILD_SKIP=1` (e.g. for `cargo clippy` on a machine without the
//! eBPF toolchain) an empty object is written instead; the daemon then refuses
//! to load it with a clear message.
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};
use aya_build::Toolchain;
use sha2::{Digest, Sha256};

#[path = "../memwatch-ebpf/pins.rs"]
mod pins;
use pins::Pins;

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What is installed, each as the pins name it; None where absent.
fn installed(pins: &Pins) -> [Option<String>; 3] {
    let rustc = output(Command::new("rustup").args(["run", &pins.toolchain, "rustc", "--version"]));
    let linker = output(Command::new("bpf-linker").arg("--version"))
        .map(|v| v.trim_start_matches("bpf-linker").trim().to_string());
    let llvm = output(Command::new("dpkg-query").args(["-W", "-f=${Version}", &format!("libllvm{}", pins.llvm_major)]));
    [rustc, linker, llvm]
}

fn check(pins: &Pins, [rustc, linker, llvm]: &[Option<String>; 3]) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    if rustc.is_none() {
        let components: Vec<String> = pins.components.iter().map(|c| format!(" --component {c}")).collect();
        wrong.push(format!(
            "the toolchain {0} (rustup toolchain install {0} --profile minimal{1})",
            pins.toolchain,
            components.concat()
        ));
    }
    if linker.as_deref() != Some(pins.bpf_linker.as_str()) {
        wrong.push(format!(
            "bpf-linker {} (found {})",
            pins.bpf_linker,
            linker.as_deref().unwrap_or("none")
        ));
    }
    if llvm.as_deref() != Some(pins.llvm_package_version.as_str()) {
        wrong.push(format!(
            "libllvm{} {} from Debian's packages, which bpf-linker links with (found {})",
            pins.llvm_major,
            pins.llvm_package_version,
            llvm.as_deref().unwrap_or("none")
        ));
    }
    if wrong.is_empty() {
        return Ok(());
    }
    let wanted = format!(
        "the eBPF object is built with pinned tools, and these differ: {}. Run `cargo xtask setup`, which installs them.",
        wrong.join("; ")
    );
    if std::env::var("MEMWATCH_EBPF_UNPINNED").is_ok_and(|v| v == "1") {
        println!("cargo:warning={wanted} Building anyway (MEMWATCH_EBPF_UNPINNED=1): its verifier cost is untested.");
        return Ok(());
    }
    bail!("{wanted} (MEMWATCH_EBPF_UNPINNED=1 builds with what is installed.)")
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=MEMWATCH_EBPF_UNPINNED");
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "memwatch-ebpf")
        .ok_or_else(|| anyhow!("memwatch-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .to_string();

    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let object = out_dir.join("memwatch");
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        std::fs::write(&object, []).context("writing the stub eBPF object")?;
        for key in ["TOOLCHAIN", "BPF_LINKER", "LLVM", "SHA256"] {
            println!("cargo:rustc-env=MEMWATCH_EBPF_{key}=none (built without its eBPF object)");
        }
        return Ok(());
    }
    for file in ["rust-toolchain.toml", "Cargo.toml", "pins.rs"] {
        println!("cargo:rerun-if-changed={root_dir}/{file}");
    }
    let pins = pins::read(std::path::Path::new(&root_dir))?;
    let found = installed(&pins);
    check(&pins, &found)?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: &root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&pins.toolchain))?;

    let bytes = std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    let sha256: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let [rustc, linker, llvm] = found;
    let toolchain = format!("{} ({})", pins.toolchain, rustc.unwrap_or_default());
    let llvm = format!("libllvm{} {}", pins.llvm_major, llvm.unwrap_or_default());
    for (key, value) in [
        ("TOOLCHAIN", toolchain),
        ("BPF_LINKER", linker.unwrap_or_default()),
        ("LLVM", llvm),
        ("SHA256", sha256),
    ] {
        println!("cargo:rustc-env=MEMWATCH_EBPF_{key}={value}");
    }
    Ok(())
}

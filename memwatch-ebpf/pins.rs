//! What decides the eBPF bytecode besides its source: the nightly in
//! rust-toolchain.toml and, in Cargo.toml's [package.metadata.memwatch],
//! bpf-linker and the LLVM it links with. Not part of the eBPF crate: read
//! by memwatch/build.rs (which refuses other versions) and by `cargo xtask
//! setup` (which installs these), each including this file.

use std::path::Path;

use anyhow::{Context as _, anyhow};

pub struct Pins {
    pub toolchain: String,
    /// rust-src for `-Z build-std=core`, clippy for `cargo xtask test`.
    pub components: Vec<String>,
    pub bpf_linker: String,
    pub llvm_major: String,
    /// Debian's libllvm package version, as `dpkg-query` reports it.
    pub llvm_package_version: String,
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse().with_context(|| format!("parsing {}", path.display()))
}

/// The pins of the eBPF crate in `dir` (memwatch-ebpf/).
pub fn read(dir: &Path) -> anyhow::Result<Pins> {
    let toolchain = read_toml(&dir.join("rust-toolchain.toml"))?;
    let manifest = read_toml(&dir.join("Cargo.toml"))?;
    let meta = manifest
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("memwatch"));
    let pin = |key: &str| -> anyhow::Result<String> {
        meta.and_then(|m| m.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("memwatch-ebpf/Cargo.toml has no [package.metadata.memwatch] {key}"))
    };
    let table = toolchain.get("toolchain");
    Ok(Pins {
        toolchain: table
            .and_then(|t| t.get("channel"))
            .and_then(|c| c.as_str())
            .ok_or_else(|| anyhow!("memwatch-ebpf/rust-toolchain.toml names no toolchain.channel"))?
            .to_string(),
        components: table
            .and_then(|t| t.get("components"))
            .and_then(|c| c.as_array())
            .map(|c| c.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        bpf_linker: pin("bpf-linker")?,
        llvm_major: pin("llvm-major")?,
        llvm_package_version: pin("llvm-package-version")?,
    })
}

//! The eBPF object built into this binary, and what it was built with: the
//! bytecode, and so the verifier's cost of loading it, depends on the
//! toolchain, bpf-linker and LLVM as much as on the source (see
//! memwatch/build.rs, which pins them).

use serde::Serialize;

/// The eBPF object built by build.rs.
pub static BYTES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memwatch"));

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Identity {
    pub toolchain: &'static str,
    pub bpf_linker: &'static str,
    pub llvm: &'static str,
    pub sha256: &'static str,
}

pub const IDENTITY: Identity = Identity {
    toolchain: env!("MEMWATCH_EBPF_TOOLCHAIN"),
    bpf_linker: env!("MEMWATCH_EBPF_BPF_LINKER"),
    llvm: env!("MEMWATCH_EBPF_LLVM"),
    sha256: env!("MEMWATCH_EBPF_SHA256"),
};

/// `memwatch --version`: the daemon's version, then the object's identity.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\neBPF object sha256 ",
    env!("MEMWATCH_EBPF_SHA256"),
    "\n  built by ",
    env!("MEMWATCH_EBPF_TOOLCHAIN"),
    "\n  linked by bpf-linker ",
    env!("MEMWATCH_EBPF_BPF_LINKER"),
    " with ",
    env!("MEMWATCH_EBPF_LLVM"),
);

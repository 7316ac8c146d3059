use which::which;

/// Rebuild when bpf-linker changes: the eBPF build depends on it without
/// cargo knowing (the same imperfect solution as aya-template).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}

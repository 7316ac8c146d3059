//! The eBPF object is reproducible: built twice from nothing, with the
//! pinned toolchain, it is the same bytes both times and the same as the
//! object built into the memwatch binary under test (whose identity
//! `memwatch --version` reports). What the verifier spends on loading it
//! depends on those bytes.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::*;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap());
    c
}

/// Runs memwatch's build script afresh in `target` (nothing of a previous
/// build of memwatch is kept there, the eBPF crate's build-std included) and
/// returns the object it built.
fn build_object(target: &Path) -> Vec<u8> {
    let clean = cargo()
        .args(["clean", "--package", "memwatch", "--target-dir"])
        .arg(target)
        .output()
        .unwrap();
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    let out = cargo()
        .args(["check", "--package", "memwatch", "--lib", "--target-dir"])
        .arg(target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the eBPF object failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<PathBuf> = std::fs::read_dir(target.join("debug/build"))
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path().join("out/memwatch")))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(objects.len(), 1, "one eBPF object expected: {objects:?}");
    std::fs::read(&objects[0]).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
#[ignore = "builds the eBPF object twice with the pinned toolchain (minutes); run with `cargo xtask test`"]
fn the_ebpf_object_is_the_same_bytes_built_twice_from_nothing() {
    let (code, _, version) = memwatch(&["--version"]);
    assert_eq!(code, 0);
    let version = String::from_utf8(version).unwrap();
    let embedded = version
        .lines()
        .find_map(|l| l.strip_prefix("eBPF object sha256 "))
        .unwrap_or_else(|| panic!("no object identity in `memwatch --version`: {version}"))
        .trim()
        .to_string();

    let target = std::env::temp_dir().join(format!("memwatch-ebpf-build-{}", std::process::id()));
    let first = build_object(&target);
    let second = build_object(&target);
    let _ = std::fs::remove_dir_all(&target);
    assert!(first.len() > 1000, "an object of {} bytes", first.len());
    assert!(
        first == second,
        "two builds differ: {} and {}",
        sha256(&first),
        sha256(&second)
    );
    assert_eq!(
        sha256(&first),
        embedded,
        "the object built now differs from the one in the memwatch binary under test"
    );
    eprintln!(
        "eBPF object: {} bytes, sha256 {embedded}, identical in two builds and in the binary\n{version}",
        first.len()
    );
}

//! Hostile input to the parsers memwatch runs on what it does not control:
//! every file of the regression corpus (`tests/corpus/TARGET/`, inputs the
//! fuzzers found or that were written to break an assumption) and malformed
//! ELF files made here from a real one — truncated, with bogus offsets and
//! huge counts. Each parser must return, quickly, and never panic. No root.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use memwatch::fuzz::{TARGETS, elf};

/// Far above any parse of these inputs (milliseconds): a loop or a
/// quadratic blow-up on hostile counts shows as seconds.
const SLOW: Duration = Duration::from_secs(2);

fn run(name: &str, f: fn(&[u8]), input: &[u8]) {
    let t = Instant::now();
    f(input);
    assert!(t.elapsed() < SLOW, "{name} took {:?}", t.elapsed());
}

#[test]
fn the_regression_corpus_is_parsed_without_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut total = 0;
    for (target, f) in TARGETS {
        let files = std::fs::read_dir(dir.join(target)).unwrap_or_else(|e| panic!("corpus for {target}: {e}"));
        for file in files {
            let path = file.unwrap().path();
            run(&path.display().to_string(), *f, &std::fs::read(&path).unwrap());
            total += 1;
        }
    }
    assert!(total >= TARGETS.len(), "{total} corpus files");
}

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A real, small ELF64 executable with sections, program headers and CFI.
fn real_elf() -> Vec<u8> {
    let data = std::fs::read("/usr/bin/true").expect("/usr/bin/true");
    assert_eq!(&data[..5], b"\x7fELF\x02");
    data
}

#[test]
fn truncated_elf_files_are_refused_or_read_partly() {
    let data = real_elf();
    let (shoff, phoff) = (u64_at(&data, 0x28), u64_at(&data, 0x20));
    let mut lengths: Vec<usize> = (0..=97).map(|i| data.len() * i / 97).collect();
    lengths.extend([
        1,
        4,
        16,
        63,
        64,
        65,
        phoff + 1,
        phoff + 56,
        shoff,
        shoff + 1,
        shoff + 64,
        data.len() - 1,
    ]);
    for len in lengths.into_iter().filter(|&l| l <= data.len()) {
        run(&format!("truncated to {len}"), elf, &data[..len]);
    }
}

#[test]
fn bogus_offsets_and_huge_counts_are_refused() {
    let data = real_elf();
    let (phoff, shoff) = (u64_at(&data, 0x20), u64_at(&data, 0x28));
    let (phnum, shnum) = (u16_at(&data, 0x38), u16_at(&data, 0x3c));
    let huge = [
        u64::MAX,
        u64::MAX / 2,
        1 << 40,
        data.len() as u64,
        data.len() as u64 - 1,
    ];
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut edit = |what: String, f: &dyn Fn(&mut Vec<u8>)| {
        let mut d = data.clone();
        f(&mut d);
        cases.push((what, d));
    };
    for &h in &huge {
        edit(format!("e_phoff {h:#x}"), &|d| put_u64(d, 0x20, h));
        edit(format!("e_shoff {h:#x}"), &|d| put_u64(d, 0x28, h));
    }
    for n in [0u16, 1, 0x7fff, 0xffff] {
        edit(format!("e_phnum {n}"), &|d| {
            d[0x38..0x3a].copy_from_slice(&n.to_le_bytes())
        });
        edit(format!("e_shnum {n}"), &|d| {
            d[0x3c..0x3e].copy_from_slice(&n.to_le_bytes())
        });
        edit(format!("e_shstrndx {n}"), &|d| {
            d[0x3e..0x40].copy_from_slice(&n.to_le_bytes())
        });
    }
    // Every section's offset, size, link and entry size; every segment's
    // offset, address and sizes.
    for i in 0..shnum {
        let at = shoff + i * 64;
        for (field, off) in [("sh_offset", 0x18), ("sh_size", 0x20), ("sh_entsize", 0x38)] {
            for &h in &huge {
                edit(format!("section {i} {field} {h:#x}"), &|d| put_u64(d, at + off, h));
            }
        }
        edit(format!("section {i} sh_link"), &|d| {
            d[at + 0x28..at + 0x2c].copy_from_slice(&u32::MAX.to_le_bytes())
        });
    }
    for i in 0..phnum {
        let at = phoff + i * 56;
        for (field, off) in [
            ("p_offset", 0x08),
            ("p_vaddr", 0x10),
            ("p_filesz", 0x20),
            ("p_memsz", 0x28),
        ] {
            for &h in &huge {
                edit(format!("segment {i} {field} {h:#x}"), &|d| put_u64(d, at + off, h));
            }
        }
    }
    assert!(cases.len() > 100, "{} cases", cases.len());
    for (what, d) in &cases {
        run(what, elf, d);
    }
}

#[test]
fn corrupted_call_frame_information_is_survived() {
    let data = real_elf();
    let file = object::File::parse(&*data).unwrap();
    use object::{Object, ObjectSection};
    let eh = file.section_by_name(".eh_frame").expect(".eh_frame");
    let (start, size) = eh.file_range().unwrap();
    let (start, size) = (start as usize, size as usize);
    // Each of 200 positions across the CFI set to 0xff, then to 0x00: lengths,
    // pointer encodings and instructions all get hit.
    for i in 0..200 {
        let at = start + size * i / 200;
        for v in [0xffu8, 0x00, 0x80] {
            let mut d = data.clone();
            d[at] = v;
            run(&format!(".eh_frame byte {at:#x} = {v:#x}"), elf, &d);
        }
    }
}

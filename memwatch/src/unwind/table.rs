//! An object's unwind table: its `.eh_frame` (and `.debug_frame`) call-frame
//! information, read with gimli and reduced to the compact rows the kernel
//! side follows. Pure: bytes of an ELF file in, rows out.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, LittleEndian, RegisterRule, UnwindContext, UnwindSection,
    X86_64,
};
use memwatch_common::unwind::{RBP_AT_RBP, RBP_LOST, RBP_SAME, RuleKind, UnwindRow};
use object::{Object, ObjectSection, ObjectSegment};

type Slice<'a> = gimli::EndianSlice<'a, LittleEndian>;

/// What reading an object's CFI found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Sorted by pc; each rule holds until the next row's pc.
    pub rows: Vec<UnwindRow>,
    pub fdes: usize,
    /// Rows as the CFI lists them, before merging equal neighbours.
    pub cfi_rows: usize,
    /// Rows whose rule the kernel side does not follow.
    pub unsupported: usize,
    /// Bytes of code the FDEs cover (not PLT stubs, nor outermost frames),
    /// and of it in functions that set up a frame pointer (`push %rbp; mov %rsp,%rbp`: the CFA at rbp + 16, the
    /// caller's rbp saved below the return address).
    pub code_bytes: u64,
    pub frame_pointer_bytes: u64,
    /// Loadable segments: (virtual address, file offset, size in the file),
    /// to place the rows in a process's address space.
    pub segments: Vec<(u64, u64, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("not an ELF object memwatch can read: {0}")]
    Elf(#[from] object::Error),
    #[error("malformed call-frame information: {0}")]
    Cfi(#[from] gimli::Error),
    #[error("code above 4 GiB in the object's address space")]
    TooHigh,
}

/// A row as gimli gives it, before the gaps between functions are filled.
struct Span {
    start: u64,
    end: u64,
    row: UnwindRow,
}

/// Reads the CFI of the ELF object `data`. An object without any gives an
/// empty table (its code is walked by frame pointers).
pub fn build(data: &[u8]) -> Result<Table, TableError> {
    let file = object::File::parse(data)?;
    let mut table = Table {
        segments: file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (s.address(), off, size)
            })
            .collect(),
        ..Table::default()
    };
    let mut spans = Vec::new();
    let text = file.section_by_name(".text").map_or(0, |s| s.address());
    // PLT stubs jump rather than call: no frame of theirs is ever a caller.
    let plt: Vec<(u64, u64)> = file
        .sections()
        .filter(|s| s.name().is_ok_and(|n| n.starts_with(".plt")))
        .map(|s| (s.address(), s.address().saturating_add(s.size())))
        .collect();
    if let Some(eh) = file.section_by_name(".eh_frame")
        && let Ok(bytes) = eh.data()
    {
        let section = EhFrame::new(bytes, LittleEndian);
        let bases = BaseAddresses::default().set_eh_frame(eh.address()).set_text(text);
        read_section(&section, &bases, &plt, &mut spans, &mut table)?;
    }
    // .debug_frame (in unstripped objects) adds what .eh_frame lacks, if
    // anything: functions built with -fno-asynchronous-unwind-tables.
    if let Some(df) = file.section_by_name(".debug_frame")
        && let Ok(bytes) = df.data()
    {
        let covered = covered_ranges(&spans);
        let section = DebugFrame::new(bytes, LittleEndian);
        let mut extra = Vec::new();
        read_section(&section, &BaseAddresses::default(), &plt, &mut extra, &mut table)?;
        spans.extend(extra.into_iter().filter(|s| !overlaps(&covered, s.start, s.end)));
    }
    table.rows = rows_of(spans)?;
    Ok(table)
}

fn read_section<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    bases: &BaseAddresses,
    plt: &[(u64, u64)],
    spans: &mut Vec<Span>,
    table: &mut Table,
) -> Result<(), gimli::Error>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else { continue };
        // One bad FDE (a linker's leftover, say) costs its function only.
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            continue;
        };
        table.fdes += 1;
        let signal = fde.is_signal_trampoline();
        let Ok(mut rows) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        let start = fde.initial_address();
        let in_plt = plt.iter().any(|&(a, b)| a <= start && start < b);
        let (mut frame_pointer, mut outermost) = (false, false);
        while let Ok(Some(r)) = rows.next_row() {
            table.cfi_rows += 1;
            let row = if signal {
                rule(RuleKind::Signal, 0, RBP_SAME)
            } else {
                convert(r, section)
            };
            if row.kind() == RuleKind::Unsupported {
                table.unsupported += 1;
            }
            frame_pointer |= row.same_rule(&FRAME_POINTER_SET_UP);
            outermost |= row.kind() == RuleKind::End;
            spans.push(Span {
                start: r.start_address(),
                end: r.end_address(),
                row,
            });
        }
        // `_start` and a thread's start have no caller to find.
        if !in_plt && !outermost {
            // Saturating: lengths come from the file, which may lie.
            table.code_bytes = table.code_bytes.saturating_add(fde.len());
            if frame_pointer {
                table.frame_pointer_bytes = table.frame_pointer_bytes.saturating_add(fde.len());
            }
        }
    }
    Ok(())
}

/// The rule inside a function that keeps a frame pointer, once it has set
/// it up: CFA = rbp + 16, the caller's rbp saved at CFA − 16.
const FRAME_POINTER_SET_UP: UnwindRow = UnwindRow {
    pc: 0,
    kind: RuleKind::CfaRbp as u8,
    rbp: -2,
    cfa: 2,
};

impl Table {
    /// Whether the object was built to keep frame pointers: nearly all of
    /// its code (by size, so that the C runtime's few small functions in
    /// every executable do not count for much) sets one up. Its frames are
    /// then walked by frame pointers, as fast as without tables; a function
    /// of it that keeps none (hand-written assembly) costs its caller's
    /// frame, as for every frame-pointer profiler.
    pub fn keeps_frame_pointers(&self) -> bool {
        self.code_bytes > 0 && u128::from(self.frame_pointer_bytes) * 100 >= u128::from(self.code_bytes) * 95
    }
}

fn rule(kind: RuleKind, cfa: i16, rbp: i8) -> UnwindRow {
    UnwindRow {
        pc: 0,
        kind: kind as u8,
        rbp,
        cfa,
    }
}

/// A byte offset as 8-byte words, if it is a whole number of them in range.
fn words<T: TryFrom<i64>>(offset: i64) -> Option<T> {
    if offset % 8 != 0 {
        return None;
    }
    T::try_from(offset / 8).ok()
}

fn convert<'a, S: UnwindSection<Slice<'a>>>(r: &gimli::UnwindTableRow<usize>, section: &S) -> UnwindRow {
    let unsupported = rule(RuleKind::Unsupported, 0, RBP_SAME);
    match r.register(X86_64::RA) {
        Some(RegisterRule::Undefined) => return rule(RuleKind::End, 0, RBP_SAME),
        Some(RegisterRule::Offset(-8)) | None => {}
        Some(_) => return unsupported,
    }
    let (kind, cfa) = match r.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match *register {
                X86_64::RSP => RuleKind::CfaRsp,
                X86_64::RBP => RuleKind::CfaRbp,
                _ => return unsupported,
            };
            match words::<i16>(*offset) {
                Some(w) => (kind, w),
                None => return unsupported,
            }
        }
        CfaRule::Expression(e) => match e.get(section).ok().map(|e| classify_cfa(e.0.slice())) {
            Some(Some(r)) => r,
            _ => return unsupported,
        },
    };
    let rbp = match r.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => RBP_SAME,
        Some(RegisterRule::Offset(off)) => match words::<i8>(off) {
            Some(w) if w < 0 && w != RBP_AT_RBP => w,
            _ => RBP_LOST,
        },
        Some(RegisterRule::Expression(e)) => match e.get(section).map(|e| e.0.slice()) {
            // DW_OP_breg6 (rbp) 0: saved at [rbp].
            Ok([0x76, 0x00]) => RBP_AT_RBP,
            _ => RBP_LOST,
        },
        Some(_) => RBP_LOST,
    };
    rule(kind, cfa, rbp)
}

/// The CFA expressions compilers and linkers emit on x86-64 that have a
/// simple meaning: a realigned frame's `DW_OP_breg6 (rbp) N; DW_OP_deref`,
/// and the PLT's `DW_OP_breg7 (rsp) 8; …` (rsp + 8, or + 16 just after its
/// push: a PLT entry is never a return address, so + 8 will do).
fn classify_cfa(expr: &[u8]) -> Option<(RuleKind, i16)> {
    const BREG6: u8 = 0x76;
    const BREG7: u8 = 0x77;
    const DEREF: u8 = 0x06;
    let (&op, rest) = expr.split_first()?;
    let mut input = Slice::new(rest, LittleEndian);
    let offset = gimli::Reader::read_sleb128(&mut input).ok()?;
    let tail = input.slice();
    match (op, tail) {
        (BREG6, [DEREF]) => Some((RuleKind::CfaDerefRbp, words(offset)?)),
        (BREG7, [0x80, ..]) if offset == 8 => Some((RuleKind::CfaRsp, 1)),
        _ => None,
    }
}

fn covered_ranges(spans: &[Span]) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = spans.iter().map(|s| (s.start, s.end)).collect();
    r.sort_unstable();
    r
}

fn overlaps(sorted: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = sorted.partition_point(|&(s, _)| s < end);
    sorted[..i].iter().rev().take(64).any(|&(s, e)| s < end && start < e)
}

/// Sorted rows: each span's rule from its start, frame pointers from its end
/// where no other span starts, equal neighbours merged.
fn rows_of(spans: Vec<Span>) -> Result<Vec<UnwindRow>, TableError> {
    // (pc, 0 = a gap after a span / 1 = a span's rule): a rule starting where
    // another span ends wins over the gap.
    let mut starts: Vec<u64> = spans.iter().map(|s| s.start).collect();
    starts.sort_unstable();
    let mut points: Vec<(u64, u8, UnwindRow)> = Vec::with_capacity(spans.len() * 2);
    for s in &spans {
        if s.start >= s.end {
            continue;
        }
        points.push((s.start, 1, s.row));
        // Functions are padded to 16 bytes: no code runs in a shorter gap,
        // and a row for it would only make the table longer.
        let next = starts[starts.partition_point(|&x| x < s.end)..].first();
        if next.is_none_or(|&n| n >= s.end + 16) {
            points.push((s.end, 0, rule(RuleKind::FramePointer, 0, RBP_SAME)));
        }
    }
    points.sort_by_key(|&(pc, prio, _)| (pc, prio));
    let mut rows: Vec<UnwindRow> = Vec::with_capacity(points.len());
    for (i, &(pc, _, row)) in points.iter().enumerate() {
        if points.get(i + 1).is_some_and(|&(next, ..)| next == pc) {
            continue;
        }
        let pc = u32::try_from(pc).map_err(|_| TableError::TooHigh)?;
        if rows.last().is_some_and(|last| last.same_rule(&row)) {
            continue;
        }
        rows.push(UnwindRow { pc, ..row });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row covering `pc` (an address of the object), as the kernel finds it.
    fn lookup(rows: &[UnwindRow], pc: u64) -> Option<UnwindRow> {
        let i = rows.partition_point(|r| u64::from(r.pc) <= pc);
        i.checked_sub(1).map(|i| rows[i])
    }

    fn libc_path() -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("/libc.so"))
            .expect("this test maps libc")
            .to_string()
    }

    #[test]
    fn libc_has_a_table_the_kernel_can_follow() {
        let data = std::fs::read(libc_path()).unwrap();
        let t = build(&data).unwrap();
        assert!(t.fdes > 1000, "{} FDEs", t.fdes);
        assert!(t.rows.len() > 5000, "{} rows", t.rows.len());
        assert!(t.rows.windows(2).all(|w| w[0].pc < w[1].pc), "rows sorted and distinct");
        assert!(
            t.unsupported * 100 < t.cfi_rows,
            "{} of {} rows unsupported",
            t.unsupported,
            t.cfi_rows
        );
        // malloc's entry: CFA = rsp + 8, the return address just pushed.
        let malloc = symbol(&data, "malloc");
        let r = lookup(&t.rows, malloc).unwrap();
        assert_eq!((r.kind(), r.cfa, r.rbp), (RuleKind::CfaRsp, 1, RBP_SAME));
        // __restore_rt is a signal frame, found from its return address - 1.
        if let Some(restore) = symbol_opt(&data, "__restore_rt") {
            assert_eq!(lookup(&t.rows, restore - 1).unwrap().kind(), RuleKind::Signal);
        }
    }

    fn symbol_opt(data: &[u8], name: &str) -> Option<u64> {
        use object::ObjectSymbol;
        let f = object::File::parse(data).unwrap();
        f.dynamic_symbols()
            .chain(f.symbols())
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    }

    fn symbol(data: &[u8], name: &str) -> u64 {
        symbol_opt(data, name).unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn gaps_between_functions_fall_back_to_frame_pointers() {
        let r = |kind, cfa| rule(kind, cfa, RBP_SAME);
        let spans = vec![
            Span {
                start: 0x100,
                end: 0x110,
                row: r(RuleKind::CfaRsp, 1),
            },
            Span {
                start: 0x110,
                end: 0x120,
                row: r(RuleKind::CfaRsp, 2),
            },
            // A neighbour with the same rule right after: merged.
            Span {
                start: 0x120,
                end: 0x130,
                row: r(RuleKind::CfaRsp, 2),
            },
            // After a gap.
            Span {
                start: 0x200,
                end: 0x210,
                row: r(RuleKind::CfaRsp, 1),
            },
        ];
        let rows = rows_of(spans).unwrap();
        let got: Vec<(u32, RuleKind, i16)> = rows.iter().map(|r| (r.pc, r.kind(), r.cfa)).collect();
        assert_eq!(
            got,
            vec![
                (0x100, RuleKind::CfaRsp, 1),
                (0x110, RuleKind::CfaRsp, 2),
                (0x130, RuleKind::FramePointer, 0),
                (0x200, RuleKind::CfaRsp, 1),
                (0x210, RuleKind::FramePointer, 0),
            ]
        );
        assert_eq!(lookup(&rows, 0xff), None);
        assert_eq!(lookup(&rows, 0x125).unwrap().cfa, 2);
        assert_eq!(lookup(&rows, 0x150).unwrap().kind(), RuleKind::FramePointer);
    }

    #[test]
    fn realigned_frames_and_plt_expressions_are_understood() {
        // DW_OP_breg6 -8; DW_OP_deref
        assert_eq!(classify_cfa(&[0x76, 0x78, 0x06]), Some((RuleKind::CfaDerefRbp, -1)));
        // The PLT's expression.
        assert_eq!(
            classify_cfa(&[0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22]),
            Some((RuleKind::CfaRsp, 1))
        );
        assert_eq!(classify_cfa(&[0x77, 0x10, 0x06]), None);
        assert_eq!(classify_cfa(&[]), None);
    }

    /// A program built by the C compiler with `flags`.
    fn compiled(name: &str, flags: &[&str]) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("memwatch-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("fp.c");
        std::fs::write(
            &src,
            "#include <stdlib.h>\n\
             void *volatile sink;\n\
             __attribute__((noinline)) void inner(int n) { sink = malloc(n); }\n\
             __attribute__((noinline)) void outer(int n) { for (int i = 0; i < n; i++) inner(i); }\n\
             int main(int argc, char **argv) { outer(argc * 100); return 0; }\n",
        )
        .unwrap();
        let out = dir.join(name);
        let status = std::process::Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .args(flags)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(out).unwrap()
    }

    #[test]
    fn objects_built_to_keep_frame_pointers_are_told_from_those_that_omit_them() {
        let fp = build(&compiled("fp", &["-fno-omit-frame-pointer"])).unwrap();
        assert!(
            fp.keeps_frame_pointers(),
            "{} of {} bytes",
            fp.frame_pointer_bytes,
            fp.code_bytes
        );
        let nofp = build(&compiled("nofp", &["-fomit-frame-pointer"])).unwrap();
        assert!(
            !nofp.keeps_frame_pointers(),
            "{} of {} bytes",
            nofp.frame_pointer_bytes,
            nofp.code_bytes
        );
        // Debian builds its libc without them.
        let libc = build(&std::fs::read(libc_path()).unwrap()).unwrap();
        assert!(!libc.keeps_frame_pointers());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(build(b"not an elf").is_err());
        assert!(build(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]).is_err());
    }
}

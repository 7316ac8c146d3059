//! What `memwatch check` prints and exits with: blocks by kind and stack,
//! largest first, suppressions applied. Pure.

use std::collections::HashMap;

use serde::Serialize;

use super::scan::Kind;
use crate::symbolize::Frame;

/// One block as classified, with its stack's frames.
#[derive(Debug, Clone)]
pub struct Found {
    pub size: u64,
    pub kind: Kind,
    pub stack_id: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Total {
    pub bytes: u64,
    pub blocks: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StackTotal {
    pub bytes: u64,
    pub blocks: u64,
    /// Innermost first, as in /leaks.
    pub frames: Vec<Frame>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Category {
    pub bytes: u64,
    pub blocks: u64,
    pub stacks: Vec<StackTotal>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckReport {
    pub command: Vec<String>,
    pub exit_code: i32,
    /// Definitely and indirectly lost together (valgrind's "lost" that
    /// LeakSanitizer reports): what --fail-on lost looks at.
    pub lost: Category,
    pub definitely_lost: Total,
    pub indirectly_lost: Total,
    /// Reached only through a pointer into the middle of a block.
    pub possibly_lost: Category,
    pub reachable: Category,
    /// Reached only from the C or C++ runtime's own data (stdio buffers,
    /// locale data): the runtime's, never failing a check, and not in
    /// memcheck's figures (it frees them at exit before it looks).
    pub runtime: Category,
    /// Blocks whose stack matched a suppression, of any kind.
    pub suppressed: Total,
    /// With --follow-forks: each process checked, at its own exit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessSummary>,
}

/// One process's figures (with --follow-forks).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcessSummary {
    pub pid: u32,
    pub command: String,
    pub lost: Total,
    pub possibly_lost: Total,
    pub reachable: Total,
}

impl ProcessSummary {
    pub fn of(
        pid: u32,
        command: &str,
        found: &[Found],
        frames: &HashMap<u64, Vec<Frame>>,
        suppressions: &Suppressions,
    ) -> Self {
        let r = build(Vec::new(), 0, found, frames, suppressions, 0);
        let total = |c: &Category| Total {
            bytes: c.bytes,
            blocks: c.blocks,
        };
        ProcessSummary {
            pid,
            command: command.to_string(),
            lost: total(&r.lost),
            possibly_lost: total(&r.possibly_lost),
            reachable: total(&r.reachable),
        }
    }
}

/// Patterns from a suppressions file, one per line: `leak:PATTERN`
/// (LeakSanitizer's form: a function, file or module), `fun:PATTERN` (a
/// function) or `obj:PATTERN` (a module); `*` matches any run of
/// characters; `#` starts a comment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Suppressions(Vec<(Field, String)>);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Any,
    Function,
    Module,
}

impl Suppressions {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (field, pattern) = match line.split_once(':') {
                Some(("leak", p)) => (Field::Any, p),
                Some(("fun", p)) => (Field::Function, p),
                Some(("obj", p)) => (Field::Module, p),
                _ => {
                    return Err(format!(
                        "line {}: {line:?}: expected leak:PATTERN, fun:PATTERN or obj:PATTERN",
                        n + 1
                    ));
                }
            };
            if pattern.trim().is_empty() {
                return Err(format!("line {}: an empty pattern", n + 1));
            }
            out.push((field, pattern.trim().to_string()));
        }
        Ok(Suppressions(out))
    }

    /// Whether any frame of the stack matches a pattern.
    pub fn matches(&self, frames: &[Frame]) -> bool {
        self.0.iter().any(|(field, p)| {
            frames.iter().any(|f| {
                let function = || f.function.as_deref().is_some_and(|s| glob(p, s));
                let module = || {
                    f.module
                        .as_deref()
                        .is_some_and(|m| glob(p, m) || glob(p, m.rsplit('/').next().unwrap_or(m)))
                };
                let file = || f.file.as_deref().is_some_and(|s| glob(p, s));
                match field {
                    Field::Function => function(),
                    Field::Module => module(),
                    Field::Any => function() || module() || file(),
                }
            })
        })
    }
}

/// `*`-glob match of the whole text; a pattern without `*` matches as a
/// substring (as LeakSanitizer's do).
fn glob(pattern: &str, text: &str) -> bool {
    if !pattern.contains('*') {
        return text.contains(pattern);
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Sums the blocks by kind and stack. `frames` names each stack.
pub fn build(
    command: Vec<String>,
    exit_code: i32,
    found: &[Found],
    frames: &HashMap<u64, Vec<Frame>>,
    suppressions: &Suppressions,
    limit: usize,
) -> CheckReport {
    let mut by: HashMap<(Kind, u64), Total> = HashMap::new();
    let mut suppressed = Total::default();
    let mut totals: HashMap<Kind, Total> = HashMap::new();
    let none = Vec::new();
    for f in found {
        let stack = frames.get(&f.stack_id).unwrap_or(&none);
        if suppressions.matches(stack) {
            suppressed.bytes += f.size;
            suppressed.blocks += 1;
            continue;
        }
        for t in [
            by.entry((f.kind, f.stack_id)).or_default(),
            totals.entry(f.kind).or_default(),
        ] {
            t.bytes += f.size;
            t.blocks += 1;
        }
    }
    let category = |kinds: &[Kind]| {
        let mut stacks: HashMap<u64, Total> = HashMap::new();
        for ((k, id), t) in &by {
            if kinds.contains(k) {
                let s = stacks.entry(*id).or_default();
                s.bytes += t.bytes;
                s.blocks += t.blocks;
            }
        }
        let mut stacks: Vec<(u64, Total)> = stacks.into_iter().collect();
        stacks.sort_by(|a, b| {
            b.1.bytes
                .cmp(&a.1.bytes)
                .then(b.1.blocks.cmp(&a.1.blocks))
                .then(a.0.cmp(&b.0))
        });
        Category {
            bytes: stacks.iter().map(|s| s.1.bytes).sum(),
            blocks: stacks.iter().map(|s| s.1.blocks).sum(),
            stacks: stacks
                .into_iter()
                .take(limit)
                .map(|(id, t)| StackTotal {
                    bytes: t.bytes,
                    blocks: t.blocks,
                    frames: frames.get(&id).cloned().unwrap_or_default(),
                })
                .collect(),
        }
    };
    CheckReport {
        command,
        exit_code,
        lost: category(&[Kind::DefinitelyLost, Kind::IndirectlyLost]),
        definitely_lost: totals.get(&Kind::DefinitelyLost).cloned().unwrap_or_default(),
        indirectly_lost: totals.get(&Kind::IndirectlyLost).cloned().unwrap_or_default(),
        possibly_lost: category(&[Kind::PossiblyLost]),
        reachable: category(&[Kind::Reachable]),
        runtime: category(&[Kind::Runtime]),
        suppressed,
        processes: Vec::new(),
    }
}

/// What fails the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Definitely or indirectly lost blocks.
    Lost,
    /// Those, and blocks reached only through interior pointers (glibc's
    /// thread-local storage of running threads is one: see docs/src/ci.md).
    Possible,
    /// Any block left, reachable or not.
    Reachable,
    Never,
}

/// The exit code when the command itself succeeded and memwatch found what
/// `--fail-on` names (LeakSanitizer's default).
pub const LEAKS_FOUND: i32 = 23;

/// The command's own code when it failed; else [`LEAKS_FOUND`] or 0.
pub fn exit_code(r: &CheckReport, fail_on: FailOn) -> i32 {
    if r.exit_code != 0 {
        return r.exit_code;
    }
    let (lost, possible, reachable) = (r.lost.blocks > 0, r.possibly_lost.blocks > 0, r.reachable.blocks > 0);
    let failed = match fail_on {
        FailOn::Lost => lost,
        FailOn::Possible => lost || possible,
        FailOn::Reachable => lost || possible || reachable,
        FailOn::Never => false,
    };
    if failed { LEAKS_FOUND } else { 0 }
}

pub fn render_text(r: &CheckReport) -> String {
    use std::fmt::Write;
    let bytes = crate::leaks::text::bytes;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "memwatch check: {} (exit code {})",
        r.command.join(" "),
        r.exit_code
    );
    for p in &r.processes {
        let _ = writeln!(
            out,
            "  process {} ({}): lost {} in {}, possibly lost {} in {}, still reachable {} in {}",
            p.pid,
            p.command,
            bytes(p.lost.bytes),
            p.lost.blocks,
            bytes(p.possibly_lost.bytes),
            p.possibly_lost.blocks,
            bytes(p.reachable.bytes),
            p.reachable.blocks
        );
    }
    let sections = [
        ("LOST (no pointer reaches these blocks)", &r.lost),
        ("POSSIBLY LOST (only pointers into their middle)", &r.possibly_lost),
        ("STILL REACHABLE", &r.reachable),
    ];
    for (title, c) in sections {
        if c.blocks == 0 {
            continue;
        }
        let _ = writeln!(out, "\n{title}: {} in {} block(s)", bytes(c.bytes), c.blocks);
        for (i, s) in c.stacks.iter().enumerate() {
            let _ = writeln!(out, "  #{:<3} {:>10} in {} block(s)", i + 1, bytes(s.bytes), s.blocks);
            for f in s.frames.iter().take(12) {
                let _ = writeln!(
                    out,
                    "         {}{}",
                    f.function.as_deref().unwrap_or("??"),
                    match (&f.file, f.line) {
                        (Some(file), Some(line)) => format!("  {file}:{line}"),
                        _ => f.module.as_deref().map(|m| format!("  ({m})")).unwrap_or_default(),
                    }
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nSUMMARY: definitely lost {} in {} block(s); indirectly lost {} in {}; possibly lost {} in {}; still reachable {} in {}; suppressed {} in {}; the C runtime's own {} in {}",
        bytes(r.definitely_lost.bytes),
        r.definitely_lost.blocks,
        bytes(r.indirectly_lost.bytes),
        r.indirectly_lost.blocks,
        bytes(r.possibly_lost.bytes),
        r.possibly_lost.blocks,
        bytes(r.reachable.bytes),
        r.reachable.blocks,
        bytes(r.suppressed.bytes),
        r.suppressed.blocks,
        bytes(r.runtime.bytes),
        r.runtime.blocks,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaks::tests::frame;

    fn found() -> (Vec<Found>, HashMap<u64, Vec<Frame>>) {
        let f = |size, kind, stack_id| Found { size, kind, stack_id };
        let found = vec![
            f(100, Kind::DefinitelyLost, 1),
            f(100, Kind::DefinitelyLost, 1),
            f(50, Kind::IndirectlyLost, 2),
            f(30, Kind::PossiblyLost, 3),
            f(1000, Kind::Reachable, 4),
            f(7, Kind::DefinitelyLost, 5),
        ];
        let frames = HashMap::from([
            (1, vec![frame("lose_some", 10), frame("main", 20)]),
            (2, vec![frame("chain", 11)]),
            (3, vec![frame("interior", 12)]),
            (4, vec![frame("keep", 13)]),
            (5, vec![frame("third_party_init", 14)]),
        ]);
        (found, frames)
    }

    #[test]
    fn blocks_are_summed_by_kind_and_stack_largest_first() {
        let (found, frames) = found();
        let r = build(vec!["prog".into()], 0, &found, &frames, &Suppressions::default(), 10);
        assert_eq!((r.lost.bytes, r.lost.blocks), (257, 4));
        assert_eq!(r.definitely_lost, Total { bytes: 207, blocks: 3 });
        assert_eq!(r.indirectly_lost, Total { bytes: 50, blocks: 1 });
        assert_eq!(r.lost.stacks[0].frames[0].function.as_deref(), Some("lose_some"));
        assert_eq!((r.lost.stacks[0].bytes, r.lost.stacks[0].blocks), (200, 2));
        assert_eq!(r.reachable.bytes, 1000);
        assert_eq!(exit_code(&r, FailOn::Lost), LEAKS_FOUND);
        assert_eq!(exit_code(&r, FailOn::Never), 0);
        let text = render_text(&r);
        assert!(
            text.contains("LOST") && text.contains("lose_some") && text.contains("SUMMARY"),
            "{text}"
        );
    }

    #[test]
    fn suppressions_take_blocks_out_by_function_or_module() {
        let (found, frames) = found();
        let s = Suppressions::parse("# ours\nleak:third_party_*\nfun:chain\n").unwrap();
        let r = build(vec![], 0, &found, &frames, &s, 10);
        assert_eq!(r.suppressed, Total { bytes: 57, blocks: 2 });
        assert_eq!(r.lost.bytes, 200);
        let s = Suppressions::parse("obj:leaky").unwrap();
        assert!(s.matches(&frames[&1]), "module base names match");
        assert!(Suppressions::parse("frob:x").is_err());
        assert!(Suppressions::parse("leak:").is_err());
    }

    #[test]
    fn the_commands_own_failure_wins_and_a_clean_run_is_zero() {
        let r = build(vec![], 3, &[], &HashMap::new(), &Suppressions::default(), 10);
        assert_eq!(exit_code(&r, FailOn::Lost), 3);
        let r = build(vec![], 0, &[], &HashMap::new(), &Suppressions::default(), 10);
        assert_eq!(exit_code(&r, FailOn::Reachable), 0);
    }

    #[test]
    fn globs() {
        assert!(glob("a*c", "abbc") && glob("*lib*", "/usr/lib/x") && glob("main", "domain"));
        assert!(!glob("a*c", "abbd") && !glob("x*y*z", "xyq"));
    }

    #[test]
    fn the_runtimes_blocks_are_counted_apart_and_fail_nothing() {
        let f = |size, kind, stack_id| Found { size, kind, stack_id };
        let found = [
            f(4096, Kind::Runtime, 1),
            f(472, Kind::Reachable, 2),
            f(4, Kind::Reachable, 3),
        ];
        let frames = HashMap::from([
            (1, vec![frame("_IO_file_doallocate", 1), frame("main", 2)]),
            (2, vec![frame("__fopen_internal", 3), frame("main", 4)]),
            (3, vec![frame("strdup", 5), frame("main", 6)]),
        ]);
        let r = build(vec!["prog".into()], 0, &found, &frames, &Suppressions::default(), 10);
        assert_eq!((r.runtime.bytes, r.runtime.blocks), (4096, 1));
        assert_eq!(
            r.runtime.stacks[0].frames[0].function.as_deref(),
            Some("_IO_file_doallocate")
        );
        assert_eq!((r.reachable.bytes, r.reachable.blocks), (476, 2));
        assert_eq!(exit_code(&r, FailOn::Reachable), LEAKS_FOUND);
        let only_runtime = build(vec![], 0, &found[..1], &frames, &Suppressions::default(), 10);
        assert_eq!(exit_code(&only_runtime, FailOn::Reachable), 0);
        assert!(render_text(&only_runtime).contains("the C runtime's own 4.0 KiB in 1"));
    }
}

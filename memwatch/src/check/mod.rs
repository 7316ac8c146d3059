//! `memwatch check -- CMD [ARGS...]`: runs a command under exact tracking
//! from its first allocation and, when it exits, reports the blocks it did
//! not free — lost apart from still reachable, as valgrind's memcheck and
//! LeakSanitizer do — with their stacks, and exits non-zero when something
//! is lost (for CI).
//!
//! memwatch starts the command under ptrace, steps it through its system
//! calls until the dynamic loader has mapped its allocator, attaches the
//! probes and lets it run at full speed. At the exit stop (the address
//! space still intact) it reads the live table, scans the roots
//! ([`roots`]) and then the blocks they reach ([`scan`]), names the stacks
//! and lets the process finish.

mod detach;
pub mod report;
pub mod roots;
pub mod scan;
mod streams;
mod tracee;

use std::{collections::HashMap, os::unix::fs::FileExt, path::PathBuf};

use anyhow::Context;

use crate::{
    config::Config,
    kernel::Kernel,
    process::{ProcessTable, Selection, TrackError, procfs},
    symbolize::{Frame, Symbolize, native::NativeSymbolizer, python::PythonSymbolizer},
    target::TargetError,
};
use report::{Found, Suppressions};
use scan::Block;
use tracee::{Event, Tracee};

pub use detach::{close_after as close_probes_after, closing as closers_at_work};
pub use report::FailOn;

/// Frames of each stack, by stack id.
type Names = HashMap<u64, Vec<Frame>>;

pub struct Options {
    pub argv: Vec<String>,
    pub json: bool,
    /// Where the report goes instead of stderr (and stdout with `json`).
    pub log_file: Option<PathBuf>,
    pub fail_on: FailOn,
    pub suppressions: Option<PathBuf>,
    /// Stacks shown per category.
    pub limit: usize,
    /// Check the processes the command forks too, each at its exit.
    pub follow_forks: bool,
}

/// The stopped process's memory through /proc/PID/mem.
struct ProcMem(std::fs::File);

impl scan::Memory for ProcMem {
    fn read(&mut self, addr: u64, len: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0; usize::try_from(len).ok()?];
        self.0.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }
}

/// Runs the check; returns the exit code (see [`report::exit_code`]).
pub fn run(config: Config, opts: Options) -> anyhow::Result<i32> {
    let suppressions = match &opts.suppressions {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading suppressions {}", path.display()))?;
            Suppressions::parse(&text).map_err(|e| anyhow::anyhow!("suppressions {}: {e}", path.display()))?
        }
        None => Suppressions::default(),
    };
    // Created before the command runs: a path that cannot be written fails
    // the check before anything is spent on it.
    let log_file = match &opts.log_file {
        Some(path) => {
            Some(std::fs::File::create(path).with_context(|| format!("creating the log file {}", path.display()))?)
        }
        None => None,
    };
    let started = std::time::Instant::now();
    detach::wait_for_closers();
    let attaching = detach::AttachLock::take();
    let mut kernel = Kernel::load(config.maps, config.unwind, false, false)?;
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "eBPF programs loaded");
    let mut table = ProcessTable::for_config(&config, Vec::new()).skip_mappings();
    let mut tracee =
        Tracee::spawn(&opts.argv, opts.follow_forks).with_context(|| format!("starting {}", opts.argv.join(" ")))?;
    let pid = tracee.pid;
    match probe(&mut kernel, &mut table, &mut tracee, pid) {
        Ok(true) => {}
        Ok(false) => anyhow::bail!("{} ended before it mapped an allocator", opts.argv[0]),
        Err(e) => {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            anyhow::bail!("cannot track {}: {e}", opts.argv[0]);
        }
    }
    drop(attaching);
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "tracking; the command runs");
    tracee.resume(pid)?;

    let mut found: Vec<Found> = Vec::new();
    let mut frames: Names = HashMap::new();
    let mut processes = Vec::new();
    let end = loop {
        match tracee.next()? {
            Event::Forked(child) => {
                if let Err(e) = table.track(&mut kernel, child, Selection::Pid) {
                    tracing::warn!(pid = child, error = %e, "cannot check a forked process");
                }
                tracee.resume(child)?;
            }
            Event::Execed(p) => {
                // As the daemon follows an exec (a new generation; probes
                // kept if the allocator is the same object), stepped through
                // the loader until the new image has mapped it.
                if let Some(generation) = table.get(p).map(|i| i.generation) {
                    table.on_exec(&mut kernel, p, generation);
                    while table.has_pending() {
                        if tracee.step_syscall(p)?.is_some() {
                            break;
                        }
                        table.retry_pending(&mut kernel);
                    }
                }
                if tracee.processes().contains(&p) {
                    tracee.resume(p)?;
                }
            }
            Event::Exiting(p, threads) => {
                if table.get(p).is_some() {
                    let (mine, named) = examine(&kernel, &mut table, p, &threads)?;
                    if opts.follow_forks {
                        let command = procfs::read_cmdline(p, 16).unwrap_or_default();
                        processes.push(report::ProcessSummary::of(p, &command, &mine, &named, &suppressions));
                    }
                    found.extend(mine);
                    frames.extend(named);
                }
                tracee.release(p);
            }
            Event::Ended(p, end) if p == pid => break end,
            Event::Ended(..) => {}
        }
    };
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "the command ended");
    for p in tracee.processes() {
        tracing::warn!(pid = p, "a followed process outlives the command: not checked");
        tracee.detach(p);
    }
    let mut report = report::build(
        opts.argv.clone(),
        end.code(),
        &found,
        &frames,
        &suppressions,
        opts.limit,
    );
    report.processes = processes;
    // The text on stderr, as valgrind's, or in the log file; JSON for tools
    // in the log file, or on stdout after whatever the command printed.
    let text = report::render_text(&report);
    let json = if opts.json {
        Some(serde_json::to_string_pretty(&report)? + "\n")
    } else {
        None
    };
    let write = |mut file: &std::fs::File, what: &str| {
        use std::io::Write;
        file.write_all(what.as_bytes()).context("writing the log file")
    };
    match (&log_file, json) {
        (Some(file), Some(json)) => {
            write(file, &json)?;
            eprint!("{text}");
        }
        (Some(file), None) => {
            write(file, &text)?;
            eprintln!("memwatch check: {}", text.lines().last().unwrap_or_default());
        }
        (None, json) => {
            eprint!("{text}");
            print!("{}", json.unwrap_or_default());
        }
    }
    detach::in_background();
    Ok(report::exit_code(&report, opts.fail_on))
}

/// Tracks `pid` once its allocator is mapped, stepping it through the
/// loader's system calls until then (at exec only the executable and
/// ld.so are mapped; nothing has run that could allocate). False when it
/// ended first.
fn probe(kernel: &mut Kernel, table: &mut ProcessTable, tracee: &mut Tracee, pid: u32) -> anyhow::Result<bool> {
    loop {
        match table.track(kernel, pid, Selection::Pid) {
            Ok(()) => return Ok(true),
            Err(TrackError::Target(TargetError::NoAllocator { .. })) => {
                if tracee.step_syscall(pid)?.is_some() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// At `pid`'s exit stop: its live blocks, classified, and their stacks
/// named.
fn examine(
    kernel: &Kernel,
    table: &mut ProcessTable,
    pid: u32,
    threads: &[tracee::Registers],
) -> anyhow::Result<(Vec<Found>, Names)> {
    // The exec'd image's records, if the command exec'd.
    let generation = kernel
        .tracked_generation(pid)
        .or_else(|| table.get(pid).map(|p| p.generation))
        .context("the command's kernel state vanished")?;
    let mut live: Vec<(Block, u64)> = Vec::new();
    // Heap blocks only: anonymous mappings (thread stacks, arenas) are
    // neither leaks nor heap, as memcheck counts.
    let mmap = memwatch_common::cookie::CallKind::Mmap as u8;
    kernel.for_each_live(|k, r| {
        if k.tgid == pid && k.generation == generation && r.kind != mmap {
            live.push((
                Block {
                    addr: k.addr,
                    size: r.size,
                },
                r.stack_id,
            ));
        }
    })?;
    live.sort_by_key(|(b, _)| b.addr);
    live.dedup_by_key(|(b, _)| b.addr);
    let blocks: Vec<Block> = live.iter().map(|(b, _)| *b).collect();
    let maps = procfs::read_maps(pid).context("reading the command's memory map")?;
    let roots = roots::of(&maps, threads, &blocks);
    let mut mem = ProcMem(std::fs::File::open(format!("/proc/{pid}/mem"))?);
    let mut kinds = scan::classify(&blocks, &roots, &mut mem);
    // Streams left open are the program's, as memcheck counts them.
    let libc = procfs::mapped_files(&maps)
        .into_iter()
        .find(|f| f.path.rsplit('/').next().is_some_and(|n| n.starts_with("libc.so.")));
    let info = libc.as_ref().and_then(|f| table.object(pid, f));
    let word = |a: u64| {
        scan::Memory::read(&mut mem, a, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let open = match (&libc, &info) {
        (Some(libc), Some(info)) => streams::open(&maps, libc, info, word),
        _ => Vec::new(),
    };
    for stream in open {
        if let Ok(i) = blocks.binary_search_by_key(&stream, |b| b.addr)
            && kinds[i] == scan::Kind::Runtime
        {
            kinds[i] = scan::Kind::Reachable;
        }
    }
    let frames = name_stacks(kernel, table, pid, live.iter().map(|(_, s)| *s));
    tracing::debug!(pid, blocks = blocks.len(), "exit stop: scanned and named");
    let found = live
        .iter()
        .zip(&kinds)
        .map(|((b, stack_id), kind)| Found {
            size: b.size,
            kind: *kind,
            stack_id: *stack_id,
        })
        .collect();
    Ok((found, frames))
}

/// Symbolizes each distinct stack while the process is still there.
fn name_stacks(
    kernel: &Kernel,
    table: &ProcessTable,
    pid: u32,
    ids: impl Iterator<Item = u64>,
) -> HashMap<u64, Vec<Frame>> {
    let mut symbolizer = NativeSymbolizer::new(10_000);
    let mut python = PythonSymbolizer::new(10_000);
    let mut out = HashMap::new();
    for id in ids {
        if id == 0 || out.contains_key(&id) {
            continue;
        }
        let Some(stack) = kernel.stack(id) else { continue };
        let native: Vec<Frame> = symbolizer
            .symbolize(pid, stack.addresses())
            .into_iter()
            .flatten()
            .collect();
        let named = crate::collect::with_python(&table.unwind, &mut python, pid, &stack, native);
        out.insert(id, named.frames);
    }
    out
}

/// A failure of memwatch itself (not of the command): as `env` and
/// `timeout` do, 125.
pub const OWN_FAILURE: i32 = 125;

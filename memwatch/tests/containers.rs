//! Processes whose files the host does not name as they do: one in a chroot
//! (as systemd's `RootDirectory=` starts it), one started as container
//! runtimes start them (a mount and pid namespace, pivot_root, the old root
//! unmounted), and one whose executable and libc were replaced on disk after
//! it started. memwatch opens what each maps through its mappings, and must
//! track each as exactly as a plain process.

mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use common::*;

/// Where the root keeps its libraries: a directory the host does not have,
/// so that no path the process maps is a host file's.
const LIB_DIR: &str = "/opt/lib";

/// Built without frame pointers: its stacks are walked by the unwind tables
/// memwatch reads from the objects it opens.
const BUILD: Build = Build::NoFramePointers;

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Puts a copy of `from` at `to`, written by `cp`: a file this process held
/// open for writing could be inherited by another test thread's fork, and
/// exec'ing it (a loader is exec'd) would then fail with ETXTBSY.
fn copy(from: &Path, to: &Path) {
    let staged = to.with_file_name(format!(".{}.new", to.file_name().unwrap().to_string_lossy()));
    let status = Command::new("cp").arg("-L").arg(from).arg(&staged).status().unwrap();
    assert!(status.success(), "cp {} {}", from.display(), staged.display());
    fs::rename(&staged, to).unwrap();
}

/// A hard link to `from` at `to`, replacing whatever is there.
fn link(from: &Path, to: &Path) {
    let staged = to.with_file_name(format!(".{}.new", to.file_name().unwrap().to_string_lossy()));
    let _ = fs::remove_file(&staged);
    fs::hard_link(from, &staged).unwrap();
    fs::rename(&staged, to).unwrap();
}

/// The objects the leaker loads (its libraries and loader), as `ldd` lists them.
fn host_libraries() -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(fixture_binary_as("leaker", BUILD))
        .output()
        .unwrap();
    assert!(out.status.success(), "ldd: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p).split(" (").next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// A root directory with the leaker at `/leaker`, built to load its loader
/// and libraries from [`LIB_DIR`], and copies of the host's there.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = tmp().join("containers-root");
        let lib = root.join(LIB_DIR.trim_start_matches('/'));
        fs::create_dir_all(&lib).unwrap();
        let libraries = host_libraries();
        let loader = libraries
            .iter()
            .find(|l| file_name(l).starts_with("ld-linux"))
            .expect("ldd names the loader");
        let interpreter = format!("-Wl,--dynamic-linker={LIB_DIR}/{}", file_name(loader));
        let runpath = format!("-Wl,-rpath,{LIB_DIR}");
        let leaker = fixture_binary_into("leaker", BUILD, "leaker-optlib", &[&interpreter, &runpath]);
        for l in &libraries {
            copy(l, &lib.join(file_name(l)));
        }
        link(&leaker, &root.join("leaker"));
        root
    })
}

fn maps(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/maps")).unwrap()
}

/// The fixture's pid: the one child of `wrapper` (`unshare --fork` forks it).
fn only_child(wrapper: u32) -> u32 {
    let children = fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children")).unwrap();
    let pids: Vec<u32> = children.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 1, "children of {wrapper}: {pids:?}");
    pids[0]
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_process_in_a_chroot_is_tracked_exactly() {
    require_root();
    let root = root();
    // chroot execs the fixture: the pid is the fixture's.
    let mut fx = Fixture::start_command(Command::new("chroot").arg(root).arg("/leaker"));
    // Its maps name its files by our path to them, which its root does not have.
    let libc = format!("{}{LIB_DIR}/libc.so.6", root.display());
    assert!(maps(fx.pid).contains(&format!(" {libc}\n")), "{}", maps(fx.pid));
    tracks_exactly(&mut fx, &format!("{}/leaker", root.display()), &libc);
    assert!(fx.exit().success());
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_process_started_as_container_runtimes_do_is_tracked_exactly() {
    require_root();
    let root = root();
    let pivot = compile(
        "pivot",
        &[PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pivot.c")],
        &["-O1"],
    );
    let mut fx = Fixture::start_command(
        Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child"])
            .arg(&pivot)
            .arg(root)
            .arg("/leaker"),
    );
    fx.pid = only_child(fx.pid);
    // Its maps name its files by its own root's paths: the host has none of them.
    let libc = format!("{LIB_DIR}/libc.so.6");
    let m = maps(fx.pid);
    assert!(m.contains(&format!(" {libc}\n")) && m.contains(" /leaker\n"), "{m}");
    assert!(!Path::new(&libc).exists());
    // Placed as docker places a container (before memwatch reads it, when
    // it starts tracking), and named so in /leaks, with its pid inside.
    let cgroup = ContainerCgroup::join(fx.pid);
    let p = tracks_exactly(&mut fx, "/leaker", &libc);
    assert_eq!(p["container"], CONTAINER_ID, "{p:#}");
    assert_eq!(p["nspid"], 1, "the first process of its pid namespace: {p:#}");
    assert!(fx.exit().success());
    drop(cgroup);
}

#[test]
#[ignore = "needs root and eBPF; run with `cargo xtask test`"]
fn a_process_whose_files_were_replaced_on_disk_is_tracked_exactly() {
    require_root();
    let dir = tmp().join("containers-replaced");
    let lib = dir.join("lib");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&lib).unwrap();
    let runpath = format!("-Wl,-rpath,{}", lib.display());
    let built = fixture_binary_into("leaker", BUILD, "leaker-replaced", &[&runpath]);
    let libraries = host_libraries();
    let host_libc = libraries
        .iter()
        .find(|l| file_name(l).starts_with("libc.so"))
        .expect("ldd names libc");
    let (exe, libc) = (dir.join("leaker"), lib.join(file_name(host_libc)));
    link(&built, &exe);
    copy(host_libc, &libc);
    let mut fx = Fixture::start_from(&exe, &[]);
    assert!(maps(fx.pid).contains(&format!(" {}\n", libc.display())));

    // An upgrade: a new executable renamed over the old one; the library
    // deleted and another written at its path. Both are other programs.
    copy(&fixture_binary("rates"), &exe);
    fs::remove_file(&libc).unwrap();
    let other = libraries
        .iter()
        .find(|l| !file_name(l).starts_with("libc.so"))
        .expect("a library other than libc");
    copy(other, &libc);
    let m = maps(fx.pid);
    for f in [&exe, &libc] {
        assert!(m.contains(&format!(" {} (deleted)\n", f.display())), "{m}");
    }
    tracks_exactly(&mut fx, &exe.to_string_lossy(), &libc.to_string_lossy());
    assert!(fx.exit().success());
}

/// Tracks `fx` with `memwatch run --pid`, runs its work, and checks `/leaks`
/// against the fixture's own counts: every leaked byte and allocation at its
/// leak site in `exe`, with its whole call chain into `libc`, where the
/// probes are.
fn tracks_exactly(fx: &mut Fixture, exe: &str, libc: &str) -> serde_json::Value {
    let pid = fx.pid;
    let d = Daemon::start(FAST, &["--pid", &pid.to_string()]);
    d.wait_tracked(pid);
    d.wait_for_fresh_scan();
    let counts = fx.go();
    d.wait_for_fresh_scan();
    assert_eq!(counts.leaked_allocations, LEAKS_PER_KIND * 4);

    let malloc = probe_site(&d, "malloc");
    assert_eq!(malloc["module"], libc, "{malloc}");
    let probes = d.json("/probes");
    // /probes names the process where it runs, as /leaks does.
    let unwound = probes["unwind"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} in /probes: {probes:#}"));
    let place = memwatch::process::cgroup::read(pid);
    assert_eq!(unwound["nspid"], serde_json::json!(place.1), "{unwound:#}");
    assert_eq!(
        unwound["container"],
        serde_json::json!(place.0.container),
        "{unwound:#}"
    );
    // Opened, and attached to, through the mapping: the kernel resolves the
    // path to the inode mapped, whatever the process's root.
    let targets = memwatch::target::find_targets(pid, &mut Default::default(), Default::default()).unwrap();
    let target = targets.iter().find(|t| t.path == libc).expect("libc among the targets");
    assert!(
        target.open_path.starts_with(format!("/proc/{pid}/map_files/")),
        "{}",
        target.open_path.display()
    );

    let leaks = d.json(&format!("/leaks?pid={pid}&limit=100"));
    let p = leaks["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("the process in /leaks");
    assert_eq!(p["live_bytes"], counts.leaked_bytes);
    assert_eq!(p["live_allocations"], counts.leaked_allocations);
    assert_eq!(p["totals"]["allocations"], counts.allocations);
    assert_eq!(p["totals"]["frees"], counts.frees);
    assert_eq!(
        p["stacks"].as_array().unwrap().len(),
        4,
        "only the leak sites hold memory"
    );
    for (function, size) in LEAKS {
        let stacks = stacks_at(p, function);
        assert_eq!(stacks.len(), 1, "{function}: one stack expected, got {stacks:#?}");
        let s = stacks[0];
        assert_eq!(s["live_bytes"], size * LEAKS_PER_KIND, "{function}");
        assert_eq!(s["live_allocations"], LEAKS_PER_KIND, "{function}");
        for caller in ["do_work", "thread_main", "start_thread"] {
            assert!(stack_mentions(s, caller), "{function}: call chain {s:#}");
        }
        assert_eq!(s["truncated"], false, "{function}: {s:#}");
        assert_eq!(s["unwind"], "cfi", "{function}: {s:#}");
        let f = &s["frames"][0];
        assert_eq!(f["module"], exe, "{f}");
        assert!(f["file"].as_str().unwrap().ends_with("leaker.c"), "{f}");
        let start = s["frames"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["function"] == "start_thread")
            .unwrap();
        assert_eq!(start["module"], libc, "{start}");
    }
    eprintln!(
        "{exe} (pid {pid}): {} bytes in {} allocations live over {} stacks (fixture: {} in {}); totals {} allocations, {} frees",
        p["live_bytes"],
        p["live_allocations"],
        p["stacks"].as_array().unwrap().len(),
        counts.leaked_bytes,
        counts.leaked_allocations,
        p["totals"]["allocations"],
        p["totals"]["frees"],
    );
    p.clone()
}

/// A cgroup named as docker's systemd driver names a container's scope, in
/// the memory controller's v1 hierarchy (these hosts are hybrid) or the
/// unified one; removed when dropped, once its process has exited.
struct ContainerCgroup(PathBuf);

const CONTAINER_ID: &str = "5e1f0c2d3b4a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

impl ContainerCgroup {
    fn join(pid: u32) -> ContainerCgroup {
        let base = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a cgroup hierarchy with a memory controller or the unified one");
        let dir = base.join(format!("memwatch-test.slice/docker-{CONTAINER_ID}.scope"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        ContainerCgroup(dir)
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
        let _ = fs::remove_dir(self.0.parent().unwrap());
    }
}

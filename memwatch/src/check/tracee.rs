//! The command under check, run by memwatch under ptrace: started stopped,
//! let go once its allocator is probed, and stopped again at its exit with
//! its memory intact (`PTRACE_EVENT_EXIT` comes before the kernel releases
//! the address space), every thread's registers read, then let go. With
//! `follow`, the processes it forks are traced too, each stopped at birth
//! until memwatch has probed it and at its own exit.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io,
    os::unix::process::CommandExt,
    process::Command,
    time::{Duration, Instant},
};

/// A thread's registers at the exit stop.
#[derive(Debug, Clone, Copy)]
pub struct Registers {
    pub sp: u64,
    /// The thread pointer: its TLS block and control block are next to it.
    pub fs_base: u64,
    /// Every general-purpose register, as possible roots.
    pub words: [u64; 16],
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl Ended {
    /// As a shell reports it.
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(c) => c,
            Ended::Signaled(s) => 128 + s,
        }
    }
}

/// What a traced process did, for the check to act on.
#[derive(Debug)]
pub enum Event {
    /// A new process (fork), stopped until [`Tracee::resume`].
    Forked(u32),
    /// A process exec'd a new image; stopped until resumed or stepped.
    Execed(u32),
    /// A process is exiting: every thread held at its exit stop, with its
    /// registers, until [`Tracee::release`].
    Exiting(u32, Vec<Registers>),
    /// A process is gone.
    Ended(u32, Ended),
}

pub struct Tracee {
    /// The command's process.
    pub pid: u32,
    /// Thread → its process, for every thread traced and not gone.
    threads: HashMap<u32, u32>,
    /// Threads held at their exit stop, with their registers.
    exiting: HashMap<u32, Registers>,
    /// New processes not resumed yet, and whether their first stop was seen.
    newborn: HashMap<u32, bool>,
    /// Processes whose exit is being decided, or was reported.
    deciding: HashSet<u32>,
    reported: HashSet<u32>,
    events: VecDeque<Event>,
}

/// The SIGTRAP of a syscall stop, with `PTRACE_O_TRACESYSGOOD`.
const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;

fn ptrace(request: libc::c_uint, tid: u32, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: requests that take an integer (or nothing) as data.
    let r = unsafe { libc::ptrace(request, tid as libc::pid_t, 0usize, data) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Waits for `who` (-1: any traced thread): (tid, status).
fn wait(who: i32, block: bool) -> io::Result<Option<(u32, i32)>> {
    let mut status = 0;
    let flags = libc::__WALL | if block { 0 } else { libc::WNOHANG };
    // SAFETY: a valid status pointer.
    let tid = unsafe { libc::waitpid(who, &mut status, flags) };
    match tid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        t => Ok(Some((t as u32, status))),
    }
}

fn event(status: i32) -> i32 {
    status >> 16
}

fn stop_signal(status: i32) -> i32 {
    libc::WSTOPSIG(status)
}

impl Tracee {
    /// Starts `argv` stopped just after its exec.
    pub fn spawn(argv: &[String], follow: bool) -> io::Result<Tracee> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command given"))?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        // SAFETY: ptrace(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        // Reaped by waitpid here, never by std.
        std::mem::forget(child);
        match wait(pid as i32, true)? {
            Some((_, status)) if libc::WIFSTOPPED(status) => {}
            _ => return Err(io::Error::other(format!("{program} ended before it started"))),
        }
        let mut options = libc::PTRACE_O_TRACEEXIT
            | libc::PTRACE_O_TRACECLONE
            | libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_EXITKILL
            | libc::PTRACE_O_TRACESYSGOOD;
        if follow {
            options |= libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACEVFORK;
        }
        ptrace(libc::PTRACE_SETOPTIONS, pid, options as usize)?;
        Ok(Tracee {
            pid,
            threads: HashMap::from([(pid, pid)]),
            exiting: HashMap::new(),
            newborn: HashMap::new(),
            deciding: HashSet::new(),
            reported: HashSet::new(),
            events: VecDeque::new(),
        })
    }

    /// Runs process `pid` (stopped) to its next system call, passing on any
    /// signal it gets meanwhile. Returns how it ended, if it did.
    pub fn step_syscall(&mut self, pid: u32) -> io::Result<Option<Ended>> {
        ptrace(libc::PTRACE_SYSCALL, pid, 0)?;
        loop {
            let Some((_, status)) = wait(pid as i32, true)? else {
                continue;
            };
            if let Some(end) = ended(status) {
                self.threads.remove(&pid);
                self.events.push_back(Event::Ended(pid, end));
                return Ok(Some(end));
            }
            let sig = stop_signal(status);
            if sig == SYSCALL_STOP {
                return Ok(None);
            }
            // An event this early (a thread, an exit): nothing to hold yet.
            let pass = if sig == libc::SIGTRAP || sig == libc::SIGSTOP {
                0
            } else {
                sig
            };
            ptrace(libc::PTRACE_SYSCALL, pid, pass as usize)?;
        }
    }

    /// Lets a stopped process run (the command once probed, a new process,
    /// one that exec'd).
    pub fn resume(&mut self, pid: u32) -> io::Result<()> {
        if self.newborn.remove(&pid) == Some(false) {
            // Its first stop has not been waited for yet.
            loop {
                let Some((tid, status)) = wait(pid as i32, true)? else {
                    continue;
                };
                if ended(status).is_some() || libc::WIFSTOPPED(status) {
                    if let Some(end) = ended(status) {
                        self.threads.remove(&tid);
                        self.events.push_back(Event::Ended(pid, end));
                        return Ok(());
                    }
                    break;
                }
            }
        }
        ptrace(libc::PTRACE_CONT, pid, 0).map(drop)
    }

    /// The next thing a traced process did.
    pub fn next(&mut self) -> io::Result<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            if let Some((tid, status)) = wait(-1, true)? {
                self.handle(tid, status)?;
            }
        }
    }

    fn process_of(&self, tid: u32) -> u32 {
        self.threads
            .get(&tid)
            .copied()
            .unwrap_or_else(|| tgid(tid).unwrap_or(tid))
    }

    /// Takes one wait status.
    fn handle(&mut self, tid: u32, status: i32) -> io::Result<()> {
        let process = self.process_of(tid);
        // A process's first stop may come before its parent's fork event.
        let new_process = !self.threads.contains_key(&tid) && process == tid;
        if let Some(end) = ended(status) {
            self.threads.remove(&tid);
            self.exiting.remove(&tid);
            if tid == process {
                self.events.push_back(Event::Ended(process, end));
            }
            return Ok(());
        }
        self.threads.insert(tid, process);
        match (stop_signal(status), event(status)) {
            (libc::SIGTRAP, libc::PTRACE_EVENT_EXIT) => {
                self.exiting.insert(tid, registers(tid)?);
                if self.deciding.contains(&process) || self.reported.contains(&process) {
                    return Ok(());
                }
                // Other threads of an exit_group may have stopped meanwhile.
                self.deciding.insert(process);
                while let Some((t, s)) = wait(-1, false)? {
                    self.handle(t, s)?;
                }
                self.deciding.remove(&process);
                if self.is_final_exit(process) {
                    let regs = self.hold_all(process)?;
                    self.reported.insert(process);
                    self.events.push_back(Event::Exiting(process, regs));
                } else {
                    // Threads of a process that goes on: let them end.
                    let done: Vec<u32> = self
                        .exiting
                        .keys()
                        .copied()
                        .filter(|t| self.threads.get(t) == Some(&process))
                        .collect();
                    for t in done {
                        self.exiting.remove(&t);
                        let _ = ptrace(libc::PTRACE_CONT, t, 0);
                    }
                }
            }
            (libc::SIGTRAP, libc::PTRACE_EVENT_CLONE) => {
                self.threads.insert(ptrace_event_msg(tid)? as u32, process);
                ptrace(libc::PTRACE_CONT, tid, 0)?;
            }
            (libc::SIGTRAP, libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK) => {
                let child = ptrace_event_msg(tid)? as u32;
                self.threads.insert(child, child);
                self.newborn.entry(child).or_insert(false);
                self.events.push_back(Event::Forked(child));
                ptrace(libc::PTRACE_CONT, tid, 0)?;
            }
            (libc::SIGTRAP, libc::PTRACE_EVENT_EXEC) => {
                // The exec'ing thread now has the process's id.
                self.threads.retain(|_, p| *p != process);
                self.threads.insert(process, process);
                self.events.push_back(Event::Execed(process));
            }
            (libc::SIGSTOP, _) if new_process || self.newborn.contains_key(&tid) => {
                // A new process's first stop: it waits for resume().
                self.newborn.insert(tid, true);
            }
            // A new thread's first stop; other traps.
            (libc::SIGSTOP | libc::SIGTRAP, _) => {
                let _ = ptrace(libc::PTRACE_CONT, tid, 0);
            }
            // A signal for the program: passed on.
            (s, _) => {
                let _ = ptrace(libc::PTRACE_CONT, tid, s as usize);
            }
        }
        Ok(())
    }

    /// Whether the held exits are the process's: every other thread of it
    /// is held, gone, or was sent SIGKILL by an exit_group.
    fn is_final_exit(&self, process: u32) -> bool {
        self.threads
            .iter()
            .filter(|&(t, p)| *p == process && !self.exiting.contains_key(t))
            .all(|(&t, _)| !alive(process, t) || kill_pending(process, t))
    }

    /// Waits for the other threads of an exit_group to reach their exit
    /// stop; returns the registers of all.
    fn hold_all(&mut self, process: u32) -> io::Result<Vec<Registers>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let missing = |s: &Self| {
            s.threads
                .iter()
                .any(|(t, p)| *p == process && !s.exiting.contains_key(t) && alive(process, *t))
        };
        while missing(self) && Instant::now() < deadline {
            match wait(-1, false)? {
                Some((tid, status)) => {
                    // Exits of this process's threads are held; the rest is
                    // handled as ever (a nested exit of another process
                    // queues its own event).
                    if self.process_of(tid) == process
                        && stop_signal(status) == libc::SIGTRAP
                        && event(status) == libc::PTRACE_EVENT_EXIT
                        && ended(status).is_none()
                    {
                        self.exiting.insert(tid, registers(tid)?);
                    } else {
                        self.handle(tid, status)?;
                    }
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        Ok(self
            .exiting
            .iter()
            .filter(|(t, _)| self.threads.get(t) == Some(&process))
            .map(|(_, r)| *r)
            .collect())
    }

    /// Lets every held thread of `process` finish exiting.
    pub fn release(&mut self, process: u32) {
        let held: Vec<u32> = self
            .exiting
            .keys()
            .copied()
            .filter(|t| self.threads.get(t) == Some(&process))
            .collect();
        for tid in held {
            self.exiting.remove(&tid);
            let _ = ptrace(libc::PTRACE_CONT, tid, 0);
        }
        self.reported.remove(&process);
    }

    /// Processes still traced (followed children that outlive the command).
    pub fn processes(&self) -> HashSet<u32> {
        self.threads.values().copied().collect()
    }

    /// Stops tracing `process`: it runs on unchecked.
    pub fn detach(&mut self, process: u32) {
        let tids: Vec<u32> = self
            .threads
            .iter()
            .filter(|(_, p)| **p == process)
            .map(|(t, _)| *t)
            .collect();
        for t in tids {
            self.threads.remove(&t);
            // SAFETY: a stopped or running tracee; an error leaves it as is.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, t as libc::pid_t, 0usize, 0usize) };
        }
    }
}

fn ended(status: i32) -> Option<Ended> {
    if libc::WIFEXITED(status) {
        Some(Ended::Exited(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(Ended::Signaled(libc::WTERMSIG(status)))
    } else {
        None
    }
}

fn ptrace_event_msg(tid: u32) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: GETEVENTMSG writes one unsigned long.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETEVENTMSG,
            tid as libc::pid_t,
            0usize,
            &mut msg as *mut libc::c_ulong,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(msg)
}

fn registers(tid: u32) -> io::Result<Registers> {
    // SAFETY: zeroed is a valid user_regs_struct; GETREGS fills it.
    let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGS,
            tid as libc::pid_t,
            0usize,
            &mut r as *mut libc::user_regs_struct,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(Registers {
        sp: r.rsp,
        fs_base: r.fs_base,
        words: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15,
        ],
    })
}

fn thread_status(pid: u32, tid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()
}

/// The process a thread belongs to, from /proc.
fn tgid(tid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: u32, tid: u32) -> bool {
    thread_status(pid, tid).is_some_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| !st.trim_start().starts_with(['Z', 'X']))
    })
}

/// Whether SIGKILL is pending for the thread: exit_group sends it to every
/// other thread before the caller exits.
fn kill_pending(pid: u32, tid: u32) -> bool {
    thread_status(pid, tid).is_some_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("SigPnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (libc::SIGKILL - 1)) != 0)
    })
}

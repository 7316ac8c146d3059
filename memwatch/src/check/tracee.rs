//! The command under check, run by memwatch under ptrace: started stopped,
//! let go once its allocator is probed, and stopped again at its exit with
//! its memory intact (`PTRACE_EVENT_EXIT` comes before the kernel releases
//! the address space), every thread's registers read, then let go.

use std::{
    collections::{HashMap, HashSet},
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

/// How the command ended.
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

pub struct Tracee {
    pub pid: u32,
    /// Threads traced and not yet gone.
    threads: HashSet<u32>,
    /// Threads held at their exit stop, with their registers.
    exiting: HashMap<u32, Registers>,
}

const OPTIONS: libc::c_int =
    libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACESYSGOOD;
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

/// Waits for any traced thread: (tid, status).
fn wait_any(block: bool) -> io::Result<Option<(u32, i32)>> {
    let mut status = 0;
    let flags = libc::__WALL | if block { 0 } else { libc::WNOHANG };
    // SAFETY: a valid status pointer.
    let tid = unsafe { libc::waitpid(-1, &mut status, flags) };
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
    pub fn spawn(argv: &[String]) -> io::Result<Tracee> {
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
        let mut status = 0;
        // SAFETY: a valid status pointer.
        if unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::__WALL) } == -1 {
            return Err(io::Error::last_os_error());
        }
        if !libc::WIFSTOPPED(status) {
            return Err(io::Error::other(format!("{program} ended before it started")));
        }
        ptrace(libc::PTRACE_SETOPTIONS, pid, OPTIONS as usize)?;
        Ok(Tracee {
            pid,
            threads: HashSet::from([pid]),
            exiting: HashMap::new(),
        })
    }

    /// Runs the process to its next system call (entry or exit), passing on
    /// any signal it gets meanwhile. Returns how it ended, if it did.
    pub fn step_syscall(&mut self) -> io::Result<Option<Ended>> {
        ptrace(libc::PTRACE_SYSCALL, self.pid, 0)?;
        loop {
            let mut status = 0;
            // SAFETY: a valid status pointer.
            if unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::__WALL) } == -1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(end) = ended(status) {
                return Ok(Some(end));
            }
            let sig = stop_signal(status);
            if sig == SYSCALL_STOP {
                return Ok(None);
            }
            // An exit or clone event this early: nothing to hold yet.
            let pass = if sig == libc::SIGTRAP { 0 } else { sig };
            ptrace(libc::PTRACE_SYSCALL, self.pid, pass as usize)?;
        }
    }

    /// Lets the process run until it exits, following its threads. Returns
    /// the registers of every thread, all held at their exit stop (the
    /// address space intact), or how it ended if it got past that.
    pub fn run_to_exit(&mut self) -> io::Result<Result<Vec<Registers>, Ended>> {
        ptrace(libc::PTRACE_CONT, self.pid, 0)?;
        loop {
            let Some((tid, status)) = wait_any(true)? else { continue };
            if let Some(end) = self.handle(tid, status)? {
                return Ok(Err(end));
            }
            if self.exiting.is_empty() {
                continue;
            }
            // Other threads of an exit_group may have stopped meanwhile.
            while let Some((tid, status)) = wait_any(false)? {
                if let Some(end) = self.handle(tid, status)? {
                    return Ok(Err(end));
                }
            }
            if self.is_final_exit() {
                return self.hold_all().map(Ok);
            }
            // Threads of a process that goes on: let them end.
            for (tid, _) in self.exiting.drain() {
                let _ = ptrace(libc::PTRACE_CONT, tid, 0);
            }
        }
    }

    /// Takes one wait status: holds a thread at its exit stop (with its
    /// registers), follows new threads, passes signals on. Returns how the
    /// process ended if its leader is gone.
    fn handle(&mut self, tid: u32, status: i32) -> io::Result<Option<Ended>> {
        if let Some(end) = ended(status) {
            self.threads.remove(&tid);
            self.exiting.remove(&tid);
            return Ok((tid == self.pid).then_some(end));
        }
        // A thread we did not know yet: a clone's child, stopped at birth.
        self.threads.insert(tid);
        match (stop_signal(status), event(status)) {
            (libc::SIGTRAP, libc::PTRACE_EVENT_EXIT) => {
                self.exiting.insert(tid, registers(tid)?);
            }
            (libc::SIGTRAP, libc::PTRACE_EVENT_CLONE) => {
                self.threads.insert(ptrace_event_msg(tid)? as u32);
                ptrace(libc::PTRACE_CONT, tid, 0)?;
            }
            // The first stop of a new thread; other traps.
            (libc::SIGSTOP | libc::SIGTRAP, _) => {
                let _ = ptrace(libc::PTRACE_CONT, tid, 0);
            }
            // A signal for the program: passed on.
            (s, _) => {
                let _ = ptrace(libc::PTRACE_CONT, tid, s as usize);
            }
        }
        Ok(None)
    }

    /// Whether the held exits are the process's: every other thread is
    /// held, gone, or was sent SIGKILL by an exit_group.
    fn is_final_exit(&self) -> bool {
        self.threads
            .iter()
            .filter(|t| !self.exiting.contains_key(t))
            .all(|&t| !procfs_alive(self.pid, t) || kill_pending(self.pid, t))
    }

    /// Waits for the other threads of an exit_group to reach their exit
    /// stop, and reads their registers.
    fn hold_all(&mut self) -> io::Result<Vec<Registers>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .threads
            .iter()
            .any(|t| !self.exiting.contains_key(t) && procfs_alive(self.pid, *t))
            && Instant::now() < deadline
        {
            match wait_any(false)? {
                Some((tid, status)) => {
                    self.handle(tid, status)?;
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        Ok(self.exiting.values().copied().collect())
    }

    /// Lets every held thread finish exiting; returns how the process ended.
    pub fn release(mut self) -> io::Result<Ended> {
        for &tid in self.exiting.keys() {
            let _ = ptrace(libc::PTRACE_CONT, tid, 0);
        }
        self.exiting.clear();
        loop {
            let Some((tid, status)) = wait_any(true)? else { continue };
            match ended(status) {
                Some(end) if tid == self.pid => return Ok(end),
                Some(_) => {}
                None => {
                    let _ = ptrace(libc::PTRACE_CONT, tid, 0);
                }
            }
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

fn procfs_alive(pid: u32, tid: u32) -> bool {
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

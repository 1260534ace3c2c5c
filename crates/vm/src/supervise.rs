//! Command tasks under a supervisor, so that a task leaves no process behind.
//!
//! A command does not run as the worker's child. The worker forks a *supervisor*, a small
//! single-threaded copy of itself that never execs, and the supervisor forks the command:
//!
//! ```text
//! worker ──socket── supervisor (child subreaper) ── command (own process group) ── ...
//! ```
//!
//! - The supervisor is a child subreaper (`PR_SET_CHILD_SUBREAPER`): every process the
//!   command starts whose parent dies is re-parented to it, also one that left the
//!   command's process group or session (`setsid`, `nohup ... &`), so it sees them all.
//! - The command runs in its own process group, with `PR_SET_PDEATHSIG` = `SIGKILL` in
//!   case the supervisor itself is killed.
//! - The supervisor stops everything the command started (the command's process group,
//!   then its own children round after round as orphans come up to it) with `SIGTERM`,
//!   then `SIGKILL` after [`KILL_GRACE`], when the command ends, when the worker asks
//!   (finalize, spawner lost), when the worker dies (its end of the socket closes, however
//!   it died), or when the supervisor gets `SIGTERM`, `SIGINT` or `SIGHUP` (Ctrl-C).
//!   Only when it has no child left does it report the command's wait status on the
//!   socket and exit, so the task folder is removed after the last process is gone.
//!
//! The supervisor is forked by [`std::process::Command`] and runs from a `pre_exec` hook,
//! that is in the child of a fork of a multi-threaded process: from there on it only makes
//! system calls (async-signal-safe), allocates nothing and takes no lock, and it leaves by
//! `_exit`. The standard library has already set up the command's standard streams and
//! folder in it. The hook starts the command the way `posix_spawn` does: a `clone` that
//! shares the supervisor's memory (`CLONE_VM | CLONE_VFORK`) and execs at once, so no page
//! table is copied for it (forking the supervisor, a copy of the worker, instead cost
//! about 0.1 ms of CPU per case here, 5% of a case of `true`). Its program, arguments and
//! environment are prepared in the worker ([`Exec`]), with the standard library's meaning
//! (`PATH` searched in the command's own environment). An exec that fails is reported as
//! the standard library reports it: the hook returns the error, and [`Command::spawn`]
//! returns it.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// How long the processes of a task get between `SIGTERM` and `SIGKILL`.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// How often the supervisor looks for processes to signal while it stops a task.
const STOP_ROUND: Duration = Duration::from_millis(10);

/// A command running under its supervisor.
pub(crate) struct Supervised {
    supervisor: Child,
    /// The command's pid, as the supervisor reported it (0 if it could not).
    command: u32,
    /// The worker's end of the socket to the supervisor.
    link: UnixStream,
    stop_sent: bool,
}

/// How a supervised command ended.
pub(crate) enum End {
    /// The command's wait status.
    Status(ExitStatus),
    /// The supervisor died without a report (it was killed): its status.
    SupervisorDied(ExitStatus),
}

/// Starts `command` under a supervisor; see the [module docs](self).
///
/// # Errors
/// The socket, the supervisor or the command could not be made or started (a program
/// that does not exist is reported here, as by [`Command::spawn`]).
pub(crate) fn spawn(mut command: Command) -> io::Result<Supervised> {
    let exec = Exec::of(&command)?;
    // The hook execs with `exec`'s environment; the standard library's own copy of it
    // would be built for every spawn and never used.
    command.env_clear();
    let (link, theirs) = UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let grace = KILL_GRACE;
    // SAFETY: the hook runs in the child of a fork. It only makes async-signal-safe
    // system calls through libc, allocates nothing, takes no lock, and either ends the
    // supervisor with `_exit` or returns the error that kept the command from starting
    // (which the standard library reports); see `become_supervisor`.
    unsafe {
        command.pre_exec(move || become_supervisor(fd, grace, &exec));
    }
    let supervisor = command.spawn()?;
    drop(theirs);
    let mut supervised = Supervised {
        supervisor,
        command: 0,
        link,
        stop_sent: false,
    };
    // Sent right after the fork, so this does not wait for the command.
    if let Some(pid) = supervised.read_u32()? {
        supervised.command = pid;
    }
    Ok(supervised)
}

/// What exec'ing the command takes, made in the worker: the command is started where
/// nothing may be allocated.
struct Exec {
    program: CString,
    /// `argv`, `NULL`-terminated, pointing into `_strings`.
    argv: Vec<*const libc::c_char>,
    /// `envp`, `NULL`-terminated, pointing into `_strings`.
    envp: Vec<*const libc::c_char>,
    /// Owns what `argv` and `envp` point to (a `CString`'s bytes do not move with it).
    _strings: Vec<CString>,
    /// The size of the stack the command starts on: room for glibc's `execvp`, which
    /// copies `argv` on the stack to run a script without `#!` through `sh`.
    stack: usize,
}

// SAFETY: the raw pointers point into `_strings`, owned by the same value and never
// changed after `Exec::of`; sharing or sending it shares or sends only readable memory.
unsafe impl Send for Exec {}
// SAFETY: as for `Send`.
unsafe impl Sync for Exec {}

impl Exec {
    /// The program, arguments and environment `command` would exec with: its program as
    /// `argv[0]`, and this process's environment with the command's changes.
    fn of(command: &Command) -> io::Result<Exec> {
        let nul = |_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a NUL byte in the program, an argument or an environment variable",
            )
        };
        let program = CString::new(command.get_program().as_bytes()).map_err(nul)?;
        let mut strings = vec![program.clone()];
        for arg in command.get_args() {
            strings.push(CString::new(arg.as_bytes()).map_err(nul)?);
        }
        let args = strings.len();
        let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => env.insert(name.to_owned(), value.to_owned()),
                None => env.remove(name),
            };
        }
        for (name, value) in env {
            let mut pair = name.into_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            strings.push(CString::new(pair).map_err(nul)?);
        }
        let pointers = |strings: &[CString]| {
            let mut pointers: Vec<*const libc::c_char> =
                strings.iter().map(|s| s.as_ptr()).collect();
            pointers.push(std::ptr::null());
            pointers
        };
        let argv = pointers(&strings[..args]);
        let envp = pointers(&strings[args..]);
        let stack = 64 * 1024 + argv.len() * std::mem::size_of::<*const libc::c_char>() * 2;
        Ok(Exec {
            program,
            argv,
            envp,
            _strings: strings,
            stack,
        })
    }
}

impl Supervised {
    /// The supervisor's process id.
    pub(crate) fn supervisor_pid(&self) -> u32 {
        self.supervisor.id()
    }

    /// The command's process id (also its process group id).
    pub(crate) fn command_pid(&self) -> u32 {
        self.command
    }

    /// Reads four bytes from the supervisor; `None` at the end of the stream.
    fn read_u32(&mut self) -> io::Result<Option<u32>> {
        let mut bytes = [0u8; 4];
        let mut got = 0;
        while got < bytes.len() {
            match self.link.read(&mut bytes[got..]) {
                Ok(0) => return Ok(None),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(u32::from_ne_bytes(bytes)))
    }

    /// Asks the supervisor to stop the command and everything it started. The report
    /// follows once they are gone.
    pub(crate) fn stop(&mut self) {
        if !self.stop_sent {
            self.stop_sent = true;
            let _ = self.link.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Waits at most `timeout` for the end; `Ok(None)` when it has not come yet.
    ///
    /// # Errors
    /// Waiting on the socket or on the supervisor failed.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<Option<End>> {
        let mut fds = [PollFd::new(self.link.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let report = self.read_u32()?;
        let supervisor = self.supervisor.wait()?;
        Ok(Some(match report {
            Some(raw) => End::Status(ExitStatus::from_raw(raw as i32)),
            None => End::SupervisorDied(supervisor),
        }))
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Reached without a report only when the worker gave up waiting (an error):
        // closing the socket makes the supervisor stop the command; reap it meanwhile.
        if matches!(self.supervisor.try_wait(), Ok(None)) {
            self.stop();
            let _ = self.supervisor.wait();
        }
    }
}

// --- in the forked child: async-signal-safe code only ------------------------------------

/// The signals the supervisor takes through a signalfd instead of dying of them.
const HANDLED: [libc::c_int; 4] = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The `pre_exec` hook: starts the command and turns this process into its supervisor
/// (which never returns); returns only the error that kept the command from starting.
fn become_supervisor(link: RawFd, grace: Duration, exec: &Exec) -> io::Result<()> {
    // SAFETY (for every block below): plain system calls on memory of this stack frame;
    // nothing here allocates or locks, as a forked child of a threaded process requires.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        for signal in HANDLED {
            libc::sigaddset(&mut mask, signal);
        }
        // Blocked before the command is forked, so that its end is not missed.
        if libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let signals = libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if signals < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let command = start_command(exec, signals, link)?;
        // The command's pid first, for the worker's messages; its status follows.
        let pid = command.to_ne_bytes();
        libc::send(link, pid.as_ptr().cast(), pid.len(), libc::MSG_NOSIGNAL);
        // The supervisor. Keep only the socket, the signalfd and 0-2: in particular the
        // worker's connection to the spawner and the standard library's exec-error pipe
        // must close here, or the spawner and the worker would wait on this process.
        keep_only(&[link, signals]);
        libc::prctl(
            libc::PR_SET_NAME,
            c"parvm-supervise".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        let status = supervise(command, link, signals, grace);
        let report = status.to_ne_bytes();
        // The worker may be gone: no SIGPIPE.
        libc::send(
            link,
            report.as_ptr().cast(),
            report.len(),
            libc::MSG_NOSIGNAL,
        );
        libc::_exit(0);
    }
}

/// What the command's side of the `clone` reads, and where it leaves why its exec failed.
struct Start<'a> {
    exec: &'a Exec,
    supervisor: libc::pid_t,
    close: [RawFd; 2],
    /// The `errno` of a failed start (0 while none), written by the command's side.
    failure: libc::c_int,
}

/// Starts the command as `posix_spawn` does: it runs on its own stack in this process's
/// memory, and this process waits (`CLONE_VFORK`) until it has exec'd or failed. Returns
/// its pid, or why it could not start (it is reaped then).
fn start_command(exec: &Exec, signals: RawFd, link: RawFd) -> io::Result<libc::pid_t> {
    // SAFETY: plain system calls on locals and on a private mapping made here; the
    // command's side only reads `start` and writes `start.failure` while this side waits.
    unsafe {
        // Every signal blocked across the clone: no handler may run on the command's side
        // while it shares this memory (it resets them before unblocking).
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        if libc::sigprocmask(libc::SIG_SETMASK, &all, &mut before) != 0 {
            return Err(io::Error::last_os_error());
        }
        let stack = libc::mmap(
            std::ptr::null_mut(),
            exec.stack,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            return Err(error);
        }
        let mut start = Start {
            exec,
            supervisor: libc::getpid(),
            close: [signals, link],
            failure: 0,
        };
        // The stack grows down from the end of the mapping (page-aligned).
        let top = stack.cast::<u8>().add(exec.stack).cast::<libc::c_void>();
        let pid = libc::clone(
            command_side,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut start).cast(),
        );
        let clone_error = io::Error::last_os_error();
        libc::munmap(stack, exec.stack);
        libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
        if pid < 0 {
            return Err(clone_error);
        }
        // Written by the command's side before it ended; this side was stopped meanwhile.
        let failure = std::ptr::read_volatile(&raw const start.failure);
        if failure != 0 {
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            return Err(io::Error::from_raw_os_error(failure));
        }
        Ok(pid)
    }
}

/// The command's side of the `clone`: its own process group, killed with the supervisor,
/// default signal handling; then the exec. Only system calls: it shares the
/// supervisor's memory until the exec.
extern "C" fn command_side(start: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `start` is the `Start` of `start_command`, which waits for this side to exec
    // or end; everything below is a system call on it or on locals.
    unsafe {
        let start = &mut *start.cast::<Start<'_>>();
        let fail = |start: &mut Start<'_>| -> ! {
            let errno = *libc::__errno_location();
            std::ptr::write_volatile(&raw mut start.failure, errno.max(1));
            libc::_exit(127)
        };
        // Handlers the worker installed would run in the supervisor's memory: back to
        // the default (an exec resets them anyway); ignored signals stay ignored.
        for signal in 1..=libc::SIGRTMAX() {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction != libc::SIG_DFL
                && action.sa_sigaction != libc::SIG_IGN
            {
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        for fd in start.close {
            libc::close(fd);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(start);
        }
        if libc::getppid() != start.supervisor {
            // The supervisor is already gone.
            libc::_exit(127);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(start);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            fail(start);
        }
        // As the standard library does: the command's environment is in place while
        // `execvp` searches its `PATH`. (Only the supervisor sees `environ` change, and it
        // never reads it.)
        environ = start.exec.envp.as_ptr();
        libc::execvp(start.exec.program.as_ptr(), start.exec.argv.as_ptr());
        fail(start)
    }
}

unsafe extern "C" {
    /// The C library's environment, which `execvp` passes on and searches for `PATH`.
    static mut environ: *const *const libc::c_char;
}

/// Closes every descriptor from 3 up except those in `keep`.
fn keep_only(keep: &[RawFd]) {
    let mut sorted = [0 as RawFd; 2];
    let n = keep.len().min(sorted.len());
    sorted[..n].copy_from_slice(&keep[..n]);
    let sorted = &mut sorted[..n];
    sorted.sort_unstable();
    let mut from: libc::c_uint = 3;
    for &fd in sorted.iter() {
        let fd = fd as libc::c_uint;
        if fd > from {
            close_range(from, fd - 1);
        }
        from = from.max(fd + 1);
    }
    close_range(from, libc::c_uint::MAX);
}

fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: a system call on plain integers.
    let done = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } == 0;
    if !done {
        // Kernels before 5.9: close one by one, up to a bound that covers what a worker
        // holds.
        for fd in first..last.min(4096).saturating_add(1) {
            // SAFETY: closing a descriptor number; ones that are not open fail harmlessly.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

/// Waits for the command, stops everything it started, and returns its wait status.
fn supervise(command: libc::pid_t, link: RawFd, signals: RawFd, grace: Duration) -> i32 {
    let mut status: Option<i32> = None;
    let mut stop = Stop::new(command, grace);
    let mut watch_link = true;
    loop {
        // Reap whatever has ended: the command, or orphans re-parented here.
        let mut none_left = false;
        loop {
            let mut raw = 0;
            // SAFETY: waitpid with a pointer to a local.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid > 0 {
                if pid == command {
                    status = Some(raw);
                }
                continue;
            }
            if pid < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => none_left = true,
                    _ => {}
                }
            }
            break;
        }
        if none_left {
            // A subreaper without children has no descendants left at all.
            // Reaped without a status: impossible, since the command was our child.
            return status.unwrap_or(0);
        }
        if status.is_some() && !stop.started() {
            // The command ended: whatever it left behind goes too.
            stop.start();
        }
        if stop.started() {
            stop.round();
        }
        let mut fds = [
            libc::pollfd {
                fd: signals,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if watch_link { link } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if stop.started() {
            STOP_ROUND.as_millis() as libc::c_int
        } else {
            -1
        };
        // SAFETY: poll on a local array of two entries.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if ready <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            // SAFETY: signalfd_siginfo is plain data; read into a local.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            loop {
                let size = std::mem::size_of::<libc::signalfd_siginfo>();
                // SAFETY: reading at most `size` bytes into `info`.
                let n = unsafe { libc::read(signals, (&raw mut info).cast(), size) };
                if n != size as isize {
                    break;
                }
                let signal = info.ssi_signo as libc::c_int;
                if signal != libc::SIGCHLD && !stop.started() {
                    stop.start();
                }
            }
        }
        if fds[1].revents != 0 {
            // The worker closed its end (it asked to stop, or it died): stop.
            watch_link = false;
            if !stop.started() {
                stop.start();
            }
        }
    }
}

/// Stopping a task: `SIGTERM` to everything, then `SIGKILL` after the grace period.
struct Stop {
    command: libc::pid_t,
    grace: Duration,
    since: Option<Instant>,
    killing: bool,
    /// Children already sent `SIGTERM`, so that a process that handles it (to save its
    /// results, say) is not interrupted again and again; beyond its size, they are.
    termed: [libc::pid_t; 256],
    termed_len: usize,
}

impl Stop {
    fn new(command: libc::pid_t, grace: Duration) -> Stop {
        Stop {
            command,
            grace,
            since: None,
            killing: false,
            termed: [0; 256],
            termed_len: 0,
        }
    }

    fn started(&self) -> bool {
        self.since.is_some()
    }

    /// `SIGTERM` to the command's process group and to every child of the supervisor.
    fn start(&mut self) {
        self.since = Some(Instant::now());
        // SAFETY: kill on the process group the command made for itself.
        unsafe { libc::kill(-self.command, libc::SIGTERM) };
        self.signal_children();
    }

    /// Signals the children that came up since the last round (orphans are re-parented
    /// to the supervisor as their parents die); after the grace period, `SIGKILL` to all.
    fn round(&mut self) {
        if !self.killing
            && self
                .since
                .is_some_and(|since| since.elapsed() >= self.grace)
        {
            self.killing = true;
            // SAFETY: as in `start`.
            unsafe { libc::kill(-self.command, libc::SIGKILL) };
        }
        self.signal_children();
    }

    fn signal_children(&mut self) {
        let signal = if self.killing {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        for_each_child(|pid| {
            if !self.killing {
                if self.termed[..self.termed_len].contains(&pid) {
                    return;
                }
                if self.termed_len < self.termed.len() {
                    self.termed[self.termed_len] = pid;
                    self.termed_len += 1;
                }
            }
            // SAFETY: kill on a child of this process (not reaped, so not recycled).
            unsafe { libc::kill(pid, signal) };
        });
    }
}

/// Calls `f` with the pid of every child of this (single-threaded) process.
fn for_each_child(mut f: impl FnMut(libc::pid_t)) {
    let mut buffer = [0u8; 4096];
    // SAFETY: opening a constant path, reading into a local buffer, closing.
    let fd = unsafe {
        libc::open(
            c"/proc/thread-self/children".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        scan_proc(&mut f);
        return;
    }
    // A number split between two reads is carried over.
    let mut number: libc::pid_t = 0;
    let mut digits = false;
    loop {
        // SAFETY: reading into a local buffer of its length.
        let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n <= 0 {
            break;
        }
        for &byte in buffer.iter().take(n as usize) {
            if byte.is_ascii_digit() {
                number = number
                    .saturating_mul(10)
                    .saturating_add(i32::from(byte - b'0'));
                digits = true;
            } else if digits {
                f(number);
                number = 0;
                digits = false;
            }
        }
    }
    if digits {
        f(number);
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
}

/// Without `/proc/<pid>/task/<tid>/children` (a kernel built without it): reads the
/// parent of every process in `/proc`.
fn scan_proc(f: &mut impl FnMut(libc::pid_t)) {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    // SAFETY: opening a constant path.
    let dir = unsafe {
        libc::open(
            c"/proc".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return;
    }
    let mut entries = [0u8; 8192];
    loop {
        // SAFETY: getdents64 into a local buffer of its length.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir,
                entries.as_mut_ptr(),
                entries.len(),
            )
        };
        if n <= 0 {
            break;
        }
        let mut at = 0usize;
        while at + 19 < n as usize {
            // struct linux_dirent64: ino u64, off i64, reclen u16, type u8, name.
            let reclen = usize::from(u16::from_ne_bytes([entries[at + 16], entries[at + 17]]));
            if reclen == 0 {
                break;
            }
            let name = &entries[at + 19..(at + reclen).min(n as usize)];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(pid) = parse_pid(name)
                && parent_of(dir, name) == Some(me)
            {
                f(pid);
            }
            at += reclen;
        }
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(dir) };
}

fn parse_pid(name: &[u8]) -> Option<libc::pid_t> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut pid: libc::pid_t = 0;
    for &b in name {
        pid = pid.checked_mul(10)?.checked_add(i32::from(b - b'0'))?;
    }
    Some(pid)
}

/// The parent of process `name` (a directory of `/proc`, opened as `proc`), from its
/// `stat`: the field after the state, which follows the last `)`.
fn parent_of(proc: RawFd, name: &[u8]) -> Option<libc::pid_t> {
    let mut path = [0u8; 24];
    let tail = b"/stat\0";
    if name.len() + tail.len() > path.len() {
        return None;
    }
    path[..name.len()].copy_from_slice(name);
    path[name.len()..name.len() + tail.len()].copy_from_slice(tail);
    // SAFETY: a NUL-terminated path in a local buffer.
    let fd = unsafe { libc::openat(proc, path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut stat = [0u8; 1024];
    // SAFETY: reading into a local buffer of its length, then closing.
    let n = unsafe { libc::read(fd, stat.as_mut_ptr().cast(), stat.len()) };
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    let stat = stat.get(..usize::try_from(n).ok()?)?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    // ") S 1234 ..."
    let rest = stat.get(close + 2..)?;
    let mut fields = rest.split(|&b| b == b' ');
    fields.next()?;
    parse_pid(fields.next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `command` under a supervisor to its end: its exit code.
    fn run(command: Command) -> io::Result<Option<i32>> {
        let mut supervised = spawn(command)?;
        loop {
            match supervised.wait(Duration::from_secs(60))? {
                Some(End::Status(status)) => return Ok(status.code()),
                Some(End::SupervisorDied(status)) => panic!("the supervisor died: {status}"),
                None => {}
            }
        }
    }

    fn script(dir: &std::path::Path, name: &str, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Prints the first argument, a set variable, the variable named by the second
    /// argument and the folder, `|` between them.
    const PRINT_ALL: &str = r#"eval "gone=\${$2-unset}"; printf '%s|%s|%s|%s' "$1" "$PARVM_T_SET" "$gone" "$PWD" > out"#;

    #[test]
    fn the_command_gets_its_arguments_environment_and_folder_exactly() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"a b\n$HOME *\xff'\"");
        // Removing a variable the worker has removes it for the command: any of this
        // process's variables that the shell does not set itself.
        let gone = std::env::vars()
            .map(|(name, _)| name)
            .find(|name| {
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && ![
                        "PATH", "PWD", "OLDPWD", "SHLVL", "IFS", "PS1", "PS2", "PS4", "_",
                    ]
                    .contains(&name.as_str())
            })
            .expect("cargo runs tests with CARGO_* variables set");
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", PRINT_ALL, "sh"])
            .arg(odd)
            .arg(&gone)
            .env("PARVM_T_SET", odd)
            .env_remove(&gone)
            .current_dir(dir.path());
        assert_eq!(run(command).unwrap(), Some(0));
        let mut expected = Vec::new();
        for part in [odd.as_bytes(), b"|", odd.as_bytes(), b"|unset|"] {
            expected.extend_from_slice(part);
        }
        expected.extend_from_slice(dir.path().as_os_str().as_bytes());
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), expected);
    }

    #[test]
    fn the_path_searched_is_the_command_s_own() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "parvm-t-only-here", "#!/bin/sh\nexit 7\n");
        // And a script without `#!` runs through `sh`, as `execvp` does it.
        script(dir.path(), "parvm-t-no-hashbang", "exit 9\n");
        let path = format!("{}:/bin:/usr/bin", dir.path().display());
        for (name, code) in [("parvm-t-only-here", 7), ("parvm-t-no-hashbang", 9)] {
            let mut command = Command::new(name);
            command.env("PATH", &path);
            assert_eq!(run(command).unwrap(), Some(code), "{name}");
        }
    }

    #[test]
    fn a_command_that_cannot_start_is_an_error_of_spawn() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "not-executable", "#!/bin/sh\nexit 0\n");
        std::fs::set_permissions(
            dir.path().join("not-executable"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        let cases = [
            (dir.path().join("missing"), io::ErrorKind::NotFound),
            (
                dir.path().join("not-executable"),
                io::ErrorKind::PermissionDenied,
            ),
            (dir.path().to_owned(), io::ErrorKind::PermissionDenied),
        ];
        for (program, kind) in cases {
            let error = spawn(Command::new(&program))
                .err()
                .expect("spawn must fail");
            assert_eq!(error.kind(), kind, "{}: {error}", program.display());
        }
        let error = spawn(Command::new("a\0b")).err().expect("a NUL byte fails");
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn pids_parse() {
        assert_eq!(parse_pid(b"1234"), Some(1234));
        assert_eq!(parse_pid(b"self"), None);
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"99999999999"), None);
    }

    #[test]
    fn the_scan_and_the_children_file_agree() {
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        let mut listed = Vec::new();
        for_each_child(|pid| listed.push(pid));
        let mut scanned = Vec::new();
        scan_proc(&mut |pid| scanned.push(pid));
        let _ = child.kill();
        let _ = child.wait();
        let pid = child.id() as libc::pid_t;
        // Other tests' children may come and go in between; ours is in both lists (the
        // children file lists the children this thread forked).
        assert!(scanned.contains(&pid), "{scanned:?}");
        assert!(listed.contains(&pid), "{listed:?}");
    }
}

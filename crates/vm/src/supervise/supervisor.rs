//! The supervisor process: everything here runs in the child of a fork of the
//! multi-threaded worker, so it only makes system calls (async-signal-safe), allocates
//! nothing but with `mmap`, takes no lock, and leaves by `_exit`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use super::stop::Stop;
use super::{ENDED, ENDED_LEAVING, MAX_REQUEST, NOT_STARTED, START, STARTED, STOP, STOP_ROUND};

/// The signals the supervisor takes through a signalfd instead of dying of them: `SIGCHLD`,
/// and those of [`TO_END`] it was not started ignoring.
const HANDLED: [libc::c_int; 4] = [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The signals that make the supervisor stop its command and leave (a Ctrl-C, a batch
/// system's end, a closed terminal), unless it inherited them ignored: a worker started in
/// the background of a script ignores SIGINT, and so must its commands, as a shell's
/// background jobs do. A blocked signal reaches a signalfd even while ignored, so an
/// ignored one is left out of the mask instead.
const TO_END: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The `pre_exec` hook: turns this process into a supervisor, which never returns; returns
/// only the error that kept it from setting up.
pub(super) fn become_supervisor(link: RawFd, grace: Duration) -> io::Result<()> {
    // SAFETY (for every block below): plain system calls on memory of this stack frame;
    // nothing here allocates or locks, as a forked child of a threaded process requires.
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        for signal in HANDLED {
            let mut action: libc::sigaction = std::mem::zeroed();
            let ignored = TO_END.contains(&signal)
                && libc::sigaction(signal, std::ptr::null(), &raw mut action) == 0
                && action.sa_sigaction == libc::SIG_IGN;
            if !ignored {
                libc::sigaddset(&mut mask, signal);
            }
        }
        // Blocked before any command is started, so that its end is not missed.
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
        // Keep only the socket, the signalfd and 0-2: in particular the worker's
        // connection to the spawner and the standard library's exec-error pipe must close
        // here, or the spawner and the worker would wait on this process. (The closed pipe
        // also tells `Command::spawn` that the set-up went well.)
        keep_only(&[link, signals]);
        libc::prctl(
            libc::PR_SET_NAME,
            c"parvm-supervise".as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        loop {
            let next = match wait_for_request(link, signals) {
                Some(header) => run_one(&header, link, signals, grace),
                None => Next::Leave,
            };
            if let Next::Leave = next {
                libc::_exit(0);
            }
        }
    }
}

/// What the supervisor does after a command.
enum Next {
    Serve,
    Leave,
}

/// The words of a [`START`] request after its first.
struct Header {
    length: u32,
    argc: u32,
    envc: u32,
    has_dir: bool,
}

/// Waits, with no command running, for the next [`START`]; `None` when the supervisor is
/// to leave (the socket closed, a signal to end, a request it cannot read).
fn wait_for_request(link: RawFd, signals: RawFd) -> Option<Header> {
    loop {
        let [signalled, asked] = wait_for(signals, link, -1);
        if signalled && drain_signals(signals) {
            return None;
        }
        reap_any();
        if asked {
            match read_word(link)? {
                STOP => {}
                START => {
                    let mut words = [0u32; 4];
                    for word in &mut words {
                        *word = read_word(link)?;
                    }
                    if words[0] > MAX_REQUEST {
                        return None;
                    }
                    return Some(Header {
                        length: words[0],
                        argc: words[1],
                        envc: words[2],
                        has_dir: words[3] != 0,
                    });
                }
                _ => return None,
            }
        }
    }
}

/// Waits at most `timeout` milliseconds (-1: no limit) for the signalfd and the socket
/// (-1: not watched); whether each is ready (neither after a timeout or an interruption).
fn wait_for(signals: RawFd, link: RawFd, timeout: libc::c_int) -> [bool; 2] {
    let watch = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [watch(signals), watch(link)];
    // SAFETY: poll on a local array of two entries.
    if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) } <= 0 {
        return [false, false];
    }
    [fds[0].revents != 0, fds[1].revents != 0]
}

/// Reads what the signalfd holds; whether a signal to end came (not just `SIGCHLD`).
fn drain_signals(signals: RawFd) -> bool {
    let mut end = false;
    // SAFETY: signalfd_siginfo is plain data; read into a local.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    loop {
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reading at most `size` bytes into `info`.
        let n = unsafe { libc::read(signals, (&raw mut info).cast(), size) };
        if n != size as isize {
            return end;
        }
        if info.ssi_signo as libc::c_int != libc::SIGCHLD {
            end = true;
        }
    }
}

/// Reaps whatever child has ended, without waiting.
fn reap_any() {
    let mut raw = 0;
    // SAFETY: waitpid with a pointer to a local.
    while unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) } > 0 {}
}

/// Reads `buffer.len()` bytes from `fd`; `false` at the end of the stream or on an error.
fn read_exact(fd: RawFd, buffer: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buffer.len() {
        // SAFETY: reading into the rest of `buffer`, within its length.
        let n = unsafe { libc::read(fd, buffer[got..].as_mut_ptr().cast(), buffer.len() - got) };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
    true
}

fn read_word(fd: RawFd) -> Option<u32> {
    let mut bytes = [0u8; 4];
    read_exact(fd, &mut bytes).then(|| u32::from_ne_bytes(bytes))
}

/// Sends a reply; the worker may be gone (no `SIGPIPE` then).
fn reply(link: RawFd, kind: u32, value: u32) {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&kind.to_ne_bytes());
    bytes[4..].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: sending a local buffer of its length.
    unsafe { libc::send(link, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
}

/// Reads the rest of a [`START`] request, starts its command, supervises it to its end and
/// reports each step.
fn run_one(header: &Header, link: RawFd, signals: RawFd, grace: Duration) -> Next {
    let pointer = std::mem::size_of::<*const libc::c_char>();
    let strings = (header.length as usize).next_multiple_of(pointer);
    let pointers = (header.argc as usize + 1 + header.envc as usize + 1) * pointer;
    let size = strings + pointers;
    // SAFETY: a private anonymous mapping, unmapped below on every path.
    let memory = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if memory == libc::MAP_FAILED {
        // The request cannot be read past: this supervisor is out of step.
        return Next::Leave;
    }
    // SAFETY: the mapping is `size` bytes, readable and writable, and only used here.
    let whole = unsafe { std::slice::from_raw_parts_mut(memory.cast::<u8>(), size) };
    let (text, table) = whole.split_at_mut(strings);
    if !read_exact(link, &mut text[..header.length as usize]) {
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(memory, size) };
        return Next::Leave;
    }
    let started = match Program::parse(header, &text[..header.length as usize], table) {
        Some(program) => start_command(&program, signals, link),
        None => Err(libc::EINVAL),
    };
    // SAFETY: unmapping the mapping made above; the command has exec'd or failed, and
    // nothing points into it any longer.
    unsafe { libc::munmap(memory, size) };
    match started {
        Err(errno) => {
            reply(link, NOT_STARTED, errno as u32);
            Next::Serve
        }
        Ok(pid) => {
            reply(link, STARTED, pid as u32);
            let (status, next) = supervise(pid, link, signals, grace);
            // A supervisor that leaves says so with the status: the worker then forks a
            // new one for its next command instead of sending it here.
            let ended = match next {
                Next::Serve => ENDED,
                Next::Leave => ENDED_LEAVING,
            };
            reply(link, ended, status as u32);
            next
        }
    }
}

/// A command to exec, pointing into the request.
struct Program {
    /// The folder to enter first, or null.
    dir: *const libc::c_char,
    program: *const libc::c_char,
    /// `argv`, `NULL`-terminated.
    argv: *const *const libc::c_char,
    /// `envp`, `NULL`-terminated.
    envp: *const *const libc::c_char,
    /// The size of the stack the command starts on: room for glibc's `execvp`, which
    /// copies `argv` on the stack to run a script without `#!` through `sh`.
    stack: usize,
}

impl Program {
    /// Finds the strings of `text` (each ended by a NUL byte: the folder when the header
    /// says so, the program, `argc` arguments, `envc` variables, nothing after) and fills
    /// `table` with the `argv` and `envp` arrays; `None` when `text` is not that.
    fn parse(header: &Header, text: &[u8], table: &mut [u8]) -> Option<Program> {
        let argc = header.argc as usize;
        let envc = header.envc as usize;
        let pointer = std::mem::size_of::<*const libc::c_char>();
        let mut at = 0usize;
        let mut next = || -> Option<*const libc::c_char> {
            let start = at;
            let end = start + text.get(start..)?.iter().position(|&b| b == 0)?;
            at = end + 1;
            Some(text[start..].as_ptr().cast())
        };
        let dir = if header.has_dir {
            next()?
        } else {
            std::ptr::null()
        };
        let program = next()?;
        let table = table.as_mut_ptr().cast::<*const libc::c_char>();
        if argc == 0 {
            return None;
        }
        for i in 0..argc + envc {
            let string = next()?;
            let slot = if i < argc { i } else { i + 1 };
            // SAFETY: `table` holds argc + 1 + envc + 1 pointers (see `run_one`), and the
            // mapping is page-aligned, so aligned for pointers.
            unsafe { table.add(slot).write(string) };
        }
        if at != text.len() {
            return None;
        }
        // SAFETY: as above, the two terminating nulls.
        unsafe {
            table.add(argc).write(std::ptr::null());
            table.add(argc + 1 + envc).write(std::ptr::null());
        }
        Some(Program {
            dir,
            program,
            argv: table,
            // SAFETY: within the table, as above.
            envp: unsafe { table.add(argc + 1) },
            stack: 64 * 1024 + (argc + 1) * pointer * 2,
        })
    }
}

/// What the command's side of the `clone` reads, and where it leaves why its exec failed.
struct Start<'a> {
    program: &'a Program,
    supervisor: libc::pid_t,
    close: [RawFd; 2],
    /// The `errno` of a failed start (0 while none), written by the command's side.
    failure: libc::c_int,
}

/// Starts the command as `posix_spawn` does: it runs on its own stack in this process's
/// memory, and this process waits (`CLONE_VFORK`) until it has exec'd or failed. Returns
/// its pid, or the `errno` of why it could not start (it is reaped then).
fn start_command(
    program: &Program,
    signals: RawFd,
    link: RawFd,
) -> Result<libc::pid_t, libc::c_int> {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: plain system calls on locals and on a private mapping made here; the
    // command's side only reads `start` and writes `start.failure` while this side waits.
    unsafe {
        // Every signal blocked across the clone: no handler may run on the command's side
        // while it shares this memory (it resets them before unblocking).
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        if libc::sigprocmask(libc::SIG_SETMASK, &all, &mut before) != 0 {
            return Err(errno());
        }
        let stack = libc::mmap(
            std::ptr::null_mut(),
            program.stack,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        );
        if stack == libc::MAP_FAILED {
            let error = errno();
            libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            return Err(error);
        }
        let mut start = Start {
            program,
            supervisor: libc::getpid(),
            close: [signals, link],
            failure: 0,
        };
        // The stack grows down from the end of the mapping (page-aligned).
        let top = stack.cast::<u8>().add(program.stack).cast::<libc::c_void>();
        let pid = libc::clone(
            command_side,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&raw mut start).cast(),
        );
        let clone_error = errno();
        libc::munmap(stack, program.stack);
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
            return Err(failure);
        }
        Ok(pid)
    }
}

/// The command's side of the `clone`: its own process group, killed with the supervisor,
/// default signal handling, its folder; then the exec. Only system calls: it shares the
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
        for signal in (1..32).chain(libc::SIGRTMIN()..=libc::SIGRTMAX()) {
            let mut action: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut action) == 0
                && action.sa_sigaction != libc::SIG_DFL
                && action.sa_sigaction != libc::SIG_IGN
            {
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
        // The C library's own signals (32 up to SIGRTMIN, which its `sigaction` refuses)
        // go to the default by the system call: glibc's `posix_spawn`, which started a
        // local worker, leaves them ignored, and an ignored signal stays ignored across
        // exec, so every command would start with them ignored, which no shell does. The
        // kernel's `struct sigaction` of SIG_DFL is all zeros.
        let default = [0u64; 4];
        for signal in 32..libc::SIGRTMIN() {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                std::mem::size_of::<u64>(),
            );
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
        if !start.program.dir.is_null() && libc::chdir(start.program.dir) != 0 {
            fail(start);
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
        environ = start.program.envp;
        libc::execvp(start.program.program, start.program.argv);
        fail(start)
    }
}

unsafe extern "C" {
    /// The C library's environment, which `execvp` passes on and searches for `PATH`.
    static mut environ: *const *const libc::c_char;
}

/// Waits for the command, stops everything it started, and returns its wait status, and
/// whether the supervisor is to leave after reporting it (the socket closed, or a signal
/// to end came).
fn supervise(command: libc::pid_t, link: RawFd, signals: RawFd, grace: Duration) -> (i32, Next) {
    let mut status: Option<i32> = None;
    let mut stop = Stop::new(command, grace);
    let mut watch_link = true;
    let mut next = Next::Serve;
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
            return (status.unwrap_or(0), next);
        }
        if status.is_some() && !stop.started() {
            // The command ended: whatever it left behind goes too.
            stop.start();
        }
        if stop.started() {
            stop.round();
        }
        let timeout = if stop.started() {
            STOP_ROUND.as_millis() as libc::c_int
        } else {
            -1
        };
        let [signalled, asked] = wait_for(signals, if watch_link { link } else { -1 }, timeout);
        if signalled && drain_signals(signals) {
            next = Next::Leave;
            if !stop.started() {
                stop.start();
            }
        }
        if asked {
            // The worker asked to stop, or closed its end (it dropped this supervisor, or
            // it died): stop; after a close, leave too.
            if read_word(link) != Some(STOP) {
                watch_link = false;
                next = Next::Leave;
            }
            if !stop.started() {
                stop.start();
            }
        }
    }
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

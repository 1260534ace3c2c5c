//! Command tasks under a supervisor, so that a task leaves no process behind.
//!
//! A command does not run as the worker's child. The worker forks a *supervisor* once, when
//! its spawn loop starts, a small single-threaded copy of itself that never execs, and
//! hands it one command at a time over a socket; the supervisor starts the command and
//! waits for it:
//!
//! ```text
//! worker ──socket── supervisor (child subreaper) ── command (own process group) ── ...
//! ```
//!
//! - The supervisor is a child subreaper (`PR_SET_CHILD_SUBREAPER`): every process the
//!   command starts whose parent dies is re-parented to it, also one that left the
//!   command's process group or session (`setsid`, `nohup ... &`), so it sees them all.
//!   It runs one command at a time, so all its children belong to that command.
//! - The command runs in its own process group, with `PR_SET_PDEATHSIG` = `SIGKILL` in
//!   case the supervisor itself is killed.
//! - The supervisor stops everything the command started (the command's process group,
//!   then its own children round after round as orphans come up to it) with `SIGTERM`,
//!   then `SIGKILL` after [`KILL_GRACE`], when the command ends, when the worker asks
//!   (finalize, spawner lost, time limit), when the worker dies or drops it (its end of the
//!   socket closes, however it died), or when the supervisor gets `SIGTERM`, `SIGINT` or
//!   `SIGHUP` (Ctrl-C), each unless it was started ignoring it (the worker, and so its
//!   commands, of a run started in the background of a script ignore `SIGINT`, as a
//!   shell's background jobs do). Only when it has no child left does it report the
//!   command's wait status on the socket, so the task folder is removed after the last
//!   process is gone. After a closed socket or a signal it then leaves, saying so in that
//!   report, and the worker forks a new supervisor for its next command.
//!
//! Why one supervisor for all of a worker's commands: forking the worker, a multi-threaded
//! process, copies its page tables and then takes copy-on-write faults in both processes;
//! done per command, that was about a quarter of all the CPU a case of `true` took under
//! `parvm run` (`perf`), more than the rest of parvm's own work on a case.
//!
//! The supervisor is forked by [`std::process::Command`] and runs from a `pre_exec` hook,
//! that is in the child of a fork of a multi-threaded process: from there on it only makes
//! system calls (async-signal-safe), allocates nothing but with `mmap`, takes no lock, and
//! leaves by `_exit`. It starts each command the way `posix_spawn` does: a `clone` that
//! shares the supervisor's memory (`CLONE_VM | CLONE_VFORK`) and execs at once, so no page
//! table is copied for it. The program, arguments, environment and folder are prepared in
//! the worker (the request, see [`request`]), with the standard library's meaning (`PATH`
//! searched in the command's own environment, the folder entered before the exec); a
//! command that cannot start is reported with the `errno` of the failed step, as
//! [`Command::spawn`] reports it.

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use supervisor::become_supervisor;

mod stop;
mod supervisor;

/// How long the processes of a task get between `SIGTERM` and `SIGKILL`.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// How often the supervisor looks for processes to signal while it stops a task.
const STOP_ROUND: Duration = Duration::from_millis(10);

// The protocol on the socket: native-endian `u32` words, the worker being the supervisor's
// parent on the same machine.

/// Worker → supervisor: start a command; four more words (the request's length in bytes,
/// the number of arguments and of environment entries, whether a folder is given), then
/// the request (see [`request`]).
const START: u32 = 1;
/// Worker → supervisor: stop the running command (ignored when none runs).
const STOP: u32 = 2;
/// Supervisor → worker: the command started; its pid follows.
const STARTED: u32 = 1;
/// Supervisor → worker: the command could not start; the `errno` follows.
const NOT_STARTED: u32 = 2;
/// Supervisor → worker: the command and everything it started are gone; its wait status
/// follows.
const ENDED: u32 = 3;
/// Supervisor → worker: as [`ENDED`], and the supervisor leaves (a signal to end came, or
/// the worker closed its end): the next command needs a new one.
const ENDED_LEAVING: u32 = 4;

/// The longest request the supervisor takes: far above the kernel's own limit on the
/// arguments and environment of an exec.
const MAX_REQUEST: u32 = 256 << 20;

/// A worker's supervisor process; see the [module docs](self).
pub(crate) struct Supervisor {
    process: Child,
    /// The worker's end of the socket to the supervisor.
    link: UnixStream,
    /// The supervisor is gone or out of step with the worker: the next command needs a
    /// new one.
    broken: bool,
}

/// A command running under its supervisor.
pub(crate) struct Supervised<'a> {
    supervisor: &'a mut Supervisor,
    /// The command's pid, as the supervisor reported it.
    command: u32,
    stop_sent: bool,
    ended: bool,
}

/// How a supervised command ended.
pub(crate) enum End {
    /// The command's wait status.
    Status(ExitStatus),
    /// The supervisor died without a report (it was killed): its status.
    SupervisorDied(ExitStatus),
}

/// The supervisor in `slot`, forked first when there is none or the one there is gone.
///
/// # Errors
/// The socket or the supervisor could not be made.
pub(crate) fn ready(slot: &mut Option<Supervisor>) -> io::Result<&mut Supervisor> {
    if let Some(supervisor) = slot
        && !supervisor.usable()
    {
        // Dropping it reaps it (and stops a command it would still run).
        *slot = None;
    }
    match slot {
        Some(supervisor) => Ok(supervisor),
        None => Ok(slot.insert(Supervisor::start()?)),
    }
}

impl Supervisor {
    /// Forks a supervisor.
    ///
    /// # Errors
    /// The socket or the supervisor could not be made.
    pub(crate) fn start() -> io::Result<Supervisor> {
        let (link, theirs) = UnixStream::pair()?;
        let fd = theirs.as_raw_fd();
        let grace = KILL_GRACE;
        // Never exec'd: the name only shows in errors of the fork.
        let mut command = Command::new("parvm-supervise");
        // Its commands read nothing: they inherit this.
        command.stdin(Stdio::null());
        // SAFETY: the hook runs in the child of a fork. It only makes async-signal-safe
        // system calls through libc, allocates nothing but with `mmap`, takes no lock, and
        // either ends the supervisor with `_exit` or returns the error that kept it from
        // setting up (which the standard library reports); see `become_supervisor`.
        unsafe {
            command.pre_exec(move || become_supervisor(fd, grace));
        }
        let process = command.spawn()?;
        drop(theirs);
        Ok(Supervisor {
            process,
            link,
            broken: false,
        })
    }

    /// The supervisor's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Whether it can take a command: not known to be broken, and still running.
    fn usable(&mut self) -> bool {
        !self.broken && matches!(self.process.try_wait(), Ok(None))
    }

    /// Starts `command` (its program, arguments, environment and folder; its standard
    /// input is empty, its output goes where the worker's goes).
    ///
    /// # Errors
    /// The command could not start (a program that does not exist, a folder that cannot
    /// be entered: the `errno` of the failed step, as [`Command::spawn`] reports it), or
    /// the supervisor could not be reached.
    pub(crate) fn run(&mut self, command: &Command) -> io::Result<Supervised<'_>> {
        let request = request(command)?;
        if let Err(e) = self.link.write_all(&request) {
            self.broken = true;
            return Err(io::Error::new(
                e.kind(),
                format!("the command's supervisor (pid {}) is gone: {e}", self.pid()),
            ));
        }
        match self.reply()? {
            Some((STARTED, pid)) => Ok(Supervised {
                supervisor: self,
                command: pid,
                stop_sent: false,
                ended: false,
            }),
            Some((NOT_STARTED, errno)) => Err(io::Error::from_raw_os_error(errno as i32)),
            _ => {
                self.broken = true;
                Err(io::Error::other(format!(
                    "the command's supervisor (pid {}) ended without starting it",
                    self.pid()
                )))
            }
        }
    }

    /// Reads one reply; `None` at the end of the stream.
    fn reply(&mut self) -> io::Result<Option<(u32, u32)>> {
        let mut bytes = [0u8; 8];
        let mut got = 0;
        while got < bytes.len() {
            match self.link.read(&mut bytes[got..]) {
                Ok(0) => return Ok(None),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        let word = |at: usize| {
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Ok(Some((word(0), word(4))))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // A closed socket makes the supervisor stop what it runs and leave; reap it.
        let _ = self.link.shutdown(std::net::Shutdown::Both);
        let _ = self.process.wait();
    }
}

impl Supervised<'_> {
    /// The supervisor's process id.
    pub(crate) fn supervisor_pid(&self) -> u32 {
        self.supervisor.pid()
    }

    /// The command's process id (also its process group id).
    pub(crate) fn command_pid(&self) -> u32 {
        self.command
    }

    /// Asks the supervisor to stop the command and everything it started. The report
    /// follows once they are gone.
    pub(crate) fn stop(&mut self) {
        if !self.stop_sent {
            self.stop_sent = true;
            if self.supervisor.link.write_all(&STOP.to_ne_bytes()).is_err() {
                // Gone: its end shows in `wait`.
                self.supervisor.broken = true;
            }
        }
    }

    /// Waits at most `timeout` for the end; `Ok(None)` when it has not come yet.
    ///
    /// # Errors
    /// Waiting on the socket or on the supervisor failed, or the supervisor sent what it
    /// should not.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<Option<End>> {
        let mut fds = [PollFd::new(self.supervisor.link.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        match self.supervisor.reply()? {
            Some((kind @ (ENDED | ENDED_LEAVING), raw)) => {
                self.ended = true;
                self.supervisor.broken |= kind == ENDED_LEAVING;
                Ok(Some(End::Status(ExitStatus::from_raw(raw as i32))))
            }
            Some((kind, _)) => {
                self.supervisor.broken = true;
                Err(io::Error::other(format!(
                    "the command's supervisor (pid {}) sent reply {kind} while its command ran",
                    self.supervisor.pid()
                )))
            }
            None => {
                self.ended = true;
                self.supervisor.broken = true;
                let status = self.supervisor.process.wait()?;
                Ok(Some(End::SupervisorDied(status)))
            }
        }
    }
}

impl Drop for Supervised<'_> {
    fn drop(&mut self) {
        if !self.ended {
            // The worker gave up waiting (an error): the supervisor is dropped with the
            // next command, which stops this one.
            self.supervisor.broken = true;
        }
    }
}

/// The request that starts `command`: the header words after [`START`], then its folder
/// (when set), program, arguments (`argv[0]` being the program) and environment (this
/// process's with the command's changes), each ended by a NUL byte.
///
/// # Errors
/// A NUL byte in any of them.
fn request(command: &Command) -> io::Result<Vec<u8>> {
    let mut strings: Vec<&[u8]> = Vec::new();
    let dir = command.get_current_dir();
    if let Some(dir) = dir {
        strings.push(dir.as_os_str().as_bytes());
    }
    let program = command.get_program().as_bytes();
    strings.push(program);
    strings.push(program);
    let args: Vec<&[u8]> = command.get_args().map(OsStrExt::as_bytes).collect();
    strings.extend(&args);
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => env.insert(name.to_owned(), value.to_owned()),
            None => env.remove(name),
        };
    }
    let pairs: Vec<Vec<u8>> = env
        .into_iter()
        .map(|(name, value)| {
            let mut pair = name.into_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            pair
        })
        .collect();
    strings.extend(pairs.iter().map(Vec::as_slice));
    if strings.iter().any(|s| s.contains(&0)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the program, an argument, an environment variable or the folder",
        ));
    }
    let length: usize = strings.iter().map(|s| s.len() + 1).sum();
    let too_long = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the command's arguments and environment take {length} bytes, more than an exec takes"
            ),
        )
    };
    let length = u32::try_from(length)
        .ok()
        .filter(|&n| n <= MAX_REQUEST)
        .ok_or_else(too_long)?;
    let argc = u32::try_from(1 + args.len()).map_err(|_| too_long())?;
    let envc = u32::try_from(pairs.len()).map_err(|_| too_long())?;
    let mut request = Vec::with_capacity(20 + length as usize);
    for word in [START, length, argc, envc, u32::from(dir.is_some())] {
        request.extend_from_slice(&word.to_ne_bytes());
    }
    for s in strings {
        request.extend_from_slice(s);
        request.push(0);
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Runs `command` under `supervisor` to its end: its exit code.
    fn run_under(supervisor: &mut Supervisor, command: &Command) -> io::Result<Option<i32>> {
        let mut supervised = supervisor.run(command)?;
        loop {
            match supervised.wait(Duration::from_secs(60))? {
                Some(End::Status(status)) => return Ok(status.code()),
                Some(End::SupervisorDied(status)) => panic!("the supervisor died: {status}"),
                None => {}
            }
        }
    }

    /// Runs `command` under a new supervisor to its end: its exit code.
    fn run(command: Command) -> io::Result<Option<i32>> {
        run_under(&mut Supervisor::start()?, &command)
    }

    fn spawn(command: Command) -> io::Result<()> {
        Supervisor::start()?.run(&command).map(drop)
    }

    fn alive(pid: u32) -> bool {
        // Not a zombie either: `kill` succeeds on those.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").starts_with(" Z"))
    }

    fn sh(script: &str) -> Command {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn one_supervisor_runs_command_after_command_each_with_nothing_left_of_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let mut supervisor = Supervisor::start().unwrap();
        let first = supervisor.pid();
        for code in 0..5 {
            // Each command leaves a background process behind; it is gone before the
            // command's end is reported, so the next command starts with none.
            let script = format!("sleep 30 & echo $! >> '{}'; exit {code}", pids.display());
            assert_eq!(
                run_under(&mut supervisor, &sh(&script)).unwrap(),
                Some(code)
            );
            let left = std::fs::read_to_string(&pids).unwrap();
            let last: u32 = left.lines().last().unwrap().parse().unwrap();
            assert!(
                !alive(last),
                "the background process {last} of command {code} outlived it"
            );
        }
        assert_eq!(supervisor.pid(), first);
        assert!(supervisor.usable());
        // A start that fails leaves the supervisor as it was.
        let error = supervisor
            .run(&Command::new(dir.path().join("missing")))
            .err()
            .unwrap();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert_eq!(run_under(&mut supervisor, &sh("exit 3")).unwrap(), Some(3));
        assert_eq!(supervisor.pid(), first);
    }

    #[test]
    fn a_stop_that_comes_after_its_command_ended_does_not_touch_the_next() {
        let mut supervisor = Supervisor::start().unwrap();
        assert_eq!(run_under(&mut supervisor, &sh("exit 0")).unwrap(), Some(0));
        // As when the worker asks to stop as the command ends by itself.
        supervisor.link.write_all(&STOP.to_ne_bytes()).unwrap();
        assert_eq!(
            run_under(&mut supervisor, &sh("sleep 0.2; exit 4")).unwrap(),
            Some(4)
        );
    }

    #[test]
    fn a_stopped_command_ends_with_its_signal_and_the_supervisor_serves_on() {
        let mut supervisor = Supervisor::start().unwrap();
        let mut supervised = supervisor.run(&sh("sleep 30")).unwrap();
        let pid = supervised.command_pid();
        assert!(
            supervised
                .wait(Duration::from_millis(10))
                .unwrap()
                .is_none()
        );
        supervised.stop();
        match supervised.wait(Duration::from_secs(60)).unwrap() {
            Some(End::Status(status)) => assert!(status.signal().is_some(), "{status}"),
            _ => panic!("no report"),
        }
        drop(supervised);
        assert!(!alive(pid));
        assert_eq!(run_under(&mut supervisor, &sh("exit 5")).unwrap(), Some(5));
    }

    #[test]
    fn dropping_the_supervisor_stops_its_command_and_reaps_it() {
        let mut supervisor = Supervisor::start().unwrap();
        let pid = supervisor.pid();
        let command = supervisor.run(&sh("sleep 30")).unwrap().command_pid();
        // The worker gave up waiting: the supervisor is not used again.
        assert!(!supervisor.usable());
        drop(supervisor);
        assert!(
            !alive(command),
            "the command {command} outlived its supervisor"
        );
        assert!(!alive(pid), "the supervisor {pid} was not reaped");
    }

    #[test]
    fn a_supervisor_that_ended_is_replaced_for_the_next_command() {
        let mut slot = None;
        let first = ready(&mut slot).unwrap().pid();
        assert_eq!(ready(&mut slot).unwrap().pid(), first);
        // Ctrl-C or SIGTERM while no command runs: the supervisor leaves.
        // SAFETY: kill on our own child.
        unsafe { libc::kill(first as libc::pid_t, libc::SIGTERM) };
        let status = slot.as_mut().unwrap().process.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "the supervisor did not leave by itself"
        );
        assert!(!slot.as_mut().unwrap().usable());
        let supervisor = ready(&mut slot).unwrap();
        assert_ne!(supervisor.pid(), first);
        assert_eq!(run_under(supervisor, &sh("exit 6")).unwrap(), Some(6));
    }

    /// Held by the tests that send a supervisor SIGINT: each sets this whole process's
    /// SIGINT action while it starts its supervisor.
    static SIGINT_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A supervisor started with SIGINT's action `action` (`SIG_IGN`, `SIG_DFL`), whatever
    /// the tests inherited (a script's background job ignores SIGINT).
    fn started_with_sigint(action: libc::sighandler_t) -> Supervisor {
        // SAFETY: sets and restores this process's SIGINT action; the tests that send
        // SIGINT hold `SIGINT_TESTS`.
        let before = unsafe { libc::signal(libc::SIGINT, action) };
        let started = Supervisor::start();
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGINT, before) };
        started.unwrap()
    }

    #[test]
    fn a_ctrl_c_ends_the_command_and_the_next_command_gets_a_new_supervisor() {
        let _serial = SIGINT_TESTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut slot = Some(started_with_sigint(libc::SIG_DFL));
        let supervisor = ready(&mut slot).unwrap();
        let first = supervisor.pid();
        let mut supervised = supervisor.run(&sh("sleep 30")).unwrap();
        // SAFETY: kill on our own child.
        unsafe { libc::kill(first as libc::pid_t, libc::SIGINT) };
        match supervised.wait(Duration::from_secs(60)).unwrap() {
            Some(End::Status(status)) => assert!(status.signal().is_some(), "{status}"),
            _ => panic!("no report"),
        }
        drop(supervised);
        // It said it leaves with its report, exited yet or not: the next command is not
        // sent to it (it was, and failed with "Connection reset by peer").
        assert!(!slot.as_mut().unwrap().usable());
        let supervisor = ready(&mut slot).unwrap();
        assert_ne!(supervisor.pid(), first);
        assert_eq!(run_under(supervisor, &sh("exit 7")).unwrap(), Some(7));
    }

    #[test]
    fn a_supervisor_started_ignoring_ctrl_c_keeps_its_command_running() {
        let _serial = SIGINT_TESTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // As a worker of a run started in the background of a script is.
        let mut supervisor = started_with_sigint(libc::SIG_IGN);
        let pid = supervisor.pid();
        let mut supervised = supervisor.run(&sh("sleep 30")).unwrap();
        // SAFETY: kill on our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
        // The signal is pending before the stop is sent: a supervisor that took it would
        // leave after this command.
        supervised.stop();
        match supervised.wait(Duration::from_secs(60)).unwrap() {
            Some(End::Status(status)) => assert_eq!(status.signal(), Some(libc::SIGTERM)),
            _ => panic!("no report"),
        }
        drop(supervised);
        assert!(
            supervisor.usable(),
            "the supervisor took the ignored SIGINT"
        );
        assert_eq!(run_under(&mut supervisor, &sh("exit 8")).unwrap(), Some(8));
        assert_eq!(supervisor.pid(), pid);
    }

    #[test]
    fn a_killed_supervisor_is_reported_and_takes_its_command_along() {
        let mut supervisor = Supervisor::start().unwrap();
        let pid = supervisor.pid();
        let mut supervised = supervisor.run(&sh("sleep 30")).unwrap();
        let command = supervised.command_pid();
        // SAFETY: kill on our own child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        match supervised.wait(Duration::from_secs(60)).unwrap() {
            Some(End::SupervisorDied(status)) => assert_eq!(status.signal(), Some(libc::SIGKILL)),
            _ => panic!("the supervisor's death was not reported"),
        }
        drop(supervised);
        assert!(!supervisor.usable());
        let deadline = Instant::now() + Duration::from_secs(60);
        while alive(command) {
            assert!(
                Instant::now() < deadline,
                "the command outlived its killed supervisor"
            );
            std::thread::sleep(Duration::from_millis(5));
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
            let error = spawn(Command::new(&program)).expect_err("spawn must fail");
            assert_eq!(error.kind(), kind, "{}: {error}", program.display());
        }
    }
}

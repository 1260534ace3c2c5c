//! Running `mpirun` from a test: found on the PATH or skipped with a message, in its own
//! process group that a guard kills (also when the test fails), with a deadline, the root
//! flags when root, and its output collected.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How many mpiruns of one test process run at once: more only make them compete for the
/// machine's cores.
const MAX_AT_ONCE: u32 = 2;

static RUNNING: Mutex<u32> = Mutex::new(0);

/// parvm's variables, which must not leak from the test's own environment into the ranks.
const PARVM_VARS: [&str; 6] = [
    "PARVM_HOSTNAME",
    "PARVM_TRANSPORT",
    "PARVM_CONNECT",
    "PARVM_LOCAL_SOCKET",
    "PARVM_WORKERS",
    "PARVM_LOG",
];

/// `mpirun` on the PATH, if there is one.
pub fn find_mpirun() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("mpirun"))
        .find(|candidate| candidate.is_file())
}

/// [`find_mpirun`], saying on standard error that the test is skipped when there is none.
pub fn skip_without_mpirun() -> Option<PathBuf> {
    let found = find_mpirun();
    if found.is_none() {
        eprintln!("SKIPPING the MPI test: `mpirun` is not on the PATH (install Open MPI or MPICH)");
    }
    found
}

/// Held while an mpirun runs; at most [`MAX_AT_ONCE`] exist.
struct Slot;

impl Slot {
    fn take() -> Slot {
        loop {
            {
                let mut used = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
                if *used < MAX_AT_ONCE {
                    *used += 1;
                    return Slot;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}

/// Kills mpirun's whole process group (mpirun, its ranks and their children) when
/// dropped, unless mpirun has exited and its ranks with it.
pub struct MpirunGuard {
    child: Child,
    _slot: Slot,
}

impl Drop for MpirunGuard {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            // mpirun ends its ranks on SIGTERM; give it a moment.
            let _ = kill(group, Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// An mpirun in its own process group, output piped.
pub struct Mpirun {
    guard: MpirunGuard,
    lines: Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: JoinHandle<String>,
}

/// What one mpirun printed, and how it ended.
pub struct Run {
    /// How mpirun ended.
    pub status: ExitStatus,
    /// Everything the ranks printed on standard output.
    pub stdout: String,
    /// Everything mpirun and the ranks printed on standard error.
    pub stderr: String,
}

impl Run {
    /// Status and both outputs, for failure messages.
    pub fn all(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// The `key=value` fields of every stdout line whose first word is `word`.
    pub fn lines(&self, word: &str) -> Vec<BTreeMap<String, String>> {
        self.stdout
            .lines()
            .filter(|line| line.split_whitespace().next() == Some(word))
            .map(|line| {
                line.split_whitespace()
                    .filter_map(|field| field.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }

    /// The number in field `key` of the first stdout line starting with `word`.
    ///
    /// # Panics
    /// When there is no such line or field, or it is not a number.
    pub fn field(&self, word: &str, key: &str) -> f64 {
        let lines = self.lines(word);
        let value = lines
            .first()
            .and_then(|line| line.get(key))
            .unwrap_or_else(|| panic!("no `{word} {key}=` line\n{}", self.all()));
        value
            .parse()
            .unwrap_or_else(|_| panic!("`{word} {key}={value}` is not a number"))
    }
}

/// `mpirun --oversubscribe <args>` with the root flags when root, and neither parvm's
/// variables nor `unset` from the test's own environment.
fn command(mpirun: &Path, args: &[String], unset: &[&str]) -> Command {
    let mut command = Command::new(mpirun);
    command
        .arg("--oversubscribe")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for var in PARVM_VARS.iter().chain(unset) {
        command.env_remove(var);
    }
    if nix::unistd::Uid::effective().is_root() {
        command
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    command
}

impl Mpirun {
    /// Starts `mpirun --oversubscribe <args>`, without parvm's variables or those in `unset`.
    ///
    /// # Panics
    /// When mpirun cannot be started.
    pub fn start(mpirun: &Path, args: &[String], unset: &[&str]) -> Mpirun {
        let slot = Slot::take();
        let mut child = command(mpirun, args, unset).spawn().expect("start mpirun");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Mpirun {
            guard: MpirunGuard { child, _slot: slot },
            lines,
            stdout_seen: Vec::new(),
            stderr,
        }
    }

    /// Runs `mpirun --oversubscribe <args>` to its end, at most until `deadline`.
    ///
    /// # Panics
    /// As [`Mpirun::start`] and [`Mpirun::finish`].
    pub fn run(mpirun: &Path, args: &[String], unset: &[&str], deadline: Instant) -> Run {
        Mpirun::start(mpirun, args, unset).finish(deadline)
    }

    /// mpirun's process id (also its process group's).
    pub fn id(&self) -> u32 {
        self.guard.child.id()
    }

    /// Waits for a stdout line starting with `prefix`, until `deadline`.
    pub fn wait_line(&mut self, prefix: &str, deadline: Instant) -> Option<String> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout_seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits for mpirun to end, at most until `deadline`.
    ///
    /// # Panics
    /// When it does not end in time (after killing it, with what it printed).
    pub fn finish(mut self, deadline: Instant) -> Run {
        let status = loop {
            if let Some(status) = self.guard.child.try_wait().expect("poll mpirun") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Mpirun {
            guard,
            lines,
            mut stdout_seen,
            stderr,
        } = self;
        // Ends the ranks for good (also when mpirun hung) before the pipes are read.
        drop(guard);
        stdout_seen.extend(lines.iter());
        let run = Run {
            status: status.unwrap_or_default(),
            stdout: stdout_seen.join("\n"),
            stderr: stderr.join().unwrap_or_default(),
        };
        assert!(
            status.is_some(),
            "mpirun did not finish within the deadline; killed\n{}",
            run.all()
        );
        run
    }
}

//! A task leaves no process behind: not when its command forks and exits, not when the
//! VM is finalized while it runs, not when its worker or the spawner is killed.
//!
//! Every command here carries `PARVM_TEST_MARK=<token>` in its environment, which its
//! children inherit (also those that call `setsid`), so the test finds all of them in
//! `/proc` and a guard kills whatever is left when a test fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_vm::{CommandStatus, ExitStatus, Spawn};

use crate::harness::{Backend, Harness, alive, collect, wait_until};

/// What the tests allow a killed worker's or spawner's task processes to take to go.
const GONE_WITHIN: Duration = Duration::from_secs(2);

/// The supervisor's grace period between `SIGTERM` and `SIGKILL`.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// A background `sleep`, one that left for a session of its own, and one in front: four
/// processes, counting the shell.
const FAMILY: &str = "sleep 1000 & setsid sleep 1000 & sleep 1000";

/// The processes that carry one token, killed when dropped.
struct Marked {
    entry: Vec<u8>,
}

impl Marked {
    fn new(test: &str) -> Marked {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Marked {
            entry: format!("PARVM_TEST_MARK={test}-{}-{nanos}", std::process::id()).into_bytes(),
        }
    }

    fn token(&self) -> &str {
        std::str::from_utf8(&self.entry["PARVM_TEST_MARK=".len()..]).unwrap()
    }

    /// A command running `script` under `sh -c`, marked.
    fn command(&self, script: &str) -> Spawn {
        Spawn::command("sh")
            .arg("-c")
            .arg(script)
            .env("PARVM_TEST_MARK", self.token())
    }

    /// Live (not zombie) processes with the mark in their environment.
    fn alive(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == self.entry))
            })
            .filter(|pid| alive(*pid))
            .collect()
    }

    /// Waits until at least `count` marked processes run.
    fn wait_for(&self, count: usize) {
        wait_until(&format!("{count} marked processes run"), || {
            self.alive().len() >= count
        });
    }

    /// Waits at most `within` until no marked process is left; returns those left.
    fn gone_within(&self, within: Duration) -> Vec<i32> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.alive();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Marked {
    fn drop(&mut self) {
        for pid in self.alive() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Process details for a failure message.
fn describe(pids: &[i32]) -> String {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            format!("{pid}: {}", stat.trim())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Kills and reaps a spawner process (and a TCP worker) when dropped, then removes its
/// storage folder.
struct SpawnerGuard {
    spawner: Child,
    worker: Option<Child>,
    _folder: tempfile::TempDir,
}

impl SpawnerGuard {
    /// The task folders in local storage (the host cache aside).
    fn task_folders(&self) -> Vec<std::ffi::OsString> {
        let local = self._folder.path().join("local");
        std::fs::read_dir(&local)
            .unwrap()
            .flat_map(|user| std::fs::read_dir(user.unwrap().path()).unwrap())
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name != "cache")
            .collect()
    }

    /// What the TCP worker wrote on its standard error so far.
    fn worker_said(&self) -> String {
        std::fs::read_to_string(self._folder.path().join("worker.err")).unwrap_or_default()
    }
}

impl Drop for SpawnerGuard {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.spawner).chain(self.worker.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the test program as a spawner in `scenario` with `script` marked by `marked`,
/// on the local backend or, with `tcp`, over TCP on loopback with one worker; returns it
/// and the pids it printed after `READY`. The TCP worker's standard error goes to
/// `worker.err` in its folder ([`SpawnerGuard::worker_said`]).
fn spawner(scenario: &str, script: &str, marked: &Marked, tcp: bool) -> (SpawnerGuard, Vec<i32>) {
    let folder = tempfile::tempdir().unwrap();
    let local = folder.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let secret = folder.path().join("secret");
    let mut command = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"));
    command
        .arg(scenario)
        .env("PARALLEL_LOCAL_STORAGE", &local)
        .env("PARALLEL_MIRRORED_STORAGE", &local)
        .env("PARVM_WORKERS", "1")
        .env("PARVM_TEST_SCRIPT", script)
        .env("PARVM_TEST_TOKEN", marked.token())
        .env_remove("PARVM_TRANSPORT")
        .stdout(Stdio::piped());
    if tcp {
        command
            .env("PARVM_TRANSPORT", "tcp")
            .env("PARVM_LISTEN", "127.0.0.1:0")
            .env("PARVM_SECRET_FILE", &secret);
    }
    let mut guard = SpawnerGuard {
        spawner: command.spawn().unwrap(),
        worker: None,
        _folder: folder,
    };
    let mut stdout = BufReader::new(guard.spawner.stdout.take().unwrap());
    let mut line = String::new();
    if tcp {
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("LISTEN ")
            .unwrap_or_else(|| panic!("unexpected output `{line}`"))
            .to_owned();
        guard.worker = Some(
            Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
                .env("PARVM_CONNECT", addr)
                .env("PARVM_SECRET_FILE", &secret)
                .env("PARVM_HOSTNAME", "alpha")
                .env("PARALLEL_LOCAL_STORAGE", &local)
                .env("PARALLEL_MIRRORED_STORAGE", &local)
                .env_remove("PARVM_TRANSPORT")
                .env_remove("PARVM_LOCAL_SOCKET")
                .stdin(Stdio::null())
                .stderr(std::fs::File::create(guard._folder.path().join("worker.err")).unwrap())
                .spawn()
                .unwrap(),
        );
        line.clear();
    }
    stdout.read_line(&mut line).unwrap();
    let pids = line
        .strip_prefix("READY")
        .unwrap_or_else(|| panic!("unexpected output `{line}`"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (guard, pids)
}

#[test]
fn a_command_s_background_processes_end_with_it() {
    let marked = Marked::new("background");
    let h = Harness::start(Backend::Local, 1);
    let vm = h.runtime().vm().local_folder(true).build().unwrap();
    let ids = vm
        .spawn(marked.command("sleep 1000 & setsid sleep 1000 & echo started"))
        .unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let status: CommandStatus = outcomes[&ids[0]].value();
    assert_eq!(status.code, Some(0));
    // Stopped before the exit was reported, not some time after.
    let left = marked.alive();
    assert!(left.is_empty(), "left behind: {}", describe(&left));
    assert!(h.task_folders().is_empty(), "{:?}", h.task_folders());
}

#[test]
fn a_command_in_process_workers_leaves_nothing_either() {
    let marked = Marked::new("memory");
    let h = Harness::start(Backend::Memory, 1);
    let vm = h.vm();
    let ids = vm
        .spawn(marked.command("setsid sleep 1000 & exit 4"))
        .unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let status: CommandStatus = outcomes[&ids[0]].value();
    assert_eq!(status.code, Some(4));
    let left = marked.alive();
    assert!(left.is_empty(), "left behind: {}", describe(&left));
}

#[test]
fn finalize_stops_a_running_command_at_once() {
    let marked = Marked::new("finalize");
    let mut h = Harness::start(Backend::Local, 1);
    let vm = h.runtime().vm().local_folder(true).build().unwrap();
    vm.spawn(marked.command(FAMILY)).unwrap();
    marked.wait_for(4);
    let start = Instant::now();
    h.runtime.take().unwrap().finalize().unwrap();
    let took = start.elapsed();
    assert!(took < KILL_GRACE, "finalize took {took:?}");
    let left = marked.alive();
    assert!(left.is_empty(), "left behind: {}", describe(&left));
}

#[test]
fn finalize_kills_a_command_that_ignores_sigterm_after_the_grace_period() {
    let marked = Marked::new("stubborn");
    let mut h = Harness::start(Backend::Local, 1);
    let vm = h.vm();
    // The ignored SIGTERM is inherited by the children.
    vm.spawn(marked.command(&format!("trap '' TERM; {FAMILY}")))
        .unwrap();
    marked.wait_for(4);
    let start = Instant::now();
    h.runtime.take().unwrap().finalize().unwrap();
    let took = start.elapsed();
    assert!(
        took < KILL_GRACE + Duration::from_secs(1),
        "finalize took {took:?}"
    );
    let left = marked.alive();
    assert!(left.is_empty(), "left behind: {}", describe(&left));
}

#[test]
fn a_killed_worker_leaves_no_task_process() {
    let marked = Marked::new("worker");
    let h = Harness::start(Backend::Local, 1);
    let vm = h.vm();
    let ids = vm.spawn(Spawn::task("pid", &())).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let worker: u32 = outcomes[&ids[0]].value();
    let ids = vm.spawn(marked.command(FAMILY)).unwrap();
    marked.wait_for(4);
    kill(
        Pid::from_raw(i32::try_from(worker).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    let left = marked.gone_within(GONE_WITHIN);
    assert!(left.is_empty(), "left behind: {}", describe(&left));
    let (outcomes, _) = collect(&vm, &ids);
    assert!(
        matches!(&outcomes[&ids[0]].exit, Some(ExitStatus::Failed { reason }) if reason.contains("died")),
        "{:?}",
        outcomes[&ids[0]].exit
    );
}

fn killed_spawner_leaves_no_task_process_and_no_worker(tcp: bool) {
    let marked = Marked::new(if tcp { "spawner-tcp" } else { "spawner" });
    let (mut guard, workers) = spawner("command", FAMILY, &marked, tcp);
    assert_eq!(workers.len(), 1);
    marked.wait_for(4);
    guard.spawner.kill().unwrap();
    guard.spawner.wait().unwrap();
    let left = marked.gone_within(GONE_WITHIN);
    assert!(left.is_empty(), "left behind: {}", describe(&left));
    match guard.worker.as_mut() {
        // The TCP worker is this test's child: reaped here.
        Some(worker) => wait_until("the worker exits", || {
            !matches!(worker.try_wait(), Ok(None))
        }),
        None => wait_until("the worker exits", || !alive(workers[0])),
    }
    // The worker stopped the command and removed its task folder before it left: a TCP
    // worker when its connection ended, a local one on the signal its spawner's death sent
    // it (`PR_SET_PDEATHSIG`).
    let left = guard.task_folders();
    assert!(left.is_empty(), "left in local storage: {left:?}");
}

#[test]
fn a_killed_spawner_leaves_no_task_process_and_no_worker() {
    killed_spawner_leaves_no_task_process_and_no_worker(false);
}

#[test]
fn a_lost_tcp_spawner_leaves_no_task_process_and_no_worker() {
    killed_spawner_leaves_no_task_process_and_no_worker(true);
}

/// A worker computing a function task (which cannot be interrupted) ends soon after its
/// spawner is killed: a TCP worker once its connection ends, a local one on the signal
/// the spawner's death sends it.
fn worker_computing_a_task_leaves_when_its_spawner_is_killed(tcp: bool) {
    let marked = Marked::new(if tcp { "hang-tcp" } else { "hang" });
    let (mut guard, workers) = spawner("hang", "", &marked, tcp);
    assert_eq!(workers.len(), 1);
    // READY follows the spawn of a 60-second task at once; the worker takes it meanwhile.
    guard.spawner.kill().unwrap();
    guard.spawner.wait().unwrap();
    let mut ended = || match guard.worker.as_mut() {
        Some(worker) => !matches!(worker.try_wait(), Ok(None)),
        None => !alive(workers[0]),
    };
    let deadline = Instant::now() + GONE_WITHIN;
    while !ended() {
        assert!(
            Instant::now() < deadline,
            "the worker still runs {GONE_WITHIN:?} after its spawner was killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_worker_computing_a_task_leaves_when_its_spawner_is_killed() {
    worker_computing_a_task_leaves_when_its_spawner_is_killed(false);
}

#[test]
fn a_tcp_worker_computing_a_task_leaves_when_its_spawner_is_killed() {
    worker_computing_a_task_leaves_when_its_spawner_is_killed(true);
}

/// SIGTERM, as a batch system sends it to end a job, makes a TCP worker of the program
/// stop its command with everything it started, remove its task folder, and end by the
/// signal, well before the supervisor's grace period would.
#[test]
fn a_tcp_worker_sent_sigterm_leaves_no_task_process_and_no_task_folder() {
    use std::os::unix::process::ExitStatusExt;
    let marked = Marked::new("sigterm-tcp");
    let (mut guard, workers) = spawner("command", FAMILY, &marked, true);
    assert_eq!(workers.len(), 1);
    marked.wait_for(4);
    let worker = guard.worker.as_mut().unwrap();
    let pid = Pid::from_raw(i32::try_from(worker.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let status = worker.wait().unwrap();
    assert_eq!(status.signal(), Some(15), "{status}");
    let left = marked.alive();
    assert!(left.is_empty(), "left behind: {}", describe(&left));
    let folders = guard.task_folders();
    assert!(folders.is_empty(), "left in local storage: {folders:?}");
}

/// A function task cannot be interrupted inside its thread: a TCP worker asked to leave
/// while one computes ends at once, by the signal.
#[test]
fn a_tcp_worker_sent_sigterm_while_a_function_computes_ends_by_the_signal() {
    use std::os::unix::process::ExitStatusExt;
    let marked = Marked::new("hang-sigterm");
    let (mut guard, workers) = spawner("hang", "", &marked, true);
    assert_eq!(workers.len(), 1);
    let worker = guard.worker.as_mut().unwrap();
    let pid = Pid::from_raw(i32::try_from(worker.id()).unwrap());
    // READY follows the spawn of a task that sleeps for 60 s in the worker's main thread.
    let main_thread = format!("/proc/{pid}/task/{pid}/wchan");
    wait_until("the function task sleeps", || {
        std::fs::read_to_string(&main_thread).is_ok_and(|wchan| wchan.contains("nanosleep"))
    });
    kill(pid, Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + GONE_WITHIN;
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the worker still runs {GONE_WITHIN:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let said = guard.worker_said();
    assert_eq!(status.signal(), Some(15), "{status}: {said}");
    assert!(
        said.contains("SIGTERM asked it to leave while function task"),
        "{said}"
    );
}

#[test]
fn returning_from_main_while_a_command_runs_is_quick_and_leaves_nothing() {
    let marked = Marked::new("return");
    let (mut guard, _) = spawner("return", FAMILY, &marked, false);
    // From the spawn on: `READY` follows it at once.
    let start = Instant::now();
    let status = guard.spawner.wait().unwrap();
    let took = start.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < KILL_GRACE + Duration::from_secs(1), "took {took:?}");
    let left = marked.alive();
    assert!(left.is_empty(), "left behind: {}", describe(&left));
}

#[test]
fn a_command_that_cannot_start_names_the_task_the_host_and_what_to_do() {
    let h = Harness::start(Backend::Local, 1);
    let vm = h.vm();
    // How the one task of `spawn` failed.
    let failure_of = |spawn: Spawn| {
        let ids = vm.spawn(spawn).unwrap();
        let (mut outcomes, _) = collect(&vm, &ids);
        let outcome = outcomes.remove(&ids[0]).unwrap();
        (ids[0], outcome.result.unwrap().unwrap_err())
    };
    let (id, failure) = failure_of(Spawn::command("/nonexistent/simulator"));
    for part in [
        "/nonexistent/simulator",
        &id.to_string(),
        "host `alpha`",
        "PATH",
    ] {
        assert!(failure.message.contains(part), "no `{part}` in: {failure}");
    }
    // A NUL byte cannot reach a program; the worker says so, and serves on.
    let (_, failure) = failure_of(Spawn::command("/bin/sh").args(["-c", "exit 0", "a\0b"]));
    assert!(failure.message.contains("NUL byte"), "{failure}");
    let ids = vm
        .spawn(Spawn::command("/bin/sh").args(["-c", "exit 0"]))
        .unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    assert!(outcomes[&ids[0]].result.as_ref().unwrap().is_ok());
}

/// The supervisor is forked when the worker starts, so it keeps no copy of what a task
/// builds: a worker that fills 64 MiB, runs a command, and writes the 64 MiB again leaves
/// its supervisor as small as before. (Forked for the first command instead, it would keep
/// the first 64 MiB, copied page by page as the worker wrote them again.)
#[test]
fn the_supervisor_keeps_no_copy_of_a_task_s_memory() {
    let h = Harness::start(Backend::Local, 1);
    let vm = h.vm();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("supervisor-private-kb");
    // The command's parent is its supervisor.
    let measure = format!(
        "awk '/^Private_Dirty:/ {{ print $2 }}' /proc/$PPID/smaps_rollup > '{}'",
        report.display()
    );
    let run = |spawn: Spawn| {
        let ids = vm.spawn(spawn).unwrap();
        let (outcomes, _) = collect(&vm, &ids);
        let result = outcomes[&ids[0]].result.as_ref().unwrap();
        assert!(result.is_ok(), "{result:?}");
    };
    run(Spawn::task("hold_memory", &(64usize, 1u8)));
    run(Spawn::command("/bin/sh").args(["-c", "exit 0"]));
    run(Spawn::task("hold_memory", &(64usize, 2u8)));
    run(Spawn::command("/bin/sh").args(["-c", measure.as_str()]));
    let kb: u64 = std::fs::read_to_string(&report)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        kb < 16 * 1024,
        "the supervisor holds {kb} kB of private memory after the worker rewrote 64 MiB"
    );
}

//! Faults that need real worker processes (local backend).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_vm::{ExitStatus, HostId, Message, Spawn};

use crate::harness::{Backend, Harness, alive, collect, wait_until};

/// Kills and reaps a child process when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the listed processes when dropped, if still alive.
struct PidsGuard(Vec<i32>);

impl Drop for PidsGuard {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
    }
}

fn pid_of_worker(h: &Harness, host: &str) -> (i32, parvm_vm::TaskId) {
    let vm = h.vm();
    let ids = vm.spawn(Spawn::task("pid", &()).hosts([host])).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let pid: u32 = outcomes[&ids[0]].value();
    (i32::try_from(pid).unwrap(), ids[0])
}

#[test]
fn task_calling_exit_fails_and_its_host_leaves() {
    let h = Harness::start_hosts(Backend::Local, &[("alpha", 1), ("beta", 1)]);
    let vm = h.vm();
    let ids = vm
        .spawn(Spawn::task("exit", &3i32).hosts(["beta"]))
        .unwrap();
    let (outcomes, others) = collect(&vm, &ids);
    assert!(
        matches!(&outcomes[&ids[0]].exit, Some(ExitStatus::Failed { reason }) if reason.contains("died")),
        "{:?}",
        outcomes[&ids[0]].exit
    );
    let others = if others.is_empty() {
        vec![
            vm.recv_timeout(crate::harness::DEADLINE)
                .unwrap()
                .expect("host delete"),
        ]
    } else {
        others
    };
    assert!(
        matches!(&others[0], Message::HostDelete { host } if *host == HostId::from("beta")),
        "{others:?}"
    );
    assert_eq!(vm.slots(), 2);
    // The other host still works.
    let again = vm.spawn(Spawn::task("noop", &())).unwrap();
    collect(&vm, &again);
}

#[test]
fn worker_killed_mid_task_gives_a_failed_exit() {
    let h = Harness::start_hosts(Backend::Local, &[("alpha", 2)]);
    let (pid, first) = pid_of_worker(&h, "alpha");
    let _guard = PidsGuard(vec![pid]);
    let vm = h.runtime().vm().local_folder(true).build().unwrap();
    // The lowest free slot runs the next task: the worker whose pid we know.
    let ids = vm.spawn(Spawn::task("sleep", &60_000u64)).unwrap();
    assert_eq!(ids[0].slot, first.slot);
    wait_until("the task folder exists", || !h.task_folders().is_empty());
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let (outcomes, others) = collect(&vm, &ids);
    assert!(matches!(
        outcomes[&ids[0]].exit,
        Some(ExitStatus::Failed { .. })
    ));
    assert!(
        others.is_empty(),
        "alpha still has a worker: no host delete: {others:?}"
    );
    assert_eq!(vm.free_slots(), 1);
    let again = vm.spawn(Spawn::task("noop", &())).unwrap();
    assert_ne!(again[0].slot, first.slot);
    collect(&vm, &again);
}

#[test]
fn killed_spawner_workers_exit_and_folders_are_swept_next_start() {
    let local = tempfile::tempdir().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
            .arg("hang")
            .env("PARALLEL_LOCAL_STORAGE", local.path())
            .env("PARALLEL_MIRRORED_STORAGE", shared.path())
            .env("PARVM_WORKERS", "2")
            // The next VM's workers run on host `alpha`: folders of another host are kept.
            .env("PARVM_HOSTNAME", "alpha")
            .env_remove("PARVM_TRANSPORT")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let pids: Vec<i32> = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("unexpected output `{line}`"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    let _guard = PidsGuard(pids.clone());
    // READY follows the spawn requests at once; the workers make their folders meanwhile.
    // Wait for the owner markers too: a folder killed between its mkdir and its marker is
    // "unknown" and, by design, swept only after the grace period.
    wait_until("one marked task folder per worker", || {
        let folders = task_folders(local.path());
        folders.len() == 2 && folders.iter().all(|f| f.join(".parvm-owner").is_file())
    });
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Reaped, not only dead: a zombie's pid still counts as a live owner for local storage.
    wait_until("the workers exit and are reaped", || {
        pids.iter()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });

    let h = Harness::start_in(Backend::Local, &[("alpha", 1)], local, shared);
    let vm = h.vm();
    let ids = vm.spawn(Spawn::task("noop", &())).unwrap();
    collect(&vm, &ids);
    assert!(
        h.task_folders().is_empty(),
        "stale folders swept: {:?}",
        h.task_folders()
    );
}

fn task_folders(local: &std::path::Path) -> Vec<std::path::PathBuf> {
    let user = parvm_env_config::current_user().unwrap();
    std::fs::read_dir(local.join(format!("parvm-{user}")))
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn worker_output_reaches_the_spawner_tagged_with_the_task() {
    let local = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
        .arg("print")
        .env("PARALLEL_LOCAL_STORAGE", local.path())
        .env("PARALLEL_MIRRORED_STORAGE", local.path())
        .env("PARVM_WORKERS", "1")
        .env("PARVM_HOSTNAME", "gamma")
        .env_remove("PARVM_TRANSPORT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("[1:1@gamma] hello"), "stdout: {stdout}");
    assert!(
        stderr.contains("[1:1@gamma] err: hello"),
        "stderr: {stderr}"
    );
}

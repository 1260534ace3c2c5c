//! `Vm::stop`: a command ends with everything it started, a function task ends with its
//! worker process, a task that already ended is left alone.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_vm::{Error, ExitStatus, Spawn};

use crate::harness::{Backend, Harness, Outcome, alive, collect, wait_until};

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

fn assert_stopped(outcome: &Outcome) {
    assert!(
        matches!(&outcome.exit, Some(ExitStatus::Failed { reason }) if reason.starts_with("stopped by the spawner")),
        "{outcome:?}"
    );
    assert_eq!(outcome.exits, 1, "{outcome:?}");
}

/// A command that starts a background grandchild, writes both pids and waits: after the
/// stop neither process is left.
fn command_stop_ends_its_process_group(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let pids_file = h.shared.path().join("pids");
    let ids = vm
        .spawn(
            Spawn::command("sh")
                .arg("-c")
                .arg("sleep 600 & echo \"$$ $!\" > \"$PIDS.tmp\"; mv \"$PIDS.tmp\" \"$PIDS\"; wait")
                .env("PIDS", pids_file.to_str().unwrap()),
        )
        .unwrap();
    wait_until("the command wrote its pids", || pids_file.exists());
    let pids: Vec<i32> = std::fs::read_to_string(&pids_file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let _guard = PidsGuard(pids.clone());
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&pid| alive(pid)));
    vm.stop(ids[0]).unwrap();
    // Twice is the same as once.
    vm.stop(ids[0]).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    assert_stopped(&outcomes[&ids[0]]);
    wait_until("the command and its background child are gone", || {
        pids.iter().all(|&pid| !alive(pid))
    });
    // The slot serves the next task.
    let again = vm.spawn(Spawn::task("echo", &"after".to_string())).unwrap();
    let (outcomes, _) = collect(&vm, &again);
    assert_eq!(outcomes[&again[0]].value::<String>(), "after");
}

#[test]
fn command_stop_ends_its_process_group_on_memory() {
    command_stop_ends_its_process_group(Backend::Memory);
}

#[test]
fn command_stop_ends_its_process_group_on_local() {
    command_stop_ends_its_process_group(Backend::Local);
}

#[test]
fn command_stop_ends_its_process_group_on_tcp() {
    command_stop_ends_its_process_group(Backend::Tcp);
}

/// Under mpirun: a command stop works there too, and the worker carries on.
#[cfg(feature = "mpi")]
#[test]
fn command_stop_ends_its_process_group_on_mpi() {
    crate::mpirun::suite_test(
        concat!(
            module_path!(),
            "::command_stop_ends_its_process_group_on_mpi"
        ),
        command_stop_ends_its_process_group,
    );
}

#[test]
fn stopping_an_ended_task_does_nothing() {
    let h = Harness::start(Backend::Local, 1);
    let vm = h.vm();
    let slots = vm.slots();
    let ids = vm.spawn(Spawn::task("echo", &"done".to_string())).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    assert_eq!(outcomes[&ids[0]].value::<String>(), "done");
    vm.stop(ids[0]).unwrap();
    vm.stop(vm.task_id()).unwrap();
    assert!(
        vm.recv_timeout(Duration::from_millis(300))
            .unwrap()
            .is_none()
    );
    // The worker is still there and runs the next task.
    assert_eq!(vm.slots(), slots);
    let again = vm.spawn(Spawn::task("echo", &"next".to_string())).unwrap();
    let (outcomes, _) = collect(&vm, &again);
    assert_eq!(outcomes[&again[0]].value::<String>(), "next");
}

#[test]
fn a_function_stop_on_memory_is_refused_clearly() {
    let h = Harness::start(Backend::Memory, 1);
    let vm = h.vm();
    let ids = vm.spawn(Spawn::task("recv_one", &())).unwrap();
    let error = vm.stop(ids[0]).unwrap_err();
    assert!(matches!(error, Error::CannotStop { .. }), "{error:?}");
    let text = error.to_string();
    assert!(text.contains(&ids[0].to_string()), "{text}");
    assert!(text.contains("memory"), "{text}");
    // The task was left alone: a message ends it as usual.
    vm.send(ids[0], &"bye".to_string()).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    assert!(matches!(
        outcomes[&ids[0]].exit,
        Some(ExitStatus::Completed)
    ));
}

#[test]
fn a_function_stop_ends_its_worker_process_on_local() {
    a_function_stop_ends_its_worker_process(Backend::Local);
}

#[test]
fn a_function_stop_ends_its_worker_process_on_tcp() {
    a_function_stop_ends_its_worker_process(Backend::Tcp);
}

fn a_function_stop_ends_its_worker_process(backend: Backend) {
    // Without replacements the slot is gone; `crate::replace` tests the replacement.
    let h = Harness::start_hosts(backend, &[("alpha", 1), ("beta", 1)]);
    let vm = h.runtime().vm().local_folder(true).build().unwrap();
    let ids = vm.spawn(Spawn::task("pid", &()).hosts(["beta"])).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let pid = i32::try_from(outcomes[&ids[0]].value::<u32>()).unwrap();
    let _guard = PidsGuard(vec![pid]);
    let ids = vm
        .spawn(Spawn::task("sleep", &600_000u64).hosts(["beta"]))
        .unwrap();
    wait_until("the task folder exists", || !h.task_folders().is_empty());
    vm.stop(ids[0]).unwrap();
    let (outcomes, others) = collect(&vm, &ids);
    assert_stopped(&outcomes[&ids[0]]);
    wait_until("the worker process is gone", || !alive(pid));
    // Then the worker's loss, as usual: beta had only this worker.
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
        matches!(&others[0], parvm_vm::Message::HostDelete { host } if host.to_string() == "beta"),
        "{others:?}"
    );
}

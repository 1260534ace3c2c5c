//! The behaviour suite: every function takes a backend, and runs on each of them: memory,
//! local, TCP, and MPI (with the `mpi` feature, under `mpirun`; see `crate::mpirun`).

use std::collections::HashSet;
use std::time::Duration;

use parvm_vm::{CommandStatus, Error, ExitStatus, HostId, Message, Spawn, TaskId};

use crate::harness::{Backend, Harness, collect};

suite!(
    spawn_two_collect_results_and_exits,
    unregistered_task_is_refused_before_sending,
    wrong_argument_type_is_refused_before_sending,
    panic_fails_the_task_and_the_worker_lives_on,
    error_result_fails_the_task,
    send_back_off_gives_only_the_exit,
    ping_pong_between_spawner_and_task,
    messages_the_program_does_not_take_hold_their_task_back,
    messages_of_a_dropped_vm_hold_back_no_later_task,
    a_task_flooding_a_busy_task_holds_up_no_other,
    worker_to_worker_messages_route_via_the_spawner,
    messages_to_an_ended_task_are_dropped,
    two_thousand_tasks_back_to_back,
    two_vms_with_different_mirror_maps,
    every_task_of_every_worker_gets_the_mirror_map,
    temporary_folder_removed_even_when_the_task_fails,
    a_spawn_loop_finds_its_mirror_renewed_task_after_task,
    persistent_folder_is_reused_then_removed,
    persistent_folder_never_runs_on_stale_inputs,
    describe_lists_hosts_slots_and_tasks,
    clear_local_storage_on_every_host,
    external_command_status_is_the_result,
    spawn_on_target_hosts,
);

fn spawn_two_collect_results_and_exits(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    assert_eq!(vm.slots(), 3, "two workers and the spawner's slot 0");
    assert_eq!(vm.free_slots(), 2);
    assert_eq!(vm.task_id(), TaskId::SPAWNER);
    assert_eq!(vm.parent_task_id(), None);
    let ids = vm
        .spawn(Spawn::task("add", &(2i64, 3i64)).count(2))
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(vm.free_slots(), 0);
    assert!(
        vm.spawn(Spawn::task("noop", &())).unwrap().is_empty(),
        "no slot free"
    );
    let (outcomes, _) = collect(&vm, &ids);
    for id in &ids {
        let outcome = &outcomes[id];
        let value = outcome.ok_value();
        assert_eq!(value.decode::<i64>().unwrap(), 5);
        assert!(matches!(
            value.decode::<String>(),
            Err(Error::WrongResultType { .. })
        ));
        assert_eq!(outcome.exit, Some(ExitStatus::Completed));
        assert_eq!((outcome.results, outcome.exits), (1, 1));
    }
    assert_eq!(vm.free_slots(), 2);
}

fn unregistered_task_is_refused_before_sending(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let err = vm.spawn(Spawn::task("nope", &())).unwrap_err();
    assert!(
        matches!(err, Error::UnknownTask { ref name, .. } if name == "nope"),
        "{err}"
    );
    assert!(
        err.to_string().contains("echo"),
        "lists registered names: {err}"
    );
    assert_eq!(vm.free_slots(), 1);
    assert!(
        vm.recv_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
}

fn wrong_argument_type_is_refused_before_sending(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let err = vm.spawn(Spawn::task("echo", &"a str")).unwrap_err();
    assert!(
        matches!(err, Error::WrongArgs { expected, .. } if expected.contains("String")),
        "{err}"
    );
    let err = vm.spawn(Spawn::task("add", &(1i32, 2i32))).unwrap_err();
    assert!(matches!(err, Error::WrongArgs { .. }), "{err}");
    assert_eq!(vm.free_slots(), 1);
    assert!(vm.try_recv().unwrap().is_none());
}

fn panic_fails_the_task_and_the_worker_lives_on(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let ids = vm
        .spawn(Spawn::task("panic", &"boom 42".to_string()))
        .unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let outcome = &outcomes[&ids[0]];
    let failure = outcome.result.as_ref().unwrap().as_ref().unwrap_err();
    assert!(failure.message.contains("boom 42"), "{failure}");
    assert!(
        matches!(&outcome.exit, Some(ExitStatus::Failed { reason }) if reason.contains("boom 42"))
    );
    let again = vm.spawn(Spawn::task("echo", &"alive".to_string())).unwrap();
    assert_eq!(
        again[0].slot, ids[0].slot,
        "the same worker runs the next task"
    );
    let (outcomes, _) = collect(&vm, &again);
    let value = outcomes[&again[0]].ok_value();
    assert_eq!(value.decode::<String>().unwrap(), "alive");
}

fn error_result_fails_the_task(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let ids = vm
        .spawn(Spawn::task("fail", &"bad input x".to_string()))
        .unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let failure = outcomes[&ids[0]]
        .result
        .as_ref()
        .unwrap()
        .as_ref()
        .unwrap_err();
    assert_eq!(failure.message, "bad input x");
}

fn send_back_off_gives_only_the_exit(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let ids = vm
        .spawn(Spawn::task("echo", &"x".to_string()).send_back(false))
        .unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    assert_eq!(outcomes[&ids[0]].results, 0);
    assert_eq!(outcomes[&ids[0]].exit, Some(ExitStatus::Completed));
}

fn ping_pong_between_spawner_and_task(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let ids = vm.spawn(Spawn::task("bounce", &())).unwrap();
    for size in [1usize, 1000, 100_000, 3_000_000] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        vm.send_bytes(ids[0], &data).unwrap();
        match vm.recv_timeout(crate::harness::DEADLINE).unwrap() {
            Some(Message::User { from, data: back }) => {
                assert_eq!(from, ids[0]);
                assert_eq!(back.bytes(), &data[..], "size {size}");
            }
            other => panic!("expected the bounce, got {other:?}"),
        }
    }
    vm.send_bytes(ids[0], &[]).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let value = outcomes[&ids[0]].ok_value();
    assert_eq!(value.decode::<u64>().unwrap(), 4);
}

/// A task's messages to the spawner take from its worker's window until the program takes
/// them: a program busy elsewhere holds a task that sends 12.5 MiB at 1 MiB, instead of
/// growing by all of it; once taken, every message arrives whole and in order.
fn messages_the_program_does_not_take_hold_their_task_back(backend: Backend) {
    const COUNT: u64 = 200;
    const SIZE: usize = 64 << 10;
    // What one worker's window holds of them (1 MiB).
    const HELD: u64 = 16;
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let dir = tempfile::tempdir().unwrap();
    let progress = dir.path().join("progress");
    let ids = vm
        .spawn(Spawn::task(
            "send_many",
            &(COUNT, SIZE, progress.display().to_string()),
        ))
        .unwrap();
    let sent = || {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(0)
    };
    if !backend.sends_wait_for_the_receiver() {
        crate::harness::wait_until("the task filled its window", || sent() >= HELD);
    }
    // Not an order but a look, again and again: held, the task sends no more.
    for _ in 0..20 {
        assert!(sent() <= HELD, "{} messages sent untaken", sent());
        std::thread::sleep(Duration::from_millis(10));
    }
    for seq in 0..COUNT {
        match vm.recv_timeout(crate::harness::DEADLINE).unwrap() {
            Some(Message::User { from, data }) => {
                assert_eq!(from, ids[0]);
                assert_eq!(data.bytes().len(), SIZE, "message {seq}");
                assert_eq!(data.bytes()[..8], seq.to_le_bytes(), "message {seq}");
            }
            other => panic!("expected message {seq}, got {other:?}"),
        }
    }
    let (outcomes, _) = collect(&vm, &ids);
    assert_eq!(outcomes[&ids[0]].ok_value().decode::<u64>().unwrap(), COUNT);
}

/// A task that floods another task, which does not receive yet, holds up neither the
/// spawner nor other tasks: they run and end meanwhile; then every message arrives whole
/// and in order.
fn a_task_flooding_a_busy_task_holds_up_no_other(backend: Backend) {
    const COUNT: u64 = 200;
    const SIZE: usize = 64 << 10;
    let h = Harness::start(backend, 3);
    let vm = h.vm();
    let dir = tempfile::tempdir().unwrap();
    let (gate, progress) = (dir.path().join("gate"), dir.path().join("progress"));
    let receiver = vm
        .spawn(Spawn::task(
            "recv_many_after",
            &(gate.display().to_string(), COUNT, SIZE),
        ))
        .unwrap();
    let sender = vm
        .spawn(Spawn::task(
            "send_many_to",
            &(receiver[0], COUNT, SIZE, progress.display().to_string()),
        ))
        .unwrap();
    if !backend.sends_wait_for_the_receiver() {
        // Under MPI a message of this size goes only once the spawner receives, which
        // this thread does below.
        crate::harness::wait_until("the sender is under way", || {
            std::fs::read_to_string(&progress)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .is_some_and(|sent| sent >= 16)
        });
    }
    // The third worker's tasks run and end while the receiver takes nothing: the spawner
    // does not wait for the receiver's worker while it forwards the flood.
    for i in 0..5i64 {
        let ids = vm.spawn(Spawn::task("add", &(i, 1i64))).unwrap();
        assert_eq!(ids.len(), 1, "the third worker is free");
        let (outcomes, _) = collect(&vm, &ids);
        assert_eq!(outcomes[&ids[0]].ok_value().decode::<i64>().unwrap(), i + 1);
    }
    std::fs::write(&gate, b"").unwrap();
    let (outcomes, _) = collect(&vm, &[receiver[0], sender[0]]);
    for id in [receiver[0], sender[0]] {
        assert_eq!(outcomes[&id].ok_value().decode::<u64>().unwrap(), COUNT);
    }
}

/// The messages a dropped VM's task sent, and sends on, are given back to its worker's
/// window: the task runs to its end unobserved, and the next VM's task on that worker runs.
fn messages_of_a_dropped_vm_hold_back_no_later_task(backend: Backend) {
    let h = Harness::start(backend, 1);
    let dir = tempfile::tempdir().unwrap();
    let progress = dir.path().join("progress");
    let first = h.vm();
    first
        .spawn(Spawn::task(
            "send_many",
            &(200u64, 64usize << 10, progress.display().to_string()),
        ))
        .unwrap();
    let second = h.vm();
    if !backend.sends_wait_for_the_receiver() {
        crate::harness::wait_until("the first task filled its window", || {
            std::fs::read_to_string(&progress).is_ok_and(|text| text == "16")
        });
    }
    // One taken; the next VM's look files what has arrived (on the memory backend, every
    // message sent), which waits in the first VM's inbox when it is dropped. What arrives
    // later finds no VM.
    let taken = first.recv_timeout(crate::harness::DEADLINE).unwrap();
    assert!(matches!(taken, Some(Message::User { .. })), "{taken:?}");
    assert!(second.try_recv().unwrap().is_none());
    drop(first);
    // A dispatch waits for the worker's one slot, which the first task holds until it
    // has sent everything.
    let results: Vec<_> =
        crate::harness::within("the next VM's task", crate::harness::DEADLINE, move || {
            second
                .dispatch([parvm_vm::Job::task("echo", &"after".to_string())])
                .map(Result::unwrap)
                .collect()
        });
    match &results[0].outcome {
        parvm_vm::JobOutcome::Value(value) => {
            assert_eq!(value.decode::<String>().unwrap(), "after");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&progress).unwrap(), "200");
}

fn worker_to_worker_messages_route_via_the_spawner(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let receiver = vm.spawn(Spawn::task("recv_one", &())).unwrap();
    let sender = vm.spawn(Spawn::task("relay", &receiver[0])).unwrap();
    let (outcomes, _) = collect(&vm, &[receiver[0], sender[0]]);
    let value = outcomes[&receiver[0]].ok_value();
    assert_eq!(
        value.decode::<String>().unwrap(),
        format!("hi from {}", sender[0])
    );
}

fn messages_to_an_ended_task_are_dropped(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.vm();
    let first = vm.spawn(Spawn::task("noop", &())).unwrap();
    collect(&vm, &first);
    vm.send(first[0], &"for the dead".to_string()).unwrap();
    let second = vm.spawn(Spawn::task("recv_one", &())).unwrap();
    assert_eq!(second[0].slot, first[0].slot);
    assert_ne!(second[0], first[0]);
    // Also a late message that reaches the worker: addressed to the old number.
    assert!(
        vm.recv_timeout(Duration::from_millis(200))
            .unwrap()
            .is_none(),
        "not delivered to the next task"
    );
    vm.send(second[0], &"for the living".to_string()).unwrap();
    let (outcomes, _) = collect(&vm, &second);
    let value = outcomes[&second[0]].ok_value();
    assert_eq!(value.decode::<String>().unwrap(), "for the living");
}

fn two_thousand_tasks_back_to_back(backend: Backend) {
    let h = Harness::start(backend, 2);
    let vm = h.vm();
    let total = 2000usize;
    let mut next = 0usize;
    let mut ids = HashSet::new();
    let mut values = HashSet::new();
    let mut exits = 0usize;
    let mut expected = std::collections::HashMap::new();
    while exits < total {
        while next < total && vm.free_slots() > 0 {
            let spawned = vm.spawn(Spawn::task("echo", &next.to_string())).unwrap();
            for id in spawned {
                assert!(ids.insert(id), "task id {id} given twice");
                expected.insert(id, next.to_string());
                next += 1;
            }
        }
        match vm.recv_timeout(crate::harness::DEADLINE).unwrap() {
            Some(Message::TaskResult { task, outcome }) => {
                let text: String = outcome.unwrap().decode().unwrap();
                assert_eq!(expected[&task], text);
                assert!(values.insert(text), "a result came twice");
            }
            Some(Message::TaskExit { status, .. }) => {
                assert!(status.is_completed());
                exits += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(values.len(), total);
    assert_eq!(vm.free_slots(), 2);
}

fn two_vms_with_different_mirror_maps(backend: Backend) {
    let h = Harness::start(backend, 2);
    let shared = h.shared.path();
    std::fs::create_dir_all(shared.join("a/sub")).unwrap();
    std::fs::create_dir_all(shared.join("b")).unwrap();
    std::fs::write(shared.join("a/x.txt"), "x").unwrap();
    std::fs::write(shared.join("a/sub/deep.txt"), "d").unwrap();
    std::fs::write(shared.join("b/y.txt"), "y").unwrap();
    let first = h
        .runtime()
        .vm()
        .mirror(shared.join("a/*").display().to_string(), ".")
        .build()
        .unwrap();
    let second = h
        .runtime()
        .vm()
        .mirror(shared.join("b/*").display().to_string(), "inputs")
        .persistent(true)
        .build()
        .unwrap();
    assert_ne!(first.index(), second.index());
    let a = first.spawn(Spawn::task("list", &())).unwrap();
    let b = second.spawn(Spawn::task("list", &())).unwrap();
    let (outcomes_a, _) = collect(&first, &a);
    let (outcomes_b, _) = collect(&second, &b);
    let list_a: Vec<String> = outcomes_a[&a[0]].value();
    let list_b: Vec<String> = outcomes_b[&b[0]].value();
    assert_eq!(list_a, ["sub", "x.txt"]);
    assert_eq!(list_b, ["inputs"]);
}

/// A worker gets a VM's mirror map once, before its first task of that VM, and keeps it
/// for the VM's later tasks; a VM built after another was dropped gets its own map.
fn every_task_of_every_worker_gets_the_mirror_map(backend: Backend) {
    let h = Harness::start(backend, 2);
    let shared = h.shared.path();
    std::fs::write(shared.join("one.txt"), "1").unwrap();
    std::fs::write(shared.join("two.txt"), "2").unwrap();
    for (file, persistent) in [("one.txt", false), ("two.txt", true), ("one.txt", true)] {
        let vm = h
            .runtime()
            .vm()
            .mirror(shared.join(file).display().to_string(), ".")
            .persistent(persistent)
            .build()
            .unwrap();
        for _ in 0..3 {
            let ids = vm.spawn(Spawn::task("list", &()).fill()).unwrap();
            assert_eq!(ids.len(), 2);
            let (outcomes, _) = collect(&vm, &ids);
            for id in &ids {
                let listed: Vec<String> = outcomes[id].value();
                assert_eq!(listed, [file], "task {id}");
            }
        }
    }
}

/// A worker that joins after a VM's first tasks gets the VM's mirror map before its own
/// first task of it.
#[test]
fn a_tcp_worker_that_joins_later_gets_the_mirror_map() {
    let mut h = Harness::start(Backend::Tcp, 1);
    std::fs::write(h.shared.path().join("input.txt"), "x").unwrap();
    let source = h.shared.path().join("input.txt").display().to_string();
    let vm = h.runtime().vm().mirror(source, ".").build().unwrap();
    let first = vm.spawn(Spawn::task("list", &())).unwrap();
    let (outcomes, _) = collect(&vm, &first);
    let listed: Vec<String> = outcomes[&first[0]].value();
    assert_eq!(listed, ["input.txt"]);
    h.join_tcp_worker("beta");
    let late = vm
        .spawn(Spawn::task("list", &()).fill().hosts(["beta"]))
        .unwrap();
    assert_eq!(late.len(), 1);
    let (outcomes, _) = collect(&vm, &late);
    let listed: Vec<String> = outcomes[&late[0]].value();
    assert_eq!(listed, ["input.txt"], "the late worker mirrored the inputs");
}

fn temporary_folder_removed_even_when_the_task_fails(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.runtime().vm().local_folder(true).build().unwrap();
    let ok = vm
        .spawn(Spawn::task("write", &("out.txt".to_string(), false)))
        .unwrap();
    let (outcomes, _) = collect(&vm, &ok);
    let before: Vec<String> = outcomes[&ok[0]].value();
    assert!(before.is_empty(), "a fresh folder: {before:?}");
    assert!(
        h.task_folders().is_empty(),
        "removed after success: {:?}",
        h.task_folders()
    );
    let failing = vm
        .spawn(Spawn::task("write", &("out.txt".to_string(), true)))
        .unwrap();
    let (outcomes, _) = collect(&vm, &failing);
    assert!(outcomes[&failing[0]].result.as_ref().unwrap().is_err());
    assert!(
        h.task_folders().is_empty(),
        "removed after a panic: {:?}",
        h.task_folders()
    );
}

/// A program that spawns each task when the last one's exit reaches it: the worker keeps
/// the folder a moment for it, and the next task finds it renewed (exactly its inputs, as
/// they are at the source), not mirrored afresh.
fn a_spawn_loop_finds_its_mirror_renewed_task_after_task(backend: Backend) {
    let h = Harness::start(backend, 1);
    let shared = h.shared.path();
    let seen = shared.join("seen");
    std::fs::create_dir_all(&seen).unwrap();
    let vm = h.vm_mirroring_lib();
    // $1: where to say which folder the task ran in, $2: its index.
    let script = r#"
        left=$(ls -A | grep -v '^[.]parvm-' | tr '\n' ' ')
        [ "$left" = "lib out.txt " ] && exit 7
        [ "$left" = "lib " ] || exit 8
        [ "$(cat lib/m.lib)" = "model" ] || exit 9
        stat -c %w .parvm-owner > "$1/$2"
        echo out > out.txt; echo scribbled >> lib/m.lib"#;
    for i in 0..10 {
        let ids = vm
            .spawn(Spawn::command("sh").args([
                "-c",
                script,
                "sh",
                seen.to_str().unwrap(),
                &i.to_string(),
            ]))
            .unwrap();
        let (outcomes, _) = collect(&vm, &ids);
        let status: CommandStatus = outcomes[&ids[0]].value();
        assert_eq!(status.code, Some(0), "task {i}");
    }
    let births: HashSet<String> = (0..10)
        .map(|i| std::fs::read_to_string(seen.join(i.to_string())).unwrap())
        .collect();
    if !births.contains("-\n") {
        assert!(
            births.len() < 5,
            "{} folders made for 10 tasks",
            births.len()
        );
    }
    drop(vm);
    crate::harness::wait_until("no task folder is left", || h.task_folders().is_empty());
}

fn persistent_folder_is_reused_then_removed(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.runtime().vm().persistent(true).build().unwrap();
    let first = vm
        .spawn(Spawn::task("write", &("one.txt".to_string(), false)))
        .unwrap();
    collect(&vm, &first);
    assert_eq!(h.task_folders().len(), 1, "kept for the next task");
    let second = vm
        .spawn(Spawn::task("write", &("two.txt".to_string(), false)))
        .unwrap();
    let (outcomes, _) = collect(&vm, &second);
    let before: Vec<String> = outcomes[&second[0]].value();
    assert_eq!(before, ["one.txt"]);
    drop(vm);
    crate::harness::wait_until("the persistent folder is removed", || {
        h.task_folders().is_empty()
    });
}

fn persistent_folder_never_runs_on_stale_inputs(backend: Backend) {
    let h = Harness::start(backend, 1);
    let project = h.shared.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("in.txt"), "version 1").unwrap();
    let vm = h
        .runtime()
        .vm()
        .mirror(project.join("*.txt").display().to_string(), ".")
        .persistent(true)
        .build()
        .unwrap();
    let read = |action: &str| -> String {
        let ids = vm
            .spawn(Spawn::task(
                "read_then",
                &("in.txt".to_string(), action.to_string()),
            ))
            .unwrap();
        let (outcomes, _) = collect(&vm, &ids);
        outcomes[&ids[0]].value()
    };
    // The task edits its copy in place (same size): the next task sees the source again.
    assert_eq!(read("edit"), "version 1");
    assert_eq!(read("keep"), "version 1");
    // The source changes: the next task sees the new version, then deletes its copy.
    std::fs::write(project.join("in.txt"), "version 2, longer").unwrap();
    assert_eq!(read("delete"), "version 2, longer");
    assert_eq!(read("keep"), "version 2, longer");
    assert_eq!(h.task_folders().len(), 1, "one persistent folder, reused");
}

fn describe_lists_hosts_slots_and_tasks(backend: Backend) {
    let h = Harness::start_hosts(backend, &[("alpha", 1), ("beta", 1)]);
    let vm = h.vm();
    let hosts = vm.hosts();
    assert!(
        hosts.contains(&HostId::from("alpha")) && hosts.contains(&HostId::from("beta")),
        "{hosts:?}"
    );
    let ids = vm.spawn(Spawn::task("sleep", &300u64)).unwrap();
    let text = vm.describe().to_string();
    assert!(
        text.contains("host alpha") && text.contains("host beta"),
        "{text}"
    );
    assert!(
        text.contains(&format!("task {}", ids[0])) && text.contains("`sleep`"),
        "{text}"
    );
    assert_eq!(vm.host_of(ids[0]), Some(HostId::from("alpha")));
    collect(&vm, &ids);
}

fn clear_local_storage_on_every_host(backend: Backend) {
    let h = Harness::start_hosts(backend, &[("alpha", 1), ("beta", 1)]);
    let vm = h.runtime().vm().persistent(true).build().unwrap();
    let ids = vm.spawn(Spawn::task("noop", &())).unwrap();
    collect(&vm, &ids);
    let report = vm
        .clear_local_storage(false, Duration::from_secs(10))
        .unwrap();
    assert_eq!(report.hosts.len(), 3, "{report}");
    assert!(report.hosts.iter().all(|(_, r)| r.is_ok()), "{report}");
    assert_eq!(
        h.task_folders().len(),
        1,
        "the kept persistent folder is in use and stays"
    );
}

fn external_command_status_is_the_result(backend: Backend) {
    let h = Harness::start(backend, 1);
    let vm = h.runtime().vm().local_folder(true).build().unwrap();
    let ids = vm
        .spawn(
            Spawn::command("sh")
                .arg("-c")
                .arg("test -z \"$PARVM_LOCAL_SOCKET\" && echo $GREETING > f && exit 3")
                .env("GREETING", "hi"),
        )
        .unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let status: CommandStatus = outcomes[&ids[0]].value();
    assert_eq!(status.code, Some(3));
    let missing = vm.spawn(Spawn::command("/nonexistent/program")).unwrap();
    let (outcomes, _) = collect(&vm, &missing);
    let failure = outcomes[&missing[0]]
        .result
        .as_ref()
        .unwrap()
        .as_ref()
        .unwrap_err();
    assert!(
        failure.message.contains("/nonexistent/program"),
        "{failure}"
    );
}

fn spawn_on_target_hosts(backend: Backend) {
    let h = Harness::start_hosts(backend, &[("alpha", 2), ("beta", 1)]);
    let vm = h.vm();
    let ids = vm
        .spawn(Spawn::task("noop", &()).fill().hosts(["beta"]))
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(vm.host_of(ids[0]), Some(HostId::from("beta")));
    collect(&vm, &ids);
}

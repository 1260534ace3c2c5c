//! Waits that can never end fail at once: every local worker killed, or more workers asked
//! for than the local transport has.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_vm::{Error, ExitStatus, Message, Spawn, Vm};

use crate::harness::{Backend, Harness, collect};

/// How long "at once" may take: a killed worker's loss needs its socket closed and the
/// process reaped, well under this.
const AT_ONCE: Duration = Duration::from_secs(10);

/// Kills the listed processes when dropped, if still alive.
struct PidsGuard(Vec<i32>);

impl Drop for PidsGuard {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }
}

/// The pids of every worker, from a `pid` task on each slot.
fn worker_pids(vm: &Vm) -> Vec<i32> {
    let ids = vm.spawn(Spawn::task("pid", &()).fill()).unwrap();
    let (outcomes, _) = collect(vm, &ids);
    ids.iter()
        .map(|id| i32::try_from(outcomes[id].value::<u32>()).unwrap())
        .collect()
}

/// [`crate::harness::within`] [`AT_ONCE`].
fn within<T: Send + 'static>(what: &str, body: impl FnOnce() -> T + Send + 'static) -> T {
    crate::harness::within(what, AT_ONCE, body)
}

#[test]
fn recv_fails_at_once_when_every_local_worker_is_killed() {
    let h = Harness::start(Backend::Local, 2);
    let vm = h.vm();
    let pids = worker_pids(&vm);
    let _guard = PidsGuard(pids.clone());
    let ids = vm.spawn(Spawn::task("sleep", &60_000u64).fill()).unwrap();
    assert_eq!(ids.len(), 2);
    for pid in &pids {
        kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
    }
    let (messages, error) = within("recv after every worker was killed", move || {
        // What was filed before the losses comes first: the failed exits, the host's leave.
        let mut messages = Vec::new();
        let error = loop {
            match vm.recv() {
                Ok(message) => messages.push(message),
                Err(error) => break error,
            }
        };
        let again = (vm.recv_timeout(Duration::from_secs(60)), vm.try_recv());
        (messages, (error, again))
    });
    let (error, (timeout, now)) = error;
    let exits: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            Message::TaskExit { task, status } => Some((*task, status.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(exits.len(), 2, "{messages:?}");
    assert!(
        exits
            .iter()
            .all(|(task, status)| ids.contains(task)
                && matches!(status, ExitStatus::Failed { .. })),
        "{exits:?}"
    );
    assert!(
        matches!(error, Error::WorkersGone { lost: 2, .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("`local`"), "{text}");
    assert!(text.contains("SIGKILL"), "names what happened: {text}");
    assert!(
        text.contains("start a new runtime"),
        "says what to do: {text}"
    );
    assert!(
        matches!(timeout, Err(Error::WorkersGone { .. })),
        "recv_timeout: {timeout:?}"
    );
    assert!(
        matches!(now, Err(Error::WorkersGone { .. })),
        "try_recv: {now:?}"
    );
}

#[test]
fn wait_for_workers_fails_at_once_when_none_can_come() {
    let h = Harness::start(Backend::Local, 2);
    let runtime = h.runtime().clone();
    let start = Instant::now();
    assert_eq!(
        runtime
            .wait_for_workers(2, Duration::from_secs(60))
            .unwrap(),
        2
    );
    let error = runtime
        .wait_for_workers(3, Duration::from_secs(60))
        .unwrap_err();
    assert!(start.elapsed() < AT_ONCE, "took {:?}", start.elapsed());
    assert!(
        matches!(
            error,
            Error::TooFewWorkers {
                wanted: 3,
                have: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("PARVM_WORKERS"), "{error}");

    let vm = h.vm();
    let pids = worker_pids(&vm);
    let _guard = PidsGuard(pids.clone());
    for pid in &pids {
        kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
    }
    crate::harness::wait_until("the workers are lost", || {
        // Losses are noticed while receiving; with none left, receiving fails.
        vm.try_recv().is_err()
    });
    let error = within(
        "wait_for_workers after every worker was killed",
        move || runtime.wait_for_workers(1, Duration::from_secs(60)),
    )
    .unwrap_err();
    assert!(
        matches!(error, Error::TooFewWorkers { have: 0, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("were lost"), "{error}");
}

#[test]
fn recv_with_workers_left_keeps_waiting() {
    // One of two workers killed: the other may still send, so a timed wait times out.
    let h = Harness::start(Backend::Local, 2);
    let vm = h.vm();
    let pids = worker_pids(&vm);
    let _guard = PidsGuard(pids.clone());
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    crate::harness::wait_until("one worker is lost", || {
        // Losses are noticed while receiving.
        assert!(matches!(vm.try_recv(), Ok(None)));
        vm.slots() == 2
    });
    assert!(
        matches!(vm.recv_timeout(Duration::from_millis(200)), Ok(None)),
        "a worker is left"
    );
}

#[test]
fn tcp_keeps_waiting_with_no_worker_left() {
    // TCP workers may connect at any time: no worker left is not "nothing can arrive".
    let h = Harness::start(Backend::Tcp, 1);
    let vm = h.vm();
    let pids = worker_pids(&vm);
    let _guard = PidsGuard(pids.clone());
    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    crate::harness::wait_until("the worker is lost", || {
        assert!(matches!(
            vm.try_recv(),
            Ok(None) | Ok(Some(Message::HostDelete { .. }))
        ));
        vm.slots() == 1
    });
    assert!(
        matches!(vm.recv_timeout(Duration::from_millis(200)), Ok(None)),
        "a worker may still connect"
    );
    let error = h
        .runtime()
        .wait_for_workers(1, Duration::from_millis(200))
        .unwrap_err();
    assert!(
        matches!(error, Error::WorkersMissing { joined: 0, .. }),
        "{error:?}"
    );
}

/// A TCP worker whose host vanishes (here its network link is cut: no FIN, no reset, as
/// when a host loses power) is lost after the peer timeout, its task fails saying why,
/// and the spawner does not wait for it for ever.
#[test]
fn a_tcp_worker_whose_host_vanishes_is_lost_after_the_peer_timeout() {
    let Some(netns) = parvm_test_support::netns::NetNs::make("pvdd") else {
        eprintln!("SKIPPING: cannot make a network namespace (needs root and `ip`)");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let (local, far_local) = (scratch.path().join("local"), scratch.path().join("far"));
    for dir in [&local, &far_local] {
        std::fs::create_dir(dir).unwrap();
    }
    let secret_file = scratch.path().join("secret");
    let secret = parvm_transport::tcp::Secret::load_or_create(&secret_file).unwrap();
    let runtime = parvm_vm::Runtime::builder(crate::tasks::tasks())
        .config(crate::harness::config(&local, &local, "spawner"))
        .backend(parvm_vm::Backend::Tcp(
            parvm_vm::TcpSpawner::new()
                .listen((netns.host_addr, 0).into())
                .secret(secret)
                .peer_timeout(Duration::from_secs(2)),
        ))
        .start()
        .unwrap();
    let addr = runtime.tcp_addr().unwrap();
    let mut worker =
        crate::harness::far_worker_in(&netns.name, addr, &secret_file, &far_local, &far_local)
            .env("PARVM_PEER_TIMEOUT", "2")
            .spawn()
            .unwrap();
    let _worker = PidsGuard(vec![i32::try_from(worker.id()).unwrap()]);
    runtime
        .wait_for_workers(1, crate::harness::DEADLINE)
        .unwrap();
    let vm = runtime.vm().build().unwrap();
    let ids = vm.spawn(Spawn::task("sleep", &60_000u64)).unwrap();
    assert_eq!(ids.len(), 1);
    // Cut once the task sleeps (`ip netns exec` runs the worker under its own pid), so no
    // bytes are on their way: the connection is idle, as while a long task runs.
    let main_thread = format!("/proc/{0}/task/{0}/wchan", worker.id());
    crate::harness::wait_until("the task sleeps on the worker", || {
        std::fs::read_to_string(&main_thread).is_ok_and(|wchan| wchan.contains("nanosleep"))
    });
    netns.cut();
    let cut = Instant::now();
    let status = loop {
        match vm.recv_timeout(AT_ONCE).unwrap() {
            Some(Message::TaskExit { task, status }) if task == ids[0] => break status,
            Some(_) => {}
            None => panic!("no end of the task within {AT_ONCE:?} of the cut"),
        }
    };
    let lost_after = cut.elapsed();
    assert!(
        matches!(&status, ExitStatus::Failed { reason }
            if reason.contains("did not answer within the peer timeout (PARVM_PEER_TIMEOUT)")),
        "{status:?}"
    );
    // The spawner's 2 s, not the kernel's hours.
    assert!(lost_after < AT_ONCE, "{lost_after:?}");
    // The worker, cut off from its spawner, gives up on it too and leaves.
    let deadline = Instant::now() + AT_ONCE;
    while worker.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the cut-off worker still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(vm);
    runtime.finalize().unwrap();
}

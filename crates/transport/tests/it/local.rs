//! The local backend, with real worker processes (the echo binary).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_transport::local::{LocalOptions, LocalTransport, SimulatedHost};
use parvm_transport::{Error, Event, Transport, Wait};

use crate::{ECHO, KillOnDrop, ask, ask_text, next_event, process_gone, wait_until};

fn echo(options: LocalOptions) -> LocalOptions {
    options.program(ECHO, Vec::<OsString>::new())
}

fn launch(workers: usize) -> LocalTransport {
    LocalTransport::launch(echo(LocalOptions::new(workers))).unwrap()
}

fn lost_reason(transport: &dyn Transport, rank: u32) -> String {
    match next_event(transport) {
        Event::PeerLost { rank: lost, reason } if lost == rank => reason,
        other => panic!("expected rank {rank} lost, got {other:?}"),
    }
}

#[test]
fn launch_and_ping_pong() {
    let vm = launch(3);
    assert_eq!(vm.rank(), 0);
    assert_eq!(vm.backend(), "local");
    let ranks: Vec<u32> = vm.peers().iter().map(|p| p.rank).collect();
    assert_eq!(ranks, [0, 1, 2, 3]);
    for rank in 1..=3 {
        for round in 0..10 {
            let text = format!("ping {rank} {round}");
            assert_eq!(ask_text(&vm, rank, &text), text);
        }
    }
    // Several messages in flight at once arrive in order.
    for i in 0..50u8 {
        vm.send(2, &[i]).unwrap();
    }
    for i in 0..50u8 {
        assert_eq!(
            next_event(&vm),
            Event::Message {
                from: 2,
                payload: vec![i]
            }
        );
    }
}

#[test]
fn sizes_from_empty_to_ten_mib() {
    let vm = launch(1);
    for size in [
        0usize,
        1,
        11,
        12,
        13,
        1024,
        64 * 1024 + 1,
        1 << 20,
        10 << 20,
    ] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        assert!(
            ask(&vm, 1, &payload) == payload,
            "size {size} came back changed"
        );
    }
}

#[test]
fn waiting_with_nothing_to_receive() {
    let vm = launch(1);
    assert_eq!(vm.recv(Wait::NoWait).unwrap(), None);
    let start = Instant::now();
    assert_eq!(vm.recv(Wait::For(Duration::from_millis(50))).unwrap(), None);
    assert!(start.elapsed() >= Duration::from_millis(50));
}

#[test]
fn unknown_rank_and_worker_to_worker() {
    let vm = launch(2);
    assert!(matches!(
        vm.send(7, b"x"),
        Err(Error::UnknownRank { rank: 7, .. })
    ));
    let answer = ask_text(&vm, 1, "!sendto:2");
    assert!(answer.contains("rank 1 cannot send to rank 2"), "{answer}");
    // Sending to the spawner works: the "x" arrives, then the report.
    assert_eq!(ask_text(&vm, 1, "!sendto:0"), "x");
    assert_eq!(
        next_event(&vm),
        Event::Message {
            from: 1,
            payload: b"sent".to_vec()
        }
    );
}

#[test]
fn killed_worker_is_lost_with_its_signal() {
    let vm = launch(2);
    let pid = vm.worker_pids()[0].1;
    assert_eq!(ask_text(&vm, 1, "!pid"), pid.to_string());
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let reason = lost_reason(&vm, 1);
    assert!(reason.contains("SIGKILL"), "{reason}");
    assert!(
        reason.contains("rank 1") && reason.contains(&pid.to_string()),
        "{reason}"
    );
    assert!(matches!(
        vm.send(1, b"x"),
        Err(Error::PeerLost { rank: 1, .. })
    ));
    let ranks: Vec<u32> = vm.peers().iter().map(|p| p.rank).collect();
    assert_eq!(ranks, [0, 2]);
    // The reader reaped it: no zombie is left.
    assert!(process_gone(pid));
    assert_eq!(ask_text(&vm, 2, "still here"), "still here");
}

/// A worker the spawner gives up (one stopped with SIGSTOP, which answers nothing) is
/// lost with the spawner's reason, and continued, so that it sees its spawner gone and
/// leaves instead of staying behind, stopped.
#[test]
fn a_stopped_worker_given_up_is_lost_with_the_reason_and_continued_to_leave() {
    let vm = launch(2);
    assert_eq!(
        vm.peer_timeout(),
        Some(parvm_transport::tcp::DEFAULT_PEER_TIMEOUT)
    );
    let pid = vm.worker_pids()[0].1;
    assert_eq!(ask_text(&vm, 1, "!pid"), pid.to_string());
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    assert!(vm.give_up(1, "it did not confirm a stop"));
    assert!(!vm.give_up(1, "twice"), "a worker is given up once");
    let reason = lost_reason(&vm, 1);
    assert!(
        reason.contains("it did not confirm a stop") && reason.contains(&pid.to_string()),
        "{reason}"
    );
    wait_until("the given-up worker leaves", || process_gone(pid));
    assert_eq!(ask_text(&vm, 2, "still here"), "still here");
    let never =
        LocalTransport::launch(echo(LocalOptions::new(1)).peer_timeout(Duration::ZERO)).unwrap();
    assert_eq!(never.peer_timeout(), None, "zero: wait for ever");
}

#[test]
fn exiting_worker_is_lost_with_its_status() {
    let vm = launch(1);
    vm.send(1, b"!exit:3").unwrap();
    let reason = lost_reason(&vm, 1);
    assert!(reason.contains("exited with status 3"), "{reason}");
}

#[test]
fn dropping_the_spawner_ends_the_workers() {
    let vm = LocalTransport::launch(
        echo(LocalOptions::new(3)).shutdown_grace(Duration::from_millis(300)),
    )
    .unwrap();
    let pids: Vec<u32> = vm.worker_pids().iter().map(|&(_, pid)| pid).collect();
    let _guard = KillOnDrop(pids.clone());
    // One worker stops reading: it must be killed after the grace period.
    vm.send(3, b"!hang").unwrap();
    let start = Instant::now();
    drop(vm);
    assert!(start.elapsed() < Duration::from_secs(5));
    for pid in pids {
        assert!(process_gone(pid), "worker pid {pid} survived the spawner");
    }
}

#[test]
fn killing_the_spawner_process_ends_the_workers() {
    let mut spawner = Command::new(ECHO)
        .env("PARVM_ECHO_SPAWNER", "2")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let spawner_pid = spawner.id();
    let mut guard = KillOnDrop(vec![spawner_pid]);
    let mut line = String::new();
    BufReader::new(spawner.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    guard.0.extend(&pids);
    spawner.kill().unwrap();
    spawner.wait().unwrap();
    for pid in pids {
        wait_until(&format!("worker pid {pid} exits"), || process_gone(pid));
    }
}

#[test]
fn simulated_hosts_get_their_name_and_env() {
    let hosts = vec![
        SimulatedHost {
            name: "alpha".into(),
            workers: 2,
            env: vec![("PARALLEL_MIRRORED_STORAGE".into(), "/a".into())],
        },
        SimulatedHost {
            name: "beta".into(),
            workers: 1,
            env: vec![("PARALLEL_MIRRORED_STORAGE".into(), "/b".into())],
        },
    ];
    let vm = LocalTransport::launch(echo(LocalOptions::hosts(hosts)).spawner_host("home")).unwrap();
    let peers: Vec<(u32, String)> = vm.peers().into_iter().map(|p| (p.rank, p.host)).collect();
    assert_eq!(
        peers,
        [
            (0, "home".to_string()),
            (1, "alpha".into()),
            (2, "alpha".into()),
            (3, "beta".into())
        ]
    );
    assert_eq!(vm.host(), "home");
    for (rank, host, storage) in [(1, "alpha", "/a"), (2, "alpha", "/a"), (3, "beta", "/b")] {
        assert_eq!(ask_text(&vm, rank, "!host"), host);
        assert_eq!(ask_text(&vm, rank, "!env:PARVM_HOSTNAME"), host);
        assert_eq!(
            ask_text(&vm, rank, "!env:PARALLEL_MIRRORED_STORAGE"),
            storage
        );
    }
}

#[test]
fn worker_that_exits_before_connecting_is_named() {
    let err = LocalTransport::launch(LocalOptions::new(2).program("/bin/sh", ["-c", "exit 4"]))
        .unwrap_err();
    let Error::WorkerExited { rank, status, .. } = &err else {
        panic!("{err}");
    };
    assert!(*rank == 1 || *rank == 2);
    assert_eq!(status, "exited with status 4");
    assert!(err.to_string().contains("before it connected"), "{err}");
}

#[test]
fn worker_that_never_connects_times_out() {
    let start = Instant::now();
    let err = LocalTransport::launch(
        LocalOptions::new(2)
            .program("/bin/sleep", ["30"])
            .connect_timeout(Duration::from_millis(300))
            .shutdown_grace(Duration::ZERO),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::WorkerTimeout { ranks, .. } if ranks == &[1, 2]),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn missing_program_is_named() {
    let err = LocalTransport::launch(
        LocalOptions::new(1).program("/nonexistent/parvm-worker", Vec::<OsString>::new()),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/parvm-worker"),
        "{err}"
    );
}

#[test]
fn capabilities_are_those_of_child_processes() {
    let vm = launch(1);
    // The VM decides by these, not by the backend's name: local workers all start with
    // the transport, are its children, and a dead one is reported.
    assert!(!vm.workers_can_join());
    assert!(vm.workers_are_children());
    assert!(vm.reports_dead_peers());
}

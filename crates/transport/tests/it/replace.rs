//! Replacement workers on the local backend: a dead worker's slot gets a new process on
//! the same simulated host, up to a limit, and nothing is left behind.

use std::ffi::OsString;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parvm_transport::local::{LocalOptions, LocalTransport, SimulatedHost};
use parvm_transport::{Event, Peer, Transport, Wait};

use crate::{ECHO, KillOnDrop, PATIENCE, ask_text, next_event, process_gone, wait_until};

/// Two simulated hosts of one worker each, with their own `HOST_MARK` and a fate file
/// (see the echo program) in `dir`.
fn launch(dir: &std::path::Path, replacements: u32) -> LocalTransport {
    let host = |name: &str| SimulatedHost {
        name: name.into(),
        workers: 1,
        env: vec![
            ("HOST_MARK".into(), format!("mark-{name}").into()),
            ("PARVM_ECHO_FATE".into(), dir.join(name).into_os_string()),
        ],
    };
    LocalTransport::launch(
        LocalOptions::hosts(vec![host("alpha"), host("beta")])
            .program(ECHO, Vec::<OsString>::new())
            .replacements(replacements),
    )
    .unwrap()
}

fn guard(vm: &LocalTransport) -> KillOnDrop {
    KillOnDrop(vm.worker_pids().iter().map(|&(_, pid)| pid).collect())
}

fn pid_of(vm: &LocalTransport, rank: u32) -> u32 {
    vm.worker_pids()
        .iter()
        .find(|&&(r, _)| r == rank)
        .map(|&(_, pid)| pid)
        .unwrap()
}

/// The next `n` events, in the order they came.
fn events(vm: &LocalTransport, n: usize) -> Vec<Event> {
    (0..n).map(|_| next_event(vm)).collect()
}

#[test]
fn a_killed_worker_is_replaced_on_its_host_with_its_variables() {
    let dir = tempfile::tempdir().unwrap();
    let vm = launch(dir.path(), 2);
    let _guard = guard(&vm);
    assert!(!vm.workers_can_join(), "no replacement is on its way");
    let pid = pid_of(&vm, 2);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let got = events(&vm, 2);
    assert!(
        got.iter().any(|e| matches!(e, Event::PeerLost { rank: 2, reason } if reason.contains("SIGKILL") && reason.contains("replacement"))),
        "{got:?}"
    );
    let joined = got
        .iter()
        .find_map(|e| match e {
            Event::PeerJoined(peer) => Some(peer.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no replacement joined: {got:?}"));
    assert_eq!(
        joined,
        Peer {
            rank: 3,
            host: "beta".into()
        }
    );
    let _guard = guard(&vm);
    assert_eq!(ask_text(&vm, 3, "!host"), "beta");
    assert_eq!(ask_text(&vm, 3, "!env:HOST_MARK"), "mark-beta");
    assert_eq!(vm.replaced_workers(), 1);
    assert!(!vm.workers_can_join());
    let ranks: Vec<u32> = vm.peers().iter().map(|p| p.rank).collect();
    assert_eq!(ranks, [0, 1, 3]);
    assert!(process_gone(pid));
}

#[test]
fn a_worker_that_exits_with_status_0_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let vm = launch(dir.path(), 2);
    let _guard = guard(&vm);
    vm.send(1, b"!exit:0").unwrap();
    assert!(matches!(next_event(&vm), Event::PeerLost { rank: 1, .. }));
    assert!(!vm.workers_can_join());
    assert!(
        vm.recv(Wait::For(Duration::from_millis(300)))
            .unwrap()
            .is_none()
    );
    assert_eq!(vm.replaced_workers(), 0);
}

#[test]
fn a_worker_told_to_stop_by_a_signal_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let vm = launch(dir.path(), 2);
    let _guard = guard(&vm);
    let pid = pid_of(&vm, 1);
    // Not SIGINT: tests run from a script's background job start their workers ignoring it.
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let lost = next_event(&vm);
    assert!(
        matches!(&lost, Event::PeerLost { rank: 1, reason } if reason.contains("not replaced")),
        "{lost:?}"
    );
    assert!(!vm.workers_can_join());
    assert!(
        vm.recv(Wait::For(Duration::from_millis(300)))
            .unwrap()
            .is_none()
    );
    assert_eq!(vm.worker_pids().len(), 2, "no replacement was started");
}

#[test]
fn a_crash_loop_stops_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let vm = launch(dir.path(), 3);
    let _guard = guard(&vm);
    // From now on every new worker on alpha dies before it joins.
    std::fs::write(dir.path().join("alpha"), "die").unwrap();
    vm.send(1, b"!exit:4").unwrap();
    // The loss, then one loss per replacement given up: the last of three attempts.
    let lost = next_event(&vm);
    assert!(
        matches!(&lost, Event::PeerLost { rank: 1, reason } if reason.contains("status 4")),
        "{lost:?}"
    );
    let given_up = next_event(&vm);
    assert!(
        matches!(&given_up, Event::PeerLost { rank, reason } if *rank > 2 && reason.contains("never joined")),
        "{given_up:?}"
    );
    assert!(!vm.workers_can_join(), "the limit is reached");
    assert_eq!(vm.replaced_workers(), 0);
    // Three attempts were started, and every one is gone, as is the first worker.
    let pids = vm.worker_pids();
    assert_eq!(pids.len(), 2 + 3, "{pids:?}");
    for (_, pid) in pids.into_iter().filter(|&(rank, _)| rank != 2) {
        wait_until(&format!("worker pid {pid} is reaped"), || process_gone(pid));
    }
    // Beta is untouched.
    assert_eq!(ask_text(&vm, 2, "!host"), "beta");
}

#[test]
fn a_replacement_on_its_way_is_reaped_with_its_socket_when_the_spawner_goes() {
    let dir = tempfile::tempdir().unwrap();
    let vm = launch(dir.path(), 1);
    let mut guard = guard(&vm);
    // The replacement starts and never connects.
    std::fs::write(dir.path().join("alpha"), "hang").unwrap();
    vm.send(1, b"!exit:4").unwrap();
    assert!(matches!(next_event(&vm), Event::PeerLost { rank: 1, .. }));
    assert!(vm.workers_can_join(), "a replacement is on its way");
    wait_until("the replacement is started", || vm.worker_pids().len() == 3);
    let (_, pid) = vm.worker_pids()[2];
    guard.0.push(pid);
    // Its socket, from the variables it was started with.
    let mut socket = None;
    wait_until("the replacement's environment is readable", || {
        socket = std::fs::read(format!("/proc/{pid}/environ"))
            .ok()
            .and_then(|env| {
                env.split(|&b| b == 0)
                    .find_map(|var| var.strip_prefix(b"PARVM_LOCAL_SOCKET=").map(<[u8]>::to_vec))
            });
        socket.is_some()
    });
    let socket = std::path::PathBuf::from(String::from_utf8(socket.unwrap()).unwrap());
    assert!(socket.exists(), "{}", socket.display());
    let started = std::time::Instant::now();
    drop(vm);
    assert!(started.elapsed() < PATIENCE);
    assert!(process_gone(pid), "the replacement outlived the spawner");
    assert!(!socket.exists(), "{} is left", socket.display());
    assert!(
        !socket.parent().unwrap().exists(),
        "the socket folder is left"
    );
}

/// A worker given up for not answering is sent SIGCONT and first stops its command, which
/// can take longer than the second the loss waits for its exit status: it is replaced once
/// it exits, as a worker that died at once is; one that exits 0 is not, and then a lost
/// rank says that none comes.
#[test]
fn a_given_up_worker_that_exits_late_is_replaced_then() {
    let dir = tempfile::tempdir().unwrap();
    let vm = launch(dir.path(), 1);
    let _guard = guard(&vm);
    assert_eq!(ask_text(&vm, 1, "!exit-late:1500:3"), "armed");
    let pid = pid_of(&vm, 1);
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    assert!(vm.give_up(1, "it did not answer a stop"));
    let got = events(&vm, 2);
    assert!(
        got.iter().any(|e| matches!(e, Event::PeerLost { rank: 1, reason } if reason.contains("still running") && reason.contains("replaced once it exits"))),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::PeerJoined(Peer { rank: 3, host }) if host == "alpha")),
        "no replacement joined: {got:?}"
    );
    let _guard = guard(&vm);
    assert_eq!(ask_text(&vm, 3, "!host"), "alpha");
    assert!(process_gone(pid));
    // Exiting 0 late: not replaced, and the spawner learns that none comes.
    assert_eq!(ask_text(&vm, 2, "!exit-late:1500:0"), "armed");
    kill(Pid::from_raw(pid_of(&vm, 2) as i32), Signal::SIGSTOP).unwrap();
    assert!(vm.give_up(2, "it did not answer a stop"));
    assert!(matches!(next_event(&vm), Event::PeerLost { rank: 2, .. }));
    assert!(vm.workers_can_join(), "its exit is not known yet");
    assert!(matches!(next_event(&vm), Event::PeerLost { rank: 4, .. }));
    assert!(!vm.workers_can_join());
    assert_eq!(vm.replaced_workers(), 1);
}

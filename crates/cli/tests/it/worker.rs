//! `parvm worker` against a TCP spawner: retries of refused handshakes, and its errors.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parvm_transport::tcp::{Secret, TcpOptions, TcpTransport};
use parvm_transport::{Event, Transport, Wait};

const PATIENCE: Duration = Duration::from_secs(30);

/// Kills the worker when the test ends, also when it fails.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(args: &[&str], secret_file: &Path, local: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parvm"));
    command
        .arg("worker")
        .args(args)
        .arg("--secret-file")
        .arg(secret_file)
        .env("PARALLEL_LOCAL_STORAGE", local)
        .env("PARALLEL_MIRRORED_STORAGE", local)
        .env("PARVM_HOSTNAME", "cliworker")
        .env_remove("PARVM_CONNECT")
        .env_remove("PARVM_CONNECT_WAIT")
        .env_remove("PARVM_MAX_FRAME")
        .env_remove("PARVM_HANDSHAKE_TIMEOUT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Passes each connection to `route(n)` (n counts from 0), byte for byte both ways.
fn doorman(route: impl Fn(usize) -> SocketAddr + Send + 'static) -> (SocketAddr, Arc<AtomicUsize>) {
    let door = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = door.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for conn in door.incoming() {
            let Ok(conn) = conn else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let Ok(upstream) = TcpStream::connect(route(n)) else {
                continue;
            };
            for (mut from, mut to) in [
                (conn.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, conn),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (addr, seen)
}

#[test]
fn wait_retries_refused_handshakes_until_the_right_spawner_answers() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    let secret = Secret::load_or_create(&secret_file).unwrap();
    // The first two tries reach a spawner with another secret, which refuses them.
    let wrong = TcpTransport::listen(TcpOptions::new(Secret::random())).unwrap();
    let right = TcpTransport::listen(TcpOptions::new(secret).host("hub")).unwrap();
    let (wrong_addr, right_addr) = (wrong.local_addr().unwrap(), right.local_addr().unwrap());
    let (door, seen) = doorman(move |n| if n < 2 { wrong_addr } else { right_addr });
    let start = Instant::now();
    let mut child = Worker(
        worker(
            &["--connect", &door.to_string(), "--wait", "30"],
            &secret_file,
            dir.path(),
        )
        .spawn()
        .unwrap(),
    );
    let peer = match right.recv(Wait::For(PATIENCE)).unwrap() {
        Some(Event::PeerJoined(peer)) => peer,
        other => panic!("the worker did not join: {other:?}"),
    };
    assert_eq!(peer.host, "cliworker");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert!(start.elapsed() < PATIENCE);
    drop(right);
    let status = child.0.wait().unwrap();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("does not know this secret"), "{stderr}");
    assert!(stderr.contains("joined the spawner"), "{stderr}");
    // This spawner went away without ending a run, which the worker says (a parvm
    // spawner that ends its run dismisses its workers, which then exit with 0).
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("before it ended its run") && stderr.contains("this worker leaves"),
        "{stderr}"
    );
    drop(wrong);
}

#[test]
fn a_wrong_secret_without_wait_names_the_spawner_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    Secret::load_or_create(&secret_file).unwrap();
    let spawner = TcpTransport::listen(TcpOptions::new(Secret::random())).unwrap();
    let addr = spawner.local_addr().unwrap().to_string();
    let output = worker(&["--connect", &addr], &secret_file, dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&addr)
            && stderr.contains("secret file")
            && stderr.contains("PARVM_SECRET_FILE"),
        "{stderr}"
    );
    assert_eq!(spawner.size(), 1);
}

/// The spawner's side of a wrong secret: the worker checks the spawner's proof first and
/// closes, and the spawner's warning says that is what a worker with another secret does.
#[test]
fn the_spawner_says_a_worker_with_another_secret_closed_after_its_proof() {
    let sweep = crate::run::Sweep::new();
    let run = sweep.start_tcp(&["true", ":::", "a"], Stdio::null());
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-secret");
    Secret::load_or_create(&other).unwrap();
    let output = worker(&["--connect", &run.addr], &other, dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let deadline = Instant::now() + PATIENCE;
    let warned = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = run
            .said
            .recv_timeout(left)
            .expect("the spawner warned of no dropped connection");
        if line.contains("dropped tcp connection") {
            break line;
        }
    };
    assert!(
        warned.contains("after this spawner's proof")
            && warned.contains("secret file differs")
            && warned.contains("give that worker the spawner's secret file"),
        "{warned}"
    );
}

#[test]
fn bad_limits_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    Secret::load_or_create(&secret_file).unwrap();
    for (args, word) in [
        (&["--max-frame", "huge"][..], "--max-frame"),
        (&["--max-frame", "100"][..], "--max-frame"),
        (&["--handshake-timeout", "0"][..], "--handshake-timeout"),
        (&["--peer-timeout=-1"][..], "--peer-timeout"),
        (&["--wait=-3"][..], "--wait"),
    ] {
        let mut all = vec!["--connect", "127.0.0.1:1"];
        all.extend_from_slice(args);
        let output = worker(&all, &secret_file, dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(word), "{args:?}: {stderr}");
    }
}

/// The file whose existence makes the next try of [`hanging_first_try`] end at once.
fn second_try(sweep: &crate::run::Sweep) -> std::path::PathBuf {
    sweep.shared.join("second-try")
}

/// A case that, on its first try only, says it started and then waits a minute; a second
/// try (once [`second_try`] exists) ends at once. Its first try's shell writes its pid to
/// `pids/{}`.
fn hanging_first_try(sweep: &crate::run::Sweep) -> String {
    let shared = sweep.shared.display();
    std::fs::create_dir_all(sweep.shared.join("pids")).unwrap();
    format!(
        "test -e {} || {{ echo $$ > {shared}/pids/{{}}; sleep 60; }}; echo done {{}}",
        second_try(sweep).display()
    )
}

/// The pids the first tries of `cases` wrote, once each has started.
fn first_try_pids(sweep: &crate::run::Sweep, cases: &[&str]) -> Vec<i32> {
    let pid_file = |case: &str| sweep.shared.join("pids").join(case);
    crate::run::eventually("every case started", || {
        cases.iter().all(|case| {
            std::fs::read_to_string(pid_file(case)).is_ok_and(|text| text.ends_with('\n'))
        })
    });
    cases
        .iter()
        .map(|case| {
            std::fs::read_to_string(pid_file(case))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

fn is_running(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// `parvm worker ARGS` on host `first`, joining the spawner at `addr`, its stderr piped.
fn first_worker(sweep: &crate::run::Sweep, addr: &str, args: &[&str]) -> crate::run::ChildGuard {
    crate::run::ChildGuard(
        sweep
            .worker(addr)
            .args(args)
            .env("PARVM_HOSTNAME", "first")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// What the workers that left say: on host `first`, for SIGTERM, giving a case back.
const LEFT_ON_SIGTERM: [&str; 2] = [
    "on host `first`",
    "it said: SIGTERM asked it to leave; it stopped task",
];

/// Sends SIGTERM to `worker` alone `times` times, as `kill PID` does; what it said on its
/// piped stderr until it ended, which must have been by SIGTERM.
fn terminate(worker: &mut Child, times: usize) -> String {
    use std::os::unix::process::ExitStatusExt;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(worker.id()).unwrap());
    for _ in 0..times {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }
    let mut said = String::new();
    worker
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    let status = worker.wait().unwrap();
    assert_eq!(status.signal(), Some(15), "{status:?}: {said}");
    said
}

#[test]
fn a_worker_sent_sigterm_gives_its_case_back_removes_its_folder_and_ends_by_the_signal() {
    let sweep = crate::run::Sweep::new();
    let case = hanging_first_try(&sweep);
    let run = sweep.start_tcp(&[&case, ":::", "a"], Stdio::piped());
    let mut first = first_worker(&sweep, &run.addr, &[]);
    let pids = first_try_pids(&sweep, &["a"]);
    let said = terminate(&mut first.0, 1);
    assert!(
        said.contains("leaving on SIGTERM: stopped task 1:1 (the spawner runs it again on another worker) and removed the task folders"),
        "{said}"
    );
    // The command was stopped before the worker ended, and no task folder is left.
    assert!(!is_running(pids[0]), "the first try still runs: {said}");
    sweep.assert_no_task_folder_left();
    run.finish_with_a_second_worker(&sweep, &second_try(&sweep), &["a"], &LEFT_ON_SIGTERM);
}

#[test]
fn a_worker_with_slots_passes_a_signal_on_and_every_slot_leaves() {
    let sweep = crate::run::Sweep::new();
    let case = hanging_first_try(&sweep);
    let run = sweep.start_tcp(&[&case, ":::", "a", "b"], Stdio::piped());
    let mut first = first_worker(&sweep, &run.addr, &["--slots", "2"]);
    let pids = first_try_pids(&sweep, &["a", "b"]);
    // To the parent alone, as `kill PID` sends it; twice, as a job's processes may all
    // get it: one request, not a second that ends them at once.
    let said = terminate(&mut first.0, 2);
    assert_eq!(
        said.matches("leaving on SIGTERM: stopped task").count(),
        2,
        "{said}"
    );
    assert!(pids.iter().all(|&pid| !is_running(pid)), "{said}");
    sweep.assert_no_task_folder_left();
    run.finish_with_a_second_worker(&sweep, &second_try(&sweep), &["a", "b"], &LEFT_ON_SIGTERM);
}

/// A worker whose command does not let itself be stopped (it ignores SIGTERM, so its
/// supervisor waits its 2 s grace before SIGKILL) ends at once on a second SIGTERM that
/// comes a second or more after the first, without waiting for the command.
#[test]
fn a_second_sigterm_a_second_later_ends_a_worker_at_once() {
    use std::os::unix::process::ExitStatusExt;
    let sweep = crate::run::Sweep::new();
    let shared = sweep.shared.display();
    std::fs::create_dir_all(sweep.shared.join("pids")).unwrap();
    let case = format!(
        "test -e {} || {{ trap '' TERM; echo $$ > {shared}/pids/{{}}; sleep 60; }}; echo done {{}}",
        second_try(&sweep).display()
    );
    let run = sweep.start_tcp(&[&case, ":::", "a"], Stdio::piped());
    let mut first = first_worker(&sweep, &run.addr, &[]);
    first_try_pids(&sweep, &["a"]);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(first.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // The rule is about elapsed time: the second signal must come after `REPEAT_AFTER`.
    std::thread::sleep(parvm_vm::leave::REPEAT_AFTER + Duration::from_millis(200));
    let second = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut said = String::new();
    first
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    let status = first.0.wait().unwrap();
    let took = second.elapsed();
    assert_eq!(status.signal(), Some(15), "{status:?}: {said}");
    // Ended at once: not after the command's grace, and without leaving in order.
    assert!(took < Duration::from_millis(700), "{took:?}: {said}");
    assert!(!said.contains("leaving on SIGTERM"), "{said}");
    run.finish_with_a_second_worker(
        &sweep,
        &second_try(&sweep),
        &["a"],
        &["on host `first`", "closed its connection"],
    );
}

/// Local storage whose per-user folder cannot be used (here a symlink planted in its
/// place, which parvm refuses for root too) would fail every case: `parvm run` says so
/// once and runs none, and `parvm worker` says so before it joins any spawner.
#[test]
fn unusable_local_storage_is_said_once_before_any_case_runs_or_any_worker_joins() {
    let sweep = crate::run::Sweep::new();
    let config = Command::new(env!("CARGO_BIN_EXE_parvm"))
        .args(["--json", "config"])
        .env("PARALLEL_LOCAL_STORAGE", &sweep.local)
        .env("PARALLEL_MIRRORED_STORAGE", &sweep.shared)
        .output()
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
    let user_folder = config["user_folder"].as_str().unwrap().to_owned();
    std::os::unix::fs::symlink(&sweep.shared, &user_folder).unwrap();
    let refused = format!("per-user storage folder `{user_folder}` is a symlink");

    let out = sweep
        .command(&["echo {}", ":::", "a", "b", "c"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(out.stdout.is_empty(), "{stderr}");
    assert!(
        stderr.starts_with("error: no case can run here") && stderr.contains(&refused),
        "{stderr}"
    );
    assert!(!stderr.contains("case 1"), "{stderr}");

    for slots in ["1", "3"] {
        let out = sweep
            .worker("127.0.0.1:1")
            .args(["--slots", slots])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("this worker cannot run tasks in task folders")
                && stderr.contains(&refused),
            "{stderr}"
        );
    }
    // The planted link was left alone, and what it points at too.
    assert!(Path::new(&user_folder).is_symlink());
    assert!(sweep.shared.is_dir());
}

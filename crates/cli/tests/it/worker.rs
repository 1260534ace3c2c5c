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

#[test]
fn bad_limits_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    Secret::load_or_create(&secret_file).unwrap();
    for (args, word) in [
        (&["--max-frame", "huge"][..], "--max-frame"),
        (&["--max-frame", "100"][..], "--max-frame"),
        (&["--handshake-timeout", "0"][..], "--handshake-timeout"),
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

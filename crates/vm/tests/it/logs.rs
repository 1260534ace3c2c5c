//! Logs: `PARVM_LOG=info` shows the spawner's and the workers' lines on the spawner's
//! stderr; colour codes only when that is a terminal, and never with `NO_COLOR`.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DEADLINE: Duration = Duration::from_secs(30);
const ESC: &str = "\u{1b}[";

/// Kills the spawner (and so its workers) when dropped, if it still runs.
struct Kill(i32);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// The test program as a spawner running the `print` scenario with one local worker and
/// `PARVM_LOG=info`; `NO_COLOR` set when `no_color`.
fn spawner(storage: &tempfile::TempDir, no_color: bool) -> Command {
    let local = storage.path().join("local");
    let shared = storage.path().join("shared");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"));
    command
        .arg("print")
        .env("PARALLEL_LOCAL_STORAGE", &local)
        .env("PARALLEL_MIRRORED_STORAGE", &shared)
        .env("PARVM_WORKERS", "1")
        .env("PARVM_LOG", "info")
        .env_remove("PARVM_TRANSPORT")
        .env_remove("PARVM_LOCAL_SOCKET")
        .env_remove("PARVM_CONNECT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if no_color {
        command.env("NO_COLOR", "1");
    }
    command
}

/// Runs `command` with stderr on `stderr`, reading `reader` to its end on another thread;
/// returns what was read, failing the test after the deadline.
fn run(mut command: Command, stderr: Stdio, mut reader: impl Read + Send + 'static) -> String {
    let mut child = command.stderr(stderr).spawn().expect("start the spawner");
    let _kill = Kill(i32::try_from(child.id()).unwrap());
    // The parent's copies of the write ends must be gone for the reader to see the end.
    drop(command);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        // A pseudo-terminal reports EIO once the last writer is gone: that is its end.
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    let text = rx
        .recv_timeout(DEADLINE)
        .expect("the spawner's stderr ends within the deadline");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {text}");
    text
}

#[test]
fn info_shows_spawner_and_worker_lines_without_colour_in_a_pipe() {
    let storage = tempfile::tempdir().unwrap();
    let mut command = spawner(&storage, false);
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the spawner");
    let _kill = Kill(i32::try_from(child.id()).unwrap());
    let pipe = child.stderr.take().unwrap();
    let text = run_reader(pipe);
    assert!(child.wait().unwrap().success(), "{text}");
    assert!(text.contains("INFO spawner ready"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("[w1@") && l.contains("INFO worker ready")),
        "the worker's log line reaches the spawner's stderr: {text}"
    );
    assert!(!text.contains(ESC), "no colour codes in a pipe: {text:?}");
}

fn run_reader(mut reader: impl Read + Send + 'static) -> String {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx.recv_timeout(DEADLINE)
        .expect("the spawner's stderr ends within the deadline")
}

/// Runs the spawner with stderr on a pseudo-terminal and returns what it wrote there.
fn on_a_terminal(no_color: bool) -> String {
    let storage = tempfile::tempdir().unwrap();
    let pty = nix::pty::openpty(None, None).expect("a pseudo-terminal");
    let master = std::fs::File::from(pty.master);
    let slave: OwnedFd = pty.slave;
    run(spawner(&storage, no_color), Stdio::from(slave), master)
}

#[test]
fn colour_on_a_terminal_unless_no_color() {
    let coloured = on_a_terminal(false);
    assert!(coloured.contains("spawner ready"), "{coloured}");
    assert!(
        coloured.contains(ESC),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = on_a_terminal(true);
    assert!(plain.contains("spawner ready"), "{plain}");
    assert!(!plain.contains(ESC), "NO_COLOR turns colour off: {plain:?}");
}

//! Forwarded environment: `RuntimeBuilder::forward_env` and `PARVM_FORWARD_ENV` reach
//! registered tasks and commands on the local, TCP and (with the `mpi` feature) MPI
//! transports. TCP workers and MPI ranks are started without the variables, so only
//! forwarding can give them.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

/// Kills and reaps a process when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn storage(dir: &Path, command: &mut Command) {
    let local = dir.join("local");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    command
        .env("PARALLEL_LOCAL_STORAGE", &local)
        .env("PARALLEL_MIRRORED_STORAGE", &shared)
        .env_remove("PARVM_TRANSPORT")
        .env_remove("PARVM_LOCAL_SOCKET")
        .env_remove("PARVM_CONNECT")
        .env_remove("PARVM_FORWARD_ENV")
        .env_remove("TESTFWD_API")
        .env_remove("TESTFWD_LIST")
        .stdin(Stdio::null());
}

/// The test program as the spawner of the `forward` scenario.
fn spawner(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"));
    command.arg("forward");
    storage(dir, &mut command);
    command
        .env("TESTFWD_API", "api value")
        .env("TESTFWD_LIST", "list:value")
        .env("PARVM_FORWARD_ENV", " OTHER_UNSET_NAME, TESTFWD_LIST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Reads all of `reader` on another thread.
fn read_all(mut reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = reader.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

fn check(stdout: &str) {
    for line in [
        "task TESTFWD_API=api value",
        "task TESTFWD_LIST=list:value",
        "command TESTFWD_API=api value TESTFWD_LIST=list:value",
    ] {
        assert!(
            stdout.lines().any(|l| l.ends_with(line)),
            "missing `{line}` in:\n{stdout}"
        );
    }
}

#[test]
fn forwarded_variables_reach_local_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = spawner(dir.path());
    command.env("PARVM_WORKERS", "1");
    let mut child = Guard(command.spawn().expect("start the spawner"));
    let stdout = read_all(child.0.stdout.take().unwrap());
    let stderr = read_all(child.0.stderr.take().unwrap());
    let stdout = stdout.recv_timeout(DEADLINE).expect("the spawner ends");
    let stderr = stderr.recv_timeout(DEADLINE).expect("the spawner ends");
    assert!(child.0.wait().unwrap().success(), "{stdout}\n{stderr}");
    check(&stdout);
    assert!(
        stderr.contains("OTHER_UNSET_NAME"),
        "an unset name is warned about: {stderr}"
    );
}

#[test]
fn forwarded_variables_reach_tcp_workers() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let mut command = spawner(dir.path());
    command
        .env("PARVM_TRANSPORT", "tcp")
        .env("PARVM_LISTEN", "127.0.0.1:0")
        .env("PARVM_SECRET_FILE", &secret);
    let mut spawner = Guard(command.spawn().expect("start the spawner"));
    let stdout = read_all(spawner.0.stdout.take().unwrap());
    let (addr_tx, addr_rx) = mpsc::channel();
    let stderr_pipe = spawner.0.stderr.take().unwrap();
    let stderr = {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                if let Some((_, rest)) = line.split_once("PARVM_CONNECT=") {
                    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    let _ = addr_tx.send(addr);
                }
                text.push_str(&line);
                text.push('\n');
            }
            let _ = tx.send(text);
        });
        rx
    };
    let addr = addr_rx
        .recv_timeout(DEADLINE)
        .expect("the spawner prints its address");
    // The worker's own environment lacks the variables (see `storage`).
    let mut worker = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"));
    storage(dir.path(), &mut worker);
    worker
        .env("PARVM_CONNECT", &addr)
        .env("PARVM_SECRET_FILE", &secret)
        .env("PARVM_HOSTNAME", "remote");
    let _worker = Guard(worker.spawn().expect("start a tcp worker"));
    let stdout = stdout.recv_timeout(DEADLINE).expect("the spawner ends");
    let stderr = stderr.recv_timeout(DEADLINE).expect("the spawner ends");
    assert!(spawner.0.wait().unwrap().success(), "{stdout}\n{stderr}");
    check(&stdout);
}

#[cfg(feature = "mpi")]
#[test]
fn forwarded_variables_reach_mpi_ranks() {
    use parvm_test_support::mpirun::{Mpirun, skip_without_mpirun};
    let Some(mpirun) = skip_without_mpirun() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    let program = env!("CARGO_BIN_EXE_parvm-vm-testprog");
    // Only rank 0's app context has the variables.
    let mut args = crate::mpirun::context(
        1,
        "alpha",
        &local,
        &shared,
        &[
            ("TESTFWD_API", "api value"),
            ("TESTFWD_LIST", "list:value"),
            ("PARVM_FORWARD_ENV", "TESTFWD_LIST"),
        ],
        &[program, "forward"],
    );
    args.push(":".to_owned());
    args.extend(crate::mpirun::context(
        1,
        "beta",
        &local,
        &shared,
        &[],
        &[program],
    ));
    let run = Mpirun::run(
        &mpirun,
        &args,
        &["TESTFWD_API", "TESTFWD_LIST", "PARVM_FORWARD_ENV"],
        std::time::Instant::now() + Duration::from_secs(120),
    );
    assert!(run.status.success(), "{}", run.all());
    check(&run.stdout);
}

//! Which transport `Runtime::start` picks, and the TCP spawner's own settings.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use parvm_transport::tcp::Secret;
use parvm_vm::{Backend, Error, HostId, Message, Runtime, TcpSpawner};

use crate::harness::{DEADLINE, config};

/// Runs the test program as a spawner (scenario `start-finalize`) with `env`.
fn testprog(env: &[(&str, &str)]) -> Output {
    let storage = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"));
    command
        .arg("start-finalize")
        .env("PARALLEL_LOCAL_STORAGE", storage.path())
        .env("PARALLEL_MIRRORED_STORAGE", storage.path())
        .env("PARVM_WORKERS", "1");
    for var in [
        "PARVM_TRANSPORT",
        "PARVM_CONNECT",
        "PARVM_LISTEN",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_RANK",
        "PMI_SIZE",
        "PMI_RANK",
        "PMIX_RANK",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    command.stdin(Stdio::null()).output().unwrap()
}

#[cfg(not(feature = "mpi"))]
#[test]
fn mpi_without_the_feature_is_a_clear_error() {
    for env in [
        &[("PARVM_TRANSPORT", "mpi")][..],
        &[("OMPI_COMM_WORLD_SIZE", "3"), ("OMPI_COMM_WORLD_RANK", "0")][..],
        &[("PMI_RANK", "1")][..],
    ] {
        let output = testprog(env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{env:?}: {stderr}");
        assert!(stderr.contains("--features mpi"), "{env:?}: {stderr}");
    }
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_single_rank_mpirun_without_the_feature_runs_locally() {
    let output = testprog(&[("OMPI_COMM_WORLD_SIZE", "1"), ("OMPI_COMM_WORLD_RANK", "0")]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_bad_listen_address_names_the_variable() {
    for bad in ["nonsense", "1.2.3.4", "300.1.1.1:80"] {
        let output = testprog(&[("PARVM_TRANSPORT", "tcp"), ("PARVM_LISTEN", bad)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{bad}: {stderr}");
        assert!(
            stderr.contains("PARVM_LISTEN") && stderr.contains(bad),
            "{bad}: {stderr}"
        );
    }
}

fn tcp_runtime(dir: &std::path::Path) -> (Runtime, std::path::PathBuf) {
    let secret_file = dir.join("secret");
    let secret = Secret::load_or_create(&secret_file).unwrap();
    let runtime = Runtime::builder(crate::tasks::tasks())
        .config(config(dir, dir, "spawner"))
        .backend(Backend::Tcp(TcpSpawner::new().secret(secret)))
        .start()
        .unwrap();
    (runtime, secret_file)
}

#[test]
fn waiting_for_tcp_workers_that_never_come_says_where_to_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _) = tcp_runtime(dir.path());
    let addr = runtime.tcp_addr().unwrap();
    assert!(addr.ip().is_loopback(), "loopback by default: {addr}");
    let err = runtime
        .wait_for_workers(2, Duration::from_millis(200))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkersMissing {
                wanted: 2,
                joined: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("PARVM_CONNECT={addr}")),
        "{err}"
    );
    // The builder's wait fails the same way.
    let err = Runtime::builder(crate::tasks::tasks())
        .config(config(dir.path(), dir.path(), "spawner"))
        .backend(Backend::Tcp(
            TcpSpawner::new()
                .secret(Secret::random())
                .wait_for(1, Duration::from_millis(100)),
        ))
        .start()
        .err()
        .expect("no worker joins");
    assert!(matches!(err, Error::WorkersMissing { .. }), "{err}");
}

#[test]
fn a_late_tcp_worker_arrives_as_host_add() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, secret_file) = tcp_runtime(dir.path());
    let vm = runtime.vm().build().unwrap();
    assert_eq!(vm.slots(), 1, "no worker yet");
    let child = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
        .env("PARVM_CONNECT", runtime.tcp_addr().unwrap().to_string())
        .env("PARVM_SECRET_FILE", &secret_file)
        .env("PARVM_HOSTNAME", "latecomer")
        .env("PARALLEL_LOCAL_STORAGE", dir.path())
        .env("PARALLEL_MIRRORED_STORAGE", dir.path())
        .env_remove("PARVM_TRANSPORT")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = crate::harness::WorkerProcess(child);
    match vm.recv_timeout(DEADLINE).unwrap() {
        Some(Message::HostAdd { hosts }) => assert_eq!(hosts, [HostId::from("latecomer")]),
        other => panic!("expected HostAdd, got {other:?}"),
    }
    assert_eq!(vm.free_slots(), 1);
    let ids = vm
        .spawn(parvm_vm::Spawn::task("echo", &"late".to_string()))
        .unwrap();
    let (outcomes, _) = crate::harness::collect(&vm, &ids);
    let value = outcomes[&ids[0]].ok_value();
    assert_eq!(value.decode::<String>().unwrap(), "late");
    drop(vm);
    runtime.finalize().unwrap();
}

#[test]
fn a_worker_with_the_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, _) = tcp_runtime(dir.path());
    let other = dir.path().join("other-secret");
    Secret::load_or_create(&other).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
        .env("PARVM_CONNECT", runtime.tcp_addr().unwrap().to_string())
        .env("PARVM_SECRET_FILE", &other)
        .env("PARALLEL_LOCAL_STORAGE", dir.path())
        .env("PARALLEL_MIRRORED_STORAGE", dir.path())
        .env_remove("PARVM_TRANSPORT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("secret"), "{stderr}");
    assert_eq!(runtime.slots(), 1, "nobody joined");
}

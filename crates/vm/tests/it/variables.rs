//! The variables users set take effect end to end: the VM reads them through its
//! configuration and hands them to the transport (which reads none itself), on the
//! spawner and on workers. Moved here from the transport's tests when the transport
//! stopped reading them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use parvm_transport::tcp::Secret;
use parvm_vm::{Backend, Config, HostId, Message, Runtime, Spawn, TcpSpawner};

use crate::harness::{DEADLINE, WorkerProcess, collect, config};

/// The test program as a TCP worker of the spawner at `addr`, with the secret file
/// `secret` and the variables `env`.
fn tcp_worker(dir: &Path, addr: &str, secret: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"));
    command
        .env("PARVM_CONNECT", addr)
        .env("PARVM_SECRET_FILE", secret)
        .env("PARALLEL_LOCAL_STORAGE", dir)
        .env("PARALLEL_MIRRORED_STORAGE", dir)
        .env_remove("PARVM_TRANSPORT")
        .env_remove("PARVM_LOCAL_SOCKET")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

/// A TCP spawner listening on `addr` with a new secret file in `dir`.
fn tcp_runtime(dir: &Path, addr: std::net::SocketAddr) -> (Runtime, std::path::PathBuf) {
    let secret_file = dir.join("secret");
    let secret = Secret::load_or_create(&secret_file).unwrap();
    let runtime = Runtime::builder(crate::tasks::tasks())
        .config(config(dir, dir, "spawner"))
        .backend(Backend::Tcp(TcpSpawner::new().listen(addr).secret(secret)))
        .start()
        .unwrap();
    (runtime, secret_file)
}

/// Waits for the `HostAdd` of one worker and returns its host.
fn host_added(vm: &parvm_vm::Vm) -> HostId {
    match vm.recv_timeout(DEADLINE).unwrap() {
        Some(Message::HostAdd { hosts }) if hosts.len() == 1 => hosts[0].clone(),
        other => panic!("expected one HostAdd, got {other:?}"),
    }
}

#[test]
fn a_tcp_worker_joins_with_the_variables_it_was_started_with() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, secret_file) = tcp_runtime(dir.path(), ([127, 0, 0, 1], 0).into());
    let addr = runtime.tcp_addr().unwrap().to_string();
    let vm = runtime.vm().build().unwrap();
    let child = tcp_worker(
        dir.path(),
        &addr,
        &secret_file,
        &[
            ("PARVM_MAX_FRAME", "64M"),
            ("PARVM_HANDSHAKE_TIMEOUT", "2.5"),
            ("PARVM_CONNECT_WAIT", "2"),
            ("PARVM_SPIN_US", "0"),
            ("PARVM_HOSTNAME", "varhost"),
        ],
    )
    .spawn()
    .unwrap();
    let mut guard = WorkerProcess(child);
    assert_eq!(host_added(&vm), HostId::from("varhost"));
    let ids = vm
        .spawn(Spawn::task("getenv", &"PARVM_MAX_FRAME".to_string()))
        .unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let value = outcomes[&ids[0]].ok_value();
    assert_eq!(
        value.decode::<Option<String>>().unwrap().as_deref(),
        Some("64M")
    );
    drop(vm);
    runtime.finalize().unwrap();
    // The worker leaves when the spawner is gone.
    assert!(guard.0.wait().unwrap().success());
}

#[test]
fn bad_variables_of_a_tcp_worker_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, secret_file) = tcp_runtime(dir.path(), ([127, 0, 0, 1], 0).into());
    let addr = runtime.tcp_addr().unwrap().to_string();
    for (var, value) in [
        ("PARVM_MAX_FRAME", "lots"),
        ("PARVM_MAX_FRAME", "100"),
        ("PARVM_HANDSHAKE_TIMEOUT", "0"),
        ("PARVM_HANDSHAKE_TIMEOUT", "soon"),
        ("PARVM_CONNECT_WAIT", "-1"),
        ("PARVM_SPIN_US", "fast"),
        ("PARVM_HOSTNAME", "two words"),
    ] {
        let output = tcp_worker(dir.path(), &addr, &secret_file, &[(var, value)])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{var}={value}");
        assert!(
            stderr.contains(var) && stderr.contains(value),
            "{var}={value}: {stderr}"
        );
    }
    assert_eq!(runtime.slots(), 1, "nobody joined");
}

#[test]
fn a_tcp_worker_refuses_a_frame_over_its_max_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, secret_file) = tcp_runtime(dir.path(), ([127, 0, 0, 1], 0).into());
    let addr = runtime.tcp_addr().unwrap().to_string();
    let vm = runtime.vm().build().unwrap();
    let child = tcp_worker(
        dir.path(),
        &addr,
        &secret_file,
        &[("PARVM_MAX_FRAME", "4K"), ("PARVM_HOSTNAME", "small")],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut guard = WorkerProcess(child);
    assert_eq!(host_added(&vm), HostId::from("small"));
    // A spawn request larger than the worker's limit: the worker drops the spawner rather
    // than allocate it, and the spawner sees the worker lost.
    let big = "x".repeat(16 << 10);
    let ids = vm.spawn(Spawn::task("echo", &big)).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    assert!(
        !matches!(outcomes[&ids[0]].result, Some(Ok(_))),
        "{:?}",
        outcomes[&ids[0]].result
    );
    // The worker is gone (it lost its spawner), not left behind.
    guard.0.wait().unwrap();
    drop(vm);
    runtime.finalize().unwrap();
}

#[test]
fn a_program_with_a_hand_built_configuration_still_joins_as_the_launcher_says() {
    // How a process was started is the launcher's to say: PARVM_CONNECT makes the program a
    // TCP worker even when it gives the runtime a configuration of its own, and it joins
    // with the settings of its environment (its host name, secret file, wait).
    let dir = tempfile::tempdir().unwrap();
    let (runtime, secret_file) = tcp_runtime(dir.path(), ([127, 0, 0, 1], 0).into());
    let addr = runtime.tcp_addr().unwrap().to_string();
    let vm = runtime.vm().build().unwrap();
    let child = tcp_worker(
        dir.path(),
        &addr,
        &secret_file,
        &[("PARVM_HOSTNAME", "envhost"), ("PARVM_CONNECT_WAIT", "5")],
    )
    .arg("hand-config")
    .spawn()
    .unwrap();
    let mut guard = WorkerProcess(child);
    assert_eq!(host_added(&vm), HostId::from("envhost"));
    let ids = vm.spawn(Spawn::task("echo", &"hand".to_string())).unwrap();
    let (outcomes, _) = collect(&vm, &ids);
    let value = outcomes[&ids[0]].ok_value();
    assert_eq!(value.decode::<String>().unwrap(), "hand");
    drop(vm);
    runtime.finalize().unwrap();
    assert!(guard.0.wait().unwrap().success());
}

#[test]
fn a_tcp_worker_waits_for_its_spawner_as_long_as_parvm_connect_wait_says() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    Secret::load_or_create(&secret_file).unwrap();
    // A stand-in holds the port until the worker has tried once. The port is below the
    // ephemeral range: once the stand-in lets it go, no outgoing connection (another
    // test's, or the worker's own retry connecting to itself) can take it before the
    // spawner binds it; a child another test forks meanwhile may hold the stand-in's
    // descriptor for a moment (`rebind`).
    let stand_in = parvm_test_support::listener_below_ephemeral_ports();
    let port = stand_in.local_addr().unwrap();
    let start = |wait: &str| {
        tcp_worker(
            dir.path(),
            &port.to_string(),
            &secret_file,
            &[("PARVM_CONNECT_WAIT", wait), ("PARVM_HOSTNAME", "patient")],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    // Without waiting, a refused handshake is the end, and it says where it tried.
    let child = start("0");
    drop(stand_in.accept().unwrap());
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains(&port.to_string()));
    // Waiting, it tries again, and joins the spawner that takes the port over.
    let child = start("30");
    let _guard = WorkerProcess(child);
    drop(stand_in.accept().unwrap());
    drop(stand_in);
    let secret = Secret::load(&secret_file).unwrap();
    let runtime = parvm_test_support::rebind(
        || {
            Runtime::builder(crate::tasks::tasks())
                .config(config(dir.path(), dir.path(), "spawner"))
                .backend(Backend::Tcp(
                    TcpSpawner::new().listen(port).secret(secret.clone()),
                ))
                .start()
        },
        |e| {
            matches!(e, parvm_vm::Error::Transport {
                source: parvm_transport::Error::Listen { source, .. },
                ..
            } if source.kind() == std::io::ErrorKind::AddrInUse)
        },
    )
    .unwrap();
    let vm = runtime.vm().build().unwrap();
    assert_eq!(host_added(&vm), HostId::from("patient"));
    drop(vm);
    runtime.finalize().unwrap();
}

#[test]
fn the_spin_window_reaches_local_workers() {
    let dir = tempfile::tempdir().unwrap();
    for (window, want) in [(Duration::ZERO, "0"), (Duration::from_micros(250), "250")] {
        let config = Config::builder()
            .local_root(dir.path())
            .mirrored_roots([dir.path()])
            .hostname("spinner")
            .spin_window(window)
            .build()
            .unwrap();
        let runtime = Runtime::builder(crate::tasks::tasks())
            .config(config)
            .workers(1)
            .program(env!("CARGO_BIN_EXE_parvm-vm-testprog"), Vec::new())
            .start()
            .unwrap();
        let vm = runtime.vm().build().unwrap();
        let ids = vm
            .spawn(Spawn::task("getenv", &"PARVM_LOCAL_SPIN_US".to_string()))
            .unwrap();
        let (outcomes, _) = collect(&vm, &ids);
        let value = outcomes[&ids[0]].ok_value();
        assert_eq!(
            value.decode::<Option<String>>().unwrap().as_deref(),
            Some(want)
        );
        drop(vm);
        runtime.finalize().unwrap();
    }
}

/// The test program as a local spawner with one worker, printing what a task sees of
/// `names`, with `env`.
fn local_spawner(dir: &Path, env: &[(&str, &str)], names: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
        .arg("getenv")
        .args(names)
        .env("PARALLEL_LOCAL_STORAGE", dir)
        .env("PARALLEL_MIRRORED_STORAGE", dir)
        .env("PARVM_WORKERS", "1")
        .env("PARVM_TRANSPORT", "local")
        .env_remove("PARVM_CONNECT")
        .env_remove("PARVM_LOCAL_SOCKET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn parvm_spin_us_reaches_the_spawner_and_its_local_workers() {
    // The spawner reads PARVM_SPIN_US through its configuration and passes it on.
    let dir = tempfile::tempdir().unwrap();
    let output = local_spawner(
        dir.path(),
        &[("PARVM_SPIN_US", "0")],
        &["PARVM_LOCAL_SPIN_US"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("task PARVM_LOCAL_SPIN_US=0\n"), "{stdout}");
    // A bad value is named before anything starts.
    let output = local_spawner(dir.path(), &[("PARVM_SPIN_US", "fast")], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("PARVM_SPIN_US") && stderr.contains("fast"),
        "{stderr}"
    );
}

#[test]
fn parvm_hostname_of_the_spawner_names_its_local_workers_host() {
    let dir = tempfile::tempdir().unwrap();
    let output = local_spawner(
        dir.path(),
        &[("PARVM_HOSTNAME", "configured")],
        &["PARVM_HOSTNAME", "PARVM_LOCAL_SPAWNER_HOST"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("task PARVM_HOSTNAME=configured\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("task PARVM_LOCAL_SPAWNER_HOST=configured\n"),
        "{stdout}"
    );
    // A host name the configuration refuses is named, and nothing starts.
    let output = local_spawner(dir.path(), &[("PARVM_HOSTNAME", "a/b")], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("PARVM_HOSTNAME") && stderr.contains("a/b"),
        "{stderr}"
    );
}

//! Starting a VM on a backend, with private storage folders, and cleaning up after it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parvm_transport::tcp::Secret;
use parvm_vm::memory::MemoryTransport;
use parvm_vm::{
    Config, ExitStatus, Message, Runtime, ShipMode, TaskFailure, TaskId, TcpSpawner, Value, Vm,
    Worker,
};

/// Which transport a suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Workers on threads of the test process.
    Memory,
    /// Worker processes running the test program, over Unix sockets.
    Local,
    /// Worker processes running the test program, connected over TCP (`PARVM_CONNECT`).
    Tcp,
    /// This test program as rank 0 under `mpirun`, the test program as the other ranks
    /// (see `crate::mpirun`).
    #[cfg(feature = "mpi")]
    Mpi,
}

impl Backend {
    /// Whether a large send waits until the program receives it, whatever the window: MPI
    /// sends past its eager limit (a few KiB) meet their receive first.
    pub fn sends_wait_for_the_receiver(self) -> bool {
        #[cfg(feature = "mpi")]
        if self == Backend::Mpi {
            return true;
        }
        false
    }
}

/// A folder a harness works in: a temporary one it owns, or one it was given (under
/// `mpirun`, the folders belong to the test that started mpirun).
pub struct Folder {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Folder {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl From<tempfile::TempDir> for Folder {
    fn from(temp: tempfile::TempDir) -> Folder {
        Folder {
            path: temp.path().to_owned(),
            _temp: Some(temp),
        }
    }
}

/// Kills and reaps a worker process when dropped, after giving it a moment to leave.
pub struct WorkerProcess(pub Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running VM and its folders; dropping it finalizes the VM and removes the folders.
pub struct Harness {
    pub runtime: Option<Runtime>,
    threads: Vec<JoinHandle<()>>,
    processes: Vec<WorkerProcess>,
    pub local: Folder,
    pub shared: Folder,
    _secret: Option<tempfile::TempDir>,
}

/// Settings the configurations [`config`] makes on a thread take instead of the defaults.
#[derive(Clone, Copy)]
struct Overrides {
    /// `PARVM_SHIP`.
    ship: ShipMode,
    /// `PARVM_PEER_TIMEOUT`, when set.
    peer_timeout: Option<Duration>,
}

thread_local! {
    static OVERRIDES: std::cell::Cell<Overrides> = const {
        std::cell::Cell::new(Overrides { ship: ShipMode::Auto, peer_timeout: None })
    };
}

/// Changes the overrides of this thread with `change` until the guard is dropped.
fn overriding(change: impl FnOnce(&mut Overrides)) -> impl Drop {
    struct Restore(Overrides);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDES.with(|o| o.set(self.0));
        }
    }
    let before = OVERRIDES.with(std::cell::Cell::get);
    let mut after = before;
    change(&mut after);
    OVERRIDES.with(|o| o.set(after));
    Restore(before)
}

/// Makes the harnesses this thread starts (and [`config`]) use `mode` until the guard is
/// dropped.
pub fn ship_mode(mode: ShipMode) -> impl Drop {
    overriding(move |o| o.ship = mode)
}

/// Makes the spawners of the harnesses this thread starts use `timeout` as their peer
/// timeout until the guard is dropped.
pub fn peer_timeout(timeout: Duration) -> impl Drop {
    overriding(move |o| o.peer_timeout = Some(timeout))
}

pub fn config(local: &Path, shared: &Path, host: &str) -> Config {
    let overrides = OVERRIDES.with(std::cell::Cell::get);
    let mut config = Config::builder()
        .local_root(local)
        .mirrored_roots([shared])
        .hostname(host)
        .ship(overrides.ship);
    if let Some(timeout) = overrides.peer_timeout {
        config = config.peer_timeout(timeout);
    }
    config.build().expect("test configuration")
}

/// The test program as a TCP worker on host `far` inside network namespace `netns`
/// (`ip netns exec` runs it under its own pid): it reaches the spawner at `addr` over the
/// namespace's veth pair only, and sees none of the spawner's loopback.
pub fn far_worker_in(
    netns: &str,
    addr: std::net::SocketAddr,
    secret_file: &Path,
    local: &Path,
    mirrored: &Path,
) -> std::process::Command {
    let mut command = std::process::Command::new("ip");
    command
        .args([
            "netns",
            "exec",
            netns,
            env!("CARGO_BIN_EXE_parvm-vm-testprog"),
        ])
        .env("PARVM_CONNECT", addr.to_string())
        .env("PARVM_SECRET_FILE", secret_file)
        .env("PARVM_HOSTNAME", "far")
        .env("PARALLEL_LOCAL_STORAGE", local)
        .env("PARALLEL_MIRRORED_STORAGE", mirrored)
        .env_remove("PARVM_TRANSPORT")
        .env_remove("PARVM_LOCAL_SOCKET")
        .stdin(std::process::Stdio::null());
    command
}

impl Harness {
    pub fn start(backend: Backend, workers: usize) -> Harness {
        Harness::start_hosts(backend, &[("alpha", workers)])
    }

    pub fn start_hosts(backend: Backend, hosts: &[(&str, usize)]) -> Harness {
        #[cfg(feature = "mpi")]
        if backend == Backend::Mpi {
            return Harness::start_mpi(hosts);
        }
        let local = tempfile::tempdir().expect("temp folder");
        let shared = tempfile::tempdir().expect("temp folder");
        Harness::start_in(backend, hosts, local, shared)
    }

    pub fn start_in(
        backend: Backend,
        hosts: &[(&str, usize)],
        local: tempfile::TempDir,
        shared: tempfile::TempDir,
    ) -> Harness {
        // Dead local workers stay dead unless a test asks for replacements.
        Harness::start_replacing(backend, hosts, local, shared, 0)
    }

    /// As [`Harness::start_in`], with `replacements` replacement workers per local slot.
    pub fn start_replacing(
        backend: Backend,
        hosts: &[(&str, usize)],
        local: tempfile::TempDir,
        shared: tempfile::TempDir,
        replacements: u32,
    ) -> Harness {
        let config = config(local.path(), shared.path(), "spawner");
        let mut threads = Vec::new();
        let mut processes = Vec::new();
        let mut secret_dir = None;
        let runtime = match backend {
            Backend::Memory => {
                let mut names = vec!["spawner"];
                for (host, count) in hosts {
                    names.extend(std::iter::repeat_n(*host, *count));
                }
                let mut ranks = MemoryTransport::cluster(&names).into_iter();
                let spawner = ranks.next().expect("rank 0");
                for (rank, host) in ranks.zip(names.into_iter().skip(1)) {
                    let worker_config = self::config(local.path(), shared.path(), host);
                    threads.push(std::thread::spawn(move || {
                        Worker::new(crate::tasks::tasks(), worker_config)
                            .change_dir(false)
                            .serve(Box::new(rank))
                            .expect("worker serves");
                    }));
                }
                Runtime::from_transport(Box::new(spawner), crate::tasks::tasks(), config.clone())
                    .expect("runtime")
            }
            Backend::Local => Runtime::builder(crate::tasks::tasks())
                .config(config.clone())
                .simulated_hosts(hosts.iter().map(|(h, n)| (*h, *n)))
                .program(env!("CARGO_BIN_EXE_parvm-vm-testprog"), Vec::new())
                .replace_workers(replacements)
                .start()
                .expect("local runtime starts"),
            Backend::Tcp => {
                let dir = tempfile::tempdir().expect("temp folder");
                let secret_file = dir.path().join("secret");
                let secret = Secret::load_or_create(&secret_file).expect("secret file");
                secret_dir = Some(dir);
                let runtime = Runtime::builder(crate::tasks::tasks())
                    .config(config.clone())
                    .backend(parvm_vm::Backend::Tcp(
                        TcpSpawner::new()
                            .listen(([127, 0, 0, 1], 0).into())
                            .secret(secret),
                    ))
                    .start()
                    .expect("tcp runtime starts");
                let addr = runtime.tcp_addr().expect("a tcp address");
                // One at a time, so ranks follow the order of `hosts` as on the other
                // backends (ranks are given in the order workers connect).
                let mut joined = 0;
                for (host, count) in hosts {
                    for _ in 0..*count {
                        let child = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
                            .env("PARVM_CONNECT", addr.to_string())
                            .env("PARVM_SECRET_FILE", &secret_file)
                            .env("PARVM_HOSTNAME", host)
                            .env("PARALLEL_LOCAL_STORAGE", local.path())
                            .env("PARALLEL_MIRRORED_STORAGE", shared.path())
                            .env_remove("PARVM_TRANSPORT")
                            .env_remove("PARVM_LOCAL_SOCKET")
                            .stdin(Stdio::null())
                            .spawn()
                            .expect("start a tcp worker");
                        processes.push(WorkerProcess(child));
                        joined += 1;
                        runtime
                            .wait_for_workers(joined, DEADLINE)
                            .expect("the tcp worker joins");
                    }
                }
                runtime
            }
            #[cfg(feature = "mpi")]
            Backend::Mpi => unreachable!("handled by start_mpi"),
        };
        Harness {
            runtime: Some(runtime),
            threads,
            processes,
            local: local.into(),
            shared: shared.into(),
            _secret: secret_dir,
        }
    }

    /// Rank 0 of an `mpirun` started by `crate::mpirun::suite_test`: the folders come
    /// from the environment, and the ranks must be laid out as `hosts` says.
    #[cfg(feature = "mpi")]
    fn start_mpi(hosts: &[(&str, usize)]) -> Harness {
        if std::env::var_os(crate::mpirun::PROBE_VAR).is_some() {
            crate::mpirun::report_layout(hosts);
        }
        let var = |name: &str| -> PathBuf {
            std::env::var_os(name)
                .unwrap_or_else(|| panic!("{name} is not set under mpirun"))
                .into()
        };
        let local = var("PARALLEL_LOCAL_STORAGE");
        let shared = var("PARALLEL_MIRRORED_STORAGE");
        let runtime = Runtime::builder(crate::tasks::tasks())
            .config(config(&local, &shared, "spawner"))
            .backend(parvm_vm::Backend::Mpi)
            .start()
            .expect("mpi runtime starts");
        let layout = runtime.describe();
        for (host, count) in hosts {
            let found = layout
                .hosts
                .iter()
                .find(|h| h.host.to_string() == *host)
                .map_or(0, |h| h.slots.len());
            assert_eq!(found, *count, "ranks on host {host}: {layout}");
        }
        Harness {
            runtime: Some(runtime),
            threads: Vec::new(),
            processes: Vec::new(),
            local: Folder {
                path: local,
                _temp: None,
            },
            shared: Folder {
                path: shared,
                _temp: None,
            },
            _secret: None,
        }
    }

    /// Starts one more TCP worker process on `host`, connecting to this harness's
    /// spawner with its secret; returns its pid. It is killed with the harness.
    pub fn start_tcp_worker(&mut self, host: &str) -> u32 {
        let (local, shared) = (self.local.path().to_owned(), self.shared.path().to_owned());
        self.start_tcp_worker_in(host, &local, &shared)
    }

    /// As [`Harness::start_tcp_worker`], with local and mirrored storage of its own.
    pub fn start_tcp_worker_in(&mut self, host: &str, local: &Path, shared: &Path) -> u32 {
        let addr = self.runtime().tcp_addr().expect("a tcp spawner");
        let secret = self
            ._secret
            .as_ref()
            .expect("a tcp harness")
            .path()
            .join("secret");
        let child = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
            .env("PARVM_CONNECT", addr.to_string())
            .env("PARVM_SECRET_FILE", secret)
            .env("PARVM_HOSTNAME", host)
            .env("PARALLEL_LOCAL_STORAGE", local)
            .env("PARALLEL_MIRRORED_STORAGE", shared)
            .env_remove("PARVM_TRANSPORT")
            .env_remove("PARVM_LOCAL_SOCKET")
            .stdin(Stdio::null())
            .spawn()
            .expect("start a tcp worker");
        let pid = child.id();
        self.processes.push(WorkerProcess(child));
        pid
    }

    pub fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("runtime")
    }

    /// Starts one more TCP worker, on `host`, after the runtime started (and after any VM
    /// was built), and waits until it joined.
    pub fn join_tcp_worker(&mut self, host: &str) {
        let secret_file = self
            ._secret
            .as_ref()
            .expect("a tcp harness")
            .path()
            .join("secret");
        let addr = self.runtime().tcp_addr().expect("a tcp address");
        let child = Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
            .env("PARVM_CONNECT", addr.to_string())
            .env("PARVM_SECRET_FILE", &secret_file)
            .env("PARVM_HOSTNAME", host)
            .env("PARALLEL_LOCAL_STORAGE", self.local.path())
            .env("PARALLEL_MIRRORED_STORAGE", self.shared.path())
            .env_remove("PARVM_TRANSPORT")
            .env_remove("PARVM_LOCAL_SOCKET")
            .stdin(Stdio::null())
            .spawn()
            .expect("start a tcp worker");
        self.processes.push(WorkerProcess(child));
        self.runtime()
            .wait_for_workers(self.processes.len(), DEADLINE)
            .expect("the tcp worker joins");
    }

    pub fn vm(&self) -> Vm {
        self.runtime().vm().build().expect("vm")
    }

    /// A VM that mirrors the shared folder `lib/` (written here, holding `m.lib` with the
    /// line `model`) into each task folder.
    pub fn vm_mirroring_lib(&self) -> Vm {
        let lib = self.shared.path().join("lib");
        std::fs::create_dir_all(&lib).expect("lib folder");
        std::fs::write(lib.join("m.lib"), "model\n").expect("m.lib");
        self.runtime()
            .vm()
            .mirror(lib.to_str().expect("a UTF-8 path"), ".")
            .build()
            .expect("vm")
    }

    /// The per-user folder of local storage.
    pub fn user_dir(&self) -> PathBuf {
        let user = parvm_env_config::current_user().expect("user");
        self.local.path().join(format!("parvm-{user}"))
    }

    /// Task folders present in local storage (trash excluded).
    pub fn task_folders(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.user_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            let _ = runtime.finalize();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        self.processes.clear();
    }
}

/// What arrived for one task.
#[derive(Debug, Default)]
pub struct Outcome {
    pub result: Option<Result<Value, TaskFailure>>,
    pub exit: Option<ExitStatus>,
    pub results: usize,
    pub exits: usize,
}

impl Outcome {
    /// The task's value; panics (failing the test) when it has no result or failed.
    pub fn ok_value(&self) -> &Value {
        match &self.result {
            Some(Ok(value)) => value,
            other => panic!("expected a successful result, got {other:?}"),
        }
    }

    /// The task's value, decoded as `T`.
    pub fn value<T: serde::de::DeserializeOwned + 'static>(&self) -> T {
        self.ok_value().decode().expect("decode the task's value")
    }
}

/// Receives until every task in `ids` has exited; other messages are returned too.
pub fn collect(vm: &Vm, ids: &[TaskId]) -> (HashMap<TaskId, Outcome>, Vec<Message>) {
    let deadline = Instant::now() + DEADLINE;
    let mut outcomes: HashMap<TaskId, Outcome> = HashMap::new();
    let mut others = Vec::new();
    while ids
        .iter()
        .any(|id| outcomes.get(id).is_none_or(|o| o.exit.is_none()))
    {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("tasks did not all exit within the deadline");
        match vm.recv_timeout(left).expect("recv") {
            Some(Message::TaskResult { task, outcome }) => {
                let entry = outcomes.entry(task).or_default();
                entry.result = Some(outcome);
                entry.results += 1;
            }
            Some(Message::TaskExit { task, status }) => {
                let entry = outcomes.entry(task).or_default();
                entry.exit = Some(status);
                entry.exits += 1;
            }
            Some(other) => others.push(other),
            None => {}
        }
    }
    (outcomes, others)
}

/// Runs `body` on another thread and returns its result, failing the test (instead of
/// hanging it) when it takes longer than `limit`.
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

/// Waits until `condition` holds, or panics after the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process runs (a zombie does not).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

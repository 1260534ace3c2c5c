//! Starting a VM on a backend, with private storage folders, and cleaning up after it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parvm_vm::memory::MemoryTransport;
use parvm_vm::{Config, ExitStatus, Message, Runtime, TaskFailure, TaskId, Value, Vm, Worker};

/// Which transport a suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Workers on threads of the test process.
    Memory,
    /// Worker processes running the test program, over Unix sockets.
    Local,
}

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running VM and its folders; dropping it finalizes the VM and removes the folders.
pub struct Harness {
    pub runtime: Option<Runtime>,
    threads: Vec<JoinHandle<()>>,
    pub local: tempfile::TempDir,
    pub shared: tempfile::TempDir,
}

pub fn config(local: &Path, shared: &Path, host: &str) -> Config {
    Config::builder()
        .local_root(local)
        .mirrored_roots([shared])
        .hostname(host)
        .build()
        .expect("test configuration")
}

impl Harness {
    pub fn start(backend: Backend, workers: usize) -> Harness {
        Harness::start_hosts(backend, &[("alpha", workers)])
    }

    pub fn start_hosts(backend: Backend, hosts: &[(&str, usize)]) -> Harness {
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
        let config = config(local.path(), shared.path(), "spawner");
        let mut threads = Vec::new();
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
                .start()
                .expect("local runtime starts"),
        };
        Harness {
            runtime: Some(runtime),
            threads,
            local,
            shared,
        }
    }

    pub fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("runtime")
    }

    pub fn vm(&self) -> Vm {
        self.runtime().vm().build().expect("vm")
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

/// Waits until `condition` holds, or panics after the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

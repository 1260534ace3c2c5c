//! The spawner's API: the runtime, VM objects, spawning and messaging.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

use parvm_env_config::{Config, TransportKind};
use parvm_transport::Transport;
use parvm_transport::tcp::{Secret, TcpOptions, TcpTransport};
use serde::Serialize;

use crate::protocol::{Job, SpawnRequest, Startup, ToWorker};
use crate::spawner::{Running, Shared, Until, is_live};
use crate::tasks::JobSpec;
use crate::{Error, HostId, Message, Spawn, TaskId, Tasks, Worker};

/// The parvm runtime of this process: the transport and the workers, shared by all VMs.
///
/// The same executable runs on every slot: [`Runtime::start`] in a worker process runs the
/// spawn loop and exits the process; in the spawner it starts the workers and returns.
/// Dropping the runtime and all its VMs (or calling [`Runtime::finalize`]) sends the
/// workers home.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
    listen: Option<SocketAddr>,
}

/// How [`Runtime`] starts: transport, worker count, configuration, log level.
pub struct RuntimeBuilder {
    tasks: Tasks,
    config: Option<Config>,
    workers: Option<usize>,
    transport: Option<TransportKind>,
    debug: Option<u8>,
    program: Option<(PathBuf, Vec<String>)>,
    hosts: Option<Vec<(String, usize)>>,
    host_configs: Vec<(String, Config)>,
    listen: Option<SocketAddr>,
    secret: Option<Secret>,
    wait_for: Option<(usize, Duration)>,
    forward_env: Vec<String>,
}

impl Runtime {
    /// Starts with the configuration from the environment (see [`RuntimeBuilder`]).
    ///
    /// # Errors
    /// As [`RuntimeBuilder::start`].
    pub fn start(tasks: Tasks) -> Result<Runtime, Error> {
        Runtime::builder(tasks).start()
    }

    /// A builder for a runtime running `tasks`.
    #[must_use]
    pub fn builder(tasks: Tasks) -> RuntimeBuilder {
        RuntimeBuilder {
            tasks,
            config: None,
            workers: None,
            transport: None,
            debug: None,
            program: None,
            hosts: None,
            host_configs: Vec::new(),
            listen: None,
            secret: None,
            wait_for: None,
            forward_env: Vec::new(),
        }
    }

    /// A spawner runtime over a transport you built (rank 0 of it); its workers run
    /// [`Worker::serve`] with the same `tasks`.
    ///
    /// # Errors
    /// The task registry has a duplicate name, or the transport is not rank 0.
    pub fn from_transport(
        transport: Box<dyn Transport>,
        tasks: Tasks,
        config: Config,
    ) -> Result<Runtime, Error> {
        Runtime::with_forward(transport, tasks, config, Vec::new())
    }

    /// As [`Runtime::from_transport`], sending `forward` to every worker before its first
    /// task.
    fn with_forward(
        transport: Box<dyn Transport>,
        tasks: Tasks,
        config: Config,
        forward: Vec<crate::envfwd::Var>,
    ) -> Result<Runtime, Error> {
        tasks.check()?;
        if transport.rank() != 0 {
            return Err(Error::NotSpawner {
                what: "Runtime::from_transport",
            });
        }
        let shared = Arc::new(Shared::new(transport, tasks, config, forward));
        {
            let state = shared.lock();
            for &rank in state.slots.keys() {
                shared.send_env(rank);
            }
            let mut hosts: Vec<&str> = state.slots.values().map(|s| s.host.as_str()).collect();
            hosts.sort_unstable();
            hosts.dedup();
            tracing::info!(
                backend = shared.backend,
                host = %shared.host,
                "spawner ready with {} worker(s){}",
                state.slots.len(),
                if hosts.is_empty() {
                    String::new()
                } else {
                    format!(" on host(s) {}", hosts.join(", "))
                }
            );
        }
        Ok(Runtime {
            shared,
            listen: None,
        })
    }

    /// A builder for a new VM object on this runtime; each VM gets its own index.
    #[must_use]
    pub fn vm(&self) -> VmBuilder {
        VmBuilder {
            shared: Arc::clone(&self.shared),
            listen: self.listen,
            mirror: Vec::new(),
            startup: None,
            persistent: false,
            clean: false,
            local_folder: false,
        }
    }

    /// The configuration the spawner runs with.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The transport backend's name (`local`, `tcp`, `mpi`, `memory`).
    #[must_use]
    pub fn backend(&self) -> &'static str {
        self.shared.backend
    }

    /// The address the TCP spawner listens on (with the port it chose); `None` on other
    /// transports.
    #[must_use]
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// Waits until at least `workers` workers have joined (TCP workers join whenever they
    /// connect; other transports have all theirs from the start), at most `timeout`, and
    /// returns how many there are.
    ///
    /// # Errors
    /// [`Error::WorkersMissing`] when fewer joined in time; [`Error::TooFewWorkers`] at
    /// once when there are fewer and the transport starts no new ones (local, MPI); the
    /// transport failed.
    pub fn wait_for_workers(&self, workers: usize, timeout: Duration) -> Result<usize, Error> {
        self.shared.check_open()?;
        let backend = self.shared.backend;
        let can_join = self.shared.workers_can_join;
        // File the events already queued first, so workers already lost are not counted.
        self.shared.pump(Until::Now, |_| None::<()>)?;
        let joined = self.shared.pump(Until::after(timeout), |state| {
            let have = state.slots.len();
            if have >= workers {
                Some(Ok(have))
            } else if can_join {
                None
            } else {
                Some(Err(Error::TooFewWorkers {
                    wanted: workers,
                    have,
                    backend,
                    hint: if backend == "mpi" {
                        format!("ask for at most {have}, or start more ranks with `mpirun -n`")
                    } else if state.lost > 0 {
                        format!(
                            "{} were lost (the last: {}); ask for at most {have}, or start a new runtime",
                            state.lost,
                            state.last_loss.as_deref().unwrap_or("no reason given")
                        )
                    } else {
                        format!(
                            "ask for at most {have}, or start the runtime with more (PARVM_WORKERS or `RuntimeBuilder::workers`)"
                        )
                    },
                }))
            }
        })?;
        match joined {
            Some(joined) => joined,
            None => Err(Error::WorkersMissing {
                wanted: workers,
                joined: self.shared.lock().slots.len(),
                timeout,
                hint: match self.listen {
                    Some(addr) => format!(
                        "start more workers with {}={}",
                        parvm_transport::tcp::CONNECT_VAR,
                        connect_address(addr, &self.shared.host)
                    ),
                    None => format!(
                        "the `{}` transport has no more workers",
                        self.shared.backend
                    ),
                },
            }),
        }
    }

    /// Hosts with workers, plus the spawner's own host, sorted by name.
    #[must_use]
    pub fn hosts(&self) -> Vec<HostId> {
        let state = self.shared.lock();
        let mut hosts: Vec<HostId> = state
            .slots
            .values()
            .map(|slot| HostId(slot.host.clone()))
            .chain(std::iter::once(HostId(self.shared.host.clone())))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// All slots, the spawner's slot 0 included (as in PyOPUS).
    #[must_use]
    pub fn slots(&self) -> usize {
        self.shared.lock().slots.len() + 1
    }

    /// Worker slots with no task.
    #[must_use]
    pub fn free_slots(&self) -> usize {
        let state = self.shared.lock();
        state.slots.values().filter(|s| s.running.is_none()).count()
    }

    /// The spawner's host.
    #[must_use]
    pub fn host_id(&self) -> HostId {
        HostId(self.shared.host.clone())
    }

    /// Hosts, slots and running tasks; print it with `{}`.
    #[must_use]
    pub fn describe(&self) -> Layout {
        let state = self.shared.lock();
        let mut hosts: Vec<LayoutHost> = Vec::new();
        let mut spawner = LayoutHost {
            host: HostId(self.shared.host.clone()),
            spawner: true,
            slots: Vec::new(),
        };
        for (&rank, slot) in &state.slots {
            let entry = LayoutSlot {
                slot: rank,
                task: slot.running.as_ref().map(|r| {
                    (
                        TaskId {
                            slot: rank,
                            number: r.number,
                        },
                        r.label.clone(),
                        r.vm,
                    )
                }),
            };
            if slot.host == spawner.host.0 {
                spawner.slots.push(entry);
            } else if let Some(host) = hosts.iter_mut().find(|h| h.host.0 == slot.host) {
                host.slots.push(entry);
            } else {
                hosts.push(LayoutHost {
                    host: HostId(slot.host.clone()),
                    spawner: false,
                    slots: vec![entry],
                });
            }
        }
        hosts.insert(0, spawner);
        Layout {
            backend: self.shared.backend,
            hosts,
        }
    }

    /// Removes stale and unused task folders in local storage on every host (and on the
    /// spawner's), skipping folders in use unless `force`. Waits at most `timeout` for
    /// busy workers to answer.
    ///
    /// # Errors
    /// The VM was finalized or the transport failed; a host that cannot clear is reported
    /// in the [`ClearReport`], not as an error.
    pub fn clear_local_storage(
        &self,
        force: bool,
        timeout: Duration,
    ) -> Result<ClearReport, Error> {
        self.shared.check_open()?;
        let mut report = ClearReport { hosts: Vec::new() };
        let local = crate::storage::clear_here(&self.shared.config, force);
        report.hosts.push((HostId(self.shared.host.clone()), local));
        let targets: Vec<(u32, String)> = {
            let mut state = self.shared.lock();
            state.cleared.clear();
            let mut seen = Vec::new();
            for (&rank, slot) in &state.slots {
                // The spawner already cleared its own host.
                if slot.host != self.shared.host
                    && !seen.iter().any(|(_, h): &(u32, String)| *h == slot.host)
                {
                    seen.push((rank, slot.host.clone()));
                }
            }
            seen
        };
        for (rank, _) in &targets {
            self.shared.send(*rank, &ToWorker::Clear { force })?;
        }
        let wanted = targets.len();
        let replies = self
            .shared
            .pump(Until::after(timeout), |state| {
                (state.cleared.len() >= wanted).then(|| std::mem::take(&mut state.cleared))
            })?
            .unwrap_or_else(|| std::mem::take(&mut self.shared.lock().cleared));
        for (rank, host) in targets {
            let outcome = replies
                .iter()
                .find(|(r, _)| *r == rank)
                .map(|(_, outcome)| outcome.clone())
                .unwrap_or_else(|| Err(format!("no answer within {timeout:?}")));
            report.hosts.push((HostId(host), outcome));
        }
        Ok(report)
    }

    /// Sends the workers home now; VMs of this runtime fail with [`Error::Finalized`] from
    /// then on. Dropping the last runtime handle and VM does the same.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for backends that can fail here.
    pub fn finalize(self) -> Result<(), Error> {
        self.shared.finalize();
        Ok(())
    }
}

impl RuntimeBuilder {
    /// The configuration; default [`Config::from_env`].
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The number of local workers; default `PARVM_WORKERS`, else the number of cores.
    #[must_use]
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = Some(count);
        self
    }

    /// The transport; default `PARVM_TRANSPORT`, else MPI under `mpirun`, else local.
    #[must_use]
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = Some(kind);
        self
    }

    /// PyOPUS-style debug level for parvm's own logs when `PARVM_LOG` is not set:
    /// 0 warnings (default), 1 info, 2 debug, 3 or more trace.
    #[must_use]
    pub fn debug(mut self, level: u8) -> Self {
        self.debug = Some(level);
        self
    }

    /// The program local workers run, with its arguments; default this executable with
    /// this process's arguments. Tests use it to run a test program as the workers.
    #[must_use]
    pub fn program(mut self, program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        self.program = Some((program.into(), args));
        self
    }

    /// Local workers grouped on simulated hosts (name, workers), for trying multi-host
    /// behaviour on one machine; default: all workers on this host.
    #[must_use]
    pub fn simulated_hosts<S: Into<String>>(
        mut self,
        hosts: impl IntoIterator<Item = (S, usize)>,
    ) -> Self {
        self.hosts = Some(hosts.into_iter().map(|(h, n)| (h.into(), n)).collect());
        self
    }

    /// The storage of the workers on simulated host `host` (see
    /// [`simulated_hosts`](Self::simulated_hosts)): its local root and mirrored roots
    /// (`PARALLEL_LOCAL_STORAGE`, `PARALLEL_MIRRORED_STORAGE`) instead of the runtime's,
    /// so path translation between hosts can be tried on one machine. Mirrored root *i*
    /// of each host should reach the same files (through a symlink, a bind mount, or a
    /// copy made for the test). The rest of `config` is not used. Default: every host
    /// uses the runtime's configuration. Used only with the local transport.
    ///
    /// ```no_run
    /// use parvm_vm::{Config, Runtime, Tasks};
    ///
    /// let beta = Config::builder()
    ///     .local_root("/tmp/beta-local")
    ///     .mirrored_roots(["/tmp/beta-view-of-shared"])
    ///     .build()?;
    /// let runtime = Runtime::builder(Tasks::new())
    ///     .simulated_hosts([("alpha", 2), ("beta", 2)])
    ///     .simulated_host_config("beta", beta)
    ///     .start()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn simulated_host_config(mut self, host: impl Into<String>, config: Config) -> Self {
        self.host_configs.push((host.into(), config));
        self
    }

    /// The address the TCP spawner listens on; default `PARVM_LISTEN`, else
    /// `127.0.0.1:0` (loopback, a free port). Listen on `0.0.0.0:<port>` to accept workers
    /// from other hosts. Used only with the TCP transport.
    #[must_use]
    pub fn tcp_listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The secret TCP workers must prove they know; default the secret file
    /// (`PARVM_SECRET_FILE`, else `~/.parvm/secret`), created with a random secret when
    /// missing. Used only with the TCP transport.
    #[must_use]
    pub fn tcp_secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Makes [`start`](Self::start) wait until `workers` TCP workers have joined, at most
    /// `timeout`; default: no wait (workers join whenever they connect, and VMs see them
    /// as [`Message::HostAdd`](crate::Message::HostAdd)). Used only with the TCP transport.
    #[must_use]
    pub fn tcp_wait_for(mut self, workers: usize, timeout: Duration) -> Self {
        self.wait_for = Some((workers, timeout));
        self
    }

    /// Forwards environment variables `names`, with their values in this process when the
    /// runtime starts, to every worker on every transport, in addition to those listed in
    /// `PARVM_FORWARD_ENV` (names separated by commas or colons). Default: none.
    ///
    /// Local workers inherit the spawner's whole environment anyway; TCP and MPI workers
    /// have the environment of whatever started them, so a variable your tasks or commands
    /// need (a simulator's licence server, `LD_LIBRARY_PATH`) must be forwarded there. A
    /// worker sets the forwarded variables on every command it runs, and, in a worker
    /// process of the program itself, in the process's environment before its first task,
    /// so registered tasks read them with `std::env::var`. A name not set on the spawner is
    /// skipped with a warning.
    ///
    /// ```no_run
    /// use parvm_vm::{Runtime, Tasks};
    ///
    /// let runtime = Runtime::builder(Tasks::new())
    ///     .forward_env(["SPICE_LIB_DIR", "LM_LICENSE_FILE"])
    ///     .start()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn forward_env<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.forward_env.extend(names.into_iter().map(Into::into));
        self
    }

    /// In a worker process: serves spawn requests, then exits the process (never returns).
    /// In the spawner: starts the transport and its workers and returns the runtime.
    ///
    /// The transport is the one set with [`transport`](Self::transport), else
    /// `PARVM_TRANSPORT`, else MPI when the process was started by `mpirun` (and built
    /// with the `mpi` feature), else local. A process is a worker when the local or TCP
    /// transport started it (`PARVM_LOCAL_SOCKET`, `PARVM_CONNECT`) or when it is an MPI
    /// rank other than 0.
    ///
    /// # Errors
    /// The configuration is invalid, a task name is registered twice, the transport
    /// cannot start, MPI is asked for (or `mpirun` started several ranks) in a build
    /// without the `mpi` feature, fewer TCP workers than asked for with
    /// [`tcp_wait_for`](Self::tcp_wait_for) joined in time, or a variable to forward
    /// cannot be ([`Error::ForwardEnv`]).
    pub fn start(self) -> Result<Runtime, Error> {
        self.tasks.check()?;
        let config = match self.config {
            Some(config) => config,
            None => Config::from_env().map_err(Error::Config)?,
        };
        crate::logging::init(config.log_filter(), self.debug, started_as_worker());
        let worker = parvm_transport::local::worker_from_env()
            .map_err(|e| Error::transport("local", e))?
            .map(|t| Box::new(t) as Box<dyn Transport>);
        let worker = match worker {
            Some(worker) => Some(worker),
            None => parvm_transport::tcp::worker_from_env()
                .map_err(|e| Error::transport("tcp", e))?
                .map(|t| Box::new(t) as Box<dyn Transport>),
        };
        if let Some(transport) = worker {
            serve_and_exit(self.tasks, config, transport);
        }
        let mut forward_names = self.forward_env.clone();
        if let Some(list) = std::env::var_os(crate::envfwd::FORWARD_ENV_VAR) {
            let list = list.into_string().map_err(|list| Error::ForwardEnv {
                name: list.to_string_lossy().into_owned(),
                reason: format!("{} is not UTF-8", crate::envfwd::FORWARD_ENV_VAR),
            })?;
            forward_names.extend(crate::envfwd::parse_list(&list));
        }
        let forward = crate::envfwd::collect(&forward_names)?;
        let kind = match self.transport.or(config.transport()) {
            Some(kind) => kind,
            // A build without MPI runs a one-rank mpirun job locally; several ranks get
            // the error that says to build with the feature.
            None if mpi_launch_size().is_some_and(|size| cfg!(feature = "mpi") || size > 1) => {
                TransportKind::Mpi
            }
            None => TransportKind::Local,
        };
        let transport: Box<dyn Transport> = match kind {
            TransportKind::Local => {
                if let Some(size) = mpi_launch_size().filter(|&size| size > 1) {
                    tracing::warn!(
                        "started by mpirun with {size} ranks but running the local transport: every rank is a spawner of its own"
                    );
                }
                let workers = self
                    .workers
                    .or(config.workers())
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let hosts = self
                    .hosts
                    .unwrap_or_else(|| vec![(config.hostname().to_owned(), workers)]);
                if let Some((unknown, _)) = self
                    .host_configs
                    .iter()
                    .find(|(name, _)| !hosts.iter().any(|(host, _)| host == name))
                {
                    let known: Vec<&str> = hosts.iter().map(|(host, _)| host.as_str()).collect();
                    return Err(Error::Setting {
                        setting: "simulated_host_config",
                        reason: format!(
                            "`{unknown}` is not a simulated host (hosts: {}); name it in `simulated_hosts` too",
                            known.join(", ")
                        ),
                    });
                }
                let env = worker_env(&config, self.debug);
                let mut simulated = Vec::with_capacity(hosts.len());
                for (name, workers) in hosts {
                    let env = match self.host_configs.iter().rev().find(|(h, _)| *h == name) {
                        Some((_, own)) => host_env(&name, own, &config, self.debug)?,
                        None => env.clone(),
                    };
                    simulated.push(parvm_transport::local::SimulatedHost { name, workers, env });
                }
                let mut options = parvm_transport::local::LocalOptions::hosts(simulated)
                    .spawner_host(config.hostname());
                if let Some((program, args)) = self.program {
                    options = options.program(program, args);
                }
                Box::new(
                    parvm_transport::local::LocalTransport::launch(options)
                        .map_err(|e| Error::transport("local", e))?,
                )
            }
            TransportKind::Tcp => {
                let secret = match self.secret {
                    Some(secret) => secret,
                    None => {
                        let path =
                            Secret::default_path().map_err(|e| Error::transport("tcp", e))?;
                        Secret::load_or_create(&path).map_err(|e| Error::transport("tcp", e))?
                    }
                };
                let addr = match self.listen {
                    Some(addr) => addr,
                    None => listen_from_env()?,
                };
                let transport = TcpTransport::listen(
                    TcpOptions::new(secret).addr(addr).host(config.hostname()),
                )
                .map_err(|e| Error::transport("tcp", e))?;
                let bound = transport.local_addr().unwrap_or(addr);
                let connect = connect_address(bound, config.hostname());
                tracing::info!(listen = %bound, "tcp spawner listening");
                eprintln!(
                    "parvm: tcp spawner listening on {bound}; start workers with {}={connect} (same secret file, {} or ~/.parvm/secret)",
                    parvm_transport::tcp::CONNECT_VAR,
                    parvm_transport::tcp::SECRET_FILE_VAR,
                );
                let runtime =
                    Runtime::with_forward(Box::new(transport), self.tasks, config, forward)?;
                let runtime = Runtime {
                    listen: Some(bound),
                    ..runtime
                };
                if let Some((workers, timeout)) = self.wait_for {
                    runtime.wait_for_workers(workers, timeout)?;
                }
                return Ok(runtime);
            }
            TransportKind::Mpi => return start_mpi(self.tasks, config, forward),
        };
        Runtime::with_forward(transport, self.tasks, config, forward)
    }
}

/// Whether a transport started this process as a worker (local, TCP, or an MPI rank other
/// than 0), judged from its environment before joining, so logging is set up first.
fn started_as_worker() -> bool {
    const MPI_RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];
    std::env::var_os(parvm_transport::local::SOCKET_VAR).is_some()
        || std::env::var_os(parvm_transport::tcp::CONNECT_VAR).is_some_and(|v| !v.is_empty())
        || MPI_RANK_VARS.iter().any(|var| {
            std::env::var(var)
                .ok()
                .and_then(|rank| rank.trim().parse::<u32>().ok())
                .is_some_and(|rank| rank != 0)
        })
}

/// Runs the spawn loop in this worker process and exits the process.
fn serve_and_exit(tasks: Tasks, config: Config, transport: Box<dyn Transport>) -> ! {
    let code = match Worker::new(tasks, config)
        .capture_output(true)
        .serve(transport)
    {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "worker failed");
            1
        }
    };
    std::process::exit(code);
}

/// MPI: rank 0 becomes the spawner, every other rank serves and exits.
#[cfg(feature = "mpi")]
fn start_mpi(
    tasks: Tasks,
    config: Config,
    forward: Vec<crate::envfwd::Var>,
) -> Result<Runtime, Error> {
    let transport = parvm_transport::mpi::MpiTransport::init()
        .map_err(|e| Error::transport("mpi", e))?
        .leave_on_drop(true);
    if transport.rank() != 0 {
        // The output-forwarding thread keeps its handle on the transport until the
        // process ends, but MPI must be finalised before that: the worker serves through
        // a handle that can be closed under it.
        let closable = parvm_transport::mpi::Closable::new(transport);
        let code = match Worker::new(tasks, config)
            .capture_output(true)
            .serve(Box::new(closable.clone()))
        {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "worker failed");
                1
            }
        };
        closable.close();
        std::process::exit(code);
    }
    let peers = transport.peers();
    for peer in &peers {
        tracing::info!(rank = peer.rank, host = %peer.host, "mpi rank");
    }
    if peers.len() < 2 {
        tracing::warn!(
            "mpi: this job has a single rank, so there are no workers; start it with `mpirun -n <1 + workers>`"
        );
    }
    Runtime::with_forward(Box::new(transport), tasks, config, forward)
}

/// MPI without the `mpi` feature: a clear error instead of N independent spawners.
#[cfg(not(feature = "mpi"))]
fn start_mpi(
    _tasks: Tasks,
    _config: Config,
    _forward: Vec<crate::envfwd::Var>,
) -> Result<Runtime, Error> {
    let why = match mpi_launch_size() {
        Some(size) => format!("this process was started by mpirun ({size} ranks)"),
        None => "PARVM_TRANSPORT=mpi asks for it".to_owned(),
    };
    Err(Error::Setting {
        setting: "transport",
        reason: format!(
            "the MPI transport is not built into this program but {why}; build it with `--features mpi` (the `mpi` feature of parvm or parvm-vm), or set PARVM_TRANSPORT=local or tcp"
        ),
    })
}

/// The number of ranks when an MPI launcher started this process (Open MPI, MPICH/PMI,
/// PMIx), read from its environment; `None` when no launcher did, or it started one rank
/// of one process (then there is nothing to distribute).
fn mpi_launch_size() -> Option<usize> {
    const SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];
    const RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];
    let size = SIZE_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok()?.trim().parse::<usize>().ok());
    match size {
        Some(size) => Some(size),
        // A launcher that sets a rank but no size we know of: assume several ranks.
        None if RANK_VARS.iter().any(|var| std::env::var_os(var).is_some()) => Some(2),
        None => None,
    }
}

/// `PARVM_LISTEN`, else loopback with a free port.
fn listen_from_env() -> Result<SocketAddr, Error> {
    let Some(value) = std::env::var_os(LISTEN_VAR).filter(|v| !v.is_empty()) else {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    };
    let bad = |reason: String| Error::Setting {
        setting: LISTEN_VAR,
        reason,
    };
    let text = value
        .to_str()
        .ok_or_else(|| bad(format!("`{}` is not UTF-8", value.to_string_lossy())))?;
    text.to_socket_addrs()
        .map_err(|e| {
            bad(format!(
                "`{text}` is not an address to listen on ({e}); use host:port, e.g. 0.0.0.0:7070"
            ))
        })?
        .next()
        .ok_or_else(|| {
            bad(format!(
                "`{text}` resolves to no address; use host:port, e.g. 0.0.0.0:7070"
            ))
        })
}

/// The address workers connect to: the bound one, or this host's name and the port when
/// bound to every interface.
fn connect_address(bound: SocketAddr, host: &str) -> String {
    if bound.ip().is_unspecified() {
        format!("{host}:{}", bound.port())
    } else {
        bound.to_string()
    }
}

/// The variable naming the address a TCP spawner listens on.
pub(crate) const LISTEN_VAR: &str = "PARVM_LISTEN";

/// The environment local workers get, so they use the spawner's storage settings even
/// when the spawner's configuration was built by hand.
fn worker_env(config: &Config, debug: Option<u8>) -> Vec<(OsString, OsString)> {
    let mut env = vec![(
        OsString::from("PARALLEL_LOCAL_STORAGE"),
        config.local_root().as_os_str().to_owned(),
    )];
    let roots = config.mirrored_roots();
    if !roots.is_empty()
        && roots
            .iter()
            .all(|r| !r.as_os_str().as_encoded_bytes().contains(&b':'))
    {
        let joined = std::env::join_paths(roots).unwrap_or_default();
        env.push((OsString::from("PARALLEL_MIRRORED_STORAGE"), joined));
    }
    if let Some(filter) = crate::logging::filter(config.log_filter(), debug) {
        env.push((OsString::from("PARVM_LOG"), OsString::from(filter)));
    }
    env
}

/// The environment of the workers on simulated host `host`, whose storage settings come
/// from `own`; refused when its mirrored roots cannot be written as one
/// `PARALLEL_MIRRORED_STORAGE` (a root holding `:`), since they would silently not apply.
fn host_env(
    host: &str,
    own: &Config,
    config: &Config,
    debug: Option<u8>,
) -> Result<Vec<(OsString, OsString)>, Error> {
    let roots = own.mirrored_roots();
    if roots.is_empty() {
        // An empty PARALLEL_MIRRORED_STORAGE is refused by the workers, and leaving it out
        // would give them the spawner's roots.
        return Err(Error::Setting {
            setting: "simulated_host_config",
            reason: format!(
                "simulated host `{host}` has no mirrored roots; give its configuration `mirrored_roots`"
            ),
        });
    }
    if let Some(root) = roots
        .iter()
        .find(|r| r.as_os_str().as_encoded_bytes().contains(&b':'))
    {
        return Err(Error::Setting {
            setting: "simulated_host_config",
            reason: format!(
                "mirrored root `{}` of simulated host `{host}` holds `:`, which PARALLEL_MIRRORED_STORAGE cannot carry; use a path (or a symlink) without `:`",
                root.display()
            ),
        });
    }
    let mut env = vec![
        (
            OsString::from("PARALLEL_LOCAL_STORAGE"),
            own.local_root().as_os_str().to_owned(),
        ),
        (
            OsString::from("PARALLEL_MIRRORED_STORAGE"),
            std::env::join_paths(roots).unwrap_or_default(),
        ),
    ];
    if let Some(filter) = crate::logging::filter(config.log_filter(), debug) {
        env.push((OsString::from("PARVM_LOG"), OsString::from(filter)));
    }
    Ok(env)
}

/// Builds a [`Vm`]: mirror map, startup folder, persistent storage.
pub struct VmBuilder {
    shared: Arc<Shared>,
    listen: Option<SocketAddr>,
    mirror: Vec<(String, PathBuf)>,
    startup: Option<PathBuf>,
    persistent: bool,
    clean: bool,
    local_folder: bool,
}

impl VmBuilder {
    /// Copies what `source` (a path or glob on the spawner, inside mirrored storage;
    /// relative to the current folder) matches into folder `target` of each task folder.
    /// Default: no mirroring. Entries apply in the order given.
    #[must_use]
    pub fn mirror(mut self, source: impl Into<String>, target: impl Into<PathBuf>) -> Self {
        self.mirror.push((source.into(), target.into()));
        self
    }

    /// Where tasks start. With a task folder (a mirror map, persistent or local folder)
    /// it is relative to the task folder; without one it is a folder on the spawner,
    /// translated through mirrored storage to each host. Default: the task folder, or the
    /// worker's own current folder.
    #[must_use]
    pub fn startup_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.startup = Some(dir.into());
        self
    }

    /// Whether a worker keeps its task folder for the next task of this VM; default false.
    /// Mirrored files that changed at the source are copied again before reuse.
    #[must_use]
    pub fn persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }

    /// Whether a reused persistent folder is cleaned first: what earlier tasks of this VM
    /// wrote in it (their results, scratch files and folders, symlinks) is removed, and the
    /// mirrored inputs stay (and are refreshed as with [`persistent`](Self::persistent)),
    /// so no task reads an earlier task's `result.txt` as its own. Turning it on makes the
    /// folders persistent. Default false: a reused folder keeps what tasks wrote.
    ///
    /// The folder's tree is listed after mirroring, before each task, and anything not in
    /// that list is removed before the next task; symlinks are removed, never followed.
    /// It costs one walk of the folder per task.
    #[must_use]
    pub fn persistent_clean(mut self, on: bool) -> Self {
        self.clean = on;
        if on {
            self.persistent = true;
        }
        self
    }

    /// Whether each task gets a (fresh) folder in local storage even without a mirror map;
    /// default false.
    #[must_use]
    pub fn local_folder(mut self, on: bool) -> Self {
        self.local_folder = on;
        self
    }

    /// Checks the settings and builds the VM.
    ///
    /// # Errors
    /// A mirror source is outside mirrored storage or the map is invalid, a literal mirror
    /// source (no `*`, `?` or `[`) does not exist on the spawner
    /// ([`Error::MirrorSourceMissing`]; a glob that matches nothing is not an error), or the
    /// startup folder is absolute while a task folder is used.
    pub fn build(self) -> Result<Vm, Error> {
        self.shared.check_open()?;
        let folder = self.persistent || self.local_folder || !self.mirror.is_empty();
        let mirror = if self.mirror.is_empty() {
            None
        } else {
            Some(crate::storage::encode_map(
                &self.shared.config,
                &self.mirror,
            )?)
        };
        let startup = match self.startup {
            None => None,
            Some(dir) if folder => {
                if dir.is_absolute()
                    || dir
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(Error::Setting {
                        setting: "startup_dir",
                        reason: format!(
                            "`{}` must be relative to the task folder and stay inside it, because the VM uses task folders",
                            dir.display()
                        ),
                    });
                }
                Some(Startup::InFolder(dir))
            }
            Some(dir) => Some(translate_startup(&self.shared.config, &dir)?),
        };
        let index = self.shared.next_vm.fetch_add(1, Ordering::Relaxed);
        self.shared
            .lock()
            .inboxes
            .insert(index, std::collections::VecDeque::new());
        Ok(Vm {
            shared: self.shared,
            listen: self.listen,
            index,
            mirror,
            folder,
            persistent: self.persistent,
            clean: self.clean,
            startup,
        })
    }
}

fn translate_startup(config: &Config, dir: &Path) -> Result<Startup, Error> {
    let absolute = std::fs::canonicalize(dir).map_err(|source| Error::Io {
        what: "resolve the startup folder",
        path: dir.to_owned(),
        source,
    })?;
    for (index, root) in config.mirrored_roots().iter().enumerate() {
        if let Ok(suffix) = absolute.strip_prefix(root) {
            return Ok(Startup::Mirrored(index, suffix.to_owned()));
        }
    }
    tracing::debug!(dir = %absolute.display(), "startup folder is outside mirrored storage; used as is on every host");
    Ok(Startup::Literal(absolute))
}

/// A virtual machine object: spawns tasks with its own mirror map and storage settings,
/// and receives the messages of the tasks it spawned.
pub struct Vm {
    shared: Arc<Shared>,
    listen: Option<SocketAddr>,
    index: u32,
    mirror: Option<Vec<u8>>,
    folder: bool,
    persistent: bool,
    clean: bool,
    startup: Option<Startup>,
}

impl Vm {
    /// This VM's index (distinct for every VM of the process; names its task folders).
    #[must_use]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The runtime this VM belongs to.
    #[must_use]
    pub fn runtime(&self) -> Runtime {
        Runtime {
            shared: Arc::clone(&self.shared),
            listen: self.listen,
        }
    }

    /// See [`Runtime::hosts`].
    #[must_use]
    pub fn hosts(&self) -> Vec<HostId> {
        self.runtime().hosts()
    }

    /// See [`Runtime::slots`].
    #[must_use]
    pub fn slots(&self) -> usize {
        self.runtime().slots()
    }

    /// See [`Runtime::free_slots`].
    #[must_use]
    pub fn free_slots(&self) -> usize {
        self.runtime().free_slots()
    }

    /// The spawner's own task id, `0:0`.
    #[must_use]
    pub fn task_id(&self) -> TaskId {
        TaskId::SPAWNER
    }

    /// The spawner's host.
    #[must_use]
    pub fn host_id(&self) -> HostId {
        HostId(self.shared.host.clone())
    }

    /// The host a task runs on, if its slot is known.
    #[must_use]
    pub fn host_of(&self, task: TaskId) -> Option<HostId> {
        if task.slot == 0 {
            return Some(self.host_id());
        }
        self.shared
            .lock()
            .slots
            .get(&task.slot)
            .map(|slot| HostId(slot.host.clone()))
    }

    /// The spawner has no parent.
    #[must_use]
    pub fn parent_task_id(&self) -> Option<TaskId> {
        None
    }

    /// See [`Runtime::describe`].
    #[must_use]
    pub fn describe(&self) -> Layout {
        self.runtime().describe()
    }

    /// See [`Runtime::clear_local_storage`].
    ///
    /// # Errors
    /// As [`Runtime::clear_local_storage`].
    pub fn clear_local_storage(
        &self,
        force: bool,
        timeout: Duration,
    ) -> Result<ClearReport, Error> {
        self.runtime().clear_local_storage(force, timeout)
    }

    /// Spawns tasks on free slots and returns their ids; fewer than asked (or none) when
    /// fewer slots are free.
    ///
    /// # Errors
    /// The task is not registered or its arguments have the wrong type (nothing is sent),
    /// the VM was finalized, or the transport failed.
    pub fn spawn(&self, spawn: Spawn) -> Result<Vec<TaskId>, Error> {
        self.shared.check_open()?;
        let (label, returns, job) = match &spawn.job {
            JobSpec::Function {
                name,
                args,
                args_type,
            } => {
                let entry = self.shared.tasks.lookup(name, *args_type)?;
                let args = args.as_ref().map_err(|reason| Error::Setting {
                    setting: "spawn arguments",
                    reason: format!("cannot encode the arguments of task `{name}`: {reason}"),
                })?;
                (
                    name.clone(),
                    Some(entry.returns),
                    Job::Function {
                        name: name.as_str().into(),
                        args: args.as_slice().into(),
                    },
                )
            }
            JobSpec::Command { program, args, env } => (
                program.clone(),
                Some((
                    std::any::TypeId::of::<crate::CommandStatus>(),
                    std::any::type_name::<crate::CommandStatus>(),
                )),
                Job::Command {
                    program: program.clone(),
                    args: args.clone(),
                    env: env.clone(),
                },
            ),
        };
        let chosen: Vec<(u32, u64)> = {
            let mut state = self.shared.lock();
            let mut chosen = Vec::new();
            for (&rank, slot) in &mut state.slots {
                if chosen.len() >= spawn.count {
                    break;
                }
                if slot.running.is_some() {
                    continue;
                }
                if let Some(hosts) = &spawn.hosts
                    && !hosts.iter().any(|h| h.0 == slot.host)
                {
                    continue;
                }
                let number = self.shared.next_number.fetch_add(1, Ordering::Relaxed);
                slot.running = Some(Running {
                    number,
                    vm: self.index,
                    label: label.clone(),
                    send_back: spawn.send_back,
                    returns,
                    ended: false,
                });
                chosen.push((rank, number));
            }
            chosen
        };
        let mut frame = ToWorker::Spawn(SpawnRequest {
            number: 0,
            vm: self.index,
            job,
            mirror: self.mirror.as_deref().map(Into::into),
            folder: self.folder,
            persistent: self.persistent,
            clean: self.clean,
            startup: self.startup.clone(),
            send_back: spawn.send_back,
        });
        let mut ids = Vec::with_capacity(chosen.len());
        for (rank, number) in chosen {
            if let ToWorker::Spawn(request) = &mut frame {
                request.number = number;
            }
            if let Err(e) = self.shared.send(rank, &frame) {
                // The worker is gone; its loss arrives as an event and fails the task.
                tracing::debug!(rank, error = %e, "cannot send a spawn request");
            }
            ids.push(TaskId { slot: rank, number });
        }
        Ok(ids)
    }

    /// Waits for the next message for this VM.
    ///
    /// # Errors
    /// The VM was finalized or the transport failed; [`Error::WorkersGone`] at once, after
    /// the messages already received, when every worker is gone and the transport starts
    /// no new ones (local, MPI), since nothing could ever arrive. On TCP, where workers
    /// may connect at any time, it keeps waiting.
    pub fn recv(&self) -> Result<Message, Error> {
        loop {
            if let Some(message) = self.next(Until::Forever)? {
                return Ok(message);
            }
        }
    }

    /// Waits at most `timeout`; `Ok(None)` when nothing came.
    ///
    /// # Errors
    /// As [`Vm::recv`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Message>, Error> {
        self.next(Until::after(timeout))
    }

    /// Returns a message that has already arrived, else `Ok(None)`.
    ///
    /// # Errors
    /// As [`Vm::recv`].
    pub fn try_recv(&self) -> Result<Option<Message>, Error> {
        self.next(Until::Now)
    }

    fn next(&self, until: Until) -> Result<Option<Message>, Error> {
        self.shared.check_open()?;
        let index = self.index;
        let shared = &self.shared;
        let found = self.shared.pump(until, |state| {
            let Some(message) = state.inboxes.get_mut(&index).and_then(VecDeque::pop_front) else {
                // Messages of lost workers were filed before their loss, so an empty inbox
                // with no worker left stays empty.
                return shared.nothing_can_arrive(state).map(Err);
            };
            if let Message::TaskExit { task, .. } = &message
                && let Some(slot) = state.slots.get_mut(&task.slot)
                && slot
                    .running
                    .as_ref()
                    .is_some_and(|r| r.number == task.number)
            {
                slot.running = None;
            }
            Some(Ok(message))
        })?;
        found.transpose()
    }

    /// Sends `value` (MessagePack) to task `to`; decode with [`Payload::decode`](crate::Payload::decode).
    ///
    /// # Errors
    /// The value cannot be encoded, the VM was finalized, or the transport failed. A
    /// message to a task that has ended is dropped, not an error.
    pub fn send<T: Serialize>(&self, to: TaskId, value: &T) -> Result<(), Error> {
        let data = rmp_serde::to_vec(value).map_err(|source| Error::Encode {
            what: format!("a message to task {to}"),
            source,
        })?;
        self.send_bytes(to, &data)
    }

    /// Sends raw bytes to task `to`.
    ///
    /// # Errors
    /// As [`Vm::send`].
    pub fn send_bytes(&self, to: TaskId, data: &[u8]) -> Result<(), Error> {
        self.shared.check_open()?;
        if to.slot == 0 {
            if let Some(inbox) = self.shared.lock().inboxes.get_mut(&self.index) {
                inbox.push_back(Message::User {
                    from: TaskId::SPAWNER,
                    data: crate::Payload::from_vec(data.to_vec()),
                });
            }
            return Ok(());
        }
        if !is_live(&self.shared.lock(), to) {
            tracing::debug!(to = %to, "dropping a message for a task that has ended");
            return Ok(());
        }
        self.shared.send_with_tail(
            to.slot,
            &ToWorker::User {
                from: TaskId::SPAWNER,
                to: to.number,
                data: (&[][..]).into(),
            },
            data,
        )
    }

    /// Releases this VM: its pending messages are dropped, its running tasks finish
    /// unobserved, and workers drop its persistent folders. Dropping the VM does the same.
    pub fn finalize(self) {}
}

impl Drop for Vm {
    fn drop(&mut self) {
        let ranks: Vec<u32> = {
            let mut state = self.shared.lock();
            state.inboxes.remove(&self.index);
            for slot in state.slots.values_mut() {
                if slot
                    .running
                    .as_ref()
                    .is_some_and(|r| r.vm == self.index && r.ended)
                {
                    slot.running = None;
                }
            }
            state.slots.keys().copied().collect()
        };
        if self.persistent && !self.shared.finalized.load(Ordering::Acquire) {
            for rank in ranks {
                let _ = self
                    .shared
                    .send(rank, &ToWorker::ForgetVm { vm: self.index });
            }
        }
    }
}

/// What [`Runtime::clear_local_storage`] did on each host.
#[derive(Debug, Clone)]
pub struct ClearReport {
    /// Per host: how many folders were removed, or why clearing failed.
    pub hosts: Vec<(HostId, Result<u64, String>)>,
}

impl fmt::Display for ClearReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (host, outcome) in &self.hosts {
            match outcome {
                Ok(removed) => writeln!(f, "{host}: removed {removed} folder(s)")?,
                Err(reason) => writeln!(f, "{host}: failed: {reason}")?,
            }
        }
        Ok(())
    }
}

/// Hosts, slots and running tasks, from [`Runtime::describe`].
#[derive(Debug, Clone)]
pub struct Layout {
    /// The transport backend.
    pub backend: &'static str,
    /// The hosts, the spawner's first.
    pub hosts: Vec<LayoutHost>,
}

/// One host in a [`Layout`].
#[derive(Debug, Clone)]
pub struct LayoutHost {
    /// The host.
    pub host: HostId,
    /// Whether the spawner runs on it.
    pub spawner: bool,
    /// Its worker slots.
    pub slots: Vec<LayoutSlot>,
}

/// One worker slot in a [`Layout`].
#[derive(Debug, Clone)]
pub struct LayoutSlot {
    /// The slot number.
    pub slot: u32,
    /// The task in it: id, task name or program, VM index.
    pub task: Option<(TaskId, String, u32)>,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "transport: {}", self.backend)?;
        for host in &self.hosts {
            let free: Vec<String> = host
                .slots
                .iter()
                .filter(|s| s.task.is_none())
                .map(|s| s.slot.to_string())
                .collect();
            writeln!(
                f,
                "host {}{}: {} worker slot(s), free: [{}]",
                host.host,
                if host.spawner {
                    " (spawner, slot 0)"
                } else {
                    ""
                },
                host.slots.len(),
                free.join(", ")
            )?;
            for slot in &host.slots {
                if let Some((task, label, vm)) = &slot.task {
                    writeln!(
                        f,
                        "  slot {:>3}: task {task} `{label}` (vm {vm})",
                        slot.slot
                    )?;
                }
            }
        }
        Ok(())
    }
}

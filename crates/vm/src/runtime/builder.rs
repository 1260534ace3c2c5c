//! How the spawner's runtime starts: the configuration, the transport chosen and its
//! options, the workers it launches and the environment they get.
//!
//! It must not know what a worker does once started (that is [`crate::launch`] and
//! [`crate::Worker`]) nor what the runtime offers afterwards.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use parvm_env_config::{CONNECT_VAR, Config, SECRET_FILE_VAR, TransportKind};
use parvm_transport::tcp::{ConnectOptions, Secret, TcpOptions, TcpTransport};
use parvm_transport::{DEFAULT_SPIN_WINDOW, Transport};

use super::Runtime;
use super::backend::{Backend, TcpSpawner};
use parvm_transport::launcher::launch_size as mpi_launch_size;
use parvm_transport::started_as_worker;

use crate::launch::{LeaveOn, serve_and_exit, start_mpi};
use crate::{Error, Tasks};

/// How [`Runtime`] starts: transport, worker count, configuration, log level.
pub struct RuntimeBuilder {
    tasks: Tasks,
    config: Option<Config>,
    workers: Option<usize>,
    backend: Option<Backend>,
    debug: Option<u8>,
    program: Option<(PathBuf, Vec<String>)>,
    hosts: Option<Vec<(String, usize)>>,
    host_configs: Vec<(String, Config)>,
    forward_env: Vec<String>,
    replace_workers: Option<u32>,
}

/// Replacement workers per local slot when neither
/// [`RuntimeBuilder::replace_workers`] nor `PARVM_REPLACE_WORKERS` says.
const DEFAULT_REPLACE_WORKERS: u32 = 3;

impl RuntimeBuilder {
    /// A builder with the defaults, for a runtime running `tasks`.
    pub(super) fn new(tasks: Tasks) -> RuntimeBuilder {
        RuntimeBuilder {
            tasks,
            config: None,
            workers: None,
            backend: None,
            debug: None,
            program: None,
            hosts: None,
            host_configs: Vec::new(),
            forward_env: Vec::new(),
            replace_workers: None,
        }
    }

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

    /// The transport by name, with its settings from the configuration: the same as
    /// [`backend`](Self::backend) with `kind.into()`. Default: `PARVM_TRANSPORT`, else MPI
    /// under `mpirun`, else local.
    #[must_use]
    pub fn transport(self, kind: TransportKind) -> Self {
        self.backend(kind.into())
    }

    /// The transport and its own settings, such as where a TCP spawner listens
    /// ([`TcpSpawner`]); the last of `backend` and [`transport`](Self::transport) wins.
    /// Default: `PARVM_TRANSPORT`, else MPI under `mpirun`, else local, each with its
    /// settings from the configuration.
    ///
    /// ```no_run
    /// use parvm_vm::{Backend, Runtime, Tasks, TcpSpawner};
    ///
    /// let runtime = Runtime::builder(Tasks::new())
    ///     .backend(Backend::Tcp(TcpSpawner::new().listen("0.0.0.0:7070".parse()?)))
    ///     .start()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
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
    /// copy made for the test), or be shipped there (`PARVM_SHIP`, which the runtime's
    /// configuration decides). The host's cache limit (`PARVM_CACHE_MAX`) applies to its
    /// workers too; the rest of `config` is not used. Default: every host uses the
    /// runtime's configuration. Used only with the local transport.
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

    /// How many times the local transport replaces the worker of a slot when it dies
    /// (killed, crashed, or exited to stop its function task, see
    /// [`Vm::stop`](crate::Vm::stop)); default `PARVM_REPLACE_WORKERS`, else 3; `0` never
    /// replaces. The replacement is a new worker process with a new rank on the same
    /// (simulated) host with the same variables; VMs see it as a new slot and, when its
    /// host had no worker left, a [`Message::HostAdd`](crate::Message::HostAdd). A slot
    /// whose replacements are used up is gone for good, so a worker that crashes at once
    /// every time ends in [`Error::WorkersGone`] instead of a loop; a worker stopped by
    /// [`Vm::stop`](crate::Vm::stop) is replaced without counting, and one that exits with
    /// status 0 (a task calling `exit(0)`) is not replaced. Each replacement is logged as
    /// a warning and counted in [`Runtime::replaced_workers`]. Used only with the local
    /// transport: TCP workers rejoin by connecting again, and MPI ends the job when a
    /// rank dies (see docs/transports.md).
    #[must_use]
    pub fn replace_workers(mut self, per_slot: u32) -> Self {
        self.replace_workers = Some(per_slot);
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
    /// The transport is the one set with [`backend`](Self::backend) or
    /// [`transport`](Self::transport), else `PARVM_TRANSPORT`, else MPI when the process
    /// was started by `mpirun` (and built with the `mpi` feature), else local. A process is a worker when the local or TCP
    /// transport started it (`PARVM_LOCAL_SOCKET`, `PARVM_CONNECT`) or when it is an MPI
    /// rank other than 0.
    ///
    /// # Errors
    /// The configuration is invalid, a task name is registered twice, the transport
    /// cannot start, MPI is asked for (or `mpirun` started several ranks) in a build
    /// without the `mpi` feature, fewer TCP workers than asked for with
    /// [`TcpSpawner::wait_for`] joined in time, or a variable to forward
    /// cannot be ([`Error::ForwardEnv`]).
    pub fn start(mut self) -> Result<Runtime, Error> {
        self.tasks.check()?;
        let given = self.config.is_some();
        let config = match self.config.take() {
            Some(config) => config,
            // A worker's host needs none of the spawner's mirrored folders: what it lacks
            // is shipped.
            None if started_as_worker()
                || Config::connect_from_env().is_ok_and(|c| c.is_some()) =>
            {
                Config::from_env_as_worker().map_err(Error::Config)?
            }
            None => Config::from_env().map_err(Error::Config)?,
        };
        let tcp_join = tcp_join_config(&config, given)?;
        crate::logging::init(
            config.log_filter(),
            self.debug,
            config.no_color(),
            started_as_worker() || tcp_join.is_some(),
        );
        let worker = parvm_transport::local::worker_from_env()
            .map_err(|e| Error::transport("local", e))?
            .map(|t| Box::new(t) as Box<dyn Transport>);
        // A worker that joined over TCP was started by hand or by a batch system, which
        // asks it to leave with a signal; a local worker's signals are its spawner's too,
        // but for the one its spawner's death sends it.
        let worker = match (worker, tcp_join) {
            (Some(worker), _) => Some((worker, LeaveOn::SpawnerDeath)),
            (None, Some(join)) => Some((
                Box::new(join_tcp(&join)?) as Box<dyn Transport>,
                LeaveOn::Signals,
            )),
            (None, None) => None,
        };
        if let Some((transport, leave_on)) = worker {
            serve_and_exit(self.tasks, config, transport, leave_on);
        }
        let mut forward_names = self.forward_env.clone();
        // PARVM_FORWARD_ENV, read and split by env-config.
        forward_names.extend(config.forward_env().iter().cloned());
        let forward = crate::envfwd::collect(&forward_names)?;
        let transport: Box<dyn Transport> = match self.choose(&config) {
            Backend::Local => Box::new(self.launch_local(&config)?),
            Backend::Tcp(tcp) => {
                let wait_for = tcp.wait_for;
                let (transport, bound) = Self::listen_tcp(tcp, &config)?;
                let runtime =
                    Runtime::with_forward(Box::new(transport), self.tasks, config, forward)?;
                let runtime = Runtime {
                    listen: Some(bound),
                    ..runtime
                };
                if let Some((workers, timeout)) = wait_for {
                    runtime.wait_for_workers(workers, timeout)?;
                }
                return Ok(runtime);
            }
            Backend::Mpi => start_mpi(&self.tasks, &config)?,
        };
        Runtime::with_forward(transport, self.tasks, config, forward)
    }

    /// The transport chosen: the one set, else `PARVM_TRANSPORT`, else MPI under
    /// `mpirun`, else local.
    fn choose(&mut self, config: &Config) -> Backend {
        if let Some(backend) = self.backend.take() {
            return backend;
        }
        match config.transport() {
            Some(kind) => kind.into(),
            // A build without MPI runs a one-rank mpirun job locally; several ranks get
            // the error that says to build with the feature.
            None if mpi_launch_size().is_some_and(|size| cfg!(feature = "mpi") || size > 1) => {
                Backend::Mpi
            }
            None => Backend::Local,
        }
    }

    /// Starts the local workers, on their simulated hosts, with the spawner's storage
    /// settings (or their host's own) in their environment.
    fn launch_local(
        &mut self,
        config: &Config,
    ) -> Result<parvm_transport::local::LocalTransport, Error> {
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
            .take()
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
        let env = worker_env(config, self.debug);
        let mut simulated = Vec::with_capacity(hosts.len());
        for (name, workers) in hosts {
            let env = match self.host_configs.iter().rev().find(|(h, _)| *h == name) {
                Some((_, own)) => host_env(&name, own, config, self.debug)?,
                None => env.clone(),
            };
            simulated.push(parvm_transport::local::SimulatedHost { name, workers, env });
        }
        let replacements = self
            .replace_workers
            .or(config.replace_workers())
            .unwrap_or(DEFAULT_REPLACE_WORKERS);
        let mut options = parvm_transport::local::LocalOptions::hosts(simulated)
            .spawner_host(config.hostname())
            .spin_window(spin_window(config))
            .replacements(replacements);
        if let Some((program, args)) = self.program.take() {
            options = options.program(program, args);
        }
        if let Some(timeout) = config.peer_timeout() {
            options = options.peer_timeout(timeout);
        }
        parvm_transport::local::LocalTransport::launch(options)
            .map_err(|e| Error::transport("local", e))
    }

    /// Listens for TCP workers with the settings of `tcp`, else those of `config`, and tells
    /// the user how to start workers; returns the bound address too.
    fn listen_tcp(tcp: TcpSpawner, config: &Config) -> Result<(TcpTransport, SocketAddr), Error> {
        let secret = match tcp.secret {
            Some(secret) => secret,
            None => {
                let path = config.secret_file().map_err(Error::Config)?;
                Secret::load_or_create(path).map_err(|e| Error::transport("tcp", e))?
            }
        };
        let addr = match tcp.listen {
            Some(addr) => addr,
            None => config.listen_addr().map_err(Error::Config)?,
        };
        let mut options = TcpOptions::new(secret)
            .addr(addr)
            .host(config.hostname())
            .spin_window(spin_window(config));
        if let Some(bytes) = tcp.max_frame.or(config.max_frame()) {
            options = options.max_frame(bytes);
        }
        if let Some(timeout) = tcp.handshake_timeout.or(config.handshake_timeout()) {
            options = options.handshake_timeout(timeout);
        }
        if let Some(timeout) = tcp.peer_timeout.or(config.peer_timeout()) {
            options = options.peer_timeout(timeout);
        }
        let transport = TcpTransport::listen(options).map_err(|e| Error::transport("tcp", e))?;
        let bound = transport.local_addr().unwrap_or(addr);
        let connect = connect_address(bound, config.hostname());
        tracing::info!(listen = %bound, "tcp spawner listening");
        crate::logging::say(&format!(
            "parvm: tcp spawner listening on {bound}; start workers with {CONNECT_VAR}={connect} (same secret file, {SECRET_FILE_VAR} or ~/.parvm/secret)",
        ));
        Ok((transport, bound))
    }
}

/// The spin window of `config` (`PARVM_SPIN_US`), else the transport's default.
fn spin_window(config: &Config) -> Duration {
    config.spin_window().unwrap_or(DEFAULT_SPIN_WINDOW)
}

/// The configuration this process joins a TCP spawner with, when it was started as a TCP
/// worker: the runtime's own when it names a spawner (`PARVM_CONNECT` for
/// [`Config::from_env`]); for a configuration built by hand that names none, the
/// environment's when `PARVM_CONNECT` is set there, since how a process was started is
/// its launcher's to say, and the worker joins with the settings it was started with.
fn tcp_join_config(config: &Config, given: bool) -> Result<Option<Config>, Error> {
    if config.connect().is_some() {
        return Ok(Some(config.clone()));
    }
    if !given || Config::connect_from_env().map_err(Error::Config)?.is_none() {
        return Ok(None);
    }
    Config::from_env_read_only()
        .map(Some)
        .map_err(Error::Config)
}

/// Joins the TCP spawner `join` names, with its secret file, host name, limits and wait.
fn join_tcp(join: &Config) -> Result<TcpTransport, Error> {
    let addr = join.connect().unwrap_or_default();
    let path = join.secret_file().map_err(Error::Config)?;
    let secret = Secret::load(path).map_err(|e| Error::transport("tcp", e))?;
    let mut options = ConnectOptions::new(addr, secret)
        .host(join.hostname())
        .spin_window(spin_window(join));
    if let Some(wait) = join.connect_wait() {
        options = options.wait(wait);
    }
    if let Some(bytes) = join.max_frame() {
        options = options.max_frame(bytes);
    }
    if let Some(timeout) = join.handshake_timeout() {
        options = options.handshake_timeout(timeout);
    }
    if let Some(timeout) = join.peer_timeout() {
        options = options.peer_timeout(timeout);
    }
    TcpTransport::connect_with(options).map_err(|e| Error::transport("tcp", e))
}

/// The address workers connect to: the bound one, or this host's name and the port when
/// bound to every interface.
pub(crate) fn connect_address(bound: SocketAddr, host: &str) -> String {
    if bound.ip().is_unspecified() {
        format!("{host}:{}", bound.port())
    } else {
        bound.to_string()
    }
}

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

/// The environment of the workers on simulated host `host`, whose storage settings (and
/// cache limit) come from `own`; refused when its mirrored roots cannot be written as one
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
    // The host's own cache limit: each host's cache lives in its own local storage.
    if let Some(max) = own.cache_max() {
        let value = match max.count {
            Some(count) => format!("{},{count}", max.bytes),
            None => max.bytes.to_string(),
        };
        env.push((
            OsString::from(parvm_env_config::CACHE_MAX_VAR),
            OsString::from(value),
        ));
    }
    if let Some(filter) = crate::logging::filter(config.log_filter(), debug) {
        env.push((OsString::from("PARVM_LOG"), OsString::from(filter)));
    }
    Ok(env)
}

//! What a local spawner is configured with ([`LocalOptions`], [`SimulatedHost`]) and the
//! variables it sets for its workers.
//!
//! Owns the option types, their defaults and the variable names. Must not know processes
//! or sockets.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::frame;
use crate::star::DEFAULT_SPIN_WINDOW;

/// Path of the spawner's socket, set for each worker.
pub const SOCKET_VAR: &str = "PARVM_LOCAL_SOCKET";

/// The worker's rank.
pub const RANK_VAR: &str = "PARVM_LOCAL_RANK";

/// The per-launch token the worker presents when it connects.
pub const TOKEN_VAR: &str = "PARVM_LOCAL_TOKEN";

/// The spawner's process id; a worker checks that it is its parent.
pub const SPAWNER_PID_VAR: &str = "PARVM_LOCAL_SPAWNER_PID";

/// The spawner's host name.
pub const SPAWNER_HOST_VAR: &str = "PARVM_LOCAL_SPAWNER_HOST";

/// The frame size limit both ends use.
pub const MAX_FRAME_VAR: &str = "PARVM_LOCAL_MAX_FRAME";

/// How long the worker's waits poll before they sleep, in microseconds (the spawner's
/// [`LocalOptions::spin_window`]).
pub const SPIN_US_VAR: &str = "PARVM_LOCAL_SPIN_US";

/// The worker's host name: the spawner sets it for every worker (its simulated host, else
/// the spawner's host), so the worker reports it and a program's own configuration reads
/// the same name.
pub const HOSTNAME_VAR: &str = "PARVM_HOSTNAME";

/// The variables that make a process a local worker. Remove them (except
/// `PARVM_HOSTNAME`) from the environment of commands a worker starts, or a parvm program
/// started by a task would try to join this VM.
pub const WORKER_ENV_VARS: [&str; 7] = [
    SOCKET_VAR,
    RANK_VAR,
    TOKEN_VAR,
    SPAWNER_PID_VAR,
    SPAWNER_HOST_VAR,
    MAX_FRAME_VAR,
    SPIN_US_VAR,
];

/// The exit status of a worker process that exits because the spawner asked it to stop
/// (a function task that cannot be interrupted inside its thread). Its replacement does not
/// count toward the crash-loop limit ([`LocalOptions::replacements`]). 75 is `EX_TEMPFAIL`.
pub const STOPPED_EXIT_CODE: i32 = 75;

/// The signal a local worker gets from the kernel when its spawner dies
/// (`PR_SET_PDEATHSIG`), as a backstop for a worker too busy to see its connection end:
/// `SIGPWR`, which no terminal, shell or batch system sends to a job, so a worker that
/// catches it (the VM's workers leave in order on it: the running command stopped, the
/// task folders removed) is not also asked to leave by a signal meant for its spawner.
/// Uncaught, it ends the worker, as `SIGKILL` did.
pub const SPAWNER_GONE_SIGNAL: i32 = nix::libc::SIGPWR;

/// Replacements per slot by default ([`LocalOptions::replacements`]): none, so a worker's
/// death is final unless asked for; the VM's runtime asks for
/// `PARVM_REPLACE_WORKERS` (default 3).
pub const DEFAULT_REPLACEMENTS: u32 = 0;

/// One simulated host: a group of workers that report `name` as their host and get extra
/// environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedHost {
    /// The host name the workers report (`PARVM_HOSTNAME`).
    pub name: String,
    /// How many workers run "on" it.
    pub workers: usize,
    /// Extra environment variables for its workers (for example another
    /// `PARALLEL_MIRRORED_STORAGE`), applied after the transport's own.
    pub env: Vec<(OsString, OsString)>,
}

/// What [`LocalTransport::launch`](super::LocalTransport::launch) starts.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// `None`: `workers` on this host.
    pub(super) hosts: Option<Vec<SimulatedHost>>,
    pub(super) workers: usize,
    pub(super) program: Option<(PathBuf, Vec<OsString>)>,
    pub(super) connect_timeout: Duration,
    pub(super) shutdown_grace: Duration,
    pub(super) max_frame: u64,
    pub(super) spawner_host: Option<String>,
    pub(super) replacements: u32,
    pub(super) spin_window: Duration,
    pub(super) peer_timeout: Duration,
}

impl LocalOptions {
    /// `workers` workers on this host.
    #[must_use]
    pub fn new(workers: usize) -> Self {
        LocalOptions {
            hosts: None,
            workers,
            program: None,
            connect_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(2),
            max_frame: frame::DEFAULT_MAX_FRAME,
            spawner_host: None,
            replacements: DEFAULT_REPLACEMENTS,
            spin_window: DEFAULT_SPIN_WINDOW,
            peer_timeout: crate::tcp::DEFAULT_PEER_TIMEOUT,
        }
    }

    /// Workers grouped on simulated hosts; ranks are given in list order.
    #[must_use]
    pub fn hosts(hosts: Vec<SimulatedHost>) -> Self {
        LocalOptions {
            hosts: Some(hosts),
            ..LocalOptions::new(0)
        }
    }

    /// The program the workers run and its arguments. Default: this executable
    /// (`std::env::current_exe()`) with this process's arguments.
    #[must_use]
    pub fn program(
        mut self,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        self.program = Some((program.into(), args.into_iter().map(Into::into).collect()));
        self
    }

    /// How long to wait for all workers to connect. Default: 30 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long, when the transport is dropped, workers get to exit on their own before
    /// they are killed. Default: 2 s.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The largest payload accepted, in bytes. Default: 1 GiB ([`frame::DEFAULT_MAX_FRAME`]).
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How many times each worker slot is given a new worker process when its worker
    /// dies (killed by a signal, or exiting with a status other than 0): the replacement
    /// gets a new rank, the dead worker's simulated host name and variables, and joins as
    /// an [`Event::PeerJoined`](crate::Event::PeerJoined). A slot whose replacements are
    /// used up is gone for good, so a worker that crashes at once every time stops being
    /// replaced. A worker that exits with status 0 is never replaced (it left on purpose),
    /// nor one killed by `SIGINT`, `SIGTERM` or `SIGHUP` (told to stop from outside), and
    /// one that exits with [`STOPPED_EXIT_CODE`] always is, without counting. Default:
    /// [`DEFAULT_REPLACEMENTS`] (none).
    #[must_use]
    pub fn replacements(mut self, per_slot: u32) -> Self {
        self.replacements = per_slot;
        self
    }

    /// How long a worker may leave a request unanswered before the spawner gives it up
    /// ([`Transport::peer_timeout`](crate::Transport::peer_timeout)): a worker process
    /// stopped (`kill -STOP`) or starved of the CPU. Zero: for ever. Default: 60 s, as the
    /// TCP backend's ([`DEFAULT_PEER_TIMEOUT`](crate::tcp::DEFAULT_PEER_TIMEOUT); the VM
    /// passes `PARVM_PEER_TIMEOUT`).
    #[must_use]
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
        self
    }

    /// The spawner's host name, which the workers of [`LocalOptions::new`] report too.
    /// Default: the system's host name (the VM passes its configured one,
    /// `PARVM_HOSTNAME` when set).
    #[must_use]
    pub fn spawner_host(mut self, name: impl Into<String>) -> Self {
        self.spawner_host = Some(name.into());
        self
    }

    /// How long a waiting `recv` polls before it sleeps, on the spawner and on its
    /// workers (zero: never, for machines shared with other jobs; cut to
    /// [`MAX_SPIN_WINDOW`](crate::MAX_SPIN_WINDOW)). Default:
    /// [`DEFAULT_SPIN_WINDOW`] (the VM passes `PARVM_SPIN_US`).
    #[must_use]
    pub fn spin_window(mut self, window: Duration) -> Self {
        self.spin_window = window;
        self
    }
}

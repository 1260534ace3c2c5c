//! The local backend: the spawner starts N copies of a program (by default its own
//! executable, with the same arguments) as workers and talks to them over Unix sockets.
//!
//! # Topology
//!
//! A star: every worker is connected to the spawner (rank 0) only. A worker's
//! [`Transport::send`] to another worker's rank fails with [`Error::NotRoutable`]; the VM
//! routes worker-to-worker messages through the spawner. A worker's `peers()` lists the
//! spawner and itself.
//!
//! # When the spawner goes away
//!
//! A worker's [`Transport::recv`] returns `Ok(Some(Event::PeerLost { rank: 0, .. }))` once
//! when the spawner's connection ends (end of stream, reset, or a bad frame); every later
//! `recv` returns `Err(Error::PeerLost { rank: 0, .. })`, and `send` fails. The worker is
//! expected to leave then. As a backstop for a worker busy elsewhere, each worker asks the
//! kernel (`PR_SET_PDEATHSIG`) for `SIGKILL` when the spawner dies. The children are
//! forked by a keeper thread that lives as long as the [`LocalTransport`], because Linux
//! sends that signal when the forking *thread* ends.
//!
//! # Start-up
//!
//! The spawner binds a socket in a private (mode 0700) temporary folder, starts the
//! workers with the variables of [`WORKER_ENV_VARS`] set, and waits until each has
//! connected and presented the per-launch random token. The socket and its folder are
//! removed as soon as every worker has connected.

mod spawner;
mod worker;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::spawner::Spawner;
pub use self::worker::worker_from_env;
use crate::star::Client;
use crate::{Error, Event, Peer, Rank, Transport, Wait, frame};

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

/// The worker's host name (also read by [`crate::this_host`]).
pub const HOSTNAME_VAR: &str = "PARVM_HOSTNAME";

/// The variables that make a process a local worker. Remove them (except
/// `PARVM_HOSTNAME`) from the environment of commands a worker starts, or a parvm program
/// started by a task would try to join this VM.
pub const WORKER_ENV_VARS: [&str; 6] = [
    SOCKET_VAR,
    RANK_VAR,
    TOKEN_VAR,
    SPAWNER_PID_VAR,
    SPAWNER_HOST_VAR,
    MAX_FRAME_VAR,
];

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

/// What [`LocalTransport::launch`] starts.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// `None`: `workers` on this host.
    hosts: Option<Vec<SimulatedHost>>,
    workers: usize,
    program: Option<(PathBuf, Vec<OsString>)>,
    connect_timeout: Duration,
    shutdown_grace: Duration,
    max_frame: u64,
    spawner_host: Option<String>,
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

    /// The spawner's host name. Default: [`crate::this_host`].
    #[must_use]
    pub fn spawner_host(mut self, name: impl Into<String>) -> Self {
        self.spawner_host = Some(name.into());
        self
    }
}

/// The first frame a worker sends.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    token: String,
    rank: Rank,
    host: String,
    pid: u32,
}

/// The local backend; see the [module docs](self).
pub struct LocalTransport {
    side: Side,
}

enum Side {
    Spawner(Spawner),
    Worker(Client),
}

impl fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.side {
            Side::Spawner(s) => f
                .debug_struct("LocalTransport")
                .field("rank", &0)
                .field("workers", &s.workers())
                .finish(),
            Side::Worker(c) => f
                .debug_struct("LocalTransport")
                .field("rank", &c.rank())
                .finish(),
        }
    }
}

impl Transport for LocalTransport {
    fn rank(&self) -> Rank {
        match &self.side {
            Side::Spawner(_) => 0,
            Side::Worker(client) => client.rank(),
        }
    }

    fn peers(&self) -> Vec<Peer> {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.peers(),
            Side::Worker(client) => client.peers(),
        }
    }

    fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.send(to, payload),
            Side::Worker(client) => client.send(to, payload),
        }
    }

    fn send_parts(&self, to: Rank, parts: &[&[u8]]) -> Result<(), Error> {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.send_parts(to, parts),
            Side::Worker(client) => client.send_parts(to, parts),
        }
    }

    fn recv(&self, wait: Wait) -> Result<Option<Event>, Error> {
        match &self.side {
            Side::Spawner(spawner) => Ok(spawner.hub.recv(wait)),
            Side::Worker(client) => client.recv(wait),
        }
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    fn host(&self) -> String {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.me().host.clone(),
            Side::Worker(client) => client.host(),
        }
    }

    fn workers_are_children(&self) -> bool {
        true
    }

    fn reports_dead_peers(&self) -> bool {
        true
    }
}

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

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::star::{self, Client, Hub, Stream, lock};
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
                .field("workers", &s.procs.len())
                .finish(),
            Side::Worker(c) => f
                .debug_struct("LocalTransport")
                .field("rank", &c.rank())
                .finish(),
        }
    }
}

/// A worker process as the spawner sees it.
#[derive(Debug)]
struct WorkerProc {
    rank: Rank,
    host: String,
    pid: u32,
    /// `Child` remembers its exit status once reaped, and `kill` on a reaped child does
    /// nothing, so a recycled pid is never signalled.
    child: Mutex<Child>,
}

impl WorkerProc {
    fn try_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }
}

fn describe_status(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        match Signal::try_from(signal) {
            Ok(sig) => format!("was killed by signal {sig}"),
            Err(_) => format!("was killed by signal {signal}"),
        }
    } else if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else {
        format!("ended ({status})")
    }
}

struct Spawner {
    hub: Arc<Hub>,
    procs: Vec<Arc<WorkerProc>>,
    shutdown_grace: Duration,
    /// Dropping this sender lets the keeper thread (the workers' parent thread) end.
    keeper_stop: Option<Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Kills and reaps every worker still running, after `grace` for them to leave.
    fn stop_workers(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut pause = Duration::from_micros(100);
        loop {
            let running = self
                .procs
                .iter()
                .filter(|p| p.try_status().is_none())
                .count();
            if running == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        for proc in &self.procs {
            let mut child = lock(&proc.child);
            if matches!(child.try_wait(), Ok(None)) {
                tracing::debug!(
                    rank = proc.rank,
                    pid = proc.pid,
                    "killing worker that did not exit"
                );
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.keeper_stop.take();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.hub.close();
        self.stop_workers(self.shutdown_grace);
        self.hub.join();
    }
}

/// Starts the children on a dedicated thread that stays alive (as their parent thread for
/// `PR_SET_PDEATHSIG`) until `stop` is dropped.
fn spawn_keeper(commands: Vec<(Rank, Command, PathBuf)>) -> Result<Keeper, Error> {
    let (result_tx, result_rx) = crossbeam_channel::bounded(1);
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let keeper = std::thread::Builder::new()
        .name("parvm-local-keeper".into())
        .spawn(move || {
            let mut children = Vec::new();
            let mut failure = None;
            for (rank, mut command, program) in commands {
                match command.spawn() {
                    Ok(child) => children.push((rank, child)),
                    Err(source) => {
                        failure = Some(Error::WorkerStart {
                            rank,
                            program,
                            source,
                        });
                        break;
                    }
                }
            }
            let _ = result_tx.send((children, failure));
            // Blocks until the transport drops its sender.
            let _ = stop_rx.recv();
        })
        .map_err(|source| Error::Io {
            backend: "local",
            what: "start its keeper thread".into(),
            source,
        })?;
    let (children, failure) = result_rx.recv().map_err(|_| Error::Io {
        backend: "local",
        what: "start the workers (the keeper thread ended)".into(),
        source: io::Error::other("keeper thread ended early"),
    })?;
    if let Some(err) = failure {
        for (_, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(stop_tx);
        let _ = keeper.join();
        return Err(err);
    }
    Ok(Keeper {
        children,
        stop: stop_tx,
        thread: keeper,
    })
}

/// The started children and the thread that forked them.
struct Keeper {
    children: Vec<(Rank, Child)>,
    /// Dropping this lets the thread end.
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl LocalTransport {
    /// Starts the workers and waits until all have connected.
    ///
    /// # Errors
    /// No workers asked for, the socket folder cannot be made, a worker cannot be started,
    /// exits early ([`Error::WorkerExited`]) or does not connect in time
    /// ([`Error::WorkerTimeout`]). Every started worker is killed and reaped on error.
    pub fn launch(options: LocalOptions) -> Result<LocalTransport, Error> {
        let spawner_host = options
            .spawner_host
            .clone()
            .unwrap_or_else(crate::this_host);
        let hosts = options.hosts.clone().unwrap_or_else(|| {
            vec![SimulatedHost {
                name: spawner_host.clone(),
                workers: options.workers,
                env: Vec::new(),
            }]
        });
        let plan: Vec<(Rank, &SimulatedHost)> = hosts
            .iter()
            .flat_map(|host| std::iter::repeat_n(host, host.workers))
            .zip(1..)
            .map(|(host, rank)| (rank, host))
            .collect();
        if plan.is_empty() {
            return Err(Error::NoWorkers);
        }
        let setup = |what: &str, source: io::Error| Error::Io {
            backend: "local",
            what: what.to_string(),
            source,
        };
        let (program, args) = match options.program.clone() {
            Some(program) => program,
            None => (
                std::env::current_exe().map_err(|e| setup("find its own executable", e))?,
                std::env::args_os().skip(1).collect(),
            ),
        };

        // tempfile makes the folder with mode 0700, so only this user can reach the socket.
        let dir = tempfile::Builder::new()
            .prefix("parvm-local-")
            .tempdir()
            .map_err(|e| setup("create its private socket folder", e))?;
        let socket = dir.path().join("s");
        const MAX_SOCKET_PATH: usize = 107;
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::SocketPathTooLong {
                path: socket,
                max: MAX_SOCKET_PATH,
            });
        }
        let listener = UnixListener::bind(&socket)
            .map_err(|e| setup(&format!("bind socket `{}`", socket.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| setup("make its socket non-blocking", e))?;

        let token = random_token();
        let my_pid = std::process::id().to_string();
        let commands = plan
            .iter()
            .map(|&(rank, host)| {
                let mut command = Command::new(&program);
                command
                    .args(&args)
                    .stdin(Stdio::null())
                    .env(SOCKET_VAR, &socket)
                    .env(RANK_VAR, rank.to_string())
                    .env(TOKEN_VAR, &token)
                    .env(SPAWNER_PID_VAR, &my_pid)
                    .env(SPAWNER_HOST_VAR, &spawner_host)
                    .env(MAX_FRAME_VAR, options.max_frame.to_string())
                    .env(HOSTNAME_VAR, &host.name)
                    .envs(host.env.iter().map(|(k, v)| (k, v)));
                (rank, command, program.clone())
            })
            .collect();
        let Keeper {
            children,
            stop: keeper_stop,
            thread: keeper,
        } = spawn_keeper(commands)?;
        let procs: Vec<Arc<WorkerProc>> = children
            .into_iter()
            .zip(&plan)
            .map(|((rank, child), &(_, host))| {
                Arc::new(WorkerProc {
                    rank,
                    host: host.name.clone(),
                    pid: child.id(),
                    child: Mutex::new(child),
                })
            })
            .collect();
        let hub = Hub::new(
            "local",
            Peer {
                rank: 0,
                host: spawner_host.clone(),
            },
            options.max_frame,
        );
        // From here on, dropping `spawner` kills and reaps the workers.
        let mut spawner = Spawner {
            hub: hub.clone(),
            procs,
            shutdown_grace: options.shutdown_grace,
            keeper_stop: Some(keeper_stop),
            keeper: Some(keeper),
        };
        let streams = match accept_all(&listener, &spawner.procs, &token, options.connect_timeout) {
            Ok(streams) => streams,
            Err(err) => {
                // The launch failed: no point waiting for workers to leave by themselves.
                spawner.shutdown_grace = Duration::ZERO;
                return Err(err);
            }
        };
        drop(listener);
        drop(dir);

        for (proc, stream) in spawner.procs.iter().zip(streams) {
            let peer = Peer {
                rank: proc.rank,
                host: proc.host.clone(),
            };
            let watched = proc.clone();
            let explain: star::Explain = Box::new(move |reason| explain_loss(&watched, reason));
            let run = hub
                .add(peer, Stream::Unix(stream), explain)
                .map_err(|e| setup("clone a worker connection", e))?;
            let thread = std::thread::Builder::new()
                .name(format!("parvm-local-rank{}", proc.rank))
                .spawn(run)
                .map_err(|e| setup("start a reader thread", e))?;
            hub.keep_thread(thread);
        }
        Ok(LocalTransport {
            side: Side::Spawner(spawner),
        })
    }

    /// The process ids of the workers, by rank (the spawner only; empty on a worker).
    #[must_use]
    pub fn worker_pids(&self) -> Vec<(Rank, u32)> {
        match &self.side {
            Side::Spawner(s) => s.procs.iter().map(|p| (p.rank, p.pid)).collect(),
            Side::Worker(_) => Vec::new(),
        }
    }
}

/// Adds what became of the process to the reason its connection ended.
fn explain_loss(proc: &WorkerProc, reason: String) -> String {
    // The socket closes while the process is being torn down, a moment before it can be
    // reaped, so wait a little for the exit status.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut pause = Duration::from_micros(50);
    loop {
        let status = proc.try_status();
        if status.is_some() || Instant::now() >= deadline {
            let fate = status.map_or_else(|| "is still running".to_string(), describe_status);
            let text = format!(
                "worker rank {} (pid {}) on host `{}`: {reason}; the process {fate}",
                proc.rank, proc.pid, proc.host
            );
            // The hub logs a clean close at debug level, as the orderly way to leave; a
            // worker that closed cleanly because it died or failed deserves a warning.
            if reason == star::CLOSED && !status.is_some_and(|s| s.success()) {
                tracing::warn!(
                    backend = "local",
                    rank = proc.rank,
                    host = %proc.host,
                    "lost peer: {text}"
                );
            }
            return text;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Accepts one authenticated connection per worker, in any order, until the deadline.
fn accept_all(
    listener: &UnixListener,
    procs: &[Arc<WorkerProc>],
    token: &str,
    timeout: Duration,
) -> Result<Vec<UnixStream>, Error> {
    let deadline = Instant::now() + timeout;
    let mut streams: Vec<Option<UnixStream>> = procs.iter().map(|_| None).collect();
    let mut pending: BTreeSet<Rank> = procs.iter().map(|p| p.rank).collect();
    while !pending.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::WorkerTimeout {
                ranks: pending.into_iter().collect(),
                timeout,
            });
        }
        // Wake at least every 20 ms to notice a worker that exited without connecting.
        let wait = (deadline - now).min(Duration::from_millis(20));
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(listener),
            PollFlags::POLLIN,
        )];
        let _ = poll(
            &mut fds,
            PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
        );
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Some(rank) = check_hello(&stream, token, deadline, &pending) {
                        pending.remove(&rank);
                        if let Some(slot) = procs.iter().position(|p| p.rank == rank) {
                            streams[slot] = Some(stream);
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Io {
                        backend: "local",
                        what: "accept a worker connection".into(),
                        source,
                    });
                }
            }
        }
        for proc in procs.iter().filter(|p| pending.contains(&p.rank)) {
            if let Some(status) = proc.try_status() {
                return Err(Error::WorkerExited {
                    rank: proc.rank,
                    host: proc.host.clone(),
                    pid: proc.pid,
                    status: describe_status(status),
                });
            }
        }
    }
    Ok(streams.into_iter().flatten().collect())
}

/// Reads a worker's hello; returns its rank when the token is right and the rank expected.
fn check_hello(
    stream: &UnixStream,
    token: &str,
    deadline: Instant,
    pending: &BTreeSet<Rank>,
) -> Option<Rank> {
    let setup = || -> io::Result<()> {
        stream.set_nonblocking(false)?;
        let left = deadline.saturating_duration_since(Instant::now());
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        Ok(())
    };
    if setup().is_err() {
        return None;
    }
    let mut reader = stream;
    let payload = match frame::read_frame(&mut reader, 4096) {
        Ok(Some(payload)) => payload,
        Ok(None) => return None,
        Err(err) => {
            tracing::warn!("dropped a local connection with a bad hello: {err}");
            return None;
        }
    };
    let hello: Hello = match rmp_serde::from_slice(&payload) {
        Ok(hello) => hello,
        Err(err) => {
            tracing::warn!("dropped a local connection with an unreadable hello: {err}");
            return None;
        }
    };
    if !same_bytes(hello.token.as_bytes(), token.as_bytes()) {
        tracing::warn!(
            rank = hello.rank,
            pid = hello.pid,
            "dropped a local connection with a wrong token"
        );
        return None;
    }
    if !pending.contains(&hello.rank) {
        tracing::warn!(
            rank = hello.rank,
            pid = hello.pid,
            "dropped a second connection for the same rank"
        );
        return None;
    }
    stream.set_read_timeout(None).ok()?;
    Some(hello.rank)
}

fn env_var(var: &'static str) -> Result<String, Error> {
    match std::env::var_os(var) {
        None => Err(Error::BadWorkerEnv {
            var,
            value: String::new(),
            reason: format!(
                "it is missing while {SOCKET_VAR} is set; start workers with `LocalTransport::launch`"
            ),
        }),
        Some(value) => value.into_string().map_err(|value| Error::BadWorkerEnv {
            var,
            value: value.to_string_lossy().into_owned(),
            reason: "it is not UTF-8".into(),
        }),
    }
}

fn parse_var<T: std::str::FromStr>(var: &'static str) -> Result<T, Error>
where
    T::Err: fmt::Display,
{
    let value = env_var(var)?;
    value.parse().map_err(|err: T::Err| Error::BadWorkerEnv {
        var,
        value: value.clone(),
        reason: err.to_string(),
    })
}

/// Joins the spawner when this process was started as a local worker.
///
/// Returns `Ok(None)` when `PARVM_LOCAL_SOCKET` is not set (this process is not a local
/// worker).
///
/// # Errors
/// A worker variable is missing or malformed, the parent is not the spawner
/// ([`Error::NotSpawnerChild`]), or the spawner cannot be reached ([`Error::Join`]).
pub fn worker_from_env() -> Result<Option<LocalTransport>, Error> {
    let Some(socket) = std::env::var_os(SOCKET_VAR) else {
        return Ok(None);
    };
    let socket = PathBuf::from(socket);
    let rank: Rank = parse_var(RANK_VAR)?;
    let token = env_var(TOKEN_VAR)?;
    let spawner_pid: u32 = parse_var(SPAWNER_PID_VAR)?;
    let spawner_host = env_var(SPAWNER_HOST_VAR)?;
    let max_frame: u64 = parse_var(MAX_FRAME_VAR)?;
    if rank == 0 {
        return Err(Error::BadWorkerEnv {
            var: RANK_VAR,
            value: "0".into(),
            reason: "rank 0 is the spawner; workers have ranks from 1".into(),
        });
    }
    // Set the death signal first, then check the parent: if the spawner died before the
    // signal was armed, the parent is no longer the spawner and we stop here.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|errno| Error::Io {
        backend: "local",
        what: "ask for a signal when the spawner dies (prctl PR_SET_PDEATHSIG)".into(),
        source: errno.into(),
    })?;
    let parent = nix::unistd::getppid().as_raw() as u32;
    if parent != spawner_pid {
        return Err(Error::NotSpawnerChild {
            expected: spawner_pid,
            actual: parent,
        });
    }
    let host = crate::this_host();
    let join_err = |source| Error::Join {
        rank,
        socket: socket.clone(),
        source,
    };
    let mut stream = UnixStream::connect(&socket).map_err(join_err)?;
    let hello = Hello {
        token,
        rank,
        host: host.clone(),
        pid: std::process::id(),
    };
    let hello = rmp_serde::to_vec(&hello).map_err(|e| join_err(io::Error::other(e)))?;
    frame::write_frame(&mut stream, &hello).map_err(join_err)?;
    let client = Client::new(
        "local",
        rank,
        host,
        spawner_host,
        max_frame,
        Stream::Unix(stream),
    )
    .map_err(join_err)?;
    Ok(Some(LocalTransport {
        side: Side::Worker(client),
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
        assert_eq!(random_token().len(), 64);
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn no_workers_is_an_error() {
        assert!(matches!(
            LocalTransport::launch(LocalOptions::new(0)),
            Err(Error::NoWorkers)
        ));
        assert!(matches!(
            LocalTransport::launch(LocalOptions::hosts(Vec::new())),
            Err(Error::NoWorkers)
        ));
    }

    #[test]
    fn status_words() {
        assert_eq!(
            describe_status(ExitStatus::from_raw(9)),
            "was killed by signal SIGKILL"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
    }
}

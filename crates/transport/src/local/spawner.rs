//! The local backend's spawner: starts the worker processes (from a keeper thread, so
//! `PR_SET_PDEATHSIG` lasts as long as the transport), accepts their connections and
//! checks each one's hello, and stops and reaps them when the transport goes.
//!
//! Owns the worker processes and why one was lost (its exit status). Must not know how
//! frames move once a worker joined (`star`), nor the worker's side of start-up
//! (`worker`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use super::options::{LocalOptions, SimulatedHost};
use super::replace::{Launch, Replacing};
use super::worker::Hello;
use crate::star::{Hub, MAX_SPIN_WINDOW, lock};
use crate::{Error, Peer, Rank, frame};

/// A simulated host's own variables, shared by its workers and their replacements.
pub(super) type HostEnv = Arc<[(OsString, OsString)]>;

/// A worker process as the spawner sees it.
#[derive(Debug)]
pub(super) struct WorkerProc {
    pub(super) rank: Rank,
    pub(super) host: String,
    pub(super) pid: u32,
    /// The rank of the worker first started in this slot; its replacements share it, and
    /// the crash-loop limit counts per lineage.
    pub(super) lineage: Rank,
    /// The simulated host's own variables, for a replacement.
    pub(super) env: HostEnv,
    /// `Child` remembers its exit status once reaped, and `kill` on a reaped child does
    /// nothing, so a recycled pid is never signalled.
    pub(super) child: Mutex<Child>,
}

impl WorkerProc {
    pub(super) fn try_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Kills the process unless it was reaped, and reaps it.
    pub(super) fn kill_and_reap(&self) {
        let mut child = lock(&self.child);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

pub(super) fn describe_status(status: ExitStatus) -> String {
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

pub(super) struct Spawner {
    pub(super) hub: Arc<Hub>,
    /// Starts replacement workers, and holds every worker process ever started.
    pub(super) replacing: Arc<Replacing>,
    shutdown_grace: Duration,
    /// [`LocalOptions::peer_timeout`]: zero for ever.
    pub(super) peer_timeout: Duration,
    keeper: Option<JoinHandle<()>>,
}

impl Spawner {
    /// How many workers were started, replacements included.
    pub(super) fn workers(&self) -> usize {
        lock(&self.replacing.procs).len()
    }

    /// The process ids of the workers, by rank, replacements included (dead ones too).
    pub(super) fn worker_pids(&self) -> Vec<(Rank, u32)> {
        lock(&self.replacing.procs)
            .iter()
            .map(|p| (p.rank, p.pid))
            .collect()
    }

    /// The process id of the worker of `rank`, when this spawner started one.
    pub(super) fn pid_of(&self, rank: Rank) -> Option<u32> {
        lock(&self.replacing.procs)
            .iter()
            .find(|p| p.rank == rank)
            .map(|p| p.pid)
    }

    /// Kills and reaps every worker still running, after `grace` for them to leave, then
    /// lets the keeper thread end. Call after the hub is closed, so no replacement starts.
    fn stop_workers(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut pause = Duration::from_micros(100);
        loop {
            let running = lock(&self.replacing.procs)
                .iter()
                .filter(|p| p.try_status().is_none())
                .count();
            if running == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        for proc in lock(&self.replacing.procs).iter() {
            if proc.try_status().is_none() {
                tracing::debug!(
                    rank = proc.rank,
                    pid = proc.pid,
                    "killing worker that did not exit"
                );
            }
            proc.kill_and_reap();
        }
        self.replacing.keeper.close();
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.hub.close();
        self.stop_workers(self.shutdown_grace);
        // Also joins the replacers, which remove their socket folders as they end.
        self.hub.join();
    }
}

/// A request to the keeper thread: a command to start, and where to send the child.
type StartRequest = (Command, Sender<io::Result<Child>>);

/// The keeper thread's inbox: every worker process is forked there, so that
/// `PR_SET_PDEATHSIG` (sent when the forking *thread* ends) lasts as long as the transport.
pub(super) struct KeeperInbox(Mutex<Option<Sender<StartRequest>>>);

impl KeeperInbox {
    /// Starts `command` on the keeper thread.
    pub(super) fn start(&self, command: Command) -> io::Result<Child> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = lock(&self.0)
            .as_ref()
            .is_some_and(|inbox| inbox.send((command, tx)).is_ok());
        if !sent {
            return Err(io::Error::other("the transport is shutting down"));
        }
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::other("the keeper thread ended")))
    }

    /// Lets the keeper thread end once it has started what it was asked to.
    fn close(&self) {
        lock(&self.0).take();
    }
}

/// Starts the keeper thread, which forks every worker and lives until its inbox closes.
fn spawn_keeper() -> Result<(KeeperInbox, JoinHandle<()>), Error> {
    let (tx, rx) = crossbeam_channel::unbounded::<StartRequest>();
    let keeper = std::thread::Builder::new()
        .name("parvm-local-keeper".into())
        .spawn(move || {
            for (mut command, reply) in rx {
                let _ = reply.send(command.spawn());
            }
        })
        .map_err(|source| Error::Io {
            backend: "local",
            what: "start its keeper thread".into(),
            source,
        })?;
    Ok((KeeperInbox(Mutex::new(Some(tx))), keeper))
}

pub(super) fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Starts the workers and waits until all have connected; see
/// [`LocalTransport::launch`](super::LocalTransport::launch).
pub(super) fn launch(options: LocalOptions) -> Result<Spawner, Error> {
    let spawner_host = options
        .spawner_host
        .clone()
        .unwrap_or_else(crate::system_host);
    let hosts = options.hosts.clone().unwrap_or_else(|| {
        vec![SimulatedHost {
            name: spawner_host.clone(),
            workers: options.workers,
            env: Vec::new(),
        }]
    });
    let hosts: Vec<(&SimulatedHost, HostEnv)> = hosts
        .iter()
        .map(|host| (host, host.env.clone().into()))
        .collect();
    let plan: Vec<(Rank, &SimulatedHost, &HostEnv)> = hosts
        .iter()
        .flat_map(|(host, env)| std::iter::repeat_n((*host, env), host.workers))
        .zip(1..)
        .map(|((host, env), rank)| (rank, host, env))
        .collect();
    if plan.is_empty() {
        return Err(Error::NoWorkers);
    }
    let (program, args) = match options.program.clone() {
        Some(program) => program,
        None => (
            std::env::current_exe().map_err(|e| setup_error("find its own executable", e))?,
            std::env::args_os().skip(1).collect(),
        ),
    };
    let socket = Socket::bind()?;
    let (keeper, keeper_thread) = spawn_keeper()?;
    let hub = Hub::new(
        "local",
        Peer {
            rank: 0,
            host: spawner_host.clone(),
        },
        options.max_frame,
        options.spin_window,
    );
    let next_rank = Rank::try_from(plan.len() + 1).unwrap_or(Rank::MAX);
    let replacing = Arc::new(Replacing::new(
        hub.clone(),
        Launch {
            program,
            args,
            spawner_host,
            spawner_pid: std::process::id().to_string(),
            max_frame: options.max_frame,
            spin_us: options.spin_window.min(MAX_SPIN_WINDOW).as_micros(),
            connect_timeout: options.connect_timeout,
        },
        keeper,
        options.replacements,
        next_rank,
    ));
    // From here on, dropping `spawner` kills and reaps the workers.
    let mut spawner = Spawner {
        hub: hub.clone(),
        replacing: replacing.clone(),
        shutdown_grace: options.shutdown_grace,
        peer_timeout: options.peer_timeout,
        keeper: Some(keeper_thread),
    };
    let mut procs = Vec::with_capacity(plan.len());
    for &(rank, host, env) in &plan {
        match replacing.start_process(rank, rank, &host.name, env, &socket) {
            Ok(proc) => procs.push(proc),
            Err(err) => {
                // The launch failed: no point waiting for workers to leave by themselves.
                spawner.shutdown_grace = Duration::ZERO;
                return Err(err);
            }
        }
    }
    let streams = match accept_all(&socket, &procs, options.connect_timeout, &|| false) {
        Ok(streams) => streams,
        Err(err) => {
            spawner.shutdown_grace = Duration::ZERO;
            return Err(err);
        }
    };
    // Every worker joined: the socket and its folder go.
    drop(socket);
    for (proc, stream) in procs.into_iter().zip(streams) {
        replacing
            .attach(proc, stream)
            .map_err(|e| setup_error("start a reader thread", e))?;
    }
    Ok(spawner)
}

pub(super) fn setup_error(what: &str, source: io::Error) -> Error {
    Error::Io {
        backend: "local",
        what: what.to_string(),
        source,
    }
}

/// A listening socket in a private folder, with the token its workers present; both go
/// when it is dropped.
pub(super) struct Socket {
    pub(super) path: PathBuf,
    pub(super) token: String,
    listener: UnixListener,
    _dir: tempfile::TempDir,
}

impl Socket {
    pub(super) fn bind() -> Result<Socket, Error> {
        // tempfile makes the folder with mode 0700, so only this user can reach the socket.
        let dir = tempfile::Builder::new()
            .prefix("parvm-local-")
            .tempdir()
            .map_err(|e| setup_error("create its private socket folder", e))?;
        let path = dir.path().join("s");
        const MAX_SOCKET_PATH: usize = 107;
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::SocketPathTooLong {
                path,
                max: MAX_SOCKET_PATH,
            });
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| setup_error(&format!("bind socket `{}`", path.display()), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| setup_error("make its socket non-blocking", e))?;
        Ok(Socket {
            path,
            token: random_token(),
            listener,
            _dir: dir,
        })
    }
}

/// Accepts one authenticated connection per worker, in any order, until the deadline
/// (or until `abort` says to give up: the transport shuts down).
pub(super) fn accept_all(
    socket: &Socket,
    procs: &[Arc<WorkerProc>],
    timeout: Duration,
    abort: &dyn Fn() -> bool,
) -> Result<Vec<UnixStream>, Error> {
    let listener = &socket.listener;
    let token = socket.token.as_str();
    let deadline = Instant::now() + timeout;
    let mut streams: Vec<Option<UnixStream>> = procs.iter().map(|_| None).collect();
    let mut pending: BTreeSet<Rank> = procs.iter().map(|p| p.rank).collect();
    while !pending.is_empty() {
        let now = Instant::now();
        if now >= deadline || abort() {
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
            launch(LocalOptions::new(0)),
            Err(Error::NoWorkers)
        ));
        assert!(matches!(
            launch(LocalOptions::hosts(Vec::new())),
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

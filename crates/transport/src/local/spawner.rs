//! The local backend's spawner: starts the worker processes (from a keeper thread, so
//! `PR_SET_PDEATHSIG` lasts as long as the transport), accepts their connections and
//! checks each one's hello, and stops and reaps them when the transport goes.
//!
//! Owns the worker processes and why one was lost (its exit status). Must not know how
//! frames move once a worker joined (`star`), nor the worker's side of start-up
//! (`worker`).

use std::collections::BTreeSet;
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

use super::options::{
    HOSTNAME_VAR, LocalOptions, MAX_FRAME_VAR, RANK_VAR, SOCKET_VAR, SPAWNER_HOST_VAR,
    SPAWNER_PID_VAR, SPIN_US_VAR, SimulatedHost, TOKEN_VAR,
};
use super::worker::Hello;
use crate::star::{self, Hub, MAX_SPIN_WINDOW, Stream, lock};
use crate::{Error, Peer, Rank, frame};

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

pub(super) struct Spawner {
    pub(super) hub: Arc<Hub>,
    procs: Vec<Arc<WorkerProc>>,
    shutdown_grace: Duration,
    /// Dropping this sender lets the keeper thread (the workers' parent thread) end.
    keeper_stop: Option<Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl Spawner {
    /// How many workers were started.
    pub(super) fn workers(&self) -> usize {
        self.procs.len()
    }

    /// The process ids of the workers, by rank.
    pub(super) fn worker_pids(&self) -> Vec<(Rank, u32)> {
        self.procs.iter().map(|p| (p.rank, p.pid)).collect()
    }

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
    let spin_us = options.spin_window.min(MAX_SPIN_WINDOW).as_micros();
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
                .env(SPIN_US_VAR, spin_us.to_string())
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
        options.spin_window,
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
    Ok(spawner)
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

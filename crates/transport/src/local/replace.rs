//! Replacement workers: when a local worker process dies, the spawner starts a new one
//! (a new rank, on the same simulated host with the same variables) that joins like a late
//! TCP worker, as an [`Event::PeerJoined`].
//!
//! Owns starting one worker process (the first ones and replacements alike), attaching its
//! connection to the hub, the crash-loop limit, and whether a replacement may still come
//! (behind [`Transport::workers_can_join`](crate::Transport::workers_can_join)). Must not
//! know what payloads mean, nor how the hub reads connections (`star`).
//!
//! # The rules
//!
//! * A worker that exits with status 0 left on purpose (the VM told it to) and is not
//!   replaced; nor is one killed by `SIGINT`, `SIGTERM` or `SIGHUP` (Ctrl-C in a terminal
//!   reaches every worker; a batch system cancels with `SIGTERM`), nor any worker once the
//!   transport shuts down.
//! * A worker that exits with [`STOPPED_EXIT_CODE`] was stopped at the spawner's request
//!   (a stopped function task) and is always replaced; this does not count toward the limit.
//! * Any other death (a signal, another status, a replacement that never connected)
//!   counts toward its slot's limit ([`LocalOptions::replacements`](super::LocalOptions::replacements)):
//!   while the slot has replacements left, a new worker is started; then the slot is gone.
//! * A replacement that never joins is reported as an [`Event::PeerLost`] of its own
//!   (never joined) rank, so a spawner waiting with no worker left looks again at whether
//!   one may still come.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::options::{
    HOSTNAME_VAR, MAX_FRAME_VAR, RANK_VAR, SOCKET_VAR, SPAWNER_HOST_VAR, SPAWNER_PID_VAR,
    SPIN_US_VAR, STOPPED_EXIT_CODE, TOKEN_VAR,
};
use super::spawner::{HostEnv, KeeperInbox, Socket, WorkerProc, accept_all, describe_status};
use crate::star::{self, Hub, Stream, lock};
use crate::{Error, Event, Peer, Rank};

/// Longest a worker whose connection ended is waited for to exit before its replacement
/// is given up: past a command's grace period, and then some for a loaded host.
const LATE_EXIT_WAIT: Duration = Duration::from_secs(60);

/// `proc`'s exit status, waited for up to `wait` (polling: the process is the spawner's
/// child, reaped by whoever looks first).
fn exit_status_within(proc: &WorkerProc, wait: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_micros(50);
    loop {
        let status = proc.try_status();
        if status.is_some() || Instant::now() >= deadline {
            return status;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// What starting one worker process needs, the same for every worker.
pub(super) struct Launch {
    pub(super) program: PathBuf,
    pub(super) args: Vec<OsString>,
    pub(super) spawner_host: String,
    pub(super) spawner_pid: String,
    pub(super) max_frame: u64,
    /// The spawner's spin window in µs, which its workers use too.
    pub(super) spin_us: u128,
    pub(super) connect_timeout: Duration,
}

/// The crash-loop accounting, under one lock.
#[derive(Default)]
struct Budget {
    /// Counted replacements started so far, per lineage (the first rank of a slot).
    used: HashMap<Rank, u32>,
    /// Replacements decided on and not yet seen joining by the spawner, nor given up.
    pending: usize,
    /// Replacements that joined and were announced with `PeerJoined`, but whose event the
    /// spawner has not received yet: they stay pending until then, so that the spawner
    /// never finds "no worker, none coming" while the join waits in the event queue.
    announced: HashSet<Rank>,
}

/// See the [module docs](self).
pub(super) struct Replacing {
    hub: Arc<Hub>,
    launch: Launch,
    pub(super) keeper: KeeperInbox,
    /// Every worker process ever started, so that dropping the transport reaps them all.
    pub(super) procs: Mutex<Vec<Arc<WorkerProc>>>,
    max: u32,
    budget: Mutex<Budget>,
    next_rank: AtomicU32,
    replaced: AtomicUsize,
}

impl Replacing {
    pub(super) fn new(
        hub: Arc<Hub>,
        launch: Launch,
        keeper: KeeperInbox,
        max: u32,
        next_rank: Rank,
    ) -> Replacing {
        Replacing {
            hub,
            launch,
            keeper,
            procs: Mutex::new(Vec::new()),
            max,
            budget: Mutex::new(Budget::default()),
            next_rank: AtomicU32::new(next_rank),
            replaced: AtomicUsize::new(0),
        }
    }

    /// Whether a replacement worker may still join: one was decided on and has not joined
    /// or been given up. A live worker that dies later decides its replacement before its
    /// loss is posted, so a spawner never sees "no worker left" while one is coming.
    pub(super) fn may_join(&self) -> bool {
        lock(&self.budget).pending > 0
    }

    /// The spawner received the `PeerJoined` of `rank`: if it is a replacement, it is no
    /// longer pending.
    pub(super) fn seen_join(&self, rank: Rank) {
        let mut budget = lock(&self.budget);
        if budget.announced.remove(&rank) {
            budget.pending -= 1;
        }
    }

    /// How many replacement workers joined so far.
    pub(super) fn replaced(&self) -> usize {
        self.replaced.load(Ordering::Relaxed)
    }

    /// Starts the process of worker `rank` of lineage `lineage` on simulated host `host`,
    /// told to connect to `socket`, and records it (so it is reaped with the transport).
    pub(super) fn start_process(
        &self,
        rank: Rank,
        lineage: Rank,
        host: &str,
        env: &HostEnv,
        socket: &Socket,
    ) -> Result<Arc<WorkerProc>, Error> {
        let launch = &self.launch;
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .stdin(Stdio::null())
            .env(SOCKET_VAR, &socket.path)
            .env(RANK_VAR, rank.to_string())
            .env(TOKEN_VAR, &socket.token)
            .env(SPAWNER_PID_VAR, &launch.spawner_pid)
            .env(SPAWNER_HOST_VAR, &launch.spawner_host)
            .env(MAX_FRAME_VAR, launch.max_frame.to_string())
            .env(SPIN_US_VAR, launch.spin_us.to_string())
            .env(HOSTNAME_VAR, host)
            .envs(env.iter().map(|(k, v)| (k, v)));
        let start_error = |source| Error::WorkerStart {
            rank,
            program: launch.program.clone(),
            source,
        };
        // Under the lock, so that a transport shutting down either sees this process in
        // the list (and reaps it) or this start sees the shutdown.
        let mut procs = lock(&self.procs);
        if self.hub.is_closing() {
            return Err(start_error(io::Error::other(
                "the transport is shutting down",
            )));
        }
        let child = self.keeper.start(command).map_err(start_error)?;
        let proc = Arc::new(WorkerProc {
            rank,
            host: host.to_owned(),
            pid: child.id(),
            lineage,
            env: env.clone(),
            child: Mutex::new(child),
        });
        procs.push(proc.clone());
        Ok(proc)
    }

    /// Adds the connection of a worker that joined to the hub, with a reader thread.
    pub(super) fn attach(
        self: &Arc<Self>,
        proc: Arc<WorkerProc>,
        stream: UnixStream,
    ) -> io::Result<()> {
        let peer = Peer {
            rank: proc.rank,
            host: proc.host.clone(),
        };
        let replacing = self.clone();
        let explain: star::Explain = Box::new(move |reason| replacing.explain_loss(&proc, reason));
        let run = self.hub.add(peer.clone(), Stream::Unix(stream), explain)?;
        let thread = std::thread::Builder::new()
            .name(format!("parvm-local-rank{}", peer.rank))
            .spawn(run)?;
        self.hub.keep_thread(thread);
        Ok(())
    }

    /// Adds what became of the process to the reason its connection ended, and starts its
    /// replacement when the rules allow.
    fn explain_loss(self: &Arc<Self>, proc: &Arc<WorkerProc>, reason: String) -> String {
        // The socket closes while the process is being torn down, a moment before it can be
        // reaped, so wait a little for the exit status.
        let status = exit_status_within(proc, Duration::from_secs(1));
        let fate = status.map_or_else(|| "is still running".to_string(), describe_status);
        let text = format!(
            "worker rank {} (pid {}) on host `{}`: {reason}; the process {fate}",
            proc.rank, proc.pid, proc.host
        );
        match status {
            Some(status) => text + &self.decide(proc, status),
            None => text + &self.decide_once_it_exits(proc),
        }
    }

    /// Whether the dead worker `proc`, which ended with `status`, is replaced: starts the
    /// replacement when it is, and returns words for the loss's reason.
    fn decide(self: &Arc<Self>, proc: &Arc<WorkerProc>, status: ExitStatus) -> String {
        if status.success() {
            return String::new();
        }
        match status.signal().and_then(|s| Signal::try_from(s).ok()) {
            // Told to stop from outside: Ctrl-C in a terminal reaches every worker, and a
            // batch system cancels with SIGTERM. Replacing them would undo the stop.
            Some(signal @ (Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP)) => format!(
                "; not replaced, since {signal} asks a process to stop (Ctrl-C, or a batch system)"
            ),
            _ => self.maybe_replace(proc, status.code()),
        }
    }

    /// A worker whose connection ended while its process runs on (given up for not
    /// answering, it first stops its command, which may take the command's grace period):
    /// whether it is replaced is decided on a thread once it exits, and a replacement may
    /// come until then ([`Replacing::may_join`]).
    fn decide_once_it_exits(self: &Arc<Self>, proc: &Arc<WorkerProc>) -> String {
        if self.hub.is_closing() {
            return String::new();
        }
        lock(&self.budget).pending += 1;
        let replacing = self.clone();
        let dead = proc.clone();
        let started = std::thread::Builder::new()
            .name(format!("parvm-local-exit{}", proc.rank))
            .spawn(move || {
                let status = exit_status_within(&dead, LATE_EXIT_WAIT);
                if let Some(status) = status
                    && !replacing.hub.is_closing()
                {
                    let words = replacing.decide(&dead, status);
                    tracing::warn!(
                        backend = "local",
                        rank = dead.rank,
                        host = %dead.host,
                        "worker rank {} (pid {}) on host `{}` {}{words}",
                        dead.rank,
                        dead.pid,
                        dead.host,
                        describe_status(status)
                    );
                }
                let none_coming = {
                    let mut budget = lock(&replacing.budget);
                    budget.pending -= 1;
                    budget.pending == 0
                };
                if none_coming {
                    // A loss of a rank that never joined wakes a spawner that waits with
                    // no worker left, to find that none can come.
                    let rank = replacing.next_rank.fetch_add(1, Ordering::Relaxed);
                    replacing.hub.post(Event::PeerLost {
                        rank,
                        reason: format!(
                            "worker rank {} on host `{}` was not replaced",
                            dead.rank, dead.host
                        ),
                    });
                }
            });
        self.kept_or_given_back(
            started,
            "; it is replaced once it exits, unless the rules say otherwise",
            "to wait for its exit",
        )
    }

    /// Keeps `started`, a thread for which a replacement was marked pending, so that the
    /// transport joins it, and returns `said`; when it could not start, the replacement is
    /// no longer pending and the words say why (`what` the thread was for).
    fn kept_or_given_back(
        &self,
        started: io::Result<std::thread::JoinHandle<()>>,
        said: &str,
        what: &str,
    ) -> String {
        match started {
            Ok(thread) => {
                self.hub.keep_thread(thread);
                said.to_owned()
            }
            Err(e) => {
                lock(&self.budget).pending -= 1;
                format!("; cannot start a thread {what}: {e}")
            }
        }
    }

    /// Decides whether the dead worker `dead` (which exited with `code`, or was killed)
    /// gets a replacement, starts it on a thread of its own when it does, and returns
    /// words for the loss's reason.
    fn maybe_replace(self: &Arc<Self>, dead: &Arc<WorkerProc>, code: Option<i32>) -> String {
        if self.hub.is_closing() {
            return String::new();
        }
        if !self.take_budget(dead.lineage, code == Some(STOPPED_EXIT_CODE)) {
            return if self.max == 0 {
                String::new()
            } else {
                format!(
                    "; not replaced: the workers of this slot died {} times (the limit, PARVM_REPLACE_WORKERS)",
                    self.max
                )
            };
        }
        let replacing = self.clone();
        let dead_for_thread = dead.clone();
        let started = std::thread::Builder::new()
            .name(format!("parvm-local-replace{}", dead.rank))
            .spawn(move || replacing.replace(&dead_for_thread));
        self.kept_or_given_back(
            started,
            "; a replacement worker is starting",
            "for its replacement",
        )
    }

    /// Counts a replacement for `lineage` against the limit (unless `free`), and marks
    /// it pending; `false` when the limit is reached.
    fn take_budget(&self, lineage: Rank, free: bool) -> bool {
        let mut budget = lock(&self.budget);
        if !free {
            let used = budget.used.entry(lineage).or_insert(0);
            if *used >= self.max {
                return false;
            }
            *used += 1;
        }
        budget.pending += 1;
        true
    }

    /// Starts a replacement for `dead` and waits for it to join; a replacement that dies
    /// before it joins is replaced in turn while the slot's limit allows.
    fn replace(self: &Arc<Self>, dead: &Arc<WorkerProc>) {
        loop {
            let rank = self.next_rank.fetch_add(1, Ordering::Relaxed);
            let failure = match self.start_and_join(rank, dead) {
                // Still pending until the spawner receives the join (`seen_join`).
                Ok(()) => return,
                Err(failure) => failure,
            };
            let retry = !self.hub.is_closing() && {
                let mut budget = lock(&self.budget);
                let used = budget.used.entry(dead.lineage).or_insert(0);
                let more = *used < self.max;
                if more {
                    *used += 1;
                }
                more
            };
            if !self.hub.is_closing() {
                tracing::warn!(
                    backend = "local",
                    rank,
                    host = %dead.host,
                    "replacement worker failed: {failure}{}",
                    if retry { "; trying again" } else { "; the slot's replacements are used up (PARVM_REPLACE_WORKERS)" }
                );
            }
            if !retry {
                // Given up: no longer pending, then a loss of the never-joined rank wakes a
                // spawner that waits with no worker left, to find that none can come.
                lock(&self.budget).pending -= 1;
                self.hub.post(Event::PeerLost {
                    rank,
                    reason: format!(
                        "replacement worker rank {rank} on host `{}` never joined: {failure}",
                        dead.host
                    ),
                });
                return;
            }
        }
    }

    /// Starts worker `rank` to replace `dead`, waits for it to join, and announces it.
    fn start_and_join(self: &Arc<Self>, rank: Rank, dead: &Arc<WorkerProc>) -> Result<(), String> {
        let socket = Socket::bind().map_err(|e| e.to_string())?;
        let proc = self
            .start_process(rank, dead.lineage, &dead.host, &dead.env, &socket)
            .map_err(|e| e.to_string())?;
        let hub = self.hub.clone();
        let streams = accept_all(
            &socket,
            std::slice::from_ref(&proc),
            self.launch.connect_timeout,
            &move || hub.is_closing(),
        );
        // Joined or not, the socket and its folder go now.
        drop(socket);
        let stream = match streams {
            Ok(mut streams) if !streams.is_empty() => streams.swap_remove(0),
            Ok(_) => {
                proc.kill_and_reap();
                return Err("the transport is shutting down".to_owned());
            }
            Err(e) => {
                proc.kill_and_reap();
                return Err(e.to_string());
            }
        };
        let peer = Peer {
            rank,
            host: dead.host.clone(),
        };
        if let Err(e) = self.attach(proc.clone(), stream) {
            proc.kill_and_reap();
            return Err(format!("cannot start its reader thread: {e}"));
        }
        if self.hub.is_closing() {
            lock(&self.budget).pending -= 1;
            return Ok(());
        }
        let replaced = self.replaced.fetch_add(1, Ordering::Relaxed) + 1;
        let used = lock(&self.budget)
            .used
            .get(&dead.lineage)
            .copied()
            .unwrap_or(0);
        tracing::warn!(
            backend = "local",
            rank,
            pid = proc.pid,
            host = %dead.host,
            "worker rank {} (pid {}) on host `{}` was replaced by rank {rank} (pid {}); {used} of {} replacements of its slot used, {replaced} in all",
            dead.rank,
            dead.pid,
            dead.host,
            proc.pid,
            self.max
        );
        // Marked before it is posted, so the spawner cannot receive it unmarked.
        lock(&self.budget).announced.insert(rank);
        self.hub.post(Event::PeerJoined(peer));
        Ok(())
    }
}

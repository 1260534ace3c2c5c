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
//! kernel (`PR_SET_PDEATHSIG`) for [`SPAWNER_GONE_SIGNAL`] when the spawner dies, which
//! ends it unless it catches that signal to leave in order. The children are
//! forked by a keeper thread that lives as long as the [`LocalTransport`], because Linux
//! sends that signal when the forking *thread* ends.
//!
//! # Start-up
//!
//! The spawner binds a socket in a private (mode 0700) temporary folder, starts the
//! workers with the variables of [`WORKER_ENV_VARS`] set, and waits until each has
//! connected and presented the per-launch random token. The socket and its folder are
//! removed as soon as every worker has connected.
//!
//! # Replacement workers
//!
//! With [`LocalOptions::replacements`], a worker process that dies is replaced by a new one
//! (new rank, same simulated host and variables) that joins as an [`Event::PeerJoined`],
//! up to a limit per slot so that a crash loop ends; each replacement gets a socket folder
//! and token of its own, removed once it joined. [`Transport::workers_can_join`] is true
//! exactly while a replacement is on its way. The rules are in `replace.rs`.

mod options;
mod replace;
mod spawner;
mod worker;

use std::fmt;

pub use self::options::{
    DEFAULT_REPLACEMENTS, HOSTNAME_VAR, LocalOptions, MAX_FRAME_VAR, RANK_VAR, SOCKET_VAR,
    SPAWNER_GONE_SIGNAL, SPAWNER_HOST_VAR, SPAWNER_PID_VAR, SPIN_US_VAR, STOPPED_EXIT_CODE,
    SimulatedHost, TOKEN_VAR, WORKER_ENV_VARS,
};
use self::spawner::Spawner;
use crate::star::Client;
use crate::{Error, Event, Peer, Rank, Transport, Wait};

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

impl LocalTransport {
    /// Starts the workers and waits until all have connected.
    ///
    /// # Errors
    /// No workers asked for, the socket folder cannot be made, a worker cannot be started,
    /// exits early ([`Error::WorkerExited`]) or does not connect in time
    /// ([`Error::WorkerTimeout`]). Every started worker is killed and reaped on error.
    pub fn launch(options: LocalOptions) -> Result<LocalTransport, Error> {
        Ok(LocalTransport {
            side: Side::Spawner(spawner::launch(options)?),
        })
    }

    /// The process ids of the workers, by rank (the spawner only; empty on a worker).
    #[must_use]
    pub fn worker_pids(&self) -> Vec<(Rank, u32)> {
        match &self.side {
            Side::Spawner(s) => s.worker_pids(),
            Side::Worker(_) => Vec::new(),
        }
    }
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
    Ok(worker::join_from_env()?.map(|client| LocalTransport {
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
            Side::Spawner(spawner) => {
                let event = spawner.hub.recv(wait);
                if let Some(Event::PeerJoined(peer)) = &event {
                    spawner.replacing.seen_join(peer.rank);
                }
                Ok(event)
            }
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

    /// True while a replacement worker is on its way (see [`LocalOptions::replacements`]).
    fn workers_can_join(&self) -> bool {
        match &self.side {
            Side::Spawner(spawner) => spawner.replacing.may_join(),
            Side::Worker(_) => false,
        }
    }

    fn replaced_workers(&self) -> usize {
        match &self.side {
            Side::Spawner(spawner) => spawner.replacing.replaced(),
            Side::Worker(_) => 0,
        }
    }

    fn reports_dead_peers(&self) -> bool {
        true
    }

    /// True: frames go through Unix sockets, never leaving this host's kernel.
    fn delivers_frames_intact(&self) -> bool {
        true
    }

    /// [`LocalOptions::peer_timeout`]; `None` on a worker.
    fn peer_timeout(&self) -> Option<std::time::Duration> {
        match &self.side {
            Side::Spawner(spawner) => Some(spawner.peer_timeout).filter(|t| !t.is_zero()),
            Side::Worker(_) => None,
        }
    }

    /// Also continues the worker's process, should it be stopped (`kill -STOP`), so that
    /// it sees its connection end and leaves in order instead of staying behind, stopped.
    fn give_up(&self, rank: Rank, reason: &str) -> bool {
        let Side::Spawner(spawner) = &self.side else {
            return false;
        };
        let given_up = spawner.hub.give_up(rank, reason);
        if given_up
            && let Some(pid) = spawner.pid_of(rank)
            && let Ok(pid) = i32::try_from(pid)
        {
            // A worker that already ended is no error worth reporting.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
        given_up
    }
}

//! A small message-passing trait for parvm, with backends.
//!
//! Rank 0 is the spawner; every other rank is a worker. The [`Transport`] trait moves
//! opaque byte payloads (the VM puts MessagePack in them) and reports peers that join or
//! are lost; what the payloads mean is the VM's business. Backends:
//!
//! - [`local`]: the spawner starts N copies of its own executable and talks to them over
//!   Unix sockets; nothing to install. The default.
//! - [`tcp`]: workers started by any launcher connect to the spawner and authenticate with
//!   a shared secret; every frame is then encrypted and authenticated (AES-256-GCM).
//! - `mpi` (cargo feature `mpi`): rsmpi, started by `mpirun`.
//!
//! This crate reads no variable a user sets: every setting comes in its backend's options
//! (the VM fills them from `parvm-env-config`'s `Config`). It reads only what it set for
//! its own child processes (the local backend's `PARVM_LOCAL_*`) and what an MPI launcher
//! sets.
//!
//! All of them carry [`frame`]s: a 12-byte header with a magic, a version and a length
//! checked against a limit before anything is allocated, so a malformed or foreign peer is
//! dropped (an [`Event::PeerLost`]) and never crashes the spawner.
//!
//! # Example
//!
//! The same program is spawner and worker: [`worker_from_env`] tells which one runs (a TCP
//! worker joins with [`tcp::TcpTransport::connect_with`] instead, with the options its
//! program was given).
//!
//! ```no_run
//! use parvm_transport::local::{LocalOptions, LocalTransport};
//! use parvm_transport::{Event, Transport, Wait};
//!
//! if let Some(worker) = parvm_transport::worker_from_env()? {
//!     // A worker: echo every message back to the spawner until it goes away.
//!     while let Ok(Some(event)) = worker.recv(Wait::Forever) {
//!         match event {
//!             Event::Message { from, payload } => worker.send(from, &payload)?,
//!             Event::PeerLost { .. } => break,
//!             _ => {}
//!         }
//!     }
//!     return Ok(());
//! }
//! // The spawner: start two copies of this program and talk to them.
//! let vm = LocalTransport::launch(LocalOptions::new(2))?;
//! vm.send(1, b"hello")?;
//! if let Some(Event::Message { from, payload }) = vm.recv(Wait::Forever)? {
//!     assert_eq!((from, payload.as_slice()), (1, &b"hello"[..]));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#[doc(hidden)]
pub mod bench_support;
mod error;
pub mod frame;
mod join;
pub mod launcher;
pub mod local;
pub mod memory;
#[cfg(feature = "mpi")]
pub mod mpi;
mod seal;
mod secret;
mod star;
pub mod tcp;

use std::time::Duration;

pub use error::Error;
pub use join::{started_as_worker, worker_from_env};
pub use star::{DEFAULT_SPIN_WINDOW, MAX_SPIN_WINDOW};

/// The index of one process in the virtual machine; rank 0 is the spawner.
pub type Rank = u32;

/// One process of the virtual machine, as seen from this one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The process's rank.
    pub rank: Rank,
    /// The host it runs on, as that process reports it (the VM passes its configured name:
    /// `PARVM_HOSTNAME`, else the real hostname of that host).
    pub host: String,
}

/// Something that happened on the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message arrived.
    Message {
        /// Who sent it.
        from: Rank,
        /// The bytes it carries.
        payload: Vec<u8>,
    },
    /// A new peer joined after start-up (a TCP worker that connected later).
    PeerJoined(Peer),
    /// A peer is gone: its process exited, its connection broke, or it broke the protocol
    /// and was dropped. No more messages come from it, and sends to it fail.
    PeerLost {
        /// The rank that was lost.
        rank: Rank,
        /// Why, in words for a log line.
        reason: String,
    },
}

/// How long [`Transport::recv`] may wait for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until an event arrives.
    Forever,
    /// At most this long; then `Ok(None)`.
    For(Duration),
    /// Not at all: return an event that is already there, else `Ok(None)`.
    NoWait,
}

/// Moves byte payloads between the ranks of one virtual machine.
///
/// Implementations must allow `send` from one thread while another is blocked in `recv`.
/// Waiting must sleep, not spin a core (a short spin before blocking is fine).
pub trait Transport: Send + Sync {
    /// This process's rank.
    fn rank(&self) -> Rank;

    /// Every rank this process can currently reach, itself included, ordered by rank.
    fn peers(&self) -> Vec<Peer>;

    /// Sends `payload` to rank `to`.
    ///
    /// # Errors
    /// The rank is unknown or lost, or the bytes could not be written.
    fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error>;

    /// Sends the concatenation of `parts` to rank `to` as one payload: the receiver sees
    /// one [`Event::Message`] as after [`Transport::send`]. Backends override it to spare
    /// the copy into one buffer (a header and a large payload that lies elsewhere); the
    /// default joins the parts and calls [`Transport::send`].
    ///
    /// # Errors
    /// As [`Transport::send`].
    fn send_parts(&self, to: Rank, parts: &[&[u8]]) -> Result<(), Error> {
        match parts {
            [one] => self.send(to, one),
            _ => self.send(to, &parts.concat()),
        }
    }

    /// Waits for the next event, as long as `wait` allows.
    ///
    /// # Errors
    /// The transport itself failed (not a single peer: a lost peer is an [`Event::PeerLost`]).
    fn recv(&self, wait: Wait) -> Result<Option<Event>, Error>;

    /// The name of this backend (`local`, `tcp`, `mpi`), for logs and `describe`.
    fn backend(&self) -> &'static str;

    /// The host this process runs on.
    fn host(&self) -> String {
        let me = self.rank();
        self.peers()
            .into_iter()
            .find(|peer| peer.rank == me)
            .map(|peer| peer.host)
            .unwrap_or_default()
    }

    /// How many ranks there are, this one included.
    fn size(&self) -> usize {
        self.peers().len()
    }

    /// Whether workers can join from now on, so a spawner with none left may still wait
    /// for one: true for TCP (workers connect at any time), and for the local backend
    /// exactly while a replacement worker is on its way (see
    /// [`local::LocalOptions::replacements`]; the answer changes, so ask each time). False
    /// by default, and for MPI ranks (all start with `mpirun`); a backend that says false
    /// wrongly makes a spawner report "no workers left" too early, one that says true
    /// wrongly makes it wait for good. A backend whose answer turns false while a spawner
    /// waits with no worker left posts an event (the local backend: a
    /// [`Event::PeerLost`] of the replacement that never joined), so the spawner looks
    /// again.
    fn workers_can_join(&self) -> bool {
        false
    }

    /// How many workers the transport started to replace dead ones so far (the local
    /// backend, see [`local::LocalOptions::replacements`]); 0 by default.
    fn replaced_workers(&self) -> usize {
        0
    }

    /// Whether the workers are child processes of the spawner: true for the local backend
    /// only, where a worker whose parent process changed has lost its spawner even before
    /// its connection says so. False by default.
    fn workers_are_children(&self) -> bool {
        false
    }

    /// Whether a peer whose process dies is reported as an [`Event::PeerLost`], so a worker
    /// learns that its spawner is gone: true for the local and TCP backends (the connection
    /// ends). False by default and for MPI, where the launcher ends the whole job instead.
    fn reports_dead_peers(&self) -> bool {
        false
    }

    /// Whether every frame arrives exactly as it was sent or not at all, checked by the
    /// transport itself: true for TCP (each frame sealed and authenticated) and the local
    /// backend (frames never leave the host). A receiver may then take what an
    /// authenticated sender vouches for, such as a shipped file's digest, without checking
    /// it again. False by default and for MPI, whose frames cross the network checked only
    /// by the fabric; a backend that says true wrongly lets damaged bytes through.
    fn delivers_frames_intact(&self) -> bool {
        false
    }

    /// How long a peer that stopped answering is waited for before it is given up: the TCP
    /// backend's peer timeout (`PARVM_PEER_TIMEOUT`), the local backend's likewise. A
    /// spawner whose worker leaves a request unanswered that long (a stop it does not
    /// confirm: the process is stopped, or its host too busy to run it) gives it up
    /// ([`Transport::give_up`]) rather than wait for it. `None` by default (wait for
    /// ever), and for a timeout of zero.
    fn peer_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Ends the connection to worker `rank` from the spawner's side, for a worker that
    /// stopped answering: it is reported as an [`Event::PeerLost`] whose reason is
    /// `reason`, as a worker that died is, and a worker that still runs finds its spawner
    /// gone and leaves. Returns whether it did: false for a rank that is unknown or lost
    /// already, on a worker's end, and on backends that cannot end one peer's connection
    /// (MPI, the default).
    fn give_up(&self, rank: Rank, reason: &str) -> bool {
        let _ = (rank, reason);
        false
    }
}

/// The system's name for this host, else `localhost`: the default of the options that
/// take a host name. It reads no variable; the VM passes the name its configuration
/// resolved (`parvm_env_config::hostname`, the one reader of `PARVM_HOSTNAME`).
pub(crate) fn system_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Transport) {}

    /// A backend with only the required core, as MPI and the VM's own backends are.
    struct Core;

    impl Transport for Core {
        fn rank(&self) -> Rank {
            0
        }
        fn peers(&self) -> Vec<Peer> {
            vec![Peer {
                rank: 0,
                host: "h".into(),
            }]
        }
        fn send(&self, _: Rank, _: &[u8]) -> Result<(), Error> {
            Ok(())
        }
        fn recv(&self, _: Wait) -> Result<Option<Event>, Error> {
            Ok(None)
        }
        fn backend(&self) -> &'static str {
            "core"
        }
    }

    #[test]
    fn capabilities_default_to_a_fixed_set_of_peers() {
        // False by default: a spawner with no worker left then says so instead of
        // waiting for one that cannot come.
        assert!(!Core.workers_can_join());
        assert!(!Core.workers_are_children());
        assert!(!Core.reports_dead_peers());
        assert!(!Core.delivers_frames_intact());
        assert_eq!((Core.host(), Core.size()), ("h".to_owned(), 1));
    }
}

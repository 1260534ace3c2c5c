//! The TCP backend: workers started by any launcher (ssh, a batch system) connect to the
//! spawner, which listens on loopback unless told otherwise.
//!
//! # Handshake
//!
//! Before any frame is read, both sides prove they know the shared [`Secret`] with
//! HMAC-SHA256 over random nonces, in fixed-size messages:
//!
//! ```text
//! worker  -> spawner  magic(8) nonce_w(32)
//! spawner -> worker   magic(8) nonce_s(32) HMAC(secret, "parvm spawner" nonce_w nonce_s)
//! worker  -> spawner  host_len(1) host HMAC(secret, "parvm worker" nonce_s nonce_w host_len host)
//! spawner -> worker   sealed frame: rank(4, little-endian) host_len(1) spawner_host
//! ```
//!
//! The worker's proof covers the host name it reports, so nobody on the way can make a
//! worker appear on another host (and so mirror into another host's paths). The magic
//! carries the protocol version (3); a spawner answers a hello of another version with its
//! own magic before it closes, so the worker can say which versions differ.
//!
//! # Sealed frames
//!
//! From the welcome on, every frame in both directions is sealed with AES-256-GCM, under
//! keys derived (HKDF-SHA256) from the secret, both nonces and a hash of every handshake
//! byte, one key per direction and a record counter as nonce; see `seal.rs` and
//! docs/transports.md. A record that was modified, replayed, reordered or dropped on the
//! way fails to open and the connection is dropped: the spawner gets the usual
//! [`Event::PeerLost`], a worker sees the spawner lost.
//!
//! # Floods
//!
//! Each connection is handshaken on its own thread, so a slow peer never delays the
//! others. At most [`MAX_PENDING`] connections may be in their handshake at once, at most
//! [`MAX_PENDING_PER_SOURCE`] of them from one address (an IPv6 /64); a new connection
//! over either bound pushes out the oldest pending one that sent nothing yet (else the
//! oldest). The hello must come within [`FIRST_BYTES_TIMEOUT`], the whole handshake within
//! the handshake timeout. A peer with a wrong magic or proof is dropped having sent at most
//! 328 bytes. So idle connections cannot lock workers out: a worker's hello comes at once,
//! and idle connections are the first to go.

mod alive;
mod connect;
mod handshake;
mod listener;
mod options;

use std::fmt;
use std::net::SocketAddr;

use self::listener::Listening;
pub use self::options::{
    ConnectOptions, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_PEER_TIMEOUT, FIRST_BYTES_TIMEOUT,
    HANDSHAKE_TIMEOUT_VAR, MAX_PENDING, MAX_PENDING_PER_SOURCE, PEER_TIMEOUT_VAR, TcpOptions,
};
pub use crate::secret::{SECRET_FILE_VAR, Secret};
use crate::star::Client;
use crate::{Error, Event, Peer, Rank, Transport, Wait};

/// The TCP backend; see the [module docs](self).
pub struct TcpTransport {
    side: Side,
    /// Every frame sealed (false only in the benchmarks' plaintext mode).
    sealed: bool,
}

enum Side {
    Spawner(Listening),
    Worker(Client),
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.side {
            Side::Spawner(s) => f
                .debug_struct("TcpTransport")
                .field("rank", &0)
                .field("addr", &s.addr)
                .finish(),
            Side::Worker(c) => f
                .debug_struct("TcpTransport")
                .field("rank", &c.rank())
                .finish(),
        }
    }
}

impl TcpTransport {
    /// Listens for workers; they join at any time as [`Event::PeerJoined`], with ranks
    /// 1, 2, ... in the order their handshakes complete.
    ///
    /// # Errors
    /// [`Error::Listen`] when the address cannot be bound.
    pub fn listen(options: TcpOptions) -> Result<TcpTransport, Error> {
        let sealed = !options.plaintext;
        Ok(TcpTransport {
            side: Side::Spawner(listener::listen(options)?),
            sealed,
        })
    }

    /// The address the spawner listens on (with the port chosen when port 0 was asked);
    /// `None` on a worker.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.side {
            Side::Spawner(s) => Some(s.addr),
            Side::Worker(_) => None,
        }
    }

    /// Connects a worker to the spawner at `addr` and authenticates with `secret`,
    /// reporting `hostname` as its host: [`TcpTransport::connect_with`] with the other
    /// options at their defaults (one try).
    ///
    /// # Errors
    /// As [`TcpTransport::connect_with`].
    pub fn connect(addr: &str, secret: &Secret, hostname: &str) -> Result<TcpTransport, Error> {
        Self::connect_with(ConnectOptions::new(addr, secret.clone()).host(hostname))
    }

    /// Connects a worker to a spawner and authenticates, trying again with growing pauses
    /// until the [`ConnectOptions::wait`] deadline when the spawner cannot be reached or
    /// the handshake fails.
    ///
    /// # Errors
    /// The last try's error: [`Error::Connect`] when the spawner cannot be reached, [`Error::Handshake`] when
    /// authentication fails (different secrets, another parvm version, not a parvm
    /// spawner, or bytes changed on the way).
    pub fn connect_with(options: ConnectOptions) -> Result<TcpTransport, Error> {
        let sealed = !options.plaintext;
        Ok(TcpTransport {
            side: Side::Worker(connect::join(options)?),
            sealed,
        })
    }
}

impl Transport for TcpTransport {
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
        "tcp"
    }

    fn host(&self) -> String {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.me().host.clone(),
            Side::Worker(client) => client.host(),
        }
    }

    fn workers_can_join(&self) -> bool {
        true
    }

    fn reports_dead_peers(&self) -> bool {
        true
    }

    /// True: every frame is sealed with AES-256-GCM under the connection's keys (false
    /// only in the benchmarks' plaintext mode).
    fn delivers_frames_intact(&self) -> bool {
        self.sealed
    }

    /// The spawner's peer timeout ([`TcpOptions::peer_timeout`]); `None` on a worker.
    fn peer_timeout(&self) -> Option<std::time::Duration> {
        match &self.side {
            Side::Spawner(spawner) => Some(spawner.peer_timeout).filter(|t| !t.is_zero()),
            Side::Worker(_) => None,
        }
    }

    fn give_up(&self, rank: Rank, reason: &str) -> bool {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.give_up(rank, reason),
            Side::Worker(_) => false,
        }
    }
}

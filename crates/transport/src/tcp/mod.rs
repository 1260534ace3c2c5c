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

mod connect;
mod handshake;
mod limits;
mod listener;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use self::limits::parse_max_frame;
use self::listener::Listening;
pub use crate::secret::{SECRET_FILE_VAR, Secret};
use crate::star::Client;
use crate::{Error, Event, Peer, Rank, Transport, Wait};

/// The variable telling a worker where the spawner listens (`host:port`).
pub const CONNECT_VAR: &str = "PARVM_CONNECT";

/// The variable telling a worker started with [`CONNECT_VAR`] how many seconds to keep
/// trying to join (a spawner that starts later, a refused handshake); default 0: one try.
pub const CONNECT_WAIT_VAR: &str = "PARVM_CONNECT_WAIT";

/// The variable setting the largest payload accepted, in bytes (suffixes `K`, `M`, `G`
/// for KiB, MiB, GiB), on the spawner and on workers; default 1 GiB.
pub const MAX_FRAME_VAR: &str = "PARVM_MAX_FRAME";

/// The variable setting the handshake timeout in seconds (fractions allowed), on the
/// spawner and on workers; default 5.
pub const HANDSHAKE_TIMEOUT_VAR: &str = "PARVM_HANDSHAKE_TIMEOUT";

/// The default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many connections are in their handshake at once.
pub const MAX_PENDING: usize = 64;

/// At most this many of them come from one address (IPv4) or one /64 (IPv6).
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// A connection must send its hello within this time (or the handshake timeout, when
/// shorter): a worker sends it at once.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(1);

/// How [`TcpTransport::listen`] listens.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    addr: SocketAddr,
    secret: Secret,
    handshake_timeout: Option<Duration>,
    max_frame: Option<u64>,
    host: Option<String>,
    /// Set only by the benchmarks (feature `bench-plaintext`).
    plaintext: bool,
}

impl TcpOptions {
    /// Listens with `secret` on `127.0.0.1:0`.
    #[must_use]
    pub fn new(secret: Secret) -> Self {
        TcpOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            secret,
            handshake_timeout: None,
            max_frame: None,
            host: None,
            plaintext: false,
        }
    }

    /// The address to listen on; port 0 picks a free port. Default: `127.0.0.1:0`.
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// How long a connecting peer has to complete the handshake. Default:
    /// `PARVM_HANDSHAKE_TIMEOUT` seconds when set, else 5 s.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// The largest payload accepted, in bytes. Default: `PARVM_MAX_FRAME` when set, else
    /// 1 GiB.
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// The spawner's host name. Default: [`crate::this_host`].
    #[must_use]
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }

    /// Benchmarks only: frames travel in plaintext, to measure what sealing costs. Only
    /// workers in the same mode can join (another magic), never a normal worker.
    #[cfg(feature = "bench-plaintext")]
    #[doc(hidden)]
    #[must_use]
    pub fn insecure_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }
}

/// Called before each new try of [`TcpTransport::connect_with`] with the error of the last
/// one and how long the retries may still go on.
type OnRetry = Arc<dyn Fn(&Error, Duration) + Send + Sync>;

/// How [`TcpTransport::connect_with`] joins a spawner.
#[derive(Clone)]
pub struct ConnectOptions {
    addr: String,
    secret: Secret,
    host: Option<String>,
    handshake_timeout: Option<Duration>,
    max_frame: Option<u64>,
    wait: Option<Duration>,
    on_retry: Option<OnRetry>,
    plaintext: bool,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_frame", &self.max_frame)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Joins the spawner at `addr` (`host:port`) with `secret`.
    #[must_use]
    pub fn new(addr: impl Into<String>, secret: Secret) -> Self {
        ConnectOptions {
            addr: addr.into(),
            secret,
            host: None,
            handshake_timeout: None,
            max_frame: None,
            wait: None,
            on_retry: None,
            plaintext: false,
        }
    }

    /// Calls `report` with the error of a failed try and the time left, before each new
    /// try (for a progress line); by default failed tries are only logged.
    #[must_use]
    pub fn on_retry(mut self, report: impl Fn(&Error, Duration) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(report));
        self
    }

    /// The host name this worker reports. Default: [`crate::this_host`].
    #[must_use]
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }

    /// How long the spawner has to answer each step of the handshake. Default:
    /// `PARVM_HANDSHAKE_TIMEOUT` seconds when set, else 5 s.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// The largest payload accepted from the spawner, in bytes. Default:
    /// `PARVM_MAX_FRAME` when set, else 1 GiB.
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// Keeps trying this long when the spawner cannot be reached or a handshake fails or
    /// is refused (a spawner that starts later, or that is flooded), with growing pauses
    /// (0.1 s doubling up to 2 s) between tries. Default: `PARVM_CONNECT_WAIT` seconds
    /// when set, else 0 (one try).
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Benchmarks only: see [`TcpOptions::insecure_plaintext`].
    #[cfg(feature = "bench-plaintext")]
    #[doc(hidden)]
    #[must_use]
    pub fn insecure_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }
}

/// The TCP backend; see the [module docs](self).
pub struct TcpTransport {
    side: Side,
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
    /// The address the spawner listens on (with the port chosen when port 0 was asked);
    /// `None` on a worker.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.side {
            Side::Spawner(s) => Some(s.addr),
            Side::Worker(_) => None,
        }
    }
}

/// Joins the spawner named by `PARVM_CONNECT` (`host:port`), with the secret of
/// [`Secret::default_path`] and the host name of [`crate::this_host`], trying for
/// `PARVM_CONNECT_WAIT` seconds (see [`ConnectOptions::wait`]).
///
/// Returns `Ok(None)` when `PARVM_CONNECT` is not set.
///
/// # Errors
/// The secret file is missing or unsafe, a `PARVM_*` variable is unusable, or joining
/// fails (see [`TcpTransport::connect_with`]).
pub fn worker_from_env() -> Result<Option<TcpTransport>, Error> {
    let Some(addr) = std::env::var_os(CONNECT_VAR).filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let addr = addr.into_string().map_err(|value| Error::BadWorkerEnv {
        var: CONNECT_VAR,
        value: value.to_string_lossy().into_owned(),
        reason: "it is not UTF-8".into(),
    })?;
    let secret = Secret::load(&Secret::default_path()?)?;
    TcpTransport::connect_with(ConnectOptions::new(addr, secret)).map(Some)
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
}

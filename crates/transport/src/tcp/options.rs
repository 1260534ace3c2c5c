//! What a TCP spawner or worker is configured with: [`TcpOptions`], [`ConnectOptions`],
//! their defaults and the documented bounds, and the names of the variables that the VM
//! (through `parvm-env-config`) reads into them and this backend's messages name.
//!
//! Owns the option types and their defaults. Must not know sockets, handshakes or the
//! environment: nothing here reads a variable.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::secret::Secret;
use crate::star::DEFAULT_SPIN_WINDOW;

/// The variable setting the handshake timeout in seconds, as this backend's messages name
/// it (the VM reads it through `parvm-env-config` and passes it in the options).
pub const HANDSHAKE_TIMEOUT_VAR: &str = "PARVM_HANDSHAKE_TIMEOUT";

/// The default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The variable setting how long a joined peer may not answer before its connection is
/// given up, in seconds, as this backend's messages name it.
pub const PEER_TIMEOUT_VAR: &str = "PARVM_PEER_TIMEOUT";

/// How long a joined peer's host may not answer the probes of an idle connection before
/// the connection is given up: a host that lost power or its network is then lost like a
/// killed worker, instead of being waited for. A live peer's kernel answers them however
/// busy (or stopped) its process is.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many connections are in their handshake at once.
pub const MAX_PENDING: usize = 64;

/// At most this many of them come from one address (IPv4) or one /64 (IPv6).
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// A connection must send its hello within this time (or the handshake timeout, when
/// shorter): a worker sends it at once.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(1);

/// How [`TcpTransport::listen`](super::TcpTransport::listen) listens.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    pub(super) addr: SocketAddr,
    pub(super) secret: Secret,
    pub(super) handshake_timeout: Option<Duration>,
    pub(super) peer_timeout: Option<Duration>,
    pub(super) max_frame: Option<u64>,
    pub(super) host: Option<String>,
    pub(super) spin_window: Duration,
    /// Set only by the benchmarks (feature `bench-plaintext`).
    pub(super) plaintext: bool,
}

impl TcpOptions {
    /// Listens with `secret` on `127.0.0.1:0`.
    #[must_use]
    pub fn new(secret: Secret) -> Self {
        TcpOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            secret,
            handshake_timeout: None,
            peer_timeout: None,
            max_frame: None,
            host: None,
            spin_window: DEFAULT_SPIN_WINDOW,
            plaintext: false,
        }
    }

    /// The address to listen on; port 0 picks a free port. Default: `127.0.0.1:0`.
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// How long a connecting peer has to complete the handshake. Default: 5 s
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`]; the VM passes `PARVM_HANDSHAKE_TIMEOUT`).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// How long a joined worker's host may not answer before the worker counts as lost
    /// (see [`DEFAULT_PEER_TIMEOUT`]; zero: never). Default: 60 s (the VM passes
    /// `PARVM_PEER_TIMEOUT`).
    #[must_use]
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = Some(timeout);
        self
    }

    /// The largest payload accepted, in bytes. Default: 1 GiB
    /// ([`frame::DEFAULT_MAX_FRAME`](crate::frame::DEFAULT_MAX_FRAME); the VM passes
    /// `PARVM_MAX_FRAME`).
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// The spawner's host name. Default: the system's host name (the VM passes its
    /// configured one, `PARVM_HOSTNAME` when set).
    #[must_use]
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }

    /// How long a waiting `recv` polls before it sleeps (zero: never; cut to
    /// [`MAX_SPIN_WINDOW`](crate::MAX_SPIN_WINDOW)). Default:
    /// [`DEFAULT_SPIN_WINDOW`] (the VM passes `PARVM_SPIN_US`).
    #[must_use]
    pub fn spin_window(mut self, window: Duration) -> Self {
        self.spin_window = window;
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

/// Called before each new try of [`TcpTransport::connect_with`](super::TcpTransport::connect_with) with the error of the last
/// one and how long the retries may still go on.
type OnRetry = Arc<dyn Fn(&Error, Duration) + Send + Sync>;

/// How [`TcpTransport::connect_with`](super::TcpTransport::connect_with) joins a spawner.
#[derive(Clone)]
pub struct ConnectOptions {
    pub(super) addr: String,
    pub(super) secret: Secret,
    pub(super) host: Option<String>,
    pub(super) handshake_timeout: Option<Duration>,
    pub(super) peer_timeout: Option<Duration>,
    pub(super) max_frame: Option<u64>,
    pub(super) wait: Option<Duration>,
    pub(super) on_retry: Option<OnRetry>,
    pub(super) spin_window: Duration,
    pub(super) plaintext: bool,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("peer_timeout", &self.peer_timeout)
            .field("max_frame", &self.max_frame)
            .field("wait", &self.wait)
            .field("spin_window", &self.spin_window)
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
            peer_timeout: None,
            max_frame: None,
            wait: None,
            on_retry: None,
            spin_window: DEFAULT_SPIN_WINDOW,
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

    /// The host name this worker reports. Default: the system's host name (the VM passes
    /// its configured one, `PARVM_HOSTNAME` when set).
    #[must_use]
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }

    /// How long the spawner has to answer each step of the handshake. Default: 5 s
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`]; the VM passes `PARVM_HANDSHAKE_TIMEOUT`).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// How long the joined spawner's host may not answer before it counts as lost, so the
    /// worker stops its task and leaves (see [`DEFAULT_PEER_TIMEOUT`]; zero: never).
    /// Default: 60 s (the VM passes `PARVM_PEER_TIMEOUT`).
    #[must_use]
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = Some(timeout);
        self
    }

    /// The largest payload accepted from the spawner, in bytes. Default: 1 GiB
    /// ([`frame::DEFAULT_MAX_FRAME`](crate::frame::DEFAULT_MAX_FRAME); the VM passes
    /// `PARVM_MAX_FRAME`).
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// Keeps trying this long when the spawner cannot be reached or a handshake fails or
    /// is refused (a spawner that starts later, or that is flooded), with growing pauses
    /// (0.1 s doubling up to 2 s) between tries. Default: 0, one try (the VM passes
    /// `PARVM_CONNECT_WAIT`).
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// How long a waiting `recv` polls before it sleeps; see [`TcpOptions::spin_window`].
    /// Default: [`DEFAULT_SPIN_WINDOW`].
    #[must_use]
    pub fn spin_window(mut self, window: Duration) -> Self {
        self.spin_window = window;
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

//! What a TCP spawner or worker is configured with: [`TcpOptions`], [`ConnectOptions`],
//! the variables that set them from the environment and the documented bounds.
//!
//! Owns the option types and their defaults. Must not know sockets or handshakes.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::secret::Secret;

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

/// How [`TcpTransport::listen`](super::TcpTransport::listen) listens.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    pub(super) addr: SocketAddr,
    pub(super) secret: Secret,
    pub(super) handshake_timeout: Option<Duration>,
    pub(super) max_frame: Option<u64>,
    pub(super) host: Option<String>,
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
    pub(super) max_frame: Option<u64>,
    pub(super) wait: Option<Duration>,
    pub(super) on_retry: Option<OnRetry>,
    pub(super) plaintext: bool,
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

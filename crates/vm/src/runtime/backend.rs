//! Which transport a spawner's runtime starts, with that transport's own settings:
//! [`Backend`], and [`TcpSpawner`] for how a TCP spawner listens and waits.
//!
//! It owns the choice a program makes in code ([`RuntimeBuilder::backend`]); what is not
//! set here comes from the configuration (`PARVM_TRANSPORT`, `PARVM_LISTEN`,
//! `PARVM_SECRET_FILE`, `PARVM_MAX_FRAME`, ...). It must not know how a transport is
//! launched (that is `builder.rs`) nor what a worker does.
//!
//! [`RuntimeBuilder::backend`]: super::RuntimeBuilder::backend

use std::net::SocketAddr;
use std::time::Duration;

use parvm_env_config::TransportKind;
use parvm_transport::tcp::Secret;

/// The transport a spawner starts, with that transport's settings; see
/// [`RuntimeBuilder::backend`](super::RuntimeBuilder::backend).
///
/// ```no_run
/// use std::time::Duration;
///
/// use parvm_vm::{Backend, Runtime, Tasks, TcpSpawner};
///
/// let runtime = Runtime::builder(Tasks::new())
///     .backend(Backend::Tcp(
///         TcpSpawner::new()
///             .listen("0.0.0.0:7070".parse()?)
///             .wait_for(16, Duration::from_secs(60)),
///     ))
///     .start()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Backend {
    /// Worker processes on this machine, over Unix sockets: as many as
    /// [`workers`](super::RuntimeBuilder::workers) says (default `PARVM_WORKERS`, else the
    /// number of cores), grouped on [`simulated_hosts`](super::RuntimeBuilder::simulated_hosts)
    /// when given.
    Local,
    /// Workers started by any launcher connect over TCP and prove they know the secret.
    Tcp(TcpSpawner),
    /// The ranks of an `mpirun` job (needs the `mpi` feature).
    Mpi,
}

impl From<TransportKind> for Backend {
    /// The backend of a transport name, with its settings from the configuration.
    fn from(kind: TransportKind) -> Backend {
        match kind {
            TransportKind::Local => Backend::Local,
            TransportKind::Tcp => Backend::Tcp(TcpSpawner::new()),
            TransportKind::Mpi => Backend::Mpi,
        }
    }
}

/// How a TCP spawner listens and how long [`start`](super::RuntimeBuilder::start) waits
/// for workers. Each setting not given comes from the runtime's configuration.
#[derive(Debug, Clone, Default)]
pub struct TcpSpawner {
    pub(super) listen: Option<SocketAddr>,
    pub(super) secret: Option<Secret>,
    pub(super) wait_for: Option<(usize, Duration)>,
    pub(super) max_frame: Option<u64>,
    pub(super) handshake_timeout: Option<Duration>,
    pub(super) peer_timeout: Option<Duration>,
}

impl TcpSpawner {
    /// Every setting from the configuration, and no wait.
    #[must_use]
    pub fn new() -> TcpSpawner {
        TcpSpawner::default()
    }

    /// The address to listen on; default `PARVM_LISTEN`, else `127.0.0.1:0` (loopback, a
    /// free port). Listen on `0.0.0.0:<port>` to accept workers from other hosts.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// The secret workers must prove they know; default the secret file
    /// (`PARVM_SECRET_FILE`, else `~/.parvm/secret`), created with a random secret when
    /// missing.
    #[must_use]
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Makes [`start`](super::RuntimeBuilder::start) wait until `workers` workers have
    /// joined, at most `timeout`; default: no wait (workers join whenever they connect,
    /// and VMs see them as [`Message::HostAdd`](crate::Message::HostAdd)).
    #[must_use]
    pub fn wait_for(mut self, workers: usize, timeout: Duration) -> Self {
        self.wait_for = Some((workers, timeout));
        self
    }

    /// The largest message accepted from a worker, in bytes; default `PARVM_MAX_FRAME`,
    /// else 1 GiB.
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// How long a connecting worker has to complete the handshake; default
    /// `PARVM_HANDSHAKE_TIMEOUT`, else 5 s.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// How long a joined worker's host may not answer (down, or cut off) before the worker
    /// counts as lost, as a killed one does, and its task fails (a dispatch runs it again
    /// elsewhere); zero waits for ever. Default `PARVM_PEER_TIMEOUT`, else 60 s.
    #[must_use]
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = Some(timeout);
        self
    }
}

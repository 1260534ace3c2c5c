//! [`Config`]: the resolved configuration of one process, and what each setting means to
//! its readers.
//!
//! It owns the fields and their getters; it must not know where the values come from
//! (`environment.rs` reads them, `builder.rs` checks and resolves them) nor what the
//! consumers do with them.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::vars::{LISTEN_VAR, SECRET_FILE_VAR};
use crate::{CacheMax, Error, ShipMode, TransportKind};

/// The resolved configuration of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub(crate) local_root: PathBuf,
    pub(crate) mirrored_roots: Vec<PathBuf>,
    pub(crate) hostname: String,
    pub(crate) workers: Option<usize>,
    pub(crate) replace_workers: Option<u32>,
    pub(crate) transport: Option<TransportKind>,
    pub(crate) log_filter: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) connect: Option<String>,
    pub(crate) secret_file: Option<PathBuf>,
    pub(crate) connect_wait: Option<Duration>,
    pub(crate) max_frame: Option<u64>,
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) peer_timeout: Option<Duration>,
    pub(crate) spin_window: Option<Duration>,
    pub(crate) forward_env: Vec<String>,
    pub(crate) no_color: bool,
    pub(crate) ship: ShipMode,
    pub(crate) cache_max: Option<CacheMax>,
}

impl Config {
    /// The local storage root: absolute, symlinks resolved, existing. Read without
    /// creating it ([`Config::from_env_read_only`], [`ConfigBuilder::create_local_root`](crate::ConfigBuilder::create_local_root)),
    /// a missing root is absolute with `~` expanded, as given.
    pub fn local_root(&self) -> &Path {
        &self.local_root
    }

    /// The mirrored storage roots in their configured order: absolute, symlinks resolved.
    pub fn mirrored_roots(&self) -> &[PathBuf] {
        &self.mirrored_roots
    }

    /// The host name this process reports.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Worker slots asked for by `PARVM_WORKERS`, if set.
    pub fn workers(&self) -> Option<usize> {
        self.workers
    }

    /// Replacements per local worker slot asked for by `PARVM_REPLACE_WORKERS`, if set.
    pub fn replace_workers(&self) -> Option<u32> {
        self.replace_workers
    }

    /// The transport asked for by `PARVM_TRANSPORT`, if set.
    pub fn transport(&self) -> Option<TransportKind> {
        self.transport
    }

    /// The log filter from `PARVM_LOG`, if set.
    pub fn log_filter(&self) -> Option<&str> {
        self.log_filter.as_deref()
    }

    /// The address a TCP spawner listens on, from `PARVM_LISTEN`, if set (and not empty):
    /// `host:port`, checked for its form; [`Config::listen_addr`] resolves it.
    pub fn listen(&self) -> Option<&str> {
        self.listen.as_deref()
    }

    /// The address a TCP spawner listens on: [`Config::listen`] resolved (its first
    /// address), else `127.0.0.1:0` (loopback, any free port).
    ///
    /// # Errors
    /// The host of `PARVM_LISTEN` does not resolve ([`Error::ListenAddress`]) or resolves
    /// to no address ([`Error::BadValue`]).
    pub fn listen_addr(&self) -> Result<SocketAddr, Error> {
        let Some(text) = self.listen.as_deref() else {
            return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        };
        text.to_socket_addrs()
            .map_err(|source| Error::ListenAddress {
                variable: LISTEN_VAR,
                value: text.to_owned(),
                source,
            })?
            .next()
            .ok_or_else(|| Error::BadValue {
                variable: LISTEN_VAR,
                value: text.to_owned(),
                reason: "it resolves to no address; give host:port, e.g. 0.0.0.0:7070".into(),
            })
    }

    /// The spawner a TCP worker joins, from `PARVM_CONNECT` (`host:port`), if set and not
    /// empty: a process with it set is a TCP worker.
    pub fn connect(&self) -> Option<&str> {
        self.connect.as_deref()
    }

    /// The secret file of the TCP transport: `PARVM_SECRET_FILE` when set and not empty,
    /// else `.parvm/secret` in the home folder (the one `~` stands for in the other
    /// variables).
    ///
    /// # Errors
    /// [`Error::NoSecretFile`]: `PARVM_SECRET_FILE` is unset and the home folder unknown.
    pub fn secret_file(&self) -> Result<&Path, Error> {
        self.secret_file.as_deref().ok_or(Error::NoSecretFile {
            variable: SECRET_FILE_VAR,
        })
    }

    /// How long a TCP worker keeps trying to join, from `PARVM_CONNECT_WAIT`, if set;
    /// unset, the transport's default applies (one try).
    pub fn connect_wait(&self) -> Option<Duration> {
        self.connect_wait
    }

    /// The largest TCP message accepted, in bytes, from `PARVM_MAX_FRAME` (at least
    /// 4 KiB), if set; unset, the transport's default applies (1 GiB).
    pub fn max_frame(&self) -> Option<u64> {
        self.max_frame
    }

    /// How long a TCP handshake may take, from `PARVM_HANDSHAKE_TIMEOUT` (more than 0),
    /// if set; unset, the transport's default applies (5 s).
    pub fn handshake_timeout(&self) -> Option<Duration> {
        self.handshake_timeout
    }

    /// How long a joined TCP peer's host may not answer before the peer counts as lost, from
    /// `PARVM_PEER_TIMEOUT` (zero: never), if set; unset, the transport's default applies
    /// (60 s).
    pub fn peer_timeout(&self) -> Option<Duration> {
        self.peer_timeout
    }

    /// How long a waiting process polls before it sleeps, from `PARVM_SPIN_US` (zero:
    /// never; at most one second), if set; unset, the transport's default applies (100 µs).
    pub fn spin_window(&self) -> Option<Duration> {
        self.spin_window
    }

    /// The names of the variables a spawner forwards to its workers, from
    /// `PARVM_FORWARD_ENV` (separated by `,` or `:`, blanks trimmed, empty items left
    /// out), in their order; empty when unset. Which names may be forwarded is the VM's
    /// call.
    pub fn forward_env(&self) -> &[String] {
        &self.forward_env
    }

    /// Whether `NO_COLOR` is set to something other than the empty string: log lines are
    /// then never coloured.
    pub fn no_color(&self) -> bool {
        self.no_color
    }

    /// When mirrored inputs are shipped to a worker's host instead of read from its
    /// mirrored root, from `PARVM_SHIP`; unset: [`ShipMode::Auto`].
    pub fn ship(&self) -> ShipMode {
        self.ship
    }

    /// The most a host's cache of shipped files holds, from `PARVM_CACHE_MAX`, if set;
    /// unset, the cache's default applies (10% of the free space of local storage).
    pub fn cache_max(&self) -> Option<CacheMax> {
        self.cache_max
    }
}

//! [`ConfigBuilder`]: a [`Config`] by hand, and the checks and resolution every
//! configuration goes through (the environment's too).
//!
//! It owns the defaults of the storage settings and the checks of values given by hand;
//! it must not read the environment, except `HOME` for `~` when no home was given.

use std::path::PathBuf;
use std::time::Duration;

use crate::parse::{self, MAX_SPIN};
use crate::paths::{self, Homes};
use crate::user::home_from_user_database;
use crate::vars::*;
use crate::{CacheMax, Config, Error, ShipMode, TransportKind};

impl Config {
    /// Starts a configuration built by hand; unset values take the same defaults as the
    /// environment's.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }
}

/// Builds a [`Config`] by hand. Every setter's default is the environment's default, not
/// the environment's value: a builder never reads the environment except for the home folder.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    pub(crate) local_root: Option<PathBuf>,
    pub(crate) create_local_root: bool,
    pub(crate) missing_mirrored_roots: bool,
    pub(crate) mirrored_roots: Option<Vec<PathBuf>>,
    pub(crate) hostname: Option<String>,
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
    pub(crate) homes: Option<Homes>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            local_root: None,
            create_local_root: true,
            missing_mirrored_roots: false,
            mirrored_roots: None,
            hostname: None,
            workers: None,
            replace_workers: None,
            transport: None,
            log_filter: None,
            listen: None,
            connect: None,
            secret_file: None,
            connect_wait: None,
            max_frame: None,
            handshake_timeout: None,
            peer_timeout: None,
            spin_window: None,
            forward_env: Vec::new(),
            no_color: false,
            ship: ShipMode::Auto,
            cache_max: None,
            homes: None,
        }
    }
}

impl ConfigBuilder {
    /// Whether [`ConfigBuilder::build`] creates a missing local root. Default: `true`.
    /// With `false` nothing is created, and a missing root is kept as given (absolute,
    /// `~` expanded); a root that exists must still be a folder.
    #[must_use]
    pub fn create_local_root(mut self, create: bool) -> Self {
        self.create_local_root = create;
        self
    }

    /// Whether [`ConfigBuilder::build`] accepts a mirrored root that does not exist,
    /// keeping it as given (absolute, `~` expanded). Default: `false`, since a spawner
    /// mirrors from its roots. A worker's roots may be missing: the spawner ships what
    /// the tasks need from a root that is not on the worker's host (`PARVM_SHIP`). A
    /// root that exists must still be a folder.
    #[must_use]
    pub fn allow_missing_mirrored_roots(mut self, allow: bool) -> Self {
        self.missing_mirrored_roots = allow;
        self
    }

    /// Sets the local storage root (`~` is expanded). Default: the system temp folder.
    #[must_use]
    pub fn local_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.local_root = Some(path.into());
        self
    }

    /// Sets the mirrored storage roots, in order (`~` is expanded). Default: the home folder.
    #[must_use]
    pub fn mirrored_roots<P: Into<PathBuf>>(mut self, roots: impl IntoIterator<Item = P>) -> Self {
        self.mirrored_roots = Some(roots.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the host name to report. Default: the real host name.
    #[must_use]
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Sets the number of local worker slots. Default: unset (the VM uses the core count).
    #[must_use]
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = Some(count);
        self
    }

    /// Sets how many times the local transport replaces the worker of a slot that dies.
    /// Default: unset (the VM uses 3).
    #[must_use]
    pub fn replace_workers(mut self, per_slot: u32) -> Self {
        self.replace_workers = Some(per_slot);
        self
    }

    /// Sets the transport. Default: unset (the VM chooses).
    #[must_use]
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = Some(kind);
        self
    }

    /// Sets the log filter. Default: unset (warnings only).
    #[must_use]
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = Some(filter.into());
        self
    }

    /// Sets the address a TCP spawner listens on, `host:port` (checked for its form by
    /// [`ConfigBuilder::build`]). Default: unset (`127.0.0.1:0`).
    #[must_use]
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// Sets the spawner a TCP worker joins, `host:port`. Default: unset (not a TCP worker).
    #[must_use]
    pub fn connect(mut self, addr: impl Into<String>) -> Self {
        self.connect = Some(addr.into());
        self
    }

    /// Sets the secret file of the TCP transport. Default: `~/.parvm/secret`.
    #[must_use]
    pub fn secret_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.secret_file = Some(path.into());
        self
    }

    /// Sets how long a TCP worker keeps trying to join. Default: unset (one try).
    #[must_use]
    pub fn connect_wait(mut self, wait: Duration) -> Self {
        self.connect_wait = Some(wait);
        self
    }

    /// Sets the largest TCP message accepted, in bytes (at least 4 KiB, checked by
    /// [`ConfigBuilder::build`]). Default: unset (1 GiB).
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// Sets how long a TCP handshake may take (more than 0, checked by
    /// [`ConfigBuilder::build`]). Default: unset (5 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// Sets how long a joined TCP peer's host may not answer before the peer counts as
    /// lost (zero: never). Default: unset (60 s).
    #[must_use]
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = Some(timeout);
        self
    }

    /// Sets how long a waiting process polls before it sleeps (cut to one second).
    /// Default: unset (100 µs).
    #[must_use]
    pub fn spin_window(mut self, window: Duration) -> Self {
        self.spin_window = Some(window);
        self
    }

    /// Sets the names of the variables a spawner forwards to its workers. Default: none.
    #[must_use]
    pub fn forward_env<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.forward_env = names.into_iter().map(Into::into).collect();
        self
    }

    /// Sets whether log lines are never coloured. Default: `false`.
    #[must_use]
    pub fn no_color(mut self, no_color: bool) -> Self {
        self.no_color = no_color;
        self
    }

    /// Sets when mirrored inputs are shipped to a worker's host instead of read from its
    /// mirrored root. Default: [`ShipMode::Auto`].
    #[must_use]
    pub fn ship(mut self, mode: ShipMode) -> Self {
        self.ship = mode;
        self
    }

    /// Sets the most a host's cache of shipped files holds (both numbers at least 1,
    /// checked by [`ConfigBuilder::build`]). Default: unset (10% of the free space of
    /// local storage, the cache's own count limit).
    #[must_use]
    pub fn cache_max(mut self, max: CacheMax) -> Self {
        self.cache_max = Some(max);
        self
    }

    #[must_use]
    pub(crate) fn homes(mut self, homes: Homes) -> Self {
        self.homes = Some(homes);
        self
    }

    /// Validates and resolves everything, creating a missing local root (unless told
    /// otherwise by [`ConfigBuilder::create_local_root`]).
    ///
    /// # Errors
    /// A relative or unresolvable path, a missing mirrored root, a local root that cannot
    /// be created or is not a folder, a zero worker count, an unusable host name, a listen
    /// address without a port, a frame limit under 4 KiB, a zero handshake timeout, a cache
    /// limit of 0 bytes or 0 files.
    pub fn build(self) -> Result<Config, Error> {
        let homes = self.homes.unwrap_or_else(|| Homes {
            own: std::env::var_os("HOME")
                .map(PathBuf::from)
                .or_else(home_from_user_database),
        });
        let local_root = self.local_root.unwrap_or_else(std::env::temp_dir);
        let local_root = paths::expand(LOCAL_STORAGE_VAR, &local_root, &homes)?;
        let local_root = if self.create_local_root {
            paths::ensure_folder(LOCAL_STORAGE_VAR, &local_root)?
        } else {
            paths::resolve_if_present(LOCAL_STORAGE_VAR, &local_root)?
        };
        let mirrored_roots = match self.mirrored_roots {
            Some(roots) => roots,
            None => vec![homes.own.clone().ok_or_else(|| Error::NoHome {
                variable: MIRRORED_STORAGE_VAR,
                entry: PathBuf::from("~"),
            })?],
        };
        let mirrored_roots = mirrored_roots
            .iter()
            .map(|root| {
                let absolute = paths::expand(MIRRORED_STORAGE_VAR, root, &homes)?;
                if self.missing_mirrored_roots {
                    paths::resolve_if_present(MIRRORED_STORAGE_VAR, &absolute)
                } else {
                    paths::resolve_folder(MIRRORED_STORAGE_VAR, &absolute)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hostname = match self.hostname {
            Some(name) => crate::hostname::check(name)?,
            None => crate::hostname::system_hostname()?,
        };
        if self.workers == Some(0) {
            return Err(Error::NotACount {
                variable: WORKERS_VAR,
                value: "0".to_owned(),
            });
        }
        if let Some(addr) = &self.listen {
            parse::listen_form(LISTEN_VAR, addr)?;
        }
        if let Some(bytes) = self.max_frame {
            parse::check_frame_bytes(MAX_FRAME_VAR, bytes)?;
        }
        if self.handshake_timeout == Some(Duration::ZERO) {
            return Err(Error::BadValue {
                variable: HANDSHAKE_TIMEOUT_VAR,
                value: "0".to_owned(),
                reason: "give a number of seconds above 0 and at most 1000000000".to_owned(),
            });
        }
        if let Some(max) = self.cache_max
            && (max.bytes == 0 || max.count == Some(0))
        {
            return Err(Error::BadValue {
                variable: CACHE_MAX_VAR,
                value: match max.count {
                    Some(count) => format!("{},{count}", max.bytes),
                    None => max.bytes.to_string(),
                },
                reason: "the cache needs room for at least 1 byte and 1 file; give e.g. `20G`"
                    .to_owned(),
            });
        }
        // `~/.parvm/secret` with the `~` of the other variables; a home that is not
        // absolute (an empty HOME) gives no default rather than a relative path.
        let secret_file = self.secret_file.or_else(|| {
            homes
                .own
                .filter(|home| home.is_absolute())
                .map(|home| home.join(".parvm").join("secret"))
        });
        Ok(Config {
            local_root,
            mirrored_roots,
            hostname,
            workers: self.workers,
            replace_workers: self.replace_workers,
            transport: self.transport,
            log_filter: self.log_filter,
            listen: self.listen,
            connect: self.connect.filter(|addr| !addr.is_empty()),
            secret_file,
            connect_wait: self.connect_wait,
            max_frame: self.max_frame,
            handshake_timeout: self.handshake_timeout,
            peer_timeout: self.peer_timeout,
            spin_window: self.spin_window.map(|window| window.min(MAX_SPIN)),
            forward_env: self.forward_env,
            no_color: self.no_color,
            ship: self.ship,
            cache_max: self.cache_max,
        })
    }
}

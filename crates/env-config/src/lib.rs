//! Configuration of parvm: where task folders live, which folders are shared between
//! hosts, and the `PARVM_*` settings, read from the environment or built by hand.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `PARALLEL_LOCAL_STORAGE` | root of local storage; `~` expanded; created if missing (except by [`Config::from_env_read_only`]) | the system temp folder |
//! | `PARALLEL_MIRRORED_STORAGE` | `:`-separated shared folders; `~`, `~user` expanded; symlinks resolved | the home folder |
//! | `PARVM_TRANSPORT` | `local`, `tcp` or `mpi` | chosen by the VM |
//! | `PARVM_WORKERS` | worker slots for the local transport | chosen by the VM |
//! | `PARVM_HOSTNAME` | host name to report | the real host name |
//! | `PARVM_LOG` | log filter | chosen by the VM |
//!
//! A [`Config`] is a plain value: there is no global state, so tests can build several.
//!
//! ```
//! use parvm_env_config::Config;
//!
//! let shared = tempfile::tempdir()?;
//! let local = tempfile::tempdir()?;
//! let config = Config::builder()
//!     .local_root(local.path())
//!     .mirrored_roots([shared.path()])
//!     .hostname("node7")
//!     .build()?;
//! assert_eq!(config.hostname(), "node7");
//! assert_eq!(config.mirrored_roots(), [shared.path().canonicalize()?]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod paths;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use error::Error;
use paths::Homes;

/// Name of the variable holding the local storage root.
pub const LOCAL_STORAGE_VAR: &str = "PARALLEL_LOCAL_STORAGE";
/// Name of the variable holding the `:`-separated mirrored storage roots.
pub const MIRRORED_STORAGE_VAR: &str = "PARALLEL_MIRRORED_STORAGE";
/// Name of the variable choosing the transport.
pub const TRANSPORT_VAR: &str = "PARVM_TRANSPORT";
/// Name of the variable giving the number of local workers.
pub const WORKERS_VAR: &str = "PARVM_WORKERS";
/// Name of the variable overriding the host name.
pub const HOSTNAME_VAR: &str = "PARVM_HOSTNAME";
/// Name of the variable holding the log filter.
pub const LOG_VAR: &str = "PARVM_LOG";

/// Which transport carries messages between the spawner and the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Workers are processes on this machine, over Unix sockets.
    Local,
    /// Workers connect over TCP, authenticated by a shared secret.
    Tcp,
    /// Workers are MPI ranks started by `mpirun`.
    Mpi,
}

impl TransportKind {
    /// The name used in `PARVM_TRANSPORT`.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Local => "local",
            TransportKind::Tcp => "tcp",
            TransportKind::Mpi => "mpi",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        match value.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(TransportKind::Local),
            "tcp" => Ok(TransportKind::Tcp),
            "mpi" => Ok(TransportKind::Mpi),
            _ => Err(Error::UnknownTransport {
                variable: TRANSPORT_VAR,
                value: value.to_owned(),
            }),
        }
    }
}

/// The resolved configuration of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    local_root: PathBuf,
    mirrored_roots: Vec<PathBuf>,
    hostname: String,
    workers: Option<usize>,
    transport: Option<TransportKind>,
    log_filter: Option<String>,
}

impl Config {
    /// Reads the configuration from this process's environment, creating a missing local root.
    ///
    /// # Errors
    /// Any variable with a bad value; the error names the variable and the entry.
    pub fn from_env() -> Result<Config, Error> {
        Config::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads the configuration from `lookup` instead of the environment (`HOME` is looked up
    /// through it as well), creating a missing local root.
    ///
    /// # Errors
    /// Any variable with a bad value; the error names the variable and the entry.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Config, Error> {
        Config::builder_from_lookup(lookup)?.build()
    }

    /// Reads the configuration from this process's environment like [`Config::from_env`],
    /// but creates nothing: a missing local root is kept as given (absolute, `~` expanded),
    /// for commands that only look, such as `parvm storage list`.
    ///
    /// # Errors
    /// Any variable with a bad value; the error names the variable and the entry.
    pub fn from_env_read_only() -> Result<Config, Error> {
        Config::from_lookup_read_only(|name| std::env::var_os(name))
    }

    /// Reads the configuration from `lookup` like [`Config::from_lookup`], but creates
    /// nothing (see [`Config::from_env_read_only`]).
    ///
    /// # Errors
    /// Any variable with a bad value; the error names the variable and the entry.
    pub fn from_lookup_read_only(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Config, Error> {
        Config::builder_from_lookup(lookup)?
            .create_local_root(false)
            .build()
    }

    fn builder_from_lookup(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<ConfigBuilder, Error> {
        let homes = Homes {
            own: lookup("HOME")
                .map(PathBuf::from)
                .or_else(home_from_user_database),
        };
        let mut builder = Config::builder().homes(homes);
        if let Some(value) = lookup(LOCAL_STORAGE_VAR) {
            builder.local_root = Some(PathBuf::from(value));
        }
        if let Some(value) = lookup(MIRRORED_STORAGE_VAR) {
            builder.mirrored_roots = Some(paths::split_list(MIRRORED_STORAGE_VAR, &value)?);
        }
        if let Some(value) = lookup(HOSTNAME_VAR) {
            builder.hostname = Some(text(HOSTNAME_VAR, value)?);
        }
        if let Some(value) = lookup(WORKERS_VAR) {
            builder.workers = Some(parse_count(WORKERS_VAR, &text(WORKERS_VAR, value)?)?);
        }
        if let Some(value) = lookup(TRANSPORT_VAR) {
            builder.transport = Some(text(TRANSPORT_VAR, value)?.parse()?);
        }
        if let Some(value) = lookup(LOG_VAR) {
            builder.log_filter = Some(text(LOG_VAR, value)?);
        }
        Ok(builder)
    }

    /// Starts a configuration built by hand; unset values take the same defaults as the
    /// environment's.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The local storage root: absolute, symlinks resolved, existing. Read without
    /// creating it ([`Config::from_env_read_only`], [`ConfigBuilder::create_local_root`]),
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

    /// The transport asked for by `PARVM_TRANSPORT`, if set.
    pub fn transport(&self) -> Option<TransportKind> {
        self.transport
    }

    /// The log filter from `PARVM_LOG`, if set.
    pub fn log_filter(&self) -> Option<&str> {
        self.log_filter.as_deref()
    }
}

/// Builds a [`Config`] by hand. Every setter's default is the environment's default, not
/// the environment's value: a builder never reads the environment except for the home folder.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    local_root: Option<PathBuf>,
    create_local_root: bool,
    mirrored_roots: Option<Vec<PathBuf>>,
    hostname: Option<String>,
    workers: Option<usize>,
    transport: Option<TransportKind>,
    log_filter: Option<String>,
    homes: Option<Homes>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder {
            local_root: None,
            create_local_root: true,
            mirrored_roots: None,
            hostname: None,
            workers: None,
            transport: None,
            log_filter: None,
            homes: None,
        }
    }
}

impl ConfigBuilder {
    /// Whether [`ConfigBuilder::build`] creates a missing local root. Default: `true`.
    /// With `false` nothing is created, and a missing root is kept as given (absolute,
    /// `~` expanded); a root that exists must still be a folder.
    pub fn create_local_root(mut self, create: bool) -> Self {
        self.create_local_root = create;
        self
    }

    /// Sets the local storage root (`~` is expanded). Default: the system temp folder.
    pub fn local_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.local_root = Some(path.into());
        self
    }

    /// Sets the mirrored storage roots, in order (`~` is expanded). Default: the home folder.
    pub fn mirrored_roots<P: Into<PathBuf>>(mut self, roots: impl IntoIterator<Item = P>) -> Self {
        self.mirrored_roots = Some(roots.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the host name to report. Default: the real host name.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// Sets the number of local worker slots. Default: unset (the VM uses the core count).
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = Some(count);
        self
    }

    /// Sets the transport. Default: unset (the VM chooses).
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = Some(kind);
        self
    }

    /// Sets the log filter. Default: unset (warnings only).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = Some(filter.into());
        self
    }

    fn homes(mut self, homes: Homes) -> Self {
        self.homes = Some(homes);
        self
    }

    /// Validates and resolves everything, creating a missing local root (unless told
    /// otherwise by [`ConfigBuilder::create_local_root`]).
    ///
    /// # Errors
    /// A relative or unresolvable path, a missing mirrored root, a local root that cannot
    /// be created or is not a folder, a zero worker count, an unusable host name.
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
                paths::resolve_folder(MIRRORED_STORAGE_VAR, &absolute)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hostname = match self.hostname {
            Some(name) => check_hostname(name)?,
            None => system_hostname()?,
        };
        if self.workers == Some(0) {
            return Err(Error::NotACount {
                variable: WORKERS_VAR,
                value: "0".to_owned(),
            });
        }
        Ok(Config {
            local_root,
            mirrored_roots,
            hostname,
            workers: self.workers,
            transport: self.transport,
            log_filter: self.log_filter,
        })
    }
}

/// The effective user's name, used to name the per-user storage folder.
///
/// # Errors
/// The effective uid has no entry in the user database.
pub fn current_user() -> Result<String, Error> {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.name),
        _ => Err(Error::NoUserName { uid: uid.as_raw() }),
    }
}

fn home_from_user_database() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|user| user.dir)
}

fn text(variable: &'static str, value: OsString) -> Result<String, Error> {
    value
        .into_string()
        .map_err(|_| Error::NotUnicode { variable })
}

fn parse_count(variable: &'static str, value: &str) -> Result<usize, Error> {
    match value.trim().parse::<usize>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(Error::NotACount {
            variable,
            value: value.to_owned(),
        }),
    }
}

fn check_hostname(name: String) -> Result<String, Error> {
    let usable = !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '/');
    if usable {
        Ok(name)
    } else {
        Err(Error::BadHostname {
            variable: HOSTNAME_VAR,
            value: name,
        })
    }
}

fn system_hostname() -> Result<String, Error> {
    let name = nix::unistd::gethostname().map_err(|errno| Error::Hostname(errno.into()))?;
    name.into_string().map_err(|_| Error::NotUnicode {
        variable: HOSTNAME_VAR,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_or_fail_with_the_value() {
        assert_eq!(parse_count("V", " 4 ").unwrap(), 4);
        for bad in ["0", "-1", "four", ""] {
            let err = parse_count("V", bad).unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn transports_parse_case_insensitively() {
        assert_eq!("MPI".parse::<TransportKind>().unwrap(), TransportKind::Mpi);
        assert_eq!(" tcp".parse::<TransportKind>().unwrap(), TransportKind::Tcp);
        assert!("pvm".parse::<TransportKind>().is_err());
    }

    #[test]
    fn hostnames_must_be_usable() {
        assert!(check_hostname("node-1.cluster".into()).is_ok());
        for bad in ["", "a b", "a/b"] {
            assert!(check_hostname(bad.into()).is_err(), "{bad:?}");
        }
    }
}

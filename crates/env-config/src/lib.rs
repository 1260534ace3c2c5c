//! Configuration of parvm: where task folders live, which folders are shared between
//! hosts, and the `PARVM_*` settings, read from the environment or built by hand.
//!
//! Every variable parvm reads is in the table [`vars::VARS`] (name, meaning, default),
//! and in the user guide's page docs/configuration.md. [`Config`] holds them all, parsed
//! and checked, with errors that name the variable; [`hostname()`] is the one reader of
//! the host name a process reports.
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

mod builder;
mod config;
mod environment;
mod error;
mod hostname;
pub mod parse;
mod paths;
mod ship;
mod transport_kind;
mod user;
pub mod vars;

pub use builder::ConfigBuilder;
pub use config::Config;
pub use error::Error;
pub use hostname::{hostname, hostname_override, system_hostname};
pub use ship::{CacheMax, ShipMode};
pub use transport_kind::TransportKind;
pub use user::current_user;
pub use vars::{
    CACHE_MAX_VAR, CONNECT_VAR, CONNECT_WAIT_VAR, FORWARD_ENV_VAR, HANDSHAKE_TIMEOUT_VAR,
    HOSTNAME_VAR, LISTEN_VAR, LOCAL_STORAGE_VAR, LOG_VAR, MAX_FRAME_VAR, MIRRORED_STORAGE_VAR,
    NO_COLOR_VAR, PEER_TIMEOUT_VAR, SECRET_FILE_VAR, SHIP_VAR, SPIN_US_VAR, TRANSPORT_VAR,
    WORKERS_VAR,
};

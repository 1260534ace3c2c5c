//! Reading a [`Config`] from the environment, or from any lookup that stands for it:
//! which variable feeds which setting, and what an empty value means.
//!
//! It must not know the accepted forms (`parse.rs`) nor the checks and defaults that
//! values given by hand go through too (`builder.rs`).

use std::ffi::OsString;
use std::path::PathBuf;

use crate::builder::ConfigBuilder;
use crate::parse::{self, optional_text, text};
use crate::paths::Homes;
use crate::user::home_from_user_database;
use crate::vars::*;
use crate::{Config, Error};

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

    /// Reads the configuration of a worker from this process's environment like
    /// [`Config::from_env`], but accepts a mirrored root that does not exist on this host
    /// ([`ConfigBuilder::allow_missing_mirrored_roots`]): the spawner ships the inputs
    /// from such a root, so a worker host needs none of the spawner's folders.
    ///
    /// # Errors
    /// Any variable with a bad value; the error names the variable and the entry.
    pub fn from_env_as_worker() -> Result<Config, Error> {
        Config::from_lookup_as_worker(|name| std::env::var_os(name))
    }

    /// Reads a worker's configuration from `lookup` like [`Config::from_lookup`], with
    /// missing mirrored roots accepted (see [`Config::from_env_as_worker`]).
    ///
    /// # Errors
    /// Any variable with a bad value; the error names the variable and the entry.
    pub fn from_lookup_as_worker(
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Config, Error> {
        Config::builder_from_lookup(lookup)?
            .allow_missing_mirrored_roots(true)
            .build()
    }

    /// Reads the configuration from this process's environment like [`Config::from_env`],
    /// but creates nothing: a missing local root is kept as given (absolute, `~` expanded),
    /// for commands that only look, such as `parvm storage list`, and so is a missing
    /// mirrored root (as for [`Config::from_env_as_worker`]).
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
            .allow_missing_mirrored_roots(true)
            .build()
    }

    /// `PARVM_CONNECT` alone, as [`Config::connect`] reads it (unset or empty: `None`):
    /// whether this process was started as a TCP worker, for a program whose own
    /// configuration was built by hand (how a process was started is for its launcher to
    /// say, whatever the program configured).
    ///
    /// # Errors
    /// [`Error::NotUnicode`] naming `PARVM_CONNECT`.
    pub fn connect_from_env() -> Result<Option<String>, Error> {
        optional_text(CONNECT_VAR, std::env::var_os(CONNECT_VAR))
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
            builder.mirrored_roots = Some(crate::paths::split_list(MIRRORED_STORAGE_VAR, &value)?);
        }
        builder.hostname = crate::hostname::override_from_lookup(&lookup)?;
        if let Some(value) = lookup(WORKERS_VAR) {
            builder.workers = Some(parse::count(WORKERS_VAR, &text(WORKERS_VAR, value)?)?);
        }
        if let Some(value) = lookup(REPLACE_WORKERS_VAR) {
            builder.replace_workers = Some(parse::small_count(
                REPLACE_WORKERS_VAR,
                &text(REPLACE_WORKERS_VAR, value)?,
            )?);
        }
        if let Some(value) = lookup(TRANSPORT_VAR) {
            builder.transport = Some(text(TRANSPORT_VAR, value)?.parse()?);
        }
        if let Some(value) = lookup(LOG_VAR) {
            builder.log_filter = Some(text(LOG_VAR, value)?);
        }
        // The settings below were read by the transports and the VM themselves, which
        // took an empty value as unset; so does this.
        if let Some(value) = optional_text(LISTEN_VAR, lookup(LISTEN_VAR))? {
            builder.listen = Some(value);
        }
        builder.connect = optional_text(CONNECT_VAR, lookup(CONNECT_VAR))?;
        builder.secret_file = lookup(SECRET_FILE_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(value) = optional_text(CONNECT_WAIT_VAR, lookup(CONNECT_WAIT_VAR))? {
            builder.connect_wait = Some(parse::seconds(CONNECT_WAIT_VAR, &value, true)?);
        }
        if let Some(value) = optional_text(MAX_FRAME_VAR, lookup(MAX_FRAME_VAR))? {
            builder.max_frame = Some(parse::frame_bytes(MAX_FRAME_VAR, &value)?);
        }
        if let Some(value) = optional_text(HANDSHAKE_TIMEOUT_VAR, lookup(HANDSHAKE_TIMEOUT_VAR))? {
            builder.handshake_timeout = Some(parse::seconds(HANDSHAKE_TIMEOUT_VAR, &value, false)?);
        }
        if let Some(value) = optional_text(PEER_TIMEOUT_VAR, lookup(PEER_TIMEOUT_VAR))? {
            builder.peer_timeout = Some(parse::seconds(PEER_TIMEOUT_VAR, &value, true)?);
        }
        if let Some(value) = optional_text(SPIN_US_VAR, lookup(SPIN_US_VAR))? {
            builder.spin_window = Some(parse::spin_window(SPIN_US_VAR, &value)?);
        }
        if let Some(value) = optional_text(SHIP_VAR, lookup(SHIP_VAR))? {
            builder.ship = value.parse()?;
        }
        if let Some(value) = optional_text(CACHE_MAX_VAR, lookup(CACHE_MAX_VAR))? {
            builder.cache_max = Some(value.parse()?);
        }
        if let Some(value) = lookup(FORWARD_ENV_VAR) {
            builder.forward_env = parse::name_list(&text(FORWARD_ENV_VAR, value)?);
        }
        builder.no_color = parse::flag(lookup(NO_COLOR_VAR).as_deref());
        Ok(builder)
    }
}

//! The effective user, from the user database: its name (which names the per-user storage
//! folder) and its home folder (the default of `~` when `HOME` is unset). It must not
//! know the environment.

use std::path::PathBuf;

use crate::Error;

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

/// The effective user's home folder from the user database, if it has an entry.
pub(crate) fn home_from_user_database() -> Option<PathBuf> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|user| user.dir)
}

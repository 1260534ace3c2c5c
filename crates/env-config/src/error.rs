//! The one error type of `parvm-env-config`.

use std::path::PathBuf;

/// A configuration value that cannot be used, with the variable and entry it came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A variable holds bytes that are not UTF-8 where text is required.
    #[error("{variable} is not valid UTF-8; set it to plain text")]
    NotUnicode {
        /// The environment variable.
        variable: &'static str,
    },
    /// A `:`-separated list has an empty entry (for example a trailing `:`).
    #[error(
        "{variable} has an empty entry at position {position} (a doubled or trailing `:`?); remove it, an empty entry would make the current folder shared"
    )]
    EmptyEntry {
        /// The environment variable.
        variable: &'static str,
        /// The 1-based position of the empty entry.
        position: usize,
    },
    /// An entry is a relative path where an absolute one is required.
    #[error("{variable} entry `{}` is a relative path; give an absolute path (or one starting with `~`)", entry.display())]
    RelativePath {
        /// The environment variable.
        variable: &'static str,
        /// The entry as given.
        entry: PathBuf,
    },
    /// `~` was used but the home folder is unknown.
    #[error("{variable} entry `{}` starts with `~` but the home folder is unknown; set HOME or give an absolute path", entry.display())]
    NoHome {
        /// The environment variable.
        variable: &'static str,
        /// The entry as given.
        entry: PathBuf,
    },
    /// `~user` names a user that does not exist.
    #[error("{variable} entry `{}` names user `{user}`, who does not exist on this host; check the spelling or give an absolute path", entry.display())]
    UnknownUser {
        /// The environment variable.
        variable: &'static str,
        /// The entry as given.
        entry: PathBuf,
        /// The user name after `~`.
        user: String,
    },
    /// A mirrored-storage root does not exist or cannot be resolved.
    #[error("{variable} entry `{}` cannot be used; create the folder or fix the entry", entry.display())]
    Unresolvable {
        /// The environment variable.
        variable: &'static str,
        /// The entry after `~` expansion.
        entry: PathBuf,
        /// Why it could not be resolved.
        #[source]
        source: std::io::Error,
    },
    /// A path that must be a folder is something else.
    #[error("{variable} entry `{}` is not a folder; point it at a folder", entry.display())]
    NotAFolder {
        /// The environment variable.
        variable: &'static str,
        /// The path.
        entry: PathBuf,
    },
    /// The local storage root is missing and cannot be created.
    #[error("{variable} folder `{}` does not exist and cannot be created; create it or choose another folder", path.display())]
    CreateLocalRoot {
        /// The environment variable.
        variable: &'static str,
        /// The folder.
        path: PathBuf,
        /// Why it could not be created.
        #[source]
        source: std::io::Error,
    },
    /// A number was expected.
    #[error(
        "{variable} is `{value}`, not a whole number of at least 1; set it to one (e.g. 4) or unset it"
    )]
    NotACount {
        /// The environment variable.
        variable: &'static str,
        /// The value as given.
        value: String,
    },
    /// An unknown transport name.
    #[error("{variable} is `{value}`; use `local`, `tcp` or `mpi`")]
    UnknownTransport {
        /// The environment variable.
        variable: &'static str,
        /// The value as given.
        value: String,
    },
    /// A host name that is empty or holds white space or `/`.
    #[error(
        "{variable} is {}, which is not a usable host name (empty, or holds white space or `/`); set it to this machine's name or unset it",
        shown(value)
    )]
    BadHostname {
        /// The environment variable.
        variable: &'static str,
        /// The value as given.
        value: String,
    },
    /// A `PARVM_*` setting holds a value of the wrong form.
    #[error("{variable} is `{value}`, which cannot be used: {reason}")]
    BadValue {
        /// The environment variable.
        variable: &'static str,
        /// The value as given.
        value: String,
        /// What is wrong, and what to set instead.
        reason: String,
    },
    /// The host of the listen address does not resolve.
    #[error(
        "{variable} is `{value}`, which is not an address to listen on; give host:port with a host this machine resolves, e.g. 0.0.0.0:7070"
    )]
    ListenAddress {
        /// The environment variable.
        variable: &'static str,
        /// The value as given.
        value: String,
        /// Why it did not resolve.
        #[source]
        source: std::io::Error,
    },
    /// Neither the secret file nor the home folder is known.
    #[error(
        "{variable} is not set and the home folder is unknown, so the default secret file ~/.parvm/secret cannot be found; set {variable} (or HOME)"
    )]
    NoSecretFile {
        /// The environment variable.
        variable: &'static str,
    },
    /// The system host name could not be read.
    #[error("cannot read this machine's host name; set PARVM_HOSTNAME")]
    Hostname(#[source] std::io::Error),
    /// The effective user has no name.
    #[error(
        "the effective user (uid {uid}) has no entry in the user database, so its storage folder cannot be named; run as a user with a name (in a container, add one to /etc/passwd)"
    )]
    NoUserName {
        /// The effective user id.
        uid: u32,
    },
}

/// A value in a message: `is empty` reads better than ``` is `` ```.
fn shown(value: &str) -> String {
    if value.is_empty() {
        "empty".to_owned()
    } else {
        format!("`{value}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message names its variable (or uid) and what to do.
    #[test]
    fn every_message_names_its_variable_and_a_remedy() {
        let entry = || PathBuf::from("~ann/x");
        let io = || std::io::Error::from_raw_os_error(2);
        const VAR: &str = "PARALLEL_MIRRORED_STORAGE";
        let rows: Vec<(Error, &[&str])> = vec![
            (Error::NotUnicode { variable: VAR }, &[VAR, "plain text"]),
            (
                Error::EmptyEntry {
                    variable: VAR,
                    position: 2,
                },
                &[VAR, "position 2", "remove it"],
            ),
            (
                Error::RelativePath {
                    variable: VAR,
                    entry: entry(),
                },
                &[VAR, "~ann/x", "absolute path"],
            ),
            (
                Error::NoHome {
                    variable: VAR,
                    entry: entry(),
                },
                &[VAR, "~ann/x", "set HOME"],
            ),
            (
                Error::UnknownUser {
                    variable: VAR,
                    entry: entry(),
                    user: "ann".into(),
                },
                &[VAR, "~ann/x", "`ann`", "check the spelling"],
            ),
            (
                Error::Unresolvable {
                    variable: VAR,
                    entry: entry(),
                    source: io(),
                },
                &[VAR, "~ann/x", "create the folder"],
            ),
            (
                Error::NotAFolder {
                    variable: VAR,
                    entry: entry(),
                },
                &[VAR, "~ann/x", "point it at a folder"],
            ),
            (
                Error::CreateLocalRoot {
                    variable: "PARALLEL_LOCAL_STORAGE",
                    path: entry(),
                    source: io(),
                },
                &["PARALLEL_LOCAL_STORAGE", "~ann/x", "create it"],
            ),
            (
                Error::NotACount {
                    variable: "PARVM_WORKERS",
                    value: "0".into(),
                },
                &["PARVM_WORKERS", "`0`", "unset it"],
            ),
            (
                Error::UnknownTransport {
                    variable: "PARVM_TRANSPORT",
                    value: "pvm".into(),
                },
                &["PARVM_TRANSPORT", "`pvm`", "use `local`"],
            ),
            (
                Error::BadHostname {
                    variable: "PARVM_HOSTNAME",
                    value: "a b".into(),
                },
                &["PARVM_HOSTNAME", "`a b`", "unset it"],
            ),
            (
                Error::BadHostname {
                    variable: "PARVM_HOSTNAME",
                    value: String::new(),
                },
                &["PARVM_HOSTNAME is empty", "unset it"],
            ),
            (
                Error::BadValue {
                    variable: "PARVM_MAX_FRAME",
                    value: "lots".into(),
                    reason: "use a byte count such as `1G`".into(),
                },
                &["PARVM_MAX_FRAME", "`lots`", "use a byte count"],
            ),
            (
                Error::ListenAddress {
                    variable: "PARVM_LISTEN",
                    value: "nohost:1".into(),
                    source: io(),
                },
                &["PARVM_LISTEN", "`nohost:1`", "give host:port"],
            ),
            (
                Error::NoSecretFile {
                    variable: "PARVM_SECRET_FILE",
                },
                &[
                    "PARVM_SECRET_FILE",
                    "~/.parvm/secret",
                    "set PARVM_SECRET_FILE",
                ],
            ),
            (Error::Hostname(io()), &["host name", "set PARVM_HOSTNAME"]),
            (
                Error::NoUserName { uid: 1234 },
                &["uid 1234", "run as a user with a name"],
            ),
        ];
        for (error, words) in rows {
            let text = error.to_string();
            for word in words {
                assert!(text.contains(word), "{word:?} missing in: {text}");
            }
            assert!(!text.ends_with('.'), "{text}");
        }
    }
}

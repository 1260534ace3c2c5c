//! The one reader of the host name a process reports: `PARVM_HOSTNAME` when set, checked,
//! else the system's host name.
//!
//! [`Config::hostname`](crate::Config::hostname) comes from here, and so should every
//! other crate's host name. It must not know who uses the name (storage markers, peers,
//! log lines) nor fall back to a made-up name: an unusable name is an error.

use std::ffi::OsString;

use crate::parse::text;
use crate::{Error, HOSTNAME_VAR};

/// The host name this process reports: `PARVM_HOSTNAME` when set, else the system's host
/// name ([`system_hostname`]).
///
/// # Errors
/// `PARVM_HOSTNAME` is not UTF-8, empty, or holds white space or `/`; or it is unset and
/// the system's host name cannot be read or is not UTF-8.
pub fn hostname() -> Result<String, Error> {
    from_lookup(|name| std::env::var_os(name))
}

/// `PARVM_HOSTNAME`, checked, or `None` when it is unset: for a transport whose default
/// is not the system's host name (MPI reports the processor name).
///
/// # Errors
/// `PARVM_HOSTNAME` is not UTF-8, empty, or holds white space or `/`.
pub fn hostname_override() -> Result<Option<String>, Error> {
    override_from_lookup(|name| std::env::var_os(name))
}

/// This machine's host name as the system gives it, whatever `PARVM_HOSTNAME` says.
///
/// # Errors
/// The name cannot be read, or is not UTF-8.
pub fn system_hostname() -> Result<String, Error> {
    let name = nix::unistd::gethostname().map_err(|errno| Error::Hostname(errno.into()))?;
    name.into_string().map_err(|_| Error::NotUnicode {
        variable: HOSTNAME_VAR,
    })
}

/// [`hostname`] with `lookup` in place of the environment.
pub(crate) fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<String, Error> {
    match override_from_lookup(lookup)? {
        Some(name) => Ok(name),
        None => system_hostname(),
    }
}

/// [`hostname_override`] with `lookup` in place of the environment.
pub(crate) fn override_from_lookup(
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Option<String>, Error> {
    match lookup(HOSTNAME_VAR) {
        Some(value) => check(text(HOSTNAME_VAR, value)?).map(Some),
        None => Ok(None),
    }
}

/// A host name given by the user: not empty, no white space (it would split log lines
/// and listings) and no `/` (it names files).
pub(crate) fn check(name: String) -> Result<String, Error> {
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

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStringExt;

    use super::*;

    #[test]
    fn hostnames_must_be_usable() {
        assert!(check("node-1.cluster".into()).is_ok());
        for bad in ["", "a b", "a/b"] {
            assert!(check(bad.into()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_override_wins_and_is_checked() {
        fn lookup(value: Option<&'static str>) -> impl Fn(&str) -> Option<OsString> {
            move |_| value.map(OsString::from)
        }
        assert_eq!(from_lookup(lookup(Some("node-a"))).unwrap(), "node-a");
        assert_eq!(override_from_lookup(lookup(None)).unwrap(), None);
        assert_eq!(
            from_lookup(lookup(None)).unwrap(),
            system_hostname().unwrap()
        );
        let empty = from_lookup(lookup(Some(""))).unwrap_err().to_string();
        assert!(empty.contains("PARVM_HOSTNAME is empty"), "{empty}");
        let binary = override_from_lookup(|_| Some(OsString::from_vec(b"n\xff".to_vec())));
        assert!(matches!(binary, Err(Error::NotUnicode { .. })));
    }
}

//! Turning one entry of a path variable into an absolute path.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// Where `~` and `~user` point, kept apart from the environment so tests can choose.
#[derive(Debug, Clone, Default)]
pub(crate) struct Homes {
    /// The current user's home folder (`HOME`, else the user database).
    pub own: Option<PathBuf>,
}

impl Homes {
    /// The home folder of `user`, from the user database.
    fn of(&self, user: &str) -> Option<PathBuf> {
        nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .map(|entry| entry.dir)
    }
}

/// Splits a `:`-separated list, refusing empty entries: PyOPUS silently turned them into
/// the current folder, which then counted as shared storage.
pub(crate) fn split_list(variable: &'static str, value: &OsStr) -> Result<Vec<PathBuf>, Error> {
    value
        .as_bytes()
        .split(|&byte| byte == b':')
        .enumerate()
        .map(|(index, entry)| {
            if entry.is_empty() {
                Err(Error::EmptyEntry {
                    variable,
                    position: index + 1,
                })
            } else {
                Ok(PathBuf::from(OsString::from_vec(entry.to_vec())))
            }
        })
        .collect()
}

/// Expands a leading `~` or `~user` and requires the result to be absolute.
pub(crate) fn expand(
    variable: &'static str,
    entry: &Path,
    homes: &Homes,
) -> Result<PathBuf, Error> {
    let bytes = entry.as_os_str().as_bytes();
    let expanded = match bytes.strip_prefix(b"~") {
        None => entry.to_path_buf(),
        Some(rest) => {
            let split = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let (user, tail) = rest.split_at(split);
            let home = if user.is_empty() {
                homes.own.clone().ok_or_else(|| Error::NoHome {
                    variable,
                    entry: entry.to_path_buf(),
                })?
            } else {
                let user = std::str::from_utf8(user).map_err(|_| Error::NotUnicode { variable })?;
                homes.of(user).ok_or_else(|| Error::UnknownUser {
                    variable,
                    entry: entry.to_path_buf(),
                    user: user.to_owned(),
                })?
            };
            let tail = Path::new(OsStr::from_bytes(tail.strip_prefix(b"/").unwrap_or(tail)));
            if tail.as_os_str().is_empty() {
                home
            } else {
                home.join(tail)
            }
        }
    };
    if expanded.is_absolute() {
        Ok(expanded)
    } else {
        Err(Error::RelativePath {
            variable,
            entry: entry.to_path_buf(),
        })
    }
}

/// Resolves symlinks in an existing folder, so roots compare by what they really are.
pub(crate) fn resolve_folder(variable: &'static str, path: &Path) -> Result<PathBuf, Error> {
    let resolved = path.canonicalize().map_err(|source| Error::Unresolvable {
        variable,
        entry: path.to_path_buf(),
        source,
    })?;
    if resolved.is_dir() {
        Ok(resolved)
    } else {
        Err(Error::NotAFolder {
            variable,
            entry: path.to_path_buf(),
        })
    }
}

/// Creates the local root when missing and resolves it.
pub(crate) fn ensure_folder(variable: &'static str, path: &Path) -> Result<PathBuf, Error> {
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(|source| Error::CreateLocalRoot {
            variable,
            path: path.to_path_buf(),
            source,
        })?;
    }
    resolve_folder(variable, path)
}

/// Resolves a folder when it exists; a missing one (nothing there, or a dangling symlink)
/// is returned as given: a local root for callers that only look, a worker's mirrored
/// root that the spawner ships.
pub(crate) fn resolve_if_present(variable: &'static str, path: &Path) -> Result<PathBuf, Error> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        _ => resolve_folder(variable, path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn homes() -> Homes {
        Homes {
            own: Some(PathBuf::from("/home/ann")),
        }
    }

    #[test]
    fn expands_tilde_forms() {
        let cases = [
            ("~", "/home/ann"),
            ("~/", "/home/ann"),
            ("~/x/y", "/home/ann/x/y"),
            ("/abs/~/x", "/abs/~/x"),
            ("~root", "/root"),
            ("~root/sub", "/root/sub"),
        ];
        for (given, want) in cases {
            let got = expand("V", Path::new(given), &homes()).unwrap();
            assert_eq!(got, Path::new(want), "{given}");
        }
    }

    #[test]
    fn refuses_relative_unknown_user_and_missing_home() {
        assert!(matches!(
            expand("V", Path::new("rel/x"), &homes()),
            Err(Error::RelativePath { .. })
        ));
        assert!(matches!(
            expand("V", Path::new("~no-such-user-parvm/x"), &homes()),
            Err(Error::UnknownUser { .. })
        ));
        assert!(matches!(
            expand("V", Path::new("~/x"), &Homes::default()),
            Err(Error::NoHome { .. })
        ));
    }

    #[test]
    fn split_refuses_empty_entries() {
        let ok = split_list("V", OsStr::new("/a:/b")).unwrap();
        assert_eq!(ok, [PathBuf::from("/a"), PathBuf::from("/b")]);
        for bad in ["/a:", ":/a", "/a::/b", ""] {
            assert!(
                matches!(
                    split_list("V", OsStr::new(bad)),
                    Err(Error::EmptyEntry { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn split_keeps_non_utf8_bytes() {
        let value = OsStr::from_bytes(b"/a\xff:/b");
        let got = split_list("V", value).unwrap();
        assert_eq!(got[0].as_os_str().as_bytes(), b"/a\xff");
    }
}

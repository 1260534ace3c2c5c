//! Host-independent names for shared files.
//!
//! Mirrored root *i* is the same physical folder on every host, though it may be mounted at
//! a different path on each. An [`AbstractPath`] names a file as (root index, relative
//! suffix); [`to_abstract`] makes one on the spawner's host and [`to_actual`] turns it back
//! into a path on the worker's host.

use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::glob::has_glob;
use std::os::unix::ffi::OsStrExt;

/// A path inside mirrored root number `root`, valid on every host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AbstractPath {
    /// Index into the ordered list of mirrored roots.
    pub root: usize,
    /// The rest of the path below the root: relative, without `..`; may hold glob characters.
    #[serde(with = "crate::pathser")]
    pub suffix: PathBuf,
}

/// Translates `path` (absolute, or relative to the process's current folder) into an
/// abstract path. See [`to_abstract_from`].
///
/// # Errors
///
/// As [`to_abstract_from`]; also [`Error::Read`] when the current folder cannot be read.
pub fn to_abstract(roots: &[PathBuf], path: &Path) -> Result<AbstractPath> {
    if path.is_absolute() {
        return to_abstract_from(roots, Path::new("/"), path);
    }
    let cwd = std::env::current_dir().map_err(|source| Error::Read {
        path: PathBuf::from("."),
        source,
    })?;
    to_abstract_from(roots, &cwd, path)
}

/// Translates `path` into an abstract path; a relative `path` is taken relative to `cwd`.
///
/// The path is made absolute and lexically normalised (`.` dropped, `..` removes the previous
/// component), then symlinks are resolved in its literal part (the components before the first
/// one holding `*`, `?` or `[`; the longest existing prefix of it is canonicalised). The first
/// root, in list order, that is a whole-component prefix of the result wins (`/home` is not a
/// prefix of `/home2/x`). `roots` must already be canonical (as
/// `parvm_env_config::Config::mirrored_roots` gives them).
///
/// # Errors
///
/// [`Error::RelativeCwd`] when `path` is relative and `cwd` is not absolute;
/// [`Error::NoRoot`] when no root holds the path.
pub fn to_abstract_from(roots: &[PathBuf], cwd: &Path, path: &Path) -> Result<AbstractPath> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else if cwd.is_absolute() {
        cwd.join(path)
    } else {
        return Err(Error::RelativeCwd {
            cwd: cwd.to_path_buf(),
        });
    };
    let normal = normalize(&absolute);
    let resolved = resolve_literal_prefix(&normal);
    for (root, prefix) in roots.iter().enumerate() {
        if let Ok(suffix) = resolved.strip_prefix(prefix) {
            return Ok(AbstractPath {
                root,
                suffix: suffix.to_path_buf(),
            });
        }
    }
    Err(Error::NoRoot {
        path: resolved,
        roots: list_roots(roots),
    })
}

/// Translates an abstract path into a path on this host: root `root` joined with the suffix.
///
/// # Errors
///
/// [`Error::RootIndex`] when this host has fewer roots than the index needs;
/// [`Error::BadSuffix`] when the suffix is absolute or holds `..` (a malformed request).
pub fn to_actual(roots: &[PathBuf], path: &AbstractPath) -> Result<PathBuf> {
    let root = roots.get(path.root).ok_or(Error::RootIndex {
        index: path.root,
        count: roots.len(),
    })?;
    if !path
        .suffix
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(Error::BadSuffix {
            suffix: path.suffix.clone(),
        });
    }
    if path.suffix.as_os_str().is_empty() {
        return Ok(root.clone());
    }
    Ok(root.join(&path.suffix))
}

/// Lexical normalisation of an absolute path: drops `.`, lets `..` remove the previous
/// component (never climbing above `/`).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Canonicalises the longest existing prefix of the literal part of an absolute, normal path,
/// and appends the rest unchanged.
fn resolve_literal_prefix(path: &Path) -> PathBuf {
    let components: Vec<Component<'_>> = path.components().collect();
    let literal = components
        .iter()
        .position(|c| matches!(c, Component::Normal(n) if has_glob(n.as_bytes())))
        .unwrap_or(components.len());
    let mut cut = literal;
    loop {
        let prefix: PathBuf = components[..cut].iter().collect();
        if let Ok(canonical) = fs::canonicalize(&prefix) {
            let mut out = canonical;
            out.extend(&components[cut..]);
            return out;
        }
        if cut <= 1 {
            return path.to_path_buf();
        }
        cut -= 1;
    }
}

pub(crate) fn list_roots(roots: &[PathBuf]) -> String {
    if roots.is_empty() {
        return "none".to_string();
    }
    roots
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{i}: `{}`", r.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        let rows = [
            ("/a/b/../c", "/a/c"),
            ("/a/./b", "/a/b"),
            ("/../a", "/a"),
            ("/a/b/..", "/a"),
            ("/a//b/", "/a/b"),
            ("/", "/"),
        ];
        for (input, want) in rows {
            assert_eq!(normalize(Path::new(input)), Path::new(want), "{input}");
        }
    }

    #[test]
    fn prefix_is_whole_component() {
        let roots = vec![PathBuf::from("/nonexistent-parvm/home")];
        let err = to_abstract(&roots, Path::new("/nonexistent-parvm/home2/x")).unwrap_err();
        assert!(matches!(err, Error::NoRoot { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent-parvm/home"), "{err}");
        let ok = to_abstract(&roots, Path::new("/nonexistent-parvm/home/x")).unwrap();
        assert_eq!(
            ok,
            AbstractPath {
                root: 0,
                suffix: PathBuf::from("x")
            }
        );
    }

    #[test]
    fn to_actual_errors() {
        let roots = vec![PathBuf::from("/r0")];
        let err = to_actual(
            &roots,
            &AbstractPath {
                root: 3,
                suffix: "x".into(),
            },
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("index 3") && err.to_string().contains("1 root"),
            "{err}"
        );
        for bad in ["/etc/passwd", "../x", "a/../../x"] {
            let err = to_actual(
                &roots,
                &AbstractPath {
                    root: 0,
                    suffix: bad.into(),
                },
            )
            .unwrap_err();
            assert!(matches!(err, Error::BadSuffix { .. }), "{bad}: {err}");
        }
        assert_eq!(
            to_actual(
                &roots,
                &AbstractPath {
                    root: 0,
                    suffix: "".into()
                }
            )
            .unwrap(),
            Path::new("/r0")
        );
    }

    #[test]
    fn relative_cwd_refused() {
        let err =
            to_abstract_from(&[PathBuf::from("/")], Path::new("rel"), Path::new("x")).unwrap_err();
        assert!(matches!(err, Error::RelativeCwd { .. }), "{err}");
    }
}

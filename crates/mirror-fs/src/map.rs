//! Mirror maps: the ordered (source glob, target folder) pairs that say what to copy into a
//! task folder.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::translate::{AbstractPath, to_abstract_from, to_actual};

/// One (source, target) pair of a [`MirrorMap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorEntry {
    /// Path or glob of what to copy, on this host.
    pub source: PathBuf,
    /// Folder inside the task folder that receives the matches; relative and normalised
    /// (empty means the task folder itself).
    pub target: PathBuf,
}

/// An ordered list of (source, target) pairs on this host.
///
/// ```
/// use parvm_mirror_fs::MirrorMap;
///
/// let map = MirrorMap::new().entry("/shared/lib/*.lib", "models")?.entry("/shared/top.cir", ".")?;
/// assert_eq!(map.entries().len(), 2);
/// assert!(MirrorMap::new().entry("/shared/x", "../x").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorMap {
    entries: Vec<MirrorEntry>,
    roots: Vec<PathBuf>,
}

impl MirrorMap {
    /// An empty map.
    pub fn new() -> MirrorMap {
        MirrorMap::default()
    }

    /// Appends a pair: copy what `source` matches into `<task folder>/<target>/`.
    ///
    /// # Errors
    ///
    /// [`Error::TargetAbsolute`] or [`Error::TargetEscapes`] when `target` is absolute or
    /// climbs out of the task folder (`../x`, `a/../../x`); `a/../b` and `.` are fine.
    pub fn entry(
        mut self,
        source: impl Into<PathBuf>,
        target: impl AsRef<Path>,
    ) -> Result<MirrorMap> {
        let target = check_target(target.as_ref())?;
        self.entries.push(MirrorEntry {
            source: source.into(),
            target,
        });
        Ok(self)
    }

    /// The pairs, in order.
    pub fn entries(&self) -> &[MirrorEntry] {
        &self.entries
    }

    /// Confines the sources to the mirrored roots `roots` (canonical paths, as
    /// `parvm_env_config::Config::mirrored_roots` gives them): a top-level match that is a
    /// symlink resolving outside every root, or that lies in a folder resolving outside
    /// them, is refused by [`crate::mirror`] and the refreshes. A map made by
    /// [`AbstractMirrorMap::to_actual`] is confined to that host's roots already. Default:
    /// no roots, nothing checked (a map of this host's own paths).
    pub fn within(mut self, roots: &[PathBuf]) -> MirrorMap {
        self.roots = roots.to_vec();
        self
    }

    /// The roots the sources are confined to (see [`MirrorMap::within`]); empty when none.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Translates every source into an abstract path (see [`crate::to_abstract_from`]);
    /// relative sources are taken relative to `cwd`.
    ///
    /// # Errors
    ///
    /// The first source that cannot be translated, e.g. [`Error::NoRoot`]; or that is a
    /// root itself ([`Error::SourceIsRoot`]).
    pub fn to_abstract(&self, roots: &[PathBuf], cwd: &Path) -> Result<AbstractMirrorMap> {
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let source = to_abstract_from(roots, cwd, &e.source)?;
                if source.suffix.as_os_str().is_empty() {
                    return Err(Error::SourceIsRoot {
                        source_path: e.source.clone(),
                        root: roots[source.root].clone(),
                    });
                }
                Ok(AbstractMirrorEntry {
                    source,
                    target: e.target.clone(),
                })
            })
            .collect::<Result<_>>()?;
        Ok(AbstractMirrorMap { entries })
    }
}

/// One pair of an [`AbstractMirrorMap`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbstractMirrorEntry {
    /// The source, host-independent.
    pub source: AbstractPath,
    /// The target folder, relative to the task folder.
    #[serde(with = "crate::pathser")]
    pub target: PathBuf,
}

/// A mirror map with host-independent sources: what travels in a spawn request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbstractMirrorMap {
    /// The pairs, in order.
    pub entries: Vec<AbstractMirrorEntry>,
}

impl AbstractMirrorMap {
    /// Translates the map to this host's roots (see [`crate::to_actual`]); targets are
    /// checked again, since the map may come from a peer.
    ///
    /// # Errors
    ///
    /// [`Error::RootIndex`], [`Error::BadSuffix`], [`Error::TargetAbsolute`] or
    /// [`Error::TargetEscapes`] for the first bad entry.
    pub fn to_actual(&self, roots: &[PathBuf]) -> Result<MirrorMap> {
        let entries = self
            .entries
            .iter()
            .map(|e| {
                Ok(MirrorEntry {
                    source: to_actual(roots, &e.source)?,
                    target: check_target(&e.target)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(MirrorMap {
            entries,
            roots: roots.to_vec(),
        })
    }
}

/// Checks that a target stays inside the task folder; returns it normalised.
pub(crate) fn check_target(target: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for component in target.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => {
                return Err(Error::TargetAbsolute {
                    target: target.to_path_buf(),
                });
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err(Error::TargetEscapes {
                        target: target.to_path_buf(),
                    });
                }
                depth -= 1;
                out.pop();
            }
            Component::Normal(name) => {
                depth += 1;
                out.push(name);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_table() {
        let ok = [
            (".", ""),
            ("", ""),
            ("a", "a"),
            ("a/../b", "b"),
            ("./a/./b/", "a/b"),
            ("a/b/..", "a"),
        ];
        for (input, want) in ok {
            assert_eq!(
                check_target(Path::new(input)).unwrap(),
                Path::new(want),
                "{input}"
            );
        }
        let escapes = ["..", "../x", "a/../../x", "a/../.."];
        for input in escapes {
            let err = check_target(Path::new(input)).unwrap_err();
            assert!(matches!(err, Error::TargetEscapes { .. }), "{input}: {err}");
            assert!(err.to_string().contains(input), "{err}");
        }
        let err = check_target(Path::new("/abs")).unwrap_err();
        assert!(matches!(err, Error::TargetAbsolute { .. }), "{err}");
    }

    #[test]
    fn abstract_map_round_trips_through_serde() {
        let roots = vec![PathBuf::from("/parvm-test-nonexistent/r0")];
        let map = MirrorMap::new()
            .entry("/parvm-test-nonexistent/r0/lib/*.lib", "m")
            .unwrap();
        let abs = map.to_abstract(&roots, Path::new("/")).unwrap();
        let json = serde_json::to_string(&abs).unwrap();
        let back: AbstractMirrorMap = serde_json::from_str(&json).unwrap();
        assert_eq!(back, abs);
        let other_host = vec![PathBuf::from("/mnt/r0")];
        let actual = back.to_actual(&other_host).unwrap();
        assert_eq!(actual.entries()[0].source, Path::new("/mnt/r0/lib/*.lib"));
        assert_eq!(actual.entries()[0].target, Path::new("m"));
    }

    #[test]
    fn peer_target_checked_again() {
        let bad = AbstractMirrorMap {
            entries: vec![AbstractMirrorEntry {
                source: AbstractPath {
                    root: 0,
                    suffix: "x".into(),
                },
                target: "../../etc".into(),
            }],
        };
        let err = bad.to_actual(&[PathBuf::from("/r")]).unwrap_err();
        assert!(matches!(err, Error::TargetEscapes { .. }), "{err}");
    }
}

//! [`expand_source`]: one source expanded and checked as mirroring does, for callers that
//! describe sources without copying them (shipping).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsops::FolderCheck;
use crate::glob::{self, path_has_glob};

/// Expands `source` (an absolute path that may hold globs) with mirroring's glob rules and
/// checks each match as mirroring does before it copies: a top-level symlink is followed
/// only when it resolves inside `roots` (empty: anywhere), a dangling one is refused, and so
/// is anything but a file or a folder. Returns the matches, sorted, each with the metadata
/// mirroring copies it by (of the symlink's target for a followed symlink). A glob that
/// matches nothing gives no matches.
///
/// # Errors
///
/// [`Error::SourceMissing`] for a literal source that does not exist, and the errors
/// mirroring gives for a match: [`Error::LinkOutsideRoots`], [`Error::DanglingLink`],
/// [`Error::NoRoot`], [`Error::NotCopyable`], [`Error::Read`].
pub fn expand_source(roots: &[PathBuf], source: &Path) -> Result<Vec<(PathBuf, fs::Metadata)>> {
    let matches = glob::expand(source)?;
    if matches.is_empty() && !path_has_glob(source) {
        return Err(Error::SourceMissing {
            path: source.to_path_buf(),
        });
    }
    let mut check = FolderCheck::new(roots);
    matches
        .into_iter()
        .map(|from| {
            let meta = check.top_match(&from)?;
            Ok((from, meta))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_missing_is_refused_and_empty_glob_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let roots = vec![dir.path().to_path_buf()];
        assert!(matches!(
            expand_source(&roots, &dir.path().join("nope")),
            Err(Error::SourceMissing { .. })
        ));
        assert!(
            expand_source(&roots, &dir.path().join("*.x"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn symlinks_follow_mirroring_rules() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::write(root.join("f"), "x").unwrap();
        std::fs::write(outside.path().join("o"), "y").unwrap();
        std::os::unix::fs::symlink(root.join("f"), root.join("in")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("o"), root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("gone"), root.join("dangling")).unwrap();
        let roots = vec![root.clone()];
        let found = expand_source(&roots, &root.join("in")).unwrap();
        assert!(found[0].1.is_file());
        assert!(matches!(
            expand_source(&roots, &root.join("out")),
            Err(Error::LinkOutsideRoots { .. })
        ));
        assert!(matches!(
            expand_source(&roots, &root.join("dangling")),
            Err(Error::DanglingLink { .. })
        ));
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            expand_source(&roots, &root.join("fifo")),
            Err(Error::NotCopyable { .. })
        ));
    }
}

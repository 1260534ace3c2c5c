//! [`expand_source`]: one source expanded and checked as mirroring does, for callers that
//! describe sources without copying them (shipping).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsops::{FolderCheck, Sig};
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
    Ok(expand_source_traced(roots, source)?.matches)
}

/// What [`expand_source_traced`] found: the matches, and the folders whose listing decided
/// them, each with its metadata from before it was read.
#[derive(Debug)]
pub struct Expansion {
    matches: Vec<(PathBuf, fs::Metadata)>,
    folders: Vec<(PathBuf, Option<Sig>)>,
}

impl Expansion {
    /// The matches, sorted, each with the metadata mirroring copies it by.
    pub fn matches(&self) -> &[(PathBuf, fs::Metadata)] {
        &self.matches
    }

    /// Takes the matches.
    pub fn into_matches(self) -> Vec<(PathBuf, fs::Metadata)> {
        self.matches
    }

    /// Every folder whose listing (or absence) decided the matches: while none of them
    /// changes, expanding again gives the same matches.
    pub fn folders(&self) -> impl Iterator<Item = &Path> {
        self.folders.iter().map(|(p, _)| p.as_path())
    }

    /// True when every such folder still has the metadata it had before it was read (a
    /// folder's times change with its entries), so nothing changed in it since. Used to
    /// close the window between reading the folders and starting to watch them.
    pub fn unchanged(&self) -> bool {
        self.folders
            .iter()
            .all(|(dir, sig)| glob::folder_sig(dir) == *sig)
    }
}

/// As [`expand_source`], and also names the folders whose listing decided the matches
/// ([`Expansion::folders`]), so a caller can watch them and know when to expand again.
///
/// # Errors
///
/// As [`expand_source`].
pub fn expand_source_traced(roots: &[PathBuf], source: &Path) -> Result<Expansion> {
    let mut folders = Vec::new();
    let matches = glob::expand_traced(source, &mut folders)?;
    if matches.is_empty() && !path_has_glob(source) {
        return Err(Error::SourceMissing {
            path: source.to_path_buf(),
        });
    }
    let mut check = FolderCheck::new(roots);
    let matches = matches
        .into_iter()
        .map(|from| {
            let meta = check.top_match(&from)?;
            Ok((from, meta))
        })
        .collect::<Result<_>>()?;
    Ok(Expansion { matches, folders })
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
    fn a_traced_expansion_names_its_folders_and_sees_them_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let roots = vec![dir.path().to_path_buf()];
        let expansion = expand_source_traced(&roots, &dir.path().join("d/*.x")).unwrap();
        assert!(expansion.matches().is_empty());
        assert!(expansion.folders().any(|f| f == dir.path().join("d")));
        assert!(expansion.unchanged());
        std::fs::write(dir.path().join("d/new.x"), "x").unwrap();
        // A clock tick may not have passed since the listing: move the time as one would.
        let folder = std::fs::File::open(dir.path().join("d")).unwrap();
        folder
            .set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert!(!expansion.unchanged());
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

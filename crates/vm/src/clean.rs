//! Cleaning a reused persistent folder ([`VmBuilder::persistent_clean`](crate::VmBuilder::persistent_clean)):
//! what the folder held right after it was mirrored is kept, everything else (what tasks
//! wrote) is removed, without ever following a symlink.
//!
//! mirror-fs keeps its manifest of a persistent folder to itself, so the worker records
//! its own list: the folder's tree, walked right after mirroring (or refreshing) and before
//! the task runs, when it holds exactly the mirrored inputs and local storage's own files.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What an entry is, as `lstat` sees it (symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    fn of(meta: &fs::Metadata) -> Kind {
        let kind = meta.file_type();
        if kind.is_symlink() {
            Kind::Symlink
        } else if kind.is_dir() {
            Kind::Dir
        } else if kind.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }
}

/// The entries of a folder tree, by path relative to its root.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    entries: HashMap<PathBuf, Kind>,
}

impl Snapshot {
    /// Records everything beneath `root`; symlinks are recorded, never followed.
    pub(crate) fn take(root: &Path) -> io::Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            for entry in fs::read_dir(root.join(&relative))? {
                let entry = entry?;
                let path = relative.join(entry.file_name());
                // `DirEntry::metadata` does not follow symlinks.
                let kind = Kind::of(&entry.metadata()?);
                if kind == Kind::Dir {
                    pending.push(path.clone());
                }
                snapshot.entries.insert(path, kind);
            }
        }
        Ok(snapshot)
    }

    /// Removes from beneath `root` every entry that is not recorded, or is recorded as
    /// another kind (a mirrored folder a task replaced by a symlink); returns how many
    /// were removed. A folder that is removed goes with its contents; no symlink is ever
    /// followed, so nothing outside `root` is touched.
    pub(crate) fn remove_unlisted(&self, root: &Path) -> io::Result<usize> {
        let mut removed = 0;
        let mut pending = vec![PathBuf::new()];
        while let Some(relative) = pending.pop() {
            for entry in fs::read_dir(root.join(&relative))? {
                let entry = entry?;
                let path = relative.join(entry.file_name());
                let kind = Kind::of(&entry.metadata()?);
                if self.entries.get(&path) == Some(&kind) {
                    if kind == Kind::Dir {
                        pending.push(path);
                    }
                    continue;
                }
                let full = root.join(&path);
                tracing::debug!(path = %full.display(), "removing what an earlier task wrote");
                if kind == Kind::Dir {
                    // Removes the tree through descriptors and never follows a symlink in it.
                    remove_dir_tree(&full)?;
                } else {
                    fs::remove_file(&full)?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `fs::remove_dir_all`, which does not follow symlinks; a folder a task made read-only
/// is made writable (never through a symlink) and removal tried again.
fn remove_dir_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path)?;
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

fn make_dirs_writable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))?;
    }
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            make_dirs_writable(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn keeps_the_snapshot_and_removes_the_rest_without_following_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("models/deep")).unwrap();
        fs::write(r.join("in.cir"), "netlist").unwrap();
        fs::write(r.join("models/deep/a.lib"), "lib").unwrap();
        symlink("in.cir", r.join("alias.cir")).unwrap();
        fs::write(outside.path().join("precious"), "keep").unwrap();
        let snapshot = Snapshot::take(r).unwrap();

        // What tasks leave: new files, at the top and inside mirrored folders, new
        // folders, links out of the folder, and a mirrored folder replaced by a link.
        fs::write(r.join("result.txt"), "old result").unwrap();
        fs::write(r.join("models/extra.lib"), "written").unwrap();
        fs::create_dir_all(r.join("run/out")).unwrap();
        fs::write(r.join("run/out/raw"), "data").unwrap();
        symlink(outside.path(), r.join("escape")).unwrap();
        symlink(outside.path(), r.join("run/escape")).unwrap();
        fs::rename(r.join("models/deep"), r.join("moved")).unwrap();
        symlink(outside.path(), r.join("models/deep")).unwrap();

        let removed = snapshot.remove_unlisted(r).unwrap();
        assert_eq!(removed, 6);
        let after = Snapshot::take(r).unwrap();
        let mut names: Vec<_> = after.entries.keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            [PathBuf::from("alias.cir"), "in.cir".into(), "models".into()],
            "a mirrored entry a task moved away stays missing until mirroring restores it"
        );
        assert_eq!(
            fs::read_to_string(outside.path().join("precious")).unwrap(),
            "keep"
        );
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn read_only_folders_a_task_made_are_removed() {
        // Root ignores modes; the test means something only as another user.
        parvm_test_support::as_unprivileged(
            "clean::tests::read_only_folders_a_task_made_are_removed",
            read_only_folders,
        );
    }

    fn read_only_folders() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let snapshot = Snapshot::take(root.path()).unwrap();
        let locked = root.path().join("locked");
        fs::create_dir_all(locked.join("inner")).unwrap();
        fs::write(locked.join("inner/f"), "x").unwrap();
        fs::set_permissions(locked.join("inner"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).unwrap();
        assert_eq!(snapshot.remove_unlisted(root.path()).unwrap(), 1);
        assert!(!locked.exists());
    }
}

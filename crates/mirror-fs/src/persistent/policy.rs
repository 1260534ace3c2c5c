//! The refresh policy of a process that fills task folders again and again (a worker):
//! which folders it keeps ([`MirroredFolders`]), and for each task whether a folder gets a
//! fresh mirror kept for next time, a refresh of what was mirrored into it before
//! (persistent), or a renewal (temporary, handed on from the task before). It must not know where task folders come from (local storage) or
//! what the keys name (the vm's VM ids); it only sees a folder's [`FolderState`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::Hash;
use std::path::Path;

use super::folder::MirroredFolder;
use crate::error::Result;
use crate::map::MirrorMap;
use crate::options::{MirrorOptions, MirrorReport};

/// What a task folder is when it is filled, as its owner knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderState {
    /// Removed after the task, or handed on to the next task of the same key: mirrored
    /// afresh and kept, so that [`MirroredFolders::renew`] can make it what a fresh mirror
    /// would make for that next task.
    Temporary,
    /// Kept across tasks and new (or emptied): mirrored afresh and kept.
    PersistentNew,
    /// Kept across tasks and used by an earlier task: refreshed when the kept record is of
    /// the same map and the same folder, else mirrored afresh and kept.
    PersistentReused,
}

/// The [`MirroredFolder`]s a process keeps, one per key (a VM), so that a persistent task
/// folder reused by the next task is refreshed (one `stat` per source file, or less) and
/// not copied again.
///
/// ```
/// use parvm_mirror_fs::{FolderState, MirrorMap, MirrorOptions, MirroredFolders};
///
/// let shared = tempfile::tempdir()?;
/// std::fs::write(shared.path().join("top.cir"), "netlist")?;
/// let map = MirrorMap::new().entry(shared.path().join("top.cir"), ".")?;
/// let task = tempfile::tempdir()?;
/// let mut folders = MirroredFolders::new();
/// let options = MirrorOptions::new();
/// let first = folders.fill(7, &map, task.path(), FolderState::PersistentNew, &options)?;
/// assert_eq!(first.files, 1);
/// let again = folders.fill(7, &map, task.path(), FolderState::PersistentReused, &options)?;
/// assert_eq!((again.files, again.skipped), (0, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MirroredFolders<K> {
    /// Persistent folders, by key.
    kept: HashMap<K, MirroredFolder>,
    /// The last temporary folder filled, for [`MirroredFolders::renew`]: a process hands
    /// at most one on (local storage keeps one spare), and a kept folder may hold an
    /// inotify instance, of which a user has 128 by default for all their programs.
    temporary: Option<(K, MirroredFolder)>,
}

impl<K: Hash + Eq> Default for MirroredFolders<K> {
    fn default() -> Self {
        MirroredFolders {
            kept: HashMap::new(),
            temporary: None,
        }
    }
}

impl<K: Hash + Eq> MirroredFolders<K> {
    /// No folders kept.
    pub fn new() -> MirroredFolders<K> {
        MirroredFolders::default()
    }

    /// Mirrors `map` into `task_dir`. A persistent folder is refreshed when it was filled
    /// from the same map before; any other is mirrored afresh and remembered under `key`
    /// for the next reuse (a temporary one, for [`MirroredFolders::renew`], in place of
    /// the temporary folder remembered before, whatever its key).
    ///
    /// # Errors
    ///
    /// As [`crate::mirror`] and [`MirroredFolder::refresh`]. After a failed refresh the
    /// folder stays kept (its next refresh verifies every copy); after a failed fresh
    /// mirror nothing is kept under `key`.
    pub fn fill(
        &mut self,
        key: K,
        map: &MirrorMap,
        task_dir: &Path,
        state: FolderState,
        options: &MirrorOptions,
    ) -> Result<MirrorReport> {
        if state == FolderState::Temporary {
            // The old one's watch goes before the new one's starts.
            self.temporary = None;
            let mirrored = MirroredFolder::mirror(map, task_dir, options)?;
            let report = mirrored.report().clone();
            self.temporary = Some((key, mirrored));
            return Ok(report);
        }
        if state == FolderState::PersistentReused
            && let Some(mirrored) = self.kept.get_mut(&key)
            && mirrored.map() == map
            && mirrored.task_dir() == task_dir
        {
            return mirrored.refresh(options);
        }
        self.kept.remove(&key);
        let mirrored = MirroredFolder::mirror(map, task_dir, options)?;
        let report = mirrored.report().clone();
        self.kept.insert(key, mirrored);
        Ok(report)
    }

    /// Makes `task_dir`, a folder kept under `key` that the task before left as it was (a
    /// temporary folder handed on, or a persistent one to be clean for each task), what a
    /// fresh mirror of `map` would make, with [`MirroredFolder::renew`] (`keep`: the names
    /// at its top that are its owner's). `Ok(None)`: nothing is kept for that folder and
    /// map, so the caller empties it and fills it afresh.
    ///
    /// # Errors
    ///
    /// As [`MirroredFolder::renew`]; nothing is kept under `key` after an error, and the
    /// caller empties the folder and fills it afresh.
    pub fn renew(
        &mut self,
        key: K,
        map: &MirrorMap,
        task_dir: &Path,
        keep: &[&OsStr],
        options: &MirrorOptions,
    ) -> Result<Option<MirrorReport>> {
        let temporary = self.temporary.as_mut().filter(|(k, _)| *k == key);
        let Some(mirrored) = temporary.map(|(_, m)| m).or(self.kept.get_mut(&key)) else {
            return Ok(None);
        };
        let renewed = if mirrored.map() != map || mirrored.task_dir() != task_dir {
            None
        } else {
            Some(mirrored.renew(options, keep))
        };
        if !matches!(renewed, Some(Ok(_))) {
            self.forget(&key);
        }
        renewed.transpose()
    }

    /// Drops what is kept under `key` (its folder is gone or about to be).
    pub fn forget(&mut self, key: &K) {
        self.kept.remove(key);
        if self.temporary.as_ref().is_some_and(|(k, _)| k == key) {
            self.temporary = None;
        }
    }

    /// True when a folder is kept under `key`.
    pub fn is_kept(&self, key: &K) -> bool {
        self.temporary.as_ref().is_some_and(|(k, _)| k == key) || self.kept.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        shared: tempfile::TempDir,
        task: tempfile::TempDir,
        map: MirrorMap,
    }

    fn fixture() -> Fixture {
        let shared = tempfile::tempdir().unwrap();
        std::fs::write(shared.path().join("a.cir"), "a").unwrap();
        std::fs::write(shared.path().join("b.cir"), "b").unwrap();
        let map = MirrorMap::new()
            .entry(shared.path().join("*.cir"), ".")
            .unwrap();
        Fixture {
            shared,
            task: tempfile::tempdir().unwrap(),
            map,
        }
    }

    #[test]
    fn each_state_picks_its_way_to_fill() {
        // (state of the second fill, files copied by it, kept after it)
        let rows = [
            (FolderState::Temporary, 2, true),
            (FolderState::PersistentNew, 2, true),
            (FolderState::PersistentReused, 0, true),
        ];
        for (state, copied, kept) in rows {
            let f = fixture();
            let options = MirrorOptions::new();
            let mut folders = MirroredFolders::new();
            let first = folders
                .fill(
                    1u32,
                    &f.map,
                    f.task.path(),
                    FolderState::PersistentNew,
                    &options,
                )
                .unwrap();
            assert_eq!(first.files, 2);
            let second = folders
                .fill(1, &f.map, f.task.path(), state, &options)
                .unwrap();
            assert_eq!(second.files, copied, "{state:?}");
            assert_eq!(folders.is_kept(&1), kept, "{state:?}");
        }
    }

    #[test]
    fn temporary_folders_are_kept_for_a_renewal() {
        let f = fixture();
        let mut folders = MirroredFolders::new();
        let report = folders
            .fill(
                3u32,
                &f.map,
                f.task.path(),
                FolderState::Temporary,
                &MirrorOptions::new(),
            )
            .unwrap();
        assert_eq!(report.files, 2);
        assert!(folders.is_kept(&3));
        let renewed = folders
            .renew(3, &f.map, f.task.path(), &[], &MirrorOptions::new())
            .unwrap()
            .expect("kept for this folder and map");
        assert_eq!((renewed.files, renewed.skipped), (0, 2));
        let other = tempfile::tempdir().unwrap();
        let elsewhere = folders
            .renew(3, &f.map, other.path(), &[], &MirrorOptions::new())
            .unwrap();
        assert!(elsewhere.is_none(), "another folder is not renewed");
        assert!(!folders.is_kept(&3));
    }

    #[test]
    fn one_temporary_folder_is_kept_whatever_its_key_beside_the_persistent_ones() {
        let f = fixture();
        let options = MirrorOptions::new();
        let mut folders = MirroredFolders::new();
        let persistent = tempfile::tempdir().unwrap();
        let state = FolderState::PersistentNew;
        folders
            .fill(9u32, &f.map, persistent.path(), state, &options)
            .unwrap();
        let other = tempfile::tempdir().unwrap();
        let temporary = FolderState::Temporary;
        folders
            .fill(1, &f.map, f.task.path(), temporary, &options)
            .unwrap();
        folders
            .fill(2, &f.map, other.path(), temporary, &options)
            .unwrap();
        assert!(
            !folders.is_kept(&1),
            "the later temporary folder replaced it"
        );
        assert!(folders.is_kept(&2) && folders.is_kept(&9));
        let gone = folders
            .renew(1, &f.map, f.task.path(), &[], &options)
            .unwrap();
        assert!(gone.is_none());
        let renewed = folders
            .renew(2, &f.map, other.path(), &[], &options)
            .unwrap();
        assert_eq!(renewed.map(|r| r.skipped), Some(2));
        folders.forget(&2);
        assert!(!folders.is_kept(&2) && folders.is_kept(&9));
    }

    #[test]
    fn a_reused_folder_with_another_map_or_path_is_mirrored_afresh() {
        let f = fixture();
        let options = MirrorOptions::new();
        let mut folders = MirroredFolders::new();
        folders
            .fill(
                1u32,
                &f.map,
                f.task.path(),
                FolderState::PersistentNew,
                &options,
            )
            .unwrap();
        let other_map = MirrorMap::new()
            .entry(f.shared.path().join("a.cir"), ".")
            .unwrap();
        let report = folders
            .fill(
                1,
                &other_map,
                f.task.path(),
                FolderState::PersistentReused,
                &options,
            )
            .unwrap();
        assert_eq!(report.files, 1, "another map is mirrored, not refreshed");
        let other_dir = tempfile::tempdir().unwrap();
        let report = folders
            .fill(
                1,
                &other_map,
                other_dir.path(),
                FolderState::PersistentReused,
                &options,
            )
            .unwrap();
        assert_eq!(report.files, 1, "another folder is mirrored, not refreshed");
        folders.forget(&1);
        assert!(!folders.is_kept(&1));
    }
}

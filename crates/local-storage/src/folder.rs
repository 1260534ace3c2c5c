//! One task folder, held (locked) by this process while a task uses it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;
use crate::lock::{LOCK_FILE, still_linked};
use crate::owner::{NameTag, OWNER_FILE};
use crate::tree::remove_tree;

/// Prefix of the names folders get just before they are deleted. The remover's
/// [`NameTag`] follows.
pub(crate) const TRASH_PREFIX: &str = ".parvm-trash-";

/// Prefix of the names new task folders have while they are made: locked and given their
/// owner marker under this name, a folder is then renamed to its task-folder name, so
/// every folder under such a name has a marker. The maker's [`NameTag`] follows.
pub(crate) const STAGING_PREFIX: &str = ".parvm-new-";

/// Whether a task folder outlives its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persistence {
    /// A fresh folder per task, removed when the task ends (also when it failed).
    Temporary,
    /// One folder per process and VM index, kept and handed to the next task.
    Persistent,
}

/// A folder this process made and locked: its path, its identity and its lock.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) path: PathBuf,
    pub(crate) name: String,
    /// `None` only where the file system cannot lock; the file is then unlocked.
    pub(crate) lock: Option<File>,
    dev: u64,
    ino: u64,
}

impl Held {
    pub(crate) fn new(path: PathBuf, name: String, lock: Option<File>) -> io::Result<Held> {
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(Held {
            path,
            name,
            lock,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the folder is still the one we made, with our lock file in it: a forced
    /// clear from elsewhere may have removed it since.
    pub(crate) fn intact(&self) -> bool {
        let same = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.is_dir() && m.dev() == self.dev && m.ino() == self.ino);
        same && self
            .lock
            .as_ref()
            .is_none_or(|lock| still_linked(lock, &self.path))
    }

    /// Removes everything a task left in the folder but the lock and the owner marker,
    /// never following a symlink. `Ok(false)`: the folder is no longer as it was made (a
    /// forced clear removed it, the task changed its mode, or removed or replaced its lock
    /// or marker), so it must be removed, not handed on; nothing was removed then.
    fn empty(&self) -> Result<bool, Error> {
        if !self.intact() {
            return Ok(false);
        }
        crate::tree::empty_folder(&self.path, (self.dev, self.ino), &[LOCK_FILE, OWNER_FILE])
    }

    /// Whether the folder is as it was made ([`Held::intact`], mode 0700, the lock and the
    /// owner marker regular files), whatever else a task left in it.
    fn as_made(&self) -> Result<bool, Error> {
        Ok(self.intact()
            && crate::tree::open_as_made(
                &self.path,
                (self.dev, self.ino),
                &[LOCK_FILE, OWNER_FILE],
            )?
            .is_some())
    }

    /// Renames the folder to a trash name, then deletes it; the lock is dropped last so
    /// nobody sees a half-removed folder under its live name.
    pub(crate) fn remove(self) -> Result<(), Error> {
        if let Some(trash) = move_to_trash(&self.path)? {
            remove_tree(&trash)?;
        }
        drop(self.lock);
        Ok(())
    }
}

/// What one [`crate::LocalStorage`] keeps between tasks, shared with its task folders.
pub(crate) type Kept = Arc<Mutex<Keeping>>;

/// Folders a storage keeps, locked, while no task uses them.
#[derive(Debug)]
pub(crate) struct Keeping {
    /// Persistent folders, by VM index.
    pub(crate) persistent: HashMap<u32, Slot>,
    /// At most one temporary folder, emptied by [`TaskFolder::release_for_next`] (or kept
    /// as its task left it by [`TaskFolder::hand_on`]) for the next task of its VM index,
    /// which its releaser already holds.
    pub(crate) spare: Option<Spare>,
    /// Cleared when the storage is dropped: nobody would hand a spare on or remove it.
    pub(crate) open: bool,
}

impl Default for Keeping {
    fn default() -> Self {
        Keeping {
            persistent: HashMap::new(),
            spare: None,
            open: true,
        }
    }
}

/// A temporary folder waiting for the next task of `vm_index`: emptied, or as its last
/// task left it ([`TaskFolder::hand_on`]).
#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) vm_index: u32,
    pub(crate) held: Held,
    pub(crate) as_left: bool,
}

/// A persistent folder is either waiting in the storage or lent to a [`TaskFolder`].
#[derive(Debug)]
pub(crate) enum Slot {
    Waiting(Held),
    Lent,
}

pub(crate) fn lock_kept(kept: &Kept) -> MutexGuard<'_, Keeping> {
    // A panic elsewhere cannot leave the map half-updated: every change is one insert.
    kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Takes the waiting persistent folder of `vm_index` out of `kept`, marking it lent.
/// `Ok(None)`: there is none (or it was removed behind our back), make a new one.
pub(crate) fn borrow_kept(
    kept: &mut HashMap<u32, Slot>,
    vm_index: u32,
) -> Result<Option<Held>, Error> {
    match kept.insert(vm_index, Slot::Lent) {
        Some(Slot::Lent) => Err(Error::PersistentInUse { vm_index }),
        Some(Slot::Waiting(held)) if held.intact() => Ok(Some(held)),
        Some(Slot::Waiting(_)) | None => Ok(None),
    }
}

/// A task folder in use by this process; its lock is held as long as this value lives.
///
/// A [`Persistence::Temporary`] folder is removed by [`TaskFolder::release`] or on drop.
/// A [`Persistence::Persistent`] folder goes back to its [`crate::LocalStorage`], which
/// hands it to the next task with the same VM index.
#[derive(Debug)]
pub struct TaskFolder {
    held: Option<Held>,
    vm_index: u32,
    persistence: Persistence,
    reused: bool,
    /// Handed on by the task before as it left it ([`TaskFolder::hand_on`]).
    handed_on: bool,
    kept: Kept,
}

impl TaskFolder {
    pub(crate) fn new(
        held: Held,
        vm_index: u32,
        persistence: Persistence,
        reused: bool,
        kept: Kept,
    ) -> Self {
        TaskFolder {
            held: Some(held),
            vm_index,
            persistence,
            reused,
            handed_on: false,
            kept,
        }
    }

    /// Marks a temporary folder taken as its last task left it.
    pub(crate) fn left_by_last_task(mut self, handed_on: bool) -> Self {
        self.handed_on = handed_on;
        self
    }

    fn held(&self) -> &Held {
        // `held` is only taken out by `finish`, which consumes or drops the value.
        self.held
            .as_ref()
            .unwrap_or_else(|| unreachable!("task folder used after release"))
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        &self.held().path
    }

    /// The folder's name inside the per-user folder, e.g. `1a2b_vm0`.
    pub fn name(&self) -> &str {
        &self.held().name
    }

    /// The VM index this folder belongs to.
    pub fn vm_index(&self) -> u32 {
        self.vm_index
    }

    /// Whether the folder is removed or kept after the task.
    pub fn persistence(&self) -> Persistence {
        self.persistence
    }

    /// `true` when an earlier task of this process left this persistent folder: the
    /// caller refreshes its mirrored inputs instead of mirroring from scratch.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// `true` for a temporary folder that the task before, of the same VM index, handed on
    /// with [`TaskFolder::hand_on`], holding what that task left (its own files, the lock
    /// and the marker as made): the caller makes it what the new task needs, e.g. with
    /// mirror-fs's renewal, or calls [`TaskFolder::empty`] first.
    pub fn handed_on(&self) -> bool {
        self.handed_on
    }

    /// Removes everything but the folder's lock and owner marker, never following a
    /// symlink, as [`TaskFolder::release_for_next`] does; for a folder
    /// [`handed_on`](TaskFolder::handed_on) that its taker cannot use as it is.
    ///
    /// # Errors
    ///
    /// [`Error::Remove`] when something cannot be removed, or the folder is no longer as
    /// it was made (then release it and take another).
    pub fn empty(&mut self) -> Result<(), Error> {
        let held = self.held();
        match held.empty()? {
            true => {
                self.handed_on = false;
                Ok(())
            }
            false => Err(Error::Remove {
                path: held.path.clone(),
                source: io::Error::other(
                    "the task folder is no longer as it was made (its mode, lock or owner marker changed)",
                ),
            }),
        }
    }

    /// Ends the task's use of the folder: removes a temporary folder, hands a persistent
    /// one back to its storage. Dropping does the same but can only log errors.
    ///
    /// # Errors
    ///
    /// [`Error::Remove`] when a temporary folder cannot be removed completely.
    pub fn release(mut self) -> Result<(), Error> {
        self.finish()
    }

    /// As [`TaskFolder::release`], for a caller that already holds the next task of the
    /// same VM index: a temporary folder is emptied (everything the task left is removed,
    /// never following a symlink) and kept, still locked, and the next
    /// [`LocalStorage::take`](crate::LocalStorage::take) of that VM index gets it instead
    /// of a new one. On file systems where making files is slow (ext4 spends tenths of a
    /// millisecond per file) this saves most of a short task's folder cost: the folder, its
    /// lock and its marker are not made and removed again. A folder the task changed (its
    /// mode, lock or marker) is removed as [`TaskFolder::release`] removes it. A kept
    /// folder whose task does not come is removed by
    /// [`LocalStorage::remove_spare`](crate::LocalStorage::remove_spare), by the next
    /// `take` of another kind, or when the storage is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Remove`] when what the task left cannot be removed completely.
    pub fn release_for_next(self) -> Result<(), Error> {
        self.release_keeping(false)
    }

    /// As [`TaskFolder::release_for_next`], but a temporary folder is kept as the task left
    /// it, not emptied: the next [`LocalStorage::take`](crate::LocalStorage::take) of the
    /// VM index gets it [`handed_on`](TaskFolder::handed_on), for a caller that can bring
    /// it to what the next task needs for less than emptying and filling it (mirror-fs's
    /// renewal: what the task did not change stays). Only a folder still as it was made
    /// (its mode, lock and marker) is kept; another is removed.
    ///
    /// # Errors
    ///
    /// [`Error::Remove`] when a folder that is not kept cannot be removed completely.
    pub fn hand_on(self) -> Result<(), Error> {
        self.release_keeping(true)
    }

    /// Keeps a temporary folder as the storage's spare for the next task of this VM index:
    /// `as_left`, as its task left it, else emptied; a folder no longer as made is removed.
    fn release_keeping(mut self, as_left: bool) -> Result<(), Error> {
        if self.persistence == Persistence::Persistent {
            return self.finish();
        }
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let kept = if as_left {
            held.as_made()
        } else {
            held.empty()
        };
        if !matches!(kept, Ok(true)) {
            // Removal tries everything again and reports what it could not remove.
            return held.remove();
        }
        let mut keeping = lock_kept(&self.kept);
        if !keeping.open {
            drop(keeping);
            return held.remove();
        }
        let earlier = keeping.spare.replace(Spare {
            vm_index: self.vm_index,
            held,
            as_left,
        });
        drop(keeping);
        // Only one task runs per storage user at a time; should two release, the older
        // spare goes.
        earlier.map_or(Ok(()), |spare| spare.held.remove())
    }

    fn finish(&mut self) -> Result<(), Error> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        match self.persistence {
            Persistence::Temporary => held.remove(),
            Persistence::Persistent => {
                lock_kept(&self.kept)
                    .persistent
                    .insert(self.vm_index, Slot::Waiting(held));
                Ok(())
            }
        }
    }
}

impl Drop for TaskFolder {
    fn drop(&mut self) {
        if let Err(error) = self.finish() {
            tracing::warn!(%error, "task folder not fully removed; a later sweep removes the rest");
        }
    }
}

/// The process that made a trash or staging name, from the part after the prefix: its
/// [`NameTag`], or for names made before tags existed (`<pid hex>-…`) the pid alone.
pub(crate) fn tag_in_name(rest: &str) -> Option<NameTag> {
    let field = rest.split('-').next()?;
    NameTag::parse(field).or_else(|| u32::from_str_radix(field, 16).ok().map(NameTag::pid_only))
}

/// The longest file name most file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// A name no other call in any process makes: `prefix`, this process's [`NameTag`], a
/// counter and the clock's nanoseconds (hex), then as much of `suffix` as fits in
/// [`NAME_MAX`] bytes (it only helps people tell trash folders apart).
pub(crate) fn unique_name(prefix: &str, suffix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("{prefix}{}-{count:x}-{nanos:x}", NameTag::current());
    let room = NAME_MAX.saturating_sub(name.len());
    let mut cut = suffix.len().min(room);
    while !suffix.is_char_boundary(cut) {
        cut -= 1;
    }
    name.push_str(&suffix[..cut]);
    name
}

/// Renames `path` to a unique trash name in the same folder. `Ok(None)`: it is gone.
pub(crate) fn move_to_trash(path: &Path) -> Result<Option<PathBuf>, Error> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let trash = parent.join(unique_name(TRASH_PREFIX, &format!("-{name}")));
    match std::fs::rename(path, &trash) {
        Ok(()) => Ok(Some(trash)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FolderState, LocalStorage};

    #[test]
    fn names_carry_this_process_tag_and_fit_in_a_file_name() {
        let name = unique_name(TRASH_PREFIX, &format!("-{}", "é".repeat(200)));
        assert!(name.len() <= NAME_MAX, "{}", name.len());
        let rest = name.strip_prefix(TRASH_PREFIX).unwrap();
        let tag = tag_in_name(rest).unwrap();
        assert_eq!(tag, NameTag::current());
        assert!(tag.knows_start_time());
        assert_eq!(tag_in_name("1f-2-3-x"), Some(NameTag::pid_only(0x1f)));
        assert_eq!(tag_in_name("zz-2-3"), None);
    }

    #[test]
    fn a_removal_in_progress_is_in_use_while_its_remover_lives() {
        let root = tempfile::tempdir().unwrap();
        let storage = LocalStorage::options()
            .grace(std::time::Duration::ZERO)
            .open(root.path())
            .unwrap();
        let folder = storage.path().join("gone_vm0");
        std::fs::create_dir(&folder).unwrap();
        let trash = move_to_trash(&folder).unwrap().unwrap();
        let listed = storage.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].path, trash);
        assert_eq!(listed[0].state, FolderState::InUse, "{}", listed[0].detail);
        assert!(storage.sweep().unwrap().removed.is_empty());
    }
}

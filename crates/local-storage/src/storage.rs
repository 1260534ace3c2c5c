//! The per-user storage folder and the making of task folders in it.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use nix::unistd::{AccessFlags, access, geteuid};
use parvm_env_config::Config;

use crate::folder::{Held, Kept, STAGING_PREFIX, TaskFolder, borrow_kept, lock_kept, unique_name};
use crate::lock::{LockBackend, still_linked};
use crate::owner::OwnerMarker;
use crate::report::SweepReport;
use crate::{Error, Persistence};

/// How long a folder without a readable owner marker is spared by `sweep` (and by
/// `clear` without force): it may be a folder another worker is making right now.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// Names tried for one process and VM index before giving up: far more than PID reuse
/// and not-yet-removed folders can explain.
const MAX_SUFFIX: u32 = 10_000;

/// How often making a folder starts again after its staging folder was removed under it.
const MAX_RESTARTS: u32 = 100;

/// Where [`LocalStorage::place`] left a staged folder.
enum Placed {
    /// Under its task-folder name, held.
    Held(Held),
    /// Removed by someone else meanwhile; start again.
    Vanished,
    /// The file system cannot rename without replacing (the staging folder is removed).
    Unsupported,
}

/// Settings for opening a [`LocalStorage`]; start from [`LocalStorage::options`].
#[derive(Debug, Clone)]
pub struct StorageOptions {
    host: Option<String>,
    grace: Duration,
    backend: LockBackend,
    staged: bool,
}

impl StorageOptions {
    /// The host name written into owner markers. Default: the real host name (the
    /// system's, whatever `PARVM_HOSTNAME` says; pass `Config::hostname` for that).
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// How old a folder without a readable owner marker must be before sweeping removes
    /// it. Default: [`DEFAULT_GRACE`].
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Test seam: behave as if the file system could not `flock`.
    #[cfg(test)]
    pub(crate) fn without_flock(mut self) -> Self {
        self.backend = LockBackend::Unsupported;
        self
    }

    /// Test seam: behave as if the file system could not rename without replacing, so
    /// folders are made in place.
    #[cfg(test)]
    pub(crate) fn without_staging(mut self) -> Self {
        self.staged = false;
        self
    }

    /// Opens (and makes, if missing) `<local_root>/parvm-<user>`; see [`LocalStorage::open`].
    ///
    /// # Errors
    ///
    /// As [`LocalStorage::open`].
    pub fn open(self, local_root: &Path) -> Result<LocalStorage, Error> {
        check_root(local_root)?;
        let dir = user_dir(local_root)?;
        make_user_dir(local_root, &dir)?;
        self.finish(dir)
    }

    /// Opens `<local_root>/parvm-<user>` only if it exists, creating nothing: for callers
    /// that only look or clean up, such as `parvm storage list`. `Ok(None)`: the local root
    /// or the per-user folder does not exist, so there are no task folders. An existing
    /// per-user folder is checked as by [`LocalStorage::open`].
    ///
    /// # Errors
    ///
    /// As [`LocalStorage::open`], except that a missing root is `Ok(None)`.
    pub fn open_existing(self, local_root: &Path) -> Result<Option<LocalStorage>, Error> {
        match std::fs::metadata(local_root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            _ => check_root(local_root)?,
        }
        let dir = user_dir(local_root)?;
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            _ => self.finish(dir).map(Some),
        }
    }

    /// Checks the per-user folder `dir` and opens the storage in it.
    fn finish(self, dir: PathBuf) -> Result<LocalStorage, Error> {
        let uid = geteuid().as_raw();
        verify_user_dir(&dir, uid)?;
        let host = self.host.unwrap_or_else(real_host);
        Ok(LocalStorage {
            dir,
            uid,
            host,
            grace: self.grace,
            backend: self.backend,
            staged: self.staged,
            kept: Kept::default(),
        })
    }
}

impl Drop for LocalStorage {
    /// Removes a spare folder nobody will take; persistent folders stay (see above).
    fn drop(&mut self) {
        let spare = {
            let mut keeping = lock_kept(&self.kept);
            keeping.open = false;
            keeping.spare.take()
        };
        if let Some(spare) = spare
            && let Err(error) = spare.held.remove()
        {
            tracing::warn!(%error, "cannot remove a spare task folder; a later sweep removes the rest");
        }
    }
}

/// Refuses a local root that is missing or not a folder, or that another user could
/// change (see [`unsafe_folder`]).
fn check_root(local_root: &Path) -> Result<(), Error> {
    if !std::fs::metadata(local_root).is_ok_and(|m| m.is_dir()) {
        return Err(Error::RootMissing {
            path: local_root.to_path_buf(),
        });
    }
    let real = local_root.canonicalize().map_err(|source| Error::Inspect {
        path: local_root.to_path_buf(),
        source,
    })?;
    let uid = geteuid().as_raw();
    for folder in real.ancestors() {
        let meta = std::fs::symlink_metadata(folder).map_err(|source| Error::Inspect {
            path: folder.to_path_buf(),
            source,
        })?;
        if let Some(why) = unsafe_folder(&meta, uid) {
            return Err(Error::RootUnsafe {
                local_root: local_root.to_path_buf(),
                folder: folder.to_path_buf(),
                why,
            });
        }
    }
    Ok(())
}

/// Why another user could rename or replace entries of a folder with these metadata, so
/// that the per-user folder in (or under) it could be swapped for a symlink after it was
/// checked, and tasks would write, and sweeps delete, wherever that user chose. `None`:
/// only `uid` and root can. A folder owned by someone else can be changed by its owner;
/// one writable by group or others without the sticky bit (`/tmp` has it) by them. A
/// group that is the caller's own private group (no other members) counts as the caller.
fn unsafe_folder(meta: &std::fs::Metadata, uid: u32) -> Option<String> {
    let mode = meta.mode();
    if meta.uid() != uid && meta.uid() != 0 {
        let owner = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(meta.uid()))
            .ok()
            .flatten()
            .map_or_else(String::new, |user| format!(" ({})", user.name));
        return Some(format!("is owned by uid {}{owner}", meta.uid()));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o002 != 0 && !sticky {
        return Some(format!(
            "is writable by everybody (mode {:04o}) without the sticky bit",
            mode & 0o7777
        ));
    }
    if mode & 0o020 != 0 && !sticky && !own_private_group(meta.gid()) {
        return Some(format!(
            "is writable by group {} (mode {:04o}) without the sticky bit",
            meta.gid(),
            mode & 0o7777
        ));
    }
    None
}

/// Whether `gid` is the caller's own group with nobody else listed in it, as in the
/// one-group-per-user scheme many distributions use.
fn own_private_group(gid: u32) -> bool {
    if gid != nix::unistd::getegid().as_raw() {
        return false;
    }
    let me = parvm_env_config::current_user().ok();
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(group)) => group.mem.iter().all(|member| Some(member) == me.as_ref()),
        _ => false,
    }
}

/// The per-user folder in `local_root`: `<local_root>/parvm-<user>`, for the effective
/// user. Nothing is checked or made; [`LocalStorage::open`] does that.
///
/// # Errors
///
/// [`Error::UserName`] when the effective user has no name.
pub fn user_folder(local_root: &Path) -> Result<PathBuf, Error> {
    user_dir(local_root)
}

fn user_dir(local_root: &Path) -> Result<PathBuf, Error> {
    let user = parvm_env_config::current_user().map_err(|source| Error::UserName {
        local_root: local_root.to_path_buf(),
        source,
    })?;
    Ok(local_root.join(format!("parvm-{user}")))
}

/// The per-user local storage folder, `<local root>/parvm-<user>`, and the task
/// folders in it.
///
/// It keeps this process's persistent folders, locked, while it lives. Dropping it
/// unlocks them but leaves them on disk (idle while this process runs, stale after);
/// [`LocalStorage::discard`] removes one.
#[derive(Debug)]
pub struct LocalStorage {
    pub(crate) dir: PathBuf,
    pub(crate) uid: u32,
    pub(crate) host: String,
    pub(crate) grace: Duration,
    pub(crate) backend: LockBackend,
    /// Whether new folders are made under a staging name and renamed into place.
    staged: bool,
    kept: Kept,
}

impl LocalStorage {
    /// Default settings, to adjust before [`StorageOptions::open`].
    pub fn options() -> StorageOptions {
        StorageOptions {
            host: None,
            grace: DEFAULT_GRACE,
            backend: LockBackend::Flock,
            staged: true,
        }
    }

    /// Opens `<local_root>/parvm-<user>`, making it with mode 0700 if missing, and
    /// refuses it unless it is a real folder owned by the effective user and closed to
    /// group and others. The local root and every folder above it must be owned by the
    /// effective user or root, and not be writable by group or others unless they carry
    /// the sticky bit (as `/tmp` does): otherwise another user could swap the per-user
    /// folder after it was checked.
    ///
    /// # Errors
    ///
    /// [`Error::RootMissing`], [`Error::RootUnsafe`], [`Error::NotWritable`], [`Error::UserName`],
    /// [`Error::UserDirSymlink`], [`Error::UserDirNotFolder`], [`Error::UserDirNotOwned`],
    /// [`Error::UserDirMode`], [`Error::Inspect`], [`Error::CreateFolder`].
    pub fn open(local_root: &Path) -> Result<LocalStorage, Error> {
        LocalStorage::options().open(local_root)
    }

    /// Opens the local storage named by `config` (its local root and host name).
    ///
    /// # Errors
    ///
    /// As [`LocalStorage::open`].
    pub fn from_config(config: &Config) -> Result<LocalStorage, Error> {
        LocalStorage::options()
            .host(config.hostname())
            .open(config.local_root())
    }

    /// Opens the local storage named by `config` only if its per-user folder exists; see
    /// [`StorageOptions::open_existing`].
    ///
    /// # Errors
    ///
    /// As [`StorageOptions::open_existing`].
    pub fn existing_from_config(config: &Config) -> Result<Option<LocalStorage>, Error> {
        LocalStorage::options()
            .host(config.hostname())
            .open_existing(config.local_root())
    }

    /// Opens the storage and sweeps stale folders, as a worker does when it starts.
    ///
    /// # Errors
    ///
    /// As [`LocalStorage::open`] and [`LocalStorage::sweep`].
    pub fn open_and_sweep(local_root: &Path) -> Result<(LocalStorage, SweepReport), Error> {
        let storage = LocalStorage::open(local_root)?;
        let report = storage.sweep()?;
        Ok((storage, report))
    }

    /// The per-user folder, `<local root>/parvm-<user>`.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The host name written into owner markers.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Takes a task folder for a task of VM `vm_index`.
    ///
    /// Temporary: a new folder `<pid hex>_vm<vm index hex>[_<n>]`. Persistent: the
    /// folder this process kept for `vm_index`, if any ([`TaskFolder::reused`] is then
    /// `true`), else a new one that is kept after the task.
    ///
    /// # Errors
    ///
    /// [`Error::CreateFolder`]; [`Error::PersistentInUse`] when the persistent folder
    /// of `vm_index` is still held by another [`TaskFolder`].
    pub fn take(&self, vm_index: u32, persistence: Persistence) -> Result<TaskFolder, Error> {
        if persistence == Persistence::Temporary {
            let (held, as_left) = match self.spare_for(vm_index) {
                Some(spare) => spare,
                None => (self.create(vm_index)?, false),
            };
            return Ok(
                TaskFolder::new(held, vm_index, persistence, false, self.kept.clone())
                    .left_by_last_task(as_left),
            );
        }
        let mut kept = lock_kept(&self.kept);
        let (held, reused) = match borrow_kept(&mut kept.persistent, vm_index)? {
            Some(held) => (held, true),
            None => match self.create(vm_index) {
                Ok(held) => (held, false),
                Err(error) => {
                    kept.persistent.remove(&vm_index);
                    return Err(error);
                }
            },
        };
        Ok(TaskFolder::new(
            held,
            vm_index,
            persistence,
            reused,
            self.kept.clone(),
        ))
    }

    /// Removes the persistent folder this process keeps for `vm_index`, e.g. when its
    /// VM is finished. `Ok(false)`: there was none waiting.
    ///
    /// # Errors
    ///
    /// [`Error::PersistentInUse`] while a task holds it; [`Error::Remove`].
    pub fn discard(&self, vm_index: u32) -> Result<bool, Error> {
        let held = {
            let mut kept = lock_kept(&self.kept);
            let held = borrow_kept(&mut kept.persistent, vm_index)?;
            kept.persistent.remove(&vm_index);
            held
        };
        match held {
            Some(held) => held.remove().map(|()| true),
            None => Ok(false),
        }
    }

    /// Removes the emptied folder [`TaskFolder::release_for_next`] kept, when its next task
    /// did not come (it was stopped before it began, or the caller waits for work).
    /// `Ok(false)`: none was kept.
    ///
    /// # Errors
    ///
    /// [`Error::Remove`].
    pub fn remove_spare(&self) -> Result<bool, Error> {
        let spare = lock_kept(&self.kept).spare.take();
        match spare {
            Some(spare) => spare.held.remove().map(|()| true),
            None => Ok(false),
        }
    }

    /// Whether an emptied folder is kept for a next task (see [`LocalStorage::remove_spare`]).
    pub fn holds_spare(&self) -> bool {
        lock_kept(&self.kept).spare.is_some()
    }

    /// The kept spare folder, if it belongs to `vm_index` and is still as it was left:
    /// the same folder, locked, with this process's marker; and whether its task left it
    /// as it was (not emptied). Any other spare is removed.
    fn spare_for(&self, vm_index: u32) -> Option<(Held, bool)> {
        let spare = lock_kept(&self.kept).spare.take()?;
        let ours = spare.vm_index == vm_index
            && spare.held.intact()
            && OwnerMarker::read(&spare.held.path)
                .is_ok_and(|marker| marker == Some(OwnerMarker::current(&self.host)));
        if ours {
            return Some((spare.held, spare.as_left));
        }
        let path = spare.held.path.clone();
        if let Err(error) = spare.held.remove() {
            tracing::warn!(path = %path.display(), %error, "cannot remove a spare task folder; a later sweep removes the rest");
        }
        None
    }

    /// Makes and claims a new folder `<pid hex>_vm<vm index hex>[_<n>]`. It is made,
    /// locked and given its owner marker under a staging name, then renamed into place
    /// without replacing anything, so a folder under a task-folder name always has its
    /// marker: a worker killed halfway leaves a staging folder the next sweep removes at
    /// once, not an unmarked folder it must spare for the grace period. Where the file
    /// system cannot rename without replacing, the folder is made in place.
    fn create(&self, vm_index: u32) -> Result<Held, Error> {
        let me = OwnerMarker::current(&self.host);
        let base = format!("{:x}_vm{vm_index:x}", me.pid);
        if !self.staged {
            return self.create_in_place(&base, &me);
        }
        // A forced clear elsewhere may remove the staging folder; then start again.
        for _ in 0..MAX_RESTARTS {
            let Some((staging, lock)) = self.stage(&me)? else {
                continue;
            };
            match self.place(&staging, lock, &base)? {
                Placed::Held(held) => return Ok(held),
                Placed::Vanished => {}
                Placed::Unsupported => return self.create_in_place(&base, &me),
            }
        }
        Err(Error::CreateFolder {
            path: self.dir.join(base),
            source: io::Error::other(format!(
                "its staging folder was removed {MAX_RESTARTS} times while it was made; is a forced clear running in a loop?"
            )),
        })
    }

    /// Makes a staging folder, locks it and writes the owner marker. `Ok(None)`: it was
    /// removed meanwhile.
    fn stage(&self, me: &OwnerMarker) -> Result<Option<(PathBuf, Option<File>)>, Error> {
        let path = self.dir.join(unique_name(STAGING_PREFIX, ""));
        match DirBuilder::new().mode(0o700).create(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
            Err(source) => return Err(Error::CreateFolder { path, source }),
            Ok(()) => {}
        }
        let lock = match self.backend.lock_new(&path) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                let _ = crate::tree::remove_tree(&path);
                return Err(Error::CreateFolder { path, source });
            }
        };
        match me.write_unseen(&path) {
            Ok(()) => Ok(Some((path, lock))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => {
                let _ = crate::tree::remove_tree(&path);
                Err(Error::CreateFolder { path, source })
            }
        }
    }

    /// Renames a staged folder to the first free name of `base`, `base_1`, ...
    fn place(&self, staging: &Path, lock: Option<File>, base: &str) -> Result<Placed, Error> {
        for name in candidate_names(base) {
            let path = self.dir.join(&name);
            match renameat2(
                AT_FDCWD,
                staging,
                AT_FDCWD,
                &path,
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => {
                    return match Held::new(path.clone(), name, lock) {
                        Ok(held) => Ok(Placed::Held(held)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Placed::Vanished),
                        Err(source) => Err(Error::CreateFolder { path, source }),
                    };
                }
                Err(Errno::EEXIST) => continue,
                Err(Errno::ENOENT) => return Ok(Placed::Vanished),
                Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    let _ = crate::tree::remove_tree(staging);
                    return Ok(Placed::Unsupported);
                }
                Err(e) => {
                    let _ = crate::tree::remove_tree(staging);
                    return Err(Error::CreateFolder {
                        path,
                        source: e.into(),
                    });
                }
            }
        }
        let _ = crate::tree::remove_tree(staging);
        Err(self.names_taken(base))
    }

    /// Every name [`candidate_names`] gives for `base` is taken.
    fn names_taken(&self, base: &str) -> Error {
        Error::CreateFolder {
            path: self.dir.join(base),
            source: io::Error::other(format!(
                "{MAX_SUFFIX} folder names for this process are taken"
            )),
        }
    }

    /// Makes and claims a new folder in place, trying `_<n>` suffixes past names that
    /// exist; for file systems that cannot rename without replacing.
    fn create_in_place(&self, base: &str, me: &OwnerMarker) -> Result<Held, Error> {
        for name in candidate_names(base) {
            let path = self.dir.join(&name);
            match DirBuilder::new().mode(0o700).create(&path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(Error::CreateFolder { path, source }),
                Ok(()) => {}
            }
            if let Some(held) = self.claim(path, name, me)? {
                return Ok(held);
            }
        }
        Err(self.names_taken(base))
    }

    /// Locks a folder we just made and writes its owner marker. `Ok(None)`: a forced
    /// clear removed it meanwhile; try the next name.
    fn claim(&self, path: PathBuf, name: String, me: &OwnerMarker) -> Result<Option<Held>, Error> {
        let lock = match self.backend.lock_new(&path) {
            Ok(lock) => lock,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::CreateFolder { path, source }),
        };
        if lock.as_ref().is_some_and(|file| !still_linked(file, &path)) {
            return Ok(None);
        }
        let written = me
            .write(&path)
            .and_then(|()| Held::new(path.clone(), name, lock));
        match written {
            Ok(held) => Ok(Some(held)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => {
                let _ = crate::tree::remove_tree(&path);
                Err(Error::CreateFolder { path, source })
            }
        }
    }
}

/// The names a new folder may get, in order: `base`, `base_1`, ... up to [`MAX_SUFFIX`].
fn candidate_names(base: &str) -> impl Iterator<Item = String> + '_ {
    (0..MAX_SUFFIX).map(move |n| {
        if n == 0 {
            base.to_owned()
        } else {
            format!("{base}_{n}")
        }
    })
}

/// Makes the per-user folder with mode 0700; another process making it first is fine.
fn make_user_dir(local_root: &Path, dir: &Path) -> Result<(), Error> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) if denied(&source) => Err(Error::NotWritable {
            path: local_root.to_path_buf(),
            source,
        }),
        Err(source) => Err(Error::CreateFolder {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

fn denied(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

/// Refuses a per-user folder that someone else could read, replace or redirect.
fn verify_user_dir(dir: &Path, uid: u32) -> Result<(), Error> {
    let path = dir.to_path_buf();
    let meta = std::fs::symlink_metadata(dir).map_err(|source| Error::Inspect {
        path: path.clone(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(Error::UserDirSymlink { path });
    }
    if !meta.is_dir() {
        return Err(Error::UserDirNotFolder { path });
    }
    if meta.uid() != uid {
        return Err(Error::UserDirNotOwned {
            path,
            owner: meta.uid(),
            expected: uid,
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(Error::UserDirMode {
            path,
            mode: meta.mode() & 0o7777,
        });
    }
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|errno| Error::NotWritable {
        path,
        source: errno.into(),
    })
}

/// The system's host name through env-config's one reader (`localhost` when it cannot be
/// read): the default of [`StorageOptions::host`], whatever `PARVM_HOSTNAME` says.
fn real_host() -> String {
    parvm_env_config::system_hostname().unwrap_or_else(|_| "localhost".to_owned())
}

impl Default for StorageOptions {
    fn default() -> Self {
        LocalStorage::options()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FolderState;

    fn storage_without_flock(root: &Path) -> LocalStorage {
        LocalStorage::options()
            .host("h")
            .grace(Duration::ZERO)
            .without_flock()
            .open(root)
            .unwrap()
    }

    fn state(storage: &LocalStorage, name: &str) -> Option<FolderState> {
        storage
            .list()
            .unwrap()
            .into_iter()
            .find(|i| i.name == name)
            .map(|i| i.state)
    }

    #[test]
    fn storage_and_folders_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LocalStorage>();
        check::<TaskFolder>();
    }

    #[test]
    fn without_flock_a_live_owner_means_in_use() {
        let root = tempfile::tempdir().unwrap();
        let storage = storage_without_flock(root.path());
        let folder = storage.take(0, Persistence::Temporary).unwrap();
        assert_eq!(state(&storage, folder.name()), Some(FolderState::InUse));
        assert!(storage.sweep().unwrap().removed.is_empty());
        assert!(storage.clear(false).unwrap().removed.is_empty());
        let path = folder.path().to_path_buf();
        folder.release().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn without_staging_folders_are_made_in_place_marked_and_locked() {
        let root = tempfile::tempdir().unwrap();
        let storage = LocalStorage::options()
            .host("h")
            .without_staging()
            .open(root.path())
            .unwrap();
        let base = format!("{:x}_vm0", std::process::id());
        std::fs::create_dir(storage.path().join(&base)).unwrap();
        let folder = storage.take(0, Persistence::Temporary).unwrap();
        assert_eq!(folder.name(), format!("{base}_1"));
        assert_eq!(state(&storage, folder.name()), Some(FolderState::InUse));
        assert_eq!(
            OwnerMarker::read(folder.path()).unwrap(),
            Some(OwnerMarker::current("h"))
        );
        folder.release().unwrap();
    }

    #[test]
    fn without_flock_a_dead_owner_is_still_swept() {
        let root = tempfile::tempdir().unwrap();
        let storage = storage_without_flock(root.path());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let folder = storage.path().join("dead_vm0");
        std::fs::create_dir(&folder).unwrap();
        OwnerMarker::new(pid, crate::owner::boot_id(), None, "h")
            .write(&folder)
            .unwrap();
        assert_eq!(state(&storage, "dead_vm0"), Some(FolderState::Stale));
        assert_eq!(storage.sweep().unwrap().removed.len(), 1);
        assert!(!folder.exists());
    }

    #[test]
    fn without_flock_persistent_folders_are_still_reused() {
        let root = tempfile::tempdir().unwrap();
        let storage = storage_without_flock(root.path());
        let path = storage
            .take(1, Persistence::Persistent)
            .unwrap()
            .path()
            .to_path_buf();
        let again = storage.take(1, Persistence::Persistent).unwrap();
        assert!(again.reused());
        assert_eq!(again.path(), path);
    }
}

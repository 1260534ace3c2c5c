//! The folder lock (`.parvm-lock`): an exclusive `flock` held while a folder is used.
//!
//! Some network file systems do not support `flock`. Then the lock is reported as
//! unsupported and callers fall back to the owner marker's liveness check.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// File name of the lock file inside a task folder.
pub const LOCK_FILE: &str = ".parvm-lock";

/// How folder locks are taken. `Unsupported` is the seam tests use to exercise the
/// fallback for file systems without `flock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockBackend {
    Flock,
    #[cfg_attr(not(test), allow(dead_code))]
    Unsupported,
}

/// The result of trying to lock a folder.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// We hold the lock until the file is dropped.
    Held(File),
    /// Someone else holds it.
    Busy,
    /// There is no lock file (and we were told not to create one).
    Missing,
    /// The file system cannot lock.
    Unsupported,
}

static WARNED: AtomicBool = AtomicBool::new(false);

impl LockBackend {
    /// Tries, without blocking, to lock the lock file of `folder`; `create` makes a
    /// missing lock file. The lock file is never opened through a symlink.
    pub(crate) fn try_lock(self, folder: &Path, create: bool) -> io::Result<Attempt> {
        let path = folder.join(LOCK_FILE);
        let file = match open_lock_file(&path, create) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => {
                return Ok(Attempt::Missing);
            }
            other => other?,
        };
        if self == LockBackend::Unsupported {
            warn_unsupported(folder);
            return Ok(Attempt::Unsupported);
        }
        match file.try_lock() {
            Ok(()) => Ok(Attempt::Held(file)),
            Err(TryLockError::WouldBlock) => Ok(Attempt::Busy),
            Err(TryLockError::Error(e)) if unsupported(&e) => {
                warn_unsupported(folder);
                Ok(Attempt::Unsupported)
            }
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// Makes and locks the lock file of a folder we just made, waiting if need be: only
    /// a lister or sweeper can hold it, and only briefly. `Ok(None)`: cannot lock here.
    pub(crate) fn lock_new(self, folder: &Path) -> io::Result<Option<File>> {
        let file = open_lock_file(&folder.join(LOCK_FILE), true)?;
        if self == LockBackend::Unsupported {
            warn_unsupported(folder);
            return Ok(None);
        }
        match file.lock() {
            Ok(()) => Ok(Some(file)),
            Err(e) if unsupported(&e) => {
                warn_unsupported(folder);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

fn open_lock_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Errors with which file systems say they cannot `flock`.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
    )
}

fn warn_unsupported(folder: &Path) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            folder = %folder.display(),
            "the local storage file system does not support flock; judging folders by their owner marker only"
        );
    }
}

/// Whether `file` is still the lock file at `folder/.parvm-lock`: after we won the lock,
/// the folder may have been removed (or removed and made again) by someone else.
pub(crate) fn still_linked(file: &File, folder: &Path) -> bool {
    let (Ok(held), Ok(on_disk)) = (
        file.metadata(),
        std::fs::symlink_metadata(folder.join(LOCK_FILE)),
    ) else {
        return false;
    };
    held.nlink() > 0 && held.dev() == on_disk.dev() && held.ino() == on_disk.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_folder_is_busy_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            LockBackend::Flock.try_lock(tmp.path(), false).unwrap(),
            Attempt::Missing
        ));
        let Attempt::Held(first) = LockBackend::Flock.try_lock(tmp.path(), true).unwrap() else {
            panic!("first lock not held");
        };
        assert!(still_linked(&first, tmp.path()));
        assert!(matches!(
            LockBackend::Flock.try_lock(tmp.path(), true).unwrap(),
            Attempt::Busy
        ));
        drop(first);
        assert!(matches!(
            LockBackend::Flock.try_lock(tmp.path(), false).unwrap(),
            Attempt::Held(_)
        ));
    }

    #[test]
    fn forced_unsupported_backend_reports_unsupported() {
        let tmp = tempfile::tempdir().unwrap();
        let got = LockBackend::Unsupported.try_lock(tmp.path(), true).unwrap();
        assert!(matches!(got, Attempt::Unsupported));
    }

    #[test]
    fn symlinked_lock_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join(LOCK_FILE)).unwrap();
        assert!(LockBackend::Flock.try_lock(tmp.path(), true).is_err());
    }
}

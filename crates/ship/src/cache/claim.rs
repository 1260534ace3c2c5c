//! Claims: an exclusive `flock` on `claims/<digest>`, held by the one thread or process of
//! the host that fetches that blob. The kernel drops it with its process, so a killed
//! fetcher releases its claim.
//!
//! The claim file is also the blob being written: its holder writes the bytes into it and,
//! once they check out, renames it into the blob store ([`Claim::publish`]), so a fetched
//! blob costs one file made and one rename. A holder that fails removes it. Either way the
//! file leaves the claim path before it is unlocked: a waiter that locked a file which is no
//! longer at its path therefore knows the fetch it waited for ended, and a claimant checks
//! it locked the file at the path (else it tries again), so two never hold one claim.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::dirs::still_at;
use crate::error::{Error, Result};

/// A held claim; dropping it unpublished removes the claim file (what was written into it)
/// and releases the lock.
#[derive(Debug)]
pub(crate) struct Claim {
    path: PathBuf,
    inherited: bool,
    published: bool,
    lock: Flock<File>,
}

/// Opens the claim file, making it when missing; true when this call made it.
fn open(path: &Path) -> Result<(File, bool)> {
    let options = |create_new: bool| {
        let mut o = OpenOptions::new();
        o.read(true)
            .write(true)
            .create_new(create_new)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        o
    };
    loop {
        match options(true).open(path) {
            Ok(file) => return Ok((file, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("open claim", path, e)),
        }
        match options(false).open(path) {
            Ok(file) => return Ok((file, false)),
            // Removed by its holder in between: make it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("open claim", path, e)),
        }
    }
}

impl Claim {
    /// Takes the claim at `path` without waiting; `None` when another holds it.
    pub(crate) fn try_take(path: &Path) -> Result<Option<Claim>> {
        loop {
            let (file, made) = open(path)?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) if still_at(&lock, path) => {
                    return Ok(Some(Claim {
                        path: path.to_path_buf(),
                        inherited: !made,
                        published: false,
                        lock,
                    }));
                }
                // Its holder finished and removed it between our open and our lock.
                Ok(_) => continue,
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(Error::io("lock claim", path, e.into())),
            }
        }
    }

    /// True when the claim file was there, unheld, before this claim: its holder died
    /// (holders move it away before they unlock it), and may have left part of a blob in it.
    pub(crate) fn inherited(&self) -> bool {
        self.inherited
    }

    /// The claim file, open for writing the blob into.
    pub(crate) fn file(&self) -> &File {
        &self.lock
    }

    /// Where the claim file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the claim file, holding the finished blob, to `dest`; the claim is released
    /// when it is dropped (its file, the blob now, stays).
    pub(crate) fn publish(&mut self, dest: &Path) -> std::io::Result<()> {
        fs::rename(&self.path, dest)?;
        self.published = true;
        Ok(())
    }

    /// Returns when nobody holds the claim at `path`.
    pub(crate) fn wait(path: &Path) -> Result<()> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("open claim", path, e)),
        };
        match Flock::lock(file, FlockArg::LockShared) {
            // Locked: whoever held it is gone (finished, failed or killed).
            Ok(_released) => Ok(()),
            Err((_, Errno::EINTR)) => Claim::wait(path),
            Err((_, e)) => Err(Error::io("wait for claim", path, e.into())),
        }
    }

    /// Removes the claim file when nobody holds it (left by a killed fetcher); true when
    /// it was free.
    pub(crate) fn clear_if_free(path: &Path) -> Result<bool> {
        Ok(Claim::try_take(path)?.is_some())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Removed while still locked: see the module's comment. A published claim file is
        // the blob now, and its path may already be another claimant's.
        if !self.published {
            let _ = fs::remove_file(&self.path);
        }
    }
}

//! Pins: what a live [`Snapshot`](crate::Snapshot), or one being built, keeps from
//! eviction. A pin is a file `pins/<root digest>.<unique>` listing the blobs it needs,
//! held with a shared `flock`: eviction reads the pins it cannot lock and spares what they
//! name; a pin it can lock belongs to a process that is gone and is removed.
//!
//! A pin is locked under its temporary name and only then renamed into `pins/`, so eviction
//! never sees a pin that is not held yet.
//!
//! A pin of a snapshot its holder reads (mirrors from) has a second, empty lock file of the
//! same name in `reading/`: only a snapshot nobody else reads is taken out of the cache to
//! be patched into a newer one ([`HostCache::take_over`](super::HostCache)). A holder that
//! keeps a snapshot between tasks stands it by (the mark goes, the pin stays, so eviction
//! still spares it) and resumes it before reading it again, finding it gone when another
//! patched it meanwhile. Both are decided with the index held, shared to mark, exclusive
//! to take over.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::dirs::unique_suffix;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// A held pin; dropping it removes it, and its reading mark.
#[derive(Debug)]
pub(crate) struct Pin {
    path: PathBuf,
    unique: String,
    _lock: Flock<File>,
    /// The mark in `reading/` while its holder reads the snapshot.
    reading: Mutex<Option<Box<Pin>>>,
}

impl Pin {
    /// Pins snapshot `root` and `blobs` (made in `tmp`, then moved to `pins`), marked as
    /// read when `reading` (the `reading/` folder) is given.
    pub(crate) fn take(
        pins: &Path,
        tmp: &Path,
        root: &Digest,
        blobs: impl Iterator<Item = Digest>,
        reading: Option<&Path>,
    ) -> Result<Pin> {
        let pin = Pin::take_as(pins, tmp, root, blobs, unique_suffix())?;
        if let Some(reading) = reading {
            pin.mark_reading(reading, tmp, root)?;
        }
        Ok(pin)
    }

    /// Marks the snapshot as read by this pin's holder (call it with the index held
    /// shared); nothing when it is marked already.
    pub(crate) fn mark_reading(&self, reading: &Path, tmp: &Path, root: &Digest) -> Result<()> {
        let mut mark = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        if mark.is_none() {
            let unique = self.unique.clone();
            *mark = Some(Box::new(Pin::take_as(
                reading,
                tmp,
                root,
                std::iter::empty(),
                unique,
            )?));
        }
        Ok(())
    }

    /// Drops the reading mark: another holder may now take the snapshot out to patch it.
    pub(crate) fn stand_by(&self) {
        self.reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn take_as(
        pins: &Path,
        tmp: &Path,
        root: &Digest,
        blobs: impl Iterator<Item = Digest>,
        unique: String,
    ) -> Result<Pin> {
        let staged = tmp.join(format!("pin.{root}.{unique}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&staged)
            .map_err(|e| Error::io("create pin", &staged, e))?;
        let path = pins.join(format!("{root}.{unique}"));
        let placed = Flock::lock(file, FlockArg::LockShared)
            .map_err(|(_, e)| Error::io("lock pin", &staged, e.into()))
            .and_then(|mut lock| {
                let mut text = String::new();
                for blob in blobs {
                    text.push_str(blob.hex().as_str());
                    text.push('\n');
                }
                lock.write_all(text.as_bytes())
                    .map_err(|e| Error::io("write pin", &staged, e))?;
                fs::rename(&staged, &path).map_err(|e| Error::io("place pin", &path, e))?;
                Ok(lock)
            });
        match placed {
            Ok(lock) => Ok(Pin {
                path,
                unique,
                _lock: lock,
                reading: Mutex::new(None),
            }),
            Err(e) => {
                // A full disk fails the write: the half-made pin goes now, not at the next
                // eviction pass after this process ends.
                let _ = fs::remove_file(&staged);
                Err(e)
            }
        }
    }

    /// The unique part of its name, shared with the folder a snapshot is built in.
    pub(crate) fn unique(&self) -> &str {
        &self.unique
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What the live pins keep: snapshot roots, blobs, and the unique names of live builds.
#[derive(Default)]
pub(crate) struct Pinned {
    pub(crate) roots: HashSet<Digest>,
    pub(crate) blobs: HashSet<Digest>,
    pub(crate) uniques: HashSet<String>,
}

/// Reads every live pin, removing those nobody holds; the blobs they name only when
/// `with_blobs` (their roots and unique names always).
pub(crate) fn live(pins: &Path, with_blobs: bool) -> Result<Pinned> {
    let mut out = Pinned::default();
    for entry in fs::read_dir(pins).map_err(|e| Error::io("list", pins, e))? {
        let entry = entry.map_err(|e| Error::io("list", pins, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((root, unique)) = name.split_once('.') else {
            continue;
        };
        let Some(root) = Digest::from_hex(root) else {
            continue;
        };
        match look(&path)? {
            Look::Gone => {}
            Look::Free => {
                let _ = fs::remove_file(&path);
            }
            Look::Held(mut file) => {
                out.roots.insert(root);
                out.uniques.insert(unique.to_string());
                if with_blobs {
                    let mut text = String::new();
                    file.read_to_string(&mut text)
                        .map_err(|e| Error::io("read pin", &path, e))?;
                    out.blobs.extend(text.lines().filter_map(Digest::from_hex));
                }
            }
        }
    }
    Ok(out)
}

/// True when a pin of snapshot `root` other than `own` (a pin's unique suffix) is held.
/// Call it holding the index exclusive, so no pin is taken meanwhile.
pub(crate) fn held_by_others(pins: &Path, root: &Digest, own: &str) -> Result<bool> {
    let prefix = format!("{root}.");
    for entry in fs::read_dir(pins).map_err(|e| Error::io("list", pins, e))? {
        let entry = entry.map_err(|e| Error::io("list", pins, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(unique) = name.strip_prefix(&prefix) else {
            continue;
        };
        if unique == own {
            continue;
        }
        // A free one was left by a process that is gone.
        if let Look::Held(_) = look(&entry.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// True when a held pin whose unique suffix is not among `own` lists blob `blob`. Call it
/// holding the index exclusive, so no pin is taken meanwhile.
pub(crate) fn blob_held_by_others(pins: &Path, blob: &Digest, own: &[&str]) -> Result<bool> {
    let hex = blob.hex();
    for entry in fs::read_dir(pins).map_err(|e| Error::io("list", pins, e))? {
        let entry = entry.map_err(|e| Error::io("list", pins, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name
            .split_once('.')
            .is_some_and(|(_, unique)| own.contains(&unique))
        {
            continue;
        }
        let path = entry.path();
        if let Look::Held(mut file) = look(&path)? {
            let mut text = String::new();
            file.read_to_string(&mut text)
                .map_err(|e| Error::io("read pin", &path, e))?;
            if text.lines().any(|line| line == hex.as_str()) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A pin file as [`look`] found it.
enum Look {
    /// Removed meanwhile (released by its holder).
    Gone,
    /// Not held: its holder is gone without removing it.
    Free,
    /// Held by a live holder; the file, open to read the blobs it lists.
    Held(File),
}

/// Whether the pin file at `path` is held, tried with a lock that does not wait.
fn look(path: &Path) -> Result<Look> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Look::Gone),
        Err(e) => return Err(Error::io("open pin", path, e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_free) => Ok(Look::Free),
        Err((file, Errno::EWOULDBLOCK)) => Ok(Look::Held(file)),
        Err((_, e)) => Err(Error::io("lock pin", path, e.into())),
    }
}

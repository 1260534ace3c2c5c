//! Pins: what a live [`Snapshot`](crate::Snapshot), or one being built, keeps from
//! eviction. A pin is a file `pins/<root digest>.<unique>` listing the blobs it needs,
//! held with a shared `flock`: eviction reads the pins it cannot lock and spares what they
//! name; a pin it can lock belongs to a process that is gone and is removed.
//!
//! A pin is locked under its temporary name and only then renamed into `pins/`, so eviction
//! never sees a pin that is not held yet.
//!
//! A pin of a snapshot its holder reads (mirrors from) has a second, empty file of the same
//! name in `reading/`, its mark, held with a shared `flock` while the holder reads: only a
//! snapshot nobody else reads is taken out of the cache to be patched into a newer one
//! ([`HostCache::take_over`](super::HostCache)). A holder that keeps a snapshot between
//! tasks stands it by (the mark's lock is let go, the pin stays, so eviction still spares
//! it) and resumes it before reading it again (locked again, the file made anew if a
//! clean-up took it for a dead process's), finding it gone when another patched it
//! meanwhile. The mark's file lives as long as the pin, so a task makes no file for it.
//! Marks are taken with the index held shared and looked at with it held exclusive.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::dirs::{still_at, unique_suffix};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// A held pin; dropping it removes it, and its reading mark.
#[derive(Debug)]
pub(crate) struct Pin {
    path: PathBuf,
    unique: String,
    _lock: Flock<File>,
    /// Its reading mark in `reading/`, once made.
    mark: Mutex<Option<Mark>>,
}

/// A reading mark (see the module's comment): its file, held locked while its holder
/// reads the snapshot.
#[derive(Debug)]
struct Mark {
    path: PathBuf,
    lock: MarkLock,
}

#[derive(Debug)]
enum MarkLock {
    Reading(Flock<File>),
    StoodBy(File),
    /// Only while the lock changes hands, or after unlocking failed.
    None,
}

impl Drop for Mark {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
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
        let mut mark = self.mark.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = mark.as_mut() {
            match std::mem::replace(&mut held.lock, MarkLock::None) {
                MarkLock::Reading(lock) => {
                    held.lock = MarkLock::Reading(lock);
                    return Ok(());
                }
                // Still its file (not removed as a dead process's): locked again.
                MarkLock::StoodBy(file) if still_at(&file, &held.path) => {
                    match Flock::lock(file, FlockArg::LockShared) {
                        Ok(lock) => {
                            held.lock = MarkLock::Reading(lock);
                            return Ok(());
                        }
                        Err((_, e)) => return Err(Error::io("lock mark", &held.path, e.into())),
                    }
                }
                _ => {}
            }
        }
        // Its file gone (or unlocked by a failure): the old mark goes first, since the
        // new one takes the same name.
        drop(mark.take());
        let (path, lock) = place_locked(reading, tmp, root, &self.unique, "")?;
        *mark = Some(Mark {
            path,
            lock: MarkLock::Reading(lock),
        });
        Ok(())
    }

    /// Lets the reading mark's lock go: another holder may now take the snapshot out to
    /// patch it.
    pub(crate) fn stand_by(&self) {
        let mut mark = self.mark.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = mark.as_mut() {
            held.lock = match std::mem::replace(&mut held.lock, MarkLock::None) {
                MarkLock::Reading(lock) => match lock.unlock() {
                    Ok(file) => MarkLock::StoodBy(file),
                    // Closing the file lets the lock go too; the next mark is made anew.
                    Err(_) => MarkLock::None,
                },
                other => other,
            };
        }
    }

    fn take_as(
        pins: &Path,
        tmp: &Path,
        root: &Digest,
        blobs: impl Iterator<Item = Digest>,
        unique: String,
    ) -> Result<Pin> {
        let mut text = String::new();
        for blob in blobs {
            text.push_str(blob.hex().as_str());
            text.push('\n');
        }
        let (path, lock) = place_locked(pins, tmp, root, &unique, &text)?;
        Ok(Pin {
            path,
            unique,
            _lock: lock,
            mark: Mutex::new(None),
        })
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

/// Makes `<dir>/<root>.<unique>` holding `text`, locked shared: made in `tmp`, locked,
/// written, then renamed into `dir`, so nobody finds it there unlocked.
fn place_locked(
    dir: &Path,
    tmp: &Path,
    root: &Digest,
    unique: &str,
    text: &str,
) -> Result<(PathBuf, Flock<File>)> {
    let staged = tmp.join(format!("pin.{root}.{unique}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&staged)
        .map_err(|e| Error::io("create pin", &staged, e))?;
    let path = dir.join(format!("{root}.{unique}"));
    let placed = Flock::lock(file, FlockArg::LockShared)
        .map_err(|(_, e)| Error::io("lock pin", &staged, e.into()))
        .and_then(|mut lock| {
            lock.write_all(text.as_bytes())
                .map_err(|e| Error::io("write pin", &staged, e))?;
            fs::rename(&staged, &path).map_err(|e| Error::io("place pin", &path, e))?;
            Ok(lock)
        });
    match placed {
        Ok(lock) => Ok((path, lock)),
        Err(e) => {
            // A full disk fails the write: the half-made pin goes now, not at the next
            // eviction pass after this process ends.
            let _ = fs::remove_file(&staged);
            Err(e)
        }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn marks(dir: &Path) -> Vec<(String, u64)> {
        let mut found: Vec<(String, u64)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let ino = e.metadata().unwrap().ino();
                (e.file_name().to_string_lossy().into_owned(), ino)
            })
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_mark_keeps_its_file_while_stood_by_and_is_made_anew_when_a_clean_up_took_it() {
        let base = tempfile::tempdir().unwrap();
        let [pins, reading, tmp] = ["pins", "reading", "tmp"].map(|d| base.path().join(d));
        for dir in [&pins, &reading, &tmp] {
            fs::create_dir(dir).unwrap();
        }
        let root = Digest::of(b"snapshot");
        let pin = Pin::take(&pins, &tmp, &root, std::iter::empty(), Some(&reading)).unwrap();
        let first = marks(&reading);
        assert_eq!(first.len(), 1);
        assert!(held_by_others(&reading, &root, "someone else").unwrap());
        // Stood by: the file stays, its lock goes.
        pin.stand_by();
        assert_eq!(marks(&reading), first);
        assert!(!held_by_others(&reading, &root, "someone else").unwrap());
        // Resumed: the same file, locked again.
        pin.mark_reading(&reading, &tmp, &root).unwrap();
        assert_eq!(marks(&reading), first);
        assert!(held_by_others(&reading, &root, "someone else").unwrap());
        // Stood by, then removed by a clean-up (free marks look like a dead process's).
        pin.stand_by();
        live(&reading, false).unwrap();
        assert!(marks(&reading).is_empty());
        pin.mark_reading(&reading, &tmp, &root).unwrap();
        assert_eq!(marks(&reading).len(), 1);
        assert!(held_by_others(&reading, &root, "someone else").unwrap());
        drop(pin);
        assert!(marks(&reading).is_empty() && marks(&pins).is_empty());
    }
}

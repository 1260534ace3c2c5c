//! [`CacheUsage`]: what a host cache holds on disk, measured without opening (or making) it.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// What a host cache folder holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Blobs: one per distinct file content.
    pub blobs: u64,
    /// Snapshots: one per manifest materialised.
    pub snapshots: u64,
    /// Bytes of all its files, a file linked from several places (a blob and the snapshot
    /// files linked to it) counted once.
    pub bytes: u64,
}

impl CacheUsage {
    /// Measures the cache folder `dir` (`<per-user folder>/cache`) without following a
    /// symlink; an empty usage when it does not exist.
    ///
    /// # Errors
    /// [`Error::Io`] when a folder of it cannot be read.
    pub fn of(dir: &Path) -> Result<CacheUsage> {
        let mut usage = CacheUsage::default();
        if fs::symlink_metadata(dir).is_err() {
            return Ok(usage);
        }
        let mut files = HashSet::new();
        add_files(dir, &mut files, &mut usage.bytes)?;
        let blobs = dir.join("blobs");
        for fan in list(&blobs)? {
            let fan = fan.path();
            if fs::symlink_metadata(&fan).is_ok_and(|m| m.is_dir()) {
                usage.blobs += list(&fan)?.count() as u64;
            }
        }
        usage.snapshots = list(&dir.join("snapshots"))?
            .filter(|entry| {
                Digest::from_hex(&entry.file_name().to_string_lossy()).is_some()
                    && entry.file_type().is_ok_and(|t| t.is_dir())
            })
            .count() as u64;
        Ok(usage)
    }
}

/// The entries of `dir`; none when it does not exist.
fn list(dir: &Path) -> Result<impl Iterator<Item = fs::DirEntry>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => Some(entries),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    Ok(entries.into_iter().flatten().flatten())
}

/// Adds the bytes of every regular file beneath `dir` not seen yet (by device and inode).
fn add_files(dir: &Path, seen: &mut HashSet<(u64, u64)>, bytes: &mut u64) -> Result<()> {
    for entry in list(dir)? {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            add_files(&path, seen, bytes)?;
        } else if meta.is_file() && seen.insert((meta.dev(), meta.ino())) {
            *bytes += meta.len();
        }
    }
    Ok(())
}

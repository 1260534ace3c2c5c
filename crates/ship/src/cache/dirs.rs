//! The cache's folders: made private and verified before use, removed without following a
//! symlink, and unique names for temporary entries.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Makes `dir` (0700) when missing, then refuses it unless it is a folder owned by this
/// user, not a symlink, and closed to others.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create folder", dir, e)),
    }
    verify_private(dir)
}

/// Refuses `dir` unless it is a folder owned by this user, not a symlink, mode `0?00`.
pub(crate) fn verify_private(dir: &Path) -> Result<()> {
    let refuse = |reason: String| Error::UnsafeFolder {
        path: dir.to_path_buf(),
        reason,
    };
    let meta = fs::symlink_metadata(dir).map_err(|e| Error::io("inspect", dir, e))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symlink".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a folder".into()));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(refuse(format!(
            "it is owned by uid {}, not {uid}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "its mode {:o} lets others in",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// A name no other process or thread of this host uses now: pid, time and a counter.
pub(crate) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{}.{nanos:x}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a file or a whole tree, never following a symlink; folders made read-only
/// (snapshots keep the manifest's modes) are opened up first. A missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", path, e)),
    };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
            _ => Ok(()),
        };
    }
    if meta.mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("open up", path, e))?;
    }
    for entry in fs::read_dir(path).map_err(|e| Error::io("list", path, e))? {
        let entry = entry.map_err(|e| Error::io("list", path, e))?;
        remove_tree(&entry.path())?;
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// True when `file` is the file at `path` now (not removed, nor replaced by another).
pub(crate) fn still_at(file: &fs::File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
        _ => false,
    }
}

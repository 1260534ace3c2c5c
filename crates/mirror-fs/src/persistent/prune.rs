//! Removing from a task folder everything a fresh mirror would not put there (what a task
//! wrote, copies of sources gone since), for [`crate::MirroredFolder::renew`]. It must not
//! know how copies are checked or made again: the refresh before it did that.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use nix::dir::{Dir, Type};
use nix::sys::stat::fstat;

use super::manifest::Manifest;
use crate::error::{Error, Result};
use crate::fsops::{TaskRoot, remove_tree_at};

/// What a pruning removed.
pub(crate) struct Pruned {
    /// Entries removed (a folder with what was in it counts once).
    pub(crate) removed: usize,
    /// The folders copied from a source folder that it removed entries from: their
    /// modification times moved and must be their source's again.
    pub(crate) dirs: Vec<u32>,
}

/// Removes every entry beneath the task folder that is neither a copy in `m`, nor a folder
/// a fresh mirror of `m` makes or one on the way to it, nor one of the names in `keep` at
/// the top, never following a symlink.
///
/// # Errors
///
/// [`Error::NotRenewable`] when a folder of `m` (or on the way to one) cannot be opened as
/// a folder beneath the task folder, a folder the mirror made (not copied from a source)
/// no longer has the mode it was made with, or what a task left cannot be removed (a
/// folder it made read-only, or nested deeper than a removal here goes).
pub(crate) fn prune(m: &Manifest, root: &TaskRoot, keep: &[&OsStr]) -> Result<Pruned> {
    let top = root.path();
    // Every folder a fresh mirror makes: the copied ones, the targets files land in (not
    // one whose matches are all gone: a glob that matches nothing makes no folder), and
    // every folder on the way to one.
    let mut known: BTreeSet<&Path> = BTreeSet::new();
    for (dst, ids) in &m.by_dst {
        let made = ids.iter().any(|&d| {
            let dir = &m.dirs[d as usize];
            !dir.is_top() || dir.start < dir.end
        });
        if !made {
            continue;
        }
        let mut at = Some(dst.as_path());
        while let Some(path) = at.filter(|p| p.starts_with(top)) {
            if !known.insert(path) {
                break;
            }
            at = path.parent();
        }
    }
    known.insert(top);
    let keep: HashSet<&[u8]> = keep.iter().map(|k| k.as_bytes()).collect();
    let mut pruned = Pruned {
        removed: 0,
        dirs: Vec::new(),
    };
    for &path in &known {
        let fd = root.open_dir(path, path).map_err(|_| {
            not_renewable(path, "it is no longer a folder reached without symlinks")
        })?;
        let landed: &[u32] = m.by_dst.get(path).map_or(&[], Vec::as_slice);
        let copied: Vec<u32> = landed
            .iter()
            .copied()
            .filter(|&d| !m.dirs[d as usize].is_top())
            .collect();
        if copied.is_empty() && path != top {
            let mode = fstat(&fd).map_err(|e| read_error(path, e))?.st_mode & 0o7777;
            if Some(mode) != made_mode() {
                return Err(not_renewable(
                    path,
                    "a task changed the mode of a folder the mirror made",
                ));
            }
        }
        let mut doomed: Vec<CString> = Vec::new();
        let mut listing = Dir::from_fd(fd).map_err(|e| read_error(path, e))?;
        for entry in listing.iter() {
            let entry = entry.map_err(|e| read_error(path, e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let bytes = name.to_bytes();
            // Only a folder (or what the listing does not say) can be a known folder.
            let maybe_dir = !matches!(entry.file_type(), Some(t) if t != Type::Directory);
            let wanted = landed.iter().any(|&d| m.find(d, name).is_some())
                || (path == top && keep.contains(bytes))
                || (maybe_dir && known.contains(path.join(OsStr::from_bytes(bytes)).as_path()));
            if !wanted {
                doomed.push(name.to_owned());
            }
        }
        for name in &doomed {
            remove_tree_at(&listing, name).map_err(|e| {
                tracing::debug!(error = %e, "cannot remove `{}`", path.join(OsStr::from_bytes(name.to_bytes())).display());
                not_renewable(path, "what a task left in it cannot be removed here")
            })?;
        }
        if !doomed.is_empty() {
            pruned.removed += doomed.len();
            pruned.dirs.extend(copied);
        }
    }
    Ok(pruned)
}

/// The mode `mkdir` gives a folder in this process: 0777 less the umask, read once from
/// `/proc/self/status` (setting the umask to learn it would race other threads' creates).
fn made_mode() -> Option<u32> {
    static MODE: OnceLock<Option<u32>> = OnceLock::new();
    *MODE.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Umask:"))?;
        let umask = u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()?;
        Some(0o777 & !umask)
    })
}

fn not_renewable(path: &Path, why: &'static str) -> Error {
    Error::NotRenewable {
        path: path.to_path_buf(),
        why,
    }
}

fn read_error(path: &Path, e: nix::errno::Errno) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_made_mode_is_the_umask_s_complement() {
        let mode = made_mode().expect("this kernel has Umask in /proc/self/status");
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        std::fs::create_dir(&made).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let actual = std::fs::metadata(&made).unwrap().permissions().mode() & 0o7777;
        assert_eq!(actual, mode);
    }
}

//! [`Snapshot`]: an immutable tree of one manifest, materialised in the host cache, and
//! how it is built.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::cache::{HostCache, Kind, Pin, free_bytes, remove_tree};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Node, NodeKind, Timestamp};

mod from_blob;

use from_blob::Route;

/// A materialised manifest: a tree beneath the host cache whose files have the manifest's
/// content, modes and times. It stays pinned (never evicted) while this value lives.
/// Mirror from it; never hand it to a task or write into it (its files may be hard links
/// shared with other snapshots and with the cache's blobs).
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
    _pin: Pin,
}

impl Snapshot {
    /// The root folder of the tree: put it in place of the mirrored root it stands for.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Builds (or finds) the snapshot of `m`; true when it was built (the cache grew).
pub(crate) fn build(cache: &HostCache, m: &Manifest) -> Result<(Snapshot, bool)> {
    let root = m.root_digest();
    let dest = cache.snapshot_path(&root);
    let blobs = m.blobs();
    let (pin, present) = cache.pin(&root, blobs.iter().map(|b| b.0))?;
    // A file linked to its blob is counted twice, as the blob and in the snapshot: the
    // limits then count more than the disk holds, never less (every inode is counted by
    // its blob or by a snapshot holding it), so the cache may stay below its limit but
    // never exceeds it. Evicting such a blob frees no space until its snapshots go too.
    let used: Vec<_> = std::iter::once((Kind::Snapshot, root, m.total_bytes()))
        .chain(blobs.into_iter().map(|(d, size, _)| (Kind::Blob, d, size)))
        .collect();
    if present {
        // Its blobs count as used too: evicting them first would cost a full fetch as soon
        // as the snapshot goes, while the snapshot alone spares nothing.
        cache.index().touch(&used)?;
        let snapshot = Snapshot {
            path: dest,
            _pin: pin,
        };
        return Ok((snapshot, false));
    }
    let base = newest_other_snapshot(cache, &root)?;
    let base_ref = base.as_ref().map(|(dir, _, bm)| (dir.as_path(), bm));
    let entries = m.entries();
    let leaves: Vec<&(PathBuf, &Node)> = entries
        .iter()
        .filter(|(_, n)| !matches!(n.kind(), NodeKind::Dir { .. }))
        .collect();
    let routes = from_blob::routes(cache, &leaves, base_ref);
    // Only copies take space: links (from the base or to a blob) take a folder entry. A
    // concurrent build that adopts a blob first makes this build copy what it planned to
    // link; like space others take meanwhile, the check cannot see that coming.
    let needed: u64 = leaves
        .iter()
        .zip(&routes)
        .filter_map(|((_, node), route)| match (node.kind(), route) {
            (NodeKind::File { size, .. }, Some(Route::Copy)) => Some(*size),
            _ => None,
        })
        .sum();
    let snapshots = cache.sub("snapshots");
    let free = free_bytes(&snapshots)?;
    if needed > free {
        return Err(Error::NoSpace {
            folder: snapshots,
            needed,
            free,
        });
    }
    let temp = cache
        .sub("tmp")
        .join(format!("snap.{root}.{}", pin.unique()));
    let built = fill(cache, m, &entries, (&leaves, &routes), &temp, base_ref)
        .and_then(|()| keep_manifest(cache, m, pin.unique()))
        .and_then(|()| place(&temp, &dest));
    if built.is_err() {
        let _ = remove_tree(&temp);
    }
    built?;
    cache.index().touch(&used)?;
    let snapshot = Snapshot {
        path: dest,
        _pin: pin,
    };
    Ok((snapshot, true))
}

/// The most recently built snapshot other than `root`, pinned, with its manifest: entries
/// equal to one of its entries are hard-linked from it.
fn newest_other_snapshot(
    cache: &HostCache,
    root: &Digest,
) -> Result<Option<(PathBuf, Pin, Manifest)>> {
    let snapshots = cache.sub("snapshots");
    let mut newest: Option<(SystemTime, Digest)> = None;
    for entry in fs::read_dir(&snapshots)
        .map_err(|e| Error::io("list", &snapshots, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(digest) = name.strip_suffix(".manifest").and_then(Digest::from_hex) else {
            continue;
        };
        let Ok(time) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if digest != *root && newest.is_none_or(|(t, _)| time > t) {
            newest = Some((time, digest));
        }
    }
    let Some((_, digest)) = newest else {
        return Ok(None);
    };
    let (pin, present) = cache.pin(&digest, std::iter::empty())?;
    let Some(manifest) = present
        .then(|| crate::cache::read_manifest(&cache.manifest_path(&digest)))
        .flatten()
    else {
        return Ok(None);
    };
    Ok(Some((cache.snapshot_path(&digest), pin, manifest)))
}

/// Keeps the manifest beside the snapshot (written under a temporary name first).
fn keep_manifest(cache: &HostCache, m: &Manifest, unique: &str) -> Result<()> {
    let root = m.root_digest();
    let staged = cache.sub("tmp").join(format!("snapm.{root}.{unique}"));
    let dest = cache.manifest_path(&root);
    fs::write(&staged, m.encode()).map_err(|e| Error::io("write", &staged, e))?;
    fs::rename(&staged, &dest).map_err(|e| {
        let _ = fs::remove_file(&staged);
        Error::io("place", &dest, e)
    })
}

/// Renames the finished tree into place; when a concurrent builder placed it first, ours
/// is removed and theirs used (equal by construction).
fn place(temp: &Path, dest: &Path) -> Result<()> {
    match renameat2(
        AT_FDCWD,
        temp,
        AT_FDCWD,
        dest,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY) => remove_tree(temp),
        Err(e) => Err(Error::io("place snapshot", dest, e.into())),
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos));
    if t.secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.secs as u64) + nanos
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + nanos
    }
}

fn timespec(t: Timestamp) -> TimeSpec {
    TimeSpec::new(t.secs, i64::from(t.nanos))
}

/// Makes every folder, then the files and symlinks on as many threads as there are cores
/// (the files that adopt their blob first, so the entries that share their attributes find
/// them set), then folder modes and times deepest first (a read-only folder is filled
/// before it is made read-only; a folder's time is set after its entries are made).
fn fill(
    cache: &HostCache,
    m: &Manifest,
    entries: &[(PathBuf, &Node)],
    (leaves, routes): (&[&(PathBuf, &Node)], &[Option<Route>]),
    temp: &Path,
    base: Option<(&Path, &Manifest)>,
) -> Result<()> {
    let mkdir = |path: &Path| {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| Error::io("create folder", path, e))
    };
    mkdir(temp)?;
    for (path, node) in entries {
        if matches!(node.kind(), NodeKind::Dir { .. }) {
            mkdir(&temp.join(path))?;
        }
    }
    // Every blob to copy or link is checked first, each once, so a corrupt one is reported
    // the same way whichever thread meets it (by the first path that has it).
    let mut seen = HashSet::new();
    let to_check: Vec<(Digest, u64, &Path)> = leaves
        .iter()
        .zip(routes)
        .filter_map(|((path, node), route)| match (node.kind(), route) {
            (NodeKind::File { digest, size }, Some(r))
                if *r != Route::Base && seen.insert(*digest) =>
            {
                Some((*digest, *size, path.as_path()))
            }
            _ => None,
        })
        .collect();
    crate::par::each(&to_check, |(digest, size, path)| {
        from_blob::check_blob(cache, digest, *size, path)
    })?;
    let checked = Mutex::new(seen);
    let (adopting, rest): (Vec<_>, Vec<_>) = leaves
        .iter()
        .zip(routes)
        .partition(|(_, route)| **route == Some(Route::Adopt));
    for part in [adopting, rest] {
        crate::par::each(&part, |((path, node), route)| {
            leaf(
                cache,
                path,
                node,
                **route == Some(Route::Base),
                temp,
                base,
                &checked,
            )
        })?;
    }
    for (path, node) in entries
        .iter()
        .rev()
        .filter(|(_, n)| matches!(n.kind(), NodeKind::Dir { .. }))
    {
        set_attrs(&temp.join(path), node.mode(), node.mtime())?;
    }
    // The root stays private to the cache's owner; its time is the manifest's.
    set_attrs(temp, 0o700, m.root().mtime())
}

fn set_attrs(path: &Path, mode: u32, mtime: Timestamp) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set the mode of", path, e))?;
    set_mtime(path, mtime)
}

fn set_mtime(path: &Path, mtime: Timestamp) -> Result<()> {
    let t = timespec(mtime);
    utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::io("set the time of", path, e.into()))
}

/// True when `base` holds an entry equal to `node` at `path` (name, content, mode, time).
fn linkable(base: Option<(&Path, &Manifest)>, path: &Path, node: &Node) -> bool {
    base.is_some_and(|(_, bm)| bm.find(path).is_some_and(|b| b.digest() == node.digest()))
}

/// One file or symlink of the snapshot; `from_base` when the newest other snapshot holds
/// an equal entry.
fn leaf(
    cache: &HostCache,
    path: &Path,
    node: &Node,
    from_base: bool,
    temp: &Path,
    base: Option<(&Path, &Manifest)>,
    checked: &Mutex<HashSet<Digest>>,
) -> Result<()> {
    let to = temp.join(path);
    match node.kind() {
        NodeKind::Symlink { target } => {
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &to)
                .map_err(|e| Error::io("create symlink", &to, e))?;
            set_mtime(&to, node.mtime())
        }
        NodeKind::File { digest, size } => {
            // An equal entry of an older snapshot is shared: snapshots are never written.
            if let Some((dir, _)) = base
                && from_base
                && fs::hard_link(dir.join(path), &to).is_ok()
            {
                return Ok(());
            }
            // A link that failed (a full link count, say) falls back to the blob, which
            // may not have been checked yet.
            let unchecked = checked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(*digest);
            if unchecked {
                from_blob::check_blob(cache, digest, *size, path)?;
            }
            from_blob::make_file(cache, digest, node, path, &to)
        }
        NodeKind::Dir { .. } => Ok(()),
    }
}

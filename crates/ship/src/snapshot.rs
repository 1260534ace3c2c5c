//! [`Snapshot`]: an immutable tree of one manifest, materialised in the host cache, and
//! how it is built.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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

/// A materialised manifest: a tree beneath the host cache whose files have the manifest's
/// content, modes and times. It stays pinned (never evicted) while this value lives.
/// Mirror from it; never hand it to a task or write into it (its files may be hard links
/// shared with other snapshots).
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
    let needed: u64 = entries
        .iter()
        .filter_map(|(path, node)| match node.kind() {
            NodeKind::File { size, .. } if !linkable(base_ref, path, node) => Some(*size),
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
    let built = fill(cache, m, &entries, &temp, base_ref)
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

/// Makes every folder, then the files and symlinks on as many threads as there are cores,
/// then folder modes and times deepest first (a read-only folder is filled before it is
/// made read-only; a folder's time is set after its entries are made).
fn fill(
    cache: &HostCache,
    m: &Manifest,
    entries: &[(PathBuf, &Node)],
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
    let leaves: Vec<&(PathBuf, &Node)> = entries
        .iter()
        .filter(|(_, n)| !matches!(n.kind(), NodeKind::Dir { .. }))
        .collect();
    // Every blob to copy is checked first, each once, so a corrupt one is reported the
    // same way whichever thread meets it (by the first path that has it).
    let mut seen = HashSet::new();
    let to_check: Vec<(Digest, u64, &Path)> = leaves
        .iter()
        .filter_map(|(path, node)| match node.kind() {
            NodeKind::File { digest, size }
                if !linkable(base, path, node) && seen.insert(*digest) =>
            {
                Some((*digest, *size, path.as_path()))
            }
            _ => None,
        })
        .collect();
    crate::par::each(&to_check, |(digest, size, path)| {
        check_blob(cache, digest, *size, path)
    })?;
    let checked = Mutex::new(seen);
    crate::par::each(&leaves, |(path, node)| {
        leaf(cache, path, node, temp, base, &checked)
    })?;
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

/// One file or symlink of the snapshot.
fn leaf(
    cache: &HostCache,
    path: &Path,
    node: &Node,
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
                && linkable(base, path, node)
                && fs::hard_link(dir.join(path), &to).is_ok()
            {
                return Ok(());
            }
            // A link that failed (a full link count, say) falls back to a copy, whose blob
            // may not have been checked yet.
            let unchecked = checked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(*digest);
            if unchecked {
                check_blob(cache, digest, *size, path)?;
            }
            let file = copy_blob(cache, digest, path, &to)?;
            file.set_permissions(fs::Permissions::from_mode(node.mode()))
                .map_err(|e| Error::io("set the mode of", &to, e))?;
            file.set_modified(system_time(node.mtime()))
                .map_err(|e| Error::io("set the time of", &to, e))
        }
        NodeKind::Dir { .. } => Ok(()),
    }
}

fn open_blob(cache: &HostCache, digest: &Digest, shown_as: &Path) -> Result<(File, PathBuf)> {
    let blob = cache.blob_path(digest);
    match File::open(&blob) {
        Ok(f) => Ok((f, blob)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::BlobMissing {
            digest: *digest,
            shown_as: shown_as.to_path_buf(),
        }),
        Err(e) => Err(Error::io("open", &blob, e)),
    }
}

/// Hashes blob `digest`: one that no longer matches its digest is removed and reported.
fn check_blob(cache: &HostCache, digest: &Digest, size: u64, shown_as: &Path) -> Result<()> {
    let (mut from, blob) = open_blob(cache, digest, shown_as)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; (1usize << 20).min(size as usize + 1)];
    let mut len = 0u64;
    loop {
        let n = from
            .read(&mut buf)
            .map_err(|e| Error::io("read", &blob, e))?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if size >= 8 << 20 {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
    }
    if len == size && Digest::from(hasher.finalize()) == *digest {
        return Ok(());
    }
    let _ = fs::remove_file(&blob);
    Err(Error::CorruptBlob {
        digest: *digest,
        shown_as: shown_as.to_path_buf(),
        blob,
    })
}

/// Copies blob `digest` (checked already) to a new file `to`, returned open.
fn copy_blob(cache: &HostCache, digest: &Digest, shown_as: &Path, to: &Path) -> Result<File> {
    let (mut from, _) = open_blob(cache, digest, shown_as)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)
        .map_err(|e| Error::io("create", to, e))?;
    // std's copy uses copy_file_range, which file systems with reflinks turn into one.
    std::io::copy(&mut from, &mut out).map_err(|e| Error::io("copy to", to, e))?;
    Ok(out)
}

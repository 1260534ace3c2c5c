//! A snapshot's files from their blobs: a hard link to the blob when its inode has the
//! entry's mode and time, or may be given them; else a copy (same content, other mode or
//! time). A cold snapshot then writes no file twice.
//!
//! A blob's inode is given an entry's mode and time ("adopted") only while its link count
//! is 1: then no snapshot, no build in progress and no task folder refers to it, so nothing
//! sees its attributes change. Looking at the inode, adopting it and linking it happen under
//! an exclusive `flock` on the blob, so two builds (threads or processes) never give one
//! inode two sets of attributes, and a build that links because the attributes match links
//! them as it saw them. Once linked, the count stays above 1 while the snapshot (or the
//! build) lives, and the inode is never changed again. Pins say which blobs a build needs,
//! not what it decided, so they cannot answer this; the lock can.
//!
//! Only modes its owner can read are adopted: a later build hashes the blob before using it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{linkable, system_time};
use crate::cache::HostCache;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Node, NodeKind, Timestamp};

/// What a snapshot's file needs of its inode besides the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attrs {
    mode: u32,
    mtime: Timestamp,
}

impl Attrs {
    fn of_node(node: &Node) -> Attrs {
        Attrs {
            mode: node.mode(),
            mtime: node.mtime(),
        }
    }

    fn of_inode(meta: &fs::Metadata) -> Attrs {
        Attrs {
            mode: meta.mode() & 0o7777,
            mtime: Timestamp {
                secs: meta.mtime(),
                nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            },
        }
    }

    /// A blob keeps a mode its owner can read: later builds hash it.
    fn adoptable(self) -> bool {
        self.mode & 0o400 != 0
    }
}

/// How a file entry is expected to be made, as one look at its blob tells before the
/// build (a concurrent build may adopt a blob first; then its entries are copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Hard-linked from the newest other snapshot's equal entry.
    Base,
    /// Its blob is adopted (given its attributes) and linked; made before the others.
    Adopt,
    /// Its blob has (or will have, once adopted) its attributes: linked.
    Link,
    /// Copied from its blob.
    Copy,
}

/// The route of each of `leaves` (`None` for symlinks), with one `stat` per blob: equal to
/// the base's entry, from the base; else linked when the blob's inode has the entry's
/// attributes; else, for a blob with no other link, the first entry whose attributes it
/// may take adopts it and the entries with the same attributes link; the rest are copied.
pub(super) fn routes(
    cache: &HostCache,
    leaves: &[&(PathBuf, &Node)],
    base: Option<(&Path, &Manifest)>,
) -> Vec<Option<Route>> {
    // The blob's attributes and whether no other name links it; `None` when it is missing
    // (the build reports it).
    let mut looks: HashMap<Digest, Option<(Attrs, bool)>> = HashMap::new();
    let mut matched = HashSet::new();
    let wanted: Vec<Option<(Digest, Attrs)>> = leaves
        .iter()
        .map(|(path, node)| match node.kind() {
            NodeKind::File { digest, .. } if !linkable(base, path, node) => {
                let want = Attrs::of_node(node);
                let look = looks.entry(*digest).or_insert_with(|| {
                    fs::symlink_metadata(cache.blob_path(digest))
                        .ok()
                        .map(|m| (Attrs::of_inode(&m), m.nlink() == 1))
                });
                if look.is_some_and(|(has, _)| has == want) {
                    matched.insert(*digest);
                }
                Some((*digest, want))
            }
            _ => None,
        })
        .collect();
    let mut adopted: HashMap<Digest, Attrs> = HashMap::new();
    leaves
        .iter()
        .zip(wanted)
        .map(|((_, node), wanted)| {
            let NodeKind::File { .. } = node.kind() else {
                return None;
            };
            let Some((digest, want)) = wanted else {
                return Some(Route::Base);
            };
            let route = match looks.get(&digest).copied().flatten() {
                Some((has, _)) if matched.contains(&digest) => {
                    if has == want {
                        Route::Link
                    } else {
                        Route::Copy
                    }
                }
                Some((_, true)) => match adopted.get(&digest) {
                    Some(attrs) if *attrs == want => Route::Link,
                    Some(_) => Route::Copy,
                    None if want.adoptable() => {
                        adopted.insert(digest, want);
                        Route::Adopt
                    }
                    None => Route::Copy,
                },
                _ => Route::Copy,
            };
            Some(route)
        })
        .collect()
}

pub(super) fn open_blob(
    cache: &HostCache,
    digest: &Digest,
    shown_as: &Path,
) -> Result<(File, PathBuf)> {
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
///
/// Every blob is hashed before a snapshot copies or links it, as when it was only copied:
/// a blob may have been damaged since it was written and checked (a stray write by its
/// owner, a crash before its pages reached the disk, a failing disk), and the snapshot
/// would pass the damage to every task folder mirrored from it. A link would pass it on
/// just as a copy would, so linking changes nothing here.
pub(super) fn check_blob(
    cache: &HostCache,
    digest: &Digest,
    size: u64,
    shown_as: &Path,
) -> Result<()> {
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

/// Makes `to`, the file of `node`, from blob `digest` (checked already): a hard link when
/// the blob's inode has the node's mode and time, or is adopted (given them) while it has
/// no other link; else a copy. `shown_as` names the entry in errors.
pub(super) fn make_file(
    cache: &HostCache,
    digest: &Digest,
    node: &Node,
    shown_as: &Path,
    to: &Path,
) -> Result<()> {
    let (blob, blob_path) = open_blob(cache, digest, shown_as)?;
    let want = Attrs::of_node(node);
    let held = lock(blob, &blob_path)?;
    if link_or_adopt(&held, &blob_path, want, to)? {
        return Ok(());
    }
    // The copy needs only the content: other builds may decide about the inode meanwhile.
    let mut from = held
        .unlock()
        .map_err(|(_, e)| Error::io("unlock", &blob_path, e.into()))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(to)
        .map_err(|e| Error::io("create", to, e))?;
    // std's copy uses copy_file_range, which file systems with reflinks turn into one.
    std::io::copy(&mut from, &mut out).map_err(|e| Error::io("copy to", to, e))?;
    out.set_permissions(fs::Permissions::from_mode(node.mode()))
        .map_err(|e| Error::io("set the mode of", to, e))?;
    out.set_modified(system_time(node.mtime()))
        .map_err(|e| Error::io("set the time of", to, e))
}

/// Holds an exclusive `flock` on the open blob (waiting for another build's short hold).
fn lock(mut blob: File, path: &Path) -> Result<Flock<File>> {
    loop {
        match Flock::lock(blob, FlockArg::LockExclusive) {
            Ok(held) => return Ok(held),
            Err((again, Errno::EINTR)) => blob = again,
            Err((_, e)) => return Err(Error::io("lock", path, e.into())),
        }
    }
}

/// With the blob locked: links it to `to` when its inode has `want`, or adopts it first
/// when nothing else links it; true when `to` is now that inode. A link that fails (a full
/// link count, say) or that met another inode (the blob fetched again meanwhile) is
/// undone, and the caller copies.
fn link_or_adopt(blob: &File, blob_path: &Path, want: Attrs, to: &Path) -> Result<bool> {
    let meta = blob
        .metadata()
        .map_err(|e| Error::io("inspect", blob_path, e))?;
    if Attrs::of_inode(&meta) != want {
        if meta.nlink() != 1 || !want.adoptable() {
            return Ok(false);
        }
        blob.set_permissions(fs::Permissions::from_mode(want.mode))
            .map_err(|e| Error::io("set the mode of", blob_path, e))?;
        blob.set_times(FileTimes::new().set_modified(system_time(want.mtime)))
            .map_err(|e| Error::io("set the time of", blob_path, e))?;
    }
    if fs::hard_link(blob_path, to).is_err() {
        return Ok(false);
    }
    match fs::symlink_metadata(to) {
        Ok(made) if made.dev() == meta.dev() && made.ino() == meta.ino() => Ok(true),
        _ => {
            fs::remove_file(to).map_err(|e| Error::io("remove", to, e))?;
            Ok(false)
        }
    }
}

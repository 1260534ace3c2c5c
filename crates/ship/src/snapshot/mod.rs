//! [`Snapshot`]: an immutable tree of one manifest, materialised in the host cache, and
//! how it is built.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use crate::cache::{Claim, HostCache, Kind, Pin, Stamp, free_bytes, remove_tree};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Node, NodeKind, Timestamp};

mod patch;
pub(crate) use patch::Patch;

/// A materialised manifest: a tree beneath the host cache whose files have the manifest's
/// content, modes and times. It stays pinned (never evicted) while this value lives, and
/// nobody else patches it until it is [stood by](Snapshot::stand_by).
/// Mirror from it; never hand it to a task or write into it (its files are hard links to
/// the cache's blobs wherever mode and time allow, shared with other snapshots).
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
    /// Its manifest's root digest.
    root: Digest,
    pin: Pin,
    /// Taken out of the cache for this holder to patch
    /// ([`HostCache::take_for_patch`]): its tree is at `path` beneath `tmp/`, and is
    /// removed with this value unless a patch consumes it.
    taken: bool,
}

impl Snapshot {
    /// The root folder of the tree: put it in place of the mirrored root it stands for.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The snapshot of root `root`, in place in the cache (found or just placed), held by
    /// `pin`.
    pub(crate) fn found(cache: &HostCache, root: Digest, pin: Pin) -> Snapshot {
        Snapshot {
            path: cache.snapshot_path(&root),
            root,
            pin,
            taken: false,
        }
    }

    /// Done reading it for now (a task folder was filled from it): it stays pinned, so it
    /// is not evicted, but another holder may patch it into a newer snapshot. Before
    /// reading it again, [`HostCache::resume`] it.
    pub fn stand_by(&self) {
        self.pin.stand_by();
    }

    /// Whether it was taken out of the cache to be patched (no longer mirror from it).
    pub(crate) fn is_taken(&self) -> bool {
        self.taken
    }

    /// Notes it taken out of the cache, its tree now at `to`.
    pub(crate) fn taken_to(&mut self, to: PathBuf) {
        self.path = to;
        self.taken = true;
    }

    pub(crate) fn root(&self) -> &Digest {
        &self.root
    }

    pub(crate) fn pin(&self) -> &Pin {
        &self.pin
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // A tree taken out to be patched and then not patched (the fetch failed) is
        // nobody's: its files may even hold a blob that was being patched in place.
        if self.taken {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Builds (or finds) the snapshot of `m`; true when it was built (the cache grew). With
/// `previous` (a snapshot this caller holds and its manifest), a snapshot nobody else holds
/// is patched into the new one in place, at the cost of what changed. `pinned` is a pin of
/// `m`'s root and blobs taken earlier (by `missing`), used instead of taking one.
pub(crate) fn build(
    cache: &HostCache,
    m: &Manifest,
    previous: Option<(Snapshot, &Manifest)>,
    pinned: Option<Pin>,
) -> Result<(Snapshot, bool)> {
    let root = m.root_digest();
    let dest = cache.snapshot_path(&root);
    let blobs = m.blobs();
    let (pin, present) = match pinned {
        // Pinned since before: eviction, which respects pins, cannot have removed it
        // since, so a look now is as good as one under the index's lock.
        Some(pin) => (pin, dest.is_dir()),
        None => cache.pin(&root, blobs.iter().map(|b| b.0), true)?,
    };
    let used: Vec<_> = std::iter::once((Kind::Snapshot, root, m.total_bytes()))
        .chain(blobs.into_iter().map(|(d, size, _)| (Kind::Blob, d, size)))
        .collect();
    // Found: its blobs count as used too, since evicting them first would cost a full
    // fetch as soon as the snapshot goes, while the snapshot alone spares nothing.
    let found = |pin: Pin| -> Result<(Snapshot, bool)> {
        cache.index().touch(&used)?;
        Ok((Snapshot::found(cache, root, pin), false))
    };
    if present {
        return found(pin);
    }
    // One build per snapshot per host: the others wait for it and use what it placed (or
    // build it themselves when it failed).
    let _building = loop {
        let claim_path = cache.build_claim_path(&root);
        if let Some(claim) = Claim::try_take(&claim_path)? {
            break claim;
        }
        Claim::wait(&claim_path)?;
        if dest.is_dir() {
            return found(pin);
        }
    };
    // Placed by a builder that finished between the look above and the claim.
    if dest.is_dir() {
        return found(pin);
    }
    let temp = cache
        .sub("tmp")
        .join(format!("snap.{root}.{}", pin.unique()));
    let patched = match previous {
        Some((old, old_m)) => try_patch(cache, m, (old, old_m), &pin, &temp)?,
        None => false,
    };
    if !patched {
        let entries = m.entries();
        let sources = check_blobs(cache, &entries)?;
        check_space(cache, &entries, &sources)?;
        let built =
            fill(cache, m, &entries, &temp, &sources).and_then(|()| finish(cache, m, &pin, &temp));
        if built.is_err() {
            let _ = remove_tree(&temp);
        }
        built?;
    }
    cache.index().touch(&used)?;
    Ok((Snapshot::found(cache, root, pin), true))
}

/// Patches `old` (with its manifest) into the snapshot of `m`, built at `temp` and placed,
/// when nobody else holds it; true when done. False, with nothing changed, when another
/// holds it; false too when the old tree was not as its manifest says (changed behind the
/// cache's back: the caller builds afresh, the old tree is gone). A missing or damaged blob
/// and a full disk are errors, for the caller to fetch and try again.
fn try_patch(
    cache: &HostCache,
    m: &Manifest,
    (mut old, old_m): (Snapshot, &Manifest),
    pin: &Pin,
    temp: &Path,
) -> Result<bool> {
    if old.root != old_m.root_digest() {
        return Ok(false);
    }
    if old.taken {
        // Taken out earlier (to patch its blobs in place during the fetch); moved to the
        // name this build's pin keeps, should that be another.
        if old.path != temp {
            fs::rename(&old.path, temp).map_err(|e| Error::io("move", &old.path, e))?;
        }
    } else if !cache.take_over(&old.root, old.pin.unique(), temp)? {
        return Ok(false);
    }
    // The tree is this build's now, under a name its pin keeps.
    old.taken = false;
    drop(old);
    let Err(e) = patch(cache, m, old_m, temp).and_then(|()| finish(cache, m, pin, temp)) else {
        return Ok(true);
    };
    let _ = remove_tree(temp);
    match e {
        Error::BlobMissing { .. } | Error::CorruptBlob { .. } | Error::NoSpace { .. } => Err(e),
        _ => {
            tracing::warn!(
                "cannot patch snapshot {} into {}, building it afresh: {e}",
                old_m.root_digest(),
                m.root_digest()
            );
            Ok(false)
        }
    }
}

/// Refuses a build whose copies (files that cannot be links to their blobs) do not fit.
fn check_space(
    cache: &HostCache,
    entries: &[(PathBuf, &Node)],
    sources: &HashMap<Digest, BlobSource>,
) -> Result<()> {
    let needed: u64 = entries
        .iter()
        .filter_map(|(_, node)| match node.kind() {
            NodeKind::File { digest, size } if !sources[digest].linkable(node) => Some(*size),
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
    Ok(())
}

/// Patches the tree at `temp`, the snapshot of `old`, into the snapshot of `m`.
fn patch(cache: &HostCache, m: &Manifest, old: &Manifest, temp: &Path) -> Result<()> {
    let patch = Patch::between(old, m);
    let sources = check_blobs(cache, &patch.make)?;
    check_space(cache, &patch.make, &sources)?;
    let linked = patch.apply(cache, temp, m.root(), &sources)?;
    note_links(cache, temp, linked.iter().map(|(p, d)| (p.as_path(), d)));
    Ok(())
}

/// Keeps the manifest beside the finished tree and renames the tree into place.
fn finish(cache: &HostCache, m: &Manifest, pin: &Pin, temp: &Path) -> Result<()> {
    keep_manifest(cache, m, pin.unique())?;
    place(temp, &cache.snapshot_path(&m.root_digest()))
}

/// Each link moved its blob's change time: recorded as this process's own doing, so the
/// next snapshot of this process does not hash the blob again.
fn note_links<'a>(
    cache: &HostCache,
    temp: &Path,
    linked: impl Iterator<Item = (&'a Path, &'a Digest)>,
) {
    let mut seen = HashSet::new();
    for (path, digest) in linked {
        if seen.insert(*digest)
            && let Ok(meta) = fs::symlink_metadata(temp.join(path))
        {
            cache.verified().relinked(digest, &meta);
        }
    }
}

/// A blob as a snapshot build found it: checked, with the mode and time of its file.
pub(super) struct BlobSource {
    mode: u32,
    mtime: Timestamp,
}

impl BlobSource {
    /// True when the file of `node` can be a hard link to this blob: same mode and time.
    fn linkable(&self, node: &Node) -> bool {
        self.mode == node.mode() && self.mtime == node.mtime()
    }
}

/// Every blob of `entries`, once each: hashed unless this process found it intact as it is
/// now (a blob damaged since is removed with the snapshots sharing its file, and reported),
/// with the mode and time of its file. Links and copies both come from checked blobs.
fn check_blobs(
    cache: &HostCache,
    entries: &[(PathBuf, &Node)],
) -> Result<HashMap<Digest, BlobSource>> {
    let mut seen = HashSet::new();
    let blobs: Vec<(Digest, u64, &Path)> = entries
        .iter()
        .filter_map(|(path, node)| match node.kind() {
            NodeKind::File { digest, size } if seen.insert(*digest) => {
                Some((*digest, *size, path.as_path()))
            }
            _ => None,
        })
        .collect();
    // Checked in path order, so a corrupt blob is reported by the same path whichever
    // thread meets it.
    let sources = crate::par::each(&blobs, |(digest, size, path)| {
        check_blob(cache, digest, *size, path)
    })?;
    Ok(blobs.iter().map(|b| b.0).zip(sources).collect())
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

pub(crate) fn system_time(t: Timestamp) -> SystemTime {
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
    sources: &HashMap<Digest, BlobSource>,
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
    let linked = crate::par::each(&leaves, |(path, node)| {
        leaf(cache, path, node, temp, sources)
    })?;
    note_links(
        cache,
        temp,
        leaves
            .iter()
            .zip(linked)
            .filter_map(|((path, node), linked)| match node.kind() {
                NodeKind::File { digest, .. } if linked => Some((path.as_path(), digest)),
                _ => None,
            }),
    );
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

pub(super) fn set_attrs(path: &Path, mode: u32, mtime: Timestamp) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set the mode of", path, e))?;
    set_mtime(path, mtime)
}

fn set_mtime(path: &Path, mtime: Timestamp) -> Result<()> {
    let t = timespec(mtime);
    utimensat(AT_FDCWD, path, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::io("set the time of", path, e.into()))
}

/// One file or symlink of the snapshot; true when it is a hard link to its blob.
pub(super) fn leaf(
    cache: &HostCache,
    path: &Path,
    node: &Node,
    temp: &Path,
    sources: &HashMap<Digest, BlobSource>,
) -> Result<bool> {
    let to = temp.join(path);
    match node.kind() {
        NodeKind::Symlink { target } => {
            use std::os::unix::ffi::OsStrExt;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &to)
                .map_err(|e| Error::io("create symlink", &to, e))?;
            set_mtime(&to, node.mtime())?;
            Ok(false)
        }
        NodeKind::File { digest, .. } => {
            // Snapshots and blobs are never written, so they may share a file. A link that
            // fails (a full link count, say) falls back to a copy.
            if sources[digest].linkable(node) && fs::hard_link(cache.blob_path(digest), &to).is_ok()
            {
                return Ok(true);
            }
            let file = copy_blob(cache, digest, path, &to)?;
            file.set_permissions(fs::Permissions::from_mode(node.mode()))
                .map_err(|e| Error::io("set the mode of", &to, e))?;
            file.set_modified(system_time(node.mtime()))
                .map_err(|e| Error::io("set the time of", &to, e))?;
            Ok(false)
        }
        NodeKind::Dir { .. } => Ok(false),
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

/// Checks blob `digest`: hashed unless this process found it intact as its file is now.
/// One that no longer matches its digest is removed, with every snapshot sharing its file,
/// and reported.
fn check_blob(
    cache: &HostCache,
    digest: &Digest,
    size: u64,
    shown_as: &Path,
) -> Result<BlobSource> {
    let (mut from, blob) = open_blob(cache, digest, shown_as)?;
    let meta = from.metadata().map_err(|e| Error::io("read", &blob, e))?;
    let source = BlobSource {
        mode: meta.mode() & 0o7777,
        mtime: Timestamp {
            secs: meta.mtime(),
            nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        },
    };
    let stamp = Stamp::of(&meta);
    if cache.verified().is_intact(digest, &stamp) {
        return Ok(source);
    }
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
        // One thread per blob (`check_blobs` spreads them over the cores): splitting each
        // chunk over threads as well is slower.
        hasher.update(&buf[..n]);
    }
    if len == size && Digest::from(hasher.finalize()) == *digest {
        cache.verified().record(*digest, stamp);
        return Ok(source);
    }
    cache.verified().forget(digest);
    let _ = fs::remove_file(&blob);
    if meta.nlink() > 1 {
        drop_snapshots_sharing(cache, digest, &meta);
    }
    Err(Error::CorruptBlob {
        digest: *digest,
        shown_as: shown_as.to_path_buf(),
        blob,
    })
}

/// Removes every snapshot that has `blob` (a damaged blob's file) as one of its files: they
/// are damaged with it. A task holding one finds it gone and builds a new one. Best effort:
/// what cannot be read or removed is logged, and the eviction pass drops it later.
fn drop_snapshots_sharing(cache: &HostCache, digest: &Digest, blob: &fs::Metadata) {
    let snapshots = cache.sub("snapshots");
    let Ok(listing) = fs::read_dir(&snapshots) else {
        return;
    };
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(root) = name.strip_suffix(".manifest").and_then(Digest::from_hex) else {
            continue;
        };
        let Some(manifest) = crate::cache::read_manifest(&entry.path()) else {
            continue;
        };
        let dir = cache.snapshot_path(&root);
        let shares = manifest.entries().iter().any(|(path, node)| {
            matches!(node.kind(), NodeKind::File { digest: d, .. } if d == digest)
                && fs::symlink_metadata(dir.join(path))
                    .is_ok_and(|m| m.dev() == blob.dev() && m.ino() == blob.ino())
        });
        if shares {
            tracing::warn!(
                "removing snapshot `{}` of the host cache: it shares the damaged blob {digest}",
                dir.display()
            );
            if let Err(e) = crate::cache::trash_snapshot(cache, &root) {
                tracing::warn!("{e}");
            }
        }
    }
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

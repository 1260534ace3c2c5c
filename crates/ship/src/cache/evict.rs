//! Keeping the cache within its limits, least recently used first, and removing what
//! killed processes left (claim files nobody holds, builds whose pin is gone).
//! Runs with the index held exclusive, so no pin is taken meanwhile (see `HostCache::pin`).

use std::fs;
use std::path::Path;

use super::claim::Claim;
use super::index::{Kind, Use};
use super::pin;
use super::{HostCache, remove_tree, unique_suffix};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// Applies the limits; `reconcile` also enters blobs and snapshots the index does not know
/// (a crash between placing one and recording it), as the least recently used.
///
/// Without `reconcile` or a compaction due, when this process's tally of the index (see
/// `index`) shows the cache within its limits, the pass reads only the journal lines
/// appended since its last look and removes only what killed processes left: a snapshot
/// built in a large cache costs what it added, not a read of the whole index and of every
/// pin.
pub(crate) fn enforce(cache: &HostCache, reconcile: bool) -> Result<()> {
    let held = cache.index().exclusive()?;
    let limits = cache.limits();
    // A journal past the length at which the cache compacts it gets the full pass, which
    // rewrites it.
    let compaction_due =
        cache.index().journal_len() > cache.compact_at.load(std::sync::atomic::Ordering::Relaxed);
    if !reconcile
        && !compaction_due
        && let Some(bound) = held.bound()
        && bound.bytes <= limits.max_bytes
        && bound.count <= limits.max_count
    {
        let pinned = pin::live(&cache.sub("pins"), false)?;
        return clean_tmp(cache, &pinned.uniques);
    }
    let pinned = pin::live(&cache.sub("pins"), true)?;
    clean_tmp(cache, &pinned.uniques)?;
    let (mut entries, lines) = held.read()?;
    if reconcile {
        clean_claims(cache)?;
        // Reading marks of processes that are gone.
        pin::live(&cache.sub("reading"), false)?;
        for (key, bytes) in on_disk(cache, &pinned)? {
            entries.entry(key).or_insert(Use { bytes, last: 0 });
        }
    }
    let path_of = |kind: Kind, digest: &Digest| match kind {
        Kind::Blob => cache.blob_path(digest),
        Kind::Snapshot => cache.snapshot_path(digest),
    };
    // Entries whose file went (a corrupt blob removed, say) are dropped; looked for only
    // when it matters (over a limit) or when reconciling, so a pass within the limits
    // costs no `stat` per entry.
    let total: u64 = entries.values().map(|u| u.bytes).sum();
    if reconcile || total > limits.max_bytes || entries.len() as u64 > limits.max_count {
        entries.retain(|(kind, digest), _| fs::symlink_metadata(path_of(*kind, digest)).is_ok());
    }
    let mut sorted: Vec<_> = entries.into_iter().collect();
    sorted.sort_by_key(|(key, used)| (used.last, *key));
    let mut bytes: u64 = sorted.iter().map(|(_, u)| u.bytes).sum();
    let mut count = sorted.len() as u64;
    let mut kept = Vec::with_capacity(sorted.len());
    let mut removed = false;
    for ((kind, digest), used) in sorted {
        let over = bytes > limits.max_bytes || count > limits.max_count;
        let pinned_now = match kind {
            Kind::Blob => pinned.blobs.contains(&digest),
            Kind::Snapshot => pinned.roots.contains(&digest),
        };
        if !over || pinned_now {
            kept.push(((kind, digest), used));
            continue;
        }
        match kind {
            Kind::Blob => remove_tree(&cache.blob_path(&digest))?,
            Kind::Snapshot => trash_snapshot(cache, &digest)?,
        }
        tracing::debug!(
            "evicted {kind:?} {digest} ({} bytes) from the host cache",
            used.bytes
        );
        bytes = bytes.saturating_sub(used.bytes);
        count -= 1;
        removed = true;
    }
    // Rewrite when something went, or when the journal holds mostly repeats.
    if removed || reconcile || lines > 2 * kept.len() + 64 {
        held.rewrite(&kept)?;
    }
    held.remember(bytes, count);
    if reconcile {
        cache.note_reconciled()?;
    }
    Ok(())
}

/// Removes temporary entries nobody works on any more.
fn clean_tmp(cache: &HostCache, live_builds: &std::collections::HashSet<String>) -> Result<()> {
    let tmp = cache.sub("tmp");
    for entry in fs::read_dir(&tmp).map_err(|e| Error::io("list", &tmp, e))? {
        let entry = entry.map_err(|e| Error::io("list", &tmp, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let mut parts = name.splitn(3, '.');
        match (
            parts.next(),
            parts.next().and_then(Digest::from_hex),
            parts.next(),
        ) {
            // A blob being written: abandoned when its claim is free.
            (Some("blob"), Some(digest), Some(_)) => {
                if let Some(_claim) = Claim::try_take(&cache.claim_path(&digest))? {
                    remove_tree(&path)?;
                }
            }
            // A snapshot or its manifest being built: abandoned when its pin is gone.
            (Some("snap" | "snapm"), Some(_), Some(unique)) if !live_builds.contains(unique) => {
                remove_tree(&path)?
            }
            (Some("snap" | "snapm"), _, _) => {}
            // A pin not placed yet: abandoned when the process making it is gone (it is
            // locked only after it is made, so a lock says nothing yet).
            (Some("pin"), _, _) => {
                let maker = name
                    .split('.')
                    .nth(2)
                    .and_then(|pid| pid.parse::<i32>().ok());
                let gone = maker.is_some_and(|pid| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                        == Err(nix::errno::Errno::ESRCH)
                });
                if gone {
                    remove_tree(&path)?;
                }
            }
            // Trash, and anything else: only ever made here, under the exclusive index.
            _ => remove_tree(&path)?,
        }
    }
    Ok(())
}

/// Removes snapshot `root` and its manifest: moved out of place at once (nobody finds it
/// any more), then removed.
pub(crate) fn trash_snapshot(cache: &HostCache, root: &Digest) -> Result<()> {
    let trash = cache.sub("tmp").join(format!("trash.{}", unique_suffix()));
    let from = cache.snapshot_path(root);
    match fs::rename(&from, &trash) {
        Ok(()) => remove_tree(&trash)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("move to trash", &from, e)),
    }
    remove_tree(&cache.manifest_path(root))
}

/// Removes claim files nobody holds (what fetchers killed mid-write left), in `claims/`
/// (snapshot builds) and in its fan-out folders (blobs).
fn clean_claims(cache: &HostCache) -> Result<()> {
    fn clean(folder: &Path, fans_too: bool) -> Result<()> {
        for entry in fs::read_dir(folder).map_err(|e| Error::io("list", folder, e))? {
            let entry = entry.map_err(|e| Error::io("list", folder, e))?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            match (is_dir, fans_too) {
                (true, true) => clean(&entry.path(), false)?,
                (true, false) => {}
                (false, _) => {
                    Claim::clear_if_free(&entry.path())?;
                }
            }
        }
        Ok(())
    }
    clean(&cache.sub("claims"), true)
}

/// Every blob and snapshot on disk, with its size; manifests left without their snapshot
/// are removed on the way.
fn on_disk(cache: &HostCache, pinned: &pin::Pinned) -> Result<Vec<((Kind, Digest), u64)>> {
    let mut out = Vec::new();
    let blobs = cache.sub("blobs");
    for fan in fs::read_dir(&blobs).map_err(|e| Error::io("list", &blobs, e))? {
        let fan = fan.map_err(|e| Error::io("list", &blobs, e))?.path();
        let Ok(listing) = fs::read_dir(&fan) else {
            continue;
        };
        for blob in listing.flatten() {
            if let (Some(digest), Ok(meta)) = (
                Digest::from_hex(&blob.file_name().to_string_lossy()),
                blob.metadata(),
            ) {
                out.push(((Kind::Blob, digest), meta.len()));
            }
        }
    }
    let snaps = cache.sub("snapshots");
    for entry in fs::read_dir(&snaps).map_err(|e| Error::io("list", &snaps, e))? {
        let entry = entry.map_err(|e| Error::io("list", &snaps, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A manifest whose snapshot never got into place (its builder died in between;
        // a live builder holds a pin).
        if let Some(digest) = name.strip_suffix(".manifest").and_then(Digest::from_hex)
            && !pinned.roots.contains(&digest)
            && !cache.snapshot_path(&digest).exists()
        {
            remove_tree(&entry.path())?;
        }
        if let Some(digest) = Digest::from_hex(&name) {
            let bytes = read_manifest(&cache.manifest_path(&digest)).map_or(0, |m| m.total_bytes());
            out.push(((Kind::Snapshot, digest), bytes));
        }
    }
    Ok(out)
}

/// The manifest kept beside a snapshot, if it is there and valid.
pub(crate) fn read_manifest(path: &Path) -> Option<Manifest> {
    Manifest::decode(&fs::read(path).ok()?).ok()
}

//! [`HostCache`]: the per-host, content-addressed cache of blobs and snapshots.
//!
//! ```text
//! <user dir>/cache/                 0700, owned by the user, not a symlink (verified)
//!     blobs/<2 hex>/<64 hex>        one file per blob, never written once placed
//!     claims/<1 hex>/<64 hex>       flock'ed by the one thread or process fetching that blob,
//!                                   which writes the blob into it, then renames it into blobs/
//!                                   (16 folders, so that threads make claims side by side)
//!     claims/<64 hex>.snapshot      flock'ed by the one thread or process building that snapshot
//!     pins/<64 hex>.<unique>        flock'ed (shared) by a live Snapshot or a build: what it needs
//!     snapshots/<64 hex>/           one immutable tree per manifest root digest
//!     snapshots/<64 hex>.manifest   its manifest, to hard-link equal entries into the next one
//!     tmp/                          blobs being written, snapshots being built, trash
//!     index, index.lock             the LRU journal and its lock
//! ```

mod blob;
mod claim;
mod dirs;
mod evict;
mod index;
mod pin;
mod usage;
mod verified;
mod writeback;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub use blob::BlobWriter;
pub(crate) use claim::Claim;
pub(crate) use dirs::{private_dir, remove_tree, unique_suffix, verify_private};
pub(crate) use evict::{read_manifest, trash_snapshot};
pub(crate) use index::{Index, Kind};
pub(crate) use pin::Pin;
pub use usage::CacheUsage;
pub(crate) use verified::{Stamp, Verified};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Node, NodeKind};
use crate::pieces::Pieces;
use crate::snapshot::Snapshot;

/// How large a host cache may grow; the least recently used blobs and snapshots go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most bytes the blobs and snapshots may take (a snapshot counts its manifest's bytes).
    pub max_bytes: u64,
    /// Most entries (blobs and snapshots) the cache may hold.
    pub max_count: u64,
}

impl CacheLimits {
    /// The count limit when none is given.
    pub const DEFAULT_COUNT: u64 = 1_000_000;

    /// 10% of the free space of the file system holding `dir`, and
    /// [`DEFAULT_COUNT`](Self::DEFAULT_COUNT) entries.
    ///
    /// # Errors
    /// [`Error::Io`] when the file system cannot be asked (`statvfs`).
    pub fn default_for(dir: &Path) -> Result<CacheLimits> {
        Ok(CacheLimits {
            max_bytes: free_bytes(dir)? / 10,
            max_count: CacheLimits::DEFAULT_COUNT,
        })
    }

    /// The limits of a cache beneath `dir` as `PARVM_CACHE_MAX` gives them (`given`:
    /// bytes, and files when it names a count), else [`default_for`](Self::default_for).
    ///
    /// # Errors
    /// As [`default_for`](Self::default_for), when nothing is given.
    pub fn given_or_default(given: Option<(u64, Option<u64>)>, dir: &Path) -> Result<CacheLimits> {
        match given {
            Some((max_bytes, count)) => Ok(CacheLimits {
                max_bytes,
                max_count: count.unwrap_or(CacheLimits::DEFAULT_COUNT),
            }),
            None => CacheLimits::default_for(dir),
        }
    }
}

/// Bytes an unprivileged user may still write on the file system holding `dir`.
#[allow(clippy::unnecessary_cast)] // The field types differ between targets.
pub(crate) fn free_bytes(dir: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| Error::io("ask the free space of", dir, e.into()))?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// What [`HostCache::begin`] found.
// A `Begin` is made once per blob fetched and matched at once: boxing its writer would
// cost an allocation and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Begin {
    /// The blob is in the cache already.
    Present,
    /// This caller claimed the blob: write it through the writer.
    Mine(BlobWriter),
    /// Another thread or process of this host is fetching it: [`HostCache::wait`], then
    /// [`HostCache::begin`] again.
    Busy,
}

/// Worker side: `<user dir>/cache/`, shared by every worker process of the host (file
/// locks). Blobs by digest in fan-out subfolders, an LRU index that survives restarts,
/// bounded by [`CacheLimits`] (enforced when the cache is opened and after each snapshot is
/// built, so it may exceed them by what one manifest fetches meanwhile); eviction never
/// touches what a live [`Snapshot`] or a snapshot being built uses, nor the blobs of a
/// manifest passed to [`missing`](HostCache::missing) until its snapshot is made.
///
/// ```
/// use parvm_ship::{Begin, CacheLimits, HostCache, Scanner};
/// use std::io::Read;
///
/// // Spawner: describe the inputs.
/// let shared = tempfile::tempdir()?;
/// std::fs::write(shared.path().join("top.cir"), "netlist")?;
/// let mut scanner = Scanner::new(vec![shared.path().to_path_buf()], 0, vec![b"top.cir".to_vec()]);
/// let manifest = scanner.manifest()?;
///
/// // Worker: fetch what the host lacks, then materialise.
/// use std::os::unix::fs::DirBuilderExt;
/// let local = tempfile::tempdir()?;
/// let user_dir = local.path().join("parvm-me"); // made and checked by parvm-local-storage
/// std::fs::DirBuilder::new().mode(0o700).create(&user_dir)?;
/// let cache = HostCache::open(&user_dir, CacheLimits { max_bytes: 1 << 30, max_count: 1000 })?;
/// for (digest, size, shown_as) in cache.missing(&manifest) {
///     if let Begin::Mine(mut writer) = cache.begin(digest, size, &shown_as)? {
///         // The blob takes its file's mode and time, so the snapshot links rather than copies.
///         if let Some(node) = manifest.find(&shown_as) {
///             writer.keep_attrs(node.mode(), node.mtime());
///         }
///         let mut source = scanner.open_blob(&digest)?; // over the transport, in chunks
///         let mut bytes = Vec::new();
///         source.file.read_to_end(&mut bytes)?;
///         source.unchanged()?;
///         writer.write(&bytes)?;
///         writer.finish()?;
///     }
/// }
/// let snapshot = cache.snapshot(&manifest)?;
/// assert_eq!(std::fs::read_to_string(snapshot.path().join("top.cir"))?, "netlist");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct HostCache {
    dir: PathBuf,
    limits: CacheLimits,
    index: Index,
    /// Pins taken by `missing`, kept until the manifest's snapshot is made.
    waiting: Mutex<HashMap<Digest, Pin>>,
    /// Fan-out folders (first digest byte) made and checked by this handle.
    fans: Mutex<HashSet<u8>>,
    /// Journal length past which a warm snapshot (which only appends to the index) runs
    /// the eviction pass too, to compact it.
    compact_at: AtomicU64,
    /// Blobs this process hashed (on arrival or before linking them into a snapshot).
    verified: Arc<Verified>,
    /// Whether a finished blob starts its write-back at once (`writeback.rs`).
    start_writeback: bool,
}

/// The folders of `claims/` that blob claims are spread over: one per first hex digit of
/// the digest ([`HostCache::claim_path`]).
const CLAIM_FANS: [&str; 16] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f",
];

/// The fewest blobs a thread of [`HostCache::begin_each`] or
/// [`BlobWriter::finish_each`] takes: claiming or placing a blob is a few system calls,
/// and where the file system makes files quickly a few blobs cost less than starting a
/// thread (tens of microseconds); on many cores this keeps a batch to a few threads.
pub(crate) const SMALL_JOBS_PER_THREAD: usize = 16;

/// The most snapshots [`HostCache::older_snapshot_for`] reads the manifests of.
const OLDER_LOOKED_AT: usize = 16;
/// The most bytes of manifests [`HostCache::older_snapshot_for`] reads: a cache of huge
/// unrelated trees costs a new run at most this much reading.
const OLDER_BYTES_READ: u64 = 32 << 20;

/// The largest share of a manifest's files a patch of an older snapshot may make or
/// remove for [`HostCache::older_snapshot_for`] to offer it: patching costs a link per
/// change (and reading the older manifest), building afresh a link per file.
const PATCH_AT_MOST: f64 = 0.5;

/// How often an opening of the cache reconciles the index with every blob and snapshot on
/// disk (entering those a process killed between placing and recording them left
/// unindexed): it lists and `stat`s the whole cache (12 ms for 2 000 blobs on tmpfs, and
/// every worker of every run opens it), while what it finds is rare and harmless
/// meanwhile (a claim file a killed fetcher left is taken over by the next fetcher).
pub const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);
/// The file whose modification time is the last reconciling pass's end.
const RECONCILED: &str = "reconciled";

/// The journal is compacted when it grows past this, or past three times its length
/// after the last compaction, whichever is more.
const COMPACT_AT_LEAST: u64 = 8 << 20;

impl HostCache {
    /// Opens (creating it 0700 when missing) the cache beneath `user_dir`, the per-user
    /// folder (`<local root>/parvm-<user>`, which must exist, be this user's, not a
    /// symlink and closed to others), removes what killed processes left, and applies the
    /// limits. Once every [`RECONCILE_EVERY`] the opening also reconciles the index with
    /// every blob and snapshot on disk; in between an opening reads only the index.
    ///
    /// # Errors
    /// [`Error::UnsafeFolder`] when the per-user or cache folder is a symlink, owned by
    /// another user or open to others; [`Error::Io`] when it cannot be made or read.
    pub fn open(user_dir: &Path, limits: CacheLimits) -> Result<HostCache> {
        let cache = HostCache::open_only(user_dir, limits)?;
        cache.enforce(cache.reconcile_due())?;
        Ok(cache)
    }

    /// Whether the last reconciling pass (see [`open`](HostCache::open)) is
    /// [`RECONCILE_EVERY`] old or more, or unknown.
    fn reconcile_due(&self) -> bool {
        fs::metadata(self.dir.join(RECONCILED))
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_none_or(|age| age >= RECONCILE_EVERY)
    }

    /// Notes that a reconciling pass ended now.
    pub(crate) fn note_reconciled(&self) -> Result<()> {
        let stamp = self.dir.join(RECONCILED);
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&stamp)
            .and_then(|file| file.set_modified(std::time::SystemTime::now()))
            .map_err(|e| Error::io("write", &stamp, e))
    }

    /// The folders made and checked, the limits not applied yet.
    fn open_only(user_dir: &Path, limits: CacheLimits) -> Result<HostCache> {
        dirs::verify_private(user_dir)?;
        let dir = user_dir.join("cache");
        dirs::private_dir(&dir)?;
        for sub in ["blobs", "claims", "pins", "reading", "snapshots", "tmp"] {
            dirs::private_dir(&dir.join(sub))?;
        }
        for fan in CLAIM_FANS {
            dirs::private_dir(&dir.join("claims").join(fan))?;
        }
        let cache = HostCache {
            index: Index::new(&dir),
            start_writeback: writeback::wanted(&dir),
            dir,
            limits,
            waiting: Mutex::new(HashMap::new()),
            fans: Mutex::new(HashSet::new()),
            compact_at: AtomicU64::new(0),
            verified: Arc::default(),
        };
        Ok(cache)
    }

    /// Empties the host cache beneath `user_dir` of everything no live snapshot, build or
    /// fetch of any process uses (one eviction pass with limits of zero, which also removes
    /// what killed processes left), read-only snapshot folders included, and of the hashes
    /// a spawner kept for its next run ([`Scanner::keep_hashes_under`](crate::Scanner::keep_hashes_under)). Makes nothing where
    /// there is no cache. Gives what it held before and what it holds after.
    ///
    /// # Errors
    /// As [`open`](HostCache::open), and [`Error::Io`] when the cache cannot be measured.
    pub fn clear(user_dir: &Path) -> Result<(CacheUsage, CacheUsage)> {
        let dir = user_dir.join("cache");
        let before = CacheUsage::of(&dir)?;
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok((before, before));
        }
        let nothing = CacheLimits {
            max_bytes: 0,
            max_count: 0,
        };
        HostCache::open_only(user_dir, nothing)?.enforce(true)?;
        // A spawner's hashes kept for its next run go too: the next run hashes again.
        remove_tree(&dir.join(crate::scan::STORE_FOLDER))?;
        Ok((before, CacheUsage::of(&dir)?))
    }

    /// The cache folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The limits it keeps to.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    pub(crate) fn sub(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    pub(crate) fn verified(&self) -> &Verified {
        &self.verified
    }

    /// Where blob `digest` lives.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_string();
        self.dir.join("blobs").join(&hex[..2]).join(hex)
    }

    /// Where the claim of blob `digest` is: in one of [`CLAIM_FANS`] folders (by the
    /// digest's first hex digit), made when the cache is opened, since making files in
    /// one folder is serialised by its lock and [`begin_each`](HostCache::begin_each)
    /// makes claims on several threads.
    pub(crate) fn claim_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_string();
        self.dir.join("claims").join(&hex[..1]).join(hex)
    }

    /// The claim of the one build of snapshot `root` on this host.
    pub(crate) fn build_claim_path(&self, root: &Digest) -> PathBuf {
        self.dir.join("claims").join(format!("{root}.snapshot"))
    }

    pub(crate) fn snapshot_path(&self, root: &Digest) -> PathBuf {
        self.dir.join("snapshots").join(root.to_string())
    }

    /// Where the manifest of snapshot `root` is kept beside it.
    pub(crate) fn manifest_path(&self, root: &Digest) -> PathBuf {
        self.dir.join("snapshots").join(format!("{root}.manifest"))
    }

    /// Pins snapshot `root` and `blobs` while the index is held shared, marked as read
    /// when `reading` (see [`pin`]), then tells whether the snapshot is there: eviction and
    /// a patch, which hold the index exclusive, either saw the pin or had removed or moved
    /// the snapshot already.
    pub(crate) fn pin(
        &self,
        root: &Digest,
        blobs: impl Iterator<Item = Digest>,
        reading: bool,
    ) -> Result<(Pin, bool)> {
        let _shared = self.index.shared()?;
        let marks = self.sub("reading");
        let pin = Pin::take(
            &self.sub("pins"),
            &self.sub("tmp"),
            root,
            blobs,
            reading.then_some(marks.as_path()),
        )?;
        let present = self.snapshot_path(root).is_dir();
        Ok((pin, present))
    }

    /// Makes a snapshot kept between tasks ([`Snapshot::stand_by`]) ready to be read again:
    /// false when it is gone (another holder patched it into a newer one, or it shared a
    /// damaged blob); build it again then.
    ///
    /// # Errors
    /// [`Error::Io`] when the index cannot be locked or the mark cannot be made.
    pub fn resume(&self, snapshot: &Snapshot) -> Result<bool> {
        let _shared = self.index.shared()?;
        if snapshot.is_taken() || !snapshot.path().is_dir() {
            return Ok(false);
        }
        snapshot
            .pin()
            .mark_reading(&self.sub("reading"), &self.sub("tmp"), snapshot.root())?;
        Ok(true)
    }

    /// Blobs of `m` this host lacks (digest, size, a path for messages), each once; none
    /// when its snapshot is here already. Until [`snapshot`](HostCache::snapshot) of `m`
    /// (or until this cache is dropped) the blobs of `m` are kept from eviction, so what is
    /// fetched meanwhile stays.
    ///
    /// A failure to pin (the cache folder became unusable) is logged and every blob the
    /// cache lacks is listed anyway; [`snapshot`](HostCache::snapshot) reports the error.
    pub fn missing(&self, m: &Manifest) -> Vec<(Digest, u64, PathBuf)> {
        let blobs = m.blobs();
        if self.pin_until_snapshot(&m.root_digest(), blobs.iter().map(|b| b.0)) {
            return Vec::new();
        }
        self.absent(blobs)
    }

    /// [`missing`](HostCache::missing) for a caller that holds the [`Snapshot`] of `held`,
    /// an earlier manifest (of the same root, typically): a live snapshot keeps its blobs
    /// from eviction, so only the blobs of files that changed since `held` are looked for
    /// (one `stat` per change instead of one per file). Call it before letting that
    /// snapshot go. Should one of `held`'s blobs be gone all the same (removed by hand, or
    /// as corrupt by another builder), [`snapshot`](HostCache::snapshot) reports it
    /// ([`Error::BlobMissing`], [`Error::CorruptBlob`]): then ask [`missing`](HostCache::missing).
    pub fn missing_since(&self, m: &Manifest, held: &Manifest) -> Vec<(Digest, u64, PathBuf)> {
        if self.pin_until_snapshot(&m.root_digest(), blob_digests(m).into_iter()) {
            return Vec::new();
        }
        self.absent(m.blobs_changed_since(held))
    }

    /// Pins `blobs` of manifest `root` until its snapshot is made; true when that snapshot
    /// is here already. A failure to pin is logged (see [`missing`](HostCache::missing)).
    fn pin_until_snapshot(&self, root: &Digest, blobs: impl Iterator<Item = Digest>) -> bool {
        let root = *root;
        match self.pin(&root, blobs, true) {
            Ok((pin, present)) => {
                self.waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(root, pin);
                present
            }
            Err(e) => {
                tracing::warn!("cannot pin the blobs of manifest {root}: {e}");
                false
            }
        }
    }

    /// Those of `blobs` whose file is not in the cache.
    fn absent(&self, blobs: Vec<(Digest, u64, PathBuf)>) -> Vec<(Digest, u64, PathBuf)> {
        blobs
            .into_iter()
            .filter(|(digest, _, _)| !self.blob_path(digest).is_file())
            .collect()
    }

    /// Claims a blob to fetch it: [`Begin::Present`] when some process has put it here
    /// already, [`Begin::Mine`] with a writer, or [`Begin::Busy`] when another thread or
    /// process of this host is fetching it. `shown_as` names the blob in errors.
    ///
    /// # Errors
    /// [`Error::Io`] when the claim file cannot be made or emptied.
    pub fn begin(&self, digest: Digest, size: u64, shown_as: &Path) -> Result<Begin> {
        let dest = self.blob_path(&digest);
        // Looked for first, though `missing` just did: a blob another fetcher of the host
        // held (`Busy`) is claimed again once it let go, when it is mostly there, and a
        // claim file made and removed costs far more than a look on a disk that makes
        // files slowly.
        if dest.is_file() {
            return Ok(Begin::Present);
        }
        let Some(claim) = Claim::try_take(&self.claim_path(&digest))? else {
            return Ok(Begin::Busy);
        };
        // Someone may have finished it between the look and the claim.
        if dest.is_file() {
            return Ok(Begin::Present);
        }
        if let Some(fan) = dest.parent() {
            let made = &mut self.fans.lock().unwrap_or_else(PoisonError::into_inner);
            if !made.contains(&digest.as_bytes()[0]) {
                dirs::private_dir(fan)?;
                made.insert(digest.as_bytes()[0]);
            }
        }
        // Only a claim's holder writes its blob, so what a holder killed mid-write left
        // is abandoned.
        if claim.inherited() {
            claim
                .file()
                .set_len(0)
                .map_err(|e| Error::io("empty", claim.path(), e))?;
        }
        let verified = Arc::clone(&self.verified);
        let mut writer = BlobWriter::new(claim, dest, verified, digest, size, shown_as);
        writer.start_writeback = self.start_writeback;
        Ok(Begin::Mine(writer))
    }

    /// [`begin`](HostCache::begin) for each of `blobs` (digest, size, shown as), on as many
    /// threads as there are cores, the results in the order of `blobs`: creating a claim
    /// file is most of what claiming costs, and on ext4 creating a file takes up to a
    /// millisecond of kernel time, which other cores can share.
    ///
    /// # Errors
    /// The first (in the order of `blobs`) of [`begin`](HostCache::begin)'s errors; the
    /// blobs claimed before it are released.
    pub fn begin_each(&self, blobs: &[(Digest, u64, PathBuf)]) -> Result<Vec<Begin>> {
        crate::par::each_in_shares(blobs, SMALL_JOBS_PER_THREAD, |(digest, size, shown)| {
            self.begin(*digest, *size, shown)
        })
    }

    /// Prepares `writer` (a blob with `pieces`) to receive only the pieces that an older
    /// blob in this cache, with pieces `older`, lacks, and returns those
    /// ([`BlobWriter::wanted_pieces`]; possibly none, then finish the writer at once).
    /// `None`, with the writer left as it was, when that blob is not here, its pieces are
    /// of another length, it shares nothing, or it no longer holds its content.
    ///
    /// The pieces it shares are copied from it (a reflink on btrfs and XFS) into the new
    /// blob, or, cheaper, the older blob itself becomes the new one: when `held` (a
    /// snapshot this caller took out of the cache with
    /// [`take_for_patch`](HostCache::take_for_patch), and its manifest) has the only links
    /// to it and no pin of anyone else, nor the new manifest's, names it. The new snapshot
    /// then replaces every file of `held` that had it.
    ///
    /// The reused pieces need no hashing: the older blob is hashed whole first unless this
    /// process hashed it and its file has not changed since (checked again after a copy),
    /// and `older` was checked against its digest, so each of its pieces with the same
    /// chaining value as the new blob's holds the same bytes.
    ///
    /// # Errors
    /// [`Error::Io`] when the claim file cannot be written or the older blob taken.
    pub fn reuse(
        &self,
        writer: &mut BlobWriter,
        pieces: &Pieces,
        older: &Pieces,
        held: Option<(&Snapshot, &Manifest)>,
    ) -> Result<Option<Vec<u32>>> {
        if pieces.digest() != writer.digest() || older.digest() == pieces.digest() {
            return Ok(None);
        }
        let Some((shared, wanted)) = pieces.shared_with(older) else {
            return Ok(None);
        };
        if shared.is_empty() {
            return Ok(None);
        }
        let base_path = self.blob_path(&older.digest());
        let Ok(base) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&base_path)
        else {
            return Ok(None);
        };
        let stamp = |file: &fs::File| file.metadata().ok().map(|m| Stamp::of(&m));
        let Some(before) = stamp(&base) else {
            return Ok(None);
        };
        // Hashed first unless this process did since it last changed (a new run's worker
        // never did): its pieces are then what `older` says.
        if !self.verified.is_intact(&older.digest(), &before) && !self.rehash(&base, older)? {
            return Ok(None);
        }
        if let Some(held) = held.filter(|(snapshot, _)| snapshot.is_taken())
            && let Some((file, path)) = self.take_older_blob(older, held, &pieces.digest())?
        {
            writer.receive_pieces_in_place(file, path, pieces.clone(), wanted.clone())?;
            return Ok(Some(wanted));
        }
        if writer
            .receive_pieces_after(&base, &shared, pieces.clone(), wanted.clone())
            .is_err()
            || stamp(&base) != Some(before)
        {
            // A full disk, or the older blob changed while it was copied: the whole blob
            // is fetched instead.
            writer.receive_whole()?;
            return Ok(None);
        }
        Ok(Some(wanted))
    }

    /// Takes the older blob (with pieces `older`) out of the cache, open for writing and
    /// renamed beneath `tmp/` under the name of blob `new` being fetched, when nothing
    /// else needs it: decided under the index held exclusive, so no pin is taken
    /// meanwhile. Nothing else needs it when no held pin but `held`'s names it (the
    /// pin `missing` took for the new manifest names it if the new manifest has it),
    /// this process verified it (and it has not changed since), and its only links are the blob store's and those of
    /// `held`'s tree (taken out of the cache already, so no reader sees them change).
    fn take_older_blob(
        &self,
        older: &Pieces,
        (snapshot, held_m): (&Snapshot, &Manifest),
        new: &Digest,
    ) -> Result<Option<(fs::File, PathBuf)>> {
        use std::os::unix::fs::MetadataExt;
        let digest = older.digest();
        let blob = self.blob_path(&digest);
        let _held = self.index.exclusive()?;
        if pin::blob_held_by_others(&self.sub("pins"), &digest, &[snapshot.pin().unique()])? {
            return Ok(None);
        }
        let Ok(meta) = fs::symlink_metadata(&blob) else {
            return Ok(None);
        };
        if !meta.is_file() || !self.verified.is_intact(&digest, &Stamp::of(&meta)) {
            return Ok(None);
        }
        let same_file = |path: &Path| {
            fs::symlink_metadata(snapshot.path().join(path))
                .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
        };
        let links = held_m
            .entries()
            .into_iter()
            .filter(|(path, node)| {
                matches!(node.kind(), NodeKind::File { digest: d, .. } if *d == digest)
                    && same_file(path)
            })
            .count();
        if meta.nlink() != 1 + links as u64 {
            return Ok(None);
        }
        let to = self
            .sub("tmp")
            .join(format!("blob.{new}.{}", unique_suffix()));
        fs::rename(&blob, &to).map_err(|e| Error::io("take", &blob, e))?;
        self.verified.forget(&digest);
        drop(_held);
        // A blob is read-only; its owner opens it up to write the pieces that changed.
        fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| Error::io("open up", &to, e))?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&to)
            .map_err(|e| Error::io("open", &to, e))?;
        tracing::debug!(%digest, %new, "patching an older blob in place");
        Ok(Some((file, to)))
    }

    /// Takes snapshot `held`, which this caller holds, out of the cache now, to patch it
    /// into the snapshot of `m` ([`snapshot_after`](HostCache::snapshot_after)) and, in
    /// between, to patch its blobs that changed in place ([`reuse`](HostCache::reuse)).
    /// Only after [`missing`](HostCache::missing) or
    /// [`missing_since`](HostCache::missing_since) of `m`, and only when no one else holds
    /// `held`; false (nothing moved) otherwise. Dropped unpatched, its tree is removed.
    ///
    /// # Errors
    /// [`Error::Io`] when the index cannot be locked or the tree moved.
    pub fn take_for_patch(&self, held: &mut Snapshot, m: &Manifest) -> Result<bool> {
        if held.is_taken() {
            return Ok(true);
        }
        let root = m.root_digest();
        let unique = match self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&root)
        {
            Some(pin) => pin.unique().to_owned(),
            None => return Ok(false),
        };
        // The name the build of `m` uses, kept by the cleaning while its pin lives.
        let temp = self.sub("tmp").join(format!("snap.{root}.{unique}"));
        let old = *held.root();
        if !self.take_over(&old, held.pin().unique(), &temp)? {
            return Ok(false);
        }
        held.taken_to(temp);
        Ok(true)
    }

    /// For a caller that holds no snapshot of an earlier version of `m` (a worker of a new
    /// run): the most recent snapshot this cache kept, with its manifest, that has another
    /// version of one of `m`'s large files at the same path, sharing pieces with it, or
    /// that a patch turns into `m`'s making or removing at most half as many entries as `m`
    /// has files (the 16 newest snapshots at most, and 32 MiB of their manifests, are
    /// looked at). Held like one the caller had kept, it lets those large files travel as
    /// the pieces that changed ([`reuse`](HostCache::reuse)), lets the caller look only
    /// for the blobs of what changed since ([`missing_since`](HostCache::missing_since)),
    /// and is patched into the snapshot of `m` (a run after one file was edited links that
    /// file, not every file). `None` when `m`'s own snapshot is here, or no snapshot here
    /// is such.
    ///
    /// # Errors
    /// [`Error::Io`] when the snapshots cannot be listed or one found cannot be pinned.
    pub fn older_snapshot_for(&self, m: &Manifest) -> Result<Option<(Arc<Manifest>, Snapshot)>> {
        if self.snapshot_path(&m.root_digest()).is_dir() {
            return Ok(None);
        }
        let blobs = m.blobs();
        let large: Vec<(&Path, &Pieces)> = blobs
            .iter()
            .filter_map(|(_, _, shown)| Some((shown.as_path(), m.find(shown)?.pieces()?)))
            .collect();
        let snapshots = self.sub("snapshots");
        let mut kept: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&snapshots).map_err(|e| Error::io("list", &snapshots, e))? {
            let entry = entry.map_err(|e| Error::io("list", &snapshots, e))?;
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "manifest")
                && let Ok(meta) = entry.metadata()
            {
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                kept.push((modified, meta.len(), path));
            }
        }
        if kept.is_empty() {
            return Ok(None);
        }
        kept.sort_by_key(|(modified, _, _)| std::cmp::Reverse(*modified));
        let patch_at_most = (m.file_count() as f64 * PATCH_AT_MOST) as usize;
        // A manifest several times longer or shorter than `m`'s cannot be one patch away
        // from it: not read unless it may hold an older version of a large file.
        let own_len = m.encode().len() as u64;
        let similar = |len: u64| len <= 3 * own_len + 4096 && 3 * len + 4096 >= own_len;
        let mut budget = OLDER_BYTES_READ;
        for (_, len, path) in kept.into_iter().take(OLDER_LOOKED_AT) {
            if large.is_empty() && !similar(len) {
                continue;
            }
            let Some(left) = budget.checked_sub(len) else {
                break;
            };
            budget = left;
            let Some(older) = read_manifest(&path) else {
                continue;
            };
            if older.root_digest() == m.root_digest() {
                continue;
            }
            let has_older_version = large.iter().any(|(shown, pieces)| {
                older
                    .find(shown)
                    .and_then(Node::pieces)
                    .filter(|was| was.digest() != pieces.digest())
                    .and_then(|was| pieces.shared_with(was))
                    .is_some_and(|(shared, _)| !shared.is_empty())
            });
            if !has_older_version
                && crate::snapshot::Patch::between(&older, m).changes() > patch_at_most
            {
                continue;
            }
            let root = older.root_digest();
            // Never read, only patched: it does not keep another holder from patching it.
            let (pin, present) = self.pin(&root, blob_digests(&older).into_iter(), false)?;
            if present {
                let snapshot = Snapshot::found(self, root, pin);
                return Ok(Some((Arc::new(older), snapshot)));
            }
        }
        Ok(None)
    }

    /// Hashes the blob with pieces `pieces` open as `file` and records it when intact.
    fn rehash(&self, file: &fs::File, pieces: &Pieces) -> Result<bool> {
        let meta = file
            .metadata()
            .map_err(|e| Error::io("read", self.blob_path(&pieces.digest()), e))?;
        if meta.len() != pieces.size() {
            return Ok(false);
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut reader = file;
        loop {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update_rayon(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(false),
            }
        }
        let intact = Digest::from(hasher.finalize()) == pieces.digest();
        if intact {
            self.verified.record(pieces.digest(), Stamp::of(&meta));
        }
        Ok(intact)
    }

    /// Returns when no fetch of `digest` runs on this host (a killed fetcher's claim is
    /// released with its process).
    ///
    /// # Errors
    /// [`Error::Io`] when the claim file cannot be opened or locked.
    pub fn wait(&self, digest: &Digest) -> Result<()> {
        Claim::wait(&self.claim_path(digest))
    }

    /// Materialises `m` as an immutable tree beneath the cache, or hands out the one built
    /// already: built under a temporary name after checking free space, renamed into place
    /// (a concurrent builder that loses the race uses the winner's); files as hard links to
    /// their blobs where the blob has the file's mode and time ([`BlobWriter::keep_attrs`]),
    /// else by `copy_file_range` (which btrfs and XFS make a reflink); modes and times from
    /// the manifest; symlinks as symlinks. Pinned while the [`Snapshot`] lives. Every blob
    /// is hashed first unless this process hashed it and its file has not changed since; a
    /// damaged blob is removed together with every snapshot sharing its file.
    ///
    /// # Errors
    /// [`Error::BlobMissing`] when a blob is not here (fetch what
    /// [`missing`](HostCache::missing) lists first); [`Error::CorruptBlob`] when a blob no
    /// longer holds its content (it is removed: fetch it again); [`Error::NoSpace`];
    /// [`Error::Io`].
    pub fn snapshot(&self, m: &Manifest) -> Result<Snapshot> {
        self.snapshot_after(m, None)
    }

    /// As [`snapshot`](HostCache::snapshot), given the snapshot this caller used before
    /// and its manifest: when nobody else holds that one, it is taken out of the cache and
    /// patched into the snapshot of `m`, at the cost of what changed between the two (one
    /// changed file: one link or copy and the folders above it). Otherwise, or when `m`'s
    /// snapshot is here already, `previous` is let go and the snapshot built or found.
    ///
    /// # Errors
    /// As [`snapshot`](HostCache::snapshot); a failed patch loses the previous snapshot
    /// (it is removed), never leaves a damaged one.
    pub fn snapshot_after(
        &self,
        m: &Manifest,
        previous: Option<(Snapshot, &Manifest)>,
    ) -> Result<Snapshot> {
        // The pin `missing` took for `m` becomes the snapshot's: it pins the same root and
        // blobs, so a second one (a file listing every blob) is not needed.
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&m.root_digest());
        let (snapshot, built) = crate::snapshot::build(self, m, previous, waiting)?;
        // A snapshot handed out from the cache adds nothing but index lines.
        if (built || self.index.journal_len() > self.compact_at.load(Ordering::Relaxed))
            && let Err(e) = self.enforce(false)
        {
            tracing::warn!(
                "cannot keep the host cache `{}` within its limits: {e}",
                self.dir.display()
            );
        }
        Ok(snapshot)
    }

    /// Takes snapshot `old` out of the cache, renamed to `to`, when nobody but the caller
    /// (`own_pin`) reads it: decided with the index held exclusive, so nobody marks it
    /// meanwhile. Other holders that stood it by find it gone when they resume it. False
    /// (and nothing moved) when someone else reads it or it is gone.
    pub(crate) fn take_over(&self, old: &Digest, own_pin: &str, to: &Path) -> Result<bool> {
        let _held = self.index.exclusive()?;
        if pin::held_by_others(&self.sub("reading"), old, own_pin)? {
            return Ok(false);
        }
        let from = self.snapshot_path(old);
        match std::fs::rename(&from, to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("take over", &from, e)),
        }
        remove_tree(&self.manifest_path(old))?;
        Ok(true)
    }

    /// The eviction pass, then when to compact the journal next.
    fn enforce(&self, reconcile: bool) -> Result<()> {
        evict::enforce(self, reconcile)?;
        let next = (3 * self.index.journal_len()).max(COMPACT_AT_LEAST);
        self.compact_at.store(next, Ordering::Relaxed);
        Ok(())
    }

    /// Applies the limits now (they are applied when the cache opens and after each
    /// snapshot it builds; handing out one built already adds nothing).
    ///
    /// # Errors
    /// [`Error::Io`] when the cache cannot be read or an entry cannot be removed.
    pub fn evict(&self) -> Result<()> {
        self.enforce(false)
    }
}

/// Each distinct blob digest of `m` (what [`Manifest::blobs`] lists, without the paths it
/// would build for messages).
fn blob_digests(m: &Manifest) -> HashSet<Digest> {
    let mut out = HashSet::new();
    let mut stack = vec![m.root()];
    while let Some(node) = stack.pop() {
        if let crate::manifest::NodeKind::File { digest, .. } = node.kind() {
            out.insert(*digest);
        }
        stack.extend(node.children());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::DirBuilderExt;

    use super::*;

    #[test]
    fn warm_snapshots_keep_the_journal_compact() {
        let shared = tempfile::tempdir().unwrap();
        std::fs::write(shared.path().join("f"), "x").unwrap();
        let local = tempfile::tempdir().unwrap();
        let user = local.path().join("u");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&user)
            .unwrap();
        let limits = CacheLimits {
            max_bytes: 1 << 30,
            max_count: 1000,
        };
        let cache = HostCache::open(&user, limits).unwrap();
        let mut scanner =
            crate::Scanner::new(vec![shared.path().to_path_buf()], 0, vec![b"f".to_vec()]);
        let m = scanner.manifest().unwrap();
        let (digest, size, shown) = m.blobs()[0].clone();
        let Begin::Mine(mut w) = cache.begin(digest, size, &shown).unwrap() else {
            panic!()
        };
        w.write(b"x").unwrap();
        w.finish().unwrap();
        drop(cache.snapshot(&m).unwrap());
        let lines = || {
            std::fs::read_to_string(cache.path().join("index"))
                .unwrap()
                .lines()
                .count()
        };
        let mut most = 0;
        for _ in 0..100 {
            // As if the journal had grown past the compaction length each time.
            cache.compact_at.store(0, Ordering::Relaxed);
            drop(cache.snapshot(&m).unwrap());
            most = most.max(lines());
        }
        // Two entries, two lines per warm snapshot: without compaction, 200 lines.
        assert!(most <= 2 * 2 + 64 + 2, "{most} lines");
    }
}

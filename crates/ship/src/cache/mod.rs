//! [`HostCache`]: the per-host, content-addressed cache of blobs and snapshots.
//!
//! ```text
//! <user dir>/cache/                 0700, owned by the user, not a symlink
//!     blobs/<2 hex>/<64 hex>        one file per blob, read-only
//!     claims/<64 hex>               flock'ed by the process fetching that blob
//!     tmp/                          blobs being written, snapshots being built
//!     snapshots/<64 hex>/           one immutable tree per manifest root digest
//!     index                         the LRU index (last use of each blob and snapshot)
//!     index.lock                    flock'ed while the index is read or written
//! ```

mod blob;
mod claim;
mod evict;
mod index;

use std::path::{Path, PathBuf};

pub use blob::BlobWriter;

use crate::digest::Digest;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::snapshot::Snapshot;

/// How large a host cache may grow; the least recently used blobs and snapshots go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Most bytes the blobs and snapshots may take.
    pub max_bytes: u64,
    /// Most blobs the cache may hold.
    pub max_count: u64,
}

impl CacheLimits {
    /// The count limit when none is given.
    pub const DEFAULT_COUNT: u64 = 1_000_000;

    /// 10% of the free space of the file system holding `dir`, and [`DEFAULT_COUNT`](Self::DEFAULT_COUNT) blobs.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) when the file system cannot be asked (`statvfs`).
    pub fn default_for(dir: &Path) -> Result<CacheLimits> {
        let _ = dir;
        todo!("ship API skeleton")
    }
}

/// What [`HostCache::begin`] found.
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
/// bounded by [`CacheLimits`]; eviction never touches what a live [`Snapshot`] or a
/// snapshot being built uses.
#[derive(Debug)]
pub struct HostCache {
    dir: PathBuf,
    limits: CacheLimits,
}

impl HostCache {
    /// Opens (creating it 0700 when missing) the cache beneath `user_dir`, the per-user
    /// folder (`<local root>/parvm-<user>`), and removes what killed processes left.
    ///
    /// # Errors
    /// [`Error::UnsafeFolder`](crate::Error::UnsafeFolder) when the cache folder is a
    /// symlink, owned by another user or open to others; [`Error::Io`](crate::Error::Io)
    /// when it cannot be made or read.
    pub fn open(user_dir: &Path, limits: CacheLimits) -> Result<HostCache> {
        let _ = (user_dir, limits);
        todo!("ship API skeleton")
    }

    /// The cache folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The limits it keeps to.
    pub fn limits(&self) -> CacheLimits {
        self.limits
    }

    /// Blobs of `m` this host lacks (digest, size, a path for messages), each once.
    pub fn missing(&self, m: &Manifest) -> Vec<(Digest, u64, PathBuf)> {
        let _ = m;
        todo!("ship API skeleton")
    }

    /// Claims a blob to fetch it: [`Begin::Present`] when some process has put it here
    /// already, [`Begin::Mine`] with a writer, or [`Begin::Busy`] when another thread or
    /// process of this host is fetching it. `shown_as` names the blob in errors.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) when the claim or the temporary file cannot be made.
    pub fn begin(&self, digest: Digest, size: u64, shown_as: &Path) -> Result<Begin> {
        let _ = (digest, size, shown_as);
        todo!("ship API skeleton")
    }

    /// Returns when no fetch of `digest` runs on this host (a killed fetcher's claim is
    /// released with its process).
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) when the claim file cannot be opened or locked.
    pub fn wait(&self, digest: &Digest) -> Result<()> {
        let _ = digest;
        todo!("ship API skeleton")
    }

    /// Materialises `m` as an immutable tree beneath the cache, or hands out the one built
    /// already: built under a temporary name after checking free space against
    /// [`Manifest::total_bytes`], renamed into place; files by reflink where the file system
    /// has it, else a copy, or a hard link from an older snapshot holding the same entry;
    /// modes and times from the manifest; symlinks as symlinks. Pinned while the
    /// [`Snapshot`] lives.
    ///
    /// # Errors
    /// [`Error::BlobMissing`](crate::Error::BlobMissing) when a blob is not here (fetch
    /// what [`missing`](HostCache::missing) lists first);
    /// [`Error::CorruptBlob`](crate::Error::CorruptBlob) when a blob no longer holds its
    /// content (it is removed: fetch it again); [`Error::NoSpace`](crate::Error::NoSpace);
    /// [`Error::Io`](crate::Error::Io).
    pub fn snapshot(&self, m: &Manifest) -> Result<Snapshot> {
        let _ = m;
        todo!("ship API skeleton")
    }
}

//! [`Scanner`]: the spawner's view of one mirrored root, kept as a manifest and refreshed
//! cheaply.

use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::Manifest;

/// Spawner side, one per (VM, mirrored root). Expands the sources with mirror-fs's glob
/// rules, follows a top-level symlink only into the mirrored roots (as mirroring does),
/// hashes files with BLAKE3, and on later calls rehashes only files whose (device, inode,
/// size, modification time, change time) changed; an unchanged folder keeps its digest.
pub struct Scanner {
    roots: Vec<PathBuf>,
    root: usize,
    sources: Vec<Vec<u8>>,
    current: Option<Arc<Manifest>>,
}

impl Scanner {
    /// A scanner of root `root` of `roots` (this host's mirrored roots) for `sources`, the
    /// suffixes below that root the map's sources have (they may hold globs). Nothing is
    /// read until [`manifest`](Scanner::manifest).
    pub fn new(roots: Vec<PathBuf>, root: usize, sources: Vec<Vec<u8>>) -> Scanner {
        Scanner {
            roots,
            root,
            sources,
            current: None,
        }
    }

    /// The manifest of what the sources match now. The first call hashes everything; later
    /// calls look again only where the sources may have changed and rehash only files whose
    /// signature changed, returning the same `Arc` when nothing did.
    ///
    /// # Errors
    /// [`Error::Source`] for a source mirroring would refuse (a literal source missing, a
    /// symlink leaving the roots, a dangling symlink), [`Error::SpecialFile`] for a fifo,
    /// socket or device, [`Error::Io`] when reading fails.
    pub fn manifest(&mut self) -> Result<Arc<Manifest>> {
        let _ = (&self.roots, self.root, &self.sources, &self.current);
        todo!("ship API skeleton")
    }

    /// The file a blob of the current manifest is read from, opened without following a
    /// symlink, with its length.
    ///
    /// # Errors
    /// [`Error::UnknownBlob`] when no file of the current manifest has `digest`;
    /// [`Error::SourceChanged`] when the file no longer has the signature it was hashed
    /// with (call [`manifest`](Scanner::manifest) again); [`Error::Io`] when it cannot be opened.
    pub fn open_blob(&self, digest: &Digest) -> Result<(std::fs::File, u64)> {
        let _ = digest;
        Err(Error::UnknownBlob {
            digest: *digest,
            root: self.roots.get(self.root).cloned().unwrap_or_default(),
        })
    }
}

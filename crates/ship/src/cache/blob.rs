//! [`BlobWriter`]: a claimed blob being written into its claim file.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::claim::Claim;
use super::verified::{Stamp, Verified};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::Timestamp;

/// Writes one claimed blob: chunks go straight into the claim file (bounded memory), hashed
/// as they arrive. Dropped unfinished: what was written is removed and the claim released.
#[derive(Debug)]
pub struct BlobWriter {
    digest: Digest,
    size: u64,
    shown_as: PathBuf,
    written: u64,
    /// Boxed: the hasher's state is 2 KiB, and `Begin` carries the writer by value.
    hasher: Box<blake3::Hasher>,
    /// Mode and time the blob's file gets, so snapshot files with them can be hard links.
    attrs: Option<(u32, Timestamp)>,
    dest: PathBuf,
    verified: Arc<Verified>,
    claim: Claim,
}

impl BlobWriter {
    pub(crate) fn new(
        claim: Claim,
        dest: PathBuf,
        verified: Arc<Verified>,
        digest: Digest,
        size: u64,
        shown_as: &Path,
    ) -> BlobWriter {
        BlobWriter {
            digest,
            size,
            shown_as: shown_as.to_path_buf(),
            written: 0,
            hasher: Box::new(blake3::Hasher::new()),
            attrs: None,
            dest,
            verified,
            claim,
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Gives the blob the permission bits `mode` (setuid, setgid and sticky are dropped)
    /// and modification time `mtime` of the file it is fetched for: a snapshot file with
    /// the same mode and time is then a hard link to the blob instead of a copy. Without
    /// it the blob is read-only and timed when it was written.
    pub fn keep_attrs(&mut self, mode: u32, mtime: Timestamp) {
        self.attrs = Some((mode & 0o777, mtime));
    }

    /// Appends a chunk.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] when more arrives than the manifest's size;
    /// [`Error::Io`] when writing fails.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let got = self.written.saturating_add(chunk.len() as u64);
        if got > self.size {
            return Err(Error::SizeMismatch {
                shown_as: self.shown_as.clone(),
                expected: self.size,
                got,
            });
        }
        let mut file: &File = self.claim.file();
        file.write_all(chunk)
            .map_err(|e| Error::io("write", self.claim.path(), e))?;
        self.hasher.update(chunk);
        self.written = got;
        Ok(())
    }

    /// Checks size and digest (errors name the path it is shown as), gives the file its
    /// mode and time, and renames it into place, releasing the claim.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`], [`Error::DigestMismatch`] (nothing is kept), [`Error::Io`].
    pub fn finish(self) -> Result<()> {
        if self.written != self.size {
            return Err(Error::SizeMismatch {
                shown_as: self.shown_as.clone(),
                expected: self.size,
                got: self.written,
            });
        }
        let got: Digest = self.hasher.finalize().into();
        if got != self.digest {
            return Err(Error::DigestMismatch {
                shown_as: self.shown_as.clone(),
                expected: self.digest,
                got,
            });
        }
        let file = self.claim.file();
        let temp = self.claim.path().to_path_buf();
        let (mode, mtime) = self.attrs.map_or((0o400, None), |(m, t)| (m, Some(t)));
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("protect", &temp, e))?;
        if let Some(mtime) = mtime {
            file.set_modified(crate::snapshot::system_time(mtime))
                .map_err(|e| Error::io("set the time of", &temp, e))?;
        }
        // Duplicated before the claim goes with `publish`: the stamp is taken after the
        // rename, which moves the change time on some file systems.
        let file = file
            .try_clone()
            .map_err(|e| Error::io("reopen", &temp, e))?;
        // The index learns it with its snapshot (one append for all its blobs) or, when no
        // snapshot is made, when a cache opens next; meanwhile `missing`'s pin keeps it.
        self.claim
            .publish(&self.dest)
            .map_err(|e| Error::io("place blob", &self.dest, e))?;
        if let Ok(meta) = file.metadata() {
            self.verified.record(self.digest, Stamp::of(&meta));
        }
        Ok(())
    }
}

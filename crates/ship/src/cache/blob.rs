//! [`BlobWriter`]: a claimed blob being written to a temporary file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::claim::Claim;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Writes one claimed blob: chunks go straight to a temporary file (bounded memory),
/// hashed as they arrive. Dropped unfinished: the temporary file is removed and the claim
/// released.
#[derive(Debug)]
pub struct BlobWriter {
    digest: Digest,
    size: u64,
    shown_as: PathBuf,
    written: u64,
    /// Boxed: the hasher's state is 2 KiB, and `Begin` carries the writer by value.
    hasher: Box<blake3::Hasher>,
    file: Option<File>,
    temp: PathBuf,
    dest: PathBuf,
    _claim: Claim,
}

impl BlobWriter {
    pub(crate) fn create(
        claim: Claim,
        temp: PathBuf,
        dest: PathBuf,
        digest: Digest,
        size: u64,
        shown_as: &Path,
    ) -> Result<BlobWriter> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)
            .map_err(|e| Error::io("create", &temp, e))?;
        Ok(BlobWriter {
            digest,
            size,
            shown_as: shown_as.to_path_buf(),
            written: 0,
            hasher: Box::new(blake3::Hasher::new()),
            file: Some(file),
            temp,
            dest,
            _claim: claim,
        })
    }

    /// The blob's digest.
    pub fn digest(&self) -> Digest {
        self.digest
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
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::io("write", &self.temp, std::io::ErrorKind::BrokenPipe.into()))?;
        file.write_all(chunk)
            .map_err(|e| Error::io("write", &self.temp, e))?;
        self.hasher.update(chunk);
        self.written = got;
        Ok(())
    }

    /// Checks size and digest (errors name the path it is shown as) and renames the blob
    /// into place (read-only), releasing the claim.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`], [`Error::DigestMismatch`] (nothing is kept), [`Error::Io`].
    pub fn finish(mut self) -> Result<()> {
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
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::io("write", &self.temp, std::io::ErrorKind::BrokenPipe.into()))?;
        file.set_permissions(fs::Permissions::from_mode(0o400))
            .map_err(|e| Error::io("protect", &self.temp, e))?;
        drop(file);
        // The index learns it with its snapshot (one append for all its blobs) or, when no
        // snapshot is made, when a cache opens next; meanwhile `missing`'s pin keeps it.
        fs::rename(&self.temp, &self.dest).map_err(|e| Error::io("place blob", &self.dest, e))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // After a successful finish the temporary name is gone and this does nothing.
        let _ = fs::remove_file(&self.temp);
    }
}

//! [`BlobWriter`]: a claimed blob being written to a temporary file.

use crate::error::Result;

/// Writes one claimed blob: chunks go straight to a temporary file (bounded memory),
/// hashed as they arrive. Dropped unfinished: the temporary file is removed and the claim
/// released.
#[derive(Debug)]
pub struct BlobWriter {
    _private: (),
}

impl BlobWriter {
    /// Appends a chunk.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`](crate::Error::SizeMismatch) when more arrives than the
    /// manifest's size; [`Error::Io`](crate::Error::Io) when writing fails.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let _ = chunk;
        todo!("ship API skeleton")
    }

    /// Checks size and digest (errors name the path it is shown as) and renames the blob
    /// into place, releasing the claim.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`](crate::Error::SizeMismatch),
    /// [`Error::DigestMismatch`](crate::Error::DigestMismatch) (nothing is kept),
    /// [`Error::Io`](crate::Error::Io).
    pub fn finish(self) -> Result<()> {
        todo!("ship API skeleton")
    }
}

//! [`SourceBlob`]: the file a blob is read from on the spawner, and the check that what
//! was read of it is the blob.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::FileSig;
use crate::error::{Error, Result};

/// The file of the current manifest a blob is read from, opened without following a
/// symlink ([`Scanner::open_blob`](crate::Scanner::open_blob)), as it was when hashed.
///
/// Bytes read from it are the blob's as long as the file is still as it was hashed after
/// they were read: every write moves a file's change time, so
/// [`unchanged`](SourceBlob::unchanged) after the last read vouches for all of them, and a
/// receiver on a transport that delivers frames intact need not hash them again.
#[derive(Debug)]
pub struct SourceBlob {
    /// The open file.
    pub file: File,
    /// The blob's length in bytes.
    pub size: u64,
    path: PathBuf,
    sig: FileSig,
}

impl SourceBlob {
    pub(super) fn new(file: File, path: &Path, sig: FileSig) -> SourceBlob {
        SourceBlob {
            file,
            size: sig.size,
            path: path.to_path_buf(),
            sig,
        }
    }

    /// The source file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that the file is still as it was hashed: call it after the last read, so
    /// that everything read is the blob's.
    ///
    /// # Errors
    /// [`Error::SourceChanged`] naming the file when it was written, replaced or changed
    /// its mode since it was hashed; [`Error::Io`] when it cannot be looked at.
    pub fn unchanged(&self) -> Result<()> {
        let now = self
            .file
            .metadata()
            .map_err(|e| Error::io("read", &self.path, e))?;
        if FileSig::of(&now) == self.sig {
            Ok(())
        } else {
            Err(Error::SourceChanged {
                path: self.path.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use crate::Scanner;

    #[test]
    fn a_write_after_opening_is_seen_and_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.cir"), "R1 1 0 1k\n").unwrap();
        let mut scanner = Scanner::new(vec![root.path().to_path_buf()], 0, vec![b"*".to_vec()]);
        let manifest = scanner.manifest().unwrap();
        let (digest, _, _) = manifest.blobs()[0].clone();
        let source = scanner.open_blob(&digest).unwrap();
        assert_eq!(source.size, 10);
        source.unchanged().unwrap();
        // The same length, written through another descriptor while the blob is read.
        let mut other = std::fs::OpenOptions::new()
            .write(true)
            .open(root.path().join("a.cir"))
            .unwrap();
        other.write_all(b"R1 1 0 2k\n").unwrap();
        let err = source.unchanged().unwrap_err().to_string();
        assert!(err.contains("a.cir") && err.contains("changed"), "{err}");
    }
}

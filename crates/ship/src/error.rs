//! The crate's one error type.

use std::path::PathBuf;

use crate::digest::Digest;

/// Everything shipping can fail with. Each message names the path, digest or limit involved
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system call failed on `path`.
    #[error("cannot {action} `{}`", path.display())]
    Io {
        /// What was being done, e.g. "read" or "create folder".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// Bytes that should hold a manifest (they come from a peer) do not.
    #[error(
        "malformed manifest from the peer: {reason}; the spawner and the worker may run different parvm versions, or the connection corrupted it"
    )]
    ManifestDecode {
        /// What is wrong, naming the entry where one is known.
        reason: String,
    },

    /// A write failed because the disk holding `path` is full or the user's quota there
    /// is used up (`ENOSPC`, `EDQUOT`): the host cache or the spawner's kept hashes, both
    /// in local storage.
    #[error(
        "cannot {action} `{}`: its disk is full (or your quota there is used up); free some space there, or point PARALLEL_LOCAL_STORAGE at a larger disk",
        path.display()
    )]
    DiskFull {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// A manifest cannot be built as asked (a bad name, duplicate names, too deep or too large).
    #[error("cannot describe `{}` in a manifest: {reason}", path.display())]
    ManifestInvalid {
        /// The entry, relative to the mirrored root.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Expanding or checking a mirrored source failed (mirror-fs's rules).
    #[error("cannot list the sources to ship beneath `{}`", root.display())]
    Source {
        /// The mirrored root the sources lie beneath.
        root: PathBuf,
        /// mirror-fs's error, which names the source.
        #[source]
        source: parvm_mirror_fs::Error,
    },

    /// A mirrored source that is neither a regular file, a folder nor a symlink.
    #[error("cannot ship `{}`: it is a {kind}; mirroring copies only files, folders and symlinks", path.display())]
    SpecialFile {
        /// The source.
        path: PathBuf,
        /// What it is (fifo, socket, device).
        kind: &'static str,
    },

    /// A file changed since it was hashed, so the blob asked for is not what it holds now.
    #[error("`{}` changed while it was hashed or sent for shipping; run the task again once the file is written (it is then shipped as it is)", path.display())]
    SourceChanged {
        /// The source file.
        path: PathBuf,
    },

    /// A blob asked for is not in the current manifest.
    #[error("blob {digest} is not in the current manifest of `{}`; the worker holds an old manifest", root.display())]
    UnknownBlob {
        /// The digest asked for.
        digest: Digest,
        /// The mirrored root.
        root: PathBuf,
    },

    /// The cache folder (or the per-user folder holding it) is not safe to use.
    #[error("refusing cache folder `{}`: {reason}; remove it or fix its owner and mode (0700)", path.display())]
    UnsafeFolder {
        /// The folder.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },

    /// A blob received had another size than the manifest said.
    #[error("received `{}` with {got} bytes, expected {expected}; it is fetched again", shown_as.display())]
    SizeMismatch {
        /// The file the blob is for, relative to its mirrored root.
        shown_as: PathBuf,
        /// The size the manifest gives.
        expected: u64,
        /// The size received (so far, when more arrived than expected).
        got: u64,
    },

    /// A blob received hashes to another digest than the manifest said.
    #[error("received `{}` with digest {got}, expected {expected}; it changed at the source or in transit", shown_as.display())]
    DigestMismatch {
        /// The file the blob is for, relative to its mirrored root.
        shown_as: PathBuf,
        /// The digest the manifest gives.
        expected: Digest,
        /// The digest of what arrived.
        got: Digest,
    },

    /// A piece of a file that arrived does not hash to its chaining value in the manifest.
    #[error("received piece {piece} (from byte {offset}) of `{}` damaged: it does not match the manifest; it changed at the source or in transit", shown_as.display())]
    PieceMismatch {
        /// The file of the manifest it is for.
        shown_as: PathBuf,
        /// Which piece.
        piece: u32,
        /// Where the piece starts.
        offset: u64,
    },

    /// A cached blob no longer holds its content; it has been removed, fetch it again.
    #[error("cached blob {digest} for `{}` is corrupted (at `{}`); it was removed, fetch it again", shown_as.display(), blob.display())]
    CorruptBlob {
        /// Its digest.
        digest: Digest,
        /// A file of the manifest that has it.
        shown_as: PathBuf,
        /// Where it was in the cache.
        blob: PathBuf,
    },

    /// A snapshot was asked for while a blob it needs is not in the cache.
    #[error("blob {digest} for `{}` is not in the host cache; fetch what `missing` lists first", shown_as.display())]
    BlobMissing {
        /// Its digest.
        digest: Digest,
        /// A file of the manifest that has it.
        shown_as: PathBuf,
    },

    /// Not enough free space to build a snapshot.
    #[error("not enough space in `{}` for a snapshot: {needed} bytes needed, {free} free; free some space or lower PARVM_CACHE_MAX", folder.display())]
    NoSpace {
        /// The folder the snapshot is built in.
        folder: PathBuf,
        /// Bytes the manifest's files take.
        needed: u64,
        /// Bytes free there.
        free: u64,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this is the mark of sources that moved while they were read, not of a
    /// source mirroring refuses: a file that kept changing while it was hashed, or an
    /// entry listed and gone when read (deleted, or renamed as an editor's temporary file).
    /// Looking again a moment later finds them settled.
    pub(crate) fn moved_while_scanned(&self) -> bool {
        match self {
            Error::SourceChanged { .. } => true,
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            Error::Source { source, .. } => match source {
                parvm_mirror_fs::Error::SourceVanished { .. } => true,
                parvm_mirror_fs::Error::Read { source, .. } => {
                    source.kind() == std::io::ErrorKind::NotFound
                }
                _ => false,
            },
            _ => false,
        }
    }

    /// An [`Error::Io`] for `action` on `path`, or [`Error::DiskFull`] when the disk or
    /// the quota is what failed it.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Error::DiskFull {
                action,
                path,
                source,
            },
            _ => Error::Io {
                action,
                path,
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_or_quota_says_so_and_what_to_do() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = Error::io(
                "write",
                "/scratch/parvm-ann/cache/claims/2/ab",
                std::io::Error::from_raw_os_error(errno),
            );
            assert!(matches!(e, Error::DiskFull { .. }), "{e:?}");
            let text = e.to_string();
            assert!(
                text.contains("`/scratch/parvm-ann/cache/claims/2/ab`")
                    && text.contains("disk is full")
                    && text.contains("PARALLEL_LOCAL_STORAGE"),
                "{text}"
            );
        }
        let other = Error::io("write", "/x", std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(other, Error::Io { .. }), "{other:?}");
    }
}

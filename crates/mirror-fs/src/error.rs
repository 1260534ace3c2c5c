//! The one public error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while translating paths, building mirror maps, or copying.
///
/// Every message names the path (or index) involved and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path is not inside any mirrored root.
    #[error(
        "`{}` is not inside any mirrored storage root (roots: {roots}); \
         put the file under one of them or add its folder to PARALLEL_MIRRORED_STORAGE",
        path.display()
    )]
    NoRoot {
        /// The absolute, normalised path that matched no root.
        path: PathBuf,
        /// The roots, listed for the message.
        roots: String,
    },
    /// An abstract path names a root this host does not have.
    #[error(
        "mirrored root index {index} does not exist on this host, which has {count} root(s); \
         give every host the same PARALLEL_MIRRORED_STORAGE entries in the same order"
    )]
    RootIndex {
        /// The index asked for.
        index: usize,
        /// How many roots this host has.
        count: usize,
    },
    /// A relative path was given with a relative current folder.
    #[error("current folder `{}` must be absolute to resolve a relative path", cwd.display())]
    RelativeCwd {
        /// The offending current folder.
        cwd: PathBuf,
    },
    /// An abstract path suffix that is absolute or holds `..` (a malformed or foreign request).
    #[error("abstract path suffix `{}` must be relative and must not hold `..`", suffix.display())]
    BadSuffix {
        /// The offending suffix.
        suffix: PathBuf,
    },
    /// A mirror target that is an absolute path.
    #[error("mirror target `{}` is absolute; give a folder relative to the task folder", target.display())]
    TargetAbsolute {
        /// The offending target.
        target: PathBuf,
    },
    /// A mirror target that climbs out of the task folder.
    #[error("mirror target `{}` leaves the task folder; remove the `..` that climb above it", target.display())]
    TargetEscapes {
        /// The offending target.
        target: PathBuf,
    },
    /// A literal source (no glob characters) that does not exist.
    #[error("mirror source `{}` does not exist; fix the mirror map or create the file", path.display())]
    SourceMissing {
        /// The missing source.
        path: PathBuf,
    },
    /// A source that disappeared between planning and copying.
    #[error("source `{}` vanished while it was being mirrored; was it deleted or renamed meanwhile?", path.display())]
    SourceVanished {
        /// The source that vanished.
        path: PathBuf,
    },
    /// A file (or other non-folder) stands where a folder must be created.
    #[error(
        "`{}` is in the way: a folder must be created there (copying `{}`); remove it from the task folder",
        path.display(),
        from.display()
    )]
    NotAFolder {
        /// The path that should be a folder.
        path: PathBuf,
        /// The source whose copy needed the folder.
        from: PathBuf,
    },
    /// The destination file system is full (or the quota is exhausted).
    #[error(
        "no space left to write `{}` (copying `{}`); the partial copy was removed, free some space",
        to.display(),
        from.display()
    )]
    DiskFull {
        /// The source being copied.
        from: PathBuf,
        /// The destination file that could not be written.
        to: PathBuf,
        /// The underlying error (ENOSPC or EDQUOT).
        #[source]
        source: std::io::Error,
    },
    /// Copying one file, folder or symlink failed.
    #[error("cannot copy `{}` to `{}`", from.display(), to.display())]
    Copy {
        /// The source.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a source (its metadata or folder listing) failed.
    #[error("cannot read `{}`", path.display())]
    Read {
        /// The source path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Preparing a destination (a folder of the task folder) failed.
    #[error("cannot create `{}` in the task folder", path.display())]
    Create {
        /// The destination path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A copy worker thread panicked (a bug).
    #[error("a mirror copy thread panicked; this is a bug in parvm-mirror-fs")]
    WorkerPanicked,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

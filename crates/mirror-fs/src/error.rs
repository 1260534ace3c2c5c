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
    /// A mirror source is a mirrored root itself, which is not mirrored whole: its name
    /// differs from host to host, and it would put that name in every task folder.
    #[error(
        "mirror source `{}` is the mirrored storage root `{}` itself, which is not mirrored \
         whole; mirror what is in it instead (the source `{}/*` matches its files and folders)",
        source_path.display(),
        root.display(),
        root.display()
    )]
    SourceIsRoot {
        /// The source as given.
        source_path: PathBuf,
        /// The root it is.
        root: PathBuf,
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
    #[error(
        "current folder `{}` must be absolute to resolve a relative path; \
         give an absolute current folder or an absolute source",
        cwd.display()
    )]
    RelativeCwd {
        /// The offending current folder.
        cwd: PathBuf,
    },
    /// An abstract path suffix that is absolute or holds `..` (a malformed or foreign request).
    #[error(
        "abstract path suffix `{}` must be relative and must not hold `..`; \
         the request is malformed: run the same parvm version on the spawner and every worker",
        suffix.display()
    )]
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
    #[error(
        "cannot copy `{}` to `{}`; check that the source is readable and the task folder writable",
        from.display(),
        to.display()
    )]
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
    #[error(
        "cannot read `{}`; check that it exists and that this user may read it",
        path.display()
    )]
    Read {
        /// The source path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Preparing a destination (a folder of the task folder) failed.
    #[error(
        "cannot create `{}` in the task folder; check that the task folder is writable",
        path.display()
    )]
    Create {
        /// The destination path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A copy worker thread panicked (a bug).
    #[error(
        "a mirror copy thread panicked; this is a bug in parvm-mirror-fs, please report it \
         with the log above"
    )]
    WorkerPanicked,
    /// A symlink stands on the way to a mirror target, inside the task folder.
    #[error(
        "`{}` in the task folder `{}` is a symlink (to `{}`); mirroring never writes through \
         a symlink: remove it from the task folder or choose another mirror target",
        link.display(),
        task_dir.display(),
        target.display()
    )]
    TargetSymlink {
        /// The symlink.
        link: PathBuf,
        /// What it points to.
        target: PathBuf,
        /// The task folder.
        task_dir: PathBuf,
    },
    /// The task folder itself cannot be opened.
    #[error(
        "cannot open the task folder `{}`; create it first, or check that this user may \
         enter it",
        path.display()
    )]
    TaskFolder {
        /// The task folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A temporary task folder handed on from the previous task is not as a mirror left it
    /// in a way renewing it in place does not mend ([`crate::MirroredFolder::renew`]).
    #[error(
        "task folder `{}` cannot be renewed in place: {why}; empty it and mirror into it \
         afresh",
        path.display()
    )]
    NotRenewable {
        /// The folder found not as the mirror made it.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A source matched at the top level is a symlink to a place outside every mirrored root.
    #[error(
        "mirror source `{}` is a symlink to `{}`, outside every mirrored storage root \
         (roots: {roots}); it is not followed: if it is meant, add `{}` to \
         PARALLEL_MIRRORED_STORAGE, else remove the link",
        link.display(),
        target.display(),
        target.parent().unwrap_or(target).display()
    )]
    LinkOutsideRoots {
        /// The symlink that matched.
        link: PathBuf,
        /// Where it resolves to.
        target: PathBuf,
        /// The roots, listed for the message.
        roots: String,
    },
    /// A source matched at the top level is a symlink to nothing.
    #[error(
        "mirror source `{}` is a symlink to `{}`, which does not exist; fix or remove the link",
        link.display(),
        target.display()
    )]
    DanglingLink {
        /// The symlink that matched.
        link: PathBuf,
        /// What it points to.
        target: PathBuf,
    },
    /// A source is a fifo, a socket or a device: there is nothing to copy.
    #[error(
        "mirror source `{}` is a {kind}, not a file or folder; mirroring copies only files, \
         folders and symlinks: remove it from the mirror map",
        path.display()
    )]
    NotCopyable {
        /// The source.
        path: PathBuf,
        /// What it is (`fifo`, `socket`, `character device`, `block device`).
        kind: &'static str,
    },
    /// A source kept changing while it was being copied.
    #[error(
        "source `{}` changed while it was being copied, {tries} times in a row; the copy \
         was removed: stop what writes to it (or wait until it is done) and mirror again",
        path.display()
    )]
    SourceChanged {
        /// The source.
        path: PathBuf,
        /// How many times it was copied.
        tries: u32,
    },
    /// A task's startup folder is not in its task folder.
    #[error(
        "startup folder `{}` does not exist in the task folder; make it a mirror target, \
         or give a folder the mirror map creates",
        path.display()
    )]
    StartupMissing {
        /// The startup folder.
        path: PathBuf,
    },
    /// The manifest of an earlier mirror cannot be written.
    #[error(
        "cannot write the mirror manifest `{}`; check that the task folder is writable and \
         has room",
        path.display()
    )]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A return pattern that is empty, absolute or climbs out of the task folder.
    #[error(
        "return pattern `{pattern}` {problem}; give a pattern relative to the task folder, \
         without `..`"
    )]
    ReturnPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A file to return is a symlink, or a symlink stands on the way to it.
    #[error(
        "`{}` in the task folder is a symlink (to `{}`); returned files are never read \
         through a symlink: have the task write the file itself, or return what the link \
         points to under its own name",
        link.display(),
        target.display()
    )]
    ReturnSymlink {
        /// The symlink.
        link: PathBuf,
        /// What it points to.
        target: PathBuf,
    },
    /// A literal return pattern ([`crate::is_literal`]) names nothing in the task folder.
    #[error(
        "return pattern `{pattern}` names no file in the task folder `{}`; check that the \
         task writes it there, or use a glob, which may match nothing",
        task_dir.display()
    )]
    ReturnMissing {
        /// The pattern.
        pattern: String,
        /// The task folder.
        task_dir: PathBuf,
    },
    /// A match of a return pattern is neither a file nor a folder.
    #[error(
        "`{}` in the task folder is a {kind}; only files and folders are returned: remove it \
         or narrow the return pattern",
        path.display()
    )]
    ReturnNotFile {
        /// The match.
        path: PathBuf,
        /// What it is (`fifo`, `socket`, `character device`, ...).
        kind: &'static str,
    },
    /// A returned file's path, as a worker sent it, is empty, absolute or climbs out.
    #[error(
        "a worker sent returned file `{}`, a path that is empty, absolute or climbs out of \
         the results folder; it was refused: run the same parvm version on the spawner and \
         every worker",
        path.display()
    )]
    ResultPath {
        /// The path as sent.
        path: PathBuf,
    },
    /// Writing a returned file into the results folder failed.
    #[error(
        "cannot write returned file `{}`; the partial file was removed: free space at the \
         results folder, check that it is writable, or choose another one",
        path.display()
    )]
    ResultWrite {
        /// The file in the results folder.
        path: PathBuf,
        /// The underlying error (ENOSPC, EDQUOT, EACCES, ...).
        #[source]
        source: std::io::Error,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::other("cause")
    }

    /// Every message names what it is about and says what to do.
    #[test]
    fn every_message_names_its_object_and_a_remedy() {
        let p = || PathBuf::from("/shared/x.cir");
        let q = || PathBuf::from("/local/task/x.cir");
        let cases: Vec<(Error, &[&str])> = vec![
            (
                Error::NoRoot {
                    path: p(),
                    roots: "0: `/shared`".into(),
                },
                &["/shared/x.cir", "0: `/shared`", "PARALLEL_MIRRORED_STORAGE"],
            ),
            (
                Error::RootIndex { index: 3, count: 1 },
                &["index 3", "1 root", "PARALLEL_MIRRORED_STORAGE"],
            ),
            (Error::RelativeCwd { cwd: "rel".into() }, &["`rel`", "give"]),
            (
                Error::BadSuffix {
                    suffix: "../x".into(),
                },
                &["`../x`", "same parvm version"],
            ),
            (
                Error::TargetAbsolute {
                    target: "/abs".into(),
                },
                &["`/abs`", "give a folder"],
            ),
            (
                Error::TargetEscapes {
                    target: "../x".into(),
                },
                &["`../x`", "remove"],
            ),
            (
                Error::SourceMissing { path: p() },
                &["/shared/x.cir", "fix the mirror map"],
            ),
            (
                Error::SourceVanished { path: p() },
                &["/shared/x.cir", "deleted or renamed"],
            ),
            (
                Error::NotAFolder {
                    path: q(),
                    from: p(),
                },
                &["/local/task/x.cir", "/shared/x.cir", "remove it"],
            ),
            (
                Error::DiskFull {
                    from: p(),
                    to: q(),
                    source: io(),
                },
                &["/local/task/x.cir", "free some space"],
            ),
            (
                Error::Copy {
                    from: p(),
                    to: q(),
                    source: io(),
                },
                &["/shared/x.cir", "/local/task/x.cir", "check"],
            ),
            (
                Error::Read {
                    path: p(),
                    source: io(),
                },
                &["/shared/x.cir", "check"],
            ),
            (
                Error::Create {
                    path: q(),
                    source: io(),
                },
                &["/local/task/x.cir", "check"],
            ),
            (Error::WorkerPanicked, &["bug", "report"]),
            (
                Error::TargetSymlink {
                    link: q(),
                    target: "/etc".into(),
                    task_dir: "/local/task".into(),
                },
                &["/local/task/x.cir", "`/etc`", "`/local/task`", "remove it"],
            ),
            (
                Error::TaskFolder {
                    path: q(),
                    source: io(),
                },
                &["/local/task/x.cir", "create it"],
            ),
            (
                Error::LinkOutsideRoots {
                    link: p(),
                    target: "/home/me/.ssh/id".into(),
                    roots: "0: `/shared`".into(),
                },
                &[
                    "/shared/x.cir",
                    "/home/me/.ssh/id",
                    "0: `/shared`",
                    "add `/home/me/.ssh`",
                    "PARALLEL_MIRRORED_STORAGE",
                ],
            ),
            (
                Error::DanglingLink {
                    link: p(),
                    target: "gone".into(),
                },
                &["/shared/x.cir", "`gone`", "fix or remove"],
            ),
            (
                Error::NotCopyable {
                    path: p(),
                    kind: "fifo",
                },
                &["/shared/x.cir", "fifo", "remove it"],
            ),
            (
                Error::SourceChanged {
                    path: p(),
                    tries: 4,
                },
                &["/shared/x.cir", "4 times", "mirror again"],
            ),
            (
                Error::Manifest {
                    path: q(),
                    source: io(),
                },
                &["/local/task/x.cir", "check"],
            ),
        ];
        for (error, parts) in cases {
            let text = error.to_string();
            for part in parts {
                assert!(text.contains(part), "`{part}` missing in: {text}");
            }
            assert!(!text.ends_with('.'), "{text}");
            assert!(text.starts_with(|c: char| !c.is_uppercase()), "{text}");
        }
    }
}

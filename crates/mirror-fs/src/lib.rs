//! Mirroring for parvm: host-independent names for files in shared folders, mirror maps,
//! and a fast parallel engine that copies a task's input files into its local folder.
//!
//! - [`to_abstract`] / [`to_actual`] translate a path in a mirrored root into an
//!   [`AbstractPath`] (root index, relative suffix) and back on another host, whose roots
//!   may be mounted elsewhere.
//! - A [`MirrorMap`] lists (source glob, target folder) pairs; [`MirrorMap::to_abstract`]
//!   makes the host-independent [`AbstractMirrorMap`] that travels in a spawn request.
//! - [`mirror`] copies what a map names into a task folder, in parallel.
//! - [`expand_source`] / [`expand_source_traced`] expand and check one source as
//!   mirroring does without copying it (shipping describes sources with them).
//! - [`MirroredFolders`] is the policy of a process that fills task folders again and
//!   again (a worker): a plain mirror for a temporary folder, a refresh for a persistent
//!   one filled from the same map before, else a fresh mirror kept for next time.
//! - Persistent task folders (kept from one task to the next) are brought up to date before
//!   each task, in one of two ways:
//!
//! | | [`MirroredFolder::refresh`] (stateful) | [`refresh`] (stateless) |
//! | --- | --- | --- |
//! | use when | the same process keeps the folder (a worker) | another process mirrored it (`parvm mirror --refresh`) |
//! | per source file | one `stat`, in parallel, compared with the manifest (size, times, inode, mode); none when every copied source folder is on a local file system (tmpfs, ramfs, ext2/3/4, xfs, btrfs, f2fs, zfs): inotify on the source folders names what changed and only that is looked at, plus files with hard links (`st_nlink` > 1: they can change through a name outside the watched folders) and top-level matches of the map. Network and cluster file systems (NFS, SMB, FUSE, Lustre, GPFS, Ceph, 9p, AFS) and overlayfs can change behind this kernel's back: always scanned; so is everything in the first refresh, and in the one after the source watch overflowed, lost a folder or gained one | one `stat` of the source and one of the copy (size, mtime, mode) |
//! | the tasks' changes to copies | named by inotify and copied again; when inotify is refused or overflows, every copy is verified (two `stat`s) | found by comparing each copy with its source |
//! | a source folder whose time changed | listed again: new entries copied | every folder listed every time |
//! | a glob | expanded again when a folder it read changed | expanded every time |
//! | cost, 2000 small files on tmpfs | ≈ 0.2% of a full mirror with the sources watched, ≈ 5% when they are scanned | ≈ 20–35% of a full mirror |
//!
//! Both leave alone the files the tasks wrote that are not mirrored entries, and the
//! copies of entries that are gone at the source: mirroring never deletes. Both miss a
//! source edited in place with its size and modification time put back; the stateful one
//! still sees it when the inode or the change time moved (a rename over it, a `chmod`) or
//! when it watches the sources, and sees every in-place edit of a copy by a task (inotify),
//! even one that keeps size and time. Neither sees a copy changed through a hard link made
//! outside the mirrored folders. When the stateful one watches the sources, two source
//! changes send no event: writes through a shared memory mapping, and an edit through a
//! hard link made outside the watched folders after the last full scan (making the link
//! tells no folder watch; a link that existed then is looked at every time). Both are
//! caught by the next full scan, which runs whenever [`FULL_SCAN_EVERY`] (1 s) has passed
//! since the last one, so such a change goes unseen for at most that long.
//!
//! Whatever the shared and task folders hold, mirroring writes only beneath the task folder
//! and never through a symlink ([`Error::TargetSymlink`]; [`open_beneath`] does the same for
//! a task's startup folder), follows a top-level symlink only into the mirrored roots of
//! the map ([`MirrorMap::within`]), copies a file only when it did not change during its
//! copy ([`Error::SourceChanged`]), and refuses fifos and devices as sources. A
//! [`MirroredFolder`] can be saved in its task folder ([`MANIFEST_FILE`]) and loaded by
//! another process, which then refreshes it as the first one would.
//!
//! ```
//! use parvm_mirror_fs::{mirror, refresh, MirrorMap, MirrorOptions, MirroredFolder};
//!
//! let shared = tempfile::tempdir()?;
//! std::fs::create_dir(shared.path().join("lib"))?;
//! std::fs::write(shared.path().join("lib/a.lib"), "model a")?;
//! std::fs::write(shared.path().join("top.cir"), "netlist")?;
//!
//! let map = MirrorMap::new()
//!     .entry(shared.path().join("lib/*.lib"), "models")?
//!     .entry(shared.path().join("top.cir"), ".")?;
//! let task = tempfile::tempdir()?;
//! let report = mirror(&map, task.path(), &MirrorOptions::new())?;
//! assert_eq!(report.files, 2);
//! assert_eq!(std::fs::read_to_string(task.path().join("models/a.lib"))?, "model a");
//!
//! // Nothing changed at the source: a refresh copies nothing.
//! let again = refresh(&map, task.path(), &MirrorOptions::new())?;
//! assert_eq!((again.files, again.skipped), (0, 2));
//!
//! // A worker that keeps the folder: mirror once, then refresh before each task.
//! let kept = tempfile::tempdir()?;
//! let mut folder = MirroredFolder::mirror(&map, kept.path(), &MirrorOptions::new())?;
//! std::fs::remove_file(kept.path().join("top.cir"))?; // a task deletes an input
//! std::fs::write(shared.path().join("lib/b.lib"), "model b")?; // a new input appears
//! let report = folder.refresh(&MirrorOptions::new())?;
//! assert_eq!(report.files, 2);
//! assert_eq!(std::fs::read_to_string(kept.path().join("top.cir"))?, "netlist");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod copy;
mod error;
mod fsops;
mod glob;
mod map;
mod options;
mod pathser;
mod persistent;
mod returns;
mod sources;
mod translate;

pub use copy::{mirror, refresh};
pub use error::{Error, Result};
pub use fsops::{has_openat2, open_beneath};
pub use glob::{Pattern, has_glob, is_literal};
pub use map::{AbstractMirrorEntry, AbstractMirrorMap, MirrorEntry, MirrorMap};
pub use options::{
    FULL_SCAN_EVERY, MirrorOptions, MirrorReport, Progress, ProgressFn, SETTLE_WAITS,
};
pub use persistent::{
    FolderState, MANIFEST_FILE, MirroredFolder, MirroredFolders, source_events, watchable_source,
};
pub use returns::{
    FileSig, PendingFile, ResultsDir, ReturnSource, check_result_path, check_return_pattern,
};
pub use sources::{Expansion, expand_source, expand_source_traced};
pub use translate::{AbstractPath, to_abstract, to_abstract_from, to_actual};

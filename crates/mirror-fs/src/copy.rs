//! The copy engine: [`mirror`] fills a task folder from a [`MirrorMap`], [`refresh`] brings
//! an earlier mirror up to date.
//!
//! First every source glob is expanded and checked, and the target folders are created, so
//! a missing literal source is reported before anything is copied. Then a small scoped
//! thread pool walks the source folders and copies in one pass: a worker that takes a folder
//! lists it once (file types come from the listing), creates its subfolders in the
//! destination, and queues its files in batches that any worker may take. Every file
//! operation is relative to open folder descriptors, so no path is looked up twice. A file
//! is opened, `fstat`-ed once, copied with `copy_file_range` (read/write where the file
//! systems do not allow it), and given its mode and times on the open descriptor. Folder
//! modes and times are set last, deepest first, because writing into a folder changes its
//! time and a read-only folder could not be filled.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::UnlinkatFlags;
use serde::{Deserialize, Serialize};

use crate::beneath::{TaskRoot, remove_tree_at};
use crate::error::{Error, Result};
use crate::glob::{self, path_has_glob};
use crate::manifest::Sig;
use crate::map::MirrorMap;

/// A progress callback; see [`MirrorOptions::progress`].
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A test hook given a source path (see [`MirrorOptions::after_copy`]).
type PathHook = Arc<dyn Fn(&Path) + Send + Sync>;

/// A snapshot of a running mirror, given to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Files and symlinks handled so far (copied or found up to date).
    pub done: u64,
    /// Files and symlinks found so far; grows while source folders are still being listed.
    pub total: u64,
    /// Bytes copied so far.
    pub bytes: u64,
}

/// How to mirror. The default is fine for almost every use.
#[derive(Clone, Default)]
pub struct MirrorOptions {
    progress: Option<ProgressFn>,
    threads: Option<usize>,
    after_plan: Option<Arc<dyn Fn() + Send + Sync>>,
    no_inotify: bool,
    untrusted_sources: bool,
    full_scan_every: Option<std::time::Duration>,
    no_openat2: bool,
    after_copy: Option<PathHook>,
}

impl std::fmt::Debug for MirrorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorOptions")
            .field("progress", &self.progress.is_some())
            .field("threads", &self.threads)
            .field("no_inotify", &self.no_inotify)
            .field("untrusted_sources", &self.untrusted_sources)
            .field("no_openat2", &self.no_openat2)
            .finish_non_exhaustive()
    }
}

impl MirrorOptions {
    /// The defaults: no progress callback, one copy thread per core (at most 16).
    pub fn new() -> MirrorOptions {
        MirrorOptions::default()
    }

    /// Calls `f` now and then (once per batch of files per thread, and once at the end) with
    /// the progress so far. It may be called from several threads at once. Default: none.
    pub fn progress(mut self, f: impl Fn(&Progress) + Send + Sync + 'static) -> MirrorOptions {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Number of copy threads (at least 1). Default: the number of cores, at most 16.
    pub fn threads(mut self, n: usize) -> MirrorOptions {
        self.threads = Some(n.max(1));
        self
    }

    /// Test seam: runs `f` after planning, before anything is copied (used to make a
    /// source vanish at a known moment). Not part of the stable API.
    #[doc(hidden)]
    pub fn after_plan(mut self, f: impl Fn() + Send + Sync + 'static) -> MirrorOptions {
        self.after_plan = Some(Arc::new(f));
        self
    }

    /// [`crate::MirroredFolder`] watches neither the task folder nor the sources with
    /// inotify, as if the kernel refused it: every refresh looks at every source and
    /// verifies every copy. For a process that mirrors or refreshes once and exits (as
    /// `parvm mirror` does), where a watch would cost and hear nothing. Default: watch.
    pub fn no_inotify(mut self) -> MirrorOptions {
        self.no_inotify = true;
        self
    }

    /// Test seam: [`crate::MirroredFolder`] treats every source folder as if it were on a
    /// network file system (not watched, every refresh looks at every source file). Not
    /// part of the stable API.
    #[doc(hidden)]
    pub fn untrusted_sources(mut self) -> MirrorOptions {
        self.untrusted_sources = true;
        self
    }

    /// Test seam: how long [`crate::MirroredFolder`] may trust source events alone before a
    /// refresh looks at every source file again (default [`FULL_SCAN_EVERY`]). Not part of
    /// the stable API.
    #[doc(hidden)]
    pub fn full_scan_every(mut self, every: std::time::Duration) -> MirrorOptions {
        self.full_scan_every = Some(every);
        self
    }

    /// Test seam: resolves every destination folder component by component, as on a
    /// kernel without `openat2`. Not part of the stable API.
    #[doc(hidden)]
    pub fn no_openat2(mut self) -> MirrorOptions {
        self.no_openat2 = true;
        self
    }

    /// Test seam: runs `f` with the source's path after each file's data is copied and
    /// before the copy is checked against the source (used to change a source during its
    /// copy at a known moment). Not part of the stable API.
    #[doc(hidden)]
    pub fn after_copy(mut self, f: impl Fn(&Path) + Send + Sync + 'static) -> MirrorOptions {
        self.after_copy = Some(Arc::new(f));
        self
    }

    /// Opens the task folder for resolving destinations beneath it.
    pub(crate) fn task_root(&self, task_dir: &Path) -> Result<TaskRoot> {
        TaskRoot::open(task_dir, !self.no_openat2)
    }

    pub(crate) fn full_scan_interval(&self) -> std::time::Duration {
        self.full_scan_every.unwrap_or(FULL_SCAN_EVERY)
    }

    pub(crate) fn inotify_disabled(&self) -> bool {
        self.no_inotify
    }

    /// True when the source folders may be watched (if on a trusted file system).
    pub(crate) fn sources_watchable(&self) -> bool {
        !self.no_inotify && !self.untrusted_sources
    }

    pub(crate) fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| cores().min(16))
    }
}

/// How long a [`crate::MirroredFolder`] trusts inotify on local source folders alone. Two
/// changes send no event to a watched folder: an edit through a hard link made outside the
/// tree after the last full scan, and writes through `mmap`. A full stat scan at least this
/// often bounds how long such a change can go unseen, for about 0.5 ms per 2 000 files.
pub const FULL_SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// What a [`mirror`] or [`refresh`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MirrorReport {
    /// Files copied.
    pub files: u64,
    /// Folders created or updated (the target folders themselves not counted).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Files and symlinks left alone because they were up to date (refresh only).
    pub skipped: u64,
    /// Glob sources that matched nothing.
    #[serde(with = "crate::pathser::vec")]
    pub unmatched: Vec<PathBuf>,
    /// Wall time, in seconds when serialized.
    #[serde(with = "crate::pathser::seconds")]
    pub elapsed: Duration,
}

/// Copies everything `map` names into `task_dir`, entry by entry.
///
/// For each (source, target), the source glob is expanded and every match copied into
/// `<task_dir>/<target>/` (created when missing, with mode 0777 less the umask): a folder
/// recursively as `<target>/<name>/` with symlinks inside kept as symlinks, a file by
/// content as `<target>/<name>`, a symlink matched at the top level followed (only into the
/// map's roots, see [`MirrorMap::within`]). File and folder modes and modification times
/// are kept. Files already in the task folder are overwritten. Everything is written
/// beneath `task_dir` (which must exist) without following a symlink.
///
/// # Errors
///
/// [`Error::SourceMissing`] for a literal source that does not exist (a glob that matches
/// nothing is listed in [`MirrorReport::unmatched`] instead); [`Error::TargetSymlink`] for a
/// symlink on the way to a target, checked before anything is written;
/// [`Error::LinkOutsideRoots`], [`Error::DanglingLink`] or [`Error::NotCopyable`] for a
/// top-level match that is a symlink out of the roots or to nothing, or a fifo or device;
/// [`Error::NotAFolder`] when something that is not a folder stands where a folder must go;
/// [`Error::SourceVanished`] when a source disappears while being copied;
/// [`Error::SourceChanged`] when one keeps changing while it is copied; [`Error::DiskFull`]
/// when the destination is full; [`Error::TaskFolder`] when `task_dir` cannot be opened;
/// [`Error::Copy`], [`Error::Read`] or [`Error::Create`] for other failures. When copying
/// fails, the files and folders this call created are removed again.
pub fn mirror(map: &MirrorMap, task_dir: &Path, options: &MirrorOptions) -> Result<MirrorReport> {
    run(map, task_dir, options, Mode_::Full, None).map(|(report, _)| report)
}

/// Brings a task folder mirrored earlier from the same `map` up to date: copies again only
/// the files whose size, modification time or mode differ at the source, or that are missing
/// from the task folder, and symlinks whose target differs. Everything else, including files
/// the tasks wrote, is left alone. It needs no state, so any process can refresh a folder
/// another one mirrored; it looks at every source and every copy (two `stat`s per file).
/// A process that keeps the folder does better with [`crate::MirroredFolder`].
///
/// # Errors
///
/// As [`mirror`].
pub fn refresh(map: &MirrorMap, task_dir: &Path, options: &MirrorOptions) -> Result<MirrorReport> {
    run(map, task_dir, options, Mode_::Refresh, None).map(|(report, _)| report)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode_ {
    Full,
    Refresh,
}

/// Mirrors (or refreshes) `map` into `task_dir`; with `plan`, also records what was copied
/// (for a [`crate::MirroredFolder`]).
pub(crate) fn run(
    map: &MirrorMap,
    task_dir: &Path,
    options: &MirrorOptions,
    mode: Mode_,
    mut plan: Option<&mut Plan>,
) -> Result<(MirrorReport, Recorded)> {
    let start = Instant::now();
    let root = options.task_root(task_dir)?;
    let mut created = Created::default();
    let record = plan.is_some();
    let result =
        prepare(map, &root, mode, &mut created, plan.as_deref_mut()).and_then(|prepared| {
            if let Some(hook) = &options.after_plan {
                hook();
            }
            let first_id = plan.as_ref().map_or(0, |p| p.next_id);
            let ctx = Ctx {
                root: &root,
                roots: map.roots(),
            };
            execute(prepared, options, mode, &mut created, first_id, record, ctx)
        });
    match result {
        Ok((mut report, recorded)) => {
            report.elapsed = start.elapsed();
            Ok((report, recorded))
        }
        Err(e) => {
            created.undo(&root);
            Err(e)
        }
    }
}

/// What this call created, to remove it again when copying fails.
#[derive(Default)]
pub(crate) struct Created {
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) files: Vec<PathBuf>,
}

impl Created {
    /// Removes what was created, beneath the task folder and without following a symlink.
    pub(crate) fn undo(&self, root: &TaskRoot) {
        let remove = |path: &Path, dir: bool| {
            let result = root.parent_of(path, path).and_then(|(parent, name)| {
                let removed = if dir {
                    remove_tree_at(&parent, &name)
                } else {
                    nix::unistd::unlinkat(&parent, name.as_c_str(), UnlinkatFlags::NoRemoveDir)
                };
                match removed {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(Error::Create {
                        path: path.to_path_buf(),
                        source: e.into(),
                    }),
                }
            });
            // A parent already gone leaves nothing to remove.
            if let Err(e) = result
                && path_exists_beneath(root, path)
            {
                tracing::warn!("cannot remove partial copy `{}`: {e}", path.display());
            }
        };
        for file in &self.files {
            remove(file, false);
        }
        for dir in self.dirs.iter().rev() {
            remove(dir, true);
        }
    }
}

/// True when something stands at `path` beneath the task folder (a parent that is gone
/// means there is nothing left to remove).
fn path_exists_beneath(root: &TaskRoot, path: &Path) -> bool {
    root.parent_of(path, path).is_ok_and(|(parent, name)| {
        nix::sys::stat::fstatat(&parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    })
}

/// What every worker of a run shares: where the destinations are, and the roots the
/// sources are confined to.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'r> {
    pub(crate) root: &'r TaskRoot,
    pub(crate) roots: &'r [PathBuf],
}

/// A source folder and its destination folder, both open.
pub(crate) struct DirPair {
    /// Names the folder pair in a [`Recorded`] (meaningless when not recording).
    id: u32,
    src_path: PathBuf,
    dst_path: PathBuf,
    src: OwnedFd,
    dst: OwnedFd,
    /// The destination folder's identity when this pair holds it writable for its owner
    /// (see [`DirPair::open`]).
    loosened: Option<FolderId>,
    /// The source folder holds top-level matches, followed when they are symlinks (and
    /// then checked to stay inside the mirrored roots); entries of copied folders are
    /// never followed.
    top: bool,
}

impl DirPair {
    /// Opens a source folder and its destination. A destination an earlier run copied
    /// from a read-only source folder is read-only too, and its owner cannot add to it
    /// unless root: it is made writable for its owner while the pair lives, and its mode
    /// is set back when the pair is dropped (the run sets the source's mode at its end).
    ///
    /// `parent` is the pair of the folders this one was listed in, with its name there:
    /// both sides are then opened relative to it, never through a symlink. Without it, the
    /// source is opened by path (a top-level match, checked when planned) and the
    /// destination beneath the task folder.
    pub(crate) fn open(
        id: u32,
        src_path: PathBuf,
        dst_path: PathBuf,
        parent: Option<&(Arc<DirPair>, CString)>,
        ctx: Ctx<'_>,
    ) -> Result<DirPair> {
        let (src, dst) = match parent {
            Some((parent, name)) => {
                let flags = dir_flags() | OFlag::O_NOFOLLOW;
                let src = nix::fcntl::openat(&parent.src, name.as_c_str(), flags, Mode::empty())
                    .map_err(|e| match e {
                        // It was a folder when listed: replaced meanwhile.
                        Errno::ELOOP | Errno::ENOTDIR => Error::SourceVanished {
                            path: src_path.clone(),
                        },
                        e => vanished_or_read(&src_path, e),
                    })?;
                let dst = nix::fcntl::openat(&parent.dst, name.as_c_str(), flags, Mode::empty())
                    .map_err(|e| match e {
                        Errno::ELOOP | Errno::ENOTDIR => {
                            ctx.root.in_the_way(&parent.dst, name, &dst_path, &src_path)
                        }
                        e => Error::Create {
                            path: dst_path.clone(),
                            source: e.into(),
                        },
                    })?;
                (src, dst)
            }
            None => {
                let src = nix::fcntl::open(&src_path, dir_flags(), Mode::empty())
                    .map_err(|e| vanished_or_read(&src_path, e))?;
                check_opened_within(&src, &src_path, ctx.roots)?;
                (src, ctx.root.open_dir(&dst_path, &src_path)?)
            }
        };
        let loosened = loosen(&dst).map_err(|e| Error::Create {
            path: dst_path.clone(),
            source: e.into(),
        })?;
        Ok(DirPair {
            id,
            src_path,
            dst_path,
            src,
            dst,
            loosened,
            top: false,
        })
    }

    /// As [`DirPair::open`] for the parent folder of top-level file matches.
    pub(crate) fn open_top(
        id: u32,
        src_path: PathBuf,
        dst_path: PathBuf,
        ctx: Ctx<'_>,
    ) -> Result<DirPair> {
        let mut pair = DirPair::open(id, src_path, dst_path, None, ctx)?;
        pair.top = true;
        Ok(pair)
    }

    fn src_of(&self, name: &CStr) -> PathBuf {
        self.src_path.join(OsStr::from_bytes(name.to_bytes()))
    }

    fn dst_of(&self, name: &CStr) -> PathBuf {
        self.dst_path.join(OsStr::from_bytes(name.to_bytes()))
    }
}

impl Drop for DirPair {
    fn drop(&mut self) {
        if let Some(id) = self.loosened {
            tighten(&self.dst, id, &self.dst_path);
        }
    }
}

/// A folder's device and inode.
type FolderId = (u64, u64);

/// Destination folders made writable for their owner by open [`DirPair`]s of this
/// process: how many pairs hold each, and its mode before. Two pairs can share a folder
/// (two map entries with one target); the mode is set back when the last one is dropped.
static LOOSENED: Mutex<BTreeMap<FolderId, (usize, u32)>> = Mutex::new(BTreeMap::new());

/// Makes folder `dir` readable, writable and searchable for its owner while this pair
/// lives; `None` when it already was (or is not ours to change: writing into it then
/// fails with its own error).
#[allow(clippy::unnecessary_cast)]
fn loosen(dir: &OwnedFd) -> nix::Result<Option<FolderId>> {
    let st = nix::sys::stat::fstat(dir)?;
    let id = (st.st_dev as u64, st.st_ino as u64);
    // Under the lock, so a folder another pair loosened a moment ago is counted, not
    // taken for one that was writable all along.
    let mut loosened = LOOSENED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((holders, _)) = loosened.get_mut(&id) {
        *holders += 1;
        return Ok(Some(id));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o700 == 0o700 {
        return Ok(None);
    }
    match nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(mode | 0o700)) {
        Ok(()) => {
            loosened.insert(id, (1, mode));
            Ok(Some(id))
        }
        Err(Errno::EPERM) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Undoes [`loosen`] for one pair; the last pair holding the folder sets its mode back.
fn tighten(dir: &OwnedFd, id: FolderId, path: &Path) {
    let mut loosened = LOOSENED.lock().unwrap_or_else(PoisonError::into_inner);
    let Some((holders, mode)) = loosened.get_mut(&id) else {
        return;
    };
    *holders -= 1;
    if *holders > 0 {
        return;
    }
    let mode = *mode;
    loosened.remove(&id);
    if let Err(e) = nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(mode)) {
        tracing::debug!("cannot set the mode of `{}` back: {e}", path.display());
    }
}

pub(crate) fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Link,
}

/// A piece of work for the pool.
pub(crate) enum Unit {
    /// List a source folder whose destination folder exists already; `parent` is the pair
    /// it was found in, with its name there (`None` for a top-level match).
    Dir {
        id: u32,
        src: PathBuf,
        dst: PathBuf,
        parent: Option<(Arc<DirPair>, CString)>,
    },
    /// Copy these entries of one folder pair.
    Names {
        pair: Arc<DirPair>,
        names: Vec<(CString, Kind)>,
    },
}

/// Mode and times a destination folder gets at the end.
pub(crate) struct DirAttrs {
    pub(crate) from: PathBuf,
    pub(crate) to: PathBuf,
    pub(crate) mode: u32,
    pub(crate) atime: TimeSpec,
    pub(crate) mtime: TimeSpec,
}

impl DirAttrs {
    pub(crate) fn of(from: PathBuf, to: PathBuf, st: &FileStat) -> DirAttrs {
        let (atime, mtime) = times(st);
        DirAttrs {
            from,
            to,
            mode: st.st_mode & 0o7777,
            atime,
            mtime,
        }
    }
}

/// What a recording run copied: every source folder it listed and every file and symlink
/// it copied, with the source's metadata as copied.
#[derive(Default)]
pub(crate) struct Recorded {
    pub(crate) dirs: Vec<DirRecord>,
    pub(crate) batches: Vec<Batch>,
}

/// A source folder listed by a recording run.
pub(crate) struct DirRecord {
    pub(crate) id: u32,
    pub(crate) src: PathBuf,
    pub(crate) dst: PathBuf,
    /// Taken before the folder was listed, so an entry added meanwhile changes it.
    pub(crate) sig: Sig,
}

/// Entries of one folder pair copied by a recording run; `sigs[i]` belongs to `names[i]`.
pub(crate) struct Batch {
    pub(crate) dir: u32,
    pub(crate) names: Vec<(CString, Kind)>,
    pub(crate) sigs: Vec<Sig>,
}

/// What planning a recording mirror learned about the map, for the manifest.
#[derive(Default)]
pub(crate) struct Plan {
    /// The next free folder id.
    pub(crate) next_id: u32,
    /// One per map entry, in map order.
    pub(crate) entries: Vec<EntryPlan>,
    /// Parents of top-level file matches: (id, source parent, target, map entry index).
    pub(crate) top_parents: Vec<(u32, PathBuf, PathBuf, usize)>,
    /// Top-level folder matches: (id, source, destination, map entry index).
    pub(crate) roots: Vec<(u32, PathBuf, PathBuf, usize)>,
}

/// How one map entry was expanded.
pub(crate) struct EntryPlan {
    pub(crate) target: PathBuf,
    pub(crate) glob: bool,
    /// Folders the expansion read (or found missing), with their metadata before reading.
    pub(crate) folders: Vec<(PathBuf, Option<Sig>)>,
    pub(crate) matches: Vec<PathBuf>,
}

/// Most entries per batch: shared state (queue, counters, progress) is touched once per batch.
const BATCH: usize = 64;

/// Entries per batch of top-level matches (their sizes are unknown, so keep batches small).
const TOP_BATCH: usize = 8;

// ----------------------------------------------------------------------------------------
// Preparation: expand the globs, check the sources, create the target folders.

pub(crate) struct Prepared {
    pub(crate) units: Vec<Unit>,
    pub(crate) unmatched: Vec<PathBuf>,
}

fn prepare(
    map: &MirrorMap,
    root: &TaskRoot,
    mode: Mode_,
    created: &mut Created,
    mut plan: Option<&mut Plan>,
) -> Result<Prepared> {
    // Every source and every target is checked before anything is created or copied.
    let task_dir = root.path();
    let mut resolved = Vec::new();
    let mut unmatched = Vec::new();
    let mut folders = FolderCheck::new(map.roots());
    for (index, entry) in map.entries().iter().enumerate() {
        let target = if entry.target.as_os_str().is_empty() {
            task_dir.to_path_buf()
        } else {
            task_dir.join(&entry.target)
        };
        root.check(&target, &entry.source)?;
        let matches = match plan.as_deref_mut() {
            Some(plan) => {
                let mut folders = Vec::new();
                let matches = glob::expand_traced(&entry.source, &mut folders)?;
                plan.entries.push(EntryPlan {
                    target: target.clone(),
                    glob: path_has_glob(&entry.source),
                    folders,
                    matches: matches.clone(),
                });
                matches
            }
            None => glob::expand(&entry.source)?,
        };
        if matches.is_empty() {
            if path_has_glob(&entry.source) {
                unmatched.push(entry.source.clone());
                continue;
            }
            return Err(Error::SourceMissing {
                path: entry.source.clone(),
            });
        }
        let mut found = Vec::with_capacity(matches.len());
        for from in matches {
            let name = from
                .file_name()
                .map(OsStr::to_os_string)
                .ok_or_else(|| Error::Copy {
                    from: from.clone(),
                    to: target.clone(),
                    source: io::Error::new(
                        ErrorKind::InvalidInput,
                        "the source has no file name to copy it under",
                    ),
                })?;
            // A match at the top level is followed when it is a symlink into the roots.
            let meta = folders.top_match(&from)?;
            found.push((from, name, meta));
        }
        resolved.push((index, entry.source.clone(), target, found));
    }

    let ctx = Ctx {
        root,
        roots: map.roots(),
    };
    let mut units = Vec::new();
    let mut next_id = 0u32;
    for (index, source, target, found) in resolved {
        root.create_dir_all(&target, &source, created)?;
        let mut files: Vec<(CString, Kind)> = Vec::new();
        let mut files_parent: Option<(u32, PathBuf)> = None;
        for (from, name, meta) in found {
            let to = target.join(&name);
            if meta.is_dir() {
                // Its mode and times are recorded when a worker lists it.
                root.make_dir(&to, &from, mode, created)?;
                let id = next_id;
                next_id += 1;
                if let Some(plan) = plan.as_deref_mut() {
                    plan.roots.push((id, from.clone(), to.clone(), index));
                }
                units.push(Unit::Dir {
                    id,
                    src: from,
                    dst: to,
                    parent: None,
                });
            } else {
                let parent = from
                    .parent()
                    .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
                let same = files_parent.as_ref().is_some_and(|(_, p)| *p == parent);
                if !same || files.len() >= TOP_BATCH {
                    let id = match &files_parent {
                        Some((id, _)) if same => *id,
                        _ => {
                            let id = next_id;
                            next_id += 1;
                            if let Some(plan) = plan.as_deref_mut() {
                                plan.top_parents
                                    .push((id, parent.clone(), target.clone(), index));
                            }
                            id
                        }
                    };
                    flush_files(&mut units, files_parent.take(), &target, &mut files, ctx)?;
                    files_parent = Some((id, parent));
                }
                files.push((cstring(&name, &from)?, Kind::File));
            }
        }
        flush_files(&mut units, files_parent, &target, &mut files, ctx)?;
    }
    if let Some(plan) = plan {
        plan.next_id = next_id;
    }
    Ok(Prepared { units, unmatched })
}

fn flush_files(
    units: &mut Vec<Unit>,
    parent: Option<(u32, PathBuf)>,
    target: &Path,
    files: &mut Vec<(CString, Kind)>,
    ctx: Ctx<'_>,
) -> Result<()> {
    if let Some((id, parent)) = parent
        && !files.is_empty()
    {
        let pair = Arc::new(DirPair::open_top(id, parent, target.to_path_buf(), ctx)?);
        units.push(Unit::Names {
            pair,
            names: std::mem::take(files),
        });
    }
    Ok(())
}

pub(crate) fn cstring(name: &OsStr, from: &Path) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Error::Read {
        path: from.to_path_buf(),
        source: io::Error::new(ErrorKind::InvalidInput, "file name holds a NUL byte"),
    })
}

/// Checks the top-level matches of a map: what each is, and that it stays inside the
/// mirrored roots. The folders the matches are in are resolved once each.
pub(crate) struct FolderCheck<'r> {
    roots: &'r [PathBuf],
    /// Folders of matches found inside the roots already.
    inside: std::collections::HashSet<PathBuf>,
}

impl<'r> FolderCheck<'r> {
    pub(crate) fn new(roots: &'r [PathBuf]) -> FolderCheck<'r> {
        FolderCheck {
            roots,
            inside: std::collections::HashSet::new(),
        }
    }

    /// The metadata of top-level match `from`, followed when it is a symlink: refused when
    /// it resolves outside every root (a symlink, or a folder on the way that is one), when
    /// it is a symlink to nothing, or when it is neither a file nor a folder (a fifo would
    /// hang the copy, a device has no end).
    pub(crate) fn top_match(&mut self, from: &Path) -> Result<fs::Metadata> {
        let read_err = |source: io::Error| match source.kind() {
            ErrorKind::NotFound => Error::SourceMissing {
                path: from.to_path_buf(),
            },
            _ => Error::Read {
                path: from.to_path_buf(),
                source,
            },
        };
        let lmeta = fs::symlink_metadata(from).map_err(read_err)?;
        let meta = if lmeta.file_type().is_symlink() {
            let target = fs::read_link(from).map_err(read_err)?;
            let resolved = match fs::canonicalize(from) {
                Ok(resolved) => resolved,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)
                    ) =>
                {
                    return Err(Error::DanglingLink {
                        link: from.to_path_buf(),
                        target,
                    });
                }
                Err(e) => return Err(read_err(e)),
            };
            if !self.within(&resolved) {
                return Err(Error::LinkOutsideRoots {
                    link: from.to_path_buf(),
                    target: resolved,
                    roots: crate::translate::list_roots(self.roots),
                });
            }
            fs::metadata(from).map_err(read_err)?
        } else {
            if !self.roots.is_empty()
                && let Some(parent) = from.parent()
                && !self.inside.contains(parent)
            {
                let resolved = fs::canonicalize(parent).map_err(read_err)?;
                if !self.within(&resolved) {
                    return Err(Error::NoRoot {
                        path: resolved.join(from.file_name().unwrap_or_default()),
                        roots: crate::translate::list_roots(self.roots),
                    });
                }
                self.inside.insert(parent.to_path_buf());
            }
            lmeta
        };
        let kind = meta.file_type();
        if kind.is_dir() || kind.is_file() {
            return Ok(meta);
        }
        Err(Error::NotCopyable {
            path: from.to_path_buf(),
            kind: special_kind(meta.mode()),
        })
    }

    fn within(&self, resolved: &Path) -> bool {
        within(self.roots, resolved)
    }
}

/// True when `resolved` lies in one of `roots`, or when there are no roots to keep to.
pub(crate) fn within(roots: &[PathBuf], resolved: &Path) -> bool {
    roots.is_empty() || roots.iter().any(|r| resolved.starts_with(r))
}

/// Names a file type that mirroring does not copy.
pub(crate) fn special_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFLNK => "symlink",
        _ => "special file",
    }
}

/// Checks that an open top-level source (reached by path, maybe through a symlink that
/// was changed after it was checked) is inside the roots: what the descriptor is, not what
/// a path said a moment ago. Costs one `readlink` of `/proc/self/fd`; where `/proc` is not
/// mounted, the check when planning stands alone.
fn check_opened_within(fd: &OwnedFd, path: &Path, roots: &[PathBuf]) -> Result<()> {
    use std::os::fd::AsRawFd;
    if roots.is_empty() {
        return Ok(());
    }
    let Ok(resolved) = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
        return Ok(());
    };
    if within(roots, &resolved) {
        return Ok(());
    }
    Err(Error::LinkOutsideRoots {
        link: path.to_path_buf(),
        target: resolved,
        roots: crate::translate::list_roots(roots),
    })
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub(crate) fn is_file(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// The type of a listed entry of folder `dir`: as the listing says, or, where the file
/// system does not say (`DT_UNKNOWN`), from an `fstatat` that does not follow symlinks.
/// Anything but a folder, a regular file or a symlink counts as a fifo (skipped).
pub(crate) fn entry_kind(dir: &impl AsFd, entry: &nix::dir::Entry) -> nix::Result<nix::dir::Type> {
    if let Some(kind) = entry.file_type() {
        return Ok(kind);
    }
    let st = nix::sys::stat::fstatat(dir, entry.file_name(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => nix::dir::Type::Directory,
        libc::S_IFREG => nix::dir::Type::File,
        libc::S_IFLNK => nix::dir::Type::Symlink,
        _ => nix::dir::Type::Fifo,
    })
}

pub(crate) fn vanished_or_read(path: &Path, e: Errno) -> Error {
    match e {
        Errno::ENOENT => Error::SourceVanished {
            path: path.to_path_buf(),
        },
        e => Error::Read {
            path: path.to_path_buf(),
            source: e.into(),
        },
    }
}

// ----------------------------------------------------------------------------------------
// Execution: the pool.

#[derive(Default)]
struct QueueState {
    units: Vec<Unit>,
    /// Units taken and not finished yet.
    active: usize,
}

struct Shared<'r> {
    ctx: Ctx<'r>,
    queue: Mutex<QueueState>,
    ready: Condvar,
    abort: AtomicBool,
    found: AtomicU64,
    done: AtomicU64,
    bytes: AtomicU64,
    threads: usize,
    /// The next free folder id (for recording).
    next_id: AtomicU32,
    record: bool,
}

impl Shared<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A worker that panicked while holding the lock left consistent data: the queue is a
        // plain list and counter, so poisoning is ignored.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a unit, waiting while other workers may still add some; `None` when all is done.
    fn take(&self) -> Option<Unit> {
        let mut state = self.lock();
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(unit) = state.units.pop() {
                state.active += 1;
                return Some(unit);
            }
            if state.active == 0 {
                return None;
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn add(&self, units: Vec<Unit>) {
        if units.is_empty() {
            return;
        }
        let n = units.len();
        self.lock().units.extend(units);
        if n == 1 {
            self.ready.notify_one();
        } else {
            self.ready.notify_all();
        }
    }

    fn finish(&self) {
        let mut state = self.lock();
        state.active -= 1;
        if state.active == 0 && state.units.is_empty() {
            self.ready.notify_all();
        }
    }

    fn stop(&self) {
        self.abort.store(true, Ordering::Relaxed);
        let _state = self.lock();
        self.ready.notify_all();
    }
}

pub(crate) fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs the pool over `prepared`; when `record`, also returns what was copied (new folders
/// get ids from `first_id` on).
pub(crate) fn execute(
    prepared: Prepared,
    options: &MirrorOptions,
    mode: Mode_,
    created: &mut Created,
    first_id: u32,
    record: bool,
    ctx: Ctx<'_>,
) -> Result<(MirrorReport, Recorded)> {
    let Prepared { units, unmatched } = prepared;
    let found: usize = units
        .iter()
        .map(|u| {
            if let Unit::Names { names, .. } = u {
                names.len()
            } else {
                0
            }
        })
        .sum();
    let has_dirs = units.iter().any(|u| matches!(u, Unit::Dir { .. }));
    let want = options.threads.unwrap_or_else(|| cores().min(16));
    // A thread costs tens of microseconds to start: a few loose files are copied inline.
    let threads = if has_dirs {
        want
    } else {
        want.min(found.div_ceil(8)).max(1)
    };

    let shared = Shared {
        ctx,
        queue: Mutex::default(),
        ready: Condvar::new(),
        abort: AtomicBool::new(false),
        found: AtomicU64::new(0),
        done: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        threads,
        next_id: AtomicU32::new(first_id),
        record,
    };
    shared.found.store(found as u64, Ordering::Relaxed);
    shared.add(units);
    let outcomes: Vec<Worker<'_>> = if threads <= 1 {
        let mut worker = Worker::new(&shared, options, mode);
        worker.run();
        vec![worker]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (1..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut worker = Worker::new(&shared, options, mode);
                        worker.run();
                        worker
                    })
                })
                .collect();
            let mut worker = Worker::new(&shared, options, mode);
            worker.run();
            let mut outcomes = vec![worker];
            for handle in handles {
                match handle.join() {
                    Ok(worker) => outcomes.push(worker),
                    Err(_) => {
                        let mut dead = Worker::new(&shared, options, mode);
                        dead.error = Some(Error::WorkerPanicked);
                        outcomes.push(dead);
                    }
                }
            }
            outcomes
        })
    };

    let mut report = MirrorReport {
        unmatched,
        ..MirrorReport::default()
    };
    let mut first_error = None;
    let mut dirs = Vec::new();
    let mut recorded = Recorded::default();
    for mut worker in outcomes {
        recorded.dirs.append(&mut worker.rec_dirs);
        recorded.batches.append(&mut worker.rec_batches);
        created.dirs.append(&mut worker.created_dirs);
        created.files.append(&mut worker.written);
        dirs.append(&mut worker.dirs);
        report.files += worker.files;
        report.symlinks += worker.links;
        report.dirs += worker.dir_count;
        report.skipped += worker.skipped;
        report.bytes += worker.total_bytes;
        if let Some(e) = worker.error {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    // Deepest first, so setting a folder's time is not undone by work in its children.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.to.components().count()));
    for dir in &dirs {
        set_dir_attrs(dir, mode, ctx.root)?;
    }
    if mode == Mode_::Full {
        report.dirs = dirs.len() as u64;
    }
    if let Some(progress) = &options.progress {
        let n = shared.found.load(Ordering::Relaxed);
        progress(&Progress {
            done: n,
            total: n,
            bytes: report.bytes,
        });
    }
    Ok((report, recorded))
}

/// Gives a destination folder its mode and times, through its parent folder opened beneath
/// the task folder (the folder itself may be unreadable already, or not ours to open).
pub(crate) fn set_dir_attrs(dir: &DirAttrs, mode: Mode_, root: &TaskRoot) -> Result<()> {
    let err = |e: Errno| Error::Copy {
        from: dir.from.clone(),
        to: dir.to.clone(),
        source: e.into(),
    };
    let (parent, name) = root.parent_of(&dir.to, &dir.from)?;
    let st = nix::sys::stat::fstatat(&parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(err)?;
    if !is_dir(&st) {
        return Err(root.in_the_way(&parent, &name, &dir.to, &dir.from));
    }
    if mode == Mode_::Refresh
        && st.st_mode & 0o7777 == dir.mode
        && st.st_mtime == dir.mtime.tv_sec()
        && st.st_mtime_nsec == dir.mtime.tv_nsec()
    {
        return Ok(());
    }
    // It was a folder a moment ago, in a parent reached without symlinks: `fchmodat` has
    // no way not to follow one.
    nix::sys::stat::fchmodat(
        &parent,
        name.as_c_str(),
        Mode::from_bits_truncate(dir.mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(err)?;
    nix::sys::stat::utimensat(
        &parent,
        name.as_c_str(),
        &dir.atime,
        &dir.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(err)
}

struct Worker<'a> {
    shared: &'a Shared<'a>,
    options: &'a MirrorOptions,
    mode: Mode_,
    error: Option<Error>,
    /// Destination files and symlinks this worker wrote (removed again on failure).
    written: Vec<PathBuf>,
    created_dirs: Vec<PathBuf>,
    dirs: Vec<DirAttrs>,
    rec_dirs: Vec<DirRecord>,
    rec_batches: Vec<Batch>,
    buf: Vec<u8>,
    files: u64,
    links: u64,
    dir_count: u64,
    skipped: u64,
    total_bytes: u64,
}

impl<'a> Worker<'a> {
    fn new(shared: &'a Shared<'a>, options: &'a MirrorOptions, mode: Mode_) -> Worker<'a> {
        Worker {
            shared,
            options,
            mode,
            error: None,
            written: Vec::new(),
            created_dirs: Vec::new(),
            dirs: Vec::new(),
            rec_dirs: Vec::new(),
            rec_batches: Vec::new(),
            buf: Vec::new(),
            files: 0,
            links: 0,
            dir_count: 0,
            skipped: 0,
            total_bytes: 0,
        }
    }

    fn run(&mut self) {
        while let Some(unit) = self.shared.take() {
            let result = match unit {
                Unit::Dir {
                    id,
                    src,
                    dst,
                    parent,
                } => self.list(id, src, dst, parent.as_ref()),
                Unit::Names { pair, names } => self.names(&pair, names),
            };
            if let Err(e) = result {
                self.error = Some(e);
                self.shared.stop();
                return;
            }
            self.shared.finish();
        }
    }

    /// Lists one source folder: creates its subfolders, queues them, and copies its entries
    /// (the first batch here, the rest queued for any worker).
    fn list(
        &mut self,
        id: u32,
        src: PathBuf,
        dst: PathBuf,
        parent: Option<&(Arc<DirPair>, CString)>,
    ) -> Result<()> {
        let pair = Arc::new(DirPair::open(id, src, dst, parent, self.shared.ctx)?);
        // Taken before listing: an entry added while the folder is listed changes the
        // folder's time after this, so a later refresh lists it again.
        let st =
            nix::sys::stat::fstat(&pair.src).map_err(|e| vanished_or_read(&pair.src_path, e))?;
        let mut dir = nix::dir::Dir::openat(&pair.src, c".", dir_flags(), Mode::empty())
            .map_err(|e| vanished_or_read(&pair.src_path, e))?;
        let mut subdirs = Vec::new();
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| vanished_or_read(&pair.src_path, e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let kind = entry_kind(&pair.src, &entry)
                .map_err(|e| vanished_or_read(&pair.src_of(name), e))?;
            match kind {
                nix::dir::Type::Directory => {
                    self.subdir(&pair, name)?;
                    subdirs.push(Unit::Dir {
                        id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
                        src: pair.src_of(name),
                        dst: pair.dst_of(name),
                        parent: Some((Arc::clone(&pair), name.to_owned())),
                    });
                }
                nix::dir::Type::File => names.push((name.to_owned(), Kind::File)),
                nix::dir::Type::Symlink => names.push((name.to_owned(), Kind::Link)),
                _ => tracing::warn!(
                    "skipping `{}`: neither a file, a folder nor a symlink",
                    pair.src_of(name).display()
                ),
            }
        }
        drop(dir);
        if self.shared.record {
            self.rec_dirs.push(DirRecord {
                id,
                src: pair.src_path.clone(),
                dst: pair.dst_path.clone(),
                sig: Sig::of(&st),
            });
        }
        let (atime, mtime) = times(&st);
        self.dirs.push(DirAttrs {
            from: pair.src_path.clone(),
            to: pair.dst_path.clone(),
            mode: st.st_mode & 0o7777,
            atime,
            mtime,
        });
        self.shared
            .found
            .fetch_add(names.len() as u64, Ordering::Relaxed);
        // Keep the first batch; everything else goes to the queue for any worker. When work is
        // short, batches are small enough that every thread gets a share of a folder with few
        // (large) files.
        let threads = self.shared.threads;
        let batch = if self.shared.lock().units.len() + subdirs.len() >= threads {
            // Enough other folders to keep every thread busy: threads working in different
            // folders do not contend for the same folder's locks in the kernel.
            names.len().max(1)
        } else {
            names.len().div_ceil(2 * threads).clamp(1, BATCH)
        };
        let rest = if names.len() > batch {
            names.split_off(batch)
        } else {
            Vec::new()
        };
        let mut queued = subdirs;
        for chunk in rest.chunks(batch) {
            queued.push(Unit::Names {
                pair: Arc::clone(&pair),
                names: chunk.to_vec(),
            });
        }
        self.shared.add(queued);
        self.names(&pair, names)
    }

    /// Creates the destination of a subfolder; an existing folder is fine.
    fn subdir(&mut self, pair: &DirPair, name: &CStr) -> Result<()> {
        let root = self.shared.ctx.root;
        let in_the_way =
            || root.in_the_way(&pair.dst, name, &pair.dst_of(name), &pair.src_of(name));
        if self.mode == Mode_::Refresh {
            match nix::sys::stat::fstatat(&pair.dst, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_dir(&st) => return Ok(()),
                Ok(_) => return Err(in_the_way()),
                Err(_) => {}
            }
        }
        match nix::sys::stat::mkdirat(&pair.dst, name, Mode::S_IRWXU) {
            Ok(()) => {
                self.created_dirs.push(pair.dst_of(name));
                self.dir_count += 1;
                Ok(())
            }
            Err(Errno::EEXIST) => {
                match nix::sys::stat::fstatat(&pair.dst, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if is_dir(&st) => Ok(()),
                    _ => Err(in_the_way()),
                }
            }
            Err(e @ (Errno::ENOSPC | Errno::EDQUOT)) => Err(Error::DiskFull {
                from: pair.src_of(name),
                to: pair.dst_of(name),
                source: e.into(),
            }),
            Err(e) => Err(Error::Create {
                path: pair.dst_of(name),
                source: e.into(),
            }),
        }
    }

    fn names(&mut self, pair: &DirPair, names: Vec<(CString, Kind)>) -> Result<()> {
        let bytes_before = self.total_bytes;
        let mut sigs = Vec::with_capacity(if self.shared.record { names.len() } else { 0 });
        for (name, kind) in &names {
            if self.shared.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            let sig = match kind {
                Kind::File => self.file(pair, name)?,
                Kind::Link => self.link(pair, name)?,
            };
            if self.shared.record {
                sigs.push(sig.unwrap_or_default());
            }
        }
        let count = names.len();
        if self.shared.record {
            self.rec_batches.push(Batch {
                dir: pair.id,
                names,
                sigs,
            });
        }
        let done = self.shared.done.fetch_add(count as u64, Ordering::Relaxed) + count as u64;
        let bytes = self
            .shared
            .bytes
            .fetch_add(self.total_bytes - bytes_before, Ordering::Relaxed)
            + (self.total_bytes - bytes_before);
        if let Some(progress) = &self.options.progress {
            progress(&Progress {
                done,
                total: self.shared.found.load(Ordering::Relaxed),
                bytes,
            });
        }
        Ok(())
    }

    /// Copies one file (unless a stateless refresh finds it up to date); returns the
    /// source's metadata as copied.
    fn file(&mut self, pair: &DirPair, name: &CStr) -> Result<Option<Sig>> {
        if self.mode == Mode_::Refresh && up_to_date(pair, name)? {
            self.skipped += 1;
            return Ok(None);
        }
        let (bytes, st) = copy_file(
            pair,
            name,
            self.shared.ctx.roots,
            self.options.after_copy.as_deref(),
            &mut self.buf,
            &mut self.written,
        )?;
        self.total_bytes += bytes;
        self.files += 1;
        Ok(Some(Sig::of(&st)))
    }

    fn link(&mut self, pair: &DirPair, name: &CStr) -> Result<Option<Sig>> {
        let target = nix::fcntl::readlinkat(&pair.src, name)
            .map_err(|e| vanished_or_read(&pair.src_of(name), e))?;
        if self.mode == Mode_::Refresh
            && nix::fcntl::readlinkat(&pair.dst, name).is_ok_and(|t| t == target)
        {
            self.skipped += 1;
            return Ok(None);
        }
        let copy_err = |e: Errno| dst_error(pair, name, e);
        match nix::unistd::symlinkat(target.as_os_str(), &pair.dst, name) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                replace_non_dir(pair, name)?;
                nix::unistd::symlinkat(target.as_os_str(), &pair.dst, name).map_err(copy_err)?;
            }
            Err(e) => return Err(copy_err(e)),
        }
        self.written.push(pair.dst_of(name));
        let st = nix::sys::stat::fstatat(&pair.src, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| vanished_or_read(&pair.src_of(name), e))?;
        let (atime, mtime) = times(&st);
        nix::sys::stat::utimensat(
            &pair.dst,
            name,
            &atime,
            &mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(copy_err)?;
        self.links += 1;
        Ok(Some(Sig::of(&st)))
    }
}

/// Removes what stands at the destination so a file or symlink can take its place; a folder
/// is refused.
fn replace_non_dir(pair: &DirPair, name: &CStr) -> Result<()> {
    match nix::sys::stat::fstatat(&pair.dst, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if is_dir(&st) => Err(Error::Copy {
            from: pair.src_of(name),
            to: pair.dst_of(name),
            source: io::Error::new(
                ErrorKind::IsADirectory,
                "a folder is in the way; remove it from the task folder",
            ),
        }),
        _ => {
            match nix::unistd::unlinkat(&pair.dst, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(dst_error(pair, name, e)),
            }
        }
    }
}

pub(crate) fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(st.st_atime, st.st_atime_nsec),
        TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
    )
}

/// True when the destination is a regular file with the size, modification time and mode of
/// the source.
fn up_to_date(pair: &DirPair, name: &CStr) -> Result<bool> {
    let follow = if pair.top {
        AtFlags::empty()
    } else {
        AtFlags::AT_SYMLINK_NOFOLLOW
    };
    let src = nix::sys::stat::fstatat(&pair.src, name, follow)
        .map_err(|e| vanished_or_read(&pair.src_of(name), e))?;
    let Ok(dst) = nix::sys::stat::fstatat(&pair.dst, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
        return Ok(false);
    };
    Ok(is_file(&dst)
        && dst.st_size == src.st_size
        && dst.st_mtime == src.st_mtime
        && dst.st_mtime_nsec == src.st_mtime_nsec
        && dst.st_mode & 0o7777 == src.st_mode & 0o7777)
}

fn dst_error(pair: &DirPair, name: &CStr, e: Errno) -> Error {
    let (from, to) = (pair.src_of(name), pair.dst_of(name));
    match e {
        Errno::ENOSPC | Errno::EDQUOT => Error::DiskFull {
            from,
            to,
            source: e.into(),
        },
        Errno::EISDIR => Error::Copy {
            from,
            to,
            source: io::Error::new(
                ErrorKind::IsADirectory,
                "a folder is in the way; remove it from the task folder",
            ),
        },
        _ => Error::Copy {
            from,
            to,
            source: e.into(),
        },
    }
}

/// Opens the destination for writing as a new file: whatever stands there (a symlink, a
/// read-only file, a file with other hard links, maybe to a file outside the task folder)
/// is replaced, never written through. A first mirror finds nothing there and pays one
/// `openat`. Records the destination as written.
fn open_dst(pair: &DirPair, name: &CStr, mode: u32, written: &mut Vec<PathBuf>) -> Result<OwnedFd> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let create_mode = Mode::from_bits_truncate(mode & 0o777);
    let fd = match nix::fcntl::openat(&pair.dst, name, flags, create_mode) {
        Ok(fd) => fd,
        Err(Errno::EEXIST) => {
            replace_non_dir(pair, name)?;
            nix::fcntl::openat(&pair.dst, name, flags, create_mode)
                .map_err(|e| dst_error(pair, name, e))?
        }
        Err(e) => return Err(dst_error(pair, name, e)),
    };
    written.push(pair.dst_of(name));
    Ok(fd)
}

/// How many times a file that changes while it is copied is copied again before giving up.
pub(crate) const COPY_TRIES: u32 = 4;

/// Opens a source file for reading. An entry of a copied folder is never followed (it was
/// a file when listed: a symlink there now was put in meanwhile); a top-level match is,
/// and the file it reaches must be inside the roots. `O_NONBLOCK`, which regular files
/// ignore, keeps a fifo put in the file's place from hanging the open.
fn open_src(pair: &DirPair, name: &CStr, roots: &[PathBuf]) -> Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let path = || pair.src_of(name);
    match nix::fcntl::openat(&pair.src, name, flags | OFlag::O_NOFOLLOW, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP) if pair.top => {
            let fd = nix::fcntl::openat(&pair.src, name, flags, Mode::empty())
                .map_err(|e| vanished_or_read(&path(), e))?;
            check_opened_within(&fd, &path(), roots)?;
            Ok(fd)
        }
        Err(Errno::ELOOP) => Err(Error::SourceVanished { path: path() }),
        Err(e) => Err(vanished_or_read(&path(), e)),
    }
}

/// True when a source's metadata after its copy (`after`) says it did not change since it
/// was opened (`before`): size, modification and change times.
fn unchanged(before: &FileStat, after: &FileStat) -> bool {
    before.st_size == after.st_size
        && before.st_mtime == after.st_mtime
        && before.st_mtime_nsec == after.st_mtime_nsec
        && before.st_ctime == after.st_ctime
        && before.st_ctime_nsec == after.st_ctime_nsec
}

/// Copies one file by content, with its mode and times; returns the bytes copied and the
/// source's metadata as copied.
///
/// A copy is kept only when it has the size the source had when opened and the source's
/// size and times did not move meanwhile (one more `fstat`); a source written to, truncated
/// or grown during its copy is copied again, up to [`COPY_TRIES`] times, then refused with
/// [`Error::SourceChanged`] rather than leaving a copy that matches no version of it.
fn copy_file(
    pair: &DirPair,
    name: &CStr,
    roots: &[PathBuf],
    after_copy: Option<&(dyn Fn(&Path) + Send + Sync)>,
    buf: &mut Vec<u8>,
    written: &mut Vec<PathBuf>,
) -> Result<(u64, FileStat)> {
    let stat_err = |e: Errno| vanished_or_read(&pair.src_of(name), e);
    for _ in 0..COPY_TRIES {
        let src = open_src(pair, name, roots)?;
        let st = nix::sys::stat::fstat(&src).map_err(stat_err)?;
        if !is_file(&st) {
            if pair.top && !is_dir(&st) {
                return Err(Error::NotCopyable {
                    path: pair.src_of(name),
                    kind: special_kind(st.st_mode),
                });
            }
            // It was a file when listed: it was replaced meanwhile.
            return Err(Error::SourceVanished {
                path: pair.src_of(name),
            });
        }
        let mode = st.st_mode & 0o7777;
        let dst = open_dst(pair, name, mode, written)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let copied = copy_data(&src, &dst, size, buf).map_err(|e| dst_error(pair, name, e))?;
        if let Some(hook) = after_copy {
            hook(&pair.src_of(name));
        }
        let after = nix::sys::stat::fstat(&src).map_err(stat_err)?;
        if copied != size || !unchanged(&st, &after) {
            tracing::debug!(
                "`{}` changed while copied; copying again",
                pair.src_of(name).display()
            );
            continue;
        }
        nix::sys::stat::fchmod(&dst, Mode::from_bits_truncate(mode))
            .map_err(|e| dst_error(pair, name, e))?;
        let (atime, mtime) = times(&st);
        nix::sys::stat::futimens(&dst, &atime, &mtime).map_err(|e| dst_error(pair, name, e))?;
        return Ok((copied, st));
    }
    Err(Error::SourceChanged {
        path: pair.src_of(name),
        tries: COPY_TRIES,
    })
}

/// Copies `size` bytes (fewer if the source shrank meanwhile) from `src` to `dst`, in the
/// kernel where the file systems allow it.
fn copy_data(
    src: &OwnedFd,
    dst: &OwnedFd,
    size: u64,
    buf: &mut Vec<u8>,
) -> std::result::Result<u64, Errno> {
    let mut done = 0u64;
    while done < size {
        let want = usize::try_from(size - done)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match nix::fcntl::copy_file_range(src.as_fd(), None, dst.as_fd(), None, want) {
            Ok(0) => return Ok(done),
            Ok(n) => done += n as u64,
            Err(Errno::EINTR) => {}
            Err(
                Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EPERM,
            ) => break,
            Err(e) => return Err(e),
        }
    }
    if buf.is_empty() && done < size {
        buf.resize(256 * 1024, 0);
    }
    while done < size {
        let want = usize::try_from(size - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match nix::unistd::read(src.as_fd(), &mut buf[..want]) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut off = 0;
        while off < n {
            match nix::unistd::write(dst.as_fd(), &buf[off..n]) {
                Ok(m) => off += m,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        done += n as u64;
    }
    Ok(done)
}

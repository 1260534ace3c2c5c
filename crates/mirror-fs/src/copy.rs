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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::glob::{self, path_has_glob};
use crate::manifest::Sig;
use crate::map::MirrorMap;

/// A progress callback; see [`MirrorOptions::progress`].
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

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
}

impl std::fmt::Debug for MirrorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorOptions")
            .field("progress", &self.progress.is_some())
            .field("threads", &self.threads)
            .field("no_inotify", &self.no_inotify)
            .field("untrusted_sources", &self.untrusted_sources)
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

    /// Test seam: [`crate::MirroredFolder`] does not watch the task folder with inotify, as
    /// if the kernel refused it, so every refresh verifies every destination. Not part of
    /// the stable API.
    #[doc(hidden)]
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
/// `<task_dir>/<target>/` (created when missing): a folder recursively as
/// `<target>/<name>/` with symlinks inside kept as symlinks, a file by content as
/// `<target>/<name>`, a symlink matched at the top level followed. File and folder modes and
/// modification times are kept. Files already in the task folder are overwritten.
///
/// # Errors
///
/// [`Error::SourceMissing`] for a literal source that does not exist (a glob that matches
/// nothing is listed in [`MirrorReport::unmatched`] instead); [`Error::NotAFolder`] when
/// something that is not a folder stands where a folder must go; [`Error::SourceVanished`]
/// when a source disappears while being copied; [`Error::DiskFull`] when the destination is
/// full; [`Error::Copy`], [`Error::Read`] or [`Error::Create`] for other failures. When
/// copying fails, the files and folders this call created are removed again.
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
    let mut created = Created::default();
    let record = plan.is_some();
    let result =
        prepare(map, task_dir, mode, &mut created, plan.as_deref_mut()).and_then(|prepared| {
            if let Some(hook) = &options.after_plan {
                hook();
            }
            let first_id = plan.as_ref().map_or(0, |p| p.next_id);
            execute(prepared, options, mode, &mut created, first_id, record)
        });
    match result {
        Ok((mut report, recorded)) => {
            report.elapsed = start.elapsed();
            Ok((report, recorded))
        }
        Err(e) => {
            created.undo();
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
    pub(crate) fn undo(&self) {
        for file in &self.files {
            let _ = fs::remove_file(file);
        }
        for dir in self.dirs.iter().rev() {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("cannot remove partial copy `{}`: {e}", dir.display()),
            }
        }
    }
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
}

impl DirPair {
    /// Opens a source folder and its destination. A destination an earlier run copied
    /// from a read-only source folder is read-only too, and its owner cannot add to it
    /// unless root: it is made writable for its owner while the pair lives, and its mode
    /// is set back when the pair is dropped (the run sets the source's mode at its end).
    pub(crate) fn open(id: u32, src_path: PathBuf, dst_path: PathBuf) -> Result<DirPair> {
        let src = nix::fcntl::open(&src_path, dir_flags(), Mode::empty())
            .map_err(|e| vanished_or_read(&src_path, e))?;
        let create_err = |e: Errno| Error::Create {
            path: dst_path.clone(),
            source: e.into(),
        };
        let dst = nix::fcntl::open(&dst_path, dir_flags() | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(create_err)?;
        let loosened = loosen(&dst).map_err(create_err)?;
        Ok(DirPair {
            id,
            src_path,
            dst_path,
            src,
            dst,
            loosened,
        })
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
    /// List a source folder whose destination folder exists already.
    Dir { id: u32, src: PathBuf, dst: PathBuf },
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
    task_dir: &Path,
    mode: Mode_,
    created: &mut Created,
    mut plan: Option<&mut Plan>,
) -> Result<Prepared> {
    // Every source is checked before anything is created or copied.
    let mut resolved = Vec::new();
    let mut unmatched = Vec::new();
    for (index, entry) in map.entries().iter().enumerate() {
        let target = if entry.target.as_os_str().is_empty() {
            task_dir.to_path_buf()
        } else {
            task_dir.join(&entry.target)
        };
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
            // A match at the top level is followed when it is a symlink.
            let meta = fs::metadata(&from).map_err(|source| match source.kind() {
                ErrorKind::NotFound => Error::SourceMissing { path: from.clone() },
                _ => Error::Read {
                    path: from.clone(),
                    source,
                },
            })?;
            found.push((from, name, meta));
        }
        resolved.push((index, entry.source.clone(), target, found));
    }

    let mut units = Vec::new();
    let mut next_id = 0u32;
    for (index, source, target, found) in resolved {
        ensure_dir_all(&target, &source, created)?;
        let mut files: Vec<(CString, Kind)> = Vec::new();
        let mut files_parent: Option<(u32, PathBuf)> = None;
        for (from, name, meta) in found {
            let to = target.join(&name);
            if meta.is_dir() {
                // Its mode and times are recorded when a worker lists it.
                make_dir(&to, &from, mode, created)?;
                let id = next_id;
                next_id += 1;
                if let Some(plan) = plan.as_deref_mut() {
                    plan.roots.push((id, from.clone(), to.clone(), index));
                }
                units.push(Unit::Dir {
                    id,
                    src: from,
                    dst: to,
                });
            } else if meta.is_file() {
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
                    flush_files(&mut units, files_parent.take(), &target, &mut files)?;
                    files_parent = Some((id, parent));
                }
                files.push((cstring(&name, &from)?, Kind::File));
            } else {
                tracing::warn!("skipping `{}`: neither a file nor a folder", from.display());
            }
        }
        flush_files(&mut units, files_parent, &target, &mut files)?;
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
) -> Result<()> {
    if let Some((id, parent)) = parent
        && !files.is_empty()
    {
        let pair = Arc::new(DirPair::open(id, parent, target.to_path_buf())?);
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

/// Creates `dir` and its missing parents; refuses a non-folder (or a symlink) in the way.
pub(crate) fn ensure_dir_all(dir: &Path, from: &Path, created: &mut Created) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(Error::NotAFolder {
                path: dir.to_path_buf(),
                from: from.to_path_buf(),
            });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Create {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    if let Some(parent) = dir.parent() {
        ensure_dir_all(parent, from, created)?;
    }
    make_dir(dir, from, Mode_::Full, created)
}

/// Creates one folder (owner-writable until its mode is set at the end), recording it when
/// this call created it. An existing folder is fine; anything else in the way is an error.
pub(crate) fn make_dir(dir: &Path, from: &Path, mode: Mode_, created: &mut Created) -> Result<()> {
    let in_the_way = || Error::NotAFolder {
        path: dir.to_path_buf(),
        from: from.to_path_buf(),
    };
    if mode == Mode_::Refresh {
        match nix::sys::stat::lstat(dir) {
            Ok(st) if is_dir(&st) => return Ok(()),
            Ok(_) => return Err(in_the_way()),
            Err(_) => {}
        }
    }
    match nix::unistd::mkdir(dir, Mode::S_IRWXU) {
        Ok(()) => {
            created.dirs.push(dir.to_path_buf());
            Ok(())
        }
        Err(Errno::EEXIST) => match nix::sys::stat::lstat(dir) {
            Ok(st) if is_dir(&st) => Ok(()),
            Ok(_) => Err(in_the_way()),
            Err(e) => Err(Error::Create {
                path: dir.to_path_buf(),
                source: e.into(),
            }),
        },
        Err(Errno::ENOTDIR) => Err(Error::NotAFolder {
            path: dir.parent().unwrap_or(dir).to_path_buf(),
            from: from.to_path_buf(),
        }),
        Err(e @ (Errno::ENOSPC | Errno::EDQUOT)) => Err(Error::DiskFull {
            from: from.to_path_buf(),
            to: dir.to_path_buf(),
            source: e.into(),
        }),
        Err(e) => Err(Error::Create {
            path: dir.to_path_buf(),
            source: e.into(),
        }),
    }
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

#[derive(Default)]
struct Shared {
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

impl Shared {
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
        threads,
        next_id: AtomicU32::new(first_id),
        record,
        ..Shared::default()
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
        set_dir_attrs(dir, mode)?;
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

pub(crate) fn set_dir_attrs(dir: &DirAttrs, mode: Mode_) -> Result<()> {
    let err = |e: Errno| Error::Copy {
        from: dir.from.clone(),
        to: dir.to.clone(),
        source: e.into(),
    };
    if mode == Mode_::Refresh
        && let Ok(st) = nix::sys::stat::lstat(&dir.to)
        && st.st_mode & 0o7777 == dir.mode
        && st.st_mtime == dir.mtime.tv_sec()
        && st.st_mtime_nsec == dir.mtime.tv_nsec()
    {
        return Ok(());
    }
    nix::sys::stat::fchmodat(
        AT_FDCWD,
        &dir.to,
        Mode::from_bits_truncate(dir.mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(err)?;
    nix::sys::stat::utimensat(
        AT_FDCWD,
        &dir.to,
        &dir.atime,
        &dir.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(err)
}

struct Worker<'a> {
    shared: &'a Shared,
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
    fn new(shared: &'a Shared, options: &'a MirrorOptions, mode: Mode_) -> Worker<'a> {
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
                Unit::Dir { id, src, dst } => self.list(id, src, dst),
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
    fn list(&mut self, id: u32, src: PathBuf, dst: PathBuf) -> Result<()> {
        let pair = Arc::new(DirPair::open(id, src, dst)?);
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
        let in_the_way = || Error::NotAFolder {
            path: pair.dst_of(name),
            from: pair.src_of(name),
        };
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
        let (bytes, st) = copy_file(pair, name, &mut self.buf, &mut self.written)?;
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
    let src = nix::sys::stat::fstatat(&pair.src, name, AtFlags::empty())
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

/// Opens the destination for writing, replacing a symlink or a read-only file in the way
/// (never writing through a symlink). Records the destination as written.
fn open_dst(pair: &DirPair, name: &CStr, mode: u32, written: &mut Vec<PathBuf>) -> Result<OwnedFd> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let create_mode = Mode::from_bits_truncate(mode & 0o777);
    let fd = match nix::fcntl::openat(&pair.dst, name, flags, create_mode) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::EACCES | Errno::ETXTBSY) => {
            replace_non_dir(pair, name)?;
            nix::fcntl::openat(&pair.dst, name, flags | OFlag::O_EXCL, create_mode)
                .map_err(|e| dst_error(pair, name, e))?
        }
        Err(e) => return Err(dst_error(pair, name, e)),
    };
    written.push(pair.dst_of(name));
    Ok(fd)
}

/// Copies one file by content, with its mode and times; returns the bytes copied.
fn copy_file(
    pair: &DirPair,
    name: &CStr,
    buf: &mut Vec<u8>,
    written: &mut Vec<PathBuf>,
) -> Result<(u64, FileStat)> {
    // Top-level matches that are symlinks are followed here, on purpose.
    let src = nix::fcntl::openat(
        &pair.src,
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| vanished_or_read(&pair.src_of(name), e))?;
    let st = nix::sys::stat::fstat(&src).map_err(|e| vanished_or_read(&pair.src_of(name), e))?;
    if !is_file(&st) {
        // It was a file when listed: it was replaced meanwhile.
        return Err(Error::SourceVanished {
            path: pair.src_of(name),
        });
    }
    let mode = st.st_mode & 0o7777;
    let dst = open_dst(pair, name, mode, written)?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let copied = copy_data(&src, &dst, size, buf).map_err(|e| dst_error(pair, name, e))?;
    nix::sys::stat::fchmod(&dst, Mode::from_bits_truncate(mode))
        .map_err(|e| dst_error(pair, name, e))?;
    let (atime, mtime) = times(&st);
    nix::sys::stat::futimens(&dst, &atime, &mtime).map_err(|e| dst_error(pair, name, e))?;
    Ok((copied, st))
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

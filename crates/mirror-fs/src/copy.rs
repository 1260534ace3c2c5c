//! The copy engine: [`mirror`] fills a task folder from a [`MirrorMap`], [`refresh`] brings
//! an earlier mirror up to date.
//!
//! Both work in three steps. A planning pass reads the source folders once (file types come
//! from the folder listing, so plain files are not looked at yet). Then folders are created,
//! parents first. Then files and symlinks are copied in parallel on a small scoped thread
//! pool; each file is opened, `fstat`-ed, copied with `copy_file_range` (read/write where the
//! file systems do not allow it), and given its mode and times on the open descriptor.
//! Folder modes and times are set last, deepest first, because writing into a folder changes
//! its time and a read-only folder could not be filled.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag};
use nix::sys::stat::{FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::glob::{self, path_has_glob};
use crate::map::MirrorMap;

/// A progress callback; see [`MirrorOptions::progress`].
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A snapshot of a running mirror, given to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Files and symlinks handled so far (copied or found up to date).
    pub done: u64,
    /// Files and symlinks to handle in all.
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
}

impl std::fmt::Debug for MirrorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorOptions")
            .field("progress", &self.progress.is_some())
            .field("threads", &self.threads)
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
}

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
    run(map, task_dir, options, Mode_::Full)
}

/// Brings a task folder mirrored earlier from the same `map` up to date: copies again only
/// the files whose size, modification time or mode differ at the source, or that are missing
/// from the task folder, and symlinks whose target differs. Everything else, including files
/// the tasks wrote, is left alone.
///
/// # Errors
///
/// As [`mirror`].
pub fn refresh(map: &MirrorMap, task_dir: &Path, options: &MirrorOptions) -> Result<MirrorReport> {
    run(map, task_dir, options, Mode_::Refresh)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode_ {
    Full,
    Refresh,
}

struct DirJob {
    from: PathBuf,
    to: PathBuf,
    mode: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
}

enum Job {
    File { from: PathBuf, to: PathBuf },
    Link { from: PathBuf, to: PathBuf },
}

#[derive(Default)]
struct Plan {
    /// Target folders, with the source that needs each (for messages).
    targets: Vec<(PathBuf, PathBuf)>,
    dirs: Vec<DirJob>,
    jobs: Vec<Job>,
    unmatched: Vec<PathBuf>,
}

/// What this call created, to remove it again when copying fails.
#[derive(Default)]
struct Created {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Created {
    fn undo(&self) {
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

fn run(map: &MirrorMap, task_dir: &Path, options: &MirrorOptions, mode: Mode_) -> Result<MirrorReport> {
    let start = Instant::now();
    let plan = plan(map, task_dir)?;
    if let Some(hook) = &options.after_plan {
        hook();
    }
    let mut created = Created::default();
    let result = execute(&plan, options, mode, &mut created);
    match result {
        Ok(mut report) => {
            report.unmatched = plan.unmatched;
            report.elapsed = start.elapsed();
            Ok(report)
        }
        Err(e) => {
            created.undo();
            Err(e)
        }
    }
}

// ----------------------------------------------------------------------------------------
// Planning

fn plan(map: &MirrorMap, task_dir: &Path) -> Result<Plan> {
    let mut plan = Plan::default();
    for entry in map.entries() {
        let target = if entry.target.as_os_str().is_empty() { task_dir.to_path_buf() } else { task_dir.join(&entry.target) };
        plan.targets.push((target.clone(), entry.source.clone()));
        let matches = glob::expand(&entry.source)?;
        if matches.is_empty() {
            if path_has_glob(&entry.source) {
                plan.unmatched.push(entry.source.clone());
                continue;
            }
            return Err(Error::SourceMissing { path: entry.source.clone() });
        }
        for from in matches {
            let Some(name) = from.file_name() else {
                return Err(Error::Copy {
                    from: from.clone(),
                    to: target,
                    source: io::Error::new(ErrorKind::InvalidInput, "the source has no file name to copy it under"),
                });
            };
            let to = target.join(name);
            // A match at the top level is followed when it is a symlink.
            let meta = fs::metadata(&from).map_err(|source| match source.kind() {
                ErrorKind::NotFound => Error::SourceMissing { path: from.clone() },
                _ => Error::Read { path: from.clone(), source },
            })?;
            if meta.is_dir() {
                plan.dirs.push(dir_job(from.clone(), to.clone(), &meta));
                walk(&from, &to, &mut plan)?;
            } else if meta.is_file() {
                plan.jobs.push(Job::File { from, to });
            } else {
                tracing::warn!("skipping `{}`: neither a file nor a folder", from.display());
            }
        }
    }
    Ok(plan)
}

fn dir_job(from: PathBuf, to: PathBuf, meta: &fs::Metadata) -> DirJob {
    DirJob {
        from,
        to,
        mode: meta.mode() & 0o7777,
        atime: TimeSpec::new(meta.atime(), meta.atime_nsec()),
        mtime: TimeSpec::new(meta.mtime(), meta.mtime_nsec()),
    }
}

fn walk(from: &Path, to: &Path, plan: &mut Plan) -> Result<()> {
    let read_err = |source: io::Error| match source.kind() {
        ErrorKind::NotFound => Error::SourceVanished { path: from.to_path_buf() },
        _ => Error::Read { path: from.to_path_buf(), source },
    };
    let entries = fs::read_dir(from).map_err(read_err)?;
    // Sorting keeps plans (and so error reports and progress) reproducible.
    let mut entries = entries.collect::<io::Result<Vec<_>>>().map_err(read_err)?;
    entries.sort_unstable_by(|a, b| a.file_name().cmp(&b.file_name()));
    for entry in entries {
        let name = entry.file_name();
        let src = from.join(&name);
        let kind = entry.file_type().map_err(|source| Error::Read { path: src.clone(), source })?;
        let dst = to.join(&name);
        if kind.is_dir() {
            let meta = entry.metadata().map_err(|source| match source.kind() {
                ErrorKind::NotFound => Error::SourceVanished { path: src.clone() },
                _ => Error::Read { path: src.clone(), source },
            })?;
            plan.dirs.push(dir_job(src.clone(), dst.clone(), &meta));
            walk(&src, &dst, plan)?;
        } else if kind.is_file() {
            plan.jobs.push(Job::File { from: src, to: dst });
        } else if kind.is_symlink() {
            plan.jobs.push(Job::Link { from: src, to: dst });
        } else {
            tracing::warn!("skipping `{}`: neither a file, a folder nor a symlink", src.display());
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Execution

fn execute(plan: &Plan, options: &MirrorOptions, mode: Mode_, created: &mut Created) -> Result<MirrorReport> {
    let mut report = MirrorReport::default();
    for (target, from) in &plan.targets {
        ensure_dir_all(target, from, created)?;
    }
    for dir in &plan.dirs {
        if make_dir(&dir.to, &dir.from, created)? || mode == Mode_::Full {
            report.dirs += 1;
        }
    }

    let counters = Counters::default();
    let jobs = &plan.jobs;
    let threads = thread_count(options, jobs.len());
    if threads <= 1 {
        let mut worker = Worker::new(jobs, &counters, options, mode);
        let result = worker.run();
        created.files.append(&mut worker.written);
        result?;
    } else {
        let outcomes = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut worker = Worker::new(jobs, &counters, options, mode);
                        let result = worker.run();
                        (worker.written, result)
                    })
                })
                .collect();
            let mut worker = Worker::new(jobs, &counters, options, mode);
            let result = worker.run();
            let mut outcomes = vec![(worker.written, result)];
            for handle in handles {
                outcomes.push(handle.join().unwrap_or_else(|_| (Vec::new(), Err(Error::WorkerPanicked))));
            }
            outcomes
        });
        let mut first_error = None;
        let mut written = Vec::new();
        for (mut files, result) in outcomes {
            written.append(&mut files);
            if let Err(e) = result {
                // A worker that stopped because another one failed reports nothing; keep the
                // first real error.
                first_error.get_or_insert(e);
            }
        }
        created.files.append(&mut written);
        if let Some(e) = first_error {
            return Err(e);
        }
    }

    // Deepest first, so setting a folder's time is not undone by its children.
    for dir in plan.dirs.iter().rev() {
        set_dir_attrs(dir)?;
    }

    report.files = counters.files.load(Ordering::Relaxed);
    report.symlinks = counters.links.load(Ordering::Relaxed);
    report.bytes = counters.bytes.load(Ordering::Relaxed);
    report.skipped = counters.skipped.load(Ordering::Relaxed);
    if let Some(progress) = &options.progress {
        let n = jobs.len() as u64;
        progress(&Progress { done: n, total: n, bytes: report.bytes });
    }
    Ok(report)
}

fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn thread_count(options: &MirrorOptions, jobs: usize) -> usize {
    let want = options.threads.unwrap_or_else(|| cores().min(16));
    // A thread costs tens of microseconds to start; below a few files it does not pay.
    want.min(jobs.div_ceil(2)).max(1)
}

/// Creates `dir` and its missing parents; refuses a non-folder (or a symlink) in the way.
fn ensure_dir_all(dir: &Path, from: &Path, created: &mut Created) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => return Err(Error::NotAFolder { path: dir.to_path_buf(), from: from.to_path_buf() }),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Create { path: dir.to_path_buf(), source }),
    }
    if let Some(parent) = dir.parent() {
        ensure_dir_all(parent, from, created)?;
    }
    make_dir(dir, from, created).map(drop)
}

/// Creates one folder (owner-writable until its mode is set at the end); true when this call
/// created it. An existing folder is fine; anything else in the way is an error.
fn make_dir(dir: &Path, from: &Path, created: &mut Created) -> Result<bool> {
    match nix::unistd::mkdir(dir, Mode::S_IRWXU) {
        Ok(()) => {
            created.dirs.push(dir.to_path_buf());
            Ok(true)
        }
        Err(Errno::EEXIST) => match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(false),
            Ok(_) => Err(Error::NotAFolder { path: dir.to_path_buf(), from: from.to_path_buf() }),
            Err(source) => Err(Error::Create { path: dir.to_path_buf(), source }),
        },
        Err(Errno::ENOTDIR) => Err(Error::NotAFolder {
            path: dir.parent().unwrap_or(dir).to_path_buf(),
            from: from.to_path_buf(),
        }),
        Err(e @ (Errno::ENOSPC | Errno::EDQUOT)) => {
            Err(Error::DiskFull { from: from.to_path_buf(), to: dir.to_path_buf(), source: e.into() })
        }
        Err(e) => Err(Error::Create { path: dir.to_path_buf(), source: e.into() }),
    }
}

fn set_dir_attrs(dir: &DirJob) -> Result<()> {
    let err = |e: Errno| Error::Copy { from: dir.from.clone(), to: dir.to.clone(), source: e.into() };
    nix::sys::stat::fchmodat(
        AT_FDCWD,
        &dir.to,
        Mode::from_bits_truncate(dir.mode),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(err)?;
    nix::sys::stat::utimensat(AT_FDCWD, &dir.to, &dir.atime, &dir.mtime, UtimensatFlags::NoFollowSymlink).map_err(err)
}

#[derive(Default)]
struct Counters {
    next: AtomicUsize,
    abort: AtomicBool,
    done: AtomicU64,
    files: AtomicU64,
    links: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
}

/// Files per progress batch: shared counters are touched once per batch, not per file.
const BATCH: u64 = 64;

struct Worker<'a> {
    jobs: &'a [Job],
    counters: &'a Counters,
    options: &'a MirrorOptions,
    mode: Mode_,
    /// Destination files and symlinks this worker wrote (removed again on failure).
    written: Vec<PathBuf>,
    buf: Vec<u8>,
    files: u64,
    links: u64,
    bytes: u64,
    skipped: u64,
    pending: u64,
}

impl<'a> Worker<'a> {
    fn new(jobs: &'a [Job], counters: &'a Counters, options: &'a MirrorOptions, mode: Mode_) -> Worker<'a> {
        Worker {
            jobs,
            counters,
            options,
            mode,
            written: Vec::new(),
            buf: Vec::new(),
            files: 0,
            links: 0,
            bytes: 0,
            skipped: 0,
            pending: 0,
        }
    }

    fn run(&mut self) -> Result<()> {
        let result = self.run_jobs();
        self.flush();
        if result.is_err() {
            self.counters.abort.store(true, Ordering::Relaxed);
        }
        result
    }

    fn run_jobs(&mut self) -> Result<()> {
        loop {
            if self.counters.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            let i = self.counters.next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = self.jobs.get(i) else { return Ok(()) };
            match job {
                Job::File { from, to } => self.file(from, to)?,
                Job::Link { from, to } => self.link(from, to)?,
            }
            self.pending += 1;
            if self.pending >= BATCH {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let c = self.counters;
        c.files.fetch_add(std::mem::take(&mut self.files), Ordering::Relaxed);
        c.links.fetch_add(std::mem::take(&mut self.links), Ordering::Relaxed);
        let bytes = c.bytes.fetch_add(std::mem::take(&mut self.bytes), Ordering::Relaxed);
        c.skipped.fetch_add(std::mem::take(&mut self.skipped), Ordering::Relaxed);
        let done = c.done.fetch_add(std::mem::take(&mut self.pending), Ordering::Relaxed);
        if let Some(progress) = &self.options.progress {
            let total = self.jobs.len() as u64;
            progress(&Progress {
                done: c.done.load(Ordering::Relaxed).max(done),
                total,
                bytes: c.bytes.load(Ordering::Relaxed).max(bytes),
            });
        }
    }

    fn file(&mut self, from: &Path, to: &Path) -> Result<()> {
        if self.mode == Mode_::Refresh && up_to_date(from, to)? {
            self.skipped += 1;
            return Ok(());
        }
        self.bytes += copy_file(from, to, &mut self.buf, &mut self.written)?;
        self.files += 1;
        Ok(())
    }

    fn link(&mut self, from: &Path, to: &Path) -> Result<()> {
        let vanished = |e: io::Error| match e.kind() {
            ErrorKind::NotFound => Error::SourceVanished { path: from.to_path_buf() },
            _ => Error::Read { path: from.to_path_buf(), source: e },
        };
        let target = fs::read_link(from).map_err(vanished)?;
        if self.mode == Mode_::Refresh && fs::read_link(to).is_ok_and(|t| t == target) {
            self.skipped += 1;
            return Ok(());
        }
        let copy_err = |e: Errno| Error::Copy { from: from.to_path_buf(), to: to.to_path_buf(), source: e.into() };
        match nix::unistd::symlinkat(&target, AT_FDCWD, to) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                replace_non_dir(from, to)?;
                nix::unistd::symlinkat(&target, AT_FDCWD, to).map_err(copy_err)?;
            }
            Err(e @ (Errno::ENOSPC | Errno::EDQUOT)) => {
                return Err(Error::DiskFull { from: from.to_path_buf(), to: to.to_path_buf(), source: e.into() });
            }
            Err(e) => return Err(copy_err(e)),
        }
        self.written.push(to.to_path_buf());
        let st = nix::sys::stat::lstat(from).map_err(|e| vanished(e.into()))?;
        let (atime, mtime) = times(&st);
        nix::sys::stat::utimensat(AT_FDCWD, to, &atime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(copy_err)?;
        self.links += 1;
        Ok(())
    }
}

/// Removes what stands at `to` so a file or symlink can take its place; a folder is refused.
fn replace_non_dir(from: &Path, to: &Path) -> Result<()> {
    match fs::symlink_metadata(to) {
        Ok(meta) if meta.is_dir() => Err(Error::Copy {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            source: io::Error::new(ErrorKind::IsADirectory, "a folder is in the way; remove it from the task folder"),
        }),
        _ => fs::remove_file(to).or_else(|e| if e.kind() == ErrorKind::NotFound { Ok(()) } else { Err(e) }).map_err(
            |source| Error::Copy { from: from.to_path_buf(), to: to.to_path_buf(), source },
        ),
    }
}

fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (TimeSpec::new(st.st_atime, st.st_atime_nsec), TimeSpec::new(st.st_mtime, st.st_mtime_nsec))
}

/// True when `to` is a regular file with the size, modification time and mode of `from`.
fn up_to_date(from: &Path, to: &Path) -> Result<bool> {
    let src = nix::sys::stat::stat(from).map_err(|e| match e {
        Errno::ENOENT => Error::SourceVanished { path: from.to_path_buf() },
        e => Error::Read { path: from.to_path_buf(), source: e.into() },
    })?;
    let Ok(dst) = nix::sys::stat::lstat(to) else { return Ok(false) };
    Ok(dst.st_mode & libc::S_IFMT == libc::S_IFREG
        && dst.st_size == src.st_size
        && dst.st_mtime == src.st_mtime
        && dst.st_mtime_nsec == src.st_mtime_nsec
        && dst.st_mode & 0o7777 == src.st_mode & 0o7777)
}

/// Opens the destination for writing, replacing a symlink or a read-only file in the way
/// (never writing through a symlink). Records the destination as written.
fn open_dst(from: &Path, to: &Path, mode: u32, written: &mut Vec<PathBuf>) -> Result<OwnedFd> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let create_mode = Mode::from_bits_truncate(mode & 0o777);
    let fd = match nix::fcntl::open(to, flags, create_mode) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::EACCES | Errno::ETXTBSY) => {
            replace_non_dir(from, to)?;
            nix::fcntl::open(to, flags | OFlag::O_EXCL, create_mode).map_err(|e| dst_error(from, to, e))?
        }
        Err(e) => return Err(dst_error(from, to, e)),
    };
    written.push(to.to_path_buf());
    Ok(fd)
}

fn dst_error(from: &Path, to: &Path, e: Errno) -> Error {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    match e {
        Errno::ENOSPC | Errno::EDQUOT => Error::DiskFull { from, to, source: e.into() },
        _ => Error::Copy { from, to, source: e.into() },
    }
}

/// Copies one file by content, with its mode and times; returns the bytes copied.
fn copy_file(from: &Path, to: &Path, buf: &mut Vec<u8>, written: &mut Vec<PathBuf>) -> Result<u64> {
    let src = nix::fcntl::open(from, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| match e {
        Errno::ENOENT => Error::SourceVanished { path: from.to_path_buf() },
        e => Error::Read { path: from.to_path_buf(), source: e.into() },
    })?;
    let st = nix::sys::stat::fstat(&src).map_err(|e| Error::Read { path: from.to_path_buf(), source: e.into() })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::SourceVanished { path: from.to_path_buf() });
    }
    let mode = st.st_mode & 0o7777;
    let dst = open_dst(from, to, mode, written)?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let copied = copy_data(&src, &dst, size, buf).map_err(|e| dst_error(from, to, e))?;
    nix::sys::stat::fchmod(&dst, Mode::from_bits_truncate(mode)).map_err(|e| dst_error(from, to, e))?;
    let (atime, mtime) = times(&st);
    nix::sys::stat::futimens(&dst, &atime, &mtime).map_err(|e| dst_error(from, to, e))?;
    Ok(copied)
}

/// Below this size, one read and one write beat setting up an in-kernel copy.
const SMALL: u64 = 0;

/// Copies `size` bytes (fewer if the source shrank meanwhile) from `src` to `dst`.
fn copy_data(src: &OwnedFd, dst: &OwnedFd, size: u64, buf: &mut Vec<u8>) -> std::result::Result<u64, Errno> {
    let mut done = 0u64;
    if size > SMALL {
        while done < size {
            let want = usize::try_from(size - done).unwrap_or(usize::MAX).min(1 << 30);
            match nix::fcntl::copy_file_range(src.as_fd(), None, dst.as_fd(), None, want) {
                Ok(0) => return Ok(done),
                Ok(n) => done += n as u64,
                Err(Errno::EINTR) => {}
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EPERM) => break,
                Err(e) => return Err(e),
            }
        }
        if done >= size {
            return Ok(done);
        }
    }
    if buf.is_empty() {
        buf.resize(256 * 1024, 0);
    }
    while done < size {
        let want = usize::try_from(size - done).unwrap_or(usize::MAX).min(buf.len());
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

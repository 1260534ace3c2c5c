//! The pool that runs a mirror's work units: scoped threads sharing one queue, each
//! listing source folders, creating destination folders and copying entries in batches,
//! then folder modes and times set deepest first. It must not know how units were planned
//! beyond [`Unit`], nor how one file is copied (see `file`).

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{Mode, UtimensatFlags};

use super::file::{copy_file, dst_error, replace_non_dir, up_to_date};
use super::plan::{BATCH, Batch, DirAttrs, DirRecord, Prepared, Recorded, Unit};
use crate::error::{Error, Result};
use crate::fsops::{
    Created, Ctx, DirPair, Kind, MadeAt, Mode_, Sig, TaskRoot, dir_flags, entry_kind, is_dir,
    times, vanished_or_read,
};
use crate::options::{MirrorOptions, MirrorReport, Progress, cores};

#[derive(Default)]
struct QueueState {
    units: Vec<Unit>,
    /// Units taken and not finished yet.
    active: usize,
    /// The waves still to come, the next one last: each starts when the one before has
    /// finished.
    later: Vec<Vec<Unit>>,
    /// The number of the wave running (0 first): every unit taken belongs to it, the
    /// subfolders found while it runs too.
    wave: u32,
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

    /// Takes a unit, with the number of its wave, waiting while other workers may still
    /// add some; `None` when all is done.
    fn take(&self) -> Option<(Unit, u32)> {
        let mut state = self.lock();
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(unit) = state.units.pop() {
                state.active += 1;
                return Some((unit, state.wave));
            }
            if state.active == 0 {
                let next = state.later.pop()?;
                state.units = next;
                state.wave += 1;
                self.ready.notify_all();
                continue;
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
    let Prepared { waves, unmatched } = prepared;
    let found: usize = waves
        .iter()
        .flatten()
        .map(|u| {
            if let Unit::Names { names, .. } = u {
                names.len()
            } else {
                0
            }
        })
        .sum();
    let has_dirs = waves
        .iter()
        .flatten()
        .any(|u| matches!(u, Unit::Dir { .. }));
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
    let mut waves = waves.into_iter().rev();
    let first = waves.next_back().unwrap_or_default();
    shared.lock().later = waves.collect();
    shared.add(first);
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

    // Deepest first, so setting a folder's time is not undone by work in its children; a
    // folder two matches land on takes the mode and times of the later one, as its files
    // do (each is in a later wave), whichever thread listed which.
    dirs.sort_by_key(|d| (std::cmp::Reverse(d.to.components().count()), d.wave));
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
        while let Some((unit, wave)) = self.shared.take() {
            let result = match unit {
                Unit::Dir {
                    id,
                    src,
                    dst,
                    parent,
                } => self.list(id, (src, dst), parent.as_ref(), wave),
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
        (src, dst): (PathBuf, PathBuf),
        parent: Option<&(Arc<DirPair>, CString)>,
        wave: u32,
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
            wave,
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

    fn names(&mut self, pair: &DirPair, mut names: Vec<(CString, Kind)>) -> Result<()> {
        let bytes_before = self.total_bytes;
        let mut sigs = Vec::with_capacity(if self.shared.record { names.len() } else { 0 });
        let mut made = Vec::with_capacity(sigs.capacity());
        let mut gone = Vec::new();
        for (i, (name, kind)) in names.iter().enumerate() {
            if self.shared.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            let copied = match kind {
                Kind::File => self
                    .file(pair, name)
                    .map(|copied| copied.map_or((None, None), |(sig, made)| (Some(sig), made))),
                Kind::Link => self.link(pair, name).map(|sig| (sig, None)),
            };
            let (sig, made_at) = match copied {
                Ok(copied) => copied,
                Err(Error::SourceVanished { .. }) if is_gone(pair, name) => {
                    gone.push(i);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.shared.record {
                sigs.push(sig.unwrap_or_default());
                made.push(made_at);
            }
        }
        self.shared
            .found
            .fetch_sub(gone.len() as u64, Ordering::Relaxed);
        for &i in gone.iter().rev() {
            let (name, _) = names.remove(i);
            tracing::debug!(
                "`{}` was gone when it was to be copied; mirrored as the folder is now, without it",
                pair.src_of(&name).display()
            );
        }
        let count = names.len();
        if self.shared.record {
            self.rec_batches.push(Batch {
                dir: pair.id,
                names,
                sigs,
                made,
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
    /// source's metadata as copied and the copy's change time once made.
    fn file(&mut self, pair: &DirPair, name: &CStr) -> Result<Option<(Sig, Option<MadeAt>)>> {
        if self.mode == Mode_::Refresh && up_to_date(pair, name)? {
            self.skipped += 1;
            return Ok(None);
        }
        let (bytes, st, made) = copy_file(
            pair,
            name,
            self.shared.ctx.roots,
            self.options.after_copy.as_deref(),
            &mut self.buf,
            &mut self.written,
            self.shared.record,
        )?;
        self.total_bytes += bytes;
        self.files += 1;
        Ok(Some((Sig::of(&st), made)))
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

/// Whether entry `name` of a listed source folder (not a match of the map itself, which
/// the map names) no longer exists: deleted, or renamed away as an editor's temporary file,
/// between the listing and its copy. The folder is then mirrored as it is now, without it,
/// as if listed a moment later; an entry replaced by another kind is still an error.
fn is_gone(pair: &DirPair, name: &CStr) -> bool {
    !pair.top
        && nix::sys::stat::fstatat(&pair.src, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            == Err(Errno::ENOENT)
}

//! The scan of a [`crate::MirroredFolder`] refresh: one `stat` per source entry, spread
//! over a small pool of threads that lives as long as the folder.
//!
//! The pool never makes a refresh slower than one thread would: the calling thread claims
//! chunks like the helpers do, and at the end it waits only for chunks a helper has claimed
//! and not finished, never for a helper that has not started (on a busy machine a woken
//! helper may get a core only milliseconds later). Keeping the threads also saves starting
//! them on every refresh.
//!
//! It must not know what a changed entry leads to (that is `changes`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::Mode;

use super::manifest::{Chunk, Manifest};
use crate::error::Error;
use crate::fsops::{Sig, TaskRoot, dir_flags, made_at, vanished_or_read};

/// Below this many entries per thread, another thread costs more than it saves.
pub(crate) const ENTRIES_PER_THREAD: usize = 512;

/// Helper threads for the scan, parked between refreshes.
#[derive(Debug)]
pub(crate) struct ScanPool {
    shared: Arc<PoolShared>,
    handles: Vec<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct PoolShared {
    state: Mutex<PoolState>,
    wake: Condvar,
    done_lock: Mutex<()>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct PoolState {
    generation: u64,
    job: Option<Arc<Job>>,
    quit: bool,
}

/// One scan: chunks are claimed with `next`; `finished` counts chunks done by anyone.
#[derive(Debug)]
struct Job {
    manifest: Arc<Manifest>,
    root: Arc<TaskRoot>,
    verify: bool,
    next: AtomicUsize,
    finished: AtomicUsize,
    abort: AtomicBool,
    out: Mutex<Scan>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stay consistent even if a holder panicked (plain values).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Job {
    fn work(&self, shared: &PoolShared) {
        let m = &*self.manifest;
        let n = m.chunks.len();
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return;
            }
            if !self.abort.load(Ordering::Relaxed) {
                let mut local = Scan::default();
                scan_chunk(m, &self.root, &m.chunks[i], self.verify, &mut local);
                if local.error.is_some() {
                    self.abort.store(true, Ordering::Relaxed);
                }
                if !local.is_empty() {
                    lock(&self.out).merge(local);
                }
            }
            if self.finished.fetch_add(1, Ordering::AcqRel) + 1 == n {
                let _guard = lock(&shared.done_lock);
                shared.done.notify_all();
            }
        }
    }
}

impl ScanPool {
    /// A pool with `helpers` threads (the caller is one more). Threads that cannot be
    /// started are done without.
    pub(crate) fn new(helpers: usize) -> ScanPool {
        let shared = Arc::new(PoolShared::default());
        let mut handles = Vec::new();
        for k in 0..helpers {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("parvm-scan-{k}"))
                .spawn(move || helper(&shared));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    tracing::debug!("cannot start a scan thread ({e}); scanning with fewer");
                    break;
                }
            }
        }
        ScanPool { shared, handles }
    }

    /// Scans every chunk of `m`; `threads` is how many threads may work (the caller too).
    pub(crate) fn scan(
        &self,
        m: &Arc<Manifest>,
        root: &Arc<TaskRoot>,
        verify: bool,
        threads: usize,
    ) -> Scan {
        let want = threads
            .min(m.chunks.len())
            .min(m.entries.len().div_ceil(ENTRIES_PER_THREAD));
        if want <= 1 || self.handles.is_empty() {
            return scan_alone(m, root, verify);
        }
        let job = Arc::new(Job {
            manifest: Arc::clone(m),
            root: Arc::clone(root),
            verify,
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            abort: AtomicBool::new(false),
            out: Mutex::new(Scan::default()),
        });
        {
            let mut state = lock(&self.shared.state);
            state.generation += 1;
            state.job = Some(Arc::clone(&job));
        }
        // All helpers wake; with fewer wanted, the extra ones find nothing left sooner or later.
        self.shared.wake.notify_all();
        job.work(&self.shared);
        let n = m.chunks.len();
        if job.finished.load(Ordering::Acquire) < n {
            let mut guard = lock(&self.shared.done_lock);
            while job.finished.load(Ordering::Acquire) < n {
                guard = self
                    .shared
                    .done
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        lock(&self.shared.state).job = None;
        std::mem::take(&mut *lock(&job.out))
    }
}

/// Scans every chunk of `m` on the calling thread.
pub(crate) fn scan_alone(m: &Manifest, root: &TaskRoot, verify: bool) -> Scan {
    let mut out = Scan::default();
    for chunk in &m.chunks {
        scan_chunk(m, root, chunk, verify, &mut out);
        if out.error.is_some() {
            break;
        }
    }
    out
}

/// Scans only `chunks` (what the source watch named) on the calling thread: they are few.
pub(crate) fn scan_some(m: &Manifest, root: &TaskRoot, chunks: &[Chunk]) -> Scan {
    let mut out = Scan::default();
    for chunk in chunks {
        scan_chunk(m, root, chunk, false, &mut out);
        if out.error.is_some() {
            break;
        }
    }
    out
}

fn helper(shared: &PoolShared) {
    let mut seen = 0;
    loop {
        let job = {
            let mut state = lock(&shared.state);
            while state.generation == seen && !state.quit {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.quit {
                return;
            }
            seen = state.generation;
            state.job.clone()
        };
        if let Some(job) = job {
            job.work(shared);
        }
    }
}

impl Drop for ScanPool {
    fn drop(&mut self) {
        lock(&self.shared.state).quit = true;
        self.shared.wake.notify_all();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Entries whose source (or, when verifying, destination) differs: (entry, new type bits
    /// of the source, 0 when only the destination differs).
    pub(crate) changed: Vec<(u32, u32)>,
    /// Entries gone at the source.
    pub(crate) gone: Vec<u32>,
    /// Copied folders whose own metadata changed (entries added or removed, mode).
    pub(crate) dirs_changed: Vec<u32>,
    /// Folders that cannot be opened at the source any more.
    pub(crate) dirs_gone: Vec<(u32, Errno)>,
    /// When verifying: folders whose destination is missing.
    pub(crate) dst_missing: Vec<u32>,
    /// When verifying: folders whose destination mode or time differ from the source's.
    pub(crate) dir_attrs: Vec<u32>,
    pub(crate) error: Option<Error>,
}

impl Scan {
    fn is_empty(&self) -> bool {
        self.changed.is_empty()
            && self.gone.is_empty()
            && self.dirs_changed.is_empty()
            && self.dirs_gone.is_empty()
            && self.dst_missing.is_empty()
            && self.dir_attrs.is_empty()
            && self.error.is_none()
    }

    fn merge(&mut self, other: Scan) {
        self.changed.extend(other.changed);
        self.gone.extend(other.gone);
        self.dirs_changed.extend(other.dirs_changed);
        self.dirs_gone.extend(other.dirs_gone);
        self.dst_missing.extend(other.dst_missing);
        self.dir_attrs.extend(other.dir_attrs);
        if self.error.is_none() {
            self.error = other.error;
        }
    }
}

fn scan_chunk(m: &Manifest, root: &TaskRoot, chunk: &Chunk, verify: bool, out: &mut Scan) {
    let d = &m.dirs[chunk.dir as usize];
    let src = match nix::fcntl::open(&d.src, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(e @ (Errno::ENOENT | Errno::ENOTDIR)) => {
            if chunk.first {
                out.dirs_gone.push((chunk.dir, e));
            }
            return;
        }
        Err(e) => {
            out.error = Some(vanished_or_read(&d.src, e));
            return;
        }
    };
    let mut src_dir_st = None;
    if chunk.first && !d.is_top() {
        match nix::sys::stat::fstat(&src) {
            Ok(st) => {
                if Sig::of(&st) != d.sig {
                    out.dirs_changed.push(chunk.dir);
                }
                src_dir_st = Some(st);
            }
            Err(e) => {
                out.error = Some(vanished_or_read(&d.src, e));
                return;
            }
        }
    }
    let dst = if verify {
        // Beneath the task folder, through no symlink: a copy reached through one a task
        // planted is not the copy; missing, it is made again (and the symlink refused).
        match root.open_dir(&d.dst, &d.src) {
            Ok(fd) => {
                if let Some(s) = src_dir_st
                    && !nix::sys::stat::fstat(&fd).is_ok_and(|t| {
                        t.st_mode & 0o7777 == s.st_mode & 0o7777
                            && t.st_mtime == s.st_mtime
                            && t.st_mtime_nsec == s.st_mtime_nsec
                    })
                {
                    out.dir_attrs.push(chunk.dir);
                }
                Some(fd)
            }
            Err(_) => {
                if chunk.first {
                    out.dst_missing.push(chunk.dir);
                }
                None
            }
        }
    } else {
        None
    };
    // Top-level matches are followed when they are symlinks, as when they were copied.
    let flags = if d.is_top() {
        AtFlags::empty()
    } else {
        AtFlags::AT_SYMLINK_NOFOLLOW
    };
    for i in chunk.start..chunk.end {
        let e = &m.entries[i as usize];
        match nix::sys::stat::fstatat(&src, e.name.as_c_str(), flags) {
            Ok(st) => {
                let sig = Sig::of(&st);
                if sig != e.sig {
                    out.changed.push((i, sig.file_type()));
                    continue;
                }
            }
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                out.gone.push(i);
                continue;
            }
            Err(err) => {
                out.error = Some(Error::Read {
                    path: d.src.join(OsStr::from_bytes(e.name.to_bytes())),
                    source: err.into(),
                });
                return;
            }
        }
        if verify {
            let intact = dst.as_ref().is_some_and(|dst| {
                nix::sys::stat::fstatat(dst, e.name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| {
                        e.sig.copied_as(&st) && e.made.is_none_or(|made| made == made_at(&st))
                    })
            });
            if !intact {
                out.changed.push((i, 0));
            }
        }
    }
}

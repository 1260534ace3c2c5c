//! How to mirror and what a mirror did: [`MirrorOptions`] (with the test seams the copy
//! engine and the persistent refresh read), [`Progress`], [`MirrorReport`] and
//! [`FULL_SCAN_EVERY`]. It owns no file-system work and must not know how a copy or a
//! refresh runs; the one thing it opens is the task folder, through
//! [`crate::fsops::TaskRoot`], as the options say.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fsops::TaskRoot;

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
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) threads: Option<usize>,
    pub(crate) after_plan: Option<Arc<dyn Fn() + Send + Sync>>,
    pub(crate) no_inotify: bool,
    pub(crate) untrusted_sources: bool,
    pub(crate) full_scan_every: Option<std::time::Duration>,
    pub(crate) no_openat2: bool,
    pub(crate) after_copy: Option<PathHook>,
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

/// The waits before each new look at a source that moved while it was read (a file still
/// being written, an entry gone between a listing and its reading), so that a save in
/// progress, an editor's or a program's, finishes first: about half a second in all before
/// mirroring, or shipping's scan, gives up and names the file.
pub const SETTLE_WAITS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(400),
];

/// What a [`crate::mirror`] or [`crate::refresh`] did.
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
    /// Entries removed because a fresh mirror would not have them: what the last task
    /// wrote, copies of sources gone since ([`crate::MirroredFolder::renew`] only).
    pub removed: u64,
    /// Glob sources that matched nothing.
    #[serde(with = "crate::pathser::vec")]
    pub unmatched: Vec<PathBuf>,
    /// Wall time, in seconds when serialized.
    #[serde(with = "crate::pathser::seconds")]
    pub elapsed: Duration,
}

/// The cores this process may use, asked once.
pub(crate) fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

//! [`MirroredFolder`]: a task folder kept across tasks, with a manifest of what was copied
//! and an inotify watch on the copies, so bringing it up to date costs one `stat` per
//! source file.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::Mode;

use crate::copy::{self, DirAttrs, Plan, Prepared, Recorded, Unit};
use crate::error::{Error, Result};
use crate::fsops::{
    Created, DirPair, Kind, Mode_, Sig, TaskRoot, dir_flags, entry_kind, vanished_or_read,
};
use crate::glob;
use crate::manifest::{Chunk, DirRec, EntryRec, GlobRec, Manifest, Origin};
use crate::map::MirrorMap;
use crate::options::{MirrorOptions, MirrorReport};
use crate::scan::{self, Scan, ScanPool};
use crate::srcwatch::{SourceWatch, Untrusted};
use crate::watch::{Broken, Suspects, Watch};

/// A task folder that stays across tasks (persistent storage), kept up to date with the
/// sources at a fraction of the cost of mirroring it again.
///
/// [`MirroredFolder::mirror`] copies what the map names, like [`crate::mirror`], and
/// remembers, for every copied file and symlink, the source's size, times, inode and mode as
/// copied, and for every copied source folder its metadata. It then watches the destination
/// folders with inotify. [`MirroredFolder::refresh`], called before each next task:
///
/// - looks at every source file once (one `stat`, in parallel) and copies again those that
///   changed; but when every copied source folder is on a local file system (tmpfs, ext4,
///   xfs, btrfs, ...), whose changes all go through this kernel, inotify on the source
///   folders names what changed and only that is looked at (plus files with hard links and
///   top-level matches); a source folder whose time changed is listed again and new entries
///   are copied;
///   a glob is expanded again when a folder it read changed;
/// - copies again every mirrored file or symlink the tasks deleted, renamed, replaced,
///   edited or `chmod`-ed (inotify names them), and restores the mode and times of mirrored
///   folders the tasks changed;
/// - leaves alone the files the tasks wrote that are not mirrored entries, and the copies of
///   entries that are gone at the source (like [`crate::mirror`], it never deletes).
///
/// When inotify is not available (the kernel's limits), or its queue overflowed, or a
/// mirrored folder was deleted or moved in the task folder, that round verifies every
/// destination against the manifest as well (two `stat`s per file, like [`crate::refresh`]).
///
/// Not noticed: a mirrored file changed through a hard link the task made outside the
/// mirrored folders, and a source whose content changed while its size, modification time,
/// change time and inode all stayed the same. While the sources are watched, a source
/// written through a shared memory mapping, or through a hard link made outside the watched
/// folders after the last full scan, is seen only by the next full scan, at most
/// [`crate::FULL_SCAN_EVERY`] later (see the crate docs).
///
/// ```
/// use parvm_mirror_fs::{MirrorMap, MirrorOptions, MirroredFolder};
///
/// let shared = tempfile::tempdir()?;
/// std::fs::write(shared.path().join("top.cir"), "netlist v1")?;
/// let map = MirrorMap::new().entry(shared.path().join("top.cir"), ".")?;
/// let task = tempfile::tempdir()?;
/// let options = MirrorOptions::new();
///
/// let mut folder = MirroredFolder::mirror(&map, task.path(), &options)?;
/// assert_eq!(folder.report().files, 1);
/// // A task edits its copy; the next refresh restores it.
/// std::fs::write(task.path().join("top.cir"), "scribbled")?;
/// let report = folder.refresh(&options)?;
/// assert_eq!(report.files, 1);
/// assert_eq!(std::fs::read_to_string(task.path().join("top.cir"))?, "netlist v1");
/// // Nothing changed: nothing copied.
/// assert_eq!(folder.refresh(&options)?.files, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MirroredFolder {
    map: MirrorMap,
    task_dir: PathBuf,
    manifest: Arc<Manifest>,
    /// Scan helpers (none for small folders or one thread).
    pool: Option<ScanPool>,
    watch: Option<Watch>,
    /// Verify every destination next time (no watch, or it missed events, or a refresh failed).
    verify_all: bool,
    /// Events seen after the last refresh that were not its own writes.
    pending: Suspects,
    inotify: bool,
    /// Inotify on the source folders, when all are on trusted local file systems.
    sources: Option<SourceWatch>,
    /// The source watch has heard every change since the last full scan: the next refresh
    /// looks only at what it names.
    sources_armed: bool,
    /// Source entries the last refresh looked at.
    scanned: usize,
    /// When every source file was last looked at (a mirror or a full scan).
    last_full_scan: Instant,
    report: MirrorReport,
}

impl MirroredFolder {
    /// Mirrors `map` into `task_dir` (see [`crate::mirror`]), records what was copied, and
    /// starts watching the copies.
    ///
    /// # Errors
    ///
    /// As [`crate::mirror`]. Failing to watch is not an error: refreshes then verify every
    /// destination.
    pub fn mirror(
        map: &MirrorMap,
        task_dir: &Path,
        options: &MirrorOptions,
    ) -> Result<MirroredFolder> {
        let mut plan = Plan::default();
        let (report, recorded) = copy::run(map, task_dir, options, Mode_::Full, Some(&mut plan))?;
        let manifest = initial_manifest(map, plan, recorded);
        let inotify = !options.inotify_disabled();
        let watch = if inotify {
            start_watch(&manifest)
        } else {
            None
        };
        let threads = options.thread_count();
        let pool = (threads > 1 && manifest.entries.len() >= 2 * scan::ENTRIES_PER_THREAD)
            .then(|| ScanPool::new(threads - 1));
        Ok(MirroredFolder {
            map: map.clone(),
            task_dir: task_dir.to_path_buf(),
            verify_all: watch.is_none(),
            manifest: Arc::new(manifest),
            pool,
            watch,
            pending: Suspects::default(),
            inotify,
            // Armed by the first refresh, before its full scan: armed now, it would still
            // miss what changed during the copy, and the mirror would pay for it.
            sources: None,
            sources_armed: false,
            scanned: 0,
            last_full_scan: Instant::now(),
            report,
        })
    }

    /// Brings the folder up to date with the sources and undoes the tasks' changes to
    /// mirrored entries (see [`MirroredFolder`]). [`MirrorReport::skipped`] counts the
    /// entries found up to date.
    ///
    /// # Errors
    ///
    /// [`Error::SourceMissing`] when a literal source of the map is gone;
    /// [`Error::SourceVanished`], [`Error::NotAFolder`], [`Error::DiskFull`],
    /// [`Error::Copy`], [`Error::Read`] or [`Error::Create`] as for [`crate::mirror`]. After
    /// an error the next refresh verifies every destination.
    pub fn refresh(&mut self, options: &MirrorOptions) -> Result<MirrorReport> {
        let start = Instant::now();
        let targets = self.source_targets(options);
        let mut suspects = std::mem::take(&mut self.pending);
        let mut verify = self.verify_all;
        let mut rewatch = false;
        if let Some(watch) = &self.watch
            && watch.drain(&self.manifest, &mut suspects, None).is_err()
        {
            verify = true;
            rewatch = true;
        }
        if rewatch {
            // Events are not trusted any more; a fresh watch starts after this round.
            self.watch = None;
        }
        self.verify_all = true;
        let mut report = self.refresh_inner(options, verify, suspects, targets.as_deref())?;
        self.sync_sources();
        if self.watch.is_none() && self.inotify {
            self.watch = start_watch(&self.manifest);
            self.pending = Suspects::default();
        }
        self.verify_all = self.watch.is_none();
        report.elapsed = start.elapsed();
        self.report = report.clone();
        Ok(report)
    }

    /// Keeps what was copied, and from what (each source's device, inode, size, times and
    /// mode), in the file [`MANIFEST_FILE`] of the task folder, so that another process can
    /// [`MirroredFolder::load`] it and refresh the folder as this one would.
    ///
    /// # Errors
    ///
    /// [`Error::Manifest`] when the file cannot be written; [`Error::TaskFolder`] when the
    /// task folder cannot be opened.
    pub fn save(&self) -> Result<()> {
        let saved = saved::Saved::of(&self.map, &self.task_dir, &self.manifest);
        let bytes = rmp_serde::to_vec(&saved).map_err(|e| Error::Manifest {
            path: self.task_dir.join(MANIFEST_FILE),
            source: std::io::Error::other(e),
        })?;
        TaskRoot::open(&self.task_dir, true)?
            .write_file(MANIFEST_NAME, &bytes)
            .map_err(|source| Error::Manifest {
                path: self.task_dir.join(MANIFEST_FILE),
                source,
            })
    }

    /// The folder [`MirroredFolder::save`] left in `task_dir` after mirroring `map`, ready
    /// for [`MirroredFolder::refresh`]; `None` when there is no manifest, or one of another
    /// map, of another parvm version, or that does not hold up (a source outside the map's
    /// roots, a destination outside the task folder): then only a new
    /// [`MirroredFolder::mirror`] knows what the folder holds. The first refresh looks at
    /// every source and every copy.
    ///
    /// # Errors
    ///
    /// [`Error::TaskFolder`] when the task folder cannot be opened, [`Error::Read`] when
    /// the manifest cannot be read.
    pub fn load(
        map: &MirrorMap,
        task_dir: &Path,
        options: &MirrorOptions,
    ) -> Result<Option<MirroredFolder>> {
        let root = options.task_root(task_dir)?;
        let Some(bytes) = root
            .read_file(MANIFEST_NAME)
            .map_err(|source| Error::Read {
                path: task_dir.join(MANIFEST_FILE),
                source,
            })?
        else {
            return Ok(None);
        };
        let manifest = match rmp_serde::from_slice::<saved::Saved>(&bytes) {
            Ok(saved) => saved.into_manifest(map, task_dir),
            Err(e) => {
                tracing::warn!(
                    "cannot decode `{}` ({e}); mirroring everything again",
                    task_dir.join(MANIFEST_FILE).display()
                );
                None
            }
        };
        let Some(manifest) = manifest else {
            return Ok(None);
        };
        let threads = options.thread_count();
        let pool = (threads > 1 && manifest.entries.len() >= 2 * scan::ENTRIES_PER_THREAD)
            .then(|| ScanPool::new(threads - 1));
        Ok(Some(MirroredFolder {
            map: map.clone(),
            task_dir: task_dir.to_path_buf(),
            manifest: Arc::new(manifest),
            pool,
            watch: None,
            verify_all: true,
            pending: Suspects::default(),
            inotify: !options.inotify_disabled(),
            sources: None,
            sources_armed: false,
            scanned: 0,
            last_full_scan: Instant::now(),
            report: MirrorReport::default(),
        }))
    }

    /// What the last [`MirroredFolder::mirror`] or [`MirroredFolder::refresh`] did.
    pub fn report(&self) -> &MirrorReport {
        &self.report
    }

    /// The map this folder mirrors. A task with another map needs a new
    /// [`MirroredFolder::mirror`].
    pub fn map(&self) -> &MirrorMap {
        &self.map
    }

    /// The task folder.
    pub fn task_dir(&self) -> &Path {
        &self.task_dir
    }

    /// Number of mirrored files and symlinks the folder keeps up to date.
    pub fn entries(&self) -> usize {
        self.manifest.entries.len()
    }

    /// True when inotify watches the copies; false when every refresh verifies every
    /// destination (inotify refused or disabled).
    pub fn is_watching(&self) -> bool {
        self.watch.is_some()
    }

    /// Test seam: true when inotify watches the source folders (all on trusted local file
    /// systems). Not part of the stable API.
    #[doc(hidden)]
    pub fn is_watching_sources(&self) -> bool {
        self.sources.is_some()
    }

    /// Test seam: how many source entries the last refresh looked at (`stat`). Not part of
    /// the stable API.
    #[doc(hidden)]
    pub fn last_scanned(&self) -> usize {
        self.scanned
    }

    /// The scan chunks to look at instead of every source entry, when the source watch has
    /// heard every change since the last full scan; `None`: scan everything. A missing or
    /// broken watch is armed again here, before the full scan, so the two leave no gap.
    fn source_targets(&mut self, options: &MirrorOptions) -> Option<Vec<Chunk>> {
        let armed = std::mem::replace(&mut self.sources_armed, false);
        if !options.sources_watchable() {
            self.sources = None;
            return None;
        }
        let Some(watch) = &self.sources else {
            self.sources = start_source_watch(&self.manifest);
            return None;
        };
        match watch.targets(&self.manifest) {
            // Events alone are trusted only for a while: see FULL_SCAN_EVERY.
            Ok(chunks) => {
                let fresh = self.last_full_scan.elapsed() < options.full_scan_interval();
                (armed && fresh).then_some(chunks)
            }
            Err(Broken) => {
                self.sources = start_source_watch(&self.manifest);
                None
            }
        }
    }

    /// After a refresh: watches the source folders it copied. A folder watched only now was
    /// copied before, so the next refresh scans everything.
    fn sync_sources(&mut self) {
        if let Some(watch) = &mut self.sources {
            match watch.sync(&self.manifest) {
                Ok(added) => self.sources_armed = !added,
                Err(Untrusted) => self.sources = None,
            }
        }
    }

    fn refresh_inner(
        &mut self,
        options: &MirrorOptions,
        verify: bool,
        suspects: Suspects,
        targets: Option<&[Chunk]>,
    ) -> Result<MirrorReport> {
        let m = Arc::clone(&self.manifest);
        let root = Arc::new(options.task_root(&self.task_dir)?);
        let scan = match targets {
            // The destinations are trusted too (their watch is sound): only what was named.
            Some(chunks) if !verify => {
                self.scanned = chunks.iter().map(|c| (c.end - c.start) as usize).sum();
                scan::scan_some(&m, &root, chunks)
            }
            _ => {
                self.scanned = m.entries.len();
                self.last_full_scan = Instant::now();
                match &self.pool {
                    Some(pool) => pool.scan(&m, &root, verify, options.thread_count()),
                    None => scan::scan_alone(&m, &root, verify),
                }
            }
        };
        if let Some(e) = scan.error {
            return Err(e);
        }
        let quiet = scan.changed.is_empty()
            && scan.gone.is_empty()
            && scan.dirs_changed.is_empty()
            && scan.dirs_gone.is_empty()
            && scan.dst_missing.is_empty()
            && scan.dir_attrs.is_empty()
            && suspects.entries.is_empty()
            && suspects.dirs.is_empty();
        let mut changes = Changes::new(&m, self.map.roots());
        changes.globs(&m, &self.map)?;
        if quiet && !changes.structural {
            return Ok(MirrorReport {
                skipped: m.entries.len() as u64,
                unmatched: unmatched(&m, &self.map),
                ..MirrorReport::default()
            });
        }
        changes.apply_scan(&m, scan)?;
        for i in suspects.entries {
            changes.recopy(&m, i);
        }
        changes.attrs.extend(suspects.dirs);
        changes.relist_all(&m)?;

        let mut created = Created::default();
        let outcome = changes.execute(&m, options, &mut created, &root, self.map.roots());
        let (mut report, recorded, touched) = match outcome {
            Ok(done) => done,
            Err(e) => {
                created.undo(&root);
                return Err(e);
            }
        };
        let copied = report.files + report.symlinks;
        report.skipped = (m.entries.len() as u64).saturating_sub(copied);
        let literal = m.literal.clone();
        drop(m);
        // A helper thread that woke late may still hold the old manifest: then it is cloned.
        let old = Arc::unwrap_or_clone(std::mem::take(&mut self.manifest));
        self.manifest = Arc::new(changes.commit(old, recorded, literal));
        report.unmatched = unmatched(&self.manifest, &self.map);

        if let Some(watch) = &mut self.watch {
            let mut ignore: HashSet<PathBuf> = created.files.into_iter().collect();
            ignore.extend(created.dirs);
            ignore.extend(touched);
            let mut pending = Suspects::default();
            let synced = watch.sync(&self.manifest);
            if synced.is_err()
                || watch
                    .drain(&self.manifest, &mut pending, Some(&ignore))
                    .is_err()
            {
                self.watch = None;
            } else {
                self.pending = pending;
            }
        }
        Ok(report)
    }
}

/// The file in the task folder where [`MirroredFolder::save`] keeps the manifest.
pub const MANIFEST_FILE: &str = ".parvm-mirror-manifest";
const MANIFEST_NAME: &CStr = c".parvm-mirror-manifest";

/// The manifest as saved in the task folder: destinations relative to the task folder (it
/// may be reached by another path next time), and the map it was made from.
mod saved {
    use std::ffi::{CString, OsString};
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Serialize};

    use crate::fsops::{Kind, Sig, within};
    use crate::manifest::{DirRec, EntryRec, GlobRec, Manifest, Origin};
    use crate::map::{MirrorMap, check_target};

    /// Bumped whenever the layout changes: an older manifest is then not trusted.
    const VERSION: u32 = 1;

    fn bytes(path: &Path) -> Vec<u8> {
        path.as_os_str().as_bytes().to_vec()
    }

    fn path(bytes: &[u8]) -> PathBuf {
        PathBuf::from(OsString::from_vec(bytes.to_vec()))
    }

    #[derive(Serialize, Deserialize)]
    struct SavedSig([u64; 2], [i64; 5], u32, u64);

    impl SavedSig {
        fn of(s: &Sig) -> SavedSig {
            SavedSig(
                [s.dev, s.ino],
                [s.size, s.mtime, s.mtime_ns, s.ctime, s.ctime_ns],
                s.mode,
                s.nlink,
            )
        }

        fn sig(&self) -> Sig {
            let SavedSig([dev, ino], [size, mtime, mtime_ns, ctime, ctime_ns], mode, nlink) = *self;
            Sig {
                dev,
                ino,
                size,
                mtime,
                mtime_ns,
                ctime,
                ctime_ns,
                mode,
                nlink,
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    struct SavedDir {
        src: Vec<u8>,
        /// Relative to the task folder.
        dst: Vec<u8>,
        sig: SavedSig,
        /// 0: inside a copied folder; 1: a copied folder of entry `entry`; 2: the folder of
        /// top-level file matches of entry `entry`.
        origin: u8,
        entry: usize,
    }

    #[derive(Serialize, Deserialize)]
    struct SavedEntry {
        dir: u32,
        name: Vec<u8>,
        link: bool,
        sig: SavedSig,
    }

    #[derive(Serialize, Deserialize)]
    struct SavedGlob {
        entry: usize,
        /// Relative to the task folder.
        target: Vec<u8>,
        folders: Vec<(Vec<u8>, Option<SavedSig>)>,
        matches: Vec<Vec<u8>>,
    }

    #[derive(Serialize, Deserialize)]
    pub(super) struct Saved {
        version: u32,
        map: Vec<(Vec<u8>, Vec<u8>)>,
        dirs: Vec<SavedDir>,
        entries: Vec<SavedEntry>,
        globs: Vec<SavedGlob>,
        literal: Vec<bool>,
    }

    fn map_of(map: &MirrorMap) -> Vec<(Vec<u8>, Vec<u8>)> {
        map.entries()
            .iter()
            .map(|e| (bytes(&e.source), bytes(&e.target)))
            .collect()
    }

    fn rel(task_dir: &Path, dst: &Path) -> Vec<u8> {
        bytes(dst.strip_prefix(task_dir).unwrap_or(dst))
    }

    impl Saved {
        pub(super) fn of(map: &MirrorMap, task_dir: &Path, m: &Manifest) -> Saved {
            Saved {
                version: VERSION,
                map: map_of(map),
                dirs: m
                    .dirs
                    .iter()
                    .map(|d| {
                        let (origin, entry) = match d.origin {
                            Origin::Sub => (0, 0),
                            Origin::Root { entry } => (1, entry),
                            Origin::Top { entry } => (2, entry),
                        };
                        SavedDir {
                            src: bytes(&d.src),
                            dst: rel(task_dir, &d.dst),
                            sig: SavedSig::of(&d.sig),
                            origin,
                            entry,
                        }
                    })
                    .collect(),
                entries: m
                    .entries
                    .iter()
                    .map(|e| SavedEntry {
                        dir: e.dir,
                        name: e.name.as_bytes().to_vec(),
                        link: e.kind == Kind::Link,
                        sig: SavedSig::of(&e.sig),
                    })
                    .collect(),
                globs: m
                    .globs
                    .iter()
                    .map(|g| SavedGlob {
                        entry: g.entry,
                        target: rel(task_dir, &g.target),
                        folders: g
                            .folders
                            .iter()
                            .map(|(p, s)| (bytes(p), s.as_ref().map(SavedSig::of)))
                            .collect(),
                        matches: g.matches.iter().map(|p| bytes(p)).collect(),
                    })
                    .collect(),
                literal: m.literal.clone(),
            }
        }

        /// The manifest, when it was made from `map` and holds up: every destination a
        /// plain relative path in the task folder, every source absolute and inside the
        /// map's roots (the file lies in a folder a task may write to).
        pub(super) fn into_manifest(self, map: &MirrorMap, task_dir: &Path) -> Option<Manifest> {
            let reject = |why: &str| {
                tracing::warn!(
                    "the mirror manifest in `{}` {why}; mirroring everything again",
                    task_dir.display()
                );
                None
            };
            if self.version != VERSION {
                return reject("is of another parvm version");
            }
            if self.map != map_of(map) || self.literal.len() != map.entries().len() {
                return reject("is of another mirror map");
            }
            let roots = map.roots();
            let src_ok = |p: &Path| p.is_absolute() && within(roots, p);
            let dst_ok = |b: &[u8]| {
                let p = path(b);
                check_target(&p).is_ok_and(|normal| normal == p)
            };
            let mut dirs = Vec::with_capacity(self.dirs.len());
            for d in self.dirs {
                let src = path(&d.src);
                let entry_ok = d.entry < map.entries().len();
                if !src_ok(&src) || !dst_ok(&d.dst) || !entry_ok {
                    return reject("names a folder outside the mirrored roots or the task folder");
                }
                let origin = match d.origin {
                    0 => Origin::Sub,
                    1 => Origin::Root { entry: d.entry },
                    2 => Origin::Top { entry: d.entry },
                    _ => return reject("is damaged"),
                };
                dirs.push(Some(DirRec {
                    src,
                    dst: task_dir.join(path(&d.dst)),
                    sig: d.sig.sig(),
                    origin,
                    start: 0,
                    end: 0,
                }));
            }
            let mut entries = Vec::with_capacity(self.entries.len());
            for e in self.entries {
                let name = match CString::new(e.name) {
                    Ok(name)
                        if (e.dir as usize) < dirs.len() && !name.as_bytes().contains(&b'/') =>
                    {
                        name
                    }
                    _ => return reject("is damaged"),
                };
                entries.push(EntryRec {
                    dir: e.dir,
                    name,
                    kind: if e.link { Kind::Link } else { Kind::File },
                    sig: e.sig.sig(),
                });
            }
            let mut globs = Vec::with_capacity(self.globs.len());
            for g in self.globs {
                let folders: Vec<(PathBuf, Option<Sig>)> = g
                    .folders
                    .iter()
                    .map(|(p, s)| (path(p), s.as_ref().map(SavedSig::sig)))
                    .collect();
                let matches: Vec<PathBuf> = g.matches.iter().map(|p| path(p)).collect();
                if !dst_ok(&g.target)
                    || g.entry >= map.entries().len()
                    || !folders.iter().all(|(p, _)| src_ok(p))
                    || !matches.iter().all(|p| src_ok(p))
                {
                    return reject("names a folder outside the mirrored roots or the task folder");
                }
                globs.push(GlobRec {
                    entry: g.entry,
                    target: task_dir.join(path(&g.target)),
                    folders,
                    matches,
                });
            }
            Some(Manifest::build(dirs, entries, globs, self.literal))
        }
    }
}

fn start_source_watch(m: &Manifest) -> Option<SourceWatch> {
    match SourceWatch::new(m) {
        Ok(watch) => Some(watch),
        Err(Untrusted) => {
            tracing::debug!(
                "a source folder is not on a trusted local file system, or cannot be watched; \
                 every refresh looks at every source file"
            );
            None
        }
    }
}

fn start_watch(m: &Manifest) -> Option<Watch> {
    match Watch::new(m) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::debug!(
                "cannot watch the task folder with inotify ({e}); every refresh verifies every copy"
            );
            None
        }
    }
}

fn unmatched(m: &Manifest, map: &MirrorMap) -> Vec<PathBuf> {
    m.globs
        .iter()
        .filter(|g| g.matches.is_empty())
        .filter_map(|g| map.entries().get(g.entry).map(|e| e.source.clone()))
        .collect()
}

/// The manifest of a first mirror, from its plan and what it recorded.
fn initial_manifest(map: &MirrorMap, plan: Plan, recorded: Recorded) -> Manifest {
    let Plan {
        entries: plans,
        top_parents,
        roots,
        ..
    } = plan;
    let mut dirs: Vec<Option<DirRec>> = Vec::new();
    let put = |dirs: &mut Vec<Option<DirRec>>, id: u32, rec: DirRec| {
        let id = id as usize;
        if dirs.len() <= id {
            dirs.resize_with(id + 1, || None);
        }
        dirs[id] = Some(rec);
    };
    for (id, src, dst, entry) in top_parents {
        put(
            &mut dirs,
            id,
            DirRec {
                src,
                dst,
                sig: Sig::default(),
                origin: Origin::Top { entry },
                start: 0,
                end: 0,
            },
        );
    }
    let roots: HashMap<u32, usize> = roots.into_iter().map(|(id, _, _, e)| (id, e)).collect();
    for d in recorded.dirs {
        let origin = roots
            .get(&d.id)
            .map_or(Origin::Sub, |&entry| Origin::Root { entry });
        put(
            &mut dirs,
            d.id,
            DirRec {
                src: d.src,
                dst: d.dst,
                sig: d.sig,
                origin,
                start: 0,
                end: 0,
            },
        );
    }
    let entries = batch_entries(recorded.batches);
    let literal: Vec<bool> = plans.iter().map(|p| !p.glob).collect();
    let globs = plans
        .into_iter()
        .enumerate()
        .filter(|(_, p)| p.glob)
        .map(|(entry, p)| GlobRec {
            entry,
            target: p.target,
            folders: p.folders,
            matches: p.matches,
        })
        .collect();
    debug_assert_eq!(literal.len(), map.entries().len());
    Manifest::build(dirs, entries, globs, literal)
}

fn batch_entries(batches: Vec<copy::Batch>) -> Vec<EntryRec> {
    let mut entries = Vec::with_capacity(batches.iter().map(|b| b.names.len()).sum());
    for b in batches {
        for ((name, kind), sig) in b.names.into_iter().zip(b.sigs) {
            entries.push(EntryRec {
                dir: b.dir,
                name,
                kind,
                sig,
            });
        }
    }
    entries
}

// ----------------------------------------------------------------------------------------
// Changes: what the scan, the events and the globs say, turned into copy work and a new
// manifest.

/// A folder to create and copy as a tree.
struct NewDir {
    src: PathBuf,
    dst: PathBuf,
    origin: Origin,
}

struct Changes<'r> {
    /// The roots the sources are confined to (see [`MirrorMap::within`]).
    roots: &'r [PathBuf],
    dead_dirs: Vec<bool>,
    dead_entries: Vec<bool>,
    /// Folder id → names to copy into it (ids past the manifest are new top parents).
    copy: BTreeMap<u32, Vec<(CString, Kind)>>,
    new_dirs: Vec<NewDir>,
    /// New parents of top-level files: (source parent, target, map entry).
    new_tops: Vec<(PathBuf, PathBuf, usize)>,
    /// Folders to list again.
    relist: BTreeSet<u32>,
    /// New metadata of folders listed again.
    relisted: HashMap<u32, Sig>,
    /// Folders whose destination mode and times are set again.
    attrs: BTreeSet<u32>,
    /// Folders whose destination must be created again.
    ensure: BTreeSet<u32>,
    /// Replacement glob records (by map entry).
    globs: HashMap<usize, GlobRec>,
    /// Origins of the new folders (by id); folders found inside them are `Sub`.
    origins: HashMap<u32, Origin>,
    /// The manifest's structure changes (entries or folders added or dropped).
    structural: bool,
}

impl<'r> Changes<'r> {
    fn new(m: &Manifest, roots: &'r [PathBuf]) -> Changes<'r> {
        Changes {
            roots,
            dead_dirs: vec![false; m.dirs.len()],
            dead_entries: vec![false; m.entries.len()],
            copy: BTreeMap::new(),
            new_dirs: Vec::new(),
            new_tops: Vec::new(),
            relist: BTreeSet::new(),
            relisted: HashMap::new(),
            attrs: BTreeSet::new(),
            ensure: BTreeSet::new(),
            globs: HashMap::new(),
            origins: HashMap::new(),
            structural: false,
        }
    }

    fn recopy(&mut self, m: &Manifest, i: u32) {
        let e = &m.entries[i as usize];
        if self.dead_entries[i as usize] || self.dead_dirs[e.dir as usize] {
            return;
        }
        let names = self.copy.entry(e.dir).or_default();
        if !names.iter().any(|(n, _)| *n == e.name) {
            names.push((e.name.clone(), e.kind));
        }
    }

    fn drop_entry(&mut self, i: u32) {
        self.dead_entries[i as usize] = true;
        self.structural = true;
    }

    /// Drops folder `id` and every folder copied below it (the copies stay).
    fn drop_tree(&mut self, m: &Manifest, id: u32) {
        let root = &m.dirs[id as usize];
        for (j, d) in m.dirs.iter().enumerate() {
            if j == id as usize
                || (d.origin == Origin::Sub
                    && d.dst.starts_with(&root.dst)
                    && d.src.starts_with(&root.src))
            {
                self.dead_dirs[j] = true;
            }
        }
        self.structural = true;
    }

    /// Copies `path`, a (new or changed) top-level match of map entry `entry`.
    fn add_match(&mut self, m: &Manifest, entry: usize, target: &Path, path: &Path) -> Result<()> {
        let literal = m.literal.get(entry).copied().unwrap_or(false);
        // As when it was first mirrored: a symlink is followed only into the roots, and
        // only files and folders are copied.
        let meta = match crate::fsops::FolderCheck::new(self.roots).top_match(path) {
            Ok(meta) => meta,
            Err(Error::SourceMissing { .. }) if !literal => return Ok(()),
            Err(Error::Read { source, .. })
                if !literal && source.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        self.structural = true;
        if meta.is_dir() {
            self.new_dirs.push(NewDir {
                src: path.to_path_buf(),
                dst: target.join(name),
                origin: Origin::Root { entry },
            });
        } else {
            let parent = path
                .parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
            let existing = m.dirs.iter().position(|d| {
                d.origin == (Origin::Top { entry }) && d.src == parent && d.dst == target
            });
            let id = match existing {
                Some(id) if !self.dead_dirs[id] => id as u32,
                _ => match self
                    .new_tops
                    .iter()
                    .position(|(p, t, e)| *p == parent && t == target && *e == entry)
                {
                    Some(k) => (m.dirs.len() + k) as u32,
                    None => {
                        self.new_tops.push((parent, target.to_path_buf(), entry));
                        (m.dirs.len() + self.new_tops.len() - 1) as u32
                    }
                },
            };
            let name = crate::fsops::cstring(name, path)?;
            let names = self.copy.entry(id).or_default();
            if !names.iter().any(|(n, _)| *n == name) {
                names.push((name, Kind::File));
            }
        }
        Ok(())
    }

    /// Expands again every glob a folder of which changed; copies new matches and forgets
    /// matches that are gone.
    fn globs(&mut self, m: &Manifest, map: &MirrorMap) -> Result<()> {
        for old in &m.globs {
            let changed = old
                .folders
                .iter()
                .any(|(path, sig)| glob::folder_sig(path) != *sig);
            if !changed {
                continue;
            }
            self.structural = true;
            let entry = old.entry;
            let Some(source) = map.entries().get(entry).map(|e| &e.source) else {
                continue;
            };
            let mut folders = Vec::new();
            let matches = glob::expand_traced(source, &mut folders)?;
            for gone in old
                .matches
                .iter()
                .filter(|p| matches.binary_search(p).is_err())
            {
                self.forget_match(m, entry, &old.target, gone);
            }
            for new in matches
                .iter()
                .filter(|p| old.matches.binary_search(p).is_err())
            {
                self.add_match(m, entry, &old.target, new)?;
            }
            self.globs.insert(
                entry,
                GlobRec {
                    entry,
                    target: old.target.clone(),
                    folders,
                    matches,
                },
            );
        }
        Ok(())
    }

    /// Forgets a match of map entry `entry` that is gone at the source (its copy stays).
    fn forget_match(&mut self, m: &Manifest, entry: usize, target: &Path, path: &Path) {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return;
        };
        for (id, d) in m.dirs.iter().enumerate() {
            match d.origin {
                Origin::Root { entry: e } if e == entry && d.src == path => {
                    self.drop_tree(m, id as u32);
                }
                Origin::Top { entry: e } if e == entry && d.src == parent && d.dst == target => {
                    if let Ok(cname) = CString::new(name.as_bytes())
                        && let Some(i) = m.find(id as u32, &cname)
                    {
                        self.drop_entry(i);
                    }
                }
                _ => {}
            }
        }
    }

    fn apply_scan(&mut self, m: &Manifest, scan: Scan) -> Result<()> {
        for (id, errno) in scan.dirs_gone {
            let d = &m.dirs[id as usize];
            match d.origin {
                Origin::Root { entry } => {
                    let literal = m.literal.get(entry).copied().unwrap_or(false);
                    if errno == Errno::ENOTDIR {
                        // A folder replaced by a file: copy the file instead.
                        self.drop_tree(m, id);
                        let target = d.dst.parent().unwrap_or(&d.dst).to_path_buf();
                        let src = d.src.clone();
                        self.add_match(m, entry, &target, &src)?;
                    } else if literal {
                        return Err(Error::SourceMissing {
                            path: d.src.clone(),
                        });
                    } else {
                        self.drop_tree(m, id);
                    }
                }
                Origin::Top { entry } => {
                    if m.literal.get(entry).copied().unwrap_or(false) {
                        let name = m.entries[d.start as usize..d.end as usize]
                            .first()
                            .map(|e| OsStr::from_bytes(e.name.to_bytes()).to_os_string())
                            .unwrap_or_default();
                        return Err(Error::SourceMissing {
                            path: d.src.join(name),
                        });
                    }
                    self.dead_dirs[id as usize] = true;
                    self.structural = true;
                }
                Origin::Sub => self.drop_tree(m, id),
            }
        }
        for i in scan.gone {
            let e = &m.entries[i as usize];
            let d = &m.dirs[e.dir as usize];
            if let Origin::Top { entry } = d.origin
                && m.literal.get(entry).copied().unwrap_or(false)
            {
                return Err(Error::SourceMissing {
                    path: d.src.join(OsStr::from_bytes(e.name.to_bytes())),
                });
            }
            self.drop_entry(i);
            if !d.is_top() {
                self.relist.insert(e.dir);
            }
        }
        for (i, new_type) in scan.changed {
            let e = &m.entries[i as usize];
            let d = &m.dirs[e.dir as usize];
            let old_type = if e.kind == Kind::Link {
                libc::S_IFLNK
            } else {
                libc::S_IFREG
            };
            if new_type == 0 || new_type == old_type {
                self.recopy(m, i);
            } else if let Origin::Top { entry } = d.origin {
                // A top-level file replaced by a folder.
                self.drop_entry(i);
                let path = d.src.join(OsStr::from_bytes(e.name.to_bytes()));
                let target = d.dst.clone();
                self.add_match(m, entry, &target, &path)?;
            } else {
                // Listing the folder again finds what stands there now.
                self.drop_entry(i);
                self.relist.insert(e.dir);
            }
        }
        for id in scan.dirs_changed {
            self.relist.insert(id);
        }
        for id in scan.dst_missing {
            self.ensure.insert(id);
        }
        self.attrs.extend(scan.dir_attrs);
        Ok(())
    }

    fn relist_all(&mut self, m: &Manifest) -> Result<()> {
        let ids: Vec<u32> = self.relist.iter().copied().collect();
        for id in ids {
            if !self.dead_dirs[id as usize] {
                self.relist_one(m, id)?;
            }
        }
        Ok(())
    }

    /// Lists a copied source folder again: new entries and subfolders are copied, entries
    /// and subfolders gone are forgotten.
    fn relist_one(&mut self, m: &Manifest, id: u32) -> Result<()> {
        let d = &m.dirs[id as usize];
        let fd: OwnedFd = match nix::fcntl::open(&d.src, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                self.drop_tree(m, id);
                return Ok(());
            }
            Err(e) => return Err(vanished_or_read(&d.src, e)),
        };
        let st = nix::sys::stat::fstat(&fd).map_err(|e| vanished_or_read(&d.src, e))?;
        let mut listing: Vec<(CString, nix::dir::Type)> = Vec::new();
        {
            let mut dir = nix::dir::Dir::openat(&fd, c".", dir_flags(), Mode::empty())
                .map_err(|e| vanished_or_read(&d.src, e))?;
            for entry in dir.iter() {
                let entry = entry.map_err(|e| vanished_or_read(&d.src, e))?;
                let name = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                let kind = match entry_kind(&fd, &entry) {
                    Ok(kind) => kind,
                    // Removed since it was listed: as if it had not been listed.
                    Err(Errno::ENOENT) => continue,
                    Err(e) => {
                        return Err(vanished_or_read(
                            &d.src.join(OsStr::from_bytes(name.to_bytes())),
                            e,
                        ));
                    }
                };
                listing.push((name.to_owned(), kind));
            }
        }
        listing.sort_by(|a, b| a.0.cmp(&b.0));
        // The live subfolders copied from this folder, by name.
        let children: Vec<(u32, &OsStr)> = m
            .dirs
            .iter()
            .enumerate()
            .filter(|(j, c)| {
                !self.dead_dirs[*j]
                    && c.origin == Origin::Sub
                    && c.src.parent() == Some(d.src.as_path())
                    && c.dst.parent() == Some(d.dst.as_path())
            })
            .filter_map(|(j, c)| c.src.file_name().map(|n| (j as u32, n)))
            .collect();
        let child = |name: &CStr| {
            children
                .iter()
                .find(|(_, n)| n.as_bytes() == name.to_bytes())
                .map(|(j, _)| *j)
        };
        for (name, kind) in &listing {
            let entry = m.find(id, name).filter(|&i| !self.dead_entries[i as usize]);
            let sub = child(name);
            let kind = match kind {
                nix::dir::Type::File => Kind::File,
                nix::dir::Type::Symlink => Kind::Link,
                nix::dir::Type::Directory => {
                    if sub.is_none() {
                        if let Some(i) = entry {
                            self.drop_entry(i);
                        }
                        self.structural = true;
                        let os = OsStr::from_bytes(name.to_bytes());
                        self.new_dirs.push(NewDir {
                            src: d.src.join(os),
                            dst: d.dst.join(os),
                            origin: Origin::Sub,
                        });
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some(j) = sub {
                self.drop_tree(m, j);
            }
            match entry {
                Some(i) if m.entries[i as usize].kind == kind => {}
                other => {
                    if let Some(i) = other {
                        self.drop_entry(i);
                    }
                    self.structural = true;
                    let names = self.copy.entry(id).or_default();
                    if !names.iter().any(|(n, _)| n == name) {
                        names.push((name.clone(), kind));
                    }
                }
            }
        }
        let listed = |name: &[u8]| {
            listing
                .binary_search_by(|(n, _)| n.to_bytes().cmp(name))
                .is_ok()
        };
        for i in d.start..d.end {
            if !listed(m.entries[i as usize].name.to_bytes()) && !self.dead_entries[i as usize] {
                self.drop_entry(i);
            }
        }
        for (j, n) in &children {
            if !listed(n.as_bytes()) {
                self.drop_tree(m, *j);
            }
        }
        self.relisted.insert(id, Sig::of(&st));
        self.attrs.insert(id);
        Ok(())
    }

    /// Copies what the changes name. Returns the report, what was recorded, and the
    /// destination folders whose attributes were set (so their events are not taken for
    /// the tasks').
    fn execute(
        &mut self,
        m: &Manifest,
        options: &MirrorOptions,
        created: &mut Created,
        root: &TaskRoot,
        roots: &[PathBuf],
    ) -> Result<(MirrorReport, Recorded, Vec<PathBuf>)> {
        let ctx = crate::fsops::Ctx { root, roots };
        let dir_src = |id: u32| -> &Path {
            match m.dirs.get(id as usize) {
                Some(d) => &d.src,
                None => &self.new_tops[id as usize - m.dirs.len()].0,
            }
        };
        let dir_dst = |id: u32| -> &Path {
            match m.dirs.get(id as usize) {
                Some(d) => &d.dst,
                None => &self.new_tops[id as usize - m.dirs.len()].1,
            }
        };
        // Every destination folder this refresh writes into is checked first, so a symlink
        // a task planted on the way is refused before anything is written.
        let live = |id: &&u32| (**id as usize) >= m.dirs.len() || !self.dead_dirs[**id as usize];
        for &id in self.ensure.iter().chain(self.copy.keys()).filter(live) {
            root.check(dir_dst(id), dir_src(id))?;
        }
        for nd in &self.new_dirs {
            root.check(&nd.dst, &nd.src)?;
        }
        // Destinations the tasks deleted come back first, parents before children (folder
        // ids follow destination order).
        let mut writable: BTreeMap<PathBuf, u32> = BTreeMap::new();
        let mut restore: BTreeSet<u32> = BTreeSet::new();
        for &id in &self.ensure {
            if self.dead_dirs[id as usize] {
                continue;
            }
            root.create_dir_all(dir_dst(id), dir_src(id), created)?;
            if !m.dirs[id as usize].is_top() {
                restore.insert(id);
            }
        }
        // Dropped folders are not restored; ids past the manifest are new top parents.
        let copy_ids: Vec<u32> = self
            .copy
            .keys()
            .copied()
            .filter(|&id| (id as usize) >= m.dirs.len() || !self.dead_dirs[id as usize])
            .collect();
        let mut units = Vec::new();
        for id in copy_ids {
            let Some(names) = self.copy.remove(&id) else {
                continue;
            };
            if names.is_empty() {
                continue;
            }
            let (src, dst) = (dir_src(id).to_path_buf(), dir_dst(id).to_path_buf());
            if (id as usize) >= m.dirs.len() {
                root.create_dir_all(&dst, &src, created)?;
            }
            make_writable(&dst, &src, &mut writable, root)?;
            let top = m.dirs.get(id as usize).is_none_or(DirRec::is_top);
            if !top {
                restore.insert(id);
            }
            let pair = Arc::new(if top {
                DirPair::open_top(id, src, dst, ctx)?
            } else {
                DirPair::open(id, src, dst, None, ctx)?
            });
            for chunk in names.chunks(64) {
                units.push(Unit::Names {
                    pair: Arc::clone(&pair),
                    names: chunk.to_vec(),
                });
            }
        }
        let mut next = (m.dirs.len() + self.new_tops.len()) as u32;
        for nd in &self.new_dirs {
            let parent = nd.dst.parent().unwrap_or(&nd.dst);
            root.create_dir_all(parent, &nd.src, created)?;
            make_writable(parent, &nd.src, &mut writable, root)?;
            root.make_dir(&nd.dst, &nd.src, Mode_::Full, created)?;
            self.origins.insert(next, nd.origin);
            units.push(Unit::Dir {
                id: next,
                src: nd.src.clone(),
                dst: nd.dst.clone(),
                parent: None,
            });
            next += 1;
        }
        for &id in &self.attrs {
            if !self.dead_dirs.get(id as usize).copied().unwrap_or(true) {
                restore.insert(id);
            }
        }
        let (report, recorded) = if units.is_empty() {
            (MirrorReport::default(), Recorded::default())
        } else {
            let prepared = Prepared {
                units,
                unmatched: Vec::new(),
            };
            copy::execute(prepared, options, Mode_::Full, created, next, true, ctx)?
        };
        // Folder modes and times, deepest first; also of the folders made writable.
        let mut touched = Vec::new();
        let mut attrs: Vec<(Option<&Path>, PathBuf, u32)> = restore
            .iter()
            .filter_map(|&id| m.dirs.get(id as usize))
            .map(|d| (Some(d.src.as_path()), d.dst.clone(), 0))
            .collect();
        for (dst, mode) in writable {
            if !attrs.iter().any(|(_, d, _)| *d == dst) {
                // A target folder that is not mirrored: it gets its own mode back.
                attrs.push((None, dst, mode));
            }
        }
        attrs.sort_by_key(|(_, dst, _)| std::cmp::Reverse(dst.components().count()));
        for (src, dst, mode) in attrs {
            match src {
                Some(src) => {
                    let st = nix::sys::stat::stat(src).map_err(|e| vanished_or_read(src, e))?;
                    copy::set_dir_attrs(
                        &DirAttrs::of(src.to_path_buf(), dst.clone(), &st),
                        Mode_::Refresh,
                        root,
                    )?;
                }
                None => {
                    let fd = root.open_dir(&dst, &dst)?;
                    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| {
                        Error::Create {
                            path: dst.clone(),
                            source: e.into(),
                        }
                    })?;
                }
            }
            touched.push(dst);
        }
        Ok((report, recorded, touched))
    }

    /// The manifest after the changes and the copies.
    fn commit(self, old: Manifest, recorded: Recorded, literal: Vec<bool>) -> Manifest {
        let globs: Vec<GlobRec> = old
            .globs
            .iter()
            .map(|g| {
                self.globs
                    .get(&g.entry)
                    .cloned()
                    .unwrap_or_else(|| g.clone())
            })
            .collect();
        let n_old = old.dirs.len();
        let (mut dirs, mut entries) = old.into_parts();
        for (id, slot) in dirs.iter_mut().enumerate() {
            if self.dead_dirs[id] {
                *slot = None;
            } else if let (Some(d), Some(sig)) = (slot.as_mut(), self.relisted.get(&(id as u32))) {
                d.sig = *sig;
            }
        }
        let mut k = 0;
        entries.retain(|_| {
            let keep = !self.dead_entries[k];
            k += 1;
            keep
        });
        for (src, dst, entry) in self.new_tops {
            dirs.push(Some(DirRec {
                src,
                dst,
                sig: Sig::default(),
                origin: Origin::Top { entry },
                start: 0,
                end: 0,
            }));
        }
        debug_assert!(dirs.len() >= n_old);
        for d in recorded.dirs {
            let id = d.id as usize;
            if dirs.len() <= id {
                dirs.resize_with(id + 1, || None);
            }
            let origin = self.origins.get(&d.id).copied().unwrap_or(Origin::Sub);
            dirs[id] = Some(DirRec {
                src: d.src,
                dst: d.dst,
                sig: d.sig,
                origin,
                start: 0,
                end: 0,
            });
        }
        entries.extend(batch_entries(recorded.batches));
        Manifest::build(dirs, entries, globs, literal)
    }
}

/// Makes an existing destination folder writable for its owner (a copy of a read-only
/// source folder is read-only), remembering it so its mode is set again afterwards.
fn make_writable(
    dst: &Path,
    src: &Path,
    done: &mut BTreeMap<PathBuf, u32>,
    root: &TaskRoot,
) -> Result<()> {
    if done.contains_key(dst) {
        return Ok(());
    }
    let (parent, name) = match dst.strip_prefix(root.path()) {
        Ok(rel) if rel.as_os_str().is_empty() => {
            // The task folder itself: local storage keeps it usable; not ours to change.
            return Ok(());
        }
        _ => root.parent_of(dst, src)?,
    };
    let st = nix::sys::stat::fstatat(&parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| Error::Create {
            path: dst.to_path_buf(),
            source: e.into(),
        })?;
    if !crate::fsops::is_dir(&st) {
        return Err(root.in_the_way(&parent, &name, dst, src));
    }
    if st.st_mode & 0o700 != 0o700 {
        // A folder a moment ago, in a parent reached without symlinks.
        nix::sys::stat::fchmodat(
            &parent,
            name.as_c_str(),
            Mode::from_bits_truncate((st.st_mode | 0o700) & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| Error::Create {
            path: dst.to_path_buf(),
            source: e.into(),
        })?;
        done.insert(dst.to_path_buf(), st.st_mode & 0o7777);
    }
    Ok(())
}

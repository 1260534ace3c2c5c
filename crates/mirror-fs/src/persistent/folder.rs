//! [`MirroredFolder`]: a task folder kept across tasks, with a manifest of what was copied
//! and an inotify watch on the copies, so bringing it up to date costs one `stat` per
//! source file.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::apply::batch_entries;
use super::changes::Changes;
use super::inotify::Broken;
use super::manifest::{Chunk, DirRec, GlobRec, Manifest, Origin};
use super::prune;
use super::scan::{self, ScanPool};
use super::srcwatch::{SourceWatch, Untrusted};
use super::watch::{Suspects, Watch};
use crate::copy::{self, Plan, Recorded};
use crate::error::{Error, Result};
use crate::fsops::{Created, Mode_, Sig, TaskRoot};
use crate::map::MirrorMap;
use crate::options::{MirrorOptions, MirrorReport};

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
        self.refresh_watching(options, true)
    }

    /// [`MirroredFolder::refresh`]; `watch_sources: false` for a caller that verifies every
    /// copy each time, and so looks at every source anyway: no inotify instance is spent on
    /// the sources (a user has 128 by default, for all their programs).
    fn refresh_watching(
        &mut self,
        options: &MirrorOptions,
        watch_sources: bool,
    ) -> Result<MirrorReport> {
        let start = Instant::now();
        let targets = if watch_sources {
            self.source_targets(options)
        } else {
            self.sources = None;
            None
        };
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

    /// Makes the folder what [`MirroredFolder::mirror`] into an empty folder would make
    /// now, for a task folder that the task before left as it was (a temporary folder
    /// handed on to the next task, or a persistent one that must be clean for each task),
    /// at about the cost of a refresh instead of a copy of every file.
    ///
    /// Every copy is checked against its source and against what was written (a `stat` of
    /// each copy: type, mode, size, modification time, a single name, and for a copy made
    /// by this process its change time, which every write, `chmod`, link or change of
    /// times moves; and the watch's events when there is one), and changed ones are copied
    /// again, as are new matches; then everything else beneath the task folder is removed,
    /// never following a symlink (what the task wrote, copies of sources gone since), but
    /// the names in `keep` at its top (its owner's own files), and the mirrored folders
    /// entries were removed from get their source's mode and times back.
    /// [`MirrorReport::removed`] counts what was removed. Since it looks at every source
    /// each time, it keeps no inotify watch on the sources.
    ///
    /// Not noticed, without a watch: a copy changed with its size and modification time
    /// put back within the clock tick in which it was made (kernels before 6.13 keep change
    /// times to a tick, a few milliseconds), and in a folder [`MirroredFolder::load`]ed
    /// (whose copies' change times are not kept) at any time.
    ///
    /// # Errors
    ///
    /// As [`MirroredFolder::refresh`]; [`Error::NotRenewable`] when a folder the mirror
    /// made is no longer a folder reached without symlinks, or has another mode. After any
    /// error the folder may hold what a mirror would not: empty it and mirror afresh.
    pub fn renew(&mut self, options: &MirrorOptions, keep: &[&OsStr]) -> Result<MirrorReport> {
        let start = Instant::now();
        self.verify_all = true;
        let mut report = self.refresh_watching(options, false)?;
        self.verify_all = true;
        let root = options.task_root(&self.task_dir)?;
        let pruned = prune::prune(&self.manifest, &root, keep)?;
        report.removed = pruned.removed as u64;
        if !pruned.dirs.is_empty() {
            // Only the folders' modes and times: every copy was just checked.
            let suspects = Suspects {
                entries: Vec::new(),
                dirs: pruned.dirs,
            };
            let again = self.refresh_inner(options, false, suspects, Some(&[]))?;
            report.dirs += again.dirs;
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
        let saved = super::saved::Saved::of(&self.map, &self.task_dir, &self.manifest);
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
        let manifest = match rmp_serde::from_slice::<super::saved::Saved>(&bytes) {
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
        changes.unshadow(&m, &self.map)?;

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

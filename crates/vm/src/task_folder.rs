//! The worker's task folders: local storage composed with mirroring, and where a task
//! starts (with or without a folder).
//!
//! It must not know the worker's loop or the transport; the worker hands it a spawn
//! request and gets a prepared folder (or the crate's [`Error`] saying why not) back.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;

use parvm_env_config::Config;
use parvm_local_storage::{LOCK_FILE, LocalStorage, OWNER_FILE, Persistence, TaskFolder};
use parvm_mirror_fs::{
    AbstractMirrorMap, AbstractPath, FolderState, MirrorMap, MirrorOptions, MirrorReport,
    MirroredFolders,
};

use parvm_ship::{CacheLimits, HostCache};

use crate::Error;
use crate::error::one_line;
use crate::ship::fetch::{self, Exchange, Shipping};
use crate::wire::{ShipPlan, SpawnRequest, Startup, ToWorker};

/// Translates a VM's mirror map for travel, encoded once when the VM is built; gives the
/// abstract map too, for shipping.
pub(crate) fn encode_map(
    config: &Config,
    entries: &[(String, PathBuf)],
) -> Result<(Vec<u8>, AbstractMirrorMap), Error> {
    let mut map = MirrorMap::new();
    for (source, target) in entries {
        map = map.entry(source.as_str(), target).map_err(Error::Mirror)?;
    }
    let cwd = std::env::current_dir().map_err(|source| Error::Io {
        what: "read the current folder",
        path: ".".into(),
        source,
    })?;
    let abstract_map = map
        .to_abstract(config.mirrored_roots(), &cwd)
        .map_err(Error::Mirror)?;
    for ((given, _), entry) in entries.iter().zip(&abstract_map.entries) {
        check_literal_source(config, given, &entry.source)?;
    }
    let bytes = rmp_serde::to_vec(&abstract_map).map_err(|source| Error::Encode {
        what: "the mirror map".to_owned(),
        source,
    })?;
    Ok((bytes, abstract_map))
}

/// Refuses a literal source (no glob characters) that does not exist on the spawner, as
/// mirroring would on every worker; a glob that matches nothing is left to mirroring, which
/// reports it as unmatched.
fn check_literal_source(config: &Config, given: &str, source: &AbstractPath) -> Result<(), Error> {
    if parvm_mirror_fs::has_glob(given.as_bytes()) {
        return Ok(());
    }
    // The translated path, as a worker on this host would mirror it.
    let path =
        parvm_mirror_fs::to_actual(config.mirrored_roots(), source).map_err(Error::Mirror)?;
    let missing = |problem: String| Error::MirrorSourceMissing {
        given: given.to_owned(),
        path: path.clone(),
        problem,
    };
    match std::fs::metadata(&path) {
        Ok(_) => Ok(()),
        // A top-level symlink is followed when mirroring, so one to nothing is missing too.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::read_link(&path) {
            Ok(target) => Err(missing(format!(
                "is a symlink to `{}`, which does not exist",
                target.display()
            ))),
            Err(_) => Err(missing("does not exist".to_owned())),
        },
        Err(source) => Err(Error::Io {
            what: "look at mirror source",
            path,
            source,
        }),
    }
}

/// Clears local storage in this process (the spawner's host).
pub(crate) fn clear_here(config: &Config, force: bool) -> Result<u64, Error> {
    let storage = LocalStorage::from_config(config).map_err(Error::Storage)?;
    let report = storage.clear(force).map_err(Error::Storage)?;
    Ok(report.removed.len() as u64)
}

/// Resolves where a task starts when it has no task folder.
fn startup_without_folder(
    startup: Option<&Startup>,
    roots: &[PathBuf],
) -> Result<Option<PathBuf>, Error> {
    match startup {
        None => Ok(None),
        Some(Startup::Literal(path)) => Ok(Some(path.clone())),
        Some(Startup::Mirrored(index, suffix)) => match roots.get(*index) {
            Some(root) => Ok(Some(root.join(suffix))),
            None => Err(Error::StartupRootMissing {
                index: *index,
                entries: roots.len(),
            }),
        },
        Some(Startup::InFolder(path)) => Err(Error::StartupWithoutFolder { path: path.clone() }),
    }
}

/// Where the next task of a VM that just had a task here will run, as far as the worker
/// knows when it releases the task's folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Its spawn request is already here.
    Here,
    /// None is here yet; the program may send one as the last task's exit reaches it.
    MayCome,
    /// Not in a temporary folder here (the task gave its case back, or its folders are
    /// persistent or none).
    Elsewhere,
}

/// Where a task runs, and the folder to release after it.
pub(crate) struct Prepared {
    pub dir: Option<PathBuf>,
    /// Bytes mirrored (or refreshed) into the folder for this task; 0 when nothing was.
    pub mirrored: u64,
    folder: Option<TaskFolder>,
    /// Filled from a mirror map, which mirror-fs keeps, so the folder can be renewed.
    renewable: bool,
}

impl Prepared {
    /// The task folder itself (not the startup folder), when the task has one.
    pub(crate) fn task_dir(&self) -> Option<&std::path::Path> {
        self.folder.as_ref().map(TaskFolder::path)
    }

    /// Removes a temporary folder, hands a persistent one back. When the next task of
    /// this VM, with a temporary folder, is already at hand, or may come ([`Next`]), a
    /// temporary folder filled from a mirror map is kept for it instead, as the task left
    /// it ([`TaskFolder::hand_on`]; the next task renews it, which costs what a refresh
    /// costs, not a copy of every file); another is emptied and kept when that task is
    /// here ([`TaskFolder::release_for_next`]).
    pub(crate) fn release(self, next: Next) -> Result<(), Error> {
        match self.folder {
            Some(folder) if next != Next::Elsewhere && self.renewable => {
                folder.hand_on().map_err(Error::Storage)
            }
            Some(folder) if next == Next::Here => folder.release_for_next().map_err(Error::Storage),
            Some(folder) => folder.release().map_err(Error::Storage),
            None => Ok(()),
        }
    }
}

/// The snapshots a task folder is being filled from, by root: stood by when dropped (the
/// folder filled, or the fill failed), so another worker of the host may patch them into
/// newer ones meanwhile; the next task resumes them first (`Shipping::snapshot`).
#[derive(Default)]
struct Reading(Vec<(u32, Arc<parvm_ship::Snapshot>)>);

impl Drop for Reading {
    fn drop(&mut self) {
        for (_, snapshot) in &self.0 {
            snapshot.stand_by();
        }
    }
}

/// A worker's local storage, opened on first use.
pub(crate) struct TaskFolders {
    config: Config,
    /// Opened on first use; an error is kept (shared), so every later task reports it.
    local: Option<Result<LocalStorage, Arc<parvm_local_storage::Error>>>,
    /// Mirror maps as the spawner sent them ([`ToWorker::Mirror`]),
    /// until the VM's first task here decodes them.
    received: HashMap<u32, Vec<u8>>,
    /// The VMs this worker keeps something for: the mirror map on this host (decoded once
    /// per VM), or `None` for a persistent VM without one, so its folder is dropped at exit.
    maps: HashMap<u32, Option<MirrorMap>>,
    /// The abstract mirror maps, decoded, for VMs that ship a root to this host: each task
    /// translates them again with the shipped roots replaced by their snapshots.
    abstracts: HashMap<u32, AbstractMirrorMap>,
    /// Which roots each VM ships here, and the manifests the spawner sent.
    shipping: Shipping,
    /// The host cache of shipped files, opened on first use (an error is kept, as for
    /// local storage).
    cache: Option<Result<HostCache, Arc<parvm_ship::Error>>>,
    /// What was mirrored into each VM's persistent folder, so a reuse refreshes with one
    /// stat per source file and sees what tasks changed in the folder, and into the last
    /// temporary folder, so the next task of its VM can renew it.
    mirrored: MirroredFolders<u32>,
}

impl TaskFolders {
    pub(crate) fn new(config: &Config) -> TaskFolders {
        TaskFolders {
            config: config.clone(),
            local: None,
            received: HashMap::new(),
            maps: HashMap::new(),
            abstracts: HashMap::new(),
            shipping: Shipping::default(),
            cache: None,
            mirrored: MirroredFolders::new(),
        }
    }

    fn local(&mut self) -> Result<&LocalStorage, Error> {
        let config = &self.config;
        self.local
            .get_or_insert_with(|| LocalStorage::from_config(config).map_err(Arc::new))
            .as_ref()
            .map_err(|e| Error::StorageUnavailable(Arc::clone(e)))
    }

    /// Sweeps stale folders, as every worker does when it starts.
    pub(crate) fn sweep(&mut self) {
        match self.local().map(LocalStorage::sweep) {
            Ok(Ok(report)) if !report.removed.is_empty() => {
                tracing::info!(
                    removed = report.removed.len(),
                    freed = %report.bytes_freed_human,
                    "swept stale task folders"
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %one_line(&e), "cannot sweep local storage"),
            Err(e) => tracing::debug!(error = %one_line(&e), "local storage unavailable"),
        }
    }

    pub(crate) fn clear(&mut self, force: bool) -> Result<u64, Error> {
        let report = self.local()?.clear(force).map_err(Error::Storage)?;
        Ok(report.removed.len() as u64)
    }

    /// Keeps VM `vm`'s mirror map (abstract, encoded) and how its roots reach this host,
    /// for its tasks on this worker.
    pub(crate) fn receive_map(&mut self, vm: u32, map: &[u8], plan: ShipPlan) {
        self.maps.remove(&vm);
        self.abstracts.remove(&vm);
        self.received.insert(vm, map.to_vec());
        self.shipping.receive_plan(vm, plan);
    }

    /// Files a shipping frame that arrived between tasks (a manifest pushed before a
    /// spawn request); `false` for another frame.
    pub(crate) fn receive_ship_frame(&mut self, frame: ToWorker<'_>) -> bool {
        self.shipping.file(frame)
    }

    /// The host cache, opened on first use beneath the per-user folder, with the limits of
    /// `PARVM_CACHE_MAX` (else 10% of the free space there).
    fn cache(&mut self) -> Result<&HostCache, Error> {
        if self.cache.is_none() {
            let user_dir = self.local()?.path().to_owned();
            let given = self.config.cache_max().map(|max| (max.bytes, max.count));
            let limits = CacheLimits::given_or_default(given, &user_dir);
            let opened = limits.and_then(|limits| HostCache::open(&user_dir, limits));
            self.cache = Some(opened.map_err(Arc::new));
        }
        match self.cache.as_ref() {
            Some(Ok(cache)) => Ok(cache),
            Some(Err(e)) => Err(Error::CacheUnavailable(Arc::clone(e))),
            None => unreachable!("opened above"),
        }
    }

    /// Drops the persistent folder and the mirror map kept for VM `vm`.
    pub(crate) fn forget(&mut self, vm: u32) {
        self.received.remove(&vm);
        self.maps.remove(&vm);
        self.abstracts.remove(&vm);
        if self.shipping.forget(vm)
            && let Some(Ok(cache)) = &self.cache
            && let Err(e) = cache.evict()
        {
            // Its snapshots no longer pinned, the cache comes back within its limits
            // now, not at the next run's opening.
            tracing::warn!(vm, error = %one_line(&e), "cannot apply the host cache's limits");
        }
        self.mirrored.forget(&vm);
        if let Ok(local) = self.local()
            && let Err(e) = local.discard(vm)
        {
            tracing::warn!(vm, error = %one_line(&e), "cannot remove a persistent folder");
        }
    }

    /// Whether an emptied folder is kept for a next task that has not started yet.
    pub(crate) fn holds_spare(&self) -> bool {
        matches!(&self.local, Some(Ok(local)) if local.holds_spare())
    }

    /// Removes the emptied folder kept for a next task that did not come, before the
    /// worker waits for work: no folder is left without a task.
    pub(crate) fn remove_spare(&mut self) {
        if let Some(Ok(local)) = &self.local
            && let Err(e) = local.remove_spare()
        {
            tracing::warn!(error = %one_line(&e), "cannot remove a spare task folder");
        }
    }

    /// Drops every persistent folder, when the worker leaves.
    pub(crate) fn forget_all(&mut self) {
        self.remove_spare();
        let vms: Vec<u32> = self.maps.keys().copied().collect();
        for vm in vms {
            self.forget(vm);
        }
    }

    /// Takes the task folder, mirrors (or refreshes) into it, and finds the startup folder;
    /// a root shipped to this host is fetched first, through `exchange`.
    pub(crate) fn prepare(
        &mut self,
        request: &SpawnRequest<'_>,
        exchange: &mut dyn Exchange,
    ) -> Result<Prepared, Error> {
        if !request.folder {
            let dir =
                startup_without_folder(request.startup.as_ref(), self.config.mirrored_roots())?;
            return Ok(Prepared {
                dir,
                mirrored: 0,
                folder: None,
                renewable: false,
            });
        }
        let map = self.map(request.vm)?;
        // Held until the folder is filled: the cache keeps what they use.
        let (map, _reading) = match map {
            Some(map) => {
                let (map, reading) = self.ship(request.vm, map, exchange)?;
                (Some(map), reading)
            }
            None => (None, Reading::default()),
        };
        let persistence = if request.persistent {
            Persistence::Persistent
        } else {
            Persistence::Temporary
        };
        if request.persistent {
            // Remember the VM even without a map, so the folder is dropped at exit.
            self.maps.entry(request.vm).or_insert(None);
        }
        let mut folder = self
            .local()?
            .take(request.vm, persistence)
            .map_err(Error::Storage)?;
        // A folder that must hold only its mirrored inputs but holds what a task before
        // left: handed on from the task before, or a clean persistent one reused.
        let renew = folder.handed_on() || (request.persistent && request.clean && folder.reused());
        let mut mirrored = 0;
        if let Some(map) = &map {
            // Named when the disk is full: it holds a copy of the shipped inputs too.
            let cache = match (&self.cache, _reading.0.is_empty()) {
                (Some(Ok(cache)), false) => Some(cache.path().to_owned()),
                _ => None,
            };
            // On failure the folder is released by its drop (removed when temporary).
            let (filled, report) = self.fill(request.vm, folder, map, renew, cache.as_deref())?;
            folder = filled;
            mirrored = report.bytes;
            tracing::debug!(
                elapsed_ms = report.elapsed.as_secs_f64() * 1e3,
                files = report.files,
                bytes = report.bytes,
                skipped = report.skipped,
                removed = report.removed,
                "mirrored into {}",
                folder.path().display()
            );
        } else if renew {
            folder = self.emptied(folder)?;
        }
        let dir = match &request.startup {
            None => folder.path().to_owned(),
            // Checked beneath the task folder without following a symlink: an earlier
            // task may have planted one in a persistent folder to move the next one's
            // results elsewhere.
            Some(Startup::InFolder(sub)) => parvm_mirror_fs::open_beneath(folder.path(), sub)
                .map(|(_, path)| path)
                .map_err(|source| Error::StartupBeneath {
                    folder: folder.path().to_owned(),
                    source,
                })?,
            Some(_) => {
                return Err(Error::StartupOutsideFolder {
                    folder: folder.path().to_owned(),
                });
            }
        };
        Ok(Prepared {
            dir: Some(dir),
            mirrored,
            folder: Some(folder),
            renewable: map.is_some(),
        })
    }

    /// Mirrors `map` into `folder`; mirror-fs's [`MirroredFolders`] picks between a fresh
    /// mirror and a refresh from what the folder is. With `renew` (a folder the task
    /// before handed on, or a clean persistent folder reused), it is renewed instead: made
    /// what a fresh mirror makes, for what a refresh costs; one that cannot be is emptied
    /// (a temporary one that is not as made, replaced) and mirrored afresh.
    /// `cache` is the host cache when `map` holds roots shipped here.
    fn fill(
        &mut self,
        vm: u32,
        mut folder: TaskFolder,
        map: &MirrorMap,
        renew: bool,
        cache: Option<&std::path::Path>,
    ) -> Result<(TaskFolder, MirrorReport), Error> {
        // A temporary folder's renewal checks every copy by a `stat` (its change time too),
        // so it needs no inotify instance, of which a user has 128 for all their programs.
        let options = match folder.persistence() {
            Persistence::Temporary => MirrorOptions::new().no_inotify(),
            Persistence::Persistent => MirrorOptions::new(),
        };
        if renew {
            let keep = [OsStr::new(LOCK_FILE), OsStr::new(OWNER_FILE)];
            match self.mirrored.renew(vm, map, folder.path(), &keep, &options) {
                Ok(Some(report)) => return Ok((folder, report)),
                Ok(None) => {}
                Err(e) => tracing::debug!(
                    error = %one_line(&e),
                    "cannot renew {}; emptying it to mirror afresh",
                    folder.path().display()
                ),
            }
            folder = self.emptied(folder)?;
        }
        let state = match (folder.persistence(), folder.reused()) {
            (Persistence::Temporary, _) => FolderState::Temporary,
            (_, false) => FolderState::PersistentNew,
            (_, true) => FolderState::PersistentReused,
        };
        let report = self
            .mirrored
            .fill(vm, map, folder.path(), state, &options)
            .map_err(|source| mirror_into_error(folder.path(), cache, source))?;
        Ok((folder, report))
    }

    /// `folder`, holding what a task before left, emptied; a temporary one that is no
    /// longer as it was made is removed and a new one taken (a persistent one fails the
    /// task: it is the VM's folder on this worker).
    fn emptied(&mut self, mut folder: TaskFolder) -> Result<TaskFolder, Error> {
        match folder.empty() {
            Ok(()) => Ok(folder),
            Err(e) if folder.persistence() == Persistence::Persistent => Err(Error::Storage(e)),
            Err(e) => {
                tracing::debug!(error = %one_line(&e), "taking a new task folder instead");
                let vm = folder.vm_index();
                // Dropped, a temporary folder is removed.
                drop(folder);
                self.local()?
                    .take(vm, Persistence::Temporary)
                    .map_err(Error::Storage)
            }
        }
    }

    /// `map` with each root the VM ships to this host replaced by a snapshot of the
    /// spawner's manifest of it (fetched into the host cache first), and the snapshots,
    /// to hold until the folder is filled; `map` as it is when nothing is shipped here.
    fn ship(
        &mut self,
        vm: u32,
        map: MirrorMap,
        exchange: &mut dyn Exchange,
    ) -> Result<(MirrorMap, Reading), Error> {
        let Some(abstract_map) = self.abstracts.get(&vm) else {
            return Ok((map, Reading::default()));
        };
        let roots = self.config.mirrored_roots().to_vec();
        let shipped = self.shipping.shipped_roots(vm, &roots, abstract_map);
        if shipped.is_empty() {
            return Ok((map, Reading::default()));
        }
        let abstract_map = abstract_map.clone();
        self.cache()?;
        let mut reading = Reading::default();
        for &root in &shipped {
            let Some(Ok(cache)) = &self.cache else {
                unreachable!("opened above");
            };
            let snapshot = self.shipping.snapshot(exchange, cache, vm, root)?;
            reading.0.push((root, snapshot));
        }
        let paths: Vec<(u32, &std::path::Path)> = reading
            .0
            .iter()
            .map(|(root, s)| (*root, s.path()))
            .collect();
        let roots = fetch::roots_with(&roots, &paths);
        let map = abstract_map.to_actual(&roots).map_err(Error::Mirror)?;
        Ok((map, reading))
    }

    /// The VM's mirror map on this host, decoded once per VM; `None` when the VM sent
    /// none. A map that cannot be decoded stays as received, so each of the VM's tasks
    /// reports why.
    fn map(&mut self, vm: u32) -> Result<Option<MirrorMap>, Error> {
        let Some(bytes) = self.received.get(&vm) else {
            return Ok(self.maps.get(&vm).cloned().flatten());
        };
        let abstract_map: AbstractMirrorMap =
            rmp_serde::from_slice(bytes).map_err(Error::MirrorMapDecode)?;
        let roots = self.config.mirrored_roots().to_vec();
        let shipped = self.shipping.shipped_roots(vm, &roots, &abstract_map);
        // A worker's entry may name a folder that is not on its host (its inputs are
        // shipped); read directly, it would fail source by source.
        for entry in &abstract_map.entries {
            let index = u32::try_from(entry.source.root).unwrap_or(u32::MAX);
            if let Some(root) = roots.get(entry.source.root)
                && !shipped.contains(&index)
                && !root.exists()
            {
                return Err(Error::MirroredRootMissing {
                    index,
                    root: root.clone(),
                });
            }
        }
        // A root shipped here need not be one this host lists: it is put in place per
        // task. The rest translate as always.
        let placeholders: Vec<(u32, &std::path::Path)> = shipped
            .iter()
            .map(|&root| (root, std::path::Path::new("/")))
            .collect();
        let map = abstract_map
            .to_actual(&fetch::roots_with(&roots, &placeholders))
            .map_err(Error::Mirror)?;
        if !shipped.is_empty() {
            self.abstracts.insert(vm, abstract_map);
        }
        self.received.remove(&vm);
        self.maps.insert(vm, Some(map.clone()));
        Ok(Some(map))
    }
}

/// The error of mirroring into task folder `folder`; `cache` is the host cache when the map
/// holds roots shipped here, named when the disk is full.
fn mirror_into_error(
    folder: &std::path::Path,
    cache: Option<&std::path::Path>,
    source: parvm_mirror_fs::Error,
) -> Error {
    let folder = folder.to_owned();
    match cache {
        Some(cache) if matches!(source, parvm_mirror_fs::Error::DiskFull { .. }) => {
            Error::MirrorIntoFull {
                folder,
                cache: cache.to_owned(),
                source: Box::new(source),
            }
        }
        _ => Error::MirrorInto { folder, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_under_shipped_inputs_names_the_host_cache() {
        let full = || parvm_mirror_fs::Error::DiskFull {
            from: "/cache/snapshots/s/lib/big.lib".into(),
            to: "/local/parvm-u/7_vm0/lib/big.lib".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let folder = std::path::Path::new("/local/parvm-u/7_vm0");
        let cache = std::path::Path::new("/local/parvm-u/cache");
        let said = one_line(&mirror_into_error(folder, Some(cache), full()));
        assert_eq!(said.matches("no space left").count(), 1, "{said}");
        assert!(
            said.contains("`/local/parvm-u/7_vm0/lib/big.lib`")
                && said.contains("host cache `/local/parvm-u/cache` holds a copy")
                && said.contains("PARALLEL_LOCAL_STORAGE"),
            "{said}"
        );
        // Shared inputs: the disk holds only the task folders.
        let said = mirror_into_error(folder, None, full()).to_string();
        assert!(!said.contains("host cache"), "{said}");
        // Another failure under shipped inputs says only what it is.
        let other = parvm_mirror_fs::Error::NotAFolder {
            path: "/local/parvm-u/7_vm0/lib".into(),
            from: "/cache/snapshots/s/lib".into(),
        };
        let said = mirror_into_error(folder, Some(cache), other).to_string();
        assert!(!said.contains("host cache"), "{said}");
    }

    fn config(local: &std::path::Path, mirrored: &std::path::Path) -> Config {
        Config::builder()
            .mirrored_roots([mirrored])
            .local_root(local)
            .build()
            .unwrap()
    }

    #[test]
    fn a_startup_folder_that_does_not_fit_is_a_typed_error() {
        let roots = [PathBuf::from("/shared/a")];
        let error = startup_without_folder(Some(&Startup::Mirrored(2, "run".into())), &roots)
            .expect_err("entry 2 is not on this host");
        assert!(matches!(
            error,
            Error::StartupRootMissing {
                index: 2,
                entries: 1
            }
        ));
        assert_eq!(
            error.to_string(),
            "the startup folder is in mirrored storage entry 2, but PARALLEL_MIRRORED_STORAGE has 1 entries on this host; list the same mirrored folders, in the same order, on every host"
        );
        let error = startup_without_folder(Some(&Startup::InFolder("run".into())), &roots)
            .expect_err("no task folder");
        assert!(
            matches!(&error, Error::StartupWithoutFolder { path } if path.as_os_str() == "run")
        );
        assert!(
            error
                .to_string()
                .starts_with("startup folder `run` is relative to a task folder")
        );
        assert_eq!(
            startup_without_folder(Some(&Startup::Mirrored(0, "run".into())), &roots).unwrap(),
            Some(PathBuf::from("/shared/a/run"))
        );
    }

    #[test]
    fn local_storage_that_cannot_open_fails_every_use_with_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let config = config(&missing, dir.path());
        // Building the configuration makes the root; it goes away before the worker uses it.
        std::fs::remove_dir(&missing).unwrap();
        let mut folders = TaskFolders::new(&config);
        for _ in 0..2 {
            let error = folders.clear(false).expect_err("the root does not exist");
            assert!(matches!(error, Error::StorageUnavailable(_)), "{error:?}");
            let text = one_line(&error);
            assert!(text.contains(&missing.display().to_string()), "{text}");
            assert!(text.starts_with("local storage (PARALLEL_LOCAL_STORAGE) failed: "));
        }
        let error = clear_here(&config, false).expect_err("no root");
        assert!(matches!(error, Error::Storage(_)), "{error:?}");
    }

    #[test]
    fn an_unreadable_mirror_map_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut folders = TaskFolders::new(&config(dir.path(), dir.path()));
        folders.receive_map(0, b"\xc1", ShipPlan::Never);
        for _ in 0..2 {
            let error = folders.map(0).expect_err("not MessagePack");
            assert!(matches!(error, Error::MirrorMapDecode(_)), "{error:?}");
            let text = error.to_string();
            assert!(text.starts_with("cannot decode the mirror map: "), "{text}");
            assert!(
                text.ends_with("run the same parvm build on every host"),
                "{text}"
            );
        }
        assert!(folders.map(1).unwrap().is_none());
        folders.forget(0);
        assert!(folders.map(0).unwrap().is_none(), "forgotten with its VM");
    }
}

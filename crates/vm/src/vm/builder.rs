//! [`VmBuilder`]: checks a VM's mirror map and storage settings on the spawner, and
//! encodes the map once for the VM's workers.
//!
//! It must not know how tasks are spawned or messages received (that is the parent
//! module, which owns [`Vm`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use parvm_env_config::Config;

use super::Vm;
use crate::ship::serve::VmShip;
use crate::spawner::Shared;
use crate::wire::Startup;
use crate::{Error, Runtime};

// Made here, not in runtime.rs, so that the runtime does not depend on the VM objects
// built on it.
impl Runtime {
    /// A builder for a new VM object on this runtime; each VM gets its own index.
    #[must_use]
    pub fn vm(&self) -> VmBuilder {
        let (shared, listen) = self.parts();
        VmBuilder::new(Arc::clone(shared), listen)
    }
}

/// Builds a [`Vm`]: mirror map, startup folder, persistent storage.
pub struct VmBuilder {
    shared: Arc<Shared>,
    listen: Option<SocketAddr>,
    mirror: Vec<(String, PathBuf)>,
    startup: Option<PathBuf>,
    persistent: bool,
    clean: bool,
    local_folder: bool,
}

impl VmBuilder {
    /// A builder with the defaults, for a VM on `shared`.
    pub(crate) fn new(shared: Arc<Shared>, listen: Option<SocketAddr>) -> VmBuilder {
        VmBuilder {
            shared,
            listen,
            mirror: Vec::new(),
            startup: None,
            persistent: false,
            clean: false,
            local_folder: false,
        }
    }

    /// Copies what `source` (a path or glob on the spawner, inside mirrored storage;
    /// relative to the current folder) matches into folder `target` of each task folder.
    /// Default: no mirroring. Entries apply in the order given.
    #[must_use]
    pub fn mirror(mut self, source: impl Into<String>, target: impl Into<PathBuf>) -> Self {
        self.mirror.push((source.into(), target.into()));
        self
    }

    /// Where tasks start. With a task folder (a mirror map, persistent or local folder)
    /// it is relative to the task folder; without one it is a folder on the spawner,
    /// translated through mirrored storage to each host. Default: the task folder, or the
    /// worker's own current folder.
    #[must_use]
    pub fn startup_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.startup = Some(dir.into());
        self
    }

    /// Whether a worker keeps its task folder for the next task of this VM; default false.
    /// Mirrored files that changed at the source are copied again before reuse.
    #[must_use]
    pub fn persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }

    /// Whether a reused persistent folder is cleaned first: what earlier tasks of this VM
    /// wrote in it (their results, scratch files and folders, symlinks) is removed, and the
    /// mirrored inputs stay (and are refreshed as with [`persistent`](Self::persistent)),
    /// so no task reads an earlier task's `result.txt` as its own. Turning it on makes the
    /// folders persistent. Default false: a reused folder keeps what tasks wrote.
    ///
    /// Before each reuse the folder is renewed: made what a fresh mirror of the map makes
    /// (every copy checked by a `stat` and copied again when a task changed it, everything
    /// else removed, symlinks never followed, copies of sources gone since included); without
    /// a map it is emptied. It costs a `stat` per mirrored file and a walk of the folder per
    /// task.
    #[must_use]
    pub fn persistent_clean(mut self, on: bool) -> Self {
        self.clean = on;
        if on {
            self.persistent = true;
        }
        self
    }

    /// Whether each task gets a (fresh) folder in local storage even without a mirror map;
    /// default false.
    #[must_use]
    pub fn local_folder(mut self, on: bool) -> Self {
        self.local_folder = on;
        self
    }

    /// Checks the settings and builds the VM.
    ///
    /// # Errors
    /// A mirror source is outside mirrored storage or the map is invalid, a literal mirror
    /// source (no `*`, `?` or `[`) does not exist on the spawner
    /// ([`Error::MirrorSourceMissing`]; a glob that matches nothing is not an error), or the
    /// startup folder is absolute while a task folder is used.
    pub fn build(self) -> Result<Vm, Error> {
        self.shared.check_open()?;
        let folder = self.persistent || self.local_folder || !self.mirror.is_empty();
        let (mirror, abstract_map) = if self.mirror.is_empty() {
            (None, None)
        } else {
            let (bytes, abstract_map) =
                crate::task_folder::encode_map(&self.shared.config, &self.mirror)?;
            (Some(bytes), Some(abstract_map))
        };
        let startup = match self.startup {
            None => None,
            Some(dir) if folder => {
                if dir.is_absolute()
                    || dir
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(Error::Setting {
                        setting: "startup_dir",
                        reason: format!(
                            "`{}` must be relative to the task folder and stay inside it, because the VM uses task folders",
                            dir.display()
                        ),
                    });
                }
                Some(Startup::InFolder(dir))
            }
            Some(dir) => Some(translate_startup(&self.shared.config, &dir)?),
        };
        let index = self.shared.next_vm.fetch_add(1, Ordering::Relaxed);
        let mirror_sent = Arc::new(Mutex::new(HashSet::new()));
        let mut ship = abstract_map.and_then(|map| {
            let config = &self.shared.config;
            // The spawner's own local storage keeps what it hashed for the next run.
            let user_dir = (config.ship() != parvm_env_config::ShipMode::Never)
                .then(|| parvm_local_storage::LocalStorage::open(config.local_root()))
                .and_then(|opened| {
                    opened
                        .inspect_err(|e| {
                            tracing::debug!(error = %crate::error::one_line(e), "no local storage on the spawner to keep hashes in")
                        })
                        .ok()
                })
                .map(|storage| storage.path().to_path_buf());
            // The local backend's workers are this process's children: on this kernel.
            let workers_here = self.shared.transport.workers_are_children();
            VmShip::new(
                index,
                (config.ship(), user_dir.as_deref(), workers_here),
                config.mirrored_roots(),
                &map,
                Arc::clone(&mirror_sent),
            )
        });
        let jobs = match &mut ship {
            Some(ship) => {
                Some(
                    ship.start(Arc::downgrade(&self.shared))
                        .map_err(|source| Error::Io {
                            what: "start the thread that ships inputs",
                            path: PathBuf::from(format!("vm{index}")),
                            source,
                        })?,
                )
            }
            None => None,
        };
        {
            let mut state = self.shared.lock();
            state
                .inboxes
                .insert(index, std::collections::VecDeque::new());
            if let Some(jobs) = jobs {
                state.ship.insert(index, jobs);
            }
        }
        Ok(Vm {
            shared: self.shared,
            listen: self.listen,
            index,
            mirror,
            mirror_sent,
            ship,
            folder,
            persistent: self.persistent,
            clean: self.clean,
            startup,
        })
    }
}

fn translate_startup(config: &Config, dir: &Path) -> Result<Startup, Error> {
    let absolute = std::fs::canonicalize(dir).map_err(|source| Error::Io {
        what: "resolve the startup folder",
        path: dir.to_owned(),
        source,
    })?;
    for (index, root) in config.mirrored_roots().iter().enumerate() {
        if let Ok(suffix) = absolute.strip_prefix(root) {
            return Ok(Startup::Mirrored(index, suffix.to_owned()));
        }
    }
    tracing::debug!(dir = %absolute.display(), "startup folder is outside mirrored storage; used as is on every host");
    Ok(Startup::Literal(absolute))
}

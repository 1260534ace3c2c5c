//! The worker's side of shipping: which roots of a VM's map this host has shipped (the
//! probe), the manifests the spawner sent, and fetching what the host cache lacks before a
//! snapshot of a manifest is taken to mirror from.
//!
//! It talks to the spawner only through an [`Exchange`], which the spawn loop implements
//! over its link (setting aside the frames that are not for shipping), so this module
//! knows neither the loop nor the transport.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parvm_mirror_fs::AbstractMirrorMap;
use parvm_ship::{Begin, BlobWriter, Digest, HostCache, Manifest, Snapshot};

use super::probe;
use crate::Error;
use crate::wire::{self, FromWorker, MAX_BLOBS_WANTED, ShipPlan, ToWorker};

/// How many blobs are claimed (and written, each to a temporary file of its own) at a
/// time: a bound on the files a fetch holds open.
const CLAIM_BATCH: usize = 256;

/// A worker's line to the spawner while it fetches.
pub(crate) trait Exchange {
    /// Sends `frame` to the spawner; `Err` says why it could not.
    fn send(&mut self, frame: &FromWorker<'_>) -> Result<(), String>;
    /// The next frame for shipping from the spawner (a [`ToWorker::Manifest`],
    /// [`ToWorker::ManifestFailed`] or blob frame), as it arrived; other frames are kept
    /// for the spawn loop. `Err` when the spawner is gone or the transport failed.
    fn next(&mut self) -> Result<Vec<u8>, String>;
}

/// Whether `frame` is one of the frames [`Exchange::next`] returns.
pub(crate) fn is_ship_frame(frame: &ToWorker<'_>) -> bool {
    matches!(
        frame,
        ToWorker::Manifest { .. }
            | ToWorker::ManifestFailed { .. }
            | ToWorker::BlobData { .. }
            | ToWorker::BlobEnd { .. }
            | ToWorker::BlobFailed { .. }
    )
}

/// The manifest of a shipped root as the spawner sent it last, or why there is none.
type Latest = Result<Arc<Manifest>, String>;

/// What a worker keeps about shipping: per VM, the plan the spawner sent and the roots
/// this host ships (decided at the VM's first task here), and the latest manifests.
#[derive(Default)]
pub(crate) struct Shipping {
    plans: HashMap<u32, ShipPlan>,
    decided: HashMap<u32, BTreeSet<u32>>,
    manifests: HashMap<(u32, u32), Latest>,
}

impl Shipping {
    /// Keeps the plan of VM `vm`, sent with its map.
    pub(crate) fn receive_plan(&mut self, vm: u32, plan: ShipPlan) {
        self.decided.remove(&vm);
        self.plans.insert(vm, plan);
    }

    /// Drops what is kept for VM `vm`.
    pub(crate) fn forget(&mut self, vm: u32) {
        self.plans.remove(&vm);
        self.decided.remove(&vm);
        self.manifests.retain(|&(of, _), _| of != vm);
    }

    /// Files a manifest frame; a blob frame outside a fetch (the rest of a transfer that
    /// failed) is dropped. `false` for a frame that is not for shipping.
    pub(crate) fn file(&mut self, frame: ToWorker<'_>) -> bool {
        match frame {
            ToWorker::Manifest { vm, root, bytes } => {
                let manifest = Manifest::decode(&bytes).map(Arc::new).map_err(|e| {
                    format!(
                        "the spawner's manifest cannot be read: {}; run the same parvm build on every host",
                        crate::error::one_line(&e)
                    )
                });
                self.manifests.insert((vm, root), manifest);
                true
            }
            ToWorker::ManifestFailed { vm, root, reason } => {
                self.manifests.insert((vm, root), Err(reason));
                true
            }
            other => is_ship_frame(&other),
        }
    }

    /// The roots of `map` that VM `vm` ships to this host (whose own mirrored roots are
    /// `roots`), decided at the VM's first task here: `never` none, `always` every root the
    /// map uses, `auto` those whose marker this host does not see.
    pub(crate) fn shipped_roots(
        &mut self,
        vm: u32,
        roots: &[PathBuf],
        map: &AbstractMirrorMap,
    ) -> BTreeSet<u32> {
        if let Some(decided) = self.decided.get(&vm) {
            return decided.clone();
        }
        let used: BTreeSet<u32> = map
            .entries
            .iter()
            .filter_map(|e| u32::try_from(e.source.root).ok())
            .collect();
        let shipped: BTreeSet<u32> = match self.plans.get(&vm) {
            None | Some(ShipPlan::Never) => BTreeSet::new(),
            Some(ShipPlan::Always) => used,
            Some(ShipPlan::Probe(probes)) => used
                .into_iter()
                .filter(|root| {
                    !probes
                        .iter()
                        .any(|p| p.root == *root && probe::is_shared(roots, p))
                })
                .collect(),
        };
        if !shipped.is_empty() {
            tracing::debug!(vm, ?shipped, "mirrored roots shipped to this host");
        }
        self.decided.insert(vm, shipped.clone());
        shipped
    }

    /// A snapshot of root `root` of VM `vm` as the spawner has it now: the manifest (asked
    /// for when none came yet), the blobs this host's `cache` lacks, then the snapshot. A
    /// corrupted blob found while materialising is fetched again, once.
    ///
    /// # Errors
    /// The spawner could not describe or send the root ([`Error::ShipRefused`]), the cache
    /// failed or a blob arrived damaged ([`Error::Ship`], naming the file), or the spawner
    /// went away ([`Error::ShipInterrupted`]).
    pub(crate) fn snapshot(
        &mut self,
        exchange: &mut dyn Exchange,
        cache: &HostCache,
        vm: u32,
        root: u32,
    ) -> Result<Snapshot, Error> {
        let manifest = self.manifest(exchange, vm, root)?;
        let ship_error = |source| Error::Ship { root, source };
        let mut again = true;
        loop {
            self.fetch_missing(exchange, cache, vm, root, &manifest)?;
            match cache.snapshot(&manifest) {
                Ok(snapshot) => return Ok(snapshot),
                Err(e @ parvm_ship::Error::CorruptBlob { .. }) if again => {
                    tracing::warn!(error = %crate::error::one_line(&e), "fetching a corrupted blob again");
                    again = false;
                }
                Err(e) => return Err(ship_error(e)),
            }
        }
    }

    /// The latest manifest of the root, asked for when none came yet.
    fn manifest(
        &mut self,
        exchange: &mut dyn Exchange,
        vm: u32,
        root: u32,
    ) -> Result<Arc<Manifest>, Error> {
        if !self.manifests.contains_key(&(vm, root)) {
            exchange
                .send(&FromWorker::ManifestWanted { vm, root })
                .map_err(|reason| Error::ShipInterrupted { root, reason })?;
            while !self.manifests.contains_key(&(vm, root)) {
                let payload = exchange
                    .next()
                    .map_err(|reason| Error::ShipInterrupted { root, reason })?;
                if let Ok(frame) = wire::decode::<ToWorker<'_>>(&payload) {
                    self.file(frame);
                }
            }
        }
        match &self.manifests[&(vm, root)] {
            Ok(manifest) => Ok(Arc::clone(manifest)),
            Err(reason) => Err(Error::ShipRefused {
                root,
                reason: reason.clone(),
            }),
        }
    }

    /// Fetches every blob of `manifest` that `cache` lacks: claimed a batch at a time,
    /// asked for, written as the chunks arrive; a blob another fetcher of this host has
    /// claimed is waited for, then claimed again (a fetcher that died released it).
    fn fetch_missing(
        &mut self,
        exchange: &mut dyn Exchange,
        cache: &HostCache,
        vm: u32,
        root: u32,
        manifest: &Manifest,
    ) -> Result<(), Error> {
        let ship_error = |source| Error::Ship { root, source };
        let mut pending = cache.missing(manifest);
        while !pending.is_empty() {
            let mut busy = Vec::new();
            let mut writers: HashMap<Digest, Writing> = HashMap::new();
            let mut rest = Vec::new();
            for (digest, size, shown) in pending.drain(..) {
                if writers.len() >= CLAIM_BATCH {
                    rest.push((digest, size, shown));
                    continue;
                }
                match cache.begin(digest, size, &shown).map_err(ship_error)? {
                    Begin::Present => {}
                    Begin::Busy => busy.push((digest, size, shown)),
                    Begin::Mine(writer) => {
                        writers.insert(digest, Writing { writer, shown });
                    }
                }
            }
            if !writers.is_empty() {
                self.receive(exchange, vm, root, writers)?;
            }
            for (digest, _, _) in &busy {
                cache.wait(digest).map_err(ship_error)?;
            }
            pending = rest;
            pending.extend(busy);
        }
        Ok(())
    }

    /// Asks for the claimed blobs and writes them as they arrive.
    fn receive(
        &mut self,
        exchange: &mut dyn Exchange,
        vm: u32,
        root: u32,
        mut writers: HashMap<Digest, Writing>,
    ) -> Result<(), Error> {
        let interrupted = |reason| Error::ShipInterrupted { root, reason };
        let ship_error = |source| Error::Ship { root, source };
        let digests: Vec<Digest> = writers.keys().copied().collect();
        for batch in digests.chunks(MAX_BLOBS_WANTED) {
            exchange
                .send(&FromWorker::BlobsWanted {
                    vm,
                    root,
                    digests: batch.to_vec(),
                })
                .map_err(interrupted)?;
        }
        while !writers.is_empty() {
            let payload = exchange.next().map_err(interrupted)?;
            let Ok(frame) = wire::decode::<ToWorker<'_>>(&payload) else {
                continue;
            };
            match frame {
                ToWorker::BlobData {
                    vm: of,
                    digest,
                    data,
                } if of == vm => {
                    if let Some(writing) = writers.get_mut(&digest) {
                        writing.writer.write(&data).map_err(ship_error)?;
                    }
                }
                ToWorker::BlobEnd { vm: of, digest } if of == vm => {
                    if let Some(writing) = writers.remove(&digest) {
                        writing.writer.finish().map_err(ship_error)?;
                    }
                }
                ToWorker::BlobFailed {
                    vm: of,
                    digest,
                    reason,
                } if of == vm => {
                    if let Some(writing) = writers.remove(&digest) {
                        return Err(Error::ShipRefused {
                            root,
                            reason: format!("`{}`: {reason}", writing.shown.display()),
                        });
                    }
                }
                other => {
                    self.file(other);
                }
            }
        }
        Ok(())
    }
}

/// A blob being received.
struct Writing {
    writer: BlobWriter,
    /// A file of the manifest that has it, for messages.
    shown: PathBuf,
}

/// This host's roots with each shipped root replaced by its snapshot's path; a shipped
/// root this host does not list at all is added at its index (the others in between, when
/// missing, stay missing and fail as before).
pub(crate) fn roots_with(roots: &[PathBuf], snapshots: &[(u32, &Path)]) -> Vec<PathBuf> {
    let mut out = roots.to_vec();
    for &(root, path) in snapshots {
        let index = root as usize;
        if out.len() <= index {
            // Placeholder entries that do not exist, so a map using them fails as before.
            out.resize(index + 1, PathBuf::from("/nonexistent-mirrored-root"));
        }
        out[index] = path.to_owned();
    }
    out
}

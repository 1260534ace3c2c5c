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

/// How many newer manifests one fetch takes, in all, after the spawner refused to send a
/// file of its manifest ([`refresh_waits`]): under an editor that saves again and again,
/// a scan may list the temporary file of a save in progress that is renamed away before
/// the worker asks for it, so several manifests in a row may each name a file gone by its
/// turn (three did, once in some 600 tasks of a probe saving 20 times a second).
const MAX_REFRESHES: usize = 8;

/// The waits before each newer manifest: mirror-fs's `SETTLE_WAITS` (a file being saved
/// settles within them), then the last of them again, [`MAX_REFRESHES`] in all (about
/// 2.5 s): bounded, as sources that never stop changing must fail the task.
fn refresh_waits() -> impl Iterator<Item = std::time::Duration> {
    let settle = parvm_mirror_fs::SETTLE_WAITS;
    let last = settle.last().copied().unwrap_or_default();
    settle
        .into_iter()
        .chain(std::iter::repeat(last))
        .take(MAX_REFRESHES)
}

/// How many blobs are claimed (and written, each into its claim file) and asked for at a
/// time. Two batches are on their way at most, so a fetch holds at most twice this many
/// files open.
const CLAIM_BATCH: usize = 128;

/// A worker's line to the spawner while it fetches.
pub(crate) trait Exchange {
    /// Sends `frame` to the spawner; `Err` says why it could not.
    fn send(&mut self, frame: &FromWorker<'_>) -> Result<(), String>;
    /// The next frame for shipping from the spawner (a [`ToWorker::Manifest`],
    /// [`ToWorker::ManifestFailed`] or blob frame), as it arrived; other frames are kept
    /// for the spawn loop. `Err` when the spawner is gone or the transport failed.
    fn next(&mut self) -> Result<Vec<u8>, String>;
    /// Whether frames from the spawner arrive exactly as it sent them or not at all
    /// ([`parvm_transport::Transport::delivers_frames_intact`]): a whole blob is then taken
    /// as the spawner vouched for it ([`BlobWriter::trust_sender`]) instead of hashed again.
    fn delivers_intact(&self) -> bool;
}

/// Whether `frame` is one of the frames [`Exchange::next`] returns.
pub(crate) fn is_ship_frame(frame: &ToWorker<'_>) -> bool {
    matches!(
        frame,
        ToWorker::Manifest { .. }
            | ToWorker::ManifestFailed { .. }
            | ToWorker::BlobData { .. }
            | ToWorker::BlobBatch { .. }
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
    /// The last snapshot of each shipped root, with its manifest: kept (pinned in the
    /// cache) while the VM lives, so the next task with unchanged inputs mirrors from it
    /// without asking the cache again, the next manifest is looked for only where it
    /// differs from this one, and the next snapshot is patched from it.
    held: HashMap<(u32, u32), (Arc<Manifest>, Arc<Snapshot>)>,
    /// Requests for blobs sent so far: each `BlobsWanted` is numbered, and a failure
    /// naming a request older than the current fetch's first belongs to an abandoned
    /// transfer.
    requests: u64,
}

impl Shipping {
    /// Keeps the plan of VM `vm`, sent with its map.
    pub(crate) fn receive_plan(&mut self, vm: u32, plan: ShipPlan) {
        self.decided.remove(&vm);
        self.plans.insert(vm, plan);
    }

    /// Drops what is kept for VM `vm`; true when that let go of a snapshot it held.
    pub(crate) fn forget(&mut self, vm: u32) -> bool {
        self.plans.remove(&vm);
        self.decided.remove(&vm);
        self.manifests.retain(|&(of, _), _| of != vm);
        let held = self.held.len();
        self.held.retain(|&(of, _), _| of != vm);
        self.held.len() < held
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
    /// corrupted blob found while materialising is fetched again, once. A file the spawner
    /// can no longer send as this manifest has it (it changed or went at the source since)
    /// is looked for in the spawner's current manifest, after each of mirroring's
    /// [`SETTLE_WAITS`](parvm_mirror_fs::SETTLE_WAITS) (so a save in progress finishes
    /// first): the task then sees its inputs as they are when its folder is filled, as a
    /// task of a shared root does; a file that never stops changing fails it. The last of
    /// those waits is repeated, up to [`MAX_REFRESHES`] newer manifests in all, since busy
    /// sources (an editor saving again and again) may refuse a file of each.
    ///
    /// # Errors
    /// The spawner could not describe the root ([`Error::ShipRefused`]) or send one of its
    /// files ([`Error::ShipBlobRefused`]), the cache failed or a blob arrived damaged
    /// ([`Error::Ship`], naming the file), or the spawner went away
    /// ([`Error::ShipInterrupted`]).
    pub(crate) fn snapshot(
        &mut self,
        exchange: &mut dyn Exchange,
        cache: &HostCache,
        vm: u32,
        root: u32,
    ) -> Result<Arc<Snapshot>, Error> {
        let mut manifest = self.manifest(exchange, vm, root)?;
        let mut waits = refresh_waits();
        loop {
            match self.snapshot_of(exchange, cache, (vm, root), &manifest) {
                Err(refused @ Error::ShipBlobRefused { .. }) => {
                    let Some(wait) = waits.next() else {
                        return Err(refused);
                    };
                    std::thread::sleep(wait);
                    let used = manifest.root_digest();
                    self.manifests.remove(&(vm, root));
                    manifest = self.manifest(exchange, vm, root)?;
                    if manifest.root_digest() == used {
                        // Nothing moved at the source: the file cannot be read there.
                        return Err(refused);
                    }
                    tracing::debug!(
                        vm,
                        root,
                        error = %crate::error::one_line(&refused),
                        "a file changed at the source since this manifest; fetching with the current one"
                    );
                }
                done => return done,
            }
        }
    }

    /// [`snapshot`](Shipping::snapshot) of `manifest`, the latest this worker has of the root.
    fn snapshot_of(
        &mut self,
        exchange: &mut dyn Exchange,
        cache: &HostCache,
        (vm, root): (u32, u32),
        manifest: &Arc<Manifest>,
    ) -> Result<Arc<Snapshot>, Error> {
        // A held snapshot gone meanwhile (another worker patched it into a newer one, or it
        // shared a blob found damaged) is built again.
        if let Some((held, snapshot)) = self.held.get(&(vm, root))
            && held.root_digest() == manifest.root_digest()
            && cache
                .resume(snapshot)
                .map_err(|source| Error::Ship { root, source })?
        {
            return Ok(Arc::clone(snapshot));
        }
        let held = self.held.remove(&(vm, root));
        let snapshot = Arc::new(self.fetch_snapshot(exchange, cache, vm, root, manifest, held)?);
        self.held
            .insert((vm, root), (Arc::clone(manifest), Arc::clone(&snapshot)));
        Ok(snapshot)
    }

    /// Fetches what the cache lacks of `manifest` and takes its snapshot. With the
    /// snapshot of an earlier manifest of the root (`held`), only what changed since is
    /// looked for; that snapshot is let go once the new manifest's blobs are pinned, so
    /// the cache may evict it for the new one.
    fn fetch_snapshot(
        &mut self,
        exchange: &mut dyn Exchange,
        cache: &HostCache,
        vm: u32,
        root: u32,
        manifest: &Manifest,
        held: Option<(Arc<Manifest>, Arc<Snapshot>)>,
    ) -> Result<Snapshot, Error> {
        let ship_error = |source| Error::Ship { root, source };
        let start = std::time::Instant::now();
        let mut partial = held.is_some();
        // `older`: the manifest a changed large file's pieces are compared with;
        // `previous`: its snapshot when this caller alone holds it now.
        let (mut pending, older, mut previous) = match held {
            Some((held, snapshot)) => {
                let pending = cache.missing_since(manifest, &held);
                // Handed to the build, which patches it when nobody else holds it, or
                // lets it go (so the cache may evict it for the new one).
                let previous = Arc::try_unwrap(snapshot)
                    .ok()
                    .map(|s| (s, Arc::clone(&held)));
                (pending, Some(held), previous)
            }
            None => {
                // A new run's worker has no snapshot of its own yet: an earlier run's close
                // to it (or with an older version of a changed large file) stands in for
                // it, and keeps its blobs from eviction, so only what changed since is
                // looked for.
                let older = cache.older_snapshot_for(manifest).unwrap_or_else(|e| {
                    tracing::warn!(error = %crate::error::one_line(&e), "cannot look for an older snapshot");
                    None
                });
                let pending = match &older {
                    Some((older, _)) => cache.missing_since(manifest, older),
                    None => cache.missing(manifest),
                };
                partial = older.is_some();
                let older_m = older.as_ref().map(|(m, _)| Arc::clone(m));
                (pending, older_m, older.map(|(m, s)| (s, m)))
            }
        };
        // A large file that changed since the older manifest is fetched as the pieces that
        // changed, the rest taken from its older blob: patched in place when nothing else
        // uses the older snapshot (taken out of the cache for that now), else copied.
        if let Some((snapshot, was)) = &mut previous
            && pending
                .iter()
                .any(|(_, _, shown)| in_pieces(manifest, was, shown).is_some())
            && let Err(e) = cache.take_for_patch(snapshot, manifest)
        {
            tracing::warn!(error = %crate::error::one_line(&e), "cannot take the older snapshot out to patch it");
        }
        let mut again = true;
        loop {
            let listed_ms = start.elapsed().as_secs_f64() * 1e3;
            let taken = previous.as_ref().map(|(snapshot, _)| snapshot);
            let fetched = self.fetch_missing(
                exchange,
                cache,
                (vm, root),
                (manifest, older.as_deref(), taken),
                pending,
            )?;
            let fetch_time = start.elapsed();
            // Only the first try patches: a retry after a damaged blob builds afresh.
            let (old_snapshot, old_manifest) = previous.take().unzip();
            let after = old_snapshot.zip(old_manifest.as_deref());
            match cache.snapshot_after(manifest, after) {
                Ok(snapshot) => {
                    tracing::debug!(
                        vm,
                        root,
                        fetched,
                        listed_ms,
                        fetch_ms = fetch_time.as_secs_f64() * 1e3,
                        snapshot_ms = (start.elapsed() - fetch_time).as_secs_f64() * 1e3,
                        "shipped root ready"
                    );
                    return Ok(snapshot);
                }
                // Only the changes were looked for, and a blob of the older snapshot went
                // all the same: look at every blob.
                Err(e @ parvm_ship::Error::BlobMissing { .. }) if partial => {
                    tracing::warn!(
                        error = %crate::error::one_line(&e),
                        "a blob of the held snapshot is gone; looking for every blob"
                    );
                }
                Err(e @ parvm_ship::Error::CorruptBlob { .. }) if again => {
                    tracing::warn!(error = %crate::error::one_line(&e), "fetching a corrupted blob again");
                    again = false;
                }
                Err(e) => return Err(ship_error(e)),
            }
            partial = false;
            pending = cache.missing(manifest);
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
            Err(reason) => {
                let reason = reason.clone();
                // Reported to this task only: the next one asks again.
                self.manifests.remove(&(vm, root));
                Err(Error::ShipRefused { root, reason })
            }
        }
    }

    /// Fetches the blobs `pending` lists (what `cache` lacks): claimed a batch at a time,
    /// asked for, written as the chunks arrive; a blob another fetcher of this host has
    /// claimed is waited for, then claimed again (a fetcher that died released it). Gives
    /// how many blobs this worker fetched. Each blob takes the mode and time of its first
    /// file in `manifest`. A large file that `older` (the manifest of the snapshot the
    /// worker held, `taken` when still held) has at the same path with pieces the cache
    /// can reuse is asked for as the pieces that changed ([`HostCache::reuse`]).
    fn fetch_missing(
        &mut self,
        exchange: &mut dyn Exchange,
        cache: &HostCache,
        (vm, root): (u32, u32),
        (manifest, older, taken): (&Manifest, Option<&Manifest>, Option<&Snapshot>),
        mut pending: Vec<(Digest, u64, PathBuf)>,
    ) -> Result<usize, Error> {
        let mut fetched = 0;
        let ship_error = |source| Error::Ship { root, source };
        // Claimed and asked for, not all arrived: the next batch is claimed and asked for
        // while the spawner sends this one, so neither side waits for the other.
        let mut in_flight: HashMap<Digest, Writing> = HashMap::new();
        let first = self.requests;
        while !pending.is_empty() {
            let mut busy = Vec::new();
            let mut claimed: HashMap<Digest, Writing> = HashMap::new();
            let rest = pending.split_off(pending.len().min(CLAIM_BATCH));
            let begun = cache.begin_each(&pending).map_err(ship_error)?;
            for ((digest, size, shown), begin) in pending.drain(..).zip(begun) {
                match begin {
                    Begin::Present => {}
                    Begin::Busy => busy.push((digest, size, shown)),
                    Begin::Mine(mut writer) => {
                        // The spawner sends the last bytes of a blob only after finding its
                        // source still the file it hashed (`serve.rs`).
                        if exchange.delivers_intact() {
                            writer.trust_sender();
                        }
                        let node = manifest.find(&shown);
                        // The blob takes the mode and time of its first file, so the
                        // snapshot links that file (and any equal one) to it.
                        if let Some(node) = node {
                            writer.keep_attrs(node.mode(), node.mtime());
                        }
                        if let Some(older) = older
                            && let Some((now, was)) = in_pieces(manifest, older, &shown)
                        {
                            cache
                                .reuse(&mut writer, now, was, taken.zip(Some(older)))
                                .map_err(ship_error)?;
                        }
                        if writer.is_complete() {
                            // Nothing to ask for: an empty file, or a large one whose
                            // every piece was in its older blob.
                            writer.finish().map_err(ship_error)?;
                            continue;
                        }
                        claimed.insert(
                            digest,
                            Writing {
                                writer,
                                shown,
                                request: None,
                            },
                        );
                    }
                }
            }
            if !claimed.is_empty() {
                fetched += claimed.len();
                ask(exchange, (vm, root), &mut self.requests, &mut claimed)?;
                in_flight.extend(claimed);
                self.receive(exchange, (vm, root, first), &mut in_flight, CLAIM_BATCH)?;
            }
            if !busy.is_empty() {
                // What this fetcher claimed arrives first: the fetcher waited for may be
                // waiting for one of ours.
                self.receive(exchange, (vm, root, first), &mut in_flight, 0)?;
                for (digest, _, _) in &busy {
                    cache.wait(digest).map_err(ship_error)?;
                }
            }
            pending = rest;
            pending.extend(busy);
        }
        self.receive(exchange, (vm, root, first), &mut in_flight, 0)?;
        Ok(fetched)
    }

    /// Writes the blobs of `writers` as they arrive, until at most `leave` are left; the
    /// fetch's requests are numbered from `first` on.
    fn receive(
        &mut self,
        exchange: &mut dyn Exchange,
        (vm, root, first): (u32, u32, u64),
        writers: &mut HashMap<Digest, Writing>,
        leave: usize,
    ) -> Result<(), Error> {
        let interrupted = |reason| Error::ShipInterrupted { root, reason };
        let ship_error = |source| Error::Ship { root, source };
        while writers.len() > leave {
            let payload = exchange.next().map_err(interrupted)?;
            let Ok(frame) = wire::decode::<ToWorker<'_>>(&payload) else {
                continue;
            };
            match frame {
                ToWorker::BlobData {
                    vm: of,
                    request,
                    digest,
                    offset,
                    data,
                    end,
                } if of == vm => {
                    // Another request: the rest of an abandoned transfer (skipped; the
                    // blob's own chunks follow it).
                    let Some(writing) = writers.get_mut(&digest).filter(|writing| {
                        writing.request == Some(request) && writing.writer.next_offset() == offset
                    }) else {
                        continue;
                    };
                    writing.writer.write(&data).map_err(ship_error)?;
                    // A whole blob ends with the chunk marked `end` (a short one is
                    // refused by `finish`); one that arrives in pieces when they all came.
                    let whole = writing.writer.wanted_pieces().is_none();
                    if (writing.writer.is_complete() || end && whole)
                        && let Some(writing) = writers.remove(&digest)
                    {
                        writing.writer.finish().map_err(ship_error)?;
                    }
                }
                ToWorker::BlobBatch { vm: of, blobs } if of == vm => {
                    let mut whole = Vec::with_capacity(blobs.len());
                    for blob in &blobs {
                        // Whole blobs: taken unless a transfer of it is under way.
                        let fresh = writers.get(&blob.digest).is_some_and(|writing| {
                            writing.writer.next_offset() == 0
                                && writing.writer.wanted_pieces().is_none()
                        });
                        if fresh && let Some(writing) = writers.remove(&blob.digest) {
                            whole.push((writing.writer, &blob.data[..]));
                        }
                    }
                    BlobWriter::finish_each(whole).map_err(ship_error)?;
                }
                // The failure of an abandoned transfer's request says nothing of this one.
                ToWorker::BlobFailed {
                    vm: of,
                    request,
                    digest,
                    reason,
                } if of == vm && request >= first => {
                    if let Some(writing) = writers.remove(&digest) {
                        return Err(Error::ShipBlobRefused {
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

/// The pieces of the file at `shown` in `manifest` and in `older`, when both have it in
/// pieces: a large file that changed, which may travel as the pieces that changed.
fn in_pieces<'m>(
    manifest: &'m Manifest,
    older: &'m Manifest,
    shown: &Path,
) -> Option<(&'m parvm_ship::Pieces, &'m parvm_ship::Pieces)> {
    let now = manifest.find(shown)?.pieces()?;
    let was = older.find(shown)?.pieces()?;
    Some((now, was))
}

/// Asks the spawner for the blobs of `claimed` of root `root` of VM `vm` (those that
/// arrive in pieces, for their pieces), numbering each request from `requests` on.
fn ask(
    exchange: &mut dyn Exchange,
    (vm, root): (u32, u32),
    requests: &mut u64,
    claimed: &mut HashMap<Digest, Writing>,
) -> Result<(), Error> {
    let interrupted = |reason| Error::ShipInterrupted { root, reason };
    let mut digests = Vec::new();
    for (digest, writing) in claimed.iter_mut() {
        match writing.writer.wanted_pieces() {
            None => digests.push(*digest),
            Some(pieces) => {
                exchange
                    .send(&FromWorker::PiecesWanted {
                        vm,
                        root,
                        request: *requests,
                        digest: *digest,
                        pieces: pieces.to_vec(),
                    })
                    .map_err(interrupted)?;
                writing.request = Some(*requests);
                *requests += 1;
            }
        }
    }
    for batch in digests.chunks(MAX_BLOBS_WANTED) {
        for digest in batch {
            if let Some(writing) = claimed.get_mut(digest) {
                writing.request = Some(*requests);
            }
        }
        exchange
            .send(&FromWorker::BlobsWanted {
                vm,
                root,
                request: *requests,
                digests: batch.to_vec(),
            })
            .map_err(interrupted)?;
        *requests += 1;
    }
    Ok(())
}

/// A blob being received.
struct Writing {
    /// Takes a chunk only at its [`BlobWriter::next_offset`].
    writer: BlobWriter,
    /// A file of the manifest that has it, for messages.
    shown: PathBuf,
    /// The request it was asked for by, once asked: only chunks of that request are
    /// written into it, so a blob is never pieced together from two transfers.
    request: Option<u64>,
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::Read;

    use parvm_ship::{CacheLimits, Scanner};

    use super::*;

    /// A spawner in the test's thread: answers requests from a scanner of `root`, with
    /// faults on demand.
    struct FakeSpawner {
        scanner: Scanner,
        queue: VecDeque<Vec<u8>>,
        /// Blobs sent, in order.
        sent: Vec<Digest>,
        /// Blobs of which only some pieces were sent, with those pieces.
        pieces_sent: Vec<(Digest, Vec<u32>)>,
        /// Blobs whose bytes arrive damaged (the first byte flipped).
        damaged: Vec<Digest>,
        /// Every blob is refused with this reason.
        refuse_blobs: Option<String>,
        /// The manifest is refused with this reason.
        refuse_manifest: Option<String>,
        /// Frames put on the line when blobs are asked for, before their answer: what an
        /// earlier, abandoned transfer still had on its way.
        before_blobs: Vec<Vec<u8>>,
        /// What [`Exchange::delivers_intact`] says: false, as over MPI, unless a test
        /// sets it.
        intact: bool,
        /// Run when blobs are asked for, before they are answered: a user editing the
        /// sources meanwhile.
        on_blobs_wanted: Option<Box<dyn FnMut()>>,
        /// How many times a manifest was asked for.
        manifests_asked: usize,
    }

    impl FakeSpawner {
        fn new(root: &Path) -> FakeSpawner {
            FakeSpawner {
                scanner: Scanner::new(vec![root.to_owned()], 0, vec![b"*".to_vec()]),
                queue: VecDeque::new(),
                sent: Vec::new(),
                pieces_sent: Vec::new(),
                damaged: Vec::new(),
                refuse_blobs: None,
                refuse_manifest: None,
                before_blobs: Vec::new(),
                intact: false,
                on_blobs_wanted: None,
                manifests_asked: 0,
            }
        }

        fn push(&mut self, frame: &ToWorker<'_>) {
            self.queue.push_back(wire::encode(frame).unwrap());
        }
    }

    impl Exchange for FakeSpawner {
        fn send(&mut self, frame: &FromWorker<'_>) -> Result<(), String> {
            match frame {
                FromWorker::ManifestWanted { vm, root } => {
                    self.manifests_asked += 1;
                    let frame = match &self.refuse_manifest {
                        Some(reason) => ToWorker::ManifestFailed {
                            vm: *vm,
                            root: *root,
                            reason: reason.clone(),
                        },
                        None => ToWorker::Manifest {
                            vm: *vm,
                            root: *root,
                            bytes: self.scanner.manifest().unwrap().encode().into(),
                        },
                    };
                    let bytes = wire::encode(&frame).unwrap();
                    self.queue.push_back(bytes);
                }
                FromWorker::BlobsWanted {
                    vm,
                    request,
                    digests,
                    ..
                } => {
                    if let Some(edit) = &mut self.on_blobs_wanted {
                        edit();
                    }
                    self.queue.extend(self.before_blobs.drain(..));
                    for &digest in digests {
                        if let Some(reason) = self.refuse_blobs.clone() {
                            self.push(&ToWorker::BlobFailed {
                                vm: *vm,
                                request: *request,
                                digest,
                                reason,
                            });
                            continue;
                        }
                        // As the spawner answers: a file that changed since its
                        // manifest, or a blob no longer in it, is refused.
                        let mut source = match self.scanner.open_blob(&digest) {
                            Ok(source) => source,
                            Err(e) => {
                                self.push(&ToWorker::BlobFailed {
                                    vm: *vm,
                                    request: *request,
                                    digest,
                                    reason: e.to_string(),
                                });
                                continue;
                            }
                        };
                        let mut data = Vec::new();
                        source.file.read_to_end(&mut data).unwrap();
                        if self.damaged.contains(&digest) {
                            data[0] ^= 0xff;
                        }
                        let mut chunks: Vec<&[u8]> = data.chunks(7).collect();
                        if chunks.is_empty() {
                            chunks.push(&[]);
                        }
                        for (i, chunk) in chunks.iter().enumerate() {
                            self.push(&ToWorker::BlobData {
                                vm: *vm,
                                request: *request,
                                digest,
                                offset: 7 * i as u64,
                                data: (*chunk).into(),
                                end: i + 1 == chunks.len(),
                            });
                        }
                        self.sent.push(digest);
                    }
                }
                FromWorker::PiecesWanted {
                    vm,
                    request,
                    digest,
                    pieces,
                    ..
                } => {
                    use std::os::unix::fs::FileExt;
                    let source = self.scanner.open_blob(digest).unwrap();
                    let (file, size) = (source.file, source.size);
                    let len = parvm_ship::piece_len(size).unwrap();
                    for (i, &piece) in pieces.iter().enumerate() {
                        let start = u64::from(piece) * len;
                        let mut data = vec![0u8; len.min(size - start) as usize];
                        file.read_exact_at(&mut data, start).unwrap();
                        if self.damaged.contains(digest) {
                            data[0] ^= 0xff;
                        }
                        // Chunks of an odd length, as a small frame limit makes them.
                        let chunks: Vec<&[u8]> = data.chunks(100_003).collect();
                        for (j, chunk) in chunks.iter().enumerate() {
                            self.push(&ToWorker::BlobData {
                                vm: *vm,
                                request: *request,
                                digest: *digest,
                                offset: start + 100_003 * j as u64,
                                data: (*chunk).into(),
                                end: i + 1 == pieces.len() && j + 1 == chunks.len(),
                            });
                        }
                    }
                    self.pieces_sent.push((*digest, pieces.clone()));
                }
                other => panic!("unexpected {other:?}"),
            }
            Ok(())
        }

        fn next(&mut self) -> Result<Vec<u8>, String> {
            self.queue
                .pop_front()
                .ok_or_else(|| "the spawner is gone".to_owned())
        }

        fn delivers_intact(&self) -> bool {
            self.intact
        }
    }

    /// The content of file `name` of a snapshot.
    fn content(snapshot: &parvm_ship::Snapshot, name: &str) -> String {
        std::fs::read_to_string(snapshot.path().join(name)).unwrap()
    }

    struct Setup {
        root: tempfile::TempDir,
        _local: tempfile::TempDir,
        cache: HostCache,
        shipping: Shipping,
    }

    fn setup() -> Setup {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.txt"), "alpha").unwrap();
        std::fs::write(root.path().join("b.txt"), "bravo, longer").unwrap();
        let local = tempfile::tempdir().unwrap();
        let user_dir = local.path().join("parvm-test");
        std::fs::create_dir(&user_dir).unwrap();
        std::fs::set_permissions(
            &user_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let limits = CacheLimits {
            max_bytes: 1 << 20,
            max_count: 100,
        };
        let cache = HostCache::open(&user_dir, limits).unwrap();
        let mut shipping = Shipping::default();
        shipping.receive_plan(0, ShipPlan::Always);
        Setup {
            root,
            _local: local,
            cache,
            shipping,
        }
    }

    #[test]
    fn a_snapshot_is_fetched_once_and_then_taken_from_the_cache() {
        // Checked by the worker (MPI), or vouched for by the spawner (TCP, local).
        for intact in [false, true] {
            let mut s = setup();
            let mut spawner = FakeSpawner::new(s.root.path());
            spawner.intact = intact;
            let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
            assert_eq!(content(&snapshot, "b.txt"), "bravo, longer");
            assert_eq!(spawner.sent.len(), 2);
            drop(snapshot);
            // The next task: the manifest it has, the blobs the cache has.
            let again = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
            assert_eq!(spawner.sent.len(), 2, "nothing fetched again");
            assert!(again.path().join("a.txt").is_file());
        }
    }

    /// A chunk of `b.txt` ("bravo, longer") that request 0, abandoned, left on the line.
    fn abandoned_chunk_of_bravo(offset: u64, data: &[u8], end: bool) -> Vec<u8> {
        wire::encode(&ToWorker::BlobData {
            vm: 0,
            request: 0,
            digest: parvm_ship::Digest::of(b"bravo, longer"),
            offset,
            data: data.into(),
            end,
        })
        .unwrap()
    }

    #[test]
    fn a_blob_is_never_pieced_together_from_an_abandoned_transfer_and_the_next() {
        // Taken as the spawner vouches for it: only the chunks of the request it was
        // asked for by are written into it.
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        spawner.intact = true;
        // An earlier fetch (request 0) gave up after the first chunk of `b.txt`, read
        // while the file was being rewritten (its end was never sent: the spawner found
        // the source changed). Its first chunk is still on the line, at the offset the
        // next transfer of the same blob starts at.
        s.shipping.requests = 1;
        spawner
            .before_blobs
            .push(abandoned_chunk_of_bravo(0, b"BRAVO, ", false));
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(content(&snapshot, "b.txt"), "bravo, longer");
    }

    #[test]
    fn the_rest_of_an_abandoned_transfer_is_skipped_not_written() {
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        // What an earlier fetch (request 0) left on the line when it gave up after the
        // first chunk of `b.txt`: the chunk after it, ending the blob.
        s.shipping.requests = 1;
        spawner
            .before_blobs
            .push(abandoned_chunk_of_bravo(7, b"longer", true));
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(content(&snapshot, "b.txt"), "bravo, longer");
    }

    #[test]
    fn the_failure_of_an_abandoned_request_does_not_fail_the_next_fetch() {
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        // An earlier fetch sent request 0 and gave up; the spawner's answer to it, a
        // failure for a blob the next fetch asks for too, is still on the line.
        s.shipping.requests = 1;
        spawner.before_blobs.push(
            wire::encode(&ToWorker::BlobFailed {
                vm: 0,
                request: 0,
                digest: parvm_ship::Digest::of(b"bravo, longer"),
                reason: "it changed at the source".to_owned(),
            })
            .unwrap(),
        );
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(content(&snapshot, "b.txt"), "bravo, longer");
        // A failure of the fetch's own request fails it.
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        spawner.refuse_blobs = Some("it changed at the source".to_owned());
        s.shipping.requests = 1;
        assert!(s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).is_err());
    }

    #[test]
    fn a_blob_that_arrives_damaged_fails_the_task_naming_the_file() {
        // Over a transport that may damage frames (MPI): the worker hashes what arrives.
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        spawner
            .damaged
            .push(parvm_ship::Digest::of(b"bravo, longer"));
        let error = s
            .shipping
            .snapshot(&mut spawner, &s.cache, 0, 0)
            .expect_err("a digest mismatch");
        assert!(matches!(error, Error::Ship { root: 0, .. }), "{error:?}");
        let text = crate::error::one_line(&error);
        assert!(text.contains("b.txt"), "{text}");
        // Nothing of it was kept: the next try fetches it again, and it is sound then.
        spawner.damaged.clear();
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(content(&snapshot, "b.txt"), "bravo, longer");
    }

    #[test]
    fn a_blob_corrupted_in_the_cache_is_fetched_again_once() {
        use std::os::unix::fs::PermissionsExt;
        let (mut s, mut spawner) = after_a_first_fetch();
        // A new manifest needs a new snapshot; its new file is linked or copied from a
        // blob, which was damaged meanwhile (and with it the older snapshot's file).
        std::fs::write(s.root.path().join("c.txt"), "alpha").unwrap();
        spawner.queue.clear();
        let digest = parvm_ship::Digest::of(b"alpha");
        let hex = digest.to_string();
        let blob = s.cache.path().join("blobs").join(&hex[..2]).join(&hex);
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&blob, "alphA").unwrap();
        s.shipping.forget(0);
        s.shipping.receive_plan(0, ShipPlan::Always);
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        for name in ["a.txt", "c.txt"] {
            assert_eq!(content(&snapshot, name), "alpha");
        }
        assert_eq!(spawner.sent.iter().filter(|d| **d == digest).count(), 2);
    }

    /// Files the spawner's current manifest, as it pushes one before a spawn.
    /// [`setup`] and its spawner, after the worker fetched the root once (and let that
    /// snapshot go).
    fn after_a_first_fetch() -> (Setup, FakeSpawner) {
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        drop(s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap());
        (s, spawner)
    }

    fn push_manifest(s: &mut Setup, spawner: &mut FakeSpawner) {
        let bytes = spawner.scanner.manifest().unwrap().encode();
        assert!(s.shipping.file(ToWorker::Manifest {
            vm: 0,
            root: 0,
            bytes: bytes.into(),
        }));
    }

    #[test]
    fn a_changed_source_is_fetched_alone_while_the_older_snapshot_is_held() {
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        let first = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        std::fs::write(s.root.path().join("b.txt"), "bravo, changed").unwrap();
        std::fs::write(s.root.path().join("c.txt"), "charlie").unwrap();
        push_manifest(&mut s, &mut spawner);
        let second = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        let new = [
            parvm_ship::Digest::of(b"bravo, changed"),
            parvm_ship::Digest::of(b"charlie"),
        ];
        assert_eq!(
            spawner.sent.len(),
            4,
            "two blobs first, then the two new ones"
        );
        assert!(new.iter().all(|d| spawner.sent[2..].contains(d)));
        assert_eq!(content(&second, "a.txt"), "alpha");
        assert_eq!(content(&second, "b.txt"), "bravo, changed");
        assert_eq!(content(&second, "c.txt"), "charlie");
        assert_eq!(
            content(&first, "b.txt"),
            "bravo, longer",
            "the older one unchanged"
        );
    }

    /// Writes a file of three and a half pieces; gives its content.
    fn large_file(s: &Setup, name: &str) -> Vec<u8> {
        let size = 3 * parvm_ship::PIECE_MIN as usize + parvm_ship::PIECE_MIN as usize / 2;
        let data: Vec<u8> = (0..size)
            .map(|i| (i % 241) as u8 ^ (i >> 12) as u8)
            .collect();
        std::fs::write(s.root.path().join(name), &data).unwrap();
        data
    }

    #[test]
    fn a_large_file_that_changed_is_fetched_as_the_pieces_that_changed() {
        let mut s = setup();
        let user_dir = s.cache.path().parent().unwrap().to_path_buf();
        s.cache = HostCache::open(
            &user_dir,
            CacheLimits {
                max_bytes: 1 << 30,
                max_count: 100,
            },
        )
        .unwrap();
        let mut data = large_file(&s, "big.dat");
        let mut spawner = FakeSpawner::new(s.root.path());
        let first = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(spawner.sent.len(), 3, "three whole blobs");
        let inode =
            |path: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
        let first_inode = inode(&first.path().join("big.dat"));
        drop(first);

        // Pieces 1 and 2 change (adjacent), and the short last one.
        let piece = parvm_ship::PIECE_MIN as usize;
        for at in [piece + 3, 2 * piece + piece / 2, data.len() - 1] {
            data[at] ^= 0x55;
        }
        std::fs::write(s.root.path().join("big.dat"), &data).unwrap();
        push_manifest(&mut s, &mut spawner);
        let second = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(spawner.sent.len(), 3, "no whole blob sent again");
        assert_eq!(spawner.pieces_sent.len(), 1);
        assert_eq!(spawner.pieces_sent[0].1, vec![1, 2, 3]);
        assert_eq!(std::fs::read(second.path().join("big.dat")).unwrap(), data);
        assert_eq!(
            inode(&second.path().join("big.dat")),
            first_inode,
            "nothing else used the older snapshot: its blob was patched in place"
        );
        drop(second);

        // A piece that arrives damaged fails the task naming the file; nothing of it is
        // kept, and the next try fetches it right.
        data[5] ^= 1;
        std::fs::write(s.root.path().join("big.dat"), &data).unwrap();
        push_manifest(&mut s, &mut spawner);
        let digest = parvm_ship::Digest::of(&data);
        spawner.damaged.push(digest);
        let e = s
            .shipping
            .snapshot(&mut spawner, &s.cache, 0, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("big.dat") && e.contains("piece 0"), "{e}");
        spawner.damaged.clear();
        let third = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(std::fs::read(third.path().join("big.dat")).unwrap(), data);
    }

    #[test]
    fn a_new_run_fetches_only_the_changed_pieces_of_a_file_an_earlier_run_shipped() {
        let mut s = setup();
        let user_dir = s.cache.path().parent().unwrap().to_path_buf();
        let roomy = CacheLimits {
            max_bytes: 1 << 30,
            max_count: 100,
        };
        s.cache = HostCache::open(&user_dir, roomy).unwrap();
        let mut data = large_file(&s, "big.dat");
        let mut spawner = FakeSpawner::new(s.root.path());
        drop(s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap());
        // The run ends: its worker and its spawner are gone.
        drop(std::mem::take(&mut s.shipping));
        data[parvm_ship::PIECE_MIN as usize * 2 + 1] ^= 0x0f;
        std::fs::write(s.root.path().join("big.dat"), &data).unwrap();

        // The next run: a new worker (its own cache handle) and a new spawner.
        let cache = HostCache::open(&user_dir, roomy).unwrap();
        let mut shipping = Shipping::default();
        shipping.receive_plan(0, ShipPlan::Always);
        let mut spawner = FakeSpawner::new(s.root.path());
        let snapshot = shipping.snapshot(&mut spawner, &cache, 0, 0).unwrap();
        assert!(spawner.sent.is_empty(), "no whole blob: {:?}", spawner.sent);
        assert_eq!(spawner.pieces_sent.len(), 1);
        assert_eq!(spawner.pieces_sent[0].1, vec![2]);
        assert_eq!(
            std::fs::read(snapshot.path().join("big.dat")).unwrap(),
            data
        );
        assert_eq!(content(&snapshot, "a.txt"), "alpha");
    }

    /// A first run over `a.txt`, `b.txt` and `lib/m0.lib`..`lib/m3.lib`, ended; then
    /// `changed` files edited and a second run (a new worker and spawner, the same host
    /// cache). Gives whether the first run's `lib/` folder is the second's (its snapshot
    /// was patched, not built afresh), whether the first snapshot is still in the cache,
    /// and how many blobs were fetched.
    fn second_run_after_editing(changed: &[&str]) -> (bool, bool, usize) {
        use std::os::unix::fs::MetadataExt;
        let mut s = setup();
        std::fs::create_dir(s.root.path().join("lib")).unwrap();
        for k in 0..4 {
            std::fs::write(
                s.root.path().join(format!("lib/m{k}.lib")),
                format!("model {k}"),
            )
            .unwrap();
        }
        let mut spawner = FakeSpawner::new(s.root.path());
        let first = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        let (first_path, first_lib) = (
            first.path().to_path_buf(),
            std::fs::metadata(first.path().join("lib")).unwrap().ino(),
        );
        drop(first);
        drop(std::mem::take(&mut s.shipping));
        for name in changed {
            std::fs::write(s.root.path().join(name), format!("{name}, edited")).unwrap();
        }
        let user_dir = s.cache.path().parent().unwrap().to_path_buf();
        let cache = HostCache::open(&user_dir, s.cache.limits()).unwrap();
        let mut shipping = Shipping::default();
        shipping.receive_plan(0, ShipPlan::Always);
        let mut spawner = FakeSpawner::new(s.root.path());
        let second = shipping.snapshot(&mut spawner, &cache, 0, 0).unwrap();
        for name in ["a.txt", "b.txt", "lib/m0.lib", "lib/m3.lib"] {
            let source = std::fs::read_to_string(s.root.path().join(name)).unwrap();
            assert_eq!(content(&second, name), source, "{name}");
        }
        let patched = std::fs::metadata(second.path().join("lib")).unwrap().ino() == first_lib;
        assert_ne!(second.path(), first_path);
        (patched, first_path.is_dir(), spawner.sent.len())
    }

    #[test]
    fn a_new_run_after_one_file_was_edited_patches_the_earlier_runs_snapshot() {
        let (patched, first_kept, fetched) = second_run_after_editing(&["b.txt"]);
        assert_eq!(fetched, 1, "only the edited file");
        assert!(patched, "the earlier snapshot's folders are the new one's");
        assert!(!first_kept, "the earlier snapshot became the new one");
    }

    #[test]
    fn a_new_run_after_most_files_were_edited_builds_its_snapshot_afresh() {
        let edited = ["a.txt", "b.txt", "lib/m0.lib", "lib/m1.lib", "lib/m2.lib"];
        let (patched, first_kept, fetched) = second_run_after_editing(&edited);
        assert_eq!(fetched, 5);
        assert!(!patched);
        assert!(first_kept, "the earlier snapshot is kept as it was");
    }

    #[test]
    fn of_two_workers_of_a_host_the_first_to_see_a_change_patches_the_snapshot_both_held() {
        use std::os::unix::fs::MetadataExt;
        let s = setup();
        std::fs::create_dir(s.root.path().join("lib")).unwrap();
        std::fs::write(s.root.path().join("lib/m.lib"), "model").unwrap();
        let user_dir = s.cache.path().parent().unwrap().to_path_buf();
        let worker = || {
            let cache = HostCache::open(&user_dir, s.cache.limits()).unwrap();
            let mut shipping = Shipping::default();
            shipping.receive_plan(0, ShipPlan::Always);
            (cache, shipping, FakeSpawner::new(s.root.path()))
        };
        let (mut a, mut b) = (worker(), worker());
        let first = a.1.snapshot(&mut a.2, &a.0, 0, 0).unwrap();
        let lib = std::fs::metadata(first.path().join("lib")).unwrap().ino();
        let theirs = b.1.snapshot(&mut b.2, &b.0, 0, 0).unwrap();
        assert_eq!(theirs.path(), first.path());
        // Both filled a task folder from it and keep it for their next task.
        first.stand_by();
        theirs.stand_by();
        drop((first, theirs));
        std::fs::write(s.root.path().join("b.txt"), "bravo, edited").unwrap();
        for (_, shipping, spawner) in [&mut a, &mut b] {
            let bytes = spawner.scanner.manifest().unwrap().encode();
            assert!(shipping.file(ToWorker::Manifest {
                vm: 0,
                root: 0,
                bytes: bytes.into(),
            }));
        }
        let patched = a.1.snapshot(&mut a.2, &a.0, 0, 0).unwrap();
        assert_eq!(
            std::fs::metadata(patched.path().join("lib")).unwrap().ino(),
            lib,
            "patched, though the other worker held it too"
        );
        assert_eq!(content(&patched, "b.txt"), "bravo, edited");
        // The other worker moves on to the same snapshot, fetching nothing.
        let sent = b.2.sent.len();
        let found = b.1.snapshot(&mut b.2, &b.0, 0, 0).unwrap();
        assert_eq!(found.path(), patched.path());
        assert_eq!(b.2.sent.len(), sent);
        assert_eq!(content(&found, "b.txt"), "bravo, edited");
    }

    #[test]
    fn a_blob_of_the_held_snapshot_gone_meanwhile_is_fetched_again() {
        use std::os::unix::fs::PermissionsExt;
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        let _held = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        // Another VM's snapshot, built later, is the one the next build links from; the
        // unchanged `a.txt` is then copied from its blob...
        let other_root = tempfile::tempdir().unwrap();
        std::fs::write(other_root.path().join("x.txt"), "x-ray").unwrap();
        let mut other = Shipping::default();
        other.receive_plan(1, ShipPlan::Always);
        let mut other_spawner = FakeSpawner::new(other_root.path());
        let _other = other.snapshot(&mut other_spawner, &s.cache, 1, 0).unwrap();
        // ...which was removed by hand. Only the changes are looked for at first.
        let alpha = parvm_ship::Digest::of(b"alpha");
        let hex = alpha.to_string();
        let fan = s.cache.path().join("blobs").join(&hex[..2]);
        std::fs::set_permissions(&fan, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_file(fan.join(&hex)).unwrap();
        std::fs::write(s.root.path().join("b.txt"), "bravo, changed").unwrap();
        push_manifest(&mut s, &mut spawner);
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(content(&snapshot, "a.txt"), "alpha");
        assert_eq!(content(&snapshot, "b.txt"), "bravo, changed");
        assert_eq!(spawner.sent.iter().filter(|d| **d == alpha).count(), 2);
    }

    #[test]
    fn a_file_edited_after_the_worker_got_its_manifest_is_fetched_as_it_is_now() {
        let (mut s, mut spawner) = after_a_first_fetch();
        // A task comes with a manifest of `b.txt` as first edited; the user saves it again
        // before the worker asks for it, so the spawner cannot send that version.
        std::fs::write(s.root.path().join("b.txt"), "bravo, edited").unwrap();
        push_manifest(&mut s, &mut spawner);
        std::fs::write(s.root.path().join("b.txt"), "bravo, saved again").unwrap();
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(content(&snapshot, "b.txt"), "bravo, saved again");
        assert_eq!(content(&snapshot, "a.txt"), "alpha");
        drop(snapshot);

        // A file the spawner cannot send while the root stays as it is fails the task at
        // once: its manifest is asked for once more, and nothing moved.
        std::fs::write(s.root.path().join("b.txt"), "bravo, a third time").unwrap();
        push_manifest(&mut s, &mut spawner);
        spawner.refuse_blobs = Some("cannot read it".to_owned());
        let error = s
            .shipping
            .snapshot(&mut spawner, &s.cache, 0, 0)
            .unwrap_err();
        assert!(
            matches!(&error, Error::ShipBlobRefused { reason, .. } if reason.contains("b.txt`: cannot read it")),
            "{error:?}"
        );
        spawner.refuse_blobs = None;
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(content(&snapshot, "b.txt"), "bravo, a third time");
    }

    /// An editor that saves `c.txt` in `root` as editors do (into a temporary file,
    /// `c.txt.saving`, renamed over it) each time blobs are asked for, `saves` times (for
    /// ever with `None`), the first save made now: every manifest the spawner makes
    /// meanwhile lists a temporary file gone by the time its blob is asked for.
    fn saving_again_and_again(root: &Path, saves: Option<usize>) -> Box<dyn FnMut()> {
        let root = root.to_owned();
        let save = |root: &Path, n: usize| {
            std::fs::write(root.join("c.txt.saving"), format!("save {n}")).unwrap();
        };
        save(&root, 1);
        let mut saved = 1;
        Box::new(move || {
            if saves.is_some_and(|saves| saved > saves) {
                return;
            }
            std::fs::rename(root.join("c.txt.saving"), root.join("c.txt")).unwrap();
            saved += 1;
            if saves.is_none_or(|saves| saved <= saves) {
                save(&root, saved);
            }
        })
    }

    #[test]
    fn temporary_files_of_saves_one_after_another_do_not_fail_the_task() {
        let (mut s, mut spawner) = after_a_first_fetch();
        // More saves in a row than mirroring's settle waits.
        let saves = parvm_mirror_fs::SETTLE_WAITS.len() + 2;
        spawner.on_blobs_wanted = Some(saving_again_and_again(s.root.path(), Some(saves)));
        push_manifest(&mut s, &mut spawner);
        let snapshot = s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        assert_eq!(content(&snapshot, "c.txt"), format!("save {saves}"));
        assert!(!snapshot.path().join("c.txt.saving").exists());
        assert_eq!(
            spawner.manifests_asked,
            1 + saves,
            "a newer manifest per save"
        );
    }

    #[test]
    fn sources_that_never_settle_fail_the_task_after_a_bounded_number_of_manifests() {
        let (mut s, mut spawner) = after_a_first_fetch();
        spawner.on_blobs_wanted = Some(saving_again_and_again(s.root.path(), None));
        push_manifest(&mut s, &mut spawner);
        let asked = spawner.manifests_asked;
        let error = s
            .shipping
            .snapshot(&mut spawner, &s.cache, 0, 0)
            .unwrap_err();
        assert!(
            matches!(&error, Error::ShipBlobRefused { reason, .. } if reason.starts_with("`c.txt")),
            "{error:?}"
        );
        assert_eq!(spawner.manifests_asked - asked, MAX_REFRESHES);
    }

    #[test]
    fn what_the_spawner_refuses_or_a_lost_spawner_fails_the_task() {
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        spawner.refuse_manifest = Some("cannot read `x`".to_owned());
        let error = s
            .shipping
            .snapshot(&mut spawner, &s.cache, 0, 0)
            .unwrap_err();
        assert!(
            matches!(&error, Error::ShipRefused { reason, .. } if reason == "cannot read `x`"),
            "{error:?}"
        );
        // The next task asks again, and the spawner can describe the root by then.
        spawner.refuse_manifest = None;
        s.shipping.snapshot(&mut spawner, &s.cache, 0, 0).unwrap();
        // A manifest that cannot be read is refused the same way.
        let mut s = setup();
        s.shipping.file(ToWorker::Manifest {
            vm: 0,
            root: 0,
            bytes: b"not a manifest".as_slice().into(),
        });
        let mut spawner = FakeSpawner::new(s.root.path());
        let error = s
            .shipping
            .snapshot(&mut spawner, &s.cache, 0, 0)
            .unwrap_err();
        assert!(
            matches!(&error, Error::ShipRefused { reason, .. } if reason.contains("same parvm build")),
            "{error:?}"
        );
        let mut s = setup();
        let mut spawner = FakeSpawner::new(s.root.path());
        spawner.refuse_blobs = Some("it changed at the source".to_owned());
        let error = s
            .shipping
            .snapshot(&mut spawner, &s.cache, 0, 0)
            .unwrap_err();
        assert!(
            matches!(&error, Error::ShipBlobRefused { reason, .. } if reason.contains(".txt`: it changed")),
            "{error:?}"
        );
        // The spawner goes away while the worker waits for the blobs.
        struct Gone;
        impl Exchange for Gone {
            fn send(&mut self, _: &FromWorker<'_>) -> Result<(), String> {
                Ok(())
            }
            fn next(&mut self) -> Result<Vec<u8>, String> {
                Err("the spawner is gone".to_owned())
            }
            fn delivers_intact(&self) -> bool {
                true
            }
        }
        let mut s = setup();
        let error = s.shipping.snapshot(&mut Gone, &s.cache, 0, 0).unwrap_err();
        assert!(
            matches!(&error, Error::ShipInterrupted { root: 0, reason } if reason.contains("gone")),
            "{error:?}"
        );
    }

    #[test]
    fn the_plan_decides_which_roots_are_shipped() {
        let root = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let roots = vec![root.path().to_owned(), other.path().to_owned()];
        let map = parvm_mirror_fs::MirrorMap::new()
            .entry(root.path().join("x").to_str().unwrap(), ".")
            .unwrap()
            .entry(other.path().join("y").to_str().unwrap(), ".")
            .unwrap()
            .to_abstract(&roots, Path::new("/"))
            .unwrap();
        let marker = super::super::probe::Marker::write(1, other.path());
        let mut shipping = Shipping::default();
        for (vm, plan, expected) in [
            (0, ShipPlan::Never, vec![]),
            (1, ShipPlan::Always, vec![0, 1]),
            (2, ShipPlan::Probe(vec![marker.probe().clone()]), vec![0]),
        ] {
            shipping.receive_plan(vm, plan);
            let shipped: Vec<u32> = shipping
                .shipped_roots(vm, &roots, &map)
                .into_iter()
                .collect();
            assert_eq!(shipped, expected, "vm {vm}");
        }
        // Decided once per VM: the marker's removal does not change it.
        drop(marker);
        let shipped: Vec<u32> = shipping
            .shipped_roots(2, &roots, &map)
            .into_iter()
            .collect();
        assert_eq!(shipped, [0]);
        assert_eq!(
            roots_with(&roots[..1], &[(1, Path::new("/snap"))]),
            [root.path().to_owned(), PathBuf::from("/snap")]
        );
    }
}

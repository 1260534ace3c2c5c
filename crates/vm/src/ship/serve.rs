//! The spawner's side of shipping, one [`VmShip`] per VM: its probe markers, a
//! `parvm_ship::Scanner` per shipped root, and a thread that answers the workers'
//! [`FromWorker::ManifestWanted`](crate::wire::FromWorker::ManifestWanted),
//! [`FromWorker::BlobsWanted`](crate::wire::FromWorker::BlobsWanted) and
//! [`FromWorker::PiecesWanted`](crate::wire::FromWorker::PiecesWanted) frames, which the router
//! hands it through a channel, so the event pump never waits for a disk.
//!
//! Blobs are read from disk a chunk ([`BLOB_CHUNK`]) at a time as they are sent: a blob
//! of any size takes one chunk of memory. A request a worker could not honestly make (a
//! VM whose map it was not sent, a root the map does not use, blobs before a manifest, a
//! list longer than [`MAX_BLOBS_WANTED`], a digest not in the manifest) is refused with a
//! warning, or a `BlobFailed` naming the digest; nothing a peer announces is allocated.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;

use parvm_env_config::ShipMode;
use parvm_mirror_fs::AbstractMirrorMap;
use parvm_ship::{Digest, Scanner, SourceBlob};
use parvm_transport::Rank;

use super::probe::Marker;
use crate::spawner::Shared;
use crate::wire::{
    self, BATCH_BYTES, BLOB_CHUNK, BatchedBlob, MAX_BLOBS_WANTED, ShipPlan, ToWorker,
};

/// How long the shipping thread waits for a request before it files what has arrived
/// itself ([`serve`]): the longest a request waits for a program that does not receive.
const IDLE_PUMP: std::time::Duration = std::time::Duration::from_millis(10);

/// What the spawner has shipped for one VM, as [`Vm::ship_stats`](crate::Vm::ship_stats)
/// gives it: manifests sent, the blobs (files' contents) sent in full, and the bytes of
/// blobs sent so far. Each frame is counted as it leaves, before the worker can act on it,
/// so a transfer in progress shows, and a task that has ended finds all it received counted.
/// Blobs a worker's host cache held already are not sent, so the counts show how much
/// the caches spared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipStats {
    /// Manifests sent (one per worker and root, and again when the sources changed).
    pub manifests: u64,
    /// Blobs sent in full.
    pub blobs: u64,
    /// Bytes of blobs sent, including those of a blob still on its way.
    pub bytes: u64,
    /// Pieces of large files sent to a worker that had an older version of the file
    /// ([`parvm_ship::Pieces`]); their blobs are not counted in `blobs`.
    pub pieces: u64,
}

impl ShipStats {
    fn add(&mut self, worth: &ShipStats) {
        self.manifests += worth.manifests;
        self.blobs += worth.blobs;
        self.bytes += worth.bytes;
        self.pieces += worth.pieces;
    }

    fn take_back(&mut self, worth: &ShipStats) {
        self.manifests = self.manifests.saturating_sub(worth.manifests);
        self.blobs = self.blobs.saturating_sub(worth.blobs);
        self.bytes = self.bytes.saturating_sub(worth.bytes);
        self.pieces = self.pieces.saturating_sub(worth.pieces);
    }
}

/// Sends `frame` to worker `rank` with what it carries (`worth`) counted (see
/// [`counted`]).
fn send_counted(
    table: &Table,
    shared: &Shared,
    rank: Rank,
    frame: &ToWorker<'_>,
    worth: &ShipStats,
) -> Result<(), crate::error::Error> {
    counted(table, worth, || shared.send(rank, frame))
}

/// Sends with `send` what carries `worth`, counted in the VM's [`ShipStats`] first: the
/// worker may use the frame, run its task and report its exit before a count made after
/// the send would show, and a program reading the stats once its task ended must find
/// everything the task received counted. Taken back when the send fails.
fn counted(
    table: &Table,
    worth: &ShipStats,
    send: impl FnOnce() -> Result<(), crate::error::Error>,
) -> Result<(), crate::error::Error> {
    lock(&table.stats).add(worth);
    let sent = send();
    if sent.is_err() {
        lock(&table.stats).take_back(worth);
    }
    sent
}

/// Where the chunks of a blob are read: behind room for each chunk's frame head, which is
/// written there once the chunk is read, so the frame is sent from where its bytes were
/// read instead of being encoded into another buffer (a copy of every byte shipped).
struct ChunkBuffer {
    /// Allocated on first use: a request for small files only (sent in batches) never
    /// needs the megabyte.
    bytes: Vec<u8>,
    chunk: usize,
}

impl ChunkBuffer {
    /// Room for a [`ToWorker::BlobData`] head: its variant's name, the VM, request, digest,
    /// offset and end, and the bytes' marker and length take about 70 bytes.
    const HEAD_ROOM: usize = 128;

    /// A buffer for chunks of at most `chunk` bytes.
    fn new(chunk: usize) -> ChunkBuffer {
        ChunkBuffer {
            bytes: Vec::new(),
            chunk,
        }
    }

    /// The most bytes a chunk may have.
    fn chunk_len(&self) -> usize {
        self.chunk
    }

    /// Where a chunk of `len` bytes (at most [`Self::chunk_len`]) is read.
    fn chunk(&mut self, len: usize) -> &mut [u8] {
        if self.bytes.is_empty() {
            self.bytes = vec![0; Self::HEAD_ROOM + self.chunk];
        }
        &mut self.bytes[Self::HEAD_ROOM..Self::HEAD_ROOM + len]
    }

    /// The encoded frame `head` (its bytes empty) is when it holds the `len` bytes just
    /// read, written around them; `Err` with those bytes when its head does not fit or
    /// the frame's bytes are not its last field (to be encoded as usual).
    fn frame(&mut self, head: &ToWorker<'_>, len: usize) -> Result<&[u8], &[u8]> {
        let data = Self::HEAD_ROOM..Self::HEAD_ROOM + len;
        let encoded = wire::head_before_bytes(head)
            .filter(|encoded| encoded.len() + 4 <= Self::HEAD_ROOM)
            .zip(u32::try_from(len).ok());
        let Some((encoded, len)) = encoded else {
            return Err(&self.bytes[data]);
        };
        let start = Self::HEAD_ROOM - 4 - encoded.len();
        self.bytes[start..Self::HEAD_ROOM - 4].copy_from_slice(&encoded);
        self.bytes[Self::HEAD_ROOM - 4..Self::HEAD_ROOM].copy_from_slice(&len.to_be_bytes());
        Ok(&self.bytes[start..data.end])
    }
}

/// A request of a worker, from the router to the VM's shipping thread.
pub(crate) enum ShipJob {
    Manifest {
        rank: Rank,
        root: u32,
    },
    Blobs {
        rank: Rank,
        root: u32,
        /// The worker's number of the request, named in a failure.
        request: u64,
        digests: Vec<parvm_ship::Digest>,
    },
    Pieces {
        rank: Rank,
        root: u32,
        /// The worker's number of the request, named in a failure.
        request: u64,
        digest: parvm_ship::Digest,
        /// Ascending piece indices.
        pieces: Vec<u32>,
    },
    /// The VM is gone: the thread ends. Sent by [`VmShip`]'s drop, so the thread ends even
    /// while a copy of the channel's sender is still held somewhere.
    Stop,
}

impl ShipJob {
    /// The worker that asked; `None` for [`ShipJob::Stop`].
    fn rank(&self) -> Option<Rank> {
        match self {
            ShipJob::Manifest { rank, .. }
            | ShipJob::Blobs { rank, .. }
            | ShipJob::Pieces { rank, .. } => Some(*rank),
            ShipJob::Stop => None,
        }
    }
}

/// One shipped root on the spawner.
struct RootScan {
    scanner: Scanner,
    /// The last manifest encoded, by its digest: each worker is sent the same bytes.
    encoded: Option<(Digest, Arc<Vec<u8>>)>,
}

/// What the VM's shipping thread and its spawns share.
struct Table {
    vm: u32,
    /// This host's mirrored roots, for messages.
    roots: Vec<PathBuf>,
    scans: BTreeMap<u32, Mutex<RootScan>>,
    /// The digest of the manifest each worker was sent last, per root.
    sent: Mutex<HashMap<(Rank, u32), Digest>>,
    /// Held by whoever sends a worker a manifest, from making it to recording it sent, so
    /// a worker gets its manifests in the order they were made; one per worker, so a
    /// worker that stops reading holds up only its own.
    manifest_turns: Mutex<HashMap<Rank, Arc<Mutex<()>>>>,
    /// The workers that were sent the VM's mirror map.
    mapped: Arc<Mutex<HashSet<Rank>>>,
    stats: Mutex<ShipStats>,
    /// The VM is gone: the thread stops, between chunks.
    cancel: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The spawner's side of shipping for one VM.
pub(crate) struct VmShip {
    plan: ShipPlan,
    table: Arc<Table>,
    /// Removed with the VM.
    _markers: Vec<Marker>,
    server: Option<(Sender<ShipJob>, JoinHandle<()>)>,
}

impl VmShip {
    /// The shipping of VM `vm` whose map is `map`, under `mode`: markers written (`auto`;
    /// with `workers_here`, every worker runs on this kernel, and the probes name the
    /// folders instead, writing nothing into them) and a scanner per root the map uses,
    /// keeping its hashes for the next run in `user_dir` (the spawner's per-user local
    /// storage folder) when given; `None` with `never`. Call [`VmShip::start`] to serve.
    pub(crate) fn new(
        vm: u32,
        (mode, user_dir, workers_here): (ShipMode, Option<&std::path::Path>, bool),
        roots: &[PathBuf],
        map: &AbstractMirrorMap,
        mapped: Arc<Mutex<HashSet<Rank>>>,
    ) -> Option<VmShip> {
        if mode == ShipMode::Never {
            return None;
        }
        let mut sources: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for entry in &map.entries {
            let root = u32::try_from(entry.source.root).ok()?;
            sources
                .entry(root)
                .or_default()
                .push(entry.source.suffix.as_os_str().as_encoded_bytes().to_vec());
        }
        let markers: Vec<Marker> = match mode {
            ShipMode::Auto => sources
                .keys()
                .filter_map(|&root| {
                    let path = roots.get(root as usize)?;
                    // A marker after all where the folder cannot be named (no boot id).
                    let named = workers_here
                        .then(|| Marker::naming_folder(root, path))
                        .filter(|named| named.probe().folder.is_some());
                    Some(named.unwrap_or_else(|| Marker::write(root, path)))
                })
                .collect(),
            _ => Vec::new(),
        };
        let plan = match mode {
            ShipMode::Always => ShipPlan::Always,
            _ => ShipPlan::Probe(markers.iter().map(|m| m.probe().clone()).collect()),
        };
        let scans = sources
            .into_iter()
            .map(|(root, suffixes)| {
                let scanner = Scanner::new(roots.to_vec(), root as usize, suffixes);
                let scanner = match user_dir {
                    Some(dir) => scanner.keep_hashes_under(dir),
                    None => scanner,
                };
                let scan = RootScan {
                    scanner,
                    encoded: None,
                };
                (root, Mutex::new(scan))
            })
            .collect();
        Some(VmShip {
            plan,
            table: Arc::new(Table {
                vm,
                roots: roots.to_vec(),
                scans,
                sent: Mutex::new(HashMap::new()),
                manifest_turns: Mutex::new(HashMap::new()),
                mapped,
                stats: Mutex::new(ShipStats::default()),
                cancel: AtomicBool::new(false),
            }),
            _markers: markers,
            server: None,
        })
    }

    /// How workers get the map's roots; travels in the mirror frame.
    pub(crate) fn plan(&self) -> &ShipPlan {
        &self.plan
    }

    /// Starts the thread that serves the workers' requests, sending through `shared`;
    /// gives the channel the router files them into.
    pub(crate) fn start(&mut self, shared: Weak<Shared>) -> std::io::Result<Sender<ShipJob>> {
        let (jobs, queue) = std::sync::mpsc::channel();
        let table = Arc::clone(&self.table);
        let thread = std::thread::Builder::new()
            .name(format!("parvm-ship-vm{}", table.vm))
            .spawn(move || serve(&table, &shared, &queue))?;
        self.server = Some((jobs.clone(), thread));
        Ok(jobs)
    }

    /// Before a spawn request to worker `rank`: a new manifest of each root whose
    /// sources changed since the worker was sent one, so its task mirrors what is there now.
    pub(crate) fn before_spawn(&self, shared: &Shared, rank: Rank) {
        for (&root, scan) in &self.table.scans {
            let start = std::time::Instant::now();
            send_manifest(&self.table, shared, scan, rank, root, Resend::IfChanged);
            tracing::trace!(
                rank,
                root,
                ms = start.elapsed().as_secs_f64() * 1e3,
                "looked for changed sources before a spawn"
            );
        }
    }

    /// What has been shipped so far.
    pub(crate) fn stats(&self) -> ShipStats {
        *lock(&self.table.stats)
    }
}

impl Drop for VmShip {
    fn drop(&mut self) {
        self.table.cancel.store(true, Ordering::Release);
        if let Some((jobs, thread)) = self.server.take() {
            // Fails only when the thread has ended already.
            let _ = jobs.send(ShipJob::Stop);
            drop(jobs);
            if thread.join().is_err() {
                tracing::warn!(vm = self.table.vm, "the shipping thread panicked");
            }
        }
    }
}

/// The shipping thread: takes the workers' requests from the router and hands them to
/// [`Servers`], until the VM is gone. Requests reach it only through the event pump,
/// which runs in whatever program thread waits for a message; a program that spawns and
/// then computes, or sleeps, would leave its tasks waiting for their inputs (and its
/// workers' losses unsaid). So when no request came for [`IDLE_PUMP`], the thread files
/// what has arrived itself, unless a thread is receiving.
fn serve(table: &Arc<Table>, shared: &Weak<Shared>, queue: &Receiver<ShipJob>) {
    let servers = Servers::new(Arc::clone(table), shared.clone());
    loop {
        let job = match queue.recv_timeout(IDLE_PUMP) {
            Ok(ShipJob::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                if table.cancel.load(Ordering::Acquire) {
                    break;
                }
                match shared.upgrade() {
                    Some(shared) => shared.pump_arrived(),
                    None => break,
                }
                continue;
            }
        };
        if table.cancel.load(Ordering::Acquire) {
            break;
        }
        servers.queue(job);
    }
    servers.stop();
}

/// Most threads answering one VM's requests at once. Each serves one worker at a time, so
/// a worker that stops reading (a stopped process, a slow link) holds up only the thread
/// sending to it, and workers of several hosts are sent their inputs side by side.
const MAX_SERVERS: usize = 8;

/// The threads that answer requests: started as requests wait and none is free, up to
/// [`MAX_SERVERS`]; each takes the oldest request of a worker no other thread is
/// serving, so one worker's requests are answered in the order they came.
struct Servers {
    table: Arc<Table>,
    shared: Weak<Shared>,
    lanes: Arc<(Mutex<Lanes>, Condvar)>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Default)]
struct Lanes {
    waiting: VecDeque<ShipJob>,
    /// The workers a thread is answering now.
    busy: HashSet<Rank>,
    /// Threads waiting for a request.
    idle: usize,
    /// Wake-ups sent to waiting threads that none has taken yet: a waiting thread beyond
    /// these is free for the next request.
    wakeups: usize,
    closed: bool,
}

impl Servers {
    fn new(table: Arc<Table>, shared: Weak<Shared>) -> Servers {
        Servers {
            table,
            shared,
            lanes: Arc::new((Mutex::new(Lanes::default()), Condvar::new())),
            threads: Mutex::new(Vec::new()),
        }
    }

    /// Hands `job` to a free thread, started when none is free and fewer than
    /// [`MAX_SERVERS`] run.
    fn queue(&self, job: ShipJob) {
        let (lanes, cond) = &*self.lanes;
        let mut state = lock(lanes);
        state.waiting.push_back(job);
        if state.idle > state.wakeups {
            // A waiting thread takes it.
            state.wakeups += 1;
            drop(state);
            cond.notify_one();
            return;
        }
        let mut threads = lock(&self.threads);
        if threads.len() < MAX_SERVERS {
            let (table, shared, lanes) = (
                Arc::clone(&self.table),
                self.shared.clone(),
                Arc::clone(&self.lanes),
            );
            match std::thread::Builder::new()
                .name(format!("parvm-ship-vm{}-{}", self.table.vm, threads.len()))
                .spawn(move || answer_requests(&table, &shared, &lanes))
            {
                Ok(thread) => threads.push(thread),
                // The threads there are take it; the first one cannot fail this way
                // without the request waiting for ever, so say so.
                Err(e) if threads.is_empty() => tracing::error!(
                    vm = self.table.vm,
                    error = %e,
                    "cannot start a thread to send shipped inputs; the tasks waiting for them wait until the VM is dropped"
                ),
                Err(e) => tracing::debug!(error = %e, "cannot start another shipping thread"),
            }
        }
        // Else a thread that ends its request takes it.
    }

    /// Ends the threads, each after the request it answers (a transfer stops between
    /// chunks once the VM is gone).
    fn stop(self) {
        let (lanes, cond) = &*self.lanes;
        lock(lanes).closed = true;
        cond.notify_all();
        for thread in std::mem::take(&mut *lock(&self.threads)) {
            if thread.join().is_err() {
                tracing::warn!(vm = self.table.vm, "a shipping thread panicked");
            }
        }
    }
}

/// A thread of [`Servers`]: answers the oldest request of a worker no other thread is
/// answering, until the VM is gone.
fn answer_requests(table: &Table, shared: &Weak<Shared>, lanes: &(Mutex<Lanes>, Condvar)) {
    let (lanes, cond) = lanes;
    let mut state = lock(lanes);
    loop {
        if state.closed || table.cancel.load(Ordering::Acquire) {
            return;
        }
        let free = state
            .waiting
            .iter()
            .position(|job| job.rank().is_some_and(|rank| !state.busy.contains(&rank)));
        let Some(job) = free.and_then(|at| state.waiting.remove(at)) else {
            state.idle += 1;
            state = cond.wait(state).unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
            state.wakeups = state.wakeups.saturating_sub(1);
            continue;
        };
        let rank = job.rank();
        if let Some(rank) = rank {
            state.busy.insert(rank);
        }
        drop(state);
        if let Some(shared) = shared.upgrade() {
            answer(table, &shared, job);
        }
        state = lock(lanes);
        if let Some(rank) = rank {
            state.busy.remove(&rank);
        }
    }
}

/// Answers one request.
fn answer(table: &Table, shared: &Shared, job: ShipJob) {
    match job {
        ShipJob::Stop => {}
        ShipJob::Manifest { rank, root } => {
            let Some(scan) = checked(table, rank, root, "a manifest") else {
                return;
            };
            send_manifest(table, shared, scan, rank, root, Resend::Always);
        }
        ShipJob::Blobs {
            rank,
            root,
            request,
            digests,
        } => {
            let Some(scan) = checked_with_manifest(table, rank, root, "blobs") else {
                return;
            };
            if digests.len() > MAX_BLOBS_WANTED {
                tracing::warn!(
                    rank,
                    vm = table.vm,
                    count = digests.len(),
                    "refusing a request for more than {MAX_BLOBS_WANTED} blobs"
                );
                return;
            }
            let limit = chunk_len(shared.config.max_frame());
            let mut buffer = ChunkBuffer::new(limit);
            let mut batch = Batch::new(limit.min(BATCH_BYTES));
            for digest in digests {
                if table.cancel.load(Ordering::Acquire)
                    || !send_blob(
                        table,
                        shared,
                        scan,
                        (rank, request),
                        digest,
                        &mut buffer,
                        &mut batch,
                    )
                {
                    break;
                }
            }
            batch.flush(table, shared, rank);
        }
        ShipJob::Pieces {
            rank,
            root,
            request,
            digest,
            pieces,
        } => {
            let Some(scan) = checked_with_manifest(table, rank, root, "pieces") else {
                return;
            };
            let mut buffer = ChunkBuffer::new(chunk_len(shared.config.max_frame()));
            send_pieces(
                table,
                shared,
                scan,
                (rank, request),
                (digest, &pieces),
                &mut buffer,
            );
        }
    }
}

/// The bytes of a blob per frame: [`BLOB_CHUNK`], or less when the transport's frame
/// limit (`PARVM_MAX_FRAME`) leaves less room beside the frame's head.
fn chunk_len(max_frame: Option<u64>) -> usize {
    const HEAD_ROOM: u64 = 1024;
    max_frame.map_or(BLOB_CHUNK, |max| {
        usize::try_from(max.saturating_sub(HEAD_ROOM))
            .unwrap_or(BLOB_CHUNK)
            .clamp(1024, BLOB_CHUNK)
    })
}

/// The root's scan, when worker `rank` may ask for `what` of it: it was sent the VM's map
/// and the map uses the root.
fn checked<'t>(table: &'t Table, rank: Rank, root: u32, what: &str) -> Option<&'t Mutex<RootScan>> {
    if !lock(&table.mapped).contains(&rank) {
        tracing::warn!(
            rank,
            vm = table.vm,
            "refusing a request for {what} of a VM whose mirror map the worker was not sent"
        );
        return None;
    }
    let scan = table.scans.get(&root);
    if scan.is_none() {
        tracing::warn!(
            rank,
            vm = table.vm,
            root,
            "refusing a request for {what} of a mirrored root the VM's map does not use"
        );
    }
    scan
}

/// [`checked`], and the worker was sent a manifest of the root: what it asks for of the
/// root's files must be in one.
fn checked_with_manifest<'t>(
    table: &'t Table,
    rank: Rank,
    root: u32,
    what: &str,
) -> Option<&'t Mutex<RootScan>> {
    let scan = checked(table, rank, root, what)?;
    if !lock(&table.sent).contains_key(&(rank, root)) {
        tracing::warn!(
            rank,
            vm = table.vm,
            root,
            "refusing a request for {what} from a worker that has no manifest"
        );
        return None;
    }
    Some(scan)
}

/// When [`send_manifest`] sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// The worker asked: the current manifest, whatever it was sent before.
    Always,
    /// Before a spawn: only to a worker that was sent one, and only when it changed since.
    IfChanged,
}

/// Sends worker `rank` the current manifest of `root` (see [`Resend`]). The worker's turn
/// ([`Table::manifest_turns`]) is held from making the manifest to recording it sent; the
/// root's scan only while the manifest is made, so a send that waits for a worker that
/// stopped reading holds up no other worker.
fn send_manifest(
    table: &Table,
    shared: &Shared,
    scan: &Mutex<RootScan>,
    rank: Rank,
    root: u32,
    resend: Resend,
) {
    let turn = Arc::clone(lock(&table.manifest_turns).entry(rank).or_default());
    let _turn = lock(&turn);
    let had = lock(&table.sent).get(&(rank, root)).copied();
    if resend == Resend::IfChanged && had.is_none() {
        // It has none yet: it asks for one when it needs it.
        return;
    }
    let frame_failed = |reason: String| ToWorker::ManifestFailed {
        vm: table.vm,
        root,
        reason,
    };
    let scan_start = std::time::Instant::now();
    let made = {
        let mut scan = lock(scan);
        let scan = &mut *scan;
        scan.scanner.manifest().map(|manifest| {
            let digest = manifest.root_digest();
            let bytes = match &scan.encoded {
                Some((known, bytes)) if *known == digest => Arc::clone(bytes),
                _ if resend == Resend::IfChanged && had == Some(digest) => Arc::default(),
                _ => {
                    let bytes = Arc::new(manifest.encode());
                    scan.encoded = Some((digest, Arc::clone(&bytes)));
                    bytes
                }
            };
            (digest, bytes, manifest.file_count(), manifest.total_bytes())
        })
    };
    let scan_ms = scan_start.elapsed().as_secs_f64() * 1e3;
    let sent = match made {
        Ok((digest, _, _, _)) if resend == Resend::IfChanged && had == Some(digest) => return,
        Ok((digest, bytes, files, total)) => {
            let frame = ToWorker::Manifest {
                vm: table.vm,
                root,
                bytes: bytes.as_slice().into(),
            };
            let one = ShipStats {
                manifests: 1,
                ..ShipStats::default()
            };
            let sent = send_counted(table, shared, rank, &frame, &one);
            if sent.is_ok() {
                lock(&table.sent).insert((rank, root), digest);
                tracing::debug!(
                    rank,
                    vm = table.vm,
                    root,
                    files,
                    bytes = total,
                    scan_ms,
                    "sent a manifest"
                );
            }
            sent
        }
        Err(e) => {
            let shown = table.roots.get(root as usize).cloned().unwrap_or_default();
            let reason = format!(
                "cannot describe what the map matches beneath `{}`: {}",
                shown.display(),
                crate::error::one_line(&e)
            );
            // A worker that had a manifest is told too: its next task must not run on
            // the old one.
            lock(&table.sent).remove(&(rank, root));
            shared.send(rank, &frame_failed(reason))
        }
    };
    if let Err(e) = sent {
        // The worker is gone; its loss arrives as an event.
        tracing::debug!(rank, error = %e, "cannot send a manifest");
    }
}

/// Small blobs read whole, sent together in one [`ToWorker::BlobBatch`]: at most `limit`
/// bytes of them are held at a time.
struct Batch {
    blobs: Vec<(Digest, Vec<u8>)>,
    bytes: usize,
    limit: usize,
}

impl Batch {
    /// Blobs at most this large go into a batch.
    const SMALL: u64 = 64 << 10;

    fn new(limit: usize) -> Batch {
        Batch {
            blobs: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// Whether a blob of `size` bytes goes into a batch.
    fn takes(&self, size: u64) -> bool {
        size <= Self::SMALL && size <= self.limit as u64
    }

    /// Adds a whole blob, sending what is held first when it would not fit; `false` when
    /// the worker is gone.
    fn push(
        &mut self,
        table: &Table,
        shared: &Shared,
        rank: Rank,
        digest: Digest,
        data: Vec<u8>,
    ) -> bool {
        if self.bytes + data.len() > self.limit && !self.flush(table, shared, rank) {
            return false;
        }
        self.bytes += data.len();
        self.blobs.push((digest, data));
        true
    }

    /// Sends what is held; `false` when the worker is gone.
    fn flush(&mut self, table: &Table, shared: &Shared, rank: Rank) -> bool {
        if self.blobs.is_empty() {
            return true;
        }
        let frame = ToWorker::BlobBatch {
            vm: table.vm,
            blobs: self
                .blobs
                .iter()
                .map(|(digest, data)| BatchedBlob {
                    digest: *digest,
                    data: data.as_slice().into(),
                })
                .collect(),
        };
        let worth = ShipStats {
            blobs: self.blobs.len() as u64,
            bytes: self.bytes as u64,
            ..ShipStats::default()
        };
        let sent = send_counted(table, shared, rank, &frame, &worth).is_ok();
        if sent {
            tracing::debug!(
                rank,
                vm = table.vm,
                blobs = self.blobs.len(),
                bytes = self.bytes,
                "shipped a batch of small blobs"
            );
        }
        self.blobs.clear();
        self.bytes = 0;
        sent
    }
}

/// Streams blob `digest` to worker `rank` for its request `request` (a small one through
/// `batch`); `false` when the worker is gone.
fn send_blob(
    table: &Table,
    shared: &Shared,
    scan: &Mutex<RootScan>,
    (rank, request): (Rank, u64),
    digest: Digest,
    buffer: &mut ChunkBuffer,
    batch: &mut Batch,
) -> bool {
    let opened = lock(scan).scanner.open_blob(&digest);
    let failed = |reason: String| ToWorker::BlobFailed {
        vm: table.vm,
        request,
        digest,
        reason,
    };
    let source = match opened {
        Ok(source) => source,
        Err(e) => {
            return shared
                .send(rank, &failed(crate::error::one_line(&e)))
                .is_ok();
        }
    };
    let size = source.size;
    if batch.takes(size) {
        let mut data = Vec::with_capacity(size as usize);
        let read = (&source.file).take(size + 1).read_to_end(&mut data);
        return match read {
            // What was read is the blob only if the file did not change meanwhile.
            Ok(_) if data.len() as u64 == size => match source.unchanged() {
                Ok(()) => batch.push(table, shared, rank, digest, data),
                Err(e) => shared
                    .send(rank, &failed(crate::error::one_line(&e)))
                    .is_ok(),
            },
            Ok(_) => {
                let reason = format!(
                    "the file of blob {digest} changed size while it was read; it changed at the source, run the task again"
                );
                shared.send(rank, &failed(reason)).is_ok()
            }
            Err(e) => {
                let reason = format!("cannot read the file of blob {digest}: {e}");
                shared.send(rank, &failed(reason)).is_ok()
            }
        };
    }
    // Not empty: an empty blob always goes into a batch.
    let one = ShipStats {
        blobs: 1,
        ..ShipStats::default()
    };
    match stream(
        table,
        shared,
        (rank, request),
        (digest, &one),
        &source,
        &[(0, size)],
        buffer,
    ) {
        Ok(_) => {
            tracing::debug!(rank, vm = table.vm, %digest, bytes = size, "shipped a blob");
            true
        }
        Err(alive) => alive,
    }
}

/// Chunk `data` at `offset` of blob `digest`, for request `request` of VM `vm`; `end`
/// when it is the last.
fn blob_chunk(
    (vm, request, digest): (u32, u64, Digest),
    offset: u64,
    end: bool,
    data: &[u8],
) -> ToWorker<'_> {
    ToWorker::BlobData {
        vm,
        request,
        digest,
        offset,
        end,
        data: Cow::Borrowed(data),
    }
}

/// Streams the byte ranges `ranges` (start, end; ascending) of blob `digest`, read from
/// `source`, to worker `rank` as `BlobData` chunks of its request `request` at their
/// offsets, the last one marked `end` and sent only when the source is still the file that
/// was hashed, so that everything sent is the blob's. Each chunk's bytes are counted as it
/// leaves, and `done` (the blob, or its pieces) with the last one. `Ok` with the bytes sent;
/// `Err` when it stopped early (the VM is gone, or the file changed, shrank or cannot be
/// read, which fails the request): whether the worker is still there.
fn stream(
    table: &Table,
    shared: &Shared,
    (rank, request): (Rank, u64),
    (digest, done): (Digest, &ShipStats),
    source: &SourceBlob,
    ranges: &[(u64, u64)],
    buffer: &mut ChunkBuffer,
) -> Result<u64, bool> {
    let failed = |reason: String| {
        let frame = ToWorker::BlobFailed {
            vm: table.vm,
            request,
            digest,
            reason,
        };
        Err(shared.send(rank, &frame).is_ok())
    };
    let mut sent = 0u64;
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let mut at = start;
        while at < end {
            if table.cancel.load(Ordering::Acquire) {
                return Err(false);
            }
            let room = buffer.chunk_len();
            let want = usize::try_from(end - at).map_or(room, |left| left.min(room));
            let read = match source.file.read_at(buffer.chunk(want), at) {
                Ok(0) => {
                    return failed(format!(
                        "the file of blob {digest} shrank while it was sent; it changed at the source, run the task again"
                    ));
                }
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return failed(format!("cannot read the file of blob {digest}: {e}")),
            };
            let last = i + 1 == ranges.len() && at + read as u64 == end;
            if last && let Err(e) = source.unchanged() {
                return failed(crate::error::one_line(&e));
            }
            let blob = (table.vm, request, digest);
            let mut worth = if last { *done } else { ShipStats::default() };
            worth.bytes += read as u64;
            let delivered = match buffer.frame(&blob_chunk(blob, at, last, &[]), read) {
                Ok(payload) => counted(table, &worth, || shared.send_payload(rank, payload)),
                Err(data) => send_counted(
                    table,
                    shared,
                    rank,
                    &blob_chunk(blob, at, last, data),
                    &worth,
                ),
            };
            if delivered.is_err() {
                return Err(false);
            }
            at += read as u64;
            sent += read as u64;
        }
    }
    Ok(sent)
}

/// Streams `pieces` of blob `digest` to worker `rank` for its request `request`, each at
/// its offset, the last chunk marked `end`; a request for pieces the blob does not have
/// (not ascending, or past its end) fails like one for a blob it cannot send. `false` when
/// the worker is gone.
fn send_pieces(
    table: &Table,
    shared: &Shared,
    scan: &Mutex<RootScan>,
    (rank, request): (Rank, u64),
    (digest, pieces): (Digest, &[u32]),
    buffer: &mut ChunkBuffer,
) -> bool {
    let failed = |reason: String| ToWorker::BlobFailed {
        vm: table.vm,
        request,
        digest,
        reason,
    };
    let opened = lock(scan).scanner.open_blob(&digest);
    let source = match opened {
        Ok(source) => source,
        Err(e) => {
            return shared
                .send(rank, &failed(crate::error::one_line(&e)))
                .is_ok();
        }
    };
    let size = source.size;
    let count = parvm_ship::piece_count(size);
    let honest = !pieces.is_empty()
        && pieces.windows(2).all(|w| w[0] < w[1])
        && pieces.iter().all(|&p| (p as usize) < count);
    let Some(len) = parvm_ship::piece_len(size).filter(|_| honest) else {
        tracing::warn!(rank, vm = table.vm, %digest, "refusing a request for pieces the blob does not have");
        let reason = format!(
            "blob {digest} has {count} pieces; the worker asked for others (run the same parvm build on every host)"
        );
        return shared.send(rank, &failed(reason)).is_ok();
    };
    let ranges: Vec<(u64, u64)> = pieces
        .iter()
        .map(|&piece| {
            let start = u64::from(piece) * len;
            (start, (start + len).min(size))
        })
        .collect();
    let these = ShipStats {
        pieces: pieces.len() as u64,
        ..ShipStats::default()
    };
    match stream(
        table,
        shared,
        (rank, request),
        (digest, &these),
        &source,
        &ranges,
        buffer,
    ) {
        Ok(sent) => {
            tracing::debug!(rank, vm = table.vm, %digest, pieces = pieces.len(), bytes = sent, "shipped the pieces of a blob that changed");
            true
        }
        Err(alive) => alive,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use parvm_transport::{Event, Transport, Wait};

    use super::*;
    use crate::memory::MemoryTransport;
    use crate::wire::{self, FromWorker};

    /// The next frame a worker end receives, decoded by `read`.
    fn next<R>(end: &MemoryTransport, read: impl FnOnce(ToWorker<'_>) -> R) -> R {
        match end.recv(Wait::For(Duration::from_secs(10))).unwrap() {
            Some(Event::Message { payload, .. }) => read(wire::decode(&payload).unwrap()),
            other => panic!("no frame: {other:?}"),
        }
    }

    #[test]
    fn a_chunk_read_behind_its_head_is_the_frame_it_names() {
        let digest = Digest::of(b"blob");
        let mut buffer = ChunkBuffer::new(1 << 16);
        for (offset, end, len) in [(0, false, 0), (1 << 40, true, 1 << 16), (300, false, 17)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            buffer.chunk(len).copy_from_slice(&data);
            let chunk = |data| blob_chunk((3, 9, digest), offset, end, data);
            let framed = buffer
                .frame(&chunk(&[]), len)
                .expect("the head fits")
                .to_vec();
            let decoded = wire::decode::<ToWorker<'_>>(&framed).unwrap();
            assert_eq!(format!("{decoded:?}"), format!("{:?}", chunk(&data)));
        }
    }

    /// A VM shipping the files of `root` (`root/*` mapped to the task folder) from a
    /// spawner whose end of a memory cluster is `spawner(end)`: worker 1 was sent the
    /// VM's map, worker 2 was not.
    struct Served {
        shared: Arc<Shared>,
        ship: VmShip,
        w1: MemoryTransport,
        w2: MemoryTransport,
    }

    fn serve(
        root: &std::path::Path,
        spawner: impl FnOnce(MemoryTransport) -> Box<dyn Transport>,
    ) -> Served {
        let config = parvm_env_config::Config::builder()
            .local_root(root)
            .mirrored_roots([root])
            .ship(ShipMode::Always)
            .build()
            .unwrap();
        let source = root.join("*").display().to_string();
        let (_, map) =
            crate::task_folder::encode_map(&config, &[(source, PathBuf::from("."))]).unwrap();
        let mut ends = MemoryTransport::cluster(&["spawner", "w1", "w2"]).into_iter();
        let spawner = spawner(ends.next().unwrap());
        let (w1, w2) = (ends.next().unwrap(), ends.next().unwrap());
        let shared = Arc::new(Shared::new(
            spawner,
            crate::Tasks::new(),
            config.clone(),
            Vec::new(),
        ));
        let mapped = Arc::new(Mutex::new(HashSet::from([1])));
        let mut ship = VmShip::new(
            0,
            (ShipMode::Always, None, false),
            config.mirrored_roots(),
            &map,
            mapped,
        )
        .unwrap();
        assert_eq!(ship.plan(), &ShipPlan::Always);
        let jobs = ship.start(Arc::downgrade(&shared)).unwrap();
        shared.lock().ship.insert(0, jobs);
        Served {
            shared,
            ship,
            w1,
            w2,
        }
    }

    /// Hands `frame` from worker `from` to the spawner's router.
    fn route(shared: &Shared, from: Rank, frame: &FromWorker<'_>) {
        let mut state = shared.lock();
        let event = Event::Message {
            from,
            payload: wire::encode(frame).unwrap(),
        };
        assert!(shared.route(&mut state, event).is_none());
    }

    /// The manifest worker `end` was sent.
    fn manifest(end: &MemoryTransport) -> parvm_ship::Manifest {
        next(end, |frame| match frame {
            ToWorker::Manifest {
                vm: 0,
                root: 0,
                bytes,
            } => parvm_ship::Manifest::decode(&bytes).unwrap(),
            other => panic!("{other:?}"),
        })
    }

    #[test]
    fn a_source_written_while_it_is_sent_fails_the_request_before_its_end() {
        /// The spawner's end, writing into `path` (the same length) as it sends the first
        /// chunk of a blob.
        struct WritesWhileSending {
            end: MemoryTransport,
            path: PathBuf,
            written: AtomicBool,
        }
        impl Transport for WritesWhileSending {
            fn rank(&self) -> Rank {
                self.end.rank()
            }
            fn peers(&self) -> Vec<parvm_transport::Peer> {
                self.end.peers()
            }
            fn send(&self, to: Rank, payload: &[u8]) -> Result<(), parvm_transport::Error> {
                let chunk = matches!(
                    wire::decode::<ToWorker<'_>>(payload),
                    Ok(ToWorker::BlobData { .. })
                );
                if chunk && !self.written.swap(true, Ordering::SeqCst) {
                    let file = std::fs::OpenOptions::new().write(true).open(&self.path);
                    file.unwrap().write_all_at(b"X", 5).unwrap();
                }
                self.end.send(to, payload)
            }
            fn recv(&self, wait: Wait) -> Result<Option<Event>, parvm_transport::Error> {
                self.end.recv(wait)
            }
            fn backend(&self) -> &'static str {
                "memory"
            }
        }
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("model.lib");
        std::fs::write(&path, vec![7u8; 2 * BLOB_CHUNK + 10]).unwrap();
        let served = serve(root.path(), |end| {
            Box::new(WritesWhileSending {
                end,
                path: path.clone(),
                written: AtomicBool::new(false),
            })
        });
        route(
            &served.shared,
            1,
            &FromWorker::ManifestWanted { vm: 0, root: 0 },
        );
        let (digest, _, _) = manifest(&served.w1).blobs()[0].clone();
        let wanted = FromWorker::BlobsWanted {
            vm: 0,
            root: 0,
            request: 3,
            digests: vec![digest],
        };
        route(&served.shared, 1, &wanted);
        // Chunks read before and after the write, but never the one that ends the blob:
        // the request fails naming the file, and the worker keeps nothing of it.
        let mut chunks = 0;
        loop {
            let failed = next(&served.w1, |frame| match frame {
                ToWorker::BlobData {
                    request: 3, end, ..
                } => {
                    assert!(!end, "a blob whose source changed was ended");
                    chunks += 1;
                    false
                }
                ToWorker::BlobFailed {
                    request: 3,
                    digest: d,
                    reason,
                    ..
                } => {
                    assert_eq!(d, digest);
                    assert!(
                        reason.contains("model.lib") && reason.contains("changed"),
                        "{reason}"
                    );
                    true
                }
                other => panic!("{other:?}"),
            });
            if failed {
                break;
            }
        }
        assert_eq!(chunks, 2, "all but the last chunk were sent");
        served.shared.lock().ship.remove(&0);
        drop(served.ship);
        drop((served.w1, served.w2));
    }

    /// A worker that received a frame may have used it, run its task and reported its exit
    /// before the send returns on the spawner's side: the frame is counted by then.
    #[test]
    fn what_a_worker_received_is_counted_before_the_send_returns() {
        /// The spawner's end, which after passing each frame on waits until the test has
        /// looked at the stats.
        struct HoldsAfterSending {
            end: MemoryTransport,
            go_on: Mutex<std::sync::mpsc::Receiver<()>>,
        }
        impl Transport for HoldsAfterSending {
            fn rank(&self) -> Rank {
                self.end.rank()
            }
            fn peers(&self) -> Vec<parvm_transport::Peer> {
                self.end.peers()
            }
            fn send(&self, to: Rank, payload: &[u8]) -> Result<(), parvm_transport::Error> {
                self.end.send(to, payload)?;
                // Fails once the test has ended, whatever its outcome.
                let _ = self.go_on.lock().unwrap().recv();
                Ok(())
            }
            fn recv(&self, wait: Wait) -> Result<Option<Event>, parvm_transport::Error> {
                self.end.recv(wait)
            }
            fn backend(&self) -> &'static str {
                "memory"
            }
        }
        let root = tempfile::tempdir().unwrap();
        let large = vec![5u8; BLOB_CHUNK + 10];
        std::fs::write(root.path().join("large.bin"), &large).unwrap();
        std::fs::write(root.path().join("small.txt"), "small").unwrap();
        let (go_on, held) = std::sync::mpsc::channel();
        let served = serve(root.path(), |end| {
            Box::new(HoldsAfterSending {
                end,
                go_on: Mutex::new(held),
            })
        });
        // Dropped before `served`, whose thread may wait in a send, should the test fail.
        let go_on = go_on;
        let stats = || served.ship.stats();
        route(
            &served.shared,
            1,
            &FromWorker::ManifestWanted { vm: 0, root: 0 },
        );
        let digests: Vec<Digest> = manifest(&served.w1)
            .blobs()
            .iter()
            .map(|(d, _, _)| *d)
            .collect();
        assert_eq!(stats().manifests, 1);
        go_on.send(()).unwrap();
        route(
            &served.shared,
            1,
            &FromWorker::BlobsWanted {
                vm: 0,
                root: 0,
                request: 1,
                digests,
            },
        );
        // The large blob streams in chunks, the small one travels in a batch.
        let (mut bytes, mut blobs) = (0, 0);
        while blobs < 2 {
            let (got, ended) = next(&served.w1, |frame| match frame {
                ToWorker::BlobBatch { blobs, .. } => (blobs[0].data.len(), true),
                ToWorker::BlobData { data, end, .. } => (data.len(), end),
                other => panic!("{other:?}"),
            });
            bytes += got as u64;
            blobs += u64::from(ended);
            assert_eq!((stats().bytes, stats().blobs), (bytes, blobs));
            go_on.send(()).unwrap();
        }
        assert_eq!(bytes, large.len() as u64 + 5);
        assert_eq!(
            stats(),
            ShipStats {
                manifests: 1,
                blobs: 2,
                bytes,
                pieces: 0,
            }
        );
        served.shared.lock().ship.remove(&0);
        drop(served.ship);
        drop((served.w1, served.w2));
    }

    #[test]
    fn chunks_fit_the_frame_limit() {
        assert_eq!(chunk_len(None), BLOB_CHUNK);
        assert_eq!(chunk_len(Some(1 << 30)), BLOB_CHUNK);
        assert_eq!(chunk_len(Some(4096)), 3072);
        assert_eq!(chunk_len(Some(BLOB_CHUNK as u64)), BLOB_CHUNK - 1024);
    }

    #[test]
    fn forged_requests_are_refused_and_honest_ones_answered_in_order() {
        let root = tempfile::tempdir().unwrap();
        let content = vec![9u8; BLOB_CHUNK + 10];
        std::fs::write(root.path().join("a.bin"), &content).unwrap();
        std::fs::write(root.path().join("s1.txt"), "small one").unwrap();
        std::fs::write(root.path().join("s2.txt"), "small two").unwrap();
        // A file of three pieces.
        let big: Vec<u8> = (0..2 * parvm_ship::PIECE_MIN + 10)
            .map(|i| (i % 249) as u8)
            .collect();
        std::fs::write(root.path().join("big.bin"), &big).unwrap();
        let Served {
            shared,
            ship,
            w1,
            w2,
        } = serve(root.path(), |spawner| Box::new(spawner));
        let route = |from, frame: &FromWorker<'_>| route(&shared, from, frame);
        let unknown = Digest::from_bytes([1; 32]);
        // Refused without an answer: another VM, a worker without the map, a root the map
        // does not use, blobs before a manifest, too long a list.
        route(1, &FromWorker::ManifestWanted { vm: 7, root: 0 });
        route(2, &FromWorker::ManifestWanted { vm: 0, root: 0 });
        route(1, &FromWorker::ManifestWanted { vm: 0, root: 5 });
        route(
            1,
            &FromWorker::BlobsWanted {
                vm: 0,
                root: 0,
                request: 1,
                digests: vec![unknown],
            },
        );
        route(1, &FromWorker::ManifestWanted { vm: 0, root: 0 });
        route(
            1,
            &FromWorker::BlobsWanted {
                vm: 0,
                root: 0,
                request: 2,
                digests: vec![unknown; MAX_BLOBS_WANTED + 1],
            },
        );
        // The first answer is the manifest: nothing came of the forged requests.
        let manifest = manifest(&w1);
        let blobs = manifest.blobs();
        assert_eq!(blobs.len(), 4);
        let digest = parvm_ship::Digest::of(&content);
        assert!(
            blobs
                .iter()
                .any(|(d, size, _)| *d == digest && *size == content.len() as u64)
        );
        route(
            1,
            &FromWorker::BlobsWanted {
                vm: 0,
                root: 0,
                request: 3,
                digests: vec![unknown, digest],
            },
        );
        next(&w1, |frame| {
            assert!(
                matches!(&frame, ToWorker::BlobFailed { request: 3, digest: d, reason, .. } if *d == unknown && reason.contains(&unknown.to_string())),
                "{frame:?}"
            );
        });
        let mut received = Vec::new();
        loop {
            let end = next(&w1, |frame| match frame {
                ToWorker::BlobData {
                    digest: d,
                    data,
                    end,
                    ..
                } if d == digest => {
                    assert!(data.len() <= BLOB_CHUNK);
                    received.extend_from_slice(&data);
                    end
                }
                other => panic!("{other:?}"),
            });
            if end {
                break;
            }
        }
        assert_eq!(received, content);
        // Small files travel together, whole, in one frame.
        let small = [b"small one".as_slice(), b"small two"].map(parvm_ship::Digest::of);
        route(
            1,
            &FromWorker::BlobsWanted {
                vm: 0,
                root: 0,
                request: 4,
                digests: small.to_vec(),
            },
        );
        next(&w1, |frame| match frame {
            ToWorker::BlobBatch { vm: 0, blobs } => {
                let got: Vec<(Digest, &[u8])> =
                    blobs.iter().map(|b| (b.digest, b.data.as_ref())).collect();
                assert_eq!(
                    got,
                    [
                        (small[0], b"small one".as_slice()),
                        (small[1], b"small two")
                    ]
                );
            }
            other => panic!("{other:?}"),
        });
        // A piece asked for comes at its offset, in chunks, the last marked `end`; pieces a
        // blob does not have are refused by name.
        let big_digest = parvm_ship::Digest::of(&big);
        let pieces = |request, digest, pieces: Vec<u32>| FromWorker::PiecesWanted {
            vm: 0,
            root: 0,
            request,
            digest,
            pieces,
        };
        route(1, &pieces(5, big_digest, vec![1]));
        let mut at = parvm_ship::PIECE_MIN;
        loop {
            let end = next(&w1, |frame| match frame {
                ToWorker::BlobData {
                    digest: d,
                    offset,
                    data,
                    end,
                    ..
                } if d == big_digest && offset == at => {
                    assert_eq!(data.as_ref(), &big[at as usize..at as usize + data.len()]);
                    at += data.len() as u64;
                    end
                }
                other => panic!("{other:?}"),
            });
            if end {
                break;
            }
        }
        assert_eq!(at, 2 * parvm_ship::PIECE_MIN, "piece 1 whole, nothing more");
        for (request, digest, wanted) in [
            (6, big_digest, vec![2, 1]),
            (7, big_digest, vec![3]),
            (8, big_digest, vec![]),
            (9, small[0], vec![0]),
        ] {
            route(1, &pieces(request, digest, wanted));
            next(&w1, |frame| {
                assert!(
                    matches!(&frame, ToWorker::BlobFailed { request: r, digest: d, reason, .. } if *r == request && *d == digest && reason.contains("pieces")),
                    "{frame:?}"
                );
            });
        }
        assert_eq!(
            ship.stats(),
            ShipStats {
                manifests: 1,
                blobs: 3,
                bytes: content.len() as u64 + 18 + parvm_ship::PIECE_MIN,
                pieces: 1,
            }
        );
        // Worker 2 got nothing at all.
        assert!(w2.recv(Wait::NoWait).unwrap().is_none());
        shared.lock().ship.remove(&0);
        drop(ship);
        // Gone before the spawner finalizes, so it does not wait for them.
        drop((w1, w2));
    }
}

//! The frames the spawner and the workers exchange: [`ToWorker`], [`FromWorker`] and
//! what they carry. Plain data with serde derives.
//!
//! It must not know how frames are encoded on the wire beyond serde (that is the parent
//! module) nor who sends them.

use std::borrow::Cow;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use parvm_ship::Digest;

use crate::TaskId;

/// From the spawner to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker<'a> {
    /// Run a task.
    Spawn(#[serde(borrow)] SpawnRequest<'a>),
    /// A user message for task number `to` on this worker.
    User {
        from: TaskId,
        to: u64,
        #[serde(borrow, with = "serde_bytes")]
        data: Cow<'a, [u8]>,
    },
    /// Clear local storage on this host, skipping folders in use unless `force`.
    Clear { force: bool },
    /// Environment variables forwarded from the spawner; sent before the first task.
    Env { vars: Vec<crate::envfwd::Var> },
    /// The VM with this index is gone: drop its persistent folder.
    ForgetVm { vm: u32 },
    /// Leave the spawn loop and exit.
    Exit,
    /// The mirror map of VM `vm`: its abstract map, MessagePack-encoded once when the VM
    /// was built. Sent once to each worker, before the VM's first task there; the worker
    /// keeps it until [`ToWorker::ForgetVm`].
    Mirror {
        vm: u32,
        #[serde(borrow, with = "serde_bytes")]
        map: Cow<'a, [u8]>,
        /// Which mirrored roots of the map the worker reads directly and which it has
        /// shipped.
        ship: ShipPlan,
    },
    /// The manifest of mirrored root `root` of VM `vm` ([`parvm_ship::Manifest::encode`]):
    /// the answer to [`FromWorker::ManifestWanted`], and pushed again before a spawn
    /// request when it changed since the worker got it.
    Manifest {
        vm: u32,
        root: u32,
        #[serde(borrow, with = "serde_bytes")]
        bytes: Cow<'a, [u8]>,
    },
    /// The spawner cannot describe root `root` of VM `vm` (a source mirroring would
    /// refuse, an unreadable file): the task waiting for it fails with `reason`.
    ManifestFailed { vm: u32, root: u32, reason: String },
    /// The next bytes of blob `digest` of VM `vm` (at most [`BLOB_CHUNK`]), in order,
    /// starting at byte `offset` of the blob, for the worker's request `request`; with
    /// `end`, the blob (or the pieces of it that were asked for) is complete, and the
    /// spawner found its source unchanged after reading all of it (a small file travels
    /// in one frame). A worker takes a chunk only for the request it is waiting for, at
    /// the offset it has written up to: the rest of a transfer it abandoned (a stop, a
    /// full disk) arrives before the next one and is skipped, never joined to it. The
    /// bytes come last, so the spawner reads each chunk straight into the frame behind its
    /// head ([`super::head_before_bytes`]).
    BlobData {
        vm: u32,
        request: u64,
        digest: Digest,
        offset: u64,
        end: bool,
        #[serde(borrow, with = "serde_bytes")]
        data: Cow<'a, [u8]>,
    },
    /// Small blobs of VM `vm`, each whole: many small files travel in one frame of at
    /// most [`BATCH_BYTES`] bytes of content.
    BlobBatch {
        vm: u32,
        #[serde(borrow)]
        blobs: Vec<BatchedBlob<'a>>,
    },
    /// Blob `digest` of VM `vm`, asked for by the worker's request `request`, cannot be
    /// sent (its file changed or cannot be read); the bytes sent of it so far are to be
    /// dropped. A worker ignores the failure of a request of a transfer it abandoned.
    BlobFailed {
        vm: u32,
        request: u64,
        digest: Digest,
        reason: String,
    },
    /// Stop task `number`: a running command with everything it started, a running
    /// function by exiting the worker process, a queued spawn request without running it;
    /// a task that already ended is left alone. Read by [`read_stop`] on whichever thread
    /// receives it, so it is seen while the task runs.
    ///
    /// With `unless_started`, only a request that has not started is stopped (a dispatch
    /// takes back a task queued behind a long one for a slot that is free): the worker
    /// answers [`FromWorker::Stopped`] (`started` false) at once, without waiting for the
    /// task in front, and never runs it; a task that started is left alone, and nothing is
    /// answered.
    Stop { number: u64, unless_started: bool },
}

/// The most bytes of a blob one [`ToWorker::BlobData`] frame carries: the file is read a
/// chunk at a time as it is sent, so a blob of any size takes this much memory. 1 MiB,
/// one large file's piece: against 256 KiB, a quarter of the frames (each a read on the
/// spawner, a decode, a write and an allocation on the worker) made a cold ship of
/// 4 x 64 MiB about 5% faster once sealing no longer dominated.
pub(crate) const BLOB_CHUNK: usize = 1 << 20;

/// The most bytes of content one [`ToWorker::BlobBatch`] carries: small files arrive in
/// batches small enough that the worker writes one while the next is read and sent.
pub(crate) const BATCH_BYTES: usize = 256 << 10;

/// Returned files up to this size travel in one [`FromWorker::FileWhole`] frame instead of
/// three, so a task that returns many small files costs a third of the frames.
pub(crate) const WHOLE_FILE: u64 = 64 << 10;

/// The most digests one [`FromWorker::BlobsWanted`] may list; the worker asks in batches,
/// and the spawner refuses a longer list without reading it further.
pub(crate) const MAX_BLOBS_WANTED: usize = 1 << 16;

/// How a worker gets the mirrored roots of a VM's map (`PARVM_SHIP` on the spawner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ShipPlan {
    /// Read every root directly (`never`).
    Never,
    /// Ship every root the map uses (`always`).
    Always,
    /// Probe each root the map uses (`auto`): read it directly where the marker file is
    /// there with its token, else ship it.
    Probe(Vec<Probe>),
}

/// One whole blob in a [`ToWorker::BlobBatch`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BatchedBlob<'a> {
    pub digest: Digest,
    #[serde(borrow, with = "serde_bytes")]
    pub data: Cow<'a, [u8]>,
}

/// The spawner's marker in one mirrored root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Probe {
    /// The root's index in the mirrored roots.
    pub root: u32,
    /// The marker's file name in that root; `None` when the spawner could not write it
    /// (a read-only model library): then only `folder` tells where it is shared.
    pub marker: Option<String>,
    /// What the marker holds.
    pub token: String,
    /// Which folder the root is on the spawner's host, sent when no marker could be
    /// written (and the root could be looked at).
    pub folder: Option<RootFolder>,
}

/// A folder as the kernel of one boot knows it: a worker running on the same kernel
/// (the same boot id) whose root has the same device and inode numbers sees that very
/// folder, whatever path or mount leads it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RootFolder {
    /// The boot id of the spawner's host (`/proc/sys/kernel/random/boot_id`).
    pub boot: String,
    /// The folder's device number.
    pub dev: u64,
    /// The folder's inode number.
    pub ino: u64,
}

/// The first bytes of every encoded [`ToWorker::Stop`]: the version byte, then a
/// MessagePack map of one entry keyed `"Stop"`. A receiving thread compares them before
/// decoding, so the other frames pay a few byte comparisons, not a second decode.
const STOP_PREFIX: &[u8] = &[super::VERSION, 0x81, 0xa4, b'S', b't', b'o', b'p'];

/// The task number of a [`ToWorker::Stop`] frame and whether it stops the task only
/// unless it started; `None` for any other payload.
pub(crate) fn read_stop(payload: &[u8]) -> Option<(u64, bool)> {
    if !payload.starts_with(STOP_PREFIX) {
        return None;
    }
    match super::decode::<ToWorker<'_>>(payload) {
        Ok(ToWorker::Stop {
            number,
            unless_started,
        }) => Some((number, unless_started)),
        _ => None,
    }
}

/// Everything a worker needs to run one task.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SpawnRequest<'a> {
    pub number: u64,
    pub vm: u32,
    #[serde(borrow)]
    pub job: Job<'a>,
    /// Whether the task gets a task folder; a VM's mirror map comes before its first
    /// task, in [`ToWorker::Mirror`].
    pub folder: bool,
    pub persistent: bool,
    /// Before reusing the persistent folder, remove what earlier tasks wrote.
    pub clean: bool,
    pub startup: Option<Startup>,
    pub send_back: bool,
    /// Return patterns ([`crate::Spawn::returning`]): matched in the task folder when the
    /// task ends, the files streamed back before [`FromWorker::Done`].
    #[serde(default)]
    pub returning: Vec<String>,
}

/// What to run.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Job<'a> {
    /// A registered function and its MessagePack-encoded arguments.
    Function {
        name: Cow<'a, str>,
        #[serde(borrow, with = "serde_bytes")]
        args: Cow<'a, [u8]>,
    },
    /// An external command.
    Command {
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
}

/// Where a task starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Startup {
    /// A folder relative to the task folder.
    InFolder(PathBuf),
    /// A folder in mirrored storage: (root index, relative suffix).
    Mirrored(usize, PathBuf),
    /// A literal absolute path, used as is on every host.
    Literal(PathBuf),
}

/// From a worker to the spawner.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker<'a> {
    /// Task `number` ended: its result (when sent back) and its exit in one frame.
    Done {
        number: u64,
        #[serde(borrow, with = "serde_bytes")]
        value: Option<Cow<'a, [u8]>>,
        error: Option<String>,
        /// Bytes mirrored into the task folder for this task (0 when nothing was), for
        /// the dispatch's results.
        mirrored: u64,
    },
    /// A user message from task `from` on this worker to task `to`. `from` is `None` in a
    /// compact frame to the spawner ([`USER_SPAWNER`](super::user::USER_SPAWNER)): the task the slot runs.
    User {
        from: Option<u64>,
        to: TaskId,
        #[serde(borrow, with = "serde_bytes")]
        data: Cow<'a, [u8]>,
    },
    /// Output lines the worker wrote while task `number` ran (0: between tasks).
    Output {
        number: u64,
        stderr: bool,
        #[serde(borrow, with = "serde_bytes")]
        data: Cow<'a, [u8]>,
    },
    /// The answer to [`ToWorker::Clear`].
    Cleared { removed: u64, error: Option<String> },
    /// A returned file of task `number` starts: its path relative to the task folder (the
    /// bytes of an OS path), and its size when opened. A second start of the same file
    /// (after a [`FromWorker::FileEnd`] with `changed`) sends it again from the beginning.
    FileStart {
        number: u64,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        size: u64,
    },
    /// The next bytes of the file started last; each takes output window credit, like
    /// [`FromWorker::Output`], and the spawner acknowledges it once written.
    FileData {
        number: u64,
        #[serde(borrow, with = "serde_bytes")]
        data: Cow<'a, [u8]>,
    },
    /// The file started last is complete: its mode and modification time; with `changed`,
    /// it changed while it was read and is to be dropped (it is sent again, or the task's
    /// returning fails).
    FileEnd {
        number: u64,
        mode: u32,
        mtime: (i64, i64),
        changed: bool,
    },
    /// A returned file of at most [`WHOLE_FILE`] bytes in one frame: what
    /// [`FromWorker::FileStart`], one [`FromWorker::FileData`] and an unchanged
    /// [`FromWorker::FileEnd`] would say. Its bytes take window credit as `FileData`'s do.
    FileWhole {
        number: u64,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        #[serde(borrow, with = "serde_bytes")]
        data: Cow<'a, [u8]>,
        mode: u32,
        mtime: (i64, i64),
    },
    /// Returning the files of task `number` failed on the worker (a literal pattern that
    /// matches nothing, a symlink, a file that kept changing); sent before `Done`.
    ReturnFailed { number: u64, reason: String },
    /// Task `number` was stopped by a [`ToWorker::Stop`] without a [`FromWorker::Done`]:
    /// a queued task that never ran (`started` false), or a running function whose worker
    /// process exits next (`started` true).
    Stopped { number: u64, started: bool },
    /// The worker ships root `root` of VM `vm` and has no manifest of it yet.
    ManifestWanted { vm: u32, root: u32 },
    /// The worker's host lacks these blobs of the manifest of root `root` of VM `vm` it
    /// was sent last (at most [`MAX_BLOBS_WANTED`]); each comes back as
    /// [`ToWorker::BlobData`] chunks, the last marked `end`, or a [`ToWorker::BlobFailed`]
    /// naming `request` (the worker's count of its requests).
    BlobsWanted {
        vm: u32,
        root: u32,
        request: u64,
        digests: Vec<Digest>,
    },
    /// The worker's host has an older version of blob `digest` of the manifest of root
    /// `root` of VM `vm` it was sent last, and lacks only these of its pieces
    /// ([`parvm_ship::Pieces`]; ascending, at most [`parvm_ship::MAX_PIECES`]): they come
    /// back as [`ToWorker::BlobData`] chunks at their offsets, in order, the last marked
    /// `end`, or as a [`ToWorker::BlobFailed`] naming `request`.
    PiecesWanted {
        vm: u32,
        root: u32,
        request: u64,
        digest: Digest,
        pieces: Vec<u32>,
    },
    /// The worker leaves before it is dismissed (a signal asked it to, `reason` says which
    /// and what it did): no task is to be sent to it. The task it ran, if any, gets no
    /// `Done`; it ends as lost when the connection closes next, and a dispatch runs it
    /// again elsewhere.
    Leaving { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode, output_ack};

    #[test]
    fn stop_frames_are_told_apart_by_their_first_bytes() {
        for number in [0, 1, 127, 128, 1 << 40, u64::MAX] {
            for unless_started in [false, true] {
                let bytes = encode(&ToWorker::Stop {
                    number,
                    unless_started,
                })
                .unwrap();
                assert!(bytes.starts_with(STOP_PREFIX), "{bytes:?}");
                assert_eq!(read_stop(&bytes), Some((number, unless_started)));
            }
        }
        for other in [
            encode(&ToWorker::Exit).unwrap(),
            encode(&ToWorker::ForgetVm { vm: 3 }).unwrap(),
            encode(&ToWorker::Clear { force: true }).unwrap(),
            output_ack(5),
            Vec::new(),
            STOP_PREFIX.to_vec(),
        ] {
            assert_eq!(read_stop(&other), None, "{other:?}");
        }
    }
}

//! The frames the spawner and the workers exchange: [`ToWorker`], [`FromWorker`] and
//! what they carry. Plain data with serde derives.
//!
//! It must not know how frames are encoded on the wire beyond serde (that is the parent
//! module) nor who sends them.

use std::borrow::Cow;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    },
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
    },
    /// A user message from task `from` on this worker to task `to`. `from` is `None` in a
    /// compact frame to the spawner ([`USER_SPAWNER`]): the task the slot runs.
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
}

//! The VM's error type.

use std::path::PathBuf;

use crate::TaskId;

/// What can go wrong while starting the VM, spawning tasks or exchanging messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration could not be read from the environment.
    #[error("cannot read the parvm configuration")]
    Config(#[source] parvm_env_config::Error),
    /// The transport failed as a whole.
    #[error("the `{backend}` transport failed")]
    Transport {
        /// The backend's name.
        backend: &'static str,
        /// What the transport said.
        #[source]
        source: parvm_transport::Error,
    },
    /// A spawn named a task that is not registered in this program.
    #[error(
        "task `{name}` is not registered; register it with `Tasks::register(\"{name}\", ...)` (registered: {known})"
    )]
    UnknownTask {
        /// The name that was spawned.
        name: String,
        /// The names that are registered, comma separated.
        known: String,
    },
    /// A spawn passed arguments of another type than the task was registered with.
    #[error("task `{name}` takes arguments of type `{expected}`, but `{given}` was passed")]
    WrongArgs {
        /// The task's name.
        name: String,
        /// The registered argument type.
        expected: &'static str,
        /// The type passed to the spawn.
        given: &'static str,
    },
    /// A task name was registered twice.
    #[error("task `{name}` is registered twice; give each task its own name")]
    DuplicateTask {
        /// The name registered twice.
        name: String,
    },
    /// A value could not be encoded for sending.
    #[error("cannot encode {what}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's complaint.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// A received value could not be decoded as the requested type.
    #[error("cannot decode {what} as `{wanted}`")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The type asked for.
        wanted: &'static str,
        /// The decoder's complaint.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// A task result was decoded as another type than the task returns.
    #[error("task {task} returns `{returns}`, but its result was decoded as `{wanted}`")]
    WrongResultType {
        /// The task.
        task: TaskId,
        /// The type the task returns.
        returns: &'static str,
        /// The type asked for.
        wanted: &'static str,
    },
    /// A peer sent a frame this VM cannot read (another version, or garbage).
    #[error(
        "rank {rank} sent a frame this program cannot read ({reason}); run the same parvm build on every host"
    )]
    Protocol {
        /// The sender.
        rank: u32,
        /// What was wrong.
        reason: String,
    },
    /// The VM or its runtime was finalized; nothing more can be spawned or received.
    #[error("the virtual machine was finalized; build a new runtime to spawn more tasks")]
    Finalized,
    /// An operation that only the spawner can do was called in a worker, or the other way round.
    #[error("{what} is only available on the spawner")]
    NotSpawner {
        /// The operation.
        what: &'static str,
    },
    /// The mirror map or startup folder of a VM builder is not usable.
    #[error("invalid VM setting `{setting}`: {reason}")]
    Setting {
        /// The builder setting.
        setting: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A path in the mirror map could not be translated to mirrored storage.
    #[error("cannot translate the mirror map to mirrored storage")]
    Mirror(#[source] parvm_mirror_fs::Error),
    /// A literal mirror source (no glob characters) does not exist on the spawner; refused
    /// by [`VmBuilder::build`](crate::VmBuilder::build) before anything is spawned.
    #[error(
        "mirror source `{given}` ({}) {problem}; fix its `VmBuilder::mirror` entry or create it before building the VM",
        path.display()
    )]
    MirrorSourceMissing {
        /// The source as given to the builder.
        given: String,
        /// Where it was looked for on the spawner.
        path: PathBuf,
        /// What is wrong with it: missing, or a symlink to nothing.
        problem: String,
    },
    /// Local storage could not be opened, taken or cleared.
    #[error("local storage failed")]
    Storage(#[source] parvm_local_storage::Error),
    /// A file-system or process operation failed.
    #[error("cannot {what} `{}`", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The operating system's complaint.
        #[source]
        source: std::io::Error,
    },
    /// Fewer workers joined than the runtime was asked to wait for.
    #[error("only {joined} of {wanted} workers joined within {timeout:?}; {hint}")]
    WorkersMissing {
        /// How many were asked for.
        wanted: usize,
        /// How many joined.
        joined: usize,
        /// How long the runtime waited.
        timeout: std::time::Duration,
        /// What to do, e.g. the address workers must connect to.
        hint: String,
    },
    /// Nothing can arrive any more: every worker is gone and the transport starts no new
    /// ones (local and MPI), so waiting would never end.
    #[error(
        "nothing can arrive: every worker of the `{backend}` transport is gone ({lost} lost, the last: {last_loss}) and it starts no new ones; {hint}"
    )]
    WorkersGone {
        /// The backend's name.
        backend: &'static str,
        /// How many workers were lost.
        lost: usize,
        /// Why the last one was lost, or that there never were any.
        last_loss: String,
        /// What to do.
        hint: String,
    },
    /// More workers were asked for than there are, on a transport that starts no new ones.
    #[error(
        "cannot wait for {wanted} workers: the `{backend}` transport has {have} and starts no new ones; {hint}"
    )]
    TooFewWorkers {
        /// How many were asked for.
        wanted: usize,
        /// How many there are.
        have: usize,
        /// The backend's name.
        backend: &'static str,
        /// What to do.
        hint: String,
    },
    /// A variable named for forwarding to the workers cannot be forwarded.
    #[error(
        "cannot forward environment variable `{name}` to the workers: {reason}; fix `RuntimeBuilder::forward_env` or PARVM_FORWARD_ENV"
    )]
    ForwardEnv {
        /// The variable's name.
        name: String,
        /// Why it cannot be forwarded.
        reason: String,
    },
    /// The spawner went away while a task was waiting for a message.
    #[error("the spawner is gone; the task should return")]
    SpawnerLost,
}

impl Error {
    pub(crate) fn transport(backend: &'static str, source: parvm_transport::Error) -> Self {
        Error::Transport { backend, source }
    }
}

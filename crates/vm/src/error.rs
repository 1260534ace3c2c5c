//! The VM's error type, and [`Report`] for programs that print errors.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::TaskId;

/// What can go wrong while starting the VM, spawning tasks or exchanging messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration could not be read from the environment.
    #[error("cannot read the parvm configuration: {0}")]
    Config(#[source] parvm_env_config::Error),
    /// The transport failed as a whole.
    #[error("the `{backend}` transport failed: {source}")]
    Transport {
        /// The backend's name.
        backend: &'static str,
        /// What the transport said.
        #[source]
        source: parvm_transport::Error,
    },
    /// The spawner speaks another version of the protocol between spawner and workers:
    /// this worker was built from another parvm.
    #[error(
        "the spawner speaks parvm protocol version {theirs} and this worker version {ours}: start workers from the same parvm build as the spawner (the same program, rebuilt on every host from the same sources)"
    )]
    OtherVersion {
        /// The spawner's version.
        theirs: u8,
        /// This worker's version.
        ours: u8,
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
    #[error("cannot encode {what}: {source}; send and return only types that serde can encode")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The encoder's complaint.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// A received value could not be decoded as the requested type.
    #[error(
        "cannot decode {what} as `{wanted}`: {source}; decode it as the type that was sent or returned"
    )]
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
    #[error(
        "task {task} returns `{returns}`, but its result was decoded as `{wanted}`; call `decode::<{returns}>()`"
    )]
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
    #[error(
        "{what} is only available on the spawner (rank 0); call it from the spawner's code, not inside a task or worker"
    )]
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
    #[error("cannot translate the mirror map to mirrored storage (PARALLEL_MIRRORED_STORAGE): {0}")]
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
    #[error("local storage (PARALLEL_LOCAL_STORAGE) failed: {0}")]
    Storage(#[source] parvm_local_storage::Error),
    /// Local storage could not be opened on a worker. The worker keeps the error, so every
    /// task that needs a folder there fails with it.
    #[error("local storage (PARALLEL_LOCAL_STORAGE) failed: {0}")]
    StorageUnavailable(#[source] Arc<parvm_local_storage::Error>),
    /// Mirroring into a task folder failed on a worker; what the run created was removed.
    #[error("cannot mirror into task folder `{}`: {source}", folder.display())]
    MirrorInto {
        /// The task folder.
        folder: PathBuf,
        /// What mirroring said, naming the source or target and what to do.
        #[source]
        source: parvm_mirror_fs::Error,
    },
    /// Mirroring shipped inputs into a task folder found the disk full: besides each task
    /// folder's copy, the host cache holds one of its own.
    #[error(
        "cannot mirror into task folder `{}`, whose inputs are shipped to this host: the host cache `{}` holds a copy of them besides each task folder's, so give PARALLEL_LOCAL_STORAGE a disk with room for one copy more than the tasks running at once here, or run fewer here: {source}",
        folder.display(),
        cache.display()
    )]
    MirrorIntoFull {
        /// The task folder.
        folder: PathBuf,
        /// The host cache (`<local storage>/parvm-<user>/cache`).
        cache: PathBuf,
        /// What mirroring said ([`parvm_mirror_fs::Error::DiskFull`]); boxed, so this
        /// rare variant does not make every `Result` of the crate larger.
        #[source]
        source: Box<parvm_mirror_fs::Error>,
    },
    /// Shipping a mirrored root to a worker's host failed there (the host cache, a blob
    /// that arrived damaged, a snapshot).
    #[error("cannot ship mirrored storage entry {root} to this host: {source}")]
    Ship {
        /// The entry of PARALLEL_MIRRORED_STORAGE being shipped.
        root: u32,
        /// What the cache said, naming the file and what to do.
        #[source]
        source: parvm_ship::Error,
    },
    /// The spawner could not send what a shipped root needs; its reason names the file.
    #[error("the spawner cannot ship mirrored storage entry {root}: {reason}")]
    ShipRefused {
        /// The entry of PARALLEL_MIRRORED_STORAGE being shipped.
        root: u32,
        /// What the spawner said.
        reason: String,
    },
    /// The spawner could not send a file of a shipped root: it cannot read it, or it
    /// changed or went at the source since the manifest and did so again after the worker
    /// took the current one, a few times over half a second; the reason names the file.
    #[error("the spawner cannot send a file of mirrored storage entry {root}: {reason}")]
    ShipBlobRefused {
        /// The entry of PARALLEL_MIRRORED_STORAGE being shipped.
        root: u32,
        /// What the spawner said, naming the file.
        reason: String,
    },
    /// The host cache of shipped files could not be opened on this worker.
    #[error("the host cache of shipped files (PARVM_CACHE_MAX) cannot be used: {0}")]
    CacheUnavailable(#[source] Arc<parvm_ship::Error>),
    /// The worker stopped waiting for a shipped root: the spawner is gone or the
    /// transport failed.
    #[error("the transfer of mirrored storage entry {root} stopped: {reason}")]
    ShipInterrupted {
        /// The entry of PARALLEL_MIRRORED_STORAGE being shipped.
        root: u32,
        /// Why.
        reason: String,
    },
    /// A worker could not decode the mirror map the spawner sent.
    #[error("cannot decode the mirror map: {0}; run the same parvm build on every host")]
    MirrorMapDecode(#[source] rmp_serde::decode::Error),
    /// A task's startup folder is in a mirrored storage entry this worker's host does not have.
    #[error(
        "the startup folder is in mirrored storage entry {index}, but PARALLEL_MIRRORED_STORAGE has {entries} entries on this host; list the same mirrored folders, in the same order, on every host"
    )]
    StartupRootMissing {
        /// The entry of the spawner's PARALLEL_MIRRORED_STORAGE the startup folder is in.
        index: usize,
        /// How many entries this host has.
        entries: usize,
    },
    /// The mirror map reads from a mirrored storage entry that does not exist on this
    /// worker's host, and the spawner does not ship it.
    #[error(
        "the mirror map reads from mirrored storage entry {index} (`{}`), which does not exist on this host, and the spawner does not ship it (PARVM_SHIP=never); mount the shared folder there, or let the spawner ship the inputs (PARVM_SHIP=auto, the default)",
        root.display()
    )]
    MirroredRootMissing {
        /// The entry of PARALLEL_MIRRORED_STORAGE.
        index: u32,
        /// What the entry names on this host.
        root: PathBuf,
    },
    /// A startup folder relative to a task folder came with a task that has none (the
    /// spawner runs another parvm build).
    #[error(
        "startup folder `{}` is relative to a task folder, but the task has none; run the same parvm build on every host",
        path.display()
    )]
    StartupWithoutFolder {
        /// The startup folder, relative to the task folder.
        path: PathBuf,
    },
    /// A startup folder outside the task folder came with a task that has one (the spawner
    /// runs another parvm build).
    #[error(
        "a startup folder outside task folder `{}` was sent with it; run the same parvm build on every host",
        folder.display()
    )]
    StartupOutsideFolder {
        /// The task folder.
        folder: PathBuf,
    },
    /// The startup folder beneath a task folder cannot be opened (missing, or a symlink on
    /// the way, which an earlier task may have planted in a persistent folder).
    #[error("cannot start the task in its startup folder beneath `{}`: {source}", folder.display())]
    StartupBeneath {
        /// The task folder.
        folder: PathBuf,
        /// Why the startup folder cannot be opened, naming it.
        #[source]
        source: parvm_mirror_fs::Error,
    },
    /// A file-system or process operation failed.
    #[error("cannot {what} `{}`: {source}", path.display())]
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
    /// A dispatch cannot finish: every worker is gone and none can come (or the transport
    /// failed). The jobs it names were not reported.
    #[error(
        "the dispatch stopped with {} job(s) unfinished ({}): {source}; then dispatch the unfinished jobs again",
        unfinished.len(),
        crate::error::job_list(unfinished)
    )]
    DispatchUnfinished {
        /// The indices of the jobs that were not reported, ascending.
        unfinished: Vec<usize>,
        /// Why the dispatch cannot go on.
        #[source]
        source: Box<Error>,
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
    /// A return pattern is absolute or climbs out of the task folder.
    #[error("cannot return `{pattern}`: {source}")]
    ReturnPattern {
        /// The pattern as given.
        pattern: String,
        /// What mirror-fs says is wrong with it.
        #[source]
        source: parvm_mirror_fs::Error,
    },
    /// A spawn returns files but has no results folder.
    #[error(
        "return pattern `{pattern}` has no results folder to write into; give the spawn one with `Spawn::results_dir(...)`"
    )]
    ReturnWithoutResults {
        /// The first return pattern.
        pattern: String,
    },
    /// A spawn returns files from a VM whose tasks have no task folder.
    #[error(
        "return pattern `{pattern}` needs a task folder, but this VM runs tasks without one; build the VM with `local_folder(true)`, a mirror map or `persistent(true)`"
    )]
    ReturnWithoutFolder {
        /// The first return pattern.
        pattern: String,
    },
    /// The spawner went away while a task was waiting for a message.
    #[error(
        "the spawner is gone, so no message can arrive; return from the task (its worker exits)"
    )]
    SpawnerLost,
    /// [`Vm::stop`](crate::Vm::stop) cannot stop this task.
    #[error("cannot stop task {task}: {reason}")]
    CannotStop {
        /// The task.
        task: crate::TaskId,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A worker cannot catch a signal it leaves on ([`LeaveRequest::on_signals`](crate::LeaveRequest::on_signals)).
    #[error(
        "cannot catch {signal} in this worker: {source}; without it the signal kills the worker at once and its task folder waits for the next parvm start on this host"
    )]
    Signal {
        /// The signal's name.
        signal: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn transport(backend: &'static str, source: parvm_transport::Error) -> Self {
        Error::Transport { backend, source }
    }
}

/// An error and its sources in one line, separated by `: `; a source whose text the line
/// already ends with (the VM's errors show their source) is not repeated. For errors that
/// travel as text: task failures and clear outcomes.
pub(crate) fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        let more = next.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = next.source();
    }
    text
}

/// `Result` with [`Report`] as its default error: the return type of a program's `main`.
///
/// ```
/// fn main() -> parvm_vm::Result<()> {
///     let text = std::fs::read_to_string("Cargo.toml")?;
///     assert!(!text.is_empty());
///     Ok(())
/// }
/// ```
pub type Result<T, E = Report> = std::result::Result<T, E>;

/// Any error, kept for printing: its [`Debug`](fmt::Debug) form (what a `main` returning
/// [`Result`] prints when it fails) is the readable chain of messages
///
/// ```text
/// Error: cannot read the parvm configuration: PARVM_WORKERS is `many`, not a whole number of at least 1; set it to one (e.g. 4) or unset it
/// ```
///
/// instead of the derived dump of nested enum variants. A cause whose text the message
/// above it already ends with is not repeated; every other cause gets its own
/// `caused by:` line.
///
/// `?` turns every error type into a `Report`. [`Report::msg`] makes one from a plain
/// message; [`Report::downcast_ref`] gets the original error back.
pub struct Report(Box<dyn std::error::Error + Send + Sync + 'static>);

impl Report {
    /// A report of a plain message.
    #[must_use]
    pub fn msg(message: impl fmt::Display) -> Report {
        Report(Box::new(Message(message.to_string())))
    }

    /// The error this report holds.
    #[must_use]
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The error as type `E`, when it is one.
    #[must_use]
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref()
    }

    /// The messages to print: the error's own, then each cause that adds something new.
    fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = vec![self.0.to_string()];
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            // The VM's errors already end with their cause's message, so that
            // `to_string()` alone tells the whole story; printing it again adds nothing.
            let repeated = lines.last().is_some_and(|last| last.ends_with(&text));
            if !repeated && !text.is_empty() {
                lines.push(text);
            }
            cause = error.source();
        }
        lines
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Report {
    fn from(error: E) -> Report {
        Report(Box::new(error))
    }
}

impl From<Report> for Box<dyn std::error::Error + Send + Sync + 'static> {
    fn from(report: Report) -> Self {
        report.0
    }
}

/// The message, and one `  caused by: <cause>` line for each cause. A failing `main` prints
/// it after `Error: `.
impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines = self.lines();
        f.write_str(&lines[0])?;
        for cause in &lines[1..] {
            write!(f, "\n  caused by: {cause}")?;
        }
        Ok(())
    }
}

/// The messages on one line, separated by `: `.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join(": "))
    }
}

/// The error of [`Report::msg`].
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// `jobs 1, 4, 7` (the first 20, then how many more).
fn job_list(indices: &[usize]) -> String {
    const SHOWN: usize = 20;
    let mut text = String::from(if indices.len() == 1 { "job" } else { "jobs" });
    for (n, index) in indices.iter().take(SHOWN).enumerate() {
        text.push_str(if n == 0 { " " } else { ", " });
        text.push_str(&index.to_string());
    }
    if indices.len() > SHOWN {
        text.push_str(&format!(" and {} more", indices.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose message does not repeat its cause, as most library errors are.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot load the corner file")]
    struct Outer(#[source] std::io::Error);

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn config_errors_name_the_variable_and_value() {
        let inner = parvm_env_config::Config::from_lookup(|name| {
            (name == "PARVM_WORKERS").then(|| "many".into())
        })
        .unwrap_err();
        let error = Error::Config(inner);
        assert_eq!(
            error.to_string(),
            "cannot read the parvm configuration: PARVM_WORKERS is `many`, not a whole number of at least 1; set it to one (e.g. 4) or unset it"
        );
        assert_eq!(
            format!("{:?}", Report::from(error)),
            "cannot read the parvm configuration: PARVM_WORKERS is `many`, not a whole number of at least 1; set it to one (e.g. 4) or unset it"
        );
    }

    #[test]
    fn mirror_errors_name_the_path_and_the_roots() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        let config = parvm_env_config::Config::builder()
            .mirrored_roots([&root])
            .local_root(&root)
            .build()
            .unwrap();
        // The tests run in the crate's folder, which is not under the temporary root.
        let error = crate::task_folder::encode_map(&config, &[("*.cir".into(), ".".into())])
            .expect_err("the current folder is outside mirrored storage");
        let text = error.to_string();
        let cwd = std::env::current_dir().unwrap();
        assert!(
            text.starts_with(
                "cannot translate the mirror map to mirrored storage (PARALLEL_MIRRORED_STORAGE): `"
            ),
            "{text}"
        );
        assert!(text.contains(&cwd.display().to_string()), "{text}");
        assert!(text.contains(&root.display().to_string()), "{text}");
        assert!(
            text.contains("add its folder to PARALLEL_MIRRORED_STORAGE"),
            "{text}"
        );
        // The report is the same message, not the derived `Mirror(NoRoot { .. })` dump.
        assert_eq!(format!("{:?}", Report::from(error)), text);
    }

    #[test]
    fn shipping_errors_name_the_entry_and_the_file() {
        let digest = parvm_ship::Digest::of(b"x");
        let rows: Vec<(Error, &[&str])> = vec![
            (
                Error::Ship {
                    root: 1,
                    source: parvm_ship::Error::DigestMismatch {
                        shown_as: "models/nmos.lib".into(),
                        expected: digest,
                        got: parvm_ship::Digest::of(b"y"),
                    },
                },
                &["entry 1", "models/nmos.lib", "changed at the source"],
            ),
            (
                Error::ShipRefused {
                    root: 0,
                    reason: "`a.cir`: it shrank".to_owned(),
                },
                &["entry 0", "`a.cir`: it shrank"],
            ),
            (
                Error::ShipInterrupted {
                    root: 2,
                    reason: "the spawner is gone: it exited".to_owned(),
                },
                &["entry 2", "spawner is gone"],
            ),
            (
                Error::CacheUnavailable(Arc::new(parvm_ship::Error::UnsafeFolder {
                    path: "/scratch/parvm-ana/cache".into(),
                    reason: "its mode 755 lets others in".to_owned(),
                })),
                &["PARVM_CACHE_MAX", "/scratch/parvm-ana/cache", "0700"],
            ),
        ];
        for (error, words) in rows {
            let text = one_line(&error);
            for word in words {
                assert!(text.contains(word), "{word:?} missing in: {text}");
            }
        }
    }

    #[test]
    fn io_errors_carry_the_operating_system_message() {
        let error = Error::Io {
            what: "read the startup folder",
            path: "/shared/project".into(),
            source: not_found(),
        };
        assert_eq!(
            error.to_string(),
            "cannot read the startup folder `/shared/project`: no such file"
        );
        let report = Report::from(error);
        assert_eq!(
            format!("{report:?}"),
            "cannot read the startup folder `/shared/project`: no such file"
        );
        assert!(matches!(
            report.downcast_ref::<Error>(),
            Some(Error::Io { .. })
        ));
    }

    #[test]
    fn one_line_shows_each_cause_once() {
        let inner = parvm_local_storage::Error::NotWritable {
            path: "/scratch/parvm-ana".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let error = Error::Storage(inner);
        assert_eq!(
            one_line(&error),
            "local storage (PARALLEL_LOCAL_STORAGE) failed: local storage `/scratch/parvm-ana` is not writable: make it writable or set PARALLEL_LOCAL_STORAGE to a writable folder: permission denied"
        );
        assert_eq!(
            one_line(&Outer(not_found())),
            "cannot load the corner file: no such file"
        );
    }

    #[test]
    fn a_report_prints_causes_that_add_something() {
        let report = Report::from(Outer(not_found()));
        assert_eq!(
            format!("{report:?}"),
            "cannot load the corner file\n  caused by: no such file"
        );
        assert_eq!(
            report.to_string(),
            "cannot load the corner file: no such file"
        );
        assert!(report.downcast_ref::<Outer>().is_some());
        assert!(report.downcast_ref::<Error>().is_none());

        let plain = Report::msg("case 7 has no netlist");
        assert_eq!(format!("{plain:?}"), "case 7 has no netlist");
        assert_eq!(plain.error().to_string(), "case 7 has no netlist");
    }

    #[test]
    fn a_failing_main_prints_the_report() {
        fn main_like() -> Result<()> {
            let bad: std::result::Result<(), Error> = Err(Error::Setting {
                setting: "startup_dir",
                reason: "`/abs` must be relative".into(),
            });
            bad?;
            Ok(())
        }
        let report = main_like().unwrap_err();
        assert_eq!(
            format!("{report:?}"),
            "invalid VM setting `startup_dir`: `/abs` must be relative"
        );
    }
}

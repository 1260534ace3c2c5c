//! The task registry and the spawn request builder.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::task_context::TaskContext;
use crate::{Error, HostId};

/// The erased body of a registered task: decode the arguments, run, encode the result.
type Body = dyn Fn(&TaskContext<'_>, &[u8]) -> Result<Vec<u8>, String> + Send + Sync;

/// One registered task.
pub(crate) struct Entry {
    pub(crate) body: Box<Body>,
    pub(crate) args: (TypeId, &'static str),
    pub(crate) returns: (TypeId, &'static str),
}

/// The functions this program can run as tasks, by name.
///
/// The same executable runs on every slot, so the spawner and the workers build the same
/// registry; a task is found by its name, and its arguments and result travel as
/// MessagePack.
///
/// ```
/// use parvm_vm::{Tasks, TaskContext};
///
/// fn square(_ctx: &TaskContext, x: i64) -> Result<i64, String> {
///     Ok(x * x)
/// }
///
/// let tasks = Tasks::new().register("square", square);
/// assert!(tasks.contains("square"));
/// ```
#[derive(Clone, Default)]
pub struct Tasks {
    entries: BTreeMap<String, Arc<Entry>>,
    duplicate: Option<String>,
}

impl Tasks {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Tasks::default()
    }

    /// Registers `task` under `name`.
    ///
    /// The task gets a [`TaskContext`] and its arguments, and returns its result or an error;
    /// an `Err` (shown with `Display`) or a panic reaches the spawner as a failed
    /// [`TaskResult`](crate::Message::TaskResult). Registering a name twice is reported
    /// by [`Runtime::start`](crate::Runtime::start).
    #[must_use]
    pub fn register<A, R, E, F>(mut self, name: &str, task: F) -> Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        E: fmt::Display,
        F: Fn(&TaskContext<'_>, A) -> Result<R, E> + Send + Sync + 'static,
    {
        let task_name = name.to_owned();
        let body = move |ctx: &TaskContext<'_>, bytes: &[u8]| -> Result<Vec<u8>, String> {
            let args: A = rmp_serde::from_slice(bytes).map_err(|e| {
                format!(
                    "cannot decode the arguments of task `{task_name}` as `{}`: {e}",
                    std::any::type_name::<A>()
                )
            })?;
            let value = task(ctx, args).map_err(|e| e.to_string())?;
            rmp_serde::to_vec(&value).map_err(|e| {
                format!(
                    "cannot encode the result of task `{task_name}` (`{}`): {e}",
                    std::any::type_name::<R>()
                )
            })
        };
        let entry = Entry {
            body: Box::new(body),
            args: (TypeId::of::<A>(), std::any::type_name::<A>()),
            returns: (TypeId::of::<R>(), std::any::type_name::<R>()),
        };
        if self
            .entries
            .insert(name.to_owned(), Arc::new(entry))
            .is_some()
        {
            self.duplicate.get_or_insert_with(|| name.to_owned());
        }
        self
    }

    /// Whether a task is registered under `name`.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Entry>> {
        self.entries.get(name)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        match &self.duplicate {
            Some(name) => Err(Error::DuplicateTask { name: name.clone() }),
            None => Ok(()),
        }
    }

    /// Finds `name` and checks the argument type, before anything is sent.
    pub(crate) fn lookup(
        &self,
        name: &str,
        given: (TypeId, &'static str),
    ) -> Result<&Arc<Entry>, Error> {
        let entry = self.get(name).ok_or_else(|| Error::UnknownTask {
            name: name.to_owned(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })?;
        if entry.args.0 != given.0 {
            return Err(Error::WrongArgs {
                name: name.to_owned(),
                expected: entry.args.1,
                given: given.1,
            });
        }
        Ok(entry)
    }
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.keys()).finish()
    }
}

/// What to spawn, how many, where: built with [`Spawn::task`] or [`Spawn::command`].
///
/// ```
/// use parvm_vm::Spawn;
///
/// let hello = Spawn::task("hello", &()).count(2);
/// let listing = Spawn::command("ls").arg("-l").env("LC_ALL", "C").send_back(false);
/// # let _ = (hello, listing);
/// ```
#[derive(Debug, Clone)]
pub struct Spawn {
    pub(crate) job: JobSpec,
    pub(crate) count: usize,
    pub(crate) hosts: Option<Vec<HostId>>,
    pub(crate) send_back: bool,
    pub(crate) returning: Vec<String>,
    pub(crate) results_dir: Option<PathBuf>,
    pub(crate) capture: bool,
    pub(crate) stream_output: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum JobSpec {
    Function {
        name: String,
        args: Result<Vec<u8>, String>,
        args_type: (TypeId, &'static str),
    },
    Command {
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    },
}

impl Spawn {
    /// Runs the task registered under `name` with `args`.
    ///
    /// `A` must be exactly the argument type the task was registered with (a `&str` is not
    /// a `String`); a different type is refused by `spawn` before anything is sent.
    #[must_use]
    pub fn task<A: Serialize + 'static>(name: impl Into<String>, args: &A) -> Spawn {
        Spawn::with(JobSpec::Function {
            name: name.into(),
            args: rmp_serde::to_vec(args).map_err(|e| e.to_string()),
            args_type: (TypeId::of::<A>(), std::any::type_name::<A>()),
        })
    }

    /// Runs the external command `program` in the task folder; its result is a
    /// [`CommandStatus`](crate::CommandStatus).
    #[must_use]
    pub fn command(program: impl Into<String>) -> Spawn {
        Spawn::with(JobSpec::Command {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        })
    }

    /// Whether this runs an external command.
    pub(crate) fn is_command(&self) -> bool {
        matches!(self.job, JobSpec::Command { .. })
    }

    fn with(job: JobSpec) -> Spawn {
        Spawn {
            job,
            count: 1,
            hosts: None,
            send_back: true,
            returning: Vec::new(),
            results_dir: None,
            capture: false,
            stream_output: false,
        }
    }

    /// Adds one argument to a command (ignored for a registered task).
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Spawn {
        if let JobSpec::Command { args, .. } = &mut self.job {
            args.push(arg.into());
        }
        self
    }

    /// Adds arguments to a command (ignored for a registered task).
    #[must_use]
    pub fn args<S: Into<String>>(mut self, more: impl IntoIterator<Item = S>) -> Spawn {
        if let JobSpec::Command { args, .. } = &mut self.job {
            args.extend(more.into_iter().map(Into::into));
        }
        self
    }

    /// Sets an environment variable for a command (ignored for a registered task).
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Spawn {
        if let JobSpec::Command { env, .. } = &mut self.job {
            env.push((key.into(), value.into()));
        }
        self
    }

    /// How many copies to start, at most; default 1. Fewer start when fewer slots are free.
    #[must_use]
    pub fn count(mut self, count: usize) -> Spawn {
        self.count = count;
        self
    }

    /// Starts one copy on every free slot (of the target hosts).
    #[must_use]
    pub fn fill(mut self) -> Spawn {
        self.count = usize::MAX;
        self
    }

    /// Only these hosts; default: any host.
    #[must_use]
    pub fn hosts<H: Into<HostId>>(mut self, hosts: impl IntoIterator<Item = H>) -> Spawn {
        self.hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the task's result comes back as a [`TaskResult`](crate::Message::TaskResult);
    /// default true. The [`TaskExit`](crate::Message::TaskExit) always comes.
    #[must_use]
    pub fn send_back(mut self, send_back: bool) -> Spawn {
        self.send_back = send_back;
        self
    }
    /// Returns the files of the task folder that `pattern` matches to the spawner when the
    /// task ends; repeatable. Default: nothing is returned.
    ///
    /// The pattern is relative to the task folder and follows mirroring's glob rules (`*`,
    /// `?`, `[a-z]`, never across `/`; a name starting with `.` only matches a pattern
    /// starting with `.`). A folder it matches comes back whole. The files are written
    /// under [`results_dir`](Self::results_dir) with their paths in the task folder,
    /// modes and modification times, each under a temporary name renamed into place; a
    /// [`Message::Returned`](crate::Message::Returned) lists them after the task's result
    /// and before its exit.
    ///
    /// [`Vm::spawn`](crate::Vm::spawn) refuses an absolute pattern or one with `..`, a
    /// spawn without a results folder, and a VM without task folders, before anything is
    /// sent. When the task ends, a literal pattern (no `*` or `?`, and no class but one of a single character, as `[*]`) that names nothing,
    /// a symlink, fifo or device among the matches, a file that keeps changing while it is
    /// sent, or a failure to write at the results folder (a full disk) makes the task's
    /// exit [`ExitStatus::Failed`](crate::ExitStatus::Failed) with a reason naming the file.
    #[must_use]
    pub fn returning(mut self, pattern: impl Into<String>) -> Spawn {
        self.returning.push(pattern.into());
        self
    }

    /// The spawner's folder returned files (and spilled captured output) are written
    /// into; created when missing, relative to the current folder at the time of the
    /// spawn. With a [`count`](Self::count) above 1 (or [`fill`](Self::fill)), each task
    /// writes into its own `<dir>/<slot>.<number>/` (for task `3:17`: `<dir>/3.17/`).
    /// Default: none.
    #[must_use]
    pub fn results_dir(mut self, dir: impl Into<PathBuf>) -> Spawn {
        self.results_dir = Some(dir.into());
        self
    }

    /// Whether a command's standard output and error are kept for the spawner instead of
    /// printed; default false; ignored for registered tasks. They arrive as a
    /// [`Message::Captured`](crate::Message::Captured) after the task's result and before
    /// its exit. Up to [`CAPTURE_IN_MEMORY`](crate::CAPTURE_IN_MEMORY) bytes of each stream
    /// are kept in memory; past that the stream spills into `<results_dir>/stdout` (and
    /// `stderr`), or, without a results folder, into a file in the spawner's local storage
    /// that is removed when the [`Captured`](crate::Captured) is dropped.
    #[must_use]
    pub fn capture(mut self, on: bool) -> Spawn {
        self.capture = on;
        self
    }

    /// Whether a command's standard output and error come to the VM while it runs, as
    /// [`Message::Output`](crate::Message::Output) messages of whole lines, instead of
    /// printed by the spawner; default false; ignored for registered tasks. With
    /// [`capture`](Self::capture) as well, the output is both streamed and captured.
    ///
    /// The worker sends at most its output window (1 MiB) ahead of what the program
    /// received, so a program that receives slowly holds the command back (its writes
    /// block) instead of filling the spawner's memory.
    #[must_use]
    pub fn stream_output(mut self, on: bool) -> Spawn {
        self.stream_output = on;
        self
    }
}

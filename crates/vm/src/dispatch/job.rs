//! [`Job`]: one evaluation of a dispatch, a registered task with its arguments or an
//! external command, built like a [`Spawn`] of one task.
//!
//! It owns what a job is and its per-job settings; it must not know how jobs are placed
//! or how their results are gathered.

use std::time::Duration;

use serde::Serialize;

use crate::{HostId, Spawn};

/// One job of a [`Vm::dispatch`](crate::Vm::dispatch): a registered task with its
/// arguments, or an external command.
///
/// ```
/// use std::time::Duration;
/// use parvm_vm::Job;
///
/// let square = Job::task("square", &7i64);
/// let solve = Job::command("ngspice")
///     .arg("-b")
///     .args(["deck.cir"])
///     .env("LC_ALL", "C")
///     .timeout(Duration::from_secs(60));
/// # let _ = (square, solve);
/// ```
#[derive(Debug, Clone)]
pub struct Job {
    pub(crate) spawn: Spawn,
    pub(crate) timeout: Option<Duration>,
}

impl Job {
    /// Runs the task registered under `name` with `args`; its outcome is a
    /// [`JobOutcome::Value`](crate::JobOutcome::Value).
    ///
    /// `A` must be exactly the argument type the task was registered with; a different
    /// type makes the job [`Failed`](crate::JobOutcome::Failed) without sending anything.
    #[must_use]
    pub fn task<A: Serialize + 'static>(name: impl Into<String>, args: &A) -> Job {
        Job::from_spawn(Spawn::task(name, args))
    }

    /// Runs the external command `program` in the task folder; its outcome is a
    /// [`JobOutcome::Command`](crate::JobOutcome::Command) when it exits with code 0, and
    /// [`JobOutcome::Failed`](crate::JobOutcome::Failed) (with its status) otherwise.
    #[must_use]
    pub fn command(program: impl Into<String>) -> Job {
        Job::from_spawn(Spawn::command(program))
    }

    fn from_spawn(spawn: Spawn) -> Job {
        Job {
            spawn,
            timeout: None,
        }
    }

    /// Adds one argument to a command (ignored for a registered task).
    #[must_use]
    pub fn arg(self, arg: impl Into<String>) -> Job {
        self.map(|s| s.arg(arg))
    }

    /// Adds arguments to a command (ignored for a registered task).
    #[must_use]
    pub fn args<S: Into<String>>(self, more: impl IntoIterator<Item = S>) -> Job {
        self.map(|s| s.args(more))
    }

    /// Sets an environment variable for a command (ignored for a registered task).
    #[must_use]
    pub fn env(self, key: impl Into<String>, value: impl Into<String>) -> Job {
        self.map(|s| s.env(key, value))
    }

    /// Runs the job on these hosts only; default: any host.
    #[must_use]
    pub fn hosts<H: Into<HostId>>(self, hosts: impl IntoIterator<Item = H>) -> Job {
        self.map(|s| s.hosts(hosts))
    }

    /// Files of the task folder matching `pattern` come back when the job ends, into the
    /// job's folder `<results>/<index>/` of [`Dispatch::results`](crate::Dispatch::results)
    /// (required); repeatable. As [`Spawn::returning`]: mirroring's glob rules, relative to
    /// the task folder; a pattern that leaves it makes the job
    /// [`Failed`](crate::JobOutcome::Failed) before anything is sent, and a literal
    /// pattern that matches nothing fails the job.
    #[must_use]
    pub fn returning(self, pattern: impl Into<String>) -> Job {
        self.map(|s| s.returning(pattern))
    }

    /// Whether a command's standard output and error are kept
    /// ([`JobResult::stdout`](crate::JobResult::stdout), `stderr`) instead of printed;
    /// default false; ignored for a registered task. As [`Spawn::capture`]: bounded in
    /// memory, past [`CAPTURE_IN_MEMORY`](crate::CAPTURE_IN_MEMORY) written to the job's
    /// results folder (or a temporary file in local storage without one).
    #[must_use]
    pub fn capture(self, on: bool) -> Job {
        self.map(|s| s.capture(on))
    }

    /// The job's time limit, counted from when it starts on its slot; overrides
    /// [`Dispatch::timeout`](crate::Dispatch::timeout). Default: the dispatch's limit.
    #[must_use]
    pub fn timeout(mut self, limit: Duration) -> Job {
        self.timeout = Some(limit);
        self
    }

    fn map(mut self, f: impl FnOnce(Spawn) -> Spawn) -> Job {
        self.spawn = f(self.spawn);
        self
    }
}

impl From<Spawn> for Job {
    /// A job from a spawn request: one task (its count is ignored), its result sent back.
    fn from(spawn: Spawn) -> Job {
        Job::from_spawn(spawn.count(1).send_back(true))
    }
}

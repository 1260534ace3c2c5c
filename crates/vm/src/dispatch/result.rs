//! What a dispatch reports for each job: [`JobResult`] and its [`JobOutcome`].
//!
//! Plain public data; it must not know how jobs are scheduled.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::message::TaskFailure;
use crate::{Captured, CommandStatus, HostId, TaskId, Value};

/// How one job of a dispatch ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum JobOutcome {
    /// A registered task returned this value; decode it with [`Value::decode`].
    Value(Value),
    /// A command ran and exited with code 0.
    Command(CommandStatus),
    /// The job failed by itself: the task returned an error or panicked, the command
    /// exited with another code, was killed or could not start, a file it was to return
    /// was missing in its task folder (or could not be read there, or led out of it), or
    /// the job was refused before it was sent (unknown task, wrong argument type); or what
    /// it returned could not be kept (`after_end`). Counted against
    /// [`Dispatch::retries`](crate::Dispatch::retries).
    Failed {
        /// Why, in words.
        reason: String,
        /// The command's status, when a command ran to its end.
        status: Option<CommandStatus>,
        /// What failed after the command ended, besides its own status, when something
        /// did: its returned files or output could not be kept on the spawner (also in
        /// `reason`, after the command's status).
        after_end: Option<String>,
    },
    /// The job ran past its time limit and was stopped.
    TimedOut {
        /// The limit it ran past.
        limit: Duration,
    },
    /// The job's worker was lost while it ran, more times than
    /// [`Dispatch::lost_retries`](crate::Dispatch::lost_retries) allows.
    Lost {
        /// Why the last worker was lost.
        reason: String,
    },
    /// The job was not run: the dispatch halted after a failure
    /// ([`Dispatch::halt_on_error`](crate::Dispatch::halt_on_error)); or it was stopped
    /// by [`Vm::stop`](crate::Vm::stop) (the program's own stop counts neither as a
    /// failure nor as a lost worker).
    NotRun,
}

impl JobOutcome {
    /// Whether the job succeeded: a value, or a command that exited with code 0.
    #[must_use]
    pub fn is_success(&self) -> bool {
        matches!(self, JobOutcome::Value(_) | JobOutcome::Command(_))
    }
}

impl JobOutcome {
    /// A job that failed for `reason`, without a command's status.
    pub(crate) fn failed(reason: String) -> JobOutcome {
        JobOutcome::Failed {
            reason,
            status: None,
            after_end: None,
        }
    }

    /// What a job's end means when its worker was not lost and no limit stopped it: how
    /// it ended (`end`), and `value`, its result.
    pub(crate) fn of_end(
        end: End,
        value: Option<Result<Value, TaskFailure>>,
        command: bool,
    ) -> JobOutcome {
        let End {
            failed,
            reason,
            returns_failed_on_worker,
        } = end;
        // What failed after the command: not what its worker found missing in the task
        // folder, which is the task's own failure.
        let after_end =
            |reason: &String| (failed && !returns_failed_on_worker).then(|| reason.clone());
        match value {
            Some(Ok(value)) if !failed && !command => JobOutcome::Value(value),
            // A command's status is kept even when its end failed for another reason
            // (returning its files), so its exit code is never lost; its own failure
            // comes first in the reason.
            Some(Ok(value)) if command => match value.decode::<CommandStatus>() {
                Ok(status) if status.success() && !failed => JobOutcome::Command(status),
                Ok(status) if status.success() => JobOutcome::Failed {
                    after_end: after_end(&reason),
                    reason,
                    status: Some(status),
                },
                Ok(status) => JobOutcome::Failed {
                    after_end: after_end(&reason),
                    reason: if failed {
                        format!("the command ended with {status}; {reason}")
                    } else {
                        format!("the command ended with {status}")
                    },
                    status: Some(status),
                },
                Err(e) => JobOutcome::failed(e.to_string()),
            },
            Some(Err(failure)) => JobOutcome::failed(failure.message),
            _ if failed => JobOutcome::failed(reason),
            _ => JobOutcome::failed("the task ended without sending its result back".to_owned()),
        }
    }
}

/// How a job's task ended, as its exit said: whether it `failed` and why (`reason`, empty
/// when it did not), and whether that failure was its worker finding the files it was to
/// return missing (or unreadable, or outside its folder) rather than the spawner failing
/// to keep them.
pub(crate) struct End {
    pub failed: bool,
    pub reason: String,
    pub returns_failed_on_worker: bool,
}

impl fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobOutcome::Value(value) => write!(f, "returned {value}"),
            JobOutcome::Command(status) => write!(f, "command ended ({status})"),
            JobOutcome::Failed { reason, .. } => write!(f, "failed: {reason}"),
            JobOutcome::TimedOut { limit } => {
                write!(f, "timed out after {:?}", to_the_millisecond(*limit))
            }
            JobOutcome::Lost { reason } => write!(f, "lost: {reason}"),
            JobOutcome::NotRun => f.write_str("not run"),
        }
    }
}

/// `limit` to the millisecond from 1 ms up: a limit worked out from the median is
/// `208.039096ms`, whose digits past the millisecond say nothing to a reader.
fn to_the_millisecond(limit: Duration) -> Duration {
    if limit < Duration::from_millis(1) {
        return limit;
    }
    let millis = (limit.as_nanos() + 500_000) / 1_000_000;
    u64::try_from(millis).map_or(limit, Duration::from_millis)
}

/// The result of one job of a dispatch.
#[derive(Debug)]
#[non_exhaustive]
pub struct JobResult {
    /// The job's position in the dispatched sequence, from 0.
    pub index: usize,
    /// How it ended.
    pub outcome: JobOutcome,
    /// The host of its last attempt; `None` when it never ran.
    pub host: Option<HostId>,
    /// The task of its last attempt (slot and task number); `None` when it never ran.
    pub task: Option<TaskId>,
    /// How many times it ran (lost and failed attempts included; a request that waited
    /// at a worker lost before it started is not counted).
    pub attempts: u32,
    /// How long its last attempt ran, from its start on the slot to its end.
    pub elapsed: Duration,
    /// Bytes copied into its task folder for its last attempt by mirroring: 0 when
    /// nothing was, or when the folder, handed on from the job before on that worker,
    /// already held the inputs as they are at the source.
    pub mirrored: u64,
    /// The files its last attempt returned ([`Job::returning`](crate::Job::returning)),
    /// relative to its results folder `<results>/<index>/`
    /// ([`Dispatch::results`](crate::Dispatch::results)); when returning failed (the
    /// outcome says why), those written in full before the failure.
    pub returned: Vec<PathBuf>,
    /// The bytes of the files in [`returned`](Self::returned), together.
    pub returned_bytes: u64,
    /// The standard output of a command job with [`Job::capture`](crate::Job::capture).
    pub stdout: Option<Captured>,
    /// The standard error of a command job with [`Job::capture`](crate::Job::capture).
    pub stderr: Option<Captured>,
}

impl JobResult {
    /// A result for job `index` that never ran (or is reported without its run).
    pub(crate) fn not_run(index: usize, attempts: u32) -> JobResult {
        JobResult {
            index,
            outcome: JobOutcome::NotRun,
            host: None,
            task: None,
            attempts,
            elapsed: Duration::ZERO,
            mirrored: 0,
            returned: Vec::new(),
            returned_bytes: 0,
            stdout: None,
            stderr: None,
        }
    }
}

/// One line for a progress report: `job 3 on alpha (1:4): returned 0.5 in 12ms`.
impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.index)?;
        if let (Some(host), Some(task)) = (&self.host, self.task) {
            write!(f, " on {host} ({task})")?;
        }
        write!(f, ": {} in {:?}", self.outcome, self.elapsed)
    }
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use super::*;
    use crate::{Payload, TaskId};

    #[test]
    fn a_time_limit_is_shown_to_the_millisecond() {
        for (limit, shown) in [
            (Duration::from_nanos(208_039_096), "timed out after 208ms"),
            (Duration::from_nanos(1_999_600_000), "timed out after 2s"),
            (Duration::from_secs(30), "timed out after 30s"),
            (Duration::from_micros(400), "timed out after 400µs"),
        ] {
            assert_eq!(JobOutcome::TimedOut { limit }.to_string(), shown);
        }
    }

    fn exited(code: i32) -> Value {
        let status = CommandStatus {
            code: Some(code),
            signal: None,
        };
        Value {
            task: TaskId { slot: 1, number: 1 },
            bytes: Payload::from_vec(rmp_serde::to_vec(&status).unwrap()),
            returns: Some((
                TypeId::of::<CommandStatus>(),
                std::any::type_name::<CommandStatus>(),
            )),
        }
    }

    /// The reason, status and `after_end` of a `Failed` outcome.
    fn failed_parts(outcome: JobOutcome) -> (String, Option<CommandStatus>, Option<String>) {
        let JobOutcome::Failed {
            reason,
            status,
            after_end,
        } = outcome
        else {
            panic!("{outcome:?}");
        };
        (reason, status, after_end)
    }

    /// The end of a task that failed for `reason`, on its worker or not.
    fn failed_end(reason: &str, returns_failed_on_worker: bool) -> End {
        End {
            failed: true,
            reason: reason.to_owned(),
            returns_failed_on_worker,
        }
    }

    fn ended_well() -> End {
        End {
            failed: false,
            reason: String::new(),
            returns_failed_on_worker: false,
        }
    }

    #[test]
    fn a_command_keeps_its_exit_code_when_returning_its_files_fails_too() {
        let not_kept = "cannot write returned file `r.txt`: no space left on device";
        let outcome = JobOutcome::of_end(failed_end(not_kept, false), Some(Ok(exited(1))), true);
        let (reason, status, after_end) = failed_parts(outcome);
        assert_eq!(status.and_then(|s| s.code), Some(1));
        assert!(reason.starts_with("the command ended with"), "{reason}");
        assert!(reason.ends_with(not_kept), "{reason}");
        assert_eq!(after_end.as_deref(), Some(not_kept));
        // A command that succeeded but whose files could not be kept: failed, code 0.
        let outcome = JobOutcome::of_end(failed_end(not_kept, false), Some(Ok(exited(0))), true);
        let (reason, status, after_end) = failed_parts(outcome);
        assert_eq!(status.and_then(|s| s.code), Some(0));
        assert_eq!(reason, not_kept);
        assert_eq!(after_end.as_deref(), Some(not_kept));
        // A command that failed by itself: nothing besides.
        let outcome = JobOutcome::of_end(ended_well(), Some(Ok(exited(2))), true);
        assert!(
            matches!(
                &outcome,
                JobOutcome::Failed {
                    after_end: None,
                    status: Some(_),
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(matches!(
            JobOutcome::of_end(ended_well(), Some(Ok(exited(0))), true),
            JobOutcome::Command(_)
        ));
    }

    #[test]
    fn files_missing_in_the_task_folder_fail_the_task_itself() {
        let missing = "return pattern `r.txt` names no file in the task folder `/l/1_vm0`";
        for code in [0, 3] {
            let outcome =
                JobOutcome::of_end(failed_end(missing, true), Some(Ok(exited(code))), true);
            let (reason, status, after_end) = failed_parts(outcome);
            assert_eq!(status.and_then(|s| s.code), Some(code));
            assert!(reason.ends_with(missing), "{reason}");
            // Nothing was lost on the spawner: what came back is whole.
            assert_eq!(after_end, None, "exit code {code}");
        }
    }
}

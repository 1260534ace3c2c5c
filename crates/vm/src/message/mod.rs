//! What a VM receives: [`Message`] (user messages, task results and exits, host changes)
//! and its one-line `Display`. The parts a message carries live beside it: `payload`
//! (the bytes of a user message), `value` (a task's returned value and how it is shown),
//! `status` (how a task or command ended).
//!
//! Must not know frames, slots or transports: route.rs makes messages from frames.

mod payload;
mod status;
mod value;

use std::fmt;
use std::path::PathBuf;

pub use self::payload::Payload;
pub use self::status::{CommandStatus, ExitStatus, TaskFailure};
pub use self::value::Value;
use crate::{Captured, HostId, OutputStream, TaskId};

/// A message received by [`Vm::recv`](crate::Vm::recv) or [`TaskContext::recv`](crate::TaskContext::recv).
#[derive(Debug)]
#[non_exhaustive]
pub enum Message {
    /// A message a task sent with `send` or `send_bytes`.
    User {
        /// The sender.
        from: TaskId,
        /// What it sent.
        data: Payload,
    },
    /// The result of a task spawned with send-back on (the default).
    TaskResult {
        /// The task.
        task: TaskId,
        /// Its value, or why it failed (panic text, error text, command that could not start).
        outcome: Result<Value, TaskFailure>,
    },
    /// A task ended; its slot is free again once this message is received.
    TaskExit {
        /// The task.
        task: TaskId,
        /// Whether it completed, or failed and why.
        status: ExitStatus,
    },
    /// Hosts joined the virtual machine.
    HostAdd {
        /// The hosts that joined.
        hosts: Vec<HostId>,
    },
    /// A host has no workers left (they exited, were killed, or lost their connection).
    HostDelete {
        /// The host.
        host: HostId,
    },
    /// The files a task returned ([`Spawn::returning`](crate::Spawn::returning)), written
    /// under the spawn's results folder; after the task's result, before its exit. When
    /// returning failed, it lists the files written in full before the failure, and the
    /// exit says why.
    Returned {
        /// The task.
        task: TaskId,
        /// Each file's path relative to the task's results folder (as in its task folder).
        files: Vec<PathBuf>,
        /// Their bytes, together.
        bytes: u64,
    },
    /// A command's captured output ([`Spawn::capture`](crate::Spawn::capture)); after the
    /// task's result, before its exit.
    Captured {
        /// The task.
        task: TaskId,
        /// What it wrote to its standard output.
        stdout: Captured,
        /// What it wrote to its standard error.
        stderr: Captured,
    },
    /// Output of a command with [`Spawn::stream_output`](crate::Spawn::stream_output), while
    /// it runs: whole lines (a line longer than half the output window, 512 KiB, comes in
    /// pieces; a last line without a newline comes when the task ends). All of a task's
    /// output comes before its exit. Its worker sends no more than its output window
    /// (1 MiB) ahead of the messages received, so a program that receives slowly holds
    /// the command back instead of filling memory.
    Output {
        /// The task.
        task: TaskId,
        /// Which stream it wrote to.
        stream: OutputStream,
        /// The bytes, ending with a newline unless the line was cut (see above).
        data: Vec<u8>,
    },
}

/// One line for a log or a progress report: `task 1:3 returned 0.5`,
/// `task 1:3 failed: <why>`, `task 1:3 exited (completed)`, ...
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::User { from, data } => {
                write!(f, "message of {} B from task {from}", data.bytes().len())
            }
            Message::TaskResult {
                task,
                outcome: Ok(value),
            } => write!(f, "task {task} returned {value}"),
            Message::TaskResult {
                task,
                outcome: Err(failure),
            } => write!(f, "task {task} failed: {failure}"),
            Message::TaskExit { task, status } => write!(f, "task {task} exited ({status})"),
            Message::HostAdd { hosts } => {
                f.write_str("hosts joined:")?;
                for host in hosts {
                    write!(f, " {host}")?;
                }
                Ok(())
            }
            Message::HostDelete { host } => write!(f, "host {host} has no workers left"),
            Message::Returned { task, files, bytes } => {
                write!(f, "task {task} returned {} file(s), {bytes} B", files.len())
            }
            Message::Captured {
                task,
                stdout,
                stderr,
            } => write!(
                f,
                "task {task} wrote {} B to stdout and {} B to stderr",
                stdout.len(),
                stderr.len()
            ),
            Message::Output { task, stream, data } => {
                let name = match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                };
                write!(f, "task {task} wrote {} B to {name}", data.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use serde::Serialize;

    use super::*;

    fn value<T: Serialize + 'static>(v: &T) -> Value {
        Value {
            task: TaskId { slot: 1, number: 7 },
            bytes: Payload::from_vec(rmp_serde::to_vec(v).unwrap()),
            returns: Some((TypeId::of::<T>(), std::any::type_name::<T>())),
        }
    }

    #[test]
    fn messages_read_as_one_line() {
        let task = TaskId { slot: 1, number: 3 };
        let rows = [
            (
                Message::TaskResult {
                    task,
                    outcome: Ok(value(&0.25f64)),
                },
                "task 1:3 returned 0.25",
            ),
            (
                Message::TaskResult {
                    task,
                    outcome: Err(TaskFailure {
                        message: "no such file".into(),
                    }),
                },
                "task 1:3 failed: no such file",
            ),
            (
                Message::TaskExit {
                    task,
                    status: ExitStatus::Completed,
                },
                "task 1:3 exited (completed)",
            ),
            (
                Message::User {
                    from: task,
                    data: Payload::from_vec(vec![1, 2]),
                },
                "message of 2 B from task 1:3",
            ),
            (
                Message::HostAdd {
                    hosts: vec!["a".into(), "b".into()],
                },
                "hosts joined: a b",
            ),
            (
                Message::HostDelete { host: "a".into() },
                "host a has no workers left",
            ),
        ];
        for (message, text) in rows {
            assert_eq!(message.to_string(), text);
        }
    }
}

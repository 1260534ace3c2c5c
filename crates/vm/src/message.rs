//! What a VM receives: user messages, task results and exits, host changes.

use std::any::TypeId;
use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, HostId, TaskId};

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
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// The task returned `Ok`, or its command ran.
    Completed,
    /// The task failed: it returned an error, panicked, or its worker died under it.
    Failed {
        /// Why, in words.
        reason: String,
    },
}

impl ExitStatus {
    /// Whether the task completed.
    #[must_use]
    pub fn is_completed(&self) -> bool {
        matches!(self, ExitStatus::Completed)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Completed => f.write_str("completed"),
            ExitStatus::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Why a task produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailure {
    /// The panic message, the error's text, or why the task could not run.
    pub message: String,
}

/// The bytes of a user message.
///
/// A received message keeps the buffer its frame arrived in and the range of the message
/// within it, so a big message is not copied again on its way to the program.
#[derive(Clone)]
pub struct Payload {
    buf: Vec<u8>,
    range: Range<usize>,
}

impl Payload {
    /// A payload of all of `buf`.
    pub(crate) fn from_vec(buf: Vec<u8>) -> Payload {
        let range = 0..buf.len();
        Payload { buf, range }
    }

    /// A payload in `frame`, where [`protocol::locate`](crate::protocol::locate) found it
    /// (or the bytes it had to copy).
    pub(crate) fn from_frame(frame: Vec<u8>, located: Result<Range<usize>, Vec<u8>>) -> Payload {
        match located {
            Ok(range) => Payload { buf: frame, range },
            Err(bytes) => Payload::from_vec(bytes),
        }
    }

    /// The raw bytes (as sent with `send_bytes`, or MessagePack as sent with `send`).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }

    /// Takes the raw bytes (moving them to the front of the buffer they arrived in, when
    /// they do not start there).
    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        let Payload { mut buf, range } = self;
        buf.truncate(range.end);
        buf.drain(..range.start);
        buf
    }

    /// Decodes a value sent with `send`.
    ///
    /// # Errors
    /// [`Error::Decode`] when the bytes are not a MessagePack `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        rmp_serde::from_slice(self.bytes()).map_err(|source| Error::Decode {
            what: format!("a user message of {} bytes", self.range.len()),
            wanted: std::any::type_name::<T>(),
            source,
        })
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.range.len())
    }
}

/// The value a task returned, still encoded; [`Value::decode`] gives it its type back.
#[derive(Clone)]
pub struct Value {
    pub(crate) task: TaskId,
    pub(crate) bytes: Payload,
    pub(crate) returns: Option<(TypeId, &'static str)>,
}

impl Value {
    /// Decodes the value as the type the task returns.
    ///
    /// # Errors
    /// [`Error::WrongResultType`] when `T` is not the registered result type,
    /// [`Error::Decode`] when the bytes do not decode.
    pub fn decode<T: DeserializeOwned + 'static>(&self) -> Result<T, Error> {
        if let Some((id, name)) = self.returns
            && id != TypeId::of::<T>()
        {
            return Err(Error::WrongResultType {
                task: self.task,
                returns: name,
                wanted: std::any::type_name::<T>(),
            });
        }
        rmp_serde::from_slice(self.bytes.bytes()).map_err(|source| Error::Decode {
            what: format!("the result of task {}", self.task),
            wanted: std::any::type_name::<T>(),
            source,
        })
    }

    /// The encoded bytes (MessagePack).
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        self.bytes.bytes()
    }

    /// The name of the type the task returns, when known.
    #[must_use]
    pub fn type_name(&self) -> Option<&'static str> {
        self.returns.map(|(_, name)| name)
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Value({} bytes of {})",
            self.bytes.bytes().len(),
            self.type_name().unwrap_or("?")
        )
    }
}

/// The result of an external command spawned with [`Spawn::command`](crate::Spawn::command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandStatus {
    /// The exit code, when the command exited by itself.
    pub code: Option<i32>,
    /// The signal that ended the command, when it was killed.
    pub signal: Option<i32>,
}

impl CommandStatus {
    /// Whether the command exited with code 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => f.write_str("unknown status"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_in_a_frame() {
        let frame = b"headerHELLOtrailer".to_vec();
        let payload = Payload::from_frame(frame.clone(), Ok(6..11));
        assert_eq!(payload.bytes(), b"HELLO");
        assert_eq!(payload, Payload::from_vec(b"HELLO".to_vec()));
        assert_eq!(format!("{payload:?}"), "Payload(5 bytes)");
        assert_eq!(payload.clone().into_bytes(), b"HELLO");
        let copied = Payload::from_frame(frame, Err(b"copy".to_vec()));
        assert_eq!(copied.into_bytes(), b"copy");
        let empty = Payload::from_frame(b"abc".to_vec(), Ok(3..3));
        assert!(empty.bytes().is_empty());
        assert!(empty.into_bytes().is_empty());
    }

    #[test]
    fn payload_decodes_its_range_only() {
        let mut frame = vec![0xc1u8; 4];
        let start = frame.len();
        frame.extend(rmp_serde::to_vec(&(7u32, "x")).unwrap());
        let end = frame.len();
        frame.push(0xc1);
        let payload = Payload::from_frame(frame, Ok(start..end));
        assert_eq!(
            payload.decode::<(u32, String)>().unwrap(),
            (7, "x".to_owned())
        );
    }
}

//! How a task ended ([`ExitStatus`], [`TaskFailure`]) and how a command ended
//! ([`CommandStatus`], the value a command task returns).
//!
//! Must not know messages, values or how a command is run.

use std::fmt;

use serde::{Deserialize, Serialize};

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

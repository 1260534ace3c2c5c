//! Identifiers of tasks and hosts.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One task in the virtual machine: the slot it runs in and its task number.
///
/// Task numbers are unique within one spawner process (all its VMs share one counter), so a
/// `TaskId` never names two tasks, even when they ran on the same slot. The spawner itself
/// is task `0:0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// The slot (transport rank) the task runs in; 0 is the spawner.
    pub slot: u32,
    /// The task number, unique per spawner process; 0 is the spawner's own task.
    pub number: u64,
}

impl TaskId {
    /// The spawner's own task id, `0:0`.
    pub const SPAWNER: TaskId = TaskId { slot: 0, number: 0 };
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.slot, self.number)
    }
}

/// One host of the virtual machine, by name (`PARVM_HOSTNAME` or its real hostname).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostId(pub String);

impl HostId {
    /// The host's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for HostId {
    fn from(name: &str) -> Self {
        HostId(name.to_owned())
    }
}

impl From<String> for HostId {
    fn from(name: String) -> Self {
        HostId(name)
    }
}

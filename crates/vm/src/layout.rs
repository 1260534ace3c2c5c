//! What the runtime reports about itself: the [`Layout`] of hosts, slots and running
//! tasks, and the [`ClearReport`] of clearing local storage. Plain data with `Display`.
//!
//! It must not know the slot table or the transport; the runtime fills these in.

use std::fmt;

use crate::{HostId, TaskId};

/// What [`Runtime::clear_local_storage`](crate::Runtime::clear_local_storage) did on
/// each host.
#[derive(Debug, Clone)]
pub struct ClearReport {
    /// Per host: how many folders were removed, or why clearing failed.
    pub hosts: Vec<(HostId, ClearOutcome)>,
}

impl fmt::Display for ClearReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (host, outcome) in &self.hosts {
            writeln!(f, "{host}: {outcome}")?;
        }
        Ok(())
    }
}

/// What clearing local storage did on one host of a [`ClearReport`]; prints as
/// `removed 3 folder(s)` or `failed: <reason>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClearOutcome {
    /// Clearing ran; this many stale or unused task folders were removed.
    Removed {
        /// How many folders.
        folders: u64,
    },
    /// The host could not clear, or did not answer in time.
    Failed {
        /// Why, in words for the user.
        reason: String,
    },
}

impl ClearOutcome {
    /// Whether clearing ran on the host.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        matches!(self, ClearOutcome::Removed { .. })
    }

    /// How many folders were removed, when clearing ran.
    #[must_use]
    pub fn removed(&self) -> Option<u64> {
        match self {
            ClearOutcome::Removed { folders } => Some(*folders),
            ClearOutcome::Failed { .. } => None,
        }
    }
}

impl From<Result<u64, String>> for ClearOutcome {
    fn from(outcome: Result<u64, String>) -> ClearOutcome {
        match outcome {
            Ok(folders) => ClearOutcome::Removed { folders },
            Err(reason) => ClearOutcome::Failed { reason },
        }
    }
}

impl fmt::Display for ClearOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClearOutcome::Removed { folders } => write!(f, "removed {folders} folder(s)"),
            ClearOutcome::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Hosts, slots and running tasks, from [`Runtime::describe`](crate::Runtime::describe).
#[derive(Debug, Clone)]
pub struct Layout {
    /// The transport backend.
    pub backend: &'static str,
    /// The hosts, the spawner's first.
    pub hosts: Vec<LayoutHost>,
}

/// One host in a [`Layout`].
#[derive(Debug, Clone)]
pub struct LayoutHost {
    /// The host.
    pub host: HostId,
    /// Whether the spawner runs on it.
    pub spawner: bool,
    /// Its worker slots.
    pub slots: Vec<LayoutSlot>,
}

/// One worker slot in a [`Layout`].
#[derive(Debug, Clone)]
pub struct LayoutSlot {
    /// The slot number.
    pub slot: u32,
    /// The task in it, if any.
    pub task: Option<LayoutTask>,
}

/// The task running in a [`LayoutSlot`]; prints as ``task 1:4 `name` (vm 0)``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutTask {
    /// The task's id.
    pub id: TaskId,
    /// The registered task's name, or the program of a command.
    pub label: String,
    /// The index of the VM that spawned it.
    pub vm: u32,
}

impl fmt::Display for LayoutTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {} `{}` (vm {})", self.id, self.label, self.vm)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "transport: {}", self.backend)?;
        for host in &self.hosts {
            let free: Vec<String> = host
                .slots
                .iter()
                .filter(|s| s.task.is_none())
                .map(|s| s.slot.to_string())
                .collect();
            writeln!(
                f,
                "host {}{}: {} worker slot(s), free: [{}]",
                host.host,
                if host.spawner {
                    " (spawner, slot 0)"
                } else {
                    ""
                },
                host.slots.len(),
                free.join(", ")
            )?;
            for slot in &host.slots {
                if let Some(task) = &slot.task {
                    writeln!(f, "  slot {:>3}: {task}", slot.slot)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_print_as_before() {
        let report = ClearReport {
            hosts: vec![
                (HostId("a".into()), Ok(3).into()),
                (HostId("b".into()), Err("no answer".to_owned()).into()),
            ],
        };
        assert_eq!(
            report.to_string(),
            "a: removed 3 folder(s)\nb: failed: no answer\n"
        );
        assert_eq!(report.hosts[0].1.removed(), Some(3));
        assert!(!report.hosts[1].1.is_ok());
        let layout = Layout {
            backend: "memory",
            hosts: vec![LayoutHost {
                host: HostId("a".into()),
                spawner: true,
                slots: vec![
                    LayoutSlot {
                        slot: 1,
                        task: Some(LayoutTask {
                            id: TaskId { slot: 1, number: 4 },
                            label: "sim".into(),
                            vm: 0,
                        }),
                    },
                    LayoutSlot {
                        slot: 2,
                        task: None,
                    },
                ],
            }],
        };
        assert_eq!(
            layout.to_string(),
            "transport: memory\nhost a (spawner, slot 0): 2 worker slot(s), free: [2]\n  slot   1: task 1:4 `sim` (vm 0)\n"
        );
    }
}

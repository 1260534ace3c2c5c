//! What the runtime reports about itself: the [`Layout`] of hosts, slots and running
//! tasks, and the [`ClearReport`] of clearing local storage. Plain data with `Display`.
//!
//! It must not know the slot table or the transport; the runtime fills these in.

use std::fmt;

use crate::{HostId, TaskId};

/// What [`Runtime::clear_local_storage`] did on each host.
#[derive(Debug, Clone)]
pub struct ClearReport {
    /// Per host: how many folders were removed, or why clearing failed.
    pub hosts: Vec<(HostId, Result<u64, String>)>,
}

impl fmt::Display for ClearReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (host, outcome) in &self.hosts {
            match outcome {
                Ok(removed) => writeln!(f, "{host}: removed {removed} folder(s)")?,
                Err(reason) => writeln!(f, "{host}: failed: {reason}")?,
            }
        }
        Ok(())
    }
}

/// Hosts, slots and running tasks, from [`Runtime::describe`].
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
    /// The task in it: id, task name or program, VM index.
    pub task: Option<(TaskId, String, u32)>,
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
                if let Some((task, label, vm)) = &slot.task {
                    writeln!(
                        f,
                        "  slot {:>3}: task {task} `{label}` (vm {vm})",
                        slot.slot
                    )?;
                }
            }
        }
        Ok(())
    }
}

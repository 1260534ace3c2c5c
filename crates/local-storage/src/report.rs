//! What listing, sweeping and clearing local storage report: [`FolderState`],
//! [`FolderInfo`], [`Failure`], [`SweepReport`], and [`human_size`]. Plain data with serde
//! derives.
//!
//! It must not know how folders are classified or removed (that is [`crate::scan`]).

use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use crate::OwnerMarker;

/// What a folder in the per-user folder is, as far as this process can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FolderState {
    /// Its lock is held: a worker is using it. Where the file system cannot lock, a
    /// folder whose owner process is alive counts as in use.
    InUse,
    /// Its owner process is alive but does not hold the lock (e.g. a kept persistent
    /// folder of a storage that was closed).
    Idle,
    /// Its owner is gone (another boot, a dead process, a reused pid) and the lock is free.
    Stale,
    /// Owned by another user: never removed.
    Foreign,
    /// Made on another host sharing this local root, whose processes cannot be checked.
    OtherHost,
    /// No readable owner marker, or not a folder. Swept only when its lock is free and
    /// it is older than the grace period, since it may be a folder being made right now.
    Unknown,
    /// Left over from an interrupted removal (`.parvm-trash-*`) or creation
    /// (`.parvm-new-*`) whose process is gone: the pid and start time in its name name no
    /// running process. Always removable.
    Trash,
}

/// One entry of the per-user folder, as [`LocalStorage::list`](crate::LocalStorage::list) sees it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FolderInfo {
    /// Its name (lossily converted to UTF-8 for display).
    pub name: String,
    /// Its path.
    #[serde(serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Its owner marker, when readable.
    pub owner: Option<OwnerMarker>,
    /// What it is.
    pub state: FolderState,
    /// Why it is in that state, for people.
    pub detail: String,
    /// The uid owning it.
    pub uid: u32,
    /// Seconds since it last changed.
    pub age_secs: u64,
    /// Bytes in its regular files; symlinks are not followed.
    pub size: u64,
    /// `size` for people, e.g. `1.5 MiB`.
    pub size_human: String,
}

/// A folder that could not be removed, and why.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Failure {
    /// The folder.
    pub folder: FolderInfo,
    /// The error and its causes, as text (`error: cause: cause`).
    pub error: String,
}

/// What [`LocalStorage::sweep`](crate::LocalStorage::sweep) or [`LocalStorage::clear`](crate::LocalStorage::clear) did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct SweepReport {
    /// Folders removed.
    pub removed: Vec<FolderInfo>,
    /// Folders left in place (see their state).
    pub kept: Vec<FolderInfo>,
    /// Folders that could not be removed.
    pub failed: Vec<Failure>,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// `bytes_freed` for people.
    pub bytes_freed_human: String,
}

/// Formats a byte count with binary units: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn lossy_path<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&path.to_string_lossy())
}

impl std::fmt::Display for FolderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FolderState::InUse => "in use",
            FolderState::Idle => "idle",
            FolderState::Stale => "stale",
            FolderState::Foreign => "foreign",
            FolderState::OtherHost => "other host",
            FolderState::Unknown => "unknown",
            FolderState::Trash => "trash",
        })
    }
}

//! [`Snapshot`]: an immutable tree of one manifest, materialised in the host cache.

use std::path::{Path, PathBuf};

/// A materialised manifest: a read-only tree beneath the host cache, whose files have the
/// manifest's content, modes and times. It stays pinned (never evicted) while this value
/// lives; mirror from it, never hand it to a task (its files may be hard links shared with
/// other snapshots).
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
}

impl Snapshot {
    /// The root folder of the tree: put it in place of the mirrored root it stands for.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

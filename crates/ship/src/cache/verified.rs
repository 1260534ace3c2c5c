//! [`Verified`]: the blobs this process hashed and found intact, with the state of their
//! file then, so a blob is hashed again only when its file changed since.
//!
//! Every write, `chmod`, `utime` or link of a file moves its change time (`ctime`), which no
//! caller can set, so a blob whose inode, size and change time are as recorded holds what
//! was hashed. (Kernels before Linux 6.13 keep change times in clock ticks of a few
//! milliseconds: a change within the tick of the record would go unseen by this process.
//! Since 6.13 a change time that was read is followed by a finer one, and the record is
//! always read.) Snapshot files are hard links to their blobs: checking a blob before it is
//! linked into a snapshot keeps a blob damaged at rest out of new snapshots.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, PoisonError};

use crate::digest::Digest;

/// The identity and change time of a blob's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// True when `meta` is of the same file (device and inode).
    pub(crate) fn same_file(&self, meta: &Metadata) -> bool {
        self.dev == meta.dev() && self.ino == meta.ino()
    }
}

/// Blobs hashed by this process, by digest.
#[derive(Debug, Default)]
pub(crate) struct Verified(Mutex<HashMap<Digest, Stamp>>);

/// Entries kept at most: past it the record starts again (costing rehashes, never trust).
const MOST: usize = 1 << 20;

impl Verified {
    /// True when `digest` was found intact while its file was as `now`.
    pub(crate) fn is_intact(&self, digest: &Digest, now: &Stamp) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            == Some(now)
    }

    /// Records that `digest` holds its content while its file is as `stamp`.
    pub(crate) fn record(&self, digest: Digest, stamp: Stamp) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MOST {
            map.clear();
        }
        map.insert(digest, stamp);
    }

    /// Moves the recorded change time of `digest` to `meta`'s when `meta` is of the file
    /// recorded: after this process linked it (a link moves the change time too).
    pub(crate) fn relinked(&self, digest: &Digest, meta: &Metadata) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stamp) = map.get_mut(digest)
            && stamp.same_file(meta)
        {
            *stamp = Stamp::of(meta);
        }
    }

    /// Forgets `digest` (found damaged, or removed).
    pub(crate) fn forget(&self, digest: &Digest) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_write_chmod_or_link_makes_a_blob_unverified() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, "x").unwrap();
        let digest = Digest::of(b"x");
        let verified = Verified::default();
        let stamp = |p: &std::path::Path| Stamp::of(&std::fs::symlink_metadata(p).unwrap());
        // The change time moves in steps the file system's clock allows: wait until a
        // change is visible, without sleeping blindly.
        let changes = |change: &dyn Fn()| {
            let before = stamp(&path);
            for _ in 0..10_000 {
                change();
                if stamp(&path) != before {
                    return;
                }
                std::thread::yield_now();
            }
            panic!("the change time never moved");
        };
        verified.record(digest, stamp(&path));
        assert!(verified.is_intact(&digest, &stamp(&path)));
        changes(&|| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(b"")
                .unwrap();
            std::fs::write(&path, "x").unwrap();
        });
        assert!(!verified.is_intact(&digest, &stamp(&path)));
        verified.record(digest, stamp(&path));
        changes(&|| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        });
        assert!(!verified.is_intact(&digest, &stamp(&path)));
        verified.record(digest, stamp(&path));
        let link = dir.path().join("link");
        let n = std::sync::atomic::AtomicUsize::new(0);
        changes(&|| {
            let l = link.with_extension(
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            );
            std::fs::hard_link(&path, l).unwrap();
        });
        assert!(!verified.is_intact(&digest, &stamp(&path)));
        // ... unless this process says it linked it.
        verified.relinked(&digest, &std::fs::symlink_metadata(&path).unwrap());
        assert!(verified.is_intact(&digest, &stamp(&path)));
        // Another file under the same digest is never taken for the recorded one.
        let other = dir.path().join("other");
        std::fs::write(&other, "x").unwrap();
        verified.relinked(&digest, &std::fs::symlink_metadata(&other).unwrap());
        assert!(!verified.is_intact(&digest, &stamp(&other)));
        verified.forget(&digest);
        assert!(!verified.is_intact(&digest, &stamp(&path)));
    }
}

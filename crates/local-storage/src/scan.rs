//! Listing the folders in the per-user folder, and sweeping or clearing them.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::folder::{STAGING_PREFIX, TRASH_PREFIX, move_to_trash, tag_in_name};
use crate::lock::{Attempt, still_linked};
use crate::owner::{Liveness, OwnerMarker};
use crate::report::{Failure, FolderInfo, FolderState, SweepReport, human_size};
use crate::tree::{remove_tree, tree_size};
use crate::{Error, LocalStorage};

/// How long a probe waits for the lock of a folder whose owner is gone (see
/// `try_lock_stale_aware`).
const STALE_LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(5);

/// Which folders a pass removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Sweep,
    Clear,
    ClearForce,
}

/// What became of one folder a pass meant to remove.
enum Outcome {
    Removed(FolderInfo),
    /// It came to life, or someone else removed it first.
    Skipped,
    Failed(Failure),
}

/// A classified entry, with the lock if classifying took it.
struct Probe {
    info: FolderInfo,
    lock: Option<Attempt>,
}

/// An error and its causes on one line, for a report that holds text.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

impl LocalStorage {
    /// Lists every entry of the per-user folder with its owner, state and size.
    ///
    /// # Errors
    ///
    /// [`Error::Inspect`] when the per-user folder cannot be read.
    pub fn list(&self) -> Result<Vec<FolderInfo>, Error> {
        let mut out = Vec::new();
        for (name, path) in self.entries()? {
            if let Some(mut probe) = self.probe(&name, &path, false) {
                probe.info.size = tree_size(&path);
                probe.info.size_human = human_size(probe.info.size);
                out.push(probe.info);
            }
        }
        Ok(out)
    }

    /// Removes stale folders: owner gone and lock free; also unknown ones past the grace
    /// period and trash. Run when a worker starts ([`LocalStorage::open_and_sweep`]) and
    /// on request.
    ///
    /// # Errors
    ///
    /// [`Error::Inspect`] when the per-user folder cannot be read; a folder that cannot
    /// be removed is reported in [`SweepReport::failed`].
    pub fn sweep(&self) -> Result<SweepReport, Error> {
        self.pass(Pass::Sweep)
    }

    /// Removes every folder whose lock is free, except young unknown ones; with `force`,
    /// also folders in use. Folders owned by another user are never removed.
    ///
    /// # Errors
    ///
    /// As [`LocalStorage::sweep`].
    pub fn clear(&self, force: bool) -> Result<SweepReport, Error> {
        self.pass(if force { Pass::ClearForce } else { Pass::Clear })
    }

    fn entries(&self) -> Result<Vec<(String, PathBuf)>, Error> {
        let fail = |source| Error::Inspect {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            // The host cache is not a task folder: it keeps its own limits and locks.
            if entry.file_name() == crate::CACHE_DIR {
                continue;
            }
            out.push((
                entry.file_name().to_string_lossy().into_owned(),
                entry.path(),
            ));
        }
        out.sort();
        Ok(out)
    }

    fn pass(&self, pass: Pass) -> Result<SweepReport, Error> {
        let mut report = SweepReport::default();
        for (name, path) in self.entries()? {
            let Some(probe) = self.probe(&name, &path, false) else {
                continue;
            };
            if !self.removable(&probe.info, pass) {
                report.kept.push(probe.info);
                continue;
            }
            match self.remove_checked(&name, &path, probe, pass) {
                Outcome::Removed(info) => {
                    report.bytes_freed += info.size;
                    report.removed.push(info);
                }
                Outcome::Skipped => {}
                Outcome::Failed(failure) => report.failed.push(failure),
            }
        }
        report.bytes_freed_human = human_size(report.bytes_freed);
        Ok(report)
    }

    fn removable(&self, info: &FolderInfo, pass: Pass) -> bool {
        let old = Duration::from_secs(info.age_secs) >= self.grace;
        match info.state {
            FolderState::Foreign => false,
            FolderState::Trash | FolderState::Stale => true,
            FolderState::Unknown => old || pass == Pass::ClearForce,
            FolderState::Idle | FolderState::OtherHost => pass != Pass::Sweep,
            FolderState::InUse => pass == Pass::ClearForce,
        }
    }

    /// Removes a folder chosen from a first look, after locking it and looking again,
    /// so a folder that came to life (or was removed by a racing sweeper) is left alone.
    fn remove_checked(&self, name: &str, path: &Path, first: Probe, pass: Pass) -> Outcome {
        let locked = matches!(first.lock, Some(Attempt::Held(_)));
        let probe = match (locked, first.info.state) {
            (true, _) | (false, FolderState::Trash | FolderState::InUse | FolderState::Foreign) => {
                first
            }
            _ => match self.probe(name, path, true) {
                Some(probe) if self.removable(&probe.info, pass) => probe,
                _ => return Outcome::Skipped,
            },
        };
        if let Some(Attempt::Held(file)) = &probe.lock
            && !still_linked(file, path)
        {
            return Outcome::Skipped;
        }
        let mut info = probe.info;
        info.size = tree_size(path);
        info.size_human = human_size(info.size);
        let removed =
            move_to_trash(path).and_then(|trash| trash.map_or(Ok(()), |t| remove_tree(&t)));
        drop(probe.lock);
        match removed {
            Ok(()) => Outcome::Removed(info),
            Err(error) => Outcome::Failed(Failure {
                folder: info,
                error: chain(&error),
            }),
        }
    }

    /// Classifies one entry; `create_lock` makes a missing lock file so the entry can be
    /// locked for removal. `None`: it vanished.
    fn probe(&self, name: &str, path: &Path, create_lock: bool) -> Option<Probe> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok());
        let age_secs = age.map_or(0, |age| age.as_secs());
        let info = |state, detail: String, owner| FolderInfo {
            name: name.to_owned(),
            path: path.to_path_buf(),
            owner,
            state,
            detail,
            uid: meta.uid(),
            age_secs,
            size: 0,
            size_human: human_size(0),
        };
        if meta.uid() != self.uid {
            let detail = format!("owned by uid {}, not by you (uid {})", meta.uid(), self.uid);
            return Some(Probe {
                info: info(FolderState::Foreign, detail, None),
                lock: None,
            });
        }
        let passing = [
            (TRASH_PREFIX, "removed", "removal"),
            (STAGING_PREFIX, "made", "creation"),
        ];
        for (prefix, doing, deed) in passing {
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            let old = age.is_none_or(|age| age >= self.grace);
            let (state, detail) = self.judge_passing(rest, old, doing, deed);
            return Some(Probe {
                info: info(state, detail, None),
                lock: None,
            });
        }
        if !meta.is_dir() {
            let detail = "not a folder".to_owned();
            return Some(Probe {
                info: info(FolderState::Unknown, detail, None),
                lock: None,
            });
        }
        let lock = match self.try_lock_stale_aware(path, create_lock) {
            Ok(Attempt::Busy) => {
                let owner = OwnerMarker::read(path).ok().flatten();
                let detail = "its lock is held".to_owned();
                return Some(Probe {
                    info: info(FolderState::InUse, detail, owner),
                    lock: Some(Attempt::Busy),
                });
            }
            Ok(attempt) => Some(attempt),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                let detail = format!("cannot open its lock file: {e}");
                return Some(Probe {
                    info: info(FolderState::Unknown, detail, None),
                    lock: None,
                });
            }
        };
        let (state, detail, owner) = self.judge_owner(path, lock.as_ref());
        Some(Probe {
            info: info(state, detail, owner),
            lock,
        })
    }

    /// Judges a folder whose lock is not held by anyone else, from its owner marker.
    /// Tries the folder's lock. When it is held although the owner marker says the owner is
    /// gone, tries again for a moment: the holder is then almost always a child that another
    /// thread of some process just forked, which keeps a copy of the lock file's descriptor
    /// (and so the flock) until it execs, a matter of microseconds. A holder that stays is
    /// a real one, and the folder is in use.
    fn try_lock_stale_aware(&self, path: &Path, create: bool) -> io::Result<Attempt> {
        let first = self.backend.try_lock(path, create)?;
        if !matches!(first, Attempt::Busy) || !self.owner_is_gone(path) {
            return Ok(first);
        }
        let deadline = std::time::Instant::now() + STALE_LOCK_PATIENCE;
        loop {
            std::thread::yield_now();
            let again = self.backend.try_lock(path, create)?;
            if !matches!(again, Attempt::Busy) || std::time::Instant::now() >= deadline {
                return Ok(again);
            }
        }
    }

    /// Judges a trash or staging folder by the process named in its name (`rest`, the
    /// part after the prefix); `old`: it is past the grace period.
    fn judge_passing(
        &self,
        rest: &str,
        old: bool,
        doing: &str,
        deed: &str,
    ) -> (FolderState, String) {
        let leftover = |why: String| {
            (
                FolderState::Trash,
                format!("left over from an interrupted {deed}: {why}"),
            )
        };
        let Some(tag) = tag_in_name(rest) else {
            return leftover("no process in its name".to_owned());
        };
        match tag.liveness(&OwnerMarker::current(&self.host)) {
            Liveness::Gone(gone) => leftover(gone.to_string()),
            // A name without a start time (made by an older parvm, or where /proc could
            // not be read) cannot tell its maker from a process that reuses the pid: trust
            // a live pid only for the grace period instead of forever.
            _ if !tag.knows_start_time() && old => leftover(format!(
                "process {} lives, but the name cannot tell whether it is the same one",
                tag.pid()
            )),
            // Its maker or remover is still at work: leave it be rather than race it.
            _ => (
                FolderState::InUse,
                format!("being {doing} by process {}", tag.pid()),
            ),
        }
    }

    fn owner_is_gone(&self, path: &Path) -> bool {
        let me = OwnerMarker::current(&self.host);
        matches!(
            OwnerMarker::read(path),
            Ok(Some(marker)) if matches!(marker.liveness(&me), Liveness::Gone(_))
        )
    }

    fn judge_owner(
        &self,
        path: &Path,
        lock: Option<&Attempt>,
    ) -> (FolderState, String, Option<OwnerMarker>) {
        let marker = match OwnerMarker::read(path) {
            Ok(Some(marker)) => marker,
            Ok(None) => return (FolderState::Unknown, "no owner marker".to_owned(), None),
            Err(e) => {
                return (
                    FolderState::Unknown,
                    format!("owner marker unreadable: {e}"),
                    None,
                );
            }
        };
        let me = OwnerMarker::current(&self.host);
        let lockless = matches!(lock, Some(Attempt::Unsupported));
        let (state, detail) = match marker.liveness(&me) {
            Liveness::Alive if lockless => (
                FolderState::InUse,
                "owner alive (locks unsupported here)".to_owned(),
            ),
            Liveness::Alive => (
                FolderState::Idle,
                format!("owner pid {} alive, lock free", marker.pid),
            ),
            Liveness::Gone(gone) => (FolderState::Stale, gone.to_string()),
            Liveness::OtherHost => (
                FolderState::OtherHost,
                format!("made on host `{}`", marker.host),
            ),
        };
        (state, detail, Some(marker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        let rows = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (5 * 1024 * 1024, "5.0 MiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (bytes, want) in rows {
            assert_eq!(human_size(bytes), want);
        }
    }
}

//! Watching the destination folders of a [`crate::MirroredFolder`] with inotify, so a
//! refresh learns which mirrored files the tasks touched without looking at every one.
//! It must not know the sources; the inotify bookkeeping is `inotify`'s.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::inotify::AddWatchFlags;

use super::inotify::{Broken, Table};
use super::manifest::Manifest;

/// What a drained event says needs checking.
#[derive(Debug, Default)]
pub(crate) struct Suspects {
    /// Entries the tasks touched: copied again from the source.
    pub(crate) entries: Vec<u32>,
    /// Mirrored folders whose mode or times the tasks may have changed.
    pub(crate) dirs: Vec<u32>,
}

/// One inotify instance watching every destination folder of a manifest.
#[derive(Debug)]
pub(crate) struct Watch {
    table: Table<()>,
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW
}

impl Watch {
    /// Watches every destination folder of `m`.
    ///
    /// # Errors
    ///
    /// When the kernel refuses (no inotify, too many instances or watches, a folder gone).
    pub(crate) fn new(m: &Manifest) -> nix::Result<Watch> {
        let mut watch = Watch {
            table: Table::new()?,
        };
        watch.sync(m)?;
        Ok(watch)
    }

    /// Watches the destination folders of `m` not watched yet and forgets those `m` no longer
    /// has.
    pub(crate) fn sync(&mut self, m: &Manifest) -> nix::Result<()> {
        self.table.retain(|p| m.by_dst.contains_key(p));
        for path in m.by_dst.keys() {
            if !self.table.contains(path) {
                self.table.add(path, path.as_path(), mask(), ())?;
            }
        }
        Ok(())
    }

    /// Reads every queued event and adds what they touch to `out`; events for paths in
    /// `ignore` (this process's own writes) are skipped.
    pub(crate) fn drain(
        &self,
        m: &Manifest,
        out: &mut Suspects,
        ignore: Option<&HashSet<PathBuf>>,
    ) -> Result<(), Broken> {
        self.table.drain(|dir_path, ev| {
            let Some(dirs) = m.by_dst.get(dir_path) else {
                return false;
            };
            let Some(name) = &ev.name else {
                if !ignore.is_some_and(|set| set.contains(dir_path)) {
                    // The folder itself: its mode or times.
                    out.dirs.extend(
                        dirs.iter()
                            .filter(|&&d| !m.dirs[d as usize].is_top())
                            .copied(),
                    );
                }
                return false;
            };
            if ignore.is_some_and(|set| set.contains(&dir_path.join(name))) {
                return false;
            }
            if let Ok(cname) = CString::new(name.as_bytes()) {
                for &d in dirs {
                    if let Some(i) = m.find(d, &cname) {
                        out.entries.push(i);
                    }
                }
            }
            // A mirrored folder deleted, moved away or replaced breaks the watch; a change
            // of its attributes does not (its own watch reports that, without a name).
            ev.mask.contains(AddWatchFlags::IN_ISDIR)
                && !ev.mask.contains(AddWatchFlags::IN_ATTRIB)
                && is_mirrored_dir(m, &dir_path.join(name))
        })
    }
}

fn is_mirrored_dir(m: &Manifest, path: &Path) -> bool {
    m.by_dst
        .get(path)
        .is_some_and(|dirs| dirs.iter().any(|&d| !m.dirs[d as usize].is_top()))
}

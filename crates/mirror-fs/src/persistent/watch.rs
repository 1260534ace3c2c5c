//! Watching the destination folders of a [`crate::MirroredFolder`] with inotify, so a
//! refresh learns which mirrored files the tasks touched without looking at every one.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};

use super::manifest::Manifest;

/// What a drained event says needs checking.
#[derive(Debug, Default)]
pub(crate) struct Suspects {
    /// Entries the tasks touched: copied again from the source.
    pub(crate) entries: Vec<u32>,
    /// Mirrored folders whose mode or times the tasks may have changed.
    pub(crate) dirs: Vec<u32>,
}

/// The drained events cannot be trusted to name everything that changed (the queue
/// overflowed, or a watched folder was deleted, moved or replaced): verify everything.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Broken;

/// One inotify instance watching every destination folder of a manifest.
#[derive(Debug)]
pub(crate) struct Watch {
    fd: Inotify,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
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
        let fd = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut watch = Watch {
            fd,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
        };
        watch.sync(m)?;
        Ok(watch)
    }

    /// Watches the destination folders of `m` not watched yet and forgets those `m` no longer
    /// has.
    pub(crate) fn sync(&mut self, m: &Manifest) -> nix::Result<()> {
        let stale: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| !m.by_dst.contains_key(*p))
            .cloned()
            .collect();
        for path in stale {
            if let Some(wd) = self.by_path.remove(&path) {
                self.by_wd.remove(&wd);
                // Gone already is fine: the kernel dropped the watch itself.
                let _ = self.fd.rm_watch(wd);
            }
        }
        for path in m.by_dst.keys() {
            if !self.by_path.contains_key(path) {
                let wd = self.fd.add_watch(path.as_path(), mask())?;
                // Two paths can name one folder (a symlink in a target): then events name
                // the path watched last, which is as good.
                self.by_wd.insert(wd, path.clone());
                self.by_path.insert(path.clone(), wd);
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
        drain_events(&self.fd, &self.by_wd, |dir_path, ev| {
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

/// Reads every queued event of `fd` and calls `each` with the watched folder (from
/// `by_wd`) and the event; `each` returns whether the event makes the watch untrustworthy.
/// The queue is always read to the end. [`Broken`] when the events may not name
/// everything: the queue overflowed, a watched folder was deleted, moved or unmounted, the
/// kernel dropped a watch, `each` said so, or the queue could not be read.
pub(crate) fn drain_events(
    fd: &Inotify,
    by_wd: &HashMap<WatchDescriptor, PathBuf>,
    mut each: impl FnMut(&Path, &InotifyEvent) -> bool,
) -> Result<(), Broken> {
    let mut broken = false;
    loop {
        let events = match fd.read_events() {
            Ok(events) => events,
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::debug!("cannot read inotify events: {e}; verifying everything");
                return Err(Broken);
            }
        };
        if events.is_empty() {
            break;
        }
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                broken = true;
                continue;
            }
            // A watch removed on purpose reports IN_IGNORED under a forgotten descriptor.
            let Some(dir_path) = by_wd.get(&ev.wd) else {
                continue;
            };
            if ev.mask.intersects(
                AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_IGNORED
                    | AddWatchFlags::IN_UNMOUNT,
            ) {
                broken = true;
                continue;
            }
            broken |= each(dir_path, &ev);
        }
    }
    if broken { Err(Broken) } else { Ok(()) }
}

fn is_mirrored_dir(m: &Manifest, path: &Path) -> bool {
    m.by_dst
        .get(path)
        .is_some_and(|dirs| dirs.iter().any(|&d| !m.dirs[d as usize].is_top()))
}

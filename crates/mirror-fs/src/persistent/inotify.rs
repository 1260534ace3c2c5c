//! One inotify instance and its table of watched folders (watch descriptor ↔ path), the
//! piece both watches of a [`crate::MirroredFolder`] stand on: the watch on the copies
//! (`watch`) and the watch on the sources (`srcwatch`). It owns adding and dropping
//! watches and draining the queue with the rules that make a watch untrustworthy
//! ([`Broken`]). It must not know what the folders are (copies or sources) nor the
//! manifest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use nix::NixPath;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};

/// The drained events cannot be trusted to name everything that changed (the queue
/// overflowed, or a watched folder was deleted, moved or replaced): verify everything.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Broken;

/// One inotify instance and the folders it watches; each watched path carries `X`, what
/// its watch needs to remember about it.
#[derive(Debug)]
pub(crate) struct Table<X> {
    fd: Inotify,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, (WatchDescriptor, X)>,
}

impl<X> Table<X> {
    /// A new, non-blocking instance watching nothing.
    ///
    /// # Errors
    ///
    /// When the kernel refuses (no inotify, too many instances).
    pub(crate) fn new() -> nix::Result<Table<X>> {
        Ok(Table {
            fd: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
        })
    }

    /// True when `path` is watched.
    pub(crate) fn contains(&self, path: &Path) -> bool {
        self.by_path.contains_key(path)
    }

    /// The watched paths and what each carries.
    pub(crate) fn watched(&self) -> impl Iterator<Item = (&PathBuf, &X)> {
        self.by_path.iter().map(|(path, (_, extra))| (path, extra))
    }

    /// Stops watching the paths `keep` refuses.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        let stale: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| !keep(p.as_path()))
            .cloned()
            .collect();
        for path in stale {
            if let Some((wd, _)) = self.by_path.remove(&path) {
                self.by_wd.remove(&wd);
                // Gone already is fine: the kernel dropped the watch itself.
                let _ = self.fd.rm_watch(wd);
            }
        }
    }

    /// Watches the folder `at` names (a path, or `/proc/self/fd/N` for an open folder)
    /// under the name `path`, carrying `extra`.
    ///
    /// # Errors
    ///
    /// When the kernel refuses (too many watches, a folder gone).
    pub(crate) fn add<P: ?Sized + NixPath>(
        &mut self,
        path: &Path,
        at: &P,
        mask: AddWatchFlags,
        extra: X,
    ) -> nix::Result<()> {
        let wd = self.fd.add_watch(at, mask)?;
        // Two paths can name one folder (a symlink in a target): then events name the path
        // watched last, which is as good.
        self.by_wd.insert(wd, path.to_path_buf());
        self.by_path.insert(path.to_path_buf(), (wd, extra));
        Ok(())
    }

    /// Reads every queued event and calls `each` with the watched folder and the event;
    /// `each` returns whether the event makes the watch untrustworthy. The queue is always
    /// read to the end. [`Broken`] when the events may not name everything: the queue
    /// overflowed, a watched folder was deleted, moved or unmounted, the kernel dropped a
    /// watch, `each` said so, or the queue could not be read.
    pub(crate) fn drain(
        &self,
        mut each: impl FnMut(&Path, &InotifyEvent) -> bool,
    ) -> Result<(), Broken> {
        let mut broken = false;
        loop {
            let events = match self.fd.read_events() {
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
                // A watch removed on purpose reports IN_IGNORED under a forgotten
                // descriptor.
                let Some(dir_path) = self.by_wd.get(&ev.wd) else {
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
}

//! [`Watch`]: inotify on every folder a scan read, so the next scan can be skipped while
//! nothing changed, and narrowed to the entries whose content or attributes alone changed
//! ([`Seen`]). It trusts only file systems whose every change this kernel makes
//! (mirror-fs's [`watchable_source`]), and never for longer than [`FULL_SCAN_EVERY`]:
//! what sends no event (writes through a shared mapping, a change through a hard link
//! outside the watched folders, a folder renamed above them) is seen by the next full scan.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use parvm_mirror_fs::{FULL_SCAN_EVERY, source_events, watchable_source};

/// Watches on the folders one scan read, from before it read them.
pub(crate) struct Watch {
    fd: Option<Inotify>,
    started: Instant,
    /// Longest a quiet watch vouches for the sources.
    trust_for: Duration,
    /// Each watched folder by its watch, as the scan named it.
    folders: HashMap<WatchDescriptor, PathBuf>,
    /// One folder was watched under two names: an event cannot name the entry the scan
    /// knows.
    aliased: bool,
}

/// What changed since the scan, as far as its watch can tell.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing: the sources are as the scan found them.
    Nothing,
    /// Only the content or attributes of these entries of watched folders (no folder's
    /// own, no name added, removed or moved), sorted, each once: the names a scan would
    /// find, and so what the sources match, are unchanged.
    Entries(Vec<PathBuf>),
    /// Anything else, or the watch cannot vouch for the sources: scan.
    Unknown,
}

impl Watch {
    /// A watch on nothing yet; unusable when the kernel refuses inotify.
    pub(crate) fn start(trust_for: Duration) -> Watch {
        Watch {
            fd: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok(),
            started: Instant::now(),
            trust_for: trust_for.min(FULL_SCAN_EVERY),
            folders: HashMap::new(),
            aliased: false,
        }
    }

    /// Watches folder `dir`; a folder that cannot be watched, or whose file system is not
    /// trusted, makes the whole watch unusable (every call scans).
    pub(crate) fn add(&mut self, dir: &Path) {
        let Some(fd) = &self.fd else { return };
        let watched = watchable_source(dir)
            .then(|| fd.add_watch(dir, source_events()).ok())
            .flatten();
        let Some(wd) = watched else {
            self.spoil();
            return;
        };
        match self.folders.entry(wd) {
            Entry::Vacant(new) => {
                new.insert(dir.to_path_buf());
            }
            Entry::Occupied(known) => self.aliased |= known.get() != dir,
        }
    }

    /// Gives up: the scan this watch belongs to cannot be vouched for.
    pub(crate) fn spoil(&mut self) {
        self.fd = None;
    }

    /// What changed since the scan: the events that came are read and kept in nothing
    /// but the answer, so call it once per look. [`Seen::Unknown`] when the watch is
    /// unusable or older than the full-scan interval.
    pub(crate) fn seen(&self) -> Seen {
        let Some(fd) = &self.fd else {
            return Seen::Unknown;
        };
        if self.started.elapsed() >= self.trust_for {
            return Seen::Unknown;
        }
        let content =
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_ATTRIB | AddWatchFlags::IN_CLOSE_WRITE;
        let mut entries = Vec::new();
        loop {
            match fd.read_events() {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    for event in events {
                        // A folder's own event, an overflow, a watch gone: no named entry.
                        let (Some(name), Some(folder)) = (&event.name, self.folders.get(&event.wd))
                        else {
                            return Seen::Unknown;
                        };
                        if self.aliased
                            || !content.contains(event.mask)
                            || event.mask.contains(AddWatchFlags::IN_ISDIR)
                        {
                            return Seen::Unknown;
                        }
                        entries.push(folder.join(name));
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => break,
                Err(_) => return Seen::Unknown,
            }
        }
        if entries.is_empty() {
            return Seen::Nothing;
        }
        entries.sort();
        entries.dedup();
        Seen::Entries(entries)
    }
}

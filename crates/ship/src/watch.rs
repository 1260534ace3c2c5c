//! [`Watch`]: inotify on every folder a scan read, so the next scan can be skipped while
//! nothing changed. It trusts only file systems whose every change this kernel makes
//! (mirror-fs's [`watchable_source`]), and never for longer than [`FULL_SCAN_EVERY`]:
//! what sends no event (writes through a shared mapping, a change through a hard link
//! outside the watched folders, a folder renamed above them) is seen by the next full scan.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{InitFlags, Inotify};
use parvm_mirror_fs::{FULL_SCAN_EVERY, source_events, watchable_source};

/// Watches on the folders one scan read, from before it read them.
pub(crate) struct Watch {
    fd: Option<Inotify>,
    started: Instant,
    /// Longest a quiet watch vouches for the sources.
    trust_for: Duration,
}

impl Watch {
    /// A watch on nothing yet; unusable when the kernel refuses inotify.
    pub(crate) fn start(trust_for: Duration) -> Watch {
        Watch {
            fd: Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok(),
            started: Instant::now(),
            trust_for: trust_for.min(FULL_SCAN_EVERY),
        }
    }

    /// Watches folder `dir`; a folder that cannot be watched, or whose file system is not
    /// trusted, makes the whole watch unusable (every call scans).
    pub(crate) fn add(&mut self, dir: &Path) {
        let Some(fd) = &self.fd else { return };
        if !watchable_source(dir) || fd.add_watch(dir, source_events()).is_err() {
            self.spoil();
        }
    }

    /// Gives up: the scan this watch belongs to cannot be vouched for.
    pub(crate) fn spoil(&mut self) {
        self.fd = None;
    }

    /// True while the watch stands: usable, younger than the full-scan interval, and no
    /// event has come (events are read and dropped: any one means scan again).
    pub(crate) fn quiet(&self) -> bool {
        let Some(fd) = &self.fd else { return false };
        if self.started.elapsed() >= self.trust_for {
            return false;
        }
        loop {
            match fd.read_events() {
                Ok(events) if events.is_empty() => return true,
                Ok(_) => return false,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
    }
}

//! Watching the source folders of a [`crate::MirroredFolder`] with inotify, so a refresh
//! looks only at the source entries the events name instead of `stat`-ing every one.
//!
//! Only a file system that this kernel alone writes can be trusted: every change to it goes
//! through this kernel, which tells inotify. A network or cluster file system (NFS, SMB,
//! FUSE, Lustre, GPFS, Ceph, 9p, AFS, ...) changes behind its back, and so do overlayfs's
//! lower layers: those keep the scan.
//!
//! It must not know the copies; the inotify bookkeeping is `inotify`'s.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::inotify::AddWatchFlags;
use nix::sys::stat::Mode;

use super::inotify::{Broken, Table};
use super::manifest::{Chunk, Manifest};
use crate::fsops::dir_flags;

/// `statfs` magic numbers of the local file systems trusted to report every change.
const TRUSTED: [u32; 7] = [
    0x0102_1994, // tmpfs
    0x8584_58f6, // ramfs
    0x0000_ef53, // ext2, ext3, ext4
    0x5846_5342, // xfs
    0x9123_683e, // btrfs
    0xf2f5_2010, // f2fs
    0x2fc1_2fc1, // zfs
];

/// Entries of one folder closer than this are looked at in one run (one `open` of the
/// folder), the few in between too.
const GAP: u32 = 16;

/// A source folder cannot be watched, or is not on a trusted file system.
#[derive(Debug)]
pub(crate) struct Untrusted;

#[allow(clippy::unnecessary_cast)] // `f_type`'s type differs between targets.
fn trusted(dir: &OwnedFd) -> bool {
    // The magic is 32 bits; a target with a signed `f_type` sign-extends it.
    nix::sys::statfs::fstatfs(dir)
        .is_ok_and(|st| TRUSTED.contains(&(st.filesystem_type().0 as u32)))
}

/// True when `dir` is a folder on a local file system whose every change this kernel
/// makes, and so reports to inotify (tmpfs, ramfs, ext2/3/4, xfs, btrfs, f2fs, zfs): a
/// watch on it can stand in for looking. False for network, cluster and FUSE file
/// systems, overlayfs, and what cannot be opened.
pub fn watchable_source(dir: &Path) -> bool {
    nix::fcntl::open(dir, dir_flags(), Mode::empty()).is_ok_and(|fd| trusted(&fd))
}

/// The inotify events a watch on a source folder must ask for: every change to the
/// folder's entries and their contents and metadata, and the folder itself going away.
pub fn source_events() -> AddWatchFlags {
    mask()
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// One inotify instance watching the copied source folders of a manifest (not the parents
/// of top-level matches: those entries are always looked at).
#[derive(Debug)]
pub(crate) struct SourceWatch {
    /// Folder → the (device, inode) watched: the path must still name that folder (an
    /// ancestor renamed or a mount on top sends no event).
    table: Table<(u64, u64)>,
}

impl SourceWatch {
    /// Watches every copied source folder of `m`.
    pub(crate) fn new(m: &Manifest) -> Result<SourceWatch, Untrusted> {
        let mut watch = SourceWatch {
            table: Table::new().map_err(|_| Untrusted)?,
        };
        watch.sync(m)?;
        Ok(watch)
    }

    /// Watches the copied source folders of `m` not watched yet and forgets those `m` no
    /// longer has. True when it added a watch: that folder was copied before it was watched,
    /// so the next refresh scans everything.
    pub(crate) fn sync(&mut self, m: &Manifest) -> Result<bool, Untrusted> {
        let wanted: HashSet<&Path> = m
            .dirs
            .iter()
            .filter(|d| !d.is_top())
            .map(|d| d.src.as_path())
            .collect();
        self.table.retain(|p| wanted.contains(p));
        let mut added = false;
        for path in wanted {
            if !self.table.contains(path) {
                self.add(path)?;
                added = true;
            }
        }
        Ok(added)
    }

    #[allow(clippy::unnecessary_cast)] // `st_dev`'s type differs between targets.
    fn add(&mut self, path: &Path) -> Result<(), Untrusted> {
        let dir = nix::fcntl::open(path, dir_flags(), Mode::empty()).map_err(|_| Untrusted)?;
        if !trusted(&dir) {
            return Err(Untrusted);
        }
        let st = nix::sys::stat::fstat(&dir).map_err(|_| Untrusted)?;
        // Through the open descriptor the watch is on the very folder checked above, even if
        // the path changed meanwhile.
        let via = format!("/proc/self/fd/{}", dir.as_raw_fd());
        self.table
            .add(
                path,
                via.as_str(),
                mask(),
                (st.st_dev as u64, st.st_ino as u64),
            )
            .map_err(|_| Untrusted)
    }

    /// The chunks to scan instead of the whole manifest: the entries and folders the queued
    /// events name, plus [`Manifest::always`] and the parents of top-level matches.
    ///
    /// # Errors
    ///
    /// [`Broken`] when the events may not name everything (queue overflow, a watched folder
    /// deleted, moved or no longer named by its path): scan everything.
    pub(crate) fn targets(&self, m: &Manifest) -> Result<Vec<Chunk>, Broken> {
        let mut dirs = BTreeSet::new();
        let mut entries = Vec::new();
        self.drain(m, &mut dirs, &mut entries)?;
        if !self.still_named() {
            return Err(Broken);
        }
        for (id, d) in m.dirs.iter().enumerate() {
            if d.is_top() {
                dirs.insert(id as u32);
            }
        }
        entries.extend_from_slice(&m.always);
        Ok(chunks(m, dirs, entries))
    }

    #[allow(clippy::unnecessary_cast)]
    fn still_named(&self) -> bool {
        self.table.watched().all(|(path, id)| {
            nix::sys::stat::stat(path.as_path())
                .is_ok_and(|st| (st.st_dev as u64, st.st_ino as u64) == *id)
        })
    }

    fn drain(
        &self,
        m: &Manifest,
        dirs: &mut BTreeSet<u32>,
        entries: &mut Vec<u32>,
    ) -> Result<(), Broken> {
        let mut by_src: Option<HashMap<&Path, Vec<u32>>> = None;
        self.table.drain(|path, ev| {
            let index = by_src.get_or_insert_with(|| src_index(m));
            let Some(ids) = index.get(path) else {
                return false;
            };
            // The folder is looked at too: a name added or removed changes its time, and
            // then it is listed again.
            dirs.extend(ids.iter().copied());
            if let Some(name) = &ev.name
                && let Ok(cname) = CString::new(name.as_bytes())
            {
                entries.extend(ids.iter().filter_map(|&d| m.find(d, &cname)));
            }
            false
        })
    }
}

/// Source folder → the copied (non-top) manifest folders read from it.
fn src_index(m: &Manifest) -> HashMap<&Path, Vec<u32>> {
    let mut index: HashMap<&Path, Vec<u32>> = HashMap::new();
    for (id, d) in m.dirs.iter().enumerate() {
        if !d.is_top() {
            index.entry(d.src.as_path()).or_default().push(id as u32);
        }
    }
    index
}

/// Scan chunks for folders `dirs` (the folder itself only) and `entries` (runs of one
/// folder's entries).
fn chunks(m: &Manifest, dirs: BTreeSet<u32>, mut entries: Vec<u32>) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = dirs
        .into_iter()
        .map(|id| {
            let start = m.dirs[id as usize].start;
            Chunk {
                dir: id,
                start,
                end: start,
                first: true,
            }
        })
        .collect();
    entries.sort_unstable();
    entries.dedup();
    for i in entries {
        let dir = m.entries[i as usize].dir;
        match out.last_mut() {
            Some(c) if !c.first && c.dir == dir && i < c.end + GAP => c.end = i + 1,
            _ => out.push(Chunk {
                dir,
                start: i,
                end: i + 1,
                first: false,
            }),
        }
    }
    out
}

//! The manifest of a [`crate::MirroredFolder`]: what a mirror copied, and the source's
//! metadata as copied, laid out for a fast parallel scan (entries grouped by folder, folders
//! cut into chunks).
//! It must not know how the manifest is scanned, watched or saved.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use crate::fsops::{Kind, MadeAt, Sig};

/// Where a manifest folder comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A folder inside a copied folder tree.
    Sub,
    /// A folder matched by map entry `entry` and copied as a tree.
    Root { entry: usize },
    /// The parent folder of files matched by map entry `entry`, copied into its target
    /// (the folder itself is not mirrored: its entries are).
    Top { entry: usize },
}

/// A source folder and its destination.
#[derive(Debug, Clone)]
pub(crate) struct DirRec {
    pub(crate) src: PathBuf,
    pub(crate) dst: PathBuf,
    /// The source folder's metadata when it was last listed (unused for [`Origin::Top`]).
    pub(crate) sig: Sig,
    pub(crate) origin: Origin,
    /// Its entries: `entries[start..end]`, sorted by name.
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl DirRec {
    pub(crate) fn is_top(&self) -> bool {
        matches!(self.origin, Origin::Top { .. })
    }
}

/// A copied file or symlink.
#[derive(Debug, Clone)]
pub(crate) struct EntryRec {
    pub(crate) dir: u32,
    pub(crate) name: CString,
    pub(crate) kind: Kind,
    /// The source's metadata as copied.
    pub(crate) sig: Sig,
    /// The copy's change time once made (a file copied by this process; `None` for a
    /// symlink or a manifest loaded from a file): a copy whose change time moved since was
    /// touched, whatever its size and times say.
    pub(crate) made: Option<MadeAt>,
}

/// A map entry with glob characters and what it expanded to.
#[derive(Debug, Clone)]
pub(crate) struct GlobRec {
    pub(crate) entry: usize,
    pub(crate) target: PathBuf,
    /// The folders whose listings decided the expansion, with their metadata before.
    pub(crate) folders: Vec<(PathBuf, Option<Sig>)>,
    pub(crate) matches: Vec<PathBuf>,
}

/// A slice of one folder's entries: the unit of the parallel scan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunk {
    pub(crate) dir: u32,
    pub(crate) start: u32,
    pub(crate) end: u32,
    /// The folder's first chunk, which also checks the folder itself.
    pub(crate) first: bool,
}

/// Most entries per scan chunk: enough to pay for opening the folder, small enough to
/// spread a big folder over the threads.
const CHUNK: u32 = 256;

/// Everything a [`crate::MirroredFolder`] knows about what it copied.
#[derive(Debug, Clone, Default)]
pub(crate) struct Manifest {
    /// Sorted by destination, so a parent comes before its children.
    pub(crate) dirs: Vec<DirRec>,
    /// Grouped by folder (in folder order), sorted by name within a folder.
    pub(crate) entries: Vec<EntryRec>,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) globs: Vec<GlobRec>,
    /// Per map entry: true when its source is literal (a missing one is an error).
    pub(crate) literal: Vec<bool>,
    /// Destination folder → the folders copied into it.
    pub(crate) by_dst: HashMap<PathBuf, Vec<u32>>,
    /// Two folders land on one destination folder somewhere.
    pub(crate) overlaps: bool,
    /// Entries whose source is looked at even when inotify watches the source folders:
    /// files with hard links (changed through another name, no event reaches the watched
    /// folder) and top-level matches (followed when symlinks, so their folder says nothing).
    pub(crate) always: Vec<u32>,
}

impl Manifest {
    /// Builds the manifest from folders indexed by id (`None`: no such folder any more) and
    /// entries naming those ids; of two entries with the same folder and name, the later
    /// wins. Entries of missing folders are dropped.
    pub(crate) fn build(
        dirs: Vec<Option<DirRec>>,
        mut entries: Vec<EntryRec>,
        globs: Vec<GlobRec>,
        literal: Vec<bool>,
    ) -> Manifest {
        let mut order: Vec<(u32, DirRec)> = dirs
            .into_iter()
            .enumerate()
            .filter_map(|(id, d)| d.map(|d| (id as u32, d)))
            .collect();
        order.sort_by(|a, b| (&a.1.dst, &a.1.src).cmp(&(&b.1.dst, &b.1.src)));
        let mut remap = HashMap::with_capacity(order.len());
        for (new, (old, _)) in order.iter().enumerate() {
            remap.insert(*old, new as u32);
        }
        let mut dirs: Vec<DirRec> = order.into_iter().map(|(_, d)| d).collect();
        entries.retain_mut(|e| match remap.get(&e.dir) {
            Some(&new) => {
                e.dir = new;
                true
            }
            None => false,
        });
        // Stable: of equal (folder, name), the later stays last, and is kept below.
        entries.sort_by(|a, b| (a.dir, a.name.as_c_str()).cmp(&(b.dir, b.name.as_c_str())));
        let mut deduped: Vec<EntryRec> = Vec::with_capacity(entries.len());
        for e in entries {
            match deduped.last_mut() {
                Some(last) if last.dir == e.dir && last.name == e.name => *last = e,
                _ => deduped.push(e),
            }
        }
        let entries = drop_shadowed(&dirs, deduped);
        let mut chunks = Vec::new();
        let mut by_dst: HashMap<PathBuf, Vec<u32>> = HashMap::new();
        let mut overlaps = false;
        let mut i = 0usize;
        for (id, dir) in dirs.iter_mut().enumerate() {
            let start = i;
            while i < entries.len() && entries[i].dir == id as u32 {
                i += 1;
            }
            dir.start = start as u32;
            dir.end = i as u32;
            let mut s = dir.start;
            loop {
                let e = (s + CHUNK).min(dir.end);
                chunks.push(Chunk {
                    dir: id as u32,
                    start: s,
                    end: e,
                    first: s == dir.start,
                });
                s = e;
                if s >= dir.end {
                    break;
                }
            }
            let at = by_dst.entry(dir.dst.clone()).or_default();
            at.push(id as u32);
            overlaps |= at.len() > 1;
        }
        let always = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.sig.nlink > 1 || dirs[e.dir as usize].is_top())
            .map(|(i, _)| i as u32)
            .collect();
        Manifest {
            dirs,
            entries,
            chunks,
            globs,
            literal,
            by_dst,
            overlaps,
            always,
        }
    }

    /// The entry of folder `dir` called `name`.
    pub(crate) fn find(&self, dir: u32, name: &CStr) -> Option<u32> {
        let d = &self.dirs[dir as usize];
        let slice = &self.entries[d.start as usize..d.end as usize];
        slice
            .binary_search_by(|e| e.name.as_c_str().cmp(name))
            .ok()
            .map(|i| d.start + i as u32)
    }

    /// Takes the manifest apart again, for [`Manifest::build`] after changes.
    pub(crate) fn into_parts(self) -> (Vec<Option<DirRec>>, Vec<EntryRec>) {
        (self.dirs.into_iter().map(Some).collect(), self.entries)
    }
}

/// Of entries that land on the same file from different folders (two map entries, or two
/// matches of one glob), keeps the one a mirror copies last ([`Shadows`]); the others are
/// not in the task folder, so they are neither looked at nor copied again.
fn drop_shadowed(dirs: &[DirRec], entries: Vec<EntryRec>) -> Vec<EntryRec> {
    let keep: Vec<bool> = {
        let shadows = Shadows::of(dirs, &entries, &[]);
        entries
            .iter()
            .map(|e| !shadows.hides(e.dir, &e.name))
            .collect()
    };
    entries
        .into_iter()
        .zip(keep)
        .filter_map(|(e, keep)| keep.then_some(e))
        .collect()
}

/// The map entry each folder of `dirs` (sorted by destination, then source) was copied
/// for: a match's own, and a folder inside a copied tree its parent's.
pub(crate) fn entries_of(dirs: &[DirRec]) -> Vec<usize> {
    let mut by_pair: HashMap<(&Path, &Path), usize> = HashMap::new();
    let mut entry_of = Vec::with_capacity(dirs.len());
    for d in dirs {
        let entry = match d.origin {
            Origin::Root { entry } | Origin::Top { entry } => entry,
            Origin::Sub => d
                .dst
                .parent()
                .zip(d.src.parent())
                .and_then(|pair| by_pair.get(&pair).copied())
                .unwrap_or(0),
        };
        by_pair.insert((d.dst.as_path(), d.src.as_path()), entry);
        entry_of.push(entry);
    }
    entry_of
}

/// Which files of a manifest's folders are hidden by another folder's file landing on the
/// same place and copied after it (`copy/plan.rs`'s waves): that of the later map entry,
/// and within one entry that of the later source folder. `dirs` are sorted by destination,
/// then source.
pub(crate) struct Shadows<'m> {
    dirs: &'m [DirRec],
    /// The map entry each folder was copied for (a folder inside a copied tree: its
    /// parent's); empty when no two folders land on one.
    entry_of: Vec<usize>,
    /// Of each file that several folders land on, the rank of the one copied last.
    last: HashMap<(&'m Path, &'m CStr), (usize, &'m Path)>,
}

impl<'m> Shadows<'m> {
    /// Of `entries` but those `dead` says are gone (shorter: the rest are live).
    pub(crate) fn of(dirs: &'m [DirRec], entries: &'m [EntryRec], dead: &[bool]) -> Shadows<'m> {
        let mut folders_at: HashMap<&Path, usize> = HashMap::new();
        for d in dirs {
            *folders_at.entry(d.dst.as_path()).or_default() += 1;
        }
        let mut shadows = Shadows {
            dirs,
            entry_of: Vec::new(),
            last: HashMap::new(),
        };
        if folders_at.values().all(|&n| n == 1) {
            return shadows;
        }
        shadows.entry_of = entries_of(dirs);
        for (i, e) in entries.iter().enumerate() {
            if dead.get(i).copied().unwrap_or(false) {
                continue;
            }
            let dst = dirs[e.dir as usize].dst.as_path();
            if folders_at.get(dst).is_some_and(|&n| n > 1) {
                let rank = shadows.rank(e.dir);
                let last = shadows.last.entry((dst, e.name.as_c_str())).or_insert(rank);
                *last = (*last).max(rank);
            }
        }
        shadows
    }

    fn rank(&self, dir: u32) -> (usize, &'m Path) {
        (
            self.entry_of.get(dir as usize).copied().unwrap_or(0),
            self.dirs[dir as usize].src.as_path(),
        )
    }

    /// Whether file `name` of folder `dir` is hidden by another folder's, copied after it.
    pub(crate) fn hides(&self, dir: u32, name: &CStr) -> bool {
        if self.last.is_empty() {
            return false;
        }
        let dst = self.dirs[dir as usize].dst.as_path();
        self.last
            .get(&(dst, name))
            .is_some_and(|&last| self.rank(dir) < last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(dst: &str) -> DirRec {
        DirRec {
            src: PathBuf::from("/s").join(dst),
            dst: PathBuf::from("/t").join(dst),
            sig: Sig::default(),
            origin: Origin::Sub,
            start: 0,
            end: 0,
        }
    }

    fn entry(dir: u32, name: &str, size: i64) -> EntryRec {
        EntryRec {
            dir,
            name: CString::new(name).unwrap(),
            kind: Kind::File,
            sig: Sig {
                size,
                ..Sig::default()
            },
            made: None,
        }
    }

    #[test]
    fn build_orders_dedups_and_chunks() {
        let dirs = vec![Some(dir("b")), None, Some(dir("a"))];
        let mut entries: Vec<EntryRec> =
            (0..600).map(|i| entry(0, &format!("f{i:03}"), 1)).collect();
        entries.push(entry(2, "x", 1));
        entries.push(entry(1, "gone", 1));
        entries.push(entry(0, "f000", 2));
        let m = Manifest::build(dirs, entries, Vec::new(), Vec::new());
        assert_eq!(m.dirs.len(), 2);
        assert_eq!(m.dirs[0].dst, PathBuf::from("/t/a"));
        assert_eq!(m.entries.len(), 601);
        let f0 = m.find(1, c"f000").unwrap();
        assert_eq!(m.entries[f0 as usize].sig.size, 2, "the later entry wins");
        assert!(m.find(0, c"gone").is_none());
        let chunks: Vec<(u32, u32, u32, bool)> = m
            .chunks
            .iter()
            .map(|c| (c.dir, c.start, c.end, c.first))
            .collect();
        assert_eq!(
            chunks,
            vec![
                (0, 0, 1, true),
                (1, 1, 257, true),
                (1, 257, 513, false),
                (1, 513, 601, false)
            ]
        );
    }

    #[test]
    fn empty_folder_gets_one_chunk() {
        let m = Manifest::build(vec![Some(dir("a"))], Vec::new(), Vec::new(), Vec::new());
        assert_eq!(m.chunks.len(), 1);
        assert!(m.chunks[0].first);
    }
}

//! What a refresh must do, worked out from what the scan, the watches and the globs say:
//! [`Changes`] names the entries to copy again, the folders to list again or create, and
//! the manifest records to drop. It only looks at sources (and lists source folders); it
//! must not write to the task folder (that is `apply`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::Mode;

use super::manifest::{GlobRec, Manifest, Origin};
use super::scan::Scan;
use crate::error::{Error, Result};
use crate::fsops::{Kind, Sig, dir_flags, entry_kind, vanished_or_read};
use crate::glob;
use crate::map::MirrorMap;

/// A folder to create and copy as a tree.
pub(super) struct NewDir {
    pub(super) src: PathBuf,
    pub(super) dst: PathBuf,
    pub(super) origin: Origin,
}

pub(super) struct Changes<'r> {
    /// The roots the sources are confined to (see [`MirrorMap::within`]).
    pub(super) roots: &'r [PathBuf],
    pub(super) dead_dirs: Vec<bool>,
    pub(super) dead_entries: Vec<bool>,
    /// Folder id → names to copy into it (ids past the manifest are new top parents).
    pub(super) copy: BTreeMap<u32, Vec<(CString, Kind)>>,
    pub(super) new_dirs: Vec<NewDir>,
    /// New parents of top-level files: (source parent, target, map entry).
    pub(super) new_tops: Vec<(PathBuf, PathBuf, usize)>,
    /// Folders to list again.
    pub(super) relist: BTreeSet<u32>,
    /// New metadata of folders listed again.
    pub(super) relisted: HashMap<u32, Sig>,
    /// Folders whose destination mode and times are set again.
    pub(super) attrs: BTreeSet<u32>,
    /// Folders whose destination must be created again.
    pub(super) ensure: BTreeSet<u32>,
    /// Replacement glob records (by map entry).
    pub(super) globs: HashMap<usize, GlobRec>,
    /// Origins of the new folders (by id); folders found inside them are `Sub`.
    pub(super) origins: HashMap<u32, Origin>,
    /// The manifest's structure changes (entries or folders added or dropped).
    pub(super) structural: bool,
}

impl<'r> Changes<'r> {
    pub(super) fn new(m: &Manifest, roots: &'r [PathBuf]) -> Changes<'r> {
        Changes {
            roots,
            dead_dirs: vec![false; m.dirs.len()],
            dead_entries: vec![false; m.entries.len()],
            copy: BTreeMap::new(),
            new_dirs: Vec::new(),
            new_tops: Vec::new(),
            relist: BTreeSet::new(),
            relisted: HashMap::new(),
            attrs: BTreeSet::new(),
            ensure: BTreeSet::new(),
            globs: HashMap::new(),
            origins: HashMap::new(),
            structural: false,
        }
    }

    pub(super) fn recopy(&mut self, m: &Manifest, i: u32) {
        if self.gone(m, i) {
            return;
        }
        let e = &m.entries[i as usize];
        self.copy_into(e.dir, &e.name, e.kind);
    }

    /// Whether entry `i` is gone at the source: dropped itself, or its folder dropped.
    pub(super) fn gone(&self, m: &Manifest, i: u32) -> bool {
        self.dead_entries[i as usize] || self.dead_dirs[m.entries[i as usize].dir as usize]
    }

    /// Names entry `name` of folder `id` (ids past the manifest are new top parents) for
    /// copying, once.
    fn copy_into(&mut self, id: u32, name: &CStr, kind: Kind) {
        let names = self.copy.entry(id).or_default();
        if !names.iter().any(|(n, _)| n.as_c_str() == name) {
            names.push((name.to_owned(), kind));
        }
    }

    pub(super) fn drop_entry(&mut self, i: u32) {
        self.dead_entries[i as usize] = true;
        self.structural = true;
    }

    /// Drops folder `id` and every folder copied below it (the copies stay).
    pub(super) fn drop_tree(&mut self, m: &Manifest, id: u32) {
        let root = &m.dirs[id as usize];
        for (j, d) in m.dirs.iter().enumerate() {
            if j == id as usize
                || (d.origin == Origin::Sub
                    && d.dst.starts_with(&root.dst)
                    && d.src.starts_with(&root.src))
            {
                self.dead_dirs[j] = true;
            }
        }
        self.structural = true;
    }

    /// Copies `path`, a (new or changed) top-level match of map entry `entry`.
    pub(super) fn add_match(
        &mut self,
        m: &Manifest,
        entry: usize,
        target: &Path,
        path: &Path,
    ) -> Result<()> {
        let literal = m.literal.get(entry).copied().unwrap_or(false);
        // As when it was first mirrored: a symlink is followed only into the roots, and
        // only files and folders are copied.
        let meta = match crate::fsops::FolderCheck::new(self.roots).top_match(path) {
            Ok(meta) => meta,
            Err(Error::SourceMissing { .. }) if !literal => return Ok(()),
            Err(Error::Read { source, .. })
                if !literal && source.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(name) = path.file_name() else {
            return Ok(());
        };
        self.structural = true;
        if meta.is_dir() {
            self.new_dirs.push(NewDir {
                src: path.to_path_buf(),
                dst: target.join(name),
                origin: Origin::Root { entry },
            });
        } else {
            let parent = path
                .parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
            let existing = m.dirs.iter().position(|d| {
                d.origin == (Origin::Top { entry }) && d.src == parent && d.dst == target
            });
            let id = match existing {
                Some(id) if !self.dead_dirs[id] => id as u32,
                _ => match self
                    .new_tops
                    .iter()
                    .position(|(p, t, e)| *p == parent && t == target && *e == entry)
                {
                    Some(k) => (m.dirs.len() + k) as u32,
                    None => {
                        self.new_tops.push((parent, target.to_path_buf(), entry));
                        (m.dirs.len() + self.new_tops.len() - 1) as u32
                    }
                },
            };
            let name = crate::fsops::cstring(name, path)?;
            self.copy_into(id, &name, Kind::File);
        }
        Ok(())
    }

    /// Expands again every glob a folder of which changed; copies new matches and forgets
    /// matches that are gone.
    pub(super) fn globs(&mut self, m: &Manifest, map: &MirrorMap) -> Result<()> {
        for old in &m.globs {
            let changed = old
                .folders
                .iter()
                .any(|(path, sig)| glob::folder_sig(path) != *sig);
            if !changed {
                continue;
            }
            self.structural = true;
            let entry = old.entry;
            let Some(source) = map.entries().get(entry).map(|e| &e.source) else {
                continue;
            };
            let mut folders = Vec::new();
            let matches = glob::expand_traced(source, &mut folders)?;
            for gone in old
                .matches
                .iter()
                .filter(|p| matches.binary_search(p).is_err())
            {
                self.forget_match(m, entry, &old.target, gone);
            }
            for new in matches
                .iter()
                .filter(|p| old.matches.binary_search(p).is_err())
            {
                self.add_match(m, entry, &old.target, new)?;
            }
            self.globs.insert(
                entry,
                GlobRec {
                    entry,
                    target: old.target.clone(),
                    folders,
                    matches,
                },
            );
        }
        Ok(())
    }

    /// Copies the files that a later folder's file, gone at the source now, hid where both
    /// land: a fresh mirror would have them there. Their entries were never kept (the
    /// manifest keeps only the last of the entries landing on one file), so they are looked
    /// for here: in a folder copied as a tree by name, among a glob's matches by the glob.
    pub(super) fn unshadow(&mut self, m: &Manifest, map: &MirrorMap) -> Result<()> {
        if !m.overlaps {
            return Ok(());
        }
        let mut gone: Vec<(u32, CString)> = Vec::new();
        for (id, d) in m.dirs.iter().enumerate() {
            if m.by_dst.get(&d.dst).is_none_or(|at| at.len() < 2) {
                continue;
            }
            for i in d.start..d.end {
                let e = &m.entries[i as usize];
                // Copied again as another kind: it still lands there.
                let again = self
                    .copy
                    .get(&(id as u32))
                    .is_some_and(|names| names.iter().any(|(n, _)| *n == e.name));
                if self.gone(m, i) && !again {
                    gone.push((id as u32, e.name.clone()));
                }
            }
        }
        for (id, name) in gone {
            let dst = &m.dirs[id as usize].dst;
            let others = m.by_dst.get(dst).map_or(&[][..], Vec::as_slice);
            for &other in others {
                let d = &m.dirs[other as usize];
                if other == id || self.dead_dirs[other as usize] || m.find(other, &name).is_some() {
                    continue;
                }
                let path = d.src.join(OsStr::from_bytes(name.to_bytes()));
                match d.origin {
                    Origin::Top { entry } => {
                        if self.is_match(m, map, entry, &path) {
                            self.add_match(m, entry, &d.dst, &path)?;
                        }
                    }
                    Origin::Root { .. } | Origin::Sub => {
                        let kind = match std::fs::symlink_metadata(&path) {
                            Ok(meta) if meta.is_file() => Kind::File,
                            Ok(meta) if meta.is_symlink() => Kind::Link,
                            // A folder where a file was would not be mirrored either.
                            _ => continue,
                        };
                        self.structural = true;
                        self.copy_into(other, &name, kind);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `path` is a match of map entry `entry` now: its source itself, or one of its
    /// glob's matches (as expanded again by this refresh, else as recorded).
    fn is_match(&self, m: &Manifest, map: &MirrorMap, entry: usize, path: &Path) -> bool {
        let glob = self
            .globs
            .get(&entry)
            .or_else(|| m.globs.iter().find(|g| g.entry == entry));
        match glob {
            Some(glob) => glob
                .matches
                .binary_search_by(|p| p.as_path().cmp(path))
                .is_ok(),
            None => map.entries().get(entry).is_some_and(|e| e.source == path),
        }
    }

    /// Forgets a match of map entry `entry` that is gone at the source (its copy stays).
    pub(super) fn forget_match(&mut self, m: &Manifest, entry: usize, target: &Path, path: &Path) {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return;
        };
        for (id, d) in m.dirs.iter().enumerate() {
            match d.origin {
                Origin::Root { entry: e } if e == entry && d.src == path => {
                    self.drop_tree(m, id as u32);
                }
                Origin::Top { entry: e } if e == entry && d.src == parent && d.dst == target => {
                    if let Ok(cname) = CString::new(name.as_bytes())
                        && let Some(i) = m.find(id as u32, &cname)
                    {
                        self.drop_entry(i);
                    }
                }
                _ => {}
            }
        }
    }

    pub(super) fn apply_scan(&mut self, m: &Manifest, scan: Scan) -> Result<()> {
        for (id, errno) in scan.dirs_gone {
            let d = &m.dirs[id as usize];
            match d.origin {
                Origin::Root { entry } => {
                    let literal = m.literal.get(entry).copied().unwrap_or(false);
                    if errno == Errno::ENOTDIR {
                        // A folder replaced by a file: copy the file instead.
                        self.drop_tree(m, id);
                        let target = d.dst.parent().unwrap_or(&d.dst).to_path_buf();
                        let src = d.src.clone();
                        self.add_match(m, entry, &target, &src)?;
                    } else if literal {
                        return Err(Error::SourceMissing {
                            path: d.src.clone(),
                        });
                    } else {
                        self.drop_tree(m, id);
                    }
                }
                Origin::Top { entry } => {
                    if m.literal.get(entry).copied().unwrap_or(false) {
                        let name = m.entries[d.start as usize..d.end as usize]
                            .first()
                            .map(|e| OsStr::from_bytes(e.name.to_bytes()).to_os_string())
                            .unwrap_or_default();
                        return Err(Error::SourceMissing {
                            path: d.src.join(name),
                        });
                    }
                    self.dead_dirs[id as usize] = true;
                    self.structural = true;
                }
                Origin::Sub => self.drop_tree(m, id),
            }
        }
        for i in scan.gone {
            let e = &m.entries[i as usize];
            let d = &m.dirs[e.dir as usize];
            if let Origin::Top { entry } = d.origin
                && m.literal.get(entry).copied().unwrap_or(false)
            {
                return Err(Error::SourceMissing {
                    path: d.src.join(OsStr::from_bytes(e.name.to_bytes())),
                });
            }
            self.drop_entry(i);
            if !d.is_top() {
                self.relist.insert(e.dir);
            }
        }
        for (i, new_type) in scan.changed {
            let e = &m.entries[i as usize];
            let d = &m.dirs[e.dir as usize];
            let old_type = if e.kind == Kind::Link {
                libc::S_IFLNK
            } else {
                libc::S_IFREG
            };
            if new_type == 0 || new_type == old_type {
                self.recopy(m, i);
            } else if let Origin::Top { entry } = d.origin {
                // A top-level file replaced by a folder.
                self.drop_entry(i);
                let path = d.src.join(OsStr::from_bytes(e.name.to_bytes()));
                let target = d.dst.clone();
                self.add_match(m, entry, &target, &path)?;
            } else {
                // Listing the folder again finds what stands there now.
                self.drop_entry(i);
                self.relist.insert(e.dir);
            }
        }
        for id in scan.dirs_changed {
            self.relist.insert(id);
        }
        for id in scan.dst_missing {
            self.ensure.insert(id);
        }
        self.attrs.extend(scan.dir_attrs);
        Ok(())
    }

    pub(super) fn relist_all(&mut self, m: &Manifest) -> Result<()> {
        let ids: Vec<u32> = self.relist.iter().copied().collect();
        for id in ids {
            if !self.dead_dirs[id as usize] {
                self.relist_one(m, id)?;
            }
        }
        Ok(())
    }

    /// Lists a copied source folder again: new entries and subfolders are copied, entries
    /// and subfolders gone are forgotten.
    pub(super) fn relist_one(&mut self, m: &Manifest, id: u32) -> Result<()> {
        let d = &m.dirs[id as usize];
        let fd: OwnedFd = match nix::fcntl::open(&d.src, dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => {
                self.drop_tree(m, id);
                return Ok(());
            }
            Err(e) => return Err(vanished_or_read(&d.src, e)),
        };
        let st = nix::sys::stat::fstat(&fd).map_err(|e| vanished_or_read(&d.src, e))?;
        let mut listing: Vec<(CString, nix::dir::Type)> = Vec::new();
        {
            let mut dir = nix::dir::Dir::openat(&fd, c".", dir_flags(), Mode::empty())
                .map_err(|e| vanished_or_read(&d.src, e))?;
            for entry in dir.iter() {
                let entry = entry.map_err(|e| vanished_or_read(&d.src, e))?;
                let name = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                let kind = match entry_kind(&fd, &entry) {
                    Ok(kind) => kind,
                    // Removed since it was listed: as if it had not been listed.
                    Err(Errno::ENOENT) => continue,
                    Err(e) => {
                        return Err(vanished_or_read(
                            &d.src.join(OsStr::from_bytes(name.to_bytes())),
                            e,
                        ));
                    }
                };
                listing.push((name.to_owned(), kind));
            }
        }
        listing.sort_by(|a, b| a.0.cmp(&b.0));
        // The live subfolders copied from this folder, by name.
        let children: Vec<(u32, &OsStr)> = m
            .dirs
            .iter()
            .enumerate()
            .filter(|(j, c)| {
                !self.dead_dirs[*j]
                    && c.origin == Origin::Sub
                    && c.src.parent() == Some(d.src.as_path())
                    && c.dst.parent() == Some(d.dst.as_path())
            })
            .filter_map(|(j, c)| c.src.file_name().map(|n| (j as u32, n)))
            .collect();
        let child = |name: &CStr| {
            children
                .iter()
                .find(|(_, n)| n.as_bytes() == name.to_bytes())
                .map(|(j, _)| *j)
        };
        for (name, kind) in &listing {
            let entry = m.find(id, name).filter(|&i| !self.dead_entries[i as usize]);
            let sub = child(name);
            let kind = match kind {
                nix::dir::Type::File => Kind::File,
                nix::dir::Type::Symlink => Kind::Link,
                nix::dir::Type::Directory => {
                    if sub.is_none() {
                        if let Some(i) = entry {
                            self.drop_entry(i);
                        }
                        self.structural = true;
                        let os = OsStr::from_bytes(name.to_bytes());
                        self.new_dirs.push(NewDir {
                            src: d.src.join(os),
                            dst: d.dst.join(os),
                            origin: Origin::Sub,
                        });
                    }
                    continue;
                }
                _ => continue,
            };
            if let Some(j) = sub {
                self.drop_tree(m, j);
            }
            match entry {
                Some(i) if m.entries[i as usize].kind == kind => {}
                other => {
                    if let Some(i) = other {
                        self.drop_entry(i);
                    }
                    self.structural = true;
                    self.copy_into(id, name, kind);
                }
            }
        }
        let listed = |name: &[u8]| {
            listing
                .binary_search_by(|(n, _)| n.to_bytes().cmp(name))
                .is_ok()
        };
        for i in d.start..d.end {
            if !listed(m.entries[i as usize].name.to_bytes()) && !self.dead_entries[i as usize] {
                self.drop_entry(i);
            }
        }
        for (j, n) in &children {
            if !listed(n.as_bytes()) {
                self.drop_tree(m, *j);
            }
        }
        self.relisted.insert(id, Sig::of(&st));
        self.attrs.insert(id);
        Ok(())
    }
}

//! Carrying out [`Changes`]: copying what they name through the copy engine's pool,
//! setting folder attributes again, and committing the new manifest. It must not decide
//! what changed (that is `changes`).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::AtFlags;
use nix::sys::stat::Mode;

use super::changes::Changes;
use super::landing::{self, CopiedFrom, Group, LaterFiles, Ranks};
use super::manifest::{DirRec, EntryRec, GlobRec, Manifest, Origin, Shadows};
use crate::copy::{self, DirAttrs, Prepared, Recorded, Unit};
use crate::error::{Error, Result};
use crate::fsops::{Created, DirPair, Kind, Mode_, Sig, TaskRoot, vanished_or_read};
use crate::options::{MirrorOptions, MirrorReport};

impl Changes<'_> {
    /// Copies what the changes name. Returns the report, what was recorded, and the
    /// destination folders whose attributes were set (so their events are not taken for
    /// the tasks').
    pub(super) fn execute(
        &mut self,
        m: &Manifest,
        options: &MirrorOptions,
        created: &mut Created,
        root: &TaskRoot,
        roots: &[PathBuf],
    ) -> Result<(MirrorReport, Recorded, Vec<PathBuf>)> {
        let ctx = crate::fsops::Ctx { root, roots };
        let dir_src = |id: u32| -> &Path {
            match m.dirs.get(id as usize) {
                Some(d) => &d.src,
                None => &self.new_tops[id as usize - m.dirs.len()].0,
            }
        };
        let dir_dst = |id: u32| -> &Path {
            match m.dirs.get(id as usize) {
                Some(d) => &d.dst,
                None => &self.new_tops[id as usize - m.dirs.len()].1,
            }
        };
        // Every destination folder this refresh writes into is checked first, so a symlink
        // a task planted on the way is refused before anything is written.
        let live = |id: &&u32| (**id as usize) >= m.dirs.len() || !self.dead_dirs[**id as usize];
        for &id in self.ensure.iter().chain(self.copy.keys()).filter(live) {
            root.check(dir_dst(id), dir_src(id))?;
        }
        for nd in &self.new_dirs {
            root.check(&nd.dst, &nd.src)?;
        }
        // Destinations the tasks deleted come back first, parents before children (folder
        // ids follow destination order).
        let mut writable: BTreeMap<PathBuf, u32> = BTreeMap::new();
        let mut restore: BTreeSet<u32> = BTreeSet::new();
        for &id in &self.ensure {
            if self.dead_dirs[id as usize] {
                continue;
            }
            root.create_dir_all(dir_dst(id), dir_src(id), created)?;
            if !m.dirs[id as usize].is_top() {
                restore.insert(id);
            }
        }
        // Dropped folders are not restored; ids past the manifest are new top parents.
        let mut copies: BTreeMap<u32, Vec<(CString, Kind)>> = std::mem::take(&mut self.copy)
            .into_iter()
            .filter(|&(id, _)| (id as usize) >= m.dirs.len() || !self.dead_dirs[id as usize])
            .collect();
        // What is gone at the source hides nothing any more: the entries dropped, and those
        // of the folders dropped.
        let gone: Cow<'_, [bool]> = if self.dead_dirs.iter().any(|&dead| dead) {
            (0..m.entries.len() as u32)
                .map(|i| self.gone(m, i))
                .collect()
        } else {
            Cow::Borrowed(&self.dead_entries)
        };
        let shadows = Shadows::of(&m.dirs, &m.entries, &gone);
        let later = LaterFiles::new(m, &self.dead_dirs, &self.dead_entries);
        let mut ranks = Ranks::new(m);
        // Folders landing inside a new folder copied before them: copied again, whole.
        let again = landing::copied_again(m, &self.new_dirs, &self.dead_dirs, &mut ranks);
        // Their modes and times too, even with no file to copy: the new folder's tree set
        // its own on the places they land.
        restore.extend(
            again
                .iter()
                .copied()
                .filter(|&id| !m.dirs[id as usize].is_top()),
        );
        for &id in &again {
            let d = &m.dirs[id as usize];
            let names = copies.entry(id).or_default();
            // Its new and changed files as they are now, and every other live one.
            let changed: HashSet<CString> = names.iter().map(|(n, _)| n.clone()).collect();
            for (k, e) in m.entries[d.start as usize..d.end as usize]
                .iter()
                .enumerate()
            {
                if !self.dead_entries[d.start as usize + k] && !changed.contains(&e.name) {
                    names.push((e.name.clone(), e.kind));
                }
            }
        }
        let mut groups = Vec::new();
        for (id, mut names) in copies {
            let (src, dst) = (dir_src(id), dir_dst(id));
            let from = match (id as usize).checked_sub(m.dirs.len()) {
                Some(k) => CopiedFrom::Top(self.new_tops[k].2, src),
                None => CopiedFrom::Dir(id),
            };
            // A file hidden by a later one landing on the same place is not copied (a new
            // file of an earlier folder, found by listing it again, or a new match).
            match from {
                CopiedFrom::Top(..) => {
                    names.retain(|(name, _)| !later.hide(from, dst, name, &mut ranks))
                }
                _ => names.retain(|(name, _)| !shadows.hides(id, name)),
            }
            if names.is_empty() {
                continue;
            }
            if again.contains(&id) {
                root.check(dst, src)?;
            }
            if (id as usize) >= m.dirs.len() {
                root.create_dir_all(dst, src, created)?;
            }
            make_writable(dst, src, &mut writable, root)?;
            let top = m.dirs.get(id as usize).is_none_or(DirRec::is_top);
            if !top {
                restore.insert(id);
            }
            let (src_buf, dst_buf) = (src.to_path_buf(), dst.to_path_buf());
            let pair = Arc::new(if top {
                DirPair::open_top(id, src_buf, dst_buf, ctx)?
            } else {
                DirPair::open(id, src_buf, dst_buf, None, ctx)?
            });
            let units = names
                .chunks(64)
                .map(|chunk| Unit::Names {
                    pair: Arc::clone(&pair),
                    names: chunk.to_vec(),
                })
                .collect();
            groups.push(Group { from, dst, units });
        }
        let mut next = (m.dirs.len() + self.new_tops.len()) as u32;
        for nd in &self.new_dirs {
            let parent = nd.dst.parent().unwrap_or(&nd.dst);
            root.create_dir_all(parent, &nd.src, created)?;
            make_writable(parent, &nd.src, &mut writable, root)?;
            root.make_dir(&nd.dst, &nd.src, Mode_::Full, created)?;
            self.origins.insert(next, nd.origin);
            groups.push(Group {
                from: CopiedFrom::New(nd),
                dst: &nd.dst,
                units: vec![Unit::Dir {
                    id: next,
                    src: nd.src.clone(),
                    dst: nd.dst.clone(),
                    parent: None,
                }],
            });
            next += 1;
        }
        for &id in &self.attrs {
            if !self.dead_dirs.get(id as usize).copied().unwrap_or(true) {
                restore.insert(id);
            }
        }
        // Copies landing on one place run in the order a mirror copies them (`landing`).
        let mut waves = landing::waves(groups, &mut ranks);
        waves.retain(|wave| !wave.is_empty());
        let (report, recorded) = if waves.is_empty() {
            (MirrorReport::default(), Recorded::default())
        } else {
            let prepared = Prepared {
                waves,
                unmatched: Vec::new(),
            };
            copy::execute(prepared, options, Mode_::Full, created, next, true, ctx)?
        };
        // Folder modes and times, deepest first; also of the folders made writable.
        let mut attrs: Vec<(Option<Cow<'_, Path>>, PathBuf, u32)> =
            landing::restored_attrs(m, &restore, &self.dead_dirs, &self.new_dirs, &mut ranks)
                .into_iter()
                .map(|(src, dst)| (Some(src), dst.to_path_buf(), 0))
                .collect();
        let mut touched = Vec::new();
        for (dst, mode) in writable {
            if !attrs.iter().any(|(_, d, _)| *d == dst) {
                // A target folder that is not mirrored: it gets its own mode back.
                attrs.push((None, dst, mode));
            }
        }
        // Stable: folders of one depth keep the mirror's order.
        attrs.sort_by_key(|(_, dst, _)| std::cmp::Reverse(dst.components().count()));
        for (src, dst, mode) in attrs {
            match src {
                Some(src) => {
                    let st = nix::sys::stat::stat(src.as_ref())
                        .map_err(|e| vanished_or_read(&src, e))?;
                    copy::set_dir_attrs(
                        &DirAttrs::of(src.into_owned(), dst.clone(), &st),
                        Mode_::Refresh,
                        root,
                    )?;
                }
                None => {
                    let fd = root.open_dir(&dst, &dst)?;
                    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| {
                        Error::Create {
                            path: dst.clone(),
                            source: e.into(),
                        }
                    })?;
                }
            }
            touched.push(dst);
        }
        Ok((report, recorded, touched))
    }

    /// The manifest after the changes and the copies.
    pub(super) fn commit(self, old: Manifest, recorded: Recorded, literal: Vec<bool>) -> Manifest {
        let globs: Vec<GlobRec> = old
            .globs
            .iter()
            .map(|g| {
                self.globs
                    .get(&g.entry)
                    .cloned()
                    .unwrap_or_else(|| g.clone())
            })
            .collect();
        let n_old = old.dirs.len();
        let (mut dirs, mut entries) = old.into_parts();
        for (id, slot) in dirs.iter_mut().enumerate() {
            if self.dead_dirs[id] {
                *slot = None;
            } else if let (Some(d), Some(sig)) = (slot.as_mut(), self.relisted.get(&(id as u32))) {
                d.sig = *sig;
            }
        }
        let mut k = 0;
        entries.retain(|_| {
            let keep = !self.dead_entries[k];
            k += 1;
            keep
        });
        for (src, dst, entry) in self.new_tops {
            dirs.push(Some(DirRec {
                src,
                dst,
                sig: Sig::default(),
                origin: Origin::Top { entry },
                start: 0,
                end: 0,
            }));
        }
        debug_assert!(dirs.len() >= n_old);
        for d in recorded.dirs {
            let id = d.id as usize;
            if dirs.len() <= id {
                dirs.resize_with(id + 1, || None);
            }
            let origin = self.origins.get(&d.id).copied().unwrap_or(Origin::Sub);
            dirs[id] = Some(DirRec {
                src: d.src,
                dst: d.dst,
                sig: d.sig,
                origin,
                start: 0,
                end: 0,
            });
        }
        entries.extend(batch_entries(recorded.batches));
        Manifest::build(dirs, entries, globs, literal)
    }
}

/// Makes an existing destination folder writable for its owner (a copy of a read-only
/// source folder is read-only), remembering it so its mode is set again afterwards.
pub(super) fn make_writable(
    dst: &Path,
    src: &Path,
    done: &mut BTreeMap<PathBuf, u32>,
    root: &TaskRoot,
) -> Result<()> {
    if done.contains_key(dst) {
        return Ok(());
    }
    let (parent, name) = match dst.strip_prefix(root.path()) {
        Ok(rel) if rel.as_os_str().is_empty() => {
            // The task folder itself: local storage keeps it usable; not ours to change.
            return Ok(());
        }
        _ => root.parent_of(dst, src)?,
    };
    let st = nix::sys::stat::fstatat(&parent, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| Error::Create {
            path: dst.to_path_buf(),
            source: e.into(),
        })?;
    if !crate::fsops::is_dir(&st) {
        return Err(root.in_the_way(&parent, &name, dst, src));
    }
    if st.st_mode & 0o700 != 0o700 {
        // A folder a moment ago, in a parent reached without symlinks.
        nix::sys::stat::fchmodat(
            &parent,
            name.as_c_str(),
            Mode::from_bits_truncate((st.st_mode | 0o700) & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| Error::Create {
            path: dst.to_path_buf(),
            source: e.into(),
        })?;
        done.insert(dst.to_path_buf(), st.st_mode & 0o7777);
    }
    Ok(())
}

pub(super) fn batch_entries(batches: Vec<copy::Batch>) -> Vec<EntryRec> {
    let mut entries = Vec::with_capacity(batches.iter().map(|b| b.names.len()).sum());
    for b in batches {
        for (((name, kind), sig), made) in b.names.into_iter().zip(b.sigs).zip(b.made) {
            entries.push(EntryRec {
                dir: b.dir,
                name,
                kind,
                sig,
                made,
            });
        }
    }
    entries
}

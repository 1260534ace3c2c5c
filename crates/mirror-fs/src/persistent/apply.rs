//! Carrying out [`Changes`]: copying what they name through the copy engine's pool,
//! setting folder attributes again, and committing the new manifest. It must not decide
//! what changed (that is `changes`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::AtFlags;
use nix::sys::stat::Mode;

use super::changes::Changes;
use super::landing::{Landing, Late};
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
        let copy_ids: Vec<u32> = self
            .copy
            .keys()
            .copied()
            .filter(|&id| (id as usize) >= m.dirs.len() || !self.dead_dirs[id as usize])
            .collect();
        // A file hidden by a later one landing on the same place is not copied (a new file
        // of an earlier folder, found by listing it again).
        let shadows = Shadows::of(&m.dirs, &m.entries);
        let mut units = Vec::new();
        for id in copy_ids {
            let Some(mut names) = self.copy.remove(&id) else {
                continue;
            };
            if (id as usize) < m.dirs.len() {
                names.retain(|(name, _)| !shadows.hides(id, name));
            }
            if names.is_empty() {
                continue;
            }
            let (src, dst) = (dir_src(id).to_path_buf(), dir_dst(id).to_path_buf());
            if (id as usize) >= m.dirs.len() {
                root.create_dir_all(&dst, &src, created)?;
            }
            make_writable(&dst, &src, &mut writable, root)?;
            let top = m.dirs.get(id as usize).is_none_or(DirRec::is_top);
            if !top {
                restore.insert(id);
            }
            let pair = Arc::new(if top {
                DirPair::open_top(id, src, dst, ctx)?
            } else {
                DirPair::open(id, src, dst, None, ctx)?
            });
            for chunk in names.chunks(64) {
                units.push(Unit::Names {
                    pair: Arc::clone(&pair),
                    names: chunk.to_vec(),
                });
            }
        }
        // New folders landing where other folders land are copied in their order among
        // them, after everything else (`landing`).
        let landing = Landing::of(m, &self.new_dirs, &self.dead_dirs);
        let mut ordered: Vec<Option<Unit>> = self.new_dirs.iter().map(|_| None).collect();
        let mut next = (m.dirs.len() + self.new_tops.len()) as u32;
        for (i, nd) in self.new_dirs.iter().enumerate() {
            let parent = nd.dst.parent().unwrap_or(&nd.dst);
            root.create_dir_all(parent, &nd.src, created)?;
            make_writable(parent, &nd.src, &mut writable, root)?;
            root.make_dir(&nd.dst, &nd.src, Mode_::Full, created)?;
            self.origins.insert(next, nd.origin);
            let unit = Unit::Dir {
                id: next,
                src: nd.src.clone(),
                dst: nd.dst.clone(),
                parent: None,
            };
            if landing.ordered[i] {
                ordered[i] = Some(unit);
            } else {
                units.push(unit);
            }
            next += 1;
        }
        let mut waves = vec![units];
        for steps in landing.waves() {
            let mut wave = Vec::new();
            for step in steps {
                match step {
                    Late::NewDir(i) => wave.extend(ordered.get_mut(i).and_then(Option::take)),
                    Late::Recopy(id) => {
                        let d = &m.dirs[id as usize];
                        let names: Vec<(CString, Kind)> = m.entries
                            [d.start as usize..d.end as usize]
                            .iter()
                            .enumerate()
                            .filter(|&(k, e)| {
                                !self.dead_entries[d.start as usize + k]
                                    && !shadows.hides(id, &e.name)
                            })
                            .map(|(_, e)| (e.name.clone(), e.kind))
                            .collect();
                        if names.is_empty() {
                            continue;
                        }
                        root.check(&d.dst, &d.src)?;
                        make_writable(&d.dst, &d.src, &mut writable, root)?;
                        let pair = Arc::new(if d.is_top() {
                            DirPair::open_top(id, d.src.clone(), d.dst.clone(), ctx)?
                        } else {
                            restore.insert(id);
                            DirPair::open(id, d.src.clone(), d.dst.clone(), None, ctx)?
                        });
                        for chunk in names.chunks(64) {
                            wave.push(Unit::Names {
                                pair: Arc::clone(&pair),
                                names: chunk.to_vec(),
                            });
                        }
                    }
                }
            }
            waves.push(wave);
        }
        for &id in &self.attrs {
            if !self.dead_dirs.get(id as usize).copied().unwrap_or(true) {
                restore.insert(id);
            }
        }
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
        let mut touched = Vec::new();
        let mut attrs: Vec<(Option<&Path>, PathBuf, u32)> = restore
            .iter()
            .filter_map(|&id| m.dirs.get(id as usize))
            .map(|d| (Some(d.src.as_path()), d.dst.clone(), 0))
            .collect();
        for (dst, mode) in writable {
            if !attrs.iter().any(|(_, d, _)| *d == dst) {
                // A target folder that is not mirrored: it gets its own mode back.
                attrs.push((None, dst, mode));
            }
        }
        attrs.sort_by_key(|(_, dst, _)| std::cmp::Reverse(dst.components().count()));
        for (src, dst, mode) in attrs {
            match src {
                Some(src) => {
                    let st = nix::sys::stat::stat(src).map_err(|e| vanished_or_read(src, e))?;
                    copy::set_dir_attrs(
                        &DirAttrs::of(src.to_path_buf(), dst.clone(), &st),
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
        for ((name, kind), sig) in b.names.into_iter().zip(b.sigs) {
            entries.push(EntryRec {
                dir: b.dir,
                name,
                kind,
                sig,
            });
        }
    }
    entries
}

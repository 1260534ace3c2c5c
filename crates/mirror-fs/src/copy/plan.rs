//! Planning a mirror: every map entry's glob expanded and its matches checked, the target
//! folders created, and the first work units for the pool ([`Unit`]); plus what a recording
//! run learns for a manifest ([`Plan`], [`Recorded`]). It must not know how units are run.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::FileStat;
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result};
use crate::fsops::{
    Created, Ctx, DirPair, FolderCheck, Kind, MadeAt, Mode_, Sig, TaskRoot, cstring, times,
};
use crate::glob::{self, path_has_glob};
use crate::map::MirrorMap;

/// A piece of work for the pool.
pub(crate) enum Unit {
    /// List a source folder whose destination folder exists already; `parent` is the pair
    /// it was found in, with its name there (`None` for a top-level match).
    Dir {
        id: u32,
        src: PathBuf,
        dst: PathBuf,
        parent: Option<(Arc<DirPair>, CString)>,
    },
    /// Copy these entries of one folder pair.
    Names {
        pair: Arc<DirPair>,
        names: Vec<(CString, Kind)>,
    },
}

/// Mode and times a destination folder gets at the end.
pub(crate) struct DirAttrs {
    pub(crate) from: PathBuf,
    pub(crate) to: PathBuf,
    pub(crate) mode: u32,
    pub(crate) atime: TimeSpec,
    pub(crate) mtime: TimeSpec,
    /// The wave of the match it was copied for: of two matches landing on one folder, the
    /// later one's mode and times are the folder's.
    pub(crate) wave: u32,
}

impl DirAttrs {
    /// The attributes of the source folder `from` (stat `st`) for `to`, alone in its wave.
    pub(crate) fn of(from: PathBuf, to: PathBuf, st: &FileStat) -> DirAttrs {
        let (atime, mtime) = times(st);
        DirAttrs {
            from,
            to,
            mode: st.st_mode & 0o7777,
            atime,
            mtime,
            wave: 0,
        }
    }
}

/// What a recording run copied: every source folder it listed and every file and symlink
/// it copied, with the source's metadata as copied.
#[derive(Default)]
pub(crate) struct Recorded {
    pub(crate) dirs: Vec<DirRecord>,
    pub(crate) batches: Vec<Batch>,
}

/// A source folder listed by a recording run.
pub(crate) struct DirRecord {
    pub(crate) id: u32,
    pub(crate) src: PathBuf,
    pub(crate) dst: PathBuf,
    /// Taken before the folder was listed, so an entry added meanwhile changes it.
    pub(crate) sig: Sig,
}

/// Entries of one folder pair copied by a recording run; `sigs[i]` and `made[i]` belong to
/// `names[i]`.
pub(crate) struct Batch {
    pub(crate) dir: u32,
    pub(crate) names: Vec<(CString, Kind)>,
    pub(crate) sigs: Vec<Sig>,
    /// The copy's change time once made (files only).
    pub(crate) made: Vec<Option<MadeAt>>,
}

/// What planning a recording mirror learned about the map, for the manifest.
#[derive(Default)]
pub(crate) struct Plan {
    /// The next free folder id.
    pub(crate) next_id: u32,
    /// One per map entry, in map order.
    pub(crate) entries: Vec<EntryPlan>,
    /// Parents of top-level file matches: (id, source parent, target, map entry index).
    pub(crate) top_parents: Vec<(u32, PathBuf, PathBuf, usize)>,
    /// Top-level folder matches: (id, source, destination, map entry index).
    pub(crate) roots: Vec<(u32, PathBuf, PathBuf, usize)>,
}

/// How one map entry was expanded.
pub(crate) struct EntryPlan {
    pub(crate) target: PathBuf,
    pub(crate) glob: bool,
    /// Folders the expansion read (or found missing), with their metadata before reading.
    pub(crate) folders: Vec<(PathBuf, Option<Sig>)>,
    pub(crate) matches: Vec<PathBuf>,
}

/// Most entries per batch: shared state (queue, counters, progress) is touched once per batch.
pub(crate) const BATCH: usize = 64;

/// Entries per batch of top-level matches (their sizes are unknown, so keep batches small).
pub(crate) const TOP_BATCH: usize = 8;

/// The work of a mirror, in waves run one after the other: a wave starts where a match
/// lands on, inside or around what an earlier match of the wave copies, so that the later
/// one wins as if the matches were copied one by one in the map's order.
pub(crate) struct Prepared {
    pub(crate) waves: Vec<Vec<Unit>>,
    pub(crate) unmatched: Vec<PathBuf>,
}

/// A map entry checked: its index, source and target folder, and its matches, each with
/// its name and metadata.
type Resolved = (
    usize,
    PathBuf,
    PathBuf,
    Vec<(PathBuf, OsString, std::fs::Metadata)>,
);

/// Whether two top-level matches of `resolved` may land on the same place or one inside
/// the other: two equal names in one target folder, or a target folder inside a match of
/// another. Sorts borrowed names, so a glob of thousands of files costs no allocation per
/// match.
fn matches_may_meet(resolved: &[Resolved]) -> bool {
    let targets: Vec<PathBuf> = resolved
        .iter()
        .map(|(_, _, target, _)| target.components().collect())
        .collect();
    let mut landings: Vec<(&Path, &OsStr)> = resolved
        .iter()
        .zip(&targets)
        .flat_map(|((_, _, _, found), target)| {
            found
                .iter()
                .map(move |(_, name, _)| (target.as_path(), name.as_os_str()))
        })
        .collect();
    landings.sort_unstable();
    if landings.windows(2).any(|pair| pair[0] == pair[1]) {
        return true;
    }
    targets.iter().enumerate().any(|(i, a)| {
        targets[..i].iter().any(|b| {
            let (outer, inner) = if a.starts_with(b) { (b, a) } else { (a, b) };
            let first = inner
                .strip_prefix(outer)
                .ok()
                .and_then(|rest| rest.components().next());
            first.is_some_and(|first| {
                landings
                    .binary_search(&(outer.as_path(), first.as_os_str()))
                    .is_ok()
            })
        })
    })
}

/// Where the top-level matches of one wave are copied to: per target folder, the names of
/// the matches copied into it (a map has few targets, a glob may match thousands of files).
#[derive(Default)]
struct Landing(Vec<(PathBuf, HashSet<OsString>)>);

impl Landing {
    /// Whether a match called `name` copied into `target` would write where one of the wave
    /// writes: the same place, inside a folder copied there, or around one.
    fn overlaps(&self, target: &Path, name: &OsStr) -> bool {
        self.0.iter().any(|(folder, names)| {
            if folder == target {
                names.contains(name)
            } else if let Ok(inside) = folder.strip_prefix(target) {
                // That target lies in this match if the match is named as its first step.
                inside.components().next().map(|c| c.as_os_str()) == Some(name)
            } else if let Ok(inside) = target.strip_prefix(folder) {
                // This target lies in a match of that one named as its first step.
                inside
                    .components()
                    .next()
                    .is_some_and(|c| names.contains(c.as_os_str()))
            } else {
                false
            }
        })
    }

    fn add(&mut self, target: &Path, name: &OsStr) {
        let at = match self.0.iter().position(|(folder, _)| folder == target) {
            Some(at) => at,
            None => {
                self.0.push((target.to_path_buf(), HashSet::new()));
                self.0.len() - 1
            }
        };
        self.0[at].1.insert(name.to_os_string());
    }
}

pub(crate) fn prepare(
    map: &MirrorMap,
    root: &TaskRoot,
    mode: Mode_,
    created: &mut Created,
    mut plan: Option<&mut Plan>,
) -> Result<Prepared> {
    // Every source and every target is checked before anything is created or copied.
    let task_dir = root.path();
    let mut resolved = Vec::new();
    let mut unmatched = Vec::new();
    let mut folders = FolderCheck::new(map.roots());
    for (index, entry) in map.entries().iter().enumerate() {
        let target = if entry.target.as_os_str().is_empty() {
            task_dir.to_path_buf()
        } else {
            task_dir.join(&entry.target)
        };
        root.check(&target, &entry.source)?;
        let matches = match plan.as_deref_mut() {
            Some(plan) => {
                let mut folders = Vec::new();
                let matches = glob::expand_traced(&entry.source, &mut folders)?;
                plan.entries.push(EntryPlan {
                    target: target.clone(),
                    glob: path_has_glob(&entry.source),
                    folders,
                    matches: matches.clone(),
                });
                matches
            }
            None => glob::expand(&entry.source)?,
        };
        if matches.is_empty() {
            if path_has_glob(&entry.source) {
                unmatched.push(entry.source.clone());
                continue;
            }
            return Err(Error::SourceMissing {
                path: entry.source.clone(),
            });
        }
        let mut found = Vec::with_capacity(matches.len());
        for from in matches {
            let name = from
                .file_name()
                .map(OsStr::to_os_string)
                .ok_or_else(|| Error::Copy {
                    from: from.clone(),
                    to: target.clone(),
                    source: io::Error::new(
                        ErrorKind::InvalidInput,
                        "the source has no file name to copy it under",
                    ),
                })?;
            // A match at the top level is followed when it is a symlink into the roots.
            let meta = folders.top_match(&from)?;
            found.push((from, name, meta));
        }
        resolved.push((index, entry.source.clone(), target, found));
    }

    let ctx = Ctx {
        root,
        roots: map.roots(),
    };
    let mut waves = Vec::new();
    let mut units = Vec::new();
    // Only a map whose matches may meet pays for tracking where each lands.
    let may_meet = matches_may_meet(&resolved);
    let mut landing = Landing::default();
    let mut next_id = 0u32;
    for (index, source, target, found) in resolved {
        root.create_dir_all(&target, &source, created)?;
        let mut files: Vec<(CString, Kind)> = Vec::new();
        let mut files_parent: Option<(u32, PathBuf)> = None;
        // Compared as components: `task/./lib` is `task/lib`.
        let lands_in: PathBuf = target.components().collect();
        for (from, name, meta) in found {
            let to = target.join(&name);
            if may_meet {
                if landing.overlaps(&lands_in, &name) {
                    // Copied after everything before it, so it wins.
                    flush_files(&mut units, files_parent.clone(), &target, &mut files, ctx)?;
                    waves.push(std::mem::take(&mut units));
                    landing = Landing::default();
                }
                landing.add(&lands_in, &name);
            }
            if meta.is_dir() {
                // Its mode and times are recorded when a worker lists it.
                root.make_dir(&to, &from, mode, created)?;
                let id = next_id;
                next_id += 1;
                if let Some(plan) = plan.as_deref_mut() {
                    plan.roots.push((id, from.clone(), to.clone(), index));
                }
                units.push(Unit::Dir {
                    id,
                    src: from,
                    dst: to,
                    parent: None,
                });
            } else {
                let parent = from
                    .parent()
                    .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
                let same = files_parent.as_ref().is_some_and(|(_, p)| *p == parent);
                if !same || files.len() >= TOP_BATCH {
                    let id = match &files_parent {
                        Some((id, _)) if same => *id,
                        _ => {
                            let id = next_id;
                            next_id += 1;
                            if let Some(plan) = plan.as_deref_mut() {
                                plan.top_parents
                                    .push((id, parent.clone(), target.clone(), index));
                            }
                            id
                        }
                    };
                    flush_files(&mut units, files_parent.take(), &target, &mut files, ctx)?;
                    files_parent = Some((id, parent));
                }
                files.push((cstring(&name, &from)?, Kind::File));
            }
        }
        flush_files(&mut units, files_parent, &target, &mut files, ctx)?;
    }
    if let Some(plan) = plan {
        plan.next_id = next_id;
    }
    waves.push(units);
    Ok(Prepared { waves, unmatched })
}

pub(crate) fn flush_files(
    units: &mut Vec<Unit>,
    parent: Option<(u32, PathBuf)>,
    target: &Path,
    files: &mut Vec<(CString, Kind)>,
    ctx: Ctx<'_>,
) -> Result<()> {
    if let Some((id, parent)) = parent
        && !files.is_empty()
    {
        let pair = Arc::new(DirPair::open_top(id, parent, target.to_path_buf(), ctx)?);
        units.push(Unit::Names {
            pair,
            names: std::mem::take(files),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_matches_that_land_on_or_in_each_other_may_meet() {
        let meta = std::fs::metadata("/").unwrap();
        let entry = |target: &str, names: &[&str]| -> Resolved {
            let found = names
                .iter()
                .map(|name| {
                    (
                        PathBuf::from("/s").join(name),
                        OsString::from(name),
                        meta.clone(),
                    )
                })
                .collect();
            (0, PathBuf::from("/s"), PathBuf::from(target), found)
        };
        let meet = |entries: &[Resolved]| matches_may_meet(entries);
        // Thousands of files of one glob, and other names beside them: apart.
        let many: Vec<String> = (0..2000).map(|i| format!("n{i}.cir")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(!meet(&[entry("/t", &many), entry("/t/.", &["m.lib"])]));
        assert!(!meet(&[entry("/t", &["a", "b"]), entry("/t/lib", &["a"])]));
        // One name twice in one folder, however the folder is written.
        assert!(meet(&[entry("/t", &many), entry("/t/.", &["n7.cir"])]));
        // A target inside a match of another entry.
        assert!(meet(&[entry("/t", &["lib"]), entry("/t/lib/deep", &["a"])]));
        assert!(meet(&[entry("/t/lib/deep", &["a"]), entry("/t", &["lib"])]));
    }
}

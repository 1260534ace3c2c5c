//! Where the copies of a refresh land, and so in which order they run. A mirror copies the
//! later of two folders landing on one place over the earlier (`copy/plan.rs`'s waves:
//! the later map entry, within one entry the later source folder), and a refresh must give
//! the same: a source can gain a file or a folder where another folder of the task lands
//! already (a later map entry's target, another match's tree). So the refresh's copies are
//! put in [`Group`]s, one per destination folder (a new folder: its whole tree), and groups
//! that may meet run in waves in that order ([`waves`]); folders of the manifest that land
//! inside a new folder copied before them are copied again after it ([`copied_again`]),
//! and a new file is not copied over a later folder's unchanged one ([`LaterFiles`]);
//! folder modes and times are set in that order too ([`restored_attrs`]).
//! Deciding what changed is `changes`, copying is `apply`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CStr;
use std::path::Path;

use super::changes::NewDir;
use super::manifest::{Manifest, Origin, entries_of};
use crate::copy::Unit;

/// When, among folders landing on one place, a folder is copied: by map entry, then,
/// within one entry, by source folder (what a mirror does, and `Shadows` assumes).
type Rank<'a> = (usize, &'a Path);

/// Which folder a [`Group`] copies from, to tell its [`Rank`].
#[derive(Clone, Copy)]
pub(super) enum CopiedFrom<'a> {
    /// A folder of the manifest.
    Dir(u32),
    /// A new parent of top-level files: map entry and source folder.
    Top(usize, &'a Path),
    /// A new folder copied as a tree.
    New(&'a NewDir),
}

/// The copies of a refresh into one destination folder, or into a new folder's tree.
pub(super) struct Group<'a> {
    pub(super) from: CopiedFrom<'a>,
    pub(super) dst: &'a Path,
    pub(super) units: Vec<Unit>,
}

impl Group<'_> {
    /// Whether it writes beneath its destination too (a new folder's tree).
    fn tree(&self) -> bool {
        matches!(self.from, CopiedFrom::New(_))
    }
}

/// The ranks of the manifest's folders and of new ones; the map entry of every folder is
/// worked out only when first asked (it walks every folder).
pub(super) struct Ranks<'m> {
    m: &'m Manifest,
    entry_of: Option<Vec<usize>>,
}

impl<'m> Ranks<'m> {
    /// The ranks of the folders of `m`, and of new folders beside them.
    pub(super) fn new(m: &'m Manifest) -> Ranks<'m> {
        Ranks { m, entry_of: None }
    }

    fn entry_of(&mut self, id: usize) -> usize {
        let m = self.m;
        self.entry_of.get_or_insert_with(|| entries_of(&m.dirs))[id]
    }

    /// The rank of what `from` copies from.
    pub(super) fn of<'a>(&mut self, from: CopiedFrom<'a>) -> Rank<'a>
    where
        'm: 'a,
    {
        match from {
            CopiedFrom::Dir(id) => (
                self.entry_of(id as usize),
                self.m.dirs[id as usize].src.as_path(),
            ),
            CopiedFrom::Top(entry, src) => (entry, src),
            CopiedFrom::New(nd) => (self.entry_of_new(nd), nd.src.as_path()),
        }
    }

    /// The map entry a new folder is copied for: its own match's, or, new in a mirrored
    /// folder, that folder's.
    fn entry_of_new(&mut self, nd: &NewDir) -> usize {
        match nd.origin {
            Origin::Root { entry } | Origin::Top { entry } => entry,
            Origin::Sub => {
                let (Some(dst), Some(src)) = (nd.dst.parent(), nd.src.parent()) else {
                    return 0;
                };
                let m = self.m;
                let parent = at(m, dst).find(|&id| m.dirs[id as usize].src == src);
                parent.map_or(0, |id| self.entry_of(id as usize))
            }
        }
    }
}

/// The folders of `m` whose destination is `dst`.
/// The source folders whose mode and times a refresh gives to the places the folders of
/// `restore` land on, as (source, destination), in the order to set them (deepest first is
/// the caller's): where several folders land on one place, a fresh mirror gives it the
/// last one's, so restoring one restores every live one there in rank order, each followed
/// by the matching folder of any new folder of a later rank on or around it; and a folder
/// gone at the source hands its place back to the live ones.
pub(super) fn restored_attrs<'m>(
    m: &'m Manifest,
    restore: &BTreeSet<u32>,
    dead_dirs: &[bool],
    new_dirs: &'m [NewDir],
    ranks: &mut Ranks<'m>,
) -> Vec<(Cow<'m, Path>, &'m Path)> {
    // Mirrored folders only: a top folder is a target, whose attributes no source gives.
    let live_at = |dst: &Path| {
        at(m, dst)
            .filter(|&id| !dead_dirs[id as usize] && !m.dirs[id as usize].is_top())
            .collect::<Vec<_>>()
    };
    let mut ids = BTreeSet::new();
    for &id in restore {
        let Some(d) = m.dirs.get(id as usize) else {
            continue;
        };
        ids.insert(id);
        if m.overlaps {
            ids.extend(live_at(&d.dst));
        }
    }
    if m.overlaps {
        for (id, _) in dead_dirs.iter().enumerate().filter(|(_, dead)| **dead) {
            ids.extend(live_at(&m.dirs[id].dst));
        }
    }
    let mut ids: Vec<u32> = ids.into_iter().collect();
    if ids.len() > 1 && m.overlaps {
        ids.sort_by_cached_key(|&id| ranks.of(CopiedFrom::Dir(id)));
    }
    let mut new_at: HashMap<&Path, Vec<&NewDir>> = HashMap::new();
    for nd in new_dirs {
        new_at.entry(nd.dst.as_path()).or_default().push(nd);
    }
    let mut attrs = Vec::new();
    for id in ids {
        let d = &m.dirs[id as usize];
        attrs.push((Cow::Borrowed(d.src.as_path()), d.dst.as_path()));
        let around = d.dst.ancestors().filter_map(|at| new_at.get(at)).flatten();
        for nd in around {
            let Ok(below) = d.dst.strip_prefix(&nd.dst) else {
                continue;
            };
            if ranks.of(CopiedFrom::New(nd)) > ranks.of(CopiedFrom::Dir(id)) {
                let src = nd.src.join(below);
                if src.is_dir() {
                    attrs.push((Cow::Owned(src), d.dst.as_path()));
                }
            }
        }
    }
    attrs
}

fn at<'m>(m: &'m Manifest, dst: &Path) -> impl Iterator<Item = u32> + 'm {
    m.by_dst.get(dst).into_iter().flatten().copied()
}

/// The live folders of `m` landing inside new folder `nd` that are not copied from inside
/// it (those inside one destination are a run of the sorted folders).
fn inside<'a>(
    m: &'a Manifest,
    nd: &'a NewDir,
    dead_dirs: &'a [bool],
) -> impl Iterator<Item = usize> + 'a {
    let from = m.dirs.partition_point(|d| d.dst < nd.dst);
    (from..m.dirs.len())
        .take_while(move |&id| m.dirs[id].dst.starts_with(&nd.dst))
        .filter(move |&id| {
            !dead_dirs.get(id).copied().unwrap_or(false) && !m.dirs[id].src.starts_with(&nd.src)
        })
}

/// The live folders of the manifest that land inside a new folder copied before them: its
/// tree overwrites their files, so they are copied again, whole, after it.
pub(super) fn copied_again(
    m: &Manifest,
    new_dirs: &[NewDir],
    dead_dirs: &[bool],
    ranks: &mut Ranks<'_>,
) -> BTreeSet<u32> {
    let mut again = BTreeSet::new();
    for nd in new_dirs {
        let mut inside = inside(m, nd, dead_dirs).peekable();
        if inside.peek().is_none() {
            continue;
        }
        let rank = ranks.of(CopiedFrom::New(nd));
        for id in inside {
            if ranks.of(CopiedFrom::Dir(id as u32)) > rank {
                again.insert(id as u32);
            }
        }
    }
    again
}

/// The groups' copies in waves, each run after the one before: a group runs after every
/// group of an earlier rank that it may meet (the same destination folder, or one inside
/// a new folder's tree), so the later of two files landing on one place is copied last.
/// Groups that cannot meet share a wave; when none can, there is one.
pub(super) fn waves(groups: Vec<Group<'_>>, ranks: &mut Ranks<'_>) -> Vec<Vec<Unit>> {
    if !any_meet(&groups) {
        return vec![groups.into_iter().flat_map(|g| g.units).collect()];
    }
    let mut ranked: Vec<(Rank<'_>, Group<'_>)> =
        groups.into_iter().map(|g| (ranks.of(g.from), g)).collect();
    ranked.sort_by(|a, b| a.0.cmp(&b.0));
    // The wave after the last one that wrote into each destination, and the new trees.
    let mut after_dst: BTreeMap<&Path, usize> = BTreeMap::new();
    let mut after_tree: Vec<(&Path, usize)> = Vec::new();
    let mut waves: Vec<Vec<Unit>> = Vec::new();
    for (_, group) in ranked {
        let mut wave = after_dst.get(group.dst).copied().unwrap_or(0);
        for &(tree, next) in &after_tree {
            if group.dst.starts_with(tree) {
                wave = wave.max(next);
            }
        }
        if group.tree() {
            for (_, &next) in after_dst
                .range(group.dst..)
                .take_while(|(dst, _)| dst.starts_with(group.dst))
            {
                wave = wave.max(next);
            }
            after_tree.push((group.dst, wave + 1));
        }
        let next = after_dst.entry(group.dst).or_default();
        *next = (*next).max(wave + 1);
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        waves[wave].extend(group.units);
    }
    waves
}

/// Whether two groups may meet: two with one destination, or one inside a new tree.
fn any_meet(groups: &[Group<'_>]) -> bool {
    let mut dsts: Vec<&Path> = groups.iter().map(|g| g.dst).collect();
    dsts.sort();
    if dsts.windows(2).any(|w| w[0] == w[1]) {
        return true;
    }
    groups.iter().filter(|g| g.tree()).any(|tree| {
        let from = dsts.partition_point(|d| *d < tree.dst);
        dsts[from..]
            .iter()
            .take_while(|d| d.starts_with(tree.dst))
            .nth(1)
            .is_some()
    })
}

/// The files of the manifest's folders that a new file landing on the same place must not
/// be copied over: those of the folders copied after it, unchanged.
pub(super) struct LaterFiles<'m> {
    m: &'m Manifest,
    dead_dirs: &'m [bool],
    dead_entries: &'m [bool],
}

impl<'m> LaterFiles<'m> {
    /// Of the live folders and entries of `m`.
    pub(super) fn new(m: &'m Manifest, dead_dirs: &'m [bool], dead_entries: &'m [bool]) -> Self {
        LaterFiles {
            m,
            dead_dirs,
            dead_entries,
        }
    }

    /// Whether file `name` of a new parent of top-level files (`from`) copied into `dst`
    /// lands where a live file of a later folder of the manifest lands.
    pub(super) fn hide(
        &self,
        from: CopiedFrom<'_>,
        dst: &Path,
        name: &CStr,
        ranks: &mut Ranks<'_>,
    ) -> bool {
        let m = self.m;
        let mut others = at(m, dst)
            .filter(|&id| {
                !self.dead_dirs[id as usize]
                    && m.find(id, name)
                        .is_some_and(|i| !self.dead_entries[i as usize])
            })
            .peekable();
        if others.peek().is_none() {
            return false;
        }
        let rank = ranks.of(from);
        others.any(|id| ranks.of(CopiedFrom::Dir(id)) > rank)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::fsops::Sig;
    use crate::persistent::manifest::DirRec;

    fn dir(src: &str, dst: &str, origin: Origin) -> Option<DirRec> {
        Some(DirRec {
            src: PathBuf::from(src),
            dst: PathBuf::from(dst),
            sig: Sig::default(),
            origin,
            start: 0,
            end: 0,
        })
    }

    fn names(waves: &[Vec<Unit>]) -> Vec<Vec<String>> {
        waves
            .iter()
            .map(|wave| {
                wave.iter()
                    .map(|u| match u {
                        Unit::Dir { src, .. } => src.display().to_string(),
                        Unit::Names { .. } => "names".to_owned(),
                    })
                    .collect()
            })
            .collect()
    }

    fn unit(src: &str) -> Unit {
        Unit::Dir {
            id: 0,
            src: PathBuf::from(src),
            dst: PathBuf::new(),
            parent: None,
        }
    }

    #[test]
    fn groups_that_meet_run_in_rank_order_and_the_others_together() {
        // /s/a → /t (entry 0), /s/c → /t/c (entry 1), with /s/c/q inside it.
        let m = Manifest::build(
            vec![
                dir("/s/a", "/t", Origin::Root { entry: 0 }),
                dir("/s/c", "/t/c", Origin::Root { entry: 1 }),
                dir("/s/c/q", "/t/c/q", Origin::Sub),
            ],
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let new = NewDir {
            src: PathBuf::from("/s/a/c"),
            dst: PathBuf::from("/t/c"),
            origin: Origin::Sub,
        };
        let other = NewDir {
            src: PathBuf::from("/s/a/z"),
            dst: PathBuf::from("/t/z"),
            origin: Origin::Sub,
        };
        let mut ranks = Ranks::new(&m);
        let dead = [false; 3];
        let again = copied_again(&m, &[new, other], &dead, &mut ranks);
        assert_eq!(again, BTreeSet::from([1, 2]), "both of entry 1 land inside");

        let (new, other) = (
            NewDir {
                src: PathBuf::from("/s/a/c"),
                dst: PathBuf::from("/t/c"),
                origin: Origin::Sub,
            },
            NewDir {
                src: PathBuf::from("/s/a/z"),
                dst: PathBuf::from("/t/z"),
                origin: Origin::Sub,
            },
        );
        let groups = vec![
            Group {
                from: CopiedFrom::Dir(2),
                dst: Path::new("/t/c/q"),
                units: vec![unit("/s/c/q")],
            },
            Group {
                from: CopiedFrom::New(&new),
                dst: &new.dst,
                units: vec![unit("/s/a/c")],
            },
            Group {
                from: CopiedFrom::New(&other),
                dst: &other.dst,
                units: vec![unit("/s/a/z")],
            },
            Group {
                from: CopiedFrom::Dir(1),
                dst: Path::new("/t/c"),
                units: vec![unit("/s/c")],
            },
        ];
        assert_eq!(
            names(&waves(groups, &mut ranks)),
            vec![vec!["/s/a/c", "/s/a/z"], vec!["/s/c", "/s/c/q"]]
        );
    }

    #[test]
    fn groups_that_cannot_meet_are_one_wave() {
        let m = Manifest::build(Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut ranks = Ranks::new(&m);
        let groups = vec![
            Group {
                from: CopiedFrom::Top(1, Path::new("/s/b")),
                dst: Path::new("/t/b"),
                units: vec![unit("/s/b")],
            },
            Group {
                from: CopiedFrom::Top(0, Path::new("/s/a")),
                dst: Path::new("/t/a"),
                units: vec![unit("/s/a")],
            },
        ];
        assert_eq!(
            names(&waves(groups, &mut ranks)),
            vec![vec!["/s/b", "/s/a"]]
        );
    }
}

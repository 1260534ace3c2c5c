//! Where a refresh's new folders land among the folders already mirrored, and so in which
//! order they are copied. A source can gain a folder whose destination another folder of
//! the task lands on already (a later map entry's target, or another match's tree). A
//! mirror copies the later of two such folders over the earlier (`copy/plan.rs`'s waves),
//! so a refresh must too: a new folder is copied after the changes of the folders before
//! it, and the folders after it that land inside it are copied again after it. Only what
//! a refresh copies is ordered here; deciding what changed is `changes`, copying `apply`.

use std::path::Path;

use super::changes::NewDir;
use super::manifest::{Manifest, Origin, entries_of};

/// One step of the ordered part of a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Late {
    /// Copy new folder `index` (of the refresh's new folders) as a tree.
    NewDir(usize),
    /// Copy every file of manifest folder `id` again, over what a new folder put there.
    Recopy(u32),
}

/// The order of a refresh's new folders among the folders already mirrored.
#[derive(Debug, Default)]
pub(super) struct Landing {
    /// Per new folder: it lands where another folder lands (copied in [`Landing::steps`]);
    /// a new folder that does not is copied with the rest of the refresh.
    pub(super) ordered: Vec<bool>,
    /// The ordered new folders and the folders copied again after them, earliest first.
    pub(super) steps: Vec<Late>,
}

/// When, among folders landing on one place, a folder is copied: by map entry, then, within
/// one entry, by source folder (what a mirror does, and `Shadows` assumes).
type Rank<'a> = (usize, &'a Path);

impl Landing {
    /// Orders `new_dirs` among the live folders of `m` (`dead_dirs` are dropped).
    pub(super) fn of(m: &Manifest, new_dirs: &[NewDir], dead_dirs: &[bool]) -> Landing {
        let mut landing = Landing {
            ordered: vec![false; new_dirs.len()],
            steps: Vec::new(),
        };
        if new_dirs.is_empty() {
            return landing;
        }
        // New folders landing inside one another: sorted by destination, a folder's
        // descendants follow it.
        let mut by_dst: Vec<usize> = (0..new_dirs.len()).collect();
        by_dst.sort_by(|&a, &b| new_dirs[a].dst.cmp(&new_dirs[b].dst));
        let mut outer: Option<usize> = None;
        for &i in &by_dst {
            match outer {
                Some(o) if new_dirs[i].dst.starts_with(&new_dirs[o].dst) => {
                    landing.ordered[o] = true;
                    landing.ordered[i] = true;
                }
                _ => outer = Some(i),
            }
        }
        let inside = |nd| inside(m, nd, dead_dirs);
        if !landing.ordered.iter().any(|&o| o)
            && new_dirs.iter().all(|nd| inside(nd).next().is_none())
        {
            return landing;
        }
        let entry_of = entries_of(&m.dirs);
        let rank_of_dir = |id: usize| -> Rank<'_> { (entry_of[id], m.dirs[id].src.as_path()) };
        let rank_of_new = |nd: &NewDir| -> usize {
            match nd.origin {
                Origin::Root { entry } | Origin::Top { entry } => entry,
                // A folder new in a mirrored folder belongs to that folder's map entry.
                Origin::Sub => {
                    let (Some(dst), Some(src)) = (nd.dst.parent(), nd.src.parent()) else {
                        return 0;
                    };
                    let from = m.dirs.partition_point(|d| d.dst.as_path() < dst);
                    (from..m.dirs.len())
                        .take_while(|&id| m.dirs[id].dst == dst)
                        .find(|&id| m.dirs[id].src == src)
                        .map_or(0, |id| entry_of[id])
                }
            }
        };
        let mut ranked: Vec<(Rank<'_>, Late)> = Vec::new();
        let mut recopied = vec![false; m.dirs.len()];
        for (i, nd) in new_dirs.iter().enumerate() {
            let rank = (rank_of_new(nd), nd.src.as_path());
            for id in inside(nd) {
                landing.ordered[i] = true;
                // Earlier folders are simply copied over; later ones again after it.
                if rank_of_dir(id) > rank && !recopied[id] {
                    recopied[id] = true;
                    ranked.push((rank_of_dir(id), Late::Recopy(id as u32)));
                }
            }
            if landing.ordered[i] {
                ranked.push((rank, Late::NewDir(i)));
            }
        }
        ranked.sort_by(|a, b| a.0.cmp(&b.0));
        landing.steps = ranked.into_iter().map(|(_, step)| step).collect();
        landing
    }

    /// The steps in waves, each run after the one before: every new folder alone, and the
    /// folders copied again between two new folders together (what each copies again is
    /// what no other folder hides, so they cannot meet).
    pub(super) fn waves(&self) -> Vec<Vec<Late>> {
        let mut waves: Vec<Vec<Late>> = Vec::new();
        for &step in &self.steps {
            match (step, waves.last_mut()) {
                (Late::Recopy(_), Some(wave)) if matches!(wave.last(), Some(Late::Recopy(_))) => {
                    wave.push(step);
                }
                _ => waves.push(vec![step]),
            }
        }
        waves
    }
}

/// The live folders of `m` landing inside new folder `nd` that are not copied from inside
/// it (the manifest's folders are sorted by destination, so those inside one are a run).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_new_folder_is_a_wave_of_its_own_and_recopies_between_two_share_one() {
        let landing = Landing {
            ordered: vec![true, true],
            steps: vec![
                Late::Recopy(4),
                Late::NewDir(1),
                Late::Recopy(2),
                Late::Recopy(7),
                Late::NewDir(0),
                Late::Recopy(3),
            ],
        };
        assert_eq!(
            landing.waves(),
            vec![
                vec![Late::Recopy(4)],
                vec![Late::NewDir(1)],
                vec![Late::Recopy(2), Late::Recopy(7)],
                vec![Late::NewDir(0)],
                vec![Late::Recopy(3)],
            ]
        );
        assert!(Landing::default().waves().is_empty());
    }
}

//! The manifest as saved in the task folder: destinations relative to the task folder (it
//! may be reached by another path next time), and the map it was made from.
//! It must not know how a refresh runs.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::manifest::{DirRec, EntryRec, GlobRec, Manifest, Origin};
use crate::fsops::{Kind, Sig, within};
use crate::map::{MirrorMap, check_target};

/// Bumped whenever the layout changes: an older manifest is then not trusted.
const VERSION: u32 = 1;

fn bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}

fn path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

#[derive(Serialize, Deserialize)]
struct SavedSig([u64; 2], [i64; 5], u32, u64);

impl SavedSig {
    fn of(s: &Sig) -> SavedSig {
        SavedSig(
            [s.dev, s.ino],
            [s.size, s.mtime, s.mtime_ns, s.ctime, s.ctime_ns],
            s.mode,
            s.nlink,
        )
    }

    fn sig(&self) -> Sig {
        let SavedSig([dev, ino], [size, mtime, mtime_ns, ctime, ctime_ns], mode, nlink) = *self;
        Sig {
            dev,
            ino,
            size,
            mtime,
            mtime_ns,
            ctime,
            ctime_ns,
            mode,
            nlink,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SavedDir {
    src: Vec<u8>,
    /// Relative to the task folder.
    dst: Vec<u8>,
    sig: SavedSig,
    /// 0: inside a copied folder; 1: a copied folder of entry `entry`; 2: the folder of
    /// top-level file matches of entry `entry`.
    origin: u8,
    entry: usize,
}

#[derive(Serialize, Deserialize)]
struct SavedEntry {
    dir: u32,
    name: Vec<u8>,
    link: bool,
    sig: SavedSig,
}

#[derive(Serialize, Deserialize)]
struct SavedGlob {
    entry: usize,
    /// Relative to the task folder.
    target: Vec<u8>,
    folders: Vec<(Vec<u8>, Option<SavedSig>)>,
    matches: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Saved {
    version: u32,
    map: Vec<(Vec<u8>, Vec<u8>)>,
    dirs: Vec<SavedDir>,
    entries: Vec<SavedEntry>,
    globs: Vec<SavedGlob>,
    literal: Vec<bool>,
}

fn map_of(map: &MirrorMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    map.entries()
        .iter()
        .map(|e| (bytes(&e.source), bytes(&e.target)))
        .collect()
}

fn rel(task_dir: &Path, dst: &Path) -> Vec<u8> {
    bytes(dst.strip_prefix(task_dir).unwrap_or(dst))
}

impl Saved {
    pub(super) fn of(map: &MirrorMap, task_dir: &Path, m: &Manifest) -> Saved {
        Saved {
            version: VERSION,
            map: map_of(map),
            dirs: m
                .dirs
                .iter()
                .map(|d| {
                    let (origin, entry) = match d.origin {
                        Origin::Sub => (0, 0),
                        Origin::Root { entry } => (1, entry),
                        Origin::Top { entry } => (2, entry),
                    };
                    SavedDir {
                        src: bytes(&d.src),
                        dst: rel(task_dir, &d.dst),
                        sig: SavedSig::of(&d.sig),
                        origin,
                        entry,
                    }
                })
                .collect(),
            entries: m
                .entries
                .iter()
                .map(|e| SavedEntry {
                    dir: e.dir,
                    name: e.name.as_bytes().to_vec(),
                    link: e.kind == Kind::Link,
                    sig: SavedSig::of(&e.sig),
                })
                .collect(),
            globs: m
                .globs
                .iter()
                .map(|g| SavedGlob {
                    entry: g.entry,
                    target: rel(task_dir, &g.target),
                    folders: g
                        .folders
                        .iter()
                        .map(|(p, s)| (bytes(p), s.as_ref().map(SavedSig::of)))
                        .collect(),
                    matches: g.matches.iter().map(|p| bytes(p)).collect(),
                })
                .collect(),
            literal: m.literal.clone(),
        }
    }

    /// The manifest, when it was made from `map` and holds up: every destination a
    /// plain relative path in the task folder, every source absolute and inside the
    /// map's roots (the file lies in a folder a task may write to).
    pub(super) fn into_manifest(self, map: &MirrorMap, task_dir: &Path) -> Option<Manifest> {
        let reject = |why: &str| {
            tracing::warn!(
                "the mirror manifest in `{}` {why}; mirroring everything again",
                task_dir.display()
            );
            None
        };
        if self.version != VERSION {
            return reject("is of another parvm version");
        }
        if self.map != map_of(map) || self.literal.len() != map.entries().len() {
            return reject("is of another mirror map");
        }
        let roots = map.roots();
        let src_ok = |p: &Path| p.is_absolute() && within(roots, p);
        let dst_ok = |b: &[u8]| {
            let p = path(b);
            check_target(&p).is_ok_and(|normal| normal == p)
        };
        let mut dirs = Vec::with_capacity(self.dirs.len());
        for d in self.dirs {
            let src = path(&d.src);
            let entry_ok = d.entry < map.entries().len();
            if !src_ok(&src) || !dst_ok(&d.dst) || !entry_ok {
                return reject("names a folder outside the mirrored roots or the task folder");
            }
            let origin = match d.origin {
                0 => Origin::Sub,
                1 => Origin::Root { entry: d.entry },
                2 => Origin::Top { entry: d.entry },
                _ => return reject("is damaged"),
            };
            dirs.push(Some(DirRec {
                src,
                dst: task_dir.join(path(&d.dst)),
                sig: d.sig.sig(),
                origin,
                start: 0,
                end: 0,
            }));
        }
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in self.entries {
            let name = match CString::new(e.name) {
                Ok(name) if (e.dir as usize) < dirs.len() && !name.as_bytes().contains(&b'/') => {
                    name
                }
                _ => return reject("is damaged"),
            };
            entries.push(EntryRec {
                dir: e.dir,
                name,
                kind: if e.link { Kind::Link } else { Kind::File },
                sig: e.sig.sig(),
                made: None,
            });
        }
        let mut globs = Vec::with_capacity(self.globs.len());
        for g in self.globs {
            let folders: Vec<(PathBuf, Option<Sig>)> = g
                .folders
                .iter()
                .map(|(p, s)| (path(p), s.as_ref().map(SavedSig::sig)))
                .collect();
            let matches: Vec<PathBuf> = g.matches.iter().map(|p| path(p)).collect();
            if !dst_ok(&g.target)
                || g.entry >= map.entries().len()
                || !folders.iter().all(|(p, _)| src_ok(p))
                || !matches.iter().all(|p| src_ok(p))
            {
                return reject("names a folder outside the mirrored roots or the task folder");
            }
            globs.push(GlobRec {
                entry: g.entry,
                target: task_dir.join(path(&g.target)),
                folders,
                matches,
            });
        }
        Some(Manifest::build(dirs, entries, globs, self.literal))
    }
}

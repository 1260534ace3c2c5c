//! Turning a snapshot into the snapshot of a newer manifest in place, touching only what
//! changed: the Merkle digests tell unchanged subtrees apart without looking into them, so
//! one changed file costs one link and the folders above it, not a tree of links.
//!
//! Only a snapshot nobody else holds is patched, after it was taken out of the cache
//! ([`HostCache::take_over`](crate::cache::HostCache)), so no reader ever sees it half done.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{BlobSource, leaf, set_attrs};
use crate::cache::{HostCache, remove_tree};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, Node, NodeKind};

/// What turns the tree of one manifest into that of another.
#[derive(Default)]
pub(crate) struct Patch<'m> {
    /// Entries to remove (files, symlinks, whole folders), relative to the root.
    remove: Vec<PathBuf>,
    /// Entries to make, parents before children; a folder is made empty and filled by the
    /// entries after it.
    pub(super) make: Vec<(PathBuf, &'m Node)>,
    /// Folders kept whose entries or attributes change, parents first (the root as "").
    touched: Vec<(PathBuf, &'m Node)>,
}

impl<'m> Patch<'m> {
    /// The patch from `old` to `new`.
    pub(crate) fn between(old: &Manifest, new: &'m Manifest) -> Patch<'m> {
        let mut patch = Patch::default();
        if old.root_digest() != new.root_digest() {
            patch.folder(old.root(), new.root(), PathBuf::new());
        }
        patch
    }

    /// How many entries the patch makes or removes (a folder made counts with everything
    /// in it; a folder removed counts once).
    pub(crate) fn changes(&self) -> usize {
        self.make.len() + self.remove.len()
    }

    /// Two folders at `at` whose digests differ.
    fn folder(&mut self, old: &Node, new: &'m Node, at: PathBuf) {
        let (a, b) = (old.children(), new.children());
        self.touched.push((at.clone(), new));
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.name().cmp(y.name()),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    self.remove.push(at.join(OsStr::from_bytes(a[i].name())));
                    i += 1;
                }
                Ordering::Greater => {
                    self.add(&b[j], at.join(OsStr::from_bytes(b[j].name())));
                    j += 1;
                }
                Ordering::Equal => {
                    let (x, y) = (&a[i], &b[j]);
                    let path = at.join(OsStr::from_bytes(y.name()));
                    let both_folders = matches!(x.kind(), NodeKind::Dir { .. })
                        && matches!(y.kind(), NodeKind::Dir { .. });
                    // Equal digests: the same subtree, left alone.
                    if x.digest() != y.digest() {
                        if both_folders {
                            self.folder(x, y, path);
                        } else {
                            self.remove.push(path.clone());
                            self.add(y, path);
                        }
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    /// `node` and everything beneath it, new at `at`.
    fn add(&mut self, node: &'m Node, at: PathBuf) {
        self.make.push((at.clone(), node));
        for child in node.children() {
            self.add(child, at.join(OsStr::from_bytes(child.name())));
        }
    }

    /// Applies the patch to the tree at `root` (the old manifest's tree, private to this
    /// caller); `sources` has every blob of [`make`](Patch::make), checked. Gives the files
    /// made as links to their blobs.
    pub(super) fn apply(
        &self,
        cache: &HostCache,
        root: &Path,
        root_node: &Node,
        sources: &HashMap<Digest, BlobSource>,
    ) -> Result<Vec<(PathBuf, Digest)>> {
        // Opened up for writing first: a read-only folder gets its mode back at the end.
        for (path, _) in &self.touched {
            set_private(&root.join(path))?;
        }
        for path in &self.remove {
            remove_tree(&root.join(path))?;
        }
        let mut linked = Vec::new();
        for (path, node) in &self.make {
            let to = root.join(path);
            if matches!(node.kind(), NodeKind::Dir { .. }) {
                std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                    .create(&to)
                    .map_err(|e| Error::io("create folder", &to, e))?;
            } else if leaf(cache, path, node, root, sources)?
                && let NodeKind::File { digest, .. } = node.kind()
            {
                linked.push((path.clone(), *digest));
            }
        }
        // Modes and times deepest first: writing into a folder moves its time.
        let mut folders: Vec<&(PathBuf, &Node)> = self
            .make
            .iter()
            .filter(|(_, n)| matches!(n.kind(), NodeKind::Dir { .. }))
            .chain(self.touched.iter())
            .collect();
        folders.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
        for (path, node) in folders {
            if path.as_os_str().is_empty() {
                // The root stays private to the cache's owner; its time is the manifest's.
                set_attrs(root, 0o700, root_node.mtime())?;
            } else {
                set_attrs(&root.join(path), node.mode(), node.mtime())?;
            }
        }
        Ok(linked)
    }
}

fn set_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("open up", path, e))
}

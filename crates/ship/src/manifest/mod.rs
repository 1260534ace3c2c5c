//! [`Manifest`]: what a mirror map matches beneath one mirrored root, as a Merkle tree.

mod codec;
mod node;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use node::{MAX_NAME, MAX_TARGET, Node, NodeKind, Timestamp};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Deepest nesting a manifest may have (folders below the root).
pub const MAX_DEPTH: usize = 256;
/// Most entries a manifest may have.
pub const MAX_ENTRIES: u64 = 16 << 20;

/// One mirrored root as shipped: the entries the map's sources match beneath it, with their
/// ancestor folders, as a tree of [`Node`]s whose root is the mirrored root itself (empty
/// name). Its [`root_digest`](Manifest::root_digest) changes whenever any entry's content,
/// mode, time, name or kind does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    root: Node,
    total_bytes: u64,
    file_count: u64,
}

/// One entry of [`Manifest::entries`]: its path relative to the root and its node.
pub type Entry<'a> = (PathBuf, &'a Node);

impl Manifest {
    /// A manifest whose root folder is `root`.
    ///
    /// # Errors
    /// [`Error::ManifestInvalid`] when `root` is not a folder with the empty name, or the
    /// tree is deeper than [`MAX_DEPTH`] or larger than [`MAX_ENTRIES`].
    pub fn new(root: Node) -> Result<Manifest> {
        if !root.name().is_empty() || !matches!(root.kind(), NodeKind::Dir { .. }) {
            return Err(Error::ManifestInvalid {
                path: PathBuf::from("."),
                reason: "the root of a manifest must be a folder with the empty name".into(),
            });
        }
        let (mut total_bytes, mut file_count, mut entries) = (0u64, 0u64, 0u64);
        let mut stack = vec![(&root, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            entries += 1;
            if depth > MAX_DEPTH || entries > MAX_ENTRIES {
                return Err(Error::ManifestInvalid {
                    path: PathBuf::from(OsStr::from_bytes(node.name())),
                    reason: format!("more than {MAX_DEPTH} levels or {MAX_ENTRIES} entries"),
                });
            }
            if let NodeKind::File { size, .. } = node.kind() {
                total_bytes = total_bytes.saturating_add(*size);
                file_count += 1;
            }
            stack.extend(node.children().iter().map(|c| (c, depth + 1)));
        }
        Ok(Manifest {
            root,
            total_bytes,
            file_count,
        })
    }

    /// The root folder's node.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// The Merkle digest of the whole tree.
    pub fn root_digest(&self) -> Digest {
        self.root.digest()
    }

    /// Bytes of all files (each file counted, even when two have one content).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Number of files.
    pub fn file_count(&self) -> u64 {
        self.file_count
    }

    /// Every entry below the root, parents before children, siblings in name order, with
    /// its path relative to the root.
    pub fn entries(&self) -> Vec<Entry<'_>> {
        let mut out = Vec::new();
        let mut stack: Vec<(PathBuf, &Node)> = self
            .root
            .children()
            .iter()
            .rev()
            .map(|c| (PathBuf::from(OsStr::from_bytes(c.name())), c))
            .collect();
        while let Some((path, node)) = stack.pop() {
            for child in node.children().iter().rev() {
                stack.push((path.join(OsStr::from_bytes(child.name())), child));
            }
            out.push((path, node));
        }
        out
    }

    /// Each distinct blob once: digest, size, and the first path (in [`entries`](Manifest::entries)
    /// order) that has it, for messages.
    pub fn blobs(&self) -> Vec<(Digest, u64, PathBuf)> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (path, node) in self.entries() {
            if let NodeKind::File { size, digest } = node.kind()
                && seen.insert(*digest, ()).is_none()
            {
                out.push((*digest, *size, path));
            }
        }
        out
    }

    /// Each distinct blob of the files that are not in `older` as they are here (same
    /// path, same node digest), with its size and first path (in
    /// [`entries`](Manifest::entries) order): every blob `self` has that `older` lacks,
    /// and maybe some it has (a file only moved or touched). A subtree whose digest
    /// `older` has at the same path is skipped whole, so the walk costs what changed and
    /// the folders on its way, not the size of the tree.
    pub fn blobs_changed_since(&self, older: &Manifest) -> Vec<(Digest, u64, PathBuf)> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![(PathBuf::new(), &self.root, Some(&older.root))];
        while let Some((path, node, was)) = stack.pop() {
            if was.is_some_and(|was| was.digest() == node.digest()) {
                continue;
            }
            match node.kind() {
                NodeKind::File { size, digest } => {
                    if seen.insert(*digest) {
                        out.push((*digest, *size, path));
                    }
                }
                NodeKind::Dir { .. } => {
                    // A file or symlink that became a folder has no children to compare.
                    let had = was.map_or(&[][..], Node::children);
                    for child in node.children().iter().rev() {
                        let was_child = had
                            .binary_search_by(|c| c.name().cmp(child.name()))
                            .ok()
                            .map(|i| &had[i]);
                        stack.push((path.join(OsStr::from_bytes(child.name())), child, was_child));
                    }
                }
                NodeKind::Symlink { .. } => {}
            }
        }
        out
    }

    /// This manifest with the entries at these paths (relative to the root) replaced by
    /// these nodes of the same names: what a scan would make of the tree when only those
    /// entries changed, at the cost of a copy and the digests of the folders on their way.
    ///
    /// # Errors
    /// [`Error::ManifestInvalid`] when a path names no entry or its node another name.
    pub(crate) fn with_replaced(&self, changes: Vec<(PathBuf, Node)>) -> Result<Manifest> {
        let mut root = self.root.clone();
        for (path, node) in changes {
            let names: Vec<&[u8]> = path
                .components()
                .map(|c| c.as_os_str().as_bytes())
                .collect();
            if !root.replace_at(&names, node) {
                return Err(Error::ManifestInvalid {
                    path,
                    reason: "no entry of the manifest is there to replace".into(),
                });
            }
        }
        Manifest::new(root)
    }

    /// The node at `path` (relative to the root), if any.
    pub fn find(&self, path: &Path) -> Option<&Node> {
        let mut node = &self.root;
        for part in path.components() {
            let name = part.as_os_str().as_bytes();
            let children = node.children();
            node = &children[children.binary_search_by(|c| c.name().cmp(name)).ok()?];
        }
        Some(node)
    }

    /// The manifest as bytes for a peer; [`decode`](Manifest::decode) reads them back.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Reads a manifest a peer sent, validating everything: names non-empty, at most
    /// [`MAX_NAME`] bytes, free of `/` and NUL, not `.` or `..`; children sorted and unique;
    /// depth and entry count bounded; modes and times in range; nothing allocated beyond
    /// what the bytes hold; folder digests recomputed and the root digest compared with
    /// the one sent.
    ///
    /// # Errors
    /// [`Error::ManifestDecode`] naming what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        codec::decode(bytes)
    }
}

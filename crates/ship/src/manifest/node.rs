//! One entry of a manifest ([`Node`]) and its Merkle digest.

use std::path::Path;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::pieces::Pieces;

/// Longest name accepted for one entry (Linux's `NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Longest symlink target accepted (Linux's `PATH_MAX`).
pub const MAX_TARGET: usize = 4096;

/// A modification time: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Timestamp {
    /// Whole seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, below 1 000 000 000.
    pub nanos: u32,
}

/// What a [`Node`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file whose content is the blob `digest`.
    File {
        /// Its length in bytes.
        size: u64,
        /// The BLAKE3 digest of its content.
        digest: Digest,
    },
    /// A folder; its children are sorted by name, each name once.
    Dir {
        /// The entries beneath it that the sources match (or lead to).
        children: Vec<Node>,
    },
    /// A symlink, kept as a symlink (its target is not followed).
    Symlink {
        /// The link's target, as stored.
        target: Vec<u8>,
    },
}

/// One entry of a [`Manifest`](crate::Manifest): name, kind, permission bits and
/// modification time, with a Merkle digest covering all of them and, for a folder, its
/// children's digests, so an unchanged subtree is recognised by its digest alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    name: Vec<u8>,
    mode: u32,
    mtime: Timestamp,
    kind: NodeKind,
    digest: Digest,
    /// A large file's pieces ([`Pieces`]); not part of the Merkle digest, since the
    /// content digest they merge into is.
    pieces: Option<Pieces>,
}

pub(crate) const TAG_FILE: u8 = 0;
pub(crate) const TAG_DIR: u8 = 1;
pub(crate) const TAG_SYMLINK: u8 = 2;

impl Node {
    /// A regular file. `mode` keeps only the permission bits (`0o7777`).
    ///
    /// # Errors
    /// [`Error::ManifestInvalid`] when `name` is not a plain file name.
    pub fn file(
        name: &[u8],
        mode: u32,
        mtime: Timestamp,
        size: u64,
        digest: Digest,
    ) -> Result<Node> {
        check_name(name, false)?;
        Ok(Node::build(
            name,
            mode,
            mtime,
            NodeKind::File { size, digest },
        ))
    }

    /// A folder holding `children` (sorted here).
    ///
    /// # Errors
    /// [`Error::ManifestInvalid`] when `name` is not a plain file name (the root of a
    /// manifest has the empty name: pass `b""`) or two children share a name.
    pub fn dir(name: &[u8], mode: u32, mtime: Timestamp, mut children: Vec<Node>) -> Result<Node> {
        check_name(name, true)?;
        children.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(pair) = children.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(invalid(
                &pair[0].name,
                "two entries of one folder have this name",
            ));
        }
        Ok(Node::build(name, mode, mtime, NodeKind::Dir { children }))
    }

    /// A symlink to `target`.
    ///
    /// # Errors
    /// [`Error::ManifestInvalid`] when `name` is not a plain file name or `target` is
    /// empty, longer than [`MAX_TARGET`] or holds a NUL byte.
    pub fn symlink(name: &[u8], mode: u32, mtime: Timestamp, target: &[u8]) -> Result<Node> {
        check_name(name, false)?;
        if target.is_empty() || target.len() > MAX_TARGET || target.contains(&0) {
            return Err(invalid(
                name,
                "symlink target is empty, too long or holds a NUL byte",
            ));
        }
        Ok(Node::build(
            name,
            mode,
            mtime,
            NodeKind::Symlink {
                target: target.to_vec(),
            },
        ))
    }

    /// Builds a node whose name and children were checked already.
    pub(crate) fn build(name: &[u8], mode: u32, mtime: Timestamp, kind: NodeKind) -> Node {
        let mode = mode & 0o7777;
        let digest = merkle(name, mode, mtime, &kind);
        Node {
            name: name.to_vec(),
            mode,
            mtime,
            kind,
            digest,
            pieces: None,
        }
    }

    /// This file node with the chaining values of its pieces, so a worker that has an
    /// older version of the file fetches only the pieces that changed.
    ///
    /// # Errors
    /// [`Error::ManifestInvalid`] when the node is not a file longer than
    /// [`PIECE_MIN`](crate::PIECE_MIN), or `pieces` do not describe its content (another
    /// length, or chaining values that do not merge into its digest).
    pub fn with_pieces(mut self, pieces: Pieces) -> Result<Node> {
        match self.kind {
            NodeKind::File { size, digest }
                if size == pieces.size() && digest == pieces.digest() =>
            {
                self.pieces = Some(pieces);
                Ok(self)
            }
            _ => Err(invalid(
                &self.name,
                "pieces given for something other than a file of that length",
            )),
        }
    }

    /// A large file's pieces, when the manifest has them.
    pub fn pieces(&self) -> Option<&Pieces> {
        self.pieces.as_ref()
    }

    /// The entry's name (empty for the root of a manifest).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Permission bits (`0o7777`).
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Modification time.
    pub fn mtime(&self) -> Timestamp {
        self.mtime
    }

    /// What it is.
    pub fn kind(&self) -> &NodeKind {
        &self.kind
    }

    /// The Merkle digest of this entry: its name, mode, time and kind, and a file's content
    /// digest, a folder's children's digests or a symlink's target.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The children of a folder; empty for a file or symlink.
    pub fn children(&self) -> &[Node] {
        match &self.kind {
            NodeKind::Dir { children } => children,
            _ => &[],
        }
    }

    /// Puts `new` in place of the entry at `path` (names below this folder) and computes
    /// the digests of the folders on its way again; false (nothing changed) when no entry
    /// is there or `new` has another name.
    pub(crate) fn replace_at(&mut self, path: &[&[u8]], new: Node) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return false;
        };
        let NodeKind::Dir { children } = &mut self.kind else {
            return false;
        };
        let Ok(at) = children.binary_search_by(|c| c.name.as_slice().cmp(first)) else {
            return false;
        };
        let replaced = if rest.is_empty() {
            if new.name != *first {
                return false;
            }
            children[at] = new;
            true
        } else {
            children[at].replace_at(rest, new)
        };
        if replaced {
            self.digest = merkle(&self.name, self.mode, self.mtime, &self.kind);
        }
        replaced
    }
}

/// The digest of a node from its parts (a domain tag keeps it apart from blob digests).
fn merkle(name: &[u8], mode: u32, mtime: Timestamp, kind: &NodeKind) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"parvm-ship node 1\0");
    h.update(&[tag_of(kind)]);
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name);
    h.update(&mode.to_le_bytes());
    h.update(&mtime.secs.to_le_bytes());
    h.update(&mtime.nanos.to_le_bytes());
    match kind {
        NodeKind::File { size, digest } => {
            h.update(&size.to_le_bytes());
            h.update(digest.as_bytes());
        }
        NodeKind::Dir { children } => {
            h.update(&(children.len() as u64).to_le_bytes());
            for child in children {
                h.update(child.digest.as_bytes());
            }
        }
        NodeKind::Symlink { target } => {
            h.update(&(target.len() as u64).to_le_bytes());
            h.update(target);
        }
    }
    h.finalize().into()
}

pub(crate) fn tag_of(kind: &NodeKind) -> u8 {
    match kind {
        NodeKind::File { .. } => TAG_FILE,
        NodeKind::Dir { .. } => TAG_DIR,
        NodeKind::Symlink { .. } => TAG_SYMLINK,
    }
}

/// Checks a name is one plain path component: non-empty (unless it is the root's), at most
/// [`MAX_NAME`] bytes, no `/`, no NUL, not `.` or `..`.
pub(crate) fn check_name(name: &[u8], may_be_root: bool) -> Result<()> {
    let reason = if name.is_empty() {
        if may_be_root {
            return Ok(());
        }
        "empty name"
    } else if name.len() > MAX_NAME {
        "name longer than 255 bytes"
    } else if name.contains(&b'/') {
        "name holds a `/`"
    } else if name.contains(&0) {
        "name holds a NUL byte"
    } else if name == b"." || name == b".." {
        "name is `.` or `..`"
    } else {
        return Ok(());
    };
    Err(invalid(name, reason))
}

fn invalid(name: &[u8], reason: &str) -> Error {
    use std::os::unix::ffi::OsStrExt;
    Error::ManifestInvalid {
        path: Path::new(std::ffi::OsStr::from_bytes(name)).to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replace_at_changes_only_the_entry_and_the_digests_on_its_way() {
        let file = |name: &[u8], content: &[u8]| {
            Node::file(
                name,
                0o644,
                Timestamp::default(),
                content.len() as u64,
                Digest::of(content),
            )
            .unwrap()
        };
        let tree = |b: Node| {
            let sub = Node::dir(b"sub", 0o755, Timestamp::default(), vec![b]).unwrap();
            Node::dir(
                b"",
                0o755,
                Timestamp::default(),
                vec![file(b"a", b"a"), sub],
            )
            .unwrap()
        };
        let mut root = tree(file(b"b", b"b"));
        assert!(root.replace_at(&[b"sub", b"b"], file(b"b", b"B")));
        assert_eq!(
            root,
            tree(file(b"b", b"B")),
            "as if built so, digests included"
        );
        let before = root.clone();
        assert!(
            !root.replace_at(&[b"sub", b"c"], file(b"c", b"c")),
            "no entry there"
        );
        assert!(
            !root.replace_at(&[b"sub", b"b"], file(b"c", b"c")),
            "another name"
        );
        assert!(
            !root.replace_at(&[b"a", b"x"], file(b"x", b"x")),
            "a file has no entries"
        );
        assert!(!root.replace_at(&[], file(b"x", b"x")));
        assert_eq!(root, before);
    }

    use super::*;

    #[test]
    fn bad_names_are_refused() {
        let t = Timestamp::default();
        let d = Digest::of(b"");
        let long = vec![b'a'; MAX_NAME + 1];
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &long] {
            assert!(Node::file(bad, 0o644, t, 0, d).is_err(), "{bad:?}");
        }
        assert!(Node::file(&vec![b'a'; MAX_NAME], 0o644, t, 0, d).is_ok());
        assert!(Node::dir(b"", 0o755, t, vec![]).is_ok());
    }

    #[test]
    fn duplicate_children_are_refused_and_order_is_canonical() {
        let t = Timestamp::default();
        let d = Digest::of(b"x");
        let a = Node::file(b"a", 0o644, t, 1, d).unwrap();
        let b = Node::file(b"b", 0o644, t, 1, d).unwrap();
        assert!(Node::dir(b"", 0o755, t, vec![a.clone(), a.clone()]).is_err());
        let ab = Node::dir(b"", 0o755, t, vec![a.clone(), b.clone()]).unwrap();
        let ba = Node::dir(b"", 0o755, t, vec![b, a]).unwrap();
        assert_eq!(ab.digest(), ba.digest());
    }

    #[test]
    fn symlink_targets_are_checked() {
        let t = Timestamp::default();
        for bad in [&b""[..], b"a\0", &vec![b'a'; MAX_TARGET + 1]] {
            assert!(Node::symlink(b"l", 0o777, t, bad).is_err());
        }
    }

    #[test]
    fn mode_keeps_permission_bits_only() {
        let n = Node::file(b"f", 0o100644, Timestamp::default(), 0, Digest::of(b"")).unwrap();
        assert_eq!(n.mode(), 0o644);
    }
}

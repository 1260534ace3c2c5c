//! The manifest's wire form, and a decoder that trusts nothing in it.
//!
//! ```text
//! magic "PVSHIP1\n"
//! node (pre-order): tag u8 (0 file, 1 folder, 2 symlink), name (varint length, bytes),
//!      mode varint, seconds i64 LE, nanoseconds u32 LE, then
//!      file: size varint, content digest 32 bytes, piece count varint (0, or the
//!            `piece_count` of its size), a 32-byte chaining value per piece | folder: child count varint | symlink: target (varint length, bytes)
//! root digest 32 bytes (checked against the recomputed one)
//! ```

use super::node::{TAG_DIR, TAG_FILE, TAG_SYMLINK, check_name, tag_of};
use super::{MAX_DEPTH, MAX_ENTRIES, Manifest, Node, NodeKind, Timestamp};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::pieces::{Pieces, piece_count};

const MAGIC: &[u8; 8] = b"PVSHIP2\n";

pub(super) fn encode(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 64 * m.file_count() as usize);
    out.extend_from_slice(MAGIC);
    let mut stack = vec![m.root()];
    while let Some(node) = stack.pop() {
        out.push(tag_of(node.kind()));
        put_bytes(&mut out, node.name());
        put_varint(&mut out, u64::from(node.mode()));
        out.extend_from_slice(&node.mtime().secs.to_le_bytes());
        out.extend_from_slice(&node.mtime().nanos.to_le_bytes());
        match node.kind() {
            NodeKind::File { size, digest } => {
                put_varint(&mut out, *size);
                out.extend_from_slice(digest.as_bytes());
                let cvs = node.pieces().map_or(&[][..], Pieces::cvs);
                put_varint(&mut out, cvs.len() as u64);
                cvs.iter().for_each(|cv| out.extend_from_slice(cv));
            }
            NodeKind::Dir { children } => {
                put_varint(&mut out, children.len() as u64);
                stack.extend(children.iter().rev());
            }
            NodeKind::Symlink { target } => put_bytes(&mut out, target),
        }
    }
    out.extend_from_slice(m.root_digest().as_bytes());
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::ManifestDecode {
        reason: reason.into(),
    }
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| bad(format!("truncated in {what} at byte {}", self.at)))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn varint(&mut self, what: &str) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.take(1, what)?[0];
            let part = u64::from(byte & 0x7f);
            if shift == 63 && part > 1 {
                return Err(bad(format!("{what} overflows 64 bits at byte {}", self.at)));
            }
            v |= part << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad(format!("{what} overflows 64 bits at byte {}", self.at)))
    }

    /// A length-prefixed byte string of at most `max` bytes (checked before anything is taken).
    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8]> {
        let len = self.varint(what)?;
        if len > max as u64 {
            return Err(bad(format!("{what} of {len} bytes is longer than {max}")));
        }
        self.take(len as usize, what)
    }
}

/// A folder being read: its own fields, the children read so far, and how many follow.
struct Open {
    name: Vec<u8>,
    mode: u32,
    mtime: Timestamp,
    expected: u64,
    children: Vec<Node>,
}

pub(super) fn decode(bytes: &[u8]) -> Result<Manifest> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len(), "magic")? != MAGIC {
        return Err(bad("it does not start with the manifest magic"));
    }
    let mut open: Vec<Open> = Vec::new();
    let mut entries = 0u64;
    let root = 'entries: loop {
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let tag = r.take(1, "entry kind")?[0];
        let name = r.bytes(super::MAX_NAME, "entry name")?;
        let is_root = open.is_empty();
        if is_root && (tag != TAG_DIR || !name.is_empty()) {
            return Err(bad("the root is not a folder with the empty name"));
        }
        check_name(name, is_root).map_err(|e| bad(format!("entry {entries}: {e}")))?;
        let mode = r.varint("mode")?;
        if mode > 0o7777 {
            return Err(bad(format!(
                "entry {entries}: mode {mode:o} has bits beyond 0o7777"
            )));
        }
        let mode = mode as u32;
        let secs = i64::from_le_bytes(r.array("time")?);
        let nanos = u32::from_le_bytes(r.array("time")?);
        if nanos >= 1_000_000_000 {
            return Err(bad(format!("entry {entries}: {nanos} nanoseconds")));
        }
        let mtime = Timestamp { secs, nanos };
        let mut finished = match tag {
            TAG_FILE => {
                let size = r.varint("file size")?;
                let digest = Digest::from_bytes(r.array("file digest")?);
                let node = Node::build(name, mode, mtime, NodeKind::File { size, digest });
                let count = r.varint("piece count")?;
                if count == 0 {
                    Some(node)
                } else {
                    // Checked before anything is read: the count follows from the size.
                    if count != piece_count(size) as u64 {
                        return Err(bad(format!(
                            "entry {entries}: {count} pieces for a file of {size} bytes"
                        )));
                    }
                    let cvs = r
                        .take(count as usize * 32, "pieces")?
                        .chunks_exact(32)
                        .map(|cv| <[u8; 32]>::try_from(cv).unwrap_or_default())
                        .collect();
                    let pieces = Pieces::new(size, digest, cvs).ok_or_else(|| {
                        bad(format!(
                            "entry {entries}: its pieces do not make up digest {digest}"
                        ))
                    })?;
                    Some(node.with_pieces(pieces).map_err(|e| bad(e.to_string()))?)
                }
            }
            TAG_SYMLINK => {
                let target = r.bytes(super::MAX_TARGET, "symlink target")?;
                if target.is_empty() || target.contains(&0) {
                    return Err(bad(format!(
                        "entry {entries}: symlink target empty or holding NUL"
                    )));
                }
                Some(Node::build(
                    name,
                    mode,
                    mtime,
                    NodeKind::Symlink {
                        target: target.to_vec(),
                    },
                ))
            }
            TAG_DIR => {
                if open.len() > MAX_DEPTH {
                    return Err(bad(format!("more than {MAX_DEPTH} levels of folders")));
                }
                let expected = r.varint("child count")?;
                // Every entry takes at least 15 bytes, so a count the rest cannot hold is a lie;
                // checking it first keeps a forged count from reserving anything.
                if expected > (bytes.len() - r.at) as u64 / 15 {
                    return Err(bad(format!(
                        "entry {entries}: {expected} children announced"
                    )));
                }
                open.push(Open {
                    name: name.to_vec(),
                    mode,
                    mtime,
                    expected,
                    children: Vec::new(),
                });
                None
            }
            other => return Err(bad(format!("entry {entries}: unknown kind {other}"))),
        };
        // Hand the finished entry to its folder; close every folder that is then complete.
        while let Some(top) = open.last_mut() {
            if let Some(node) = finished.take() {
                if top
                    .children
                    .last()
                    .is_some_and(|prev| prev.name() >= node.name())
                {
                    return Err(bad(format!(
                        "entry {entries}: children not sorted or not unique"
                    )));
                }
                top.children.push(node);
            }
            if top.children.len() as u64 != top.expected {
                continue 'entries;
            }
            let Some(folder) = open.pop() else { break };
            let node = Node::build(
                &folder.name,
                folder.mode,
                folder.mtime,
                NodeKind::Dir {
                    children: folder.children,
                },
            );
            if open.is_empty() {
                break 'entries node;
            }
            finished = Some(node);
        }
        return Err(bad("entry outside the root folder"));
    };
    let sent = Digest::from_bytes(r.array("root digest")?);
    if sent != root.digest() {
        return Err(bad(format!(
            "root digest {sent} sent, {} computed",
            root.digest()
        )));
    }
    if r.at != bytes.len() {
        return Err(bad(format!("{} bytes after the end", bytes.len() - r.at)));
    }
    Manifest::new(root).map_err(|e| bad(e.to_string()))
}

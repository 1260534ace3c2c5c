//! The LRU index: a journal `index` of lines `b <digest> <bytes>` (a blob used) and
//! `s <digest> <bytes>` (a snapshot used), oldest first, so the order of last mention is
//! the order of last use. It survives restarts; eviction rewrites it compacted.
//!
//! Appends hold `index.lock` shared (one `write` per batch, `O_APPEND`); eviction holds it
//! exclusive while it reads, removes and rewrites, so no append is lost to a rewrite.
//!
//! A process also keeps a [`Tally`] from its last full eviction pass: the totals then, and
//! how far it has read the journal since. Only appends happen between two rewrites, and a
//! line adds at most its entry's bytes and one entry, so the totals plus what was appended
//! bound the cache's entries from above: while that bound is within the limits, eviction
//! reads only the lines appended since its last look instead of the whole journal. A
//! rewrite (by any process) makes a new file, which ends the tally.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{Flock, FlockArg};

use crate::digest::Digest;
use crate::error::{Error, Result};

/// What an index entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Blob,
    Snapshot,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Blob => 'b',
            Kind::Snapshot => 's',
        }
    }
}

/// One journal line (without its newline); `None` for one that does not parse (a write
/// cut by a crash).
fn parse_line(line: &[u8]) -> Option<(Kind, Digest, u64)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let kind = match parts.next() {
        Some("b") => Kind::Blob,
        Some("s") => Kind::Snapshot,
        _ => return None,
    };
    match (
        parts.next().and_then(Digest::from_hex),
        parts.next().map(str::parse),
        parts.next(),
    ) {
        (Some(digest), Some(Ok(bytes)), None) => Some((kind, digest, bytes)),
        _ => None,
    }
}

/// Appends the journal line of one entry (`format!` per line would cost more than the
/// write: a snapshot touches every blob it has).
fn push_line(text: &mut String, kind: Kind, digest: &Digest, bytes: u64) {
    use std::fmt::Write as _;
    text.push(kind.letter());
    text.push(' ');
    text.push_str(digest.hex().as_str());
    let _ = writeln!(text, " {bytes}");
}

/// The index's two files, and this process's tally of the journal.
#[derive(Debug)]
pub(crate) struct Index {
    journal: PathBuf,
    lock: PathBuf,
    tally: Mutex<Option<Tally>>,
}

/// Entries' totals as of this process's last full pass, plus every line appended since:
/// an upper bound of what the index holds (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// The journal file (device, inode) it counts: a rewrite replaces the file.
    file: (u64, u64),
    /// Bytes of the journal counted so far (whole lines only).
    read_to: u64,
    /// The journal's length after the full pass: past [`Tally::FULL_PASS_PAST`] times it,
    /// the next pass is a full one again, which compacts the journal.
    after_pass: u64,
    /// At most this many bytes of entries.
    pub(crate) bytes: u64,
    /// At most this many entries.
    pub(crate) count: u64,
}

impl Tally {
    /// How much the journal may grow past its length after a full pass, as a multiple,
    /// before a full pass (which compacts it) is due again.
    const FULL_PASS_PAST: u64 = 3;
    /// ...and at least this many bytes.
    const FULL_PASS_AT_LEAST: u64 = 8 << 20;
}

/// One entry as read: its size and the position of its last use (higher is later).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Use {
    pub(crate) bytes: u64,
    pub(crate) last: u64,
}

/// Every entry by kind and digest.
pub(crate) type Entries = HashMap<(Kind, Digest), Use>;

/// The exclusive hold eviction works under.
pub(crate) struct Exclusive<'i> {
    index: &'i Index,
    _lock: Flock<File>,
}

impl Index {
    pub(crate) fn new(cache: &Path) -> Index {
        Index {
            journal: cache.join("index"),
            lock: cache.join("index.lock"),
            tally: Mutex::new(None),
        }
    }

    fn lock(&self, arg: FlockArg) -> Result<Flock<File>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.lock)
            .map_err(|e| Error::io("open", &self.lock, e))?;
        Flock::lock(file, arg).map_err(|(_, e)| Error::io("lock", &self.lock, e.into()))
    }

    /// Holds the index shared: pins are taken and checked under it, so eviction (which
    /// holds it exclusive) sees a pin or finds its target already gone, never between.
    pub(crate) fn shared(&self) -> Result<Flock<File>> {
        self.lock(FlockArg::LockShared)
    }

    /// Records that these entries were used now, in one append.
    pub(crate) fn touch(&self, used: &[(Kind, Digest, u64)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let _shared = self.shared()?;
        let mut text = String::with_capacity(used.len() * 90);
        for (kind, digest, bytes) in used {
            push_line(&mut text, *kind, digest, *bytes);
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.journal)
            .map_err(|e| Error::io("open", &self.journal, e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| Error::io("append to", &self.journal, e))
    }

    /// The journal's length in bytes (0 when it cannot be read).
    pub(crate) fn journal_len(&self) -> u64 {
        fs::metadata(&self.journal).map_or(0, |m| m.len())
    }

    /// Holds the index exclusive (for eviction).
    pub(crate) fn exclusive(&self) -> Result<Exclusive<'_>> {
        Ok(Exclusive {
            index: self,
            _lock: self.lock(FlockArg::LockExclusive)?,
        })
    }
}

impl Exclusive<'_> {
    /// Every entry with its last use, and how many lines the journal has. Lines that do
    /// not parse (a write cut by a crash) are skipped.
    pub(crate) fn read(&self) -> Result<(Entries, usize)> {
        let path = &self.index.journal;
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        let mut out = HashMap::new();
        let mut lines = 0;
        for (pos, line) in text.split(|&b| b == b'\n').enumerate() {
            let Some((kind, digest, bytes)) = parse_line(line) else {
                continue;
            };
            lines += 1;
            out.insert(
                (kind, digest),
                Use {
                    bytes,
                    last: pos as u64,
                },
            );
        }
        Ok((out, lines))
    }

    /// Starts a new tally after a full pass that left `bytes` in `count` entries.
    pub(crate) fn remember(&self, bytes: u64, count: u64) {
        let path = &self.index.journal;
        let tally = match fs::metadata(path) {
            Ok(meta) => Some(Tally {
                file: (meta.dev(), meta.ino()),
                read_to: meta.len(),
                after_pass: meta.len(),
                bytes,
                count,
            }),
            // No journal yet (nothing was ever used): a full pass is cheap.
            Err(_) => None,
        };
        *self.tally() = tally;
    }

    /// The tally brought up to date with the lines appended since it was last looked at;
    /// `None` when there is none, the journal was rewritten or grew past its bound since
    /// the last full pass (do a full pass), or cannot be read.
    pub(crate) fn bound(&self) -> Option<Tally> {
        let mut kept = self.tally();
        let tally = kept.take()?;
        let path = &self.index.journal;
        let mut file = File::open(path).ok()?;
        let meta = file.metadata().ok()?;
        let full_pass_at =
            (Tally::FULL_PASS_PAST * tally.after_pass).max(Tally::FULL_PASS_AT_LEAST);
        if (meta.dev(), meta.ino()) != tally.file
            || meta.len() < tally.read_to
            || meta.len() > full_pass_at
        {
            return None;
        }
        let mut appended = Vec::new();
        file.seek(SeekFrom::Start(tally.read_to)).ok()?;
        file.take(meta.len() - tally.read_to)
            .read_to_end(&mut appended)
            .ok()?;
        // A line being cut short is impossible under the exclusive hold, but a crash may
        // have left one: it is counted with the line completing it, if any ever does.
        let whole = appended
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1);
        let mut updated = tally;
        updated.read_to += whole as u64;
        for line in appended[..whole].split(|&b| b == b'\n') {
            if let Some((_, _, bytes)) = parse_line(line) {
                updated.bytes = updated.bytes.saturating_add(bytes);
                updated.count += 1;
            }
        }
        *kept = Some(updated);
        Some(updated)
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Option<Tally>> {
        self.index
            .tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the journal by these entries, oldest first.
    pub(crate) fn rewrite(&self, entries: &[((Kind, Digest), Use)]) -> Result<()> {
        let path = &self.index.journal;
        let staged = path.with_extension(super::dirs::unique_suffix());
        let mut text = String::with_capacity(entries.len() * 90);
        for ((kind, digest), used) in entries {
            push_line(&mut text, *kind, digest, used.bytes);
        }
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&staged)?;
            f.write_all(text.as_bytes())?;
            fs::rename(&staged, path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&staged);
            Error::io("rewrite", path, e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn append(index: &Index, text: &[u8]) {
        OpenOptions::new()
            .append(true)
            .open(&index.journal)
            .unwrap()
            .write_all(text)
            .unwrap();
    }

    #[test]
    fn the_tally_adds_each_appended_line_and_ends_with_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::new(dir.path());
        // No journal yet, no tally: a full pass.
        index.exclusive().unwrap().remember(0, 0);
        assert_eq!(index.exclusive().unwrap().bound(), None);
        index
            .touch(&[(Kind::Blob, digest(1), 10), (Kind::Snapshot, digest(2), 10)])
            .unwrap();
        let held = index.exclusive().unwrap();
        let (entries, _) = held.read().unwrap();
        held.remember(20, entries.len() as u64);
        assert_eq!(held.bound().map(|t| (t.bytes, t.count)), Some((20, 2)));
        drop(held);
        // A repeat counts again: the tally bounds from above.
        index
            .touch(&[(Kind::Blob, digest(1), 10), (Kind::Blob, digest(3), 5)])
            .unwrap();
        // A line cut short (a crash) counts once it is whole, if it parses then.
        append(&index, format!("b {} 7", digest(4)).as_bytes());
        let bound = || {
            index
                .exclusive()
                .unwrap()
                .bound()
                .map(|t| (t.bytes, t.count))
        };
        assert_eq!(bound(), Some((35, 4)));
        append(&index, b"\n");
        assert_eq!(bound(), Some((42, 5)));
        assert_eq!(bound(), Some((42, 5)), "each line is counted once");
        // Another process's rewrite makes a new file: the tally ends.
        let other = Index::new(dir.path());
        other.exclusive().unwrap().rewrite(&[]).unwrap();
        assert_eq!(bound(), None);
    }

    #[test]
    fn a_journal_grown_far_past_the_last_full_pass_ends_the_tally() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::new(dir.path());
        index.touch(&[(Kind::Blob, digest(1), 10)]).unwrap();
        index.exclusive().unwrap().remember(10, 1);
        append(&index, &vec![b'\n'; Tally::FULL_PASS_AT_LEAST as usize]);
        assert_eq!(index.exclusive().unwrap().bound(), None);
    }
}

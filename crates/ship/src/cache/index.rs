//! The LRU index: a journal `index` of lines `b <digest> <bytes>` (a blob used) and
//! `s <digest> <bytes>` (a snapshot used), oldest first, so the order of last mention is
//! the order of last use. It survives restarts; eviction rewrites it compacted.
//!
//! Appends hold `index.lock` shared (one `write` per batch, `O_APPEND`); eviction holds it
//! exclusive while it reads, removes and rewrites, so no append is lost to a rewrite.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

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

/// Appends the journal line of one entry (`format!` per line would cost more than the
/// write: a snapshot touches every blob it has).
fn push_line(text: &mut String, kind: Kind, digest: &Digest, bytes: u64) {
    use std::fmt::Write as _;
    text.push(kind.letter());
    text.push(' ');
    text.push_str(digest.hex().as_str());
    let _ = writeln!(text, " {bytes}");
}

/// The index's two files.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    journal: PathBuf,
    lock: PathBuf,
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
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let mut parts = line.split(' ');
            let kind = match parts.next() {
                Some("b") => Kind::Blob,
                Some("s") => Kind::Snapshot,
                _ => continue,
            };
            let (Some(digest), Some(Ok(bytes)), None) = (
                parts.next().and_then(Digest::from_hex),
                parts.next().map(str::parse),
                parts.next(),
            ) else {
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

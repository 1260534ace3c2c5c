//! What a [`Scanner`](super::Scanner) hashed, kept in a file between runs, so the next
//! run's spawner rehashes only the files that changed since, as the one before it did
//! within its run.
//!
//! An entry is trusted exactly as the in-memory table is: only while the file's device,
//! inode, size, modification time, change time and mode are as recorded. The change time
//! moves with every write and no caller can set it, so a file written since has another
//! signature and is hashed again. The file lives in the user's private local storage, and
//! a store that cannot be read whole (damaged, another version, pieces that do not make up
//! their digest) is ignored: everything is hashed again. Every file is kept, small ones
//! too: a scan `stat`s each file anyway, while hashing one means opening and reading it
//! (2 000 files of 4 KiB on tmpfs: 15 ms hashed, a few `stat`ed; over NFS much more).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Content, FileSig};
use crate::digest::Digest;
use crate::pieces::Pieces;

/// The folder of the stores in the host cache's folder (which the cache leaves alone).
pub(crate) const FOLDER: &str = "hashes";
/// A change to a file at least this long is written to the store at once; smaller ones
/// are written with the next change of a longer one or when the scanner goes (hashing a
/// small file again in the next run costs less than rewriting the store for each).
pub(crate) const SAVE_AT_ONCE_FROM: u64 = 64 << 10;
/// The length of a piece's print in a store.
const PRINT_BYTES: usize = 16;
/// A store longer than this is not read (it would hold millions of files).
const MOST_READ: u64 = 256 << 20;
/// Raised with every change of the format; a store of another version is ignored.
const VERSION: u32 = 3;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(with = "serde_bytes")]
    path: Vec<u8>,
    sig: FileSig,
    digest: Digest,
    cvs: Vec<Digest>,
    /// The pieces' prints, 16 bytes each, little-endian.
    #[serde(with = "serde_bytes")]
    prints: Vec<u8>,
}

/// The table a store at `path` holds; empty when there is none or it cannot be trusted
/// whole.
pub(super) fn load(path: &Path) -> HashMap<PathBuf, (FileSig, Content)> {
    let read = || -> Option<HashMap<PathBuf, (FileSig, Content)>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .ok()?;
        if file.metadata().ok()?.len() > MOST_READ {
            return None;
        }
        let stored: Stored = rmp_serde::from_read(std::io::BufReader::new(file)).ok()?;
        if stored.version != VERSION {
            return None;
        }
        let mut table = HashMap::with_capacity(stored.entries.len());
        for entry in stored.entries {
            let pieces = if entry.cvs.is_empty() {
                None
            } else {
                let cvs = entry.cvs.iter().map(|cv| *cv.as_bytes()).collect();
                Some(Pieces::new(entry.sig.size, entry.digest, cvs)?)
            };
            if entry.prints.len() != PRINT_BYTES * entry.cvs.len() {
                return None;
            }
            let prints = entry
                .prints
                .chunks_exact(PRINT_BYTES)
                .map(|print| u128::from_le_bytes(print.try_into().unwrap_or_default()))
                .collect();
            let content = Content {
                digest: entry.digest,
                pieces,
                prints,
            };
            table.insert(
                PathBuf::from(std::ffi::OsString::from_vec(entry.path)),
                (entry.sig, content),
            );
        }
        Some(table)
    };
    let table = read().unwrap_or_default();
    tracing::debug!(store = %path.display(), files = table.len(), "hashes kept by an earlier run");
    table
}

/// Writes the entries of `table` to a store at `path`, replacing it whole (written beside
/// it, then renamed). A failure costs only hashing again in the next run, so it is logged,
/// not returned.
pub(super) fn save(path: &Path, table: &HashMap<PathBuf, (FileSig, Content)>) {
    let entries = table
        .iter()
        .map(|(file, (sig, content))| Entry {
            path: file.as_os_str().as_bytes().to_vec(),
            sig: *sig,
            digest: content.digest,
            cvs: content.pieces.as_ref().map_or_else(Vec::new, |p| {
                p.cvs().iter().map(|cv| Digest::from_bytes(*cv)).collect()
            }),
            prints: content
                .prints
                .iter()
                .flat_map(|print| print.to_le_bytes())
                .collect(),
        })
        .collect::<Vec<_>>();
    if entries.is_empty() && fs::symlink_metadata(path).is_err() {
        // Nothing worth keeping, and nothing kept to replace.
        return;
    }
    let stored = Stored {
        version: VERSION,
        entries,
    };
    let staged = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = rmp_serde::to_vec(&stored)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&staged)?;
            file.write_all(&bytes)?;
            fs::rename(&staged, path)
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&staged);
        tracing::warn!(store = %path.display(), "cannot keep the hashes for the next run: {e}");
    }
}

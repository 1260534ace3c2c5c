//! [`BlobWriter`]: a claimed blob being written into its claim file.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::claim::Claim;
use super::verified::{Stamp, Verified};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::Timestamp;
use crate::pieces::Pieces;

/// Writes one claimed blob: chunks go straight into the claim file (bounded memory), hashed
/// as they arrive. Either the whole blob arrives in order, or (after
/// [`HostCache::reuse`](crate::HostCache::reuse) copied the pieces an older blob shares
/// with it) only the pieces it lacks, in order, each checked against its chaining value.
/// Dropped unfinished: what was written is removed and the claim released.
#[derive(Debug)]
pub struct BlobWriter {
    digest: Digest,
    size: u64,
    shown_as: PathBuf,
    written: u64,
    /// Boxed: the hasher's state is 2 KiB, and `Begin` carries the writer by value.
    hasher: Box<blake3::Hasher>,
    /// Whole blobs are hashed as they arrive and checked against the digest; not when the
    /// sender vouches for them ([`trust_sender`](BlobWriter::trust_sender)).
    check_whole: bool,
    /// Mode and time the blob's file gets, so snapshot files with them can be hard links.
    attrs: Option<(u32, Timestamp)>,
    /// Set when only some pieces arrive: which, and how far they came.
    arriving: Option<Arriving>,
    /// Start its write-back when finished (`writeback.rs`).
    pub(super) start_writeback: bool,
    /// Set when the pieces are written into the older blob itself, taken out of the cache
    /// for this writer alone ([`HostCache::reuse`](crate::HostCache::reuse)), instead of
    /// into the claim file.
    in_place: Option<InPlace>,
    dest: PathBuf,
    verified: Arc<Verified>,
    claim: Claim,
}

impl BlobWriter {
    pub(crate) fn new(
        claim: Claim,
        dest: PathBuf,
        verified: Arc<Verified>,
        digest: Digest,
        size: u64,
        shown_as: &Path,
    ) -> BlobWriter {
        BlobWriter {
            digest,
            size,
            shown_as: shown_as.to_path_buf(),
            written: 0,
            hasher: Box::new(blake3::Hasher::new()),
            check_whole: true,
            attrs: None,
            arriving: None,
            start_writeback: false,
            in_place: None,
            dest,
            verified,
            claim,
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Gives the blob the permission bits `mode` (setuid, setgid and sticky are dropped)
    /// and modification time `mtime` of the file it is fetched for: a snapshot file with
    /// the same mode and time is then a hard link to the blob instead of a copy. Without
    /// it the blob is read-only and timed when it was written.
    pub fn keep_attrs(&mut self, mode: u32, mtime: Timestamp) {
        self.attrs = Some((mode & 0o777, mtime));
    }

    /// Takes the bytes of a whole blob as its digest's without hashing them: for a sender
    /// that checked, after reading them, that its source was still the file it hashed
    /// ([`SourceBlob::unchanged`](crate::SourceBlob::unchanged)), over a transport that
    /// delivers frames intact and from a peer it authenticated. Hashing is what bounds a
    /// receiver of large files (about a third of its work on an AVX2 core), and the
    /// sender hashed every byte already to describe it. Pieces of a blob
    /// ([`HostCache::reuse`](crate::HostCache::reuse)) are checked all the same.
    ///
    /// The cache then holds whatever the sender sent under the digest, for every later
    /// task and run of this host: call it only under those conditions.
    pub fn trust_sender(&mut self) {
        self.check_whole = false;
    }

    /// The pieces still to arrive, when only some do ([`HostCache::reuse`](crate::HostCache::reuse)).
    pub fn wanted_pieces(&self) -> Option<&[u32]> {
        self.arriving.as_ref().map(|a| &a.wanted[a.next..])
    }

    /// The offset in the blob of the next byte to arrive: chunks are taken only there.
    pub fn next_offset(&self) -> u64 {
        match &self.arriving {
            None => self.written,
            Some(a) => a
                .wanted
                .get(a.next)
                .map_or(self.size, |&piece| a.pieces.range(piece).0 + a.filled),
        }
    }

    /// Whether everything that is to arrive has.
    pub fn is_complete(&self) -> bool {
        match &self.arriving {
            None => self.written == self.size,
            Some(a) => a.next == a.wanted.len(),
        }
    }

    /// Sets up the writer to receive only `wanted` of the blob's `pieces`, once the rest
    /// is in the claim file: copied from `base` (a blob of the cache that shares them) at
    /// the same offsets. Pieces are checked one by one as they arrive; the copied ones are
    /// the caller's to vouch for ([`HostCache::reuse`](crate::HostCache::reuse) checks the
    /// older blob and its pieces).
    pub(crate) fn receive_pieces_after(
        &mut self,
        base: &File,
        shared: &[u32],
        pieces: Pieces,
        wanted: Vec<u32>,
    ) -> Result<()> {
        let file = self.claim.file();
        let path = self.claim.path();
        file.set_len(0).map_err(|e| Error::io("empty", path, e))?;
        file.set_len(self.size)
            .map_err(|e| Error::io("size", path, e))?;
        // Runs of adjacent shared pieces, each one copy (a reflink where the file system
        // has them).
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &piece in shared {
            let (start, len) = pieces.range(piece);
            match runs.last_mut() {
                Some((at, run)) if *at + *run == start => *run += len,
                _ => runs.push((start, len)),
            }
        }
        for (start, len) in runs {
            copy_range(base, file, start, len)
                .map_err(|e| Error::io("copy pieces into", path, e))?;
        }
        self.expect_pieces(pieces, wanted);
        Ok(())
    }

    /// From now on, only `wanted` of `pieces` arrive, in order.
    fn expect_pieces(&mut self, pieces: Pieces, wanted: Vec<u32>) {
        self.written = 0;
        self.arriving = Some(Arriving {
            pieces,
            wanted,
            next: 0,
            filled: 0,
        });
        self.start_piece();
    }

    /// Sets up the writer to receive only `wanted` of the blob's `pieces` into `older`, the
    /// file of an older blob at `path` (beneath `tmp/`) that holds the other pieces at the
    /// same offsets and is this writer's alone: cut or grown to the blob's length, it
    /// becomes the blob. Removed if the writer is dropped unfinished.
    pub(crate) fn receive_pieces_in_place(
        &mut self,
        older: File,
        path: PathBuf,
        pieces: Pieces,
        wanted: Vec<u32>,
    ) -> Result<()> {
        let in_place = InPlace {
            file: older,
            path,
            placed: false,
        };
        in_place
            .file
            .set_len(self.size)
            .map_err(|e| Error::io("size", &in_place.path, e))?;
        self.in_place = Some(in_place);
        self.expect_pieces(pieces, wanted);
        Ok(())
    }

    /// The file the blob is written into, and its path.
    fn target(&self) -> (&File, &Path) {
        target_of(self.in_place.as_ref(), &self.claim)
    }

    /// Back to receiving the whole blob in order, after a
    /// [`receive_pieces_after`](BlobWriter::receive_pieces_after) that could not be used.
    pub(crate) fn receive_whole(&mut self) -> Result<()> {
        self.arriving = None;
        self.written = 0;
        *self.hasher = blake3::Hasher::new();
        let file = self.claim.file();
        file.set_len(0)
            .map_err(|e| Error::io("empty", self.claim.path(), e))?;
        let mut cursor = file;
        std::io::Seek::rewind(&mut cursor).map_err(|e| Error::io("rewind", self.claim.path(), e))
    }

    /// Gets the hasher ready for the next wanted piece.
    fn start_piece(&mut self) {
        use blake3::hazmat::HasherExt;
        if let Some(a) = &self.arriving
            && let Some(&piece) = a.wanted.get(a.next)
        {
            let mut hasher = blake3::Hasher::new();
            hasher.set_input_offset(a.pieces.range(piece).0);
            *self.hasher = hasher;
        }
    }

    /// Writes a chunk that starts at [`next_offset`](BlobWriter::next_offset): into the
    /// wanted pieces it covers, each checked against its chaining value when complete;
    /// bytes past a wanted piece that the next one does not continue are not needed.
    fn write_pieces(&mut self, mut chunk: &[u8]) -> Result<()> {
        use blake3::hazmat::HasherExt;
        while !chunk.is_empty() {
            let Some(a) = &mut self.arriving else { break };
            let Some(&piece) = a.wanted.get(a.next) else {
                break;
            };
            let (start, len) = a.pieces.range(piece);
            let take = (len - a.filled).min(chunk.len() as u64) as usize;
            let at = start + a.filled;
            // Not `self.target()`: `a` borrows `self.arriving` meanwhile.
            let (file, path) = target_of(self.in_place.as_ref(), &self.claim);
            file.write_all_at(&chunk[..take], at)
                .map_err(|e| Error::io("write", path, e))?;
            self.hasher.update(&chunk[..take]);
            a.filled += take as u64;
            self.written += take as u64;
            chunk = &chunk[take..];
            if a.filled < len {
                break;
            }
            if self.hasher.finalize_non_root() != a.pieces.cvs()[piece as usize] {
                return Err(Error::PieceMismatch {
                    shown_as: self.shown_as.clone(),
                    piece,
                    offset: start,
                });
            }
            a.next += 1;
            a.filled = 0;
            let continues = a
                .wanted
                .get(a.next)
                .is_some_and(|&next| a.pieces.range(next).0 == start + len);
            self.start_piece();
            if !continues {
                break;
            }
        }
        Ok(())
    }

    /// Writes a chunk: appended to a whole blob, or, when only some pieces arrive, at
    /// [`next_offset`](BlobWriter::next_offset).
    ///
    /// # Errors
    /// [`Error::SizeMismatch`] when more arrives than the manifest's size;
    /// [`Error::PieceMismatch`] when a piece arrived damaged; [`Error::Io`] when writing
    /// fails.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        if self.arriving.is_some() {
            return self.write_pieces(chunk);
        }
        let got = self.written.saturating_add(chunk.len() as u64);
        if got > self.size {
            return Err(Error::SizeMismatch {
                shown_as: self.shown_as.clone(),
                expected: self.size,
                got,
            });
        }
        let mut file: &File = self.claim.file();
        file.write_all(chunk)
            .map_err(|e| Error::io("write", self.claim.path(), e))?;
        if self.check_whole {
            self.hasher.update(chunk);
        }
        self.written = got;
        Ok(())
    }

    /// Checks size and digest (errors name the path it is shown as), gives the file its
    /// mode and time, and renames it into place, releasing the claim.
    ///
    /// # Errors
    /// [`Error::SizeMismatch`], [`Error::DigestMismatch`] (nothing is kept), [`Error::Io`].
    pub fn finish(mut self) -> Result<()> {
        if !self.is_complete() {
            return Err(Error::SizeMismatch {
                shown_as: self.shown_as.clone(),
                expected: self.size,
                got: self.next_offset(),
            });
        }
        // Arrived in pieces: each was checked as it came.
        let got: Digest = match self.arriving {
            Some(_) => self.digest,
            None if !self.check_whole => self.digest,
            None => self.hasher.finalize().into(),
        };
        if got != self.digest {
            return Err(Error::DigestMismatch {
                shown_as: self.shown_as.clone(),
                expected: self.digest,
                got,
            });
        }
        let (file, temp) = self.target();
        let temp = temp.to_path_buf();
        let (mode, mtime) = self.attrs.map_or((0o400, None), |(m, t)| (m, Some(t)));
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("protect", &temp, e))?;
        if let Some(mtime) = mtime {
            file.set_modified(crate::snapshot::system_time(mtime))
                .map_err(|e| Error::io("set the time of", &temp, e))?;
        }
        if self.start_writeback {
            super::writeback::start(file);
        }
        // The index learns it with its snapshot (one append for all its blobs) or, when no
        // snapshot is made, when a cache opens next; meanwhile `missing`'s pin keeps it.
        match &mut self.in_place {
            // Placed before the claim goes (removed unpublished), so a fetcher that
            // waited for the claim finds the blob.
            Some(in_place) => {
                fs::rename(&in_place.path, &self.dest)
                    .map_err(|e| Error::io("place blob", &self.dest, e))?;
                in_place.placed = true;
            }
            None => self
                .claim
                .publish(&self.dest)
                .map_err(|e| Error::io("place blob", &self.dest, e))?,
        }
        // Stamped after the rename, which moves the change time on some file systems, and
        // before the claim goes with `self`.
        if let Ok(meta) = self.target().0.metadata() {
            self.verified.record(self.digest, Stamp::of(&meta));
        }
        Ok(())
    }

    /// Writes each whole blob of `blobs` (a writer that has received nothing, and all its
    /// bytes) and [`finish`](BlobWriter::finish)es it, on as many threads as there are
    /// cores: small files arrive in batches, and giving each its mode, time and place
    /// costs several system calls that other cores can share.
    ///
    /// # Errors
    /// The first (in the order of `blobs`) of [`write`](BlobWriter::write)'s and
    /// [`finish`](BlobWriter::finish)'s errors; the blobs not finished are dropped,
    /// releasing their claims.
    pub fn finish_each(blobs: Vec<(BlobWriter, &[u8])>) -> Result<()> {
        let blobs: Vec<_> = blobs.into_iter().map(|b| Mutex::new(Some(b))).collect();
        crate::par::each_in_shares(&blobs, super::SMALL_JOBS_PER_THREAD, |blob| {
            let taken = blob.lock().unwrap_or_else(PoisonError::into_inner).take();
            match taken {
                Some((mut writer, bytes)) => {
                    writer.write(bytes)?;
                    writer.finish()
                }
                None => Ok(()),
            }
        })?;
        Ok(())
    }
}

/// The pieces of a blob that arrive, when the others were copied from an older blob.
#[derive(Debug)]
struct Arriving {
    pieces: Pieces,
    /// The pieces that arrive, in ascending order.
    wanted: Vec<u32>,
    /// Index in `wanted` of the piece arriving now.
    next: usize,
    /// Bytes of that piece written so far.
    filled: u64,
}

/// The file a blob is written into, and its path: the older blob taken over when there is
/// one, else the claim file.
fn target_of<'a>(in_place: Option<&'a InPlace>, claim: &'a Claim) -> (&'a File, &'a Path) {
    match in_place {
        Some(in_place) => (&in_place.file, &in_place.path),
        None => (claim.file(), claim.path()),
    }
}

/// An older blob taken out of the cache to become this blob in place.
#[derive(Debug)]
struct InPlace {
    file: File,
    /// Where it is while written: beneath `tmp/`, named after the blob being fetched, so
    /// the cache's cleaning keeps it while the claim is held.
    path: PathBuf,
    /// Renamed into the blob store.
    placed: bool,
}

impl Drop for InPlace {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Copies `len` bytes at `start` of `from` to the same place in `to`, in the kernel
/// (`copy_file_range`: a reflink on btrfs and XFS).
fn copy_range(from: &File, to: &File, start: u64, len: u64) -> std::io::Result<()> {
    let (mut src, mut dst) = (start as i64, start as i64);
    let end = start + len;
    while (src as u64) < end {
        let want = usize::try_from(end - src as u64)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match nix::fcntl::copy_file_range(
            from.as_fd(),
            Some(&mut src),
            to.as_fd(),
            Some(&mut dst),
            want,
        ) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the older blob is shorter than its pieces say",
                ));
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

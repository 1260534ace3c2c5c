//! [`Pieces`]: a large file's content as BLAKE3 subtrees, so a changed file travels as the
//! pieces that changed.
//!
//! A file longer than [`PIECE_MIN`] is cut into pieces of [`piece_len`] bytes (a power of
//! two, at least [`PIECE_MIN`], so that there are at most [`MAX_PIECES`]); the last piece
//! may be shorter. Every piece is then a whole subtree of the file's BLAKE3 tree, so its
//! chaining value (the subtree's non-root hash, `blake3::hazmat`) depends only on its
//! bytes and where they start, and the chaining values merged along the tree's shape give
//! the file's ordinary BLAKE3 digest. That is what makes a piece trustworthy on its own:
//! a manifest's piece list is checked against the file's digest when it is read, and a
//! piece that arrives is checked against its chaining value, so a blob put together from
//! the pieces of an older blob and the pieces that changed is exactly the file.

use std::sync::Arc;

use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};

use crate::digest::Digest;

/// Files up to this length are one piece (sent whole); it is also the shortest piece.
pub const PIECE_MIN: u64 = 1 << 20;
/// The most pieces a file is cut into: a larger file gets longer pieces, so a manifest
/// holds at most 32 bytes × this per file.
pub const MAX_PIECES: u64 = 4096;

/// The length of a piece of a file of `size` bytes; `None` when the file is one piece.
pub fn piece_len(size: u64) -> Option<u64> {
    (size > PIECE_MIN).then(|| {
        size.div_ceil(MAX_PIECES)
            .checked_next_power_of_two()
            .unwrap_or(1 << 63)
            .max(PIECE_MIN)
    })
}

/// How many pieces a file of `size` bytes has in a manifest: 0 when it is one piece (no
/// list is kept), else at least 2.
pub fn piece_count(size: u64) -> usize {
    piece_len(size).map_or(0, |len| size.div_ceil(len) as usize)
}

/// The chaining values of a file's pieces, in order, with the file's length: what a
/// manifest keeps of a file longer than [`PIECE_MIN`]. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    size: u64,
    digest: Digest,
    cvs: Arc<[ChainingValue]>,
}

impl Pieces {
    /// The pieces of a file of `size` bytes with these chaining values, checked against
    /// its `digest`; `None` when their number is not [`piece_count`]`(size)` or they do
    /// not merge into `digest`.
    pub fn new(size: u64, digest: Digest, cvs: Vec<[u8; 32]>) -> Option<Pieces> {
        let len = piece_len(size)?;
        if cvs.len() != piece_count(size) || root_of(&cvs, len, size) != digest {
            return None;
        }
        Some(Pieces {
            size,
            digest,
            cvs: cvs.into(),
        })
    }

    /// The file's length.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest of the file's whole content.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The length of every piece but the last.
    pub fn piece_len(&self) -> u64 {
        // Only made for files of more than one piece.
        piece_len(self.size).unwrap_or(PIECE_MIN)
    }

    /// The chaining values, one per piece.
    pub fn cvs(&self) -> &[[u8; 32]] {
        &self.cvs
    }

    /// Byte range of piece `index`: its offset and its length.
    pub fn range(&self, index: u32) -> (u64, u64) {
        let len = self.piece_len();
        let start = u64::from(index) * len;
        (start, len.min(self.size.saturating_sub(start)))
    }

    /// The pieces of `self` that a blob with pieces `older` holds too (same place, same
    /// chaining value, so the same bytes), and those it lacks, each in ascending order;
    /// `None` when the two are cut into pieces of different lengths.
    pub fn shared_with(&self, older: &Pieces) -> Option<(Vec<u32>, Vec<u32>)> {
        if self.piece_len() != older.piece_len() {
            return None;
        }
        let (mut shared, mut lacking) = (Vec::new(), Vec::new());
        for (index, cv) in self.cvs.iter().enumerate() {
            let index = index as u32;
            if older.cvs.get(index as usize) == Some(cv) {
                shared.push(index);
            } else {
                lacking.push(index);
            }
        }
        Some((shared, lacking))
    }
}

/// The digest of a file of `size` bytes (more than `len`) whose pieces of `len` bytes have
/// the chaining values `cvs`: the pieces merged along the BLAKE3 tree, whose left subtree
/// is always the largest power of two shorter than the whole.
pub(crate) fn root_of(cvs: &[ChainingValue], len: u64, size: u64) -> Digest {
    if cvs.len() < 2 {
        // Not a file of several pieces; no digest can match.
        return Digest::from_bytes([0; 32]);
    }
    let (left, right, split) = halves(cvs, len, size);
    Digest::from(hazmat::merge_subtrees_root(
        &subtree(left, len, split),
        &subtree(right, len, size - split),
        Mode::Hash,
    ))
}

fn halves(cvs: &[ChainingValue], len: u64, size: u64) -> (&[ChainingValue], &[ChainingValue], u64) {
    let split = hazmat::left_subtree_len(size);
    let at = ((split / len) as usize).min(cvs.len());
    (&cvs[..at], &cvs[at..], split)
}

fn subtree(cvs: &[ChainingValue], len: u64, size: u64) -> ChainingValue {
    if cvs.len() <= 1 {
        return cvs.first().copied().unwrap_or([0; 32]);
    }
    let (left, right, split) = halves(cvs, len, size);
    hazmat::merge_subtrees_non_root(
        &subtree(left, len, split),
        &subtree(right, len, size - split),
        Mode::Hash,
    )
}

/// Hashes bytes of a file into chaining values of its pieces, starting at the start of
/// piece `first`: fed in order, in slices of any length.
pub(crate) struct PieceHasher {
    len: u64,
    /// Offset in the file of the piece being hashed.
    at: u64,
    /// Bytes of it hashed so far.
    filled: u64,
    hasher: blake3::Hasher,
    cvs: Vec<ChainingValue>,
}

impl PieceHasher {
    /// A hasher of pieces of `len` bytes (a power of two of at least 1 KiB) from piece
    /// `first` on.
    pub(crate) fn new(len: u64, first: u32) -> PieceHasher {
        let at = u64::from(first) * len;
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(at);
        PieceHasher {
            len,
            at,
            filled: 0,
            hasher,
            cvs: Vec::new(),
        }
    }

    /// Hashes the next bytes.
    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (self.len - self.filled).min(data.len() as u64) as usize;
            self.hasher.update(&data[..take]);
            self.filled += take as u64;
            data = &data[take..];
            if self.filled == self.len {
                self.end_piece();
            }
        }
    }

    fn end_piece(&mut self) {
        self.cvs.push(self.hasher.finalize_non_root());
        self.at += self.len;
        self.filled = 0;
        self.hasher = blake3::Hasher::new();
        self.hasher.set_input_offset(self.at);
    }

    /// The chaining values of the pieces fed, a last shorter one included.
    pub(crate) fn finish(mut self) -> Vec<ChainingValue> {
        if self.filled > 0 {
            self.cvs.push(self.hasher.finalize_non_root());
        }
        self.cvs
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `size` bytes that differ from piece to piece and with `seed` (for other modules'
    /// tests too).
    pub(crate) fn content(size: usize, seed: u8) -> Vec<u8> {
        (0..size)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 10) as u8)
            .collect()
    }

    fn cvs_of(data: &[u8], len: u64) -> Vec<ChainingValue> {
        let mut hasher = PieceHasher::new(len, 0);
        hasher.update(data);
        hasher.finish()
    }

    proptest! {
        /// The law everything rests on: pieces merged give the file's BLAKE3 digest,
        /// whatever the file's length and the piece length, and however the bytes are fed.
        #[test]
        fn merged_pieces_are_the_blake3_digest(
            pieces_log in 10u32..13,
            size in 1025usize..40_000,
            feed in 1usize..5000,
        ) {
            let len = 1u64 << pieces_log;
            prop_assume!(size as u64 > len);
            let data = content(size, 7);
            let mut hasher = PieceHasher::new(len, 0);
            for part in data.chunks(feed) {
                hasher.update(part);
            }
            let cvs = hasher.finish();
            prop_assert_eq!(cvs.len() as u64, (size as u64).div_ceil(len));
            prop_assert_eq!(root_of(&cvs, len, size as u64), Digest::of(&data));
        }

        /// Hashing from a later piece gives the same chaining values as hashing from the
        /// start: pieces can be hashed apart (on several threads) and checked one by one.
        #[test]
        fn pieces_hash_alike_from_any_starting_piece(size in 3000usize..20_000, first in 1u32..3) {
            let len = 1024u64;
            let data = content(size, 3);
            let whole = cvs_of(&data, len);
            let mut later = PieceHasher::new(len, first);
            later.update(&data[(u64::from(first) * len) as usize..]);
            prop_assert_eq!(&whole[first as usize..], &later.finish()[..]);
        }
    }

    #[test]
    fn piece_lengths_follow_the_size() {
        assert_eq!(piece_len(0), None);
        assert_eq!(piece_len(PIECE_MIN), None);
        assert_eq!(piece_len(PIECE_MIN + 1), Some(PIECE_MIN));
        assert_eq!(piece_count(PIECE_MIN + 1), 2);
        assert_eq!(piece_count(64 << 20), 64);
        assert_eq!(piece_len(MAX_PIECES * PIECE_MIN), Some(PIECE_MIN));
        assert_eq!(piece_len(MAX_PIECES * PIECE_MIN + 1), Some(2 * PIECE_MIN));
        assert_eq!(piece_count(1 << 40), MAX_PIECES as usize);
        assert!(piece_count(u64::MAX) as u64 <= MAX_PIECES);
    }

    #[test]
    fn real_pieces_are_accepted_and_forged_ones_refused() {
        let size = (2 * PIECE_MIN + 5) as usize;
        let data = content(size, 1);
        let len = piece_len(size as u64).unwrap();
        let cvs = cvs_of(&data, len);
        let digest = Digest::of(&data);
        let pieces = Pieces::new(size as u64, digest, cvs.clone()).expect("true pieces");
        assert_eq!(pieces.range(2), (2 * PIECE_MIN, 5));
        let mut forged = cvs.clone();
        forged[1][0] ^= 1;
        assert!(Pieces::new(size as u64, digest, forged).is_none());
        assert!(Pieces::new(size as u64, digest, cvs[..2].to_vec()).is_none());
        assert!(Pieces::new(PIECE_MIN, Digest::of(&data[..PIECE_MIN as usize]), vec![]).is_none());
    }

    #[test]
    fn an_edit_shares_every_piece_but_the_one_it_touches() {
        let size = (3 * PIECE_MIN + 100) as usize;
        let old = content(size, 1);
        let mut new = old.clone();
        new[PIECE_MIN as usize + 10] ^= 0xff;
        let len = piece_len(size as u64).unwrap();
        let pieces = |data: &[u8]| {
            Pieces::new(data.len() as u64, Digest::of(data), cvs_of(data, len)).unwrap()
        };
        let (shared, lacking) = pieces(&new).shared_with(&pieces(&old)).unwrap();
        assert_eq!((shared, lacking), (vec![0, 2, 3], vec![1]));
        // Grown by a piece: the old last piece (shorter) is not shared.
        let mut grown = old.clone();
        grown.extend(content(PIECE_MIN as usize, 9));
        let (shared, lacking) = pieces(&grown).shared_with(&pieces(&old)).unwrap();
        assert_eq!((shared, lacking), (vec![0, 1, 2], vec![3, 4]));
    }
}

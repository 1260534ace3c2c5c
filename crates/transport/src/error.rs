//! The transport's error type.

/// What can go wrong while moving messages between ranks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rank that this transport does not know was addressed.
    #[error("rank {rank} is not part of this virtual machine (it has {size} ranks); address a rank from `peers()`")]
    UnknownRank {
        /// The rank addressed.
        rank: crate::Rank,
        /// How many ranks there are.
        size: usize,
    },
}

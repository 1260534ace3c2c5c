//! Shipping mirrored inputs to hosts that do not share the mirrored folders.
//!
//! The spawner describes what a VM's mirror map matches beneath one mirrored root as a
//! Merkle [`Manifest`] (BLAKE3 [`Digest`]s), kept up to date by a [`Scanner`]. A worker
//! whose host does not see that root with the same content asks its [`HostCache`] which
//! blobs it lacks ([`HostCache::missing`]), claims each ([`HostCache::begin`]) so that one
//! process of the host fetches it, writes it through a [`BlobWriter`] (size and digest
//! checked), and materialises the manifest as an immutable [`Snapshot`] tree. Mirroring
//! then reads from the snapshot in place of the mirrored root, so map semantics are those
//! of shared mirroring by construction. This crate knows nothing of transports or the VM.

mod cache;
mod digest;
mod error;
mod manifest;
mod scan;
mod snapshot;

pub use cache::{Begin, BlobWriter, CacheLimits, HostCache};
pub use digest::Digest;
pub use error::{Error, Result};
pub use manifest::{
    Entry, MAX_DEPTH, MAX_ENTRIES, MAX_NAME, MAX_TARGET, Manifest, Node, NodeKind, Timestamp,
};
pub use scan::Scanner;
pub use snapshot::Snapshot;

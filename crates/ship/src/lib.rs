//! Shipping mirrored inputs to hosts that do not share the mirrored folders.
//!
//! The spawner describes what a VM's mirror map matches beneath one mirrored root as a
//! Merkle [`Manifest`] (BLAKE3 [`Digest`]s), kept up to date by a [`Scanner`]. A worker
//! whose host does not see that root with the same content asks its [`HostCache`] which
//! blobs it lacks ([`HostCache::missing`]), claims each ([`HostCache::begin`]) so that one
//! thread or process of the host fetches it, writes it through a [`BlobWriter`] (size and
//! digest checked), and materialises the manifest as an immutable [`Snapshot`] tree.
//! Mirroring then reads from the snapshot in place of the mirrored root, so map semantics
//! (globs, targets, symlink rules, modes, times, refresh) are those of shared mirroring by
//! construction. This crate knows nothing of transports, frames or the VM.
//!
//! | module | owns |
//! | --- | --- |
//! | `digest.rs` | [`Digest`]: 32 bytes, shown as 64 hex digits |
//! | `pieces.rs` | [`Pieces`]: a large file's BLAKE3 subtrees, so a changed file travels as the pieces that changed |
//! | `manifest/` | [`Manifest`], [`Node`] (name, kind, mode, time, Merkle digest) and the wire form, decoded as hostile input (`codec.rs`) |
//! | `scan.rs` | [`Scanner`]: sources expanded with mirror-fs's rules ([`parvm_mirror_fs::expand_source`]), a `stat` walk per call, only changed files hashed again |
//! | `cache/` | [`HostCache`]: the private folder (`dirs.rs`), claims (`claim.rs`), writers (`blob.rs`), pins (`pin.rs`), the LRU journal (`index.rs`), eviction (`evict.rs`), the blobs this process verified (`verified.rs`) and [`CacheUsage`] (`usage.rs`) |
//! | `snapshot/` | [`Snapshot`] and how one is built (`mod.rs`: files hard-linked to their blobs) or patched from the previous one (`patch.rs`) |
//! | `watch.rs` | inotify on the folders a scan read, trusted as mirror-fs's source watch is, for at most `FULL_SCAN_EVERY` |
//! | `par.rs` | one job per item on as many threads as there are cores, the first error in item order |
//! | `error.rs` | [`Error`] |
//!
//! What holds whatever peers and other processes do:
//!
//! - A manifest from a peer is validated whole before use: names are single path
//!   components, children sorted and unique, depth and count bounded, nothing allocated
//!   beyond what the bytes hold, and every folder digest recomputed up to the root digest
//!   sent with it.
//! - A blob enters the cache only with the size and digest its manifest gives; a blob that
//!   rots there is found when a snapshot is next built from it (hashed first, unless this
//!   process hashed it and its file's change time has not moved since), removed with the
//!   snapshots that share its file, and listed by [`HostCache::missing`] again.
//! - One fetch per blob per host: claims are `flock`s, which the kernel releases when a
//!   fetcher dies; the next claimant removes what it left.
//! - A snapshot is built (or patched) under a temporary name and renamed into place whole,
//!   so one that exists is complete; only one that no other pin holds is patched, taken
//!   out of place first; eviction never removes one that a live [`Snapshot`] or a build
//!   uses, nor the blobs a build or a pending [`HostCache::missing`] needs (pins, checked
//!   under the index's lock).
//!
//! ```
//! use parvm_ship::{Manifest, Scanner};
//!
//! let shared = tempfile::tempdir()?;
//! std::fs::create_dir(shared.path().join("lib"))?;
//! std::fs::write(shared.path().join("lib/a.lib"), "model a")?;
//! let mut scanner = Scanner::new(vec![shared.path().to_path_buf()], 0, vec![b"lib/*.lib".to_vec()]);
//! let manifest = scanner.manifest()?;
//! // What travels to a worker, and what it reads back.
//! let received = Manifest::decode(&manifest.encode())?;
//! assert_eq!(received.root_digest(), manifest.root_digest());
//! // Nothing changed: the same manifest, nothing hashed again.
//! assert!(std::sync::Arc::ptr_eq(&manifest, &scanner.manifest()?));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod digest;
mod error;
mod manifest;
mod par;
mod pieces;
mod scan;
mod snapshot;
mod watch;

pub use cache::{Begin, BlobWriter, CacheLimits, CacheUsage, HostCache, RECONCILE_EVERY};
pub use digest::Digest;
pub use error::{Error, Result};
pub use manifest::{
    Entry, MAX_DEPTH, MAX_ENTRIES, MAX_NAME, MAX_TARGET, Manifest, Node, NodeKind, Timestamp,
};
pub use pieces::{MAX_PIECES, PIECE_MIN, Pieces, piece_count, piece_len};
pub use scan::{Scanner, SourceBlob, WAY_MODE};
pub use snapshot::Snapshot;

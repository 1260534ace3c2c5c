//! Shipping mirrored inputs to hosts that do not share a mirrored root (issue #12).
//!
//! A VM's map names sources beneath mirrored roots. With `PARVM_SHIP=auto` the spawner
//! writes a marker file with a random token into each root the map uses ([`probe`]); a
//! worker that reads the same token under its own root reads that root directly, as
//! mirroring always did, and one that does not (the root is missing there, or is another
//! folder) has it shipped: the spawner describes what the map matches beneath the root as
//! a Merkle manifest (`parvm_ship::Scanner`) and streams the blobs the worker's host
//! cache lacks ([`serve`], on a thread of its own, so the event pump never waits for a
//! disk); the worker materialises a snapshot of the manifest in its host cache and mirrors
//! from it with that root replaced ([`fetch`]). Map semantics are therefore those of
//! mirroring, by construction.
//!
//! It must not know the slot table or how the spawn loop runs; the worker hands [`fetch`]
//! an [`fetch::Exchange`] to talk to the spawner through.

pub(crate) mod fetch;
pub(crate) mod probe;
pub(crate) mod serve;

pub use serve::ShipStats;

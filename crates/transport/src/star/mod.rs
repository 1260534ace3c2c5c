//! The star topology shared by the local and TCP backends: a [`Hub`] on the spawner (one
//! reader thread per connection feeding one channel, in `hub`) and a [`Client`] on each
//! worker (which reads its one socket directly in `recv`, in `client`); both wait with the
//! spin-then-sleep of `spin`.
//!
//! Owns moving frames over connected streams; `stream` holds the stream of either family,
//! the writer of a connection, and which reader a connection uses (plain frames from
//! [`crate::frame`], sealed records from [`crate::seal`]). Must not know how connections
//! are made: the backends (`local`, `tcp`) launch or accept, then hand a connected
//! [`Stream`] over. This file only declares and re-exports; the modules below it import
//! one another one way (client, hub → spin, stream), never this file.

mod client;
mod hub;
mod spin;
mod stream;

pub(crate) use self::client::Client;
pub(crate) use self::hub::{Explain, Hub};
pub use self::spin::{DEFAULT_SPIN_WINDOW, MAX_SPIN_WINDOW};
pub(crate) use self::stream::{Sealing, Stream, error_chain, lock};

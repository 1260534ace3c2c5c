//! A small message-passing trait for parvm, with backends.
//!
//! Rank 0 is the spawner; every other rank is a worker. The trait moves opaque byte
//! payloads; what they mean is the VM's business.

mod error;

use std::time::Duration;

pub use error::Error;

/// The index of one process in the virtual machine; rank 0 is the spawner.
pub type Rank = u32;

/// One process of the virtual machine, as seen from this one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The process's rank.
    pub rank: Rank,
    /// The host it runs on (`PARVM_HOSTNAME` or the real hostname of that host).
    pub host: String,
}

/// Something that happened on the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message arrived.
    Message {
        /// Who sent it.
        from: Rank,
        /// The bytes it carries.
        payload: Vec<u8>,
    },
    /// A new peer joined after start-up (a TCP worker that connected later).
    PeerJoined(Peer),
    /// A peer is gone: its process exited, its connection broke, or it broke the protocol
    /// and was dropped. No more messages come from it, and sends to it fail.
    PeerLost {
        /// The rank that was lost.
        rank: Rank,
        /// Why, in words for a log line.
        reason: String,
    },
}

/// How long [`Transport::recv`] may wait for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until an event arrives.
    Forever,
    /// At most this long; then `Ok(None)`.
    For(Duration),
    /// Not at all: return an event that is already there, else `Ok(None)`.
    NoWait,
}

/// Moves byte payloads between the ranks of one virtual machine.
///
/// Implementations must allow `send` from one thread while another is blocked in `recv`.
/// Waiting must sleep, not spin a core (a short spin before blocking is fine).
pub trait Transport: Send + Sync {
    /// This process's rank.
    fn rank(&self) -> Rank;

    /// Every rank this process can currently reach, itself included, ordered by rank.
    fn peers(&self) -> Vec<Peer>;

    /// Sends `payload` to rank `to`.
    ///
    /// # Errors
    /// The rank is unknown or lost, or the bytes could not be written.
    fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error>;

    /// Waits for the next event, as long as `wait` allows.
    ///
    /// # Errors
    /// The transport itself failed (not a single peer: a lost peer is an [`Event::PeerLost`]).
    fn recv(&self, wait: Wait) -> Result<Option<Event>, Error>;

    /// The name of this backend (`local`, `tcp`, `mpi`), for logs and `describe`.
    fn backend(&self) -> &'static str;

    /// The host this process runs on.
    fn host(&self) -> String {
        let me = self.rank();
        self.peers()
            .into_iter()
            .find(|peer| peer.rank == me)
            .map(|peer| peer.host)
            .unwrap_or_default()
    }

    /// How many ranks there are, this one included.
    fn size(&self) -> usize {
        self.peers().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Transport) {}
}

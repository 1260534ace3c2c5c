//! An in-process transport: every rank is an endpoint in this process, linked by channels.
//!
//! It lets the whole VM run in one process, with workers on threads (see parvm-vm's
//! `Worker`), which makes unit tests fast and needs no executable. Dropping
//! an endpoint tells every other endpoint [`Event::PeerLost`], as a dead process would.
//!
//! ```
//! use parvm_transport::memory::MemoryTransport;
//! use parvm_transport::{Event, Transport, Wait};
//!
//! let mut ranks = MemoryTransport::cluster(&["alpha", "alpha", "beta"]);
//! let beta = ranks.pop().unwrap();
//! let _alpha1 = ranks.pop().unwrap();
//! let spawner = ranks.pop().unwrap();
//! spawner.send(2, b"hi")?;
//! assert!(matches!(beta.recv(Wait::Forever)?, Some(Event::Message { from: 0, .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, Mutex, PoisonError};

use crate::{Error, Event, Peer, Rank, Transport, Wait};
use crossbeam_channel::{Receiver, Sender};

struct Fabric {
    peers: Vec<Peer>,
    senders: Vec<Sender<Event>>,
    alive: Mutex<Vec<bool>>,
}

/// One rank of an in-process virtual machine.
pub struct MemoryTransport {
    rank: Rank,
    fabric: Arc<Fabric>,
    inbox: Receiver<Event>,
}

impl MemoryTransport {
    /// Builds one endpoint per entry of `hosts`; entry *i* is rank *i* on that host, and
    /// rank 0 is the spawner.
    #[must_use]
    pub fn cluster(hosts: &[&str]) -> Vec<MemoryTransport> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            hosts.iter().map(|_| crossbeam_channel::unbounded()).unzip();
        let peers = (0u32..)
            .zip(hosts)
            .map(|(rank, host)| Peer {
                rank,
                host: (*host).to_owned(),
            })
            .collect();
        let fabric = Arc::new(Fabric {
            peers,
            senders,
            alive: Mutex::new(vec![true; hosts.len()]),
        });
        (0u32..)
            .zip(receivers)
            .map(|(rank, inbox)| MemoryTransport {
                rank,
                fabric: Arc::clone(&fabric),
                inbox,
            })
            .collect()
    }

    fn alive(&self) -> Vec<bool> {
        self.fabric
            .alive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Transport for MemoryTransport {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn peers(&self) -> Vec<Peer> {
        let alive = self.alive();
        self.fabric
            .peers
            .iter()
            .zip(alive)
            .filter(|(_, alive)| *alive)
            .map(|(peer, _)| peer.clone())
            .collect()
    }

    fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        let unknown = || Error::UnknownRank {
            rank: to,
            size: self.fabric.peers.len(),
        };
        let index = usize::try_from(to).map_err(|_| unknown())?;
        let sender = self.fabric.senders.get(index).ok_or_else(unknown)?;
        if !self.alive().get(index).copied().unwrap_or(false) {
            return Err(unknown());
        }
        sender
            .send(Event::Message {
                from: self.rank,
                payload: payload.to_vec(),
            })
            .map_err(|_| unknown())
    }

    fn recv(&self, wait: Wait) -> Result<Option<Event>, Error> {
        Ok(match wait {
            Wait::Forever => self.inbox.recv().ok(),
            Wait::For(timeout) => self.inbox.recv_timeout(timeout).ok(),
            Wait::NoWait => self.inbox.try_recv().ok(),
        })
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    /// True: frames move between threads of one process.
    fn delivers_frames_intact(&self) -> bool {
        true
    }

    fn host(&self) -> String {
        usize::try_from(self.rank)
            .ok()
            .and_then(|i| self.fabric.peers.get(i))
            .map(|peer| peer.host.clone())
            .unwrap_or_default()
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        let index = self.rank as usize;
        if let Some(alive) = self
            .fabric
            .alive
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(index)
        {
            *alive = false;
        }
        for (rank, sender) in self.fabric.senders.iter().enumerate() {
            if rank != index {
                let _ = sender.send(Event::PeerLost {
                    rank: self.rank,
                    reason: "its endpoint was dropped".to_owned(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_an_endpoint_is_a_lost_peer() {
        let mut ranks = MemoryTransport::cluster(&["a", "b"]);
        let worker = ranks.pop().unwrap();
        let spawner = ranks.pop().unwrap();
        drop(worker);
        assert!(matches!(
            spawner.recv(Wait::NoWait).unwrap(),
            Some(Event::PeerLost { rank: 1, .. })
        ));
        assert!(spawner.send(1, b"x").is_err());
        assert_eq!(spawner.peers().len(), 1);
    }
}

//! A worker's MPI transport that can be finalised while other handles on it remain.
//!
//! A worker process's output-forwarding thread keeps its handle on the transport until the
//! process ends, but MPI must be finalised before that; the worker serves through a
//! [`Closable`] and closes it when its loop ends. This module knows MPI's transport and
//! the [`Transport`] trait, nothing of what the payloads mean.

use std::sync::{Arc, PoisonError, RwLock};

use super::MpiTransport;
use crate::{Error, Event, Peer, Rank, Transport, Wait};

/// Shares one [`MpiTransport`]; [`Closable::close`] drops it (finalising MPI) and
/// every handle fails from then on as if the spawner were lost.
#[derive(Clone)]
pub struct Closable {
    inner: Arc<RwLock<Option<MpiTransport>>>,
    rank: Rank,
    peers: Vec<Peer>,
}

impl Closable {
    /// Wraps `transport`; every clone shares it.
    #[must_use]
    pub fn new(transport: MpiTransport) -> Closable {
        Closable {
            rank: transport.rank(),
            peers: transport.peers(),
            inner: Arc::new(RwLock::new(Some(transport))),
        }
    }

    /// Drops the transport; waits for calls in progress on other handles.
    pub fn close(&self) {
        let transport = self
            .inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(transport);
    }

    fn closed(&self, rank: Rank) -> Error {
        Error::PeerLost {
            rank,
            host: self
                .peers
                .iter()
                .find(|p| p.rank == rank)
                .map(|p| p.host.clone())
                .unwrap_or_default(),
            reason: "this worker has finalised MPI".to_owned(),
        }
    }
}

impl Transport for Closable {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn peers(&self) -> Vec<Peer> {
        self.peers.clone()
    }

    fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        match &*self.inner.read().unwrap_or_else(PoisonError::into_inner) {
            Some(transport) => transport.send(to, payload),
            None => Err(self.closed(to)),
        }
    }

    fn send_parts(&self, to: Rank, parts: &[&[u8]]) -> Result<(), Error> {
        match &*self.inner.read().unwrap_or_else(PoisonError::into_inner) {
            Some(transport) => transport.send_parts(to, parts),
            None => Err(self.closed(to)),
        }
    }

    fn recv(&self, wait: Wait) -> Result<Option<Event>, Error> {
        match &*self.inner.read().unwrap_or_else(PoisonError::into_inner) {
            Some(transport) => transport.recv(wait),
            None => Ok(Some(Event::PeerLost {
                rank: 0,
                reason: "this worker has finalised MPI".to_owned(),
            })),
        }
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn size(&self) -> usize {
        self.peers.len()
    }
}

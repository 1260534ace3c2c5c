//! The MPI backend's receiving side: the always-posted receive, split messages (a head
//! and its tail on the second communicator) and the messages held behind them, so every
//! sender's messages arrive in order.
//!
//! Owns [`Receiver`], which one thread at a time holds (under `MpiTransport`'s lock), the
//! size of its always-posted buffer ([`INLINE`]), and [`Inbound`], what receiving reads of
//! the transport. Must not know `MpiTransport` itself, how a `recv` waits (see `backoff`)
//! nor how messages are sent.

use std::collections::VecDeque;

use super::raw;
use crate::{Error, Event, Peer, Rank};

/// The size of the receive buffer that is always posted: payloads up to this size travel
/// as one message that MPI copies straight into it, larger ones as a head and a tail (see
/// [`Transport::send_parts`](crate::Transport::send_parts)). Above Open MPI's shared-memory
/// eager limit (4 KiB) a message needs a rendezvous anyway, so the head costs little next to it.
pub const INLINE: usize = 8 * 1024;

/// The receiving side; one thread at a time takes messages out of MPI, under its lock,
/// which keeps every sender's messages in order.
pub(super) struct Receiver {
    /// Events a sending thread took out of MPI while it waited for its receiver.
    pub(super) inbox: VecDeque<Event>,
    pub(super) posted: raw::PostedRecv,
    /// Split messages whose tail has not been matched yet, at most one per sender.
    pub(super) splits: Vec<Split>,
    /// Messages that were held behind a split of their sender, to be handled again now
    /// that it completed.
    pub(super) replay: VecDeque<raw::Arrival>,
}

/// The head of a split message, waiting for its tail.
pub(super) struct Split {
    from: Rank,
    head: Vec<u8>,
    /// Later messages of the same sender, which must not overtake the split one.
    held: VecDeque<raw::Arrival>,
}

/// What the receiving side reads of its transport: this rank, the host of every rank (named
/// when a peer is lost), and the communicator the tails of split messages arrive on.
pub(super) struct Inbound<'a> {
    pub(super) rank: Rank,
    pub(super) peers: &'a [Peer],
    pub(super) bulk: &'a raw::Comm,
}

impl Inbound<'_> {
    /// Takes one message from MPI, if one is there. The caller holds the receiver's lock
    /// (the argument proves it).
    pub(super) fn take_one(&self, rx: &mut Receiver) -> Result<Option<Event>, Error> {
        loop {
            if let Some(event) = self.take_tail(rx) {
                return Ok(Some(event));
            }
            let arrival = match rx.replay.pop_front() {
                Some(arrival) => arrival,
                None => match self.poll(rx)? {
                    Ok(arrival) => arrival,
                    Err(None) => return Ok(None),
                    Err(Some(lost)) => return Ok(Some(lost)),
                },
            };
            if let Some(event) = self.handle(rx, arrival) {
                return Ok(Some(event));
            }
        }
    }

    /// The next message of the posted receive; `Err(None)` when none arrived, and
    /// `Err(Some(_))` for a message from a peer that could not be received.
    fn poll(&self, rx: &mut Receiver) -> Result<Result<raw::Arrival, Option<Event>>, Error> {
        match rx.posted.poll() {
            Ok(Some(arrival)) => Ok(Ok(arrival)),
            Ok(None) => Ok(Err(None)),
            Err(raw::Failed {
                source: Some(source),
                error,
            }) => Ok(Err(Some(self.lost(
                Rank::try_from(source).unwrap_or(Rank::MAX),
                &format!(
                    "sent a message this rank could not receive ({error}); a message of more than {INLINE} bytes outside a split send means the ranks run different programs or versions"
                ),
            )))),
            Err(raw::Failed {
                source: None,
                error,
            }) => Err(error.into_error(self.rank)),
        }
    }

    /// Turns a message of the posted receive into an event; `None` when it waits behind a
    /// split message of its sender or starts one.
    fn handle(&self, rx: &mut Receiver, arrival: raw::Arrival) -> Option<Event> {
        let from = Rank::try_from(arrival.source).unwrap_or(Rank::MAX);
        if let Some(index) = rx.splits.iter().position(|split| split.from == from) {
            if arrival.tag != Some(raw::Tag::Leave) {
                rx.splits[index].held.push_back(arrival);
                return None;
            }
            // The sender leaves with a tail unsent: its head is all that will ever come.
            let split = rx.splits.swap_remove(index);
            tracing::warn!(
                rank = from,
                head = split.head.len(),
                "rank {from} left before the tail of its split message arrived; dropping its head"
            );
            rx.replay.extend(split.held);
            rx.replay.push_back(arrival);
            return None;
        }
        match arrival.tag {
            Some(raw::Tag::Data | raw::Tag::DataByte(_)) => Some(Event::Message {
                from,
                payload: arrival.payload,
            }),
            Some(raw::Tag::Leave) => Some(self.lost(from, "left (its transport was dropped)")),
            Some(raw::Tag::Head) => {
                rx.splits.push(Split {
                    from,
                    head: arrival.payload,
                    held: VecDeque::new(),
                });
                None
            }
            Some(raw::Tag::Tail) | None => Some(self.lost(
                from,
                "sent a message with a tag this backend does not use; the ranks run different programs or versions",
            )),
        }
    }

    /// Completes a split message whose tail (sent right after its head) arrived: the tail
    /// is received behind the head into one vector, without a copy of the tail. `None`
    /// while every tail is still on its way.
    fn take_tail(&self, rx: &mut Receiver) -> Option<Event> {
        let (index, found) = rx.splits.iter().enumerate().find_map(|(index, split)| {
            let source = i32::try_from(split.from).unwrap_or(-1);
            match self.bulk.improbe_tail(source) {
                Ok(None) => None,
                Ok(Some(tail)) => Some((index, Ok(tail))),
                Err(e) => Some((index, Err(e))),
            }
        })?;
        let split = rx.splits.swap_remove(index);
        rx.replay.extend(split.held);
        let from = split.from;
        let mut payload = split.head;
        let received = found.and_then(|tail| {
            payload.reserve_exact(tail.len());
            tail.receive_append(&mut payload)
        });
        Some(match received {
            Ok(()) => Event::Message { from, payload },
            Err(e) => self.lost(from, &format!("could not be received from: {e}")),
        })
    }

    fn lost(&self, from: Rank, what: &str) -> Event {
        let host = usize::try_from(from)
            .ok()
            .and_then(|index| self.peers.get(index))
            .map_or("?", |peer| peer.host.as_str());
        Event::PeerLost {
            rank: from,
            reason: format!("rank {from} on host `{host}` {what}"),
        }
    }
}

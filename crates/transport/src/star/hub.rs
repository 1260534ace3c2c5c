//! The spawner's end of the star: one reader thread per connection feeding one channel
//! that `recv` drains, and a writer per connection that any thread sends through.
//!
//! Owns the table of connections (rank → peer, writer, lost reason) and turns a
//! connection's end into one [`Event::PeerLost`]. Must not know how connections are
//! made (launch or TCP accept and handshake) nor what the payloads mean.

use std::collections::BTreeMap;
use std::io::{self, BufReader};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::spin::{Spin, readable_now, recv_channel};
use super::stream::{READ_BUFFER, Sealing, Stream, Writer, broken_because, lock, read_frame};
use crate::seal::Opener;
use crate::{Error, Event, Peer, Rank, Wait};

/// One connection on the hub.
#[derive(Debug)]
struct Conn {
    peer: Peer,
    /// `None` once the peer is lost, so its descriptor is closed.
    writer: Mutex<Option<Writer>>,
    /// A handle used only to shut the connection down from another thread; `None` once
    /// the peer is lost.
    control: Mutex<Option<Stream>>,
    lost: Mutex<Option<String>>,
    /// Why the spawner gave the peer up ([`Hub::give_up`]): the reason its loss reports.
    given_up: Mutex<Option<String>>,
}

impl Conn {
    fn shutdown(&self) {
        if let Some(control) = lock(&self.control).as_ref() {
            control.shutdown();
        }
    }
}

/// The spawner's end of the star.
#[derive(Debug)]
pub(crate) struct Hub {
    backend: &'static str,
    me: Peer,
    max_frame: u64,
    conns: RwLock<BTreeMap<Rank, Arc<Conn>>>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    closing: AtomicBool,
    /// How `recv` spins before sleeping.
    spin: Spin,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The reason given when a peer closed its connection between two frames.
pub(crate) const CLOSED: &str = "it closed its connection";

/// Turns the reason a connection ended into the reason reported in `PeerLost` (the local
/// backend adds the process's exit status): the whole of what the user is told of the loss.
/// The hub logs at debug level only; the layer that knows whether the loss is news warns.
pub(crate) type Explain = Box<dyn FnOnce(String) -> String + Send>;

impl Hub {
    /// The spawner's end, receiving frames up to `max_frame` bytes and spinning for
    /// `spin_window` before a wait sleeps.
    pub(crate) fn new(
        backend: &'static str,
        me: Peer,
        max_frame: u64,
        spin_window: Duration,
    ) -> Arc<Hub> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Arc::new(Hub {
            backend,
            me,
            max_frame,
            conns: RwLock::new(BTreeMap::new()),
            tx,
            rx,
            closing: AtomicBool::new(false),
            spin: Spin::new(spin_window),
            threads: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn me(&self) -> &Peer {
        &self.me
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub(crate) fn post(&self, event: Event) {
        // The hub owns the receiver, so sending cannot fail while the hub lives.
        let _ = self.tx.send(event);
    }

    /// Registers a connection and returns what its reader must run, on a thread of the
    /// caller's choosing.
    pub(crate) fn add(
        self: &Arc<Self>,
        peer: Peer,
        stream: Stream,
        explain: Explain,
    ) -> io::Result<impl FnOnce() + Send + 'static> {
        self.add_sealed(peer, stream, None, explain)
    }

    /// As [`Hub::add`], sealing and opening every frame when `sealing` is given.
    pub(crate) fn add_sealed(
        self: &Arc<Self>,
        peer: Peer,
        stream: Stream,
        sealing: Option<Sealing>,
        explain: Explain,
    ) -> io::Result<impl FnOnce() + Send + 'static> {
        let (seal, open) = match sealing {
            Some(Sealing { seal, open }) => (Some(Box::new(seal)), Some(Box::new(open))),
            None => (None, None),
        };
        let writer = Writer {
            stream: stream.try_clone()?,
            seal,
        };
        let control = stream.try_clone()?;
        let conn = Arc::new(Conn {
            peer: peer.clone(),
            writer: Mutex::new(Some(writer)),
            control: Mutex::new(Some(control)),
            lost: Mutex::new(None),
            given_up: Mutex::new(None),
        });
        self.conns
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer.rank, conn.clone());
        if self.is_closing() {
            conn.shutdown();
        }
        let hub = self.clone();
        Ok(move || hub.read_loop(&conn, stream, open, explain))
    }

    /// Remembers a thread to join when the hub closes.
    pub(crate) fn keep_thread(&self, handle: JoinHandle<()>) {
        let mut threads = lock(&self.threads);
        // Dropping the handle of a finished thread only detaches it; this keeps the list short
        // when many connections come and go.
        threads.retain(|thread| !thread.is_finished());
        threads.push(handle);
    }

    fn read_loop(
        &self,
        conn: &Conn,
        stream: Stream,
        mut open: Option<Box<Opener>>,
        explain: Explain,
    ) {
        let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
        // The reader spins too: the program's thread spinning in `recv` keeps one core
        // awake, but the reply comes through this thread, and waking it from a blocking
        // read costs more than the message in a ping-pong.
        let spin = Spin::new(self.spin.window());
        let reason = loop {
            let waited = reader.buffer().is_empty().then(|| {
                let fd = reader.get_ref().as_fd();
                let start = Instant::now();
                // A poll error shows up again in the read that follows.
                let _ = spin.spin(start, None, || Ok(readable_now(fd)?.then_some(())));
                start
            });
            match read_frame(&mut reader, self.max_frame, open.as_deref_mut()) {
                Ok(Some(payload)) => {
                    if waited.is_some() {
                        spin.record(waited);
                    }
                    self.post(Event::Message {
                        from: conn.peer.rank,
                        payload,
                    });
                }
                Ok(None) => break CLOSED.to_string(),
                Err(err) => break format!("its connection failed: {}", broken_because(&err)),
            }
        };
        conn.shutdown();
        let reason = lock(&conn.given_up).take().unwrap_or(reason);
        *lock(&conn.lost) = Some(reason.clone());
        // Close every descriptor of the connection now: a spawner whose workers come and
        // go for days must not collect them. Only the peer's name and the reason stay.
        drop(reader);
        lock(&conn.writer).take();
        lock(&conn.control).take();
        if self.is_closing() {
            return;
        }
        // Logged here for the transport's own record only: whether a loss is news (a
        // worker that held a slot, gone before its spawner dismissed it) is known above,
        // and said there once (the VM warns, with this reason).
        tracing::debug!(
            backend = self.backend,
            rank = conn.peer.rank,
            host = %conn.peer.host,
            "peer gone: {reason}"
        );
        let reason = explain(reason);
        self.post(Event::PeerLost {
            rank: conn.peer.rank,
            reason,
        });
    }

    pub(crate) fn peers(&self) -> Vec<Peer> {
        let conns = self
            .conns
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::iter::once(self.me.clone())
            .chain(
                conns
                    .values()
                    .filter(|conn| lock(&conn.lost).is_none())
                    .map(|conn| conn.peer.clone()),
            )
            .collect()
    }

    /// The connection of `rank`, lost or not; `None` for a rank never seen.
    fn conn(&self, rank: Rank) -> Option<Arc<Conn>> {
        self.conns
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&rank)
            .cloned()
    }

    /// How many connections were ever registered.
    fn conns_len(&self) -> usize {
        self.conns
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Ends the connection to `rank`, whose loss then reports `reason`; false when the
    /// rank is unknown or lost already. The reader sees the connection end and reports the
    /// loss as for any other end.
    pub(crate) fn give_up(&self, rank: Rank, reason: &str) -> bool {
        let Some(conn) = self.conn(rank) else {
            return false;
        };
        if lock(&conn.lost).is_some() || lock(&conn.control).is_none() {
            return false;
        }
        {
            let mut given_up = lock(&conn.given_up);
            if given_up.is_some() {
                return false;
            }
            *given_up = Some(reason.to_owned());
        }
        conn.shutdown();
        true
    }

    pub(crate) fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        self.send_parts(to, &[payload])
    }

    /// Sends the concatenation of `parts`, written with one vectored write.
    pub(crate) fn send_parts(&self, to: Rank, parts: &[&[u8]]) -> Result<(), Error> {
        if to == self.me.rank {
            self.post(Event::Message {
                from: to,
                payload: parts.concat(),
            });
            return Ok(());
        }
        let Some(conn) = self.conn(to) else {
            return Err(Error::UnknownRank {
                rank: to,
                size: self.conns_len() + 1,
            });
        };
        if let Some(reason) = lock(&conn.lost).clone() {
            return Err(Error::PeerLost {
                rank: to,
                host: conn.peer.host.clone(),
                reason,
            });
        }
        let mut writer = lock(&conn.writer);
        let Some(writer) = writer.as_mut() else {
            return Err(Error::PeerLost {
                rank: to,
                host: conn.peer.host.clone(),
                reason: lock(&conn.lost)
                    .clone()
                    .unwrap_or_else(|| CLOSED.to_string()),
            });
        };
        writer.write_parts(parts).map_err(|source| Error::Send {
            rank: to,
            host: conn.peer.host.clone(),
            bytes: parts.iter().map(|part| part.len()).sum(),
            source,
        })
    }

    pub(crate) fn recv(&self, wait: Wait) -> Option<Event> {
        recv_channel(&self.rx, wait, &self.spin)
    }

    /// Stops delivering events and shuts every connection down, which ends the readers
    /// and tells the workers to leave.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let conns = self
            .conns
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for conn in conns.values() {
            conn.shutdown();
        }
    }

    /// Joins the threads kept with [`Hub::keep_thread`]; call after [`Hub::close`].
    pub(crate) fn join(&self) {
        let threads = std::mem::take(&mut *lock(&self.threads));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

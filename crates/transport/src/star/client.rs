//! A worker's end of the star: one connection to the spawner, read directly in `recv`
//! (no thread in between), written under a lock by any thread.
//!
//! Owns what a worker knows of its spawner (its host, address, and whether it is lost).
//! Must not know how the connection was made (local socket or TCP handshake) nor what the
//! payloads mean.

use std::io::{self, BufReader};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::spin::{DEFAULT_SPIN_WINDOW, Spin, readable_now, wait_readable};
use super::stream::{READ_BUFFER, Sealing, Stream, Writer, broken_because, lock, read_frame};
use crate::seal::Opener;
use crate::{Error, Event, Peer, Rank, Wait};

/// A worker's end of the star: one connection to the spawner.
#[derive(Debug)]
pub(crate) struct Client {
    backend: &'static str,
    rank: Rank,
    host: String,
    spawner_host: String,
    max_frame: u64,
    reader: Mutex<ClientReader>,
    writer: Mutex<Writer>,
    /// Mirrors `ClientReader::lost`, readable while another thread blocks in `recv`.
    spawner_lost: AtomicBool,
    /// How `recv` spins before sleeping.
    spin: Spin,
    /// The spawner's address, for messages (TCP).
    spawner_addr: Option<String>,
}

#[derive(Debug)]
struct ClientReader {
    stream: BufReader<Stream>,
    /// Opens the spawner's sealed records (TCP).
    open: Option<Box<Opener>>,
    /// Set once the spawner is gone; later receives fail with this reason.
    lost: Option<String>,
}

impl Client {
    pub(crate) fn new(
        backend: &'static str,
        rank: Rank,
        host: String,
        spawner_host: String,
        max_frame: u64,
        stream: Stream,
    ) -> io::Result<Client> {
        Client::new_sealed(backend, rank, host, spawner_host, max_frame, stream, None)
    }

    /// As [`Client::new`], sealing and opening every frame when `sealing` is given.
    pub(crate) fn new_sealed(
        backend: &'static str,
        rank: Rank,
        host: String,
        spawner_host: String,
        max_frame: u64,
        stream: Stream,
        sealing: Option<Sealing>,
    ) -> io::Result<Client> {
        let (seal, open) = match sealing {
            Some(Sealing { seal, open }) => (Some(Box::new(seal)), Some(Box::new(open))),
            None => (None, None),
        };
        let writer = Writer {
            stream: stream.try_clone()?,
            seal,
        };
        Ok(Client {
            backend,
            rank,
            host,
            spawner_host,
            max_frame,
            reader: Mutex::new(ClientReader {
                stream: BufReader::with_capacity(READ_BUFFER, stream),
                open,
                lost: None,
            }),
            writer: Mutex::new(writer),
            spawner_lost: AtomicBool::new(false),
            spin: Spin::new(DEFAULT_SPIN_WINDOW),
            spawner_addr: None,
        })
    }

    /// Spins for `window` before a wait sleeps, instead of [`DEFAULT_SPIN_WINDOW`].
    pub(crate) fn with_spin_window(mut self, window: Duration) -> Client {
        self.spin = Spin::new(window);
        self
    }

    /// Names the spawner's address in the reasons of a lost spawner.
    pub(crate) fn with_spawner_addr(mut self, addr: impl Into<String>) -> Client {
        self.spawner_addr = Some(addr.into());
        self
    }

    /// "the spawner on host `h` (addr)", for messages.
    fn spawner_name(&self) -> String {
        match &self.spawner_addr {
            Some(addr) => format!("the spawner on host `{}` ({addr})", self.spawner_host),
            None => format!("the spawner on host `{}`", self.spawner_host),
        }
    }

    pub(crate) fn rank(&self) -> Rank {
        self.rank
    }

    pub(crate) fn host(&self) -> String {
        self.host.clone()
    }

    pub(crate) fn peers(&self) -> Vec<Peer> {
        let mut peers = vec![Peer {
            rank: self.rank,
            host: self.host.clone(),
        }];
        if !self.spawner_lost.load(Ordering::SeqCst) {
            peers.insert(
                0,
                Peer {
                    rank: 0,
                    host: self.spawner_host.clone(),
                },
            );
        }
        peers
    }

    pub(crate) fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        if to != 0 {
            return Err(Error::NotRoutable {
                from: self.rank,
                to,
            });
        }
        let mut writer = lock(&self.writer);
        writer
            .write_parts(&[payload])
            .map_err(|source| Error::Send {
                rank: 0,
                host: self.spawner_host.clone(),
                bytes: payload.len(),
                source,
            })
    }

    /// As [`Self::send`] with the payload in parts, written with one vectored write.
    pub(crate) fn send_parts(&self, to: Rank, parts: &[&[u8]]) -> Result<(), Error> {
        if to != 0 {
            return Err(Error::NotRoutable {
                from: self.rank,
                to,
            });
        }
        let mut writer = lock(&self.writer);
        writer.write_parts(parts).map_err(|source| Error::Send {
            rank: 0,
            host: self.spawner_host.clone(),
            bytes: parts.iter().map(|part| part.len()).sum(),
            source,
        })
    }

    /// Waits until the socket has data (or hung up) as long as `wait` allows: spins
    /// briefly (see [`Spin`]), then sleeps (a blocking `Wait::Forever` returns at once and
    /// leaves the sleeping to the read that follows).
    fn wait_socket(&self, stream: &Stream, wait: Wait) -> io::Result<Waited> {
        let fd = stream.as_fd();
        if readable_now(fd)? {
            return Ok(Waited::No);
        }
        let start = Instant::now();
        let deadline = match wait {
            Wait::NoWait => return Ok(Waited::TimedOut),
            Wait::Forever => None,
            Wait::For(d) => Some(start + d),
        };
        if self
            .spin
            .spin(start, deadline, || Ok(readable_now(fd)?.then_some(())))?
            .is_some()
        {
            return Ok(Waited::Since(start));
        }
        // Waiting forever needs no poll: the blocking read that follows sleeps until data
        // arrives, and saves two system calls per message.
        if deadline.is_none() || wait_readable(fd, deadline)? {
            Ok(Waited::Since(start))
        } else {
            self.spin.record(None);
            Ok(Waited::TimedOut)
        }
    }

    pub(crate) fn recv(&self, wait: Wait) -> Result<Option<Event>, Error> {
        let mut reader = lock(&self.reader);
        if let Some(reason) = &reader.lost {
            return Err(Error::PeerLost {
                rank: 0,
                host: self.spawner_host.clone(),
                reason: reason.clone(),
            });
        }
        let mut waited = Waited::No;
        if reader.stream.buffer().is_empty() {
            waited = self
                .wait_socket(reader.stream.get_ref(), wait)
                .map_err(|source| Error::Io {
                    backend: self.backend,
                    what: "wait for the spawner's next message".into(),
                    source,
                })?;
            if matches!(waited, Waited::TimedOut) {
                return Ok(None);
            }
        }
        let reader = &mut *reader;
        let read = read_frame(
            &mut reader.stream,
            self.max_frame,
            reader.open.as_deref_mut(),
        );
        if let Waited::Since(start) = waited {
            self.spin.record(Some(start));
        }
        let reason = match read {
            Ok(Some(payload)) => return Ok(Some(Event::Message { from: 0, payload })),
            Ok(None) => format!("{} closed the connection", self.spawner_name()),
            Err(err) => format!(
                "the connection to {} broke: {}",
                self.spawner_name(),
                broken_because(&err)
            ),
        };
        reader.stream.get_ref().shutdown();
        reader.lost = Some(reason.clone());
        self.spawner_lost.store(true, Ordering::SeqCst);
        Ok(Some(Event::PeerLost { rank: 0, reason }))
    }
}

/// How a worker's wait for its socket went.
enum Waited {
    /// Data was there already.
    No,
    /// It waited from this moment on, and data is there (or the read will wait for it).
    Since(Instant),
    /// No data came in time.
    TimedOut,
}

//! The star topology shared by the local and TCP backends: a hub on the spawner (one reader
//! thread per connection feeding one channel) and a client on each worker (which reads its
//! one socket directly in `recv`, with no thread in between).

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::{Error, Event, Peer, Rank, Wait, frame};

/// How long the spawner's `recv` spins on its channel before it sleeps. Being woken costs
/// a few microseconds per hop, and the spawner has two hops (socket to reader thread,
/// reader thread to channel); a message in a ping-pong usually arrives within this time.
const HUB_SPIN: Duration = Duration::from_micros(HUB_SPIN_US);
const HUB_SPIN_US: u64 = 20;

/// How long a worker's `recv` spins on its socket before it sleeps. Zero: a spinning
/// worker takes the core that the spawner's reader thread needs to deliver its next
/// message, which on small machines costs far more than it saves.
const CLIENT_SPIN: Duration = Duration::from_micros(CLIENT_SPIN_US);
const CLIENT_SPIN_US: u64 = 0;

/// Size of the read buffer on each connection: small frames arrive in one system call.
const READ_BUFFER: usize = 64 * 1024;

/// A connected byte stream of either family.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    pub(crate) fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self) {
        // Errors mean the connection is already down, which is what we want.
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tcp(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}

/// Locks a mutex, ignoring poisoning: the data behind our mutexes stays consistent even
/// when a thread panicked while holding one (a stream, a child handle).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits until `fd` is readable (or hung up), as long as `wait` allows: spins briefly, then
/// sleeps in `poll`. Returns whether it is readable.
fn wait_readable(fd: BorrowedFd<'_>, wait: Wait) -> io::Result<bool> {
    let poll_once = |timeout: PollTimeout| -> io::Result<bool> {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, timeout) {
                Ok(n) => return Ok(n > 0),
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(io::Error::from(errno)),
            }
        }
    };
    if poll_once(PollTimeout::ZERO)? {
        return Ok(true);
    }
    let deadline = match wait {
        Wait::NoWait => return Ok(false),
        Wait::Forever => None,
        Wait::For(d) => Some(Instant::now() + d),
    };
    let spin_until = Instant::now() + CLIENT_SPIN;
    while Instant::now() < spin_until && deadline.is_none_or(|d| Instant::now() < d) {
        std::hint::spin_loop();
        if poll_once(PollTimeout::ZERO)? {
            return Ok(true);
        }
    }
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                // Round up to whole milliseconds so a short wait does not turn into a spin.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
                PollTimeout::try_from(Duration::from_millis(ms as u64)).unwrap_or(PollTimeout::MAX)
            }
        };
        if poll_once(timeout)? {
            return Ok(true);
        }
    }
}

/// Receives from a channel as long as `wait` allows, spinning briefly before sleeping
/// when the previous wait was short.
///
/// The spin is adaptive: spinning holds a core, and on a small machine the reader thread
/// that must deliver the message may need that very core (a big payload keeps it busy
/// longer than the spin). So the receiver spins only while messages keep arriving within
/// the spin window, and sleeps at once after a wait that took longer.
fn recv_channel(rx: &Receiver<Event>, wait: Wait, spin: &AtomicBool) -> Option<Event> {
    match rx.try_recv() {
        Ok(event) => return Some(event),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    let start = Instant::now();
    let deadline = match wait {
        Wait::NoWait => return None,
        Wait::Forever => None,
        Wait::For(d) => Some(start + d),
    };
    let got = |event: Event| {
        spin.store(start.elapsed() < HUB_SPIN, Ordering::Relaxed);
        Some(event)
    };
    if spin.load(Ordering::Relaxed) {
        let spin_until = start + HUB_SPIN;
        while Instant::now() < spin_until && deadline.is_none_or(|d| Instant::now() < d) {
            std::hint::spin_loop();
            if let Ok(event) = rx.try_recv() {
                return got(event);
            }
        }
    }
    match deadline {
        None => rx.recv().ok().and_then(got),
        Some(deadline) => match rx.recv_deadline(deadline) {
            Ok(event) => got(event),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        },
    }
}

// --- worker side -----------------------------------------------------------------------

/// A worker's end of the star: one connection to the spawner.
#[derive(Debug)]
pub(crate) struct Client {
    backend: &'static str,
    rank: Rank,
    host: String,
    spawner_host: String,
    max_frame: u64,
    reader: Mutex<ClientReader>,
    writer: Mutex<Stream>,
    /// Mirrors `ClientReader::lost`, readable while another thread blocks in `recv`.
    spawner_lost: AtomicBool,
}

#[derive(Debug)]
struct ClientReader {
    stream: BufReader<Stream>,
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
        let writer = stream.try_clone()?;
        Ok(Client {
            backend,
            rank,
            host,
            spawner_host,
            max_frame,
            reader: Mutex::new(ClientReader {
                stream: BufReader::with_capacity(READ_BUFFER, stream),
                lost: None,
            }),
            writer: Mutex::new(writer),
            spawner_lost: AtomicBool::new(false),
        })
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
        frame::write_frame(&mut *writer, payload).map_err(|source| Error::Send {
            rank: 0,
            host: self.spawner_host.clone(),
            bytes: payload.len(),
            source,
        })
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
        // Waiting forever needs no poll: a blocking read sleeps until data arrives, and
        // saves two system calls per message.
        if reader.stream.buffer().is_empty() && wait != Wait::Forever {
            let ready = wait_readable(reader.stream.get_ref().as_fd(), wait).map_err(|source| {
                Error::Io {
                    backend: self.backend,
                    what: "wait for the spawner's next message".into(),
                    source,
                }
            })?;
            if !ready {
                return Ok(None);
            }
        }
        let reason = match frame::read_frame(&mut reader.stream, self.max_frame) {
            Ok(Some(payload)) => return Ok(Some(Event::Message { from: 0, payload })),
            Ok(None) => "the spawner closed the connection".to_string(),
            Err(err) => format!("the connection to the spawner broke: {}", error_chain(&err)),
        };
        reader.stream.get_ref().shutdown();
        reader.lost = Some(reason.clone());
        self.spawner_lost.store(true, Ordering::SeqCst);
        Ok(Some(Event::PeerLost { rank: 0, reason }))
    }
}

/// An error and its sources on one line, for a `PeerLost` reason.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// --- spawner side ----------------------------------------------------------------------

/// One connection on the hub.
#[derive(Debug)]
struct Conn {
    peer: Peer,
    writer: Mutex<Stream>,
    /// A handle used only to shut the connection down from another thread.
    control: Stream,
    lost: Mutex<Option<String>>,
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
    /// Whether `recv` spins before sleeping; see [`recv_channel`].
    spin: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Turns the reason a connection ended into the reason reported in `PeerLost` (the local
/// backend adds the process's exit status).
pub(crate) type Explain = Box<dyn FnOnce(String) -> String + Send>;

impl Hub {
    pub(crate) fn new(backend: &'static str, me: Peer, max_frame: u64) -> Arc<Hub> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Arc::new(Hub {
            backend,
            me,
            max_frame,
            conns: RwLock::new(BTreeMap::new()),
            tx,
            rx,
            closing: AtomicBool::new(false),
            spin: AtomicBool::new(true),
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
        let writer = stream.try_clone()?;
        let control = stream.try_clone()?;
        let conn = Arc::new(Conn {
            peer: peer.clone(),
            writer: Mutex::new(writer),
            control,
            lost: Mutex::new(None),
        });
        self.conns
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer.rank, conn.clone());
        if self.is_closing() {
            conn.control.shutdown();
        }
        let hub = self.clone();
        Ok(move || hub.read_loop(&conn, stream, explain))
    }

    /// Remembers a thread to join when the hub closes.
    pub(crate) fn keep_thread(&self, handle: JoinHandle<()>) {
        let mut threads = lock(&self.threads);
        // Dropping the handle of a finished thread only detaches it; this keeps the list short
        // when many connections come and go.
        threads.retain(|thread| !thread.is_finished());
        threads.push(handle);
    }

    fn read_loop(&self, conn: &Conn, stream: Stream, explain: Explain) {
        let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
        let reason = loop {
            match frame::read_frame(&mut reader, self.max_frame) {
                Ok(Some(payload)) => self.post(Event::Message {
                    from: conn.peer.rank,
                    payload,
                }),
                Ok(None) => break "it closed its connection".to_string(),
                Err(err) => break format!("its connection failed: {}", error_chain(&err)),
            }
        };
        conn.control.shutdown();
        *lock(&conn.lost) = Some(reason.clone());
        if self.is_closing() {
            return;
        }
        let reason = explain(reason);
        tracing::warn!(
            backend = self.backend,
            rank = conn.peer.rank,
            host = %conn.peer.host,
            "lost peer: {reason}"
        );
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

    pub(crate) fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        if to == self.me.rank {
            self.post(Event::Message {
                from: to,
                payload: payload.to_vec(),
            });
            return Ok(());
        }
        let conn = {
            let conns = self
                .conns
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match conns.get(&to) {
                Some(conn) => conn.clone(),
                None => {
                    return Err(Error::UnknownRank {
                        rank: to,
                        size: conns.len() + 1,
                    });
                }
            }
        };
        if let Some(reason) = lock(&conn.lost).clone() {
            return Err(Error::PeerLost {
                rank: to,
                host: conn.peer.host.clone(),
                reason,
            });
        }
        let mut writer = lock(&conn.writer);
        frame::write_frame(&mut *writer, payload).map_err(|source| Error::Send {
            rank: to,
            host: conn.peer.host.clone(),
            bytes: payload.len(),
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
            conn.control.shutdown();
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

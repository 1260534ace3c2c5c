//! The star topology shared by the local and TCP backends: a hub on the spawner (one reader
//! thread per connection feeding one channel) and a client on each worker (which reads its
//! one socket directly in `recv`, with no thread in between).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::seal::{Opener, RECORD_HEADER, Sealer, TAG};
use crate::{Error, Event, Peer, Rank, Wait, frame};

/// How long a waiter spins before it sleeps, unless `PARVM_SPIN_US` says otherwise; see
/// [`Spin`].
const SPIN_WINDOW_US: u64 = 100;

/// Overrides [`SPIN_WINDOW_US`]: microseconds a waiting `recv` polls before it sleeps
/// (0: never spin, for machines shared with other jobs).
pub const SPIN_VAR: &str = "PARVM_SPIN_US";

/// Size of the read buffer on each connection: small frames (and bursts of them) arrive
/// in one system call, while the part of a big payload that passes through this buffer
/// (and is copied twice) stays small; the rest is read straight into the payload.
const READ_BUFFER: usize = 16 * 1024;

/// Reads one frame like [`frame::read_frame`], but copies only what is already buffered
/// and reads the rest of the payload straight from the stream into memory that is not
/// zeroed first: a 10 MiB payload costs the kernel's copy and nothing more.
fn read_frame(
    reader: &mut BufReader<Stream>,
    max_frame: u64,
    open: Option<&mut Opener>,
) -> Result<Option<Vec<u8>>, Error> {
    if let Some(open) = open {
        return read_sealed_frame(reader, max_frame, open);
    }
    let mut header = [0u8; frame::HEADER_LEN];
    let mut got = 0;
    while got < frame::HEADER_LEN {
        match reader.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(Error::FrameTruncated {
                    expected: frame::HEADER_LEN as u64,
                    got: got as u64,
                });
            }
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::FrameIo { source }),
        }
    }
    let len = frame::decode_header(&header, max_frame)?;
    let mut payload = Vec::with_capacity(len);
    let buffered = reader.buffer();
    let take = buffered.len().min(len);
    payload.extend_from_slice(&buffered[..take]);
    reader.consume(take);
    let rest = (len - payload.len()) as u64;
    if rest > 0 {
        // The buffer is empty now, so reading past it keeps the stream in order.
        // Through the concrete stream: std reads into its uninitialised memory directly,
        // where a generic reader would zero each chunk first.
        let read = match reader.get_mut() {
            Stream::Unix(s) => Read::take(&*s, rest).read_to_end(&mut payload),
            Stream::Tcp(s) => Read::take(&*s, rest).read_to_end(&mut payload),
        };
        match read {
            Ok(_) if payload.len() == len => {}
            Ok(_) => {
                return Err(Error::FrameTruncated {
                    expected: len as u64,
                    got: payload.len() as u64,
                });
            }
            Err(source) => return Err(Error::FrameIo { source }),
        }
    }
    Ok(Some(payload))
}

/// Reads exactly `buf.len()` bytes: what is buffered first, then from the stream.
/// `Ok(false)` when the stream ends before the first byte and `eof_ok`.
fn read_exact_buffered(
    reader: &mut BufReader<Stream>,
    buf: &mut [u8],
    eof_ok: bool,
) -> Result<bool, Error> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) if got == 0 && eof_ok => return Ok(false),
            Ok(0) => {
                return Err(Error::FrameTruncated {
                    expected: buf.len() as u64,
                    got: got as u64,
                });
            }
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::FrameIo { source }),
        }
    }
    Ok(true)
}

/// Reads the next sealed record's length prefix and checks it (see [`Opener::check_len`]);
/// `Ok(None)` at a clean end of stream before a frame.
fn read_record_header(
    reader: &mut BufReader<Stream>,
    open: &Opener,
    left: Option<usize>,
) -> Result<Option<([u8; RECORD_HEADER], usize)>, Error> {
    let mut header = [0u8; RECORD_HEADER];
    if !read_exact_buffered(reader, &mut header, left.is_none())? {
        return Ok(None);
    }
    let n = open.check_len(header, left)?;
    Ok(Some((header, n)))
}

/// Reads one frame sent as sealed records (see [`crate::seal`]). The first record is
/// opened before the payload is allocated, so the frame's length is checked against
/// `max_frame` only once it is authentic.
fn read_sealed_frame(
    reader: &mut BufReader<Stream>,
    max_frame: u64,
    open: &mut Opener,
) -> Result<Option<Vec<u8>>, Error> {
    let Some((header, n)) = read_record_header(reader, open, None)? else {
        return Ok(None);
    };
    // Records are read into a buffer kept with the opener (it grows to the largest record
    // seen, at most 64 KiB), opened there while it is in the cache, and only then copied
    // into the payload, which so needs no zeroing.
    let mut staging = std::mem::take(&mut open.staging);
    let read = read_records(reader, max_frame, open, &mut staging, header, n);
    open.staging = staging;
    read.map(Some)
}

/// The body of [`read_sealed_frame`] after the first record's length prefix.
fn read_records(
    reader: &mut BufReader<Stream>,
    max_frame: u64,
    open: &mut Opener,
    staging: &mut Vec<u8>,
    header: [u8; RECORD_HEADER],
    n: usize,
) -> Result<Vec<u8>, Error> {
    let mut tag = [0u8; TAG];
    if staging.len() < n {
        staging.resize(n, 0);
    }
    read_exact_vectored(reader, &mut [&mut staging[..n], &mut tag])?;
    open.open(header, &mut staging[..n], &tag)?;
    let mut frame_header = [0u8; frame::HEADER_LEN];
    frame_header.copy_from_slice(&staging[..frame::HEADER_LEN]);
    let len = frame::decode_header(&frame_header, max_frame)?;
    if n - frame::HEADER_LEN > len {
        return Err(Error::RecordLength {
            record: 0,
            len: n as u64,
            max: (frame::HEADER_LEN + len) as u64,
        });
    }
    let mut payload = Vec::with_capacity(len);
    payload.extend_from_slice(&staging[frame::HEADER_LEN..n]);
    // Each later record comes with its tag and, when more records follow, the next one's
    // length prefix: about one read per record.
    let mut next = None;
    while payload.len() < len {
        let header = match next.take() {
            Some(header) => header,
            None => {
                let mut header = [0u8; RECORD_HEADER];
                read_exact_vectored(reader, &mut [&mut header])?;
                header
            }
        };
        let n = open.check_len(header, Some(len - payload.len()))?;
        if staging.len() < n {
            staging.resize(n, 0);
        }
        let mut after = [0u8; RECORD_HEADER];
        if payload.len() + n < len {
            read_exact_vectored(reader, &mut [&mut staging[..n], &mut tag, &mut after])?;
            next = Some(after);
        } else {
            read_exact_vectored(reader, &mut [&mut staging[..n], &mut tag])?;
        }
        open.open(header, &mut staging[..n], &tag)?;
        payload.extend_from_slice(&staging[..n]);
    }
    Ok(payload)
}

/// Fills `bufs` in order: from what is buffered, then with vectored reads straight from the
/// stream (the buffer stays empty, so the stream stays in order).
fn read_exact_vectored(
    reader: &mut BufReader<Stream>,
    bufs: &mut [&mut [u8]],
) -> Result<(), Error> {
    let expected: usize = bufs.iter().map(|b| b.len()).sum();
    let mut got = 0;
    // (buffer index, offset in it) of the next byte to fill.
    let (mut i, mut at) = (0, 0);
    let advance = |bufs: &mut [&mut [u8]], i: &mut usize, at: &mut usize, mut n: usize| {
        while n > 0 && *i < bufs.len() {
            let take = (bufs[*i].len() - *at).min(n);
            *at += take;
            n -= take;
            if *at == bufs[*i].len() {
                *i += 1;
                *at = 0;
            }
        }
    };
    let buffered = reader.buffer();
    let mut used = 0;
    while i < bufs.len() && used < buffered.len() {
        let take = (bufs[i].len() - at).min(buffered.len() - used);
        bufs[i][at..at + take].copy_from_slice(&buffered[used..used + take]);
        used += take;
        got += take;
        advance(bufs, &mut i, &mut at, take);
    }
    reader.consume(used);
    while i < bufs.len() {
        if bufs[i].len() == at {
            i += 1;
            at = 0;
            continue;
        }
        let (head, tail) = bufs.split_at_mut(i + 1);
        let mut rest = tail.iter_mut();
        let mut slices = [
            io::IoSliceMut::new(&mut head[i][at..]),
            io::IoSliceMut::new(rest.next().map_or(&mut [][..], |b| &mut b[..])),
            io::IoSliceMut::new(rest.next().map_or(&mut [][..], |b| &mut b[..])),
        ];
        let read = match reader.get_mut() {
            Stream::Unix(s) => s.read_vectored(&mut slices),
            Stream::Tcp(s) => s.read_vectored(&mut slices),
        };
        match read {
            Ok(0) => {
                return Err(Error::FrameTruncated {
                    expected: expected as u64,
                    got: got as u64,
                });
            }
            Ok(n) => {
                got += n;
                advance(bufs, &mut i, &mut at, n);
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::FrameIo { source }),
        }
    }
    Ok(())
}

/// Reads one sealed frame from `stream` without reading past it (what follows belongs to
/// whoever reads the stream next); returns the stream back with the outcome.
pub(crate) fn read_sealed_unbuffered(
    stream: Stream,
    max_frame: u64,
    open: &mut Opener,
) -> (Stream, Result<Option<Vec<u8>>, Error>) {
    // With no buffer, every read goes straight to the stream for exactly what is asked.
    let mut reader = BufReader::with_capacity(0, stream);
    let read = read_sealed_frame(&mut reader, max_frame, open);
    (reader.into_inner(), read)
}

/// Writes one sealed frame carrying `payload`.
pub(crate) fn write_sealed(
    stream: &mut Stream,
    seal: &mut Sealer,
    payload: &[u8],
) -> io::Result<()> {
    seal.write_frame(stream, &[payload])
}

/// The sending half of a connection: the stream and, on TCP, the sealer of its records.
#[derive(Debug)]
pub(crate) struct Writer {
    stream: Stream,
    /// Boxed: a cipher's key schedule is large, and most connections of a process wait.
    seal: Option<Box<Sealer>>,
}

impl Writer {
    /// Writes one frame carrying the concatenation of `parts`.
    fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        match (&mut self.seal, parts) {
            (Some(seal), _) => seal.write_frame(&mut self.stream, parts),
            (None, [payload]) => frame::write_frame(&mut self.stream, payload),
            (None, _) => write_parts(&mut self.stream, parts),
        }
    }
}

/// What a sealed connection needs: the sealer of what it sends, the opener of what it
/// receives.
pub(crate) struct Sealing {
    pub(crate) seal: Sealer,
    pub(crate) open: Opener,
}

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

/// The spin window: [`SPIN_WINDOW_US`], or `PARVM_SPIN_US` when set to a number.
fn spin_window() -> Duration {
    static WINDOW: OnceLock<Duration> = OnceLock::new();
    *WINDOW.get_or_init(|| {
        let us = std::env::var(SPIN_VAR)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(SPIN_WINDOW_US);
        Duration::from_micros(us.min(1_000_000))
    })
}

/// Adaptive spin-then-sleep for one waiter.
///
/// Waking a sleeping process costs tens of microseconds on a virtual machine (the idle
/// vCPU halts and must be woken by the hypervisor), far more than the message it waits
/// for takes to arrive in a ping-pong or a spawn round trip. So a waiter first polls for a
/// short window, yielding the core between polls: a thread woken on the same core (such as
/// the spawner's reader thread, or another worker) runs at once, so spinning never holds
/// back the thread that must produce the message. It spins only while recent waits were
/// short: after a wait longer than twice the window it sleeps at once, so an idle process
/// burns no core. A wait measured while not spinning includes the wake-up (and makes the
/// peer wait longer too), so both ends could stay asleep for good; hence the margin of
/// twice the window, and a probe spin every [`PROBE_EVERY`] waits while spinning is off.
#[derive(Debug)]
pub(crate) struct Spin {
    on: AtomicBool,
    /// Waits since spinning was turned off.
    off_for: AtomicU32,
}

/// While spinning is off, every this many waits spin anyway, to find out whether the
/// messages have become quick again.
const PROBE_EVERY: u32 = 16;

impl Spin {
    pub(crate) fn new() -> Spin {
        Spin {
            on: AtomicBool::new(true),
            off_for: AtomicU32::new(0),
        }
    }

    /// Polls `ready` until it yields something, the spin window (counted from `start`)
    /// ends, or `deadline` passes. Does nothing while spinning is off.
    fn spin<T>(
        &self,
        start: Instant,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> io::Result<Option<T>>,
    ) -> io::Result<Option<T>> {
        let window = spin_window();
        if window.is_zero() {
            return Ok(None);
        }
        if !self.on.load(Ordering::Relaxed) {
            let off_for = self.off_for.fetch_add(1, Ordering::Relaxed) + 1;
            if !off_for.is_multiple_of(PROBE_EVERY) {
                return Ok(None);
            }
        }
        let until = deadline.map_or(start + window, |d| d.min(start + window));
        loop {
            if let Some(found) = ready()? {
                return Ok(Some(found));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            std::thread::yield_now();
        }
    }

    /// Remembers how long a wait that started at `start` took (`None`: it timed out).
    fn record(&self, start: Option<Instant>) {
        let quick = start.is_some_and(|start| start.elapsed() < 2 * spin_window());
        if quick {
            self.off_for.store(0, Ordering::Relaxed);
        }
        self.on.store(quick, Ordering::Relaxed);
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

/// Whether `fd` is readable (or hung up) right now.
fn readable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    poll_readable(fd, PollTimeout::ZERO)
}

fn poll_readable(fd: BorrowedFd<'_>, timeout: PollTimeout) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Ok(n) => return Ok(n > 0),
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(io::Error::from(errno)),
        }
    }
}

/// Waits until `fd` is readable (or hung up), sleeping in `poll` until `deadline` (`None`:
/// forever). Returns whether it is readable.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return readable_now(fd);
                }
                // Round up to whole milliseconds so a short wait does not turn into a spin.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
                PollTimeout::try_from(Duration::from_millis(ms as u64)).unwrap_or(PollTimeout::MAX)
            }
        };
        if poll_readable(fd, timeout)? {
            return Ok(true);
        }
    }
}

/// Receives from a channel as long as `wait` allows, spinning briefly (see [`Spin`])
/// before sleeping.
fn recv_channel(rx: &Receiver<Event>, wait: Wait, spin: &Spin) -> Option<Event> {
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
    let spun = spin.spin(start, deadline, || match rx.try_recv() {
        Ok(event) => Ok(Some(Some(event))),
        Err(TryRecvError::Disconnected) => Ok(Some(None)),
        Err(TryRecvError::Empty) => Ok(None),
    });
    let event = match spun {
        Ok(Some(event)) => event,
        _ => match deadline {
            None => rx.recv().ok(),
            Some(deadline) => rx.recv_deadline(deadline).ok(),
        },
    };
    spin.record(event.as_ref().map(|_| start));
    event
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
            spin: Spin::new(),
            spawner_addr: None,
        })
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
                error_chain(&err)
            ),
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
    /// `None` once the peer is lost, so its descriptor is closed.
    writer: Mutex<Option<Writer>>,
    /// A handle used only to shut the connection down from another thread; `None` once
    /// the peer is lost.
    control: Mutex<Option<Stream>>,
    lost: Mutex<Option<String>>,
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
/// backend adds the process's exit status). The hub logs a clean close ([`CLOSED`]) at
/// debug level, so an explainer that learns the peer died should warn itself.
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
            spin: Spin::new(),
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
        let spin = Spin::new();
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
                Err(err) => break format!("its connection failed: {}", error_chain(&err)),
            }
        };
        conn.shutdown();
        *lock(&conn.lost) = Some(reason.clone());
        // Close every descriptor of the connection now: a spawner whose workers come and
        // go for days must not collect them. Only the peer's name and the reason stay.
        drop(reader);
        lock(&conn.writer).take();
        lock(&conn.control).take();
        if self.is_closing() {
            return;
        }
        // A clean end of stream is how a worker leaves after it was told to (finalize), so
        // it is no news; a broken connection is. The local backend warns on its own about
        // a worker that closed cleanly because it died (see `Explain`).
        let orderly = reason == CLOSED;
        let reason = explain(reason);
        if orderly {
            tracing::debug!(
                backend = self.backend,
                rank = conn.peer.rank,
                host = %conn.peer.host,
                "peer left: {reason}"
            );
        } else {
            tracing::warn!(
                backend = self.backend,
                rank = conn.peer.rank,
                host = %conn.peer.host,
                "lost peer: {reason}"
            );
        }
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

/// Writes one frame whose payload is the concatenation of `parts`: the header and every
/// part in vectored writes, without copying the parts.
fn write_parts<W: std::io::Write + ?Sized>(writer: &mut W, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let header = frame::encode_header(len as u64);
    let mut slices: Vec<io::IoSlice<'_>> = std::iter::once(&header[..])
        .chain(parts.iter().copied())
        .map(io::IoSlice::new)
        .collect();
    let mut bufs: &mut [io::IoSlice<'_>] = &mut slices;
    // Skip empty slices so an empty part does not look like a stalled write.
    io::IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match writer.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the connection accepted no more bytes",
                ));
            }
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, BufReader<Stream>) {
        let (near, far) = UnixStream::pair().unwrap();
        (
            near,
            BufReader::with_capacity(READ_BUFFER, Stream::Unix(far)),
        )
    }

    #[test]
    fn parts_read_back_as_one_frame() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![],
            vec![vec![], vec![]],
            vec![b"head".to_vec(), big],
            vec![b"a".to_vec(), vec![], b"bc".to_vec()],
        ];
        let expected: Vec<Vec<u8>> = cases.iter().map(|parts| parts.concat()).collect();
        let (mut near, mut far) = pair();
        let writer = std::thread::spawn(move || {
            for parts in &cases {
                let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                write_parts(&mut near, &parts).unwrap();
            }
        });
        for want in expected {
            let got = frame::read_frame(&mut far, u64::MAX).unwrap().unwrap();
            assert_eq!(got, want);
        }
        writer.join().unwrap();
    }

    #[test]
    fn frames_of_every_size_read_back_in_order() {
        let (mut near, mut reader) = pair();
        let sizes = [
            0usize,
            1,
            12,
            READ_BUFFER - 20,
            READ_BUFFER,
            3 * READ_BUFFER + 7,
            1 << 20,
        ];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i % 253) as u8).collect())
            .collect();
        let sent = payloads.clone();
        let writer = std::thread::spawn(move || {
            for payload in &sent {
                frame::write_frame(&mut near, payload).unwrap();
            }
        });
        for payload in &payloads {
            let got = read_frame(&mut reader, frame::DEFAULT_MAX_FRAME, None).unwrap();
            assert_eq!(got.as_ref().map(Vec::len), Some(payload.len()));
            assert!(got.as_ref() == Some(payload));
        }
        writer.join().unwrap();
        assert_eq!(
            read_frame(&mut reader, frame::DEFAULT_MAX_FRAME, None).unwrap(),
            None
        );
    }

    #[test]
    fn sealed_frames_of_every_size_read_back_in_order() {
        use crate::seal::{Direction, Keys, RECORD_MAX, Transcript};
        let keys = Keys::derive(
            &crate::tcp::Secret::new(b"k".to_vec()),
            &[1; 32],
            &[2; 32],
            &Transcript::default(),
        );
        let sizes = [
            0usize,
            1,
            RECORD_MAX - 12,
            RECORD_MAX - 11,
            RECORD_MAX,
            3 * RECORD_MAX + 7,
            READ_BUFFER + 3,
            1 << 20,
        ];
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .map(|&n| (0..n).map(|i| (i % 253) as u8).collect())
            .collect();
        let sent = payloads.clone();
        let mut seal = keys.sealer(Direction::ToWorker);
        let (mut near, mut reader) = pair();
        let writer = std::thread::spawn(move || {
            for payload in &sent {
                // In two parts, so records straddle them.
                let (a, b) = payload.split_at(payload.len() / 3);
                seal.write_frame(&mut near, &[a, b]).unwrap();
            }
        });
        let mut open = keys.opener(Direction::ToWorker);
        for payload in &payloads {
            let got = read_frame(&mut reader, frame::DEFAULT_MAX_FRAME, Some(&mut open)).unwrap();
            assert_eq!(got.as_ref().map(Vec::len), Some(payload.len()));
            assert!(got.as_ref() == Some(payload));
        }
        writer.join().unwrap();
        assert_eq!(
            read_frame(&mut reader, frame::DEFAULT_MAX_FRAME, Some(&mut open)).unwrap(),
            None
        );
        // The limit applies to the authentic length.
        let mut seal = keys.sealer(Direction::ToSpawner);
        let mut open = keys.opener(Direction::ToSpawner);
        let (mut near, mut reader) = pair();
        seal.write_frame(&mut near, &[&[9; 5000]]).unwrap();
        assert!(matches!(
            read_frame(&mut reader, 4999, Some(&mut open)),
            Err(Error::FrameTooLarge { len: 5000, .. })
        ));
    }

    #[test]
    fn bad_frames_are_errors() {
        let (mut near, mut reader) = pair();
        let mut truncated = frame::encode_header(100).to_vec();
        truncated.extend_from_slice(&[1; 40]);
        near.write_all(&truncated).unwrap();
        drop(near);
        assert!(matches!(
            read_frame(&mut reader, frame::DEFAULT_MAX_FRAME, None),
            Err(Error::FrameTruncated {
                expected: 100,
                got: 40
            })
        ));
        let (mut near, mut reader) = pair();
        near.write_all(&frame::encode_header(1 << 40)).unwrap();
        assert!(matches!(
            read_frame(&mut reader, 1 << 20, None),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn spinning_turns_off_after_a_long_wait_and_probes_back() {
        let spin = Spin::new();
        let now = Instant::now();
        // Something ready at once is found while spinning is on.
        assert_eq!(spin.spin(now, None, || Ok(Some(1))).unwrap(), Some(1));
        spin.record(None);
        assert!(!spin.on.load(Ordering::Relaxed));
        // Off: most waits do not even look; every PROBE_EVERY-th one does.
        let mut looked = 0;
        for _ in 0..PROBE_EVERY {
            let _ = spin.spin(Instant::now(), None, || {
                looked += 1;
                Ok(Some(()))
            });
        }
        assert_eq!(looked, 1);
        spin.record(Some(Instant::now()));
        assert!(spin.on.load(Ordering::Relaxed));
    }

    #[test]
    fn spinning_stops_at_the_window_or_the_deadline() {
        let spin = Spin::new();
        let start = Instant::now();
        assert_eq!(spin.spin(start, None, || Ok(None::<()>)).unwrap(), None);
        assert!(start.elapsed() >= spin_window());
        let start = Instant::now();
        let _ = spin.spin(start, Some(start), || Ok(None::<()>));
        assert!(start.elapsed() < spin_window() + Duration::from_millis(50));
    }
}

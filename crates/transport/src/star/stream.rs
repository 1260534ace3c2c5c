//! A connection of the star as bytes: the [`Stream`] of either family, its [`Writer`]
//! (plain or sealed frames), and which reader its frames need ([`read_frame`]).
//!
//! Owns how a connected stream carries frames. Must not know ranks, peers or events (the
//! hub and client do), nor how the stream was connected.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};

use crate::seal::{self, Opener, Sealer};
use crate::{Error, frame};

/// Size of the read buffer on each connection: small frames (and bursts of them) arrive
/// in one system call, while the part of a big payload that passes through this buffer
/// (and is copied twice) stays small; the rest is read straight into the payload.
pub(super) const READ_BUFFER: usize = 16 * 1024;

/// Reads the next frame of a connection: sealed records when `open` is given (TCP), else
/// plain frames.
pub(super) fn read_frame(
    reader: &mut BufReader<Stream>,
    max_frame: u64,
    open: Option<&mut Opener>,
) -> Result<Option<Vec<u8>>, Error> {
    match open {
        Some(open) => seal::read_sealed_frame(reader, max_frame, open),
        None => frame::read_frame_buffered(reader, max_frame),
    }
}

/// The sending half of a connection: the stream and, on TCP, the sealer of its records.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(super) stream: Stream,
    /// Boxed: a cipher's key schedule is large, and most connections of a process wait.
    pub(super) seal: Option<Box<Sealer>>,
}

impl Writer {
    /// Writes one frame carrying the concatenation of `parts`.
    pub(super) fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        match (&mut self.seal, parts) {
            (Some(seal), _) => seal.write_frame(&mut self.stream, parts),
            (None, [payload]) => frame::write_frame(&mut self.stream, payload),
            (None, _) => frame::write_frame_parts(&mut self.stream, parts),
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
    // Forwarded: the default reads into the first buffer only, and sealed records are
    // read with their tag (and the next record's length) in one call.
    fn read_vectored(&mut self, bufs: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read_vectored(bufs),
            Stream::Tcp(s) => s.read_vectored(bufs),
        }
    }
}

impl frame::ReadRest for Stream {
    fn read_rest(&mut self, n: u64, into: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read_rest(n, into),
            Stream::Tcp(s) => s.read_rest(n, into),
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

/// An error and its sources on one line, for a `PeerLost` reason.
/// Why a connection broke with `err`, in words: its error chain, and when the kernel gave
/// it up because the peer stopped answering (`TimedOut`, only with the TCP peer timeout),
/// what that means.
pub(crate) fn broken_because(err: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(err);
    while let Some(cause) = source {
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return format!(
                "it did not answer within the peer timeout ({}): its host may be down or cut off from this one ({})",
                crate::tcp::PEER_TIMEOUT_VAR,
                error_chain(err)
            );
        }
        source = cause.source();
    }
    error_chain(err)
}

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

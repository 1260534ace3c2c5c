//! How a joined connection finds out that its peer is gone when nothing says so: a host
//! that lost power or its network sends no FIN and no reset, and without help its
//! connection would be waited on for ever (the task it ran, and every sweep waiting for
//! it, with it).
//!
//! The kernel does the watching: once the connection has been silent for half the peer
//! timeout, it sends keep-alive probes over the other half, and when none is answered it
//! gives the connection up; its next read fails with `TimedOut`, and the peer is lost as a
//! closed one is. A live peer's kernel answers the probes even while its process is busy
//! or stopped, so only a host that is down or cut off is given up. `TCP_USER_TIMEOUT` is
//! not set: it would also give up a live peer whose process has not read what it was sent
//! for that long (a task computing while messages for it pile up), which is backpressure,
//! not a loss. Bytes sent to a host that then vanished are given up by the kernel's
//! retransmission limit instead (`net.ipv4.tcp_retries2`, about 15 minutes by default).
//!
//! Owns the socket options. Must not know frames or handshakes.

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

/// Probes sent, one every `timeout / (2 × PROBES)`, after `timeout / 2` of silence.
const PROBES: u32 = 3;

/// Gives up `stream` when its peer's host does not answer for about `timeout`: keep-alive
/// probes from `timeout / 2` of silence on. Zero leaves the connection waiting for ever.
///
/// # Errors
/// An option cannot be set.
pub(super) fn give_up_after(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    if timeout.is_zero() {
        return Ok(());
    }
    let seconds = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1);
    let idle = seconds(timeout / 2);
    let interval = seconds(timeout / (2 * PROBES));
    setsockopt(stream, sockopt::KeepAlive, &true)?;
    setsockopt(stream, sockopt::TcpKeepIdle, &idle)?;
    setsockopt(stream, sockopt::TcpKeepInterval, &interval)?;
    setsockopt(stream, sockopt::TcpKeepCount, &PROBES)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use nix::sys::socket::getsockopt;

    use super::*;

    #[test]
    fn the_options_follow_the_timeout_and_zero_sets_none() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        give_up_after(&stream, Duration::ZERO).unwrap();
        assert!(!getsockopt(&stream, sockopt::KeepAlive).unwrap());
        give_up_after(&stream, Duration::from_secs(60)).unwrap();
        assert!(getsockopt(&stream, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepIdle).unwrap(), 30);
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepInterval).unwrap(), 10);
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepCount).unwrap(), 3);
        // Not set: a live peer that reads slowly is backpressure, not a loss.
        assert_eq!(getsockopt(&stream, sockopt::TcpUserTimeout).unwrap(), 0);
        // A timeout under two seconds still probes once a second.
        give_up_after(&stream, Duration::from_millis(1500)).unwrap();
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepIdle).unwrap(), 1);
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepInterval).unwrap(), 1);
    }
}

//! A worker joining a TCP spawner: [`TcpTransport::connect_with`](super::TcpTransport::connect_with) tries the handshake
//! again with growing pauses until its deadline ([`ConnectOptions::wait`]), so workers may
//! start before the spawner listens.
//!
//! Owns the retry policy. Must not know the handshake's bytes (`handshake`).

use std::time::{Duration, Instant};

use super::handshake::{connect_once, truncate_host};
use super::options::{ConnectOptions, DEFAULT_HANDSHAKE_TIMEOUT};
use crate::star::Client;
use crate::{Error, frame};

/// Joins the spawner, trying again until the deadline; see [`TcpTransport::connect_with`](super::TcpTransport::connect_with).
pub(super) fn join(options: ConnectOptions) -> Result<Client, Error> {
    let timeout = options
        .handshake_timeout
        .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    let max_frame = options.max_frame.unwrap_or(frame::DEFAULT_MAX_FRAME);
    let wait = options.wait.unwrap_or_default();
    let host = truncate_host(&options.host.clone().unwrap_or_else(crate::system_host));
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        tries += 1;
        let error = match connect_once(&options, &host, timeout, max_frame) {
            Ok(transport) => return Ok(transport),
            Err(error) => error,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            if tries > 1 {
                tracing::warn!(
                    "gave up joining the spawner at {} after {tries} tries in {wait:?}",
                    options.addr
                );
            }
            return Err(error);
        }
        if let Some(report) = &options.on_retry {
            report(&error, left);
        } else if tries == 1 {
            tracing::warn!("{error}; trying again for up to {left:.1?}");
        } else {
            tracing::debug!("try {tries}: {error}");
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

//! A worker joining a TCP spawner: [`TcpTransport::connect_with`](super::TcpTransport::connect_with) tries the handshake
//! again with growing pauses until its deadline (`PARVM_CONNECT_WAIT`), so workers may
//! start before the spawner listens.
//!
//! Owns the retry policy. Must not know the handshake's bytes (`handshake`).

use std::time::{Duration, Instant};

use super::handshake::{connect_once, truncate_host};
use super::limits::{from_env, handshake_timeout, max_frame, parse_seconds};
use super::options::{CONNECT_WAIT_VAR, ConnectOptions};
use crate::Error;
use crate::star::Client;

/// Joins the spawner, trying again until the deadline; see [`TcpTransport::connect_with`](super::TcpTransport::connect_with).
pub(super) fn join(options: ConnectOptions) -> Result<Client, Error> {
    let timeout = handshake_timeout(options.handshake_timeout)?;
    let max_frame = max_frame(options.max_frame)?;
    let wait = match options.wait {
        Some(wait) => wait,
        None => from_env(CONNECT_WAIT_VAR, |t| parse_seconds(t, true))?.unwrap_or_default(),
    };
    let host = truncate_host(&options.host.clone().unwrap_or_else(crate::this_host));
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

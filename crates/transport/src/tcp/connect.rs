//! A worker joining a TCP spawner: [`TcpTransport::connect_with`] tries the handshake
//! again with growing pauses until its deadline (`PARVM_CONNECT_WAIT`), so workers may
//! start before the spawner listens.
//!
//! Owns the retry policy. Must not know the handshake's bytes (`handshake`).

use std::time::{Duration, Instant};

use super::handshake::{connect_once, truncate_host};
use super::limits::{from_env, handshake_timeout, max_frame, parse_seconds};
use super::{CONNECT_WAIT_VAR, ConnectOptions, Secret, TcpTransport};
use crate::Error;

impl TcpTransport {
    /// Connects a worker to the spawner at `addr` and authenticates with `secret`,
    /// reporting `hostname` as its host: [`TcpTransport::connect_with`] with the other
    /// options at their defaults (one try).
    ///
    /// # Errors
    /// As [`TcpTransport::connect_with`].
    pub fn connect(addr: &str, secret: &Secret, hostname: &str) -> Result<TcpTransport, Error> {
        Self::connect_with(ConnectOptions::new(addr, secret.clone()).host(hostname))
    }

    /// Connects a worker to a spawner and authenticates, trying again with growing pauses
    /// until the [`ConnectOptions::wait`] deadline when the spawner cannot be reached or
    /// the handshake fails.
    ///
    /// # Errors
    /// [`Error::BadEnv`] for an unusable `PARVM_*` variable; else the last try's error:
    /// [`Error::Connect`] when the spawner cannot be reached, [`Error::Handshake`] when
    /// authentication fails (different secrets, another parvm version, not a parvm
    /// spawner, or bytes changed on the way).
    pub fn connect_with(options: ConnectOptions) -> Result<TcpTransport, Error> {
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
}

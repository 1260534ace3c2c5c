//! The TCP backend: workers started by any launcher (ssh, a batch system) connect to the
//! spawner, which listens on loopback unless told otherwise.
//!
//! # Handshake
//!
//! Before any frame is read, both sides prove they know the shared [`Secret`] with
//! HMAC-SHA256 over random nonces, in fixed-size messages:
//!
//! ```text
//! worker  -> spawner  magic(8) nonce_w(32)
//! spawner -> worker   magic(8) nonce_s(32) HMAC(secret, "parvm spawner" nonce_w nonce_s)
//! worker  -> spawner  host_len(1) host HMAC(secret, "parvm worker" nonce_s nonce_w host_len host)
//! spawner -> worker   sealed frame: rank(4, little-endian) host_len(1) spawner_host
//! ```
//!
//! The worker's proof covers the host name it reports, so nobody on the way can make a
//! worker appear on another host (and so mirror into another host's paths). The magic
//! carries the protocol version (3); a spawner answers a hello of another version with its
//! own magic before it closes, so the worker can say which versions differ.
//!
//! # Sealed frames
//!
//! From the welcome on, every frame in both directions is sealed with AES-256-GCM, under
//! keys derived (HKDF-SHA256) from the secret, both nonces and a hash of every handshake
//! byte, one key per direction and a record counter as nonce; see `seal.rs` and
//! docs/transports.md. A record that was modified, replayed, reordered or dropped on the
//! way fails to open and the connection is dropped: the spawner gets the usual
//! [`Event::PeerLost`], a worker sees the spawner lost.
//!
//! # Floods
//!
//! Each connection is handshaken on its own thread, so a slow peer never delays the
//! others. At most [`MAX_PENDING`] connections may be in their handshake at once, at most
//! [`MAX_PENDING_PER_SOURCE`] of them from one address (an IPv6 /64); a new connection
//! over either bound pushes out the oldest pending one that sent nothing yet (else the
//! oldest). The hello must come within [`FIRST_BYTES_TIMEOUT`], the whole handshake within
//! the handshake timeout. A peer with a wrong magic or proof is dropped having sent at most
//! 328 bytes. So idle connections cannot lock workers out: a worker's hello comes at once,
//! and idle connections are the first to go.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::seal::{self, Direction, Keys, Transcript};
pub use crate::secret::{SECRET_FILE_VAR, Secret};
use crate::star::{self, Client, Hub, Sealing, Stream, lock};
use crate::{Error, Event, Peer, Rank, Transport, Wait, frame};

/// The variable telling a worker where the spawner listens (`host:port`).
pub const CONNECT_VAR: &str = "PARVM_CONNECT";
/// The variable telling a worker started with [`CONNECT_VAR`] how many seconds to keep
/// trying to join (a spawner that starts later, a refused handshake); default 0: one try.
pub const CONNECT_WAIT_VAR: &str = "PARVM_CONNECT_WAIT";
/// The variable setting the largest payload accepted, in bytes (suffixes `K`, `M`, `G`
/// for KiB, MiB, GiB), on the spawner and on workers; default 1 GiB.
pub const MAX_FRAME_VAR: &str = "PARVM_MAX_FRAME";
/// The variable setting the handshake timeout in seconds (fractions allowed), on the
/// spawner and on workers; default 5.
pub const HANDSHAKE_TIMEOUT_VAR: &str = "PARVM_HANDSHAKE_TIMEOUT";

/// The magic of this protocol: `PVTCP`, 0, the version, 0.
const MAGIC: [u8; 8] = *b"PVTCP\x00\x03\x00";
/// The magic of the plaintext mode of the benchmarks; no protected peer accepts it.
const PLAIN_MAGIC: [u8; 8] = *b"PVTCP\x00\x03P";
/// What every version's magic starts with.
const MAGIC_PREFIX: &[u8] = b"PVTCP\x00";
const NONCE: usize = 32;
const MAC: usize = 32;
/// The default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest welcome a worker reads: a rank and a host name.
const MAX_WELCOME: u64 = 4 + 1 + 255;
/// The smallest frame limit the variable accepts: the VM's own messages must fit.
const MIN_MAX_FRAME: u64 = 4096;
/// At most this many connections are in their handshake at once.
pub const MAX_PENDING: usize = 64;
/// At most this many of them come from one address (IPv4) or one /64 (IPv6).
pub const MAX_PENDING_PER_SOURCE: usize = 8;
/// A connection must send its hello within this time (or the handshake timeout, when
/// shorter): a worker sends it at once.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(1);
/// How often at most the spawner warns that it drops pending handshakes to make room.
const FLOOD_WARNING_EVERY: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;

fn proof(secret: &Secret, label: &[u8], first: &[u8], second: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret.key())
        .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
    mac.update(label);
    mac.update(first);
    mac.update(second);
    mac
}

/// The worker's proof: over both nonces and the host name it reports (length-prefixed).
fn worker_proof(secret: &Secret, nonce_s: &[u8], nonce_w: &[u8], host: &[u8]) -> HmacSha256 {
    let mut mac = proof(secret, b"parvm worker", nonce_s, nonce_w);
    mac.update(&[u8::try_from(host.len()).unwrap_or(u8::MAX)]);
    mac.update(host);
    mac
}

fn magic(plaintext: bool) -> [u8; 8] {
    if plaintext { PLAIN_MAGIC } else { MAGIC }
}

/// How [`TcpTransport::listen`] listens.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    addr: SocketAddr,
    secret: Secret,
    handshake_timeout: Option<Duration>,
    max_frame: Option<u64>,
    host: Option<String>,
    /// Set only by the benchmarks (feature `bench-plaintext`).
    plaintext: bool,
}

impl TcpOptions {
    /// Listens with `secret` on `127.0.0.1:0`.
    #[must_use]
    pub fn new(secret: Secret) -> Self {
        TcpOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            secret,
            handshake_timeout: None,
            max_frame: None,
            host: None,
            plaintext: false,
        }
    }

    /// The address to listen on; port 0 picks a free port. Default: `127.0.0.1:0`.
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// How long a connecting peer has to complete the handshake. Default:
    /// `PARVM_HANDSHAKE_TIMEOUT` seconds when set, else 5 s.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// The largest payload accepted, in bytes. Default: `PARVM_MAX_FRAME` when set, else
    /// 1 GiB.
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// The spawner's host name. Default: [`crate::this_host`].
    #[must_use]
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }

    /// Benchmarks only: frames travel in plaintext, to measure what sealing costs. Only
    /// workers in the same mode can join (another magic), never a normal worker.
    #[cfg(feature = "bench-plaintext")]
    #[doc(hidden)]
    #[must_use]
    pub fn insecure_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }
}

/// Called before each new try of [`TcpTransport::connect_with`] with the error of the last
/// one and how long the retries may still go on.
type OnRetry = Arc<dyn Fn(&Error, Duration) + Send + Sync>;

/// How [`TcpTransport::connect_with`] joins a spawner.
#[derive(Clone)]
pub struct ConnectOptions {
    addr: String,
    secret: Secret,
    host: Option<String>,
    handshake_timeout: Option<Duration>,
    max_frame: Option<u64>,
    wait: Option<Duration>,
    on_retry: Option<OnRetry>,
    plaintext: bool,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_frame", &self.max_frame)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Joins the spawner at `addr` (`host:port`) with `secret`.
    #[must_use]
    pub fn new(addr: impl Into<String>, secret: Secret) -> Self {
        ConnectOptions {
            addr: addr.into(),
            secret,
            host: None,
            handshake_timeout: None,
            max_frame: None,
            wait: None,
            on_retry: None,
            plaintext: false,
        }
    }

    /// Calls `report` with the error of a failed try and the time left, before each new
    /// try (for a progress line); by default failed tries are only logged.
    #[must_use]
    pub fn on_retry(mut self, report: impl Fn(&Error, Duration) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(report));
        self
    }

    /// The host name this worker reports. Default: [`crate::this_host`].
    #[must_use]
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }

    /// How long the spawner has to answer each step of the handshake. Default:
    /// `PARVM_HANDSHAKE_TIMEOUT` seconds when set, else 5 s.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// The largest payload accepted from the spawner, in bytes. Default:
    /// `PARVM_MAX_FRAME` when set, else 1 GiB.
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// Keeps trying this long when the spawner cannot be reached or a handshake fails or
    /// is refused (a spawner that starts later, or that is flooded), with growing pauses
    /// (0.1 s doubling up to 2 s) between tries. Default: `PARVM_CONNECT_WAIT` seconds
    /// when set, else 0 (one try).
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Benchmarks only: see [`TcpOptions::insecure_plaintext`].
    #[cfg(feature = "bench-plaintext")]
    #[doc(hidden)]
    #[must_use]
    pub fn insecure_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }
}

/// The TCP backend; see the [module docs](self).
pub struct TcpTransport {
    side: Side,
}

enum Side {
    Spawner(Listening),
    Worker(Client),
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.side {
            Side::Spawner(s) => f
                .debug_struct("TcpTransport")
                .field("rank", &0)
                .field("addr", &s.addr)
                .finish(),
            Side::Worker(c) => f
                .debug_struct("TcpTransport")
                .field("rank", &c.rank())
                .finish(),
        }
    }
}

struct Listening {
    hub: Arc<Hub>,
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// A connection still in its handshake.
struct Pending {
    id: u64,
    /// Its source address, or /64 for IPv6.
    source: IpAddr,
    /// Set once its hello arrived: such connections are pushed out after idle ones.
    spoke: Arc<AtomicBool>,
    /// A handle used only to cut the handshake short.
    control: TcpStream,
}

/// What the accept thread and the handshake threads share.
struct Shared {
    hub: Arc<Hub>,
    secret: Secret,
    timeout: Duration,
    magic: [u8; 8],
    plaintext: bool,
    next_rank: AtomicU32,
    next_id: AtomicU64,
    /// Connections still in their handshake, oldest first.
    pending: Mutex<VecDeque<Pending>>,
    /// Pending handshakes pushed out since the last warning, and when that was.
    pushed_out: Mutex<(u64, Option<Instant>)>,
    /// Warnings about dropped connections in the current window: (window start, shown,
    /// not shown), so a flood of bad connections does not flood the log.
    dropped: Mutex<(Option<Instant>, u32, u64)>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.hub.close();
        // Wakes the accept thread: a listening socket that is shut down fails `accept`.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        for pending in lock(&self.shared.pending).iter() {
            let _ = pending.control.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.hub.join();
    }
}

/// Reads a variable: `None` when unset or empty, else `parse` of its value.
fn from_env<T>(
    var: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, Error> {
    let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let bad = |value: String, reason: String| Error::BadEnv { var, value, reason };
    let text = value
        .into_string()
        .map_err(|v| bad(v.to_string_lossy().into_owned(), "it is not UTF-8".into()))?;
    parse(text.trim())
        .map(Some)
        .map_err(|reason| bad(text, reason))
}

/// Parses seconds (`5`, `0.5`); `zero_ok` allows 0.
fn parse_seconds(text: &str, zero_ok: bool) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| "give a number of seconds such as `5` or `0.5`".to_string())?;
    if !secs.is_finite() || secs < 0.0 || (secs == 0.0 && !zero_ok) || secs > 1e9 {
        return Err(format!(
            "give a number of seconds {} 1000000000",
            if zero_ok {
                "from 0 to"
            } else {
                "above 0 and at most"
            }
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte count with an optional binary suffix (`1048576`, `64K`, `512M`, `1G`,
/// `1GiB`), at least [`MIN_MAX_FRAME`].
fn parse_bytes(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let scale: u64 = match lower[digits.len()..]
        .trim_end_matches("ib")
        .trim_end_matches('b')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err("use a byte count such as `1048576`, `64K`, `512M` or `1G`".into()),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| "use a byte count such as `1048576`, `64K`, `512M` or `1G`".to_string())?;
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| "the byte count is too large".to_string())?;
    if bytes < MIN_MAX_FRAME {
        return Err(format!(
            "at least {MIN_MAX_FRAME} bytes are needed for parvm's own messages"
        ));
    }
    Ok(bytes)
}

/// Parses a frame limit as `PARVM_MAX_FRAME` takes it: a byte count with an optional
/// binary suffix (`1048576`, `64K`, `512M`, `1G`), at least 4 KiB.
///
/// # Errors
/// What is wrong with `text`, in words.
pub fn parse_max_frame(text: &str) -> Result<u64, String> {
    parse_bytes(text.trim())
}

/// The handshake timeout: `given`, else `PARVM_HANDSHAKE_TIMEOUT`, else 5 s.
fn handshake_timeout(given: Option<Duration>) -> Result<Duration, Error> {
    match given {
        Some(timeout) => Ok(timeout),
        None => Ok(
            from_env(HANDSHAKE_TIMEOUT_VAR, |t| parse_seconds(t, false))?
                .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
        ),
    }
}

/// The frame limit: `given`, else `PARVM_MAX_FRAME`, else 1 GiB.
fn max_frame(given: Option<u64>) -> Result<u64, Error> {
    match given {
        Some(bytes) => Ok(bytes),
        None => Ok(from_env(MAX_FRAME_VAR, parse_bytes)?.unwrap_or(frame::DEFAULT_MAX_FRAME)),
    }
}

impl TcpTransport {
    /// Listens for workers; they join at any time as [`Event::PeerJoined`], with ranks
    /// 1, 2, ... in the order their handshakes complete.
    ///
    /// # Errors
    /// [`Error::Listen`] when the address cannot be bound, [`Error::BadEnv`] when
    /// `PARVM_MAX_FRAME` or `PARVM_HANDSHAKE_TIMEOUT` is set to something unusable (and
    /// not overridden in `options`).
    pub fn listen(options: TcpOptions) -> Result<TcpTransport, Error> {
        let timeout = handshake_timeout(options.handshake_timeout)?;
        let max_frame = max_frame(options.max_frame)?;
        let listen_err = |source| Error::Listen {
            addr: options.addr.to_string(),
            source,
        };
        let listener = bind_listener(options.addr).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let listener = Arc::new(listener);
        let host = options.host.clone().unwrap_or_else(crate::this_host);
        let hub = Hub::new("tcp", Peer { rank: 0, host }, max_frame);
        let shared = Arc::new(Shared {
            hub: hub.clone(),
            secret: options.secret,
            timeout,
            magic: magic(options.plaintext),
            plaintext: options.plaintext,
            next_rank: AtomicU32::new(1),
            next_id: AtomicU64::new(0),
            pending: Mutex::new(VecDeque::new()),
            pushed_out: Mutex::new((0, None)),
            dropped: Mutex::new((None, 0, 0)),
        });
        let acceptor = {
            let listener = listener.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("parvm-tcp-accept".into())
                .spawn(move || accept_loop(&listener, &shared))
                .map_err(|source| Error::Io {
                    backend: "tcp",
                    what: "start its accept thread".into(),
                    source,
                })?
        };
        if options.plaintext {
            tracing::warn!("tcp transport listening on {addr} WITHOUT protecting frames");
        } else {
            tracing::info!("tcp transport listening on {addr}");
        }
        Ok(TcpTransport {
            side: Side::Spawner(Listening {
                hub,
                addr,
                listener,
                shared,
                acceptor: Some(acceptor),
            }),
        })
    }

    /// The address the spawner listens on (with the port chosen when port 0 was asked);
    /// `None` on a worker.
    #[must_use]
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.side {
            Side::Spawner(s) => Some(s.addr),
            Side::Worker(_) => None,
        }
    }

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

/// One try of [`TcpTransport::connect_with`].
fn connect_once(
    options: &ConnectOptions,
    host: &str,
    timeout: Duration,
    max_frame: u64,
) -> Result<TcpTransport, Error> {
    let addr = options.addr.as_str();
    let secret = &options.secret;
    let connect_err = |source| Error::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
    let mut stream = None;
    for candidate in addr.to_socket_addrs().map_err(connect_err)? {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(err) => last = err,
        }
    }
    let mut stream = stream.ok_or_else(|| connect_err(last))?;
    let hs_err = |reason: String| Error::Handshake {
        addr: addr.to_string(),
        reason,
    };
    // What an I/O error at each step means.
    let io_reason = |step: &str, err: io::Error| match err.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            format!("the spawner closed the connection {step}")
        }
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "the spawner did not answer within {timeout:?} {step}; is it a parvm spawner? (on a slow network raise {HANDSHAKE_TIMEOUT_VAR})"
        ),
        _ => format!("{step}: {err}"),
    };
    let setup = |s: &TcpStream| -> io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))
    };
    setup(&stream).map_err(connect_err)?;

    let magic = magic(options.plaintext);
    let my_nonce: [u8; NONCE] = rand::random();
    let mut transcript = Transcript::default();
    let mut hello = Vec::with_capacity(magic.len() + NONCE);
    hello.extend_from_slice(&magic);
    hello.extend_from_slice(&my_nonce);
    transcript.add(&hello);
    stream
        .write_all(&hello)
        .map_err(|e| hs_err(io_reason("before the hello was sent", e)))?;

    let before_answer = "before answering the hello (a parvm spawner of an older version, or one too busy with other connections: retry with --wait or PARVM_CONNECT_WAIT)";
    let mut answer = [0u8; 8 + NONCE + MAC];
    stream
        .read_exact(&mut answer[..8])
        .map_err(|e| hs_err(io_reason(before_answer, e)))?;
    if answer[..8] != magic {
        return Err(hs_err(foreign_answer(&answer[..8], &magic)));
    }
    stream
        .read_exact(&mut answer[8..])
        .map_err(|e| hs_err(io_reason(before_answer, e)))?;
    transcript.add(&answer);
    let their_nonce = &answer[8..8 + NONCE];
    proof(secret, b"parvm spawner", &my_nonce, their_nonce)
        .verify_slice(&answer[8 + NONCE..])
        .map_err(|_| {
            hs_err(format!(
                "the spawner does not know this secret; copy the spawner's secret file to {SECRET_FILE_VAR} (default ~/.parvm/secret) on this host"
            ))
        })?;
    let mut reply = vec![host.len() as u8];
    reply.extend_from_slice(host.as_bytes());
    reply.extend_from_slice(
        &worker_proof(secret, their_nonce, &my_nonce, host.as_bytes())
            .finalize()
            .into_bytes(),
    );
    transcript.add(&reply);
    stream
        .write_all(&reply)
        .map_err(|e| hs_err(io_reason("while this worker sent its proof", e)))?;

    let after_proof = "after this worker's proof: it refused the proof, so the secret files differ (copy the spawner's secret file to this host) or the host name was changed on the way";
    let keys = Keys::derive(secret, &my_nonce, their_nonce, &transcript);
    let (stream, sealing, welcome) = if options.plaintext {
        let welcome = frame::read_frame(&mut stream, MAX_WELCOME);
        (Stream::Tcp(stream), None, welcome)
    } else {
        let mut open = keys.opener(Direction::ToWorker);
        let (stream, welcome) =
            seal::read_sealed_unbuffered(Stream::Tcp(stream), MAX_WELCOME, &mut open);
        let seal = keys.sealer(Direction::ToSpawner);
        (stream, Some(Sealing { seal, open }), welcome)
    };
    let welcome = match welcome {
        Ok(Some(welcome)) => welcome,
        Ok(None) => {
            return Err(hs_err(format!(
                "the spawner closed the connection {after_proof}"
            )));
        }
        Err(Error::FrameIo { source }) => return Err(hs_err(io_reason(after_proof, source))),
        Err(Error::FrameTruncated { .. }) => {
            return Err(hs_err(format!(
                "the spawner closed the connection {after_proof}"
            )));
        }
        Err(err) => {
            return Err(hs_err(format!(
                "the spawner's welcome is not authentic ({}); something on the network changes the bytes",
                star::error_chain(&err)
            )));
        }
    };
    let (rank, spawner_host) = match welcome.as_slice() {
        [r0, r1, r2, r3, len, name @ ..] if name.len() == usize::from(*len) => (
            Rank::from_le_bytes([*r0, *r1, *r2, *r3]),
            String::from_utf8_lossy(name).into_owned(),
        ),
        _ => {
            return Err(hs_err(
                "the spawner's welcome is malformed; run the same parvm version on both hosts"
                    .into(),
            ));
        }
    };
    if rank == 0 {
        return Err(hs_err(
            "the spawner assigned rank 0, which is its own".into(),
        ));
    }
    if let Stream::Tcp(s) = &stream {
        s.set_read_timeout(None)
            .and_then(|()| s.set_write_timeout(None))
            .map_err(connect_err)?;
    }
    let client = Client::new_sealed(
        "tcp",
        rank,
        host.to_string(),
        spawner_host,
        max_frame,
        stream,
        sealing,
    )
    .map_err(connect_err)?
    .with_spawner_addr(addr);
    Ok(TcpTransport {
        side: Side::Worker(client),
    })
}

/// Why the first 8 bytes of an answer are not this protocol's magic.
fn foreign_answer(got: &[u8], want: &[u8; 8]) -> String {
    if got.starts_with(MAGIC_PREFIX) && got[6] != want[6] {
        format!(
            "the spawner speaks parvm tcp protocol version {}, this worker version {}; run the same parvm version on both hosts",
            got[6], want[6]
        )
    } else if got.starts_with(MAGIC_PREFIX) {
        "the spawner runs with plaintext frames for benchmarks, or this worker does; run both in the same mode".into()
    } else {
        format!(
            "the peer is not a parvm spawner (it answered {:02x?}); check PARVM_CONNECT",
            got
        )
    }
}

/// How many connections the kernel queues before the accept thread takes them: more than
/// std's 128, so a burst of connections (a flood, or hundreds of workers started at once)
/// does not make the kernel drop a worker's connection request, which costs it a second.
const ACCEPT_QUEUE: i32 = 4096;

/// Binds and listens like [`TcpListener::bind`] (with `SO_REUSEADDR`), with a queue of
/// [`ACCEPT_QUEUE`] (the kernel may cap it, at `net.core.somaxconn`).
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt,
        socket, sockopt,
    };
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(ACCEPT_QUEUE).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

/// Host names longer than 255 bytes are cut (at a character boundary) to fit the handshake.
fn truncate_host(host: &str) -> String {
    let mut end = host.len().min(255);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    host[..end].to_string()
}

/// The address pending handshakes are counted by: IPv4 addresses (also mapped into IPv6)
/// as they are, IPv6 addresses by their /64, which one site usually holds whole.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Makes room for one more pending handshake from `source`: pushes out the oldest pending
/// connection from that source while it has [`MAX_PENDING_PER_SOURCE`], then the oldest
/// overall while there are [`MAX_PENDING`]; connections that sent nothing yet go first.
/// Returns how many were pushed out.
fn make_room(table: &mut VecDeque<Pending>, source: IpAddr) -> u64 {
    let mut pushed = 0;
    let mut push_out = |table: &mut VecDeque<Pending>, same_source: bool| -> bool {
        let candidate = |p: &Pending| !same_source || p.source == source;
        let victim = table
            .iter()
            .position(|p| candidate(p) && !p.spoke.load(Ordering::SeqCst))
            .or_else(|| table.iter().position(candidate));
        match victim.and_then(|i| table.remove(i)) {
            Some(victim) => {
                let _ = victim.control.shutdown(Shutdown::Both);
                pushed += 1;
                true
            }
            None => false,
        }
    };
    while table.iter().filter(|p| p.source == source).count() >= MAX_PENDING_PER_SOURCE {
        if !push_out(table, true) {
            break;
        }
    }
    while table.len() >= MAX_PENDING {
        if !push_out(table, false) {
            break;
        }
    }
    pushed
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let (stream, addr) = match listener.accept() {
            Ok(conn) => conn,
            Err(_) if shared.hub.is_closing() => return,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                // Out of descriptors and the like: report, wait a little, try again.
                tracing::warn!("tcp transport cannot accept a connection: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.hub.is_closing() {
            return;
        }
        let control = match stream.try_clone() {
            Ok(control) => control,
            Err(err) => {
                tracing::warn!("dropped connection from {addr}: cannot track it: {err}");
                continue;
            }
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let spoke = Arc::new(AtomicBool::new(false));
        let source = source_of(addr.ip());
        let pushed = {
            let mut table = lock(&shared.pending);
            let pushed = make_room(&mut table, source);
            table.push_back(Pending {
                id,
                source,
                spoke: spoke.clone(),
                control,
            });
            pushed
        };
        if pushed > 0 {
            shared.note_pushed_out(pushed);
        }
        let worker_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("parvm-tcp-{addr}"))
            .spawn(move || serve(stream, addr, id, &spoke, &worker_shared));
        match spawned {
            Ok(handle) => shared.hub.keep_thread(handle),
            Err(err) => {
                shared.forget(id);
                tracing::warn!("dropped connection from {addr}: cannot start a thread: {err}");
            }
        }
    }
}

/// At most this many warnings about dropped connections per [`FLOOD_WARNING_EVERY`].
const DROP_WARNINGS: u32 = 10;

impl Shared {
    /// Removes a connection from the pending table; returns whether it was still there
    /// (else it was pushed out to make room).
    fn forget(&self, id: u64) -> bool {
        let mut table = lock(&self.pending);
        let before = table.len();
        table.retain(|p| p.id != id);
        table.len() < before
    }

    /// Warns that a connection was dropped before it joined, at most [`DROP_WARNINGS`]
    /// times per [`FLOOD_WARNING_EVERY`]; the rest are counted and summed up later.
    fn warn_dropped(&self, addr: SocketAddr, reason: &str) {
        let mut dropped = lock(&self.dropped);
        let (start, _, hidden) = &mut *dropped;
        if start.is_none_or(|s| s.elapsed() >= FLOOD_WARNING_EVERY) {
            if *hidden > 0 {
                tracing::warn!(
                    "tcp transport: {hidden} more connections were dropped before they joined"
                );
            }
            *dropped = (Some(Instant::now()), 0, 0);
        }
        let (_, shown, hidden) = &mut *dropped;
        if *shown < DROP_WARNINGS {
            *shown += 1;
            tracing::warn!("dropped tcp connection from {addr}: {reason}");
        } else {
            *hidden += 1;
            tracing::debug!("dropped tcp connection from {addr}: {reason}");
        }
    }

    /// Counts pending handshakes pushed out, and warns now and then.
    fn note_pushed_out(&self, n: u64) {
        let mut pushed = lock(&self.pushed_out);
        pushed.0 += n;
        let due = pushed
            .1
            .is_none_or(|last| last.elapsed() >= FLOOD_WARNING_EVERY);
        if due {
            tracing::warn!(
                "tcp transport: dropped {} connections that had not finished their handshake, to make room for new ones (at most {MAX_PENDING} pending, {MAX_PENDING_PER_SOURCE} per address); if these are not your workers, something floods {}",
                pushed.0,
                self.hub.me().host,
            );
            *pushed = (0, Some(Instant::now()));
        }
    }
}

/// Handshakes one connection, then reads its frames until it ends.
fn serve(stream: TcpStream, addr: SocketAddr, id: u64, spoke: &AtomicBool, shared: &Shared) {
    let outcome = handshake(&stream, shared, spoke);
    let still_pending = shared.forget(id);
    let (rank, host, sealing) = match outcome {
        Ok(joined) => joined,
        // Pushed out to make room: counted in the flood warning already.
        Err(reason) if !still_pending => {
            tracing::debug!("dropped tcp connection from {addr} to make room: {reason}");
            return;
        }
        Err(reason) => {
            shared.warn_dropped(addr, &reason);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    };
    if shared.hub.is_closing() {
        return;
    }
    let peer = Peer { rank, host };
    let explain: star::Explain = {
        let peer = peer.clone();
        Box::new(move |reason| {
            format!(
                "worker rank {} on host `{}` ({addr}): {reason}",
                peer.rank, peer.host
            )
        })
    };
    match shared
        .hub
        .add_sealed(peer.clone(), Stream::Tcp(stream), sealing, explain)
    {
        Ok(run) => {
            tracing::info!(
                "worker rank {rank} on host `{}` joined from {addr}",
                peer.host
            );
            shared.hub.post(Event::PeerJoined(peer));
            run();
        }
        Err(err) => tracing::warn!("dropped tcp connection from {addr}: {err}"),
    }
}

/// The spawner's side of the handshake; returns the new rank, the worker's host and the
/// sealing of the connection (`None` in the benchmarks' plaintext mode).
fn handshake(
    stream: &TcpStream,
    shared: &Shared,
    spoke: &AtomicBool,
) -> Result<(Rank, String, Option<Sealing>), String> {
    let start = Instant::now();
    let deadline = start + shared.timeout;
    let first_deadline = start + shared.timeout.min(FIRST_BYTES_TIMEOUT);
    let mut reader = stream;
    let mut stream = stream;
    let mut read = |buf: &mut [u8], deadline: Instant| -> Result<(), String> {
        let late = || {
            format!(
                "no handshake within {:?}; a worker on a slow network needs a longer {HANDSHAKE_TIMEOUT_VAR}",
                deadline - start
            )
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        reader
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        reader.read_exact(buf).map_err(|err| match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => late(),
            io::ErrorKind::UnexpectedEof => "it closed the connection during the handshake (or it was pushed out to make room for newer connections)".into(),
            _ => format!("handshake failed: {err}"),
        })
    };
    let mut transcript = Transcript::default();
    let mut hello = [0u8; 8 + NONCE];
    read(&mut hello[..8], first_deadline)?;
    if hello[..8] != shared.magic {
        // Tell a parvm of another version which one this is, then close.
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = stream.write_all(&shared.magic);
        return Err(if hello.starts_with(MAGIC_PREFIX) {
            format!(
                "it speaks parvm tcp protocol version {} (with frames {}), this spawner version {}; run the same parvm version on every host",
                hello[6],
                if hello[7] == b'P' {
                    "in plaintext"
                } else {
                    "sealed"
                },
                shared.magic[6]
            )
        } else {
            "it does not speak the parvm tcp protocol".into()
        });
    }
    read(&mut hello[8..], deadline)?;
    spoke.store(true, Ordering::SeqCst);
    transcript.add(&hello);
    let their_nonce = &hello[8..];
    let my_nonce: [u8; NONCE] = rand::random();
    let mut answer = Vec::with_capacity(8 + NONCE + MAC);
    answer.extend_from_slice(&shared.magic);
    answer.extend_from_slice(&my_nonce);
    answer.extend_from_slice(
        &proof(&shared.secret, b"parvm spawner", their_nonce, &my_nonce)
            .finalize()
            .into_bytes(),
    );
    transcript.add(&answer);
    let _ = stream.set_write_timeout(Some(shared.timeout));
    stream
        .write_all(&answer)
        .map_err(|e| format!("handshake failed: {e}"))?;
    let mut host_len = [0u8; 1];
    read(&mut host_len, deadline)?;
    let mut host = vec![0u8; usize::from(host_len[0])];
    read(&mut host, deadline)?;
    let mut their_proof = [0u8; MAC];
    read(&mut their_proof, deadline)?;
    worker_proof(&shared.secret, &my_nonce, their_nonce, &host)
        .verify_slice(&their_proof)
        .map_err(|_| {
            "it does not know the shared secret (or its host name was changed on the way); give that worker the spawner's secret file"
                .to_string()
        })?;
    transcript.add(&host_len);
    transcript.add(&host);
    transcript.add(&their_proof);
    let host = String::from_utf8_lossy(&host).into_owned();

    let rank = shared.next_rank.fetch_add(1, Ordering::SeqCst);
    let me = truncate_host(&shared.hub.me().host);
    let mut welcome = rank.to_le_bytes().to_vec();
    welcome.push(me.len() as u8);
    welcome.extend_from_slice(me.as_bytes());
    let keys = Keys::derive(&shared.secret, their_nonce, &my_nonce, &transcript);
    let mut sealing = (!shared.plaintext).then(|| Sealing {
        seal: keys.sealer(Direction::ToWorker),
        open: keys.opener(Direction::ToSpawner),
    });
    let mut out = Stream::Tcp(
        stream
            .try_clone()
            .map_err(|e| format!("handshake failed: {e}"))?,
    );
    let written = match &mut sealing {
        Some(sealing) => sealing.seal.write_frame(&mut out, &[&welcome]),
        None => frame::write_frame(&mut out, &welcome),
    };
    drop(out);
    written.map_err(|e| format!("handshake failed: {e}"))?;
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    let _ = stream.set_nodelay(true);
    Ok((rank, host, sealing))
}

/// Joins the spawner named by `PARVM_CONNECT` (`host:port`), with the secret of
/// [`Secret::default_path`] and the host name of [`crate::this_host`], trying for
/// `PARVM_CONNECT_WAIT` seconds (see [`ConnectOptions::wait`]).
///
/// Returns `Ok(None)` when `PARVM_CONNECT` is not set.
///
/// # Errors
/// The secret file is missing or unsafe, a `PARVM_*` variable is unusable, or joining
/// fails (see [`TcpTransport::connect_with`]).
pub fn worker_from_env() -> Result<Option<TcpTransport>, Error> {
    let Some(addr) = std::env::var_os(CONNECT_VAR).filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let addr = addr.into_string().map_err(|value| Error::BadWorkerEnv {
        var: CONNECT_VAR,
        value: value.to_string_lossy().into_owned(),
        reason: "it is not UTF-8".into(),
    })?;
    let secret = Secret::load(&Secret::default_path()?)?;
    TcpTransport::connect_with(ConnectOptions::new(addr, secret)).map(Some)
}

impl Transport for TcpTransport {
    fn rank(&self) -> Rank {
        match &self.side {
            Side::Spawner(_) => 0,
            Side::Worker(client) => client.rank(),
        }
    }

    fn peers(&self) -> Vec<Peer> {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.peers(),
            Side::Worker(client) => client.peers(),
        }
    }

    fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.send(to, payload),
            Side::Worker(client) => client.send(to, payload),
        }
    }

    fn send_parts(&self, to: Rank, parts: &[&[u8]]) -> Result<(), Error> {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.send_parts(to, parts),
            Side::Worker(client) => client.send_parts(to, parts),
        }
    }

    fn recv(&self, wait: Wait) -> Result<Option<Event>, Error> {
        match &self.side {
            Side::Spawner(spawner) => Ok(spawner.hub.recv(wait)),
            Side::Worker(client) => client.recv(wait),
        }
    }

    fn backend(&self) -> &'static str {
        "tcp"
    }

    fn host(&self) -> String {
        match &self.side {
            Side::Spawner(spawner) => spawner.hub.me().host.clone(),
            Side::Worker(client) => client.host(),
        }
    }

    fn workers_can_join(&self) -> bool {
        true
    }

    fn reports_dead_peers(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_documented() {
        let cases: [(&str, Option<u64>); 10] = [
            ("1048576", Some(1 << 20)),
            ("64K", Some(64 << 10)),
            ("64kib", Some(64 << 10)),
            ("512M", Some(512 << 20)),
            ("1G", Some(1 << 30)),
            ("2GB", Some(2 << 30)),
            ("4095", None),
            ("1.5G", None),
            ("lots", None),
            ("99999999999G", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_max_frame(text).ok(), want, "{text}");
        }
        assert_eq!(parse_seconds("5", false), Ok(Duration::from_secs(5)));
        assert_eq!(parse_seconds("0.25", false), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("0", true), Ok(Duration::ZERO));
        for bad in ["0", "-1", "soon", "inf", "NaN", "1e12"] {
            assert!(parse_seconds(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_of_other_versions_and_modes_are_told_apart() {
        let old = foreign_answer(b"PVTCP\x00\x02\x00", &MAGIC);
        assert!(
            old.contains("version 2") && old.contains("version 3"),
            "{old}"
        );
        let plain = foreign_answer(&PLAIN_MAGIC, &MAGIC);
        assert!(plain.contains("plaintext"), "{plain}");
        let http = foreign_answer(b"HTTP/1.1", &MAGIC);
        assert!(http.contains("not a parvm spawner"), "{http}");
    }

    #[test]
    fn pending_handshakes_make_room_idle_ones_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut table = VecDeque::new();
        let mut conns = Vec::new();
        let mut add = |table: &mut VecDeque<Pending>, id: u64, source: [u8; 4], spoke: bool| {
            let stream = TcpStream::connect(addr).unwrap();
            conns.push(listener.accept().unwrap().0);
            table.push_back(Pending {
                id,
                source: IpAddr::from(source),
                spoke: Arc::new(AtomicBool::new(spoke)),
                control: stream,
            });
        };
        // One source at its bound: its oldest idle connection goes, not the one that spoke.
        add(&mut table, 0, [10, 0, 0, 1], true);
        for id in 1..MAX_PENDING_PER_SOURCE as u64 {
            add(&mut table, id, [10, 0, 0, 1], false);
        }
        assert_eq!(make_room(&mut table, IpAddr::from([10, 0, 0, 1])), 1);
        let ids: Vec<u64> = table.iter().map(|p| p.id).collect();
        assert!(ids.contains(&0) && !ids.contains(&1), "{ids:?}");
        // Another source is not touched while the table has room.
        assert_eq!(make_room(&mut table, IpAddr::from([10, 0, 0, 2])), 0);
        // A full table: the oldest idle connection overall goes.
        let mut id = 100;
        let mut source = 0u8;
        while table.len() < MAX_PENDING {
            add(&mut table, id, [10, 0, 1, source / 4], id % 2 == 0);
            id += 1;
            source = source.wrapping_add(1);
        }
        assert_eq!(make_room(&mut table, IpAddr::from([10, 0, 9, 9])), 1);
        assert_eq!(table.len(), MAX_PENDING - 1);
        assert!(table.iter().any(|p| p.id == 0));
        // IPv6 sources count by /64; mapped IPv4 as IPv4.
        assert_eq!(
            source_of("2001:db8::1".parse().unwrap()),
            source_of("2001:db8::ffff:1".parse().unwrap())
        );
        assert_eq!(
            source_of("::ffff:10.0.0.1".parse().unwrap()),
            IpAddr::from([10, 0, 0, 1])
        );
    }

    #[test]
    fn host_names_are_cut_at_char_boundaries() {
        assert_eq!(truncate_host("node1"), "node1");
        let long = "é".repeat(200);
        let cut = truncate_host(&long);
        assert!(cut.len() <= 255 && long.starts_with(&cut));
    }

    #[test]
    fn proofs_depend_on_label_secret_and_order() {
        let a = Secret::new(b"a".to_vec());
        let b = Secret::new(b"b".to_vec());
        let bytes = |m: HmacSha256| m.finalize().into_bytes().to_vec();
        let base = bytes(proof(&a, b"x", b"1", b"2"));
        assert_ne!(base, bytes(proof(&b, b"x", b"1", b"2")));
        assert_ne!(base, bytes(proof(&a, b"y", b"1", b"2")));
        assert_ne!(base, bytes(proof(&a, b"x", b"2", b"1")));
    }
}

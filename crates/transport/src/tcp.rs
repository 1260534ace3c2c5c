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
//! spawner -> worker   rank(4, little-endian) host_len(1) spawner_host
//! ```
//!
//! The worker's proof covers the host name it reports, so nobody on the way can make a
//! worker appear on another host (and so mirror into another host's paths).
//!
//! A peer with a wrong magic or proof is dropped having sent at most 328 bytes; a silent
//! peer is dropped after the handshake timeout. Each connection is handshaken on its own
//! thread, so a slow peer never delays the others. After the handshake, traffic is frames
//! (see [`crate::frame`]); the topology is a star as in [`crate::local`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use crate::secret::{SECRET_FILE_VAR, Secret};
use crate::star::{self, Client, Hub, Stream, lock};
use crate::{Error, Event, Peer, Rank, frame};

/// The variable telling a worker where the spawner listens (`host:port`).
pub const CONNECT_VAR: &str = "PARVM_CONNECT";

const MAGIC: [u8; 8] = *b"PVTCP\x00\x02\x00";
const NONCE: usize = 32;
const MAC: usize = 32;
/// At most this many handshakes run at once; more connections are closed at once.
const MAX_HANDSHAKES: usize = 64;

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

/// How [`TcpTransport::listen`] listens.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    addr: SocketAddr,
    secret: Secret,
    handshake_timeout: Duration,
    max_frame: u64,
    host: Option<String>,
}

impl TcpOptions {
    /// Listens with `secret` on `127.0.0.1:0`.
    #[must_use]
    pub fn new(secret: Secret) -> Self {
        TcpOptions {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            secret,
            handshake_timeout: Duration::from_secs(5),
            max_frame: frame::DEFAULT_MAX_FRAME,
            host: None,
        }
    }

    /// The address to listen on; port 0 picks a free port. Default: `127.0.0.1:0`.
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// How long a connecting peer has to complete the handshake. Default: 5 s.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The largest payload accepted, in bytes. Default: 1 GiB.
    #[must_use]
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = bytes;
        self
    }

    /// The spawner's host name. Default: [`crate::this_host`].
    #[must_use]
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
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

/// What the accept thread and the handshake threads share.
struct Shared {
    hub: Arc<Hub>,
    secret: Secret,
    timeout: Duration,
    next_rank: AtomicU32,
    handshakes: AtomicUsize,
    next_id: AtomicU64,
    /// Connections still in their handshake, so closing can cut them short.
    pending: Mutex<Vec<(u64, TcpStream)>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.hub.close();
        // Wakes the accept thread: a listening socket that is shut down fails `accept`.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        for (_, stream) in lock(&self.shared.pending).iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.hub.join();
    }
}

impl TcpTransport {
    /// Listens for workers; they join at any time as [`Event::PeerJoined`], with ranks
    /// 1, 2, ... in the order their handshakes complete.
    ///
    /// # Errors
    /// [`Error::Listen`] when the address cannot be bound.
    pub fn listen(options: TcpOptions) -> Result<TcpTransport, Error> {
        let listen_err = |source| Error::Listen {
            addr: options.addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(options.addr).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        let listener = Arc::new(listener);
        let host = options.host.clone().unwrap_or_else(crate::this_host);
        let hub = Hub::new("tcp", Peer { rank: 0, host }, options.max_frame);
        let shared = Arc::new(Shared {
            hub: hub.clone(),
            secret: options.secret,
            timeout: options.handshake_timeout,
            next_rank: AtomicU32::new(1),
            handshakes: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
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
        tracing::info!("tcp transport listening on {addr}");
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
    /// reporting `hostname` as its host. The handshake times out after 5 s.
    ///
    /// # Errors
    /// [`Error::Connect`] when the spawner cannot be reached, [`Error::Handshake`] when
    /// authentication fails (different secrets, or not a parvm spawner).
    pub fn connect(addr: &str, secret: &Secret, hostname: &str) -> Result<TcpTransport, Error> {
        let timeout = Duration::from_secs(5);
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
        let io_reason = |err: io::Error| match err.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                "the spawner closed the connection (is the secret the same on both sides?)"
                    .to_string()
            }
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                "the spawner did not answer in time (is it a parvm spawner?)".to_string()
            }
            _ => err.to_string(),
        };
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))
        };
        setup(&stream).map_err(connect_err)?;

        let my_nonce: [u8; NONCE] = rand::random();
        let mut hello = Vec::with_capacity(MAGIC.len() + NONCE);
        hello.extend_from_slice(&MAGIC);
        hello.extend_from_slice(&my_nonce);
        stream.write_all(&hello).map_err(|e| hs_err(io_reason(e)))?;

        let mut answer = [0u8; 8 + NONCE + MAC];
        stream
            .read_exact(&mut answer)
            .map_err(|e| hs_err(io_reason(e)))?;
        if answer[..8] != MAGIC {
            return Err(hs_err(
                "the peer is not a parvm spawner of this version".into(),
            ));
        }
        let their_nonce = &answer[8..8 + NONCE];
        proof(secret, b"parvm spawner", &my_nonce, their_nonce)
            .verify_slice(&answer[8 + NONCE..])
            .map_err(|_| {
                hs_err(format!(
                    "the spawner does not know this secret; copy the spawner's secret file to {SECRET_FILE_VAR} (default ~/.parvm/secret) on this host"
                ))
            })?;
        let host = truncate_host(hostname);
        let mut reply = vec![host.len() as u8];
        reply.extend_from_slice(host.as_bytes());
        reply.extend_from_slice(
            &worker_proof(secret, their_nonce, &my_nonce, host.as_bytes())
                .finalize()
                .into_bytes(),
        );
        stream.write_all(&reply).map_err(|e| hs_err(io_reason(e)))?;

        let mut welcome = [0u8; 5];
        stream
            .read_exact(&mut welcome)
            .map_err(|e| hs_err(io_reason(e)))?;
        let rank = Rank::from_le_bytes([welcome[0], welcome[1], welcome[2], welcome[3]]);
        let mut spawner_host = vec![0u8; usize::from(welcome[4])];
        stream
            .read_exact(&mut spawner_host)
            .map_err(|e| hs_err(io_reason(e)))?;
        let spawner_host = String::from_utf8_lossy(&spawner_host).into_owned();
        if rank == 0 {
            return Err(hs_err(
                "the spawner assigned rank 0, which is its own".into(),
            ));
        }
        stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(None))
            .map_err(connect_err)?;
        let client = Client::new(
            "tcp",
            rank,
            host,
            spawner_host,
            frame::DEFAULT_MAX_FRAME,
            Stream::Tcp(stream),
        )
        .map_err(connect_err)?;
        Ok(TcpTransport {
            side: Side::Worker(client),
        })
    }
}

/// Host names longer than 255 bytes are cut (at a character boundary) to fit the handshake.
fn truncate_host(host: &str) -> String {
    let mut end = host.len().min(255);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    host[..end].to_string()
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
        if shared.handshakes.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
            shared.handshakes.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("dropped connection from {addr}: too many handshakes in progress");
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        if let Ok(control) = stream.try_clone() {
            lock(&shared.pending).push((id, control));
        }
        let worker_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("parvm-tcp-{addr}"))
            .spawn(move || serve(stream, addr, id, &worker_shared));
        match spawned {
            Ok(handle) => shared.hub.keep_thread(handle),
            Err(err) => {
                shared.handshakes.fetch_sub(1, Ordering::SeqCst);
                lock(&shared.pending).retain(|(i, _)| *i != id);
                tracing::warn!("dropped connection from {addr}: cannot start a thread: {err}");
            }
        }
    }
}

/// Handshakes one connection, then reads its frames until it ends.
fn serve(stream: TcpStream, addr: SocketAddr, id: u64, shared: &Shared) {
    let outcome = handshake(&stream, shared);
    shared.handshakes.fetch_sub(1, Ordering::SeqCst);
    lock(&shared.pending).retain(|(i, _)| *i != id);
    let (rank, host) = match outcome {
        Ok(joined) => joined,
        Err(reason) => {
            tracing::warn!("dropped tcp connection from {addr}: {reason}");
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
    match shared.hub.add(peer.clone(), Stream::Tcp(stream), explain) {
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

/// The spawner's side of the handshake; returns the new rank and the worker's host.
fn handshake(stream: &TcpStream, shared: &Shared) -> Result<(Rank, String), String> {
    let deadline = Instant::now() + shared.timeout;
    let mut reader = stream;
    let mut stream = stream;
    let mut read = |buf: &mut [u8]| -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no handshake within {:?}", shared.timeout));
        }
        reader
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        reader.read_exact(buf).map_err(|err| match err.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                format!("no handshake within {:?}", shared.timeout)
            }
            io::ErrorKind::UnexpectedEof => "it closed the connection during the handshake".into(),
            _ => format!("handshake failed: {err}"),
        })
    };
    let mut hello = [0u8; 8 + NONCE];
    read(&mut hello)?;
    if hello[..8] != MAGIC {
        return Err("it does not speak the parvm tcp protocol of this version".into());
    }
    let their_nonce = &hello[8..];
    let my_nonce: [u8; NONCE] = rand::random();
    let mut answer = Vec::with_capacity(8 + NONCE + MAC);
    answer.extend_from_slice(&MAGIC);
    answer.extend_from_slice(&my_nonce);
    answer.extend_from_slice(
        &proof(&shared.secret, b"parvm spawner", their_nonce, &my_nonce)
            .finalize()
            .into_bytes(),
    );
    let _ = stream.set_write_timeout(Some(shared.timeout));
    stream
        .write_all(&answer)
        .map_err(|e| format!("handshake failed: {e}"))?;
    let mut host_len = [0u8; 1];
    read(&mut host_len)?;
    let mut host = vec![0u8; usize::from(host_len[0])];
    read(&mut host)?;
    let mut their_proof = [0u8; MAC];
    read(&mut their_proof)?;
    worker_proof(&shared.secret, &my_nonce, their_nonce, &host)
        .verify_slice(&their_proof)
        .map_err(|_| {
            "it does not know the shared secret (or its host name was changed on the way)"
                .to_string()
        })?;
    let host = String::from_utf8_lossy(&host).into_owned();

    let rank = shared.next_rank.fetch_add(1, Ordering::SeqCst);
    let me = truncate_host(&shared.hub.me().host);
    let mut welcome = rank.to_le_bytes().to_vec();
    welcome.push(me.len() as u8);
    welcome.extend_from_slice(me.as_bytes());
    stream
        .write_all(&welcome)
        .map_err(|e| format!("handshake failed: {e}"))?;
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    let _ = stream.set_nodelay(true);
    Ok((rank, host))
}

/// Joins the spawner named by `PARVM_CONNECT` (`host:port`), with the secret of
/// [`Secret::default_path`] and the host name of [`crate::this_host`].
///
/// Returns `Ok(None)` when `PARVM_CONNECT` is not set.
///
/// # Errors
/// The secret file is missing or unsafe, or connecting fails.
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
    TcpTransport::connect(&addr, &secret, &crate::this_host()).map(Some)
}

impl TcpTransport {
    fn endpoint(&self) -> crate::star::Endpoint<'_> {
        match &self.side {
            Side::Spawner(s) => crate::star::Endpoint::Hub(&s.hub),
            Side::Worker(c) => crate::star::Endpoint::Client(c),
        }
    }
}

crate::star::star_transport!(TcpTransport, "tcp");

#[cfg(test)]
mod tests {
    use super::*;

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

//! The TCP handshake, both sides: the worker's ([`connect_once`]) and the spawner's
//! ([`handshake`]), the proofs (HMAC-SHA256 over both nonces) and the magic that carries
//! the protocol version; it ends with the keys of the sealed frames ([`crate::seal`]).
//!
//! Owns the handshake's bytes and their order (see the module docs of `tcp`). Must not
//! know how connections are accepted, limited or retried (`listener`, `connect`).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::options::{
    ConnectOptions, DEFAULT_PEER_TIMEOUT, FIRST_BYTES_TIMEOUT, HANDSHAKE_TIMEOUT_VAR,
};
use crate::seal::{self, Direction, Keys, Transcript};
use crate::secret::{SECRET_FILE_VAR, Secret};
use crate::star::{self, Client, Hub, Sealing, Stream};
use crate::{Error, Rank, frame};

/// The magic of this protocol: `PVTCP`, 0, the version, 0.
const MAGIC: [u8; 8] = *b"PVTCP\x00\x03\x00";

/// The magic of the plaintext mode of the benchmarks; no protected peer accepts it.
const PLAIN_MAGIC: [u8; 8] = *b"PVTCP\x00\x03P";

/// What every version's magic starts with.
const MAGIC_PREFIX: &[u8] = b"PVTCP\x00";

const NONCE: usize = 32;

const MAC: usize = 32;

/// The largest welcome a worker reads: a rank and a host name.
const MAX_WELCOME: u64 = 4 + 1 + 255;

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

pub(super) fn magic(plaintext: bool) -> [u8; 8] {
    if plaintext { PLAIN_MAGIC } else { MAGIC }
}

/// One try of [`TcpTransport::connect_with`](super::TcpTransport::connect_with).
pub(super) fn connect_once(
    options: &ConnectOptions,
    host: &str,
    timeout: Duration,
    max_frame: u64,
) -> Result<Client, Error> {
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
        let peer_timeout = options.peer_timeout.unwrap_or(DEFAULT_PEER_TIMEOUT);
        s.set_read_timeout(None)
            .and_then(|()| s.set_write_timeout(None))
            .and_then(|()| super::alive::give_up_after(s, peer_timeout))
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
    .with_spawner_addr(addr)
    .with_spin_window(options.spin_window);
    Ok(client)
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

/// Host names longer than 255 bytes are cut (at a character boundary) to fit the handshake.
pub(super) fn truncate_host(host: &str) -> String {
    let mut end = host.len().min(255);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    host[..end].to_string()
}

/// What the spawner's side of every handshake needs, shared by the handshake threads.
pub(super) struct Admission {
    /// The hub a worker joins once its handshake completes.
    pub(super) hub: Arc<Hub>,
    pub(super) secret: Secret,
    /// The limit on a whole handshake.
    pub(super) timeout: Duration,
    /// This spawner's magic (protocol version and mode).
    pub(super) magic: [u8; 8],
    /// Frames unsealed (the benchmarks' plaintext mode only).
    pub(super) plaintext: bool,
    /// The rank the next worker gets.
    pub(super) next_rank: AtomicU32,
}

/// The spawner's side of the handshake; returns the new rank, the worker's host and the
/// sealing of the connection (`None` in the benchmarks' plaintext mode).
pub(super) fn handshake(
    stream: &TcpStream,
    shared: &Admission,
    spoke: &AtomicBool,
) -> Result<(Rank, String, Option<Sealing>), String> {
    let start = Instant::now();
    let deadline = start + shared.timeout;
    let first_deadline = start + shared.timeout.min(FIRST_BYTES_TIMEOUT);
    let mut reader = stream;
    let mut stream = stream;
    // What a connection that ends at a step says: anywhere, a worker gone or pushed out.
    let gone = "it closed the connection during the handshake (or it was pushed out to make room for newer connections)";
    let mut read = |buf: &mut [u8], deadline: Instant, closed: &str| -> Result<(), String> {
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
            io::ErrorKind::UnexpectedEof => closed.to_owned(),
            _ => format!("handshake failed: {err}"),
        })
    };
    let mut transcript = Transcript::default();
    let mut hello = [0u8; 8 + NONCE];
    read(&mut hello[..8], first_deadline, gone)?;
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
    read(&mut hello[8..], deadline, gone)?;
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
    // A worker checks this spawner's proof first, and closes when it does not hold: its
    // secret differs (it says so on its side).
    let refused = "it closed the connection after this spawner's proof, as a worker whose secret file differs does (it says so on its side; or it was pushed out to make room for newer connections); give that worker the spawner's secret file";
    read(&mut host_len, deadline, refused)?;
    let mut host = vec![0u8; usize::from(host_len[0])];
    read(&mut host, deadline, gone)?;
    let mut their_proof = [0u8; MAC];
    read(&mut their_proof, deadline, gone)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

//! The TCP backend: authentication, sealed frames against a man in the middle, floods,
//! descriptors, retries, and the secret file.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use parvm_transport::tcp::{
    ConnectOptions, DEFAULT_PEER_TIMEOUT, Secret, TcpOptions, TcpTransport,
};
use parvm_transport::{Error, Event, Peer, Transport, Wait, frame};
use sha2::{Digest, Sha256};

use crate::{ask, next_event, wait_until};

const MAGIC: &[u8; 8] = b"PVTCP\x00\x03\x00";
const KEY: &[u8] = b"correct horse battery staple";

fn secret() -> Secret {
    Secret::new(KEY.to_vec())
}

fn listen() -> (TcpTransport, SocketAddr) {
    let spawner = TcpTransport::listen(TcpOptions::new(secret()).host("hub")).unwrap();
    let addr = spawner.local_addr().unwrap();
    (spawner, addr)
}

fn joined(spawner: &TcpTransport) -> Peer {
    match next_event(spawner) {
        Event::PeerJoined(peer) => peer,
        other => panic!("expected a peer to join, got {other:?}"),
    }
}

/// Asserts the spawner closes `stream` (reads end) within `within`.
fn assert_closed(mut stream: TcpStream, within: Duration) {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(err) => panic!("the spawner did not close the connection: {err}"),
        }
    }
}

/// Checks that a well-behaved worker still joins and talks.
fn assert_still_serves(spawner: &TcpTransport, addr: SocketAddr) {
    let worker = TcpTransport::connect(&addr.to_string(), &secret(), "good").unwrap();
    let peer = joined(spawner);
    assert_eq!(peer.host, "good");
    assert_eq!(worker.rank(), peer.rank);
    spawner.send(peer.rank, b"hi").unwrap();
    assert_eq!(
        worker.recv(Wait::For(crate::PATIENCE)).unwrap(),
        Some(Event::Message {
            from: 0,
            payload: b"hi".to_vec()
        })
    );
}

/// One direction of a sealed connection, written from the protocol's description in
/// docs/transports.md (independently of the crate's code): AES-256-GCM, HKDF-SHA256 keys,
/// nonce = IV XOR record counter, the record's length prefix as associated data.
struct Direction {
    cipher: Aes256Gcm,
    iv: [u8; 12],
    counter: u64,
}

impl Direction {
    fn new(secret: &[u8], nonce_w: &[u8], nonce_s: &[u8], transcript: &[u8], label: &[u8]) -> Self {
        let salt = [nonce_w, nonce_s].concat();
        let hash = Sha256::digest(transcript);
        let mut traffic = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&salt), secret)
            .expand_multi_info(&[b"parvm tcp 3 ", label, &hash], &mut traffic)
            .unwrap();
        let per = Hkdf::<Sha256>::from_prk(&traffic).unwrap();
        let mut key = [0u8; 32];
        per.expand_multi_info(&[b"parvm tcp 3 ", b"key"], &mut key)
            .unwrap();
        let mut iv = [0u8; 12];
        per.expand_multi_info(&[b"parvm tcp 3 ", b"iv"], &mut iv)
            .unwrap();
        Direction {
            cipher: Aes256Gcm::new_from_slice(&key).unwrap(),
            iv,
            counter: 0,
        }
    }

    fn nonce(&mut self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (b, c) in nonce[4..].iter_mut().zip(self.counter.to_be_bytes()) {
            *b ^= c;
        }
        self.counter += 1;
        nonce
    }

    /// One record carrying `plain` (at most 64 KiB).
    fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let header = (plain.len() as u32).to_le_bytes();
        let mut body = plain.to_vec();
        let nonce = self.nonce();
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce.into(), &header, body.as_mut_slice().into())
            .unwrap();
        [&header[..], &body, &tag].concat()
    }

    /// Reads and opens one record.
    fn open(&mut self, stream: &mut TcpStream) -> Vec<u8> {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
        stream.read_exact(&mut body).unwrap();
        let mut tag = [0u8; 16];
        stream.read_exact(&mut tag).unwrap();
        let nonce = self.nonce();
        self.cipher
            .decrypt_inout_detached(
                &nonce.into(),
                &header,
                body.as_mut_slice().into(),
                &tag.into(),
            )
            .expect("an authentic record from the spawner");
        body
    }
}

/// A worker that did the handshake by hand.
struct RawWorker {
    stream: TcpStream,
    to_spawner: Direction,
    rank: u32,
}

/// Runs the worker's half of the handshake by hand with `key`, reporting host `sent`
/// with a proof made over host `proven`; returns the stream after the proof.
fn raw_handshake_as(
    addr: SocketAddr,
    key: &[u8],
    sent: &[u8],
    proven: &[u8],
) -> (TcpStream, Vec<u8>, [u8; 32], [u8; 32]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let nonce = [7u8; 32];
    let mut transcript = MAGIC.to_vec();
    transcript.extend_from_slice(&nonce);
    stream.write_all(&transcript).unwrap();
    let mut answer = [0u8; 72];
    stream.read_exact(&mut answer).unwrap();
    transcript.extend_from_slice(&answer);
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(b"parvm worker");
    mac.update(&answer[8..40]);
    mac.update(&nonce);
    mac.update(&[proven.len() as u8]);
    mac.update(proven);
    let mut reply = vec![sent.len() as u8];
    reply.extend_from_slice(sent);
    reply.extend_from_slice(&mac.finalize().into_bytes());
    stream.write_all(&reply).unwrap();
    transcript.extend_from_slice(&reply);
    let nonce_s: [u8; 32] = answer[8..40].try_into().unwrap();
    (stream, transcript, nonce, nonce_s)
}

/// A complete handshake by hand, welcome included.
fn raw_worker(addr: SocketAddr, host: &[u8]) -> RawWorker {
    let (mut stream, transcript, nonce_w, nonce_s) = raw_handshake_as(addr, KEY, host, host);
    let mut to_worker = Direction::new(KEY, &nonce_w, &nonce_s, &transcript, b"spawner to worker");
    let to_spawner = Direction::new(KEY, &nonce_w, &nonce_s, &transcript, b"worker to spawner");
    let welcome = to_worker.open(&mut stream);
    assert_eq!(
        &welcome[..4],
        &frame::encode_header(welcome.len() as u64 - 12)[..4]
    );
    let rank = u32::from_le_bytes(welcome[12..16].try_into().unwrap());
    assert_eq!(&welcome[17..], b"hub");
    RawWorker {
        stream,
        to_spawner,
        rank,
    }
}

#[test]
fn a_host_name_changed_on_the_way_is_refused() {
    let (spawner, addr) = listen();
    let honest = raw_worker(addr, b"node1");
    assert_eq!(joined(&spawner).host, "node1");
    let (forged, ..) = raw_handshake_as(addr, KEY, b"elsewhere", b"node1");
    assert_closed(forged, crate::PATIENCE);
    drop(honest);
    assert!(matches!(
        next_event(&spawner),
        Event::PeerLost { rank: 1, .. }
    ));
    assert_still_serves(&spawner, addr);
}

#[test]
fn right_secret_joins_and_talks() {
    let (spawner, addr) = listen();
    assert!(addr.ip().is_loopback());
    assert_eq!(spawner.backend(), "tcp");
    let worker = TcpTransport::connect(&addr.to_string(), &secret(), "node7").unwrap();
    assert_eq!(
        joined(&spawner),
        Peer {
            rank: 1,
            host: "node7".into()
        }
    );
    assert_eq!(worker.rank(), 1);
    assert_eq!(worker.host(), "node7");
    let hosts: Vec<String> = worker.peers().into_iter().map(|p| p.host).collect();
    assert_eq!(hosts, ["hub", "node7"]);
    let echo = std::thread::spawn(move || {
        while let Ok(Some(Event::Message { from, payload })) = worker.recv(Wait::Forever) {
            worker.send(from, &payload).unwrap();
        }
    });
    for size in [0usize, 1, 1024, 1 << 20, 10 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 13) as u8).collect();
        assert!(ask(&spawner, 1, &payload) == payload, "size {size}");
    }
    drop(spawner);
    echo.join().unwrap();
}

#[test]
fn ranks_follow_join_order() {
    let (spawner, addr) = listen();
    let a = TcpTransport::connect(&addr.to_string(), &secret(), "a").unwrap();
    assert_eq!(joined(&spawner).rank, 1);
    let b = TcpTransport::connect(&addr.to_string(), &secret(), "b").unwrap();
    assert_eq!(joined(&spawner).rank, 2);
    assert_eq!((a.rank(), b.rank()), (1, 2));
    assert_eq!(spawner.size(), 3);
    drop(a);
    match next_event(&spawner) {
        Event::PeerLost { rank: 1, reason } => assert!(reason.contains("host `a`"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(spawner.size(), 2);
}

#[test]
fn wrong_secret_is_refused() {
    let (spawner, addr) = listen();
    let err = TcpTransport::connect(&addr.to_string(), &Secret::new(b"wrong".to_vec()), "bad")
        .unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("secret"), "{err}");
    // A peer that knows no secret at all: valid hello, a made-up proof.
    let (stream, ..) = raw_handshake_as(addr, b"not the secret", b"raw", b"raw");
    assert_closed(stream, crate::PATIENCE);
    assert_still_serves(&spawner, addr);
}

#[test]
fn garbage_bytes_are_refused() {
    let (spawner, addr) = listen();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n\r\n\r\n\r\n")
        .unwrap();
    assert_closed(stream, crate::PATIENCE);
    // A peer that connects and leaves at once.
    drop(TcpStream::connect(addr).unwrap());
    assert_still_serves(&spawner, addr);
}

#[test]
fn a_four_gib_frame_after_auth_drops_only_that_peer() {
    let (spawner, addr) = listen();
    let mut raw = raw_worker(addr, b"raw");
    let peer = joined(&spawner);
    assert_eq!((peer.host.as_str(), peer.rank), ("raw", raw.rank));
    // An authentic frame header announcing 4 GiB.
    let record = raw.to_spawner.seal(&frame::encode_header(4 << 30));
    raw.stream.write_all(&record).unwrap();
    let stream = raw.stream;
    match next_event(&spawner) {
        Event::PeerLost { rank, reason } => {
            assert_eq!(rank, peer.rank);
            assert!(reason.contains("4294967296"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_closed(stream, crate::PATIENCE);
    assert_still_serves(&spawner, addr);
}

#[test]
fn a_silent_peer_does_not_block_others() {
    let timeout = Duration::from_secs(2);
    let spawner =
        TcpTransport::listen(TcpOptions::new(secret()).handshake_timeout(timeout)).unwrap();
    let addr = spawner.local_addr().unwrap();
    let silent = TcpStream::connect(addr).unwrap();
    // One that sends its hello and then nothing.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(MAGIC).unwrap();
    slow.write_all(&[1; 32]).unwrap();
    let start = Instant::now();
    assert_still_serves(&spawner, addr);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the good worker waited for the silent one"
    );
    // Nothing sent at all: dropped after the short deadline of the first bytes.
    assert_closed(silent, timeout + crate::PATIENCE);
    let silent_for = start.elapsed();
    assert!(
        silent_for >= Duration::from_millis(900) && silent_for < timeout,
        "{silent_for:?}"
    );
    // A hello and then silence: dropped at the handshake timeout.
    assert_closed(slow, timeout + crate::PATIENCE);
    assert!(start.elapsed() >= timeout - Duration::from_millis(100));
}

#[test]
fn secret_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    fs::write(&path, "s3cret").unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = Secret::load(&path).unwrap_err();
        assert!(matches!(err, Error::SecretInsecure { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("chmod 600") && text.contains(&*path.to_string_lossy()),
            "{text}"
        );
        // load_or_create must not "fix" an existing file either.
        assert!(Secret::load_or_create(&path).is_err());
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        Secret::load(&path).unwrap(),
        Secret::new(b"s3cret".to_vec())
    );
}

#[test]
fn missing_secret_file_is_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("home").join(".parvm");
    let path = folder.join("secret");
    let first = Secret::load_or_create(&path).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&folder), 0o700);
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim_end().len(), 64);
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(Secret::load_or_create(&path).unwrap(), first);
    assert_eq!(Secret::load(&path).unwrap(), first);
    // A worker without the file gets an error naming it.
    let missing = dir.path().join("nope");
    let err = Secret::load(&missing).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn worker_sends_and_lists_peers_while_another_thread_receives() {
    let (spawner, addr) = listen();
    let worker =
        std::sync::Arc::new(TcpTransport::connect(&addr.to_string(), &secret(), "w").unwrap());
    joined(&spawner);
    let receiver = {
        let worker = worker.clone();
        std::thread::spawn(move || {
            let first = worker.recv(Wait::Forever);
            let second = worker.recv(Wait::Forever);
            (first, second)
        })
    };
    // The receiving thread holds the socket; these must not wait for it.
    assert_eq!(worker.peers().len(), 2);
    worker.send(0, b"up").unwrap();
    assert!(matches!(
        worker.send(2, b"x"),
        Err(Error::NotRoutable { from: 1, to: 2 })
    ));
    assert_eq!(
        next_event(&spawner),
        Event::Message {
            from: 1,
            payload: b"up".to_vec()
        }
    );
    drop(spawner);
    // The worker sees the spawner go: once as an event, then as errors.
    let (first, second) = receiver.join().unwrap();
    assert!(
        matches!(first, Ok(Some(Event::PeerLost { rank: 0, .. }))),
        "{first:?}"
    );
    assert!(
        matches!(second, Err(Error::PeerLost { rank: 0, .. })),
        "{second:?}"
    );
    assert_eq!(worker.peers().len(), 1);
    assert!(worker.send(0, b"late").is_err());
}

// --- a man in the middle --------------------------------------------------------------

/// What the man in the middle does to one record.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Attack {
    /// Flips one bit of its ciphertext.
    Flip,
    /// Sends it twice.
    Replay,
    /// Leaves it out.
    Drop,
    /// Swaps it with the record after it.
    Reorder,
}

/// Which way the attacked records travel.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    ToSpawner,
    ToWorker,
}

/// A proxy on loopback between one worker and the spawner: it passes the handshake on,
/// then parses the sealed records and attacks record `index` going `way` (the spawner's
/// welcome is record 0 towards the worker). Everything that passes is kept in `wire`.
struct Mitm {
    addr: SocketAddr,
    wire: Arc<Mutex<Vec<u8>>>,
}

fn mitm(spawner: SocketAddr, attack: Option<(Way, Attack, usize)>) -> Mitm {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let wire = Arc::new(Mutex::new(Vec::new()));
    let captured = wire.clone();
    std::thread::spawn(move || {
        let (worker, _) = listener.accept().unwrap();
        let upstream = TcpStream::connect(spawner).unwrap();
        let pumps = [
            (
                worker.try_clone().unwrap(),
                upstream.try_clone().unwrap(),
                Way::ToSpawner,
            ),
            (upstream, worker, Way::ToWorker),
        ];
        for (from, to, way) in pumps {
            let attack = attack.filter(|(w, ..)| *w == way).map(|(_, a, i)| (a, i));
            let wire = captured.clone();
            std::thread::spawn(move || pump(from, to, way, attack, &wire));
        }
    });
    Mitm { addr, wire }
}

/// Reads exactly `n` bytes, `None` at the end of the stream.
fn take(from: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    from.read_exact(&mut buf).ok().map(|()| buf)
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    way: Way,
    attack: Option<(Attack, usize)>,
    wire: &Mutex<Vec<u8>>,
) {
    let forward = |to: &mut TcpStream, bytes: &[u8]| {
        wire.lock().unwrap().extend_from_slice(bytes);
        to.write_all(bytes).is_ok()
    };
    // The handshake passes unchanged: the hello, then the proof; or the answer.
    let handshake = match way {
        Way::ToSpawner => take(&mut from, 40)
            .filter(|hello| forward(&mut to, hello))
            .and_then(|_| {
                let len = take(&mut from, 1)?;
                let rest = take(&mut from, usize::from(len[0]) + 32)?;
                Some([len, rest].concat())
            }),
        Way::ToWorker => take(&mut from, 72),
    };
    if handshake.is_some_and(|bytes| forward(&mut to, &bytes)) {
        let mut held: Option<Vec<u8>> = None;
        let mut index = 0;
        while let Some(header) = take(&mut from, 4) {
            let n = u32::from_le_bytes(header[..].try_into().unwrap()) as usize;
            let Some(body) = take(&mut from, n + 16) else {
                break;
            };
            let mut record = [header, body].concat();
            let ok = match attack {
                Some((Attack::Flip, i)) if i == index => {
                    record[4 + n / 2] ^= 0x01;
                    forward(&mut to, &record)
                }
                Some((Attack::Replay, i)) if i == index => {
                    forward(&mut to, &record) && forward(&mut to, &record)
                }
                Some((Attack::Drop, i)) if i == index => true,
                Some((Attack::Reorder, i)) if i == index => {
                    held = Some(record);
                    true
                }
                Some((Attack::Reorder, i)) if i + 1 == index => {
                    let first = held.take().unwrap_or_default();
                    forward(&mut to, &record) && forward(&mut to, &first)
                }
                _ => forward(&mut to, &record),
            };
            index += 1;
            if !ok {
                break;
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// Waits for the spawner to report `rank` lost; returns the reason and every message
/// that came before.
fn lost(spawner: &TcpTransport, rank: u32) -> (String, Vec<Vec<u8>>) {
    let mut messages = Vec::new();
    loop {
        match next_event(spawner) {
            Event::Message { from, payload } if from == rank => messages.push(payload),
            Event::PeerLost { rank: r, reason } if r == rank => return (reason, messages),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn records_changed_on_the_way_to_the_spawner_drop_the_worker() {
    for attack in [Attack::Flip, Attack::Replay, Attack::Drop, Attack::Reorder] {
        let (spawner, addr) = listen();
        let proxy = mitm(addr, Some((Way::ToSpawner, attack, 1)));
        let worker = TcpTransport::connect(&proxy.addr.to_string(), &secret(), "w").unwrap();
        let peer = joined(&spawner);
        for text in ["zero", "one", "two", "three"] {
            // The connection may already be gone for the last sends.
            let _ = worker.send(0, text.as_bytes());
        }
        let (reason, messages) = lost(&spawner, peer.rank);
        // A replayed record's first copy is authentic.
        let expected: &[&[u8]] = match attack {
            Attack::Replay => &[b"zero", b"one"],
            _ => &[b"zero"],
        };
        assert_eq!(messages, expected, "{attack:?}");
        assert!(
            reason.contains("worker rank 1 on host `w`")
                && reason.contains("127.0.0.1:")
                && reason.contains("failed authentication"),
            "{attack:?}: {reason}"
        );
        assert!(spawner.send(peer.rank, b"x").is_err(), "{attack:?}");
        assert_eq!(spawner.size(), 1, "{attack:?}");
        // The worker sees the spawner go.
        assert!(
            matches!(
                worker.recv(Wait::For(crate::PATIENCE)),
                Ok(Some(Event::PeerLost { rank: 0, .. }))
            ),
            "{attack:?}"
        );
    }
}

#[test]
fn records_changed_on_the_way_to_the_worker_make_it_leave() {
    for attack in [Attack::Flip, Attack::Replay, Attack::Drop, Attack::Reorder] {
        let (spawner, addr) = listen();
        // Record 0 is the welcome, 1 the first message.
        let proxy = mitm(addr, Some((Way::ToWorker, attack, 2)));
        let worker = TcpTransport::connect(&proxy.addr.to_string(), &secret(), "w").unwrap();
        let peer = joined(&spawner);
        for text in ["one", "two", "three", "four"] {
            spawner.send(peer.rank, text.as_bytes()).unwrap();
        }
        let mut messages = Vec::new();
        let reason = loop {
            match worker.recv(Wait::For(crate::PATIENCE)) {
                Ok(Some(Event::Message { from: 0, payload })) => messages.push(payload),
                Ok(Some(Event::PeerLost { rank: 0, reason })) => break reason,
                other => panic!("{attack:?}: {other:?}"),
            }
        };
        let expected: &[&[u8]] = match attack {
            Attack::Replay => &[b"one", b"two"],
            _ => &[b"one"],
        };
        assert_eq!(messages, expected, "{attack:?}");
        assert!(
            reason.contains("spawner on host `hub`")
                && reason.contains(&proxy.addr.to_string())
                && reason.contains("failed authentication"),
            "{attack:?}: {reason}"
        );
        assert!(worker.send(0, b"late").is_err());
        // The worker closed its end, so the spawner reports it lost.
        let (reason, messages) = lost(&spawner, peer.rank);
        assert!(messages.is_empty(), "{attack:?}");
        assert!(reason.contains("host `w`"), "{attack:?}: {reason}");
    }
}

#[test]
fn the_wire_does_not_carry_the_plaintext() {
    // A host name long enough that sealed bytes never match it by chance: a 3-byte
    // needle such as `hub` turns up in about 2% of runs' 400 kB of ciphertext.
    const HOST: &str = "spawner-host-of-the-plaintext-test";
    let spawner = TcpTransport::listen(TcpOptions::new(secret()).host(HOST)).unwrap();
    let addr = spawner.local_addr().unwrap();
    let proxy = mitm(addr, None);
    let worker = TcpTransport::connect(&proxy.addr.to_string(), &secret(), "w").unwrap();
    let peer = joined(&spawner);
    let known = b"ngspice -b /home/me/secret-corner.cir # the recipe ".repeat(4000);
    let echo = std::thread::spawn(move || {
        while let Ok(Some(Event::Message { from, payload })) = worker.recv(Wait::Forever) {
            worker.send(from, &payload).unwrap();
        }
    });
    assert!(ask(&spawner, peer.rank, &known) == known);
    assert!(ask(&spawner, peer.rank, b"spawn sh -c 'rm -rf ~'") == b"spawn sh -c 'rm -rf ~'");
    drop(spawner);
    echo.join().unwrap();
    let wire = proxy.wire.lock().unwrap().clone();
    // Both directions passed: twice the big message and more.
    assert!(wire.len() > 2 * known.len(), "{} bytes", wire.len());
    for needle in [
        &b"secret-corner"[..],
        b"rm -rf ~",
        b"the recipe",
        HOST.as_bytes(),
    ] {
        assert!(
            !wire.windows(needle.len()).any(|w| w == needle),
            "`{}` is on the wire",
            String::from_utf8_lossy(needle)
        );
    }
    // No frame header travels in clear either.
    assert!(!wire.windows(4).any(|w| w == b"PV\x01\x00"));
}

#[test]
fn peers_of_another_version_are_told_which() {
    let (spawner, addr) = listen();
    // An older worker: the spawner answers with its own magic and closes.
    let mut old = TcpStream::connect(addr).unwrap();
    old.write_all(b"PVTCP\x00\x02\x00").unwrap();
    old.write_all(&[0; 32]).unwrap();
    let mut answer = Vec::new();
    old.set_read_timeout(Some(crate::PATIENCE)).unwrap();
    let _ = old.read_to_end(&mut answer);
    assert_eq!(answer, MAGIC);
    // An older spawner: the worker names both versions.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = fake.accept().unwrap();
        let mut hello = [0u8; 40];
        conn.read_exact(&mut hello).unwrap();
        conn.write_all(b"PVTCP\x00\x02\x00").unwrap();
        conn.write_all(&[0; 64]).unwrap();
    });
    let err = TcpTransport::connect(&fake_addr.to_string(), &secret(), "w").unwrap_err();
    server.join().unwrap();
    let text = err.to_string();
    assert!(
        text.contains(&fake_addr.to_string())
            && text.contains("version 2")
            && text.contains("version 3"),
        "{text}"
    );
    assert_still_serves(&spawner, addr);
}

// --- floods, descriptors, retries -----------------------------------------------------

/// Raises this process's soft limit on open descriptors to `want` (or the hard limit).
fn raise_fd_limit(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).unwrap();
    }
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // The port is chosen at `connect`, as without `bind`, so it never collides with one
    // of the spawner's recently closed connections (which would stall `connect` for 1 s).
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0)),
    )?;
    let SocketAddr::V4(to) = to else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// Whether the other end closed `stream` (without blocking).
fn closed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    stream.set_nonblocking(true).unwrap();
    let gone = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() != std::io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).unwrap();
    gone
}

#[test]
fn a_worker_joins_while_500_idle_connections_are_held() {
    const HELD: usize = 500;
    raise_fd_limit(4 * HELD as u64);
    let (spawner, addr) = listen();
    let stop = Arc::new(AtomicBool::new(false));
    let (opened, refreshed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flood = {
        let (stop, opened, refreshed) = (stop.clone(), opened.clone(), refreshed.clone());
        std::thread::spawn(move || {
            // A fifth from the worker's own address, the rest from 20 others.
            let source = |i: usize| {
                if i.is_multiple_of(5) {
                    std::net::Ipv4Addr::new(127, 0, 0, 1)
                } else {
                    std::net::Ipv4Addr::new(127, 0, 1, (i % 20) as u8 + 1)
                }
            };
            let mut held: Vec<Option<TcpStream>> = (0..HELD).map(|_| None).collect();
            let deadline = Instant::now() + Duration::from_secs(30);
            // Bounded: at most 50,000 connections and 30 s.
            while !stop.load(Ordering::SeqCst)
                && Instant::now() < deadline
                && opened.load(Ordering::SeqCst) < 50_000
            {
                for (i, slot) in held.iter_mut().enumerate() {
                    if slot.as_ref().is_some_and(closed) {
                        *slot = None;
                        refreshed.fetch_add(1, Ordering::SeqCst);
                    }
                    if slot.is_none() {
                        *slot = connect_from(source(i), addr).ok();
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // The flood is on: 500 were held, and the spawner closed and the flood replaced at
    // least as many again.
    wait_until("the flood holds 500 connections and replaced 500", || {
        opened.load(Ordering::SeqCst) >= 2 * HELD && refreshed.load(Ordering::SeqCst) >= HELD
    });
    let start = Instant::now();
    let worker = TcpTransport::connect_with(
        ConnectOptions::new(addr.to_string(), secret())
            .host("real")
            .wait(Duration::from_secs(2)),
    );
    let took = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    let worker = worker.unwrap_or_else(|err| panic!("the worker was locked out: {err}"));
    assert!(
        took < Duration::from_secs(2),
        "the worker took {took:?} to join"
    );
    let peer = joined(&spawner);
    assert_eq!((peer.host.as_str(), peer.rank), ("real", worker.rank()));
    // The spawner did push idle connections out (else the test proved nothing).
    assert!(refreshed.load(Ordering::SeqCst) > 0);
    spawner.send(worker.rank(), b"in").unwrap();
    assert!(matches!(
        worker.recv(Wait::For(crate::PATIENCE)),
        Ok(Some(Event::Message { .. }))
    ));
}

/// Runs the test `name` alone in a child process (when this is not that child), so that
/// counting this process's descriptors is not disturbed by other tests' threads.
fn alone(name: &str, body: impl FnOnce()) {
    const CHILD: &str = "PARVM_TEST_ALONE";
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} failed alone ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn open_descriptors() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn descriptors_of_workers_that_left_are_released() {
    alone("tcp::descriptors_of_workers_that_left_are_released", || {
        let (spawner, addr) = listen();
        let run = |i: usize| {
            let worker =
                Arc::new(TcpTransport::connect(&addr.to_string(), &secret(), "w").unwrap());
            let peer = joined(&spawner);
            spawner
                .send(peer.rank, format!("cycle {i}").as_bytes())
                .unwrap();
            assert!(matches!(
                worker.recv(Wait::For(crate::PATIENCE)),
                Ok(Some(Event::Message { .. }))
            ));
            worker.send(0, b"bye").unwrap();
            drop(worker);
            let (_, messages) = lost(&spawner, peer.rank);
            assert_eq!(messages, [b"bye".to_vec()]);
        };
        run(0);
        let before = open_descriptors();
        for i in 1..=200 {
            run(i);
        }
        let after = open_descriptors();
        assert_eq!(after, before, "200 workers came and went");
        assert_eq!(spawner.size(), 1);
    });
}

#[test]
fn a_worker_tries_again_until_the_handshake_succeeds() {
    let (spawner, addr) = listen();
    // A doorman that closes the first three connections at once, then passes the rest on.
    let door = TcpListener::bind("127.0.0.1:0").unwrap();
    let door_addr = door.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for conn in door.incoming() {
                let Ok(conn) = conn else { return };
                if seen.fetch_add(1, Ordering::SeqCst) < 3 {
                    drop(conn);
                    continue;
                }
                let upstream = TcpStream::connect(addr).unwrap();
                for (mut from, mut to) in [
                    (conn.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, conn),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                return;
            }
        });
    }
    // Without waiting: the first refusal is the answer.
    let err = TcpTransport::connect(&door_addr.to_string(), &secret(), "w").unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    assert!(err.to_string().contains(&door_addr.to_string()), "{err}");
    let worker = TcpTransport::connect_with(
        ConnectOptions::new(door_addr.to_string(), secret())
            .host("patient")
            .wait(crate::PATIENCE),
    )
    .unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 4);
    assert_eq!(joined(&spawner).host, "patient");
    drop(worker);
    // A spawner that is not there yet (a stand-in refuses the first try): the worker
    // waits for it to listen. The port is below the ephemeral range, so nothing else takes
    // it between the stand-in and the spawner (but a child another test forks meanwhile may
    // hold the stand-in's descriptor for a moment: `rebind`).
    let stand_in = parvm_test_support::listener_below_ephemeral_ports();
    let port = stand_in.local_addr().unwrap();
    let late = std::thread::spawn(move || {
        TcpTransport::connect_with(
            ConnectOptions::new(port.to_string(), secret())
                .host("early")
                .wait(crate::PATIENCE),
        )
    });
    drop(stand_in.accept().unwrap());
    drop(stand_in);
    let spawner = parvm_test_support::rebind(
        || TcpTransport::listen(TcpOptions::new(secret()).addr(port)),
        |e| {
            matches!(e, parvm_transport::Error::Listen { source, .. }
                if source.kind() == std::io::ErrorKind::AddrInUse)
        },
    )
    .unwrap();
    let worker = late.join().unwrap().unwrap();
    assert_eq!(joined(&spawner).host, "early");
    assert_eq!(worker.rank(), 1);
}

#[test]
fn the_worker_side_frame_limit_is_enforced() {
    let (spawner, addr) = listen();
    let worker = TcpTransport::connect_with(
        ConnectOptions::new(addr.to_string(), secret())
            .host("small")
            .max_frame(8192),
    )
    .unwrap();
    let peer = joined(&spawner);
    spawner.send(peer.rank, &[1; 8192]).unwrap();
    spawner.send(peer.rank, &[2; 8193]).unwrap();
    assert!(matches!(
        worker.recv(Wait::For(crate::PATIENCE)),
        Ok(Some(Event::Message { payload, .. })) if payload.len() == 8192
    ));
    match worker.recv(Wait::For(crate::PATIENCE)) {
        Ok(Some(Event::PeerLost { rank: 0, reason })) => {
            assert!(
                reason.contains("8193") && reason.contains("8192"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    lost(&spawner, peer.rank);
}

#[test]
fn capabilities_are_those_of_connecting_workers() {
    let (spawner, addr) = listen();
    let worker = TcpTransport::connect(&addr.to_string(), &secret(), "node7").unwrap();
    // TCP workers connect at any time from anywhere, and a dead peer's connection ends.
    for end in [&spawner as &dyn Transport, &worker] {
        assert!(end.workers_can_join(), "rank {}", end.rank());
        assert!(!end.workers_are_children(), "rank {}", end.rank());
        assert!(end.reports_dead_peers(), "rank {}", end.rank());
    }
}

/// A worker the spawner gives up (one that stopped answering) is lost with the spawner's
/// reason, once, and finds its spawner gone; the others go on.
#[test]
fn a_worker_given_up_is_lost_with_the_reason_and_sees_its_spawner_gone() {
    let (spawner, addr) = listen();
    assert_eq!(spawner.peer_timeout(), Some(DEFAULT_PEER_TIMEOUT));
    let silent = TcpTransport::connect(&addr.to_string(), &secret(), "stuck").unwrap();
    assert_eq!(joined(&spawner).rank, 1);
    let other = TcpTransport::connect(&addr.to_string(), &secret(), "fine").unwrap();
    assert_eq!(joined(&spawner).rank, 2);
    assert!(spawner.give_up(1, "it did not confirm a stop"));
    assert!(!spawner.give_up(1, "twice"), "a peer is given up once");
    assert!(!spawner.give_up(9, "unknown"));
    let (reason, _) = lost(&spawner, 1);
    assert!(
        reason.contains("`stuck`") && reason.ends_with(": it did not confirm a stop"),
        "{reason}"
    );
    assert!(!spawner.give_up(1, "after its loss"));
    assert!(matches!(
        silent.recv(Wait::For(Duration::from_secs(5))),
        Ok(Some(Event::PeerLost { rank: 0, .. }))
    ));
    assert!(!silent.give_up(0, "a worker gives up nobody"));
    other.send(0, b"still here").unwrap();
    assert_eq!(
        next_event(&spawner),
        Event::Message {
            from: 2,
            payload: b"still here".to_vec()
        }
    );
    let never = TcpTransport::listen(
        TcpOptions::new(secret())
            .host("hub")
            .peer_timeout(Duration::ZERO),
    )
    .unwrap();
    assert_eq!(never.peer_timeout(), None, "zero: wait for ever");
}

//! The TCP backend: authentication, bad peers, and the secret file.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use parvm_transport::tcp::{Secret, TcpOptions, TcpTransport};
use parvm_transport::{Error, Event, Peer, Transport, Wait, frame};
use sha2::Sha256;

use crate::{ECHO, KillOnDrop, ask, ask_text, next_event};

const MAGIC: &[u8; 8] = b"PVTCP\x00\x02\x00";

fn secret() -> Secret {
    Secret::new(b"correct horse battery staple".to_vec())
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

/// Runs the worker's half of the handshake by hand with `key`; returns the stream.
fn raw_handshake(addr: SocketAddr, key: &[u8]) -> TcpStream {
    raw_handshake_as(addr, key, b"raw", b"raw")
}

/// As [`raw_handshake`], reporting host `sent` with a proof made over host `proven`.
fn raw_handshake_as(addr: SocketAddr, key: &[u8], sent: &[u8], proven: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let nonce = [7u8; 32];
    stream.write_all(MAGIC).unwrap();
    stream.write_all(&nonce).unwrap();
    let mut answer = [0u8; 72];
    stream.read_exact(&mut answer).unwrap();
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
    stream
}

#[test]
fn a_host_name_changed_on_the_way_is_refused() {
    let (spawner, addr) = listen();
    let key = b"correct horse battery staple";
    let honest = raw_handshake_as(addr, key, b"node1", b"node1");
    assert_eq!(joined(&spawner).host, "node1");
    let forged = raw_handshake_as(addr, key, b"elsewhere", b"node1");
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
    let stream = raw_handshake(addr, b"not the secret");
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
    let mut stream = raw_handshake(addr, b"correct horse battery staple");
    let peer = joined(&spawner);
    assert_eq!(peer.host, "raw");
    let mut welcome = [0u8; 8];
    stream.read_exact(&mut welcome).unwrap();
    stream.write_all(&frame::encode_header(4 << 30)).unwrap();
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
    let start = Instant::now();
    assert_still_serves(&spawner, addr);
    assert!(
        start.elapsed() < timeout,
        "the good worker waited for the silent one"
    );
    assert_closed(silent, timeout + crate::PATIENCE);
    assert!(start.elapsed() >= timeout - Duration::from_millis(100));
}

#[test]
fn worker_from_env_joins_through_parvm_connect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    let secret = Secret::load_or_create(&path).unwrap();
    let spawner = TcpTransport::listen(TcpOptions::new(secret)).unwrap();
    let addr = spawner.local_addr().unwrap();
    let mut child = Command::new(ECHO)
        .env("PARVM_CONNECT", addr.to_string())
        .env("PARVM_SECRET_FILE", &path)
        .env("PARVM_HOSTNAME", "envhost")
        .env_remove("PARVM_LOCAL_SOCKET")
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(vec![child.id()]);
    let peer = joined(&spawner);
    assert_eq!(peer.host, "envhost");
    assert_eq!(ask_text(&spawner, peer.rank, "!host"), "envhost");
    drop(spawner);
    // The worker leaves when the spawner is gone.
    assert!(child.wait().unwrap().success());
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

//! The spawner's side of TCP: the listening socket, the accept thread, and the bounds on
//! connections still in their handshake (per source and in all), so a flood of idle or
//! foreign connections cannot lock workers out.
//!
//! Owns the table of pending handshakes and the flood warnings. Must not know the
//! handshake's bytes (`handshake`) nor how frames move once a worker joined (`star`).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::handshake::{Admission, handshake, magic};
use super::options::{
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_PEER_TIMEOUT, MAX_PENDING, MAX_PENDING_PER_SOURCE,
    TcpOptions,
};
use crate::star::{self, Hub, Stream, lock};
use crate::{Error, Event, Peer, frame};

/// How often at most the spawner warns that it drops pending handshakes to make room.
const FLOOD_WARNING_EVERY: Duration = Duration::from_secs(10);

pub(super) struct Listening {
    pub(super) hub: Arc<Hub>,
    pub(super) addr: SocketAddr,
    /// How long a joined worker may not answer ([`super::alive`]); zero: for ever.
    pub(super) peer_timeout: Duration,
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
    /// What every handshake needs.
    admission: Admission,
    /// How long a joined worker may not answer ([`super::alive`]).
    peer_timeout: Duration,
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

/// Binds the listening socket and starts the accept thread; see [`TcpTransport::listen`](super::TcpTransport::listen).
pub(super) fn listen(options: TcpOptions) -> Result<Listening, Error> {
    let timeout = options
        .handshake_timeout
        .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
    let max_frame = options.max_frame.unwrap_or(frame::DEFAULT_MAX_FRAME);
    let listen_err = |source| Error::Listen {
        addr: options.addr.to_string(),
        source,
    };
    let listener = bind_listener(options.addr).map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let listener = Arc::new(listener);
    let host = options.host.clone().unwrap_or_else(crate::system_host);
    let hub = Hub::new(
        "tcp",
        Peer { rank: 0, host },
        max_frame,
        options.spin_window,
    );
    let shared = Arc::new(Shared {
        admission: Admission {
            hub: hub.clone(),
            secret: options.secret,
            timeout,
            magic: magic(options.plaintext),
            plaintext: options.plaintext,
            next_rank: AtomicU32::new(1),
        },
        peer_timeout: options.peer_timeout.unwrap_or(DEFAULT_PEER_TIMEOUT),
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
    Ok(Listening {
        hub,
        addr,
        peer_timeout: shared.peer_timeout,
        listener,
        shared,
        acceptor: Some(acceptor),
    })
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
            .position(|p| candidate(p) && !p.spoke.load(Ordering::SeqCst) && !bytes_wait(p))
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

/// Whether bytes from the peer wait in the socket: a worker sends its hello at once, and
/// one whose handshake thread has not read it yet (a spawner short of CPU under a flood)
/// has spoken all the same. Looked at only for the oldest silent candidates, so a flood of
/// silent connections costs about one look per connection accepted.
fn bytes_wait(pending: &Pending) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut byte = [0u8; 1];
    matches!(
        recv(
            pending.control.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ),
        Ok(n) if n > 0
    )
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    loop {
        let (stream, addr) = match listener.accept() {
            Ok(conn) => conn,
            Err(_) if shared.admission.hub.is_closing() => return,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                // Out of descriptors and the like: report, wait a little, try again.
                tracing::warn!("tcp transport cannot accept a connection: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.admission.hub.is_closing() {
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
            Ok(handle) => shared.admission.hub.keep_thread(handle),
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
                self.admission.hub.me().host,
            );
            *pushed = (0, Some(Instant::now()));
        }
    }
}

/// Handshakes one connection, then reads its frames until it ends.
fn serve(stream: TcpStream, addr: SocketAddr, id: u64, spoke: &AtomicBool, shared: &Shared) {
    let outcome = handshake(&stream, &shared.admission, spoke);
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
    if shared.admission.hub.is_closing() {
        return;
    }
    if let Err(e) = super::alive::give_up_after(&stream, shared.peer_timeout) {
        // It still works; only a host that vanishes would be waited for.
        tracing::warn!(
            "tcp transport: cannot set the peer timeout on the connection from {addr}: {e}; should that host go down, its worker is never seen lost"
        );
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
        .admission
        .hub
        .add_sealed(peer.clone(), Stream::Tcp(stream), sealing, explain)
    {
        Ok(run) => {
            tracing::info!(
                "worker rank {rank} on host `{}` joined from {addr}",
                peer.host
            );
            shared.admission.hub.post(Event::PeerJoined(peer));
            run();
        }
        Err(err) => tracing::warn!("dropped tcp connection from {addr}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_handshakes_make_room_idle_ones_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut table = VecDeque::new();
        let mut conns = Vec::new();
        // `control` is the spawner's side, as in `accept_loop`; the peer's side is kept.
        let mut add = |table: &mut VecDeque<Pending>, id: u64, source: [u8; 4], spoke: bool| {
            conns.push(TcpStream::connect(addr).unwrap());
            table.push_back(Pending {
                id,
                source: IpAddr::from(source),
                spoke: Arc::new(AtomicBool::new(spoke)),
                control: listener.accept().unwrap().0,
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
        // The oldest connection, silent as far as its handshake thread knows, but its hello
        // waits unread: it has spoken, and a silent one goes instead.
        let hello = TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut &hello, b"hello").unwrap();
        table.push_front(Pending {
            id: 999,
            source: IpAddr::from([10, 0, 9, 8]),
            spoke: Arc::new(AtomicBool::new(false)),
            control: listener.accept().unwrap().0,
        });
        assert_eq!(make_room(&mut table, IpAddr::from([10, 0, 9, 9])), 1);
        assert_eq!(
            table.front().map(|p| p.id),
            Some(999),
            "its hello waits: it stays"
        );
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
}

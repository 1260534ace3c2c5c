//! The MPI backend (cargo feature `mpi`): rsmpi over Open MPI or MPICH, started by `mpirun`.
//!
//! ```no_run
//! use parvm_transport::{Transport, Wait, mpi::MpiTransport};
//!
//! // Started as `mpirun -n 3 ./program`: rank 0 is the spawner, ranks 1 and 2 are workers.
//! let transport = MpiTransport::init()?;
//! if transport.rank() == 0 {
//!     transport.send(1, b"hello")?;
//! } else if let Some(event) = transport.recv(Wait::Forever)? {
//!     println!("rank {} got {event:?}", transport.rank());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Ranks and hosts
//!
//! The ranks of `MPI_COMM_WORLD` are the ranks of the virtual machine: rank 0 is the
//! spawner, every other rank a worker. At start every rank contributes its host name
//! (`PARVM_HOSTNAME` when set, else `MPI_Get_processor_name`) to an all-gather, so
//! [`Transport::peers`] knows the host of every rank without further traffic; the slots of
//! a host are the ranks placed there. The backend talks on its own duplicate of
//! `MPI_COMM_WORLD`, so a program that also uses MPI directly cannot steal its messages.
//!
//! # Threads
//!
//! [`MpiTransport::init`] asks for `MPI_THREAD_MULTIPLE` and fails with
//! [`Error::MpiThreadLevel`] if the library does not provide it, because the trait allows
//! `send` from one thread while another waits in `recv`. One thread at a time takes
//! messages out of MPI, under a lock, which keeps the messages of each sender in order.
//!
//! # Messages
//!
//! Payloads travel as raw bytes on two private duplicates of `MPI_COMM_WORLD`, so a
//! program that also uses MPI directly cannot steal them. A receive for any sender is
//! always posted on the first (a persistent request on a buffer of [`INLINE`] bytes), so
//! a small message is matched and copied into place the moment it arrives, as with a raw
//! `MPI_Recv`: the backend adds about 0.01 µs to MPI's 0.35 µs one-way latency here. The
//! first byte of a small payload travels in the MPI tag rather than the message, because
//! Open MPI's shared memory charges by the bytes on the wire in steps (0.36 µs one way at
//! 0 B, 0.46 µs at 1–8 B, 0.57 µs at 16 B here): a one-byte frame kind costs nothing.
//!
//! A payload larger than [`INLINE`] goes as two messages: a head on the first
//! communicator (the small first part given to [`Transport::send_parts`], or nothing),
//! then the tail, sent from where it lies, on the second, where the posted receive
//! cannot match it. The receiver takes the tail with a matched probe (`MPI_Improbe`) and
//! receives it straight behind the head into one vector, so a 10 MiB message is copied
//! once, by MPI. A lock keeps two sending threads from interleaving their heads and
//! tails. Messages a sender sends after a head wait until its tail is in, messages of
//! other senders do not.
//!
//! A send is an `MPI_Send` when the payload is small enough to go eagerly, else an
//! `MPI_Isend` followed by `MPI_Test`. While a large send waits for its receiver, the
//! sender also takes incoming messages into an inbox that `recv` reads first. Two ranks
//! that send large messages to each other at the same time therefore cannot deadlock,
//! as they can with a plain `MPI_Send`.
//!
//! # Waiting costs no core
//!
//! Open MPI's blocking calls spin at 100% of a core (so does PyOPUS's receive with a
//! timeout). `recv` instead tests its posted receive in a tight loop for [`SPIN`] (50 µs), then sleeps
//! between tests, doubling the sleep from 20 µs up to [`MAX_SLEEP`] (1 ms), and tests
//! twice after each sleep (the first call after a sleep often only notices the message). The
//! cost is latency after idleness: a message sent within the spin is seen at once, one
//! sent after the receiver has idled for a while waits up to 1 ms plus the timer slack.
//! Measured on 2 cores with Open MPI 4.1 (bench `mpi_pingpong`): after 20 µs of idleness
//! a small message arrives in about 60 µs on average, after 5 ms in about 0.8 ms (worst
//! 1.1 ms); an idle `recv` uses under 3% of a core. Back-to-back traffic never sleeps, so
//! latency and throughput under load are MPI's own.
//!
//! # When a rank dies
//!
//! MPI does not survive the death of a rank: when a process exits without
//! `MPI_Finalize` or is killed (a segmentation fault in a simulator linked into the
//! worker, the out-of-memory killer, `kill -9`), `mpirun` ends every other rank of the
//! job, the spawner included, and prints which rank died and on which node, e.g.
//! `mpirun noticed that process rank 2 with PID 4242 on node b exited on signal 9
//! (Killed)`. A panic inside a task is not such a death: the VM catches it and reports a
//! failed task, as on every backend.
//!
//! The backend sets `MPI_ERRORS_RETURN` on its communicators, so where the MPI library
//! reports a failure instead of aborting, a failed send is an [`Error::MpiSend`] and a
//! failed receive an [`Event::PeerLost`], both naming the rank and its host. Task folders
//! of the killed workers stay behind on their hosts; their owner records name dead
//! processes, so the next run's sweep finds them stale and removes them.
//!
//! # Leaving
//!
//! MPI has no notice of a rank that finalises and exits. A worker made with
//! [`MpiTransport::leave_on_drop`] tells rank 0 when its transport is dropped (one empty
//! message with its own tag), and rank 0 turns that into an [`Event::PeerLost`], as the
//! other backends report a worker whose connection closed. The VM uses this so the
//! spawner knows when its workers have left.
//!
//! # Finalising
//!
//! Dropping the transport cancels its posted receive, frees its communicators and finalises MPI (`MPI_Finalize`).
//! MPI can be initialised only once per process, so create one transport and keep it for
//! the whole run; every rank must drop it (finalise) before it exits.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use self::backoff::Backoff;
pub use self::backoff::MAX_SLEEP;
pub use self::receive::INLINE;
use self::receive::{Inbound, Receiver};
use crate::local::HOSTNAME_VAR;
use crate::{Error, Event, Peer, Rank, Transport, Wait};

/// How long `recv` (and a send that waits for its receiver) probes in a tight loop before
/// it starts to sleep between probes.
pub const SPIN: Duration = Duration::from_micros(50);

/// Payloads up to this size are sent with a plain `MPI_Send`: every MPI library sends
/// them eagerly (Open MPI's shared-memory limit is 4 KiB, its TCP one 64 KiB, MPICH's
/// 64 KiB), so the call returns without waiting for the receiver and cannot deadlock.
const EAGER: usize = 1024;

/// The environment variable that names the backend.
const TRANSPORT_VAR: &str = "PARVM_TRANSPORT";

// Launcher detection needs no MPI library and lives in `launcher`; re-exported here, where
// it was first, so existing paths keep working.
pub use crate::launcher::{LAUNCHER_VARS, launch_rank, launched_by_mpirun};

/// Whether the environment selects the MPI backend: `PARVM_TRANSPORT=mpi`, or
/// `PARVM_TRANSPORT` unset (or empty) and the process started by `mpirun`.
pub fn selected_by_env() -> bool {
    match std::env::var(TRANSPORT_VAR) {
        // Read as env-config reads it: blanks trimmed, any case.
        Ok(name) if !name.trim().is_empty() => name.trim().eq_ignore_ascii_case("mpi"),
        _ => launched_by_mpirun(),
    }
}

/// Joins the virtual machine as a worker when the MPI backend is selected
/// ([`selected_by_env`]) and the launcher made this process a rank other than 0;
/// `Ok(None)` otherwise (rank 0 is the spawner and calls [`MpiTransport::init`] itself).
///
/// # Errors
/// As [`MpiTransport::init`].
pub fn worker_from_env() -> Result<Option<MpiTransport>, Error> {
    if !selected_by_env() {
        return Ok(None);
    }
    match launch_rank() {
        Some(rank) if rank != 0 => MpiTransport::init().map(Some),
        _ => Ok(None),
    }
}

/// The MPI transport: one per process, created with [`MpiTransport::init`].
pub struct MpiTransport {
    // Field order matters: the posted receive is cancelled before the communicators are
    // freed, and they are freed before the universe finalises MPI.
    rx: Mutex<Receiver>,
    /// Whole payloads, heads and leave notices; a receive is always posted on it.
    comm: raw::Comm,
    /// The tails of split payloads, which the posted receive must never match.
    bulk: raw::Comm,
    /// Held across the two messages of a split send, so two threads cannot interleave
    /// their heads and tails.
    split: Mutex<()>,
    arrived: Condvar,
    rank: Rank,
    peers: Vec<Peer>,
    leave_on_drop: bool,
    _universe: Universe,
}

impl std::fmt::Debug for MpiTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiTransport")
            .field("rank", &self.rank)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl MpiTransport {
    /// Initialises MPI with `MPI_THREAD_MULTIPLE`, sets `MPI_ERRORS_RETURN`, and gathers
    /// the host of every rank.
    ///
    /// Every rank of the job must call it (it is collective). Dropping the transport
    /// finalises MPI.
    ///
    /// # Errors
    /// `PARVM_HOSTNAME` is set but empty or not UTF-8 ([`Error::MpiHostname`], reported
    /// before MPI is touched, so no other rank waits for this one); MPI was already
    /// initialised in this process ([`Error::MpiAlreadyInitialized`]); the library lacks
    /// `MPI_THREAD_MULTIPLE` ([`Error::MpiThreadLevel`]); an MPI call failed ([`Error::Mpi`]).
    pub fn init() -> Result<Self, Error> {
        let override_host = hostname_override()?;
        let (universe, provided) = mpi::initialize_with_threading(Threading::Multiple)
            .ok_or(Error::MpiAlreadyInitialized)?;
        if provided != Threading::Multiple {
            return Err(Error::MpiThreadLevel {
                provided: format!("{provided:?}"),
            });
        }
        let world = universe.world();
        let rank = Rank::try_from(world.rank()).map_err(|_| Error::Mpi {
            call: "MPI_Comm_rank",
            rank: 0,
            reason: format!("negative rank {}", world.rank()),
        })?;
        let comm = raw::Comm::dup_world().map_err(|e| e.into_error(rank))?;
        let bulk = raw::Comm::dup_world().map_err(|e| e.into_error(rank))?;
        let posted = raw::PostedRecv::new(&comm, INLINE).map_err(|e| e.into_error(rank))?;
        let host = match override_host {
            Some(host) => host,
            None => mpi::environment::processor_name().map_err(|e| Error::Mpi {
                call: "MPI_Get_processor_name",
                rank,
                reason: format!("the processor name is not UTF-8 ({e}); set PARVM_HOSTNAME"),
            })?,
        };
        let peers = gather_hosts(&world, &host)
            .into_iter()
            .zip(0..)
            .map(|(host, rank)| Peer { rank, host })
            .collect();
        Ok(MpiTransport {
            rx: Mutex::new(Receiver {
                inbox: VecDeque::new(),
                posted,
                splits: Vec::new(),
                replay: VecDeque::new(),
            }),
            comm,
            bulk,
            split: Mutex::new(()),
            arrived: Condvar::new(),
            rank,
            peers,
            leave_on_drop: false,
            _universe: universe,
        })
    }

    /// Whether dropping this transport tells rank 0 that this rank leaves (rank 0 then
    /// sees an [`Event::PeerLost`] for it); default false. Has no effect on rank 0.
    #[must_use]
    pub fn leave_on_drop(mut self, on: bool) -> Self {
        self.leave_on_drop = on;
        self
    }

    /// For benchmarks in other crates: a raw rsmpi ping-pong of `size` bytes between
    /// ranks 0 and 1 on `MPI_COMM_WORLD` (blocking send and receive, after a barrier),
    /// returning the mean one-way time over `rounds` round trips. Collective: every rank
    /// calls it; ranks above 1 only join the barrier.
    #[doc(hidden)]
    pub fn raw_world_pingpong(&self, size: usize, rounds: usize) -> Duration {
        use mpi::point_to_point::{Destination, Source};
        let world = SimpleCommunicator::world();
        world.barrier();
        if world.rank() > 1 || world.size() < 2 {
            return Duration::ZERO;
        }
        let mut buffer = vec![7u8; size];
        let peer = world.process_at_rank(1 - world.rank());
        let start = Instant::now();
        for _ in 0..rounds {
            if world.rank() == 0 {
                peer.send(&buffer[..]);
                peer.receive_into(&mut buffer[..]);
            } else {
                peer.receive_into(&mut buffer[..]);
                peer.send(&buffer[..]);
            }
        }
        start.elapsed() / (2 * u32::try_from(rounds.max(1)).unwrap_or(u32::MAX))
    }

    /// For benchmarks in other crates: a barrier on `MPI_COMM_WORLD`.
    #[doc(hidden)]
    pub fn world_barrier(&self) {
        SimpleCommunicator::world().barrier();
    }

    /// For the tests of malformed traffic: sends `payload` to `to` as `kind`, bypassing
    /// the rules the backend keeps. Only a broken or foreign program sends such messages.
    #[doc(hidden)]
    pub fn send_unchecked(&self, to: Rank, payload: &[u8], kind: Unchecked) -> Result<(), Error> {
        let tag = match kind {
            Unchecked::Whole => raw::Tag::Data,
            Unchecked::HeadWithoutTail => raw::Tag::Head,
            Unchecked::Leave => raw::Tag::Leave,
        };
        let dest = self.dest(to, payload.len())?;
        let fail = |e| self.send_failed(to, payload.len(), e);
        let mut request = self.comm.isend(dest, payload, tag).map_err(fail)?;
        self.complete(&mut request, payload.len(), &fail)
    }

    fn host_of(&self, rank: Rank) -> Option<&str> {
        let index = usize::try_from(rank).ok()?;
        self.peers.get(index).map(|peer| peer.host.as_str())
    }

    fn lock_rx(&self) -> MutexGuard<'_, Receiver> {
        // A panic while the lock was held cannot leave the receiver half-changed (each
        // change is one assignment or one push or pop), so a poisoned lock is still usable.
        self.rx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The MPI rank of `to`, checked against the job's size and `bytes` against MPI's
    /// count limit.
    fn dest(&self, to: Rank, bytes: usize) -> Result<std::ffi::c_int, Error> {
        if self.host_of(to).is_none() {
            return Err(Error::UnknownRank {
                rank: to,
                size: self.peers.len(),
            });
        }
        match (i32::try_from(to), i32::try_from(bytes)) {
            (Ok(dest), Ok(_)) => Ok(dest),
            _ => Err(Error::MpiTooLarge {
                rank: to,
                bytes,
                max: i32::MAX as usize,
            }),
        }
    }

    fn send_failed(&self, to: Rank, bytes: usize, e: raw::MpiError) -> Error {
        Error::MpiSend {
            rank: to,
            host: self.host_of(to).unwrap_or("?").to_owned(),
            bytes,
            reason: e.to_string(),
        }
    }

    /// What the receiving side reads of this transport.
    fn inbound(&self) -> Inbound<'_> {
        Inbound {
            rank: self.rank,
            peers: &self.peers,
            bulk: &self.bulk,
        }
    }

    /// Sends one message: eagerly when small, else an `MPI_Isend` that takes incoming
    /// messages into the inbox while it waits for its receiver.
    fn send_one(
        &self,
        comm: &raw::Comm,
        dest: std::ffi::c_int,
        payload: &[u8],
        tag: raw::Tag,
        fail: &dyn Fn(raw::MpiError) -> Error,
    ) -> Result<(), Error> {
        if payload.len() <= EAGER {
            return comm.send_eager(dest, payload, tag).map_err(fail);
        }
        let mut request = comm.isend(dest, payload, tag).map_err(fail)?;
        self.complete(&mut request, payload.len(), fail)
    }

    /// Waits for a send to complete, taking incoming messages into the inbox meanwhile,
    /// so two ranks sending large messages to each other cannot deadlock.
    fn complete(
        &self,
        request: &mut raw::SendRequest<'_>,
        bytes: usize,
        fail: &dyn Fn(raw::MpiError) -> Error,
    ) -> Result<(), Error> {
        if request.test().map_err(fail)? {
            return Ok(());
        }
        // The receiver has not taken the message yet. A transfer in progress is not idle
        // waiting, so spin as long as it would take at 1 GB/s before backing off.
        let transfer = Duration::from_nanos(u64::try_from(bytes).unwrap_or(u64::MAX));
        let mut backoff = Backoff::new(SPIN.saturating_add(transfer));
        loop {
            self.drain_one()?;
            if request.test().map_err(fail)? {
                return Ok(());
            }
            match backoff.next() {
                None => std::hint::spin_loop(),
                Some(sleep) => std::thread::sleep(sleep),
            }
        }
    }

    /// While a send waits for its receiver: take one incoming message into the inbox,
    /// unless another thread is already receiving.
    fn drain_one(&self) -> Result<(), Error> {
        let mut rx = match self.rx.try_lock() {
            Ok(rx) => rx,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        if let Some(event) = self.inbound().take_one(&mut rx)? {
            rx.inbox.push_back(event);
            self.arrived.notify_all();
        }
        Ok(())
    }

    /// Sends `head` on the control communicator and `tail` behind it on the bulk one; the
    /// receiver joins them into one payload.
    fn send_split(&self, to: Rank, head: &[u8], tail: &[u8]) -> Result<(), Error> {
        let bytes = head.len().saturating_add(tail.len());
        let dest = self.dest(to, bytes)?;
        let fail = |e| self.send_failed(to, bytes, e);
        let _split = self.split.lock().unwrap_or_else(PoisonError::into_inner);
        self.send_one(&self.comm, dest, head, raw::Tag::Head, &fail)?;
        self.send_one(&self.bulk, dest, tail, raw::Tag::Tail, &fail)
    }
}

impl Transport for MpiTransport {
    fn rank(&self) -> Rank {
        self.rank
    }

    fn peers(&self) -> Vec<Peer> {
        self.peers.clone()
    }

    fn send(&self, to: Rank, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > INLINE {
            return self.send_split(to, &[], payload);
        }
        let dest = self.dest(to, payload.len())?;
        let fail = |e| self.send_failed(to, payload.len(), e);
        let (tag, body) = match payload.split_first() {
            Some((&first, rest)) => (raw::Tag::DataByte(first), rest),
            None => (raw::Tag::Data, payload),
        };
        self.send_one(&self.comm, dest, body, tag, &fail)
    }

    /// A payload that fits the receiver's posted buffer goes as one message (its parts
    /// joined). A larger one goes as two: a head (a small first part, or nothing) and a
    /// tail sent from where it lies, not copied; the receiver takes the tail behind the
    /// head, so the event is one payload as with [`Transport::send`].
    fn send_parts(&self, to: Rank, parts: &[&[u8]]) -> Result<(), Error> {
        let total = parts.iter().map(|part| part.len()).sum::<usize>();
        match parts {
            [whole] => self.send(to, whole),
            _ if total <= INLINE => self.send(to, &parts.concat()),
            [head, tail] if head.len() <= INLINE => self.send_split(to, head, tail),
            _ => self.send_split(to, &[], &parts.concat()),
        }
    }

    fn recv(&self, wait: Wait) -> Result<Option<Event>, Error> {
        let mut rx = self.lock_rx();
        if let Some(event) = rx.inbox.pop_front() {
            return Ok(Some(event));
        }
        if let Some(event) = self.inbound().take_one(&mut rx)? {
            return Ok(Some(event));
        }
        // Nothing there yet. The clock is read only now: the hot path never reads it.
        // `Some(None)`: a timeout so long that the deadline overflows, i.e. forever.
        let deadline = match wait {
            Wait::NoWait => return Ok(None),
            Wait::Forever => None,
            Wait::For(timeout) => Some(Instant::now().checked_add(timeout)),
        };
        let mut backoff = Backoff::new(SPIN);
        let mut woke = false;
        loop {
            if let Some(event) = rx.inbox.pop_front() {
                return Ok(Some(event));
            }
            if let Some(event) = self.inbound().take_one(&mut rx)? {
                return Ok(Some(event));
            }
            // After a sleep, Open MPI's first call only notices what arrived meanwhile
            // and the second completes it; without this the wake-up latency doubles.
            if woke {
                woke = false;
                if let Some(event) = self.inbound().take_one(&mut rx)? {
                    return Ok(Some(event));
                }
            }
            // The deadline is checked where the back-off read the clock anyway.
            let left = || match deadline {
                Some(Some(deadline)) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Ok(Some(left)),
                    _ => Err(()),
                },
                _ => Ok(None),
            };
            match backoff.next() {
                None if backoff.just_read_clock() => {
                    if left().is_err() {
                        return Ok(None);
                    }
                    // Let a sending thread drain into the inbox now and then.
                    drop(rx);
                    std::hint::spin_loop();
                    rx = self.lock_rx();
                }
                None => std::hint::spin_loop(),
                Some(sleep) => {
                    let Ok(left) = left() else {
                        return Ok(None);
                    };
                    let sleep = left.map_or(sleep, |left| left.min(sleep));
                    woke = true;
                    rx = self
                        .arrived
                        .wait_timeout(rx, sleep)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    fn host(&self) -> String {
        self.host_of(self.rank).unwrap_or_default().to_owned()
    }

    fn size(&self) -> usize {
        self.peers.len()
    }
}

impl Drop for MpiTransport {
    fn drop(&mut self) {
        if self.leave_on_drop && self.rank != 0 {
            // Rank 0 may be gone or finalising; there is nobody to tell about a failure.
            let _ = self.comm.send_eager(0, &[], raw::Tag::Leave);
        }
    }
}

/// What [`MpiTransport::send_unchecked`] sends, for the tests of malformed traffic.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum Unchecked {
    /// A whole message of any size (one larger than [`INLINE`] cannot be received).
    Whole,
    /// The head of a split message whose tail never comes.
    HeadWithoutTail,
    /// The notice of a leaving rank, with any payload.
    Leave,
}

/// `PARVM_HOSTNAME`, checked before MPI starts so a bad value fails this rank alone.
fn hostname_override() -> Result<Option<String>, Error> {
    match std::env::var(HOSTNAME_VAR) {
        Ok(host) if host.is_empty() => Err(Error::MpiHostname {
            problem: "is empty",
        }),
        Ok(host) => Ok(Some(host)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::MpiHostname {
            problem: "is not valid UTF-8",
        }),
    }
}

/// Every rank's host, in rank order: an all-gather of the name lengths, then one of the
/// names padded to the longest.
fn gather_hosts(world: &SimpleCommunicator, host: &str) -> Vec<String> {
    let size = usize::try_from(world.size()).unwrap_or(0);
    let mine = u64::try_from(host.len()).unwrap_or(u64::MAX);
    let mut lengths = vec![0u64; size];
    world.all_gather_into(&mine, &mut lengths[..]);
    let lengths: Vec<usize> = lengths
        .into_iter()
        .map(|len| usize::try_from(len).unwrap_or(0))
        .collect();
    let width = lengths.iter().copied().max().unwrap_or(0).max(1);
    let mut padded = host.as_bytes().to_vec();
    padded.resize(width, 0);
    let mut all = vec![0u8; width * size];
    world.all_gather_into(&padded[..], &mut all[..]);
    all.chunks(width)
        .zip(lengths)
        .map(|(name, len)| String::from_utf8_lossy(&name[..len.min(width)]).into_owned())
        .collect()
}

mod backoff;
mod closable;
mod raw;
mod receive;

pub use closable::Closable;

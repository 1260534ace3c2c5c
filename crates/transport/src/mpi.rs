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
//! `send` from one thread while another waits in `recv`. Payloads travel as raw bytes.
//! A message of unknown size is taken with a matched probe (`MPI_Improbe`) and received
//! into a vector of the probed size (`MPI_Mrecv`), so two receiving threads never steal
//! each other's message. Probing and receiving happen under one lock, which keeps the
//! messages of each sender in order.
//!
//! A send is an `MPI_Isend` followed by `MPI_Test`; small messages complete at once. While
//! a large send waits for its receiver, the sender also takes incoming messages into an
//! inbox that `recv` reads first. Two ranks that send large messages to each other at the
//! same time therefore cannot deadlock, as they can with a plain `MPI_Send`.
//!
//! [`Transport::send_parts`] with a small head and a large (64 KiB or more) second part
//! sends two messages, the head with its own tag and then the part from where it lies,
//! so the part is never copied into one buffer; the receiver takes the part behind the
//! head into one vector and reports one [`Event::Message`]. MPI keeps the order of one
//! sender's messages, and a lock keeps two sending threads from interleaving their pairs.
//!
//! # Waiting costs no core
//!
//! Open MPI's blocking calls spin at 100% of a core (so does PyOPUS's receive with a
//! timeout). `recv` instead probes in a tight loop for [`SPIN`] (50 µs), then sleeps
//! between probes, doubling the sleep from 20 µs up to [`MAX_SLEEP`] (1 ms), and probes
//! twice after each sleep (Open MPI's probe makes progress only after it looked). The
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
//! The backend sets `MPI_ERRORS_RETURN` on its communicator, so where the MPI library
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
//! Dropping the transport frees its communicator and finalises MPI (`MPI_Finalize`).
//! MPI can be initialised only once per process, so create one transport and keep it for
//! the whole run; every rank must drop it (finalise) before it exits.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use crate::{Error, Event, Peer, Rank, Transport, Wait};

/// How long `recv` (and a send that waits for its receiver) probes in a tight loop before
/// it starts to sleep between probes.
pub const SPIN: Duration = Duration::from_micros(50);

/// The longest sleep between two probes of an idle `recv`: the worst added latency of a
/// message that arrives while the receiver sleeps (plus the timer slack).
pub const MAX_SLEEP: Duration = Duration::from_millis(1);

/// Payloads up to this size are sent with a plain `MPI_Send`: every MPI library sends
/// them eagerly (Open MPI's shared-memory limit is 4 KiB, its TCP one 64 KiB, MPICH's
/// 64 KiB), so the call returns without waiting for the receiver and cannot deadlock.
const EAGER: usize = 1024;

/// A second part at least this large makes [`Transport::send_parts`] send two messages
/// rather than join the parts: below it the copy costs less than a second message.
const SPLIT: usize = 64 * 1024;

/// How many probes the spin makes between two readings of the clock.
const SPINS_PER_CLOCK_READ: u32 = 16;

/// The first sleep after the spin; each later sleep doubles, up to [`MAX_SLEEP`].
const FIRST_SLEEP: Duration = Duration::from_micros(20);

/// The environment variable that overrides the host name a rank reports.
const HOSTNAME_VAR: &str = "PARVM_HOSTNAME";

/// The environment variable that names the backend.
const TRANSPORT_VAR: &str = "PARVM_TRANSPORT";

/// The variables a launcher sets in the processes it starts: Open MPI's `mpirun`
/// (`OMPI_COMM_WORLD_SIZE`), MPICH's Hydra and other PMI launchers (`PMI_SIZE`,
/// `PMI_RANK`), and PMIx launchers such as Open MPI 5 or `srun --mpi=pmix` (`PMIX_RANK`).
pub const LAUNCHER_VARS: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"];

/// Whether this process was started by `mpirun`/`mpiexec` (Open MPI, MPICH or another
/// PMI/PMIx launcher), judged from the environment without initialising MPI.
pub fn launched_by_mpirun() -> bool {
    LAUNCHER_VARS
        .iter()
        .any(|var| std::env::var_os(var).is_some())
}

/// The variables that hold this process's rank, set by the same launchers, in the order
/// they are read.
const RANK_VARS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];

/// The rank the launcher gave this process, read from the environment without
/// initialising MPI; `None` when no launcher set one (or it is not a number).
pub fn launch_rank() -> Option<Rank> {
    RANK_VARS
        .iter()
        .find_map(|var| std::env::var(var).ok()?.trim().parse().ok())
}

/// Whether the environment selects the MPI backend: `PARVM_TRANSPORT=mpi`, or
/// `PARVM_TRANSPORT` unset (or empty) and the process started by `mpirun`.
pub fn selected_by_env() -> bool {
    match std::env::var(TRANSPORT_VAR) {
        Ok(name) if !name.is_empty() => name == "mpi",
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
    // Field order matters: the communicator is freed before the universe finalises MPI.
    comm: raw::Comm,
    inbox: Mutex<VecDeque<Event>>,
    /// Held across the two messages of a [`Transport::send_parts`] split send, so two
    /// threads cannot interleave their heads and tails.
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
            comm,
            inbox: Mutex::new(VecDeque::new()),
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

    fn host_of(&self, rank: Rank) -> Option<&str> {
        let index = usize::try_from(rank).ok()?;
        self.peers.get(index).map(|peer| peer.host.as_str())
    }

    fn lock_inbox(&self) -> MutexGuard<'_, VecDeque<Event>> {
        // A panic while the lock was held cannot leave the queue half-changed (push and
        // pop are the only operations), so a poisoned lock is still usable.
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one message from MPI, if one is there. The caller holds the inbox lock (the
    /// argument proves it): that keeps every sender's messages in order.
    fn take_one(&self, _held: &mut VecDeque<Event>) -> Result<Option<Event>, Error> {
        let Some(probed) = self.comm.improbe().map_err(|e| e.into_error(self.rank))? else {
            return Ok(None);
        };
        let from = Rank::try_from(probed.source()).unwrap_or(Rank::MAX);
        let leaving = probed.is_leave();
        if probed.is_head() {
            return Ok(Some(self.take_split(from, probed)));
        }
        Ok(Some(match probed.receive() {
            Ok(_) if leaving => Event::PeerLost {
                rank: from,
                reason: format!(
                    "rank {from} on host `{}` left (its transport was dropped)",
                    self.host_of(from).unwrap_or("?")
                ),
            },
            Ok(payload) => Event::Message { from, payload },
            Err(e) => Event::PeerLost {
                rank: from,
                reason: format!(
                    "receiving from rank {from} on host `{}` failed: {e}",
                    self.host_of(from).unwrap_or("?")
                ),
            },
        }))
    }

    /// The head of a split message arrived: receive it, wait for its tail (sent right
    /// after it) and receive the tail behind the head into one vector, without a copy of
    /// the tail.
    fn take_split(&self, from: Rank, head: raw::Probed) -> Event {
        let lost = |e: raw::MpiError| Event::PeerLost {
            rank: from,
            reason: format!(
                "receiving from rank {from} on host `{}` failed: {e}",
                self.host_of(from).unwrap_or("?")
            ),
        };
        let head = match head.receive() {
            Ok(head) => head,
            Err(e) => return lost(e),
        };
        let source = i32::try_from(from).unwrap_or(-1);
        let mut backoff = Backoff::new(SPIN);
        let tail = loop {
            match self.comm.improbe_tail(source) {
                Ok(Some(tail)) => break tail,
                Ok(None) => match backoff.next() {
                    None => std::hint::spin_loop(),
                    Some(sleep) => std::thread::sleep(sleep),
                },
                Err(e) => return lost(e),
            }
        };
        let mut payload = Vec::with_capacity(head.len().saturating_add(tail.len()));
        payload.extend_from_slice(&head);
        match tail.receive_append(&mut payload) {
            Ok(()) => Event::Message { from, payload },
            Err(e) => lost(e),
        }
    }

    /// Sends one payload of `count` bytes: eagerly when small, else an `MPI_Isend` that
    /// takes incoming messages into the inbox while it waits for its receiver.
    fn send_one(
        &self,
        dest: std::ffi::c_int,
        payload: &[u8],
        count: std::ffi::c_int,
        tail: bool,
        fail: &dyn Fn(raw::MpiError) -> Error,
    ) -> Result<(), Error> {
        if payload.len() <= EAGER && !tail {
            return self.comm.send_eager(dest, payload, count).map_err(fail);
        }
        let mut request = self.comm.isend(dest, payload, count, tail).map_err(fail)?;
        if request.test().map_err(fail)? {
            return Ok(());
        }
        // The receiver has not taken the message yet. A transfer in progress is not idle
        // waiting, so spin as long as it would take at 1 GB/s before backing off.
        let transfer = Duration::from_nanos(u64::try_from(payload.len()).unwrap_or(u64::MAX));
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
        let mut inbox = match self.inbox.try_lock() {
            Ok(inbox) => inbox,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        if let Some(event) = self.take_one(&mut inbox)? {
            inbox.push_back(event);
            self.arrived.notify_all();
        }
        Ok(())
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
        let Some(host) = self.host_of(to) else {
            return Err(Error::UnknownRank {
                rank: to,
                size: self.peers.len(),
            });
        };
        let fail = |e: raw::MpiError| Error::MpiSend {
            rank: to,
            host: host.to_owned(),
            bytes: payload.len(),
            reason: e.to_string(),
        };
        let (Ok(dest), Ok(count)) = (i32::try_from(to), i32::try_from(payload.len())) else {
            return Err(Error::MpiTooLarge {
                rank: to,
                bytes: payload.len(),
                max: i32::MAX as usize,
            });
        };
        self.send_one(dest, payload, count, false, &fail)
    }

    /// A payload of two parts whose second is large goes as two messages: the head
    /// (eager, with its own tag) and the tail (sent from where it lies, not copied). The
    /// receiver waits for the tail when it sees the head and receives it behind the head,
    /// so the event is one payload as with [`Transport::send`]. Other shapes are joined.
    fn send_parts(&self, to: Rank, parts: &[&[u8]]) -> Result<(), Error> {
        let (head, tail) = match parts {
            [head, tail] if head.len() <= EAGER && tail.len() >= SPLIT => (*head, *tail),
            _ => return self.send(to, &parts.concat()),
        };
        let Some(host) = self.host_of(to) else {
            return Err(Error::UnknownRank {
                rank: to,
                size: self.peers.len(),
            });
        };
        let bytes = head.len().saturating_add(tail.len());
        let fail = |e: raw::MpiError| Error::MpiSend {
            rank: to,
            host: host.to_owned(),
            bytes,
            reason: e.to_string(),
        };
        let (Ok(dest), Ok(head_count), Ok(tail_count), Ok(_)) = (
            i32::try_from(to),
            i32::try_from(head.len()),
            i32::try_from(tail.len()),
            i32::try_from(bytes),
        ) else {
            return Err(Error::MpiTooLarge {
                rank: to,
                bytes,
                max: i32::MAX as usize,
            });
        };
        let _split = self.split.lock().unwrap_or_else(PoisonError::into_inner);
        self.comm.send_head(dest, head, head_count).map_err(&fail)?;
        self.send_one(dest, tail, tail_count, true, &fail)
    }

    fn recv(&self, wait: Wait) -> Result<Option<Event>, Error> {
        let start = Instant::now();
        let deadline = match wait {
            Wait::Forever => None,
            Wait::For(timeout) => Some(start.checked_add(timeout)),
            Wait::NoWait => Some(Some(start)),
        };
        let mut backoff = Backoff::new(SPIN);
        let mut woke = false;
        let mut inbox = self.lock_inbox();
        loop {
            if let Some(event) = inbox.pop_front() {
                return Ok(Some(event));
            }
            if let Some(event) = self.take_one(&mut inbox)? {
                return Ok(Some(event));
            }
            // Open MPI's probe looks at what has arrived before it makes progress, so a
            // message that came in during a sleep is seen only by the second probe after
            // it; without this the wake-up latency doubles.
            if woke {
                woke = false;
                if let Some(event) = self.take_one(&mut inbox)? {
                    return Ok(Some(event));
                }
            }
            // `Some(None)`: a timeout so long that the deadline overflows, i.e. forever.
            let left = match deadline {
                Some(Some(deadline)) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(None),
                },
                _ => None,
            };
            match backoff.next() {
                None if backoff.spins == 0 => {
                    // Let a sending thread drain into the inbox now and then.
                    drop(inbox);
                    std::hint::spin_loop();
                    inbox = self.lock_inbox();
                }
                None => std::hint::spin_loop(),
                Some(sleep) => {
                    let sleep = left.map_or(sleep, |left| left.min(sleep));
                    woke = true;
                    inbox = self
                        .arrived
                        .wait_timeout(inbox, sleep)
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
            let _ = self.comm.send_leave(0);
        }
    }
}

/// Spin first, then sleep with doubling pauses up to [`MAX_SLEEP`].
struct Backoff {
    spin_until: Instant,
    sleep: Duration,
    /// Probes since the clock was last read: reading it on every probe would cost more
    /// than the probe.
    spins: u32,
}

impl Backoff {
    fn new(spin: Duration) -> Self {
        let now = Instant::now();
        Backoff {
            spin_until: now.checked_add(spin).unwrap_or(now),
            sleep: FIRST_SLEEP,
            spins: 0,
        }
    }

    /// `None` while spinning, else how long to sleep before the next probe.
    fn next(&mut self) -> Option<Duration> {
        if self.spins < SPINS_PER_CLOCK_READ {
            self.spins += 1;
            return None;
        }
        if Instant::now() < self.spin_until {
            self.spins = 0;
            return None;
        }
        let sleep = self.sleep;
        self.sleep = sleep.saturating_mul(2).min(MAX_SLEEP);
        Some(sleep)
    }
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

/// The few MPI calls rsmpi does not wrap with error codes (it ignores them), made through
/// its FFI. All unsafe code of the backend is here.
mod raw {
    #![allow(unsafe_code)]

    use std::ffi::{c_char, c_int, c_void};
    use std::marker::PhantomData;
    use std::mem::MaybeUninit;

    use mpi::ffi;

    use crate::{Error, Rank};

    /// The tag of every parvm message on the backend's private communicator.
    const TAG: c_int = 0x7076;

    /// The tag of the empty message a leaving rank sends to rank 0.
    const LEAVE_TAG: c_int = 0x7077;

    /// The tag of the head of a split message (`send_parts`); its tail follows.
    const HEAD_TAG: c_int = 0x7078;

    /// The tag of the tail of a split message. MPI keeps the order of the messages of one
    /// sender on one communicator that match one receive, so a head's tail is the next
    /// message with this tag from the head's sender.
    const TAIL_TAG: c_int = 0x7079;

    /// An MPI call that returned an error code (possible because of `MPI_ERRORS_RETURN`).
    #[derive(Debug)]
    pub(super) struct MpiError {
        call: &'static str,
        code: c_int,
    }

    impl MpiError {
        pub(super) fn into_error(self, rank: Rank) -> Error {
            Error::Mpi {
                call: self.call,
                rank,
                reason: error_string(self.code),
            }
        }
    }

    impl std::fmt::Display for MpiError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} failed: {}", self.call, error_string(self.code))
        }
    }

    fn check(call: &'static str, code: c_int) -> Result<(), MpiError> {
        if code == ffi::MPI_SUCCESS as c_int {
            Ok(())
        } else {
            Err(MpiError { call, code })
        }
    }

    /// The library's words for an error code.
    fn error_string(code: c_int) -> String {
        let mut text = [0 as c_char; ffi::MPI_MAX_ERROR_STRING as usize + 1];
        let mut len: c_int = 0;
        // SAFETY: `text` has room for MPI_MAX_ERROR_STRING characters, as the call needs.
        let status = unsafe { ffi::MPI_Error_string(code, text.as_mut_ptr(), &mut len) };
        if status != ffi::MPI_SUCCESS as c_int {
            return format!("MPI error code {code}");
        }
        let len = usize::try_from(len).unwrap_or(0).min(text.len());
        let bytes: Vec<u8> = text[..len].iter().map(|&c| c as u8).collect();
        format!(
            "{} (MPI error code {code})",
            String::from_utf8_lossy(&bytes)
        )
    }

    /// A private duplicate of `MPI_COMM_WORLD` with `MPI_ERRORS_RETURN`.
    pub(super) struct Comm(ffi::MPI_Comm);

    // SAFETY: a `Comm` exists only after `MpiTransport::init` obtained MPI_THREAD_MULTIPLE,
    // under which MPI handles may be used from any thread, concurrently.
    unsafe impl Send for Comm {}
    // SAFETY: as above.
    unsafe impl Sync for Comm {}

    impl Comm {
        /// Sets `MPI_ERRORS_RETURN` on the world and duplicates it. MPI must be initialised
        /// with MPI_THREAD_MULTIPLE (the caller holds the universe).
        pub(super) fn dup_world() -> Result<Comm, MpiError> {
            let mut comm = MaybeUninit::<ffi::MPI_Comm>::uninit();
            // SAFETY: MPI is initialised, so the predefined handles are valid; the dup
            // writes a valid handle into `comm` when it returns MPI_SUCCESS.
            unsafe {
                check(
                    "MPI_Comm_set_errhandler",
                    ffi::MPI_Comm_set_errhandler(ffi::RSMPI_COMM_WORLD, ffi::RSMPI_ERRORS_RETURN),
                )?;
                check(
                    "MPI_Comm_dup",
                    ffi::MPI_Comm_dup(ffi::RSMPI_COMM_WORLD, comm.as_mut_ptr()),
                )?;
                let comm = Comm(comm.assume_init());
                check(
                    "MPI_Comm_set_errhandler",
                    ffi::MPI_Comm_set_errhandler(comm.0, ffi::RSMPI_ERRORS_RETURN),
                )?;
                Ok(comm)
            }
        }

        /// Starts sending `buf` (of `count` bytes) to rank `dest`.
        pub(super) fn isend<'a>(
            &self,
            dest: c_int,
            buf: &'a [u8],
            count: c_int,
            tail: bool,
        ) -> Result<SendRequest<'a>, MpiError> {
            debug_assert_eq!(usize::try_from(count).ok(), Some(buf.len()));
            let mut request = MaybeUninit::<ffi::MPI_Request>::uninit();
            // SAFETY: `buf` holds `count` bytes and stays borrowed by the returned request
            // until the send completed (its Drop waits for it).
            unsafe {
                check(
                    "MPI_Isend",
                    ffi::MPI_Isend(
                        buf.as_ptr().cast::<c_void>(),
                        count,
                        ffi::RSMPI_UINT8_T,
                        dest,
                        if tail { TAIL_TAG } else { TAG },
                        self.0,
                        request.as_mut_ptr(),
                    ),
                )?;
                Ok(SendRequest {
                    raw: request.assume_init(),
                    done: false,
                    _buf: PhantomData,
                })
            }
        }

        /// Sends `buf` (of `count` bytes) to rank `dest` with a blocking `MPI_Send`; only
        /// for payloads small enough to go eagerly, which return without the receiver.
        pub(super) fn send_eager(
            &self,
            dest: c_int,
            buf: &[u8],
            count: c_int,
        ) -> Result<(), MpiError> {
            debug_assert_eq!(usize::try_from(count).ok(), Some(buf.len()));
            // SAFETY: `buf` holds `count` bytes and is borrowed for the whole call.
            unsafe {
                check(
                    "MPI_Send",
                    ffi::MPI_Send(
                        buf.as_ptr().cast::<c_void>(),
                        count,
                        ffi::RSMPI_UINT8_T,
                        dest,
                        TAG,
                        self.0,
                    ),
                )
            }
        }

        /// Sends the head of a split message (small enough to go eagerly) to `dest`.
        pub(super) fn send_head(
            &self,
            dest: c_int,
            buf: &[u8],
            count: c_int,
        ) -> Result<(), MpiError> {
            debug_assert_eq!(usize::try_from(count).ok(), Some(buf.len()));
            // SAFETY: `buf` holds `count` bytes and is borrowed for the whole call.
            unsafe {
                check(
                    "MPI_Send",
                    ffi::MPI_Send(
                        buf.as_ptr().cast::<c_void>(),
                        count,
                        ffi::RSMPI_UINT8_T,
                        dest,
                        HEAD_TAG,
                        self.0,
                    ),
                )
            }
        }

        /// Tells `dest` that this rank leaves: an empty message with [`LEAVE_TAG`].
        pub(super) fn send_leave(&self, dest: c_int) -> Result<(), MpiError> {
            // SAFETY: a zero-length send reads no buffer; the pointer only has to be valid.
            unsafe {
                check(
                    "MPI_Send",
                    ffi::MPI_Send(
                        [0u8; 1].as_ptr().cast::<c_void>(),
                        0,
                        ffi::RSMPI_UINT8_T,
                        dest,
                        LEAVE_TAG,
                        self.0,
                    ),
                )
            }
        }

        /// A matched probe for a message from any rank, of any tag.
        pub(super) fn improbe(&self) -> Result<Option<Probed>, MpiError> {
            // SAFETY: reading predefined constants of an initialised MPI.
            let (source, tag) = unsafe { (ffi::RSMPI_ANY_SOURCE, ffi::RSMPI_ANY_TAG) };
            self.improbe_matching(source, tag)
        }

        /// A matched probe for the tail of a split message from `source`.
        pub(super) fn improbe_tail(&self, source: c_int) -> Result<Option<Probed>, MpiError> {
            self.improbe_matching(source, TAIL_TAG)
        }

        fn improbe_matching(&self, source: c_int, tag: c_int) -> Result<Option<Probed>, MpiError> {
            let mut flag: c_int = 0;
            let mut message = MaybeUninit::<ffi::MPI_Message>::uninit();
            let mut status = MaybeUninit::<ffi::MPI_Status>::uninit();
            // SAFETY: all out-pointers are valid; `message` and `status` are written when
            // the flag is set.
            unsafe {
                check(
                    "MPI_Improbe",
                    ffi::MPI_Improbe(
                        source,
                        tag,
                        self.0,
                        &mut flag,
                        message.as_mut_ptr(),
                        status.as_mut_ptr(),
                    ),
                )?;
                if flag == 0 {
                    return Ok(None);
                }
                let status = status.assume_init();
                let mut count: c_int = 0;
                let mut probed = Probed {
                    message: message.assume_init(),
                    source: status.MPI_SOURCE,
                    leave: status.MPI_TAG == LEAVE_TAG,
                    head: status.MPI_TAG == HEAD_TAG,
                    count: 0,
                };
                // On failure `probed` is dropped, which still receives the message.
                check(
                    "MPI_Get_count",
                    ffi::MPI_Get_count(&status, ffi::RSMPI_UINT8_T, &mut count),
                )?;
                probed.count = count;
                Ok(Some(probed))
            }
        }
    }

    impl Drop for Comm {
        fn drop(&mut self) {
            // SAFETY: the transport drops the communicator before the universe finalises
            // MPI, and no request on it is pending (every send completed before it returned).
            unsafe {
                ffi::MPI_Comm_free(&mut self.0);
            }
        }
    }

    /// A send in flight; it borrows the payload until MPI is done with it.
    pub(super) struct SendRequest<'a> {
        raw: ffi::MPI_Request,
        done: bool,
        _buf: PhantomData<&'a [u8]>,
    }

    impl SendRequest<'_> {
        /// Whether the send completed (and MPI no longer reads the payload).
        pub(super) fn test(&mut self) -> Result<bool, MpiError> {
            if self.done {
                return Ok(true);
            }
            let mut flag: c_int = 0;
            // SAFETY: `raw` is an active request from MPI_Isend.
            let code = unsafe { ffi::MPI_Test(&mut self.raw, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
            if let Err(e) = check("MPI_Test", code) {
                // A request that completes with an error is deallocated by MPI; nothing
                // is pending any more.
                self.done = true;
                return Err(e);
            }
            self.done = flag != 0;
            Ok(self.done)
        }
    }

    impl Drop for SendRequest<'_> {
        fn drop(&mut self) {
            if !self.done {
                // Only reached when a panic unwinds through a send: the payload must not
                // be freed while MPI may still read it.
                // SAFETY: `raw` is an active request from MPI_Isend.
                unsafe {
                    ffi::MPI_Wait(&mut self.raw, ffi::RSMPI_STATUS_IGNORE);
                }
            }
        }
    }

    /// A message taken by a matched probe, still to be received.
    pub(super) struct Probed {
        message: ffi::MPI_Message,
        source: c_int,
        leave: bool,
        head: bool,
        count: c_int,
    }

    impl Probed {
        /// Whether this is a leaving rank's notice rather than a payload.
        pub(super) fn is_leave(&self) -> bool {
            self.leave
        }

        /// Whether this is the head of a split message, whose tail follows.
        pub(super) fn is_head(&self) -> bool {
            self.head
        }

        /// The size of the message in bytes.
        pub(super) fn len(&self) -> usize {
            usize::try_from(self.count).unwrap_or(0)
        }

        /// Receives the message at the end of `out`, growing it by the probed size.
        pub(super) fn receive_append(mut self, out: &mut Vec<u8>) -> Result<(), MpiError> {
            let len = self.len();
            out.reserve(len);
            let start = out.len();
            // SAFETY: `reserve` made room for `len` more bytes after the `start` bytes the
            // vector holds; `message` is a matched message from MPI_Improbe, received
            // exactly once (MPI sets it to MPI_MESSAGE_NULL, so Drop does nothing).
            unsafe {
                check(
                    "MPI_Mrecv",
                    ffi::MPI_Mrecv(
                        out.as_mut_ptr().add(start).cast::<c_void>(),
                        self.count,
                        ffi::RSMPI_UINT8_T,
                        &mut self.message,
                        ffi::RSMPI_STATUS_IGNORE,
                    ),
                )?;
                // SAFETY: MPI_Mrecv succeeded, so it wrote all `len` bytes after `start`.
                out.set_len(start + len);
            }
            Ok(())
        }

        /// The sending rank.
        pub(super) fn source(&self) -> c_int {
            self.source
        }

        /// Receives the message into a vector of the probed size.
        pub(super) fn receive(mut self) -> Result<Vec<u8>, MpiError> {
            self.receive_mut()
        }

        fn receive_mut(&mut self) -> Result<Vec<u8>, MpiError> {
            let len = usize::try_from(self.count).unwrap_or(0);
            let mut payload = Vec::<u8>::with_capacity(len);
            // SAFETY: the vector has room for `count` bytes; `message` is a matched
            // message from MPI_Improbe, received exactly once (MPI sets it to
            // MPI_MESSAGE_NULL).
            unsafe {
                check(
                    "MPI_Mrecv",
                    ffi::MPI_Mrecv(
                        payload.as_mut_ptr().cast::<c_void>(),
                        self.count,
                        ffi::RSMPI_UINT8_T,
                        &mut self.message,
                        ffi::RSMPI_STATUS_IGNORE,
                    ),
                )?;
                // SAFETY: MPI_Mrecv succeeded, so it wrote all `count` bytes of the
                // probed message.
                payload.set_len(len);
            }
            Ok(payload)
        }
    }

    impl Drop for Probed {
        fn drop(&mut self) {
            // SAFETY: reading a predefined handle of an initialised MPI.
            let null = unsafe { ffi::RSMPI_MESSAGE_NULL };
            if self.message != null {
                // A matched message must be received, or it stays in MPI forever.
                let _ = self.receive_mut();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_spins_then_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::ZERO);
        let sleeps: Vec<Duration> = (0..10 + SPINS_PER_CLOCK_READ)
            .filter_map(|_| backoff.next())
            .collect();
        assert_eq!(sleeps.len(), 10);
        assert_eq!(sleeps[0], FIRST_SLEEP);
        assert_eq!(sleeps[1], FIRST_SLEEP * 2);
        assert!(sleeps.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(sleeps[9], MAX_SLEEP);
    }

    #[test]
    fn backoff_spins_first() {
        let mut backoff = Backoff::new(Duration::from_secs(3600));
        assert_eq!(backoff.next(), None);
    }
}

//! The transport's error type.

use std::path::PathBuf;
use std::time::Duration;

use crate::Rank;

/// What can go wrong while moving messages between ranks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rank that this transport does not know was addressed.
    #[error(
        "rank {rank} is not part of this virtual machine (it has {size} ranks); address a rank from `peers()`"
    )]
    UnknownRank {
        /// The rank addressed.
        rank: crate::Rank,
        /// How many ranks there are.
        size: usize,
    },

    // --- frames -------------------------------------------------------------------------
    /// A frame header announced more bytes than the limit allows.
    #[error(
        "a frame announces {len} bytes, more than the limit of {limit} bytes; the peer is dropped (if such messages are legitimate, raise the receiver's limit: PARVM_MAX_FRAME, `parvm worker --max-frame`, or `max_frame` in code)"
    )]
    FrameTooLarge {
        /// The announced payload length.
        len: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A frame header does not start with the parvm magic: the peer speaks another protocol.
    #[error(
        "a frame starts with bytes {start:02x?}, not a parvm frame header; the peer speaks another protocol and is dropped"
    )]
    ForeignFrame {
        /// The first four bytes received.
        start: [u8; 4],
    },
    /// A frame header has another format version.
    #[error(
        "a frame has format version {found}, this build reads version {expected}; run the same parvm version on every rank"
    )]
    FrameVersion {
        /// The version received.
        found: u8,
        /// The version this build reads.
        expected: u8,
    },
    /// The stream ended inside a frame.
    #[error(
        "the connection ended inside a frame ({got} of {expected} bytes arrived): the peer died or the connection was cut while it sent"
    )]
    FrameTruncated {
        /// Bytes expected.
        expected: u64,
        /// Bytes received.
        got: u64,
    },
    /// Reading a frame failed.
    #[error("cannot read a frame from the connection, so the peer is dropped")]
    FrameIo {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A sealed record announces a length it may not have.
    #[error(
        "sealed record {record} announces {len} bytes where 1 to {max} may come; the bytes were changed on the way or the peer does not speak this parvm version, so the connection is dropped"
    )]
    RecordLength {
        /// The record's number in its direction (0 is the first).
        record: u64,
        /// The announced length.
        len: u64,
        /// The most that may come here.
        max: u64,
    },
    /// A sealed record failed authentication.
    #[error(
        "sealed record {record} failed authentication: it was modified, replayed, reordered or dropped on the way, so the connection is dropped; check the network path between the hosts"
    )]
    RecordForged {
        /// The record's number in its direction (0 is the first).
        record: u64,
    },

    // --- peers --------------------------------------------------------------------------
    /// A worker tried to send to another worker; workers reach only rank 0.
    #[error(
        "rank {from} cannot send to rank {to}: workers reach only the spawner (rank 0), which routes worker-to-worker messages"
    )]
    NotRoutable {
        /// The sending rank.
        from: Rank,
        /// The addressed rank.
        to: Rank,
    },
    /// The addressed peer is gone.
    #[error(
        "rank {rank} on host `{host}` is gone ({reason}); it can no longer be reached, so address a rank that `peers()` lists"
    )]
    PeerLost {
        /// The lost rank.
        rank: Rank,
        /// Its host.
        host: String,
        /// Why it is gone.
        reason: String,
    },
    /// Writing to a peer failed.
    #[error(
        "cannot send {bytes} bytes to rank {rank} on host `{host}`: its connection broke, and it will be reported lost"
    )]
    Send {
        /// The addressed rank.
        rank: Rank,
        /// Its host.
        host: String,
        /// The payload size.
        bytes: usize,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The transport's own machinery failed (a thread, a poll).
    #[error(
        "the {backend} transport cannot {what}; this is a problem of this machine, not of a peer (often too few threads, memory or file descriptors: check `ulimit -u` and `ulimit -n`)"
    )]
    Io {
        /// The backend.
        backend: &'static str,
        /// What it tried to do.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    // --- local backend ------------------------------------------------------------------
    /// The local backend was asked for no workers.
    #[error(
        "the local transport needs at least one worker; set PARVM_WORKERS or the host list to 1 or more"
    )]
    NoWorkers,
    /// The socket path is longer than a Unix socket address allows.
    #[error("socket path `{}` is longer than the {max} bytes a Unix socket allows; point TMPDIR to a shorter folder", path.display())]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// A worker process could not be started.
    #[error("cannot start worker rank {rank} (`{}`)", program.display())]
    WorkerStart {
        /// The worker's rank.
        rank: Rank,
        /// The program.
        program: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A worker exited before it connected.
    #[error(
        "worker rank {rank} on host `{host}` (pid {pid}) {status} before it connected; run the program by hand to see why it stops"
    )]
    WorkerExited {
        /// The worker's rank.
        rank: Rank,
        /// Its (simulated) host.
        host: String,
        /// Its process id.
        pid: u32,
        /// How it ended, in words.
        status: String,
    },
    /// Workers did not connect in time.
    #[error(
        "workers {ranks:?} did not connect within {timeout:?}; they may be stuck before calling `worker_from_env` (raise the connect timeout if start-up is slow)"
    )]
    WorkerTimeout {
        /// The ranks that did not connect.
        ranks: Vec<Rank>,
        /// The deadline.
        timeout: Duration,
    },
    /// A worker variable holds a bad value.
    #[error("environment variable {var}=`{value}` is invalid: {reason}")]
    BadWorkerEnv {
        /// The variable.
        var: &'static str,
        /// Its value (lossy).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The local worker variables are set, but this process's parent is not the spawner.
    #[error(
        "PARVM_LOCAL_SOCKET is set but this process's parent is pid {actual}, not the spawner pid {expected}: the spawner is gone, or a task started a parvm program without removing the PARVM_LOCAL_* variables (see `parvm_transport::local::WORKER_ENV_VARS`)"
    )]
    NotSpawnerChild {
        /// The spawner's pid from the environment.
        expected: u32,
        /// The actual parent pid.
        actual: u32,
    },
    /// A worker could not join the spawner.
    #[error("worker rank {rank} cannot join the spawner at `{}`", socket.display())]
    Join {
        /// The worker's rank.
        rank: Rank,
        /// The spawner's socket.
        socket: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    // --- tcp backend --------------------------------------------------------------------
    /// The spawner could not listen.
    #[error("cannot listen on `{addr}`; choose another address or port")]
    Listen {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A worker could not connect to the spawner.
    #[error(
        "cannot connect to the spawner at `{addr}`; check PARVM_CONNECT and that the spawner listens there (a worker started before its spawner keeps trying with `parvm worker --wait SECONDS` or PARVM_CONNECT_WAIT)"
    )]
    Connect {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The authentication handshake failed.
    #[error("handshake with the spawner at `{addr}` failed: {reason}")]
    Handshake {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The secret file is readable or writable by others.
    #[error("secret file `{}` has mode {mode:04o}, so others can read or change it; run `chmod 600 {}`", path.display(), path.display())]
    SecretInsecure {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The secret file belongs to another user.
    #[error("secret file `{}` belongs to user id {owner}, not to this user ({me}); use a secret file of your own", path.display())]
    SecretOwner {
        /// The file.
        path: PathBuf,
        /// The owner's uid.
        owner: u32,
        /// This process's uid.
        me: u32,
    },
    /// The secret file is empty.
    #[error("secret file `{}` is empty; delete it so the spawner creates a new one, or put a random secret in it", path.display())]
    SecretEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The secret file could not be read or created.
    #[error("cannot {what} secret file `{}`; set PARVM_SECRET_FILE to a file you own with mode 0600", path.display())]
    SecretIo {
        /// `read` or `create`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    // --- mpi backend --------------------------------------------------------------------
    /// MPI was already initialised in this process.
    #[error(
        "MPI is already initialised in this process; create the MPI transport once, before any other use of MPI, and keep it for the whole run"
    )]
    MpiAlreadyInitialized,
    /// The MPI library does not provide `MPI_THREAD_MULTIPLE`.
    #[error(
        "the MPI library provides thread level {provided}, but the mpi transport needs MPI_THREAD_MULTIPLE; use an MPI built with thread support (for Open MPI, `ompi_info | grep -i thread` must say `MPI_THREAD_MULTIPLE: yes`)"
    )]
    MpiThreadLevel {
        /// The level the library provides.
        provided: String,
    },
    /// `PARVM_HOSTNAME` is set but unusable.
    #[error(
        "PARVM_HOSTNAME {problem}; set it to a non-empty UTF-8 host name or unset it to use the processor name"
    )]
    MpiHostname {
        /// What is wrong with it.
        problem: &'static str,
    },
    /// An MPI call failed (the transport itself, not one peer).
    #[error(
        "MPI call {call} failed on rank {rank}: {reason}; if a rank died, mpirun ends the whole job and names that rank"
    )]
    Mpi {
        /// The MPI function.
        call: &'static str,
        /// This process's rank.
        rank: Rank,
        /// The MPI library's error text.
        reason: String,
    },
    /// Sending to a rank over MPI failed.
    #[error(
        "cannot send {bytes} bytes over MPI to rank {rank} on host `{host}`: {reason}; if that rank died, mpirun ends the whole job"
    )]
    MpiSend {
        /// The addressed rank.
        rank: Rank,
        /// Its host.
        host: String,
        /// The payload size.
        bytes: usize,
        /// The MPI library's error text.
        reason: String,
    },
    /// A payload is larger than one MPI message can carry.
    #[error(
        "a payload of {bytes} bytes for rank {rank} exceeds the {max} bytes one MPI message can carry; send it in parts"
    )]
    MpiTooLarge {
        /// The addressed rank.
        rank: Rank,
        /// The payload size.
        bytes: usize,
        /// The largest payload.
        max: usize,
    },
}

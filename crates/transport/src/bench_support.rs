//! Measurements shared by this crate's benches and the VM's: raw Unix-socket and TCP
//! ping-pong baselines and the same ping-pong through a [`Transport`], and the start of the
//! MPI benchmarks under `mpirun`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::{Event, Rank, Transport, Wait};

/// What one ping-pong run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingPong {
    /// Payload size in bytes.
    pub size: usize,
    /// Median round trip divided by two.
    pub one_way: Duration,
    /// `size` divided by `one_way`, in bytes per second.
    pub bytes_per_sec: f64,
}

impl PingPong {
    fn from_rounds(size: usize, mut rounds: Vec<Duration>) -> PingPong {
        rounds.sort();
        let one_way = rounds.get(rounds.len() / 2).copied().unwrap_or_default() / 2;
        let secs = one_way.as_secs_f64();
        PingPong {
            size,
            one_way,
            bytes_per_sec: if secs > 0.0 { size as f64 / secs } else { 0.0 },
        }
    }
}

fn read_msg<S: Read>(stream: &mut S, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    buf.resize(u64::from_le_bytes(len) as usize, 0);
    stream.read_exact(buf)
}

fn write_msg<S: Write>(stream: &mut S, payload: &[u8]) -> std::io::Result<()> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut slices = [std::io::IoSlice::new(&len), std::io::IoSlice::new(payload)];
    let mut bufs: &mut [std::io::IoSlice<'_>] = &mut slices;
    std::io::IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = stream.write_vectored(bufs)?;
        std::io::IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Ping-pong of `size`-byte messages over a plain Unix socket pair with an echo thread
/// (blocking reads, an 8-byte length prefix): the floor a transport is compared with.
///
/// # Errors
/// An I/O error of the socket pair.
pub fn raw_unix_pingpong(size: usize, rounds: usize) -> std::io::Result<PingPong> {
    let (near, far) = UnixStream::pair()?;
    raw_pingpong(near, far, size, rounds)
}

/// As [`raw_unix_pingpong`] over a TCP connection on loopback (with `TCP_NODELAY`, as the
/// TCP transport sets it): the floor of the TCP transport, in plaintext.
///
/// # Errors
/// An I/O error of the connection.
pub fn raw_tcp_pingpong(size: usize, rounds: usize) -> std::io::Result<PingPong> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let near = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (far, _) = listener.accept()?;
    near.set_nodelay(true)?;
    far.set_nodelay(true)?;
    raw_pingpong(near, far, size, rounds)
}

fn raw_pingpong<S: Read + Write + Send + 'static>(
    mut near: S,
    mut far: S,
    size: usize,
    rounds: usize,
) -> std::io::Result<PingPong> {
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = Vec::new();
        loop {
            match read_msg(&mut far, &mut buf) {
                Ok(()) => write_msg(&mut far, &buf)?,
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(err) => return Err(err),
            }
        }
    });
    let payload = vec![0x5au8; size];
    let mut back = Vec::new();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        write_msg(&mut near, &payload)?;
        read_msg(&mut near, &mut back)?;
        times.push(start.elapsed());
    }
    drop(near);
    echo.join()
        .map_err(|_| std::io::Error::other("echo thread panicked"))??;
    Ok(PingPong::from_rounds(size, times))
}

/// Ping-pong of `size`-byte messages with rank `to`, which must echo each message back.
///
/// # Errors
/// A transport error, or `to` was lost or answered with something else.
pub fn transport_pingpong(
    transport: &dyn Transport,
    to: Rank,
    size: usize,
    rounds: usize,
) -> Result<PingPong, Box<dyn std::error::Error + Send + Sync>> {
    let payload = vec![0x5au8; size];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        transport.send(to, &payload)?;
        match transport.recv(Wait::Forever)? {
            Some(Event::Message {
                from,
                payload: back,
            }) if from == to && back.len() == size => {}
            other => return Err(format!("unexpected answer from rank {to}: {other:?}").into()),
        }
        times.push(start.elapsed());
    }
    Ok(PingPong::from_rounds(size, times))
}

/// Runs this program again under `mpirun --oversubscribe -n <ranks>`, with the same
/// arguments (and the variables Open MPI wants when run as root): how an MPI benchmark
/// started by `cargo bench` gets its ranks. `name` prefixes the error messages.
#[cfg(feature = "mpi")]
pub fn rerun_under_mpirun(name: &str, ranks: u32) -> std::process::ExitCode {
    use std::process::{Command, ExitCode};
    let me = match std::env::current_exe() {
        Ok(me) => me,
        Err(e) => {
            eprintln!("{name}: cannot find its own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut command = Command::new("mpirun");
    command
        .args(["--oversubscribe", "-n", &ranks.to_string()])
        .arg(me)
        .args(std::env::args_os().skip(1));
    if nix::unistd::Uid::effective().is_root() {
        command
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    match command.status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{name}: mpirun -n {ranks} ended with {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{name}: cannot run mpirun ({e}); install Open MPI or MPICH");
            ExitCode::FAILURE
        }
    }
}

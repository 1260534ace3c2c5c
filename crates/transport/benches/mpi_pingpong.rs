//! One-way latency and throughput of the MPI backend against a raw rsmpi ping-pong
//! (blocking send and receive of a preallocated buffer) of the same sizes in the same
//! run, for 0 B, 1 KiB, 100 KiB and 10 MiB; then the CPU an idle `recv` uses and the
//! latency a message pays when it arrives while the receiver sleeps in its back-off.
//!
//! Run with `cargo bench -p parvm-transport --features mpi --bench mpi_pingpong`; started
//! outside `mpirun`, it starts itself again under `mpirun -n 2`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use nix::time::{ClockId, clock_gettime};
use parvm_transport::mpi::{MpiTransport, launched_by_mpirun};
use parvm_transport::{Event, Transport, Wait};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const SIZES: [usize; 4] = [0, 1024, 100 * 1024, 10 << 20];

/// Each measurement is repeated and the best kept, for both sides alike.
const REPEATS: usize = 3;

fn rounds_for(size: usize) -> usize {
    match size {
        0..=2048 => 20_000,
        2049..=200_000 => 2_000,
        _ => 100,
    }
}

fn main() -> ExitCode {
    if !launched_by_mpirun() {
        return parvm_transport::bench_support::rerun_under_mpirun("mpi_pingpong", 2);
    }
    let transport = match MpiTransport::init() {
        Ok(transport) => transport,
        Err(e) => {
            eprintln!("mpi_pingpong: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = bench(&transport);
    let rank = transport.rank();
    drop(transport);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mpi_pingpong rank {rank}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One-way time of the same ping-pong through the transport.
fn transport_pingpong(
    t: &MpiTransport,
    world: &SimpleCommunicator,
    size: usize,
    rounds: usize,
) -> Result<Duration> {
    let mut payload = vec![7u8; size];
    let peer = 1 - t.rank();
    world.barrier();
    let start = Instant::now();
    for _ in 0..rounds {
        if t.rank() == 0 {
            t.send(peer, &payload)?;
            payload = message(t)?;
        } else {
            payload = message(t)?;
            t.send(peer, &payload)?;
        }
    }
    Ok(start.elapsed() / (2 * rounds as u32))
}

fn message(t: &MpiTransport) -> Result<Vec<u8>> {
    match t.recv(Wait::Forever)? {
        Some(Event::Message { payload, .. }) => Ok(payload),
        other => Err(format!("expected a message, got {other:?}").into()),
    }
}

fn cpu_time() -> Result<Duration> {
    Ok(Duration::from(clock_gettime(
        ClockId::CLOCK_PROCESS_CPUTIME_ID,
    )?))
}

fn monotonic_ns() -> Result<u64> {
    let now = Duration::from(clock_gettime(ClockId::CLOCK_MONOTONIC)?);
    Ok(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX))
}

fn human(size: usize) -> String {
    match size {
        0 => "0 B".into(),
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s => format!("{} KiB", s >> 10),
    }
}

fn bench(t: &MpiTransport) -> Result<()> {
    let world = SimpleCommunicator::world();
    if world.size() != 2 {
        return Err(format!("run with exactly 2 ranks, not {}", world.size()).into());
    }
    let me = t.rank();
    if me == 0 {
        println!(
            "MPI ping-pong, 2 ranks on host `{}`: one-way latency and throughput",
            t.host()
        );
        println!(
            "{:>8}  {:>11}  {:>11}  {:>6}  {:>10}  {:>10}  {:>6}",
            "size", "raw rsmpi", "parvm mpi", "ratio", "raw GB/s", "parvm GB/s", "ratio"
        );
    }
    for size in SIZES {
        let rounds = rounds_for(size);
        // Warm both paths up (connections, allocator, page faults).
        t.raw_world_pingpong(size, rounds / 10 + 1);
        transport_pingpong(t, &world, size, rounds / 10 + 1)?;
        let mut raw = Duration::MAX;
        let mut ours = Duration::MAX;
        for _ in 0..REPEATS {
            raw = raw.min(t.raw_world_pingpong(size, rounds));
            ours = ours.min(transport_pingpong(t, &world, size, rounds)?);
        }
        if me == 0 {
            let ratio = ours.as_secs_f64() / raw.as_secs_f64();
            let (raw_gbs, our_gbs, throughput_ratio) = if size == 0 {
                ("-".to_string(), "-".to_string(), "-".to_string())
            } else {
                let raw_gbs = size as f64 / raw.as_secs_f64() / 1e9;
                let our_gbs = size as f64 / ours.as_secs_f64() / 1e9;
                (
                    format!("{raw_gbs:.2}"),
                    format!("{our_gbs:.2}"),
                    format!("{:.0}%", 100.0 * our_gbs / raw_gbs),
                )
            };
            println!(
                "{:>8}  {:>8.2} us  {:>8.2} us  {:>5.2}x  {:>10}  {:>10}  {:>6}",
                human(size),
                raw.as_secs_f64() * 1e6,
                ours.as_secs_f64() * 1e6,
                ratio,
                raw_gbs,
                our_gbs,
                throughput_ratio
            );
        }
    }
    idle_cpu(t, &world)?;
    wake_latency(t, &world)
}

/// Rank 0 waits in `recv(For(1 s))` with nothing coming; rank 1 waits in
/// `recv(Forever)` for the message that ends it.
fn idle_cpu(t: &MpiTransport, world: &SimpleCommunicator) -> Result<()> {
    world.barrier();
    let cpu = cpu_time()?;
    let start = Instant::now();
    if t.rank() == 0 {
        let got = t.recv(Wait::For(Duration::from_secs(1)))?;
        let elapsed = start.elapsed();
        let share = 100.0 * cpu_time()?.saturating_sub(cpu).as_secs_f64() / elapsed.as_secs_f64();
        if got.is_some() {
            return Err("a message arrived during the idle measurement".into());
        }
        t.send(1, b"stop")?;
        println!(
            "idle recv(For(1 s)) on rank 0: returned None after {:.1} ms, used {share:.2}% of a core (process CPU time)",
            elapsed.as_secs_f64() * 1e3
        );
        let reply = message(t)?;
        println!(
            "idle recv(Forever) on rank 1: {}",
            String::from_utf8_lossy(&reply)
        );
    } else {
        message(t)?;
        let elapsed = start.elapsed();
        let share = 100.0 * cpu_time()?.saturating_sub(cpu).as_secs_f64() / elapsed.as_secs_f64();
        t.send(
            0,
            format!(
                "{:.1} ms, used {share:.2}% of a core",
                elapsed.as_secs_f64() * 1e3
            )
            .as_bytes(),
        )?;
    }
    Ok(())
}

/// The latency a small message pays when it arrives while the receiver is deep in its
/// back-off (idle for `idle` before the send): rank 1 sends the monotonic clock (shared
/// by both processes on one host), rank 0 subtracts it from the time it receives.
fn wake_latency(t: &MpiTransport, world: &SimpleCommunicator) -> Result<()> {
    let samples: u32 = 50;
    for idle in [Duration::from_micros(20), Duration::from_millis(5)] {
        world.barrier();
        if t.rank() == 1 {
            for _ in 0..samples {
                std::thread::sleep(idle);
                t.send(0, &monotonic_ns()?.to_le_bytes())?;
                message(t)?;
            }
            continue;
        }
        let mut total = Duration::ZERO;
        let mut worst = Duration::ZERO;
        for _ in 0..samples {
            let payload = message(t)?;
            let received = monotonic_ns()?;
            let sent = u64::from_le_bytes(payload.as_slice().try_into()?);
            let latency = Duration::from_nanos(received.saturating_sub(sent));
            total += latency;
            worst = worst.max(latency);
            t.send(1, b"next")?;
        }
        println!(
            "one-way latency after {:>6.2} ms idle (recv(Forever) back-off): mean {:>7.1} us, worst {:>7.1} us",
            idle.as_secs_f64() * 1e3,
            (total / samples).as_secs_f64() * 1e6,
            worst.as_secs_f64() * 1e6
        );
    }
    Ok(())
}

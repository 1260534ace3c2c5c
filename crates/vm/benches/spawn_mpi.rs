//! The VM over MPI: no-op spawn round trip, and VM-level ping-pong next to a raw rsmpi
//! ping-pong of the same sizes in the same run, plus the CPU an idle receive uses.
//!
//! `cargo bench -p parvm-vm --bench spawn_mpi --features mpi -- spawn|messaging` (or
//! `cargo xtask bench spawn|messaging --transport mpi`). Started without mpirun, it runs
//! itself under `mpirun --oversubscribe -n 2`: rank 0 is the spawner, rank 1 the worker.

mod common;

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use parvm_transport::Transport;
use parvm_transport::mpi::MpiTransport;
use parvm_vm::{Config, Message, Runtime, Spawn, TaskContext, TaskId, Tasks, Vm, Worker};

use common::Res as Result;

const SIZES: [usize; 4] = [0, 1024, 100 * 1024, 10 * 1024 * 1024];

fn tasks() -> Tasks {
    Tasks::new()
        .register("noop", |_: &TaskContext, (): ()| Ok::<_, Infallible>(()))
        .register("bounce", |ctx: &TaskContext, (): ()| {
            // Echo every message back; 0-byte messages are measured too, so the end is
            // a message holding the one byte 0xff.
            loop {
                let (from, data) = ctx.recv().map_err(|e| e.to_string())?;
                if data.bytes() == [0xff] {
                    return Ok::<_, String>(());
                }
                ctx.send_bytes(from, data.bytes())
                    .map_err(|e| e.to_string())?;
            }
        })
}

fn main() -> ExitCode {
    common::mpi_main("spawn_mpi", run)
}

fn run() -> Result<()> {
    let what: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| what.is_empty() || what.iter().any(|w| w == name);
    let storage = tempfile::tempdir()?;
    let config = Config::builder()
        .local_root(storage.path())
        .mirrored_roots([storage.path()])
        .build()?;
    let transport = MpiTransport::init()?.leave_on_drop(true);
    if transport.size() != 2 {
        return Err(format!("run with exactly 2 ranks, not {}", transport.size()).into());
    }
    // The raw baseline first, on both ranks, before rank 1 enters the spawn loop.
    let raw: Vec<Duration> = if wants("messaging") {
        SIZES
            .iter()
            .map(|&size| {
                let rounds = rounds_for(size);
                transport.raw_world_pingpong(size, rounds / 10 + 1);
                (0..5)
                    .map(|_| transport.raw_world_pingpong(size, rounds))
                    .min()
                    .unwrap_or_default()
            })
            .collect()
    } else {
        Vec::new()
    };
    transport.world_barrier();
    if transport.rank() != 0 {
        Worker::new(tasks(), config).serve(Box::new(transport))?;
        return Ok(());
    }
    let runtime = Runtime::from_transport(Box::new(transport), tasks(), config)?;
    let vm = runtime.vm().build()?;
    println!("parvm VM over MPI, 2 ranks (spawner + 1 worker), Open MPI shared memory");
    if wants("spawn") {
        spawn_round_trip(&vm)?;
    }
    if wants("messaging") {
        messaging(&vm, &raw)?;
    }
    idle_cpu(&vm)?;
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

fn rounds_for(size: usize) -> usize {
    match size {
        0..=2048 => 5000,
        2049..=200_000 => 1000,
        _ => 30,
    }
}

/// Spawns a no-op task and waits for its result and exit, one at a time.
fn spawn_round_trip(vm: &Vm) -> Result<()> {
    let once = || -> Result<Duration> {
        let start = Instant::now();
        let ids = vm.spawn(Spawn::task("noop", &()))?;
        if ids.len() != 1 {
            return Err("no free slot for the no-op task".into());
        }
        loop {
            if let Message::TaskExit { .. } = vm.recv()? {
                return Ok(start.elapsed());
            }
        }
    };
    for _ in 0..500 {
        once()?;
    }
    let mut times: Vec<Duration> = (0..5000).map(|_| once()).collect::<Result<_>>()?;
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!(
        "spawn no-op round trip: median {:.1} us, p10 {:.1} us, p90 {:.1} us (target <= 10 us)",
        us(pct(50)),
        us(pct(10)),
        us(pct(90))
    );
    Ok(())
}

/// Ping-pong with a `bounce` task: the VM's one-way time next to the raw one.
fn messaging(vm: &Vm, raw: &[Duration]) -> Result<()> {
    let ids = vm.spawn(Spawn::task("bounce", &()))?;
    let task = *ids.first().ok_or("no free slot for the bounce task")?;
    println!(
        "{:>8}  {:>12} {:>12}  {:>12} {:>12}  {:>7}",
        "size", "raw one-way", "raw MB/s", "VM one-way", "VM MB/s", "VM/raw"
    );
    for (&size, &raw) in SIZES.iter().zip(raw) {
        let rounds = rounds_for(size);
        let payload = vec![7u8; size];
        pingpong(vm, task, &payload, rounds / 10 + 1)?;
        let ours = (0..5)
            .map(|_| pingpong(vm, task, &payload, rounds))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .min()
            .unwrap_or_default();
        println!(
            "{:>8}  {:>9.2} us {:>12.1}  {:>9.2} us {:>12.1}  {:>6.2}x",
            human(size),
            us(raw),
            mb_per_s(size, raw),
            us(ours),
            mb_per_s(size, ours),
            ours.as_secs_f64() / raw.as_secs_f64().max(1e-12)
        );
    }
    vm.send_bytes(task, &[0xff])?;
    loop {
        if let Message::TaskExit { .. } = vm.recv()? {
            break;
        }
    }
    println!("targets: small-message latency <= 1.5x raw; 10 MiB throughput >= 70% of raw");
    Ok(())
}

fn pingpong(vm: &Vm, task: TaskId, payload: &[u8], rounds: usize) -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..rounds {
        vm.send_bytes(task, payload)?;
        match vm.recv()? {
            Message::User { data, .. } if data.bytes().len() == payload.len() => {}
            other => return Err(format!("expected the bounce, got {other:?}").into()),
        }
    }
    Ok(start.elapsed() / (2 * u32::try_from(rounds)?))
}

/// CPU time of this process while a receive waits 1 s for nothing.
fn idle_cpu(vm: &Vm) -> Result<()> {
    let cpu = || -> Result<Duration> {
        Ok(Duration::from(clock_gettime(
            ClockId::CLOCK_PROCESS_CPUTIME_ID,
        )?))
    };
    let before = cpu()?;
    let start = Instant::now();
    let got = vm.recv_timeout(Duration::from_secs(1))?;
    let elapsed = start.elapsed();
    let used = cpu()?.saturating_sub(before);
    if let Some(message) = got {
        return Err(format!("expected nothing while idle, got {message:?}").into());
    }
    println!(
        "idle recv_timeout(1 s): waited {:.3} s, CPU {:.2}% of a core (target < 5%)",
        elapsed.as_secs_f64(),
        100.0 * used.as_secs_f64() / elapsed.as_secs_f64()
    );
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mb_per_s(size: usize, one_way: Duration) -> f64 {
    if size == 0 {
        return 0.0;
    }
    size as f64 / one_way.as_secs_f64().max(1e-12) / 1e6
}

fn human(size: usize) -> String {
    match size {
        0 => "0 B".to_owned(),
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

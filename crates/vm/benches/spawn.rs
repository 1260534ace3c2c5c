//! Spawn and messaging benchmarks of the VM on the local backend (run with
//! `cargo bench -p parvm-vm`). This binary is also its own worker program.
//!
//! - no-op spawn round trip (spawn, result, exit) on 1 worker: median µs per task;
//! - no-op tasks on all workers kept busy: tasks per second;
//! - VM-level ping-pong one-way latency and rate for 0 B, 1 KiB, 100 KiB, 10 MiB, next to
//!   the transport crate's raw Unix-socket baseline;
//! - whole-process start + finalize with 2 workers (the test program, median of 10).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use parvm_vm::{Message, Runtime, Spawn, TaskContext, Tasks, Vm};

fn tasks() -> Tasks {
    Tasks::new()
        .register("noop", |_: &TaskContext, (): ()| Ok::<_, Infallible>(()))
        .register("bounce", |ctx: &TaskContext, (): ()| {
            loop {
                let (from, data) = ctx.recv().map_err(|e| e.to_string())?;
                if data.bytes() == b"stop" {
                    return Ok::<_, String>(());
                }
                ctx.send_bytes(from, data.bytes())
                    .map_err(|e| e.to_string())?;
            }
        })
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn wait_exit(vm: &Vm) {
    loop {
        if let Message::TaskExit { .. } = vm.recv().expect("recv") {
            return;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let runtime = Runtime::builder(tasks()).workers(workers).start()?;
    let vm = runtime.vm().build()?;
    println!("parvm-vm benchmarks, local backend, {workers} workers");

    // No-op round trip on one worker.
    let rounds = 20_000;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds + 1000 {
        let start = Instant::now();
        vm.spawn(Spawn::task("noop", &()).hosts([vm.host_id()]))?;
        wait_exit(&vm);
        if i >= 1000 {
            samples.push(start.elapsed());
        }
    }
    let med = median(samples);
    println!(
        "no-op spawn round trip, 1 worker : median {:6.1} us  ({:.0} tasks/s)",
        med.as_secs_f64() * 1e6,
        1.0 / med.as_secs_f64()
    );

    // No-op tasks, all workers busy.
    let total = 40_000u64;
    let start = Instant::now();
    let (mut spawned, mut done) = (0u64, 0u64);
    while done < total {
        while spawned < total && vm.free_slots() > 0 {
            spawned += vm.spawn(Spawn::task("noop", &()))?.len() as u64;
        }
        if let Message::TaskExit { .. } = vm.recv()? {
            done += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "no-op tasks, {workers} workers busy   : {:6.1} us/task  ({:.0} tasks/s)",
        secs / total as f64 * 1e6,
        total as f64 / secs
    );

    // Ping-pong through the VM.
    let ids = vm.spawn(Spawn::task("bounce", &()))?;
    let task = ids[0];
    println!("ping-pong one-way (median)        :        VM           raw Unix socket");
    for size in [0usize, 1024, 100 * 1024, 10 * 1024 * 1024] {
        let data = vec![0x5au8; size];
        let rounds = if size >= 1 << 20 { 30 } else { 3000 };
        let mut samples = Vec::with_capacity(rounds);
        for i in 0..rounds + 5 {
            let start = Instant::now();
            vm.send_bytes(task, &data)?;
            match vm.recv()? {
                Message::User { .. } => {}
                other => return Err(format!("unexpected {other:?}").into()),
            }
            if i >= 5 {
                samples.push(start.elapsed());
            }
        }
        let one_way = median(samples) / 2;
        let raw = parvm_transport::bench_support::raw_unix_pingpong(size, rounds)?;
        let rate = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
        println!(
            "  {:>9} B                      : {:8.1} us {:7.0} MB/s  {:8.1} us {:7.0} MB/s",
            size,
            one_way.as_secs_f64() * 1e6,
            rate(one_way),
            raw.one_way.as_secs_f64() * 1e6,
            rate(raw.one_way)
        );
    }
    vm.send_bytes(task, b"stop")?;
    wait_exit(&vm);
    drop(vm);
    runtime.finalize()?;

    // Whole-process start + finalize with 2 workers.
    let local = tempfile::tempdir()?;
    let mut samples = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_parvm-vm-testprog"))
            .arg("start-finalize")
            .env("PARVM_WORKERS", "2")
            .env("PARALLEL_LOCAL_STORAGE", local.path())
            .env("PARALLEL_MIRRORED_STORAGE", local.path())
            .status()?;
        samples.push(start.elapsed());
        if !status.success() {
            return Err(format!("the test program failed: {status}").into());
        }
    }
    println!(
        "start + finalize, 2 workers       : median {:6.1} ms (whole process)",
        median(samples).as_secs_f64() * 1e3
    );
    Ok(())
}

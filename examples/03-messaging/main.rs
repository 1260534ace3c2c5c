//! Example 03: message latency and throughput between the spawner and a task.
//!
//! A `bounce` task sends every message back. For sizes from 0 B to 10 MB the spawner
//! measures the one-way time (half a round trip) and the data rate.
//!
//! Run with `cargo run --release --example 03-messaging`.

use std::time::{Duration, Instant};

use parvm::vm::{Message, Runtime, Spawn, TaskContext, Tasks};

/// The message that ends the bounce task (no measured size is 4 bytes long).
const STOP: &[u8] = b"stop";

/// Sends every message back to its sender, until `STOP` arrives.
fn bounce(ctx: &TaskContext, (): ()) -> Result<u64, String> {
    let mut count = 0;
    loop {
        let (from, data) = ctx.recv().map_err(|e| e.to_string())?;
        if data.bytes() == STOP {
            return Ok(count);
        }
        ctx.send_bytes(from, data.bytes())
            .map_err(|e| e.to_string())?;
        count += 1;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::start(Tasks::new().register("bounce", bounce))?;
    let vm = runtime.vm().build()?;

    // Prefer a host other than the spawner's, as PyOPUS's demo does.
    let me = vm.host_id();
    let target = vm
        .hosts()
        .into_iter()
        .find(|h| *h != me)
        .unwrap_or(me.clone());
    if target == me {
        println!("Measuring local communication (all workers run on {me}).");
    }
    let ids = vm.spawn(Spawn::task("bounce", &()).hosts([target.clone()]))?;
    let Some(&task) = ids.first() else {
        return Err("no free slot for the bounce task".into());
    };
    println!("Bounce task {task} on {target}.\n");
    println!(
        "{:>12} {:>10} {:>12} {:>14}",
        "size", "rounds", "one-way", "rate"
    );

    for size in [
        0usize, 1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000,
    ] {
        let data = vec![0x55u8; size];
        // Warm up, then run for about 0.2 s (at least 3 rounds).
        for _ in 0..3 {
            round_trip(&vm, task, &data)?;
        }
        let budget = Duration::from_millis(200);
        let start = Instant::now();
        let mut rounds = 0u32;
        while rounds < 3 || start.elapsed() < budget {
            round_trip(&vm, task, &data)?;
            rounds += 1;
        }
        let one_way = start.elapsed() / rounds / 2;
        let rate = size as f64 / one_way.as_secs_f64() / 1e6;
        println!(
            "{:>10} B {rounds:>10} {:>9.1} us {:>9.1} MB/s",
            size,
            one_way.as_secs_f64() * 1e6,
            rate
        );
    }

    vm.send_bytes(task, STOP)?;
    loop {
        match vm.recv()? {
            Message::TaskResult {
                outcome: Ok(value), ..
            } => {
                println!(
                    "\nThe bounce task sent back {} messages.",
                    value.decode::<u64>()?
                );
            }
            Message::TaskExit { .. } => break,
            _ => {}
        }
    }
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

/// Sends `data` and waits for it to come back.
fn round_trip(
    vm: &parvm::vm::Vm,
    task: parvm::vm::TaskId,
    data: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    vm.send_bytes(task, data)?;
    match vm.recv()? {
        Message::User { data: back, .. } if back.bytes().len() == data.len() => Ok(()),
        other => Err(format!("unexpected message {other:?}").into()),
    }
}

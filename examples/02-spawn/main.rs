//! Example 02: spawn two tasks, then collect their results and exits.
//!
//! Each task prints a line (it reaches this terminal prefixed with the task id) and returns
//! a greeting. A slot is free again once its task's exit has been received.
//!
//! Run with `cargo run --example 02-spawn`.

use std::convert::Infallible;

use parvm::vm::{Message, Runtime, Spawn, TaskContext, Tasks};

/// The task: say hello on stdout, and return a greeting naming the task, host and folder.
fn hello(ctx: &TaskContext, (): ()) -> Result<String, Infallible> {
    println!("Worker {} at {}.", ctx.task_id(), ctx.host_id());
    let dir = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    Ok(format!(
        "Hello, I am worker {} on {} in {dir}.",
        ctx.task_id(),
        ctx.host_id()
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::start(Tasks::new().register("hello", hello))?;
    // Tasks start in the spawner's current folder, translated to each host.
    let vm = runtime.vm().startup_dir(std::env::current_dir()?).build()?;

    let initial_free = vm.free_slots();
    println!("Hosts:");
    for host in vm.hosts() {
        println!("  {host}");
    }
    println!("Free slots: {initial_free}");

    println!("\nSpawning 2 tasks, anywhere.");
    let ids = vm.spawn(Spawn::task("hello", &()).count(2))?;
    println!("Spawned:");
    for id in &ids {
        println!("  {id}");
    }
    println!("Free slots: {}\n", vm.free_slots());
    print!("----\n{}----\n", vm.describe());

    // Two results and two exits; the slots are free again when the exits are received.
    while vm.free_slots() != initial_free {
        match vm.recv()? {
            Message::TaskResult { task, outcome } => match outcome {
                Ok(value) => println!(
                    "Received from {task} TaskResult success=true\n  {}",
                    value.decode::<String>()?
                ),
                Err(failure) => {
                    println!("Received from {task} TaskResult success=false\n  {failure}")
                }
            },
            Message::TaskExit { task, status } => {
                println!("Received from {task} TaskExit ({status})")
            }
            other => println!("Received {other:?}"),
        }
        println!("Free slots: {}\n", vm.free_slots());
    }
    print!("----\n{}----\n", vm.describe());

    drop(vm);
    runtime.finalize()?;
    Ok(())
}

//! Example 01: the virtual machine's configuration.
//!
//! Starts the workers (local processes, one per core or `PARVM_WORKERS`), prints who the
//! spawner is, which hosts and slots there are, and where task folders would go.
//!
//! Run with `cargo run --example 01-config`.

use parvm::vm::{Runtime, Tasks};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every slot runs this same program. In a worker, `start` serves tasks and never
    // returns; here, in the spawner, it starts the workers and returns.
    let runtime = Runtime::builder(Tasks::new()).debug(0).start()?;
    let vm = runtime.vm().build()?;

    println!("---- Spawner");
    println!("Host ID   : {}", vm.host_id());
    println!("Task ID   : {}", vm.task_id());
    println!(
        "Parent ID : {}",
        vm.parent_task_id().map_or_else(
            || "none (the spawner has no parent)".to_owned(),
            |id| id.to_string()
        )
    );
    println!("Transport : {}", runtime.backend());

    println!("---- Hosts and tasks");
    print!("{}", vm.describe());
    println!("----");

    println!(
        "Total process slots: {} (the spawner's slot 0 included)",
        vm.slots()
    );
    println!("Free process slots : {}", vm.free_slots());

    let config = runtime.config();
    println!("---- Storage");
    println!(
        "Local storage (PARALLEL_LOCAL_STORAGE)       : {}",
        config.local_root().display()
    );
    for (index, root) in config.mirrored_roots().iter().enumerate() {
        println!(
            "Mirrored storage {index} (PARALLEL_MIRRORED_STORAGE): {}",
            root.display()
        );
    }

    drop(vm);
    runtime.finalize()?;
    Ok(())
}

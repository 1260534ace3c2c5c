//! Example 04: mirroring the current folder into each task's local folder.
//!
//! The VM mirrors `*` (everything in the current folder) to `.` of every task folder. The
//! task prints a greeting and lists its folder; its output reaches this terminal prefixed
//! with the task id. The current folder must be inside mirrored storage
//! (`PARALLEL_MIRRORED_STORAGE`, by default your home folder).
//!
//! Run with `cargo run --example 04-mirror` from a folder inside mirrored storage.

use parvm::vm::{Message, Runtime, Spawn, TaskContext, Tasks};

/// Says hello and lists the task folder.
fn hello_ls(ctx: &TaskContext, (): ()) -> Result<(), String> {
    let here = std::env::current_dir().map_err(|e| e.to_string())?;
    println!(
        "Hello, I am task {} on {} in {}.",
        ctx.task_id(),
        ctx.host_id(),
        here.display()
    );
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&here).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".parvm") {
            continue; // parvm's own owner marker and lock
        }
        if entry.path().is_dir() {
            dirs.push(name);
        } else {
            files.push(name);
        }
    }
    dirs.sort();
    files.sort();
    println!("Dirs      : {dirs:?}");
    println!("Files     : {files:?}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = Runtime::start(Tasks::new().register("hello_ls", hello_ls))?;
    let vm = match runtime.vm().mirror("*", ".").build() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!(
                "cannot mirror the current folder: {e}\n(run this example from a folder inside PARALLEL_MIRRORED_STORAGE)"
            );
            std::process::exit(2);
        }
    };
    println!(
        "Mirroring {} to each task folder.",
        std::env::current_dir()?.display()
    );

    println!("\nSpawning a task.");
    let ids = vm.spawn(Spawn::task("hello_ls", &()))?;
    println!(
        "Spawned: {}",
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("Collecting its output ...");
    loop {
        match vm.recv()? {
            Message::TaskResult {
                outcome: Err(failure),
                task,
            } => println!("Task {task} failed: {failure}"),
            Message::TaskExit { task, status } => {
                println!("Task {task} exited ({status}); its folder is removed.");
                break;
            }
            _ => {}
        }
    }
    drop(vm);
    runtime.finalize()?;
    Ok(())
}

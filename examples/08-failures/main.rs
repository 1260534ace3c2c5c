//! Example 08: a sweep that survives a worker dying under it and stops cleanly on Ctrl-C.
//!
//! Eight cases run as slots free up. Case 3 takes its worker down with it
//! (`std::process::exit`, as a crash in a simulator linked into the program would): the
//! spawner gets that task's exit as failed, without a result, and the other cases carry
//! on with the workers that are left. Every case is counted: done, failed, or not run.
//!
//! Ctrl-C stops the sweep. In a terminal it reaches every process of the program: the
//! workers and the simulators they run end at once (their cases are reported as failed),
//! while the spawner, which catches it, starts no new case, prints what it has and removes
//! the task folders the dead workers left. A SIGINT sent to the spawner alone
//! (`kill -INT <pid>`) lets the running cases finish first. A second Ctrl-C exits at once.
//!
//! Run with `cargo run --example 08-failures`; add `-- 5` to make each case take 5 s, so
//! there is time to press Ctrl-C.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parvm::{Message, Report, Runtime, Spawn, TaskContext, Tasks};
use signal_hook::consts::SIGINT;

/// The case that takes its worker down.
const CRASHING_CASE: u32 = 3;

/// One case: runs an external command for `seconds` (standing in for the simulator) in the
/// task folder, then returns a number.
fn simulate(ctx: &TaskContext, (case, seconds): (u32, f64)) -> Result<f64, String> {
    if case == CRASHING_CASE {
        // Ends the worker process, not only the task: nothing is sent back.
        std::process::exit(70);
    }
    let status = std::process::Command::new("sleep")
        .arg(seconds.to_string())
        .status()
        .map_err(|e| format!("task {}: cannot run `sleep`: {e}", ctx.task_id()))?;
    if !status.success() {
        return Err(format!("the simulator stopped: {status}"));
    }
    Ok(f64::from(case) * 0.5)
}

fn main() -> parvm::Result<()> {
    let runtime = Runtime::start(Tasks::new().register("simulate", simulate))?;
    // Only the spawner gets here: workers never return from `Runtime::start`.
    let interrupted = Arc::new(AtomicBool::new(false));
    let signal_error = |e: std::io::Error| Report::msg(format!("cannot catch SIGINT: {e}"));
    // The first Ctrl-C sets the flag; the second, with the flag set, exits with status 130.
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, Arc::clone(&interrupted))
        .map_err(signal_error)?;
    signal_hook::flag::register(SIGINT, Arc::clone(&interrupted)).map_err(signal_error)?;

    let vm = runtime.vm().local_folder(true).build()?;
    let seconds: f64 = match std::env::args().nth(1) {
        Some(text) => text
            .parse()
            .map_err(|e| Report::msg(format!("seconds per case `{text}`: {e}")))?,
        None => 0.1,
    };
    println!("8 cases; Ctrl-C stops the sweep, a second Ctrl-C stops at once");

    let cases: Vec<u32> = (0..8).collect();
    let mut results: BTreeMap<u32, Result<f64, String>> = BTreeMap::new();
    let mut running = HashMap::new(); // task id -> case
    let mut next = 0;
    let mut stopping = false;
    while next < cases.len() || !running.is_empty() {
        if interrupted.load(Ordering::Relaxed) && !stopping {
            stopping = true;
            println!(
                "Ctrl-C: no new cases; waiting for the {} running",
                running.len()
            );
        }
        while next < cases.len() && !stopping {
            let spawn = Spawn::task("simulate", &(cases[next], seconds));
            let Some(&task) = vm.spawn(spawn)?.first() else {
                break;
            };
            running.insert(task, cases[next]);
            next += 1;
        }
        if running.is_empty() {
            // Nothing runs and nothing could start: every worker is gone, or we stop.
            break;
        }
        // Wake up now and then to see whether Ctrl-C was pressed.
        let Some(message) = vm.recv_timeout(Duration::from_millis(100))? else {
            continue;
        };
        match message {
            Message::TaskResult { task, outcome } => {
                let result = match outcome {
                    Ok(value) => Ok(value.decode::<f64>()?),
                    Err(failure) => Err(format!("failed: {failure}")),
                };
                results.insert(running[&task], result);
            }
            Message::TaskExit { task, status } => {
                // A task whose worker died has no result; its exit says why.
                if let Some(case) = running.remove(&task) {
                    results.entry(case).or_insert(Err(status.to_string()));
                }
            }
            Message::HostDelete { host } => println!("host {host} has no workers left"),
            _ => {}
        }
    }

    let why_not_run = if stopping {
        "not run: stopped by Ctrl-C"
    } else {
        "not run: no worker left"
    };
    let mut failed = 0;
    for &case in &cases {
        match results.get(&case) {
            Some(Ok(value)) => println!("case {case}: {value}"),
            Some(Err(why)) => {
                println!("case {case}: {why}");
                failed += 1;
            }
            None => {
                println!("case {case}: {why_not_run}");
                failed += 1;
            }
        }
    }
    println!("{failed} of {} cases without a result", cases.len());

    // A worker that died left its task folder behind; remove it now rather than at the
    // next start. Folders in use by other programs are skipped.
    let cleared = vm.clear_local_storage(false, Duration::from_secs(5))?;
    print!("{cleared}");
    if stopping {
        // The exit status a shell expects from a program stopped by Ctrl-C (128 + SIGINT),
        // after the VM and the runtime have sent the workers home.
        drop(vm);
        drop(runtime);
        std::process::exit(130);
    }
    Ok(())
}
